//! Counters for the Prometheus endpoint, named with the same status strings as `X-Cache`,
//! and the per-route CMCD figures players report (`CmcdMetrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::auth::Refusal;
use crate::cache::status::CacheStatus;
use crate::cmcd::Cmcd;

/// Process-wide counters. Relaxed atomics: each is an independent monotonic count.
#[derive(Default)]
pub struct Metrics {
    pub requests: [AtomicU64; 5],
    pub origin_fetches: AtomicU64,
    pub origin_errors: AtomicU64,
    pub collapsed: AtomicU64,
    pub fills_aborted: AtomicU64,
    /// Origin bodies cut below `origin_client.min_body_rate`, by `SLOW_BODY_PATHS` index.
    pub slow_bodies: [AtomicU64; SLOW_BODY_PATHS.len()],
    pub passes: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub responses_aborted: AtomicU64,
    pub purged: AtomicU64,
    /// Passes of purges over every entry of the RAM tier (prefixes, tags, keys with variants,
    /// URL purges once the odd-spelling index overflowed: `proxy::spelling`).
    pub purge_scans: AtomicU64,
    /// Requests refused on token routes, by `Refusal::index`.
    pub token_refused: [AtomicU64; Refusal::ALL.len()],
    /// CORS preflights answered by the edge (`http::cors`), by `CORS_PREFLIGHT_RESULTS` index.
    pub cors_preflights: [AtomicU64; CORS_PREFLIGHT_RESULTS.len()],
    /// Connection and request limits, timeouts and TLS handshakes (`http::limits`, `http::server`).
    pub limits: std::sync::Arc<LimitMetrics>,
    pub cmcd: CmcdMetrics,
    /// Origin protection and memory bounds (issue 14's abuse limits).
    pub abuse: AbuseMetrics,
    /// Manifests rewritten for token viewers (`proxy::signed`).
    pub manifests: ManifestMetrics,
}

/// The per-viewer manifest work on token routes (`proxy::signed::rewrite`).
#[derive(Default)]
pub struct ManifestMetrics {
    /// Coded manifests decoded (`proxy::coding`).
    pub decodes: AtomicU64,
    /// Coded manifests whose decoded text was reused (`proxy::coding::Decoded`): not decoded.
    pub decodes_reused: AtomicU64,
    /// Decodes and rewrites run on the blocking pool (`proxy::signed::INLINE_MAX`).
    pub offloaded: AtomicU64,
    /// Manifests sent gzip-coded by the edge (`proxy::compress`).
    pub compressed: AtomicU64,
    /// Manifest bodies gzip-coded (`proxy::compress`): a shared one once per version.
    pub gzipped: AtomicU64,
}

/// The `result` label of `vedge_cors_preflights_total`: granted, or what was refused
/// (`http::cors::Refusal::index` is the position here).
pub const CORS_PREFLIGHT_RESULTS: [&str; 4] = ["granted", "origin", "method", "headers"];

/// The `path` label of `vedge_origin_body_too_slow_total`: a fill's body (also counted in
/// `vedge_fills_aborted_total`) or a pass's.
pub const SLOW_BODY_PATHS: [&str; 2] = ["fill", "pass"];
pub const SLOW_BODY_FILL: usize = 0;
pub const SLOW_BODY_PASS: usize = 1;

/// Dials that waited for `origin_client.max_connections_per_origin`, process-wide (the origin
/// connector has no edge to hand it): `vedge_origin_connection_waits_total`.
pub static ORIGIN_CONNECTION_WAITS: AtomicU64 = AtomicU64::new(0);

