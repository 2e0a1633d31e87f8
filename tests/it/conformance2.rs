//! HTTP semantics external checkers look at on the edge's own answers (beyond `conformance.rs`'s
//! storage and freshness): preconditions (RFC 9110 §13) on hits and fills, Range (§14) and
//! HEAD, the 304 head (§15.4.5), `Cache-Status` (RFC 9211) in every cache state, `Date`
//! (§6.6.1), `OPTIONS *`, and the framing of answers the edge originates.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vedge::cache::sfv;

use crate::support::edge::{edge_config_for, Resp};
use crate::support::{edge_config, until, Fault, Gate, Origin, Script, TestEdge};

const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// A fresh 200 with an ETag and a Last-Modified.
fn validated(body: &'static str, etag: &str) -> Script {
    Script::ok(body)
        .header("cache-control", "max-age=3600")
        .header("etag", etag)
        .header("last-modified", LM)
}

/// The stored copy of `path`: the first GET fills, the second must be a HIT.
async fn stored(edge: &TestEdge, path: &str) {
    edge.get(path).await;
    edge.settle().await;
    assert_eq!(edge.get(path).await.x_cache(), "HIT", "{path} is stored");
}

async fn head(edge: &TestEdge, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = edge.req(Method::HEAD, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    edge.send(b, Bytes::new()).await
}

/// This node's member of a `Cache-Status` value (the last one), checked to be part of a valid
/// Structured Field List.
fn our_member(cs: &str) -> String {
    let spans = sfv::list_member_spans(cs).unwrap_or_else(|_| panic!("not an sf-list: {cs:?}"));
    let last = spans.last().unwrap_or_else(|| panic!("empty list: {cs:?}"));
    cs[last.clone()].to_string()
}

/// The parameter names of a member (`vedge; hit; ttl=3` → `["hit", "ttl"]`).
fn params(member: &str) -> Vec<String> {
    member
        .split(';')
        .skip(1)
        .map(|p| p.split('=').next().unwrap_or("").trim().to_string())
        .collect()
}

fn param<'a>(member: &'a str, name: &str) -> Option<&'a str> {
    member.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, "?1"));
        (k.trim() == name).then(|| v.trim())
    })
}

/// RFC 9110 §13.1.1 / §13.1.4 / §13.2.2: `If-Match` (strong comparison) and, without it,
/// `If-Unmodified-Since` are evaluated against the stored representation, before
/// `If-None-Match`: a failed one answers 412, on a hit and on a fill alike; the fill itself asks
/// the origin without the viewer's preconditions and stores the object.
#[tokio::test]
async fn if_match_and_if_unmodified_since_answer_412_before_other_conditionals() {
    let origin = Origin::start().await;
    origin.script("/pc/a", validated("body", "\"v1\""));
    origin.script("/pc/cold", validated("cold", "\"v1\""));
    let edge = TestEdge::start(edge_config(&origin)).await;

    // A fill: the viewer's If-Match fails against the origin's answer; the object is kept.
    let r = edge.get_with("/pc/cold", &[("if-match", "\"v0\"")]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(r.body.is_empty());
    edge.settle().await;
    assert_eq!(origin.seen("/pc/cold")[0].header("if-match"), None);
    let r = edge.get("/pc/cold").await;
    assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"cold"[..]));

    stored(&edge, "/pc/a").await;
    let earlier = "Sat, 05 Nov 1994 08:49:37 GMT";
    for (headers, status) in [
        (&[("if-match", "\"v1\"")][..], StatusCode::OK),
        (&[("if-match", "*")][..], StatusCode::OK),
        (&[("if-match", "\"x\", \"v1\"")][..], StatusCode::OK),
        (
            &[("if-match", "\"v2\"")][..],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            &[("if-match", "W/\"v1\"")][..],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            &[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")][..],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            &[("if-match", "\"v2\""), ("range", "bytes=0-1")][..],
            StatusCode::PRECONDITION_FAILED,
        ),
        (&[("if-unmodified-since", LM)][..], StatusCode::OK),
        (
            &[("if-unmodified-since", earlier)][..],
            StatusCode::PRECONDITION_FAILED,
        ),
        (&[("if-unmodified-since", "not a date")][..], StatusCode::OK),
        (
            &[("if-match", "\"v1\""), ("if-unmodified-since", earlier)][..],
            StatusCode::OK,
        ),
    ] {
        let r = edge.get_with("/pc/a", headers).await;
        assert_eq!(r.status, status, "{headers:?}");
        if status == StatusCode::PRECONDITION_FAILED {
            assert!(r.body.is_empty(), "{headers:?}");
            assert_eq!(r.h("content-length"), "0", "{headers:?}");
        } else {
            assert_eq!(r.body, "body", "{headers:?}");
        }
    }
    assert_eq!(
        origin.count("/pc/a"),
        1,
        "all answered from the stored copy"
    );
}

