//! Prints the ptxas register and spill report of every prefill and decode tile that fits sm_90
//! for one head dim, compiling with NVRTC (no GPU needed):
//!     cargo run --release --example tile_report -- 128
use flasheva::compile::nvrtc::Nvrtc;
use flasheva::compile::{CompileJob, Compiler, options_for, parse_resource_usage};
use flasheva::spec::{KernelSpec, Op, SpecParams};
use flasheva::tile::TileParams;
use flasheva::{Arch, Tile};
use rayon::prelude::*;

fn main() {
    let d: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let nv = Nvrtc::load().expect("NVRTC");
    let arch = Arch::new(9, 0);
    let mut jobs = Vec::new();
    for op in [Op::Prefill, Op::Decode] {
        let spec = KernelSpec::new(
            op,
            &SpecParams {
                head_dim: Some(d),
                window: Some(512),
                chunk: Some(64),
                group: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
        // (block_m 8: the decode's swapped head tile; prefill refuses it)
        for bm in [0, 8, 16, 32, 64, 128, 256] {
            for bn in [16, 32, 64, 128] {
                for warps in [1, 2, 4, 8] {
                    for stages in [1, 2, 3] {
                        let Ok(t) = Tile::new(
                            &spec,
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
                        if t.validate_for(&spec, arch).is_ok() && !jobs.contains(&(spec, t)) {
                            jobs.push((spec, t));
                        }
                    }
                }
            }
        }
    }
    let rows: Vec<String> = jobs
        .par_iter()
        .map(|(spec, t)| {
            let src = flasheva::render::render(spec, t).unwrap();
            let opts = options_for(arch);
            let name = spec.source_file_name();
            let out = nv
                .compile(&CompileJob {
                    program_name: &name,
                    source: &src,
                    arch,
                    options: &opts,
                })
                .unwrap();
            let r = parse_resource_usage(&out.log)
                .into_iter()
                .find(|r| r.function == spec.name())
                .unwrap();
            format!(
                "{:8} {:18} regs {:3} spill {:4} smem {:6}",
                spec.op().as_str(),
                t.name(spec.op()),
                r.registers,
                r.spill_stores,
                t.smem_bytes(spec)
            )
        })
        .collect();
    for r in rows {
        println!("{r}");
    }
}
