//! `KernelSpec`: what one FlashEVA kernel computes, validated, and the single source of its
//! readable name, its canonical encoding (part of the cache key) and its file names.
//!
//! Pure: no I/O, no GPU. Every other module receives a `KernelSpec` that already passed
//! [`KernelSpec::new`], so it never re-checks these rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The head dimensions the templates are written for.
pub const HEAD_DIMS: [u32; 5] = [32, 64, 96, 128, 256];
/// Largest accepted local window (tokens).
pub const MAX_WINDOW: u32 = 1 << 20;
/// Largest accepted chunk size (tokens); `chunk_summarize` keeps one logit per token in shared memory.
pub const MAX_CHUNK: u32 = 4096;
/// Largest accepted GQA group (query heads per key/value head).
pub const MAX_GROUP: u32 = 256;

/// The kernels of the FlashEVA contract: four forward ops and the backward of three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// `X[B,N,G,D] -> Xbar[B,Nc,G,D]`, the mean of every complete chunk.
    ChunkMean,
    /// `K, V, omega -> vs`, the softmax-weighted summary value of every complete chunk.
    ChunkSummarize,
    /// Forward attention over local keys and earlier chunk summaries, writing `O` and `LSE`.
    Prefill,
    /// One new query per sequence against the ring buffer and the summary cache (split-KV).
    Decode,
    /// Gradients of prefill: `q, k, v, ks, vs, o, lse, dO -> dq, dk, dv, dks, dvs`.
    PrefillBwd,
    /// Gradients of chunk_summarize: `k, v, omega, dvs -> dk, dv, domega`.
    ChunkSummarizeBwd,
    /// Gradient of chunk_mean: `dXbar -> dX`.
    ChunkMeanBwd,
    /// T new tokens per sequence after L0 cached ones (chunked prefill onto a cache, speculative
    /// verification): attention over the ring, the summaries and the new keys themselves.
    Extend,
    /// Writes the last `min(T, W)` new tokens' keys and values into the ring.
    Append,
    /// decode on paged and indirect caches: rings in a slot pool, summaries in a page pool.
    DecodePaged,
    /// extend on paged and indirect caches.
    ExtendPaged,
    /// append into a ring slot pool.
    AppendPaged,
}

impl Op {
    /// Every op, in a fixed order.
    pub const ALL: [Op; 12] = [
        Op::ChunkMean,
        Op::ChunkSummarize,
        Op::Prefill,
        Op::Decode,
        Op::PrefillBwd,
        Op::ChunkSummarizeBwd,
        Op::ChunkMeanBwd,
        Op::Extend,
        Op::Append,
        Op::DecodePaged,
        Op::ExtendPaged,
        Op::AppendPaged,
    ];

    /// The forward ops (what presets build unless they list ops).
    pub const FORWARD: [Op; 4] = [Op::ChunkMean, Op::ChunkSummarize, Op::Prefill, Op::Decode];

    /// The name used on the command line, in file names and in cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::ChunkMean => "chunk_mean",
            Op::ChunkSummarize => "chunk_summarize",
            Op::Prefill => "prefill",
            Op::Decode => "decode",
            Op::PrefillBwd => "prefill_bwd",
            Op::ChunkSummarizeBwd => "chunk_summarize_bwd",
            Op::ChunkMeanBwd => "chunk_mean_bwd",
            Op::Extend => "extend",
            Op::Append => "append",
            Op::DecodePaged => "decode_paged",
            Op::ExtendPaged => "extend_paged",
            Op::AppendPaged => "append_paged",
        }
    }

    /// Whether the kernel depends on the local window and the local mode.
    pub fn uses_window(self) -> bool {
        matches!(
            self,
            Op::Prefill
                | Op::Decode
                | Op::PrefillBwd
                | Op::Extend
                | Op::Append
                | Op::DecodePaged
                | Op::ExtendPaged
                | Op::AppendPaged
        )
    }

    /// Whether the kernel depends on the local mode (append writes the ring whatever it is).
    pub fn uses_local(self) -> bool {
        self.uses_window() && !matches!(self, Op::Append | Op::AppendPaged)
    }

    /// Whether the kernel is specialized on the GQA group size.
    pub fn uses_group(self) -> bool {
        matches!(self, Op::Decode | Op::DecodePaged)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| SpecError::Unknown {
                field: "op",
                value: s.to_string(),
                accepted: "chunk_mean, chunk_summarize, prefill, decode, prefill_bwd, chunk_summarize_bwd, chunk_mean_bwd, extend, append, decode_paged, extend_paged, append_paged",
            })
    }
}

