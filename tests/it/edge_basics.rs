//! The plain request path: MISS then HIT, HEAD, viewer conditionals, CDN-Loop and Via, malformed
//! and oversized requests, and POST passed through with its body streamed both ways.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::{edge_config, Origin, Script, TestEdge};

#[tokio::test]
async fn miss_then_hit_with_age_x_cache_and_cache_status() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg1.ts",
        Script::ok("segment one").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let first = edge.get("/v/seg1.ts").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "segment one");
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.h("age"), "0");
    let cs = first.h("cache-status");
    assert!(
        cs.starts_with("vedge;") && cs.contains("fwd=miss") && cs.contains("stored"),
        "{cs}"
    );

    edge.settle().await;
    let second = edge.get("/v/seg1.ts").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, "segment one");
    assert_eq!(second.x_cache(), "HIT");
    assert!(
        second.h("age").parse::<u64>().is_ok(),
        "{:?}",
        second.h("age")
    );
    let cs = second.h("cache-status");
    assert!(cs.starts_with("vedge; hit"), "{cs}");
    assert_eq!(second.h("content-length"), "11");
    assert_eq!(origin.count("/v/seg1.ts"), 1);
}

#[tokio::test]
async fn head_has_length_and_no_body_then_get_hits() {
    let origin = Origin::start().await;
    let body = vec![b'h'; 4000];
    origin.script(
        "/v/seg2.ts",
        Script::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let head = edge
        .send(edge.req(Method::HEAD, "/v/seg2.ts"), Bytes::new())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.h("content-length"), "4000");
    assert!(head.body.is_empty());

    // The raw bytes too: a HEAD response carries no body on the wire.
    // Same Host as the client's, so the same cache key.
    let req = format!(
        "HEAD /v/seg2.ts HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        edge.addr
    );
    let raw = edge.raw(req.as_bytes()).await;
    let (head_text, rest) = raw.split();
    assert!(head_text.starts_with("HTTP/1.1 200"), "{head_text}");
    assert_eq!(raw.header("content-length").as_deref(), Some("4000"));
    assert!(rest.is_empty(), "HEAD sent {} body bytes", rest.len());

    edge.settle().await;
    let get = edge.get("/v/seg2.ts").await;
    assert_eq!(get.x_cache(), "HIT");
    assert_eq!(get.body, body);
    let seen = origin.seen("/v/seg2.ts");
    assert_eq!(seen.len(), 1, "one origin fetch for HEAD, HEAD and GET");
    assert_eq!(seen[0].method, "GET", "the cache fetches whole objects");
}

