//! h2 frames that carry no request (PING, SETTINGS, PRIORITY, empty DATA, WINDOW_UPDATE past
//! what the client was sent) are bounded per connection (`http::h2_flood`,
//! `server.h2_control_frame_rate`): a flood closes that connection and only that one.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{edge_config, until, Origin, Script, TestEdge};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the edge sent back to a raw client that wrote `flood` after the preface.
struct Outcome {
    /// Frames of the flood's type the edge answered (PING ACKs) or let pass.
    acks: usize,
    /// Whether the edge closed the connection within the test's bound.
    closed: bool,
}

async fn flood(edge: &TestEdge, one: Vec<u8>, count: usize) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut first = PREFACE.to_vec();
        first.extend(frame(0x4, 0, 0, b"")); // the client's SETTINGS
        first.extend(frame(0x4, 0x1, 0, b"")); // ACK of the server's
        if wr.write_all(&first).await.is_err() {
            return;
        }
        let batch: Vec<u8> = one.repeat(500);
        for _ in 0..count / 500 {
            if wr.write_all(&batch).await.is_err() {
                return; // closed under us: what a flood should get
            }
        }
        // Keep the write half open: the edge, not this client, must end the connection.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut acks = 0usize;
    let mut closed = false;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    'read: loop {
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x6 && buf[4] & 0x1 == 1 {
                acks += 1;
            }
            buf.drain(..9 + len);
            if acks == count {
                break 'read;
            }
        }
    }
    writer.abort();
    Outcome { acks, closed }
}

async fn served_over_h2(edge: &TestEdge, path: &str, times: usize) {
    let tcp = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    // A small window: the client sends a WINDOW_UPDATE every few KiB it takes.
    builder.initial_stream_window_size(16 << 10);
    let (mut send, conn) = builder
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    for i in 0..times {
        let req = Request::get(format!("http://{}{path}", edge.addr))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), 256 << 10, "request {i}");
    }
}

async fn setup() -> (Origin, TestEdge) {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg.ts",
        Script::ok(vec![7u8; 256 << 10]).header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    (origin, edge)
}

#[tokio::test]
async fn a_ping_flood_closes_its_connection_and_other_viewers_are_served() {
    let (_origin, edge) = setup().await;
    let pings = 20_000;
    let got = flood(&edge, frame(0x6, 0, 0, &[1; 8]), pings).await;
    assert!(
        got.closed && got.acks < pings,
        "a flood of {pings} PINGs: {} answered, connection closed: {}",
        got.acks,
        got.closed
    );
    let m = &edge.edge.metrics.limits;
    until("the flood is counted", || {
        m.h2_flood_closed.load(Relaxed) == 1
    })
    .await;
    served_over_h2(&edge, "/v/seg.ts", 3).await;
}

#[tokio::test]
async fn a_window_update_flood_that_takes_nothing_closes_its_connection() {
    let (_origin, edge) = setup().await;
    let got = flood(&edge, frame(0x8, 0, 0, &1u32.to_be_bytes()), 20_000).await;
    assert!(got.closed, "20,000 WINDOW_UPDATEs left the connection open");
    let m = &edge.edge.metrics.limits;
    until("the flood is counted", || {
        m.h2_flood_closed.load(Relaxed) == 1
    })
    .await;
}

#[tokio::test]
async fn a_busy_h2_viewer_with_a_small_window_is_not_a_flood() {
    let (_origin, edge) = setup().await;
    // 200 requests and ~64 WINDOW_UPDATEs per response on one connection.
    served_over_h2(&edge, "/v/seg.ts", 200).await;
    assert_eq!(edge.edge.metrics.limits.h2_flood_closed.load(Relaxed), 0);
}
