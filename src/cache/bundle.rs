//! Bundles: one `tar + zstd` file carrying cache entries and winner records between machines.
//!
//! The manifest (`manifest.json`, first member) names every file with its sha256 and size; an
//! optional `manifest.sig` signs the manifest with ed25519, which therefore covers every byte.
//! Import never trusts the archive: members must be plain files with plain relative paths, within
//! size limits, unique and listed; everything is staged in the cache's `tmp/` and verified (hashes,
//! metadata seals, names and keys, signature) before the first entry becomes visible, so a bad
//! bundle changes nothing. Entries are installed with the same atomic rename as compiles; winner
//! records merge keeping the faster one and reporting the conflict.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cache::layout;
use crate::cache::meta::FileDigest;
use crate::cache::store::{CacheError, CacheStore, check_file, parse_meta_bytes};
use crate::cache::winner::WinnerRecord;
use crate::key::Key;
use crate::spec::KernelSpec;
use crate::target::Arch;

/// Bundle format version.
pub const BUNDLE_FORMAT: u32 = 1;
/// Largest accepted member.
pub const MAX_MEMBER_BYTES: u64 = 512 << 20;
/// Largest accepted bundle content.
pub const MAX_TOTAL_BYTES: u64 = 16 << 30;
/// Most accepted members.
pub const MAX_MEMBERS: usize = 200_000;
const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.sig";

/// A bundle that cannot be written or is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// File I/O.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The archive cannot be read (truncated, damaged compression or tar structure).
    #[error("bundle {path} is damaged or truncated: {reason}")]
    Damaged {
        /// Bundle.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A member the importer refuses (its name and why).
    #[error("bundle {path} refused: member {member:?} {reason}")]
    Member {
        /// Bundle.
        path: PathBuf,
        /// Member name as stored.
        member: String,
        /// Why.
        reason: String,
    },
    /// Content that does not verify.
    #[error("bundle {path} refused: {reason}")]
    Invalid {
        /// Bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A signing or trust problem.
    #[error("bundle {path} refused: {reason}")]
    Signature {
        /// Bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file that cannot be used.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// One entry in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Cache key.
    pub key: Key,
    /// Spec.
    pub spec: KernelSpec,
    /// Tile name.
    pub tile: String,
    /// Arch.
    pub arch: Arch,
    /// Compiler and version.
    pub compiler: crate::key::CompilerId,
    /// Folder inside the bundle: `kernels/<spec>/<tile>/<arch>/<key>`.
    pub dir: String,
    /// Every file of the entry (meta.json included) with its digest.
    pub files: BTreeMap<String, FileDigest>,
}

/// One winner record in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestWinner {
    /// Path inside the bundle: `winners/<spec>/<key>.json`.
    pub path: String,
    /// Digest of the record file.
    pub digest: FileDigest,
    /// The device it was measured on.
    pub device: crate::cache::winner::DeviceId,
    /// The spec.
    pub spec: KernelSpec,
}

/// The bundle's table of contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// Crate version that exported it.
    pub crate_version: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// Entries.
    pub entries: Vec<ManifestEntry>,
    /// Winner records.
    pub winners: Vec<ManifestWinner>,
}

#[derive(Serialize, Deserialize)]
struct SignatureFile {
    public_key: String,
    signature: String,
}

