//! Eviction: fit the cache into a size by removing damaged entries first, then the least
//! recently used, keeping the artifacts winner records name unless asked. Only entry folders
//! flasheva made are removed (each under its key's lock, by rename-then-delete), leftovers in
//! `tmp/` only when their writer is dead, and nothing is followed through a link.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cache::fsx;
use crate::cache::layout;
use crate::cache::store::{CacheError, CacheStore};
use crate::key::Key;

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
    /// Leftovers of dead writers removed from `tmp/`.
    pub stale_tmp: usize,
    /// Things flasheva did not create, left where they are.
    pub foreign: Vec<PathBuf>,
}

/// Bytes of the regular files directly in `dir` (links are not followed).
fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::symlink_metadata(e.path()).ok())
        .filter(|m| m.file_type().is_file())
        .map(|m| m.len())
        .sum()
}

/// When an entry was last used (or created).
fn last_used(dir: &Path) -> SystemTime {
    [layout::USED_FILE, layout::META_FILE]
        .iter()
        .filter_map(|f| fs::symlink_metadata(dir.join(f)).ok())
        .find(|m| m.file_type().is_file())
        .and_then(|m| m.modified().ok())
        .unwrap_or(std::time::UNIX_EPOCH)
}

impl CacheStore {
    /// Evicts entries until the cache holds at most `max_bytes`: damaged entries first, then the
    /// least recently used. Artifacts of winner records are kept unless `include_winners`.
    /// Leftovers of dead writers in `tmp/` are removed too; anything flasheva did not create is
    /// left and reported.
    pub fn gc(&self, max_bytes: u64, include_winners: bool) -> Result<GcSummary, CacheError> {
        let mut summary = GcSummary {
            stale_tmp: self.reclaim_tmp(),
            ..Default::default()
        };
        let protected: BTreeSet<Key> = if include_winners {
            Default::default()
        } else {
            self.all_winners()
                .iter()
                .filter_map(|w| w.artifact_key)
                .collect()
        };
        let (scanned, foreign) = self.scan_all()?;
        summary.foreign = foreign;
        let mut items: Vec<(bool, SystemTime, PathBuf, u64, Option<Key>)> = scanned
            .into_iter()
            .map(|s| {
                let size = dir_size(&s.dir);
                let key = s
                    .dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse().ok());
                (s.entry.is_ok(), last_used(&s.dir), s.dir, size, key)
            })
            .collect();
        let mut total: u64 = items.iter().map(|i| i.3).sum();
        // damaged first (false < true), then oldest use first
        items.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        for (ok, _, dir, size, key) in items {
            if total <= max_bytes && ok {
                break;
            }
            if ok
                && let Some(k) = key
                && protected.contains(&k)
            {
                summary.kept_winners += 1;
                continue;
            }
            let _lock = key.map(|k| self.lock(&k)).transpose()?;
            match self.discard(&dir) {
                Ok(()) => {}
                Err(CacheError::NotOurs { path, .. }) => {
                    summary.foreign.push(path);
                    continue;
                }
                Err(e) => return Err(e),
            }
            total = total.saturating_sub(size);
            summary.evicted += 1;
            summary.freed_bytes += size;
            if !ok {
                summary.damaged += 1;
            }
        }
        summary.remaining_bytes = total;
        summary.foreign.sort();
        Ok(summary)
    }

    /// Total bytes of the regular files flasheva keeps under the root (links not followed, other
    /// filesystems not entered).
    pub fn size_bytes(&self) -> u64 {
        fn walk(p: &Path, dev: u64) -> u64 {
            let Ok(rd) = fs::read_dir(p) else { return 0 };
            rd.flatten()
                .map(|e| match fs::symlink_metadata(e.path()) {
                    Ok(m) if m.file_type().is_dir() && fsx::is_real_dir(&e.path(), dev) => {
                        walk(&e.path(), dev)
                    }
                    Ok(m) if m.file_type().is_file() => m.len(),
                    _ => 0,
                })
                .sum()
        }
        [
            self.layout.version_dir(),
            self.layout.locks_dir(),
            self.layout.tmp_dir(),
        ]
        .iter()
        .filter(|d| self.is_ours(d))
        .map(|d| walk(d, self.dev))
        .sum()
    }
}
