//! Winner records (`v1/winners/<spec>/<record key>.json`) and tuning journals
//! (`v1/tune/<run key>.jsonl`) on disk. Records are written atomically (staged in `tmp/`, renamed
//! into place) and read through bounded, link-refusing opens and the validating
//! [`WinnerRecord::from_json`]; journals are appended line by line and synced.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cache::fsx::{self, io};
use crate::cache::layout::{self, Layout, StageKind};
use crate::cache::store::{CacheError, CacheStore};
use crate::cache::winner::{Bucket, CandidateResult, WinnerRecord};
use crate::key::Key;
use crate::spec::KernelSpec;

/// Largest winner record read.
pub const MAX_WINNER_BYTES: u64 = 16 << 20;

/// How far (in [`Bucket::distance`], summed log2 steps) a winner is borrowed for a bucket that
/// was not tuned. Beyond it the default tile is used: tile shapes tuned at one size can be much
/// slower at another (run 37: the decode's `n16_w2_s2` won at B=64 and B=256 by 3-4 % and,
/// borrowed five steps away at B=8 and B=1, was 1.5x slower than the default there).
pub const MAX_FALLBACK_DISTANCE: u32 = 2;
/// Largest tuning journal read.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Reads and checks one winner record file.
pub fn read_winner(path: &Path) -> Result<WinnerRecord, String> {
    let bytes = fsx::read_capped(path, MAX_WINNER_BYTES, false).map_err(|e| e.to_string())?;
    WinnerRecord::from_json(&bytes)
}

impl CacheStore {
    /// The file of a winner record.
    pub fn winner_path(&self, rec: &WinnerRecord) -> PathBuf {
        self.layout.winner_file(&rec.spec, &rec.key())
    }

    /// Moves `staged` (a complete file in this cache's `tmp/`) to `dest` below the root,
    /// replacing a file there; parent folders removed meanwhile are made again.
    pub(crate) fn place_file(&self, staged: &Path, dest: &Path) -> Result<(), CacheError> {
        let dir = dest.parent().expect("a cache file has a folder");
        let mut last = None;
        for _ in 0..16 {
            self.ensure_dir(dir)?;
            match fs::rename(staged, dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && staged.exists() => last = Some(e),
                Err(e) => return Err(io("move into place", dest)(e)),
            }
        }
        Err(io("move into place", dest)(
            last.unwrap_or_else(|| io::Error::other("gave up")),
        ))
    }

    /// Writes a winner record atomically (staged file, then rename), replacing an older one.
    pub fn put_winner(&self, rec: &WinnerRecord) -> Result<PathBuf, CacheError> {
        let path = self.winner_path(rec);
        let json = winner_json(rec);
        // A record the loader would refuse to read is ignored there without a word (the default
        // tile runs instead): refuse to write it.
        WinnerRecord::from_json(&json).map_err(|e| {
            io(
                "refuse to record a winner the loader could not read at",
                &path,
            )(io::Error::other(e))
        })?;
        let staged = self.stage(StageKind::File, false)?;
        fsx::write_new(staged.path(), &json)?;
        self.place_file(staged.path(), &path)?;
        Ok(path)
    }

    /// Every readable winner record of `spec` (all devices and buckets); unreadable files are
    /// returned as (path, reason).
    pub fn winners_of(&self, spec: &KernelSpec) -> (Vec<WinnerRecord>, Vec<(PathBuf, String)>) {
        let dir = self.layout.winners_dir().join(spec.name());
        let mut good = Vec::new();
        let mut bad = Vec::new();
        if !self.is_ours(&dir) {
            return (good, bad);
        }
        let Ok(rd) = fs::read_dir(&dir) else {
            return (good, bad);
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| layout::key_file_name(&e.file_name().to_string_lossy(), "json").is_some())
            .map(|e| e.path())
            .collect();
        paths.sort();
        for p in paths {
            match read_winner(&p) {
                Ok(r) if r.spec == *spec && self.winner_path(&r) == p => good.push(r),
                Ok(_) => bad.push((p, "not the winner record its file name says".into())),
                Err(e) => bad.push((p, e)),
            }
        }
        (good, bad)
    }

