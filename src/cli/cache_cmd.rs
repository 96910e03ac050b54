//! `flasheva cache ls | show | verify | clear`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::{open_store, table, usage};

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the entries: key, kernel, tile, arch, compiler, size.
    Ls,
    /// Print one entry's metadata (KEY: the key or a unique prefix of at least 4 digits).
    Show {
        /// The key or a unique prefix.
        key: String,
    },
    /// Verify every entry's files against their sha256; exits 1 if any entry is damaged.
    Verify,
    /// Delete every entry.
    Clear,
}

pub fn run(a: CacheArgs, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open_store(cache_dir)?;
    match a.command {
        CacheCommand::Ls => {
            let mut rows = Vec::new();
            for s in store.scan()? {
                match s.entry {
                    Ok(e) => {
                        let m = &e.meta;
                        let size: u64 = m.files.values().map(|f| f.bytes).sum();
                        rows.push(vec![
                            m.key.short(),
                            m.name.clone(),
                            m.tile.name(m.spec.op),
                            m.arch.to_string(),
                            m.compiler.to_string(),
                            table::bytes(size),
                            "ok".into(),
                        ]);
                    }
                    Err(reason) => rows.push(vec![
                        s.dir
                            .file_name()
                            .map(|n| n.to_string_lossy()[..12.min(n.len())].to_string())
                            .unwrap_or_default(),
                        s.dir.display().to_string(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        format!("DAMAGED: {reason}"),
                    ]),
                }
            }
            print!(
                "{}",
                table::format(
                    &[
                        "key", "kernel", "tile", "arch", "compiler", "size", "status"
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
                    "{bad} damaged cache entr{} (they are never loaded; `flasheva compile` replaces them)",
                    if bad == 1 { "y" } else { "ies" }
                ));
            }
        }
        CacheCommand::Clear => {
            let n = store.clear()?;
            println!("removed {n} entries from {}", store.root().display());
        }
    }
    Ok(())
}
