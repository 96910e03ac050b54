//! Bundles: one `tar + zstd` file carrying cache entries and winner records between machines.
//!
//! What a bundle can and cannot do: it can add entries and winner records to a cache, nothing
//! else. Its manifest (`manifest.json`, first member) names every file with its sha256 and size;
//! an optional `manifest.sig` (second member) signs the manifest with ed25519, which therefore
//! covers every byte. Import never trusts the archive ([`reader`]): the manifest and signature
//! are checked, and the trust decision made, before any member is read; members are streamed into
//! an owned staging folder within the declared sizes; each entry's metadata is parsed through
//! the validating constructors, names only the files an entry has, and its key is recomputed from
//! its inputs (and its source re-rendered when the bundle comes from this flasheva version); then
//! everything is installed all-or-nothing through [`crate::cache::txn`].
//!
//! An artifact is identified by its inputs, so only a signature (or a rebuild) vouches for its
//! bytes: by default an unsigned bundle, or one signed by a key not trusted, is refused;
//! [`ImportOptions::allow_unsigned`] accepts one explicitly, and [`ImportOptions::rebuild`]
//! accepts only entries whose PTX and cubin it reproduces byte for byte (NVRTC is deterministic:
//! `tests/nvrtc_determinism.rs`).

pub mod keys;
pub mod manifest;
pub mod reader;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::cache::fsx;
use crate::cache::layout::{self, StageKind};
use crate::cache::meta::{EntryMeta, FileDigest};
use crate::cache::store::{CacheError, CacheStore};
use crate::cache::txn::{self, Journal};
use crate::cache::winner::WinnerRecord;
use crate::cache::winners::{read_winner, winner_json, winner_rel};
use crate::compile::{CompileJob, CompilerSet, options_for_backend};
use crate::key::Key;
use crate::spec::KernelSpec;

pub use keys::{SignatureFile, keygen, parse_public_key, read_signing_key};
pub use manifest::{
    BUNDLE_FORMAT, MAX_MEMBER_BYTES, MAX_MEMBERS, MAX_TOTAL_BYTES, Manifest, ManifestEntry,
    ManifestWinner,
};

/// A bundle that cannot be written or is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A signature that does not verify (altered bundle, malformed or weak key).
    #[error("bundle {path} refused: {reason}")]
    Signature {
        /// Bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not signed by a trusted key, and neither `--allow-unsigned` nor `--rebuild-check` given.
    #[error(
        "bundle {path} refused: {}; import only bundles signed by a key you trust (--trust PUBKEY, or FLASHEVA_TRUSTED_KEYS), or accept it explicitly with --allow-unsigned, or with --rebuild-check take only the entries this machine recompiles to the same bytes",
        match signer { Some(k) => format!("it is signed by {k}, which is not a trusted key"), None => "it is not signed".to_string() }
    )]
    Untrusted {
        /// Bundle.
        path: PathBuf,
        /// The signer's key (hex), when signed.
        signer: Option<String>,
    },
    /// `--rebuild-check` could not reproduce an entry.
    #[error("bundle {path} refused: entry {entry}: {reason}")]
    Unreproducible {
        /// Bundle.
        path: PathBuf,
        /// The entry's kernel and arch.
        entry: String,
        /// What differed.
        reason: String,
    },
    /// A key file that cannot be used.
    #[error("key {path}: {reason}")]
    KeyFile {
        /// Path (or the text given).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The export destination is not a regular file.
    #[error(
        "--out {path} {reason}: flasheva writes bundles only to a new or regular file (--out - writes to standard output)"
    )]
    Output {
        /// The path.
        path: PathBuf,
        /// What is there.
        reason: String,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What to export.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Only entries of these specs (and their winners); `None` = everything.
    pub specs: Option<Vec<KernelSpec>>,
    /// Only winner records and the entries they name.
    pub winners_only: bool,
}

impl ExportOptions {
    /// Everything in the cache (the default).
    pub fn all() -> ExportOptions {
        ExportOptions::default()
    }

    /// Only entries of these specs (and their winners).
    pub fn specs(mut self, specs: Option<Vec<KernelSpec>>) -> ExportOptions {
        self.specs = specs;
        self
    }

    /// Only winner records and the entries they name.
    pub fn winners_only(mut self, on: bool) -> ExportOptions {
        self.winners_only = on;
        self
    }
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

/// Who vouches for an imported bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Vouched {
    /// Signed by this trusted key (hex).
    Signed(String),
    /// Accepted without a trusted signature because the caller allowed it.
    AllowedUnsigned,
    /// Every entry was recompiled here to the same bytes.
    Rebuilt,
}

