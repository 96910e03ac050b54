//! Rendering: `KernelSpec` + `Tile` -> self-contained CUDA C++ source, through tera templates
//! embedded in the binary. Pure and deterministic: the context is a plain struct (fixed field
//! order), templates never see time or environment.
//!
//! Template syntax: blocks are `<% ... %>`, variables `{{ ... }}`, comments `<# ... #>`, so that
//! inline PTX such as `"{%0,%1}"` needs no escaping.

#[cfg(feature = "compiler")]
use std::sync::OnceLock;

use serde::Serialize;

use crate::spec::KernelSpec;
use crate::tile::{SMEM_PAD, Tile, TileError};

/// The templates, by name, exactly as embedded.
pub const TEMPLATES: [(&str, &str); 13] = [
    ("common.cuh", include_str!("../../templates/common.cuh")),
    (
        "attention.cuh",
        include_str!("../../templates/attention.cuh"),
    ),
    (
        "chunk_mean.cu",
        include_str!("../../templates/chunk_mean.cu"),
    ),
    (
        "chunk_summarize.cu",
        include_str!("../../templates/chunk_summarize.cu"),
    ),
    ("prefill.cu", include_str!("../../templates/prefill.cu")),
    (
        "prefill_bwd.cu",
        include_str!("../../templates/prefill_bwd.cu"),
    ),
    (
        "prefill_bwd_common.cuh",
        include_str!("../../templates/prefill_bwd_common.cuh"),
    ),
    (
        "prefill_bwd_sm90a.cu",
        include_str!("../../templates/prefill_bwd_sm90a.cu"),
    ),
    ("decode.cu", include_str!("../../templates/decode.cu")),
    (
        "decode_common.cuh",
        include_str!("../../templates/decode_common.cuh"),
    ),
    ("hopper.cuh", include_str!("../../templates/hopper.cuh")),
    (
        "prefill_sm90a.cu",
        include_str!("../../templates/prefill_sm90a.cu"),
    ),
    (
        "decode_sm90a.cu",
        include_str!("../../templates/decode_sm90a.cu"),
    ),
];

/// A failure to render.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The tile breaks a rule of the op.
    #[error(transparent)]
    Tile(#[from] TileError),
    /// The template engine failed (a bug in a template).
    #[error("rendering {template} failed: {message}")]
    Template {
        /// The template.
        template: &'static str,
        /// tera's message.
        message: String,
    },
}

/// Everything a template may use. Field order is fixed, so rendering is deterministic.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    /// Entry-point name (the spec's name).
    pub name: String,
    /// The tile's name.
    pub tile_name: String,
    /// `f16` or `bf16`.
    pub dtype: &'static str,
    /// D.
    pub head_dim: u32,
    /// W (0 for chunk ops).
    pub window: u32,
    /// C.
    pub chunk: u32,
    /// Sliding local mode.
    pub sliding: bool,
    /// Query heads per kv head (decode; 1 otherwise).
    pub group: u32,
    /// Head tiles (of `decode_rows` heads) per kv head in decode.
    pub head_tiles: u32,
    /// Rows of a decode query tile.
    pub decode_rows: u32,
    /// Tile fields.
    pub block_m: u32,
    /// Tile fields.
    pub block_n: u32,
    /// Tile fields.
    pub warps: u32,
    /// Query rows per warp (prefill).
    pub warp_rows: u32,
    /// Tile fields.
    pub stages: u32,
    /// Shared-memory row padding (elements).
    pub pad: u32,
    /// The mma decode's K/V tiles in 128-byte-swizzled panels ([`crate::tile::decode_kv_swizzled`]).
    pub kv_swizzle: bool,
    /// The paged form of the op (decode_paged: ring and summaries through slot and page tables).
    pub paged: bool,
    /// The extend ops on the Hopper prefill template (positions offset per sequence, a gather
    /// kernel first).
    pub extend: bool,
}

