//! `flasheva bench`: time kernels on the GPU with CUDA events (warm-up, median of many launches,
//! rotated inputs) and report ms, effective TFLOP/s or GB/s, and the comparisons that matter:
//! dense causal attention at the same rate (prefill) and the device's copy bandwidth (decode).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use flasheva::bench::{Bencher, Timing, Workload, copy_bandwidth, read_bandwidth};
use flasheva::gpu::Gpu;
use flasheva::loader::{Runtime, RuntimeOptions};
use flasheva::ops::{Problem, Rate};
use flasheva::spec::{KernelSpec, Op};

use super::args::{Selected, Selection, ShapeFlags, parse_backend, tile_for};
use super::{Format, json_doc, open_store, table, usage};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub select: Selection,
    #[command(flatten)]
    pub shape: ShapeFlags,
    /// Tile overrides, e.g. block_m=64,block_n=64 (default: tuned winner, else the default tile).
    #[arg(long, value_name = "FIELD=VALUE,...", requires = "op")]
    pub tile: Option<String>,
    /// nvrtc or triton: that backend's default tile (with --tile overrides), not the tuned
    /// winner (default: the tuned winner, whichever backend it is, else NVRTC's default).
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<flasheva::tile::Backend>,
    /// Timed launches per kernel (the median is reported).
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Untimed launches first.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Time launches replayed from a CUDA graph (as a serving loop runs a step, and as
    /// scripts/peers.py times the peers: no launch gaps) instead of back-to-back launches. The
    /// same-size read is timed the same way.
    #[arg(long)]
    pub graph: bool,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Ignore tuned winners: use the default tile (also: FLASHEVA_NO_TUNE=1).
    #[arg(long)]
    pub ignore_tuning: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub backward: super::args::BackwardFlags,
}

#[derive(serde::Serialize)]
struct Row {
    kernel: String,
    tile: String,
    workload: String,
    timing: Timing,
    tflops: f64,
    gbps: f64,
    dense_causal_ms_at_rate: Option<f64>,
    /// A read of the op's bytes over as many rotating buffers, GB/s (memory-bound ops).
    read_same_bytes_gbps: Option<f64>,
}

/// The workloads of a selection: one spec at the shape flags, or a preset's specs at its shapes
/// (overridden by any shape flag).
pub fn workloads(
    select: &Selection,
    shape: &ShapeFlags,
    command: &str,
) -> anyhow::Result<Vec<Workload>> {
    match select.resolve(command)? {
        Selected::Spec(s) => Ok(vec![shape.workload(&s)?]),
        Selected::Preset(name, p) => Ok(p
            .specs(&name)
            .map_err(usage)?
            .iter()
            .map(|s| preset_workload(&p, s, shape))
            .collect()),
    }
}

/// A preset spec's workload: the preset's shapes, overridden by any shape flag.
pub fn preset_workload(
    p: &flasheva::presets::Preset,
    s: &KernelSpec,
    shape: &ShapeFlags,
) -> Workload {
    let (b, n) = match s.op() {
        Op::Decode | Op::DecodePaged => (
            shape.batch.unwrap_or(p.decode_batch),
            shape
                .position
                .map(|x| x + 1)
                .unwrap_or(p.decode_position + 1),
        ),
        Op::Extend | Op::Append | Op::ExtendPaged | Op::AppendPaged => (
            shape.batch.unwrap_or(p.decode_batch),
            shape.seq_len.unwrap_or(512),
        ),
        _ => (
            shape.batch.unwrap_or(p.batch),
            shape.seq_len.unwrap_or(p.seq_len),
        ),
    };
    let past = match s.op() {
        Op::Extend | Op::Append | Op::ExtendPaged | Op::AppendPaged => {
            shape.position.unwrap_or(p.decode_position)
        }
        _ => 0,
    };
    let hkv = shape.kv_heads.unwrap_or(p.kv_heads as usize);
    let h = match s.op() {
        Op::Append | Op::AppendPaged => hkv,
        _ => shape.heads.unwrap_or(p.heads as usize),
    };
    Workload {
        spec: *s,
        b,
        n,
        h,
        hkv,
        past,
    }
}