/// Which raw keys a query sees (see the contract's visibility rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LocalMode {
    /// Windows are fixed blocks of W tokens: key `j` is visible to query `i` iff `j/W == i/W`.
    Block,
    /// Each query sees the W most recent tokens: `j > i - W`.
    Sliding,
}

impl LocalMode {
    /// Both modes, in a fixed order.
    pub const ALL: [LocalMode; 2] = [LocalMode::Block, LocalMode::Sliding];

    /// The name used on the command line and in names.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalMode::Block => "block",
            LocalMode::Sliding => "sliding",
        }
    }
}

impl fmt::Display for LocalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LocalMode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        LocalMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| SpecError::Unknown {
                field: "local",
                value: s.to_string(),
                accepted: "block, sliding",
            })
    }
}

/// Storage type of the tensors (accumulation is always fp32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// Both types, in a fixed order.
    pub const ALL: [DType; 2] = [DType::F16, DType::Bf16];

    /// The name used on the command line and in names.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        2
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "f16" | "fp16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            _ => Err(SpecError::Unknown {
                field: "dtype",
                value: s.to_string(),
                accepted: "f16, bf16",
            }),
        }
    }
}

/// A spec that failed validation: names the field, the value and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A name that is not one of the accepted words.
    #[error("unknown {field} '{value}': accepted are {accepted}")]
    Unknown {
        /// The field.
        field: &'static str,
        /// What was given.
        value: String,
        /// The accepted values.
        accepted: &'static str,
    },
    /// A field that this op needs was not given.
    #[error("{op} needs --{flag}: {what}")]
    Missing {
        /// The op.
        op: Op,
        /// The command-line flag.
        flag: &'static str,
        /// What the value means.
        what: &'static str,
    },
    /// The head dimension is not one the templates support.
    #[error("unsupported head dim {0}: accepted are 32, 64, 96, 128, 256")]
    HeadDim(u32),
    /// A numeric field out of its range.
    #[error("{field} {value} is out of range: accepted is {accepted}")]
    Range {
        /// The field.
        field: &'static str,
        /// What was given.
        value: u32,
        /// The accepted range.
        accepted: String,
    },
    /// A serialized spec carrying fields its op does not use (it would not equal itself).
    #[error("spec {0} lists fields its op does not use")]
    NotNormal(String),
    /// The chunk does not divide the window, or is larger than it.
    #[error(
        "chunk {chunk} does not divide window {window}: the contract needs chunk <= window and window % chunk == 0"
    )]
    ChunkWindow {
        /// C.
        chunk: u32,
        /// W.
        window: u32,
    },
}

/// The values a user gives for a spec; [`KernelSpec::new`] validates them and drops those the op
/// does not use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecParams {
    /// Head dimension D.
    pub head_dim: Option<u32>,
    /// Local window W.
    pub window: Option<u32>,
    /// Chunk size C.
    pub chunk: Option<u32>,
    /// Local mode (default block).
    pub local: Option<LocalMode>,
    /// Storage type (default bf16).
    pub dtype: Option<DType>,
    /// Query heads per key/value head (default 1).
    pub group: Option<u32>,
}

