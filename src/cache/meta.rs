//! An entry's metadata (`meta.json`): what was compiled, how, and the sha256 of every file. The
//! record carries a seal (sha256 of its own canonical JSON), so an accidentally damaged metadata
//! file is detected like a damaged artifact; the seal is a checksum, not a signature (anyone can
//! recompute it), so [`EntryMeta::parse`] also checks everything that can be checked without
//! trusting it: the spec and tile through their validating constructors, the tile against the
//! spec, the file names against the fixed set an entry has, sizes against a cap, the readable
//! strings against what flasheva writes, and (with the source) the key. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache::damage::Damage;
use crate::cache::layout;
use crate::compile::ResourceUsage;
use crate::key::{ArtifactId, CompilerId, Key, sha256};
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// Metadata format version.
pub const META_FORMAT: u32 = 1;
/// Longest artifact version (`crate_version` fields) read from metadata, manifests and winner
/// records: the crate version and `+kernels.` and 12 hex digits, with room for pre-release tags.
pub const MAX_VERSION_LEN: usize = 64;
/// Largest metadata file read.
pub const MAX_META_BYTES: u64 = 1 << 20;
/// Largest file an entry may record (and a bundle member may be).
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// Size and digest of one file of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

    /// Whether it is well formed: 64 lowercase hex digits and at most [`MAX_FILE_BYTES`].
    pub fn well_formed(&self) -> bool {
        layout::is_key_name(&self.sha256) && self.bytes <= MAX_FILE_BYTES
    }
}

/// Everything recorded about one cache entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The cache key (also the entry's folder name).
    pub key: Key,
    /// The artifact version ([`crate::ARTIFACT_VERSION`]: crate version and a fingerprint of the
    /// sources) that rendered it; the loader uses only entries of its own, whose kernel
    /// parameter layout it knows.
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
    /// Dynamic shared memory of each entry point when the compiler decides it (Triton
    /// kernels), in entry-point order; empty when the tile decides it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_shared_mem: Vec<u32>,
    /// PTX ISA version of kernel.ptx (e.g. `9.0`).
    pub ptx_isa: Option<String>,
    /// ptxas report per entry point.
    pub resources: Vec<ResourceUsage>,
    /// Compile wall time, milliseconds.
    pub compile_ms: f64,
    /// Seconds since the Unix epoch when compiled.
    pub created_unix: u64,
    /// Every other file of the entry: exactly [`layout::ENTRY_FILES`].
    pub files: BTreeMap<String, FileDigest>,
    /// sha256 of this record's JSON with `seal` empty.
    #[serde(default)]
    pub seal: String,
}

/// Whether `s` is a short, printable, single-line ASCII string as flasheva writes in metadata.
pub fn is_plain_text(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| (0x20..0x7f).contains(&b))
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

    /// Reads `meta.json`: it parses (spec and tile through their validating constructors), is of
    /// this format, its tile is a tile of its spec, its name and entry points are the spec's, its
    /// strings are plain text, it lists exactly the files an entry has with well-formed digests,
    /// and its seal holds.
    pub fn parse(bytes: &[u8]) -> Result<EntryMeta, Damage> {
        if bytes.len() as u64 > MAX_META_BYTES {
            return Err(Damage::Meta(format!(
                "{} bytes, over the {MAX_META_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let meta: EntryMeta =
            serde_json::from_slice(bytes).map_err(|e| Damage::Meta(e.to_string()))?;
        meta.check()?;
        if !meta.seal_ok() {
            return Err(Damage::Seal);
        }
        Ok(meta)
    }

    /// The checks of [`EntryMeta::parse`] other than the seal.
    pub fn check(&self) -> Result<(), Damage> {
        let bad = |m: String| Err(Damage::Meta(m));
        if self.format != META_FORMAT {
            return bad(format!(
                "metadata format {} is not {META_FORMAT}",
                self.format
            ));
        }
        if let Err(e) = self.tile.check(&self.spec) {
            return bad(e.to_string());
        }
        if self.name != self.spec.name() || self.entry_points != self.spec.entry_points(&self.tile)
        {
            return bad("its name or entry points are not its spec's".into());
        }
        let triton = self.tile.engine() == crate::tile::Engine::Triton;
        let shared_ok = if triton {
            self.entry_shared_mem.len() == self.entry_points.len()
                && self.entry_shared_mem.iter().all(|&b| b <= 256 * 1024)
        } else {
            self.entry_shared_mem.is_empty()
        };
        if !shared_ok {
            return bad(
                "its per-entry shared memory does not fit its tile (one value per entry point, up to 256 KiB, for Triton tiles only)"
                    .into(),
            );
        }
        let texts = [
            (&self.crate_version, MAX_VERSION_LEN),
            (&self.compiler.name, 64),
            (&self.compiler.version, 64),
        ];
        if texts
            .iter()
            .any(|(s, max)| s.is_empty() || !is_plain_text(s, *max))
            || self.options.len() > 64
            || self.options.iter().any(|o| !is_plain_text(o, 256))
            || self.resources.len() > 16
            || self
                .resources
                .iter()
                .any(|r| !is_plain_text(&r.function, 256))
            || self.ptx_isa.as_ref().is_some_and(|v| {
                v.len() > 16 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })
        {
            return bad(
                "it holds text flasheva does not write (control characters, or too long)".into(),
            );
        }
        for name in self.files.keys() {
            if !layout::ENTRY_FILES.contains(&name.as_str()) {
                return Err(Damage::Files(format!(
                    "lists {name:?}, which is not a file of an entry (they are {})",
                    layout::ENTRY_FILES.join(", ")
                )));
            }
        }
        for name in layout::ENTRY_FILES {
            match self.files.get(name) {
                None => return Err(Damage::Files(format!("lists no {name}"))),
                Some(d) if !d.well_formed() => {
                    return Err(Damage::Files(format!(
                        "records a malformed digest or a size over {MAX_FILE_BYTES} bytes for {name}"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The key of the recorded inputs with `source` as the rendered source.
    pub fn computed_key(&self, source: &str) -> Key {
        ArtifactId {
            crate_version: &self.crate_version,
            spec: &self.spec,
            tile: &self.tile,
            source,
            compiler: &self.compiler,
            arch: self.arch,
            options: &self.options,
        }
        .key()
    }

    /// Checks that the recorded key is the key of the recorded inputs and `source` (whose bytes
    /// must already have matched the recorded digest).
    pub fn check_key(&self, source: &[u8]) -> Result<(), Damage> {
        let text = std::str::from_utf8(source).map_err(|_| Damage::Hash {
            file: layout::SOURCE_FILE.into(),
        })?;
        let computed = self.computed_key(text);
        if computed != self.key {
            return Err(Damage::Key {
                recorded: self.key,
                computed,
            });
        }
        Ok(())
    }

    /// The entry's folder below `kernels/`'s parent, as [`layout::Layout::entry_rel`] spells it.
    pub fn rel_dir(&self) -> String {
        layout::Layout::entry_rel(&self.spec, &self.tile, self.arch, &self.key)
    }
}
