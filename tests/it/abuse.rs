//! Issue 14's abuse limits on the origin side: fill slots per route (`origin_client.max_fills`,
//! 503 origin-busy), connections per origin, a cold Range not fetching a large object whole,
//! and h2 streams reset before any byte was read not fetching past the fill cap.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::{edge_config, until, Gate, Origin, Script, TestEdge};

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_fill_over_max_fills_waits_for_the_collapse_deadline_then_gets_503_origin_busy() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/v/held.ts",
        Script::ok("held")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    origin.script(
        "/v/next.ts",
        Script::ok("next").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.origin_client.max_fills = Some(1);
    raw.cache.collapse_timeout = Some("300ms".into());
    let edge = TestEdge::start(raw).await;

    let url = edge.url("/v/held.ts");
    let held = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let r = client
            .get(url.parse().expect("uri"))
            .await
            .expect("response");
        r.status()
    });
    until("the first fill holds the slot", || {
        origin.count("/v/held.ts") == 1
    })
    .await;

    let r = edge.get("/v/next.ts").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.h("retry-after").parse::<u64>().is_ok_and(|s| s >= 1));
    assert!(
        r.h("cache-status").contains("detail=origin-busy"),
        "{}",
        r.h("cache-status")
    );
    assert_eq!(
        origin.count("/v/next.ts"),
        0,
        "a refused fill never reaches the origin"
    );
    let m = &edge.edge.metrics.abuse;
    assert_eq!(m.fills_queued.load(Relaxed), 1);
    assert_eq!(m.fills_refused.load(Relaxed), 1);

    gate.open();
    assert_eq!(held.await.expect("task"), StatusCode::OK);
    edge.settle().await;
    let r = edge.get("/v/next.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(origin.count("/v/next.ts"), 1);
}

#[tokio::test]
async fn a_queued_fill_starts_once_a_slot_frees_and_collapsed_readers_join_it() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/v/a.ts",
        Script::ok("a")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    origin.script(
        "/v/b.ts",
        Script::ok("b").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.origin_client.max_fills = Some(1);
    let edge = std::sync::Arc::new(TestEdge::start(raw).await);

    let e = edge.clone();
    let a = tokio::spawn(async move { e.get("/v/a.ts").await });
    until("a holds the slot", || origin.count("/v/a.ts") == 1).await;
    let mut bs = Vec::new();
    for _ in 0..3 {
        let e = edge.clone();
        bs.push(tokio::spawn(async move { e.get("/v/b.ts").await }));
    }
    until("b's fill queued", || {
        edge.edge.metrics.abuse.fills_queued.load(Relaxed) == 1
    })
    .await;
    until("b's readers joined", || edge.collapsed() == 2).await;
    assert_eq!(origin.count("/v/b.ts"), 0);
    gate.open();
    assert_eq!(a.await.expect("task").status, StatusCode::OK);
    for b in bs {
        let r = b.await.expect("task");
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"b"[..]));
    }
    assert_eq!(origin.count("/v/b.ts"), 1);
    assert_eq!(edge.edge.metrics.abuse.fills_refused.load(Relaxed), 0);
}

#[tokio::test]
async fn max_connections_per_origin_holds_a_second_request_until_the_first_connection_is_free() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    for p in ["/v/c1.ts", "/v/c2.ts"] {
        origin.script(
            p,
            Script::ok("c")
                .header("cache-control", "max-age=60")
                .gate(&gate),
        );
    }
    let mut raw = edge_config(&origin);
    raw.origin_client.max_connections_per_origin = Some(1);
    raw.origin_client.max_fills = Some(0);
    let edge = std::sync::Arc::new(TestEdge::start(raw).await);
    let waits = vedge::metrics::ORIGIN_CONNECTION_WAITS.load(Relaxed);

    let tasks: Vec<_> = ["/v/c1.ts", "/v/c2.ts"]
        .into_iter()
        .map(|p| {
            let e = edge.clone();
            tokio::spawn(async move { e.get(p).await })
        })
        .collect();
    until("one origin request in flight", || {
        origin.count("/v/c1.ts") + origin.count("/v/c2.ts") == 1
    })
    .await;
    until("the second dial waits for the connection slot", || {
        vedge::metrics::ORIGIN_CONNECTION_WAITS.load(Relaxed) > waits
    })
    .await;
    assert_eq!(origin.count("/v/c1.ts") + origin.count("/v/c2.ts"), 1);
    gate.open();
    for t in tasks {
        assert_eq!(t.await.expect("task").status, StatusCode::OK);
    }
    assert_eq!(origin.count("/v/c1.ts") + origin.count("/v/c2.ts"), 2);
}

