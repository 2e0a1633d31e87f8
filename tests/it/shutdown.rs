//! Shutdown drains connections instead of serving on: once the edge is told to stop, an idle
//! keep-alive connection is closed (its next request gets no response) while a response in
//! flight at shutdown is finished first, on the viewer and on the admin listener.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::edge::{edge_config, until, TestEdge};
use crate::support::origin::{Gate, Origin, Script};

/// What came back for one request on a kept-alive connection.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A whole response: its status line and body.
    Response(String, Vec<u8>),
    /// The connection ended (EOF or reset) before a whole response.
    Closed,
}

/// Sends `GET path` on `s` and reads exactly one response (its `Content-Length` body), or
/// notes that the connection was closed. Fails the test if neither happens within 5 s.
async fn get_on(s: &mut TcpStream, host: &str, path: &str) -> Answer {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Answer::Closed;
    }
    read_one(s).await
}

async fn read_one(s: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + len {
                let status = head.lines().next().unwrap_or_default().to_string();
                return Answer::Response(status, bytes[end + 4..end + 4 + len].to_vec());
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("neither a response nor a close within 5 s: {bytes:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Answer::Closed,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits (bounded) until a new connection to `addr` is refused: the accept loop has stopped.
async fn until_refused(addr: std::net::SocketAddr) {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections 5 s after shutdown");
}

#[tokio::test]
async fn shutdown_closes_idle_keepalive_connections_and_finishes_responses_in_flight() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("segment a"));
    let gate = Gate::new();
    origin.script("/slow.ts", Script::ok("slow segment").gate(&gate));
    let mut raw = edge_config(&origin);
    // Long enough that the drain, not the deadline, ends the in-flight response.
    raw.server.shutdown_grace = Some("10s".into());
    let mut edge = TestEdge::start(raw).await;
    let host = edge.addr.to_string();

    let mut idle = TcpStream::connect(edge.addr).await.expect("connect");
    let first = get_on(&mut idle, &host, "/a.ts").await;
    assert_eq!(
        first,
        Answer::Response("HTTP/1.1 200 OK".into(), b"segment a".to_vec())
    );

    let mut busy = TcpStream::connect(edge.addr).await.expect("connect");
    busy.write_all(format!("GET /slow.ts HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    until("the slow request reached the origin", || {
        origin.count("/slow.ts") == 1
    })
    .await;

    edge.shut_down();
    until_refused(edge.addr).await;

    // The idle keep-alive connection is closed, not served.
    assert_eq!(get_on(&mut idle, &host, "/a.ts").await, Answer::Closed);
    assert_eq!(origin.count("/a.ts"), 1, "no request served after shutdown");

    // The response in flight at shutdown completes, then its connection closes too.
    gate.open();
    assert_eq!(
        read_one(&mut busy).await,
        Answer::Response("HTTP/1.1 200 OK".into(), b"slow segment".to_vec())
    );
    assert_eq!(get_on(&mut busy, &host, "/a.ts").await, Answer::Closed);
}

#[tokio::test]
async fn shutdown_bounds_the_drain_by_the_grace_period() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script("/stuck.ts", Script::ok("never").gate(&gate));
    let mut raw = edge_config(&origin);
    raw.server.shutdown_grace = Some("200ms".into());
    let mut edge = TestEdge::start(raw).await;
    let host = edge.addr.to_string();

    let mut stuck = TcpStream::connect(edge.addr).await.expect("connect");
    stuck
        .write_all(format!("GET /stuck.ts HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    until("the stuck request reached the origin", || {
        origin.count("/stuck.ts") == 1
    })
    .await;
    edge.shut_down();
    // Past the grace period the connection is closed even though its response never came.
    assert_eq!(read_one(&mut stuck).await, Answer::Closed);
    gate.open();
}

#[tokio::test]
async fn shutdown_closes_idle_admin_connections() {
    let origin = Origin::start().await;
    let mut raw = edge_config(&origin);
    raw.admin_token = Some("shutdown-test-token".into());
    let cfg = vedge::Config::try_from(raw).expect("valid config");
    let edge = vedge::Edge::new(cfg).await.expect("edge starts");
    let viewer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = admin.local_addr().expect("admin addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(vedge::serve(
        edge,
        vedge::Listeners {
            viewer,
            admin: Some(admin),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let host = addr.to_string();
    let mut idle = TcpStream::connect(addr).await.expect("connect admin");
    match get_on(&mut idle, &host, "/healthz").await {
        Answer::Response(status, _) => assert!(status.starts_with("HTTP/1.1 200"), "{status}"),
        Answer::Closed => panic!("admin closed before shutdown"),
    }
    let _ = stop.send(());
    until_refused(addr).await;
    assert_eq!(get_on(&mut idle, &host, "/healthz").await, Answer::Closed);
    let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
}

/// Bug: with per-core event loops (`server.threads` >= 1, the default of `vedge serve`), the
/// listener handed to `serve` stayed open through the whole drain after SIGTERM: the kernel
/// kept completing handshakes that no loop accepted, so a new viewer (or a load balancer's
/// probe) hung unanswered until the grace period ended and then got a reset, instead of being
/// refused at once and trying another node. Every listening socket closes when the drain
/// starts now.
#[tokio::test]
async fn per_core_event_loops_stop_accepting_at_once_on_shutdown() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script("/slow.ts", Script::ok("slow segment").gate(&gate));
    let mut raw = edge_config(&origin);
    raw.server.threads = Some(2);
    raw.server.shutdown_grace = Some("10s".into());
    let mut edge = TestEdge::start(raw).await;
    let host = edge.addr.to_string();
    let mut busy = TcpStream::connect(edge.addr).await.expect("connect");
    busy.write_all(format!("GET /slow.ts HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    until("the slow request reached the origin", || {
        origin.count("/slow.ts") == 1
    })
    .await;
    edge.shut_down();
    // Refused while the response in flight still drains (the grace is 10 s, the origin holds
    // the answer until the gate opens).
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(edge.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a new connection was accepted 1 s into the drain");
    gate.open();
    assert_eq!(
        read_one(&mut busy).await,
        Answer::Response("HTTP/1.1 200 OK".into(), b"slow segment".to_vec())
    );
}