    /// Every readable winner record in the cache.
    pub fn all_winners(&self) -> Vec<WinnerRecord> {
        let mut out = Vec::new();
        let dir = self.layout.winners_dir();
        if !self.is_ours(&dir) {
            return out;
        }
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !layout::is_spec_dir_name(&name) || !fsx::is_real_dir(&e.path(), self.dev) {
                continue;
            }
            for f in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                if layout::key_file_name(&f.file_name().to_string_lossy(), "json").is_none() {
                    continue;
                }
                if let Ok(r) = read_winner(&f.path())
                    && self.winner_path(&r) == f.path()
                {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| (r.spec.name(), r.bucket));
        out
    }

    /// The tuned tile for `spec` on `device` (name, capability): the record of `bucket`, else the
    /// nearest bucket's within [`MAX_FALLBACK_DISTANCE`] whose tile does not fix the decode
    /// splits (a split count is tuned for one batch and length: the B=8 winner's 2 splits made
    /// B=64 1.3x and B=256 1.5x slower than the planner's, docs/VALIDATION.md run 18); `None`
    /// when none qualifies.
    pub fn find_winner(
        &self,
        device: &str,
        capability: (u32, u32),
        spec: &KernelSpec,
        bucket: &Bucket,
    ) -> Option<WinnerRecord> {
        let (good, _) = self.winners_of(spec);
        good.into_iter()
            .filter(|r| r.device.name == device && r.device.capability == capability)
            .filter(|r| {
                r.bucket == *bucket
                    || (r.tile.splits() == 0 && r.bucket.distance(bucket) <= MAX_FALLBACK_DISTANCE)
            })
            .min_by_key(|r| (r.bucket.distance(bucket), r.bucket))
    }

    /// The record with exactly `rec`'s key (device, capability, spec, bucket), if any.
    pub fn find_exact_winner(&self, rec: &WinnerRecord) -> Option<WinnerRecord> {
        read_winner(&self.winner_path(rec))
            .ok()
            .filter(|r| r.key() == rec.key())
    }

    /// The journal of a tuning run (resumable measurements), one JSON line per candidate.
    pub fn journal_path(&self, run: &Key) -> PathBuf {
        self.layout.journal_file(run)
    }

    /// Candidate results already recorded for `run` (lines that do not parse are ignored: a
    /// process killed mid-line leaves at most one).
    pub fn read_journal(&self, run: &Key) -> Vec<CandidateResult> {
        let Ok(bytes) = fsx::read_capped(&self.journal_path(run), MAX_JOURNAL_BYTES, false) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<CandidateResult>(l).ok())
            .collect()
    }

    /// Appends one result to the journal of `run` (flushed to disk; never through a link).
    pub fn append_journal(&self, run: &Key, r: &CandidateResult) -> Result<(), CacheError> {
        let path = self.journal_path(run);
        self.ensure_dir(&self.layout.tune_dir())?;
        let mut f = fsx::open_marker(&path, true)?;
        let mut line = serde_json::to_vec(r).expect("result serializes");
        line.push(b'\n');
        use std::io::Seek;
        f.seek(io::SeekFrom::End(0)).map_err(io("seek", &path))?;
        f.write_all(&line).map_err(io("write", &path))?;
        f.sync_data().map_err(io("sync", &path))?;
        Ok(())
    }

    /// Deletes the journal of a finished run.
    pub fn remove_journal(&self, run: &Key) {
        let p = self.journal_path(run);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file()) {
            let _ = fs::remove_file(p);
        }
    }
}

/// The bytes of a winner record file.
pub fn winner_json(rec: &WinnerRecord) -> Vec<u8> {
    let mut json = serde_json::to_vec_pretty(rec).expect("winner serializes");
    json.push(b'\n');
    json
}

/// A winner record's path relative to `v1/`, as bundles spell it.
pub fn winner_rel(rec: &WinnerRecord) -> String {
    Layout::winner_rel(&rec.spec, &rec.key())
}
