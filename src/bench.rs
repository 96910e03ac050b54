//! Timing on the GPU: a [`Bencher`] holds several input sets of one workload (enough to exceed
//! the L2 cache, so rotation keeps the cache from flattering the numbers), times kernels with
//! CUDA events (warm-up, then one event pair per launch, median of many), and returns a
//! kernel's output for comparisons. Used by `flasheva bench` and `flasheva tune`.

use std::sync::Arc;

use rand::RngExt;

use crate::error::Result;
use crate::gpu::device_address;
use crate::gpu::driver::{CudaSlice, CudaStream, EventTimer, Gpu, drv};
use crate::gpu::params::{
    ChunkMeanArgs, ChunkSummarizeArgs, DecodeArgs, ElemType, PrefillArgs, TensorArg,
    decode_workspace_elems,
};
use crate::hostdata::{HostTensor, fresh_rng, to_bits};
use crate::loader::Kernel;
use crate::reference::{count_prefill_pairs, key_range, summaries_visible};
use crate::spec::{KernelSpec, LocalMode, Op};
use crate::verify::{DeviceTensor, alloc_f32, alloc_output, upload};

/// Sizes of one benchmark. Prefill and chunk ops: `n` tokens. Decode: every sequence has
/// `n` tokens (query position `n - 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// The spec.
    pub spec: KernelSpec,
    /// Batch.
    pub b: usize,
    /// Tokens (decode: len = position + 1).
    pub n: usize,
    /// Query heads (chunk ops: the heads G of X, or Hkv).
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
}

impl Workload {
    /// Short text, e.g. `B=1 N=16384 H=16 Hkv=16`.
    pub fn describe(&self) -> String {
        match self.spec.op() {
            Op::Decode => format!(
                "B={} H={} Hkv={} pos={}",
                self.b,
                self.h,
                self.hkv,
                self.n.saturating_sub(1)
            ),
            _ => format!("B={} N={} H={} Hkv={}", self.b, self.n, self.h, self.hkv),
        }
    }

    fn local(&self) -> LocalMode {
        self.spec.local().unwrap_or(LocalMode::Block)
    }

    /// Summary rows present in the decode cache.
    pub fn max_nc(&self) -> usize {
        (self.n / self.spec.chunk() as usize).max(1)
    }

    /// Useful floating-point work: 4·D per visible (query, key-or-summary) pair for attention,
    /// one add per element for chunk_mean, 4·D per token for chunk_summarize.
    pub fn flops(&self) -> f64 {
        let d = self.spec.head_dim() as f64;
        let w = self.spec.window_or_zero() as usize;
        let c = self.spec.chunk() as usize;
        match self.spec.op() {
            Op::Prefill => {
                4.0 * d
                    * (self.b * self.h) as f64
                    * count_prefill_pairs(self.n, w, c, self.local()) as f64
            }
            Op::Decode => {
                let p = self.n - 1;
                let items =
                    key_range(p, w, self.local()).len() + summaries_visible(p, c, self.max_nc());
                4.0 * d * (self.b * self.h * items) as f64
            }
            Op::ChunkMean => (self.b * self.n * self.h) as f64 * d,
            Op::ChunkSummarize => 4.0 * d * (self.b * self.n * self.hkv) as f64,
        }
    }

    /// The fewest bytes the op must move through device memory (inputs read once, outputs written once).
    pub fn bytes(&self) -> f64 {
        let d = self.spec.head_dim() as usize;
        let c = self.spec.chunk() as usize;
        let w = self.spec.window_or_zero() as usize;
        let e = 2usize;
        let nc = self.n / c;
        let v = match self.spec.op() {
            Op::Prefill => {
                self.b * self.n * d * e * (2 * self.h + 2 * self.hkv)
                    + self.b * nc * self.hkv * d * e * 2
                    + self.b * self.h * self.n * 4
            }
            Op::Decode => {
                let p = self.n - 1;
                let items =
                    key_range(p, w, self.local()).len() + summaries_visible(p, c, self.max_nc());
                self.b * self.hkv * items * d * e * 2
                    + self.b * self.h * (2 * d * e + 4)
                    + self.b * 4
            }
            Op::ChunkMean => self.b * (self.n + nc) * self.h * d * e,
            Op::ChunkSummarize => self.b * (2 * self.n + 2 * nc) * self.hkv * d * e,
        };
        v as f64
    }

