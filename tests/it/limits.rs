//! Abuse limits on the viewer listener and timeouts on both listeners: per-client request rate
//! (429 with Retry-After, other clients unaffected: a second client sends from 127.0.0.2), the
//! per-client connection cap (closed at accept), the allowlist, route allow/deny lists (403),
//! slow readers cut after `server.write_timeout`, idle keep-alive connections closed, the
//! admin listener's header timeout, and the per-client shares of the origin side (fill slots,
//! pass connections) and the connections passes leave to fills.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use vedge::config::{RawConfig, RawRoute, RawShield};

use crate::support::binary::BinaryEdge;
use crate::support::edge::{edge_config, read_raw, until, RawResp};
use crate::support::origin::{Gate, Origin, Script};

/// A connection to `edge` from the loopback address `from` (127.0.0.1, 127.0.0.2...: Linux
/// routes all of 127/8 to loopback, so each is a distinct client to the edge).
async fn connect_from(from: &str, edge: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind the client address");
    sock.connect(edge).await.expect("connect")
}

/// `GET path` with `Connection: close` from `from`.
async fn get_from(from: &str, edge: SocketAddr, path: &str) -> RawResp {
    let mut s = connect_from(from, edge).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    read_raw(&mut s).await
}

/// A running edge with an admin listener; dropping `stop` shuts it down.
struct Running {
    edge: Arc<vedge::Edge>,
    viewer: SocketAddr,
    admin: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(mut raw: RawConfig) -> Running {
    raw.admin_token = Some("test-token-123".into());
    let cfg = vedge::Config::try_from(raw).expect("valid config");
    let edge = vedge::Edge::new(cfg).await.expect("edge starts");
    let viewer = TcpListener::bind("127.0.0.1:0").await.expect("bind viewer");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let (v, a) = (
        viewer.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(vedge::serve(
        edge.clone(),
        vedge::Listeners {
            viewer,
            admin: Some(admin),
        },
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        edge,
        viewer: v,
        admin: a,
        _stop: tx,
    }
}

/// The test config with loopback no longer allowlisted (it is by default).
async fn limited(origin: &Origin) -> RawConfig {
    let mut raw = edge_config(origin);
    raw.limits.allow = Some(Vec::new());
    raw
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_while_another_client_is_unaffected() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("a"));
    let mut raw = limited(&origin).await;
    raw.limits.per_ip_rps = Some(1);
    raw.limits.per_ip_burst = Some(3);
    let e = start(raw).await;
    for _ in 0..3 {
        assert_eq!(get_from("127.0.0.1", e.viewer, "/a.ts").await.status(), 200);
    }
    let over = get_from("127.0.0.1", e.viewer, "/a.ts").await;
    assert_eq!(over.status(), 429, "{}", over.text());
    let retry: u64 = over
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another address has its own bucket.
    assert_eq!(get_from("127.0.0.2", e.viewer, "/a.ts").await.status(), 200);
    assert_eq!(e.edge.metrics.limits.rate_limited.load(Relaxed), 1);
    assert_eq!(
        origin.count("/a.ts"),
        1,
        "the 429 never reached the cache or origin"
    );
    let metrics = get_from("127.0.0.1", e.admin, "/metrics").await.text();
    assert!(metrics.contains("vedge_rate_limited_total 1"), "{metrics}");
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_accept() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("a"));
    let mut raw = limited(&origin).await;
    raw.limits.per_ip_connections = Some(2);
    let e = start(raw).await;
    let _one = connect_from("127.0.0.1", e.viewer).await;
    let _two = connect_from("127.0.0.1", e.viewer).await;
    let refused = get_from("127.0.0.1", e.viewer, "/a.ts").await;
    assert!(refused.closed && refused.bytes.is_empty(), "{refused:?}");
    assert_eq!(e.edge.metrics.limits.refused_per_ip.load(Relaxed), 1);
    assert_eq!(get_from("127.0.0.2", e.viewer, "/a.ts").await.status(), 200);
    // A closed connection frees its place.
    drop(_one);
    let mut answered = false;
    for _ in 0..500 {
        if get_from("127.0.0.1", e.viewer, "/a.ts").await.status() == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "the freed place was never given back");
}

#[tokio::test]
async fn the_global_connection_cap_counts_every_client() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("a"));
    let mut raw = edge_config(&origin);
    raw.limits.max_connections = Some(1);
    let e = start(raw).await;
    let _held = connect_from("127.0.0.2", e.viewer).await;
    until("the held connection is accepted", || {
        e.edge.metrics.limits.connections_open.load(Relaxed) == 1
    })
    .await;
    let refused = get_from("127.0.0.3", e.viewer, "/a.ts").await;
    assert!(refused.closed && refused.bytes.is_empty(), "{refused:?}");
    assert_eq!(e.edge.metrics.limits.refused_global.load(Relaxed), 1);
}

