//! The only caller of NVRTC: finds and loads the library (never letting cudarc panic on a missing
//! one), reports its version and archs, and compiles rendered sources to PTX and cubin.
//!
//! Search order for `libnvrtc.so.13`: `$FLASHEVA_NVRTC` (a file or a folder), the dynamic loader's
//! own path (`LD_LIBRARY_PATH`, ldconfig), then the usual CUDA folders, flasheva's data folder
//! (where `scripts/with-nvrtc` installs the PyPI wheel) and Python site-packages. A library found
//! in a folder is loaded by full path together with its `libnvrtc-builtins`, so the later loads
//! by name (cudarc's) resolve to it.

use std::ffi::{CString, c_int};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use cudarc::nvrtc::{result, sys};

use super::{CompileError, CompileJob, CompiledArtifact, Compiler, source_excerpt};
use crate::key::CompilerId;
use crate::target::Arch;

/// The library file name flasheva looks for (CUDA 13).
pub const LIB_NAME: &str = "libnvrtc.so.13";

/// Where NVRTC was found and what it can do.
#[derive(Clone, Debug)]
pub struct NvrtcInfo {
    /// The folder it was loaded from, or `None` when the dynamic loader found it by name.
    pub dir: Option<PathBuf>,
    /// (major, minor).
    pub version: (i32, i32),
    /// Supported `sm_XY` numbers, e.g. 80, 90.
    pub archs: Vec<i32>,
}

/// A loaded NVRTC; cheap to share between threads (each compile is its own program).
#[derive(Clone, Debug)]
pub struct Nvrtc {
    info: NvrtcInfo,
    id: CompilerId,
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            v.push(root.join("lib64"));
            v.push(root.join("lib"));
            v.push(root.join("targets/x86_64-linux/lib"));
        }
    }
    v.push(PathBuf::from("/usr/local/cuda/lib64"));
    v.push(PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"));
    v.push(PathBuf::from("/opt/cuda/lib64"));
    v.push(PathBuf::from("/usr/lib/x86_64-linux-gnu"));
    if let Some(data) = crate::config::nvrtc_data_dir() {
        v.push(data);
    }
    let mut site_roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        site_roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = dirs::home_dir() {
        site_roots.push(home.join(".local/lib"));
    }
    site_roots.push(PathBuf::from("/usr/local/lib"));
    site_roots.push(PathBuf::from("/usr/lib"));
    for root in site_roots {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pys.sort();
        for py in pys {
            for sp in ["site-packages", "dist-packages"] {
                v.push(py.join(sp).join("nvidia/cu13/lib"));
            }
        }
    }
    v
}

/// Loads `libnvrtc-builtins*` and then `libnvrtc.so.13` from `dir` by full path, keeping both
/// loaded for the life of the process.
fn preload(dir: &Path) -> Result<(), String> {
    let lib = dir.join(LIB_NAME);
    if !lib.is_file() {
        return Err(format!("{} does not exist", lib.display()));
    }
    let mut builtins: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so."))
        })
        .collect();
    builtins.sort();
    for b in builtins {
        // SAFETY: loading a shared library runs its initializers; these are NVIDIA's NVRTC libraries.
        let l = unsafe { libloading::Library::new(&b) }.map_err(|e| e.to_string())?;
        std::mem::forget(l);
    }
    // SAFETY: as above.
    let l = unsafe { libloading::Library::new(&lib) }.map_err(|e| e.to_string())?;
    std::mem::forget(l);
    Ok(())
}

fn locate() -> Result<Option<PathBuf>, CompileError> {
    if let Some(p) = crate::config::nvrtc_path() {
        let dir = if p.is_file() {
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            p.clone()
        };
        return preload(&dir)
            .map(|_| Some(dir))
            .map_err(|reason| CompileError::NvrtcEnv {
                path: p.display().to_string(),
                reason,
            });
    }
    // SAFETY: only tries to dlopen the candidate names.
    if unsafe { sys::is_culib_present() } {
        return Ok(None);
    }
    let dirs = candidate_dirs();
    for d in &dirs {
        if d.join(LIB_NAME).is_file() && preload(d).is_ok() {
            return Ok(Some(d.clone()));
        }
    }
    let mut searched = vec![
        "$FLASHEVA_NVRTC (unset)".to_string(),
        "the dynamic loader's path".to_string(),
    ];
    searched.extend(dirs.iter().map(|d| d.display().to_string()));
    Err(CompileError::NvrtcMissing {
        searched: searched.join(", "),
    })
}

