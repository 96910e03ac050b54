//! prefill: `q [B,N,H,D]`, `k, v [B,N,Hkv,D]`, `ks, vs [B,NC,Hkv,D]` (NC >= N/C) ->
//! `o [B,N,H,D]`, `lse [B,H,N]` fp32. Two engines: `mma.sync` tiles (templates/prefill.cu,
//! sm_80+) and the Hopper kernel (templates/prefill_sm90a.cu: wgmma, TMA, warp specialization,
//! a persistent grid with a per-stream tile counter; sm_90a only).

use std::mem::offset_of;

use super::launch::{
    ArgList, Counters, LOG2E, LaunchError, LaunchPlan, OpArgs, Step, TensorMap, TensorMapSpec,
    check_op, checked_scale, expect_chunk_rows, expect_dtype, expect_shape, expect_vector_layout,
    grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference, amplify_rows};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel,
    check_triton_tile, common_dtype, constexprs, desc, probe_problem, spec_from,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference::{self, AttnShape};
use crate::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{
    BLOCK_M, BLOCK_N, Engine, SMEM_PAD, STAGES, Tile, TileError, TileParams, WARPS, one_of,
};
use crate::visibility::count_prefill_pairs;
use crate::workload::Workload;

/// Shared memory one block may have on sm_90 (227 KiB): the Hopper template uses two Q buffers when
/// they fit in it.
const SM90_SMEM_PER_BLOCK: u32 = 227 * 1024;

/// The prefill op.
pub struct Prefill;

/// The name of a tile that uses block_m, block_n, warps and stages, with its engine's prefix
/// (e.g. `wg_m128_n128_w12_s2`, `m128_n32_w4_s2`): the prefill's and the extend's.
pub(crate) fn tile_name_mnws(t: &TileParams) -> String {
    format!(
        "{}m{}_n{}_w{}_s{}",
        super::engine_prefix(t.engine),
        t.block_m,
        t.block_n,
        t.warps,
        t.stages
    )
}

/// The rules of the Hopper kernel's tiles (templates/prefill_sm90a.cu: prefill and extend).
pub(crate) fn check_wgmma_tile(op: Op, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
    one_of(
        op,
        "head_dim",
        spec.head_dim(),
        &[64, 128, 256],
        "64, 128, 256 (wgmma)",
    )?;
    one_of(
        op,
        "warps",
        t.warps,
        &[12, 16],
        "12, 16 (wgmma: a producer warpgroup and 2 or 3 consumers)",
    )?;
    if t.block_m != 64 * (t.warps / 4 - 1) {
        return Err(TileError::Field {
            op,
            field: "block_m",
            value: t.block_m,
            accepted: "64 x consumer warpgroups (128 with 12 warps, 192 with 16) for wgmma",
        });
    }
    one_of(op, "block_n", t.block_n, &[64, 128], "64, 128 (wgmma)")?;
    one_of(
        op,
        "stages",
        t.stages,
        &[2, 3, 4, 5, 6, 7, 8],
        "2..=8 (wgmma)",
    )
}

/// The Hopper kernel's dynamic shared memory: 1 KiB of alignment slack, Q (two buffers where they
/// fit in 227 KiB, else one) and the K/V stages in 128-byte-swizzled panels, and the mbarriers
/// (full and empty for K and V per stage, full and empty for each Q buffer) plus the two tile
/// slots: the template's SMEM_BYTES, rule for rule.
pub(crate) fn wgmma_smem_bytes(spec: &KernelSpec, t: &TileParams) -> u32 {
    let d = spec.head_dim();
    let with_q =
        |q: u32| 1024 + (q * t.block_m + 2 * t.stages * t.block_n) * d * 2 + 8 * (4 * t.stages + 5);
    if with_q(2) <= SM90_SMEM_PER_BLOCK {
        with_q(2)
    } else {
        with_q(1)
    }
}

/// Prefill tensors: `q, o [B,N,H,D]`, `k, v [B,N,Hkv,D]`, `ks, vs [B,NC,Hkv,D]` with NC >= N/C,
/// `lse [B,H,N]` fp32.
#[derive(Clone, Debug)]
pub struct PrefillArgs {
    /// Queries `[B, N, H, D]`.
    pub q: TensorArg,
    /// Keys `[B, N, Hkv, D]`.
    pub k: TensorArg,
    /// Values `[B, N, Hkv, D]`.
    pub v: TensorArg,
    /// Summary keys `[B, NC, Hkv, D]`, NC >= N/C.
    pub ks: TensorArg,
    /// Summary values `[B, NC, Hkv, D]`.
    pub vs: TensorArg,
    /// Output `[B, N, H, D]` (written).
    pub o: TensorArg,
    /// fp32 log-sum-exp `[B, H, N]` (written).
    pub lse: TensorArg,
    /// Softmax scale (default `1/sqrt(D)`).
    pub scale: Option<f32>,
}

