//! The GPU proof: every op over a grid of head dims, windows, chunks, local modes, dtypes,
//! batch sizes, lengths (with the contract's edge cases) and GQA groups, against the float64
//! reference, with fresh random inputs, poisoned outputs and rows of very large logits.
//!
//! Every test is `#[ignore]`d (`cargo test` lists them as ignored where no GPU is); the device
//! runs ask for them with `--include-ignored`, and then a missing device fails the test.

use std::io::Write;
use std::sync::{Arc, OnceLock};

mod common;

use common::spec;
use flasheva::cache::CacheStore;
use flasheva::gpu::{CudaStream, Gpu};
use flasheva::loader::{Kernel, Runtime, RuntimeOptions};
use flasheva::spec::{DType, LocalMode, Op};
use flasheva::tile::TileParams;
use flasheva::verify::{self, ChunkCase, DecodeCase, PrefillCase, Report};
use flasheva::{Arch, Tile};

fn cache_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The GPU, a stream and a runtime that compiles on a miss. These tests are ignored unless asked
/// for (`--include-ignored`), and asked for they need a GPU: its absence is a failure.
fn gpu(test: &str) -> (Runtime, Arc<CudaStream>) {
    let g = Gpu::open(0).unwrap_or_else(|e| panic!("{test}: needs a CUDA GPU: {e}"));
    let stream = g.context().new_stream().expect("stream");
    let store = CacheStore::open(cache_dir()).expect("cache");
    (
        Runtime::with_gpu(g, store, RuntimeOptions::default().compile_on_miss(true)),
        stream,
    )
}

fn settle(name: &str, reports: Vec<Report>) {
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.pass).collect();
    let worst = reports.iter().map(|r| r.worst_ratio).fold(0.0, f64::max);
    println!(
        "SUMMARY {name}: {} checks, {} failed, worst error/tolerance {:.3}",
        reports.len(),
        failed.len(),
        worst
    );
    for r in &reports {
        if !r.pass || std::env::var("FLASHEVA_VERBOSE").is_ok() {
            println!("  {r}");
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: {} of {} checks failed",
        failed.len(),
        reports.len()
    );
}

fn prefill_cases(w: usize, c: usize) -> Vec<PrefillCase> {
    let base = PrefillCase {
        b: 1,
        n: 1,
        h: 4,
        hkv: 4,
        extra_summaries: 0,
        large_logits: false,
        strided: false,
        scale: None,
    };
    let mut v = Vec::new();
    for n in [
        1,
        c.saturating_sub(1).max(1),
        w.saturating_sub(1).max(1),
        w + c + 3,
        3 * w + 5,
    ] {
        v.push(PrefillCase { n, ..base.clone() });
    }
    v.push(PrefillCase {
        b: 2,
        n: 2 * w + 7,
        h: 8,
        hkv: 2,
        extra_summaries: 3,
        ..base.clone()
    });
    v.push(PrefillCase {
        b: 2,
        n: w + 17,
        h: 4,
        hkv: 1,
        large_logits: true,
        ..base.clone()
    });
    v.push(PrefillCase {
        b: 1,
        n: 2 * w + 1,
        h: 2,
        hkv: 2,
        strided: true,
        scale: Some(0.3),
        ..base.clone()
    });
    v
}

/// The default tile of every prefill engine this device runs: the device's default (the `wgmma`
/// kernel on compute capability 9.0 for D = 64, 128), the `mma` kernel's default, and the
/// Triton backend's default where it can compile here.
fn engines(rt: &Runtime, s: &flasheva::KernelSpec) -> Vec<Tile> {
    let mut v = vec![rt.default_tile(s)];
    let (a, b) = rt.gpu().info().capability;
    let mma = Tile::default_for(s, Arch::from_capability(a, b));
    if !v.contains(&mma) {
        v.push(mma);
    }
    v.extend(triton_tile(rt, s));
    v
}

