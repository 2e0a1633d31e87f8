//! Origin groups: failover, round-robin and rendezvous hashing over a route's origins; passive
//! ejection and active health checks taking an origin out and bringing it back; one retry before
//! the response head (never after body bytes flowed); per-origin state on `/admin/origins`.

use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use vedge::config::{RawConfig, RawEject, RawHealth, RawRoute};

use std::sync::Arc;

use crate::support::h2_origin::H2Origin;
use crate::support::{edge_config, until, Fault, Gate, Origin, Script, TestEdge};

/// One route `/` over `origins` with `policy`, short timeouts, and a high ejection threshold
/// (tests that exercise ejection set their own).
fn group_config(origins: &[&Origin], policy: &str) -> RawConfig {
    group_config_for(origins.iter().map(|o| o.url()).collect(), policy)
}

/// `group_config` over origins given by URL (origins a test serves itself).
fn group_config_for(origins: Vec<String>, policy: &str) -> RawConfig {
    let mut raw = RawConfig {
        ram_size: Some("64MiB".into()),
        routes: vec![RawRoute {
            prefix: "/".into(),
            origins: Some(origins),
            policy: Some(policy.into()),
            eject: Some(RawEject {
                failures: Some(100),
                duration: Some("10s".into()),
            }),
            ..RawRoute::default()
        }],
        ..RawConfig::default()
    };
    raw.cache.collapse_timeout = Some("5s".into());
    raw.origin_client.first_byte_timeout = Some("3s".into());
    raw.origin_client.between_bytes_timeout = Some("2s".into());
    raw.origin_client.connect_timeout = Some("1s".into());
    raw.server.shutdown_grace = Some("1s".into());
    raw
}

fn route(raw: &mut RawConfig) -> &mut RawRoute {
    &mut raw.routes[0]
}

/// The state `/admin/origins` reports for origin `i` of the only route.
fn state(edge: &TestEdge, i: usize) -> String {
    edge.edge.origin.snapshot()["routes"][0]["origins"][i]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn seg(body: &str) -> Script {
    Script::ok(body.to_string()).header("cache-control", "max-age=60")
}

#[tokio::test]
async fn a_refused_first_origin_fails_over_to_the_next() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.stop_and_wait().await;
    b.script("/s.ts", seg("from-b"));
    let edge = TestEdge::start(group_config(&[&a, &b], "failover")).await;
    let r = edge.get("/s.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"from-b");
    assert_eq!(r.x_cache(), "MISS", "the viewer saw an ordinary miss");
    assert_eq!(b.count("/s.ts"), 1);
}

#[tokio::test]
async fn consecutive_failures_eject_an_origin_until_its_ejection_time_ends() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for p in ["/1.ts", "/2.ts", "/3.ts", "/4.ts"] {
        a.script(p, Script::status(503, "down"));
        b.script(p, seg("from-b"));
    }
    let mut raw = group_config(&[&a, &b], "failover");
    route(&mut raw).retry_on = Some(vec![503]);
    route(&mut raw).eject = Some(RawEject {
        failures: Some(2),
        duration: Some("300ms".into()),
    });
    let edge = TestEdge::start(raw).await;
    for p in ["/1.ts", "/2.ts"] {
        assert_eq!(edge.get(p).await.status, 200);
    }
    assert_eq!(state(&edge, 0), "ejected");
    assert_eq!(edge.get("/3.ts").await.status, 200);
    assert_eq!(a.count("/3.ts"), 0, "an ejected origin is skipped");
    a.script("/4.ts", seg("from-a"));
    until("the ejection ends", || state(&edge, 0) == "up").await;
    let r = edge.get("/4.ts").await;
    assert_eq!(&r.body[..], b"from-a", "the origin is back in its place");
}

#[tokio::test]
async fn health_checks_mark_an_origin_down_and_up_again() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.script("/health", Script::ok("ok"));
    b.script("/health", Script::ok("ok"));
    for p in ["/1.ts", "/2.ts"] {
        a.script(p, seg("from-a"));
        b.script(p, seg("from-b"));
    }
    let mut raw = group_config(&[&a, &b], "failover");
    route(&mut raw).health = Some(RawHealth {
        path: Some("/health".into()),
        interval: Some("50ms".into()),
        timeout: Some("1s".into()),
        fall: Some(2),
        rise: Some(2),
    });
    let edge = TestEdge::start(raw).await;
    until("a is checked", || a.count("/health") >= 1).await;
    a.script("/health", Script::status(503, "sick"));
    until("a is marked down", || state(&edge, 0) == "down").await;
    assert_eq!(&edge.get("/1.ts").await.body[..], b"from-b");
    assert_eq!(a.count("/1.ts"), 0);
    a.script("/health", Script::ok("ok"));
    until("a is marked up", || state(&edge, 0) == "up").await;
    assert_eq!(&edge.get("/2.ts").await.body[..], b"from-a");
    // The checks stop with the edge.
    edge.edge.close().await;
    let checks = a.count("/health");
    assert!(edge.edge.tasks.is_empty(), "health tasks ended on shutdown");
    assert_eq!(a.count("/health"), checks);
}

