//! A CDN tier on loopback: 3 edges in front of 2 shields in front of 1 origin. Cold bursts
//! collapse to one origin request for the whole tier, a shield killed mid-burst costs at most
//! one more, a fan-out purge reaches every node (shields first), and a node naming itself as
//! its shield gets 508.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use vedge::config::{RawCluster, RawClusterNode, RawConfig, RawShield};

use crate::support::edge::{edge_config, edge_config_for, until, TestEdge};
use crate::support::origin::{Gate, Origin, Script};

const TOKEN: &str = "tier-admin-token";
const VIEWERS: usize = 300;

fn segment(seed: u8) -> Bytes {
    (0..200_000u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn node_config(origin: &Origin, id: &str) -> RawConfig {
    let mut raw = edge_config(origin);
    raw.node_id = Some(id.into());
    raw.admin_token = Some(TOKEN.into());
    raw.server.shutdown_grace = Some("100ms".into());
    raw
}

struct Tier {
    origin: Origin,
    shields: Vec<Option<TestEdge>>,
    edges: Vec<TestEdge>,
}

/// 2 shields, then 3 edges using them; the first edge also knows every node's admin API.
async fn tier() -> Tier {
    let origin = Origin::start().await;
    let mut shields = Vec::new();
    for i in 0..2 {
        shields.push(Some(
            TestEdge::start_with_admin(node_config(&origin, &format!("shield-{i}"))).await,
        ));
    }
    let shield_urls: Vec<String> = shields
        .iter()
        .flatten()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let with_shields = |id: &str| {
        let mut raw = node_config(&origin, id);
        raw.shield = Some(RawShield {
            nodes: shield_urls.clone(),
            ..RawShield::default()
        });
        raw
    };
    let mut others = Vec::new();
    for i in 1..3 {
        others.push(TestEdge::start_with_admin(with_shields(&format!("edge-{i}"))).await);
    }
    let admin = |t: &TestEdge, role: &str| RawClusterNode {
        admin: format!("http://{}", t.admin.expect("admin listener")),
        token: Some(TOKEN.into()),
        role: Some(role.into()),
        ..RawClusterNode::default()
    };
    let mut first = with_shields("edge-0");
    let mut nodes: Vec<RawClusterNode> = shields
        .iter()
        .flatten()
        .map(|s| admin(s, "shield"))
        .collect();
    nodes.extend(others.iter().map(|e| admin(e, "edge")));
    first.cluster = Some(RawCluster {
        nodes,
        timeout: Some("3s".into()),
    });
    let mut edges = vec![TestEdge::start_with_admin(first).await];
    edges.extend(others);
    Tier {
        origin,
        shields,
        edges,
    }
}

impl Tier {
    /// The index of the shield that owns `path`'s key (as every edge computes it).
    fn owner(&self, path: &str) -> usize {
        let edge = &self.edges[0].edge;
        let target = vedge::proxy::target::resolve(&edge.config, None, path).expect("routed");
        let order = edge.origin.shield_order(target.route, &target.key);
        let owner = order.first().expect("the route goes through shields");
        self.shields
            .iter()
            .position(|s| {
                s.as_ref()
                    .is_some_and(|s| owner == &format!("http://{}", s.addr))
            })
            .expect("the owner is one of the shields")
    }

    /// `VIEWERS` viewers spread over the edges ask for `path` at once.
    fn burst(&self, path: &str) -> Vec<tokio::task::JoinHandle<(StatusCode, Bytes)>> {
        (0..VIEWERS)
            .map(|i| {
                let url = self.edges[i % self.edges.len()].url(path);
                tokio::spawn(async move { get(&url).await })
            })
            .collect()
    }

    fn collapsed_at_edges(&self) -> u64 {
        self.edges.iter().map(|e| e.collapsed()).sum()
    }
}

/// One viewer on its own connection, bounded.
async fn get(url: &str) -> (StatusCode, Bytes) {
    let client = reqwest_free::client();
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let fut = async {
        let resp = client.request(req).await.expect("edge answers");
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("whole body")
            .to_bytes();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("viewer done in time")
}

/// A plain hyper client (no pooling across viewers: each viewer is its own client).
mod reqwest_free {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    pub fn client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }
}

async fn results(
    handles: Vec<tokio::task::JoinHandle<(StatusCode, Bytes)>>,
) -> Vec<(StatusCode, Bytes)> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("viewer task"));
    }
    out
}

