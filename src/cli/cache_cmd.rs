//! `flasheva cache ls | show | verify | clear | export | import | keygen | gc`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use flasheva::cache::bundle::{self, ExportOptions, ImportOptions, Vouched};
use flasheva::cache::compat::{Usable, usable_on};
use flasheva::cache::meta::EntryMeta;
use flasheva::cache::text::{path as shown, printable};
use flasheva::cache::{CacheError, CacheStore};
use flasheva::gpu::driver;

use super::args::Selection;
use super::{Format, json_doc, open_existing_store, open_store, table, usage};

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
        /// Size to fit, e.g. 500M, 2GiB, 500MB, 1048576 (K/M/G/T and KiB/MiB/GiB/TiB are powers
        /// of 1024, KB/MB/GB/TB of 1000).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: u64,
        /// Also evict the artifacts that tuned winner records name (kept by default).
        #[arg(long)]
        include_winners: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The bundle file to write (a new or regular file), or - for standard output.
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
    /// Trust bundles signed by this public key (64 hex digits, or a file holding them); repeat
    /// for several. Also read from FLASHEVA_TRUSTED_KEYS (comma-separated). Without
    /// --allow-unsigned or --rebuild-check, only bundles a trusted key signed are imported.
    #[arg(long, value_name = "PUBKEY")]
    pub trust: Vec<String>,
    /// Import a bundle that no trusted key signed (its artifacts are then trusted as they are).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Recompile every entry here (NVRTC) and import only bundles whose PTX and cubin are
    /// reproduced byte for byte; winner records are then left out unless a trusted key signed.
    #[arg(long)]
    pub rebuild_check: bool,
}

/// Parses sizes like 500M, 2G, 64K, 1048576.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    // K, M, G, T and KiB... are powers of 1024 (what `cache ls` prints); KB, MB... powers of 1000.
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => u64::MAX,
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && mul != u64::MAX)
        .map(|v| (v * mul as f64).min(u64::MAX as f64) as u64)
        .ok_or_else(|| {
            format!(
                "'{s}' is not a size: write a number with an optional unit: K, M, G, T or KiB, MiB, GiB, TiB (powers of 1024), KB, MB, GB, TB (powers of 1000)"
            )
        })
}

/// Whether this machine can use an entry: "cubin", "ptx", or why not.
pub fn usability(meta: &EntryMeta, here: &Result<driver::DriverInfo, driver::GpuError>) -> String {
    match here {
        Err(_) => "no: this machine has no CUDA device".into(),
        Ok(d) => {
            let mut best = String::new();
            for g in &d.devices {
                match usable_on(meta, g.capability, d.version, flasheva::ARTIFACT_VERSION) {
                    Ok(Usable::Cubin) => return format!("yes: cubin on gpu {}", g.ordinal),
                    Ok(Usable::Ptx) => best = format!("yes: PTX (driver JIT) on gpu {}", g.ordinal),
                    Err(r) if best.is_empty() => best = format!("no: {r}"),
                    Err(_) | Ok(_) => {}
                }
            }
            best
        }
    }
}

/// `n entry` / `n entries`.
pub fn entries(n: usize) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

/// Lists what flasheva left because it did not create it.
fn report_foreign(foreign: &[PathBuf]) {
    if foreign.is_empty() {
        return;
    }
    let shown: Vec<String> = foreign.iter().take(5).map(|p| shown(p)).collect();
    eprintln!(
        "flasheva: warning: left {} item{} flasheva did not create: {}{}",
        foreign.len(),
        if foreign.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if foreign.len() > 5 { ", ..." } else { "" }
    );
}

/// The cache for a command that only reads or removes: `None` (after saying so) when there is
/// none yet.
fn existing(cache_dir: Option<PathBuf>, what: &str) -> anyhow::Result<Option<CacheStore>> {
    let store = open_existing_store(cache_dir)?;
    if let Err(p) = &store {
        outln!("there is no cache at {} yet: {what}", shown(p));
    }
    Ok(store.ok())
}

