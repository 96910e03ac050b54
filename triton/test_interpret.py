"""Checks the Triton kernels on the CPU, in Triton's interpreter (TRITON_INTERPRET=1), against
float64 references of the contract (README.md, "What the kernels compute"), on fresh random
inputs with poisoned outputs: every op, both local modes, f16 and bf16, GQA, odd lengths, padded
strides, large logits, decode with splits and len <= 0.

    python3 triton/test_interpret.py            # needs triton and numpy (no GPU)

Exit status 0 when every check passes. The GPU proof runs the same kernels compiled, through
flasheva's loader (tests/gpu_kernels.rs)."""

import math
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import flasheva_triton as fk  # noqa: E402
from npshim import NpTensor, _Storage  # noqa: E402
from triton.runtime import interpreter as _interp  # noqa: E402

# Triton 3.6's interpreter multiplies bf16 operands of tl.dot as their raw uint16 bits (it
# stores bf16 as uint16 and converts only fp8): widen them to fp32 first, which is what the
# tensor cores do with bf16 products.
_dot = _interp.InterpreterBuilder.create_dot


def _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    if a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16:
        widen = lambda t: _interp.TensorHandle(  # noqa: E731
            (t.data.astype(np.uint32) << 16).view(np.float32), tl.float32) \
            if t.dtype == tl.bfloat16 else t
        a, b = widen(a), widen(b)
    return _dot(self, a, b, d, input_precision, max_num_imprecise_acc)


_interp.InterpreterBuilder.create_dot = _create_dot

LOG2E = 1.4426950408889634
RNG = np.random.default_rng()


# ---- storage types -------------------------------------------------------------------------

