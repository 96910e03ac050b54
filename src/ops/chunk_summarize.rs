//! chunk_summarize: `k, v [B,N,Hkv,D]`, `omega [B,NC,Hkv,D]` -> `vs [B,NC,Hkv,D]` (NC >= N/C
//! rows; the first N/C are written).

use super::{
    Draw, OpDef, Problem, Reference, Tensors, common_dtype, desc, probe_problem, spec_from,
};
use crate::error::Result;
use crate::gpu::driver::CudaStream;
use crate::gpu::params::ChunkSummarizeArgs;
use crate::hostdata::HostTensor;
use crate::loader::Kernel;
use crate::reference;
use crate::spec::{Op, SpecParams};
use crate::tensor::ElemType;
use crate::workload::Workload;

/// The chunk_summarize op. The workload's `h` and `hkv` are both the kv heads.
pub struct ChunkSummarize;

impl OpDef for ChunkSummarize {
    fn op(&self) -> Op {
        Op::ChunkSummarize
    }

    fn inputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        vec![
            desc("k", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("v", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc(
                "omega",
                e,
                &[w.b, p.summary_rows, w.hkv, d],
                "[B, NC, Hkv, D]",
            ),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
        let w = &p.workload;
        vec![desc(
            "vs",
            p.elem(),
            &[w.b, p.summary_rows, w.hkv, p.d()],
            "[B, NC, Hkv, D]",
        )]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        _lens: Option<&[i32]>,
    ) -> std::result::Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::ChunkSummarize)), inputs)?;
        let (k, om) = (&inputs[0].1, &inputs[2].1);
        let spec = spec_from(Op::ChunkSummarize, flags, k[3], dtype, None)?;
        let mut p = Problem::new(Workload {
            spec,
            b: k[0],
            n: k[1],
            h: k[2],
            hkv: k[2],
        });
        p.summary_rows = om[1];
        Ok(p)
    }

    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        // Large: keys and omega of amplitude 8 make logits of a few hundred.
        let amp = if large { 8.0 } else { 1.0 };
        let ins = self.inputs(p);
        vec![
            draw(&ins[0].shape, amp),
            draw(&ins[1].shape, 1.0),
            draw(&ins[2].shape, amp),
        ]
    }

    fn launch(&self, kernel: &Kernel, stream: &CudaStream, p: &Problem, t: &Tensors) -> Result<()> {
        kernel.chunk_summarize(
            stream,
            &ChunkSummarizeArgs {
                k: t.arg("k"),
                v: t.arg("v"),
                omega: t.arg("omega"),
                vs: t.arg("vs"),
                scale: p.scale,
            },
        )
    }

    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let c = w.spec.chunk() as usize;
        let mut out = reference::chunk_summarize(
            &inputs[0].to_f64(),
            &inputs[1].to_f64(),
            &inputs[2].to_f64(),
            w.b,
            w.n,
            w.hkv,
            p.d(),
            c,
            p.summary_rows,
            p.scale(),
        );
        // The reference fills all summary rows; those past N/C are not written by the kernel.
        let nc = w.n / c;
        let row = w.hkv * p.d();
        for bi in 0..w.b {
            for r in nc..p.summary_rows {
                out[(bi * p.summary_rows + r) * row..][..row].fill(f64::NAN);
            }
        }
        Reference {
            outputs: vec![out],
            lse_magnitudes: vec![None],
        }
    }
}
