//! An entry's metadata (`meta.json`): what was compiled, how, and the sha256 of every file. The
//! record carries a seal (sha256 of its own canonical JSON), so a damaged metadata file is
//! detected like a damaged artifact. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compile::ResourceUsage;
use crate::key::{CompilerId, Key, sha256};
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// Metadata format version.
pub const META_FORMAT: u32 = 1;

/// Size and digest of one file of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// sha256, hex.
    pub sha256: String,
    /// Length in bytes.
    pub bytes: u64,
}

impl FileDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> FileDigest {
        FileDigest {
            sha256: sha256(data).hex(),
            bytes: data.len() as u64,
        }
    }
}

/// Everything recorded about one cache entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The cache key (also the entry's folder name).
    pub key: Key,
    /// Crate version that rendered the source; the loader uses only entries of its own version,
    /// whose kernel parameter layout it knows.
    pub crate_version: String,
    /// Readable spec name.
    pub name: String,
    /// The spec.
    pub spec: KernelSpec,
    /// The tile.
    pub tile: Tile,
    /// The arch compiled for.
    pub arch: Arch,
    /// The compiler.
    pub compiler: CompilerId,
    /// Compiler options.
    pub options: Vec<String>,
    /// Entry points in the module, main kernel first.
    pub entry_points: Vec<String>,
    /// Threads per block of the main kernel.
    pub threads: u32,
    /// Dynamic shared memory of the main kernel, bytes.
    pub shared_mem_bytes: u32,
    /// PTX ISA version of kernel.ptx (e.g. `9.0`).
    pub ptx_isa: Option<String>,
    /// ptxas report per entry point.
    pub resources: Vec<ResourceUsage>,
    /// Compile wall time, milliseconds.
    pub compile_ms: f64,
    /// Seconds since the Unix epoch when compiled.
    pub created_unix: u64,
    /// Every other file of the entry.
    pub files: BTreeMap<String, FileDigest>,
    /// sha256 of this record's JSON with `seal` empty.
    #[serde(default)]
    pub seal: String,
}

impl EntryMeta {
    fn canonical(&self) -> Vec<u8> {
        let mut unsealed = self.clone();
        unsealed.seal.clear();
        serde_json::to_vec(&unsealed).expect("metadata serializes")
    }

    /// Sets the seal.
    pub fn sealed(mut self) -> EntryMeta {
        self.seal = sha256(&self.canonical()).hex();
        self
    }

    /// Whether the seal matches the content.
    pub fn seal_ok(&self) -> bool {
        self.seal == sha256(&self.canonical()).hex()
    }

    /// Pretty JSON for `meta.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("metadata serializes");
        v.push(b'\n');
        v
    }
}
