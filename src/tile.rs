//! `Tile`: the launch-shape knobs of a kernel (block sizes, warps, pipeline stages, splits),
//! validated once against the rules of their op. The rules, names, shared memory and default
//! tiles of each op live in its description in [`crate::ops`]; this module holds the values, the
//! field domains and the arch checks.
//!
//! Pure: resource needs are computed from the spec, and checked against [`crate::target::Limits`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ops;
use crate::spec::{KernelSpec, Op};
use crate::target::Arch;

/// Rows of the query tile a decode CTA handles (query heads of one kv group, padded to an MMA tile).
pub const DECODE_ROWS: u32 = 16;
/// The decode's swapped tile (`block_m = 8`, mma engine): keys are the MMA's M dimension and up to
/// eight query heads of the group its N, so the padded tile is 8 heads instead of 16.
pub const DECODE_ROWS_KQ: u32 = 8;
/// Query heads per decode head tile for the knobs `t` (see [`Tile::decode_rows`]).
pub fn decode_rows(t: &TileParams) -> u32 {
    if t.engine == Engine::Mma && t.block_m == DECODE_ROWS_KQ {
        DECODE_ROWS_KQ
    } else {
        DECODE_ROWS
    }
}
/// Whether the mma decode keeps K/V tiles in 128-byte-swizzled panels without padding (D a
/// multiple of 64) rather than in padded rows: padded rows made each copy ask L2 for 1.5x the
/// sectors it read (run 67). The one place the rule lives: the shared-memory size and the
/// template (`kv_swizzle`) both read it.
pub fn decode_kv_swizzled(head_dim: u32) -> bool {
    head_dim.is_multiple_of(64)
}
/// Extra elements at the end of every shared-memory row, so `ldmatrix` reads hit distinct banks.
pub const SMEM_PAD: u32 = 8;

/// Which kernel a tile selects: a CUDA C++ template compiled by NVRTC (`mma`, `wgmma`), or the
/// op's Triton kernel (`triton`, compiled by Triton; triton/flasheva_triton.py).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Engine {
    /// `mma.sync` tensor-core tiles with a `cp.async` pipeline (templates/prefill.cu), sm_80+.
    #[default]
    Mma,
    /// Hopper warpgroup MMA with TMA loads and warp specialization (templates/prefill_sm90a.cu),
    /// sm_90a only.
    Wgmma,
    /// The op's Triton kernel (every op; sm_80, sm_86, sm_87, sm_89 and sm_90a).
    Triton,
    /// Hopper decode fed by bulk tensor copies (TMA) into a deep stage ring, one producer warp
    /// and `warps - 1` consumer warps (templates/decode_sm90a.cu), sm_90a only.
    Tma,
}

/// Which compiler builds a tile's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backend {
    /// CUDA C++ templates through NVRTC.
    Nvrtc,
    /// Triton kernels through Triton (a Python subprocess).
    Triton,
}

impl Backend {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nvrtc => "nvrtc",
            Backend::Triton => "triton",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = TileError;
    fn from_str(s: &str) -> Result<Backend, TileError> {
        match s {
            "nvrtc" => Ok(Backend::Nvrtc),
            "triton" => Ok(Backend::Triton),
            _ => Err(TileError::Syntax(format!(
                "backend {s}: accepted are nvrtc, triton"
            ))),
        }
    }
}

/// The arches the Triton backend targets (Triton emits sm_90a code for compute capability 9.0).
pub const TRITON_ARCHS: &str = "sm_80, sm_86, sm_87, sm_89, sm_90a";

impl Engine {
    /// Whether this is the default engine (then it is left out of names and records).
    pub fn is_mma(&self) -> bool {
        *self == Engine::Mma
    }

    /// The name used in tile overrides and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Mma => "mma",
            Engine::Wgmma => "wgmma",
            Engine::Triton => "triton",
            Engine::Tma => "tma",
        }
    }

    /// The compiler of this engine's kernels.
    pub fn backend(self) -> Backend {
        match self {
            Engine::Triton => Backend::Triton,
            _ => Backend::Nvrtc,
        }
    }
}

