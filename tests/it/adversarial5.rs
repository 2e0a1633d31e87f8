//! Regression tests from the fifth adversarial review (what a leader's own header fields do to
//! the fill it shares, what a per-viewer response tells caches downstream, interim answers from
//! the origin): each proves one rule and fails on the code before its fix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::edge::{edge_config_for, until, TestEdge};
use crate::support::token::{raw_token, token_edge, token_for};

/// An origin with a request-head limit: a head with a field line longer than `line_limit`, or
/// over 16 KiB in all (Node's limit), is answered `431`, as common servers do (Apache refuses
/// a line past 8,190 bytes). Every answer is held until `release` is set, so viewers can
/// collapse onto the fill. Counts GETs.
struct StrictHeadOrigin {
    url: String,
    requests: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

const REFUSED: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
content-length: 0\r\nconnection: close\r\n\r\n";
const SEGMENT: &[u8] =
    b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 7\r\n\r\nsegment";

impl StrictHeadOrigin {
    async fn start(line_limit: usize) -> StrictHeadOrigin {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let url = format!("http://{}", l.local_addr().expect("origin addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let (release, rx) = watch::channel(false);
        let n = requests.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(Self::conn(s, line_limit, n.clone(), rx.clone()));
            }
        });
        StrictHeadOrigin {
            url,
            requests,
            release,
        }
    }

    /// Serves keep-alive requests on one connection (at most 64, heads read up to 256 KiB).
    async fn conn(
        mut s: TcpStream,
        line_limit: usize,
        requests: Arc<AtomicUsize>,
        mut release: watch::Receiver<bool>,
    ) {
        let mut buf = Vec::new();
        for _ in 0..64 {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 16 << 10];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.len() > 256 << 10 {
                    return;
                }
            };
            let head: Vec<u8> = buf.drain(..end).collect();
            // The edge's preconnect probe (a HEAD) is not a fetch of the object.
            if !head.starts_with(b"GET ") {
                if s.write_all(SEGMENT).await.is_err() {
                    return;
                }
                continue;
            }
            requests.fetch_add(1, Ordering::SeqCst);
            let too_large =
                head.len() > 16 << 10 || head.split(|&b| b == b'\n').any(|l| l.len() > line_limit);
            let _ = release.wait_for(|r| *r).await;
            let answer = if too_large { REFUSED } else { SEGMENT };
            if s.write_all(answer).await.is_err() || too_large {
                return;
            }
        }
    }
}

/// An attacker leads a fill of `path` with `header: value`, three viewers collapse onto it,
/// the upstream answers: every viewer gets the segment, the attacker a 431.
async fn attacker_leads_then_viewers_collapse(
    edge: &Arc<TestEdge>,
    up: &StrictHeadOrigin,
    path: &str,
    header: &'static str,
    value: String,
) {
    const VIEWERS: usize = 3;
    let fetched = up.requests.load(Ordering::SeqCst);
    let collapsed = edge.collapsed();
    up.release.send_replace(false);
    let attacker = {
        let (edge, path) = (edge.clone(), path.to_string());
        tokio::spawn(async move { edge.get_with(&path, &[(header, value.as_str())]).await })
    };
    until("the attacker's request led a fill or was answered", || {
        up.requests.load(Ordering::SeqCst) > fetched || attacker.is_finished()
    })
    .await;
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| {
            let (edge, path) = (edge.clone(), path.to_string());
            tokio::spawn(async move { edge.get(&path).await })
        })
        .collect();
    until("the viewers collapsed onto a fill in flight", || {
        up.requests.load(Ordering::SeqCst) > fetched
            && edge.collapsed() >= collapsed + VIEWERS as u64 - 1
    })
    .await;
    up.release.send_replace(true);
    for v in viewers {
        let r = v.await.expect("viewer task");
        assert_eq!(
            r.status, 200,
            "{header}: a viewer got the attacker's answer"
        );
        assert_eq!(&r.body[..], b"segment", "{header}");
    }
    let a = attacker.await.expect("attacker task");
    assert_eq!(a.status, 431, "{header}: the attacker's own answer");
    edge.settle().await;
}