/// RFC 9110 §13.1.2: `If-None-Match` is a list of entity-tags compared weakly, over every field
/// line; an entity-tag may hold commas and obs-text. A lowercase `w/` is not the weakness flag.
#[tokio::test]
async fn if_none_match_is_a_list_of_entity_tags_read_as_bytes() {
    let origin = Origin::start().await;
    origin.script(
        "/inm/obs",
        Script::ok("o")
            .header("cache-control", "max-age=3600")
            .header("etag", "\"abcdef\u{fc}\""),
    );
    origin.script("/inm/comma", validated("c", "\"a,b\""));
    origin.script("/inm/lower", validated("l", "w/\"x\""));
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/inm/obs", "/inm/comma", "/inm/lower"] {
        stored(&edge, path).await;
    }
    // ETag: "abcdefü" as the origin sent it (UTF-8 bytes): the same bytes match.
    let b = edge.req(Method::GET, "/inm/obs").header(
        "if-none-match",
        http::HeaderValue::from_bytes("\"abcdef\u{fc}\"".as_bytes()).expect("obs-text"),
    );
    let r = edge.send(b, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "obs-text");
    assert_eq!(r.headers["etag"].as_bytes(), "\"abcdef\u{fc}\"".as_bytes());

    for (path, inm, status) in [
        ("/inm/comma", "\"a,b\"", StatusCode::NOT_MODIFIED),
        ("/inm/comma", "\"x\", \"a,b\"", StatusCode::NOT_MODIFIED),
        ("/inm/comma", "\"a\"", StatusCode::OK),
        ("/inm/comma", "\"b\"", StatusCode::OK),
        ("/inm/lower", "W/\"x\"", StatusCode::OK),
        ("/inm/lower", "\"x\"", StatusCode::OK),
        ("/inm/lower", "w/\"x\"", StatusCode::NOT_MODIFIED),
    ] {
        let r = edge.get_with(path, &[("if-none-match", inm)]).await;
        assert_eq!(r.status, status, "{path} {inm}");
    }
    let b = edge
        .req(Method::GET, "/inm/comma")
        .header("if-none-match", "\"x\"")
        .header("if-none-match", "\"a,b\"");
    assert_eq!(
        edge.send(b, Bytes::new()).await.status,
        StatusCode::NOT_MODIFIED
    );
}

