//! The command-line edge: clap definitions (their doc comments are the help), dispatch, and the
//! mapping of errors to one line on stderr and an exit code (2 for bad input, 1 for failures).

/// Writes to standard output; a closed pipe (`flasheva cache ls | head -1`) ends the process
/// quietly with exit code 0, any other write error with one line and exit code 1.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

/// As [`out!`], with a newline.
macro_rules! outln {
    () => { $crate::cli::write_out(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod args;
mod bench_cmd;
pub mod cache_cmd;
pub mod compile_cmd;
mod doctor;
mod render_cmd;
mod run_cmd;
mod table;
mod tune_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// flasheva: FlashEVA attention kernels for NVIDIA GPUs: render, compile with NVRTC, cache, tune and run.
#[derive(Parser, Debug)]
#[command(
    name = "flasheva",
    version,
    long_version = long_version(),
    about,
    long_about = None,
    propagate_version = true,
    after_help = env_help()
)]
pub struct Cli {
    /// Cache folder (default: $FLASHEVA_CACHE_DIR, else <user cache dir>/flasheva; an empty
    /// FLASHEVA_CACHE_DIR counts as unset).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// More log output on stderr: -v shows which artifact each kernel was loaded from and why
    /// others were refused, -vv debug detail (RUST_LOG, when set, takes precedence).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr (no warnings).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Output format of listings and summaries (cache ls/show/verify, doctor, compile, tune,
    /// bench): text for people, json for scripts (each document names its schema and version).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CUDA source of one kernel spec.
    Render(render_cmd::RenderArgs),
    /// Compile a preset or one spec into the cache, for one or more archs (no GPU needed).
    Compile(compile_cmd::CompileArgs),
    /// Inspect, verify or clear the kernel cache.
    Cache(cache_cmd::CacheArgs),
    /// Report NVRTC, the CUDA driver, GPUs, the cache and the configuration in effect.
    Doctor(doctor::DoctorArgs),
    /// Run one op on the GPU on tensors from a safetensors file.
    Run(run_cmd::RunArgs),
    /// Time kernels on the GPU (median of many launches, rotated inputs).
    Bench(bench_cmd::BenchArgs),
    /// Find the fastest correct tile of each spec on this GPU and record the winners.
    Tune(tune_cmd::TuneArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell), e.g.
    /// `flasheva completions bash > /etc/bash_completion.d/flasheva`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Prints one JSON document: `{"schema": schema, ...body's fields}` (schemas are named
/// `flasheva/<command>/<version>`; a version changes when a field changes meaning or goes away).
pub fn json_doc(schema: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let mut doc = serde_json::json!({ "schema": schema });
    if let (Some(d), serde_json::Value::Object(b)) = (doc.as_object_mut(), body) {
        d.extend(b);
    }
    outln!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The one writer behind [`out!`] and [`outln!`].
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("flasheva: error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// Input errors: bad flags, specs, tiles, archs, presets, keys. Exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// Wraps an input error so that it exits with code 2.
pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Usage(e.to_string()))
}

fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Usage>()
            || c.is::<flasheva::spec::SpecError>()
            || c.is::<flasheva::tile::TileError>()
            || c.is::<flasheva::target::ArchError>()
            || c.is::<flasheva::presets::PresetError>()
            || c.is::<flasheva::key::KeyParseError>()
    })
}

