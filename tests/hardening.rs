//! Issue 15, one test per numbered defect (`dNN_…`): the cache and bundles under attack. Caches
//! are built with the fake compiler; the `flasheva` binary runs the commands a user would, with
//! a deadline, so a command that blocks or reads forever fails the test instead of hanging it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fake::Fake;
use common::{bin, cheap_spec, content, winner};
use flasheva::cache::bundle::{self, ExportOptions, ImportOptions};
use flasheva::cache::meta::EntryMeta;
use flasheva::cache::{CacheStore, Damage, FileDigest, layout};
use flasheva::pipeline::{Built, Pipeline, Status};
use flasheva::{Arch, Tile};

// ---------------------------------------------------------------------------------------------
// helpers

/// Runs the binary on `cache` with a deadline; a process still running then is killed and the
/// test fails (it blocked).
fn run_env(cache: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .env("FLASHEVA_CACHE_DIR", cache)
        .env_remove("FLASHEVA_TRUSTED_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "flasheva {args:?} was still running after {limit:?} (it blocked or read without bound): {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(cache: &Path, args: &[&str]) -> Output {
    run_env(cache, args, &[], Duration::from_secs(60))
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A cache holding `n` chunk_mean entries (chunks 1..=n, sm_90) built by the fake compiler.
fn fake_cache(n: u32) -> (tempfile::TempDir, CacheStore, Vec<Built>) {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path().join("cache")).unwrap();
    let built = fill(&store, n);
    (dir, store, built)
}

fn fill(store: &CacheStore, n: u32) -> Vec<Built> {
    let fake = Fake::new();
    let p = Pipeline::new(store, &fake);
    let arch = Arch::new(9, 0);
    (1..=n)
        .map(|c| {
            let s = cheap_spec(c);
            p.ensure(&s, &Tile::default_for(&s, arch), arch).unwrap()
        })
        .collect()
}

fn allow() -> ImportOptions<'static> {
    ImportOptions::default().allow_unsigned(true)
}

/// Every member (name, bytes) of a bundle, in order.
fn members(file: &Path) -> Vec<(String, Vec<u8>)> {
    let dec = zstd::Decoder::new(fs::File::open(file).unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    let mut v = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut d = Vec::new();
        e.read_to_end(&mut d).unwrap();
        v.push((name, d));
    }
    v
}

/// Writes members as a bundle does (ustar headers, in order).
fn write_bundle(path: &Path, files: &[(String, Vec<u8>)]) {
    let enc = zstd::Encoder::new(fs::File::create(path).unwrap(), 3).unwrap();
    let mut t = tar::Builder::new(enc);
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append(&h, data.as_slice()).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap();
}

/// Rewrites the manifest (member 0) with `f`.
fn edit_manifest(files: &mut [(String, Vec<u8>)], f: impl FnOnce(&mut serde_json::Value)) {
    let mut m: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    f(&mut m);
    files[0].1 = serde_json::to_vec(&m).unwrap();
}

/// Replaces one entry's meta.json by `edit(meta)` resealed, and fixes the manifest's digest of
/// it: what an attacker without a signing key can do.
fn reseal_meta(files: &mut [(String, Vec<u8>)], entry: usize, edit: impl FnOnce(&mut EntryMeta)) {
    let mut metas: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].0.ends_with("/meta.json"))
        .collect();
    metas.sort();
    let i = metas[entry];
    let mut meta: EntryMeta = serde_json::from_slice(&files[i].1).unwrap();
    edit(&mut meta);
    let meta = meta.sealed();
    files[i].1 = serde_json::to_vec_pretty(&meta).unwrap();
    let name = files[i].0.clone();
    let digest = FileDigest::of(&files[i].1);
    edit_manifest(files, |m| {
        for e in m["entries"].as_array_mut().unwrap() {
            if name.starts_with(e["dir"].as_str().unwrap()) {
                e["files"]["meta.json"] = serde_json::to_value(&digest).unwrap();
            }
        }
    });
}

/// Sets the manifest's digest of member `name` to that of `data`.
fn set_digest(files: &mut [(String, Vec<u8>)], name: &str, data: &[u8]) {
    let digest = FileDigest::of(data);
    edit_manifest(files, |m| {
        for e in m["entries"].as_array_mut().unwrap() {
            let dir = e["dir"].as_str().unwrap().to_string();
            if let Some(file) = name.strip_prefix(&format!("{dir}/")) {
                e["files"][file] = serde_json::to_value(&digest).unwrap();
            }
        }
    });
}

