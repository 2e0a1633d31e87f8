//! What a live-burst run reports: the JSON document, the human summary and the self-contained HTML
//! page (inline SVG plots).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::Recorder;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Pct {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Pct {
    pub fn of(h: &Histogram<u64>) -> Pct {
        if h.is_empty() {
            return Pct::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Pct {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub requests: u64,
    pub ok: u64,
    pub bytes: u64,
    pub ttfb_ms: Pct,
    pub total_ms: Pct,
    /// Wait for a pooled connection before the request was sent (harness-side queueing; not in
    /// TTFB).
    pub pool_wait_ms: Pct,
    /// X-Cache (or X-Cache-Status) first token -> count; "-" when the header was absent.
    pub cache: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    pub t: u64,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub stalls: u64,
    pub segment_ttfb_p50_ms: f64,
    pub segment_ttfb_p99_ms: f64,
    pub segment_total_p99_ms: f64,
    pub timer_lag_max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OriginReport {
    /// The /__stats prefix the counts were filtered by.
    pub prefix: String,
    pub media_requests: u64,
    pub media_objects: u64,
    /// Origin requests per unique media object (segments and init): 1.0 is perfect collapsing.
    pub amplification: f64,
    pub max_requests_per_object: u64,
    pub manifest_requests: u64,
    pub manifest_objects: u64,
    /// (path, origin requests) for every media object, in stream order.
    pub per_object: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub viewers: u64,
    pub duration_s: f64,
    pub elapsed_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub requests_per_s: f64,
    pub bytes_per_s: f64,
    pub classes: BTreeMap<String, ClassReport>,
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    pub stalls: u64,
    pub stalled_s: f64,
    pub viewer_hours: f64,
    pub stalls_per_viewer_hour: f64,
    pub startup_ms: Pct,
    pub viewers_started: u64,
    pub viewers_played: u64,
    pub segments_skipped: u64,
    pub origin: Option<OriginReport>,
    pub origin_error: Option<String>,
    /// The harness's own health: its connection cap, connections it opened, how long requests
    /// waited for one, and how late a 10 ms timer woke (the runtime's scheduling delay).
    pub connections: u64,
    pub connections_opened: u64,
    /// `per-viewer` (each viewer its own connection, as players) or `shared-pool`.
    pub connection_mode: String,
    /// The harness's CPU and memory, in total and per viewer (over every process of the run).
    pub harness_cost: Option<crate::cost::HarnessCost>,
    /// How many harness processes ran the viewers (`--processes`); 1 is the one-process run.
    pub processes: u64,
    /// Each worker process's share when `processes` > 1 (its counts add up to the report's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_process: Vec<ProcessReport>,
    pub pool_wait_ms: Pct,
    pub timer_lag_ms: Pct,
    pub timeline: Vec<SecondReport>,
    /// `--ll` runs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ll: Option<LlReport>,
    /// The first request of each media object (issue 17: prefetch on or off).
    pub first_requests: FirstRequestReport,
}

/// One worker process of a run spread over several.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub viewers: u64,
    pub viewers_played: u64,
    pub requests: u64,
    pub bytes: u64,
    pub error_total: u64,
    pub connections_opened: u64,
    pub timer_lag_ms: Pct,
    /// How late past the shared start instant the process was ready (its viewers joined late
    /// by as much).
    pub start_late_ms: f64,
    pub harness_cost: crate::cost::HarnessCost,
}

impl ProcessReport {
    pub fn of(p: &crate::merge::Part) -> ProcessReport {
        ProcessReport {
            viewers: p.viewers,
            viewers_played: p.played,
            requests: p.classes.values().map(|c| c.ok).sum(),
            bytes: p.classes.values().map(|c| c.bytes).sum(),
            error_total: p.errors.values().sum(),
            connections_opened: p.connections_opened,
            timer_lag_ms: Pct::of(&p.timer_lag.histogram()),
            start_late_ms: p.start_late_us as f64 / 1000.0,
            harness_cost: p.cost.clone(),
        }
    }
}

/// How the first request of each media object went: from the cache or a fill already in flight
/// (`Cache-Status` `hit` or `collapsed`, what a prefetching edge achieves), and its TTFB.
#[derive(Debug, Clone, Serialize)]
pub struct FirstRequestReport {
    pub objects: u64,
    pub hit_or_collapsed: u64,
    pub share_hit_or_collapsed: f64,
    /// TTFB of those first requests, in milliseconds.
    pub ttfb_ms: Pct,
}

/// The first-request figures from the recorder.
pub fn first_request_report(rec: &Recorder) -> FirstRequestReport {
    let mut h = crate::load::hist();
    let mut good = 0;
    for f in rec.first_requests.values() {
        let _ = h.record(f.ttfb_us);
        good += u64::from(f.hit_or_collapsed);
    }
    let n = rec.first_requests.len() as u64;
    FirstRequestReport {
        objects: n,
        hit_or_collapsed: good,
        share_hit_or_collapsed: if n == 0 { 0.0 } else { good as f64 / n as f64 },
        ttfb_ms: Pct::of(&h),
    }
}

/// What a low-latency run adds: parts' latency to the live edge, and how many origin requests
/// each blocking playlist reload cost (1 per (playlist, msn, part) when an edge collapses them).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlReport {
    /// How long after a part was produced the viewer had all of it.
    pub live_latency_ms: Pct,
    /// Distinct (playlist, msn, part) blocking reloads the origin saw (none without stats).
    pub blocking_keys: Option<u64>,
    pub max_origin_requests_per_blocking_key: Option<u64>,
    pub mean_origin_requests_per_blocking_key: Option<f64>,
    /// Share of those keys the origin saw exactly once (1.0 when every one collapsed).
    pub share_of_blocking_keys_with_one_request: Option<f64>,
}

/// The `--ll` part of a report from the recorder and the origin's blocking counters.
pub fn ll_report(rec: &Recorder, blocking: Option<BTreeMap<String, u64>>) -> LlReport {
    let keys = blocking.as_ref().map(|b| b.len() as u64);
    let max = blocking
        .as_ref()
        .map(|b| b.values().copied().max().unwrap_or(0));
    let mean = blocking
        .as_ref()
        .filter(|b| !b.is_empty())
        .map(|b| b.values().sum::<u64>() as f64 / b.len() as f64);
    let one = blocking
        .as_ref()
        .filter(|b| !b.is_empty())
        .map(|b| b.values().filter(|&&n| n == 1).count() as f64 / b.len() as f64);
    LlReport {
        share_of_blocking_keys_with_one_request: one,
        live_latency_ms: Pct::of(&rec.live_latency),
        blocking_keys: keys,
        max_origin_requests_per_blocking_key: max,
        mean_origin_requests_per_blocking_key: mean,
    }
}

/// A worker process ready this long after the shared start instant put its viewers' joins out
/// of step with the other processes'.
pub const LATE_START_MS: f64 = 100.0;

/// Timer lag p99 above this means the harness was too busy to measure the edge faithfully.
pub const OVERLOAD_LAG_MS: f64 = 50.0;

fn is_media(path: &str) -> bool {
    [
        ".m4s", ".mp4", ".ts", ".aac", ".m4a", ".m4v", ".cmfv", ".cmfa",
    ]
    .iter()
    .any(|e| path.ends_with(e))
}

/// Sort key: (directory, number in the file name, name) so segments plot in stream order.
fn stream_order(path: &str) -> (String, u64, String) {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let digits: String = file
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (
        dir.to_string(),
        digits.parse().unwrap_or(0),
        file.to_string(),
    )
}

pub fn origin_report(prefix: &str, counts: &BTreeMap<String, u64>) -> OriginReport {
    let mut media: Vec<(String, u64)> = counts
        .iter()
        .filter(|(p, _)| is_media(p))
        .map(|(p, c)| (p.clone(), *c))
        .collect();
    media.sort_by_key(|(p, _)| stream_order(p));
    let media_requests: u64 = media.iter().map(|(_, c)| c).sum();
    let manifests: Vec<u64> = counts
        .iter()
        .filter(|(p, _)| !is_media(p))
        .map(|(_, c)| *c)
        .collect();
    OriginReport {
        prefix: prefix.to_string(),
        media_requests,
        media_objects: media.len() as u64,
        amplification: if media.is_empty() {
            0.0
        } else {
            media_requests as f64 / media.len() as f64
        },
        max_requests_per_object: media.iter().map(|(_, c)| *c).max().unwrap_or(0),
        manifest_requests: manifests.iter().sum(),
        manifest_objects: manifests.len() as u64,
        per_object: media,
    }
}

/// Assembles the report from the recorder and what the run loop and the origin returned.
// The arguments are the run's independent results; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn build(
    rec: &Recorder,
    scenario: &str,
    target: &str,
    viewers: u64,
    duration: Duration,
    elapsed: Duration,
    skipped: u64,
    played: u64,
    connections: u64,
    origin: Result<Option<OriginReport>, String>,
) -> Report {
    let classes: BTreeMap<String, ClassReport> = rec
        .classes
        .iter()
        .map(|(c, s)| {
            (
                c.as_str().to_string(),
                ClassReport {
                    requests: s.requests,
                    ok: s.ok,
                    bytes: s.bytes,
                    ttfb_ms: Pct::of(&s.ttfb),
                    total_ms: Pct::of(&s.total),
                    pool_wait_ms: Pct::of(&s.wait),
                    cache: s.cache.clone(),
                },
            )
        })
        .collect();
    let requests: u64 = rec.classes.values().map(|c| c.ok).sum();
    let bytes: u64 = rec.classes.values().map(|c| c.bytes).sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let viewer_hours = rec.watched.as_secs_f64() / 3600.0;
    let (origin, origin_error) = match origin {
        Ok(o) => (o, None),
        Err(e) => (None, Some(e)),
    };
    Report {
        scenario: scenario.to_string(),
        target: target.to_string(),
        viewers,
        duration_s: duration.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        requests,
        bytes,
        requests_per_s: requests as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        classes,
        errors: rec.errors.clone(),
        error_total: rec.total_errors(),
        stalls: rec.stalls,
        stalled_s: rec.stalled.as_secs_f64(),
        viewer_hours,
        stalls_per_viewer_hour: if viewer_hours > 0.0 {
            rec.stalls as f64 / viewer_hours
        } else {
            0.0
        },
        startup_ms: Pct::of(&rec.startup),
        viewers_started: rec.viewers_started,
        viewers_played: played,
        segments_skipped: skipped,
        origin,
        origin_error,
        connections,
        connections_opened: rec.connections_opened,
        connection_mode: String::new(),
        harness_cost: None,
        processes: 1,
        by_process: Vec::new(),
        pool_wait_ms: Pct::of(&rec.pool_wait),
        timer_lag_ms: Pct::of(&rec.timer_lag),
        ll: None,
        first_requests: first_request_report(rec),
        timeline: rec
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SecondReport {
                t: i as u64,
                requests: s.requests,
                bytes: s.bytes,
                errors: s.errors,
                stalls: s.stalls,
                segment_ttfb_p50_ms: Pct::of(&s.seg_ttfb).p50,
                segment_ttfb_p99_ms: Pct::of(&s.seg_ttfb).p99,
                segment_total_p99_ms: Pct::of(&s.seg_total).p99,
                timer_lag_max_ms: s.lag_max_us as f64 / 1000.0,
            })
            .collect(),
    }
}

