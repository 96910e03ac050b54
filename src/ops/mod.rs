//! The op table: one description per op, and everything about the op lives in it: its entry
//! points and template, the rules, names, defaults and shared memory of its tiles, the work it
//! does (flops, bytes, the rate it is judged by), its tensors (names, shapes from a [`Problem`],
//! element types), the launch planning (checks of the caller's tensors and the parameter block),
//! and, with the `cli` feature, random inputs and the float64 reference. Tiles, workloads, the
//! renderer, the loader, `run`, `bench`, the checks and the tuner all go through this table, so
//! adding an op is one new file here (and a variant of [`Op`]) plus its template and, to tune it,
//! a table in `autotune/spaces.toml`. Pure.

pub mod append;
pub mod chunk_mean;
pub mod chunk_mean_bwd;
pub mod chunk_summarize;
pub mod chunk_summarize_bwd;
pub mod decode;
pub mod extend;
pub mod launch;
pub mod paged;
pub mod prefill;
pub mod prefill_bwd;

#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
use crate::spec::{DType, KernelSpec, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{Tile, TileError, TileParams};
use crate::workload::Workload;

pub use chunk_mean::{ChunkMeanArgs, ChunkMeanParams};
pub use chunk_summarize::{ChunkSummarizeArgs, ChunkSummarizeParams};
pub use launch::{
    ArgList, Counters, DeviceFacts, LaunchError, LaunchPlan, OpArgs, ParamBlock, Step, TensorMap,
    TensorMapSpec,
};

/// A compile-time constant of a Triton kernel (`tl.constexpr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Const {
    /// An integer (sizes, tile shapes).
    Int(u32),
    /// A switch (the local mode).
    Bool(bool),
}

/// One Triton kernel of an op's module: the function in triton/flasheva_triton.py, the entry
/// point it becomes, and its compile-time constants.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TritonKernel {
    /// The Python function.
    pub function: &'static str,
    /// The entry point name in the compiled module (one of the spec's entry points).
    pub entry: String,
    /// `tl.constexpr` parameters and their values.
    pub constexprs: std::collections::BTreeMap<&'static str, Const>,
    /// The op's plan checks every storage-type tensor of this kernel for 16-byte vector access
    /// (`expect_vector_layout`): triton/compile.py then tells Triton that these pointers are
    /// 16-byte aligned and their strides multiples of 8 elements, so it loads 16 bytes at a
    /// time (without, every element is a 2-byte load). Left out of the job when false, so the
    /// other kernels' cache keys stay as they were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub aligned: bool,
}

/// The Triton kernels' tile rules: block sizes (where the op uses them) 16 to 128, 1 to 8
/// warps, 1 to 4 pipeline stages (where it uses them).
pub(crate) fn check_triton_tile(
    op: Op,
    t: &TileParams,
    block_m: bool,
    block_n: bool,
    stages: bool,
) -> Result<(), TileError> {
    use crate::tile::one_of;
    if block_m {
        one_of(
            op,
            "block_m",
            t.block_m,
            &[16, 32, 64, 128],
            "16, 32, 64, 128 (triton)",
        )?;
    }
    if block_n {
        one_of(
            op,
            "block_n",
            t.block_n,
            &[16, 32, 64, 128],
            "16, 32, 64, 128 (triton)",
        )?;
    }
    one_of(op, "warps", t.warps, &[1, 2, 4, 8], "1, 2, 4, 8 (triton)")?;
    if stages {
        one_of(op, "stages", t.stages, &[1, 2, 3, 4], "1, 2, 3, 4 (triton)")?;
    }
    Ok(())
}