/// RFC 9111 §4.3.2: without `Last-Modified`, a cache evaluates `If-Modified-Since` against the
/// stored response's `Date`; an invalid date, or `If-None-Match` alongside, means it is not
/// looked at.
#[tokio::test]
async fn if_modified_since_uses_the_stored_date_without_last_modified() {
    let origin = Origin::start().await;
    let date = "Sun, 06 Nov 1994 08:49:37 GMT";
    origin.script(
        "/ims/date",
        Script::ok("d")
            .header("cache-control", "max-age=3600")
            .header("date", date)
            .header("age", "0"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/ims/date").await;
    for (headers, status) in [
        (&[("if-modified-since", date)][..], StatusCode::NOT_MODIFIED),
        (
            &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")][..],
            StatusCode::OK,
        ),
        (&[("if-modified-since", "06 Nov 1994")][..], StatusCode::OK),
        (
            &[("if-modified-since", date), ("if-none-match", "\"zz\"")][..],
            StatusCode::OK,
        ),
    ] {
        let r = edge.get_with("/ims/date", headers).await;
        assert_eq!(r.status, status, "{headers:?}");
    }
}

/// RFC 9110 §15.4.5: a 304 carries the fields a 200 would have that guide caches (`ETag`,
/// `Cache-Control`, `Expires`, `Vary`, `Content-Location`, `Date`) and, on the wire, no content
/// and no `Content-Length` or `Content-Type` of the body it does not carry.
#[tokio::test]
async fn not_modified_carries_the_caching_fields_and_no_content_metadata() {
    let origin = Origin::start().await;
    origin.script(
        "/nm/a",
        validated("0123456789", "\"v1\"")
            .header("expires", "Thu, 01 Dec 2099 16:00:00 GMT")
            .header("vary", "accept-encoding")
            .header("content-location", "/nm/a.txt")
            .header("content-type", "text/plain"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/nm/a").await;
    let raw = edge
        .raw(b"GET /nm/a HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw.status(), 304, "{}", raw.text());
    for name in [
        "etag",
        "cache-control",
        "expires",
        "vary",
        "content-location",
        "date",
        "last-modified",
        "cache-status",
    ] {
        assert!(
            raw.header(name).is_some(),
            "304 lacks {name}: {}",
            raw.text()
        );
    }
    for name in [
        "content-length",
        "content-type",
        "transfer-encoding",
        "accept-ranges",
    ] {
        assert!(raw.header(name).is_none(), "304 has {name}: {}", raw.text());
    }
    assert!(raw.split().1.is_empty(), "no body: {}", raw.text());
}

/// RFC 9110 §14.2: Range is defined for GET only, so a HEAD with Range gets the 200 head with
/// the whole length (on a hit, on a miss and on a sliced object); GET ranges stay 206.
#[tokio::test]
async fn range_on_head_is_ignored() {
    let origin = Origin::start().await;
    origin.script("/rh/a", validated("0123456789", "\"v1\""));
    origin.script("/rh/cold", validated("0123456789", "\"v1\""));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = head(&edge, "/rh/cold", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status, StatusCode::OK, "miss");
    assert_eq!(r.h("content-length"), "10");
    assert!(r.headers.get("content-range").is_none());
    stored(&edge, "/rh/a").await;
    let r = head(&edge, "/rh/a", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status, StatusCode::OK, "hit");
    assert_eq!(
        (r.h("content-length"), r.h("accept-ranges")),
        ("10", "bytes")
    );
    assert!(r.headers.get("content-range").is_none());
    let r = head(&edge, "/rh/a", &[("range", "bytes=50-")]).await;
    assert_eq!(r.status, StatusCode::OK, "no 416 for a HEAD");
    let r = edge.get_with("/rh/a", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"01"[..])
    );
}

/// Range on a sliced object: a HEAD gets the whole length (§14.2), a GET its 206.
#[tokio::test]
async fn range_on_head_of_a_sliced_object_is_ignored() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    origin.script(
        "/big/a.mp4",
        Script::ok(body.clone())
            .header("cache-control", "max-age=3600")
            .header("etag", "\"s1\"")
            .ranged(),
    );
    let mut raw = edge_config(&origin);
    raw.cache.slice_size = Some("64KiB".into());
    let edge = TestEdge::start(raw).await;
    let r = edge
        .get_with("/big/a.mp4", &[("range", "bytes=70000-70009")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &body[70_000..70_010]);
    edge.settle().await;
    let r = head(&edge, "/big/a.mp4", &[("range", "bytes=70000-70009")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("content-length"), "300000");
    assert!(r.headers.get("content-range").is_none());
    let r = edge
        .get_with("/big/a.mp4", &[("range", "bytes=70000-70009")])
        .await;
    assert_eq!(
        (r.status, r.x_cache()),
        (StatusCode::PARTIAL_CONTENT, "HIT")
    );
}

/// RFC 9110 §14: single ranges of each form, `If-Range` with a strong tag or the exact date,
/// weak or stale validators and invalid or multiple ranges get the whole 200; an unsatisfiable
/// range gets 416 with `Content-Range: bytes */len`; the 206 keeps the validators.
#[tokio::test]
async fn ranges_and_if_range_on_a_hit() {
    let origin = Origin::start().await;
    origin.script("/rg/a", validated("0123456789", "\"v1\""));
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/rg/a").await;
    for (headers, status, body, content_range) in [
        (
            &[("range", "bytes=2-4")][..],
            206,
            "234",
            Some("bytes 2-4/10"),
        ),
        (
            &[("range", "bytes=-3")][..],
            206,
            "789",
            Some("bytes 7-9/10"),
        ),
        (
            &[("range", "bytes=8-")][..],
            206,
            "89",
            Some("bytes 8-9/10"),
        ),
        (
            &[("range", "bytes=8-100")][..],
            206,
            "89",
            Some("bytes 8-9/10"),
        ),
        (&[("range", "bytes=10-")][..], 416, "", Some("bytes */10")),
        (&[("range", "bytes=0-1,4-5")][..], 200, "0123456789", None),
        (&[("range", "bytes=abc")][..], 200, "0123456789", None),
        (&[("range", "bytes=4-2")][..], 200, "0123456789", None),
        (&[("range", "pages=1-2")][..], 200, "0123456789", None),
        (
            &[("range", "bytes=0-1"), ("if-range", "\"v1\"")][..],
            206,
            "01",
            Some("bytes 0-1/10"),
        ),
        (
            &[("range", "bytes=0-1"), ("if-range", LM)][..],
            206,
            "01",
            Some("bytes 0-1/10"),
        ),
        (
            &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")][..],
            200,
            "0123456789",
            None,
        ),
        (
            &[("range", "bytes=0-1"), ("if-range", "\"v0\"")][..],
            200,
            "0123456789",
            None,
        ),
        (
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Mon, 07 Nov 1994 08:49:37 GMT"),
            ][..],
            200,
            "0123456789",
            None,
        ),
        (
            &[("range", "bytes=0-1"), ("if-none-match", "\"v1\"")][..],
            304,
            "",
            None,
        ),
    ] {
        let r = edge.get_with("/rg/a", headers).await;
        assert_eq!(r.status.as_u16(), status, "{headers:?}");
        assert_eq!(r.body, body, "{headers:?}");
        assert_eq!(
            r.headers.get("content-range").and_then(|v| v.to_str().ok()),
            content_range,
            "{headers:?}"
        );
        if status == 206 {
            assert_eq!(r.h("content-length"), body.len().to_string(), "{headers:?}");
            assert_eq!((r.h("etag"), r.h("last-modified")), ("\"v1\"", LM));
        }
        if status != 304 {
            assert_eq!(r.h("accept-ranges"), "bytes", "{headers:?}");
        }
    }
    assert_eq!(origin.count("/rg/a"), 1);

    // §13.1.5 / §8.8.2.2: a `Last-Modified` in the same second as the stored `Date` is a weak
    // validator, so an `If-Range` naming it gets the whole representation.
    origin.script(
        "/rg/weak",
        validated("0123456789", "\"v1\"").header("date", LM),
    );
    stored(&edge, "/rg/weak").await;
    let r = edge
        .get_with("/rg/weak", &[("range", "bytes=0-1"), ("if-range", LM)])
        .await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"0123456789"[..])
    );
}

/// A HEAD on a miss fills the object with a GET (as nginx's and Varnish's HEAD→GET do): the HEAD
/// gets the head with the body's `Content-Length`, and the GET viewers collapsed onto that
/// HEAD-led fill get the whole body; afterwards both are hits.
#[tokio::test]
async fn head_led_fill_gives_get_viewers_the_body() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/hd/a",
        Script::ok("0123456789")
            .header("cache-control", "max-age=3600")
            .gate(&gate),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let lead = head(&edge, "/hd/a", &[]);
    let gets = async {
        until("the HEAD's fill reached the origin", || {
            origin.count("/hd/a") == 1
        })
        .await;
        let both = async { tokio::join!(edge.get("/hd/a"), edge.get("/hd/a")) };
        let open = async {
            until("two GETs collapsed", || edge.collapsed() >= 2).await;
            gate.open();
        };
        tokio::join!(both, open).0
    };
    let (h, (a, b)) = tokio::join!(lead, gets);
    assert_eq!(h.status, StatusCode::OK);
    assert!(h.body.is_empty());
    assert_eq!(h.h("content-length"), "10");
    for r in [&a, &b] {
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"0123456789"[..])
        );
    }
    assert_eq!(origin.seen("/hd/a")[0].method, "GET");
    edge.settle().await;
    let r = head(&edge, "/hd/a", &[]).await;
    assert_eq!((r.x_cache(), r.h("content-length")), ("HIT", "10"));
    assert!(r.body.is_empty());
    assert_eq!(edge.get("/hd/a").await.body, "0123456789");
    assert_eq!(origin.count("/hd/a"), 1);
    // On the wire: the HEAD's Content-Length is the GET body's, and no body follows.
    let raw = edge
        .raw(b"HEAD /hd/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw.header("content-length").as_deref(), Some("10"));
    assert!(raw.split().1.is_empty());
}

