#!/usr/bin/env python3
"""Issue 11: where a small-batch decode's fixed cost goes, block by block.

Run 47 (docs/VALIDATION.md) timed the decode at 1x, 2x and 4x the context: the extra bytes stream
at the device's read rate, but every launch carries a fixed 4.6 us (unsplit, B=16) to 7-8 us
(B=1, 16 splits) where a read kernel of the same size carries about 1 us. This script finds
where: it renders flasheva's decode kernel (`flasheva render`), adds timestamps (%globaltimer,
and %clock64 for durations within a block) at the kernel's milestones, compiles it with NVRTC,
launches it through the driver API on torch's tensors (token-major caches, the contract's
layout), checks its output against float32 torch, and prints per-milestone statistics over the
blocks of the last launches of a back-to-back series:

  start     block start, from the launch's first block start (the launch's spread)
  len       the sequence length arrived (the first dependent load)
  prologue  Q and the first STAGES - 1 tiles' copies waited for
  tile0     each warp's first tile waited for
  loopend   each warp's last tile done
  end       the block done (its merge included when it was the last split)
and the gap from one launch's last block end to the next launch's first block start.

Run on the GPU machine (NVRTC and torch there):
    python3 scripts/decode_timeline.py --flasheva .device/bin/flasheva --batch 1 --position 1048575 --splits 16
The kernel is this build's decode (the render); only the timestamps are added.
"""
import argparse
import ctypes
import math
import re
import subprocess
import sys

import nvrtc_ctypes  # scripts/nvrtc_ctypes.py (a script's own folder is on sys.path)
from nvrtc_ctypes import check


H, HKV, D, W, C, G = 32, 8, 128, 512, 64, 4
TILE = "block_m=8,block_n=16,warps=4,stages=3"
NW, STAGES, BN = 4, 3, 16
ROWS, DP = 8, D + 8
SMEM = ROWS * DP * 2 + NW * STAGES * 2 * BN * D * 2  # src/ops/decode.rs smem_bytes (swizzled K/V)
SLOTS = 16

TRACE_HELPERS = r"""
FE_DEV u64 fe_gt(int dep) {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) : "r"(dep));
  return t;
}
FE_DEV unsigned fe_smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
"""


def patch(src):
    """The rendered decode with timestamps at its milestones (fails loudly if a marker moved)."""
    def once(s, old, new):
        if s.count(old) < 1:
            sys.exit(f"decode_timeline: marker not found in the rendered kernel: {old!r}")
        return s.replace(old, new, 1)

    m = re.search(r'extern "C" __global__ void __launch_bounds__\(THREADS, 1\) (\w+)\(const DecodeParams p\) \{\n', src)
    if not m:
        sys.exit("decode_timeline: the decode kernel's signature was not found")
    name = m.group(1)
    head = m.group(0)
    src = src.replace(
        head,
        TRACE_HELPERS
        + head.replace("(const DecodeParams p) {", "(const DecodeParams p, u64* fe_tr) {")
        + "  const u64 fe_t0 = fe_gt(0);\n  const long long fe_c0 = clock64();\n"
        "  u64* fe_rec = fe_tr + 16 * (blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));\n",
        1,
    )
    src = once(src, "  const int pos = p.len[b] - 1;\n",
               "  const int pos = p.len[b] - 1;\n  if (threadIdx.x == 0) { fe_rec[1] = fe_gt(pos); fe_rec[15] = clock64() - fe_c0; }\n")
    src = once(src, "  fe_cp_wait<STAGES - 1>();\n  __syncthreads();\n",
               "  fe_cp_wait<STAGES - 1>();\n  __syncthreads();\n  if (threadIdx.x == 0) fe_rec[2] = fe_gt(0);\n")
    src = once(src, "    fe_cp_wait<STAGES - 1>();\n    __syncwarp();\n",
               "    fe_cp_wait<STAGES - 1>();\n    __syncwarp();\n    if (k == 0 && lane == 0) fe_rec[3 + (warp & 3)] = fe_gt(0);\n")
    src = once(src, "  fe_cp_wait<0>();\n  fe_state_finish(st[0]);\n",
               "  fe_cp_wait<0>();\n  if (lane == 0) fe_rec[7 + (warp & 3)] = fe_gt(0);\n  fe_state_finish(st[0]);\n")
    i = src.index("  fe_decode_finish<NW, THREADS>(", src.index(name))
    j = src.index(");\n", i) + 3
    src = (src[:j]
           + "  if (threadIdx.x == 0) {\n    fe_rec[11] = fe_gt(0);\n    fe_rec[0] = fe_t0;\n    fe_rec[12] = fe_smid();\n"
           "    fe_rec[13] = p.splits > 1 ? (u64)*reinterpret_cast<int*>(scratch) : 0;\n    fe_rec[14] = clock64() - fe_c0;\n  }\n"
           + src[j:])
    return name, src


