//! Request integrity, black-box: one viewer's request cannot poison, stall or crash what other
//! viewers get. The strict origin (`support::strict_origin`) frames requests as nginx does (it
//! reads a request's `Content-Length` or chunked body before answering, so a fill carrying a
//! `Content-Length` without a body would stall it) and records every header it received.
//! Tests of the real binary scan its log for panics.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vedge::config::RawConfig;

use crate::support::binary::{BinaryEdge, ADMIN_TOKEN};
use crate::support::edge::{edge_config, read_raw, until, RawResp, TestEdge};
use crate::support::origin::{Origin, Script};
use crate::support::strict_origin::{StrictOrigin, StrictScript};
use crate::support::tls_origin::{TestCa, TlsOrigin};

#[tokio::test]
async fn a_host_holding_a_path_is_refused_so_host_and_path_cannot_collide() {
    let origin = Origin::start().await;
    origin.script(
        "/x/y.ts",
        Script::ok("right").header("cache-control", "max-age=60"),
    );
    origin.script(
        "/y.ts",
        Script::ok("wrong").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let bad = edge
        .raw(b"GET /y.ts HTTP/1.1\r\nHost: cdn/x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(bad.status(), 400);
    let good = edge
        .raw(b"GET /x/y.ts HTTP/1.1\r\nHost: cdn\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(good.status(), 200);
    assert!(good.text().ends_with("right"), "{}", good.text());
    assert_eq!(origin.count("/y.ts"), 0);
}

#[tokio::test]
async fn overflowing_numbers_give_sane_answers_and_the_edge_keeps_serving() {
    let origin = Origin::start().await;
    origin.script(
        "/v/age.ts",
        Script::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("age", "18446744073709551615"),
    );
    origin.script(
        "/v/long.ts",
        Script::ok("segment").header("cache-control", "max-age=9223372036854775807"),
    );
    origin.script(
        "/v/long.m3u8",
        Script::ok("#EXTM3U\n").header("cache-control", "max-age=9223372036854775807"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/v/age.ts", "/v/long.ts", "/v/long.m3u8"] {
        for _ in 0..2 {
            let r = edge.get(path).await;
            assert_eq!(r.status, 200, "{path}");
            edge.settle().await;
        }
    }
    let r = edge
        .get_with("/v/age.ts", &[("range", "bytes=1-18446744073709551615")])
        .await;
    assert!(matches!(r.status.as_u16(), 206 | 200 | 416), "{}", r.status);
    let r = edge.get("/v/long.ts").await;
    assert_eq!(
        r.status, 200,
        "the edge still serves after the hostile values"
    );
}

#[tokio::test]
async fn dot_segments_route_key_and_fetch_as_the_normalised_path() {
    let origin = Origin::start().await;
    origin.script(
        "/b.ts",
        Script::ok("b").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .raw(b"GET /a/../b.ts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    edge.settle().await;
    let r = edge
        .raw(b"GET /a/%2e%2e/b.ts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(origin.seen("/b.ts")[0].target, "/b.ts");
    for bad in ["/a%2Fb.ts", "/a%5Cb.ts", "/a%00.ts"] {
        let req = format!("GET {bad} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(edge.raw(req.as_bytes()).await.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn override_headers_from_the_leader_never_reach_the_origin_on_a_fill() {
    let origin = Origin::start().await;
    origin.script(
        "/v/o.ts",
        Script::ok("o").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let hostile = [
        ("x-forwarded-host", "evil.example"),
        ("x-http-method-override", "DELETE"),
        ("forwarded", "host=evil.example"),
        ("x-original-url", "/admin"),
        ("user-agent", "attacker"),
        ("accept-language", "xx"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    assert_eq!(edge.get_with("/v/o.ts", &hostile).await.status, 200);
    let seen = &origin.seen("/v/o.ts")[0];
    for (name, _) in &hostile[..6] {
        assert!(seen.header(name).is_none(), "{name} reached the origin");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen.header("host"),
        Some(origin.addr().to_string().as_str())
    );
    assert!(seen.header("via").is_some() && seen.header("cdn-loop").is_some());
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn a_route_with_hosts_answers_other_hosts_421() {
    let origin = Origin::start().await;
    origin.script(
        "/r/x.ts",
        Script::ok("x").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/r/".into(),
        origin: origin.url(),
        hosts: Some(vec!["cdn.example".into()]),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    let other = edge
        .raw(b"GET /r/x.ts HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(other.status(), 421);
    let ok = edge
        .raw(b"GET /r/x.ts HTTP/1.1\r\nHost: CDN.example:80\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn viewer_hosts_do_not_fan_out_keys_on_default_routes() {
    let origin = Origin::start().await;
    origin.script(
        "/v/f.ts",
        Script::ok("f").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, host) in ["a.example", "b.example", "c.example:8080"]
        .iter()
        .enumerate()
    {
        let req = format!("GET /v/f.ts HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = edge.raw(req.as_bytes()).await;
        assert_eq!(r.status(), 200);
        if i > 0 {
            assert_eq!(r.header("x-cache").as_deref(), Some("HIT"), "{host}");
        }
        edge.settle().await;
    }
    assert_eq!(origin.count("/v/f.ts"), 1);
}

#[tokio::test]
async fn a_push_without_a_host_is_a_hit_for_viewers_of_any_host() {
    use bytes::Bytes;
    use http_body_util::Full;
    use vedge::ingest::admin::{handle, IngestJobs};
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let jobs = std::sync::Arc::new(IngestJobs::default());
    let put = http::Request::builder()
        .method(Method::PUT)
        .uri("/admin/objects/push/a.ts")
        .body(Full::new(Bytes::from_static(b"pushed")))
        .expect("request");
    let res = handle(&edge.edge, &jobs, put).await.expect("routed");
    assert_eq!(res.status(), http::StatusCode::CREATED);
    let r = edge
        .raw(b"GET /push/a.ts HTTP/1.1\r\nHost: viewer.example:1234\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.header("x-cache").as_deref(), Some("HIT"), "{}", r.text());
    assert_eq!(origin.count("/push/a.ts"), 0);
}

/// Headers no fill may carry to the origin, whatever the leader sent.
const NEVER_ON_A_FILL: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "expect",
    "upgrade",
    "te",
    "connection",
    "x-evil",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "x-forwarded-host",
    "x-original-url",
    "x-http-method-override",
    "forwarded",
    "accept-language",
];

/// An edge in front of the strict origin, `collapse_timeout` 10 s (what a stall would cost).
fn strict_config(origin: &StrictOrigin) -> RawConfig {
    let mut raw = RawConfig {
        origin: Some(origin.url()),
        ram_size: Some("64MiB".into()),
        ..RawConfig::default()
    };
    raw.cache.collapse_timeout = Some("10s".into());
    raw.origin_client.first_byte_timeout = Some("5s".into());
    raw.origin_client.between_bytes_timeout = Some("3s".into());
    raw.origin_client.connect_timeout = Some("1s".into());
    raw.server.shutdown_grace = Some("1s".into());
    raw
}

/// Writes `bytes` to `addr` on a fresh connection and reads until it closes (10 s at most).
async fn raw_at(addr: SocketAddr, bytes: Vec<u8>) -> RawResp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&bytes).await.expect("write");
    read_raw(&mut s).await
}

/// How many responses a connection carried.
fn responses(r: &RawResp) -> usize {
    r.text().matches("HTTP/1.1 ").count()
}

/// A log file's text; fails the test if the process panicked.
fn assert_no_panic(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "the edge panicked:\n{text}");
}

#[tokio::test]
async fn get_with_a_body_is_refused_and_never_stalls_viewers_collapsed_on_the_same_key() {
    let origin = StrictOrigin::start().await;
    let body = "segment-100 ".repeat(1000);
    origin.script(
        "/live/s/seg_100.ts",
        StrictScript::ok(body.clone())
            .header("Cache-Control: max-age=60")
            .delay(Duration::from_millis(400)),
    );
    let edge = TestEdge::start(strict_config(&origin)).await;
    let attack = b"GET /live/s/seg_100.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nConnection: close\r\n\r\n012345678901234567890123456789".to_vec();
    // Before any fill: the attacker would have been the leader.
    assert_eq!(raw_at(edge.addr, attack.clone()).await.status(), 400);
    // An honest leader carrying every header a fill must not copy.
    let leader = tokio::spawn(raw_at(
        edge.addr,
        b"GET /live/s/seg_100.ts HTTP/1.1\r\nHost: t\r\nConnection: close, x-evil\r\nX-Evil: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers\r\nUpgrade: websocket\r\nX-Forwarded-Host: evil.example\r\n\
          X-Original-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nForwarded: host=evil\r\n\
          Accept-Language: xx\r\n\r\n"
            .to_vec(),
    ));
    until("the leader's fill started", || !edge.edge.fills.is_empty()).await;
    let started = Instant::now();
    // While viewers are collapsed on the key: the attacker is refused, and joins nothing.
    let attacks = [
        tokio::spawn(raw_at(edge.addr, attack.clone())),
        tokio::spawn(raw_at(
            edge.addr,
            b"GET /live/s/seg_100.ts HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\nx\r\n0\r\n\r\n".to_vec(),
        )),
    ];
    let viewers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(raw_at(
                edge.addr,
                b"GET /live/s/seg_100.ts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            ))
        })
        .collect();
    for a in attacks {
        assert_eq!(a.await.expect("attacker").status(), 400);
    }
    for v in viewers.into_iter().chain([leader]) {
        let r = v.await.expect("viewer");
        assert_eq!(r.status(), 200, "{}", r.text());
        assert_eq!(
            r.split().1,
            body.as_bytes(),
            "the collapsed viewers get the right bytes"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "collapsed viewers answered well before collapse_timeout (10 s), not after it"
    );
    assert!(
        edge.collapsed() >= 1,
        "the viewers were collapsed on the fill"
    );
    let seen = origin.seen("/live/s/seg_100.ts");
    assert_eq!(seen.len(), 1, "one origin request for the key: {seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert!(seen[0].body.is_empty());
    for name in NEVER_ON_A_FILL {
        assert!(
            !seen[0].has(name),
            "the fill carried {name}: {:?}",
            seen[0].headers
        );
    }
}

#[tokio::test]
async fn a_pass_through_is_framed_once_and_hop_by_hop_headers_are_stripped_both_ways() {
    let origin = StrictOrigin::start().await;
    origin.script(
        "/v/p",
        StrictScript::ok("done")
            .header("Connection: x-foo")
            .header("X-Foo: secret")
            .header("Keep-Alive: timeout=5")
            .header("X-Kept: yes"),
    );
    let edge = TestEdge::start(strict_config(&origin)).await;
    let r = raw_at(
        edge.addr,
        b"POST /v/p HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nConnection: close, x-bar\r\n\
          X-Bar: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\r\nhello world"
            .to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.split().1, b"done");
    assert_eq!(r.header("x-kept").as_deref(), Some("yes"));
    for name in ["x-foo", "keep-alive"] {
        assert!(r.header(name).is_none(), "{name} reached the viewer");
    }
    let r = raw_at(
        edge.addr,
        b"POST /v/p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let seen = origin.seen("/v/p");
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(
            s.body, b"hello world",
            "the body arrived whole, framed once"
        );
        assert!(
            s.has("content-length") != s.has("transfer-encoding"),
            "exactly one framing: {:?}",
            s.headers
        );
        for name in ["x-bar", "keep-alive", "proxy-connection"] {
            assert!(!s.has(name), "{name} reached the origin");
        }
        assert!(s
            .header("connection")
            .is_none_or(|c| !c.to_ascii_lowercase().contains("x-bar")));
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_smuggles_nothing_on_either_listener(
) {
    let origin = StrictOrigin::start().await;
    origin.script("/v/p", StrictScript::ok("posted"));
    for p in ["/v/a.ts", "/v/b.ts"] {
        origin.script(p, StrictScript::ok(p).header("Cache-Control: max-age=600"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("edge.log");
    let v = BinaryEdge::start_logged(&origin.url(), std::iter::empty::<&str>(), &log);
    v.ready().await;
    let viewer: SocketAddr = ([127, 0, 0, 1], v.port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], v.admin).into();

    // TE.CL: by Content-Length the body is "5\r\nh"; by chunked framing it is "hello" and a
    // `GET /x` follows. hyper reads chunked (RFC 9112 §6.1: Transfer-Encoding wins), drops the
    // Content-Length and closes the connection after the answer, so the `GET /x` never runs.
    let r = raw_at(
        viewer,
        b"POST /v/p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        responses(&r),
        1,
        "the hidden request was answered: {}",
        r.text()
    );
    assert!(r.closed, "a request with both framings ends its connection");
    // CL.TE: the chunked body ends at once; by Content-Length a `GET /x` would be in it.
    let smuggled = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut req = format!(
        "POST /v/p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n",
        5 + smuggled.len()
    )
    .into_bytes();
    req.extend_from_slice(smuggled);
    let r = raw_at(viewer, req).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(responses(&r), 1, "{}", r.text());
    let seen = origin.seen("/v/p");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0].body, b"hello",
        "the origin saw what the chunked framing says"
    );
    assert!(seen[1].body.is_empty());
    for s in &seen {
        assert!(
            !(s.has("content-length") && s.has("transfer-encoding")),
            "the origin saw both framings: {:?}",
            s.headers
        );
    }
    assert!(
        origin.seen("/x").is_empty(),
        "a smuggled request reached the origin"
    );

    // The admin listener: the chunked body purges /v/a.ts; a purge of /v/b.ts hidden after it
    // (inside the Content-Length's reach) must not run.
    for p in ["/v/a.ts", "/v/b.ts"] {
        v.get(v.port, p).await.expect("prime");
    }
    let purge = |path: &str| format!(r#"{{"urls":["{path}"]}}"#);
    let first = purge("/v/a.ts");
    let hidden = purge("/v/b.ts");
    let hidden_req = format!(
        "POST /admin/purge HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let chunked = format!("{:x}\r\n{first}\r\n0\r\n\r\n", first.len());
    let req = format!(
        "POST /admin/purge HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {chunked}{hidden_req}",
        chunked.len() + hidden_req.len()
    );
    let r = raw_at(admin, req.into_bytes()).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        responses(&r),
        1,
        "the hidden purge was answered: {}",
        r.text()
    );
    let a = v.get(v.port, "/v/a.ts").await.expect("a");
    let b = v.get(v.port, "/v/b.ts").await.expect("b");
    assert_eq!(
        a.header("x-cache").as_deref(),
        Some("MISS"),
        "the chunked purge ran"
    );
    assert_eq!(
        b.header("x-cache").as_deref(),
        Some("HIT"),
        "the smuggled purge ran"
    );
    assert_eq!(origin.seen("/v/b.ts").len(), 1);
    assert_no_panic(&log);
}

#[tokio::test]
async fn overflowing_origin_and_range_values_with_a_store_give_sane_answers_and_no_panic() {
    let origin = StrictOrigin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n";
    let hostile = [
        ("age", ["Age: 18446744073709551615", "Cache-Control: max-age=60"]),
        ("max", ["Cache-Control: max-age=9223372036854775807", "X-N: 1"]),
        ("smax", ["Cache-Control: s-maxage=99999999999999999999", "X-N: 1"]),
        ("stale", ["Cache-Control: max-age=1, stale-while-revalidate=18446744073709551615, stale-if-error=99999999999999999999", "X-N: 1"]),
        ("far", ["Expires: Fri, 31 Dec 9999 23:59:59 GMT", "Date: Thu, 01 Jan 1970 00:00:00 GMT"]),
        ("junk", ["Expires: not a date, -1, 99999999999999999999", "Cache-Control: public"]),
    ];
    for (name, headers) in &hostile {
        for (ext, body) in [("ts", "0123456789"), ("m3u8", playlist)] {
            let mut s = StrictScript::ok(body);
            for h in headers {
                s = s.header(h);
            }
            origin.script(&format!("/o/{name}.{ext}"), s);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("edge.log");
    let store = dir.path().join("edge.store");
    let v = BinaryEdge::start_logged(
        &origin.url(),
        [
            OsStr::new("--store"),
            store.as_os_str(),
            OsStr::new("--store-size"),
            OsStr::new("64MiB"),
            OsStr::new("--store-region-size"),
            OsStr::new("4MiB"),
        ],
        &log,
    );
    v.ready().await;
    for (name, _) in &hostile {
        for (ext, body) in [("ts", "0123456789"), ("m3u8", playlist)] {
            let path = format!("/o/{name}.{ext}");
            for _ in 0..3 {
                let r = v.get(v.port, &path).await.expect("the edge answers");
                assert_eq!(r.status(), 200, "{path}: {}", r.text());
                assert_eq!(r.split().1, body.as_bytes(), "{path}");
            }
        }
    }
    let viewer: SocketAddr = ([127, 0, 0, 1], v.port).into();
    for (range, ok) in [
        ("bytes=1-18446744073709551615", &[206u16][..]),
        ("bytes=18446744073709551615-", &[416]),
        ("bytes=-18446744073709551615", &[200, 206]),
        ("bytes=0-99999999999999999999999", &[200, 206, 416]),
    ] {
        let req = format!(
            "GET /o/age.ts HTTP/1.1\r\nHost: t\r\nRange: {range}\r\nConnection: close\r\n\r\n"
        );
        let r = raw_at(viewer, req.into_bytes()).await;
        assert!(ok.contains(&r.status()), "{range}: {}", r.text());
        if range == "bytes=1-18446744073709551615" {
            assert_eq!(r.split().1, b"123456789");
            assert_eq!(r.header("content-range").as_deref(), Some("bytes 1-9/10"));
        }
    }
    // Wait (bounded) for the store's asynchronous writes, then read everything back once more.
    for _ in 0..100 {
        if v.metric("vedge_store_objects").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, _) in &hostile {
        let r = v
            .get(v.port, &format!("/o/{name}.ts"))
            .await
            .expect("answers");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        v.get(v.admin, "/healthz").await.map(|r| r.status()),
        Some(200)
    );
    assert_no_panic(&log);
}

/// `vedge ingest` (the real CLI) with `args`: (success, stdout + stderr).
async fn vedge_ingest(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vedge"))
            .arg("ingest")
            .args(&args)
            .output()
            .expect("run vedge ingest")
    })
    .await
    .expect("join");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_cli_push_without_host_is_a_hit_for_viewers_of_an_edge_on_a_random_port() {
    let origin = StrictOrigin::start().await;
    let files = [
        (
            "/p/master.m3u8",
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100000\nv1/index.m3u8\n",
        ),
        (
            "/p/v1/index.m3u8",
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n#EXTINF:2,\ns1.ts\n#EXT-X-ENDLIST\n",
        ),
        ("/p/v1/s0.ts", "segment zero"),
        ("/p/v1/s1.ts", "segment one"),
    ];
    for (path, body) in files {
        origin.script(path, StrictScript::ok(body));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("edge.log");
    let v = BinaryEdge::start_logged(&origin.url(), std::iter::empty::<&str>(), &log);
    v.ready().await;
    let admin = format!("http://127.0.0.1:{}", v.admin);
    let (ok, out) = vedge_ingest(vec![
        format!("{}/p/master.m3u8", origin.url()),
        "--admin".into(),
        admin.clone(),
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
    ])
    .await;
    assert!(ok, "vedge ingest failed:\n{out}");
    let gets = |p: &str| origin.seen(p).iter().filter(|r| r.method == "GET").count();
    let fetched: Vec<usize> = files.iter().map(|(p, _)| gets(p)).collect();
    assert_eq!(
        fetched,
        vec![1; files.len()],
        "the push read each object once"
    );
    let viewer: SocketAddr = ([127, 0, 0, 1], v.port).into();
    for (i, (path, body)) in files.iter().enumerate() {
        let host = format!("viewer{i}.example:{}", 1000 + i);
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw_at(viewer, req.into_bytes()).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text());
        assert_eq!(r.header("x-cache").as_deref(), Some("HIT"), "{path}");
        assert_eq!(r.split().1, body.as_bytes());
    }
    let after: Vec<usize> = files.iter().map(|(p, _)| gets(p)).collect();
    assert_eq!(
        after, fetched,
        "viewers of a pushed asset never reach the origin"
    );

    // An asset whose keys no route would serve (a path viewers cannot send) is refused: by the
    // admin API with 400, so the CLI fails.
    let bad = format!("{}/p%2Fq/master.m3u8", origin.url());
    let (ok, out) = vedge_ingest(vec![
        bad.clone(),
        "--admin".into(),
        admin,
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
    ])
    .await;
    assert!(!ok && out.contains("400"), "{out}");
    let body = format!(r#"{{"assets":["{bad}"]}}"#);
    let req = format!(
        "POST /admin/ingest HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_at(([127, 0, 0, 1], v.admin).into(), req.into_bytes()).await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert!(origin.seen("/p%2Fq/master.m3u8").is_empty());
    assert_no_panic(&log);
}

#[tokio::test]
async fn an_ingest_on_a_pass_host_route_without_a_host_is_refused_with_400() {
    use bytes::Bytes;
    use http_body_util::Full;
    use vedge::ingest::admin::{handle, IngestJobs};
    let origin = Origin::start().await;
    let mut raw = edge_config(&origin);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/ph/".into(),
        origin: origin.url(),
        pass_host: Some(true),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    let jobs = std::sync::Arc::new(IngestJobs::default());
    let post = |body: String| {
        http::Request::builder()
            .method(Method::POST)
            .uri("/admin/ingest")
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    };
    let url = format!("{}/ph/master.m3u8", origin.url());
    let res = handle(
        &edge.edge,
        &jobs,
        post(format!(r#"{{"assets":["{url}"]}}"#)),
    )
    .await
    .expect("routed");
    assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
    let res = handle(
        &edge.edge,
        &jobs,
        post(format!(r#"{{"assets":["{url}"],"host":"cdn.example"}}"#)),
    )
    .await
    .expect("routed");
    assert_eq!(res.status(), http::StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_prefix_purge_needs_no_host_on_a_default_route() {
    use tokio_util::sync::CancellationToken;
    let origin = Origin::start().await;
    origin.script(
        "/d/a.ts",
        Script::ok("a").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let admin = l.local_addr().expect("admin addr");
    let stop = CancellationToken::new();
    tokio::spawn(vedge::admin::serve(edge.edge.clone(), l, stop.clone()));
    let _stop = stop.drop_guard();
    let r = raw_at(
        edge.addr,
        b"GET /d/a.ts HTTP/1.1\r\nHost: any.example\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200);
    edge.settle().await;
    let body = r#"{"prefixes":["/d/"]}"#;
    let req = format!(
        "POST /admin/purge HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_at(admin, req.into_bytes()).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let r = raw_at(
        edge.addr,
        b"GET /d/a.ts HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(
        r.header("x-cache").as_deref(),
        Some("MISS"),
        "the prefix purge removed it"
    );
    assert_eq!(origin.count("/d/a.ts"), 2);
}

#[tokio::test]
async fn the_ingest_fetcher_reads_https_origins_with_the_given_trust() {
    use vedge::config::OriginTls;
    use vedge::origin::fetch::HttpFetcher;
    use vedge_manifest::fetch::Fetcher;
    let ca = TestCa::new();
    let tls = TlsOrigin::start(&ca, &["origin.test", "127.0.0.1"], false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let url = url::Url::parse(&format!("{}/a.ts", tls.ip_url())).expect("url");
    let trusted = HttpFetcher::new(Duration::from_secs(5), 0).with_tls(std::sync::Arc::new(
        move |_: &url::Url| OriginTls {
            ca_file: Some(ca_file.clone()),
            sni: Some("origin.test".into()),
            ..OriginTls::default()
        },
    ));
    let got = trusted.fetch(&url, 1 << 20).await.expect("https fetch");
    assert_eq!(got.body.as_ref(), b"tls:/a.ts");
    assert_eq!(trusted.size(&url).await, Some(b"tls:/a.ts".len() as u64));
    // Without the test CA the certificate is refused: an error, not a plain-text fallback.
    let untrusted = HttpFetcher::new(Duration::from_secs(5), 0);
    assert!(untrusted.fetch(&url, 1 << 20).await.is_err());
    assert_eq!(tls.count("/a.ts"), 2);
}