#[tokio::test]
async fn allowlisted_addresses_bypass_the_per_client_limits() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("a"));
    let mut raw = edge_config(&origin);
    raw.limits.allow = Some(vec!["127.0.0.2/32".into()]);
    raw.limits.per_ip_rps = Some(1);
    raw.limits.per_ip_burst = Some(1);
    let e = start(raw).await;
    for _ in 0..5 {
        assert_eq!(get_from("127.0.0.2", e.viewer, "/a.ts").await.status(), 200);
    }
    assert_eq!(get_from("127.0.0.1", e.viewer, "/a.ts").await.status(), 200);
    assert_eq!(get_from("127.0.0.1", e.viewer, "/a.ts").await.status(), 429);
}

#[tokio::test]
async fn a_route_deny_or_allow_list_answers_403_before_the_cache() {
    let origin = Origin::start().await;
    origin.script("/private/a.ts", Script::ok("p"));
    origin.script("/office/a.ts", Script::ok("o"));
    let mut raw = edge_config(&origin);
    raw.routes = vec![
        RawRoute {
            prefix: "/private/".into(),
            origin: origin.url(),
            deny_ips: Some(vec!["127.0.0.1/32".into()]),
            ..RawRoute::default()
        },
        RawRoute {
            prefix: "/office/".into(),
            origin: origin.url(),
            allow_ips: Some(vec!["127.0.0.2".into(), "::ffff:127.0.0.3/128".into()]),
            ..RawRoute::default()
        },
    ];
    let e = start(raw).await;
    assert_eq!(
        get_from("127.0.0.2", e.viewer, "/private/a.ts")
            .await
            .status(),
        200
    );
    let denied = get_from("127.0.0.1", e.viewer, "/private/a.ts").await;
    assert_eq!(denied.status(), 403, "{}", denied.text());
    assert_eq!(denied.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        get_from("127.0.0.1", e.viewer, "/office/a.ts")
            .await
            .status(),
        403
    );
    assert_eq!(
        get_from("127.0.0.2", e.viewer, "/office/a.ts")
            .await
            .status(),
        200
    );
    assert_eq!(
        get_from("127.0.0.3", e.viewer, "/office/a.ts")
            .await
            .status(),
        200
    );
    assert_eq!(e.edge.metrics.limits.ip_denied.load(Relaxed), 2);
    assert_eq!(origin.count("/private/a.ts"), 1);
    assert_eq!(origin.count("/office/a.ts"), 1);
}