/// RFC 9211 §2.1 / §3: a stale response served without going forward (stale-while-revalidate,
/// a viewer's `max-stale`) is a hit with a negative `ttl`, never `hit` and `fwd` at once; a stale
/// response standing in for a failed origin (stale-if-error) went forward: `fwd=stale` with the
/// origin's status, no `hit`.
#[tokio::test(flavor = "current_thread")]
async fn stale_answers_say_hit_or_fwd_never_both() {
    let origin = Origin::start().await;
    origin.script(
        "/cs/swr",
        Script::ok("x").header("cache-control", "max-age=1, stale-while-revalidate=600"),
    );
    origin.script(
        "/cs/sie",
        Script::ok("x").header("cache-control", "max-age=1, stale-if-error=600"),
    );
    origin.script(
        "/cs/down",
        Script::ok("x").header("cache-control", "max-age=1, stale-if-error=600"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    for p in ["/cs/swr", "/cs/sie", "/cs/down"] {
        edge.get(p).await;
    }
    edge.settle().await;
    origin.script("/cs/sie", Script::status(503, "down"));
    origin.script("/cs/down", Script::ok("x").fault(Fault::Close));
    // Stale by 19 s, and under the 30 s header-read timeout: advancing the paused clock past it
    // makes the edge close the test client's idle keep-alive connection while the client may
    // be reusing it (`IncompleteMessage`, seen in CI).
    edge.advance(Duration::from_secs(20)).await;

    let r = edge.get("/cs/swr").await;
    assert_eq!(r.x_cache(), "STALE");
    let m = our_member(r.h("cache-status"));
    assert!(params(&m).contains(&"hit".to_string()), "{m}");
    assert_eq!(param(&m, "fwd"), None, "{m}");
    assert!(
        param(&m, "ttl")
            .and_then(|t| t.parse::<i64>().ok())
            .is_some_and(|t| t < 0),
        "{m}"
    );

    let r = edge.get("/cs/sie").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "STALE"));
    let m = our_member(r.h("cache-status"));
    assert!(!params(&m).contains(&"hit".to_string()), "{m}");
    assert_eq!(
        (param(&m, "fwd"), param(&m, "fwd-status")),
        (Some("stale"), Some("503")),
        "{m}"
    );

    let r = edge.get("/cs/down").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "STALE"));
    let m = our_member(r.h("cache-status"));
    assert!(!params(&m).contains(&"hit".to_string()), "{m}");
    assert_eq!(param(&m, "fwd"), Some("stale"), "{m}");
}

