//! `flasheva._native`: the Rust runtime for the Python package. No torch here: the Python layer
//! passes device addresses, shapes, strides, element types and the raw `CUstream` of torch's
//! current stream; the runtime loads kernels (same cache, tuned winners and bundles as the CLI)
//! into the device's primary context (the one the CUDA runtime and so PyTorch use) and launches
//! on that stream. Bad input raises `ValueError` with the library's one-line message before
//! anything is launched; a missing driver or compiler raises `RuntimeError`.

use std::path::PathBuf;
use std::sync::Arc;

use flasheva::cache::CacheStore;
use flasheva::cache::bundle;
use flasheva::gpu::{Gpu, RawStream, TensorArg};
use flasheva::loader::{Runtime as FeRuntime, RuntimeOptions};
use flasheva::ops::{self, DeviceFacts, OpArgs, Problem};
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::tensor::ElemType;
use flasheva::workload::Workload;
use flasheva::{Arch, Tile};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One tensor as Python describes it: (name, device address, dtype, shape, strides).
type TensorDesc = (String, u64, String, Vec<usize>, Vec<usize>);

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn runtime_err(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// Bad input (a spec, a tile, the tensors of a call) is a `ValueError`; everything else (no
/// driver, a compile or cache failure, a miss) a `RuntimeError`.
fn to_py(e: flasheva::Error) -> PyErr {
    match e {
        flasheva::Error::Spec(_) | flasheva::Error::Tile(_) | flasheva::Error::Launch(_) => {
            value_err(e)
        }
        other => runtime_err(other),
    }
}

fn elem(name: &str, dtype: &str) -> PyResult<ElemType> {
    match dtype {
        "bf16" => Ok(ElemType::Bf16),
        "f16" => Ok(ElemType::F16),
        "f32" => Ok(ElemType::F32),
        "i32" => Ok(ElemType::I32),
        other => Err(value_err(format!(
            "tensor {name} is {other}: accepted are bfloat16, float16 (and float32 lse, int32 lengths)"
        ))),
    }
}

fn tensors(descs: Vec<TensorDesc>) -> PyResult<Vec<TensorArg>> {
    descs
        .into_iter()
        .map(|(name, ptr, dtype, shape, strides)| {
            let e = elem(&name, &dtype)?;
            if shape.len() != strides.len() {
                return Err(value_err(format!(
                    "tensor {name}: {} dimensions but {} strides",
                    shape.len(),
                    strides.len()
                )));
            }
            Ok(TensorArg::contiguous(&name, ptr, e, &shape).with_strides(&strides))
        })
        .collect()
}

/// The spec of `op` from keyword values (`head_dim`, `window`, `chunk`, `local`, `dtype`,
/// `group`); fields the op does not use are ignored.
fn spec_of(
    op: &str,
    head_dim: u32,
    chunk: u32,
    dtype: &str,
    window: Option<u32>,
    local: Option<&str>,
    group: Option<u32>,
) -> PyResult<KernelSpec> {
    let op: Op = op.parse().map_err(value_err)?;
    let dtype: DType = dtype.parse().map_err(value_err)?;
    let local = local
        .map(|l| l.parse::<LocalMode>())
        .transpose()
        .map_err(value_err)?;
    KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(head_dim),
            window,
            chunk: Some(chunk),
            local,
            dtype: Some(dtype),
            group,
        },
    )
    .map_err(value_err)
}

/// A spec as Python passes it: a dict with `op`, `head_dim`, `chunk`, `dtype` and, where the op
/// uses them, `window`, `local`, `group`.
fn spec_from_dict(d: &Bound<'_, PyDict>) -> PyResult<KernelSpec> {
    let get = |k: &str| d.get_item(k);
    let req = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        get(k)?.ok_or_else(|| value_err(format!("the spec has no '{k}'")))
    };
    let op: String = req("op")?.extract()?;
    let head_dim: u32 = req("head_dim")?.extract()?;
    let chunk: u32 = req("chunk")?.extract()?;
    let dtype: String = req("dtype")?.extract()?;
    let window: Option<u32> = get("window")?.map(|v| v.extract()).transpose()?;
    let local: Option<String> = get("local")?.map(|v| v.extract()).transpose()?;
    let group: Option<u32> = get("group")?.map(|v| v.extract()).transpose()?;
    spec_of(
        &op,
        head_dim,
        chunk,
        &dtype,
        window,
        local.as_deref(),
        group,
    )
}