    /// What dense causal attention over the same tokens would compute (prefill only).
    pub fn dense_causal_flops(&self) -> f64 {
        let d = self.spec.head_dim() as f64;
        4.0 * d * (self.b * self.h) as f64 * (self.n as f64) * (self.n as f64 + 1.0) / 2.0
    }
}

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

enum Inputs {
    Prefill {
        q: DeviceTensor,
        k: DeviceTensor,
        v: DeviceTensor,
        ks: DeviceTensor,
        vs: DeviceTensor,
    },
    Decode {
        q: DeviceTensor,
        kr: DeviceTensor,
        vr: DeviceTensor,
        ks: DeviceTensor,
        vs: DeviceTensor,
        len: (CudaSlice<i32>, TensorArg),
    },
    ChunkMean {
        x: DeviceTensor,
    },
    ChunkSummarize {
        k: DeviceTensor,
        v: DeviceTensor,
        omega: DeviceTensor,
    },
}

/// Rotating input sets and outputs of one workload on one stream.
pub struct Bencher {
    stream: Arc<CudaStream>,
    /// The workload.
    pub workload: Workload,
    sets: Vec<Inputs>,
    out: DeviceTensor,
    lse: Option<(CudaSlice<f32>, TensorArg)>,
    ws: Option<CudaSlice<f32>>,
    ws_elems: usize,
    timer: EventTimer,
}

/// Launches per timed sample.
pub const REPS: usize = 4;

/// The most decode splits a bencher reserves workspace for.
pub const MAX_BENCH_SPLITS: usize = 64;

fn random_like(src: &HostTensor, rng: &mut impl rand::Rng, shape: &[usize]) -> HostTensor {
    // Fresh values are costly for 100M-element tensors: reuse one random pool, offset randomly.
    let n: usize = shape.iter().product();
    let off = if src.len() > n {
        rng.random_range(0..src.len() - n)
    } else {
        0
    };
    let bits = (0..n)
        .map(|i| src.bits[(off + i) % src.len().max(1)])
        .collect();
    HostTensor {
        dtype: src.dtype,
        shape: shape.to_vec(),
        bits,
    }
}

