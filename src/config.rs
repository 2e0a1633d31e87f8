//! Configuration in two stages: `RawConfig` mirrors the TOML file (every field optional) and
//! takes CLI overrides; `Config::resolve(raw)` resolves sizes, durations and URLs, applies the
//! defaults (the `DEFAULT_*` constants below, which the CLI help and the example file also show)
//! and checks every field, reporting all bad fields at once by name. Nothing is bound before this
//! succeeds. Each subsystem has its own sub-config, resolved by its own `resolve`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vedge_storage::EngineChoice;

use crate::cache::policy::{ClassTtl, ContentClass, TtlRules};

// Defaults. Validation applies these, `vedge serve --help` prints them and the test
// `example_config_documents_the_defaults` checks fixtures/configs/vedge.toml against them.

/// Viewer listener.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
/// This node's CDN-Loop / Via token.
pub const DEFAULT_CDN_ID: &str = "vedge";
/// RAM tier, in bytes of objects.
pub const DEFAULT_RAM_SIZE: u64 = 512 << 20;
pub const MIN_RAM_SIZE: u64 = 1 << 20;
/// Admin tokens shorter than this are refused: the admin API can purge the whole cache.
pub const MIN_ADMIN_TOKEN_LEN: usize = 8;

pub const DEFAULT_STORE_SIZE: u64 = 1 << 30;
pub const DEFAULT_IO_ENGINE: EngineChoice = EngineChoice::Auto;
/// Pulled objects go to the store on their second request within this window.
pub const DEFAULT_STORE_ADMIT_WINDOW: Duration = Duration::from_secs(600);

pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 256 << 20;
/// `cache.prefetch_max_size`: prefetch is for segments and parts, and no real HLS/DASH segment
/// comes near this (a 6 s 4K segment at 25 Mbit/s is about 19 MB).
pub const DEFAULT_PREFETCH_MAX_SIZE: u64 = 32 << 20;
pub const DEFAULT_COLLAPSE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HIT_FOR_PASS_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_MANIFEST_STALE_FACTOR: u32 = 2;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// `origin_client.min_body_rate` (bytes/s) over each `min_body_rate_window` of waiting for an
/// origin body. The between-bytes timeout alone let an origin that sends one byte every few
/// seconds hold a fill, and every viewer collapsed on it, for as long as it liked. The floor
/// is for origins that are stuck, not slow: the slowest real-time media a chunked origin sends
/// is a CMAF chunk of a subtitle or timed-metadata track, ~100 bytes (its `moof`) every 0.5-2
/// s, 50-200 B/s; 64 kbit/s audio is 8,000 B/s. 16 B/s is a third of the former and 1/500 of
/// the latter, and 32 times a byte every 2 s. The window is twice the between-bytes timeout,
/// so any gap that timeout allows (then a burst) falls inside one window, and such a trickle is
/// cut 20 s in, within the ~30 s a player retries after.
pub const DEFAULT_MIN_BODY_RATE: u64 = 16;
pub const DEFAULT_MIN_BODY_RATE_WINDOW: Duration = Duration::from_secs(20);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 256;
pub const DEFAULT_ORIGIN_HTTP2: bool = false;

pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 << 10;
pub const MIN_MAX_HEADER_SIZE: u64 = 8 << 10;
/// The longest request target (path and query) a viewer may send; longer ones are answered 414
/// (RFC 9112 §3). 8 KiB: what RFC 9110 §4.1 asks every recipient to support (8,000 octets),
/// nginx's request-line buffer, Apache's `LimitRequestLine` and CloudFront's URL limit. The
/// target becomes a cache key (held in RAM and in the store's index) and a log line, and HLS,
/// LL-HLS and DASH URLs, tokens included, stay well under 4 KiB.
pub const DEFAULT_MAX_URI_SIZE: u64 = 8 << 10;
/// Below this ordinary signed URLs would be refused.
pub const MIN_MAX_URI_SIZE: u64 = 1 << 10;
/// hyper refuses a longer request target itself (414), before the edge sees the request.
pub const MAX_MAX_URI_SIZE: u64 = 64 << 10;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_ZERO_COPY: bool = true;
pub const DEFAULT_SEND_BUFFER: u64 = 4 << 20;
pub const MAX_SEND_BUFFER: u64 = 1 << 30;
/// 0: the shared work-stealing runtime. The library's default (embedders and in-process tests
/// keep one runtime); `vedge serve` defaults to one event loop per core on an edge without a
/// store (`RawConfig::default_threads_by_shape`).
pub const DEFAULT_THREADS: usize = 0;
pub const MAX_THREADS: usize = 1024;

/// Targeted cache-control fields obeyed by default (RFC 9213), first found wins: vedge's own,
/// then the one every CDN reads. Lowercase: they are `HeaderName::from_static` inputs.
pub const DEFAULT_TARGETED_CACHE_CONTROL: &[&str] = &["vedge-cache-control", "cdn-cache-control"];

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
    /// The `[store]` table; the deprecated `store = "PATH"` is read into `path`.
    #[serde(default, deserialize_with = "store_table_or_path")]
    pub store: RawStore,
    /// Deprecated spelling of `store.size` (moved there, with a warning, by `Config::resolve`).
    pub store_size: Option<String>,
    /// Deprecated spelling of `store.region_size`.
    pub store_region_size: Option<String>,
    /// Deprecated spelling of `store.reformat`.
    pub store_reformat: Option<bool>,
    /// Deprecated spelling of `store.io_engine`.
    pub io_engine: Option<String>,
    /// Deprecated spelling of `store.admit_window`.
    pub store_admit_window: Option<String>,
    /// Deprecated spelling of `store.write_rate`.
    pub store_write_rate: Option<String>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub origin_client: RawOriginClient,
    #[serde(default)]
    pub server: RawServer,
    /// The `[limits]` table: per-client and global connection and request-rate limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// The `[tls]` table: per-host certificates (`[[tls.cert]]`) and session tickets.
    #[serde(default)]
    pub tls: RawTls,
    /// The `[admin]` table: the admin listener's connection timeouts.
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub cmcd: RawCmcd,
    /// The `[live]` table: edge-wide bounds of the live edge (`LiveConfig`).
    #[serde(default)]
    pub live: RawLive,
    // The tier (`TierConfig::resolve`, the block further down): this node's name, its shields
    // and the peers a fan-out purge reaches.
    /// This node's name in `CDN-Loop` (`node=`) and logs; default: random per start.
    pub node_id: Option<String>,
    /// The `[shield]` table: the parent tier every cache key is assigned to.
    pub shield: Option<RawShield>,
    /// The `[cluster]` table: every node's admin API, for `"fanout": true` purges.
    pub cluster: Option<RawCluster>,
}

/// The `[store]` table. Without a `path` there is no store (RAM tier only).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// A file or block device.
    pub path: Option<PathBuf>,
    pub size: Option<String>,
    pub region_size: Option<String>,
    /// Wipe a store of another version or geometry instead of refusing to start.
    pub reformat: Option<bool>,
    /// auto | uring | psync.
    pub io_engine: Option<String>,
    /// Second-request admission window for pulled objects (`0s` admits on first request).
    pub admit_window: Option<String>,
    /// Cap on store write bandwidth, e.g. `400MiB` (per second).
    pub write_rate: Option<String>,
    /// Set by the parser when the file said `store = "PATH"` (the deprecated form).
    #[serde(skip)]
    pub path_given_as_string: bool,
}

/// `store` is either the `[store]` table or, as before it existed, a path string.
fn store_table_or_path<'de, D: Deserializer<'de>>(d: D) -> Result<RawStore, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = RawStore;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [store] table (or, deprecated, a path string)")
        }

        fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<RawStore, E> {
            Ok(RawStore {
                path: Some(PathBuf::from(path)),
                path_given_as_string: true,
                ..RawStore::default()
            })
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawStore, A::Error> {
            // The derived impl, so unknown keys in [store] are reported by name.
            RawStore::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Visitor)
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: String,
    /// One origin; or `origins` (an origin group) instead.
    #[serde(default)]
    pub origin: String,
    /// `Host` sent to this origin; default: the origin URL's authority.
    pub host: Option<String>,
    /// Pass the viewer's `Host` through instead of rewriting it.
    pub pass_host: Option<bool>,
    /// Cache responses to requests carrying Authorization or Cookie (they bypass otherwise).
    pub public: Option<bool>,
    /// Viewer hosts this route answers; any other gets 421 (default: every valid host).
    pub hosts: Option<Vec<String>>,
    /// Viewer request headers copied onto fills (default: none; see `DEFAULT_FORWARD_HEADERS`).
    pub forward_headers: Option<Vec<String>>,
    #[serde(default)]
    pub ttl: RawClassTtls,
    // Origin groups and https origins: resolved by `OriginGroup::resolve` (the block below).
    /// Several origins for this route, instead of `origin`.
    pub origins: Option<Vec<String>>,
    /// failover | round-robin | hash.
    pub policy: Option<String>,
    /// Active health checks of each origin.
    pub health: Option<RawHealth>,
    /// Passive ejection after consecutive failures.
    pub eject: Option<RawEject>,
    /// Origin statuses retried once on the next origin (e.g. [502, 503, 504]).
    pub retry_on: Option<Vec<u16>>,
    /// TLS server name sent to https origins (default: each origin URL's host).
    pub sni: Option<String>,
    /// PEM file of the CA certificates trusted for this route's https origins (instead of the
    /// platform's roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from this route's https origins (logged loudly at start).
    pub insecure_skip_verify: Option<bool>,
    /// `[route.token]`: signed URLs (Akamai EdgeAuth 2.0 tokens) required on this route.
    pub token: Option<RawToken>,
    /// `[route.cors]`: the edge's own CORS policy for this route (default: none, the origin's
    /// CORS fields are relayed as they come).
    pub cors: Option<RawCors>,
    /// Viewer addresses (CIDRs) allowed on this route; empty: everyone not denied.
    pub allow_ips: Option<Vec<String>>,
    /// Viewer addresses (CIDRs) refused on this route with 403 (checked before `allow_ips`).
    pub deny_ips: Option<Vec<String>>,
    // The live edge (`LiveRoute`, resolved by `LiveRoute::resolve`).
    /// off | next | all-new: fetch what a new live playlist lists before viewers ask.
    pub prefetch: Option<String>,
    /// How long behind the live edge a live stream is kept on disk (default: not at all).
    pub live_dvr: Option<String>,
    /// How long a segment stays after leaving every live window seen (default 10s).
    pub live_retention_margin: Option<String>,
    /// Fill through the `[shield]` tier (default: true when `[shield]` exists).
    pub shield: Option<bool>,
    /// `origin_client.min_body_rate` for this route's origin bodies ("0": off), e.g. for an
    /// origin that streams server-sent events or long-polls through a pass.
    pub min_body_rate: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassTtls {
    pub manifest: Option<RawTtl>,
    pub segment: Option<RawTtl>,
    pub key: Option<RawTtl>,
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
    /// Targeted cache-control response fields (RFC 9213) this edge obeys, first found wins.
    pub targeted_cache_control: Option<Vec<String>>,
    /// Objects larger than this are fetched and cached in slices of this size ("0" disables).
    pub slice_size: Option<String>,
    /// A prefetch (live manifest, CMCD `nor`) whose answer is larger than this is abandoned.
    pub prefetch_max_size: Option<String>,
    #[serde(default)]
    pub ttl: RawClassTtls,
    /// Abuse limits (`AbuseConfig`): a cold Range miss above this size passes through.
    pub range_passthrough_above: Option<String>,
    /// Abuse limits: bytes each of the hit-for-pass and Vary indexes may weigh.
    pub index_memory: Option<String>,
    /// Honour viewers' `Cache-Control` request directives (`no-cache`, `max-age`,
    /// `min-fresh` for `other`-class objects; `max-stale`, `only-if-cached`); default true.
    pub request_directives: Option<bool>,
    /// gzip manifests for viewers that accept it when the origin sent them uncoded
    /// (`proxy::compress`); default false.
    pub compress_manifests: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOriginClient {
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub between_bytes_timeout: Option<String>,
    /// Bytes/s an origin body must average over each `min_body_rate_window`; "0" disables.
    pub min_body_rate: Option<String>,
    pub min_body_rate_window: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    /// Talk HTTP/2 (prior knowledge, h2c) to origins.
    pub http2: Option<bool>,
    // Warm connections (`Preconnect`, resolved in its own block below).
    pub preconnect: Option<bool>,
    pub preconnect_method: Option<String>,
    pub preconnect_path: Option<String>,
    pub keep_warm: Option<String>,
    /// Abuse limits (`AbuseConfig`): concurrent fills per route; 0 = unlimited.
    pub max_fills: Option<usize>,
    /// Abuse limits: requests in flight per origin or shield node (each holds a connection);
    /// 0 = unlimited.
    pub max_connections_per_origin: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub max_header_size: Option<String>,
    pub max_uri_size: Option<String>,
    pub header_read_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub zero_copy: Option<bool>,
    /// Mappings zero-copy bodies may hold; 0 = half of `vm.max_map_count` (`ZeroCopyBudgets`).
    pub zero_copy_map_budget: Option<usize>,
    /// Descriptors splice pipes may hold; 0 = a quarter of `RLIMIT_NOFILE`.
    pub zero_copy_fd_budget: Option<usize>,
    pub send_buffer: Option<String>,
    pub threads: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub h2_keepalive_interval: Option<String>,
    pub h2_keepalive_timeout: Option<String>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_pending_reset_streams: Option<usize>,
    pub h2_max_local_error_reset_streams: Option<usize>,
    /// PING, SETTINGS, PRIORITY and empty frames a client may send per second (`http::h2_flood`).
    pub h2_control_frame_rate: Option<u32>,
    /// Abuse limits (`AbuseConfig`): the slowest a viewer may take a body, bytes/s; 0 = off.
    pub min_send_rate: Option<String>,
}

/// The validated configuration. `listen`, `cdn_id` and `ram_size` describe the node as a whole
/// and stay at the top, as they do in the file.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cdn_id: String,
    pub ram_size: u64,
    pub admin: AdminConfig,
    pub store: Option<StoreSettings>,
    /// Longest prefix first; the default origin is the route with prefix `/`.
    pub routes: Vec<Route>,
    pub cache: CacheConfig,
    pub origin_client: OriginClientConfig,
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    /// Viewer TLS; `None` serves plain HTTP (and h2c).
    pub tls: Option<TlsConfig>,
    pub cmcd: CmcdConfig,
    /// This node's place in a tier: its name, its shields, its peers.
    pub tier: TierConfig,
    /// Origin protection and byte-bounded indexes (issue 14's abuse limits).
    pub abuse: AbuseConfig,
    /// Edge-wide bounds of the live edge (`[live]`).
    pub live: LiveConfig,
}

/// The admin listener (metrics, health, purge, ingest).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// Required whenever `listen` is set: the admin API never runs open.
    pub token: Option<String>,
    pub timeouts: ConnTimeouts,
}

/// The SSD store under the RAM tier.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub path: PathBuf,
    pub size: u64,
    /// `store.region_size`, else `vedge_storage::default_region_size` of `size`.
    pub region_size: u64,
    /// The operator set `region_size`: a store formatted with another one is refused. Otherwise
    /// an existing store opens with its own region size.
    pub region_size_chosen: bool,
    pub reformat: bool,
    pub io_engine: EngineChoice,
    pub admit_window: Duration,
    pub write_rate: Option<u64>,
}

/// One origin route. The default origin is the route with prefix `/`.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    /// The first (for a single-origin route, the only) origin of `group`.
    pub origin: url::Url,
    /// Every origin of the route, how one is chosen, and how their health is judged.
    pub group: OriginGroup,
    /// `Host` header for origin requests; `None` passes the viewer's through.
    pub host: Option<String>,
    pub public: bool,
    pub ttl: ClassTtl,
    /// Who names the object: see `RouteIntegrity`.
    pub integrity: RouteIntegrity,
    /// Signed-URL check (`[route.token]`); `None`: the route is open, as before.
    pub token: Option<TokenConfig>,
    /// The edge's CORS policy (`[route.cors]`, `http::cors`); `None`: the origin's CORS fields
    /// are relayed and its `Vary: Origin` keys variants, as before.
    pub cors: Option<CorsConfig>,
    /// Who may use this route (`allow_ips` / `deny_ips`).
    pub acl: IpAcl,
    /// Prefetch and retention of live streams (`prefetch`, `live_dvr`, `live_retention_margin`).
    pub live: LiveRoute,
    /// Bytes/s this route's origin bodies must average (`min_body_rate`); `None`: the edge's
    /// `origin_client.min_body_rate`.
    pub min_body_rate: Option<u64>,
}

