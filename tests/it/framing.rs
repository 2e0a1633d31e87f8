//! Message framing and validity on both sides of the edge: a pass-through carries exactly the
//! content its viewer sent (none is none, not an empty chunked body), an origin's status code
//! outside 100-599 is an invalid answer (502, never relayed nor stored), and a request target
//! longer than the edge parses is a 414 (URI Too Long), not a 431.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vedge::config::RawConfig;

use crate::support::edge::{edge_config, read_raw, RawResp, TestEdge};
use crate::support::origin::{Origin, Script};
use crate::support::strict_origin::{StrictOrigin, StrictScript};

/// Methods a viewer sends through the edge (pass-throughs), and whether RFC 9110 gives their
/// content a meaning (so `Content-Length: 0` may stand for "none").
const PASSED: [(&str, bool); 6] = [
    ("DELETE", false),
    ("OPTIONS", false),
    ("PURGE", false),
    ("POST", true),
    ("PUT", true),
    ("PATCH", true),
];

fn strict_config(origin: &StrictOrigin) -> RawConfig {
    let mut raw = RawConfig {
        origin: Some(origin.url()),
        ram_size: Some("64MiB".into()),
        ..RawConfig::default()
    };
    raw.origin_client.first_byte_timeout = Some("5s".into());
    raw.origin_client.between_bytes_timeout = Some("3s".into());
    raw.origin_client.connect_timeout = Some("1s".into());
    raw.origin_client.preconnect = Some(false);
    raw.server.shutdown_grace = Some("1s".into());
    raw
}

/// Writes `bytes` to `addr` on a fresh connection and reads until it closes (10 s at most).
async fn raw_at(addr: SocketAddr, bytes: &[u8]) -> RawResp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_raw(&mut s).await
}

/// Checks the framing the origin saw for a request its viewer sent without content.
fn assert_no_content_framing(origin: &StrictOrigin, path: &str, method: &str, anticipates: bool) {
    let seen = origin.seen(path);
    assert_eq!(seen.len(), 1, "{method}: one origin request: {seen:?}");
    let s = &seen[0];
    assert_eq!(s.method, method);
    assert!(
        !s.has("transfer-encoding"),
        "{method} without content went to the origin chunked: {:?}",
        s.headers
    );
    assert!(s.body.is_empty(), "{method}: {:?}", s.body);
    match s.header("content-length") {
        None => {}
        Some("0") if anticipates => {}
        Some(other) => panic!(
            "{method} without content went with Content-Length: {other}: {:?}",
            s.headers
        ),
    }
}

/// Bug: a pass-through without content (HTTP/1.1, no `Content-Length` nor
/// `Transfer-Encoding`) went to the origin with `Transfer-Encoding: chunked` and an empty
/// chunked body; an origin that reads no body on a DELETE or OPTIONS took the `0` for its next
/// request (400, pooled connection lost). Now it goes with no framing (POST, PUT, PATCH:
/// `Content-Length: 0`), while `Content-Length: 0`, a known length and a chunked body keep theirs.
#[tokio::test]
async fn a_pass_without_content_goes_to_the_origin_without_content_over_http1() {
    let origin = StrictOrigin::start().await;
    let edge = TestEdge::start(strict_config(&origin)).await;
    for (method, anticipates) in PASSED {
        let path = format!("/v/h1-{method}");
        origin.script(&path, StrictScript::ok("done"));
        let r = raw_at(
            edge.addr,
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status(), 200, "{method}: {}", r.text());
        assert_no_content_framing(&origin, &path, method, anticipates);
    }
    // What the viewer framed keeps its framing: `Content-Length: 0`, a known length, chunked.
    let cases = [
        Framed {
            path: "/v/zero",
            sent: b"Content-Length: 0\r\n\r\n",
            content_length: Some("0"),
            transfer_encoding: None,
            body: b"",
        },
        Framed {
            path: "/v/known",
            sent: b"Content-Length: 5\r\n\r\nhello",
            content_length: Some("5"),
            transfer_encoding: None,
            body: b"hello",
        },
        Framed {
            path: "/v/chunked",
            sent: b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            content_length: None,
            transfer_encoding: Some("chunked"),
            body: b"hello",
        },
    ];
    for c in cases {
        origin.script(c.path, StrictScript::ok("done"));
        let mut req = format!(
            "DELETE {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n",
            c.path
        )
        .into_bytes();
        req.extend_from_slice(c.sent);
        let r = raw_at(edge.addr, &req).await;
        assert_eq!(r.status(), 200, "{}: {}", c.path, r.text());
        let seen = origin.seen(c.path);
        assert_eq!(seen.len(), 1, "{}: {seen:?}", c.path);
        assert_eq!(
            seen[0].header("content-length"),
            c.content_length,
            "{}",
            c.path
        );
        assert_eq!(
            seen[0].header("transfer-encoding"),
            c.transfer_encoding,
            "{}",
            c.path
        );
        assert_eq!(seen[0].body, c.body, "{}", c.path);
    }
}