impl Bencher {
    /// Allocates enough input sets of `w` to cover three times the device's L2 (at least two).
    pub fn new(gpu: &Gpu, stream: &Arc<CudaStream>, w: Workload) -> Result<Bencher> {
        let spec = w.spec;
        let (d, dt) = (spec.head_dim() as usize, spec.dtype());
        let per_set = w.bytes().max(1.0);
        let want = (3.0 * gpu.info().l2_bytes as f64 / per_set).ceil() as usize;
        let nsets = want.clamp(2, 16);
        let (mut rng, _) = fresh_rng();
        let pool_len = (1usize << 22).min(
            match spec.op() {
                Op::Prefill => w.b * w.n * w.h.max(w.hkv) * d,
                Op::Decode => w.b * spec.window_or_zero() as usize * w.hkv * d,
                _ => w.b * w.n * w.h.max(w.hkv) * d,
            }
            .max(d),
        );
        let pool = HostTensor::uniform(&mut rng, dt, &[pool_len], 1.0);
        let junk = to_bits(0.0, dt);
        let nc = w.n / spec.chunk() as usize;
        let mut sets = Vec::new();
        for _ in 0..nsets {
            let mut up = |name: &str, shape: &[usize]| {
                upload(stream, name, &random_like(&pool, &mut rng, shape), 0, junk)
            };
            sets.push(match spec.op() {
                Op::Prefill => Inputs::Prefill {
                    q: up("q", &[w.b, w.n, w.h, d])?,
                    k: up("k", &[w.b, w.n, w.hkv, d])?,
                    v: up("v", &[w.b, w.n, w.hkv, d])?,
                    ks: up("ks", &[w.b, nc.max(1), w.hkv, d])?,
                    vs: up("vs", &[w.b, nc.max(1), w.hkv, d])?,
                },
                Op::Decode => {
                    let win = spec.window_or_zero() as usize;
                    let lens = vec![w.n as i32; w.b];
                    let buf = stream.clone_htod(&lens).map_err(drv("cuMemcpyHtoD"))?;
                    let arg = TensorArg::contiguous(
                        "len",
                        device_address(&buf, stream),
                        ElemType::I32,
                        &[w.b],
                    );
                    Inputs::Decode {
                        q: up("q", &[w.b, w.h, d])?,
                        kr: up("k_ring", &[w.b, win, w.hkv, d])?,
                        vr: up("v_ring", &[w.b, win, w.hkv, d])?,
                        ks: up("ks", &[w.b, w.max_nc(), w.hkv, d])?,
                        vs: up("vs", &[w.b, w.max_nc(), w.hkv, d])?,
                        len: (buf, arg),
                    }
                }
                Op::ChunkMean => Inputs::ChunkMean {
                    x: up("x", &[w.b, w.n, w.h, d])?,
                },
                Op::ChunkSummarize => Inputs::ChunkSummarize {
                    k: up("k", &[w.b, w.n, w.hkv, d])?,
                    v: up("v", &[w.b, w.n, w.hkv, d])?,
                    omega: up("omega", &[w.b, nc.max(1), w.hkv, d])?,
                },
            });
        }
        let (out, lse) = match spec.op() {
            Op::Prefill => (
                alloc_output(stream, "o", dt, &[w.b, w.n, w.h, d], 0)?,
                Some(alloc_f32(stream, "lse", &[w.b, w.h, w.n])?),
            ),
            Op::Decode => (
                alloc_output(stream, "o", dt, &[w.b, w.h, d], 0)?,
                Some(alloc_f32(stream, "lse", &[w.b, w.h])?),
            ),
            Op::ChunkMean => (
                alloc_output(stream, "xbar", dt, &[w.b, nc.max(1), w.h, d], 0)?,
                None,
            ),
            Op::ChunkSummarize => (
                alloc_output(stream, "vs", dt, &[w.b, nc.max(1), w.hkv, d], 0)?,
                None,
            ),
        };
        let ws_elems = if spec.op() == Op::Decode {
            decode_workspace_elems(w.b, w.h, d, MAX_BENCH_SPLITS)
        } else {
            0
        };
        let ws = if ws_elems > 0 {
            Some(
                stream
                    .alloc_zeros::<f32>(ws_elems)
                    .map_err(drv("cuMemAlloc"))?,
            )
        } else {
            None
        };
        Ok(Bencher {
            stream: stream.clone(),
            workload: w,
            sets,
            out,
            lse,
            ws,
            ws_elems,
            timer: EventTimer::new(gpu)?,
        })
    }

    /// Input sets in rotation.
    pub fn sets(&self) -> usize {
        self.sets.len()
    }

    /// The decode splits `kernel` uses on this workload.
    pub fn splits(&self, kernel: &Kernel) -> usize {
        let w = &self.workload;
        kernel
            .decode_splits(w.b, w.hkv, w.spec.window_or_zero() as usize + w.max_nc())
            .min(MAX_BENCH_SPLITS)
    }