/// What a route does with live streams (issue 17): prefetch of newly listed objects, and how
/// long live segments are kept once they leave the live window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveRoute {
    pub prefetch: Prefetch,
    /// Kept on disk this long behind the live edge; `None`: live segments never go to disk.
    pub dvr: Option<Duration>,
    /// How long a segment stays in RAM after it left every live window the edge saw.
    pub retention_margin: Duration,
}

/// `prefetch = "off" | "next" | "all-new"` (default `next`; only live manifests drive it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    Off,
    /// The newest segment (and the parts) a live playlist just announced.
    Next,
    /// Every object a live playlist newly lists.
    AllNew,
}

pub const DEFAULT_LIVE_RETENTION_MARGIN: Duration = Duration::from_secs(10);

impl Default for LiveRoute {
    fn default() -> Self {
        LiveRoute {
            prefetch: Prefetch::Next,
            dvr: None,
            retention_margin: DEFAULT_LIVE_RETENTION_MARGIN,
        }
    }
}

impl LiveRoute {
    fn resolve(field: &str, r: &RawRoute, c: &mut Check) -> LiveRoute {
        let prefetch = match r.prefetch.as_deref() {
            None | Some("next") => Prefetch::Next,
            Some("off") => Prefetch::Off,
            Some("all-new") => Prefetch::AllNew,
            Some(other) => {
                c.error(format!(
                    "{field}.prefetch: {other:?} is not one of off, next, all-new"
                ));
                Prefetch::Next
            }
        };
        let dvr = match r.live_dvr.as_deref() {
            None | Some("off") => None,
            Some(_) => Some(c.duration(&format!("{field}.live_dvr"), &r.live_dvr, Duration::ZERO))
                .filter(|d| !d.is_zero()),
        };
        LiveRoute {
            prefetch,
            dvr,
            retention_margin: c.duration(
                &format!("{field}.live_retention_margin"),
                &r.live_retention_margin,
                DEFAULT_LIVE_RETENTION_MARGIN,
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub drop_query_params: Vec<String>,
    pub max_object_size: u64,
    pub collapse_timeout: Duration,
    pub hit_for_pass_ttl: Duration,
    pub negative_ttl: Duration,
    pub manifest_stale_factor: u32,
    /// Targeted cache-control fields (RFC 9213), in precedence order: the first one present
    /// with a valid value replaces `Cache-Control` and `Expires` for this cache's decisions.
    pub targeted_cache_control: Vec<http::HeaderName>,
    /// Large objects are fetched and cached in slices of this many bytes (`proxy::slice`);
    /// 0 disables slicing.
    pub slice_size: u64,
    /// A prefetch fill (`proxy::prefetch`) whose answer is larger than this many bytes (its
    /// `Content-Length`, or a body without one that grows past it) is abandoned: nothing more
    /// is read and nothing stored (`proxy::fill`).
    pub prefetch_max_size: u64,
    pub ttl: ClassTtl,
    /// Viewers' `Cache-Control` request directives are honoured (`cache::request_cc`): a
    /// `no-cache` or `max-age=0` revalidates an `other`-class object, `only-if-cached` never
    /// reaches the origin.
    pub request_directives: bool,
    /// Manifests the origin sent uncoded are gzip-coded for viewers that accept it
    /// (`proxy::compress`).
    pub compress_manifests: bool,
}

#[derive(Debug, Clone)]
pub struct OriginClientConfig {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    /// Bytes/s an origin body (fill or pass) must average over each `min_body_rate_window` of
    /// time spent waiting for it, or it is cut (`http::body::Pace`); 0 disables.
    pub min_body_rate: u64,
    pub min_body_rate_window: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub http2: bool,
    pub preconnect: Preconnect,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The most a request's header fields may take (431 past it).
    pub max_header_size: usize,
    /// The longest request target, path and query (414 past it).
    pub max_uri_size: usize,
    pub shutdown_grace: Duration,
    /// RAM-tier bodies of 512 KiB and more live in anonymous pages and go to plain-TCP viewers
    /// with `vmsplice` + `splice`.
    pub zero_copy: bool,
    /// How many mappings zero-copy bodies (and descriptors their splice pipes) may hold before further bodies stay on
    /// the heap.
    pub zero_copy_budgets: ZeroCopyBudgets,
    /// The send buffer a viewer connection gets once it sends a body from anonymous pages
    /// (`http::zerocopy`); 0 leaves it to the kernel's autotuning.
    pub send_buffer: usize,
    /// 0: viewers are served on the shared work-stealing runtime (default). N: N threads, each
    /// with its own single-threaded runtime and accept loop (nginx's worker model).
    pub threads: usize,
    /// A TLS handshake not finished in this long closes the connection.
    pub tls_handshake_timeout: Duration,
    /// Idle keep-alive, slow-reader and h2 keep-alive timeouts.
    pub timeouts: ConnTimeouts,
    /// HTTP/2 stream limits (concurrency, rapid-reset protection).
    pub h2: H2Limits,
}

// ---- server.zero_copy_*_budget: mappings and descriptors zero-copy bodies may hold ----------

/// `server.zero_copy_map_budget` and `server.zero_copy_fd_budget`. 0 (the default) takes the
/// kernel-derived budget, half of `vm.max_map_count` mappings and a quarter of the (raised)
/// `RLIMIT_NOFILE` descriptors; a value above that default is lowered to it at start, since the
/// kernel limits are what the budget protects (`zerocopy::ZeroCopy::with_budgets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroCopyBudgets {
    pub maps: usize,
    pub fds: usize,
}

impl ZeroCopyBudgets {
    fn resolve(raw: &RawServer) -> ZeroCopyBudgets {
        ZeroCopyBudgets {
            maps: raw.zero_copy_map_budget.unwrap_or(0),
            fds: raw.zero_copy_fd_budget.unwrap_or(0),
        }
    }
}

// ---- [cmcd]: Common Media Client Data (CTA-5004) -------------------------------------------

/// Default `cmcd.low_buffer_ms`: a player reporting less buffer than this is served first at a
/// limit. Two seconds is under one segment of most live streams, so such a player stalls unless
/// its next request is quick.
pub const DEFAULT_CMCD_LOW_BUFFER_MS: u64 = 2000;

/// The `[cmcd]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCmcd {
    /// Send viewers' CMCD (the `CMCD` query parameter and `CMCD-*` headers) to the origin on
    /// shared fills too. Default false: a fill serves every viewer of the key, so one viewer's
    /// CMCD would misreport the others. Pass-through requests always carry it.
    pub forward: Option<bool>,
    /// Buffer length (ms) under which a player's request is urgent (`Cmcd::urgent`).
    pub low_buffer_ms: Option<u64>,
}

/// Resolved `[cmcd]`.
#[derive(Debug, Clone)]
pub struct CmcdConfig {
    pub forward: bool,
    pub low_buffer_ms: u64,
}

impl Default for CmcdConfig {
    fn default() -> CmcdConfig {
        CmcdConfig {
            forward: false,
            low_buffer_ms: DEFAULT_CMCD_LOW_BUFFER_MS,
        }
    }
}

impl CmcdConfig {
    fn resolve(raw: &RawCmcd, c: &mut Check) -> CmcdConfig {
        let low_buffer_ms = raw.low_buffer_ms.unwrap_or(DEFAULT_CMCD_LOW_BUFFER_MS);
        if low_buffer_ms > 600_000 {
            c.error("cmcd.low_buffer_ms: at most 600000 (ten minutes of buffer is never low)");
        }
        CmcdConfig {
            forward: raw.forward.unwrap_or(false),
            low_buffer_ms,
        }
    }
}

/// The `[live]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLive {
    /// Longest an LL-HLS blocking reload is held (default 30s). The hold is three target
    /// durations (RFC 8216bis §6.2.5.2), but the target duration comes from the origin's
    /// playlist: this keeps a broken or hostile one from pinning viewers for a day.
    pub max_hold: Option<String>,
    /// Memory for the live state of every playlist (latest copy's scan, window, the URIs seen;
    /// default 64MiB, at least 1MiB): the least recently used states are forgotten past it.
    pub state_memory: Option<String>,
}

/// Default `live.max_hold`: three 10 s target durations, beyond any low-latency stream's.
pub const DEFAULT_LIVE_MAX_HOLD: Duration = Duration::from_secs(30);
/// Default `live.state_memory`.
pub const DEFAULT_LIVE_STATE_MEMORY: u64 = 64 << 20;

/// Resolved `[live]`.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub max_hold: Duration,
    pub state_memory: u64,
}

impl Default for LiveConfig {
    fn default() -> LiveConfig {
        LiveConfig {
            max_hold: DEFAULT_LIVE_MAX_HOLD,
            state_memory: DEFAULT_LIVE_STATE_MEMORY,
        }
    }
}

impl LiveConfig {
    fn resolve(raw: &RawLive, c: &mut Check) -> LiveConfig {
        let max_hold = c.duration("live.max_hold", &raw.max_hold, DEFAULT_LIVE_MAX_HOLD);
        if max_hold.is_zero() {
            c.error("live.max_hold: must be more than 0 (blocking reloads need a hold)");
        }
        let state_memory = c.size(
            "live.state_memory",
            &raw.state_memory,
            DEFAULT_LIVE_STATE_MEMORY,
        );
        if state_memory < 1 << 20 {
            c.error("live.state_memory: at least 1MiB (a long DVR playlist's state is a few MiB)");
        }
        LiveConfig {
            max_hold,
            state_memory,
        }
    }
}

impl RawConfig {
    /// `vedge serve`'s `server.threads` when the config leaves it out, by the edge's shape. A
    /// RAM-only edge (no `[store]`: live, manifests) runs one event loop per core (nginx's
    /// `worker_processes auto`): measured side by side on the 2-core bench box it spends 17 %
    /// less edge CPU per manifest hit and 12 % less per 1 MiB hit than the shared work-stealing
    /// runtime, with a lower p99. An edge with a store keeps the shared runtime (0): on the
    /// disk-hit benchmark the per-core loops doubled the p99 (255 against 120 ms) and served
    /// fewer bytes per core (16.9 against 18.3 Gbit/s), disk reads and fills on the shared
    /// runtime competing with loops that cannot hand work to an idle core (benches/RESULTS.md).
    pub fn default_threads_by_shape(&mut self) {
        if self.server.threads.is_none() && self.store.path.is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            self.server.threads = Some(cores.min(MAX_THREADS));
        }
    }

    /// Reads and parses a TOML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("config file {}: {e}", path.display())]))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError(vec![format!("config file {}: {e}", path.display())]))
    }

    /// Moves the deprecated top-level store keys into `[store]`, returning one warning per key
    /// moved. A key given under both spellings is an error: which one was meant is a guess.
    fn move_deprecated_store_keys(&mut self, c: &mut Check) -> Vec<String> {
        fn move_key<T>(
            old: &mut Option<T>,
            new: &mut Option<T>,
            (old_name, new_name): (&str, &str),
            warnings: &mut Vec<String>,
            c: &mut Check,
        ) {
            let Some(v) = old.take() else { return };
            if new.is_some() {
                c.0.push(format!(
                    "{old_name}: given as well as `{new_name}` in the [store] table; \
                     keep only `{new_name}` ({old_name} is its deprecated spelling)"
                ));
                return;
            }
            *new = Some(v);
            warnings.push(deprecated(old_name, new_name));
        }
        let mut warnings = Vec::new();
        if std::mem::take(&mut self.store.path_given_as_string) {
            warnings.push(deprecated("store = \"PATH\"", "path"));
        }
        let s = &mut self.store;
        let w = &mut warnings;
        move_key(
            &mut self.store_size,
            &mut s.size,
            ("store_size", "size"),
            w,
            c,
        );
        move_key(
            &mut self.store_region_size,
            &mut s.region_size,
            ("store_region_size", "region_size"),
            w,
            c,
        );
        move_key(
            &mut self.store_reformat,
            &mut s.reformat,
            ("store_reformat", "reformat"),
            w,
            c,
        );
        move_key(
            &mut self.io_engine,
            &mut s.io_engine,
            ("io_engine", "io_engine"),
            w,
            c,
        );
        move_key(
            &mut self.store_admit_window,
            &mut s.admit_window,
            ("store_admit_window", "admit_window"),
            w,
            c,
        );
        move_key(
            &mut self.store_write_rate,
            &mut s.write_rate,
            ("store_write_rate", "write_rate"),
            w,
            c,
        );
        warnings
    }
}

fn deprecated(old: &str, new: &str) -> String {
    format!("config: top-level `{old}` is deprecated; write `{new}` in the [store] table instead")
}

/// Collects every validation error instead of stopping at the first. Each sub-config's
/// `resolve` pushes its errors here and still returns a value (defaults in place of bad fields),
/// so one pass reports every bad field of every subsystem.
#[derive(Default)]
struct Check(Vec<String>);

impl Check {
    fn error(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

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
            // Credentials in the URL would never be sent (the edge authenticates to no
            // origin by URL), and the URL names the origin in `/metrics` labels and logs,
            // which are not secret: refused rather than published.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                self.0.push(format!(
                    "{field}: an origin URL must not carry credentials (`user:password@`): \
                     they would never be sent, and the URL is shown in metrics and logs"
                ));
                None
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.0.push(format!(
                    "{field}: `{v}` must be an http:// or https:// URL with a host"
                ));
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
            key: self.ttl_rules(&format!("{field}.key"), &raw.key, base.key),
            other: self.ttl_rules(&format!("{field}.other"), &raw.other, base.other),
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    /// [`Config::resolve`], logging its deprecation warnings.
    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let (config, warnings) = Config::resolve(raw)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(config)
    }
}

impl Config {
    /// Validates `raw`, returning the config and the deprecation warnings it gave rise to (for
    /// the caller to log once logging is up), or every bad field.
    pub fn resolve(mut raw: RawConfig) -> Result<(Config, Vec<String>), ConfigError> {
        let mut c = Check::default();
        let warnings = raw.move_deprecated_store_keys(&mut c);

        let listen = match raw.listen.as_deref() {
            Some(a) => c.addr("listen", a).unwrap_or(DEFAULT_LISTEN),
            None => DEFAULT_LISTEN,
        };
        let cdn_id = raw.cdn_id.clone().unwrap_or_else(|| DEFAULT_CDN_ID.into());
        if cdn_id.is_empty()
            || !cdn_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            c.error(format!(
                "cdn_id: `{cdn_id}` must be a non-empty token of letters, digits, '-', '.', '_'"
            ));
        }
        let ram_size = c.size("ram_size", &raw.ram_size, DEFAULT_RAM_SIZE);
        if ram_size < MIN_RAM_SIZE {
            c.error("ram_size: must be at least 1MiB");
        }
        let origin_client = OriginClientConfig::resolve(&raw.origin_client, &mut c);
        let tier = TierConfig::resolve(&raw, origin_client.first_byte_timeout, &mut c);
        let admin = AdminConfig::resolve(raw.admin_listen, raw.admin_token, &mut c);
        let store = StoreSettings::resolve(&raw.store, &mut c);
        let cache = CacheConfig::resolve(&raw.cache, &mut c);
        if cache.max_object_size > ram_size {
            // Not an error: larger objects still stream through, uncached.
            tracing::debug!(
                max_object_size = cache.max_object_size,
                ram_size,
                "cache.max_object_size is larger than the RAM tier"
            );
        }
        let routes = Route::resolve_all(raw.origin.as_deref(), &raw.routes, &cache.ttl, &mut c);
        let cache = cache.dropping_token_params(&routes);
        if origin_client.min_body_rate_window.is_zero() {
            for r in routes
                .iter()
                .filter(|r| r.min_body_rate.is_some_and(|n| n > 0))
            {
                c.error(format!(
                    "route ({}).min_body_rate: origin_client.min_body_rate_window must be longer \
                     than 0s while a rate is set",
                    r.prefix
                ));
            }
        }
        let server = ServerConfig::resolve(&raw.server, &mut c);
        let limits = LimitsConfig::resolve(&raw.limits, &mut c);
        let tls = TlsConfig::resolve(&raw.server, &raw.tls, &mut c);
        let abuse = AbuseConfig::resolve(&raw.origin_client, &raw.cache, &mut c);
        let admin = AdminConfig {
            timeouts: ConnTimeouts::resolve_admin(&raw.admin, &mut c),
            ..admin
        };
        let cmcd = CmcdConfig::resolve(&raw.cmcd, &mut c);
        let live = LiveConfig::resolve(&raw.live, &mut c);