/// Tile knobs as given by a user, a search space or a file: not yet checked. [`Tile::new`] turns
/// them into a [`Tile`] for one spec.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct TileParams {
    /// The prefill kernel template (default `mma`).
    #[serde(default, skip_serializing_if = "Engine::is_mma")]
    pub engine: Engine,
    /// Query rows per CTA (prefill): 16 or 32 per warp (one or two MMA row tiles); with `wgmma`,
    /// 64 per consumer warpgroup. Decode (mma engine): the head tile, 0 (16 heads as the MMA's
    /// M dimension) or 8 (the swapped tile: keys as M, up to 8 heads as N).
    #[serde(default)]
    pub block_m: u32,
    /// Keys per pipeline tile (prefill: per CTA; decode: per warp).
    #[serde(default)]
    pub block_n: u32,
    /// Warps per CTA.
    #[serde(default)]
    pub warps: u32,
    /// Shared-memory pipeline depth (1 = no overlap of copy and compute).
    #[serde(default)]
    pub stages: u32,
    /// Decode: key/value splits per sequence (0 = choose at launch from the device's size).
    #[serde(default)]
    pub splits: u32,
}

/// The launch-shape knobs of one kernel (block sizes, warps, pipeline stages, splits), checked
/// against the rules of its op: construct with [`Tile::new`] or [`Tile::default_for`]. Fields the
/// op does not use are 0. Reading a tile from JSON checks only bounds that hold for every op;
/// whether it fits a particular spec (the op's rules) is checked where the pair is read
/// ([`Tile::check`]), so an edited record can never hand the loader an impossible tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "TileParams", into = "TileParams")]
pub struct Tile {
    engine: Engine,
    block_m: u32,
    block_n: u32,
    warps: u32,
    stages: u32,
    splits: u32,
}

impl From<Tile> for TileParams {
    fn from(t: Tile) -> TileParams {
        t.params()
    }
}

impl TryFrom<TileParams> for Tile {
    type Error = TileError;
    /// Bounds that hold for every op, so that nothing computed from a tile read from a file can
    /// overflow before its spec is known. Which values an op accepts is its rule alone
    /// (`check_tile`), checked where a tile meets its spec ([`Tile::check`]): a second list of
    /// accepted values here went stale twice (the decode's `block_m = 8`, the tma decode's warps),
    /// and tuned winners were refused without a word.
    fn try_from(p: TileParams) -> Result<Tile, TileError> {
        let bounds: [(&'static str, u32, u32, u32, &'static str); 5] = [
            ("block_m", p.block_m, 0, TILE_MAX_BLOCK_M, "0..=256"),
            ("block_n", p.block_n, 0, TILE_MAX_BLOCK_N, "0..=128"),
            ("warps", p.warps, 1, TILE_MAX_WARPS, "1..=16"),
            ("stages", p.stages, 0, TILE_MAX_STAGES, "0..=8"),
            ("splits", p.splits, 0, MAX_SPLITS, "0..=128"),
        ];
        for (field, value, lo, hi, accepted) in bounds {
            if value < lo || value > hi {
                return Err(TileError::Domain {
                    field,
                    value,
                    accepted,
                });
            }
        }
        Ok(Tile {
            engine: p.engine,
            block_m: p.block_m,
            block_n: p.block_n,
            warps: p.warps,
            stages: p.stages,
            splits: p.splits,
        })
    }
}

/// The largest block_m of any op (the prefill's), and likewise below: the bounds of a tile read
/// from a file (the test every_builtin_candidate_survives_a_winner_record keeps them wide enough).
pub(crate) const TILE_MAX_BLOCK_M: u32 = BLOCK_M[BLOCK_M.len() - 1];
pub(crate) const TILE_MAX_BLOCK_N: u32 = BLOCK_N[BLOCK_N.len() - 1];
pub(crate) const TILE_MAX_WARPS: u32 = 16;
pub(crate) const TILE_MAX_STAGES: u32 = 8;

/// block_m values of the `mma` prefill.
pub(crate) const BLOCK_M: [u32; 5] = [16, 32, 64, 128, 256];
/// block_n values of the `mma` prefill (and the field's domain).
pub(crate) const BLOCK_N: [u32; 4] = [16, 32, 64, 128];
/// Warps of the `mma.sync` kernels.
pub(crate) const WARPS: [u32; 4] = [1, 2, 4, 8];
/// Pipeline stages of the `mma.sync` kernels.
pub(crate) const STAGES: [u32; 3] = [1, 2, 3];
/// The most decode splits.
pub(crate) const MAX_SPLITS: u32 = 128;

