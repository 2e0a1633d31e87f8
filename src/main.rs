//! argv -> config -> telemetry -> bind -> vedge::run. Nothing else.

use clap::Parser;
use vedge::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Some(Command::Origin(args)) => vedge::bench::origin::run_cli(args).await,
            Some(Command::Bench(cmd)) => vedge::bench::run_cli(cmd).await,
            Some(Command::Ingest(args)) => vedge::ingest::run_cli(args).await,
            _ => anyhow::bail!("serve and demo are being built"),
        }
    })
}
