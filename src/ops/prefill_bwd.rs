//! prefill_bwd: the gradients of prefill (the contract's backward). From `q [B,N,H,D]`,
//! `k, v [B,N,Hkv,D]`, `ks, vs [B,NC,Hkv,D]`, the forward's `o [B,N,H,D]` and `lse [B,H,N]`
//! (fp32) and `do [B,N,H,D]` to `dq [B,N,H,D]`, `dk, dv [B,N,Hkv,D]`, `dks, dvs [B,NC,Hkv,D]`
//! (every one of the NC rows written; zero at or past N/C), each kv gradient summed over its
//! query-head group.
//!
//! FlashAttention-2-style recomputation from the LSE in four kernels of one module: Delta =
//! rowsum(dO·O) into an fp32 workspace `[B,H,N]`; one program per raw key block, or per segment of a summary block's queries, accumulating dK, dV
//! (partial dks, dvs) over the query blocks that see it and the query heads of its group; the
//! summary segments added in order; one program per query block for dQ. A summary block is seen
//! by every later query, a raw key block by about W of them: unsplit, the few summary programs
//! were the whole backward's tail (`summary_splits` cuts them to the raw blocks' share).
//!
//! A tile `m{BM}_n{BN}` holds BN keys against BM-row query steps in the dK/dV kernel and, the
//! transpose, BN query rows against BM-key steps in the dQ kernel (FlashAttention-2's shapes:
//! the held side large, the streamed side small). No atomics: results are bitwise reproducible
//! run to run.
//!
//! The atomic dQ mode ([`has_atomic_mode`]: the two-warpgroup wgmma tiles at D = 128, unless
//! [`crate::ops::Problem::deterministic`]): the dK/dV kernel (`_dkdv_atomic`) also computes dQ's
//! share dS·K, stages it in shared memory and adds it to an fp32 accumulator (64-row tiles
//! `[B, H, cdiv(N, 64), 64 x D]` at the end of the workspace) with one bulk reduction per
//! warpgroup and step, which the Delta kernel zeroes first; `_dq_atomic` converts it. No dQ pass
//! (five products instead of seven); the sums' order, and so their last bits, vary run to run.
//!
//! Three engines: Triton (triton/flasheva_triton.py; the default at D = 256), `mma`
//! (templates/prefill_bwd.cu, the same kernels on `mma.sync`, 16 held rows per warp: block_n =
//! 16 x warps; the default off Hopper at D <= 128) and `wgmma` (templates/prefill_bwd_sm90a.cu,
//! 64 held rows per warpgroup; the default on sm_90a at D = 64 and 128).

use super::launch::{
    ArgList, LaunchError, OpArgs, Step, check_op, expect_dtype, expect_shape, expect_vector_layout,
    grid_dim,
};
use super::prefill::{PrefillArgs, check_prefill_tensors};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference, amplify_rows};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel, common_dtype,
    constexprs, desc, probe_problem, spec_from, triton_only,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference;
