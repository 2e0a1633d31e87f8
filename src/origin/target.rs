//! One origin of a group: its pooled client (plain or TLS), its health (passive ejection and
//! active checks), and its metrics (requests, errors by kind, time-to-head histogram).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{Eject, HealthCheck, OriginClientConfig, OriginTls};
use crate::http::body::Body;
use crate::origin::pass_limit::PassLimit;
use crate::origin::tls::{Connector, TlsSetup};
use crate::origin::OriginError;

/// Time-to-head buckets, in seconds (Prometheus `le`).
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why a request to one origin counts as failed, for passive ejection and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A 5xx answer; `true` for a gateway failure (502, 503, 504), which says the upstream
    /// (or what is behind it) cannot answer. Any other 5xx (a 501 to a method it does not
    /// implement, a 500 of one broken path) is about the request: counted as an error, but
    /// neither a failure nor a success for ejection, like `Loop` (a viewer sending such
    /// requests back to back would eject a healthy origin). So is a shield node's relay of
    /// its own upstream's gateway failure (`relays_upstream_status`): the node answered.
    ServerError(bool),
    /// 508 Loop Detected: the upstream refused the loop the request's own `CDN-Loop` names
    /// (a viewer's entries travel with a fill, RFC 8586). About the request, not the upstream:
    /// neither a failure (viewers could eject a healthy shield) nor a success (they could keep
    /// a failing one in).
    Loop,
    /// A pass whose viewer failed to deliver its request body (cut short, malformed, or still
    /// arriving when the time ran out; `upload`): a request, but neither an error nor a success,
    /// and no time to head (a viewer could otherwise eject a healthy origin with broken bodies).
    ViewerFault,
    /// The request provably never reached the origin's processing: refused by HTTP/2 (GOAWAY,
    /// REFUSED_STREAM) or lost when the origin closed an idle pooled connection as it arrived
    /// (`origin::not_processed`). A request, but neither an error nor a success: an origin
    /// that shuts down gracefully or closes idle connections is not failing.
    Unprocessed,
    Failed(OriginError),
}

/// Error kinds as they appear in metrics and `/admin/origins`.
const ERROR_KINDS: [&str; 6] = ["connect", "timeout", "tls", "protocol", "internal", "5xx"];

