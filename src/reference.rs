//! The contract in float64 on the CPU: visibility rules and a reference of every op. Tests and
//! the tuner compare kernels against these; `count_*` give the work an op does (for TFLOP/s).
//! Pure. Layouts are contiguous token-major, as in the contract.

use crate::spec::LocalMode;

pub use crate::visibility::{count_prefill_pairs, key_range, key_visible, summaries_visible};

/// Shapes of a prefill call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch.
    pub b: usize,
    /// Tokens.
    pub n: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Head dim.
    pub d: usize,
    /// Local window.
    pub window: usize,
    /// Chunk.
    pub chunk: usize,
    /// Local mode.
    pub local: LocalMode,
}

fn softmax_rows(logits: &[f64], values: &[&[f64]], d: usize) -> (Vec<f64>, f64) {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![0.0; d];
    let mut sum = 0.0;
    for (l, v) in logits.iter().zip(values) {
        let p = (l - m).exp();
        sum += p;
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o += p * x;
        }
    }
    for o in &mut out {
        *o /= sum;
    }
    (out, m + sum.ln())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Prefill reference: `q [B,N,H,D]`, `k, v [B,N,Hkv,D]`, `ks, vs [B,NC,Hkv,D]` (NC >= N/C rows
/// present, the first N/C used) -> `o [B,N,H,D]`, `lse [B,H,N]`.
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    s: &AttnShape,
    nc_rows: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    ks: &[f64],
    vs: &[f64],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let AttnShape {
        b, n, h, hkv, d, ..
    } = *s;
    let g = h / hkv;
    let nc = (n / s.chunk).min(nc_rows);
    let mut o = vec![0.0; b * n * h * d];
    let mut lse = vec![0.0; b * h * n];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / g;
            for i in 0..n {
                let qi = &q[((bi * n + i) * h + hi) * d..][..d];
                let mut logits = Vec::new();
                let mut vals: Vec<&[f64]> = Vec::new();
                for j in key_range(i, s.window, s.local) {
                    let kj = &k[((bi * n + j) * hkv + kh) * d..][..d];
                    logits.push(scale * dot(qi, kj));
                    vals.push(&v[((bi * n + j) * hkv + kh) * d..][..d]);
                }
                for c in 0..summaries_visible(i, s.chunk, nc) {
                    let kc = &ks[((bi * nc_rows + c) * hkv + kh) * d..][..d];
                    logits.push(scale * dot(qi, kc));
                    vals.push(&vs[((bi * nc_rows + c) * hkv + kh) * d..][..d]);
                }
                let (row, l) = softmax_rows(&logits, &vals, d);
                o[((bi * n + i) * h + hi) * d..][..d].copy_from_slice(&row);
                lse[(bi * h + hi) * n + i] = l;
            }
        }
    }
    (o, lse)
}

/// The sizes and spec fields of a decode call, for the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Head dim.
    pub d: usize,
    /// Local window (ring slots).
    pub window: usize,
    /// Chunk.
    pub chunk: usize,
    /// Local mode.
    pub local: LocalMode,
    /// Summary slots in the cache.
    pub max_nc: usize,
}

/// Decode reference: the query of sequence `b` at position `len[b]-1` against ring buffers
/// `kr, vr [B,W,Hkv,D]` (token t in slot t mod W) and summaries `ks, vs [B,MAXNC,Hkv,D]`.
/// Returns `o [B,H,D]`, `lse [B,H]`; a sequence with `len <= 0` gives `o = 0`, `lse = -inf`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    s: &DecodeShape,
    len: &[i32],
    q: &[f64],
    kr: &[f64],
    vr: &[f64],
    ks: &[f64],
    vs: &[f64],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let DecodeShape {
        b,
        h,
        hkv,
        d,
        window,
        chunk,
        local,
        max_nc,
    } = *s;
    let g = h / hkv;
    let mut o = vec![0.0; b * h * d];
    let mut lse = vec![0.0; b * h];
    for bi in 0..b {
        if len[bi] <= 0 {
            lse[bi * h..(bi + 1) * h].fill(f64::NEG_INFINITY);
            continue;
        }
        let p = len[bi] as usize - 1;
        for hi in 0..h {
            let kh = hi / g;
            let qi = &q[(bi * h + hi) * d..][..d];
            let mut logits = Vec::new();
            let mut vals: Vec<&[f64]> = Vec::new();
            for t in key_range(p, window, local) {
                let slot = t % window;
                logits.push(scale * dot(qi, &kr[((bi * window + slot) * hkv + kh) * d..][..d]));
                vals.push(&vr[((bi * window + slot) * hkv + kh) * d..][..d]);
            }
            for c in 0..summaries_visible(p, chunk, max_nc) {
                logits.push(scale * dot(qi, &ks[((bi * max_nc + c) * hkv + kh) * d..][..d]));
                vals.push(&vs[((bi * max_nc + c) * hkv + kh) * d..][..d]);
            }
            let (row, l) = softmax_rows(&logits, &vals, d);
            o[(bi * h + hi) * d..][..d].copy_from_slice(&row);
            lse[bi * h + hi] = l;
        }
    }
    (o, lse)
}

