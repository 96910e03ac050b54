#!/usr/bin/env python3
"""Peers for the decode (issue 11's floors), measured in the same run as `flasheva bench decode`
(device side, PyTorch).

For every shape (batch, position, heads, kv heads, D, W, C; block mode, bfloat16) this times one
query per sequence at that position with
  - SDPA over a compact copy of the rows flasheva reads (the W-slot ring and the position / C
    summaries, gathered into one contiguous [B, Hkv, rows, D] tensor beforehand, so the gather
    flasheva avoids is not counted): the floor says flasheva must be faster;
  - SDPA over the full KV cache [B, Hkv, position + 1, D] (what a model without EVA reads; at the
    device's read rate);
  - flasheva itself (`flasheva bench decode ... --json`, when --flasheva is given), whose JSON also
    carries the read rate it measured in the same process: decode's share of it is the floor's
    other half (>= 85 %).
SDPA runs with enable_gqa (the query heads of a kv head share its rows). Timing: --iters calls
captured in one CUDA graph, round-robin over input sets together larger than three times the L2
cache, replayed; the median of 15 replays per call (peers.graph_ms: a Python call's host time
exceeds a small-batch decode kernel's, so calls issued one by one would time the host).
flasheva is timed by `flasheva bench --graph` the same way (launches captured in a CUDA graph and
replayed, as a serving loop runs a step), so the ratio to SDPA is like for like; `flasheva bench`'s
back-to-back launches (which include the launch gaps a graph removes: about 1 us at these sizes,
run 46) are printed beside it ("launches"; the only timing of runs 18-60). Usage (from the
repo root on the GPU machine):

    python3 scripts/decode_peers.py --flasheva .device/bin/flasheva --json $OUT/decode_peers.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

# peers.py's graph timing (beside this file)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import L2_BYTES, graph_ms  # noqa: E402

# B, position, H, Hkv, D, W, C: issue 11's table, then its two added shapes
SHAPES = [
    (64, 32767, 32, 8, 128, 512, 64),
    (8, 131071, 32, 8, 128, 512, 64),
    (64, 16383, 16, 16, 64, 128, 8),
    (1, 1048575, 32, 8, 128, 512, 64),
    (256, 8191, 32, 8, 128, 512, 64),
]




def input_sets(shape_q, shape_kv, dtype, budget_bytes):
    """Enough (q, k, v) sets that together they exceed three L2s (at least 2), within a budget."""
    one = 2 * torch.Size(shape_kv).numel() * 2
    n = max(2, min((3 * L2_BYTES) // max(one, 1) + 1, budget_bytes // max(one, 1)))
    return [(torch.randn(shape_q, device="cuda", dtype=dtype),
             torch.randn(shape_kv, device="cuda", dtype=dtype),
             torch.randn(shape_kv, device="cuda", dtype=dtype)) for _ in range(n)]


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def run_flasheva(exe, b, pos, h, hkv, d, w, c, iters, graph):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [exe, "bench", "decode", "--head-dim", str(d), "--window", str(w), "--chunk", str(c),
           "--local", "block", "--dtype", "bf16", "--group", str(h // hkv), "--batch", str(b),
           "--position", str(pos), "--heads", str(h), "--kv-heads", str(hkv), "--iters", str(iters),
           "--json", path] + (["--graph"] if graph else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        return None
    doc = json.load(open(path))
    os.unlink(path)
    row = doc["results"][0]
    return {"ms": row["timing"]["median_ms"], "gbps": row.get("gbps"), "tile": row.get("tile"),
            "read_gbps": doc.get("read_gbps"), "read_same_gbps": row.get("read_same_bytes_gbps")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flasheva", help="flasheva binary to run `bench decode` with (same run)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--shapes", default="all", help="comma-separated indices into the shape list, or all")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--profile", action="store_true",
                    help="only call SDPA on the compact copy of each shape 5 times, one call at a time, "
                         "and exit (for a profiler: ncu -k regex:... --launch-skip 3 --launch-count 1)")
    a = ap.parse_args()
    pick = range(len(SHAPES)) if a.shapes == "all" else [int(i) for i in a.shapes.split(",")]
    dt = torch.bfloat16
    if a.profile:
        for i in pick:
            b, pos, h, hkv, d, w, c = SHAPES[i]
            rows_read = min(w, pos % w + 1) + pos // c
            q, k, v = input_sets((b, h, 1, d), (b, hkv, rows_read, d), dt, 0)[0]
            for _ in range(5):
                sdpa(q, k, v)
            torch.cuda.synchronize()
        return
    rows = []
    print(f"{'shape':44} {'flasheva ms':>11} {'share of read':>13} {'same-size':>9} {'compact ms':>10} "
          f"{'fe/compact':>10} {'full-KV ms':>10} {'launches ms':>11}")
    for i in pick:
        b, pos, h, hkv, d, w, c = SHAPES[i]
        rows_read = min(w, pos % w + 1) + pos // c  # block mode: the ring's visible part, the summaries
        # SDPA in CUDA graphs (graph_ms): timed from Python, its host time (tens of microseconds a
        # call) exceeded the small-batch kernels' and was measured instead (runs 18-38's B=8 and
        # B=1 "compact" columns were host-bound; run 46 found it)
        compact_sets = input_sets((b, h, 1, d), (b, hkv, rows_read, d), dt, 8 << 30)
        compact = graph_ms([lambda t=t: sdpa(*t) for t in compact_sets], a.iters)
        del compact_sets
        full_sets = input_sets((b, h, 1, d), (b, hkv, pos + 1, d), dt, 24 << 30)
        full = graph_ms([lambda t=t: sdpa(*t) for t in full_sets], min(a.iters, 10))
        del full_sets
        torch.cuda.empty_cache()
        fe = run_flasheva(a.flasheva, b, pos, h, hkv, d, w, c, a.iters, True) if a.flasheva else None
        fe_launches = run_flasheva(a.flasheva, b, pos, h, hkv, d, w, c, a.iters, False) if a.flasheva else None
        row = {"B": b, "position": pos, "H": h, "Hkv": hkv, "D": d, "W": w, "C": c,
               "rows_read": rows_read, "sdpa_compact_ms": compact, "sdpa_full_ms": full}
        share = ratio = same = None
        if fe:
            row.update({"flasheva_ms": fe["ms"], "flasheva_gbps": fe["gbps"], "flasheva_tile": fe["tile"],
                        "read_gbps": fe["read_gbps"]})
            if fe["gbps"] and fe["read_gbps"]:
                share = fe["gbps"] / fe["read_gbps"]
                row["share_of_read"] = share
            if fe["gbps"] and fe["read_same_gbps"]:
                # against a read of the same bytes over as many rotating buffers (start and tail
                # included): what a kernel this short can reach
                same = fe["gbps"] / fe["read_same_gbps"]
                row["read_same_gbps"] = fe["read_same_gbps"]
                row["share_of_same_size_read"] = same
            ratio = fe["ms"] / compact
            row["ratio_vs_compact"] = ratio
            row["flasheva_timing"] = "graph"
        if fe_launches:
            row["flasheva_launches_ms"] = fe_launches["ms"]
        rows.append(row)
        shape = f"B={b} pos={pos} H={h} Hkv={hkv} D={d} W={w} C={c}"
        fe_ms = f"{fe['ms']:.4f}" if fe else "-"
        fl_ms = f"{fe_launches['ms']:.4f}" if fe_launches else "-"
        print(f"{shape:44} {fe_ms:>11} {(f'{100 * share:.1f} %' if share else '-'):>13} "
              f"{(f'{100 * same:.1f} %' if same else '-'):>9} {compact:>10.4f} "
              f"{(f'{ratio:.2f}x' if ratio else '-'):>10} {full:>10.3f} "
              f"{fl_ms:>11}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