/// One kernel to render, compile, cache and launch. Construct with [`KernelSpec::new`] (or
/// deserialize, which goes through the same checks); the fields an op does not use are `None`, so
/// two specs that compile to the same kernel are equal. A `KernelSpec` value is always valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SpecRepr", into = "SpecRepr")]
pub struct KernelSpec {
    op: Op,
    head_dim: u32,
    window: Option<u32>,
    chunk: u32,
    local: Option<LocalMode>,
    dtype: DType,
    group: Option<u32>,
}

/// The serialized form of a [`KernelSpec`]; reading one re-runs [`KernelSpec::new`] and requires
/// the result to equal what was read (fields an op does not use must be absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecRepr {
    op: Op,
    head_dim: u32,
    window: Option<u32>,
    chunk: u32,
    local: Option<LocalMode>,
    dtype: DType,
    group: Option<u32>,
}

impl From<KernelSpec> for SpecRepr {
    fn from(s: KernelSpec) -> SpecRepr {
        SpecRepr {
            op: s.op,
            head_dim: s.head_dim,
            window: s.window,
            chunk: s.chunk,
            local: s.local,
            dtype: s.dtype,
            group: s.group,
        }
    }
}

impl TryFrom<SpecRepr> for KernelSpec {
    type Error = SpecError;
    fn try_from(r: SpecRepr) -> Result<KernelSpec, SpecError> {
        let spec = KernelSpec::new(
            r.op,
            &SpecParams {
                head_dim: Some(r.head_dim),
                window: r.window,
                chunk: Some(r.chunk),
                local: r.local,
                dtype: Some(r.dtype),
                group: r.group,
            },
        )?;
        if SpecRepr::from(spec) != r {
            return Err(SpecError::NotNormal(spec.name()));
        }
        Ok(spec)
    }
}

impl KernelSpec {
    /// Validates `p` for `op` and normalizes it: fields the op ignores are dropped.
    ///
    /// ```
    /// use flasheva::{DType, KernelSpec, LocalMode, Op, SpecParams};
    ///
    /// let p = SpecParams {
    ///     head_dim: Some(128),
    ///     window: Some(512),
    ///     chunk: Some(64),
    ///     local: Some(LocalMode::Block),
    ///     dtype: Some(DType::Bf16),
    ///     group: Some(4), // prefill ignores the group: dropped
    /// };
    /// let spec = KernelSpec::new(Op::Prefill, &p)?;
    /// assert_eq!(spec.name(), "flasheva_prefill_d128_w512_c64_block_bf16");
    ///
    /// // bad input is an error naming the value and what is accepted
    /// let bad = KernelSpec::new(Op::Prefill, &SpecParams { head_dim: Some(80), ..p });
    /// assert!(bad.unwrap_err().to_string().contains("accepted are 32, 64, 96, 128, 256"));
    /// # Ok::<(), flasheva::spec::SpecError>(())
    /// ```
    pub fn new(op: Op, p: &SpecParams) -> Result<KernelSpec, SpecError> {
        let head_dim = p.head_dim.ok_or(SpecError::Missing {
            op,
            flag: "head-dim",
            what: "the head dimension D (32, 64, 96, 128 or 256)",
        })?;
        if !HEAD_DIMS.contains(&head_dim) {
            return Err(SpecError::HeadDim(head_dim));
        }
        let chunk = p.chunk.ok_or(SpecError::Missing {
            op,
            flag: "chunk",
            what: "the chunk size C (tokens per summary)",
        })?;
        check_range("chunk", chunk, 1, MAX_CHUNK)?;
        let dtype = p.dtype.unwrap_or(DType::Bf16);
        let (window, local) = if op.uses_window() {
            let window = p.window.ok_or(SpecError::Missing {
                op,
                flag: "window",
                what: "the local window W (a multiple of the chunk C)",
            })?;
            check_range("window", window, 1, MAX_WINDOW)?;
            if chunk > window || window % chunk != 0 {
                return Err(SpecError::ChunkWindow { chunk, window });
            }
            let local = op.uses_local().then(|| p.local.unwrap_or(LocalMode::Block));
            (Some(window), local)
        } else {
            (None, None)
        };
        let group = if op.uses_group() {
            let g = p.group.unwrap_or(1);
            check_range("group", g, 1, MAX_GROUP)?;
            Some(g)
        } else {
            None
        };
        Ok(KernelSpec {
            op,
            head_dim,
            window,
            chunk,
            local,
            dtype,
            group,
        })
    }

