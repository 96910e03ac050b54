//! Bundles: export then import into an empty cache gives identical keys and bytes; every kind of
//! tampered or malicious bundle is refused with its message and leaves the cache untouched;
//! signatures; winner merging. The fake compiler builds the caches; one round trip (with
//! `--rebuild-check`) uses real NVRTC.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::fake::Fake;
use common::{Counting, cheap_spec, content, winner};
use flasheva::cache::CacheStore;
use flasheva::cache::bundle::{self, ExportOptions, ImportOptions, Vouched};
use flasheva::cache::winner::Bucket;
use flasheva::pipeline::Pipeline;
use flasheva::{Arch, Tile};

/// Import options that accept an unsigned bundle.
fn allow() -> ImportOptions<'static> {
    ImportOptions::default().allow_unsigned(true)
}

/// Import options that trust `keys` (and nothing else).
fn trust(keys: &[ed25519_dalek::VerifyingKey]) -> ImportOptions<'static> {
    ImportOptions::trusting(keys.to_vec())
}

/// A cache with a few entries (fake compiler) and one winner record.
fn source_cache() -> (tempfile::TempDir, CacheStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let nv = Fake::new();
    let p = Pipeline::new(&store, &nv);
    for c in [4, 8] {
        for arch in [Arch::new(8, 0), Arch::new(9, 0)] {
            let s = cheap_spec(c);
            p.ensure(&s, &Tile::default_for(&s, arch), arch).unwrap();
        }
    }
    let s = cheap_spec(8);
    let t = Tile::default_for(&s, Arch::new(9, 0));
    let key = p.plan(&s, &t, Arch::new(9, 0)).unwrap().key;
    store.put_winner(&winner(&s, t, Some(key), 0.5)).unwrap();
    (dir, store)
}

#[test]
fn export_then_import_gives_identical_keys_and_bytes() {
    let (src_dir, src) = source_cache();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b.flasheva");
    let s = bundle::export(&src, &file, &ExportOptions::default(), None).unwrap();
    assert_eq!((s.entries, s.winners), (4, 1));
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = CacheStore::open(dst_dir.path()).unwrap();
    let r = bundle::import(&dst, &file, &allow()).unwrap();
    assert_eq!((r.added, r.present, r.winners_added), (4, 0, 1));
    assert_eq!(
        content(src_dir.path()),
        content(dst_dir.path()),
        "keys, layout and bytes must be identical"
    );
    // importing again changes nothing
    let r = bundle::import(&dst, &file, &allow()).unwrap();
    assert_eq!((r.added, r.present, r.winners_kept), (0, 4, 1));
    // winners-only: just the winner's artifact
    let f2 = out.path().join("w.flasheva");
    let s = bundle::export(&src, &f2, &ExportOptions::all().winners_only(true), None).unwrap();
    assert_eq!((s.entries, s.winners), (1, 1));
    // spec filter
    let s = bundle::export(
        &src,
        &f2,
        &ExportOptions::all().specs(Some(vec![cheap_spec(4)])),
        None,
    )
    .unwrap();
    assert_eq!((s.entries, s.winners), (2, 0));
}

/// Writes a tar.zst from raw members (name, type, data), the header size optionally a lie.
fn raw_bundle(path: &Path, members: &[(&str, tar::EntryType, &[u8], Option<u64>)]) {
    let f = std::fs::File::create(path).unwrap();
    let enc = zstd::Encoder::new(f, 3).unwrap();
    let mut t = tar::Builder::new(enc);
    for (name, kind, data, size) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(size.unwrap_or(data.len() as u64));
        if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
            h.set_link_name("/etc/passwd").unwrap();
            h.set_size(0);
        }
        // Write the name bytes directly so that "../x" and "/x" survive (the builder refuses them).
        let raw = name.as_bytes();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        if size.is_some() {
            t.get_mut().write_all(h.as_bytes()).unwrap();
            t.get_mut().write_all(data).unwrap();
        } else {
            t.append(&h, *data).unwrap();
        }
    }
    t.into_inner().unwrap().finish().unwrap();
}

fn manifest_of(file: &Path) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let dec = zstd::Decoder::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    let mut files = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        files.push((name, v));
    }
    let m: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    (m, files)
}

/// Writes members (name, bytes) as a bundle does: ustar headers, in this order.
pub fn rebuild(path: &Path, files: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let enc = zstd::Encoder::new(f, 3).unwrap();
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

/// Imports `file` into a cache that already holds entries, and checks it is refused with a message
/// containing `expect` and that the cache did not change.
fn refused(file: &Path, opts: &ImportOptions<'_>, expect: &str) {
    let (dir, store) = source_cache();
    let before = content(dir.path());
    let e = bundle::import(&store, file, opts)
        .expect_err(expect)
        .to_string();
    assert!(e.contains(expect), "expected {expect:?} in: {e}");
    assert_eq!(
        before,
        content(dir.path()),
        "the cache changed after a refused import ({expect})"
    );
    // nothing left in tmp either
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "staging left behind"
    );
}