/// Origin protection (`origin_client.max_fills`, `max_connections_per_origin`) and Range
/// pass-through.
#[derive(Default)]
pub struct AbuseMetrics {
    /// Gauge: fills holding a route's fill slot (fetching from the origin) now.
    pub fills_active: AtomicU64,
    /// Fills that had to wait for a slot (over `origin_client.max_fills`).
    pub fills_queued: AtomicU64,
    /// Fills that found no slot before the collapse deadline: answered 503 origin-busy.
    pub fills_refused: AtomicU64,
    /// Fills that gave up their key because their leader's share of the route's slots was all
    /// taken (`proxy::fill_limit::Refused::Share`): the viewers that joined claim their own.
    pub fills_share_released: AtomicU64,
    /// Range misses passed through uncached with the viewer's range (`cache.range_passthrough_above`).
    pub range_passthrough: AtomicU64,
    /// Varied responses not stored: their object already had `proxy::vary_cap::MAX_VARIANTS`.
    pub vary_limit: AtomicU64,
    /// Large live manifests (over `proxy::READ_INLINE`) whose scan and prefetch planning were
    /// skipped: `llhls::SCANS_OFF_WORKER` such scans were already on the blocking pool.
    pub live_scans_skipped: AtomicU64,
    /// Prefetch fills abandoned because the answer was larger than `cache.prefetch_max_size`
    /// (`proxy::fill`): nothing of them stored.
    pub prefetch_abandoned: AtomicU64,
}

impl AbuseMetrics {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# TYPE vedge_fills_active gauge\nvedge_fills_active {}",
            self.fills_active.load(Relaxed)
        );
        for (name, c) in [
            ("vedge_fills_queued_total", &self.fills_queued),
            ("vedge_fills_origin_busy_total", &self.fills_refused),
            (
                "vedge_fills_share_released_total",
                &self.fills_share_released,
            ),
            ("vedge_range_passthrough_total", &self.range_passthrough),
            ("vedge_vary_limit_total", &self.vary_limit),
            ("vedge_live_scans_skipped_total", &self.live_scans_skipped),
            ("vedge_prefetch_abandoned_total", &self.prefetch_abandoned),
            (
                "vedge_origin_connection_waits_total",
                &ORIGIN_CONNECTION_WAITS,
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
    }
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
            ("vedge_purge_ram_scans_total", &self.purge_scans),
            ("vedge_manifest_decodes_total", &self.manifests.decodes),
            (
                "vedge_manifest_decodes_reused_total",
                &self.manifests.decodes_reused,
            ),
            ("vedge_manifest_offloaded_total", &self.manifests.offloaded),
            (
                "vedge_manifest_compressed_total",
                &self.manifests.compressed,
            ),
            ("vedge_manifest_gzip_codings_total", &self.manifests.gzipped),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
        labelled_counter(
            out,
            "vedge_origin_body_too_slow_total",
            "path",
            &SLOW_BODY_PATHS,
            &self.slow_bodies,
        );
        let _ = writeln!(out, "# TYPE vedge_token_refused_total counter");
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "vedge_token_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.token_refused[r.index()].load(Relaxed)
            );
        }
        labelled_counter(
            out,
            "vedge_cors_preflights_total",
            "result",
            &CORS_PREFLIGHT_RESULTS,
            &self.cors_preflights,
        );
        self.limits.render(out);
        self.cmcd.render(out);
        self.abuse.render(out);
    }
}

