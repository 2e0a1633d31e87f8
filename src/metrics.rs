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
    }
}
