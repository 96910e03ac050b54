//! Search spaces (`autotune/spaces.toml`, embedded): expansion into candidate tiles and the
//! pruning rules, each dropped candidate with its reason. Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::spec::{KernelSpec, Op};
use crate::target::{Arch, Limits};
use crate::tile::{Engine, Tile, TileParams};

/// The embedded spaces file.
pub const SPACES_TOML: &str = include_str!("../../autotune/spaces.toml");

/// Values to try per tile field (absent = the op's default for that field).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldValues {
    /// Prefill engines (`mma`, `wgmma`).
    #[serde(default)]
    pub engine: Option<Vec<Engine>>,
    /// block_m values.
    #[serde(default)]
    pub block_m: Option<Vec<u32>>,
    /// block_n values.
    #[serde(default)]
    pub block_n: Option<Vec<u32>>,
    /// warps values.
    #[serde(default)]
    pub warps: Option<Vec<u32>>,
    /// stages values.
    #[serde(default)]
    pub stages: Option<Vec<u32>>,
    /// splits values.
    #[serde(default)]
    pub splits: Option<Vec<u32>>,
    /// Per-arch replacements.
    #[serde(default)]
    pub arch: BTreeMap<String, FieldValues>,
    /// Values for tiles of the `wgmma` engine (its knobs differ from `mma`'s).
    #[serde(default)]
    pub wgmma: Option<Box<FieldValues>>,
    /// Values for tiles of the `tma` engine (the Hopper decode).
    #[serde(default)]
    pub tma: Option<Box<FieldValues>>,
    /// Values for tiles of the Triton backend.
    #[serde(default)]
    pub triton: Option<Box<FieldValues>>,
}

/// The spaces of every op: one table per op, named as the op (`[prefill]`, `[decode]`, ...); an
/// op without a table has only its default tile.
#[derive(Clone, Debug)]
pub struct Spaces {
    ops: BTreeMap<String, FieldValues>,
}

/// The space of an op the file does not mention: the default tile only.
static DEFAULT_ONLY: FieldValues = FieldValues {
    engine: None,
    block_m: None,
    block_n: None,
    warps: None,
    stages: None,
    splits: None,
    arch: BTreeMap::new(),
    wgmma: None,
    tma: None,
    triton: None,
};

/// A spaces file that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("search spaces: {0}")]
pub struct SpaceError(pub String);

/// A candidate that was dropped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pruned {
    /// The tile's knobs (they may not form a valid tile).
    pub tile: TileParams,
    /// Why it was dropped.
    pub reason: String,
}

/// The candidates of one spec on one device.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    /// Survivors, in a fixed order, the default tile first.
    pub keep: Vec<Tile>,
    /// Dropped ones with reasons.
    pub pruned: Vec<Pruned>,
}

impl Spaces {
    /// The embedded spaces.
    pub fn builtin() -> Spaces {
        Spaces::parse(SPACES_TOML).expect("the embedded search spaces parse (tested)")
    }

    /// Parses a spaces file: every table must name an op.
    pub fn parse(text: &str) -> Result<Spaces, SpaceError> {
        let ops: BTreeMap<String, FieldValues> =
            toml::from_str(text).map_err(|e| SpaceError(e.to_string()))?;
        if let Some(bad) = ops.keys().find(|k| k.parse::<Op>().is_err()) {
            let names: Vec<&str> = Op::ALL.iter().map(|o| o.as_str()).collect();
            return Err(SpaceError(format!(
                "unknown op table [{bad}]: the tables are {}",
                names.join(", ")
            )));
        }
        Ok(Spaces { ops })
    }

    fn of(&self, op: Op) -> &FieldValues {
        self.ops.get(op.as_str()).unwrap_or(&DEFAULT_ONLY)
    }