    /// Launches `kernel` once on input set `set`.
    pub fn launch(&self, kernel: &Kernel, set: usize) -> Result<()> {
        let s = &self.stream;
        match &self.sets[set % self.sets.len()] {
            Inputs::Prefill { q, k, v, ks, vs } => kernel.prefill(
                s,
                &PrefillArgs {
                    q: q.arg.clone(),
                    k: k.arg.clone(),
                    v: v.arg.clone(),
                    ks: ks.arg.clone(),
                    vs: vs.arg.clone(),
                    o: self.out.arg.clone(),
                    lse: self.lse.as_ref().expect("prefill lse").1.clone(),
                    scale: None,
                },
            ),
            Inputs::Decode {
                q,
                kr,
                vr,
                ks,
                vs,
                len,
            } => {
                let ws = self
                    .ws
                    .as_ref()
                    .map(|b| (device_address(b, s), self.ws_elems));
                kernel.decode(
                    s,
                    &DecodeArgs {
                        q: q.arg.clone(),
                        k_ring: kr.arg.clone(),
                        v_ring: vr.arg.clone(),
                        ks: ks.arg.clone(),
                        vs: vs.arg.clone(),
                        len: len.1.clone(),
                        o: self.out.arg.clone(),
                        lse: self.lse.as_ref().expect("decode lse").1.clone(),
                        scale: None,
                    },
                    self.splits(kernel),
                    ws,
                )
            }
            Inputs::ChunkMean { x } => kernel.chunk_mean(
                s,
                &ChunkMeanArgs {
                    x: x.arg.clone(),
                    xbar: self.out.arg.clone(),
                },
            ),
            Inputs::ChunkSummarize { k, v, omega } => kernel.chunk_summarize(
                s,
                &ChunkSummarizeArgs {
                    k: k.arg.clone(),
                    v: v.arg.clone(),
                    omega: omega.arg.clone(),
                    vs: self.out.arg.clone(),
                    scale: None,
                },
            ),
        }
    }

    /// `warmup` untimed launches, then `samples` samples of [`REPS`] back-to-back launches between
    /// one event pair each (after one untimed launch, so that the GPU is busy while the host
    /// enqueues and no host delay is timed), rotating input sets; the sample time is per launch.
    pub fn time(&self, kernel: &Kernel, warmup: usize, samples: usize) -> Result<Timing> {
        for i in 0..warmup {
            self.launch(kernel, i)?;
        }
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize (a kernel failed)"))?;
        let mut out = Vec::with_capacity(samples);
        let mut set = warmup;
        for _ in 0..samples {
            self.launch(kernel, set)?;
            set += 1;
            self.timer.start(&self.stream)?;
            for _ in 0..REPS {
                self.launch(kernel, set)?;
                set += 1;
            }
            out.push(self.timer.stop_ms(&self.stream)? as f64 / REPS as f64);
        }
        Ok(Timing::from_samples(out))
    }

    /// Runs `kernel` on input set 0 and returns its main output (o, xbar or vs) as float64, the
    /// output poisoned with NaN first.
    pub fn output(&mut self, kernel: &Kernel) -> Result<Vec<f64>> {
        let dt = self.workload.spec.dtype();
        let n = self.out.buf.len();
        let poison = vec![crate::hostdata::poison_bits(dt); n];
        self.stream
            .memcpy_htod(&poison, &mut self.out.buf)
            .map_err(drv("cuMemcpyHtoD"))?;
        self.launch(kernel, 0)?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize (a kernel failed)"))?;
        self.out.download(&self.stream, dt)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DType, SpecParams};

    #[test]
    fn medians_and_work() {
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(t.median_ms, 2.5);
        assert_eq!(t.min_ms, 1.0);
        assert_eq!(t.max_ms, 10.0);
        let spec = KernelSpec::new(
            Op::Prefill,
            &SpecParams {
                head_dim: Some(128),
                window: Some(512),
                chunk: Some(64),
                dtype: Some(DType::Bf16),
                ..Default::default()
            },
        )
        .unwrap();
        let w = Workload {
            spec,
            b: 1,
            n: 16384,
            h: 16,
            hkv: 16,
        };
        // per query: (i mod 512) + 1 local keys and floor(i / 64) summaries
        let pairs: u64 = (0..16384u64).map(|i| (i % 512) + 1 + i / 64).sum();
        assert_eq!(w.flops(), 4.0 * 128.0 * 16.0 * pairs as f64);
        assert!(w.dense_causal_flops() > 10.0 * w.flops());
    }
}