fn abs_dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum()
}

/// Per (b, h, i) of a prefill: `s · max_j Σ_d |q_d k_jd|` over the row's visible keys and
/// summaries, the size of the terms its LSE sums (see `verify::lse_bound`).
pub fn prefill_lse_magnitudes(
    sh: &AttnShape,
    nc_rows: usize,
    q: &[f64],
    k: &[f64],
    ks: &[f64],
    scale: f64,
) -> Vec<f64> {
    let AttnShape {
        b, n, h, hkv, d, ..
    } = *sh;
    let g = h / hkv;
    let nc = (n / sh.chunk).min(nc_rows);
    let mut out = vec![0.0; b * h * n];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..n {
                let qi = &q[((bi * n + i) * h + hi) * d..][..d];
                let mut m: f64 = 0.0;
                for j in key_range(i, sh.window, sh.local) {
                    m = m.max(abs_dot(qi, &k[((bi * n + j) * hkv + hi / g) * d..][..d]));
                }
                for c in 0..summaries_visible(i, sh.chunk, nc) {
                    m = m.max(abs_dot(
                        qi,
                        &ks[((bi * nc_rows + c) * hkv + hi / g) * d..][..d],
                    ));
                }
                out[(bi * h + hi) * n + i] = scale * m;
            }
        }
    }
    out
}

/// Per (b, h) of a decode: as [`prefill_lse_magnitudes`] for the query at `len[b] - 1`.
pub fn decode_lse_magnitudes(
    s: &DecodeShape,
    len: &[i32],
    q: &[f64],
    kr: &[f64],
    ks: &[f64],
    scale: f64,
) -> Vec<f64> {
    let (g, d, w) = (s.h / s.hkv, s.d, s.window);
    let mut mags = vec![0.0; s.b * s.h];
    for (bi, &l) in len.iter().enumerate() {
        if l <= 0 {
            continue;
        }
        let pos = l as usize - 1;
        for hi in 0..s.h {
            let qi = &q[(bi * s.h + hi) * d..][..d];
            let kh = hi / g;
            let mut m: f64 = 0.0;
            for t in key_range(pos, w, s.local) {
                m = m.max(abs_dot(qi, &kr[((bi * w + t % w) * s.hkv + kh) * d..][..d]));
            }
            for c in 0..summaries_visible(pos, s.chunk, s.max_nc) {
                m = m.max(abs_dot(
                    qi,
                    &ks[((bi * s.max_nc + c) * s.hkv + kh) * d..][..d],
                ));
            }
            mags[bi * s.h + hi] = scale * m;
        }
    }
    mags
}

/// chunk_mean reference: `x [B,N,G,D]` -> `[B,N/C,G,D]`.
pub fn chunk_mean(x: &[f64], b: usize, n: usize, g: usize, d: usize, chunk: usize) -> Vec<f64> {
    let nc = n / chunk;
    let mut out = vec![0.0; b * nc * g * d];
    for bi in 0..b {
        for c in 0..nc {
            for gi in 0..g {
                for di in 0..d {
                    let s: f64 = (0..chunk)
                        .map(|t| x[((bi * n + c * chunk + t) * g + gi) * d + di])
                        .sum();
                    out[((bi * nc + c) * g + gi) * d + di] = s / chunk as f64;
                }
            }
        }
    }
    out
}

