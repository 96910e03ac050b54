//! `flasheva run`: one op on the GPU, tensors read from and written to safetensors files.
//!
//! Inputs by op: prefill `q, k, v, ks, vs`; decode `q, k_ring, v_ring, ks, vs, len` (int32);
//! chunk_mean `x`; chunk_summarize `k, v, omega`. Outputs: prefill and decode `o, lse` (fp32);
//! chunk_mean `xbar`; chunk_summarize `vs`. Head dim, dtype, B, N, H and Hkv come from the tensors.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use flasheva::bench::Workload;
use flasheva::gpu::params::{
    ChunkMeanArgs, ChunkSummarizeArgs, DecodeArgs, ElemType, PrefillArgs, TensorArg,
};
use flasheva::gpu::{Gpu, device_address};
use flasheva::hostdata::HostTensor;
use flasheva::loader::{Runtime, RuntimeOptions};
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::verify::{DeviceTensor, alloc_f32, alloc_output, decode_workspace, upload};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::args::{parse_op, tile_for};
use super::{open_store, usage};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The op: chunk_mean, chunk_summarize, prefill or decode.
    #[arg(value_parser = parse_op)]
    pub op: Op,
    /// Input safetensors file.
    #[arg(long, value_name = "IN.safetensors")]
    pub input: PathBuf,
    /// Output safetensors file (written).
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Local window W (prefill, decode; other ops ignore it).
    #[arg(long, value_name = "W")]
    pub window: Option<u32>,
    /// Chunk size C.
    #[arg(long, value_name = "C")]
    pub chunk: Option<u32>,
    /// Local mode: block or sliding (default block; chunk ops ignore it).
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<LocalMode>())]
    pub local: Option<LocalMode>,
    /// Softmax scale (default 1/sqrt(D)).
    #[arg(long, value_name = "S")]
    pub scale: Option<f32>,
    /// Tile overrides, e.g. block_m=64 (default: tuned winner, else the default tile).
    #[arg(long, value_name = "FIELD=VALUE,...")]
    pub tile: Option<String>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Ignore tuned winners: use the default tile (also: FLASHEVA_NO_TUNE=1).
    #[arg(long)]
    pub ignore_tuning: bool,
}

fn needs(op: Op) -> &'static str {
    match op {
        Op::Prefill => "q, k, v, ks, vs",
        Op::Decode => "q, k_ring, v_ring, ks, vs, len",
        Op::ChunkMean => "x",
        Op::ChunkSummarize => "k, v, omega",
    }
}

struct Input<'a> {
    st: SafeTensors<'a>,
    op: Op,
    path: String,
}

impl<'a> Input<'a> {
    fn get(&self, name: &str) -> anyhow::Result<TensorView<'a>> {
        self.st.tensor(name).map_err(|_| {
            usage(format!(
                "{} has no tensor '{name}': {} reads {}",
                self.path,
                self.op,
                needs(self.op)
            ))
        })
    }

    fn half(&self, name: &str, rank: usize, desc: &str) -> anyhow::Result<HostTensor> {
        let t = self.get(name)?;
        let dtype = match t.dtype() {
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::Bf16,
            other => {
                return Err(usage(format!(
                    "tensor {name} is {other:?}: flasheva run takes F16 or BF16 tensors"
                )));
            }
        };
        if t.shape().len() != rank {
            return Err(usage(format!(
                "tensor {name} has shape {:?}, expected {desc}",
                t.shape()
            )));
        }
        let bits = t
            .data()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok(HostTensor {
            dtype,
            shape: t.shape().to_vec(),
            bits,
        })
    }
}

fn same_dtype(name: &str, t: &HostTensor, dtype: DType) -> anyhow::Result<()> {
    if t.dtype != dtype {
        return Err(usage(format!(
            "tensor {name} is {}, but q/x is {}: all inputs share one dtype",
            t.dtype, dtype
        )));
    }
    Ok(())
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
    }
}