/// One line: the whole chain of an error.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// Parses the arguments, runs, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("flasheva: error: {first} (see flasheva --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = one_line(&e);
            // Compile errors carry a log and a source excerpt: keep them, after the one line.
            let mut lines = text.lines();
            eprintln!("flasheva: error: {}", lines.next().unwrap_or(""));
            for l in lines {
                eprintln!("{l}");
            }
            if is_usage(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The environment variables, for the end of `--help` (one rule: unset and empty are the same;
/// switches take 1/true/yes/on and 0/false/no/off).
fn env_help() -> String {
    let mut s = String::from(
        "Environment (unset and empty are the same; switches take 1, true, yes, on or 0, false, no, off):\n",
    );
    for v in flasheva::config::ALL {
        s.push_str(&format!("  {:<22} {}\n", v.name, v.meaning));
    }
    s.push_str("  RUST_LOG               log filter (overrides -v and -q)");
    s
}

/// `--version`: the crate, and what it runs with here (NVRTC, the driver, the CUDA bindings).
fn long_version() -> String {
    // clap builds the command (and this text) on every run: probe only when it will be shown.
    if !std::env::args().any(|a| a == "--version" || a == "-V") {
        return env!("CARGO_PKG_VERSION").to_string();
    }
    let nvrtc = match flasheva::compile::nvrtc::Nvrtc::load() {
        Ok(n) => format!("{}.{}", n.info().version.0, n.info().version.1),
        Err(_) => "not found".into(),
    };
    let driver = match flasheva::gpu::driver::probe() {
        Ok(d) => format!("CUDA {}", d.version_string()),
        Err(_) => "none".into(),
    };
    format!(
        "{}\nartifacts: {} (cache entries of this build only)\nnvrtc: {nvrtc}\ndriver: {driver}\ncuda bindings: cudarc 0.19 (CUDA 13.0 API, loaded at run time)",
        env!("CARGO_PKG_VERSION"),
        flasheva::ARTIFACT_VERSION
    )
}

/// `--format json` on a command that has no JSON form is bad input.
fn text_only(format: Format, command: &str) -> anyhow::Result<()> {
    if format == Format::Json {
        return Err(usage(format!(
            "--format json is not available for {command}: it applies to cache ls, cache show, cache verify, doctor, compile, tune and bench"
        )));
    }
    Ok(())
}

/// How listings and summaries are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and lines for people.
    Text,
    /// One JSON document with a `schema` field (`flasheva/<command>/<version>`).
    Json,
}

/// Logs to stderr: warnings by default, more with -v, only errors with -q; RUST_LOG wins.
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("flasheva={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.verbose, cli.quiet);
    let cache_dir = cli.cache_dir.clone();
    match cli.command {
        Command::Render(a) => {
            text_only(cli.format, "render")?;
            render_cmd::run(a)
        }
        Command::Compile(a) => compile_cmd::run(a, cache_dir, cli.format),
        Command::Cache(a) => cache_cmd::run(a, cache_dir, cli.format),
        Command::Doctor(a) => doctor::run(a, cache_dir, cli.format),
        Command::Run(a) => {
            text_only(cli.format, "run")?;
            run_cmd::run(a, cache_dir)
        }
        Command::Completions { shell } => {
            text_only(cli.format, "completions")?;
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "flasheva", &mut buf);
            out!("{}", String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::Bench(a) => bench_cmd::run(a, cache_dir, cli.format),
        Command::Tune(a) => tune_cmd::run(a, cache_dir, cli.format),
    }
}

/// Opens the cache chosen by `--cache-dir` / `FLASHEVA_CACHE_DIR` / the default, creating it
/// when missing; a folder that is not a flasheva cache is refused as bad input.
pub fn open_store(dir: Option<PathBuf>) -> anyhow::Result<flasheva::cache::CacheStore> {
    let root = match dir {
        Some(d) => d,
        None => flasheva::cache::store::default_root()?,
    };
    flasheva::cache::CacheStore::open(root).map_err(store_error)
}

/// Opens an existing cache for a command that only reads (or only removes): creates nothing;
/// `Err(root)` when there is no cache there yet.
pub fn open_existing_store(
    dir: Option<PathBuf>,
) -> anyhow::Result<Result<flasheva::cache::CacheStore, PathBuf>> {
    let root = match dir {
        Some(d) => d,
        None => flasheva::cache::store::default_root()?,
    };
    match flasheva::cache::CacheStore::open_existing(root) {
        Ok(s) => Ok(Ok(s)),
        Err(flasheva::cache::CacheError::Missing(p)) => Ok(Err(p)),
        Err(e) => Err(store_error(e)),
    }
}

fn store_error(e: flasheva::cache::CacheError) -> anyhow::Error {
    match e {
        e @ flasheva::cache::CacheError::NotACache { .. } => usage(e),
        e => e.into(),
    }
}
