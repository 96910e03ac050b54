//! All-or-nothing installs of several entries and winner records (what an import does), also
//! under SIGKILL. Everything is staged and verified in one owned `tmp/import-…` folder laid out
//! like `v1/` (`kernels/…/<key>/`, `winners/<spec>/<key>.json`); every destination folder is
//! made; then a journal listing the items is written and committed by one rename. Before the
//! commit nothing is visible and a dead importer's folder is simply reclaimed; after it, the
//! items are moved into place, and if the importer dies on the way, the next open of the cache
//! completes the list (each step is idempotent: an item already moved is skipped).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::fsx::{self, io};
use crate::cache::layout;
use crate::cache::store::{CacheError, CacheStore};
use crate::cache::winner::WinnerRecord;
use crate::cache::winners::read_winner;

const JOURNAL: &str = "journal.json";
const JOURNAL_TMP: &str = "journal.json.new";

/// The items of one install, as paths relative to the staging folder (and to `v1/`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Entry folders: `kernels/<spec>/<tile>/<arch>/<key>`.
    pub entries: Vec<String>,
    /// Winner record files: `winners/<spec>/<key>.json`.
    pub winners: Vec<String>,
}

/// What an install did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// Entries added.
    pub added: usize,
    /// Entries the cache already had (a valid entry of the key is kept).
    pub present: usize,
    /// Winner records added or replaced by faster ones.
    pub winners_added: usize,
    /// Winner records not taken because the cache's were faster.
    pub winners_kept: usize,
    /// Conflicts between winner records (same device, spec, bucket, different tile).
    pub conflicts: Vec<String>,
}

fn rel_ok(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["kernels", s, t, a, k] => {
            layout::is_spec_dir_name(s)
                && layout::is_plain_name(t)
                && layout::is_arch_dir_name(a)
                && layout::is_key_name(k)
        }
        ["winners", s, f] => {
            layout::is_spec_dir_name(s) && layout::key_file_name(f, "json").is_some()
        }
        _ => false,
    }
}

/// Whether the staging folder holds a committed journal.
pub fn is_committed(staging: &Path) -> bool {
    fs::symlink_metadata(staging.join(JOURNAL)).is_ok_and(|m| m.file_type().is_file())
}

