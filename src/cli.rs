//! The command line: subcommands and their flags. Only `main.rs` parses argv; every flag of
//! `serve` mirrors a field of the TOML config file (`config::RawConfig`; the store flags its
//! `[store]` table) and overrides it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    engine_name, format_size, RawConfig, RawRoute, DEFAULT_CDN_ID, DEFAULT_IO_ENGINE,
    DEFAULT_LISTEN, DEFAULT_RAM_SIZE, DEFAULT_STORE_SIZE,
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
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `vedge=debug`,
    /// `warn,vedge::access=info`. Env: VEDGE_LOG; without either, RUST_LOG; else `info`.
    #[arg(long, global = true, env = "VEDGE_LOG")]
    pub log: Option<String>,

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

    /// Bearer token for the admin API. Env: VEDGE_ADMIN_TOKEN (empty = unset). [default: none;
    /// required with --admin-listen, which refuses to start without one; /metrics and /healthz
    /// need no token]
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
        help = "Store region size, e.g. 64MiB [default: a power of two near the store size / 128, \
                64MiB to 256MiB; an existing store keeps its own]"
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

    /// Viewer TLS certificate chain, PEM (`server.tls_cert`; the default certificate next to
    /// `[[tls.cert]]` per-host ones). Reloaded on SIGHUP. [default: none, plain HTTP]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key for --tls-cert, PEM (`server.tls_key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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

impl ServeArgs {
    /// Applies these flags over the config file's values.
    pub fn apply_to(&self, raw: &mut RawConfig) {
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        // A store flag overrides the file's key under either spelling, so the deprecated one is
        // dropped rather than reported as given twice.
        fn set_store<T: Clone>(dst: &mut Option<T>, deprecated: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
                *deprecated = None;
            }
        }
        set(&mut raw.listen, &self.listen);
        set(&mut raw.origin, &self.origin);
        set(&mut raw.admin_listen, &self.admin_listen);
        // An empty `VEDGE_ADMIN_TOKEN` (a compose file passing through an unset variable) is no
        // token: it refused to start an edge that has no admin API to guard.
        set(
            &mut raw.admin_token,
            &self.admin_token.clone().filter(|t| !t.is_empty()),
        );
        set(&mut raw.cdn_id, &self.cdn_id);
        set(&mut raw.ram_size, &self.ram_size);
        set(&mut raw.store.path, &self.store);
        set(&mut raw.server.tls_cert, &self.tls_cert);
        set(&mut raw.server.tls_key, &self.tls_key);
        set_store(&mut raw.store.size, &mut raw.store_size, &self.store_size);
        set_store(
            &mut raw.store.region_size,
            &mut raw.store_region_size,
            &self.store_region_size,
        );
        set_store(
            &mut raw.store.io_engine,
            &mut raw.io_engine,
            &self.io_engine,
        );
        if self.store_reformat {
            raw.store.reformat = Some(true);
            raw.store_reformat = None;
        }
        for spec in &self.routes {
            let (prefix, origin) = match spec.split_once('=') {
                Some((p, o)) => (p.to_string(), o.to_string()),
                // Kept as-is so validation reports it by name.
                None => (spec.clone(), String::new()),
            };
            raw.routes.retain(|r| r.prefix != prefix);
            raw.routes.push(RawRoute {
                prefix,
                origin,
                ..RawRoute::default()
            });
        }
    }
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
    use crate::config::Config;

    #[test]
    fn routes_longest_prefix_wins_and_flags_override_file() {
        let mut raw: RawConfig = toml::from_str(
            r#"
            origin = "http://127.0.0.1:9000"
            listen = "127.0.0.1:1"
            [[route]]
            prefix = "/live/"
            origin = "http://127.0.0.1:9001"
            "#,
        )
        .expect("toml parses");
        ServeArgs {
            listen: Some("127.0.0.1:2".into()),
            routes: vec!["/live/sports/=http://127.0.0.1:9002".into()],
            ..ServeArgs::default()
        }
        .apply_to(&mut raw);
        let cfg = Config::try_from(raw).expect("valid");
        assert_eq!(cfg.listen.port(), 2);
        let port = |p: &str| cfg.route_for(p).and_then(|r| r.origin.port());
        assert_eq!(port("/live/sports/a.ts"), Some(9002));
        assert_eq!(port("/live/news/a.ts"), Some(9001));
        assert_eq!(port("/vod/a.ts"), Some(9000));
    }

    #[test]
    fn a_store_flag_overrides_the_deprecated_key_without_an_error() {
        let mut raw: RawConfig = toml::from_str(
            r#"
            origin = "http://127.0.0.1:9000"
            store = "/var/cache/vedge.store"
            store_size = "8GiB"
            "#,
        )
        .expect("toml parses");
        ServeArgs {
            store_size: Some("2GiB".into()),
            ..ServeArgs::default()
        }
        .apply_to(&mut raw);
        let (cfg, warnings) = Config::resolve(raw).expect("flag wins");
        assert_eq!(cfg.store.map(|s| s.size), Some(2 << 30));
        assert_eq!(warnings.len(), 1, "only the path string: {warnings:?}");
    }

    /// Bug: `VEDGE_ADMIN_TOKEN=` (empty, as a compose file passes an unset variable through)
    /// refused to start an edge without an admin listener ("admin_token: must be at least 8
    /// characters"). Empty is no token; with an admin listener, that is still refused.
    #[test]
    fn an_empty_admin_token_is_no_token() {
        let raw = || -> RawConfig {
            toml::from_str(r#"origin = "http://127.0.0.1:9000""#).expect("toml parses")
        };
        let mut plain = raw();
        ServeArgs {
            admin_token: Some(String::new()),
            ..ServeArgs::default()
        }
        .apply_to(&mut plain);
        assert!(
            Config::try_from(plain).is_ok(),
            "no admin API, nothing to guard"
        );
        let mut admin = raw();
        ServeArgs {
            admin_token: Some(String::new()),
            admin_listen: Some("127.0.0.1:0".into()),
            ..ServeArgs::default()
        }
        .apply_to(&mut admin);
        assert!(
            Config::try_from(admin).is_err(),
            "an admin API never runs open"
        );
    }

    /// The defaults `serve --help` shows come from the constants validation applies.
    #[test]
    fn serve_help_shows_the_config_defaults() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve subcommand");
        let help = serve.render_help().to_string();
        for shown in [
            "[default: 127.0.0.1:8080]",
            "[default: 1GiB]",
            "size / 128, 64MiB to 256MiB",
            "[default: auto]",
            "[default: 512MiB]",
            "[default: vedge]",
        ] {
            assert!(help.contains(shown), "{shown} missing from:\n{help}");
        }
        assert_eq!(DemoArgs::default().listen, DEFAULT_LISTEN.to_string());
    }
}