pub fn run(a: BenchArgs, cache_dir: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let loads = workloads(&a.select, &a.shape, "bench")?;
    if a.iters == 0 {
        return Err(usage("--iters must be at least 1"));
    }
    let gpu = Gpu::open(a.device).context("flasheva bench needs a CUDA GPU")?;
    let stream = gpu.context().new_stream().context("creating a stream")?;
    let opts = RuntimeOptions::from_env()?.compile_on_miss(true);
    let opts = opts.clone().use_tuned(opts.use_tuned && !a.ignore_tuning);
    let rt = Runtime::with_gpu(gpu.clone(), open_store(cache_dir)?, opts);
    let info = gpu.info().clone();
    eprintln!(
        "measuring device-to-device copy bandwidth on {} ...",
        info.name
    );
    let copy = copy_bandwidth(&gpu, &stream, 1 << 30, 20)?;
    // Memory-bound ops are judged against what the device can read, measured now.
    let read = if loads
        .iter()
        .any(|w| flasheva::ops::of(w.spec.op()).rate() == Rate::Bytes)
    {
        eprintln!("measuring the read rate (a read-only kernel over 4 GiB) ...");
        match read_bandwidth(&gpu, &stream, 4 << 30, 1, 20, false) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!(
                    "warning: the read-rate probe failed ({e}); rates are shown against the copy rate only"
                );
                None
            }
        }
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut out_rows = Vec::new();
    for w in loads {
        let tile = match &a.tile {
            Some(_) => tile_for(&w.spec, rt.arch(), a.backend, a.tile.as_deref())?,
            None if a.backend.is_some() => tile_for(&w.spec, rt.arch(), a.backend, None)?,
            None => rt.tile_for_workload(&w),
        };
        let kernel = rt.kernel_with_tile(&w.spec, &tile)?;
        let mut problem = Problem::new(w);
        problem.deterministic = a.backward.deterministic;
        let mut bench = Bencher::new(&gpu, &stream, problem, &kernel)?;
        eprintln!(
            "timing {} {} ({} rotating input sets{}) ...",
            w.spec,
            w.describe(),
            bench.sets(),
            if a.backward.deterministic && w.spec.op() == Op::PrefillBwd {
                ", deterministic"
            } else {
                ""
            }
        );
        let t = bench.time_as(&kernel, a.warmup, a.iters, a.graph)?;
        let secs = t.median_ms * 1e-3;
        // A memory-bound op also against a read of its own size over as many rotating buffers
        // (what a kernel that short can reach, its start and tail included).
        let read_same = match (read, flasheva::ops::of(w.spec.op()).rate()) {
            (Some(_), Rate::Bytes) => {
                match read_bandwidth(
                    &gpu,
                    &stream,
                    w.bytes() as usize,
                    bench.sets(),
                    a.iters.max(5),
                    a.graph,
                ) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        eprintln!("warning: the same-size read probe failed ({e})");
                        None
                    }
                }
            }
            _ => None,
        };
        let tflops = w.flops() / secs / 1e12;
        let gbps = w.bytes() / secs / 1e9;
        let dense =
            (w.spec.op() == Op::Prefill).then(|| w.dense_causal_flops() / (tflops * 1e12) * 1e3);
        // Compute-bound ops in TFLOP/s, memory-bound ones in GB/s against the copy rate;
        // prefill also against dense causal attention of the same length.
        let rate = match flasheva::ops::of(w.spec.op()).rate() {
            Rate::Flops => match dense {
                Some(ms) => format!("{tflops:.1} TFLOP/s (dense causal: {ms:.2} ms at this rate)"),
                None => format!("{tflops:.1} TFLOP/s"),
            },
            _ => match read {
                Some(r) => format!(
                    "{gbps:.0} GB/s = {:.1}% of read{}, {:.0}% of copy",
                    100.0 * w.bytes() / secs / r,
                    read_same
                        .map(|x| format!(
                            " ({:.1}% of a read of the same bytes: {:.0} GB/s)",
                            100.0 * w.bytes() / secs / x,
                            x / 1e9
                        ))
                        .unwrap_or_default(),
                    100.0 * w.bytes() / secs / copy
                ),
                None => format!(
                    "{gbps:.0} GB/s = {:.0}% of copy",
                    100.0 * w.bytes() / secs / copy
                ),
            },
        };
        rows.push(vec![
            w.spec.name(),
            tile.name(w.spec.op()),
            w.describe(),
            format!("{:.4}", t.median_ms),
            format!("{:.4}", t.min_ms),
            format!("{:.4}", t.max_ms),
            rate,
        ]);
        out_rows.push(Row {
            kernel: w.spec.name(),
            tile: tile.name(w.spec.op()),
            workload: w.describe(),
            timing: t,
            tflops,
            gbps,
            dense_causal_ms_at_rate: dense,
            read_same_bytes_gbps: read_same.map(|x| x / 1e9),
        });
    }
    let doc = serde_json::json!({
        "device": info.name,
        "arch": format!("sm_{}{}", info.capability.0, info.capability.1),
        "copy_gbps": copy / 1e9,
        "read_gbps": read.map(|r| r / 1e9),
        "iters": a.iters,
        "warmup": a.warmup,
        "timing_mode": if a.graph { "graph" } else { "launches" },
        "launches_per_sample": flasheva::bench::launches_per_sample(a.graph),
        "results": out_rows,
    });
    if let Some(path) = &a.json {
        let mut d = doc.clone();
        d["schema"] = "flasheva/bench/1".into();
        std::fs::write(path, serde_json::to_vec_pretty(&d)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if format == Format::Json {
        return json_doc("flasheva/bench/1", doc);
    }
    outln!(
        "device: {} (sm_{}{}, {} SMs); device-to-device copy {:.0} GB/s (read + write){}; {} per kernel after {} warm-up",
        info.name,
        info.capability.0,
        info.capability.1,
        info.sm_count,
        copy / 1e9,
        read.map(|r| format!(", read {:.0} GB/s", r / 1e9))
            .unwrap_or_default(),
        format!(
            "{} timed {} of {} launches",
            a.iters,
            if a.graph {
                "replays of a CUDA graph"
            } else {
                "samples"
            },
            flasheva::bench::launches_per_sample(a.graph)
        ),
        a.warmup
    );
    out!(
        "{}",
        table::format(
            &[
                "kernel",
                "tile",
                "workload",
                "median ms",
                "min",
                "max",
                "rate"
            ],
            &rows
        )
    );
    Ok(())
}
