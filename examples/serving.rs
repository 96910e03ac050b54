//! A serving walkthrough: a toy two-layer EVA attention stack serves a batch of sequences of
//! different lengths through prefill (extend from an empty cache, varlen), extend steps (a few
//! new tokens each, as chunked prefill or speculative verification would send), and decode
//! steps, with the cache a real engine keeps: per layer a ring of the last W keys/values and
//! one summary key/value per completed chunk. New tokens go into the ring with `append`;
//! when a chunk completes, its summary comes from `chunk_mean` and `chunk_summarize` (over the
//! ring slots for decode steps, over a staging copy of the chunk for extend steps, whose new
//! tokens must not enter the ring before the step), with the model's summary projections as
//! fixed random matrices.
//!
//! Every step of every layer is checked on the host: each new row against float64 prefill over
//! the whole sequence so far (the same keys, values and cached summaries), and each new summary
//! against its float64 reference. It ends with tokens/s and cache bytes per sequence against a
//! full KV cache.
//!
//! Run on a machine with a GPU (NVRTC and a Python with Triton compile the kernels on first use
//! into the cache, `FLASHEVA_CACHE_DIR` or the default):
//!
//! ```text
//! cargo run --release --example serving
//! ```

use std::sync::Arc;
use std::time::Instant;

use flasheva::cache::CacheStore;
use flasheva::gpu::params::{ElemType, TensorArg};
use flasheva::gpu::{CudaSlice, CudaStream, Gpu, device_address};
use flasheva::hostdata::HostTensor;
use flasheva::loader::{Kernel, Runtime, RuntimeOptions};
use flasheva::ops::{OpArgs, Problem};
use flasheva::reference::{self, AttnShape};
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::workload::Workload;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

// The toy model and the batch.
const LAYERS: usize = 2;
const DM: usize = 128; // model width
const H: usize = 8;
const HKV: usize = 2;
const D: usize = 64;
const W: usize = 64;
const C: usize = 16;
const MAXNC: usize = 24; // summary slots: sequences up to 384 tokens
const PROMPTS: [usize; 3] = [37, 80, 5];
const EXTENDS: [[usize; 3]; 3] = [[4, 1, 7], [16, 3, 0], [2, 9, 12]];
const DECODES: usize = 40;
const DT: DType = DType::Bf16;

/// A device buffer of `elem` values with its shape.
struct Dev {
    buf: CudaSlice<u8>,
    elem: ElemType,
    shape: Vec<usize>,
}

impl Dev {
    fn zeros(stream: &Arc<CudaStream>, elem: ElemType, shape: &[usize]) -> Res<Dev> {
        let n: usize = shape.iter().product::<usize>() * elem.size();
        Ok(Dev {
            buf: stream.alloc_zeros::<u8>(n.max(16))?,
            elem,
            shape: shape.to_vec(),
        })
    }

    fn upload(stream: &Arc<CudaStream>, t: &HostTensor) -> Res<Dev> {
        let mut d = Dev::zeros(stream, t.elem, &t.shape)?;
        d.write(stream, 0, &t.data)?;
        Ok(d)
    }

    fn arg(&self, name: &str, stream: &Arc<CudaStream>) -> TensorArg {
        TensorArg::contiguous(
            name,
            device_address(&self.buf, stream),
            self.elem,
            &self.shape,
        )
    }

    /// A view of `shape` starting `offset` elements in, with the buffer's row-major strides of
    /// the trailing dimensions (batch-like leading dimension strided as given).
    fn view(
        &self,
        name: &str,
        stream: &Arc<CudaStream>,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> TensorArg {
        TensorArg::contiguous(
            name,
            device_address(&self.buf, stream) + (offset * self.elem.size()) as u64,
            self.elem,
            shape,
        )
        .with_strides(strides)
    }

    fn write(&mut self, stream: &Arc<CudaStream>, offset: usize, bytes: &[u8]) -> Res<()> {
        let at = offset * self.elem.size();
        let mut dst = self.buf.slice_mut(at..at + bytes.len());
        stream.memcpy_htod(bytes, &mut dst)?;
        Ok(())
    }

    fn read(&self, stream: &Arc<CudaStream>) -> Res<Vec<f64>> {
        let bytes = stream.clone_dtoh(&self.buf)?;
        let n: usize = self.shape.iter().product::<usize>() * self.elem.size();
        let t = HostTensor {
            elem: self.elem,
            shape: self.shape.clone(),
            data: bytes[..n].to_vec(),
        };
        Ok(t.to_f64())
    }
}

/// Deterministic values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize, scale: f64) -> Vec<f64> {
        (0..rows * cols).map(|_| scale * self.next()).collect()
    }
}