/// chunk_summarize reference: `k, v [B,N,Hkv,D]`, `omega [B,NC,Hkv,D]` -> `vs [B,NC,Hkv,D]`
/// (the first N/C of the NC rows).
#[allow(clippy::too_many_arguments)]
pub fn chunk_summarize(
    k: &[f64],
    v: &[f64],
    omega: &[f64],
    b: usize,
    n: usize,
    hkv: usize,
    d: usize,
    chunk: usize,
    nc_rows: usize,
    scale: f64,
) -> Vec<f64> {
    let nc = n / chunk;
    let mut out = vec![0.0; b * nc_rows * hkv * d];
    for bi in 0..b {
        for c in 0..nc {
            for g in 0..hkv {
                let om = &omega[((bi * nc_rows + c) * hkv + g) * d..][..d];
                let mut logits = Vec::with_capacity(chunk);
                let mut vals: Vec<&[f64]> = Vec::with_capacity(chunk);
                for t in c * chunk..(c + 1) * chunk {
                    let kt = &k[((bi * n + t) * hkv + g) * d..][..d];
                    logits.push(scale * (dot(om, kt) - 0.5 * dot(kt, kt)));
                    vals.push(&v[((bi * n + t) * hkv + g) * d..][..d]);
                }
                let (row, _) = softmax_rows(&logits, &vals, d);
                out[((bi * nc_rows + c) * hkv + g) * d..][..d].copy_from_slice(&row);
            }
        }
    }
    out
}

