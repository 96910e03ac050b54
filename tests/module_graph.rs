//! The crate's modules form a one-way graph: each layer may use only the layers below it.
//!
//! ```text
//! core (spec, tile, target, key, tensor, visibility, workload, ops, config, presets, hostdata,
//!       reference, render) → compile → cache → gpu → loader (with error, pipeline)
//!       → verify, bench → tune → cli
//! ```
//!
//! This test reads every `crate::` path in `src/` and fails on an upward one, naming the file,
//! the line and the layers, so the picture stays true as the crate grows.

use std::path::{Path, PathBuf};

/// Layer of a top-level module (the first segment after `crate::`).
fn layer(module: &str) -> Option<(usize, &'static str)> {
    Some(match module {
        "config" | "spec" | "tile" | "target" | "key" | "tensor" | "visibility" | "workload"
        | "ops" | "presets" | "hostdata" | "reference" | "render" | "CRATE_VERSION"
        | "ARTIFACT_VERSION" | "Key" | "KernelSpec" | "Tile" | "Arch" | "DType" | "LocalMode"
        | "Op" | "SpecParams" => (0, "core"),
        "compile" => (1, "compile"),
        "cache" => (2, "cache"),
        "gpu" => (3, "gpu"),
        "error" | "Error" | "Result" | "pipeline" | "loader" => (4, "loader"),
        "verify" | "bench" => (5, "verify"),
        "tune" => (6, "tune"),
        "cli" => (7, "cli"),
        _ => return None,
    })
}

/// The module a source file belongs to (its first path component under src/).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty").as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::<module>` a line mentions, outside comments.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let skip = name.len();
        if !name.is_empty() {
            out.push(name);
        } else if let Some(braced) = after.strip_prefix('{') {
            // `use crate::{a, b::c}`: every first segment in the braces
            let inner = braced.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let seg: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !seg.is_empty() {
                    out.push(seg);
                }
            }
        }
        rest = &after[skip..];
    }
    out
}

fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in files {
        let m = module_of(src, &f);
        if m == "lib" || m == "main" {
            continue;
        }
        let Some((own, own_name)) = layer(&m) else {
            bad.push(format!(
                "{}: module {m} has no layer in tests/module_graph.rs",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read");
        let mut in_tests = false;
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                in_tests = true; // unit tests may use anything
            }
            if in_tests {
                break;
            }
            for target in crate_paths(line) {
                if let Some((l, name)) = layer(&target)
                    && l > own
                {
                    bad.push(format!(
                        "{}:{}: {m} ({own_name}) uses crate::{target} ({name}), a layer above it",
                        f.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn the_check_catches_an_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("spec.rs"), "use crate::loader::Kernel;\n").unwrap();
    std::fs::create_dir(src.join("cache")).unwrap();
    std::fs::write(
        src.join("cache/store.rs"),
        "use crate::{key::Key, gpu::driver};\n// crate::tune in a comment is fine\n",
    )
    .unwrap();
    std::fs::write(src.join("verify.rs"), "use crate::loader::Kernel;\n").unwrap();
    let bad = violations(src);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("cache (cache) uses crate::gpu (gpu)"),
        "{}",
        bad[0]
    );
    assert!(
        bad[1].contains("spec (core) uses crate::loader (loader)"),
        "{}",
        bad[1]
    );
}