/// RFC 9211 §2.2: `fwd=request` when a fresh stored response was refused by the request's own
/// directives; `fwd=stale` when it had expired; `fwd=method` for a method a cache cannot
/// answer; `fwd=bypass` for the edge's own choice (a `Cookie` on a non-public route).
#[tokio::test(flavor = "current_thread")]
async fn fwd_says_why_the_request_went_forward() {
    let origin = Origin::start().await;
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    origin.script("/fw/a", validated("a", "\"v1\""));
    stored(&edge, "/fw/a").await;
    origin.script(
        "/fw/a",
        Script::status(304, "")
            .header("cache-control", "max-age=3600")
            .header("etag", "\"v1\""),
    );
    let r = edge
        .get_with("/fw/a", &[("cache-control", "no-cache")])
        .await;
    let m = our_member(r.h("cache-status"));
    assert_eq!(
        (param(&m, "fwd"), param(&m, "fwd-status")),
        (Some("request"), Some("304")),
        "{m}"
    );

    origin.script("/fw/b", validated("b", "\"v1\""));
    stored(&edge, "/fw/b").await;
    origin.script("/fw/b", validated("b2", "\"v2\""));
    let r = edge
        .get_with("/fw/b", &[("cache-control", "max-age=0")])
        .await;
    assert_eq!(r.body, "b2");
    let m = our_member(r.h("cache-status"));
    assert_eq!(param(&m, "fwd"), Some("request"), "{m}");

    origin.script(
        "/fw/c",
        Script::ok("c").header("cache-control", "max-age=1"),
    );
    edge.get("/fw/c").await;
    edge.settle().await;
    edge.advance(Duration::from_secs(5)).await;
    let m = our_member(edge.get("/fw/c").await.h("cache-status"));
    assert_eq!(param(&m, "fwd"), Some("stale"), "{m}");

    origin.script("/fw/post", Script::ok("p"));
    let r = edge
        .send(edge.req(Method::POST, "/fw/post"), Bytes::from_static(b"x"))
        .await;
    let m = our_member(r.h("cache-status"));
    assert_eq!(param(&m, "fwd"), Some("method"), "{m}");

    let r = edge.get_with("/fw/post", &[("cookie", "a=b")]).await;
    let m = our_member(r.h("cache-status"));
    assert_eq!(param(&m, "fwd"), Some("bypass"), "{m}");
}

/// RFC 9211 §2: an intermediary does not add a member to responses it generates itself (its
/// example: a 400 for a malformed request); those still get `Date` and a `Content-Length`.
#[tokio::test]
async fn answers_the_edge_generates_itself_carry_no_cache_status() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for req in [
        &b"TRACE /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nCDN-Loop: vedge\r\nConnection: close\r\n\r\n",
    ] {
        let raw = edge.raw(req).await;
        let text = String::from_utf8_lossy(req).into_owned();
        assert!((400..600).contains(&raw.status()), "{text}: {}", raw.text());
        assert!(
            raw.header("cache-status").is_none(),
            "{text}: {}",
            raw.text()
        );
        assert!(raw.header("date").is_some(), "{text}: {}", raw.text());
        let body = raw.split().1.len().to_string();
        assert_eq!(
            raw.header("content-length"),
            Some(body),
            "{text}: {}",
            raw.text()
        );
    }
    assert_eq!(origin.count("/x"), 0);
}

