//! Kernel parameter blocks and launch planning. Pure: shapes, dtypes, strides and alignment are
//! checked here and turned into a [`LaunchPlan`] (grid, block, shared memory, parameter block).
//!
//! Each `*Params` struct mirrors, field for field, the struct of the same name in the op's
//! template; the kernels take it by value.

use crate::spec::{KernelSpec, Op};
use crate::tile::{DECODE_ROWS, Tile};

/// Tensors that do not fit a kernel call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A tensor's shape is not the expected one.
    #[error("tensor {name} has shape {got:?}, expected {expected}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A tensor's dtype is not the kernel's.
    #[error("tensor {name} is {got}, the kernel takes {expected}")]
    DType {
        /// Tensor name.
        name: String,
        /// Its dtype.
        got: String,
        /// The kernel's.
        expected: String,
    },
    /// Strides or alignment the kernel cannot read.
    #[error("tensor {name}: {problem}")]
    Layout {
        /// Tensor name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The kernel handle is for another op.
    #[error("this kernel is {got}, the call needs {expected}")]
    Op {
        /// The kernel's op.
        got: Op,
        /// The call's op.
        expected: Op,
    },
    /// A size over what a launch can address.
    #[error("{0}")]
    Size(String),
}

pub use crate::tensor::{ElemType, TensorArg};

fn expect_dtype(t: &TensorArg, dt: ElemType) -> Result<(), LaunchError> {
    if t.dtype != dt {
        return Err(LaunchError::DType {
            name: t.name.clone(),
            got: t.dtype.as_str().into(),
            expected: dt.as_str().into(),
        });
    }
    Ok(())
}

/// Checks the shape against `expected` (None = any size in that dimension).
fn expect_shape(t: &TensorArg, expected: &[Option<usize>], desc: &str) -> Result<(), LaunchError> {
    let ok = t.shape.len() == expected.len()
        && t.strides.len() == expected.len()
        && t.shape
            .iter()
            .zip(expected)
            .all(|(s, e)| e.is_none_or(|e| *s == e));
    if !ok {
        let want: Vec<String> = expected
            .iter()
            .map(|e| e.map(|v| v.to_string()).unwrap_or_else(|| "*".into()))
            .collect();
        return Err(LaunchError::Shape {
            name: t.name.clone(),
            got: t.shape.clone(),
            expected: format!("{desc} = [{}]", want.join(", ")),
        });
    }
    Ok(())
}

/// A per-chunk tensor `[B, NC, heads, D]` with at least `nc` = N/C rows (more are allowed, unused).
fn expect_chunk_rows(
    t: &TensorArg,
    b: usize,
    nc: usize,
    heads: usize,
    d: usize,
    heads_name: &str,
) -> Result<(), LaunchError> {
    expect_shape(
        t,
        &[Some(b), None, Some(heads), Some(d)],
        &format!("[B, NC, {heads_name}, D]"),
    )?;
    if t.shape[1] < nc {
        return Err(LaunchError::Shape {
            name: t.name.clone(),
            got: t.shape.clone(),
            expected: format!("[B, NC >= N/C = {nc}, {heads_name}, D]"),
        });
    }
    Ok(())
}

/// 16-byte vector access: pointer aligned to 16 bytes, last dim contiguous, other strides a
/// multiple of 16 bytes.
fn expect_vector_layout(t: &TensorArg) -> Result<(), LaunchError> {
    let bad = |problem: String| LaunchError::Layout {
        name: t.name.clone(),
        problem,
    };
    if t.strides.last() != Some(&1) {
        return Err(bad(
            "the last dimension must be contiguous (stride 1)".into()
        ));
    }
    if !t.ptr.is_multiple_of(16) {
        return Err(bad(format!("address {:#x} is not 16-byte aligned", t.ptr)));
    }
    let per16 = 16 / t.dtype.size();
    for (i, s) in t.strides.iter().enumerate().take(t.strides.len() - 1) {
        if s % per16 != 0 {
            return Err(bad(format!(
                "stride {s} of dimension {i} is not a multiple of {per16} elements (16 bytes)"
            )));
        }
    }
    Ok(())
}

/// The geometry of one launch and its parameter block.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchPlan<P> {
    /// Grid.
    pub grid: (u32, u32, u32),
    /// Block.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory, bytes.
    pub smem: u32,
    /// The parameter block.
    pub params: P,
}

