//! Timing on the GPU: a [`Bencher`] holds several input sets of one problem (enough to exceed
//! the L2 cache, so rotation keeps the cache from flattering the numbers), made and launched
//! through the op table ([`crate::ops`]), times kernels with CUDA events (warm-up, then samples
//! of back-to-back launches, median of many), and returns a kernel's output for comparisons.
//! Used by `flasheva bench` and `flasheva tune`.

use std::sync::Arc;

use rand::RngExt;

use crate::error::Result;
use crate::gpu::driver::{CudaStream, EventTimer, Gpu, drv};
use crate::gpu::tensor::OpTensors;
use crate::gpu::tensor::{DeviceTensor, upload};
use crate::hostdata::{HostTensor, fresh_rng};
use crate::loader::Kernel;
use crate::ops::{self, Problem};

pub use crate::workload::Workload;

/// Timing of one kernel on one workload.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Timing {
    /// Median, ms.
    pub median_ms: f64,
    /// Fastest, ms.
    pub min_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Timed launches.
    pub iters: usize,
}

impl Timing {
    /// From samples in ms.
    pub fn from_samples(mut s: Vec<f64>) -> Timing {
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Timing {
            median_ms: median,
            min_ms: s.first().copied().unwrap_or(f64::NAN),
            max_ms: s.last().copied().unwrap_or(f64::NAN),
            iters: n,
        }
    }
}

/// Rotating input sets and shared outputs of one workload on one stream.
pub struct Bencher {
    stream: Arc<CudaStream>,
    /// The call being timed.
    pub problem: Problem,
    /// The device tensors in use; `inputs` is swapped with a slot of `sets` to rotate.
    tensors: OpTensors,
    sets: Vec<Vec<DeviceTensor>>,
    current: usize,
    timer: Arc<EventTimer>,
}

/// Launches per timed sample.
pub const REPS: usize = 4;

/// Launches captured in the CUDA graph that [`Bencher::time_as`] replays (as many as
/// `scripts/peers.py`'s `graph_ms` captures for the peers).
pub const GRAPH_REPS: usize = 40;

/// Launches behind one timed sample of [`Bencher::time_as`]: [`GRAPH_REPS`] in a graph, else
/// [`REPS`].
pub fn launches_per_sample(graph: bool) -> usize {
    if graph { GRAPH_REPS } else { REPS }
}

fn random_like(src: &HostTensor, rng: &mut impl rand::Rng, shape: &[usize]) -> HostTensor {
    // Fresh values are costly for 100M-element tensors: reuse one random pool, offset randomly.
    let n: usize = shape.iter().product();
    let es = src.elem.size();
    let len = src.len();
    let off = if len > n {
        rng.random_range(0..len - n)
    } else {
        0
    };
    let mut data = Vec::with_capacity(n * es);
    let mut i = 0;
    while i < n {
        let start = (off + i) % len.max(1);
        let take = (n - i).min(len - start);
        data.extend_from_slice(&src.data[start * es..(start + take) * es]);
        i += take;
    }
    HostTensor {
        elem: src.elem,
        shape: shape.to_vec(),
        data,
    }
}

impl Bencher {
    /// Allocates enough input sets of `problem` to cover three times the device's L2 (at least
    /// two), the outputs, and the workspace `kernel` needs.
    pub fn new(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        problem: Problem,
        kernel: &Kernel,
    ) -> Result<Bencher> {
        let w = &problem.workload;
        let def = ops::of(w.spec.op());
        let per_set = w.bytes().max(1.0);
        let want = (3.0 * gpu.info().l2_bytes as f64 / per_set).ceil() as usize;
        let nsets = want.clamp(2, 16);
        let (mut rng, _) = fresh_rng();
        let dt = w.spec.dtype();
        let largest = def
            .inputs(&problem)
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .max()
            .unwrap_or(1);
        let pool = HostTensor::uniform(&mut rng, dt, &[(1usize << 22).min(largest.max(64))], 1.0);
        let make = |rng: &mut rand::rngs::StdRng| {
            let mut draw = |shape: &[usize], amp: f64| {
                let mut t = random_like(&pool, rng, shape);
                if amp != 1.0 {
                    t.scale(amp);
                }
                t
            };
            def.timing_inputs(&problem, &mut draw)
        };
        let first = make(&mut rng);
        let splits = kernel.splits_for(&problem);
        let tensors = OpTensors::new(
            stream,
            def,
            &problem,
            def.workspace(&problem, &kernel.tile, splits),
            &first,
            0,
        )?;
        let mut sets = vec![Vec::new()];
        for _ in 1..nsets {
            let ins = make(&mut rng);
            let mut set = Vec::new();
            for (d, t) in def.inputs(&problem).iter().zip(&ins) {
                set.push(upload(stream, d.name, t, 0, 0.0)?);
            }
            sets.push(set);
        }
        Ok(Bencher {
            stream: stream.clone(),
            problem,
            tensors,
            sets,
            current: 0,
            timer: Arc::new(EventTimer::new(gpu)?),
        })
    }

