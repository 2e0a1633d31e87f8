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

/// An edge whose Range misses fill the whole object (`range_passthrough_above = 0`), so a
/// viewer's Range leads the fill of an answer of unknown length instead of passing.
async fn edge_filling_ranges(origin: &Origin) -> TestEdge {
    let mut raw = edge_config(origin);
    raw.cache.range_passthrough_above = Some("0".into());
    TestEdge::start(raw).await
}

/// `body` sent chunked (no `Content-Length`), stalling for good after its first 2,000 bytes.
fn chunked_stalled_at_2000(body: &[u8]) -> Script {
    Script::ok(body.to_vec())
        .header("cache-control", "max-age=60")
        .chunked()
        .fault(Fault::Stall(2_000))
}

/// Bug: a range answered from a fill whose origin answer has no `Content-Length` (chunked) got
/// the whole body as a `200`, the leader of the fill and the viewers collapsed onto it alike,
/// though ranges are promised `206` from fills in progress. Now the head waits for the range's
/// bytes and says the length is not known yet: `Content-Range: bytes a-b/*` (RFC 9110 §14.4).
#[tokio::test]
async fn a_range_during_a_chunked_fill_is_206_while_the_length_is_unknown() {
    let origin = Origin::start().await;
    let body = pattern(10_000);
    let path = "/v/c3.ts";
    origin.script(path, chunked_stalled_at_2000(&body));
    let edge = edge_filling_ranges(&origin).await;

    for (a, b) in [(100usize, 1099usize), (1500, 1999)] {
        let ask = edge
            .req(http::Method::GET, path)
            .header("range", format!("bytes={a}-{b}"));
        let resp = edge.send_streaming(ask, bytes::Bytes::new()).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "bytes={a}-{b}");
        let h = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(h("content-range"), format!("bytes {a}-{b}/*"));
        assert_eq!(h("content-length"), (b - a + 1).to_string());
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            http_body_util::BodyExt::collect(resp.into_body()),
        )
        .await
        .expect("the range's bytes within 10 s")
        .expect("the range's body completes")
        .to_bytes();
        assert_eq!(&got[..], &body[a..=b]);
    }
    assert!(
        origin.sent(path)[0].last_byte.is_none(),
        "the origin is still stalled"
    );
    assert_eq!(origin.count(path), 1, "the second viewer was collapsed");
}

/// Bug: a range whose fill has no `Content-Length` got the whole body as a `200`, also when the
/// range starts past the end (now a `416`, which a `206` head sent before the fill reached the
/// range's first byte could not have become) and for an open or suffix range (now a `206`
/// with the length, once the fill has it).
#[tokio::test]
async fn a_chunked_fill_answers_ranges_it_can_only_resolve_at_its_end() {
    let origin = Origin::start().await;
    let body = pattern(10_000);
    let edge = edge_filling_ranges(&origin).await;
    let cases = [
        ("/v/c4.ts", "bytes=20000-20099", 416, "bytes */10000", 0..0),
        (
            "/v/c5.ts",
            "bytes=9990-",
            206,
            "bytes 9990-9999/10000",
            9990..10_000,
        ),
        (
            "/v/c6.ts",
            "bytes=-10",
            206,
            "bytes 9990-9999/10000",
            9990..10_000,
        ),
        (
            "/v/c7.ts",
            "bytes=9000-20000",
            206,
            "bytes 9000-9999/10000",
            9000..10_000,
        ),
    ];
    for (path, range, status, content_range, want) in cases {
        origin.script(
            path,
            Script::ok(body.clone())
                .header("cache-control", "max-age=60")
                .chunked(),
        );
        let r = edge.get_with(path, &[("range", range)]).await;
        assert_eq!(r.status.as_u16(), status, "{range}");
        assert_eq!(r.h("content-range"), content_range, "{range}");
        assert_eq!(&r.body[..], &body[want], "{range}");
        assert_eq!(r.x_cache(), "MISS", "{range}: from the fill");
    }
}

/// Bug: `Range: bytes=0-` (ffmpeg sends it on every open) on a fill of unknown length waited for
/// the fill's end before its head, so a chunked live segment reached such a player only once the
/// origin had finished it, and a stalled origin never. All of the body is all that range asks
/// for: the `200` streams it as it arrives.
#[tokio::test]
async fn a_whole_range_on_a_chunked_fill_streams_at_once() {
    let origin = Origin::start().await;
    let body = pattern(10_000);
    let path = "/v/c0.ts";
    origin.script(path, chunked_stalled_at_2000(&body));
    let edge = edge_filling_ranges(&origin).await;
    let ask = edge
        .req(http::Method::GET, path)
        .header("range", "bytes=0-");
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        edge.send_streaming(ask, bytes::Bytes::new()),
    )
    .await
    .expect("the head while the origin still sends");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-range").is_none());
    let mut body_stream = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 2_000 {
        let frame = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            http_body_util::BodyExt::frame(&mut body_stream),
        )
        .await
        .expect("the bytes the origin sent so far")
        .expect("a frame")
        .expect("no error");
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(&got[..], &body[..got.len()]);
}

/// Bug: a Range on a fill of unknown length waited, holding a reader at the body's start, for
/// bytes the fill would never reach once it outgrew `max_object_size`: such a fill no longer
/// keeps its body and paces the origin to its readers, so with only range viewers it waited on
/// them and they on it, for good, holding the origin connection. The range viewer now gets the
/// 200 from byte 0, as before ranges on such fills were answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_on_an_oversized_chunked_fill_is_answered_not_held() {
    let origin = Origin::start().await;
    // Larger than the 16 MiB an oversized fill holds ahead of its readers.
    let body = bytes::Bytes::from(vec![5u8; 40 << 20]);
    origin.script("/v/big.mp4", Script::ok(body.clone()).chunked());
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("128MiB".into());
    raw.cache.max_object_size = Some("1MiB".into());
    raw.cache.slice_size = Some("0".into());
    // The range waits on the fill (no cold-Range probe passed to the origin instead).
    raw.cache.range_passthrough_above = Some("0".into());
    let edge = TestEdge::start(raw).await;
    let r = edge
        .get_with("/v/big.mp4", &[("range", "bytes=1000-")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.h("cache-status"));
    assert_eq!(r.body.len(), body.len(), "{:?}", r.headers);
    assert_eq!(origin.count("/v/big.mp4"), 1);
}
