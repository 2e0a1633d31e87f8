//! Requests an origin provably never processed are sent again: a GET lost when the origin
//! closed a pooled keep-alive connection as it arrived (RFC 9112 §9.3.1), one refused by an
//! HTTP/2 GOAWAY or REFUSED_STREAM (RFC 9113 §6.8, §8.7); neither counts against the origin.
//! And an HTTP/2 viewer's split `Cookie` fields reach the origin as one (RFC 9113 §8.2.3).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::edge::edge_config_for;
use crate::support::{edge_config, Fault, Origin, Script, TestEdge};

/// The edge's one origin's `/admin/origins` entry.
fn origin_state(edge: &TestEdge) -> serde_json::Value {
    edge.edge.origin.snapshot()["routes"][0]["origins"][0].clone()
}

/// Bug: a GET sent on a pooled keep-alive connection that the origin closed without
/// answering (its idle timeout firing as the request arrived) was answered 502
/// `origin-protocol`: hyper-util re-sends a request only when hyper had not begun writing it,
/// and the edge retried a single origin only after a failed connect. It is now sent once more
/// on a new connection, and the origin's health does not count the lost one.
#[tokio::test]
async fn a_get_lost_to_a_closing_keep_alive_connection_is_sent_again_on_a_new_one() {
    let origin = Origin::start().await;
    origin.script(
        "/a.ts",
        Script::ok("first").header("cache-control", "max-age=60"),
    );
    origin.script(
        "/b.ts",
        Script::ok("second")
            .header("cache-control", "max-age=60")
            .fault(Fault::CloseIfReused),
    );
    let mut raw = edge_config(&origin);
    raw.origin_client.preconnect = Some(false);
    let edge = TestEdge::start(raw).await;
    assert_eq!(edge.get("/a.ts").await.status, StatusCode::OK);
    edge.settle().await;
    let r = edge.get("/b.ts").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"second"[..]),
        "{}",
        r.h("cache-status")
    );
    assert_eq!(
        (origin.count("/b.ts"), origin.connections()),
        (2, 2),
        "once on the pooled connection, once on a new one"
    );
    let o = origin_state(&edge);
    assert_eq!(
        (&o["errors"]["protocol"], &o["consecutive_failures"]),
        (&0.into(), &0.into()),
        "{o}"
    );
}

/// How the raw HTTP/2 origin refuses each connection's second request.
#[derive(Clone, Copy, PartialEq)]
enum Refusal {
    /// GOAWAY(NO_ERROR, last stream id = the first request's), then the connection closes.
    GoAway,
    /// RST_STREAM(REFUSED_STREAM) on its stream; the connection stays.
    RefusedStream,
}

/// A cleartext HTTP/2 origin (prior knowledge) on raw frames, since a server library decides
/// for itself which stream id a GOAWAY names: every request is answered 200 with body
/// `conn<N>` (N counts connections from 1), except each connection's second, which it refuses
/// unprocessed (`Refusal`), as an origin shutting down or over its stream limit does.
struct RefusingH2Origin {
    url: String,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl RefusingH2Origin {
    async fn start(refusal: Refusal) -> RefusingH2Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = c.fetch_add(1, SeqCst) + 1;
                tokio::spawn(h2_connection(tcp, n, refusal, r.clone()));
            }
        });
        RefusingH2Origin {
            url,
            requests,
            connections,
        }
    }
}

