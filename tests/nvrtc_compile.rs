//! Real NVRTC compiles (no GPU needed): every preset spec for sm_80 and sm_90, every head dim,
//! compile errors with numbered source lines. NVRTC must be present (scripts/with-nvrtc brings
//! it); these tests fail, not skip, without it.

use flasheva::cache::CacheStore;
use flasheva::compile::nvrtc::Nvrtc;
use flasheva::compile::{CompileError, CompileJob, Compiler, options_for};
use flasheva::pipeline::{Pipeline, Status};
use flasheva::presets::Presets;
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::{Arch, Tile};
use rayon::prelude::*;

fn nvrtc() -> Nvrtc {
    Nvrtc::load().unwrap_or_else(|e| {
        panic!("NVRTC is required for these tests (run them through scripts/with-nvrtc): {e}")
    })
}

#[test]
fn every_preset_spec_compiles_for_sm80_and_sm90() {
    let nv = nvrtc();
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let presets = Presets::builtin();
    let mut jobs = Vec::new();
    for (name, p) in &presets.presets {
        for spec in p.specs(name).unwrap() {
            for arch in [Arch::new(8, 0), Arch::new(9, 0)] {
                jobs.push((spec, arch));
            }
        }
    }
    assert!(jobs.len() >= 48, "{} jobs", jobs.len());
    let results: Vec<_> = jobs
        .par_iter()
        .map(|(spec, arch)| {
            let tile = Tile::default_for(spec, *arch);
            let built = Pipeline::new(&store, &nv).ensure(spec, &tile, *arch);
            (spec, arch, built)
        })
        .collect();
    for (spec, arch, built) in results {
        let built = built.unwrap_or_else(|e| panic!("{spec} {arch}: {e}"));
        assert_eq!(built.status, Status::Compiled);
        let m = &built.entry.meta;
        assert!(
            m.files["kernel.cubin"].bytes > 1000,
            "{spec} {arch}: cubin too small"
        );
        assert!(m.files["kernel.ptx"].bytes > 1000);
        assert_eq!(m.ptx_isa.as_deref(), Some("9.0"));
        let main = m
            .resources
            .iter()
            .find(|r| r.function == spec.name())
            .expect("ptxas report for the main kernel");
        assert!(main.registers > 0);
        assert_eq!(main.spill_stores, 0, "{spec} {arch} spills: {main:?}");
        eprintln!(
            "{spec:50} {arch:7} regs {:3} spill {:3} smem {:6} compile {:6.0} ms",
            main.registers, main.spill_stores, m.shared_mem_bytes, m.compile_ms
        );
    }
}

/// Compiles `spec` with `tile` for `arch` and returns one line per kernel that spills registers
/// or has a stack frame, and ptxas's warning when it serializes wgmma instructions (none: empty).
fn spills(nv: &Nvrtc, spec: &KernelSpec, tile: &Tile, arch: Arch) -> Vec<String> {
    let src = flasheva::render::render(spec, tile).unwrap();
    let opts = options_for(arch);
    let prog = spec.source_file_name();
    let out = nv
        .compile(&CompileJob {
            program_name: &prog,
            source: &src,
            arch,
            options: &opts,
        })
        .unwrap_or_else(|e| panic!("{spec} {tile}: {e}"));
    let usage = flasheva::compile::parse_resource_usage(&out.log);
    let mut problems: Vec<String> = usage
        .iter()
        .filter(|r| r.spill_stores > 0 || r.stack_frame > 0)
        .map(|r| format!("{spec} {}: {r:?}", tile.name(spec.op())))
        .collect();
    // every kernel the host launches is in the module (the templates restate some host rules:
    // prefill_bwd_sm90a.cu's FE_ATOMIC_DQ is has_atomic_mode)
    problems.extend(
        spec.entry_points(tile)
            .into_iter()
            .filter(|e| !usage.iter().any(|r| r.function == *e))
            .map(|e| {
                format!(
                    "{spec} {}: entry point {e} is not in the module",
                    tile.name(spec.op())
                )
            }),
    );
    problems.extend(
        out.log
            .lines()
            .filter(|l| l.contains("wgmma") && l.contains("serialized"))
            .map(|l| format!("{spec} {}: {l}", tile.name(spec.op()))),
    );
    problems
}

