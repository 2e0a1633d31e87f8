//! The live-burst harness end to end: `vedge origin` on 127.0.0.1:0, simulated viewers against it
//! (directly, and through the edge), origin counters read back from /__stats. The harness's one
//! integration-test binary; `vedge` is only a dev-dependency, for the runs through an edge.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;
use vedge_bench::load::{ConnMode, RunConfig, Scenario};
use vedge_bench::origin::{self, Latency, OriginOptions};

#[path = "low_latency/mod.rs"]
mod low_latency;
#[path = "processes/mod.rs"]
mod processes;
#[path = "zipf/mod.rs"]
mod zipf;

/// Starts the simulator; dropping the returned sender shuts it down.
async fn start_origin(opts: OriginOptions) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = origin::serve(opts, listener, async {
            let _ = rx.await;
        })
        .await;
    });
    (format!("http://{addr}"), tx)
}

fn config(base: &str, path: &str, scenario: Scenario, viewers: u64, secs: u64) -> RunConfig {
    RunConfig {
        target: Url::parse(&format!("{base}{path}")).expect("url"),
        targets: vec![Url::parse(&format!("{base}{path}")).expect("url")],
        origin_stats: Some(Url::parse(&format!("{base}/__stats")).expect("url")),
        viewers,
        duration: Duration::from_secs(secs),
        scenario,
        ramp: Duration::from_millis(500),
        burst_window: Duration::from_millis(200),
        mix: vec![1, 1],
        abr: false,
        timeout: Duration::from_secs(5),
        mode: ConnMode::PerViewer,
        sources: 4,
        seed: 3,
        ll: false,
        share: vedge_bench::load::Share::ALL,
    }
}

#[tokio::test]
async fn harness_counts_match_the_origin_counters_hls() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let cfg = config(&base, "/live/it-hls/master.m3u8", Scenario::Burst, 60, 3);
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert_eq!(r.viewers_played, 60);
    let seg = &r.classes["segment"];
    let init = &r.classes["init"];
    assert!(
        seg.ok >= 60 * 3,
        "each viewer fetched its first 3 segments: {}",
        seg.ok
    );
    let o = r.origin.as_ref().expect("origin stats");
    // No cache in between: the origin saw every media request the viewers made.
    assert_eq!(o.media_requests, seg.ok + init.ok);
    // The 1:1 mix spread viewers over both renditions.
    assert!(o.per_object.iter().any(|(p, _)| p.contains("/r0/")));
    assert!(o.per_object.iter().any(|(p, _)| p.contains("/r1/")));
}

#[tokio::test]
async fn dash_segment_storm_without_errors() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let cfg = config(
        &base,
        "/live/it-dash/manifest.mpd",
        Scenario::SegmentStorm,
        40,
        3,
    );
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert_eq!(r.viewers_played, 40);
    assert_eq!(r.classes["master"].ok, 40);
}

/// `$Time$` viewers on the simulator's SegmentTimeline MPD, both renditions: every request
/// names a segment that exists.
#[tokio::test]
async fn dash_timeline_viewers_play_without_errors() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let cfg = config(
        &base,
        "/live/it-time/manifest-timeline.mpd",
        Scenario::Steady,
        30,
        5,
    );
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert_eq!(r.viewers_played, 30);
    let o = r.origin.as_ref().expect("origin stats");
    assert!(
        o.per_object.iter().any(|(p, _)| p.contains("/r1/t_")),
        "{o:?}"
    );
}

/// Viewers share the pool: many more viewers than connections, no errors, and the time spent
/// waiting for a connection is reported on its own.
#[tokio::test]
async fn viewers_share_a_bounded_connection_pool() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let mut cfg = config(&base, "/live/it-pool/master.m3u8", Scenario::Burst, 200, 3);
    cfg.mode = ConnMode::Shared(4);
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert_eq!(r.viewers_played, 200);
    assert!(
        (1..=4).contains(&r.connections_opened),
        "{} connections",
        r.connections_opened
    );
    assert_eq!(r.connections, 4);
    assert_eq!(r.connection_mode, "shared-pool");
    assert!(r.pool_wait_ms.count > 0);
    assert!(r.timer_lag_ms.count > 0, "the timer-lag probe ran");
}

#[tokio::test]
async fn vod_viewers_seek_and_play() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let cfg = config(&base, "/vod/it-vod/master.m3u8", Scenario::Vod, 20, 2);
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert!(r.classes["segment"].ok >= 20);
}

#[tokio::test]
async fn injected_origin_errors_are_reported_not_hidden() {
    let opts = OriginOptions {
        error_rate: 1.0,
        manifest_latency: Latency::Fixed(Duration::ZERO),
        ..OriginOptions::default()
    };
    let (base, _stop) = start_origin(opts).await;
    let cfg = config(&base, "/live/it-err/master.m3u8", Scenario::Burst, 5, 1);
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.requests, 0);
    assert!(
        r.errors.get("http_503").copied().unwrap_or(0) >= 5,
        "{:?}",
        r.errors
    );
}

