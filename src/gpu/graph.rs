//! CUDA graphs of serving steps. A decode or extend step's launches depend only on capacities
//! (batch, `Tmax`, summary slots, the split count planned from them) and on device pointers, never
//! on the lengths, tokens or page contents, which the kernels read from device memory. So a step
//! can be captured once and replayed with new inputs written into the same buffers: no host
//! synchronization, allocation or host-side decision per step. The caller owns every buffer the
//! step reads and writes, including the split workspace (sized for the maximum split count).
//!
//! Capture uses the thread-local mode: other threads may keep allocating and launching. Nothing
//! is allocated under capture: a step whose kernel uses the stream's zeroed counters (the
//! persistent prefill's tile scheduler, the split decode's last-block merge) and has none on this
//! stream yet is captured in its counter-free form (static schedule, combine launch); run it once
//! on the stream before capturing to capture the faster form.

use super::driver::{CudaStream, GpuError, drv};
use cudarc::driver::sys;
use std::sync::Arc;

/// A captured step, replayed on the stream it was captured on.
pub struct StepGraph {
    graph: cudarc::driver::CudaGraph,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGraph")
    }
}

impl StepGraph {
    /// Captures what `body` launches on `stream` into a graph (nothing runs now). If `body`
    /// fails, the capture is ended and discarded and its error returned. `E` is the body's
    /// error type (e.g. `flasheva::Error` of `Kernel::launch`).
    pub fn capture<E: From<GpuError>>(
        stream: &Arc<CudaStream>,
        body: impl FnOnce(&Arc<CudaStream>) -> Result<(), E>,
    ) -> Result<StepGraph, E> {
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("cuStreamBeginCapture"))?;
        let ran = body(stream);
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        ran?;
        let graph = ended
            .map_err(drv("cuStreamEndCapture / cuGraphInstantiate"))?
            .ok_or_else(|| GpuError::Driver {
                call: "cuStreamEndCapture",
                message: "the capture recorded nothing (the step launched no kernel)".into(),
            })?;
        graph.upload().map_err(drv("cuGraphUpload"))?;
        Ok(StepGraph { graph })
    }

    /// Enqueues one replay of the captured launches on the capture's stream.
    pub fn replay(&self) -> Result<(), GpuError> {
        self.graph.launch().map_err(drv("cuGraphLaunch"))
    }
}