/// The readable name of a spec, e.g. `flasheva_prefill_d128_w512_c64_block_bf16`.
#[pyfunction]
fn spec_name(spec: &Bound<'_, PyDict>) -> PyResult<String> {
    Ok(spec_from_dict(spec)?.name())
}

/// Checks a call's tensors against `spec` without a GPU (shapes, dtypes, strides, alignment,
/// head counts), exactly as a launch does before it enqueues anything; raises `ValueError`
/// with the one-line message otherwise.
#[pyfunction]
fn check(spec: &Bound<'_, PyDict>, tensors_: Vec<TensorDesc>) -> PyResult<()> {
    let spec = spec_from_dict(spec)?;
    let tile = Tile::default_for(&spec, Arch::new(9, 0));
    let args = OpArgs {
        tensors: tensors(tensors_)?,
        scale: None,
        splits: 1,
        workspace: None,
        deterministic: false,
    };
    ops::of(spec.op())
        .plan(&spec, &tile, &args, DeviceFacts::new(132))
        .map(|_| ())
        .map_err(|e| value_err(flasheva::Error::from(e)))
}

/// flasheva's version.
#[pyfunction]
fn version() -> &'static str {
    flasheva::CRATE_VERSION
}

/// What this machine has: the driver and devices, NVRTC, Triton, the cache folder in effect.
#[pyfunction]
fn doctor(py: Python<'_>) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", flasheva::CRATE_VERSION)?;
    // the cache entries this build uses (crate version and source fingerprint)
    d.set_item("artifact_version", flasheva::ARTIFACT_VERSION)?;
    match flasheva::gpu::probe() {
        Ok(info) => {
            d.set_item("driver", info.version)?;
            let devs: Vec<String> = info
                .devices
                .iter()
                .map(|x| format!("{} (sm_{}{})", x.name, x.capability.0, x.capability.1))
                .collect();
            d.set_item("devices", devs)?;
        }
        Err(e) => d.set_item("driver_error", e.to_string())?,
    }
    match flasheva::compile::nvrtc::Nvrtc::load() {
        Ok(_) => d.set_item("nvrtc", true)?,
        Err(e) => d.set_item("nvrtc_error", e.to_string())?,
    }
    match flasheva::compile::triton::Triton::load() {
        Ok(_) => d.set_item("triton", true)?,
        Err(e) => d.set_item("triton_error", e.to_string())?,
    }
    let cache = flasheva::config::cache_dir().or_else(flasheva::config::default_cache_dir);
    d.set_item("cache_dir", cache.map(|p| p.display().to_string()))?;
    Ok(d.unbind())
}

fn open_store(cache_dir: Option<String>) -> PyResult<CacheStore> {
    let dir = cache_dir
        .map(PathBuf::from)
        .or_else(flasheva::config::cache_dir)
        .or_else(flasheva::config::default_cache_dir)
        .ok_or_else(|| runtime_err("no cache folder: pass cache_dir or set FLASHEVA_CACHE_DIR"))?;
    CacheStore::open(&dir).map_err(|e| runtime_err(flasheva::Error::from(e)))
}

/// Imports a bundle into the cache (`trust`: the public keys it may be signed by;
/// `allow_unsigned` to accept an unsigned one).
#[pyfunction]
#[pyo3(signature = (path, cache_dir=None, allow_unsigned=false))]
fn import_bundle(path: String, cache_dir: Option<String>, allow_unsigned: bool) -> PyResult<usize> {
    let store = open_store(cache_dir)?;
    let report = bundle::import(
        &store,
        std::path::Path::new(&path),
        &bundle::ImportOptions::default().allow_unsigned(allow_unsigned),
    )
    .map_err(runtime_err)?;
    Ok(report.added)
}

