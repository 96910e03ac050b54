//! Cache entries: atomic inserts (assemble in an owned `tmp/` folder, write `meta.json` last,
//! rename the folder into place), verified reads (every byte handed out matches its recorded
//! sha256, read through a bounded, link-refusing open), per-key advisory locks, listing,
//! verification and clearing. A damaged entry is never loaded: lookups report it, and the next
//! insert of that key replaces it. Only names flasheva creates are deleted.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::cache::damage::{Damage, kind_of};
use crate::cache::fsx::{self, ReadError, io};
use crate::cache::layout::{self, StageKind};
use crate::cache::meta::{EntryMeta, FileDigest, MAX_META_BYTES};
use crate::cache::store::{CacheError, CacheStore};
use crate::key::{Key, sha256};
use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// A verified entry: its folder and metadata.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry folder.
    pub dir: PathBuf,
    /// Its metadata (checked, sealed, its key that of its inputs).
    pub meta: EntryMeta,
}

/// Result of looking up one key.
#[derive(Debug)]
#[non_exhaustive]
pub enum Lookup {
    /// Present and every file verified.
    Hit(Box<Entry>),
    /// Not present.
    Miss,
    /// Present but damaged: treat as a miss, and warn.
    Damaged {
        /// The entry folder.
        dir: PathBuf,
        /// What is wrong with it.
        damage: Damage,
    },
}

/// One entry folder found by a scan, verified or not.
#[derive(Debug)]
pub struct Scanned {
    /// The folder.
    pub dir: PathBuf,
    /// The entry, or why it is damaged.
    pub entry: Result<Entry, Damage>,
}

/// An exclusive advisory lock on one key, held until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: fs::File,
}

/// The last-use marker inside an entry folder (not part of the entry's content).
pub const USED_FILE: &str = layout::USED_FILE;

/// What `clear` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClearSummary {
    /// Entries removed (damaged ones included).
    pub entries: usize,
    /// Winner records removed.
    pub winners: usize,
    /// Tuning journals removed.
    pub journals: usize,
    /// Leftovers of dead writers removed from `tmp/`.
    pub leftovers: usize,
    /// Things flasheva did not create, left where they are.
    pub foreign: Vec<PathBuf>,
}

fn read_damage(file: &str, e: ReadError) -> Damage {
    match e {
        ReadError::Io(e) => Damage::Unreadable {
            file: file.to_string(),
            error: e.to_string(),
        },
        ReadError::NotRegular(kind) => Damage::NotRegular {
            file: file.to_string(),
            kind,
        },
        ReadError::TooLarge { size, cap } => Damage::Size {
            file: file.to_string(),
            actual: size,
            recorded: cap,
        },
    }
}

/// Reads one file of an entry folder: a regular file (no link, no FIFO) of exactly the recorded
/// size (checked before reading), whose bytes match the recorded sha256.
pub fn read_entry_file(dir: &Path, name: &str, digest: &FileDigest) -> Result<Vec<u8>, Damage> {
    let (f, len) = fsx::open_regular(&dir.join(name), false).map_err(|e| read_damage(name, e))?;
    if len != digest.bytes {
        return Err(Damage::Size {
            file: name.to_string(),
            actual: len,
            recorded: digest.bytes,
        });
    }
    let mut data = Vec::with_capacity(len as usize);
    f.take(digest.bytes + 1)
        .read_to_end(&mut data)
        .map_err(|e| read_damage(name, e.into()))?;
    if data.len() as u64 != digest.bytes {
        return Err(Damage::Size {
            file: name.to_string(),
            actual: data.len() as u64,
            recorded: digest.bytes,
        });
    }
    if sha256(&data).hex() != digest.sha256 {
        return Err(Damage::Hash {
            file: name.to_string(),
        });
    }
    Ok(data)
}

/// Reads and checks `meta.json` of an entry folder (not its other files).
pub fn read_meta(dir: &Path) -> Result<EntryMeta, Damage> {
    let bytes = fsx::read_capped(&dir.join(layout::META_FILE), MAX_META_BYTES, false)
        .map_err(|e| read_damage(layout::META_FILE, e))?;
    EntryMeta::parse(&bytes)
}

fn check_location(dir: &Path, meta: &EntryMeta) -> Result<(), Damage> {
    let rel = meta.rel_dir();
    let want: Vec<&str> = rel.split('/').rev().take(4).collect();
    let got: Vec<String> = dir
        .components()
        .rev()
        .take(4)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if got.len() != 4 || got.iter().zip(&want).any(|(a, b)| a != b) {
        return Err(Damage::Location {
            expected: rel.trim_start_matches("kernels/").to_string(),
        });
    }
    Ok(())
}

