//! An edge in front of a shield that answers with a stale copy after a soft purge (whose copy
//! is stale without an `Age` past its `max-age`), within stale-while-revalidate or
//! stale-if-error. The edge reads the shield's `Cache-Status` and never stores, nor freshens
//! with a `304`, what the shield said was stale.

use http::StatusCode;
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
