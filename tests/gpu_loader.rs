//! The loader on a real GPU: kernels from an imported bundle load and run without compiling;
//! PTX of an older arch is used when no cubin fits; damaged artifacts are skipped; tuned winners
//! are used and can be switched off. Ignored unless asked for (`--include-ignored`); asked for,
//! a missing device fails the test.

mod common;

use common::spec;
use flasheva::cache::CacheStore;
use flasheva::cache::bundle::{self, ExportOptions};
use flasheva::cache::winner::{Bucket, CandidateResult, DeviceId, WINNER_FORMAT, WinnerRecord};
use flasheva::gpu::Gpu;
use flasheva::loader::{Origin, Runtime, RuntimeOptions};
use flasheva::pipeline::Pipeline;
use flasheva::spec::{DType, LocalMode, Op};
use flasheva::verify::{self, PrefillCase};
use flasheva::{Arch, Error, Tile};
use std::io::Write;

/// The GPU. These tests are ignored unless asked for (`--include-ignored`), and asked for they
/// need a GPU: its absence is a failure.
fn gpu(test: &str) -> Gpu {
    Gpu::open(0).unwrap_or_else(|e| panic!("{test}: needs a CUDA GPU: {e}"))
}

fn case() -> PrefillCase {
    PrefillCase {
        b: 2,
        n: 333,
        h: 4,
        hkv: 2,
        extra_summaries: 0,
        large_logits: false,
        strided: false,
        scale: None,
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn imported_bundle_runs_without_compiling() {
    let g = gpu("imported bundle");
    let (maj, min) = g.info().capability;
    let arch = Arch::preferred_for(maj, min);
    let s = spec(Op::Prefill, 64, 128, 8, LocalMode::Block, DType::Bf16, 1);
    // The "build machine": compile for this arch and export.
    let build = tempfile::tempdir().unwrap();
    let bstore = CacheStore::open(build.path()).unwrap();
    let nv = flasheva::compile::nvrtc::Nvrtc::load().unwrap();
    Pipeline::new(&bstore, &nv)
        .ensure(&s, &Tile::default_for(&s, arch), arch)
        .unwrap();
    let file = build.path().join("b.flasheva");
    bundle::export(&bstore, &file, &ExportOptions::default(), None).unwrap();
    // The "fleet machine": a loader that may not compile.
    let fleet = tempfile::tempdir().unwrap();
    let store = CacheStore::open(fleet.path()).unwrap();
    let no_compile = RuntimeOptions::default()
        .compile_on_miss(false)
        .use_tuned(true);
    let rt = Runtime::with_gpu(g.clone(), store.clone(), no_compile.clone());
    match rt.kernel(&s) {
        Err(Error::NotCached(miss)) => {
            let msg = miss.to_string();
            assert!(
                msg.contains("no cached kernel") && msg.contains("flasheva compile"),
                "{msg}"
            )
        }
        other => panic!("expected NotCached, got {other:?}"),
    }
    bundle::import(
        &store,
        &file,
        &bundle::ImportOptions::default().allow_unsigned(true),
    )
    .unwrap();
    let rt = Runtime::with_gpu(g.clone(), store, no_compile);
    let k = rt.kernel(&s).unwrap();
    assert!(matches!(k.origin, Origin::Cubin { .. }), "{:?}", k.origin);
    let stream = g.context().new_stream().unwrap();
    let r = verify::check_prefill(&stream, &k, &case()).unwrap();
    assert!(r.pass, "{r}");
    println!("SUMMARY loader: bundle imported and run from its cubin without compiling: {r}");
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn ptx_of_an_older_arch_is_used_and_damage_is_skipped() {
    let g = gpu("ptx fallback");
    let (maj, _) = g.info().capability;
    if maj < 9 {
        let _ = writeln!(
            std::io::stderr(),
            "GPU TEST SKIPPED: ptx fallback: needs a device newer than sm_8x to run sm_80 PTX"
        );
        return;
    }
    let s = spec(Op::Prefill, 64, 128, 8, LocalMode::Sliding, DType::F16, 1);
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let nv = flasheva::compile::nvrtc::Nvrtc::load().unwrap();
    let (a, b) = g.info().capability;
    // an mma tile (the wgmma engine has no PTX for older archs)
    let tile = Tile::default_for(&s, Arch::from_capability(a, b));
    // only an sm_80 build of the tile this device uses
    let built = Pipeline::new(&store, &nv)
        .ensure(&s, &tile, Arch::new(8, 0))
        .unwrap();
    let opts = RuntimeOptions::default()
        .compile_on_miss(false)
        .use_tuned(false);
    let rt = Runtime::with_gpu(g.clone(), store.clone(), opts.clone());
    let k = rt.kernel_with_tile(&s, &tile).unwrap();
    assert!(
        matches!(k.origin, Origin::Ptx { arch, .. } if arch == Arch::new(8, 0)),
        "{:?}",
        k.origin
    );
    let stream = g.context().new_stream().unwrap();
    let r = verify::check_prefill(&stream, &k, &case()).unwrap();
    assert!(r.pass, "{r}");
    // damage the PTX: the loader skips it (with a warning) and, not allowed to compile, says so
    let p = built.entry.dir.join("kernel.ptx");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[200] ^= 0x20;
    std::fs::write(&p, bytes).unwrap();
    let rt = Runtime::with_gpu(g.clone(), store.clone(), opts);
    match rt.kernel_with_tile(&s, &tile) {
        Err(Error::NotCached(miss)) => assert!(
            miss.refused
                .iter()
                .any(|r| r.reason.contains("does not match its sha256")),
            "{miss}"
        ),
        other => panic!("expected NotCached, got {other:?}"),
    }
    // allowed to compile, it replaces it with a fresh local build
    let rt = Runtime::with_gpu(
        g,
        store,
        RuntimeOptions::default()
            .compile_on_miss(true)
            .use_tuned(false),
    );
    let k = rt.kernel_with_tile(&s, &tile).unwrap();
    assert!(
        matches!(k.origin, Origin::Compiled { .. }),
        "{:?}",
        k.origin
    );
    println!("SUMMARY loader: PTX fallback ran correctly; damaged PTX skipped and rebuilt");
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn tuned_winners_are_used_unless_switched_off() {
    let g = gpu("winners");
    let s = spec(Op::Prefill, 64, 128, 8, LocalMode::Block, DType::Bf16, 1);
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let info = g.info().clone();
    let tile = Tile::default_for(&s, Arch::new(9, 0))
        .with_overrides(&s, "block_m=64,block_n=32,warps=4,stages=2")
        .unwrap();
    let c = CandidateResult {
        tile,
        key: None,
        status: flasheva::cache::winner::CandidateStatus::Ok,
        median_ms: Some(1.0),
        min_ms: None,
        max_ms: None,
        rate: None,
        rate_unit: "TFLOP/s".into(),
        rel_diff: Some(0.0),
    };
    store
        .put_winner(&WinnerRecord {
            format: WINNER_FORMAT,
            crate_version: flasheva::ARTIFACT_VERSION.into(),
            device: DeviceId {
                name: info.name.clone(),
                capability: info.capability,
                driver_version: 0,
                nvrtc_version: None,
            },
            spec: s,
            bucket: Bucket::of(Op::Prefill, 2, 333, 4, 2),
            shape: (2, 333, 4, 2),
            tile,
            artifact_key: None,
            median_ms: 1.0,
            default_tile: tile,
            default_median_ms: 1.0,
            candidates: vec![c],
            created_unix: 0,
        })
        .unwrap();
    let w = flasheva::workload::Workload::new(s, 2, 333, 4, 2);
    let rt = Runtime::with_gpu(
        g.clone(),
        store.clone(),
        RuntimeOptions::default()
            .compile_on_miss(true)
            .use_tuned(true),
    );
    assert_eq!(rt.tile_for_workload(&w), tile);
    let k = rt.kernel_for(&w).unwrap();
    let stream = g.context().new_stream().unwrap();
    assert!(verify::check_prefill(&stream, &k, &case()).unwrap().pass);
    let off = Runtime::with_gpu(
        g,
        store,
        RuntimeOptions::default()
            .compile_on_miss(true)
            .use_tuned(false),
    );
    assert_eq!(off.tile_for_workload(&w), off.default_tile(&s));
    println!("SUMMARY loader: tuned winner used; use_tuned=false gives the default");
}

/// The loader launches a tuned winner whichever backend won: a Triton tile compiled and recorded
/// as the winner on a "tuning machine", shipped in a bundle, loaded on a "fleet machine" that may
/// not compile (so Python and Triton are never called there) from its cubin, and correct.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn a_triton_winner_from_a_bundle_loads_without_compiling() {
    let g = gpu("triton winner");
    let triton = match flasheva::compile::triton::Triton::load() {
        Ok(t) => t,
        Err(e) => {
            assert!(
                !flasheva::config::require_triton().unwrap_or(false),
                "FLASHEVA_REQUIRE_TRITON=1 but Triton is missing: {e}"
            );
            let _ = writeln!(std::io::stderr(), "GPU TEST SKIPPED: triton winner: {e}");
            return;
        }
    };
    let info = g.info().clone();
    let arch = Arch::preferred_for(info.capability.0, info.capability.1);
    if !flasheva::tile::triton_targets(arch) {
        assert!(
            !flasheva::config::require_triton().unwrap_or(false),
            "Triton does not target {arch}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "GPU TEST SKIPPED: triton winner: Triton does not target {arch}"
        );
        return;
    }
    let s = spec(Op::Prefill, 64, 128, 8, LocalMode::Block, DType::Bf16, 1);
    let tile = Tile::default_for_backend(&s, arch, flasheva::tile::Backend::Triton);
    assert_ne!(
        tile,
        Tile::default_for(&s, arch),
        "a Triton tile, not the default"
    );
    let build = tempfile::tempdir().unwrap();
    let bstore = CacheStore::open(build.path()).unwrap();
    let built = Pipeline::new(&bstore, &triton)
        .ensure(&s, &tile, arch)
        .unwrap();
    let (b, n, h, hkv) = (2, 333, 4, 2);
    let c = CandidateResult {
        tile,
        key: Some(built.entry.meta.key),
        status: flasheva::cache::winner::CandidateStatus::Ok,
        median_ms: Some(1.0),
        min_ms: None,
        max_ms: None,
        rate: None,
        rate_unit: "TFLOP/s".into(),
        rel_diff: Some(0.0),
    };
    bstore
        .put_winner(&WinnerRecord {
            format: WINNER_FORMAT,
            crate_version: flasheva::ARTIFACT_VERSION.into(),
            device: DeviceId {
                name: info.name.clone(),
                capability: info.capability,
                driver_version: 0,
                nvrtc_version: None,
            },
            spec: s,
            bucket: Bucket::of(Op::Prefill, b, n, h, hkv),
            shape: (b, n, h, hkv),
            tile,
            artifact_key: Some(built.entry.meta.key),
            median_ms: 1.0,
            default_tile: Tile::default_for(&s, arch),
            default_median_ms: 2.0,
            candidates: vec![c],
            created_unix: 0,
        })
        .unwrap();
    let file = build.path().join("t.flasheva");
    bundle::export(
        &bstore,
        &file,
        &ExportOptions::default().winners_only(true),
        None,
    )
    .unwrap();

    let fleet = tempfile::tempdir().unwrap();
    let store = CacheStore::open(fleet.path()).unwrap();
    bundle::import(
        &store,
        &file,
        &bundle::ImportOptions::default().allow_unsigned(true),
    )
    .unwrap();
    let rt = Runtime::with_gpu(
        g.clone(),
        store,
        RuntimeOptions::default()
            .compile_on_miss(false)
            .use_tuned(true),
    );
    let w = flasheva::workload::Workload::new(s, b, n, h, hkv);
    assert_eq!(rt.tile_for_workload(&w), tile);
    let k = rt.kernel_for(&w).unwrap();
    assert_eq!(k.tile, tile);
    assert!(matches!(k.origin, Origin::Cubin { .. }), "{:?}", k.origin);
    let stream = g.context().new_stream().unwrap();
    let r = verify::check_prefill(&stream, &k, &case()).unwrap();
    assert!(r.pass, "{r}");
    println!(
        "SUMMARY loader: a Triton winner from a bundle, loaded from its cubin without compiling: {r}"
    );
}
