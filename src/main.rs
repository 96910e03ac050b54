//! The `flasheva` command: parse, run, map to an exit code. Everything else is in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
