//! Property-based tests of the parsers hostile input reaches: tar member names, the bundle
//! manifest, entry metadata, spec and tile JSON, and the streaming bundle reader. Whatever the
//! input, they never panic, and whatever they accept keeps the invariants the rest of flasheva
//! relies on.

mod common;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use common::cheap_spec;
use common::fake::Fake;
use flasheva::cache::CacheStore;
use flasheva::cache::bundle::manifest::{Manifest, member_name};
use flasheva::cache::bundle::{self, ExportOptions, reader};
use flasheva::cache::layout::{self, Layout};
use flasheva::cache::meta::EntryMeta;
use flasheva::pipeline::Pipeline;
use flasheva::spec::{KernelSpec, Op, SpecParams};
use flasheva::tile::TileParams;
use flasheva::{Arch, Tile};
use proptest::prelude::*;
use serde_json::Value;

/// A valid bundle (its bytes), its manifest and one entry's metadata, built once.
struct Sample {
    bundle: Vec<u8>,
    manifest: Value,
    meta: Value,
}

fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let store = CacheStore::open(d.path().join("c")).unwrap();
        let fake = Fake::new();
        let arch = Arch::new(9, 0);
        for c in [4, 8] {
            let s = cheap_spec(c);
            Pipeline::new(&store, &fake)
                .ensure(&s, &Tile::default_for(&s, arch), arch)
                .unwrap();
        }
        let mut bundle = Vec::new();
        bundle::export_to(&store, &mut bundle, &ExportOptions::default(), None).unwrap();
        let e = &store.scan().unwrap()[0];
        let meta = serde_json::to_value(&e.entry.as_ref().unwrap().meta).unwrap();
        let mut members = Vec::new();
        let mut ar = tar::Archive::new(zstd::Decoder::new(Cursor::new(&bundle)).unwrap());
        for m in ar.entries().unwrap() {
            let mut m = m.unwrap();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut m, &mut v).unwrap();
            members.push(v);
        }
        Sample {
            manifest: serde_json::from_slice(&members[0]).unwrap(),
            meta,
            bundle,
        }
    })
}

/// JSON pointers of every leaf (and every object or array) of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(3),
            Just(1 << 40),
            any::<i64>()
        ]
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        prop_oneof![
            Just("../../etc/passwd".to_string()),
            Just("/etc/passwd".to_string()),
            Just("\u{1b}[31m".to_string()),
            Just("kernel.cubin".to_string()),
            Just("sm_90".to_string()),
            Just("compute_90".to_string()),
            Just(String::new()),
            Just("ab".repeat(32)),
            ".{0,20}",
        ]
        .prop_map(Value::String),
        Just(Value::Array(vec![])),
        Just(serde_json::json!({})),
    ]
}

