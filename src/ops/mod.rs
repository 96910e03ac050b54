//! One description per op: its inputs and outputs (names, shapes from a [`Problem`], element
//! types), how to make random inputs, how to launch it on device tensors, and its float64
//! reference. `run`, `bench`, the correctness checks and the tuner all go through this table, so
//! adding an op is one new file here plus its template.

mod chunk_mean;
mod chunk_summarize;
mod decode;
mod prefill;

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::driver::CudaStream;
use crate::gpu::tensor::{DeviceTensor, alloc_poisoned, upload};
use crate::hostdata::HostTensor;
use crate::loader::Kernel;
use crate::spec::{DType, KernelSpec, Op, SpecParams};
use crate::tensor::{ElemType, TensorArg};
use crate::workload::Workload;

/// One concrete call of an op: the workload and what it leaves open.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The spec and sizes.
    pub workload: Workload,
    /// Decode: every sequence's length (tokens including the new one); empty for other ops.
    pub lens: Vec<i32>,
    /// Rows of the per-chunk tensors (summaries, omega, means): at least N/C for prefill and the
    /// chunk ops (more are allowed and never read), the summary slots MAXNC for decode.
    pub summary_rows: usize,
    /// Softmax scale (default `1/sqrt(D)`).
    pub scale: Option<f32>,
    /// Decode splits (default: the kernel's choice for the device).
    pub splits: Option<usize>,
}

impl Problem {
    /// The problem of a workload with its defaults: decode sequences all of length `n`, exactly
    /// N/C summary rows (decode: `max(N/C, 1)` slots), the default scale and splits.
    pub fn new(workload: Workload) -> Problem {
        let spec = workload.spec;
        let (lens, summary_rows) = match spec.op() {
            Op::Decode => (vec![workload.n as i32; workload.b], workload.max_nc()),
            _ => (Vec::new(), workload.n / spec.chunk() as usize),
        };
        Problem {
            workload,
            lens,
            summary_rows,
            scale: None,
            splits: None,
        }
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
pub type Draw<'a> = &'a mut dyn FnMut(&[usize], f64) -> HostTensor;

/// The reference result of a call: every output in float64, and for outputs that are LSEs, the
/// magnitude of the largest summed logit term of each row (see [`crate::verify::lse_bound`]).
pub struct Reference {
    /// One vector per output, in [`OpDef::outputs`] order.
    pub outputs: Vec<Vec<f64>>,
    /// Per output: the LSE magnitudes when that output is an LSE.
    pub lse_magnitudes: Vec<Option<Vec<f64>>>,
}

/// What an op is, as data and functions.
pub trait OpDef: Sync {
    /// The op.
    fn op(&self) -> Op;

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
    ) -> std::result::Result<Problem, String>;

    /// Random inputs for `p` (in [`OpDef::inputs`] order); `large` makes some logits reach
    /// about ±1e4 (or whatever stresses this op's softmax).
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor>;

    /// fp32 workspace elements a launch of `kernel` on `p` needs.
    fn workspace(&self, _p: &Problem, _kernel: &Kernel) -> usize {
        0
    }

    /// Launches `kernel` on `t` (made by [`Tensors::new`] for `p`) on `stream`.
    fn launch(&self, kernel: &Kernel, stream: &CudaStream, p: &Problem, t: &Tensors) -> Result<()>;

    /// The float64 reference of `p` on `inputs`.
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference;
}

/// The description of `op`.
pub fn of(op: Op) -> &'static dyn OpDef {
    match op {
        Op::Prefill => &prefill::Prefill,
        Op::Decode => &decode::Decode,
        Op::ChunkMean => &chunk_mean::ChunkMean,
        Op::ChunkSummarize => &chunk_summarize::ChunkSummarize,
    }
}

/// A small problem of `op`, to ask an op for its tensors' names, ranks and element types.
pub(crate) fn probe_problem(op: Op) -> Problem {
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

/// The device tensors of one call: inputs, poisoned outputs, and the workspace.
pub struct Tensors {
    /// Inputs, in [`OpDef::inputs`] order.
    pub inputs: Vec<DeviceTensor>,
    /// Outputs, in [`OpDef::outputs`] order.
    pub outputs: Vec<DeviceTensor>,
    /// fp32 workspace (NaN-filled), if the launch needs one.
    pub workspace: Option<DeviceTensor>,
}

/// The value written into the padding of input rows: large enough that a kernel reading it
/// would be caught by the reference check.
const JUNK: f64 = 7.0;

impl Tensors {
    /// Uploads `inputs` for `p` (storage-type rows padded by `pad` elements when `pad > 0`, so
    /// strides are not contiguous), allocates poisoned outputs (padded likewise) and the
    /// workspace `kernel` needs.
    pub fn new(
        stream: &Arc<CudaStream>,
        def: &dyn OpDef,
        p: &Problem,
        kernel: &Kernel,
        inputs: &[HostTensor],
        pad: usize,
    ) -> Result<Tensors> {
        let descs = def.inputs(p);
        let mut ins = Vec::with_capacity(inputs.len());
        for (d, t) in descs.iter().zip(inputs) {
            ins.push(upload(stream, d.name, t, pad, JUNK)?);
        }
        let mut outs = Vec::new();
        for d in def.outputs(p) {
            outs.push(alloc_poisoned(stream, d.name, d.elem, &d.shape, pad)?);
        }
        let ws = def.workspace(p, kernel);
        let workspace = if ws > 0 {
            Some(alloc_poisoned(
                stream,
                "workspace",
                ElemType::F32,
                &[ws],
                0,
            )?)
        } else {
            None
        };
        Ok(Tensors {
            inputs: ins,
            outputs: outs,
            workspace,
        })
    }

    /// The argument of the input or output called `name`.
    pub fn arg(&self, name: &str) -> TensorArg {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .find(|t| t.arg.name == name)
            .unwrap_or_else(|| panic!("the op description names no tensor {name}"))
            .arg
            .clone()
    }

    /// The workspace as (address, fp32 elements).
    pub fn workspace_arg(&self) -> Option<(u64, usize)> {
        self.workspace.as_ref().map(|w| (w.arg.ptr, w.arg.shape[0]))
    }

    /// Poisons every output again (before a launch whose outputs will be read).
    pub fn poison_outputs(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        for o in &mut self.outputs {
            o.poison(stream)?;
        }
        Ok(())
    }

    /// Downloads every output.
    pub fn download_outputs(&self, stream: &Arc<CudaStream>) -> Result<Vec<HostTensor>> {
        Ok(self
            .outputs
            .iter()
            .map(|o| o.download(stream))
            .collect::<std::result::Result<_, _>>()?)
    }
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

/// Picks a random eighth of the rows (of the last dimension) of `t` and scales them by `amp`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LocalMode;

    fn workload(op: Op, n: usize) -> Workload {
        // chunk ops have one head count: G of X (chunk_mean), Hkv (chunk_summarize)
        let heads = match op {
            Op::ChunkMean | Op::ChunkSummarize => 2,
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
            let lens = (op == Op::Decode).then_some(p.lens.as_slice());
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
            // random inputs have the described shapes
            let (mut rng, _) = crate::hostdata::fresh_rng();
            let dt = p.spec().dtype();
            let mut draw =
                |shape: &[usize], amp: f64| HostTensor::uniform(&mut rng, dt, shape, amp);
            let r = def.random_inputs(&p, &mut draw, true);
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
}
