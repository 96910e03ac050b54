//! Compilation targets (`sm_80` ... `sm_90a`) and the per-architecture limits a tile must fit.
//!
//! Pure: the limits are the published numbers of each compute capability, not device queries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A GPU architecture to compile for, e.g. `sm_90` or the arch-specific `sm_90a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    /// Compute capability major.
    pub major: u32,
    /// Compute capability minor.
    pub minor: u32,
    /// The arch-specific (`a`) variant, whose code runs only on exactly this capability.
    pub specific: bool,
}

/// The architectures flasheva accepts (its kernels need `cp.async` and bf16 `mma`, so sm_80+).
pub const SUPPORTED: &str = "sm_80, sm_86, sm_87, sm_89, sm_90, sm_90a, sm_100, sm_100a, sm_120";

/// The default target list of `flasheva compile`.
pub const DEFAULT_ARCHS: [Arch; 5] = [
    Arch::new(8, 0),
    Arch::new(8, 6),
    Arch::new(8, 9),
    Arch::new(9, 0),
    Arch {
        major: 9,
        minor: 0,
        specific: true,
    },
];

/// An architecture name that is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_arch_error(.0))]
pub struct ArchError(pub String);

fn describe_arch_error(s: &str) -> String {
    if s.trim().is_empty() {
        format!("an empty arch name: accepted are {SUPPORTED}, comma-separated")
    } else {
        format!("unknown arch '{s}': accepted are {SUPPORTED}")
    }
}

/// What one thread block may use on an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Shared memory per block after opting in, bytes.
    pub smem_per_block: u32,
    /// Threads per block.
    pub threads_per_block: u32,
    /// 32-bit registers per thread.
    pub regs_per_thread: u32,
    /// 32-bit registers per multiprocessor.
    pub regs_per_sm: u32,
}

impl Arch {
    /// A plain (portable within the major) architecture.
    pub const fn new(major: u32, minor: u32) -> Arch {
        Arch {
            major,
            minor,
            specific: false,
        }
    }

    /// The architecture of a device with compute capability `major.minor` (plain variant).
    pub fn from_capability(major: u32, minor: u32) -> Arch {
        Arch::new(major, minor)
    }

    /// The arch flasheva builds for a device of capability `major.minor`: the arch-specific variant
    /// where flasheva has kernels that need it (sm_90a: the `wgmma` prefill), else the plain one.
    pub fn preferred_for(major: u32, minor: u32) -> Arch {
        Arch {
            major,
            minor,
            specific: (major, minor) == (9, 0),
        }
    }

    /// The NVRTC `--gpu-architecture` value, which yields both PTX and cubin.
    pub fn nvrtc_flag(&self) -> String {
        format!("--gpu-architecture={self}")
    }

    /// Whether code for this arch can run on a device of capability `major.minor` as cubin.
    /// Cubins are used only on exactly their arch.
    pub fn cubin_runs_on(&self, major: u32, minor: u32) -> bool {
        self.major == major && self.minor == minor
    }

    /// Whether this arch's PTX can be JIT-compiled by the driver for `major.minor`: plain PTX runs
    /// on its own capability and every later one; arch-specific PTX only on its own.
    pub fn ptx_runs_on(&self, major: u32, minor: u32) -> bool {
        if self.specific {
            self.cubin_runs_on(major, minor)
        } else {
            (major, minor) >= (self.major, self.minor)
        }
    }

    /// Published per-block limits of the architecture.
    pub fn limits(&self) -> Limits {
        let smem_per_block = match (self.major, self.minor) {
            (8, 0) | (8, 7) => 163 * 1024,
            (8, _) => 99 * 1024,
            (9, _) | (10, _) => 227 * 1024,
            _ => 99 * 1024,
        };
        Limits {
            smem_per_block,
            threads_per_block: 1024,
            regs_per_thread: 255,
            regs_per_sm: 65536,
        }
    }

    /// Parses a comma-separated list such as `sm_80,sm_90a`, keeping the given order, no
    /// duplicates. Spaces around items are allowed; an empty item (`sm_80,,sm_90`, a trailing
    /// comma, an empty list) is refused.
    pub fn parse_list(s: &str) -> Result<Vec<Arch>, ArchError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(ArchError(String::new()));
            }
            let a: Arch = part.parse()?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sm_{}{}{}",
            self.major,
            self.minor,
            if self.specific { "a" } else { "" }
        )
    }
}

impl FromStr for Arch {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Arch, ArchError> {
        let err = || ArchError(s.to_string());
        // Only real (`sm_`) targets: flasheva compiles PTX and cubin for one, and a `compute_`
        // name would compile PTX alone under an `sm_` cache folder.
        let rest = s.strip_prefix("sm_").ok_or_else(err)?;
        let (digits, specific) = match rest.strip_suffix('a') {
            Some(d) => (d, true),
            None => (rest, false),
        };
        if digits.len() < 2 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        let minor: u32 = digits[digits.len() - 1..].parse().map_err(|_| err())?;
        let major: u32 = digits[..digits.len() - 1].parse().map_err(|_| err())?;
        let arch = Arch {
            major,
            minor,
            specific,
        };
        let ok = matches!(
            (major, minor, specific),
            (8, 0, false)
                | (8, 6, false)
                | (8, 7, false)
                | (8, 9, false)
                | (9, 0, _)
                | (10, 0, _)
                | (12, 0, false)
        );
        if ok && arch.to_string() == s {
            Ok(arch)
        } else {
            Err(err())
        }
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for s in ["sm_80", "sm_86", "sm_89", "sm_90", "sm_90a", "sm_120"] {
            assert_eq!(s.parse::<Arch>().unwrap().to_string(), s);
        }
        for bad in [
            "sm_70",
            "sm_75",
            "sm9",
            "sm_",
            "sm_89a",
            "gfx90a",
            "",
            "compute_90",
            "sm_090",
        ] {
            let e = bad.parse::<Arch>().unwrap_err();
            assert!(e.to_string().contains("accepted are sm_80"), "{e}");
        }
        assert_eq!(
            Arch::parse_list("sm_80, sm_90,sm_80").unwrap(),
            vec![Arch::new(8, 0), Arch::new(9, 0)]
        );
        for bad in [
            ",",
            "",
            " ",
            "sm_80,",
            "sm_80,,sm_90",
            ",sm_90",
            "sm_80, ,sm_90",
        ] {
            let e = Arch::parse_list(bad).unwrap_err();
            assert!(e.to_string().contains("accepted are sm_80"), "{bad}: {e}");
        }
    }

    #[test]
    fn compatibility_rules() {
        let a90 = Arch::new(9, 0);
        let a90a: Arch = "sm_90a".parse().unwrap();
        let a80 = Arch::new(8, 0);
        assert!(a90.cubin_runs_on(9, 0));
        assert!(!a80.cubin_runs_on(8, 6));
        assert!(a80.ptx_runs_on(9, 0));
        assert!(!a90.ptx_runs_on(8, 9));
        assert!(a90a.ptx_runs_on(9, 0));
        assert!(!a90a.ptx_runs_on(10, 0));
        assert_eq!(a90.limits().smem_per_block, 227 * 1024);
        assert_eq!(Arch::new(8, 9).limits().smem_per_block, 99 * 1024);
    }
}