/// A viewer request's framing and body (after its head's other fields), and the framing and
/// body the origin must see for it.
struct Framed {
    path: &'static str,
    sent: &'static [u8],
    content_length: Option<&'static str>,
    transfer_encoding: Option<&'static str>,
    body: &'static [u8],
}

/// A request body that is over before it starts and says nothing of its length: sent by
/// hyper's h2 client as a HEADERS frame with END_STREAM and no `content-length`, as browsers
/// send a DELETE or OPTIONS (hyper's own empty bodies add `content-length: 0` to most methods).
struct NoContent;

impl http_body::Body for NoContent {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Bug: over HTTP/2 a request whose HEADERS frame ended the stream (no content, no
/// `content-length`) was passed to the origin with `Transfer-Encoding: chunked` and an empty
/// chunked body, for DELETE, OPTIONS, PURGE, POST, PUT and PATCH alike.
#[tokio::test]
async fn a_pass_without_content_goes_to_the_origin_without_content_over_http2() {
    let origin = StrictOrigin::start().await;
    let edge = TestEdge::start(strict_config(&origin)).await;
    let mut send = edge.h2().await;
    for (method, anticipates) in PASSED {
        let path = format!("/v/h2-{method}");
        origin.script(&path, StrictScript::ok("done"));
        let req = Request::builder()
            .method(method)
            .uri(format!("http://t{path}"))
            .body(NoContent)
            .expect("request");
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
            .await
            .expect("answer within 10 s")
            .expect("h2 response");
        assert_eq!(resp.status(), 200, "{method}");
        assert_no_content_framing(&origin, &path, method, anticipates);
    }
}

/// The protocol errors the edge counted against the route's (only) origin.
fn protocol_errors(edge: &TestEdge) -> u64 {
    edge.edge.origin.snapshot()["routes"][0]["origins"][0]["errors"]["protocol"]
        .as_u64()
        .unwrap_or(0)
}

/// Bug: an origin status outside 100-599 (`HTTP/1.1 600`, `999`) was relayed to viewers as is
/// (`HTTP/1.1 600 <none>`), and stored when the origin gave it a lifetime (the next viewer got
/// a 600 HIT). RFC 9110 §15 defines no such status: it is an invalid origin answer now, a 502
/// for fills and passes alike, counted as an origin protocol error and never stored, and a
/// stale copy answers for it within `stale-if-error`.
#[tokio::test]
async fn an_origin_status_outside_100_to_599_is_a_502_never_relayed_nor_stored() {
    let origin = Origin::start().await;
    for (path, status, cc) in [
        ("/v/600.ts", 600, "max-age=60"),
        ("/v/999.ts", 999, "public"),
        ("/v/pass", 600, "max-age=60"),
    ] {
        origin.script(
            path,
            Script::status(status, "error").header("cache-control", cc),
        );
    }
    origin.script(
        "/v/599.ts",
        Script::status(599, "error").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    for path in ["/v/600.ts", "/v/999.ts"] {
        for round in 0..2 {
            let r = edge.get(path).await;
            assert_eq!(
                (r.status.as_u16(), r.x_cache()),
                (502, "MISS"),
                "{path} round {round}: {}",
                r.h("cache-status")
            );
            assert!(r.h("cache-status").contains("origin-protocol"), "{path}");
            edge.settle().await;
        }
        assert_eq!(origin.count(path), 2, "{path}: nothing was stored");
    }
    let pass = edge
        .send(edge.req(Method::POST, "/v/pass"), Bytes::from_static(b"x"))
        .await;
    assert_eq!(pass.status.as_u16(), 502, "a pass-through's answer");
    assert_eq!(
        protocol_errors(&edge),
        5,
        "each answer counted against the origin"
    );
    // 599 is a 5xx (RFC 9110 §15: the first digit gives the class): relayed as before.
    assert_eq!(edge.get("/v/599.ts").await.status.as_u16(), 599);
    assert_eq!(protocol_errors(&edge), 5);

    // A stale copy stands in for such an answer within `stale-if-error`.
    origin.script(
        "/v/sie.ts",
        Script::ok("still good").header("cache-control", "max-age=1, stale-if-error=600"),
    );
    assert_eq!(edge.get("/v/sie.ts").await.x_cache(), "MISS");
    edge.settle().await;
    origin.script(
        "/v/sie.ts",
        Script::status(600, "error").header("cache-control", "max-age=60"),
    );
    edge.advance(std::time::Duration::from_secs(5)).await;
    for i in 0..2 {
        let r = edge.get("/v/sie.ts").await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache(), r.body.as_ref()),
            (200, "STALE", b"still good".as_ref()),
            "request {i}: {}",
            r.h("cache-status")
        );
        edge.settle().await;
    }
}

/// A path under `/v/` whose request target is `len` bytes long.
fn path_of(len: usize) -> String {
    let stem = "/v/";
    let tail = ".ts";
    format!("{stem}{}{tail}", "a".repeat(len - stem.len() - tail.len()))
}

/// Bug: a request target past what the edge parses was answered `431 Request Header Fields
/// Too Large` (hyper's head buffer overflowing) from about 64 KiB, and anything shorter was
/// served and keyed, where RFC 9112 §3 asks for a 414 (URI Too Long). Now a target (path and
/// query) over `server.max_uri_size` (8 KiB) is a 414 over HTTP/1.1 and HTTP/2 and never
/// reaches the origin, one at the limit is served, and large header fields are still a 431.
#[tokio::test]
async fn a_request_target_over_the_uri_limit_is_a_414_and_large_header_fields_a_431() {
    let origin = Origin::start().await;
    let at_limit = path_of(8 << 10);
    origin.script(&at_limit, Script::ok("long but fine"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge.get(&at_limit).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_ref()),
        (200, b"long but fine".as_ref())
    );
    let query = format!("/v/q.ts?t={}", "q".repeat(20_000));
    for target in [path_of((8 << 10) + 1), path_of(70_000), query] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let r = edge.raw(req.as_bytes()).await;
        assert_eq!(
            r.status(),
            414,
            "a {}-byte target: {}",
            target.len(),
            r.text().lines().next().unwrap_or("")
        );
    }
    // Over HTTP/2 (`:path`) too.
    let mut send = edge.h2().await;
    for len in [(8 << 10) + 1, 40_000] {
        let req = Request::get(format!("http://t{}", path_of(len)))
            .body(NoContent)
            .expect("request");
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
            .await
            .expect("answer within 10 s")
            .expect("h2 response");
        assert_eq!(resp.status(), 414, "a {len}-byte :path");
    }
    // Header fields past `server.max_header_size` (64 KiB) are still a 431, the URI short.
    let big = "b".repeat(66 << 10);
    let req =
        format!("GET /v/h.ts HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    assert_eq!(edge.raw(req.as_bytes()).await.status(), 431);
    assert_eq!(
        origin.count(&at_limit),
        1,
        "only the request within the limit reached the origin"
    );
    assert_eq!(origin.count("/v/q.ts") + origin.count("/v/h.ts"), 0);
    let limits = &edge.edge.metrics.limits;
    // The 70,000-byte target's 414 is hyper's own (past 65,534 bytes it parses no URI), which
    // the edge never sees.
    assert_eq!(
        limits.uri_too_long.load(Relaxed),
        4,
        "each of the edge's 414s counted"
    );
    assert_eq!(limits.header_fields_too_large.load(Relaxed), 1);
}