/// Every cache state's member parses as part of a Structured Field List, with the cache named
/// by a Token or, when `cdn_id` cannot be one (a digit first), a String.
#[tokio::test]
async fn cache_status_is_a_valid_sf_list_in_every_state() {
    let origin = Origin::start().await;
    origin.script(
        "/sf/a",
        validated("a", "\"v1\"").header("cache-status", "up; hit"),
    );
    origin.script(
        "/sf/nostore",
        Script::ok("n").header("cache-control", "no-store"),
    );
    let mut raw = edge_config(&origin);
    raw.cdn_id = Some("1cdn".into());
    let edge = TestEdge::start(raw).await;
    let mut seen = Vec::new();
    seen.push(edge.get("/sf/a").await);
    edge.settle().await;
    seen.push(edge.get("/sf/a").await);
    seen.push(edge.get_with("/sf/a", &[("if-none-match", "\"v1\"")]).await);
    seen.push(edge.get_with("/sf/a", &[("range", "bytes=0-0")]).await);
    seen.push(edge.get("/sf/nostore").await);
    edge.settle().await;
    seen.push(edge.get("/sf/nostore").await);
    for r in &seen {
        let cs = r.h("cache-status");
        let m = our_member(cs);
        assert!(m.starts_with("\"1cdn\";"), "{cs}");
        let p = params(&m);
        assert!(
            p.contains(&"hit".to_string()) != p.contains(&"fwd".to_string()),
            "{cs}"
        );
    }
    assert!(seen[1].h("cache-status").starts_with("up; hit, "));
}

/// RFC 9110 §9.3.7: `OPTIONS *` asks about the server; the edge answers it (200, `Allow`, no
/// content) rather than passing it on.
#[tokio::test]
async fn options_asterisk_is_answered_by_the_edge() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let raw = edge
        .raw(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw.status(), 200, "{}", raw.text());
    assert!(
        raw.header("allow").is_some_and(|a| a.contains("GET")),
        "{}",
        raw.text()
    );
    assert_eq!(raw.header("content-length").as_deref(), Some("0"));
    assert!(raw.header("date").is_some());
}

