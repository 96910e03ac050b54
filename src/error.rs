//! The crate's error: one variant per stage of the pipeline, each wrapping that stage's typed
//! error. Messages are lowercase and name the value and what would fix it.

use crate::cache::CacheError;
use crate::compile::CompileError;
use crate::spec::SpecError;
use crate::target::ArchError;
use crate::tile::TileError;

/// Any flasheva failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec failed validation.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A tile failed validation.
    #[error(transparent)]
    Tile(#[from] TileError),
    /// An unknown arch.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// Rendering failed (only a build with the `compiler` feature renders; the variant exists in
    /// every build, so matching on errors does not depend on features).
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// Compiling failed, or no compiler.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The GPU or driver failed.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// A kernel call was given tensors that do not fit.
    #[error(transparent)]
    Launch(#[from] crate::gpu::LaunchError),
    /// The loader found no artifact it could use and may not compile: what it looked for, where,
    /// and why each entry it found was refused.
    #[error("{0}")]
    NotCached(Box<crate::loader::Miss>),
    /// A loaded kernel disagrees with what this flasheva computes for it (its shared memory):
    /// an artifact of another version of the template.
    #[error("{0}")]
    Artifact(String),
    /// An environment variable has a value flasheva does not accept.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