/// `x [n, a] · m [a, b]`.
fn matmul(x: &[f64], m: &[f64], a: usize, b: usize) -> Vec<f64> {
    let n = x.len() / a;
    let mut out = vec![0.0; n * b];
    for i in 0..n {
        for k in 0..a {
            let xv = x[i * a + k];
            for j in 0..b {
                out[i * b + j] += xv * m[k * b + j];
            }
        }
    }
    out
}

/// The values as stored (rounded to the storage type).
fn rounded(v: &[f64]) -> Vec<f64> {
    HostTensor::from_f64(ElemType::of(DT), &[v.len()], v).to_f64()
}

fn bytes_of(v: &[f64]) -> Vec<u8> {
    HostTensor::from_f64(ElemType::of(DT), &[v.len()], v).data
}

/// One layer's weights.
struct Layer {
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    wo: Vec<f64>,
    /// Summary projections (per head dim): ks = mean(k)·pk, omega = mean(k)·pw.
    pk: Vec<f64>,
    pw: Vec<f64>,
}

/// One layer's cache on the device and the history the host keeps to check it.
struct LayerCache {
    k_ring: Dev,
    v_ring: Dev,
    ks: Dev,
    vs: Dev,
    /// Per sequence, every token's stored key and value `[len, HKV, D]`.
    k_hist: Vec<Vec<f64>>,
    v_hist: Vec<Vec<f64>>,
}

/// The kernels.
struct Kernels {
    extend: Arc<Kernel>,
    append: Arc<Kernel>,
    decode: Arc<Kernel>,
    mean: Arc<Kernel>,
    summarize: Arc<Kernel>,
}

/// What the checks found.
#[derive(Default)]
struct Tally {
    rows: usize,
    summaries: usize,
    worst_row: f64,
    worst_summary: f64,
    failed: usize,
}

struct Server {
    stream: Arc<CudaStream>,
    k: Kernels,
    layers: Vec<Layer>,
    caches: Vec<LayerCache>,
    lens: Vec<usize>,
    tally: Tally,
    gpu_steps: std::time::Duration,
}

fn spec(op: Op) -> Res<KernelSpec> {
    Ok(KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(D as u32),
            window: Some(W as u32),
            chunk: Some(C as u32),
            local: Some(LocalMode::Sliding),
            dtype: Some(DT),
            group: Some((H / HKV) as u32),
        },
    )?)
}