fn good_bundle() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
    let (src_dir, src) = source_cache();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("good.flasheva");
    bundle::export(&src, &file, &ExportOptions::default(), None).unwrap();
    (out, file, src_dir)
}

#[test]
fn malicious_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let reg = tar::EntryType::Regular;
    let empty =
        br#"{"format":2,"crate_version":"0.1.0","created_unix":0,"entries":[],"winners":[]}"#;
    raw_bundle(
        &p("traversal"),
        &[
            ("manifest.json", reg, empty, None),
            ("../evil", reg, b"x", None),
        ],
    );
    refused(&p("traversal"), &allow(), "climbs out of the bundle");
    raw_bundle(&p("absolute"), &[("/tmp/evil", reg, b"x", None)]);
    refused(&p("absolute"), &allow(), "absolute path");
    raw_bundle(
        &p("symlink"),
        &[("link", tar::EntryType::Symlink, b"", None)],
    );
    refused(&p("symlink"), &allow(), "symbolic link");
    raw_bundle(&p("hardlink"), &[("link", tar::EntryType::Link, b"", None)]);
    refused(&p("hardlink"), &allow(), "hard link");
    raw_bundle(
        &p("dup"),
        &[
            ("manifest.json", reg, empty, None),
            ("manifest.json", reg, empty, None),
        ],
    );
    refused(&p("dup"), &allow(), "appears twice");
    raw_bundle(
        &p("huge"),
        &[(
            "manifest.json",
            reg,
            b"",
            Some(bundle::MAX_MEMBER_BYTES + 1),
        )],
    );
    refused(&p("huge"), &allow(), "over the");
    raw_bundle(&p("nomanifest"), &[("readme", reg, b"hi", None)]);
    refused(&p("nomanifest"), &allow(), "no manifest.json");
    raw_bundle(
        &p("format"),
        &[("manifest.json", reg, br#"{"format": 99}"#, None)],
    );
    refused(&p("format"), &allow(), "bundle format 99 is unknown");
    std::fs::write(p("garbage"), b"this is not zstd at all").unwrap();
    refused(&p("garbage"), &allow(), "damaged or truncated");
}

#[test]
fn truncated_and_damaged_archives_are_refused() {
    let (_out, file, _src) = good_bundle();
    let bytes = std::fs::read(&file).unwrap();
    let t = file.with_extension("truncated");
    std::fs::write(&t, &bytes[..bytes.len() * 2 / 3]).unwrap();
    refused(&t, &allow(), "damaged or truncated");
    let d = file.with_extension("flipped");
    let mut b = bytes.clone();
    let i = b.len() / 2;
    b[i] ^= 0xff;
    std::fs::write(&d, b).unwrap();
    let (dir, store) = source_cache();
    let before = content(dir.path());
    assert!(bundle::import(&store, &d, &allow()).is_err());
    assert_eq!(before, content(dir.path()));
}

#[test]
fn tampered_content_is_refused() {
    let (_out, file, _src) = good_bundle();
    let (_m, files) = manifest_of(&file);
    // a changed cubin (its sha256 no longer matches the manifest)
    let mut f1 = files.clone();
    let i = f1
        .iter()
        .position(|(n, _)| n.ends_with("kernel.cubin"))
        .unwrap();
    let j = f1[i].1.len() / 2;
    f1[i].1[j] ^= 1;
    let t = file.with_extension("t1");
    rebuild(&t, &f1);
    refused(&t, &allow(), "does not match its sha256 in the manifest");
    // an extra member that the manifest does not list
    let mut f2 = files.clone();
    f2.push(("kernels/extra.txt".into(), b"smuggled".to_vec()));
    let t = file.with_extension("t2");
    rebuild(&t, &f2);
    refused(&t, &allow(), "is not in the manifest");
    // a listed member missing
    let mut f3 = files.clone();
    f3.retain(|(n, _)| !n.ends_with("source.cu"));
    let t = file.with_extension("t3");
    rebuild(&t, &f3);
    refused(&t, &allow(), "is in the manifest but not in the bundle");
    // a manifest that points an entry elsewhere
    let mut f4 = files.clone();
    let mut m: serde_json::Value = serde_json::from_slice(&f4[0].1).unwrap();
    m["entries"][0]["dir"] = serde_json::Value::String("kernels/x/y/sm_90/abc".into());
    f4[0].1 = serde_json::to_vec(&m).unwrap();
    let t = file.with_extension("t4");
    rebuild(&t, &f4);
    refused(&t, &allow(), "is filed under");
    // metadata whose digests were rewritten consistently but whose seal no longer holds
    let mut f5 = files.clone();
    let k = f5
        .iter()
        .position(|(n, _)| n.ends_with("meta.json"))
        .unwrap();
    let text = String::from_utf8(f5[k].1.clone())
        .unwrap()
        .replace("\"threads\": 128", "\"threads\": 64");
    f5[k].1 = text.into_bytes();
    let mut m: serde_json::Value = serde_json::from_slice(&f5[0].1).unwrap();
    let name = f5[k].0.clone();
    for e in m["entries"].as_array_mut().unwrap() {
        if name.starts_with(e["dir"].as_str().unwrap()) {
            e["files"]["meta.json"] =
                serde_json::to_value(flasheva::cache::FileDigest::of(&f5[k].1)).unwrap();
        }
    }
    f5[0].1 = serde_json::to_vec(&m).unwrap();
    let t = file.with_extension("t5");
    rebuild(&t, &f5);
    refused(&t, &allow(), "seal mismatch");
}

#[test]
fn signatures_and_trust() {
    let (src_dir, src) = source_cache();
    let keys = tempfile::tempdir().unwrap();
    let k1 = keys.path().join("k1");
    let k2 = keys.path().join("k2");
    let pk1 = bundle::parse_public_key(&bundle::keygen(&k1).unwrap()).unwrap();
    let pk2 = bundle::parse_public_key(&bundle::keygen(&k2).unwrap()).unwrap();
    assert!(
        bundle::keygen(&k1)
            .unwrap_err()
            .to_string()
            .contains("does not overwrite")
    );
    let signed = keys.path().join("signed.flasheva");
    let s = bundle::export(
        &src,
        &signed,
        &ExportOptions::default(),
        Some(&bundle::read_signing_key(&k1).unwrap()),
    )
    .unwrap();
    assert!(s.signer.is_some());
    // trusted signer: accepted
    let dst = tempfile::tempdir().unwrap();
    let r = bundle::import(
        &CacheStore::open(dst.path()).unwrap(),
        &signed,
        &trust(&[pk1]),
    )
    .unwrap();
    assert_eq!(r.added, 4);
    assert_eq!(
        r.vouched,
        Some(Vouched::Signed(hex::encode(pk1.to_bytes())))
    );
    assert_eq!(content(src_dir.path()), content(dst.path()));
    // another key: refused
    refused(&signed, &trust(&[pk2]), "which is not a trusted key");
    // unsigned with trust required: refused
    let unsigned = keys.path().join("unsigned.flasheva");
    bundle::export(&src, &unsigned, &ExportOptions::default(), None).unwrap();
    refused(&unsigned, &trust(&[pk1]), "it is not signed");
    // a signed manifest altered afterwards: refused even without trusted keys
    let (_m, mut files) = manifest_of(&signed);
    let mut m: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    m["crate_version"] = serde_json::Value::String("9.9.9".into());
    files[0].1 = serde_json::to_vec_pretty(&m).unwrap();
    let altered = keys.path().join("altered.flasheva");
    rebuild(&altered, &files);
    refused(
        &altered,
        &allow(),
        "the signature does not match the manifest",
    );
}

#[test]
fn winner_conflicts_keep_the_faster_record_and_are_reported() {
    let (_src_dir, src) = source_cache();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b.flasheva");
    bundle::export(&src, &file, &ExportOptions::default(), None).unwrap();
    // the destination measured another tile, faster
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = CacheStore::open(dst_dir.path()).unwrap();
    let s = cheap_spec(8);
    let other = Tile::default_for(&s, Arch::new(9, 0))
        .with_overrides(&s, "warps=8")
        .unwrap();
    dst.put_winner(&winner(&s, other, None, 0.25)).unwrap();
    let r = bundle::import(&dst, &file, &allow()).unwrap();
    assert_eq!((r.winners_added, r.winners_kept), (0, 1));
    assert_eq!(r.conflicts.len(), 1);
    assert!(
        r.conflicts[0].contains("kept the cache's"),
        "{}",
        r.conflicts[0]
    );
    let b = Bucket::of(s.op(), 1, 4096, 16, 16);
    assert_eq!(
        dst.find_winner("NVIDIA H100 80GB HBM3", (9, 0), &s, &b)
            .unwrap()
            .tile,
        other
    );
    // a slower local record is replaced, also reported
    dst.put_winner(&winner(&s, other, None, 0.75)).unwrap();
    let r = bundle::import(&dst, &file, &allow()).unwrap();
    assert_eq!(r.winners_added, 1);
    assert!(r.conflicts[0].contains("took the bundle's"));
    assert_ne!(
        dst.find_winner("NVIDIA H100 80GB HBM3", (9, 0), &s, &b)
            .unwrap()
            .tile,
        other
    );
}

#[test]
fn real_nvrtc_round_trip_with_rebuild_check() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = CacheStore::open(src_dir.path()).unwrap();
    let nv = Counting::new();
    let s = cheap_spec(8);
    let arch = Arch::new(9, 0);
    Pipeline::new(&src, &nv)
        .ensure(&s, &Tile::default_for(&s, arch), arch)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b.flasheva");
    bundle::export(&src, &file, &ExportOptions::default(), None).unwrap();
    // Unsigned: refused by default, taken when NVRTC here reproduces every byte.
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = CacheStore::open(dst_dir.path()).unwrap();
    let e = bundle::import(&dst, &file, &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("it is not signed"), "{e}");
    let r = bundle::import(
        &dst,
        &file,
        &ImportOptions::default().rebuild(Some(&nv.inner)),
    )
    .unwrap();
    assert_eq!((r.added, r.rebuilt), (1, 1));
    assert_eq!(r.vouched, Some(Vouched::Rebuilt));
    assert_eq!(content(src_dir.path()), content(dst_dir.path()));
}
