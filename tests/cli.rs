//! The `flasheva` binary as users run it: exit codes, one-line errors naming what was wrong and
//! what is accepted, deterministic render, compile into a fresh cache then all cache hits,
//! verify on a damaged cache, GPU commands on a machine without a GPU.

mod common;

use std::process::{Command, Output};

use common::bin;

fn run(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("FLASHEVA_CACHE_DIR", cache)
        .env_remove("FLASHEVA_NO_TUNE")
        .output()
        .expect("run flasheva")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Bad input: exit 2, exactly one line on stderr that starts with `flasheva: error:` and holds `needle`.
fn bad_input(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: more than one line:\n{err}"
    );
    assert!(err.starts_with("flasheva: error: "), "{err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_exit_2() {
    let s = ["--window", "128", "--chunk", "8"];
    bad_input(
        &["tune", "--preset", "eva-lm", "--shapes", ""],
        "--shapes '' names no shape",
    );
    bad_input(
        &["tune", "--preset", "eva-lm", "--shapes", " , "],
        "names no shape",
    );
    bad_input(
        &["tune", "--preset", "eva-lm", "--space", "/dev/zero"],
        "--space /dev/zero:",
    );
    bad_input(
        &[
            "render",
            "prefill",
            "--head-dim",
            "80",
            "--window",
            "128",
            "--chunk",
            "8",
        ],
        "unsupported head dim 80: accepted are 32, 64, 96, 128, 256",
    );
    bad_input(
        &[
            "render",
            "prefill",
            "--head-dim",
            "64",
            "--window",
            "100",
            "--chunk",
            "8",
        ],
        "chunk 8 does not divide window 100",
    );
    bad_input(
        &["render", "prefill", "--head-dim", "64", "--chunk", "8"],
        "prefill needs --window",
    );
    bad_input(
        &["render", "attention", "--head-dim", "64"],
        "unknown op 'attention': accepted are chunk_mean, chunk_summarize, prefill, decode",
    );
    bad_input(
        &[
            "render",
            "prefill",
            "--head-dim",
            "64",
            "--local",
            "global",
            s[0],
            s[1],
            s[2],
            s[3],
        ],
        "unknown local 'global': accepted are block, sliding",
    );
    bad_input(
        &[
            "render",
            "prefill",
            "--head-dim",
            "64",
            "--dtype",
            "fp8",
            s[0],
            s[1],
            s[2],
            s[3],
        ],
        "unknown dtype 'fp8': accepted are f16, bf16",
    );
    bad_input(
        &[
            "render",
            "prefill",
            "--head-dim",
            "64",
            "--tile",
            "block_m=48",
            s[0],
            s[1],
            s[2],
            s[3],
        ],
        "block_m = 48 is not accepted",
    );
    bad_input(
        &[
            "render",
            "prefill",
            "--head-dim",
            "256",
            "--tile",
            "block_n=128,stages=3",
            "--arch",
            "sm_89",
            s[0],
            s[1],
            s[2],
            s[3],
        ],
        "allows 99 KiB",
    );
    bad_input(
        &["compile", "--arch", "sm_70"],
        "unknown arch 'sm_70': accepted are sm_80",
    );
    bad_input(
        &["compile", "--preset", "gpt"],
        "unknown preset 'gpt': accepted are eva-lm, llama",
    );
    bad_input(
        &["compile", "--head-dim", "64"],
        "spec flags (--head-dim, --window, ...) need an op",
    );
    bad_input(
        &["bench", "--head-dim", "64"],
        "need an op: flasheva bench <op>",
    );
    bad_input(
        &["tune", "--window", "64", "--dry-run"],
        "need an op: flasheva tune <op>",
    );
    bad_input(
        &[
            "cache",
            "export",
            "--out",
            "/tmp/x.flasheva",
            "--chunk",
            "8",
        ],
        "need an op: flasheva cache export --out FILE <op>",
    );
    bad_input(
        &["compile", "--preset", "llama", "prefill"],
        "cannot be used with",
    );
    bad_input(
        &["compile", "--frobnicate"],
        "unexpected argument '--frobnicate'",
    );
    bad_input(
        &["cache", "show", "zz"],
        "no cache entry has a key starting with 'zz'",
    );
    bad_input(
        &["cache", "gc", "--max-size", "lots"],
        "'lots' is not a size",
    );
    bad_input(
        &["tune", "--shapes", "1y2", "--dry-run"],
        "shape '1y2' is not BxN",
    );
    bad_input(
        &["cache", "import", "/nonexistent.flasheva", "--trust", "abc"],
        "is not a public key",
    );
}

/// Option lines of a clap help text that carry no description: neither text after the flag on the
/// same line nor an indented continuation line below it.
fn undocumented(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        // flags sit in the first columns (clap indents them by 2 or 6); "- name: description"
        // lines list a flag's possible values, and deeper lines are wrapped descriptions
        let indent = line.len() - t.len();
        if !line.starts_with(' ') || !t.starts_with('-') || t.starts_with("- ") || indent > 6 {
            continue;
        }
        // the flag column ends at the first run of two spaces
        let same_line = t
            .split_once("  ")
            .is_some_and(|(_, rest)| !rest.trim().is_empty());
        let next = lines.get(i + 1).copied().unwrap_or("");
        let continued = next.starts_with("    ")
            && !next.trim().is_empty()
            && !next.trim_start().starts_with('-');
        if !same_line && !continued {
            out.push(t.to_string());
        }
    }
    out
}