#[tokio::test]
async fn viewer_if_none_match_gets_304_from_cache() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg3.ts",
        Script::ok("etagged")
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\""),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/seg3.ts").await.x_cache(), "MISS");
    edge.settle().await;

    let r = edge
        .get_with("/v/seg3.ts", &[("if-none-match", "\"v0\", \"v1\"")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.h("etag"), "\"v1\"");
    assert!(r.body.is_empty());

    let r = edge
        .get_with("/v/seg3.ts", &[("if-none-match", "\"v2\"")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "etagged");
    assert_eq!(origin.count("/v/seg3.ts"), 1);
}

#[tokio::test]
async fn cdn_loop_is_refused_and_origin_requests_carry_cdn_loop_and_via() {
    let origin = Origin::start().await;
    origin.script("/v/seg4.ts", Script::ok("x"));
    let edge = TestEdge::start(edge_config(&origin)).await;

    let looped = edge
        .get_with("/v/seg4.ts", &[("cdn-loop", "othercdn, vedge")])
        .await;
    assert_eq!(looped.status, StatusCode::LOOP_DETECTED);
    assert_eq!(origin.count("/v/seg4.ts"), 0);

    let ok = edge
        .get_with(
            "/v/seg4.ts",
            &[("cdn-loop", "othercdn"), ("via", "1.1 proxy")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let seen = origin.seen("/v/seg4.ts");
    assert_eq!(seen.len(), 1);
    let all = |name: &str| -> String {
        seen[0]
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cdn_loop = all("cdn-loop");
    assert!(
        cdn_loop.contains("othercdn") && cdn_loop.contains("vedge; node="),
        "{cdn_loop}"
    );
    let via = all("via");
    assert!(
        via.contains("1.1 proxy") && via.contains("1.1 vedge"),
        "{via}"
    );
}

#[tokio::test]
async fn malformed_request_is_400_and_oversized_headers_are_431() {
    let origin = Origin::start().await;
    let mut raw = edge_config(&origin);
    raw.server.max_header_size = Some("16KiB".into());
    let edge = TestEdge::start(raw).await;

    let r = edge.raw(b"GARBAGE\r\n\r\n").await;
    assert_eq!(r.status(), 400, "{}", r.text());

    let r = edge.raw(b"GET /a.ts HTTP/1.1\r\nHost t\r\n\r\n").await;
    assert_eq!(r.status(), 400, "{}", r.text());

    let big = "a".repeat(20 << 10);
    let req = format!("GET /a.ts HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let r = edge.raw(req.as_bytes()).await;
    assert_eq!(r.status(), 431, "{}", r.text());
    assert_eq!(origin.count("/a.ts"), 0);
}

/// The request body reaches the origin while the viewer is still sending it, and the origin's
/// answer reaches the viewer while the origin is still sending it: ping-pong over one POST.
#[tokio::test]
async fn post_is_passed_uncached_with_its_body_streamed_both_ways() {
    let origin = Origin::start().await;
    origin.script(
        "/api/echo",
        Script::ok("").echo().header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    type Tx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;
    let (tx, rx): (Tx, _) = tokio::sync::mpsc::channel(4);
    let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(edge.url("/api/echo"))
        .body(StreamBody::new(stream))
        .expect("request");
    let exchange = async {
        tx.send(Ok(Frame::data(Bytes::from("ping-0"))))
            .await
            .expect("send");
        let resp = client.request(req).await.expect("response head");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-cache"], "BYPASS");
        let mut body = resp.into_body();
        let mut got = Vec::new();
        for i in 0..3 {
            // Wait for this ping's echo before sending the next one.
            let want = format!("ping-{i}");
            while got.len() < want.len() {
                let frame = body.frame().await.expect("echo frame").expect("echo ok");
                if let Ok(d) = frame.into_data() {
                    got.extend_from_slice(&d);
                }
            }
            assert_eq!(got, want.as_bytes());
            got.clear();
            if i < 2 {
                tx.send(Ok(Frame::data(Bytes::from(format!("ping-{}", i + 1)))))
                    .await
                    .expect("send");
            }
        }
        drop(tx);
        let rest = body.collect().await.expect("end of echo").to_bytes();
        assert!(rest.is_empty());
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the body streamed both ways (no store-and-forward deadlock)");

    let again = edge
        .send(edge.req(Method::POST, "/api/echo"), Bytes::from("second"))
        .await;
    assert_eq!(again.body, "second");
    assert_eq!(again.x_cache(), "BYPASS");
    assert_eq!(origin.count("/api/echo"), 2);
    assert!(origin.seen("/api/echo").iter().all(|s| s.method == "POST"));
}

/// RFC 9111 §5.1: a cache passes on the age a response already had. An origin (or shield)
/// answering `Age: 30` with 60 s of freshness leaves viewers 30 s, not 60, on a MISS too.
#[tokio::test]
async fn the_origins_age_is_passed_on_on_a_miss_and_a_hit() {
    let origin = Origin::start().await;
    origin.script(
        "/v/aged.ts",
        Script::ok("aged")
            .header("cache-control", "max-age=60")
            .header("age", "30"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let miss = edge.get("/v/aged.ts").await;
    assert_eq!(miss.x_cache(), "MISS");
    let age: u64 = miss.h("age").parse().expect("numeric Age");
    assert!((30..40).contains(&age), "MISS Age: {age}");
    edge.settle().await;
    let hit = edge.get("/v/aged.ts").await;
    assert_eq!(hit.x_cache(), "HIT");
    let age: u64 = hit.h("age").parse().expect("numeric Age");
    assert!((30..40).contains(&age), "HIT Age: {age}");
}

/// Per-viewer query parameters (tokens, CMCD) stay out of the cache key, and so out of the fill
/// every viewer of the key shares (the origin is asked for what the key names); other
/// parameters are part of the key in any order.
#[tokio::test]
async fn tokens_are_dropped_from_the_key_and_from_the_shared_fill() {
    let origin = Origin::start().await;
    origin.script(
        "/v/q.ts",
        Script::ok("q").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/q.ts?a=1&b=2&token=t1").await.x_cache(), "MISS");
    edge.settle().await;
    let r = edge.get("/v/q.ts?b=2&token=t2&CMCD=br%3D100&a=1").await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(edge.get("/v/q.ts?a=2&b=2").await.x_cache(), "MISS");
    let seen = origin.seen("/v/q.ts");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/v/q.ts?a=1&b=2");
}

/// A viewer's `If-None-Match` on a miss is answered 304 from the fill, not sent to the origin.
#[tokio::test]
async fn if_none_match_on_a_miss_is_answered_by_the_edge() {
    let origin = Origin::start().await;
    origin.script(
        "/v/inm.ts",
        Script::ok("body")
            .header("cache-control", "max-age=60")
            .header("etag", "\"m1\""),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .get_with("/v/inm.ts", &[("if-none-match", "\"m1\"")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.x_cache(), "MISS");
    let seen = origin.seen("/v/inm.ts");
    assert_eq!(seen[0].header("if-none-match"), None);
    assert_eq!(
        origin.sent("/v/inm.ts")[0].status,
        200,
        "the cache fetched the body"
    );
    edge.settle().await;
    assert_eq!(edge.get("/v/inm.ts").await.x_cache(), "HIT");
}

/// One event loop or several (`server.threads`): connections land on any worker, and a fill
/// started on one worker's thread serves a viewer on another.
#[tokio::test]
async fn any_number_of_viewer_threads_share_one_cache() {
    for threads in [0, 1, 3] {
        let origin = Origin::start().await;
        origin.script(
            "/v/t.ts",
            Script::ok("threaded")
                .header("cache-control", "max-age=60")
                .head_delay(Duration::from_millis(200)),
        );
        let mut raw = edge_config(&origin);
        raw.server.threads = Some(threads);
        let edge = TestEdge::start(raw).await;
        let gets = (0..12).map(|_| {
            let addr = edge.addr;
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let req =
                    format!("GET /v/t.ts HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
                    .await
                    .expect("write");
                crate::support::edge::read_raw(&mut s).await
            })
        });
        for g in gets.collect::<Vec<_>>() {
            let r = g.await.expect("viewer task");
            assert!(r.bytes.ends_with(b"threaded"), "threads={threads}");
        }
        assert_eq!(origin.count("/v/t.ts"), 1, "threads={threads}");
    }
}

/// A second `vedge serve` on the address of a running one fails to start instead of taking half
/// of its viewers: each per-core event loop binds the address with SO_REUSEPORT, which lets
/// another process of the same user bind it too, and the kernel then splits new connections
/// between the two edges (an old edge a restart script left running would keep serving its old
/// config). The running edge answers every request after the attempt.
#[tokio::test]
async fn a_second_edge_on_a_taken_address_fails_to_start_and_takes_no_viewer() {
    use crate::support::binary::BinaryEdge;
    let origin = Origin::start().await;
    origin.script(
        "/a.ts",
        Script::ok("first").header("cache-control", "max-age=60"),
    );
    // `vedge serve` without a store: one event loop per core, each with its own listener.
    let v = BinaryEdge::start(&origin.url(), ["--ram-size", "16MiB"]);
    v.ready().await;
    let (port, url) = (v.port, origin.url());
    let second = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vedge"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--origin", &url, "--ram-size", "16MiB", "--log", "warn"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the second vedge");
        // Bounded: a second edge that started serves until it is killed.
        for _ in 0..200 {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    })
    .await
    .expect("join");
    let out = second.expect("the second edge is still running after 10 s: it shares the port");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        stderr.contains("cannot bind") && stderr.contains("in use"),
        "stderr: {stderr}"
    );
    for _ in 0..20 {
        let r = v.get(v.port, "/a.ts").await.expect("answers");
        assert_eq!(r.status(), 200);
        assert_eq!(r.split().1, b"first");
    }
}