/// The kernel a call of `spec` on this workload `(b, n, h, hkv, past)` uses (the tuned winner
/// when there is one) and the call's problem (decode: `summary_rows` summary slots).
fn kernel_and_problem(
    rt: &FeRuntime,
    spec: KernelSpec,
    (b, n, h, hkv, past): (usize, usize, usize, usize, usize),
    summary_rows: Option<usize>,
) -> PyResult<(Arc<flasheva::loader::Kernel>, Problem)> {
    let w = Workload::new(spec, b, n, h, hkv).with_past(past);
    let mut p = Problem::new(w);
    if let Some(r) = summary_rows {
        p.summary_rows = r;
    }
    Ok((rt.kernel_for(&w).map_err(to_py)?, p))
}

/// The runtime of one device: kernels from the cache (compiled on a miss unless switched off),
/// tuned winners unless switched off.
#[pyclass(name = "Runtime", module = "flasheva._native")]
struct Runtime {
    rt: Arc<FeRuntime>,
}

#[pymethods]
impl Runtime {
    #[new]
    #[pyo3(signature = (device=0, cache_dir=None, compile_on_miss=true, use_tuned=true))]
    fn new(
        device: usize,
        cache_dir: Option<String>,
        compile_on_miss: bool,
        use_tuned: bool,
    ) -> PyResult<Runtime> {
        let gpu = Gpu::open(device).map_err(runtime_err)?;
        let store = open_store(cache_dir)?;
        let opts = RuntimeOptions::from_env()
            .map_err(|e| runtime_err(flasheva::Error::from(e)))?
            .compile_on_miss(compile_on_miss)
            .use_tuned(use_tuned);
        Ok(Runtime {
            rt: Arc::new(FeRuntime::with_gpu(gpu, store, opts)),
        })
    }

    /// The split count and fp32 workspace elements a call of `spec` on this workload needs
    /// (decode: from the capacities, not the lengths).
    /// `deterministic`: prefill_bwd without its atomic dQ mode (a smaller workspace where the
    /// tile has the mode).
    #[pyo3(signature = (spec, b, n, h, hkv, past=0, summary_rows=None, deterministic=false))]
    #[allow(clippy::too_many_arguments)]
    fn sizing(
        &self,
        py: Python<'_>,
        spec: &Bound<'_, PyDict>,
        b: usize,
        n: usize,
        h: usize,
        hkv: usize,
        past: usize,
        summary_rows: Option<usize>,
        deterministic: bool,
    ) -> PyResult<(usize, usize)> {
        let spec = spec_from_dict(spec)?;
        let rt = self.rt.clone();
        py.detach(move || {
            let (k, mut p) = kernel_and_problem(&rt, spec, (b, n, h, hkv, past), summary_rows)?;
            p.deterministic = deterministic;
            let splits = k.splits_for(&p);
            Ok((splits, k.workspace_elems(&p)))
        })
    }