/// A counter with one label: the series `name{label="labels[i]"}` counts `counts[i]`.
fn labelled_counter(
    out: &mut String,
    name: &str,
    label: &str,
    labels: &[&str],
    counts: &[AtomicU64],
) {
    let _ = writeln!(out, "# TYPE {name} counter");
    for (value, c) in labels.iter().zip(counts) {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", c.load(Relaxed));
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
    /// Pauses of accepting: a viewer connection got a descriptor of the reserve kept for origin
    /// connections and the store (`http::server::descriptor_ceiling`).
    pub accept_paused_descriptors: AtomicU64,
    /// Requests answered 429 (over `limits.per_ip_rps` + burst).
    pub rate_limited: AtomicU64,
    /// Requests answered 429 because the client's h2 streams held over
    /// `limits.per_ip_stalled_bytes` of responses it did not take.
    pub stalled_refused: AtomicU64,
    /// Requests answered 403 by a route's `allow_ips` / `deny_ips`.
    pub ip_denied: AtomicU64,
    /// Requests answered 414: a target past `server.max_uri_size`.
    pub uri_too_long: AtomicU64,
    /// Requests answered 431 by the edge: header fields past `server.max_header_size` (a head
    /// past the buffer is hyper's 431, which the edge never sees).
    pub header_fields_too_large: AtomicU64,
    /// New addresses not tracked because the table was full of active ones (they go unlimited).
    pub table_full: AtomicU64,
    /// Connections closed by the idle keep-alive timeout.
    pub idle_closed: AtomicU64,
    /// Connections closed because the viewer read nothing for `server.write_timeout`.
    pub slow_readers_closed: AtomicU64,
    pub tls_handshake_timeouts: AtomicU64,
    pub tls_handshake_errors: AtomicU64,
    /// h2 connections closed for frames that carry no request past `server.h2_control_frame_rate`
    /// (`http::h2_flood`).
    pub h2_flood_closed: AtomicU64,
}

impl LimitMetrics {
    fn render(&self, out: &mut String) {
        for (name, g) in [
            ("vedge_connections_open", &self.connections_open),
            ("vedge_limits_tracked_ips", &self.tracked_ips),
        ] {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", g.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# TYPE vedge_accept_paused_total counter\nvedge_accept_paused_total{{reason=\"descriptors\"}} {}",
            self.accept_paused_descriptors.load(Relaxed)
        );
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
            ("h2_flood", &self.h2_flood_closed),
        ] {
            let _ = writeln!(
                out,
                "vedge_connections_closed_total{{reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE vedge_requests_refused_total counter");
        for (reason, c) in [
            ("uri_too_long", &self.uri_too_long),
            ("header_fields_too_large", &self.header_fields_too_large),
        ] {
            let _ = writeln!(
                out,
                "vedge_requests_refused_total{{reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (name, c) in [
            ("vedge_rate_limited_total", &self.rate_limited),
            ("vedge_ip_denied_total", &self.ip_denied),
            ("vedge_limits_stalled_refused_total", &self.stalled_refused),
            ("vedge_limits_table_full_total", &self.table_full),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
    }
}

/// Upper bounds (ms) of the buffer-length histogram's buckets: below 1 s a player is about to
/// stall; 2 s is `cmcd.low_buffer_ms`'s default; live low-latency players sit at 1-4 s, VOD
/// players at 10-30 s.
pub const BUFFER_LENGTH_BUCKETS_MS: [u64; 10] = [
    250, 500, 1000, 2000, 4000, 8000, 15000, 30000, 60000, 120000,
];

/// What players on one route reported.
#[derive(Default)]
struct RouteCmcd {
    /// Cumulative counts per `BUFFER_LENGTH_BUCKETS_MS` bound (Prometheus `le` buckets).
    buckets: [AtomicU64; BUFFER_LENGTH_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
    starvation: AtomicU64,
}

/// The most one request's `bl` adds to `vedge_cmcd_buffer_length_ms_sum`: a day.
const MAX_SUMMED_BUFFER_MS: u64 = 86_400_000;

/// `vedge_cmcd_buffer_length_ms` (histogram of `bl`) and `vedge_cmcd_buffer_starvation_total`
/// (requests carrying `bs`), labelled by route prefix. The label set is bounded: a route is
/// created once, from the config's prefixes, on its first CMCD request.
#[derive(Default)]
pub struct CmcdMetrics {
    routes: RwLock<Vec<(Box<str>, Arc<RouteCmcd>)>>,
}

impl CmcdMetrics {
    /// Counts one request's CMCD against the route with prefix `route`.
    pub fn observe(&self, route: &str, c: &Cmcd) {
        if c.bl.is_none() && !c.bs {
            return;
        }
        let r = self.route(route);
        if let Some(bl) = c.bl {
            for (bound, n) in BUFFER_LENGTH_BUCKETS_MS.iter().zip(&r.buckets) {
                if bl <= *bound {
                    n.fetch_add(1, Relaxed);
                }
            }
            r.count.fetch_add(1, Relaxed);
            // A player's `bl` is its own word: past a day it is nonsense, and summed as sent a
            // few `u64::MAX`s would wrap the route's sum for everyone reading the metric.
            r.sum_ms.fetch_add(bl.min(MAX_SUMMED_BUFFER_MS), Relaxed);
        }
        if c.bs {
            r.starvation.fetch_add(1, Relaxed);
        }
    }

    /// The buffer-starvation count of a route (0 if it never reported one).
    pub fn starvation(&self, route: &str) -> u64 {
        self.find(route).map_or(0, |r| r.starvation.load(Relaxed))
    }

    /// How many buffer lengths a route reported.
    pub fn buffer_reports(&self, route: &str) -> u64 {
        self.find(route).map_or(0, |r| r.count.load(Relaxed))
    }

    fn find(&self, route: &str) -> Option<Arc<RouteCmcd>> {
        self.routes
            .read()
            .iter()
            .find(|(p, _)| &**p == route)
            .map(|(_, r)| r.clone())
    }

    fn route(&self, route: &str) -> Arc<RouteCmcd> {
        if let Some(r) = self.find(route) {
            return r;
        }
        let mut w = self.routes.write();
        // Another request may have added it between the two locks.
        if let Some((_, r)) = w.iter().find(|(p, _)| &**p == route) {
            return r.clone();
        }
        let r = Arc::new(RouteCmcd::default());
        w.push((route.into(), r.clone()));
        r
    }

    fn render(&self, out: &mut String) {
        let routes = self.routes.read();
        let label = |p: &str| p.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "# TYPE vedge_cmcd_buffer_length_ms histogram");
        for (prefix, r) in routes.iter() {
            let route = label(prefix);
            for (bound, n) in BUFFER_LENGTH_BUCKETS_MS.iter().zip(&r.buckets) {
                let _ = writeln!(
                    out,
                    "vedge_cmcd_buffer_length_ms_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                    n.load(Relaxed)
                );
            }
            let count = r.count.load(Relaxed);
            let _ = writeln!(
                out,
                "vedge_cmcd_buffer_length_ms_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "vedge_cmcd_buffer_length_ms_sum{{route=\"{route}\"}} {}",
                r.sum_ms.load(Relaxed)
            );
            let _ = writeln!(
                out,
                "vedge_cmcd_buffer_length_ms_count{{route=\"{route}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# TYPE vedge_cmcd_buffer_starvation_total counter");
        for (prefix, r) in routes.iter() {
            let _ = writeln!(
                out,
                "vedge_cmcd_buffer_starvation_total{{route=\"{}\"}} {}",
                label(prefix),
                r.starvation.load(Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_players_absurd_buffer_length_never_wraps_the_routes_sum() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.cmcd.observe("/live/", &Cmcd::parse("bl=999999999999999"));
        }
        let mut text = String::new();
        m.render(&mut text);
        let want = format!(
            "vedge_cmcd_buffer_length_ms_sum{{route=\"/live/\"}} {}",
            3 * MAX_SUMMED_BUFFER_MS
        );
        assert!(text.contains(&want), "{text}");
    }

    #[test]
    fn buffer_lengths_fill_cumulative_buckets_per_route() {
        let m = Metrics::default();
        m.cmcd.observe("/live/", &Cmcd::parse("bl=800,bs"));
        m.cmcd.observe("/live/", &Cmcd::parse("bl=21300"));
        m.cmcd.observe("/", &Cmcd::parse("br=300"));
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "vedge_cmcd_buffer_length_ms_bucket{route=\"/live/\",le=\"500\"} 0",
            "vedge_cmcd_buffer_length_ms_bucket{route=\"/live/\",le=\"1000\"} 1",
            "vedge_cmcd_buffer_length_ms_bucket{route=\"/live/\",le=\"30000\"} 2",
            "vedge_cmcd_buffer_length_ms_bucket{route=\"/live/\",le=\"+Inf\"} 2",
            "vedge_cmcd_buffer_length_ms_sum{route=\"/live/\"} 22100",
            "vedge_cmcd_buffer_length_ms_count{route=\"/live/\"} 2",
            "vedge_cmcd_buffer_starvation_total{route=\"/live/\"} 1",
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
        // A request without `bl` or `bs` creates no series.
        assert!(!out.contains("route=\"/\""));
    }
}

/// One `# HELP` line per metric family the admin listener reports, by name (sorted, so
/// `help_of` can search it). `with_help` puts each before its family's `# TYPE` line.
const HELP: &[(&str, &str)] = &[
    ("vedge_accept_paused_total", "Pauses of accepting viewer connections, by reason (descriptors: the reserve for origin connections and the store was reached)."),
    ("vedge_bytes_sent_total", "Response body bytes sent to viewers."),
    ("vedge_cmcd_buffer_length_ms", "Buffer lengths (CMCD bl, milliseconds) players reported, by route."),
    ("vedge_cmcd_buffer_starvation_total", "Requests whose CMCD said the player's buffer ran dry (bs), by route."),
    ("vedge_collapsed_requests_total", "Requests that joined a fill already in flight instead of asking the origin."),
    ("vedge_connections_closed_total", "Viewer connections the edge closed, by reason."),
    ("vedge_connections_open", "Viewer connections open now."),
    ("vedge_connections_refused_total", "Viewer connections closed right after accept, by the limit they were over."),
    ("vedge_cors_preflights_total", "CORS preflights answered by the edge, by result (granted, or what was refused)."),
    ("vedge_fills_aborted_total", "Fills abandoned before the whole object arrived (origin error, cut or too slow)."),
    ("vedge_fills_active", "Fills holding a route's fill slot (fetching from the origin) now."),
    ("vedge_fills_in_flight", "Keys with a fill in the fill table now (the ones concurrent misses join)."),
    ("vedge_fills_origin_busy_total", "Fills that found no fill slot before the collapse deadline, answered 503."),
    ("vedge_fills_queued_total", "Fills that waited for a fill slot (over origin_client.max_fills)."),
    ("vedge_fills_share_released_total", "Fills that gave up their key because their viewer's share of the route's fill slots was taken."),
    ("vedge_ip_denied_total", "Requests answered 403 by a route's allow_ips or deny_ips."),
    ("vedge_limits_stalled_refused_total", "Requests answered 429 because the client's HTTP/2 streams held too many bytes it did not read."),
    ("vedge_limits_table_full_total", "New client addresses left untracked (unlimited) because the limits table was full."),
    ("vedge_limits_tracked_ips", "Client addresses in the limits table now."),
    ("vedge_live_scans_skipped_total", "Large live manifests whose scan and prefetch planning were skipped."),
    ("vedge_live_state_bytes", "Memory held by live playlist state (LL-HLS holds, prefetch plans), in bytes."),
    ("vedge_manifest_compressed_total", "Manifests sent gzip-coded by the edge (cache.compress_manifests)."),
    ("vedge_manifest_decodes_reused_total", "Coded manifests whose decoded text was reused for a token rewrite."),
    ("vedge_manifest_decodes_total", "Coded manifests decoded for a token rewrite."),
    ("vedge_manifest_gzip_codings_total", "Manifest bodies gzip-coded by the edge; a body every viewer shares is coded once per version."),
    ("vedge_manifest_offloaded_total", "Manifest decodes and rewrites run on the blocking pool."),
    ("vedge_origin_body_too_slow_total", "Origin bodies cut below origin_client.min_body_rate, by path (fill or pass)."),
    ("vedge_origin_connection_waits_total", "Origin dials that waited for origin_client.max_connections_per_origin."),
    ("vedge_origin_errors_total", "Origin requests that failed (connect, timeout, protocol or 5xx)."),
    ("vedge_origin_fetches_total", "Requests sent to origins and shields (fills, revalidations, passes)."),
    ("vedge_origin_target_errors_total", "Failed requests to one origin or shield node, by route and origin."),
    ("vedge_origin_target_latency_seconds", "Time to the response head from one origin or shield node, by route and origin."),
    ("vedge_origin_target_passes", "Passes holding one of an origin's pass slots now, by route and origin."),
    ("vedge_origin_target_passes_refused_total", "Passes refused origin-busy (over the client's share or the cap on passes), by route and origin."),
    ("vedge_origin_target_requests_total", "Requests sent to one origin or shield node, by route and origin."),
    ("vedge_origin_target_up", "Whether an origin or shield node is taken as up (1) or marked down (0), by route and origin."),
    ("vedge_passes_total", "Requests passed to the origin uncached (bypass, hit-for-pass, unsafe methods)."),
    ("vedge_prefetch_abandoned_total", "Prefetch fills abandoned because the answer was over cache.prefetch_max_size."),
    ("vedge_purge_ram_scans_total", "Purges that scanned every entry of the RAM tier (prefixes, tags, keys with variants)."),
    ("vedge_purged_objects_total", "Objects removed or marked stale by purges and invalidations."),
    ("vedge_ram_bytes", "Bytes held by the RAM tier now."),
    ("vedge_ram_capacity_bytes", "The RAM tier's capacity in bytes (ram_size)."),
    ("vedge_ram_objects", "Objects in the RAM tier now."),
    ("vedge_range_passthrough_total", "Range misses passed through uncached with the viewer's range (cache.range_passthrough_above)."),
    ("vedge_rate_limited_total", "Requests answered 429 (over limits.per_ip_rps and its burst)."),
    ("vedge_requests_refused_total", "Requests the edge refused for the size of their head, by reason (uri_too_long: 414 past server.max_uri_size; header_fields_too_large: 431 past server.max_header_size)."),
    ("vedge_requests_total", "Viewer requests by cache status (as X-Cache says)."),
    ("vedge_responses_aborted_total", "Responses cut before their last byte (viewer gone or origin failure mid-body)."),
    ("vedge_splice_bytes_total", "Body bytes sent to viewers with vmsplice and splice."),
    ("vedge_splice_pipes", "Pipes held for splicing now."),
    ("vedge_store_bytes", "Bytes of the SSD store's objects on disk (4 KiB extents, headers included)."),
    ("vedge_store_bytes_written_total", "Bytes written to the SSD store."),
    ("vedge_store_corrupt_reads_total", "Store reads that failed verification: dropped from the index and served as a miss."),
    ("vedge_store_evictions_total", "Objects dropped from the store by region reclaim."),
    ("vedge_store_hits_total", "Lookups the store answered."),
    ("vedge_store_index_bytes", "RAM used by the store's index, in bytes."),
    ("vedge_store_info", "The store's I/O engine and whether it uses direct I/O (value always 1)."),
    ("vedge_store_misses_total", "Lookups the store did not answer."),
    ("vedge_store_objects", "Objects in the store's index."),
    ("vedge_store_pinned_bytes", "Bytes of pushed (pinned) objects in the store."),
    ("vedge_store_pinned_lost_total", "Pushed objects reclaim had to drop after device read errors."),
    ("vedge_store_purge_marks", "Purge marks the store holds for objects on disk (at most 65,536)."),
    ("vedge_store_read_errors_total", "Store device reads that failed."),
    ("vedge_store_refused_writes_total", "Store writes refused (no space, full, rate limit, queue full, pinned share full)."),
    ("vedge_store_regions", "Regions of the store."),
    ("vedge_store_regions_evicted_total", "Store regions reclaimed."),
    ("vedge_store_regions_in_use", "Store regions holding objects."),
    ("vedge_store_reinsertions_total", "Objects reclaim rewrote because they were asked for since their last pass."),
    ("vedge_store_skipped_writes_total", "Objects not written to the store (first sighting, or too large): normal, not failures."),
    ("vedge_store_write_errors_total", "Store writes that failed on the device."),
    ("vedge_token_refused_total", "Requests refused on token routes, by reason."),
    ("vedge_vary_limit_total", "Varied responses not stored because their object had the most variants allowed."),
    ("vedge_zero_copy_bodies", "Bodies held in registered anonymous pages (zero-copy, from 512 KiB) now."),
    ("vedge_zero_copy_fallbacks_total", "Bodies kept on the heap because the zero-copy mapping budget was spent."),
    ("vedge_zero_copy_fd_budget", "Descriptors the splice pipes of zero-copy sending may hold."),
    ("vedge_zero_copy_map_budget", "Mappings zero-copy bodies may hold."),
    ("vedge_zero_copy_mappings", "Mappings zero-copy bodies hold now."),
];

/// The help text of a metric family, if it has one.
pub fn help_of(family: &str) -> Option<&'static str> {
    HELP.binary_search_by(|(name, _)| (*name).cmp(family))
        .ok()
        .map(|i| HELP[i].1)
}

/// `exposition` (Prometheus text format) with a `# HELP` line before each family's `# TYPE`
/// line (text exposition format: HELP and TYPE are each at most once per family, before its
/// samples).
pub fn with_help(exposition: &str) -> String {
    let mut out = String::with_capacity(exposition.len() + HELP.len() * 96);
    for line in exposition.lines() {
        if let Some(family) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split(' ').next())
        {
            if let Some(help) = help_of(family) {
                let _ = writeln!(out, "# HELP {family} {help}");
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn the_help_table_is_sorted_and_each_family_once() {
        assert!(HELP.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(HELP
            .iter()
            .all(|(_, h)| !h.contains('\n') && !h.contains('\\')));
    }
}
