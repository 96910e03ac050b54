#!/usr/bin/env bash
# One command for the GPU machine (H200/H100, CUDA 13.0 nvcc, python3 with jinja2), from the repo root:
#
#   bash scripts/hopper/run_on_device.sh
#
# Renders the Hopper prefill kernels (scripts/hopper/render.py --set device), compiles them to sm_90a cubins
# with nvcc, builds probe.cu and harness.cu, then runs: the layout probes; the correctness grid of every
# kernel (one process per kernel, so one crash cannot hide the others); the timings of the kernels that
# passed; and NVRTC's compile check (nvrtc_check.py, informational). Logs go to ${OUT:-/tmp/hopper-out}
# (at most 8 files): summary.txt, probe.log, check.log, time.log, compile.log, nvrtc_check.log.
# The summary is printed last. Exit status: 0 when the probes and every check passed.
# Environment: OUT (log folder), BUILD (scratch, default /tmp/hopper-build), JOBS (parallel compiles),
# SKIP_TIME=1 / SKIP_NVRTC=1 to skip those steps, KEY=<substring> to restrict to some kernels,
# EXTRA_NVCC="-DFE_V_DESC_SWAP=1" (say) for flags added to every kernel compile.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/hopper-out}"
BUILD="${BUILD:-/tmp/hopper-build}"
JOBS="${JOBS:-$(nproc)}"
KEY="${KEY:-}"
mkdir -p "$OUT"
rm -rf "$BUILD"
mkdir -p "$BUILD"
ARCH="-gencode=arch=compute_90a,code=sm_90a"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
command -v nvcc >/dev/null || { echo "FAIL: no nvcc on PATH or in /usr/local/cuda/bin"; exit 1; }
t0=$(date +%s)
say() { echo "[$(($(date +%s) - t0))s] $*"; }

{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
  nvcc --version | tail -2
  python3 --version
} >"$OUT/compile.log" 2>&1
cat "$OUT/compile.log"

say "render"
if ! python3 scripts/hopper/render.py --set device --outdir "$BUILD" >>"$OUT/compile.log" 2>&1 ||
  ! python3 scripts/hopper/render.py --probe-header --dtype bf16 -o "$BUILD/hopper_probe.cuh" >>"$OUT/compile.log" 2>&1; then
  echo "FAIL render (see $OUT/compile.log)"
  tail -20 "$OUT/compile.log"
  exit 1
fi