/// Bug: `--truncate-rate` closed the connection before hyper had written anything (the body
/// failed in the same poll as its half was buffered), so a viewer saw no head and no bytes rather
/// than the promised response cut off halfway.
#[tokio::test]
async fn truncated_responses_send_the_head_and_half_the_body_then_close() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let opts = OriginOptions {
        truncate_rate: 1.0,
        manifest_latency: Latency::Fixed(Duration::ZERO),
        ..OriginOptions::default()
    };
    let (base, _stop) = start_origin(opts).await;
    let addr = base.trim_start_matches("http://").to_string();
    for path in [
        "/live/it-trunc/r0/media.m3u8",
        "/live/it-trunc/r0/init.mp4",
        "/vod/it-trunc/r1/seg_3.m4s",
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        // Bounded: the simulator closes the connection (a reset ends the read too).
        for _ in 0..10_000 {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("read timeout")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        let Some(h) = head_end else {
            panic!("{path}: no response head, {} bytes received", raw.len());
        };
        let head = String::from_utf8_lossy(&raw[..h]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .expect("length");
        assert!(len > 1, "{path}: {len}");
        assert_eq!(
            raw.len() - h,
            len / 2,
            "{path}: half the body, then the close"
        );
    }
}

#[tokio::test]
async fn unreachable_target_is_an_error() {
    // Bind then drop: nothing listens on that port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = config(&base, "/live/x/master.m3u8", Scenario::Steady, 1, 1);
    cfg.origin_stats = None;
    let err = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect_err("nothing listens there");
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
}

/// Starts the edge in front of `origin`; dropping the returned sender shuts it down.
async fn start_edge(origin: &str) -> (String, oneshot::Sender<()>) {
    let cfg = vedge::config::Config::for_origin(origin).expect("config");
    let viewer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = viewer.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let listeners = vedge::Listeners {
            viewer,
            admin: None,
        };
        if let Err(e) = vedge::run(cfg, listeners, async {
            let _ = rx.await;
        })
        .await
        {
            eprintln!("edge stopped: {e:#}");
        }
    });
    (format!("http://{addr}"), tx)
}

/// The goal: hundreds of viewers at the live edge of a cold stream behind vedge, with a
/// 200 ms origin -> one origin request per segment, and no viewer error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_storm_through_vedge_is_collapsed_to_one_origin_request() {
    let opts = OriginOptions {
        segment_latency: Latency::Fixed(Duration::from_millis(200)),
        ..OriginOptions::default()
    };
    let (origin, _stop_origin) = start_origin(opts).await;
    let (edge, _stop_edge) = start_edge(&origin).await;
    let mut cfg = config(
        &edge,
        "/live/it-storm/master.m3u8",
        Scenario::SegmentStorm,
        300,
        5,
    );
    cfg.origin_stats = Some(Url::parse(&format!("{origin}/__stats")).expect("url"));
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert_eq!(r.viewers_played, 300);
    let o = r.origin.as_ref().expect("origin stats");
    assert!(o.media_objects >= 4, "{o:?}");
    assert_eq!(
        o.max_requests_per_object, 1,
        "per object: {:?}",
        o.per_object
    );
    assert_eq!(o.amplification, 1.0);
    // Every viewer got its segments, and every response carried the edge's X-Cache status
    // (vedge labels a waiter served from another request's collapsed fill as MISS).
    let seg = &r.classes["segment"];
    assert!(seg.ok >= 300 * 3, "{}", seg.ok);
    assert_eq!(seg.cache.get("-"), None, "{:?}", seg.cache);
    assert_eq!(seg.cache.values().sum::<u64>(), seg.ok, "{:?}", seg.cache);
}

/// `vedge bench collapse` through vedge: every burst of viewers asking for a cold object at once
/// costs the origin one request, and every viewer's TTFB includes the origin's latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapse_bench_sees_one_origin_request_per_cold_object() {
    use vedge_bench::collapse::{self, CollapseArgs};

    let opts = OriginOptions {
        segment_latency: Latency::Fixed(Duration::from_millis(100)),
        ..OriginOptions::default()
    };
    let (origin, _stop_origin) = start_origin(opts).await;
    let (edge, _stop_edge) = start_edge(&origin).await;
    let args = CollapseArgs {
        target: edge
            .trim_start_matches("http://")
            .parse()
            .expect("edge address"),
        path: "/vod/{run}/r0/seg_{n}.m4s".into(),
        n: 50,
        segments: 2,
        cadence: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
        origin_stats: Some(Url::parse(&format!("{origin}/__stats")).expect("url")),
        json: None,
    };
    let r = collapse::run(&args).await.expect("run");
    assert_eq!(r.seq.len(), 2);
    for b in std::iter::once(&r.single).chain(&r.seq) {
        assert_eq!((b.ok, b.errors), (50, 0), "{b:?}");
        assert_eq!(b.origin_requests, Some(1), "{b:?}");
        assert!(
            b.ttfb_ms.p50 >= 100.0,
            "the origin's 100 ms is in the TTFB: {b:?}"
        );
        assert!(b.total_ms.p50 >= b.ttfb_ms.p50, "{b:?}");
        // Every response's first segment was stamped on arrival, after the origin's delay and
        // no later than the client read it.
        assert_eq!(b.ttfb_wire_ms.count, 50, "{b:?}");
        assert!(b.ttfb_wire_ms.p50 >= 100.0, "{b:?}");
        assert!(b.ttfb_wire_ms.max <= b.ttfb_ms.max + 1.0, "{b:?}");
    }
    let text = collapse::summary(&r);
    assert!(text.contains("single: origin=1 ok=50/50"), "{text}");
}

