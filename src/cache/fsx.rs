//! The cache's file primitives, the only code that opens, creates or deletes its files: every
//! open refuses links (`O_NOFOLLOW`) and never blocks on a FIFO (`O_NONBLOCK`, then the file must
//! be regular), every read is bounded, folders are created one level at a time and must be real
//! folders on the cache's filesystem, and trees are deleted without following links or crossing
//! into another filesystem. Staged writes in `tmp/` carry an owner lock, so a dead writer's
//! leftovers are recognized and reclaimed while a live writer's are left alone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cache::damage::kind_of;
use crate::cache::layout::{self, StageKind};
use crate::cache::store::CacheError;

/// The one I/O error helper: maps an `io::Error` of `action` on `path` to [`CacheError::Io`].
pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

const NOFOLLOW: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Open or read failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a regular file.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than allowed.
    #[error("is {size} bytes, over the {cap}-byte limit")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        cap: u64,
    },
}

/// Opens an existing file for reading without following a link at its last component and
/// without blocking on a FIFO; the result is a regular file.
pub fn open_regular(path: &Path, follow: bool) -> Result<(File, u64), ReadError> {
    let flags = if follow {
        libc::O_NONBLOCK | libc::O_CLOEXEC
    } else {
        NOFOLLOW
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                ReadError::NotRegular("a symbolic link")
            } else {
                ReadError::Io(e)
            }
        })?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(ReadError::NotRegular(kind_of(&m.file_type())));
    }
    Ok((f, m.len()))
}

/// Reads a regular file of at most `cap` bytes (`follow`: whether a link at the last component
/// is followed; inside the cache it never is).
pub fn read_capped(path: &Path, cap: u64, follow: bool) -> Result<Vec<u8>, ReadError> {
    let (f, len) = open_regular(path, follow)?;
    if len > cap {
        return Err(ReadError::TooLarge { size: len, cap });
    }
    let mut data = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            size: data.len() as u64,
            cap,
        });
    }
    Ok(data)
}

/// Creates a new file (never an existing one, never through a link) with `data`, synced.
pub fn write_new(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let mut f = create_new(path)?;
    f.write_all(data).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))?;
    Ok(())
}

/// Creates a new file for writing (`O_EXCL | O_NOFOLLOW`).
pub fn create_new(path: &Path) -> Result<File, CacheError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(NOFOLLOW)
        .open(path)
        .map_err(io("create", path))
}

/// Opens (creating) a file that is only locked or time-stamped: never through a link, never a
/// FIFO or device.
pub fn open_marker(path: &Path, create: bool) -> Result<File, CacheError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .custom_flags(NOFOLLOW)
        .open(path)
        .map_err(io("open", path))?;
    let m = f.metadata().map_err(io("inspect", path))?;
    if !m.file_type().is_file() {
        return Err(CacheError::NotOurs {
            path: path.to_path_buf(),
            reason: format!("it is {}, not a regular file", kind_of(&m.file_type())),
        });
    }
    Ok(f)
}

/// The device of `path` itself (not following a link).
pub fn device_of(path: &Path) -> Result<u64, CacheError> {
    Ok(fs::symlink_metadata(path)
        .map_err(io("inspect", path))?
        .dev())
}

/// Whether `path` is a real folder (not a link) on device `dev`.
pub fn is_real_dir(path: &Path, dev: u64) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir() && m.dev() == dev)
}

/// Whether `dir` (below `root`) is reached through real folders only, all on device `dev`:
/// no component below the root is a link or a mount point.
pub fn is_real_chain(root: &Path, dir: &Path, dev: u64) -> bool {
    let Ok(rel) = dir.strip_prefix(root) else {
        return false;
    };
    let mut p = root.to_path_buf();
    rel.components().all(|c| {
        p.push(c);
        is_real_dir(&p, dev)
    })
}

/// Makes sure `dir` (below `root`) exists as a chain of real folders on `root`'s device, creating
/// missing ones one level at a time and refusing links, files and mount points on the way. A
/// folder removed meanwhile by a racing `clear` is made again.
pub fn ensure_dir(root: &Path, dir: &Path, dev: u64) -> Result<(), CacheError> {
    let rel = dir.strip_prefix(root).map_err(|_| CacheError::NotOurs {
        path: dir.to_path_buf(),
        reason: "it is outside the cache".into(),
    })?;
    let mut last = None;
    for _ in 0..64 {
        match ensure_chain(root, rel, dev)? {
            None => return Ok(()),
            Some(e) => last = Some(e),
        }
    }
    let (p, e) = last.expect("at least one attempt");
    Err(io("create folder", &p)(e))
}

