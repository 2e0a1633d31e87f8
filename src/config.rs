//! Configuration in two stages: `RawConfig` mirrors the TOML file (every field optional) and
//! takes CLI overrides; `Config::try_from(raw)` resolves sizes, durations and URLs, applies the
//! documented defaults and checks every field, reporting all bad fields at once by name. Nothing
//! is bound before this succeeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cache::policy::{ClassTtl, ContentClass, TtlRules};
use crate::cli::ServeArgs;

/// A configuration error: every offending field with a message a user can act on.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// The TOML file, field for field. `deny_unknown_fields` so a typo is an error, not a silent default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub origin: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub cdn_id: Option<String>,
    pub ram_size: Option<String>,
    pub store: Option<PathBuf>,
    pub store_size: Option<String>,
    pub store_region_size: Option<String>,
    pub store_reformat: Option<bool>,
    pub io_engine: Option<String>,
    /// Second-request admission window for pulled objects (`0s` admits on first request).
    pub store_admit_window: Option<String>,
    /// Cap on store write bandwidth, e.g. `400MiB` (per second).
    pub store_write_rate: Option<String>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub origin_client: RawOriginClient,
    #[serde(default)]
    pub server: RawServer,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: String,
    pub origin: String,
    /// `Host` sent to this origin; default: the origin URL's authority.
    pub host: Option<String>,
    /// Pass the viewer's `Host` through instead of rewriting it.
    pub pass_host: Option<bool>,
    /// Cache responses to requests carrying Authorization or Cookie (they bypass otherwise).
    pub public: Option<bool>,
    #[serde(default)]
    pub ttl: RawClassTtls,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassTtls {
    pub manifest: Option<RawTtl>,
    pub segment: Option<RawTtl>,
    pub other: Option<RawTtl>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTtl {
    /// Used when the origin gives no freshness information.
    pub default: Option<String>,
    /// Clamp on whatever the origin says (CloudFront's minimum TTL: a minimum above zero also
    /// caches `no-store`/`private`/`no-cache` responses).
    pub min: Option<String>,
    pub max: Option<String>,
    /// Serve a stale copy this long when the origin fails.
    pub stale_if_error: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Query parameters dropped from the cache key (and kept on the origin request).
    pub drop_query_params: Option<Vec<String>>,
    pub max_object_size: Option<String>,
    pub collapse_timeout: Option<String>,
    pub hit_for_pass_ttl: Option<String>,
    pub negative_ttl: Option<String>,
    /// A live manifest is never served stale for longer than this many times its TTL.
    pub manifest_stale_factor: Option<u32>,
    #[serde(default)]
    pub ttl: RawClassTtls,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOriginClient {
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub between_bytes_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    /// Talk HTTP/2 (prior knowledge, h2c) to origins.
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub max_header_size: Option<String>,
    pub header_read_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub zero_copy: Option<bool>,
    pub send_buffer: Option<String>,
    pub threads: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub cdn_id: String,
    pub ram_size: u64,
    pub store: Option<StoreSettings>,
    pub routes: Vec<Route>,
    pub cache: CacheConfig,
    pub origin_client: OriginClientConfig,
    pub server: ServerConfig,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub path: PathBuf,
    pub size: u64,
    pub region_size: u64,
    pub reformat: bool,
    pub io_engine: IoEngineChoice,
    pub admit_window: Duration,
    pub write_rate: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEngineChoice {
    Auto,
    Uring,
    Psync,
}

/// One origin route. The default origin is the route with prefix `/`.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub origin: url::Url,
    /// `Host` header for origin requests; `None` passes the viewer's through.
    pub host: Option<String>,
    pub public: bool,
    pub ttl: ClassTtl,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub drop_query_params: Vec<String>,
    pub max_object_size: u64,
    pub collapse_timeout: Duration,
    pub hit_for_pass_ttl: Duration,
    pub negative_ttl: Duration,
    pub manifest_stale_factor: u32,
    pub ttl: ClassTtl,
}

#[derive(Debug, Clone)]
pub struct OriginClientConfig {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_header_size: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Large RAM-tier bodies live in memfds and go to plain-TCP viewers with `sendfile`.
    pub zero_copy: bool,
    /// The send buffer a viewer connection gets once it sends a body from anonymous pages
    /// (`http::zerocopy`); 0 leaves it to the kernel's autotuning.
    pub send_buffer: usize,
    /// 0: viewers are served on the shared work-stealing runtime (default). N: N threads, each
    /// with its own single-threaded runtime and accept loop (nginx's worker model).
    pub threads: usize,
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Query parameters dropped from cache keys by default: auth tokens, CMCD and tracking tags,
/// which vary per viewer and would otherwise turn every request into a miss.
pub const DEFAULT_DROP_QUERY_PARAMS: &[&str] = &[
    "token",
    "hdnts",
    "hdntl",
    "Policy",
    "Signature",
    "Key-Pair-Id",
    "Expires",
    "CMCD",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "sessionid",
    "session_id",
];

impl RawConfig {
    /// Reads and parses a TOML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("config file {}: {e}", path.display())]))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError(vec![format!("config file {}: {e}", path.display())]))
    }

    /// Applies command-line flags over the file's values.
    pub fn apply_args(&mut self, args: &ServeArgs) {
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set(&mut self.listen, &args.listen);
        set(&mut self.origin, &args.origin);
        set(&mut self.admin_listen, &args.admin_listen);
        set(&mut self.admin_token, &args.admin_token);
        set(&mut self.cdn_id, &args.cdn_id);
        set(&mut self.ram_size, &args.ram_size);
        set(&mut self.store, &args.store);
        set(&mut self.store_size, &args.store_size);
        set(&mut self.store_region_size, &args.store_region_size);
        set(&mut self.io_engine, &args.io_engine);
        if args.store_reformat {
            self.store_reformat = Some(true);
        }
        for spec in &args.routes {
            let (prefix, origin) = match spec.split_once('=') {
                Some((p, o)) => (p.to_string(), o.to_string()),
                // Kept as-is so validation reports it by name.
                None => (spec.clone(), String::new()),
            };
            self.routes.retain(|r| r.prefix != prefix);
            self.routes.push(RawRoute {
                prefix,
                origin,
                ..RawRoute::default()
            });
        }
    }
}

/// Collects every validation error instead of stopping at the first.
#[derive(Default)]
struct Check(Vec<String>);

impl Check {
    fn size(&mut self, field: &str, v: &Option<String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|e| {
                self.0.push(format!("{field}: {e}"));
                default
            }),
        }
    }

    fn duration(&mut self, field: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.0.push(format!("{field}: {e}"));
                default
            }),
        }
    }

    fn opt_duration(&mut self, field: &str, v: &Option<String>) -> Option<Duration> {
        v.as_ref().and_then(|s| match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.0.push(format!("{field}: {e}"));
                None
            }
        })
    }

    fn addr(&mut self, field: &str, v: &str) -> Option<SocketAddr> {
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.0.push(format!(
                    "{field}: `{v}` is not an IP:PORT address (e.g. 127.0.0.1:8080)"
                ));
                None
            }
        }
    }

    fn origin_url(&mut self, field: &str, v: &str) -> Option<url::Url> {
        match url::Url::parse(v) {
            Ok(u) if u.scheme() == "http" && u.host().is_some() => Some(u),
            Ok(u) if u.scheme() == "https" => {
                self.0.push(format!(
                    "{field}: `{v}`: https origins are not supported yet; put a TLS-terminating \
                     shield or an http:// origin here"
                ));
                None
            }
            Ok(_) => {
                self.0
                    .push(format!("{field}: `{v}` must be an http:// URL with a host"));
                None
            }
            Err(e) => {
                self.0.push(format!("{field}: `{v}` is not a URL: {e}"));
                None
            }
        }
    }

    fn ttl_rules(&mut self, field: &str, raw: &Option<RawTtl>, base: TtlRules) -> TtlRules {
        let Some(raw) = raw else { return base };
        let rules = TtlRules {
            default: self
                .opt_duration(&format!("{field}.default"), &raw.default)
                .or(base.default),
            min: self
                .opt_duration(&format!("{field}.min"), &raw.min)
                .or(base.min),
            max: self
                .opt_duration(&format!("{field}.max"), &raw.max)
                .or(base.max),
            stale_if_error: self
                .opt_duration(&format!("{field}.stale_if_error"), &raw.stale_if_error)
                .or(base.stale_if_error),
        };
        if let (Some(min), Some(max)) = (rules.min, rules.max) {
            if min > max {
                self.0.push(format!(
                    "{field}: min ({min:?}) is larger than max ({max:?})"
                ));
            }
        }
        rules
    }

    fn class_ttls(&mut self, field: &str, raw: &RawClassTtls, base: &ClassTtl) -> ClassTtl {
        ClassTtl {
            manifest: self.ttl_rules(&format!("{field}.manifest"), &raw.manifest, base.manifest),
            segment: self.ttl_rules(&format!("{field}.segment"), &raw.segment, base.segment),
            other: self.ttl_rules(&format!("{field}.other"), &raw.other, base.other),
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut c = Check::default();
        let listen = c
            .addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:8080"))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let admin_listen = raw
            .admin_listen
            .as_deref()
            .and_then(|a| c.addr("admin_listen", a));
        if admin_listen.is_some() && raw.admin_token.is_none() {
            c.0.push(
                "admin_token: required with admin_listen (flag --admin-token, env VEDGE_ADMIN_TOKEN \
                 or `admin_token` in the config file); the admin API never runs open"
                    .into(),
            );
        }
        if let Some(t) = &raw.admin_token {
            if t.len() < 8 {
                c.0.push("admin_token: must be at least 8 characters".into());
            }
        }
        let cdn_id = raw.cdn_id.clone().unwrap_or_else(|| "vedge".into());
        if cdn_id.is_empty()
            || !cdn_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            c.0.push(format!(
                "cdn_id: `{cdn_id}` must be a non-empty token of letters, digits, '-', '.', '_'"
            ));
        }
        let ram_size = c.size("ram_size", &raw.ram_size, 512 << 20);
        if ram_size < 1 << 20 {
            c.0.push("ram_size: must be at least 1MiB".into());
        }

        let store = raw.store.as_ref().map(|path| {
            let size = c.size("store_size", &raw.store_size, 1 << 30);
            let region_size = c.size("store_region_size", &raw.store_region_size, 256 << 20);
            let io_engine = match raw.io_engine.as_deref().unwrap_or("auto") {
                "auto" => IoEngineChoice::Auto,
                "uring" | "io_uring" => IoEngineChoice::Uring,
                "psync" => IoEngineChoice::Psync,
                other => {
                    c.0.push(format!(
                        "io_engine: `{other}` is not one of auto, uring, psync"
                    ));
                    IoEngineChoice::Auto
                }
            };
            if region_size < 1 << 20 || region_size % 4096 != 0 {
                c.0.push("store_region_size: must be at least 1MiB and a multiple of 4KiB".into());
            } else if size < region_size * 2 {
                c.0.push(format!(
                    "store_size: {size} bytes holds fewer than two regions of {region_size} bytes"
                ));
            }
            StoreSettings {
                path: path.clone(),
                size,
                region_size,
                reformat: raw.store_reformat.unwrap_or(false),
                io_engine,
                admit_window: c.duration(
                    "store_admit_window",
                    &raw.store_admit_window,
                    Duration::from_secs(600),
                ),
                write_rate: raw
                    .store_write_rate
                    .as_ref()
                    .map(|_| c.size("store_write_rate", &raw.store_write_rate, 0)),
            }
        });
        if raw.store.is_none() && (raw.store_size.is_some() || raw.io_engine.is_some()) {
            c.0.push("store_size / io_engine: given without `store` (a path)".into());
        }

        let global_ttl = c.class_ttls("cache.ttl", &raw.cache.ttl, &ClassTtl::defaults());
        let mut routes = Vec::new();
        match raw.origin.as_deref() {
            Some(o) => {
                if let Some(origin) = c.origin_url("origin", o) {
                    routes.push(Route {
                        prefix: "/".into(),
                        host: None,
                        origin,
                        public: false,
                        ttl: global_ttl.clone(),
                    });
                }
            }
            None if raw.routes.iter().any(|r| r.prefix == "/") => {}
            None => c.0.push(
                "origin: required (flag --origin URL or `origin = \"http://...\"` in the config file)"
                    .into(),
            ),
        }
        for (i, r) in raw.routes.iter().enumerate() {
            let field = format!("route[{i}] ({})", r.prefix);
            if !r.prefix.starts_with('/') {
                c.0.push(format!(
                    "{field}: prefix must start with '/' (format PREFIX=URL, e.g. /live/=http://packager:8000)"
                ));
                continue;
            }
            let Some(origin) = c.origin_url(&format!("{field}.origin"), &r.origin) else {
                continue;
            };
            let host = if r.pass_host.unwrap_or(false) {
                None
            } else {
                r.host.clone().or_else(|| Some(authority(&origin)))
            };
            let ttl = c.class_ttls(&format!("{field}.ttl"), &r.ttl, &global_ttl);
            routes.retain(|existing: &Route| existing.prefix != r.prefix);
            routes.push(Route {
                prefix: r.prefix.clone(),
                origin,
                host,
                public: r.public.unwrap_or(false),
                ttl,
            });
        }
        // Longest prefix first, so routing is a first-match scan.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

        let cache = CacheConfig {
            drop_query_params: raw.cache.drop_query_params.clone().unwrap_or_else(|| {
                DEFAULT_DROP_QUERY_PARAMS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            max_object_size: c.size(
                "cache.max_object_size",
                &raw.cache.max_object_size,
                256 << 20,
            ),
            collapse_timeout: c.duration(
                "cache.collapse_timeout",
                &raw.cache.collapse_timeout,
                Duration::from_secs(10),
            ),
            hit_for_pass_ttl: c.duration(
                "cache.hit_for_pass_ttl",
                &raw.cache.hit_for_pass_ttl,
                Duration::from_secs(10),
            ),
            negative_ttl: c.duration(
                "cache.negative_ttl",
                &raw.cache.negative_ttl,
                Duration::from_secs(2),
            ),
            manifest_stale_factor: raw.cache.manifest_stale_factor.unwrap_or(2),
            ttl: global_ttl,
        };
        if cache.max_object_size > ram_size {
            // Not an error: larger objects still stream through, uncached.
            tracing::debug!(
                max_object_size = cache.max_object_size,
                ram_size,
                "cache.max_object_size is larger than the RAM tier"
            );
        }

        let oc = &raw.origin_client;
        let origin_client = OriginClientConfig {
            connect_timeout: c.duration(
                "origin_client.connect_timeout",
                &oc.connect_timeout,
                Duration::from_secs(3),
            ),
            first_byte_timeout: c.duration(
                "origin_client.first_byte_timeout",
                &oc.first_byte_timeout,
                Duration::from_secs(15),
            ),
            between_bytes_timeout: c.duration(
                "origin_client.between_bytes_timeout",
                &oc.between_bytes_timeout,
                Duration::from_secs(10),
            ),
            pool_idle_timeout: c.duration(
                "origin_client.pool_idle_timeout",
                &oc.pool_idle_timeout,
                Duration::from_secs(60),
            ),
            pool_max_idle_per_host: oc.pool_max_idle_per_host.unwrap_or(256),
            http2: oc.http2.unwrap_or(false),
        };

        let s = &raw.server;
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                c.0.push("server.tls_cert and server.tls_key: give both or neither".into());
                None
            }
        };
        let server = ServerConfig {
            max_header_size: c.size("server.max_header_size", &s.max_header_size, 64 << 10)
                as usize,
            header_read_timeout: c.duration(
                "server.header_read_timeout",
                &s.header_read_timeout,
                Duration::from_secs(30),
            ),
            shutdown_grace: c.duration(
                "server.shutdown_grace",
                &s.shutdown_grace,
                Duration::from_secs(10),
            ),
            zero_copy: s.zero_copy.unwrap_or(true),
            send_buffer: c.size("server.send_buffer", &s.send_buffer, 4 << 20) as usize,
            threads: s.threads.unwrap_or(0),
            tls,
        };
        if server.max_header_size < 8192 {
            c.0.push("server.max_header_size: must be at least 8KiB".into());
        }
        if server.send_buffer > 1 << 30 {
            c.0.push("server.send_buffer: at most 1GiB (0 leaves it to the kernel)".into());
        }
        if server.threads > 1024 {
            c.0.push("server.threads: at most 1024 (0 means the shared runtime)".into());
        }

        if !c.0.is_empty() {
            return Err(ConfigError(c.0));
        }
        Ok(Config {
            listen,
            admin_listen,
            admin_token: raw.admin_token,
            cdn_id,
            ram_size,
            store,
            routes,
            cache,
            origin_client,
            server,
        })
    }
}