impl PrefillArgs {
    /// The generic form of these arguments.
    pub fn to_op_args(&self) -> OpArgs {
        OpArgs {
            tensors: vec![
                self.q.clone(),
                self.k.clone(),
                self.v.clone(),
                self.ks.clone(),
                self.vs.clone(),
                self.o.clone(),
                self.lse.clone(),
            ],
            scale: self.scale,
            splits: 1,
            workspace: None,
            ..OpArgs::default() // no backward: deterministic is prefill_bwd's
        }
    }

    fn from_op_args(a: &OpArgs) -> Result<PrefillArgs, LaunchError> {
        let t = a.expect(Op::Prefill, &["q", "k", "v", "ks", "vs", "o", "lse"])?;
        Ok(PrefillArgs {
            q: t[0].clone(),
            k: t[1].clone(),
            v: t[2].clone(),
            ks: t[3].clone(),
            vs: t[4].clone(),
            o: t[5].clone(),
            lse: t[6].clone(),
            scale: a.scale,
        })
    }
}

/// Mirrors `PrefillParams` in templates/prefill.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct PrefillParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub ks: u64,
    pub vs: u64,
    pub o: u64,
    pub lse: u64,
    pub q_sb: i64,
    pub q_st: i64,
    pub q_sh: i64,
    pub k_sb: i64,
    pub k_st: i64,
    pub k_sh: i64,
    pub v_sb: i64,
    pub v_st: i64,
    pub v_sh: i64,
    pub ks_sb: i64,
    pub ks_st: i64,
    pub ks_sh: i64,
    pub vs_sb: i64,
    pub vs_st: i64,
    pub vs_sh: i64,
    pub o_sb: i64,
    pub o_st: i64,
    pub o_sh: i64,
    pub lse_sb: i64,
    pub lse_sh: i64,
    pub n: i32,
    pub h: i32,
    pub hkv: i32,
    pub nc: i32,
    pub scale_log2: f32,
    pub reserved: i32,
}

/// Mirrors `PrefillSm90Params` in templates/prefill_sm90a.cu (768 bytes).
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct PrefillSm90Params {
    pub tm_q: TensorMap,
    pub tm_k: TensorMap,
    pub tm_v: TensorMap,
    pub tm_ks: TensorMap,
    pub tm_vs: TensorMap,
    pub o: u64,
    pub lse: u64,
    pub o_sb: i64,
    pub o_st: i64,
    pub o_sh: i64,
    pub lse_sb: i64,
    pub lse_sh: i64,
    pub n: i32,
    pub h: i32,
    pub hkv: i32,
    pub nc: i32,
    pub scale_log2: f32,
    pub batch: i32,
    /// Null: static persistent schedule; else two ints, zero before the first launch (the kernel
    /// leaves them at zero).
    pub tile_counter: u64,
    /// Extend: int32 L0 per sequence (`n` is then Tmax and `nc` the summary slots).
    pub start: u64,
    /// Extend: int32 T per sequence.
    pub count: u64,
    pub reserved: [i32; 6],
}

/// The sizes of a checked prefill call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PrefillSizes {
    pub(crate) b: usize,
    pub(crate) n: usize,
    pub(crate) h: usize,
    pub(crate) hkv: usize,
    /// Complete chunks N/C (the summaries some row may see).
    pub(crate) nc: usize,
    pub(crate) scale: f32,
}

/// Checks prefill tensors against `spec`; `None` when there is nothing to compute.
fn check_prefill(spec: &KernelSpec, a: &PrefillArgs) -> Result<Option<PrefillSizes>, LaunchError> {
    check_op(spec, Op::Prefill)?;
    check_prefill_tensors(spec, a)
}