/// Whether the Triton backend compiles for this device here (a Python with Triton, an arch it
/// targets); FLASHEVA_REQUIRE_TRITON=1 makes a missing Triton a failure.
fn triton_here(rt: &Runtime) -> bool {
    static HERE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = HERE.get_or_init(|| {
        flasheva::compile::triton::Triton::load()
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    match r {
        Ok(()) if flasheva::tile::triton_targets(rt.arch()) => true,
        Ok(()) => {
            assert!(
                !flasheva::config::require_triton().unwrap_or(false),
                "FLASHEVA_REQUIRE_TRITON=1 but Triton does not target {}",
                rt.arch()
            );
            let _ = writeln!(
                std::io::stderr(),
                "TRITON BACKEND SKIPPED: Triton does not target {}",
                rt.arch()
            );
            false
        }
        Err(e) => {
            assert!(
                !flasheva::config::require_triton().unwrap_or(false),
                "FLASHEVA_REQUIRE_TRITON=1 but Triton is missing: {e}"
            );
            let _ = writeln!(std::io::stderr(), "TRITON BACKEND SKIPPED: {e}");
            false
        }
    }
}

/// The Triton backend's default tile of `s`, where it runs here.
fn triton_tile(rt: &Runtime, s: &flasheva::KernelSpec) -> Option<Tile> {
    triton_here(rt)
        .then(|| Tile::default_for_backend(s, rt.arch(), flasheva::tile::Backend::Triton))
}

/// The device's default tile of `s` and, where it runs here, the Triton backend's.
fn backends(rt: &Runtime, s: &flasheva::KernelSpec) -> Vec<Tile> {
    let mut v = vec![rt.default_tile(s)];
    v.extend(triton_tile(rt, s));
    v
}

/// `tiles` and, for the decode ops, their mma tiles with the other head tile (block_m 0 <-> 8: the
/// 16-row tile and the swapped one of templates/decode_common.cuh), so a grid checks both.
fn with_other_head_tile(s: &flasheva::KernelSpec, mut tiles: Vec<Tile>) -> Vec<Tile> {
    if matches!(s.op(), Op::Decode | Op::DecodePaged) {
        let other: Vec<Tile> = tiles
            .iter()
            .filter(|t| t.engine() == flasheva::tile::Engine::Mma)
            .filter_map(|t| {
                let m = if t.block_m() == 8 { 0 } else { 8 };
                Tile::new(
                    s,
                    TileParams {
                        block_m: m,
                        ..t.params()
                    },
                )
                .ok()
            })
            .collect();
        for t in other {
            if !tiles.contains(&t) {
                tiles.push(t);
            }
        }
    }
    tiles
}

/// Loads (compiling on a miss) every module of a grid, eight at a time, before its checks: a
/// grid's compiles are most of its time (a Triton module takes seconds), and the checks then
/// find the modules loaded. `None`: the spec's kernel as `Runtime::kernel` picks it.
fn load_all(rt: &Runtime, modules: &[(flasheva::KernelSpec, Option<Tile>)]) {
    if modules.is_empty() {
        return;
    }
    std::thread::scope(|scope| {
        for part in modules.chunks(modules.len().div_ceil(8)) {
            scope.spawn(move || {
                for (s, t) in part {
                    match t {
                        None => rt.kernel(s),
                        Some(t) => rt.kernel_with_tile(s, t),
                    }
                    .unwrap_or_else(|e| panic!("{s} {t:?}: {e}"));
                }
            });
        }
    });
}

fn run_prefill_grid(name: &str, dims: &[u32], shapes: &[(u32, u32)]) {
    let (rt, stream) = gpu(name);
    let mut reports = Vec::new();
    let mut modules = Vec::new();
    for &d in dims {
        for &(w, c) in shapes {
            for local in LocalMode::ALL {
                for dtype in DType::ALL {
                    let s = spec(Op::Prefill, d, w, c, local, dtype, 1);
                    modules.extend(engines(&rt, &s).into_iter().map(|t| (s, Some(t))));
                }
            }
        }
    }
    load_all(&rt, &modules);
    for &d in dims {
        for &(w, c) in shapes {
            for local in LocalMode::ALL {
                for dtype in DType::ALL {
                    let s = spec(Op::Prefill, d, w, c, local, dtype, 1);
                    for t in engines(&rt, &s) {
                        let k = rt
                            .kernel_with_tile(&s, &t)
                            .unwrap_or_else(|e| panic!("{s} {t}: {e}"));
                        for case in prefill_cases(w as usize, c as usize) {
                            reports.push(
                                verify::check_prefill(&stream, &k, &case)
                                    .unwrap_or_else(|e| panic!("{s}: {e}")),
                            );
                        }
                    }
                }
            }
        }
    }
    settle(name, reports);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn prefill_d64_d128_grid() {
    run_prefill_grid(
        "prefill D=64,128",
        &[64, 128],
        &[(128, 8), (64, 16), (96, 32)],
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn prefill_llama_shape() {
    run_prefill_grid("prefill D=128 W=512 C=64", &[128], &[(512, 64)]);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn prefill_other_head_dims() {
    run_prefill_grid("prefill D=32,96,256", &[32, 96, 256], &[(64, 8), (128, 32)]);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn prefill_every_tile_shape() {
    let (rt, stream) = gpu("prefill tiles");
    let mut reports = Vec::new();
    for (d, local, dtype) in [
        (128, LocalMode::Block, DType::Bf16),
        (64, LocalMode::Sliding, DType::F16),
    ] {
        let s = spec(Op::Prefill, d, 128, 16, local, dtype, 1);
        for bm in [16, 32, 64, 128, 256] {
            for bn in [16, 32, 64, 128] {
                for (warps, stages) in [
                    (bm / 16, 1),
                    (bm / 16, 2),
                    (bm / 32, 2),
                    (bm / 32, 3),
                    (bm / 16, 3),
                ] {
                    let Ok(t) = Tile::new(
                        &s,
                        TileParams {
                            block_m: bm,
                            block_n: bn,
                            warps,
                            stages,
                            splits: 0,
                            ..Default::default()
                        },
                    ) else {
                        continue;
                    };
                    if t.validate_for(&s, Arch::new(9, 0)).is_err() {
                        continue;
                    }
                    let k = rt
                        .kernel_with_tile(&s, &t)
                        .unwrap_or_else(|e| panic!("{s} {t}: {e}"));
                    for case in [
                        PrefillCase {
                            b: 1,
                            n: 300,
                            h: 2,
                            hkv: 1,
                            extra_summaries: 0,
                            large_logits: false,
                            strided: false,
                            scale: None,
                        },
                        PrefillCase {
                            b: 2,
                            n: 77,
                            h: 2,
                            hkv: 2,
                            extra_summaries: 1,
                            large_logits: true,
                            strided: false,
                            scale: None,
                        },
                    ] {
                        reports.push(verify::check_prefill(&stream, &k, &case).unwrap());
                    }
                }
            }
        }
    }
    // The wgmma engine's tiles, on a device that runs them.
    if rt.arch() == "sm_90a".parse::<Arch>().unwrap() {
        for (d, local, dtype) in [
            (128, LocalMode::Block, DType::Bf16),
            (64, LocalMode::Sliding, DType::F16),
            (128, LocalMode::Sliding, DType::F16),
            (256, LocalMode::Block, DType::Bf16),
        ] {
            let s = spec(Op::Prefill, d, 256, 16, local, dtype, 1);
            // D = 256: one Q buffer and 64-key blocks fit; 3 consumers would spill (128 fp32 of O)
            for warps in if d == 256 { vec![12] } else { vec![12, 16] } {
                for bn in [64, 128] {
                    for stages in [2, 3, 4] {
                        let Ok(t) = Tile::default_for(&s, rt.arch()).with_overrides(
                            &s,
                            &format!(
                                "engine=wgmma,warps={warps},block_m={},block_n={bn},stages={stages}",
                                64 * (warps / 4 - 1)
                            ),
                        ) else {
                            continue;
                        };
                        if t.validate_for(&s, rt.arch()).is_err() {
                            continue;
                        }
                        let k = rt
                            .kernel_with_tile(&s, &t)
                            .unwrap_or_else(|e| panic!("{s} {t}: {e}"));
                        for case in [
                            PrefillCase {
                                b: 2,
                                n: 700,
                                h: 4,
                                hkv: 2,
                                extra_summaries: 2,
                                large_logits: true,
                                strided: true,
                                scale: None,
                            },
                            PrefillCase {
                                b: 1,
                                n: 61,
                                h: 3,
                                hkv: 1,
                                extra_summaries: 0,
                                large_logits: false,
                                strided: false,
                                scale: Some(0.2),
                            },
                        ] {
                            reports.push(verify::check_prefill(&stream, &k, &case).unwrap());
                        }
                    }
                }
            }
        }
    }
    settle("prefill tiles", reports);
}

fn decode_cases(w: i32, c: i32, h: usize) -> Vec<DecodeCase> {
    let lens = vec![1, c - 1, c, w, w + 1, 3 * w + c + 5, 9 * w + 3];
    let max_nc = (9 * w as usize + 3) / c as usize + 2;
    vec![
        DecodeCase {
            h,
            lens: lens.clone(),
            max_nc,
            splits: None,
            large_logits: false,
        },
        DecodeCase {
            h,
            lens: lens.clone(),
            max_nc,
            splits: Some(1),
            large_logits: false,
        },
        DecodeCase {
            h,
            lens: lens.clone(),
            max_nc,
            splits: Some(3),
            large_logits: true,
        },
        DecodeCase {
            h,
            lens: vec![9 * w + 3],
            max_nc,
            splits: Some(7),
            large_logits: false,
        },
        DecodeCase {
            h,
            lens: vec![2],
            max_nc,
            splits: Some(4),
            large_logits: false,
        },
        // more splits than a warp's lanes (the last-block merge takes them 32 at a time; most
        // of these splits are empty at the short lengths)
        DecodeCase {
            h,
            lens,
            max_nc,
            splits: Some(70),
            large_logits: true,
        },
    ]
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn decode_grid() {
    let (rt, stream) = gpu("decode");
    let mut reports = Vec::new();
    let shapes = [
        (64u32, 128u32, 8u32),
        (128, 512, 64),
        (128, 64, 16),
        (32, 32, 8),
        (96, 64, 32),
        (256, 64, 16),
    ];
    let specs = || {
        shapes.into_iter().flat_map(|(d, w, c)| {
            LocalMode::ALL.into_iter().flat_map(move |local| {
                DType::ALL.into_iter().flat_map(move |dtype| {
                    [(1u32, 4usize), (4, 8), (20, 40)]
                        .into_iter()
                        .filter(move |&(g, _)| !(d == 256 && g == 20 && dtype == DType::F16))
                        .map(move |(g, h)| (spec(Op::Decode, d, w, c, local, dtype, g), w, c, h))
                })
            })
        })
    };
    let tiles = |s: &flasheva::KernelSpec| with_other_head_tile(s, backends(&rt, s));
    let modules: Vec<_> = specs()
        .flat_map(|(s, ..)| tiles(&s).into_iter().map(move |t| (s, Some(t))))
        .collect();
    load_all(&rt, &modules);
    for (s, w, c, h) in specs() {
        for t in tiles(&s) {
            let k = rt
                .kernel_with_tile(&s, &t)
                .unwrap_or_else(|e| panic!("{s} {t}: {e}"));
            for case in decode_cases(w as i32, c as i32, h) {
                reports.push(
                    verify::check_decode(&stream, &k, &case).unwrap_or_else(|e| panic!("{s}: {e}")),
                );
            }
        }
    }
    settle("decode", reports);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn decode_every_tile_shape() {
    let (rt, stream) = gpu("decode tiles");
    let mut reports = Vec::new();
    let s = spec(Op::Decode, 128, 128, 16, LocalMode::Sliding, DType::Bf16, 4);
    for (bm, bn) in [0, 8]
        .into_iter()
        .flat_map(|m| [16, 32, 64].map(|n| (m, n)))
    {
        for warps in [1, 2, 4, 8] {
            // (4-6 stages: the decode's deeper pipelines; the fit check drops what does not fit)
            for stages in 1..=6 {
                let Ok(t) = Tile::new(
                    &s,
                    TileParams {
                        block_m: bm,
                        block_n: bn,
                        warps,
                        stages,
                        splits: 0,
                        ..Default::default()
                    },
                ) else {
                    continue;
                };
                if t.validate_for(&s, Arch::new(9, 0)).is_err() {
                    continue;
                }
                let k = rt.kernel_with_tile(&s, &t).unwrap();
                for case in decode_cases(128, 16, 8).into_iter().take(3) {
                    reports.push(verify::check_decode(&stream, &k, &case).unwrap());
                }
            }
        }
    }
    // On sm_90a the decode fed by bulk tensor copies, every tile, D = 128 and 64, every case
    // (splits auto, 1, 3, 7; large logits; lengths from 1 to past several windows)
    let arch = rt.arch();
    for s in [
        s,
        spec(Op::Decode, 64, 128, 8, LocalMode::Block, DType::F16, 4),
    ] {
        for bn in [16, 32, 64] {
            for warps in [3, 5, 9] {
                for stages in [2, 4, 6, 8] {
                    // (stages a multiple of the consumer warps: the rule drops the others)
                    let Ok(t) = Tile::new(
                        &s,
                        TileParams {
                            engine: flasheva::tile::Engine::Tma,
                            block_m: 0,
                            block_n: bn,
                            warps,
                            stages,
                            splits: 0,
                        },
                    ) else {
                        continue;
                    };
                    if t.validate_for(&s, arch).is_err() {
                        continue; // not sm_90a, or over its shared memory
                    }
                    let k = rt.kernel_with_tile(&s, &t).unwrap();
                    for case in decode_cases(s.window_or_zero() as i32, s.chunk() as i32, 8) {
                        reports.push(verify::check_decode(&stream, &k, &case).unwrap());
                    }
                }
            }
        }
    }
    settle("decode tiles", reports);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn decode_equals_the_prefill_row() {
    let (rt, stream) = gpu("decode vs prefill");
    let mut reports = Vec::new();
    for (d, w, c) in [(64u32, 128u32, 8u32), (128, 512, 64)] {
        for local in LocalMode::ALL {
            for dtype in DType::ALL {
                let (sd, sp) = (
                    spec(Op::Decode, d, w, c, local, dtype, 4),
                    spec(Op::Prefill, d, w, c, local, dtype, 1),
                );
                // Each backend's decode against its own prefill.
                for (td, tp) in backends(&rt, &sd).into_iter().zip(backends(&rt, &sp)) {
                    let dec = rt.kernel_with_tile(&sd, &td).unwrap();
                    let pre = rt.kernel_with_tile(&sp, &tp).unwrap();
                    for len in [1usize, c as usize, w as usize + 1, 3 * w as usize + 7] {
                        reports.push(
                            verify::check_decode_vs_prefill(&stream, &dec, &pre, 8, len).unwrap(),
                        );
                    }
                }
            }
        }
    }
    settle("decode vs prefill", reports);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn chunk_ops_grid() {
    let (rt, stream) = gpu("chunk ops");
    let mut reports = Vec::new();
    for d in [32u32, 64, 96, 128, 256] {
        for c in [1u32, 8, 64, 100] {
            for dtype in DType::ALL {
                let ms = spec(Op::ChunkMean, d, c, c, LocalMode::Block, dtype, 1);
                let ss = spec(Op::ChunkSummarize, d, c, c, LocalMode::Block, dtype, 1);
                for (tm, ts) in backends(&rt, &ms).into_iter().zip(backends(&rt, &ss)) {
                    let m = rt
                        .kernel_with_tile(&ms, &tm)
                        .unwrap_or_else(|e| panic!("{ms} {tm}: {e}"));
                    let s = rt
                        .kernel_with_tile(&ss, &ts)
                        .unwrap_or_else(|e| panic!("{ss} {ts}: {e}"));
                    for (b, n, g) in [
                        (1usize, c as usize - 1, 4usize),
                        (2, 5 * c as usize + 3, 3),
                        (1, 7 * c as usize, 12),
                    ] {
                        reports.push(
                            verify::check_chunk(
                                &stream,
                                &m,
                                &ChunkCase {
                                    b,
                                    n,
                                    heads: g,
                                    strided: false,
                                    large: false,
                                },
                            )
                            .unwrap(),
                        );
                        reports.push(
                            verify::check_chunk(
                                &stream,
                                &s,
                                &ChunkCase {
                                    b,
                                    n,
                                    heads: g,
                                    strided: false,
                                    large: false,
                                },
                            )
                            .unwrap(),
                        );
                    }
                    reports.push(
                        verify::check_chunk(
                            &stream,
                            &m,
                            &ChunkCase {
                                b: 2,
                                n: 3 * c as usize,
                                heads: 5,
                                strided: true,
                                large: false,
                            },
                        )
                        .unwrap(),
                    );
                    reports.push(
                        verify::check_chunk(
                            &stream,
                            &s,
                            &ChunkCase {
                                b: 1,
                                n: 4 * c as usize,
                                heads: 2,
                                strided: false,
                                large: true,
                            },
                        )
                        .unwrap(),
                    );
                }
            }
        }
    }
    for warps in [1, 2, 8] {
        let sp = spec(
            Op::ChunkSummarize,
            128,
            64,
            64,
            LocalMode::Block,
            DType::Bf16,
            1,
        );
        let k = rt
            .kernel_with_tile(
                &sp,
                &Tile::default_for(&sp, Arch::new(9, 0))
                    .with_overrides(&sp, &format!("warps={warps}"))
                    .unwrap(),
            )
            .unwrap();
        reports.push(
            verify::check_chunk(
                &stream,
                &k,
                &ChunkCase {
                    b: 1,
                    n: 300,
                    heads: 2,
                    strided: false,
                    large: false,
                },
            )
            .unwrap(),
        );
        let sp = spec(Op::ChunkMean, 128, 64, 64, LocalMode::Block, DType::Bf16, 1);
        let k = rt
            .kernel_with_tile(
                &sp,
                &Tile::default_for(&sp, Arch::new(9, 0))
                    .with_overrides(&sp, &format!("warps={warps}"))
                    .unwrap(),
            )
            .unwrap();
        reports.push(
            verify::check_chunk(
                &stream,
                &k,
                &ChunkCase {
                    b: 1,
                    n: 300,
                    heads: 7,
                    strided: false,
                    large: false,
                },
            )
            .unwrap(),
        );
    }
    settle("chunk ops", reports);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn empty_batches_launch_nothing_and_bad_tensors_are_errors() {
    let (rt, stream) = gpu("empty and invalid");
    let s = spec(Op::Prefill, 64, 128, 8, LocalMode::Block, DType::Bf16, 1);
    let k = rt.kernel(&s).unwrap();
    for (b, n) in [(0usize, 16usize), (2, 0)] {
        let r = verify::check_prefill(
            &stream,
            &k,
            &PrefillCase {
                b,
                n,
                h: 2,
                hkv: 2,
                extra_summaries: 0,
                large_logits: false,
                strided: false,
                scale: None,
            },
        );
        let r = r.unwrap();
        assert!(r.pass, "{r}");
    }
    // A decode kernel of group 4 refuses 6 query heads with a message naming the tensor.
    let d = rt
        .kernel(&spec(
            Op::Decode,
            64,
            128,
            8,
            LocalMode::Block,
            DType::Bf16,
            4,
        ))
        .unwrap();
    let e = verify::check_decode(
        &stream,
        &d,
        &DecodeCase {
            h: 6,
            lens: vec![5],
            max_nc: 4,
            splits: Some(1),
            large_logits: false,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("tensor q"), "{e}");
    println!("SUMMARY empty and invalid: ok");
}

/// A small run of every op, for compute-sanitizer (memcheck, racecheck): the device script runs
/// this test alone under each tool.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn sanitizer_subset() {
    let (rt, stream) = gpu("sanitizer subset");
    let mut reports = Vec::new();
    let p1 = rt
        .kernel(&spec(
            Op::Prefill,
            64,
            64,
            8,
            LocalMode::Block,
            DType::Bf16,
            1,
        ))
        .unwrap();
    reports.push(
        verify::check_prefill(
            &stream,
            &p1,
            &PrefillCase {
                b: 2,
                n: 150,
                h: 4,
                hkv: 2,
                extra_summaries: 1,
                large_logits: false,
                strided: true,
                scale: None,
            },
        )
        .unwrap(),
    );
    let p2 = rt
        .kernel(&spec(
            Op::Prefill,
            128,
            128,
            16,
            LocalMode::Sliding,
            DType::F16,
            1,
        ))
        .unwrap();
    reports.push(
        verify::check_prefill(
            &stream,
            &p2,
            &PrefillCase {
                b: 1,
                n: 200,
                h: 2,
                hkv: 1,
                extra_summaries: 0,
                large_logits: false,
                strided: false,
                scale: None,
            },
        )
        .unwrap(),
    );
    let d = rt
        .kernel(&spec(
            Op::Decode,
            128,
            128,
            16,
            LocalMode::Block,
            DType::Bf16,
            4,
        ))
        .unwrap();
    reports.push(
        verify::check_decode(
            &stream,
            &d,
            &DecodeCase {
                h: 8,
                lens: vec![1, 70, 300],
                max_nc: 20,
                splits: Some(3),
                large_logits: false,
            },
        )
        .unwrap(),
    );
    reports.push(
        verify::check_decode(
            &stream,
            &d,
            &DecodeCase {
                h: 8,
                lens: vec![1, 70, 300],
                max_nc: 20,
                splits: Some(1),
                large_logits: false,
            },
        )
        .unwrap(),
    );
    let m = rt
        .kernel(&spec(
            Op::ChunkMean,
            96,
            8,
            8,
            LocalMode::Block,
            DType::F16,
            1,
        ))
        .unwrap();
    reports.push(
        verify::check_chunk(
            &stream,
            &m,
            &ChunkCase {
                b: 2,
                n: 37,
                heads: 3,
                strided: true,
                large: false,
            },
        )
        .unwrap(),
    );
    let s = rt
        .kernel(&spec(
            Op::ChunkSummarize,
            64,
            16,
            16,
            LocalMode::Block,
            DType::Bf16,
            1,
        ))
        .unwrap();
    reports.push(
        verify::check_chunk(
            &stream,
            &s,
            &ChunkCase {
                b: 2,
                n: 50,
                heads: 2,
                strided: false,
                large: false,
            },
        )
        .unwrap(),
    );
    // The mma.sync prefill too, on a device whose default is the wgmma kernel.
    let sp = spec(Op::Prefill, 128, 128, 16, LocalMode::Block, DType::Bf16, 1);
    let mma = Tile::default_for(&sp, Arch::new(9, 0));
    let p3 = rt.kernel_with_tile(&sp, &mma).unwrap();
    reports.push(
        verify::check_prefill(
            &stream,
            &p3,
            &PrefillCase {
                b: 1,
                n: 200,
                h: 2,
                hkv: 1,
                extra_summaries: 0,
                large_logits: true,
                strided: false,
                scale: None,
            },
        )
        .unwrap(),
    );
    // The Triton backend's prefill and split decode (with its combine kernel), where it runs.
    if let Some(t) = triton_tile(&rt, &sp) {
        let p4 = rt.kernel_with_tile(&sp, &t).unwrap();
        reports.push(
            verify::check_prefill(
                &stream,
                &p4,
                &PrefillCase {
                    b: 1,
                    n: 200,
                    h: 2,
                    hkv: 1,
                    extra_summaries: 2,
                    large_logits: true,
                    strided: true,
                    scale: None,
                },
            )
            .unwrap(),
        );
        let sd = spec(Op::Decode, 128, 128, 16, LocalMode::Sliding, DType::Bf16, 4);
        let td = triton_tile(&rt, &sd).expect("triton runs here");
        let d4 = rt.kernel_with_tile(&sd, &td).unwrap();
        for splits in [None, Some(3)] {
            reports.push(
                verify::check_decode(
                    &stream,
                    &d4,
                    &DecodeCase {
                        h: 8,
                        lens: vec![1, 17, 129, 300, 0],
                        max_nc: 20,
                        splits,
                        large_logits: true,
                    },
                )
                .unwrap(),
            );
        }
        // and the backward (the default prefill_bwd kernels, the chunk ops' gradients): B=2 of N
        // tokens, H=4, Hkv=2, one extra summary row, large logits, padded strides
        let bwd_check = |k: &Kernel, n: usize, deterministic: bool| {
            let mut p =
                flasheva::ops::Problem::new(flasheva::workload::Workload::new(k.spec, 2, n, 4, 2));
            p.summary_rows += 1;
            p.deterministic = deterministic;
            let case = verify::Case {
                problem: p,
                large_logits: true,
                strided: true,
            };
            verify::check(&stream, k, &case).unwrap()
        };
        for (op, n) in [
            (Op::PrefillBwd, 150usize),
            (Op::ChunkSummarizeBwd, 70),
            (Op::ChunkMeanBwd, 70),
        ] {
            let sb = spec(op, 64, 64, 16, LocalMode::Sliding, DType::Bf16, 1);
            reports.push(bwd_check(&rt.kernel(&sb).unwrap(), n, false));
        }
        // the backward's other engines (the default is checked above): Triton, mma and, on
        // sm_90a, wgmma; two stages, summary segments
        let sb = spec(
            Op::PrefillBwd,
            64,
            64,
            16,
            LocalMode::Sliding,
            DType::Bf16,
            1,
        );
        let mut tiles = vec![
            Tile::default_for_backend(&sb, rt.arch(), flasheva::tile::Backend::Triton),
            bwd_tile(&sb, flasheva::tile::Engine::Mma, 32, 4, 2),
        ];
        if rt.arch() == "sm_90a".parse::<Arch>().unwrap() {
            tiles.push(bwd_tile(&sb, flasheva::tile::Engine::Wgmma, 64, 4, 2));
        }
        let default = Tile::default_for(&sb, rt.arch());
        tiles.retain(|t| *t != default);
        for t in tiles {
            reports.push(bwd_check(
                &rt.kernel_with_tile(&sb, &t).unwrap(),
                150,
                false,
            ));
        }
        // the wgmma backward's atomic dQ mode (two warpgroups at D = 128) and its deterministic one
        if rt.arch() == "sm_90a".parse::<Arch>().unwrap() {
            let s128 = spec(
                Op::PrefillBwd,
                128,
                64,
                16,
                LocalMode::Sliding,
                DType::Bf16,
                1,
            );
            let t = bwd_tile(&s128, flasheva::tile::Engine::Wgmma, 64, 8, 2);
            let k = rt.kernel_with_tile(&s128, &t).unwrap();
            for deterministic in [false, true] {
                reports.push(bwd_check(&k, 150, deterministic));
            }
        }
        // the serving ops: extend (mixed L0 and T) and append
        for op in [Op::Extend, Op::Append] {
            let se = spec(op, 64, 32, 8, LocalMode::Sliding, DType::Bf16, 1);
            let ke = rt.kernel(&se).unwrap();
            let cp = flasheva::ops::of(op)
                .check_problem(&flasheva::workload::Workload::new(se, 1, 100, 4, 2));
            reports.push(
                verify::check(
                    &stream,
                    &ke,
                    &verify::Case {
                        problem: cp.problem,
                        large_logits: cp.large_logits,
                        strided: true,
                    },
                )
                .unwrap(),
            );
        }
    }
    settle("sanitizer subset", reports);
}

/// The mma backward's tiles backward_grid runs beside the default (Triton) kernels: one stage and
/// two, 2 to 8 warps, every step size.
/// A CUDA backward tile of `engine`: block_m query (or key) rows a step, 16 held rows per warp.
fn bwd_tile(
    s: &flasheva::spec::KernelSpec,
    engine: flasheva::tile::Engine,
    block_m: u32,
    warps: u32,
    stages: u32,
) -> Tile {
    let t = TileParams {
        engine,
        block_m,
        block_n: 16 * warps,
        warps,
        stages,
        splits: 0,
    };
    Tile::new(s, t).unwrap_or_else(|e| panic!("{s} {t:?}: {e}"))
}

/// `cases`, and for a kernel with an atomic dQ mode (the two-warpgroup wgmma backward at D = 128:
/// its default) the same cases again in the deterministic mode.
fn with_deterministic(k: &Kernel, cases: &[flasheva::verify::Case]) -> Vec<flasheva::verify::Case> {
    let mut v = cases.to_vec();
    if flasheva::ops::prefill_bwd::has_atomic_mode(&k.spec, &k.tile.params()) {
        v.extend(cases.iter().map(|c| {
            let mut d = c.clone();
            d.problem.deterministic = true;
            d
        }));
    }
    v
}

/// The deterministic backward gives the same bits run to run on every engine (the wgmma kernels'
/// deterministic mode included). (The atomic mode promises no such thing and is not run here.)
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn backward_deterministic_mode_is_bitwise_reproducible() {
    let (rt, stream) = gpu("backward reproducibility");
    // the CUDA engines are checked either way; the Triton kernels where Triton is here
    let triton = triton_here(&rt);
    use flasheva::ops::Problem;
    use flasheva::workload::Workload;
    let mut checked = 0;
    for local in LocalMode::ALL {
        let s = spec(Op::PrefillBwd, 128, 64, 16, local, DType::Bf16, 1);
        let mut tiles = vec![Tile::default_for(&s, rt.arch())];
        tiles.extend(backward_tiles(&rt, &s));
        tiles.retain(|t| triton || t.engine() != flasheva::tile::Engine::Triton);
        let mut p = Problem::new(Workload::new(s, 2, 1500, 4, 2));
        p.deterministic = true;
        let (inputs, _) = verify::random_inputs(&p, false);
        let bits = |o: &[flasheva::hostdata::HostTensor]| -> Vec<Vec<u64>> {
            o.iter()
                .map(|t| t.to_f64().iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        for t in tiles {
            let k = rt
                .kernel_with_tile(&s, &t)
                .unwrap_or_else(|e| panic!("{s} {t:?}: {e}"));
            let first = bits(&verify::run_once(&stream, &k, &p, &inputs, 0).unwrap());
            let mut differing = 0;
            for _ in 0..4 {
                let again = bits(&verify::run_once(&stream, &k, &p, &inputs, 0).unwrap());
                differing += (again != first) as usize;
            }
            println!(
                "{s} {}: {differing} of 4 repeats differ",
                t.name(Op::PrefillBwd)
            );
            assert_eq!(
                differing, 0,
                "{s} {t:?}: the deterministic mode changed bits"
            );
            checked += 1;
        }
    }
    println!("SUMMARY backward reproducibility: {checked} kernels bitwise reproducible");
    assert!(checked > 0, "no backward kernel was checked");
}

/// The tiles of `s` the backward grid checks besides the default one: the Triton kernels' default
/// (when the default is a CUDA tile), the mma kernels at D <= 128 (one stage and two, 2 to 8
/// warps, every step size), and on sm_90a the wgmma kernels at D = 64 and 128 (one and two
/// warpgroups, one and two stages).
fn backward_tiles(rt: &Runtime, s: &flasheva::spec::KernelSpec) -> Vec<Tile> {
    use flasheva::tile::Engine::{Mma, Wgmma};
    let mut v = vec![Tile::default_for_backend(
        s,
        rt.arch(),
        flasheva::tile::Backend::Triton,
    )];
    if s.head_dim() <= 128 {
        for (m, w, st) in [(32, 4, 2), (16, 2, 1), (64, 8, 2)] {
            v.push(bwd_tile(s, Mma, m, w, st));
        }
    }
    if rt.arch() == "sm_90a".parse::<Arch>().unwrap() && matches!(s.head_dim(), 64 | 128) {
        for (w, st) in [(4, 2), (8, 1), (4, 1), (8, 2)] {
            v.push(bwd_tile(s, Wgmma, 64, w, st));
        }
    }
    let default = Tile::default_for(s, rt.arch());
    v.retain(|t| *t != default);
    v
}

/// The backward ops (prefill_bwd's Triton kernels and, at D <= 128, its mma kernels) against the
/// float64 gradients: every head dim, both modes and dtypes, edge lengths, GQA, extra summary
/// rows, padded strides and peaked softmax rows; every gradient tensor checked (see
/// verify::tolerance for the bounds).
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn backward_grid() {
    let (rt, stream) = gpu("backward");
    if !triton_here(&rt) {
        return;
    }
    use flasheva::ops::Problem;
    use flasheva::verify::Case;
    use flasheva::workload::Workload;
    let case = |spec, b, n, h, hkv, extra: usize, large, strided| {
        let mut p = Problem::new(Workload::new(spec, b, n, h, hkv));
        p.summary_rows += extra;
        Case {
            problem: p,
            large_logits: large,
            strided,
        }
    };
    let mut reports = Vec::new();
    let shapes = [
        (64u32, 128u32, 8u32),
        (128, 64, 16),
        (32, 32, 8),
        (96, 64, 32),
        (256, 32, 16),
    ];
    // every module first, eight at a time (a Triton backward module takes seconds to compile)
    let mut modules = Vec::new();
    for (d, w, c) in shapes {
        for local in LocalMode::ALL {
            for dtype in DType::ALL {
                let s = spec(Op::PrefillBwd, d, w, c, local, dtype, 1);
                modules.push((s, None));
                modules.extend(backward_tiles(&rt, &s).into_iter().map(|t| (s, Some(t))));
            }
        }
    }
    for d in [32u32, 64, 128, 256] {
        for c in [1u32, 8, 64, 100] {
            for dtype in DType::ALL {
                for op in [Op::ChunkSummarizeBwd, Op::ChunkMeanBwd] {
                    modules.push((spec(op, d, c, c, LocalMode::Block, dtype, 1), None));
                }
            }
        }
    }
    load_all(&rt, &modules);
    for (d, w, c) in shapes {
        for local in LocalMode::ALL {
            for dtype in DType::ALL {
                let s = spec(Op::PrefillBwd, d, w, c, local, dtype, 1);
                let k = rt.kernel(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
                let (wu, cu) = (w as usize, c as usize);
                let mut cases = Vec::new();
                for n in [
                    1,
                    cu.saturating_sub(1).max(1),
                    wu - 1,
                    wu + cu + 3,
                    2 * wu + 7,
                ] {
                    cases.push(case(s, 1, n, 4, 4, 0, false, false));
                }
                cases.push(case(s, 2, 2 * wu + 7, 8, 2, 3, false, false));
                cases.push(case(s, 2, wu + 17, 4, 1, 0, true, false));
                cases.push(case(s, 1, 2 * wu + 1, 2, 2, 1, false, true));
                for cs in with_deterministic(&k, &cases) {
                    reports.push(
                        verify::check(&stream, &k, &cs).unwrap_or_else(|e| panic!("{s}: {e}")),
                    );
                }
                // the other engines on the same cases: the Triton kernels, the mma kernels (one
                // stage and two, 2 to 8 warps, every step size), the wgmma kernels on sm_90a
                // (their atomic dQ mode and the deterministic one)
                for t in backward_tiles(&rt, &s) {
                    let km = rt
                        .kernel_with_tile(&s, &t)
                        .unwrap_or_else(|e| panic!("{s} {t:?}: {e}"));
                    for cs in with_deterministic(&km, &cases) {
                        reports.push(
                            verify::check(&stream, &km, &cs)
                                .unwrap_or_else(|e| panic!("{s} {t:?}: {e}")),
                        );
                    }
                }
            }
        }
    }
    // Long summary ranges: more than 128 summaries (summary blocks past the first of 64 and 128
    // rows, their partial-sum rows, several segments, whole-visible summary steps, and the dQ
    // kernel's later summary tiles), every engine, GQA and extra summary rows.
    for local in LocalMode::ALL {
        let s = spec(Op::PrefillBwd, 128, 64, 16, local, DType::Bf16, 1);
        let long = case(s, 1, 2200, 2, 1, 3, false, false);
        let mut tiles = vec![Tile::default_for(&s, rt.arch())];
        tiles.extend(backward_tiles(&rt, &s));
        for t in tiles {
            let k = rt
                .kernel_with_tile(&s, &t)
                .unwrap_or_else(|e| panic!("{s} {t:?}: {e}"));
            for cs in with_deterministic(&k, std::slice::from_ref(&long)) {
                reports.push(
                    verify::check(&stream, &k, &cs).unwrap_or_else(|e| panic!("{s} {t:?}: {e}")),
                );
            }
        }
    }
    for d in [32u32, 64, 128, 256] {
        for c in [1u32, 8, 64, 100] {
            for dtype in DType::ALL {
                let s = spec(Op::ChunkSummarizeBwd, d, c, c, LocalMode::Block, dtype, 1);
                let m = spec(Op::ChunkMeanBwd, d, c, c, LocalMode::Block, dtype, 1);
                let (ks, km) = (rt.kernel(&s).unwrap(), rt.kernel(&m).unwrap());
                let cu = c as usize;
                for (b, n, heads, extra, large) in [
                    (1usize, cu.saturating_sub(1), 3usize, 1usize, false),
                    (2, 5 * cu + 3, 2, 2, true),
                    (1, 7 * cu, 5, 0, false),
                ] {
                    reports.push(
                        verify::check(
                            &stream,
                            &ks,
                            &case(s, b, n, heads, heads, extra, large, false),
                        )
                        .unwrap(),
                    );
                    reports.push(
                        verify::check(
                            &stream,
                            &km,
                            &case(m, b, n, heads, heads, extra, false, true),
                        )
                        .unwrap(),
                    );
                }
            }
        }
    }
    settle("backward", reports);
}

/// extend and append (Triton kernels so far) against the float64 references (extend row t ==
/// prefill row L0 + t, checked on the CPU in reference.rs): every head dim, both modes and
/// dtypes, mixed L0 and T in one batch (L0 = 0, T = 1, T < C, T crossing chunk and window
/// boundaries, T > W, T = 0), GQA and MQA, large logits, padded strides.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn extend_and_append_grid() {
    let (rt, stream) = gpu("extend");
    if !triton_here(&rt) {
        return;
    }
    use flasheva::ops::{self, Problem};
    use flasheva::verify::Case;
    use flasheva::workload::Workload;
    let mut reports = Vec::new();
    let shapes = [
        (64u32, 128u32, 8u32),
        (128, 64, 16),
        (32, 32, 8),
        (128, 512, 64),
        (256, 32, 16),
        (96, 16, 16),
    ];
    let mut modules = Vec::new();
    for (d, w, c) in shapes {
        for dtype in DType::ALL {
            for local in LocalMode::ALL {
                let s = spec(Op::Extend, d, w, c, local, dtype, 1);
                modules.extend(backends(&rt, &s).into_iter().map(|t| (s, Some(t))));
            }
            modules.push((spec(Op::Append, d, w, c, LocalMode::Block, dtype, 1), None));
        }
    }
    load_all(&rt, &modules);
    for (d, w, c) in shapes {
        for dtype in DType::ALL {
            for local in LocalMode::ALL {
                let s = spec(Op::Extend, d, w, c, local, dtype, 1);
                // the default (on sm_90a the Hopper kernel at D = 64 and 128) and Triton
                let mut tiles = backends(&rt, &s);
                tiles.dedup();
                for (k, (h, hkv, tmax, large, strided)) in tiles
                    .iter()
                    .map(|t| {
                        rt.kernel_with_tile(&s, t)
                            .unwrap_or_else(|e| panic!("{s} {t}: {e}"))
                    })
                    .flat_map(|k| {
                        [
                            (4usize, 2usize, 10_000usize, true, false),
                            (8, 1, 3 * c as usize + 1, false, true),
                            (2, 2, 1, false, false),
                        ]
                        .map(|case| (k.clone(), case))
                    })
                {
                    let wl = Workload::new(s, 1, tmax, h, hkv);
                    let cp = ops::of(Op::Extend).check_problem(&wl);
                    let case = Case {
                        problem: cp.problem,
                        large_logits: large,
                        strided,
                    };
                    reports.push(
                        verify::check(&stream, &k, &case).unwrap_or_else(|e| panic!("{s}: {e}")),
                    );
                }
            }
            let a = spec(Op::Append, d, w, c, LocalMode::Block, dtype, 1);
            let k = rt.kernel(&a).unwrap_or_else(|e| panic!("{a}: {e}"));
            for (tmax, hkv, strided) in [
                (10_000usize, 2usize, false),
                (1, 1, true),
                (w as usize / 2, 3, false),
            ] {
                let mut p = ops::of(Op::Append)
                    .check_problem(&Workload::new(a, 1, tmax, hkv, hkv))
                    .problem;
                p.workload.h = hkv;
                p.workload.hkv = hkv;
                let case = Case {
                    problem: p,
                    large_logits: false,
                    strided,
                };
                reports
                    .push(verify::check(&stream, &k, &case).unwrap_or_else(|e| panic!("{a}: {e}")));
            }
            // nothing to do: B = 0 launches nothing
            let empty = Problem::new(Workload::new(a, 0, 4, 1, 1));
            assert!(
                verify::run_once(
                    &stream,
                    &k,
                    &empty,
                    &verify::random_inputs(&empty, false).0,
                    0
                )
                .is_ok()
            );
        }
    }
    settle("extend and append", reports);
}

/// CUDA graphs of serving steps: a decode step (the device's default tile, split with its
/// combine kernel, the workspace sized once for the capacities) and an extend step (Triton, where
/// it runs) are captured once and replayed 100 times each, with new lengths (start/count),
/// queries, keys and caches written into the same buffers before every replay; every replay is
/// checked against the float64 reference of its own inputs.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn captured_steps_replay_with_new_inputs() {
    let (rt, stream) = gpu("graphs");
    use flasheva::gpu::graph::StepGraph;
    use flasheva::gpu::tensor::OpTensors;
    use flasheva::ops::{self, Problem};
    use flasheva::verify::Case;
    use flasheva::workload::Workload;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let mut specs = vec![spec(
        Op::Decode,
        128,
        64,
        16,
        LocalMode::Sliding,
        DType::Bf16,
        4,
    )];
    if triton_here(&rt) {
        specs.push(spec(
            Op::Extend,
            64,
            64,
            16,
            LocalMode::Block,
            DType::F16,
            1,
        ));
    }
    let mut reports = Vec::new();
    for s in specs {
        let k = rt.kernel(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let def = ops::of(s.op());
        // capacities: 5 sequences, 8 query heads over 2 kv heads, 40 summary slots (decode:
        // lengths up to 640), extend: Tmax = 40 new tokens after up to 500 cached
        let (b, slots, tmax, max_l0) = (5usize, 40usize, 40usize, 500usize);
        let mut base = Problem::new(Workload::new(s, b, tmax, 8, 2).with_past(max_l0));
        if s.op() == Op::Decode {
            base = Problem::new(Workload::new(s, b, slots * 16, 8, 2));
            base.summary_rows = slots;
        }
        let splits = k.splits_for(&base);
        let (inputs, _) = verify::random_inputs(&base, false);
        let mut t = OpTensors::new(
            &stream,
            def,
            &base,
            def.workspace(&base, &k.tile, splits),
            &inputs,
            0,
        )
        .expect("tensors");
        let args = t.op_args(&base, splits);
        let graph = StepGraph::capture(&stream, |st| k.launch(st, &args)).expect("capture");
        for step in 0..100 {
            let mut p = base.clone();
            if s.op() == Op::Decode {
                p.lens = (0..b).map(|_| next(slots * 16 + 1) as i32).collect();
            } else {
                p.lens = (0..b).map(|_| next(max_l0 + 1) as i32).collect();
                p.counts = (0..b).map(|_| next(tmax + 1) as i32).collect();
            }
            let large = step % 4 == 0;
            let (inputs, seed) = verify::random_inputs(&p, large);
            for (dt, h) in t.inputs.iter_mut().zip(&inputs) {
                dt.restore(&stream, h).expect("upload");
            }
            t.poison_outputs(&stream).expect("poison");
            graph.replay().expect("replay");
            stream.synchronize().expect("replay ran");
            let got = t.download_outputs(&stream).expect("download");
            let case = Case {
                problem: p,
                large_logits: large,
                strided: false,
            };
            reports.push(verify::compare(&k, &case, &inputs, seed, &got));
        }
    }
    settle("graph replays", reports);
}

/// Paged and indirect caches (Triton kernels): decode, extend and append through a slot pool
/// and a page table, against the float64 references of the gathered contiguous layout, with
/// junk in every slot and page no sequence uses; pages of 3 rows (summaries straddle pages),
/// of 4 (the shift-and-mask path) and of 16 (a CUDA decode tile in one page: its page id loaded
/// a tile ahead), GQA, large logits, padded strides, split decode.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn paged_caches_grid() {
    let (rt, stream) = gpu("paged");
    // decode_paged on its CUDA kernel (the default) and its Triton kernel; extend_paged and
    // append_paged have only Triton kernels
    let triton = triton_here(&rt);
    use flasheva::ops;
    use flasheva::verify::Case;
    use flasheva::workload::Workload;
    let mut reports = Vec::new();
    let shapes = [(64u32, 128u32, 8u32), (128, 64, 16), (32, 32, 8)];
    let ops_here = [Op::DecodePaged, Op::ExtendPaged, Op::AppendPaged];
    let tiles_of = |s: &flasheva::KernelSpec| {
        let mut tiles = with_other_head_tile(s, backends(&rt, s));
        tiles.dedup();
        tiles.retain(|t| triton || t.engine() != flasheva::tile::Engine::Triton);
        tiles
    };
    let mut modules = Vec::new();
    for (d, w, c) in shapes {
        for dtype in DType::ALL {
            for local in LocalMode::ALL {
                for op in ops_here {
                    if op == Op::AppendPaged && local == LocalMode::Sliding {
                        continue;
                    }
                    let s = spec(op, d, w, c, local, dtype, 4);
                    modules.extend(tiles_of(&s).into_iter().map(|t| (s, Some(t))));
                }
            }
        }
    }
    load_all(&rt, &modules);
    for (d, w, c) in shapes {
        for dtype in DType::ALL {
            for local in LocalMode::ALL {
                for op in ops_here {
                    if op == Op::AppendPaged && local == LocalMode::Sliding {
                        continue; // append does not depend on the mode
                    }
                    let s = spec(op, d, w, c, local, dtype, 4);
                    let tiles = tiles_of(&s);
                    for (k, (n, strided, splits, page)) in tiles
                        .iter()
                        .map(|t| {
                            rt.kernel_with_tile(&s, t)
                                .unwrap_or_else(|e| panic!("{s}: {e}"))
                        })
                        .flat_map(|k| {
                            [
                                (3 * w as usize + 7, false, None, None),
                                (50, true, Some(3), Some(4)),
                                (4 * w as usize + 9, false, Some(4), Some(16)),
                            ]
                            .map(|case| (k.clone(), case))
                        })
                    {
                        let cp = ops::of(op).check_problem(&Workload::new(s, 1, n, 8, 2));
                        let mut problem = cp.problem;
                        if op == Op::DecodePaged {
                            problem.splits = splits;
                        }
                        if let Some(page) = page.filter(|_| op != Op::AppendPaged) {
                            // pages of a power-of-two size (the kernels' shift-and-mask path);
                            // the first case keeps check_problem's 3-row pages (division)
                            problem.page = page;
                            problem.summary_rows =
                                problem.summary_rows.max(1).div_ceil(page) * page;
                        }
                        let case = Case {
                            problem,
                            large_logits: cp.large_logits,
                            strided,
                        };
                        reports.push(
                            verify::check(&stream, &k, &case)
                                .unwrap_or_else(|e| panic!("{s}: {e}")),
                        );
                    }
                }
            }
        }
    }
    settle("paged caches", reports);
}
