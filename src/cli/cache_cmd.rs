//! `flasheva cache ls | show | verify | clear | export | import | keygen | gc`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use flasheva::cache::bundle::{self, ExportOptions};
use flasheva::cache::compat::{Usable, usable_on};
use flasheva::cache::meta::EntryMeta;
use flasheva::gpu::driver;

use super::args::Selection;
use super::{open_store, table, usage};

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the entries: key, kernel, tile, arch, compiler, size, and whether this machine can use it.
    Ls,
    /// Print one entry's metadata (KEY: the key or a unique prefix of at least 4 digits).
    Show {
        /// The key or a unique prefix.
        key: String,
    },
    /// Verify every entry's files against their sha256; exits 1 if any entry is damaged.
    Verify,
    /// Delete every entry, winner record and tuning journal.
    Clear,
    /// Write entries and winner records into one bundle file (tar + zstd) for other machines.
    Export(ExportArgs),
    /// Add a bundle's entries and winner records to the cache, after checking every byte.
    Import(ImportArgs),
    /// Create an ed25519 key to sign bundles with; prints the public key to trust on import.
    Keygen {
        /// Where to write the secret key (not overwritten if it exists).
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },
    /// Evict entries until the cache fits SIZE (damaged first, then least recently used).
    Gc {
        /// Size to fit, e.g. 500M, 2G, 1048576.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: u64,
        /// Also evict the artifacts that tuned winner records name (kept by default).
        #[arg(long)]
        include_winners: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The bundle file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub select: Selection,
    /// Only winner records and the artifacts they name.
    #[arg(long)]
    pub winners_only: bool,
    /// Sign the bundle with this secret key (see `flasheva cache keygen`).
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The bundle file.
    pub file: PathBuf,
    /// Accept only bundles signed by this public key (64 hex digits, or a file holding them);
    /// repeat for several. Also read from FLASHEVA_TRUSTED_KEYS (comma-separated).
    #[arg(long, value_name = "PUBKEY")]
    pub trust: Vec<String>,
}

/// Parses sizes like 500M, 2G, 64K, 1048576.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * mul as f64) as u64)
        .ok_or_else(|| {
            format!("'{s}' is not a size: write a number with an optional K, M, G or T suffix")
        })
}

/// Whether this machine can use an entry: "cubin", "ptx", or why not.
pub fn usability(meta: &EntryMeta, here: &Result<driver::DriverInfo, driver::GpuError>) -> String {
    match here {
        Err(_) => "no: this machine has no CUDA device".into(),
        Ok(d) => {
            let mut best = String::new();
            for g in &d.devices {
                match usable_on(meta, g.capability, d.version, flasheva::CRATE_VERSION) {
                    Ok(Usable::Cubin) => return format!("yes: cubin on gpu {}", g.ordinal),
                    Ok(Usable::Ptx) => best = format!("yes: PTX (driver JIT) on gpu {}", g.ordinal),
                    Err(r) if best.is_empty() => best = format!("no: {r}"),
                    Err(_) => {}
                }
            }
            best
        }
    }
}

