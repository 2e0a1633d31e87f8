//! Cache semantics an outside RFC review found wrong (RFC 9110, 9111, 9211), each checked as a
//! viewer and the origin see it.

use http::StatusCode;

use crate::support::{edge_config, Origin, Script, TestEdge};

const BODY: &[u8] = b"0123456789abcdefghij";

/// Bug: a plain GET of an object whose origin answers the edge's slice probe (`Range:
/// bytes=0-4194303`, which the viewer never sent) with a valid 206 of unknown complete length
/// (`Content-Range: bytes 0-19/*`, RFC 9110 §14.4) was a 502: the slice hook rejected the `*`
/// as "206 without a valid Content-Range". Now such an object is not sliced: it is fetched
/// whole, without `Range`, and stored as the 200 the origin sends; a viewer's own range is cut
/// from it, and the 206 is never stored as the whole.
#[tokio::test]
async fn a_206_of_unknown_length_to_the_slice_probe_fetches_the_object_whole() {
    let origin = Origin::start().await;
    let headers = |s: Script| {
        s.header("cache-control", "max-age=100")
            .header("etag", "\"s\"")
            .header("content-type", "video/mp4")
    };
    for path in ["/g/growing.mp4", "/g/ranged.mp4"] {
        origin.script(
            path,
            headers(Script::ok(BODY)).on_range(
                headers(Script::status(206, BODY)).header("content-range", "bytes 0-19/*"),
            ),
        );
    }
    let mut raw = edge_config(&origin);
    raw.cache.slice_size = Some("4MiB".into());
    let edge = TestEdge::start(raw).await;

    let r = edge.get("/g/growing.mp4").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.h("cache-status"));
    assert_eq!(&r.body[..], BODY);
    edge.settle().await;
    let ranges: Vec<Option<String>> = origin
        .seen("/g/growing.mp4")
        .iter()
        .map(|s| s.header("range").map(str::to_string))
        .collect();
    assert_eq!(
        ranges,
        [Some("bytes=0-4194303".to_string()), None],
        "the probe, then the whole object"
    );
    let again = edge.get("/g/growing.mp4").await;
    assert_eq!((again.status, again.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(&again.body[..], BODY);
    assert_eq!(again.h("content-range"), "");
    assert_eq!(origin.count("/g/growing.mp4"), 2);

    // A viewer's own range of such an object: its bytes, cut from the whole object.
    let r = edge
        .get_with("/g/ranged.mp4", &[("range", "bytes=2-4")])
        .await;
    assert_eq!(
        r.status,
        StatusCode::PARTIAL_CONTENT,
        "{}",
        r.h("cache-status")
    );
    assert_eq!(&r.body[..], b"234");
    assert_eq!(r.h("content-range"), "bytes 2-4/20");
}