/// Mirrors `PrefillParams` in templates/prefill.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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

/// Mirrors `DecodeParams` in templates/decode.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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
}

/// Mirrors `ChunkMeanParams` in templates/chunk_mean.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct ChunkMeanParams {
    pub x: u64,
    pub xbar: u64,
    pub x_sb: i64,
    pub x_st: i64,
    pub x_sh: i64,
    pub y_sb: i64,
    pub y_st: i64,
    pub y_sh: i64,
    pub nc: i32,
    pub g: i32,
}

/// Mirrors `ChunkSummarizeParams` in templates/chunk_summarize.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(missing_docs)]
pub struct ChunkSummarizeParams {
    pub k: u64,
    pub v: u64,
    pub omega: u64,
    pub vs: u64,
    pub k_sb: i64,
    pub k_st: i64,
    pub k_sh: i64,
    pub v_sb: i64,
    pub v_st: i64,
    pub v_sh: i64,
    pub om_sb: i64,
    pub om_st: i64,
    pub om_sh: i64,
    pub vs_sb: i64,
    pub vs_st: i64,
    pub vs_sh: i64,
    pub nc: i32,
    pub hkv: i32,
    pub scale: f32,
    pub reserved: i32,
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

/// chunk_mean tensors: `x [B,N,G,D]` -> `xbar [B,NC,G,D]`, NC >= N/C.
#[derive(Clone, Debug)]
pub struct ChunkMeanArgs {
    /// Input `[B, N, G, D]`.
    pub x: TensorArg,
    /// Chunk means `[B, NC, G, D]` (the first N/C rows written).
    pub xbar: TensorArg,
}

/// chunk_summarize tensors: `k, v [B,N,Hkv,D]`, `omega, vs [B,NC,Hkv,D]`, NC >= N/C.
#[derive(Clone, Debug)]
pub struct ChunkSummarizeArgs {
    /// Keys `[B, N, Hkv, D]`.
    pub k: TensorArg,
    /// Values `[B, N, Hkv, D]`.
    pub v: TensorArg,
    /// Per-chunk projections `[B, NC, Hkv, D]`.
    pub omega: TensorArg,
    /// Summary values `[B, NC, Hkv, D]` (the first N/C rows written).
    pub vs: TensorArg,
    /// Scale `s` of the logits (default `1/sqrt(D)`).
    pub scale: Option<f32>,
}

const LOG2E: f32 = std::f32::consts::LOG2_E;

fn check_op(spec: &KernelSpec, op: Op) -> Result<(), LaunchError> {
    if spec.op() != op {
        return Err(LaunchError::Op {
            got: spec.op(),
            expected: op,
        });
    }
    Ok(())
}

/// The softmax scale: given or `1/sqrt(D)`; the kernels need a positive finite one.
fn checked_scale(scale: Option<f32>, spec: &KernelSpec) -> Result<f32, LaunchError> {
    let s = scale.unwrap_or_else(|| spec.default_scale());
    if !(s.is_finite() && s > 0.0) {
        return Err(LaunchError::Size(format!(
            "scale {s} is not accepted: give a positive finite number"
        )));
    }
    Ok(s)
}

fn grid_dim(what: &str, v: usize, max: usize) -> Result<u32, LaunchError> {
    if v > max {
        return Err(LaunchError::Size(format!(
            "{what} = {v} is over the launch limit {max}"
        )));
    }
    Ok(v as u32)
}

/// The sizes of a checked prefill call.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PrefillSizes {
    b: usize,
    n: usize,
    h: usize,
    hkv: usize,
    /// Complete chunks N/C (the summaries some row may see).
    nc: usize,
    scale: f32,
}

