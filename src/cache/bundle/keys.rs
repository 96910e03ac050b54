//! Signing keys and signatures: keygen, reading a secret key file, parsing a trusted public key,
//! and checking a bundle's signature strictly (`verify_strict`: no weak, small-order keys, no
//! malleable signatures). Key files are read as regular files of bounded size.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cache::bundle::BundleError;
use crate::cache::fsx;

/// Largest key file read.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The `manifest.sig` member.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Signer's public key, hex.
    pub public_key: String,
    /// ed25519 signature of the manifest bytes, hex.
    pub signature: String,
}

/// Creates a signing key: writes the secret to `path` (mode 0600, refusing to overwrite) and
/// returns the public key as hex.
pub fn keygen(path: &Path) -> Result<String, BundleError> {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let text = format!("flasheva-ed25519-secret {}\n", hex::encode(seed));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = opts.open(path).map_err(|e| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason: if e.kind() == std::io::ErrorKind::AlreadyExists {
            "exists already; flasheva does not overwrite keys".into()
        } else {
            e.to_string()
        },
    })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| BundleError::KeyFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

fn read_key_file(path: &Path) -> Result<String, BundleError> {
    let bytes =
        fsx::read_capped(path, MAX_KEY_FILE_BYTES, true).map_err(|e| BundleError::KeyFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    String::from_utf8(bytes).map_err(|_| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason: "is not text".into(),
    })
}

/// Reads a secret key written by [`keygen`] (a regular file of at most 4 KiB).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let bad = |reason: &str| BundleError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = read_key_file(path)?;
    let hexs = text
        .trim()
        .strip_prefix("flasheva-ed25519-secret ")
        .ok_or_else(|| bad("is not a flasheva secret key (flasheva cache keygen writes one)"))?;
    let seed: [u8; 32] = hex::decode(hexs.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("holds a malformed key"))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let t = t.strip_prefix("flasheva-ed25519 ").unwrap_or(t).trim();
    hex::decode(t).ok().and_then(|v| v.try_into().ok())
}

/// A usable ed25519 public key from its bytes: on the curve and not weak (small order: a key for
/// which signatures verify without any secret).
pub fn strong_key(bytes: &[u8; 32]) -> Result<VerifyingKey, &'static str> {
    let k = VerifyingKey::from_bytes(bytes).map_err(|_| "is not a valid ed25519 public key")?;
    if k.is_weak() {
        return Err(
            "is a weak ed25519 key (a small-order point: signatures verify for it without any secret), never trusted",
        );
    }
    Ok(k)
}

/// Parses a trusted public key: 64 hex digits, or a file holding them (a regular file of at
/// most 4 KiB). Weak keys are refused.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, BundleError> {
    let bad = |reason: &str| BundleError::KeyFile {
        path: PathBuf::from(s),
        reason: reason.to_string(),
    };
    let bytes = match key_from_hex(s) {
        Some(b) => b,
        None if !s.trim().is_empty() && Path::new(s).exists() => key_from_hex(&read_key_file(
            Path::new(s),
        )?)
        .ok_or_else(|| {
            bad("holds no public key: expected 64 hex digits (flasheva cache keygen prints one)")
        })?,
        None => {
            return Err(bad(
                "is not a public key: expected 64 hex digits (flasheva cache keygen prints one) or a file holding them",
            ));
        }
    };
    strong_key(&bytes).map_err(bad)
}

/// Checks `sig` (the `manifest.sig` bytes) over `manifest`; returns the signer's key.
pub fn check_signature(manifest: &[u8], sig: &[u8]) -> Result<VerifyingKey, String> {
    let sf: SignatureFile = serde_json::from_slice(sig)
        .map_err(|e| format!("{} does not parse: {e}", super::manifest::SIGNATURE))?;
    let pk_bytes =
        key_from_hex(&sf.public_key).ok_or("the signer's public key is malformed".to_string())?;
    let pk = strong_key(&pk_bytes).map_err(|r| format!("the signer's public key {r}"))?;
    let sig = hex::decode(&sf.signature)
        .ok()
        .and_then(|v| Signature::from_slice(&v).ok())
        .ok_or("the signature is malformed".to_string())?;
    pk.verify_strict(manifest, &sig).map_err(|_| {
        "the signature does not match the manifest (the bundle was altered)".to_string()
    })?;
    Ok(pk)
}
