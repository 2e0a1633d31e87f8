//! What is never shared: requests with cookies bypass the cache, answers to `Authorization`
//! are kept only when the origin marks them shareable; `private` and `Set-Cookie`
//! responses go to their own viewer only and the key is remembered as hit-for-pass; a body that
//! turns out too large to keep streams through uncached.

use std::time::Duration;

use crate::support::{edge_config, Origin, Script, TestEdge};

#[tokio::test]
async fn credentialed_requests_bypass_the_cache() {
    let origin = Origin::start().await;
    origin.script(
        "/v/auth.ts",
        Script::ok("public body").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    // `max-age` alone does not make an answer to `Authorization` shareable (RFC 9111 §3.5;
    // the shareable cases are in tests/it/conformance.rs).
    for creds in [("authorization", "Bearer abc"), ("cookie", "session=1")] {
        for _ in 0..2 {
            let r = edge.get_with("/v/auth.ts", &[creds]).await;
            assert_ne!(r.x_cache(), "HIT", "{creds:?}");
            assert_eq!(r.body, "public body");
            edge.settle().await;
        }
    }
    assert_eq!(origin.count("/v/auth.ts"), 4);
    let seen = origin.seen("/v/auth.ts");
    assert_eq!(seen[0].header("authorization"), Some("Bearer abc"));
    assert_eq!(seen[2].header("cookie"), Some("session=1"));
    assert_eq!(
        edge.edge.ram.len(),
        0,
        "nothing stored from a credentialed request"
    );

    // An anonymous viewer still gets a cached copy of its own.
    assert_eq!(edge.get("/v/auth.ts").await.x_cache(), "MISS");
    edge.settle().await;
    assert_eq!(edge.get("/v/auth.ts").await.x_cache(), "HIT");
    assert_eq!(origin.count("/v/auth.ts"), 5);
}

#[tokio::test]
async fn private_and_set_cookie_responses_are_not_shared_and_become_hit_for_pass() {
    let origin = Origin::start().await;
    origin.script(
        "/v/private.ts",
        Script::ok("for one viewer").header("cache-control", "private, max-age=60"),
    );
    origin.script(
        "/v/cookie.ts",
        Script::ok("with a cookie")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "id=42"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    for (path, body) in [
        ("/v/private.ts", "for one viewer"),
        ("/v/cookie.ts", "with a cookie"),
    ] {
        let first = edge.get(path).await;
        assert_eq!(first.body, body);
        assert_eq!(first.x_cache(), "MISS", "{path}");
        edge.settle().await;
        for _ in 0..2 {
            let r = edge.get(path).await;
            assert_eq!(r.body, body);
            assert_eq!(r.x_cache(), "BYPASS", "{path}");
            assert!(r.h("cache-status").contains("hit-for-pass"), "{path}");
        }
        assert_eq!(origin.count(path), 3, "{path}");
    }
    assert_eq!(edge.edge.ram.len(), 0);
}

/// A body without a length that outgrows `max_object_size` streams on, byte-exact, to every
/// viewer already reading it (the fill then holds a window behind the fastest); it is not
/// cached, and the next request passes to the origin (hit-for-pass) rather than joining a fill
/// that no longer has its beginning.
#[tokio::test]
async fn a_chunked_body_larger_than_the_maximum_streams_through_uncached() {
    let origin = Origin::start().await;
    let len = 3 << 20;
    let body: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    origin.script(
        "/v/huge.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=600")
            .chunked()
            .trickle(12, Duration::from_millis(240)),
    );
    let mut raw = edge_config(&origin);
    raw.cache.max_object_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;

    let (a, b) = tokio::join!(edge.get("/v/huge.ts"), edge.get("/v/huge.ts"));
    assert_eq!(a.body, body, "the first viewer got every byte");
    assert_eq!(b.body, body, "the collapsed viewer got every byte");
    assert_eq!(origin.count("/v/huge.ts"), 1, "one fill for both");
    edge.settle().await;
    assert_eq!(edge.edge.ram.len(), 0, "too large to keep");

    let next = edge.get("/v/huge.ts").await;
    assert_eq!(next.body, body);
    assert_eq!(next.x_cache(), "BYPASS");
    assert!(next.h("cache-status").contains("hit-for-pass"));
    assert_eq!(origin.count("/v/huge.ts"), 2);
}
