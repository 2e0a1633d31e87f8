//! Regression tests from the third adversarial review (hostile viewers, origins and admin
//! input): each proves one rule and fails on the code before its fix.

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::{edge_config, read_raw, TestEdge};
use crate::support::origin::{Origin, Script};

/// An in-process edge with its admin API on a port of its own.
struct WithAdmin {
    edge: TestEdge,
    admin: u16,
    _stop: tokio_util::sync::DropGuard,
}

async fn with_admin(mut raw: vedge::config::RawConfig) -> WithAdmin {
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = l.local_addr().expect("admin addr").port();
    let stop = CancellationToken::new();
    tokio::spawn(vedge::admin::serve(edge.edge.clone(), l, stop.clone()));
    WithAdmin {
        edge,
        admin,
        _stop: stop.drop_guard(),
    }
}

/// `POST {path}` with a JSON `body` on the admin port: (status, body text).
async fn admin_post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin connects");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .expect("send admin request");
    let r = read_raw(&mut s).await;
    let (_, b) = r.split();
    (r.status(), String::from_utf8_lossy(b).into_owned())
}

/// An attacker fills an object's 64 variant slots with values of a varied header; once those
/// variants are purged (or evicted), genuine variants are stored again. Before, the set of
/// counted variants never shrank, so the object stayed at its cap and every later variant went
/// to the origin on every request for as long as the index kept the entry.
#[tokio::test]
async fn variants_purged_from_the_tiers_no_longer_count_against_the_cap() {
    use vedge::proxy::vary_cap::MAX_VARIANTS;
    let origin = Origin::start().await;
    origin.script(
        "/v/obj.json",
        Script::ok("x")
            .header("cache-control", "max-age=600")
            .header("vary", "X-Device"),
    );
    let s = with_admin(edge_config(&origin)).await;
    for i in 0..MAX_VARIANTS + 2 {
        let device = format!("attacker{i}");
        let r = s
            .edge
            .get_with("/v/obj.json", &[("x-device", device.as_str())])
            .await;
        assert_eq!(r.status, 200);
        s.edge.settle().await;
    }
    let host = s.edge.addr.to_string();
    let (st, body) = admin_post(
        s.admin,
        "/admin/purge",
        &format!(r#"{{"urls":["/v/obj.json"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let tv = || s.edge.get_with("/v/obj.json", &[("x-device", "tv")]);
    assert_eq!(tv().await.status, 200);
    s.edge.settle().await;
    let filled = origin.count("/v/obj.json");
    // The genuine variant was stored: hits from now on.
    for _ in 0..2 {
        let r = tv().await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"));
    }
    assert_eq!(origin.count("/v/obj.json"), filled);
}
