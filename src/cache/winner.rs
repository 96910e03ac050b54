//! Tuning results: the shape bucket of a workload, the device identity, one record per
//! (device, spec, bucket) naming the winning tile and every candidate's measurements. Pure; the
//! store reads and writes them (`cache::store`), the tuner produces them, the loader consumes them.

use serde::{Deserialize, Serialize};

use crate::key::{Key, KeyBuilder};
use crate::spec::{KernelSpec, Op};
use crate::tile::Tile;

/// Winner record format version.
pub const WINNER_FORMAT: u32 = 2;

/// The device a measurement was taken on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceId {
    /// e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability.
    pub capability: (u32, u32),
    /// `cuDriverGetVersion`.
    pub driver_version: i32,
    /// NVRTC that compiled the candidates, e.g. `13.0`.
    pub nvrtc_version: Option<String>,
}

/// Power-of-two bucket of a size: the smallest k with n <= 2^k.
fn log2_ceil(n: usize) -> u32 {
    usize::BITS - n.max(1).saturating_sub(1).leading_zeros()
}

/// Workloads whose best tile is expected to be the same share a bucket: tokens (or the decode
/// position) and the number of independent (batch x head) rows, each rounded up to a power of two,
/// and, for the ops that continue cached sequences (extend), the tokens already cached: an extend
/// step after 32k cached tokens reads 512 more summaries per row than one after none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bucket {
    /// log2 of the token count (decode: of the position + 1), rounded up.
    pub tokens_log2: u32,
    /// log2 of B x heads (decode: B x kv heads), rounded up.
    pub rows_log2: u32,
    /// 0 without cached tokens, else 1 + log2 of their count rounded up (extend's `past`).
    /// Absent in records written before it existed (they were all tuned as past = 0 buckets).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub past_log2: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Bucket {
    /// The bucket of a workload of `op`: `b` sequences, `n` tokens, `h` heads, `hkv` kv heads.
    pub fn of(op: Op, b: usize, n: usize, h: usize, hkv: usize) -> Bucket {
        let rows = crate::ops::of(op).bucket_rows(b, h, hkv);
        Bucket {
            tokens_log2: log2_ceil(n),
            rows_log2: log2_ceil(rows),
            past_log2: 0,
        }
    }

    /// The bucket of `w`, its cached tokens included.
    pub fn of_workload(w: &crate::workload::Workload) -> Bucket {
        Bucket {
            past_log2: if w.past == 0 {
                0
            } else {
                1 + log2_ceil(w.past)
            },
            ..Bucket::of(w.spec.op(), w.b, w.n, w.h, w.hkv)
        }
    }

    /// Distance between buckets (sum of the log2 differences).
    pub fn distance(&self, other: &Bucket) -> u32 {
        self.tokens_log2.abs_diff(other.tokens_log2)
            + self.rows_log2.abs_diff(other.rows_log2)
            + self.past_log2.abs_diff(other.past_log2)
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tokens<=2^{} rows<=2^{}",
            self.tokens_log2, self.rows_log2
        )?;
        if self.past_log2 > 0 {
            write!(f, " past<=2^{}", self.past_log2 - 1)?;
        }
        Ok(())
    }
}

/// The stage at which a candidate failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Rendering or compiling.
    Compile,
    /// Loading the module.
    Load,
    /// Launching or running.
    Launch,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Compile => "compile",
            Stage::Load => "load",
            Stage::Launch => "launch",
        })
    }
}

/// What became of one candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CandidateStatus {
    /// Correct and timed.
    Ok,
    /// Its output differs from the trusted result by more than the dtype's tolerance.
    Wrong {
        /// `‖out − trusted‖ / ‖trusted‖`; `None` when the output held NaN or infinities (JSON
        /// has no non-finite numbers).
        rel_diff: Option<f64>,
        /// The tolerance it was held to.
        tolerance: f64,
    },
    /// Dropped before timing (register spills, register file).
    Pruned {
        /// Why.
        reason: String,
    },
    /// It could not be compiled, loaded or run.
    Failed {
        /// Where.
        stage: Stage,
        /// The first line of the error.
        message: String,
    },
}

impl std::fmt::Display for CandidateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CandidateStatus::Ok => f.write_str("ok"),
            CandidateStatus::Wrong {
                rel_diff,
                tolerance,
            } => match rel_diff {
                Some(d) => write!(
                    f,
                    "WRONG: differs from the trusted result by {d:.2e} (tolerance {tolerance:.0e})"
                ),
                None => write!(
                    f,
                    "WRONG: its output holds NaN or infinities (tolerance {tolerance:.0e})"
                ),
            },
            CandidateStatus::Pruned { reason } => write!(f, "pruned: {reason}"),
            CandidateStatus::Failed { stage, message } => write!(f, "{stage} failed: {message}"),
        }
    }
}

