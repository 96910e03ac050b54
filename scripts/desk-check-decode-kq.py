#!/usr/bin/env python3
"""Desk check of the swapped decode tile (templates/decode_common.cuh: fe_kq_load_q, fe_kq_attend,
fe_state_finish, fe_state_to_scratch for FeColState) without a GPU.

One warp's 32 lanes, `ldmatrix` (plain and .trans), `movmatrix.trans` and the m16n8k16 `mma.sync`
fragments are modelled as the PTX ISA defines them (the primitives of
scripts/desk-check-prefill-bwd.py), in float64, and the template's loops are followed line for line
over a run of K/V tiles whose last one is partly visible, for every block_n, with K/V in padded
rows and (D a multiple of 64) in the 128-byte-swizzled panels of fe_sw_addr. The result (the
scratch rows the block merge reads) must equal a float64 softmax attention of the warp's heads.
Agreement to ~1e-15 means the operand roles, fragment mappings and masks are right; it says nothing
about races, rounding or speed (the GPU suite does). Run: python3 scripts/desk-check-decode-kq.py
"""
import importlib.util
import os

import numpy as np

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("dc", os.path.join(_here, "desk-check-prefill-bwd.py"))
dc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dc)
PAD = dc.PAD


def movmatrix_t(x):  # x [32][2]: lane l holds M[l/4][2(l%4) .. +1]; returns M^T the same way
    M = np.zeros((8, 8))
    for l in range(32):
        M[l // 4, 2 * (l % 4):2 * (l % 4) + 2] = x[l]
    y = np.zeros((32, 2))
    for l in range(32):
        g, t = l // 4, l % 4
        y[l] = M.T[g, 2 * t:2 * t + 2]
    return y


def lane_off_a(l, DP):  # fe_lane_off_a, bytes
    return ((((l >> 3) & 1) * 8 + (l & 7)) * DP + (l >> 4) * 8) * 2


def lane_off_b(l, DP):  # fe_lane_off_b, bytes
    return (((l >> 4) * 8 + (l & 7)) * DP + ((l >> 3) & 1) * 8) * 2


def sw_addr(BN, row, chunk):  # fe_sw_addr, bytes from the tile's base
    return (chunk >> 3) * BN * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4)


