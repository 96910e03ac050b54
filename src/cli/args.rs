//! Flags shared by several subcommands: a kernel spec, a tile override, a target list.

use clap::Args;
use flasheva::presets::{Preset, Presets};
use flasheva::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};
use flasheva::target::Arch;
use flasheva::tile::{Backend, Tile};

use super::usage;

/// The flags that describe one kernel spec. Every op accepts all of them and ignores those it
/// does not use.
#[derive(Args, Debug, Clone, Default)]
pub struct SpecFlags {
    /// Head dimension D: 32, 64, 96, 128 or 256.
    #[arg(long, value_name = "D")]
    pub head_dim: Option<u32>,
    /// Local window W in tokens (prefill, decode); a multiple of the chunk.
    #[arg(long, value_name = "W")]
    pub window: Option<u32>,
    /// Chunk size C in tokens: one summary per C tokens.
    #[arg(long, value_name = "C")]
    pub chunk: Option<u32>,
    /// Local mode: block (fixed windows of W) or sliding (the W most recent tokens). Default block.
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<LocalMode>())]
    pub local: Option<LocalMode>,
    /// Storage type: f16 or bf16. Default bf16.
    #[arg(long, value_name = "TYPE", value_parser = |s: &str| s.parse::<DType>())]
    pub dtype: Option<DType>,
    /// Query heads per key/value head (decode specializes on it). Default 1.
    #[arg(long, value_name = "G")]
    pub group: Option<u32>,
}

impl SpecFlags {
    /// The validated spec of `op`.
    pub fn spec(&self, op: Op) -> anyhow::Result<KernelSpec> {
        let p = SpecParams {
            head_dim: self.head_dim,
            window: self.window,
            chunk: self.chunk,
            local: self.local,
            dtype: self.dtype,
            group: self.group,
        };
        KernelSpec::new(op, &p).map_err(usage)
    }

    /// Whether any spec flag was given.
    pub fn any(&self) -> bool {
        self.head_dim.is_some()
            || self.window.is_some()
            || self.chunk.is_some()
            || self.local.is_some()
            || self.dtype.is_some()
            || self.group.is_some()
    }
}

/// Parses an op name for clap.
pub fn parse_op(s: &str) -> Result<Op, flasheva::spec::SpecError> {
    s.parse()
}

/// A comma-separated list of archs (one flag value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchList(pub Vec<Arch>);

/// Parses a comma-separated arch list for clap.
pub fn parse_archs(s: &str) -> Result<ArchList, flasheva::target::ArchError> {
    Arch::parse_list(s).map(ArchList)
}

/// Parses `--backend` for clap.
pub fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse::<Backend>().map_err(|_| {
        format!(
            "backend {s} is not accepted: accepted are nvrtc (CUDA C++ through NVRTC) and triton"
        )
    })
}

/// The tile for `spec` on `arch`: the default of `backend` (NVRTC's when not given), with
/// `overrides` (`field=value,...`) applied.
pub fn tile_for(
    spec: &KernelSpec,
    arch: Arch,
    backend: Option<Backend>,
    overrides: Option<&str>,
) -> anyhow::Result<Tile> {
    let t = Tile::default_for_backend(spec, arch, backend.unwrap_or(Backend::Nvrtc));
    match overrides {
        Some(o) => {
            let t = t.with_overrides(spec, o).map_err(usage)?;
            t.validate_for(spec, arch).map_err(usage)?;
            Ok(t)
        }
        None => Ok(t),
    }
}

/// Problem sizes for benchmarks and tuning.
#[derive(Args, Debug, Clone, Default)]
pub struct ShapeFlags {
    /// Batch size B.
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Tokens N (prefill, chunk ops); extend and append: the new tokens T per sequence.
    #[arg(long, value_name = "N")]
    pub seq_len: Option<usize>,
    /// Query heads H (chunk_mean: the heads of X).
    #[arg(long, value_name = "H")]
    pub heads: Option<usize>,
    /// Key/value heads Hkv.
    #[arg(long, value_name = "HKV")]
    pub kv_heads: Option<usize>,
    /// Decode query position p (every sequence has p + 1 tokens); extend and append: the
    /// tokens L0 cached before the new ones (default 4096).
    #[arg(long, value_name = "P")]
    pub position: Option<usize>,
}