/// One pass of [`ensure_dir`]; `Some` when a parent vanished while it worked (try again).
fn ensure_chain(
    root: &Path,
    rel: &Path,
    dev: u64,
) -> Result<Option<(PathBuf, io::Error)>, CacheError> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() && m.dev() == dev => {}
            Ok(m) if m.file_type().is_dir() => {
                return Err(CacheError::NotOurs {
                    path: p,
                    reason: "it is on another filesystem (flasheva stays on the cache's)".into(),
                });
            }
            Ok(m) => {
                return Err(CacheError::NotOurs {
                    path: p,
                    reason: format!(
                        "it is {}, where flasheva keeps a folder (links are never followed)",
                        kind_of(&m.file_type())
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&p) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                    ) =>
                {
                    return Ok(Some((p, e)));
                }
                Err(e) => return Err(io("create folder", &p)(e)),
            },
            Err(e) => return Err(io("inspect", &p)(e)),
        }
    }
    Ok(None)
}

/// Deletes `path` and everything below it without following links (a link is removed, never its
/// target) and without entering another filesystem (such a folder is left, with what is above
/// it). For trees flasheva made in `tmp/`.
pub fn remove_tree(path: &Path, dev: u64) -> io::Result<()> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !m.file_type().is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        };
    }
    if m.dev() != dev {
        return Err(io::Error::other("another filesystem is mounted here"));
    }
    for e in fs::read_dir(path)? {
        remove_tree(&e?.path(), dev)?;
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// A folder (or file) staged in `tmp/` under a name only this process uses, with an owner lock
/// held for its lifetime: `tmp/<kind>-<pid>-<nonce>` and `tmp/<kind>-<pid>-<nonce>.owner`. Dropped,
/// it deletes what is still staged; a process killed leaves it to [`CacheStore::reclaim_tmp`](super::CacheStore::reclaim_tmp).
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    owner: PathBuf,
    dev: u64,
    lock: Option<File>,
    kept: bool,
}

/// A value no other call in this process returns, and unlikely in another: a counter mixed with the
/// clock (a clash only costs a retry, since names are created with `create_new`).
fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Staged {
    /// Creates the owner lock, then (`dir`) an empty folder, in `tmp`.
    pub fn new(tmp: &Path, kind: StageKind, dev: u64, dir: bool) -> Result<Staged, CacheError> {
        for _ in 0..16 {
            let name = layout::stage_name(kind, std::process::id(), unique_suffix());
            let owner = tmp.join(format!("{name}{}", layout::OWNER_SUFFIX));
            let lock = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(NOFOLLOW)
                .open(&owner)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &owner)(e)),
            };
            lock.lock().map_err(io("lock", &owner))?;
            // A reclaimer may have taken the fresh, not yet locked file for a dead one's.
            if !same_file(&lock, &owner) {
                continue;
            }
            let path = tmp.join(&name);
            let staged = Staged {
                path,
                owner,
                dev,
                lock: Some(lock),
                kept: false,
            };
            if dir {
                fs::create_dir(&staged.path).map_err(io("create folder", &staged.path))?;
            }
            return Ok(staged);
        }
        Err(CacheError::NotOurs {
            path: tmp.to_path_buf(),
            reason: "no fresh staging name could be taken".into(),
        })
    }

    /// The staged path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the owner lock and leaves what is staged for the next open of the cache (a
    /// committed import it could not finish).
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let _ = remove_tree(&self.path, self.dev);
        let _ = fs::remove_file(&self.owner);
        self.lock.take();
    }
}

/// Whether the open file `f` is still the file at `path` (same device and inode).
pub fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A dead owner's staged item, claimed: its lock is held until dropped.
pub struct Claimed {
    /// The staged path.
    pub path: PathBuf,
    /// Its kind.
    pub kind: StageKind,
    owner: PathBuf,
    _lock: Option<File>,
}

impl Claimed {
    /// Deletes the staged item and its owner file.
    pub fn remove(self, dev: u64) {
        let _ = remove_tree(&self.path, dev);
        let _ = fs::remove_file(&self.owner);
    }
}

/// The staged items in `tmp` whose owner is gone (its lock is free, or its owner file is
/// missing), claimed. Names flasheva does not make are never touched.
pub fn dead_staged(tmp: &Path) -> Vec<Claimed> {
    let Ok(rd) = fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut bases: std::collections::BTreeSet<String> = Default::default();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name
            .strip_suffix(layout::OWNER_SUFFIX)
            .unwrap_or(&name)
            .to_string();
        if layout::parse_stage_name(&base).is_some() {
            bases.insert(base);
        }
    }
    let mut out = Vec::new();
    for base in bases {
        let kind = layout::parse_stage_name(&base).expect("filtered above");
        let owner = tmp.join(format!("{base}{}", layout::OWNER_SUFFIX));
        let lock = match open_marker(&owner, false) {
            Ok(f) => match f.try_lock() {
                Ok(()) if same_file(&f, &owner) => Some(f),
                _ => continue, // alive, or replaced meanwhile
            },
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(_) => continue,
        };
        out.push(Claimed {
            path: tmp.join(&base),
            kind,
            owner,
            _lock: lock,
        });
    }
    out
}
