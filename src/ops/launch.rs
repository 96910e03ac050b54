//! What the ops' launch planning shares: the error for tensors that do not fit a call, the
//! checks of shapes, dtypes and layouts, and the planned launch itself ([`Step`]: geometry, the
//! parameter block as bytes, the TMA tensor maps and the tile counter the loader fills in). Pure:
//! the loader turns steps into driver calls.

use crate::spec::{KernelSpec, Op};
use crate::tensor::{ElemType, TensorArg};

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
    /// A generic call with the wrong number of tensors.
    #[error("{op} takes {expected} tensors ({names}), the call gave {got}")]
    Arity {
        /// The op.
        op: Op,
        /// Tensors it takes, inputs then outputs.
        expected: usize,
        /// Their names.
        names: String,
        /// Tensors given.
        got: usize,
    },
    /// A size over what a launch can address.
    #[error("{0}")]
    Size(String),
}

/// log2(e): the kernels take the softmax scale premultiplied by it (they use `exp2`).
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;

/// The geometry of one launch and its typed parameter block.
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

/// The largest parameter block a template takes, in bytes (the Hopper prefill's is 768).
pub const MAX_PARAM_BYTES: usize = 1024;

/// A kernel's parameter block as bytes, aligned like the most aligned block (128 bytes: the
/// Hopper prefill's, whose TMA descriptors need 64). The kernels take it by value; the driver
/// copies as many bytes as the kernel's parameter is long.
#[repr(C, align(128))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParamBlock {
    bytes: [u8; MAX_PARAM_BYTES],
    len: usize,
}

impl ParamBlock {
    /// The bytes of `p` (a `#[repr(C)]` mirror of a template's parameter struct).
    pub fn of<P: bytemuck::Pod>(p: &P) -> ParamBlock {
        const { assert!(std::mem::size_of::<P>() <= MAX_PARAM_BYTES) };
        const { assert!(std::mem::align_of::<P>() <= 128) };
        let src = bytemuck::bytes_of(p);
        let mut bytes = [0u8; MAX_PARAM_BYTES];
        bytes[..src.len()].copy_from_slice(src);
        ParamBlock {
            bytes,
            len: src.len(),
        }
    }

    /// The block's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Overwrites the bytes at `offset` (a field the loader fills in at launch).
    ///
    /// # Panics
    /// When the bytes do not fit inside the block: offsets come from `offset_of!` on the op's
    /// own struct, so this is a bug in the op description, not bad input.
    pub fn write(&mut self, offset: usize, src: &[u8]) {
        assert!(
            offset + src.len() <= self.len,
            "parameter write out of the block"
        );
        self.bytes[offset..offset + src.len()].copy_from_slice(src);
    }
}

impl std::fmt::Debug for ParamBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParamBlock({} bytes)", self.len)
    }
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
    /// The map of a `[B, rows, heads, D]` tensor read in boxes of `box_rows` rows.
    pub(crate) fn of(t: &TensorArg, bf16: bool, rows: usize, box_rows: u32) -> TensorMapSpec {
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TensorMap(pub [u64; 16]);

/// A step's zeroed int32 counters: the byte offset in the parameter block that takes their
/// device address, and how many the kernel uses. The loader keeps one region per stream, zeroed
/// once (a kernel leaves its counters at zero when it ends), and never moves a region a launch
/// has used (a captured graph keeps its address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Where the address goes.
    pub offset: usize,
    /// Counters the launch uses.
    pub ints: usize,
}

/// One planned kernel launch, ready for the driver once the loader has filled in what only the
/// device knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Which of the module's entry points ([`crate::spec::KernelSpec::entry_points`]).
    pub function: usize,
    /// Grid.
    pub grid: (u32, u32, u32),
    /// Block.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory, bytes.
    pub smem: u32,
    /// The parameter block.
    pub params: ParamBlock,
    /// Tensor maps to encode and write into the block at these byte offsets.
    pub tensor_maps: Vec<(usize, TensorMapSpec)>,
    /// Where the block takes the device address of zeroed int32 counters the kernel leaves at
    /// zero (one region per stream: a persistent kernel's dynamic schedule, the decode's
    /// last-block merge), if it does.
    pub counters: Option<Counters>,
    /// How the kernel takes the block: `None`, as one struct parameter (the CUDA templates);
    /// `Some(offsets)`, as one parameter per offset (Triton kernels, whose parameters are
    /// scalars).
    pub args: Option<Vec<usize>>,
    /// The parameters' names, with `args` (for messages and for checking them against the
    /// kernels' signatures).
    pub arg_names: Vec<&'static str>,
    /// Dynamic shared memory is the compiled kernel's own (Triton decides it; the loader takes
    /// it from the artifact's metadata) rather than [`Step::smem`].
    pub smem_from_artifact: bool,
}

