//! The live-burst load harness (`vedge bench live-burst`) and the live packager simulator
//! (`vedge origin`). Owned by the harness work (issue 5); this is the CLI hook only.

pub mod origin;

use clap::Subcommand;

/// `vedge bench ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Simulate N live viewers against an edge and report latency, stalls and origin amplification.
    LiveBurst(LiveBurstArgs),
}

/// Flags of `vedge bench live-burst`.
#[derive(Debug, clap::Args)]
pub struct LiveBurstArgs {
    /// Edge URL of the stream's master playlist or MPD.
    #[arg(long)]
    pub target: String,
}

/// Entry point of `vedge bench`.
pub async fn run_cli(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::LiveBurst(args) => anyhow::bail!(
            "live-burst harness is not built yet (target {})",
            args.target
        ),
    }
}