/// A tile that breaks a rule of its op or does not fit the architecture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    /// A field outside the values the op's template handles.
    #[error("tile {field} = {value} is not accepted for {op}: accepted are {accepted}")]
    Field {
        /// The op.
        op: Op,
        /// The tile field.
        field: &'static str,
        /// What was given.
        value: u32,
        /// The accepted values.
        accepted: &'static str,
    },
    /// Over the architecture's shared memory per block.
    #[error(
        "tile {tile} needs {need} KiB of shared memory, {arch} allows {limit} KiB: lower block_n, block_m or stages"
    )]
    SharedMemory {
        /// The tile's name.
        tile: String,
        /// KiB needed (rounded up).
        need: u32,
        /// The arch.
        arch: Arch,
        /// KiB allowed.
        limit: u32,
    },
    /// Over the threads per block.
    #[error("tile {tile} needs {need} threads per block, {arch} allows {limit}: lower warps")]
    Threads {
        /// The tile's name.
        tile: String,
        /// Threads needed.
        need: u32,
        /// The arch.
        arch: Arch,
        /// Allowed.
        limit: u32,
    },
    /// A field value outside the bounds of every op (read from a file).
    #[error("tile {field} = {value} is not accepted: accepted are {accepted}")]
    Domain {
        /// The tile field.
        field: &'static str,
        /// What was given.
        value: u32,
        /// The accepted values.
        accepted: &'static str,
    },
    /// An engine the arch cannot run.
    #[error("tile {tile} runs only on {runs_on}, not {arch}")]
    Engine {
        /// The tile's name.
        tile: String,
        /// The arch.
        arch: Arch,
        /// Where it runs.
        runs_on: &'static str,
    },
    /// Text that is not `field=value,...`.
    #[error(
        "cannot read tile '{0}': write field=value pairs separated by commas, fields engine (mma, wgmma, triton), block_m, block_n, warps, stages, splits"
    )]
    Syntax(String),
}

/// `value` must be one of `set` (the op's rule for `field`).
pub(crate) fn one_of(
    op: Op,
    field: &'static str,
    value: u32,
    set: &[u32],
    accepted: &'static str,
) -> Result<(), TileError> {
    if set.contains(&value) {
        Ok(())
    } else {
        Err(TileError::Field {
            op,
            field,
            value,
            accepted,
        })
    }
}

impl TileParams {
    /// The readable name of these knobs for `op`, e.g. `m128_n64_w4_s2`.
    pub fn name(&self, op: Op) -> String {
        ops::of(op).tile_name(self)
    }

    /// These knobs with the fields `op` does not use set to 0.
    pub fn normalized(self, op: Op) -> TileParams {
        ops::of(op).normalize(self)
    }

    /// Applies `field=value,...` (fields `block_m`/`m`, `block_n`/`n`, `warps`/`w`,
    /// `stages`/`s`, `splits`/`k`) to these knobs.
    pub fn with_overrides(mut self, text: &str) -> Result<TileParams, TileError> {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| TileError::Syntax(text.to_string()))?;
            if matches!(k.trim(), "engine" | "e") {
                self.engine = match v.trim() {
                    "mma" => Engine::Mma,
                    "wgmma" => Engine::Wgmma,
                    "triton" => Engine::Triton,
                    "tma" => Engine::Tma,
                    _ => return Err(TileError::Syntax(text.to_string())),
                };
                continue;
            }
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| TileError::Syntax(text.to_string()))?;
            match k.trim() {
                "block_m" | "m" => self.block_m = v,
                "block_n" | "n" => self.block_n = v,
                "warps" | "w" => self.warps = v,
                "stages" | "s" => self.stages = v,
                "splits" | "k" => self.splits = v,
                _ => return Err(TileError::Syntax(text.to_string())),
            }
        }
        Ok(self)
    }
}

impl Tile {
    /// The tile of `p` for `spec`: fields the op does not use are dropped, the rest must follow
    /// the op's rules (not the arch's limits; see [`Tile::validate_for`]).
    pub fn new(spec: &KernelSpec, p: TileParams) -> Result<Tile, TileError> {
        let def = ops::of(spec.op());
        let p = def.normalize(p);
        def.check_tile(spec, &p)?;
        Ok(Tile {
            engine: p.engine,
            block_m: p.block_m,
            block_n: p.block_n,
            warps: p.warps,
            stages: p.stages,
            splits: p.splits,
        })
    }

    /// The knobs of this tile.
    pub fn params(&self) -> TileParams {
        TileParams {
            engine: self.engine,
            block_m: self.block_m,
            block_n: self.block_n,
            warps: self.warps,
            stages: self.stages,
            splits: self.splits,
        }
    }

