//! `flasheva render`: print the CUDA source of one spec.

use clap::Args;
use flasheva::spec::Op;
use flasheva::target::Arch;

use super::args::{SpecFlags, parse_op, tile_for};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The kernel: chunk_mean, chunk_summarize, prefill or decode.
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
}

pub fn run(a: RenderArgs) -> anyhow::Result<()> {
    let spec = a.spec.spec(a.op)?;
    let tile = tile_for(&spec, a.arch, a.tile.as_deref())?;
    out!("{}", flasheva::render::render(&spec, &tile)?);
    Ok(())
}
