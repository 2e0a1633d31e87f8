//! Request collapsing: many viewers of one uncached object cost one origin fetch, and waiters
//! stream the body as it arrives instead of waiting for the whole object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::support::{edge_config, until, Gate, Origin, Script, TestEdge};

/// Viewers in all, and how many are in flight at once (each holds a connection).
const VIEWERS: usize = 500;
const IN_FLIGHT: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_segment_cost_one_origin_request() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    // Held until the first IN_FLIGHT viewers are all waiting on the one fill.
    let gate = Gate::new();
    origin.script(
        "/v/hot.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    let edge = Arc::new(TestEdge::start(edge_config(&origin)).await);

    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::with_capacity(VIEWERS);
    for _ in 0..VIEWERS {
        let permit = permits.clone().acquire_owned().await.ok();
        let viewer = edge.clone();
        tasks.push(tokio::spawn(async move {
            let r = viewer.get("/v/hot.ts").await;
            drop(permit);
            r
        }));
        if tasks.len() == IN_FLIGHT {
            until("the first viewers all wait on one fill", || {
                edge.collapsed() as usize >= IN_FLIGHT - 1
            })
            .await;
            gate.open();
        }
    }
    let mut statuses = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("viewer finished within 20 s")
            .expect("viewer task");
        assert_eq!(r.status, 200);
        assert!(r.body == body, "a viewer got a different body");
        *statuses.entry(r.x_cache().to_string()).or_default() += 1;
    }
    assert_eq!(origin.count("/v/hot.ts"), 1, "statuses: {statuses:?}");
    assert!(
        statuses.keys().all(|s| s == "MISS" || s == "HIT"),
        "{statuses:?}"
    );
    assert!(statuses.get("MISS").copied().unwrap_or(0) >= IN_FLIGHT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collapsed_waiter_streams_before_the_origin_finishes() {
    let origin = Origin::start().await;
    let body = vec![b't'; 20_000];
    origin.script(
        "/v/trickle.ts",
        Script::ok(body.clone())
            .header("cache-control", "max-age=60")
            .trickle(10, Duration::from_secs(1)),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let leader = edge
        .send_streaming(edge.req(Method::GET, "/v/trickle.ts"), Default::default())
        .await;
    assert_eq!(leader.headers()["x-cache"], "MISS");
    let waiter = edge
        .send_streaming(edge.req(Method::GET, "/v/trickle.ts"), Default::default())
        .await;
    assert_eq!(waiter.headers()["x-cache"], "MISS");
    let cs = waiter.headers()["cache-status"].to_str().unwrap_or("");
    assert!(cs.contains("collapsed"), "{cs}");

    let read = |resp: http::Response<hyper::body::Incoming>| async move {
        let mut body = resp.into_body();
        let mut first = None;
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.expect("body frame").into_data() {
                if !d.is_empty() {
                    first.get_or_insert_with(Instant::now);
                }
                got.extend_from_slice(&d);
            }
        }
        (first, got)
    };
    let (waiter_first, waiter_body) = read(waiter).await;
    let (_, leader_body) = read(leader).await;
    assert_eq!(waiter_body, body);
    assert_eq!(leader_body, body);

    let sent = origin.sent("/v/trickle.ts");
    assert_eq!(sent.len(), 1);
    let origin_done = sent[0].last_byte.expect("origin finished sending");
    let waiter_first = waiter_first.expect("waiter got bytes");
    assert!(
        waiter_first < origin_done,
        "the waiter's first byte came {:?} after the origin finished",
        waiter_first - origin_done
    );
}