pub fn run(a: CacheArgs, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open_store(cache_dir)?;
    match a.command {
        CacheCommand::Ls => {
            let here = driver::probe();
            let mut rows = Vec::new();
            for s in store.scan()? {
                match s.entry {
                    Ok(e) => {
                        let m = &e.meta;
                        let size: u64 = m.files.values().map(|f| f.bytes).sum();
                        rows.push(vec![
                            m.key.short(),
                            m.name.clone(),
                            m.tile.name(m.spec.op()),
                            m.arch.to_string(),
                            m.compiler.to_string(),
                            table::bytes(size),
                            usability(m, &here),
                        ]);
                    }
                    Err(reason) => rows.push(vec![
                        s.dir
                            .file_name()
                            .map(|n| n.to_string_lossy().chars().take(12).collect())
                            .unwrap_or_default(),
                        s.dir.display().to_string(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        format!("DAMAGED (never loaded): {reason}"),
                    ]),
                }
            }
            print!(
                "{}",
                table::format(
                    &[
                        "key",
                        "kernel",
                        "tile",
                        "arch",
                        "compiler",
                        "size",
                        "usable here"
                    ],
                    &rows
                )
            );
            println!("{} entries in {}", rows.len(), store.root().display());
        }
        CacheCommand::Show { key } => {
            let s = store.find_by_key(&key).map_err(|e| match e {
                flasheva::cache::CacheError::NotFound(_)
                | flasheva::cache::CacheError::Ambiguous { .. } => usage(e),
                e => e.into(),
            })?;
            println!("{}", s.dir.display());
            match s.entry {
                Ok(e) => print!("{}", String::from_utf8_lossy(&e.meta.to_json())),
                Err(reason) => {
                    return Err(anyhow!("damaged cache entry {}: {reason}", s.dir.display()));
                }
            }
        }
        CacheCommand::Verify => {
            let scanned = store.scan()?;
            let mut bad = 0;
            for s in &scanned {
                if let Err(reason) = &s.entry {
                    bad += 1;
                    println!("DAMAGED {}: {reason}", s.dir.display());
                }
            }
            println!("{} entries verified, {} damaged", scanned.len(), bad);
            if bad > 0 {
                return Err(anyhow!(
                    "{bad} damaged cache entr{} (they are never loaded; `flasheva compile` replaces them, `flasheva cache gc` removes them)",
                    if bad == 1 { "y" } else { "ies" }
                ));
            }
        }
        CacheCommand::Clear => {
            let n = store.clear()?;
            println!("removed {n} entries from {}", store.root().display());
        }
        CacheCommand::Export(x) => {
            let specs = if x.select.named() {
                Some(x.select.resolve("cache export --out FILE")?.specs()?)
            } else {
                None
            };
            let key = x
                .sign
                .as_deref()
                .map(bundle::read_signing_key)
                .transpose()
                .map_err(usage)?;
            let s = bundle::export(
                &store,
                &x.out,
                &ExportOptions {
                    specs,
                    winners_only: x.winners_only,
                },
                key.as_ref(),
            )?;
            println!(
                "wrote {} ({}): {} entries, {} winner records{}{}",
                x.out.display(),
                table::bytes(s.bytes),
                s.entries,
                s.winners,
                s.signer
                    .map(|k| format!(", signed by {k}"))
                    .unwrap_or_default(),
                if s.skipped_damaged > 0 {
                    format!(", {} damaged entries left out", s.skipped_damaged)
                } else {
                    String::new()
                }
            );
            if s.entries == 0 && s.winners == 0 {
                eprintln!("flasheva: warning: the bundle is empty: nothing in the cache matched");
            }
        }
        CacheCommand::Import(x) => {
            let mut keys = Vec::new();
            let env = flasheva::config::trusted_keys().map_err(usage)?;
            for k in x
                .trust
                .iter()
                .map(String::as_str)
                .chain(env.iter().flatten().map(String::as_str))
            {
                keys.push(bundle::parse_public_key(k).map_err(usage)?);
            }
            let s = bundle::import(&store, &x.file, &keys)?;
            println!(
                "imported {}: {} entries added, {} already present, {} winner records added, {} kept (faster here){}",
                x.file.display(),
                s.added,
                s.present,
                s.winners_added,
                s.winners_kept,
                s.signer
                    .map(|k| format!(
                        "; signed by {k}{}",
                        if keys.is_empty() {
                            " (not checked against trusted keys: none given)"
                        } else {
                            ""
                        }
                    ))
                    .unwrap_or_default()
            );
            for c in &s.conflicts {
                println!("conflict: {c}");
            }
        }
        CacheCommand::Keygen { out } => {
            let pk = bundle::keygen(&out).map_err(usage)?;
            println!(
                "wrote the secret key to {} (keep it on the build machine)",
                out.display()
            );
            println!("public key (give it to importers: flasheva cache import --trust KEY):\n{pk}");
        }
        CacheCommand::Gc {
            max_size,
            include_winners,
        } => {
            let s = store.gc(max_size, include_winners)?;
            println!(
                "evicted {} entries ({} damaged), freed {}, {} left{}{}",
                s.evicted,
                s.damaged,
                table::bytes(s.freed_bytes),
                table::bytes(s.remaining_bytes),
                if s.kept_winners > 0 {
                    format!(
                        "; kept {} winner artifacts (--include-winners evicts them)",
                        s.kept_winners
                    )
                } else {
                    String::new()
                },
                if s.stale_tmp > 0 {
                    format!("; removed {} leftovers of interrupted writes", s.stale_tmp)
                } else {
                    String::new()
                }
            );
            if s.remaining_bytes > max_size {
                eprintln!(
                    "flasheva: warning: the cache is still over {} because winner artifacts are kept",
                    table::bytes(max_size)
                );
            }
        }
    }
    Ok(())
}
