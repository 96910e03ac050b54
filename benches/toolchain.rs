//! Toolchain benchmarks (no GPU): planning a decode launch, rendering, key hashing, a cache hit, one NVRTC compile of a
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

/// The host-side planning of one decode launch (B=1, H=8, Hkv=2, D=64): what every launch pays
/// before the driver call (shapes, strides and dtypes checked, parameters laid out, the split).
fn plan_decode(c: &mut Criterion) {
    use flasheva::ops::{self, DeviceFacts, OpArgs, Problem};
    use flasheva::tensor::{ElemType, TensorArg};
    use flasheva::workload::Workload;
    let spec = KernelSpec::new(
        Op::Decode,
        &SpecParams {
            head_dim: Some(64),
            window: Some(64),
            chunk: Some(16),
            local: Some(LocalMode::Block),
            dtype: Some(DType::Bf16),
            group: Some(4),
        },
    )
    .unwrap();
    let tile = Tile::default_for(&spec, Arch::new(9, 0));
    let e = ElemType::Bf16;
    let mut at = 0x7000_0000_0000u64;
    let mut t = |name: &str, dt: ElemType, shape: &[usize]| {
        at += 1 << 20;
        TensorArg::contiguous(name, at, dt, shape)
    };
    let tensors = vec![
        t("q", e, &[1, 8, 64]),
        t("k_ring", e, &[1, 64, 2, 64]),
        t("v_ring", e, &[1, 64, 2, 64]),
        t("ks", e, &[1, 4, 2, 64]),
        t("vs", e, &[1, 4, 2, 64]),
        t("len", ElemType::I32, &[1]),
        t("o", e, &[1, 8, 64]),
        t("lse", ElemType::F32, &[1, 8]),
    ];
    let op = ops::of(Op::Decode);
    let mut p = Problem::new(Workload::new(spec, 1, 64, 8, 2));
    p.summary_rows = 4;
    let device = DeviceFacts::new(132);
    c.bench_function(
        "plan a decode launch (split choice, checks, parameters)",
        |b| {
            b.iter(|| {
                let splits = op.splits(&p, &tile, 132);
                let ws = op.workspace(&p, &tile, splits);
                let args = OpArgs {
                    tensors: tensors.clone(),
                    scale: None,
                    splits,
                    workspace: (ws > 0).then_some((0x6000_0000_0000, ws)),
                    deterministic: false,
                };
                op.plan(&spec, &tile, &args, device).unwrap()
            })
        },
    );
}

fn benches(c: &mut Criterion) {
    plan_decode(c);
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
                crate_version: flasheva::ARTIFACT_VERSION,
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