/// A viewer's own `Via` or `CDN-Loop` entries travel on the fill it leads (RFC 9110 §7.6.3,
/// RFC 8586: intermediaries append). A viewer sending 20 KiB of them made the origin refuse the
/// fill's head (431, as Apache or Node do past 8 KiB a line or 16 KiB a head), and every viewer
/// collapsed onto that fill got the 431: one request per new live segment took a whole
/// audience off the air. Such a request is now refused alone (431) before it reaches the
/// cache; the other viewers share one fill and get the segment.
#[tokio::test]
async fn a_viewers_oversized_via_or_cdn_loop_never_fails_the_fill_others_share() {
    let up = StrictHeadOrigin::start(8190).await;
    let edge = Arc::new(TestEdge::start(edge_config_for(up.url.clone())).await);
    let long_via = format!("1.1 {}", "p".repeat(20 << 10));
    attacker_leads_then_viewers_collapse(&edge, &up, "/v/seg1.ts", "via", long_via).await;
    let long_loop = vec!["othercdn"; 2500].join(", ");
    attacker_leads_then_viewers_collapse(&edge, &up, "/v/seg2.ts", "cdn-loop", long_loop).await;
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "one fill per segment, none for the attacker"
    );
}

/// A route forwarding a viewer header (`forward_headers = ["user-agent"]`) copies the leader's
/// value onto the fill every collapsed viewer shares. A 20 KiB `User-Agent` (any viewer may
/// send one: the edge accepts 64 KiB heads) made the origin refuse the fill's head (nginx
/// answers 400 past 8 KiB a line), and every viewer collapsed onto it got that refusal. A
/// refusal of a head that large is now the leader's alone; the others share one more fill.
#[tokio::test]
async fn a_viewers_oversized_forwarded_header_never_fails_the_fill_others_share() {
    let up = StrictHeadOrigin::start(8190).await;
    let mut raw = edge_config_for(up.url.clone());
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/fh/".into(),
        origin: up.url.clone(),
        forward_headers: Some(vec!["user-agent".into()]),
        ..Default::default()
    });
    let edge = Arc::new(TestEdge::start(raw).await);
    let ua = format!("Mozilla/5.0 {}", "x".repeat(20 << 10));
    attacker_leads_then_viewers_collapse(&edge, &up, "/fh/seg1.ts", "user-agent", ua).await;
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "the attacker's fill and one for the viewers"
    );
}

/// An upstream may refuse a head the edge accepted: its limit may be smaller, or it is a vedge
/// shield seeing the edge's own entries added to a chain just under the edge's bound. Its 400
/// or 431 to a fill whose leader brought `Via` / `CDN-Loop` entries is that leader's alone: the
/// viewers collapsed onto the fill claim one more fill between them and get the segment.
/// Before, all of them got the 431.
#[tokio::test]
async fn an_upstream_refusing_the_leaders_entries_answers_only_the_leader() {
    let up = StrictHeadOrigin::start(1024).await;
    let edge = Arc::new(TestEdge::start(edge_config_for(up.url.clone())).await);
    let via = format!("1.1 {}", "p".repeat(1500));
    attacker_leads_then_viewers_collapse(&edge, &up, "/v/seg1.ts", "via", via).await;
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "the attacker's fill and one for the viewers"
    );
}

