//! Cache keys: sha256 over a canonical, length-prefixed encoding of everything that changes a
//! compiled binary (crate version, rendered source, spec, tile, compiler and its version, target
//! arch, options). Pure.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::KernelSpec;
use crate::target::Arch;
use crate::tile::Tile;

/// The version of the key encoding; bump it when the encoding changes.
pub const KEY_FORMAT: &str = "flasheva-cache-key/1";

/// A sha256 digest, printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The 64-digit hex form.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

/// Text that is not a 64-digit hex key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("'{0}' is not a cache key: expected 64 hex digits")]
pub struct KeyParseError(pub String);

impl FromStr for Key {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Key, KeyParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| KeyParseError(s.to_string()))?;
        Ok(Key(out))
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// sha256 of bytes as a [`Key`].
pub fn sha256(bytes: &[u8]) -> Key {
    Key(Sha256::digest(bytes).into())
}

/// Builds a digest from named fields; each field is written as `name len:value;` so that no two
/// different field lists encode to the same bytes.
#[derive(Clone, Default)]
pub struct KeyBuilder {
    hasher: Sha256,
}

impl KeyBuilder {
    /// A builder whose first field is the encoding `format`.
    pub fn new(format: &str) -> KeyBuilder {
        let mut b = KeyBuilder::default();
        b.field("format", format);
        b
    }

    /// Adds one field.
    pub fn field(&mut self, name: &str, value: &str) -> &mut Self {
        self.hasher
            .update(format!("{name} {}:", value.len()).as_bytes());
        self.hasher.update(value.as_bytes());
        self.hasher.update(b";");
        self
    }

    /// The digest.
    pub fn finish(&self) -> Key {
        Key(self.hasher.clone().finalize().into())
    }
}

/// The compiler that produced an artifact: its name and version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CompilerId {
    /// e.g. `nvrtc`.
    pub name: String,
    /// e.g. `13.0`.
    pub version: String,
}

impl fmt::Display for CompilerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// Everything that identifies one compiled artifact; [`ArtifactId::key`] is its cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactId<'a> {
    /// The artifact version that rendered it ([`crate::ARTIFACT_VERSION`]).
    pub crate_version: &'a str,
    /// The kernel spec.
    pub spec: &'a KernelSpec,
    /// The tile.
    pub tile: &'a Tile,
    /// The rendered source.
    pub source: &'a str,
    /// The compiler.
    pub compiler: &'a CompilerId,
    /// The target arch.
    pub arch: Arch,
    /// Compiler options, in order.
    pub options: &'a [String],
}

impl ArtifactId<'_> {
    /// The cache key.
    pub fn key(&self) -> Key {
        let mut b = KeyBuilder::new(KEY_FORMAT);
        b.field("crate_version", self.crate_version)
            .field("spec", &self.spec.name())
            .field("tile", &self.tile.to_string())
            .field("source_sha256", &sha256(self.source.as_bytes()).hex())
            .field("compiler", &self.compiler.name)
            .field("compiler_version", &self.compiler.version)
            .field("arch", &self.arch.to_string())
            .field("options", &self.options.len().to_string());
        for o in self.options {
            b.field("option", o);
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Op, SpecParams};

    #[test]
    fn every_field_changes_the_key() {
        let spec = KernelSpec::new(
            Op::Prefill,
            &SpecParams {
                head_dim: Some(64),
                window: Some(128),
                chunk: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        let spec2 = KernelSpec::new(
            Op::Prefill,
            &SpecParams {
                head_dim: Some(64),
                window: Some(128),
                chunk: Some(16),
                ..Default::default()
            },
        )
        .unwrap();
        let tile = Tile::default_for(&spec, Arch::new(9, 0));
        let tile2 = tile.with_overrides(&spec, "stages=1").unwrap();
        let nv = CompilerId {
            name: "nvrtc".into(),
            version: "13.0".into(),
        };
        let nv2 = CompilerId {
            name: "nvrtc".into(),
            version: "13.1".into(),
        };
        let opts = vec!["--std=c++17".to_string()];
        let opts2 = vec!["--std=c++17".to_string(), "-lineinfo".to_string()];
        let base = ArtifactId {
            crate_version: "0.1.0",
            spec: &spec,
            tile: &tile,
            source: "src",
            compiler: &nv,
            arch: Arch::new(9, 0),
            options: &opts,
        };
        let k = base.key();
        assert_eq!(k, base.clone().key(), "deterministic");
        let variants = [
            ArtifactId {
                crate_version: "0.1.1",
                ..base.clone()
            },
            ArtifactId {
                spec: &spec2,
                ..base.clone()
            },
            ArtifactId {
                tile: &tile2,
                ..base.clone()
            },
            ArtifactId {
                source: "src ",
                ..base.clone()
            },
            ArtifactId {
                compiler: &nv2,
                ..base.clone()
            },
            ArtifactId {
                arch: "sm_90a".parse().unwrap(),
                ..base.clone()
            },
            ArtifactId {
                options: &opts2,
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.key(), k, "{v:?}");
        }
        assert_eq!(k.hex().parse::<Key>().unwrap(), k);
        assert!("zz".parse::<Key>().is_err());
    }

    #[test]
    fn fields_are_unambiguous() {
        let a = KeyBuilder::new("f")
            .field("a", "bc")
            .field("d", "")
            .finish();
        let b = KeyBuilder::new("f")
            .field("a", "b")
            .field("cd", "")
            .finish();
        assert_ne!(a, b);
    }
}
