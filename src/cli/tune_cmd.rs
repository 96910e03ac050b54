//! `flasheva tune`: find the fastest correct tile of each spec on this GPU, at the given shapes,
//! and record the winners in the cache for every later process's loader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::Args;
use flasheva::cache::winner::{CandidateStatus, WinnerRecord};
use flasheva::compile::{Backend, CompilerSet, Compilers};
use flasheva::gpu::Gpu;
use flasheva::loader::{Runtime, RuntimeOptions};
use flasheva::spec::Op;
use flasheva::target::Arch;
use flasheva::tune::space::Pruned;
use flasheva::tune::space::Spaces;
use flasheva::tune::{self, Event, TuneConfig};
use flasheva::workload::Workload;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{Selection, ShapeFlags};
use super::{Format, json_doc, open_store, table, usage};

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub select: Selection,
    #[command(flatten)]
    pub shape: ShapeFlags,
    /// Shapes to tune at, comma-separated BxN (decode: BxPOSITION), e.g. 1x16384,8x2048; heads
    /// come from the preset or --heads/--kv-heads. Default: the preset's shapes or the shape flags.
    #[arg(long, value_name = "BxN,...")]
    pub shapes: Option<String>,
    /// List the candidates that survive pruning, and why the others were dropped; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the full results (results.json) and a plot (tune.svg) into this folder.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Timed samples per candidate (median reported; each sample times 4 launches).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Untimed launches per candidate first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Compile threads (default: all cores but one, which drives the GPU).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Search spaces file (default: the embedded autotune/spaces.toml).
    #[arg(long, value_name = "FILE")]
    pub space: Option<PathBuf>,
    /// Arch whose limits prune a dry run on a machine without a GPU.
    #[arg(long, default_value = "sm_90", value_parser = |s: &str| s.parse::<Arch>())]
    pub arch: Arch,
}

/// Prints above the progress bar, also when stderr is not a terminal (the bar is hidden then).
fn say(pb: &ProgressBar, msg: String) {
    pb.suspend(|| eprintln!("{msg}"));
}

fn parse_shapes(s: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    if s.split(',').all(|p| p.trim().is_empty()) {
        return Err(usage(format!(
            "--shapes '{s}' names no shape: give BxN pairs separated by commas, e.g. 1x16384,8x2048"
        )));
    }
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (b, n) = p
                .split_once('x')
                .ok_or_else(|| usage(format!("shape '{p}' is not BxN (e.g. 1x16384)")))?;
            let b: usize = b
                .trim()
                .parse()
                .map_err(|_| usage(format!("shape '{p}': batch is not a number")))?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| usage(format!("shape '{p}': length is not a number")))?;
            Ok((b, n))
        })
        .collect()
}

fn workloads(a: &TuneArgs) -> anyhow::Result<Vec<Workload>> {
    let mut base = super::bench_cmd::workloads(&a.select, &a.shape, "tune")?;
    if let Some(s) = &a.shapes {
        let shapes = parse_shapes(s)?;
        base = base
            .into_iter()
            .flat_map(|w| {
                shapes.iter().map(move |&(b, n)| Workload {
                    b,
                    n: if matches!(w.spec.op(), Op::Decode | Op::DecodePaged) {
                        n + 1
                    } else {
                        n
                    },
                    ..w
                })
            })
            .collect();
    }
    Ok(base)
}

