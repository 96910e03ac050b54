//! prefill: `q [B,N,H,D]`, `k, v [B,N,Hkv,D]`, `ks, vs [B,NC,Hkv,D]` (NC >= N/C) ->
//! `o [B,N,H,D]`, `lse [B,H,N]` fp32.

use super::{
    Draw, OpDef, Problem, Reference, Tensors, amplify_rows, common_dtype, desc, probe_problem,
    spec_from,
};
use crate::error::Result;
use crate::gpu::driver::CudaStream;
use crate::gpu::params::PrefillArgs;
use crate::hostdata::HostTensor;
use crate::loader::Kernel;
use crate::reference::{self, AttnShape};
use crate::spec::{LocalMode, Op, SpecParams};
use crate::tensor::ElemType;
use crate::workload::Workload;

/// The prefill op.
pub struct Prefill;

/// The reference's view of a prefill problem.
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

impl OpDef for Prefill {
    fn op(&self) -> Op {
        Op::Prefill
    }

    fn inputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
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

    fn outputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
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
    ) -> std::result::Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::Prefill)), inputs)?;
        let (q, k, ks) = (&inputs[0].1, &inputs[1].1, &inputs[3].1);
        let spec = spec_from(Op::Prefill, flags, q[3], dtype, None)?;
        let mut p = Problem::new(Workload {
            spec,
            b: q[0],
            n: q[1],
            h: q[2],
            hkv: k[2],
        });
        p.summary_rows = ks[1];
        Ok(p)
    }

    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        let mut v: Vec<HostTensor> = self.inputs(p).iter().map(|t| draw(&t.shape, 1.0)).collect();
        if large {
            // q ~ U(-A, A), k ~ U(-1, 1): s * q.k has standard deviation A / 3 whatever D is.
            v[0] = amplify_rows(&v[0], p.d(), 3.0e4, draw);
        }
        v
    }

    fn launch(&self, kernel: &Kernel, stream: &CudaStream, p: &Problem, t: &Tensors) -> Result<()> {
        kernel.prefill(
            stream,
            &PrefillArgs {
                q: t.arg("q"),
                k: t.arg("k"),
                v: t.arg("v"),
                ks: t.arg("ks"),
                vs: t.arg("vs"),
                o: t.arg("o"),
                lse: t.arg("lse"),
                scale: p.scale,
            },
        )
    }

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
            lse_magnitudes: vec![None, Some(mags)],
        }
    }
}