#[tokio::test]
async fn a_viewer_that_stops_reading_is_cut_after_the_write_timeout() {
    let origin = Origin::start().await;
    // Far more than the socket buffers on both sides hold.
    let body = Bytes::from(vec![7u8; 48 << 20]);
    origin.script("/big.mp4", Script::ok(body.clone()));
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("128MiB".into());
    raw.server.write_timeout = Some("500ms".into());
    raw.server.send_buffer = Some("0".into());
    let e = start(raw).await;
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(64 << 10)
        .expect("small receive buffer");
    let mut s = sock.connect(e.viewer).await.expect("connect");
    s.write_all(b"GET /big.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write request");
    // Read nothing until the edge gives up on us.
    until("the slow reader is cut", || {
        e.edge.metrics.limits.slow_readers_closed.load(Relaxed) == 1
    })
    .await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the connection stayed open"),
        }
    }
    assert!(
        got < body.len(),
        "the whole body arrived: the connection was not cut"
    );
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed() {
    let origin = Origin::start().await;
    origin.script("/a.ts", Script::ok("a"));
    let mut raw = edge_config(&origin);
    raw.server.idle_timeout = Some("300ms".into());
    let e = start(raw).await;
    let mut s = TcpStream::connect(e.viewer).await.expect("connect");
    s.write_all(b"GET /a.ts HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write request");
    let r = read_raw(&mut s).await;
    assert!(r.closed, "the idle connection was left open");
    assert_eq!(r.status(), 200);
    assert_eq!(e.edge.metrics.limits.idle_closed.load(Relaxed), 1);
}

#[tokio::test]
async fn the_admin_listener_closes_a_connection_that_never_finishes_its_header() {
    let origin = Origin::start().await;
    let mut raw = edge_config(&origin);
    raw.admin.header_read_timeout = Some("300ms".into());
    let e = start(raw).await;
    let mut s = TcpStream::connect(e.admin).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write half a header");
    let r = read_raw(&mut s).await;
    assert!(r.closed, "the admin listener waited forever: {r:?}");
    // It still answers a client that sends a whole request.
    let ok = get_from("127.0.0.1", e.admin, "/healthz").await;
    assert_eq!(ok.status(), 200);
}

/// Viewers never take the last descriptors: a crowd of connections at the open-file limit must
/// leave the edge one for a fill's origin connection. Before, accept took every descriptor and
/// the fill's connect failed with EMFILE: a `502` for the viewer, and for every viewer
/// collapsed onto the fill (two `502`s in the 20,000-viewer storm at a 20,000-descriptor limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_at_the_descriptor_limit_never_takes_the_descriptors_fills_need() {
    let origin = Origin::start().await;
    // Three fills in flight at once need origin connections beyond the one kept warm.
    let paths = ["/d/a.ts", "/d/b.ts", "/d/c.ts"];
    for p in paths {
        origin.script(p, Script::ok(p).head_delay(Duration::from_millis(300)));
    }
    // The shared runtime, one accept loop: with a loop per core (`vedge serve`'s default
    // without a store) this test once found a viewer unanswered for 10 s under the full
    // suite's load (1 run in 4). The likely cause is the test's, not the edge's: each loop has
    // its own SO_REUSEPORT listener and the kernel hashes each connection to one of them, so
    // two of the three early viewers can sit in the backlog of a loop the scheduler started
    // late, while the other loop fills the descriptors with the crowd; that loop then serves
    // one (the one that finds the reserve) and pauses, and the other waits behind the crowd's
    // idle connections, as any viewer at the limit does. One loop accepts in arrival order, so
    // the viewers that came first are served first; what the test proves, the reserve kept for
    // fills, is the same either way.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "[server]\nthreads = 0\n").expect("write the config");
    let v = BinaryEdge::start_with_nofile(
        &origin.url(),
        [std::ffi::OsStr::new("--config"), config.as_os_str()],
        128,
    );
    v.ready().await;
    let edge = ("127.0.0.1", v.port);
    let mut viewers = Vec::new();
    for _ in paths {
        viewers.push(TcpStream::connect(edge).await.expect("connect"));
    }
    // More connections than the edge has descriptors (bounded in count and time).
    let mut crowd = Vec::new();
    for _ in 0..160 {
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(edge));
        if let Ok(Ok(s)) = connect.await {
            crowd.push(s);
        }
    }
    // Let the edge accept (keep or close) what it can.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asks = viewers.into_iter().zip(paths).map(|(mut s, p)| async move {
        let req = format!("GET {p} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        (p, read_raw(&mut s).await)
    });
    for (p, r) in futures_util::future::join_all(asks).await {
        assert_eq!(r.status(), 200, "{p}: the fill got an origin connection");
        assert_eq!(r.split().1, p.as_bytes());
    }
    drop(crowd);
    let paused = r#"vedge_accept_paused_total{reason="descriptors"}"#;
    assert!(
        v.metric(paused).await > 0,
        "accepting paused at the reserve"
    );
}