#[tokio::test]
async fn a_range_on_a_cold_large_object_passes_through_and_the_second_request_fills() {
    let origin = Origin::start().await;
    let full = body(64 << 10);
    origin.script(
        "/v/big.mp4",
        Script::ok(full.clone()).header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.range_passthrough_above = Some("16KiB".into());
    // The probe rule is for edges that do not slice (a sliced edge answers from one slice).
    raw.cache.slice_size = Some("0".into());
    let edge = TestEdge::start(raw).await;

    let r = edge
        .get_with("/v/big.mp4", &[("range", "bytes=0-99")])
        .await;
    assert!(
        r.h("cache-status").contains("detail=range-pass"),
        "{}",
        r.h("cache-status")
    );
    // The pass-through carried the viewer's Range to the origin (the fill's probe did not).
    let seen = origin.seen("/v/big.mp4");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("range"), None);
    assert_eq!(seen[1].header("range"), Some("bytes=0-99"));
    assert_eq!(edge.edge.metrics.abuse.range_passthrough.load(Relaxed), 1);
    assert!(edge.edge.fills.is_empty());

    // Asked again: wanted, so filled whole and answered from the fill.
    let r = edge
        .get_with("/v/big.mp4", &[("range", "bytes=100-199")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &full[100..200]);
    edge.settle().await;
    let r = edge
        .get_with("/v/big.mp4", &[("range", "bytes=200-299")])
        .await;
    assert_eq!(
        (r.status, r.x_cache()),
        (StatusCode::PARTIAL_CONTENT, "HIT")
    );
    assert_eq!(origin.count("/v/big.mp4"), 3);
}

#[tokio::test]
async fn a_range_on_a_cold_small_object_fills_it_at_once() {
    let origin = Origin::start().await;
    let full = body(4 << 10);
    origin.script(
        "/v/small.ts",
        Script::ok(full.clone()).header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.range_passthrough_above = Some("16KiB".into());
    let edge = TestEdge::start(raw).await;
    let r = edge
        .get_with("/v/small.ts", &[("range", "bytes=10-19")])
        .await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::PARTIAL_CONTENT, &full[10..20])
    );
    edge.settle().await;
    assert_eq!(edge.get("/v/small.ts").await.x_cache(), "HIT");
    assert_eq!(origin.count("/v/small.ts"), 1);
}

