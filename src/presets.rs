//! Presets (`autotune/presets.toml`, embedded): named model settings that expand to kernel
//! specs and default shapes. Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::spec::{DType, KernelSpec, LocalMode, Op, SpecParams};

/// The embedded presets file.
pub const PRESETS_TOML: &str = include_str!("../autotune/presets.toml");

/// One model setting.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// What it is.
    pub description: String,
    /// D.
    pub head_dim: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// W.
    pub window: u32,
    /// C.
    pub chunk: u32,
    /// Local modes to build.
    pub local: Vec<LocalMode>,
    /// Dtypes to build.
    pub dtype: Vec<DType>,
    /// Ops to build (default: the four forward ops).
    #[serde(default = "all_ops")]
    pub ops: Vec<Op>,
    /// Batch of the prefill shapes.
    pub batch: usize,
    /// Tokens of the prefill shapes.
    pub seq_len: usize,
    /// Batch of the decode shapes.
    pub decode_batch: usize,
    /// Query position of the decode shapes.
    pub decode_position: usize,
}

fn all_ops() -> Vec<Op> {
    Op::FORWARD.to_vec()
}

/// The presets file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Presets {
    /// Name of the default preset.
    pub default: String,
    /// Presets by name.
    pub presets: BTreeMap<String, Preset>,
}

/// A preset that does not exist or does not expand.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PresetError {
    /// Unknown name.
    #[error("unknown preset '{name}': accepted are {accepted}")]
    Unknown {
        /// Given.
        name: String,
        /// Known names.
        accepted: String,
    },
    /// The file does not parse.
    #[error("presets file: {0}")]
    Parse(String),
    /// A preset holds an invalid spec.
    #[error("preset '{name}': {source}")]
    Spec {
        /// Preset.
        name: String,
        /// Why.
        source: crate::spec::SpecError,
    },
}

impl Presets {
    /// The embedded presets.
    pub fn builtin() -> Presets {
        Presets::parse(PRESETS_TOML).expect("the embedded presets parse (tested)")
    }

    /// Parses a presets file.
    pub fn parse(text: &str) -> Result<Presets, PresetError> {
        toml::from_str(text).map_err(|e| PresetError::Parse(e.to_string()))
    }

    /// The preset `name`, or the default one for `None`.
    pub fn get(&self, name: Option<&str>) -> Result<(&str, &Preset), PresetError> {
        let name = name.unwrap_or(&self.default);
        self.presets
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| PresetError::Unknown {
                name: name.to_string(),
                accepted: self.presets.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }
}

impl Preset {
    /// GQA group: query heads per kv head.
    pub fn group(&self) -> u32 {
        self.heads / self.kv_heads.max(1)
    }

    /// Every kernel spec of the preset, normalized and without duplicates, in a fixed order.
    pub fn specs(&self, name: &str) -> Result<Vec<KernelSpec>, PresetError> {
        let mut out = Vec::new();
        for &op in &self.ops {
            for &local in &self.local {
                for &dtype in &self.dtype {
                    let p = SpecParams {
                        head_dim: Some(self.head_dim),
                        window: Some(self.window),
                        chunk: Some(self.chunk),
                        local: Some(local),
                        dtype: Some(dtype),
                        group: Some(self.group()),
                    };
                    let s = KernelSpec::new(op, &p).map_err(|source| PresetError::Spec {
                        name: name.to_string(),
                        source,
                    })?;
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_presets_expand() {
        let p = Presets::builtin();
        let (name, eva) = p.get(None).unwrap();
        assert_eq!(name, "eva-lm");
        let specs = eva.specs(name).unwrap();
        // prefill and decode: 2 local modes x 2 dtypes; chunk ops: 2 dtypes
        assert_eq!(specs.len(), 12);
        let (_, llama) = p.get(Some("llama")).unwrap();
        assert_eq!(llama.group(), 4);
        let specs = llama.specs("llama").unwrap();
        assert!(
            specs
                .iter()
                .any(|s| s.name() == "flasheva_decode_d128_w512_c64_block_bf16_g4")
        );
        let e = p.get(Some("gpt")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown preset 'gpt': accepted are eva-lm, llama"
        );
    }
}