def run(D, BN, nkeys, G, seed, kvsw=0):
    rng = np.random.default_rng(seed)
    DP = D + PAD
    KT = D // 16
    scale_log2 = 0.7 / np.sqrt(D) * np.log2(np.e)
    q = rng.standard_normal((G, D)) * 2
    keys = rng.standard_normal((nkeys, D))
    vals = rng.standard_normal((nkeys, D))
    # the padded query tile: 8 rows, rows >= G zero (fe_load_rows zero-fills them)
    sq = dc.Smem(8 * DP)
    for r in range(8):
        sq.m[r * DP:r * DP + D] = q[r] if r < G else 0.0
    # fe_kq_load_q
    qb = np.zeros((KT, 2, 32, 2))
    for k2 in range(KT // 2):
        addr = [((l & 7) * DP + (l >> 3) * 8) * 2 + k2 * 64 for l in range(32)]
        r = dc.ldsm_x4(sq, addr)
        qb[2 * k2, 0], qb[2 * k2, 1], qb[2 * k2 + 1, 0], qb[2 * k2 + 1, 1] = r[0], r[1], r[2], r[3]
    o = np.zeros((D // 16, 32, 4))
    m = np.full((32, 2), -np.inf)
    lsum = np.zeros((32, 2))
    for t0 in range(0, nkeys, BN):
        valid = min(BN, nkeys - t0)
        masked = valid != BN
        nsub = (valid + 15) // 16
        sk = dc.Smem(BN * DP)
        sv = dc.Smem(BN * DP)
        for r in range(BN):  # rows past the visible ones: K anything, V zero-filled
            krow = keys[t0 + r] if r < valid else np.full(D, 1e3)
            vrow = vals[t0 + r] if r < valid else np.zeros(D)
            if kvsw:  # fe_load_rows<..., SW = true>: 16-byte chunk c of row r at fe_sw_addr
                for c in range(D // 8):
                    a = sw_addr(BN, r, c) // 2
                    sk.m[a:a + 8] = krow[8 * c:8 * c + 8]
                    sv.m[a:a + 8] = vrow[8 * c:8 * c + 8]
            else:
                sk.m[r * DP:r * DP + D] = krow
                sv.m[r * DP:r * DP + D] = vrow
        NS = BN // 16
        s = np.zeros((NS, 32, 4))
        s2 = np.zeros((NS, 32, 4))
        for kk in range(0, KT, 2):
            for j in range(NS):
                if masked and j >= nsub:
                    continue
                if kvsw:
                    rows = [j * 16 + ((l >> 3) & 1) * 8 + (l & 7) for l in range(32)]
                    a = dc.ldsm_x4(sk, [sw_addr(BN, rows[l], kk * 2 + (l >> 4)) for l in range(32)])
                    a2 = dc.ldsm_x4(sk, [sw_addr(BN, rows[l], kk * 2 + 2 + (l >> 4)) for l in range(32)])
                else:
                    a = dc.ldsm_x4(sk, [lane_off_a(l, DP) + j * 16 * DP * 2 + kk * 32 for l in range(32)])
                    a2 = dc.ldsm_x4(sk, [lane_off_a(l, DP) + j * 16 * DP * 2 + kk * 32 + 32 for l in range(32)])
                dc.mma(s[j], a, qb[kk, 0], qb[kk, 1])
                dc.mma(s2[j], a2, qb[kk + 1, 0], qb[kk + 1, 1])
        mx = np.full((32, 2), -np.inf)
        for j in range(NS):
            for l in range(32):
                for e in range(4):
                    s[j, l, e] += s2[j, l, e]
                    if masked and j * 16 + (l >> 2) + 8 * (e >> 1) >= valid:
                        s[j, l, e] = -np.inf
                    mx[l, e & 1] = max(mx[l, e & 1], s[j, l, e])
        for off in (4, 8, 16):
            mx = np.maximum(mx, mx[[l ^ off for l in range(32)]])
        m_new = np.maximum(m, mx * scale_log2)
        base = np.where(m_new == -np.inf, 0.0, m_new)
        alpha = np.exp2(m - base)
        m = m_new
        lsum *= alpha
        for mt in range(D // 16):
            o[mt, :, 0] *= alpha[:, 0]
            o[mt, :, 1] *= alpha[:, 1]
            o[mt, :, 2] *= alpha[:, 0]
            o[mt, :, 3] *= alpha[:, 1]
        for j in range(NS):
            if masked and j >= nsub:
                continue
            for l in range(32):
                for e in range(4):
                    s[j, l, e] = np.exp2(s[j, l, e] * scale_log2 - base[l, e & 1])
                    lsum[l, e & 1] += s[j, l, e]
            b0 = movmatrix_t(s[j][:, 0:2])
            b1 = movmatrix_t(s[j][:, 2:4])
            for mt in range(D // 16):
                if kvsw:
                    a = dc.ldsm_x4_t(sv, [sw_addr(BN, j * 16 + (l >> 4) * 8 + (l & 7), mt * 2 + ((l >> 3) & 1))
                                          for l in range(32)])
                else:
                    a = dc.ldsm_x4_t(sv, [lane_off_b(l, DP) + j * 16 * DP * 2 + mt * 32 for l in range(32)])
                dc.mma(o[mt], a, b0, b1)
    for off in (4, 8, 16):  # fe_state_finish
        lsum = lsum + lsum[[l ^ off for l in range(32)]]
    # fe_state_to_scratch
    wo = np.full((8, D), np.nan)
    wm = np.full(8, np.nan)
    wl = np.full(8, np.nan)
    for l in range(32):
        g, qq = l >> 2, (l & 3) * 2
        for mt in range(D // 16):
            for e in range(4):
                wo[qq + (e & 1), mt * 16 + g + 8 * (e >> 1)] = o[mt, l, e]
        if g == 0:
            wm[qq:qq + 2] = m[l]
            wl[qq:qq + 2] = lsum[l]
    out = wo[:G] / wl[:G, None]
    lse = (wm[:G] + np.log2(wl[:G])) * np.log(2)
    logits = q @ keys.T * (0.7 / np.sqrt(D))
    ref_lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    p = np.exp(logits - ref_lse[:, None])
    ref = p @ vals
    return max(np.abs(out - ref).max(), np.abs(lse - ref_lse).max())


if __name__ == "__main__":
    worst = 0.0
    for D, BN, nkeys, G, seed in [
        (32, 16, 37, 4, 0),
        (64, 32, 75, 1, 1),
        (128, 16, 16, 8, 2),
        (128, 64, 130, 4, 3),
        (96, 32, 5, 7, 4),
        (64, 16, 49, 8, 5),
    ]:
        for kvsw in (0, 1):
            if kvsw and D % 64:
                continue  # the swizzled panels take D a multiple of 64 (decode.cu's KVSW)
            err = run(D, BN, nkeys, G, seed, kvsw)
            layout = "swizzled" if kvsw else "padded"
            print(f"D={D:3d} BN={BN:2d} keys={nkeys:3d} heads={G} {layout:8s}: max |error| {err:.2e}")
            worst = max(worst, err)
    print("PASS" if worst < 1e-12 else "FAIL", f"(worst {worst:.2e})")
    raise SystemExit(0 if worst < 1e-12 else 1)
