//! Configuration from the environment: every variable flasheva reads and every default folder,
//! in one place, with one rule for all of them.
//!
//! The rule: a variable that is unset or set to the empty string is *unset* (its default applies).
//! Switches accept `1`, `true`, `yes`, `on` and `0`, `false`, `no`, `off` (any case); any other
//! value is an error naming the variable and what it accepts. Nothing else in the crate calls
//! `std::env::var` for a `FLASHEVA_*` variable.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `FLASHEVA_CACHE_DIR` | the cache folder | `<user cache dir>/flasheva` |
//! | `FLASHEVA_NVRTC` | folder (or file) of `libnvrtc.so.13` | the usual CUDA folders, then flasheva's data folder |
//! | `FLASHEVA_PYTHON` | the Python interpreter (with Triton) the Triton backend runs | flasheva's Triton environment, then `python3` |
//! | `FLASHEVA_NO_TUNE` | switch: the loader ignores tuned winners | off |
//! | `FLASHEVA_TRUSTED_KEYS` | comma-separated public keys `cache import` trusts (a value naming no key is an error) | none |
//! | `FLASHEVA_REQUIRE_GPU` | switch: the Python package's GPU tests fail instead of skipping without a device (the Rust GPU tests are ignored unless asked for, and then need one) | off |
//! | `FLASHEVA_REQUIRE_TRITON` | switch: Triton tests fail instead of skipping without Triton | off |

use std::ffi::OsString;
use std::path::PathBuf;

/// One environment variable flasheva reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvVar {
    /// Its name.
    pub name: &'static str,
    /// What it means, for `--help`, the README and `doctor`.
    pub meaning: &'static str,
}

/// The cache folder.
pub const CACHE_DIR: EnvVar = EnvVar {
    name: "FLASHEVA_CACHE_DIR",
    meaning: "the cache folder (default <user cache dir>/flasheva)",
};
/// Where NVRTC is.
pub const NVRTC: EnvVar = EnvVar {
    name: "FLASHEVA_NVRTC",
    meaning: "folder (or file) of libnvrtc.so.13, when it is not on the usual paths",
};
/// The Python of the Triton backend.
pub const PYTHON: EnvVar = EnvVar {
    name: "FLASHEVA_PYTHON",
    meaning: "the Python interpreter (with Triton) of the Triton backend (default: flasheva's Triton environment, then python3)",
};
/// The loader ignores tuned winners.
pub const NO_TUNE: EnvVar = EnvVar {
    name: "FLASHEVA_NO_TUNE",
    meaning: "switch: the loader ignores tuned winners and uses default tiles",
};
/// Keys `cache import` requires.
pub const TRUSTED_KEYS: EnvVar = EnvVar {
    name: "FLASHEVA_TRUSTED_KEYS",
    meaning: "comma-separated ed25519 public keys (hex, or files holding one) that cache import trusts",
};
/// The Python package's GPU tests fail instead of skipping.
pub const REQUIRE_GPU: EnvVar = EnvVar {
    name: "FLASHEVA_REQUIRE_GPU",
    meaning: "switch: the Python package's GPU tests fail instead of skipping when there is no device (the Rust GPU tests are ignored unless run with --include-ignored, and then need one)",
};

/// Triton tests fail instead of skipping.
pub const REQUIRE_TRITON: EnvVar = EnvVar {
    name: "FLASHEVA_REQUIRE_TRITON",
    meaning: "switch: Triton tests fail instead of skipping when no Python with Triton is found",
};

/// Every variable, in the order the documentation lists them.
pub const ALL: [EnvVar; 7] = [
    CACHE_DIR,
    NVRTC,
    PYTHON,
    NO_TUNE,
    TRUSTED_KEYS,
    REQUIRE_GPU,
    REQUIRE_TRITON,
];

/// A variable set to a value flasheva does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}={value:?} is not accepted: {accepted}")]
pub struct ConfigError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What it accepts.
    pub accepted: &'static str,
}

/// The raw value of `var`, `None` when unset or empty.
pub fn raw(var: EnvVar) -> Option<OsString> {
    std::env::var_os(var.name).filter(|v| !v.is_empty())
}