        if !c.0.is_empty() {
            return Err(ConfigError(c.0));
        }
        let config = Config {
            listen,
            cdn_id,
            ram_size,
            admin,
            store,
            routes,
            cache,
            origin_client,
            server,
            limits,
            tls,
            cmcd,
            tier,
            abuse,
            live,
        };
        Ok((config, warnings))
    }

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

impl AdminConfig {
    fn resolve(listen: Option<String>, token: Option<String>, c: &mut Check) -> AdminConfig {
        let listen = listen.as_deref().and_then(|a| c.addr("admin_listen", a));
        if listen.is_some() && token.is_none() {
            c.error(
                "admin_token: required with admin_listen (flag --admin-token, env VEDGE_ADMIN_TOKEN \
                 or `admin_token` in the config file); the admin API never runs open",
            );
        }
        if token
            .as_ref()
            .is_some_and(|t| t.len() < MIN_ADMIN_TOKEN_LEN)
        {
            c.error(format!(
                "admin_token: must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            ));
        }
        AdminConfig {
            listen,
            token,
            timeouts: ConnTimeouts::admin_defaults(),
        }
    }
}

impl StoreSettings {
    /// `None` without a path. Size, region size and engine without a path are an error: the
    /// user meant to configure a store and would otherwise silently run RAM-only.
    fn resolve(raw: &RawStore, c: &mut Check) -> Option<StoreSettings> {
        let Some(path) = &raw.path else {
            if raw.size.is_some() || raw.io_engine.is_some() {
                c.error("store.size / store.io_engine: given without store.path");
            }
            return None;
        };
        let size = c.size("store.size", &raw.size, DEFAULT_STORE_SIZE);
        let region_size = c.size(
            "store.region_size",
            &raw.region_size,
            vedge_storage::default_region_size(size),
        );
        let io_engine = match raw.io_engine.as_deref() {
            None => DEFAULT_IO_ENGINE,
            Some(s) => parse_engine(s).unwrap_or_else(|e| {
                c.error(format!("store.io_engine: {e}"));
                DEFAULT_IO_ENGINE
            }),
        };
        if region_size < 1 << 20 || region_size % 4096 != 0 {
            c.error("store.region_size: must be at least 1MiB and a multiple of 4KiB");
        } else if size < region_size * 2 {
            c.error(format!(
                "store.size: {size} bytes holds fewer than two regions of {region_size} bytes"
            ));
        }
        Some(StoreSettings {
            path: path.clone(),
            size,
            region_size,
            region_size_chosen: raw.region_size.is_some(),
            reformat: raw.reformat.unwrap_or(false),
            io_engine,
            admit_window: c.duration(
                "store.admit_window",
                &raw.admit_window,
                DEFAULT_STORE_ADMIT_WINDOW,
            ),
            write_rate: raw
                .write_rate
                .as_ref()
                .map(|_| c.size("store.write_rate", &raw.write_rate, 0)),
        })
    }
}

impl CacheConfig {
    /// Every route's token parameter, and `CMCD`, join `drop_query_params`, whatever list the
    /// operator gave: both are per viewer and must never split (or name) a cache key. (CMCD
    /// reaches the origin only as `cmcd.forward` says.)
    fn dropping_token_params(mut self, routes: &[Route]) -> CacheConfig {
        let per_viewer = routes
            .iter()
            .filter_map(|r| r.token.as_ref())
            .map(|t| t.param.clone())
            .chain(std::iter::once("CMCD".to_string()));
        for param in per_viewer {
            if !self
                .drop_query_params
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&param))
            {
                self.drop_query_params.push(param);
            }
        }
        self
    }

    fn resolve(raw: &RawCache, c: &mut Check) -> CacheConfig {
        CacheConfig {
            drop_query_params: raw.drop_query_params.clone().unwrap_or_else(|| {
                DEFAULT_DROP_QUERY_PARAMS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            max_object_size: c.size(
                "cache.max_object_size",
                &raw.max_object_size,
                DEFAULT_MAX_OBJECT_SIZE,
            ),
            collapse_timeout: c.duration(
                "cache.collapse_timeout",
                &raw.collapse_timeout,
                DEFAULT_COLLAPSE_TIMEOUT,
            ),
            hit_for_pass_ttl: c.duration(
                "cache.hit_for_pass_ttl",
                &raw.hit_for_pass_ttl,
                DEFAULT_HIT_FOR_PASS_TTL,
            ),
            negative_ttl: c.duration(
                "cache.negative_ttl",
                &raw.negative_ttl,
                DEFAULT_NEGATIVE_TTL,
            ),
            manifest_stale_factor: raw
                .manifest_stale_factor
                .unwrap_or(DEFAULT_MANIFEST_STALE_FACTOR),
            targeted_cache_control: targeted_fields(raw.targeted_cache_control.as_deref(), c),
            slice_size: slice_size(raw, c),
            prefetch_max_size: prefetch_max_size(raw, c),
            ttl: c.class_ttls("cache.ttl", &raw.ttl, &ClassTtl::defaults()),
            request_directives: raw.request_directives.unwrap_or(true),
            compress_manifests: raw.compress_manifests.unwrap_or(false),
        }
    }
}

/// `cache.max_object_size` as set (or its default), for the sizes that must fit it; a bad value
/// is reported where it is resolved.
fn raw_max_object_size(raw: &RawCache) -> u64 {
    raw.max_object_size
        .as_deref()
        .and_then(|v| parse_size(v).ok())
        .unwrap_or(DEFAULT_MAX_OBJECT_SIZE)
}

/// Default `cache.slice_size`: nginx's usual `slice 4m`.
pub const DEFAULT_SLICE_SIZE: u64 = 4 << 20;

/// `cache.slice_size`: a size, or 0 to fetch every object whole. A slice smaller than 64 KiB
/// would cost more origin round trips than it saves bytes, so it is refused.
/// A slice must also fit `cache.max_object_size`, or no slice could ever be stored (the default
/// turns slicing off under a `max_object_size` smaller than itself).
fn slice_size(raw: &RawCache, c: &mut Check) -> u64 {
    let n = c.size("cache.slice_size", &raw.slice_size, DEFAULT_SLICE_SIZE);
    if n != 0 && n < 64 << 10 {
        c.error(format!(
            "cache.slice_size = {n}: use 0 (no slicing) or at least 64KiB"
        ));
    }
    let max = raw_max_object_size(raw);
    if n > max && raw.slice_size.is_none() {
        // The default slice does not fit a small `max_object_size`: no slicing.
        return 0;
    }
    if n > max {
        c.error(format!(
            "cache.slice_size = {n} is larger than cache.max_object_size = {max}: no slice \
             could be stored"
        ));
    }
    n
}

/// `cache.prefetch_max_size`: at least 64 KiB (a smaller cap would refuse real segments and
/// parts; a route turns prefetch off with `prefetch = "off"`). Past `cache.max_object_size` it
/// would only name objects no fill keeps: refused when set so, and the default shrinks to a
/// smaller `max_object_size`.
fn prefetch_max_size(raw: &RawCache, c: &mut Check) -> u64 {
    let n = c.size(
        "cache.prefetch_max_size",
        &raw.prefetch_max_size,
        DEFAULT_PREFETCH_MAX_SIZE,
    );
    if n < 64 << 10 {
        c.error(format!(
            "cache.prefetch_max_size = {n}: use at least 64KiB (prefetch = \"off\" on a route \
             turns prefetch off)"
        ));
    }
    let max = raw_max_object_size(raw);
    if n > max && raw.prefetch_max_size.is_none() {
        return max;
    }
    if n > max {
        c.error(format!(
            "cache.prefetch_max_size = {n} is larger than cache.max_object_size = {max}"
        ));
    }
    n
}

/// `cache.targeted_cache_control`: header names, lowercased; `Cache-Control` itself is refused
/// (it is what a targeted field overrides).
fn targeted_fields(raw: Option<&[String]>, c: &mut Check) -> Vec<http::HeaderName> {
    let Some(raw) = raw else {
        return DEFAULT_TARGETED_CACHE_CONTROL
            .iter()
            .map(|n| http::HeaderName::from_static(n))
            .collect();
    };
    let mut out = Vec::new();
    for name in raw {
        match http::HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(n) if n == http::header::CACHE_CONTROL => c.error(
                "cache.targeted_cache_control: list only targeted fields such as \
                 \"CDN-Cache-Control\", not \"Cache-Control\" itself",
            ),
            Ok(n) => out.push(n),
            Err(_) => c.error(format!(
                "cache.targeted_cache_control: {name:?} is not a header field name"
            )),
        }
    }
    out
}

impl Route {
    /// The default origin (prefix `/`) and the `[[route]]`s, longest prefix first so routing is
    /// a first-match scan. Each route's TTL classes start from the global ones.
    fn resolve_all(
        origin: Option<&str>,
        raw: &[RawRoute],
        global_ttl: &ClassTtl,
        c: &mut Check,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        match origin {
            Some(o) => {
                if let Some(origin) = c.origin_url("origin", o) {
                    // Like a `[[route]]` without `pass_host`: the origin's own Host, which is
                    // also what the key is built on (a viewer's Host cannot fan keys out).
                    let host = authority(&origin);
                    let integrity = RouteIntegrity::resolve("origin", Some(&host), None, None, c);
                    routes.push(Route {
                        prefix: "/".into(),
                        host: Some(host),
                        group: OriginGroup::single(origin.clone()),
                        origin,
                        public: false,
                        ttl: global_ttl.clone(),
                        integrity,
                        token: None,
                        cors: None,
                        acl: IpAcl::default(),
                        live: LiveRoute::default(),
                        min_body_rate: None,
                    });
                }
            }
            None if raw.iter().any(|r| r.prefix == "/") => {}
            None => c.error(
                "origin: required (flag --origin URL or `origin = \"http://...\"` in the config file)",
            ),
        }
        for (i, r) in raw.iter().enumerate() {
            let field = format!("route[{i}] ({})", r.prefix.escape_debug());
            if !r.prefix.starts_with('/') {
                c.error(format!(
                    "{field}: prefix must start with '/' (format PREFIX=URL, e.g. /live/=http://packager:8000)"
                ));
                continue;
            }
            if r.prefix.chars().any(|ch| ch.is_control() || ch == ' ') {
                c.error(format!(
                    "{field}: prefix must not contain spaces or control characters (a request \
                     path never does)"
                ));
                continue;
            }
            // Two routes of one prefix for the same hosts: only one could ever be chosen, and
            // which one was the file's order, silently.
            let hosts = |r: &RawRoute| {
                let mut h: Vec<String> = r
                    .hosts
                    .iter()
                    .flatten()
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
                h.sort();
                h
            };
            if raw[..i]
                .iter()
                .any(|o| o.prefix == r.prefix && hosts(o) == hosts(r))
            {
                c.error(format!(
                    "{field}: another route has the same prefix for the same hosts; merge them"
                ));
                continue;
            }
            let Some(group) = OriginGroup::resolve(&field, r, c) else {
                continue;
            };
            let origin = group.origins[0].clone();
            let host = if r.pass_host.unwrap_or(false) {
                None
            } else {
                r.host.clone().or_else(|| Some(authority(&origin)))
            };
            let ttl = c.class_ttls(&format!("{field}.ttl"), &r.ttl, global_ttl);
            let integrity = RouteIntegrity::resolve(
                &field,
                host.as_deref(),
                r.hosts.as_deref(),
                r.forward_headers.as_deref(),
                c,
            );
            let token = r
                .token
                .as_ref()
                .and_then(|t| TokenConfig::resolve(&format!("{field}.token"), t, c));
            let acl = IpAcl {
                allow: c.cidrs(&format!("{field}.allow_ips"), r.allow_ips.as_deref()),
                deny: c.cidrs(&format!("{field}.deny_ips"), r.deny_ips.as_deref()),
            };
            let live = LiveRoute::resolve(&field, r, c);
            let min_body_rate = r
                .min_body_rate
                .as_ref()
                .map(|_| c.size(&format!("{field}.min_body_rate"), &r.min_body_rate, 0));
            let cors = r
                .cors
                .as_ref()
                .and_then(|raw| CorsConfig::resolve(&format!("{field}.cors"), raw, c));
            if cors.is_some() {
                for n in &integrity.forward_headers {
                    if CORS_REQUEST_FIELDS.contains(&n.as_str()) {
                        c.error(format!(
                            "{field}.forward_headers: `{n}` is not forwarded on a route with [route.cors]: the edge answers CORS itself, and one viewer's `{n}` must not shape the object every viewer shares"
                        ));
                    }
                }
            }
            routes.retain(|existing: &Route| existing.prefix != r.prefix);
            routes.push(Route {
                prefix: r.prefix.clone(),
                origin,
                group,
                host,
                public: r.public.unwrap_or(false),
                ttl,
                integrity,
                token,
                cors,
                acl,
                live,
                min_body_rate,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        routes
    }
}

/// Default `origin_client.max_fills`: concurrent fills one route may run.
pub const DEFAULT_MAX_FILLS: usize = 256;
/// Default `origin_client.max_connections_per_origin`.
pub const DEFAULT_MAX_CONNECTIONS_PER_ORIGIN: usize = 512;
/// Default `cache.range_passthrough_above` (8 MiB).
pub const DEFAULT_RANGE_PASSTHROUGH_ABOVE: u64 = 8 << 20;
/// Default `cache.index_memory` (32 MiB for each index).
pub const DEFAULT_INDEX_MEMORY: u64 = 32 << 20;

/// Origin protection and memory bounds (issue 14, "Abuse limits"). The keys live in the tables
/// they belong to (`[origin_client]`, `[cache]`, `[server]`); they are resolved here, in one
/// place, so the limits read together.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// `origin_client.max_fills`: fills one route runs at once; more wait (at most the collapse
    /// deadline) and then answer 503. 0 = unlimited.
    pub max_fills: usize,
    /// `origin_client.max_connections_per_origin`: origin requests (and so connections) in
    /// flight to one origin or `[shield]` node, body included. 0 = unlimited.
    pub max_connections_per_origin: usize,
    /// `cache.range_passthrough_above`: a Range miss on an object not seen before is passed
    /// through with the viewer's range unless the object is known to be at most this large.
    /// 0 = off (a Range miss fills the whole object).
    pub range_passthrough_above: u64,
    /// `cache.index_memory`: bytes each of the hit-for-pass and Vary indexes may weigh.
    pub index_memory: u64,
}

impl AbuseConfig {
    fn resolve(o: &RawOriginClient, cache: &RawCache, c: &mut Check) -> AbuseConfig {
        let index_memory = c.size(
            "cache.index_memory",
            &cache.index_memory,
            DEFAULT_INDEX_MEMORY,
        );
        if index_memory < 4096 {
            c.error("cache.index_memory: at least 4KiB");
        }
        AbuseConfig {
            max_fills: o.max_fills.unwrap_or(DEFAULT_MAX_FILLS),
            max_connections_per_origin: o
                .max_connections_per_origin
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_ORIGIN),
            range_passthrough_above: c.size(
                "cache.range_passthrough_above",
                &cache.range_passthrough_above,
                DEFAULT_RANGE_PASSTHROUGH_ABOVE,
            ),
            index_memory,
        }
    }
}

impl OriginClientConfig {
    fn resolve(raw: &RawOriginClient, c: &mut Check) -> OriginClientConfig {
        let cfg = OriginClientConfig {
            connect_timeout: c.duration(
                "origin_client.connect_timeout",
                &raw.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            first_byte_timeout: c.duration(
                "origin_client.first_byte_timeout",
                &raw.first_byte_timeout,
                DEFAULT_FIRST_BYTE_TIMEOUT,
            ),
            between_bytes_timeout: c.duration(
                "origin_client.between_bytes_timeout",
                &raw.between_bytes_timeout,
                DEFAULT_BETWEEN_BYTES_TIMEOUT,
            ),
            min_body_rate: c.size(
                "origin_client.min_body_rate",
                &raw.min_body_rate,
                DEFAULT_MIN_BODY_RATE,
            ),
            min_body_rate_window: c.duration(
                "origin_client.min_body_rate_window",
                &raw.min_body_rate_window,
                DEFAULT_MIN_BODY_RATE_WINDOW,
            ),
            pool_idle_timeout: c.duration(
                "origin_client.pool_idle_timeout",
                &raw.pool_idle_timeout,
                DEFAULT_POOL_IDLE_TIMEOUT,
            ),
            pool_max_idle_per_host: raw
                .pool_max_idle_per_host
                .unwrap_or(DEFAULT_POOL_MAX_IDLE_PER_HOST),
            http2: raw.http2.unwrap_or(DEFAULT_ORIGIN_HTTP2),
            preconnect: Preconnect::resolve(raw, c),
        };
        if cfg.min_body_rate > 0 && cfg.min_body_rate_window.is_zero() {
            c.error(
                "origin_client.min_body_rate_window: must be longer than 0s while \
                 origin_client.min_body_rate is set (\"0\" turns the rate off)",
            );
        }
        cfg
    }
}

// ---- origin_client.preconnect*: warm origin connections (origin::preconnect) ----

/// How long after a route's last origin request its origins' connections are kept warm.
pub const DEFAULT_KEEP_WARM: Duration = Duration::from_secs(60);

/// Warm origin connections: one request per origin at start, and again before the pool's idle
/// timeout would close the last connection while the origin had traffic within `keep_warm`.
#[derive(Debug, Clone)]
pub struct Preconnect {
    /// `origin_client.preconnect` (default true).
    pub enabled: bool,
    /// `origin_client.preconnect_method`: `HEAD` (default) or `OPTIONS`.
    pub method: http::Method,
    /// `origin_client.preconnect_path` (default `/`), below the origin's base path.
    pub path: String,
    /// `origin_client.keep_warm` (default 60s): 0 warms at start only.
    pub keep_warm: Duration,
}

impl Preconnect {
    fn resolve(raw: &RawOriginClient, c: &mut Check) -> Preconnect {
        let method = match raw.preconnect_method.as_deref().unwrap_or("HEAD") {
            m if m.eq_ignore_ascii_case("HEAD") => http::Method::HEAD,
            m if m.eq_ignore_ascii_case("OPTIONS") => http::Method::OPTIONS,
            other => {
                c.error(format!(
                    "origin_client.preconnect_method: {other:?} is not HEAD or OPTIONS (the warm-up \
                     request must not fetch a body)"
                ));
                http::Method::HEAD
            }
        };
        let path = raw.preconnect_path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            c.error(format!(
                "origin_client.preconnect_path: {path:?} must be an absolute path such as \"/\""
            ));
        }
        Preconnect {
            enabled: raw.preconnect.unwrap_or(true),
            method,
            path,
            keep_warm: c.duration("origin_client.keep_warm", &raw.keep_warm, DEFAULT_KEEP_WARM),
        }
    }
}

impl ServerConfig {
    fn resolve(raw: &RawServer, c: &mut Check) -> ServerConfig {
        let max_header_size = c.size(
            "server.max_header_size",
            &raw.max_header_size,
            DEFAULT_MAX_HEADER_SIZE,
        );
        if max_header_size < MIN_MAX_HEADER_SIZE {
            c.error("server.max_header_size: must be at least 8KiB");
        }
        let max_uri_size = c.size(
            "server.max_uri_size",
            &raw.max_uri_size,
            DEFAULT_MAX_URI_SIZE,
        );
        if !(MIN_MAX_URI_SIZE..=MAX_MAX_URI_SIZE).contains(&max_uri_size) {
            c.error("server.max_uri_size: must be between 1KiB and 64KiB");
        }
        let send_buffer = c.size("server.send_buffer", &raw.send_buffer, DEFAULT_SEND_BUFFER);
        if send_buffer > MAX_SEND_BUFFER {
            c.error("server.send_buffer: at most 1GiB (0 leaves it to the kernel)");
        }
        let threads = raw.threads.unwrap_or(DEFAULT_THREADS);
        if threads > MAX_THREADS {
            c.error(format!(
                "server.threads: at most {MAX_THREADS} (0 means the shared runtime)"
            ));
        }
        ServerConfig {
            max_header_size: max_header_size as usize,
            max_uri_size: max_uri_size as usize,
            shutdown_grace: c.duration(
                "server.shutdown_grace",
                &raw.shutdown_grace,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            zero_copy: raw.zero_copy.unwrap_or(DEFAULT_ZERO_COPY),
            zero_copy_budgets: ZeroCopyBudgets::resolve(raw),
            send_buffer: send_buffer as usize,
            threads,
            tls_handshake_timeout: c.duration(
                "server.tls_handshake_timeout",
                &raw.tls_handshake_timeout,
                DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            ),
            timeouts: ConnTimeouts::resolve_server(raw, c),
            h2: H2Limits {
                max_concurrent_streams: raw
                    .h2_max_concurrent_streams
                    .unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS),
                max_pending_reset_streams: raw
                    .h2_max_pending_reset_streams
                    .unwrap_or(DEFAULT_H2_MAX_PENDING_RESET_STREAMS),
                max_local_error_reset_streams: raw
                    .h2_max_local_error_reset_streams
                    .unwrap_or(DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS),
                control_frame_rate: raw
                    .h2_control_frame_rate
                    .unwrap_or(DEFAULT_H2_CONTROL_FRAME_RATE),
            },
        }
    }
}

/// Viewer request headers copied onto a fill's origin request by default: none. A fill is shared
/// by every viewer of the key, so any header it carries that the key does not name (a
/// `User-Agent`, an `Accept-Language`) would let one viewer decide what all of them get; an
/// origin that needs one lists it in `forward_headers` (and says `Vary` if it answers by it).
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &[];

/// Request headers no fill and no pass ever sends to an origin, whatever `forward_headers` or a
/// `Vary` says: message framing and hop-by-hop fields (RFC 9110 §7.6.1; the edge frames its own
/// requests), and the fields frameworks read as a different host, URL, method or client, which
/// would turn one viewer's request into another object for everyone.
pub const NEVER_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
    "upgrade",
    "te",
    "trailer",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

/// Whether a request header must never reach an origin (`NEVER_FORWARDED` or any `Proxy-*`).
pub fn never_forwarded(name: &str) -> bool {
    never_forwarded_header(&name.to_ascii_lowercase())
}

/// `never_forwarded` for a name already lower case (an `http::HeaderName`'s), without a copy:
/// it runs on hits of varied objects (`proxy::fill::variant_for`).
pub fn never_forwarded_header(name: &str) -> bool {
    name.starts_with("proxy-") || NEVER_FORWARDED.contains(&name)
}

/// A route's request-integrity settings: which host names its objects, which viewer hosts it
/// answers, and which viewer headers its fills carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteIntegrity {
    /// The host keys are built on, normalised (`cache::key::normalize_host`): the `Host` the
    /// route sends its origin. `None` on `pass_host` routes, which key on the viewer's host.
    pub key_host: Option<String>,
    /// Normalised viewer hosts the route answers (empty: any valid host).
    pub hosts: Vec<String>,
    /// Lower-case names of the viewer headers fills forward.
    pub forward_headers: Vec<http::HeaderName>,
}

impl RouteIntegrity {
    fn resolve(
        field: &str,
        origin_host: Option<&str>,
        hosts: Option<&[String]>,
        forward: Option<&[String]>,
        c: &mut Check,
    ) -> RouteIntegrity {
        use crate::cache::key::{normalize_host, Scheme};
        let key_host = origin_host.and_then(|h| match normalize_host(h, Scheme::Http) {
            Ok(h) => Some(h),
            Err(e) => {
                c.error(format!("{field}.host: `{h}` is not a valid host: {e}"));
                None
            }
        });
        let hosts = hosts
            .unwrap_or_default()
            .iter()
            .filter_map(|h| match normalize_host(h, Scheme::Http) {
                Ok(h) => Some(h),
                Err(e) => {
                    c.error(format!("{field}.hosts: `{h}` is not a valid host: {e}"));
                    None
                }
            })
            .collect();
        let default: Vec<String> = DEFAULT_FORWARD_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let forward_headers = forward
            .unwrap_or(&default)
            .iter()
            .filter_map(|n| {
                if never_forwarded(n) {
                    c.error(format!(
                        "{field}.forward_headers: `{n}` is never forwarded (framing, hop-by-hop or a host/URL/method override)"
                    ));
                    return None;
                }
                match http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        c.error(format!("{field}.forward_headers: `{n}` is not a header name"));
                        None
                    }
                }
            })
            .collect();
        RouteIntegrity {
            key_host,
            hosts,
            forward_headers,
        }
    }
}

