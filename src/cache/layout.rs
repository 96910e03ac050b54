//! Where things live in a cache folder, and which names flasheva creates there. Pure path
//! arithmetic, no I/O.
//!
//! ```text
//! <root>/CACHEDIR.TAG                                        the Cache Directory Tagging mark
//! <root>/.flasheva-cache                                     flasheva's own mark: this folder is ours
//! <root>/v1/kernels/<spec name>/<tile name>/<arch>/<key>/   one entry (meta.json written last)
//! <root>/v1/winners/<spec name>/<record key>.json           tuned winners (`cache::winner`)
//! <root>/v1/tune/<run key>.jsonl                            resumable tuning measurements
//! <root>/locks/<key>.lock                                   advisory locks, one per key
//! <root>/tmp/<kind>-<pid>-<nonce>[.owner]                   staged writes and their owner locks
//! ```
//!
//! Bundles use the same relative paths below `v1/` ([`Layout::entry_rel`],
//! [`Layout::winner_rel`]), so a bundle member and a cache file are spelled in one place.
//! Everything that deletes (`clear`, `gc`, reclaiming `tmp/`) deletes only names these functions
//! recognize.

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
/// The files an entry's metadata lists: exactly these, no others.
pub const ENTRY_FILES: [&str; 4] = [PTX_FILE, CUBIN_FILE, SOURCE_FILE, LOG_FILE];
/// The last-use marker inside an entry folder (not part of the entry's content).
pub const USED_FILE: &str = ".used";
/// The Cache Directory Tagging standard's file (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// The standard's signature: the first line of a [`CACHEDIR_TAG`] file.
pub const CACHEDIR_TAG_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";
/// flasheva's marker: a folder holding it is a flasheva cache.
pub const MARKER_FILE: &str = ".flasheva-cache";
/// What the marker holds.
pub const MARKER_TEXT: &str = "flasheva cache, layout v1\n";

/// The content of the [`CACHEDIR_TAG`] file flasheva writes.
pub fn cachedir_tag_text() -> String {
    format!(
        "{CACHEDIR_TAG_SIGNATURE}\n# This file is a cache directory tag created by flasheva.\n# For information about cache directory tags see https://bford.info/cachedir/\n"
    )
}

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

    /// `<root>/v1`.
    pub fn version_dir(&self) -> PathBuf {
        self.root.join(VERSION_DIR)
    }

    /// `<root>/v1/kernels`.
    pub fn kernels_dir(&self) -> PathBuf {
        self.version_dir().join("kernels")
    }

    /// The folder holding every entry of one (spec, tile, arch).
    pub fn variant_dir(&self, spec: &KernelSpec, tile: &Tile, arch: Arch) -> PathBuf {
        self.version_dir().join(variant_rel(spec, tile, arch))
    }

    /// The folder of one entry.
    pub fn entry_dir(&self, spec: &KernelSpec, tile: &Tile, arch: Arch, key: &Key) -> PathBuf {
        self.version_dir()
            .join(Layout::entry_rel(spec, tile, arch, key))
    }

    /// An entry's folder relative to `v1/` (and inside a bundle):
    /// `kernels/<spec name>/<tile name>/<arch>/<key>`.
    pub fn entry_rel(spec: &KernelSpec, tile: &Tile, arch: Arch, key: &Key) -> String {
        format!("{}/{}", variant_rel(spec, tile, arch), key.hex())
    }

    /// A winner record's file relative to `v1/` (and inside a bundle):
    /// `winners/<spec name>/<record key>.json`.
    pub fn winner_rel(spec: &KernelSpec, record_key: &Key) -> String {
        format!("winners/{}/{}.json", spec.name(), record_key.hex())
    }

    /// `<root>/v1/winners`.
    pub fn winners_dir(&self) -> PathBuf {
        self.version_dir().join("winners")
    }

    /// The file of a winner record.
    pub fn winner_file(&self, spec: &KernelSpec, record_key: &Key) -> PathBuf {
        self.version_dir()
            .join(Layout::winner_rel(spec, record_key))
    }

    /// `<root>/v1/tune`.
    pub fn tune_dir(&self) -> PathBuf {
        self.version_dir().join("tune")
    }

    /// The journal of one tuning run.
    pub fn journal_file(&self, run: &Key) -> PathBuf {
        self.tune_dir().join(format!("{}.jsonl", run.hex()))
    }

    /// `<root>/locks`.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The lock file of `key`.
    pub fn lock_file(&self, key: &Key) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", key.hex()))
    }

    /// `<root>/tmp`, where writes are staged before an atomic rename.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `<root>/CACHEDIR.TAG`.
    pub fn tag_file(&self) -> PathBuf {
        self.root.join(CACHEDIR_TAG)
    }

    /// `<root>/.flasheva-cache`.
    pub fn marker_file(&self) -> PathBuf {
        self.root.join(MARKER_FILE)
    }
}

fn variant_rel(spec: &KernelSpec, tile: &Tile, arch: Arch) -> String {
    format!("kernels/{}/{}/{arch}", spec.name(), tile.name(spec.op()))
}