/// One frame: length, type, flags, stream id, payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn h2_connection(mut tcp: TcpStream, n: usize, refusal: Refusal, requests: Arc<AtomicUsize>) {
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    let _ = tcp.write_all(&frame(4, 0, 0, &[])).await;
    let mut first: Option<u32> = None;
    // Bounded: a connection carries a handful of frames in these tests.
    for _ in 0..200 {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head)).await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        let out = match kind {
            // SETTINGS (not an ACK): acknowledge.
            4 if flags & 1 == 0 => frame(4, 1, 0, &[]),
            // PING: answer.
            6 if flags & 1 == 0 => frame(6, 1, 0, &payload),
            // HEADERS: a request.
            1 => {
                requests.fetch_add(1, SeqCst);
                match first {
                    None => {
                        first = Some(stream);
                        // `:status: 200` (static table index 8), then the body, ending the stream.
                        let mut out = frame(1, 0x4, stream, &[0x88]);
                        out.extend(frame(0, 0x1, stream, format!("conn{n}").as_bytes()));
                        out
                    }
                    Some(last) if refusal == Refusal::GoAway => {
                        let mut p = last.to_be_bytes().to_vec();
                        p.extend_from_slice(&0u32.to_be_bytes());
                        let _ = tcp.write_all(&frame(7, 0, 0, &p)).await;
                        // Read until the client closes, so no unread byte turns the close into
                        // a reset that could overtake the GOAWAY.
                        let mut sink = [0u8; 4096];
                        for _ in 0..100 {
                            match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut sink))
                                .await
                            {
                                Ok(Ok(n)) if n > 0 => continue,
                                _ => return,
                            }
                        }
                        return;
                    }
                    Some(last) if stream == last + 2 => frame(3, 0, stream, &7u32.to_be_bytes()),
                    Some(_) => {
                        let mut out = frame(1, 0x4, stream, &[0x88]);
                        out.extend(frame(0, 0x1, stream, format!("conn{n}").as_bytes()));
                        out
                    }
                }
            }
            _ => continue,
        };
        if tcp.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// An edge in front of `origin` speaking HTTP/2 to it, without a warm-up request.
async fn h2_edge(origin: &RefusingH2Origin) -> TestEdge {
    let mut raw = edge_config_for(origin.url.clone());
    raw.origin_client.http2 = Some(true);
    raw.origin_client.preconnect = Some(false);
    TestEdge::start(raw).await
}

/// Bug: an HTTP/2 origin going away (GOAWAY with NO_ERROR and a last stream id below the
/// request's stream, as a graceful shutdown or reload sends) left a GET it never processed
/// with a 502 `origin-protocol`, though RFC 9113 §6.8 says such a stream can be retried on a
/// new connection. It now is, once, and the origin's health does not count it.
#[tokio::test]
async fn a_get_refused_by_an_h2_goaway_is_sent_again_on_a_new_connection() {
    let origin = RefusingH2Origin::start(Refusal::GoAway).await;
    let edge = h2_edge(&origin).await;
    let r = edge.get("/a.ts").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"conn1"[..]));
    let r = edge.get("/b.ts").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"conn2"[..]),
        "{}",
        r.h("cache-status")
    );
    assert_eq!(
        (
            origin.requests.load(SeqCst),
            origin.connections.load(SeqCst)
        ),
        (3, 2)
    );
    let o = origin_state(&edge);
    assert_eq!(
        (&o["errors"]["protocol"], &o["consecutive_failures"]),
        (&0.into(), &0.into()),
        "{o}"
    );
}

/// Bug: a stream the HTTP/2 origin reset with REFUSED_STREAM (RFC 9113 §8.7: not processed,
/// safe to retry) was answered 502 `origin-protocol`. It is now sent once more.
#[tokio::test]
async fn a_get_on_a_refused_h2_stream_is_sent_again() {
    let origin = RefusingH2Origin::start(Refusal::RefusedStream).await;
    let edge = h2_edge(&origin).await;
    assert_eq!(edge.get("/a.ts").await.status, StatusCode::OK);
    let r = edge.get("/b.ts").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"conn1"[..]),
        "{}",
        r.h("cache-status")
    );
    assert_eq!(origin.requests.load(SeqCst), 3);
    let o = origin_state(&edge);
    assert_eq!(o["errors"]["protocol"], 0, "{o}");
}

/// Bug: an HTTP/2 viewer's cookie-pairs, sent as separate `Cookie` fields (as browsers do over
/// h2), reached the HTTP/1.1 origin as several `Cookie` lines; RFC 9113 §8.2.3 requires them
/// joined with "; " first (and RFC 6265 allows one line: origins read the first or refuse).
#[tokio::test]
async fn an_h2_viewers_split_cookie_reaches_the_origin_as_one_field() {
    use http_body_util::{BodyExt, Empty};
    let origin = Origin::start().await;
    origin.script("/c.ts", Script::ok("c"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let mut send = edge.h2().await;
    let req = http::Request::get(format!("http://{}/c.ts", edge.addr))
        .header("cookie", "session=abc")
        .header("cookie", "user=42")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let r = send.send_request(req).await.expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.into_body().collect().await;
    let seen = origin.seen("/c.ts");
    let cookies: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["session=abc; user=42"]);
}
