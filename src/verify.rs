//! Correctness on the GPU: runs a loaded kernel on fresh random inputs (some rows with logits
//! near ±1e4), outputs poisoned with NaN before the launch, and compares with the float64
//! reference under the contract's tolerances. Used by the GPU test suite, by `flasheva tune` to
//! gate its trusted result, and by `flasheva run --check`.

use std::sync::Arc;

use rand::{Rng, RngExt};

use crate::error::Result;
use crate::gpu::driver::{CudaSlice, CudaStream};
use crate::gpu::params::{
    ChunkMeanArgs, ChunkSummarizeArgs, DecodeArgs, ElemType, PrefillArgs, TensorArg,
    decode_workspace_elems,
};
use crate::gpu::{GpuError, device_address, driver::drv};
use crate::hostdata::{HostTensor, fresh_rng, from_bits, poison_bits};
use crate::loader::Kernel;
use crate::reference::{self, AttnShape};
use crate::spec::{DType, KernelSpec};

/// The contract's tolerance for a storage type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// `‖out − ref‖ / ‖ref‖` bound.
    pub rel: f64,
    /// LSE absolute bound (see [`lse_bound`] for rows with very large logits).
    pub lse_abs: f64,
}

/// fp16: 2e-3, bf16: 8e-3; LSE 1e-3.
pub fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        DType::F16 => Tolerance {
            rel: 2e-3,
            lse_abs: 1e-3,
        },
        DType::Bf16 => Tolerance {
            rel: 8e-3,
            lse_abs: 1e-3,
        },
    }
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was run.
    pub what: String,
    /// The input seed (rerun with it to reproduce).
    pub seed: u64,
    /// Relative error of the main output.
    pub rel_err: f64,
    /// Largest LSE error (prefill, decode).
    pub lse_err: Option<f64>,
    /// Output elements still NaN (never written).
    pub unwritten: usize,
    /// The bounds applied.
    pub tol: Tolerance,
    /// Within bounds, no NaN.
    pub pass: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: rel err {:.2e} (tol {:.0e}){}{} seed {:#x}",
            if self.pass { "PASS" } else { "FAIL" },
            self.what,
            self.rel_err,
            self.tol.rel,
            self.lse_err
                .map(|e| format!(", lse err {e:.2e}"))
                .unwrap_or_default(),
            if self.unwritten > 0 {
                format!(", {} outputs never written", self.unwritten)
            } else {
                String::new()
            },
            self.seed
        )
    }
}

/// A device copy of a host tensor, laid out with `pad` extra elements after every row of the
/// last dimension (pad > 0 gives non-contiguous strides).
pub struct DeviceTensor {
    /// The buffer.
    pub buf: CudaSlice<u16>,
    /// Its argument description.
    pub arg: TensorArg,
    pad: usize,
}

/// Uploads `t` with last-dimension padding `pad` (a multiple of 8).
pub fn upload(
    stream: &Arc<CudaStream>,
    name: &str,
    t: &HostTensor,
    pad: usize,
    fill: u16,
) -> Result<DeviceTensor> {
    let d = *t.shape.last().unwrap_or(&1);
    let rows = t.len().checked_div(d).unwrap_or(0);
    let row = d + pad;
    let mut host = vec![fill; (rows * row).max(1)];
    for r in 0..rows {
        host[r * row..r * row + d].copy_from_slice(&t.bits[r * d..(r + 1) * d]);
    }
    let buf = stream.clone_htod(&host).map_err(drv("cuMemcpyHtoD"))?;
    // Row-major over rows of `row` elements: the second-to-last stride is the padded row.
    let rank = t.shape.len();
    let mut strides = vec![1usize; rank];
    if rank >= 2 {
        strides[rank - 2] = row;
        for i in (0..rank - 2).rev() {
            strides[i] = strides[i + 1] * t.shape[i + 1];
        }
    }
    let et = ElemType::of(t.dtype);
    let arg = TensorArg {
        name: name.to_string(),
        ptr: device_address(&buf, stream),
        dtype: et,
        shape: t.shape.clone(),
        strides,
    };
    Ok(DeviceTensor { buf, arg, pad })
}