def to_bits(x, dt):
    x = np.asarray(x, np.float32)
    if dt == "f16":
        return x.astype(np.float16).view(np.uint16)
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def from_bits(u, dt):
    if dt == "f16":
        return u.view(np.float16).astype(np.float64)
    return (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


TL = {"f16": tl.float16, "bf16": tl.bfloat16, "f32": tl.float32, "i32": tl.int32}


class Buf:
    """A tensor of shape `shape` whose rows are padded by `pad` elements (strides not
    contiguous), over one numpy byte buffer; poisoned (NaN / 0x7fff bits) until written."""

    def __init__(self, shape, dt, pad=0, values=None):
        self.shape, self.dt = tuple(shape), dt
        inner = list(shape)
        inner[-1] += pad
        self.full = inner
        np_dt = {"f16": np.uint16, "bf16": np.uint16, "f32": np.float32, "i32": np.int32}[dt]
        poison = {"f16": 0x7E00, "bf16": 0x7FC0, "f32": np.nan, "i32": -7}[dt]
        self.arr = np.full(inner, poison, dtype=np_dt)
        if values is not None:
            self.set(values)
        strides = [1]
        for s in reversed(inner[1:]):
            strides.insert(0, strides[0] * s)
        self.strides = strides
        self.t = NpTensor(_Storage(self.arr.reshape(-1).view(np.uint8)), TL[dt], 0, inner, strides)

    def view(self):
        sl = tuple(slice(0, s) for s in self.shape)
        return self.arr[sl]

    def set(self, values):
        v = np.asarray(values)
        if self.dt in ("f16", "bf16"):
            self.view()[...] = to_bits(v, self.dt)
        else:
            self.view()[...] = v

    def get(self):
        v = self.view()
        if self.dt in ("f16", "bf16"):
            return from_bits(v, self.dt)
        return v.astype(np.float64)

    def st(self, i):
        return self.strides[i]


def rand(shape, dt, amp=1.0):
    """Values exactly representable in the storage type, as float64."""
    return from_bits(to_bits(RNG.uniform(-amp, amp, shape), dt), dt)


def amplify_rows(x, amp):
    x = x.copy()
    flat = x.reshape(-1, x.shape[-1])
    pick = RNG.uniform(0, 1, flat.shape[0]) > 0.75
    flat[pick] *= amp
    return x


def pow2(n):
    return 1 << max(0, (n - 1).bit_length())


# ---- float64 references --------------------------------------------------------------------

def visible_raw(i, j, W, sliding):
    return j <= i and (j > i - W if sliding else j // W == i // W)


def ref_prefill(q, k, v, ks, vs, W, C, sliding, s):
    B, N, H, D = q.shape
    HKV, NC = k.shape[2], N // C
    o = np.zeros((B, N, H, D))
    lse = np.zeros((B, H, N))
    for b in range(B):
        for h in range(H):
            g = h // (H // HKV)
            for i in range(N):
                js = [j for j in range(max(0, i - W), i + 1) if visible_raw(i, j, W, sliding)]
                cs = list(range(min(i // C, NC)))
                keys = np.concatenate([k[b, js, g], ks[b, cs, g]]) if cs else k[b, js, g]
                vals = np.concatenate([v[b, js, g], vs[b, cs, g]]) if cs else v[b, js, g]
                x = s * keys @ q[b, i, h]
                mx = x.max()
                p = np.exp(x - mx)
                o[b, i, h] = p @ vals / p.sum()
                lse[b, h, i] = mx + math.log(p.sum())
    return o, lse


def ref_decode(q, kr, vr, ks, vs, lens, W, C, sliding, s):
    B, H, D = q.shape
    HKV, MAXNC = kr.shape[2], ks.shape[1]
    o = np.zeros((B, H, D))
    lse = np.full((B, H), -np.inf)
    for b in range(B):
        if lens[b] <= 0:
            continue
        p = lens[b] - 1
        for h in range(H):
            g = h // (H // HKV)
            js = [j for j in range(max(0, p - W), p + 1) if visible_raw(p, j, W, sliding)]
            cs = list(range(min(p // C, MAXNC)))
            keys = np.concatenate([kr[b, [j % W for j in js], g], ks[b, cs, g]])
            vals = np.concatenate([vr[b, [j % W for j in js], g], vs[b, cs, g]])
            x = s * keys @ q[b, h]
            mx = x.max()
            e = np.exp(x - mx)
            o[b, h] = e @ vals / e.sum()
            lse[b, h] = mx + math.log(e.sum())
    return o, lse


def ref_chunk_mean(x, C):
    B, N, G, D = x.shape
    NC = N // C
    return x[:, : NC * C].reshape(B, NC, C, G, D).mean(axis=2)


def ref_chunk_summarize(k, v, om, C, s):
    B, N, HKV, D = k.shape
    NC = N // C
    out = np.zeros((B, NC, HKV, D))
    for b in range(B):
        for c in range(NC):
            for h in range(HKV):
                kk = k[b, c * C:(c + 1) * C, h]
                a = s * (kk @ om[b, c, h] - 0.5 * (kk * kk).sum(1))
                p = np.exp(a - a.max())
                p /= p.sum()
                out[b, c, h] = p @ v[b, c * C:(c + 1) * C, h]
    return out


def ref_prefill_bwd(q, k, v, ks, vs, do, W, C, sliding, s, u=0.0):
    """The gradients, and for dq, dk, dks the slack a kernel needs whose Delta comes from an O
    rounded with unit roundoff `u`: |dDelta_i| <= u sum_d |dO_id O_id| moves dS_ix by
    p_ix dDelta_i, hence dq_i by s dDelta_i sum_x p_ix |k_x| and dk_x by s sum_i p_ix dDelta_i |q_i|."""
    B, N, H, D = q.shape
    HKV, NCR = k.shape[2], ks.shape[1]
    NC = min(N // C, NCR)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dks, dvs = np.zeros_like(ks), np.zeros_like(vs)
    sq, sk, sks = np.zeros_like(q), np.zeros_like(k), np.zeros_like(ks)
    for b in range(B):
        for h in range(H):
            g = h // (H // HKV)
            for i in range(N):
                js = [j for j in range(max(0, i - W), i + 1) if visible_raw(i, j, W, sliding)]
                cs = list(range(min(i // C, NC)))
                keys = np.concatenate([k[b, js, g], ks[b, cs, g]])
                vals = np.concatenate([v[b, js, g], vs[b, cs, g]])
                x = s * keys @ q[b, i, h]
                p = np.exp(x - x.max())
                p /= p.sum()
                o = p @ vals
                ds = p * (vals @ do[b, i, h] - do[b, i, h] @ o)
                dq[b, i, h] += s * ds @ keys
                nr = len(js)
                dk[b, js, g] += s * np.outer(ds[:nr], q[b, i, h])
                dv[b, js, g] += np.outer(p[:nr], do[b, i, h])
                dks[b, cs, g] += s * np.outer(ds[nr:], q[b, i, h])
                dvs[b, cs, g] += np.outer(p[nr:], do[b, i, h])
                dd = u * np.abs(do[b, i, h] * o).sum()
                sq[b, i, h] += s * dd * (p @ np.abs(keys))
                sk[b, js, g] += s * dd * np.outer(p[:nr], np.abs(q[b, i, h]))
                sks[b, cs, g] += s * dd * np.outer(p[nr:], np.abs(q[b, i, h]))
    zero = np.zeros_like
    return (dq, dk, dv, dks, dvs), (sq, sk, zero(dv), sks, zero(dvs))


def ref_chunk_summarize_bwd(k, v, om, dvs, C, s):
    B, N, HKV, D = k.shape
    NCR = om.shape[1]
    NC = min(N // C, NCR)
    dk, dv, dom = np.zeros_like(k), np.zeros_like(v), np.zeros_like(om)
    for b in range(B):
        for c in range(NC):
            for h in range(HKV):
                kk, vv = k[b, c * C:(c + 1) * C, h], v[b, c * C:(c + 1) * C, h]
                a = s * (kk @ om[b, c, h] - 0.5 * (kk * kk).sum(1))
                al = np.exp(a - a.max())
                al /= al.sum()
                g = vv @ dvs[b, c, h]
                da = al * ((g[:, None] - g[None, :]) @ al)  # pairwise: no cancellation
                dv[b, c * C:(c + 1) * C, h] = np.outer(al, dvs[b, c, h])
                dk[b, c * C:(c + 1) * C, h] = s * da[:, None] * (om[b, c, h][None, :] - kk)
                dom[b, c, h] = s * da @ kk
    return dk, dv, dom


def ref_chunk_mean_bwd(dxbar, N, C):
    B, NCR, G, D = dxbar.shape
    dx = np.zeros((B, N, G, D))
    for c in range(min(N // C, NCR)):
        dx[:, c * C:(c + 1) * C] = dxbar[:, c][:, None] / C
    return dx


def ref_extend(q, k, v, kr, vr, ks, vs, starts, counts, W, C, sliding, s):
    """Row t of sequence b = prefill row L0 + t over the whole sequence: raw keys before L0 from
    the ring (slot j mod W), the others from the new keys; summaries c < (L0 + t) / C."""
    B, TM, H, D = q.shape
    HKV, MAXNC = k.shape[2], ks.shape[1]
    o = np.full((B, TM, H, D), np.nan)
    lse = np.full((B, H, TM), np.nan)
    for b in range(B):
        L0 = starts[b]
        for t in range(counts[b]):
            i = L0 + t
            for h in range(H):
                g = h // (H // HKV)
                js = [j for j in range(max(0, i - W), i + 1) if visible_raw(i, j, W, sliding)]
                keys = [kr[b, j % W, g] if j < L0 else k[b, j - L0, g] for j in js]
                vals = [vr[b, j % W, g] if j < L0 else v[b, j - L0, g] for j in js]
                cs = list(range(min(i // C, MAXNC)))
                keys = np.concatenate([np.array(keys).reshape(-1, D), ks[b, cs, g]])
                vals = np.concatenate([np.array(vals).reshape(-1, D), vs[b, cs, g]])
                x = s * keys @ q[b, t, h]
                mx = x.max()
                e = np.exp(x - mx)
                o[b, t, h] = e @ vals / e.sum()
                lse[b, h, t] = mx + math.log(e.sum())
    return o, lse


def ref_append(k, v, kr, vr, starts, counts, W):
    kr, vr = kr.copy(), vr.copy()
    for b in range(k.shape[0]):
        for t in range(max(0, counts[b] - W), counts[b]):
            kr[b, (starts[b] + t) % W] = k[b, t]
            vr[b, (starts[b] + t) % W] = v[b, t]
    return kr, vr


# ---- checks --------------------------------------------------------------------------------

TOL = {"f16": 2e-3, "bf16": 8e-3}
RESULTS = []


def rel(got, want):
    if np.isnan(got).any():
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def report(what, dt, r, lse_err=None):
    ok = r <= TOL[dt] and (lse_err is None or lse_err <= 1e-3)
    RESULTS.append(ok)
    extra = "" if lse_err is None else f" lse {lse_err:.1e}"
    print(f"{'PASS' if ok else 'FAIL'} {what}: rel {r:.2e}{extra}")


def check_prefill(B, N, H, HKV, D, W, C, sliding, dt, BM, BN, pad=0, large=False, extra_nc=0):
    NC = N // C + extra_nc
    q = rand((B, N, H, D), dt)
    if large:
        q = from_bits(to_bits(amplify_rows(q, 3.0e4), dt), dt)
    k, v = rand((B, N, HKV, D), dt), rand((B, N, HKV, D), dt)
    ks, vs = rand((B, NC, HKV, D), dt), rand((B, NC, HKV, D), dt)
    s = 1.0 / math.sqrt(D)
    bufs = [Buf(x.shape, dt, pad, x) for x in (q, k, v, ks, vs)]
    o = Buf((B, N, H, D), dt, pad)
    lse = Buf((B, H, N), "f32")
    Q, K, V, KS, VS = bufs
    grid = (triton.cdiv(N, BM), H, B)
    fk.fe_prefill[grid](Q.t, K.t, V.t, KS.t, VS.t, o.t, lse.t,
                        Q.st(0), Q.st(1), Q.st(2), K.st(0), K.st(1), K.st(2), V.st(0), V.st(1), V.st(2),
                        KS.st(0), KS.st(1), KS.st(2), VS.st(0), VS.st(1), VS.st(2),
                        o.st(0), o.st(1), o.st(2), lse.st(0), lse.st(1),
                        N, H, HKV, N // C, s * LOG2E,
                        D=D, DP=pow2(D), W=W, C=C, SLIDING=sliding, BLOCK_M=BM, BLOCK_N=BN)
    wo, wl = ref_prefill(q, k, v, ks, vs, W, C, sliding, s)
    lerr = float(np.abs(lse.get() - wl).max()) if N else 0.0
    # LSE slack for rows with ±1e4 logits: fp32 cannot hold 1e-3 there.
    lim = 1e-3 + (4 * math.sqrt(D) * 1.2e-7 * np.abs(wl).max() if large and N else 0.0)
    report(f"prefill B={B} N={N} H={H}/{HKV} D={D} W={W} C={C} {'sliding' if sliding else 'block'} "
           f"{dt} m{BM} n{BN}{' pad' if pad else ''}{' large' if large else ''}",
           dt, rel(o.get(), wo), lerr if lerr > lim else min(lerr, 1e-3))



def make_pools(kr, vr, ks, vs, dt, page):
    """Slot and page pools holding the same rings and summaries: sequence b's ring is pool slot
    SLOT[b], its summary c row c % page of page PT[b, c // page]; the other slots and pages hold
    junk the kernels must not read."""
    B, W, HKV, D = kr.shape
    MAXNC = ks.shape[1]
    S = B + 2
    slot = RNG.permutation(S)[:B].astype(np.int32)
    kp, vp = rand((S, W, HKV, D), dt, 9.0), rand((S, W, HKV, D), dt, 9.0)
    kp[slot], vp[slot] = kr, vr
    maxp = -(-MAXNC // page)
    P = B * maxp + 3
    pt = RNG.permutation(P)[:B * maxp].reshape(B, maxp).astype(np.int32)
    kpg, vpg = rand((P, page, HKV, D), dt, 9.0), rand((P, page, HKV, D), dt, 9.0)
    for b in range(B):
        for c in range(MAXNC):
            kpg[pt[b, c // page], c % page] = ks[b, c]
            vpg[pt[b, c // page], c % page] = vs[b, c]
    return slot, kp, vp, pt, kpg, vpg


def check_decode(lens, H, HKV, D, W, C, sliding, dt, BN, splits, MAXNC=None, large=False,
                 page=0):
    B = len(lens)
    MAXNC = MAXNC or max(1, max(lens) // C + 1)
    G = H // HKV
    q = rand((B, H, D), dt)
    if large:
        q = from_bits(to_bits(amplify_rows(q, 3.0e4), dt), dt)
    kr, vr = rand((B, W, HKV, D), dt), rand((B, W, HKV, D), dt)
    ks, vs = rand((B, MAXNC, HKV, D), dt), rand((B, MAXNC, HKV, D), dt)
    s = 1.0 / math.sqrt(D)
    if page:
        slot, kp, vp, pt, kpg, vpg = make_pools(kr, vr, ks, vs, dt, page)
        Q, KR, VR, KS, VS = (Buf(x.shape, dt, 0, x) for x in (q, kp, vp, kpg, vpg))
        SLOT, PT = Buf((B,), "i32", 0, slot), Buf(pt.shape, "i32", 0, pt)
    else:
        Q, KR, VR, KS, VS = (Buf(x.shape, dt, 0, x) for x in (q, kr, vr, ks, vs))
        SLOT, PT = Buf((1,), "i32", 0, np.zeros(1, np.int32)), Buf((1, 1), "i32", 0, np.zeros((1, 1), np.int32))
    LEN = Buf((B,), "i32", 0, np.array(lens, np.int32))
    o, lse = Buf((B, H, D), dt), Buf((B, H), "f32")
    ws_o = Buf((max(1, splits * B * H * D),), "f32")
    ws_ml = Buf((max(1, splits * B * H * 2),), "f32")
    BH = max(16, min(pow2(G), 64))
    grid = (splits, HKV * triton.cdiv(G, BH), B)
    fk.fe_decode[grid](Q.t, KR.t, VR.t, KS.t, VS.t, LEN.t, o.t, lse.t, ws_o.t, ws_ml.t,
                       Q.st(0), Q.st(1), KR.st(0), KR.st(1), KR.st(2), VR.st(0), VR.st(1), VR.st(2),
                       KS.st(0), KS.st(1), KS.st(2), VS.st(0), VS.st(1), VS.st(2),
                       o.st(0), o.st(1), lse.st(0), lse.st(1),
                       B, H, HKV, MAXNC, splits, s * LOG2E, SLOT.t, PT.t, PT.st(0), max(page, 1),
                       D=D, DP=pow2(D), W=W, C=C, SLIDING=sliding, GROUP=G, BLOCK_H=BH, BLOCK_N=BN,
                       PAGED=bool(page))
    if splits > 1:
        fk.fe_decode_combine[(H, B)](o.t, lse.t, ws_o.t, ws_ml.t, o.st(0), o.st(1), lse.st(0),
                                     lse.st(1), B, H, splits, D=D, DP=pow2(D))
    wo, wl = ref_decode(q, kr, vr, ks, vs, lens, W, C, sliding, s)
    got_l = lse.get()
    both_inf = np.isneginf(got_l) & np.isneginf(wl)
    with np.errstate(invalid="ignore"):
        lerr = float(np.where(both_inf, 0.0, np.abs(got_l - wl)).max())
    if large:
        lerr = min(lerr, 1e-3) if lerr < 1e-3 + 4 * math.sqrt(D) * 1.2e-7 * np.abs(wl[np.isfinite(wl)]).max() else lerr
    got = o.get()
    r = rel(got, wo) if np.linalg.norm(wo) > 0 else (0.0 if not np.isnan(got).any() and not got.any() else 1.0)
    report(f"decode lens={lens} H={H}/{HKV} D={D} W={W} C={C} {'sliding' if sliding else 'block'} {dt} "
           f"n{BN} splits={splits}{' large' if large else ''}{f' paged({page})' if page else ''}", dt, r, lerr)


def check_chunk_mean(B, N, G, D, C, dt, pad=0):
    x = rand((B, N, G, D), dt)
    NC = N // C
    X = Buf(x.shape, dt, pad, x)
    Y = Buf((B, NC, G, D), dt, pad)
    fk.fe_chunk_mean[(NC, G, B)](X.t, Y.t, X.st(0), X.st(1), X.st(2), Y.st(0), Y.st(1), Y.st(2),
                                 NC, G, D=D, DP=pow2(D), C=C, CP=pow2(C))
    report(f"chunk_mean B={B} N={N} G={G} D={D} C={C} {dt}{' pad' if pad else ''}", dt,
           rel(Y.get(), ref_chunk_mean(x, C)))


def check_chunk_summarize(B, N, HKV, D, C, dt, large=False):
    amp = 8.0 if large else 1.0
    NC = N // C
    k, v, om = rand((B, N, HKV, D), dt, amp), rand((B, N, HKV, D), dt), rand((B, NC, HKV, D), dt, amp)
    s = 1.0 / math.sqrt(D)
    K, V, OM = (Buf(x.shape, dt, 0, x) for x in (k, v, om))
    VS = Buf((B, NC, HKV, D), dt)
    fk.fe_chunk_summarize[(NC, HKV, B)](K.t, V.t, OM.t, VS.t, K.st(0), K.st(1), K.st(2),
                                        V.st(0), V.st(1), V.st(2), OM.st(0), OM.st(1), OM.st(2),
                                        VS.st(0), VS.st(1), VS.st(2), NC, HKV, s,
                                        D=D, DP=pow2(D), C=C, CP=pow2(C))
    report(f"chunk_summarize B={B} N={N} Hkv={HKV} D={D} C={C} {dt}{' large' if large else ''}", dt,
           rel(VS.get(), ref_chunk_summarize(k, v, om, C, s)))


# Gradients carry more rounding than outputs: P and dS pass through the storage type before their
# products (hence 5x the forward's output tolerance for f16, about 4x for bf16), and
# dS = P (dP - Delta) takes Delta from the rounded forward output O: when P is peaked, dP - Delta
# cancels and O's rounding dominates. That part is bounded element by element (the `slack` of
# ref_prefill_bwd) and allowed on top of the relative tolerance.
GRAD_TOL = {"f16": 1e-2, "bf16": 3e-2}


UNIT = {"f16": 2.0 ** -11, "bf16": 2.0 ** -8}


def report_grads(what, dt, pairs, slack=None):
    """Every gradient tensor by relative error against its reference: at most GRAD_TOL, or
    GRAD_TOL plus the propagated rounding of Delta (`slack`, an absolute bound per element,
    summed in norm: ‖got - ref‖ <= tol ‖ref‖ + ‖slack‖)."""
    errs = {name: rel(got, want) for name, got, want in pairs}
    ok = True
    # Storing into f16 rounds values below its normal range (2^-14) to multiples of 2^-24: half
    # of that per element, whatever the value. A peaked softmax makes whole gradients that small
    # (chunk_summarize_bwd's `large` case: d alpha of order 1e-6), where the relative bound alone
    # would fail on the storage type, not on the kernel.
    floor = 2.0 ** -25 if dt == "f16" else 0.0
    for i, (name, got, want) in enumerate(pairs):
        extra = np.linalg.norm(slack[i]) if slack is not None else 0.0
        extra += floor * math.sqrt(want.size)
        if np.isnan(got).any() or np.linalg.norm(got - want) > GRAD_TOL[dt] * np.linalg.norm(want) + extra:
            ok = False
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {what}: " + " ".join(f"{n} {e:.2e}" for n, e in errs.items()))


def check_prefill_bwd(B, N, H, HKV, D, W, C, sliding, dt, BM, BN, pad=0, large=False,
                      huge=False, extra_nc=0, splits=1):
    """`large`: some rows' logits reach about ±50 (a peaked softmax); `huge`: ±1e4 (every
    gradient must also be finite). Both are checked with the Delta slack (see GRAD_TOL)."""
    NCR = N // C + extra_nc
    q = rand((B, N, H, D), dt)
    if large or huge:
        q = from_bits(to_bits(amplify_rows(q, 3.0e4 if huge else 60.0), dt), dt)
    k, v = rand((B, N, HKV, D), dt), rand((B, N, HKV, D), dt)
    ks, vs = rand((B, NCR, HKV, D), dt), rand((B, NCR, HKV, D), dt)
    do = rand((B, N, H, D), dt)
    s = 1.0 / math.sqrt(D)
    wo, wl = ref_prefill(q, k, v, ks, vs, W, C, sliding, s)
    o = from_bits(to_bits(wo, dt), dt)  # the forward's output, rounded like a kernel's
    Q, K, V, KS, VS, DO, O = (Buf(x.shape, dt, pad, x) for x in (q, k, v, ks, vs, do, o))
    LSE = Buf((B, H, N), "f32", 0, wl.astype(np.float32))
    DELTA = Buf((B, H, N), "f32")
    DQ, DK, DV = Buf(q.shape, dt, pad), Buf(k.shape, dt, pad), Buf(v.shape, dt, pad)
    DKS, DVS = Buf(ks.shape, dt, pad), Buf(vs.shape, dt, pad)
    DP = pow2(D)
    fk.fe_prefill_bwd_pre[(triton.cdiv(N, BM), H, B)](
        O.t, DO.t, DELTA.t, O.st(0), O.st(1), O.st(2), DO.st(0), DO.st(1), DO.st(2), N, H,
        D=D, DP=DP, BLOCK_M=BM)
    common = (Q.st(0), Q.st(1), Q.st(2), K.st(0), K.st(1), K.st(2), V.st(0), V.st(1), V.st(2),
              KS.st(0), KS.st(1), KS.st(2), VS.st(0), VS.st(1), VS.st(2),
              DO.st(0), DO.st(1), DO.st(2), LSE.st(0), LSE.st(1))
    NC = min(N // C, NCR)
    nsb = triton.cdiv(NC, BN)
    # the summary blocks' queries in `splits` segments (a multiple of BM rows each)
    seg = triton.cdiv(triton.cdiv(max(N, 1), splits), BM) * BM
    PART = Buf((2, B, HKV, splits, max(nsb * BN, 1), D), "f32")
    grid = (B * HKV * (nsb * splits + triton.cdiv(N, BN)),)
    fk.fe_prefill_bwd_dkdv[grid](
        Q.t, K.t, V.t, KS.t, VS.t, DO.t, LSE.t, DELTA.t, DK.t, DV.t, PART.t, *common,
        DK.st(0), DK.st(1), DK.st(2), DV.st(0), DV.st(1), DV.st(2),
        B, N, H, HKV, NC, splits, seg, s,
        D=D, DP=DP, W=W, C=C, SLIDING=sliding, BLOCK_M=BM, BLOCK_N=BN)
    fk.fe_prefill_bwd_dsum[(triton.cdiv(NCR, 32), HKV, B)](
        PART.t, DKS.t, DVS.t, DKS.st(0), DKS.st(1), DKS.st(2), DVS.st(0), DVS.st(1), DVS.st(2),
        B, HKV, NC, NCR, splits, D=D, DP=DP, BLOCK_N=BN, BLOCK_R=32)
    # dQ's tile is the transpose of dK/dV's: BN query rows held, BM keys a step
    fk.fe_prefill_bwd_dq[(triton.cdiv(N, BN), H, B)](
        Q.t, K.t, V.t, KS.t, VS.t, DO.t, LSE.t, DELTA.t, DQ.t, *common,
        DQ.st(0), DQ.st(1), DQ.st(2), N, H, HKV, N // C, s,
        D=D, DP=DP, W=W, C=C, SLIDING=sliding, BLOCK_M=BN, BLOCK_N=BM)
    want, slack = ref_prefill_bwd(q, k, v, ks, vs, do, W, C, sliding, s, UNIT[dt])
    got = (DQ.get(), DK.get(), DV.get(), DKS.get(), DVS.get())
    names = ("dq", "dk", "dv", "dks", "dvs")
    if huge:
        finite = all(np.isfinite(g).all() for g in got)
        RESULTS.append(finite)
        print(f"{'PASS' if finite else 'FAIL'} prefill_bwd huge logits: every gradient finite")
    report_grads(f"prefill_bwd B={B} N={N} H={H}/{HKV} D={D} W={W} C={C} "
                 f"{'sliding' if sliding else 'block'} {dt} m{BM} n{BN} splits={splits}"
                 f"{' pad' if pad else ''}{' large' if large else ''}", dt,
                 list(zip(names, got, want)), slack)


def check_chunk_summarize_bwd(B, N, HKV, D, C, dt, extra=0, large=False):
    amp = 8.0 if large else 1.0
    NCR = N // C + extra
    k, v = rand((B, N, HKV, D), dt, amp), rand((B, N, HKV, D), dt)
    om, dvs = rand((B, NCR, HKV, D), dt, amp), rand((B, NCR, HKV, D), dt)
    s = 1.0 / math.sqrt(D)
    K, V, OM, DVS = (Buf(x.shape, dt, 0, x) for x in (k, v, om, dvs))
    DK, DV, DOM = Buf(k.shape, dt), Buf(v.shape, dt), Buf(om.shape, dt)
    NC = N // C
    fk.fe_chunk_summarize_bwd[(max(NCR, NC + 1), HKV, B)](
        K.t, V.t, OM.t, DVS.t, DK.t, DV.t, DOM.t,
        K.st(0), K.st(1), K.st(2), V.st(0), V.st(1), V.st(2), OM.st(0), OM.st(1), OM.st(2),
        DVS.st(0), DVS.st(1), DVS.st(2), DK.st(0), DK.st(1), DK.st(2), DV.st(0), DV.st(1), DV.st(2),
        DOM.st(0), DOM.st(1), DOM.st(2), N, NC, NCR, HKV, s, D=D, DP=pow2(D), C=C, CP=pow2(C))
    want = ref_chunk_summarize_bwd(k, v, om, dvs, C, s)
    report_grads(f"chunk_summarize_bwd B={B} N={N} Hkv={HKV} D={D} C={C} {dt}"
                 f"{' large' if large else ''}", dt,
                 list(zip(("dk", "dv", "domega"), (DK.get(), DV.get(), DOM.get()), want)))


def check_chunk_mean_bwd(B, N, G, D, C, dt, extra=0):
    NCR = N // C + extra
    dy = rand((B, NCR, G, D), dt)
    DY, DX = Buf(dy.shape, dt, 0, dy), Buf((B, N, G, D), dt)
    fk.fe_chunk_mean_bwd[(triton.cdiv(N, C), G, B)](
        DY.t, DX.t, DY.st(0), DY.st(1), DY.st(2), DX.st(0), DX.st(1), DX.st(2), N, N // C, G,
        D=D, DP=pow2(D), C=C, CP=pow2(C))
    report_grads(f"chunk_mean_bwd B={B} N={N} G={G} D={D} C={C} {dt}", dt,
                 [("dx", DX.get(), ref_chunk_mean_bwd(dy, N, C))])


def check_extend(starts, counts, TM, H, HKV, D, W, C, sliding, dt, BM, BN, large=False, page=0):
    B = len(starts)
    MAXNC = max(1, max(a + b for a, b in zip(starts, counts)) // C + 1)
    q = rand((B, TM, H, D), dt)
    if large:
        q = from_bits(to_bits(amplify_rows(q, 3.0e4), dt), dt)
    k, v = rand((B, TM, HKV, D), dt), rand((B, TM, HKV, D), dt)
    kr, vr = rand((B, W, HKV, D), dt), rand((B, W, HKV, D), dt)
    ks, vs = rand((B, MAXNC, HKV, D), dt), rand((B, MAXNC, HKV, D), dt)
    s = 1.0 / math.sqrt(D)
    if page:
        slot, kp, vp, pt, kpg, vpg = make_pools(kr, vr, ks, vs, dt, page)
        Q, K, V, KR, VR, KS, VS = (Buf(x.shape, dt, 0, x) for x in (q, k, v, kp, vp, kpg, vpg))
        SLOT, PT = Buf((B,), "i32", 0, slot), Buf(pt.shape, "i32", 0, pt)
    else:
        Q, K, V, KR, VR, KS, VS = (Buf(x.shape, dt, 0, x) for x in (q, k, v, kr, vr, ks, vs))
        SLOT, PT = Buf((1,), "i32", 0, np.zeros(1, np.int32)), Buf((1, 1), "i32", 0, np.zeros((1, 1), np.int32))
    ST = Buf((B,), "i32", 0, np.array(starts, np.int32))
    CT = Buf((B,), "i32", 0, np.array(counts, np.int32))
    O, LSE = Buf((B, TM, H, D), dt), Buf((B, H, TM), "f32")
    fk.fe_extend[(triton.cdiv(TM, BM), H, B)](
        Q.t, K.t, V.t, KR.t, VR.t, KS.t, VS.t, ST.t, CT.t, O.t, LSE.t,
        Q.st(0), Q.st(1), Q.st(2), K.st(0), K.st(1), K.st(2), V.st(0), V.st(1), V.st(2),
        KR.st(0), KR.st(1), KR.st(2), VR.st(0), VR.st(1), VR.st(2),
        KS.st(0), KS.st(1), KS.st(2), VS.st(0), VS.st(1), VS.st(2),
        O.st(0), O.st(1), O.st(2), LSE.st(0), LSE.st(1), H, HKV, MAXNC, s * LOG2E,
        SLOT.t, PT.t, PT.st(0), max(page, 1),
        D=D, DP=pow2(D), W=W, C=C, SLIDING=sliding, BLOCK_M=BM, BLOCK_N=BN, PAGED=bool(page))
    wo, wl = ref_extend(q, k, v, kr, vr, ks, vs, starts, counts, W, C, sliding, s)
    got_o, got_l = O.get(), LSE.get()
    written = ~np.isnan(wo)
    # rows past COUNT stay poisoned (not written); the others match
    untouched = bool(np.isnan(got_o[~written]).all())
    r = rel(np.where(written, got_o, 0.0), np.where(written, wo, 0.0))
    lw = ~np.isnan(wl)
    lerr = float(np.abs(got_l[lw] - wl[lw]).max()) if lw.any() else 0.0
    if large:
        lerr = min(lerr, 1e-3) if lerr < 1e-3 + 4 * math.sqrt(D) * 1.2e-7 * np.abs(wl[lw]).max() else lerr
    ok_rows = untouched
    RESULTS.append(ok_rows)
    if not ok_rows:
        print(f"FAIL extend wrote rows past COUNT")
    report(f"extend L0={starts} T={counts} Tmax={TM} H={H}/{HKV} D={D} W={W} C={C} "
           f"{'sliding' if sliding else 'block'} {dt} m{BM} n{BN}{' large' if large else ''}"
           f"{f' paged({page})' if page else ''}", dt, r, lerr)


def check_append(starts, counts, TM, HKV, D, W, dt, BN, paged=False):
    B = len(starts)
    k, v = rand((B, TM, HKV, D), dt), rand((B, TM, HKV, D), dt)
    kr, vr = rand((B, W, HKV, D), dt), rand((B, W, HKV, D), dt)
    if paged:
        S = B + 2
        slot = RNG.permutation(S)[:B].astype(np.int32)
        kp, vp = rand((S, W, HKV, D), dt), rand((S, W, HKV, D), dt)
        kp[slot], vp[slot] = kr, vr
        K, V, KR, VR = (Buf(x.shape, dt, 0, x) for x in (k, v, kp, vp))
        SLOT = Buf((B,), "i32", 0, slot)
    else:
        K, V, KR, VR = (Buf(x.shape, dt, 0, x) for x in (k, v, kr, vr))
        SLOT = Buf((1,), "i32", 0, np.zeros(1, np.int32))
    ST = Buf((B,), "i32", 0, np.array(starts, np.int32))
    CT = Buf((B,), "i32", 0, np.array(counts, np.int32))
    fk.fe_append[(triton.cdiv(W, BN), HKV, B)](
        K.t, V.t, ST.t, CT.t, KR.t, VR.t, K.st(0), K.st(1), K.st(2), V.st(0), V.st(1), V.st(2),
        KR.st(0), KR.st(1), KR.st(2), VR.st(0), VR.st(1), VR.st(2), HKV, SLOT.t,
        D=D, DP=pow2(D), W=W, BLOCK_N=BN, PAGED=paged)
    wk, wv = ref_append(k, v, kr, vr, starts, counts, W)
    if paged:
        # the sequences' slots updated, every other slot of the pool untouched
        wkp, wvp = kp.copy(), vp.copy()
        wkp[slot], wvp[slot] = wk, wv
        wk, wv = wkp, wvp
    ok = np.array_equal(KR.get(), wk) and np.array_equal(VR.get(), wv)
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} append L0={starts} T={counts} W={W} D={D} {dt}"
          f"{' paged' if paged else ''}: ring "
          f"{'exact' if ok else 'differs'}")


def main():
    for dt in ("f16", "bf16"):
        for sliding in (False, True):
            # N not a multiple of C or W, query blocks across windows, GQA, padded strides
            check_prefill(2, 77, 4, 2, 32, 32, 8, sliding, dt, 16, 16, pad=8)
            check_prefill(1, 100, 2, 1, 64, 64, 16, sliding, dt, 32, 16, large=True)
            check_prefill(1, 40, 2, 2, 96, 16, 4, sliding, dt, 32, 32, extra_nc=3)
            check_prefill(1, 5, 2, 2, 32, 16, 8, sliding, dt, 16, 16)   # N < C: no summaries
            check_decode([1, 7, 33, 70, 0], 4, 2, 32, 32, 8, sliding, dt, 16, 1)
            check_decode([1, 7, 33, 70], 8, 2, 64, 32, 8, sliding, dt, 16, 3, large=True)
            check_decode([100, 45], 20, 1, 32, 16, 4, sliding, dt, 16, 2)  # group 20: two head tiles
        check_chunk_mean(2, 37, 3, 32, 8, dt, pad=8)
        check_chunk_mean(1, 20, 2, 96, 6, dt)
        check_chunk_summarize(2, 37, 2, 32, 8, dt)
        check_chunk_summarize(1, 30, 1, 64, 6, dt, large=True)
        for sliding in (False, True):
            check_prefill_bwd(2, 45, 4, 2, 32, 16, 4, sliding, dt, 16, 16, pad=8, extra_nc=2,
                              splits=3)
            check_prefill_bwd(1, 70, 2, 1, 64, 32, 8, sliding, dt, 32, 16, large=True, splits=2)
            check_prefill_bwd(1, 100, 2, 1, 32, 32, 8, sliding, dt, 16, 32, splits=4)
            check_prefill_bwd(1, 40, 2, 1, 32, 16, 4, sliding, dt, 16, 16, huge=True)
            check_prefill_bwd(1, 5, 2, 2, 32, 16, 8, sliding, dt, 16, 16)
        check_chunk_summarize_bwd(2, 37, 2, 32, 8, dt, extra=2)
        check_chunk_summarize_bwd(1, 30, 1, 64, 6, dt, large=True)
        check_chunk_mean_bwd(2, 37, 3, 32, 8, dt, extra=1)
        for sliding in (False, True):
            # T = 1 (a decode step), T < C, chunk and window crossings, T > W, L0 = 0, mixed
            check_extend([0, 5, 37, 70], [9, 1, 20, 0], 24, 4, 2, 32, 16, 4, sliding, dt, 16, 16)
            check_extend([33, 0], [40, 17], 40, 2, 1, 64, 32, 8, sliding, dt, 16, 16, large=True)
        check_append([0, 5, 37, 70], [9, 1, 20, 0], 24, 2, 32, 16, dt, 16)
        check_append([3], [40], 40, 1, 64, 32, dt, 16)
        # paged and indirect caches: the same results through slot and page tables
        for sliding in (False, True):
            check_decode([1, 7, 33, 70, 0], 4, 2, 32, 32, 8, sliding, dt, 16, 1, page=3)
            check_decode([1, 7, 33, 70], 8, 2, 64, 32, 8, sliding, dt, 16, 3, large=True, page=4)
            check_extend([0, 5, 37, 70], [9, 1, 20, 0], 24, 4, 2, 32, 16, 4, sliding, dt, 16, 16,
                         page=5)
        check_append([0, 5, 37, 70], [9, 1, 20, 0], 24, 2, 32, 16, dt, 16, paged=True)
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