/// extend's and append's int32 vectors as `flasheva run` passes them (`start` then `count`, B
/// each), checked: every L0 at least 0, every T in `0..=tmax`. `first` names the tensor whose
/// first dimension is B and whose second is Tmax, for messages.
pub(crate) fn start_count(
    op: Op,
    lens: Option<&[i32]>,
    b: usize,
    tmax: usize,
    first: &str,
) -> std::result::Result<(Vec<i32>, Vec<i32>), String> {
    let both = lens.ok_or(format!(
        "{op} reads the int32 tensors start [B] and count [B]"
    ))?;
    if both.len() != 2 * b {
        return Err(format!(
            "tensors start and count have {} entries together, {first} has B = {b} (B each)",
            both.len()
        ));
    }
    let (start, count) = both.split_at(b);
    if let Some(t) = count.iter().find(|&&t| t < 0 || t as usize > tmax) {
        return Err(format!(
            "count holds {t}: each T must be in 0..={tmax} (Tmax, {first}'s second dimension)"
        ));
    }
    if let Some(l) = start.iter().find(|&&l| l < 0) {
        return Err(format!("start holds {l}: each L0 must be >= 0"));
    }
    Ok((start.to_vec(), count.to_vec()))
}

/// The `OpDef` methods every op with only Triton kernels has alike: the Triton source as its
/// template, no shared memory of its own (Triton lays it out; the loader takes it from the
/// artifact), and its Triton default as its only default tile.
macro_rules! triton_only_kernels {
    () => {
        fn template(&self, _tile: &TileParams) -> &'static str {
            "flasheva_triton.py"
        }

        fn smem_bytes(&self, _spec: &KernelSpec, _t: &TileParams) -> u32 {
            0
        }

        fn default_tiles(&self, spec: &KernelSpec, _arch: Arch) -> Vec<TileParams> {
            vec![self.triton_default(spec)]
        }
    };
}
pub(crate) use triton_only_kernels;

/// The tile rule of ops that have only Triton kernels so far: the engine must be Triton, then
/// the Triton rules for the knobs the op uses.
pub(crate) fn triton_only(
    op: Op,
    t: &TileParams,
    block_m: bool,
    block_n: bool,
    stages: bool,
) -> Result<(), TileError> {
    if t.engine != crate::tile::Engine::Triton {
        return Err(TileError::Field {
            op,
            field: "engine",
            value: 0,
            accepted: "triton (this op has only its Triton kernels so far)",
        });
    }
    check_triton_tile(op, t, block_m, block_n, stages)
}

/// The prefix a tile's name starts with for its engine: `wg_` (wgmma), `tr_` (Triton), none for
/// the mma.sync kernels.
pub(crate) fn engine_prefix(e: crate::tile::Engine) -> &'static str {
    match e {
        crate::tile::Engine::Wgmma => "wg_",
        crate::tile::Engine::Tma => "tma_",
        crate::tile::Engine::Triton => "tr_",
        _ => "",
    }
}

/// `n` rounded up to a power of two (Triton's `tl.arange` takes power-of-two lengths).
pub(crate) fn pow2(n: u32) -> u32 {
    n.max(1).next_power_of_two()
}

/// The constants every kernel of `spec` takes: D and D rounded up to a power of two, then
/// `more`.
pub(crate) fn constexprs(
    spec: &KernelSpec,
    more: &[(&'static str, Const)],
) -> std::collections::BTreeMap<&'static str, Const> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("D", Const::Int(spec.head_dim()));
    m.insert("DP", Const::Int(pow2(spec.head_dim())));
    m.extend(more.iter().copied());
    m
}

/// One concrete call of an op: the workload and what it leaves open.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The spec and sizes.
    pub workload: Workload,
    /// Decode: every sequence's length (tokens including the new one); extend and append:
    /// every sequence's cached tokens L0; empty for other ops.
    pub lens: Vec<i32>,
    /// Extend and append: every sequence's new tokens T (at most the workload's `n`); empty
    /// for other ops.
    pub counts: Vec<i32>,
    /// Paged ops: summary rows per page of the page pool (`summary_rows` is a multiple of it);
    /// 0 for the contiguous layout.
    pub page: usize,
    /// Rows of the per-chunk tensors (summaries, omega, means): at least N/C for prefill and the
    /// chunk ops (more are allowed and never read), the summary slots MAXNC for decode.
    pub summary_rows: usize,
    /// Softmax scale (default `1/sqrt(D)`).
    pub scale: Option<f32>,
    /// Decode splits (default: the kernel's choice for the device).
    pub splits: Option<usize>,
    /// prefill_bwd: bitwise-reproducible gradients (the four-kernel schedule) even where the
    /// tile's engine offers the faster atomic dQ mode (default false: atomic where offered).
    pub deterministic: bool,
}

