#!/usr/bin/env python3
"""The backward / forward time ratio of the vendor attention kernels on a dense causal mask.

Issue 12's second floor asks flasheva's backward for at most 3x its own forward's time. This
measures the same ratio for PyTorch SDPA's cuDNN and FlashAttention-2 backends (dense causal,
bf16, B=1, H=16, D=128, the issue's sequence lengths), in one process, with CUDA events: the
forward alone, and forward + backward (the backward is the difference), medians of `--iters`
(peers.time_ms: each timed call follows an untimed one, so the host's enqueue is not timed).
The FLOP counts are FlashAttention's: forward 4 N^2 D H / 2 (causal), backward 2.5x that.

Run: python3 scripts/dense_ratio.py [--iters 10] [--json out.json]
"""
import argparse
import json
import os
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

# peers.py's event timing (beside this file)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import time_ms  # noqa: E402


def timed(fn, iters, warmup=2):
    """Median ms of `fn()` over `iters` calls (peers.time_ms with one argument-less input set)."""
    return time_ms(fn, [()], iters, warmup)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seq-lens", default="16384,65536")
    ap.add_argument("--json")
    args = ap.parse_args()
    h, d = 16, 128
    rows = []
    for n in [int(x) for x in args.seq_lens.split(",")]:
        q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
        flops_fwd = 4 * n * n * d * h / 2
        for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash2", SDPBackend.FLASH_ATTENTION)]:
            try:
                with sdpa_kernel(backend):

                    def fwd():
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v, is_causal=True)

                    def fwd_bwd():
                        # fresh gradients each call (accumulating into .grad would time three adds too)
                        q.grad = k.grad = v.grad = None
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        o.backward(do)

                    f = timed(fwd, args.iters)
                    fb = timed(fwd_bwd, args.iters)
            except RuntimeError as e:
                print(f"N={n} {name}: not available ({str(e).splitlines()[0]})")
                continue
            bwd = fb - f
            row = {
                "n": n,
                "backend": name,
                "fwd_ms": f,
                "bwd_ms": bwd,
                "bwd_over_fwd": bwd / f,
                "fwd_tflops": flops_fwd / f / 1e9,
                "bwd_tflops": 2.5 * flops_fwd / bwd / 1e9,
            }
            rows.append(row)
            print(
                f"N={n:6d} {name:6s} fwd {f:9.3f} ms ({row['fwd_tflops']:6.1f} TFLOP/s)  "
                f"bwd {bwd:9.3f} ms ({row['bwd_tflops']:6.1f} TFLOP/s)  bwd/fwd {bwd / f:5.2f}"
            )
        del q, k, v, do
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
