//! The GPU side: [`driver`] is the only code that calls the CUDA driver (probing, devices,
//! modules, memory, launches, events) but for [`graph`], which captures and replays serving
//! steps as CUDA graphs; [`params`] holds the kernel parameter blocks (plain
//! `#[repr(C)]` mirrors of the templates' structs) and the pure launch planning.

pub mod driver;
pub mod graph;
pub mod params;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod tensor;

pub use driver::{
    CudaContext, CudaSlice, CudaStream, DeviceInfo, DriverInfo, EventTimer, Function, Gpu,
    GpuError, LaunchStream, Module, RawStream, device_address, driver_present, probe,
};
pub use params::{ElemType, LaunchError, TensorArg};
