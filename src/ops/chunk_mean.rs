//! chunk_mean: `x [B,N,G,D]` -> `xbar [B,NC,G,D]` (NC >= N/C rows; the first N/C are written).

use super::{
    Draw, OpDef, Problem, Reference, Tensors, common_dtype, desc, probe_problem, spec_from,
};
use crate::error::Result;
use crate::gpu::driver::CudaStream;
use crate::gpu::params::ChunkMeanArgs;
use crate::hostdata::HostTensor;
use crate::loader::Kernel;
use crate::reference;
use crate::spec::{Op, SpecParams};
use crate::tensor::ElemType;
use crate::workload::Workload;

/// The chunk_mean op. The workload's `h` is the number of heads G of X.
pub struct ChunkMean;

impl OpDef for ChunkMean {
    fn op(&self) -> Op {
        Op::ChunkMean
    }

    fn inputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
        let w = &p.workload;
        vec![desc("x", p.elem(), &[w.b, w.n, w.h, p.d()], "[B, N, G, D]")]
    }

    fn outputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
        let w = &p.workload;
        vec![desc(
            "xbar",
            p.elem(),
            &[w.b, p.summary_rows, w.h, p.d()],
            "[B, NC, G, D]",
        )]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        _lens: Option<&[i32]>,
    ) -> std::result::Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::ChunkMean)), inputs)?;
        let x = &inputs[0].1;
        let spec = spec_from(Op::ChunkMean, flags, x[3], dtype, None)?;
        Ok(Problem::new(Workload {
            spec,
            b: x[0],
            n: x[1],
            h: x[2],
            hkv: x[2],
        }))
    }

    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, _large: bool) -> Vec<HostTensor> {
        self.inputs(p).iter().map(|t| draw(&t.shape, 1.0)).collect()
    }

    fn launch(
        &self,
        kernel: &Kernel,
        stream: &CudaStream,
        _p: &Problem,
        t: &Tensors,
    ) -> Result<()> {
        kernel.chunk_mean(
            stream,
            &ChunkMeanArgs {
                x: t.arg("x"),
                xbar: t.arg("xbar"),
            },
        )
    }

    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let c = w.spec.chunk() as usize;
        let mut out = reference::chunk_mean(&inputs[0].to_f64(), w.b, w.n, w.h, p.d(), c);
        // Rows past N/C are never written: the reference leaves them out of the comparison by
        // giving them the output's own poison (NaN), which rel_error skips.
        pad_rows(&mut out, w.b, w.n / c, p.summary_rows, w.h * p.d());
        Reference {
            outputs: vec![out],
            lse_magnitudes: vec![None],
        }
    }
}

/// Widens `[b, nc, row]` to `[b, rows, row]` with NaN rows (not compared).
pub(crate) fn pad_rows(v: &mut Vec<f64>, b: usize, nc: usize, rows: usize, row: usize) {
    if rows == nc {
        return;
    }
    let mut out = vec![f64::NAN; b * rows * row];
    for bi in 0..b {
        out[bi * rows * row..][..nc * row].copy_from_slice(&v[bi * nc * row..][..nc * row]);
    }
    *v = out;
}
