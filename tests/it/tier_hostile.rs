//! The shield path under hostile input: a shield's (or any upstream's) `Cache-Status` cannot
//! break this edge's own entry or grow the field without bound, and `CDN-Loop` loop detection
//! is not bypassed by case, whitespace or bytes outside visible ASCII.

use http::StatusCode;

use crate::support::edge::{edge_config, TestEdge};
use crate::support::origin::{Origin, Script};

fn entries(cs: &str) -> Vec<String> {
    cs.split(',').map(|e| e.trim().to_string()).collect()
}

#[tokio::test]
async fn upstream_cache_status_is_kept_only_when_well_formed_and_bounded() {
    let origin = Origin::start().await;
    // An unclosed string would swallow the edge's entry once joined after it.
    origin.script(
        "/quote.ts",
        Script::ok("q")
            .header("cache-status", "shield; fwd=miss; detail=\"open")
            .header("cache-status", "other; hit"),
    );
    // Thousands of entries, as a hostile upstream (or a loop of tiers) would send.
    let many: String = (0..2000)
        .map(|i| format!("c{i}; hit, "))
        .collect::<String>()
        + "shield; fwd=uri-miss; stored";
    origin.script("/many.ts", Script::ok("m").header("cache-status", &many));
    origin.script(
        "/shield.ts",
        Script::ok("s").header("cache-status", "shield; fwd=uri-miss; stored"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let r = edge.get("/shield.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    let e = entries(r.h("cache-status"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        e[0], "shield; fwd=uri-miss; stored",
        "the shield's entry first"
    );
    assert!(e[1].starts_with("vedge;"), "the edge's own last: {e:?}");

    let r = edge.get("/quote.ts").await;
    let e = entries(r.h("cache-status"));
    assert_eq!(e.len(), 2, "the malformed line is dropped: {e:?}");
    assert_eq!(e[0], "other; hit");
    assert!(e[1].starts_with("vedge;") && !e[1].contains('"'), "{e:?}");

    for _ in 0..2 {
        // A miss, then a hit from the stored object: bounded both times.
        let r = edge.get("/many.ts").await;
        let cs = r.h("cache-status").to_string();
        let e = entries(&cs);
        assert!(e.len() <= 9, "at most 8 upstream entries kept: {}", e.len());
        assert!(cs.len() <= 1100, "bounded: {} bytes", cs.len());
        assert_eq!(
            e[e.len() - 2],
            "shield; fwd=uri-miss; stored",
            "the nearest kept"
        );
        assert!(e[e.len() - 1].starts_with("vedge;"), "{e:?}");
        edge.settle().await;
    }
}

#[tokio::test]
async fn cdn_loop_naming_this_node_is_refused_whatever_its_case_or_spacing() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("a"));
    let mut raw = edge_config(&origin);
    raw.node_id = Some("Shield-A".into());
    let edge = TestEdge::start(raw).await;
    for v in [
        "vedge; node=Shield-A",
        "VEDGE; NODE=shield-a",
        "vedge ;\tnode = shield-a",
        "vedge; node=\"SHIELD-A\"",
        "other, vedge; node=edge-1; node=shield-a",
        "vedge",
    ] {
        let r = edge.get_with("/a.ts", &[("cdn-loop", v)]).await;
        assert_eq!(r.status.as_u16(), 508, "{v:?} loops");
    }
    // One merged field line with a byte outside visible ASCII still names this node.
    let r = edge
        .raw(b"GET /a.ts HTTP/1.1\r\nHost: x\r\nCDN-Loop: other\xff, vedge; node=shield-a\r\nConnection: close\r\n\r\n")
        .await;
    assert!(r.text().starts_with("HTTP/1.1 508"), "{}", r.text());
    assert_eq!(origin.count("/a.ts"), 0, "no loop reached the origin");

    // Other nodes of the same CDN, and other CDNs, pass.
    let r = edge
        .get_with("/a.ts", &[("cdn-loop", "vedge; node=edge-1, othercdn")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A fan-out purge counts a node as purged only when it gets the purge API's own answer (its
/// JSON report): a 2xx from something in front of a node (a proxy's `204`, a portal's `200`
/// HTML page) purged nothing, so the fan-out is a failure (502) naming those nodes. Before,
/// any 2xx counted as success and the operator was told every node had purged.
#[tokio::test]
async fn a_fanout_purge_counts_a_node_only_on_the_purge_apis_own_answer() {
    use crate::support::binary::ADMIN_TOKEN;
    use crate::support::edge::admin_purge;
    use vedge::config::{RawCluster, RawClusterNode};
    let origin = Origin::start().await;
    origin.script(
        "/a.ts",
        Script::ok("a").header("cache-control", "max-age=60"),
    );
    // Something answering where a node's admin API should be.
    let proxy = Origin::start().await;
    proxy.script("/admin/purge", Script::status(204, ""));
    let portal = Origin::start().await;
    portal.script(
        "/admin/purge",
        Script::ok("<html><body>Welcome to the network</body></html>")
            .header("content-type", "text/html"),
    );
    // And a real node.
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let real = TestEdge::start(raw).await;
    let real_api = real.admin().await;
    let real_admin = format!("http://{}", real_api.addr);

    let node = |admin: String, role: &str| RawClusterNode {
        admin,
        token: Some(ADMIN_TOKEN.into()),
        role: Some(role.into()),
        ..RawClusterNode::default()
    };
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    raw.cluster = Some(RawCluster {
        nodes: vec![
            node(proxy.url(), "shield"),
            node(real_admin.clone(), "edge"),
            node(portal.url(), "edge"),
        ],
        timeout: Some("5s".into()),
    });
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    assert_eq!(edge.get("/a.ts").await.status, StatusCode::OK);

    let (status, answer) =
        admin_purge(api.addr.port(), r#"{"urls":["/a.ts"],"fanout":true}"#).await;
    let ok_of = |admin: &str| {
        answer["fanout"]["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["admin"] == admin))
            .map(|n| n["ok"].clone())
            .unwrap_or_default()
    };
    let oks = [
        ok_of(&proxy.url()),
        ok_of(&real_admin),
        ok_of(&portal.url()),
    ];
    println!(
        "status {status}; fanout ok {}; node ok (proxy 204, real node, portal 200 HTML): {oks:?}",
        answer["fanout"]["ok"]
    );
    assert_eq!(proxy.count("/admin/purge"), 1);
    assert_eq!(portal.count("/admin/purge"), 1);
    assert_eq!(
        oks,
        [serde_json::json!(false), true.into(), false.into()],
        "{answer}"
    );
    assert_eq!(answer["fanout"]["ok"], false, "{answer}");
    assert_eq!(status, 502, "{answer}");
    assert_eq!(edge.get("/a.ts").await.x_cache(), "MISS", "purged locally");
}