#[tokio::test]
async fn round_robin_spreads_requests_over_the_origins() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let paths: Vec<String> = (0..10).map(|i| format!("/rr/{i}.ts")).collect();
    for p in &paths {
        a.script(p, seg("a"));
        b.script(p, seg("b"));
    }
    let edge = TestEdge::start(group_config(&[&a, &b], "round-robin")).await;
    for p in &paths {
        assert_eq!(edge.get(p).await.status, 200);
    }
    let on_a: usize = paths.iter().map(|p| a.count(p)).sum();
    let on_b: usize = paths.iter().map(|p| b.count(p)).sum();
    assert_eq!((on_a, on_b), (5, 5));
}

#[tokio::test]
async fn hash_sends_a_key_to_the_same_origin_from_every_edge() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let paths: Vec<String> = (0..24).map(|i| format!("/h/{i}.ts")).collect();
    for p in &paths {
        a.script(p, seg("a"));
        b.script(p, seg("b"));
    }
    // Two edges with the same group agree on each key's origin without talking to each other
    // (the key is the viewer's host and path, the same at both).
    let e1 = TestEdge::start(group_config(&[&a, &b], "hash")).await;
    let e2 = TestEdge::start(group_config(&[&a, &b], "hash")).await;
    let host = [("host", "video.example")];
    for p in &paths {
        assert_eq!(e1.get_with(p, &host).await.status, 200);
        assert_eq!(e2.get_with(p, &host).await.status, 200);
    }
    for p in &paths {
        let (na, nb) = (a.count(p), b.count(p));
        assert!(
            (na, nb) == (2, 0) || (na, nb) == (0, 2),
            "{p}: a saw {na}, b saw {nb}"
        );
    }
    let on_a = paths.iter().filter(|p| a.count(p) > 0).count();
    assert!((4..=20).contains(&on_a), "keys spread: {on_a} of 24 on a");
}

#[tokio::test]
async fn a_503_is_retried_on_the_next_origin_only_when_configured() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for p in ["/r.ts", "/n.ts"] {
        a.script(p, Script::status(503, "busy"));
        b.script(p, seg("from-b"));
    }
    let mut raw = group_config(&[&a, &b], "failover");
    route(&mut raw).retry_on = Some(vec![502, 503, 504]);
    let edge = TestEdge::start(raw).await;
    let r = edge.get("/r.ts").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"from-b"[..]));
    assert_eq!((a.count("/r.ts"), b.count("/r.ts")), (1, 1));

    let edge = TestEdge::start(group_config(&[&a, &b], "failover")).await;
    let r = edge.get("/n.ts").await;
    assert_eq!(r.status, 503, "without retry_on the origin's answer stands");
    assert_eq!(b.count("/n.ts"), 0);
}

#[tokio::test]
async fn a_failure_after_body_bytes_flowed_is_not_retried() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.script(
        "/t.ts",
        Script::ok(vec![7u8; 1000])
            .header("cache-control", "max-age=60")
            .fault(Fault::Truncate(100)),
    );
    b.script("/t.ts", seg("from-b"));
    let edge = TestEdge::start(group_config(&[&a, &b], "failover")).await;
    let resp = edge
        .send_streaming(edge.req(Method::GET, "/t.ts"), bytes::Bytes::new())
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "the viewer's body is aborted, not completed from another origin"
    );
    assert_eq!(b.count("/t.ts"), 0);
}

