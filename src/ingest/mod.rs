//! Push ingest: walking a VOD asset (HLS or DASH) into the store. CLI hook only until the
//! ingest work lands.

/// Flags of `vedge ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Master playlists, MPDs or local directories of packaged assets.
    #[arg(required = true)]
    pub assets: Vec<String>,
}

/// Entry point of `vedge ingest`.
pub async fn run_cli(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::bail!("ingest is not built yet ({} assets)", args.assets.len())
}