use crate::spec::{KernelSpec, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{Engine, Tile, TileError, TileParams, one_of};
use crate::workload::Workload;

/// The prefill_bwd op.
pub struct PrefillBwd;

const NAMES: [&str; 13] = [
    "q", "k", "v", "ks", "vs", "o", "lse", "do", "dq", "dk", "dv", "dks", "dvs",
];

fn tile(block_m: u32, block_n: u32, warps: u32, stages: u32) -> TileParams {
    TileParams {
        engine: Engine::Triton,
        block_m,
        block_n,
        warps,
        stages,
        splits: 0,
    }
}

/// Checks like `o`'s: same dtype and shape as `like`, 16-byte vector access (the kernels are
/// compiled for it: `TritonKernel::aligned`).
fn expect_like(t: &TensorArg, like: &TensorArg, what: &str) -> Result<(), LaunchError> {
    expect_dtype(t, like.dtype)?;
    let want: Vec<Option<usize>> = like.shape.iter().map(|&s| Some(s)).collect();
    expect_shape(t, &want, what)?;
    expect_vector_layout(t)
}

impl OpDef for PrefillBwd {
    fn op(&self) -> Op {
        Op::PrefillBwd
    }

    fn entry_points(&self, spec: &KernelSpec, tile: &TileParams) -> Vec<String> {
        let main = spec.name();
        let mut v = vec![
            main.clone(),
            format!("{main}_dkdv"),
            format!("{main}_dsum"),
            format!("{main}_dq"),
        ];
        if has_atomic_mode(spec, tile) {
            // the atomic dQ mode: dK/dV adding dQ's share to an fp32 accumulator, its conversion
            v.push(format!("{main}_dkdv_atomic"));
            v.push(format!("{main}_dq_atomic"));
        }
        v
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        match tile.engine {
            Engine::Mma => "prefill_bwd.cu",
            Engine::Wgmma => "prefill_bwd_sm90a.cu",
            _ => "flasheva_triton.py",
        }
    }

    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32 {
        match t.engine {
            Engine::Mma | Engine::Wgmma => cuda_smem(spec, t).0,
            _ => 0,
        }
    }

    fn default_tiles(&self, spec: &KernelSpec, arch: Arch) -> Vec<TileParams> {
        // On sm_90a at D = 64 and 128 the wgmma kernels (templates/prefill_bwd_sm90a.cu):
        // wg_m64_n64_w4_s2 passed the GPU suite's backward grid (run 28) and ran 1.52x faster than
        // the mma default at B=1 N=16384 D=128 W=512 C=64 block (0.67 ms against 1.02, run 29).
        // Elsewhere the mma kernels where D <= 128: m32_n64_w4_s2 (64 held rows on four warps,
        // 32-row steps, two stages; 241 registers at D = 128, no spills) passed the grid and the
        // sanitizers (run 24) and ran 1.74x faster than the Triton default there (1.03 ms
        // against 1.79 ms, run 25). NVRTC alone builds both, so the backward needs no Triton
        // where they apply; the Triton kernels are the default at D = 256 and the last resort.
        let mut v = Vec::new();
        if arch.specific
            && (arch.major, arch.minor) == (9, 0)
            && matches!(spec.head_dim(), 64 | 128)
        {
            v.push(engine_tile(Engine::Wgmma, 64, 64, 4, 2));
        }
        if spec.head_dim() <= 128 {
            v.push(engine_tile(Engine::Mma, 32, 64, 4, 2));
        }
        v.push(self.triton_default(spec));
        v
    }

    fn tile_name(&self, t: &TileParams) -> String {
        format!(
            "{}m{}_n{}_w{}_s{}",
            super::engine_prefix(t.engine),
            t.block_m,
            t.block_n,
            t.warps,
            t.stages
        )
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        TileParams { splits: 0, ..t }
    }

    fn check_tile(&self, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        let op = Op::PrefillBwd;
        if t.engine == Engine::Wgmma {
            one_of(
                op,
                "head_dim",
                spec.head_dim(),
                &[64, 128],
                "64, 128 for the wgmma backward (whole 128-byte swizzle panels; others: mma or triton)",
            )?;
            one_of(
                op,
                "block_m",
                t.block_m,
                &[64],
                "64 (the wgmma steps are 64 rows)",
            )?;
            one_of(
                op,
                "warps",
                t.warps,
                &[4, 8],
                "4, 8 (one or two warpgroups)",
            )?;
            one_of(op, "stages", t.stages, &[1, 2], "1, 2")?;
            if t.block_n != 16 * t.warps {
                return Err(TileError::Field {
                    op,
                    field: "block_n",
                    value: t.block_n,
                    accepted: "16 x warps (64 held rows per warpgroup)",
                });
            }
            return Ok(());
        }
        if t.engine != Engine::Mma {
            return triton_only(Op::PrefillBwd, t, true, true, true);
        }
        if spec.head_dim() > 128 {
            return Err(TileError::Field {
                op,
                field: "engine",
                value: spec.head_dim(),
                accepted: "triton for head_dim 256 (the mma backward holds two 16 x D fp32 accumulators per warp: D <= 128)",
            });
        }
        one_of(op, "block_m", t.block_m, &[16, 32, 64], "16, 32, 64")?;
        one_of(op, "warps", t.warps, &[2, 4, 8], "2, 4, 8")?;
        one_of(op, "stages", t.stages, &[1, 2], "1, 2")?;
        if t.block_n != 16 * t.warps {
            return Err(TileError::Field {
                op,
                field: "block_n",
                value: t.block_n,
                accepted: "16 x warps (16 held rows per warp)",
            });
        }
        Ok(())
    }

    fn triton_default(&self, spec: &KernelSpec) -> TileParams {
        if spec.head_dim() <= 64 {
            tile(32, 32, 4, 2)
        } else {
            tile(16, 32, 4, 2)
        }
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        let e = self.entry_points(spec, &tile.params());
        let blocks = |m: u32, n: u32| {
            constexprs(
                spec,
                &[
                    ("W", Const::Int(spec.window_or_zero())),
                    ("C", Const::Int(spec.chunk())),
                    ("SLIDING", Const::Bool(spec.sliding())),
                    ("BLOCK_M", Const::Int(m)),
                    ("BLOCK_N", Const::Int(n)),
                ],
            )
        };
        let full = blocks(tile.block_m(), tile.block_n());
        // dQ holds BN query rows and steps over BM keys
        let transposed = blocks(tile.block_n(), tile.block_m());
        vec![
            TritonKernel {
                function: "fe_prefill_bwd_pre",
                entry: e[0].clone(),
                aligned: true,
                constexprs: constexprs(spec, &[("BLOCK_M", Const::Int(tile.block_m()))]),
            },
            TritonKernel {
                function: "fe_prefill_bwd_dkdv",
                entry: e[1].clone(),
                aligned: true,
                constexprs: full.clone(),
            },
            TritonKernel {
                function: "fe_prefill_bwd_dsum",
                entry: e[2].clone(),
                aligned: true,
                constexprs: constexprs(
                    spec,
                    &[
                        ("BLOCK_N", Const::Int(tile.block_n())),
                        ("BLOCK_R", Const::Int(SUM_ROWS)),
                    ],
                ),
            },
            TritonKernel {
                function: "fe_prefill_bwd_dq",
                entry: e[3].clone(),
                aligned: true,
                constexprs: transposed,
            },
        ]
    }

    fn flops(&self, w: &Workload) -> f64 {
        // FlashAttention's convention: 2.5 times the forward's (recomputing S and P, then dV,
        // dP, dS·K for dQ and dSᵀ·Q for dK: five products against the forward's two).
        2.5 * crate::ops::of(Op::Prefill).flops(&Workload { spec: w.spec, ..*w })
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let d = w.spec.head_dim() as usize;
        let nc = w.n / w.spec.chunk() as usize;
        let e = 2;
        // read q, k, v, ks, vs, o, do, lse; write dq, dk, dv, dks, dvs
        (w.b * w.n * d * e * (4 * w.h + 4 * w.hkv)
            + w.b * nc * w.hkv * d * e * 4
            + w.b * w.h * w.n * 4) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Flops
    }

    fn bucket_rows(&self, b: usize, h: usize, _hkv: usize) -> usize {
        b * h
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        vec![
            desc("q", e, &[w.b, w.n, w.h, d], "[B, N, H, D]"),
            desc("k", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("v", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("ks", e, &[w.b, p.summary_rows, w.hkv, d], "[B, NC, Hkv, D]"),
            desc("vs", e, &[w.b, p.summary_rows, w.hkv, d], "[B, NC, Hkv, D]"),
            desc("o", e, &[w.b, w.n, w.h, d], "[B, N, H, D]"),
            desc("lse", ElemType::F32, &[w.b, w.h, w.n], "[B, H, N]"),
            desc("do", e, &[w.b, w.n, w.h, d], "[B, N, H, D]"),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        vec![
            desc("dq", e, &[w.b, w.n, w.h, d], "[B, N, H, D]"),
            desc("dk", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc("dv", e, &[w.b, w.n, w.hkv, d], "[B, N, Hkv, D]"),
            desc(
                "dks",
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

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        _lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::PrefillBwd)), inputs)?;
        let (q, k, ks) = (&inputs[0].1, &inputs[1].1, &inputs[3].1);
        let spec = spec_from(Op::PrefillBwd, flags, q[3], dtype, None)?;
        let mut p = Problem::new(Workload::new(spec, q[0], q[1], q[2], k[2]));
        p.summary_rows = ks[1];
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        let fwd = crate::ops::of(Op::Prefill).check_problem(&Workload { spec: w.spec, ..*w });
        CheckProblem {
            problem: Problem::new(fwd.problem.workload),
            large_logits: true,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        // q, k, v, ks, vs at random (some rows of q large), o and lse from the float64 forward
        // (o rounded to the storage type, lse to fp32, as a forward kernel leaves them), dO at
        // random.
        let ins = self.inputs(p);
        let mut v: Vec<HostTensor> = ins[..5].iter().map(|t| draw(&t.shape, 1.0)).collect();
        if large {
            // logits of about ±50: a peaked softmax (±1e4 rows would make dS pure rounding)
            v[0] = amplify_rows(&v[0], p.d(), 100.0, draw);
        }
        let sh = super::prefill::attn_shape(p);
        let f: Vec<Vec<f64>> = v.iter().map(HostTensor::to_f64).collect();
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
        v.push(HostTensor::from_f64(p.elem(), &ins[5].shape, &o));
        v.push(HostTensor::from_f64(ElemType::F32, &ins[6].shape, &lse));
        v.push(draw(&ins[7].shape, 1.0));
        v
    }

    #[cfg(feature = "cli")]
    fn timing_inputs(&self, p: &Problem, draw: Draw<'_>) -> Vec<HostTensor> {
        // o and dO at random; lse near the log of a row's visible count, so exp(s·q·k − lse)
        // stays in range as it does with real statistics.
        let ins = self.inputs(p);
        let w = &p.workload;
        let visible = (w.spec.window_or_zero() as usize + w.n / w.spec.chunk() as usize).max(1);
        let mut v: Vec<HostTensor> = ins.iter().map(|t| draw(&t.shape, 1.0)).collect();
        let n: usize = ins[6].shape.iter().product();
        v[6] = HostTensor::from_f64(
            ElemType::F32,
            &ins[6].shape,
            &vec![(visible as f64).ln(); n],
        );
        v
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let sh = super::prefill::attn_shape(p);
        let f: Vec<Vec<f64>> = inputs.iter().map(HostTensor::to_f64).collect();
        let unit = match p.elem() {
            ElemType::F16 => 2f64.powi(-11),
            _ => 2f64.powi(-8),
        };
        let g = reference::prefill_bwd(
            &sh,
            p.summary_rows,
            &f[0],
            &f[1],
            &f[2],
            &f[3],
            &f[4],
            &f[7],
            p.scale(),
            unit,
        );
        let zeros = |v: &Vec<f64>| vec![0.0; v.len()];
        Reference {
            checks: vec![
                Check::Gradient(g.slack_dq.clone()),
                Check::Gradient(g.slack_dk.clone()),
                Check::Gradient(zeros(&g.dv)),
                Check::Gradient(g.slack_dks.clone()),
                Check::Gradient(zeros(&g.dvs)),
            ],
            outputs: vec![g.dq, g.dk, g.dv, g.dks, g.dvs],
        }
    }

    fn splits(&self, p: &Problem, tile: &Tile, sm_count: u32) -> usize {
        let w = &p.workload;
        summary_splits(&Sizes::of(w, p.summary_rows), tile, sm_count)
    }

    fn workspace(&self, p: &Problem, tile: &Tile, splits: usize) -> usize {
        let w = &p.workload;
        let atomic = atomic_dq(&w.spec, tile, p.deterministic);
        Sizes::of(w, p.summary_rows).workspace(tile, splits, atomic)
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        check_op(spec, Op::PrefillBwd)?;
        let t = args.expect(Op::PrefillBwd, &NAMES)?;
        let fwd = PrefillArgs {
            q: t[0].clone(),
            k: t[1].clone(),
            v: t[2].clone(),
            ks: t[3].clone(),
            vs: t[4].clone(),
            o: t[5].clone(),
            lse: t[6].clone(),
            scale: args.scale,
        };
        let sizes = check_prefill_tensors(spec, &fwd)?;
        let (q, k, ks, o) = (&t[0], &t[1], &t[3], &t[5]);
        expect_like(&t[7], o, "[B, N, H, D] like o")?;
        expect_like(&t[8], q, "[B, N, H, D] like q")?;
        expect_like(&t[9], k, "[B, N, Hkv, D] like k")?;
        expect_like(&t[10], k, "[B, N, Hkv, D] like k")?;
        expect_like(&t[11], ks, "[B, NC, Hkv, D] like ks")?;
        expect_like(&t[12], ks, "[B, NC, Hkv, D] like ks")?;
        let sz = match sizes {
            Some(sz) => sz,
            None => {
                // Nothing to attend (B, N or H is zero), but gradients with rows still get
                // their zeros: dks, dvs when N = 0 (every summary row is at or past N/C), dK,
                // dV and dks, dvs when H = 0. The kernels write them; launches of zero blocks
                // are dropped below.
                let (b, n, h, hkv) = (q.shape[0], q.shape[1], q.shape[2], k.shape[2]);
                if b == 0 || (n == 0 && ks.shape[1] == 0) {
                    return Ok(Vec::new());
                }
                // what those kernels read (16 bytes at a time), unchecked by the forward's
                // checks when there is nothing to attend
                for x in [k, &t[2], ks, &t[4]] {
                    if x.shape.iter().product::<usize>() > 0 {
                        expect_vector_layout(x)?;
                    }
                }
                super::prefill::PrefillSizes {
                    b,
                    n,
                    h,
                    hkv,
                    nc: n / spec.chunk() as usize,
                    scale: super::launch::checked_scale(args.scale, spec)?,
                }
            }
        };
        let (b, n, h, hkv, ncr) = (sz.b, sz.n, sz.h, sz.hkv, ks.shape[1]);
        let sizes = Sizes {
            b,
            n,
            h,
            hkv,
            nc: sz.nc,
            window: spec.window_or_zero() as usize,
            chunk: spec.chunk() as usize,
            sliding: spec.sliding(),
            d: spec.head_dim() as usize,
        };
        let splits = summary_splits(&sizes, tile, device.sm_count);
        let atomic = atomic_dq(spec, tile, args.deterministic);
        let need = sizes.workspace(tile, splits, atomic);
        let delta = match args.workspace {
            Some((ptr, elems)) if elems >= need => ptr,
            None if need == 0 => 0,
            _ => {
                return Err(LaunchError::Size(format!(
                    "prefill_bwd needs a workspace of {need} fp32 elements (Delta [B, H, N], \
                     the summary blocks' {splits} partial sums{})",
                    if atomic {
                        " and the dQ accumulator [B, H, cdiv(N, 64) * 64, D]"
                    } else {
                        ""
                    }
                )));
            }
        };
        if !delta.is_multiple_of(16) {
            // the partial sums are read and written 8 and 16 bytes at a time
            return Err(LaunchError::Layout {
                name: "workspace".into(),
                problem: format!("address {delta:#x} is not 16-byte aligned"),
            });
        }
        let part = delta + 4 * sizes.delta_elems() as u64;
        let dqacc = if atomic {
            part + 4 * sizes.part_elems(tile, splits) as u64
        } else {
            0
        };
        let (bm, bn) = (tile.block_m() as usize, tile.block_n() as usize);
        let seg = n.div_ceil(splits).div_ceil(bm) * bm;
        let pre_blocks = grid_dim("query blocks", n.div_ceil(bm), i32::MAX as usize)?;
        let dq_blocks = grid_dim("query blocks", n.div_ceil(bn), i32::MAX as usize)?;
        let (hg, bg) = (grid_dim("H", h, 65535)?, grid_dim("B", b, 65535)?);
        let hkvg = grid_dim("Hkv", hkv, 65535)?;
        let key_programs = grid_dim(
            "key blocks and summary segments",
            b * hkv * (sz.nc.div_ceil(bn) * splits + n.div_ceil(bn)),
            i32::MAX as usize,
        )?;
        let sum_blocks = grid_dim(
            "summary rows",
            ncr.div_ceil(SUM_ROWS as usize).max(1),
            i32::MAX as usize,
        )?;
        let s = |i: usize, d: usize| t[i].stride(d);
        let mut pre = ArgList::default();
        pre.ptr("O", t[5].ptr)
            .ptr("DO", t[7].ptr)
            .ptr("DELTA", delta)
            .i64("o_sb", s(5, 0))
            .i64("o_st", s(5, 1))
            .i64("o_sh", s(5, 2))
            .i64("do_sb", s(7, 0))
            .i64("do_st", s(7, 1))
            .i64("do_sh", s(7, 2))
            .i32("N", n as i32)
            .i32("H", h as i32);
        // the strides both gradient kernels take, in their order
        let common = |a: &mut ArgList| {
            for (name, i, d) in [
                ("q_sb", 0, 0),
                ("q_st", 0, 1),
                ("q_sh", 0, 2),
                ("k_sb", 1, 0),
                ("k_st", 1, 1),
                ("k_sh", 1, 2),
                ("v_sb", 2, 0),
                ("v_st", 2, 1),
                ("v_sh", 2, 2),
                ("ks_sb", 3, 0),
                ("ks_st", 3, 1),
                ("ks_sh", 3, 2),
                ("vs_sb", 4, 0),
                ("vs_st", 4, 1),
                ("vs_sh", 4, 2),
                ("do_sb", 7, 0),
                ("do_st", 7, 1),
                ("do_sh", 7, 2),
                ("lse_sb", 6, 0),
                ("lse_sh", 6, 1),
            ] {
                a.i64(name, s(i, d));
            }
        };
        let mut dkdv = ArgList::default();
        for (name, i) in [
            ("Q", 0),
            ("K", 1),
            ("V", 2),
            ("KS", 3),
            ("VS", 4),
            ("DO", 7),
            ("LSE", 6),
        ] {
            dkdv.ptr(name, t[i].ptr);
        }
        dkdv.ptr("DELTA", delta)
            .ptr("DK", t[9].ptr)
            .ptr("DV", t[10].ptr)
            .ptr("PART", part);
        common(&mut dkdv);
        for (name, i, d) in [
            ("dk_sb", 9, 0),
            ("dk_st", 9, 1),
            ("dk_sh", 9, 2),
            ("dv_sb", 10, 0),
            ("dv_st", 10, 1),
            ("dv_sh", 10, 2),
        ] {
            dkdv.i64(name, s(i, d));
        }
        dkdv.i32("B", b as i32)
            .i32("N", n as i32)
            .i32("H", h as i32)
            .i32("HKV", hkv as i32)
            .i32("NC", sz.nc as i32)
            .i32("SPLITS", splits as i32)
            .i32("SEG", seg as i32)
            .f32("scale", sz.scale);
        let mut dsum = ArgList::default();
        dsum.ptr("PART", part)
            .ptr("DKS", t[11].ptr)
            .ptr("DVS", t[12].ptr);
        for (name, i, d) in [
            ("dks_sb", 11, 0),
            ("dks_st", 11, 1),
            ("dks_sh", 11, 2),
            ("dvs_sb", 12, 0),
            ("dvs_st", 12, 1),
            ("dvs_sh", 12, 2),
        ] {
            dsum.i64(name, s(i, d));
        }
        dsum.i32("B", b as i32)
            .i32("HKV", hkv as i32)
            .i32("NC", sz.nc as i32)
            .i32("NCR", ncr as i32)
            .i32("SPLITS", splits as i32);
        let mut dq = ArgList::default();
        for (name, i) in [
            ("Q", 0),
            ("K", 1),
            ("V", 2),
            ("KS", 3),
            ("VS", 4),
            ("DO", 7),
            ("LSE", 6),
        ] {
            dq.ptr(name, t[i].ptr);
        }
        dq.ptr("DELTA", delta).ptr("DQ", t[8].ptr);
        common(&mut dq);
        dq.i64("dq_sb", s(8, 0))
            .i64("dq_st", s(8, 1))
            .i64("dq_sh", s(8, 2))
            .i32("N", n as i32)
            .i32("H", h as i32)
            .i32("HKV", hkv as i32)
            .i32("NC", sz.nc as i32)
            .f32("scale", sz.scale);
        if matches!(tile.engine(), Engine::Mma | Engine::Wgmma) {
            let params = PrefillBwdParams {
                q: t[0].ptr,
                k: t[1].ptr,
                v: t[2].ptr,
                ks: t[3].ptr,
                vs: t[4].ptr,
                o: t[5].ptr,
                dout: t[7].ptr,
                lse: t[6].ptr,
                dq: t[8].ptr,
                dk: t[9].ptr,
                dv: t[10].ptr,
                dks: t[11].ptr,
                dvs: t[12].ptr,
                delta,
                part,
                dqacc,
                strides: [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
                    .map(|i| [s(i, 0), s(i, 1), s(i, 2)]),
                lse_sb: s(6, 0),
                lse_sh: s(6, 1),
                b: b as i32,
                n: n as i32,
                h: h as i32,
                hkv: hkv as i32,
                nc: sz.nc as i32,
                ncr: ncr as i32,
                splits: splits as i32,
                seg: seg as i32,
                scale: sz.scale,
                scale_log2: sz.scale * std::f32::consts::LOG2_E,
            };
            let (dkdv_smem, dq_smem) = cuda_smem(spec, &tile.params());
            let threads = (tile.threads(), 1, 1);
            let launch = |grid, smem| super::launch::LaunchPlan {
                grid,
                block: threads,
                smem,
                params,
            };
            // the atomic mode: entry points 4 (dK/dV adding dQ's share) and 5 (its conversion)
            let (dkdv_entry, dq_entry) = if atomic { (4, 5) } else { (1, 3) };
            // Delta's blocks of PRE_ROWS rows, which are also the atomic mode's accumulator tiles
            let pre_rows = grid_dim("query rows", n.div_ceil(PRE_ROWS), i32::MAX as usize)?;
            let mut steps = vec![
                Step::of(0, &launch((pre_rows, hg, bg), 0)),
                Step::of(dkdv_entry, &launch((key_programs, 1, 1), dkdv_smem)),
            ];
            if ncr > 0 {
                let rows = grid_dim(
                    "summary rows",
                    ncr.div_ceil(MMA_SUM_ROWS),
                    i32::MAX as usize,
                )?;
                steps.push(Step::of(2, &launch((rows, hkvg, bg), 0)));
            }
            if atomic {
                steps.push(Step::of(dq_entry, &launch((pre_rows, hg, bg), 0)));
            } else {
                steps.push(Step::of(dq_entry, &launch((dq_blocks, hg, bg), dq_smem)));
            }
            steps.retain(|s| s.grid.0 > 0 && s.grid.1 > 0 && s.grid.2 > 0);
            return Ok(steps);
        }
        let w = tile.warps();
        let mut steps = vec![
            Step::triton(0, (pre_blocks, hg, bg), w, pre),
            Step::triton(1, (key_programs, 1, 1), w, dkdv),
        ];
        // no summary rows: nothing to sum or to write (and no grid of zero blocks)
        if ncr > 0 {
            steps.push(Step::triton(2, (sum_blocks, hkvg, bg), w, dsum));
        }
        steps.push(Step::triton(3, (dq_blocks, hg, bg), w, dq));
        steps.retain(|s| s.grid.0 > 0 && s.grid.1 > 0 && s.grid.2 > 0);
        Ok(steps)
    }
}

/// Summary rows one program of the segment sum adds up (Triton).
const SUM_ROWS: u32 = 32;

/// Summary rows one CTA of the mma segment sum adds up (`SUM_ROWS` in templates/prefill_bwd.cu).
const MMA_SUM_ROWS: usize = 16;

/// Query rows one CTA of the CUDA engines' Delta kernel covers (templates/prefill_bwd_common.cuh),
/// and the rows of one tile of the atomic mode's dQ accumulator, which that CTA zeroes.
const PRE_ROWS: usize = 64;

/// Mirrors `PrefillBwdParams` in templates/prefill_bwd.cu (one block for all four kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct PrefillBwdParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub ks: u64,
    pub vs: u64,
    pub o: u64,
    pub dout: u64,
    pub lse: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    pub dks: u64,
    pub dvs: u64,
    pub delta: u64,
    pub part: u64,
    pub dqacc: u64,
    /// (batch, token, head) strides of q, k, v, ks, vs, o, do, dq, dk, dv, dks, dvs.
    pub strides: [[i64; 3]; 12],
    pub lse_sb: i64,
    pub lse_sh: i64,
    pub b: i32,
    pub n: i32,
    pub h: i32,
    pub hkv: i32,
    pub nc: i32,
    pub ncr: i32,
    pub splits: i32,
    pub seg: i32,
    pub scale: f32,
    pub scale_log2: f32,
}

/// Dynamic shared memory of the CUDA kernels, bytes: (dK/dV, dQ), as the templates lay them out:
/// K, V (or Q, dO) held, `stages` of the streamed pair, and (dK/dV) their LSE and Delta rows.
/// templates/prefill_bwd.cu pads its rows by SMEM_PAD; templates/prefill_bwd_sm90a.cu keeps
/// them unpadded (the swizzle spreads the banks) with 1024 bytes of slack to align its panels.
/// The dK/dV kernels of tiles with the atomic dQ mode also hold its dS^T tile, BN rows of 64
/// queries, and two 64 x 64 fp32 staging panels of dQ per warpgroup.
fn cuda_smem(spec: &KernelSpec, t: &TileParams) -> (u32, u32) {
    let (row, slack) = match t.engine {
        Engine::Wgmma => (spec.head_dim() * 2, 1024),
        _ => ((spec.head_dim() + crate::tile::SMEM_PAD) * 2, 0),
    };
    let ds = if has_atomic_mode(spec, t) {
        // dS^T (BN rows of 64 queries) and two 64 x 64 fp32 dQ staging panels per warpgroup
        t.block_n * 128 + 2 * (t.warps / 4) * 64 * 64 * 4
    } else {
        0
    };
    let (bq, bn, st) = (t.block_m, t.block_n, t.stages.max(1));
    let dq = slack + 2 * bn * row + st * 2 * bq * row;
    (dq + ds + st * 2 * bq * 4, dq)
}

/// Whether prefill_bwd with tiles of these knobs adds dQ with fp32 bulk reductions unless asked
/// to be deterministic ([`crate::ops::Problem::deterministic`], `--deterministic`): the wgmma
/// kernels with two warpgroups at D = 128, where each warpgroup computes one 64-column panel of dQ's
/// share over all 128 keys. Every other tile, and these in the deterministic mode, give
/// bitwise-reproducible gradients. With one warpgroup (its own 64 keys, both panels one after
/// the other) the mode was slower than the dQ pass everywhere it was measured (run 32: 0.76
/// against 0.67 ms at N = 16384, 7.06 against 5.50 ms at N = 65536), so those tiles keep the
/// four kernels. (templates/prefill_bwd_sm90a.cu's `FE_ATOMIC_DQ` states the same rule.)
pub fn has_atomic_mode(spec: &KernelSpec, t: &TileParams) -> bool {
    t.engine == Engine::Wgmma && t.warps == 8 && spec.head_dim() == 128
}

/// Whether a launch runs the atomic dQ mode: its tile has it and the caller did not ask for
/// bitwise-reproducible gradients.
fn atomic_dq(spec: &KernelSpec, tile: &Tile, deterministic: bool) -> bool {
    has_atomic_mode(spec, &tile.params()) && !deterministic
}

/// A tile of `engine` (the `tile` fields otherwise).
fn engine_tile(engine: Engine, block_m: u32, block_n: u32, warps: u32, stages: u32) -> TileParams {
    TileParams {
        engine,
        ..tile(block_m, block_n, warps, stages)
    }
}

/// What the backward's schedule depends on.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    b: usize,
    n: usize,
    h: usize,
    hkv: usize,
    /// Summaries in use, N/C (at most the rows given).
    nc: usize,
    window: usize,
    chunk: usize,
    sliding: bool,
    d: usize,
}

impl Sizes {
    fn of(w: &Workload, summary_rows: usize) -> Sizes {
        let chunk = w.spec.chunk() as usize;
        Sizes {
            b: w.b,
            n: w.n,
            h: w.h,
            hkv: w.hkv,
            nc: (w.n / chunk.max(1)).min(summary_rows),
            window: w.spec.window_or_zero() as usize,
            chunk,
            sliding: w.spec.sliding(),
            d: w.spec.head_dim() as usize,
        }
    }

    /// Delta's fp32 elements, rounded up so the partial sums after it start 16-byte aligned.
    fn delta_elems(&self) -> usize {
        (self.b * self.h * self.n).next_multiple_of(4)
    }

    /// The summary segments' partial dks and dvs `[2, B, Hkv, splits, NSB·BN, D]` (a multiple
    /// of 4: D is).
    fn part_elems(&self, tile: &Tile, splits: usize) -> usize {
        let bn = tile.block_n() as usize;
        let rows = self.nc.div_ceil(bn) * bn;
        2 * self.b * self.hkv * splits * rows * self.d
    }

    /// Delta, the partial sums, and in the atomic mode the fp32 dQ accumulator (tiles of
    /// [`PRE_ROWS`] = 64 rows, `[B, H, cdiv(N, 64), 64 x D]`: the last tile whole; Delta's
    /// blocks zero them, the conversion's read them).
    fn workspace(&self, tile: &Tile, splits: usize, atomic: bool) -> usize {
        let acc = if atomic {
            self.b * self.h * self.n.next_multiple_of(PRE_ROWS) * self.d
        } else {
            0
        };
        self.delta_elems() + self.part_elems(tile, splits) + acc
    }
}

/// Into how many segments of queries each summary block's dks/dvs program is cut (1 to 16).
///
/// Summary block j is seen by every query from `(j·BN + 1)·C` on, so its unsplit program runs
/// about (N − C)/BM query steps, while a raw key block runs about (W + BN)/BM. Resident
/// programs (two per multiprocessor, the summary ones first) share the whole work; a summary
/// segment should not be longer than one such share, or the backward waits on a few programs.
fn summary_splits(s: &Sizes, tile: &Tile, sm_count: u32) -> usize {
    let (bm, bn) = (tile.block_m() as usize, tile.block_n() as usize);
    if s.nc == 0 || s.n == 0 {
        return 1;
    }
    let group = s.h / s.hkv.max(1);
    let heads = s.b * s.hkv * group;
    let raw_rows = if s.sliding {
        s.window + bn
    } else {
        s.window / 2 + bn
    };
    let raw = heads * s.n.div_ceil(bn) * raw_rows.div_ceil(bm);
    let longest = s.n.saturating_sub(s.chunk).div_ceil(bm);
    let summaries: usize = (0..s.nc.div_ceil(bn))
        .map(|j| s.n.saturating_sub((j * bn + 1) * s.chunk).div_ceil(bm))
        .sum::<usize>()
        * heads;
    let slots = 2 * (sm_count.max(1) as usize);
    let share = ((raw + summaries) / slots).max(1);
    (longest * group).div_ceil(share).clamp(1, 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DType, LocalMode};

    /// A prefill_bwd spec of (head dim, window, chunk).
    fn bwd_spec(dwc: (u32, u32, u32), local: LocalMode, dtype: DType) -> KernelSpec {
        crate::spec::test_spec(Op::PrefillBwd, dwc, local, dtype, None)
    }

    fn sizes(n: usize, window: usize, b: usize, hkv: usize) -> Sizes {
        Sizes {
            b,
            n,
            h: hkv,
            hkv,
            nc: n / 64,
            window,
            chunk: 64,
            sliding: false,
            d: 128,
        }
    }

    fn t(bm: u32, bn: u32) -> Tile {
        let spec = bwd_spec((128, 512, 64), LocalMode::Block, DType::Bf16);
        Tile::new(&spec, tile(bm, bn, 4, 2)).unwrap()
    }

    #[test]
    fn long_summary_ranges_are_split_where_they_would_be_the_tail() {
        // one sequence of 16k, 16 heads, 132 SMs: summary block 0 runs 255 query steps of 64,
        // the fair share is 116 (raw 16·256·5 steps, summaries 16·636, over 264 slots): three
        // segments
        let s = sizes(16384, 512, 1, 16);
        assert_eq!(summary_splits(&s, &t(64, 64), 132), 3);
        // small query steps: the same range is more steps, against the same share
        assert!(summary_splits(&s, &t(16, 64), 132) >= 2);
        // a big batch has work enough: no split
        assert_eq!(
            summary_splits(&sizes(4096, 512, 64, 16), &t(64, 64), 132),
            1
        );
        // no summaries: nothing to split
        assert_eq!(summary_splits(&sizes(32, 512, 1, 16), &t(64, 64), 132), 1);
        // at most 16 segments
        assert!(summary_splits(&sizes(1 << 20, 64, 1, 1), &t(16, 128), 132) <= 16);
    }

    #[test]
    fn the_mma_parameter_block_matches_the_template() {
        // templates/prefill_bwd_common.cuh static_asserts the same size
        assert_eq!(std::mem::size_of::<PrefillBwdParams>(), 472);
        assert_eq!(std::mem::offset_of!(PrefillBwdParams, dqacc), 120);
        assert_eq!(std::mem::offset_of!(PrefillBwdParams, strides), 128);
        assert_eq!(std::mem::offset_of!(PrefillBwdParams, lse_sb), 416);
        assert_eq!(std::mem::offset_of!(PrefillBwdParams, b), 432);
        assert_eq!(std::mem::offset_of!(PrefillBwdParams, scale), 464);
        let src = crate::render::TEMPLATES
            .iter()
            .find(|(n, _)| *n == "prefill_bwd_common.cuh")
            .unwrap()
            .1;
        assert!(src.contains("sizeof(PrefillBwdParams) == 472"));
    }

    #[test]
    fn mma_tiles_hold_16_rows_per_warp() {
        let spec = bwd_spec((128, 512, 64), LocalMode::Block, DType::Bf16);
        let mma = |m, n, w, s| engine_tile(Engine::Mma, m, n, w, s);
        assert!(Tile::new(&spec, mma(32, 64, 4, 2)).is_ok());
        let e = Tile::new(&spec, mma(32, 32, 4, 2)).unwrap_err().to_string();
        assert!(e.contains("16 x warps"), "{e}");
        assert!(Tile::new(&spec, mma(128, 64, 4, 2)).is_err());
        let d256 = bwd_spec((256, 512, 64), LocalMode::Block, DType::Bf16);
        assert!(Tile::new(&d256, mma(32, 64, 4, 2)).is_err());
        // the mma kernels first where D <= 128 (they passed the GPU suite), Triton after them
        let t = PrefillBwd.default_tiles(&spec, Arch::new(9, 0));
        assert_eq!(t[0], mma(32, 64, 4, 2));
        let hopper = PrefillBwd.default_tiles(&spec, "sm_90a".parse().unwrap());
        assert_eq!(hopper[0].engine, Engine::Wgmma);
        assert_eq!(hopper[1], mma(32, 64, 4, 2));
        assert_eq!(t.last().map(|t| t.engine), Some(Engine::Triton));
        let t = PrefillBwd.default_tiles(&d256, Arch::new(9, 0));
        assert!(t.iter().all(|t| t.engine == Engine::Triton));
        assert!(Tile::new(&spec, mma(32, 64, 4, 2)).is_ok());
        // (dK/dV, dQ) shared memory: K, V + two stages of Q, dO and their LSE, Delta rows
        let row = (128 + crate::tile::SMEM_PAD) * 2;
        assert_eq!(
            cuda_smem(&spec, &mma(32, 64, 4, 2)),
            (
                2 * 64 * row + 2 * 2 * 32 * row + 2 * 2 * 32 * 4,
                2 * 64 * row + 2 * 2 * 32 * row
            )
        );
    }

    #[test]
    fn wgmma_tiles_hold_64_rows_per_warpgroup() {
        let spec = |d| bwd_spec((d, 512, 64), LocalMode::Sliding, DType::F16);
        let wg = |m, n, w, s| engine_tile(Engine::Wgmma, m, n, w, s);
        for d in [64, 128] {
            assert!(Tile::new(&spec(d), wg(64, 64, 4, 2)).is_ok());
            assert!(Tile::new(&spec(d), wg(64, 128, 8, 1)).is_ok());
        }
        for d in [32, 96, 256] {
            assert!(Tile::new(&spec(d), wg(64, 64, 4, 2)).is_err(), "D = {d}");
        }
        let s = spec(128);
        assert!(Tile::new(&s, wg(32, 64, 4, 2)).is_err());
        assert!(Tile::new(&s, wg(64, 32, 2, 2)).is_err());
        assert!(Tile::new(&s, wg(64, 64, 8, 2)).is_err());
        assert!(Tile::new(&s, wg(64, 64, 4, 3)).is_err());
        // (dK/dV, dQ) as templates/prefill_bwd_sm90a.cu's SMEM_DKDV and SMEM_DQ
        let row = 128 * 2;
        assert_eq!(
            cuda_smem(&s, &wg(64, 64, 4, 2)),
            (
                1024 + 2 * 64 * row + 2 * 2 * 64 * row + 2 * 2 * 64 * 4,
                1024 + 2 * 64 * row + 2 * 2 * 64 * row
            )
        );
        assert_eq!(
            Tile::new(&s, wg(64, 64, 4, 2)).unwrap().smem_bytes(&s),
            cuda_smem(&s, &wg(64, 64, 4, 2)).0
        );
        // two warpgroups at D = 128: the atomic mode's dS^T tile (128 rows of 128 bytes) and
        // two 16 KiB dQ staging panels per warpgroup too
        assert_eq!(
            cuda_smem(&s, &wg(64, 128, 8, 2)).0,
            1024 + 2 * 128 * row + 2 * 2 * 64 * row + 128 * 128 + 2 * 2 * 16384 + 2 * 2 * 64 * 4
        );
        assert!(has_atomic_mode(&s, &wg(64, 128, 8, 2)));
        assert!(!has_atomic_mode(&s, &wg(64, 64, 4, 2)));
        assert!(!has_atomic_mode(&spec(64), &wg(64, 128, 8, 2)));
        assert!(!has_atomic_mode(
            &s,
            &engine_tile(Engine::Mma, 64, 128, 8, 2)
        ));
        // its module exports the mode's two kernels after the four
        let e = s.entry_points(&Tile::new(&s, wg(64, 128, 8, 2)).unwrap());
        assert_eq!(e.len(), 6);
        assert!(e[4].ends_with("_dkdv_atomic") && e[5].ends_with("_dq_atomic"));
        assert_eq!(
            s.entry_points(&Tile::new(&s, wg(64, 64, 4, 2)).unwrap())
                .len(),
            4
        );
    }

    #[test]
    fn the_atomic_mode_runs_its_kernels_on_a_larger_workspace_unless_deterministic() {
        let spec = bwd_spec((128, 64, 16), LocalMode::Block, DType::Bf16);
        let t = Tile::new(&spec, engine_tile(Engine::Wgmma, 64, 128, 8, 2)).unwrap();
        let mut p = Problem::new(Workload::new(spec, 2, 300, 4, 2));
        let plan = |p: &Problem| {
            let args = p.placeholder_args(&t, 132, 0x10000, 0x20000);
            let steps = PrefillBwd
                .plan(&spec, &t, &args, DeviceFacts::new(132))
                .unwrap();
            let ws = args.workspace.unwrap().1;
            (steps.iter().map(|s| s.function).collect::<Vec<_>>(), ws)
        };
        let (atomic, ws_atomic) = plan(&p);
        p.deterministic = true;
        let (det, ws_det) = plan(&p);
        // Delta (which zeroes the accumulator), dK/dV adding dQ, the segment sum, the conversion
        assert_eq!(atomic, [0, 4, 2, 5]);
        assert_eq!(det, [0, 1, 2, 3]);
        // the accumulator in whole 64-row tiles: 300 rows take 320
        assert_eq!(ws_atomic - ws_det, 2 * 4 * 320 * 128);
        // a deterministic workspace is too small for the atomic mode
        let mut args = p.placeholder_args(&t, 132, 0x10000, 0x20000);
        args.deterministic = false;
        let e = PrefillBwd
            .plan(&spec, &t, &args, DeviceFacts::new(132))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dQ accumulator"), "{e}");
    }

    #[test]
    fn no_launch_has_an_empty_grid_and_the_workspace_is_aligned() {
        let spec = bwd_spec((64, 64, 16), LocalMode::Sliding, DType::Bf16);
        let mma = engine_tile(Engine::Mma, 32, 64, 4, 2);
        for t in [tile(16, 32, 4, 2), mma] {
            let t = Tile::new(&spec, t).unwrap();
            // N < C and no summary rows: no segment sum; N past C: all four kernels; N = 0
            // with summary rows: only the segment sum (their zeros); H = 0: the dK/dV kernel
            // (zeros) and the segment sum
            for (n, h, extra, steps) in [
                (5usize, 4usize, 0usize, vec![0usize, 1, 3]),
                (150, 4, 0, vec![0, 1, 2, 3]),
                (0, 4, 3, vec![2]),
                (150, 0, 0, vec![1, 2]),
            ] {
                let mut p = Problem::new(Workload::new(spec, 2, n, h, 2));
                p.summary_rows += extra;
                let args = p.placeholder_args(&t, 132, 0x10000, 0x20000);
                let plan = PrefillBwd
                    .plan(&spec, &t, &args, DeviceFacts::new(132))
                    .unwrap();
                let functions: Vec<usize> = plan.iter().map(|s| s.function).collect();
                assert_eq!(functions, steps, "{t:?} N={n} H={h}");
                for s in &plan {
                    assert!(
                        s.grid.0 > 0 && s.grid.1 > 0 && s.grid.2 > 0,
                        "{t:?} N={n}: {s:?}"
                    );
                }
            }
            let p = Problem::new(Workload::new(spec, 2, 150, 4, 2));
            let args = p.placeholder_args(&t, 132, 0x10000, 0x20004);
            let e = PrefillBwd
                .plan(&spec, &t, &args, DeviceFacts::new(132))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not 16-byte aligned"), "{e}");
        }
    }

    #[test]
    fn the_workspace_holds_delta_then_aligned_partials() {
        let s = sizes(100, 64, 1, 2);
        assert_eq!(s.delta_elems(), 200);
        let s3 = Sizes { n: 101, ..s };
        assert_eq!(s3.delta_elems(), 204);
        // nc = 1 summary, one block of 32 rows, 3 segments: 2 * 1 * 2 * 3 * 32 * 128
        assert_eq!(
            s.workspace(&t(16, 32), 3, false),
            200 + 2 * 2 * 3 * 32 * 128
        );
        // the atomic mode's dQ accumulator after them, in whole 64-row tiles: B * H * 128 * D
        assert_eq!(
            s.workspace(&t(16, 32), 3, true),
            200 + 2 * 2 * 3 * 32 * 128 + 2 * 128 * 128
        );
    }
}
