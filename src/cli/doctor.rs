//! `flasheva doctor`: what this machine offers flasheva (NVRTC, driver, GPUs), the cache, and the
//! configuration in effect; as text or as JSON (`--format json`), and with `--check` an exit code
//! a script can test (1 when something is wrong).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use flasheva::cache::{CacheError, CacheStore};
use flasheva::compile::nvrtc::Nvrtc;
use flasheva::gpu::driver;
use serde::Serialize;

use super::{Format, table};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Exit with code 1 when something is wrong: no NVRTC, no driver or GPU, damaged cache
    /// entries, a folder that is not a cache, an environment variable with a refused value.
    #[arg(long)]
    pub check: bool,
}

/// The doctor's findings (the JSON form, schema `flasheva/doctor/1`).
#[derive(Serialize)]
struct Report {
    schema: &'static str,
    version: &'static str,
    /// The cache entries this build uses (crate version and source fingerprint).
    artifact_version: &'static str,
    #[serde(serialize_with = "found_or_error")]
    nvrtc: Result<NvrtcReport, String>,
    /// The optional Triton backend (its absence is not a problem).
    #[serde(serialize_with = "found_or_error")]
    triton: Result<TritonReport, String>,
    #[serde(serialize_with = "found_or_error")]
    driver: Result<DriverReport, String>,
    cache: CacheReport,
    config: Vec<ConfigItem>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct NvrtcReport {
    version: String,
    /// The folder it was loaded from; `None` when the dynamic loader found it by name.
    dir: Option<String>,
    archs: Vec<String>,
}

#[derive(Serialize)]
struct TritonReport {
    version: String,
    python: String,
    /// Whether it is the version flasheva pins (others may compile differently).
    pinned: bool,
    archs: &'static str,
}

#[derive(Serialize)]
struct DriverReport {
    cuda: String,
    max_ptx_isa: String,
    gpus: Vec<GpuReport>,
}

#[derive(Serialize)]
struct GpuReport {
    ordinal: usize,
    name: String,
    arch: String,
    sms: u32,
    memory_bytes: u64,
    smem_per_block_bytes: u32,
    l2_bytes: u32,
}

#[derive(Serialize)]
struct CacheReport {
    path: String,
    /// `ok`, `missing` (not created yet) or `not_a_cache`.
    state: &'static str,
    detail: Option<String>,
    entries: usize,
    damaged: usize,
    winners: usize,
    bytes: u64,
    /// How many entries run here, by reason ("yes: cubin on gpu 0", "no: ...").
    usable: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct ConfigItem {
    name: &'static str,
    value: Option<String>,
    meaning: &'static str,
    problem: Option<String>,
}

/// `{"found": true, ...}` or `{"found": false, "error": "..."}`.
fn found_or_error<T: Serialize, S: serde::Serializer>(
    v: &Result<T, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Ok(t) => {
            let mut j = serde_json::to_value(t).map_err(serde::ser::Error::custom)?;
            if let Some(o) = j.as_object_mut() {
                o.insert("found".into(), true.into());
            }
            j.serialize(s)
        }
        Err(e) => serde_json::json!({ "found": false, "error": e }).serialize(s),
    }
}

fn gather(cache_dir: Option<PathBuf>) -> anyhow::Result<Report> {
    let mut problems = Vec::new();
    let nvrtc = Nvrtc::load()
        .map(|n| {
            let i = n.info();
            NvrtcReport {
                version: format!("{}.{}", i.version.0, i.version.1),
                dir: i.dir.as_ref().map(|d| d.display().to_string()),
                archs: i.archs.iter().map(|a| format!("sm_{a}")).collect(),
            }
        })
        .map_err(|e| e.to_string());
    if let Err(e) = &nvrtc {
        problems.push(format!("nvrtc: {e}"));
    }
    let triton = flasheva::compile::triton::Triton::load()
        .map(|t| TritonReport {
            version: flasheva::compile::Compiler::id(&t).version.clone(),
            python: t.python().display().to_string(),
            pinned: t.is_pinned(),
            archs: flasheva::tile::TRITON_ARCHS,
        })
        .map_err(|e| e.to_string());
    let here = driver::probe();
    let driver = match &here {
        Ok(d) => {
            let (a, b) = driver::max_ptx_isa(d.version);
            Ok(DriverReport {
                cuda: d.version_string(),
                max_ptx_isa: format!("{a}.{b}"),
                gpus: d
                    .devices
                    .iter()
                    .map(|g| GpuReport {
                        ordinal: g.ordinal,
                        name: g.name.clone(),
                        arch: format!("sm_{}{}", g.capability.0, g.capability.1),
                        sms: g.sm_count,
                        memory_bytes: g.total_mem as u64,
                        smem_per_block_bytes: g.smem_per_block_optin,
                        l2_bytes: g.l2_bytes,
                    })
                    .collect(),
            })
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &driver {
        problems.push(format!("driver: {e}"));
    }
    let config: Vec<ConfigItem> = flasheva::config::ALL
        .iter()
        .map(|v| {
            let value = flasheva::config::raw(*v).map(|s| s.to_string_lossy().into_owned());
            let problem = match v.name {
                n if n == flasheva::config::NO_TUNE.name => flasheva::config::no_tune().err(),
                n if n == flasheva::config::REQUIRE_GPU.name => {
                    flasheva::config::require_gpu().err()
                }
                n if n == flasheva::config::TRUSTED_KEYS.name => {
                    flasheva::config::trusted_keys().err()
                }
                _ => None,
            }
            .map(|e| e.to_string());
            if let Some(p) = &problem {
                problems.push(p.clone());
            }
            ConfigItem {
                name: v.name,
                value,
                meaning: v.meaning,
                problem,
            }
        })
        .collect();
    let root = match cache_dir {
        Some(d) => d,
        None => flasheva::cache::store::default_root()?,
    };
    let mut cache = CacheReport {
        path: flasheva::cache::text::path(&root),
        state: "ok",
        detail: None,
        entries: 0,
        damaged: 0,
        winners: 0,
        bytes: 0,
        usable: BTreeMap::new(),
    };
    match CacheStore::open_existing(&root) {
        Ok(store) => {
            let scanned = store.scan()?;
            cache.entries = scanned.len();
            cache.damaged = scanned.iter().filter(|s| s.entry.is_err()).count();
            cache.winners = store.all_winners().len();
            cache.bytes = store.size_bytes();
            for s in &scanned {
                if let Ok(e) = &s.entry {
                    *cache
                        .usable
                        .entry(super::cache_cmd::usability(&e.meta, &here))
                        .or_default() += 1;
                }
            }
            if cache.damaged > 0 {
                problems.push(format!(
                    "cache: {} damaged entries (never loaded; `flasheva cache verify` lists them)",
                    cache.damaged
                ));
            }
        }
        Err(CacheError::Missing(_)) => {
            cache.state = "missing";
            cache.detail = Some("flasheva compile or cache import creates it".into());
        }
        Err(e @ CacheError::NotACache { .. }) => {
            cache.state = "not_a_cache";
            let text = flasheva::cache::text::printable(&e.to_string()).into_owned();
            problems.push(format!("cache: {text}"));
            cache.detail = Some(text);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Report {
        schema: "flasheva/doctor/1",
        version: env!("CARGO_PKG_VERSION"),
        artifact_version: flasheva::ARTIFACT_VERSION,
        nvrtc,
        triton,
        driver,
        cache,
        config,
        problems,
    })
}

pub fn run(a: DoctorArgs, cache_dir: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let r = gather(cache_dir)?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
        Format::Text => print_text(&r),
    }
    if a.check && !r.problems.is_empty() {
        anyhow::bail!(
            "doctor --check: {} problem{}: {}",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" },
            r.problems.join("; ")
        );
    }
    Ok(())
}

fn print_text(r: &Report) {
    outln!("flasheva {} (artifacts {})", r.version, r.artifact_version);
    match &r.nvrtc {
        Ok(n) => outln!(
            "nvrtc:  {} ({}); targets {}",
            n.version,
            n.dir.as_deref().unwrap_or("found by the dynamic loader"),
            n.archs.join(" ")
        ),
        Err(e) => outln!("nvrtc:  not available: {e}"),
    }
    match &r.triton {
        Ok(t) => outln!(
            "triton: {}{} ({}); the Triton backend targets {}",
            t.version,
            if t.pinned {
                ""
            } else {
                " (flasheva pins 3.6.0: others may compile differently)"
            },
            t.python,
            t.archs
        ),
        Err(e) => outln!("triton: not available (optional, for --backend triton): {e}"),
    }
    match &r.driver {
        Ok(d) => {
            outln!(
                "driver: CUDA {} (accepts PTX ISA up to {})",
                d.cuda,
                d.max_ptx_isa
            );
            for g in &d.gpus {
                outln!(
                    "gpu {}:  {}, {}, {} SMs, {} memory, {} shared memory per block, {} L2",
                    g.ordinal,
                    g.name,
                    g.arch,
                    g.sms,
                    table::bytes(g.memory_bytes),
                    table::bytes(g.smem_per_block_bytes as u64),
                    table::bytes(g.l2_bytes as u64)
                );
            }
        }
        Err(e) => outln!("driver: {e}"),
    }
    let c = &r.cache;
    match c.state {
        "missing" => outln!(
            "cache:  there is no cache at {} yet (flasheva compile or cache import creates it)",
            c.path
        ),
        "not_a_cache" => outln!("cache:  {}", c.detail.as_deref().unwrap_or("")),
        _ => {
            outln!(
                "cache:  {} ({}, {} damaged, {} winner records, {})",
                c.path,
                super::cache_cmd::entries(c.entries),
                c.damaged,
                c.winners,
                table::bytes(c.bytes)
            );
            for (reason, n) in &c.usable {
                outln!(
                    "        {n} entr{} usable here? {reason}",
                    if *n == 1 { "y" } else { "ies" }
                );
            }
        }
    }
    outln!("configuration in effect:");
    for v in &r.config {
        outln!(
            "  {:<22} {}{}",
            v.name,
            v.value
                .as_deref()
                .map(|s| format!("= {s}"))
                .unwrap_or_else(|| "(unset)".into()),
            v.problem
                .as_deref()
                .map(|p| format!("  PROBLEM: {p}"))
                .unwrap_or_default()
        );
    }
}