/// A poisoned (NaN) output of `shape`, padded like [`upload`].
pub fn alloc_output(
    stream: &Arc<CudaStream>,
    name: &str,
    dtype: DType,
    shape: &[usize],
    pad: usize,
) -> Result<DeviceTensor> {
    let n: usize = shape.iter().product();
    let t = HostTensor {
        dtype,
        shape: shape.to_vec(),
        bits: vec![poison_bits(dtype); n],
    };
    upload(stream, name, &t, pad, poison_bits(dtype))
}

impl DeviceTensor {
    /// Downloads the logical elements as raw 16-bit values.
    pub fn download_bits(&self, stream: &Arc<CudaStream>) -> Result<Vec<u16>> {
        let host = stream.clone_dtoh(&self.buf).map_err(drv("cuMemcpyDtoH"))?;
        let d = *self.arg.shape.last().unwrap_or(&1);
        let n: usize = self.arg.shape.iter().product();
        let rows = n.checked_div(d).unwrap_or(0);
        let row = d + self.pad;
        let mut out = Vec::with_capacity(n);
        for r in 0..rows {
            out.extend_from_slice(&host[r * row..r * row + d]);
        }
        Ok(out)
    }

    /// Downloads the logical elements as float64.
    pub fn download(&self, stream: &Arc<CudaStream>, dtype: DType) -> Result<Vec<f64>> {
        let host = stream.clone_dtoh(&self.buf).map_err(drv("cuMemcpyDtoH"))?;
        let d = *self.arg.shape.last().unwrap_or(&1);
        let n: usize = self.arg.shape.iter().product();
        let rows = n.checked_div(d).unwrap_or(0);
        let row = d + self.pad;
        let mut out = Vec::with_capacity(n);
        for r in 0..rows {
            out.extend(
                host[r * row..r * row + d]
                    .iter()
                    .map(|&b| from_bits(b, dtype)),
            );
        }
        Ok(out)
    }
}

/// The workspace of one decode launch: the buffer, and the argument for [`Kernel::decode`].
pub struct DecodeWorkspace {
    /// The device buffer; keep it alive until the launch completes.
    pub buf: CudaSlice<f32>,
    /// `(address, fp32 elements)`, or `None` when the decode is not split.
    pub arg: Option<(u64, usize)>,
}

/// The workspace a decode with `splits` splits needs, NaN-filled so that a partial result nothing
/// wrote would show.
pub fn decode_workspace(
    stream: &Arc<CudaStream>,
    b: usize,
    h: usize,
    d: usize,
    splits: usize,
) -> Result<DecodeWorkspace> {
    let elems = decode_workspace_elems(b, h, d, splits);
    let buf = stream
        .clone_htod(&vec![f32::NAN; elems.max(1)])
        .map_err(drv("cuMemcpyHtoD"))?;
    let arg = (elems > 0).then(|| (device_address(&buf, stream), elems));
    Ok(DecodeWorkspace { buf, arg })
}

/// An fp32 device buffer filled with NaN, with its argument.
pub fn alloc_f32(
    stream: &Arc<CudaStream>,
    name: &str,
    shape: &[usize],
) -> Result<(CudaSlice<f32>, TensorArg)> {
    let n: usize = shape.iter().product();
    let buf = stream
        .clone_htod(&vec![f32::NAN; n.max(1)])
        .map_err(drv("cuMemcpyHtoD"))?;
    let arg = TensorArg::contiguous(name, device_address(&buf, stream), ElemType::F32, shape);
    Ok((buf, arg))
}

fn sync(stream: &Arc<CudaStream>) -> Result<()> {
    stream.synchronize().map_err(|e| GpuError::Driver {
        call: "cuStreamSynchronize (a kernel failed)",
        message: crate::gpu::driver::describe(&e),
    })?;
    Ok(())
}

/// LSE bound of one row: the contract's 1e-3, plus what fp32 (tensor-core) accumulation of the
/// row's dot products can lose: 4·sqrt(D) units of fp32 epsilon of `magnitude`, the largest
/// `s·Σ_d |q_d·k_d|` over the keys the row sees (the size of the terms summed, which can be far
/// above |LSE| when they cancel). It matters only for rows with logits near ±1e4, where fp32
/// cannot hold 1e-3 at all (ulp(1e4) ≈ 1e-3); for ordinary rows it adds about 1e-5.
pub fn lse_bound(magnitude: f64, d: usize) -> f64 {
    1e-3 + 4.0 * (d as f64).sqrt() * f32::EPSILON as f64 * magnitude
}