/// What to export.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Only entries of these specs (and their winners); `None` = everything.
    pub specs: Option<Vec<KernelSpec>>,
    /// Only winner records and the entries they name.
    pub winners_only: bool,
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    /// Entries written.
    pub entries: usize,
    /// Winner records written.
    pub winners: usize,
    /// Damaged entries left out.
    pub skipped_damaged: usize,
    /// Bundle size in bytes.
    pub bytes: u64,
    /// Signer's public key (hex), when signed.
    pub signer: Option<String>,
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportSummary {
    /// Entries added to the cache.
    pub added: usize,
    /// Entries the cache already had.
    pub present: usize,
    /// Winner records added or replaced by faster ones.
    pub winners_added: usize,
    /// Winner records kept because the cache's were faster.
    pub winners_kept: usize,
    /// Conflicts between winner records (same device, spec, bucket, different tile).
    pub conflicts: Vec<String>,
    /// Signer's public key (hex), when signed.
    pub signer: Option<String>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A regular-file header with fixed mode and time, so bundles of the same content are identical.
fn header_for(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes a bundle of `store`'s entries and winners to `out` (atomically: temp file, rename).
pub fn export(
    store: &CacheStore,
    out: &Path,
    opts: &ExportOptions,
    signer: Option<&SigningKey>,
) -> Result<ExportSummary, BundleError> {
    let wanted = |s: &KernelSpec| opts.specs.as_ref().is_none_or(|v| v.contains(s));
    let winners: Vec<WinnerRecord> = store
        .all_winners()
        .into_iter()
        .filter(|w| wanted(&w.spec))
        .collect();
    let winner_keys: BTreeSet<Key> = winners.iter().filter_map(|w| w.artifact_key).collect();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Manifest {
        format: BUNDLE_FORMAT,
        crate_version: crate::CRATE_VERSION.to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        entries: Vec::new(),
        winners: Vec::new(),
    };
    let mut skipped_damaged = 0;
    for s in store.scan()? {
        let Ok(e) = s.entry else {
            skipped_damaged += 1;
            continue;
        };
        let m = &e.meta;
        if !wanted(&m.spec) || (opts.winners_only && !winner_keys.contains(&m.key)) {
            continue;
        }
        let dir = format!(
            "kernels/{}/{}/{}/{}",
            m.spec.name(),
            m.tile.name(m.spec.op()),
            m.arch,
            m.key.hex()
        );
        let mut digests = BTreeMap::new();
        let meta_bytes = fs::read(e.dir.join(layout::META_FILE)).map_err(io("read", &e.dir))?;
        digests.insert(layout::META_FILE.to_string(), FileDigest::of(&meta_bytes));
        files.push((format!("{dir}/{}", layout::META_FILE), meta_bytes));
        for name in m.files.keys() {
            let data = store.read_verified(&e, name)?;
            digests.insert(name.clone(), FileDigest::of(&data));
            files.push((format!("{dir}/{name}"), data));
        }
        manifest.entries.push(ManifestEntry {
            key: m.key,
            spec: m.spec,
            tile: m.tile.name(m.spec.op()),
            arch: m.arch,
            compiler: m.compiler.clone(),
            dir,
            files: digests,
        });
    }
    for w in &winners {
        let path = format!("winners/{}/{}.json", w.spec.name(), w.key().hex());
        let data = serde_json::to_vec_pretty(w).expect("winner serializes");
        manifest.winners.push(ManifestWinner {
            path: path.clone(),
            digest: FileDigest::of(&data),
            device: w.device.clone(),
            spec: w.spec,
        });
        files.push((path, data));
    }
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io("create folder", parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(parent)
        .map_err(io("create temporary file in", parent))?;
    {
        let enc = zstd::Encoder::new(tmp.as_file(), 9).map_err(io("compress", out))?;
        let mut tar = tar::Builder::new(enc);
        let mut add = |name: &str, data: &[u8]| -> Result<(), BundleError> {
            let mut h = header_for(data.len() as u64);
            tar.append_data(&mut h, name, data)
                .map_err(io("write", out))
        };
        add(MANIFEST, &manifest_bytes)?;
        let signer_hex = if let Some(k) = signer {
            let sig = k.sign(&manifest_bytes);
            let sf = SignatureFile {
                public_key: hex::encode(k.verifying_key().to_bytes()),
                signature: hex::encode(sig.to_bytes()),
            };
            add(
                SIGNATURE,
                &serde_json::to_vec(&sf).expect("signature serializes"),
            )?;
            Some(sf.public_key)
        } else {
            None
        };
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, data) in &files {
            add(name, data)?;
        }
        let enc = tar.into_inner().map_err(io("write", out))?;
        enc.finish().map_err(io("compress", out))?;
        tmp.as_file().sync_all().map_err(io("sync", out))?;
        let bytes = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
        tmp.persist(out).map_err(|e| BundleError::Io {
            action: "move into place",
            path: out.to_path_buf(),
            source: e.error,
        })?;
        Ok(ExportSummary {
            entries: manifest.entries.len(),
            winners: manifest.winners.len(),
            skipped_damaged,
            bytes,
            signer: signer_hex,
        })
    }
}

fn member_path(bundle: &Path, raw: &[u8]) -> Result<String, BundleError> {
    let refuse = |reason: &str| BundleError::Member {
        path: bundle.to_path_buf(),
        member: String::from_utf8_lossy(raw).into_owned(),
        reason: reason.to_string(),
    };
    let s = std::str::from_utf8(raw).map_err(|_| refuse("is not a UTF-8 name"))?;
    if s.is_empty() || s.contains('\\') || s.contains('\0') {
        return Err(refuse("has an empty or unusual name"));
    }
    let p = Path::new(s);
    if p.is_absolute() || s.starts_with('/') {
        return Err(refuse("is an absolute path"));
    }
    let mut depth = 0;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => return Err(refuse("climbs out of the bundle (..)")),
            _ => return Err(refuse("is not a plain relative path")),
        }
    }
    if depth == 0 || depth > 6 {
        return Err(refuse("is not at an expected depth"));
    }
    Ok(s.to_string())
}