/// Makes every destination folder of `j` (so that what can fail fails before the commit), then
/// commits the journal into `staging`.
pub fn commit(store: &CacheStore, staging: &Path, j: &Journal) -> Result<(), CacheError> {
    let v1 = store.layout.version_dir();
    for (rel, is_entry) in j
        .entries
        .iter()
        .map(|r| (r, true))
        .chain(j.winners.iter().map(|r| (r, false)))
    {
        assert!(rel_ok(rel), "journal item {rel} is not a cache path");
        let dest = v1.join(rel);
        store.ensure_dir(dest.parent().expect("a cache path has a folder"))?;
        // What is in the way must be what flasheva would replace: an entry folder, a record file.
        if let Ok(m) = fs::symlink_metadata(&dest) {
            let fits = if is_entry {
                store.is_ours(&dest)
            } else {
                m.file_type().is_file()
            };
            if !fits {
                return Err(CacheError::NotOurs {
                    path: dest,
                    reason: format!(
                        "it is {}, where the import would put {}",
                        crate::cache::damage::kind_of(&m.file_type()),
                        if is_entry {
                            "an entry"
                        } else {
                            "a winner record"
                        }
                    ),
                });
            }
        }
    }
    let tmp = staging.join(JOURNAL_TMP);
    fsx::write_new(&tmp, &serde_json::to_vec(j).expect("journal serializes"))?;
    let dest = staging.join(JOURNAL);
    fs::rename(&tmp, &dest).map_err(io("commit", &dest))?;
    if let Ok(d) = fs::File::open(staging) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Moves every item of the committed journal in `staging` into place (skipping those already
/// moved): entries under their key's lock, keeping a valid entry of the same key; winner records
/// merged, keeping the faster record of a (device, spec, bucket).
pub fn apply(store: &CacheStore, staging: &Path) -> Result<Applied, CacheError> {
    let path = staging.join(JOURNAL);
    let bytes = fsx::read_capped(&path, 64 << 20, false).map_err(|e| CacheError::NotOurs {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| CacheError::NotOurs {
        path: path.clone(),
        reason: format!("the import journal does not parse: {e}"),
    })?;
    let mut out = Applied::default();
    let v1 = store.layout.version_dir();
    for rel in &j.entries {
        if !rel_ok(rel) {
            continue;
        }
        let staged = staging.join(rel);
        if fs::symlink_metadata(&staged).is_err() {
            continue; // moved already
        }
        let entry = store
            .verify_dir(&staged)
            .map_err(|damage| CacheError::Damaged {
                path: staged.clone(),
                damage,
            })?;
        let _lock = store.lock(&entry.meta.key)?;
        match store.install_dir(&staged, entry.meta)? {
            (_, true) => out.added += 1,
            (_, false) => out.present += 1,
        }
    }
    for rel in &j.winners {
        if !rel_ok(rel) {
            continue;
        }
        let staged = staging.join(rel);
        if fs::symlink_metadata(&staged).is_err() {
            continue;
        }
        let rec = read_winner(&staged).map_err(|reason| CacheError::NotOurs {
            path: staged.clone(),
            reason,
        })?;
        match store.find_exact_winner(&rec) {
            Some(old) if old.median_ms <= rec.median_ms => {
                out.winners_kept += 1;
                if old.tile != rec.tile {
                    out.conflicts.push(conflict(&old, &rec, "kept the cache's"));
                }
                let _ = fs::remove_file(&staged);
            }
            old => {
                if let Some(o) = &old
                    && o.tile != rec.tile
                {
                    out.conflicts.push(conflict(o, &rec, "took the bundle's"));
                }
                store.place_file(&staged, &v1.join(rel))?;
                out.winners_added += 1;
            }
        }
    }
    Ok(out)
}

/// Completes a dead importer's committed journal.
pub fn complete(store: &CacheStore, staging: &Path) -> Result<Applied, CacheError> {
    apply(store, staging)
}

fn conflict(old: &WinnerRecord, new: &WinnerRecord, what: &str) -> String {
    crate::cache::text::printable(&format!(
        "{} on {} ({}): cache has {} at {:.4} ms, bundle has {} at {:.4} ms; {what}",
        old.spec,
        old.device.name,
        old.bucket,
        old.tile.name(old.spec.op()),
        old.median_ms,
        new.tile.name(new.spec.op()),
        new.median_ms
    ))
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::layout::StageKind;
    use crate::cache::meta::{EntryMeta, META_FORMAT};
    use crate::key::{CompilerId, Key};
    use crate::spec::{KernelSpec, Op, SpecParams};
    use crate::target::Arch;
    use crate::tile::Tile;

    /// A complete entry of a chunk_mean spec, installed in `store`.
    fn entry(store: &CacheStore, chunk: u32) -> crate::cache::Entry {
        let spec = KernelSpec::new(
            Op::ChunkMean,
            &SpecParams {
                head_dim: Some(64),
                chunk: Some(chunk),
                ..Default::default()
            },
        )
        .unwrap();
        let arch = Arch::new(9, 0);
        let mut meta = EntryMeta {
            format: META_FORMAT,
            key: Key([0; 32]),
            crate_version: crate::ARTIFACT_VERSION.into(),
            name: spec.name(),
            spec,
            tile: Tile::default_for(&spec, arch),
            arch,
            compiler: CompilerId {
                name: "test".into(),
                version: "1".into(),
            },
            options: vec![],
            entry_points: spec.entry_points(&Tile::default_for(&spec, arch)),
            threads: 128,
            shared_mem_bytes: 0,
            entry_shared_mem: Vec::new(),
            ptx_isa: Some("9.0".into()),
            resources: vec![],
            compile_ms: 1.0,
            created_unix: 0,
            files: Default::default(),
            seal: String::new(),
        };
        meta.key = meta.computed_key("source");
        store
            .insert(
                meta,
                &[
                    (layout::PTX_FILE, b".version 9.0\n"),
                    (layout::CUBIN_FILE, b"\x7fELF"),
                    (layout::SOURCE_FILE, b"source"),
                    (layout::LOG_FILE, b""),
                ],
            )
            .unwrap()
    }

    /// Moves installed entries back into an import staging folder, as an importer stages them.
    fn staged_import(store: &CacheStore, chunks: &[u32]) -> (crate::cache::fsx::Staged, Journal) {
        let staged = store.stage(StageKind::Import, true).unwrap();
        let mut j = Journal::default();
        for &c in chunks {
            let e = entry(store, c);
            let rel = e.meta.rel_dir();
            let to = staged.path().join(&rel);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::rename(&e.dir, &to).unwrap();
            j.entries.push(rel);
        }
        (staged, j)
    }

    #[test]
    fn a_dead_importers_committed_journal_is_completed_by_the_next_open() {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::open(d.path()).unwrap();
        let (staged, j) = staged_import(&store, &[2, 4, 8]);
        commit(&store, staged.path(), &j).unwrap();
        staged.keep(); // the importer dies here: lock released, journal committed, nothing moved
        assert!(store.scan().unwrap().is_empty());
        let again = CacheStore::open(d.path()).unwrap();
        let s = again.scan().unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|e| e.entry.is_ok()));
        assert_eq!(fs::read_dir(again.layout().tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_dead_importers_uncommitted_staging_is_reclaimed_not_installed() {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::open(d.path()).unwrap();
        let (staged, _) = staged_import(&store, &[2, 4]);
        staged.keep();
        let again = CacheStore::open(d.path()).unwrap();
        assert!(again.scan().unwrap().is_empty());
        assert_eq!(again.reclaim_tmp(), 1);
        assert_eq!(fs::read_dir(again.layout().tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_live_importers_staging_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::open(d.path()).unwrap();
        let (staged, j) = staged_import(&store, &[2]);
        commit(&store, staged.path(), &j).unwrap();
        assert_eq!(store.reclaim_tmp(), 0);
        assert!(
            CacheStore::open(d.path())
                .unwrap()
                .scan()
                .unwrap()
                .is_empty()
        );
        assert!(staged.path().exists());
        assert_eq!(apply(&store, staged.path()).unwrap().added, 1);
    }
}