impl Step {
    /// A launch of entry point `function` as `plan` describes it, nothing left to fill in.
    pub fn of<P: bytemuck::Pod>(function: usize, plan: &LaunchPlan<P>) -> Step {
        Step {
            function,
            grid: plan.grid,
            block: plan.block,
            smem: plan.smem,
            params: ParamBlock::of(&plan.params),
            tensor_maps: Vec::new(),
            counters: None,
            args: None,
            arg_names: Vec::new(),
            smem_from_artifact: false,
        }
    }

    /// A launch of entry point `function` of a Triton module with the parameters in `args`.
    pub fn triton(function: usize, grid: (u32, u32, u32), warps: u32, args: ArgList) -> Step {
        let (params, offsets, arg_names) = args.finish();
        Step {
            function,
            grid,
            block: (warps * 32, 1, 1),
            smem: 0,
            params,
            tensor_maps: Vec::new(),
            counters: None,
            args: Some(offsets),
            arg_names,
            smem_from_artifact: true,
        }
    }
}

/// The scalar parameters of a Triton kernel, in order, packed into a [`ParamBlock`] (each at
/// its natural alignment). Triton appends two pointers (global and profile scratch) to every
/// kernel's parameters; [`ArgList::finish`] adds them as null.
#[derive(Clone, Debug, Default)]
pub struct ArgList {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    names: Vec<&'static str>,
}

impl ArgList {
    fn push(&mut self, name: &'static str, bytes: &[u8]) -> &mut ArgList {
        let align = bytes.len();
        let at = self.bytes.len().div_ceil(align) * align;
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(bytes);
        self.offsets.push(at);
        self.names.push(name);
        self
    }

    /// A device pointer.
    pub fn ptr(&mut self, name: &'static str, v: u64) -> &mut ArgList {
        self.push(name, &v.to_ne_bytes())
    }

    /// A 64-bit integer (strides).
    pub fn i64(&mut self, name: &'static str, v: i64) -> &mut ArgList {
        self.push(name, &v.to_ne_bytes())
    }

    /// The strides of `t`'s leading dimensions, one 64-bit integer each, named `names` in order.
    pub fn strides<const N: usize>(
        &mut self,
        names: [&'static str; N],
        t: &TensorArg,
    ) -> &mut ArgList {
        for (dim, name) in names.into_iter().enumerate() {
            self.i64(name, t.stride(dim));
        }
        self
    }

    /// A 32-bit integer (sizes).
    pub fn i32(&mut self, name: &'static str, v: i32) -> &mut ArgList {
        self.push(name, &v.to_ne_bytes())
    }

    /// A 32-bit float.
    pub fn f32(&mut self, name: &'static str, v: f32) -> &mut ArgList {
        self.push(name, &v.to_ne_bytes())
    }

    /// The parameter names so far (for checking them against the kernels' signatures).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The block, each parameter's offset and name, the scratch pointers appended.
    pub fn finish(mut self) -> (ParamBlock, Vec<usize>, Vec<&'static str>) {
        self.ptr("global_scratch", 0).ptr("profile_scratch", 0);
        assert!(
            self.bytes.len() <= MAX_PARAM_BYTES,
            "a Triton parameter list over {MAX_PARAM_BYTES} bytes"
        );
        let mut bytes = [0u8; MAX_PARAM_BYTES];
        bytes[..self.bytes.len()].copy_from_slice(&self.bytes);
        (
            ParamBlock {
                bytes,
                len: self.bytes.len(),
            },
            self.offsets,
            self.names,
        )
    }
}

/// A call of an op in the op table's terms: its tensors (inputs, then outputs, in the op's
/// order), the scale, the decode splits and the fp32 workspace.
#[derive(Clone, Debug, Default)]
pub struct OpArgs {
    /// Inputs then outputs, in [`super::OpDef::inputs`] / [`super::OpDef::outputs`] order.
    pub tensors: Vec<TensorArg>,
    /// Softmax scale (default `1/sqrt(D)`), for the ops that take one.
    pub scale: Option<f32>,
    /// Splits (decode; at least 1, see [`super::OpDef::splits`]).
    pub splits: usize,
    /// fp32 workspace as (device address, elements), when [`super::OpDef::workspace`] asks for
    /// one.
    pub workspace: Option<(u64, usize)>,
    /// prefill_bwd: bitwise-reproducible results (see [`super::Problem::deterministic`]); the
    /// workspace must then be sized for a deterministic problem or larger.
    pub deterministic: bool,
}

impl OpArgs {
    /// The tensors, checked to be exactly `names` long (else [`LaunchError::Arity`]).
    pub(crate) fn expect<'a>(
        &'a self,
        op: Op,
        names: &[&str],
    ) -> Result<&'a [TensorArg], LaunchError> {
        if self.tensors.len() != names.len() {
            return Err(LaunchError::Arity {
                op,
                expected: names.len(),
                names: names.join(", "),
                got: self.tensors.len(),
            });
        }
        Ok(&self.tensors)
    }
}

