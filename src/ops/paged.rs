//! The paged and indirect caches of the contract's item 7, for serving engines: `decode_paged`,
//! `extend_paged` and `append_paged` are decode, extend and append with the rings in a slot
//! pool `[S, W, Hkv, D]` (int32 `slot [B]`: sequence b's ring is pool row `slot[b]`) and, for
//! decode and extend, the summaries in a page pool `[P, PAGE, Hkv, D]` (int32
//! `page_table [B, MAXP]`: summary c of sequence b is row `c % PAGE` of page
//! `page_table[b][c / PAGE]`). Results are identical to the contiguous layout: the same kernels
//! with `PAGED` on read through the tables (Triton for all three; decode also the CUDA kernel,
//! templates/decode.cu, its default). Each op is described by its contiguous base op for
//! everything but its tensors; the reference gathers the pools into the contiguous layout and
//! runs the base op's.

use super::launch::{
    LaunchError, OpArgs, Paging, Step, expect_contiguous_rows, expect_dtype, expect_shape,
};
#[cfg(feature = "cli")]
use super::{Check, Draw, Reference};
use super::{
    CheckProblem, Const, DeviceFacts, OpDef, Problem, Rate, TensorDesc, TritonKernel, desc,
    probe_problem,
};
#[cfg(feature = "cli")]
use crate::hostdata::HostTensor;
use crate::spec::{KernelSpec, Op, SpecParams};
use crate::target::Arch;
use crate::tensor::{ElemType, TensorArg};
use crate::tile::{Engine, Tile, TileError, TileParams};
use crate::workload::Workload;

/// A paged op over its contiguous base op.
pub struct Paged {
    op: Op,
    base: Op,
}

/// decode on a slot pool and a page pool.
pub const DECODE_PAGED: Paged = Paged {
    op: Op::DecodePaged,
    base: Op::Decode,
};
/// extend on a slot pool and a page pool.
pub const EXTEND_PAGED: Paged = Paged {
    op: Op::ExtendPaged,
    base: Op::Extend,
};
/// append into a slot pool.
pub const APPEND_PAGED: Paged = Paged {
    op: Op::AppendPaged,
    base: Op::Append,
};

/// Summary rows per page when a workload does not say (a power of two, as engines use).
const DEFAULT_PAGE: usize = 16;

/// Where the paged tensors sit among the base op's inputs: the base index of the first ring
/// (the slot index is inserted after the two rings), and of the summaries (the page table is
/// inserted after them), if any.
struct Layout {
    ring: usize,
    summaries: Option<usize>,
}

impl Paged {
    fn base_def(&self) -> &'static dyn OpDef {
        super::of(self.base)
    }

    /// Whether the op has a CUDA kernel (decode: templates/decode.cu with PAGED on).
    /// Whether the op has a kernel besides its Triton one (decode's CUDA kernel, extend's Hopper
    /// kernel); append has only Triton.
    fn has_cuda(&self) -> bool {
        self.base != Op::Append
    }

    fn layout(&self) -> Layout {
        match self.base {
            Op::Decode => Layout {
                ring: 1,
                summaries: Some(3),
            },
            Op::Extend => Layout {
                ring: 3,
                summaries: Some(5),
            },
            _ => Layout {
                ring: 2,
                summaries: None,
            },
        }
    }

    /// Base input index of each paged input (None: the slot index or the page table).
    fn base_index_map(&self) -> Vec<Option<usize>> {
        let l = self.layout();
        let n = self.base_def().inputs(&probe_problem(self.base)).len();
        let mut v = Vec::new();
        for i in 0..n {
            v.push(Some(i));
            if i == l.ring + 1 {
                v.push(None); // slot
            }
            if Some(i + 1) == l.summaries.map(|s| s + 2) {
                v.push(None); // page table
            }
        }
        v
    }

    /// The input index of the slot index (it follows the two ring pools).
    fn slot_index(&self) -> usize {
        self.layout().ring + 2
    }

    /// The input index of the page table, if the op pages its summaries (it follows the two
    /// summary pools).
    fn table_index(&self) -> Option<usize> {
        let s = self.layout().summaries?;
        // one slot index before the summaries, the two pools, then the table
        Some(s + 1 + 2)
    }

    /// The contiguous problem the pools hold (the same, without pages).
    fn base_problem(&self, p: &Problem) -> Problem {
        let mut b = p.clone();
        b.workload.spec = base_spec(&p.workload.spec, self.base);
        b.page = 0;
        b
    }

    /// Slots in the ring pool and pages in the summary pool of `p` (a spare slot and spare
    /// pages that no sequence uses, so a kernel reading the wrong one is caught).
    fn pools(&self, p: &Problem) -> (usize, usize, usize) {
        let b = p.workload.b;
        let page = p.page.max(1);
        let maxp = p.summary_rows.div_ceil(page);
        (b + 2, b * maxp + 3, maxp)
    }
}