/// Whether `name` is a key as flasheva spells it in file names: 64 lowercase hex digits.
pub fn is_key_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `name` could be a spec or tile folder flasheva made: lowercase letters, digits and
/// `_`, at most 128 characters (spec folders also start with `flasheva_`).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Whether `name` could be a spec folder (`flasheva_...`).
pub fn is_spec_dir_name(name: &str) -> bool {
    is_plain_name(name) && name.starts_with("flasheva_")
}

/// Whether `name` is an arch folder.
pub fn is_arch_dir_name(name: &str) -> bool {
    name.parse::<Arch>().is_ok_and(|a| a.to_string() == name)
}

/// Whether `name` is a file flasheva writes inside an entry folder.
pub fn is_entry_file_name(name: &str) -> bool {
    name == META_FILE || name == USED_FILE || ENTRY_FILES.contains(&name)
}

/// `<key>.<ext>` with a key name: the key, else `None`.
pub fn key_file_name(name: &str, ext: &str) -> Option<Key> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if is_key_name(stem) {
        stem.parse().ok()
    } else {
        None
    }
}

/// What a staged item in `tmp/` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// An entry being compiled.
    Entry,
    /// A bundle being imported (with its journal).
    Import,
    /// A winner record or journal being written.
    File,
    /// A folder moved aside to be deleted.
    Trash,
}

impl StageKind {
    /// The prefix of its names.
    pub fn prefix(self) -> &'static str {
        match self {
            StageKind::Entry => "entry",
            StageKind::Import => "import",
            StageKind::File => "file",
            StageKind::Trash => "trash",
        }
    }
}

/// A staged name in `tmp/`: `<kind>-<pid>-<16 hex digits>` (the owner lock adds `.owner`).
pub fn stage_name(kind: StageKind, pid: u32, nonce: u64) -> String {
    format!("{}-{pid}-{nonce:016x}", kind.prefix())
}

/// Parses a staged name (without `.owner`): its kind, else `None` (not a name flasheva makes).
pub fn parse_stage_name(name: &str) -> Option<StageKind> {
    let (kind, rest) = name.split_once('-')?;
    let kind = [
        StageKind::Entry,
        StageKind::Import,
        StageKind::File,
        StageKind::Trash,
    ]
    .into_iter()
    .find(|k| k.prefix() == kind)?;
    let (pid, nonce) = rest.split_once('-')?;
    let ok = !pid.is_empty()
        && pid.len() <= 10
        && pid.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == 16
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(kind)
}

/// The owner-lock file name of a staged name.
pub const OWNER_SUFFIX: &str = ".owner";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_flasheva_makes_are_recognized_and_others_not() {
        let k = "ab".repeat(32);
        assert!(is_key_name(&k));
        assert!(!is_key_name(&k.to_uppercase()));
        assert!(!is_key_name(&k[..63]));
        assert_eq!(
            key_file_name(&format!("{k}.lock"), "lock").unwrap().hex(),
            k
        );
        assert!(key_file_name(&format!("{k}.lock.x"), "lock").is_none());
        assert!(key_file_name("notes.lock", "lock").is_none());
        assert!(is_spec_dir_name("flasheva_prefill_d64_w128_c8_block_bf16"));
        assert!(!is_spec_dir_name("Documents"));
        assert!(!is_plain_name("a/b") && !is_plain_name("..") && !is_plain_name(""));
        assert!(is_arch_dir_name("sm_90a") && !is_arch_dir_name("compute_90"));
        let n = stage_name(StageKind::Import, 4242, 0xdead_beef);
        assert_eq!(n, "import-4242-00000000deadbeef");
        assert_eq!(parse_stage_name(&n), Some(StageKind::Import));
        for bad in [
            "import-1-xyz",
            "import--0000000000000000",
            "photos-1-0000000000000000",
            ".tmpAbc",
            "trash-1-00000000000000000",
        ] {
            assert_eq!(parse_stage_name(bad), None, "{bad}");
        }
        assert!(is_entry_file_name(".used") && !is_entry_file_name("../x"));
    }

    #[test]
    fn bundle_paths_are_the_cache_paths_below_v1() {
        use crate::spec::{Op, SpecParams};
        let spec = KernelSpec::new(
            Op::ChunkMean,
            &SpecParams {
                head_dim: Some(64),
                chunk: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        let arch = Arch::new(9, 0);
        let tile = Tile::default_for(&spec, arch);
        let key = Key([7; 32]);
        let l = Layout::new("/c");
        assert_eq!(
            l.entry_dir(&spec, &tile, arch, &key),
            Path::new("/c/v1").join(Layout::entry_rel(&spec, &tile, arch, &key))
        );
        assert_eq!(
            l.winner_file(&spec, &key),
            Path::new("/c/v1").join(Layout::winner_rel(&spec, &key))
        );
        assert!(Layout::entry_rel(&spec, &tile, arch, &key).starts_with("kernels/flasheva_"));
    }
}
