//! Compile-through-cache: spec + tile + arch -> rendered source -> key -> cache hit, or lock,
//! look again, compile and store. The one place that joins rendering, a `Compiler` and the store.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cache::{CacheStore, Entry, EntryMeta, Lookup, layout};
use crate::compile::{CompileJob, Compiler, CompilerSet, parse_resource_usage, ptx_isa_version};
use crate::error::Result;
use crate::key::{ArtifactId, Key};
use crate::render::render;
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

pub use crate::ARTIFACT_VERSION;

/// Whether an artifact came from the cache or was compiled now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Found in the cache.
    Cached,
    /// Compiled by this call.
    Compiled,
}

/// A cache entry for a (spec, tile, arch), and how it was obtained.
#[derive(Clone, Debug)]
pub struct Built {
    /// The verified entry.
    pub entry: Entry,
    /// Cached or compiled.
    pub status: Status,
    /// Damaged entries met on the way (each was a miss).
    pub warnings: Vec<String>,
}

/// What [`Pipeline::plan`] computes without touching the cache: the source and its key.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Rendered source.
    pub source: String,
    /// Compiler options.
    pub options: Vec<String>,
    /// The cache key.
    pub key: Key,
}

/// The warning for a damaged entry met on the way (made safe for a terminal).
fn damaged(dir: &std::path::Path, damage: &crate::cache::Damage) -> String {
    crate::cache::text::printable(&format!("{}: {damage}", dir.display())).into_owned()
}

/// Joins a cache and the compilers (one per backend: a tile's engine picks it).
pub struct Pipeline<'a> {
    store: &'a CacheStore,
    compilers: &'a dyn CompilerSet,
}

impl<'a> Pipeline<'a> {
    /// A pipeline over `store` compiling with `compilers` (a single [`Compiler`] is a set).
    pub fn new(store: &'a CacheStore, compilers: &'a dyn CompilerSet) -> Pipeline<'a> {
        Pipeline { store, compilers }
    }

    fn compiler(&self, tile: &Tile) -> Result<&'a dyn Compiler> {
        Ok(self.compilers.for_backend(tile.engine().backend())?)
    }

    /// Validates, renders and computes the key (pure apart from the compiler's identity).
    pub fn plan(&self, spec: &KernelSpec, tile: &Tile, arch: Arch) -> Result<Planned> {
        tile.validate_for(spec, arch)?;
        let compiler = self.compiler(tile)?;
        let source = render(spec, tile)?;
        let options = compiler.options(arch);
        let key = ArtifactId {
            crate_version: ARTIFACT_VERSION,
            spec,
            tile,
            source: &source,
            compiler: compiler.id(),
            arch,
            options: &options,
        }
        .key();
        Ok(Planned {
            source,
            options,
            key,
        })
    }

    /// Returns the cached entry, or compiles and stores it. Concurrent callers (threads or
    /// processes) of the same key compile it once: lock, look again, compile.
    pub fn ensure(&self, spec: &KernelSpec, tile: &Tile, arch: Arch) -> Result<Built> {
        let plan = self.plan(spec, tile, arch)?;
        let span =
            tracing::debug_span!("ensure", kernel = %spec, tile = %tile.name(spec.op()), %arch);
        let _enter = span.enter();
        let mut warnings = Vec::new();
        match self.store.lookup(spec, tile, arch, &plan.key) {
            Lookup::Hit(entry) => {
                tracing::debug!(key = %plan.key.short(), "cache hit");
                self.store.touch(&entry);
                return Ok(Built {
                    entry: *entry,
                    status: Status::Cached,
                    warnings,
                });
            }
            Lookup::Damaged { dir, damage } => {
                tracing::warn!(entry = %dir.display(), %damage, "damaged cache entry: compiling it again");
                warnings.push(damaged(&dir, &damage))
            }
            Lookup::Miss => {}
        }
        let _lock = self.store.lock(&plan.key)?;
        match self.store.lookup(spec, tile, arch, &plan.key) {
            Lookup::Hit(entry) => {
                return Ok(Built {
                    entry: *entry,
                    status: Status::Cached,
                    warnings,
                });
            }
            Lookup::Damaged { dir, damage } => {
                let w = damaged(&dir, &damage);
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            Lookup::Miss => {}
        }
        let program = spec.source_file_name();
        let compiler = self.compiler(tile)?;
        let art = compiler.compile(&CompileJob {
            program_name: &program,
            source: &plan.source,
            arch,
            options: &plan.options,
        })?;
        let meta = EntryMeta {
            format: crate::cache::meta::META_FORMAT,
            key: plan.key,
            crate_version: ARTIFACT_VERSION.to_string(),
            name: spec.name(),
            spec: *spec,
            tile: *tile,
            arch,
            compiler: compiler.id().clone(),
            options: plan.options.clone(),
            entry_points: spec.entry_points(tile),
            threads: tile.threads(),
            shared_mem_bytes: art
                .entry_shared_mem
                .first()
                .copied()
                .unwrap_or_else(|| tile.smem_bytes(spec)),
            entry_shared_mem: art.entry_shared_mem.clone(),
            ptx_isa: ptx_isa_version(&art.ptx),
            resources: parse_resource_usage(&art.log),
            compile_ms: art.elapsed.as_secs_f64() * 1e3,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            files: Default::default(),
            seal: String::new(),
        };
        tracing::info!(
            key = %plan.key.short(),
            ms = art.elapsed.as_secs_f64() * 1e3,
            compiler = %compiler.id(),
            "compiled"
        );
        let entry = self.store.insert(
            meta,
            &[
                (layout::PTX_FILE, &art.ptx),
                (layout::CUBIN_FILE, &art.cubin),
                (layout::SOURCE_FILE, plan.source.as_bytes()),
                (layout::LOG_FILE, art.log.as_bytes()),
            ],
        )?;
        Ok(Built {
            entry,
            status: Status::Compiled,
            warnings,
        })
    }
}
