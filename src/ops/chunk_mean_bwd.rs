//! chunk_mean_bwd: the gradient of chunk_mean (the contract's backward): `dxbar [B,NC,G,D]` to
//! `dx [B,N,G,D]`, `dxbar[c] / C` on the C tokens of chunk `c` and zero on a trailing partial
//! chunk. One program per chunk and head (Triton so far). `flasheva run` takes N = NC·C (the
//! tensors carry no N); through the library, `dx` gives N.

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

/// The chunk_mean_bwd op. The workload's `h` is the number of heads G of X.
pub struct ChunkMeanBwd;

impl OpDef for ChunkMeanBwd {
    fn op(&self) -> Op {
        Op::ChunkMeanBwd
    }

    super::triton_only_kernels!();

    fn tile_name(&self, t: &TileParams) -> String {
        format!("tr_w{}", t.warps)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        super::chunk_mean::warps_only(t)
    }

    fn check_tile(&self, _spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        triton_only(Op::ChunkMeanBwd, t, false, false, false)
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
            function: "fe_chunk_mean_bwd",
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
        (w.b * w.n * w.h) as f64 * w.spec.head_dim() as f64
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let nc = w.n / w.spec.chunk() as usize;
        (w.b * (w.n + nc) * w.h * w.spec.head_dim() as usize * 2) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Bytes
    }

    fn bucket_rows(&self, b: usize, h: usize, _hkv: usize) -> usize {
        b * h
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        vec![desc(
            "dxbar",
            p.elem(),
            &[w.b, p.summary_rows, w.h, p.d()],
            "[B, NC, G, D]",
        )]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        vec![desc(
            "dx",
            p.elem(),
            &[w.b, w.n, w.h, p.d()],
            "[B, N, G, D]",
        )]
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        _lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::ChunkMeanBwd)), inputs)?;
        let y = &inputs[0].1;
        let spec = spec_from(Op::ChunkMeanBwd, flags, y[3], dtype, None)?;
        let mut p = Problem::new(Workload::new(
            spec,
            y[0],
            y[1] * spec.chunk() as usize,
            y[2],
            y[2],
        ));
        p.summary_rows = y[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        let c = w.spec.chunk() as usize;
        let heads = w.h.min(8);
        let mut p = Problem::new(Workload::new(w.spec, 1, 5 * c + 3, heads, heads));
        p.summary_rows += 1;
        CheckProblem {
            problem: p,
            large_logits: false,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, _large: bool) -> Vec<HostTensor> {
        self.inputs(p).iter().map(|t| draw(&t.shape, 1.0)).collect()
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let dx = reference::chunk_mean_bwd(
            &inputs[0].to_f64(),
            w.b,
            w.n,
            w.h,
            p.d(),
            w.spec.chunk() as usize,
            p.summary_rows,
        );
        Reference {
            checks: vec![Check::Relative],
            outputs: vec![dx],
        }
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        _device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        check_op(spec, Op::ChunkMeanBwd)?;
        let t = args.expect(Op::ChunkMeanBwd, &["dxbar", "dx"])?;
        let et = ElemType::of(spec.dtype());
        let d = spec.head_dim() as usize;
        expect_dtype(&t[0], et)?;
        expect_dtype(&t[1], et)?;
        expect_shape(&t[1], &[None, None, None, Some(d)], "[B, N, G, D]")?;
        let (b, n, g) = (t[1].shape[0], t[1].shape[1], t[1].shape[2]);
        let c = spec.chunk() as usize;
        let nc = n / c;
        expect_chunk_rows(&t[0], b, nc, g, d, "G")?;
        expect_contiguous_rows(&t[0])?;
        expect_contiguous_rows(&t[1])?;
        if b == 0 || n == 0 || g == 0 {
            return Ok(Vec::new());
        }
        // the Triton kernel is compiled for 16-byte access to both (`TritonKernel::aligned`)
        super::launch::expect_vector_layout(&t[0])?;
        super::launch::expect_vector_layout(&t[1])?;
        let mut a = ArgList::default();
        a.ptr("DXBAR", t[0].ptr)
            .ptr("DX", t[1].ptr)
            .i64("dxbar_sb", t[0].stride(0))
            .i64("dxbar_st", t[0].stride(1))
            .i64("dxbar_sh", t[0].stride(2))
            .i64("dx_sb", t[1].stride(0))
            .i64("dx_st", t[1].stride(1))
            .i64("dx_sh", t[1].stride(2))
            .i32("N", n as i32)
            .i32("NC", nc as i32)
            .i32("G", g as i32);
        let grid = (
            grid_dim("chunks", n.div_ceil(c), i32::MAX as usize)?,
            grid_dim("G", g, 65535)?,
            grid_dim("B", b, 65535)?,
        );
        Ok(vec![Step::triton(0, grid, tile.warps(), a)])
    }
}