/// RFC 9110 §10.1.1: `Expect: 100-continue` on a GET without content is answered at once (the
/// final response; a 100 is optional), not after the client's wait times out.
#[tokio::test]
async fn expect_100_continue_on_a_get_is_answered() {
    let origin = Origin::start().await;
    origin.script(
        "/ex/a",
        Script::ok("a").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let raw = edge
        .raw(b"GET /ex/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await;
    let text = raw.text();
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("\r\n\r\na"), "{text}");
}

/// An origin on raw sockets answering every request with `response` (no `Date`: hyper's
/// servers always add one).
async fn raw_origin(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 65536 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return;
                    };
                    seen.drain(..end + 4);
                    if s.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// RFC 9110 §6.6.1: a response that came without `Date` is stored with the time the edge
/// received it (by the edge's clock), so its hits carry that `Date` with a growing `Age`,
/// instead of a new `Date` on every hit.
#[tokio::test(flavor = "current_thread")]
async fn a_response_without_date_gets_the_time_it_was_received() {
    let url = raw_origin(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=100000\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let edge = TestEdge::start_with_tokio_clock(edge_config_for(url)).await;
    // The edge's clock a day ahead of the wall clock hyper would stamp a response with.
    edge.advance(Duration::from_secs(86_400)).await;
    let miss = edge.get("/nd/a").await;
    edge.settle().await;
    // (Short of the idle keep-alive timeout, which would close the client's pooled connection.)
    edge.advance(Duration::from_secs(3)).await;
    let hit = edge.get("/nd/a").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.h("date"), miss.h("date"));
    let date = httpdate::parse_http_date(hit.h("date")).expect("a Date");
    let ahead = date
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    assert!(
        ahead > 80_000,
        "Date is the edge's receive time: {}",
        hit.h("date")
    );
    let age: u64 = hit.h("age").parse().expect("Age");
    assert!((3..10).contains(&age), "Age {age}");
}

/// RFC 9213 §2.2 with RFC 8941: `CDN-Cache-Control` is a Structured Field Dictionary, whose
/// keys are lowercase; `MaX-aGe=3600` or `max-age= 100` make the whole field invalid, and the
/// edge falls back to `Cache-Control` (here `no-store`). A large `max-age` is honoured.
#[tokio::test]
async fn cdn_cache_control_keys_are_lowercase_structured_fields() {
    let origin = Origin::start().await;
    for (i, cdn) in ["MaX-aGe=3600", "max-age= 100", "max-age=3600;"]
        .iter()
        .enumerate()
    {
        origin.script(
            &format!("/ccc/{i}"),
            Script::ok("x")
                .header("cache-control", "no-store")
                .header("cdn-cache-control", cdn),
        );
    }
    origin.script(
        "/ccc/big",
        Script::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=99999999999"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for i in 0..3 {
        let path = format!("/ccc/{i}");
        edge.get(&path).await;
        edge.settle().await;
        assert_ne!(edge.get(&path).await.x_cache(), "HIT", "{path}");
    }
    stored(&edge, "/ccc/big").await;
}

/// RFC 9111 §4.3.5: a HEAD the edge passes to the origin (here for a `Cookie`; fills always
/// ask with GET) whose 200 names another `ETag` makes the stored GET response stale (the next
/// GET revalidates it); one naming the stored validators leaves it in place.
#[tokio::test]
async fn a_passed_head_naming_another_etag_retires_the_stored_get() {
    let origin = Origin::start().await;
    origin.script("/hp/a", validated("one", "\"v1\""));
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/hp/a").await;
    let r = head(&edge, "/hp/a", &[("cookie", "s=1")]).await;
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(
        origin
            .seen("/hp/a")
            .last()
            .map(|s| s.method.clone())
            .as_deref(),
        Some("HEAD")
    );
    assert_eq!(edge.get("/hp/a").await.x_cache(), "HIT", "same ETag: kept");

    origin.script("/hp/a", validated("two", "\"v2\""));
    head(&edge, "/hp/a", &[("cookie", "s=1")]).await;
    let r = edge.get("/hp/a").await;
    assert_eq!((r.x_cache(), &r.body[..]), ("EXPIRED", &b"two"[..]));
}

/// The HEAD is one viewer's request, with its own `Accept-Encoding`: an origin that answers a
/// gzip HEAD with a weak `ETag` (nginx's `gzip on`) named "another representation" for every
/// stored object, and the stored GET response was removed, so one HEAD with a cookie made the
/// next viewer fetch the whole object again, as often as anyone liked. The stored response is
/// now only made stale (§4.3.5's words): the next GET revalidates it and the origin answers
/// 304, no body.
#[tokio::test]
async fn a_passed_head_naming_another_etag_costs_the_origin_a_304_not_the_object() {
    let origin = Origin::start().await;
    origin.script("/hp/seg.ts", validated("segment bytes", "\"v1\""));
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/hp/seg.ts").await;
    // What the origin answers a gzip HEAD: the weak form of the stored tag.
    origin.script("/hp/seg.ts", validated("segment bytes", "W/\"v1\""));
    let r = head(
        &edge,
        "/hp/seg.ts",
        &[("cookie", "s=1"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.x_cache(), "BYPASS");
    origin.script("/hp/seg.ts", validated("segment bytes", "\"v1\""));
    let r = edge.get("/hp/seg.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"segment bytes");
    let seen = origin.seen("/hp/seg.ts");
    let last = seen.last().expect("the origin saw the revalidation");
    assert_eq!(
        (last.method.as_str(), last.header("if-none-match")),
        ("GET", Some("\"v1\"")),
        "the stored GET was removed and fetched whole again (x-cache {})",
        r.x_cache()
    );
    assert_eq!(edge.get("/hp/seg.ts").await.x_cache(), "HIT");
}

/// RFC 9112 §6.3: the 412 and 416 the edge builds from a stored response are framed by
/// `Content-Length: 0` (never chunked), and a 416 says `Content-Range: bytes */len`.
#[tokio::test]
async fn edge_built_412_and_416_are_framed_by_content_length() {
    let origin = Origin::start().await;
    origin.script("/fr/a", validated("0123456789", "\"v1\""));
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/fr/a").await;
    for (req, status) in [
        (
            &b"GET /fr/a HTTP/1.1\r\nHost: x\r\nRange: bytes=20-\r\nConnection: close\r\n\r\n"[..],
            416,
        ),
        (
            b"GET /fr/a HTTP/1.1\r\nHost: x\r\nIf-Match: \"v0\"\r\nConnection: close\r\n\r\n",
            412,
        ),
    ] {
        let raw = edge.raw(req).await;
        assert_eq!(raw.status(), status, "{}", raw.text());
        assert_eq!(
            raw.header("content-length").as_deref(),
            Some("0"),
            "{}",
            raw.text()
        );
        assert!(raw.header("transfer-encoding").is_none(), "{}", raw.text());
        assert!(raw.split().1.is_empty(), "{}", raw.text());
        if status == 416 {
            assert_eq!(raw.header("content-range").as_deref(), Some("bytes */10"));
        }
    }
}

/// RFC 9110 §8.6: no `Content-Length` in a 204. Over h1 hyper drops it; over h2 what the edge
/// puts in the head goes out as it is, so a stored 204 answered from the cache must not get
/// `content-length: 0`.
#[tokio::test]
async fn a_cached_204_carries_no_content_length_over_h2() {
    use http_body_util::{BodyExt, Empty};
    let origin = Origin::start().await;
    origin.script(
        "/nc/beacon",
        Script::status(204, "").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let mut send = edge.h2().await;
    for round in ["MISS", "HIT"] {
        let req = http::Request::get(format!("http://{}/nc/beacon", edge.addr))
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let r = send.send_request(req).await.expect("answer");
        assert_eq!(r.status(), 204, "{round}");
        let cl = r.headers().get("content-length").cloned();
        let x = r.headers().get("x-cache").cloned();
        let _ = r.into_body().collect().await;
        edge.settle().await;
        assert_eq!(cl, None, "{round} ({x:?}) sent Content-Length");
    }
}

/// RFC 9110 §14.1.1: a suffix range of non-zero length is satisfiable, even on an empty
/// representation; no 206 can describe it, so the whole (empty) 200 answers, not a 416.
#[tokio::test]
async fn a_suffix_range_on_an_empty_object_is_a_200() {
    let origin = Origin::start().await;
    origin.script(
        "/nc/empty.ts",
        Script::ok("").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(edge.get("/nc/empty.ts").await.status, StatusCode::OK);
    edge.settle().await;
    let r = edge
        .get_with("/nc/empty.ts", &[("range", "bytes=-5")])
        .await;
    assert_eq!(
        (r.status, r.h("content-length"), r.h("content-range")),
        (StatusCode::OK, "0", ""),
        "{}",
        r.h("cache-status")
    );
}

/// One viewer's `no-cache` (or `max-age=0`) refetches a copy that is still fresh for everyone
/// else. When that refetch met an error carrying a lifetime (a maintenance 503 with `max-age`,
/// a 429 the viewer's own refetches provoked, a plain 404 kept for `negative_ttl`), the error
/// replaced the fresh copy for every viewer. It is now that viewer's answer alone.
#[tokio::test]
async fn a_viewers_refetch_of_a_fresh_copy_never_replaces_it_with_an_error() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let errors = [
        Script::status(503, "maint").header("cache-control", "max-age=60"),
        Script::status(500, "oops").header("cache-control", "max-age=60"),
        Script::status(429, "slow").header("cache-control", "max-age=60"),
        Script::status(404, "gone"),
        Script::status(410, "gone").header("cache-control", "no-store"),
    ];
    for (i, err) in errors.into_iter().enumerate() {
        for directive in ["no-cache", "max-age=0"] {
            let path = format!("/fk/{i}-{directive}.json");
            origin.script(&path, validated("good", "\"v1\""));
            stored(&edge, &path).await;
            origin.script(&path, err.clone());
            let r = edge.get_with(&path, &[("cache-control", directive)]).await;
            assert!(r.status.as_u16() >= 400, "{path}: the viewer's own answer");
            edge.settle().await;
            let r = edge.get(&path).await;
            assert_eq!(
                (r.status.as_u16(), r.x_cache(), &r.body[..]),
                (200, "HIT", &b"good"[..]),
                "{path}: another viewer after the refetch"
            );
        }
    }
}

/// Bug: a client that shuts its write side once its request is out (`printf ... | ncat`, socat,
/// HTTP/1.0 tools; RFC 9293 §3.6) got nothing for a request that waited on the origin: the
/// connection was closed at the EOF, before the answer (a HIT, answered at once, got through).
/// The whole answer now arrives, and the connection closes after it.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let origin = Origin::start().await;
    let body = vec![b'v'; 300_000];
    origin.script(
        "/v/seg.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=600")
            .head_delay(Duration::from_millis(300)),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let request = format!("GET /v/seg.ts HTTP/1.1\r\nHost: {}\r\n\r\n", edge.addr);
    for want in ["MISS", "HIT"] {
        let mut s = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("request");
        s.shutdown().await.expect("half-close");
        let r = crate::support::edge::read_raw(&mut s).await;
        assert_eq!(r.status(), 200, "{want}: {}", r.text());
        assert_eq!(r.header("x-cache").as_deref(), Some(want));
        assert!(r.split().1 == &body[..], "{want}: the whole body");
        assert!(r.closed, "{want}: closed after the answer");
        edge.settle().await;
    }
    assert_eq!(origin.count("/v/seg.ts"), 1);
}
