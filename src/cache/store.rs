//! The cache's file side: atomic inserts (assemble in `tmp/`, write `meta.json` last, rename the
//! folder into place), verified reads (every byte handed out matches its recorded sha256),
//! per-key advisory locks, listing, verification and clearing.
//!
//! A damaged entry is never loaded: lookups report it, and the next insert of that key replaces it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cache::layout::{self, Layout};
use crate::cache::meta::{EntryMeta, FileDigest, META_FORMAT};
use crate::cache::winner::{Bucket, CandidateResult, WinnerRecord};
use crate::key::{Key, sha256};
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// A cache failure (I/O, or a request the cache cannot satisfy).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An entry failed verification.
    #[error("damaged cache entry {path}: {reason}")]
    Damaged {
        /// The entry folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No entry has this key (prefix).
    #[error("no cache entry has a key starting with '{0}'")]
    NotFound(String),
    /// Several entries match a key prefix.
    #[error("{count} cache entries have keys starting with '{prefix}': give more digits")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many match.
        count: usize,
    },
    /// No cache folder could be chosen.
    #[error("no cache folder: set FLASHEVA_CACHE_DIR or pass --cache-dir DIR")]
    NoCacheDir,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A verified entry: its folder and metadata.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry folder.
    pub dir: PathBuf,
    /// Its metadata (seal checked).
    pub meta: EntryMeta,
}

/// Result of looking up one key.
#[derive(Debug)]
pub enum Lookup {
    /// Present and every file verified.
    Hit(Box<Entry>),
    /// Not present.
    Miss,
    /// Present but damaged: treat as a miss, and warn.
    Damaged(String),
}

/// One entry folder found by a scan, verified or not.
#[derive(Debug)]
pub struct Scanned {
    /// The folder.
    pub dir: PathBuf,
    /// The entry, or why it is damaged.
    pub entry: Result<Entry, String>,
}

/// An exclusive advisory lock on one key, held until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

/// The last-use marker inside an entry folder (not part of the entry's content).
pub const USED_FILE: &str = ".used";

/// What `gc` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcSummary {
    /// Entries removed.
    pub evicted: usize,
    /// Of which damaged.
    pub damaged: usize,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Bytes of entries left.
    pub remaining_bytes: u64,
    /// Winner artifacts kept although older.
    pub kept_winners: usize,
    /// Leftovers of interrupted writes removed.
    pub stale_tmp: usize,
}

/// A cache folder.
#[derive(Clone, Debug)]
pub struct CacheStore {
    layout: Layout,
}

/// The default cache folder: `$FLASHEVA_CACHE_DIR`, else `<user cache dir>/flasheva`.
pub fn default_root() -> Result<PathBuf, CacheError> {
    crate::config::cache_dir()
        .or_else(crate::config::default_cache_dir)
        .ok_or(CacheError::NoCacheDir)
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let mut f = File::create(path).map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))?;
    Ok(())
}

/// Reads and verifies an entry's metadata: it parses, its seal holds, and it lists PTX and cubin.
pub fn parse_meta_bytes(bytes: &[u8]) -> Result<EntryMeta, String> {
    parse_meta(bytes)
}

/// Checks `data` against a recorded digest.
pub fn check_file(name: &str, data: &[u8], digest: &FileDigest) -> Result<(), String> {
    check_digest(name, data, digest)
}

/// Reads and fully verifies the entry in `dir` (seal, key, location, every file's size and hash).
pub fn verify_dir(dir: &Path) -> Result<Entry, String> {
    let meta_path = dir.join(layout::META_FILE);
    let bytes =
        fs::read(&meta_path).map_err(|e| format!("cannot read {}: {e}", layout::META_FILE))?;
    let meta = parse_meta(&bytes)?;
    check_location(dir, &meta)?;
    for (name, digest) in &meta.files {
        let data = fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"))?;
        check_digest(name, &data, digest)?;
    }
    Ok(Entry {
        dir: dir.to_path_buf(),
        meta,
    })
}