/// A TCP relay to `upstream` that records every connection it accepts.
pub(crate) async fn counting_relay(
    upstream: String,
) -> (
    std::net::SocketAddr,
    Arc<parking_lot::Mutex<Vec<std::net::SocketAddr>>>,
) {
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let addr = relay.local_addr().expect("relay addr");
    let peers = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut down, peer)) = relay.accept().await else {
                return;
            };
            seen.lock().push(peer);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (addr, peers)
}

/// The default mode gives each viewer its own connection, as players have: the target
/// accepts exactly one connection per viewer (every request of a viewer reuses it), spread
/// over the loopback source addresses.
#[tokio::test]
async fn each_viewer_has_its_own_connection_by_default() {
    // An origin simulator behind a counting TCP relay: distinct accepted connections and the
    // source addresses they came from.
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let upstream = base.trim_start_matches("http://").to_string();
    let (relay_addr, peers) = counting_relay(upstream).await;
    let mut cfg = config(
        &format!("http://{relay_addr}"),
        "/live/it-own/master.m3u8",
        Scenario::Burst,
        12,
        3,
    );
    cfg.origin_stats = Some(Url::parse(&format!("{base}/__stats")).expect("url"));
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    assert_eq!(r.error_total, 0, "errors: {:?}", r.errors);
    assert_eq!(r.viewers_played, 12);
    assert_eq!(r.connection_mode, "per-viewer");
    // Each viewer made several requests (master, playlist, init, segments) on one connection.
    assert!(r.requests >= 12 * 4, "{} requests", r.requests);
    assert_eq!(r.connections_opened, 12, "one connection per viewer");
    let peers = peers.lock();
    // The reachability probe opens one more connection before the run.
    assert_eq!(peers.len(), 13, "{peers:?}");
    let sources: std::collections::HashSet<_> = peers.iter().map(|p| p.ip()).collect();
    assert!(
        sources.len() > 1,
        "spread over source addresses: {sources:?}"
    );
    let cost = r.harness_cost.as_ref().expect("harness cost");
    assert!(cost.rss_peak_mib > 0.0);
}

/// `--ll --origin-stats` through vedge at tiny scale: the report carries the upstream requests
/// per (playlist, msn, part) (max, mean, share of keys the origin saw exactly once) and how the
/// first request of each media object was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ll_run_through_vedge_reports_blocking_collapse_and_first_requests() {
    let opts = OriginOptions {
        ll: origin::LowLatency {
            hls: true,
            ..origin::LowLatency::default()
        },
        ..OriginOptions::default()
    };
    let (origin, _stop_origin) = start_origin(opts).await;
    let (edge, _stop_edge) = start_edge(&origin).await;
    let mut cfg = config(&edge, "/live/it-ll/master.m3u8", Scenario::Burst, 4, 4);
    cfg.ll = true;
    cfg.mix = vec![1];
    cfg.origin_stats = Some(Url::parse(&format!("{origin}/__stats")).expect("url"));
    let r = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("run");
    let ll = r.ll.as_ref().expect("ll report");
    let keys = ll
        .blocking_keys
        .expect("blocking keys from the origin's stats");
    assert!(keys > 0, "{ll:?}");
    let max = ll.max_origin_requests_per_blocking_key.expect("max");
    let mean = ll.mean_origin_requests_per_blocking_key.expect("mean");
    let one = ll
        .share_of_blocking_keys_with_one_request
        .expect("share of keys seen once");
    assert!(max >= 1 && mean >= 1.0 && mean <= max as f64, "{ll:?}");
    assert!(one > 0.0 && one <= 1.0, "{ll:?}");
    assert!(r.first_requests.objects > 0, "{:?}", r.first_requests);
    let text = vedge_bench::report::summary(&r);
    assert!(text.contains("exactly 1"), "{text}");
    assert!(text.contains("first request per media object"), "{text}");
    let json = serde_json::to_value(&r).expect("json");
    assert!(json["ll"]["share_of_blocking_keys_with_one_request"].is_number());
    assert!(json["first_requests"]["share_hit_or_collapsed"].is_number());
}
