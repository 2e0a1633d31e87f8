//! Regression tests from the seventh adversarial review (blocking playlist reloads read
//! otherwise than the origin is asked, CMCD urgency starving other fills, a slice's 416 stored as
//! the object, a stalled viewer pacing an oversized fill, a doubled slash skipping a route's
//! token): each proves one rule a hostile viewer broke before, and fails on the code before its
//! fix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use crate::adversarial::edge_with_the_next_part_held;
use crate::support::edge::edge_config;
use crate::support::{until, Gate, Origin, Script, TestEdge};

/// A blocking reload is held on the playlist while a request for the same `(M, P)` is
/// upstream, so the edge's reading of `_HLS_msn`/`_HLS_part` must be the one the origin is
/// asked. Before, the edge read the raw query (`%5FHLS_msn` is not `_HLS_msn` there, and the
/// last of two `_HLS_msn` won) while the key and the fill carry the normalised, sorted query:
/// `?_HLS_msn=2&_HLS_part=1&%5FHLS_msn=3` was held upstream as "(2, 1)" but asked the origin
/// for segment 3, and every genuine viewer of (2, 1) waited behind it until its hold ran out
/// (503) although the origin had that part. Now a directive named twice, in whatever
/// spelling, is the viewer's 400 and nobody waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_is_read_as_the_origin_is_asked_so_an_odd_spelling_holds_nobody() {
    let origin = Origin::start().await;
    // The origin holds whatever reaches it now (segment 3 does not exist yet).
    let gate = Gate::new();
    let (edge, path, new) = edge_with_the_next_part_held(&origin, &gate).await;
    let odd_done = AtomicBool::new(false);
    let odd = async {
        let r = edge
            .get(&format!("{path}?_HLS_msn=2&_HLS_part=1&%5FHLS_msn=3"))
            .await;
        odd_done.store(true, Ordering::SeqCst);
        r
    };
    let genuine = async {
        until("the odd request was answered or reached the origin", || {
            odd_done.load(Ordering::SeqCst) || origin.count(path) == 2
        })
        .await;
        // Part 1 of segment 2 is out now.
        origin.script(
            path,
            Script::ok(new.clone()).header("cache-control", "max-age=1"),
        );
        let r = edge.get(&format!("{path}?_HLS_msn=2&_HLS_part=1")).await;
        gate.open();
        r
    };
    let (odd, genuine) = tokio::join!(odd, genuine);
    assert_eq!(genuine.status, 200, "{}", genuine.h("cache-status"));
    assert_eq!(genuine.body, new);
    assert_eq!(odd.status, 400, "a directive named twice is malformed");
}

/// CMCD urgency (`bs`, `su`, a low `bl`) is the player's own word, so it may move a fill up the
/// route's queue (`origin_client.max_fills`) but never keep another viewer's fill out of it.
/// Before, urgent fills were all admitted before any other: one client claiming starvation on
/// a stream of cold requests kept every other viewer's fill waiting until its collapse deadline
/// (503 origin-busy). Now a waiting ordinary fill is admitted after at most three urgent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_claiming_urgency_never_keeps_another_viewers_fill_out_of_the_queue() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    let cached = |body: &'static str| Script::ok(body).header("cache-control", "max-age=60");
    origin.script("/v/held.ts", cached("held").gate(&gate));
    origin.script("/v/genuine.ts", cached("genuine"));
    const CLAIMS: usize = 8;
    for i in 0..CLAIMS {
        origin.script(&format!("/v/u{i}.ts"), cached("urgent"));
    }
    let mut raw = edge_config(&origin);
    raw.origin_client.max_fills = Some(1);
    let edge = Arc::new(TestEdge::start(raw).await);
    let queued = || edge.edge.metrics.abuse.fills_queued.load(Ordering::SeqCst);

    let e = edge.clone();
    let held = tokio::spawn(async move { e.get("/v/held.ts").await });
    until("the held fill takes the route's slot", || {
        origin.count("/v/held.ts") == 1
    })
    .await;
    // The genuine viewer queues first, then the claims of starvation.
    let e = edge.clone();
    let genuine = tokio::spawn(async move { e.get("/v/genuine.ts").await });
    until("the genuine fill is queued", || queued() == 1).await;
    let mut claims = Vec::new();
    for i in 0..CLAIMS {
        let e = edge.clone();
        claims.push(tokio::spawn(async move {
            e.get(&format!("/v/u{i}.ts?CMCD=bs%2Csu")).await
        }));
    }
    until("every claim is queued", || queued() == 1 + CLAIMS as u64).await;
    gate.open();
    assert_eq!(held.await.expect("task").status, 200);
    let genuine = genuine.await.expect("task");
    assert_eq!(genuine.status, 200, "{}", genuine.h("cache-status"));
    for c in claims {
        assert_eq!(c.await.expect("task").status, 200);
    }
    let genuine_at = origin.seen("/v/genuine.ts")[0].at;
    let before = (0..CLAIMS)
        .filter(|i| origin.seen(&format!("/v/u{i}.ts"))[0].at < genuine_at)
        .count();
    assert_eq!(before, 3, "urgent fills fetched before the genuine one");
}