async fn admin_purge(edge: &TestEdge, body: &str) -> (StatusCode, serde_json::Value) {
    let url = format!("http://{}/admin/purge", edge.admin.expect("admin listener"));
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), reqwest_free::client().request(req))
        .await
        .expect("purge answered in time")
        .expect("admin answers");
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_fills_each_object_once_survives_a_shield_loss_and_purges_shields_first() {
    let mut t = tier().await;

    // 1. A cold segment, 300 viewers over 3 edges: one origin request for the whole tier.
    let body1 = segment(1);
    let gate = Gate::new();
    t.origin.script(
        "/one.ts",
        Script::ok(body1.clone())
            .header("cache-control", "max-age=600")
            .gate(&gate),
    );
    let owner1 = t.owner("/one.ts");
    let handles = t.burst("/one.ts");
    // Every viewer joined its edge's fill, and every edge's fill joined the owner's.
    until("every viewer waits on its edge's fill", || {
        t.collapsed_at_edges() >= (VIEWERS - t.edges.len()) as u64
    })
    .await;
    let owner = t.shields[owner1].as_ref().expect("owner alive");
    until("the edges' fills joined at the owning shield", || {
        owner.collapsed() >= (t.edges.len() - 1) as u64
    })
    .await;
    gate.open();
    let got = results(handles).await;
    assert!(got.iter().all(|(s, b)| *s == StatusCode::OK && *b == body1));
    assert_eq!(
        t.origin.count("/one.ts"),
        1,
        "one origin request for the tier"
    );
    for (i, s) in t.shields.iter().flatten().enumerate() {
        if i != owner1 {
            assert_eq!(s.collapsed(), 0, "only the owner saw the key");
        }
    }

    // Both tiers in Cache-Status: the shield's entry first, this edge's last (RFC 9211).
    for e in &t.edges {
        e.settle().await;
    }
    let r = t.edges[1].get("/one.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    let cs = r.h("cache-status").to_string();
    let entries: Vec<&str> = cs.split(',').map(str::trim).collect();
    assert!(entries.len() >= 2, "both tiers listed: {cs}");
    assert!(
        entries[entries.len() - 1].contains("hit"),
        "edge hit last: {cs}"
    );
    assert!(
        entries[0].contains("fwd="),
        "the shield's own fill first: {cs}"
    );

    // 2. A new key owned by the shield that is killed while the burst runs.
    let body2 = segment(2);
    let path2 = (0..64)
        .map(|i| format!("/two-{i}.ts"))
        .find(|p| t.owner(p) == owner1)
        .expect("some key is owned by the same shield");
    let gate2 = Gate::new();
    t.origin.script(
        &path2,
        Script::ok(body2.clone())
            .header("cache-control", "max-age=600")
            .gate(&gate2),
    );
    let before = t.collapsed_at_edges();
    let handles = t.burst(&path2);
    until("the owning shield asked the origin", || {
        t.origin.count(&path2) == 1
    })
    .await;
    until("every viewer waits on its edge's fill", || {
        t.collapsed_at_edges() - before >= (VIEWERS - t.edges.len()) as u64
    })
    .await;
    drop(t.shields[owner1].take());
    until("the next shield asked the origin", || {
        t.origin.count(&path2) >= 2
    })
    .await;
    gate2.open();
    let got = results(handles).await;
    let bad = got
        .iter()
        .filter(|(s, b)| *s != StatusCode::OK || *b != body2)
        .count();
    let mut seen: Vec<(u16, usize)> = got
        .iter()
        .filter(|(s, b)| *s != StatusCode::OK || *b != body2)
        .map(|(s, b)| (s.as_u16(), b.len()))
        .collect();
    seen.dedup();
    assert_eq!(bad, 0, "every viewer got 200 and the right bytes: {seen:?}");
    assert!(
        t.origin.count(&path2) <= 2,
        "at most one extra origin request"
    );

    // 3. Fan-out purge from one edge: shields first, then edges; the dead shield is reported.
    for e in &t.edges {
        e.settle().await;
    }
    let (status, report) = admin_purge(
        &t.edges[0],
        &format!(r#"{{"urls":["{path2}"],"fanout":true}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "a node was down: {report}");
    let nodes = report["fanout"]["nodes"]
        .as_array()
        .expect("per-node report");
    assert_eq!(nodes.len(), 4, "{report}");
    let roles: Vec<&str> = nodes.iter().filter_map(|n| n["role"].as_str()).collect();
    assert_eq!(roles, ["shield", "shield", "edge", "edge"], "shields first");
    let failed: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["ok"] != true).collect();
    assert_eq!(failed.len(), 1, "only the killed shield failed: {report}");
    assert_eq!(failed[0]["role"], "shield");
    assert!(failed[0]["error"].is_string() && failed[0]["ms"].is_u64());

    let asked = t.origin.count(&path2);
    t.origin.script(
        &path2,
        Script::ok(body2.clone()).header("cache-control", "max-age=600"),
    );
    for e in &t.edges {
        let r = e.get(&path2).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, body2);
        assert_eq!(r.x_cache(), "MISS", "purged at every edge");
    }
    assert_eq!(
        t.origin.count(&path2),
        asked + 1,
        "the edges' refills meet at the surviving shield: one origin request"
    );
}

#[tokio::test]
async fn a_node_that_is_its_own_shield_answers_508() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("x"));
    // Bind first to learn the port, then name that address as the node's own shield.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut raw = node_config(&origin, "lonely-node");
    raw.listen = Some(addr.to_string());
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{addr}")],
        on_all_down: Some("error".into()),
        ..RawShield::default()
    });
    let cfg = vedge::Config::try_from(raw).expect("valid");
    let edge = vedge::Edge::new(cfg).await.expect("edge");
    assert_eq!(edge.node, "lonely-node");
    let viewer = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(vedge::serve(
        edge.clone(),
        vedge::Listeners {
            viewer,
            admin: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    let (status, _) = get(&format!("http://{addr}/a.ts")).await;
    // The node asks itself; the inner request carries `CDN-Loop: vedge; node=lonely-node` and
    // is refused with 508, which the outer request relays (never an endless chain).
    assert_eq!(status, StatusCode::LOOP_DETECTED);
    assert_eq!(origin.count("/a.ts"), 0);
    let _ = tx.send(());
}

#[test]
fn shield_config_is_validated() {
    let bad = |toml: &str| {
        let raw: RawConfig = toml::from_str(toml).expect("toml");
        vedge::Config::try_from(raw).expect_err(toml).to_string()
    };
    let base = "origin = \"http://o:80\"\n";
    assert!(bad(&format!("{base}[shield]\nnodes = []\n")).contains("shield.nodes"));
    assert!(bad(&format!(
        "{base}[shield]\nnodes = [\"http://s:1\"]\non_all_down = \"x\"\n"
    ))
    .contains("on_all_down"));
    assert!(bad(&format!("{base}node_id = \"a b\"\n")).contains("node_id"));
    assert!(bad(&format!(
        "{base}[cluster]\nnodes = [{{ admin = \"http://a:1\" }}]\n"
    ))
    .contains("token"));
    assert!(
        bad("[[route]]\nprefix = \"/\"\norigin = \"http://o:1\"\nshield = true\n")
            .contains("[shield]")
    );
    let ok: RawConfig = toml::from_str(
        "node_id = \"edge-1\"\n[[route]]\nprefix = \"/\"\norigin = \"http://o:1\"\n[[route]]\nprefix = \"/live/\"\norigin = \"http://o:1\"\nshield = false\n[shield]\nnodes = [\"http://s1:8080\", \"http://s2:8080\"]\n",
    )
    .unwrap();
    let cfg = vedge::Config::try_from(ok).expect("valid");
    let shield = cfg.tier.shield.as_ref().expect("shield");
    let live = cfg.route_for("/live/x.ts").unwrap();
    let vod = cfg.route_for("/vod/x.ts").unwrap();
    assert!(!shield.covers(live) && shield.covers(vod));
}

#[test]
fn the_documented_docker_tier_configs_are_valid() {
    // The compose file gives every node this variable; `token_env` reads it at validation.
    std::env::set_var("VEDGE_ADMIN_TOKEN", "change-me-please");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/tier");
    for name in ["shield-a.toml", "edge-a.toml", "edge-b.toml"] {
        let mut raw = RawConfig::from_file(&dir.join(name)).expect(name);
        raw.admin_token = Some("change-me-please".into());
        let cfg = vedge::Config::try_from(raw).expect(name);
        let is_edge = name.starts_with("edge");
        assert_eq!(cfg.tier.shield.is_some(), is_edge, "{name}");
        if is_edge {
            assert_eq!(cfg.tier.cluster.nodes.len(), 3, "{name}");
        }
    }
}

/// `on_all_down = "error"`: with every shield ejected the edge answers `502`, as documented
/// and as for the first failure, never `500` ("internal") nor a request to the origin.
#[tokio::test]
async fn with_every_shield_down_and_on_all_down_error_the_edge_answers_502() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("x"));
    // A port nothing listens on: every connect is refused.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = probe.local_addr().unwrap();
    drop(probe);
    let mut raw = node_config(&origin, "edge-alone");
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{dead}")],
        on_all_down: Some("error".into()),
        eject: Some(vedge::config::RawEject {
            failures: Some(1),
            duration: Some("60s".into()),
        }),
        ..RawShield::default()
    });
    let edge = TestEdge::start(raw).await;
    for i in 0..3 {
        let r = edge.get(&format!("/a.ts?{i}")).await;
        assert_eq!(
            (r.status, r.h("cache-status").contains("origin-unreachable")),
            (StatusCode::BAD_GATEWAY, true),
            "request {i}: {}",
            r.h("cache-status")
        );
    }
    assert_eq!(origin.count("/a.ts"), 0, "never sent to the origin");
}

