//! The command line: subcommands and their flags. Only `main.rs` parses argv; every flag of
//! `serve` mirrors a field of the TOML config file (`config::RawConfig`; the store flags its
//! `[store]` table) and overrides it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    engine_name, format_size, DEFAULT_CDN_ID, DEFAULT_IO_ENGINE, DEFAULT_LISTEN, DEFAULT_RAM_SIZE,
    DEFAULT_STORE_REGION_SIZE, DEFAULT_STORE_SIZE,
};

/// `help` followed by `[default: default]`, clap's own wording, for the `serve` flags: they are
/// `Option`s (a flag overrides the file only when given), so clap's `default_value` cannot be
/// used, and the default shown comes from the same constant validation applies.
fn with_default(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// vedge: a CDN edge for HLS and DASH video.
///
/// With no subcommand, vedge runs `demo`: a sample origin and an edge in front of it.
#[derive(Debug, Parser)]
#[command(name = "vedge", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `vedge=debug`. Env: VEDGE_LOG.
    #[arg(long, global = true, env = "VEDGE_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the edge in front of an origin.
    Serve(ServeArgs),
    /// Run a built-in sample origin (VOD HLS + DASH, a live HLS stream) and an edge in front of it.
    Demo(DemoArgs),
    /// Run the live packager simulator (HLS and DASH live streams, request counters at /__stats).
    Origin(vedge_bench::origin::OriginArgs),
    /// Load harnesses that measure an edge (vedge or a peer).
    #[command(subcommand)]
    Bench(vedge_bench::BenchCommand),
    /// Pre-warm whole VOD assets (HLS or DASH) into a running edge or a store.
    Ingest(crate::ingest::IngestArgs),
}

/// Flags of `vedge serve`. Each one overrides the same field of the config file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (see fixtures/configs/vedge.toml). Flags override its values.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(long, value_name = "ADDR", help = with_default("Viewer listener address.", DEFAULT_LISTEN))]
    pub listen: Option<String>,

    /// Default origin, e.g. http://127.0.0.1:9000 (required here or in the config file).
    #[arg(long, value_name = "URL")]
    pub origin: Option<String>,

    /// Send a path prefix to another origin, e.g. /live/=http://packager:8000 (repeatable;
    /// longest prefix wins; routes from the config file are kept unless a flag names the same prefix).
    #[arg(long = "route", value_name = "PREFIX=URL")]
    pub routes: Vec<String>,

    /// Admin listener (metrics, health, purge, ingest). [default: none]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// Bearer token for the admin API. Env: VEDGE_ADMIN_TOKEN. [default: none; the admin API
    /// refuses to start without one, metrics and health stay open]
    #[arg(
        long,
        env = "VEDGE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// SSD store (`[store] path`): a file or block device. [default: none, RAM tier only]
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,

    #[arg(
        long,
        value_name = "SIZE",
        help = with_default("Size of the store, e.g. 4GiB.", format_size(DEFAULT_STORE_SIZE))
    )]
    pub store_size: Option<String>,

    #[arg(
        long,
        value_name = "SIZE",
        help = with_default(
            "Store region size, e.g. 256MiB.",
            format_size(DEFAULT_STORE_REGION_SIZE)
        )
    )]
    pub store_region_size: Option<String>,

    /// Wipe and reformat a store of another version or size instead of refusing to start.
    #[arg(long)]
    pub store_reformat: bool,

    #[arg(
        long,
        value_name = "ENGINE",
        help = with_default(
            "Storage I/O engine: auto (io_uring, else psync), uring or psync.",
            engine_name(DEFAULT_IO_ENGINE)
        )
    )]
    pub io_engine: Option<String>,

    #[arg(
        long,
        value_name = "SIZE",
        help = with_default(
            "RAM tier size in bytes of objects, e.g. 512MiB.",
            format_size(DEFAULT_RAM_SIZE)
        )
    )]
    pub ram_size: Option<String>,

    #[arg(
        long,
        value_name = "TOKEN",
        help = with_default("This node's CDN-Loop / Via token (RFC 8586).", DEFAULT_CDN_ID)
    )]
    pub cdn_id: Option<String>,
}

/// Flags of `vedge demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Edge listener address.
    #[arg(long, default_value_t = DEFAULT_LISTEN.to_string(), value_name = "ADDR")]
    pub listen: String,

    /// Sample origin listener address.
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
    pub origin_listen: String,

    /// Admin listener address (metrics, health).
    #[arg(long, default_value = "127.0.0.1:8082", value_name = "ADDR")]
    pub admin_listen: String,

    /// Directory of sample assets served by the sample origin. [default: the repository's fixtures/]
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            listen: DEFAULT_LISTEN.to_string(),
            origin_listen: "127.0.0.1:8081".into(),
            admin_listen: "127.0.0.1:8082".into(),
            fixtures: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The defaults `serve --help` shows come from the constants validation applies.
    #[test]
    fn serve_help_shows_the_config_defaults() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve subcommand");
        let help = serve.render_help().to_string();
        for shown in [
            "[default: 127.0.0.1:8080]",
            "[default: 1GiB]",
            "[default: 256MiB]",
            "[default: auto]",
            "[default: 512MiB]",
            "[default: vedge]",
        ] {
            assert!(help.contains(shown), "{shown} missing from:\n{help}");
        }
        assert_eq!(DemoArgs::default().listen, DEFAULT_LISTEN.to_string());
    }
}