/// `v` with the node at one of its pointers (chosen by `pick`) replaced by `x`.
fn mutate(v: &Value, pick: usize, x: Value) -> Value {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let mut out = v.clone();
    let p = &ps[pick % ps.len()];
    if p.is_empty() {
        return x;
    }
    *out.pointer_mut(p).unwrap() = x;
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn member_names_that_pass_stay_inside_the_bundle(
        s in prop_oneof![".{0,60}", "([a-z.]{0,3}/){0,8}[a-z.]{0,3}", "(\\.\\./|/|\\./|[a-z]{1,3}/){0,6}[a-z]{0,3}"]
    ) {
        if let Ok(n) = member_name(s.as_bytes()) {
            prop_assert!(!n.starts_with('/'));
            prop_assert!(n.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
            prop_assert!(n.split('/').count() <= 6);
            prop_assert!(!Path::new(&n).is_absolute());
            prop_assert!(!n.contains('\\') && !n.contains('\0'));
        }
    }

    #[test]
    fn member_names_of_any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = member_name(&b);
    }

    #[test]
    fn the_cache_layout_spells_valid_member_names(chunk in 1u32..=512, arch in prop::sample::select(vec!["sm_80", "sm_90", "sm_90a", "sm_120"])) {
        let s = cheap_spec(chunk);
        let a: Arch = arch.parse().unwrap();
        let rel = Layout::entry_rel(&s, &Tile::default_for(&s, a), a, &flasheva::key::sha256(b"k"));
        for f in layout::ENTRY_FILES.iter().chain([&layout::META_FILE]) {
            let name = format!("{}/{}", rel, f);
            prop_assert!(member_name(name.as_bytes()).is_ok());
        }
    }

    #[test]
    fn manifest_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Manifest::parse(&b);
    }

    #[test]
    fn mutated_manifests_are_refused_or_keep_their_invariants(pick in any::<usize>(), x in hostile_value()) {
        let v = mutate(&sample().manifest, pick, x);
        if let Ok(m) = Manifest::parse(&serde_json::to_vec(&v).unwrap()) {
            let mut keys = BTreeSet::new();
            for e in &m.entries {
                prop_assert!(e.tile.check(&e.spec).is_ok());
                prop_assert_eq!(&e.dir, &Layout::entry_rel(&e.spec, &e.tile, e.arch, &e.key));
                prop_assert!(keys.insert(e.key));
                let names: BTreeSet<&str> = e.files.keys().map(String::as_str).collect();
                let want: BTreeSet<&str> = layout::ENTRY_FILES.iter().copied().chain([layout::META_FILE]).collect();
                prop_assert_eq!(names, want);
            }
            for (name, d) in m.members() {
                prop_assert!(member_name(name.as_bytes()).is_ok(), "{}", name);
                prop_assert!(d.bytes <= bundle::MAX_MEMBER_BYTES);
            }
            prop_assert!(m.total_bytes() <= bundle::MAX_TOTAL_BYTES);
        }
    }

    #[test]
    fn mutated_metadata_is_refused_or_keeps_its_invariants(pick in any::<usize>(), x in hostile_value(), reseal in any::<bool>()) {
        let v = mutate(&sample().meta, pick, x);
        let mut bytes = serde_json::to_vec(&v).unwrap();
        if reseal && let Ok(m) = serde_json::from_value::<EntryMeta>(v.clone()) {
            bytes = m.sealed().to_json();
        }
        if let Ok(m) = EntryMeta::parse(&bytes) {
            prop_assert!(m.seal_ok());
            prop_assert!(m.tile.check(&m.spec).is_ok());
            prop_assert_eq!(&m.name, &m.spec.name());
            let names: BTreeSet<&str> = m.files.keys().map(String::as_str).collect();
            prop_assert_eq!(names, layout::ENTRY_FILES.iter().copied().collect::<BTreeSet<_>>());
            prop_assert!(!m.compiler.name.chars().any(char::is_control));
        }
    }

    #[test]
    fn specs_and_tiles_read_from_json_are_the_validated_ones(
        op in prop::sample::select(vec![Op::ChunkMean, Op::ChunkSummarize, Op::Prefill, Op::Decode]),
        head_dim in prop_oneof![Just(0u32), Just(64), Just(80), Just(128), any::<u32>()],
        window in prop::option::of(prop_oneof![Just(0u32), Just(128), Just(100), any::<u32>()]),
        chunk in prop_oneof![Just(0u32), Just(8), Just(3), any::<u32>()],
        group in prop::option::of(prop_oneof![Just(0u32), Just(1), Just(4), any::<u32>()]),
        knobs in (0u32..300, 0u32..300, 0u32..10, 0u32..5, 0u32..300),
    ) {
        let json = serde_json::json!({
            "op": op, "head_dim": head_dim, "window": window, "chunk": chunk,
            "local": window.map(|_| "block"), "dtype": "bf16", "group": group,
        });
        if let Ok(s) = serde_json::from_value::<KernelSpec>(json) {
            let again = KernelSpec::new(op, &SpecParams {
                head_dim: Some(head_dim), window, chunk: Some(chunk), local: s.local(),
                dtype: Some(s.dtype()), group,
            });
            prop_assert_eq!(again, Ok(s));
            let t = serde_json::json!({
                "block_m": knobs.0, "block_n": knobs.1, "warps": knobs.2, "stages": knobs.3, "splits": knobs.4,
            });
            if let Ok(tile) = serde_json::from_value::<Tile>(t) {
                // a file's tile is held to bounds only; the op's rule decides where it meets its
                // spec, and agrees with the validating constructor
                let p: TileParams = tile.params();
                prop_assert!((1..=16).contains(&p.warps) && p.stages <= 8 && p.splits <= 128);
                prop_assert!(p.block_m <= 256 && p.block_n <= 128);
                if tile.check(&s).is_ok() {
                    prop_assert_eq!(Tile::new(&s, p), Ok(tile));
                } else {
                    prop_assert!(Tile::new(&s, p).map(|t| t != tile).unwrap_or(true));
                }
            }
        }
    }

    #[test]
    fn the_bundle_reader_never_panics_on_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = reader::read(Path::new("fuzz"), Cursor::new(b), |_, _, _| Ok(()), None);
    }

    #[test]
    fn damaged_bundles_are_refused_or_read_whole(at in any::<usize>(), xor in 1u8..=255, cut in any::<bool>()) {
        let mut b = sample().bundle.clone();
        let i = at % b.len();
        if cut { b.truncate(i) } else { b[i] ^= xor }
        if let Ok((m, ())) = reader::read(Path::new("fuzz"), Cursor::new(b), |_, _, _| Ok(()), None) {
            prop_assert!(m.validate().is_ok());
        }
    }
}