// CORS: `[route.cors]`, the edge's own policy for a route (answered by `http::cors`, stripped
// from fills by `proxy::fill`).

/// `[route.cors] allow_methods` default: what the cache serves. Other methods pass to the origin
/// and may be listed by an operator whose origin takes them.
pub const DEFAULT_CORS_ALLOW_METHODS: &[&str] = &["GET", "HEAD"];
/// `[route.cors] allow_headers` default: the request headers players send that are not
/// CORS-safelisted (Fetch §2.2.2), so the browser asks a preflight for them: `Range` when it is
/// not a single `bytes=N-M` (some browsers preflight every `Range`), and the CMCD headers
/// (CTA-5004) dash.js and hls.js send in header mode.
pub const DEFAULT_CORS_ALLOW_HEADERS: &[&str] = &[
    "Range",
    "CMCD-Request",
    "CMCD-Object",
    "CMCD-Status",
    "CMCD-Session",
];
/// `[route.cors] expose_headers` default: the response headers players read that a
/// cross-origin script cannot see otherwise (only `Cache-Control`, `Content-Language`,
/// `Content-Length`, `Content-Type`, `Expires`, `Last-Modified` and `Pragma` are safelisted):
/// `Content-Range`/`Accept-Ranges` for range requests (byte-range addressing, sidx, MP4 boxes),
/// `Date` for DASH's `urn:mpeg:dash:utc:http-head` clock sync (dash.js), `Age`/`ETag` for live
/// edge estimation and revalidation, `X-Cache`/`Cache-Status` for QoE beacons.
pub const DEFAULT_CORS_EXPOSE_HEADERS: &[&str] = &[
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Age",
    "Date",
    "ETag",
    "X-Cache",
    "Cache-Status",
];
/// `[route.cors] max_age` default: how long a browser may reuse a preflight answer. Chromium
/// caps it at 2 hours (Firefox at 24), so a longer default would only mislead.
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(7200);
/// Longest `Origin` a policy can name (scheme, host and port; DNS names stop at 253).
pub const MAX_CORS_ORIGIN_LEN: usize = 300;
/// The request fields of the CORS protocol: never sent on a fill of a route with a policy, and
/// left out of such a route's `Vary` (lower case).
pub const CORS_REQUEST_FIELDS: &[&str] = &[
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
];

/// The `[route.cors]` table, field for field.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// `["*"]`, or exact origins (`scheme://host[:port]`, as browsers send them). Required.
    pub allow_origins: Option<Vec<String>>,
    /// Methods a preflight may ask for (default `DEFAULT_CORS_ALLOW_METHODS`).
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (default `DEFAULT_CORS_ALLOW_HEADERS`); `["*"]`
    /// allows any header name a preflight lists.
    pub allow_headers: Option<Vec<String>>,
    /// Response headers scripts may read (default `DEFAULT_CORS_EXPOSE_HEADERS`); `[]` for none.
    pub expose_headers: Option<Vec<String>>,
    /// How long browsers may cache a preflight answer (default `DEFAULT_CORS_MAX_AGE`).
    pub max_age: Option<String>,
    /// Let credentialed requests (cookies, `withCredentials`) read answers (default false);
    /// never with `allow_origins = ["*"]`.
    pub allow_credentials: Option<bool>,
}

/// Which `Origin`s a policy answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: every origin, answered `Access-Control-Allow-Origin: *` on every response.
    Any,
    /// Listed origins.
    List {
        /// Exact serialised origins (lower-case scheme and host, no default port), each echoed
        /// from the configuration (never from the request) when a request names it.
        exact: Vec<http::HeaderValue>,
        /// `scheme://*.domain[:port]` entries (as S3 CORS rules allow), as (`scheme://`,
        /// `.domain[:port]`): an `Origin` between the two that is one or more DNS labels
        /// (lower case, digits, `-`) is allowed and echoed once so checked.
        subdomains: Vec<(String, String)>,
    },
}

/// Which request headers a preflight may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsHeaders {
    /// `*`: any valid header name the preflight lists, answered with those names.
    Any,
    /// These (lower case), answered with `value`.
    List {
        names: Vec<http::HeaderName>,
        value: Option<http::HeaderValue>,
    },
}

/// A route's CORS policy, resolved: the header values it answers with are built once here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub origins: CorsOrigins,
    pub methods: Vec<http::Method>,
    /// `Access-Control-Allow-Methods` of a granted preflight.
    pub methods_value: http::HeaderValue,
    pub headers: CorsHeaders,
    /// `Access-Control-Expose-Headers` of an allowed answer; `None`: none exposed.
    pub expose: Option<http::HeaderValue>,
    /// `Access-Control-Max-Age` of a granted preflight, in seconds.
    pub max_age: http::HeaderValue,
    pub credentials: bool,
}

impl CorsConfig {
    fn resolve(field: &str, raw: &RawCors, c: &mut Check) -> Option<CorsConfig> {
        let errors = c.0.len();
        let credentials = raw.allow_credentials.unwrap_or(false);
        let origins = match raw.allow_origins.as_deref() {
            None | Some([]) => {
                c.error(format!(
                    "{field}.allow_origins: required, e.g. [\"*\"] or [\"https://player.example.com\"]"
                ));
                CorsOrigins::List {
                    exact: Vec::new(),
                    subdomains: Vec::new(),
                }
            }
            Some(list) if list.iter().any(|o| o == "*") => {
                if list.len() > 1 {
                    c.error(format!(
                        "{field}.allow_origins: \"*\" allows every origin; list it alone"
                    ));
                }
                if credentials {
                    c.error(format!(
                        "{field}.allow_credentials: not with allow_origins = [\"*\"] (the Fetch standard refuses `*` on credentialed answers; list the origins instead)"
                    ));
                }
                CorsOrigins::Any
            }
            Some(list) => {
                let mut exact: Vec<http::HeaderValue> = Vec::new();
                let mut subdomains: Vec<(String, String)> = Vec::new();
                for o in list {
                    if let Some((scheme, rest)) = o.split_once("://*.") {
                        // Checked as the origin of one subdomain, then kept as its two ends.
                        match cors_origin(&format!("{scheme}://x.{rest}")) {
                            Ok(_) => subdomains.push((format!("{scheme}://"), format!(".{rest}"))),
                            Err(why) => c.error(format!("{field}.allow_origins: `{o}` {why}")),
                        }
                        continue;
                    }
                    match cors_origin(o) {
                        Ok(v) if exact.contains(&v) => {}
                        Ok(v) => exact.push(v),
                        Err(why) => c.error(format!("{field}.allow_origins: `{o}` {why}")),
                    }
                }
                CorsOrigins::List { exact, subdomains }
            }
        };
        let methods_raw: Vec<String> = raw.allow_methods.clone().unwrap_or_else(|| {
            DEFAULT_CORS_ALLOW_METHODS
                .iter()
                .map(|m| m.to_string())
                .collect()
        });
        let mut methods = Vec::new();
        for m in &methods_raw {
            // Browsers upper-case the methods they normalise (Fetch §2.2.1) and send the
            // others as written; an operator's `get` means GET.
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) if m != "*" && !methods.contains(&method) => methods.push(method),
                Ok(_) if m != "*" => {}
                _ => c.error(format!(
                    "{field}.allow_methods: `{m}` is not a method name (list them, e.g. [\"GET\", \"HEAD\"])"
                )),
            }
        }
        let headers = match raw.allow_headers.as_deref() {
            Some(list) if list.iter().any(|h| h == "*") => {
                if list.len() > 1 {
                    c.error(format!(
                        "{field}.allow_headers: \"*\" allows every header; list it alone"
                    ));
                }
                CorsHeaders::Any
            }
            list => {
                let names = cors_names(
                    &format!("{field}.allow_headers"),
                    list,
                    DEFAULT_CORS_ALLOW_HEADERS,
                    c,
                );
                let value = list_value(&names);
                CorsHeaders::List { names, value }
            }
        };
        let expose_raw = raw.expose_headers.as_deref();
        if expose_raw.is_some_and(|l| l.iter().any(|h| h == "*")) {
            c.error(format!(
                "{field}.expose_headers: list the names (\"*\" is read as a name on credentialed answers and is not portable)"
            ));
        }
        let expose = list_value(&cors_names(
            &format!("{field}.expose_headers"),
            expose_raw
                .map(|l| l.iter().filter(|h| *h != "*").cloned().collect::<Vec<_>>())
                .as_deref(),
            DEFAULT_CORS_EXPOSE_HEADERS,
            c,
        ));
        let max_age = c.duration(
            &format!("{field}.max_age"),
            &raw.max_age,
            DEFAULT_CORS_MAX_AGE,
        );
        let methods_value = http::HeaderValue::from_str(
            &methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )
        .unwrap_or_else(|_| http::HeaderValue::from_static("GET, HEAD"));
        (c.0.len() == errors).then(|| CorsConfig {
            origins,
            methods,
            methods_value,
            headers,
            expose,
            max_age: http::HeaderValue::from(max_age.as_secs()),
            credentials,
        })
    }
}