/// How an import decides what to trust.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ImportOptions<'a> {
    /// Keys whose signature is trusted.
    pub trusted: Vec<VerifyingKey>,
    /// Accept a bundle that no trusted key signed.
    pub allow_unsigned: bool,
    /// Recompile every entry with these compilers (each entry's backend's) and require
    /// identical PTX and cubin; a bundle no trusted key signed is then accepted for the entries
    /// (its winner records, which no rebuild can vouch for, are left out).
    pub rebuild: Option<&'a dyn CompilerSet>,
}

impl<'a> ImportOptions<'a> {
    /// Import only bundles signed by one of `keys` (the default, with no keys: nothing imports
    /// until a key is trusted or unsigned bundles are allowed).
    pub fn trusting(keys: Vec<VerifyingKey>) -> ImportOptions<'a> {
        ImportOptions {
            trusted: keys,
            ..ImportOptions::default()
        }
    }

    /// Also accept a bundle no trusted key signed.
    pub fn allow_unsigned(mut self, on: bool) -> ImportOptions<'a> {
        self.allow_unsigned = on;
        self
    }

    /// Recompile every entry with `compilers` and accept only what comes out byte-identical.
    pub fn rebuild(mut self, compiler: Option<&'a dyn CompilerSet>) -> ImportOptions<'a> {
        self.rebuild = compiler;
        self
    }
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportSummary {
    /// Entries added to the cache.
    pub added: usize,
    /// Entries the cache already had.
    pub present: usize,
    /// Entries recompiled here to the same bytes (`rebuild`).
    pub rebuilt: usize,
    /// Winner records added or replaced by faster ones.
    pub winners_added: usize,
    /// Winner records kept because the cache's were faster.
    pub winners_kept: usize,
    /// Winner records left out because only a rebuild vouched for the bundle.
    pub winners_skipped: usize,
    /// Conflicts between winner records (same device, spec, bucket, different tile).
    pub conflicts: Vec<String>,
    /// Signer's public key (hex), when signed (trusted or not).
    pub signer: Option<String>,
    /// Who vouched for it.
    pub vouched: Option<Vouched>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A regular-file ustar header with fixed mode, owner and time, so bundles of the same content
/// are identical (ustar splits long names into prefix and name; no GNU or PAX records).
fn header_for(name: &str, size: u64) -> Result<tar::Header, std::io::Error> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// The bundle's members: manifest bytes, and every file (name, bytes) in the manifest's order.
struct Contents {
    manifest: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
    entries: usize,
    winners: usize,
    skipped_damaged: usize,
}

fn collect(store: &CacheStore, opts: &ExportOptions) -> Result<Contents, BundleError> {
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
        crate_version: crate::ARTIFACT_VERSION.to_string(),
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
        let dir = m.rel_dir();
        let mut digests = BTreeMap::new();
        let meta_bytes = m.to_json();
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
            tile: m.tile,
            arch: m.arch,
            compiler: m.compiler.clone(),
            dir,
            files: digests,
        });
    }
    for w in &winners {
        let path = winner_rel(w);
        let data = winner_json(w);
        manifest.winners.push(ManifestWinner {
            path: path.clone(),
            digest: FileDigest::of(&data),
            device: w.device.clone(),
            spec: w.spec,
        });
        files.push((path, data));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Contents {
        manifest: serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        entries: manifest.entries.len(),
        winners: manifest.winners.len(),
        files,
        skipped_damaged,
    })
}

/// Writes a bundle of `store`'s entries and winners to `out`: manifest first, then the
/// signature, then the files. Returns the summary without `bytes`.
pub fn export_to(
    store: &CacheStore,
    out: impl Write,
    opts: &ExportOptions,
    signer: Option<&SigningKey>,
) -> Result<ExportSummary, BundleError> {
    let c = collect(store, opts)?;
    let err = |e: std::io::Error| BundleError::Io {
        action: "write",
        path: PathBuf::from("the bundle"),
        source: e,
    };
    let enc = zstd::Encoder::new(out, 9).map_err(err)?;
    let mut tar = tar::Builder::new(enc);
    let mut add = |name: &str, data: &[u8]| -> Result<(), BundleError> {
        let h = header_for(name, data.len() as u64).map_err(err)?;
        tar.append(&h, data).map_err(err)
    };
    add(manifest::MANIFEST, &c.manifest)?;
    let signer_hex = match signer {
        Some(k) => {
            let sf = SignatureFile {
                public_key: hex::encode(k.verifying_key().to_bytes()),
                signature: hex::encode(k.sign(&c.manifest).to_bytes()),
            };
            add(
                manifest::SIGNATURE,
                &serde_json::to_vec(&sf).expect("signature serializes"),
            )?;
            Some(sf.public_key)
        }
        None => None,
    };
    for (name, data) in &c.files {
        add(name, data)?;
    }
    let enc = tar.into_inner().map_err(err)?;
    let mut out = enc.finish().map_err(err)?;
    out.flush().map_err(err)?;
    Ok(ExportSummary {
        entries: c.entries,
        winners: c.winners,
        skipped_damaged: c.skipped_damaged,
        bytes: 0,
        signer: signer_hex,
    })
}