impl CandidateStatus {
    /// An order for listing rejected candidates: wrong results first, then failures, then pruned.
    fn rank(&self) -> u8 {
        match self {
            CandidateStatus::Ok => 0,
            CandidateStatus::Wrong { .. } => 1,
            CandidateStatus::Failed { .. } => 2,
            CandidateStatus::Pruned { .. } => 3,
        }
    }
}

/// One candidate's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateResult {
    /// The tile.
    pub tile: Tile,
    /// Its cache key (when it compiled).
    pub key: Option<Key>,
    /// What became of it.
    pub status: CandidateStatus,
    /// Median ms (ok candidates).
    pub median_ms: Option<f64>,
    /// Fastest ms.
    pub min_ms: Option<f64>,
    /// Slowest ms.
    pub max_ms: Option<f64>,
    /// TFLOP/s (prefill, chunk_summarize) or GB/s (decode, chunk_mean) at the median.
    pub rate: Option<f64>,
    /// Unit of `rate`.
    pub rate_unit: String,
    /// Relative difference from the trusted (default-tile) output.
    pub rel_diff: Option<f64>,
}

impl CandidateResult {
    /// Whether it passed and was timed.
    pub fn ok(&self) -> bool {
        self.status == CandidateStatus::Ok && self.median_ms.is_some()
    }

    /// Orders results fastest first, rejected ones last (wrong, failed, pruned).
    pub fn ranking(a: &CandidateResult, b: &CandidateResult) -> std::cmp::Ordering {
        match (a.ok(), b.ok()) {
            (true, true) => a
                .median_ms
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.median_ms.unwrap_or(f64::INFINITY)),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            (false, false) => a.status.rank().cmp(&b.status.rank()),
        }
    }
}

/// The winner of one (device, spec, bucket), with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WinnerRecord {
    /// [`WINNER_FORMAT`].
    pub format: u32,
    /// Crate version of the tuner.
    pub crate_version: String,
    /// The device.
    pub device: DeviceId,
    /// The spec.
    pub spec: KernelSpec,
    /// The shape bucket.
    pub bucket: Bucket,
    /// The workload measured: B, tokens, heads, kv heads.
    pub shape: (usize, usize, usize, usize),
    /// The winning tile.
    pub tile: Tile,
    /// Its artifact (cache key) on the tuning machine.
    pub artifact_key: Option<Key>,
    /// Its median, ms.
    pub median_ms: f64,
    /// The default tile and its median, ms.
    pub default_tile: Tile,
    /// Median of the default tile.
    pub default_median_ms: f64,
    /// Every candidate, rejected ones with their reasons.
    pub candidates: Vec<CandidateResult>,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
}

impl WinnerRecord {
    /// Reads a record: it must parse (specs and tiles through their validating constructors),
    /// be of this format, and every tile in it must be a tile of its spec.
    pub fn from_json(bytes: &[u8]) -> Result<WinnerRecord, String> {
        let r: WinnerRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.format != WINNER_FORMAT {
            return Err(format!(
                "winner record format {} is not {WINNER_FORMAT}",
                r.format
            ));
        }
        for t in std::iter::once(&r.tile)
            .chain(std::iter::once(&r.default_tile))
            .chain(r.candidates.iter().map(|c| &c.tile))
        {
            t.check(&r.spec)
                .map_err(|e| format!("winner record of {}: {e}", r.spec))?;
        }
        let text_ok = |s: &str, max: usize| s.len() <= max && !s.chars().any(char::is_control);
        // A status may carry a compile log: lines and tabs, but no escape sequences.
        let log_ok = |s: &str| {
            s.len() <= 1 << 20
                && !s
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
        };
        if !text_ok(&r.crate_version, crate::cache::meta::MAX_VERSION_LEN)
            || !text_ok(&r.device.name, 256)
            || r.device
                .nvrtc_version
                .as_deref()
                .is_some_and(|v| !text_ok(v, 32))
            || r.candidates.len() > 100_000
            || r.candidates
                .iter()
                .any(|c| !log_ok(&status_text(&c.status)) || !text_ok(&c.rate_unit, 16))
        {
            return Err(format!(
                "winner record of {}: it holds text flasheva does not write (control characters, or too long)",
                r.spec
            ));
        }
        if !(r.median_ms.is_finite() && r.median_ms > 0.0) {
            return Err(format!(
                "winner record of {}: median {} ms is not a positive time",
                r.spec, r.median_ms
            ));
        }
        Ok(r)
    }

