//! chunk_summarize: `k, v [B,N,Hkv,D]`, `omega [B,NC,Hkv,D]` -> `vs [B,NC,Hkv,D]` (NC >= N/C
//! rows; the first N/C are written), templates/chunk_summarize.cu.

use super::chunk_mean::warps_only;
use super::launch::{
    ArgList, LaunchError, LaunchPlan, OpArgs, Step, check_op, expect_chunk_rows,
    expect_contiguous_rows, expect_dtype, expect_shape, grid_dim,
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

/// The chunk_summarize op. The workload's `h` and `hkv` are both the kv heads.
pub struct ChunkSummarize;

/// chunk_summarize tensors: `k, v [B,N,Hkv,D]`, `omega, vs [B,NC,Hkv,D]`, NC >= N/C.
#[derive(Clone, Debug)]
pub struct ChunkSummarizeArgs {
    /// Keys `[B, N, Hkv, D]`.
    pub k: TensorArg,
    /// Values `[B, N, Hkv, D]`.
    pub v: TensorArg,
    /// Per-chunk projections `[B, NC, Hkv, D]`.
    pub omega: TensorArg,
    /// Summary values `[B, NC, Hkv, D]` (the first N/C rows written).
    pub vs: TensorArg,
    /// Scale `s` of the logits (default `1/sqrt(D)`).
    pub scale: Option<f32>,
}

impl ChunkSummarizeArgs {
    /// The generic form of these arguments.
    pub fn to_op_args(&self) -> OpArgs {
        OpArgs {
            tensors: vec![
                self.k.clone(),
                self.v.clone(),
                self.omega.clone(),
                self.vs.clone(),
            ],
            scale: self.scale,
            splits: 1,
            workspace: None,
            ..OpArgs::default() // no backward: deterministic is prefill_bwd's
        }
    }

    fn from_op_args(a: &OpArgs) -> Result<ChunkSummarizeArgs, LaunchError> {
        let t = a.expect(Op::ChunkSummarize, &["k", "v", "omega", "vs"])?;
        Ok(ChunkSummarizeArgs {
            k: t[0].clone(),
            v: t[1].clone(),
            omega: t[2].clone(),
            vs: t[3].clone(),
            scale: a.scale,
        })
    }
}

/// Mirrors `ChunkSummarizeParams` in templates/chunk_summarize.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct ChunkSummarizeParams {
    pub k: u64,
    pub v: u64,
    pub omega: u64,
    pub vs: u64,
    pub k_sb: i64,
    pub k_st: i64,
    pub k_sh: i64,
    pub v_sb: i64,
    pub v_st: i64,
    pub v_sh: i64,
    pub om_sb: i64,
    pub om_st: i64,
    pub om_sh: i64,
    pub vs_sb: i64,
    pub vs_st: i64,
    pub vs_sh: i64,
    pub nc: i32,
    pub hkv: i32,
    pub scale: f32,
    pub reserved: i32,
}

/// The parameters of `fe_chunk_summarize` (triton/flasheva_triton.py), in order.
fn triton_args(p: &ChunkSummarizeParams) -> ArgList {
    let mut a = ArgList::default();
    a.ptr("K", p.k)
        .ptr("V", p.v)
        .ptr("OMEGA", p.omega)
        .ptr("VS", p.vs);
    for (name, v) in [
        ("k_sb", p.k_sb),
        ("k_st", p.k_st),
        ("k_sh", p.k_sh),
        ("v_sb", p.v_sb),
        ("v_st", p.v_st),
        ("v_sh", p.v_sh),
        ("om_sb", p.om_sb),
        ("om_st", p.om_st),
        ("om_sh", p.om_sh),
        ("vs_sb", p.vs_sb),
        ("vs_st", p.vs_st),
        ("vs_sh", p.vs_sh),
    ] {
        a.i64(name, v);
    }
    a.i32("NC", p.nc).i32("HKV", p.hkv).f32("scale", p.scale);
    a
}

fn triton_heads(p: &ChunkSummarizeParams) -> i32 {
    p.hkv
}

