//! The content-addressed cache: hits and misses with real NVRTC compiles; damaged entries (never
//! loaded, replaced by the next compile), last-use tracking and gc, winner records with the fake
//! compiler.

mod common;

use common::fake::Fake;
use common::{Counting, cheap_spec, spec, winner};
use flasheva::cache::winner::Bucket;
use flasheva::cache::{CacheStore, Lookup, layout};
use flasheva::pipeline::{Pipeline, Status};
use flasheva::spec::Op;
use flasheva::{Arch, Tile};

fn damage_and_check(what: &str, f: impl Fn(&std::path::Path)) {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let nv = Fake::new();
    let p = Pipeline::new(&store, &nv);
    let spec = cheap_spec(8);
    let arch = Arch::new(9, 0);
    let tile = Tile::default_for(&spec, arch);
    let first = p.ensure(&spec, &tile, arch).unwrap();
    assert_eq!(first.status, Status::Compiled);
    f(&first.entry.dir);
    // The damaged entry is reported by lookup, skipped by verify/scan, refused by verified reads...
    let key = first.entry.meta.key;
    match store.lookup(&spec, &tile, arch, &key) {
        Lookup::Damaged { dir, damage } => {
            assert_eq!(dir, first.entry.dir, "{what}");
            assert!(!damage.to_string().is_empty(), "{what}");
        }
        other => panic!("{what}: expected Damaged, got {other:?}"),
    }
    assert!(
        store.scan().unwrap().iter().any(|s| s.entry.is_err()),
        "{what}"
    );
    if first.entry.dir.join(layout::META_FILE).exists()
        && let (good, _) = store.candidates(&spec, &tile, arch)
        && let Some(e) = good.first()
    {
        assert!(
            store.read_verified(e, layout::CUBIN_FILE).is_err()
                || store.read_verified(e, layout::PTX_FILE).is_err(),
            "{what}: a damaged file was handed out"
        );
    }
    // ... and the next compile treats it as a miss, warns, and replaces it.
    let again = p.ensure(&spec, &tile, arch).unwrap();
    assert_eq!(again.status, Status::Compiled, "{what}");
    assert_eq!(again.warnings.len(), 1, "{what}: {:?}", again.warnings);
    assert_eq!(nv.compiles(), 2);
    assert!(
        store.scan().unwrap().iter().all(|s| s.entry.is_ok()),
        "{what}"
    );
    assert_eq!(again.entry.meta.key, key);
}

#[test]
fn hit_and_miss_count_real_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let nv = Counting::new();
    let p = Pipeline::new(&store, &nv);
    let arch = Arch::new(8, 0);
    let a = cheap_spec(8);
    let b = cheap_spec(16);
    let t = Tile::default_for(&a, arch);
    assert_eq!(p.ensure(&a, &t, arch).unwrap().status, Status::Compiled);
    assert_eq!(p.ensure(&a, &t, arch).unwrap().status, Status::Cached);
    assert_eq!(p.ensure(&b, &t, arch).unwrap().status, Status::Compiled);
    let other_tile = t.with_overrides(&a, "warps=2").unwrap();
    assert_eq!(
        p.ensure(&a, &other_tile, arch).unwrap().status,
        Status::Compiled
    );
    let sm90 = Arch::new(9, 0);
    let hit = p.ensure(&a, &t, sm90).unwrap();
    assert_eq!(hit.status, Status::Compiled);
    assert_eq!(nv.compiles(), 4);
    // The entry holds everything the issue names, each file hashed.
    let m = &hit.entry.meta;
    for f in [
        layout::PTX_FILE,
        layout::CUBIN_FILE,
        layout::SOURCE_FILE,
        layout::LOG_FILE,
    ] {
        assert!(m.files.contains_key(f), "{f}");
        assert!(hit.entry.dir.join(f).is_file());
    }
    assert_eq!(m.entry_points, vec![a.name()]);
    assert_eq!(m.threads, t.threads());
    assert_eq!(m.compiler.name, "nvrtc");
    assert!(m.compile_ms > 0.0);
    assert!(m.seal_ok());
    // A fresh store over the same folder (another process) hits.
    let store2 = CacheStore::open(dir.path()).unwrap();
    let nv2 = Counting::new();
    assert_eq!(
        Pipeline::new(&store2, &nv2)
            .ensure(&a, &t, arch)
            .unwrap()
            .status,
        Status::Cached
    );
    assert_eq!(nv2.compiles(), 0);
}

#[test]
fn flipped_byte_in_cubin_is_damage() {
    damage_and_check("flipped byte", |d| {
        let p = d.join(layout::CUBIN_FILE);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    });
}

#[test]
fn truncated_ptx_is_damage() {
    damage_and_check("truncation", |d| {
        let p = d.join(layout::PTX_FILE);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 3]).unwrap();
    });
}

#[test]
fn deleted_file_is_damage() {
    damage_and_check("deleted file", |d| {
        std::fs::remove_file(d.join(layout::CUBIN_FILE)).unwrap()
    });
}

