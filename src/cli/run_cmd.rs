//! `flasheva run`: one op on the GPU, tensors read from and written to safetensors files.
//!
//! The tensors each op reads and writes are its description in `flasheva::ops` (prefill reads
//! `q, k, v, ks, vs` and writes `o, lse`, ...). Head dim, dtype, B, N, H, Hkv (and for decode the
//! window, from the ring) come from the tensors; nothing touches the GPU before they all check.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use flasheva::gpu::Gpu;
use flasheva::hostdata::HostTensor;
use flasheva::loader::{Runtime, RuntimeOptions};
use flasheva::ops::{self, OpDef};
use flasheva::spec::{LocalMode, Op, SpecParams};
use flasheva::tensor::ElemType;
use flasheva::workload::Workload;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::args::{parse_backend, parse_op, tile_for};
use super::{open_store, usage};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The op: chunk_mean, chunk_summarize, prefill, decode, or a backward op: prefill_bwd, chunk_summarize_bwd, chunk_mean_bwd.
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
    /// nvrtc or triton: that backend's default tile (with --tile overrides), not the tuned
    /// winner (default: the tuned winner, whichever backend it is, else NVRTC's default).
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<flasheva::tile::Backend>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Ignore tuned winners: use the default tile (also: FLASHEVA_NO_TUNE=1).
    #[arg(long)]
    pub ignore_tuning: bool,
    #[command(flatten)]
    pub backward: super::args::BackwardFlags,
}

/// Reads the input tensors of `def` from a safetensors file: names, element types, shapes.
fn read_inputs(
    st: &SafeTensors<'_>,
    path: &str,
    def: &dyn OpDef,
    op: Op,
) -> anyhow::Result<(Vec<HostTensor>, Option<Vec<i32>>)> {
    let mut out = Vec::new();
    let mut lens = None;
    for d in def.inputs(&probe(op)) {
        let t = st.tensor(d.name).map_err(|_| {
            usage(format!(
                "{path} has no tensor '{}': {op} reads {}",
                d.name,
                ops::input_names(op)
            ))
        })?;
        let elem = match t.dtype() {
            Dtype::F16 => ElemType::F16,
            Dtype::BF16 => ElemType::Bf16,
            Dtype::F32 => ElemType::F32,
            Dtype::I32 => ElemType::I32,
            other => {
                return Err(usage(format!(
                    "tensor {} is {other:?}: flasheva run takes F16 or BF16 tensors (and I32 len)",
                    d.name
                )));
            }
        };
        if t.shape().len() != d.shape.len() {
            return Err(usage(format!(
                "tensor {} has shape {:?}, expected {}",
                d.name,
                t.shape(),
                d.doc
            )));
        }
        let h = HostTensor {
            elem,
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        };
        if elem == ElemType::I32 && d.elem == ElemType::I32 && h.shape.len() == 1 {
            // every int32 vector, in input order (decode: len; extend and append: start, count)
            lens.get_or_insert_with(Vec::new).extend(h.to_i32());
        }
        out.push(h);
    }
    Ok((out, lens))
}

/// A problem of `op` used only to ask for its tensors' names and types.
fn probe(op: Op) -> ops::Problem {
    let spec = flasheva::KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(64),
            window: Some(8),
            chunk: Some(8),
            ..Default::default()
        },
    )
    .expect("a valid spec");
    ops::Problem::new(Workload::new(spec, 1, 8, 1, 1))
}

fn st_dtype(e: ElemType) -> Dtype {
    match e {
        ElemType::F16 => Dtype::F16,
        ElemType::Bf16 => Dtype::BF16,
        ElemType::F32 => Dtype::F32,
        ElemType::I32 => Dtype::I32,
        _ => Dtype::U8,
    }
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
    let def = ops::of(a.op);
    // Read and check everything before touching the GPU.
    let (inputs, lens) = read_inputs(&st, &a.input.display().to_string(), def, a.op)?;
    let flags = SpecParams {
        head_dim: None,
        window: a.window,
        chunk: a.chunk,
        local: a.local,
        dtype: None,
        group: None,
    };
    let shapes: Vec<(ElemType, Vec<usize>)> =
        inputs.iter().map(|t| (t.elem, t.shape.clone())).collect();
    let mut problem = def
        .problem_from(&flags, &shapes, lens.as_deref())
        .map_err(usage)?;
    problem.scale = a.scale;
    problem.deterministic = a.backward.deterministic;
    let spec = problem.spec();

    let gpu = Gpu::open(a.device).context("flasheva run needs a CUDA GPU")?;
    let stream = gpu.context().new_stream().context("creating a stream")?;
    let opts = RuntimeOptions::from_env()?.compile_on_miss(true);
    let opts = opts.clone().use_tuned(opts.use_tuned && !a.ignore_tuning);
    let rt = Runtime::with_gpu(gpu, open_store(cache_dir)?, opts);
    let tile = match &a.tile {
        Some(t) => tile_for(&spec, rt.arch(), a.backend, Some(t))?,
        None if a.backend.is_some() => tile_for(&spec, rt.arch(), a.backend, None)?,
        None => rt.tile_for_workload(&problem.workload),
    };
    let kernel = rt.kernel_with_tile(&spec, &tile)?;
    let outputs = flasheva::verify::run_once(&stream, &kernel, &problem, &inputs, 0)
        .with_context(|| format!("the {} kernel failed", a.op))?;
    let names = def.outputs(&problem);
    let views: Vec<(String, TensorView)> = names
        .iter()
        .zip(&outputs)
        .map(|(d, t)| {
            Ok((
                d.name.to_string(),
                TensorView::new(st_dtype(t.elem), t.shape.clone(), &t.data)?,
            ))
        })
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