/// A playlist carrying one viewer's token in every URI is that viewer's alone (RFC 9111
/// §5.2.2.7). Before, it went out with the origin's `Cache-Control: public, s-maxage` and
/// `CDN-Cache-Control`, so a shared cache in front of the edge (another CDN, an ISP or
/// corporate proxy, most of which key on the path and ignore the query) stored the first
/// viewer's rewritten playlist and handed that viewer's token to everyone after. The rewritten
/// playlist is now `private` and carries no field addressed to shared caches; the edge's own
/// copy stays token-free and cached.
#[tokio::test]
async fn a_playlist_carrying_a_viewers_token_is_never_offered_to_shared_caches() {
    use crate::support::{Origin, Script};
    let origin = Origin::start().await;
    origin.script(
        "/v/index.m3u8",
        Script::ok("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg1.ts\n#EXT-X-ENDLIST\n")
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "public, max-age=30, s-maxage=60")
            .header("cdn-cache-control", "max-age=60")
            .header("surrogate-control", "max-age=60"),
    );
    let edge = token_edge(&origin, raw_token()).await;

    for round in ["miss", "hit"] {
        let t = token_for("/v/*", None);
        let r = edge.get(&format!("/v/index.m3u8?hdnts={t}")).await;
        assert_eq!(r.status, 200, "{round}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains(&format!("seg1.ts?hdnts={t}")),
            "{round}: {body}"
        );
        let cc = r.h("cache-control").to_ascii_lowercase();
        assert!(
            cc.split(',').any(|d| d.trim() == "private"),
            "{round}: {cc}"
        );
        assert!(
            !cc.contains("public") && !cc.contains("s-maxage"),
            "{round}: {cc}"
        );
        for targeted in ["cdn-cache-control", "surrogate-control"] {
            assert_eq!(r.h(targeted), "", "{round}: {targeted}");
        }
        edge.settle().await;
    }
    assert_eq!(
        origin.count("/v/index.m3u8"),
        1,
        "the edge's copy is shared"
    );
}

/// An upstream at `url` that answers every request with `answer` and closes.
async fn answering(answer: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let url = format!("http://{}", l.local_addr().expect("origin addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
            });
        }
    });
    url
}

/// An origin answering `101 Switching Protocols` to a request that asked for no upgrade (the
/// edge forwards no `Upgrade`) gives no final answer. Before, the 101 was relayed as one, to
/// the fill's every viewer: each got a head that says the connection now speaks another
/// protocol, and its connection was closed under it. It is now an origin protocol error (502).
#[tokio::test]
async fn an_origins_unasked_101_is_never_relayed_as_a_final_answer() {
    let url = answering(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .await;
    let edge = TestEdge::start(edge_config_for(url)).await;
    let fill = edge.get_with("/v/up.ts", &[("upgrade", "websocket")]).await;
    assert_eq!(fill.status, 502, "a fill's answer");
    let pass = edge
        .send(
            edge.req(http::Method::POST, "/v/up")
                .header("upgrade", "websocket")
                .header("connection", "upgrade"),
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(pass.status, 502, "a pass-through's answer");
}

/// RFC 9112 §3.2: a request with more than one `Host` line is answered 400, whatever its
/// request target. Before, an absolute-form target (`GET http://a/x`) made the edge skip the
/// check: two `Host` lines, which a proxy in front may read differently (first, last, joined)
/// than the edge reads the target, reached the origin as a 200.
#[tokio::test]
async fn several_host_lines_are_refused_even_with_an_absolute_form_target() {
    use crate::support::{Origin, Script};
    let origin = Origin::start().await;
    origin.script(
        "/v/h.ts",
        Script::ok("h").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config_for(origin.url())).await;
    for target in ["/v/h.ts", "http://a.example/v/h.ts"] {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
        );
        let r = edge.raw(req.as_bytes()).await;
        assert_eq!(r.status(), 400, "{target}: {}", r.text());
    }
    assert_eq!(origin.count("/v/h.ts"), 0);
    let one = edge
        .raw(
            b"GET http://a.example/v/h.ts HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(one.status(), 200, "{}", one.text());
}

/// An origin answering with a transfer coding other than `chunked` (`Transfer-Encoding: gzip`,
/// the body read to the connection's close): the coding is hop-by-hop, so it was dropped on
/// the way and the gzip bytes were stored and served as the plain object to every viewer. Such
/// an answer is now an origin protocol error (502), and nothing is stored.
#[tokio::test]
async fn a_transfer_coding_the_edge_cannot_undo_is_never_stored_as_plain_bytes() {
    const CODED: &[u8] = b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n\
transfer-encoding: gzip\r\nconnection: close\r\n\r\n\x1f\x8b\x08\x00coded-bytes";
    let url = answering(CODED).await;
    let edge = TestEdge::start(edge_config_for(url)).await;
    for round in 0..2 {
        let r = edge.get("/v/seg.ts").await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache()),
            (502, "MISS"),
            "round {round}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        edge.settle().await;
    }
    // `identity` is the no-op coding old servers still send along with `chunked`: served.
    const IDENTITY: &[u8] = b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n\
transfer-encoding: identity, chunked\r\nconnection: close\r\n\r\n5\r\nplain\r\n0\r\n\r\n";
    let edge = TestEdge::start(edge_config_for(answering(IDENTITY).await)).await;
    let r = edge.get("/v/seg.ts").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"plain"[..]));
}

