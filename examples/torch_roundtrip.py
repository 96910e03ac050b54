#!/usr/bin/env python3
"""PyTorch -> safetensors -> `flasheva run` -> compare with a PyTorch float64 computation.

Runs all four ops on random tensors and prints the relative error of each against the
contract (../shared/flasheva-semantics.md, as documented in README.md). Needs torch and
safetensors, and a GPU for flasheva run.

    python3 examples/torch_roundtrip.py --flasheva target/release/flasheva
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

TOL = {torch.float16: 2e-3, torch.bfloat16: 8e-3}


def attention_rows(q, keys, values, logit_mask, scale):
    """q [H, D], keys/values [H, M, D] (float64), mask [M] -> o [H, D], lse [H]."""
    logits = scale * torch.einsum("hd,hmd->hm", q, keys)
    logits = logits.masked_fill(~logit_mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.exp(logits - lse[:, None])
    return torch.einsum("hm,hmd->hd", p, values), lse


def prefill_ref(q, k, v, ks, vs, window, chunk, local, scale):
    b, n, h, d = q.shape
    hkv = k.shape[2]
    g = h // hkv
    q, k, v, ks, vs = (t.double() for t in (q, k, v, ks, vs))
    nc = n // chunk
    o = torch.zeros(b, n, h, d, dtype=torch.float64)
    lse = torch.zeros(b, h, n, dtype=torch.float64)
    j = torch.arange(n)
    c = torch.arange(nc)
    for bi in range(b):
        keys = torch.cat([k[bi], ks[bi, :nc]], 0).repeat_interleave(g, dim=1).transpose(0, 1)
        vals = torch.cat([v[bi], vs[bi, :nc]], 0).repeat_interleave(g, dim=1).transpose(0, 1)
        for i in range(n):
            if local == "block":
                lm = (j <= i) & (j // window == i // window)
            else:
                lm = (j <= i) & (j > i - window)
            mask = torch.cat([lm, c < i // chunk])
            o[bi, i], lse[bi, :, i] = attention_rows(q[bi, i], keys, vals, mask, scale)
    return o, lse


def decode_ref(q, kr, vr, ks, vs, lens, window, chunk, local, scale):
    b, h, d = q.shape
    hkv = kr.shape[2]
    g = h // hkv
    q, kr, vr, ks, vs = (t.double() for t in (q, kr, vr, ks, vs))
    o = torch.zeros(b, h, d, dtype=torch.float64)
    lse = torch.zeros(b, h, dtype=torch.float64)
    for bi in range(b):
        p = int(lens[bi]) - 1
        lo = (p // window) * window if local == "block" else max(0, p - window + 1)
        slots = [t % window for t in range(lo, p + 1)]
        ns = min(p // chunk, ks.shape[1])
        keys = torch.cat([kr[bi, slots], ks[bi, :ns]], 0).repeat_interleave(g, dim=1).transpose(0, 1)
        vals = torch.cat([vr[bi, slots], vs[bi, :ns]], 0).repeat_interleave(g, dim=1).transpose(0, 1)
        mask = torch.ones(keys.shape[1], dtype=torch.bool)
        o[bi], lse[bi] = attention_rows(q[bi], keys, vals, mask, scale)
    return o, lse


def chunk_mean_ref(x, chunk):
    b, n, g, d = x.shape
    nc = n // chunk
    return x[:, : nc * chunk].double().reshape(b, nc, chunk, g, d).mean(dim=2)


def chunk_summarize_ref(k, v, omega, chunk, scale):
    b, n, hkv, d = k.shape
    nc = n // chunk
    k = k[:, : nc * chunk].double().reshape(b, nc, chunk, hkv, d)
    v = v[:, : nc * chunk].double().reshape(b, nc, chunk, hkv, d)
    om = omega[:, :nc].double()
    logits = scale * (torch.einsum("bcjgd,bcgd->bcjg", k, om) - 0.5 * (k * k).sum(-1))
    p = torch.softmax(logits, dim=2)
    return torch.einsum("bcjg,bcjgd->bcgd", p, v)


def rel(out, ref):
    out = out.double()
    return ((out - ref).norm() / ref.norm()).item()


def run(flasheva, op, tensors, flags, tmp):
    inp = os.path.join(tmp, f"{op}_in.safetensors")
    out = os.path.join(tmp, f"{op}_out.safetensors")
    save_file({k: t.contiguous() for k, t in tensors.items()}, inp)
    cmd = [flasheva, "run", op, "--input", inp, "--output", out] + flags
    subprocess.run(cmd, check=True)
    return load_file(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flasheva", default="flasheva", help="path of the flasheva binary")
    ap.add_argument("--dtype", choices=["f16", "bf16"], default="bf16")
    args = ap.parse_args()
    dt = torch.float16 if args.dtype == "f16" else torch.bfloat16
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    W, C, D, B, N, H, HKV = 128, 16, 64, 2, 300, 8, 2
    scale = 1 / math.sqrt(D)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        r = lambda *s: (torch.rand(*s) * 2 - 1).to(dt)
        for local in ["block", "sliding"]:
            q, k, v = r(B, N, H, D), r(B, N, HKV, D), r(B, N, HKV, D)
            ks, vs = r(B, N // C, HKV, D), r(B, N // C, HKV, D)
            out = run(args.flasheva, "prefill", dict(q=q, k=k, v=v, ks=ks, vs=vs),
                      ["--window", str(W), "--chunk", str(C), "--local", local], tmp)
            o, lse = prefill_ref(q, k, v, ks, vs, W, C, local, scale)
            results.append((f"prefill {local}", rel(out["o"], o), (out["lse"].double() - lse).abs().max().item()))

            lens = torch.tensor([1, 17, 300], dtype=torch.int32)
            q1, kr, vr = r(3, H, D), r(3, W, HKV, D), r(3, W, HKV, D)
            ks1, vs1 = r(3, 20, HKV, D), r(3, 20, HKV, D)
            out = run(args.flasheva, "decode", dict(q=q1, k_ring=kr, v_ring=vr, ks=ks1, vs=vs1, len=lens),
                      ["--window", str(W), "--chunk", str(C), "--local", local], tmp)
            o, lse = decode_ref(q1, kr, vr, ks1, vs1, lens, W, C, local, scale)
            results.append((f"decode {local}", rel(out["o"], o), (out["lse"].double() - lse).abs().max().item()))
        x = r(B, N, H, D)
        out = run(args.flasheva, "chunk_mean", dict(x=x), ["--chunk", str(C)], tmp)
        results.append(("chunk_mean", rel(out["xbar"], chunk_mean_ref(x, C)), 0.0))
        k, v, om = r(B, N, HKV, D), r(B, N, HKV, D), r(B, N // C, HKV, D)
        out = run(args.flasheva, "chunk_summarize", dict(k=k, v=v, omega=om), ["--chunk", str(C)], tmp)
        results.append(("chunk_summarize", rel(out["vs"], chunk_summarize_ref(k, v, om, C, scale)), 0.0))
    ok = True
    print(f"{'op':18} {'rel err':>10} {'lse err':>10}  tolerance {TOL[dt]:.0e} (lse 1e-3)")
    for name, e, le in results:
        good = e <= TOL[dt] and le <= 1e-3
        ok &= good
        print(f"{name:18} {e:10.2e} {le:10.2e}  {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