/// Checks prefill tensors against `spec`; `None` when there is nothing to compute.
fn check_prefill(spec: &KernelSpec, a: &PrefillArgs) -> Result<Option<PrefillSizes>, LaunchError> {
    check_op(spec, Op::Prefill)?;
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
    if nc > 0 {
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

/// One TMA tensor map to encode (`cuTensorMapEncodeTiled`): a 4-d view `{D, heads, rows, B}`
/// (innermost first) of a token-major tensor, read in boxes of `{64, 1, box_rows, 1}` elements with
/// the 128-byte swizzle; rows past the end read as zeros. Pure: the driver encodes it at launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    /// The tensor's name, for errors.
    pub name: String,
    /// bf16 (else f16).
    pub bf16: bool,
    /// Device address (16-byte aligned).
    pub addr: u64,
    /// `{D, heads, rows, B}`.
    pub dims: [u64; 4],
    /// Byte strides of dims 1..3 (heads, rows, batch).
    pub strides: [u64; 3],
    /// `{64, 1, box_rows, 1}`.
    pub boxes: [u32; 4],
}

impl TensorMapSpec {
    fn of(t: &TensorArg, bf16: bool, rows: usize, box_rows: u32) -> TensorMapSpec {
        let es = t.dtype.size() as u64;
        TensorMapSpec {
            name: t.name.clone(),
            bf16,
            addr: t.ptr,
            dims: [
                t.shape[3] as u64,
                t.shape[2] as u64,
                rows.max(1) as u64,
                t.shape[0] as u64,
            ],
            strides: [
                t.strides[2] as u64 * es,
                t.strides[1] as u64 * es,
                t.strides[0] as u64 * es,
            ],
            boxes: [64, 1, box_rows, 1],
        }
    }
}

/// An encoded tensor map (`CUtensorMap`: 128 opaque bytes, 64-byte aligned).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TensorMap(pub [u64; 16]);

/// Mirrors `PrefillSm90Params` in templates/prefill_sm90a.cu (768 bytes).
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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
    pub reserved: [i32; 10],
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
    let bf16 = spec.dtype() == crate::spec::DType::Bf16;
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
    let rows = a.ks.shape[1];
    Ok(Some(Sm90PrefillPlan {
        launch: LaunchPlan {
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
        },
        maps: [
            TensorMapSpec::of(&a.q, bf16, n, bm),
            TensorMapSpec::of(&a.k, bf16, n, bn),
            TensorMapSpec::of(&a.v, bf16, n, bn),
            TensorMapSpec::of(&a.ks, bf16, rows, bn),
            TensorMapSpec::of(&a.vs, bf16, rows, bn),
        ],
    }))
}

/// The decode splits to use: the tile's, or (tile.splits = 0) enough CTAs to fill the device
/// twice over, without giving a warp less than one tile of the longest sequence.
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
    let head_tiles = spec.group_or_one().div_ceil(DECODE_ROWS) as usize;
    let ctas = (b * hkv * head_tiles).max(1);
    let want = (2 * sm_count as usize).div_ceil(ctas);
    let per_split = (tile.block_n() * tile.warps()) as usize;
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

/// A decode launch and, when split, its combine launch.
pub type DecodePlan = (LaunchPlan<DecodeParams>, Option<LaunchPlan<DecodeParams>>);

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
    };
    let head_tiles = g.div_ceil(DECODE_ROWS as usize);
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
        block: (128, 1, 1),
        smem: 0,
        params,
    });
    Ok(Some((main, combine)))
}

/// Plans a chunk_mean launch; `None` when there is no complete chunk.
pub fn plan_chunk_mean(
    spec: &KernelSpec,
    tile: &Tile,
    a: &ChunkMeanArgs,
) -> Result<Option<LaunchPlan<ChunkMeanParams>>, LaunchError> {
    check_op(spec, Op::ChunkMean)?;
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    expect_dtype(&a.x, et)?;
    expect_dtype(&a.xbar, et)?;
    expect_shape(&a.x, &[None, None, None, Some(d)], "[B, N, G, D]")?;
    let (b, n, g) = (a.x.shape[0], a.x.shape[1], a.x.shape[2]);
    let nc = n / spec.chunk() as usize;
    expect_chunk_rows(&a.xbar, b, nc, g, d, "G")?;
    if b == 0 || nc == 0 || g == 0 {
        return Ok(None);
    }
    expect_vector_layout(&a.x)?;
    expect_vector_layout(&a.xbar)?;
    let per_cta = (tile.threads() as usize) / (d / 8);
    Ok(Some(LaunchPlan {
        grid: (
            grid_dim("chunks", nc, i32::MAX as usize)?,
            grid_dim("head groups", g.div_ceil(per_cta), 65535)?,
            grid_dim("B", b, 65535)?,
        ),
        block: (tile.threads(), 1, 1),
        smem: 0,
        params: ChunkMeanParams {
            x: a.x.ptr,
            xbar: a.xbar.ptr,
            x_sb: a.x.stride(0),
            x_st: a.x.stride(1),
            x_sh: a.x.stride(2),
            y_sb: a.xbar.stride(0),
            y_st: a.xbar.stride(1),
            y_sh: a.xbar.stride(2),
            nc: nc as i32,
            g: g as i32,
        },
    }))
}