    /// Expands the space of `spec` for `arch` (whose limits may be the device's measured ones)
    /// and prunes it. The default tile is always a candidate (it is the trusted reference).
    pub fn candidates(&self, spec: &KernelSpec, arch: Arch, limits: Limits) -> Candidates {
        let base = self.of(spec.op());
        let over = base.arch.get(&arch.to_string());
        let d = Tile::default_for(spec, arch);
        let engines = over
            .and_then(|o| o.engine.clone())
            .or_else(|| base.engine.clone())
            .unwrap_or_else(|| vec![d.engine()]);
        let mut all = Vec::new();
        for &e in &engines {
            // The value lists of engine `e`: its own table (arch's, then the op's), then the
            // arch's lists, then the op's, then the default tile's value.
            fn own(f: &FieldValues, e: Engine) -> Option<&FieldValues> {
                match e {
                    Engine::Wgmma => f.wgmma.as_deref(),
                    Engine::Tma => f.tma.as_deref(),
                    Engine::Triton => f.triton.as_deref(),
                    _ => None,
                }
            }
            let layers: Vec<&FieldValues> =
                [over.and_then(|o| own(o, e)), own(base, e), over, Some(base)]
                    .into_iter()
                    .flatten()
                    .collect();
            // Values a list does not give come from the engine's default tile.
            let d = if e == Engine::Triton {
                Tile::new(spec, crate::ops::of(spec.op()).triton_default(spec)).unwrap_or(d)
            } else {
                d
            };
            let pick = |f: fn(&FieldValues) -> &Option<Vec<u32>>, dflt: u32| -> Vec<u32> {
                layers
                    .iter()
                    .find_map(|l| f(l).clone())
                    .unwrap_or_else(|| vec![dflt])
            };
            for &m in &pick(|f| &f.block_m, d.block_m()) {
                for &n in &pick(|f| &f.block_n, d.block_n()) {
                    for &w in &pick(|f| &f.warps, d.warps()) {
                        for &s in &pick(|f| &f.stages, d.stages()) {
                            for &k in &pick(|f| &f.splits, d.splits()) {
                                let t = TileParams {
                                    engine: e,
                                    block_m: m,
                                    block_n: n,
                                    warps: w,
                                    stages: s,
                                    splits: k,
                                }
                                .normalized(spec.op());
                                if !all.contains(&t) {
                                    all.push(t);
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut out = Candidates {
            keep: vec![d],
            pruned: Vec::new(),
        };
        for p in all {
            if p == d.params() {
                continue;
            }
            match Tile::new(spec, p) {
                Err(e) => out.pruned.push(Pruned {
                    tile: p,
                    reason: e.to_string(),
                }),
                Ok(t) => match prune_reason(spec, &t, arch, limits) {
                    Some(reason) => out.pruned.push(Pruned { tile: p, reason }),
                    None => out.keep.push(t),
                },
            }
        }
        out
    }
}

/// Why `tile` (valid for `spec`) is not worth compiling for `spec` on a device with `limits`, if it is not.
pub fn prune_reason(spec: &KernelSpec, tile: &Tile, arch: Arch, limits: Limits) -> Option<String> {
    if let Err(e @ crate::tile::TileError::Engine { .. }) = tile.validate_for(spec, arch) {
        return Some(e.to_string());
    }
    let smem = tile.smem_bytes(spec);
    if smem > limits.smem_per_block {
        return Some(format!(
            "needs {} KiB of shared memory per block, {arch} allows {} KiB",
            smem.div_ceil(1024),
            limits.smem_per_block / 1024
        ));
    }
    if tile.threads() > limits.threads_per_block {
        return Some(format!(
            "needs {} threads per block, the limit is {}",
            tile.threads(),
            limits.threads_per_block
        ));
    }
    crate::ops::of(spec.op()).prune(spec, tile)
}

/// Drops candidates after compiling: spills, or more registers than a multiprocessor holds.
pub fn prune_compiled(
    tile: &Tile,
    registers: u32,
    spill_bytes: u32,
    shared_bytes: u32,
    limits: Limits,
) -> Option<String> {
    if shared_bytes > limits.smem_per_block {
        return Some(format!(
            "needs {} KiB of shared memory per block, the device allows {} KiB",
            shared_bytes.div_ceil(1024),
            limits.smem_per_block / 1024
        ));
    }
    if spill_bytes > 0 {
        return Some(format!(
            "spills {spill_bytes} bytes of registers to local memory"
        ));
    }
    if registers * tile.threads() > limits.regs_per_sm {
        return Some(format!(
            "{registers} registers x {} threads exceed the {} registers of a multiprocessor",
            tile.threads(),
            limits.regs_per_sm
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{LocalMode, SpecParams};

    fn spec(op: Op, d: u32, w: u32, local: LocalMode) -> KernelSpec {
        KernelSpec::new(
            op,
            &SpecParams {
                head_dim: Some(d),
                window: Some(w),
                chunk: Some(8),
                local: Some(local),
                group: Some(4),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn every_builtin_candidate_survives_a_winner_record() {
        // The tuner records its winner as JSON and the loader reads it back: a tile the space
        // offers but JSON refuses would be tuned, recorded and then silently ignored (run 52:
        // the decode's block_m = 8 before JSON took it).
        let s = Spaces::builtin();
        for op in Op::ALL {
            for arch in [Arch::new(8, 0), "sm_90a".parse().unwrap()] {
                for d in [64, 128] {
                    let Ok(sp) = KernelSpec::new(
                        op,
                        &SpecParams {
                            head_dim: Some(d),
                            window: Some(512),
                            chunk: Some(64),
                            local: Some(LocalMode::Block),
                            group: Some(4),
                            ..Default::default()
                        },
                    ) else {
                        continue;
                    };
                    for t in s.candidates(&sp, arch, arch.limits()).keep {
                        let json = serde_json::to_string(&t).unwrap();
                        let back: Tile = serde_json::from_str(&json)
                            .unwrap_or_else(|e| panic!("{sp} {arch} {json}: {e}"));
                        assert_eq!(back, t, "{sp} {arch}");
                        back.check(&sp).unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn builtin_space_expands_and_prunes() {
        let s = Spaces::builtin();
        let h100 = Arch::new(9, 0);
        let c = s.candidates(
            &spec(Op::Prefill, 128, 512, LocalMode::Block),
            h100,
            h100.limits(),
        );
        assert_eq!(
            c.keep[0],
            Tile::default_for(&spec(Op::Prefill, 128, 512, LocalMode::Block), h100)
        );
        assert!(c.keep.len() >= 10 && c.keep.len() <= 64, "{}", c.keep.len());
        // every candidate is distinct and valid on the device
        for (i, t) in c.keep.iter().enumerate() {
            assert!(
                t.validate_for(&spec(Op::Prefill, 128, 512, LocalMode::Block), h100)
                    .is_ok()
            );
            assert!(!c.keep[i + 1..].contains(t));
        }
        assert!(
            c.pruned.iter().any(|p| p.reason.contains("shared memory")),
            "{:?}",
            c.pruned
        );
        assert!(c.pruned.iter().any(|p| p.reason.contains("block_m = 256")));
        // a small window prunes wide key tiles in block mode
        let c = s.candidates(
            &spec(Op::Prefill, 64, 32, LocalMode::Block),
            h100,
            h100.limits(),
        );
        assert!(
            c.pruned
                .iter()
                .any(|p| p.reason.contains("does not divide the window 32"))
        );
        // the arch table replaces fields
        let a86 = Arch::new(8, 6);
        let c = s.candidates(
            &spec(Op::Prefill, 64, 512, LocalMode::Sliding),
            a86,
            a86.limits(),
        );
        assert!(
            c.keep
                .iter()
                .skip(1)
                .filter(|t| t.engine() == Engine::Mma)
                .all(|t| t.stages() == 2 && t.block_n() <= 64)
        );
        // the Triton tiles compete too, with their own table, where Triton targets the arch
        assert!(c.keep.iter().any(|t| t.engine() == Engine::Triton));
        let c = s.candidates(
            &spec(Op::Prefill, 128, 512, LocalMode::Block),
            h100,
            h100.limits(),
        );
        assert!(!c.keep.iter().any(|t| t.engine() == Engine::Triton));
        assert!(
            c.pruned
                .iter()
                .any(|p| p.tile.engine == Engine::Triton && p.reason.contains("runs only on")),
            "plain sm_90 is not a Triton target"
        );
        let c = s.candidates(
            &spec(Op::Decode, 128, 512, LocalMode::Block),
            h100,
            h100.limits(),
        );
        assert!(c.keep.iter().any(|t| t.splits() == 4));
        let c = s.candidates(
            &spec(Op::ChunkMean, 64, 512, LocalMode::Block),
            h100,
            h100.limits(),
        );
        assert_eq!(c.keep.len(), 4);
    }

    #[test]
    fn compiled_pruning() {
        let s = spec(Op::Prefill, 128, 512, LocalMode::Block);
        let tile = |block_m| {
            Tile::new(
                &s,
                TileParams {
                    engine: Engine::Mma,
                    block_m,
                    block_n: 64,
                    warps: 8,
                    stages: 2,
                    splits: 0,
                },
            )
            .unwrap()
        };
        let t = tile(128);
        let l = Arch::new(9, 0).limits();
        assert!(
            prune_compiled(&t, 255, 8, 0, l)
                .unwrap()
                .contains("spills 8 bytes")
        );
        assert!(prune_compiled(&t, 255, 0, 0, l).is_none());
        assert!(
            prune_compiled(
                &tile(256),
                255,
                0,
                0,
                crate::target::Limits {
                    regs_per_sm: 32768,
                    ..l
                }
            )
            .is_some()
        );
        assert!(Spaces::parse("[prefill]\nblock_x = [1]").is_err());
    }

    /// Tables name ops; an op without one is tuned over its default tile alone.
    #[test]
    fn tables_are_ops_and_missing_ones_mean_the_default() {
        let e = Spaces::parse("[prefil]\nwarps = [4]").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown op table [prefil]: the tables are chunk_mean"),
            "{e}"
        );
        let only_decode = Spaces::parse("[decode]\nwarps = [2, 4]").unwrap();
        let arch = Arch::new(9, 0);
        let s = spec(Op::Prefill, 128, 512, LocalMode::Block);
        let c = only_decode.candidates(&s, arch, arch.limits());
        assert_eq!(c.keep, vec![Tile::default_for(&s, arch)]);
        assert!(c.pruned.is_empty());
        let d = spec(Op::Decode, 128, 512, LocalMode::Block);
        assert_eq!(
            only_decode.candidates(&d, arch, arch.limits()).keep.len(),
            2
        );
    }
}