fn staged_leftovers(store: &CacheStore) -> Vec<String> {
    fs::read_dir(store.layout().tmp_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn set_old(p: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(p)
        .or_else(|_| fs::File::open(p))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// A tree of user files: (root, every file with its bytes).
fn user_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fs::create_dir_all(root.join("a/b/c").join("0".repeat(64))).unwrap();
    let files = [
        root.join("notes.txt"),
        root.join("a/b/c").join("0".repeat(64)).join("meta.json"),
        root.join("a/b/c").join("0".repeat(64)).join("thesis.tex"),
    ];
    for (i, f) in files.iter().enumerate() {
        fs::write(f, format!("precious {i}")).unwrap();
        set_old(f);
    }
    files
        .iter()
        .map(|f| (f.clone(), fs::read(f).unwrap()))
        .collect()
}

fn intact(files: &[(PathBuf, Vec<u8>)]) {
    for (f, b) in files {
        assert_eq!(
            &fs::read(f).unwrap_or_default(),
            b,
            "{} was touched",
            f.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. gc and clear delete data flasheva never wrote

#[test]
fn d01_gc_and_clear_delete_only_what_flasheva_wrote() {
    let (dir, store, _) = fake_cache(2);
    let root = store.root().to_path_buf();
    // old foreign items in tmp/, a symlinked folder under kernels/ and a foreign file in an entry
    let foreign_tmp = root.join("tmp/user-notes.txt");
    fs::write(&foreign_tmp, "mine").unwrap();
    set_old(&foreign_tmp);
    fs::create_dir(root.join("tmp/.tmpAbCdEf")).unwrap();
    let outside = dir.path().join("outside");
    let files = user_files(&outside);
    symlink(&outside, root.join("v1/kernels/flasheva_linked")).unwrap();
    symlink(
        outside.join("a"),
        root.join("v1/kernels")
            .join(cheap_spec(1).name())
            .join("w4x"),
    )
    .unwrap();
    let scanned = store.scan().unwrap();
    let entry_dir = scanned[0].dir.clone();
    fs::write(entry_dir.join("my-results.csv"), "keep me").unwrap();

    let o = run(
        &root,
        &["cache", "gc", "--max-size", "0", "--include-winners"],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("flasheva did not create"), "{}", err(&o));
    let o = run(&root, &["cache", "clear"]);
    assert!(o.status.success(), "{}", err(&o));
    intact(&files);
    assert_eq!(fs::read(&foreign_tmp).unwrap(), b"mine");
    assert!(root.join("tmp/.tmpAbCdEf").is_dir());
    assert_eq!(
        fs::read(entry_dir.join("my-results.csv")).unwrap(),
        b"keep me"
    );
    let left: Vec<PathBuf> = store.scan().unwrap().into_iter().map(|s| s.dir).collect();
    assert_eq!(
        left,
        vec![entry_dir.clone()],
        "only the entry holding a user file is left"
    );

    // tmp/ itself a link: gc and clear do not follow it
    let tmp_target = dir.path().join("tmp-target");
    let tfiles = user_files(&tmp_target);
    fs::rename(root.join("tmp"), dir.path().join("old-tmp")).unwrap();
    symlink(&tmp_target, root.join("tmp")).unwrap();
    run(&root, &["cache", "gc", "--max-size", "0"]);
    run(&root, &["cache", "clear"]);
    intact(&tfiles);

    // v1/ itself a link to a tree that looks like flasheva's: never walked, never deleted in
    let (d2, s2, b2) = fake_cache(1);
    let real = d2.path().join("elsewhere");
    fs::rename(s2.layout().version_dir(), &real).unwrap();
    symlink(&real, s2.layout().version_dir()).unwrap();
    let rel = b2[0]
        .entry
        .dir
        .strip_prefix(s2.layout().version_dir())
        .unwrap()
        .to_path_buf();
    let cubin = real.join(&rel).join(layout::CUBIN_FILE);
    let before = fs::read(&cubin).unwrap();
    run(
        s2.root(),
        &["cache", "gc", "--max-size", "0", "--include-winners"],
    );
    run(s2.root(), &["cache", "clear"]);
    assert_eq!(
        fs::read(&cubin).unwrap(),
        before,
        "deleted through a linked v1/"
    );

    // A folder that is not a flasheva cache: a home folder, or one with an unrelated v1/.
    for setup in ["home", "v1"] {
        let d = tempfile::tempdir().unwrap();
        let files = match setup {
            "home" => user_files(d.path()),
            _ => user_files(&d.path().join("v1/kernels")),
        };
        for args in [
            vec!["cache", "clear"],
            vec!["cache", "gc", "--max-size", "0"],
            vec![
                "cache",
                "import",
                "--allow-unsigned",
                "/nonexistent.flasheva",
            ],
        ] {
            let o = run(d.path(), &args);
            assert_eq!(o.status.code(), Some(2), "{setup} {args:?}: {}", err(&o));
            assert!(err(&o).contains("is not a flasheva cache"), "{}", err(&o));
            assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
        }
        intact(&files);
        assert!(!d.path().join(layout::MARKER_FILE).exists());
    }
    // A new or empty folder becomes a tagged cache, recognized afterwards.
    let d = tempfile::tempdir().unwrap();
    let s = CacheStore::open(d.path()).unwrap();
    let tag = fs::read_to_string(s.layout().tag_file()).unwrap();
    assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
    assert!(run(d.path(), &["cache", "clear"]).status.success());
}

// ---------------------------------------------------------------------------------------------
// 2. metadata names files outside the entry

#[test]
fn d02_metadata_cannot_make_flasheva_read_outside_the_entry() {
    let (dir, store, built) = fake_cache(1);
    let secret = dir.path().join("secret");
    fs::write(&secret, "root:x:0:0").unwrap();
    let file = dir.path().join("b.flasheva");
    bundle::export(&store, &file, &ExportOptions::default(), None).unwrap();
    for name in [
        secret.to_string_lossy().into_owned(),
        "../../../../../../../../etc/passwd".to_string(),
        "kernel.ptx/../../x".to_string(),
    ] {
        let mut files = members(&file);
        reseal_meta(&mut files, 0, |m| {
            m.files.insert(name.clone(), FileDigest::of(b"root:x:0:0"));
        });
        let evil = dir.path().join("evil.flasheva");
        write_bundle(&evil, &files);
        let dst = tempfile::tempdir().unwrap();
        let dstore = CacheStore::open(dst.path()).unwrap();
        let e = bundle::import(&dstore, &evil, &allow())
            .unwrap_err()
            .to_string();
        assert!(e.contains("which is not a file of an entry"), "{name}: {e}");
        assert!(dstore.scan().unwrap().is_empty());
    }
    // The same metadata planted in a cache: a damaged entry, never read through, never exported.
    let d = &built[0].entry.dir;
    let meta_path = d.join(layout::META_FILE);
    let mut meta: EntryMeta = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta.files.insert(
        secret.to_string_lossy().into_owned(),
        FileDigest::of(b"root:x:0:0"),
    );
    fs::write(&meta_path, meta.sealed().to_json()).unwrap();
    match store.verify_dir(d) {
        Err(Damage::Files(m)) => assert!(m.contains("not a file of an entry"), "{m}"),
        other => panic!("{other:?}"),
    }
    let out_file = dir.path().join("after.flasheva");
    let s = bundle::export(&store, &out_file, &ExportOptions::default(), None).unwrap();
    assert_eq!((s.entries, s.skipped_damaged), (0, 1));
    let all: Vec<u8> = members(&out_file)
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    assert!(!all.windows(10).any(|w| w == b"root:x:0:0"));
}

// ---------------------------------------------------------------------------------------------
// 3. a small bundle writes gigabytes before any check

/// A zstd tar whose members are (name, declared size, actual bytes as `n` zeros or data).
fn bomb(path: &Path, members: &[(&str, u64, Option<&[u8]>)]) {
    let mut enc = zstd::Encoder::new(fs::File::create(path).unwrap(), 1).unwrap();
    for (name, size, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(*size);
        h.set_mode(0o644);
        h.set_cksum();
        enc.write_all(h.as_bytes()).unwrap();
        match data {
            Some(d) => enc.write_all(d).unwrap(),
            None => {
                let zeros = vec![0u8; 1 << 20];
                let mut left = *size;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    enc.write_all(&zeros[..n]).unwrap();
                    left -= n as u64;
                }
            }
        }
        let pad = (512 - (*size % 512)) % 512;
        enc.write_all(&vec![0u8; pad as usize]).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap();
}

#[test]
fn d03_nothing_is_written_before_the_manifest_and_signature_are_checked() {
    let (dir, store, _) = fake_cache(1);
    let file = dir.path().join("b.flasheva");
    bundle::export(&store, &file, &ExportOptions::default(), None).unwrap();
    let good = members(&file);
    let manifest = good[0].1.clone();
    let big: u64 = 256 << 20;
    let dst = tempfile::tempdir().unwrap();
    let dstore = CacheStore::open(dst.path()).unwrap();
    let check = |b: &Path, opts: &ImportOptions<'_>, expect: &str| {
        let t0 = Instant::now();
        let e = bundle::import(&dstore, b, opts).unwrap_err().to_string();
        assert!(e.contains(expect), "expected {expect:?} in {e}");
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        assert!(
            staged_leftovers(&dstore).is_empty(),
            "{:?}",
            staged_leftovers(&dstore)
        );
        assert!(dstore.scan().unwrap().is_empty());
    };
    // unsigned, no --allow-unsigned: refused on the manifest, the 256 MiB member never read
    let b1 = dir.path().join("b1");
    bomb(
        &b1,
        &[
            ("manifest.json", manifest.len() as u64, Some(&manifest)),
            ("zeros", big, None),
        ],
    );
    check(&b1, &ImportOptions::default(), "it is not signed");
    // a member the manifest does not list: refused before a byte of it is written
    check(&b1, &allow(), "is not in the manifest");
    // a listed member whose header claims more than the manifest declares
    let first = good[1].0.clone();
    let b2 = dir.path().join("b2");
    bomb(
        &b2,
        &[
            ("manifest.json", manifest.len() as u64, Some(&manifest)),
            (&first, big, None),
        ],
    );
    check(&b2, &allow(), "the manifest declares");
    // the manifest itself over its cap
    let b3 = dir.path().join("b3");
    bomb(&b3, &[("manifest.json", big, None)]);
    check(&b3, &allow(), "over the 16777216-byte limit");
    // manifest not first
    let b4 = dir.path().join("b4");
    bomb(
        &b4,
        &[
            ("zeros", big, None),
            ("manifest.json", manifest.len() as u64, Some(&manifest)),
        ],
    );
    check(&b4, &allow(), "has no manifest.json first");
    // a manifest declaring more than the total cap
    let mut files = good.clone();
    edit_manifest(&mut files, |m| {
        for e in m["entries"].as_array_mut().unwrap() {
            for (_, d) in e["files"].as_object_mut().unwrap() {
                d["bytes"] = serde_json::json!(bundle::MAX_MEMBER_BYTES);
            }
        }
        let e = m["entries"][0].clone();
        let arr = m["entries"].as_array_mut().unwrap();
        for i in 0..8u8 {
            let mut e2 = e.clone();
            e2["key"] = serde_json::json!(format!("{:02x}", i).repeat(32));
            arr.push(e2);
        }
    });
    let b5 = dir.path().join("b5");
    write_bundle(&b5, &files);
    let e = bundle::import(&dstore, &b5, &allow())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused"), "{e}");
    assert!(staged_leftovers(&dstore).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. trust fails open

#[test]
fn d04_trust_fails_closed() {
    let (dir, store, _) = fake_cache(1);
    let file = dir.path().join("b.flasheva");
    bundle::export(&store, &file, &ExportOptions::default(), None).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let f = file.to_str().unwrap();
    for blank in [",", " ", " , ,"] {
        let o = run_env(
            dst.path(),
            &["cache", "import", f],
            &[("FLASHEVA_TRUSTED_KEYS", blank)],
            Duration::from_secs(30),
        );
        assert_eq!(o.status.code(), Some(2), "{blank:?}: {}", err(&o));
        assert!(err(&o).contains("FLASHEVA_TRUSTED_KEYS"), "{}", err(&o));
    }
    // no keys at all: an unsigned bundle is refused, with how to trust one
    let o = run(dst.path(), &["cache", "import", f]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(
        err(&o).contains("it is not signed") && err(&o).contains("--trust PUBKEY"),
        "{}",
        err(&o)
    );
    assert!(
        content(dst.path())
            .keys()
            .all(|p| !p.starts_with("v1/kernels/flasheva"))
    );
    // explicitly allowed
    let o = run(dst.path(), &["cache", "import", "--allow-unsigned", f]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("not signed (accepted with --allow-unsigned)"),
        "{}",
        out(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. weak keys

/// The identity point: a small-order ed25519 key.
const IDENTITY: &str = "0100000000000000000000000000000000000000000000000000000000000000";

#[test]
fn d05_weak_keys_are_never_trusted() {
    let (dir, store, _) = fake_cache(1);
    let file = dir.path().join("b.flasheva");
    bundle::export(&store, &file, &ExportOptions::default(), None).unwrap();
    let o = run(
        dir.path().join("dst").as_path(),
        &[
            "cache",
            "import",
            "--trust",
            IDENTITY,
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("weak ed25519 key"), "{}", err(&o));
    let e = bundle::parse_public_key(IDENTITY).unwrap_err().to_string();
    assert!(e.contains("weak"), "{e}");
    // A "signature" made without any secret for the identity key (R = identity, s = 0).
    let mut files = members(&file);
    let sig = bundle::SignatureFile {
        public_key: IDENTITY.into(),
        signature: format!("{IDENTITY}{}", "00".repeat(32)),
    };
    files.insert(
        1,
        ("manifest.sig".into(), serde_json::to_vec(&sig).unwrap()),
    );
    let forged = dir.path().join("forged.flasheva");
    write_bundle(&forged, &files);
    let dst = tempfile::tempdir().unwrap();
    let dstore = CacheStore::open(dst.path()).unwrap();
    for opts in [allow(), ImportOptions::default()] {
        let e = bundle::import(&dstore, &forged, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("weak"), "{e}");
    }
    assert!(dstore.scan().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 6. an unsigned bundle replaces a legitimate artifact; impossible specs, duplicate keys, escapes

#[test]
fn d06_bundles_cannot_replace_or_forge_artifacts() {
    let (dir, store, built) = fake_cache(2);
    let file = dir.path().join("b.flasheva");
    bundle::export(&store, &file, &ExportOptions::default(), None).unwrap();
    let good = members(&file);
    let cubin = good
        .iter()
        .position(|(n, _)| n.ends_with("kernel.cubin"))
        .unwrap();
    let mut evil = good.clone();
    evil[cubin].1[100] ^= 0xff;
    let data = evil[cubin].1.clone();
    let name = evil[cubin].0.clone();
    set_digest(&mut evil, &name, &data);
    reseal_meta(&mut evil, 0, |m| {
        m.files.insert("kernel.cubin".into(), FileDigest::of(&data));
    });
    let evil_file = dir.path().join("evil.flasheva");
    write_bundle(&evil_file, &evil);
    // by default: refused (unsigned)
    let before = content(store.root());
    let e = bundle::import(&store, &evil_file, &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("it is not signed"), "{e}");
    // allowed explicitly: the valid entry of that key is kept, never replaced
    let r = bundle::import(&store, &evil_file, &allow()).unwrap();
    assert_eq!((r.added, r.present), (0, 2));
    assert_eq!(before, content(store.root()));
    // rebuild check: the altered cubin is not what the compiler makes of the source
    let dst = tempfile::tempdir().unwrap();
    let dstore = CacheStore::open(dst.path()).unwrap();
    let fake = Fake::new();
    let e = bundle::import(
        &dstore,
        &evil_file,
        &ImportOptions::default().rebuild(Some(&fake)),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("kernel.cubin differs"), "{e}");
    assert!(dstore.scan().unwrap().is_empty());
    // an honest bundle passes the rebuild check
    let r = bundle::import(
        &dstore,
        &file,
        &ImportOptions::default().rebuild(Some(&fake)),
    )
    .unwrap();
    assert_eq!((r.added, r.rebuilt), (2, 2));

    let refused = |files: &[(String, Vec<u8>)], expect: &str| {
        let p = dir.path().join("x.flasheva");
        write_bundle(&p, files);
        let d = tempfile::tempdir().unwrap();
        let s = CacheStore::open(d.path()).unwrap();
        let e = bundle::import(&s, &p, &allow()).unwrap_err().to_string();
        assert!(e.contains(expect), "expected {expect:?} in {e}");
        assert!(s.scan().unwrap().is_empty());
    };
    // specs and tiles the CLI rejects
    for (field, value, expect) in [
        ("head_dim", 0, "unsupported head dim 0"),
        ("chunk", 0, "chunk 0 is out of range"),
    ] {
        let mut f = good.clone();
        edit_manifest(&mut f, |m| {
            m["entries"][0]["spec"][field] = serde_json::json!(value)
        });
        refused(&f, expect);
    }
    let mut f = good.clone();
    edit_manifest(&mut f, |m| {
        m["entries"][0]["tile"]["warps"] = serde_json::json!(3)
    });
    refused(&f, "warps");
    // two folders claiming one key
    let mut f = good.clone();
    edit_manifest(&mut f, |m| {
        let e = m["entries"][0].clone();
        m["entries"].as_array_mut().unwrap().push(e);
    });
    refused(&f, "several entries claim key");
    // a key that is not the key of the entry's inputs (another source, resealed)
    let mut f = good.clone();
    let src = f
        .iter()
        .position(|(n, _)| n.ends_with("source.cu"))
        .unwrap();
    f[src].1.extend_from_slice(b"\n// evil\n");
    let (n, d) = f[src].clone();
    set_digest(&mut f, &n, &d);
    reseal_meta(&mut f, 0, |m| {
        m.files.insert("source.cu".into(), FileDigest::of(&d));
    });
    refused(&f, "its key is not the key of its inputs");
    // terminal escapes in names: refused in metadata, escaped wherever a name is printed
    let mut f = good.clone();
    reseal_meta(&mut f, 0, |m| {
        m.compiler.name = "\x1b]0;pwned\x07fake".into()
    });
    refused(&f, "text flasheva does not write");
    let spec_dir = built[0]
        .entry
        .dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    fs::create_dir(spec_dir.join("\x1b[2J\x1b]0;owned\x07")).unwrap();
    for args in [["cache", "verify"], ["cache", "ls"]] {
        let o = run(store.root(), &args);
        let text = [o.stdout.clone(), o.stderr.clone()].concat();
        assert!(
            !text.contains(&0x1b) && !text.contains(&0x07),
            "{args:?}: {}",
            String::from_utf8_lossy(&text)
        );
    }
    let o = run(store.root(), &["cache", "verify"]);
    assert!(err(&o).contains("\\u{1b}[2J"), "{}", err(&o));
}

// ---------------------------------------------------------------------------------------------
// 7. export --out replaces whatever is at the path

#[test]
fn d07_export_writes_only_new_or_regular_files() {
    let (dir, store, _) = fake_cache(1);
    let root = store.root();
    let target = dir.path().join("target.txt");
    fs::write(&target, "do not replace me").unwrap();
    let link = dir.path().join("link.flasheva");
    symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo.flasheva");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for p in [
        link.to_str().unwrap(),
        fifo.to_str().unwrap(),
        "/dev/null",
        dir.path().to_str().unwrap(),
    ] {
        let o = run_env(
            root,
            &["cache", "export", "--out", p],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(o.status.code(), Some(2), "{p}: {}", err(&o));
        assert!(
            err(&o).contains("writes bundles only to a new or regular file"),
            "{}",
            err(&o)
        );
    }
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "do not replace me");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(&fifo).unwrap().file_type()
    ));
    // a regular file is replaced; "-" is standard output, on purpose
    let reg = dir.path().join("old.flasheva");
    fs::write(&reg, "old").unwrap();
    assert!(
        run(root, &["cache", "export", "--out", reg.to_str().unwrap()])
            .status
            .success()
    );
    let o = run(root, &["cache", "export", "--out", "-"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        &o.stdout[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "zstd magic on stdout"
    );
    assert!(!root.join("-").exists() && !Path::new("-").exists());
    let piped = dir.path().join("piped.flasheva");
    fs::write(&piped, &o.stdout).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let r = bundle::import(&CacheStore::open(dst.path()).unwrap(), &piped, &allow()).unwrap();
    assert_eq!(r.added, 1);
}

// ---------------------------------------------------------------------------------------------
// 8. a FIFO in place of an entry file blocks

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn d08_special_files_in_entries_are_damage_and_never_block() {
    for file in [layout::CUBIN_FILE, layout::META_FILE, layout::SOURCE_FILE] {
        let (dir, store, built) = fake_cache(1);
        let d = &built[0].entry.dir;
        fs::remove_file(d.join(file)).unwrap();
        mkfifo(&d.join(file));
        let limit = Duration::from_secs(20);
        let o = run_env(store.root(), &["cache", "verify"], &[], limit);
        assert_eq!(o.status.code(), Some(1), "{file}");
        assert!(
            out(&o).contains("a FIFO, not a regular file"),
            "{file}: {}",
            out(&o)
        );
        let o = run_env(store.root(), &["cache", "ls"], &[], limit);
        assert!(
            o.status.success() && out(&o).contains("DAMAGED"),
            "{}",
            out(&o)
        );
        let b = dir.path().join("b.flasheva");
        let o = run_env(
            store.root(),
            &["cache", "export", "--out", b.to_str().unwrap()],
            &[],
            limit,
        );
        assert!(err(&o).contains("damaged and left out"), "{}", err(&o));
        // the next compile replaces it (the FIFO is unlinked, never opened)
        let s = built[0].entry.meta.spec;
        let arch = built[0].entry.meta.arch;
        let fake = Fake::new();
        let again = Pipeline::new(&store, &fake)
            .ensure(&s, &built[0].entry.meta.tile, arch)
            .unwrap();
        assert_eq!(again.status, Status::Compiled);
        assert!(again.warnings[0].contains("FIFO"), "{:?}", again.warnings);
        assert!(run(store.root(), &["cache", "verify"]).status.success());
    }
}

// ---------------------------------------------------------------------------------------------
// 9. unbounded reads

#[test]
fn d09_every_read_is_bounded() {
    let (dir, store, built) = fake_cache(1);
    let e = &built[0].entry;
    // an entry file linked to /dev/zero: never followed
    fs::remove_file(e.dir.join(layout::PTX_FILE)).unwrap();
    symlink("/dev/zero", e.dir.join(layout::PTX_FILE)).unwrap();
    let o = run_env(
        store.root(),
        &["cache", "verify"],
        &[],
        Duration::from_secs(20),
    );
    assert!(
        out(&o).contains("kernel.ptx is a symbolic link"),
        "{}",
        out(&o)
    );
    // an entry file grown to 64 GiB (sparse): its size is checked before a byte is read
    let cubin = e.dir.join(layout::CUBIN_FILE);
    fs::OpenOptions::new()
        .write(true)
        .open(&cubin)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let t0 = Instant::now();
    match store.read_verified(e, layout::CUBIN_FILE) {
        Err(flasheva::cache::CacheError::Damaged {
            damage: Damage::Size { actual, .. },
            ..
        }) => {
            assert_eq!(actual, 64 << 30)
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    // key files: a device, a FIFO, a huge file
    let huge = dir.path().join("huge.key");
    fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    let fifo = dir.path().join("fifo.key");
    mkfifo(&fifo);
    let b = dir.path().join("x.flasheva");
    for (flag, path, expect) in [
        ("--sign", "/dev/zero", "not a regular file"),
        (
            "--sign",
            fifo.to_str().unwrap(),
            "a FIFO, not a regular file",
        ),
        ("--sign", huge.to_str().unwrap(), "over the 4096-byte limit"),
    ] {
        let o = run_env(
            store.root(),
            &["cache", "export", "--out", b.to_str().unwrap(), flag, path],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(o.status.code(), Some(2), "{path}: {}", err(&o));
        assert!(err(&o).contains(expect), "{path}: {}", err(&o));
    }
    for path in [huge.to_str().unwrap(), fifo.to_str().unwrap(), "/dev/zero"] {
        let o = run_env(
            store.root(),
            &["cache", "import", "--trust", path, "/nonexistent"],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(o.status.code(), Some(2), "{path}: {}", err(&o));
    }
    // compile -j: bounded, refused at once
    let o = run_env(
        store.root(),
        &["compile", "-j", "1099511627776"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("from 1 to 256"), "{}", err(&o));
    let o = run_env(
        store.root(),
        &["compile", "-j", "0"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    // the bundle itself must be a regular file
    let o = run_env(
        store.root(),
        &["cache", "import", "--allow-unsigned", "/dev/zero"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("not a regular file"), "{}", err(&o));
}

// ---------------------------------------------------------------------------------------------
// 10. races and leaks; imports all-or-nothing

#[test]
fn d10_clear_racing_compiles_fails_nothing_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let arch = Arch::new(9, 0);
    std::thread::scope(|sc| {
        let clearer = sc.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                store.clear().unwrap();
                n += 1;
            }
            n
        });
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let store = &store;
                sc.spawn(move || {
                    let mut fake = Fake::new();
                    fake.delay = Duration::from_millis(1);
                    let p = Pipeline::new(store, &fake);
                    for round in 0..3 {
                        for c in 1..=12u32 {
                            let s = cheap_spec(c);
                            p.ensure(&s, &Tile::default_for(&s, arch), arch)
                                .unwrap_or_else(|e| panic!("worker {w} round {round}: {e}"));
                        }
                    }
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(clearer.join().unwrap() > 0);
        for r in results {
            r.unwrap();
        }
    });
    assert!(
        staged_leftovers(&store).is_empty(),
        "{:?}",
        staged_leftovers(&store)
    );
    assert!(store.scan().unwrap().iter().all(|s| s.entry.is_ok()));
}

#[test]
fn d10_a_failed_write_leaks_nothing_and_installs_nothing() {
    // an entry whose parent folder cannot be created
    let (_dir, store, _) = fake_cache(0);
    let s = cheap_spec(8);
    fs::write(
        store.layout().kernels_dir().join(s.name()),
        "a file, not a folder",
    )
    .unwrap();
    let arch = Arch::new(9, 0);
    let fake = Fake::new();
    assert!(
        Pipeline::new(&store, &fake)
            .ensure(&s, &Tile::default_for(&s, arch), arch)
            .is_err()
    );
    assert!(
        staged_leftovers(&store).is_empty(),
        "{:?}",
        staged_leftovers(&store)
    );
    // an import whose winner record cannot be written installs no entry either
    let (sdir, src, built) = fake_cache(3);
    let m = &built[2].entry.meta;
    src.put_winner(&winner(&m.spec, m.tile, Some(m.key), 0.5))
        .unwrap();
    let file = sdir.path().join("b.flasheva");
    bundle::export(&src, &file, &ExportOptions::default(), None).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let dstore = CacheStore::open(dst.path()).unwrap();
    fs::create_dir_all(dstore.layout().winners_dir()).unwrap();
    fs::write(
        dstore.layout().winners_dir().join(m.spec.name()),
        "in the way",
    )
    .unwrap();
    assert!(bundle::import(&dstore, &file, &allow()).is_err());
    assert!(
        dstore.scan().unwrap().is_empty(),
        "entries installed by a failed import"
    );
    // ... nor when the record's file is a folder (refused before the commit, not half-done after)
    fs::remove_file(dstore.layout().winners_dir().join(m.spec.name())).unwrap();
    let rec = winner(&m.spec, m.tile, Some(m.key), 0.5);
    fs::create_dir_all(dstore.winner_path(&rec)).unwrap();
    let e = bundle::import(&dstore, &file, &allow())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("where the import would put a winner record"),
        "{e}"
    );
    assert!(
        dstore.scan().unwrap().is_empty(),
        "entries installed by a failed import"
    );
    assert!(
        staged_leftovers(&dstore).is_empty(),
        "{:?}",
        staged_leftovers(&dstore)
    );
}

#[test]
fn d10_sigkill_during_import_is_all_or_nothing() {
    let n = 150;
    let (sdir, src, _) = fake_cache(n);
    let file = sdir.path().join("b.flasheva");
    bundle::export(&src, &file, &ExportOptions::default(), None).unwrap();
    let f = file.to_str().unwrap();
    let dst = tempfile::tempdir().unwrap();
    // how long a whole import takes here, to kill others at fractions of it
    let t0 = Instant::now();
    let o = run(
        &dst.path().join("full"),
        &["cache", "import", "--allow-unsigned", f],
    );
    assert!(o.status.success(), "{}", err(&o));
    let whole = t0.elapsed().as_millis() as u64;
    let mut seen = Vec::new();
    for pct in [3u64, 15, 30, 45, 60, 70, 80, 88, 94, 98] {
        let delay_ms = whole * pct / 100;
        let d = dst.path().join(format!("c{delay_ms}"));
        let mut c = Command::new(bin())
            .args(["cache", "import", "--allow-unsigned", f])
            .env("FLASHEVA_CACHE_DIR", &d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = c.kill();
        c.wait().unwrap();
        // the next command on the cache sees nothing or everything
        let o = run(&d, &["cache", "verify"]);
        let text = out(&o);
        let all = format!("{n} entries verified, 0 damaged");
        assert!(
            text.contains(&all)
                || text.contains("0 entries verified")
                || text.contains("no cache at"),
            "{delay_ms} ms: {text}"
        );
        seen.push(text.contains(&all));
        // and an interrupted import leaves nothing behind once the cache is opened again
        if let Ok(s) = CacheStore::open(&d) {
            s.reclaim_tmp();
            assert!(
                staged_leftovers(&s).is_empty(),
                "{:?}",
                staged_leftovers(&s)
            );
        }
    }
    eprintln!("import takes {whole} ms; complete after each kill: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// 11. lock files and .used markers opened through symlinks

#[test]
fn d11_lock_files_and_used_markers_never_follow_links() {
    let (dir, store, built) = fake_cache(1);
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // .used linked outside: a cache hit touches nothing there
    let e = &built[0].entry;
    let victim = outside.join("victim.txt");
    fs::write(&victim, "old").unwrap();
    set_old(&victim);
    let before = fs::metadata(&victim).unwrap().modified().unwrap();
    let _ = fs::remove_file(e.dir.join(layout::USED_FILE));
    symlink(&victim, e.dir.join(layout::USED_FILE)).unwrap();
    let fake = Fake::new();
    let p = Pipeline::new(&store, &fake);
    let hit = p.ensure(&e.meta.spec, &e.meta.tile, e.meta.arch).unwrap();
    assert_eq!(hit.status, Status::Cached);
    store.touch(e);
    assert_eq!(fs::metadata(&victim).unwrap().modified().unwrap(), before);
    let dangling = outside.join("created-through-used");
    fs::remove_file(e.dir.join(layout::USED_FILE)).unwrap();
    symlink(&dangling, e.dir.join(layout::USED_FILE)).unwrap();
    store.touch(e);
    assert!(!dangling.exists());
    // a lock file linked outside: never created or opened through the link
    let s = cheap_spec(16);
    let arch = Arch::new(9, 0);
    let t = Tile::default_for(&s, arch);
    let key = p.plan(&s, &t, arch).unwrap().key;
    let created = outside.join("created-through-lock");
    symlink(&created, store.layout().lock_file(&key)).unwrap();
    let r = p.ensure(&s, &t, arch);
    assert!(
        !created.exists(),
        "a file was created through the lock link"
    );
    assert!(r.is_err(), "a linked lock file is refused");
    fs::remove_file(store.layout().lock_file(&key)).unwrap();
    symlink(&victim, store.layout().lock_file(&key)).unwrap();
    let _ = p.ensure(&s, &t, arch);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "old");
    assert_eq!(fs::metadata(&victim).unwrap().modified().unwrap(), before);
}

// ---------------------------------------------------------------------------------------------
// 12. the small ones

#[test]
fn d12_read_only_commands_create_nothing_and_messages_count_right() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-cache-here");
    for args in [
        vec!["cache", "ls"],
        vec!["cache", "verify"],
        vec!["doctor"],
        vec!["cache", "clear"],
        vec!["cache", "gc", "--max-size", "1G"],
    ] {
        let o = run(&missing, &args);
        assert!(o.status.success(), "{args:?}: {}", err(&o));
        assert!(out(&o).contains("no cache at"), "{args:?}: {}", out(&o));
        assert!(!missing.exists(), "{args:?} created the cache folder");
    }
    let (_dir, store, built) = fake_cache(1);
    let o = run(store.root(), &["cache", "ls"]);
    assert!(out(&o).contains("\n1 entry in "), "{}", out(&o));
    let o = run(store.root(), &["cache", "verify"]);
    assert!(
        out(&o).contains("1 entry verified, 0 damaged"),
        "{}",
        out(&o)
    );
    // export of a cache whose only entry is damaged says so, not "nothing matched"
    fs::write(built[0].entry.dir.join(layout::PTX_FILE), "x").unwrap();
    let b = d.path().join("b.flasheva");
    let o = run(
        store.root(),
        &["cache", "export", "--out", b.to_str().unwrap()],
    );
    assert!(
        err(&o).contains("the only entry is damaged and left out"),
        "{}",
        err(&o)
    );
    assert!(
        !err(&o).contains("nothing in the cache matched"),
        "{}",
        err(&o)
    );
    // --arch: empty items and compute_ names are refused
    for arch in [
        "",
        ",",
        "sm_80,,sm_90",
        "sm_90,",
        "compute_90",
        "sm_80,compute_90",
    ] {
        let o = run(
            store.root(),
            &[
                "compile",
                "chunk_mean",
                "--head-dim",
                "64",
                "--chunk",
                "8",
                "--arch",
                arch,
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{arch:?}: {}", err(&o));
        assert!(
            err(&o).contains("accepted are sm_80"),
            "{arch:?}: {}",
            err(&o)
        );
        assert_eq!(err(&o).lines().count(), 1);
    }
}

/// A store opened read-only on an existing empty folder tags the folder before it creates any
/// folder in it (a `gc` or `clear` there takes locks), so a process racing it never sees cache
/// folders without the marker and never refuses the folder as a foreign one (seen in CI: compiles
/// racing `cache gc` on a fresh empty folder failed with "is not a flasheva cache").
#[test]
fn a_store_opened_on_an_empty_folder_is_tagged_before_it_holds_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open_existing(dir.path()).unwrap();
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "opening wrote something"
    );
    let key = flasheva::key::sha256(b"any key");
    let _lock = store.lock(&key).unwrap();
    assert!(dir.path().join("locks").is_dir());
    assert!(dir.path().join(layout::MARKER_FILE).is_file());
    // another process opening for writing now sees a cache
    CacheStore::open(dir.path()).unwrap();
}
