# flasheva's kernels in Triton: the same four ops, tensor layouts and strides as the CUDA C++
# templates (templates/), so one launch plan serves both where the geometry agrees. What each
# kernel computes is the contract in README.md ("What the kernels compute").
#
# The EVA structure is compile-time (tl.constexpr): the head dim D (DP: D rounded up to a power
# of two, for tl.arange), the window W, the chunk C, the local mode SLIDING, the tile sizes. A
# prefill query block visits only the key blocks it can see: the masked blocks at its window start
# and on its diagonal, the fully visible ones between them without any mask code, then the summary
# blocks of the chunks complete before its rows (masked only where that boundary falls).
#
# All arithmetic is fp32 (tl.dot accumulates fp16/bf16 products in fp32); the softmax runs in
# base 2 with the scale premultiplied by log2(e); LSE is the natural log of the denominator.
#
# Kernel parameters, in order, are what the Rust launch plans pass (src/ops/*.rs, `triton_args`):
# pointers, then int64 strides (in elements), then int32 sizes, then the fp32 scale. Triton adds
# two trailing pointer parameters (global and profile scratch), passed as null: the compile driver
# refuses a kernel that needs scratch memory.

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _online_step(q, k, v, s_scale, m_i, l_i, acc, mask, MASKED: tl.constexpr):
    """One block of the online softmax: logits q·kᵀ (scaled to base 2), masked where `mask` is
    false when MASKED, folded into the running max m_i, sum l_i and output acc."""
    s = tl.dot(q, tl.trans(k)) * s_scale
    if MASKED:
        s = tl.where(mask, s, NEG_INF)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen nothing yet keeps m = -inf: shift by 0 instead (its p are all 0).
    m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def fe_prefill(Q, K, V, KS, VS, O, LSE,
               q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh,
               ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh, o_sb, o_st, o_sh, lse_sb, lse_sh,
               N, H, HKV, NC, scale_log2,
               D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
               SLIDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """prefill: grid (cdiv(N, BLOCK_M), H, B); one program per query block of one head."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // (H // HKV)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    b64 = b.to(tl.int64)
    q = tl.load(Q + b64 * q_sb + rows[:, None].to(tl.int64) * q_st + h * q_sh + dcol[None, :],
                mask=(rows[:, None] < N) & dmask[None, :], other=0.0)
    last = tl.minimum(m0 + BLOCK_M, N) - 1

    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)

    kbase = K + b64 * k_sb + kvh * k_sh
    vbase = V + b64 * v_sb + kvh * v_sh
    kcols = tl.arange(0, BLOCK_N)

    # Raw keys: from the first row's window start to the last row, on a BLOCK_N grid.
    if SLIDING:
        lo = tl.maximum(m0 - W + 1, 0)
        full_lo = last - W + 1          # keys above it are in every row's window
    else:
        lo = (m0 // W) * W
        same = (m0 // W) == (last // W)
        full_lo = tl.where(same, lo, last + 1)  # a block spanning two windows has no full block
    start = (lo // BLOCK_N) * BLOCK_N
    # Fully visible blocks [a, e): inside every row's window and at or before the first row.
    e = start + ((m0 + 1 - start) // BLOCK_N) * BLOCK_N
    a = start + tl.cdiv(tl.maximum(full_lo - start, 0), BLOCK_N) * BLOCK_N
    a = tl.minimum(a, e)

    for j0 in range(start, a, BLOCK_N):          # window-start boundary: masked
        cols = j0 + kcols
        kv_mask = (cols[:, None] < N) & dmask[None, :]
        k = tl.load(kbase + cols[:, None].to(tl.int64) * k_st + dcol[None, :], mask=kv_mask, other=0.0)
        v = tl.load(vbase + cols[:, None].to(tl.int64) * v_st + dcol[None, :], mask=kv_mask, other=0.0)
        vis = cols[None, :] <= rows[:, None]
        if SLIDING:
            vis = vis & (cols[None, :] > rows[:, None] - W)
        else:
            vis = vis & ((cols[None, :] // W) == (rows[:, None] // W))
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, vis, True)
    for j0 in range(a, e, BLOCK_N):              # fully visible: no mask
        cols = j0 + kcols
        k = tl.load(kbase + cols[:, None].to(tl.int64) * k_st + dcol[None, :], mask=dmask[None, :], other=0.0)
        v = tl.load(vbase + cols[:, None].to(tl.int64) * v_st + dcol[None, :], mask=dmask[None, :], other=0.0)
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, dmask[None, :], False)
    for j0 in range(e, last + 1, BLOCK_N):       # the diagonal: masked
        cols = j0 + kcols
        kv_mask = (cols[:, None] < N) & dmask[None, :]
        k = tl.load(kbase + cols[:, None].to(tl.int64) * k_st + dcol[None, :], mask=kv_mask, other=0.0)
        v = tl.load(vbase + cols[:, None].to(tl.int64) * v_st + dcol[None, :], mask=kv_mask, other=0.0)
        vis = cols[None, :] <= rows[:, None]
        if SLIDING:
            vis = vis & (cols[None, :] > rows[:, None] - W)
        else:
            vis = vis & ((cols[None, :] // W) == (rows[:, None] // W))
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, vis, True)

    # Summaries: chunk c is visible to row i iff c < i // C (and c < NC).
    nsum = tl.minimum(NC, last // C)
    sfull = (tl.minimum(NC, m0 // C) // BLOCK_N) * BLOCK_N
    ksb = KS + b64 * ks_sb + kvh * ks_sh
    vsb = VS + b64 * vs_sb + kvh * vs_sh
    for c0 in range(0, sfull, BLOCK_N):          # visible to every row: no mask
        cs = c0 + kcols
        k = tl.load(ksb + cs[:, None].to(tl.int64) * ks_st + dcol[None, :], mask=dmask[None, :], other=0.0)
        v = tl.load(vsb + cs[:, None].to(tl.int64) * vs_st + dcol[None, :], mask=dmask[None, :], other=0.0)
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, dmask[None, :], False)
    for c0 in range(sfull, nsum, BLOCK_N):       # the boundary: masked
        cs = c0 + kcols
        s_mask = (cs[:, None] < nsum) & dmask[None, :]
        k = tl.load(ksb + cs[:, None].to(tl.int64) * ks_st + dcol[None, :], mask=s_mask, other=0.0)
        v = tl.load(vsb + cs[:, None].to(tl.int64) * vs_st + dcol[None, :], mask=s_mask, other=0.0)
        vis = cs[None, :] < (rows[:, None] // C)
        vis = vis & (cs[None, :] < NC)
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, vis, True)

    # Every row in range sees at least its own key, so l_i > 0.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    rmask = rows < N
    tl.store(O + b64 * o_sb + rows[:, None].to(tl.int64) * o_st + h * o_sh + dcol[None, :],
             o.to(O.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    lse = (m_i + tl.log2(l_safe)) * LN2
    tl.store(LSE + b64 * lse_sb + h * lse_sh + rows, lse, mask=rmask)


@triton.jit
def fe_decode(Q, KR, VR, KS, VS, LEN, O, LSE, WS_O, WS_ML,
              q_sb, q_sh, kr_sb, kr_ss, kr_sh, vr_sb, vr_ss, vr_sh,
              ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh, o_sb, o_sh, lse_sb, lse_sh,
              B, H, HKV, MAXNC, SPLITS, scale_log2, SLOT, PT, pt_sb, PAGE,
              D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
              SLIDING: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
              BLOCK_N: tl.constexpr, PAGED: tl.constexpr):
    """decode: grid (SPLITS, HKV * cdiv(GROUP, BLOCK_H), B); one program per split of the
    visible items (ring keys, then summaries) of BLOCK_H query heads of one kv group. With one
    split it writes o and lse; with more it writes its partial (acc, max, sum) to the workspace
    and fe_decode_combine merges them. PAGED: the rings are a slot pool [S, W, HKV, D] (sequence
    b's is SLOT[b]) and the summaries a page pool [P, PAGE, HKV, D] (summary c of sequence b is
    row c % PAGE of page PT[b, c // PAGE])."""
    split = tl.program_id(0)
    pid_h = tl.program_id(1)
    b = tl.program_id(2)
    tiles = tl.cdiv(GROUP, BLOCK_H)
    kvh = pid_h // tiles
    hoff = (pid_h % tiles) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hoff < GROUP
    heads = kvh * GROUP + hoff
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    b64 = b.to(tl.int64)
    if PAGED:
        rb = tl.load(SLOT + b).to(tl.int64)
    else:
        rb = b64
    L = tl.load(LEN + b)
    q = tl.load(Q + b64 * q_sb + heads[:, None] * q_sh + dcol[None, :],
                mask=hmask[:, None] & dmask[None, :], other=0.0)
    # len <= 0: no items, so o = 0 and lse = -inf fall out of the empty softmax below.
    has = L > 0
    p = tl.maximum(L - 1, 0)
    if SLIDING:
        lo = tl.maximum(p - W + 1, 0)
    else:
        lo = (p // W) * W
    nraw = tl.where(has, p - lo + 1, 0)
    nsum = tl.where(has, tl.minimum(p // C, MAXNC), 0)
    total = nraw + nsum
    per = tl.cdiv(tl.cdiv(total, SPLITS), BLOCK_N) * BLOCK_N
    beg = split * per
    end = tl.minimum(beg + per, total)

    m_i = tl.full([BLOCK_H], NEG_INF, tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DP], tl.float32)
    items = tl.arange(0, BLOCK_N)
    for i0 in range(beg, end, BLOCK_N):
        idx = i0 + items
        valid = idx < end
        is_raw = idx < nraw
        slot = ((lo + idx) % W).to(tl.int64)
        sidx = tl.maximum(idx - nraw, 0).to(tl.int64)
        if PAGED:
            page = tl.load(PT + b64 * pt_sb + sidx // PAGE, mask=valid & (idx >= nraw),
                           other=0).to(tl.int64)
            ks_off = page * ks_sb + (sidx % PAGE) * ks_st
            vs_off = page * vs_sb + (sidx % PAGE) * vs_st
        else:
            ks_off = b64 * ks_sb + sidx * ks_st
            vs_off = b64 * vs_sb + sidx * vs_st
        kptr = tl.where(is_raw, KR + rb * kr_sb + slot * kr_ss + kvh * kr_sh,
                        KS + ks_off + kvh * ks_sh)
        vptr = tl.where(is_raw, VR + rb * vr_sb + slot * vr_ss + kvh * vr_sh,
                        VS + vs_off + kvh * vs_sh)
        lmask = valid[:, None] & dmask[None, :]
        k = tl.load(kptr[:, None] + dcol[None, :], mask=lmask, other=0.0)
        v = tl.load(vptr[:, None] + dcol[None, :], mask=lmask, other=0.0)
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, valid[None, :], True)

    if SPLITS == 1:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        tl.store(O + b64 * o_sb + heads[:, None] * o_sh + dcol[None, :],
                 (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])
        tl.store(LSE + b64 * lse_sb + heads * lse_sh, (m_i + tl.log2(l_safe)) * LN2, mask=hmask)
    else:
        # Workspace: acc [SPLITS, B, H, D] fp32, then (max, sum) [SPLITS, B, H, 2] fp32.
        row = (split * B + b64) * H + heads
        tl.store(WS_O + row[:, None] * D + dcol[None, :], acc, mask=hmask[:, None] & dmask[None, :])
        tl.store(WS_ML + row * 2, m_i, mask=hmask)
        tl.store(WS_ML + row * 2 + 1, l_i, mask=hmask)


@triton.jit
def fe_decode_combine(O, LSE, WS_O, WS_ML, o_sb, o_sh, lse_sb, lse_sh, B, H, SPLITS,
                      D: tl.constexpr, DP: tl.constexpr):
    """Merges the splits' partial results of fe_decode: grid (H, B)."""
    h = tl.program_id(0)
    b = tl.program_id(1)
    # A sequence with len <= 0 has l = 0 in every split: o = 0, lse = -inf.
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    b64 = b.to(tl.int64)
    m = tl.full([1], NEG_INF, tl.float32)
    for s in range(0, SPLITS):
        row = (s * B + b64) * H + h
        m = tl.maximum(m, tl.load(WS_ML + row * 2 + tl.zeros([1], tl.int64)))
    m_safe = tl.where(m == NEG_INF, 0.0, m)
    l = tl.zeros([1], tl.float32)
    acc = tl.zeros([DP], tl.float32)
    for s in range(0, SPLITS):
        row = (s * B + b64) * H + h
        ms = tl.load(WS_ML + row * 2 + tl.zeros([1], tl.int64))
        ls = tl.load(WS_ML + row * 2 + 1 + tl.zeros([1], tl.int64))
        f = tl.exp2(ms - m_safe)
        f = tl.where(ls > 0.0, f, 0.0)
        l += ls * f
        acc += tl.load(WS_O + row * D + dcol, mask=dmask, other=0.0) * tl.sum(f, 0)
    l_safe = tl.where(l > 0.0, l, 1.0)
    tl.store(O + b64 * o_sb + h * o_sh + dcol, (acc / tl.sum(l_safe, 0)).to(O.dtype.element_ty),
             mask=dmask)
    tl.store(LSE + b64 * lse_sb + h * lse_sh + tl.zeros([1], tl.int64), (m + tl.log2(l_safe)) * LN2)


@triton.jit
def fe_chunk_mean(X, XBAR, x_sb, x_st, x_sh, y_sb, y_st, y_sh, NC, G,
                  D: tl.constexpr, DP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr):
    """chunk_mean: grid (NC, G, B); the mean of the C rows of one chunk of one head."""
    c = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    r = tl.arange(0, CP)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    rows = (c * C + r).to(tl.int64)
    b64 = b.to(tl.int64)
    x = tl.load(X + b64 * x_sb + rows[:, None] * x_st + g * x_sh + dcol[None, :],
                mask=(r[:, None] < C) & dmask[None, :], other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / C
    tl.store(XBAR + b64 * y_sb + c.to(tl.int64) * y_st + g * y_sh + dcol,
             mean.to(XBAR.dtype.element_ty), mask=dmask)


@triton.jit
def fe_chunk_summarize(K, V, OMEGA, VS, k_sb, k_st, k_sh, v_sb, v_st, v_sh,
                       om_sb, om_st, om_sh, vs_sb, vs_st, vs_sh, NC, HKV, scale,
                       D: tl.constexpr, DP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr):
    """chunk_summarize: grid (NC, HKV, B); vs[c] = sum_j softmax_j(s (omega[c]·k_j - |k_j|²/2)) v_j
    over the C tokens of chunk c."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    r = tl.arange(0, CP)
    rmask = r < C
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    rows = (c * C + r).to(tl.int64)
    b64 = b.to(tl.int64)
    c64 = c.to(tl.int64)
    lmask = rmask[:, None] & dmask[None, :]
    k = tl.load(K + b64 * k_sb + rows[:, None] * k_st + h * k_sh + dcol[None, :],
                mask=lmask, other=0.0).to(tl.float32)
    v = tl.load(V + b64 * v_sb + rows[:, None] * v_st + h * v_sh + dcol[None, :],
                mask=lmask, other=0.0).to(tl.float32)
    om = tl.load(OMEGA + b64 * om_sb + c64 * om_st + h * om_sh + dcol, mask=dmask,
                 other=0.0).to(tl.float32)
    logit = scale * (tl.sum(k * om[None, :], 1) - 0.5 * tl.sum(k * k, 1))
    logit = tl.where(rmask, logit, NEG_INF)
    p = tl.exp(logit - tl.max(logit, 0))
    p = p / tl.sum(p, 0)
    out = tl.sum(p[:, None] * v, 0)
    tl.store(VS + b64 * vs_sb + c64 * vs_st + h * vs_sh + dcol, out.to(VS.dtype.element_ty),
             mask=dmask)


# ---- backward (the contract's item 5) ------------------------------------------------------
#
# prefill_bwd recomputes P from the forward's LSE, FlashAttention-2 style, in three kernels:
# fe_prefill_bwd_pre (Delta = rowsum(dO * O)), fe_prefill_bwd_dkdv (one program per raw key
# block, or per segment of a summary block's queries, summing over the query heads of its kv
# group and the query blocks that see it), fe_prefill_bwd_dsum (the summary segments added in
# order) and fe_prefill_bwd_dq (one program per query block, like the forward). No atomics
# anywhere: results are bitwise reproducible run to run.


@triton.jit
def fe_prefill_bwd_pre(O, DO, DELTA, o_sb, o_st, o_sh, do_sb, do_st, do_sh, N, H,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]: grid (cdiv(N, BLOCK_M), H, B)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dcol = tl.arange(0, DP)
    mask = (rows[:, None] < N) & (dcol[None, :] < D)
    b64 = b.to(tl.int64)
    r64 = rows[:, None].to(tl.int64)
    o = tl.load(O + b64 * o_sb + r64 * o_st + h * o_sh + dcol[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b64 * do_sb + r64 * do_st + h * do_sh + dcol[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + (b64 * H + h) * N + rows, delta, mask=rows < N)


@triton.jit
def _bwd_visible(rows, cols, W: tl.constexpr, SLIDING: tl.constexpr):
    vis = cols[None, :] <= rows[:, None]
    if SLIDING:
        vis = vis & (cols[None, :] > rows[:, None] - W)
    else:
        vis = vis & ((cols[None, :] // W) == (rows[:, None] // W))
    return vis


@triton.jit
def _dkdv_step(Q, DO, LSE, DELTA, q_sb, q_st, q_sh, do_sb, do_st, do_sh, lse_sb, lse_sh,
               b64, h, i0, k, v, cols, dk, dv, N, H, lim, is_raw, scale_log2,
               D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
               SLIDING: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr):
    """One query block of rows [i0, i0 + BLOCK_M) of head h against the program's keys: dV += P^T dO,
    dK += dS^T Q (unscaled). MASKED: apply the EVA mask and the row and key bounds; otherwise
    every pair is visible (the caller's range guarantees it)."""
    rows = i0 + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    r64 = rows[:, None].to(tl.int64)
    q = tl.load(Q + b64 * q_sb + r64 * q_st + h * q_sh + dcol[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    do = tl.load(DO + b64 * do_sb + r64 * do_st + h * do_sh + dcol[None, :],
                 mask=rmask[:, None] & dmask[None, :], other=0.0)
    lse = tl.load(LSE + b64 * lse_sb + h * lse_sh + rows, mask=rmask, other=0.0)
    delta = tl.load(DELTA + (b64 * H + h) * N + rows, mask=rmask, other=0.0)
    s = tl.dot(q, tl.trans(k)) * scale_log2
    p = tl.exp2(s - lse[:, None] * 1.4426950408889634)
    if MASKED:
        if is_raw:
            vis = _bwd_visible(rows, cols, W, SLIDING)
        else:
            vis = cols[None, :] < (rows[:, None] // C)
        vis = vis & rmask[:, None] & (cols[None, :] < lim)
        p = tl.where(vis, p, 0.0)
    dv += tl.dot(tl.trans(p.to(do.dtype)), do)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    return dk, dv


@triton.jit
def fe_prefill_bwd_dkdv(Q, K, V, KS, VS, DO, LSE, DELTA, DK, DV, PART,
                        q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh,
                        ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh, do_sb, do_st, do_sh,
                        lse_sb, lse_sh, dk_sb, dk_st, dk_sh, dv_sb, dv_st, dv_sh,
                        B, N, H, HKV, NC, SPLITS, SEG, scale,
                        D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
                        SLIDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of the raw key blocks and partial dks, dvs of the summary blocks, on a 1-D grid of
    B * HKV * (NSB * SPLITS + cdiv(N, BLOCK_N)) programs (NSB = cdiv(NC, BLOCK_N)), summary
    programs first: they are the long ones.

    A raw key block visits the query blocks of its window (up to W - 1 rows past it). Summary
    block j is seen by every query from the end of its first chunk to N, a range cut into
    SPLITS segments of SEG query rows (SEG a multiple of BLOCK_M); each segment writes its fp32
    sums to PART [2, B, HKV, SPLITS, NSB * BLOCK_N, D] (dk times the scale, then dv), and
    fe_prefill_bwd_dsum adds the segments in a fixed order (no atomics)."""
    pid = tl.program_id(0)
    nsb = tl.cdiv(NC, BLOCK_N)
    n_sum = B * HKV * nsb * SPLITS
    raw_blocks = tl.cdiv(N, BLOCK_N)
    group = H // HKV
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    kb = tl.arange(0, BLOCK_N)
    scale_log2 = scale * 1.4426950408889634
    is_raw = pid >= n_sum
    if is_raw:
        r = pid - n_sum
        blk = r % raw_blocks
        t = r // raw_blocks
        kvh = t % HKV
        b = t // HKV
        seg = 0
        b64 = b.to(tl.int64)
        j0 = blk * BLOCK_N
        lim = N
        kbase = K + b64 * k_sb + kvh * k_sh
        vbase = V + b64 * v_sb + kvh * v_sh
        kst = k_st
        vst = v_st
        # queries that see a key of the block: from its first key to the last key's last viewer
        i_lo = j0
        if SLIDING:
            i_hi = tl.minimum(j0 + BLOCK_N - 1 + W - 1, N - 1)
        else:
            i_hi = tl.minimum(((j0 + BLOCK_N - 1) // W + 1) * W - 1, N - 1)
    else:
        seg = pid % SPLITS
        t = pid // SPLITS
        j0 = (t % nsb) * BLOCK_N
        t = t // nsb
        kvh = t % HKV
        b = t // HKV
        b64 = b.to(tl.int64)
        lim = NC
        kbase = KS + b64 * ks_sb + kvh * ks_sh
        vbase = VS + b64 * vs_sb + kvh * vs_sh
        kst = ks_st
        vst = vs_st
        # summary c is seen by every query i >= (c + 1) * C; this segment's share of them
        i_lo = tl.maximum((j0 + 1) * C, seg * SEG)
        i_hi = tl.minimum((seg + 1) * SEG, N) - 1
    cols = j0 + kb
    kv_mask = (cols[:, None] < lim) & dmask[None, :]
    k = tl.load(kbase + cols[:, None].to(tl.int64) * kst + dcol[None, :], mask=kv_mask, other=0.0)
    v = tl.load(vbase + cols[:, None].to(tl.int64) * vst + dcol[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, DP], tl.float32)
    dv = tl.zeros([BLOCK_N, DP], tl.float32)
    # The query blocks of BLOCK_M rows from `start` to `stop`; those in [a, e) see every key of
    # the block (no mask work): rows from `first` to `last`, when `whole` holds.
    start = (i_lo // BLOCK_M) * BLOCK_M
    stop = start + tl.cdiv(tl.maximum(i_hi + 1 - start, 0), BLOCK_M) * BLOCK_M
    if is_raw:
        first = j0 + BLOCK_N - 1  # every key at or before the row
        if SLIDING:
            last = tl.minimum(j0 + W - 1, N - 1)  # the row's window reaches back to j0
            whole = j0 >= 0
        else:
            last = tl.minimum((j0 // W + 1) * W - 1, N - 1)  # rows of j0's window
            whole = (j0 // W) == ((j0 + BLOCK_N - 1) // W)  # the keys in one window
    else:
        first = (j0 + BLOCK_N) * C  # summary c is seen from row (c + 1) C on
        last = tl.minimum(i_hi, N - 1)
        whole = j0 + BLOCK_N <= NC
    a = start + tl.cdiv(tl.maximum(first - start, 0), BLOCK_M) * BLOCK_M
    a = tl.minimum(a, stop)
    e = start + (tl.maximum(last + 1 - start, 0) // BLOCK_M) * BLOCK_M
    e = tl.minimum(tl.maximum(e, a), stop)
    a = tl.where(whole, a, stop)
    e = tl.where(whole, e, stop)
    for hh in range(0, group):
        h = kvh * group + hh
        for i0 in range(start, a, BLOCK_M):
            dk, dv = _dkdv_step(Q, DO, LSE, DELTA, q_sb, q_st, q_sh, do_sb, do_st, do_sh, lse_sb, lse_sh,
                                b64, h, i0, k, v, cols, dk, dv, N, H, lim, is_raw, scale_log2,
                                D, DP, W, C, SLIDING, BLOCK_M, True)
        for i0 in range(a, e, BLOCK_M):
            dk, dv = _dkdv_step(Q, DO, LSE, DELTA, q_sb, q_st, q_sh, do_sb, do_st, do_sh, lse_sb, lse_sh,
                                b64, h, i0, k, v, cols, dk, dv, N, H, lim, is_raw, scale_log2,
                                D, DP, W, C, SLIDING, BLOCK_M, False)
        for i0 in range(e, stop, BLOCK_M):
            dk, dv = _dkdv_step(Q, DO, LSE, DELTA, q_sb, q_st, q_sh, do_sb, do_st, do_sh, lse_sb, lse_sh,
                                b64, h, i0, k, v, cols, dk, dv, N, H, lim, is_raw, scale_log2,
                                D, DP, W, C, SLIDING, BLOCK_M, True)
    dk = dk * scale
    out_mask = (cols[:, None] < lim) & dmask[None, :]
    if is_raw:
        tl.store(DK + b64 * dk_sb + cols[:, None].to(tl.int64) * dk_st + kvh * dk_sh + dcol[None, :],
                 dk.to(DK.dtype.element_ty), mask=out_mask)
        tl.store(DV + b64 * dv_sb + cols[:, None].to(tl.int64) * dv_st + kvh * dv_sh + dcol[None, :],
                 dv.to(DV.dtype.element_ty), mask=out_mask)
    else:
        nrows = nsb * BLOCK_N
        row0 = ((b64 * HKV + kvh) * SPLITS + seg) * nrows
        off = (row0 + cols[:, None]) * D + dcol[None, :]
        half = (b64 * 0 + B) * HKV * SPLITS * nrows * D
        tl.store(PART + off, dk, mask=dmask[None, :])
        tl.store(PART + half + off, dv, mask=dmask[None, :])


@triton.jit
def fe_prefill_bwd_dsum(PART, DKS, DVS, dks_sb, dks_st, dks_sh, dvs_sb, dvs_st, dvs_sh,
                        B, HKV, NC, NCR, SPLITS,
                        D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr):
    """dks, dvs from the summary segments' partial sums, added in segment order (bitwise
    reproducible): grid (cdiv(NCR, BLOCK_R), HKV, B). Every one of the NCR rows is written,
    zero at or past NC."""
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    nrows = tl.cdiv(NC, BLOCK_N) * BLOCK_N
    live = (rows[:, None] < NC) & dmask[None, :]
    half = (b64 * 0 + B) * HKV * SPLITS * nrows * D
    acc_k = tl.zeros([BLOCK_R, DP], tl.float32)
    acc_v = tl.zeros([BLOCK_R, DP], tl.float32)
    for sg in range(0, SPLITS):
        row0 = ((b64 * HKV + kvh) * SPLITS + sg) * nrows
        off = (row0 + rows[:, None]) * D + dcol[None, :]
        acc_k += tl.load(PART + off, mask=live, other=0.0)
        acc_v += tl.load(PART + half + off, mask=live, other=0.0)
    out = (rows[:, None] < NCR) & dmask[None, :]
    r64 = rows[:, None].to(tl.int64)
    tl.store(DKS + b64 * dks_sb + r64 * dks_st + kvh * dks_sh + dcol[None, :],
             acc_k.to(DKS.dtype.element_ty), mask=out)
    tl.store(DVS + b64 * dvs_sb + r64 * dvs_st + kvh * dvs_sh + dcol[None, :],
             acc_v.to(DVS.dtype.element_ty), mask=out)


@triton.jit
def _dq_step(q, do, lse2, delta, k, v, dq, vis, scale_log2, MASKED: tl.constexpr):
    s = tl.dot(q, tl.trans(k)) * scale_log2
    p = tl.exp2(s - lse2[:, None])
    if MASKED:
        p = tl.where(vis, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def fe_prefill_bwd_dq(Q, K, V, KS, VS, DO, LSE, DELTA, DQ,
                      q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh,
                      ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh, do_sb, do_st, do_sh,
                      lse_sb, lse_sh, dq_sb, dq_st, dq_sh,
                      N, H, HKV, NC, scale,
                      D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
                      SLIDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ: grid (cdiv(N, BLOCK_M), H, B); a query block visits the key blocks it saw in the
    forward (masked at its window start and diagonal, unmasked between) and its summaries."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // (H // HKV)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    b64 = b.to(tl.int64)
    r64 = rows[:, None].to(tl.int64)
    qmask = rmask[:, None] & dmask[None, :]
    q = tl.load(Q + b64 * q_sb + r64 * q_st + h * q_sh + dcol[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + b64 * do_sb + r64 * do_st + h * do_sh + dcol[None, :], mask=qmask, other=0.0)
    lse2 = tl.load(LSE + b64 * lse_sb + h * lse_sh + rows, mask=rmask, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + (b64 * H + h) * N + rows, mask=rmask, other=0.0)
    scale_log2 = scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, DP], tl.float32)
    last = tl.minimum(m0 + BLOCK_M, N) - 1
    kbase = K + b64 * k_sb + kvh * k_sh
    vbase = V + b64 * v_sb + kvh * v_sh
    kcols = tl.arange(0, BLOCK_N)
    if SLIDING:
        lo = tl.maximum(m0 - W + 1, 0)
        full_lo = last - W + 1
    else:
        lo = (m0 // W) * W
        full_lo = tl.where((m0 // W) == (last // W), lo, last + 1)
    start = (lo // BLOCK_N) * BLOCK_N
    e = start + ((m0 + 1 - start) // BLOCK_N) * BLOCK_N
    a = tl.minimum(start + tl.cdiv(tl.maximum(full_lo - start, 0), BLOCK_N) * BLOCK_N, e)
    for j0 in range(start, a, BLOCK_N):
        cols = j0 + kcols
        kv_mask = (cols[:, None] < N) & dmask[None, :]
        k = tl.load(kbase + cols[:, None].to(tl.int64) * k_st + dcol[None, :], mask=kv_mask, other=0.0)
        v = tl.load(vbase + cols[:, None].to(tl.int64) * v_st + dcol[None, :], mask=kv_mask, other=0.0)
        vis = _bwd_visible(rows, cols, W, SLIDING) & rmask[:, None]
        dq = _dq_step(q, do, lse2, delta, k, v, dq, vis, scale_log2, True)
    for j0 in range(a, e, BLOCK_N):
        # fully visible (padding rows have dO = 0, Delta = 0, so their dS is 0 unmasked)
        cols = j0 + kcols
        k = tl.load(kbase + cols[:, None].to(tl.int64) * k_st + dcol[None, :], mask=dmask[None, :], other=0.0)
        v = tl.load(vbase + cols[:, None].to(tl.int64) * v_st + dcol[None, :], mask=dmask[None, :], other=0.0)
        dq = _dq_step(q, do, lse2, delta, k, v, dq, rmask[:, None], scale_log2, False)
    for j0 in range(e, last + 1, BLOCK_N):
        cols = j0 + kcols
        kv_mask = (cols[:, None] < N) & dmask[None, :]
        k = tl.load(kbase + cols[:, None].to(tl.int64) * k_st + dcol[None, :], mask=kv_mask, other=0.0)
        v = tl.load(vbase + cols[:, None].to(tl.int64) * v_st + dcol[None, :], mask=kv_mask, other=0.0)
        vis = _bwd_visible(rows, cols, W, SLIDING) & rmask[:, None]
        dq = _dq_step(q, do, lse2, delta, k, v, dq, vis, scale_log2, True)
    nsum = tl.minimum(NC, last // C)
    ksb = KS + b64 * ks_sb + kvh * ks_sh
    vsb = VS + b64 * vs_sb + kvh * vs_sh
    for c0 in range(0, nsum, BLOCK_N):
        cs = c0 + kcols
        s_mask = (cs[:, None] < nsum) & dmask[None, :]
        k = tl.load(ksb + cs[:, None].to(tl.int64) * ks_st + dcol[None, :], mask=s_mask, other=0.0)
        v = tl.load(vsb + cs[:, None].to(tl.int64) * vs_st + dcol[None, :], mask=s_mask, other=0.0)
        vis = (cs[None, :] < (rows[:, None] // C)) & (cs[None, :] < NC) & rmask[:, None]
        dq = _dq_step(q, do, lse2, delta, k, v, dq, vis, scale_log2, True)
    tl.store(DQ + b64 * dq_sb + r64 * dq_st + h * dq_sh + dcol[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def fe_chunk_summarize_bwd(K, V, OMEGA, DVS, DK, DV, DOMEGA,
                           k_sb, k_st, k_sh, v_sb, v_st, v_sh, omega_sb, omega_st, omega_sh,
                           dvs_sb, dvs_st, dvs_sh, dk_sb, dk_st, dk_sh, dv_sb, dv_st, dv_sh,
                           domega_sb, domega_st, domega_sh, N, NC, NCR, HKV, scale,
                           D: tl.constexpr, DP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr):
    """chunk_summarize_bwd: grid (max(NCR, N/C + 1), HKV, B). Program c < N/C computes chunk
    c's dk, dv and domega; the others write zeros: the tokens of a trailing partial chunk and the
    omega rows at or past N/C."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    r = tl.arange(0, CP)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    rows = c * C + r
    r64 = rows[:, None].to(tl.int64)
    b64 = b.to(tl.int64)
    c64 = c.to(tl.int64)
    full = c < NC
    tok = (r[:, None] < C) & (rows[:, None] < N) & dmask[None, :]
    lmask = tok & full
    k = tl.load(K + b64 * k_sb + r64 * k_st + h * k_sh + dcol[None, :], mask=lmask, other=0.0).to(tl.float32)
    v = tl.load(V + b64 * v_sb + r64 * v_st + h * v_sh + dcol[None, :], mask=lmask, other=0.0).to(tl.float32)
    om = tl.load(OMEGA + b64 * omega_sb + c64 * omega_st + h * omega_sh + dcol, mask=dmask & full,
                 other=0.0).to(tl.float32)
    dvs = tl.load(DVS + b64 * dvs_sb + c64 * dvs_st + h * dvs_sh + dcol, mask=dmask & full,
                  other=0.0).to(tl.float32)
    a = scale * (tl.sum(k * om[None, :], 1) - 0.5 * tl.sum(k * k, 1))
    a = tl.where(r < C, a, NEG_INF)
    p = tl.exp(a - tl.max(a, 0))
    alpha = p / tl.sum(p, 0)
    g = tl.sum(dvs[None, :] * v, 1)
    # d alpha_i = alpha_i (g_i - sum_j alpha_j g_j), written as alpha_i sum_j alpha_j (g_i - g_j)
    # (the same number, as the alphas sum to one): the subtraction g_i - mean(g) cancels when
    # the softmax is peaked, the pairwise form keeps the error relative to each term.
    da = alpha * tl.sum(alpha[None, :] * (g[:, None] - g[None, :]), 1)
    dv = alpha[:, None] * dvs[None, :]
    dk = scale * da[:, None] * (om[None, :] - k)
    dom = scale * tl.sum(da[:, None] * k, 0)
    zero = tl.zeros([CP, DP], tl.float32)
    tl.store(DK + b64 * dk_sb + r64 * dk_st + h * dk_sh + dcol[None, :],
             tl.where(full, dk, zero).to(DK.dtype.element_ty), mask=tok)
    tl.store(DV + b64 * dv_sb + r64 * dv_st + h * dv_sh + dcol[None, :],
             tl.where(full, dv, zero).to(DV.dtype.element_ty), mask=tok)
    tl.store(DOMEGA + b64 * domega_sb + c64 * domega_st + h * domega_sh + dcol,
             tl.where(full, dom, 0.0).to(DOMEGA.dtype.element_ty), mask=dmask & (c < NCR))


@triton.jit
def fe_chunk_mean_bwd(DXBAR, DX, dxbar_sb, dxbar_st, dxbar_sh, dx_sb, dx_st, dx_sh, N, NC, G,
                      D: tl.constexpr, DP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr):
    """chunk_mean_bwd: grid (cdiv(N, C), G, B); dX of chunk c's tokens = dXbar[c] / C, zero on
    a trailing partial chunk."""
    c = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    r = tl.arange(0, CP)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    rows = c * C + r
    b64 = b.to(tl.int64)
    full = c < NC
    dy = tl.load(DXBAR + b64 * dxbar_sb + c.to(tl.int64) * dxbar_st + g * dxbar_sh + dcol,
                 mask=dmask & full, other=0.0).to(tl.float32)
    dx = tl.zeros([CP, DP], tl.float32) + dy[None, :] / C
    tl.store(DX + b64 * dx_sb + rows[:, None].to(tl.int64) * dx_st + g * dx_sh + dcol[None, :],
             dx.to(DX.dtype.element_ty), mask=(r[:, None] < C) & (rows[:, None] < N) & dmask[None, :])


# ---- serving: extend and append (the contract's item 6) ------------------------------------


@triton.jit
def fe_extend(Q, K, V, KR, VR, KS, VS, START, COUNT, O, LSE,
              q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh,
              kr_sb, kr_ss, kr_sh, vr_sb, vr_ss, vr_sh, ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh,
              o_sb, o_st, o_sh, lse_sb, lse_sh,
              H, HKV, MAXNC, scale_log2, SLOT, PT, pt_sb, PAGE,
              D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
              SLIDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              PAGED: tl.constexpr):
    """extend: grid (cdiv(Tmax, BLOCK_M), H, B). Row t of sequence b is the query at position
    L0 + t (L0 = START[b], rows t >= COUNT[b] are not written); it sees the raw keys of its
    window, those before L0 from the ring (slot j mod W), the others from the new keys (row
    j - L0), and the summaries c < (L0 + t) / C of the cache. PAGED: slot and page pools as in
    fe_decode."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // (H // HKV)
    b64 = b.to(tl.int64)
    if PAGED:
        rb = tl.load(SLOT + b).to(tl.int64)
    else:
        rb = b64
    L0 = tl.load(START + b)
    T = tl.load(COUNT + b)
    t0 = pid_m * BLOCK_M
    trow = t0 + tl.arange(0, BLOCK_M)
    rmask = trow < T
    pos = L0 + trow
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    q = tl.load(Q + b64 * q_sb + trow[:, None].to(tl.int64) * q_st + h * q_sh + dcol[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    # the positions this block's rows see: from the first row's window start to the last row
    first = L0 + t0
    last = L0 + tl.minimum(t0 + BLOCK_M, T) - 1
    if SLIDING:
        lo = tl.maximum(first - W + 1, 0)
    else:
        lo = (first // W) * W
    kb = tl.arange(0, BLOCK_N)
    for j0 in range(lo, last + 1, BLOCK_N):
        j = j0 + kb
        in_ring = j < L0
        slot = (j % W).to(tl.int64)
        new = tl.maximum(j - L0, 0).to(tl.int64)
        kptr = tl.where(in_ring, KR + rb * kr_sb + slot * kr_ss + kvh * kr_sh,
                        K + b64 * k_sb + new * k_st + kvh * k_sh)
        vptr = tl.where(in_ring, VR + rb * vr_sb + slot * vr_ss + kvh * vr_sh,
                        V + b64 * v_sb + new * v_st + kvh * v_sh)
        lmask = (j[:, None] <= last) & dmask[None, :]
        k = tl.load(kptr[:, None] + dcol[None, :], mask=lmask, other=0.0)
        v = tl.load(vptr[:, None] + dcol[None, :], mask=lmask, other=0.0)
        vis = _bwd_visible(pos, j, W, SLIDING) & rmask[:, None]
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, vis, True)
    nsum = tl.minimum(last // C, MAXNC)
    for c0 in range(0, nsum, BLOCK_N):
        cs = c0 + kb
        c64 = cs.to(tl.int64)
        if PAGED:
            page = tl.load(PT + b64 * pt_sb + c64 // PAGE, mask=cs < nsum, other=0).to(tl.int64)
            ks_off = page * ks_sb + (c64 % PAGE) * ks_st
            vs_off = page * vs_sb + (c64 % PAGE) * vs_st
        else:
            ks_off = b64 * ks_sb + c64 * ks_st
            vs_off = b64 * vs_sb + c64 * vs_st
        s_mask = (cs[:, None] < nsum) & dmask[None, :]
        k = tl.load(KS + (ks_off + kvh * ks_sh)[:, None] + dcol[None, :], mask=s_mask, other=0.0)
        v = tl.load(VS + (vs_off + kvh * vs_sh)[:, None] + dcol[None, :], mask=s_mask, other=0.0)
        vis = (cs[None, :] < (pos[:, None] // C)) & (cs[None, :] < MAXNC) & rmask[:, None]
        m_i, l_i, acc = _online_step(q, k, v, scale_log2, m_i, l_i, acc, vis, True)
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    tl.store(O + b64 * o_sb + trow[:, None].to(tl.int64) * o_st + h * o_sh + dcol[None, :],
             (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    tl.store(LSE + b64 * lse_sb + h * lse_sh + trow, (m_i + tl.log2(l_safe)) * LN2, mask=rmask)


@triton.jit
def fe_append(K, V, START, COUNT, KR, VR, k_sb, k_st, k_sh, v_sb, v_st, v_sh,
              kr_sb, kr_ss, kr_sh, vr_sb, vr_ss, vr_sh, HKV, SLOT,
              D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, BLOCK_N: tl.constexpr,
              PAGED: tl.constexpr):
    """append: grid (cdiv(W, BLOCK_N), HKV, B). Writes the new tokens' keys and values into the
    ring: of the T = COUNT[b] new tokens at positions L0 + t (L0 = START[b]), the last min(T, W)
    land in slot (L0 + t) mod W; every other slot keeps what it holds. PAGED: the rings are a
    slot pool, sequence b's being SLOT[b]."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    if PAGED:
        rb = tl.load(SLOT + b).to(tl.int64)
    else:
        rb = b64
    L0 = tl.load(START + b)
    T = tl.load(COUNT + b)
    first = tl.maximum(T - W, 0)        # the first new token that lands
    # this program covers the landing tokens t in [first + pid*BLOCK_N, ...): one per slot
    t = first + pid * BLOCK_N + tl.arange(0, BLOCK_N)
    tmask = t < T
    slot = ((L0 + t) % W).to(tl.int64)
    dcol = tl.arange(0, DP)
    m = tmask[:, None] & (dcol[None, :] < D)
    t64 = t[:, None].to(tl.int64)
    k = tl.load(K + b64 * k_sb + t64 * k_st + h * k_sh + dcol[None, :], mask=m, other=0.0)
    v = tl.load(V + b64 * v_sb + t64 * v_st + h * v_sh + dcol[None, :], mask=m, other=0.0)
    tl.store(KR + rb * kr_sb + slot[:, None] * kr_ss + h * kr_sh + dcol[None, :], k, mask=m)
    tl.store(VR + rb * vr_sb + slot[:, None] * vr_ss + h * vr_sh + dcol[None, :], v, mask=m)
