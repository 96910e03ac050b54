//! The autotuner: for one spec and workload on this device, compiles candidate tiles in parallel
//! on the CPU while the GPU checks and times those already compiled; every candidate's output is
//! compared with a trusted result (the default tile's, itself checked against the float64
//! reference first), wrong ones are rejected with the difference stated; the fastest correct one
//! becomes the winner record. Measurements are journaled, so an interrupted run resumes.
//!
//! [`space`] is the pure part (candidates and pruning); [`report`] renders results.

pub mod report;
pub mod space;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::bench::{Bencher, Timing};
use crate::cache::CacheStore;
use crate::cache::winner::{
    Bucket, CandidateResult, CandidateStatus, DeviceId, Stage, WINNER_FORMAT, WinnerRecord,
};
use crate::compile::{Backend, CompilerSet, Compilers};
use crate::error::{Error, Result};
use crate::gpu::CudaStream;
use crate::key::KeyBuilder;
use crate::loader::Runtime;
use crate::ops::{self, Problem};
use crate::pipeline::{Built, Pipeline};
use crate::reference::rel_error;
use crate::tile::Tile;
use crate::verify::{self, tolerance};
use crate::workload::Workload;
use space::{Candidates, prune_compiled};

/// Why a tuning run gave no winner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuneError {
    /// The search space left no candidate.
    #[error("no candidate tiles for {0}")]
    NoCandidates(String),
    /// The default tile failed its float64 check, so no result can be trusted.
    #[error("the default tile fails its float64 check, so nothing can be trusted: {0}")]
    Untrusted(Box<verify::Report>),
    /// The default tile could not be timed, so no candidate can be compared.
    #[error("the default tile {0} could not be timed, so nothing can be compared")]
    DefaultNotTimed(Tile),
    /// The compile thread panicked.
    #[error("the compile thread panicked")]
    CompilerPanicked,
    /// Compiling, loading, checking or timing failed outside any one candidate.
    #[error(transparent)]
    Run(#[from] Error),
}

/// How hard to measure.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct TuneConfig {
    /// Untimed launches per candidate.
    pub warmup: usize,
    /// Timed samples per candidate (each of [`crate::bench::REPS`] launches).
    pub samples: usize,
    /// Compile threads.
    pub jobs: usize,
}

impl TuneConfig {
    /// `warmup` untimed launches and `samples` timed samples per candidate, `jobs` compile
    /// threads.
    pub fn new(warmup: usize, samples: usize, jobs: usize) -> TuneConfig {
        TuneConfig {
            warmup,
            samples,
            jobs,
        }
    }
}

/// What the tuner reports as it goes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// The trusted default passed its float64 check.
    Trusted(verify::Report),
    /// A candidate was measured or rejected (or taken from the journal).
    Candidate {
        /// The result.
        result: CandidateResult,
        /// Whether it came from an earlier, interrupted run.
        resumed: bool,
    },
}

/// The result of tuning one workload.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The record written to the cache.
    pub record: WinnerRecord,
    /// Candidates taken from the journal of an interrupted run.
    pub resumed: usize,
    /// Wall time of the compile-and-measure part, seconds.
    pub seconds: f64,
}

/// The device identity of a runtime, with the NVRTC that compiles candidates.
pub fn device_id(rt: &Runtime, compilers: &dyn CompilerSet) -> DeviceId {
    let i = rt.gpu().info();
    DeviceId {
        name: i.name.clone(),
        capability: i.capability,
        driver_version: rt.gpu().driver_version(),
        nvrtc_version: compilers
            .for_backend(Backend::Nvrtc)
            .ok()
            .map(|c| c.id().version.clone()),
    }
}

fn run_key(dev: &DeviceId, w: &Workload, cands: &Candidates, cfg: &TuneConfig) -> crate::key::Key {
    let mut b = KeyBuilder::new("flasheva-tune-run/1");
    b.field("crate_version", crate::ARTIFACT_VERSION)
        .field("device", &dev.name)
        .field("spec", &w.spec.name())
        .field("shape", &format!("{}x{}x{}x{}", w.b, w.n, w.h, w.hkv))
        .field("samples", &cfg.samples.to_string());
    for t in &cands.keep {
        b.field("tile", &t.to_string());
    }
    b.finish()
}

