//! A cache folder: opening it (a cache root is recognized by the tags it wrote, and a folder
//! that is neither empty nor tagged is refused), its errors, and the pieces every part of the
//! store shares. The operations live beside it: [`crate::cache::entries`] (lookups, inserts,
//! verification, clearing), [`crate::cache::winners`] (winner records and tuning journals),
//! [`crate::cache::gc`] (eviction) and [`crate::cache::txn`] (all-or-nothing imports).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cache::damage::Damage;
use crate::cache::fsx::{self, io};
use crate::cache::layout::{self, Layout};

/// A cache failure (I/O, or a request the cache cannot satisfy).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("damaged cache entry {path}: {damage}")]
    Damaged {
        /// The entry folder.
        path: PathBuf,
        /// What is wrong.
        damage: Damage,
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
    /// A read-only command found no cache folder.
    #[error("there is no cache at {0} yet (flasheva compile or cache import creates it)")]
    Missing(PathBuf),
    /// The folder is not a flasheva cache, and flasheva will not write or delete in it.
    #[error(
        "{path} is not a flasheva cache: {reason}; pass --cache-dir with a new or empty folder, or a cache flasheva made"
    )]
    NotACache {
        /// The folder.
        path: PathBuf,
        /// What it holds instead.
        reason: String,
    },
    /// Something inside the cache that flasheva does not follow or touch.
    #[error("refusing {path}: {reason}")]
    NotOurs {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A cache folder.
#[derive(Clone, Debug)]
pub struct CacheStore {
    pub(crate) layout: Layout,
    /// The device of the root: flasheva never crosses into another filesystem below it.
    pub(crate) dev: u64,
}

/// The default cache folder: `$FLASHEVA_CACHE_DIR`, else `<user cache dir>/flasheva`.
pub fn default_root() -> Result<PathBuf, CacheError> {
    crate::config::cache_dir()
        .or_else(crate::config::default_cache_dir)
        .ok_or(CacheError::NoCacheDir)
}

/// What a folder is, as far as flasheva is concerned.
#[derive(Debug, PartialEq, Eq)]
enum RootState {
    Missing,
    Tagged,
    Empty,
    Foreign(String),
}

fn root_state(root: &Path) -> Result<RootState, CacheError> {
    let m = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RootState::Missing),
        Err(e) => return Err(io("inspect", root)(e)),
    };
    if !m.is_dir() {
        return Ok(RootState::Foreign("it is not a folder".into()));
    }
    let layout = Layout::new(root);
    let marked = || {
        fsx::read_capped(&layout.marker_file(), 4096, false).is_ok_and(|text| {
            let p = layout::MARKER_TEXT.as_bytes();
            // A marker being written by a concurrent first open is a prefix of the text.
            text.starts_with(p) || p.starts_with(&text)
        })
    };
    if marked() {
        return Ok(RootState::Tagged);
    }
    let mut names = Vec::new();
    let mut listed_marker = false;
    for e in fs::read_dir(root).map_err(io("read folder", root))? {
        let e = e.map_err(io("read folder", root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == layout::MARKER_FILE {
            listed_marker = true;
        } else if name != layout::CACHEDIR_TAG {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(RootState::Empty);
    }
    // A concurrent first open may have written the marker, then its folders, between the read
    // above and this listing (CI saw "it holds locks, tmp, v1 and no marker" while eight
    // processes raced on a new folder): read it again before calling the folder foreign.
    if listed_marker && marked() {
        return Ok(RootState::Tagged);
    }
    names.sort();
    let shown: Vec<String> = names.iter().take(3).map(|n| format!("{n:?}")).collect();
    Ok(RootState::Foreign(format!(
        "it holds {}{} and no {} marker",
        shown.join(", "),
        if names.len() > 3 { ", ..." } else { "" },
        layout::MARKER_FILE
    )))
}

fn write_tags(layout: &Layout) -> Result<(), CacheError> {
    for (path, text) in [
        (layout.tag_file(), layout::cachedir_tag_text()),
        (layout.marker_file(), layout::MARKER_TEXT.to_string()),
    ] {
        match fsx::write_new(&path, text.as_bytes()) {
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            }
            r => r?,
        }
    }
    Ok(())
}

impl CacheStore {
    /// Opens the cache at `root` for reading and writing: creates and tags a missing or empty
    /// folder, opens a tagged one, and refuses any other folder ([`CacheError::NotACache`]).
    /// Completes imports that were committed by a process that died before finishing them.
    ///
    /// ```
    /// use flasheva::cache::{CacheError, CacheStore};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = CacheStore::open(dir.path().join("cache"))?; // new folder: created and tagged
    /// assert!(store.root().join("CACHEDIR.TAG").is_file());
    ///
    /// // a folder that is not a cache is refused, never written into
    /// std::fs::write(dir.path().join("notes.txt"), "mine")?;
    /// assert!(matches!(CacheStore::open(dir.path()), Err(CacheError::NotACache { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(root: impl Into<PathBuf>) -> Result<CacheStore, CacheError> {
        let root = root.into();
        match root_state(&root)? {
            RootState::Tagged => {}
            RootState::Missing | RootState::Empty => {
                fs::create_dir_all(&root).map_err(io("create folder", &root))?;
                write_tags(&Layout::new(&root))?;
            }
            RootState::Foreign(reason) => return Err(CacheError::NotACache { path: root, reason }),
        }
        let store = CacheStore::at(root)?;
        for d in [
            store.layout.kernels_dir(),
            store.layout.locks_dir(),
            store.layout.tmp_dir(),
        ] {
            fsx::ensure_dir(store.root(), &d, store.dev)?;
        }
        store.recover();
        Ok(store)
    }

    /// Opens an existing cache for commands that only read: creates nothing. A missing folder is
    /// [`CacheError::Missing`]; an empty one is an empty cache; an untagged, non-empty one is
    /// refused. Committed but unfinished imports are completed (they were asked for).
    ///
    /// ```
    /// use flasheva::cache::{CacheError, CacheStore};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let missing = dir.path().join("typo");
    /// assert!(matches!(CacheStore::open_existing(&missing), Err(CacheError::Missing(_))));
    /// assert!(!missing.exists()); // nothing created
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<CacheStore, CacheError> {
        let root = root.into();
        match root_state(&root)? {
            RootState::Tagged | RootState::Empty => {}
            RootState::Missing => return Err(CacheError::Missing(root)),
            RootState::Foreign(reason) => return Err(CacheError::NotACache { path: root, reason }),
        }
        let store = CacheStore::at(root)?;
        store.recover();
        Ok(store)
    }

    fn at(root: PathBuf) -> Result<CacheStore, CacheError> {
        let dev = fs::metadata(&root).map_err(io("inspect", &root))?;
        Ok(CacheStore {
            layout: Layout::new(root),
            dev: std::os::unix::fs::MetadataExt::dev(&dev),
        })
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

    /// Whether `dir` below the root is reached through real folders on the cache's filesystem
    /// only (what may be read, walked or deleted in).
    pub(crate) fn is_ours(&self, dir: &Path) -> bool {
        fsx::is_real_chain(self.root(), dir, self.dev)
    }

    /// Creates `dir` below the root as real folders on the cache's filesystem.
    pub(crate) fn ensure_dir(&self, dir: &Path) -> Result<(), CacheError> {
        // A store opened on an existing empty folder (open_existing) becomes a tagged cache
        // before it holds anything, so that no other process ever sees its folders without the
        // marker (and takes the folder for a foreign one).
        if fs::symlink_metadata(self.layout.marker_file()).is_err() {
            write_tags(&self.layout)?;
        }
        fsx::ensure_dir(self.root(), dir, self.dev)
    }

    /// Stages a folder or file in `tmp/` with an owner lock.
    pub(crate) fn stage(
        &self,
        kind: layout::StageKind,
        dir: bool,
    ) -> Result<fsx::Staged, CacheError> {
        let tmp = self.layout.tmp_dir();
        self.ensure_dir(&tmp)?;
        fsx::Staged::new(&tmp, kind, self.dev, dir)
    }

    /// Completes committed imports of dead processes (errors are left for the next open).
    fn recover(&self) {
        let tmp = self.layout.tmp_dir();
        if !self.is_ours(&tmp) {
            return;
        }
        for c in fsx::dead_staged(&tmp) {
            if c.kind == layout::StageKind::Import
                && crate::cache::txn::is_committed(&c.path)
                && crate::cache::txn::complete(self, &c.path).is_ok()
            {
                c.remove(self.dev);
            }
        }
    }

    /// Deletes the leftovers of dead writers in `tmp/` (names flasheva makes, whose owner lock is
    /// free); committed imports among them are completed first. Returns how many were removed.
    pub fn reclaim_tmp(&self) -> usize {
        let tmp = self.layout.tmp_dir();
        if !self.is_ours(&tmp) {
            return 0;
        }
        let mut n = 0;
        for c in fsx::dead_staged(&tmp) {
            if c.kind == layout::StageKind::Import
                && crate::cache::txn::is_committed(&c.path)
                && crate::cache::txn::complete(self, &c.path).is_err()
            {
                continue; // kept for the next open to complete
            }
            c.remove(self.dev);
            n += 1;
        }
        n
    }
}