impl Server {
    /// Summaries of every chunk of sequence `b` that the tokens `from..to` complete, from
    /// `stage_k`/`stage_v` (per chunk: a view of C consecutive tokens `[1, C, HKV, D]`).
    fn summarize(
        &mut self,
        layer: usize,
        b: usize,
        chunks: &[(usize, TensorArg, TensorArg)],
    ) -> Res<()> {
        let s = &self.stream;
        for (c, kv, vv) in chunks {
            let c = *c;
            let mut mean = Dev::zeros(s, ElemType::of(DT), &[1, 1, HKV, D])?;
            self.k.mean.launch(
                s,
                &OpArgs {
                    tensors: vec![kv.clone().renamed("x"), mean.arg("xbar", s)],
                    scale: None,
                    splits: 1,
                    workspace: None,
                    deterministic: false,
                },
            )?;
            let kbar = mean.read(s)?;
            // the model's projections, per kv head
            let (lw, cache) = (&self.layers[layer], &mut self.caches[layer]);
            let mut ks = Vec::new();
            let mut om = Vec::new();
            for h in 0..HKV {
                ks.extend(matmul(&kbar[h * D..][..D], &lw.pk, D, D));
                om.extend(matmul(&kbar[h * D..][..D], &lw.pw, D, D));
            }
            let row = (b * MAXNC + c) * HKV * D;
            cache.ks.write(s, row, &bytes_of(&ks))?;
            mean.write(s, 0, &bytes_of(&om))?; // omega, [1, 1, HKV, D]
            let vs_row = cache.vs.view(
                "vs",
                s,
                row,
                &[1, 1, HKV, D],
                &[MAXNC * HKV * D, HKV * D, D, 1],
            );
            self.k.summarize.launch(
                s,
                &OpArgs {
                    tensors: vec![
                        kv.clone().renamed("k"),
                        vv.clone().renamed("v"),
                        mean.arg("omega", s),
                        vs_row,
                    ],
                    scale: None,
                    splits: 1,
                    workspace: None,
                    deterministic: false,
                },
            )?;
            // check against float64 from the host's history of this chunk
            let (kh, vh) = (&cache.k_hist[b], &cache.v_hist[b]);
            let kc = &kh[c * C * HKV * D..][..C * HKV * D];
            let vc = &vh[c * C * HKV * D..][..C * HKV * D];
            let mut kbar_ref = vec![0.0; HKV * D];
            for t in 0..C {
                for i in 0..HKV * D {
                    kbar_ref[i] += kc[t * HKV * D + i] / C as f64;
                }
            }
            let vs_ref = reference::chunk_summarize(
                kc,
                vc,
                &rounded(&om),
                1,
                C,
                HKV,
                D,
                C,
                1,
                1.0 / (D as f64).sqrt(),
            );
            let vs_got = cache.vs.read(s)?;
            let e1 = reference::rel_error(&kbar, &kbar_ref);
            let e2 = reference::rel_error(&vs_got[row..][..HKV * D], &vs_ref);
            let tol = flasheva::verify::tolerance(DT).rel;
            self.tally.summaries += 1;
            self.tally.worst_summary = self.tally.worst_summary.max(e1.max(e2) / tol);
            if e1 > tol || e2 > tol {
                self.tally.failed += 1;
                eprintln!(
                    "FAIL summary layer {layer} seq {b} chunk {c}: mean {e1:.2e}, vs {e2:.2e}"
                );
            }
        }
        Ok(())
    }