/// What the live progress line shows: running totals of one process, or of several added up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Progress {
    pub elapsed_s: u64,
    pub viewers_active: u64,
    pub viewers_started: u64,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub stalls: u64,
    /// Segment TTFB p99 so far (of several processes: the worst one's; the report merges).
    pub seg_ttfb_p99_ms: f64,
    /// The worst timer lag of the current second.
    pub timer_lag_ms: f64,
}

impl Progress {
    pub fn of(rec: &Recorder) -> Progress {
        let seg = &rec.classes[&super::viewer::Class::Segment];
        Progress {
            elapsed_s: rec.start.elapsed().as_secs(),
            viewers_active: rec.viewers_active,
            viewers_started: rec.viewers_started,
            requests: rec.classes.values().map(|c| c.ok).sum(),
            bytes: rec.classes.values().map(|c| c.bytes).sum(),
            errors: rec.total_errors(),
            stalls: rec.stalls,
            seg_ttfb_p99_ms: if seg.ttfb.is_empty() {
                0.0
            } else {
                seg.ttfb.value_at_quantile(0.99) as f64 / 1000.0
            },
            timer_lag_ms: rec.seconds.last().map_or(0, |s| s.lag_max_us) as f64 / 1000.0,
        }
    }

    /// Several processes' progress as one: counts added, latencies the worst.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Progress>) -> Progress {
        all.into_iter().fold(Progress::default(), |a, p| Progress {
            elapsed_s: a.elapsed_s.max(p.elapsed_s),
            viewers_active: a.viewers_active + p.viewers_active,
            viewers_started: a.viewers_started + p.viewers_started,
            requests: a.requests + p.requests,
            bytes: a.bytes + p.bytes,
            errors: a.errors + p.errors,
            stalls: a.stalls + p.stalls,
            seg_ttfb_p99_ms: a.seg_ttfb_p99_ms.max(p.seg_ttfb_p99_ms),
            timer_lag_ms: a.timer_lag_ms.max(p.timer_lag_ms),
        })
    }

    /// The one-line live progress; `prev` holds the last line's (requests, bytes) for rates.
    pub fn line(&self, prev: &mut (u64, u64)) -> String {
        let (req, bytes) = (self.requests, self.bytes);
        let (dr, db) = (req - prev.0.min(req), bytes - prev.1.min(bytes));
        *prev = (req, bytes);
        format!(
            "t={:>4}s viewers={}/{} req/s={} MB/s={:.1} seg TTFB p99={:.1}ms errors={} stalls={} timer lag={:.0}ms",
            self.elapsed_s,
            self.viewers_active,
            self.viewers_started,
            dr,
            db as f64 / 1e6,
            self.seg_ttfb_p99_ms,
            self.errors,
            self.stalls,
            self.timer_lag_ms
        )
    }
}

