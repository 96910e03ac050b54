//! The Triton backend's compiler: runs the compile driver (triton/compile.py, embedded) in a
//! Python that has Triton, one subprocess per job. The driver compiles the job's kernels for
//! the arch's compute capability without a GPU, merges them into one PTX module and assembles
//! it with the ptxas Triton ships; this module reads back the PTX, the cubin, each entry point's
//! shared memory and the ptxas report.
//!
//! The Python is `FLASHEVA_PYTHON` when set, else flasheva's own Triton environment
//! (`scripts/with-triton` creates it), else `python3` on the `PATH`; the first that imports
//! Triton is used, and its Triton version is part of every cache key. Nothing here panics when
//! Python or Triton is missing: [`Triton::load`] says what it tried.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde::Deserialize;

use super::{Backend, CompileError, CompileJob, CompiledArtifact, Compiler};
use crate::key::CompilerId;
use crate::target::Arch;
use crate::tile::{TRITON_ARCHS, triton_targets};

/// The compile driver, exactly as embedded.
pub const DRIVER: &str = include_str!("../../triton/compile.py");

/// The Triton version flasheva is built and tested against (the GPU machines carry it).
pub const PINNED_VERSION: &str = "3.6.0";

/// A Python with Triton, ready to compile.
#[derive(Clone, Debug)]
pub struct Triton {
    python: PathBuf,
    id: CompilerId,
}

/// What the driver prints.
#[derive(Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    error: String,
    #[serde(default)]
    triton: String,
    #[serde(default)]
    entries: Vec<ReplyEntry>,
    #[serde(default)]
    log: String,
}

#[derive(Deserialize)]
struct ReplyEntry {
    name: String,
    shared: u32,
}

/// The interpreters tried, in order.
fn candidates() -> Vec<PathBuf> {
    if let Some(p) = crate::config::python() {
        return vec![p];
    }
    let mut v = Vec::new();
    if let Some(p) = crate::config::triton_python() {
        v.push(p);
    }
    v.push(PathBuf::from("python3"));
    v
}

/// The Triton version `python` imports, or why it cannot.
fn probe(python: &Path) -> Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import triton; print(triton.__version__)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        return Err(format!("{}: {last}", python.display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Triton {
    /// Finds a Python with Triton once per process; later calls return the same result.
    pub fn load() -> Result<Triton, CompileError> {
        static ONCE: OnceLock<Result<Triton, CompileError>> = OnceLock::new();
        ONCE.get_or_init(Triton::load_uncached).clone()
    }

    fn load_uncached() -> Result<Triton, CompileError> {
        let mut tried = Vec::new();
        for python in candidates() {
            match probe(&python) {
                Ok(version) => return Ok(Triton::with(python, version)),
                Err(e) => tried.push(e),
            }
        }
        Err(CompileError::TritonMissing {
            reason: format!("tried {}", tried.join("; ")),
        })
    }

    /// A compiler running `python`, whose Triton is `version` (not probed).
    pub fn with(python: PathBuf, version: String) -> Triton {
        Triton {
            python,
            id: CompilerId {
                name: "triton".into(),
                version,
            },
        }
    }

    /// The interpreter it runs.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Whether the Triton found is the pinned version (others may compile differently).
    pub fn is_pinned(&self) -> bool {
        self.id.version == PINNED_VERSION
    }
}

impl Compiler for Triton {
    fn id(&self) -> &CompilerId {
        &self.id
    }

    fn backend(&self) -> Backend {
        Backend::Triton
    }

    fn options(&self, arch: Arch) -> Vec<String> {
        // What the driver runs ptxas with, after Triton's own passes.
        super::options_for_backend(Backend::Triton, arch)
    }

    fn compile(&self, job: &CompileJob<'_>) -> Result<CompiledArtifact, CompileError> {
        if !triton_targets(job.arch) {
            return Err(CompileError::UnsupportedArch {
                compiler: self.id.clone(),
                arch: job.arch,
                supported: TRITON_ARCHS.into(),
            });
        }
        let failed = |log: String| CompileError::Failed {
            program: job.program_name.to_string(),
            arch: job.arch,
            log,
            excerpt: String::new(),
        };
        let start = Instant::now();
        let out = tempfile::tempdir().map_err(|e| failed(format!("a temporary folder: {e}")))?;
        let request = serde_json::json!({
            "source": job.source,
            "arch": job.arch.to_string(),
            "out": out.path(),
        });
        let mut child = Command::new(&self.python)
            .arg("-c")
            .arg(DRIVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CompileError::TritonMissing {
                reason: format!("{}: {e}", self.python.display()),
            })?;
        {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin
                .write_all(request.to_string().as_bytes())
                .map_err(|e| failed(format!("writing the request to the driver: {e}")))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|e| failed(format!("waiting for the driver: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(reply) = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Reply>(l).ok())
        else {
            return Err(failed(format!(
                "the Triton driver printed no result (exit {}):\n{}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )));
        };
        if !reply.ok {
            return Err(failed(reply.error));
        }
        if reply.triton != self.id.version {
            return Err(failed(format!(
                "the driver ran Triton {}, this compiler was probed as {}",
                reply.triton, self.id.version
            )));
        }
        let read = |name: &str| {
            std::fs::read(out.path().join(name))
                .map_err(|e| failed(format!("the driver wrote no {name}: {e}")))
        };
        Ok(CompiledArtifact {
            ptx: read("kernel.ptx")?,
            cubin: read("kernel.cubin")?,
            log: reply.log,
            elapsed: start.elapsed(),
            entry_shared_mem: reply.entries.iter().map(|e| e.shared).collect(),
        })
        .and_then(|a| {
            // The driver names entries as the job asked; check it anyway.
            let names: Vec<&str> = reply.entries.iter().map(|e| e.name.as_str()).collect();
            if names.is_empty() {
                return Err(failed("the driver compiled no kernel".into()));
            }
            Ok(a)
        })
    }
}
