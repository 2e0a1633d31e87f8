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

/// No gate: bursts race the fill's completion, so some viewers look the key up just before the
/// object is stored and claim just after the fill ended. They must still not refetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_racing_the_end_of_a_fill_do_not_refetch() {
    let origin = Origin::start().await;
    let edge = Arc::new(TestEdge::start(edge_config(&origin)).await);
    for round in 0..20 {
        let path = format!("/v/burst{round}.ts");
        origin.script(
            &path,
            Script::ok(format!("burst {round}")).header("cache-control", "max-age=60"),
        );
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (viewer, path) = (edge.clone(), path.clone());
            tasks.push(tokio::spawn(async move { viewer.get(&path).await }));
        }
        for t in tasks {
            let r = t.await.expect("viewer task");
            assert_eq!(r.body, format!("burst {round}"));
        }
        assert_eq!(origin.count(&path), 1, "{path}");
    }
}

/// A response the origin marks private goes to the leader only; every collapsed waiter fetches
/// its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_private_response_fetch_their_own() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/v/mine.ts",
        Script::ok("personal")
            .header("cache-control", "private")
            .gate(&gate),
    );
    let edge = Arc::new(TestEdge::start(edge_config(&origin)).await);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let viewer = edge.clone();
        tasks.push(tokio::spawn(async move { viewer.get("/v/mine.ts").await }));
    }
    until("three waiters joined the leader", || edge.collapsed() == 3).await;
    gate.open();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.expect("viewer task");
        assert_eq!(r.body, "personal");
        statuses.push(r.x_cache().to_string());
    }
    statuses.sort();
    assert_eq!(statuses, ["BYPASS", "BYPASS", "BYPASS", "MISS"]);
    assert_eq!(origin.count("/v/mine.ts"), 4);
    assert_eq!(edge.edge.ram.len(), 0);
}

/// The fill is detached from the viewer that started it: the leader hanging up mid-fetch
/// neither cancels the fetch nor loses the object.
#[tokio::test]
async fn a_leader_that_hangs_up_does_not_cancel_the_fill() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/v/left.ts",
        Script::ok("kept anyway")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let req = format!("GET /v/left.ts HTTP/1.1\r\nHost: {}\r\n\r\n", edge.addr);
    let mut s = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    until("the fill reached the origin", || {
        origin.count("/v/left.ts") == 1
    })
    .await;
    drop(s);
    gate.open();
    edge.settle().await;
    let r = edge.get("/v/left.ts").await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.body, "kept anyway");
    assert_eq!(origin.count("/v/left.ts"), 1);
}

/// A waiter whose `Accept-Encoding` selects another variant than the leader's does not get
/// the leader's body: it fetches its own variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_for_another_variant_fetches_its_own() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/v/var.mpd",
        Script::ok("gzip body")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding")
            .header("content-encoding", "gzip")
            .gate(&gate),
    );
    let edge = Arc::new(TestEdge::start(edge_config(&origin)).await);
    let e = edge.clone();
    let leader = tokio::spawn(async move {
        e.get_with("/v/var.mpd", &[("accept-encoding", "gzip")])
            .await
    });
    until("the leader's fetch reached the origin", || {
        origin.count("/v/var.mpd") == 1
    })
    .await;
    let e = edge.clone();
    let waiter = tokio::spawn(async move {
        e.get_with("/v/var.mpd", &[("accept-encoding", "identity")])
            .await
    });
    until("the waiter joined", || edge.collapsed() == 1).await;
    origin.script(
        "/v/var.mpd",
        Script::ok("identity body")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding"),
    );
    gate.open();
    let leader = leader.await.expect("leader");
    let waiter = waiter.await.expect("waiter");
    assert_eq!(leader.body, "gzip body");
    assert_eq!(waiter.body, "identity body");
    assert_eq!(waiter.h("content-encoding"), "");
    assert_eq!(origin.count("/v/var.mpd"), 2);
}

/// An edge whose collapsed readers give up on a fill's head after 300 ms, with the origin's
/// first-byte timeout at `first_byte`.
fn slow_origin_config(origin: &Origin, first_byte: &str) -> vedge::config::RawConfig {
    let mut raw = edge_config(origin);
    raw.cache.collapse_timeout = Some("300ms".into());
    raw.origin_client.first_byte_timeout = Some(first_byte.into());
    raw
}

/// A leader on `path`, then `waiters` more viewers collapsed onto its fill (checked), all
/// answered.
async fn leader_and_waiters(
    edge: &Arc<TestEdge>,
    origin: &Origin,
    path: &str,
    waiters: usize,
) -> Vec<crate::support::edge::Resp> {
    let get = |e: Arc<TestEdge>, p: String| tokio::spawn(async move { e.get(&p).await });
    let mut tasks = vec![get(edge.clone(), path.to_string())];
    until("the leader's fill reached the origin", || {
        origin.count(path) == 1
    })
    .await;
    tasks.extend((0..waiters).map(|_| get(edge.clone(), path.to_string())));
    until("every waiter joined the fill", || {
        edge.collapsed() as usize == waiters
    })
    .await;
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("viewer answered within 20 s")
                .expect("viewer task"),
        );
    }
    out
}