impl Problem {
    /// The problem of a workload with the op's defaults (e.g. exactly N/C summary rows; decode:
    /// every sequence of length `n`), the default scale and splits.
    pub fn new(workload: Workload) -> Problem {
        of(workload.spec.op()).problem(workload)
    }

    /// The spec.
    pub fn spec(&self) -> KernelSpec {
        self.workload.spec
    }

    /// Head dim D.
    pub fn d(&self) -> usize {
        self.workload.spec.head_dim() as usize
    }

    /// The storage element type.
    pub fn elem(&self) -> ElemType {
        ElemType::of(self.workload.spec.dtype())
    }

    /// The scale the kernel and the reference use.
    pub fn scale(&self) -> f64 {
        self.scale
            .unwrap_or_else(|| self.workload.spec.default_scale()) as f64
    }

    /// The generic launch arguments of this problem on `tensors` (inputs then outputs, in the
    /// op's order), with `splits` and the workspace.
    pub fn op_args(
        &self,
        tensors: Vec<TensorArg>,
        splits: usize,
        workspace: Option<(u64, usize)>,
    ) -> OpArgs {
        OpArgs {
            tensors,
            scale: self.scale,
            splits,
            workspace,
            deterministic: self.deterministic,
        }
    }

    /// Launch arguments of this problem for `tile` on a device of `sm_count` multiprocessors
    /// with placeholder addresses: every tensor contiguous at `tensor_addr`, the workspace (when
    /// the launch needs one) at `workspace_addr`. For planning without device memory: checks of
    /// the plans, the planning benchmark.
    pub fn placeholder_args(
        &self,
        tile: &Tile,
        sm_count: u32,
        tensor_addr: u64,
        workspace_addr: u64,
    ) -> OpArgs {
        let def = of(self.workload.spec.op());
        let tensors = def
            .inputs(self)
            .iter()
            .chain(&def.outputs(self))
            .map(|t| TensorArg::contiguous(t.name, tensor_addr, t.elem, &t.shape))
            .collect();
        let splits = def.splits(self, tile, sm_count);
        let ws = def.workspace(self, tile, splits);
        self.op_args(tensors, splits, (ws > 0).then_some((workspace_addr, ws)))
    }
}

/// One tensor of an op call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// Its name (the safetensors name in `flasheva run`, the argument name in errors).
    pub name: &'static str,
    /// Element type.
    pub elem: ElemType,
    /// Shape.
    pub shape: Vec<usize>,
    /// The shape as documented, e.g. `[B, N, H, D]`.
    pub doc: &'static str,
}

/// Makes random storage-type values: `draw(shape, amp)` gives values in `[-amp, amp]`.
#[cfg(feature = "cli")]
pub type Draw<'a> = &'a mut dyn FnMut(&[usize], f64) -> HostTensor;

/// The reference result of a call: every output in float64, and how each is compared.
#[cfg(feature = "cli")]
pub struct Reference {
    /// One vector per output, in [`OpDef::outputs`] order.
    pub outputs: Vec<Vec<f64>>,
    /// Per output, how it is checked.
    pub checks: Vec<Check>,
}

