//! chunk_summarize_bwd: the gradients of chunk_summarize (the contract's backward). From
//! `k, v [B,N,Hkv,D]`, `omega [B,NC,Hkv,D]` and `dvs [B,NC,Hkv,D]` to `dk, dv [B,N,Hkv,D]` and
//! `domega [B,NC,Hkv,D]`; the tokens of a trailing partial chunk and the omega rows at or past
//! N/C get zero. One program per chunk and kv head (Triton so far).

use super::launch::{
    ArgList, LaunchError, OpArgs, Step, check_op, expect_chunk_rows, expect_contiguous_rows,
    expect_dtype, expect_shape, grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel, common_dtype,
    constexprs, desc, pow2, probe_problem, spec_from, triton_only,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference;
use crate::spec::{KernelSpec, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::ElemType;
use crate::tile::{Engine, Tile, TileError, TileParams};
use crate::workload::Workload;

/// The chunk_summarize_bwd op. The workload's `h` and `hkv` are both the kv heads.
pub struct ChunkSummarizeBwd;

const NAMES: [&str; 7] = ["k", "v", "omega", "dvs", "dk", "dv", "domega"];

impl OpDef for ChunkSummarizeBwd {
    fn op(&self) -> Op {
        Op::ChunkSummarizeBwd
    }

    super::triton_only_kernels!();

    fn tile_name(&self, t: &TileParams) -> String {
        format!("tr_w{}", t.warps)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        super::chunk_mean::warps_only(t)
    }

    fn check_tile(&self, _spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        triton_only(Op::ChunkSummarizeBwd, t, false, false, false)
    }

    fn triton_default(&self, _spec: &KernelSpec) -> TileParams {
        TileParams {
            engine: Engine::Triton,
            warps: 4,
            ..TileParams::default()
        }
    }

    fn triton_kernels(&self, spec: &KernelSpec, _tile: &Tile) -> Vec<TritonKernel> {
        vec![TritonKernel {
            function: "fe_chunk_summarize_bwd",
            entry: spec.name(),
            aligned: true,
            constexprs: constexprs(
                spec,
                &[
                    ("C", Const::Int(spec.chunk())),
                    ("CP", Const::Int(pow2(spec.chunk()))),
                ],
            ),
        }]
    }

    fn flops(&self, w: &Workload) -> f64 {
        // the forward's logits and sum (4·D per token) again, then dv, g, dk, domega: 4·D more
        8.0 * w.spec.head_dim() as f64 * (w.b * w.n * w.hkv) as f64
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let nc = w.n / w.spec.chunk() as usize;
        (w.b * (4 * w.n + 3 * nc) * w.hkv * w.spec.head_dim() as usize * 2) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Flops
    }

    fn bucket_rows(&self, b: usize, _h: usize, hkv: usize) -> usize {
        b * hkv
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
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
            desc(
                "dvs",
                e,
                &[w.b, p.summary_rows, w.hkv, d],
                "[B, NC, Hkv, D]",
            ),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        vec![
            desc("dk", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("dv", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc(
                "domega",
                e,
                &[w.b, p.summary_rows, w.hkv, d],
                "[B, NC, Hkv, D]",
            ),
        ]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        _lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::ChunkSummarizeBwd)), inputs)?;
        let (k, om) = (&inputs[0].1, &inputs[2].1);
        let spec = spec_from(Op::ChunkSummarizeBwd, flags, k[3], dtype, None)?;
        let mut p = Problem::new(Workload::new(spec, k[0], k[1], k[2], k[2]));
        p.summary_rows = om[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        let c = w.spec.chunk() as usize;
        let heads = w.hkv.clamp(1, 2);
        let mut p = Problem::new(Workload::new(w.spec, 1, 5 * c + 3, heads, heads));
        p.summary_rows += 1;
        CheckProblem {
            problem: p,
            large_logits: true,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        // Large: keys and omega of amplitude 8 make logits of a few hundred.
        let amp = if large { 8.0 } else { 1.0 };
        let ins = self.inputs(p);
        vec![
            draw(&ins[0].shape, amp),
            draw(&ins[1].shape, 1.0),
            draw(&ins[2].shape, amp),
            draw(&ins[3].shape, 1.0),
        ]
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let f: Vec<Vec<f64>> = inputs.iter().map(HostTensor::to_f64).collect();
        let (dk, dv, dom) = reference::chunk_summarize_bwd(
            &f[0],
            &f[1],
            &f[2],
            &f[3],
            w.b,
            w.n,
            w.hkv,
            p.d(),
            w.spec.chunk() as usize,
            p.summary_rows,
            p.scale(),
        );
        let zeros = |v: &Vec<f64>| Check::Gradient(vec![0.0; v.len()]);
        Reference {
            checks: vec![zeros(&dk), zeros(&dv), zeros(&dom)],
            outputs: vec![dk, dv, dom],
        }
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        _device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        check_op(spec, Op::ChunkSummarizeBwd)?;
        let t = args.expect(Op::ChunkSummarizeBwd, &NAMES)?;
        let et = ElemType::of(spec.dtype());
        let d = spec.head_dim() as usize;
        for x in t {
            expect_dtype(x, et)?;
        }
        expect_shape(&t[0], &[None, None, None, Some(d)], "[B, N, Hkv, D]")?;
        let (b, n, hkv) = (t[0].shape[0], t[0].shape[1], t[0].shape[2]);
        let tokens = [Some(b), Some(n), Some(hkv), Some(d)];
        for i in [1, 4, 5] {
            expect_shape(&t[i], &tokens, "[B, N, Hkv, D]")?;
        }
        let nc = n / spec.chunk() as usize;
        expect_chunk_rows(&t[2], b, nc, hkv, d, "Hkv")?;
        let ncr = t[2].shape[1];
        let rows = [Some(b), Some(ncr), Some(hkv), Some(d)];
        for i in [3, 6] {
            expect_shape(&t[i], &rows, "[B, NC, Hkv, D] like omega")?;
        }
        for x in t {
            expect_contiguous_rows(x)?;
        }
        // N = 0 still has omega rows (all past N/C) whose domega is zero
        if b == 0 || hkv == 0 || (n == 0 && ncr == 0) {
            return Ok(Vec::new());
        }
        // the Triton kernel is compiled for 16-byte access to all of them (`TritonKernel::aligned`)
        for x in t {
            super::launch::expect_vector_layout(x)?;
        }
        let scale = args.scale.unwrap_or_else(|| spec.default_scale());
        let mut a = ArgList::default();
        for (name, i) in [
            ("K", 0),
            ("V", 1),
            ("OMEGA", 2),
            ("DVS", 3),
            ("DK", 4),
            ("DV", 5),
            ("DOMEGA", 6),
        ] {
            a.ptr(name, t[i].ptr);
        }
        for (names, i) in [
            (["k_sb", "k_st", "k_sh"], 0),
            (["v_sb", "v_st", "v_sh"], 1),
            (["omega_sb", "omega_st", "omega_sh"], 2),
            (["dvs_sb", "dvs_st", "dvs_sh"], 3),
            (["dk_sb", "dk_st", "dk_sh"], 4),
            (["dv_sb", "dv_st", "dv_sh"], 5),
            (["domega_sb", "domega_st", "domega_sh"], 6),
        ] {
            a.strides(names, &t[i]);
        }
        a.i32("N", n as i32)
            .i32("NC", nc as i32)
            .i32("NCR", ncr as i32)
            .i32("HKV", hkv as i32)
            .f32("scale", scale);
        let grid = (
            grid_dim("chunks", ncr.max(nc + 1), i32::MAX as usize)?,
            grid_dim("Hkv", hkv, 65535)?,
            grid_dim("B", b, 65535)?,
        );
        Ok(vec![Step::triton(0, grid, tile.warps(), a)])
    }
}