/// [`check_prefill`] without the op check (the backward takes the same tensors).
pub(crate) fn check_prefill_tensors(
    spec: &KernelSpec,
    a: &PrefillArgs,
) -> Result<Option<PrefillSizes>, LaunchError> {
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    for t in [&a.q, &a.k, &a.v, &a.ks, &a.vs, &a.o] {
        expect_dtype(t, et)?;
    }
    expect_dtype(&a.lse, ElemType::F32)?;
    if a.q.shape.len() != 4 {
        expect_shape(&a.q, &[None, None, None, Some(d)], "[B, N, H, D]")?;
    }
    let (b, n, h) = (a.q.shape[0], a.q.shape[1], a.q.shape[2]);
    expect_shape(&a.q, &[Some(b), Some(n), Some(h), Some(d)], "[B, N, H, D]")?;
    if a.k.shape.len() != 4 {
        expect_shape(&a.k, &[Some(b), Some(n), None, Some(d)], "[B, N, Hkv, D]")?;
    }
    let hkv = a.k.shape[2];
    if hkv == 0 || h % hkv != 0 {
        return Err(LaunchError::Shape {
            name: "k".into(),
            got: a.k.shape.clone(),
            expected: format!("a kv head count that divides H = {h}"),
        });
    }
    expect_shape(
        &a.k,
        &[Some(b), Some(n), Some(hkv), Some(d)],
        "[B, N, Hkv, D]",
    )?;
    expect_shape(
        &a.v,
        &[Some(b), Some(n), Some(hkv), Some(d)],
        "[B, N, Hkv, D]",
    )?;
    let nc = n / spec.chunk() as usize;
    for t in [&a.ks, &a.vs] {
        expect_chunk_rows(t, b, nc, hkv, d, "Hkv")?;
    }
    expect_shape(&a.o, &[Some(b), Some(n), Some(h), Some(d)], "[B, N, H, D]")?;
    expect_shape(&a.lse, &[Some(b), Some(h), Some(n)], "[B, H, N]")?;
    if a.lse.strides[2] != 1 {
        return Err(LaunchError::Layout {
            name: a.lse.name.clone(),
            problem: "the token dimension must be contiguous".into(),
        });
    }
    if b == 0 || n == 0 || h == 0 {
        return Ok(None);
    }
    for t in [&a.q, &a.k, &a.v, &a.o] {
        expect_vector_layout(t)?;
    }
    // ks, vs with rows are checked even when N < C: the Triton kernels are compiled for 16-byte
    // access to them (their copies are issued, zero-sized, before a loop that runs no time)
    if a.ks.shape[1] > 0 {
        expect_vector_layout(&a.ks)?;
        expect_vector_layout(&a.vs)?;
    }
    if n > i32::MAX as usize {
        return Err(LaunchError::Size(format!("N = {n} is over {}", i32::MAX)));
    }
    let scale = checked_scale(a.scale, spec)?;
    Ok(Some(PrefillSizes {
        b,
        n,
        h,
        hkv,
        nc,
        scale,
    }))
}

/// Plans a prefill launch of the `mma` engine; `None` when there is nothing to compute (B = 0 or
/// N = 0).
pub fn plan_prefill(
    spec: &KernelSpec,
    tile: &Tile,
    a: &PrefillArgs,
) -> Result<Option<LaunchPlan<PrefillParams>>, LaunchError> {
    let Some(PrefillSizes {
        b,
        n,
        h,
        hkv,
        nc,
        scale,
    }) = check_prefill(spec, a)?
    else {
        return Ok(None);
    };
    let bm = tile.block_m() as usize;
    let params = PrefillParams {
        q: a.q.ptr,
        k: a.k.ptr,
        v: a.v.ptr,
        ks: a.ks.ptr,
        vs: a.vs.ptr,
        o: a.o.ptr,
        lse: a.lse.ptr,
        q_sb: a.q.stride(0),
        q_st: a.q.stride(1),
        q_sh: a.q.stride(2),
        k_sb: a.k.stride(0),
        k_st: a.k.stride(1),
        k_sh: a.k.stride(2),
        v_sb: a.v.stride(0),
        v_st: a.v.stride(1),
        v_sh: a.v.stride(2),
        ks_sb: a.ks.stride(0),
        ks_st: a.ks.stride(1),
        ks_sh: a.ks.stride(2),
        vs_sb: a.vs.stride(0),
        vs_st: a.vs.stride(1),
        vs_sh: a.vs.stride(2),
        o_sb: a.o.stride(0),
        o_st: a.o.stride(1),
        o_sh: a.o.stride(2),
        lse_sb: a.lse.stride(0),
        lse_sh: a.lse.stride(1),
        n: n as i32,
        h: h as i32,
        hkv: hkv as i32,
        nc: nc as i32,
        scale_log2: scale * LOG2E,
        reserved: 0,
    };
    Ok(Some(LaunchPlan {
        grid: (
            grid_dim("query blocks", n.div_ceil(bm), i32::MAX as usize)?,
            grid_dim("H", h, 65535)?,
            grid_dim("B", b, 65535)?,
        ),
        block: (tile.threads(), 1, 1),
        smem: tile.smem_bytes(spec),
        params,
    }))
}

