//! Regression tests from the tenth adversarial review: an operator's push is the version every
//! viewer gets, whether or not the edge has a store. Each fails on the code before its fix.

use std::sync::Arc;

use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::{admin_post, admin_send, edge_config, until};
use crate::support::{Gate, Origin, Script, TestEdge};

/// A body as text, for messages.
fn text(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(body)
}

/// Bug: without a `[store]` a push lives in RAM only, and the rule that a fill does not
/// replace a push made since it began was the store's alone: a viewer's fill that began
/// before a `PUT /admin/objects/...` and ended after it put the origin's bytes (unpinned) over
/// the pushed object, and every later viewer got the origin's version. Now RAM keeps the push
/// too: the fill's own viewer keeps the bytes it was sent, later viewers get the push, and a
/// fill that began after the push (refreshing it once a soft purge made it stale) still
/// replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_a_fill_in_flight_does_not_undo_a_push() {
    let path = "/v/p.m4s";
    let origin = Origin::start().await;
    let gate = Gate::new();
    let hour = ("cache-control", "max-age=3600");
    origin.script(
        path,
        Script::ok("origin bytes")
            .header(hour.0, hour.1)
            .gate(&gate),
    );
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = Arc::new(TestEdge::start(raw).await);
    assert!(edge.edge.store.is_none());
    let api = edge.admin().await;
    let port = api.addr.port();

    // A viewer's fill asks the origin, which holds its answer; the operator pushes meanwhile.
    let e = edge.clone();
    let viewer_a = tokio::spawn(async move { e.get(path).await });
    until("the fill asked the origin", || origin.count(path) == 1).await;
    let (status, answer) = admin_send(
        port,
        "PUT",
        "/admin/objects/v/p.m4s",
        &[("Content-Type", "video/mp4")],
        b"pushed bytes",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let pushed = edge.get(path).await;
    assert_eq!(text(&pushed.body), "pushed bytes", "{}", pushed.x_cache());
    gate.open();

    let a = viewer_a.await.expect("viewer a");
    assert_eq!(a.status, 200);
    assert_eq!(
        text(&a.body),
        "origin bytes",
        "the fill's viewer keeps its bytes"
    );
    edge.settle().await;
    let b = edge.get(path).await;
    assert_eq!(
        text(&b.body),
        "pushed bytes",
        "after the fill ended: {} {}",
        b.x_cache(),
        b.h("cache-status")
    );
    assert_eq!(b.x_cache(), "HIT");
    assert_eq!(origin.count(path), 1);

    // A fill that begins after the push, refreshing it once stale (a soft purge), replaces
    // it, as on the store path.
    origin.script(
        path,
        Script::ok("newer origin bytes").header(hour.0, hour.1),
    );
    let soft = format!(
        r#"{{"urls":["{path}"],"host":"{}","soft":true}}"#,
        edge.addr
    );
    let (status, answer) = admin_post(port, "/admin/purge", &soft).await;
    assert_eq!(status, 200, "{answer}");
    let refresh = edge.get(path).await;
    assert_eq!(
        text(&refresh.body),
        "newer origin bytes",
        "{}",
        refresh.x_cache()
    );
    assert_eq!(origin.count(path), 2);
    edge.settle().await;
    let c = edge.get(path).await;
    assert_eq!(text(&c.body), "newer origin bytes", "{}", c.x_cache());
    assert_eq!((c.x_cache(), origin.count(path)), ("HIT", 2));
}