/// An `allow_origins` entry as browsers serialise an origin (Fetch's "ASCII serialization of an
/// origin"): `scheme://host[:port]`, lower case, no default port, no path, query or user.
fn cors_origin(o: &str) -> Result<http::HeaderValue, &'static str> {
    if o.len() > MAX_CORS_ORIGIN_LEN {
        return Err("is too long for an origin");
    }
    if o.contains('*') {
        return Err(
            "may hold `*` only alone (every origin) or as `scheme://*.domain` (its subdomains)",
        );
    }
    if o == "null" {
        return Err("is refused: `null` is the origin of sandboxed frames and local files, which any page can make");
    }
    let u = url::Url::parse(o).map_err(|_| "is not an origin (scheme://host[:port])")?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err("must be an http:// or https:// origin with a host");
    }
    if !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
        || u.path() != "/"
        || o.ends_with('/')
    {
        return Err("must be scheme://host[:port] only (no path, query, user or trailing slash), as browsers send `Origin`");
    }
    let serialised = u.origin().ascii_serialization();
    if serialised != o {
        return Err("is not spelled as browsers send it (lower case, punycode, no default port)");
    }
    http::HeaderValue::from_str(&serialised).map_err(|_| "is not a valid header value")
}

/// Header names of a CORS list (`allow_headers`, `expose_headers`), lower case and deduplicated;
/// `default` when the list is not given.
fn cors_names(
    field: &str,
    list: Option<&[String]>,
    default: &[&str],
    c: &mut Check,
) -> Vec<http::HeaderName> {
    let default: Vec<String> = default.iter().map(|s| s.to_string()).collect();
    let mut out: Vec<http::HeaderName> = Vec::new();
    for n in list.unwrap_or(&default) {
        match http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
            Ok(h) if !out.contains(&h) => out.push(h),
            Ok(_) => {}
            Err(_) => c.error(format!("{field}: `{n}` is not a header name")),
        }
    }
    out
}

/// `a, b, c`, or `None` for an empty list.
fn list_value(names: &[http::HeaderName]) -> Option<http::HeaderValue> {
    if names.is_empty() {
        return None;
    }
    let joined = names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    http::HeaderValue::from_str(&joined).ok()
}

// Signed URLs: `[route.token]` (Akamai EdgeAuth Token 2.0). Checked by `auth`, wired in by
// `proxy::signed`.

/// Query parameter (and cookie) the token is read from.
pub const DEFAULT_TOKEN_PARAM: &str = "hdnts";
/// Tolerance on `st` and `exp`, for viewers and generators whose clocks drift.
pub const DEFAULT_TOKEN_CLOCK_SKEW: Duration = Duration::from_secs(5);
pub const DEFAULT_TOKEN_ALGORITHM: TokenAlgorithm = TokenAlgorithm::Sha256;
pub const DEFAULT_TOKEN_SOURCES: &[&str] = &["query", "cookie"];
/// Longest secret accepted (hex digits). EdgeAuth keys are 32-64 bytes; this only bounds input.
const MAX_TOKEN_KEY_HEX: usize = 1024;

/// The `[route.token]` table, field for field.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// The shared secret, hex (as the EdgeAuth generators take it).
    pub key: Option<String>,
    /// Name of an environment variable holding the hex secret instead of `key`.
    pub key_env: Option<String>,
    /// The secret being rotated out: tokens signed with either key are accepted.
    pub previous_key: Option<String>,
    pub previous_key_env: Option<String>,
    pub param: Option<String>,
    /// sha256 | sha1 | md5.
    pub algorithm: Option<String>,
    /// Where the token is looked for, in order: query, cookie, header.
    pub sources: Option<Vec<String>>,
    /// The header read by the `header` source (default: the `param` name).
    pub header: Option<String>,
    pub clock_skew: Option<String>,
    /// Field values were URL-encoded before signing (the generators' `escape_early`).
    pub escape_early: Option<bool>,
    /// Send the token on to the origin (it is stripped by default).
    pub forward: Option<bool>,
    /// The generators' optional `salt`, signed but never carried in the token.
    pub salt: Option<String>,
    /// Every HLS content-steering pathway of this route is an edge that accepts this route's
    /// tokens (vedge edges sharing its key): variant, rendition and I-frame URIs of a steered
    /// multivariant playlist get the token too. Default false: they get none, since a pathway
    /// clone may carry them, query and all, to another CDN.
    pub steering_same_domain: Option<bool>,
    /// Values of `key_env` / `previous_key_env`, filled in by `RawConfig::read_env` (main.rs).
    #[serde(skip)]
    pub env_values: [Option<String>; 2],
}

impl RawConfig {
    /// Reads the environment variables the config names (`[route.token] key_env`) through
    /// `lookup`. main.rs passes `std::env::var`: it stays the only reader of the environment.
    pub fn read_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for t in self.routes.iter_mut().filter_map(|r| r.token.as_mut()) {
            t.env_values = [
                t.key_env.as_deref().and_then(&lookup),
                t.previous_key_env.as_deref().and_then(&lookup),
            ];
        }
    }
}

// ---- Origin groups and https origins (`[[route]]` keys origins, policy, health, eject,
// retry_on, sni, ca_file, insecure_skip_verify). One block so it merges apart from the rest.

pub const DEFAULT_ORIGIN_POLICY: OriginPolicy = OriginPolicy::Failover;
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_FALL: u32 = 3;
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// Consecutive failures (connect errors, timeouts, 5xx) that eject an origin; 0 never ejects.
pub const DEFAULT_EJECT_FAILURES: u32 = 5;
pub const DEFAULT_EJECT_DURATION: Duration = Duration::from_secs(10);
/// Origins in one group, at most: each has a pool, a health task and metric series.
pub const MAX_ORIGINS_PER_ROUTE: usize = 64;

/// `health = { path = "/health", interval = "2s", timeout = "1s", fall = 3, rise = 2 }`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
}

/// `eject = { failures = 5, duration = "10s" }`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEject {
    pub failures: Option<u32>,
    pub duration: Option<String>,
}

/// How a route's group picks the origin for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginPolicy {
    /// The first healthy origin in the listed order.
    Failover,
    /// Healthy origins in turn.
    RoundRobin,
    /// By cache key, rendezvous (highest random weight) hashing: a key stays on its origin, and
    /// removing one origin moves only that origin's keys.
    Hash,
}

impl OriginPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginPolicy::Failover => "failover",
            OriginPolicy::RoundRobin => "round-robin",
            OriginPolicy::Hash => "hash",
        }
    }

    fn parse(s: &str) -> Option<OriginPolicy> {
        [
            OriginPolicy::Failover,
            OriginPolicy::RoundRobin,
            OriginPolicy::Hash,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Active health checking: `fall` failed checks in a row mark an origin down, `rise` passing
/// ones bring it back. A check passes on a 2xx or 3xx within `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

/// Passive ejection: `failures` consecutive failed requests take an origin out for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eject {
    pub failures: u32,
    pub duration: Duration,
}

/// TLS towards a route's https origins. Verification is on unless `insecure_skip_verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginTls {
    /// Server name (SNI and the name the certificate must carry); default: the URL's host.
    pub sni: Option<String>,
    /// Trusted CAs instead of the platform's roots.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// A route's origins: one (`origin = ...`, a group of one) or several (`origins = [...]`).
#[derive(Debug, Clone)]
pub struct OriginGroup {
    /// At least one.
    pub origins: Vec<url::Url>,
    pub policy: OriginPolicy,
    pub health: Option<HealthCheck>,
    pub eject: Eject,
    /// Statuses that are retried once on the next origin, like a failed connection.
    pub retry_on: Vec<u16>,
    pub tls: OriginTls,
}

impl OriginGroup {
    /// The top-level `origin`: one origin, every default.
    pub fn single(origin: url::Url) -> OriginGroup {
        OriginGroup {
            origins: vec![origin],
            policy: DEFAULT_ORIGIN_POLICY,
            health: None,
            eject: Eject {
                failures: DEFAULT_EJECT_FAILURES,
                duration: DEFAULT_EJECT_DURATION,
            },
            retry_on: Vec::new(),
            tls: OriginTls::default(),
        }
    }

    /// A `[[route]]`'s origin or origins and their settings; `None` (errors pushed) when it has
    /// no usable origin.
    fn resolve(field: &str, r: &RawRoute, c: &mut Check) -> Option<OriginGroup> {
        let urls: Vec<(String, &str)> = match (&r.origins, r.origin.is_empty()) {
            (Some(_), false) => {
                c.error(format!("{field}: give `origin` or `origins`, not both"));
                return None;
            }
            (Some(list), true) if list.is_empty() => {
                c.error(format!("{field}.origins: lists no origin"));
                return None;
            }
            (Some(list), true) => list
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("{field}.origins[{i}]"), u.as_str()))
                .collect(),
            (None, false) => vec![(format!("{field}.origin"), r.origin.as_str())],
            (None, true) => {
                c.error(format!(
                    "{field}: needs `origin = \"http://...\"` or `origins = [...]`"
                ));
                return None;
            }
        };
        if urls.len() > MAX_ORIGINS_PER_ROUTE {
            c.error(format!(
                "{field}.origins: at most {MAX_ORIGINS_PER_ROUTE} origins"
            ));
        }
        let mut origins = Vec::new();
        for (name, u) in &urls {
            if let Some(url) = c.origin_url(name, u) {
                if origins.contains(&url) {
                    c.error(format!("{name}: `{u}` is listed twice"));
                }
                origins.push(url);
            }
        }
        let policy = match r.policy.as_deref() {
            None => DEFAULT_ORIGIN_POLICY,
            Some(p) => OriginPolicy::parse(p).unwrap_or_else(|| {
                c.error(format!(
                    "{field}.policy: `{p}` is not one of failover, round-robin, hash"
                ));
                DEFAULT_ORIGIN_POLICY
            }),
        };
        let health = r.health.as_ref().map(|h| {
            let path = h.path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                c.error(format!(
                    "{field}.health.path: `{path}` must be a path starting with '/'"
                ));
            }
            let interval = c.duration(
                &format!("{field}.health.interval"),
                &h.interval,
                DEFAULT_HEALTH_INTERVAL,
            );
            let timeout = c.duration(
                &format!("{field}.health.timeout"),
                &h.timeout,
                DEFAULT_HEALTH_TIMEOUT,
            );
            if interval.is_zero() || timeout.is_zero() {
                c.error(format!(
                    "{field}.health: interval and timeout must be above zero"
                ));
            }
            let (fall, rise) = (
                h.fall.unwrap_or(DEFAULT_HEALTH_FALL),
                h.rise.unwrap_or(DEFAULT_HEALTH_RISE),
            );
            if fall == 0 || rise == 0 {
                c.error(format!("{field}.health: fall and rise must be at least 1"));
            }
            HealthCheck {
                path,
                interval,
                timeout,
                fall,
                rise,
            }
        });
        let raw_eject = r.eject.clone().unwrap_or_default();
        let eject = Eject {
            failures: raw_eject.failures.unwrap_or(DEFAULT_EJECT_FAILURES),
            duration: c.duration(
                &format!("{field}.eject.duration"),
                &raw_eject.duration,
                DEFAULT_EJECT_DURATION,
            ),
        };
        let retry_on = r.retry_on.clone().unwrap_or_default();
        for s in &retry_on {
            if !(500..=599).contains(s) {
                c.error(format!(
                    "{field}.retry_on: {s} is not a 5xx status (e.g. [502, 503, 504])"
                ));
            }
        }
        let tls = OriginTls {
            sni: r.sni.clone(),
            ca_file: r.ca_file.clone(),
            insecure_skip_verify: r.insecure_skip_verify.unwrap_or(false),
        };
        let any_https = origins.iter().any(|u| u.scheme() == "https");
        if !any_https && (tls.sni.is_some() || tls.ca_file.is_some() || tls.insecure_skip_verify) {
            c.error(format!(
                "{field}: sni, ca_file and insecure_skip_verify apply to https:// origins only"
            ));
        }
        if let Some(sni) = &tls.sni {
            if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                c.error(format!(
                    "{field}.sni: `{sni}` is not a DNS name or IP address"
                ));
            }
        }
        if let Some(path) = &tls.ca_file {
            if tls.insecure_skip_verify {
                c.error(format!(
                    "{field}: ca_file and insecure_skip_verify contradict each other"
                ));
            }
            if let Err(e) = read_ca_file(path) {
                c.error(format!("{field}.ca_file: {e}"));
            }
        }
        if origins.is_empty() {
            return None;
        }
        Some(OriginGroup {
            origins,
            policy,
            health,
            eject,
            retry_on,
            tls,
        })
    }
}

/// HMAC digest of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    Sha256,
    Sha1,
    Md5,
}

/// Where a token may be carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Query,
    Cookie,
    Header(http::HeaderName),
}

/// An HMAC secret. Its `Debug` never shows the bytes (configs are logged and compared).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey(pub Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({} bytes)", self.0.len())
    }
}

/// A route's validated signed-URL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// The current key first, then the previous one (rotation).
    pub keys: Vec<TokenKey>,
    pub param: String,
    pub algorithm: TokenAlgorithm,
    pub sources: Vec<TokenSource>,
    pub clock_skew: Duration,
    pub escape_early: bool,
    pub forward: bool,
    pub salt: Option<String>,
    /// Steered playlists' variants get the token too (`RawToken::steering_same_domain`).
    pub steering_same_domain: bool,
}

