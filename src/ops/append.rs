//! append (the contract's item 6, after extend): writes the new tokens' keys and values into the
//! ring. From the new `k, v [B,Tmax,Hkv,D]` and int32 `start [B]` (L0), `count [B]` (T), the
//! last `min(T, W)` tokens of each sequence land in slot `(L0 + t) mod W` of
//! `k_ring, v_ring [B,W,Hkv,D]`, updated in place (the outputs are the rings the call also
//! reads; every other slot keeps its value). One program per block of slots, kv head and
//! sequence (Triton so far). The workload's `n` is Tmax and its `past` L0.

use super::launch::{
    ArgList, LaunchError, OpArgs, Step, check_op, expect_contiguous_rows, expect_dtype,
    expect_shape, grid_dim,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel, common_dtype,
    constexprs, desc, probe_problem, spec_from, start_count, triton_only,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
#[cfg(feature = "cli")]
use crate::reference;
use crate::spec::{KernelSpec, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{Engine, Tile, TileError, TileParams};
use crate::workload::Workload;

/// The append op. The workload's `h` and `hkv` are both the kv heads.
pub struct Append;

const NAMES: [&str; 8] = [
    "k", "v", "k_ring", "v_ring", "start", "count", "k_ring", "v_ring",
];

impl OpDef for Append {
    fn op(&self) -> Op {
        Op::Append
    }

    super::triton_only_kernels!();

    fn tile_name(&self, t: &TileParams) -> String {
        format!("tr_n{}_w{}", t.block_n, t.warps)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        TileParams {
            block_m: 0,
            stages: 0,
            splits: 0,
            ..t
        }
    }

    fn check_tile(&self, _spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        triton_only(Op::Append, t, false, true, false)
    }

    fn triton_default(&self, _spec: &KernelSpec) -> TileParams {
        TileParams {
            engine: Engine::Triton,
            block_n: 32,
            warps: 4,
            ..TileParams::default()
        }
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        vec![TritonKernel {
            function: "fe_append",
            entry: spec.name(),
            aligned: true,
            constexprs: constexprs(
                spec,
                &[
                    ("W", Const::Int(spec.window_or_zero())),
                    ("BLOCK_N", Const::Int(tile.block_n())),
                    ("PAGED", Const::Bool(false)),
                ],
            ),
        }]
    }

    fn in_place(&self) -> &'static [(usize, usize)] {
        &[(0, 2), (1, 3)]
    }

    fn flops(&self, _w: &Workload) -> f64 {
        0.0
    }

    fn bytes(&self, w: &Workload) -> f64 {
        let landing = w.n.min(w.spec.window_or_zero() as usize);
        (w.b * w.hkv * landing * w.spec.head_dim() as usize * 2 * 2 * 2) as f64
    }

    fn rate(&self) -> Rate {
        Rate::Bytes
    }

    fn bucket_rows(&self, b: usize, _h: usize, hkv: usize) -> usize {
        b * hkv
    }

    fn describe(&self, w: &Workload) -> String {
        format!("B={} T={} L0={} Hkv={}", w.b, w.n, w.past, w.hkv)
    }

    fn describe_problem(&self, p: &Problem) -> String {
        format!(
            "B={} Hkv={} {}",
            p.workload.b,
            p.workload.hkv,
            super::starts_and_counts(p)
        )
    }

    fn problem(&self, w: Workload) -> Problem {
        Problem {
            lens: vec![w.past as i32; w.b],
            counts: vec![w.n as i32; w.b],
            page: 0,
            summary_rows: 0,
            workload: w,
            scale: None,
            splits: None,
            deterministic: false,
        }
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let w = &p.workload;
        let (e, d) = (p.elem(), p.d());
        let win = w.spec.window_or_zero() as usize;
        vec![
            desc("k", e, &[w.b, w.n, w.hkv, d], "[B, Tmax, Hkv, D]"),
            desc("v", e, &[w.b, w.n, w.hkv, d], "[B, Tmax, Hkv, D]"),
            desc("k_ring", e, &[w.b, win, w.hkv, d], "[B, W, Hkv, D]"),
            desc("v_ring", e, &[w.b, win, w.hkv, d], "[B, W, Hkv, D]"),
            desc("start", ElemType::I32, &[w.b], "int32 [B]"),
            desc("count", ElemType::I32, &[w.b], "int32 [B]"),
        ]
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        self.inputs(p)[2..4].to_vec()
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        let dtype = common_dtype(&self.inputs(&probe_problem(Op::Append)), inputs)?;
        let (k, kr) = (&inputs[0].1, &inputs[2].1);
        let flags = SpecParams {
            window: flags.window.or(Some(kr[1] as u32)),
            ..*flags
        };
        let spec = spec_from(Op::Append, &flags, k[3], dtype, None)?;
        let (start, count) = start_count(Op::Append, lens, k[0], k[1], "k")?;
        let mut p = Problem::new(Workload {
            spec,
            b: k[0],
            n: k[1],
            h: k[2],
            hkv: k[2],
            past: start.iter().copied().max().unwrap_or(0) as usize,
        });
        p.lens = start;
        p.counts = count;
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        let win = w.spec.window_or_zero() as usize;
        let tmax = w.n.clamp(1, 2 * win + 3);
        let seqs: [(usize, usize); 5] = [
            (0, tmax),
            (win + 1, 1),
            (3, tmax / 2),
            (5 * win - 2, tmax),
            (9, 0),
        ];
        let mut p = Problem::new(Workload {
            spec: w.spec,
            b: seqs.len(),
            n: tmax,
            h: w.hkv.clamp(1, 2),
            hkv: w.hkv.clamp(1, 2),
            past: 5 * win,
        });
        p.lens = seqs.iter().map(|s| s.0 as i32).collect();
        p.counts = seqs.iter().map(|s| s.1.min(tmax) as i32).collect();
        CheckProblem {
            problem: p,
            large_logits: false,
        }
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, _large: bool) -> Vec<HostTensor> {
        super::draw_with_ints(p, &self.inputs(p), 4, false, draw, &[&p.lens, &p.counts])
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let w = &p.workload;
        let win = w.spec.window_or_zero() as usize;
        let ring = |new: &HostTensor, old: &HostTensor| {
            reference::append(
                &old.to_f64(),
                &new.to_f64(),
                &p.lens,
                &p.counts,
                w.n,
                win,
                w.hkv,
                p.d(),
            )
        };
        Reference {
            outputs: vec![ring(&inputs[0], &inputs[2]), ring(&inputs[1], &inputs[3])],
            checks: vec![Check::Relative, Check::Relative],
        }
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        _device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        check_op(spec, Op::Append)?;
        plan_append(spec, tile, args.expect(Op::Append, &NAMES)?, 0)
    }
}

/// Checks append's tensors (in contiguous form: rings `[B, W, Hkv, D]`, whose batch stride a
/// paged call sets to its pool's slot stride) and plans its launch; `slot` is the address of
/// the int32 slot index `[B]` of a paged call, 0 for the contiguous layout.
pub(crate) fn plan_append(
    spec: &KernelSpec,
    tile: &Tile,
    t: &[TensorArg],
    slot: u64,
) -> Result<Vec<Step>, LaunchError> {
    let et = ElemType::of(spec.dtype());
    let d = spec.head_dim() as usize;
    let win = spec.window_or_zero() as usize;
    for (i, x) in t.iter().enumerate() {
        expect_dtype(
            x,
            if matches!(i, 4 | 5) {
                ElemType::I32
            } else {
                et
            },
        )?;
    }
    expect_shape(&t[0], &[None, None, None, Some(d)], "[B, Tmax, Hkv, D]")?;
    let (b, tmax, hkv) = (t[0].shape[0], t[0].shape[1], t[0].shape[2]);
    expect_shape(
        &t[1],
        &[Some(b), Some(tmax), Some(hkv), Some(d)],
        "[B, Tmax, Hkv, D]",
    )?;
    let ring = [Some(b), Some(win), Some(hkv), Some(d)];
    for i in [2, 3, 6, 7] {
        expect_shape(&t[i], &ring, "[B, W, Hkv, D]")?;
    }
    expect_shape(&t[4], &[Some(b)], "int32 [B]")?;
    expect_shape(&t[5], &[Some(b)], "int32 [B]")?;
    for x in t {
        expect_contiguous_rows(x)?;
    }
    if b == 0 || tmax == 0 || hkv == 0 {
        return Ok(Vec::new());
    }
    // the Triton kernel is compiled for 16-byte access to these (`TritonKernel::aligned`)
    for i in [0, 1, 2, 3, 6, 7] {
        super::launch::expect_vector_layout(&t[i])?;
    }
    let mut a = ArgList::default();
    for (name, i) in [
        ("K", 0),
        ("V", 1),
        ("START", 4),
        ("COUNT", 5),
        ("KR", 6),
        ("VR", 7),
    ] {
        a.ptr(name, t[i].ptr);
    }
    for (names, i) in [
        (["k_sb", "k_st", "k_sh"], 0),
        (["v_sb", "v_st", "v_sh"], 1),
        (["kr_sb", "kr_ss", "kr_sh"], 6),
        (["vr_sb", "vr_ss", "vr_sh"], 7),
    ] {
        a.strides(names, &t[i]);
    }
    a.i32("HKV", hkv as i32).ptr("SLOT", slot);
    let grid = (
        grid_dim(
            "slot blocks",
            win.div_ceil(tile.block_n() as usize),
            i32::MAX as usize,
        )?,
        grid_dim("Hkv", hkv, 65535)?,
        grid_dim("B", b, 65535)?,
    );
    Ok(vec![Step::triton(0, grid, tile.warps(), a)])
}