/// Checks the default kernel against the float64 reference on a small shape of the workload.
fn trust(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    w: &Workload,
    tile: &Tile,
) -> Result<verify::Report> {
    let k = rt.kernel_with_tile(&w.spec, tile)?;
    let c = ops::of(w.spec.op()).check_problem(w);
    let case = verify::Case {
        problem: c.problem,
        large_logits: c.large_logits,
        strided: false,
    };
    verify::check(stream, &k, &case)
}

fn rate_of(w: &Workload, median_ms: f64) -> (f64, &'static str) {
    let r = ops::of(w.spec.op()).rate();
    (r.of(w, median_ms), r.unit())
}

/// Tunes `w` over `cands` (`cands.keep[0]` is the default tile). Compiles with `compilers` (the
/// backend of each tile's engine) into `store` on `cfg.jobs` threads while the GPU measures;
/// writes and returns the winner record.
pub fn tune(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    compilers: &Arc<Compilers>,
    w: Workload,
    cands: &Candidates,
    cfg: &TuneConfig,
    on_event: &mut dyn FnMut(Event),
) -> std::result::Result<Outcome, TuneError> {
    let store: &CacheStore = rt.store();
    let dev = device_id(rt, compilers.as_ref());
    let run = run_key(&dev, &w, cands, cfg);
    let default = *cands
        .keep
        .first()
        .ok_or_else(|| TuneError::NoCandidates(w.spec.name()))?;
    let journal = store.read_journal(&run);

    // 1. The trusted result: the default tile, checked against float64 first.
    let report = trust(rt, stream, &w, &default)?;
    if !report.pass {
        return Err(TuneError::Untrusted(Box::new(report)));
    }
    on_event(Event::Trusted(report));
    let started = std::time::Instant::now();
    let default_kernel = rt.kernel_with_tile(&w.spec, &default)?;
    let mut bench = Bencher::new(rt.gpu(), stream, problem_of(&w), &default_kernel)?;
    let trusted = bench.output(&default_kernel)?;
    let tol = tolerance(w.spec.dtype()).rel;

    // 2. Compile every candidate not yet measured, in parallel, streaming them to the GPU loop.
    let (mut results, todo) = split_resumed(&journal, &cands.keep);
    let resumed = results.len();
    for r in &results {
        on_event(Event::Candidate {
            result: r.clone(),
            resumed: true,
        });
    }
    let (tx, rx) = mpsc::channel::<(Tile, Result<Built>)>();
    let compile_store = store.clone();
    let compile_with = Arc::clone(compilers);
    let spec = w.spec;
    let arch = rt.arch();
    let jobs = cfg.jobs.max(1);
    let compiler = std::thread::spawn(move || {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build();
        let work = |t: &Tile| {
            let r = Pipeline::new(&compile_store, compile_with.as_ref()).ensure(&spec, t, arch);
            let _ = tx.send((*t, r));
        };
        match pool {
            Ok(p) => p.install(|| todo.par_iter().for_each(work)),
            Err(_) => todo.iter().for_each(work),
        }
    });

    // 3. Check and time each candidate as it arrives.
    let limits = arch.limits();
    for (tile, built) in rx.iter() {
        let mut r = CandidateResult {
            tile,
            key: None,
            status: CandidateStatus::Ok,
            median_ms: None,
            min_ms: None,
            max_ms: None,
            rate: None,
            rate_unit: rate_of(&w, 1.0).1.into(),
            rel_diff: None,
        };
        match built {
            Err(e) => r.status = failed(Stage::Compile, &e),
            Ok(b) => {
                r.key = Some(b.entry.meta.key);
                // the most any kernel of the module needs (the backward has three)
                let usage = b.entry.meta.resources.iter().fold(
                    crate::compile::ResourceUsage::default(),
                    |mut acc, u| {
                        acc.registers = acc.registers.max(u.registers);
                        acc.spill_stores = acc.spill_stores.max(u.spill_stores);
                        acc
                    },
                );
                let shared = b
                    .entry
                    .meta
                    .entry_shared_mem
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(b.entry.meta.shared_mem_bytes);
                if let Some(why) =
                    prune_compiled(&tile, usage.registers, usage.spill_stores, shared, limits)
                {
                    r.status = CandidateStatus::Pruned { reason: why };
                } else {
                    match measure(rt, &mut bench, &w, &tile, &default, &trusted, tol, cfg) {
                        Measured::Done(diff, t) => {
                            r.rel_diff = diff.is_finite().then_some(diff);
                            r.rate = Some(rate_of(&w, t.median_ms).0);
                            r.median_ms = Some(t.median_ms);
                            r.min_ms = Some(t.min_ms);
                            r.max_ms = Some(t.max_ms);
                        }
                        Measured::Wrong(diff) => {
                            r.rel_diff = diff.is_finite().then_some(diff);
                            r.status = CandidateStatus::Wrong {
                                rel_diff: diff.is_finite().then_some(diff),
                                tolerance: tol,
                            };
                        }
                        Measured::Failed(stage, e) => r.status = failed(stage, &e),
                    }
                }
            }
        }
        match &r.status {
            CandidateStatus::Ok => tracing::info!(
                tile = %tile.name(spec.op()),
                median_ms = r.median_ms.unwrap_or(f64::NAN),
                "candidate timed"
            ),
            other => {
                tracing::info!(tile = %tile.name(spec.op()), status = %other, "candidate rejected")
            }
        }
        store.append_journal(&run, &r).map_err(Error::from)?;
        on_event(Event::Candidate {
            result: r.clone(),
            resumed: false,
        });
        results.push(r);
    }
    compiler.join().map_err(|_| TuneError::CompilerPanicked)?;

    // 4. The winner.
    let (best, default_result) = choose(&mut results, &default)?;
    let record = WinnerRecord {
        format: WINNER_FORMAT,
        crate_version: crate::ARTIFACT_VERSION.to_string(),
        device: dev,
        spec: w.spec,
        bucket: Bucket::of_workload(&w),
        shape: (w.b, w.n, w.h, w.hkv),
        tile: best.tile,
        artifact_key: best.key,
        median_ms: best.median_ms.expect("chosen results are timed"),
        default_tile: default,
        default_median_ms: default_result.median_ms.expect("chosen results are timed"),
        candidates: results,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    store.put_winner(&record).map_err(Error::from)?;
    store.remove_journal(&run);
    Ok(Outcome {
        record,
        resumed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Splits the candidates into results an interrupted run already journaled (reused, in candidate
/// order) and tiles still to measure.
pub fn split_resumed(
    journal: &[CandidateResult],
    candidates: &[Tile],
) -> (Vec<CandidateResult>, Vec<Tile>) {
    let mut done = Vec::new();
    let mut todo = Vec::new();
    for t in candidates {
        match journal.iter().rev().find(|r| r.tile == *t) {
            Some(r) => done.push(r.clone()),
            None => todo.push(*t),
        }
    }
    (done, todo)
}

/// Picks the fastest correct candidate and the default's result; sorts `results` fastest first,
/// rejected ones last. Errors when the default itself was not timed.
pub fn choose(
    results: &mut [CandidateResult],
    default: &Tile,
) -> std::result::Result<(CandidateResult, CandidateResult), TuneError> {
    let default_result = results
        .iter()
        .find(|r| r.tile == *default)
        .filter(|r| r.ok())
        .cloned()
        .ok_or(TuneError::DefaultNotTimed(*default))?;
    results.sort_by(CandidateResult::ranking);
    let best = results
        .first()
        .cloned()
        .filter(|r| r.ok())
        .unwrap_or_else(|| default_result.clone());
    Ok((best, default_result))
}

/// The problem the tuner times for a workload.
fn problem_of(w: &Workload) -> Problem {
    Problem::new(*w)
}

fn failed(stage: Stage, e: &Error) -> CandidateStatus {
    CandidateStatus::Failed {
        stage,
        message: e.to_string().lines().next().unwrap_or("").to_string(),
    }
}

/// What measuring one candidate gave.
enum Measured {
    /// Agrees with the trusted output (relative difference) and was timed.
    Done(f64, Timing),
    /// Disagrees by this relative difference.
    Wrong(f64),
    /// Could not be loaded or run.
    Failed(Stage, Error),
}

/// Compares a candidate's output with the trusted one (the trusted tile itself produced it, so it
/// is not run twice) and, when it agrees, times it.
#[allow(clippy::too_many_arguments)]
fn measure(
    rt: &Runtime,
    bench: &mut Bencher,
    w: &Workload,
    tile: &Tile,
    trusted_tile: &Tile,
    trusted: &[f64],
    tol: f64,
    cfg: &TuneConfig,
) -> Measured {
    let k = match rt.kernel_with_tile(&w.spec, tile) {
        Ok(k) => k,
        Err(e) => return Measured::Failed(Stage::Load, e),
    };
    let diff = if tile == trusted_tile {
        0.0
    } else {
        match bench.output(&k) {
            Ok(out) => rel_error(&out, trusted),
            Err(e) => return Measured::Failed(Stage::Launch, e),
        }
    };
    if diff > tol || diff.is_nan() {
        return Measured::Wrong(diff);
    }
    match bench.time(&k, cfg.warmup, cfg.samples) {
        Ok(t) => Measured::Done(diff, t),
        Err(e) => Measured::Failed(Stage::Launch, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Op;

    fn tile(warps: u32) -> Tile {
        let spec = crate::spec::KernelSpec::new(
            Op::ChunkMean,
            &crate::spec::SpecParams {
                head_dim: Some(64),
                chunk: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        Tile::new(
            &spec,
            crate::tile::TileParams {
                warps,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn res(warps: u32, ms: Option<f64>, status: CandidateStatus) -> CandidateResult {
        CandidateResult {
            tile: tile(warps),
            key: None,
            status,
            median_ms: ms,
            min_ms: ms,
            max_ms: ms,
            rate: None,
            rate_unit: "GB/s".into(),
            rel_diff: Some(0.0),
        }
    }

    fn wrong() -> CandidateStatus {
        CandidateStatus::Wrong {
            rel_diff: Some(0.5),
            tolerance: 8e-3,
        }
    }

    #[test]
    fn resume_reuses_journaled_results() {
        let journal = vec![
            res(2, Some(1.0), CandidateStatus::Ok),
            res(8, None, wrong()),
            res(1, Some(0.1), CandidateStatus::Ok),
        ];
        // tile(1) was measured by a run with other candidates: not reused
        let (done, todo) = split_resumed(&journal, &[tile(4), tile(2), tile(8)]);
        assert_eq!(
            done.iter().map(|r| r.tile.warps()).collect::<Vec<_>>(),
            vec![2, 8]
        );
        assert_eq!(todo, vec![tile(4)]);
    }

    #[test]
    fn the_fastest_correct_candidate_wins() {
        let mut r = vec![
            res(4, Some(1.0), CandidateStatus::Ok),
            res(2, Some(0.5), CandidateStatus::Ok),
            res(8, Some(0.1), wrong()),
            res(
                1,
                None,
                CandidateStatus::Pruned {
                    reason: "spills 8 bytes".into(),
                },
            ),
        ];
        let (best, dflt) = choose(&mut r, &tile(4)).unwrap();
        assert_eq!(best.tile, tile(2));
        assert_eq!(dflt.tile, tile(4));
        assert_eq!(
            r.iter().map(|c| c.tile.warps()).collect::<Vec<_>>(),
            vec![2, 4, 8, 1]
        );
        // a wrong result never wins however fast; without a timed default there is no verdict
        let mut r = vec![
            res(
                4,
                None,
                CandidateStatus::Failed {
                    stage: Stage::Launch,
                    message: "x".into(),
                },
            ),
            res(2, Some(0.5), CandidateStatus::Ok),
        ];
        assert!(matches!(
            choose(&mut r, &tile(4)),
            Err(TuneError::DefaultNotTimed(_))
        ));
    }
}