say "compile kernels (nvcc, $JOBS jobs), probe and harness"
# One line per kernel: key, then nvcc flags.
tail -n +2 "$BUILD/manifest.tsv" | while IFS=$'\t' read -r kind key cufile defines kernel rest; do
  [[ -n "$KEY" && "$key" != *"$KEY"* ]] && continue
  dflags=""
  if [[ "$defines" != "-" ]]; then for d in ${defines//,/ }; do dflags="$dflags -D$d"; done; fi
  echo "$key $dflags"
done >"$BUILD/jobs.txt"
compile_one() {
  local key=$1
  shift
  nvcc -cubin -std=c++17 $ARCH -Xptxas -v "$@" $EXTRA_NVCC -o "$BUILD/$key.cubin" "$BUILD/$key.cu" >"$BUILD/$key.ptxas.log" 2>&1 ||
    echo "COMPILE-FAIL $key"
}
export -f compile_one
EXTRA_NVCC="${EXTRA_NVCC:-}"
export BUILD ARCH EXTRA_NVCC
(
  nvcc -std=c++17 -O2 $ARCH -I"$BUILD" scripts/hopper/probe.cu -o "$BUILD/probe" >"$BUILD/probe.build.log" 2>&1 || echo "BUILD-FAIL probe"
) &
(
  nvcc -std=c++17 -O2 $ARCH scripts/hopper/harness.cu -o "$BUILD/harness" >"$BUILD/harness.build.log" 2>&1 || echo "BUILD-FAIL harness"
) &
xargs -P "$JOBS" -I{} bash -c 'compile_one {}' <"$BUILD/jobs.txt" | tee "$BUILD/compile_fail.txt"
wait
{
  echo "== kernels: registers, spills, ptxas warnings"
  for f in "$BUILD"/*.ptxas.log; do
    k=$(basename "$f" .ptxas.log)
    regs=$(grep -o "Used [0-9]* registers" "$f" | head -1)
    spill=$(grep -o "[0-9]* bytes spill stores, [0-9]* bytes spill loads" "$f" | head -1)
    warn=$(grep -ci "warning\|C75[0-9][0-9]\|error" "$f")
    echo "$k | $regs | $spill | warnings/errors: $warn"
    grep -i "warning\|C75[0-9][0-9]\|error" "$f" | head -5 | sed 's/^/    /'
  done
  echo "== probe build"
  cat "$BUILD/probe.build.log"
  echo "== harness build"
  cat "$BUILD/harness.build.log"
} >>"$OUT/compile.log" 2>&1
if [[ ! -x "$BUILD/harness" || ! -x "$BUILD/probe" ]]; then
  echo "FAIL build (see $OUT/compile.log)"
  tail -40 "$OUT/compile.log"
  exit 1
fi
if command -v cuobjdump >/dev/null; then
  main=$(ls "$BUILD"/fe_prefill_sm90a_d128_w512_c64_block_bf16_m128_n128_w12_s3.cubin 2>/dev/null | head -1)
  if [[ -n "$main" ]]; then
    cuobjdump --dump-sass "$main" >"$BUILD/main.sass" 2>&1
    echo "== SASS of the main kernel: $(grep -c HGMMA "$BUILD/main.sass") HGMMA, $(grep -c USETMAXREG "$BUILD/main.sass") USETMAXREG, $(grep -c UTMALDG "$BUILD/main.sass") UTMALDG, $(grep -cw 'LDL\|STL' "$BUILD/main.sass") LDL/STL" >>"$OUT/compile.log"
  fi
fi

say "probes"
timeout 120 "$BUILD/probe" >"$OUT/probe.log" 2>&1
probe_rc=$?
cat "$OUT/probe.log"

say "correctness (one process per kernel)"
: >"$OUT/check.log"
passed_keys=()
while IFS=$'\t' read -r kind key rest; do
  [[ "$kind" == "#"* ]] && continue
  [[ -n "$KEY" && "$key" != *"$KEY"* ]] && continue
  timeout 300 "$BUILD/harness" "$BUILD" --check --key "$key" --timeout 20 >"$BUILD/check_$key.log" 2>&1 </dev/null
  rc=$?
  grep -E "^(PASS|FAIL|NOTE)" "$BUILD/check_$key.log" >>"$OUT/check.log"
  if [[ $rc -ne 0 ]] && ! grep -q "^FAIL" "$BUILD/check_$key.log"; then
    echo "FAIL $kind $key | process | exit status $rc: $(tail -3 "$BUILD/check_$key.log" | tr '\n' ' ')" >>"$OUT/check.log"
  fi
  if [[ $rc -eq 0 || "$kind" == "base" ]] && ! grep -q "^FAIL" "$BUILD/check_$key.log"; then passed_keys+=("$key"); fi
  echo "  $key: $(grep -c '^PASS' "$BUILD/check_$key.log") pass, $(grep -c '^FAIL' "$BUILD/check_$key.log") fail"
done <"$BUILD/manifest.tsv"

: >"$OUT/time.log"
if [[ "${SKIP_TIME:-0}" != 1 ]]; then
  say "timing (kernels that passed)"
  for key in "${passed_keys[@]}"; do
    case "$key" in
      *_d128_w512_c64_*_bf16_* | *_d64_w256_c16_block_bf16_*) ;;
      *) continue ;;
    esac
    timeout 120 "$BUILD/harness" "$BUILD" --time --key "$key" --timeout 20 2>&1 | grep -E "^(TIME|FAIL)" >>"$OUT/time.log"
  done
  cat "$OUT/time.log"
fi

if [[ "${SKIP_NVRTC:-0}" != 1 ]]; then
  say "NVRTC compile check (informational)"
  timeout 240 python3 scripts/hopper/nvrtc_check.py -j "$JOBS" >"$OUT/nvrtc_check.log" 2>&1
  echo "nvrtc_check exit status $? (see nvrtc_check.log)" >>"$OUT/nvrtc_check.log"
  tail -3 "$OUT/nvrtc_check.log"
fi

say "done"
{
  echo "==== hopper prefill on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) ===="
  echo "-- compile: $(grep -c . "$BUILD/jobs.txt") kernels, $(grep -c COMPILE-FAIL "$BUILD/compile_fail.txt") failed"
  grep -E "spill stores" "$OUT/compile.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | sed 's/^/   SPILL /' | head -5
  grep "== SASS" "$OUT/compile.log"
  echo "-- probes (exit $probe_rc):"
  grep -E "^(PASS|FAIL|INFO)" "$OUT/probe.log" | cut -c1-150 | sed 's/^/   /'
  echo "-- correctness: $(grep -c '^PASS' "$OUT/check.log") PASS, $(grep -c '^FAIL' "$OUT/check.log") FAIL (kind sm90 = new kernel, base = today's mma.sync kernel, a harness cross-check)"
  grep "^FAIL" "$OUT/check.log" | cut -c1-220 | head -15 | sed 's/^/   /'
  grep "^NOTE" "$OUT/check.log" | head -3 | sed 's/^/   /'
  if [[ -s "$OUT/time.log" ]]; then
    echo "-- timing (B=1 N=16384 H=16 bf16; effective TFLOP/s = 4 D x visible pairs / time; target >= 350 at D=128 W=512 C=64 block):"
    printf "   %-70s %-8s %9s %9s %9s\n" kernel sched ms eff comp
    grep "^TIME" "$OUT/time.log" | sed -E 's/^TIME +([a-z0-9]+) +([^ ]+) +([a-z]+) .*: ([0-9.]+) ms, ([0-9.]+) effective TFLOP\/s, ([0-9.]+) computed.*/\2 \3 \4 \5 \6/' |
      while read -r k s ms eff comp; do printf "   %-70s %-8s %9s %9s %9s\n" "$k" "$s" "$ms" "$eff" "$comp"; done
  fi
  echo "-- total $(($(date +%s) - t0)) s; logs in $OUT"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
nfail=$(grep '^FAIL' "$OUT/check.log" | grep -vc '^FAIL base')  # the baseline's own failures do not count
[[ $probe_rc -eq 0 && $nfail -eq 0 ]]