#[test]
/// (The forward ops: the backward's mma kernels below, its Triton kernels in tests/triton.rs.)
fn every_head_dim_and_op_compiles_with_its_default_tile() {
    let nv = nvrtc();
    let mut jobs = Vec::new();
    for op in Op::FORWARD {
        for d in flasheva::spec::HEAD_DIMS {
            for (local, dtype) in [
                (LocalMode::Sliding, DType::F16),
                (LocalMode::Block, DType::Bf16),
            ] {
                let p = SpecParams {
                    head_dim: Some(d),
                    window: Some(96),
                    chunk: Some(32),
                    local: Some(local),
                    dtype: Some(dtype),
                    group: Some(20),
                };
                let s = KernelSpec::new(op, &p).unwrap();
                if !jobs.contains(&s) {
                    jobs.push(s);
                }
            }
        }
    }
    let arch = Arch::new(9, 0);
    let problems: Vec<String> = jobs
        .par_iter()
        .flat_map(|spec| spills(&nv, spec, &Tile::default_for(spec, arch), arch))
        .collect();
    assert!(
        problems.is_empty(),
        "register spills:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_compile_error_shows_the_log_and_numbered_source() {
    let nv = nvrtc();
    let src =
        "extern \"C\" __global__ void k(float* x) {\n  x[0] = 1.0f;\n  x[1] = undefined_name;\n}\n";
    let opts = options_for(Arch::new(8, 0));
    let e = nv
        .compile(&CompileJob {
            program_name: "broken.cu",
            source: src,
            arch: Arch::new(8, 0),
            options: &opts,
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CompileError::Failed { .. }));
    assert!(
        msg.contains("identifier \"undefined_name\" is undefined"),
        "{msg}"
    );
    assert!(msg.contains(">     3 |   x[1] = undefined_name;"), "{msg}");
}

#[test]
fn nvrtc_reports_its_version_and_archs() {
    let nv = nvrtc();
    assert_eq!(nv.id().name, "nvrtc");
    assert!(nv.info().version.0 >= 12);
    for a in ["sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"] {
        assert!(nv.supports(a.parse().unwrap()), "{a}");
    }
}

/// `flasheva bench`'s read-rate probe compiles without toolkit headers for every arch bench may
/// meet, into one entry point that keeps its 16-byte streaming loads.
#[test]
fn the_read_rate_probe_compiles_for_every_arch() {
    let nv = nvrtc();
    let source = include_str!("../templates/read_rate.cu");
    for arch in [Arch::new(8, 0), Arch::new(8, 9), Arch::preferred_for(9, 0)] {
        let built = nv
            .compile(&CompileJob {
                program_name: "flasheva_read_rate.cu",
                source,
                arch,
                options: &options_for(arch),
            })
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        let ptx = String::from_utf8(built.ptx).unwrap();
        assert!(ptx.contains(".entry flasheva_read_rate"), "{arch}");
        assert!(ptx.contains("ld.global.cs.v4.u32"), "{arch}");
        assert!(built.cubin.len() > 500, "{arch}");
    }
}

#[test]
/// The Hopper prefill at every head dim it takes, with the tile the tuner tries first there
/// (D = 256: 64-key blocks, one Q buffer), compiles for sm_90a without spills.
fn the_wgmma_prefill_compiles_at_every_head_dim_it_takes() {
    let nv = nvrtc();
    let arch: Arch = "sm_90a".parse().unwrap();
    // prefill, and extend (the same kernel with per-sequence positions, plus its gather; paged:
    // the gather through slot and page tables)
    for (op, d, bn, stages) in [
        (Op::Prefill, 64u32, 128u32, 4u32),
        (Op::Prefill, 128, 128, 2),
        (Op::Prefill, 256, 64, 2),
        (Op::Extend, 64, 128, 4),
        (Op::Extend, 128, 128, 2),
        (Op::ExtendPaged, 128, 128, 2),
    ] {
        let p = SpecParams {
            head_dim: Some(d),
            window: Some(512),
            chunk: Some(64),
            local: Some(LocalMode::Block),
            dtype: Some(DType::Bf16),
            group: None,
        };
        let spec = KernelSpec::new(op, &p).unwrap();
        let tile = Tile::default_for(&spec, arch)
            .with_overrides(
                &spec,
                &format!("engine=wgmma,warps=12,block_m=128,block_n={bn},stages={stages}"),
            )
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        tile.validate_for(&spec, arch)
            .unwrap_or_else(|e| panic!("{spec} {tile}: {e}"));
        let problems = spills(&nv, &spec, &tile, arch);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
/// The Hopper decode fed by bulk tensor copies compiles for sm_90a at the head dims and tiles it
/// takes, without spills.
fn the_tma_decode_compiles_without_spills() {
    let nv = nvrtc();
    let arch: Arch = "sm_90a".parse().unwrap();
    for (d, over) in [
        (128u32, "engine=tma,warps=5,block_n=32,stages=4"),
        (128, "engine=tma,warps=9,block_n=16,stages=8"),
        (128, "engine=tma,warps=3,block_n=64,stages=2"),
        (64, "engine=tma,warps=3,block_n=64,stages=6"),
    ] {
        let p = SpecParams {
            head_dim: Some(d),
            window: Some(512),
            chunk: Some(64),
            local: Some(LocalMode::Sliding),
            dtype: Some(DType::Bf16),
            group: Some(4),
        };
        let spec = KernelSpec::new(Op::Decode, &p).unwrap();
        let tile = Tile::default_for(&spec, arch)
            .with_overrides(&spec, over)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        tile.validate_for(&spec, arch)
            .unwrap_or_else(|e| panic!("{spec} {tile}: {e}"));
        let problems = spills(&nv, &spec, &tile, arch);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
/// The decode's swapped head tile (block_m = 8: keys as the MMA's M, the heads its N;
/// templates/decode_common.cuh) compiles for sm_80 and sm_90a at every head dim, both dtypes and
/// modes, one and several head tiles, contiguous and paged, without spills at 16- and 32-key tiles
/// (16 at D = 256).
fn the_swapped_decode_tile_compiles_without_spills() {
    let nv = nvrtc();
    let mut jobs = Vec::new();
    for d in [32u32, 64, 96, 128, 256] {
        for (local, dtype, group) in [
            (LocalMode::Sliding, DType::F16, 4u32),
            (LocalMode::Block, DType::Bf16, 20),
        ] {
            for op in [Op::Decode, Op::DecodePaged] {
                let p = SpecParams {
                    head_dim: Some(d),
                    window: Some(512),
                    chunk: Some(64),
                    local: Some(local),
                    dtype: Some(dtype),
                    group: Some(group),
                };
                let spec = KernelSpec::new(op, &p).unwrap();
                // (at D = 256 a warp's 32-row copies of 512-byte rows need 16-key tiles)
                let second = if d == 256 {
                    "block_m=8,block_n=16,warps=1,stages=3"
                } else {
                    "block_m=8,block_n=32,warps=1,stages=3"
                };
                for over in ["block_m=8,block_n=16,warps=4,stages=2", second] {
                    for arch in [Arch::new(8, 0), "sm_90a".parse().unwrap()] {
                        jobs.push((spec, over, arch));
                    }
                }
            }
        }
    }
    let problems: Vec<String> = jobs
        .par_iter()
        .flat_map(|(spec, over, arch)| {
            let tile = Tile::default_for(spec, *arch)
                .with_overrides(spec, over)
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(tile.decode_rows(), 8, "{spec} {tile}");
            tile.validate_for(spec, *arch)
                .unwrap_or_else(|e| panic!("{spec} {tile}: {e}"));
            spills(&nv, spec, &tile, *arch)
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Compiles prefill_bwd at every head dim of `dims` in both modes and dtypes with every tile
/// override of `tiles` for every arch of `archs`, and returns the spills and serialized wgmma
/// ptxas reported.
fn backward_problems(dims: &[u32], tiles: &[&str], archs: &[Arch]) -> Vec<String> {
    let nv = nvrtc();
    let mut jobs = Vec::new();
    for &d in dims {
        for (local, dtype) in [
            (LocalMode::Sliding, DType::F16),
            (LocalMode::Block, DType::Bf16),
        ] {
            let p = SpecParams {
                head_dim: Some(d),
                window: Some(128),
                chunk: Some(16),
                local: Some(local),
                dtype: Some(dtype),
                group: None,
            };
            let spec = KernelSpec::new(Op::PrefillBwd, &p).unwrap();
            for &over in tiles {
                for &arch in archs {
                    jobs.push((spec, over, arch));
                }
            }
        }
    }
    jobs.par_iter()
        .flat_map(|(spec, over, arch)| {
            let tile = Tile::default_for(spec, *arch)
                .with_overrides(spec, over)
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
            tile.validate_for(spec, *arch)
                .unwrap_or_else(|e| panic!("{spec} {tile}: {e}"));
            spills(&nv, spec, &tile, *arch)
        })
        .collect()
}

#[test]
/// The mma backward (templates/prefill_bwd.cu) compiles for sm_80 and sm_90 at every head dim it
/// takes, both modes and dtypes, without spills at the tiles the GPU suite runs.
fn the_mma_backward_compiles_without_spills() {
    let problems = backward_problems(
        &[32, 64, 96, 128],
        &[
            "engine=mma,block_m=32,block_n=64,warps=4,stages=2",
            "engine=mma,block_m=16,block_n=32,warps=2,stages=1",
        ],
        &[Arch::new(8, 0), Arch::new(9, 0)],
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
/// The Hopper wgmma backward (templates/prefill_bwd_sm90a.cu) compiles for sm_90a at D = 64 and
/// 128, both modes and dtypes, one and two warpgroups, one and two stages, without spills.
fn the_wgmma_backward_compiles_without_spills() {
    let problems = backward_problems(
        &[64, 128],
        &[
            "engine=wgmma,block_m=64,block_n=64,warps=4,stages=2",
            "engine=wgmma,block_m=64,block_n=128,warps=8,stages=1",
            "engine=wgmma,block_m=64,block_n=128,warps=8,stages=2",
        ],
        &["sm_90a".parse().unwrap()],
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