    /// Which kernel.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Head dimension D.
    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }

    /// Local window W (prefill, decode), `None` for the chunk ops.
    pub fn window(&self) -> Option<u32> {
        self.window
    }

    /// Chunk size C.
    pub fn chunk(&self) -> u32 {
        self.chunk
    }

    /// Local mode (prefill, decode), `None` for the chunk ops.
    pub fn local(&self) -> Option<LocalMode> {
        self.local
    }

    /// Storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Query heads per key/value head (decode), `None` for other ops.
    pub fn group(&self) -> Option<u32> {
        self.group
    }

    /// This spec with another storage type (always valid).
    pub fn with_dtype(mut self, dtype: DType) -> KernelSpec {
        self.dtype = dtype;
        self
    }

    /// The readable name that spells out every specialization, e.g.
    /// `flasheva_prefill_d128_w512_c64_block_bf16`. It is the kernel's entry-point prefix, its
    /// cache directory and its program name; nothing else builds names by hand.
    pub fn name(&self) -> String {
        let mut s = format!("flasheva_{}_d{}", self.op, self.head_dim);
        if let Some(w) = self.window {
            s.push_str(&format!("_w{w}"));
        }
        s.push_str(&format!("_c{}", self.chunk));
        if let Some(l) = self.local {
            s.push('_');
            s.push_str(l.as_str());
        }
        s.push('_');
        s.push_str(self.dtype.as_str());
        if let Some(g) = self.group {
            s.push_str(&format!("_g{g}"));
        }
        s
    }

    /// The entry points a module of this spec compiled with `tile` exports, first the main
    /// kernel (an op's engines may differ: the Hopper extend adds its gather kernel).
    pub fn entry_points(&self, tile: &crate::tile::Tile) -> Vec<String> {
        crate::ops::of(self.op).entry_points(self, &tile.params())
    }

    /// The program (source file) name given to the compiler; it appears in compile logs.
    pub fn source_file_name(&self) -> String {
        format!("{}.cu", self.name())
    }

    /// Local window W, for ops that use it (prefill, decode); 0 otherwise.
    pub fn window_or_zero(&self) -> u32 {
        self.window.unwrap_or(0)
    }

    /// Whether the local mode is sliding.
    pub fn sliding(&self) -> bool {
        self.local == Some(LocalMode::Sliding)
    }

    /// Query heads per kv head for decode, 1 for other ops.
    pub fn group_or_one(&self) -> u32 {
        self.group.unwrap_or(1)
    }

    /// The default attention scale `1/sqrt(D)`.
    pub fn default_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

fn check_range(field: &'static str, value: u32, lo: u32, hi: u32) -> Result<(), SpecError> {
    if value < lo || value > hi {
        return Err(SpecError::Range {
            field,
            value,
            accepted: format!("{lo}..={hi}"),
        });
    }
    Ok(())
}