fn bits_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn run(a: RunArgs, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        usage(format!(
            "{} is not a safetensors file: {e}",
            a.input.display()
        ))
    })?;
    let input = Input {
        st,
        op: a.op,
        path: a.input.display().to_string(),
    };
    let params = |d: usize, dtype: DType, group: Option<u32>| SpecParams {
        head_dim: Some(d as u32),
        window: a.window,
        chunk: a.chunk,
        local: a.local,
        dtype: Some(dtype),
        group,
    };
    // Read and check everything before touching the GPU.
    let (spec, tensors): (KernelSpec, Vec<(&str, HostTensor)>) = match a.op {
        Op::Prefill => {
            let q = input.half("q", 4, "[B, N, H, D]")?;
            let mut v = vec![("q", q.clone())];
            for (n, desc) in [
                ("k", "[B, N, Hkv, D]"),
                ("v", "[B, N, Hkv, D]"),
                ("ks", "[B, NC, Hkv, D]"),
                ("vs", "[B, NC, Hkv, D]"),
            ] {
                let t = input.half(n, 4, desc)?;
                same_dtype(n, &t, q.dtype)?;
                v.push((n, t));
            }
            (
                KernelSpec::new(Op::Prefill, &params(q.shape[3], q.dtype, None)).map_err(usage)?,
                v,
            )
        }
        Op::Decode => {
            let q = input.half("q", 3, "[B, H, D]")?;
            let kr = input.half("k_ring", 4, "[B, W, Hkv, D]")?;
            let hkv = kr.shape[2].max(1);
            if q.shape[1] % hkv != 0 {
                return Err(usage(format!(
                    "q has {} heads, not a multiple of k_ring's {hkv} kv heads",
                    q.shape[1]
                )));
            }
            let mut v = vec![("q", q.clone()), ("k_ring", kr)];
            for (n, desc) in [
                ("v_ring", "[B, W, Hkv, D]"),
                ("ks", "[B, MAXNC, Hkv, D]"),
                ("vs", "[B, MAXNC, Hkv, D]"),
            ] {
                let t = input.half(n, 4, desc)?;
                same_dtype(n, &t, q.dtype)?;
                v.push((n, t));
            }
            let g = (q.shape[1] / hkv) as u32;
            (
                KernelSpec::new(Op::Decode, &params(q.shape[2], q.dtype, Some(g)))
                    .map_err(usage)?,
                v,
            )
        }
        Op::ChunkMean => {
            let x = input.half("x", 4, "[B, N, G, D]")?;
            (
                KernelSpec::new(Op::ChunkMean, &params(x.shape[3], x.dtype, None))
                    .map_err(usage)?,
                vec![("x", x)],
            )
        }
        Op::ChunkSummarize => {
            let k = input.half("k", 4, "[B, N, Hkv, D]")?;
            let mut v = vec![("k", k.clone())];
            for (n, desc) in [("v", "[B, N, Hkv, D]"), ("omega", "[B, NC, Hkv, D]")] {
                let t = input.half(n, 4, desc)?;
                same_dtype(n, &t, k.dtype)?;
                v.push((n, t));
            }
            (
                KernelSpec::new(Op::ChunkSummarize, &params(k.shape[3], k.dtype, None))
                    .map_err(usage)?,
                v,
            )
        }
    };
    let len = if a.op == Op::Decode {
        let t = input.get("len")?;
        if t.dtype() != Dtype::I32 || t.shape().len() != 1 {
            return Err(usage(format!(
                "tensor len is {:?} {:?}, expected I32 [B]",
                t.dtype(),
                t.shape()
            )));
        }
        Some(
            t.data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<i32>>(),
        )
    } else {
        None
    };

    let gpu = Gpu::open(a.device).context("flasheva run needs a CUDA GPU")?;
    let stream = gpu.context().new_stream().context("creating a stream")?;
    let opts = RuntimeOptions::from_env()?.compile_on_miss(true);
    let opts = opts.clone().use_tuned(opts.use_tuned && !a.ignore_tuning);
    let rt = Runtime::with_gpu(gpu, open_store(cache_dir)?, opts);
    // The workload, for the tuned winner of its shape bucket.
    let sh = |i: usize| &tensors[i].1.shape;
    let workload = match a.op {
        Op::Prefill => Workload {
            spec,
            b: sh(0)[0],
            n: sh(0)[1],
            h: sh(0)[2],
            hkv: sh(1)[2],
        },
        Op::Decode => Workload {
            spec,
            b: sh(0)[0],
            n: len
                .as_ref()
                .and_then(|l| l.iter().max().copied())
                .unwrap_or(1)
                .max(1) as usize,
            h: sh(0)[1],
            hkv: sh(1)[2],
        },
        Op::ChunkMean => Workload {
            spec,
            b: sh(0)[0],
            n: sh(0)[1],
            h: sh(0)[2],
            hkv: sh(0)[2],
        },
        Op::ChunkSummarize => Workload {
            spec,
            b: sh(0)[0],
            n: sh(0)[1],
            h: sh(0)[2],
            hkv: sh(0)[2],
        },
    };
    let tile = match &a.tile {
        Some(t) => tile_for(&spec, rt.arch(), Some(t))?,
        None => rt.tile_for_workload(&workload),
    };
    let kernel = rt.kernel_with_tile(&spec, &tile)?;
    for w in rt.take_warnings() {
        eprintln!("flasheva: warning: {w}");
    }
    let mut dev: Vec<DeviceTensor> = Vec::new();
    for (name, t) in &tensors {
        dev.push(upload(&stream, name, t, 0, 0)?);
    }
    let arg = |i: usize| dev[i].arg.clone();
    let dt = spec.dtype();
    let d = spec.head_dim() as usize;
    let mut outputs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    match a.op {
        Op::Prefill => {
            let q = &tensors[0].1.shape;
            let (b, n, h) = (q[0], q[1], q[2]);
            let o = alloc_output(&stream, "o", dt, &[b, n, h, d], 0)?;
            let (lse_buf, lse) = alloc_f32(&stream, "lse", &[b, h, n])?;
            kernel.prefill(
                &stream,
                &PrefillArgs {
                    q: arg(0),
                    k: arg(1),
                    v: arg(2),
                    ks: arg(3),
                    vs: arg(4),
                    o: o.arg.clone(),
                    lse,
                    scale: a.scale,
                },
            )?;
            stream
                .synchronize()
                .map_err(|e| anyhow!("the prefill kernel failed: {e:?}"))?;
            outputs.push((
                "o".into(),
                st_dtype(dt),
                vec![b, n, h, d],
                bits_bytes(&o.download_bits(&stream)?),
            ));
            let l = stream.clone_dtoh(&lse_buf)?;
            outputs.push((
                "lse".into(),
                Dtype::F32,
                vec![b, h, n],
                l[..b * h * n]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ));
        }
        Op::Decode => {
            let q = &tensors[0].1.shape;
            let (b, h) = (q[0], q[1]);
            let lens = len.expect("read above");
            let len_buf = stream.clone_htod(&lens)?;
            let len_arg = TensorArg::contiguous(
                "len",
                device_address(&len_buf, &stream),
                ElemType::I32,
                &[lens.len()],
            );
            let o = alloc_output(&stream, "o", dt, &[b, h, d], 0)?;
            let (lse_buf, lse) = alloc_f32(&stream, "lse", &[b, h])?;
            let hkv = tensors[1].1.shape[2];
            let max_items = spec.window_or_zero() as usize + tensors[3].1.shape[1];
            let splits = kernel.decode_splits(b, hkv, max_items);
            let ws = decode_workspace(&stream, b, h, d, splits)?;
            kernel.decode(
                &stream,
                &DecodeArgs {
                    q: arg(0),
                    k_ring: arg(1),
                    v_ring: arg(2),
                    ks: arg(3),
                    vs: arg(4),
                    len: len_arg,
                    o: o.arg.clone(),
                    lse,
                    scale: a.scale,
                },
                splits,
                ws.arg,
            )?;
            stream
                .synchronize()
                .map_err(|e| anyhow!("the decode kernel failed: {e:?}"))?;
            outputs.push((
                "o".into(),
                st_dtype(dt),
                vec![b, h, d],
                bits_bytes(&o.download_bits(&stream)?),
            ));
            let l = stream.clone_dtoh(&lse_buf)?;
            outputs.push((
                "lse".into(),
                Dtype::F32,
                vec![b, h],
                l[..b * h].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        Op::ChunkMean => {
            let x = &tensors[0].1.shape;
            let nc = x[1] / spec.chunk() as usize;
            let y = alloc_output(&stream, "xbar", dt, &[x[0], nc, x[2], d], 0)?;
            kernel.chunk_mean(
                &stream,
                &ChunkMeanArgs {
                    x: arg(0),
                    xbar: y.arg.clone(),
                },
            )?;
            stream
                .synchronize()
                .map_err(|e| anyhow!("the chunk_mean kernel failed: {e:?}"))?;
            outputs.push((
                "xbar".into(),
                st_dtype(dt),
                vec![x[0], nc, x[2], d],
                bits_bytes(&y.download_bits(&stream)?),
            ));
        }
        Op::ChunkSummarize => {
            let k = &tensors[0].1.shape;
            let nc = k[1] / spec.chunk() as usize;
            let y = alloc_output(&stream, "vs", dt, &[k[0], nc, k[2], d], 0)?;
            kernel.chunk_summarize(
                &stream,
                &ChunkSummarizeArgs {
                    k: arg(0),
                    v: arg(1),
                    omega: arg(2),
                    vs: y.arg.clone(),
                    scale: a.scale,
                },
            )?;
            stream
                .synchronize()
                .map_err(|e| anyhow!("the chunk_summarize kernel failed: {e:?}"))?;
            outputs.push((
                "vs".into(),
                st_dtype(dt),
                vec![k[0], nc, k[2], d],
                bits_bytes(&y.download_bits(&stream)?),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = outputs
        .iter()
        .map(|(n, dt, shape, data)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), data)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("flasheva_kernel".to_string(), spec.name());
    meta.insert("flasheva_tile".to_string(), tile.name(spec.op()));
    safetensors::serialize_to_file(views, Some(meta), &a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "{spec} (tile {}) -> {}",
        tile.name(spec.op()),
        a.output.display()
    );
    Ok(())
}