/// A planned launch of the `wgmma` prefill: the geometry, the parameter block with its tensor maps
/// still to encode, and the maps' descriptions (q, k, v, ks, vs).
#[derive(Clone, Debug, PartialEq)]
pub struct Sm90PrefillPlan {
    /// Grid, block, shared memory and the parameter block (tensor maps zero).
    pub launch: LaunchPlan<PrefillSm90Params>,
    /// The tensor maps to encode into `tm_q .. tm_vs`, in that order.
    pub maps: [TensorMapSpec; 5],
}

/// Plans a prefill launch of the `wgmma` engine: a persistent grid of at most `sm_count` CTAs
/// walking the query tiles, heaviest first. `None` when there is nothing to compute.
pub fn plan_prefill_sm90(
    spec: &KernelSpec,
    tile: &Tile,
    a: &PrefillArgs,
    sm_count: u32,
) -> Result<Option<Sm90PrefillPlan>, LaunchError> {
    let Some(PrefillSizes {
        b,
        n,
        h,
        hkv,
        nc,
        scale,
    }) = check_prefill(spec, a)?
    else {
        return Ok(None);
    };
    if b > i32::MAX as usize || h > i32::MAX as usize {
        return Err(LaunchError::Size(format!(
            "B = {b} or H = {h} is over {}",
            i32::MAX
        )));
    }
    let bf16 = spec.dtype() == DType::Bf16;
    let (bm, bn) = (tile.block_m(), tile.block_n());
    let tiles = n.div_ceil(bm as usize) * h * b;
    let params = PrefillSm90Params {
        o: a.o.ptr,
        lse: a.lse.ptr,
        o_sb: a.o.stride(0),
        o_st: a.o.stride(1),
        o_sh: a.o.stride(2),
        lse_sb: a.lse.stride(0),
        lse_sh: a.lse.stride(1),
        n: n as i32,
        h: h as i32,
        hkv: hkv as i32,
        nc: nc as i32,
        scale_log2: scale * LOG2E,
        batch: b as i32,
        ..Default::default()
    };
    // With no summary rows the summary maps are never read (nc = 0) but must still encode: over
    // K and V then (an empty tensor's address may be null or unaligned).
    let (ks, vs, rows) = if a.ks.shape[1] > 0 {
        (&a.ks, &a.vs, a.ks.shape[1])
    } else {
        (&a.k, &a.v, n)
    };
    Ok(Some(Sm90PrefillPlan {
        launch: sm90_launch(spec, tile, tiles, sm_count, params)?,
        maps: [
            TensorMapSpec::of(&a.q, bf16, n, bm),
            TensorMapSpec::of(&a.k, bf16, n, bn),
            TensorMapSpec::of(&a.v, bf16, n, bn),
            TensorMapSpec::of(ks, bf16, rows, bn),
            TensorMapSpec::of(vs, bf16, rows, bn),
        ],
    }))
}

/// The Hopper kernel's launch (prefill and extend): a persistent grid of at most `sm_count`
/// CTAs over `tiles` query tiles, the tile's block and shared memory.
pub(crate) fn sm90_launch(
    spec: &KernelSpec,
    tile: &Tile,
    tiles: usize,
    sm_count: u32,
    params: PrefillSm90Params,
) -> Result<LaunchPlan<PrefillSm90Params>, LaunchError> {
    Ok(LaunchPlan {
        grid: (
            grid_dim(
                "persistent CTAs",
                tiles.min(sm_count.max(1) as usize),
                65535,
            )?,
            1,
            1,
        ),
        block: (tile.threads(), 1, 1),
        smem: tile.smem_bytes(spec),
        params,
    })
}

/// The Hopper kernel's step (prefill and extend): its five tensor maps at their fields, and
/// dynamic tile scheduling with the stream's counter pair, or the static schedule (a null
/// counter) where none may be allocated (a first launch under graph capture).
pub(crate) fn sm90_step(function: usize, plan: Sm90PrefillPlan, device: DeviceFacts) -> Step {
    let mut step = Step::of(function, &plan.launch);
    let slots = [
        offset_of!(PrefillSm90Params, tm_q),
        offset_of!(PrefillSm90Params, tm_k),
        offset_of!(PrefillSm90Params, tm_v),
        offset_of!(PrefillSm90Params, tm_ks),
        offset_of!(PrefillSm90Params, tm_vs),
    ];
    step.tensor_maps = slots.into_iter().zip(plan.maps).collect();
    if device.counters_allowed(2) {
        step.counters = Some(Counters {
            offset: offset_of!(PrefillSm90Params, tile_counter),
            ints: 2,
        });
    }
    step
}