fn parse_meta(bytes: &[u8]) -> Result<EntryMeta, String> {
    let meta: EntryMeta = serde_json::from_slice(bytes)
        .map_err(|e| format!("{} does not parse: {e}", layout::META_FILE))?;
    if meta.format != META_FORMAT {
        return Err(format!(
            "metadata format {} is not {META_FORMAT}",
            meta.format
        ));
    }
    meta.tile
        .check(&meta.spec)
        .map_err(|e| format!("{}: {e}", layout::META_FILE))?;
    if !meta.seal_ok() {
        return Err(format!(
            "{} was modified (seal mismatch)",
            layout::META_FILE
        ));
    }
    for required in [layout::PTX_FILE, layout::CUBIN_FILE] {
        if !meta.files.contains_key(required) {
            return Err(format!("metadata lists no {required}"));
        }
    }
    Ok(meta)
}

fn check_location(dir: &Path, meta: &EntryMeta) -> Result<(), String> {
    let comps: Vec<String> = dir
        .components()
        .rev()
        .take(4)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let expect = [
        meta.key.hex(),
        meta.arch.to_string(),
        meta.tile.name(meta.spec.op()),
        meta.spec.name(),
    ];
    if comps.len() != 4 || comps.iter().zip(expect.iter()).any(|(a, b)| a != b) {
        return Err(format!(
            "folder does not match its metadata (expected .../{}/{}/{}/{})",
            expect[3], expect[2], expect[1], expect[0]
        ));
    }
    Ok(())
}

fn check_digest(name: &str, data: &[u8], digest: &FileDigest) -> Result<(), String> {
    if data.len() as u64 != digest.bytes {
        return Err(format!(
            "{name} has {} bytes, {} recorded",
            data.len(),
            digest.bytes
        ));
    }
    if sha256(data).hex() != digest.sha256 {
        return Err(format!("{name} does not match its sha256"));
    }
    Ok(())
}

impl CacheStore {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<CacheStore, CacheError> {
        let layout = Layout::new(root);
        for d in [layout.kernels_dir(), layout.locks_dir(), layout.tmp_dir()] {
            fs::create_dir_all(&d).map_err(io("create folder", &d))?;
        }
        Ok(CacheStore { layout })
    }

    /// Opens the default cache (see [`default_root`]).
    pub fn open_default() -> Result<CacheStore, CacheError> {
        CacheStore::open(default_root()?)
    }

    /// The paths of this cache.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Looks up one key, verifying every file of a present entry.
    pub fn lookup(&self, spec: &KernelSpec, tile: &Tile, arch: Arch, key: &Key) -> Lookup {
        let dir = self.layout.entry_dir(spec, tile, arch, key);
        if !dir.exists() {
            return Lookup::Miss;
        }
        match verify_dir(&dir) {
            Ok(e) => Lookup::Hit(Box::new(e)),
            Err(reason) => Lookup::Damaged(format!("{}: {reason}", dir.display())),
        }
    }

    /// Entries of (spec, tile, arch) whose metadata verifies, newest first; damaged ones are
    /// returned separately as (folder, reason). Artifacts are verified when read
    /// ([`CacheStore::read_verified`]).
    pub fn candidates(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        arch: Arch,
    ) -> (Vec<Entry>, Vec<(PathBuf, String)>) {
        let dir = self.layout.variant_dir(spec, tile, arch);
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else {
            return (good, bad);
        };
        for e in rd.flatten() {
            let path = e.path();
            let r = fs::read(path.join(layout::META_FILE))
                .map_err(|e| format!("cannot read {}: {e}", layout::META_FILE))
                .and_then(|b| parse_meta(&b))
                .and_then(|m| check_location(&path, &m).map(|_| m));
            match r {
                Ok(meta) => good.push(Entry { dir: path, meta }),
                Err(reason) => bad.push((path, reason)),
            }
        }
        good.sort_by(|a, b| {
            b.meta
                .created_unix
                .cmp(&a.meta.created_unix)
                .then(a.meta.key.cmp(&b.meta.key))
        });
        (good, bad)
    }

