//! `Tile`: the launch-shape knobs of a kernel (block sizes, warps, pipeline stages, splits),
//! their per-op rules, their resource needs and the default tile of each spec and arch.
//!
//! Pure: resource needs are computed from the spec, and checked against [`crate::target::Limits`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{KernelSpec, Op};
use crate::target::Arch;

/// Rows of the query tile a decode CTA handles (query heads of one kv group, padded to an MMA tile).
pub const DECODE_ROWS: u32 = 16;
/// Extra elements at the end of every shared-memory row, so `ldmatrix` reads hit distinct banks.
pub const SMEM_PAD: u32 = 8;

/// Tile parameters. Fields an op does not use are 0 after [`Tile::normalized`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tile {
    /// Query rows per CTA (prefill): 16 or 32 per warp (one or two MMA row tiles).
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

/// A tile that breaks a rule of its op or does not fit the architecture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// Text that is not `field=value,...`.
    #[error(
        "cannot read tile '{0}': write field=value pairs separated by commas, fields block_m, block_n, warps, stages, splits"
    )]
    Syntax(String),
}

fn one_of(
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

impl Tile {
    /// The tile with the fields `op` does not use set to 0 and derived fields filled in.
    pub fn normalized(self, op: Op) -> Tile {
        match op {
            Op::Prefill => Tile { splits: 0, ..self },
            Op::Decode => Tile { block_m: 0, ..self },
            Op::ChunkMean | Op::ChunkSummarize => Tile {
                warps: self.warps,
                ..Tile::zero()
            },
        }
    }

    const fn zero() -> Tile {
        Tile {
            block_m: 0,
            block_n: 0,
            warps: 0,
            stages: 0,
            splits: 0,
        }
    }

    /// Checks the op's rules (not the arch's limits; see [`Tile::validate_for`]).
    pub fn validate(&self, spec: &KernelSpec) -> Result<(), TileError> {
        let op = spec.op;
        match op {
            Op::Prefill => {
                let m_set = [16, 32, 64, 128, 256];
                one_of(op, "block_m", self.block_m, &m_set, "16, 32, 64, 128, 256")?;
                one_of(
                    op,
                    "block_n",
                    self.block_n,
                    &[16, 32, 64, 128],
                    "16, 32, 64, 128",
                )?;
                one_of(op, "warps", self.warps, &[1, 2, 4, 8], "1, 2, 4, 8")?;
                one_of(op, "stages", self.stages, &[1, 2, 3], "1, 2, 3")?;
                let rows = self.warps * 16;
                let mt = self.block_m / rows;
                if !self.block_m.is_multiple_of(rows)
                    || !(1..=2).contains(&mt)
                    || mt * spec.head_dim > 256
                {
                    return Err(TileError::Field {
                        op,
                        field: "block_m",
                        value: self.block_m,
                        accepted: "16 x warps, or 32 x warps when head_dim <= 128 (one or two 16-row tiles per warp)",
                    });
                }
            }
            Op::Decode => {
                one_of(op, "block_n", self.block_n, &[16, 32, 64], "16, 32, 64")?;
                one_of(op, "warps", self.warps, &[1, 2, 4, 8], "1, 2, 4, 8")?;
                one_of(op, "stages", self.stages, &[1, 2, 3], "1, 2, 3")?;
                if self.splits > 128 {
                    return Err(TileError::Field {
                        op,
                        field: "splits",
                        value: self.splits,
                        accepted: "0 (automatic) or 1..=128",
                    });
                }
            }
            Op::ChunkMean | Op::ChunkSummarize => {
                one_of(op, "warps", self.warps, &[1, 2, 4, 8], "1, 2, 4, 8")?;
            }
        }
        Ok(())
    }

    /// Checks the op's rules and that the tile fits `arch`'s shared memory and threads.
    pub fn validate_for(&self, spec: &KernelSpec, arch: Arch) -> Result<(), TileError> {
        self.validate(spec)?;
        let lim = arch.limits();
        let smem = self.smem_bytes(spec);
        if smem > lim.smem_per_block {
            return Err(TileError::SharedMemory {
                tile: self.name(spec.op),
                need: smem.div_ceil(1024),
                arch,
                limit: lim.smem_per_block / 1024,
            });
        }
        if self.threads() > lim.threads_per_block {
            return Err(TileError::Threads {
                tile: self.name(spec.op),
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
        let d = spec.head_dim;
        let row = (d + SMEM_PAD) * 2;
        match spec.op {
            Op::Prefill => (self.block_m + self.stages * 2 * self.block_n) * row,
            Op::Decode => {
                let q = DECODE_ROWS * row;
                let kv = self.warps * self.stages * 2 * self.block_n * row;
                let combine = self.warps * (DECODE_ROWS * d + 2 * DECODE_ROWS) * 4;
                q + kv.max(combine)
            }
            Op::ChunkMean => 0,
            Op::ChunkSummarize => (spec.chunk + 2 * self.warps + self.warps * d) * 4,
        }
    }

    /// The readable name of the tile for `op`, e.g. `m128_n64_s2`.
    pub fn name(&self, op: Op) -> String {
        match op {
            Op::Prefill => format!(
                "m{}_n{}_w{}_s{}",
                self.block_m, self.block_n, self.warps, self.stages
            ),
            Op::Decode => format!(
                "n{}_w{}_s{}_k{}",
                self.block_n, self.warps, self.stages, self.splits
            ),
            Op::ChunkMean | Op::ChunkSummarize => format!("w{}", self.warps),
        }
    }

    /// The tile flasheva uses when no tuned winner exists: the first of a preference list that
    /// fits `arch`.
    pub fn default_for(spec: &KernelSpec, arch: Arch) -> Tile {
        let d = spec.head_dim;
        let prefs: Vec<Tile> = match spec.op {
            Op::Prefill => {
                let mut v = Vec::new();
                if d <= 128 {
                    if arch.major >= 9 {
                        // Two 16-row tiles per warp: the fastest tile measured on the H100
                        // (docs/VALIDATION.md); on sm_8x ptxas spills it, so it is not their default.
                        v.push(prefill(128, 32, 4, 2));
                    }
                    v.push(prefill(128, 64, 8, 2));
                    v.push(prefill(128, 32, 8, 2));
                }
                v.push(prefill(64, 32, 4, 2));
                v.push(prefill(64, 32, 4, 1));
                v.push(prefill(32, 16, 2, 1));
                v
            }
            Op::Decode => vec![decode(16, 4, 2), decode(16, 2, 2), decode(16, 1, 1)],
            Op::ChunkMean => vec![warps(4)],
            Op::ChunkSummarize => vec![warps(4)],
        };
        let fallback = *prefs.last().expect("non-empty preference list");
        prefs
            .into_iter()
            .find(|t| t.validate_for(spec, arch).is_ok())
            .unwrap_or(fallback)
    }

    /// Applies `field=value,...` overrides to this tile, then normalizes for `op`.
    pub fn with_overrides(mut self, op: Op, text: &str) -> Result<Tile, TileError> {
        self.set_fields(text)?;
        Ok(self.normalized(op))
    }

    fn set_fields(&mut self, text: &str) -> Result<(), TileError> {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| TileError::Syntax(text.to_string()))?;
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
        Ok(())
    }
}

fn prefill(block_m: u32, block_n: u32, warps: u32, stages: u32) -> Tile {
    Tile {
        block_m,
        block_n,
        warps,
        stages,
        splits: 0,
    }
}

fn decode(block_n: u32, warps: u32, stages: u32) -> Tile {
    Tile {
        block_m: 0,
        block_n,
        warps,
        stages,
        splits: 0,
    }
}

fn warps(warps: u32) -> Tile {
    Tile {
        warps,
        ..Tile::zero()
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block_m={},block_n={},warps={},stages={},splits={}",
            self.block_m, self.block_n, self.warps, self.stages, self.splits
        )
    }
}

impl FromStr for Tile {
    type Err = TileError;
    /// Parses the `field=value,...` form that `Display` prints (not normalized).
    fn from_str(s: &str) -> Result<Tile, TileError> {
        let mut t = Tile::zero();
        t.set_fields(s)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecParams;

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

    #[test]
    fn defaults_fit_every_default_arch() {
        for op in Op::ALL {
            for d in crate::spec::HEAD_DIMS {
                let s = spec(op, d);
                for arch in crate::target::DEFAULT_ARCHS {
                    let t = Tile::default_for(&s, arch);
                    t.validate_for(&s, arch)
                        .unwrap_or_else(|e| panic!("{s} on {arch}: {e}"));
                    assert_eq!(t, t.normalized(op));
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
        let e = prefill(48, 64, 2, 2).validate(&s).unwrap_err();
        assert!(e.to_string().contains("block_m = 48"), "{e}");
        // two row tiles per warp only up to D = 128
        assert!(prefill(128, 64, 4, 2).validate(&s).is_err());
        assert!(prefill(128, 64, 8, 2).validate(&s).is_ok());
    }

    #[test]
    fn overrides_parse_and_normalize() {
        let t = Tile::default_for(&spec(Op::Prefill, 64), Arch::new(9, 0))
            .with_overrides(Op::Prefill, "block_m=64, w=4, n=32,splits=9")
            .unwrap();
        assert_eq!(t, prefill(64, 32, 4, 2));
        assert!(matches!(
            Tile::zero().with_overrides(Op::Decode, "block_x=3"),
            Err(TileError::Syntax(_))
        ));
        let p: Tile = "block_m=128,block_n=64,warps=8,stages=2,splits=0"
            .parse()
            .unwrap();
        assert_eq!(p, prefill(128, 64, 8, 2));
    }
}
