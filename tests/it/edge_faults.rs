//! Origin failures: truncated and stalled bodies never look complete to a viewer and are never
//! stored; an unreachable or slow origin maps to 502 / 504; a stale copy is served within
//! stale-if-error.

use std::time::Duration;

use http::StatusCode;

use crate::support::{edge_config, Fault, Origin, Script, TestEdge};

const GET: &[u8] = b"GET /v/cut.ts HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn truncated_content_length_body_is_cut_for_the_viewer_and_not_stored() {
    let origin = Origin::start().await;
    origin.script(
        "/v/cut.ts",
        Script::ok(vec![b'c'; 10_000])
            .header("cache-control", "max-age=60")
            .fault(Fault::Truncate(4_000)),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    for round in 1..=2 {
        let r = edge.raw(GET).await;
        if !r.bytes.is_empty() {
            // (Empty: cut before hyper flushed the head, which is just as incomplete.)
            assert_eq!(r.status(), 200, "{}", r.text());
            assert_eq!(r.header("content-length").as_deref(), Some("10000"));
        }
        let (_, body) = r.split();
        assert!(r.closed, "round {round}: the edge kept the connection open");
        assert!(
            body.len() < 10_000,
            "round {round}: a complete-looking body"
        );
        edge.settle().await;
        assert_eq!(origin.count("/v/cut.ts"), round, "nothing was cached");
    }
    assert_eq!(edge.edge.ram.len(), 0);
}

#[tokio::test]
async fn dropped_chunked_body_gets_no_terminating_chunk_and_is_not_stored() {
    let origin = Origin::start().await;
    origin.script(
        "/v/cut.ts",
        Script::ok(vec![b'c'; 10_000])
            .header("cache-control", "max-age=60")
            .chunked()
            .fault(Fault::Truncate(4_000)),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    for round in 1..=2 {
        let r = edge.raw(GET).await;
        if !r.bytes.is_empty() {
            // (Empty: cut before hyper flushed the head, which is just as incomplete.)
            assert_eq!(r.status(), 200, "{}", r.text());
            assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
        }
        let (_, body) = r.split();
        assert!(r.closed, "round {round}: the edge kept the connection open");
        assert!(
            !body.ends_with(b"0\r\n\r\n"),
            "round {round}: the edge ended a truncated chunked body cleanly"
        );
        edge.settle().await;
        assert_eq!(origin.count("/v/cut.ts"), round, "nothing was cached");
    }
    assert_eq!(edge.edge.ram.len(), 0);
}

#[tokio::test]
async fn stalled_body_is_aborted_after_the_between_bytes_timeout() {
    let origin = Origin::start().await;
    origin.script(
        "/v/cut.ts",
        Script::ok(vec![b's'; 10_000])
            .header("cache-control", "max-age=60")
            .fault(Fault::Stall(1_000)),
    );
    let mut raw = edge_config(&origin);
    raw.origin_client.between_bytes_timeout = Some("300ms".into());
    let edge = TestEdge::start(raw).await;

    let r = edge.raw(GET).await;
    assert_eq!(r.status(), 200);
    assert!(r.closed, "the viewer was left hanging");
    assert!(r.split().1.len() < 10_000);
    edge.settle().await;
    assert_eq!(edge.edge.ram.len(), 0);
}

#[tokio::test]
async fn refused_origin_is_502() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    origin.stop_and_wait().await;
    let r = edge.get("/v/none.ts").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.h("cache-status").contains("origin-unreachable"),
        "{}",
        r.h("cache-status")
    );
}