/// The spec of `op` with every parameter given (tests of the crate's modules).
#[cfg(test)]
pub(crate) fn test_spec(
    op: Op,
    (head_dim, window, chunk): (u32, u32, u32),
    local: LocalMode,
    dtype: DType,
    group: Option<u32>,
) -> KernelSpec {
    KernelSpec::new(
        op,
        &SpecParams {
            head_dim: Some(head_dim),
            window: Some(window),
            chunk: Some(chunk),
            local: Some(local),
            dtype: Some(dtype),
            group,
        },
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(d: u32, w: u32, c: u32) -> SpecParams {
        SpecParams {
            head_dim: Some(d),
            window: Some(w),
            chunk: Some(c),
            ..Default::default()
        }
    }

    #[test]
    fn names_spell_out_every_specialization() {
        let s = KernelSpec::new(Op::Prefill, &params(128, 512, 64)).unwrap();
        assert_eq!(s.name(), "flasheva_prefill_d128_w512_c64_block_bf16");
        let mut p = params(64, 128, 8);
        p.local = Some(LocalMode::Sliding);
        p.dtype = Some(DType::F16);
        p.group = Some(4);
        let d = KernelSpec::new(Op::Decode, &p).unwrap();
        assert_eq!(d.name(), "flasheva_decode_d64_w128_c8_sliding_f16_g4");
        assert_eq!(
            d.entry_points(&crate::tile::Tile::default_for(
                &d,
                crate::target::Arch::new(9, 0)
            )),
            vec![
                "flasheva_decode_d64_w128_c8_sliding_f16_g4".to_string(),
                "flasheva_decode_d64_w128_c8_sliding_f16_g4_combine".to_string()
            ]
        );
    }

    #[test]
    fn unused_fields_are_dropped() {
        let mut p = params(64, 128, 8);
        p.local = Some(LocalMode::Sliding);
        p.group = Some(4);
        let a = KernelSpec::new(Op::ChunkMean, &p).unwrap();
        let b = KernelSpec::new(Op::ChunkMean, &params(64, 4096, 8)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.name(), "flasheva_chunk_mean_d64_c8_bf16");
        let pre = KernelSpec::new(Op::Prefill, &p).unwrap();
        assert_eq!(pre.group, None);
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let e = KernelSpec::new(Op::Prefill, &params(80, 128, 8)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported head dim 80: accepted are 32, 64, 96, 128, 256"
        );
        let e = KernelSpec::new(Op::Prefill, &params(64, 100, 8)).unwrap_err();
        assert!(
            e.to_string().contains("chunk 8 does not divide window 100"),
            "{e}"
        );
        let e = KernelSpec::new(Op::Decode, &params(64, 8, 16)).unwrap_err();
        assert!(matches!(e, SpecError::ChunkWindow { .. }));
        let e = KernelSpec::new(Op::Prefill, &params(64, 0, 8)).unwrap_err();
        assert!(e.to_string().starts_with("window 0 is out of range"), "{e}");
        let mut p = params(64, 128, 8);
        p.window = None;
        let e = KernelSpec::new(Op::Prefill, &p).unwrap_err();
        assert!(e.to_string().starts_with("prefill needs --window"), "{e}");
        assert!(KernelSpec::new(Op::ChunkMean, &p).is_ok());
        assert_eq!(
            "sliding_window"
                .parse::<LocalMode>()
                .unwrap_err()
                .to_string(),
            "unknown local 'sliding_window': accepted are block, sliding"
        );
        assert!("fp8".parse::<DType>().is_err());
        assert!("attention".parse::<Op>().is_err());
    }

    #[test]
    fn specs_read_from_json_are_validated() {
        let s = KernelSpec::new(Op::Decode, &params(64, 128, 8)).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<KernelSpec>(&json).unwrap(), s);
        let ok = r#"{"op":"prefill","head_dim":64,"window":128,"chunk":8,"local":"block","dtype":"bf16","group":null}"#;
        assert!(serde_json::from_str::<KernelSpec>(ok).is_ok());
        for (bad, why) in [
            (
                ok.replace("\"head_dim\":64", "\"head_dim\":0"),
                "unsupported head dim 0",
            ),
            (
                ok.replace("\"chunk\":8", "\"chunk\":0"),
                "chunk 0 is out of range",
            ),
            (
                ok.replace("\"chunk\":8", "\"chunk\":7"),
                "does not divide window",
            ),
            (
                ok.replace("\"group\":null", "\"group\":4"),
                "fields its op does not use",
            ),
            (
                ok.replace("\"local\":\"block\"", "\"local\":\"diagonal\""),
                "unknown variant",
            ),
            (
                ok.replace("\"group\":null", "\"group\":null,\"x\":1"),
                "unknown field",
            ),
        ] {
            let e = serde_json::from_str::<KernelSpec>(&bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
