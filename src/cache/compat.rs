//! Whether a cache entry can run on a device, and how. Pure.
//!
//! A cubin is used only on exactly its arch; PTX where the driver can JIT it (its arch at or
//! below the device's, not an arch-specific `a` target of another device, and an ISA version the
//! driver accepts). Only entries built by this crate version are used, since the kernels' parameter
//! blocks belong to the version that rendered them.

use crate::cache::meta::EntryMeta;
use crate::compile::ptx_isa_accepted;

/// How an entry would be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Usable {
    /// Load the cubin.
    Cubin,
    /// Load the PTX (the driver compiles it).
    Ptx,
}

/// How `meta` can be used on a device of compute capability `cc` with driver version
/// `driver_version` (e.g. 13000), by a loader of `crate_version`; or why not.
pub fn usable_on(
    meta: &EntryMeta,
    cc: (u32, u32),
    driver_version: i32,
    crate_version: &str,
) -> Result<Usable, String> {
    if meta.crate_version != crate_version {
        let base = crate::artifact_crate_version;
        let why = if base(&meta.crate_version) == base(crate_version) {
            " (the same version built from other kernel sources)"
        } else {
            ""
        };
        return Err(format!(
            "built by flasheva {}, this is {crate_version}{why}",
            meta.crate_version
        ));
    }
    if meta.arch.cubin_runs_on(cc.0, cc.1) {
        return Ok(Usable::Cubin);
    }
    if !meta.arch.ptx_runs_on(cc.0, cc.1) {
        return Err(format!(
            "{} code does not run on sm_{}{} (cubin needs the exact arch; PTX needs an arch at or below the device's{})",
            meta.arch,
            cc.0,
            cc.1,
            if meta.arch.specific {
                ", and arch-specific PTX only its own"
            } else {
                ""
            }
        ));
    }
    match &meta.ptx_isa {
        Some(isa) if ptx_isa_accepted(isa, driver_version) => Ok(Usable::Ptx),
        Some(isa) => Err(format!(
            "PTX ISA {isa} is newer than the driver (CUDA {}.{}) accepts",
            driver_version / 1000,
            (driver_version % 1000) / 10
        )),
        None => Err("the entry records no PTX ISA version".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::META_FORMAT;
    use crate::key::{CompilerId, Key};
    use crate::spec::{KernelSpec, Op, SpecParams};
    use crate::target::Arch;
    use crate::tile::Tile;

    fn meta(arch: &str, isa: &str, version: &str) -> EntryMeta {
        let spec = KernelSpec::new(
            Op::ChunkMean,
            &SpecParams {
                head_dim: Some(64),
                chunk: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        let arch: Arch = arch.parse().unwrap();
        EntryMeta {
            format: META_FORMAT,
            key: Key([0; 32]),
            crate_version: version.into(),
            name: spec.name(),
            spec,
            tile: Tile::default_for(&spec, arch),
            arch,
            compiler: CompilerId {
                name: "nvrtc".into(),
                version: "13.0".into(),
            },
            options: vec![],
            entry_points: spec.entry_points(&Tile::default_for(&spec, arch)),
            threads: 128,
            shared_mem_bytes: 0,
            entry_shared_mem: Vec::new(),
            ptx_isa: Some(isa.into()),
            resources: vec![],
            compile_ms: 1.0,
            created_unix: 0,
            files: Default::default(),
            seal: String::new(),
        }
    }

    #[test]
    fn rules() {
        assert_eq!(
            usable_on(&meta("sm_90", "9.0", "0.1.0"), (9, 0), 13000, "0.1.0"),
            Ok(Usable::Cubin)
        );
        assert_eq!(
            usable_on(&meta("sm_90a", "9.0", "0.1.0"), (9, 0), 13000, "0.1.0"),
            Ok(Usable::Cubin)
        );
        assert_eq!(
            usable_on(&meta("sm_80", "9.0", "0.1.0"), (9, 0), 13000, "0.1.0"),
            Ok(Usable::Ptx)
        );
        let e = usable_on(&meta("sm_80", "9.0", "0.1.0"), (9, 0), 12080, "0.1.0").unwrap_err();
        assert!(
            e.contains("PTX ISA 9.0 is newer than the driver (CUDA 12.8)"),
            "{e}"
        );
        let e = usable_on(&meta("sm_90", "9.0", "0.1.0"), (8, 9), 13000, "0.1.0").unwrap_err();
        assert!(e.contains("sm_90 code does not run on sm_89"), "{e}");
        assert!(usable_on(&meta("sm_90a", "9.0", "0.1.0"), (10, 0), 13000, "0.1.0").is_err());
        let e = usable_on(&meta("sm_90", "9.0", "0.0.9"), (9, 0), 13000, "0.1.0").unwrap_err();
        assert_eq!(e, "built by flasheva 0.0.9, this is 0.1.0");
        // an artifact version's crate version: the part before `+kernels.` (a crate version may
        // carry its own `+` build metadata)
        assert_eq!(crate::artifact_crate_version("0.1.0+kernels.abc"), "0.1.0");
        assert_eq!(
            crate::artifact_crate_version("0.1.0+cu13+kernels.abc"),
            "0.1.0+cu13"
        );
        assert_eq!(crate::artifact_crate_version("0.1.0"), "0.1.0");
        assert_eq!(
            crate::artifact_crate_version(crate::ARTIFACT_VERSION),
            crate::CRATE_VERSION
        );
        // the same version built from other kernel sources (another branch, a local edit)
        let e = usable_on(
            &meta("sm_90", "9.0", "0.1.0+kernels.000000000000"),
            (9, 0),
            13000,
            crate::ARTIFACT_VERSION,
        )
        .unwrap_err();
        assert!(
            e.ends_with("(the same version built from other kernel sources)"),
            "{e}"
        );
        assert_eq!(
            usable_on(
                &meta("sm_90", "9.0", crate::ARTIFACT_VERSION),
                (9, 0),
                13000,
                crate::ARTIFACT_VERSION
            ),
            Ok(Usable::Cubin)
        );
        assert!(
            crate::ARTIFACT_VERSION.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+kernels."))
        );
    }
}