#[tokio::test]
async fn admin_origins_shows_each_origins_state_behind_the_token() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.stop_and_wait().await;
    b.script("/s.ts", seg("from-b"));
    let mut raw = group_config(&[&a, &b], "failover");
    route(&mut raw).eject = Some(RawEject {
        failures: Some(1),
        duration: Some("1m".into()),
    });
    raw.admin_token = Some("origins-token".into());
    let edge = TestEdge::start(raw).await;
    assert_eq!(edge.get("/s.ts").await.status, 200);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(vedge::admin::serve(
        edge.edge.clone(),
        listener,
        stop.clone(),
    ));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get = |token: Option<&str>, path: &str| {
        let mut b = Request::get(format!("http://{admin}{path}"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        client.request(b.body(Empty::new()).expect("request"))
    };
    let denied = get(None, "/admin/origins").await.expect("admin answers");
    assert_eq!(denied.status(), 401);
    let resp = get(Some("origins-token"), "/admin/origins")
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let route = &v["routes"][0];
    assert_eq!(route["prefix"], "/");
    assert_eq!(route["policy"], "failover");
    let (oa, ob) = (&route["origins"][0], &route["origins"][1]);
    assert_eq!(oa["url"], a.url());
    assert_eq!(oa["state"], "ejected");
    assert_eq!(oa["healthy"], false);
    assert_eq!(oa["errors"]["connect"], 1);
    assert_eq!(ob["state"], "up");
    assert_eq!(ob["requests"], 1);

    let metrics = get(None, "/metrics").await.expect("metrics");
    let text = metrics
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    let b_labels = format!("route=\"/\",origin=\"{}\"", b.url());
    for line in [
        format!("vedge_origin_target_requests_total{{{b_labels}}} 1"),
        format!("vedge_origin_target_latency_seconds_count{{{b_labels}}} 1"),
        format!("vedge_origin_target_up{{{b_labels}}} 1"),
        format!(
            "vedge_origin_target_errors_total{{route=\"/\",origin=\"{}\",kind=\"connect\"}} 1",
            a.url()
        ),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    stop.cancel();
}

/// A 5xx that is about the request, not the origin (`501` to a method it does not implement,
/// a `500` of one broken path), ejects nothing: a viewer sending such requests back to back
/// could otherwise take a healthy primary out of its group at will. Only a gateway failure
/// (`502`, `503`, `504`), a refused connection, a timeout or a broken answer counts.
#[tokio::test]
async fn a_viewer_cannot_eject_an_origin_with_requests_it_refuses() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.script("/x", Script::status(501, "not implemented"));
    a.script("/broken.ts", Script::status(500, "bug"));
    for o in [&a, &b] {
        o.script("/cold.ts", seg("segment"));
    }
    let mut raw = group_config(&[&a, &b], "failover");
    route(&mut raw).eject = Some(RawEject {
        failures: Some(3),
        duration: Some("60s".into()),
    });
    let edge = TestEdge::start(raw).await;
    for i in 0..5 {
        let foo = Method::from_bytes(b"FOO").expect("method");
        let r = edge.send(edge.req(foo, "/x"), Default::default()).await;
        assert_eq!(r.status, 501, "FOO {i}: answered by b, so a was ejected");
    }
    assert_eq!(state(&edge, 0), "up", "after five 501s to FOO");
    for _ in 0..5 {
        assert_eq!(edge.get("/broken.ts").await.status, 500);
    }
    assert_eq!(state(&edge, 0), "up", "after five 500s of one path");
    let r = edge.get("/cold.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!((a.count("/cold.ts"), b.count("/cold.ts")), (1, 0));
}

/// A fill that waited for one of this edge's own connection slots to the origin
/// (`origin_client.max_connections_per_origin`) and ran out of time never reached the origin:
/// it is the edge's wait, not the origin's failure. A burst of viewers against a healthy but
/// busy origin used to count each such wait as an origin timeout and eject the origin.
#[tokio::test]
async fn waiting_for_a_local_connection_slot_does_not_eject_the_origin() {
    let origin = Origin::start().await;
    // Holds the only connection: its head comes at once, its body over two seconds.
    origin.script(
        "/long.ts",
        Script::ok(vec![1u8; 4000])
            .header("cache-control", "max-age=60")
            .trickle(40, std::time::Duration::from_secs(2)),
    );
    let waiters = ["/w/1.ts", "/w/2.ts", "/w/3.ts"];
    for p in waiters {
        origin.script(p, seg("later"));
    }
    let mut raw = group_config(&[&origin], "failover");
    route(&mut raw).eject = Some(RawEject {
        failures: Some(2),
        duration: Some("60s".into()),
    });
    raw.origin_client.max_connections_per_origin = Some(1);
    raw.origin_client.max_fills = Some(0);
    raw.origin_client.first_byte_timeout = Some("300ms".into());
    let edge = Arc::new(TestEdge::start(raw).await);

    let holder = {
        let e = edge.clone();
        tokio::spawn(async move { e.get("/long.ts").await })
    };
    until("the long body holds the connection", || {
        origin.count("/long.ts") == 1
    })
    .await;
    waiters_are_busy_and_the_origin_stays_up(&edge, &waiters).await;
    for p in waiters {
        assert_eq!(origin.count(p), 0, "{p} never reached the origin");
    }

    let r = holder.await.expect("task");
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 4000));
    // The slot is free again: the origin serves the next viewer.
    let r = edge.get("/w/1.ts").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"later"[..]));
    assert_eq!(origin.count("/w/1.ts"), 1);
}