    /// One step of one layer: `x [B, Tmax, DM]` for `count[b]` new tokens per sequence after
    /// `self.lens[b]`; returns the layer's output rows (the residual stream after attention).
    fn layer_step(
        &mut self,
        layer: usize,
        x: &[f64],
        count: &[usize],
        tmax: usize,
    ) -> Res<Vec<f64>> {
        let s = self.stream.clone();
        let b_n = count.len();
        let lw = &self.layers[layer];
        let q = rounded(&matmul(x, &lw.wq, DM, H * D));
        let kn = rounded(&matmul(x, &lw.wk, DM, HKV * D));
        let vn = rounded(&matmul(x, &lw.wv, DM, HKV * D));
        // the host's history gets the new tokens (what the device will hold)
        for b in 0..b_n {
            let cache = &mut self.caches[layer];
            for t in 0..count[b] {
                cache.k_hist[b].extend_from_slice(&kn[(b * tmax + t) * HKV * D..][..HKV * D]);
                cache.v_hist[b].extend_from_slice(&vn[(b * tmax + t) * HKV * D..][..HKV * D]);
            }
        }
        let t0 = Instant::now();
        let elem = ElemType::of(DT);
        let decode = count.iter().all(|&t| t == 1);
        let qd = Dev::upload(&s, &HostTensor::from_f64(elem, &[b_n, tmax, H, D], &q))?;
        let kd = Dev::upload(&s, &HostTensor::from_f64(elem, &[b_n, tmax, HKV, D], &kn))?;
        let vd = Dev::upload(&s, &HostTensor::from_f64(elem, &[b_n, tmax, HKV, D], &vn))?;
        let start: Vec<i32> = self.lens.iter().map(|&l| l as i32).collect();
        let cnt: Vec<i32> = count.iter().map(|&t| t as i32).collect();
        let start_d = Dev::upload(&s, &HostTensor::from_i32(&[b_n], &start))?;
        let count_d = Dev::upload(&s, &HostTensor::from_i32(&[b_n], &cnt))?;
        let o = Dev::zeros(&s, elem, &[b_n, tmax, H, D])?;
        let cache = &self.caches[layer];
        let ring_args = |name: &str, d: &Dev| d.arg(name, &s);
        let append = |k: &Kernels, cache: &LayerCache| -> Res<()> {
            k.append.launch(
                &s,
                &OpArgs {
                    tensors: vec![
                        kd.arg("k", &s),
                        vd.arg("v", &s),
                        ring_args("k_ring", &cache.k_ring),
                        ring_args("v_ring", &cache.v_ring),
                        start_d.arg("start", &s),
                        count_d.arg("count", &s),
                        ring_args("k_ring", &cache.k_ring),
                        ring_args("v_ring", &cache.v_ring),
                    ],
                    scale: None,
                    splits: 1,
                    workspace: None,
                    deterministic: false,
                },
            )?;
            Ok(())
        };
        if decode {
            // decode: the new token's k, v go into the ring first, then one query per sequence
            append(&self.k, cache)?;
            let lens: Vec<i32> = self.lens.iter().map(|&l| l as i32 + 1).collect();
            let len_d = Dev::upload(&s, &HostTensor::from_i32(&[b_n], &lens))?;
            let lse = Dev::zeros(&s, ElemType::F32, &[b_n, H])?;
            let mut p = Problem::new(Workload::new(self.k.decode.spec, b_n, MAXNC * C, H, HKV));
            p.summary_rows = MAXNC;
            let splits = self.k.decode.splits_for(&p);
            let ws_elems = self.k.decode.workspace_elems(&p);
            let ws = Dev::zeros(&s, ElemType::F32, &[ws_elems.max(1)])?;
            self.k.decode.launch(
                &s,
                &OpArgs {
                    tensors: vec![
                        qd.view("q", &s, 0, &[b_n, H, D], &[tmax * H * D, D, 1]),
                        ring_args("k_ring", &cache.k_ring),
                        ring_args("v_ring", &cache.v_ring),
                        cache.ks.arg("ks", &s),
                        cache.vs.arg("vs", &s),
                        len_d.arg("len", &s),
                        o.view("o", &s, 0, &[b_n, H, D], &[tmax * H * D, D, 1]),
                        lse.arg("lse", &s),
                    ],
                    scale: None,
                    splits,
                    workspace: (ws_elems > 0).then(|| (device_address(&ws.buf, &s), ws_elems)),
                    deterministic: false,
                },
            )?;
            // chunks completed by the new token: their tokens are all in the ring now
            for b in 0..b_n {
                let p = self.lens[b];
                if (p + 1).is_multiple_of(C) {
                    let c = p / C;
                    let slot = (c * C) % W;
                    let off = (b * W + slot) * HKV * D;
                    let st = [W * HKV * D, HKV * D, D, 1];
                    let ring = &self.caches[layer];
                    let kv = ring.k_ring.view("x", &s, off, &[1, C, HKV, D], &st);
                    let vv = ring.v_ring.view("v", &s, off, &[1, C, HKV, D], &st);
                    self.summarize(layer, b, &[(c, kv, vv)])?;
                }
            }
        } else {
            // extend: summaries of the chunks the new tokens complete first (from a staging
            // copy of each chunk: the ring must not see the new tokens before the step), then
            // attention, then append
            let mut staged = Vec::new();
            let mut chunks = Vec::new();
            for (b, (&l0, &t)) in self.lens.iter().zip(count).enumerate() {
                for c in l0 / C..(l0 + t) / C {
                    let cache = &self.caches[layer];
                    let kc = &cache.k_hist[b][c * C * HKV * D..][..C * HKV * D];
                    let vc = &cache.v_hist[b][c * C * HKV * D..][..C * HKV * D];
                    let ks = Dev::upload(&s, &HostTensor::from_f64(elem, &[1, C, HKV, D], kc))?;
                    let vs = Dev::upload(&s, &HostTensor::from_f64(elem, &[1, C, HKV, D], vc))?;
                    chunks.push((b, c, ks.arg("x", &s), vs.arg("v", &s)));
                    staged.push((ks, vs));
                }
            }
            for (b, c, kv, vv) in chunks {
                self.summarize(layer, b, &[(c, kv, vv)])?;
            }
            let cache = &self.caches[layer];
            let lse = Dev::zeros(&s, ElemType::F32, &[b_n, H, tmax])?;
            // the Hopper kernel gathers the ring, the new tokens and the summaries into a
            // workspace first (the Triton kernel needs none)
            let mut p = Problem::new(Workload::new(self.k.extend.spec, b_n, tmax, H, HKV));
            p.summary_rows = MAXNC;
            let ws_elems = self.k.extend.workspace_elems(&p);
            let ws = Dev::zeros(&s, ElemType::F32, &[ws_elems.max(1)])?;
            self.k.extend.launch(
                &s,
                &OpArgs {
                    tensors: vec![
                        qd.arg("q", &s),
                        kd.arg("k", &s),
                        vd.arg("v", &s),
                        ring_args("k_ring", &cache.k_ring),
                        ring_args("v_ring", &cache.v_ring),
                        cache.ks.arg("ks", &s),
                        cache.vs.arg("vs", &s),
                        start_d.arg("start", &s),
                        count_d.arg("count", &s),
                        o.arg("o", &s),
                        lse.arg("lse", &s),
                    ],
                    scale: None,
                    splits: 1,
                    workspace: (ws_elems > 0).then(|| (device_address(&ws.buf, &s), ws_elems)),
                    deterministic: false,
                },
            )?;
            append(&self.k, cache)?;
        }
        let out = o.read(&s)?;
        self.gpu_steps += t0.elapsed();
        // check every new row against float64 prefill over the whole sequence so far
        let ks_all = self.caches[layer].ks.read(&s)?;
        let vs_all = self.caches[layer].vs.read(&s)?;
        let cache = &self.caches[layer];
        let tol = flasheva::verify::tolerance(DT).rel;
        for b in 0..b_n {
            let (l0, t) = (self.lens[b], count[b]);
            if t == 0 {
                continue;
            }
            let n = l0 + t;
            let mut qf = vec![0.0; n * H * D];
            qf[l0 * H * D..].copy_from_slice(&q[b * tmax * H * D..][..t * H * D]);
            let sh = AttnShape {
                b: 1,
                n,
                h: H,
                hkv: HKV,
                d: D,
                window: W,
                chunk: C,
                local: LocalMode::Sliding,
            };
            let rows = MAXNC * HKV * D;
            let (want, _) = reference::prefill(
                &sh,
                MAXNC,
                &qf,
                &cache.k_hist[b],
                &cache.v_hist[b],
                &ks_all[b * rows..][..rows],
                &vs_all[b * rows..][..rows],
                1.0 / (D as f64).sqrt(),
            );
            let got = &out[b * tmax * H * D..][..t * H * D];
            let e = reference::rel_error(got, &want[l0 * H * D..]);
            self.tally.rows += t;
            self.tally.worst_row = self.tally.worst_row.max(e / tol);
            if e > tol {
                self.tally.failed += 1;
                eprintln!(
                    "FAIL layer {layer} seq {b} rows {l0}..{n}: rel err {e:.2e} (tol {tol:.0e})"
                );
            }
        }
        // the residual stream: x + o·Wo
        let proj = matmul(&out, &self.layers[layer].wo, H * D, DM);
        Ok(x.iter().zip(&proj).map(|(a, b)| a + b).collect())
    }