pub fn run(a: TuneArgs, cache_dir: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let loads = workloads(&a)?;
    let spaces = match &a.space {
        // A spaces file is a few hundred bytes: 1 MiB is a generous cap (and /dev/zero is refused).
        Some(p) => {
            let bytes = flasheva::cache::fsx::read_capped(p, 1 << 20, true)
                .map_err(|e| usage(format!("--space {}: {e}", p.display())))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| usage(format!("--space {}: not UTF-8 text", p.display())))?;
            Spaces::parse(&text).map_err(usage)?
        }
        None => Spaces::builtin(),
    };
    if a.samples == 0 {
        return Err(usage("--samples must be at least 1"));
    }
    let gpu = if a.dry_run {
        Gpu::open(a.device).ok()
    } else {
        Some(Gpu::open(a.device).context("flasheva tune needs a CUDA GPU (try --dry-run)")?)
    };
    let (arch, limits, device_name) = match &gpu {
        Some(g) => {
            let (ma, mi) = g.info().capability;
            let arch = Arch::preferred_for(ma, mi);
            let mut l = arch.limits();
            l.smem_per_block = g.info().smem_per_block_optin;
            (arch, l, g.info().name.clone())
        }
        None => (
            a.arch,
            a.arch.limits(),
            format!("{} (no GPU here: its published limits)", a.arch),
        ),
    };

    // Each tile's backend must have its compiler here: the others are pruned, with the reason.
    let compilers = Arc::new(Compilers::new());
    let candidates = |spec: &flasheva::KernelSpec| {
        let mut c = spaces.candidates(spec, arch, limits);
        let mut keep = Vec::new();
        for t in std::mem::take(&mut c.keep) {
            match compilers.for_backend(t.engine().backend()) {
                Ok(_) => keep.push(t),
                Err(e) => c.pruned.push(Pruned {
                    tile: t.params(),
                    reason: format!("no {} compiler: {e}", t.engine().backend()),
                }),
            }
        }
        c.keep = keep;
        c
    };
    if a.dry_run && format == Format::Json {
        let workloads: Vec<serde_json::Value> = loads
            .iter()
            .map(|w| {
                let c = candidates(&w.spec);
                serde_json::json!({
                    "spec": w.spec.name(),
                    "b": w.b, "n": w.n, "h": w.h, "hkv": w.hkv,
                    "keep": c.keep.iter().map(|t| t.name(w.spec.op())).collect::<Vec<_>>(),
                    "pruned": c.pruned.iter().map(|p| serde_json::json!({
                        "tile": p.tile.name(w.spec.op()),
                        "reason": p.reason,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return json_doc(
            "flasheva/tune-plan/1",
            serde_json::json!({
                "device": device_name,
                "arch": arch.to_string(),
                "default_first": true,
                "workloads": workloads,
            }),
        );
    }
    if a.dry_run {
        outln!("candidates on {device_name}:");
        for w in &loads {
            let c = candidates(&w.spec);
            outln!(
                "\n{} at {}: {} candidates, {} pruned",
                w.spec,
                w.describe(),
                c.keep.len(),
                c.pruned.len()
            );
            let mut rows: Vec<Vec<String>> = c
                .keep
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    vec![
                        t.name(w.spec.op()),
                        if i == 0 {
                            "keep (default, trusted)".into()
                        } else {
                            "keep".into()
                        },
                    ]
                })
                .collect();
            rows.extend(
                c.pruned
                    .iter()
                    .map(|p| vec![p.tile.name(w.spec.op()), format!("pruned: {}", p.reason)]),
            );
            out!("{}", table::format(&["tile", "decision"], &rows));
        }
        outln!(
            "\n(after compiling, candidates that spill registers or exceed the register file are dropped too)"
        );
        return Ok(());
    }

    let gpu = gpu.expect("opened above");
    compilers.for_backend(Backend::Nvrtc)?;
    let stream = gpu.context().new_stream().context("creating a stream")?;
    let rt = Runtime::with_gpu(
        gpu,
        open_store(cache_dir)?,
        RuntimeOptions::default()
            .compile_on_miss(true)
            .use_tuned(false),
    );
    let jobs = a.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .saturating_sub(1)
            .max(1)
    });
    let cfg = TuneConfig::new(a.warmup, a.samples, jobs);
    let plans: Vec<_> = loads.iter().map(|w| (*w, candidates(&w.spec))).collect();
    let total: usize = plans.iter().map(|(_, c)| c.keep.len()).sum();
    eprintln!(
        "tuning {} workload(s), {total} candidates, on {device_name} ({jobs} compile threads)",
        plans.len()
    );
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let mut records: Vec<WinnerRecord> = Vec::new();
    let mut failures = Vec::new();
    for (w, cands) in &plans {
        pb.set_message(format!("{} {}", w.spec, w.describe()));
        let mut on_event = |e: Event| match e {
            Event::Trusted(r) => say(&pb, format!("trusted default: {r}")),
            Event::Candidate { result, resumed } => {
                pb.inc(1);
                if resumed {
                    say(
                        &pb,
                        format!(
                            "resumed {} {}: {}",
                            w.spec,
                            result.tile.name(w.spec.op()),
                            result.status
                        ),
                    );
                } else if matches!(result.status, CandidateStatus::Wrong { .. }) {
                    say(
                        &pb,
                        format!(
                            "REJECTED {} {}: {}",
                            w.spec,
                            result.tile.name(w.spec.op()),
                            result.status
                        ),
                    );
                }
            }
            _ => {}
        };
        match tune::tune(&rt, &stream, &compilers, *w, cands, &cfg, &mut on_event) {
            Ok(o) => {
                say(
                    &pb,
                    format!(
                        "tuned {} {} in {:.1} s{}: winner {} ({:.2}x the default)",
                        w.spec,
                        w.describe(),
                        o.seconds,
                        if o.resumed > 0 {
                            format!(" ({} candidates resumed)", o.resumed)
                        } else {
                            String::new()
                        },
                        o.record.tile.name(w.spec.op()),
                        o.record.speedup()
                    ),
                );
                records.push(o.record)
            }
            Err(e) => {
                say(&pb, format!("FAILED {} {}: {e}", w.spec, w.describe()));
                failures.push(format!("{} {}: {e}", w.spec, w.describe()));
            }
        }
    }
    pb.finish_and_clear();
    if format == Format::Json {
        json_doc(
            "flasheva/tune/1",
            serde_json::json!({
                "cache": rt.store().root().display().to_string(),
                "seconds": t0.elapsed().as_secs_f64(),
                "records": records,
                "failures": failures,
            }),
        )?;
        if let Some(dir) = &a.report {
            tune::report::write(dir, &records)
                .with_context(|| format!("writing the report into {}", dir.display()))?;
        }
        if !failures.is_empty() {
            return Err(anyhow!("{} workload(s) failed to tune", failures.len()));
        }
        return Ok(());
    }
    for r in &records {
        outln!(
            "\n{} on {}, B={} N={} H={} Hkv={} ({})",
            r.spec,
            r.device.name,
            r.shape.0,
            r.shape.1,
            r.shape.2,
            r.shape.3,
            r.bucket
        );
        let rows: Vec<Vec<String>> = r
            .candidates
            .iter()
            .map(|c| {
                let mark = if c.tile == r.tile { "* " } else { "  " };
                vec![
                    format!("{mark}{}", c.tile.name(r.spec.op())),
                    c.median_ms
                        .map(|m| format!("{m:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    c.rate
                        .map(|v| format!("{v:.1} {}", c.rate_unit))
                        .unwrap_or_else(|| "-".into()),
                    c.median_ms
                        .map(|m| format!("{:.2}x", r.default_median_ms / m))
                        .unwrap_or_else(|| "-".into()),
                    c.status.to_string(),
                ]
            })
            .collect();
        out!(
            "{}",
            table::format(
                &["candidate", "median ms", "rate", "vs default", "status"],
                &rows
            )
        );
    }
    outln!("\nwinners (recorded in {}):", rt.store().root().display());
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let rejected = r.candidates.iter().filter(|c| !c.ok()).count();
            vec![
                r.spec.name(),
                format!("B={} N={}", r.shape.0, r.shape.1),
                r.tile.name(r.spec.op()),
                format!("{:.4}", r.median_ms),
                format!("{:.4}", r.default_median_ms),
                format!("{:.2}x", r.speedup()),
                format!("{}/{}", rejected, r.candidates.len()),
            ]
        })
        .collect();
    out!(
        "{}",
        table::format(
            &[
                "kernel",
                "shape",
                "winner",
                "ms",
                "default ms",
                "speedup",
                "rejected"
            ],
            &rows
        )
    );
    outln!(
        "{} workload(s) tuned in {:.1} s",
        records.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(dir) = &a.report {
        for p in tune::report::write(dir, &records)
            .with_context(|| format!("writing the report into {}", dir.display()))?
        {
            outln!("wrote {}", p.display());
        }
    }
    if !failures.is_empty() {
        return Err(anyhow!(
            "{} of {} workloads failed to tune",
            failures.len(),
            plans.len()
        ));
    }
    Ok(())
}
