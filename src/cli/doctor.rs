//! `flasheva doctor`: what this machine offers flasheva (NVRTC, driver, GPUs) and the cache.

use std::path::PathBuf;

use flasheva::compile::nvrtc::Nvrtc;
use flasheva::gpu::driver;

use flasheva::cache::{CacheError, CacheStore};

use super::table;

pub fn run(cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    outln!("flasheva {}", env!("CARGO_PKG_VERSION"));
    match Nvrtc::load() {
        Ok(n) => {
            let i = n.info();
            let at = i
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "found by the dynamic loader".into());
            let archs: Vec<String> = i.archs.iter().map(|a| format!("sm_{a}")).collect();
            outln!(
                "nvrtc:  {}.{} ({at}); targets {}",
                i.version.0,
                i.version.1,
                archs.join(" ")
            );
        }
        Err(e) => outln!("nvrtc:  not available: {e}"),
    }
    let here = driver::probe();
    match &here {
        Ok(d) => {
            let (isa_major, isa_minor) = driver::max_ptx_isa(d.version);
            outln!(
                "driver: CUDA {} (accepts PTX ISA up to {isa_major}.{isa_minor})",
                d.version_string()
            );
            for g in &d.devices {
                outln!(
                    "gpu {}:  {}, sm_{}{}, {} SMs, {} memory, {} shared memory per block, {} L2",
                    g.ordinal,
                    g.name,
                    g.capability.0,
                    g.capability.1,
                    g.sm_count,
                    table::bytes(g.total_mem as u64),
                    table::bytes(g.smem_per_block_optin as u64),
                    table::bytes(g.l2_bytes as u64)
                );
            }
        }
        Err(e) => outln!("driver: {e}"),
    }
    let root = match cache_dir {
        Some(d) => d,
        None => flasheva::cache::store::default_root()?,
    };
    let store = match CacheStore::open_existing(&root) {
        Ok(store) => store,
        Err(CacheError::Missing(_)) => {
            outln!(
                "cache:  there is no cache at {} yet (flasheva compile or cache import creates it)",
                flasheva::cache::text::path(&root)
            );
            return Ok(());
        }
        Err(e @ CacheError::NotACache { .. }) => {
            outln!(
                "cache:  {}",
                flasheva::cache::text::printable(&e.to_string())
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let scanned = store.scan()?;
    let damaged = scanned.iter().filter(|s| s.entry.is_err()).count();
    outln!(
        "cache:  {} ({}, {} damaged, {} winner records, {})",
        flasheva::cache::text::path(store.root()),
        super::cache_cmd::entries(scanned.len()),
        damaged,
        store.all_winners().len(),
        table::bytes(store.size_bytes())
    );
    let mut why: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &scanned {
        if let Ok(e) = &s.entry {
            *why.entry(super::cache_cmd::usability(&e.meta, &here))
                .or_default() += 1;
        }
    }
    for (reason, n) in why {
        outln!(
            "        {n} entr{} usable here? {reason}",
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}