/// The indirection of a paged call (the contract's item 7): the sequences' slots in a ring pool
/// and their page table into a summary page pool; the default (null tables) is the contiguous
/// layout. Passed to the Triton kernels after their other scalar parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Paging {
    /// int32 `[B]`: each sequence's slot in the ring pool.
    pub slot: u64,
    /// int32 `[B, MAXP]`: each sequence's pages in the summary pool.
    pub table: u64,
    /// The page table's row stride, elements.
    pub table_stride: i64,
    /// Summary rows per page.
    pub page: i32,
}

impl Default for Paging {
    fn default() -> Paging {
        Paging {
            slot: 0,
            table: 0,
            table_stride: 0,
            page: 1,
        }
    }
}

impl Paging {
    /// Appends the tables' parameters (SLOT, PT, pt_sb, PAGE) to a Triton kernel's.
    pub(crate) fn push(&self, a: &mut ArgList) {
        a.ptr("SLOT", self.slot)
            .ptr("PT", self.table)
            .i64("pt_sb", self.table_stride)
            .i32("PAGE", self.page);
    }
}

/// What a plan needs to know of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Multiprocessors (persistent grids, split choice).
    pub sm_count: u32,
    /// The most zeroed counters ([`Step::counters`]) a launch may use; `None`: as many as it
    /// asks (the loader allocates them on first use). While a stream is being captured into a
    /// graph nothing may be allocated, so the loader passes what the stream already has, and a
    /// plan that needs more takes its counter-free form (the prefill's static schedule, the
    /// decode's combine launch).
    pub counter_limit: Option<usize>,
}

impl DeviceFacts {
    /// A device of `sm_count` multiprocessors where counters can be allocated.
    pub fn new(sm_count: u32) -> DeviceFacts {
        DeviceFacts {
            sm_count,
            counter_limit: None,
        }
    }

    /// Whether a launch may use `ints` counters.
    pub fn counters_allowed(&self, ints: usize) -> bool {
        self.counter_limit.is_none_or(|n| n >= ints)
    }
}

pub(crate) fn expect_dtype(t: &TensorArg, dt: ElemType) -> Result<(), LaunchError> {
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
pub(crate) fn expect_shape(
    t: &TensorArg,
    expected: &[Option<usize>],
    desc: &str,
) -> Result<(), LaunchError> {
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
pub(crate) fn expect_chunk_rows(
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
pub(crate) fn expect_vector_layout(t: &TensorArg) -> Result<(), LaunchError> {
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

/// The last dimension contiguous (scalar access).
pub(crate) fn expect_contiguous_rows(t: &TensorArg) -> Result<(), LaunchError> {
    if t.strides.last() != Some(&1) {
        return Err(LaunchError::Layout {
            name: t.name.clone(),
            problem: "the last dimension must be contiguous (stride 1)".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_op(spec: &KernelSpec, op: Op) -> Result<(), LaunchError> {
    if spec.op() != op {
        return Err(LaunchError::Op {
            got: spec.op(),
            expected: op,
        });
    }
    Ok(())
}

/// The softmax scale: given or `1/sqrt(D)`; the kernels need a positive finite one.
pub(crate) fn checked_scale(scale: Option<f32>, spec: &KernelSpec) -> Result<f32, LaunchError> {
    let s = scale.unwrap_or_else(|| spec.default_scale());
    if !(s.is_finite() && s > 0.0) {
        return Err(LaunchError::Size(format!(
            "scale {s} is not accepted: give a positive finite number"
        )));
    }
    Ok(s)
}

pub(crate) fn grid_dim(what: &str, v: usize, max: usize) -> Result<u32, LaunchError> {
    if v > max {
        return Err(LaunchError::Size(format!(
            "{what} = {v} is over the launch limit {max}"
        )));
    }
    Ok(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Two {
        a: u64,
        b: i32,
        c: f32,
    }

    #[test]
    fn param_blocks_hold_the_bytes_and_take_writes() {
        let mut p = ParamBlock::of(&Two {
            a: 0x0102_0304_0506_0708,
            b: -1,
            c: 1.0,
        });
        assert_eq!(p.as_bytes().len(), 16);
        assert_eq!(p.as_bytes()[..8], 0x0102_0304_0506_0708u64.to_ne_bytes());
        p.write(8, &7i32.to_ne_bytes());
        assert_eq!(p.as_bytes()[8..12], 7i32.to_ne_bytes());
        assert_eq!(std::mem::align_of::<ParamBlock>(), 128);
        assert_eq!(&p as *const ParamBlock as *const u8, p.as_bytes().as_ptr());
    }

    #[test]
    #[should_panic(expected = "out of the block")]
    fn writes_past_the_block_are_bugs() {
        ParamBlock::of(&Two { a: 0, b: 0, c: 0.0 }).write(12, &[0; 8]);
    }
}
