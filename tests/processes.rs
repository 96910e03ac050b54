//! Real processes on one cache: eight compiling or importing the same keys at once end with one
//! consistent entry each and no error; a process killed with SIGKILL in the middle of writing
//! leaves no visible partial entry.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, content};

fn flasheva(cache: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("FLASHEVA_CACHE_DIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn finish(children: Vec<Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "a process failed: {}{}",
                out,
                String::from_utf8_lossy(&o.stderr)
            );
            out
        })
        .collect()
}

const SPEC: [&str; 10] = [
    "prefill",
    "--head-dim",
    "64",
    "--window",
    "128",
    "--chunk",
    "8",
    "--arch",
    "sm_90",
    "-j1",
];

#[test]
fn eight_processes_compiling_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let kids: Vec<Child> = (0..8)
        .map(|_| {
            flasheva(dir.path(), &[&["compile"][..], &SPEC[..]].concat())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs = finish(kids);
    let compiled = outs
        .iter()
        .filter(|o| o.contains("1 compiled, 0 cached"))
        .count();
    let cached = outs
        .iter()
        .filter(|o| o.contains("0 compiled, 1 cached"))
        .count();
    assert_eq!(
        (compiled, cached),
        (1, 7),
        "the lock should make exactly one process compile:\n{outs:?}"
    );
    let v = flasheva(dir.path(), &["cache", "verify"]).output().unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains("1 entry verified, 0 damaged"));
}

#[test]
fn eight_processes_importing_and_compiling_the_same_keys() {
    let src = tempfile::tempdir().unwrap();
    assert!(
        flasheva(src.path(), &["compile", "--arch", "sm_90"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let b = src.path().join("b.flasheva");
    assert!(
        flasheva(
            src.path(),
            &["cache", "export", "--out", b.to_str().unwrap()]
        )
        .output()
        .unwrap()
        .status
        .success()
    );
    let dst = tempfile::tempdir().unwrap();
    let mut kids = Vec::new();
    for i in 0..8 {
        kids.push(if i % 2 == 0 {
            flasheva(
                dst.path(),
                &["cache", "import", "--allow-unsigned", b.to_str().unwrap()],
            )
            .spawn()
            .unwrap()
        } else {
            flasheva(dst.path(), &["compile", "--arch", "sm_90", "-j1"])
                .spawn()
                .unwrap()
        });
    }
    finish(kids);
    let v = flasheva(dst.path(), &["cache", "verify"]).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert!(String::from_utf8_lossy(&v.stdout).contains("12 entries verified, 0 damaged"));
    // every key once, each one complete (compiled entries may differ from imported ones only in
    // compile time and date, so compare the key sets and the artifacts)
    let a: Vec<_> = content(src.path())
        .into_keys()
        .filter(|p| p.ends_with("kernel.cubin"))
        .collect();
    let c: Vec<_> = content(dst.path())
        .into_keys()
        .filter(|p| p.ends_with("kernel.cubin"))
        .collect();
    assert_eq!(a, c);
}

fn assert_no_partial_entries(cache: &std::path::Path) {
    let v = flasheva(cache, &["cache", "verify"]).output().unwrap();
    assert!(
        v.status.success(),
        "a partial entry became visible:\n{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

#[test]
fn sigkill_during_compile_leaves_no_partial_entry() {
    let dir = tempfile::tempdir().unwrap();
    for delay_ms in [300u64, 900, 1700] {
        let mut c = flasheva(
            dir.path(),
            &[
                "compile",
                "--preset",
                "llama",
                "--arch",
                "sm_80,sm_86,sm_89,sm_90,sm_90a",
            ],
        )
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        assert_no_partial_entries(dir.path());
    }
    // the next run completes the cache
    let o = flasheva(
        dir.path(),
        &["compile", "--preset", "llama", "--arch", "sm_90"],
    )
    .output()
    .unwrap();
    assert!(o.status.success());
    assert_no_partial_entries(dir.path());
}

#[test]
fn sigkill_during_import_leaves_no_partial_entry() {
    let src = tempfile::tempdir().unwrap();
    assert!(
        flasheva(src.path(), &["compile", "--arch", "sm_80,sm_90"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let b = src.path().join("b.flasheva");
    assert!(
        flasheva(
            src.path(),
            &["cache", "export", "--out", b.to_str().unwrap()]
        )
        .output()
        .unwrap()
        .status
        .success()
    );
    let dst = tempfile::tempdir().unwrap();
    for delay_ms in [2u64, 10, 30, 60, 120] {
        let mut c = flasheva(
            dst.path(),
            &["cache", "import", "--allow-unsigned", b.to_str().unwrap()],
        )
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = c.kill();
        c.wait().unwrap();
        assert_no_partial_entries(dst.path());
    }
    let o = flasheva(
        dst.path(),
        &["cache", "import", "--allow-unsigned", b.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(o.status.success());
    assert_no_partial_entries(dst.path());
    let a: Vec<_> = content(src.path())
        .into_keys()
        .filter(|p| p.starts_with("v1"))
        .collect();
    let c: Vec<_> = content(dst.path())
        .into_keys()
        .filter(|p| p.starts_with("v1"))
        .collect();
    assert_eq!(a, c);
}

#[test]
fn compiles_and_imports_racing_clear_and_gc_all_succeed_and_leak_nothing() {
    let src = tempfile::tempdir().unwrap();
    let compile: [&str; 10] = [
        "compile",
        "chunk_mean",
        "--head-dim",
        "64",
        "--chunk",
        "8",
        "--arch",
        "sm_80,sm_86,sm_89,sm_90",
        "-j",
        "1",
    ];
    assert!(
        flasheva(src.path(), &compile)
            .output()
            .unwrap()
            .status
            .success()
    );
    let b = src.path().join("b.flasheva");
    let b = b.to_str().unwrap();
    assert!(
        flasheva(src.path(), &["cache", "export", "--out", b])
            .output()
            .unwrap()
            .status
            .success()
    );
    let dst = tempfile::tempdir().unwrap();
    let dst = dst.path();
    assert!(
        flasheva(dst, &["cache", "ls"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let jobs: Vec<Vec<&str>> = vec![
        compile.to_vec(),
        compile.to_vec(),
        vec!["cache", "import", "--allow-unsigned", b],
        vec!["cache", "import", "--allow-unsigned", b],
        vec!["cache", "clear"],
        vec!["cache", "gc", "--max-size", "0", "--include-winners"],
        vec!["cache", "clear"],
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|args| {
                s.spawn(move || {
                    for _ in 0..4 {
                        let o = flasheva(dst, args).output().unwrap();
                        assert!(
                            o.status.success(),
                            "{args:?} failed while racing: {}",
                            String::from_utf8_lossy(&o.stderr)
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    let v = flasheva(dst, &["cache", "verify"]).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let left: Vec<_> = std::fs::read_dir(dst.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
}
