//! Warm origin connections (`origin_client.preconnect`): at start, before any viewer request,
//! every origin of every route has been sent one warm-up request, and the first fill reuses
//! that connection instead of opening its own.

use vedge::config::{RawConfig, RawRoute};

use crate::support::{edge_config, until, Origin, Script, TestEdge};

fn seg(body: &str) -> Script {
    Script::ok(body.to_string()).header("cache-control", "max-age=60")
}

#[tokio::test]
async fn the_first_fill_after_start_reuses_the_preconnected_connection() {
    let origin = Origin::start().await;
    origin.script("/s.ts", seg("segment"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    // Before any viewer request: the origin accepted a connection and answered the warm-up,
    // and the edge's pool has the connection back.
    until("the warm-up completed", || edge.edge.origin.warmups() == 1).await;
    assert_eq!(origin.connections(), 1);
    let warm = origin.seen("/");
    assert_eq!(warm.len(), 1, "one warm-up request");
    assert_eq!(warm[0].method, "HEAD");
    assert_eq!(warm[0].header("user-agent"), Some("vedge-preconnect"));

    let r = edge.get("/s.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"segment");
    assert_eq!(origin.count("/s.ts"), 1);
    assert_eq!(
        origin.connections(),
        1,
        "the first fill went over the warm connection"
    );
}

#[tokio::test]
async fn every_origin_of_a_group_is_preconnected() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let raw = RawConfig {
        ram_size: Some("64MiB".into()),
        routes: vec![RawRoute {
            prefix: "/".into(),
            origins: Some(vec![a.url(), b.url()]),
            policy: Some("round-robin".into()),
            ..RawRoute::default()
        }],
        ..RawConfig::default()
    };
    let edge = TestEdge::start(raw).await;
    until("both warm-ups completed", || {
        edge.edge.origin.warmups() == 2
    })
    .await;
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

#[tokio::test]
async fn preconnect_false_opens_nothing_before_the_first_request() {
    let origin = Origin::start().await;
    origin.script("/s.ts", seg("segment"));
    let mut raw = edge_config(&origin);
    raw.origin_client.preconnect = Some(false);
    raw.origin_client.preconnect_method = Some("OPTIONS".into());
    let edge = TestEdge::start(raw).await;
    assert_eq!(edge.get("/s.ts").await.status, 200);
    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.seen("/").len(), 0);
    assert_eq!(edge.edge.origin.warmups(), 0);
}
