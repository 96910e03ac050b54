//! Toolchain benchmarks (no GPU): rendering, key hashing, a cache hit, one NVRTC compile of a
//! prefill variant, and export / import of a 100-entry bundle.
//!
//!     scripts/with-nvrtc cargo bench --bench toolchain

use criterion::{Criterion, criterion_group, criterion_main};
use flasheva::cache::CacheStore;
use flasheva::cache::bundle::{self, ExportOptions};
use flasheva::compile::nvrtc::Nvrtc;
use flasheva::compile::{CompileJob, Compiler, options_for};
use flasheva::key::ArtifactId;
use flasheva::pipeline::Pipeline;
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::{Arch, Tile};

fn prefill_spec() -> KernelSpec {
    KernelSpec::new(
        Op::Prefill,
        &SpecParams {
            head_dim: Some(128),
            window: Some(512),
            chunk: Some(64),
            local: Some(LocalMode::Block),
            dtype: Some(DType::Bf16),
            group: None,
        },
    )
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let spec = prefill_spec();
    let arch = Arch::new(9, 0);
    let tile = Tile::default_for(&spec, arch);
    c.bench_function("render prefill d128", |b| {
        b.iter(|| flasheva::render::render(&spec, &tile).unwrap())
    });

    let nv = Nvrtc::load().expect("NVRTC (run through scripts/with-nvrtc)");
    let src = flasheva::render::render(&spec, &tile).unwrap();
    let opts = options_for(arch);
    c.bench_function("cache key of a rendered prefill", |b| {
        b.iter(|| {
            ArtifactId {
                crate_version: flasheva::CRATE_VERSION,
                spec: &spec,
                tile: &tile,
                source: &src,
                compiler: nv.id(),
                arch,
                options: &opts,
            }
            .key()
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let p = Pipeline::new(&store, &nv);
    p.ensure(&spec, &tile, arch).unwrap();
    c.bench_function("cache hit (render, key, verify every file)", |b| {
        b.iter(|| p.ensure(&spec, &tile, arch).unwrap())
    });

    let mut g = c.benchmark_group("nvrtc");
    g.sample_size(10);
    let name = spec.source_file_name();
    g.bench_function("compile prefill d128 sm_90 (PTX + cubin)", |b| {
        b.iter(|| {
            nv.compile(&CompileJob {
                program_name: &name,
                source: &src,
                arch,
                options: &opts,
            })
            .unwrap()
        })
    });
    g.finish();

    // 100 entries: chunk_mean for 50 chunk sizes on two archs.
    let many = tempfile::tempdir().unwrap();
    let mstore = CacheStore::open(many.path()).unwrap();
    let mp = Pipeline::new(&mstore, &nv);
    for chunk in 1..=50 {
        let s = KernelSpec::new(
            Op::ChunkMean,
            &SpecParams {
                head_dim: Some(64),
                chunk: Some(chunk),
                ..Default::default()
            },
        )
        .unwrap();
        for a in [Arch::new(8, 0), Arch::new(9, 0)] {
            mp.ensure(&s, &Tile::default_for(&s, a), a).unwrap();
        }
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b.flasheva");
    let mut g = c.benchmark_group("bundle");
    g.sample_size(10);
    g.bench_function("export 100 entries", |b| {
        b.iter(|| bundle::export(&mstore, &file, &ExportOptions::default(), None).unwrap())
    });
    g.bench_function("import 100 entries into an empty cache", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |d| {
                let s = CacheStore::open(d.path()).unwrap();
                let r = bundle::import(
                    &s,
                    &file,
                    &bundle::ImportOptions::default().allow_unsigned(true),
                )
                .unwrap();
                assert_eq!(r.added, 100);
                d
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(toolchain, benches);
criterion_main!(toolchain);