class Params(ctypes.Structure):  # templates/decode_common.cuh DecodeParams (288 bytes)
    _fields_ = [(n, ctypes.c_uint64) for n in ("q", "kr", "vr", "ks", "vs", "len", "o", "lse", "ws_o", "ws_ml")] + [
        (n, ctypes.c_int64) for n in ("q_sb", "q_sh", "kr_sb", "kr_ss", "kr_sh", "vr_sb", "vr_ss", "vr_sh",
                                      "ks_sb", "ks_st", "ks_sh", "vs_sb", "vs_st", "vs_sh", "o_sb", "o_sh",
                                      "lse_sb", "lse_sh")] + [
        ("b", ctypes.c_int), ("h", ctypes.c_int), ("hkv", ctypes.c_int), ("max_nc", ctypes.c_int),
        ("splits", ctypes.c_int), ("scale_log2", ctypes.c_float), ("page", ctypes.c_int),
        ("slot", ctypes.c_uint64), ("pt", ctypes.c_uint64), ("pt_sb", ctypes.c_int64), ("counters", ctypes.c_uint64)]


assert ctypes.sizeof(Params) == 288


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flasheva", default=".device/bin/flasheva")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--position", type=int, default=1048575)
    ap.add_argument("--splits", type=int, default=16)
    ap.add_argument("--launches", type=int, default=40)
    ap.add_argument("--sets", type=int, default=3, help="rotating input sets (L2 does not hold the next one)")
    ap.add_argument("--emit", help="write the instrumented kernel source here and stop (no GPU needed)")
    ap.add_argument("--compile-only", action="store_true", help="compile it with NVRTC and stop (no GPU needed)")
    args = ap.parse_args()
    b, pos, splits = args.batch, args.position, args.splits

    src = subprocess.run([args.flasheva, "render", "decode", "--head-dim", str(D), "--window", str(W), "--chunk", str(C),
                          "--group", str(G), "--dtype", "bf16", "--local", "block", "--tile", TILE],
                         check=True, capture_output=True, text=True).stdout
    name, src = patch(src)
    if args.emit:
        with open(args.emit, "w") as f:
            f.write(src)
        return
    image = nvrtc_ctypes.cubin(src)
    if args.compile_only:
        print(f"decode_timeline: {name} compiled, {len(image)} bytes of cubin")
        return
    import torch
    torch.cuda.init()
    dev = torch.device("cuda")
    cuda = ctypes.CDLL("libcuda.so.1")
    mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
    torch.zeros(1, device=dev)  # torch's primary context is current from here
    check(cuda.cuModuleLoadData(ctypes.byref(mod), image), "cuModuleLoadData")
    check(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), "cuModuleGetFunction")
    check(cuda.cuFuncSetAttribute(fn, 8, SMEM), "cuFuncSetAttribute")  # MAX_DYNAMIC_SHARED_SIZE_BYTES

    max_nc = pos // C
    gen = torch.Generator(device=dev).manual_seed(7)
    sets = []
    for _ in range(args.sets):
        q = torch.randn(b, H, D, device=dev, generator=gen).bfloat16()
        kr = torch.randn(b, W, HKV, D, device=dev, generator=gen).bfloat16()
        vr = torch.randn(b, W, HKV, D, device=dev, generator=gen).bfloat16()
        ks = torch.randn(b, max_nc, HKV, D, device=dev, generator=gen).bfloat16()
        vs = torch.randn(b, max_nc, HKV, D, device=dev, generator=gen).bfloat16()
        ln = torch.full((b,), pos + 1, dtype=torch.int32, device=dev)
        o = torch.full((b, H, D), float("nan"), device=dev).bfloat16()
        lse = torch.full((b, H), float("nan"), device=dev)
        sets.append((q, kr, vr, ks, vs, ln, o, lse))
    ws_o = torch.empty(splits, b, H, D, device=dev)
    ws_ml = torch.empty(splits, b, H, 2, device=dev)
    counters = torch.zeros(b * HKV, dtype=torch.int32, device=dev)
    nblocks = splits * HKV * b
    trace = torch.zeros(args.launches, nblocks, SLOTS, dtype=torch.int64, device=dev)

    def params(s):
        q, kr, vr, ks, vs, ln, o, lse = s
        p = Params()
        p.q, p.kr, p.vr, p.ks, p.vs, p.len, p.o, p.lse = (t.data_ptr() for t in s)
        p.ws_o, p.ws_ml = ws_o.data_ptr(), ws_ml.data_ptr()
        p.q_sb, p.q_sh = H * D, D
        p.kr_sb, p.kr_ss, p.kr_sh = W * HKV * D, HKV * D, D
        p.vr_sb, p.vr_ss, p.vr_sh = W * HKV * D, HKV * D, D
        p.ks_sb, p.ks_st, p.ks_sh = max_nc * HKV * D, HKV * D, D
        p.vs_sb, p.vs_st, p.vs_sh = max_nc * HKV * D, HKV * D, D
        p.o_sb, p.o_sh, p.lse_sb, p.lse_sh = H * D, D, H, 1
        p.b, p.h, p.hkv, p.max_nc, p.splits = b, H, HKV, max_nc, splits
        p.scale_log2 = (1.0 / math.sqrt(D)) * math.log2(math.e)
        p.page = 1
        p.counters = counters.data_ptr() if splits > 1 else 0
        return p

    plist = [params(s) for s in sets]
    stream = torch.cuda.current_stream().cuda_stream
    for i in range(args.launches):
        p = plist[i % len(plist)]
        tr = ctypes.c_uint64(trace[i].data_ptr())
        argv = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.pointer(p), ctypes.c_void_p),
                                     ctypes.cast(ctypes.pointer(tr), ctypes.c_void_p))
        check(cuda.cuLaunchKernel(fn, splits, HKV, b, NW * 32, 1, 1, SMEM, ctypes.c_void_p(stream), argv, None),
              "cuLaunchKernel")
    torch.cuda.synchronize()

    # the output of the last launch of set 0 against float32 torch
    q, kr, vr, ks, vs, ln, o, lse = sets[0]
    lo = (pos // W) * W
    ring = torch.tensor([t % W for t in range(lo, pos + 1)], device=dev)
    ns = min(pos // C, max_nc)
    worst = 0.0
    for bi in range(b):
        for hk in range(HKV):
            keys = torch.cat([kr[bi, ring, hk], ks[bi, :ns, hk]]).float()
            vals = torch.cat([vr[bi, ring, hk], vs[bi, :ns, hk]]).float()
            qq = q[bi, hk * G:(hk + 1) * G].float()
            ref = torch.softmax(qq @ keys.T / math.sqrt(D), dim=-1) @ vals
            worst = max(worst, (o[bi, hk * G:(hk + 1) * G].float() - ref).abs().max().item())
    print(f"output against float32 torch: max |error| {worst:.2e} ({'ok' if worst < 2e-2 else 'WRONG'})")

    t = trace.cpu()
    us = lambda x: x / 1000.0  # noqa: E731  (globaltimer counts ns)
    rows = []
    gaps = []
    last = args.launches // 2  # the second half: steady state
    for i in range(last, args.launches):
        r = t[i].double()
        t0 = r[:, 0].min()
        rows.append({
            "start": r[:, 0] - t0,
            "len": r[:, 1] - r[:, 0],
            "prologue": r[:, 2] - r[:, 1],
            "tile0": r[:, 3:3 + NW].mean(1) - r[:, 2],
            "loopend": r[:, 7:7 + NW].max(1).values - t0,
            "loop spread": r[:, 7:7 + NW].max(1).values - r[:, 7:7 + NW].min(1).values,
            "end": r[:, 11] - t0,
            "finish": r[:, 11] - r[:, 7:7 + NW].max(1).values,
        })
        if i > last:
            gaps.append(r[:, 0].min() - t[i - 1][:, 11].double().max())
    print(f"decode B={b} pos={pos} splits={splits}: {nblocks} blocks on {len(set(t[-1][:, 12].tolist()))} SMs; "
          f"milestones over launches {last}-{args.launches - 1}, us (median over launches of the block median / max)")
    for k in rows[0]:
        med = torch.tensor([us(x[k].median().item()) for x in rows]).median().item()
        mx = torch.tensor([us(x[k].max().item()) for x in rows]).median().item()
        print(f"  {k:12s} median {med:7.3f}  max {mx:7.3f}")
    mergers = t[-1][:, 13] == 1
    if splits > 1 and mergers.any():
        r = t[-1].double()
        fin = r[:, 11] - r[:, 7:7 + NW].max(1).values
        print(f"  finish of the merging blocks {us(fin[mergers].median().item()):.3f} us, "
              f"of the others {us(fin[~mergers].median().item()):.3f} us")
    # %clock64 (cycle-exact within a block, where %globaltimer moves in 256 ns steps on the H200)
    r = t[-1].double()
    cyc, at_len = r[:, 14], r[:, 15]
    ghz = (cyc / (r[:, 11] - r[:, 0]).clamp(min=1)).median().item()
    print(f"  cycles per block (last launch): median {cyc.median().item():.0f}, max {cyc.max().item():.0f}; "
          f"to the length {at_len.median().item():.0f}; about {ghz:.2f} GHz")
    span = torch.tensor([us(x["end"].max().item()) for x in rows]).median().item()
    print(f"  launch span (first block start to last block end): {span:.3f} us; "
          f"gap to the next launch's first block: {us(torch.tensor(gaps).median().item()):.3f} us")


if __name__ == "__main__":
    main()