/// A viewer's `Range` far past the end of a cold object probes the slice holding its first byte
/// (`cache.slice_size`, on by default), and a range-capable origin answers that slice 416. The
/// 416 is about that range alone: before, it was filled "as usual" under the object's base key,
/// and with the origin's `Cache-Control` on it every viewer of the object got 416 until it
/// expired. Now it answers the viewer who asked, and the object is served whole afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_range_past_the_end_never_stores_a_416_for_the_object() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..100u8).collect();
    origin.script(
        "/v/s.mp4",
        Script::ok(body.clone())
            .header("cache-control", "max-age=60")
            .ranged(),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let past = edge
        .get_with("/v/s.mp4", &[("range", "bytes=99999999-")])
        .await;
    assert_eq!(past.status, 416, "{}", past.h("cache-status"));
    assert_eq!(past.h("content-range"), "bytes */100");

    let whole = edge.get("/v/s.mp4").await;
    assert_eq!(whole.status, 200, "{}", whole.h("cache-status"));
    assert_eq!(whole.body, body);
    let ranged = edge.get_with("/v/s.mp4", &[("range", "bytes=0-9")]).await;
    assert_eq!(ranged.status, 206, "{}", ranged.h("cache-status"));
    assert_eq!(&ranged.body[..], &body[..10]);
}

/// The first slice of an empty object is past its end too: a viewer asking for the whole
/// object gets the empty 200 the origin has for it, never the slice's 416.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_object_viewer_of_an_empty_object_never_gets_a_slices_416() {
    let origin = Origin::start().await;
    origin.script(
        "/v/empty.mp4",
        Script::ok("")
            .header("cache-control", "max-age=60")
            .ranged(),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for _ in 0..2 {
        let r = edge.get("/v/empty.mp4").await;
        assert_eq!(r.status, 200, "{}", r.h("cache-status"));
        assert!(r.body.is_empty());
    }
}

/// A body too large to keep (no `Content-Length`, past `cache.max_object_size`) streams on to
/// the viewers collapsed on its fill, holding only a window of it. Before, the window was paced
/// to the slowest of them: one viewer that stopped reading (or read a byte now and then, never
/// long enough idle for the write timeout) held every other viewer of that fill at its pace.
/// Now the fill is paced to its fastest reader, and a reader that falls a whole window behind
/// it is cut alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_never_holds_back_the_others_on_an_oversized_fill() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    // Larger than the fill's 16 MiB window plus what socket buffers hold.
    let body = bytes::Bytes::from(vec![7u8; 40 << 20]);
    origin.script("/v/big.mp4", Script::ok(body.clone()).chunked().gate(&gate));
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("128MiB".into());
    raw.cache.max_object_size = Some("1MiB".into());
    raw.cache.slice_size = Some("0".into());
    raw.server.write_timeout = Some("120s".into());
    raw.server.send_buffer = Some("0".into());
    let edge = TestEdge::start(raw).await;

    // The stalled viewer leads the fill and never reads its answer.
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(64 << 10)
        .expect("small receive buffer");
    let mut stalled = sock.connect(edge.addr).await.expect("connect");
    stalled
        .write_all(b"GET /v/big.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write request");
    until("the stalled viewer's fill reached the origin", || {
        origin.count("/v/big.mp4") == 1
    })
    .await;
    let reader = edge.get("/v/big.mp4");
    let open = async {
        until("the second viewer joined the fill", || {
            edge.collapsed() == 1
        })
        .await;
        gate.open();
    };
    let (r, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(reader, open)
    })
    .await
    .expect("the reading viewer was held back by the stalled one");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert_eq!(origin.count("/v/big.mp4"), 1);
    drop(stalled);
}