    /// The record's key: device name and capability, spec, bucket.
    pub fn key(&self) -> Key {
        winner_key(
            &self.device.name,
            self.device.capability,
            &self.spec,
            &self.bucket,
        )
    }

    /// Speedup of the winner over the default tile.
    pub fn speedup(&self) -> f64 {
        self.default_median_ms / self.median_ms
    }
}

/// The free text a status carries (a pruning reason, a failure message).
fn status_text(s: &CandidateStatus) -> String {
    match s {
        CandidateStatus::Pruned { reason } => reason.clone(),
        CandidateStatus::Failed { message, .. } => message.clone(),
        CandidateStatus::Ok | CandidateStatus::Wrong { .. } => String::new(),
    }
}

/// The key of the winner record of (device, spec, bucket).
pub fn winner_key(device: &str, capability: (u32, u32), spec: &KernelSpec, bucket: &Bucket) -> Key {
    let mut k = KeyBuilder::new("flasheva-winner/1");
    k.field("device", device)
        .field("capability", &format!("{}.{}", capability.0, capability.1))
        .field("spec", &spec.name())
        .field("tokens_log2", &bucket.tokens_log2.to_string())
        .field("rows_log2", &bucket.rows_log2.to_string());
    // (only when set: the keys of the records without cached tokens stay what they were)
    if bucket.past_log2 > 0 {
        k.field("past_log2", &bucket.past_log2.to_string());
    }
    k.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_candidate_status_survives_json() {
        for st in [
            CandidateStatus::Ok,
            CandidateStatus::Wrong {
                rel_diff: Some(0.5),
                tolerance: 8e-3,
            },
            CandidateStatus::Wrong {
                rel_diff: None,
                tolerance: 2e-3,
            },
            CandidateStatus::Pruned {
                reason: "spills 8 bytes".into(),
            },
            CandidateStatus::Failed {
                stage: Stage::Launch,
                message: "cuLaunchKernel failed".into(),
            },
        ] {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(
                serde_json::from_str::<CandidateStatus>(&json).unwrap(),
                st,
                "{json}"
            );
        }
    }

    #[test]
    fn buckets() {
        let b = Bucket::of(Op::Prefill, 1, 16384, 16, 16);
        assert_eq!(
            b,
            Bucket {
                tokens_log2: 14,
                rows_log2: 4,
                past_log2: 0
            }
        );
        assert_eq!(Bucket::of(Op::Prefill, 1, 16000, 16, 16), b);
        assert_ne!(Bucket::of(Op::Prefill, 1, 16385, 16, 16), b);
        let d = Bucket::of(Op::Decode, 64, 32768, 32, 8);
        assert_eq!(
            d,
            Bucket {
                tokens_log2: 15,
                rows_log2: 9,
                past_log2: 0
            }
        );
        assert_eq!(b.distance(&d), 1 + 5);
        assert_eq!(log2_ceil(1), 0);
        assert_eq!(log2_ceil(0), 0);
        assert_eq!(b.to_string(), "tokens<=2^14 rows<=2^4");
    }

    #[test]
    fn extend_buckets_tell_cached_tokens_apart_and_old_records_still_read() {
        use crate::spec::{DType, LocalMode, test_spec};
        use crate::workload::Workload;
        let spec = test_spec(
            Op::Extend,
            (128, 512, 64),
            LocalMode::Block,
            DType::Bf16,
            Some(4),
        );
        let fresh = Bucket::of_workload(&Workload::new(spec, 8, 512, 32, 8));
        let late = Bucket::of_workload(&Workload::new(spec, 8, 512, 32, 8).with_past(32768));
        assert_eq!(fresh.past_log2, 0);
        assert_eq!(late.past_log2, 16);
        assert_ne!(fresh, late);
        assert_eq!(late.to_string(), "tokens<=2^9 rows<=2^8 past<=2^15");
        // a winner tuned after 32k cached tokens is nearer to 20k than one tuned after none
        let mid = Bucket::of_workload(&Workload::new(spec, 8, 512, 32, 8).with_past(20000));
        assert!(mid.distance(&late) < mid.distance(&fresh));
        // the keys of buckets without cached tokens are those of records written before
        let dev = "NVIDIA H200";
        assert_ne!(
            winner_key(dev, (9, 0), &spec, &fresh),
            winner_key(dev, (9, 0), &spec, &late)
        );
        // a record without the field reads as past_log2 = 0, and writes without it
        let old: Bucket = serde_json::from_str(r#"{"tokens_log2":9,"rows_log2":8}"#).unwrap();
        assert_eq!(old, fresh);
        assert_eq!(
            serde_json::to_string(&fresh).unwrap(),
            r#"{"tokens_log2":9,"rows_log2":8}"#
        );
    }
}