#[tokio::test]
async fn h2_streams_reset_at_once_never_run_more_origin_fetches_than_max_fills() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    let n = 8;
    for i in 0..n {
        origin.script(
            &format!("/v/r{i}.ts"),
            Script::ok(body(256 << 10))
                .header("cache-control", "max-age=60")
                .gate(&gate),
        );
    }
    let mut raw = edge_config(&origin);
    raw.origin_client.max_fills = Some(2);
    let edge = TestEdge::start(raw).await;

    let send = edge.h2().await;
    for i in 0..n {
        let mut send = send.clone();
        let req = Request::get(format!("http://127.0.0.1/v/r{i}.ts"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let stream = tokio::spawn(async move { send.send_request(req).await });
        until("the stream's fill is claimed", || {
            edge.edge.fills.len() == i + 1
        })
        .await;
        // Reset before any byte was read.
        stream.abort();
    }
    let total = || {
        (0..n)
            .map(|i| origin.count(&format!("/v/r{i}.ts")))
            .sum::<usize>()
    };
    until("the rest queued", || {
        edge.edge.metrics.abuse.fills_queued.load(Relaxed) == (n - 2) as u64
    })
    .await;
    assert_eq!(
        total(),
        2,
        "origin fetches in flight never exceed max_fills"
    );
    assert!(edge.edge.metrics.abuse.fills_active.load(Relaxed) <= 2);
    gate.open();
    // The storable fills go on (the cache's job) two at a time; every one ends.
    until("every fill ended", || edge.edge.fills.is_empty()).await;
    assert!(total() <= n);
}

#[tokio::test]
async fn a_viewer_reading_slower_than_min_send_rate_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let len = 32 << 20;
    origin.script(
        "/v/long.mp4",
        Script::ok(body(len)).header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("128MiB".into());
    raw.server.zero_copy = Some(false);
    raw.server.send_buffer = Some("0".into());
    raw.server.write_timeout = Some("300ms".into());
    raw.server.min_send_rate = Some("4MiB".into());
    let edge = TestEdge::start(raw).await;

    let mut s = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /v/long.mp4 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("request");
    // Reads steadily but slowly (about 800 KB/s): never stalls long enough for write_timeout.
    let mut got = 0usize;
    let mut buf = vec![0u8; 4096];
    let mut closed = false;
    for _ in 0..6000 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => got += n,
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(closed, "the slow viewer was not disconnected");
    assert!(got < len, "the whole body arrived ({got} bytes)");
    assert!(edge.edge.metrics.limits.slow_readers_closed.load(Relaxed) >= 1);
}

/// An h2 viewer that never opens its flow-control window gets the response head and then no
/// byte of the body, and no write of the edge ever blocks, so neither the write timeout nor
/// the idle timeout (a request is in flight) ends it: it held the response, and the fill or
/// pass behind it, for as long as it liked. With a request in flight and nothing moving for
/// `idle + write`, the connection is closed.
#[tokio::test]
async fn an_h2_viewer_that_never_opens_its_window_is_disconnected() {
    let origin = Origin::start().await;
    origin.script(
        "/v/w.ts",
        Script::ok(body(256 << 10)).header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.server.idle_timeout = Some("1s".into());
    raw.server.write_timeout = Some("1s".into());
    // Keep-alive PINGs (answered by the client) must not count as the response moving.
    raw.server.h2_keepalive_interval = Some("200ms".into());
    let edge = TestEdge::start(raw).await;
    let tcp = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/v/w.ts", edge.addr))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    // The body is never read (and could not come: the window is 0). Bounded wait.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), conn).await;
    assert!(
        ended.is_ok(),
        "the edge kept the stalled connection open for 15 s"
    );
    drop(resp);
}

/// One h2 stream whose window stays shut, beside another stream on the same connection that
/// keeps asking and reading: the connection as a whole moves (requests start, body bytes go
/// out), so the connection-wide rule never fired, and the shut stream held its response (and
/// the pass or fill behind it) for as long as the viewer kept the other stream busy. A stream
/// whose response waits for its viewer for `idle + write` now closes the connection.
#[tokio::test]
async fn one_stalled_h2_stream_beside_a_busy_one_is_disconnected() {
    one_stalled_h2_stream_beside_a_busy_one(false).await;
}

/// An edge of a tier (on `limits.allow`) multiplexes many viewers' fills on one h2 link: one
/// slow viewer behind it stalls one stream, and cutting the link would abort every other
/// viewer's fill on it. Only the connection-wide rule (nothing moving at all) applies there.
#[tokio::test]
async fn one_stalled_h2_stream_of_an_allowed_peer_does_not_cut_its_link() {
    one_stalled_h2_stream_beside_a_busy_one(true).await;
}

async fn one_stalled_h2_stream_beside_a_busy_one(allowed: bool) {
    let origin = Origin::start().await;
    origin.script(
        "/v/big.ts",
        Script::ok(body(1 << 20)).header("cache-control", "max-age=60"),
    );
    origin.script(
        "/v/small.m3u8",
        Script::ok("#EXTM3U\n").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.server.idle_timeout = Some("1s".into());
    raw.server.write_timeout = Some("1s".into());
    // Loopback is on the default allowlist: the viewer case takes it off.
    raw.limits.allow = Some(if allowed {
        vec!["127.0.0.0/8".into()]
    } else {
        Vec::new()
    });
    let edge = TestEdge::start(raw).await;
    let tcp = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    // The smallest stream window, and a connection window the busy stream never exhausts.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(64 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    let mut conn = tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(format!("http://{}{path}", edge.addr))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    // Never read: its stream window fills after 64 KiB and stays shut.
    let stalled = send
        .send_request(get("/v/big.ts"))
        .await
        .expect("response head");
    assert_eq!(stalled.status(), StatusCode::OK);
    // The busy stream: a request read whole every 100 ms, for at most 12 s (12 × idle + write;
    // 5 s for the allowed peer, which must stay connected).
    let mut closed = false;
    for _ in 0..if allowed { 50 } else { 120 } {
        tokio::select! {
            _ = &mut conn => { closed = true; break; }
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        let Ok(resp) = send.send_request(get("/v/small.m3u8")).await else {
            closed = true;
            break;
        };
        if http_body_util::BodyExt::collect(resp.into_body())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
    }
    if allowed {
        assert!(
            !closed,
            "the edge cut an allowed peer's link for one stalled stream"
        );
    } else {
        assert!(
            closed,
            "the edge kept a connection with a stalled stream open for 12 s"
        );
        assert!(edge.edge.metrics.limits.slow_readers_closed.load(Relaxed) >= 1);
    }
    drop(stalled);
}

/// One client's h2 streams that never take their responses each hold a whole body in memory (one
/// the RAM tier may already have let go): a client opening streams for distinct segments and
/// reading none grew the edge by a body per stream, far past `ram_size`. Past
/// `limits.per_ip_stalled_bytes` of them, the client's new requests get 429 until they drain,
/// and another client is served as before. A response counts once it has waited for its viewer
/// `limits::STALLED_AFTER`: active downloads of many viewers behind one address do not.
#[tokio::test]
async fn stalled_h2_streams_of_one_client_are_bounded_in_bytes() {
    stalled_h2_streams_of_one_client(0).await;
}

/// The same with a one-byte window: the edge may hand each stream's body to the connection,
/// which buffers it whole; the response still waits for its viewer and still counts.
#[tokio::test]
async fn stalled_h2_streams_with_a_one_byte_window_are_bounded_too() {
    stalled_h2_streams_of_one_client(1).await;
}

/// An origin with `n` segments of 1 MiB (`/v/{name}{i}.ts`), an edge that caps one client's
/// stalled h2 bytes at 2 MiB (loopback is not on its allowlist), and an h2 connection to it with
/// the stream `window` given (`None`: the default).
async fn stalled_cap_setup(
    name: &str,
    n: usize,
    window: Option<u32>,
) -> (
    Origin,
    TestEdge,
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) {
    let origin = Origin::start().await;
    for i in 0..n {
        origin.script(
            &format!("/v/{name}{i}.ts"),
            Script::ok(body(1 << 20)).header("cache-control", "max-age=60"),
        );
    }
    let mut raw = edge_config(&origin);
    raw.limits.allow = Some(Vec::new());
    raw.limits.per_ip_stalled_bytes = Some("2MiB".into());
    let edge = TestEdge::start(raw).await;
    let tcp = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(w) = window {
        builder.initial_stream_window_size(w);
    }
    let (send, conn) = builder
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    (origin, edge, send)
}

async fn stalled_h2_streams_of_one_client(window: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_origin, edge, mut send) = stalled_cap_setup("p", 6, Some(window)).await;
    let get = |path: &str| {
        Request::get(format!("http://{}{path}", edge.addr))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for i in 0..6 {
        if i == 3 {
            // A response counts as stalled once it has waited for its viewer a while (an
            // active download is polled again many times a second).
            tokio::time::sleep(vedge::http::limits::STALLED_AFTER + Duration::from_millis(300))
                .await;
        }
        let resp = send
            .send_request(get(&format!("/v/p{i}.ts")))
            .await
            .expect("response head");
        statuses.push(resp.status().as_u16());
        held.push(resp);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "window {window}: one client's stalled streams were not bounded"
    );
    assert_eq!(edge.edge.metrics.limits.stalled_refused.load(Relaxed), 3);

    // Another client (another loopback address) is served meanwhile.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind");
    let mut other = sock.connect(edge.addr).await.expect("connect");
    other
        .write_all(b"GET /v/p5.ts HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    other.read_to_end(&mut answer).await.expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the other client was refused"
    );

    // Once the stalled streams go, the client is served again.
    drop(held);
    let mut again = 0;
    for _ in 0..50 {
        let resp = send
            .send_request(get("/v/p0.ts"))
            .await
            .expect("response head");
        again = resp.status().as_u16();
        if again == 200 {
            break;
        }
        drop(resp);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        again, 200,
        "the client stayed refused after its streams ended"
    );
}

/// Many active h2 downloads of one address (viewers behind one NAT) are not stalled streams:
/// with the cap below what they fetch at once, every one is served whole.
#[tokio::test]
async fn active_h2_downloads_of_one_address_are_not_refused() {
    let (_origin, edge, send) = stalled_cap_setup("a", 8, None).await;
    for round in 0..3 {
        let mut downloads = Vec::new();
        for i in 0..8 {
            let mut send = send.clone();
            let req = Request::get(format!("http://{}/v/a{i}.ts", edge.addr))
                .body(Empty::<Bytes>::new())
                .expect("request");
            downloads.push(tokio::spawn(async move {
                let resp = send.send_request(req).await.expect("response head");
                let status = resp.status().as_u16();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                (status, body.len())
            }));
        }
        for d in downloads {
            assert_eq!(d.await.expect("task"), (200, 1 << 20), "round {round}");
        }
    }
    assert_eq!(edge.edge.metrics.limits.stalled_refused.load(Relaxed), 0);
}
