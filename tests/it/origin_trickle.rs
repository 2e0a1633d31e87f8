//! An origin that sends its head and then trickles its body (a byte now and then, never an idle
//! gap as long as the between-bytes timeout) is cut at `origin_client.min_body_rate`: the fill
//! and every viewer collapsed on it end, nothing is stored, and the next request asks the
//! origin again; a pass is cut the same way. A slow origin above the rate is served and stored.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use vedge::config::RawConfig;

use crate::support::{edge_config, until, Gate, Origin, Script, TestEdge};

const BODY: usize = 40;

/// `BODY` bytes, one every 200 ms (8 s in all), under a 3 s between-bytes timeout.
fn trickling() -> Script {
    Script::ok(vec![b't'; BODY])
        .header("cache-control", "max-age=60")
        .trickle(BODY, Duration::from_millis(200 * BODY as u64))
}

/// The test edge with a small minimum rate: 64 bytes/s over each 1 s window.
fn rated(origin: &Origin) -> RawConfig {
    let mut raw = edge_config(origin);
    raw.origin_client.min_body_rate = Some("64".into());
    raw.origin_client.min_body_rate_window = Some("1s".into());
    raw
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

fn slow_bodies(edge: &TestEdge, path: usize) -> u64 {
    edge.edge.metrics.slow_bodies[path].load(Relaxed)
}

/// The leader and a viewer collapsed on its fill both have their responses cut; nothing is
/// stored, so the next request is a new origin fetch (cut again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_fill_is_cut_for_every_viewer_and_not_stored() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script("/v/trickle.ts", trickling().gate(&gate));
    let edge = std::sync::Arc::new(TestEdge::start(rated(&origin)).await);
    let mut viewers = Vec::new();
    for _ in 0..2 {
        let e = edge.clone();
        viewers.push(tokio::spawn(async move {
            e.raw(&get("/v/trickle.ts", "")).await
        }));
    }
    until("the second viewer joined the fill", || {
        edge.collapsed() == 1
    })
    .await;
    gate.open();
    for (i, v) in viewers.into_iter().enumerate() {
        let r = v.await.expect("viewer task");
        // Cut before hyper flushed the head: no response at all, just as incomplete.
        assert!(r.bytes.is_empty() || r.status() == 200, "{}", r.text());
        assert!(r.closed, "viewer {i} was left hanging");
        assert!(
            r.split().1.len() < BODY,
            "viewer {i}: a complete-looking body ({} bytes)",
            r.split().1.len()
        );
    }
    edge.settle().await;
    assert_eq!(origin.count("/v/trickle.ts"), 1);
    assert_eq!(edge.edge.ram.len(), 0, "a cut body was stored");
    assert_eq!(slow_bodies(&edge, vedge::metrics::SLOW_BODY_FILL), 1);

    let r = edge.raw(&get("/v/trickle.ts", "")).await;
    assert!(r.split().1.len() < BODY, "the retry got a complete body");
    edge.settle().await;
    assert_eq!(
        origin.count("/v/trickle.ts"),
        2,
        "the next request asked the origin"
    );
    assert_eq!(slow_bodies(&edge, vedge::metrics::SLOW_BODY_FILL), 2);
    let mut text = String::new();
    edge.edge.metrics.render(&mut text);
    assert!(
        text.contains("vedge_origin_body_too_slow_total{path=\"fill\"} 2"),
        "{text}"
    );
}

/// 4 KB every 100 ms for 1.5 s (~40 KB/s, far above 64 B/s): served whole and stored.
#[tokio::test]
async fn a_slow_origin_above_the_rate_is_served_and_stored() {
    let origin = Origin::start().await;
    let body = vec![b's'; 15 * 4096];
    origin.script(
        "/v/slow.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=60")
            .trickle(15, Duration::from_millis(1500)),
    );
    let edge = TestEdge::start(rated(&origin)).await;
    let r = edge.get("/v/slow.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, body);
    edge.settle().await;
    let r = edge.get("/v/slow.ts").await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.body, body);
    assert_eq!(origin.count("/v/slow.ts"), 1);
    assert_eq!(slow_bodies(&edge, vedge::metrics::SLOW_BODY_FILL), 0);
}

