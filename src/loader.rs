//! The runtime loader: a [`Runtime`] bound to one device finds the artifact of a (spec, tile) in
//! the cache (cubin for the device's arch first, then PTX the driver accepts), loads each module
//! once, and hands out [`Kernel`]s whose typed launchers check their tensors and launch on the
//! caller's stream. With the `compiler` feature a miss is compiled (NVRTC) and stored; the
//! loader-only build reports the miss instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::cache::compat::{Usable, usable_on};
use crate::cache::winner::{Bucket, WinnerRecord};
use crate::cache::{CacheStore, Entry, layout};
use crate::error::{Error, Result};
use crate::gpu::driver::{Function, Gpu, LaunchStream, StreamCounters, encode_tensor_map};
use crate::gpu::params::{
    self, ChunkMeanArgs, ChunkSummarizeArgs, DecodeArgs, DeviceFacts, LaunchError, OpArgs,
    PrefillArgs,
};
use crate::key::Key;
use crate::ops::{self, Problem};
use crate::spec::{KernelSpec, Op};
use crate::target::Arch;
use crate::tile::Tile;

/// Where a loaded kernel came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A cached cubin.
    Cubin {
        /// Cache key.
        key: Key,
        /// Its arch.
        arch: Arch,
    },
    /// Cached PTX, JIT-compiled by the driver.
    Ptx {
        /// Cache key.
        key: Key,
        /// Its arch.
        arch: Arch,
    },
    /// Compiled by this process (and stored).
    Compiled {
        /// Cache key.
        key: Key,
    },
}

/// A cache entry the loader looked at and did not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// The entry's folder.
    pub entry: PathBuf,
    /// Why it was not used (damaged, another arch or flasheva version, refused by the driver).
    pub reason: String,
}

/// A kernel the loader found no usable artifact of (and was not allowed to compile).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Miss {
    /// What was asked for.
    pub spec: KernelSpec,
    /// With this tile.
    pub tile: Tile,
    /// The arch a build for this device would target.
    pub arch: Arch,
    /// The cache looked in.
    pub cache: PathBuf,
    /// Every entry of the spec and tile that was there, and why it was not used.
    pub refused: Vec<Refused>,
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no cached kernel {} (tile {}) usable on {} in {}",
            self.spec,
            self.tile.name(self.spec.op()),
            self.arch,
            self.cache.display()
        )?;
        for r in &self.refused {
            write!(f, "; refused {}: {}", r.entry.display(), r.reason)?;
        }
        write!(
            f,
            "; compile it there with `flasheva compile {} ... --arch {}` or import a bundle that has it",
            self.spec.op(),
            self.arch
        )
    }
}

/// A loaded kernel: its spec, tile, provenance and entry points.
#[derive(Debug)]
pub struct Kernel {
    /// The spec.
    pub spec: KernelSpec,
    /// The tile it was compiled with.
    pub tile: Tile,
    /// Where it came from.
    pub origin: Origin,
    functions: Vec<Function>,
    /// Dynamic shared memory per entry point when the artifact recorded it (else the main
    /// kernel's, from the tile).
    smem: Vec<u32>,
    sm_count: u32,
    ctx: std::sync::Arc<crate::gpu::CudaContext>,
    counters: StreamCounters,
}

/// How the runtime behaves. The default is the same in every build: use tuned winners, never
/// compile (a miss is an error naming what to compile).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Compile missing kernels with NVRTC and store them (needs the `compiler` feature; without
    /// it a miss stays an error). Off by default: compiling is an explicit opt-in.
    pub compile_on_miss: bool,
    /// Use tuned winners (`flasheva tune`) where the cache has them; otherwise, and when false,
    /// the default tile.
    pub use_tuned: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            compile_on_miss: false,
            use_tuned: true,
        }
    }
}

impl RuntimeOptions {
    /// The defaults, with `FLASHEVA_NO_TUNE` applied (see [`crate::config`]).
    pub fn from_env() -> std::result::Result<RuntimeOptions, crate::config::ConfigError> {
        Ok(RuntimeOptions {
            use_tuned: !crate::config::no_tune()?,
            ..RuntimeOptions::default()
        })
    }

