//! Time from "a warm process wants a kernel" to its first launch completing: a fresh loader
//! (`Runtime`) on an already-initialized CUDA context looks up the tuned winner, finds and verifies
//! the cached cubin, loads the module and launches once. Inputs are allocated beforehand.
//!
//!     FLASHEVA_CACHE_DIR=... cargo run --release --example first_launch
//!
//! The cache should hold the kernel already (run `flasheva tune --preset llama` or
//! `flasheva compile --preset llama --arch sm_90` first); a miss would be compiled and timed too.
use std::time::Instant;

use flasheva::bench::{Bencher, Workload};
use flasheva::cache::CacheStore;
use flasheva::gpu::Gpu;
use flasheva::loader::{Runtime, RuntimeOptions};
use flasheva::ops::Problem;
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::open(0)?;
    let stream = gpu.context().new_stream()?;
    let store = CacheStore::open_default()?;
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
    )?;
    let w = Workload::new(spec, 1, 16384, 32, 8);
    // Warm the process: context, stream and input buffers exist before the clock starts (the
    // buffers are sized with a kernel from a separate loader, which is dropped before timing).
    let mut bench = {
        let warm = Runtime::with_gpu(
            gpu.clone(),
            store.clone(),
            RuntimeOptions::default().compile_on_miss(true),
        );
        Bencher::new(&gpu, &stream, Problem::new(w), &*warm.kernel_for(&w)?)?
    };
    stream.synchronize()?;
    let mut loaders = Vec::new();
    println!("fresh loader  lookup+load ms  launch+sync ms  total ms");
    let mut totals = Vec::new();
    let mut origin = String::new();
    for i in 0..7 {
        let t0 = Instant::now();
        let rt = Runtime::with_gpu(
            gpu.clone(),
            store.clone(),
            RuntimeOptions::default().compile_on_miss(true),
        );
        let tuned = rt.tuned(&w);
        let k = rt.kernel_for(&w)?;
        let t1 = Instant::now();
        bench.launch(&k, 0)?;
        stream.synchronize()?;
        let t2 = Instant::now();
        let (a, b) = ((t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3);
        println!("{i:12}  {a:14.2}  {b:14.2}  {:8.2}", a + b);
        totals.push(a + b);
        origin = format!(
            "tile {} ({}), {:?}",
            k.tile.name(spec.op()),
            if tuned.is_some() {
                "tuned winner"
            } else {
                "default: no winner recorded"
            },
            k.origin
        );
        loaders.push(rt); // keep modules loaded: no unload overlaps the next measurement
    }
    let mut sorted = totals.clone();
    sorted.sort_by(f64::total_cmp);
    println!("kernel: {origin}");
    println!(
        "first {:.2} ms, median {:.2} ms, max {:.2} ms (each includes one run of the kernel)",
        totals[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    Ok(())
}
