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
    // `cargo test` builds the examples beside the test executables; the GPU machine has it packed
    let serve = serve_binary()
        .expect("the serve example is missing: cargo builds it with the tests (or pack it into .device/bin)");
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(serve)
        .arg(cache.path())
        .arg("2")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the serve example");
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

/// The serving example's binary: beside this test executable's profile folder
/// (`target/<profile>/examples/serve`, built by `cargo test`), else `.device/bin/serve` (the
/// GPU machine, where the packed binaries live).
fn serve_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.parent()?.join("examples").join("serve");
    [beside, std::path::PathBuf::from(".device/bin/serve")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The CLI binary: the one cargo built for these tests, else the packed one.
fn cli_binary() -> Option<std::path::PathBuf> {
    [
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_flasheva")),
        std::path::PathBuf::from(".device/bin/flasheva"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// On a GPU: the CLI fills a cache with the example's kernel for this device, and the example
/// serves every request from it (cubin, no compiling) and exits 0; with an empty cache it
/// refuses every request and exits 1.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored"]
fn the_serving_example_serves_from_a_cache_the_cli_filled() {
    let info = flasheva::gpu::probe().unwrap_or_else(|e| panic!("needs a CUDA GPU: {e}"));
    let (Some(serve), Some(cli)) = (serve_binary(), cli_binary()) else {
        panic!(
            "the serve example or the CLI binary is missing (build it: cargo build --release --example serve, and pack it into .device/bin)"
        );
    };
    let (major, minor) = info.devices[0].capability;
    let arch = flasheva::Arch::preferred_for(major, minor);
    let cache = tempfile::tempdir().unwrap();

    // empty cache: refused, logged, exit 1
    let o = Command::new(&serve)
        .arg(cache.path())
        .arg("2")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("request refused: kernel not cached"), "{err}");

    let o = Command::new(&cli)
        .args([
            "compile",
            "prefill",
            "--head-dim",
            "128",
            "--window",
            "512",
            "--chunk",
            "64",
            "--local",
            "block",
            "--dtype",
            "bf16",
            "--arch",
            &arch.to_string(),
            "--cache-dir",
        ])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = Command::new(&serve)
        .arg(cache.path())
        .arg("8")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("served").count(), 8 + 1, "{err}"); // 8 requests, and the total
    assert!(
        err.contains("Cubin"),
        "loaded from the cubin the CLI compiled: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