/// Plans a chunk_summarize launch; `None` when there is no complete chunk.
pub fn plan_chunk_summarize(
    spec: &KernelSpec,
    tile: &Tile,
    a: &ChunkSummarizeArgs,
) -> Result<Option<LaunchPlan<ChunkSummarizeParams>>, LaunchError> {
    check_op(spec, Op::ChunkSummarize)?;
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    for t in [&a.k, &a.v, &a.omega, &a.vs] {
        expect_dtype(t, et)?;
    }
    expect_shape(&a.k, &[None, None, None, Some(d)], "[B, N, Hkv, D]")?;
    let (b, n, hkv) = (a.k.shape[0], a.k.shape[1], a.k.shape[2]);
    expect_shape(
        &a.v,
        &[Some(b), Some(n), Some(hkv), Some(d)],
        "[B, N, Hkv, D]",
    )?;
    let nc = n / spec.chunk() as usize;
    for t in [&a.omega, &a.vs] {
        expect_chunk_rows(t, b, nc, hkv, d, "Hkv")?;
    }
    if b == 0 || nc == 0 || hkv == 0 {
        return Ok(None);
    }
    for t in [&a.k, &a.v, &a.omega, &a.vs] {
        expect_contiguous_rows(t)?;
    }
    let scale = a.scale.unwrap_or_else(|| spec.default_scale());
    Ok(Some(LaunchPlan {
        grid: (
            grid_dim("chunks", nc, i32::MAX as usize)?,
            grid_dim("Hkv", hkv, 65535)?,
            grid_dim("B", b, 65535)?,
        ),
        block: (tile.threads(), 1, 1),
        smem: tile.smem_bytes(spec),
        params: ChunkSummarizeParams {
            k: a.k.ptr,
            v: a.v.ptr,
            omega: a.omega.ptr,
            vs: a.vs.ptr,
            k_sb: a.k.stride(0),
            k_st: a.k.stride(1),
            k_sh: a.k.stride(2),
            v_sb: a.v.stride(0),
            v_st: a.v.stride(1),
            v_sh: a.v.stride(2),
            om_sb: a.omega.stride(0),
            om_st: a.omega.stride(1),
            om_sh: a.omega.stride(2),
            vs_sb: a.vs.stride(0),
            vs_st: a.vs.stride(1),
            vs_sh: a.vs.stride(2),
            nc: nc as i32,
            hkv: hkv as i32,
            scale,
            reserved: 0,
        },
    }))
}

impl OpDef for ChunkSummarize {
    fn op(&self) -> Op {
        Op::ChunkSummarize
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        match tile.engine {
            Engine::Triton => "flasheva_triton.py",
            _ => "chunk_summarize.cu",
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
            return check_triton_tile(Op::ChunkSummarize, t, false, false, false);
        }
        one_of(Op::ChunkSummarize, "warps", t.warps, &WARPS, "1, 2, 4, 8")
    }

    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32 {
        if t.engine == Engine::Triton {
            return 0; // Triton's own layout: the loader takes it from the artifact
        }
        (spec.chunk() + 2 * t.warps + t.warps * spec.head_dim()) * 4
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
            function: "fe_chunk_summarize",
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
        4.0 * w.spec.head_dim() as f64 * (w.b * w.n * w.hkv) as f64
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let nc = w.n / w.spec.chunk() as usize;
        (w.b * (2 * w.n + 2 * nc) * w.hkv * w.spec.head_dim() as usize * 2) as f64
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
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
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
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::ChunkSummarize)), inputs)?;
        let (k, om) = (&inputs[0].1, &inputs[2].1);
        let spec = spec_from(Op::ChunkSummarize, flags, k[3], dtype, None)?;
        let mut p = Problem::new(Workload::new(spec, k[0], k[1], k[2], k[2]));
        p.summary_rows = om[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        // Five chunks and a partial one, one or two kv heads.
        let c = w.spec.chunk() as usize;
        let heads = w.hkv.clamp(1, 2);
        CheckProblem {
            problem: Problem::new(Workload::new(w.spec, 1, 5 * c + 3, heads, heads)),
            large_logits: false,
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
        ]
    }

    #[cfg(feature = "cli")]
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
        let a = ChunkSummarizeArgs::from_op_args(args)?;
        let Some(p) = plan_chunk_summarize(spec, tile, &a)? else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_block_matches_the_template_layout() {
        assert_eq!(std::mem::size_of::<ChunkSummarizeParams>(), 144);
    }
}
