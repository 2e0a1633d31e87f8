//! Regression tests from the fourth adversarial review (a viewer's `CDN-Loop`, amplification,
//! CMCD prefetch hints, credentials and request directives): each proves one rule and fails on
//! the code before its fix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::edge::{edge_config, until, TestEdge};
use crate::support::origin::Origin;

/// An upstream that, like a shield, answers 508 Loop Detected to a request whose `CDN-Loop`
/// names `node=shield` (held until `release` is set, so viewers can collapse onto the fill),
/// and a cacheable 200 to any other. Counts GETs.
struct LoopAwareUpstream {
    url: String,
    requests: Arc<AtomicUsize>,
    looped: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl LoopAwareUpstream {
    async fn start() -> LoopAwareUpstream {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let url = format!("http://{}", l.local_addr().expect("upstream addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let looped = Arc::new(AtomicUsize::new(0));
        let (release, rx) = watch::channel(false);
        let (n, lo) = (requests.clone(), looped.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(Self::conn(s, n.clone(), lo.clone(), rx.clone()));
            }
        });
        LoopAwareUpstream {
            url,
            requests,
            looped,
            release,
        }
    }

    /// Serves keep-alive requests on one connection (at most 64, heads at most 16 KiB).
    async fn conn(
        mut s: TcpStream,
        requests: Arc<AtomicUsize>,
        looped: Arc<AtomicUsize>,
        mut release: watch::Receiver<bool>,
    ) {
        let mut buf = Vec::new();
        for _ in 0..64 {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.len() > 16 << 10 {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            // The edge's preconnect probe (a HEAD) is not a fetch of the object.
            if head.starts_with("get ") {
                requests.fetch_add(1, Ordering::SeqCst);
            }
            let loops = head
                .lines()
                .any(|l| l.starts_with("cdn-loop:") && l.contains("node=shield"));
            let resp: &[u8] = if loops {
                looped.fetch_add(1, Ordering::SeqCst);
                let _ = release.wait_for(|r| *r).await;
                b"HTTP/1.1 508 Loop Detected\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 7\r\n\r\nsegment"
            };
            if s.write_all(resp).await.is_err() {
                return;
            }
        }
    }
}

/// A viewer sending `CDN-Loop: vedge; node=shield` makes the shield refuse its fill with 508.
/// Only that viewer gets the 508: the viewers collapsed onto its fill claim one fresh fill
/// without its entries and get the object (one more upstream request, not one each). Before,
/// every collapsed viewer was answered 508.
#[tokio::test]
async fn a_viewers_cdn_loop_508_reaches_only_that_viewer() {
    const READERS: usize = 4;
    let up = LoopAwareUpstream::start().await;
    let unused = Origin::start().await;
    let mut raw = edge_config(&unused);
    raw.origin = Some(up.url.clone());
    let edge = Arc::new(TestEdge::start(raw).await);

    let attacker = {
        let edge = edge.clone();
        tokio::spawn(async move {
            edge.get_with("/v/seg1.ts", &[("cdn-loop", "vedge; node=shield")])
                .await
        })
    };
    until("the poisoned fill reached the upstream", || {
        up.looped.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut viewers = Vec::new();
    for _ in 0..READERS {
        let edge = edge.clone();
        viewers.push(tokio::spawn(async move { edge.get("/v/seg1.ts").await }));
    }
    until("the viewers wait on the poisoned fill", || {
        edge.collapsed() as usize >= READERS
    })
    .await;
    up.release.send_replace(true);

    let r = tokio::time::timeout(Duration::from_secs(10), attacker)
        .await
        .expect("attacker answered")
        .expect("attacker task");
    assert_eq!(r.status, 508, "the loop is the attacker's own");
    for v in viewers {
        let r = tokio::time::timeout(Duration::from_secs(10), v)
            .await
            .expect("viewer answered")
            .expect("viewer task");
        assert_eq!(r.status, 200, "a viewer got the attacker's 508");
        assert_eq!(&r.body[..], b"segment");
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "the poisoned fill and one fresh fill for every other viewer"
    );
    edge.settle().await;
    let r = edge.get("/v/seg1.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests.load(Ordering::SeqCst), 2, "then a hit");
}
