//! Compilation: the `Compiler` trait, the options flasheva compiles with, and the pure helpers
//! around a compiler's output (ptxas resource report, error excerpts, PTX ISA version).
//!
//! The only NVRTC caller is `nvrtc` (feature `compiler`); everything here is pure, so cache and
//! tuning logic can be tested with a fake compiler.

#[cfg(feature = "compiler")]
#[cfg_attr(docsrs, doc(cfg(feature = "compiler")))]
pub mod nvrtc;
#[cfg(feature = "compiler")]
#[cfg_attr(docsrs, doc(cfg(feature = "compiler")))]
pub mod triton;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::CompilerId;
use crate::target::Arch;
pub use crate::tile::Backend;

/// One program to compile for one arch.
#[derive(Clone, Debug)]
pub struct CompileJob<'a> {
    /// The program (file) name shown in logs, e.g. `flasheva_prefill_....cu`.
    pub program_name: &'a str,
    /// The rendered CUDA source.
    pub source: &'a str,
    /// Target arch.
    pub arch: Arch,
    /// Compiler options, in order (see [`options_for`]).
    pub options: &'a [String],
}

/// What a compiler produced.
#[derive(Clone, Debug)]
pub struct CompiledArtifact {
    /// PTX text.
    pub ptx: Vec<u8>,
    /// cubin (ELF) for exactly the job's arch.
    pub cubin: Vec<u8>,
    /// The compile log (warnings, ptxas resource report).
    pub log: String,
    /// Wall time of the compile.
    pub elapsed: Duration,
    /// Dynamic shared memory of each entry point, in entry-point order, when the compiler
    /// decides it (Triton); empty when the tile does (NVRTC).
    pub entry_shared_mem: Vec<u32>,
}

/// Registers, spills and static shared memory of one kernel, read from the ptxas report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Kernel entry point.
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
    /// Stack frame bytes.
    pub stack_frame: u32,
    /// Static shared memory bytes.
    pub static_smem: u32,
}

/// A failed compile, or no compiler.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// NVRTC could not be loaded.
    #[error(
        "NVRTC (libnvrtc.so.13) was not found; searched {searched}. Install the CUDA 13 toolkit, or run `pip install --target ~/.local/share/flasheva/nvrtc nvidia-cuda-nvrtc==13.0.88` (scripts/with-nvrtc does this), or point FLASHEVA_NVRTC at the folder that holds libnvrtc.so.13"
    )]
    NvrtcMissing {
        /// Where it looked, comma-separated.
        searched: String,
    },
    /// FLASHEVA_NVRTC points somewhere that holds no usable NVRTC.
    #[error("FLASHEVA_NVRTC={path} holds no loadable libnvrtc.so.13: {reason}")]
    NvrtcEnv {
        /// The value.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// An NVRTC call other than compiling failed.
    #[error("NVRTC {call} failed: {code}")]
    Nvrtc {
        /// The API call.
        call: &'static str,
        /// NVRTC's result code.
        code: String,
    },
    /// The program did not compile; the log and the source lines it names are included.
    #[error("compiling {program} for {arch} failed:\n{log}{excerpt}")]
    Failed {
        /// Program name.
        program: String,
        /// Target arch.
        arch: Arch,
        /// The compiler log.
        log: String,
        /// The rendered source lines the log refers to.
        excerpt: String,
    },
    /// No Python with Triton for the Triton backend.
    #[error(
        "Triton was not found: {reason}. Install it with `pip install triton==3.6.0` (scripts/with-triton installs it into flasheva's own environment), or point FLASHEVA_PYTHON at a Python that has it"
    )]
    TritonMissing {
        /// What was tried and how it failed.
        reason: String,
    },
    /// A pipeline was given a tile of a backend it has no compiler for.
    #[error("no {backend} compiler here (this pipeline compiles with {have})")]
    NoBackend {
        /// The tile's backend.
        backend: Backend,
        /// The compiler the pipeline has.
        have: CompilerId,
    },
    /// The compiler does not support the arch.
    #[error("{compiler} cannot target {arch}; it supports {supported}")]
    UnsupportedArch {
        /// Compiler identity.
        compiler: CompilerId,
        /// Requested arch.
        arch: Arch,
        /// What it supports.
        supported: String,
    },
}