impl Config {
    /// A config for one origin with every default: the starting point of tests and the demo.
    pub fn for_origin(origin: &str) -> Result<Config, ConfigError> {
        Config::try_from(RawConfig {
            origin: Some(origin.to_string()),
            ..RawConfig::default()
        })
    }

    /// The route serving `path`: longest matching prefix, else the default origin.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&r.prefix))
    }

    /// The TTL rules for a content class on a route.
    pub fn ttl_for(&self, route: &Route, class: ContentClass) -> TtlRules {
        route.ttl.get(class)
    }
}

fn authority(u: &url::Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// Parses `512MiB`, `4GiB`, `1.5GiB`, `100MB`, `4096` (bytes). Binary and decimal suffixes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512MiB, 4GiB, 1048576)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(v as u64)
}

/// Parses `500ms`, `2s`, `1.5s`, `5m`, `1h`, `1d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 2s, 5m, 1h, 1d)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use ms, s, m, h, d)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2 fortnights").is_err());
    }

    #[test]
    fn every_bad_field_is_named() {
        let raw = RawConfig {
            listen: Some("nowhere".into()),
            origin: Some("ftp://x".into()),
            ram_size: Some("lots".into()),
            cache: RawCache {
                collapse_timeout: Some("soon".into()),
                ..RawCache::default()
            },
            server: RawServer {
                threads: Some(5000),
                send_buffer: Some("2GiB".into()),
                ..RawServer::default()
            },
            ..RawConfig::default()
        };
        let err = Config::try_from(raw).expect_err("bad config accepted");
        let text = err.to_string();
        for field in [
            "listen",
            "origin",
            "ram_size",
            "cache.collapse_timeout",
            "server.threads",
            "server.send_buffer",
        ] {
            assert!(text.contains(field), "{field} missing from: {text}");
        }
    }

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
        raw.apply_args(&ServeArgs {
            listen: Some("127.0.0.1:2".into()),
            routes: vec!["/live/sports/=http://127.0.0.1:9002".into()],
            ..ServeArgs::default()
        });
        let cfg = Config::try_from(raw).expect("valid");
        assert_eq!(cfg.listen.port(), 2);
        let port = |p: &str| cfg.route_for(p).and_then(|r| r.origin.port());
        assert_eq!(port("/live/sports/a.ts"), Some(9002));
        assert_eq!(port("/live/news/a.ts"), Some(9001));
        assert_eq!(port("/vod/a.ts"), Some(9000));
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/configs/vedge.toml");
        let raw = RawConfig::from_file(&path).expect("example parses");
        Config::try_from(raw).expect("example validates");
    }
}