    /// Reads one file of an entry and checks it against the recorded digest.
    pub fn read_verified(&self, entry: &Entry, name: &str) -> Result<Vec<u8>, CacheError> {
        let damaged = |reason: String| CacheError::Damaged {
            path: entry.dir.clone(),
            reason,
        };
        let digest = entry
            .meta
            .files
            .get(name)
            .ok_or_else(|| damaged(format!("metadata lists no {name}")))?;
        let path = entry.dir.join(name);
        let data = fs::read(&path).map_err(|e| damaged(format!("cannot read {name}: {e}")))?;
        check_digest(name, &data, digest).map_err(damaged)?;
        Ok(data)
    }

    /// Takes the advisory lock of `key` (blocking until other processes release it).
    pub fn lock(&self, key: &Key) -> Result<KeyLock, CacheError> {
        let path = self.layout.lock_file(key);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open lock", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(KeyLock { _file: file })
    }

    /// Inserts an entry atomically. `meta.files` and `meta.seal` are filled in here from `files`.
    /// If a valid entry with this key already exists (another process won the race) it is kept
    /// and returned; a damaged one is replaced.
    pub fn insert(
        &self,
        mut meta: EntryMeta,
        files: &[(&str, &[u8])],
    ) -> Result<Entry, CacheError> {
        let tmp_root = self.layout.tmp_dir();
        fs::create_dir_all(&tmp_root).map_err(io("create folder", &tmp_root))?;
        let tmp = tempfile::Builder::new()
            .prefix("entry-")
            .tempdir_in(&tmp_root)
            .map_err(io("create temporary folder in", &tmp_root))?;
        meta.files.clear();
        for (name, data) in files {
            write_synced(&tmp.path().join(name), data)?;
            meta.files.insert(name.to_string(), FileDigest::of(data));
        }
        let meta = meta.sealed();
        write_synced(&tmp.path().join(layout::META_FILE), &meta.to_json())?;
        let staged = tmp.keep();
        self.install_dir(&staged, meta).map(|(e, _)| e)
    }

    /// Moves a complete, verified entry folder `staged` (inside this cache's `tmp/`) into place.
    /// Returns the entry and whether it is new: when a valid entry of the same key is already
    /// there (another process won the race) that one is kept and `staged` deleted; a damaged one
    /// is replaced.
    pub fn install_dir(&self, staged: &Path, meta: EntryMeta) -> Result<(Entry, bool), CacheError> {
        let final_dir = self
            .layout
            .entry_dir(&meta.spec, &meta.tile, meta.arch, &meta.key);
        let parent = final_dir.parent().expect("entry folder has a parent");
        fs::create_dir_all(parent).map_err(io("create folder", parent))?;
        for _ in 0..3 {
            match fs::rename(staged, &final_dir) {
                Ok(()) => {
                    if let Ok(d) = File::open(parent) {
                        let _ = d.sync_all();
                    }
                    return Ok((
                        Entry {
                            dir: final_dir,
                            meta,
                        },
                        true,
                    ));
                }
                Err(_) if final_dir.exists() => match verify_dir(&final_dir) {
                    Ok(existing) => {
                        let _ = fs::remove_dir_all(staged);
                        return Ok((existing, false));
                    }
                    Err(_) => self.discard(&final_dir)?,
                },
                Err(e) => {
                    let _ = fs::remove_dir_all(staged);
                    return Err(CacheError::Io {
                        action: "move into place",
                        path: final_dir,
                        source: e,
                    });
                }
            }
        }
        let _ = fs::remove_dir_all(staged);
        Err(CacheError::Damaged {
            path: final_dir,
            reason: "could not replace the damaged entry".into(),
        })
    }

    /// Moves a folder out of sight (into `tmp/`) and deletes it.
    pub fn discard(&self, dir: &Path) -> Result<(), CacheError> {
        let trash = tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(self.layout.tmp_dir())
            .map_err(io("create temporary folder in", &self.layout.tmp_dir()))?;
        let target = trash.path().join("x");
        match fs::rename(dir, &target) {
            Ok(()) => Ok(()),
            Err(e) if !dir.exists() => {
                let _ = e;
                Ok(())
            }
            Err(e) => Err(CacheError::Io {
                action: "move aside",
                path: dir.to_path_buf(),
                source: e,
            }),
        }
        // `trash` is deleted with its content when dropped here.
    }

