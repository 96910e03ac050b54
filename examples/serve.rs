//! A minimal "server" that embeds the flasheva loader the way a serving stack would: it opens the
//! device's primary context and its own stream, loads kernels from a cache filled beforehand by
//! the CLI (`flasheva compile --preset llama --arch sm_90a`, or a bundle import) with compiling
//! disabled, logs why each kernel was loaded from where (cubin, PTX JIT) or why it was missing,
//! and serves a loop of prefill requests on its stream. A miss is an error it logs and answers
//! the request with, not a crash.
//!
//!     cargo run --release --example serve -- [CACHE_DIR] [REQUESTS]
//!
//! Exit codes: 0 when every request was served, 1 when some were refused (not cached) or the
//! machine has no usable GPU, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use flasheva::cache::CacheStore;
use flasheva::gpu::params::{ElemType, PrefillArgs, TensorArg};
use flasheva::gpu::{CudaSlice, CudaStream, Gpu, device_address};
use flasheva::loader::{Runtime, RuntimeOptions};
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::workload::Workload;

/// One request's device buffers (the engine owns its memory; flasheva only reads and writes it).
struct Buffers {
    _tensors: Vec<CudaSlice<u16>>,
    _lse: CudaSlice<f32>,
}

fn alloc(stream: &Arc<CudaStream>, w: &Workload) -> Result<(Buffers, PrefillArgs), String> {
    let d = w.spec.head_dim() as usize;
    let nc = w.n / w.spec.chunk() as usize;
    let shapes = [
        ("q", [w.b, w.n, w.h, d]),
        ("k", [w.b, w.n, w.hkv, d]),
        ("v", [w.b, w.n, w.hkv, d]),
        ("ks", [w.b, nc, w.hkv, d]),
        ("vs", [w.b, nc, w.hkv, d]),
        ("o", [w.b, w.n, w.h, d]),
    ];
    let mut bufs = Vec::new();
    let mut args = Vec::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let buf = stream
            .alloc_zeros::<u16>(n.max(1))
            .map_err(|e| format!("cuMemAlloc: {e:?}"))?;
        args.push(TensorArg::contiguous(
            name,
            device_address(&buf, stream),
            ElemType::of(w.spec.dtype()),
            &shape,
        ));
        bufs.push(buf);
    }
    let lse = stream
        .alloc_zeros::<f32>((w.b * w.h * w.n).max(1))
        .map_err(|e| format!("cuMemAlloc: {e:?}"))?;
    let lse_arg = TensorArg::contiguous(
        "lse",
        device_address(&lse, stream),
        ElemType::F32,
        &[w.b, w.h, w.n],
    );
    let mut it = args.into_iter();
    let mut next = || it.next().expect("six tensors");
    let a = PrefillArgs {
        q: next(),
        k: next(),
        v: next(),
        ks: next(),
        vs: next(),
        o: next(),
        lse: lse_arg,
        scale: None,
    };
    Ok((
        Buffers {
            _tensors: bufs,
            _lse: lse,
        },
        a,
    ))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let mut args = std::env::args().skip(1);
    let cache = args
        .next()
        .map(PathBuf::from)
        .or_else(flasheva::config::cache_dir)
        .or_else(flasheva::config::default_cache_dir);
    let requests: usize = match args.next().map(|s| s.parse()) {
        None => 8,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            tracing::error!("REQUESTS must be a number");
            return ExitCode::from(2);
        }
    };
    let Some(cache) = cache else {
        tracing::error!("no cache folder: pass one, or set FLASHEVA_CACHE_DIR");
        return ExitCode::from(2);
    };
    // Probe before touching CUDA: without a driver this is an error, never a panic.
    if let Err(e) = flasheva::gpu::probe() {
        tracing::error!(error = %e, "this server needs a CUDA GPU");
        return ExitCode::from(1);
    }
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot open gpu 0");
            return ExitCode::from(1);
        }
    };
    // The engine's own stream: flasheva only enqueues work on it.
    let stream = match gpu.context().new_stream() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = ?e, "cannot create a stream");
            return ExitCode::from(1);
        }
    };
    let store = match CacheStore::open_existing(&cache) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "no kernel cache to serve from");
            return ExitCode::from(1);
        }
    };
    // Never compile in the serving path: a miss is reported, not built.
    let rt = Runtime::with_gpu(gpu, store, RuntimeOptions::default().compile_on_miss(false));
    let spec = KernelSpec::new(
        Op::Prefill,
        &SpecParams {
            head_dim: Some(128),
            window: Some(512),
            chunk: Some(64),
            local: Some(LocalMode::Block),
            dtype: Some(DType::Bf16),
            group: None,
        },
    )
    .expect("a valid spec");
    let (mut served, mut refused) = (0usize, 0usize);
    for i in 0..requests {
        let w = Workload::new(spec, 1, 1024 << (i % 4), 32, 8);
        let kernel = match rt.kernel_for(&w) {
            Ok(k) => k,
            Err(flasheva::Error::NotCached(miss)) => {
                tracing::error!(request = i, %miss, "request refused: kernel not cached");
                refused += 1;
                continue;
            }
            Err(e) => {
                tracing::error!(request = i, error = %e, "request failed");
                refused += 1;
                continue;
            }
        };
        let t0 = std::time::Instant::now();
        let r = alloc(&stream, &w).and_then(|(bufs, args)| {
            kernel.prefill(&stream, &args).map_err(|e| e.to_string())?;
            stream
                .synchronize()
                .map_err(|e| format!("the kernel failed: {e:?}"))?;
            drop(bufs);
            Ok(())
        });
        match r {
            Ok(()) => {
                served += 1;
                tracing::info!(
                    request = i,
                    tokens = w.n,
                    tile = %kernel.tile.name(spec.op()),
                    origin = ?kernel.origin,
                    ms = t0.elapsed().as_secs_f64() * 1e3,
                    "served"
                );
            }
            Err(e) => {
                refused += 1;
                tracing::error!(request = i, error = %e, "request failed");
            }
        }
    }
    tracing::info!(served, refused, "done");
    if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