/// How one output is compared with its reference (the bounds are in `verify`).
#[cfg(feature = "cli")]
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// `‖out − ref‖ / ‖ref‖` within the dtype's tolerance.
    Relative,
    /// An LSE, row by row: each row's magnitude (the largest summed logit term, see
    /// `verify::lse_bound`).
    Lse(Vec<f64>),
    /// A gradient: `‖out − ref‖ ≤ tol·‖ref‖ + ‖slack‖`, with the gradient tolerance and an
    /// absolute slack per element (what the rounding of the forward's O, through Delta, may move
    /// it; zeros where nothing does).
    Gradient(Vec<f64>),
}

/// What an op's speed is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rate {
    /// Useful floating-point work per second (TFLOP/s): compute-bound ops.
    Flops,
    /// The fewest bytes it must move per second (GB/s): memory-bound ops.
    Bytes,
}

impl Rate {
    /// The unit it is printed in.
    pub fn unit(self) -> &'static str {
        match self {
            Rate::Flops => "TFLOP/s",
            Rate::Bytes => "GB/s",
        }
    }

    /// The rate of `w` run in `ms` milliseconds, in [`Rate::unit`].
    pub fn of(self, w: &Workload, ms: f64) -> f64 {
        let s = ms * 1e-3;
        match self {
            Rate::Flops => w.flops() / s / 1e12,
            Rate::Bytes => w.bytes() / s / 1e9,
        }
    }
}

/// A small problem of a workload's spec that a correctness check runs (the tuner's trusted
/// reference), and whether it stresses the softmax with large logits.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckProblem {
    /// The call.
    pub problem: Problem,
    /// Some logits reach about ±1e4 (or what stresses this op).
    pub large_logits: bool,
}

/// Everything about one op, as data and functions.
pub trait OpDef: Sync {
    /// The op.
    fn op(&self) -> Op;

    // ---- the module ---------------------------------------------------------------------

    /// The kernels of a compiled module of `spec` with `tile`, in the order [`Step::function`]
    /// counts.
    fn entry_points(&self, spec: &KernelSpec, _tile: &TileParams) -> Vec<String> {
        vec![spec.name()]
    }

    /// The template file (in `templates/`) of tiles with these knobs.
    fn template(&self, tile: &TileParams) -> &'static str;

    // ---- tiles --------------------------------------------------------------------------

    /// The readable name of these knobs, e.g. `m128_n64_w4_s2`.
    fn tile_name(&self, t: &TileParams) -> String;

    /// The knobs with the fields this op does not use set to 0.
    fn normalize(&self, t: TileParams) -> TileParams;

    /// The op's rules for normalized knobs (not the arch's limits).
    fn check_tile(&self, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError>;

    /// Dynamic shared memory per block, bytes, exactly as the template lays it out.
    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32;

    /// The preference list of default tiles; the first that fits `arch` is the default.
    fn default_tiles(&self, spec: &KernelSpec, arch: Arch) -> Vec<TileParams>;

    /// The Triton backend's default tile of `spec` (the tile `--backend triton` uses untuned).
    fn triton_default(&self, spec: &KernelSpec) -> TileParams;

    /// The Triton kernels a module of `spec` with `tile` (a Triton tile) holds, in entry-point
    /// order.
    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel>;

    /// Why a valid tile is not worth compiling for `spec` (e.g. it straddles windows), if so.
    fn prune(&self, _spec: &KernelSpec, _tile: &Tile) -> Option<String> {
        None
    }

    // ---- work ---------------------------------------------------------------------------

    /// Useful floating-point work of `w`.
    fn flops(&self, w: &Workload) -> f64;

    /// The fewest bytes `w` must move through device memory.
    fn bytes(&self, w: &Workload) -> f64;

    /// What the op's speed is judged by.
    fn rate(&self) -> Rate;

    /// The independent rows of a workload for tuning buckets (B x heads or B x kv heads).
    fn bucket_rows(&self, b: usize, h: usize, hkv: usize) -> usize;

    /// Short text, e.g. `B=1 N=16384 H=16 Hkv=16`.
    fn describe(&self, w: &Workload) -> String {
        format!("B={} N={} H={} Hkv={}", w.b, w.n, w.h, w.hkv)
    }

    /// Text for one problem in a check's report (defaults to the workload's).
    fn describe_problem(&self, p: &Problem) -> String {
        self.describe(&p.workload)
    }

    // ---- tensors ------------------------------------------------------------------------

    /// The problem of `w` with this op's defaults.
    fn problem(&self, w: Workload) -> Problem {
        Problem {
            summary_rows: w.n / w.spec.chunk() as usize,
            workload: w,
            lens: Vec::new(),
            counts: Vec::new(),
            page: 0,
            scale: None,
            splits: None,
            deterministic: false,
        }
    }

    /// The input tensors, in launch order.
    fn inputs(&self, p: &Problem) -> Vec<TensorDesc>;

    /// The output tensors; the first is the main output (compared by relative error).
    fn outputs(&self, p: &Problem) -> Vec<TensorDesc>;

    /// The spec and problem described by input tensors of these element types and shapes (in
    /// [`OpDef::inputs`] order; `lens` the values of an int32 input, if the op has one), with the
    /// spec fields the shapes cannot give taken from `flags`. Errors name the tensor.
    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        lens: Option<&[i32]>,
    ) -> Result<Problem, String>;

