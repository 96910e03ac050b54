//! The Triton backend without a GPU, with the real Triton (scripts/with-triton provides it; the
//! tests skip with a message when no Python with Triton is found, and fail instead under
//! FLASHEVA_REQUIRE_TRITON=1, which that script sets):
//! every op compiles for sm_80 and sm_90a through the driver into the cache (a second time is a
//! cache hit), builds are byte-identical, keys cover the Triton version, compile errors show
//! Triton's message, bundles carry Triton entries through a `--rebuild-check`, the kernels pass
//! their float64 checks in Triton's interpreter, and a missing Python is a clear error.

mod common;

use std::process::Command;

use flasheva::cache::CacheStore;
use flasheva::compile::triton::Triton;
use flasheva::compile::{CompileError, CompileJob, Compiler};
use flasheva::pipeline::{Pipeline, Status};
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::target::Arch;
use flasheva::tile::{Backend, Engine, Tile, TileError};

fn triton() -> Option<Triton> {
    match Triton::load() {
        Ok(t) => Some(t),
        Err(e) => {
            assert!(
                !flasheva::config::require_triton().unwrap_or(false),
                "FLASHEVA_REQUIRE_TRITON is set but Triton is missing: {e}"
            );
            eprintln!("TRITON TEST SKIPPED: {e}");
            None
        }
    }
}

fn spec(op: Op, d: u32, local: LocalMode, dtype: DType) -> KernelSpec {
    KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(d),
            window: Some(256),
            chunk: Some(32),
            local: Some(local),
            dtype: Some(dtype),
            group: Some(4),
        },
    )
    .unwrap()
}

fn sm90a() -> Arch {
    Arch::preferred_for(9, 0)
}

fn triton_tile(s: &KernelSpec) -> Tile {
    let t = Tile::default_for_backend(s, sm90a(), Backend::Triton);
    assert_eq!(t.engine(), Engine::Triton);
    t
}

/// (entry point, parameter count) of every launch the op plans for a small call of `s`.
fn planned_params(s: &KernelSpec) -> Vec<(usize, usize)> {
    use flasheva::ops::{self, DeviceFacts, Problem};
    use flasheva::workload::Workload;
    let def = ops::of(s.op());
    let mut p = Problem::new(Workload::new(*s, 2, 77, 8, 2));
    p.splits = Some(3);
    let tile = triton_tile(s);
    let args = p.placeholder_args(&tile, 132, 0x10000, 0x20000);
    def.plan(s, &tile, &args, DeviceFacts::new(132))
        .unwrap()
        .iter()
        .map(|st| {
            (
                st.function,
                st.args.as_ref().expect("scalar parameters").len(),
            )
        })
        .collect()
}

#[test]
fn every_op_compiles_for_sm_80_and_sm_90a_into_the_cache() {
    let Some(tr) = triton() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path().join("cache")).unwrap();
    let pipeline = Pipeline::new(&store, &tr);
    let jobs: Vec<(KernelSpec, Arch)> = [
        spec(Op::Prefill, 128, LocalMode::Block, DType::Bf16),
        spec(Op::Prefill, 64, LocalMode::Sliding, DType::F16),
        spec(Op::Decode, 128, LocalMode::Sliding, DType::Bf16),
        spec(Op::ChunkMean, 96, LocalMode::Block, DType::F16),
        spec(Op::ChunkSummarize, 128, LocalMode::Block, DType::Bf16),
        spec(Op::PrefillBwd, 128, LocalMode::Sliding, DType::Bf16),
        spec(Op::ChunkSummarizeBwd, 64, LocalMode::Block, DType::F16),
        spec(Op::ChunkMeanBwd, 128, LocalMode::Block, DType::Bf16),
        spec(Op::Extend, 128, LocalMode::Sliding, DType::Bf16),
        spec(Op::Append, 64, LocalMode::Block, DType::F16),
        spec(Op::DecodePaged, 64, LocalMode::Sliding, DType::Bf16),
        spec(Op::ExtendPaged, 128, LocalMode::Block, DType::F16),
        spec(Op::AppendPaged, 64, LocalMode::Block, DType::Bf16),
    ]
    .into_iter()
    .flat_map(|s| [(s, Arch::new(8, 0)), (s, sm90a())])
    .collect();
    let results: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(s, a)| sc.spawn(|| pipeline.ensure(s, &triton_tile(s), *a)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((s, arch), r) in jobs.iter().zip(results) {
        let built = r.unwrap_or_else(|e| panic!("{s} {arch}: {e}"));
        assert_eq!(built.status, Status::Compiled);
        let m = &built.entry.meta;
        assert_eq!(m.compiler.name, "triton");
        assert_eq!(
            m.entry_shared_mem.len(),
            s.entry_points(&triton_tile(s)).len(),
            "{s}"
        );
        let ptx = store.read_verified(&built.entry, "kernel.ptx").unwrap();
        let ptx = String::from_utf8(ptx).unwrap();
        let target = if arch.specific { "sm_90a" } else { "sm_80" };
        assert!(ptx.contains(&format!(".target {target}")), "{s} {arch}");
        for e in s.entry_points(&triton_tile(s)) {
            assert!(
                ptx.contains(&format!(".entry {e}(")),
                "{s} {arch}: no entry {e}"
            );
        }
        let cubin = store.read_verified(&built.entry, "kernel.cubin").unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF", "{s} {arch}");
        assert!(
            m.resources.iter().any(|r| r.function == s.name()),
            "{s} {arch}: the ptxas report is kept: {:?}",
            m.resources
        );
        // every launch passes exactly as many parameters as the compiled kernel declares
        for (function, count) in planned_params(s) {
            let entry = &s.entry_points(&triton_tile(s))[function];
            let start = ptx
                .find(&format!(".entry {entry}("))
                .unwrap_or_else(|| panic!("{s}: no {entry}"));
            let sig = &ptx[start..start + ptx[start..].find(')').unwrap()];
            assert_eq!(sig.matches(".param").count(), count, "{s} {arch} {entry}");
        }
        // a second time is a cache hit
        let again = pipeline.ensure(s, &triton_tile(s), *arch).unwrap();
        assert_eq!(again.status, Status::Cached);
    }
    // every entry verifies: files against their digests, the key against its inputs
    let scanned = store.scan().unwrap();
    assert_eq!(scanned.len(), jobs.len());
    for e in &scanned {
        assert!(e.entry.is_ok(), "{}: {:?}", e.dir.display(), e.entry);
    }
}

