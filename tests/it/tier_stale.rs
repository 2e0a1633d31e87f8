//! An edge in front of a shield that answers with a stale copy: after a soft purge (whose copy
//! is stale without an `Age` past its `max-age`), within stale-while-revalidate or
//! stale-if-error, and when the shield's origin hangs. The edge reads the shield's
//! `Cache-Status` and never stores, nor freshens with a `304`, what the shield said was stale;
//! it waits for a shield longer than the shield waits for its origin, and with a stale copy of
//! its own it does not try a second shield after a timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vedge::config::{RawConfig, RawShield};

use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::{admin_purge, edge_config, Resp, TestEdge};
use crate::support::origin::{Origin, Script};

fn node(origin: &Origin, id: &str) -> RawConfig {
    let mut raw = edge_config(origin);
    raw.node_id = Some(id.into());
    raw.admin_token = Some(ADMIN_TOKEN.into());
    raw.server.shutdown_grace = Some("100ms".into());
    raw
}

/// One shield, and one edge filling through it.
async fn pair(origin: &Origin) -> (TestEdge, TestEdge) {
    let shield = TestEdge::start_with_admin(node(origin, "shield-0")).await;
    let mut raw = node(origin, "edge-0");
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{}", shield.addr)],
        ..RawShield::default()
    });
    let edge = TestEdge::start_with_admin(raw).await;
    (shield, edge)
}

/// A soft purge of `path` on both tiers, shield first (as the fan-out orders it).
async fn soft_purge(shield: &TestEdge, edge: &TestEdge, path: &str) {
    for node in [shield, edge] {
        let port = node.admin.expect("admin listener").port();
        let (status, report) =
            admin_purge(port, &format!(r#"{{"urls":["{path}"],"soft":true}}"#)).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["purged"], 1, "{report}");
    }
}

fn version(body: &str) -> Script {
    Script::ok(body.to_string()).header("etag", &format!("\"{body}\""))
}

/// Status and body as text, for assertions that print well.
fn answer(r: &Resp) -> (StatusCode, String) {
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn label(r: &Resp) -> String {
    format!(
        "{} {:?} {} | {}",
        r.status,
        String::from_utf8_lossy(&r.body),
        r.x_cache(),
        r.h("cache-status")
    )
}

/// Bug: after a soft purge of both tiers, the origin answered one 503; the shield served its
/// stale copy (stale-if-error) and answered the edge's conditional request with a `304` and a
/// small `Age`, and the edge took it as a revalidation: its copy was fresh again for the whole
/// `max-age` (3600 s) although the shield's `Cache-Status` said `ttl=-1; detail=stale-if-error`.
/// Once the origin was back with a new version, the edge kept serving the old one as a HIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_s_stale_if_error_304_after_a_soft_purge_leaves_the_edge_s_copy_stale() {
    let origin = Origin::start().await;
    let path = "/sie/a.ts";
    let cc = "max-age=3600, stale-if-error=600";
    origin.script(path, version("v1").header("cache-control", cc));
    let (shield, edge) = pair(&origin).await;
    assert_eq!(&edge.get(path).await.body[..], b"v1");
    edge.settle().await;
    shield.settle().await;

    soft_purge(&shield, &edge, path).await;
    origin.script(path, Script::status(503, "down"));
    let down = edge.get(path).await;
    assert_eq!(
        answer(&down),
        (StatusCode::OK, "v1".into()),
        "the stale copy stands in: {}",
        label(&down)
    );
    assert!(
        down.h("cache-status").contains("stale-if-error"),
        "the shield answered stale: {}",
        label(&down)
    );
    edge.settle().await;
    shield.settle().await;

    origin.script(path, version("v2").header("cache-control", cc));
    let back = edge.get(path).await;
    assert_eq!(
        answer(&back),
        (StatusCode::OK, "v2".into()),
        "the origin is back: the new version, not the soft-purged copy freshened by a stale 304: {}",
        label(&back)
    );
    assert_eq!(origin.count(path), 3, "warm, the 503, the new version");
}

/// Bug: a soft purge of both tiers with `stale-while-revalidate`: the edge's background
/// revalidation reached the shield, itself soft-purged and in its stale-while-revalidate
/// window, which answered with its stale copy (a `304`, small `Age`); the edge stored it fresh
/// for the rest of `max-age`, so every later viewer got the old version as a HIT although the
/// shield had the new one by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_within_stale_while_revalidate_is_not_undone_by_the_shield_s_stale_copy() {
    let origin = Origin::start().await;
    let path = "/swr/a.ts";
    let cc = "max-age=3600, stale-while-revalidate=600";
    origin.script(path, version("v1").header("cache-control", cc));
    let (shield, edge) = pair(&origin).await;
    assert_eq!(&edge.get(path).await.body[..], b"v1");
    edge.settle().await;
    shield.settle().await;

    origin.script(path, version("v2").header("cache-control", cc));
    soft_purge(&shield, &edge, path).await;
    // Each answer is stale v1 (and revalidates in the background) until the edge has v2;
    // two rounds at most: the shield's own refresh, then the edge's.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = edge.get(path).await;
        edge.settle().await;
        shield.settle().await;
        seen.push(label(&r));
        if &r.body[..] == b"v2" {
            break;
        }
        assert_eq!(
            r.x_cache(),
            "STALE",
            "a soft-purged copy is never fresh again before the origin was asked: {seen:#?}"
        );
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("\"v2\"")),
        "the new version reached the edge: {seen:#?}"
    );
    assert_eq!(origin.count(path), 2, "warm, the shield's one revalidation");
}