/// A slow origin answering inside its first-byte timeout but after `collapse_timeout`: the
/// collapsed viewers keep waiting for the leader's fill, which is with the origin and bounded
/// by its own timeouts, instead of each asking the origin for itself exactly when it struggles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapsed_viewers_wait_past_collapse_timeout_for_a_fill_the_origin_is_answering() {
    let origin = Origin::start().await;
    origin.script(
        "/v/slow.ts",
        Script::ok("slow segment")
            .header("cache-control", "max-age=60")
            // Long enough for 19 viewers to join on a loaded machine.
            .head_delay(Duration::from_secs(4)),
    );
    let edge = Arc::new(TestEdge::start(slow_origin_config(&origin, "10s")).await);
    let answers = leader_and_waiters(&edge, &origin, "/v/slow.ts", 19).await;
    let statuses: Vec<String> = answers
        .iter()
        .map(|r| format!("{} {}", r.status.as_u16(), r.h("cache-status")))
        .collect();
    println!(
        "origin requests: {}; answers: {statuses:#?}",
        origin.count("/v/slow.ts")
    );
    for r in &answers {
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"slow segment"[..])
        );
        assert!(
            !r.h("cache-status").contains("collapse-timeout"),
            "{}",
            r.h("cache-status")
        );
    }
    assert_eq!(origin.count("/v/slow.ts"), 1, "{statuses:#?}");
    edge.settle().await;
    assert_eq!(edge.get("/v/slow.ts").await.x_cache(), "HIT");
}

/// The wait stays bounded by the fill's own deadlines: an origin that never answers within
/// the first-byte timeout fails the one fill, and every viewer collapsed onto it gets that
/// answer (504) together; the origin saw one request, not one per viewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapsed_viewers_share_the_first_byte_timeout_of_their_fill() {
    let origin = Origin::start().await;
    origin.script(
        "/v/stuck.ts",
        Script::ok("never")
            .header("cache-control", "max-age=60")
            .head_delay(Duration::from_secs(30)),
    );
    let edge = Arc::new(TestEdge::start(slow_origin_config(&origin, "1s")).await);
    let answers = leader_and_waiters(&edge, &origin, "/v/stuck.ts", 4).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status.as_u16()).collect();
    println!(
        "origin requests: {}; statuses: {statuses:?}",
        origin.count("/v/stuck.ts")
    );
    assert_eq!(statuses, [504; 5]);
    assert_eq!(origin.count("/v/stuck.ts"), 1);
}

/// A fill whose answer may be its leader's alone (the leader sent `Authorization`, or a cold
/// `Range` made it a probe) had no due time, so the viewers collapsed onto it went their own way
/// at `collapse_timeout`, each to the origin: one header from one viewer turned a crowd waiting
/// on a slow origin into a herd (1 + 5 origin requests here). They now wait for the fill's head
/// like any other: the probe's object is theirs (one origin request); the credentialed answer
/// is not, and they claim one fill between them (two). Bug (a straggler): a waiter that came to
/// claim after that fill had stored the object and ended was passed to the origin
/// (`vary-mismatch`: its claim of the first slice found the object stored whole and sent it to a
/// third lookup), 3 origin requests in 4 runs of 25 on a loaded box; it now gets the stored
/// object (`proxy::slice::Outcome::Stored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_credentials_or_range_never_turn_its_waiters_into_a_herd() {
    const WAITERS: usize = 5;
    for (path, header, value, fetches) in [
        ("/v/auth.ts", "authorization", "Bearer one-viewer", 2),
        ("/v/range.ts", "range", "bytes=0-0", 1),
    ] {
        let origin = Origin::start().await;
        let gate = Gate::new();
        origin.script(
            path,
            Script::ok("slow segment")
                .header("cache-control", "max-age=60")
                .gate(&gate),
        );
        let edge = Arc::new(TestEdge::start(slow_origin_config(&origin, "10s")).await);
        let leader = {
            let (e, p) = (edge.clone(), path.to_string());
            tokio::spawn(async move { e.get_with(&p, &[(header, value)]).await })
        };
        until("the leader's fill reached the origin", || {
            origin.count(path) == 1
        })
        .await;
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (e, p) = (edge.clone(), path.to_string());
                tokio::spawn(async move { e.get(&p).await })
            })
            .collect();
        until("every waiter joined the fill", || {
            edge.collapsed() as usize == WAITERS
        })
        .await;
        // Past `collapse_timeout` (300 ms) with the origin still answering.
        tokio::time::sleep(Duration::from_millis(900)).await;
        gate.open();
        for w in waiters {
            let r = tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("waiter answered")
                .expect("waiter task");
            assert_eq!(
                (r.status.as_u16(), &r.body[..]),
                (200, &b"slow segment"[..]),
                "{header}"
            );
        }
        let l = leader.await.expect("leader task");
        assert!(l.status.is_success(), "{header}: {}", l.status);
        assert_eq!(origin.count(path), fetches, "{header}: origin requests");
    }
}