#[test]
fn triton_builds_are_byte_identical_and_keys_cover_the_version() {
    let Some(tr) = triton() else { return };
    let s = spec(Op::ChunkMean, 64, LocalMode::Block, DType::Bf16);
    let tile = triton_tile(&s);
    let source = flasheva::render::render(&s, &tile).unwrap();
    let arch = Arch::new(8, 6);
    let job = CompileJob {
        program_name: "chunk_mean.py",
        source: &source,
        arch,
        options: &tr.options(arch),
    };
    let a = tr.compile(&job).unwrap();
    let b = tr.compile(&job).unwrap();
    assert!(a.ptx == b.ptx && a.cubin == b.cubin, "two builds differ");

    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let key = |t: &Triton| Pipeline::new(&store, t).plan(&s, &tile, arch).unwrap().key;
    let other = Triton::with(tr.python().to_path_buf(), "3.7.0".into());
    assert_ne!(
        key(&tr),
        key(&other),
        "the Triton version is part of the key"
    );
    // and the kernel source: the rendered job embeds triton/flasheva_triton.py
    assert!(source.contains(flasheva::render::TRITON_KERNELS));
}

#[test]
fn a_triton_compile_error_shows_tritons_message() {
    let Some(tr) = triton() else { return };
    let s = spec(Op::Prefill, 64, LocalMode::Block, DType::F16);
    let tile = triton_tile(&s);
    // BLOCK_N = 24 is not a power of two: Triton refuses tl.arange(0, 24).
    let source = flasheva::render::render(&s, &tile).unwrap().replacen(
        "\"BLOCK_N\":32",
        "\"BLOCK_N\":24",
        1,
    );
    let arch = Arch::new(8, 0);
    let e = tr
        .compile(&CompileJob {
            program_name: "bad.py",
            source: &source,
            arch,
            options: &tr.options(arch),
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CompileError::Failed { .. }), "{msg}");
    assert!(msg.contains("power of 2"), "{msg}");
}

#[test]
fn plain_sm_90_is_not_a_triton_target() {
    let s = spec(Op::Prefill, 128, LocalMode::Block, DType::Bf16);
    let tile = triton_tile(&s);
    let e = tile.validate_for(&s, Arch::new(9, 0)).unwrap_err();
    assert!(matches!(e, TileError::Engine { .. }), "{e}");
    assert!(e.to_string().contains("sm_90a"), "{e}");
    let Some(tr) = triton() else { return };
    let e = tr
        .compile(&CompileJob {
            program_name: "x.py",
            source: "",
            arch: Arch::new(9, 0),
            options: &[],
        })
        .unwrap_err();
    assert!(matches!(e, CompileError::UnsupportedArch { .. }), "{e}");
}

#[test]
fn bundles_carry_triton_entries_through_a_rebuild_check() {
    let Some(tr) = triton() else { return };
    let src = tempfile::tempdir().unwrap();
    let store = CacheStore::open(src.path().join("a")).unwrap();
    let s = spec(Op::ChunkSummarize, 64, LocalMode::Block, DType::F16);
    Pipeline::new(&store, &tr)
        .ensure(&s, &triton_tile(&s), Arch::new(8, 0))
        .unwrap();
    let bundle = src.path().join("b.tar.zst");
    let o = Command::new(common::bin())
        .args(["--cache-dir"])
        .arg(src.path().join("a"))
        .args(["cache", "export", "--out"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(common::bin())
        .args(["--cache-dir"])
        .arg(src.path().join("c"))
        .args(["cache", "import", "--rebuild-check"])
        .arg(&bundle)
        .env("FLASHEVA_PYTHON", tr.python())
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("1 entry recompiled here to the same bytes"),
        "{out}{err}"
    );
}

#[test]
fn the_kernels_pass_their_float64_checks_in_tritons_interpreter() {
    let Some(tr) = triton() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/triton/test_interpret.py");
    let o = Command::new(tr.python()).arg(script).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn a_missing_python_is_an_error_naming_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(common::bin())
        .args(["--cache-dir"])
        .arg(dir.path())
        .args([
            "compile",
            "--backend",
            "triton",
            "chunk_mean",
            "--head-dim",
            "64",
            "--chunk",
            "8",
            "--arch",
            "sm_80",
        ])
        .env("FLASHEVA_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Triton was not found") && err.contains("/nonexistent/python3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // an arch Triton does not target is bad input
    let o = Command::new(common::bin())
        .args(["--cache-dir"])
        .arg(dir.path())
        .args([
            "compile",
            "--backend",
            "triton",
            "chunk_mean",
            "--head-dim",
            "64",
            "--chunk",
            "8",
            "--arch",
            "sm_90",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("Triton targets sm_80"), "{err}");
}
