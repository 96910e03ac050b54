//! Fingerprints the kernel sources (templates/, triton/ and the library's Rust sources, src/ but
//! the CLI in src/cli/, whose code decides names, template constants, shared-memory sizes and
//! launch parameters) into
//! `FLASHEVA_KERNELS_SHA`, which `ARTIFACT_VERSION` (src/lib.rs) appends to the crate version:
//! the loader uses only cache entries of its own artifact version, so two builds of one version
//! whose kernels differ never load each other's binaries (run 66: a build loaded another's cubin
//! of the same spec and tile, launched it with its own shared-memory size, and faulted).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn files(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        if p.is_dir() {
            files(&p, skip, out);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("cu" | "cuh" | "py" | "rs")
        ) {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dirs = ["templates", "triton", "src"];
    let skip = root.join("src/cli");
    let mut all = Vec::new();
    for d in dirs {
        println!("cargo:rerun-if-changed={d}");
        files(&root.join(d), &skip, &mut all);
    }
    all.sort();
    let mut h = Sha256::new();
    for p in &all {
        let rel = p
            .strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/");
        let body = std::fs::read(p).unwrap_or_default();
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((body.len() as u64).to_le_bytes());
        h.update(&body);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=FLASHEVA_KERNELS_SHA={hex}");
}