/// An edge whose one shield is `shield`, ejected after 3 failures for a minute, with no origin
/// to fall back on (`on_all_down = "error"`): a viewer sees the ejection as a 502.
fn edge_ejecting_after_3(origin: &Origin, shield: &TestEdge) -> RawConfig {
    let mut raw = node_config(origin, "edge-0");
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{}", shield.addr)],
        on_all_down: Some("error".into()),
        eject: Some(vedge::config::RawEject {
            failures: Some(3),
            duration: Some("60s".into()),
        }),
        ..RawShield::default()
    });
    raw
}

/// A shield relaying its origin's 502 for one broken path is up: any viewer can ask for that
/// path again and again, so those answers never eject the shield. They did (three requests for
/// a path the origin fails ejected the shield, and with `on_all_down = "error"` every viewer of
/// every other object got a 502); a shield that cannot be reached still is ejected.
#[tokio::test]
async fn an_origin_error_relayed_by_a_shield_never_ejects_it() {
    let origin = Origin::start().await;
    origin.script(
        "/broken.ts",
        Script::status(502, "origin fault").header("cache-control", "no-store"),
    );
    origin.script(
        "/ok.ts",
        Script::ok("fine").header("cache-control", "max-age=60"),
    );
    let shield = TestEdge::start(node_config(&origin, "shield-0")).await;
    let edge = TestEdge::start(edge_ejecting_after_3(&origin, &shield)).await;
    for i in 0..6 {
        let r = edge.get(&format!("/broken.ts?i={i}")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.h("cache-status"));
        assert!(
            r.h("cache-status").contains("fwd-status=502"),
            "the origin's answer, relayed: {}",
            r.h("cache-status")
        );
    }
    let r = edge.get("/ok.ts").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"fine"[..]),
        "the shield was ejected: {}",
        r.h("cache-status")
    );
    assert_eq!(
        r.h("cache-status").split(',').count(),
        2,
        "through the shield: {}",
        r.h("cache-status")
    );
}