/// CPU seconds (user + system) the process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// The admin listener at the descriptor limit: its accept fails with EMFILE while connections
/// wait in its queue, and the loop backs off (as the viewer's does) instead of retrying at
/// once, which spun a core of the shared runtime for as long as the crowd stayed.
#[tokio::test]
async fn an_admin_listener_at_the_descriptor_limit_does_not_spin() {
    let origin = Origin::start().await;
    let v = BinaryEdge::start_with_nofile(&origin.url(), std::iter::empty::<&str>(), 128);
    v.ready().await;
    // More admin connections than the edge has descriptors (bounded in count and time).
    let mut crowd = Vec::new();
    for _ in 0..200 {
        let connect = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", v.admin)),
        );
        if let Ok(Ok(s)) = connect.await {
            crowd.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds(v.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(v.pid()) - before;
    drop(crowd);
    assert!(
        used < 1.0,
        "the edge used {used:.2} CPU seconds in 2 s with the admin listener at its limit"
    );
}

/// One client asking for many cold objects of a slow origin holds at most a quarter of the
/// route's fill slots (`origin_client.max_fills`): another client's miss is fetched at once,
/// instead of waiting behind it and failing as origin-busy.
#[tokio::test]
async fn one_client_cannot_hold_every_fill_slot_of_a_route() {
    use crate::support::origin::Gate;
    let origin = Origin::start().await;
    let gate = Gate::new();
    for i in 0..4 {
        origin.script(
            &format!("/cold/a{i}.ts"),
            Script::ok("a")
                .header("cache-control", "max-age=60")
                .gate(&gate),
        );
    }
    origin.script(
        "/cold/b.ts",
        Script::ok("b").header("cache-control", "max-age=60"),
    );
    let mut raw = limited(&origin).await;
    raw.origin_client.max_fills = Some(4);
    let e = start(raw).await;
    // Client A: four cold objects at once, all held at the origin.
    let hog: Vec<_> = (0..4)
        .map(|i| {
            let viewer = e.viewer;
            tokio::spawn(
                async move { get_from("127.0.0.2", viewer, &format!("/cold/a{i}.ts")).await },
            )
        })
        .collect();
    until("client A's first fill reached the origin", || {
        (0..4).any(|i| origin.count(&format!("/cold/a{i}.ts")) > 0)
    })
    .await;
    // Client B's miss is fetched while A's fills still wait at the gate.
    let b = get_from("127.0.0.3", e.viewer, "/cold/b.ts").await;
    assert_eq!(b.status(), 200, "{}", b.text());
    assert_eq!(b.header("x-cache").as_deref(), Some("MISS"), "{}", b.text());
    let a_fetched: usize = (0..4)
        .map(|i| origin.count(&format!("/cold/a{i}.ts")))
        .sum();
    assert_eq!(a_fetched, 1, "client A held one slot of four (its share)");
    gate.open();
    for h in hog {
        let _ = h.await;
    }
}

/// A client at its share of the fill slots that asks first for an object others want holds
/// none of them: its fill gives the key up at once, the others fetch it under their own
/// shares, and the client itself waits for a slot of its own. Before, its fill waited for the
/// client's share with every viewer collapsed on it, and all of them got 503 origin-busy at the
/// collapse deadline, the origin idle.
#[tokio::test]
async fn a_client_at_its_fill_share_does_not_hold_the_viewers_collapsed_on_its_fill() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/cold/held.ts",
        Script::ok("held")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    origin.script(
        "/cold/hot.ts",
        Script::ok("hot").header("cache-control", "max-age=60"),
    );
    let mut raw = limited(&origin).await;
    raw.origin_client.max_fills = Some(4); // a share of 1 per client
    raw.cache.collapse_timeout = Some("2s".into());
    let e = start(raw).await;
    let viewer = e.viewer;
    // Client A holds its whole share with a fill the origin holds.
    let held = tokio::spawn(async move { get_from("127.0.0.2", viewer, "/cold/held.ts").await });
    until("client A's fill reached the origin", || {
        origin.count("/cold/held.ts") == 1
    })
    .await;
    // A asks first for the object the others want.
    let a_hot = tokio::spawn(async move { get_from("127.0.0.2", viewer, "/cold/hot.ts").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: Vec<_> = ["127.0.0.3", "127.0.0.4"]
        .into_iter()
        .map(|from| tokio::spawn(async move { get_from(from, viewer, "/cold/hot.ts").await }))
        .collect();
    for o in others {
        let r = o.await.expect("viewer task");
        assert_eq!(r.status(), 200, "{}", r.text());
        assert_eq!(r.split().1, b"hot");
    }
    assert_eq!(
        origin.count("/cold/hot.ts"),
        1,
        "one fill for the two viewers"
    );
    gate.open();
    assert_eq!(held.await.expect("held task").status(), 200);
    let a = a_hot.await.expect("client A task");
    assert_eq!(a.status(), 200, "{}", a.text());
    assert_eq!(
        origin.count("/cold/hot.ts"),
        1,
        "client A got the stored copy"
    );
    assert!(e.edge.metrics.abuse.fills_share_released.load(Relaxed) >= 1);
}

/// The LL-HLS form of the above: a client at its fill share that sends the next blocking
/// reload first is not listed as the playlist's upstream request while it waits for its share,
/// so viewers asking for that part or the next are answered by a request of their own instead
/// of parking behind it until its wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_fill_share_does_not_hold_blocking_reloads_behind_it() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/ll/held.ts",
        Script::ok("held")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    let head = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0\n\
#EXT-X-MEDIA-SEQUENCE:10\n#EXTINF:4.0,\ns10.m4s\n#EXTINF:4.0,\ns11.m4s\n\
#EXT-X-PART:DURATION=1.0,URI=\"p12_0.m4s\"\n#EXT-X-PART:DURATION=1.0,URI=\"p12_1.m4s\"\n";
    let playlist = |tail: &str| {
        Script::ok(format!("{head}{tail}"))
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=1")
    };
    origin.script(
        "/ll/p.m3u8",
        playlist("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p12_2.m4s\"\n"),
    );
    let mut raw = limited(&origin).await;
    raw.origin_client.max_fills = Some(4); // a share of 1 per client
    raw.cache.collapse_timeout = Some("20s".into());
    // Client A's held fill keeps its share until the gate opens, not the first-byte timeout.
    raw.origin_client.first_byte_timeout = Some("30s".into());
    let e = start(raw).await;
    let viewer = e.viewer;
    assert_eq!(
        get_from("127.0.0.5", viewer, "/ll/p.m3u8").await.status(),
        200
    );
    // Blocking requests now get the copy with parts 12.2 and 12.3, after a moment.
    origin.script(
        "/ll/p.m3u8",
        playlist(
            "#EXT-X-PART:DURATION=1.0,URI=\"p12_2.m4s\"\n#EXT-X-PART:DURATION=1.0,URI=\"p12_3.m4s\"\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p12_4.m4s\"\n",
        )
        .head_delay(Duration::from_millis(300)),
    );
    let held = tokio::spawn(async move { get_from("127.0.0.2", viewer, "/ll/held.ts").await });
    until("client A's fill reached the origin", || {
        origin.count("/ll/held.ts") == 1
    })
    .await;
    let a = tokio::spawn(async move {
        get_from("127.0.0.2", viewer, "/ll/p.m3u8?_HLS_msn=12&_HLS_part=2").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: Vec<_> = [("127.0.0.3", 2), ("127.0.0.4", 3)]
        .into_iter()
        .map(|(from, part)| {
            let path = format!("/ll/p.m3u8?_HLS_msn=12&_HLS_part={part}");
            tokio::spawn(async move { get_from(from, viewer, &path).await })
        })
        .collect();
    for o in others {
        // Far within the hold (12 s) and the share wait (20 s): not behind client A.
        let r = tokio::time::timeout(Duration::from_secs(8), o)
            .await
            .expect("a viewer parked behind client A's share wait")
            .expect("viewer task");
        assert_eq!(r.status(), 200, "{}", r.text());
        assert!(r.text().contains("p12_3.m4s"), "{}", r.text());
    }
    gate.open();
    assert_eq!(held.await.expect("held task").status(), 200);
    let _ = a.await;
}

/// A pass (here a `Cookie` GET) whose origin body trickles, one byte a second for 30 s, so it
/// holds its origin connection for the rest of the test.
fn trickling_pass() -> Script {
    Script::ok(vec![b'p'; 30]).trickle(30, Duration::from_secs(30))
}

/// Sends `GET path` with a `Cookie` (a pass) from `from` and reads only the response head:
/// the viewer then holds its connection and reads nothing more. The status (0: none) goes to
/// `statuses`; the task runs until aborted.
fn hold_pass_from(
    from: &'static str,
    edge: SocketAddr,
    path: String,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    hold_from(from, edge, path, true, statuses)
}

/// `hold_pass_from`, with a `Cookie` only when `cookie` (without one, a GET is a cache miss).
fn hold_from(
    from: &'static str,
    edge: SocketAddr,
    path: String,
    cookie: bool,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut s = connect_from(from, edge).await;
        let cookie = if cookie {
            format!("Cookie: session={from}\r\n")
        } else {
            String::new()
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{cookie}\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let status = RawResp {
            bytes: head,
            closed: false,
        }
        .status();
        statuses.lock().push(status);
        // Holds the connection (and so the pass) without reading.
        std::future::pending::<()>().await;
    })
}

/// Passes (requests that bypass the cache) from one client address hold at most a quarter of
/// an origin's connections (`origin_client.max_connections_per_origin`): another client's
/// cold miss still gets a connection and is served. One address with passes whose bodies its
/// viewer never took used to hold every connection, and every other viewer's miss waited for
/// one and failed.
#[tokio::test]
async fn one_client_cannot_hold_every_origin_connection_with_passes() {
    let origin = Origin::start().await;
    let raw = limited(&origin).await;
    one_client_passes_in_one_of_four_connections(&origin, raw).await;
}

/// The same through a shield tier: a route's passes go to the key's shield (another vedge,
/// which allows this edge as a peer and so gives it no share of its own), and one client at
/// this edge holds at most a quarter of this edge's connections to that shield. Shield nodes
/// had neither pass slots nor a connection cap: one viewer's passes took as many connections
/// to the shield as it liked.
#[tokio::test]
async fn one_client_cannot_hold_every_connection_to_a_shield_with_passes() {
    let origin = Origin::start().await;
    // Any HTTP upstream can stand for a shield node here.
    let shield = Origin::start().await;
    let mut raw = limited(&origin).await;
    raw.shield = Some(RawShield {
        nodes: vec![shield.url()],
        ..RawShield::default()
    });
    one_client_passes_in_one_of_four_connections(&shield, raw).await;
    assert_eq!(origin.count("/cold/b.ts"), 0, "the miss went to the shield");
}

/// The answers client A's requests got (the status of each head, 0: none).
type Statuses = Arc<parking_lot::Mutex<Vec<u16>>>;

/// An edge from `raw` with `max_connections_per_origin = 4` towards `upstream` (and a 2 s
/// first-byte timeout: a miss that finds no connection gives up within the test), and
/// `/cold/b.ts` on `upstream`, client B's cacheable miss.
async fn four_connections(upstream: &Origin, mut raw: RawConfig) -> (Running, Statuses) {
    upstream.script(
        "/cold/b.ts",
        Script::ok("b").header("cache-control", "max-age=60"),
    );
    raw.origin_client.max_connections_per_origin = Some(4);
    raw.origin_client.first_byte_timeout = Some("2s".into());
    (start(raw).await, Arc::default())
}

/// With `max_connections_per_origin = 4` towards `upstream` (the route's origin or its
/// shield), client A sends four passes whose bodies trickle and never reads them: one reaches
/// the upstream, the others answer 503; then client B's cold miss is served.
async fn one_client_passes_in_one_of_four_connections(upstream: &Origin, raw: RawConfig) {
    for i in 0..4 {
        upstream.script(&format!("/p/a{i}.ts"), trickling_pass());
    }
    let (e, statuses) = four_connections(upstream, raw).await;
    // Client A: four passes at once, one per connection of the origin's budget.
    let hog: Vec<_> = (0..4)
        .map(|i| {
            hold_pass_from(
                "127.0.0.2",
                e.viewer,
                format!("/p/a{i}.ts"),
                statuses.clone(),
            )
        })
        .collect();
    let at_origin = || {
        (0..4)
            .map(|i| upstream.count(&format!("/p/a{i}.ts")))
            .sum::<usize>()
    };
    let refused = || statuses.lock().iter().filter(|s| **s != 200).count();
    until(
        "each of client A's passes is at the upstream or answered",
        || at_origin() + refused() == 4,
    )
    .await;
    // Client B's cold miss needs a connection while A's passes still hold theirs.
    let b = get_from("127.0.0.3", e.viewer, "/cold/b.ts").await;
    println!(
        "client A: {} passes at the upstream, answers {:?}; client B's miss: {} {:?}",
        at_origin(),
        statuses.lock(),
        b.status(),
        b.header("cache-status")
    );
    assert_eq!(b.status(), 200, "{}", b.text());
    assert_eq!(upstream.count("/cold/b.ts"), 1);
    assert_eq!(
        at_origin(),
        1,
        "client A held one connection of four (its share)"
    );
    for s in statuses.lock().iter().filter(|s| **s != 200) {
        assert_eq!(*s, 503, "a pass over its client's share: origin busy");
    }
    for h in hog {
        h.abort();
    }
}

/// A miss whose answer turns out not to be shareable (`Cache-Control: private` here) is
/// relayed to the viewer that led its fill, as a pass is, and holds its origin connection as
/// long as that viewer takes the body: it takes a pass slot of the origin for its client then,
/// so one client asking for many distinct such URLs and reading nothing holds at most its
/// share. Such relays held no pass slot, and four of them held every connection: another
/// client's miss waited for one and answered 503.
#[tokio::test]
async fn one_client_cannot_hold_every_origin_connection_with_unshareable_misses() {
    let origin = Origin::start().await;
    for i in 0..4 {
        origin.script(
            &format!("/u/a{i}.ts"),
            trickling_pass().header("cache-control", "private"),
        );
    }
    let (e, statuses) = four_connections(&origin, limited(&origin).await).await;
    let hog: Vec<_> = (0..4)
        .map(|i| {
            let path = format!("/u/a{i}.ts");
            hold_from("127.0.0.2", e.viewer, path, false, statuses.clone())
        })
        .collect();
    until("each of client A's misses is answered", || {
        statuses.lock().len() == 4
    })
    .await;
    let b = get_from("127.0.0.3", e.viewer, "/cold/b.ts").await;
    let o = &e.edge.origin.snapshot()["routes"][0]["origins"][0];
    println!(
        "client A's answers {:?}; client B's miss: {} {:?}; passes {}, refused {}",
        statuses.lock(),
        b.status(),
        b.header("cache-status"),
        o["passes"],
        o["passes_refused"]
    );
    assert_eq!(b.status(), 200, "{}", b.text());
    assert_eq!(origin.count("/cold/b.ts"), 1);
    let mut answers = statuses.lock().clone();
    answers.sort();
    assert_eq!(answers, [200, 503, 503, 503], "one relay in A's share");
    assert_eq!(o["passes"], 1, "the relay holds a pass slot");
    assert_eq!(o["passes_refused"], 3);
    for h in hog {
        h.abort();
    }
}

/// A miss whose unshareable answer finds no pass slot for its leader's client is refused to
/// that leader alone (503): viewers collapsed onto its fill pass for themselves, each within
/// its own share, as they do for any unshareable answer.
#[tokio::test]
async fn viewers_collapsed_onto_a_refused_unshareable_miss_pass_for_themselves() {
    let origin = Origin::start().await;
    let private = || trickling_pass().header("cache-control", "private");
    origin.script("/u/held.ts", private());
    let gate = Gate::new();
    origin.script("/u/shared.ts", private().gate(&gate));
    let (e, statuses) = four_connections(&origin, limited(&origin).await).await;
    // Client A holds its share (one of four connections) with a first such miss.
    let held = hold_from(
        "127.0.0.2",
        e.viewer,
        "/u/held.ts".into(),
        false,
        statuses.clone(),
    );
    until("A's first miss is answered", || statuses.lock().len() == 1).await;
    // A leads a second one, and client C's request for the same URL collapses onto it.
    let leader = hold_from(
        "127.0.0.2",
        e.viewer,
        "/u/shared.ts".into(),
        false,
        statuses.clone(),
    );
    until("A's fill is at the origin", || {
        origin.count("/u/shared.ts") == 1
    })
    .await;
    let other = Statuses::default();
    let reader = hold_from(
        "127.0.0.3",
        e.viewer,
        "/u/shared.ts".into(),
        false,
        other.clone(),
    );
    until("C joined A's fill", || {
        e.edge.metrics.collapsed.load(Relaxed) == 1
    })
    .await;
    gate.open();
    until("both are answered", || {
        statuses.lock().len() == 2 && other.lock().len() == 1
    })
    .await;
    println!(
        "client A's answers {:?}, client C's {:?}; the origin saw /u/shared.ts {} times",
        statuses.lock(),
        other.lock(),
        origin.count("/u/shared.ts")
    );
    assert_eq!(
        *statuses.lock(),
        [200, 503],
        "A's second relay: over its share"
    );
    assert_eq!(*other.lock(), [200], "C passed for itself");
    assert_eq!(
        origin.count("/u/shared.ts"),
        2,
        "A's fill, then C's own pass"
    );
    for h in [held, leader, reader] {
        h.abort();
    }
}

/// Passes as a whole hold at most three quarters of an origin's connections: however many
/// clients pass at once, a fill still gets a connection.
#[tokio::test]
async fn passes_from_many_clients_leave_origin_connections_for_fills() {
    let origin = Origin::start().await;
    let clients = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    for i in 0..clients.len() {
        origin.script(&format!("/p/c{i}.ts"), trickling_pass());
    }
    let (e, statuses) = four_connections(&origin, limited(&origin).await).await;
    // Four clients, one pass each: each within its own share.
    let passes: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, from)| hold_pass_from(from, e.viewer, format!("/p/c{i}.ts"), statuses.clone()))
        .collect();
    let at_origin = || {
        (0..clients.len())
            .map(|i| origin.count(&format!("/p/c{i}.ts")))
            .sum::<usize>()
    };
    let refused = || statuses.lock().iter().filter(|s| **s != 200).count();
    until("each pass is at the origin or answered", || {
        at_origin() + refused() == clients.len()
    })
    .await;
    let b = get_from("127.0.0.6", e.viewer, "/cold/b.ts").await;
    println!(
        "passes at the origin: {}, answers {:?}; the fill: {} {:?}",
        at_origin(),
        statuses.lock(),
        b.status(),
        b.header("cache-status")
    );
    assert_eq!(b.status(), 200, "{}", b.text());
    assert_eq!(origin.count("/cold/b.ts"), 1);
    assert_eq!(at_origin(), 3, "passes held three connections of four");
    for p in passes {
        p.abort();
    }
}