    /// Input sets in rotation.
    pub fn sets(&self) -> usize {
        self.sets.len()
    }

    /// The workload.
    pub fn workload(&self) -> Workload {
        self.problem.workload
    }

    /// Makes input set `set` (mod the number of sets) the one the next launch reads. The set in
    /// use lives in `tensors.inputs`; its slot in `sets` holds an empty placeholder.
    fn select(&mut self, set: usize) {
        let want = set % self.sets.len();
        if want != self.current {
            std::mem::swap(&mut self.tensors.inputs, &mut self.sets[self.current]);
            std::mem::swap(&mut self.tensors.inputs, &mut self.sets[want]);
            self.current = want;
        }
    }

    /// Launches `kernel` once on input set `set`.
    pub fn launch(&mut self, kernel: &Kernel, set: usize) -> Result<()> {
        self.select(set);
        // Each kernel (tile) may split differently, and need a larger workspace.
        let splits = kernel.splits_for(&self.problem);
        let def = ops::of(self.problem.spec().op());
        self.tensors.ensure_workspace(
            &self.stream,
            def.workspace(&self.problem, &kernel.tile, splits),
        )?;
        kernel.launch(&self.stream, &self.tensors.op_args(&self.problem, splits))
    }

    /// `warmup` untimed launches, then `samples` samples of [`REPS`] back-to-back launches between
    /// one event pair each (after one untimed launch, so that the GPU is busy while the host
    /// enqueues and no host delay is timed), rotating input sets; the sample time is per launch.
    pub fn time(&mut self, kernel: &Kernel, warmup: usize, samples: usize) -> Result<Timing> {
        self.time_as(kernel, warmup, samples, false)
    }

    /// [`Bencher::time`], or with `graph` as a serving loop runs a step: after the warm-up
    /// (which sizes the workspace and makes the stream's counters, so nothing is allocated
    /// under capture) [`GRAPH_REPS`] launches over the rotating input sets are captured in one
    /// CUDA graph, replayed once untimed, then `samples` times between one event pair each. No
    /// launch gaps are timed: the peers' way (`graph_ms` in scripts/peers.py), so a kernel of
    /// tens of microseconds compares with them like for like.
    pub fn time_as(
        &mut self,
        kernel: &Kernel,
        warmup: usize,
        samples: usize,
        graph: bool,
    ) -> Result<Timing> {
        // (in a graph at least one: it sizes the workspace and makes the counters before capture)
        let warmup = if graph { warmup.max(1) } else { warmup };
        for i in 0..warmup {
            self.launch(kernel, i)?;
        }
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize (a kernel failed)"))?;
        let (timer, stream) = (Arc::clone(&self.timer), Arc::clone(&self.stream));
        let mut set = warmup;
        timed(&timer, &stream, samples, graph, || {
            self.launch(kernel, set)?;
            set += 1;
            Ok(())
        })
    }

    /// Runs `kernel` on input set 0 and returns its main output (o, xbar or vs) as float64, the
    /// outputs poisoned with NaN first.
    pub fn output(&mut self, kernel: &Kernel) -> Result<Vec<f64>> {
        self.tensors.poison_outputs(&self.stream)?;
        self.launch(kernel, 0)?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize (a kernel failed)"))?;
        Ok(self.tensors.outputs[0].download(&self.stream)?.to_f64())
    }
}

/// `samples` samples of the time per launch: each one untimed `launch` (the GPU stays busy while
/// the host enqueues the next ones, so no host delay is timed: a short kernel takes about as long
/// as a launch's host work), then [`REPS`] back-to-back launches between `timer`'s events.
fn per_launch(
    timer: &EventTimer,
    stream: &CudaStream,
    samples: usize,
    mut launch: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        launch()?;
        timer.start(stream)?;
        for _ in 0..REPS {
            launch()?;
        }
        out.push(timer.stop_ms(stream)? as f64 / REPS as f64);
    }
    Ok(Timing::from_samples(out))
}