/// Reads every member of the bundle into `stage`, enforcing the member rules; returns the
/// member names with their digests.
fn unpack(bundle: &Path, stage: &Path) -> Result<BTreeMap<String, FileDigest>, BundleError> {
    let damaged = |e: std::io::Error| BundleError::Damaged {
        path: bundle.to_path_buf(),
        reason: e.to_string(),
    };
    let f = File::open(bundle).map_err(io("open", bundle))?;
    let dec = zstd::Decoder::new(f).map_err(damaged)?;
    let mut ar = tar::Archive::new(dec);
    let mut seen: BTreeMap<String, FileDigest> = BTreeMap::new();
    let mut total: u64 = 0;
    for entry in ar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let raw = entry.path_bytes().into_owned();
        let refuse = |reason: String| BundleError::Member {
            path: bundle.to_path_buf(),
            member: String::from_utf8_lossy(&raw).into_owned(),
            reason,
        };
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular && kind != tar::EntryType::Continuous {
            let what = match kind {
                tar::EntryType::Symlink => "a symbolic link",
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Directory => "a directory",
                _ => "not a regular file",
            };
            return Err(refuse(format!(
                "is {what}: bundles hold regular files only"
            )));
        }
        let name = member_path(bundle, &raw)?;
        let size = entry.header().size().map_err(damaged)?;
        if size > MAX_MEMBER_BYTES {
            return Err(refuse(format!(
                "is {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit"
            )));
        }
        total += size;
        if total > MAX_TOTAL_BYTES {
            return Err(refuse(format!(
                "brings the bundle over {MAX_TOTAL_BYTES} bytes"
            )));
        }
        if seen.contains_key(&name) {
            return Err(refuse("appears twice".into()));
        }
        if seen.len() >= MAX_MEMBERS {
            return Err(refuse(format!("is past the {MAX_MEMBERS}-member limit")));
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut data)
            .map_err(damaged)?;
        if data.len() as u64 != size {
            return Err(BundleError::Damaged {
                path: bundle.to_path_buf(),
                reason: format!("member {name} ends early"),
            });
        }
        let target = stage.join(&name);
        let dir = target.parent().expect("member has a folder");
        fs::create_dir_all(dir).map_err(io("create folder", dir))?;
        let mut out = File::create(&target).map_err(io("create", &target))?;
        out.write_all(&data).map_err(io("write", &target))?;
        seen.insert(name, FileDigest::of(&data));
    }
    Ok(seen)
}

