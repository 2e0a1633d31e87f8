//! Regression tests from the sixth adversarial and conformance review (a viewer's claims of its
//! own address on passes, HTTP/1.1 requests without `Host`, a 304 the edge did not ask for,
//! conditionals on manifests rewritten per viewer): each proves one rule and fails on the code
//! before its fix.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use vedge::config::RawRoute;

use crate::support::edge::edge_config;
use crate::support::token::{raw_token, token_edge, token_for};
use crate::support::{until, Gate, Origin, Script, TestEdge};

const CLIENT_ADDRESS: [(&str, &str); 5] = [
    ("x-real-ip", "203.0.113.7"),
    ("true-client-ip", "203.0.113.8"),
    ("cf-connecting-ip", "203.0.113.9"),
    ("fastly-client-ip", "203.0.113.10"),
    ("x-client-ip", "203.0.113.11"),
];

/// A `POST` (a pass: one viewer's own request) carrying every client-address header a CDN's
/// origin may trust: none reaches the origin as the viewer wrote it, and `X-Forwarded-For`
/// ends with the address the edge saw.
#[tokio::test]
async fn a_pass_never_forwards_a_viewers_claimed_client_address() {
    let origin = Origin::start().await;
    origin.script("/p/form", Script::ok("done"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let b = edge
        .req(Method::POST, "/p/form")
        .header("x-forwarded-for", "198.51.100.1");
    let seen = post_claiming_every_address(&edge, &origin, b).await;
    for (k, _) in CLIENT_ADDRESS {
        assert_eq!(seen[0].header(k), None, "{k} reached the origin");
    }
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        Some("198.51.100.1, 127.0.0.1"),
        "the chain ends with the peer the edge saw"
    );
}

/// Sends `b` (a POST to `/p/form`, a pass) with every header of `CLIENT_ADDRESS` added, checks
/// it was answered 200 by one origin request, and returns what the origin saw.
async fn post_claiming_every_address(
    edge: &TestEdge,
    origin: &Origin,
    mut b: http::request::Builder,
) -> Vec<crate::support::origin::Seen> {
    for (k, v) in CLIENT_ADDRESS {
        b = b.header(k, v);
    }
    let r = edge.send(b, Bytes::from_static(b"a=1")).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = origin.seen("/p/form");
    assert_eq!(seen.len(), 1);
    seen
}

/// The operator who lists a client-address header in the route's `forward_headers` chose to
/// pass it on: a pass then carries the viewer's value (and the others still not).
#[tokio::test]
async fn a_pass_forwards_a_client_address_header_the_route_lists() {
    let origin = Origin::start().await;
    origin.script("/p/form", Script::ok("done"));
    let mut raw = edge_config(&origin);
    raw.routes.push(RawRoute {
        prefix: "/p/".into(),
        origin: origin.url(),
        forward_headers: Some(vec!["X-Real-IP".into()]),
        ..RawRoute::default()
    });
    let edge = TestEdge::start(raw).await;
    let b = edge.req(Method::POST, "/p/form");
    let seen = post_claiming_every_address(&edge, &origin, b).await;
    assert_eq!(seen[0].header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(seen[0].header("true-client-ip"), None);
    assert_eq!(seen[0].header("cf-connecting-ip"), None);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` (origin-form or absolute-form) is answered
/// 400 by the edge itself: no origin contact, no `Cache-Status` member, a `Date`, a framed body.
/// HTTP/1.0 may omit `Host` and is served as before.
#[tokio::test]
async fn an_http11_request_without_host_is_a_400_and_http10_is_served() {
    let origin = Origin::start().await;
    origin.script(
        "/h/a.ts",
        Script::ok("segment").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let absolute = format!(
        "GET http://{}/h/a.ts HTTP/1.1\r\nConnection: close\r\n\r\n",
        edge.addr
    );
    for req in [
        &b"GET /h/a.ts HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        absolute.as_bytes(),
        b"HEAD /h/a.ts HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let r = edge.raw(req).await;
        assert_eq!(r.status(), 400, "{}", r.text());
        assert_eq!(r.header("cache-status"), None, "{}", r.text());
        assert!(r.header("date").is_some(), "{}", r.text());
        assert!(r.header("content-length").is_some(), "{}", r.text());
    }
    assert_eq!(origin.count("/h/a.ts"), 0, "nothing reached the origin");

    let r = edge.raw(b"GET /h/a.ts HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.split().1, b"segment");
    assert_eq!(origin.count("/h/a.ts"), 1);
}

/// An origin answering `304 Not Modified` to a fill that sent no validator: every collapsed
/// viewer gets a 502 (not a bodiless 304 for a request that was not conditional), and nothing
/// is stored (the next request asks the origin again).
#[tokio::test]
async fn an_unsolicited_304_to_an_unconditional_fill_is_a_502_for_every_viewer() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/u/a.ts",
        Script::status(304, "")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    let edge = std::sync::Arc::new(TestEdge::start(edge_config(&origin)).await);
    let viewers: Vec<_> = (0..3)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get("/u/a.ts").await })
        })
        .collect();
    until("the viewers collapsed onto one fill", || {
        origin.count("/u/a.ts") == 1 && edge.collapsed() >= 2
    })
    .await;
    gate.open();
    for v in viewers {
        let r = v.await.expect("viewer task");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{:?}", r.headers);
    }
    edge.settle().await;
    assert_eq!(edge.get("/u/a.ts").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.count("/u/a.ts"), 2, "nothing was stored");
}

/// A stored object without validators goes stale; the refresh (unconditional) gets a 304: an
/// origin error like any other, so the stale copy answers within `stale-if-error` and stays.
#[tokio::test]
async fn an_unsolicited_304_to_a_refresh_serves_stale_if_error() {
    let origin = Origin::start().await;
    origin.script(
        "/u/b.ts",
        Script::ok("still good").header("cache-control", "max-age=1, stale-if-error=600"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    assert_eq!(edge.get("/u/b.ts").await.x_cache(), "MISS");
    edge.settle().await;
    origin.script(
        "/u/b.ts",
        Script::status(304, "").header("cache-control", "max-age=60"),
    );
    edge.advance(Duration::from_secs(5)).await;
    for _ in 0..2 {
        let r = edge.get("/u/b.ts").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.x_cache(), "STALE");
        assert_eq!(r.body, "still good");
        edge.settle().await;
    }
    assert_eq!(origin.count("/u/b.ts"), 3, "the 304 refreshed nothing");
}

/// A token for `/v/*`, valid from a minute ago for an hour, made distinct by `id`.
fn token(id: &str) -> String {
    token_for("/v/*", Some(id))
}

const PLAYLIST: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg1.ts\n#EXT-X-ENDLIST\n";

/// On a token route a playlist is rewritten for each viewer, so the stored validators and
/// offsets describe none of the bytes a viewer gets: a viewer with a new token who sends the
/// origin's validators, or a Range (also through an escaped path), gets the whole playlist
/// carrying its own token, and the rewritten 200 offers no validator to come back with.
#[tokio::test]
async fn a_rewritten_playlist_ignores_the_viewers_conditionals_and_range() {
    let origin = Origin::start().await;
    let lm = "Sat, 05 Dec 2026 10:00:00 GMT";
    origin.script(
        "/v/index.m3u8",
        Script::ok(PLAYLIST)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=60")
            .header("etag", "\"p1\"")
            .header("last-modified", lm),
    );
    let edge = token_edge(&origin, raw_token()).await;

    let first = token("first");
    let r = edge.get(&format!("/v/index.m3u8?hdnts={first}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("etag"), "");
    assert_eq!(r.h("last-modified"), "", "no validator of other bytes");
    edge.settle().await;

    let second = token("second");
    let r = edge
        .get_with(
            &format!("/v/index.m3u8?hdnts={second}"),
            &[("if-none-match", "\"p1\""), ("if-modified-since", lm)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.headers);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains(&format!("seg1.ts?hdnts={second}")), "{body}");

    let third = token("third");
    let r = edge
        .get_with(
            &format!("/v/index%2Em3u8?hdnts={third}"),
            &[("range", "bytes=0-5")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.headers);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains(&format!("seg1.ts?hdnts={third}")), "{body}");
    assert_eq!(origin.count("/v/index.m3u8"), 1);
}

/// The same for a playlist known only by its `Content-Type` (a path without `.m3u8`): the
/// viewer's validators and Range are dropped once the answer shows it is a manifest, so a
/// viewer gets the whole playlist carrying its own token; a segment on the route still
/// answers Range and validators from the stored bytes.
#[tokio::test]
async fn a_playlist_known_by_its_type_ignores_the_viewers_conditionals_and_range() {
    let origin = Origin::start().await;
    origin.script(
        "/v/manifest(format=m3u8)",
        Script::ok(PLAYLIST)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=60")
            .header("etag", "\"p1\""),
    );
    origin.script(
        "/v/seg1.ts",
        Script::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("etag", "\"s1\""),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let path = "/v/manifest(format=m3u8)";
    let first = token("first");
    assert_eq!(
        edge.get(&format!("{path}?hdnts={first}")).await.status,
        StatusCode::OK
    );
    edge.settle().await;

    for (i, asked) in [("if-none-match", "\"p1\""), ("range", "bytes=0-5")]
        .into_iter()
        .enumerate()
    {
        let t = token(&format!("viewer{i}"));
        let r = edge.get_with(&format!("{path}?hdnts={t}"), &[asked]).await;
        assert_eq!(r.status, StatusCode::OK, "{asked:?}: {:?}", r.headers);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains(&format!("seg1.ts?hdnts={t}")), "{body}");
        assert_eq!(r.h("etag"), "");
    }
    assert_eq!(origin.count(path), 1);

    let t = token("segment");
    let seg = format!("/v/seg1.ts?hdnts={t}");
    let r = edge.get_with(&seg, &[("range", "bytes=0-3")]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (206, &b"0123"[..]));
    edge.settle().await;
    let r = edge.get_with(&seg, &[("if-none-match", "\"s1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}
