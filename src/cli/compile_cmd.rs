//! `flasheva compile`: compile a preset (or one spec) for a list of archs into the cache, in
//! parallel, with a progress bar and a summary table. Cached entries are not compiled again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::Args;
use flasheva::compile::{CompilerSet, Compilers};
use flasheva::pipeline::{Pipeline, Status};
use flasheva::target::{Arch, DEFAULT_ARCHS};
use flasheva::tile::{Backend, triton_targets};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::args::{ArchList, Selection, parse_archs, parse_backend, tile_for};
use super::{Format, json_doc, open_store, table, usage};

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub select: Selection,
    /// Tile overrides for a single spec, e.g. block_m=64,block_n=32 (default: each arch's default tile).
    #[arg(long, value_name = "FIELD=VALUE,...", requires = "op")]
    pub tile: Option<String>,
    /// Target archs, comma-separated (accepted: sm_80, sm_86, sm_87, sm_89, sm_90, sm_90a, sm_100, sm_100a, sm_120).
    #[arg(long, value_name = "LIST", value_parser = parse_archs)]
    pub arch: Option<ArchList>,
    /// nvrtc (CUDA C++, the default) or triton (the Triton kernels; archs sm_80, sm_86, sm_87,
    /// sm_89, sm_90a, and those of the default list when --arch is not given).
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<Backend>,
    /// Compiles to run at once, 1 to 256 (default: one per core).
    #[arg(long, short = 'j', value_name = "N", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
}

/// Most compiles `-j` runs at once: each holds a compiler and its output in memory.
pub const MAX_JOBS: usize = 256;

/// Parses `-j`: a whole number from 1 to [`MAX_JOBS`].
pub fn parse_jobs(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_JOBS).contains(n))
        .ok_or_else(|| {
            format!("-j {s} is not accepted: give a whole number of compiles from 1 to {MAX_JOBS}")
        })
}

pub fn run(a: CompileArgs, cache_dir: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let selected = a.select.resolve("compile")?;
    let (what, specs) = (selected.describe(), selected.specs()?);
    let backend = a.backend.unwrap_or(Backend::Nvrtc);
    let archs: Vec<Arch> = match (&a.arch, backend) {
        (Some(l), Backend::Triton) => {
            if let Some(bad) = l.0.iter().find(|x| !triton_targets(**x)) {
                return Err(usage(format!(
                    "--arch {bad} is not accepted with --backend triton: Triton targets {}",
                    flasheva::tile::TRITON_ARCHS
                )));
            }
            l.0.clone()
        }
        (Some(l), _) => l.0.clone(),
        (None, Backend::Triton) => DEFAULT_ARCHS
            .iter()
            .copied()
            .filter(|x| triton_targets(*x))
            .collect(),
        (None, _) => DEFAULT_ARCHS.to_vec(),
    };
    let mut jobs = Vec::new();
    for spec in &specs {
        for &arch in &archs {
            jobs.push((
                *spec,
                arch,
                tile_for(spec, arch, a.backend, a.tile.as_deref())?,
            ));
        }
    }
    let compilers = Compilers::new();
    let compiler = compilers.for_backend(backend)?;
    let store = open_store(cache_dir)?;
    let threads = a
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, MAX_JOBS);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting compile threads")?;

    eprintln!(
        "compiling {what}: {} spec(s) x {} arch(s) with {} on {threads} thread(s) into {}",
        specs.len(),
        archs.len(),
        compiler.id(),
        store.root().display()
    );
    let pb = ProgressBar::new(jobs.len() as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let pipeline = Pipeline::new(&store, &compilers);
    let results: Vec<_> = pool.install(|| {
        jobs.par_iter()
            .map(|(spec, arch, tile)| {
                let r = pipeline.ensure(spec, tile, *arch);
                pb.inc(1);
                pb.set_message(format!("{spec} {arch}"));
                (spec, *arch, tile, r)
            })
            .collect()
    });
    pb.finish_and_clear();
    let wall = t0.elapsed();

    let (mut compiled, mut cached, mut failed) = (0, 0, 0);
    let mut rows = Vec::new();
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (spec, arch, tile, r) in results {
        match r {
            Ok(b) => {
                for w in &b.warnings {
                    eprintln!("flasheva: warning: {w} (treated as a miss and replaced)");
                }
                let m = &b.entry.meta;
                let regs = m
                    .resources
                    .iter()
                    .find(|u| u.function == spec.name())
                    .map(|u| u.registers.to_string())
                    .unwrap_or_else(|| "-".into());
                let (status, time) = match b.status {
                    Status::Compiled => {
                        compiled += 1;
                        ("compiled", format!("{:.0} ms", m.compile_ms))
                    }
                    _ => {
                        cached += 1;
                        ("cached", "-".into())
                    }
                };
                items.push(serde_json::json!({
                    "kernel": spec.name(),
                    "spec": spec,
                    "arch": arch.to_string(),
                    "tile": tile.name(spec.op()),
                    "status": status,
                    "compile_ms": (status == "compiled").then_some(m.compile_ms),
                    "registers": regs.parse::<u32>().ok(),
                    "key": m.key.hex(),
                }));
                rows.push(vec![
                    spec.name(),
                    arch.to_string(),
                    tile.name(spec.op()),
                    status.into(),
                    time,
                    regs,
                    m.key.short(),
                ]);
            }
            Err(e) => {
                failed += 1;
                rows.push(vec![
                    spec.name(),
                    arch.to_string(),
                    tile.name(spec.op()),
                    "FAILED".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                items.push(serde_json::json!({
                    "kernel": spec.name(),
                    "spec": spec,
                    "arch": arch.to_string(),
                    "tile": tile.name(spec.op()),
                    "status": "failed",
                    "error": e.to_string(),
                }));
                errors.push(format!("{spec} {arch}: {e}"));
            }
        }
    }
    if format == Format::Json {
        json_doc(
            "flasheva/compile/1",
            serde_json::json!({
                "cache": store.root().display().to_string(),
                "compiled": compiled,
                "cached": cached,
                "failed": failed,
                "seconds": wall.as_secs_f64(),
                "results": items,
            }),
        )?;
        if failed > 0 {
            return Err(anyhow!("{failed} of {} compiles failed", rows.len()));
        }
        return Ok(());
    }
    out!(
        "{}",
        table::format(
            &["kernel", "arch", "tile", "status", "compile", "regs", "key"],
            &rows
        )
    );
    outln!(
        "{} compiled, {} cached, {} failed in {:.1} s ({} in the cache at {})",
        compiled,
        cached,
        failed,
        wall.as_secs_f64(),
        compiled + cached,
        store.root().display()
    );
    if failed > 0 {
        for e in &errors {
            eprintln!("{e}");
        }
        return Err(anyhow!("{failed} of {} compiles failed", rows.len()));
    }
    Ok(())
}
