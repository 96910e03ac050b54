//! A bundle's table of contents and the rules for its member names. Pure: parsing goes through
//! the validating constructors of specs, tiles and archs, and [`Manifest::validate`] checks
//! everything the importer relies on before a single member is read: the paths are the cache's
//! own (`Layout`), each entry lists exactly the files an entry has, keys are unique, and the
//! declared sizes are within the caps (their sum is the most the import will write).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::layout::{self, Layout};
use crate::cache::meta::{FileDigest, MAX_FILE_BYTES, is_plain_text};
use crate::cache::winner::DeviceId;
use crate::cache::winners::MAX_WINNER_BYTES;
use crate::key::{CompilerId, Key};
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// Bundle format version (2: manifest first, then its signature, ustar names, typed tiles).
pub const BUNDLE_FORMAT: u32 = 2;
/// The manifest member: always the first.
pub const MANIFEST: &str = "manifest.json";
/// The signature member: second, when the bundle is signed.
pub const SIGNATURE: &str = "manifest.sig";
/// Largest accepted manifest.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest accepted signature member.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Largest accepted member.
pub const MAX_MEMBER_BYTES: u64 = MAX_FILE_BYTES;
/// Largest accepted bundle content (the sum of the declared sizes).
pub const MAX_TOTAL_BYTES: u64 = 16 << 30;
/// Most accepted members.
pub const MAX_MEMBERS: usize = 200_000;

/// One entry in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Cache key.
    pub key: Key,
    /// Spec.
    pub spec: KernelSpec,
    /// Tile.
    pub tile: Tile,
    /// Arch.
    pub arch: Arch,
    /// Compiler and version.
    pub compiler: CompilerId,
    /// Folder inside the bundle: [`Layout::entry_rel`].
    pub dir: String,
    /// Every file of the entry (meta.json included) with its digest.
    pub files: BTreeMap<String, FileDigest>,
}

/// One winner record in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestWinner {
    /// Path inside the bundle: [`Layout::winner_rel`].
    pub path: String,
    /// Digest of the record file.
    pub digest: FileDigest,
    /// The device it was measured on.
    pub device: DeviceId,
    /// The spec.
    pub spec: KernelSpec,
}

/// The bundle's table of contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// Artifact version ([`crate::ARTIFACT_VERSION`]) that exported it.
    pub crate_version: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// Entries.
    pub entries: Vec<ManifestEntry>,
    /// Winner records.
    pub winners: Vec<ManifestWinner>,
}

