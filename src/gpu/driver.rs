//! The only caller of the CUDA driver. Probes for `libcuda` before anything else (cudarc panics
//! when it cannot load a library), and turns every driver status into a [`GpuError`].

use cudarc::driver::{result, sys};

/// A failure of the driver or of the device.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// libcuda is not installed.
    #[error(
        "no CUDA driver: libcuda.so could not be loaded (this machine has no NVIDIA driver; GPU commands need one)"
    )]
    NoDriver,
    /// The driver loaded but sees no device.
    #[error("no CUDA device: the driver found no GPU ({0})")]
    NoDevice(String),
    /// A device ordinal out of range.
    #[error("no CUDA device {ordinal}: this machine has {count}")]
    BadOrdinal {
        /// Requested.
        ordinal: usize,
        /// Present.
        count: usize,
    },
    /// A context handed in is not the primary context of its device.
    #[error(
        "the context handed in is not the primary context of gpu {ordinal}: flasheva loads and launches in a device's primary context (the one the CUDA runtime and PyTorch use); pass that one, or use Gpu::open"
    )]
    NotPrimary {
        /// The device of the context.
        ordinal: usize,
    },
    /// A driver call failed.
    #[error("{call} failed: {message}")]
    Driver {
        /// The call.
        call: &'static str,
        /// The driver's error name and text.
        message: String,
    },
}

/// Describes a driver error code.
pub fn describe(e: &result::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty() {
        format!("{e:?}")
    } else {
        format!("{name}: {text}")
    }
}

/// Maps a driver error into a [`GpuError`] naming the call.
pub fn drv(call: &'static str) -> impl Fn(result::DriverError) -> GpuError {
    move |e| GpuError::Driver {
        call,
        message: describe(&e),
    }
}

/// One GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (u32, u32),
    /// Global memory, bytes.
    pub total_mem: usize,
    /// Multiprocessors.
    pub sm_count: u32,
    /// Opt-in shared memory per block, bytes.
    pub smem_per_block_optin: u32,
    /// L2 cache, bytes.
    pub l2_bytes: u32,
}

/// The driver and its devices.
#[derive(Clone, Debug)]
pub struct DriverInfo {
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    pub version: i32,
    /// Every device.
    pub devices: Vec<DeviceInfo>,
}

impl DriverInfo {
    /// The CUDA version as `major.minor`.
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version / 1000, (self.version % 1000) / 10)
    }
}

/// Whether libcuda can be loaded (without panicking when it cannot).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen candidate names.
    unsafe { sys::is_culib_present() }
}

/// Initializes the driver once (after probing for it).
pub fn init() -> Result<(), GpuError> {
    if !driver_present() {
        return Err(GpuError::NoDriver);
    }
    result::init().map_err(|e| {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            GpuError::NoDevice(describe(&e))
        } else {
            drv("cuInit")(e)
        }
    })
}

fn attr(dev: sys::CUdevice, a: sys::CUdevice_attribute) -> Result<i32, GpuError> {
    // SAFETY: dev comes from cuDeviceGet.
    unsafe { result::device::get_attribute(dev, a) }.map_err(drv("cuDeviceGetAttribute"))
}

