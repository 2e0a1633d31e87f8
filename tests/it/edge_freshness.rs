//! Freshness over time: per-class TTLs, negative caching, 5xx never stored, 304 revalidation and
//! stale-while-revalidate. TTLs are 1 s; the edge reads tokio's clock, and the tests advance it
//! past them instead of sleeping.

use std::time::Duration;

use http::StatusCode;

use crate::support::{edge_config, ttl, until, Gate, Origin, Script, TestEdge};

/// Just past a 1 s TTL (ages are counted in whole seconds).
const PAST_TTL: Duration = Duration::from_millis(1100);

#[tokio::test]
async fn manifest_expires_after_its_ttl_while_the_segment_stays_hit() {
    let origin = Origin::start().await;
    origin.script("/live/index.m3u8", Script::ok("#EXTM3U\n#v1\n"));
    origin.script("/live/seg1.ts", Script::ok("segment-bytes"));
    let mut raw = edge_config(&origin);
    raw.cache.ttl.manifest = ttl("1s");
    let edge = TestEdge::start_with_tokio_clock(raw).await;

    assert_eq!(edge.get("/live/index.m3u8").await.x_cache(), "MISS");
    assert_eq!(edge.get("/live/seg1.ts").await.x_cache(), "MISS");
    edge.settle().await;
    assert_eq!(edge.get("/live/index.m3u8").await.x_cache(), "HIT");
    assert_eq!(edge.get("/live/seg1.ts").await.x_cache(), "HIT");

    origin.script("/live/index.m3u8", Script::ok("#EXTM3U\n#v2\n"));
    edge.advance(PAST_TTL).await;
    let m = edge.get("/live/index.m3u8").await;
    assert_eq!(m.x_cache(), "EXPIRED");
    assert_eq!(m.body, "#EXTM3U\n#v2\n");
    let s = edge.get("/live/seg1.ts").await;
    assert_eq!(s.x_cache(), "HIT");
    assert_eq!(s.body, "segment-bytes");

    assert_eq!(origin.count("/live/index.m3u8"), 2);
    assert_eq!(origin.count("/live/seg1.ts"), 1);
}

/// Bug: a manifest or segment path with segment parameters (`/live/a.mpd;jsessionid=1`) was
/// classed by its last segment as written (`mpd;jsessionid=1`, no known extension), so without
/// a `Content-Type` from the origin it was not cached at all (every request a MISS). Routes read
/// it as `/live/a.mpd`, as servlet-style origins serve it; the class is now judged on that path
/// too: manifests get the manifest TTL, segments the segment one.
#[tokio::test]
async fn paths_with_segment_parameters_are_classed_as_routes_read_them() {
    let origin = Origin::start().await;
    let manifests = ["/live/a.mpd;jsessionid=1", "/live/b.m3u8;x=1?y=2"];
    let segment = "/live/s.m4s;x=1";
    for path in manifests.iter().chain([&segment]) {
        // No Content-Type and no freshness: the path alone decides the class.
        origin.script(path.split('?').next().unwrap_or(path), Script::ok("body"));
    }
    let mut raw = edge_config(&origin);
    raw.cache.ttl.manifest = ttl("1s");
    let edge = TestEdge::start_with_tokio_clock(raw).await;

    for path in manifests.iter().chain([&segment]) {
        assert_eq!(edge.get(path).await.x_cache(), "MISS", "{path}");
        edge.settle().await;
        assert_eq!(edge.get(path).await.x_cache(), "HIT", "{path}");
    }
    edge.advance(PAST_TTL).await;
    for path in manifests {
        assert_eq!(edge.get(path).await.x_cache(), "EXPIRED", "{path}");
        assert_eq!(
            origin.count(path.split('?').next().unwrap_or(path)),
            2,
            "{path}"
        );
    }
    assert_eq!(edge.get(segment).await.x_cache(), "HIT");
    assert_eq!(origin.count(segment), 1);
}

#[tokio::test]
async fn origin_5xx_without_explicit_freshness_is_not_cached() {
    let origin = Origin::start().await;
    // With explicit freshness a 5xx is stored (tests/it/semantics.rs); a segment's class
    // default (1 day) never makes one cacheable.
    origin.script("/v/err.ts", Script::status(500, "boom"));
    origin.script("/v/busy.ts", Script::status(503, "busy"));
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;

    for path in ["/v/err.ts", "/v/busy.ts"] {
        for _ in 0..2 {
            let r = edge.get(path).await;
            assert!(r.status.is_server_error(), "{path}: {}", r.status);
            assert_ne!(r.x_cache(), "HIT");
            edge.settle().await;
        }
        assert_eq!(origin.count(path), 2, "{path}");
    }
    assert_eq!(edge.edge.ram.len(), 0);
}