/// The one-line live progress.
pub fn progress_line(rec: &Recorder, prev: &mut (u64, u64)) -> String {
    Progress::of(rec).line(prev)
}

fn pct_row(p: &Pct) -> String {
    format!(
        "{:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        p.p50, p.p90, p.p99, p.p999, p.max
    )
}

/// The human summary printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "live-burst {} | {} viewers ({} started, {} played) | {:.1}s | {}",
        r.scenario, r.viewers, r.viewers_started, r.viewers_played, r.elapsed_s, r.target
    );
    let _ = writeln!(
        s,
        "requests: {} ok ({:.0}/s), {:.1} MB ({:.2} MB/s), errors: {}",
        r.requests,
        r.requests_per_s,
        r.bytes as f64 / 1e6,
        r.bytes_per_s / 1e6,
        r.error_total
    );
    let _ = writeln!(
        s,
        "{:<9} {:>8} {:<5} {:>9} {:>9} {:>9} {:>9} {:>9}  cache",
        "class", "ok", "ms", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, c) in &r.classes {
        if c.requests == 0 {
            continue;
        }
        let cache: Vec<String> = c.cache.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "{:<9} {:>8} {:<5} {}  {}",
            name,
            c.ok,
            "ttfb",
            pct_row(&c.ttfb_ms),
            cache.join(" ")
        );
        let _ = writeln!(
            s,
            "{:<9} {:>8} {:<5} {}",
            "",
            "",
            "full",
            pct_row(&c.total_ms)
        );
    }
    if !r.errors.is_empty() {
        let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "errors by kind: {}", e.join(" "));
    }
    let _ = writeln!(
        s,
        "stalls: {} ({:.1}s) over {:.2} viewer-hours = {:.1} per viewer-hour; startup p50/p99 {:.0}/{:.0} ms; segments skipped {}",
        r.stalls, r.stalled_s, r.viewer_hours, r.stalls_per_viewer_hour, r.startup_ms.p50, r.startup_ms.p99, r.segments_skipped
    );
    let _ = writeln!(
        s,
        "harness: {} process{}, {} connections opened, the connections the target accepted ({}, cap {}); pool wait ms p50/p99/max {:.1}/{:.1}/{:.1} (not in TTFB); timer lag ms p50/p99/max {:.1}/{:.1}/{:.1}",
        r.processes,
        if r.processes == 1 { "" } else { "es" },
        r.connections_opened,
        r.connection_mode,
        r.connections,
        r.pool_wait_ms.p50,
        r.pool_wait_ms.p99,
        r.pool_wait_ms.max,
        r.timer_lag_ms.p50,
        r.timer_lag_ms.p99,
        r.timer_lag_ms.max
    );
    if let Some(c) = &r.harness_cost {
        let _ = writeln!(
            s,
            "harness cost{}: {:.1} CPU s ({:.2} ms per viewer); RSS peak {:.0} MiB, +{:.0} MiB over the run ({:.1} KiB per viewer)",
            if r.processes > 1 {
                format!(" (the sum of {} processes)", r.processes)
            } else {
                String::new()
            },
            c.cpu_s,
            c.cpu_ms_per_viewer,
            c.rss_peak_mib,
            c.rss_growth_mib,
            c.rss_kib_per_viewer
        );
    }
    for (i, p) in r.by_process.iter().enumerate() {
        let _ = writeln!(
            s,
            "  process {i}: {} viewers ({} played), {} requests ok, {} errors, {} connections, timer lag p99 {:.1} ms, started {:.0} ms late, {:.1} CPU s, RSS peak {:.0} MiB",
            p.viewers,
            p.viewers_played,
            p.requests,
            p.error_total,
            p.connections_opened,
            p.timer_lag_ms.p99,
            p.start_late_ms,
            p.harness_cost.cpu_s,
            p.harness_cost.rss_peak_mib
        );
    }
    if let Some((i, p)) = r
        .by_process
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.start_late_ms.total_cmp(&b.1.start_late_ms))
        .filter(|(_, p)| p.start_late_ms > LATE_START_MS)
    {
        let _ = writeln!(
            s,
            "WARNING: harness process {i} started its viewers {:.0} ms after the shared start: its joins were late by as much",
            p.start_late_ms
        );
    }
    if r.timer_lag_ms.p99 > OVERLOAD_LAG_MS {
        let _ = writeln!(
            s,
            "WARNING: the harness itself was overloaded (timer lag p99 {:.0} ms > {OVERLOAD_LAG_MS} ms): its latencies include its own scheduling delay",
            r.timer_lag_ms.p99
        );
    }
    match (&r.origin, &r.origin_error) {
        (Some(o), _) => {
            let _ = writeln!(
                s,
                "origin ({}): {} media requests for {} objects = amplification {:.2} (max {} for one object); manifests {} requests for {} objects",
                o.prefix, o.media_requests, o.media_objects, o.amplification, o.max_requests_per_object, o.manifest_requests, o.manifest_objects
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "origin stats: ERROR {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "origin stats: not requested (--origin-stats)");
        }
    }
    let f = &r.first_requests;
    if f.objects > 0 {
        let _ = writeln!(
            s,
            "first request per media object: {} objects, {:.1}% hit or collapsed, TTFB p50 {:.1} ms p99 {:.1} ms",
            f.objects,
            f.share_hit_or_collapsed * 100.0,
            f.ttfb_ms.p50,
            f.ttfb_ms.p99
        );
    }
    if let Some(ll) = &r.ll {
        let _ = writeln!(
            s,
            "low latency: part latency to the live edge p50 {:.0} ms p99 {:.0} ms ({} parts)",
            ll.live_latency_ms.p50, ll.live_latency_ms.p99, ll.live_latency_ms.count
        );
        if let (Some(k), Some(max), Some(mean)) = (
            ll.blocking_keys,
            ll.max_origin_requests_per_blocking_key,
            ll.mean_origin_requests_per_blocking_key,
        ) {
            let one = ll.share_of_blocking_keys_with_one_request.unwrap_or(0.0);
            let _ = writeln!(
                s,
                "blocking reloads at the origin: {k} (playlist, msn, part) keys, {mean:.2} requests per key (max {max}), {:.1}% of keys exactly 1",
                one * 100.0
            );
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 760.0;
const H: f64 = 220.0;
const PAD: f64 = 48.0;

/// One plotted line: (name, colour, points).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart.
fn line_chart(title: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let xmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |v: f64| PAD + v / xmax * (W - PAD - 10.0);
    let y = |v: f64| H - 30.0 - v / ymax * (H - 50.0);
    let mut s = format!(
        "<h3>{}</h3><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><line x1=\"{PAD}\" y1=\"20\" x2=\"{PAD}\" y2=\"{}\" stroke=\"#888\"/>",
        H - 30.0, W - 10.0, H - 30.0, H - 30.0
    );
    for i in 0..=4 {
        let v = ymax / 1.1 * i as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{:.1}</text>",
            PAD - 4.0,
            y(v) + 3.0,
            v
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">time (s), max {xmax:.0}</text><text x=\"12\" y=\"14\" font-size=\"11\">{}</text>",
        W / 2.0,
        H - 8.0,
        esc(y_label)
    );
    for (i, (name, colour, pts)) in series.iter().enumerate() {
        let d: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            d.join(" "),
            W - 200.0,
            32 + 14 * i,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn bar_chart(title: &str, bars: &[(String, u64)]) -> String {
    let ymax = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    let n = bars.len().max(1) as f64;
    let bw = ((W - PAD - 10.0) / n).max(1.0);
    let mut s = format!(
        "<h3>{}</h3><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{:.0}</text>",
        H - 30.0, W - 10.0, H - 30.0, PAD - 4.0, 24, ymax / 1.1
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = *v as f64 / ymax * (H - 50.0);
        let colour = if *v <= 1 { "#2a7" } else { "#d52" };
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{}: {v}</title></rect>",
            PAD + i as f64 * bw,
            H - 30.0 - h,
            (bw - 1.0).max(0.5),
            esc(label)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">media objects in stream order (hover for path); green = 1 origin request</text></svg>",
        W / 2.0,
        H - 8.0
    );
    s
}

/// The self-contained HTML report.
pub fn html(r: &Report) -> String {
    let mut s = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>vedge live-burst</title><style>body{font-family:sans-serif;margin:2em;max-width:900px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}pre{background:#f6f6f6;padding:1em}</style></head><body>");
    let _ = write!(
        s,
        "<h1>vedge bench live-burst: {}</h1><pre>{}</pre>",
        esc(&r.scenario),
        esc(&summary(r))
    );
    s.push_str("<h3>Latency by class (ms)</h3><table><tr><th>class</th><th>ok</th><th>metric</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>cache status</th></tr>");
    for (name, c) in &r.classes {
        for (m, p) in [("TTFB", &c.ttfb_ms), ("full", &c.total_ms)] {
            let cache: Vec<String> = c.cache.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(
                s,
                "<tr><td>{name}</td><td>{}</td><td>{m}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
                c.ok, p.p50, p.p90, p.p99, p.p999, p.max, esc(&cache.join(" "))
            );
        }
    }
    s.push_str("</table>");
    let t = |f: &dyn Fn(&SecondReport) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|p| (p.t as f64, f(p))).collect()
    };
    s.push_str(&line_chart(
        "Segment latency over time",
        "ms",
        &[
            ("TTFB p50", "#27c", t(&|p| p.segment_ttfb_p50_ms)),
            ("TTFB p99", "#d52", t(&|p| p.segment_ttfb_p99_ms)),
            ("full download p99", "#872", t(&|p| p.segment_total_p99_ms)),
            ("harness timer lag max", "#999", t(&|p| p.timer_lag_max_ms)),
        ],
    ));
    s.push_str(&line_chart(
        "Throughput",
        "per second",
        &[
            ("MB/s", "#27c", t(&|p| p.bytes as f64 / 1e6)),
            ("k requests/s", "#872", t(&|p| p.requests as f64 / 1e3)),
        ],
    ));
    s.push_str(&line_chart(
        "Stalls and errors",
        "per second",
        &[
            ("stalls", "#d52", t(&|p| p.stalls as f64)),
            ("errors", "#000", t(&|p| p.errors as f64)),
        ],
    ));
    match &r.origin {
        Some(o) => s.push_str(&bar_chart(
            &format!(
                "Origin requests per media object (amplification {:.2})",
                o.amplification
            ),
            &o.per_object,
        )),
        None => s.push_str("<p>No origin statistics (run with --origin-stats).</p>"),
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_collapse_summary_gives_max_mean_and_share_of_keys_seen_once() {
        let rec = Recorder::new(tokio::time::Instant::now());
        let b: BTreeMap<String, u64> = [("/p.m3u8?_HLS_msn=1", 1), ("/p.m3u8?_HLS_msn=2", 1)]
            .into_iter()
            .chain([("/p.m3u8?_HLS_msn=3&_HLS_part=1", 4)])
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let ll = ll_report(&rec, Some(b));
        assert_eq!(ll.blocking_keys, Some(3));
        assert_eq!(ll.max_origin_requests_per_blocking_key, Some(4));
        assert_eq!(ll.mean_origin_requests_per_blocking_key, Some(2.0));
        assert_eq!(ll.share_of_blocking_keys_with_one_request, Some(2.0 / 3.0));
        let none = ll_report(&rec, None);
        assert_eq!(none.share_of_blocking_keys_with_one_request, None);
    }

    #[test]
    fn first_requests_count_hits_and_collapsed_fills() {
        use crate::load::{hit_or_collapsed, FirstRequest};
        assert!(hit_or_collapsed("vedge; hit; ttl=5; detail=ram", "HIT"));
        assert!(hit_or_collapsed(
            "vedge; fwd=miss; fwd-status=200; collapsed",
            "MISS"
        ));
        assert!(!hit_or_collapsed("vedge; fwd=miss; fwd-status=200", "MISS"));
        assert!(hit_or_collapsed("", "HIT"));
        let mut rec = Recorder::new(tokio::time::Instant::now());
        for (i, good) in [true, true, false, true].into_iter().enumerate() {
            rec.first_requests.insert(
                format!("/s{i}.m4s"),
                FirstRequest {
                    hit_or_collapsed: good,
                    ttfb_us: 1000 * (i as u64 + 1),
                    sent: tokio::time::Instant::now(),
                },
            );
        }
        let f = first_request_report(&rec);
        assert_eq!((f.objects, f.hit_or_collapsed), (4, 3));
        assert_eq!(f.share_hit_or_collapsed, 0.75);
        assert!(f.ttfb_ms.p99 >= f.ttfb_ms.p50);
    }

    #[test]
    fn origin_amplification_counts_media_objects_only() {
        let counts: BTreeMap<String, u64> = [
            ("/live/x/master.m3u8", 1),
            ("/live/x/r0/media.m3u8", 9),
            ("/live/x/r0/init.mp4", 1),
            ("/live/x/r0/seg_10.m4s", 1),
            ("/live/x/r0/seg_9.m4s", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let o = origin_report("/live/x/", &counts);
        assert_eq!(o.media_objects, 3);
        assert_eq!(o.media_requests, 5);
        assert!((o.amplification - 5.0 / 3.0).abs() < 1e-9);
        assert_eq!(o.max_requests_per_object, 3);
        assert_eq!(o.manifest_requests, 10);
        let order: Vec<&str> = o.per_object.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            order,
            [
                "/live/x/r0/init.mp4",
                "/live/x/r0/seg_9.m4s",
                "/live/x/r0/seg_10.m4s"
            ]
        );
    }
}