/// The parameters of `fe_prefill` (triton/flasheva_triton.py), in order.
fn triton_args(p: &PrefillParams) -> ArgList {
    let mut a = ArgList::default();
    a.ptr("Q", p.q)
        .ptr("K", p.k)
        .ptr("V", p.v)
        .ptr("KS", p.ks)
        .ptr("VS", p.vs)
        .ptr("O", p.o)
        .ptr("LSE", p.lse);
    for (name, v) in [
        ("q_sb", p.q_sb),
        ("q_st", p.q_st),
        ("q_sh", p.q_sh),
        ("k_sb", p.k_sb),
        ("k_st", p.k_st),
        ("k_sh", p.k_sh),
        ("v_sb", p.v_sb),
        ("v_st", p.v_st),
        ("v_sh", p.v_sh),
        ("ks_sb", p.ks_sb),
        ("ks_st", p.ks_st),
        ("ks_sh", p.ks_sh),
        ("vs_sb", p.vs_sb),
        ("vs_st", p.vs_st),
        ("vs_sh", p.vs_sh),
        ("o_sb", p.o_sb),
        ("o_st", p.o_st),
        ("o_sh", p.o_sh),
        ("lse_sb", p.lse_sb),
        ("lse_sh", p.lse_sh),
    ] {
        a.i64(name, v);
    }
    a.i32("N", p.n)
        .i32("H", p.h)
        .i32("HKV", p.hkv)
        .i32("NC", p.nc)
        .f32("scale_log2", p.scale_log2);
    a
}

/// The reference's view of a prefill problem.
#[cfg(feature = "cli")]
pub(crate) fn attn_shape(p: &Problem) -> AttnShape {
    let w = &p.workload;
    AttnShape {
        b: w.b,
        n: w.n,
        h: w.h,
        hkv: w.hkv,
        d: p.d(),
        window: w.spec.window_or_zero() as usize,
        chunk: w.spec.chunk() as usize,
        local: w.spec.local().unwrap_or(LocalMode::Block),
    }
}

fn mma(block_m: u32, block_n: u32, warps: u32, stages: u32) -> TileParams {
    TileParams {
        engine: Engine::Mma,
        block_m,
        block_n,
        warps,
        stages,
        splits: 0,
    }
}

/// The Hopper kernel's default tile (prefill and extend, D = 64 and 128): 128 x 128, two consumer
/// warpgroups, the stage count measured best on the H200 (docs/VALIDATION.md, 2026-11-28): 2 for
/// D = 128, 4 for D = 64.
pub(crate) fn hopper_default(spec: &KernelSpec) -> TileParams {
    hopper(128, 128, 12, if spec.head_dim() <= 64 { 4 } else { 2 })
}

fn hopper(block_m: u32, block_n: u32, warps: u32, stages: u32) -> TileParams {
    TileParams {
        engine: Engine::Wgmma,
        ..mma(block_m, block_n, warps, stages)
    }
}

impl OpDef for Prefill {
    fn op(&self) -> Op {
        Op::Prefill
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        match tile.engine {
            Engine::Wgmma => "prefill_sm90a.cu",
            Engine::Triton => "flasheva_triton.py",
            _ => "prefill.cu",
        }
    }

    fn tile_name(&self, t: &TileParams) -> String {
        tile_name_mnws(t)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        TileParams { splits: 0, ..t }
    }

    fn check_tile(&self, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        let op = Op::Prefill;
        if t.engine == Engine::Triton {
            return check_triton_tile(op, t, true, true, true);
        }
        if t.engine == Engine::Wgmma {
            return check_wgmma_tile(op, spec, t);
        }
        one_of(op, "block_m", t.block_m, &BLOCK_M, "16, 32, 64, 128, 256")?;
        one_of(op, "block_n", t.block_n, &BLOCK_N, "16, 32, 64, 128")?;
        one_of(op, "warps", t.warps, &WARPS, "1, 2, 4, 8")?;
        one_of(op, "stages", t.stages, &STAGES, "1, 2, 3")?;
        let rows = t.warps * 16;
        let mt = t.block_m / rows;
        if !t.block_m.is_multiple_of(rows) || !(1..=2).contains(&mt) || mt * spec.head_dim() > 256 {
            return Err(TileError::Field {
                op,
                field: "block_m",
                value: t.block_m,
                accepted: "16 x warps, or 32 x warps when head_dim <= 128 (one or two 16-row tiles per warp)",
            });
        }
        Ok(())
    }

    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32 {
        let d = spec.head_dim();
        match t.engine {
            // Triton lays out its own shared memory: the loader takes it from the artifact.
            Engine::Triton => 0,
            Engine::Wgmma => wgmma_smem_bytes(spec, t),
            _ => (t.block_m + t.stages * 2 * t.block_n) * (d + SMEM_PAD) * 2,
        }
    }