    /// Every entry folder under `kernels/`, verified, sorted by path.
    pub fn scan(&self) -> Result<Vec<Scanned>, CacheError> {
        let mut out = Vec::new();
        let root = self.layout.kernels_dir();
        let mut dirs = vec![(root.clone(), 0usize)];
        while let Some((d, depth)) = dirs.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read folder", &d)(e)),
            };
            for e in rd.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                if depth == 3 {
                    let entry = verify_dir(&p);
                    out.push(Scanned { dir: p, entry });
                } else {
                    dirs.push((p, depth + 1));
                }
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }

    /// The entry whose key starts with `prefix` (at least 4 hex digits).
    pub fn find_by_key(&self, prefix: &str) -> Result<Scanned, CacheError> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CacheError::NotFound(prefix));
        }
        let mut hits: Vec<Scanned> = self
            .scan()?
            .into_iter()
            .filter(|s| {
                s.dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        match hits.len() {
            0 => Err(CacheError::NotFound(prefix)),
            1 => Ok(hits.remove(0)),
            count => Err(CacheError::Ambiguous { prefix, count }),
        }
    }

    /// Removes every kernel entry (and tuning data); returns how many entries there were.
    pub fn clear(&self) -> Result<usize, CacheError> {
        let n = self.scan()?.len();
        let v = self.layout.root().join(layout::VERSION_DIR);
        if v.exists() {
            self.discard(&v)?;
        }
        fs::create_dir_all(self.layout.kernels_dir())
            .map_err(io("create folder", &self.layout.kernels_dir()))?;
        Ok(n)
    }

    /// The file of a winner record.
    pub fn winner_path(&self, rec: &WinnerRecord) -> PathBuf {
        self.layout
            .winners_dir()
            .join(rec.spec.name())
            .join(format!("{}.json", rec.key().hex()))
    }

    /// Writes a winner record atomically (temp file, then rename), replacing an older one.
    pub fn put_winner(&self, rec: &WinnerRecord) -> Result<PathBuf, CacheError> {
        let path = self.winner_path(rec);
        let dir = path.parent().expect("winner file has a folder");
        fs::create_dir_all(dir).map_err(io("create folder", dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".winner-")
            .tempfile_in(dir)
            .map_err(io("create temporary file in", dir))?;
        let mut json = serde_json::to_vec_pretty(rec).expect("winner serializes");
        json.push(b'\n');
        tmp.write_all(&json).map_err(io("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io("sync", tmp.path()))?;
        tmp.persist(&path).map_err(|e| CacheError::Io {
            action: "move into place",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
    }

    /// Every readable winner record of `spec` (all devices and buckets); unreadable files are
    /// returned as (path, reason).
    pub fn winners_of(
        &self,
        spec: &crate::spec::KernelSpec,
    ) -> (Vec<WinnerRecord>, Vec<(PathBuf, String)>) {
        let dir = self.layout.winners_dir().join(spec.name());
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else {
            return (good, bad);
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for p in paths {
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| WinnerRecord::from_json(&b))
            {
                Ok(r) if r.spec == *spec => good.push(r),
                Ok(_) => bad.push((p, "not a winner record of this spec and format".into())),
                Err(e) => bad.push((p, e)),
            }
        }
        (good, bad)
    }

    /// Every winner record in the cache.
    pub fn all_winners(&self) -> Vec<WinnerRecord> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.layout.winners_dir()) else {
            return out;
        };
        for e in rd.flatten() {
            for f in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                if let Ok(r) = fs::read(f.path())
                    .map_err(|e| e.to_string())
                    .and_then(|b| WinnerRecord::from_json(&b))
                {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| (r.spec.name(), r.bucket));
        out
    }

    /// The tuned tile for `spec` on `device` (name, capability): the record of `bucket`, else the
    /// nearest bucket's; `None` when the device never tuned the spec.
    pub fn find_winner(
        &self,
        device: &str,
        capability: (u32, u32),
        spec: &crate::spec::KernelSpec,
        bucket: &Bucket,
    ) -> Option<WinnerRecord> {
        let (good, _) = self.winners_of(spec);
        good.into_iter()
            .filter(|r| r.device.name == device && r.device.capability == capability)
            .min_by_key(|r| (r.bucket.distance(bucket), r.bucket))
    }

    /// The record with exactly `rec`'s key (device, capability, spec, bucket), if any.
    pub fn find_exact_winner(&self, rec: &WinnerRecord) -> Option<WinnerRecord> {
        let path = self.winner_path(rec);
        let bytes = fs::read(path).ok()?;
        WinnerRecord::from_json(&bytes)
            .ok()
            .filter(|r| r.key() == rec.key())
    }

    /// The journal of a tuning run (resumable measurements), one JSON line per candidate.
    pub fn journal_path(&self, run: &Key) -> PathBuf {
        self.layout.tune_dir().join(format!("{}.jsonl", run.hex()))
    }

    /// Candidate results already recorded for `run` (lines that do not parse are ignored: a
    /// process killed mid-line leaves at most one).
    pub fn read_journal(&self, run: &Key) -> Vec<CandidateResult> {
        let Ok(text) = fs::read_to_string(self.journal_path(run)) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Appends one result to the journal of `run` (flushed to disk).
    pub fn append_journal(&self, run: &Key, r: &CandidateResult) -> Result<(), CacheError> {
        let path = self.journal_path(run);
        let dir = path.parent().expect("journal has a folder");
        fs::create_dir_all(dir).map_err(io("create folder", dir))?;
        let mut f = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let mut line = serde_json::to_vec(r).expect("result serializes");
        line.push(b'\n');
        f.write_all(&line).map_err(io("write", &path))?;
        f.sync_data().map_err(io("sync", &path))?;
        Ok(())
    }

    /// Deletes the journal of a finished run.
    pub fn remove_journal(&self, run: &Key) {
        let _ = fs::remove_file(self.journal_path(run));
    }

    /// Marks an entry as used now (its `.used` file's time orders `gc`'s evictions).
    pub fn touch(&self, entry: &Entry) {
        let p = entry.dir.join(USED_FILE);
        if let Ok(f) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// When an entry was last used (or created).
    fn last_used(dir: &Path) -> std::time::SystemTime {
        fs::metadata(dir.join(USED_FILE))
            .or_else(|_| fs::metadata(dir.join(layout::META_FILE)))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH)
    }

    /// Evicts entries until the cache holds at most `max_bytes`: damaged entries first, then the
    /// least recently used. Artifacts of winner records are kept unless `include_winners`.
    /// Leftovers of interrupted writes older than an hour are removed too.
    pub fn gc(&self, max_bytes: u64, include_winners: bool) -> Result<GcSummary, CacheError> {
        let mut summary = GcSummary::default();
        let hour = std::time::Duration::from_secs(3600);
        for e in fs::read_dir(self.layout.tmp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > hour)
                .unwrap_or(false);
            if old {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                summary.stale_tmp += 1;
            }
        }
        let protected: std::collections::BTreeSet<Key> = if include_winners {
            Default::default()
        } else {
            self.all_winners()
                .iter()
                .filter_map(|w| w.artifact_key)
                .collect()
        };
        let dir_size = |d: &Path| -> u64 {
            fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        };
        let mut items: Vec<(bool, std::time::SystemTime, PathBuf, u64, Option<Key>)> = self
            .scan()?
            .into_iter()
            .map(|s| {
                let size = dir_size(&s.dir);
                let key = s.entry.as_ref().ok().map(|e| e.meta.key);
                (s.entry.is_ok(), Self::last_used(&s.dir), s.dir, size, key)
            })
            .collect();
        let mut total: u64 = items.iter().map(|i| i.3).sum();
        // damaged first (false < true), then oldest use first
        items.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        for (ok, _, dir, size, key) in items {
            if total <= max_bytes && ok {
                break;
            }
            if let Some(k) = key
                && protected.contains(&k)
            {
                summary.kept_winners += 1;
                continue;
            }
            let _lock = key.map(|k| self.lock(&k)).transpose()?;
            self.discard(&dir)?;
            total = total.saturating_sub(size);
            summary.evicted += 1;
            summary.freed_bytes += size;
            if !ok {
                summary.damaged += 1;
            }
        }
        summary.remaining_bytes = total;
        Ok(summary)
    }

    /// Total bytes of files under the root.
    pub fn size_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = fs::read_dir(p) else { return 0 };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(self.layout.root())
    }
}
