#!/usr/bin/env python3
"""Issue 11: does the decode's speed depend on the cache layout?

The contract's caches are token-major (ring [B, W, Hkv, D], summaries [B, MAXNC, Hkv, D]): the rows
of one kv head lie Hkv * D elements apart, so a decode block reads 256-byte rows 2 KiB apart. The
kernels take any strides, so a head-major cache ([B, Hkv, W, D] seen through a transposed view)
runs the same kernel on rows that lie next to each other, as SDPA's compact copy does.

For each of issue 11's decode shapes this times, in one process (bf16, H=32, Hkv=8, D=128, W=512,
C=64, block mode): flasheva's decode on a token-major cache, on a head-major cache holding the
same values (the outputs must be bitwise equal: same kernel, same order of operations), and SDPA
on a compact head-major copy. Each is `--reps` calls captured in one CUDA graph (no Python
overhead between launches), replayed; inputs rotate over enough copies that the bytes read per
replay exceed 4x the L2; the median of 15 replays per call is reported.

Run on the GPU machine with the wheel installed (scripts/device-python installs it):
    python3 scripts/decode_layout.py --json out.json
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

from flasheva import ops
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import L2_BYTES, graph_ms  # noqa: E402  (scripts/peers.py)

H, HKV, D, W, C = 32, 8, 128, 512, 64
SHAPES = [(64, 32767), (256, 8191), (8, 131071), (1, 1048575)]


def head_major(t):
    """The same values as token-major `t` [B, R, Hkv, D], stored [B, Hkv, R, D], seen as [B, R, Hkv, D]."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    dt = torch.bfloat16
    rows = []
    for b, pos in SHAPES:
        ns = pos // C
        nbytes = b * HKV * (W + ns) * D * 2 * 2  # K and V of every visible row (W <= pos)
        sets = max(1, math.ceil(4 * L2_BYTES / nbytes))
        lens = torch.full((b,), pos + 1, dtype=torch.int32, device="cuda")
        tm, hm, sd = [], [], []
        for _ in range(sets):
            q = torch.randn(b, H, D, device="cuda", dtype=dt)
            kr, vr = (torch.randn(b, W, HKV, D, device="cuda", dtype=dt) for _ in range(2))
            ks, vs = (torch.randn(b, ns, HKV, D, device="cuda", dtype=dt) for _ in range(2))
            tm.append((q, kr, vr, ks, vs))
            hm.append((q, head_major(kr), head_major(vr), head_major(ks), head_major(vs)))
            # SDPA's compact copy: [B, Hkv, W + NS, D] (the ring's slots in any order: softmax
            # does not care), the query as [B, H, 1, D]
            kc = torch.cat([kr, ks], 1).transpose(1, 2).contiguous()
            vc = torch.cat([vr, vs], 1).transpose(1, 2).contiguous()
            sd.append((q[:, :, None, :], kc, vc))
        o1, l1 = ops.decode(*tm[0], lens, C, "block", None)
        o2, l2 = ops.decode(*hm[0], lens, C, "block", None)
        same = bool(torch.equal(o1, o2) and torch.equal(l1, l2))
        fe = lambda t: (lambda: ops.decode(*t, lens, C, "block", None))  # noqa: E731
        sdpa = lambda t: (lambda: F.scaled_dot_product_attention(*t, enable_gqa=True))  # noqa: E731
        t_tm = graph_ms([fe(t) for t in tm], a.reps)
        t_hm = graph_ms([fe(t) for t in hm], a.reps)
        t_sd = graph_ms([sdpa(t) for t in sd], a.reps)
        row = dict(batch=b, position=pos, bytes=nbytes, sets=sets, token_major_ms=t_tm, head_major_ms=t_hm,
                   sdpa_compact_ms=t_sd, identical_outputs=same,
                   token_major_gbps=nbytes / t_tm / 1e6, head_major_gbps=nbytes / t_hm / 1e6,
                   sdpa_gbps=nbytes / t_sd / 1e6)
        rows.append(row)
        print(f"B={b:<4} pos={pos:<8} token-major {t_tm:.4f} ms ({row['token_major_gbps']:.0f} GB/s)  "
              f"head-major {t_hm:.4f} ms ({row['head_major_gbps']:.0f} GB/s, {t_tm / t_hm:.3f}x)  "
              f"SDPA compact {t_sd:.4f} ms ({row['sdpa_gbps']:.0f} GB/s)  "
              f"head-major / SDPA {t_hm / t_sd:.3f}  outputs bitwise equal: {same}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