    /// A small problem of `w`'s spec covering its edges, for a correctness check.
    fn check_problem(&self, w: &Workload) -> CheckProblem;

    /// Random inputs for `p` (in [`OpDef::inputs`] order); `large` makes some logits reach
    /// about ±1e4 (or whatever stresses this op's softmax).
    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor>;

    /// The float64 reference of `p` on `inputs`.
    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference;

    /// Inputs for timing `p`: like [`OpDef::random_inputs`], but ops whose consistent inputs
    /// cost a float64 computation (the backward's forward outputs) may use cheap stand-ins of
    /// the same size and range, since the time does not depend on the values.
    #[cfg(feature = "cli")]
    fn timing_inputs(&self, p: &Problem, draw: Draw<'_>) -> Vec<HostTensor> {
        self.random_inputs(p, draw, false)
    }

    // ---- launch -------------------------------------------------------------------------

    /// The splits a launch of `tile` on `p` uses on a device of `sm_count` multiprocessors.
    fn splits(&self, _p: &Problem, _tile: &Tile, _sm_count: u32) -> usize {
        1
    }

    /// Outputs updated in place: (output, input) pairs where the output starts as the input's
    /// contents (append's rings); the caller passes the same buffer for both.
    fn in_place(&self) -> &'static [(usize, usize)] {
        &[]
    }

    /// fp32 workspace elements a launch of `p` with `tile` and `splits` needs.
    fn workspace(&self, _p: &Problem, _tile: &Tile, _splits: usize) -> usize {
        0
    }

    /// Checks the call's tensors against `spec` and plans its launches (none when there is
    /// nothing to compute).
    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError>;
}

/// The description of `op`.
pub fn of(op: Op) -> &'static dyn OpDef {
    match op {
        Op::Prefill => &prefill::Prefill,
        Op::Decode => &decode::Decode,
        Op::ChunkMean => &chunk_mean::ChunkMean,
        Op::ChunkSummarize => &chunk_summarize::ChunkSummarize,
        Op::PrefillBwd => &prefill_bwd::PrefillBwd,
        Op::ChunkSummarizeBwd => &chunk_summarize_bwd::ChunkSummarizeBwd,
        Op::ChunkMeanBwd => &chunk_mean_bwd::ChunkMeanBwd,
        Op::Extend => &extend::Extend,
        Op::Append => &append::Append,
        Op::DecodePaged => &paged::DECODE_PAGED,
        Op::ExtendPaged => &paged::EXTEND_PAGED,
        Op::AppendPaged => &paged::APPEND_PAGED,
    }
}