#[test]
fn edited_metadata_is_damage() {
    damage_and_check("edited metadata", |d| {
        let p = d.join(layout::META_FILE);
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"threads\": 128", "\"threads\": 256");
        std::fs::write(&p, t).unwrap();
    });
    damage_and_check("deleted metadata", |d| {
        std::fs::remove_file(d.join(layout::META_FILE)).unwrap()
    });
}

#[test]
fn gc_evicts_least_recently_used_and_keeps_winners() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let nv = Fake::new();
    let p = Pipeline::new(&store, &nv);
    let arch = Arch::new(9, 0);
    let mut built = Vec::new();
    for c in [2, 4, 8, 16] {
        let s = cheap_spec(c);
        built.push(p.ensure(&s, &Tile::default_for(&s, arch), arch).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // use the oldest again: it becomes the most recent
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        p.ensure(&built[0].entry.meta.spec, &built[0].entry.meta.tile, arch)
            .unwrap()
            .status,
        Status::Cached
    );
    // a winner names entry 1
    let rec = winner(
        &built[1].entry.meta.spec,
        built[1].entry.meta.tile,
        Some(built[1].entry.meta.key),
        1.0,
    );
    store.put_winner(&rec).unwrap();
    let one: u64 = built[3]
        .entry
        .meta
        .files
        .values()
        .map(|f| f.bytes)
        .sum::<u64>()
        + 4096;
    let s = store.gc(2 * one, false).unwrap();
    let left: Vec<u32> = store
        .scan()
        .unwrap()
        .iter()
        .map(|s| s.entry.as_ref().unwrap().meta.spec.chunk())
        .collect();
    // entries 2 (c=4) and 3 (c=8) were least recently used; 1 (c=4?) is a winner artifact
    assert!(left.contains(&2) && left.contains(&4), "{left:?} {s:?}");
    assert!(s.evicted >= 1 && s.kept_winners >= 1, "{s:?}");
    let s = store.gc(0, true).unwrap();
    assert_eq!(store.scan().unwrap().len(), 0, "{s:?}");
}

#[test]
fn winner_records_round_trip_and_nearest_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let spec = cheap_spec(8);
    let t = Tile::default_for(&spec, Arch::new(9, 0))
        .with_overrides(&spec, "warps=2")
        .unwrap();
    let rec = winner(&spec, t, None, 0.5);
    let path = store.put_winner(&rec).unwrap();
    assert!(path.starts_with(dir.path().join("v1/winners").join(spec.name())));
    let back = store
        .find_winner("NVIDIA H100 80GB HBM3", (9, 0), &spec, &rec.bucket)
        .unwrap();
    assert_eq!(back, rec);
    // a nearby bucket finds it; another device does not
    let near = Bucket::of(Op::ChunkMean, 2, 8192, 16, 16);
    assert_eq!(
        store
            .find_winner("NVIDIA H100 80GB HBM3", (9, 0), &spec, &near)
            .unwrap()
            .tile,
        t
    );
    assert!(
        store
            .find_winner("NVIDIA A100-SXM4-80GB", (8, 0), &spec, &near)
            .is_none()
    );
    // journal: append, read back, a torn last line is ignored
    let run = flasheva::key::sha256(b"run");
    store.append_journal(&run, &rec.candidates[0]).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(store.journal_path(&run))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"tile\":"))
        .unwrap();
    assert_eq!(store.read_journal(&run), rec.candidates);
    store.remove_journal(&run);
    assert!(store.read_journal(&run).is_empty());
}

#[test]
fn a_winner_with_fixed_splits_answers_only_its_own_bucket() {
    use flasheva::spec::{DType, LocalMode};
    let dir = tempfile::tempdir().unwrap();
    let store = CacheStore::open(dir.path()).unwrap();
    let spec = spec(Op::Decode, 128, 512, 64, LocalMode::Block, DType::Bf16, 4);
    let fixed = Tile::default_for(&spec, Arch::new(9, 0))
        .with_overrides(&spec, "splits=2")
        .unwrap();
    let rec = winner(&spec, fixed, None, 0.03);
    store.put_winner(&rec).unwrap();
    let dev = "NVIDIA H100 80GB HBM3";
    assert_eq!(
        store
            .find_winner(dev, (9, 0), &spec, &rec.bucket)
            .unwrap()
            .tile,
        fixed
    );
    // a larger batch is another bucket: the fixed split count does not carry over
    let near = Bucket::of(Op::Decode, 2, 4096, 16, 16);
    assert_ne!(near, rec.bucket);
    assert!(store.find_winner(dev, (9, 0), &spec, &near).is_none());
    // a tile that leaves the splits to the planner does, to buckets near it
    let free = fixed.with_overrides(&spec, "splits=0").unwrap();
    store.put_winner(&winner(&spec, free, None, 0.03)).unwrap();
    assert_eq!(
        store.find_winner(dev, (9, 0), &spec, &near).unwrap().tile,
        free
    );
    // but not far away (the default tile instead): eight times the batch and four times the length
    let far = Bucket::of(Op::Decode, 8, 16384, 16, 16);
    assert!(rec.bucket.distance(&far) > flasheva::cache::winners::MAX_FALLBACK_DISTANCE);
    assert!(store.find_winner(dev, (9, 0), &spec, &far).is_none());
}
