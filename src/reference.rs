//! The contract in float64 on the CPU: visibility rules and a reference of every op. Tests and
//! the tuner compare kernels against these; `count_*` give the work an op does (for TFLOP/s).
//! Pure. Layouts are contiguous token-major, as in the contract.

use crate::spec::LocalMode;

/// Whether raw key `j` is visible to query `i`.
pub fn key_visible(i: usize, j: usize, window: usize, local: LocalMode) -> bool {
    j <= i
        && match local {
            LocalMode::Block => j / window == i / window,
            LocalMode::Sliding => j + window > i,
        }
}

/// Number of summaries visible to query `i`: chunks `c < i / C` (capped by the `nc` present).
pub fn summaries_visible(i: usize, chunk: usize, nc: usize) -> usize {
    (i / chunk).min(nc)
}

/// The raw keys visible to query `i`, as a range.
pub fn key_range(i: usize, window: usize, local: LocalMode) -> std::ops::Range<usize> {
    let lo = match local {
        LocalMode::Block => (i / window) * window,
        LocalMode::Sliding => (i + 1).saturating_sub(window),
    };
    lo..i + 1
}

/// Visible (query, key-or-summary) pairs of a prefill over `n` tokens (per batch and head).
pub fn count_prefill_pairs(n: usize, window: usize, chunk: usize, local: LocalMode) -> u64 {
    let nc = n / chunk;
    (0..n)
        .map(|i| (key_range(i, window, local).len() + summaries_visible(i, chunk, nc)) as u64)
        .sum()
}

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

/// Decode reference: the query of sequence `b` at position `len[b]-1` against ring buffers
/// `kr, vr [B,W,Hkv,D]` (token t in slot t mod W) and summaries `ks, vs [B,MAXNC,Hkv,D]`.
/// Returns `o [B,H,D]`, `lse [B,H]`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    b: usize,
    h: usize,
    hkv: usize,
    d: usize,
    window: usize,
    chunk: usize,
    local: LocalMode,
    max_nc: usize,
    len: &[i32],
    q: &[f64],
    kr: &[f64],
    vr: &[f64],
    ks: &[f64],
    vs: &[f64],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
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
/// where `ref` is finite.
pub fn rel_error(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (o, r) in out.iter().zip(reference) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let (od, lsed) = decode(
                1,
                h,
                hkv,
                d,
                w,
                c,
                local,
                nc,
                &[n as i32],
                qd,
                &kr,
                &vr,
                &ks,
                &vs,
                0.7,
            );
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
}