/// A pass (a `Cookie` GET) whose origin trickles is cut too: it gives back its origin
/// connection and pass slot instead of holding them for as long as the origin likes.
#[tokio::test]
async fn a_trickling_pass_is_cut() {
    let origin = Origin::start().await;
    origin.script("/v/trickle.ts", trickling());
    let edge = TestEdge::start(rated(&origin)).await;
    let r = edge.raw(&get("/v/trickle.ts", "Cookie: s=1\r\n")).await;
    if !r.bytes.is_empty() {
        assert_eq!(r.status(), 200, "{}", r.text());
        assert_eq!(r.header("x-cache").as_deref(), Some("BYPASS"));
    }
    assert!(r.closed, "the viewer was left hanging");
    assert!(
        r.split().1.len() < BODY,
        "a complete-looking body ({} bytes)",
        r.split().1.len()
    );
    assert_eq!(slow_bodies(&edge, vedge::metrics::SLOW_BODY_PASS), 1);
    assert_eq!(origin.count("/v/trickle.ts"), 1);
}

/// A route may set its own rate: `min_body_rate = "0"` on `/sse/` lets that route's origin
/// stream as slowly as it likes (server-sent events, long-polling through a pass) while the
/// edge-wide rate still cuts a trickle on every other route; and a route's own rate cuts a
/// trickle on an edge whose edge-wide rate is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_sets_its_own_rate() {
    let origin = Origin::start().await;
    // 20 bytes, one every 100 ms (2 s in all): 10 bytes/s, under the edge-wide 64 bytes/s.
    let slow = || {
        Script::ok(vec![b'e'; 20])
            .header("cache-control", "max-age=60")
            .trickle(20, Duration::from_millis(2000))
    };
    origin.script("/sse/events", slow());
    origin.script("/v/events", slow());
    let mut raw = rated(&origin);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/sse/".into(),
        origin: origin.url(),
        min_body_rate: Some("0".into()),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    let r = edge.raw(&get("/sse/events", "Cookie: s=1\r\n")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        r.split().1,
        vec![b'e'; 20],
        "the /sse/ route's slow body was cut"
    );
    let r = edge.raw(&get("/v/events", "Cookie: s=1\r\n")).await;
    assert!(
        r.split().1.len() < 20,
        "the edge-wide rate no longer cuts other routes"
    );
    assert_eq!(slow_bodies(&edge, vedge::metrics::SLOW_BODY_PASS), 1);

    // The other way round: the edge-wide rate off, one route's own on.
    let mut raw = edge_config(&origin);
    raw.origin_client.min_body_rate = Some("0".into());
    raw.origin_client.min_body_rate_window = Some("1s".into());
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/v/".into(),
        origin: origin.url(),
        min_body_rate: Some("64".into()),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    let r = edge.raw(&get("/v/events", "")).await;
    assert!(
        r.split().1.len() < 20,
        "the route's own rate did not cut its trickle"
    );
    assert_eq!(slow_bodies(&edge, vedge::metrics::SLOW_BODY_FILL), 1);
    let r = edge.raw(&get("/sse/events", "")).await;
    assert_eq!(r.split().1, vec![b'e'; 20]);
}

/// A route's rate needs a window to average over, like the edge-wide one.
#[test]
fn a_route_rate_without_a_window_is_refused() {
    let mut raw = RawConfig {
        origin: Some("http://127.0.0.1:1".into()),
        ..RawConfig::default()
    };
    raw.origin_client.min_body_rate = Some("0".into());
    raw.origin_client.min_body_rate_window = Some("0s".into());
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/sse/".into(),
        origin: "http://127.0.0.1:1".into(),
        min_body_rate: Some("1KiB".into()),
        ..Default::default()
    });
    let err = vedge::config::Config::try_from(raw).expect_err("a rate without a window");
    assert!(
        err.to_string().contains("route (/sse/).min_body_rate"),
        "{err}"
    );
}