#[test]
fn the_help_check_finds_an_undocumented_flag() {
    let help = "Options:\n      --good <X>  does things\n      --long-one <Y>\n          described below\n      --bare <Z>\n  -h, --help  Print help\n";
    assert_eq!(undocumented(help), vec!["--bare <Z>".to_string()]);
}

#[test]
fn help_documents_every_flag() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["--help"],
        vec!["compile", "--help"],
        vec!["render", "--help"],
        vec!["cache", "--help"],
        vec!["run", "--help"],
        vec!["bench", "--help"],
        vec!["tune", "--help"],
        vec!["cache", "export", "--help"],
        vec!["cache", "import", "--help"],
    ] {
        let o = run(dir.path(), &cmd);
        assert!(o.status.success(), "{cmd:?}");
        let (out, _) = text(&o);
        assert!(out.contains("Options:"), "{cmd:?}");
        assert_eq!(undocumented(&out), Vec::<String>::new(), "{cmd:?}");
    }
}

#[test]
fn render_is_deterministic_and_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "render",
        "decode",
        "--head-dim",
        "128",
        "--window",
        "512",
        "--chunk",
        "64",
        "--group",
        "4",
        "--local",
        "sliding",
    ];
    let a = run(dir.path(), &args);
    let b = run(dir.path(), &args);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    let src = String::from_utf8(a.stdout).unwrap();
    assert!(src.contains("flasheva_decode_d128_w512_c64_sliding_bf16_g4_combine"));
    assert!(!src.contains("#include"));
}