/// Imports `bundle` into `store`. With `trusted` keys, the bundle must be signed by one of them.
pub fn import(
    store: &CacheStore,
    bundle: &Path,
    trusted: &[VerifyingKey],
) -> Result<ImportSummary, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: bundle.to_path_buf(),
        reason,
    };
    let tmp_root = store.layout().tmp_dir();
    fs::create_dir_all(&tmp_root).map_err(io("create folder", &tmp_root))?;
    let stage = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(&tmp_root)
        .map_err(io("create temporary folder in", &tmp_root))?;
    let members = unpack(bundle, stage.path())?;

    // The manifest and its signature.
    let manifest_bytes = fs::read(stage.path().join(MANIFEST))
        .map_err(|_| invalid(format!("it has no {MANIFEST}")))?;
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let fmt: FormatOnly = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(format!("{MANIFEST} does not parse: {e}")))?;
    if fmt.format != BUNDLE_FORMAT {
        return Err(invalid(format!(
            "bundle format {} is unknown: this flasheva reads format {BUNDLE_FORMAT}",
            fmt.format
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(format!("{MANIFEST} does not parse: {e}")))?;
    let signer = verify_signature(
        bundle,
        stage.path(),
        &manifest_bytes,
        members.contains_key(SIGNATURE),
        trusted,
    )?;

    // Every member listed, every listed file present with its digest.
    let mut listed: BTreeMap<String, &FileDigest> = BTreeMap::new();
    for e in &manifest.entries {
        let want = format!(
            "kernels/{}/{}/{}/{}",
            e.spec.name(),
            e.tile,
            e.arch,
            e.key.hex()
        );
        if e.dir != want {
            return Err(invalid(format!(
                "entry {} is filed under {}, expected {want}",
                e.key.short(),
                e.dir
            )));
        }
        for (name, d) in &e.files {
            if name.contains('/') {
                return Err(invalid(format!(
                    "entry {} lists a nested file {name}",
                    e.key.short()
                )));
            }
            if listed.insert(format!("{}/{name}", e.dir), d).is_some() {
                return Err(invalid(format!("{}/{name} is listed twice", e.dir)));
            }
        }
    }
    for w in &manifest.winners {
        if listed.insert(w.path.clone(), &w.digest).is_some() {
            return Err(invalid(format!("{} is listed twice", w.path)));
        }
    }
    for name in members.keys() {
        if name != MANIFEST && name != SIGNATURE && !listed.contains_key(name) {
            return Err(invalid(format!("member {name} is not in the manifest")));
        }
    }
    for (name, want) in &listed {
        let got = members
            .get(name)
            .ok_or_else(|| invalid(format!("{name} is in the manifest but not in the bundle")))?;
        if got != *want {
            return Err(invalid(format!(
                "{name} does not match its sha256 in the manifest"
            )));
        }
    }

    // Every entry's own metadata agrees with the manifest and its files.
    let mut metas = Vec::new();
    for e in &manifest.entries {
        let dir = stage.path().join(&e.dir);
        let meta =
            parse_meta_bytes(&fs::read(dir.join(layout::META_FILE)).map_err(io("read", &dir))?)
                .map_err(|r| invalid(format!("entry {}: {r}", e.key.short())))?;
        if meta.key != e.key
            || meta.spec != e.spec
            || meta.arch != e.arch
            || meta.tile.name(meta.spec.op()) != e.tile
        {
            return Err(invalid(format!(
                "entry {}: its metadata names another kernel",
                e.key.short()
            )));
        }
        for (name, d) in &meta.files {
            let data = fs::read(dir.join(name))
                .map_err(|_| invalid(format!("entry {}: {name} is missing", e.key.short())))?;
            check_file(name, &data, d)
                .map_err(|r| invalid(format!("entry {}: {r}", e.key.short())))?;
        }
        metas.push((dir, meta));
    }
    let mut records = Vec::new();
    for w in &manifest.winners {
        let r = WinnerRecord::from_json(
            &fs::read(stage.path().join(&w.path)).map_err(io("read", stage.path()))?,
        )
        .map_err(|e| invalid(format!("{}: {e}", w.path)))?;
        if format!("winners/{}/{}.json", r.spec.name(), r.key().hex()) != w.path {
            return Err(invalid(format!(
                "{} is not the winner record its name says",
                w.path
            )));
        }
        records.push(r);
    }

    // Everything verified: install. A failure now removes what this import added.
    let mut summary = ImportSummary {
        signer,
        ..Default::default()
    };
    let mut added: Vec<PathBuf> = Vec::new();
    for (dir, meta) in metas {
        let _lock = store.lock(&meta.key)?;
        match store.install_dir(&dir, meta) {
            Ok((entry, true)) => {
                summary.added += 1;
                added.push(entry.dir);
            }
            Ok((_, false)) => summary.present += 1,
            Err(e) => {
                for d in &added {
                    let _ = store.discard(d);
                }
                return Err(e.into());
            }
        }
    }
    for r in records {
        match store.find_exact_winner(&r) {
            Some(old) if old.median_ms <= r.median_ms => {
                summary.winners_kept += 1;
                if old.tile != r.tile {
                    summary
                        .conflicts
                        .push(conflict(&old, &r, "kept the cache's"));
                }
            }
            old => {
                if let Some(o) = &old
                    && o.tile != r.tile
                {
                    summary.conflicts.push(conflict(o, &r, "took the bundle's"));
                }
                store.put_winner(&r)?;
                summary.winners_added += 1;
            }
        }
    }
    Ok(summary)
}

fn conflict(old: &WinnerRecord, new: &WinnerRecord, what: &str) -> String {
    format!(
        "{} on {} ({}): cache has {} at {:.4} ms, bundle has {} at {:.4} ms; {what}",
        old.spec,
        old.device.name,
        old.bucket,
        old.tile.name(old.spec.op()),
        old.median_ms,
        new.tile.name(new.spec.op()),
        new.median_ms
    )
}

fn verify_signature(
    bundle: &Path,
    stage: &Path,
    manifest: &[u8],
    present: bool,
    trusted: &[VerifyingKey],
) -> Result<Option<String>, BundleError> {
    let refuse = |reason: String| BundleError::Signature {
        path: bundle.to_path_buf(),
        reason,
    };
    if !present {
        if trusted.is_empty() {
            return Ok(None);
        }
        return Err(refuse(
            "it is not signed, and trusted keys were given".into(),
        ));
    }
    let sf: SignatureFile =
        serde_json::from_slice(&fs::read(stage.join(SIGNATURE)).map_err(io("read", stage))?)
            .map_err(|e| refuse(format!("{SIGNATURE} does not parse: {e}")))?;
    let pk_bytes: [u8; 32] = hex::decode(&sf.public_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| refuse("the signer's public key is malformed".into()))?;
    let pk = VerifyingKey::from_bytes(&pk_bytes)
        .map_err(|_| refuse("the signer's public key is invalid".into()))?;
    let sig = hex::decode(&sf.signature)
        .ok()
        .and_then(|v| Signature::from_slice(&v).ok())
        .ok_or_else(|| refuse("the signature is malformed".into()))?;
    pk.verify(manifest, &sig).map_err(|_| {
        refuse("the signature does not match the manifest (the bundle was altered)".into())
    })?;
    if !trusted.is_empty() && !trusted.contains(&pk) {
        return Err(refuse(format!(
            "it is signed by {}, which is not a trusted key",
            sf.public_key
        )));
    }
    Ok(Some(sf.public_key))
}

/// Creates a signing key: writes the secret to `path` (mode 0600, refusing to overwrite) and
/// returns the public key as hex.
pub fn keygen(path: &Path) -> Result<String, BundleError> {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let text = format!("flasheva-ed25519-secret {}\n", hex::encode(seed));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason: if e.kind() == std::io::ErrorKind::AlreadyExists {
            "exists already; flasheva does not overwrite keys".into()
        } else {
            e.to_string()
        },
    })?;
    f.write_all(text.as_bytes()).map_err(io("write", path))?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// Reads a secret key written by [`keygen`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let bad = |reason: &str| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let hexs = text
        .trim()
        .strip_prefix("flasheva-ed25519-secret ")
        .ok_or_else(|| bad("is not a flasheva secret key (flasheva cache keygen writes one)"))?;
    let seed: [u8; 32] = hex::decode(hexs.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("holds a malformed key"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a trusted public key: 64 hex digits, or a file holding them.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, BundleError> {
    let text = if Path::new(s).is_file() {
        fs::read_to_string(s).unwrap_or_default()
    } else {
        s.to_string()
    };
    let hexs = text.trim().trim_start_matches("flasheva-ed25519 ").trim();
    let bytes: [u8; 32] = hex::decode(hexs)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| BundleError::KeyFile {
            path: PathBuf::from(s),
            reason: "is not a public key: expected 64 hex digits (flasheva cache keygen prints one) or a file holding them".into(),
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| BundleError::KeyFile {
        path: PathBuf::from(s),
        reason: "is not a valid ed25519 public key".into(),
    })
}