/// Bug: with the origin hung (no answer at all) and the same `first_byte_timeout` on both tiers,
/// the edge gave up on the shield at the very moment the shield would have answered with its
/// stale-if-error copy, tried the next candidate for a second whole timeout, and answered 504
/// (`origin-timeout`), where asking the shield directly got the copy. The edge now waits for a
/// shield longer than the shield waits for its origin (`[shield] first_byte_timeout`, default
/// half as long again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_s_stale_if_error_copy_reaches_the_viewer_when_the_origin_hangs() {
    let origin = Origin::start().await;
    let path = "/hung/a.ts";
    // Stale as soon as stored (kept for its validator), so no test waits for a TTL.
    origin.script(
        path,
        version("old").header("cache-control", "max-age=0, stale-if-error=300"),
    );
    let timeout = |mut raw: RawConfig| {
        raw.origin_client.first_byte_timeout = Some("1s".into());
        raw
    };
    let shield = TestEdge::start_with_admin(timeout(node(&origin, "shield-0"))).await;
    assert_eq!(
        &shield.get(path).await.body[..],
        b"old",
        "the shield is warm"
    );
    shield.settle().await;
    let mut raw = timeout(node(&origin, "edge-0"));
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{}", shield.addr)],
        ..RawShield::default()
    });
    let edge = TestEdge::start_with_admin(raw).await;

    // The origin accepts and never answers.
    origin.script(path, version("new").head_delay(Duration::from_secs(60)));
    let r = edge.get(path).await;
    assert_eq!(
        answer(&r),
        (StatusCode::OK, "old".into()),
        "the shield's stale-if-error copy: {}",
        label(&r)
    );
    assert!(
        r.h("cache-status").contains("detail=stale-if-error"),
        "{}",
        label(&r)
    );
}

/// A shield stand-in on loopback: the first request any of them gets is answered with a copy
/// that is stale at once (`max-age=0`, with a validator and stale-if-error); every later one is
/// read and never answered, as by a shield whose origin hangs past the edge's patience.
/// Returns its address and how many requests reached it.
async fn answers_once(answered: Arc<AtomicBool>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = Arc::new(AtomicUsize::new(0));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen, answered) = (seen.clone(), answered.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut pending = Vec::new();
                // Each request head counts (a pooled connection carries several); GETs only.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || pending.len() > 65536 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        seen.fetch_add(1, Ordering::Relaxed);
                        if !answered.swap(true, Ordering::Relaxed) {
                            let answer = b"HTTP/1.1 200 OK\r\n\
                                Cache-Control: max-age=0, stale-if-error=300\r\n\
                                ETag: \"old\"\r\nContent-Length: 3\r\n\r\nold";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, asked)
}

/// Bug: an edge holding a stale-if-error copy of its own, whose shield timed out, tried the
/// key's next shield for a second whole timeout before the viewer got that copy (30 s with the
/// defaults), and counted a timeout against that shield too. The copy now answers once the
/// first shield timed out; the next shield is not asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_a_stale_copy_serves_it_after_one_shield_timeout() {
    let origin = Origin::start().await;
    let answered = Arc::new(AtomicBool::new(false));
    let (a, asked_a) = answers_once(answered.clone()).await;
    let (b, asked_b) = answers_once(answered).await;
    let mut raw = node(&origin, "edge-0");
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{a}"), format!("http://{b}")],
        first_byte_timeout: Some("1s".into()),
        ..RawShield::default()
    });
    let edge = TestEdge::start_with_admin(raw).await;
    let path = "/two/a.ts";
    let warm = edge.get(path).await;
    assert_eq!(&warm.body[..], b"old", "{}", label(&warm));
    edge.settle().await;

    let r = edge.get(path).await;
    assert_eq!(
        answer(&r),
        (StatusCode::OK, "old".into()),
        "the edge's stale-if-error copy: {}",
        label(&r)
    );
    let asked = asked_a.load(Ordering::Relaxed) + asked_b.load(Ordering::Relaxed);
    assert_eq!(
        asked, 2,
        "the warm request and the one that timed out: the next shield was not asked"
    );
    assert_eq!(origin.count(path), 0, "never around the shields");
}

/// `[shield] first_byte_timeout`: half again the node's own wait for an origin unless set; a
/// zero wait is refused.
#[test]
fn the_shield_wait_outlasts_the_origin_wait_by_default() {
    let resolve = |extra: &str| {
        let toml = format!("origin = \"http://o:1\"\n{extra}[shield]\nnodes = [\"http://s:1\"]\n");
        let raw: RawConfig = toml::from_str(&toml).expect("toml");
        vedge::Config::try_from(raw).map(|c| {
            c.tier
                .shield
                .expect("shield")
                .first_byte_timeout
                .as_millis()
        })
    };
    assert_eq!(resolve("").expect("valid"), 22_500);
    assert_eq!(
        resolve("[origin_client]\nfirst_byte_timeout = \"4s\"\n").expect("valid"),
        6_000
    );
    let own = "[origin_client]\nfirst_byte_timeout = \"4s\"\n";
    let toml = format!("{own}[shield]\nnodes = [\"http://s:1\"]\nfirst_byte_timeout = \"9s\"\n");
    let raw: RawConfig = toml::from_str(&format!("origin = \"http://o:1\"\n{toml}")).expect("toml");
    let cfg = vedge::Config::try_from(raw).expect("valid");
    assert_eq!(
        cfg.tier
            .shield
            .expect("shield")
            .first_byte_timeout
            .as_secs(),
        9
    );
    let raw: RawConfig = toml::from_str(
        "origin = \"http://o:1\"\n[shield]\nnodes = [\"http://s:1\"]\nfirst_byte_timeout = \"0s\"\n",
    )
    .expect("toml");
    let err = vedge::Config::try_from(raw).expect_err("zero").to_string();
    assert!(err.contains("shield.first_byte_timeout"), "{err}");
}