pub fn run(a: CacheArgs, cache_dir: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let json = format == Format::Json;
    // the commands that change the cache or write files print text only: refused before they act
    let text_command = match &a.command {
        CacheCommand::Clear => Some("cache clear"),
        CacheCommand::Export(_) => Some("cache export"),
        CacheCommand::Import(_) => Some("cache import"),
        CacheCommand::Keygen { .. } => Some("cache keygen"),
        CacheCommand::Gc { .. } => Some("cache gc"),
        CacheCommand::Ls | CacheCommand::Show { .. } | CacheCommand::Verify => None,
    };
    if let Some(command) = text_command {
        super::text_only(format, command)?;
    }
    match a.command {
        CacheCommand::Ls => {
            let store = if json {
                match open_existing_store(cache_dir)? {
                    Ok(s) => Some(s),
                    Err(p) => {
                        return json_doc(
                            "flasheva/cache-ls/1",
                            serde_json::json!({ "cache": shown(&p), "exists": false, "entries": [] }),
                        );
                    }
                }
            } else {
                existing(cache_dir, "0 entries")?
            };
            let Some(store) = store else {
                return Ok(());
            };
            let here = driver::probe();
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for s in store.scan()? {
                match s.entry {
                    Ok(e) => {
                        let m = &e.meta;
                        let size: u64 = m.files.values().map(|f| f.bytes).sum();
                        items.push(serde_json::json!({
                            "key": m.key.hex(),
                            "dir": shown(&e.dir),
                            "kernel": m.name,
                            "spec": m.spec,
                            "tile": m.tile.name(m.spec.op()),
                            "arch": m.arch.to_string(),
                            "compiler": m.compiler.to_string(),
                            "bytes": size,
                            "usable_here": usability(m, &here),
                        }));
                        rows.push(vec![
                            m.key.short(),
                            printable(&m.name).into_owned(),
                            m.tile.name(m.spec.op()),
                            m.arch.to_string(),
                            printable(&m.compiler.to_string()).into_owned(),
                            table::bytes(size),
                            usability(m, &here),
                        ]);
                    }
                    Err(damage) => {
                        items.push(serde_json::json!({
                            "dir": shown(&s.dir),
                            "damaged": damage.to_string(),
                        }));
                        rows.push(vec![
                            s.dir
                                .file_name()
                                .map(|n| n.to_string_lossy().chars().take(12).collect())
                                .unwrap_or_default(),
                            shown(&s.dir),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            printable(&format!("DAMAGED (never loaded): {damage}")).into_owned(),
                        ])
                    }
                }
            }
            if json {
                return json_doc(
                    "flasheva/cache-ls/1",
                    serde_json::json!({ "cache": shown(store.root()), "exists": true, "entries": items }),
                );
            }
            out!(
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
            outln!("{} in {}", entries(rows.len()), shown(store.root()));
        }
        CacheCommand::Show { key } => {
            let store = open_existing_store(cache_dir)?.map_err(|p| {
                usage(CacheError::NotFound(format!(
                    "{key} (there is no cache at {} yet)",
                    shown(&p)
                )))
            })?;
            let s = store.find_by_key(&key).map_err(|e| match e {
                CacheError::NotFound(_) | CacheError::Ambiguous { .. } => usage(e),
                e => e.into(),
            })?;
            match s.entry {
                Ok(e) if json => {
                    return json_doc(
                        "flasheva/cache-show/1",
                        serde_json::json!({ "dir": shown(&s.dir), "meta": e.meta }),
                    );
                }
                Ok(e) => {
                    outln!("{}", shown(&s.dir));
                    out!("{}", printable(&String::from_utf8_lossy(&e.meta.to_json())))
                }
                Err(damage) => {
                    return Err(anyhow!(
                        "damaged cache entry {}: {}",
                        shown(&s.dir),
                        printable(&damage.to_string())
                    ));
                }
            }
        }
        CacheCommand::Verify => {
            let Some(store) = existing(cache_dir, "nothing to verify")? else {
                return Ok(());
            };
            let (scanned, foreign) = store.scan_all()?;
            let mut bad = 0;
            let mut damaged = Vec::new();
            for s in &scanned {
                if let Err(damage) = &s.entry {
                    bad += 1;
                    damaged.push(serde_json::json!({
                        "dir": shown(&s.dir),
                        "damage": damage.to_string(),
                    }));
                    if !json {
                        outln!(
                            "DAMAGED {}: {}",
                            shown(&s.dir),
                            printable(&damage.to_string())
                        );
                    }
                }
            }
            if json {
                json_doc(
                    "flasheva/cache-verify/1",
                    serde_json::json!({
                        "cache": shown(store.root()),
                        "verified": scanned.len(),
                        "damaged": damaged,
                        "foreign": foreign.iter().map(|p| shown(p)).collect::<Vec<_>>(),
                    }),
                )?;
            } else {
                outln!("{} verified, {} damaged", entries(scanned.len()), bad);
                report_foreign(&foreign);
            }
            if bad > 0 {
                return Err(anyhow!(
                    "{bad} damaged cache entr{} (they are never loaded; `flasheva compile` replaces them, `flasheva cache gc` removes them)",
                    if bad == 1 { "y" } else { "ies" }
                ));
            }
        }
        CacheCommand::Clear => {
            let Some(store) = existing(cache_dir, "nothing to clear")? else {
                return Ok(());
            };
            let s = store.clear()?;
            outln!(
                "removed {}, {} winner record{} and {} tuning journal{} from {}",
                entries(s.entries),
                s.winners,
                if s.winners == 1 { "" } else { "s" },
                s.journals,
                if s.journals == 1 { "" } else { "s" },
                shown(store.root())
            );
            report_foreign(&s.foreign);
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
            let to_stdout = x.out.as_os_str() == "-";
            if to_stdout && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(usage(
                    "--out - writes a binary bundle to standard output, which is a terminal: redirect it, or give --out FILE",
                ));
            }
            let store = open_existing_store(cache_dir)?.map_err(|p| {
                anyhow!("there is no cache at {} yet: nothing to export", shown(&p))
            })?;
            let opts = ExportOptions::all()
                .specs(specs)
                .winners_only(x.winners_only);
            let s = if to_stdout {
                bundle::export_to(&store, std::io::stdout().lock(), &opts, key.as_ref())?
            } else {
                bundle::export(&store, &x.out, &opts, key.as_ref()).map_err(|e| match e {
                    bundle::BundleError::Output { .. } => usage(e),
                    e => e.into(),
                })?
            };
            let line = format!(
                "wrote {}{}: {}, {} winner records{}{}",
                if to_stdout {
                    "the bundle to standard output".to_string()
                } else {
                    shown(&x.out)
                },
                if to_stdout {
                    String::new()
                } else {
                    format!(" ({})", table::bytes(s.bytes))
                },
                entries(s.entries),
                s.winners,
                s.signer
                    .as_ref()
                    .map(|k| format!(", signed by {k}"))
                    .unwrap_or_default(),
                if s.skipped_damaged > 0 {
                    format!(", {} damaged left out", entries(s.skipped_damaged))
                } else {
                    String::new()
                }
            );
            if to_stdout {
                eprintln!("{line}");
            } else {
                outln!("{line}");
            }
            if s.entries == 0 && s.winners == 0 {
                if s.skipped_damaged > 0 {
                    eprintln!(
                        "flasheva: warning: the bundle is empty: {} damaged and left out (flasheva cache verify names them)",
                        if s.skipped_damaged == 1 {
                            "the only entry is".to_string()
                        } else {
                            format!("all {} entries are", s.skipped_damaged)
                        }
                    );
                } else {
                    eprintln!(
                        "flasheva: warning: the bundle is empty: nothing in the cache matched"
                    );
                }
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
            // Each entry is rebuilt by its backend's compiler (NVRTC or Triton), loaded on use.
            let compilers = x.rebuild_check.then(flasheva::compile::Compilers::new);
            let store = open_store(cache_dir)?;
            let s = bundle::import(
                &store,
                &x.file,
                &ImportOptions::trusting(keys)
                    .allow_unsigned(x.allow_unsigned)
                    .rebuild(
                        compilers
                            .as_ref()
                            .map(|c| c as &dyn flasheva::compile::CompilerSet),
                    ),
            )?;
            let how = match &s.vouched {
                Some(Vouched::Signed(k)) => format!("signed by trusted key {k}"),
                Some(Vouched::AllowedUnsigned) => match &s.signer {
                    Some(k) => {
                        format!("signed by {k}, not a trusted key (accepted with --allow-unsigned)")
                    }
                    None => "not signed (accepted with --allow-unsigned)".into(),
                },
                Some(_) | None => format!(
                    "{} recompiled here to the same bytes (--rebuild-check)",
                    entries(s.rebuilt)
                ),
            };
            outln!(
                "imported {}: {} added, {} already present, {} winner records added, {} kept (faster here); {how}",
                shown(&x.file),
                entries(s.added),
                s.present,
                s.winners_added,
                s.winners_kept,
            );
            if s.winners_skipped > 0 {
                outln!(
                    "left out {} winner record{}: only a trusted signature vouches for measurements",
                    s.winners_skipped,
                    if s.winners_skipped == 1 { "" } else { "s" }
                );
            }
            for c in &s.conflicts {
                outln!("conflict: {c}");
            }
        }
        CacheCommand::Keygen { out } => {
            let pk = bundle::keygen(&out).map_err(usage)?;
            outln!(
                "wrote the secret key to {} (keep it on the build machine)",
                shown(&out)
            );
            outln!("public key (give it to importers: flasheva cache import --trust KEY):\n{pk}");
        }
        CacheCommand::Gc {
            max_size,
            include_winners,
        } => {
            let Some(store) = existing(cache_dir, "nothing to collect")? else {
                return Ok(());
            };
            let s = store.gc(max_size, include_winners)?;
            outln!(
                "evicted {} ({} damaged), freed {}, {} left{}{}",
                entries(s.evicted),
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
            report_foreign(&s.foreign);
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_the_units_ls_prints() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5 MiB"), Ok(3 << 19));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        for bad in ["", "M", "-1G", "2 parsecs", "1e9"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