/// The timeout twin of the above (ninth review): a shield whose origin is slow on one path
/// answers 504 `detail=origin-timeout`, with no `fwd-status` (there was no answer to relay),
/// and that counted as the shield's own failure: three requests at once for such a path
/// ejected a healthy shield for every key and route, and with `on_all_down = "error"` every
/// viewer of every other object got a 502. A shield that forwarded the request (`fwd` in its
/// `Cache-Status` member) is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_whose_origin_times_out_is_not_ejected() {
    let origin = Origin::start().await;
    origin.script(
        "/slow.ts",
        Script::ok("late").head_delay(Duration::from_secs(3)),
    );
    origin.script(
        "/ok.ts",
        Script::ok("fine").header("cache-control", "max-age=60"),
    );
    let mut shield = node_config(&origin, "shield-0");
    shield.origin_client.first_byte_timeout = Some("1s".into());
    let shield = TestEdge::start(shield).await;
    let edge = Arc::new(TestEdge::start(edge_ejecting_after_3(&origin, &shield)).await);
    let slow: Vec<_> = (0..3)
        .map(|i| {
            let e = edge.clone();
            tokio::spawn(async move { e.get(&format!("/slow.ts?i={i}")).await })
        })
        .collect();
    for s in slow {
        let r = s.await.expect("viewer");
        assert_eq!(
            r.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            r.h("cache-status")
        );
    }
    let r = edge.get("/ok.ts").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"fine"[..]),
        "the shield was ejected: {}",
        r.h("cache-status")
    );
}