fn lse_check(got: &[f32], reference: &[f64], magnitude: &[f64], d: usize) -> (f64, bool, usize) {
    let mut worst: f64 = 0.0;
    let mut ok = true;
    let mut nan = 0;
    for ((g, r), m) in got.iter().zip(reference).zip(magnitude) {
        let g = *g as f64;
        if g.is_nan() {
            nan += 1;
            ok = false;
            continue;
        }
        let e = if g == *r { 0.0 } else { (g - r).abs() };
        worst = worst.max(e);
        if e > lse_bound(*m, d) {
            ok = false;
        }
    }
    (worst, ok, nan)
}

fn abs_dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum()
}

/// Per (b, h, i) of a prefill: `s · max_j Σ_d |q_d k_jd|` over the row's visible keys and summaries.
fn prefill_magnitudes(
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
                for j in reference::key_range(i, sh.window, sh.local) {
                    m = m.max(abs_dot(qi, &k[((bi * n + j) * hkv + hi / g) * d..][..d]));
                }
                for c in 0..reference::summaries_visible(i, sh.chunk, nc) {
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

/// Scales a random eighth of the rows of `t` (rows of its last dimension) so that their logits
/// against unit keys reach about ±1e4.
fn amplify_rows(rng: &mut impl Rng, t: &mut HostTensor, d: usize) {
    let vals = t.to_f64();
    // q ~ U(-A, A), k ~ U(-1, 1): s * q.k has standard deviation A / 3 whatever D is.
    let amp = 3.0e4;
    let mut out = vals.clone();
    for r in 0..vals.len() / d {
        if rng.random_range(0..8) == 0 {
            for i in 0..d {
                out[r * d + i] = vals[r * d + i] * amp;
            }
        }
    }
    *t = HostTensor::from_f64(t.dtype, &t.shape.clone(), &out);
}

/// A prefill check.
#[derive(Clone, Debug)]
pub struct PrefillCase {
    /// Batch.
    pub b: usize,
    /// Tokens.
    pub n: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Extra summary rows allocated beyond N/C (never visible).
    pub extra_summaries: usize,
    /// Some rows get logits near ±1e4.
    pub large_logits: bool,
    /// Pad rows by 8 elements (non-contiguous strides).
    pub strided: bool,
    /// Softmax scale (default 1/sqrt(D)).
    pub scale: Option<f32>,
}

/// Runs `kernel` (a prefill) on a fresh random case and compares with the reference.
pub fn check_prefill(stream: &Arc<CudaStream>, kernel: &Kernel, c: &PrefillCase) -> Result<Report> {
    let spec = kernel.spec;
    let (d, dt) = (spec.head_dim() as usize, spec.dtype());
    let (mut rng, seed) = fresh_rng();
    let nc_rows = c.n / spec.chunk() as usize + c.extra_summaries;
    let mut q = HostTensor::uniform(&mut rng, dt, &[c.b, c.n, c.h, d], 1.0);
    if c.large_logits {
        amplify_rows(&mut rng, &mut q, d);
    }
    let k = HostTensor::uniform(&mut rng, dt, &[c.b, c.n, c.hkv, d], 1.0);
    let v = HostTensor::uniform(&mut rng, dt, &[c.b, c.n, c.hkv, d], 1.0);
    let ks = HostTensor::uniform(&mut rng, dt, &[c.b, nc_rows, c.hkv, d], 1.0);
    let vs = HostTensor::uniform(&mut rng, dt, &[c.b, nc_rows, c.hkv, d], 1.0);
    let pad = if c.strided { 8 } else { 0 };
    let junk = crate::hostdata::to_bits(7.0, dt);
    let dq = upload(stream, "q", &q, pad, junk)?;
    let dk = upload(stream, "k", &k, pad, junk)?;
    let dv = upload(stream, "v", &v, 0, junk)?;
    let dks = upload(stream, "ks", &ks, pad, junk)?;
    let dvs = upload(stream, "vs", &vs, 0, junk)?;
    let o = alloc_output(stream, "o", dt, &[c.b, c.n, c.h, d], pad)?;
    let (lse_buf, lse) = alloc_f32(stream, "lse", &[c.b, c.h, c.n])?;
    kernel.prefill(
        stream,
        &PrefillArgs {
            q: dq.arg.clone(),
            k: dk.arg.clone(),
            v: dv.arg.clone(),
            ks: dks.arg.clone(),
            vs: dvs.arg.clone(),
            o: o.arg.clone(),
            lse,
            scale: c.scale,
        },
    )?;
    sync(stream)?;
    let got = o.download(stream, dt)?;
    let got_lse = stream.clone_dtoh(&lse_buf).map_err(drv("cuMemcpyDtoH"))?;
    let shape = AttnShape {
        b: c.b,
        n: c.n,
        h: c.h,
        hkv: c.hkv,
        d,
        window: spec.window_or_zero() as usize,
        chunk: spec.chunk() as usize,
        local: spec.local().unwrap_or(crate::spec::LocalMode::Block),
    };
    let scale = c.scale.unwrap_or_else(|| spec.default_scale()) as f64;
    let (ro, rl) = reference::prefill(
        &shape,
        nc_rows,
        &q.to_f64(),
        &k.to_f64(),
        &v.to_f64(),
        &ks.to_f64(),
        &vs.to_f64(),
        scale,
    );
    let tol = tolerance(dt);
    let rel_err = reference::rel_error(&got, &ro);
    let mags = prefill_magnitudes(
        &shape,
        nc_rows,
        &q.to_f64(),
        &k.to_f64(),
        &ks.to_f64(),
        scale,
    );
    let (lse_err, lse_ok, lse_nan) = lse_check(&got_lse[..rl.len()], &rl, &mags, d);
    let unwritten = got.iter().filter(|x| x.is_nan()).count() + lse_nan;
    Ok(Report {
        what: format!(
            "{spec} tile {} B={} N={} H={} Hkv={}{}{}",
            kernel.tile.name(spec.op()),
            c.b,
            c.n,
            c.h,
            c.hkv,
            if c.large_logits { " large-logits" } else { "" },
            if c.strided { " strided" } else { "" }
        ),
        seed,
        rel_err,
        lse_err: Some(lse_err),
        unwritten,
        tol,
        pass: rel_err <= tol.rel && lse_ok && unwritten == 0,
    })
}

/// A decode check: per sequence a length (tokens including the new one).
#[derive(Clone, Debug)]
pub struct DecodeCase {
    /// Query heads.
    pub h: usize,
    /// `len[b]` for every sequence.
    pub lens: Vec<i32>,
    /// Summary slots (>= the largest visible count).
    pub max_nc: usize,
    /// Splits (None: the kernel's choice).
    pub splits: Option<usize>,
    /// Some queries get logits near ±1e4.
    pub large_logits: bool,
}

/// Runs `kernel` (a decode) on a fresh random ring buffer and summary cache and compares with the
/// reference (which equals prefill's row p by construction, tested in `reference`).
pub fn check_decode(stream: &Arc<CudaStream>, kernel: &Kernel, c: &DecodeCase) -> Result<Report> {
    let spec = kernel.spec;
    let (d, dt) = (spec.head_dim() as usize, spec.dtype());
    let w = spec.window_or_zero() as usize;
    let g = spec.group_or_one() as usize;
    let hkv = c.h / g;
    let b = c.lens.len();
    let (mut rng, seed) = fresh_rng();
    let mut q = HostTensor::uniform(&mut rng, dt, &[b, c.h, d], 1.0);
    if c.large_logits {
        amplify_rows(&mut rng, &mut q, d);
    }
    // Stale ring slots and unused summaries hold random values the kernel must ignore.
    let kr = HostTensor::uniform(&mut rng, dt, &[b, w, hkv, d], 1.0);
    let vr = HostTensor::uniform(&mut rng, dt, &[b, w, hkv, d], 1.0);
    let ks = HostTensor::uniform(&mut rng, dt, &[b, c.max_nc, hkv, d], 1.0);
    let vs = HostTensor::uniform(&mut rng, dt, &[b, c.max_nc, hkv, d], 1.0);
    let junk = crate::hostdata::to_bits(7.0, dt);
    let dq = upload(stream, "q", &q, 0, junk)?;
    let dkr = upload(stream, "k_ring", &kr, 0, junk)?;
    let dvr = upload(stream, "v_ring", &vr, 0, junk)?;
    let dks = upload(stream, "ks", &ks, 0, junk)?;
    let dvs = upload(stream, "vs", &vs, 0, junk)?;
    let len_buf = stream.clone_htod(&c.lens).map_err(drv("cuMemcpyHtoD"))?;
    let len = TensorArg::contiguous("len", device_address(&len_buf, stream), ElemType::I32, &[b]);
    let o = alloc_output(stream, "o", dt, &[b, c.h, d], 0)?;
    let (lse_buf, lse) = alloc_f32(stream, "lse", &[b, c.h])?;
    let max_items = w + c.max_nc;
    let splits = c
        .splits
        .unwrap_or_else(|| kernel.decode_splits(b, hkv, max_items));
    let ws = decode_workspace(stream, b, c.h, d, splits)?;
    kernel.decode(
        stream,
        &DecodeArgs {
            q: dq.arg.clone(),
            k_ring: dkr.arg.clone(),
            v_ring: dvr.arg.clone(),
            ks: dks.arg.clone(),
            vs: dvs.arg.clone(),
            len,
            o: o.arg.clone(),
            lse,
            scale: None,
        },
        splits,
        ws.arg,
    )?;
    sync(stream)?;
    let got = o.download(stream, dt)?;
    let got_lse = stream.clone_dtoh(&lse_buf).map_err(drv("cuMemcpyDtoH"))?;
    let local = spec.local().unwrap_or(crate::spec::LocalMode::Block);
    let (ro, rl) = reference::decode(
        b,
        c.h,
        hkv,
        d,
        w,
        spec.chunk() as usize,
        local,
        c.max_nc,
        &c.lens,
        &q.to_f64(),
        &kr.to_f64(),
        &vr.to_f64(),
        &ks.to_f64(),
        &vs.to_f64(),
        spec.default_scale() as f64,
    );
    let tol = tolerance(dt);
    let rel_err = reference::rel_error(&got, &ro);
    let (qf, krf, ksf) = (q.to_f64(), kr.to_f64(), ks.to_f64());
    let scale = spec.default_scale() as f64;
    let mut mags = vec![0.0; b * c.h];
    for (bi, &len) in c.lens.iter().enumerate() {
        if len <= 0 {
            continue;
        }
        let pos = len as usize - 1;
        for hi in 0..c.h {
            let qi = &qf[(bi * c.h + hi) * d..][..d];
            let kh = hi / g;
            let mut m: f64 = 0.0;
            for t in reference::key_range(pos, w, local) {
                m = m.max(abs_dot(qi, &krf[((bi * w + t % w) * hkv + kh) * d..][..d]));
            }
            for cc in 0..reference::summaries_visible(pos, spec.chunk() as usize, c.max_nc) {
                m = m.max(abs_dot(
                    qi,
                    &ksf[((bi * c.max_nc + cc) * hkv + kh) * d..][..d],
                ));
            }
            mags[bi * c.h + hi] = scale * m;
        }
    }
    let (lse_err, lse_ok, lse_nan) = lse_check(&got_lse[..rl.len()], &rl, &mags, d);
    let unwritten = got.iter().filter(|x| x.is_nan()).count() + lse_nan;
    let shown: Vec<String> = c.lens.iter().take(4).map(|l| l.to_string()).collect();
    Ok(Report {
        what: format!(
            "{spec} tile {} B={b} H={} lens=[{}{}] splits={splits}{}",
            kernel.tile.name(spec.op()),
            c.h,
            shown.join(","),
            if c.lens.len() > 4 { ",..." } else { "" },
            if c.large_logits { " large-logits" } else { "" }
        ),
        seed,
        rel_err,
        lse_err: Some(lse_err),
        unwritten,
        tol,
        pass: rel_err <= tol.rel && lse_ok && unwritten == 0,
    })
}

/// Runs a decode and the matching prefill on the same tensors (the decode ring filled from the
/// prefill's keys) and compares decode's output with prefill's row p, both from the GPU.
pub fn check_decode_vs_prefill(
    stream: &Arc<CudaStream>,
    decode: &Kernel,
    prefill: &Kernel,
    h: usize,
    len: usize,
) -> Result<Report> {
    let spec = decode.spec;
    let (d, dt) = (spec.head_dim() as usize, spec.dtype());
    let w = spec.window_or_zero() as usize;
    let hkv = h / spec.group_or_one() as usize;
    let n = len;
    let p = n - 1;
    let nc = n / spec.chunk() as usize;
    let (mut rng, seed) = fresh_rng();
    let q = HostTensor::uniform(&mut rng, dt, &[1, n, h, d], 1.0);
    let k = HostTensor::uniform(&mut rng, dt, &[1, n, hkv, d], 1.0);
    let v = HostTensor::uniform(&mut rng, dt, &[1, n, hkv, d], 1.0);
    let ks = HostTensor::uniform(&mut rng, dt, &[1, nc.max(1), hkv, d], 1.0);
    let vs = HostTensor::uniform(&mut rng, dt, &[1, nc.max(1), hkv, d], 1.0);
    let junk = crate::hostdata::to_bits(7.0, dt);
    let (dq, dk, dv) = (
        upload(stream, "q", &q, 0, junk)?,
        upload(stream, "k", &k, 0, junk)?,
        upload(stream, "v", &v, 0, junk)?,
    );
    let (dks, dvs) = (
        upload(stream, "ks", &ks, 0, junk)?,
        upload(stream, "vs", &vs, 0, junk)?,
    );
    let o = alloc_output(stream, "o", dt, &[1, n, h, d], 0)?;
    let (_lb, lse) = alloc_f32(stream, "lse", &[1, h, n])?;
    prefill.prefill(
        stream,
        &PrefillArgs {
            q: dq.arg.clone(),
            k: dk.arg.clone(),
            v: dv.arg.clone(),
            ks: dks.arg.clone(),
            vs: dvs.arg.clone(),
            o: o.arg.clone(),
            lse,
            scale: None,
        },
    )?;
    // The decode inputs: q = row p, ring = the last W tokens at slot t mod W.
    let qrow = HostTensor {
        dtype: dt,
        shape: vec![1, h, d],
        bits: q.bits[p * h * d..(p + 1) * h * d].to_vec(),
    };
    let mut kr = HostTensor::uniform(&mut rng, dt, &[1, w, hkv, d], 1.0);
    let mut vr = HostTensor::uniform(&mut rng, dt, &[1, w, hkv, d], 1.0);
    for t in (p + 1).saturating_sub(w)..=p {
        let s = t % w;
        kr.bits[s * hkv * d..(s + 1) * hkv * d]
            .copy_from_slice(&k.bits[t * hkv * d..(t + 1) * hkv * d]);
        vr.bits[s * hkv * d..(s + 1) * hkv * d]
            .copy_from_slice(&v.bits[t * hkv * d..(t + 1) * hkv * d]);
    }
    let (dqr, dkr, dvr) = (
        upload(stream, "q", &qrow, 0, junk)?,
        upload(stream, "k_ring", &kr, 0, junk)?,
        upload(stream, "v_ring", &vr, 0, junk)?,
    );
    let len_buf = stream
        .clone_htod(&[n as i32])
        .map_err(drv("cuMemcpyHtoD"))?;
    let od = alloc_output(stream, "o", dt, &[1, h, d], 0)?;
    let (_lb2, lsed) = alloc_f32(stream, "lse", &[1, h])?;
    let splits = decode.decode_splits(1, hkv, w + nc);
    let ws = decode_workspace(stream, 1, h, d, splits)?;
    decode.decode(
        stream,
        &DecodeArgs {
            q: dqr.arg.clone(),
            k_ring: dkr.arg.clone(),
            v_ring: dvr.arg.clone(),
            ks: dks.arg.clone(),
            vs: dvs.arg.clone(),
            len: TensorArg::contiguous(
                "len",
                device_address(&len_buf, stream),
                ElemType::I32,
                &[1],
            ),
            o: od.arg.clone(),
            lse: lsed,
            scale: None,
        },
        splits,
        ws.arg,
    )?;
    sync(stream)?;
    let pre = o.download(stream, dt)?;
    let row = &pre[p * h * d..(p + 1) * h * d];
    let dec = od.download(stream, dt)?;
    let tol = tolerance(dt);
    let rel_err = reference::rel_error(&dec, row);
    let unwritten = dec.iter().filter(|x| x.is_nan()).count();
    Ok(Report {
        what: format!("decode {spec} vs prefill row {p} (H={h}, splits={splits})"),
        seed,
        rel_err,
        lse_err: None,
        unwritten,
        tol,
        pass: rel_err <= tol.rel && unwritten == 0,
    })
}

/// chunk_mean over `[b, n, g, D]`.
pub fn check_chunk_mean(
    stream: &Arc<CudaStream>,
    kernel: &Kernel,
    b: usize,
    n: usize,
    g: usize,
    strided: bool,
) -> Result<Report> {
    let spec = kernel.spec;
    let (d, dt, cs) = (
        spec.head_dim() as usize,
        spec.dtype(),
        spec.chunk() as usize,
    );
    let (mut rng, seed) = fresh_rng();
    let x = HostTensor::uniform(&mut rng, dt, &[b, n, g, d], 1.0);
    let nc = n / cs;
    let pad = if strided { 8 } else { 0 };
    let dx = upload(stream, "x", &x, pad, crate::hostdata::to_bits(7.0, dt))?;
    let y = alloc_output(stream, "xbar", dt, &[b, nc, g, d], pad)?;
    kernel.chunk_mean(
        stream,
        &ChunkMeanArgs {
            x: dx.arg.clone(),
            xbar: y.arg.clone(),
        },
    )?;
    sync(stream)?;
    let got = y.download(stream, dt)?;
    let r = reference::chunk_mean(&x.to_f64(), b, n, g, d, cs);
    finish_simple(
        spec,
        kernel,
        format!("B={b} N={n} G={g}{}", if strided { " strided" } else { "" }),
        seed,
        &got,
        &r,
    )
}

/// chunk_summarize over `k, v [b, n, hkv, D]`.
pub fn check_chunk_summarize(
    stream: &Arc<CudaStream>,
    kernel: &Kernel,
    b: usize,
    n: usize,
    hkv: usize,
    large: bool,
) -> Result<Report> {
    let spec = kernel.spec;
    let (d, dt, cs) = (
        spec.head_dim() as usize,
        spec.dtype(),
        spec.chunk() as usize,
    );
    let (mut rng, seed) = fresh_rng();
    let nc = n / cs;
    let amp = if large { 8.0 } else { 1.0 };
    let k = HostTensor::uniform(&mut rng, dt, &[b, n, hkv, d], amp);
    let v = HostTensor::uniform(&mut rng, dt, &[b, n, hkv, d], 1.0);
    let om = HostTensor::uniform(&mut rng, dt, &[b, nc, hkv, d], amp);
    let junk = crate::hostdata::to_bits(7.0, dt);
    let (dk, dv, dom) = (
        upload(stream, "k", &k, 0, junk)?,
        upload(stream, "v", &v, 0, junk)?,
        upload(stream, "omega", &om, 0, junk)?,
    );
    let y = alloc_output(stream, "vs", dt, &[b, nc, hkv, d], 0)?;
    kernel.chunk_summarize(
        stream,
        &ChunkSummarizeArgs {
            k: dk.arg.clone(),
            v: dv.arg.clone(),
            omega: dom.arg.clone(),
            vs: y.arg.clone(),
            scale: None,
        },
    )?;
    sync(stream)?;
    let got = y.download(stream, dt)?;
    let r = reference::chunk_summarize(
        &k.to_f64(),
        &v.to_f64(),
        &om.to_f64(),
        b,
        n,
        hkv,
        d,
        cs,
        nc,
        spec.default_scale() as f64,
    );
    finish_simple(
        spec,
        kernel,
        format!(
            "B={b} N={n} Hkv={hkv}{}",
            if large { " large-logits" } else { "" }
        ),
        seed,
        &got,
        &r,
    )
}

fn finish_simple(
    spec: KernelSpec,
    kernel: &Kernel,
    shape: String,
    seed: u64,
    got: &[f64],
    r: &[f64],
) -> Result<Report> {
    let tol = tolerance(spec.dtype());
    let rel_err = reference::rel_error(got, r);
    let unwritten = got.iter().filter(|x| x.is_nan()).count();
    Ok(Report {
        what: format!("{spec} tile {} {shape}", kernel.tile.name(spec.op())),
        seed,
        rel_err,
        lse_err: None,
        unwritten,
        tol,
        pass: rel_err <= tol.rel && unwritten == 0,
    })
}