fn error_index(o: Outcome) -> Option<usize> {
    Some(match o {
        Outcome::Ok
        | Outcome::Loop
        | Outcome::ViewerFault
        | Outcome::Unprocessed
        | Outcome::Failed(OriginError::Busy) => return None,
        Outcome::Failed(OriginError::Connect) => 0,
        Outcome::Failed(OriginError::Timeout) => 1,
        Outcome::Failed(OriginError::Tls) => 2,
        Outcome::Failed(OriginError::Protocol) => 3,
        Outcome::Failed(OriginError::Internal) => 4,
        Outcome::ServerError(_) => 5,
    })
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    /// Cumulative per bucket is computed at render time; these count each bucket alone.
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// Health as the group sees it. Plain data behind a mutex, never held across an await.
#[derive(Debug, Default)]
struct Health {
    /// Consecutive failed requests (passive).
    failures: u32,
    ejected_until: Option<Instant>,
    /// Marked down by active checks (`fall` failed in a row), until `rise` pass in a row.
    down: bool,
    checks_passed: u32,
    checks_failed: u32,
    last_check: Option<&'static str>,
}

/// One origin of a route's group.
pub struct Target {
    /// The origin URL as configured (`https://a.example:8443/base`).
    pub url: url::Url,
    /// `host:port` (port when given): the default `Host` and the pool's key.
    pub authority: String,
    base_path: String,
    pub(crate) client: Client<Connector, Body>,
    health: Mutex<Health>,
    stats: Stats,
    /// `Host` for this origin's requests, when the group sends each origin its own.
    pub(crate) host: Option<HeaderValue>,
    /// When this origin last served a request (`preconnect` keeps its pool warm after that).
    pub(crate) traffic: crate::origin::preconnect::Traffic,
    /// The share of its connections passes may hold (`pass_limit`).
    pub(crate) passes: Arc<PassLimit>,
    /// A shield node (`origin::shield`): another vedge, which relays its own upstream's answers.
    pub(crate) tier: bool,
}

impl Target {
    pub fn new(
        url: &url::Url,
        cfg: &OriginClientConfig,
        tls: &OriginTls,
        max_connections: usize,
    ) -> anyhow::Result<Target> {
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("origin {url} has no host"))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let tls = match url.scheme() {
            "https" => Some(TlsSetup::new(host, tls)?),
            _ => None,
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        // h2 over TLS comes from ALPN; `http2` (prior knowledge) is for cleartext origins.
        let http2_only = cfg.http2 && tls.is_none();
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .http2_only(http2_only)
            .build(
                Connector::new(http, tls, cfg.connect_timeout)
                    .with_max_connections(max_connections),
            );
        Ok(Target {
            url: url.clone(),
            host: HeaderValue::from_str(&authority).ok(),
            authority,
            base_path: url.path().trim_end_matches('/').to_string(),
            client,
            health: Mutex::new(Health::default()),
            stats: Stats::default(),
            traffic: Default::default(),
            passes: Arc::new(PassLimit::new(max_connections)),
            tier: false,
        })
    }

    /// The URI of `path_and_query` on this origin.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, OriginError> {
        format!(
            "{}://{}{}{path_and_query}",
            self.url.scheme(),
            self.authority,
            self.base_path
        )
        .parse()
        .map_err(|_| OriginError::Internal)
    }

    /// The URL as shown in metrics and `/admin/origins`.
    pub fn name(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }

    /// Neither marked down by health checks nor ejected.
    pub fn is_healthy(&self) -> bool {
        let h = self.health.lock();
        !h.down && h.ejected_until.is_none_or(|t| t <= Instant::now())
    }

    /// Counts one request's outcome and its time to head; ejects the origin after
    /// `eject.failures` consecutive failures.
    /// A request that waited for one of this edge's own connection slots and never reached the
    /// origin (`OriginError::Busy`) counts nowhere: it says nothing about the origin.
    pub fn record(&self, outcome: Outcome, elapsed: Duration, eject: &Eject) {
        if outcome == Outcome::Failed(OriginError::Busy) {
            return;
        }
        self.traffic.touch();
        self.stats.requests.fetch_add(1, Relaxed);
        if let Some(i) = error_index(outcome) {
            self.stats.errors[i].fetch_add(1, Relaxed);
        }
        if !matches!(
            outcome,
            Outcome::Failed(_) | Outcome::ViewerFault | Outcome::Unprocessed
        ) {
            let secs = elapsed.as_secs_f64();
            if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
                self.stats.buckets[i].fetch_add(1, Relaxed);
            }
            self.stats.latency_count.fetch_add(1, Relaxed);
            self.stats
                .latency_sum_us
                .fetch_add(elapsed.as_micros() as u64, Relaxed);
        }
        if matches!(
            outcome,
            Outcome::Loop
                | Outcome::ServerError(false)
                | Outcome::ViewerFault
                | Outcome::Unprocessed
        ) {
            return;
        }
        let mut h = self.health.lock();
        if outcome == Outcome::Ok {
            h.failures = 0;
            return;
        }
        h.failures = h.failures.saturating_add(1);
        if eject.failures > 0 && h.failures >= eject.failures {
            h.failures = 0;
            h.ejected_until = Some(Instant::now() + eject.duration);
            drop(h);
            tracing::warn!(
                origin = self.name(),
                ejected_for = ?eject.duration,
                "origin ejected after consecutive failures"
            );
        }
    }

    /// One active check's result: `fall` failures in a row mark the origin down, `rise` passes
    /// in a row bring it back (and end a passive ejection: it answers again).
    pub fn record_check(&self, passed: bool, check: &HealthCheck) {
        let mut h = self.health.lock();
        h.last_check = Some(if passed { "pass" } else { "fail" });
        if passed {
            h.checks_failed = 0;
            h.checks_passed = h.checks_passed.saturating_add(1);
            if h.checks_passed >= check.rise && (h.down || h.ejected_until.is_some()) {
                h.down = false;
                h.ejected_until = None;
                h.failures = 0;
                drop(h);
                tracing::info!(origin = self.name(), "origin up (health checks pass)");
            }
        } else {
            h.checks_passed = 0;
            h.checks_failed = h.checks_failed.saturating_add(1);
            if h.checks_failed >= check.fall && !h.down {
                h.down = true;
                drop(h);
                tracing::warn!(origin = self.name(), "origin down (health checks fail)");
            }
        }
    }

    /// The state for `/admin/origins`.
    pub fn snapshot(&self) -> serde_json::Value {
        let (down, ejected_ms, failures, last_check) = {
            let h = self.health.lock();
            let now = Instant::now();
            let ejected = h
                .ejected_until
                .filter(|&t| t > now)
                .map(|t| (t - now).as_millis() as u64);
            (h.down, ejected, h.failures, h.last_check)
        };
        let state = match (down, ejected_ms) {
            (true, _) => "down",
            (false, Some(_)) => "ejected",
            (false, None) => "up",
        };
        let errors: serde_json::Map<String, serde_json::Value> = ERROR_KINDS
            .iter()
            .zip(&self.stats.errors)
            .map(|(k, c)| (k.to_string(), c.load(Relaxed).into()))
            .collect();
        serde_json::json!({
            "url": self.name(),
            "state": state,
            "healthy": state == "up",
            "ejected_for_ms": ejected_ms,
            "consecutive_failures": failures,
            "last_check": last_check,
            "requests": self.stats.requests.load(Relaxed),
            "errors": errors,
            "passes": self.passes.active(),
            "passes_refused": self.passes.refused(),
        })
    }

    /// This origin's series in Prometheus text format, labelled with `labels`
    /// (`route="...",origin="..."`). The caller writes the `# TYPE` lines once per family.
    pub fn render(&self, family: Family, labels: &str, out: &mut String) {
        let s = &self.stats;
        match family {
            Family::Requests => {
                let _ = writeln!(
                    out,
                    "vedge_origin_target_requests_total{{{labels}}} {}",
                    s.requests.load(Relaxed)
                );
            }
            Family::Errors => {
                for (kind, c) in ERROR_KINDS.iter().zip(&s.errors) {
                    let _ = writeln!(
                        out,
                        "vedge_origin_target_errors_total{{{labels},kind=\"{kind}\"}} {}",
                        c.load(Relaxed)
                    );
                }
            }
            Family::Latency => {
                let mut cumulative = 0;
                for (le, c) in LATENCY_BUCKETS.iter().zip(&s.buckets) {
                    cumulative += c.load(Relaxed);
                    let _ = writeln!(
                        out,
                        "vedge_origin_target_latency_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let count = s.latency_count.load(Relaxed);
                let sum = s.latency_sum_us.load(Relaxed) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "vedge_origin_target_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                     vedge_origin_target_latency_seconds_sum{{{labels}}} {sum}\n\
                     vedge_origin_target_latency_seconds_count{{{labels}}} {count}"
                );
            }
            Family::Up => {
                let _ = writeln!(
                    out,
                    "vedge_origin_target_up{{{labels}}} {}",
                    u8::from(self.is_healthy())
                );
            }
            Family::Passes => {
                let _ = writeln!(
                    out,
                    "vedge_origin_target_passes{{{labels}}} {}",
                    self.passes.active()
                );
            }
            Family::PassesRefused => {
                let _ = writeln!(
                    out,
                    "vedge_origin_target_passes_refused_total{{{labels}}} {}",
                    self.passes.refused()
                );
            }
        }
    }
}

/// The metric families an origin reports, rendered family by family so each `# TYPE` line
/// comes once, before all of its series.
#[derive(Debug, Clone, Copy)]
pub enum Family {
    Requests,
    Errors,
    Latency,
    Up,
    /// Passes holding one of the origin's pass slots now (`pass_limit`).
    Passes,
    /// Passes refused origin-busy: over their client's share or the cap on passes.
    PassesRefused,
}

impl Family {
    pub const ALL: [(Family, &'static str, &'static str); 6] = [
        (
            Family::Requests,
            "vedge_origin_target_requests_total",
            "counter",
        ),
        (
            Family::Errors,
            "vedge_origin_target_errors_total",
            "counter",
        ),
        (
            Family::Latency,
            "vedge_origin_target_latency_seconds",
            "histogram",
        ),
        (Family::Up, "vedge_origin_target_up", "gauge"),
        (Family::Passes, "vedge_origin_target_passes", "gauge"),
        (
            Family::PassesRefused,
            "vedge_origin_target_passes_refused_total",
            "counter",
        ),
    ];
}