    fn default_tiles(&self, spec: &KernelSpec, arch: Arch) -> Vec<TileParams> {
        let d = spec.head_dim();
        let mut v = Vec::new();
        if d <= 128 {
            // The Hopper kernel where it runs (validate_for accepts it on sm_90a only).
            v.push(hopper_default(spec));
            if arch.major >= 9 {
                // Two 16-row tiles per warp: the fastest tile measured on the H100
                // (docs/VALIDATION.md); on sm_8x ptxas spills it, so it is not their default.
                v.push(mma(128, 32, 4, 2));
            }
            v.push(mma(128, 64, 8, 2));
            v.push(mma(128, 32, 8, 2));
        }
        v.push(mma(64, 32, 4, 2));
        v.push(mma(64, 32, 4, 1));
        v.push(mma(32, 16, 2, 1));
        v
    }

    fn triton_default(&self, spec: &KernelSpec) -> TileParams {
        // No register spills with Triton 3.6 for sm_80 and sm_90a at D = 128 (checked with
        // ptxas -v); larger tiles are for the tuner to try.
        let t = if spec.head_dim() <= 128 {
            mma(64, 32, 4, 3)
        } else {
            mma(32, 32, 4, 2)
        };
        TileParams {
            engine: Engine::Triton,
            ..t
        }
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        vec![TritonKernel {
            function: "fe_prefill",
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
                ],
            ),
        }]
    }

    fn prune(&self, spec: &KernelSpec, tile: &Tile) -> Option<String> {
        let w = spec.window_or_zero();
        if spec.local() == Some(LocalMode::Block) {
            if tile.block_n() > w || !w.is_multiple_of(tile.block_n()) {
                return Some(format!(
                    "block_n {} does not divide the window {w}: tiles would straddle windows",
                    tile.block_n()
                ));
            }
            if tile.block_m() > 2 * w {
                return Some(format!(
                    "block_m {} spans more than two windows of {w}: most of each tile is masked",
                    tile.block_m()
                ));
            }
            return None;
        }
        if tile.block_m() > 2 * w.max(64) {
            return Some(format!(
                "block_m {} is more than twice the window {w}",
                tile.block_m()
            ));
        }
        None
    }

    fn flops(&self, w: &Workload) -> f64 {
        let local = w.spec.local().unwrap_or(LocalMode::Block);
        4.0 * w.spec.head_dim() as f64
            * (w.b * w.h) as f64
            * count_prefill_pairs(
                w.n,
                w.spec.window_or_zero() as usize,
                w.spec.chunk() as usize,
                local,
            ) as f64
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let d = w.spec.head_dim() as usize;
        let nc = w.n / w.spec.chunk() as usize;
        let e = 2;
        (w.b * w.n * d * e * (2 * w.h + 2 * w.hkv)
            + w.b * nc * w.hkv * d * e * 2
            + w.b * w.h * w.n * 4) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Flops
    }

    fn bucket_rows(&self, b: usize, h: usize, _hkv: usize) -> usize {
        b * h
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        vec![
            desc("q", e, &[w.b, w.n, w.h, d], "[B, N, H, D]"),
            desc("k", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("v", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("ks", e, &[w.b, p.summary_rows, w.hkv, d], "[B, NC, Hkv, D]"),
            desc("vs", e, &[w.b, p.summary_rows, w.hkv, d], "[B, NC, Hkv, D]"),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        vec![
            desc("o", p.elem(), &[w.b, w.n, w.h, p.d()], "[B, N, H, D]"),
            desc("lse", ElemType::F32, &[w.b, w.h, w.n], "[B, H, N]"),
        ]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        _lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::Prefill)), inputs)?;
        let (q, k, ks) = (&inputs[0].1, &inputs[1].1, &inputs[3].1);
        let spec = spec_from(Op::Prefill, flags, q[3], dtype, None)?;
        let mut p = Problem::new(Workload::new(spec, q[0], q[1], q[2], k[2]));
        p.summary_rows = ks[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        // Two windows and a chunk past them (every block kind, a partial chunk), at most the
        // workload's length; the workload's GQA group over at most two kv heads.
        let win = w.spec.window_or_zero() as usize;
        let c = w.spec.chunk() as usize;
        let hkv = w.hkv.clamp(1, 2);
        CheckProblem {
            problem: Problem::new(Workload::new(
                w.spec,
                1,
                (2 * win + c + 3).min(w.n.max(1)).max(1),
                (w.h / w.hkv.max(1)).max(1) * hkv,
                hkv,
            )),
            large_logits: true,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        let mut v: Vec<HostTensor> = self.inputs(p).iter().map(|t| draw(&t.shape, 1.0)).collect();
        if large {
            // q ~ U(-A, A), k ~ U(-1, 1): s * q.k has standard deviation A / 3 whatever D is.
            v[0] = amplify_rows(&v[0], p.d(), 3.0e4, draw);
        }
        v
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let sh = attn_shape(p);
        let f: Vec<Vec<f64>> = inputs.iter().map(HostTensor::to_f64).collect();
        let (o, lse) = reference::prefill(
            &sh,
            p.summary_rows,
            &f[0],
            &f[1],
            &f[2],
            &f[3],
            &f[4],
            p.scale(),
        );
        let mags =
            reference::prefill_lse_magnitudes(&sh, p.summary_rows, &f[0], &f[1], &f[3], p.scale());
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
        let a = PrefillArgs::from_op_args(args)?;
        match tile.engine() {
            Engine::Triton => {
                let Some(p) = plan_prefill(spec, tile, &a)? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Step::triton(
                    0,
                    p.grid,
                    tile.warps(),
                    triton_args(&p.params),
                )])
            }
            Engine::Wgmma => {
                let Some(plan) = plan_prefill_sm90(spec, tile, &a, device.sm_count)? else {
                    return Ok(Vec::new());
                };
                Ok(vec![sm90_step(0, plan, device)])
            }
            _ => Ok(plan_prefill(spec, tile, &a)?
                .map(|p| vec![Step::of(0, &p)])
                .unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(op: Op) -> KernelSpec {
        KernelSpec::new(
            op,
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

    fn prefill_args(b: usize, n: usize, h: usize, hkv: usize) -> PrefillArgs {
        let e = ElemType::Bf16;
        PrefillArgs {
            q: t("q", e, &[b, n, h, 64]),
            k: t("k", e, &[b, n, hkv, 64]),
            v: t("v", e, &[b, n, hkv, 64]),
            ks: t("ks", e, &[b, n / 8, hkv, 64]),
            vs: t("vs", e, &[b, n / 8, hkv, 64]),
            o: t("o", e, &[b, n, h, 64]),
            lse: t("lse", ElemType::F32, &[b, h, n]),
            scale: None,
        }
    }

    #[test]
    fn param_blocks_match_the_template_layouts() {
        assert_eq!(std::mem::size_of::<PrefillParams>(), 240);
        assert_eq!(std::mem::size_of::<PrefillSm90Params>(), 768);
        assert_eq!(std::mem::align_of::<PrefillSm90Params>(), 128);
        assert_eq!(offset_of!(PrefillSm90Params, o), 640);
        assert_eq!(offset_of!(PrefillSm90Params, n), 696);
        assert_eq!(offset_of!(PrefillSm90Params, scale_log2), 712);
        assert_eq!(offset_of!(PrefillSm90Params, tile_counter), 720);
    }

    #[test]
    fn prefill_plans_and_rejects() {
        let s = spec(Op::Prefill);
        let tile = Tile::default_for(&s, Arch::new(9, 0));
        let p = plan_prefill(&s, &tile, &prefill_args(2, 300, 8, 2))
            .unwrap()
            .unwrap();
        assert_eq!(p.grid, (3, 8, 2));
        assert_eq!(p.params.nc, 37);
        assert_eq!(p.params.q_st, 8 * 64);
        assert!((p.params.scale_log2 - 0.125 * LOG2E).abs() < 1e-7);
        assert!(
            plan_prefill(&s, &tile, &prefill_args(0, 300, 8, 2))
                .unwrap()
                .is_none()
        );
        assert!(
            plan_prefill(&s, &tile, &prefill_args(1, 0, 8, 2))
                .unwrap()
                .is_none()
        );

        let mut a = prefill_args(1, 64, 8, 3);
        a.v.shape[2] = 3;
        let e = plan_prefill(&s, &tile, &a).unwrap_err();
        assert!(e.to_string().contains("divides H = 8"), "{e}");

        let mut a = prefill_args(1, 64, 8, 2);
        a.v.shape = vec![1, 63, 2, 64];
        assert_eq!(
            plan_prefill(&s, &tile, &a).unwrap_err().to_string(),
            "tensor v has shape [1, 63, 2, 64], expected [B, N, Hkv, D] = [1, 64, 2, 64]"
        );
        let mut a = prefill_args(1, 64, 8, 2);
        a.o.dtype = ElemType::F16;
        assert_eq!(
            plan_prefill(&s, &tile, &a).unwrap_err().to_string(),
            "tensor o is f16, the kernel takes bf16"
        );
        let mut a = prefill_args(1, 64, 8, 2);
        a.k.ptr += 8;
        assert!(
            plan_prefill(&s, &tile, &a)
                .unwrap_err()
                .to_string()
                .contains("not 16-byte aligned")
        );
        let mut a = prefill_args(1, 64, 8, 2);
        a.q.strides = vec![64 * 8 * 64, 8 * 64 + 4, 64, 1];
        assert!(
            plan_prefill(&s, &tile, &a)
                .unwrap_err()
                .to_string()
                .contains("multiple of 8 elements")
        );
        let mut a = prefill_args(1, 64, 8, 2);
        a.ks.shape[1] = 7;
        assert!(
            plan_prefill(&s, &tile, &a)
                .unwrap_err()
                .to_string()
                .contains("NC >= N/C = 8")
        );
        assert!(matches!(
            plan_prefill(&spec(Op::Decode), &tile, &prefill_args(1, 8, 8, 2)),
            Err(LaunchError::Op { .. })
        ));
    }

    /// The generic plan is the typed one, as bytes; the Hopper plan names where the loader puts
    /// the tensor maps and the tile counter.
    #[test]
    fn generic_plans_carry_the_typed_blocks() {
        let s = spec(Op::Prefill);
        let dev = DeviceFacts::new(132);
        let a = prefill_args(2, 300, 8, 2);
        let mma_tile = Tile::default_for(&s, Arch::new(9, 0));
        let steps = Prefill.plan(&s, &mma_tile, &a.to_op_args(), dev).unwrap();
        let typed = plan_prefill(&s, &mma_tile, &a).unwrap().unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].params.as_bytes(),
            bytemuck::bytes_of(&typed.params)
        );
        assert_eq!(steps[0].grid, typed.grid);
        assert!(steps[0].tensor_maps.is_empty() && steps[0].counters.is_none());

        let hopper_tile = Tile::default_for(&s, Arch::preferred_for(9, 0));
        assert_eq!(hopper_tile.engine(), Engine::Wgmma);
        let steps = Prefill
            .plan(&s, &hopper_tile, &a.to_op_args(), dev)
            .unwrap();
        let maps: Vec<(usize, &str)> = steps[0]
            .tensor_maps
            .iter()
            .map(|(o, m)| (*o, m.name.as_str()))
            .collect();
        assert_eq!(
            maps,
            [(0, "q"), (128, "k"), (256, "v"), (384, "ks"), (512, "vs")]
        );
        assert_eq!(
            steps[0].counters,
            Some(Counters {
                offset: 720,
                ints: 2
            })
        );
        // 3 query tiles x 8 heads x 2 sequences, fewer than the 132 SMs
        assert_eq!(steps[0].grid.0, 3 * 8 * 2);

        // What the loader writes (encoded maps, the counter address) lands where the typed
        // struct has those fields: the same bytes as filling the struct itself.
        let mut step = steps[0].clone();
        let mut typed = plan_prefill_sm90(&s, &hopper_tile, &a, 132)
            .unwrap()
            .unwrap()
            .launch
            .params;
        for (i, (offset, _)) in step.tensor_maps.iter().enumerate() {
            let fake = TensorMap([i as u64 + 1; 16]);
            step.params.write(*offset, bytemuck::bytes_of(&fake));
        }
        step.params
            .write(step.counters.unwrap().offset, &0xdead_beefu64.to_ne_bytes());
        typed.tm_q = TensorMap([1; 16]);
        typed.tm_k = TensorMap([2; 16]);
        typed.tm_v = TensorMap([3; 16]);
        typed.tm_ks = TensorMap([4; 16]);
        typed.tm_vs = TensorMap([5; 16]);
        typed.tile_counter = 0xdead_beef;
        assert_eq!(step.params.as_bytes(), bytemuck::bytes_of(&typed));

        // no summary rows (N < C): the summary maps, never read, encode over K and V
        let mut few = prefill_args(2, 7, 8, 2);
        few.ks.ptr = 0;
        few.vs.ptr = 0;
        let maps = plan_prefill_sm90(&s, &hopper_tile, &few, 132)
            .unwrap()
            .unwrap()
            .maps;
        assert_eq!(few.ks.shape[1], 0);
        assert_eq!((maps[3].addr, maps[4].addr), (few.k.ptr, few.v.ptr));

        let mut short = a.to_op_args();
        short.tensors.pop();
        let e = Prefill.plan(&s, &mma_tile, &short, dev).unwrap_err();
        assert_eq!(
            e.to_string(),
            "prefill takes 7 tensors (q, k, v, ks, vs, o, lse), the call gave 6"
        );
        let empty = prefill_args(0, 300, 8, 2).to_op_args();
        assert!(Prefill.plan(&s, &mma_tile, &empty, dev).unwrap().is_empty());
    }
}
