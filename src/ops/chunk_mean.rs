//! chunk_mean: `x [B,N,G,D]` -> `xbar [B,NC,G,D]` (NC >= N/C rows; the first N/C are written),
//! templates/chunk_mean.cu.

use super::launch::{
    ArgList, LaunchError, LaunchPlan, OpArgs, Step, check_op, expect_chunk_rows, expect_dtype,
    expect_shape, expect_vector_layout, grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel,
    check_triton_tile, common_dtype, constexprs, desc, probe_problem, spec_from,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference;
use crate::spec::{KernelSpec, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{Engine, Tile, TileError, TileParams, WARPS, one_of};
use crate::workload::Workload;

/// The chunk_mean op. The workload's `h` is the number of heads G of X.
pub struct ChunkMean;

/// chunk_mean tensors: `x [B,N,G,D]` -> `xbar [B,NC,G,D]`, NC >= N/C.
#[derive(Clone, Debug)]
pub struct ChunkMeanArgs {
    /// Input `[B, N, G, D]`.
    pub x: TensorArg,
    /// Chunk means `[B, NC, G, D]` (the first N/C rows written).
    pub xbar: TensorArg,
}

impl ChunkMeanArgs {
    /// The generic form of these arguments.
    pub fn to_op_args(&self) -> OpArgs {
        OpArgs {
            tensors: vec![self.x.clone(), self.xbar.clone()],
            scale: None,
            splits: 1,
            workspace: None,
            ..OpArgs::default() // no backward: deterministic is prefill_bwd's
        }
    }

    fn from_op_args(a: &OpArgs) -> Result<ChunkMeanArgs, LaunchError> {
        let t = a.expect(Op::ChunkMean, &["x", "xbar"])?;
        Ok(ChunkMeanArgs {
            x: t[0].clone(),
            xbar: t[1].clone(),
        })
    }
}

/// Mirrors `ChunkMeanParams` in templates/chunk_mean.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
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

/// The parameters of `fe_chunk_mean` (triton/flasheva_triton.py), in order.
fn triton_args(p: &ChunkMeanParams) -> ArgList {
    let mut a = ArgList::default();
    a.ptr("X", p.x)
        .ptr("XBAR", p.xbar)
        .i64("x_sb", p.x_sb)
        .i64("x_st", p.x_st)
        .i64("x_sh", p.x_sh)
        .i64("y_sb", p.y_sb)
        .i64("y_st", p.y_st)
        .i64("y_sh", p.y_sh)
        .i32("NC", p.nc)
        .i32("G", p.g);
    a
}

fn triton_heads(p: &ChunkMeanParams) -> i32 {
    p.g
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

/// The knobs of the chunk ops: warps only.
pub(crate) fn warps_only(t: TileParams) -> TileParams {
    TileParams {
        engine: if t.engine == Engine::Triton {
            Engine::Triton
        } else {
            Engine::Mma
        },
        warps: t.warps,
        ..TileParams::default()
    }
}

impl OpDef for ChunkMean {
    fn op(&self) -> Op {
        Op::ChunkMean
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        match tile.engine {
            Engine::Triton => "flasheva_triton.py",
            _ => "chunk_mean.cu",
        }
    }

    fn tile_name(&self, t: &TileParams) -> String {
        format!("{}w{}", super::engine_prefix(t.engine), t.warps)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        warps_only(t)
    }

    fn check_tile(&self, _spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        if t.engine == Engine::Triton {
            return check_triton_tile(Op::ChunkMean, t, false, false, false);
        }
        one_of(Op::ChunkMean, "warps", t.warps, &WARPS, "1, 2, 4, 8")
    }

    fn smem_bytes(&self, _spec: &KernelSpec, _t: &TileParams) -> u32 {
        0
    }

    fn default_tiles(&self, _spec: &KernelSpec, _arch: Arch) -> Vec<TileParams> {
        vec![TileParams {
            warps: 4,
            ..TileParams::default()
        }]
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
            function: "fe_chunk_mean",
            entry: spec.name(),
            aligned: false,
            constexprs: constexprs(
                spec,
                &[
                    ("C", Const::Int(spec.chunk())),
                    ("CP", Const::Int(super::pow2(spec.chunk()))),
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
        vec![desc("x", p.elem(), &[w.b, w.n, w.h, p.d()], "[B, N, G, D]")]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
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
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::ChunkMean)), inputs)?;
        let x = &inputs[0].1;
        let spec = spec_from(Op::ChunkMean, flags, x[3], dtype, None)?;
        Ok(Problem::new(Workload::new(spec, x[0], x[1], x[2], x[2])))
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        // Five chunks and a partial one, at most 8 heads.
        let c = w.spec.chunk() as usize;
        let heads = w.h.min(8);
        CheckProblem {
            problem: Problem::new(Workload::new(w.spec, 1, 5 * c + 3, heads, heads)),
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
        let c = w.spec.chunk() as usize;
        let mut out = reference::chunk_mean(&inputs[0].to_f64(), w.b, w.n, w.h, p.d(), c);
        // Rows past N/C are never written: the reference leaves them out of the comparison by
        // giving them the output's own poison (NaN), which rel_error skips.
        pad_rows(&mut out, w.b, w.n / c, p.summary_rows, w.h * p.d());
        Reference {
            outputs: vec![out],
            checks: vec![Check::Relative],
        }
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        _device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        let a = ChunkMeanArgs::from_op_args(args)?;
        let Some(p) = plan_chunk_mean(spec, tile, &a)? else {
            return Ok(Vec::new());
        };
        if tile.engine() == Engine::Triton {
            // One program per (chunk, head, sequence).
            let heads = grid_dim("heads", triton_heads(&p.params) as usize, 65535)?;
            let grid = (p.grid.0, heads, p.grid.2);
            return Ok(vec![Step::triton(
                0,
                grid,
                tile.warps(),
                triton_args(&p.params),
            )]);
        }
        Ok(vec![Step::of(0, &p)])
    }
}

/// Widens `[b, nc, row]` to `[b, rows, row]` with NaN rows (not compared).
#[cfg(feature = "cli")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_block_matches_the_template_layout() {
        assert_eq!(std::mem::size_of::<ChunkMeanParams>(), 72);
    }
}
