//! extend (the contract's item 6): T new tokens per sequence after L0 cached ones, for chunked
//! prefill onto a cache and speculative verification. From `q [B,Tmax,H,D]`, the new
//! `k, v [B,Tmax,Hkv,D]`, the ring `k_ring, v_ring [B,W,Hkv,D]` (tokens before L0, slot t mod
//! W), the summaries `ks, vs [B,MAXNC,Hkv,D]` and int32 `start [B]` (L0) and `count [B]` (T) to
//! `o [B,Tmax,H,D]` and `lse [B,H,Tmax]`; row t equals prefill's row L0 + t over the whole
//! sequence, rows past T are not written. One program per block of new rows, head and
//! sequence (Triton so far). The workload's `n` is Tmax and its `past` L0.

use super::launch::{
    ArgList, LaunchError, OpArgs, Paging, Step, check_op, expect_contiguous_rows, expect_dtype,
    expect_shape, grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel, common_dtype,
    constexprs, desc, probe_problem, spec_from, start_count, triton_only,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference;
use crate::spec::{KernelSpec, LocalMode, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{Engine, Tile, TileError, TileParams};
use crate::visibility::{key_range, summaries_visible};
use crate::workload::Workload;

/// The extend op.
pub struct Extend;

const NAMES: [&str; 11] = [
    "q", "k", "v", "k_ring", "v_ring", "ks", "vs", "start", "count", "o", "lse",
];

fn tile(block_m: u32, block_n: u32, warps: u32, stages: u32) -> TileParams {
    TileParams {
        engine: Engine::Triton,
        block_m,
        block_n,
        warps,
        stages,
        splits: 0,
    }
}

/// Visible raw keys and summaries of the query at position `pos`.
fn visible(spec: &KernelSpec, pos: usize) -> usize {
    let w = spec.window_or_zero().max(1) as usize;
    let local = spec.local().unwrap_or(LocalMode::Block);
    key_range(pos, w, local).len() + summaries_visible(pos, spec.chunk() as usize, usize::MAX)
}

/// Summary rows the cache must hold for `past + n` tokens (every chunk complete by then).
fn summary_rows_for(spec: &KernelSpec, past: usize, n: usize) -> usize {
    (past + n) / spec.chunk() as usize + 1
}

impl OpDef for Extend {
    fn op(&self) -> Op {
        Op::Extend
    }

    super::triton_only_kernels!();

    fn tile_name(&self, t: &TileParams) -> String {
        format!(
            "tr_m{}_n{}_w{}_s{}",
            t.block_m, t.block_n, t.warps, t.stages
        )
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        TileParams { splits: 0, ..t }
    }

    fn check_tile(&self, _spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        triton_only(Op::Extend, t, true, true, true)
    }

    fn triton_default(&self, _spec: &KernelSpec) -> TileParams {
        tile(64, 32, 4, 3)
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        vec![TritonKernel {
            function: "fe_extend",
            entry: spec.name(),
            constexprs: constexprs(
                spec,
                &[
                    ("W", Const::Int(spec.window_or_zero())),
                    ("C", Const::Int(spec.chunk())),
                    ("SLIDING", Const::Bool(spec.sliding())),
                    ("BLOCK_M", Const::Int(tile.block_m())),
                    ("BLOCK_N", Const::Int(tile.block_n())),
                    ("PAGED", Const::Bool(false)),
                ],
            ),
        }]
    }

    fn prune(&self, spec: &KernelSpec, tile: &Tile) -> Option<String> {
        let w = spec.window_or_zero();
        (tile.block_n() > w).then(|| format!("block_n {} is over the window {w}", tile.block_n()))
    }

    fn flops(&self, w: &Workload) -> f64 {
        let pairs: usize = (0..w.n).map(|t| visible(&w.spec, w.past + t)).sum();
        4.0 * w.spec.head_dim() as f64 * (w.b * w.h * pairs) as f64
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let d = w.spec.head_dim() as usize;
        let ring = (w.spec.window_or_zero() as usize).min(w.past);
        let sums = (w.past + w.n) / w.spec.chunk() as usize;
        let kv = w.b * w.hkv * (w.n + ring + sums) * d * 2 * 2;
        (kv + w.b * w.n * w.h * (2 * d * 2 + 4)) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Flops
    }

    fn bucket_rows(&self, b: usize, h: usize, _hkv: usize) -> usize {
        b * h
    }

    fn describe(&self, w: &Workload) -> String {
        format!("B={} T={} L0={} H={} Hkv={}", w.b, w.n, w.past, w.h, w.hkv)
    }

    fn describe_problem(&self, p: &Problem) -> String {
        let w = &p.workload;
        format!(
            "B={} H={} Hkv={} {}",
            w.b,
            w.h,
            w.hkv,
            super::starts_and_counts(p)
        )
    }

    fn problem(&self, w: Workload) -> Problem {
        Problem {
            lens: vec![w.past as i32; w.b],
            counts: vec![w.n as i32; w.b],
            page: 0,
            summary_rows: summary_rows_for(&w.spec, w.past, w.n),
            workload: w,
            scale: None,
            splits: None,
        }
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        let win = w.spec.window_or_zero() as usize;
        let nr = p.summary_rows;
        vec![
            desc("q", e, &[w.b, w.n, w.h, d], "[B, Tmax, H, D]"),
            desc("k", e, &[w.b, w.n, w.hkv, d], "[B, Tmax, Hkv, D]"),
            desc("v", e, &[w.b, w.n, w.hkv, d], "[B, Tmax, Hkv, D]"),
            desc("k_ring", e, &[w.b, win, w.hkv, d], "[B, W, Hkv, D]"),
            desc("v_ring", e, &[w.b, win, w.hkv, d], "[B, W, Hkv, D]"),
            desc("ks", e, &[w.b, nr, w.hkv, d], "[B, MAXNC, Hkv, D]"),
            desc("vs", e, &[w.b, nr, w.hkv, d], "[B, MAXNC, Hkv, D]"),
            desc("start", ElemType::I32, &[w.b], "int32 [B]"),
            desc("count", ElemType::I32, &[w.b], "int32 [B]"),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        vec![
            desc("o", p.elem(), &[w.b, w.n, w.h, p.d()], "[B, Tmax, H, D]"),
            desc("lse", ElemType::F32, &[w.b, w.h, w.n], "[B, H, Tmax]"),
        ]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::Extend)), inputs)?;
        let (q, k, kr, ks) = (&inputs[0].1, &inputs[1].1, &inputs[3].1, &inputs[5].1);
        let hkv = k[2];
        if hkv == 0 || q[2] % hkv != 0 {
            return Err(format!(
                "q has {} heads, not a multiple of k's {hkv} kv heads",
                q[2]
            ));
        }
        let flags = SpecParams {
            window: flags.window.or(Some(kr[1] as u32)),
            ..*flags
        };
        let spec = spec_from(Op::Extend, &flags, q[3], dtype, None)?;
        let (start, count) = start_count(Op::Extend, lens, q[0], q[1], "q")?;
        let mut p = Problem::new(Workload {
            spec,
            b: q[0],
            n: q[1],
            h: q[2],
            hkv,
            past: start.iter().copied().max().unwrap_or(0) as usize,
        });
        p.lens = start;
        p.counts = count;
        p.summary_rows = ks[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        // Mixed L0 and T in one batch: a fresh sequence, one token, a partial chunk, a block
        // crossing chunks and the window, T past the window, and an empty one.
        let win = w.spec.window_or_zero() as usize;
        let c = w.spec.chunk() as usize;
        let tmax = w.n.clamp(1, 2 * win + c + 3);
        let hkv = w.hkv.clamp(1, 2);
        let h = (w.h / w.hkv.max(1)).max(1) * hkv;
        let seqs: [(usize, usize); 6] = [
            (0, tmax.min(c + 3)),
            (win + 1, 1),
            (3 * win + c + 5, c.saturating_sub(1).max(1)),
            (win - 1, tmax),
            (2 * c + 1, tmax / 2 + 1),
            (7, 0),
        ];
        let past = seqs.iter().map(|s| s.0).max().expect("non-empty");
        let mut p = Problem::new(Workload {
            spec: w.spec,
            b: seqs.len(),
            n: tmax,
            h,
            hkv,
            past,
        });
        p.lens = seqs.iter().map(|s| s.0 as i32).collect();
        p.counts = seqs.iter().map(|s| s.1.min(tmax) as i32).collect();
        p.summary_rows = summary_rows_for(&w.spec, past, tmax);
        CheckProblem {
            problem: p,
            large_logits: true,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        // Stale ring slots, unused summaries and rows past T hold values the kernel must ignore.
        super::draw_with_ints(p, &self.inputs(p), 7, large, draw, &[&p.lens, &p.counts])
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let f: Vec<Vec<f64>> = inputs[..7].iter().map(HostTensor::to_f64).collect();
        let geo = super::decode::decode_shape(p);
        let x = reference::ExtendInputs {
            q: &f[0],
            k: &f[1],
            v: &f[2],
            kr: &f[3],
            vr: &f[4],
            ks: &f[5],
            vs: &f[6],
        };
        let (o, lse, mags) = reference::extend(&geo, w.n, &p.lens, &p.counts, &x, p.scale());
        Reference {
            outputs: vec![o, lse],
            checks: vec![Check::Relative, Check::Lse(mags)],
        }
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        _device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        check_op(spec, Op::Extend)?;
        plan_extend(
            spec,
            tile,
            args.expect(Op::Extend, &NAMES)?,
            args.scale,
            &Paging::default(),
        )
    }
}

/// Checks extend's tensors (in contiguous form: rings `[B, W, Hkv, D]`, summaries
/// `[B, MAXNC, Hkv, D]`, whose batch strides a paged call sets to its pools' slot and page
/// strides) and plans its launch with `paging`.
pub(crate) fn plan_extend(
    spec: &KernelSpec,
    tile: &Tile,
    t: &[TensorArg],
    scale: Option<f32>,
    paging: &Paging,
) -> Result<Vec<Step>, LaunchError> {
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    let win = spec.window_or_zero() as usize;
    for (i, x) in t.iter().enumerate() {
        match i {
            7 | 8 => expect_dtype(x, ElemType::I32)?,
            10 => expect_dtype(x, ElemType::F32)?,
            _ => expect_dtype(x, et)?,
        }
    }
    expect_shape(&t[0], &[None, None, None, Some(d)], "[B, Tmax, H, D]")?;
    let (b, tmax, h) = (t[0].shape[0], t[0].shape[1], t[0].shape[2]);
    expect_shape(
        &t[1],
        &[Some(b), Some(tmax), None, Some(d)],
        "[B, Tmax, Hkv, D]",
    )?;
    let hkv = t[1].shape[2];
    if hkv == 0 || h % hkv != 0 {
        return Err(LaunchError::Size(format!(
            "q has {h} heads, not a multiple of k's {hkv} kv heads"
        )));
    }
    let new = [Some(b), Some(tmax), Some(hkv), Some(d)];
    expect_shape(&t[2], &new, "[B, Tmax, Hkv, D]")?;
    let ring = [Some(b), Some(win), Some(hkv), Some(d)];
    expect_shape(&t[3], &ring, "[B, W, Hkv, D]")?;
    expect_shape(&t[4], &ring, "[B, W, Hkv, D]")?;
    expect_shape(
        &t[5],
        &[Some(b), None, Some(hkv), Some(d)],
        "[B, MAXNC, Hkv, D]",
    )?;
    let maxnc = t[5].shape[1];
    expect_shape(
        &t[6],
        &[Some(b), Some(maxnc), Some(hkv), Some(d)],
        "[B, MAXNC, Hkv, D] like ks",
    )?;
    expect_shape(&t[7], &[Some(b)], "int32 [B]")?;
    expect_shape(&t[8], &[Some(b)], "int32 [B]")?;
    expect_shape(
        &t[9],
        &[Some(b), Some(tmax), Some(h), Some(d)],
        "[B, Tmax, H, D] like q",
    )?;
    expect_shape(&t[10], &[Some(b), Some(h), Some(tmax)], "[B, H, Tmax]")?;
    for x in t {
        expect_contiguous_rows(x)?;
    }
    if b == 0 || tmax == 0 || h == 0 {
        return Ok(Vec::new());
    }
    let scale = scale.unwrap_or_else(|| spec.default_scale());
    let mut a = ArgList::default();
    for (name, i) in [
        ("Q", 0),
        ("K", 1),
        ("V", 2),
        ("KR", 3),
        ("VR", 4),
        ("KS", 5),
        ("VS", 6),
        ("START", 7),
        ("COUNT", 8),
        ("O", 9),
        ("LSE", 10),
    ] {
        a.ptr(name, t[i].ptr);
    }
    for (names, i) in [
        (["q_sb", "q_st", "q_sh"], 0),
        (["k_sb", "k_st", "k_sh"], 1),
        (["v_sb", "v_st", "v_sh"], 2),
        (["kr_sb", "kr_ss", "kr_sh"], 3),
        (["vr_sb", "vr_ss", "vr_sh"], 4),
        (["ks_sb", "ks_st", "ks_sh"], 5),
        (["vs_sb", "vs_st", "vs_sh"], 6),
        (["o_sb", "o_st", "o_sh"], 9),
    ] {
        a.strides(names, &t[i]);
    }
    a.i64("lse_sb", t[10].stride(0))
        .i64("lse_sh", t[10].stride(1))
        .i32("H", h as i32)
        .i32("HKV", hkv as i32)
        .i32("MAXNC", maxnc as i32)
        .f32("scale_log2", scale * std::f32::consts::LOG2_E);
    paging.push(&mut a);
    let grid = (
        grid_dim(
            "row blocks",
            tmax.div_ceil(tile.block_m() as usize),
            i32::MAX as usize,
        )?,
        grid_dim("H", h, 65535)?,
        grid_dim("B", b, 65535)?,
    );
    Ok(vec![Step::triton(0, grid, tile.warps(), a)])
}
