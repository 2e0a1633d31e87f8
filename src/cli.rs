//! The command line: subcommands and their flags. Only `main.rs` parses argv; every flag of
//! `serve` mirrors a field of the TOML config file (`config::RawConfig`) and overrides it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

    /// Viewer listener address. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
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

    /// SSD store: a file or block device. [default: none, RAM tier only]
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,

    /// Size of the store, e.g. 4GiB. [default: 1GiB]
    #[arg(long, value_name = "SIZE")]
    pub store_size: Option<String>,

    /// Store region size, e.g. 256MiB. [default: 256MiB]
    #[arg(long, value_name = "SIZE")]
    pub store_region_size: Option<String>,

    /// Wipe and reformat a store of another version or size instead of refusing to start.
    #[arg(long)]
    pub store_reformat: bool,

    /// Storage I/O engine: auto (io_uring, else psync), uring or psync. [default: auto]
    #[arg(long, value_name = "ENGINE")]
    pub io_engine: Option<String>,

    /// RAM tier size in bytes of objects, e.g. 512MiB. [default: 512MiB]
    #[arg(long, value_name = "SIZE")]
    pub ram_size: Option<String>,

    /// This node's CDN-Loop / Via token (RFC 8586). [default: vedge]
    #[arg(long, value_name = "TOKEN")]
    pub cdn_id: Option<String>,
}

/// Flags of `vedge demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Edge listener address.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
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
            listen: "127.0.0.1:8080".into(),
            origin_listen: "127.0.0.1:8081".into(),
            admin_listen: "127.0.0.1:8082".into(),
            fixtures: None,
        }
    }
}