impl RenderContext {
    /// The context of `spec` with `tile`.
    pub fn new(spec: &KernelSpec, tile: &Tile) -> RenderContext {
        let group = spec.group_or_one();
        RenderContext {
            name: spec.name(),
            tile_name: tile.name(spec.op()),
            dtype: spec.dtype().as_str(),
            head_dim: spec.head_dim(),
            window: spec.window_or_zero(),
            chunk: spec.chunk(),
            sliding: spec.sliding(),
            group,
            head_tiles: group.div_ceil(tile.decode_rows()),
            decode_rows: tile.decode_rows(),
            block_m: tile.block_m(),
            block_n: tile.block_n(),
            warps: tile.warps(),
            warp_rows: tile.block_m() / tile.warps().max(1),
            stages: tile.stages(),
            pad: SMEM_PAD,
            kv_swizzle: crate::tile::decode_kv_swizzled(spec.head_dim()),
            paged: matches!(
                spec.op(),
                crate::spec::Op::DecodePaged
                    | crate::spec::Op::ExtendPaged
                    | crate::spec::Op::AppendPaged
            ),
            extend: matches!(
                spec.op(),
                crate::spec::Op::Extend | crate::spec::Op::ExtendPaged
            ),
        }
    }
}

#[cfg(feature = "compiler")]
fn engine() -> &'static Result<tera::Tera, String> {
    static ENGINE: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.set_delimiters(tera::Delimiters {
            block_start: "<%".into(),
            block_end: "%>".into(),
            variable_start: "{{".into(),
            variable_end: "}}".into(),
            comment_start: "<#".into(),
            comment_end: "#>".into(),
        })
        .map_err(|e| e.to_string())?;
        t.autoescape_on(Vec::<&str>::new());
        t.add_raw_templates(TEMPLATES).map_err(|e| e.to_string())?;
        Ok(t)
    })
}

/// Renders the CUDA source of `spec` with `tile` (which must satisfy the op's tile rules).
#[cfg(feature = "compiler")]
///
/// ```
/// use flasheva::{Arch, DType, KernelSpec, LocalMode, Op, SpecParams, Tile};
///
/// let spec = KernelSpec::new(Op::ChunkMean, &SpecParams {
///     head_dim: Some(64), chunk: Some(8), dtype: Some(DType::F16), ..SpecParams::default()
/// })?;
/// let source = flasheva::render::render(&spec, &Tile::default_for(&spec, Arch::new(8, 0)))?;
/// assert!(source.contains("flasheva_chunk_mean"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn render(spec: &KernelSpec, tile: &Tile) -> Result<String, RenderError> {
    tile.check(spec)?;
    if tile.engine() == crate::tile::Engine::Triton {
        return Ok(render_triton(spec, tile));
    }
    let template = crate::ops::of(spec.op()).template(&tile.params());
    let tera = engine().as_ref().map_err(|m| RenderError::Template {
        template,
        message: m.clone(),
    })?;
    let ctx = tera::Context::from_serialize(&RenderContext::new(spec, tile)).map_err(|e| {
        RenderError::Template {
            template,
            message: e.to_string(),
        }
    })?;
    tera.render(template, &ctx)
        .map_err(|e| RenderError::Template {
            template,
            message: format!("{e:#}"),
        })
}

/// The Triton kernels (every op), exactly as embedded.
pub const TRITON_KERNELS: &str = include_str!("../../triton/flasheva_triton.py");

/// The first line of a rendered Triton job: `# flasheva-job: ` and the job as JSON.
pub const TRITON_JOB_PREFIX: &str = "# flasheva-job: ";