/// `samples` per-launch times of `launch`: back-to-back launches ([`per_launch`]), or with
/// `graph` [`GRAPH_REPS`] launches captured in one CUDA graph and replayed (after one untimed
/// replay) between one event pair per sample.
fn timed(
    timer: &EventTimer,
    stream: &Arc<CudaStream>,
    samples: usize,
    graph: bool,
    mut launch: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    if !graph {
        return per_launch(timer, stream, samples, launch);
    }
    let g = crate::gpu::graph::StepGraph::capture(stream, |_| -> Result<()> {
        for _ in 0..GRAPH_REPS {
            launch()?;
        }
        Ok(())
    })?;
    g.replay()?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        timer.start(stream)?;
        g.replay()?;
        out.push(timer.stop_ms(stream)? as f64 / GRAPH_REPS as f64);
    }
    Ok(Timing::from_samples(out))
}

/// Device-to-device copy bandwidth, bytes read plus written per second (median of `iters`).
pub fn copy_bandwidth(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    bytes: usize,
    iters: usize,
) -> Result<f64> {
    let n = bytes / 4;
    let src = stream.alloc_zeros::<u32>(n).map_err(drv("cuMemAlloc"))?;
    let mut dst = stream.alloc_zeros::<u32>(n).map_err(drv("cuMemAlloc"))?;
    let timer = EventTimer::new(gpu)?;
    for _ in 0..3 {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(drv("cuMemcpyDtoD"))?;
    }
    let mut s = Vec::new();
    for _ in 0..iters {
        timer.start(stream)?;
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(drv("cuMemcpyDtoD"))?;
        s.push(timer.stop_ms(stream)? as f64);
    }
    let t = Timing::from_samples(s);
    Ok(2.0 * (n * 4) as f64 / (t.median_ms * 1e-3))
}

/// The read-rate probe's source (templates/read_rate.cu, plain CUDA, no template fields).
const READ_RATE_SOURCE: &str = include_str!("../templates/read_rate.cu");

#[repr(C)]
#[derive(Clone, Copy)]
struct ReadParams {
    src: u64,
    vectors: u64,
    sink: u64,
}

/// The device's read rate, bytes per second (median of `iters`): a read-only streaming kernel
/// (compiled here with NVRTC) over `sets` buffers of `bytes` each, one buffer a launch in turn,
/// 8 CTAs of 256 threads per multiprocessor, four 16-byte loads in flight per thread. One set far
/// larger than L2 gives the device's rate; the sets and bytes of a benchmark's rotating inputs give
/// what a read of the same size reaches (its start and tail included, as a short kernel's are).
/// `graph`: timed as [`Bencher::time_as`] times a kernel in a CUDA graph (no launch gaps).
pub fn read_bandwidth(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    bytes: usize,
    sets: usize,
    iters: usize,
    graph: bool,
) -> Result<f64> {
    use crate::compile::{CompileJob, Compiler, nvrtc::Nvrtc, options_for};
    let info = gpu.info();
    let arch = crate::Arch::preferred_for(info.capability.0, info.capability.1);
    let nvrtc = Nvrtc::load()?;
    let built = nvrtc.compile(&CompileJob {
        program_name: "flasheva_read_rate.cu",
        source: READ_RATE_SOURCE,
        arch,
        options: &options_for(arch),
    })?;
    let module = gpu.load_module(&built.cubin, false)?;
    let f = module.function("flasheva_read_rate")?;
    let vectors = bytes.div_ceil(16).max(1);
    let sets = sets.max(1);
    let src = stream
        .alloc_zeros::<u8>(sets * vectors * 16)
        .map_err(drv("cuMemAlloc"))?;
    let sink = stream.alloc_zeros::<u32>(1).map_err(drv("cuMemAlloc"))?;
    let base = crate::gpu::device_address(&src, stream);
    let sink = crate::gpu::device_address(&sink, stream);
    let grid = (8 * info.sm_count, 1, 1);
    let timer = EventTimer::new(gpu)?;
    let mut k = 0usize;
    let mut launch = || -> Result<()> {
        let params = ReadParams {
            src: base + ((k % sets) * vectors * 16) as u64,
            vectors: vectors as u64,
            sink,
        };
        k += 1;
        // SAFETY: the kernel's parameter struct; both buffers live until the timer's sync.
        unsafe { f.launch(stream, grid, (256, 1, 1), 0, &params) }?;
        Ok(())
    };
    for _ in 0..3 {
        launch()?;
    }
    // timed as `Bencher::time_as` times a kernel
    stream
        .synchronize()
        .map_err(drv("cuStreamSynchronize (the read-rate probe failed)"))?;
    let t = timed(&timer, stream, iters, graph, launch)?;
    Ok((vectors * 16) as f64 / (t.median_ms * 1e-3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(t.median_ms, 2.5);
        assert_eq!(t.min_ms, 1.0);
        assert_eq!(t.max_ms, 10.0);
        assert_eq!(Timing::from_samples(vec![3.0, 1.0, 2.0]).median_ms, 2.0);
    }
}