/// Asks for each of `waiters` at once while every connection the edge may open to its only
/// origin is held: each answers 503 origin-busy, and the origin's health counted none of them.
async fn waiters_are_busy_and_the_origin_stays_up(edge: &Arc<TestEdge>, waiters: &[&'static str]) {
    let tasks: Vec<_> = waiters
        .iter()
        .map(|&p| {
            let e = edge.clone();
            tokio::spawn(async move { e.get(p).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.expect("task");
        statuses.push((r.status.as_u16(), r.h("cache-status").to_string()));
    }
    let o = &edge.edge.origin.snapshot()["routes"][0]["origins"][0];
    println!(
        "waiters: {statuses:?}; origin state {}, consecutive failures {}, timeouts {}",
        o["state"], o["consecutive_failures"], o["errors"]["timeout"]
    );
    for (status, cache_status) in &statuses {
        assert_eq!(*status, 503, "{statuses:?}");
        assert!(cache_status.contains("detail=origin-busy"), "{statuses:?}");
    }
    assert_eq!(o["state"], "up", "the origin was never asked");
    assert_eq!(o["consecutive_failures"], 0);
    assert_eq!(o["errors"]["timeout"], 0);
}

/// The same with an HTTP/2 origin (`origin_client.http2`, prior knowledge), where requests
/// share one connection: the origin sent GOAWAY on it (as origins do after so many requests,
/// or on reload) while one body still streams, so the connection holds the edge's only slot
/// and takes no new request. The first waiter's dial waits for that slot; the others wait for
/// the connection that dial will open (hyper-util lets one h2 connect run per origin) and never
/// dial at all. Their time running out is as much the edge's wait as the first one's.
#[tokio::test]
async fn waiting_behind_another_requests_h2_connect_does_not_eject_the_origin() {
    let origin = H2Origin::start().await;
    let mut raw = group_config_for(vec![origin.url()], "failover");
    route(&mut raw).eject = Some(RawEject {
        failures: Some(2),
        duration: Some("60s".into()),
    });
    raw.origin_client.http2 = Some(true);
    raw.origin_client.max_connections_per_origin = Some(1);
    raw.origin_client.max_fills = Some(0);
    raw.origin_client.first_byte_timeout = Some("500ms".into());
    let edge = Arc::new(TestEdge::start(raw).await);

    // Its head arrives after the origin's GOAWAY: the connection takes no new stream now.
    let holder = edge
        .send_streaming(edge.req(Method::GET, "/long"), Default::default())
        .await;
    assert_eq!(holder.status(), 200);
    let waiters = ["/w/1.ts", "/w/2.ts", "/w/3.ts"];
    waiters_are_busy_and_the_origin_stays_up(&edge, &waiters).await;
    for p in waiters {
        assert_eq!(origin.count(p), 0, "{p} never reached the origin");
    }

    let body = holder.into_body().collect().await.expect("the long body");
    assert_eq!(body.to_bytes().len(), 4000);
    // The connection closed with its last stream: the slot is free, a new one is opened.
    let r = edge.get("/w/1.ts").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"h2:/w/1.ts"[..]));
    assert_eq!(origin.count("/w/1.ts"), 1);
}

/// The same for active health checks: a check whose dial waited for this edge's own connection
/// slot until its timeout never asked the origin, so it is no failed check.
#[tokio::test]
async fn a_health_check_waiting_for_a_local_connection_slot_is_not_a_failed_check() {
    let origin = Origin::start().await;
    origin.script("/health", Script::ok("ok"));
    origin.script(
        "/long.ts",
        Script::ok(vec![1u8; 4000])
            .header("cache-control", "max-age=60")
            .trickle(40, std::time::Duration::from_secs(2)),
    );
    let mut raw = group_config(&[&origin], "failover");
    route(&mut raw).health = Some(RawHealth {
        path: Some("/health".into()),
        interval: Some("50ms".into()),
        timeout: Some("200ms".into()),
        fall: Some(2),
        // Once down, it would stay down for the rest of the test.
        rise: Some(100),
    });
    raw.origin_client.max_connections_per_origin = Some(1);
    raw.origin_client.max_fills = Some(0);
    let edge = std::sync::Arc::new(TestEdge::start(raw).await);
    until("the origin is checked", || origin.count("/health") >= 1).await;
    let holder = {
        let e = edge.clone();
        tokio::spawn(async move { e.get("/long.ts").await })
    };
    until("the long body holds the connection", || {
        origin.count("/long.ts") == 1
    })
    .await;
    let checks = origin.count("/health");
    let r = holder.await.expect("task");
    let o = &edge.edge.origin.snapshot()["routes"][0]["origins"][0];
    println!(
        "after the connection was held: state {}, last check {}; checks that reached the \
         origin meanwhile: {}",
        o["state"],
        o["last_check"],
        origin.count("/health") - checks
    );
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 4000));
    assert_eq!(o["state"], "up");
}