#[test]
fn compile_fills_the_cache_then_hits_and_verify_reports_damage() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["compile", "--arch", "sm_80,sm_90"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("24 compiled, 0 cached, 0 failed"), "{out}");
    let o = run(dir.path(), &["compile", "--arch", "sm_80,sm_90"]);
    let (out, _) = text(&o);
    assert!(out.contains("0 compiled, 24 cached, 0 failed"), "{out}");
    let o = run(dir.path(), &["cache", "verify"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("24 entries verified, 0 damaged"));
    let ls = run(dir.path(), &["cache", "ls"]);
    let (out, _) = text(&ls);
    assert!(out.contains("24 entries"), "{out}");
    let key = out
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let show = run(dir.path(), &["cache", "show", &key]);
    assert!(show.status.success());
    assert!(text(&show).0.contains("\"entry_points\""));
    // damage one cubin: verify fails with exit 1 and names it; compile replaces it with a warning
    let cubin = walk(dir.path())
        .into_iter()
        .find(|p| p.ends_with("kernel.cubin"))
        .unwrap();
    let mut b = std::fs::read(&cubin).unwrap();
    b[100] ^= 0xff;
    std::fs::write(&cubin, b).unwrap();
    let o = run(dir.path(), &["cache", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = text(&o);
    assert!(
        out.contains("DAMAGED") && out.contains("kernel.cubin does not match its sha256"),
        "{out}"
    );
    assert!(
        err.starts_with("flasheva: error: 1 damaged cache entry"),
        "{err}"
    );
    let o = run(dir.path(), &["compile", "--arch", "sm_80,sm_90"]);
    let (out, err) = text(&o);
    assert!(out.contains("1 compiled, 23 cached, 0 failed"), "{out}");
    assert!(
        err.contains("warning") && err.contains("treated as a miss"),
        "{err}"
    );
    assert!(run(dir.path(), &["cache", "verify"]).status.success());
    let o = run(dir.path(), &["cache", "clear"]);
    assert!(text(&o).0.contains("removed 24 entries"));
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v.sort();
    v
}

#[test]
fn gpu_commands_say_clearly_when_there_is_no_gpu() {
    if flasheva::gpu::driver::probe().is_ok() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"this machine has a GPU: the no-GPU messages are not checked here\n",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // the input lives beside the cache, not in it (a cache folder holds only what flasheva writes)
    let inputs = tempfile::tempdir().unwrap();
    let f = inputs.path().join("in.safetensors");
    std::fs::write(&f, b"not used").unwrap();
    for args in [
        vec![
            "bench",
            "prefill",
            "--head-dim",
            "64",
            "--window",
            "128",
            "--chunk",
            "8",
        ],
        vec!["tune", "--preset", "eva-lm"],
    ] {
        let o = run(dir.path(), &args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            err.contains("needs a CUDA GPU") && err.contains("no CUDA"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // run checks its inputs before it needs the GPU
    let o = run(
        dir.path(),
        &[
            "run",
            "prefill",
            "--input",
            f.to_str().unwrap(),
            "--output",
            "/tmp/x",
            "--window",
            "128",
            "--chunk",
            "8",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("is not a safetensors file"));
    // the dry run needs no GPU
    let o = run(dir.path(), &["tune", "--preset", "llama", "--dry-run"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("keep (default, trusted)") && out.contains("pruned: "),
        "{out}"
    );
    // doctor reports, and succeeds
    let o = run(dir.path(), &["doctor"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.contains("nvrtc:  13.") && out.contains("driver: no CUDA driver"),
        "{out}"
    );
}

#[test]
fn run_names_missing_and_misshapen_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.safetensors");
    let q = vec![0u8; 2 * 4 * 2 * 64 * 2];
    let k = vec![0u8; (2 * 4) * 64 * 2];
    let tensors = vec![
        (
            "q".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2, 4, 2, 64], &q)
                .unwrap(),
        ),
        (
            "k".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2, 4, 64], &k)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &f).unwrap();
    let common = [
        "--input",
        f.to_str().unwrap(),
        "--output",
        "/tmp/out.safetensors",
        "--window",
        "128",
        "--chunk",
        "8",
    ];
    let o = run(dir.path(), &[&["run", "prefill"][..], &common[..]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o)
            .1
            .contains("tensor k has shape [2, 4, 64], expected [B, N, Hkv, D]"),
        "{}",
        text(&o).1
    );
    let o = run(
        dir.path(),
        &[&["run", "chunk_mean"][..], &common[..]].concat(),
    );
    assert!(
        text(&o).1.contains("has no tensor 'x': chunk_mean reads x"),
        "{}",
        text(&o).1
    );
}

/// `flasheva render ... | head -1`: the reader is gone before flasheva writes (its end of the pipe
/// is closed before the process starts, so every write meets a broken pipe); flasheva ends quietly
/// with exit code 0 instead of panicking ("failed printing to stdout", exit 101).
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin())
        .args([
            "render",
            "prefill",
            "--head-dim",
            "64",
            "--window",
            "64",
            "--chunk",
            "8",
        ])
        .env("FLASHEVA_CACHE_DIR", dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every listing has a JSON form a script can parse, naming its schema; commands without one
/// refuse `--format json` as bad input; `doctor --check` fails when something is wrong.
#[test]
fn listings_have_json_forms_and_doctor_check_fails_on_problems() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let json = |args: &[&str]| -> serde_json::Value {
        let o = run(&cache, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o).1);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&o).0))
    };
    // nothing there yet: still a document
    let ls = json(&["--format", "json", "cache", "ls"]);
    assert_eq!(ls["schema"], "flasheva/cache-ls/1");
    assert_eq!(ls["exists"], false);
    let c = json(&[
        "--format",
        "json",
        "compile",
        "chunk_mean",
        "--head-dim",
        "64",
        "--chunk",
        "8",
        "--arch",
        "sm_80",
    ]);
    assert_eq!(c["schema"], "flasheva/compile/1");
    assert_eq!(
        (c["compiled"].as_u64(), c["failed"].as_u64()),
        (Some(1), Some(0))
    );
    let key = c["results"][0]["key"].as_str().unwrap().to_string();
    let ls = json(&["--format", "json", "cache", "ls"]);
    assert_eq!(ls["entries"][0]["key"], key.as_str());
    assert_eq!(ls["entries"][0]["spec"]["op"], "chunk_mean");
    let show = json(&["--format", "json", "cache", "show", &key[..8]]);
    assert_eq!(show["schema"], "flasheva/cache-show/1");
    assert_eq!(show["meta"]["key"], key.as_str());
    let v = json(&["--format", "json", "cache", "verify"]);
    assert_eq!(
        (
            v["verified"].as_u64(),
            v["damaged"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );
    let d = json(&["--format", "json", "doctor"]);
    assert_eq!(d["schema"], "flasheva/doctor/1");
    assert_eq!(d["cache"]["entries"], 1);
    assert!(
        d["config"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "FLASHEVA_NO_TUNE")
    );
    // tune --dry-run needs no GPU: the plan, default tile first, every pruned tile with a reason
    let plan = json(&[
        "--format",
        "json",
        "tune",
        "prefill",
        "--head-dim",
        "128",
        "--window",
        "512",
        "--chunk",
        "64",
        "--dry-run",
        "--arch",
        "sm_80",
    ]);
    assert_eq!(plan["schema"], "flasheva/tune-plan/1");
    let w0 = &plan["workloads"][0];
    assert!(
        w0["spec"]
            .as_str()
            .unwrap()
            .starts_with("flasheva_prefill_d128_w512_c64")
    );
    assert!(!w0["keep"].as_array().unwrap().is_empty());
    assert!(
        w0["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["reason"].as_str().unwrap().is_empty())
    );
    bad_input(
        &[
            "--format",
            "json",
            "render",
            "prefill",
            "--head-dim",
            "64",
            "--window",
            "64",
            "--chunk",
            "8",
        ],
        "--format json is not available for render",
    );
    // ... nor for the cache commands that act (refused before they act)
    let acting = tempfile::tempdir().unwrap();
    let acting_cache = acting.path().to_str().unwrap();
    for args in [
        vec!["cache", "clear"],
        vec!["cache", "gc", "--max-size", "0"],
        vec!["cache", "keygen", "--out", "k.key"],
    ] {
        let mut all = vec!["--format", "json", "--cache-dir", acting_cache];
        all.extend(args.iter().copied());
        bad_input(
            &all,
            &format!("--format json is not available for {}", args[..2].join(" ")),
        );
    }
    // a refused environment value is a problem doctor --check reports
    let o = Command::new(bin())
        .args(["doctor", "--check"])
        .env("FLASHEVA_CACHE_DIR", &cache)
        .env("FLASHEVA_NO_TUNE", "maybe")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
    assert!(
        text(&o).1.contains("FLASHEVA_NO_TUNE=\"maybe\""),
        "{}",
        text(&o).1
    );
}

/// Shell completions come from the same flag definitions as the help.
#[test]
fn completions_for_every_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = run(dir.path(), &["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o).1);
        let (script, _) = text(&o);
        assert!(
            script.contains("flasheva") && script.contains("cache-dir"),
            "{shell}"
        );
    }
    bad_input(&["completions", "tcsh"], "invalid value 'tcsh'");
}

/// scripts/decode_timeline.py patches timestamps into the rendered decode at marker lines: when a
/// template edit moves one, the script must fail here, not on the GPU machine.
#[test]
fn the_decode_timeline_script_still_instruments_the_decode() {
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/decode_timeline.py"
        ))
        .args(["--flasheva", bin().to_str().unwrap(), "--compile-only"])
        .output()
        .expect("run python3 (the scripts need it)");
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "decode_timeline.py failed:\n{out}\n{err}"
    );
    assert!(out.contains("compiled"), "{out}");
}