impl Manifest {
    /// Parses and validates manifest bytes: the format first (so an unknown format is named as
    /// such), then every field.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let fmt: FormatOnly =
            serde_json::from_slice(bytes).map_err(|e| format!("{MANIFEST} does not parse: {e}"))?;
        if fmt.format != BUNDLE_FORMAT {
            return Err(format!(
                "bundle format {} is unknown: this flasheva reads format {BUNDLE_FORMAT}",
                fmt.format
            ));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("{MANIFEST} does not parse: {e}"))?;
        m.validate()?;
        Ok(m)
    }

    /// The checks of [`Manifest::parse`].
    pub fn validate(&self) -> Result<(), String> {
        if !is_plain_text(&self.crate_version, crate::cache::meta::MAX_VERSION_LEN) {
            return Err("its crate version is not plain text".into());
        }
        if self.entries.len() * (layout::ENTRY_FILES.len() + 1) + self.winners.len() > MAX_MEMBERS {
            return Err(format!("it lists more than {MAX_MEMBERS} members"));
        }
        let mut keys = BTreeSet::new();
        for e in &self.entries {
            let short = e.key.short();
            e.tile
                .check(&e.spec)
                .map_err(|err| format!("entry {short}: {err}"))?;
            let want = Layout::entry_rel(&e.spec, &e.tile, e.arch, &e.key);
            if e.dir != want {
                return Err(format!(
                    "entry {short} is filed under {:?}, expected {want}",
                    e.dir
                ));
            }
            if !keys.insert(e.key) {
                return Err(format!("several entries claim key {}", e.key.hex()));
            }
            if !is_plain_text(&e.compiler.name, 64) || !is_plain_text(&e.compiler.version, 64) {
                return Err(format!("entry {short}: its compiler is not plain text"));
            }
            let want_files: BTreeSet<&str> = layout::ENTRY_FILES
                .iter()
                .copied()
                .chain([layout::META_FILE])
                .collect();
            let got: BTreeSet<&str> = e.files.keys().map(String::as_str).collect();
            if got != want_files {
                return Err(format!(
                    "entry {short} lists the files {:?}; an entry has exactly {:?}",
                    got, want_files
                ));
            }
            if let Some((name, _)) = e.files.iter().find(|(_, d)| !d.well_formed()) {
                return Err(format!(
                    "entry {short}: {name} has a malformed digest or is over {MAX_MEMBER_BYTES} bytes"
                ));
            }
        }
        let mut paths = BTreeSet::new();
        for w in &self.winners {
            let ok = w
                .path
                .rsplit('/')
                .next()
                .and_then(|f| layout::key_file_name(f, "json"))
                .is_some_and(|k| Layout::winner_rel(&w.spec, &k) == w.path);
            if !ok {
                return Err(format!(
                    "winner record {:?} is not at winners/<spec>/<key>.json",
                    w.path
                ));
            }
            if !paths.insert(w.path.as_str()) {
                return Err(format!("{} is listed twice", w.path));
            }
            if !layout::is_key_name(&w.digest.sha256) || w.digest.bytes > MAX_WINNER_BYTES {
                return Err(format!(
                    "{}: malformed digest or over {MAX_WINNER_BYTES} bytes",
                    w.path
                ));
            }
        }
        let total = self.total_bytes();
        if total > MAX_TOTAL_BYTES {
            return Err(format!(
                "it declares {total} bytes, over the {MAX_TOTAL_BYTES}-byte limit"
            ));
        }
        Ok(())
    }

    /// Every member the manifest lists (entry files and winner records) with its digest.
    pub fn members(&self) -> BTreeMap<String, FileDigest> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            for (name, d) in &e.files {
                out.insert(format!("{}/{name}", e.dir), d.clone());
            }
        }
        for w in &self.winners {
            out.insert(w.path.clone(), w.digest.clone());
        }
        out
    }

    /// The sum of the declared sizes: the most an import of this bundle writes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .flat_map(|e| e.files.values())
            .chain(self.winners.iter().map(|w| &w.digest))
            .fold(0u64, |a, d| a.saturating_add(d.bytes))
    }
}

/// Checks a tar member's stored name: UTF-8, a plain relative path of 1 to 6 components, no
/// `..`, `.`, backslash or NUL. Returns it as a string.
pub fn member_name(raw: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "is not a UTF-8 name")?;
    if s.is_empty() || s.contains('\\') || s.contains('\0') || s.ends_with('/') {
        return Err("has an empty or unusual name");
    }
    if s.starts_with('/') || Path::new(s).is_absolute() {
        return Err("is an absolute path");
    }
    let parts: Vec<&str> = s.split('/').collect();
    if parts.contains(&"..") {
        return Err("climbs out of the bundle (..)");
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") {
        return Err("is not a plain relative path");
    }
    if parts.len() > 6 {
        return Err("is deeper than any member of a bundle");
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> Manifest {
        Manifest {
            format: BUNDLE_FORMAT,
            crate_version: version.into(),
            created_unix: 0,
            entries: Vec::new(),
            winners: Vec::new(),
        }
    }

    #[test]
    fn artifact_versions_are_read_up_to_the_shared_limit() {
        // this build's, and a longer pre-release one, as metadata and winner records take them
        assert_eq!(manifest(crate::ARTIFACT_VERSION).validate(), Ok(()));
        assert_eq!(
            manifest("0.12.0-alpha.10+kernels.0123456789ab").validate(),
            Ok(())
        );
        let long = "9".repeat(crate::cache::meta::MAX_VERSION_LEN + 1);
        assert!(manifest(&long).validate().is_err());
    }
}
