//! decode: `q [B,H,D]`, `k_ring, v_ring [B,W,Hkv,D]`, `ks, vs [B,MAXNC,Hkv,D]`, `len [B]` int32
//! -> `o [B,H,D]`, `lse [B,H]` fp32. Split-KV with a combine kernel and an fp32 workspace.

use super::{
    Draw, OpDef, Problem, Reference, Tensors, amplify_rows, common_dtype, desc, probe_problem,
    spec_from,
};
use crate::error::Result;
use crate::gpu::driver::CudaStream;
use crate::gpu::params::{DecodeArgs, decode_workspace_elems};
use crate::hostdata::HostTensor;
use crate::loader::Kernel;
use crate::reference;
use crate::spec::{LocalMode, Op, SpecParams};
use crate::tensor::ElemType;
use crate::workload::Workload;

/// The decode op.
pub struct Decode;

fn splits(p: &Problem, kernel: &Kernel) -> usize {
    let w = &p.workload;
    p.splits.unwrap_or_else(|| {
        kernel.decode_splits(
            w.b,
            w.hkv,
            w.spec.window_or_zero() as usize + p.summary_rows,
        )
    })
}

impl OpDef for Decode {
    fn op(&self) -> Op {
        Op::Decode
    }

    fn inputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
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

    fn outputs(&self, p: &Problem) -> Vec<super::TensorDesc> {
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
    ) -> std::result::Result<Problem, String> {
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
        let mut p = Problem::new(Workload {
            spec,
            b: q[0],
            n,
            h: q[1],
            hkv,
        });
        p.lens = lens;
        p.summary_rows = ks[1];
        Ok(p)
    }

    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        // Stale ring slots and unused summaries hold random values the kernel must ignore.
        let mut v: Vec<HostTensor> = self
            .inputs(p)
            .iter()
            .take(5)
            .map(|t| draw(&t.shape, 1.0))
            .collect();
        if large {
            v[0] = amplify_rows(&v[0], p.d(), 3.0e4, draw);
        }
        v.push(HostTensor::from_i32(&[p.workload.b], &p.lens));
        v
    }

    fn workspace(&self, p: &Problem, kernel: &Kernel) -> usize {
        let w = &p.workload;
        decode_workspace_elems(w.b, w.h, p.d(), splits(p, kernel))
    }

    fn launch(&self, kernel: &Kernel, stream: &CudaStream, p: &Problem, t: &Tensors) -> Result<()> {
        kernel.decode(
            stream,
            &DecodeArgs {
                q: t.arg("q"),
                k_ring: t.arg("k_ring"),
                v_ring: t.arg("v_ring"),
                ks: t.arg("ks"),
                vs: t.arg("vs"),
                len: t.arg("len"),
                o: t.arg("o"),
                lse: t.arg("lse"),
                scale: p.scale,
            },
            splits(p, kernel),
            t.workspace_arg(),
        )
    }

    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let f: Vec<Vec<f64>> = inputs[..5].iter().map(HostTensor::to_f64).collect();
        let geo = reference::DecodeShape {
            b: w.b,
            h: w.h,
            hkv: w.hkv,
            d: p.d(),
            window: w.spec.window_or_zero() as usize,
            chunk: w.spec.chunk() as usize,
            local: w.spec.local().unwrap_or(LocalMode::Block),
            max_nc: p.summary_rows,
        };
        let (o, lse) =
            reference::decode(&geo, &p.lens, &f[0], &f[1], &f[2], &f[3], &f[4], p.scale());
        let mags = reference::decode_lse_magnitudes(&geo, &p.lens, &f[0], &f[1], &f[3], p.scale());
        Reference {
            outputs: vec![o, lse],
            lse_magnitudes: vec![None, Some(mags)],
        }
    }
}