/// A route's gate (its token, its address lists) guards every spelling of its paths. Routes
/// were matched on the path as written, so `//v/seg.ts` missed the token route `/v/`, went out
/// through the default route without a token, and an origin that merges slashes (nginx's
/// default, Apache's file mapping) answered it with `/v/seg.ts`: the protected segment, to
/// anyone, and cached for the next. Now routing reads the path with runs of `/` merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_route_is_never_bypassed_by_doubling_a_slash() {
    let origin = Origin::start().await;
    // An origin merging slashes serves both spellings the same.
    for p in ["/v/seg.ts", "//v/seg.ts", "/v//seg.ts"] {
        origin.script(
            p,
            Script::ok("protected").header("cache-control", "max-age=60"),
        );
    }
    let edge = crate::support::token::token_edge(&origin, crate::support::token::raw_token()).await;
    assert_eq!(edge.get("/v/seg.ts").await.status, 403);
    for doubled in ["//v/seg.ts", "///v/seg.ts", "//v//seg.ts"] {
        let r = edge.get(doubled).await;
        assert_eq!(r.status, 403, "{doubled}: {:?}", r.body);
    }
    assert_eq!(origin.count("//v/seg.ts"), 0);
}

/// The same gate against path parameters: a servlet container (Tomcat, Jetty; Java packagers
/// such as Wowza) serves `/v;x=1/seg.ts` as `/v/seg.ts`. Routes were matched on the path as
/// written, so that spelling missed the token route `/v/` and went out through the default route
/// without a token. Now routing leaves each segment's parameters out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_route_is_never_bypassed_by_path_parameters() {
    let origin = Origin::start().await;
    let spellings = ["/v;x=1/seg.ts", "/v;jsessionid=0/seg.ts", "/;a/v/seg.ts"];
    // An origin dropping path parameters serves every spelling as the protected segment.
    for p in std::iter::once("/v/seg.ts").chain(spellings) {
        origin.script(
            p,
            Script::ok("protected").header("cache-control", "max-age=60"),
        );
    }
    let edge = crate::support::token::token_edge(&origin, crate::support::token::raw_token()).await;
    assert_eq!(edge.get("/v/seg.ts").await.status, 403);
    for p in spellings {
        let r = edge.get(p).await;
        assert_eq!(r.status, 403, "{p}: {:?}", r.body);
        assert_eq!(origin.count(p), 0, "{p} reached the origin");
    }
}

/// Within a token route, the token's `acl` guards the path the origin will serve, not only the
/// spelling: a token for `/v/free/*` asking for `/v/free/..;/paid/seg.ts` got the paid segment
/// from a servlet container (which serves that as `/v/paid/seg.ts`), because the ACL was matched
/// against the path as written. The ACL must now match the path as routed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_acl_is_never_walked_around_by_a_dot_segment_with_parameters() {
    let origin = Origin::start().await;
    let spellings = [
        "/v/free/..;/paid/seg.ts",
        "/v/free/..;jsessionid=1/paid/seg.ts",
        "/v/free/%2e%2e;/paid/seg.ts",
    ];
    for p in [
        "/v/paid/seg.ts",
        "/v/free/seg.ts;jsessionid=1",
        "/v/free/..;/paid/seg.ts",
        "/v/free/..;jsessionid=1/paid/seg.ts",
    ] {
        origin.script(p, Script::ok("bytes").header("cache-control", "max-age=60"));
    }
    let edge = crate::support::token::token_edge(&origin, crate::support::token::raw_token()).await;
    let free = crate::support::token::token_for("/v/free/*", None);
    let r = edge.get(&format!("/v/paid/seg.ts?hdnts={free}")).await;
    assert_eq!(r.status, 403);
    for p in spellings {
        let r = edge.get(&format!("{p}?hdnts={free}")).await;
        assert_eq!(r.status, 403, "{p}: {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(origin.count("/v/free/..;/paid/seg.ts"), 0);
    assert_eq!(origin.count("/v/free/..;jsessionid=1/paid/seg.ts"), 0);
    // A parameter that hides no dot segment stays under the ACL's path: still served.
    let r = edge
        .get(&format!("/v/free/seg.ts;jsessionid=1?hdnts={free}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

/// The same containers resolve a dot segment once its parameters are gone: Tomcat serves
/// `/x/..;/v/seg.ts` as `/v/seg.ts` (the classic `..;` traversal). Stripping the parameters
/// alone routed it as `/x/../v/seg.ts`, under the default route, without a token; routing now
/// resolves the dot segments the stripping makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_route_is_never_bypassed_by_a_dot_segment_with_parameters() {
    let origin = Origin::start().await;
    let spellings = [
        "/x/..;/v/seg.ts",
        "/x/..;jsessionid=0/v/seg.ts",
        "/v/.;/seg.ts",
    ];
    for p in std::iter::once("/v/seg.ts").chain(spellings) {
        origin.script(
            p,
            Script::ok("protected").header("cache-control", "max-age=60"),
        );
    }
    let edge = crate::support::token::token_edge(&origin, crate::support::token::raw_token()).await;
    for p in spellings {
        let r = edge.get(p).await;
        assert_eq!(r.status, 403, "{p}: {:?}", r.body);
        assert_eq!(origin.count(p), 0, "{p} reached the origin");
    }
}