/// Writes a bundle to the file `out` (atomically: a temporary file beside it, then a rename).
/// `out` must be new or a regular file: a link, FIFO, device or folder there is refused.
pub fn export(
    store: &CacheStore,
    out: &Path,
    opts: &ExportOptions,
    signer: Option<&SigningKey>,
) -> Result<ExportSummary, BundleError> {
    check_output(out)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(BundleError::Output {
            path: out.to_path_buf(),
            reason: "is in a folder that does not exist".into(),
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(parent)
        .map_err(io("create temporary file in", parent))?;
    let mut s = export_to(store, tmp.as_file(), opts, signer)?;
    tmp.as_file().sync_all().map_err(io("sync", out))?;
    s.bytes = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    check_output(out)?;
    tmp.persist(out).map_err(|e| BundleError::Io {
        action: "move into place",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(s)
}

fn check_output(out: &Path) -> Result<(), BundleError> {
    match fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(BundleError::Output {
            path: out.to_path_buf(),
            reason: format!("is {}", crate::cache::damage::kind_of(&m.file_type())),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspect", out)(e)),
    }
}

/// Imports `bundle` into `store` under `opts`' trust rules: verified completely before anything
/// becomes visible, then installed all-or-nothing (see the module documentation).
pub fn import(
    store: &CacheStore,
    bundle: &Path,
    opts: &ImportOptions<'_>,
) -> Result<ImportSummary, BundleError> {
    let span = tracing::info_span!("import", bundle = %bundle.display());
    let _enter = span.enter();
    let r = import_inner(store, bundle, opts);
    match &r {
        Ok(s) => tracing::info!(
            added = s.added,
            present = s.present,
            winners_added = s.winners_added,
            conflicts = s.conflicts.len(),
            "imported"
        ),
        Err(e) => tracing::warn!(error = %e, "refused"),
    }
    r
}

fn import_inner(
    store: &CacheStore,
    bundle: &Path,
    opts: &ImportOptions<'_>,
) -> Result<ImportSummary, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: bundle.to_path_buf(),
        reason,
    };
    let (file, _) = fsx::open_regular(bundle, true).map_err(|e| BundleError::Invalid {
        path: bundle.to_path_buf(),
        reason: format!("cannot be read: it {e}"),
    })?;
    let staging = store.stage(StageKind::Import, true)?;
    let decide = |_: &Manifest, bytes: &[u8], sig: Option<&[u8]>| {
        let key = match sig {
            Some(sig) => Some(keys::check_signature(bytes, sig).map_err(|reason| {
                BundleError::Signature {
                    path: bundle.to_path_buf(),
                    reason,
                }
            })?),
            None => None,
        };
        let hexkey = key.map(|k| hex::encode(k.to_bytes()));
        let vouched = match key {
            Some(k) if opts.trusted.contains(&k) => Vouched::Signed(hexkey.clone().unwrap()),
            _ if opts.allow_unsigned => Vouched::AllowedUnsigned,
            _ if opts.rebuild.is_some() => Vouched::Rebuilt,
            _ => {
                return Err(BundleError::Untrusted {
                    path: bundle.to_path_buf(),
                    signer: hexkey,
                });
            }
        };
        Ok((vouched, hexkey))
    };
    let (manifest, (vouched, hexkey)) = reader::read(
        bundle,
        std::io::BufReader::new(file),
        decide,
        Some(staging.path()),
    )?;

    // Every entry's own metadata agrees with the manifest, its key is the key of its inputs,
    // its files verify, and (same flasheva) its source is what this flasheva renders.
    let mut summary = ImportSummary {
        signer: hexkey,
        vouched: Some(vouched.clone()),
        ..Default::default()
    };
    let mut journal = Journal::default();
    for e in &manifest.entries {
        let dir = staging.path().join(&e.dir);
        let entry = store.verify_dir(&dir).map_err(|d| {
            invalid(format!(
                "entry {} ({} {}): {d}",
                e.key.short(),
                e.spec,
                e.arch
            ))
        })?;
        let meta = &entry.meta;
        let listed: BTreeMap<&String, &FileDigest> = e
            .files
            .iter()
            .filter(|(n, _)| *n != layout::META_FILE)
            .collect();
        let recorded: BTreeMap<&String, &FileDigest> = meta.files.iter().collect();
        if meta.key != e.key
            || meta.spec != e.spec
            || meta.tile != e.tile
            || meta.arch != e.arch
            || meta.compiler != e.compiler
            || listed != recorded
        {
            return Err(invalid(format!(
                "entry {}: its metadata does not match the manifest",
                e.key.short()
            )));
        }
        let source = fs::read(dir.join(layout::SOURCE_FILE)).map_err(io("read", &dir))?;
        check_inputs(meta, &source)
            .map_err(|r| invalid(format!("entry {}: {r}", e.key.short())))?;
        if let Some(c) = opts.rebuild {
            rebuild_check(c, meta, &source, &dir).map_err(|reason| {
                BundleError::Unreproducible {
                    path: bundle.to_path_buf(),
                    entry: format!("{} {} ({})", meta.spec, meta.arch, meta.key.short()),
                    reason,
                }
            })?;
            summary.rebuilt += 1;
        }
        journal.entries.push(e.dir.clone());
    }
    for w in &manifest.winners {
        let staged = staging.path().join(&w.path);
        let r = read_winner(&staged).map_err(|e| invalid(format!("{}: {e}", w.path)))?;
        if winner_rel(&r) != w.path || r.spec != w.spec || r.device != w.device {
            return Err(invalid(format!(
                "{} is not the winner record its name says",
                w.path
            )));
        }
        if vouched == Vouched::Rebuilt {
            summary.winners_skipped += 1;
        } else {
            journal.winners.push(w.path.clone());
        }
    }

    // Everything verified: commit and install. Before the commit nothing is visible; after it,
    // a failure (or a kill) leaves the journal for the next open of the cache to complete.
    txn::commit(store, staging.path(), &journal)?;
    match txn::apply(store, staging.path()) {
        Ok(a) => {
            summary.added = a.added;
            summary.present = a.present;
            summary.winners_added = a.winners_added;
            summary.winners_kept = a.winners_kept;
            summary.conflicts = a.conflicts;
            Ok(summary)
        }
        Err(e) => {
            staging.keep();
            Err(e.into())
        }
    }
}

/// Where an entry's inputs can be checked here: a bundle of this flasheva version must carry
/// the source this version renders for its spec and tile, compiled with this version's options.
fn check_inputs(meta: &EntryMeta, source: &[u8]) -> Result<(), String> {
    if meta.crate_version != crate::ARTIFACT_VERSION {
        return Ok(());
    }
    let rendered = crate::render::render(&meta.spec, &meta.tile).map_err(|e| e.to_string())?;
    if rendered.as_bytes() != source {
        return Err(format!(
            "{} is not the source this flasheva renders for {} tile {}",
            layout::SOURCE_FILE,
            meta.spec,
            meta.tile.name(meta.spec.op())
        ));
    }
    if meta.options != options_for_backend(meta.tile.engine().backend(), meta.arch) {
        return Err("its compiler options are not the ones this flasheva uses".into());
    }
    Ok(())
}

fn rebuild_check(
    compilers: &dyn CompilerSet,
    meta: &EntryMeta,
    source: &[u8],
    dir: &Path,
) -> Result<(), String> {
    let c = compilers
        .for_backend(meta.tile.engine().backend())
        .map_err(|e| format!("it cannot be rebuilt here: {e}"))?;
    if c.id() != &meta.compiler {
        return Err(format!(
            "it was built with {}, this machine has {}: it cannot be rebuilt here",
            crate::cache::text::printable(&meta.compiler.to_string()),
            c.id()
        ));
    }
    let source = std::str::from_utf8(source).map_err(|_| "its source is not UTF-8".to_string())?;
    let program = meta.spec.source_file_name();
    let art = c
        .compile(&CompileJob {
            program_name: &program,
            source,
            arch: meta.arch,
            options: &meta.options,
        })
        .map_err(|e| format!("it does not compile here: {e}"))?;
    for (name, bytes) in [
        (layout::PTX_FILE, &art.ptx),
        (layout::CUBIN_FILE, &art.cubin),
    ] {
        let shipped = fs::read(dir.join(name)).map_err(|e| e.to_string())?;
        if &shipped != bytes {
            return Err(format!(
                "its {name} differs from what this machine compiles from its source"
            ));
        }
    }
    Ok(())
}