/// A shield that hangs (stopped, cut off: it accepts connections and never answers) rather than
/// refusing them. A fill that timed out on it was retried on the next node only while time was
/// left before the collapse deadline, which the first-byte timeout always outlasts with the
/// defaults (10 s and 15 s): every key the hung shield owned was a 504 after the whole
/// timeout. The retry now gets a whole first-byte timeout of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shield_fails_over_to_the_next_node() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let origin = Origin::start().await;
    for i in 0..12 {
        origin.script(
            &format!("/k{i}.ts"),
            Script::ok(format!("seg {i}")).header("cache-control", "max-age=60"),
        );
    }
    let good = TestEdge::start(node_config(&origin, "shield-good")).await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    let asked = Arc::new(AtomicUsize::new(0));
    let seen = asked.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = hung.accept().await {
            let seen = seen.clone();
            held.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Reads requests, answers none.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    });
    let mut raw = node_config(&origin, "edge-0");
    // The defaults' order: the collapse deadline comes before the first-byte timeout.
    raw.cache.collapse_timeout = Some("500ms".into());
    raw.origin_client.first_byte_timeout = Some("1s".into());
    raw.shield = Some(RawShield {
        nodes: vec![
            format!("http://{hung_addr}"),
            format!("http://{}", good.addr),
        ],
        on_all_down: Some("error".into()),
        eject: Some(vedge::config::RawEject {
            failures: Some(100),
            duration: Some("60s".into()),
        }),
        ..RawShield::default()
    });
    let edge = Arc::new(TestEdge::start(raw).await);
    let gets: Vec<_> = (0..12)
        .map(|i| {
            let edge = edge.clone();
            tokio::spawn(async move { (i, edge.get(&format!("/k{i}.ts")).await) })
        })
        .collect();
    for g in gets {
        let (i, r) = g.await.expect("viewer");
        assert_eq!(
            (r.status, r.body.as_ref()),
            (StatusCode::OK, format!("seg {i}").as_bytes()),
            "/k{i}.ts: {}",
            r.h("cache-status")
        );
    }
    assert!(
        asked.load(Ordering::Relaxed) > 0,
        "no key was the hung shield's: nothing tested"
    );
    holder.abort();
}

/// Two routes of one prefix for the same hosts: only one could ever serve, chosen silently by
/// the file's order (an operator's typo routed a whole prefix to the wrong origin with no
/// word). Refused now, as is a prefix no request path can match (a space, a newline). The same
/// prefix for other hosts stays valid.
#[test]
fn route_config_refuses_duplicate_and_impossible_prefixes() {
    let resolve = |routes: &str| {
        let toml = format!("origin = \"http://o:1\"\n{routes}");
        let raw: RawConfig = toml::from_str(&toml).expect("toml");
        vedge::Config::try_from(raw).map_err(|e| e.to_string())
    };
    let route = |prefix: &str, hosts: &str| {
        format!("[[route]]\nprefix = \"{prefix}\"\norigin = \"http://o:1\"\n{hosts}")
    };
    let dup = format!("{}{}", route("/live/", ""), route("/live/", ""));
    assert!(resolve(&dup)
        .expect_err("duplicate")
        .contains("same prefix"));
    let dup_hosts = format!(
        "{}{}",
        route("/live/", "hosts = [\"a.example\"]\n"),
        route("/live/", "hosts = [\"A.example\"]\n")
    );
    assert!(resolve(&dup_hosts).is_err());
    let other_hosts = format!(
        "{}{}",
        route("/live/", "hosts = [\"a.example\"]\n"),
        route("/live/", "hosts = [\"b.example\"]\n")
    );
    assert!(resolve(&other_hosts).is_ok(), "{:?}", resolve(&other_hosts));
    for bad in ["/li ve/", "/live\\n/"] {
        assert!(
            resolve(&route(bad, "")).expect_err(bad).contains("control"),
            "{bad}"
        );
    }
}

