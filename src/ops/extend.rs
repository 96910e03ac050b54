//! extend (the contract's item 6): T new tokens per sequence after L0 cached ones, for chunked
//! prefill onto a cache and speculative verification. From `q [B,Tmax,H,D]`, the new
//! `k, v [B,Tmax,Hkv,D]`, the ring `k_ring, v_ring [B,W,Hkv,D]` (tokens before L0, slot t mod
//! W), the summaries `ks, vs [B,MAXNC,Hkv,D]` and int32 `start [B]` (L0) and `count [B]` (T) to
//! `o [B,Tmax,H,D]` and `lse [B,H,Tmax]`; row t equals prefill's row L0 + t over the whole
//! sequence, rows past T are not written. Two engines: the Triton kernel (one program per
//! block of new rows, head and sequence) and, on sm_90a, the Hopper prefill kernel with positions
//! offset per sequence (templates/prefill_sm90a.cu with EXTEND: a gather launch first copies the
//! ring's last W tokens, the new ones and the summaries into the workspace, zeros where nothing
//! is cached). The workload's `n` is Tmax and its `past` L0.

use super::launch::{
    ArgList, LOG2E, LaunchError, LaunchPlan, OpArgs, Paging, Step, TensorMapSpec, check_op,
    expect_contiguous_rows, expect_dtype, expect_shape, grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel,
    check_triton_tile, common_dtype, constexprs, desc, probe_problem, spec_from, start_count,
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

    fn entry_points(&self, spec: &KernelSpec, tile: &TileParams) -> Vec<String> {
        let engine = tile.engine;
        let main = spec.name();
        match engine {
            Engine::Wgmma => vec![main.clone(), format!("{main}_gather")],
            _ => vec![main],
        }
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        match tile.engine {
            Engine::Wgmma => "prefill_sm90a.cu",
            _ => "flasheva_triton.py",
        }
    }

    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32 {
        match t.engine {
            Engine::Wgmma => super::prefill::wgmma_smem_bytes(spec, t),
            // Triton lays out its own shared memory: the loader takes it from the artifact.
            _ => 0,
        }
    }

    fn default_tiles(&self, spec: &KernelSpec, _arch: Arch) -> Vec<TileParams> {
        let mut v = Vec::new();
        if spec.head_dim() == 64 || spec.head_dim() == 128 {
            // The Hopper kernel where it runs (sm_90a), with the prefill's default tile.
            v.push(super::prefill::hopper_default(spec));
        }
        v.push(self.triton_default(spec));
        v
    }

    fn tile_name(&self, t: &TileParams) -> String {
        super::prefill::tile_name_mnws(t)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        TileParams { splits: 0, ..t }
    }

    fn check_tile(&self, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        match t.engine {
            Engine::Wgmma => super::prefill::check_wgmma_tile(Op::Extend, spec, t),
            Engine::Triton => check_triton_tile(Op::Extend, t, true, true, true),
            _ => Err(TileError::Field {
                op: Op::Extend,
                field: "engine",
                value: 0,
                accepted: "triton, or wgmma on sm_90a",
            }),
        }
    }

    fn triton_default(&self, _spec: &KernelSpec) -> TileParams {
        tile(64, 32, 4, 3)
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        vec![TritonKernel {
            function: "fe_extend",
            entry: spec.name(),
            aligned: true,
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
        (tile.engine() == Engine::Triton && tile.block_n() > w)
            .then(|| format!("block_n {} is over the window {w}", tile.block_n()))
    }

    fn workspace(&self, p: &Problem, tile: &Tile, _splits: usize) -> usize {
        if tile.engine() != Engine::Wgmma {
            return 0;
        }
        let w = &p.workload;
        extend_workspace_bytes(
            w.b,
            w.spec.window_or_zero() as usize + w.n,
            p.summary_rows,
            w.hkv,
            p.d(),
        ) / 4
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
            deterministic: false,
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
        device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        check_op(spec, Op::Extend)?;
        plan_extend(
            spec,
            tile,
            args.expect(Op::Extend, &NAMES)?,
            args.scale,
            &Paging::default(),
            args.workspace,
            device,
        )
    }
}

/// Checks extend's tensors (in contiguous form: rings `[B, W, Hkv, D]`, summaries
/// `[B, MAXNC, Hkv, D]`, whose batch strides a paged call sets to its pools' slot and page
/// strides) and plans its launch with `paging`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_extend(
    spec: &KernelSpec,
    tile: &Tile,
    t: &[TensorArg],
    scale: Option<f32>,
    paging: &Paging,
    workspace: Option<(u64, usize)>,
    device: DeviceFacts,
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
    if tile.engine() == Engine::Triton {
        // the Triton kernel is compiled for 16-byte access to these (`TritonKernel::aligned`)
        for i in [0, 1, 2, 3, 4, 5, 6, 9] {
            super::launch::expect_vector_layout(&t[i])?;
        }
    }
    let scale = scale.unwrap_or_else(|| spec.default_scale());
    if tile.engine() == Engine::Wgmma {
        return plan_extend_sm90(spec, tile, t, scale, paging, workspace, device);
    }
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

/// Mirrors `ExtendGatherParams` in templates/prefill_sm90a.cu (288 bytes): the gather launch
/// of the Hopper extend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct ExtendGatherParams {
    pub k: u64,
    pub v: u64,
    pub kr: u64,
    pub vr: u64,
    pub ks: u64,
    pub vs: u64,
    pub start: u64,
    pub count: u64,
    pub slot: u64,
    pub pt: u64,
    pub kx: u64,
    pub vx: u64,
    pub ksx: u64,
    pub vsx: u64,
    pub k_sb: i64,
    pub k_st: i64,
    pub k_sh: i64,
    pub v_sb: i64,
    pub v_st: i64,
    pub v_sh: i64,
    pub kr_sb: i64,
    pub kr_ss: i64,
    pub kr_sh: i64,
    pub vr_sb: i64,
    pub vr_ss: i64,
    pub vr_sh: i64,
    pub ks_sb: i64,
    pub ks_st: i64,
    pub ks_sh: i64,
    pub vs_sb: i64,
    pub vs_st: i64,
    pub vs_sh: i64,
    pub pt_sb: i64,
    pub batch: i32,
    pub tmax: i32,
    pub hkv: i32,
    pub maxnc: i32,
    pub page: i32,
    pub rows_per_block: i32,
}

/// Bytes of the Hopper extend's workspace: keys and values of `kv_rows` = W + Tmax rows and of
/// `summary_rows` summary rows per sequence, 16-bit, each of the four regions 16-byte aligned.
pub fn extend_workspace_bytes(
    b: usize,
    kv_rows: usize,
    summary_rows: usize,
    hkv: usize,
    d: usize,
) -> usize {
    2 * b * (kv_rows + summary_rows) * hkv * d * 2
}

/// Rows of the gathered layout one gather block moves.
const GATHER_ROWS: usize = 8;

/// The Hopper extend: the gather launch (entry point 1) into the workspace, then the prefill
/// kernel with per-sequence positions (entry point 0) reading it through TMA maps.
fn plan_extend_sm90(
    spec: &KernelSpec,
    tile: &Tile,
    t: &[TensorArg],
    scale: f32,
    paging: &Paging,
    workspace: Option<(u64, usize)>,
    device: DeviceFacts,
) -> Result<Vec<Step>, LaunchError> {
    use super::prefill::PrefillSm90Params;
    let d = spec.head_dim() as usize;
    let win = spec.window_or_zero() as usize;
    let (b, tmax, h) = (t[0].shape[0], t[0].shape[1], t[0].shape[2]);
    let (hkv, maxnc) = (t[1].shape[2], t[5].shape[1]);
    // 16-byte rows for the TMA maps, the gather's copies and the output's staged stores (as
    // the prefill on this kernel asks); the summaries only when there are any
    for i in [0, 1, 2, 3, 4, 9] {
        super::launch::expect_vector_layout(&t[i])?;
    }
    if maxnc > 0 {
        super::launch::expect_vector_layout(&t[5])?;
        super::launch::expect_vector_layout(&t[6])?;
    }
    let kv_rows = win + tmax;
    let need = extend_workspace_bytes(b, kv_rows, maxnc, hkv, d);
    let base = match workspace {
        Some((ptr, elems)) if elems * 4 >= need && ptr.is_multiple_of(16) => ptr,
        _ => {
            return Err(LaunchError::Size(format!(
                "extend on the wgmma kernel needs a 16-byte aligned workspace of {} fp32 elements",
                need / 4
            )));
        }
    };
    if [b, kv_rows + maxnc, h, hkv]
        .iter()
        .any(|&x| x > i32::MAX as usize)
    {
        return Err(LaunchError::Size(format!(
            "B = {b}, W + Tmax + MAXNC = {} or H = {h} is over {}",
            kv_rows + maxnc,
            i32::MAX
        )));
    }
    let et = ElemType::of(spec.dtype());
    let kv_bytes = (b * kv_rows * hkv * d * 2) as u64;
    let s_bytes = (b * maxnc * hkv * d * 2) as u64;
    let region = |name: &str, off: u64, rows: usize| {
        TensorArg::contiguous(name, base + off, et, &[b, rows, hkv, d])
    };
    let kx = region("k (gathered)", 0, kv_rows);
    let vx = region("v (gathered)", kv_bytes, kv_rows);
    let ksx = region("ks (gathered)", 2 * kv_bytes, maxnc);
    let vsx = region("vs (gathered)", 2 * kv_bytes + s_bytes, maxnc);
    let g = ExtendGatherParams {
        k: t[1].ptr,
        v: t[2].ptr,
        kr: t[3].ptr,
        vr: t[4].ptr,
        ks: t[5].ptr,
        vs: t[6].ptr,
        start: t[7].ptr,
        count: t[8].ptr,
        slot: paging.slot,
        pt: paging.table,
        kx: kx.ptr,
        vx: vx.ptr,
        ksx: ksx.ptr,
        vsx: vsx.ptr,
        k_sb: t[1].stride(0),
        k_st: t[1].stride(1),
        k_sh: t[1].stride(2),
        v_sb: t[2].stride(0),
        v_st: t[2].stride(1),
        v_sh: t[2].stride(2),
        kr_sb: t[3].stride(0),
        kr_ss: t[3].stride(1),
        kr_sh: t[3].stride(2),
        vr_sb: t[4].stride(0),
        vr_ss: t[4].stride(1),
        vr_sh: t[4].stride(2),
        ks_sb: t[5].stride(0),
        ks_st: t[5].stride(1),
        ks_sh: t[5].stride(2),
        vs_sb: t[6].stride(0),
        vs_st: t[6].stride(1),
        vs_sh: t[6].stride(2),
        pt_sb: paging.table_stride,
        batch: b as i32,
        tmax: tmax as i32,
        hkv: hkv as i32,
        maxnc: maxnc as i32,
        page: paging.page.max(1),
        rows_per_block: GATHER_ROWS as i32,
    };
    let gather = Step::of(
        1,
        &LaunchPlan {
            grid: (
                grid_dim(
                    "gather row groups",
                    (kv_rows + maxnc).div_ceil(GATHER_ROWS),
                    i32::MAX as usize,
                )?,
                grid_dim("B", b, 65535)?,
                1,
            ),
            block: (256, 1, 1),
            smem: 0,
            params: g,
        },
    );
    let bf16 = spec.dtype() == crate::spec::DType::Bf16;
    let (bm, bn) = (tile.block_m(), tile.block_n());
    let tiles = tmax.div_ceil(bm as usize) * h * b;
    let params = PrefillSm90Params {
        o: t[9].ptr,
        lse: t[10].ptr,
        o_sb: t[9].stride(0),
        o_st: t[9].stride(1),
        o_sh: t[9].stride(2),
        lse_sb: t[10].stride(0),
        lse_sh: t[10].stride(1),
        n: tmax as i32,
        h: h as i32,
        hkv: hkv as i32,
        nc: maxnc as i32,
        scale_log2: scale * LOG2E,
        batch: b as i32,
        start: t[7].ptr,
        count: t[8].ptr,
        ..Default::default()
    };
    let plan = super::prefill::Sm90PrefillPlan {
        launch: super::prefill::sm90_launch(spec, tile, tiles, device.sm_count, params)?,
        maps: [
            TensorMapSpec::of(&t[0], bf16, tmax, bm),
            TensorMapSpec::of(&kx, bf16, kv_rows, bn),
            TensorMapSpec::of(&vx, bf16, kv_rows, bn),
            TensorMapSpec::of(&ksx, bf16, maxnc, bn),
            TensorMapSpec::of(&vsx, bf16, maxnc, bn),
        ],
    };
    Ok(vec![gather, super::prefill::sm90_step(0, plan, device)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DType;

    fn spec() -> KernelSpec {
        crate::spec::test_spec(
            Op::Extend,
            (128, 512, 64),
            LocalMode::Block,
            DType::Bf16,
            None,
        )
    }

    #[test]
    fn gather_params_match_the_template_layout() {
        use std::mem::offset_of;
        // templates/prefill_sm90a.cu's ExtendGatherParams: 14 pointers, 19 strides, 6 ints
        assert_eq!(std::mem::size_of::<ExtendGatherParams>(), 288);
        assert_eq!(offset_of!(ExtendGatherParams, kx), 80);
        assert_eq!(offset_of!(ExtendGatherParams, k_sb), 112);
        assert_eq!(offset_of!(ExtendGatherParams, pt_sb), 256);
        assert_eq!(offset_of!(ExtendGatherParams, batch), 264);
        assert_eq!(offset_of!(ExtendGatherParams, rows_per_block), 284);
        // and the prefill block's extend fields
        use crate::ops::prefill::PrefillSm90Params;
        assert_eq!(offset_of!(PrefillSm90Params, start), 728);
        assert_eq!(offset_of!(PrefillSm90Params, count), 736);
    }

    #[test]
    fn the_hopper_extend_gathers_then_attends_through_the_workspace() {
        let s = spec();
        let sm90a: Arch = "sm_90a".parse().unwrap();
        let tile = Tile::default_for(&s, sm90a);
        assert_eq!(tile.engine(), Engine::Wgmma);
        assert_eq!(
            s.entry_points(&tile),
            [s.name(), format!("{}_gather", s.name())]
        );
        // elsewhere the Triton kernel, one entry point, no workspace
        let tr = Tile::default_for(&s, Arch::new(8, 0));
        assert_eq!(tr.engine(), Engine::Triton);
        assert_eq!(s.entry_points(&tr).len(), 1);
        let mut p = Problem::new(Workload::new(s, 2, 100, 8, 2).with_past(1000));
        p.summary_rows = 40;
        assert_eq!(Extend.workspace(&p, &tr, 1), 0);
        let ws = Extend.workspace(&p, &tile, 1);
        assert_eq!(ws * 4, 2 * 2 * (512 + 100 + 40) * 2 * 128 * 2);
        let dev = DeviceFacts::new(132);
        let args = p.placeholder_args(&tile, 132, 0x10000, 0x100000);
        assert_eq!(args.workspace, Some((0x100000, ws)));
        let no_ws = OpArgs {
            workspace: None,
            ..args.clone()
        };
        assert!(matches!(
            Extend.plan(&s, &tile, &no_ws, dev),
            Err(LaunchError::Size(m)) if m.contains("workspace")
        ));
        let steps = Extend.plan(&s, &tile, &args, dev).unwrap();
        assert_eq!(steps.len(), 2);
        let (gather, main) = (&steps[0], &steps[1]);
        assert_eq!(gather.function, 1);
        assert_eq!(
            gather.grid,
            ((512 + 100 + 40usize).div_ceil(8) as u32, 2, 1)
        );
        assert_eq!(main.function, 0);
        assert_eq!(main.grid.0, 132.min(100usize.div_ceil(128) * 8 * 2) as u32);
        assert_eq!(main.smem, tile.smem_bytes(&s));
        assert!(main.counters.is_some());
        // the key maps read the workspace: K rows W + Tmax, then V, then the summaries
        let maps: Vec<&TensorMapSpec> = main.tensor_maps.iter().map(|m| &m.1).collect();
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].addr, 0x10000);
        assert_eq!(maps[0].dims[2], 100);
        let kv_bytes = (2 * 612 * 2 * 128 * 2) as u64;
        assert_eq!(
            maps[1..].iter().map(|m| m.addr).collect::<Vec<_>>(),
            [
                0x100000,
                0x100000 + kv_bytes,
                0x100000 + 2 * kv_bytes,
                0x100000 + 2 * kv_bytes + (2 * 40 * 2 * 128 * 2) as u64
            ]
        );
        assert_eq!(maps[1].dims, [128, 2, 612, 2]);
        assert_eq!(maps[3].dims, [128, 2, 40, 2]);
        // an output the staged 16-byte stores cannot write is refused, not launched
        let mut bad = args.clone();
        bad.tensors[9].ptr += 2;
        assert!(matches!(
            Extend.plan(&s, &tile, &bad, dev),
            Err(LaunchError::Layout { name, .. }) if name == "o"
        ));
        // under graph capture with no counters ready: the static schedule
        let capturing = DeviceFacts {
            counter_limit: Some(0),
            ..dev
        };
        let steps = Extend.plan(&s, &tile, &args, capturing).unwrap();
        assert!(steps[1].counters.is_none());
    }
}
