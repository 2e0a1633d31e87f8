//! Request integrity, black-box: one viewer's request cannot poison, stall or crash what other
//! viewers get. The scripted origin frames requests as nginx does (it reads a request's
//! `Content-Length` body before answering, so a fill carrying a `Content-Length` without a body
//! would stall it) and records every header it received.

use std::time::{Duration, Instant};

use http::Method;

use crate::support::edge::{edge_config, TestEdge};
use crate::support::origin::{Gate, Origin, Script};

const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "expect",
    "te",
    "upgrade",
];

#[tokio::test]
async fn get_with_a_body_is_refused_and_never_stalls_other_viewers() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/live/s/seg_100.ts",
        Script::ok("segment")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    let mut raw = edge_config(&origin);
    raw.cache.collapse_timeout = Some("10s".into());
    let edge = TestEdge::start(raw).await;
    let attack = edge
        .raw(b"GET /live/s/seg_100.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nConnection: close\r\n\r\n012345678901234567890123456789")
        .await;
    assert_eq!(attack.status(), 400, "{}", attack.text());
    let chunked = edge
        .raw(b"HEAD /live/s/seg_100.ts HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\nx\r\n0\r\n\r\n")
        .await;
    assert_eq!(chunked.status(), 400);
    gate.open();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(3), edge.get("/live/s/seg_100.ts"))
        .await
        .expect("an honest viewer is answered well before collapse_timeout (10 s)");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(3));
    let seen = origin.seen("/live/s/seg_100.ts");
    assert_eq!(
        seen.len(),
        1,
        "the refused requests never reached the origin"
    );
    for name in FRAMING {
        assert!(seen[0].header(name).is_none(), "origin saw {name}");
    }
    assert_eq!(seen[0].method, "GET");
}

#[tokio::test]
async fn a_host_holding_a_path_is_refused_so_host_and_path_cannot_collide() {
    let origin = Origin::start().await;
    origin.script(
        "/x/y.ts",
        Script::ok("right").header("cache-control", "max-age=60"),
    );
    origin.script(
        "/y.ts",
        Script::ok("wrong").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let bad = edge
        .raw(b"GET /y.ts HTTP/1.1\r\nHost: cdn/x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(bad.status(), 400);
    let good = edge
        .raw(b"GET /x/y.ts HTTP/1.1\r\nHost: cdn\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(good.status(), 200);
    assert!(good.text().ends_with("right"), "{}", good.text());
    assert_eq!(origin.count("/y.ts"), 0);
}

#[tokio::test]
async fn overflowing_numbers_give_sane_answers_and_the_edge_keeps_serving() {
    let origin = Origin::start().await;
    origin.script(
        "/v/age.ts",
        Script::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("age", "18446744073709551615"),
    );
    origin.script(
        "/v/long.ts",
        Script::ok("segment").header("cache-control", "max-age=9223372036854775807"),
    );
    origin.script(
        "/v/long.m3u8",
        Script::ok("#EXTM3U\n").header("cache-control", "max-age=9223372036854775807"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/v/age.ts", "/v/long.ts", "/v/long.m3u8"] {
        for _ in 0..2 {
            let r = edge.get(path).await;
            assert_eq!(r.status, 200, "{path}");
            edge.settle().await;
        }
    }
    let r = edge
        .get_with("/v/age.ts", &[("range", "bytes=1-18446744073709551615")])
        .await;
    assert!(matches!(r.status.as_u16(), 206 | 200 | 416), "{}", r.status);
    let r = edge.get("/v/long.ts").await;
    assert_eq!(
        r.status, 200,
        "the edge still serves after the hostile values"
    );
}

#[tokio::test]
async fn dot_segments_route_key_and_fetch_as_the_normalised_path() {
    let origin = Origin::start().await;
    origin.script(
        "/b.ts",
        Script::ok("b").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .raw(b"GET /a/../b.ts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    edge.settle().await;
    let r = edge
        .raw(b"GET /a/%2e%2e/b.ts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(origin.seen("/b.ts")[0].target, "/b.ts");
    for bad in ["/a%2Fb.ts", "/a%5Cb.ts", "/a%00.ts"] {
        let req = format!("GET {bad} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(edge.raw(req.as_bytes()).await.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn override_headers_from_the_leader_never_reach_the_origin_on_a_fill() {
    let origin = Origin::start().await;
    origin.script(
        "/v/o.ts",
        Script::ok("o").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let hostile = [
        ("x-forwarded-host", "evil.example"),
        ("x-http-method-override", "DELETE"),
        ("forwarded", "host=evil.example"),
        ("x-original-url", "/admin"),
        ("user-agent", "attacker"),
        ("accept-language", "xx"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    assert_eq!(edge.get_with("/v/o.ts", &hostile).await.status, 200);
    let seen = &origin.seen("/v/o.ts")[0];
    for (name, _) in &hostile[..6] {
        assert!(seen.header(name).is_none(), "{name} reached the origin");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen.header("host"),
        Some(origin.addr().to_string().as_str())
    );
    assert!(seen.header("via").is_some() && seen.header("cdn-loop").is_some());
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn a_route_with_hosts_answers_other_hosts_421() {
    let origin = Origin::start().await;
    origin.script(
        "/r/x.ts",
        Script::ok("x").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/r/".into(),
        origin: origin.url(),
        hosts: Some(vec!["cdn.example".into()]),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    let other = edge
        .raw(b"GET /r/x.ts HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(other.status(), 421);
    let ok = edge
        .raw(b"GET /r/x.ts HTTP/1.1\r\nHost: CDN.example:80\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn viewer_hosts_do_not_fan_out_keys_on_default_routes() {
    let origin = Origin::start().await;
    origin.script(
        "/v/f.ts",
        Script::ok("f").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, host) in ["a.example", "b.example", "c.example:8080"]
        .iter()
        .enumerate()
    {
        let req = format!("GET /v/f.ts HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = edge.raw(req.as_bytes()).await;
        assert_eq!(r.status(), 200);
        if i > 0 {
            assert_eq!(r.header("x-cache").as_deref(), Some("HIT"), "{host}");
        }
        edge.settle().await;
    }
    assert_eq!(origin.count("/v/f.ts"), 1);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_reframed_once() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .raw(b"POST /v/p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    // hyper reads both framings as chunked (RFC 9112 §6.1, Transfer-Encoding wins) and drops
    // the Content-Length; the pass re-frames the body, so the origin never sees both.
    assert!(r.status() != 0, "{}", r.text());
    for seen in origin.seen("/v/p") {
        assert!(
            seen.header("content-length").is_none() || seen.header("transfer-encoding").is_none(),
            "origin saw both framings"
        );
    }
}

#[tokio::test]
async fn a_push_without_a_host_is_a_hit_for_viewers_of_any_host() {
    use bytes::Bytes;
    use http_body_util::Full;
    use vedge::ingest::admin::{handle, IngestJobs};
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let jobs = std::sync::Arc::new(IngestJobs::default());
    let put = http::Request::builder()
        .method(Method::PUT)
        .uri("/admin/objects/push/a.ts")
        .body(Full::new(Bytes::from_static(b"pushed")))
        .expect("request");
    let res = handle(&edge.edge, &jobs, put).await.expect("routed");
    assert_eq!(res.status(), http::StatusCode::CREATED);
    let r = edge
        .raw(b"GET /push/a.ts HTTP/1.1\r\nHost: viewer.example:1234\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.header("x-cache").as_deref(), Some("HIT"), "{}", r.text());
    assert_eq!(origin.count("/push/a.ts"), 0);
}