    /// The prefill kernel template (`mma` for other ops).
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Query rows per CTA (prefill; 0 for other ops).
    pub fn block_m(&self) -> u32 {
        self.block_m
    }

    /// Keys per pipeline tile (prefill, decode; 0 for the chunk ops).
    pub fn block_n(&self) -> u32 {
        self.block_n
    }

    /// Warps per CTA.
    pub fn warps(&self) -> u32 {
        self.warps
    }

    /// Shared-memory pipeline depth (prefill, decode; 0 for the chunk ops).
    pub fn stages(&self) -> u32 {
        self.stages
    }

    /// Decode splits (0 = chosen at launch; 0 for other ops).
    pub fn splits(&self) -> u32 {
        self.splits
    }

    /// Query heads per decode head tile: [`DECODE_ROWS_KQ`] for the swapped mma tile
    /// (`block_m = 8`), else [`DECODE_ROWS`].
    pub fn decode_rows(&self) -> u32 {
        decode_rows(&self.params())
    }

    /// Whether this tile follows the rules of `spec`'s op as it is (normalized and valid): the
    /// check a (spec, tile) pair read from a file or given by a caller goes through.
    pub fn check(&self, spec: &KernelSpec) -> Result<(), TileError> {
        let p = self.params();
        if p.normalized(spec.op()) != p {
            return Err(TileError::Field {
                op: spec.op(),
                field: "tile",
                value: 0,
                accepted: "only the fields the op uses (run it through Tile::new)",
            });
        }
        ops::of(spec.op()).check_tile(spec, &p)
    }

    /// Checks the op's rules and that the tile fits `arch`'s shared memory and threads.
    pub fn validate_for(&self, spec: &KernelSpec, arch: Arch) -> Result<(), TileError> {
        self.check(spec)?;
        if self.engine == Engine::Triton && !triton_targets(arch) {
            return Err(TileError::Engine {
                tile: self.name(spec.op()),
                arch,
                runs_on: TRITON_ARCHS,
            });
        }
        if matches!(self.engine, Engine::Wgmma | Engine::Tma)
            && !(arch.specific && (arch.major, arch.minor) == (9, 0))
        {
            return Err(TileError::Engine {
                tile: self.name(spec.op()),
                arch,
                runs_on: "sm_90a",
            });
        }
        let lim = arch.limits();
        let smem = self.smem_bytes(spec);
        if smem > lim.smem_per_block {
            return Err(TileError::SharedMemory {
                tile: self.name(spec.op()),
                need: smem.div_ceil(1024),
                arch,
                limit: lim.smem_per_block / 1024,
            });
        }
        if self.threads() > lim.threads_per_block {
            return Err(TileError::Threads {
                tile: self.name(spec.op()),
                need: self.threads(),
                arch,
                limit: lim.threads_per_block,
            });
        }
        Ok(())
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        self.warps * 32
    }

    /// Dynamic shared memory per block, bytes, exactly as the templates lay it out.
    pub fn smem_bytes(&self, spec: &KernelSpec) -> u32 {
        ops::of(spec.op()).smem_bytes(spec, &self.params())
    }

    /// The readable name of the tile for `op`, e.g. `m128_n64_w4_s2`.
    pub fn name(&self, op: Op) -> String {
        self.params().name(op)
    }

    /// The tile flasheva uses when no tuned winner exists: the first of the op's preference
    /// list that fits `arch` (else the last of the list).
    pub fn default_for(spec: &KernelSpec, arch: Arch) -> Tile {
        let prefs = ops::of(spec.op()).default_tiles(spec, arch);
        let tiles: Vec<Tile> = prefs
            .into_iter()
            .filter_map(|p| Tile::new(spec, p).ok())
            .collect();
        let fallback = *tiles.last().expect("every op has a valid default tile");
        tiles
            .into_iter()
            .find(|t| t.validate_for(spec, arch).is_ok())
            .unwrap_or(fallback)
    }

    /// The default tile of `spec` on `arch` for `backend`: [`Tile::default_for`] for NVRTC, the
    /// op's Triton default for Triton.
    pub fn default_for_backend(spec: &KernelSpec, arch: Arch, backend: Backend) -> Tile {
        match backend {
            Backend::Triton => Tile::new(spec, ops::of(spec.op()).triton_default(spec))
                .unwrap_or_else(|_| Tile::default_for(spec, arch)),
            _ => Tile::default_for(spec, arch),
        }
    }

