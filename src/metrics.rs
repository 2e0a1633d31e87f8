//! Counters for the Prometheus endpoint, named with the same status strings as `X-Cache`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::Refusal;
use crate::cache::status::CacheStatus;

/// Process-wide counters. Relaxed atomics: each is an independent monotonic count.
#[derive(Default)]
pub struct Metrics {
    pub requests: [AtomicU64; 5],
    pub origin_fetches: AtomicU64,
    pub origin_errors: AtomicU64,
    pub collapsed: AtomicU64,
    pub fills_aborted: AtomicU64,
    pub passes: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub responses_aborted: AtomicU64,
    pub purged: AtomicU64,
    /// Requests refused on token routes, by `Refusal::index`.
    pub token_refused: [AtomicU64; Refusal::ALL.len()],
    /// Connection and request limits, timeouts and TLS handshakes (`http::limits`, `http::server`).
    pub limits: std::sync::Arc<LimitMetrics>,
}

impl Metrics {
    pub fn request(&self, status: CacheStatus) {
        self.requests[status.index()].fetch_add(1, Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        self.token_refused[why.index()].fetch_add(1, Relaxed);
    }

    pub fn get(&self, status: CacheStatus) -> u64 {
        self.requests[status.index()].load(Relaxed)
    }

    /// Renders the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# TYPE vedge_requests_total counter");
        for s in CacheStatus::ALL {
            let _ = writeln!(
                out,
                "vedge_requests_total{{cache=\"{}\"}} {}",
                s.as_str(),
                self.get(s)
            );
        }
        for (name, c) in [
            ("vedge_origin_fetches_total", &self.origin_fetches),
            ("vedge_origin_errors_total", &self.origin_errors),
            ("vedge_collapsed_requests_total", &self.collapsed),
            ("vedge_fills_aborted_total", &self.fills_aborted),
            ("vedge_passes_total", &self.passes),
            ("vedge_bytes_sent_total", &self.bytes_sent),
            ("vedge_responses_aborted_total", &self.responses_aborted),
            ("vedge_purged_objects_total", &self.purged),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
        let _ = writeln!(out, "# TYPE vedge_token_refused_total counter");
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "vedge_token_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.token_refused[r.index()].load(Relaxed)
            );
        }
        self.limits.render(out);
    }
}

/// What the viewer listener refused or cut, and why; open connections and tracked addresses.
#[derive(Default)]
pub struct LimitMetrics {
    /// Gauge: viewer connections open now.
    pub connections_open: AtomicU64,
    /// Gauge: client addresses in the limits table.
    pub tracked_ips: AtomicU64,
    /// Connections closed right after accept: over `limits.max_connections`.
    pub refused_global: AtomicU64,
    /// Connections closed right after accept: over `limits.per_ip_connections`.
    pub refused_per_ip: AtomicU64,
    /// Requests answered 429 (over `limits.per_ip_rps` + burst).
    pub rate_limited: AtomicU64,
    /// Requests answered 403 by a route's `allow_ips` / `deny_ips`.
    pub ip_denied: AtomicU64,
    /// New addresses not tracked because the table was full of active ones (they go unlimited).
    pub table_full: AtomicU64,
    /// Connections closed by the idle keep-alive timeout.
    pub idle_closed: AtomicU64,
    /// Connections closed because the viewer read nothing for `server.write_timeout`.
    pub slow_readers_closed: AtomicU64,
    pub tls_handshake_timeouts: AtomicU64,
    pub tls_handshake_errors: AtomicU64,
}

impl LimitMetrics {
    fn render(&self, out: &mut String) {
        for (name, g) in [
            ("vedge_connections_open", &self.connections_open),
            ("vedge_limits_tracked_ips", &self.tracked_ips),
        ] {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", g.load(Relaxed));
        }
        let _ = writeln!(out, "# TYPE vedge_connections_refused_total counter");
        for (reason, c) in [
            ("max_connections", &self.refused_global),
            ("per_ip_connections", &self.refused_per_ip),
        ] {
            let _ = writeln!(
                out,
                "vedge_connections_refused_total{{reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE vedge_connections_closed_total counter");
        for (reason, c) in [
            ("idle", &self.idle_closed),
            ("slow_reader", &self.slow_readers_closed),
            ("tls_handshake_timeout", &self.tls_handshake_timeouts),
            ("tls_handshake_error", &self.tls_handshake_errors),
        ] {
            let _ = writeln!(
                out,
                "vedge_connections_closed_total{{reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (name, c) in [
            ("vedge_rate_limited_total", &self.rate_limited),
            ("vedge_ip_denied_total", &self.ip_denied),
            ("vedge_limits_table_full_total", &self.table_full),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
    }
}