impl ShapeFlags {
    /// The workload of `spec` from these flags (defaults: B=1, N=4096, H=16, Hkv=H/group).
    pub fn workload(&self, spec: &KernelSpec) -> anyhow::Result<flasheva::workload::Workload> {
        let h = self.heads.unwrap_or(16);
        let hkv = self.kv_heads.unwrap_or(h / spec.group_or_one() as usize);
        if hkv == 0 || !h.is_multiple_of(hkv) {
            return Err(usage(format!(
                "--heads {h} must be a multiple of --kv-heads {hkv}"
            )));
        }
        if matches!(spec.op(), Op::Decode | Op::DecodePaged)
            && h / hkv != spec.group_or_one() as usize
        {
            return Err(usage(format!(
                "decode with --group {} needs --heads = {} x --kv-heads, got {h} and {hkv}",
                spec.group_or_one(),
                spec.group_or_one()
            )));
        }
        let (n, past) = match spec.op() {
            Op::Decode | Op::DecodePaged => (self.position.unwrap_or(4095) + 1, 0),
            Op::Extend | Op::Append | Op::ExtendPaged | Op::AppendPaged => {
                (self.seq_len.unwrap_or(512), self.position.unwrap_or(4096))
            }
            _ => (self.seq_len.unwrap_or(4096), 0),
        };
        let hkv = if matches!(spec.op(), Op::Append | Op::AppendPaged) {
            self.kv_heads.unwrap_or(hkv)
        } else {
            hkv
        };
        Ok(flasheva::workload::Workload {
            spec: *spec,
            b: self.batch.unwrap_or(1),
            n,
            h: if matches!(spec.op(), Op::Append | Op::AppendPaged) {
                hkv
            } else {
                h
            },
            hkv,
            past,
        })
    }
}

/// How the backward may add up dQ (`run` and `bench`).
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct BackwardFlags {
    /// prefill_bwd: bitwise-reproducible gradients (the four-kernel schedule). By default the
    /// two-warpgroup wgmma tiles at D = 128 add dQ with fp32 bulk reductions (faster; the last
    /// bits vary run to run); every other tile is always deterministic.
    #[arg(long)]
    pub deterministic: bool,
}

/// Which specs a command works on: every spec of a preset, or one op's spec from the spec flags.
#[derive(Args, Debug, Clone, Default)]
pub struct Selection {
    /// The specs of this preset (see autotune/presets.toml). With neither a preset nor an op:
    /// compile, bench and tune take the file's default preset; cache export takes everything.
    #[arg(long, value_name = "NAME", conflicts_with = "op")]
    pub preset: Option<String>,
    /// One spec of this op instead (chunk_mean, chunk_summarize, prefill, decode, prefill_bwd, chunk_summarize_bwd, chunk_mean_bwd, extend, append, decode_paged, extend_paged, append_paged), from the spec flags.
    #[arg(value_parser = parse_op)]
    pub op: Option<Op>,
    #[command(flatten)]
    pub spec: SpecFlags,
}

/// A resolved [`Selection`].
pub enum Selected {
    /// One spec.
    Spec(KernelSpec),
    /// A preset, by name.
    Preset(String, Preset),
}

impl Selection {
    /// Whether a preset, an op or any spec flag was given.
    pub fn named(&self) -> bool {
        self.preset.is_some() || self.op.is_some() || self.spec.any()
    }

    /// The spec of the op, or the preset (default: the file's default). Spec flags without an op
    /// are an error naming `command`'s syntax.
    pub fn resolve(&self, command: &str) -> anyhow::Result<Selected> {
        match self.op {
            Some(op) => Ok(Selected::Spec(self.spec.spec(op)?)),
            None if self.spec.any() => Err(usage(format!(
                "spec flags (--head-dim, --window, ...) need an op: flasheva {command} <op> --head-dim D ..."
            ))),
            None => {
                let presets = Presets::builtin();
                let (name, p) = presets.get(self.preset.as_deref()).map_err(usage)?;
                Ok(Selected::Preset(name.to_string(), p.clone()))
            }
        }
    }
}

impl Selected {
    /// Every spec selected.
    pub fn specs(&self) -> anyhow::Result<Vec<KernelSpec>> {
        match self {
            Selected::Spec(s) => Ok(vec![*s]),
            Selected::Preset(name, p) => p.specs(name).map_err(usage),
        }
    }

    /// For messages: the spec's name or `preset NAME`.
    pub fn describe(&self) -> String {
        match self {
            Selected::Spec(s) => s.name(),
            Selected::Preset(name, _) => format!("preset {name}"),
        }
    }
}