/// A compiler of rendered sources: NVRTC and Triton in production, fakes in tests.
pub trait Compiler: Send + Sync {
    /// Name and version; part of every cache key.
    fn id(&self) -> &CompilerId;
    /// Compiles one job.
    fn compile(&self, job: &CompileJob<'_>) -> Result<CompiledArtifact, CompileError>;
    /// The backend whose tiles it compiles.
    fn backend(&self) -> Backend {
        Backend::Nvrtc
    }
    /// The options it compiles for `arch` with (part of the cache key).
    fn options(&self, arch: Arch) -> Vec<String> {
        options_for(arch)
    }
}

/// The compilers a pipeline can use: the one for each backend. Any single [`Compiler`] is a set
/// holding only itself.
pub trait CompilerSet: Send + Sync {
    /// The compiler of `backend`, or why there is none.
    fn for_backend(&self, backend: Backend) -> Result<&dyn Compiler, CompileError>;
}

/// NVRTC and Triton, each loaded on first use (a missing one is an error only when a tile of
/// its backend is compiled).
#[cfg(feature = "compiler")]
#[derive(Default)]
pub struct Compilers {
    nvrtc: std::sync::OnceLock<Result<nvrtc::Nvrtc, CompileError>>,
    triton: std::sync::OnceLock<Result<triton::Triton, CompileError>>,
}

#[cfg(feature = "compiler")]
impl Compilers {
    /// A set that loads each compiler when first asked for.
    pub fn new() -> Compilers {
        Compilers::default()
    }
}

#[cfg(feature = "compiler")]
impl CompilerSet for Compilers {
    fn for_backend(&self, backend: Backend) -> Result<&dyn Compiler, CompileError> {
        match backend {
            Backend::Triton => self
                .triton
                .get_or_init(triton::Triton::load)
                .as_ref()
                .map(|c| c as &dyn Compiler)
                .map_err(Clone::clone),
            _ => self
                .nvrtc
                .get_or_init(nvrtc::Nvrtc::load)
                .as_ref()
                .map(|c| c as &dyn Compiler)
                .map_err(Clone::clone),
        }
    }
}

impl<C: Compiler> CompilerSet for C {
    fn for_backend(&self, backend: Backend) -> Result<&dyn Compiler, CompileError> {
        if self.backend() == backend {
            Ok(self)
        } else {
            Err(CompileError::NoBackend {
                backend,
                have: self.id().clone(),
            })
        }
    }
}

/// The options flasheva compiles every kernel with (the arch flag yields both PTX and cubin;
/// `-Xptxas=-v` makes the log carry the resource report kept in the cache metadata).
pub fn options_for(arch: Arch) -> Vec<String> {
    vec![
        arch.nvrtc_flag(),
        "--std=c++17".to_string(),
        "--generate-line-info".to_string(),
        "-Xptxas=-v".to_string(),
    ]
}

/// The options the compiler of `backend` compiles for `arch` with: [`options_for`] for NVRTC;
/// for Triton, the ptxas flags its driver assembles with.
pub fn options_for_backend(backend: Backend, arch: Arch) -> Vec<String> {
    match backend {
        Backend::Triton => vec![format!("--gpu-name={arch}"), "-v".into()],
        _ => options_for(arch),
    }
}

/// Parses ptxas `-v` output into one record per function.
pub fn parse_resource_usage(log: &str) -> Vec<ResourceUsage> {
    let mut out: Vec<ResourceUsage> = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(rest.trim().to_string());
            continue;
        }
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_string);
            continue;
        }
        let Some(func) = current.clone() else {
            continue;
        };
        let entry = match out.iter_mut().position(|r| r.function == func) {
            Some(i) => &mut out[i],
            None => {
                out.push(ResourceUsage {
                    function: func,
                    ..Default::default()
                });
                out.last_mut().expect("just pushed")
            }
        };
        if line.contains("bytes stack frame") {
            entry.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
            entry.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            entry.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains("registers") {
            entry.registers = number_before(line, "registers").unwrap_or(0);
            entry.static_smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

fn number_before(line: &str, suffix: &str) -> Option<u32> {
    let idx = line.find(suffix)?;
    line[..idx]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// The `.version` of a PTX text, e.g. `9.0`.
pub fn ptx_isa_version(ptx: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(&ptx[..ptx.len().min(4096)]).ok()?;
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(".version "))
        .map(|v| v.trim().to_string())
}

/// The newest PTX ISA version a driver of CUDA version `v` (e.g. 13000) JIT-compiles.
pub fn max_ptx_isa(v: i32) -> (u32, u32) {
    let (major, minor) = ((v / 1000) as u32, ((v % 1000) / 10) as u32);
    match (major, minor) {
        (13, m) => (9, m),
        (12, m) if m >= 9 => (8, 8),
        (12, 8) => (8, 7),
        (12, m) if m >= 5 => (8, 5),
        (12, m) => (8, m),
        (11, 8) => (7, 8),
        (11, m) => (7, m),
        (m, _) if m > 13 => (9 + (m - 13), 9),
        _ => (6, 0),
    }
}

/// Whether a PTX of ISA `isa` ("9.0") can be JIT-compiled by a driver of CUDA version `v`.
pub fn ptx_isa_accepted(isa: &str, v: i32) -> bool {
    let mut it = isa.split('.').map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b) <= max_ptx_isa(v),
        _ => false,
    }
}