    /// Runs every layer on new tokens `x [B, Tmax, DM]` and advances the lengths.
    fn step(&mut self, x: Vec<f64>, count: &[usize], tmax: usize) -> Res<Vec<f64>> {
        let mut h = x;
        for layer in 0..LAYERS {
            h = self.layer_step(layer, &h, count, tmax)?;
        }
        for (l, t) in self.lens.iter_mut().zip(count) {
            *l += t;
        }
        Ok(h)
    }
}

trait Renamed {
    fn renamed(self, name: &str) -> Self;
}

impl Renamed for TensorArg {
    fn renamed(mut self, name: &str) -> TensorArg {
        self.name = name.to_string();
        self
    }
}

fn main() -> Res<()> {
    if let Err(e) = flasheva::gpu::probe() {
        eprintln!("this walkthrough needs a CUDA GPU: {e}");
        std::process::exit(1);
    }
    let gpu = Gpu::open(0)?;
    let stream = gpu.context().new_stream()?;
    let dir = flasheva::config::cache_dir()
        .or_else(flasheva::config::default_cache_dir)
        .ok_or("no cache folder: set FLASHEVA_CACHE_DIR")?;
    let rt = Runtime::with_gpu(
        gpu,
        CacheStore::open(&dir)?,
        RuntimeOptions::default().compile_on_miss(true),
    );
    let k = Kernels {
        extend: rt.kernel(&spec(Op::Extend)?)?,
        append: rt.kernel(&spec(Op::Append)?)?,
        decode: rt.kernel(&spec(Op::Decode)?)?,
        mean: rt.kernel(&spec(Op::ChunkMean)?)?,
        summarize: rt.kernel(&spec(Op::ChunkSummarize)?)?,
    };
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let b_n = PROMPTS.len();
    let elem = ElemType::of(DT);
    let mut layers = Vec::new();
    let mut caches = Vec::new();
    for _ in 0..LAYERS {
        let inv = 1.0 / (DM as f64).sqrt();
        layers.push(Layer {
            wq: rng.matrix(DM, H * D, 2.0 * inv),
            wk: rng.matrix(DM, HKV * D, 2.0 * inv),
            wv: rng.matrix(DM, HKV * D, inv),
            wo: rng.matrix(H * D, DM, 0.5 / (H * D) as f64),
            pk: rng.matrix(D, D, 1.0 / (D as f64).sqrt()),
            pw: rng.matrix(D, D, 1.0 / (D as f64).sqrt()),
        });
        caches.push(LayerCache {
            k_ring: Dev::zeros(&stream, elem, &[b_n, W, HKV, D])?,
            v_ring: Dev::zeros(&stream, elem, &[b_n, W, HKV, D])?,
            ks: Dev::zeros(&stream, elem, &[b_n, MAXNC, HKV, D])?,
            vs: Dev::zeros(&stream, elem, &[b_n, MAXNC, HKV, D])?,
            k_hist: vec![Vec::new(); b_n],
            v_hist: vec![Vec::new(); b_n],
        });
    }
    let mut srv = Server {
        stream,
        k,
        layers,
        caches,
        lens: vec![0; b_n],
        tally: Tally::default(),
        gpu_steps: Default::default(),
    };
    let mut tokens = 0usize;
    // prefill: extend from an empty cache, every prompt at once (varlen)
    let mut plan: Vec<Vec<usize>> = vec![PROMPTS.to_vec()];
    plan.extend(EXTENDS.iter().map(|e| e.to_vec()));
    plan.extend((0..DECODES).map(|_| vec![1; b_n]));
    for (i, count) in plan.iter().enumerate() {
        let tmax = *count.iter().max().expect("sequences");
        let x: Vec<f64> = (0..b_n * tmax * DM).map(|_| rng.next()).collect();
        srv.step(x, count, tmax)?;
        tokens += count.iter().sum::<usize>();
        let what = match i {
            0 => "prefill",
            i if i <= EXTENDS.len() => "extend",
            _ => "decode",
        };
        if i <= EXTENDS.len() + 1 || i == plan.len() - 1 {
            println!(
                "step {i:>2} {what:<7} new tokens {count:?} -> lengths {:?}",
                srv.lens
            );
        }
    }
    let t = &srv.tally;
    println!(
        "checked {} new rows (worst error/tolerance {:.2}) and {} summaries (worst {:.2}) over {LAYERS} layers: {} failed",
        t.rows, t.worst_row, t.summaries, t.worst_summary, t.failed
    );
    let secs = srv.gpu_steps.as_secs_f64();
    println!(
        "{tokens} tokens through {LAYERS} layers in {:.1} ms of serving steps ({:.0} tokens/s; a toy: uploads and host projections dominate)",
        secs * 1e3,
        tokens as f64 / secs
    );
    let per_tok = 2 * HKV * D * 2; // k and v, bf16
    for (b, &l) in srv.lens.iter().enumerate() {
        let eva = (W + l / C) * per_tok * LAYERS;
        let full = l * per_tok * LAYERS;
        println!(
            "sequence {b}: {l} tokens, cache {eva} bytes (ring + {} summaries per layer) vs full KV {full} bytes ({:.2}x)",
            l / C,
            full as f64 / eva as f64
        );
    }
    if t.failed > 0 {
        return Err(format!("{} checks failed", t.failed).into());
    }
    Ok(())
}