    /// This tile with `field=value,...` overrides applied, for `spec`.
    pub fn with_overrides(&self, spec: &KernelSpec, text: &str) -> Result<Tile, TileError> {
        Tile::new(spec, self.params().with_overrides(text)?)
    }
}

/// Whether Triton's output targets `arch` faithfully: sm_80 to sm_89 as themselves, and compute
/// capability 9.0 as sm_90a (Triton emits arch-specific code there, so a plain sm_90 artifact
/// would be mislabeled).
pub fn triton_targets(arch: Arch) -> bool {
    match (arch.major, arch.minor) {
        (8, 0) | (8, 6) | (8, 7) | (8, 9) => !arch.specific,
        (9, 0) => arch.specific,
        _ => false,
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.engine != Engine::Mma {
            write!(f, "engine={},", self.engine.as_str())?;
        }
        write!(
            f,
            "block_m={},block_n={},warps={},stages={},splits={}",
            self.block_m, self.block_n, self.warps, self.stages, self.splits
        )
    }
}

impl FromStr for TileParams {
    type Err = TileError;
    /// Parses the `field=value,...` form that `Tile`'s `Display` prints.
    fn from_str(s: &str) -> Result<TileParams, TileError> {
        TileParams::default().with_overrides(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecParams;

    /// An `mma` prefill tile, unchecked.
    fn prefill(block_m: u32, block_n: u32, warps: u32, stages: u32) -> Tile {
        Tile {
            engine: Engine::Mma,
            block_m,
            block_n,
            warps,
            stages,
            splits: 0,
        }
    }

    fn spec(op: Op, d: u32) -> KernelSpec {
        KernelSpec::new(
            op,
            &SpecParams {
                head_dim: Some(d),
                window: Some(512),
                chunk: Some(64),
                group: Some(4),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn raw(block_m: u32, block_n: u32, warps: u32, stages: u32) -> TileParams {
        TileParams {
            engine: Engine::Mma,
            block_m,
            block_n,
            warps,
            stages,
            splits: 0,
        }
    }

    #[test]
    fn defaults_fit_every_default_arch() {
        for op in Op::ALL {
            for d in crate::spec::HEAD_DIMS {
                let s = spec(op, d);
                for arch in crate::target::DEFAULT_ARCHS {
                    let t = Tile::default_for(&s, arch);
                    if t.engine() == Engine::Triton && !triton_targets(arch) {
                        // a Triton-only op (the backward, so far) has no kernel for this arch
                        assert!(matches!(
                            t.validate_for(&s, arch),
                            Err(TileError::Engine { .. })
                        ));
                        continue;
                    }
                    t.validate_for(&s, arch)
                        .unwrap_or_else(|e| panic!("{s} on {arch}: {e}"));
                    assert_eq!(t.params(), t.params().normalized(op));
                }
            }
        }
        let h100 = Tile::default_for(&spec(Op::Prefill, 128), Arch::new(9, 0));
        assert_eq!(h100.name(Op::Prefill), "m128_n32_w4_s2");
        let ada = Tile::default_for(&spec(Op::Prefill, 128), Arch::new(8, 9));
        assert_eq!(ada.name(Op::Prefill), "m128_n32_w8_s2");
    }

    #[test]
    fn limits_name_the_numbers() {
        let s = spec(Op::Prefill, 256);
        let t = prefill(128, 128, 8, 3);
        let e = t.validate_for(&s, Arch::new(8, 9)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tile m128_n128_w8_s3 needs 462 KiB of shared memory, sm_89 allows 99 KiB: lower block_n, block_m or stages"
        );
        let e = Tile::new(&s, raw(48, 64, 2, 2)).unwrap_err();
        assert!(e.to_string().contains("block_m = 48"), "{e}");
        // two row tiles per warp only up to D = 128
        assert!(Tile::new(&s, raw(128, 64, 4, 2)).is_err());
        assert!(Tile::new(&s, raw(128, 64, 8, 2)).is_ok());
        assert!(prefill(128, 64, 4, 2).check(&s).is_err());
    }

    #[test]
    fn overrides_parse_and_normalize() {
        let s = spec(Op::Prefill, 64);
        let t = Tile::default_for(&s, Arch::new(9, 0))
            .with_overrides(&s, "block_m=64, w=4, n=32,splits=9")
            .unwrap();
        assert_eq!(t, prefill(64, 32, 4, 2));
        assert!(matches!(
            TileParams::default().with_overrides("block_x=3"),
            Err(TileError::Syntax(_))
        ));
        let p: TileParams = "block_m=128,block_n=64,warps=8,stages=2,splits=0"
            .parse()
            .unwrap();
        assert_eq!(Tile::new(&s, p).unwrap(), prefill(128, 64, 8, 2));
    }

    #[test]
    fn tiles_read_from_json_are_checked() {
        let t: Tile =
            serde_json::from_str(r#"{"block_m":128,"block_n":32,"warps":4,"stages":2,"splits":0}"#)
                .unwrap();
        assert_eq!(t, prefill(128, 32, 4, 2));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"block_m":128,"block_n":32,"warps":4,"stages":2,"splits":0}"#
        );
        // out of every op's bounds, or unknown fields: refused when read
        for bad in [
            r#"{"block_m":128,"block_n":32,"warps":0,"stages":2,"splits":0}"#,
            r#"{"block_m":128,"block_n":32,"warps":17,"stages":2,"splits":0}"#,
            r#"{"block_m":512,"block_n":32,"warps":4,"stages":2,"splits":0}"#,
            r#"{"block_m":128,"block_n":4096,"warps":4,"stages":2,"splits":0}"#,
            r#"{"block_m":128,"block_n":32,"warps":4,"stages":9,"splits":0}"#,
            r#"{"block_m":128,"block_n":32,"warps":4,"stages":2,"splits":4096}"#,
            r#"{"block_m":128,"block_n":32,"warps":4,"stages":2,"splits":0,"x":1}"#,
        ] {
            assert!(serde_json::from_str::<Tile>(bad).is_err(), "{bad}");
        }
        // within the bounds but no op's value (block_m = 100, warps = 6): read, then refused by
        // the op's rule where it meets its spec, which names what the op accepts
        for odd in [
            r#"{"block_m":100,"block_n":32,"warps":4,"stages":2,"splits":0}"#,
            r#"{"block_m":128,"block_n":32,"warps":6,"stages":2,"splits":0}"#,
        ] {
            let t: Tile = serde_json::from_str(odd).unwrap();
            let e = t.check(&spec(Op::Prefill, 128)).unwrap_err().to_string();
            assert!(e.contains("accepted are"), "{e}");
        }
        // and for the decode: 7 stages (mma takes 1-6), 7 warps (tma takes 3, 5, 9), 100 keys
        for odd in [
            r#"{"block_m":8,"block_n":16,"warps":4,"stages":7,"splits":0}"#,
            r#"{"engine":"tma","block_m":0,"block_n":32,"warps":7,"stages":6,"splits":0}"#,
            r#"{"block_m":8,"block_n":100,"warps":4,"stages":2,"splits":0}"#,
        ] {
            let t: Tile = serde_json::from_str(odd).unwrap();
            let e = t.check(&spec(Op::Decode, 128)).unwrap_err().to_string();
            assert!(e.contains("accepted are"), "{odd}: {e}");
        }
        // the decode's swapped head tile (block_m = 8) reads back, and is the decode's only
        let kq: Tile =
            serde_json::from_str(r#"{"block_m":8,"block_n":16,"warps":4,"stages":2,"splits":0}"#)
                .unwrap();
        assert!(kq.check(&spec(Op::Decode, 128)).is_ok());
        assert_eq!(kq.decode_rows(), DECODE_ROWS_KQ);
        assert!(kq.check(&spec(Op::Prefill, 128)).is_err());
        // and so does a tma decode tile (a producer warp beside 2, 4 or 8 consumers)
        let tma: Tile = serde_json::from_str(
            r#"{"engine":"tma","block_m":0,"block_n":32,"warps":5,"stages":4,"splits":0}"#,
        )
        .unwrap();
        assert!(tma.check(&spec(Op::Decode, 128)).is_ok());
        // a warp count past every op's is refused at once, naming the field
        let e = serde_json::from_str::<Tile>(r#"{"block_m":0,"block_n":32,"warps":32,"stages":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("warps"), "{e}");
        // a tile valid for some op but not for this spec is refused by the pair check
        let wide = prefill(256, 32, 8, 2);
        assert!(wide.check(&spec(Op::Prefill, 256)).is_err());
        assert!(wide.check(&spec(Op::Prefill, 64)).is_ok());
    }
}
