//! The only caller of the CUDA driver. Probes for `libcuda` before anything else (cudarc panics
//! when it cannot load a library), and turns every driver status into a [`GpuError`].

use cudarc::driver::{result, sys};

/// A failure of the driver or of the device.
#[derive(Debug, Clone, thiserror::Error)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_isa_table() {
        assert_eq!(max_ptx_isa(13000), (9, 0));
        assert_eq!(max_ptx_isa(12080), (8, 7));
        assert_eq!(max_ptx_isa(12040), (8, 4));
        assert!(ptx_isa_accepted("9.0", 13000));
        assert!(!ptx_isa_accepted("9.0", 12090));
        assert!(!ptx_isa_accepted("x", 13000));
    }
}
