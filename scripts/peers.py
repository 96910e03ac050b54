#!/usr/bin/env python3
"""Peers for the prefill, measured in the same run as `flasheva bench` (device side, PyTorch).

For every shape (and local mode, dtype) this times
  - FlexAttention (torch.compile'd flex_attention) with the EVA mask over the augmented key set
    [K; Ks] (raw keys j visible to query i under the window rule, summary c visible iff c < i / C),
    its output first checked against a float64 reference of the same mask on a small shape;
  - SDPA dense causal attention over the N raw keys with the cuDNN backend (what a model without
    EVA would run);
  - flasheva itself, by running `flasheva bench prefill ... --json` (when --flasheva is given),
    with each backend of --backends (nvrtc, triton);
  - with --backward, FlexAttention's backward (autograd of the compiled function: forward plus
    backward time minus the forward's) and `flasheva bench prefill_bwd`, counting 2.5 times
    the forward's flops for both (FlashAttention's convention);
and prints one table with the ratio flasheva / peer. Effective TFLOP/s count 4*D flops per
visible (query, key-or-summary) pair for every method (dense causal counts its own N(N+1)/2).

Timing: CUDA events, warm-up, median of --iters samples, inputs rotated over more than three
times the L2 cache. Usage (from the repo root on the GPU machine):

    python3 scripts/peers.py --flasheva .device/bin/flasheva --json $OUT/peers.json
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

SHAPES = [
    # B, N, D, W, C
    (4, 4096, 128, 512, 64),
    (1, 16384, 128, 512, 64),
    (1, 16384, 64, 256, 16),
    (1, 65536, 128, 1024, 64),
]
HEADS = 16
L2_BYTES = 60 << 20


def visible_pairs(n, w, c, mode):
    """Visible (query, key-or-summary) pairs per batch and head."""
    total = 0
    for i in range(n):
        lo = (i // w) * w if mode == "block" else max(0, i - w + 1)
        total += (i - lo + 1) + i // c
    return total


def eva_mask_mod(n, w, c, mode):
    """The EVA mask over [K; Ks]: column j < n is raw key j (window rule), column j >= n is summary
    j - n (visible iff j - n < i // C). Plain Python constants, as a model would write it (so the
    compiled kernel divides by powers of two with shifts)."""

    def mask(b, h, q_idx, kv_idx):
        raw = kv_idx < n
        if mode == "block":
            in_window = (kv_idx // w) == (q_idx // w)
        else:
            in_window = kv_idx > q_idx - w
        local = (kv_idx <= q_idx) & in_window
        summary = (kv_idx - n) < (q_idx // c)
        return (raw & local) | (~raw & summary)

    return mask


def reference_rows(q, k, v, ks, vs, rows, n, w, c, mode, scale):
    """Float64 EVA attention (the contract) for the query rows `rows` only: [B, H, len(rows), D]."""
    kk = torch.cat([k, ks], dim=2).double()
    vv = torch.cat([v, vs], dim=2).double()
    s = torch.einsum("bhid,bhjd->bhij", q[:, :, rows].double(), kk) * scale
    i = rows[:, None]
    j = torch.arange(kk.shape[2], device=q.device)[None, :]
    raw = j < n
    if mode == "block":
        local = (j <= i) & ((j // w) == (i // w))
    else:
        local = (j <= i) & (j > i - w)
    vis = (raw & local) | (~raw & ((j - n) < (i // c)))
    s = s.masked_fill(~vis, float("-inf"))
    return torch.softmax(s, dim=-1) @ vv


def time_ms(fn, sets, iters, warmup=5):
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    samples = []
    for i in range(iters):
        a = sets[(i + warmup) % len(sets)]
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        fn(*a)  # keep the GPU busy while the host enqueues the timed call
        start.record()
        fn(*a)
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop))
    return statistics.median(samples)


def graph_ms(calls, reps=40):
    """Per-call GPU ms of `calls` (closures, run round-robin over rotating inputs): `reps` calls
    captured in one CUDA graph and replayed, the median of 15 replays. For kernels as short as a
    decode's (tens of microseconds) a Python call's host time exceeds the kernel's, so timing calls
    issued from Python (`time_ms`) measures the host, not the GPU."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on the capture stream (flasheva's decode counters live per stream)
        for f in calls:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for i in range(reps):
            calls[i % len(calls)]()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(15):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / reps)
    ts.sort()
    return ts[len(ts) // 2]


def make_sets(b, n, d, nc, dtype, per_set_bytes):
    count = max(2, min(16, math.ceil(3 * L2_BYTES / max(per_set_bytes, 1))))
    sets = []
    for _ in range(count):
        q = torch.rand(b, HEADS, n, d, device="cuda", dtype=dtype) * 2 - 1
        k = torch.rand(b, HEADS, n, d, device="cuda", dtype=dtype) * 2 - 1
        v = torch.rand(b, HEADS, n, d, device="cuda", dtype=dtype) * 2 - 1
        ks = torch.rand(b, HEADS, nc, d, device="cuda", dtype=dtype) * 2 - 1
        vs = torch.rand(b, HEADS, nc, d, device="cuda", dtype=dtype) * 2 - 1
        sets.append((q, k, v, ks, vs))
    return sets


_compiled = {}


def flex_fn():
    if "flex" not in _compiled:
        _compiled["flex"] = torch.compile(flex_attention, dynamic=False)
    return _compiled["flex"]


def check_rows(out, q, k, v, ks, vs, n, w, c, mode, scale):
    """Relative error of `out` against float64 on the first, last and a middle block of rows."""
    pick = sorted(set(list(range(0, min(n, 192))) + list(range(max(0, n - 192), n))
                      + list(range(n // 2, min(n, n // 2 + 128)))))
    rows = torch.tensor(pick, device=q.device)
    ref = reference_rows(q, k, v, ks, vs, rows, n, w, c, mode, scale)
    got = out[:, :, rows].double()
    return ((got - ref).norm() / ref.norm()).item()


def run_flasheva(exe, b, n, d, w, c, mode, dtype, iters, op="prefill", backend=None):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [exe, "bench", op, "--head-dim", str(d), "--window", str(w), "--chunk", str(c),
           "--local", mode, "--dtype", dtype, "--batch", str(b), "--seq-len", str(n),
           "--heads", str(HEADS), "--kv-heads", str(HEADS), "--iters", str(iters), "--json", path]
    if backend:
        cmd += ["--backend", backend]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        return None, None
    doc = json.load(open(path))
    os.unlink(path)
    row = doc["results"][0]
    return row["timing"]["median_ms"], row.get("tile")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flasheva", help="flasheva binary to run `bench` with (same run)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--dtypes", default="bf16,f16")
    ap.add_argument("--modes", default="block,sliding")
    ap.add_argument("--shapes", default="all", help="comma-separated indices into the shape list, or all")
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--backends", default="",
                    help="comma-separated flasheva backends to bench (nvrtc, triton); default: the tuned choice")
    ap.add_argument("--backward", action="store_true",
                    help="also FlexAttention's backward and flasheva's prefill_bwd")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    # One compiled kernel per shape, mask and dtype: raise dynamo's recompile limit so that no
    # configuration silently falls back to the eager (dense, quadratic-memory) path.
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}", flush=True)
    shapes = SHAPES if a.shapes == "all" else [SHAPES[int(i)] for i in a.shapes.split(",")]
    rows = []
    for (b, n, d, w, c) in shapes:
        nc = n // c
        for dt_name in a.dtypes.split(","):
            dtype = torch.bfloat16 if dt_name == "bf16" else torch.float16
            sets = None
            for mode in a.modes.split(","):
                if sets is None:
                    per_set = 2 * b * HEADS * (2 * n + 2 * nc) * d + 2 * b * HEADS * n * d
                    sets = make_sets(b, n, d, nc, dtype, per_set)
                    aug = [(q, torch.cat([k, ks], 2), torch.cat([v, vs], 2)) for (q, k, v, ks, vs) in sets]
                bm = create_block_mask(eva_mask_mod(n, w, c, mode), None, None, n, n + nc, device="cuda")
                flex = flex_fn()
                scale = 1 / math.sqrt(d)
                # FlexAttention is checked against float64 on this very shape (a subset of rows).
                out = flex(*aug[0], block_mask=bm, scale=scale)
                err = check_rows(out, *sets[0], n, w, c, mode, scale)
                del out
                tol = 8e-3 if dt_name == "bf16" else 2e-3
                status = "PASS" if err <= tol else "FAIL"
                print(f"{status} FlexAttention EVA mask B={b} N={n} D={d} W={w} C={c} {mode} {dt_name}: "
                      f"rel err {err:.2e} vs float64 on {3 * 128}+ rows (tol {tol:.0e})", flush=True)
                if status == "FAIL":
                    sys.exit(1)
                flex_ms = time_ms(lambda q, kk, vv: flex(q, kk, vv, block_mask=bm, scale=scale),
                                  aug, a.iters)
                flops = 4.0 * d * b * HEADS * visible_pairs(n, w, c, mode)
                row = {"B": b, "N": n, "D": d, "W": w, "C": c, "mode": mode, "dtype": dt_name,
                       "flops": flops, "flex_ms": flex_ms, "flex_tflops": flops / flex_ms / 1e9}
                if not a.no_sdpa and mode == a.modes.split(",")[0]:
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        sd = time_ms(lambda q, k, v, ks, vs: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                     sets, a.iters)
                    row["sdpa_causal_ms"] = sd
                    row["sdpa_causal_tflops"] = 4.0 * d * b * HEADS * n * (n + 1) / 2 / sd / 1e9
                if a.flasheva:
                    fe_ms, tile = run_flasheva(a.flasheva, b, n, d, w, c, mode, dt_name, a.iters)
                    if fe_ms is not None:
                        row["flasheva_ms"] = fe_ms
                        row["flasheva_tile"] = tile
                        row["flasheva_tflops"] = flops / fe_ms / 1e9
                        row["ratio_vs_flex"] = fe_ms / flex_ms
                    for be in filter(None, a.backends.split(",")):
                        ms, t = run_flasheva(a.flasheva, b, n, d, w, c, mode, dt_name, a.iters, backend=be)
                        if ms is not None:
                            row[f"flasheva_{be}_ms"] = ms
                            row[f"flasheva_{be}_tile"] = t
                            row[f"flasheva_{be}_tflops"] = flops / ms / 1e9
                if a.backward:
                    grads = [tuple(x.detach().requires_grad_() for x in t) for t in aug]
                    dos = [torch.rand_like(t[0]) * 2 - 1 for t in aug]

                    def fwd_bwd(q, kk, vv, do):
                        out = flex(q, kk, vv, block_mask=bm, scale=scale)
                        torch.autograd.grad(out, (q, kk, vv), do)

                    both = time_ms(fwd_bwd, [g + (do,) for g, do in zip(grads, dos)], a.iters)
                    row["flex_bwd_ms"] = both - flex_ms
                    row["flex_bwd_tflops"] = 2.5 * flops / row["flex_bwd_ms"] / 1e9
                    del grads, dos
                    if a.flasheva:
                        ms, t = run_flasheva(a.flasheva, b, n, d, w, c, mode, dt_name, a.iters,
                                             op="prefill_bwd")
                        if ms is not None:
                            row["flasheva_bwd_ms"] = ms
                            row["flasheva_bwd_tile"] = t
                            row["flasheva_bwd_tflops"] = 2.5 * flops / ms / 1e9
                            row["ratio_bwd_vs_flex"] = ms / row["flex_bwd_ms"]
                            if "flasheva_ms" in row:
                                row["bwd_over_fwd"] = ms / row["flasheva_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)
            del sets
            torch.cuda.empty_cache()
    if a.json:
        json.dump({"device": dev, "torch": torch.__version__, "rows": rows}, open(a.json, "w"), indent=1)
    print(f"\n{'shape':<34} {'mode':<8} {'dt':<5} {'flasheva ms':>11} {'TFLOP/s':>8} {'flex ms':>9} "
          f"{'TFLOP/s':>8} {'fe/flex':>8} {'sdpa causal ms':>14}")
    for r in rows:
        shape = f"B={r['B']} N={r['N']} D={r['D']} W={r['W']} C={r['C']}"
        fe = f"{r['flasheva_ms']:.4f}" if "flasheva_ms" in r else "-"
        fet = f"{r['flasheva_tflops']:.0f}" if "flasheva_tflops" in r else "-"
        ratio = f"{r['ratio_vs_flex']:.2f}x" if "ratio_vs_flex" in r else "-"
        sd = f"{r['sdpa_causal_ms']:.3f}" if "sdpa_causal_ms" in r else ""
        print(f"{shape:<34} {r['mode']:<8} {r['dtype']:<5} {fe:>11} {fet:>8} {r['flex_ms']:>9.4f} "
              f"{r['flex_tflops']:>8.0f} {ratio:>8} {sd:>14}")
    extra = [r for r in rows if any(k.startswith("flasheva_triton") or k.startswith("flex_bwd") for k in r)]
    if extra:
        print(f"\n{'shape':<34} {'mode':<8} {'dt':<5} {'nvrtc ms':>9} {'triton ms':>10} "
              f"{'bwd ms':>9} {'flex bwd':>9} {'bwd/flex':>9} {'bwd/fwd':>8}")
        for r in extra:
            shape = f"B={r['B']} N={r['N']} D={r['D']} W={r['W']} C={r['C']}"
            f = lambda k, fmt: format(r[k], fmt) if k in r else "-"
            print(f"{shape:<34} {r['mode']:<8} {r['dtype']:<5} {f('flasheva_nvrtc_ms', '.4f'):>9} "
                  f"{f('flasheva_triton_ms', '.4f'):>10} {f('flasheva_bwd_ms', '.4f'):>9} "
                  f"{f('flex_bwd_ms', '.4f'):>9} {f('ratio_bwd_vs_flex', '.2f'):>9} {f('bwd_over_fwd', '.2f'):>8}")


if __name__ == "__main__":
    main()