/// Bug: a viewer's `POST` (any unsafe method with a body) went from the edge straight to the
/// origin, around the shield: the edge dropped its own copy (RFC 9111 §4.4), but the shield
/// that owns the key never saw the request and kept its copy, so the edge's next `GET`
/// refilled the old version from the shield for the shield's whole TTL, and every other edge
/// kept getting it too. The unsafe request now goes through the key's shield, which
/// invalidates its copy as it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_method_through_the_tier_invalidates_the_owning_shield_s_copy() {
    let t = tier().await;
    let path = "/doc/updated.ts";
    let version = |seed: u8| Script::ok(segment(seed)).header("cache-control", "max-age=1000");
    t.origin.script(path, version(1));
    let (status, body) = get(&t.edges[1].url(path)).await;
    assert_eq!((status, body), (StatusCode::OK, segment(1)));
    // The origin's resource changes; the tier still holds the old version.
    t.origin.script(path, version(2));
    assert_eq!(get(&t.edges[1].url(path)).await.1, segment(1));

    let post = http::Request::post(t.edges[1].url(path))
        .body(http_body_util::Full::new(Bytes::from_static(b"update")))
        .expect("request");
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        reqwest_free::client().request(post),
    )
    .await
    .expect("answered in time")
    .expect("edge answers");
    assert_eq!(answer.status(), StatusCode::OK);
    let posted: Vec<_> = t
        .origin
        .seen(path)
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posted.len(), 1, "one POST reached the origin");
    let owner_id = format!("shield-{}", t.owner(path));
    let loop_entries: Vec<&str> = posted[0]
        .headers
        .iter()
        .filter(|(name, _)| name == "cdn-loop")
        .map(|(_, v)| v.as_str())
        .collect();
    let loop_entries = loop_entries.join(", ");
    assert!(
        loop_entries.contains(&owner_id) && loop_entries.contains("edge-1"),
        "the POST came through the key's shield: CDN-Loop {loop_entries:?}"
    );

    // This edge, and another that never held the object, both get the new version.
    for edge in [&t.edges[1], &t.edges[2]] {
        let (status, body) = get(&edge.url(path)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body == segment(2),
            "{}: the old version after the POST",
            edge.addr
        );
    }
    let gets = t
        .origin
        .seen(path)
        .iter()
        .filter(|s| s.method == "GET")
        .count();
    assert_eq!(gets, 2, "one fill per version, for the whole tier");
}

/// Bug: a shield's `304` to its edge's revalidation left out `Content-Type` (as a 304 to a
/// viewer does, RFC 9110 §15.4.5), so when the origin's 304 changed the type (a charset added)
/// the shield's copy took it and the edge's never did (cache-tests.fyi
/// `304-etag-update-response-Content-Type`, run through a tier). A 304 to a request that came
/// through a CDN (`CDN-Loop`) keeps it, for the downstream cache's update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_through_the_tier_updates_the_edge_s_content_type() {
    let origin = Origin::start().await;
    let path = "/doc/typed";
    origin.script(
        path,
        Script::ok("doc")
            .header("content-type", "text/plain")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\""),
    );
    let shield = TestEdge::start(node_config(&origin, "shield-0")).await;
    let mut raw = node_config(&origin, "edge-0");
    raw.shield = Some(RawShield {
        nodes: vec![format!("http://{}", shield.addr)],
        ..RawShield::default()
    });
    let edge = TestEdge::start(raw).await;
    let first = edge.get(path).await;
    assert_eq!(first.h("content-type"), "text/plain");
    edge.settle().await;
    shield.settle().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.script(
        path,
        Script::status(304, "")
            .header("content-type", "text/plain;charset=utf-8")
            .header("cache-control", "max-age=3600")
            .header("etag", "\"v1\""),
    );
    let refreshed = edge.get(path).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    assert_eq!(refreshed.body, "doc");
    assert_eq!(
        refreshed.h("content-type"),
        "text/plain;charset=utf-8",
        "{}",
        refreshed.h("cache-status")
    );
    // A viewer's own conditional request still gets a 304 without it.
    let cond = edge.get_with(path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
    assert!(cond.headers.get("content-type").is_none());
}

