//! decode: `q [B,H,D]`, `k_ring, v_ring [B,W,Hkv,D]`, `ks, vs [B,MAXNC,Hkv,D]`, `len [B]` int32
//! -> `o [B,H,D]`, `lse [B,H]` fp32. Split-KV with an fp32 workspace, the splits merged by the
//! last block of each sequence and head tile (or a combine kernel): templates/decode.cu, and on
//! sm_90a templates/decode_sm90a.cu (engine `tma`: K and V tiles by bulk tensor copies).

use super::launch::{
    ArgList, Counters, LOG2E, LaunchError, LaunchPlan, OpArgs, Paging, Step, TensorMap,
    TensorMapSpec, check_op, checked_scale, expect_dtype, expect_shape, expect_vector_layout,
    grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel,
    check_triton_tile, common_dtype, constexprs, desc, probe_problem, spec_from,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference;
use crate::spec::{KernelSpec, LocalMode, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{
    DECODE_ROWS, DECODE_ROWS_KQ, Engine, MAX_SPLITS, SMEM_PAD, Tile, TileError, TileParams, WARPS,
    decode_kv_swizzled, decode_rows, one_of,
};
use crate::visibility::{key_range, summaries_visible};
use crate::workload::Workload;

/// The decode op.
pub struct Decode;

/// Decode tensors: `q, o [B,H,D]`, `k_ring, v_ring [B,W,Hkv,D]`, `ks, vs [B,MAXNC,Hkv,D]`,
/// `len [B]` int32, `lse [B,H]` fp32.
#[derive(Clone, Debug)]
pub struct DecodeArgs {
    /// The new queries `[B, H, D]`.
    pub q: TensorArg,
    /// Key ring `[B, W, Hkv, D]` (token t in slot t mod W).
    pub k_ring: TensorArg,
    /// Value ring `[B, W, Hkv, D]`.
    pub v_ring: TensorArg,
    /// Summary keys `[B, MAXNC, Hkv, D]`.
    pub ks: TensorArg,
    /// Summary values `[B, MAXNC, Hkv, D]`.
    pub vs: TensorArg,
    /// int32 tokens per sequence, the new one included `[B]`.
    pub len: TensorArg,
    /// Output `[B, H, D]` (written).
    pub o: TensorArg,
    /// fp32 log-sum-exp `[B, H]` (written).
    pub lse: TensorArg,
    /// Softmax scale (default `1/sqrt(D)`).
    pub scale: Option<f32>,
}

impl DecodeArgs {
    /// The generic form of these arguments with `splits` and the workspace.
    pub fn to_op_args(&self, splits: usize, workspace: Option<(u64, usize)>) -> OpArgs {
        OpArgs {
            tensors: vec![
                self.q.clone(),
                self.k_ring.clone(),
                self.v_ring.clone(),
                self.ks.clone(),
                self.vs.clone(),
                self.len.clone(),
                self.o.clone(),
                self.lse.clone(),
            ],
            scale: self.scale,
            splits,
            workspace,
            ..OpArgs::default() // no backward: deterministic is prefill_bwd's
        }
    }

    fn from_op_args(a: &OpArgs) -> Result<DecodeArgs, LaunchError> {
        let t = a.expect(
            Op::Decode,
            &["q", "k_ring", "v_ring", "ks", "vs", "len", "o", "lse"],
        )?;
        Ok(DecodeArgs {
            q: t[0].clone(),
            k_ring: t[1].clone(),
            v_ring: t[2].clone(),
            ks: t[3].clone(),
            vs: t[4].clone(),
            len: t[5].clone(),
            o: t[6].clone(),
            lse: t[7].clone(),
            scale: a.scale,
        })
    }
}

/// Mirrors `DecodeParams` in templates/decode.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct DecodeParams {
    pub q: u64,
    pub kr: u64,
    pub vr: u64,
    pub ks: u64,
    pub vs: u64,
    pub len: u64,
    pub o: u64,
    pub lse: u64,
    pub ws_o: u64,
    pub ws_ml: u64,
    pub q_sb: i64,
    pub q_sh: i64,
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
    pub o_sb: i64,
    pub o_sh: i64,
    pub lse_sb: i64,
    pub lse_sh: i64,
    pub b: i32,
    pub h: i32,
    pub hkv: i32,
    pub max_nc: i32,
    pub splits: i32,
    pub scale_log2: f32,
    /// decode_paged: summary rows per page (1 for contiguous decode).
    pub page: i32,
    pub _pad: i32,
    /// decode_paged: int32 `[B]`, each sequence's row of the ring pools (0 otherwise).
    pub slot: u64,
    /// decode_paged: int32 `[B, MAXP]`, each sequence's pages (0 otherwise).
    pub pt: u64,
    /// decode_paged: the page table's row stride.
    pub pt_sb: i64,
    /// Split decode merged by its last block: int32 counters, one per sequence and head tile,
    /// zero before the launch and after it (the loader's per-stream region); 0 = a combine
    /// launch merges the splits.
    pub counters: u64,
}

impl DecodeParams {
    /// The same launch reading its ring through `paging.slot` and its summaries through
    /// `paging.table` (decode_paged's CUDA kernel).
    pub(crate) fn paged(self, paging: &Paging) -> DecodeParams {
        DecodeParams {
            page: paging.page,
            slot: paging.slot,
            pt: paging.table,
            pt_sb: paging.table_stride,
            ..self
        }
    }
}

/// The decode splits to use: the tile's, or (tile.splits = 0) at most one block per
/// multiprocessor, rounded down, without giving a warp less than one tile of the longest
/// sequence, at most 64. Measured on the H200 (docs/VALIDATION.md, runs 18-23): a second, partial
/// wave of blocks runs alone (5 splits at B=8 Hkv=8: 1.21 waves, 0.0381 ms), and blocks that
/// share a multiprocessor pay their start and merge twice for the same bytes (B=1 at 1M tokens:
/// 16 splits, 128 blocks, 0.0263 ms; 33 splits, two blocks per multiprocessor, 0.0281; 64,
/// 0.0345; B=8 at 131k: 2 and 4 splits within 2 %, 8 splits 0.036).
pub fn decode_splits(
    spec: &KernelSpec,
    tile: &Tile,
    b: usize,
    hkv: usize,
    max_items: usize,
    sm_count: u32,
) -> usize {
    if tile.splits() > 0 {
        return tile.splits() as usize;
    }
    let head_tiles = spec.group_or_one().div_ceil(tile.decode_rows()) as usize;
    let ctas = (b * hkv * head_tiles).max(1);
    let want = sm_count as usize / ctas;
    // The CUDA kernel gives each warp block_n keys per step, the Triton kernel its program.
    let per_split = match tile.engine() {
        Engine::Triton => tile.block_n() as usize,
        Engine::Tma => (tile.block_n() * (tile.warps() - 1)) as usize,
        _ => (tile.block_n() * tile.warps()) as usize,
    };
    let most = max_items.div_ceil(per_split).max(1);
    want.clamp(1, most.min(64))
}

/// fp32 elements of the decode workspace for `splits` (0 when no workspace is needed).
pub fn decode_workspace_elems(b: usize, h: usize, d: usize, splits: usize) -> usize {
    if splits <= 1 {
        0
    } else {
        splits * b * h * (d + 2)
    }
}

/// Mirrors `DecodeTmaParams` in templates/decode_sm90a.cu (896 bytes): the TMA decode's tensor
/// maps (ring keys and values, summary keys and values), then the decode's parameters.
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct DecodeTmaParams {
    pub tm_kr: TensorMap,
    pub tm_vr: TensorMap,
    pub tm_ks: TensorMap,
    pub tm_vs: TensorMap,
    pub d: DecodeParams,
    pub _pad: [u64; 12],
}

/// The TMA decode's launch: the planned decode's geometry with one producer warp more than its
/// consumers, its tensor maps, and the stream's counters when split (it has no combine launch:
/// under graph capture with no counters ready it is refused, with what to do).
fn tma_decode_steps(
    spec: &KernelSpec,
    tile: &Tile,
    a: &DecodeArgs,
    main: &LaunchPlan<DecodeParams>,
    device: DeviceFacts,
) -> Result<Vec<Step>, LaunchError> {
    use std::mem::offset_of;
    let bf16 = spec.dtype() == crate::spec::DType::Bf16;
    let (w, bn) = (spec.window_or_zero() as usize, tile.block_n());
    let max_nc = a.ks.shape[1];
    let split = main.params.splits > 1;
    let ints = main.grid.1 as usize * main.grid.2 as usize;
    if split && !device.counters_allowed(ints) {
        return Err(LaunchError::Size(format!(
            "the tma decode merges its {} splits with the stream's counters, which cannot be allocated while the stream is captured: launch it once on this stream before capturing",
            main.params.splits
        )));
    }
    let params = DecodeTmaParams {
        d: main.params,
        ..Default::default()
    };
    let mut step = Step::of(
        0,
        &LaunchPlan {
            grid: main.grid,
            block: (tile.threads(), 1, 1),
            smem: tile.smem_bytes(spec),
            params,
        },
    );
    // With no summary slots the summary maps are never read, but must still encode: over the
    // rings then (an empty tensor's address may be null or unaligned).
    let (ks, vs, rows) = if max_nc > 0 {
        (&a.ks, &a.vs, max_nc)
    } else {
        (&a.k_ring, &a.v_ring, w)
    };
    step.tensor_maps = vec![
        (
            offset_of!(DecodeTmaParams, tm_kr),
            TensorMapSpec::of(&a.k_ring, bf16, w, bn),
        ),
        (
            offset_of!(DecodeTmaParams, tm_vr),
            TensorMapSpec::of(&a.v_ring, bf16, w, bn),
        ),
        (
            offset_of!(DecodeTmaParams, tm_ks),
            TensorMapSpec::of(ks, bf16, rows, bn),
        ),
        (
            offset_of!(DecodeTmaParams, tm_vs),
            TensorMapSpec::of(vs, bf16, rows, bn),
        ),
    ];
    if split {
        step.counters = Some(Counters {
            offset: offset_of!(DecodeTmaParams, d) + offset_of!(DecodeParams, counters),
            ints,
        });
    }
    Ok(vec![step])
}

/// A decode launch and, when split, its combine launch.
pub type DecodePlan = (LaunchPlan<DecodeParams>, Option<LaunchPlan<DecodeParams>>);

/// The CUDA decode kernel's steps for a plan: one launch whose last block per sequence and head
/// tile merges the splits (it counts the finished splits in the loader's zeroed per-stream
/// counters), or, unsplit, one launch. The combine launch of the plan is what the Triton kernel
/// and direct callers of [`plan_decode`] use; the merged form saves its launch (5.1 us of 40 at
/// B=8, position 131071 on the H200, docs/VALIDATION.md run 18).
/// Where no counters may be allocated (a first launch under graph capture, see
/// [`DeviceFacts::counter_limit`]) the split decode keeps its combine launch.
pub(crate) fn cuda_decode_steps(
    main: &LaunchPlan<DecodeParams>,
    combine: Option<&LaunchPlan<DecodeParams>>,
    device: DeviceFacts,
) -> Vec<Step> {
    let mut step = Step::of(0, main);
    let Some(combine) = combine else {
        return vec![step];
    };
    let ints = main.grid.1 as usize * main.grid.2 as usize;
    if !device.counters_allowed(ints) {
        return vec![step, Step::of(1, combine)];
    }
    step.counters = Some(Counters {
        offset: std::mem::offset_of!(DecodeParams, counters),
        ints,
    });
    vec![step]
}

/// Plans a decode launch (and its combine launch when split); `None` when B = 0.
/// `workspace` is the device address of at least [`decode_workspace_elems`] fp32 elements.
pub fn plan_decode(
    spec: &KernelSpec,
    tile: &Tile,
    a: &DecodeArgs,
    splits: usize,
    workspace: Option<(u64, usize)>,
) -> Result<Option<DecodePlan>, LaunchError> {
    check_op(spec, Op::Decode)?;
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    let w = spec.window_or_zero() as usize;
    let g = spec.group_or_one() as usize;
    for t in [&a.q, &a.k_ring, &a.v_ring, &a.ks, &a.vs, &a.o] {
        expect_dtype(t, et)?;
    }
    expect_dtype(&a.len, ElemType::I32)?;
    expect_dtype(&a.lse, ElemType::F32)?;
    if a.q.shape.len() != 3 {
        expect_shape(&a.q, &[None, None, Some(d)], "[B, H, D]")?;
    }
    let (b, h) = (a.q.shape[0], a.q.shape[1]);
    expect_shape(&a.q, &[Some(b), Some(h), Some(d)], "[B, H, D]")?;
    if h % g != 0 {
        return Err(LaunchError::Shape {
            name: "q".into(),
            got: a.q.shape.clone(),
            expected: format!("H a multiple of the kernel's group {g}"),
        });
    }
    let hkv = h / g;
    expect_shape(
        &a.k_ring,
        &[Some(b), Some(w), Some(hkv), Some(d)],
        "[B, W, Hkv, D]",
    )?;
    expect_shape(
        &a.v_ring,
        &[Some(b), Some(w), Some(hkv), Some(d)],
        "[B, W, Hkv, D]",
    )?;
    expect_shape(
        &a.ks,
        &[Some(b), None, Some(hkv), Some(d)],
        "[B, MAXNC, Hkv, D]",
    )?;
    let max_nc = a.ks.shape[1];
    expect_shape(
        &a.vs,
        &[Some(b), Some(max_nc), Some(hkv), Some(d)],
        "[B, MAXNC, Hkv, D]",
    )?;
    expect_shape(&a.len, &[Some(b)], "[B]")?;
    expect_shape(&a.o, &[Some(b), Some(h), Some(d)], "[B, H, D]")?;
    expect_shape(&a.lse, &[Some(b), Some(h)], "[B, H]")?;
    if b == 0 || h == 0 {
        return Ok(None);
    }
    for t in [&a.q, &a.k_ring, &a.v_ring, &a.o] {
        expect_vector_layout(t)?;
    }
    if max_nc > 0 {
        expect_vector_layout(&a.ks)?;
        expect_vector_layout(&a.vs)?;
    }
    let splits = splits.max(1);
    let (ws_o, ws_ml) = if splits > 1 {
        let need = decode_workspace_elems(b, h, d, splits);
        match workspace {
            Some((ptr, elems)) if elems >= need => (ptr, ptr + (splits * b * h * d * 4) as u64),
            _ => {
                return Err(LaunchError::Size(format!(
                    "decode with {splits} splits needs a workspace of {need} fp32 elements"
                )));
            }
        }
    } else {
        (0, 0)
    };
    let scale = checked_scale(a.scale, spec)?;
    let params = DecodeParams {
        q: a.q.ptr,
        kr: a.k_ring.ptr,
        vr: a.v_ring.ptr,
        ks: a.ks.ptr,
        vs: a.vs.ptr,
        len: a.len.ptr,
        o: a.o.ptr,
        lse: a.lse.ptr,
        ws_o,
        ws_ml,
        q_sb: a.q.stride(0),
        q_sh: a.q.stride(1),
        kr_sb: a.k_ring.stride(0),
        kr_ss: a.k_ring.stride(1),
        kr_sh: a.k_ring.stride(2),
        vr_sb: a.v_ring.stride(0),
        vr_ss: a.v_ring.stride(1),
        vr_sh: a.v_ring.stride(2),
        ks_sb: a.ks.stride(0),
        ks_st: a.ks.stride(1),
        ks_sh: a.ks.stride(2),
        vs_sb: a.vs.stride(0),
        vs_st: a.vs.stride(1),
        vs_sh: a.vs.stride(2),
        o_sb: a.o.stride(0),
        o_sh: a.o.stride(1),
        lse_sb: a.lse.stride(0),
        lse_sh: a.lse.stride(1),
        b: b as i32,
        h: h as i32,
        hkv: hkv as i32,
        max_nc: max_nc as i32,
        splits: splits as i32,
        scale_log2: scale * LOG2E,
        page: 1,
        ..DecodeParams::default()
    };
    let head_tiles = g.div_ceil(tile.decode_rows() as usize);
    let main = LaunchPlan {
        grid: (
            grid_dim("splits", splits, 65535)?,
            grid_dim("Hkv x head tiles", hkv * head_tiles, 65535)?,
            grid_dim("B", b, 65535)?,
        ),
        block: (tile.threads(), 1, 1),
        smem: tile.smem_bytes(spec),
        params,
    };
    let combine = (splits > 1).then_some(LaunchPlan {
        grid: (h as u32, b as u32, 1),
        block: (32, 1, 1), // one warp per head and sequence (templates/decode.cu)
        smem: 0,
        params,
    });
    Ok(Some((main, combine)))
}

/// The reference's geometry of a decode-like problem (decode, extend): heads, D, window, chunk,
/// mode and the summary rows the cache holds.
#[cfg(feature = "cli")]
pub(crate) fn decode_shape(p: &Problem) -> crate::reference::DecodeShape {
    let w = &p.workload;
    crate::reference::DecodeShape {
        b: w.b,
        h: w.h,
        hkv: w.hkv,
        d: p.d(),
        window: w.spec.window_or_zero() as usize,
        chunk: w.spec.chunk() as usize,
        local: w.spec.local().unwrap_or(LocalMode::Block),
        max_nc: p.summary_rows,
    }
}

/// Raw keys plus summaries the query at position `n - 1` of `w` sees.
fn visible_items(w: &Workload) -> usize {
    let p = w.n - 1;
    let local = w.spec.local().unwrap_or(LocalMode::Block);
    key_range(p, w.spec.window_or_zero() as usize, local).len()
        + summaries_visible(p, w.spec.chunk() as usize, w.max_nc())
}

/// Query heads per program of the Triton decode: the group rounded up to a power of two, at
/// least 16 (tl.dot's smallest M) and at most 64.
pub(crate) fn triton_block_h(group: u32) -> u32 {
    super::pow2(group).clamp(16, 64)
}

/// The parameters of `fe_decode` (triton/flasheva_triton.py), in order.
pub(crate) fn triton_args(p: &DecodeParams, paging: &Paging) -> ArgList {
    let mut a = ArgList::default();
    a.ptr("Q", p.q)
        .ptr("KR", p.kr)
        .ptr("VR", p.vr)
        .ptr("KS", p.ks)
        .ptr("VS", p.vs)
        .ptr("LEN", p.len)
        .ptr("O", p.o)
        .ptr("LSE", p.lse)
        .ptr("WS_O", p.ws_o)
        .ptr("WS_ML", p.ws_ml);
    for (name, v) in [
        ("q_sb", p.q_sb),
        ("q_sh", p.q_sh),
        ("kr_sb", p.kr_sb),
        ("kr_ss", p.kr_ss),
        ("kr_sh", p.kr_sh),
        ("vr_sb", p.vr_sb),
        ("vr_ss", p.vr_ss),
        ("vr_sh", p.vr_sh),
        ("ks_sb", p.ks_sb),
        ("ks_st", p.ks_st),
        ("ks_sh", p.ks_sh),
        ("vs_sb", p.vs_sb),
        ("vs_st", p.vs_st),
        ("vs_sh", p.vs_sh),
        ("o_sb", p.o_sb),
        ("o_sh", p.o_sh),
        ("lse_sb", p.lse_sb),
        ("lse_sh", p.lse_sh),
    ] {
        a.i64(name, v);
    }
    a.i32("B", p.b)
        .i32("H", p.h)
        .i32("HKV", p.hkv)
        .i32("MAXNC", p.max_nc)
        .i32("SPLITS", p.splits)
        .f32("scale_log2", p.scale_log2);
    paging.push(&mut a);
    a
}

/// The parameters of `fe_decode_combine`, in order.
pub(crate) fn triton_combine_args(p: &DecodeParams) -> ArgList {
    let mut a = ArgList::default();
    a.ptr("O", p.o)
        .ptr("LSE", p.lse)
        .ptr("WS_O", p.ws_o)
        .ptr("WS_ML", p.ws_ml)
        .i64("o_sb", p.o_sb)
        .i64("o_sh", p.o_sh)
        .i64("lse_sb", p.lse_sb)
        .i64("lse_sh", p.lse_sh)
        .i32("B", p.b)
        .i32("H", p.h)
        .i32("SPLITS", p.splits);
    a
}

fn tile(block_n: u32, warps: u32, stages: u32) -> TileParams {
    TileParams {
        engine: Engine::Mma,
        block_m: 0,
        block_n,
        warps,
        stages,
        splits: 0,
    }
}

impl OpDef for Decode {
    fn op(&self) -> Op {
        Op::Decode
    }

    fn entry_points(&self, spec: &KernelSpec, tile: &TileParams) -> Vec<String> {
        let engine = tile.engine;
        let main = spec.name();
        match engine {
            // the TMA decode always merges its splits in its last block
            Engine::Tma => vec![main],
            _ => vec![main.clone(), format!("{main}_combine")],
        }
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        match tile.engine {
            Engine::Triton => "flasheva_triton.py",
            Engine::Tma => "decode_sm90a.cu",
            _ => "decode.cu",
        }
    }

    fn tile_name(&self, t: &TileParams) -> String {
        format!(
            "{}{}n{}_w{}_s{}_k{}",
            super::engine_prefix(t.engine),
            if decode_rows(t) == DECODE_ROWS_KQ {
                "m8_"
            } else {
                ""
            },
            t.block_n,
            t.warps,
            t.stages,
            t.splits
        )
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        let engine = match t.engine {
            Engine::Triton | Engine::Tma => t.engine,
            _ => Engine::Mma,
        };
        TileParams {
            // block_m picks the mma engine's head tile: 8 (swapped) or the 16-row default (0)
            block_m: match (engine, t.block_m) {
                (Engine::Mma, DECODE_ROWS) => 0,
                (Engine::Mma, m) => m,
                _ => 0,
            },
            engine,
            ..t
        }
    }

    fn check_tile(&self, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        const DECODE_STAGES: [u32; 6] = [1, 2, 3, 4, 5, 6];
        let op = Op::Decode;
        if t.engine == Engine::Triton {
            check_triton_tile(op, t, false, true, true)?;
        } else if t.engine == Engine::Tma {
            one_of(op, "head_dim", spec.head_dim(), &[64, 128], "64, 128 (tma)")?;
            one_of(op, "block_n", t.block_n, &[16, 32, 64], "16, 32, 64 (tma)")?;
            one_of(
                op,
                "warps",
                t.warps,
                &[3, 5, 9],
                "3, 5, 9 (tma: a producer warp and 2, 4 or 8 consumers)",
            )?;
            one_of(op, "stages", t.stages, &[2, 4, 6, 8], "2, 4, 6, 8 (tma)")?;
            // each stage's tiles must all go to one consumer warp (templates/decode_sm90a.cu)
            if !t.stages.is_multiple_of(t.warps - 1) {
                return Err(TileError::Field {
                    op,
                    field: "stages",
                    value: t.stages,
                    accepted: "a multiple of the consumer warps, warps - 1 (tma: 2, 4, 6, 8 with 3 warps; 4, 8 with 5; 8 with 9)",
                });
            }
        } else {
            one_of(
                op,
                "block_m",
                t.block_m,
                &[0, DECODE_ROWS_KQ],
                "0 or 16 (16 query heads per tile), 8 (the swapped tile: keys as the MMA's M)",
            )?;
            one_of(op, "block_n", t.block_n, &[16, 32, 64], "16, 32, 64")?;
            one_of(op, "warps", t.warps, &WARPS, "1, 2, 4, 8")?;
            // deeper pipelines than the prefill's: a few blocks per device stream long rows at
            // small batches (shared memory per block bounds them: the fit check)
            one_of(op, "stages", t.stages, &DECODE_STAGES, "1..=6")?;
        }
        if t.splits > MAX_SPLITS {
            return Err(TileError::Field {
                op,
                field: "splits",
                value: t.splits,
                accepted: "0 (automatic) or 1..=128",
            });
        }
        Ok(())
    }

    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32 {
        if t.engine == Engine::Triton {
            return 0; // Triton's own layout: the loader takes it from the artifact
        }
        let d = spec.head_dim();
        if t.engine == Engine::Tma {
            // templates/decode_sm90a.cu's SMEM_BYTES: alignment slack, the padded query tile
            // rounded to 1 KiB, the K/V ring (or the warp merge, if larger), the mbarriers and
            // the last-block flag
            let q = (DECODE_ROWS * (d + SMEM_PAD) * 2).div_ceil(1024) * 1024;
            let ring = t.stages * 2 * t.block_n * d * 2;
            let merge = (t.warps - 1) * (DECODE_ROWS * d + 2 * DECODE_ROWS) * 4;
            return 1024 + q + ring.max(merge) + 16 * t.stages + 16;
        }
        let rows = decode_rows(t);
        let row = (d + SMEM_PAD) * 2;
        let q = rows * row;
        // K/V rows: 128-byte-swizzled panels, unpadded, or padded rows (decode.cu's KVSW)
        let kv_row = if decode_kv_swizzled(d) { d * 2 } else { row };
        let kv = t.warps * t.stages * 2 * t.block_n * kv_row;
        let combine = t.warps * (rows * d + 2 * rows) * 4;
        q + kv.max(combine)
    }

    fn default_tiles(&self, spec: &KernelSpec, _arch: Arch) -> Vec<TileParams> {
        let rows16 = vec![tile(16, 4, 2), tile(16, 2, 2), tile(16, 1, 1)];
        if spec.group_or_one() > DECODE_ROWS_KQ {
            // more heads than the swapped tile's 8 columns: it would read K and V once per 8
            return rows16;
        }
        // Groups of 8 heads or fewer: the swapped head tile, three stages (runs 52-53, H200,
        // against n16_w4_s2: 2 % faster at B=64 and 4 % at B=256, within 1 % at B=8, B=1 and
        // the D=64 shape; at two stages it runs three blocks per multiprocessor, which loses at B=64)
        let mut v = vec![TileParams {
            block_m: DECODE_ROWS_KQ,
            ..tile(16, 4, 3)
        }];
        v.extend(rows16);
        v
    }

    fn triton_default(&self, _spec: &KernelSpec) -> TileParams {
        TileParams {
            engine: Engine::Triton,
            ..tile(32, 4, 2)
        }
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        let entries = self.entry_points(spec, &tile.params());
        vec![
            TritonKernel {
                function: "fe_decode",
                entry: entries[0].clone(),
                aligned: false,
                constexprs: constexprs(
                    spec,
                    &[
                        ("W", Const::Int(spec.window_or_zero())),
                        ("C", Const::Int(spec.chunk())),
                        ("SLIDING", Const::Bool(spec.sliding())),
                        ("GROUP", Const::Int(spec.group_or_one())),
                        ("BLOCK_H", Const::Int(triton_block_h(spec.group_or_one()))),
                        ("BLOCK_N", Const::Int(tile.block_n())),
                        ("PAGED", Const::Bool(false)),
                    ],
                ),
            },
            TritonKernel {
                function: "fe_decode_combine",
                entry: entries[1].clone(),
                aligned: false,
                constexprs: constexprs(spec, &[]),
            },
        ]
    }

    fn flops(&self, w: &Workload) -> f64 {
        4.0 * w.spec.head_dim() as f64 * (w.b * w.h * visible_items(w)) as f64
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let d = w.spec.head_dim() as usize;
        let e = 2;
        (w.b * w.hkv * visible_items(w) * d * e * 2 + w.b * w.h * (2 * d * e + 4) + w.b * 4) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Bytes
    }

    fn bucket_rows(&self, b: usize, _h: usize, hkv: usize) -> usize {
        b * hkv
    }

    fn describe(&self, w: &Workload) -> String {
        format!(
            "B={} H={} Hkv={} pos={}",
            w.b,
            w.h,
            w.hkv,
            w.n.saturating_sub(1)
        )
    }

    fn describe_problem(&self, p: &Problem) -> String {
        let w = &p.workload;
        let shown: Vec<String> = p.lens.iter().take(4).map(|l| l.to_string()).collect();
        format!(
            "B={} H={} lens=[{}{}]{}",
            w.b,
            w.h,
            shown.join(","),
            if p.lens.len() > 4 { ",..." } else { "" },
            p.splits.map(|s| format!(" splits={s}")).unwrap_or_default()
        )
    }

    fn problem(&self, w: Workload) -> Problem {
        Problem {
            lens: vec![w.n as i32; w.b],
            counts: Vec::new(),
            page: 0,
            summary_rows: w.max_nc(),
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
        vec![
            desc("q", e, &[w.b, w.h, d], "[B, H, D]"),
            desc("k_ring", e, &[w.b, win, w.hkv, d], "[B, W, Hkv, D]"),
            desc("v_ring", e, &[w.b, win, w.hkv, d], "[B, W, Hkv, D]"),
            desc(
                "ks",
                e,
                &[w.b, p.summary_rows, w.hkv, d],
                "[B, MAXNC, Hkv, D]",
            ),
            desc(
                "vs",
                e,
                &[w.b, p.summary_rows, w.hkv, d],
                "[B, MAXNC, Hkv, D]",
            ),
            desc("len", ElemType::I32, &[w.b], "int32 [B]"),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        vec![
            desc("o", p.elem(), &[w.b, w.h, p.d()], "[B, H, D]"),
            desc("lse", ElemType::F32, &[w.b, w.h], "[B, H]"),
        ]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::Decode)), inputs)?;
        let (q, kr, ks) = (&inputs[0].1, &inputs[1].1, &inputs[3].1);
        let hkv = kr[2];
        if hkv == 0 || q[1] % hkv != 0 {
            return Err(format!(
                "q has {} heads, not a multiple of k_ring's {hkv} kv heads",
                q[1]
            ));
        }
        // The ring's length is the window when no flag gives it.
        let flags = SpecParams {
            window: flags.window.or(Some(kr[1] as u32)),
            ..*flags
        };
        let spec = spec_from(Op::Decode, &flags, q[2], dtype, Some((q[1] / hkv) as u32))?;
        let lens = lens
            .ok_or("decode reads the int32 tensor len [B]")?
            .to_vec();
        if lens.len() != q[0] {
            return Err(format!(
                "tensor len has {} entries, q has B = {}",
                lens.len(),
                q[0]
            ));
        }
        let n = lens.iter().copied().max().unwrap_or(1).max(1) as usize;
        let mut p = Problem::new(Workload::new(spec, q[0], n, q[1], hkv));
        p.lens = lens;
        p.summary_rows = ks[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        // A fresh sequence, one inside the first chunk, one just past the window, and one as
        // long as the workload's (capped): every visibility case of the ring and the summaries.
        let win = w.spec.window_or_zero() as usize;
        let c = w.spec.chunk() as usize;
        let hkv = w.hkv.clamp(1, 2);
        let h = (w.h / w.hkv.max(1)).max(1) * hkv;
        let lens: Vec<i32> = [
            1,
            (c as i32) - 1,
            win as i32 + 1,
            w.n.min(3 * win + c + 5) as i32,
        ]
        .into_iter()
        .map(|l| l.max(1))
        .collect();
        let n = *lens.iter().max().expect("non-empty") as usize;
        let mut p = Problem::new(Workload::new(
            w.spec,
            lens.len(),
            n,
            h,
            h / w.spec.group_or_one() as usize,
        ));
        p.lens = lens;
        p.summary_rows = n / c + 1;
        CheckProblem {
            problem: p,
            large_logits: true,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        // Stale ring slots and unused summaries hold random values the kernel must ignore.
        super::draw_with_ints(p, &self.inputs(p), 5, large, draw, &[&p.lens])
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let f: Vec<Vec<f64>> = inputs[..5].iter().map(HostTensor::to_f64).collect();
        let geo = decode_shape(p);
        let (o, lse) =
            reference::decode(&geo, &p.lens, &f[0], &f[1], &f[2], &f[3], &f[4], p.scale());
        let mags = reference::decode_lse_magnitudes(&geo, &p.lens, &f[0], &f[1], &f[3], p.scale());
        Reference {
            outputs: vec![o, lse],
            checks: vec![Check::Relative, Check::Lse(mags)],
        }
    }

    fn splits(&self, p: &Problem, tile: &Tile, sm_count: u32) -> usize {
        let w = &p.workload;
        p.splits.unwrap_or_else(|| {
            decode_splits(
                &w.spec,
                tile,
                w.b,
                w.hkv,
                w.spec.window_or_zero() as usize + p.summary_rows,
                sm_count,
            )
        })
    }

    fn workspace(&self, p: &Problem, _tile: &Tile, splits: usize) -> usize {
        let w = &p.workload;
        decode_workspace_elems(w.b, w.h, p.d(), splits)
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        let a = DecodeArgs::from_op_args(args)?;
        let Some((main, combine)) = plan_decode(spec, tile, &a, args.splits, args.workspace)?
        else {
            return Ok(Vec::new());
        };
        if tile.engine() == Engine::Triton {
            let p = &main.params;
            let g = spec.group_or_one();
            let head_tiles = g.div_ceil(triton_block_h(g)) as usize;
            let grid = (
                main.grid.0,
                grid_dim("Hkv x head tiles", p.hkv as usize * head_tiles, 65535)?,
                main.grid.2,
            );
            let mut steps = vec![Step::triton(
                0,
                grid,
                tile.warps(),
                triton_args(p, &Paging::default()),
            )];
            if let Some(c) = combine {
                steps.push(Step::triton(
                    1,
                    c.grid,
                    tile.warps(),
                    triton_combine_args(&c.params),
                ));
            }
            return Ok(steps);
        }
        if tile.engine() == Engine::Tma {
            return tma_decode_steps(spec, tile, &a, &main, device);
        }
        Ok(cuda_decode_steps(&main, combine.as_ref(), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DType;

    fn spec() -> KernelSpec {
        KernelSpec::new(
            Op::Decode,
            &SpecParams {
                head_dim: Some(64),
                window: Some(128),
                chunk: Some(8),
                group: Some(4),
                dtype: Some(DType::Bf16),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn t(name: &str, dt: ElemType, shape: &[usize]) -> TensorArg {
        TensorArg::contiguous(name, 0x1000, dt, shape)
    }

    #[test]
    fn param_block_matches_the_template_layout() {
        use std::mem::offset_of;
        // templates/decode.cu's DecodeParams: 10 pointers, 18 strides, 6 ints and a float, the
        // paging fields, the counters
        assert_eq!(std::mem::size_of::<DecodeParams>(), 288);
        assert_eq!(offset_of!(DecodeParams, q_sb), 80);
        assert_eq!(offset_of!(DecodeParams, b), 224);
        assert_eq!(offset_of!(DecodeParams, scale_log2), 244);
        assert_eq!(offset_of!(DecodeParams, page), 248);
        assert_eq!(offset_of!(DecodeParams, slot), 256);
        assert_eq!(offset_of!(DecodeParams, pt_sb), 272);
        assert_eq!(offset_of!(DecodeParams, counters), 280);
    }

    #[test]
    fn the_visible_raw_keys_are_the_ring_slots_from_zero() {
        // what the tma decode relies on to read the ring in slot order: the slots holding the
        // visible raw keys of the query at `pos` are exactly [0, n_local)
        use crate::visibility::key_range;
        for w in [1usize, 3, 16, 64, 128] {
            for local in [LocalMode::Block, LocalMode::Sliding] {
                for pos in 0..5 * w + 3 {
                    let keys = key_range(pos, w, local);
                    let mut slots: Vec<usize> = keys.clone().map(|p| p % w).collect();
                    slots.sort_unstable();
                    let n_local = keys.len();
                    assert_eq!(
                        slots,
                        (0..n_local).collect::<Vec<_>>(),
                        "W={w} {local:?} pos={pos}"
                    );
                    // and each of those slots holds a visible position (the ring keeps the
                    // last W tokens, the new one included)
                    for s in 0..n_local {
                        let held = pos - ((pos + w - s) % w);
                        assert!(keys.contains(&held), "W={w} {local:?} pos={pos} slot {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn block_m_picks_the_head_tile() {
        let s = spec(); // group 4
        let sm90a: Arch = "sm_90a".parse().unwrap();
        let default_name = |s: &KernelSpec| Tile::default_for(s, sm90a).name(Op::Decode);
        // the default at groups of 8 heads or fewer is the swapped tile
        assert_eq!(default_name(&s), "m8_n16_w4_s3_k0");
        let base = Tile::default_for(&s, sm90a)
            .with_overrides(&s, "block_m=0")
            .unwrap();
        let kq = base.with_overrides(&s, "block_m=8").unwrap();
        assert_eq!(kq.decode_rows(), DECODE_ROWS_KQ);
        assert_eq!(base.decode_rows(), DECODE_ROWS);
        assert!(
            kq.name(Op::Decode).starts_with("m8_"),
            "{}",
            kq.name(Op::Decode)
        );
        assert!(!base.name(Op::Decode).starts_with("m8_"));
        // 16 is the default head tile's height: it normalizes to the same tile (same name, key)
        assert_eq!(base.with_overrides(&s, "block_m=16").unwrap(), base);
        // other heights are refused with the accepted values
        let e = base
            .with_overrides(&s, "block_m=32")
            .unwrap_err()
            .to_string();
        assert!(e.contains("block_m") && e.contains('8'), "{e}");
        // the tma and triton engines have one head tile: block_m is dropped
        let tma = base
            .with_overrides(&s, "engine=tma,warps=5,block_n=32,stages=4,block_m=8")
            .unwrap();
        assert_eq!(tma.decode_rows(), DECODE_ROWS);
        assert_eq!(tma.block_m(), 0);
        // half the query rows: less shared memory for the query tile and the warp merge
        assert!(kq.smem_bytes(&s) < base.smem_bytes(&s));
        // the swapped tile renders with 8 rows and as many head tiles as 8-head groups
        let r = crate::render::RenderContext::new(&s, &kq);
        assert_eq!((r.decode_rows, r.head_tiles), (8, 1));
        let s20 = KernelSpec::new(
            Op::Decode,
            &SpecParams {
                head_dim: Some(128),
                window: Some(128),
                chunk: Some(8),
                group: Some(20),
                dtype: Some(DType::F16),
                ..Default::default()
            },
        )
        .unwrap();
        // more heads than 8: the 16-row tile by default (the swapped one would read K/V 3 times)
        assert_eq!(default_name(&s20), "n16_w4_s2_k0");
        let kq20 = Tile::default_for(&s20, sm90a)
            .with_overrides(&s20, "block_m=8")
            .unwrap();
        let r = crate::render::RenderContext::new(&s20, &kq20);
        assert_eq!((r.decode_rows, r.head_tiles), (8, 3));
        // and the planner counts its blocks per head tile: 3 head tiles of kv head 1 at B = 1
        // give 3 blocks, so 132 multiprocessors take 44 splits (capped by the keys per split)
        assert_eq!(decode_splits(&s20, &kq20, 1, 1, 1 << 20, 132), 44);
    }

    #[test]
    fn the_tma_decode_plans_one_launch_with_its_maps_and_counters() {
        use std::mem::offset_of;
        assert_eq!(std::mem::size_of::<DecodeTmaParams>(), 896);
        assert_eq!(offset_of!(DecodeTmaParams, d), 512);
        let s = spec();
        let sm90a: Arch = "sm_90a".parse().unwrap();
        let tile = Tile::default_for(&s, sm90a)
            .with_overrides(&s, "engine=tma,warps=5,block_n=32,stages=4")
            .unwrap();
        tile.validate_for(&s, sm90a).unwrap();
        assert!(tile.validate_for(&s, Arch::new(8, 0)).is_err());
        // stages must be a multiple of the consumer warps (one warp per stage's tiles)
        assert!(
            Tile::default_for(&s, sm90a)
                .with_overrides(&s, "engine=tma,warps=5,block_n=32,stages=6")
                .is_err()
        );
        assert_eq!(s.entry_points(&tile), [s.name()]);
        let e = ElemType::Bf16;
        let a = DecodeArgs {
            q: t("q", e, &[2, 8, 64]),
            k_ring: t("k_ring", e, &[2, 128, 2, 64]),
            v_ring: t("v_ring", e, &[2, 128, 2, 64]),
            ks: t("ks", e, &[2, 40, 2, 64]),
            vs: t("vs", e, &[2, 40, 2, 64]),
            len: t("len", ElemType::I32, &[2]),
            o: t("o", e, &[2, 8, 64]),
            lse: t("lse", ElemType::F32, &[2, 8]),
            scale: None,
        };
        let need = decode_workspace_elems(2, 8, 64, 4);
        let args = a.to_op_args(4, Some((0x2000, need)));
        let steps = Decode
            .plan(&s, &tile, &args, DeviceFacts::new(132))
            .unwrap();
        assert_eq!(steps.len(), 1);
        let st = &steps[0];
        assert_eq!((st.grid, st.block), ((4, 2, 2), (160, 1, 1)));
        assert_eq!(st.smem, tile.smem_bytes(&s));
        assert_eq!(
            st.counters,
            Some(Counters {
                offset: 512 + 280,
                ints: 4
            })
        );
        let maps: Vec<_> = st.tensor_maps.iter().map(|m| (m.0, m.1.dims)).collect();
        assert_eq!(
            maps,
            [
                (0, [64, 2, 128, 2]),
                (128, [64, 2, 128, 2]),
                (256, [64, 2, 40, 2]),
                (384, [64, 2, 40, 2])
            ]
        );
        assert!(st.tensor_maps.iter().all(|m| m.1.boxes == [64, 1, 32, 1]));
        // under capture with no counters ready it refuses, saying what to do
        let capturing = DeviceFacts {
            counter_limit: Some(0),
            ..DeviceFacts::new(132)
        };
        assert!(matches!(
            Decode.plan(&s, &tile, &args, capturing),
            Err(LaunchError::Size(m)) if m.contains("launch it once")
        ));
        // unsplit: no counters needed
        let one = Decode
            .plan(&s, &tile, &a.to_op_args(1, None), capturing)
            .unwrap();
        assert!(one[0].counters.is_none());
    }

    #[test]
    fn decode_splits_and_workspace() {
        let s = spec();
        let tile = Tile::default_for(&s, Arch::new(9, 0));
        // 64 sequences x 8 kv heads fill 132 SMs: no split.
        assert_eq!(decode_splits(&s, &tile, 64, 8, 1023, 132), 1);
        // at most one block per SM, rounded down: 8 x 8 blocks take 2 splits, 1 x 8 take 16
        assert_eq!(decode_splits(&s, &tile, 8, 8, 1 << 20, 132), 2);
        assert_eq!(decode_splits(&s, &tile, 1, 8, 1 << 20, 132), 16);
        // one sequence, one kv head: split up to what the items allow
        assert_eq!(decode_splits(&s, &tile, 1, 1, 1023, 132), 16);
        assert_eq!(decode_splits(&s, &tile, 1, 1, 10, 132), 1);
        let e = ElemType::Bf16;
        let a = DecodeArgs {
            q: t("q", e, &[2, 8, 64]),
            k_ring: t("k_ring", e, &[2, 128, 2, 64]),
            v_ring: t("v_ring", e, &[2, 128, 2, 64]),
            ks: t("ks", e, &[2, 40, 2, 64]),
            vs: t("vs", e, &[2, 40, 2, 64]),
            len: t("len", ElemType::I32, &[2]),
            o: t("o", e, &[2, 8, 64]),
            lse: t("lse", ElemType::F32, &[2, 8]),
            scale: None,
        };
        let (main, comb) = plan_decode(&s, &tile, &a, 1, None).unwrap().unwrap();
        assert_eq!(main.grid, (1, 2, 2));
        assert!(comb.is_none());
        assert!(plan_decode(&s, &tile, &a, 4, None).is_err());
        let need = decode_workspace_elems(2, 8, 64, 4);
        let (main, comb) = plan_decode(&s, &tile, &a, 4, Some((0x2000, need)))
            .unwrap()
            .unwrap();
        assert_eq!(main.grid, (4, 2, 2));
        assert_eq!(comb.as_ref().unwrap().grid, (8, 2, 1));
        assert_eq!(main.params.ws_ml, 0x2000 + (4 * 2 * 8 * 64 * 4) as u64);
        // the CUDA kernel merges its splits in its last block: one launch, a counter per
        // sequence and head tile (2 x 2), at the parameter block's last field
        let comb = comb.unwrap();
        let steps = cuda_decode_steps(&main, Some(&comb), DeviceFacts::new(132));
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].counters,
            Some(Counters {
                offset: 280,
                ints: 4
            })
        );
        // under capture with too few counters ready: the combine launch instead
        let capturing = DeviceFacts {
            counter_limit: Some(2),
            ..DeviceFacts::new(132)
        };
        let steps = cuda_decode_steps(&main, Some(&comb), capturing);
        assert_eq!(steps.len(), 2);
        assert!(steps[0].counters.is_none() && steps[1].function == 1);
        assert_eq!(cuda_decode_steps(&main, None, capturing).len(), 1);

        // the generic plan: one launch merging in its last blocks; under capture with no
        // counters ready, the main kernel, then the combine kernel (entry point 1)
        let dev = DeviceFacts::new(132);
        let split = a.to_op_args(4, Some((0x2000, need)));
        let steps = Decode.plan(&s, &tile, &split, dev).unwrap();
        assert_eq!(steps.len(), 1);
        assert!(steps[0].counters.is_some());
        let steps = Decode.plan(&s, &tile, &split, capturing).unwrap();
        assert_eq!(steps.iter().map(|s| s.function).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(steps[1].grid, (8, 2, 1));
        let steps = Decode.plan(&s, &tile, &a.to_op_args(1, None), dev).unwrap();
        assert_eq!(steps.len(), 1);
    }
}