#[tokio::test]
async fn origin_head_timeout_is_504() {
    let origin = Origin::start().await;
    origin.script(
        "/v/slow.ts",
        Script::ok("late").head_delay(Duration::from_secs(5)),
    );
    let mut raw = edge_config(&origin);
    raw.origin_client.first_byte_timeout = Some("300ms".into());
    let edge = TestEdge::start(raw).await;
    let r = edge.get("/v/slow.ts").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.h("cache-status").contains("origin-timeout"));
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_while_the_origin_is_down() {
    let origin = Origin::start().await;
    origin.script(
        "/v/sie.ts",
        Script::ok("still good").header("cache-control", "max-age=1, stale-if-error=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/sie.ts").await.x_cache(), "MISS");
    edge.settle().await;

    origin.stop_and_wait().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = edge.get("/v/sie.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.body, "still good");
    assert!(r.h("cache-status").contains("stale-if-error"));

    // A 5xx answer counts as an error too.
    origin.script("/v/sie.ts", Script::status(503, "down"));
    origin.restart().await;
    let r = edge.get("/v/sie.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.body, "still good");
    assert_eq!(origin.count("/v/sie.ts"), 2);

    // Back up: the next request refetches and stores the new body.
    origin.script(
        "/v/sie.ts",
        Script::ok("fresh again").header("cache-control", "max-age=60"),
    );
    let r = edge.get("/v/sie.ts").await;
    assert_eq!(r.x_cache(), "EXPIRED");
    assert_eq!(r.body, "fresh again");
    edge.settle().await;
    assert_eq!(edge.get("/v/sie.ts").await.x_cache(), "HIT");
}

/// Collapsed waiters of a fill whose body is cut are cut too, on every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_of_a_truncated_fill_is_cut() {
    let origin = Origin::start().await;
    let gate = crate::support::Gate::new();
    origin.script(
        "/v/cut.ts",
        Script::ok(vec![b'c'; 10_000])
            .header("cache-control", "max-age=60")
            .fault(Fault::Truncate(4_000))
            .gate(&gate),
    );
    let edge = std::sync::Arc::new(TestEdge::start(edge_config(&origin)).await);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let viewer = edge.clone();
        tasks.push(tokio::spawn(async move { viewer.raw(GET).await }));
    }
    crate::support::until("two waiters joined", || edge.collapsed() == 2).await;
    gate.open();
    for t in tasks {
        let r = t.await.expect("viewer task");
        // When the failure comes before hyper flushed the head, the viewer sees no response at
        // all: just as incomplete.
        assert!(r.bytes.is_empty() || r.status() == 200, "{}", r.text());
        assert!(r.closed);
        assert!(r.split().1.len() < 10_000, "a complete-looking body");
    }
    edge.settle().await;
    assert_eq!(origin.count("/v/cut.ts"), 1);
    assert_eq!(edge.edge.ram.len(), 0);
}

/// A passed-through (uncached) response cut by the origin is cut for the viewer too.
#[tokio::test]
async fn a_truncated_pass_through_response_is_cut_for_the_viewer() {
    let origin = Origin::start().await;
    origin.script(
        "/v/cut.ts",
        Script::ok(vec![b'p'; 10_000]).fault(Fault::Truncate(4_000)),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .raw(b"GET /v/cut.ts HTTP/1.1\r\nHost: t\r\nCookie: s=1\r\n\r\n")
        .await;
    if !r.bytes.is_empty() {
        assert_eq!(r.status(), 200, "{}", r.text());
        assert_eq!(r.header("x-cache").as_deref(), Some("BYPASS"));
    }
    assert!(r.closed, "the edge kept the connection open");
    assert!(r.split().1.len() < 10_000, "a complete-looking body");
}

/// An origin error marked `no-store` (vedge's own 502/503/504 are, so a shield whose origin is
/// down answers so; so do many maintenance pages) is still an error: within `stale-if-error`
/// the stale copy answers, and it stays for the next viewer, instead of the error being relayed
/// and the stale copy purged as if the object had turned uncacheable.
#[tokio::test]
async fn a_no_store_5xx_still_lets_the_stale_copy_stand_in() {
    let origin = Origin::start().await;
    for (path, cc) in [("/v/ns.ts", "no-store"), ("/v/pr.ts", "private")] {
        origin.script(
            path,
            Script::ok("still good").header("cache-control", "max-age=1, stale-if-error=600"),
        );
        let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
        assert_eq!(edge.get(path).await.x_cache(), "MISS");
        edge.settle().await;
        origin.script(
            path,
            Script::status(503, "down").header("cache-control", cc),
        );
        edge.advance(Duration::from_secs(5)).await;
        for i in 0..2 {
            let r = edge.get(path).await;
            assert_eq!(
                (r.status, r.x_cache(), r.body.as_ref()),
                (StatusCode::OK, "STALE", b"still good".as_ref()),
                "{path} ({cc}) request {i}: {}",
                r.h("cache-status")
            );
            edge.settle().await;
        }
    }
}

/// An error answer says nothing of whether the object may be cached: a `429` or `503` with
/// `no-store` (a shield's rate limit, an overloaded origin) must not make the key pass the
/// cache (hit-for-pass) once the origin answers again.
#[tokio::test]
async fn an_error_with_no_store_does_not_make_the_key_pass_the_cache() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (path, status) in [("/v/rl.ts", 429), ("/v/ov.ts", 503)] {
        origin.script(
            path,
            Script::status(status, "busy").header("cache-control", "no-store"),
        );
        assert_eq!(edge.get(path).await.status.as_u16(), status);
        edge.settle().await;
        origin.script(
            path,
            Script::ok("segment").header("cache-control", "max-age=60"),
        );
        let r = edge.get(path).await;
        assert_eq!(
            (r.status, r.x_cache()),
            (StatusCode::OK, "MISS"),
            "{path} after a {status}: {}",
            r.h("cache-status")
        );
        edge.settle().await;
        assert_eq!(
            edge.get(path).await.x_cache(),
            "HIT",
            "{path} after a {status}"
        );
    }
}