/// An address nothing listens on: every connect to it is refused.
async fn refusing_addr() -> std::net::SocketAddr {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    addr
}

/// Bug: a shield that could not reach its origin (a partition, its origin address wrong)
/// answered its own `502 detail=origin-unreachable` for every key it owns, and the edge relayed
/// it for ever: such an answer rightly never ejects the shield (it is up, and a viewer must not
/// be able to eject shields), and nothing else moved the key. The fill now goes on to the key's
/// next node, which reaches the origin; the shield stays in.
#[tokio::test]
async fn a_shield_cut_off_from_its_origin_hands_its_fills_to_the_next_node() {
    let origin = Origin::start().await;
    let mut cut = edge_config_for(format!("http://{}", refusing_addr().await));
    cut.node_id = Some("shield-cut".into());
    let cut = TestEdge::start(cut).await;
    let healthy = TestEdge::start(node_config(&origin, "shield-ok")).await;
    let mut raw = node_config(&origin, "edge-0");
    raw.shield = Some(RawShield {
        nodes: vec![
            format!("http://{}", cut.addr),
            format!("http://{}", healthy.addr),
        ],
        // Not the origin: the next shield has to answer.
        on_all_down: Some("error".into()),
        eject: Some(vedge::config::RawEject {
            failures: Some(1),
            duration: Some("60s".into()),
        }),
        ..RawShield::default()
    });
    let edge = TestEdge::start(raw).await;
    let cut_url = format!("http://{}", cut.addr);
    let owned_by_cut: Vec<String> = (0..64)
        .map(|i| format!("/p/{i}.ts"))
        .filter(|p| {
            let target = vedge::proxy::target::resolve(&edge.edge.config, None, p).expect("routed");
            edge.edge.origin.shield_order(target.route, &target.key)[0] == cut_url
        })
        .take(3)
        .collect();
    assert_eq!(owned_by_cut.len(), 3, "keys the cut-off shield owns");
    for p in &owned_by_cut {
        origin.script(p, Script::ok("seg").header("cache-control", "max-age=60"));
        let r = edge.get(p).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"seg"[..]),
            "{p}: {}",
            r.h("cache-status")
        );
        assert_eq!(origin.count(p), 1, "{p} through the healthy shield");
    }
    let shields = edge.edge.origin.snapshot()["shields"].clone();
    assert!(
        shields
            .as_array()
            .expect("shields")
            .iter()
            .all(|s| s["state"] == "up"),
        "no shield ejected: {shields}"
    );
}

/// Bug: with every shield refusing connections (killed) and `on_all_down = "origin"`, a fill
/// asked the key's shield, retried only the next shield and answered `502 origin-unreachable`
/// without ever asking the origin, until the shields were ejected (and again each time their
/// ejection ended). A request that reached no one now walks the whole plan, one attempt per
/// candidate: shields, then the origin group.
#[tokio::test]
async fn with_every_shield_refusing_a_fill_goes_on_to_the_origin() {
    let origin = Origin::start().await;
    let mut raw = node_config(&origin, "edge-0");
    raw.shield = Some(RawShield {
        nodes: vec![
            format!("http://{}", refusing_addr().await),
            format!("http://{}", refusing_addr().await),
        ],
        on_all_down: Some("origin".into()),
        eject: Some(vedge::config::RawEject {
            failures: Some(3),
            duration: Some("60s".into()),
        }),
        ..RawShield::default()
    });
    let edge = TestEdge::start(raw).await;
    for i in 0..3 {
        let p = format!("/d/{i}.ts");
        origin.script(&p, Script::ok("seg").header("cache-control", "max-age=60"));
        let r = edge.get(&p).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"seg"[..]),
            "{p}: {}",
            r.h("cache-status")
        );
        assert_eq!(origin.count(&p), 1, "{p}");
    }
}