/// A small problem of `op`, to ask an op for its tensors' names, ranks and element types.
pub fn probe_problem(op: Op) -> Problem {
    Problem::new(Workload {
        spec: crate::spec::KernelSpec::new(
            op,
            &SpecParams {
                head_dim: Some(64),
                window: Some(8),
                chunk: Some(8),
                ..Default::default()
            },
        )
        .expect("a valid spec"),
        b: 1,
        n: 8,
        h: 1,
        hkv: 1,
        past: 0,
    })
}

/// The names of an op's inputs, for messages (`q, k, v, ks, vs`).
pub fn input_names(op: Op) -> String {
    of(op)
        .inputs(&probe_problem(op))
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Shape helpers shared by the op descriptions.
pub(crate) fn desc(
    name: &'static str,
    elem: ElemType,
    shape: &[usize],
    doc: &'static str,
) -> TensorDesc {
    TensorDesc {
        name,
        elem,
        shape: shape.to_vec(),
        doc,
    }
}

/// Checks that inputs in `got` have the ranks of `descs` and one storage type, which it returns.
pub(crate) fn common_dtype(
    descs: &[TensorDesc],
    got: &[(ElemType, Vec<usize>)],
) -> std::result::Result<DType, String> {
    let mut dtype: Option<(DType, &str)> = None;
    for (d, (e, shape)) in descs.iter().zip(got) {
        if shape.len() != d.shape.len() {
            return Err(format!(
                "tensor {} has shape {shape:?}, expected {}",
                d.name, d.doc
            ));
        }
        if !matches!(d.elem, ElemType::F16 | ElemType::Bf16) {
            if *e != d.elem {
                return Err(format!(
                    "tensor {} is {}, expected {} {}",
                    d.name,
                    e.as_str(),
                    d.elem.as_str(),
                    d.doc
                ));
            }
            continue;
        }
        let t = match e {
            ElemType::F16 => DType::F16,
            ElemType::Bf16 => DType::Bf16,
            other => {
                return Err(format!(
                    "tensor {} is {}: flasheva takes f16 or bf16 tensors",
                    d.name,
                    other.as_str()
                ));
            }
        };
        match dtype {
            None => dtype = Some((t, d.name)),
            Some((first, name)) if first != t => {
                return Err(format!(
                    "tensor {} is {t}, but {name} is {first}: all inputs share one dtype",
                    d.name
                ));
            }
            _ => {}
        }
    }
    dtype
        .map(|(t, _)| t)
        .ok_or_else(|| "no storage-type input".to_string())
}

/// The spec of `op` from the user's flags and what the tensors tell (head dim, dtype, group).
pub(crate) fn spec_from(
    op: Op,
    flags: &SpecParams,
    head_dim: usize,
    dtype: DType,
    group: Option<u32>,
) -> std::result::Result<KernelSpec, String> {
    KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(head_dim as u32),
            dtype: Some(dtype),
            group,
            ..*flags
        },
    )
    .map_err(|e| e.to_string())
}

/// The random inputs of the attention ops that read int32 vectors after their float tensors
/// (decode: len; extend: start, count): the first `floats` of `descs` drawn from U(-1, 1), the
/// query rows (the first) amplified when `large`, then each vector of `ints` as int32 [B].
#[cfg(feature = "cli")]
pub(crate) fn draw_with_ints(
    p: &Problem,
    descs: &[TensorDesc],
    floats: usize,
    large: bool,
    draw: Draw<'_>,
    ints: &[&[i32]],
) -> Vec<HostTensor> {
    let mut v: Vec<HostTensor> = descs[..floats]
        .iter()
        .map(|t| draw(&t.shape, 1.0))
        .collect();
    if large {
        v[0] = amplify_rows(&v[0], p.d(), 3.0e4, draw);
    }
    for i in ints {
        v.push(HostTensor::from_i32(&[p.workload.b], i));
    }
    v
}

/// `L0+T` of the first sequences of a varlen problem (extend, append), for its description.
pub(crate) fn starts_and_counts(p: &Problem) -> String {
    let pairs: Vec<String> = p
        .lens
        .iter()
        .zip(&p.counts)
        .take(5)
        .map(|(l, t)| format!("{l}+{t}"))
        .collect();
    format!(
        "L0+T=[{}{}]",
        pairs.join(","),
        if p.lens.len() > 5 { ",..." } else { "" }
    )
}