/// The lines of `source` that a compiler log refers to as `name(LINE): ...`, numbered, with two
/// lines of context, at most `max` places.
pub fn source_excerpt(log: &str, program_name: &str, source: &str, max: usize) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut wanted: Vec<usize> = Vec::new();
    let needle = format!("{program_name}(");
    for l in log.lines() {
        if let Some(rest) = l.split(&needle).nth(1)
            && let Some(num) = rest.split(')').next().and_then(|n| n.parse::<usize>().ok())
            && !wanted.contains(&num)
        {
            wanted.push(num);
        }
        if wanted.len() >= max {
            break;
        }
    }
    let mut out = String::new();
    for n in wanted {
        out.push_str(&format!("--> {program_name}:{n}\n"));
        let lo = n.saturating_sub(2).max(1);
        let hi = (n + 1).min(lines.len());
        for i in lo..=hi {
            let mark = if i == n { '>' } else { ' ' };
            out.push_str(&format!("{mark}{i:6} | {}\n", lines[i - 1]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'k1' for 'sm_80'\n\
ptxas info    : Function properties for k1\n\
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'k2' for 'sm_80'\n\
ptxas info    : Function properties for k2\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 32 registers, used 0 barriers, 360 bytes cmem[0]\n";
        let r = parse_resource_usage(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            ResourceUsage {
                function: "k1".into(),
                registers: 168,
                spill_stores: 4,
                spill_loads: 12,
                stack_frame: 8,
                static_smem: 1024
            }
        );
        assert_eq!(r[1].registers, 32);
        assert_eq!(r[1].static_smem, 0);
    }

    #[test]
    fn excerpts_number_the_rendered_lines() {
        let src = "a\nb\nc\nd\ne\n";
        let log = "k.cu(3): error: identifier \"c\" is undefined\nk.cu(3): note\n";
        let ex = source_excerpt(log, "k.cu", src, 5);
        assert_eq!(
            ex,
            "--> k.cu:3\n      1 | a\n      2 | b\n>     3 | c\n      4 | d\n"
        );
    }

    #[test]
    fn ptx_isa_table() {
        assert_eq!(max_ptx_isa(13000), (9, 0));
        assert_eq!(max_ptx_isa(12080), (8, 7));
        assert_eq!(max_ptx_isa(12040), (8, 4));
        assert!(ptx_isa_accepted("9.0", 13000));
        assert!(!ptx_isa_accepted("9.0", 12090));
        assert!(!ptx_isa_accepted("x", 13000));
    }

    #[test]
    fn ptx_version_is_read() {
        let ptx = b"//\n// Generated by NVIDIA NVVM Compiler\n.version 9.0\n.target sm_90\n";
        assert_eq!(ptx_isa_version(ptx).as_deref(), Some("9.0"));
        assert_eq!(ptx_isa_version(b"nothing"), None);
    }
}
