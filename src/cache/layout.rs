//! Where things live in a cache folder. Pure path arithmetic, no I/O.
//!
//! ```text
//! <root>/v1/kernels/<spec name>/<tile name>/<arch>/<key>/   one entry (meta.json written last)
//! <root>/v1/winners/<spec name>/<record key>.json           tuned winners (see `tune::record`)
//! <root>/v1/tune/<run key>.jsonl                            resumable tuning measurements
//! <root>/locks/<key>.lock                                   advisory locks, one per key
//! <root>/tmp/                                               entries being written; never read
//! ```

use std::path::{Path, PathBuf};

use crate::key::Key;
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// Layout version folder.
pub const VERSION_DIR: &str = "v1";
/// The metadata file, written last: its presence marks a complete entry.
pub const META_FILE: &str = "meta.json";
/// PTX text.
pub const PTX_FILE: &str = "kernel.ptx";
/// cubin.
pub const CUBIN_FILE: &str = "kernel.cubin";
/// The rendered source.
pub const SOURCE_FILE: &str = "source.cu";
/// The compile log.
pub const LOG_FILE: &str = "compile.log";

/// The paths of one cache root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/v1/kernels`.
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join(VERSION_DIR).join("kernels")
    }

    /// The folder holding every entry of one (spec, tile, arch).
    pub fn variant_dir(&self, spec: &KernelSpec, tile: &Tile, arch: Arch) -> PathBuf {
        self.kernels_dir()
            .join(spec.name())
            .join(tile.name(spec.op()))
            .join(arch.to_string())
    }

    /// The folder of one entry.
    pub fn entry_dir(&self, spec: &KernelSpec, tile: &Tile, arch: Arch, key: &Key) -> PathBuf {
        self.variant_dir(spec, tile, arch).join(key.hex())
    }

    /// `<root>/v1/winners`.
    pub fn winners_dir(&self) -> PathBuf {
        self.root.join(VERSION_DIR).join("winners")
    }

    /// `<root>/v1/tune`.
    pub fn tune_dir(&self) -> PathBuf {
        self.root.join(VERSION_DIR).join("tune")
    }

    /// `<root>/locks`.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The lock file of `key`.
    pub fn lock_file(&self, key: &Key) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", key.hex()))
    }

    /// `<root>/tmp`, where entries are assembled before an atomic rename.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}