/// Picks a random eighth of the rows (of the last dimension) of `t` and scales them by `amp`.
#[cfg(feature = "cli")]
pub(crate) fn amplify_rows(t: &HostTensor, d: usize, amp: f64, draw: Draw<'_>) -> HostTensor {
    let rows = t.len() / d.max(1);
    let pick = draw(&[rows.max(1)], 1.0);
    let mut vals = t.to_f64();
    for r in 0..rows {
        if pick.get(r) > 0.75 {
            for x in &mut vals[r * d..(r + 1) * d] {
                *x *= amp;
            }
        }
    }
    HostTensor::from_f64(t.elem, &t.shape, &vals)
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;
    use crate::spec::LocalMode;

    fn workload(op: Op, n: usize) -> Workload {
        // chunk ops have one head count: G of X (chunk_mean), Hkv (chunk_summarize)
        let heads = match op {
            Op::ChunkMean
            | Op::ChunkSummarize
            | Op::ChunkMeanBwd
            | Op::ChunkSummarizeBwd
            | Op::Append
            | Op::AppendPaged => 2,
            _ => 8,
        };
        Workload {
            spec: KernelSpec::new(
                op,
                &SpecParams {
                    head_dim: Some(64),
                    window: Some(128),
                    chunk: Some(8),
                    local: Some(LocalMode::Sliding),
                    group: Some(4),
                    ..Default::default()
                },
            )
            .unwrap(),
            b: 2,
            n,
            h: heads,
            hkv: 2,
            past: 0,
        }
    }

    #[test]
    fn every_op_describes_itself_consistently() {
        for op in Op::ALL {
            let def = of(op);
            assert_eq!(def.op(), op);
            let p = Problem::new(workload(op, 77));
            let ins = def.inputs(&p);
            let outs = def.outputs(&p);
            assert!(!ins.is_empty() && !outs.is_empty(), "{op}");
            // the shapes of the inputs describe the same problem again
            let shapes: Vec<(ElemType, Vec<usize>)> =
                ins.iter().map(|t| (t.elem, t.shape.clone())).collect();
            // random inputs have the described shapes
            let (mut rng, _) = crate::hostdata::fresh_rng();
            let dt = p.spec().dtype();
            let mut draw =
                |shape: &[usize], amp: f64| HostTensor::uniform(&mut rng, dt, shape, amp);
            let r = def.random_inputs(&p, &mut draw, true);
            // every int32 vector, in input order, as `flasheva run` passes them
            let ints: Vec<i32> = r
                .iter()
                .filter(|t| t.elem == ElemType::I32 && t.shape.len() == 1)
                .flat_map(|t| t.to_i32())
                .collect();
            let lens = (!ints.is_empty()).then_some(ints.as_slice());
            let flags = SpecParams {
                window: Some(128),
                chunk: Some(8),
                local: Some(LocalMode::Sliding),
                ..Default::default()
            };
            let back = def.problem_from(&flags, &shapes, lens).unwrap();
            assert_eq!(back.workload.spec, p.workload.spec, "{op}");
            assert_eq!(
                (back.workload.b, back.workload.h, back.workload.hkv),
                (p.workload.b, p.workload.h, p.workload.hkv),
                "{op}"
            );
            assert_eq!(
                (back.summary_rows, back.page, &back.lens, &back.counts),
                (p.summary_rows, p.page, &p.lens, &p.counts),
                "{op}"
            );
            assert_eq!(r.len(), ins.len());
            for (t, d) in r.iter().zip(&ins) {
                assert_eq!((t.elem, &t.shape), (d.elem, &d.shape), "{op} {}", d.name);
            }
            let reference = def.reference(&p, &r);
            for (o, d) in reference.outputs.iter().zip(&outs) {
                assert_eq!(
                    o.len(),
                    d.shape.iter().product::<usize>(),
                    "{op} {}",
                    d.name
                );
            }
        }
        assert_eq!(input_names(Op::Prefill), "q, k, v, ks, vs");
        assert_eq!(input_names(Op::Decode), "q, k_ring, v_ring, ks, vs, len");
    }

    #[test]
    fn mismatched_inputs_are_named() {
        let def = of(Op::Prefill);
        let p = Problem::new(workload(Op::Prefill, 16));
        let mut shapes: Vec<(ElemType, Vec<usize>)> = def
            .inputs(&p)
            .iter()
            .map(|t| (t.elem, t.shape.clone()))
            .collect();
        shapes[2].0 = ElemType::F16;
        let e = def
            .problem_from(&SpecParams::default(), &shapes, None)
            .unwrap_err();
        assert!(e.contains("tensor v is f16, but q is bf16"), "{e}");
        shapes[2].0 = ElemType::Bf16;
        shapes[1].1.pop();
        let e = def
            .problem_from(&SpecParams::default(), &shapes, None)
            .unwrap_err();
        assert!(e.contains("tensor k has shape"), "{e}");
    }
    /// The CUDA decode kernels' launch asks for the shared memory their op says the tile needs:
    /// the paged decode is planned through the contiguous decode, and a paged kernel that needed
    /// more (run 75: its page table row after the decode's tiles) took the contiguous one's and
    /// faulted.
    #[test]
    fn decode_launches_take_their_ops_shared_memory() {
        let dev = DeviceFacts::new(4);
        for op in [Op::Decode, Op::DecodePaged] {
            for arch in [Arch::new(8, 0), "sm_90a".parse().unwrap()] {
                let def = of(op);
                let mut p = Problem::new(workload(op, 77));
                p.splits = Some(3);
                let spec = p.spec();
                let tile = Tile::default_for(&spec, arch);
                let args = p.placeholder_args(&tile, dev.sm_count, 0x10000, 0x20000);
                let steps = def.plan(&spec, &tile, &args, dev).unwrap();
                assert_eq!(steps[0].smem, tile.smem_bytes(&spec), "{op} {arch} {tile}");
            }
        }
    }
    /// The Triton launches pass exactly the parameters of the Python kernels, in order (every
    /// non-constexpr parameter of the `def`, then Triton's two scratch pointers).
    #[test]
    fn triton_parameters_match_the_kernels() {
        fn python_params(function: &str) -> Vec<String> {
            let src = crate::render::TRITON_KERNELS;
            let start = src
                .find(&format!("def {function}("))
                .unwrap_or_else(|| panic!("no def {function}"));
            let rest = &src[start + function.len() + 5..];
            let sig = &rest[..rest.find("):").expect("end of the signature")];
            sig.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !p.contains("tl.constexpr"))
                .map(String::from)
                .collect()
        }
        let dev = DeviceFacts::new(4);
        for op in Op::ALL {
            let def = of(op);
            let mut p = Problem::new(workload(op, 77));
            p.splits = Some(3);
            let spec = p.spec();
            let tile = Tile::new(&spec, def.triton_default(&spec)).unwrap();
            let args = p.placeholder_args(&tile, dev.sm_count, 0x10000, 0x20000);
            let steps = def.plan(&spec, &tile, &args, dev).unwrap();
            let kernels = def.triton_kernels(&spec, &tile);
            assert_eq!(steps.len(), kernels.len(), "{op}: one launch per kernel");
            for (step, k) in steps.iter().zip(&kernels) {
                let mut want = python_params(k.function);
                want.extend(["global_scratch".into(), "profile_scratch".into()]);
                assert_eq!(step.arg_names, want, "{op} {}", k.function);
                assert_eq!(step.block.0, tile.warps() * 32);
                assert!(step.smem_from_artifact);
                assert_eq!(k.entry, spec.entry_points(&tile)[step.function]);
            }
        }
    }
}