/// `‖out − ref‖ / ‖ref‖` over whole tensors; `f64::INFINITY` if `out` has a NaN or infinity
/// where `ref` is finite. Positions where `ref` is NaN are not compared (outputs a kernel does
/// not write, such as summary rows past N/C).
pub fn rel_error(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (o, r) in out.iter().zip(reference) {
        if r.is_nan() {
            continue;
        }
        if !o.is_finite() && r.is_finite() || o.is_nan() {
            return f64::INFINITY;
        }
        if r.is_finite() {
            num += (o - r) * (o - r);
            den += r * r;
        }
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Largest `|out − ref|`, treating equal infinities as exact; infinite on NaN.
pub fn max_abs_error(out: &[f64], reference: &[f64]) -> f64 {
    out.iter()
        .zip(reference)
        .map(|(o, r)| {
            if o.is_nan() || r.is_nan() {
                f64::INFINITY
            } else if o == r {
                0.0
            } else {
                (o - r).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// The gradients of prefill, and the slack a kernel needs for them (see [`prefill_bwd`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefillGrads {
    /// `dq [B,N,H,D]`.
    pub dq: Vec<f64>,
    /// `dk [B,N,Hkv,D]`, summed over each kv head's query heads.
    pub dk: Vec<f64>,
    /// `dv [B,N,Hkv,D]`.
    pub dv: Vec<f64>,
    /// `dks [B,NC,Hkv,D]` (zero at or past N/C).
    pub dks: Vec<f64>,
    /// `dvs [B,NC,Hkv,D]`.
    pub dvs: Vec<f64>,
    /// Per element of dq, what a Delta computed from an O rounded with unit roundoff `u` may
    /// move it: `s |dDelta_i| Σ_x p_ix |k_x|`, with `|dDelta_i| ≤ u Σ_d |dO_id O_id|`.
    pub slack_dq: Vec<f64>,
    /// Likewise for dk: `s Σ_i p_ix |dDelta_i| |q_i|`.
    pub slack_dk: Vec<f64>,
    /// Likewise for dks.
    pub slack_dks: Vec<f64>,
}

/// Gradients of prefill (the contract's backward, item 5), from the inputs and `dout` (P and O
/// recomputed in float64), each kv gradient summed over its query-head group; summary rows at
/// or past N/C are zero. `unit` is the unit roundoff of the kernel's stored O (for the slack;
/// 0 gives zero slack).
#[allow(clippy::too_many_arguments)]
pub fn prefill_bwd(
    s: &AttnShape,
    nc_rows: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    ks: &[f64],
    vs: &[f64],
    dout: &[f64],
    scale: f64,
    unit: f64,
) -> PrefillGrads {
    let AttnShape {
        b, n, h, hkv, d, ..
    } = *s;
    let g = h / hkv;
    let nc = (n / s.chunk).min(nc_rows);
    let mut dq = vec![0.0; b * n * h * d];
    let mut dk = vec![0.0; b * n * hkv * d];
    let mut dv = vec![0.0; b * n * hkv * d];
    let mut dks = vec![0.0; b * nc_rows * hkv * d];
    let mut dvs = vec![0.0; b * nc_rows * hkv * d];
    let mut slack_dq = vec![0.0; b * n * h * d];
    let mut slack_dk = vec![0.0; b * n * hkv * d];
    let mut slack_dks = vec![0.0; b * nc_rows * hkv * d];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / g;
            for i in 0..n {
                let row = ((bi * n + i) * h + hi) * d;
                let (qi, doi) = (&q[row..][..d], &dout[row..][..d]);
                // the visible columns: (is summary, index into k/v or ks/vs rows)
                let mut cols: Vec<(bool, usize)> = key_range(i, s.window, s.local)
                    .map(|j| (false, (bi * n + j) * hkv + kh))
                    .collect();
                cols.extend(
                    (0..summaries_visible(i, s.chunk, nc))
                        .map(|c| (true, (bi * nc_rows + c) * hkv + kh)),
                );
                let key = |&(sum, r): &(bool, usize)| {
                    if sum {
                        &ks[r * d..][..d]
                    } else {
                        &k[r * d..][..d]
                    }
                };
                let val = |&(sum, r): &(bool, usize)| {
                    if sum {
                        &vs[r * d..][..d]
                    } else {
                        &v[r * d..][..d]
                    }
                };
                let logits: Vec<f64> = cols.iter().map(|c| scale * dot(qi, key(c))).collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                let mut o = vec![0.0; d];
                for (pc, c) in p.iter().zip(&cols) {
                    for (oo, x) in o.iter_mut().zip(val(c)) {
                        *oo += pc * x;
                    }
                }
                let delta = dot(doi, &o);
                let dd = unit * doi.iter().zip(&o).map(|(a, b)| (a * b).abs()).sum::<f64>();
                for (pc, c) in p.iter().zip(&cols) {
                    let ds = pc * (dot(doi, val(c)) - delta);
                    let (dkk, dvv, sk) = if c.0 {
                        (&mut dks, &mut dvs, &mut slack_dks)
                    } else {
                        (&mut dk, &mut dv, &mut slack_dk)
                    };
                    for t in 0..d {
                        dvv[c.1 * d + t] += pc * doi[t];
                        dkk[c.1 * d + t] += scale * ds * qi[t];
                        dq[row + t] += scale * ds * key(c)[t];
                        sk[c.1 * d + t] += scale * pc * dd * qi[t].abs();
                        slack_dq[row + t] += scale * pc * dd * key(c)[t].abs();
                    }
                }
            }
        }
    }
    PrefillGrads {
        dq,
        dk,
        dv,
        dks,
        dvs,
        slack_dq,
        slack_dk,
        slack_dks,
    }
}

/// Gradients of chunk_summarize (the contract's backward, item 5) from `dvs [B,NC,Hkv,D]`:
/// `(dk, dv [B,N,Hkv,D], domega [B,NC,Hkv,D])`; tokens of a trailing partial chunk and omega
/// rows at or past N/C get zero.
#[allow(clippy::too_many_arguments)]
pub fn chunk_summarize_bwd(
    k: &[f64],
    v: &[f64],
    omega: &[f64],
    dvs: &[f64],
    b: usize,
    n: usize,
    hkv: usize,
    d: usize,
    chunk: usize,
    nc_rows: usize,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let nc = (n / chunk).min(nc_rows);
    let mut dk = vec![0.0; b * n * hkv * d];
    let mut dv = vec![0.0; b * n * hkv * d];
    let mut dom = vec![0.0; b * nc_rows * hkv * d];
    for bi in 0..b {
        for c in 0..nc {
            for g in 0..hkv {
                let crow = ((bi * nc_rows + c) * hkv + g) * d;
                let (om, dv_c) = (&omega[crow..][..d], &dvs[crow..][..d]);
                let rows: Vec<usize> = (c * chunk..(c + 1) * chunk)
                    .map(|t| ((bi * n + t) * hkv + g) * d)
                    .collect();
                let a: Vec<f64> = rows
                    .iter()
                    .map(|&r| {
                        scale * (dot(om, &k[r..][..d]) - 0.5 * dot(&k[r..][..d], &k[r..][..d]))
                    })
                    .collect();
                let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = a.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let alpha: Vec<f64> = e.iter().map(|x| x / z).collect();
                let gs: Vec<f64> = rows.iter().map(|&r| dot(dv_c, &v[r..][..d])).collect();
                for ((&r, al), gj) in rows.iter().zip(&alpha).zip(&gs) {
                    // al (gj - sum_i alpha_i g_i) in its pairwise form, which does not cancel
                    // when the softmax is peaked (the alphas sum to one)
                    let pair: f64 = alpha.iter().zip(&gs).map(|(a, gi)| a * (gj - gi)).sum();
                    let da = al * pair;
                    for t in 0..d {
                        dv[r + t] = al * dv_c[t];
                        dom[crow + t] += scale * da * k[r + t];
                        dk[r + t] = scale * da * (om[t] - k[r + t]);
                    }
                }
            }
        }
    }
    (dk, dv, dom)
}

/// Gradient of chunk_mean: `dx [B,N,G,D]` from `dxbar [B,NC,G,D]` (NC >= N/C rows, the first
/// N/C used): `dxbar[c] / C` on the C tokens of chunk `c`, zero on a trailing partial chunk.
pub fn chunk_mean_bwd(
    dxbar: &[f64],
    b: usize,
    n: usize,
    g: usize,
    d: usize,
    chunk: usize,
    nc_rows: usize,
) -> Vec<f64> {
    let nc = (n / chunk).min(nc_rows);
    let mut dx = vec![0.0; b * n * g * d];
    for bi in 0..b {
        for c in 0..nc {
            for t in c * chunk..(c + 1) * chunk {
                for gi in 0..g {
                    let src = ((bi * nc_rows + c) * g + gi) * d;
                    let dst = ((bi * n + t) * g + gi) * d;
                    for di in 0..d {
                        dx[dst + di] = dxbar[src + di] / chunk as f64;
                    }
                }
            }
        }
    }
    dx
}

/// The tensors of an extend call, as float64 (layouts of the contract's item 6).
pub struct ExtendInputs<'a> {
    /// New queries `[B,Tmax,H,D]`.
    pub q: &'a [f64],
    /// New keys `[B,Tmax,Hkv,D]`.
    pub k: &'a [f64],
    /// New values `[B,Tmax,Hkv,D]`.
    pub v: &'a [f64],
    /// Ring keys `[B,W,Hkv,D]` (token t in slot t mod W, t < L0).
    pub kr: &'a [f64],
    /// Ring values `[B,W,Hkv,D]`.
    pub vr: &'a [f64],
    /// Summary keys `[B,MAXNC,Hkv,D]`.
    pub ks: &'a [f64],
    /// Summary values `[B,MAXNC,Hkv,D]`.
    pub vs: &'a [f64],
}

/// Extend reference: row `t < T[b]` of sequence `b` is the query at position `L0[b] + t`; its
/// visible raw keys at positions below `L0` come from the ring, the others from the new keys,
/// under prefill's rule, and it sees the summaries `c < (L0 + t) / C`. Returns `o [B,Tmax,H,D]`,
/// `lse [B,H,Tmax]` and the LSE magnitudes (as [`prefill_lse_magnitudes`]); rows `t >= T[b]`
/// are NaN (not written by the kernel, not compared).
pub fn extend(
    s: &DecodeShape,
    tmax: usize,
    start: &[i32],
    count: &[i32],
    x: &ExtendInputs<'_>,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let DecodeShape {
        b,
        h,
        hkv,
        d,
        window,
        chunk,
        local,
        max_nc,
    } = *s;
    let g = h / hkv;
    let mut o = vec![f64::NAN; b * tmax * h * d];
    let mut lse = vec![f64::NAN; b * h * tmax];
    let mut mags = vec![0.0; b * h * tmax];
    for bi in 0..b {
        let l0 = start[bi].max(0) as usize;
        let t_count = (count[bi].max(0) as usize).min(tmax);
        for t in 0..t_count {
            let pos = l0 + t;
            for hi in 0..h {
                let kh = hi / g;
                let qi = &x.q[((bi * tmax + t) * h + hi) * d..][..d];
                let mut logits = Vec::new();
                let mut vals: Vec<&[f64]> = Vec::new();
                let mut m: f64 = 0.0;
                for j in key_range(pos, window, local) {
                    let (kj, vj) = if j < l0 {
                        let at = ((bi * window + j % window) * hkv + kh) * d;
                        (&x.kr[at..][..d], &x.vr[at..][..d])
                    } else {
                        let at = ((bi * tmax + (j - l0)) * hkv + kh) * d;
                        (&x.k[at..][..d], &x.v[at..][..d])
                    };
                    logits.push(scale * dot(qi, kj));
                    m = m.max(abs_dot(qi, kj));
                    vals.push(vj);
                }
                for c in 0..summaries_visible(pos, chunk, max_nc) {
                    let at = ((bi * max_nc + c) * hkv + kh) * d;
                    logits.push(scale * dot(qi, &x.ks[at..][..d]));
                    m = m.max(abs_dot(qi, &x.ks[at..][..d]));
                    vals.push(&x.vs[at..][..d]);
                }
                let (row, l) = softmax_rows(&logits, &vals, d);
                o[((bi * tmax + t) * h + hi) * d..][..d].copy_from_slice(&row);
                lse[(bi * h + hi) * tmax + t] = l;
                mags[(bi * h + hi) * tmax + t] = scale * m;
            }
        }
    }
    (o, lse, mags)
}

/// Append reference: the ring `[B,W,Hkv,D]` after writing the last `min(T, W)` of sequence
/// `b`'s `T = count[b]` new tokens `new [B,Tmax,Hkv,D]` (positions `L0 + t`, `L0 = start[b]`)
/// into slot `(L0 + t) mod W`; every other slot keeps its value.
#[allow(clippy::too_many_arguments)]
pub fn append(
    ring: &[f64],
    new: &[f64],
    start: &[i32],
    count: &[i32],
    tmax: usize,
    window: usize,
    hkv: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = ring.to_vec();
    for (bi, (&l0, &t_count)) in start.iter().zip(count).enumerate() {
        let (l0, t_count) = (l0.max(0) as usize, (t_count.max(0) as usize).min(tmax));
        for t in t_count.saturating_sub(window)..t_count {
            let slot = (l0 + t) % window;
            let row = hkv * d;
            out[(bi * window + slot) * row..][..row]
                .copy_from_slice(&new[(bi * tmax + t) * row..][..row]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// The contract's consistency rule for extend: row t equals prefill's row L0 + t over the
    /// whole sequence, with the ring holding tokens max(0, L0 - W) .. L0 - 1 (stale slots
    /// junk) and the summaries of every chunk complete by L0 + T - 1; append then leaves the
    /// ring holding the last W tokens of L0 + T.
    #[test]
    fn extend_rows_equal_prefill_rows_and_append_fills_the_ring() {
        let (h, hkv, d, window, chunk) = (4, 2, 8, 8, 4);
        for local in LocalMode::ALL {
            // (L0, T): T = 1, T < C, crossing a chunk, crossing a window, T > W, L0 = 0
            for (seed, &(l0, t)) in [(0, 5), (13, 1), (9, 3), (6, 7), (5, 20), (16, 9), (30, 0)]
                .iter()
                .enumerate()
            {
                let n = l0 + t;
                let sh = AttnShape {
                    b: 1,
                    n,
                    h,
                    hkv,
                    d,
                    window,
                    chunk,
                    local,
                };
                let nc = (n / chunk).max(1);
                let q = values(n * h * d, seed as u64 + 1);
                let k = values(n * hkv * d, seed as u64 + 2);
                let v = values(n * hkv * d, seed as u64 + 3);
                let ks = values(nc * hkv * d, seed as u64 + 4);
                let vs = values(nc * hkv * d, seed as u64 + 5);
                let (po, plse) = prefill(&sh, nc, &q, &k, &v, &ks, &vs, 0.3);
                let row = hkv * d;
                let mut kr = values(window * row, seed as u64 + 6);
                let mut vr = values(window * row, seed as u64 + 7);
                for p in l0.saturating_sub(window)..l0 {
                    let slot = p % window;
                    kr[slot * row..][..row].copy_from_slice(&k[p * row..][..row]);
                    vr[slot * row..][..row].copy_from_slice(&v[p * row..][..row]);
                }
                let tmax = t.max(1) + 2; // rows past T stay unwritten
                let pad = |x: &[f64], w: usize| {
                    let mut out = values(tmax * w, 99);
                    out[..t * w].copy_from_slice(&x[l0 * w..][..t * w]);
                    out
                };
                let (nq, nk, nv) = (pad(&q, h * d), pad(&k, row), pad(&v, row));
                let ds = DecodeShape {
                    b: 1,
                    h,
                    hkv,
                    d,
                    window,
                    chunk,
                    local,
                    max_nc: nc,
                };
                let x = ExtendInputs {
                    q: &nq,
                    k: &nk,
                    v: &nv,
                    kr: &kr,
                    vr: &vr,
                    ks: &ks,
                    vs: &vs,
                };
                let (o, lse, _) = extend(&ds, tmax, &[l0 as i32], &[t as i32], &x, 0.3);
                for r in 0..tmax {
                    for hi in 0..h {
                        let got = &o[(r * h + hi) * d..][..d];
                        if r >= t {
                            assert!(got.iter().all(|x| x.is_nan()));
                            continue;
                        }
                        let want = &po[((l0 + r) * h + hi) * d..][..d];
                        for (a, b) in got.iter().zip(want) {
                            assert!((a - b).abs() < 1e-12, "{local} L0={l0} T={t} row {r}");
                        }
                        let (a, b) = (lse[hi * tmax + r], plse[hi * n + l0 + r]);
                        assert!((a - b).abs() < 1e-12, "{local} L0={l0} T={t} lse {r}");
                    }
                }
                let after = append(&kr, &nk, &[l0 as i32], &[t as i32], tmax, window, hkv, d);
                for p in n.saturating_sub(window)..n {
                    assert_eq!(
                        &after[(p % window) * row..][..row],
                        &k[p * row..][..row],
                        "{local} L0={l0} T={t} slot of {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn visibility_follows_the_contract() {
        // block: W = 4; query 5 sees keys 4, 5
        assert!(key_visible(5, 4, 4, LocalMode::Block));
        assert!(!key_visible(5, 3, 4, LocalMode::Block));
        assert!(!key_visible(5, 6, 4, LocalMode::Block));
        // sliding: query 5 sees 2..=5
        assert!(key_visible(5, 2, 4, LocalMode::Sliding));
        assert!(!key_visible(5, 1, 4, LocalMode::Sliding));
        for i in 0..40 {
            for local in [LocalMode::Block, LocalMode::Sliding] {
                let r = key_range(i, 8, local);
                for j in 0..40 {
                    assert_eq!(r.contains(&j), key_visible(i, j, 8, local));
                }
            }
        }
        // summaries: chunk 4, query 9 sees chunks 0, 1
        assert_eq!(summaries_visible(9, 4, 100), 2);
        assert_eq!(summaries_visible(3, 4, 100), 0);
        assert_eq!(summaries_visible(9, 4, 1), 1);
    }

    #[test]
    fn prefill_without_summaries_is_local_softmax() {
        // One token: the output is its own value, lse its own logit.
        let s = AttnShape {
            b: 1,
            n: 1,
            h: 1,
            hkv: 1,
            d: 2,
            window: 4,
            chunk: 2,
            local: LocalMode::Block,
        };
        let (o, lse) = prefill(&s, 0, &[1.0, 2.0], &[3.0, 4.0], &[5.0, 6.0], &[], &[], 0.5);
        assert_eq!(o, vec![5.0, 6.0]);
        assert!((lse[0] - 0.5 * 11.0).abs() < 1e-12);
    }

    #[test]
    fn decode_matches_the_prefill_row() {
        // Build a sequence, fill the ring with its last W tokens, compare with prefill's last row.
        let (n, hkv, h, d, w, c) = (23usize, 2usize, 4usize, 3usize, 8usize, 4usize);
        let f = |i: usize| ((i * 7919 % 101) as f64) / 50.0 - 1.0;
        let q: Vec<f64> = (0..n * h * d).map(|i| f(i + 1)).collect();
        let k: Vec<f64> = (0..n * hkv * d).map(|i| f(i + 3)).collect();
        let v: Vec<f64> = (0..n * hkv * d).map(|i| f(i + 5)).collect();
        let nc = n / c;
        let ks: Vec<f64> = (0..nc * hkv * d).map(|i| f(i + 7)).collect();
        let vs: Vec<f64> = (0..nc * hkv * d).map(|i| f(i + 11)).collect();
        for local in [LocalMode::Block, LocalMode::Sliding] {
            let s = AttnShape {
                b: 1,
                n,
                h,
                hkv,
                d,
                window: w,
                chunk: c,
                local,
            };
            let (o, lse) = prefill(&s, nc, &q, &k, &v, &ks, &vs, 0.7);
            let p = n - 1;
            let mut kr = vec![0.0; w * hkv * d];
            let mut vr = vec![0.0; w * hkv * d];
            for t in (p + 1 - w)..=p {
                let slot = t % w;
                kr[slot * hkv * d..][..hkv * d].copy_from_slice(&k[t * hkv * d..][..hkv * d]);
                vr[slot * hkv * d..][..hkv * d].copy_from_slice(&v[t * hkv * d..][..hkv * d]);
            }
            let qd = &q[p * h * d..][..h * d];
            let geo = DecodeShape {
                b: 1,
                h,
                hkv,
                d,
                window: w,
                chunk: c,
                local,
                max_nc: nc,
            };
            let (od, lsed) = decode(&geo, &[n as i32], qd, &kr, &vr, &ks, &vs, 0.7);
            for hi in 0..h {
                assert!((lsed[hi] - lse[hi * n + p]).abs() < 1e-12);
                for di in 0..d {
                    assert!((od[hi * d + di] - o[(p * h + hi) * d + di]).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn pair_counts() {
        // N = 8, W = 4 block: 1+2+3+4 twice = 20 keys; C = 2: summaries 0,0,1,1,2,2,3,3 = 12
        assert_eq!(count_prefill_pairs(8, 4, 2, LocalMode::Block), 32);
        assert_eq!(rel_error(&[1.0, f64::NAN], &[1.0, 1.0]), f64::INFINITY);
    }
    /// The analytic gradients agree with central finite differences of the forward references
    /// on tiny shapes (every input of every op, both local modes, GQA, a partial chunk, extra
    /// summary rows).
    #[test]
    fn gradients_match_finite_differences() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |len: usize| -> Vec<f64> {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 2_000_001) as f64 / 1e6 - 1.0
                })
                .collect()
        };
        let fd_check = |name: &str, x: &mut Vec<f64>, grad: &[f64], f: &dyn Fn(&[f64]) -> f64| {
            let eps = 1e-6;
            let mut worst = 0.0f64;
            for i in 0..x.len() {
                let x0 = x[i];
                x[i] = x0 + eps;
                let up = f(x);
                x[i] = x0 - eps;
                let down = f(x);
                x[i] = x0;
                let fd = (up - down) / (2.0 * eps);
                worst = worst.max((fd - grad[i]).abs() / (1.0 + grad[i].abs()));
            }
            assert!(worst < 1e-6, "{name}: worst relative difference {worst:e}");
        };
        for local in [LocalMode::Block, LocalMode::Sliding] {
            let s = AttnShape {
                b: 2,
                n: 9,
                h: 4,
                hkv: 2,
                d: 3,
                window: 4,
                chunk: 2,
                local,
            };
            let nc_rows = 6; // N/C = 4, plus two rows nobody sees
            let (q, k, v) = (rnd(2 * 9 * 4 * 3), rnd(2 * 9 * 2 * 3), rnd(2 * 9 * 2 * 3));
            let (ks, vs) = (rnd(2 * nc_rows * 2 * 3), rnd(2 * nc_rows * 2 * 3));
            let r = rnd(2 * 9 * 4 * 3); // loss = sum(o * r): dO = r
            let scale = 0.7;
            let PrefillGrads {
                dq,
                dk,
                dv,
                dks,
                dvs,
                ..
            } = prefill_bwd(&s, nc_rows, &q, &k, &v, &ks, &vs, &r, scale, 0.0);
            let loss = |q: &[f64], k: &[f64], v: &[f64], ks: &[f64], vs: &[f64]| {
                dot(&prefill(&s, nc_rows, q, k, v, ks, vs, scale).0, &r)
            };
            fd_check("dq", &mut q.clone(), &dq, &|x| loss(x, &k, &v, &ks, &vs));
            fd_check("dk", &mut k.clone(), &dk, &|x| loss(&q, x, &v, &ks, &vs));
            fd_check("dv", &mut v.clone(), &dv, &|x| loss(&q, &k, x, &ks, &vs));
            fd_check("dks", &mut ks.clone(), &dks, &|x| loss(&q, &k, &v, x, &vs));
            fd_check("dvs", &mut vs.clone(), &dvs, &|x| loss(&q, &k, &v, &ks, x));
            // rows nobody sees get zero
            assert!(dks[2 * 4 * 3..3 * 2 * 2 * 3].iter().all(|&x| x == 0.0));
        }
        // chunk_summarize: N = 7, C = 3 (a partial chunk), one extra omega row
        let (b, n, hkv, d, c, rows) = (2, 7, 2, 3, 3, 3);
        let (k, v, om) = (
            rnd(b * n * hkv * d),
            rnd(b * n * hkv * d),
            rnd(b * rows * hkv * d),
        );
        let r = rnd(b * rows * hkv * d);
        let (dk, dv, dom) = chunk_summarize_bwd(&k, &v, &om, &r, b, n, hkv, d, c, rows, 0.8);
        let loss = |k: &[f64], v: &[f64], om: &[f64]| {
            let out = chunk_summarize(k, v, om, b, n, hkv, d, c, rows, 0.8);
            out.iter()
                .zip(&r)
                .map(|(o, r)| if o.is_nan() { 0.0 } else { o * r })
                .sum()
        };
        fd_check("summarize dk", &mut k.clone(), &dk, &|x| loss(x, &v, &om));
        fd_check("summarize dv", &mut v.clone(), &dv, &|x| loss(&k, x, &om));
        fd_check("summarize domega", &mut om.clone(), &dom, &|x| {
            loss(&k, &v, x)
        });
        // chunk_mean
        let (g, nc) = (2, n / c);
        let x = rnd(b * n * g * d);
        let r = rnd(b * rows * g * d);
        let dx = chunk_mean_bwd(&r, b, n, g, d, c, rows);
        let loss = |x: &[f64]| {
            let m = chunk_mean(x, b, n, g, d, c);
            // chunk_mean's output has N/C rows; r has `rows` rows per sequence
            (0..b)
                .flat_map(|bi| (0..nc * g * d).map(move |t| (bi, t)))
                .map(|(bi, t)| m[bi * nc * g * d + t] * r[bi * rows * g * d + t])
                .sum::<f64>()
        };
        fd_check("mean dx", &mut x.clone(), &dx, &loss);
    }
}