impl TokenConfig {
    fn resolve(field: &str, raw: &RawToken, c: &mut Check) -> Option<TokenConfig> {
        let before = c.0.len();
        let mut keys = Vec::new();
        for (i, (name, lit, env_name)) in [
            ("key", &raw.key, &raw.key_env),
            ("previous_key", &raw.previous_key, &raw.previous_key_env),
        ]
        .into_iter()
        .enumerate()
        {
            let hex = match (lit, env_name) {
                (Some(_), Some(_)) => {
                    c.error(format!(
                        "{field}.{name}: give {name} or {name}_env, not both"
                    ));
                    continue;
                }
                (Some(k), None) => k.clone(),
                (None, Some(var)) => match &raw.env_values[i] {
                    Some(v) => v.trim().to_string(),
                    None => {
                        c.error(format!(
                            "{field}.{name}_env: environment variable `{var}` is not set"
                        ));
                        continue;
                    }
                },
                (None, None) if i == 0 => {
                    c.error(format!("{field}: `key` (hex) or `key_env` is required"));
                    continue;
                }
                (None, None) => continue,
            };
            match decode_hex_key(&hex) {
                Ok(k) => keys.push(TokenKey(k)),
                Err(e) => c.error(format!("{field}.{name}: {e}")),
            }
        }
        let param = raw
            .param
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_PARAM.to_string());
        if param.is_empty()
            || !param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            c.error(format!(
                "{field}.param: `{param}` must be a non-empty name of letters, digits, '-', '.', '_', '~'"
            ));
        }
        let algorithm = match raw
            .algorithm
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => DEFAULT_TOKEN_ALGORITHM,
            Some("sha256") => TokenAlgorithm::Sha256,
            Some("sha1") => TokenAlgorithm::Sha1,
            Some("md5") => TokenAlgorithm::Md5,
            Some(other) => {
                c.error(format!(
                    "{field}.algorithm: `{other}` is not one of sha256, sha1, md5"
                ));
                DEFAULT_TOKEN_ALGORITHM
            }
        };
        let header_name = raw.header.clone().unwrap_or_else(|| param.clone());
        let names: Vec<String> = raw.sources.clone().unwrap_or_else(|| {
            DEFAULT_TOKEN_SOURCES
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        if names.is_empty() {
            c.error(format!(
                "{field}.sources: empty; list at least one of query, cookie, header"
            ));
        }
        let mut sources = Vec::new();
        for s in &names {
            let source = match s.as_str() {
                "query" => TokenSource::Query,
                "cookie" => TokenSource::Cookie,
                "header" => match http::HeaderName::from_bytes(header_name.as_bytes()) {
                    Ok(h) => TokenSource::Header(h),
                    Err(_) => {
                        c.error(format!(
                            "{field}.header: `{header_name}` is not a header name"
                        ));
                        continue;
                    }
                },
                other => {
                    c.error(format!(
                        "{field}.sources: `{other}` is not one of query, cookie, header"
                    ));
                    continue;
                }
            };
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
        if raw.header.is_some() && !names.iter().any(|s| s == "header") {
            c.error(format!(
                "{field}.header: given, but `header` is not in {field}.sources"
            ));
        }
        let clock_skew = c.duration(
            &format!("{field}.clock_skew"),
            &raw.clock_skew,
            DEFAULT_TOKEN_CLOCK_SKEW,
        );
        if c.0.len() > before {
            return None;
        }
        Some(TokenConfig {
            keys,
            param,
            algorithm,
            sources,
            clock_skew,
            escape_early: raw.escape_early.unwrap_or(false),
            forward: raw.forward.unwrap_or(false),
            salt: raw.salt.clone(),
            steering_same_domain: raw.steering_same_domain.unwrap_or(false),
        })
    }
}

// ---- Abuse limits, connection timeouts and viewer TLS (`[limits]`, `[tls]`, `[admin]`, the
// timeout fields of `[server]`, `[[route]] allow_ips / deny_ips`). ----

/// Viewer connections open at once, all clients together (0: no cap).
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Viewer connections one client address may hold open (0: no cap). Generous: a carrier-grade
/// NAT puts hundreds of viewers behind one address.
pub const DEFAULT_PER_IP_CONNECTIONS: usize = 512;
/// A browser's h2 stream window (6 MiB in Chrome) takes a whole segment: its streams do not wait
/// for it. 64 MiB is many stalled segments of one client, and bounds what a client that opens
/// streams and never reads them pins in memory (bodies the RAM tier has already let go).
pub const DEFAULT_PER_IP_STALLED_BYTES: u64 = 64 << 20;
/// Sustained requests per second one client address may make (0: no rate limit).
pub const DEFAULT_PER_IP_RPS: u32 = 200;
/// Requests one client address may make at once above the sustained rate (the bucket size).
pub const DEFAULT_PER_IP_BURST: u32 = 400;
/// Client addresses that bypass the limits: loopback, where a local TLS terminator or health
/// checker would otherwise count as one huge client.
pub const DEFAULT_LIMITS_ALLOW: &[&str] = &["127.0.0.0/8", "::1/128"];
/// Memory for the per-address table (connections and token buckets); idle entries are evicted.
pub const DEFAULT_LIMITS_TABLE_SIZE: u64 = 16 << 20;
pub const MIN_LIMITS_TABLE_SIZE: u64 = 64 << 10;

pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_TLS_TICKETS: bool = true;
/// A keep-alive connection with no request in flight is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A viewer that takes no bytes for this long while a response waits is disconnected.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may open and reset before the server accepted them (CVE-2023-44487).
pub const DEFAULT_H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it drops the connection.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Frames that carry no request (PING, SETTINGS, PRIORITY, empty ones) a client may send per
/// second, with ten seconds of them as a burst, before its connection is closed (CVE-2019-9512,
/// -9515, -9518). Browsers and players send a handful per connection; 0 turns the guard off.
pub const DEFAULT_H2_CONTROL_FRAME_RATE: u32 = 100;
pub const DEFAULT_ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
    pub per_ip_connections: Option<usize>,
    pub per_ip_rps: Option<u32>,
    pub per_ip_burst: Option<u32>,
    /// CIDRs that bypass the limits.
    pub allow: Option<Vec<String>>,
    pub table_size: Option<String>,
    /// Response bytes one client's h2 streams may hold while their viewer does not take them.
    pub per_ip_stalled_bytes: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Per-host certificates, chosen by SNI; `server.tls_cert`/`tls_key` is the default.
    #[serde(default, rename = "cert")]
    pub certs: Vec<RawTlsCert>,
    /// Session resumption with tickets (rotating key).
    pub tickets: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsCert {
    /// Server names this certificate answers for; `*.example.com` matches one label.
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

/// Per-client and global limits on the viewer listener (`http::limits`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// 0: no cap.
    pub max_connections: usize,
    /// 0: no cap.
    pub per_ip_connections: usize,
    /// 0: no rate limit.
    pub per_ip_rps: u32,
    pub per_ip_burst: u32,
    pub allow: Vec<Cidr>,
    /// Bytes for the per-address table.
    pub table_size: u64,
    /// Response bytes a client's h2 streams may hold waiting for it (their flow-control window
    /// shut) before its new requests get 429 (0: no cap; `http::limits`).
    pub per_ip_stalled_bytes: u64,
}

/// Viewer TLS: a default certificate and per-host ones, reloadable (`http::tls`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Served when no host certificate matches the SNI name (or there is none).
    pub default: Option<CertFiles>,
    pub hosts: Vec<HostCert>,
    pub tickets: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct HostCert {
    /// Lower-case names; `*.example.com` wildcards.
    pub hosts: Vec<String>,
    pub files: CertFiles,
}

/// Connection timeouts a listener enforces (`http::server::Watchdog`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnTimeouts {
    pub header_read: Duration,
    /// No request in flight for this long: close.
    pub idle: Duration,
    /// A write blocked (the peer reads nothing) for this long: close.
    pub write: Duration,
    pub h2_keepalive_interval: Duration,
    pub h2_keepalive_timeout: Duration,
    /// `server.min_send_rate`: bytes/s a viewer must take while a response waits for it,
    /// averaged over each `write` window; 0 = off.
    pub min_send_rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H2Limits {
    pub max_concurrent_streams: u32,
    pub max_pending_reset_streams: usize,
    pub max_local_error_reset_streams: usize,
    pub control_frame_rate: u32,
}

/// A route's viewer-address rules: `deny` wins, then a non-empty `allow` must match.
#[derive(Debug, Clone, Default)]
pub struct IpAcl {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl IpAcl {
    /// Whether `ip` may use the route. An unknown address passes only a route without `allow`.
    pub fn permits(&self, ip: Option<std::net::IpAddr>) -> bool {
        if self.allow.is_empty() && self.deny.is_empty() {
            return true;
        }
        let Some(ip) = ip.map(canonical_ip) else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports for IPv4
/// clients) as the IPv4 address it is, so one client has one identity and v4 CIDRs match it.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("`{s}` is not a CIDR (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.1)");
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let net = canonical_ip(addr.parse::<std::net::IpAddr>().map_err(|_| bad())?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let mut prefix = match len {
            None => max,
            Some(l) => l.parse::<u8>().map_err(|_| bad())?,
        };
        // `::ffff:10.0.0.0/104` is the v4 block 10.0.0.0/8.
        if addr.contains(':') && net.is_ipv4() {
            prefix = prefix.checked_sub(96).ok_or_else(bad)?;
        }
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        match (self.net, canonical_ip(ip)) {
            (V4(n), V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (V6(n), V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl Check {
    fn cidrs(&mut self, field: &str, v: Option<&[String]>) -> Vec<Cidr> {
        v.unwrap_or_default()
            .iter()
            .filter_map(|s| match Cidr::parse(s) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.0.push(format!("{field}: {e}"));
                    None
                }
            })
            .collect()
    }
}

impl LimitsConfig {
    fn resolve(raw: &RawLimits, c: &mut Check) -> LimitsConfig {
        let default_allow: Vec<String> =
            DEFAULT_LIMITS_ALLOW.iter().map(|s| s.to_string()).collect();
        let allow = c.cidrs(
            "limits.allow",
            Some(raw.allow.as_deref().unwrap_or(&default_allow)),
        );
        let table_size = c.size(
            "limits.table_size",
            &raw.table_size,
            DEFAULT_LIMITS_TABLE_SIZE,
        );
        if table_size < MIN_LIMITS_TABLE_SIZE {
            c.error("limits.table_size: must be at least 64KiB");
        }
        let per_ip_rps = raw.per_ip_rps.unwrap_or(DEFAULT_PER_IP_RPS);
        let per_ip_burst = raw.per_ip_burst.unwrap_or(DEFAULT_PER_IP_BURST);
        if per_ip_rps > 0 && per_ip_burst == 0 {
            c.error("limits.per_ip_burst: must be at least 1 when limits.per_ip_rps is set");
        }
        LimitsConfig {
            max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            per_ip_connections: raw.per_ip_connections.unwrap_or(DEFAULT_PER_IP_CONNECTIONS),
            per_ip_rps,
            per_ip_burst,
            allow,
            table_size,
            per_ip_stalled_bytes: c.size(
                "limits.per_ip_stalled_bytes",
                &raw.per_ip_stalled_bytes,
                DEFAULT_PER_IP_STALLED_BYTES,
            ),
        }
    }
}

impl TlsConfig {
    /// `None` without any certificate. The default is `server.tls_cert`/`tls_key`, else the
    /// first `[[tls.cert]]`.
    fn resolve(server: &RawServer, raw: &RawTls, c: &mut Check) -> Option<TlsConfig> {
        let default = match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Some(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                c.error("server.tls_cert and server.tls_key: give both or neither");
                None
            }
        };
        let mut hosts = Vec::new();
        for (i, r) in raw.certs.iter().enumerate() {
            if r.hosts.is_empty() {
                c.error(format!("tls.cert[{i}].hosts: name at least one host"));
            }
            let names: Vec<String> = r
                .hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect();
            for h in &names {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if bare.is_empty()
                    || bare.contains('*')
                    || !bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                {
                    c.error(format!(
                        "tls.cert[{i}].hosts: `{h}` is not a host name (e.g. video.example.com, *.example.com)"
                    ));
                }
            }
            hosts.push(HostCert {
                hosts: names,
                files: CertFiles {
                    cert: r.cert.clone(),
                    key: r.key.clone(),
                },
            });
        }
        if default.is_none() && hosts.is_empty() {
            return None;
        }
        Some(TlsConfig {
            default,
            hosts,
            tickets: raw.tickets.unwrap_or(DEFAULT_TLS_TICKETS),
        })
    }
}

/// The certificates of a PEM CA file: at least one, or why not.
pub fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

// ---- end of origin groups

/// A hex secret (even length, at least one byte), as the EdgeAuth generators take it.
fn decode_hex_key(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if s.is_empty() || s.len() % 2 != 0 || s.len() > MAX_TOKEN_KEY_HEX {
        return Err(format!(
            "must be an even number of hex digits (2 to {MAX_TOKEN_KEY_HEX}); the value is not shown"
        ));
    }
    let digit = |b: u8| (b as char).to_digit(16);
    s.as_bytes()
        .chunks(2)
        .map(|p| match (digit(p[0]), digit(p[1])) {
            (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
            _ => Err("holds a character that is not a hex digit; the value is not shown".into()),
        })
        .collect()
}

impl ConnTimeouts {
    fn resolve_server(raw: &RawServer, c: &mut Check) -> ConnTimeouts {
        ConnTimeouts {
            header_read: c.duration(
                "server.header_read_timeout",
                &raw.header_read_timeout,
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            idle: c.duration(
                "server.idle_timeout",
                &raw.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            ),
            write: c.duration(
                "server.write_timeout",
                &raw.write_timeout,
                DEFAULT_WRITE_TIMEOUT,
            ),
            h2_keepalive_interval: c.duration(
                "server.h2_keepalive_interval",
                &raw.h2_keepalive_interval,
                DEFAULT_H2_KEEPALIVE_INTERVAL,
            ),
            h2_keepalive_timeout: c.duration(
                "server.h2_keepalive_timeout",
                &raw.h2_keepalive_timeout,
                DEFAULT_H2_KEEPALIVE_TIMEOUT,
            ),
            min_send_rate: c.size("server.min_send_rate", &raw.min_send_rate, 0),
        }
        .checked("server", c)
    }

    fn admin_defaults() -> ConnTimeouts {
        ConnTimeouts {
            header_read: DEFAULT_ADMIN_HEADER_READ_TIMEOUT,
            idle: DEFAULT_ADMIN_IDLE_TIMEOUT,
            // An ingest upload or a metrics scrape that stops reading is as stuck as a viewer.
            write: DEFAULT_WRITE_TIMEOUT,
            h2_keepalive_interval: DEFAULT_H2_KEEPALIVE_INTERVAL,
            h2_keepalive_timeout: DEFAULT_H2_KEEPALIVE_TIMEOUT,
            min_send_rate: 0,
        }
    }

    fn resolve_admin(raw: &RawAdmin, c: &mut Check) -> ConnTimeouts {
        let d = ConnTimeouts::admin_defaults();
        ConnTimeouts {
            header_read: c.duration(
                "admin.header_read_timeout",
                &raw.header_read_timeout,
                d.header_read,
            ),
            idle: c.duration("admin.idle_timeout", &raw.idle_timeout, d.idle),
            ..d
        }
        .checked("admin", c)
    }

    /// Zero would close every connection at once (or, for hyper, panic a timer): refuse it.
    fn checked(self, table: &str, c: &mut Check) -> ConnTimeouts {
        for (name, d) in [
            ("header_read_timeout", self.header_read),
            ("idle_timeout", self.idle),
            ("write_timeout", self.write),
            ("h2_keepalive_interval", self.h2_keepalive_interval),
            ("h2_keepalive_timeout", self.h2_keepalive_timeout),
        ] {
            if d.is_zero() {
                c.error(format!("{table}.{name}: must be longer than 0s"));
            }
        }
        self
    }
}

fn authority(u: &url::Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// `auto`, `uring` (or `io_uring`), `psync`.
pub fn parse_engine(s: &str) -> Result<EngineChoice, String> {
    match s {
        "auto" => Ok(EngineChoice::Auto),
        "uring" | "io_uring" => Ok(EngineChoice::Uring),
        "psync" => Ok(EngineChoice::Psync),
        other => Err(format!("`{other}` is not one of auto, uring, psync")),
    }
}

/// The config-file name of an engine, as `parse_engine` reads it.
pub fn engine_name(e: EngineChoice) -> &'static str {
    match e {
        EngineChoice::Auto => "auto",
        EngineChoice::Uring => "uring",
        EngineChoice::Psync => "psync",
    }
}

/// A size as the config file would write it: the largest binary unit that divides it, so it
/// parses back with `parse_size` to the same number (`512MiB`, `64KiB`, `4097`).
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A duration as the config file would write it (`10s`, `10m`, `1d`, `250ms`); round trips
/// through `parse_duration` for whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    for (secs, unit) in [(86400, "d"), (3600, "h"), (60, "m")] {
        if s != 0 && s % secs == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
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

/// Durations in the config and on the command line: the one syntax the edge and the harness
/// share (`vedge_manifest::duration`: `500ms`, `2s`, `5m`, `1h`, `1d`, bare seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    vedge_manifest::duration::parse(s)
}

// ---- The tier: node identity, `[shield]`, `[cluster]` ----

/// `[shield]`: the parent tier. Keys are spread over `nodes` by rendezvous hashing.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShield {
    pub nodes: Vec<String>,
    /// "origin" (default) | "error": what a fill does when no shield is healthy.
    pub on_all_down: Option<String>,
    pub health: Option<RawHealth>,
    pub eject: Option<RawEject>,
    /// Shield statuses retried once on the key's next node (default: none).
    pub retry_on: Option<Vec<u16>>,
    /// How long a fill waits for a shield's response head (default: `origin_client.
    /// first_byte_timeout` plus half of it, `ShieldConfig::first_byte_timeout`).
    pub first_byte_timeout: Option<String>,
}

/// `[cluster]`: the admin API of every node, for fan-out purges.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub nodes: Vec<RawClusterNode>,
    /// How long one node's purge may take before it is reported as failed (default 10s).
    pub timeout: Option<String>,
}

/// `{ admin = "http://shield-a:9090", token = "...", role = "shield" }` (or `token_env`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterNode {
    pub admin: String,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub role: Option<String>,
}

/// This node's place in a tier.
#[derive(Debug, Clone, Default)]
pub struct TierConfig {
    /// `node_id`; `None`: a random name per start.
    pub node_id: Option<String>,
    pub shield: Option<ShieldConfig>,
    pub cluster: ClusterConfig,
}

/// The shield tier as this edge sees it.
#[derive(Debug, Clone)]
pub struct ShieldConfig {
    pub nodes: Vec<url::Url>,
    pub on_all_down: AllDown,
    pub health: Option<HealthCheck>,
    pub eject: Eject,
    pub retry_on: Vec<u16>,
    /// How long a request waits for a shield's response head. Longer than this node's
    /// `origin_client.first_byte_timeout` by default (half of it again): a shield waits that
    /// long for its own origin before it answers with its stale-if-error copy (or its 504),
    /// and an edge that gave up at the same moment never got that copy, retried the next
    /// shield for the same wait, and counted a timeout against two healthy shields.
    pub first_byte_timeout: Duration,
    /// Prefixes of the routes that said `shield = false`: they fill from their origins.
    pub bypass: Vec<String>,
}

impl ShieldConfig {
    /// Whether `route`'s fills go through the shields.
    pub fn covers(&self, route: &Route) -> bool {
        !self.bypass.contains(&route.prefix)
    }
}

/// What a fill does when every shield is down or ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// Straight to the route's origin group.
    Origin,
    /// Fail (502): protects an origin that cannot take the edges' load.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    Shield,
    Edge,
}

impl ClusterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Shield => "shield",
            ClusterRole::Edge => "edge",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The node's admin listener base URL.
    pub admin: url::Url,
    pub token: String,
    pub role: ClusterRole,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: Vec<ClusterNode>,
    pub timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nodes: Vec::new(),
            timeout: DEFAULT_CLUSTER_TIMEOUT,
        }
    }
}

pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the per-key plan and the fan-out.
pub const MAX_TIER_NODES: usize = 256;

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl TierConfig {
    /// `origin_wait`: this node's resolved `origin_client.first_byte_timeout`, which the
    /// shield's default wait is made from (`shield_wait`).
    fn resolve(raw: &RawConfig, origin_wait: Duration, c: &mut Check) -> TierConfig {
        if let Some(id) = &raw.node_id {
            if !is_token(id) {
                c.error(format!(
                    "node_id: `{id}` must be a token of at most 64 letters, digits, '-', '.', '_'"
                ));
            }
        }
        let shield = raw
            .shield
            .as_ref()
            .map(|s| ShieldConfig::resolve(s, raw, origin_wait, c));
        if shield.is_none() && raw.routes.iter().any(|r| r.shield == Some(true)) {
            c.error("route.shield: `shield = true` needs a [shield] table with nodes");
        }
        let cluster = raw
            .cluster
            .as_ref()
            .map(|cl| ClusterConfig::resolve(cl, c))
            .unwrap_or_default();
        TierConfig {
            node_id: raw.node_id.clone(),
            shield,
            cluster,
        }
    }
}

impl ShieldConfig {
    fn resolve(
        s: &RawShield,
        raw: &RawConfig,
        origin_wait: Duration,
        c: &mut Check,
    ) -> ShieldConfig {
        if s.nodes.is_empty() {
            c.error("shield.nodes: lists no node (e.g. [\"http://shield-a:8080\"])");
        }
        if s.nodes.len() > MAX_TIER_NODES {
            c.error(format!("shield.nodes: at most {MAX_TIER_NODES} nodes"));
        }
        let mut nodes: Vec<url::Url> = Vec::new();
        for (i, n) in s.nodes.iter().enumerate() {
            if let Some(u) = c.origin_url(&format!("shield.nodes[{i}]"), n) {
                if u.path() != "/" || u.query().is_some() {
                    c.error(format!(
                        "shield.nodes[{i}]: `{n}` must have no path: the shield gets the viewer's path"
                    ));
                }
                if nodes.contains(&u) {
                    c.error(format!("shield.nodes[{i}]: `{n}` is listed twice"));
                }
                nodes.push(u);
            }
        }
        let on_all_down = match s.on_all_down.as_deref() {
            None | Some("origin") => AllDown::Origin,
            Some("error") => AllDown::Error,
            Some(o) => {
                c.error(format!(
                    "shield.on_all_down: `{o}` is not one of origin, error"
                ));
                AllDown::Origin
            }
        };
        let health = s.health.as_ref().map(|h| {
            let path = h.path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                c.error(format!(
                    "shield.health.path: `{path}` must be a path starting with '/'"
                ));
            }
            let check = HealthCheck {
                path,
                interval: c.duration(
                    "shield.health.interval",
                    &h.interval,
                    DEFAULT_HEALTH_INTERVAL,
                ),
                timeout: c.duration("shield.health.timeout", &h.timeout, DEFAULT_HEALTH_TIMEOUT),
                fall: h.fall.unwrap_or(DEFAULT_HEALTH_FALL),
                rise: h.rise.unwrap_or(DEFAULT_HEALTH_RISE),
            };
            if check.interval.is_zero()
                || check.timeout.is_zero()
                || check.fall == 0
                || check.rise == 0
            {
                c.error("shield.health: interval and timeout above zero, fall and rise at least 1");
            }
            check
        });
        let raw_eject = s.eject.clone().unwrap_or_default();
        let eject = Eject {
            failures: raw_eject.failures.unwrap_or(DEFAULT_SHIELD_EJECT_FAILURES),
            duration: c.duration(
                "shield.eject.duration",
                &raw_eject.duration,
                DEFAULT_EJECT_DURATION,
            ),
        };
        let retry_on = s.retry_on.clone().unwrap_or_default();
        if retry_on.iter().any(|s| !(500..=599).contains(s)) {
            c.error("shield.retry_on: only 5xx statuses (e.g. [502, 503, 504])");
        }
        let first_byte_timeout = c.duration(
            "shield.first_byte_timeout",
            &s.first_byte_timeout,
            shield_wait(origin_wait),
        );
        if first_byte_timeout.is_zero() {
            c.error("shield.first_byte_timeout: must be above zero (e.g. \"25s\")");
        }
        let bypass = raw
            .routes
            .iter()
            .filter(|r| r.shield == Some(false))
            .map(|r| r.prefix.clone())
            .collect();
        ShieldConfig {
            nodes,
            on_all_down,
            health,
            eject,
            retry_on,
            first_byte_timeout,
            bypass,
        }
    }
}

/// The default `[shield] first_byte_timeout`: this node's wait for an origin, plus half of it
/// (15 s: 22.5 s), so that a shield waiting as long for its own origin has answered (with its
/// stale-if-error copy, or its 504) before the edge gives up on it. The margin covers the
/// shield's own scheduling and its connect; a shield whose route has several origins may take
/// twice its timeout (it retries a hung origin on the next), which this does not cover.
pub fn shield_wait(origin_first_byte_timeout: Duration) -> Duration {
    origin_first_byte_timeout.saturating_add(origin_first_byte_timeout / 2)
}

/// A shield that fails this many requests in a row (connect, timeout, 5xx) is taken out.
pub const DEFAULT_SHIELD_EJECT_FAILURES: u32 = 3;