impl CacheStore {
    /// Reads and fully verifies the entry in `dir`: a real folder on the cache's filesystem, its
    /// metadata (checked and sealed), its location, every file's size and hash, and its key
    /// recomputed from the metadata and the source.
    pub fn verify_dir(&self, dir: &Path) -> Result<Entry, Damage> {
        let meta = self.verify_meta(dir, true)?;
        for (name, digest) in &meta.files {
            if name != layout::SOURCE_FILE {
                read_entry_file(dir, name, digest)?;
            }
        }
        Ok(Entry {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// The folder checks, the metadata, the location and the key (which reads the source).
    fn verify_meta(&self, dir: &Path, key: bool) -> Result<EntryMeta, Damage> {
        match fs::symlink_metadata(dir) {
            Ok(m)
                if m.file_type().is_dir()
                    && std::os::unix::fs::MetadataExt::dev(&m) == self.dev => {}
            Ok(m) => {
                return Err(Damage::NotRegular {
                    file: "the entry folder".into(),
                    kind: if m.file_type().is_dir() {
                        "a folder on another filesystem"
                    } else {
                        kind_of(&m.file_type())
                    },
                });
            }
            Err(e) => {
                return Err(Damage::Unreadable {
                    file: "the entry folder".into(),
                    error: e.to_string(),
                });
            }
        }
        let meta = read_meta(dir)?;
        check_location(dir, &meta)?;
        if key {
            let source =
                read_entry_file(dir, layout::SOURCE_FILE, &meta.files[layout::SOURCE_FILE])?;
            meta.check_key(&source)?;
        }
        Ok(meta)
    }

    /// Looks up one key, verifying every file of a present entry.
    pub fn lookup(&self, spec: &KernelSpec, tile: &Tile, arch: Arch, key: &Key) -> Lookup {
        let dir = self.layout.entry_dir(spec, tile, arch, key);
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            _ => {}
        }
        match self.verify_dir(&dir) {
            Ok(e) => Lookup::Hit(Box::new(e)),
            Err(damage) => Lookup::Damaged { dir, damage },
        }
    }

    /// Entries of (spec, tile, arch) whose metadata, location and key verify, newest first;
    /// damaged ones are returned separately as (folder, damage). Artifacts are verified when read
    /// ([`CacheStore::read_verified`]).
    pub fn candidates(
        &self,
        spec: &KernelSpec,
        tile: &Tile,
        arch: Arch,
    ) -> (Vec<Entry>, Vec<(PathBuf, Damage)>) {
        let dir = self.layout.variant_dir(spec, tile, arch);
        let mut good = Vec::new();
        let mut bad = Vec::new();
        if !self.is_ours(&dir) {
            return (good, bad);
        }
        let Ok(rd) = fs::read_dir(&dir) else {
            return (good, bad);
        };
        for e in rd.flatten() {
            if !layout::is_key_name(&e.file_name().to_string_lossy()) {
                continue;
            }
            let path = e.path();
            match self.verify_meta(&path, true) {
                Ok(meta) => good.push(Entry { dir: path, meta }),
                Err(damage) => bad.push((path, damage)),
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
        let damaged = |damage: Damage| CacheError::Damaged {
            path: entry.dir.clone(),
            damage,
        };
        let digest = entry
            .meta
            .files
            .get(name)
            .ok_or_else(|| damaged(Damage::Files(format!("lists no {name}"))))?;
        read_entry_file(&entry.dir, name, digest).map_err(damaged)
    }

    /// Takes the advisory lock of `key` (blocking until other processes release it). The lock
    /// file is never opened through a link; a lock file deleted by `clear` while this process
    /// waited is noticed and a fresh one taken.
    pub fn lock(&self, key: &Key) -> Result<KeyLock, CacheError> {
        let path = self.layout.lock_file(key);
        for _ in 0..64 {
            self.ensure_dir(&self.layout.locks_dir())?;
            let file = match fsx::open_marker(&path, true) {
                Ok(f) => f,
                Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            file.lock().map_err(io("lock", &path))?;
            if fsx::same_file(&file, &path) {
                return Ok(KeyLock { _file: file });
            }
        }
        Err(CacheError::NotOurs {
            path,
            reason: "the lock file keeps being replaced".into(),
        })
    }

    /// Inserts an entry atomically. `meta.files` and `meta.seal` are filled in here from `files`
    /// (exactly the files an entry has). If a valid entry with this key already exists (another
    /// process won the race) it is kept and returned; a damaged one is replaced. Nothing staged
    /// is left behind on any error.
    pub fn insert(
        &self,
        mut meta: EntryMeta,
        files: &[(&str, &[u8])],
    ) -> Result<Entry, CacheError> {
        meta.files = files
            .iter()
            .map(|(n, d)| (n.to_string(), FileDigest::of(d)))
            .collect();
        let meta = meta.sealed();
        let path = self
            .layout
            .entry_dir(&meta.spec, &meta.tile, meta.arch, &meta.key);
        meta.check().map_err(|damage| CacheError::Damaged {
            path: path.clone(),
            damage,
        })?;
        let staged = self.stage(StageKind::Entry, true)?;
        for (name, data) in files {
            fsx::write_new(&staged.path().join(name), data)?;
        }
        fsx::write_new(&staged.path().join(layout::META_FILE), &meta.to_json())?;
        self.install_dir(staged.path(), meta).map(|(e, _)| e)
    }

    /// Moves a complete, verified entry folder `staged` (inside this cache's `tmp/`) into place;
    /// the caller holds the key's lock. Returns the entry and whether it is new: when a valid
    /// entry of the same key is already there (another process won the race) that one is kept; a
    /// damaged one is replaced. A parent folder removed meanwhile (a racing `clear`) is made again.
    pub fn install_dir(&self, staged: &Path, meta: EntryMeta) -> Result<(Entry, bool), CacheError> {
        let final_dir = self
            .layout
            .entry_dir(&meta.spec, &meta.tile, meta.arch, &meta.key);
        let parent = final_dir.parent().expect("entry folder has a parent");
        let mut last = None;
        for _ in 0..16 {
            self.ensure_dir(parent)?;
            match fs::rename(staged, &final_dir) {
                Ok(()) => {
                    if let Ok(d) = fs::File::open(parent) {
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
                Err(e) if fs::symlink_metadata(&final_dir).is_ok() => {
                    match self.verify_dir(&final_dir) {
                        Ok(existing) => return Ok((existing, false)),
                        Err(_) => self.discard(&final_dir)?,
                    }
                    last = Some(e);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && staged.exists() => last = Some(e),
                Err(e) => return Err(io("move into place", &final_dir)(e)),
            }
        }
        Err(io("move into place", &final_dir)(last.unwrap_or_else(
            || io::Error::other("gave up after 16 attempts"),
        )))
    }

    /// Moves an entry folder out of sight (into an owned `tmp/` folder) and deletes it. Refuses
    /// anything that is not a real entry folder holding only the files flasheva writes there.
    pub fn discard(&self, dir: &Path) -> Result<(), CacheError> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("inspect", dir)(e)),
            Ok(_) if !self.is_ours(dir) => {
                return Err(CacheError::NotOurs {
                    path: dir.to_path_buf(),
                    reason: "it is not a folder on the cache's filesystem".into(),
                });
            }
            Ok(_) => {}
        }
        for e in fs::read_dir(dir).map_err(io("read folder", dir))? {
            let e = e.map_err(io("read folder", dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // A known name of the wrong type (a link, a FIFO) is unlinked like the file it
            // replaces (unlinking never follows it); folders and unknown names are left alone.
            let folder = e.file_type().is_ok_and(|t| t.is_dir());
            if folder || !layout::is_entry_file_name(&name) {
                return Err(CacheError::NotOurs {
                    path: e.path(),
                    reason: "flasheva did not create it, so it is left where it is".into(),
                });
            }
        }
        let trash = self.stage(StageKind::Trash, true)?;
        match fs::rename(dir, trash.path().join("entry")) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("move aside", dir)(e)),
        }
        // `trash` deletes what it holds when dropped here.
    }

    /// Every entry folder under `kernels/`, verified, sorted by path. Only real folders with the
    /// names flasheva gives are entries; links and anything else are not followed.
    pub fn scan(&self) -> Result<Vec<Scanned>, CacheError> {
        Ok(self.scan_all()?.0)
    }

    /// [`CacheStore::scan`], and the paths under `kernels/` that flasheva did not create.
    pub fn scan_all(&self) -> Result<(Vec<Scanned>, Vec<PathBuf>), CacheError> {
        let mut out = Vec::new();
        let mut foreign = Vec::new();
        let root = self.layout.kernels_dir();
        if fs::symlink_metadata(&root).is_err() {
            return Ok((out, foreign));
        }
        if !self.is_ours(&root) {
            foreign.push(root);
            return Ok((out, foreign));
        }
        let mut dirs = vec![(root, 0usize)];
        while let Some((d, depth)) = dirs.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read folder", &d)(e)),
            };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let named = match depth {
                    0 => layout::is_spec_dir_name(&name),
                    1 => layout::is_plain_name(&name),
                    2 => layout::is_arch_dir_name(&name),
                    _ => layout::is_key_name(&name),
                };
                if !named || !fsx::is_real_dir(&p, self.dev) {
                    foreign.push(p);
                } else if depth == 3 {
                    let entry = self.verify_dir(&p);
                    out.push(Scanned { dir: p, entry });
                } else {
                    dirs.push((p, depth + 1));
                }
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        foreign.sort();
        Ok((out, foreign))
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

    /// Marks an entry as used now (its `.used` file's time orders `gc`'s evictions). Never
    /// through a link; failures are ignored (the mark is a hint).
    pub fn touch(&self, entry: &Entry) {
        if !self.is_ours(&entry.dir) {
            return;
        }
        if let Ok(f) = fsx::open_marker(&entry.dir.join(USED_FILE), true) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Removes every entry, winner record and tuning journal, the lock files nobody holds and
    /// the leftovers of dead writers; leaves anything flasheva did not create (and reports it).
    /// Entries are removed one by one under their key's lock, so a racing compile or import
    /// either finishes before its entry is removed or after, and never fails because of it.
    pub fn clear(&self) -> Result<ClearSummary, CacheError> {
        let mut s = ClearSummary::default();
        let (scanned, foreign) = self.scan_all()?;
        s.foreign = foreign;
        for e in scanned {
            let key: Option<Key> = e
                .dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok());
            let _lock = key.map(|k| self.lock(&k)).transpose()?;
            match self.discard(&e.dir) {
                Ok(()) => s.entries += 1,
                Err(CacheError::NotOurs { path, .. }) => s.foreign.push(path),
                Err(e) => return Err(e),
            }
        }
        self.prune_empty_dirs(&self.layout.kernels_dir(), 0);
        let (w, mut f) = self.remove_key_files(&self.layout.winners_dir(), 1, "json");
        s.winners = w;
        s.foreign.append(&mut f);
        let (j, mut f) = self.remove_key_files(&self.layout.tune_dir(), 0, "jsonl");
        s.journals = j;
        s.foreign.append(&mut f);
        self.remove_free_locks();
        s.leftovers = self.reclaim_tmp();
        s.foreign.sort();
        Ok(s)
    }

    /// Removes the empty folders flasheva made below `dir` (depth: 0 = kernels/).
    fn prune_empty_dirs(&self, dir: &Path, depth: usize) {
        if depth > 3 || !self.is_ours(dir) {
            return;
        }
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let named = match depth {
                    0 => layout::is_spec_dir_name(&name),
                    1 => layout::is_plain_name(&name),
                    2 => layout::is_arch_dir_name(&name),
                    _ => false,
                };
                if named && fsx::is_real_dir(&e.path(), self.dev) {
                    self.prune_empty_dirs(&e.path(), depth + 1);
                    let _ = fs::remove_dir(e.path()); // only succeeds when empty
                }
            }
        }
    }

    /// Deletes the `<key>.<ext>` regular files in `dir` (`depth` 1: in its spec folders);
    /// returns how many, and what else is there.
    fn remove_key_files(&self, dir: &Path, depth: usize, ext: &str) -> (usize, Vec<PathBuf>) {
        let mut n = 0;
        let mut foreign = Vec::new();
        if !self.is_ours(dir) {
            if fs::symlink_metadata(dir).is_ok() {
                foreign.push(dir.to_path_buf());
            }
            return (n, foreign);
        }
        let Ok(rd) = fs::read_dir(dir) else {
            return (n, foreign);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if depth == 1 {
                if layout::is_spec_dir_name(&name) && fsx::is_real_dir(&p, self.dev) {
                    let (m, mut f) = self.remove_key_files(&p, 0, ext);
                    n += m;
                    foreign.append(&mut f);
                    let _ = fs::remove_dir(&p);
                } else {
                    foreign.push(p);
                }
            } else if layout::key_file_name(&name, ext).is_some()
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                if fs::remove_file(&p).is_ok() {
                    n += 1;
                }
            } else {
                foreign.push(p);
            }
        }
        (n, foreign)
    }

    /// Deletes the lock files no process holds (taking each lock first).
    fn remove_free_locks(&self) {
        let dir = self.layout.locks_dir();
        if !self.is_ours(&dir) {
            return;
        }
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if layout::key_file_name(&name, "lock").is_none() {
                continue;
            }
            let p = e.path();
            if let Ok(f) = fsx::open_marker(&p, false)
                && f.try_lock().is_ok()
                && fsx::same_file(&f, &p)
            {
                let _ = fs::remove_file(&p);
            }
        }
    }
}