    /// Launches `spec` on `tensors` (inputs then outputs, in the op's order) on the raw CUDA
    /// stream `stream` (torch's current stream). `b, n, h, hkv, past` pick the tuned winner;
    /// `workspace` is (address, fp32 elements) when `sizing` asked for one; `deterministic` as in
    /// `sizing` (the two must agree).
    #[pyo3(signature = (spec, tensors, stream, b, n, h, hkv, past=0, summary_rows=None, scale=None, workspace=None, deterministic=false))]
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        py: Python<'_>,
        spec: &Bound<'_, PyDict>,
        tensors: Vec<TensorDesc>,
        stream: usize,
        b: usize,
        n: usize,
        h: usize,
        hkv: usize,
        past: usize,
        summary_rows: Option<usize>,
        scale: Option<f32>,
        workspace: Option<(u64, usize)>,
        deterministic: bool,
    ) -> PyResult<()> {
        let spec = spec_from_dict(spec)?;
        let args = crate::tensors(tensors)?;
        let rt = self.rt.clone();
        py.detach(move || {
            let (k, p) = kernel_and_problem(&rt, spec, (b, n, h, hkv, past), summary_rows)?;
            let splits = k.splits_for(&p);
            // SAFETY: the caller (flasheva's torch layer) passes torch's current stream of the
            // device this runtime opened; it lives as long as torch's stream pool.
            let s = unsafe { RawStream::new(stream as flasheva::cudarc::driver::sys::CUstream) };
            k.launch(
                &s,
                &OpArgs {
                    tensors: args,
                    scale,
                    splits,
                    workspace,
                    deterministic,
                },
            )
            .map_err(to_py)
        })
    }

    /// Tunes `spec` on this workload on this device, as `flasheva tune` does: every candidate
    /// of the search space (the builtin one, or `space`, the text of a spaces file as
    /// `flasheva tune --space` reads; both backends where their compilers are here) compiled,
    /// checked against the float64-trusted default and timed; the winner is recorded in the
    /// cache, where launches find it. Returns the winner's tile name, its median and the
    /// default's (milliseconds).
    #[pyo3(signature = (spec, b, n, h, hkv, past=0, warmup=5, samples=20, jobs=None, space=None))]
    #[allow(clippy::too_many_arguments)]
    fn tune(
        &self,
        py: Python<'_>,
        spec: &Bound<'_, PyDict>,
        b: usize,
        n: usize,
        h: usize,
        hkv: usize,
        past: usize,
        warmup: usize,
        samples: usize,
        jobs: Option<usize>,
        space: Option<String>,
    ) -> PyResult<(String, f64, f64)> {
        use flasheva::compile::{CompilerSet, Compilers};
        use flasheva::tune::space::{Pruned, Spaces};
        use flasheva::tune::{TuneConfig, tune};
        let spec = spec_from_dict(spec)?;
        if samples == 0 {
            return Err(value_err("samples must be at least 1"));
        }
        let spaces = match space {
            Some(text) => Spaces::parse(&text).map_err(|e| value_err(format!("space: {e}")))?,
            None => Spaces::builtin(),
        };
        let gpu = self.rt.gpu().clone();
        let store = self.rt.store().clone();
        py.detach(move || {
            let (ma, mi) = gpu.info().capability;
            let arch = Arch::preferred_for(ma, mi);
            let mut limits = arch.limits();
            limits.smem_per_block = gpu.info().smem_per_block_optin;
            let compilers = Arc::new(Compilers::new());
            let mut cands = spaces.candidates(&spec, arch, limits);
            let mut keep = Vec::new();
            for t in std::mem::take(&mut cands.keep) {
                match compilers.for_backend(t.engine().backend()) {
                    Ok(_) => keep.push(t),
                    Err(e) => cands.pruned.push(Pruned {
                        tile: t.params(),
                        reason: format!("no {} compiler: {e}", t.engine().backend()),
                    }),
                }
            }
            cands.keep = keep;
            let rt = FeRuntime::with_gpu(
                gpu.clone(),
                store,
                RuntimeOptions::default()
                    .compile_on_miss(true)
                    .use_tuned(false),
            );
            let stream = gpu.context().new_stream().map_err(runtime_err)?;
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().saturating_sub(1).max(1))
                    .unwrap_or(1)
            });
            let w = Workload::new(spec, b, n, h, hkv).with_past(past);
            let o = tune(
                &rt,
                &stream,
                &compilers,
                w,
                &cands,
                &TuneConfig::new(warmup, samples, jobs),
                &mut |_| {},
            )
            .map_err(runtime_err)?;
            Ok((
                o.record.tile.name(spec.op()),
                o.record.median_ms,
                o.record.default_median_ms,
            ))
        })
    }

    /// The device's name.
    fn device_name(&self) -> String {
        self.rt.gpu().info().name.clone()
    }
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(spec_name, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(doctor, m)?)?;
    m.add_function(wrap_pyfunction!(import_bundle, m)?)?;
    m.add_class::<Runtime>()?;
    Ok(())
}
