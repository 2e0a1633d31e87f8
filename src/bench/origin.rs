//! `vedge origin`: the live packager simulator. CLI hook only until the harness work lands.

/// Flags of `vedge origin`.
#[derive(Debug, clap::Args)]
pub struct OriginArgs {
    /// Listener address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
}

/// Entry point of `vedge origin`.
pub async fn run_cli(args: OriginArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "the live origin simulator is not built yet (listen {})",
        args.listen
    )
}