/// An origin answering with both `Content-Length` and `Transfer-Encoding: chunked` (RFC 9112
/// §6.3: a sign of response smuggling, "ought to be handled as an error"): the viewer got no
/// response at all (the connection closed before a status line; h2: the stream reset), and
/// every viewer after it the same. It is an origin protocol error now: a 502, nothing stored.
#[tokio::test]
async fn an_origin_answer_with_both_content_length_and_chunked_is_a_502() {
    const BOTH: &[u8] = b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n\
content-length: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let edge = TestEdge::start(edge_config_for(answering(BOTH).await)).await;
    for round in 0..2 {
        let raw = edge
            .raw(b"GET /v/seg.ts HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n")
            .await;
        let text = raw.text();
        assert!(text.starts_with("HTTP/1.1 502"), "round {round}: {text:?}");
        edge.settle().await;
    }
}

/// A viewer's body in a transfer coding the edge does not implement (`Transfer-Encoding: gzip,
/// chunked`): the HTTP layer undid `chunked` and the `gzip` was dropped, so the origin got the
/// coded bytes relabelled `chunked`, as plain ones. RFC 9112 §6.1: a 501 now, and the origin
/// never sees it; `chunked` alone (any case) still passes.
#[tokio::test]
async fn a_request_transfer_coding_other_than_chunked_is_a_501() {
    let origin = crate::support::Origin::start().await;
    origin.script("/up", crate::support::Script::ok("taken"));
    let edge = TestEdge::start(crate::support::edge_config(&origin)).await;
    let post = |te: &str| {
        format!(
            "POST /up HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: {te}\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    };
    for te in ["gzip, chunked", "deflate,chunked", "x-custom, chunked"] {
        let r = edge.raw(post(te).as_bytes()).await;
        assert!(r.text().starts_with("HTTP/1.1 501"), "{te}: {:?}", r.text());
    }
    assert_eq!(origin.count("/up"), 0, "never forwarded");
    let r = edge.raw(post("Chunked").as_bytes()).await;
    assert!(r.text().starts_with("HTTP/1.1 200"), "{:?}", r.text());
    assert_eq!(origin.count("/up"), 1);
}

/// A cacheable 204 whose head says `Content-Length: 5` (a 204 ends at its head, RFC 9112 §6.3):
/// the fill counted the empty body against the 5 and dropped it as truncated, so nothing was
/// stored, every request went to the origin, and each was told `stored`. It is stored now,
/// and served without a `Content-Length` (RFC 9110 §8.6).
#[tokio::test]
async fn a_204_with_a_content_length_is_stored_and_served_without_one() {
    const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\ncache-control: max-age=100\r\n\
content-length: 5\r\nconnection: close\r\n\r\n";
    let edge = TestEdge::start(edge_config_for(answering(NO_CONTENT).await)).await;
    let first = edge.get("/v/empty").await;
    assert_eq!(first.status.as_u16(), 204);
    edge.settle().await;
    let again = edge.get("/v/empty").await;
    assert_eq!(
        (again.status.as_u16(), again.x_cache()),
        (204, "HIT"),
        "{}",
        again.h("cache-status")
    );
    assert!(again.headers.get("content-length").is_none());
}