    /// These options with compiling on a miss turned on or off.
    pub fn compile_on_miss(mut self, on: bool) -> RuntimeOptions {
        self.compile_on_miss = on;
        self
    }

    /// These options with tuned winners used or ignored.
    pub fn use_tuned(mut self, on: bool) -> RuntimeOptions {
        self.use_tuned = on;
        self
    }
}

/// A device plus a cache: loads kernels and keeps them loaded.
pub struct Runtime {
    gpu: Gpu,
    store: CacheStore,
    options: RuntimeOptions,
    kernels: Mutex<HashMap<(KernelSpec, Tile), Arc<Kernel>>>,
    winners: Mutex<HashMap<(KernelSpec, Bucket), Option<WinnerRecord>>>,
}

/// Every arch flasheva targets, newest first (the order PTX candidates are tried in).
fn known_archs() -> Vec<Arch> {
    let mut v: Vec<Arch> = crate::target::SUPPORTED
        .split(", ")
        .filter_map(|s| s.parse().ok())
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

impl Runtime {
    /// A runtime on device `ordinal` over `store`.
    pub fn new(ordinal: usize, store: CacheStore) -> Result<Runtime> {
        let options = RuntimeOptions::from_env()?;
        Ok(Runtime::with_gpu(Gpu::open(ordinal)?, store, options))
    }

    /// A runtime on an opened device, with options.
    ///
    /// ```no_run
    /// use flasheva::cache::CacheStore;
    /// use flasheva::gpu::Gpu;
    /// use flasheva::loader::{Runtime, RuntimeOptions};
    ///
    /// let store = CacheStore::open_existing("/var/lib/engine/flasheva-cache")?;
    /// // a server: never compile, a miss is an error (the default)
    /// let rt = Runtime::with_gpu(Gpu::open(0)?, store, RuntimeOptions::default());
    /// // a development box: compile misses with NVRTC, ignore tuning
    /// let dev = Runtime::with_gpu(
    ///     Gpu::open(0)?,
    ///     CacheStore::open_default()?,
    ///     RuntimeOptions::default().compile_on_miss(true).use_tuned(false),
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_gpu(gpu: Gpu, store: CacheStore, options: RuntimeOptions) -> Runtime {
        Runtime {
            gpu,
            store,
            options,
            kernels: Mutex::new(HashMap::new()),
            winners: Mutex::new(HashMap::new()),
        }
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The cache.
    pub fn store(&self) -> &CacheStore {
        &self.store
    }

    /// The arch this device's kernels are built for (`sm_90a` on compute capability 9.0, else the
    /// plain arch): default tiles are chosen for it and a miss is compiled for it.
    pub fn arch(&self) -> Arch {
        let (a, b) = self.gpu.info().capability;
        Arch::preferred_for(a, b)
    }

    /// The tile used for `spec` when the caller names none: the default of the device's arch.
    pub fn default_tile(&self, spec: &KernelSpec) -> Tile {
        Tile::default_for(spec, self.arch())
    }

    /// The tile for a workload: the tuned winner of this device for the spec and the workload's
    /// shape bucket (or the nearest tuned bucket within
    /// [`crate::cache::winners::MAX_FALLBACK_DISTANCE`]), else the default tile of the device's arch.
    pub fn tile_for_workload(&self, w: &crate::workload::Workload) -> Tile {
        self.tuned(w)
            .map(|r| r.tile)
            .unwrap_or_else(|| self.default_tile(&w.spec))
    }

    /// The winner record `tile_for_workload` would use, if any.
    pub fn tuned(&self, w: &crate::workload::Workload) -> Option<WinnerRecord> {
        if !self.options.use_tuned {
            return None;
        }
        let bucket = Bucket::of_workload(w);
        let k = (w.spec, bucket);
        if let Some(hit) = self.winners.lock().expect("winner map lock").get(&k) {
            return hit.clone();
        }
        let info = self.gpu.info();
        let found = self
            .store
            .find_winner(&info.name, info.capability, &w.spec, &bucket)
            .filter(|r| r.tile.check(&w.spec).is_ok());
        self.winners
            .lock()
            .expect("winner map lock")
            .insert(k, found.clone());
        found
    }

    /// The kernel for a workload (see [`Runtime::tile_for_workload`]). A miss is
    /// [`Error::NotCached`], naming what was looked for and why each
    /// entry that was there was refused.
    ///
    /// ```no_run
    /// # use flasheva::{loader::Runtime, workload::Workload, KernelSpec};
    /// # fn serve(rt: &Runtime, spec: KernelSpec) -> flasheva::Result<()> {
    /// let w = Workload::new(spec, 1, 8192, 32, 8);
    /// match rt.kernel_for(&w) {
    ///     Ok(kernel) => println!("{} from {:?}", kernel.tile.name(spec.op()), kernel.origin),
    ///     Err(flasheva::Error::NotCached(miss)) => eprintln!("not cached: {miss}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn kernel_for(&self, w: &crate::workload::Workload) -> Result<Arc<Kernel>> {
        self.kernel_with_tile(&w.spec, &self.tile_for_workload(w))
    }

    /// The kernel for `spec` with the default tile.
    pub fn kernel(&self, spec: &KernelSpec) -> Result<Arc<Kernel>> {
        self.kernel_with_tile(spec, &self.default_tile(spec))
    }

    /// The kernel for `spec` with `tile`, loading (or compiling) it on first use.
    pub fn kernel_with_tile(&self, spec: &KernelSpec, tile: &Tile) -> Result<Arc<Kernel>> {
        let k = (*spec, *tile);
        if let Some(hit) = self.kernels.lock().expect("kernel map lock").get(&k) {
            return Ok(hit.clone());
        }
        let loaded = Arc::new(self.load(spec, tile)?);
        Ok(self
            .kernels
            .lock()
            .expect("kernel map lock")
            .entry(k)
            .or_insert(loaded)
            .clone())
    }

    fn load(&self, spec: &KernelSpec, tile: &Tile) -> Result<Kernel> {
        tile.check(spec)?;
        let span = tracing::info_span!("load", kernel = %spec, tile = %tile.name(spec.op()));
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let cc = self.gpu.info().capability;
        let mut refused: Vec<Refused> = Vec::new();
        let mut cubins: Vec<Entry> = Vec::new();
        let mut ptxs: Vec<Entry> = Vec::new();
        for arch in known_archs()
            .into_iter()
            .filter(|a| a.cubin_runs_on(cc.0, cc.1) || a.ptx_runs_on(cc.0, cc.1))
        {
            let (good, bad) = self.store.candidates(spec, tile, arch);
            for (dir, reason) in bad {
                tracing::warn!(entry = %dir.display(), %reason, "skipped a damaged cache entry");
                refused.push(Refused {
                    entry: dir,
                    reason: format!("damaged: {reason}"),
                });
            }
            for e in good {
                match usable_on(
                    &e.meta,
                    cc,
                    self.gpu.driver_version(),
                    crate::ARTIFACT_VERSION,
                ) {
                    Ok(Usable::Cubin) => cubins.push(e),
                    Ok(Usable::Ptx) => ptxs.push(e),
                    Err(reason) => {
                        tracing::debug!(entry = %e.dir.display(), %reason, "cache entry not usable here");
                        refused.push(Refused {
                            entry: e.dir.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        // Arch-specific cubins first (sm_90a before sm_90), then PTX of the newest arch.
        for (entry, is_ptx) in cubins
            .iter()
            .map(|e| (e, false))
            .chain(ptxs.iter().map(|e| (e, true)))
        {
            let file = if is_ptx {
                layout::PTX_FILE
            } else {
                layout::CUBIN_FILE
            };
            let image = match self.store.read_verified(entry, file) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(entry = %entry.dir.display(), error = %e, "skipped a damaged artifact");
                    refused.push(Refused {
                        entry: entry.dir.clone(),
                        reason: format!("damaged: {e}"),
                    });
                    continue;
                }
            };
            let origin = if is_ptx {
                Origin::Ptx {
                    key: entry.meta.key,
                    arch: entry.meta.arch,
                }
            } else {
                Origin::Cubin {
                    key: entry.meta.key,
                    arch: entry.meta.arch,
                }
            };
            match self.instantiate(
                spec,
                tile,
                &image,
                is_ptx,
                &entry.meta.entry_shared_mem,
                origin.clone(),
            ) {
                Ok(k) => {
                    self.store.touch(entry);
                    tracing::info!(
                        from = if is_ptx { "ptx (driver JIT)" } else { "cubin" },
                        key = %entry.meta.key.short(),
                        arch = %entry.meta.arch,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "loaded"
                    );
                    return Ok(k);
                }
                Err(e) => {
                    tracing::warn!(entry = %entry.dir.display(), error = %e, "the driver refused a cached artifact");
                    refused.push(Refused {
                        entry: entry.dir.clone(),
                        reason: format!("the driver refused it: {e}"),
                    });
                }
            }
        }
        self.compile_missing(spec, tile, refused)
    }

    #[cfg(feature = "compiler")]
    fn compile_missing(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        refused: Vec<Refused>,
    ) -> Result<Kernel> {
        if !self.options.compile_on_miss {
            return Err(self.not_cached(spec, tile, refused));
        }
        tracing::info!(arch = %self.arch(), candidates_refused = refused.len(), "not cached: compiling");
        let built = match tile.engine().backend() {
            crate::tile::Backend::Triton => {
                let triton = crate::compile::triton::Triton::load()?;
                crate::pipeline::Pipeline::new(&self.store, &triton).ensure(
                    spec,
                    tile,
                    self.arch(),
                )?
            }
            _ => {
                let nvrtc = crate::compile::nvrtc::Nvrtc::load()?;
                crate::pipeline::Pipeline::new(&self.store, &nvrtc).ensure(
                    spec,
                    tile,
                    self.arch(),
                )?
            }
        };
        for w in &built.warnings {
            tracing::warn!(warning = %w, "while compiling");
        }
        let image = self.store.read_verified(&built.entry, layout::CUBIN_FILE)?;
        let k = self.instantiate(
            spec,
            tile,
            &image,
            false,
            &built.entry.meta.entry_shared_mem,
            Origin::Compiled {
                key: built.entry.meta.key,
            },
        )?;
        tracing::info!(from = "compiled", key = %built.entry.meta.key.short(), "loaded");
        Ok(k)
    }

    #[cfg(not(feature = "compiler"))]
    fn compile_missing(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        refused: Vec<Refused>,
    ) -> Result<Kernel> {
        let _ = &self.options;
        Err(self.not_cached(spec, tile, refused))
    }

    fn not_cached(&self, spec: &KernelSpec, tile: &Tile, refused: Vec<Refused>) -> Error {
        let miss = Miss {
            spec: *spec,
            tile: *tile,
            arch: self.arch(),
            cache: self.store.root().to_path_buf(),
            refused,
        };
        tracing::warn!(%miss, "not cached");
        Error::NotCached(Box::new(miss))
    }

    fn instantiate(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        image: &[u8],
        is_ptx: bool,
        entry_shared_mem: &[u32],
        origin: Origin,
    ) -> Result<Kernel> {
        let module = self.gpu.load_module(image, is_ptx)?;
        let mut functions = Vec::new();
        for name in spec.entry_points(tile) {
            functions.push(module.function(&name)?);
        }
        // The tile decides the main kernel's shared memory (CUDA templates), or the compiler
        // decided every entry's and recorded it (Triton).
        let smem: Vec<u32> = if entry_shared_mem.is_empty() {
            let bytes = tile.smem_bytes(spec);
            // A template that states its own shared memory (the Hopper prefill) must agree with
            // the host's formula: launching with less would let the kernel write past its block's.
            let main = spec
                .entry_points(tile)
                .into_iter()
                .next()
                .unwrap_or_default();
            let states_own = matches!(
                tile.engine(),
                crate::tile::Engine::Wgmma | crate::tile::Engine::Tma
            );
            if states_own
                && let Some(own) = module.global_i32(&format!("{main}_smem_bytes"))?
                && own as i64 != bytes as i64
            {
                return Err(Error::Artifact(format!(
                    "kernel {main} (tile {}) needs {own} bytes of shared memory but the host computes {bytes}: the cached artifact and this flasheva disagree (recompile it)",
                    tile.name(spec.op())
                )));
            }
            vec![bytes]
        } else {
            entry_shared_mem.to_vec()
        };
        // Every kernel of a CUDA module may use up to the tile's shared memory (the backward's
        // dK/dV and dQ kernels both need more than 48 KiB, its first kernel none); Triton's
        // record each entry's own.
        let per_entry = |i: usize| {
            if entry_shared_mem.is_empty() {
                smem[0]
            } else {
                smem[i]
            }
        };
        for (i, f) in functions.iter().enumerate() {
            let bytes = per_entry(i);
            if bytes > 48 * 1024 {
                f.set_max_dynamic_smem(bytes)?;
            }
        }
        Ok(Kernel {
            spec: *spec,
            tile: *tile,
            origin,
            functions,
            smem,
            sm_count: self.gpu.info().sm_count,
            ctx: self.gpu.context().clone(),
            counters: StreamCounters::default(),
        })
    }

    /// The options.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// The cache folder of this runtime.
    pub fn cache_root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }
}

impl Kernel {
    /// Launches this kernel on `stream` with the op table's generic arguments (its tensors in
    /// the op's order, inputs then outputs; see [`crate::ops::OpDef`]): the op checks them and
    /// plans the launches, the loader fills in what only the device knows (TMA tensor maps, the
    /// stream's tile counter) and launches. Nothing is launched when there is nothing to compute.
    pub fn launch(&self, stream: &dyn LaunchStream, args: &OpArgs) -> Result<()> {
        let def = ops::of(self.spec.op());
        let mut device = DeviceFacts::new(self.sm_count);
        let mut steps = def.plan(&self.spec, &self.tile, args, device)?;
        // Nothing may be allocated while the stream is captured into a graph: a plan that needs
        // more counters than the stream has (its first launch here) is made again with only
        // those, if the stream is capturing. (Asked only then: not a driver call per launch.)
        let need = steps
            .iter()
            .filter_map(|s| s.counters)
            .map(|c| c.ints)
            .max();
        if let Some(need) = need {
            let ready = self.counters.ready(stream);
            if need > ready && crate::gpu::driver::is_capturing(stream)? {
                device.counter_limit = Some(ready);
                steps = def.plan(&self.spec, &self.tile, args, device)?;
            }
        }
        // A launch of zero blocks has nothing to do, and the driver refuses it: skipped (the
        // plans avoid them; this keeps one that does not from failing the whole call).
        for mut step in steps
            .into_iter()
            .filter(|s| s.grid.0 > 0 && s.grid.1 > 0 && s.grid.2 > 0)
        {
            for (offset, map) in &step.tensor_maps {
                let encoded = encode_tensor_map(map)?;
                step.params.write(*offset, bytemuck::bytes_of(&encoded));
            }
            if let Some(c) = step.counters {
                let addr = self.counters.for_stream(&self.ctx, stream, c.ints)?;
                step.params.write(c.offset, &addr.to_ne_bytes());
            }
            let f = self.functions.get(step.function).ok_or_else(|| {
                LaunchError::Size(format!(
                    "{} has no entry point {} (a bug in its op description)",
                    self.spec, step.function
                ))
            })?;
            let smem = if step.smem_from_artifact {
                self.smem.get(step.function).copied().unwrap_or(0)
            } else {
                step.smem
            };
            // SAFETY: the op's plan checked the tensors' shapes, strides, dtypes and alignment
            // against the kernel's spec and laid out the kernel's parameters; the caller owns the
            // memory.
            match &step.args {
                None => unsafe { f.launch(stream, step.grid, step.block, smem, &step.params) }?,
                Some(offsets) => unsafe {
                    f.launch_args(stream, step.grid, step.block, smem, &step.params, offsets)
                }?,
            }
        }
        Ok(())
    }

    /// The splits a launch of this kernel on `p` uses on this device (1 but for split decode).
    pub fn splits_for(&self, p: &Problem) -> usize {
        ops::of(self.spec.op()).splits(p, &self.tile, self.sm_count)
    }

    /// The fp32 workspace elements a launch of this kernel on `p` needs (0: none): the split
    /// decode's partial results, the Hopper extend's gathered keys and values. Size it for the
    /// capacities (batch, Tmax, summary slots) to reuse one workspace, or a captured graph's.
    pub fn workspace_elems(&self, p: &Problem) -> usize {
        ops::of(self.spec.op()).workspace(p, &self.tile, self.splits_for(p))
    }

    fn expect_op(&self, op: Op) -> Result<()> {
        if self.spec.op() != op {
            return Err(LaunchError::Op {
                got: self.spec.op(),
                expected: op,
            }
            .into());
        }
        Ok(())
    }

    /// Prefill: `q, k, v, ks, vs -> o, lse` on `stream`. Nothing is launched for B = 0 or N = 0.
    pub fn prefill(&self, stream: &dyn LaunchStream, args: &PrefillArgs) -> Result<()> {
        self.expect_op(Op::Prefill)?;
        self.launch(stream, &args.to_op_args())
    }

    /// The split count a decode of `b` sequences over `hkv` kv heads uses, the longest visible
    /// set being `max_items` raw keys plus summaries.
    pub fn decode_splits(&self, b: usize, hkv: usize, max_items: usize) -> usize {
        params::decode_splits(&self.spec, &self.tile, b, hkv, max_items, self.sm_count)
    }

    /// Decode: `q, k_ring, v_ring, ks, vs, len -> o, lse` on `stream` with `splits` splits (see
    /// [`Kernel::decode_splits`]); splits > 1 need `workspace` = (device address, fp32
    /// elements) of at least [`params::decode_workspace_elems`].
    ///
    /// ```no_run
    /// # use flasheva::{gpu::{device_address, CudaStream, params::{self, DecodeArgs}}, loader::Kernel};
    /// # use std::sync::Arc;
    /// # fn step(kernel: &Kernel, stream: &Arc<CudaStream>, args: &DecodeArgs, b: usize, h: usize,
    /// #         hkv: usize, longest: usize) -> Result<(), Box<dyn std::error::Error>> {
    /// let splits = kernel.decode_splits(b, hkv, longest);
    /// let d = kernel.spec.head_dim() as usize;
    /// let elems = params::decode_workspace_elems(b, h, d, splits);
    /// let ws = stream.alloc_zeros::<f32>(elems.max(1))?; // reuse it across steps
    /// kernel.decode(stream, args, splits, Some((device_address(&ws, stream), elems)))?;
    /// # Ok(()) }
    /// ```
    pub fn decode(
        &self,
        stream: &dyn LaunchStream,
        args: &DecodeArgs,
        splits: usize,
        workspace: Option<(u64, usize)>,
    ) -> Result<()> {
        self.expect_op(Op::Decode)?;
        self.launch(stream, &args.to_op_args(splits, workspace))
    }

    /// chunk_mean: `x -> xbar` on `stream`.
    pub fn chunk_mean(&self, stream: &dyn LaunchStream, args: &ChunkMeanArgs) -> Result<()> {
        self.expect_op(Op::ChunkMean)?;
        self.launch(stream, &args.to_op_args())
    }

    /// chunk_summarize: `k, v, omega -> vs` on `stream`.
    pub fn chunk_summarize(
        &self,
        stream: &dyn LaunchStream,
        args: &ChunkSummarizeArgs,
    ) -> Result<()> {
        self.expect_op(Op::ChunkSummarize)?;
        self.launch(stream, &args.to_op_args())
    }

    /// Registers per thread of the main kernel, as the driver reports.
    pub fn registers(&self) -> Result<i32> {
        Ok(self.functions[0].registers()?)
    }
}