#[tokio::test]
async fn not_found_is_cached_for_the_negative_ttl() {
    let origin = Origin::start().await;
    origin.script("/v/missing.ts", Script::status(404, "no such segment"));
    let mut raw = edge_config(&origin);
    raw.cache.negative_ttl = Some("1s".into());
    let edge = TestEdge::start_with_tokio_clock(raw).await;

    let r = edge.get("/v/missing.ts").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.x_cache(), "MISS");
    edge.settle().await;
    let r = edge.get("/v/missing.ts").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.body, "no such segment");
    assert_eq!(origin.count("/v/missing.ts"), 1);

    origin.script("/v/missing.ts", Script::ok("published now"));
    edge.advance(PAST_TTL).await;
    let r = edge.get("/v/missing.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "published now");
    assert_eq!(origin.count("/v/missing.ts"), 2);
}

#[tokio::test]
async fn expired_object_is_revalidated_with_if_none_match_and_a_304_keeps_the_body() {
    let origin = Origin::start().await;
    origin.script(
        "/v/rev.ts",
        Script::ok("revalidated body")
            .header("cache-control", "max-age=1")
            .header("etag", "\"r1\""),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/rev.ts").await.x_cache(), "MISS");
    edge.settle().await;

    edge.advance(PAST_TTL).await;
    let r = edge.get("/v/rev.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.x_cache(), "EXPIRED");
    assert_eq!(r.body, "revalidated body");
    assert_eq!(r.h("etag"), "\"r1\"");

    let seen = origin.seen("/v/rev.ts");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("if-none-match"), None);
    assert_eq!(seen[1].header("if-none-match"), Some("\"r1\""));
    let statuses: Vec<u16> = origin.sent("/v/rev.ts").iter().map(|s| s.status).collect();
    assert_eq!(statuses, [200, 304], "no second full body from the origin");

    edge.settle().await;
    let r = edge.get("/v/rev.ts").await;
    assert_eq!(r.x_cache(), "HIT", "the 304 refreshed the stored object");
    assert_eq!(r.body, "revalidated body");
    assert_eq!(origin.count("/v/rev.ts"), 2);
}

/// A 304 updates the stored head (RFC 9111 §4.3.4) but not the fields the stored body
/// depends on (§3.2): a revalidation answered with `Content-Encoding`, `Content-Range` or a new
/// `Vary` left the plain body labelled gzip, a range of itself, or keyed by another header.
#[tokio::test]
async fn a_304_does_not_relabel_the_stored_body() {
    let origin = Origin::start().await;
    origin.script(
        "/v/relabel.ts",
        Script::ok("plain body")
            .header("cache-control", "max-age=1")
            .header("etag", "\"r1\""),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/relabel.ts").await.x_cache(), "MISS");
    edge.settle().await;
    origin.script(
        "/v/relabel.ts",
        Script::ok("plain body")
            .header("cache-control", "max-age=60")
            .header("etag", "\"r1\"")
            .header("content-encoding", "gzip")
            .header("content-range", "bytes 0-1/2")
            .header("vary", "X-Q")
            .header("x-updated", "yes"),
    );
    edge.advance(PAST_TTL).await;
    let r = edge.get("/v/relabel.ts").await;
    assert_eq!(r.x_cache(), "EXPIRED");
    let statuses: Vec<u16> = origin
        .sent("/v/relabel.ts")
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, [200, 304]);
    edge.settle().await;
    for r in [r, edge.get("/v/relabel.ts").await] {
        assert_eq!(r.body, "plain body");
        assert_eq!(r.h("x-updated"), "yes", "the 304's other fields are taken");
        let relabelled: Vec<&str> = ["content-encoding", "content-range", "vary"]
            .into_iter()
            .filter(|h| !r.h(h).is_empty())
            .collect();
        assert!(
            relabelled.is_empty(),
            "{relabelled:?} taken from the 304 ({})",
            r.x_cache()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let origin = Origin::start().await;
    origin.script(
        "/v/swr.ts",
        Script::ok("old").header("cache-control", "max-age=1, stale-while-revalidate=30"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/swr.ts").await.x_cache(), "MISS");
    edge.settle().await;

    // The refresh is held at the origin until every stale answer is in.
    let gate = Gate::new();
    origin.script(
        "/v/swr.ts",
        Script::ok("new")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    edge.advance(PAST_TTL).await;
    let mut stale = Vec::new();
    for _ in 0..10 {
        stale.push(edge.get("/v/swr.ts"));
    }
    for r in futures_util::future::join_all(stale).await {
        assert_eq!(r.x_cache(), "STALE");
        assert_eq!(r.body, "old");
        assert!(r.h("cache-status").contains("stale-while-revalidate"));
    }
    until("the refresh reached the origin", || {
        origin.count("/v/swr.ts") == 2
    })
    .await;
    gate.open();
    edge.settle().await;

    let r = edge.get("/v/swr.ts").await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.body, "new");
    assert_eq!(
        origin.count("/v/swr.ts"),
        2,
        "exactly one background refresh"
    );
}

/// A background refresh answered `304` keeps the body and makes the object fresh again.
#[tokio::test]
async fn a_background_refresh_answered_304_makes_the_object_fresh() {
    let origin = Origin::start().await;
    origin.script(
        "/v/swr304.ts",
        Script::ok("same body")
            .header("cache-control", "max-age=1, stale-while-revalidate=30")
            .header("etag", "\"s1\""),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/swr304.ts").await.x_cache(), "MISS");
    edge.settle().await;
    edge.advance(PAST_TTL).await;
    let r = edge.get("/v/swr304.ts").await;
    assert_eq!((r.x_cache(), &r.body[..]), ("STALE", &b"same body"[..]));
    edge.settle().await;
    let r = edge.get("/v/swr304.ts").await;
    assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"same body"[..]));
    let statuses: Vec<u16> = origin
        .sent("/v/swr304.ts")
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, [200, 304]);
}

/// RFC 9211 §2.2: `ttl` is the remaining freshness, negative once stale. A copy 0.3 s past its
/// 2 s lifetime said `ttl=0` (the lifetime's whole seconds less the age's), which reads as still
/// fresh; it is `ttl=-1` now. A fresh one keeps the lifetime less its `Age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_never_says_ttl_0() {
    let origin = Origin::start().await;
    origin.script(
        "/v/ttl.ts",
        Script::ok("old").header("cache-control", "max-age=2, stale-while-revalidate=30"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    edge.get("/v/ttl.ts").await;
    edge.settle().await;
    edge.advance(Duration::from_millis(700)).await;
    let r = edge.get("/v/ttl.ts").await;
    assert_eq!((r.x_cache(), r.h("age")), ("HIT", "0"));
    assert!(
        r.h("cache-status").contains("ttl=2"),
        "{}",
        r.h("cache-status")
    );
    edge.advance(Duration::from_millis(1600)).await;
    let r = edge.get("/v/ttl.ts").await;
    assert_eq!(r.x_cache(), "STALE");
    assert!(
        r.h("cache-status").contains("ttl=-1"),
        "{}",
        r.h("cache-status")
    );
}

/// RFC 9111 §4: a response served from the cache carries its current age. A viewer joining a
/// fill whose body still streams was sent the age the head arrived with (`Age: 0`) however long
/// ago that was; it is sent that age plus the time since now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_a_fill_late_is_sent_its_current_age() {
    let origin = Origin::start().await;
    origin.script(
        "/v/long.ts",
        Script::ok(vec![b'c'; 8])
            .header("cache-control", "max-age=60")
            .trickle(8, Duration::from_millis(1600)),
    );
    let edge = std::sync::Arc::new(TestEdge::start_with_tokio_clock(edge_config(&origin)).await);
    let first = {
        let e = edge.clone();
        tokio::spawn(async move { e.get("/v/long.ts").await })
    };
    until("the fill reached the origin", || {
        origin.count("/v/long.ts") == 1
    })
    .await;
    // Its head in (the body takes 1.6 s more).
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.advance(Duration::from_secs(5)).await;
    let late = edge.get("/v/long.ts").await;
    assert_eq!(edge.collapsed(), 1, "the second viewer joined the fill");
    assert_eq!(late.body, vec![b'c'; 8]);
    let age: u64 = late.h("age").parse().expect("an Age");
    assert!(age >= 5, "joined 5 s after the head came in: Age {age}");
    let first = first.await.expect("first viewer");
    assert_eq!(first.h("age"), "0");
}