/// Parses a switch value by the crate's one truthiness rule.
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A switch variable: `false` when unset or empty, an error for a value that is not a switch.
pub fn switch(var: EnvVar) -> Result<bool, ConfigError> {
    let Some(v) = raw(var) else {
        return Ok(false);
    };
    let s = v.to_string_lossy();
    parse_switch(&s).ok_or_else(|| ConfigError {
        name: var.name,
        value: s.into_owned(),
        accepted: "1, true, yes, on, or 0, false, no, off (empty means unset)",
    })
}

/// `FLASHEVA_CACHE_DIR`, when set.
pub fn cache_dir() -> Option<PathBuf> {
    raw(CACHE_DIR).map(PathBuf::from)
}

/// The cache folder when neither a flag nor `FLASHEVA_CACHE_DIR` names one.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("flasheva"))
}

/// `FLASHEVA_NVRTC`, when set.
pub fn nvrtc_path() -> Option<PathBuf> {
    raw(NVRTC).map(PathBuf::from)
}

/// flasheva's data folder for NVRTC (where `scripts/with-nvrtc` installs the PyPI wheel).
pub fn nvrtc_data_dir() -> Option<PathBuf> {
    dirs::data_local_dir().map(|d| d.join("flasheva/nvrtc/nvidia/cu13/lib"))
}

/// `FLASHEVA_PYTHON`, when set.
pub fn python() -> Option<PathBuf> {
    raw(PYTHON).map(PathBuf::from)
}

/// The Python of flasheva's Triton environment (where `scripts/with-triton` installs Triton).
pub fn triton_python() -> Option<PathBuf> {
    dirs::data_local_dir().map(|d| d.join("flasheva/triton/bin/python3"))
}

/// `FLASHEVA_NO_TUNE`.
pub fn no_tune() -> Result<bool, ConfigError> {
    switch(NO_TUNE)
}

/// `FLASHEVA_REQUIRE_GPU`.
pub fn require_gpu() -> Result<bool, ConfigError> {
    switch(REQUIRE_GPU)
}

/// `FLASHEVA_REQUIRE_TRITON`.
pub fn require_triton() -> Result<bool, ConfigError> {
    switch(REQUIRE_TRITON)
}

/// Splits a trusted-key list: `None` for unset or empty, an error for a value that names no key
/// (only commas or blanks), so that a damaged setting fails closed instead of trusting nothing.
pub fn parse_key_list(value: &str) -> Result<Vec<String>, &'static str> {
    let keys: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return Err(
            "a comma-separated list of at least one public key (64 hex digits, or a file holding them)",
        );
    }
    Ok(keys)
}

/// `FLASHEVA_TRUSTED_KEYS`: `Ok(None)` when unset or empty, the listed keys otherwise.
pub fn trusted_keys() -> Result<Option<Vec<String>>, ConfigError> {
    let Some(v) = raw(TRUSTED_KEYS) else {
        return Ok(None);
    };
    let s = v.to_string_lossy().into_owned();
    parse_key_list(&s)
        .map(Some)
        .map_err(|accepted| ConfigError {
            name: TRUSTED_KEYS.name,
            value: s,
            accepted,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_truthiness_rule() {
        for t in ["1", "true", "TRUE", "yes", "on", " On "] {
            assert_eq!(parse_switch(t), Some(true), "{t}");
        }
        for f in ["0", "false", "no", "off", "OFF"] {
            assert_eq!(parse_switch(f), Some(false), "{f}");
        }
        for bad in ["2", "enable", "y"] {
            assert_eq!(parse_switch(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_lists_fail_closed() {
        assert_eq!(parse_key_list("a, b,").unwrap(), vec!["a", "b"]);
        assert!(parse_key_list(",").is_err());
        assert!(parse_key_list("  ").is_err());
        assert!(parse_key_list(" , , ").is_err());
    }

    #[test]
    fn every_variable_is_documented_here() {
        let doc = include_str!("config.rs");
        for v in ALL {
            assert!(doc.contains(&format!("| `{}` |", v.name)), "{}", v.name);
            assert!(v.name.starts_with("FLASHEVA_"));
        }
    }
}