/// `spec` as its base op's (same fields).
fn base_spec(spec: &KernelSpec, base: Op) -> KernelSpec {
    KernelSpec::new(
        base,
        &SpecParams {
            head_dim: Some(spec.head_dim()),
            window: spec.window(),
            chunk: Some(spec.chunk()),
            local: spec.local(),
            dtype: Some(spec.dtype()),
            group: spec.group(),
        },
    )
    .expect("a paged op's spec is valid for its base op")
}

/// A view of a pool `[S, W, Hkv, D]` (or `[P, PAGE, Hkv, D]`) as the base op's per-sequence
/// tensor: `shape` with the pool's strides (the kernels index its first dimension through the
/// slot index or the page table).
fn as_base(t: &TensorArg, shape: [usize; 4]) -> TensorArg {
    TensorArg::contiguous(&t.name, t.ptr, t.dtype, &shape).with_strides(&t.strides)
}

impl OpDef for Paged {
    fn op(&self) -> Op {
        self.op
    }

    fn entry_points(&self, spec: &KernelSpec, tile: &TileParams) -> Vec<String> {
        let engine = tile.engine;
        let main = spec.name();
        match (self.base, engine) {
            (Op::Decode, _) => vec![main.clone(), format!("{main}_combine")],
            (Op::Extend, Engine::Wgmma) => vec![main.clone(), format!("{main}_gather")],
            _ => vec![main],
        }
    }

