//! Regression tests from the fourth adversarial review (a viewer's `CDN-Loop`, amplification,
//! CMCD prefetch hints, credentials and request directives): each proves one rule and fails on
//! the code before its fix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::edge::{edge_config, edge_config_for, until, TestEdge};
use crate::support::origin::Origin;

/// How the upstream answers a request head (lowercased): `Some(response)` for a request it
/// singles out (held until `release` is set, so viewers can collapse onto the fill), `None` for
/// the cacheable 200 every other request gets.
type Answer = fn(&str) -> Option<&'static [u8]>;

/// The upstream's answer to the requests not singled out.
type Otherwise = fn(&str) -> Vec<u8>;

/// A cacheable 200 of `segment`.
fn cacheable(_: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 7\r\n\r\nsegment".to_vec()
}

/// An upstream that answers requests it singles out (a shield seeing its own node in
/// `CDN-Loop`, an origin refusing credentials) differently from the rest. Counts GETs.
struct Upstream {
    url: String,
    requests: Arc<AtomicUsize>,
    /// Requests singled out.
    looped: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl Upstream {
    async fn start(answer: Answer, otherwise: Otherwise) -> Upstream {
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
                tokio::spawn(Self::conn(
                    s,
                    answer,
                    otherwise,
                    n.clone(),
                    lo.clone(),
                    rx.clone(),
                ));
            }
        });
        Upstream {
            url,
            requests,
            looped,
            release,
        }
    }

    /// Serves keep-alive requests on one connection (at most 64, heads at most 16 KiB).
    async fn conn(
        mut s: TcpStream,
        answer: Answer,
        otherwise: Otherwise,
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
            let resp = match answer(&head) {
                Some(resp) => {
                    looped.fetch_add(1, Ordering::SeqCst);
                    let _ = release.wait_for(|r| *r).await;
                    resp.to_vec()
                }
                None => otherwise(&head),
            };
            if s.write_all(&resp).await.is_err() {
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
    let up = Upstream::start(
        |head| {
            head.lines()
                .any(|l| l.starts_with("cdn-loop:") && l.contains("node=shield"))
                .then_some(b"HTTP/1.1 508 Loop Detected\r\ncontent-length: 0\r\n\r\n")
        },
        cacheable,
    )
    .await;
    let raw = edge_config_for(up.url.clone());
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
    let viewers = collapse_viewers(&edge, "/v/seg1.ts", READERS).await;
    up.release.send_replace(true);

    let r = tokio::time::timeout(Duration::from_secs(10), attacker)
        .await
        .expect("attacker answered")
        .expect("attacker task");
    assert_eq!(r.status, 508, "the loop is the attacker's own");
    each_gets_the_segment(viewers).await;
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

/// A viewer with junk credentials whose fill the origin refuses with `401` and `no-store` (an
/// answer to its credentials alone) teaches the edge nothing of the object: the next viewers
/// fill it once and then hit. Before, the refusal was remembered as the object's hit-for-pass
/// and every viewer went to the origin for `hit_for_pass_ttl`.
#[tokio::test]
async fn a_refused_credentialed_fill_leaves_no_hit_for_pass() {
    let up = Upstream::start(|head| {
        head.contains("\r\nauthorization:").then_some(
            b"HTTP/1.1 401 Unauthorized\r\ncache-control: no-store\r\nwww-authenticate: Bearer\r\ncontent-length: 0\r\n\r\n",
        )
    }, cacheable)
    .await;
    up.release.send_replace(true);
    let raw = edge_config_for(up.url.clone());
    let edge = TestEdge::start(raw).await;

    let r = edge
        .get_with("/v/seg2.ts", &[("authorization", "Bearer junk")])
        .await;
    assert_eq!(r.status, 401, "the refusal is the credentialed viewer's");
    edge.settle().await;
    for _ in 0..3 {
        let r = edge.get("/v/seg2.ts").await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"segment");
        edge.settle().await;
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "the refused fill, then one fill every viewer shares"
    );
}

/// Bytes of the sliced object of `a_walk_joining_someone_elses_refused_slice_fetches_it_itself`.
const SLICED_LEN: usize = 128 << 10;

fn sliced_body() -> Vec<u8> {
    (0..SLICED_LEN).map(|i| (i % 251) as u8).collect()
}

/// A ranged origin for a two-slice object: the 206 of the range asked (`bytes=a-b` only).
fn ranged(head: &str) -> Vec<u8> {
    let body = sliced_body();
    let range = head
        .lines()
        .find_map(|l| l.strip_prefix("range: bytes="))
        .and_then(|r| r.trim().split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let (a, b) = range.unwrap_or((0, SLICED_LEN - 1));
    let b = b.min(SLICED_LEN - 1);
    let mut out = format!(
        "HTTP/1.1 206 Partial Content\r\ncache-control: max-age=600\r\netag: \"v1\"\r\ncontent-range: bytes {a}-{b}/{SLICED_LEN}\r\ncontent-length: {}\r\n\r\n",
        b - a + 1
    )
    .into_bytes();
    out.extend_from_slice(&body[a..=b]);
    out
}

/// A viewer streaming a sliced object joins, for its next slice, a slice fill led by a viewer
/// with junk credentials that the origin refuses (401, `no-store`). That refusal is the
/// credentialed viewer's alone: the streaming viewer fetches the slice itself and gets every
/// byte. Before, its response was cut at the slice boundary.
#[tokio::test]
async fn a_walk_joining_someone_elses_refused_slice_fetches_it_itself() {
    let up = Upstream::start(
        |head| {
            (head.contains("\r\nauthorization:") && head.contains("range: bytes=65536-")).then_some(
                b"HTTP/1.1 401 Unauthorized\r\ncache-control: no-store\r\ncontent-length: 0\r\n\r\n",
            )
        },
        ranged,
    )
    .await;
    let mut raw = edge_config_for(up.url.clone());
    raw.cache.slice_size = Some("64KiB".into());
    let edge = Arc::new(TestEdge::start(raw).await);

    // The object's record and first slice are cached.
    let r = edge.get_with("/v/big.ts", &[("range", "bytes=0-99")]).await;
    assert_eq!(r.status, 206);
    edge.settle().await;

    let attacker = {
        let edge = edge.clone();
        tokio::spawn(async move {
            edge.get_with(
                "/v/big.ts",
                &[
                    ("range", "bytes=70000-70099"),
                    ("authorization", "Bearer junk"),
                ],
            )
            .await
        })
    };
    until("the credentialed slice fill reached the origin", || {
        up.looped.load(Ordering::SeqCst) == 1
    })
    .await;
    let before = edge.collapsed();
    let viewer = {
        let edge = edge.clone();
        tokio::spawn(async move { edge.get("/v/big.ts").await })
    };
    until("the viewer's walk joined the refused slice fill", || {
        edge.collapsed() > before
    })
    .await;
    up.release.send_replace(true);

    let r = tokio::time::timeout(Duration::from_secs(10), attacker)
        .await
        .expect("attacker answered")
        .expect("attacker task");
    assert_eq!(r.status, 401);
    let r = tokio::time::timeout(Duration::from_secs(10), viewer)
        .await
        .expect("viewer answered")
        .expect("the viewer's body was not cut");
    assert_eq!(r.status, 200);
    assert!(r.body == sliced_body(), "the viewer got every byte");
}

/// A CMCD `nor` hint makes the edge prefetch the segment the audience asks for next; the origin
/// refuses the edge's own request (it wants a viewer's `X-Forwarded-For`). The viewers that
/// joined that prefetch share one fill of their own. Before, each of them passed to the
/// origin: one hint turned a live audience's segment into one origin fetch per viewer.
#[tokio::test]
async fn viewers_on_a_refused_prefetch_share_one_fill() {
    const VIEWERS: usize = 4;
    let up = Upstream::start(
        |head| {
            (head.starts_with("get /v/seg2.m4s") && !head.contains("\r\nx-forwarded-for:"))
                .then_some(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        },
        cacheable,
    )
    .await;
    let raw = edge_config_for(up.url.clone());
    let edge = Arc::new(TestEdge::start(raw).await);

    let r = edge
        .get_with("/v/seg1.m4s", &[("cmcd-request", "nor=\"seg2.m4s\"")])
        .await;
    assert_eq!(r.status, 200);
    until("the prefetch reached the origin", || {
        up.looped.load(Ordering::SeqCst) == 1
    })
    .await;
    let viewers = collapse_viewers(&edge, "/v/seg2.m4s", VIEWERS).await;
    up.release.send_replace(true);
    each_gets_the_segment(viewers).await;
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        3,
        "seg1, the refused prefetch, one fill the viewers share"
    );
}

/// `TRACE` echoes the request as the origin received it, with what the edge added on the way
/// (the origin's internal host name, `Via`, `X-Forwarded-For`); `CONNECT` asks a reverse proxy
/// for a tunnel. Neither reaches the origin: 405 with `Allow`. Before, both were passed through.
#[tokio::test]
async fn trace_and_connect_are_refused_not_forwarded() {
    let origin = Origin::start().await;
    origin.script("/v/seg.ts", crate::support::origin::Script::ok("x").echo());
    let edge = TestEdge::start(edge_config(&origin)).await;
    for req in [
        "TRACE /v/seg.ts HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
        format!(
            "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
            origin.addr()
        ),
    ] {
        let mut s = TcpStream::connect(edge.addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("send");
        let r = crate::support::edge::read_raw(&mut s).await;
        assert_eq!(r.status(), 405, "{req}");
        assert!(
            r.header("allow").is_some_and(|a| a.contains("GET")),
            "{req}"
        );
    }
    for path in ["/v/seg.ts", "/"] {
        let forwarded = origin
            .seen(path)
            .iter()
            .filter(|s| s.method == "TRACE" || s.method == "CONNECT")
            .count();
        assert_eq!(forwarded, 0, "{path}");
    }
    // Ordinary methods still pass.
    assert_eq!(edge.get("/v/seg.ts").await.status, 200);
}

/// `n` viewers ask for `path` and are waited for (bounded) until all of them have collapsed onto
/// the fill in flight.
async fn collapse_viewers(
    edge: &Arc<TestEdge>,
    path: &'static str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<crate::support::edge::Resp>> {
    let before = edge.collapsed() as usize;
    let viewers = (0..n)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get(path).await })
        })
        .collect();
    until("the viewers wait on the fill in flight", || {
        edge.collapsed() as usize >= before + n
    })
    .await;
    viewers
}

/// Every viewer is answered (bounded) with the whole segment, none with another's failure.
async fn each_gets_the_segment(viewers: Vec<tokio::task::JoinHandle<crate::support::edge::Resp>>) {
    for v in viewers {
        let r = tokio::time::timeout(Duration::from_secs(10), v)
            .await
            .expect("viewer answered")
            .expect("viewer task");
        assert_eq!(r.status, 200, "a viewer got another viewer's failure");
        assert_eq!(&r.body[..], b"segment");
    }
}