/// Plans a chunk_summarize launch; `None` when there is no complete chunk.
pub fn plan_chunk_summarize(
    spec: &KernelSpec,
    tile: &Tile,
    a: &ChunkSummarizeArgs,
) -> Result<Option<LaunchPlan<ChunkSummarizeParams>>, LaunchError> {
    check_op(spec, Op::ChunkSummarize)?;
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    for t in [&a.k, &a.v, &a.omega, &a.vs] {
        expect_dtype(t, et)?;
    }
    expect_shape(&a.k, &[None, None, None, Some(d)], "[B, N, Hkv, D]")?;
    let (b, n, hkv) = (a.k.shape[0], a.k.shape[1], a.k.shape[2]);
    expect_shape(
        &a.v,
        &[Some(b), Some(n), Some(hkv), Some(d)],
        "[B, N, Hkv, D]",
    )?;
    let nc = n / spec.chunk() as usize;
    for t in [&a.omega, &a.vs] {
        expect_chunk_rows(t, b, nc, hkv, d, "Hkv")?;
    }
    if b == 0 || nc == 0 || hkv == 0 {
        return Ok(None);
    }
    for t in [&a.k, &a.v, &a.omega, &a.vs] {
        if t.strides.last() != Some(&1) {
            return Err(LaunchError::Layout {
                name: t.name.clone(),
                problem: "the last dimension must be contiguous (stride 1)".into(),
            });
        }
    }
    let scale = a.scale.unwrap_or_else(|| spec.default_scale());
    Ok(Some(LaunchPlan {
        grid: (
            grid_dim("chunks", nc, i32::MAX as usize)?,
            grid_dim("Hkv", hkv, 65535)?,
            grid_dim("B", b, 65535)?,
        ),
        block: (tile.threads(), 1, 1),
        smem: tile.smem_bytes(spec),
        params: ChunkSummarizeParams {
            k: a.k.ptr,
            v: a.v.ptr,
            omega: a.omega.ptr,
            vs: a.vs.ptr,
            k_sb: a.k.stride(0),
            k_st: a.k.stride(1),
            k_sh: a.k.stride(2),
            v_sb: a.v.stride(0),
            v_st: a.v.stride(1),
            v_sh: a.v.stride(2),
            om_sb: a.omega.stride(0),
            om_st: a.omega.stride(1),
            om_sh: a.omega.stride(2),
            vs_sb: a.vs.stride(0),
            vs_st: a.vs.stride(1),
            vs_sh: a.vs.stride(2),
            nc: nc as i32,
            hkv: hkv as i32,
            scale,
            reserved: 0,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DType, SpecParams};
    use crate::target::Arch;

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
        assert_eq!(std::mem::size_of::<DecodeParams>(), 248);
        assert_eq!(std::mem::size_of::<ChunkMeanParams>(), 72);
        assert_eq!(std::mem::size_of::<ChunkSummarizeParams>(), 144);
        assert_eq!(std::mem::size_of::<PrefillSm90Params>(), 768);
        assert_eq!(std::mem::align_of::<PrefillSm90Params>(), 128);
        let p = PrefillSm90Params::default();
        let base = &p as *const _ as usize;
        assert_eq!(&p.o as *const _ as usize - base, 640);
        assert_eq!(&p.n as *const _ as usize - base, 696);
        assert_eq!(&p.scale_log2 as *const _ as usize - base, 712);
        assert_eq!(&p.tile_counter as *const _ as usize - base, 720);
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

    #[test]
    fn decode_splits_and_workspace() {
        let s = spec(Op::Decode);
        let tile = Tile::default_for(&s, Arch::new(9, 0));
        // 64 sequences x 8 kv heads fill 132 SMs: no split.
        assert_eq!(decode_splits(&s, &tile, 64, 8, 1023, 132), 1);
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
        assert_eq!(comb.unwrap().grid, (8, 2, 1));
        assert_eq!(main.params.ws_ml, 0x2000 + (4 * 2 * 8 * 64 * 4) as u64);
    }
}
