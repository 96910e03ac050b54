//! The loader-only build: `--no-default-features` builds the library without tera, NVRTC
//! bindings, the tools (reference, checks, benchmarks, tuning) and their dependencies. Runs cargo (needs the Rust toolchain: where there is none, on the GPU machine,
//! it says so and does nothing).

use std::process::Command;

#[test]
fn loader_only_build_has_neither_tera_nor_nvrtc() {
    let Ok(cargo) = std::env::var("CARGO") else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"LOADER-ONLY BUILD TEST SKIPPED: not run under cargo (no Rust toolchain here)\n",
        );
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let target = std::path::Path::new(root)
        .join("target")
        .join("loader-only");
    let o = Command::new(&cargo)
        .args([
            "build",
            "--lib",
            "--no-default-features",
            "--quiet",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root)
        .output()
        .expect("run cargo");
    assert!(
        o.status.success(),
        "loader-only build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let tree = Command::new(&cargo)
        .args([
            "tree",
            "--no-default-features",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p} {f}",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo tree");
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let text = String::from_utf8_lossy(&tree.stdout);
    assert!(
        !text.lines().any(|l| l.starts_with("tera ")),
        "tera is in the loader-only build:\n{text}"
    );
    let cudarc = text
        .lines()
        .find(|l| l.starts_with("cudarc "))
        .expect("cudarc is a dependency");
    assert!(
        cudarc.contains("driver") && !cudarc.contains("nvrtc"),
        "cudarc features: {cudarc}"
    );
    for heavy in [
        "clap ",
        "indicatif ",
        "zstd ",
        "ed25519-dalek ",
        "plotters ",
        "rand ",
        "half ",
        "toml ",
        "rayon ",
        "safetensors ",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(heavy)),
            "{heavy} is in the loader-only build"
        );
    }
    // libloading is in the tree through cudarc (it loads libcuda at run time), but flasheva itself
    // uses it only to find NVRTC, with the compiler.
    let direct = Command::new(&cargo)
        .args([
            "tree",
            "--no-default-features",
            "--edges",
            "normal",
            "--depth",
            "1",
            "--prefix",
            "none",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo tree");
    let direct = String::from_utf8_lossy(&direct.stdout);
    assert!(
        !direct.lines().skip(1).any(|l| l.starts_with("libloading ")),
        "libloading is a direct dependency of the loader-only build:\n{direct}"
    );
}

/// Features are additive: a consumer written against the loader-only build (`default-features =
/// false`, an exhaustive-looking match on `Error` with a wildcard, `RuntimeOptions::default()`)
/// compiles and prints the same whether or not another crate in its build graph turns flasheva's
/// default features on (simulated by a feature of the consumer that enables `flasheva/default`).
#[test]
fn a_loader_only_consumer_behaves_the_same_with_default_features_on() {
    let Ok(cargo) = std::env::var("CARGO") else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"FEATURE ADDITIVITY TEST SKIPPED: not run under cargo (no Rust toolchain here)\n",
        );
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"consumer\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nflasheva = {{ path = {:?}, default-features = false }}\n\n\
             [features]\nother = [\"flasheva/default\"]\n\n[workspace]\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("src/main.rs"),
        r#"use flasheva::Error;
use flasheva::loader::RuntimeOptions;

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Spec(_) => "spec",
        Error::Tile(_) => "tile",
        Error::Render(_) => "render",
        Error::NotCached(_) => "not cached",
        Error::Gpu(_) => "gpu",
        _ => "other",
    }
}

fn main() {
    let o = RuntimeOptions::default();
    let e: Error = flasheva::KernelSpec::new(flasheva::Op::Prefill, &Default::default())
        .unwrap_err()
        .into();
    println!("compile_on_miss={} use_tuned={} error={}", o.compile_on_miss, o.use_tuned, kind(&e));
}
"#,
    )
    .unwrap();
    let target = root.join("target").join("consumer");
    let run = |features: &[&str]| {
        let o = Command::new(&cargo)
            .args(["run", "--quiet", "--target-dir"])
            .arg(&target)
            .args(features)
            .current_dir(dir.path())
            .output()
            .expect("run cargo");
        assert!(
            o.status.success(),
            "consumer {features:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let light = run(&[]);
    let full = run(&["--features", "other"]);
    assert_eq!(
        light, "compile_on_miss=false use_tuned=true error=spec\n",
        "{light}"
    );
    assert_eq!(light, full, "behaviour changed with default features on");
}
