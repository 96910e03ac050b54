//! Correctness on the GPU: runs a loaded kernel on fresh random inputs (some rows with very large
//! logits), outputs poisoned with NaN before the launch, and compares every output with the
//! float64 reference under the contract's tolerances. One generic check over the op table
//! ([`crate::ops`]); the GPU test suite, `flasheva tune` (to gate its trusted result) and the
//! examples use it.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::driver::{CudaStream, GpuError, describe};
use crate::gpu::tensor::OpTensors;
use crate::hostdata::{HostTensor, fresh_rng};
use crate::loader::Kernel;
use crate::ops::{self, Check, Problem};
use crate::reference;
use crate::spec::{DType, KernelSpec};
use crate::workload::Workload;

/// The contract's tolerance for a storage type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// `‖out − ref‖ / ‖ref‖` bound.
    pub rel: f64,
    /// LSE absolute bound (see [`lse_bound`] for rows with very large logits).
    pub lse_abs: f64,
    /// Gradients: `‖out − ref‖ ≤ grad·‖ref‖ + ‖slack‖` (see [`tolerance`]).
    pub grad: f64,
}

/// Outputs: fp16 2e-3, bf16 8e-3 (the contract); LSE 1e-3 absolute. Gradients: fp16 1e-2,
/// bf16 3e-2, plus a per-element slack: the backward rounds P and dS to the storage type before
/// their products (about 4 to 5 times an output's rounding), and takes Delta = rowsum(dO·O)
/// from the forward's rounded O, which dS = P (dP − Delta) amplifies where the softmax is
/// peaked and dP − Delta cancels. That second part is bounded element by element by the
/// reference (`reference::prefill_bwd_slack`) and allowed on top.
pub fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        DType::F16 => Tolerance {
            rel: 2e-3,
            lse_abs: 1e-3,
            grad: 1e-2,
        },
        DType::Bf16 => Tolerance {
            rel: 8e-3,
            lse_abs: 1e-3,
            grad: 3e-2,
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
    /// The largest error over the allowed error, over every output (1 is the limit).
    pub worst_ratio: f64,
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
            "{} {}: rel err {:.2e} (tol {:.0e}), worst error/allowed {:.2}{}{} seed {:#x}",
            if self.pass { "PASS" } else { "FAIL" },
            self.what,
            self.rel_err,
            self.tol.rel,
            self.worst_ratio,
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

/// LSE bound of one row: the contract's 1e-3, plus what fp32 (tensor-core) accumulation of the
/// row's dot products can lose: 4·sqrt(D) units of fp32 epsilon of `magnitude`, the largest
/// `s·Σ_d |q_d·k_d|` over the keys the row sees (the size of the terms summed, which can be far
/// above |LSE| when they cancel). It matters only for rows with logits near ±1e4, where fp32
/// cannot hold 1e-3 at all (ulp(1e4) ≈ 1e-3); for ordinary rows it adds about 1e-5.
pub fn lse_bound(magnitude: f64, d: usize) -> f64 {
    1e-3 + 4.0 * (d as f64).sqrt() * f32::EPSILON as f64 * magnitude
}

/// (largest error, within bounds, NaN count) of LSE rows.
fn lse_check(got: &[f64], reference: &[f64], magnitude: &[f64], d: usize) -> (f64, bool, usize) {
    let mut worst: f64 = 0.0;
    let mut ok = true;
    let mut nan = 0;
    for ((g, r), m) in got.iter().zip(reference).zip(magnitude) {
        if r.is_nan() {
            continue; // a row the op does not write (extend's rows past T)
        }
        if g.is_nan() {
            nan += 1;
            ok = false;
            continue;
        }
        let e = if g == r { 0.0 } else { (g - r).abs() };
        worst = worst.max(e);
        if e > lse_bound(*m, d) {
            ok = false;
        }
    }
    (worst, ok, nan)
}

/// One check: a problem, and how to stress it.
#[derive(Clone, Debug)]
pub struct Case {
    /// The call.
    pub problem: Problem,
    /// Some logits reach about ±1e4 (attention ops) or a few hundred (chunk_summarize).
    pub large_logits: bool,
    /// Rows padded by 8 elements (non-contiguous strides) on every 16-bit tensor.
    pub strided: bool,
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

impl PrefillCase {
    /// The generic case of this check for `spec`.
    pub fn case(&self, spec: KernelSpec) -> Case {
        let mut p = Problem::new(Workload::new(spec, self.b, self.n, self.h, self.hkv));
        p.summary_rows += self.extra_summaries;
        p.scale = self.scale;
        Case {
            problem: p,
            large_logits: self.large_logits,
            strided: self.strided,
        }
    }
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

impl DecodeCase {
    /// The generic case of this check for `spec`.
    pub fn case(&self, spec: KernelSpec) -> Case {
        let hkv = self.h / spec.group_or_one() as usize;
        let n = self.lens.iter().copied().max().unwrap_or(1).max(1) as usize;
        let mut p = Problem::new(Workload::new(spec, self.lens.len(), n, self.h, hkv));
        p.lens = self.lens.clone();
        p.summary_rows = self.max_nc;
        p.splits = self.splits;
        Case {
            problem: p,
            large_logits: self.large_logits,
            strided: false,
        }
    }
}

/// A chunk_mean or chunk_summarize check.
#[derive(Clone, Debug)]
pub struct ChunkCase {
    /// Batch.
    pub b: usize,
    /// Tokens.
    pub n: usize,
    /// Heads: G of X (chunk_mean), Hkv (chunk_summarize).
    pub heads: usize,
    /// Pad rows by 8 elements.
    pub strided: bool,
    /// chunk_summarize: keys and omega of amplitude 8.
    pub large: bool,
}

impl ChunkCase {
    /// The generic case of this check for `spec`.
    pub fn case(&self, spec: KernelSpec) -> Case {
        Case {
            problem: Problem::new(Workload::new(spec, self.b, self.n, self.heads, self.heads)),
            large_logits: self.large,
            strided: self.strided,
        }
    }
}

fn sync(stream: &Arc<CudaStream>) -> Result<()> {
    stream.synchronize().map_err(|e| GpuError::Driver {
        call: "cuStreamSynchronize (a kernel failed)",
        message: describe(&e),
    })?;
    Ok(())
}

/// Fresh random inputs of `p`, drawn from a new seed (returned).
pub fn random_inputs(p: &Problem, large: bool) -> (Vec<HostTensor>, u64) {
    let (mut rng, seed) = fresh_rng();
    let dt = p.spec().dtype();
    let mut draw = |shape: &[usize], amp: f64| HostTensor::uniform(&mut rng, dt, shape, amp);
    (
        ops::of(p.spec().op()).random_inputs(p, &mut draw, large),
        seed,
    )
}

/// Runs `kernel` on `inputs` (outputs poisoned first) and returns every output.
pub fn run_once(
    stream: &Arc<CudaStream>,
    kernel: &Kernel,
    p: &Problem,
    inputs: &[HostTensor],
    pad: usize,
) -> Result<Vec<HostTensor>> {
    let def = ops::of(kernel.spec.op());
    let splits = kernel.splits_for(p);
    let t = OpTensors::new(stream, def, p, kernel.workspace_elems(p), inputs, pad)?;
    kernel.launch(stream, &t.op_args(p, splits))?;
    sync(stream)?;
    Ok(t.download_outputs(stream)?)
}

/// Runs `kernel` on a fresh random instance of `case` and compares every output with the
/// float64 reference: the main output by relative error, LSEs row by row under [`lse_bound`];
/// any output element left NaN fails.
pub fn check(stream: &Arc<CudaStream>, kernel: &Kernel, case: &Case) -> Result<Report> {
    let (inputs, seed) = random_inputs(&case.problem, case.large_logits);
    let got = run_once(
        stream,
        kernel,
        &case.problem,
        &inputs,
        if case.strided { 8 } else { 0 },
    )?;
    Ok(compare(kernel, case, &inputs, seed, &got))
}

/// Compares the outputs `got` of `kernel` on `inputs` (drawn from `seed`) with the float64
/// reference of `case`, as [`check`] does; for callers that run the kernel themselves (a
/// replayed CUDA graph, say).
pub fn compare(
    kernel: &Kernel,
    case: &Case,
    inputs: &[HostTensor],
    seed: u64,
    got: &[HostTensor],
) -> Report {
    let p = &case.problem;
    let spec = kernel.spec;
    let def = ops::of(spec.op());
    let r = def.reference(p, inputs);
    let tol = tolerance(spec.dtype());
    let mut rel_err = 0.0;
    let mut worst_ratio: f64 = 0.0;
    let mut lse_err = None;
    let mut unwritten = 0;
    let mut pass = true;
    for (i, (g, want)) in got.iter().zip(&r.outputs).enumerate() {
        let g = g.to_f64();
        let nan = g
            .iter()
            .zip(want)
            .filter(|(x, w)| x.is_nan() && !w.is_nan())
            .count();
        match &r.checks[i] {
            Check::Lse(mags) => {
                let (e, ok, nan) = lse_check(&g, want, mags, p.d());
                lse_err = Some(e);
                unwritten += nan;
                pass &= ok;
                worst_ratio = worst_ratio.max(if ok {
                    e / tol.lse_abs.max(e)
                } else {
                    f64::INFINITY
                });
            }
            Check::Relative => {
                let e = reference::rel_error(&g, want);
                if i == 0 {
                    rel_err = e;
                }
                unwritten += nan;
                pass &= e <= tol.rel;
                worst_ratio = worst_ratio.max(e / tol.rel);
            }
            Check::Gradient(slack) => {
                let e = reference::rel_error(&g, want);
                if i == 0 {
                    rel_err = e;
                }
                let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
                let diff = norm(
                    &mut g
                        .iter()
                        .zip(want)
                        .filter(|(_, w)| !w.is_nan())
                        .map(|(x, w)| x - w),
                );
                let allowed = tol.grad * norm(&mut want.iter().copied().filter(|w| !w.is_nan()))
                    + norm(&mut slack.iter().copied());
                unwritten += nan;
                let ratio = if diff.is_finite() {
                    diff / allowed.max(f64::MIN_POSITIVE)
                } else {
                    f64::INFINITY
                };
                pass &= diff.is_finite() && diff <= allowed;
                worst_ratio = worst_ratio.max(ratio);
            }
        }
    }
    pass &= unwritten == 0;
    Report {
        what: describe_case(kernel, case),
        seed,
        rel_err,
        worst_ratio,
        lse_err,
        unwritten,
        tol,
        pass,
    }
}

fn describe_case(kernel: &Kernel, case: &Case) -> String {
    let spec = kernel.spec;
    format!(
        "{spec} tile {} {}{}{}",
        kernel.tile.name(spec.op()),
        ops::of(spec.op()).describe_problem(&case.problem),
        if case.large_logits {
            " large-logits"
        } else {
            ""
        },
        if case.strided { " strided" } else { "" }
    )
}

/// Runs `kernel` (a prefill) on a fresh random case and compares with the reference.
pub fn check_prefill(stream: &Arc<CudaStream>, kernel: &Kernel, c: &PrefillCase) -> Result<Report> {
    check(stream, kernel, &c.case(kernel.spec))
}

/// Runs `kernel` (a decode) on a fresh random ring buffer and summary cache and compares with the
/// reference (which equals prefill's row p by construction, tested in `reference`).
pub fn check_decode(stream: &Arc<CudaStream>, kernel: &Kernel, c: &DecodeCase) -> Result<Report> {
    check(stream, kernel, &c.case(kernel.spec))
}

/// Runs `kernel` (chunk_mean or chunk_summarize) on a fresh random case.
pub fn check_chunk(stream: &Arc<CudaStream>, kernel: &Kernel, c: &ChunkCase) -> Result<Report> {
    check(stream, kernel, &c.case(kernel.spec))
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
    let d = spec.head_dim() as usize;
    let w = spec.window_or_zero() as usize;
    let hkv = h / spec.group_or_one() as usize;
    let (n, p) = (len, len - 1);
    let pre = Problem::new(Workload::new(prefill.spec, 1, n, h, hkv));
    let (ins, seed) = random_inputs(&pre, false);
    let o = &run_once(stream, prefill, &pre, &ins, 0)?[0];
    // The decode inputs: q = row p, ring = the last W tokens at slot t mod W, the same summaries.
    let mut dec = Problem::new(Workload::new(spec, 1, n, h, hkv));
    dec.summary_rows = pre.summary_rows;
    let (mut dins, _) = random_inputs(&dec, false);
    let row = h * d * 2;
    dins[0].data = ins[0].data[p * row..(p + 1) * row].to_vec();
    let krow = hkv * d * 2;
    for t in (p + 1).saturating_sub(w)..=p {
        let s = t % w;
        dins[1].data[s * krow..(s + 1) * krow]
            .copy_from_slice(&ins[1].data[t * krow..(t + 1) * krow]);
        dins[2].data[s * krow..(s + 1) * krow]
            .copy_from_slice(&ins[2].data[t * krow..(t + 1) * krow]);
    }
    dins[3] = ins[3].clone();
    dins[4] = ins[4].clone();
    let od = &run_once(stream, decode, &dec, &dins, 0)?[0];
    let want: Vec<f64> = o.to_f64()[p * h * d..(p + 1) * h * d].to_vec();
    let got = od.to_f64();
    let tol = tolerance(spec.dtype());
    let rel_err = reference::rel_error(&got, &want);
    let unwritten = got.iter().filter(|x| x.is_nan()).count();
    Ok(Report {
        what: format!("decode {spec} vs prefill row {p} (H={h})"),
        seed,
        rel_err,
        worst_ratio: rel_err / tol.rel,
        lse_err: None,
        unwritten,
        tol,
        pass: rel_err <= tol.rel && unwritten == 0,
    })
}
