"""Issue 13's numbers, on the GPU machine (after `pip install` of the wheel):
1. per-call overhead of the Python path: host time per `torch.ops.flasheva.decode` call on a tiny
   problem (GPU work of a few microseconds), against the same launch from Rust, timed by
   `flasheva bench` (give its binary as --flasheva to run it in the same process tree);
2. a decode step of flasheva.nn.EvaAttention at B=64 with 32768 tokens of context against the
   same layer decoding with SDPA over a full KV cache: time per step (CUDA events, median) and the
   cache's GPU memory.
Prints one table; --json writes the rows."""

import argparse
import json
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

import flasheva.ops  # noqa: F401
import flasheva
from flasheva.nn import EvaAttention, full_kv_bytes

fe = torch.ops.flasheva


def events_ms(fn, iters=50, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def per_call_us(fn, n=2000):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return us


def overhead(args):
    dt = torch.bfloat16
    b, h, hkv, d, w, c = 1, 8, 2, 64, 64, 16
    q = torch.randn(b, h, d, device="cuda", dtype=dt)
    ring = torch.randn(b, w, hkv, d, device="cuda", dtype=dt)
    sums = torch.randn(b, 4, hkv, d, device="cuda", dtype=dt)
    lens = torch.full((b,), 60, dtype=torch.int32, device="cuda")
    call = lambda: fe.decode(q, ring, ring, sums, sums, lens, c, "block", None)  # noqa: E731
    host_us = per_call_us(call)
    gpu_us = events_ms(call) * 1e3
    row = {"what": "python decode call", "host_us_per_call": host_us, "gpu_us_per_call": gpu_us}
    # where the host time goes: the op without torch's dispatcher (the custom op's own function),
    # the native launch alone with its arguments prepared, and a profile of the op
    ops = flasheva.ops
    direct = getattr(ops.decode, "_init_fn", None)
    if direct is not None:
        row["host_us_without_dispatcher"] = per_call_us(
            lambda: direct(q, ring, ring, sums, sums, lens, c, "block", None))
    o = torch.empty_like(q)
    lse = torch.empty((b, h), dtype=torch.float32, device="cuda")
    spec = ops._spec("decode", q, c, w, "block", h // hkv)
    named = [("q", q), ("k_ring", ring), ("v_ring", ring), ("ks", sums), ("vs", sums),
             ("len", lens), ("o", o), ("lse", lse)]
    descs = ops._describe(named)
    rt = ops.runtime(q.device)
    stream = torch.cuda.current_stream().cuda_stream
    ws = rt.sizing(spec, b, 4 * c, h, hkv, 0, 4)[1]
    keep = torch.empty(max(ws, 1), dtype=torch.float32, device="cuda")
    wsarg = (keep.data_ptr(), ws) if ws > 0 else None
    row["host_us_native_launch"] = per_call_us(
        lambda: rt.launch(spec, descs, stream, b, 4 * c, h, hkv, 0, 4, None, wsarg))
    row["host_us_describe"] = per_call_us(lambda: ops._describe(named))
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        call()
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    print(buf.getvalue())
    if args.flasheva:
        out = subprocess.run(
            [args.flasheva, "bench", "decode", "--head-dim", str(d), "--window", str(w),
             "--chunk", str(c), "--local", "block", "--dtype", "bf16", "--group", str(h // hkv),
             "--batch", str(b), "--heads", str(h), "--kv-heads", str(hkv), "--position", "59",
             "--format", "json"], capture_output=True, text=True, check=True).stdout
        res = json.loads(out)["results"][0]["timing"]
        row["rust_bench_median_us"] = res["median_ms"] * 1e3
    return row


def decode_step(args):
    dt = torch.bfloat16
    b, ctx, dim, h, hkv, d, w, c = 64, 32768, 1024, 8, 2, 128, 512, 64
    torch.manual_seed(0)
    m = EvaAttention(dim, h, hkv, d, w, c).cuda().to(dt)
    cache = m.new_cache(b, ctx + 64)
    with torch.no_grad():
        for s in range(0, ctx, 4096):  # the context, in chunks of prefill through extend
            m(torch.randn(b, 4096, dim, device="cuda", dtype=dt), cache)
        x = torch.randn(b, 1, dim, device="cuda", dtype=dt)
        saved = cache.length

        def eva_step():
            cache.length = saved  # decode the same position again
            m(x, cache)

        eva_ms = events_ms(eva_step, iters=30)
        # the same layer decoding with SDPA over a full KV cache
        kf = torch.randn(b, hkv, ctx + 1, d, device="cuda", dtype=dt)
        vf = torch.randn_like(kf)

        def sdpa_step():
            q = m.wq(x).view(b, 1, h, d).transpose(1, 2)
            kf[:, :, -1:] = m.wk(x).view(b, 1, hkv, d).transpose(1, 2)
            vf[:, :, -1:] = m.wv(x).view(b, 1, hkv, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, kf, vf, enable_gqa=True)
            return m.wo(o.transpose(1, 2).reshape(b, 1, h * d))

        sdpa_ms = events_ms(sdpa_step, iters=30)
    return {
        "what": "decode step, B=64, 32768 context",
        "flasheva_ms": eva_ms,
        "sdpa_full_kv_ms": sdpa_ms,
        "flasheva_cache_bytes": cache.bytes(),
        "full_kv_bytes": full_kv_bytes(b, ctx + 1, hkv, d, dt),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flasheva", help="the flasheva binary, for the Rust-side launch time")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [overhead(args), decode_step(args)]
    for r in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