fn nvrtc_err(call: &'static str, e: result::NvrtcError) -> CompileError {
    CompileError::Nvrtc {
        call,
        code: format!("{:?}", e.0),
    }
}

impl Nvrtc {
    /// Finds and loads NVRTC once per process; later calls return the same result.
    pub fn load() -> Result<Nvrtc, CompileError> {
        static ONCE: OnceLock<Result<Nvrtc, CompileError>> = OnceLock::new();
        ONCE.get_or_init(Nvrtc::load_uncached).clone()
    }

    fn load_uncached() -> Result<Nvrtc, CompileError> {
        let dir = locate()?;
        // SAFETY: the library is loaded (located above), so cudarc's loader will not panic.
        if !unsafe { sys::is_culib_present() } {
            return Err(CompileError::NvrtcMissing {
                searched: format!(
                    "{} was loaded but cudarc could not open it by name",
                    dir.as_deref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
            });
        }
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: valid out-pointers.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcVersion", e))?;
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcGetNumSupportedArchs", e))?;
        let mut archs = vec![0 as c_int; n.max(0) as usize];
        // SAFETY: the buffer holds n ints.
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcGetSupportedArchs", e))?;
        let info = NvrtcInfo {
            dir,
            version: (major, minor),
            archs,
        };
        Ok(Nvrtc {
            id: CompilerId {
                name: "nvrtc".into(),
                version: format!("{major}.{minor}"),
            },
            info,
        })
    }

    /// Where it was found, version and archs.
    pub fn info(&self) -> &NvrtcInfo {
        &self.info
    }

    /// Whether NVRTC can compile for `arch`.
    pub fn supports(&self, arch: Arch) -> bool {
        self.info
            .archs
            .contains(&((arch.major * 10 + arch.minor) as i32))
    }
}

struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed once.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn c_bytes(v: Vec<std::ffi::c_char>) -> Vec<u8> {
    let mut b: Vec<u8> = v.into_iter().map(|c| c as u8).collect();
    while b.last() == Some(&0) {
        b.pop();
    }
    b
}

impl Compiler for Nvrtc {
    fn id(&self) -> &CompilerId {
        &self.id
    }

    fn compile(&self, job: &CompileJob<'_>) -> Result<CompiledArtifact, CompileError> {
        if !self.supports(job.arch) {
            return Err(CompileError::UnsupportedArch {
                compiler: self.id.clone(),
                arch: job.arch,
                supported: self
                    .info
                    .archs
                    .iter()
                    .map(|a| format!("sm_{a}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let src = CString::new(job.source).map_err(|_| CompileError::Nvrtc {
            call: "nvrtcCreateProgram",
            code: "source contains a NUL byte".into(),
        })?;
        let name = CString::new(job.program_name).map_err(|_| CompileError::Nvrtc {
            call: "nvrtcCreateProgram",
            code: "program name contains a NUL byte".into(),
        })?;
        let prog = Program(
            result::create_program(&src, Some(&name))
                .map_err(|e| nvrtc_err("nvrtcCreateProgram", e))?,
        );
        let t0 = Instant::now();
        // SAFETY: prog is live.
        let compiled = unsafe { result::compile_program(prog.0, job.options) };
        let elapsed = t0.elapsed();
        // SAFETY: prog is live.
        let log = unsafe { result::get_program_log(prog.0) }
            .map(|l| String::from_utf8_lossy(&c_bytes(l)).into_owned())
            .unwrap_or_default();
        if compiled.is_err() {
            return Err(CompileError::Failed {
                program: job.program_name.to_string(),
                arch: job.arch,
                excerpt: source_excerpt(&log, job.program_name, job.source, 8),
                log,
            });
        }
        // SAFETY: prog compiled.
        let ptx =
            c_bytes(unsafe { result::get_ptx(prog.0) }.map_err(|e| nvrtc_err("nvrtcGetPTX", e))?);
        let mut size = 0usize;
        // SAFETY: valid out-pointer, prog compiled.
        unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcGetCUBINSize", e))?;
        let mut cubin = vec![0u8; size];
        // SAFETY: buffer of the reported size.
        unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut std::ffi::c_char) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcGetCUBIN", e))?;
        Ok(CompiledArtifact {
            ptx,
            cubin,
            log,
            elapsed,
            entry_shared_mem: Vec::new(),
        })
    }
}
