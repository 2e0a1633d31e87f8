//! `vedge-bench`: the harness on its own, for a load box without the edge (and for the
//! harness's own black-box tests, which need an executable to start workers from):
//! `vedge-bench live-burst ...`, `vedge-bench collapse ...`, `vedge-bench zipf ...` and
//! `vedge-bench origin ...` are `vedge bench ...` and `vedge origin ...`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "vedge-bench",
    version,
    about = "The vedge load harness and origin simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the live packager simulator (as `vedge origin`).
    Origin(vedge_bench::origin::OriginArgs),
    #[command(flatten)]
    Bench(vedge_bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vedge-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Origin(args) => vedge_bench::origin::run_cli(args).await,
            Command::Bench(cmd) => vedge_bench::run_cli(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vedge-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