    fn template(&self, tile: &TileParams) -> &'static str {
        self.base_def().template(tile)
    }

    fn tile_name(&self, t: &TileParams) -> String {
        self.base_def().tile_name(t)
    }

    fn normalize(&self, t: TileParams) -> TileParams {
        self.base_def().normalize(t)
    }

    fn check_tile(&self, spec: &KernelSpec, t: &TileParams) -> Result<(), TileError> {
        if t.engine == Engine::Tma {
            return Err(TileError::Field {
                op: self.op,
                field: "engine",
                value: 0,
                accepted: "mma or triton (the tma decode reads contiguous caches only so far)",
            });
        }
        if t.engine != Engine::Triton && !self.has_cuda() {
            return Err(TileError::Field {
                op: self.op,
                field: "engine",
                value: 0,
                accepted: "triton (append_paged has only its Triton kernel so far)",
            });
        }
        self.base_def().check_tile(&base_spec(spec, self.base), t)
    }

    fn smem_bytes(&self, spec: &KernelSpec, t: &TileParams) -> u32 {
        if t.engine == Engine::Triton {
            0
        } else {
            self.base_def().smem_bytes(&base_spec(spec, self.base), t)
        }
    }

    fn default_tiles(&self, spec: &KernelSpec, arch: Arch) -> Vec<TileParams> {
        if self.has_cuda() {
            self.base_def()
                .default_tiles(&base_spec(spec, self.base), arch)
        } else {
            vec![self.triton_default(spec)]
        }
    }

    fn triton_default(&self, spec: &KernelSpec) -> TileParams {
        self.base_def().triton_default(&base_spec(spec, self.base))
    }

    fn triton_kernels(&self, spec: &KernelSpec, tile: &Tile) -> Vec<TritonKernel> {
        let entries = self.entry_points(spec, &tile.params());
        let mut ks = self
            .base_def()
            .triton_kernels(&base_spec(spec, self.base), tile);
        for (k, e) in ks.iter_mut().zip(entries) {
            k.entry = e;
            if let Some(c) = k.constexprs.get_mut("PAGED") {
                *c = Const::Bool(true);
            }
        }
        ks
    }

    fn prune(&self, spec: &KernelSpec, tile: &Tile) -> Option<String> {
        self.base_def().prune(&base_spec(spec, self.base), tile)
    }

    fn flops(&self, w: &Workload) -> f64 {
        self.base_def().flops(&Workload {
            spec: base_spec(&w.spec, self.base),
            ..*w
        })
    }

    fn bytes(&self, w: &Workload) -> f64 {
        self.base_def().bytes(&Workload {
            spec: base_spec(&w.spec, self.base),
            ..*w
        })
    }

    fn rate(&self) -> Rate {
        self.base_def().rate()
    }

    fn bucket_rows(&self, b: usize, h: usize, hkv: usize) -> usize {
        self.base_def().bucket_rows(b, h, hkv)
    }

    fn describe(&self, w: &Workload) -> String {
        self.base_def().describe(&Workload {
            spec: base_spec(&w.spec, self.base),
            ..*w
        })
    }

    fn describe_problem(&self, p: &Problem) -> String {
        format!(
            "{} page={}",
            self.base_def().describe_problem(&self.base_problem(p)),
            p.page
        )
    }

    fn problem(&self, w: Workload) -> Problem {
        let mut p = self.base_def().problem(Workload {
            spec: base_spec(&w.spec, self.base),
            ..w
        });
        p.workload.spec = w.spec;
        if self.layout().summaries.is_some() {
            p.page = DEFAULT_PAGE;
            p.summary_rows = p.summary_rows.max(1).div_ceil(DEFAULT_PAGE) * DEFAULT_PAGE;
        }
        p
    }

    fn inputs(&self, p: &Problem) -> Vec<TensorDesc> {
        let base = self.base_def().inputs(&self.base_problem(p));
        let (slots, pages, maxp) = self.pools(p);
        let w = &p.workload;
        let l = self.layout();
        let mut out = Vec::new();
        for b in self.base_index_map() {
            match b {
                Some(j) if j == l.ring || j == l.ring + 1 => {
                    let t = &base[j];
                    let mut shape = t.shape.clone();
                    shape[0] = slots;
                    out.push(desc(
                        if j == l.ring { "k_pool" } else { "v_pool" },
                        t.elem,
                        &shape,
                        "[S, W, Hkv, D]",
                    ));
                }
                Some(j) if Some(j) == l.summaries || Some(j) == l.summaries.map(|s| s + 1) => {
                    let t = &base[j];
                    let shape = [pages, p.page.max(1), t.shape[2], t.shape[3]];
                    out.push(desc(
                        if Some(j) == l.summaries {
                            "ks_pages"
                        } else {
                            "vs_pages"
                        },
                        t.elem,
                        &shape,
                        "[P, PAGE, Hkv, D]",
                    ));
                }
                Some(j) => out.push(base[j].clone()),
                None if out.last().is_some_and(|t| t.name == "v_pool") => {
                    out.push(desc("slot", ElemType::I32, &[w.b], "int32 [B]"))
                }
                None => out.push(desc(
                    "page_table",
                    ElemType::I32,
                    &[w.b, maxp],
                    "int32 [B, MAXP]",
                )),
            }
        }
        out
    }

    fn outputs(&self, p: &Problem) -> Vec<TensorDesc> {
        match self.base {
            Op::Append => self.inputs(p)[2..4].to_vec(),
            _ => self.base_def().outputs(&self.base_problem(p)),
        }
    }

    fn in_place(&self) -> &'static [(usize, usize)] {
        self.base_def().in_place()
    }

    fn problem_from(
        &self,
        flags: &SpecParams,
        inputs: &[(ElemType, Vec<usize>)],
        lens: Option<&[i32]>,
    ) -> Result<Problem, String> {
        // The base problem from the base op's view of the shapes: the pools as one ring and
        // summary block per sequence.
        let map = self.base_index_map();
        let l = self.layout();
        let b = inputs[0].1[0];
        let mut base_inputs = Vec::new();
        let mut page = 0;
        let mut maxp = 0;
        for (i, m) in map.iter().enumerate() {
            let (e, shape) = &inputs[i];
            match m {
                Some(j) if *j == l.ring || *j == l.ring + 1 => {
                    let mut s = shape.clone();
                    s[0] = b;
                    base_inputs.push((*e, s));
                }
                Some(j) if Some(*j) == l.summaries || Some(*j) == l.summaries.map(|s| s + 1) => {
                    page = shape[1];
                    base_inputs.push((*e, shape.clone()));
                }
                Some(_) => base_inputs.push((*e, shape.clone())),
                None if shape.len() == 2 => maxp = shape[1],
                None => {}
            }
        }
        // summaries: [P, PAGE, ...] seen as [B, MAXP * PAGE, ...]
        if let Some(s) = l.summaries {
            for j in [s, s + 1] {
                let t = &mut base_inputs[j].1;
                *t = vec![b, maxp * page, t[2], t[3]];
            }
        }
        // the int32 vectors: slot first, then the base op's
        let lens = lens.ok_or("the paged ops read the int32 tensor slot [B]")?;
        if lens.len() < b {
            return Err(format!("tensor slot has fewer than B = {b} entries"));
        }
        let flags = SpecParams {
            window: flags.window.or(Some(base_inputs[l.ring].1[1] as u32)),
            ..*flags
        };
        let mut p = self
            .base_def()
            .problem_from(&flags, &base_inputs, Some(&lens[b..]))?;
        p.workload.spec = KernelSpec::new(
            self.op,
            &SpecParams {
                head_dim: Some(p.workload.spec.head_dim()),
                window: p.workload.spec.window(),
                chunk: Some(p.workload.spec.chunk()),
                local: p.workload.spec.local(),
                dtype: Some(p.workload.spec.dtype()),
                group: p.workload.spec.group(),
            },
        )
        .map_err(|e| e.to_string())?;
        p.page = page;
        Ok(p)
    }

    fn check_problem(&self, w: &Workload) -> CheckProblem {
        let mut cp = self.base_def().check_problem(&Workload {
            spec: base_spec(&w.spec, self.base),
            ..*w
        });
        cp.problem.workload.spec = w.spec;
        if self.layout().summaries.is_some() {
            // pages of 3 rows: summaries straddle pages, the last page partly used
            cp.problem.page = 3;
            cp.problem.summary_rows = cp.problem.summary_rows.max(1).div_ceil(3) * 3;
        }
        cp
    }

    #[cfg(feature = "cli")]
    fn random_inputs(&self, p: &Problem, draw: Draw<'_>, large: bool) -> Vec<HostTensor> {
        let bp = self.base_problem(p);
        let base = self.base_def().random_inputs(&bp, draw, large);
        let (slots, pages, maxp) = self.pools(p);
        let b = p.workload.b;
        // a random slot per sequence and random pages, from drawn values' order
        let perm = |n: usize, draw: Draw<'_>| -> Vec<usize> {
            let keys = draw(&[n.max(1)], 1.0).to_f64();
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]).then(a.cmp(&b)));
            idx
        };
        let slot: Vec<usize> = perm(slots, draw)[..b].to_vec();
        let page_of: Vec<usize> = perm(pages, draw)[..b * maxp].to_vec();
        let l = self.layout();
        let page = p.page.max(1);
        let mut out = Vec::new();
        for m in self.base_index_map() {
            match m {
                Some(j) if j == l.ring || j == l.ring + 1 => {
                    let ring = &base[j];
                    let mut shape = ring.shape.clone();
                    shape[0] = slots;
                    // junk everywhere, the sequences' rings at their slots
                    let mut pool = draw(&shape, 9.0);
                    let row = ring.data.len() / b.max(1);
                    for (bi, &s) in slot.iter().enumerate() {
                        pool.data[s * row..(s + 1) * row]
                            .copy_from_slice(&ring.data[bi * row..(bi + 1) * row]);
                    }
                    out.push(pool);
                }
                Some(j) if Some(j) == l.summaries || Some(j) == l.summaries.map(|s| s + 1) => {
                    let sums = &base[j]; // [B, MAXP * PAGE, Hkv, D]
                    let shape = [pages, page, sums.shape[2], sums.shape[3]];
                    let mut pool = draw(&shape, 9.0);
                    let row = sums.shape[2] * sums.shape[3] * sums.elem.size();
                    for bi in 0..b {
                        for c in 0..sums.shape[1] {
                            let at = (page_of[bi * maxp + c / page] * page + c % page) * row;
                            let from = (bi * sums.shape[1] + c) * row;
                            pool.data[at..at + row].copy_from_slice(&sums.data[from..from + row]);
                        }
                    }
                    out.push(pool);
                }
                Some(j) => out.push(base[j].clone()),
                None if out.len() == self.slot_index() => {
                    let v: Vec<i32> = slot.iter().map(|&s| s as i32).collect();
                    out.push(HostTensor::from_i32(&[b], &v));
                }
                None => {
                    let v: Vec<i32> = page_of.iter().map(|&s| s as i32).collect();
                    out.push(HostTensor::from_i32(&[b, maxp], &v));
                }
            }
        }
        out
    }

    #[cfg(feature = "cli")]
    fn reference(&self, p: &Problem, inputs: &[HostTensor]) -> Reference {
        let bp = self.base_problem(p);
        let l = self.layout();
        let b = p.workload.b;
        let slot = inputs[self.slot_index()].to_i32();
        let page = p.page.max(1);
        let mut base = Vec::new();
        let table = self
            .table_index()
            .map(|at| inputs[at].to_i32())
            .unwrap_or_default();
        let map = self.base_index_map();
        let maxp = p.summary_rows.div_ceil(page);
        for (i, m) in map.iter().enumerate() {
            let t = &inputs[i];
            match m {
                Some(j) if *j == l.ring || *j == l.ring + 1 => {
                    let row = t.data.len() / t.shape[0].max(1);
                    let mut shape = t.shape.clone();
                    shape[0] = b;
                    let mut data = Vec::with_capacity(b * row);
                    for &s in &slot {
                        data.extend_from_slice(&t.data[s as usize * row..(s as usize + 1) * row]);
                    }
                    base.push(HostTensor {
                        elem: t.elem,
                        shape,
                        data,
                    });
                }
                Some(j) if Some(*j) == l.summaries || Some(*j) == l.summaries.map(|s| s + 1) => {
                    let row = t.shape[2] * t.shape[3] * t.elem.size();
                    let mut data = Vec::with_capacity(b * p.summary_rows * row);
                    for bi in 0..b {
                        for c in 0..p.summary_rows {
                            let pg = table[bi * maxp + c / page] as usize;
                            let at = (pg * page + c % page) * row;
                            data.extend_from_slice(&t.data[at..at + row]);
                        }
                    }
                    base.push(HostTensor {
                        elem: t.elem,
                        shape: vec![b, p.summary_rows, t.shape[2], t.shape[3]],
                        data,
                    });
                }
                Some(_) => base.push(t.clone()),
                None => {}
            }
        }
        let mut r = self.base_def().reference(&bp, &base);
        if self.base == Op::Append {
            // the updated rings back into copies of the pools
            for (o, pool_at) in r.outputs.iter_mut().zip([l.ring, l.ring + 1]) {
                let pool = &inputs[pool_at];
                let mut full = pool.to_f64();
                let row = full.len() / pool.shape[0].max(1);
                for (bi, &s) in slot.iter().enumerate() {
                    full[s as usize * row..(s as usize + 1) * row]
                        .copy_from_slice(&o[bi * row..(bi + 1) * row]);
                }
                *o = full;
            }
            r.checks = vec![Check::Relative, Check::Relative];
        }
        r
    }

    fn splits(&self, p: &Problem, tile: &Tile, sm_count: u32) -> usize {
        self.base_def()
            .splits(&self.base_problem(p), tile, sm_count)
    }

    /// The base op's, with the summary rows the page table spans (its MAXP pages of PAGE rows:
    /// `summary_rows` rounded up to whole pages), which is what the launch reads.
    fn workspace(&self, p: &Problem, tile: &Tile, splits: usize) -> usize {
        let mut base = self.base_problem(p);
        let page = p.page.max(1);
        base.summary_rows = p.summary_rows.div_ceil(page) * page;
        self.base_def().workspace(&base, tile, splits)
    }

    fn plan(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        args: &OpArgs,
        device: DeviceFacts,
    ) -> Result<Vec<Step>, LaunchError> {
        super::launch::check_op(spec, self.op)?;
        let map = self.base_index_map();
        let l = self.layout();
        let n_in = map.len();
        let t = &args.tensors;
        let n_out = self.outputs(&probe_problem(self.op)).len();
        if t.len() != n_in + n_out {
            let names: Vec<&str> = self
                .inputs(&probe_problem(self.op))
                .iter()
                .chain(&self.outputs(&probe_problem(self.op)))
                .map(|d| d.name)
                .collect();
            return Err(LaunchError::Arity {
                op: self.op,
                expected: names.len(),
                names: names.join(", "),
                got: t.len(),
            });
        }
        let et = ElemType::of(spec.dtype());
        let d = spec.head_dim() as usize;
        let win = spec.window_or_zero() as usize;
        let b = t[0].shape.first().copied().unwrap_or(0);
        let slot = &t[self.slot_index()];
        expect_dtype(slot, ElemType::I32)?;
        expect_shape(slot, &[Some(b)], "int32 [B]")?;
        let pool = [None, Some(win), None, Some(d)];
        for i in [l.ring, l.ring + 1] {
            expect_dtype(&t[i], et)?;
            expect_shape(&t[i], &pool, "[S, W, Hkv, D]")?;
            expect_contiguous_rows(&t[i])?;
        }
        let hkv = t[l.ring].shape[2];
        let mut paging = Paging {
            slot: slot.ptr,
            ..Paging::default()
        };
        let mut base_t: Vec<TensorArg> = Vec::new();
        let mut maxp_page = (0, 1);
        if let Some(s) = l.summaries {
            let pt = &t[self
                .table_index()
                .expect("paged summaries have a page table")];
            expect_dtype(pt, ElemType::I32)?;
            expect_shape(pt, &[Some(b), None], "int32 [B, MAXP]")?;
            expect_contiguous_rows(pt)?;
            for j in [s, s + 1] {
                let at = map.iter().position(|m| *m == Some(j)).expect("mapped");
                expect_dtype(&t[at], et)?;
                expect_shape(
                    &t[at],
                    &[None, None, Some(hkv), Some(d)],
                    "[P, PAGE, Hkv, D]",
                )?;
            }
            let pages_at = map.iter().position(|m| *m == Some(s)).expect("mapped");
            let page = t[pages_at].shape[1];
            if page == 0 {
                return Err(LaunchError::Size(
                    "the page pool has pages of 0 rows".into(),
                ));
            }
            maxp_page = (pt.shape[1], page);
            paging.table = pt.ptr;
            paging.table_stride = pt.stride(0);
            paging.page = page as i32;
        }
        for (i, m) in map.iter().enumerate() {
            match m {
                Some(j) if *j == l.ring || *j == l.ring + 1 => {
                    base_t.push(as_base(&t[i], [b, win, hkv, d]));
                }
                Some(j) if Some(*j) == l.summaries || Some(*j) == l.summaries.map(|s| s + 1) => {
                    let rows = maxp_page.0 * maxp_page.1;
                    base_t.push(as_base(&t[i], [b, rows, hkv, d]));
                }
                Some(_) => base_t.push(t[i].clone()),
                None => {}
            }
        }
        for o in &t[n_in..] {
            if self.base == Op::Append {
                // the outputs are the pools again
                expect_shape(o, &pool, "[S, W, Hkv, D] like the inputs")?;
                base_t.push(as_base(o, [b, win, hkv, d]));
            } else {
                base_t.push(o.clone());
            }
        }
        let bspec = base_spec(spec, self.base);
        match self.base {
            Op::Decode => {
                let a = super::decode::DecodeArgs {
                    q: base_t[0].clone(),
                    k_ring: base_t[1].clone(),
                    v_ring: base_t[2].clone(),
                    ks: base_t[3].clone(),
                    vs: base_t[4].clone(),
                    len: base_t[5].clone(),
                    o: base_t[6].clone(),
                    lse: base_t[7].clone(),
                    scale: args.scale,
                };
                let Some((mut main, combine)) =
                    super::decode::plan_decode(&bspec, tile, &a, args.splits, args.workspace)?
                else {
                    return Ok(Vec::new());
                };
                if tile.engine() != Engine::Triton {
                    main.params = main.params.paged(&paging);
                    // the paged op's shared memory (today the decode's: run 75's kernel held
                    // its page table row after it, and faulted while this took the decode's)
                    main.smem = tile.smem_bytes(spec);
                    return Ok(super::decode::cuda_decode_steps(
                        &main,
                        combine.as_ref(),
                        device,
                    ));
                }
                let p = &main.params;
                let g = spec.group_or_one();
                let head_tiles = g.div_ceil(super::decode::triton_block_h(g)) as usize;
                let grid = (
                    main.grid.0,
                    super::launch::grid_dim(
                        "Hkv x head tiles",
                        p.hkv as usize * head_tiles,
                        65535,
                    )?,
                    main.grid.2,
                );
                let mut steps = vec![Step::triton(
                    0,
                    grid,
                    tile.warps(),
                    super::decode::triton_args(p, &paging),
                )];
                if let Some(c) = combine {
                    steps.push(Step::triton(
                        1,
                        c.grid,
                        tile.warps(),
                        super::decode::triton_combine_args(&c.params),
                    ));
                }
                Ok(steps)
            }
            Op::Extend => super::extend::plan_extend(
                &bspec,
                tile,
                &base_t,
                args.scale,
                &paging,
                args.workspace,
                device,
            ),
            _ => super::append::plan_append(&bspec, tile, &base_t, paging.slot),
        }
    }
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;
    use crate::spec::LocalMode;

    fn spec(op: Op) -> KernelSpec {
        KernelSpec::new(
            op,
            &SpecParams {
                head_dim: Some(32),
                window: Some(16),
                chunk: Some(4),
                local: Some(LocalMode::Sliding),
                group: Some(2),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// The paged references read only the sequences' slots and pages: junk elsewhere in the
    /// pools changes nothing, and moving a sequence's ring to a free slot (or a page to a free
    /// page) with its index changes nothing either.
    #[test]
    fn paged_references_follow_the_tables_only() {
        for op in [Op::DecodePaged, Op::ExtendPaged, Op::AppendPaged] {
            let def = super::super::of(op);
            let cp = def.check_problem(&Workload::new(spec(op), 1, 40, 4, 2));
            let p = cp.problem;
            let (mut rng, _) = crate::hostdata::fresh_rng();
            let dt = p.spec().dtype();
            let mut draw =
                |shape: &[usize], amp: f64| HostTensor::uniform(&mut rng, dt, shape, amp);
            let inputs = def.random_inputs(&p, &mut draw, false);
            let want = def.reference(&p, &inputs).outputs;
            let paged = match op {
                Op::DecodePaged => &DECODE_PAGED,
                Op::ExtendPaged => &EXTEND_PAGED,
                _ => &APPEND_PAGED,
            };
            let (ring_at, slot_at) = (paged.layout().ring, paged.slot_index());
            let slot = inputs[slot_at].to_i32();
            let slots = inputs[ring_at].shape[0];
            let free = (0..slots as i32).find(|s| !slot.contains(s)).unwrap();
            // relocate sequence 0's rings to the free slot, junk its old slot
            let mut moved = inputs.clone();
            for at in [ring_at, ring_at + 1] {
                let row = moved[at].data.len() / slots;
                let old = slot[0] as usize;
                let copy = moved[at].data[old * row..(old + 1) * row].to_vec();
                moved[at].data[free as usize * row..(free as usize + 1) * row]
                    .copy_from_slice(&copy);
                moved[at].data[old * row..(old + 1) * row].fill(0x3c);
            }
            let mut new_slot = slot.clone();
            new_slot[0] = free;
            moved[slot_at] = HostTensor::from_i32(&[slot.len()], &new_slot);
            let got = def.reference(&p, &moved).outputs;
            if op == Op::AppendPaged {
                // the pools differ where the rings moved; the rings themselves agree
                let row = got[0].len() / slots;
                for (g, w) in got.iter().zip(&want) {
                    let (a, b) = (free as usize, slot[0] as usize);
                    assert_eq!(
                        &g[a * row..(a + 1) * row],
                        &w[b * row..(b + 1) * row],
                        "{op}"
                    );
                }
            } else {
                for (g, w) in got.iter().zip(&want) {
                    let same = g
                        .iter()
                        .zip(w)
                        .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                    assert!(same, "{op}: the result moved with the ring");
                }
            }
        }
    }
}
