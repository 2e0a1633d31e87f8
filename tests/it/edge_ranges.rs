//! Range requests: 206 from cache with the right Content-Range, 416 when unsatisfiable, ranges
//! served from a fill as soon as their bytes exist, and a ranged miss fetching the whole object
//! once.

use http::StatusCode;

use crate::support::{edge_config, Fault, Origin, Script, TestEdge};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn ranges_from_cache_are_206_and_unsatisfiable_ones_416() {
    let origin = Origin::start().await;
    let body = pattern(1000);
    origin.script(
        "/v/r.ts",
        Script::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(edge.get("/v/r.ts").await.body, body);
    edge.settle().await;

    for (range, start, end) in [
        ("bytes=100-199", 100, 200),
        ("bytes=900-", 900, 1000),
        ("bytes=-50", 950, 1000),
        ("bytes=990-5000", 990, 1000),
    ] {
        let r = edge.get_with("/v/r.ts", &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.x_cache(), "HIT");
        assert_eq!(
            r.h("content-range"),
            format!("bytes {start}-{}/1000", end - 1),
            "{range}"
        );
        assert_eq!(r.h("content-length"), (end - start).to_string());
        assert_eq!(&r.body[..], &body[start..end], "{range}");
    }

    let r = edge.get_with("/v/r.ts", &[("range", "bytes=1000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.h("content-range"), "bytes */1000");
    assert!(r.body.is_empty());
    assert_eq!(origin.count("/v/r.ts"), 1);
}

#[tokio::test]
async fn a_ranged_miss_fetches_the_whole_object_once_and_caches_it() {
    let origin = Origin::start().await;
    let body = pattern(5000);
    origin.script(
        "/v/r2.ts",
        Script::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let r = edge.get_with("/v/r2.ts", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.h("content-range"), "bytes 10-19/5000");
    assert_eq!(&r.body[..], &body[10..20]);
    edge.settle().await;

    let seen = origin.seen("/v/r2.ts");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("range"),
        Some("bytes=0-4194303"),
        "a cold object is asked for its first slice (cache.slice_size); this origin ignores \
         Range, so the whole object comes back and is cached whole"
    );
    let full = edge.get("/v/r2.ts").await;
    assert_eq!(full.x_cache(), "HIT");
    assert_eq!(full.body, body);
    let tail = edge.get_with("/v/r2.ts", &[("range", "bytes=4990-")]).await;
    assert_eq!(tail.x_cache(), "HIT");
    assert_eq!(&tail.body[..], &body[4990..]);
    assert_eq!(origin.count("/v/r2.ts"), 1);
}

/// The origin sends 2000 of 10000 bytes and stalls: a range inside those 2000 bytes is
/// complete although the fill is not.
#[tokio::test]
async fn a_range_during_a_fill_is_served_as_soon_as_its_bytes_exist() {
    let origin = Origin::start().await;
    let body = pattern(10_000);
    origin.script(
        "/v/r3.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=60")
            .fault(Fault::Stall(2_000)),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let r = edge
        .get_with("/v/r3.ts", &[("range", "bytes=100-1099")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.h("content-range"), "bytes 100-1099/10000");
    assert_eq!(&r.body[..], &body[100..1100]);
    assert!(
        origin.sent("/v/r3.ts")[0].last_byte.is_none(),
        "the origin is still stalled"
    );
    let r = edge
        .get_with("/v/r3.ts", &[("range", "bytes=1500-1999")])
        .await;
    assert_eq!(&r.body[..], &body[1500..2000]);
    assert!(r.h("cache-status").contains("collapsed"));
    assert_eq!(origin.count("/v/r3.ts"), 1);
}

/// `If-Range` with a validator that no longer matches gets the whole object as 200.
#[tokio::test]
async fn if_range_mismatch_gets_the_whole_object() {
    let origin = Origin::start().await;
    let body = pattern(300);
    origin.script(
        "/v/ir.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=60")
            .header("etag", "\"e2\""),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    edge.get("/v/ir.ts").await;
    edge.settle().await;
    let r = edge
        .get_with(
            "/v/ir.ts",
            &[("range", "bytes=0-9"), ("if-range", "\"e1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, body);
    let r = edge
        .get_with(
            "/v/ir.ts",
            &[("range", "bytes=0-9"), ("if-range", "\"e2\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &body[..10]);
}