/// The Triton source of `spec` with `tile` (a Triton tile): one line naming the kernels to
/// compile (Python function, entry point, compile-time constants), the dtype, num_warps and
/// num_stages, then triton/flasheva_triton.py. triton/compile.py compiles it; the cache key
/// covers all of it.
#[cfg(feature = "compiler")]
fn render_triton(spec: &KernelSpec, tile: &Tile) -> String {
    #[derive(Serialize)]
    struct Job {
        dtype: &'static str,
        num_warps: u32,
        num_stages: u32,
        kernels: Vec<crate::ops::TritonKernel>,
    }
    let job = Job {
        dtype: spec.dtype().as_str(),
        num_warps: tile.warps(),
        num_stages: tile.stages().max(1),
        kernels: crate::ops::of(spec.op()).triton_kernels(spec, tile),
    };
    let line = serde_json::to_string(&job).expect("a job of plain values serializes");
    format!("{TRITON_JOB_PREFIX}{line}\n{TRITON_KERNELS}")
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;
    use crate::spec::{DType, LocalMode, Op, SpecParams};
    use crate::target::Arch;

    fn all_specs() -> Vec<KernelSpec> {
        let mut v = Vec::new();
        for op in Op::ALL {
            for d in crate::spec::HEAD_DIMS {
                for local in LocalMode::ALL {
                    for dtype in DType::ALL {
                        let p = SpecParams {
                            head_dim: Some(d),
                            window: Some(128),
                            chunk: Some(16),
                            local: Some(local),
                            dtype: Some(dtype),
                            group: Some(4),
                        };
                        v.push(KernelSpec::new(op, &p).unwrap());
                    }
                }
            }
        }
        v.dedup();
        v
    }

    #[test]
    fn rendering_is_deterministic_and_complete() {
        for spec in all_specs() {
            let tile = Tile::default_for(&spec, Arch::new(9, 0));
            let a = render(&spec, &tile).unwrap();
            let b = render(&spec, &tile).unwrap();
            assert_eq!(a, b);
            if tile.engine() == crate::tile::Engine::Triton {
                // the backward ops have only their Triton kernels so far: a job
                assert!(a.starts_with(TRITON_JOB_PREFIX), "{spec}");
                assert!(a.contains(&spec.name()) && a.contains(TRITON_KERNELS));
                continue;
            }
            assert!(a.contains("void __launch_bounds__"), "{spec}");
            assert!(a.contains(&spec.name()));
            assert!(
                !a.contains("{{") && !a.contains("<%"),
                "unrendered tag in {spec}"
            );
            assert!(!a.contains("#include"), "{spec} must be self-contained");
        }
    }

    #[test]
    fn specializations_are_compile_time_constants() {
        let p = SpecParams {
            head_dim: Some(128),
            window: Some(512),
            chunk: Some(64),
            local: Some(LocalMode::Sliding),
            dtype: Some(DType::F16),
            group: Some(4),
        };
        let spec = KernelSpec::new(Op::Prefill, &p).unwrap();
        let src = render(&spec, &Tile::default_for(&spec, Arch::new(9, 0))).unwrap();
        for needle in [
            "constexpr int FE_D = 128;",
            "constexpr int FE_W = 512;",
            "constexpr int FE_C = 64;",
            "constexpr bool FE_SLIDING = true;",
            "#define FE_BF16 0",
            "constexpr int BM = 128;",
        ] {
            assert!(src.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn invalid_tiles_do_not_render() {
        // A tile valid for D = 64 (two 16-row tiles per warp) is not one for D = 256.
        let d64 = all_specs()
            .into_iter()
            .find(|s| s.op() == Op::Prefill && s.head_dim() == 64)
            .unwrap();
        let d256 = all_specs()
            .into_iter()
            .find(|s| s.op() == Op::Prefill && s.head_dim() == 256)
            .unwrap();
        let wide = Tile::default_for(&d64, Arch::new(9, 0))
            .with_overrides(&d64, "block_m=128,warps=4")
            .unwrap();
        assert!(render(&d64, &wide).is_ok());
        assert!(matches!(render(&d256, &wide), Err(RenderError::Tile(_))));
    }
}