impl ClusterConfig {
    fn resolve(raw: &RawCluster, c: &mut Check) -> ClusterConfig {
        if raw.nodes.len() > MAX_TIER_NODES {
            c.error(format!("cluster.nodes: at most {MAX_TIER_NODES} nodes"));
        }
        let mut nodes = Vec::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let field = format!("cluster.nodes[{i}]");
            let Some(admin) = c.origin_url(&format!("{field}.admin"), &n.admin) else {
                continue;
            };
            let token = match (&n.token, &n.token_env) {
                (Some(t), None) => Some(t.clone()),
                (None, Some(var)) => match std::env::var(var) {
                    Ok(t) if !t.is_empty() => Some(t),
                    _ => {
                        c.error(format!("{field}.token_env: `{var}` is not set"));
                        None
                    }
                },
                _ => {
                    c.error(format!(
                        "{field}: give `token` or `token_env` (one of them)"
                    ));
                    None
                }
            };
            if token
                .as_deref()
                .is_some_and(|t| http::HeaderValue::from_str(&format!("Bearer {t}")).is_err())
            {
                c.error(format!("{field}.token: not a valid header value"));
            }
            let role = match n.role.as_deref() {
                Some("shield") => ClusterRole::Shield,
                None | Some("edge") => ClusterRole::Edge,
                Some(r) => {
                    c.error(format!("{field}.role: `{r}` is not one of shield, edge"));
                    ClusterRole::Edge
                }
            };
            if let Some(token) = token {
                nodes.push(ClusterNode { admin, token, role });
            }
        }
        ClusterConfig {
            nodes,
            timeout: c.duration("cluster.timeout", &raw.timeout, DEFAULT_CLUSTER_TIMEOUT),
        }
    }
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
    fn formatted_defaults_parse_back() {
        assert_eq!(format_size(DEFAULT_RAM_SIZE), "512MiB");
        assert_eq!(format_size(DEFAULT_MAX_HEADER_SIZE), "64KiB");
        assert_eq!(format_size(0), "0");
        for n in [0, 1, 4097, 64 << 10, 1 << 30, 3 << 40, 1_000_000] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_duration(DEFAULT_STORE_ADMIT_WINDOW), "10m");
        assert_eq!(format_duration(Duration::from_secs(86400)), "1d");
        for d in [0, 1, 250, 1000, 60_000, 90_000, 3_600_000, 86_400_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
        for e in [EngineChoice::Auto, EngineChoice::Uring, EngineChoice::Psync] {
            assert_eq!(parse_engine(engine_name(e)), Ok(e));
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let raw = RawConfig {
            listen: Some("nowhere".into()),
            origin: Some("ftp://x".into()),
            ram_size: Some("lots".into()),
            store: RawStore {
                path: Some("/tmp/vedge.store".into()),
                io_engine: Some("floppy".into()),
                admit_window: Some("a while".into()),
                ..RawStore::default()
            },
            cache: RawCache {
                collapse_timeout: Some("soon".into()),
                ..RawCache::default()
            },
            server: RawServer {
                threads: Some(5000),
                send_buffer: Some("2GiB".into()),
                max_uri_size: Some("100".into()),
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
            "store.io_engine",
            "store.admit_window",
            "cache.collapse_timeout",
            "server.threads",
            "server.send_buffer",
            "server.max_uri_size",
        ] {
            assert!(text.contains(field), "{field} missing from: {text}");
        }
    }

    /// The shield's default wait is made from `origin_client.first_byte_timeout` as resolved: a
    /// bad value is reported once, under its own name, and a zero one gives the shield a zero
    /// wait, refused as such.
    #[test]
    fn the_default_shield_wait_follows_the_resolved_origin_wait() {
        let with = |origin_wait: &str| {
            Config::try_from(RawConfig {
                origin: Some("http://127.0.0.1:9".into()),
                origin_client: RawOriginClient {
                    first_byte_timeout: Some(origin_wait.into()),
                    ..RawOriginClient::default()
                },
                shield: Some(RawShield {
                    nodes: vec!["http://s:1".into()],
                    ..RawShield::default()
                }),
                ..RawConfig::default()
            })
        };
        let cfg = with("2s").expect("valid");
        let shield = cfg.tier.shield.expect("shield");
        assert_eq!(shield.first_byte_timeout, Duration::from_secs(3));
        let ConfigError(errors) = with("soon").expect_err("a bad wait accepted");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("origin_client.first_byte_timeout: "),
            "{errors:?}"
        );
        let ConfigError(errors) = with("0s").expect_err("a zero shield wait accepted");
        assert_eq!(
            errors,
            ["shield.first_byte_timeout: must be above zero (e.g. \"25s\")"],
            "{errors:?}"
        );
    }

    #[test]
    fn min_body_rate_defaults_and_a_zero_window_is_refused() {
        let with = |rate: Option<&str>, window: Option<&str>| {
            Config::try_from(RawConfig {
                origin: Some("http://127.0.0.1:9".into()),
                origin_client: RawOriginClient {
                    min_body_rate: rate.map(Into::into),
                    min_body_rate_window: window.map(Into::into),
                    ..RawOriginClient::default()
                },
                ..RawConfig::default()
            })
        };
        let cfg = with(None, None).expect("defaults");
        assert_eq!(cfg.origin_client.min_body_rate, 16);
        assert_eq!(
            cfg.origin_client.min_body_rate_window,
            Duration::from_secs(20)
        );
        let cfg = with(Some("1KiB"), Some("5s")).expect("set");
        assert_eq!(cfg.origin_client.min_body_rate, 1024);
        assert!(with(Some("0"), Some("0s")).is_ok(), "off needs no window");
        let err = with(None, Some("0s")).expect_err("a zero window accepted");
        assert!(
            err.to_string()
                .contains("origin_client.min_body_rate_window"),
            "{err}"
        );
        let err = with(Some("fast"), None).expect_err("a bad rate accepted");
        assert!(
            err.to_string().contains("origin_client.min_body_rate"),
            "{err}"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let raw = RawConfig::from_file(&example_path()).expect("example parses");
        let (_, warnings) = Config::resolve(raw).expect("example validates");
        assert_eq!(
            warnings,
            Vec::<String>::new(),
            "the example uses no deprecated key"
        );
    }

    fn resolve_toml(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        Config::resolve(toml::from_str(text).expect("toml parses"))
    }

    /// `[route.cors]`: every field resolved, its header values built once, and each rule a
    /// browser or the Fetch standard would break refused by name.
    #[test]
    fn cors_policies_resolve_and_bad_ones_name_their_field() {
        let route = |cors: &str, extra: &str| {
            format!(
                "origin = \"http://127.0.0.1:9000\"\n[[route]]\nprefix = \"/v/\"\norigin = \"http://127.0.0.1:9001\"\n{extra}\n[route.cors]\n{cors}\n"
            )
        };
        let (cfg, _) = resolve_toml(&route(
            "allow_origins = [\"https://a.example\", \"http://[::1]:8080\", \"https://*.b.example:8443\"]\nallow_methods = [\"get\", \"HEAD\"]\nexpose_headers = []\nmax_age = \"10m\"",
            "",
        ))
        .expect("valid policy");
        let cors = cfg.routes[0].cors.as_ref().expect("policy on /v/");
        assert_eq!(
            cors.origins,
            CorsOrigins::List {
                exact: vec![
                    http::HeaderValue::from_static("https://a.example"),
                    http::HeaderValue::from_static("http://[::1]:8080"),
                ],
                subdomains: vec![("https://".into(), ".b.example:8443".into())],
            }
        );
        assert_eq!(cors.methods_value, "GET, HEAD");
        assert_eq!(cors.expose, None);
        assert_eq!(cors.max_age, "600");
        assert!(
            cfg.routes[1].cors.is_none(),
            "the default route has no policy"
        );
        let (cfg, _) = resolve_toml(&route("allow_origins = [\"*\"]", "")).expect("valid");
        let cors = cfg.routes[0].cors.as_ref().expect("policy");
        assert!(cors.expose.as_ref().is_some_and(|v| v
            .to_str()
            .is_ok_and(|s| s.contains("content-range") && s.contains("date"))));
        for (cors, extra, field) in [
            (
                "allow_origins = [\"*\"]\nallow_credentials = true",
                "",
                "allow_credentials",
            ),
            (
                "allow_origins = [\"*\", \"https://a.example\"]",
                "",
                "allow_origins",
            ),
            ("allow_origins = []", "", "allow_origins"),
            ("", "", "allow_origins"),
            ("allow_origins = [\"null\"]", "", "allow_origins"),
            (
                "allow_origins = [\"https://A.example\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"https://a.example/\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"https://a.example:443\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"https://a.example/path\"]",
                "",
                "allow_origins",
            ),
            ("allow_origins = [\"ftp://a.example\"]", "", "allow_origins"),
            (
                "allow_origins = [\"https://*.B.example\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"https://*.example/x\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"https://a.*.example\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"https://*example.com\"]",
                "",
                "allow_origins",
            ),
            (
                "allow_origins = [\"*\"]\nallow_methods = [\"*\"]",
                "",
                "allow_methods",
            ),
            (
                "allow_origins = [\"*\"]\nallow_headers = [\"a b\"]",
                "",
                "allow_headers",
            ),
            (
                "allow_origins = [\"*\"]\nexpose_headers = [\"*\"]",
                "",
                "expose_headers",
            ),
            ("allow_origins = [\"*\"]\nmax_age = \"soon\"", "", "max_age"),
            (
                "allow_origins = [\"*\"]",
                "forward_headers = [\"Origin\"]",
                "forward_headers",
            ),
        ] {
            let err = resolve_toml(&route(cors, extra))
                .expect_err(cors)
                .to_string();
            assert!(err.contains(field), "{cors} {extra}: {err}");
        }
    }

    #[test]
    fn an_unset_region_size_follows_the_store_size_and_is_not_the_operators_choice() {
        let store = |extra: &str| {
            let text = format!(
                "origin = \"http://127.0.0.1:9000\"\n[store]\npath = \"/x\"\nsize = \"16GiB\"\n{extra}"
            );
            resolve_toml(&text).expect("valid").0.store.expect("store")
        };
        let unset = store("");
        assert_eq!(
            (unset.region_size, unset.region_size_chosen),
            (128 << 20, false)
        );
        let set = store("region_size = \"256MiB\"");
        assert_eq!((set.region_size, set.region_size_chosen), (256 << 20, true));
    }

    #[test]
    fn deprecated_store_keys_give_the_same_config_with_a_warning_each() {
        let old = r#"
            origin = "http://127.0.0.1:9000"
            store = "/var/cache/vedge.store"
            store_size = "8GiB"
            store_region_size = "64MiB"
            store_reformat = true
            io_engine = "psync"
            store_admit_window = "0s"
            store_write_rate = "100MiB"
        "#;
        let new = r#"
            origin = "http://127.0.0.1:9000"
            [store]
            path = "/var/cache/vedge.store"
            size = "8GiB"
            region_size = "64MiB"
            reformat = true
            io_engine = "psync"
            admit_window = "0s"
            write_rate = "100MiB"
        "#;
        let (old_cfg, warnings) = resolve_toml(old).expect("old spelling valid");
        let (new_cfg, none) = resolve_toml(new).expect("new spelling valid");
        assert_eq!(format!("{old_cfg:?}"), format!("{new_cfg:?}"));
        assert_eq!(none, Vec::<String>::new());
        let store = new_cfg.store.expect("store configured");
        assert_eq!(
            (store.size, store.region_size, store.io_engine),
            (8 << 30, 64 << 20, EngineChoice::Psync)
        );
        assert_eq!(
            (store.reformat, store.admit_window, store.write_rate),
            (true, Duration::ZERO, Some(100 << 20))
        );
        let expected = [
            ("store = \"PATH\"", "path"),
            ("store_size", "size"),
            ("store_region_size", "region_size"),
            ("store_reformat", "reformat"),
            ("io_engine", "io_engine"),
            ("store_admit_window", "admit_window"),
            ("store_write_rate", "write_rate"),
        ];
        assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
        for ((old, new), w) in expected.iter().zip(&warnings) {
            assert_eq!(
                w,
                &format!(
                    "config: top-level `{old}` is deprecated; write `{new}` in the [store] table instead"
                )
            );
        }
    }

    #[test]
    fn a_store_key_under_both_spellings_is_an_error_but_a_flag_overrides_either() {
        let both = r#"
            origin = "http://127.0.0.1:9000"
            store_size = "8GiB"
            [store]
            path = "/var/cache/vedge.store"
            size = "4GiB"
        "#;
        let err = resolve_toml(both).expect_err("ambiguous size accepted");
        assert!(
            err.to_string()
                .contains("store_size: given as well as `size` in the [store] table"),
            "{err}"
        );
    }

    #[test]
    fn store_keys_without_a_path_are_an_error_under_either_spelling() {
        for text in [
            "origin = \"http://127.0.0.1:9000\"\nstore_size = \"8GiB\"",
            "origin = \"http://127.0.0.1:9000\"\n[store]\nio_engine = \"psync\"",
        ] {
            let err = resolve_toml(text).expect_err("store without a path accepted");
            assert!(
                err.to_string().contains("given without store.path"),
                "{err}"
            );
        }
        let err = RawConfig::from_file(Path::new("/nonexistent/vedge.toml")).expect_err("no file");
        assert!(err.to_string().contains("/nonexistent/vedge.toml"), "{err}");
        let err = toml::from_str::<RawConfig>("[store]\nsise = \"1GiB\"").expect_err("typo");
        assert!(err.to_string().contains("sise"), "{err}");
    }

    #[test]
    fn origin_group_keys_are_checked() {
        let (cfg, _) = resolve_toml(
            r#"
            [[route]]
            prefix = "/"
            origins = ["http://127.0.0.1:9000", "https://a.example"]
            policy = "hash"
            retry_on = [503]
            health = { path = "/hc", interval = "50ms" }
            "#,
        )
        .expect("valid group");
        let g = &cfg.routes[0].group;
        assert_eq!(g.origins.len(), 2);
        assert_eq!(cfg.routes[0].origin, g.origins[0]);
        assert_eq!(g.policy, OriginPolicy::Hash);
        let health = g.health.as_ref().expect("health on");
        assert_eq!(
            (
                health.path.as_str(),
                health.interval,
                health.fall,
                health.rise
            ),
            (
                "/hc",
                Duration::from_millis(50),
                DEFAULT_HEALTH_FALL,
                DEFAULT_HEALTH_RISE
            )
        );
        let err = resolve_toml(
            r#"
            [[route]]
            prefix = "/"
            origin = "http://127.0.0.1:9000"
            origins = ["http://127.0.0.1:9001"]
            [[route]]
            prefix = "/b/"
            origins = ["http://127.0.0.1:9001", "http://127.0.0.1:9001"]
            policy = "random"
            retry_on = [404]
            sni = "x.example"
            [[route]]
            prefix = "/c/"
            origins = ["https://c.example"]
            ca_file = "/nonexistent/ca.pem"
            health = { path = "health", fall = 0 }
            "#,
        )
        .expect_err("bad groups accepted")
        .to_string();
        for needle in [
            "give `origin` or `origins`, not both",
            "is listed twice",
            "`random` is not one of failover, round-robin, hash",
            "404 is not a 5xx status",
            "apply to https:// origins only",
            "/nonexistent/ca.pem",
            "must be a path starting with '/'",
            "fall and rise must be at least 1",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/configs/vedge.toml")
    }

    /// Every `key = ...  # ... [default: VALUE]` in the example file, with its table: the key
    /// may be commented out, VALUE is a TOML value.
    fn documented_defaults(text: &str) -> Vec<(String, String, toml::Value)> {
        let mut table = String::new();
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(header) = line.strip_prefix('[') {
                table = header.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            let Some((_, rest)) = line.split_once("[default: ") else {
                continue;
            };
            let value = rest.rsplit_once(']').expect("[default: ...] is closed").0;
            let entry = line.trim_start_matches('#').trim_start();
            let Some((key, _)) = entry.split_once(" = ") else {
                continue; // prose about the marker, not a key
            };
            let key = key.trim();
            if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let value: toml::Table =
                toml::from_str(&format!("v = {value}")).expect("a default is a TOML value");
            found.push((table.clone(), key.to_string(), value["v"].clone()));
        }
        found
    }

    #[test]
    fn vedge_serve_runs_a_loop_per_core_without_a_store_unless_the_config_says_otherwise() {
        let mut raw = RawConfig::default();
        raw.default_threads_by_shape();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(raw.server.threads, Some(cores));
        let mut shared = RawConfig::default();
        shared.server.threads = Some(0);
        shared.default_threads_by_shape();
        assert_eq!(
            shared.server.threads,
            Some(0),
            "an explicit 0 keeps the shared runtime"
        );
        let mut stored = RawConfig {
            origin: Some("http://127.0.0.1:9000".into()),
            ..RawConfig::default()
        };
        stored.store.path = Some("/var/cache/vedge.store".into());
        stored.default_threads_by_shape();
        assert_eq!(stored.server.threads, None);
        let (resolved, _) = Config::resolve(stored).expect("a valid config");
        assert_eq!(
            resolved.server.threads, 0,
            "an edge with a store shares one runtime"
        );
        let mut pinned = RawConfig::default();
        pinned.store.path = Some("/var/cache/vedge.store".into());
        pinned.server.threads = Some(2);
        pinned.default_threads_by_shape();
        assert_eq!(pinned.server.threads, Some(2), "an explicit count is kept");
    }

    /// The example file documents each default next to its key; setting any key to its
    /// documented default must resolve to the same config as leaving it out, so the file, the
    /// `DEFAULT_*` constants (which validation and the CLI help use) cannot drift apart.
    #[test]
    fn example_config_documents_the_defaults() {
        let text = std::fs::read_to_string(example_path()).expect("example readable");
        let base: toml::Table = toml::from_str(
            r#"
            origin = "http://127.0.0.1:9000"
            [store]
            path = "/nonexistent/vedge.store"
            [[route]]
            prefix = "/r/"
            origin = "http://127.0.0.1:9001"
            "#,
        )
        .expect("base parses");
        let resolve = |t: toml::Table| {
            let raw: RawConfig = toml::Value::Table(t).try_into().expect("raw config");
            let (cfg, _) = Config::resolve(raw).expect("valid");
            format!("{cfg:?}")
        };
        let unset = resolve(base.clone());
        let documented = documented_defaults(&text);
        for (table, key, value) in &documented {
            let mut t = base.clone();
            let mut at = &mut t;
            for part in table.split('.').filter(|p| !p.is_empty()) {
                let next = at
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                at = match next {
                    // [[route]]: the base's single route.
                    toml::Value::Array(a) => a[0].as_table_mut().expect("route table"),
                    v => v.as_table_mut().expect("a table"),
                };
            }
            at.insert(key.clone(), value.clone());
            // Not assert_eq: the two whole-config dumps would bury the key that differs.
            assert!(
                resolve(t) == unset,
                "{table}.{key}: the example documents default {value}, the code uses another"
            );
        }
        let names: Vec<String> = documented
            .iter()
            .map(|(t, k, _)| {
                if t.is_empty() {
                    k.clone()
                } else {
                    format!("{t}.{k}")
                }
            })
            .collect();
        for key in [
            "listen",
            "cdn_id",
            "cache.prefetch_max_size",
            "ram_size",
            "store.size",
            "store.reformat",
            "store.io_engine",
            "store.admit_window",
            "route.pass_host",
            "route.public",
            "route.policy",
            "route.insecure_skip_verify",
            "route.eject.failures",
            "route.eject.duration",
            "cache.max_object_size",
            "cache.collapse_timeout",
            "cache.hit_for_pass_ttl",
            "cache.negative_ttl",
            "cache.manifest_stale_factor",
            "cache.targeted_cache_control",
            "cache.request_directives",
            "cache.ttl.manifest.default",
            "cache.ttl.segment.default",
            "cache.ttl.segment.stale_if_error",
            "origin_client.connect_timeout",
            "origin_client.first_byte_timeout",
            "origin_client.between_bytes_timeout",
            "origin_client.min_body_rate",
            "origin_client.min_body_rate_window",
            "origin_client.pool_idle_timeout",
            "origin_client.pool_max_idle_per_host",
            "origin_client.http2",
            "origin_client.preconnect",
            "origin_client.preconnect_method",
            "origin_client.preconnect_path",
            "origin_client.keep_warm",
            "server.max_header_size",
            "server.max_uri_size",
            "server.header_read_timeout",
            "server.shutdown_grace",
            "server.zero_copy",
            "server.zero_copy_map_budget",
            "server.zero_copy_fd_budget",
            "server.send_buffer",
            "server.threads",
            "server.tls_handshake_timeout",
            "server.idle_timeout",
            "server.write_timeout",
            "server.h2_keepalive_interval",
            "server.h2_keepalive_timeout",
            "server.h2_max_concurrent_streams",
            "server.h2_max_pending_reset_streams",
            "server.h2_max_local_error_reset_streams",
            "server.h2_control_frame_rate",
            "tls.tickets",
            "limits.max_connections",
            "limits.per_ip_connections",
            "limits.per_ip_rps",
            "limits.per_ip_burst",
            "limits.table_size",
            "limits.per_ip_stalled_bytes",
            "admin.header_read_timeout",
            "admin.idle_timeout",
        ] {
            assert!(
                names.iter().any(|n| n == key),
                "{key}: default not documented in the example"
            );
        }
    }
}

#[cfg(test)]
mod slice_size_tests {
    use super::*;

    fn with_cache(cache: RawCache) -> Result<Config, ConfigError> {
        Config::try_from(RawConfig {
            origin: Some("http://127.0.0.1:9".into()),
            cache,
            ..RawConfig::default()
        })
    }

    fn with(slice: &str, max: Option<&str>) -> Result<Config, ConfigError> {
        with_cache(RawCache {
            slice_size: Some(slice.into()),
            max_object_size: max.map(Into::into),
            ..RawCache::default()
        })
    }

    #[test]
    fn slice_size_defaults_to_4mib_and_0_disables() {
        let cfg = Config::try_from(RawConfig {
            origin: Some("http://127.0.0.1:9".into()),
            ..RawConfig::default()
        })
        .expect("valid");
        assert_eq!(cfg.cache.slice_size, 4 << 20);
        assert_eq!(with("0", None).expect("valid").cache.slice_size, 0);
    }

    #[test]
    fn a_tiny_or_unstorable_slice_size_is_refused() {
        let err = with("1KiB", None).expect_err("tiny slice").to_string();
        assert!(err.contains("cache.slice_size"), "{err}");
        let err = with("8MiB", Some("4MiB"))
            .expect_err("slice over max")
            .to_string();
        assert!(err.contains("max_object_size"), "{err}");
    }

    fn with_prefetch(cap: Option<&str>, max: Option<&str>) -> Result<Config, ConfigError> {
        with_cache(RawCache {
            prefetch_max_size: cap.map(Into::into),
            max_object_size: max.map(Into::into),
            ..RawCache::default()
        })
    }

    #[test]
    fn prefetch_max_size_defaults_to_32mib_within_max_object_size() {
        let size = |cap, max| {
            with_prefetch(cap, max)
                .expect("valid")
                .cache
                .prefetch_max_size
        };
        assert_eq!(size(None, None), 32 << 20);
        assert_eq!(size(None, Some("16MiB")), 16 << 20);
        assert_eq!(size(Some("2MiB"), None), 2 << 20);
        for (cap, max) in [("0", None), ("1KiB", None), ("64MiB", Some("16MiB"))] {
            let err = with_prefetch(Some(cap), max)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("cache.prefetch_max_size"), "{cap}: {err}");
        }
    }
}