/// Reads one device's description.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo, GpuError> {
    use sys::CUdevice_attribute::*;
    let dev = result::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
    Ok(DeviceInfo {
        ordinal,
        name: result::device::get_name(dev).map_err(drv("cuDeviceGetName"))?,
        capability: (
            attr(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32,
            attr(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32,
        ),
        // SAFETY: dev comes from cuDeviceGet.
        total_mem: unsafe { result::device::total_mem(dev) }.map_err(drv("cuDeviceTotalMem"))?,
        sm_count: attr(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        smem_per_block_optin: attr(dev, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            as u32,
        l2_bytes: attr(dev, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u32,
    })
}

/// Probes the driver: its version and every device. `NoDriver` / `NoDevice` on machines without.
/// Call it before anything that creates a CUDA context through cudarc directly (which panics
/// without a driver); flasheva's own entry points probe first.
///
/// ```
/// match flasheva::gpu::probe() {
///     Ok(d) => println!("driver {}, {} device(s)", d.version, d.devices.len()),
///     Err(e) => println!("no usable GPU: {e}"), // no driver, no device: a value, not a panic
/// }
/// ```
pub fn probe() -> Result<DriverInfo, GpuError> {
    init()?;
    let mut version = 0;
    // SAFETY: valid out-pointer; the driver is loaded.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(drv("cuDriverGetVersion"))?;
    let count = result::device::get_count().map_err(drv("cuDeviceGetCount"))? as usize;
    if count == 0 {
        return Err(GpuError::NoDevice("0 devices".into()));
    }
    let devices = (0..count).map(device_info).collect::<Result<Vec<_>, _>>()?;
    Ok(DriverInfo { version, devices })
}

pub use crate::compile::{max_ptx_isa, ptx_isa_accepted};

// ---- contexts, modules, launches, timing -----------------------------------------------------

use std::ffi::{CString, c_void};
use std::sync::Arc;

pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::driver::{DevicePtr, DeviceRepr};

/// One device, its primary context and what the loader needs to know about it.
#[derive(Clone, Debug)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    info: DeviceInfo,
    driver_version: i32,
}

impl Gpu {
    /// Opens device `ordinal` (probing for the driver first, so a machine without one gets an
    /// error, not a panic). Cross-stream event tracking is off: callers order their streams.
    ///
    /// ```no_run
    /// let gpu = flasheva::gpu::Gpu::open(0)?;
    /// let stream = gpu.context().new_stream()?; // a cudarc stream of the primary context
    /// println!("{} (sm_{}{})", gpu.info().name, gpu.info().capability.0, gpu.info().capability.1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        let d = probe()?;
        if ordinal >= d.devices.len() {
            return Err(GpuError::BadOrdinal {
                ordinal,
                count: d.devices.len(),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: no stream of this context exists yet.
        unsafe { ctx.disable_event_tracking() };
        Ok(Gpu {
            ctx,
            info: d.devices[ordinal].clone(),
            driver_version: d.version,
        })
    }

    /// Wraps a context the caller already has (e.g. a serving stack's).
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<Gpu, GpuError> {
        let d = probe()?;
        let info = d
            .devices
            .get(ctx.ordinal())
            .cloned()
            .ok_or(GpuError::BadOrdinal {
                ordinal: ctx.ordinal(),
                count: d.devices.len(),
            })?;
        Ok(Gpu {
            ctx,
            info,
            driver_version: d.version,
        })
    }

    /// The device whose primary context is `ctx`, a raw handle an engine owns (what the CUDA
    /// runtime and PyTorch use on that device). flasheva works in primary contexts only: any
    /// other context is [`GpuError::NotPrimary`]. Probes for the driver first, so a machine
    /// without one gets an error, never a panic.
    ///
    /// # Safety
    /// `ctx` must be a live context handle for the duration of the call.
    ///
    /// ```no_run
    /// use flasheva::cudarc::driver::sys;
    /// use flasheva::gpu::{Gpu, RawStream};
    ///
    /// # fn engine_handles() -> (sys::CUcontext, sys::CUstream) { unimplemented!() }
    /// let (ctx, stream) = engine_handles(); // e.g. PyTorch's current context and stream
    /// // SAFETY: both handles are live while flasheva uses them.
    /// let gpu = unsafe { Gpu::from_raw_context(ctx)? };
    /// let stream = unsafe { RawStream::new(stream) }; // pass `&stream` to Kernel::prefill etc.
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn from_raw_context(ctx: sys::CUcontext) -> Result<Gpu, GpuError> {
        init()?;
        // SAFETY: the caller vouches for `ctx`; it is popped again below.
        unsafe { sys::cuCtxPushCurrent_v2(ctx) }
            .result()
            .map_err(drv("cuCtxPushCurrent"))?;
        let mut dev: sys::CUdevice = 0;
        // SAFETY: valid out-pointer, a context is current.
        let got = unsafe { sys::cuCtxGetDevice(&mut dev) }.result();
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pops what was pushed above.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
        got.map_err(drv("cuCtxGetDevice"))?;
        let gpu = Gpu::open(dev as usize)?;
        if gpu.ctx.cu_ctx() != ctx {
            return Err(GpuError::NotPrimary {
                ordinal: dev as usize,
            });
        }
        Ok(gpu)
    }

    /// The cudarc context (memory, streams).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// `cuDriverGetVersion`.
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// Loads a module from a cubin, or from PTX text (which the driver JIT-compiles).
    pub fn load_module(&self, image: &[u8], is_ptx: bool) -> Result<Arc<Module>, GpuError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let mut owned;
        let data: &[u8] = if is_ptx {
            owned = image.to_vec();
            owned.push(0);
            &owned
        } else {
            image
        };
        // SAFETY: `data` is a complete cubin or NUL-terminated PTX and outlives the call.
        let raw = unsafe { result::module::load_data(data.as_ptr() as *const c_void) }
            .map_err(drv("cuModuleLoadData"))?;
        Ok(Arc::new(Module {
            raw,
            ctx: self.ctx.clone(),
        }))
    }
}

/// A loaded module; unloaded when the last handle goes.
#[derive(Debug)]
pub struct Module {
    raw: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

// SAFETY: CUmodule handles may be used from any thread once the context is bound.
unsafe impl Send for Module {}
// SAFETY: as above; the driver serializes module use internally.
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: loaded by load_data and unloaded once.
        let _ = unsafe { result::module::unload(self.raw) };
    }
}

impl Module {
    /// The value of the module's 4-byte global `name` (a `__constant__ int` a template exports),
    /// or `None` when the module has no such symbol.
    pub fn global_i32(&self, name: &str) -> Result<Option<i32>, GpuError> {
        let Ok(c) = CString::new(name) else {
            return Ok(None);
        };
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: the module is loaded and its context current.
        let (ptr, bytes) = match unsafe { result::module::get_global(self.raw, c) } {
            Ok(found) => found,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_FOUND => return Ok(None),
            Err(e) => return Err(drv("cuModuleGetGlobal")(e)),
        };
        if bytes != 4 {
            return Ok(None);
        }
        let mut v = [0i32; 1];
        // SAFETY: `ptr` is a 4-byte global of this module; `v` holds 4 bytes.
        unsafe { result::memcpy_dtoh_sync(&mut v, ptr) }.map_err(drv("cuMemcpyDtoH"))?;
        Ok(Some(v[0]))
    }

    /// The kernel `name`.
    pub fn function(self: &Arc<Self>, name: &str) -> Result<Function, GpuError> {
        let c = CString::new(name).map_err(|_| GpuError::Driver {
            call: "cuModuleGetFunction",
            message: format!("bad name {name:?}"),
        })?;
        // SAFETY: the module is loaded.
        let raw = unsafe { result::module::get_function(self.raw, c) }
            .map_err(drv("cuModuleGetFunction"))?;
        Ok(Function {
            raw,
            module: self.clone(),
        })
    }
}

/// A stream kernels are launched on: a cudarc [`CudaStream`], or a raw `CUstream` an engine owns
/// ([`RawStream`]). flasheva only enqueues work on it; it never synchronizes, destroys or
/// otherwise uses the stream.
pub trait LaunchStream {
    /// The driver's handle.
    fn cu_stream(&self) -> sys::CUstream;
}

impl LaunchStream for CudaStream {
    fn cu_stream(&self) -> sys::CUstream {
        CudaStream::cu_stream(self)
    }
}

impl<T: LaunchStream + ?Sized> LaunchStream for Arc<T> {
    fn cu_stream(&self) -> sys::CUstream {
        (**self).cu_stream()
    }
}

/// A raw `CUstream` owned by the caller (a serving engine's, PyTorch's current stream, ...).
#[derive(Clone, Copy, Debug)]
pub struct RawStream(sys::CUstream);

impl RawStream {
    /// Wraps `stream` (null: the legacy default stream).
    ///
    /// # Safety
    /// `stream` must be a valid stream of the context the kernels were loaded in (the device's
    /// primary context: see [`Gpu::open`]) for as long as work flasheva enqueues on it can run.
    pub unsafe fn new(stream: sys::CUstream) -> RawStream {
        RawStream(stream)
    }
}

impl LaunchStream for RawStream {
    fn cu_stream(&self) -> sys::CUstream {
        self.0
    }
}

/// A kernel of a loaded module.
#[derive(Clone, Debug)]
pub struct Function {
    raw: sys::CUfunction,
    module: Arc<Module>,
}

// SAFETY: CUfunction handles are usable from any thread; the module outlives them.
unsafe impl Send for Function {}
// SAFETY: as above.
unsafe impl Sync for Function {}

impl Function {
    /// Allows `bytes` of dynamic shared memory (needed above 48 KiB).
    pub fn set_max_dynamic_smem(&self, bytes: u32) -> Result<(), GpuError> {
        self.module
            .ctx
            .bind_to_thread()
            .map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: valid function handle.
        unsafe {
            result::function::set_function_attribute(
                self.raw,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(drv("cuFuncSetAttribute"))
    }

    /// Registers per thread, as the driver reports.
    pub fn registers(&self) -> Result<i32, GpuError> {
        // SAFETY: valid function handle.
        unsafe {
            result::function::get_function_attribute(
                self.raw,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS,
            )
        }
        .map_err(drv("cuFuncGetAttribute"))
    }

    /// Enqueues the kernel on `stream` with one by-value parameter block.
    ///
    /// # Safety
    /// `P` must be the kernel's parameter struct, and every device address in it must be valid
    /// for the accesses the kernel makes until the launch completes.
    pub unsafe fn launch<P: Copy>(
        &self,
        stream: &dyn LaunchStream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        params: &P,
    ) -> Result<(), GpuError> {
        self.module
            .ctx
            .bind_to_thread()
            .map_err(drv("cuCtxSetCurrent"))?;
        let mut p = *params;
        let mut args = [&mut p as *mut P as *mut c_void];
        // SAFETY: upheld by the caller; the parameter block is copied by the driver at launch.
        unsafe { result::launch_kernel(self.raw, grid, block, smem, stream.cu_stream(), &mut args) }
            .map_err(drv("cuLaunchKernel"))
    }
}

impl Function {
    /// Launches with one kernel parameter per offset into `params` (a Triton kernel's scalar
    /// parameters, packed by [`crate::ops::ArgList`]).
    ///
    /// # Safety
    /// As [`Function::launch`]: the parameters match the kernel's, and the memory they point to
    /// stays valid until the kernel has run.
    pub unsafe fn launch_args(
        &self,
        stream: &dyn LaunchStream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        params: &crate::ops::ParamBlock,
        offsets: &[usize],
    ) -> Result<(), GpuError> {
        self.module
            .ctx
            .bind_to_thread()
            .map_err(drv("cuCtxSetCurrent"))?;
        let mut block_copy = *params;
        let base = &mut block_copy as *mut crate::ops::ParamBlock as *mut u8;
        let mut args: Vec<*mut c_void> = offsets
            .iter()
            // SAFETY: every offset lies inside the block (ArgList wrote them there).
            .map(|&o| unsafe { base.add(o) } as *mut c_void)
            .collect();
        // SAFETY: upheld by the caller; the driver copies each parameter at launch.
        unsafe { result::launch_kernel(self.raw, grid, block, smem, stream.cu_stream(), &mut args) }
            .map_err(drv("cuLaunchKernel"))
    }
}

/// The device address of a cudarc buffer, for a [`crate::gpu::TensorArg`].
pub fn device_address<T: DeviceRepr>(buf: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (ptr, _sync) = buf.device_ptr(stream);
    ptr
}

/// Times work on a stream with CUDA events.
pub struct EventTimer {
    start: cudarc::driver::CudaEvent,
    stop: cudarc::driver::CudaEvent,
}

impl EventTimer {
    /// Two timing events of `gpu`'s context.
    pub fn new(gpu: &Gpu) -> Result<EventTimer, GpuError> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        Ok(EventTimer {
            start: gpu.ctx.new_event(flags).map_err(drv("cuEventCreate"))?,
            stop: gpu.ctx.new_event(flags).map_err(drv("cuEventCreate"))?,
        })
    }

    /// Records the start.
    pub fn start(&self, stream: &CudaStream) -> Result<(), GpuError> {
        self.start.record(stream).map_err(drv("cuEventRecord"))
    }

    /// Records the stop, waits for it, and returns the milliseconds since the start.
    pub fn stop_ms(&self, stream: &CudaStream) -> Result<f32, GpuError> {
        self.stop.record(stream).map_err(drv("cuEventRecord"))?;
        self.stop.synchronize().map_err(drv("cuEventSynchronize"))?;
        self.start
            .elapsed_ms(&self.stop)
            .map_err(drv("cuEventElapsedTime"))
    }
}

/// Encodes a TMA tensor map (`cuTensorMapEncodeTiled`): rank 4, the 128-byte swizzle, 128-byte L2
/// promotion, out-of-bounds elements read as zero.
pub fn encode_tensor_map(
    m: &crate::gpu::params::TensorMapSpec,
) -> Result<crate::gpu::params::TensorMap, GpuError> {
    use sys::{
        CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
        CUtensorMapL2promotion, CUtensorMapSwizzle,
    };
    let mut out = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    let element_strides = [1u32; 4];
    let dtype = if m.bf16 {
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    } else {
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
    };
    // SAFETY: every array holds `rank` (strides: rank - 1) entries and outlives the call; the
    // driver only reads them and writes the 128-byte map.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            out.as_mut_ptr(),
            dtype,
            4,
            m.addr as *mut c_void,
            m.dims.as_ptr(),
            m.strides.as_ptr(),
            m.boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(|e| GpuError::Driver {
        call: "cuTensorMapEncodeTiled",
        message: format!(
            "{} (tensor {}: dims {:?}, byte strides {:?}, box {:?})",
            describe(&e),
            m.name,
            m.dims,
            m.strides,
            m.boxes
        ),
    })?;
    // SAFETY: the driver wrote the whole map on success.
    let map = unsafe { out.assume_init() };
    Ok(crate::gpu::params::TensorMap(map.opaque))
}

/// Zeroed device counters, one region per stream, for kernels that hand out work dynamically
/// (the `wgmma` prefill's persistent tile scheduler: 2 ints) or elect a last block (the split
/// decode's merge: one int per sequence and head tile). A kernel leaves its counters at zero when
/// it ends, so a region is zeroed once, when allocated; launches on one stream run one after the
/// other, so they never share a region at the same time. A launch that needs more counters than
/// the stream's region holds gets a new, larger region; the old one stays allocated as long as the
/// kernel (a captured graph may still use its address). So a graph captured with these kernels
/// must be replayed on its capture stream ([`crate::gpu::graph::StepGraph::replay`] does), and a
/// launch aborted midway (a driver error) can leave a region's counts wrong for that stream:
/// reload the kernel after such an error.
#[derive(Debug, Default)]
pub struct StreamCounters {
    regions: std::sync::Mutex<std::collections::HashMap<usize, Vec<CounterRegion>>>,
}

/// One zeroed allocation of counters: the buffer (kept alive), its address, its length.
#[derive(Debug)]
struct CounterRegion {
    _buf: CudaSlice<i32>,
    addr: u64,
    len: usize,
}

/// Whether `stream` is being captured into a graph.
pub fn is_capturing(stream: &dyn LaunchStream) -> Result<bool, GpuError> {
    // SAFETY: a valid stream (the LaunchStream contract).
    let status = unsafe { result::stream::is_capturing(stream.cu_stream()) }
        .map_err(drv("cuStreamIsCapturing"))?;
    Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

impl StreamCounters {
    /// Counters `stream` already has (0 if none): what a launch may use without allocating.
    pub fn ready(&self, stream: &dyn LaunchStream) -> usize {
        let regions = self.regions.lock().expect("counter map lock");
        regions
            .get(&(stream.cu_stream() as usize))
            .and_then(|l| l.last())
            .map_or(0, |r| r.len)
    }

    /// The device address of at least `ints` zeroed counters of `stream`.
    pub fn for_stream(
        &self,
        ctx: &Arc<CudaContext>,
        stream: &dyn LaunchStream,
        ints: usize,
    ) -> Result<u64, GpuError> {
        let key = stream.cu_stream() as usize;
        let mut regions = self.regions.lock().expect("counter map lock");
        let list = regions.entry(key).or_default();
        if let Some(r) = list.last()
            && r.len >= ints
        {
            return Ok(r.addr);
        }
        let len = ints.max(2).next_power_of_two();
        let s = ctx.default_stream();
        let buf = s.alloc_zeros::<i32>(len).map_err(drv("cuMemAlloc"))?;
        s.synchronize().map_err(drv("cuStreamSynchronize"))?;
        let addr = device_address(&buf, &s);
        list.push(CounterRegion {
            _buf: buf,
            addr,
            len,
        });
        Ok(addr)
    }
}
