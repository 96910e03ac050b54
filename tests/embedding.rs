//! Embedding the loader without a GPU: every entry point an engine uses returns an error, never
//! panics (cudarc panics when it cannot load libcuda; flasheva probes first), and the serving
//! example (examples/serve.rs) reports a missing GPU or a miss as an error it logs and exits 1.
//! On the GPU machine the same example serves requests (run by hand or by the device scripts).

use std::process::Command;

#[test]
fn entry_points_return_errors_without_a_driver() {
    if flasheva::gpu::probe().is_ok() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"this machine has a GPU: the no-driver paths are not checked here\n",
        );
        // A null context is never the primary one.
        // SAFETY: a null handle is rejected by the driver, not dereferenced.
        assert!(unsafe { flasheva::gpu::Gpu::from_raw_context(std::ptr::null_mut()) }.is_err());
        return;
    }
    assert!(!flasheva::gpu::driver_present() || flasheva::gpu::probe().is_err());
    assert!(flasheva::gpu::Gpu::open(0).is_err());
    // SAFETY: without a driver the handle is never used.
    let e = unsafe { flasheva::gpu::Gpu::from_raw_context(std::ptr::null_mut()) }.unwrap_err();
    assert!(e.to_string().contains("no CUDA"), "{e}");
    let store = flasheva::cache::CacheStore::open(tempfile::tempdir().unwrap().path()).unwrap();
    assert!(flasheva::loader::Runtime::new(0, store).is_err());
}

#[test]
fn the_serving_example_logs_its_error_and_exits_1() {
    let Ok(cargo) = std::env::var("CARGO") else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SERVING EXAMPLE TEST SKIPPED: not run under cargo (no Rust toolchain here)\n",
        );
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(cargo)
        .args(["run", "--quiet", "--example", "serve", "--"])
        .arg(cache.path())
        .arg("2")
        .current_dir(root)
        .env_remove("RUST_LOG")
        .output()
        .expect("run cargo");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    if flasheva::gpu::probe().is_err() {
        assert!(err.contains("this server needs a CUDA GPU"), "{err}");
    } else {
        // an empty cache: every request refused with what was looked for
        assert!(
            err.contains("request refused: kernel not cached") && err.contains("no cached kernel"),
            "{err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}
