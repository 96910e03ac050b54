//! Helpers shared by the integration tests: NVRTC (required, never skipped), a compiler wrapper
//! that counts real compiles, a fake compiler ([`fake`]), cheap specs, and a snapshot of a
//! folder's files and bytes.

#![allow(dead_code)]

pub mod fake;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flasheva::compile::nvrtc::Nvrtc;
use flasheva::compile::{CompileError, CompileJob, CompiledArtifact, Compiler};
use flasheva::key::CompilerId;
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};

pub fn nvrtc() -> Nvrtc {
    Nvrtc::load().unwrap_or_else(|e| {
        panic!("NVRTC is required for these tests (run them through scripts/with-nvrtc): {e}")
    })
}

/// Real NVRTC, counting how many compiles actually happen.
pub struct Counting {
    pub inner: Nvrtc,
    pub count: AtomicUsize,
}

impl Counting {
    pub fn new() -> Counting {
        Counting {
            inner: nvrtc(),
            count: AtomicUsize::new(0),
        }
    }
    pub fn compiles(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Compiler for Counting {
    fn id(&self) -> &CompilerId {
        self.inner.id()
    }
    fn compile(&self, job: &CompileJob<'_>) -> Result<CompiledArtifact, CompileError> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.compile(job)
    }
}

/// A spec that compiles in tens of milliseconds.
pub fn cheap_spec(chunk: u32) -> KernelSpec {
    KernelSpec::new(
        Op::ChunkMean,
        &SpecParams {
            head_dim: Some(64),
            chunk: Some(chunk),
            dtype: Some(DType::Bf16),
            ..Default::default()
        },
    )
    .unwrap()
}

pub fn spec(op: Op, d: u32, w: u32, c: u32, local: LocalMode, dtype: DType, g: u32) -> KernelSpec {
    KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(d),
            window: Some(w),
            chunk: Some(c),
            local: Some(local),
            dtype: Some(dtype),
            group: Some(g),
        },
    )
    .unwrap()
}

/// Every file under `dir` (relative path -> bytes), `.used` markers and lock files excluded.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let name = rel.file_name().unwrap().to_string_lossy().to_string();
                if name == ".used" || rel.starts_with("locks") {
                    continue;
                }
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The kernels/ and winners/ part of a snapshot (what a cache holds, temp files excluded).
pub fn content(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("tmp"))
        .collect()
}

/// Path of the flasheva binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flasheva"))
}

/// A winner record of one ok candidate on an H100 (default median 1.2x the winner's).
pub fn winner(
    spec: &KernelSpec,
    tile: flasheva::Tile,
    key: Option<flasheva::Key>,
    ms: f64,
) -> flasheva::cache::winner::WinnerRecord {
    use flasheva::cache::winner::{
        Bucket, CandidateResult, CandidateStatus, DeviceId, WINNER_FORMAT, WinnerRecord,
    };
    let c = CandidateResult {
        tile,
        key,
        status: CandidateStatus::Ok,
        median_ms: Some(ms),
        min_ms: Some(ms),
        max_ms: Some(ms),
        rate: Some(1.0),
        rate_unit: "GB/s".into(),
        rel_diff: Some(0.0),
    };
    WinnerRecord {
        format: WINNER_FORMAT,
        crate_version: flasheva::ARTIFACT_VERSION.into(),
        device: DeviceId {
            name: "NVIDIA H100 80GB HBM3".into(),
            capability: (9, 0),
            driver_version: 13000,
            nvrtc_version: Some("13.0".into()),
        },
        spec: *spec,
        bucket: Bucket::of(spec.op(), 1, 4096, 16, 16),
        shape: (1, 4096, 16, 16),
        tile,
        artifact_key: key,
        median_ms: ms,
        default_tile: tile,
        default_median_ms: ms * 1.2,
        candidates: vec![c],
        created_unix: 0,
    }
}
