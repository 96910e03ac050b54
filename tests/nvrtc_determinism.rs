//! NVRTC output is byte-deterministic for the same source, arch and options: the premise of
//! `cache import --rebuild-check`, which recompiles each entry and compares the bytes. Real NVRTC
//! (scripts/with-nvrtc brings it); fails, not skips, without it.

use flasheva::compile::nvrtc::Nvrtc;
use flasheva::compile::{CompileJob, Compiler, options_for};
use flasheva::render::render;
use flasheva::spec::{KernelSpec, Op, SpecParams};
use flasheva::{Arch, Tile};

#[test]
fn nvrtc_ptx_and_cubin_are_byte_deterministic() {
    let nv = Nvrtc::load().unwrap_or_else(|e| {
        panic!("NVRTC is required for these tests (run them through scripts/with-nvrtc): {e}")
    });
    let spec = KernelSpec::new(
        Op::Prefill,
        &SpecParams {
            head_dim: Some(64),
            window: Some(128),
            chunk: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    for arch in [Arch::new(8, 0), "sm_90a".parse().unwrap()] {
        let tile = Tile::default_for(&spec, arch);
        let source = render(&spec, &tile).unwrap();
        let options = options_for(arch);
        let name = spec.source_file_name();
        let job = CompileJob {
            program_name: &name,
            source: &source,
            arch,
            options: &options,
        };
        let a = nv.compile(&job).unwrap();
        let b = nv.compile(&job).unwrap();
        assert_eq!(a.ptx, b.ptx, "{arch}: PTX differs between two compiles");
        assert_eq!(
            a.cubin, b.cubin,
            "{arch}: cubin differs between two compiles"
        );
        // ... and it is the content that decides: another tile gives other bytes.
        let other = tile.with_overrides(&spec, "stages=3").unwrap();
        let c = nv
            .compile(&CompileJob {
                source: &render(&spec, &other).unwrap(),
                ..job.clone()
            })
            .unwrap();
        assert_ne!(a.cubin, c.cubin, "{arch}");
    }
}