/// A pass whose body its viewer failed to deliver (cut short by a close, malformed chunked
/// framing, or too slow to arrive before the first-byte timeout) says nothing about the
/// origin: it counts neither toward passive ejection nor as an origin error. Such POSTs used
/// to count as origin `protocol` failures and timeouts, and a viewer could eject a healthy
/// primary with a handful of them.
#[tokio::test]
async fn a_viewer_cannot_eject_an_origin_with_its_own_broken_request_bodies() {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let (a, b) = (Origin::start().await, Origin::start().await);
    for o in [&a, &b] {
        o.script("/up", Script::ok("stored"));
        o.script("/cold.ts", seg("segment"));
    }
    let mut raw = group_config(&[&a, &b], "failover");
    route(&mut raw).eject = Some(RawEject {
        failures: Some(3),
        duration: Some("60s".into()),
    });
    raw.origin_client.first_byte_timeout = Some("1s".into());
    let edge = TestEdge::start(raw).await;
    let open = || edge.edge.metrics.limits.connections_open.load(Relaxed);
    let mut answers = Vec::new();
    // Each broken body on a connection of its own, one after another.
    for kind in ["cut", "cut", "bare-lf", "bare-lf", "slow", "slow"] {
        let mut s = TcpStream::connect(edge.addr).await.expect("connect");
        let head = match kind {
            "cut" => "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n0123456789",
            "bare-lf" => {
                "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"
            }
            _ => "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nx",
        };
        s.write_all(head.as_bytes()).await.expect("write request");
        let answer = match kind {
            "cut" => {
                until("the origin got the request", || {
                    a.count("/up") + b.count("/up") == answers.len() + 1
                })
                .await;
                drop(s);
                0
            }
            "slow" => {
                // One byte every 300 ms (under the between-bytes timeout), never all 100.
                let (mut rd, mut wr) = s.into_split();
                let trickle = tokio::spawn(async move {
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if wr.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                });
                let mut bytes = Vec::new();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut bytes),
                )
                .await;
                trickle.abort();
                crate::support::edge::RawResp {
                    bytes,
                    closed: true,
                }
                .status()
            }
            _ => crate::support::edge::read_raw(&mut s).await.status(),
        };
        answers.push(answer);
        until("the viewer's connection ended", || open() == 0).await;
    }
    let oa = &edge.edge.origin.snapshot()["routes"][0]["origins"][0];
    println!(
        "answers {answers:?}; origin a: state {}, consecutive failures {}, errors {}",
        oa["state"], oa["consecutive_failures"], oa["errors"]
    );
    assert_eq!(
        oa["state"], "up",
        "a viewer's broken bodies ejected origin a"
    );
    assert_eq!(oa["consecutive_failures"], 0);
    assert_eq!(oa["errors"]["protocol"], 0);
    assert_eq!(oa["errors"]["timeout"], 0);
    assert_eq!(b.count("/up"), 0, "every POST went to origin a");
    assert_eq!(
        &answers[2..],
        [400, 400, 408, 408],
        "the viewer's fault, not the origin's"
    );
    let r = edge.get("/cold.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!((a.count("/cold.ts"), b.count("/cold.ts")), (1, 0));
}

