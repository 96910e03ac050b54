//! flasheva: FlashEVA attention kernels for NVIDIA GPUs, from a spec to a launch.
//!
//! The data flows one way:
//!
//! ```text
//! KernelSpec + Tile ──render──▶ CUDA source ──compile (NVRTC)──▶ PTX + cubin
//!        │                                                          │
//!        └────────────── key (sha256) ──────────────▶ cache ◀──────┘
//!                                                      │
//!                                   tune (winners) ──▶ loader ──▶ launch
//! ```
//!
//! - pure values: [`spec`], [`tile`], [`ops`] (the op table), [`target`], [`key`], [`render`], [`cache::layout`],
//!   [`cache::meta`], [`gpu::params`], `reference`;
//! - side effects, each in one home: `compile::nvrtc` (NVRTC), [`cache`] (cache files: `fsx`, `entries`),
//!   [`gpu::driver`] (the CUDA driver).
//!
//! Without the default features the crate is the light loader: it reads the cache and launches,
//! with neither tera nor NVRTC.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod bench;
pub mod cache;
pub mod compile;
pub mod config;
pub mod error;
pub mod gpu;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod hostdata;
pub mod key;
pub mod loader;
pub mod ops;
#[cfg(feature = "compiler")]
#[cfg_attr(docsrs, doc(cfg(feature = "compiler")))]
pub mod pipeline;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod presets;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod reference;
pub mod render;
pub mod spec;
pub mod target;
pub mod tensor;
pub mod tile;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod tune;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod verify;
pub mod visibility;
pub mod workload;

pub use error::{Error, Result};

/// The CUDA bindings flasheva is built on (the same version), for callers that use cudarc
/// themselves: `Gpu::from_context(Arc<cudarc::driver::CudaContext>)`, launches on a
/// `cudarc::driver::CudaStream`. Engines with raw handles use `Gpu::from_raw_context` and
/// `gpu::RawStream` instead.
pub use cudarc;

/// The crate version.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The crate version and a fingerprint of its sources (templates/, triton/ and src/ but the CLI;
/// build.rs): part of every cache key and recorded in every entry, and the loader uses only
/// entries of its own. Two builds of one version with different kernels (a branch, a local
/// edit, even of a test) never load each other's binaries, whose launch parameters they would
/// get wrong.
pub const ARTIFACT_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "+kernels.",
    env!("FLASHEVA_KERNELS_SHA")
);

/// The crate version an artifact version was built from (its part before `+kernels.`; a version
/// without that suffix is all crate version).
pub fn artifact_crate_version(artifact_version: &str) -> &str {
    artifact_version
        .split_once("+kernels.")
        .map_or(artifact_version, |(crate_version, _)| crate_version)
}
pub use key::Key;
pub use spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
pub use target::Arch;
pub use tile::Tile;

/// The README's code, compiled (not run) as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
