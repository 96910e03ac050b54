//! `flasheva render`: print the CUDA source (or, with `--backend triton`, the Triton job) of one
//! spec.

use clap::Args;
use flasheva::spec::Op;
use flasheva::target::Arch;

use flasheva::tile::Backend;

use super::args::{SpecFlags, parse_backend, parse_op, tile_for};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The kernel: chunk_mean, chunk_summarize, prefill, decode, or a backward op: prefill_bwd, chunk_summarize_bwd, chunk_mean_bwd.
    #[arg(value_parser = parse_op)]
    pub op: Op,
    #[command(flatten)]
    pub spec: SpecFlags,
    /// Tile overrides, e.g. block_m=64,block_n=32,stages=2 (default: the arch's default tile).
    #[arg(long, value_name = "FIELD=VALUE,...")]
    pub tile: Option<String>,
    /// The arch whose default tile is rendered.
    #[arg(long, default_value = "sm_90", value_parser = |s: &str| s.parse::<Arch>())]
    pub arch: Arch,
    /// nvrtc (the CUDA C++ templates) or triton (the Triton job: kernels and their constants).
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<Backend>,
}

pub fn run(a: RenderArgs) -> anyhow::Result<()> {
    let spec = a.spec.spec(a.op)?;
    let tile = tile_for(&spec, a.arch, a.backend, a.tile.as_deref())?;
    out!("{}", flasheva::render::render(&spec, &tile)?);
    Ok(())
}