/// A pass whose viewer sent its whole body (`Content-Length`) to an origin that then never
/// answers is the origin's timeout: hyper's HTTP/1.1 client never polls a body past its length,
/// so the body looked "still arriving" and the viewer was blamed (408, and the hung origin
/// never counted a timeout).
#[tokio::test]
async fn a_whole_request_body_the_origin_never_answers_is_the_origins_timeout() {
    let origin = Origin::start().await;
    let never = Gate::new();
    origin.script("/up", Script::ok("stored").gate(&never));
    let mut raw = edge_config(&origin);
    raw.origin_client.first_byte_timeout = Some("1s".into());
    let edge = TestEdge::start(raw).await;
    let r = edge
        .raw(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789")
        .await;
    let o = &edge.edge.origin.snapshot()["routes"][0]["origins"][0];
    println!(
        "answer {}; origin: consecutive failures {}, errors {}",
        r.status(),
        o["consecutive_failures"],
        o["errors"]
    );
    assert_eq!(r.status(), 504, "the origin's timeout, not the viewer's");
    assert_eq!(o["errors"]["timeout"], 1);
    assert_eq!(origin.count("/up"), 1);
    never.open();
}

/// Bug: a pass of any method but GET or HEAD was never tried on the next origin, even when
/// the first refused the connection (nothing of the request was sent): a `DELETE`, `OPTIONS`,
/// or a `POST` without content got `502 origin-unreachable` with a healthy origin beside it,
/// until the dead one was ejected, and again each time its ejection ended. A request without
/// content goes to the next origin now; one whose body was being streamed still cannot (the
/// body cannot be sent twice).
#[tokio::test]
async fn a_pass_without_content_fails_over_when_the_first_origin_is_unreachable() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.stop_and_wait().await;
    for p in ["/delete", "/options", "/put", "/post", "/post-0"] {
        b.script(p, Script::ok("from-b"));
    }
    b.script("/licence", Script::ok("").echo());
    let edge = TestEdge::start(group_config(&[&a, &b], "failover")).await;
    for (method, path, length) in [
        (Method::DELETE, "/delete", None),
        (Method::OPTIONS, "/options", None),
        (Method::PUT, "/put", None),
        (Method::POST, "/post", None),
        (Method::POST, "/post-0", Some("0")),
    ] {
        let mut b_req = edge.req(method.clone(), path);
        if let Some(n) = length {
            b_req = b_req.header("content-length", n);
        }
        let r = edge.send(b_req, Default::default()).await;
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"from-b"[..]),
            "{method} {path}: {}",
            r.h("cache-status")
        );
        let seen = b.seen(path);
        assert_eq!(seen.len(), 1, "{method} {path}");
        assert_eq!(seen[0].method, method.as_str());
    }
    // Small content of a known length (a DRM licence request) is read first and sent whole to
    // the next origin: before, the body went with the failed attempt and the viewer got 502.
    let licence = vec![9u8; 3000];
    let r = edge
        .send(
            edge.req(Method::POST, "/licence")
                .header("content-type", "application/octet-stream"),
            licence.clone().into(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.h("cache-status"));
    assert!(r.body == licence, "the whole body reached B (echoed back)");
}

/// Bug: a pass streaming its viewer's body (over 64 KiB) had one first-byte timeout from the
/// start of the request, so the upload's time came out of the origin's: a body finished 0.8 s
/// into a 1 s timeout left an origin that answers 0.5 s after it has the request 0.2 s, the
/// viewer got a 504 for a POST the origin carried out, and the origin was charged a timeout
/// (a few such uploads ejected it, an outside review saw). The origin's time now starts once
/// the body is sent; a body still arriving at the timeout is still the viewer's 408.
#[tokio::test]
async fn an_upload_s_time_is_not_taken_from_the_origin_s_first_byte_timeout() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let origin = Origin::start().await;
    origin.script(
        "/upload",
        Script::ok("stored").head_delay(Duration::from_millis(500)),
    );
    let mut raw = edge_config(&origin);
    raw.origin_client.first_byte_timeout = Some("1s".into());
    let edge = TestEdge::start(raw).await;
    let len = 100 << 10;
    let mut s = TcpStream::connect(edge.addr).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // 100 KiB in 8 pieces over 0.8 s, within every between-bytes timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&vec![b'x'; len / 8]).await.expect("body");
    }
    let r = crate::support::edge::read_raw(&mut s).await;
    let o = &edge.edge.origin.snapshot()["routes"][0]["origins"][0];
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(o["errors"]["timeout"], 0, "the origin answered in its time");
    assert_eq!(origin.count("/upload"), 1);
}
