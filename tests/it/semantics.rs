//! HTTP caching semantics a conformance suite (cache-tests.fyi) checks for a shared cache:
//! invalidation by unsafe methods (RFC 9111 §4.4), targeted cache-control fields (RFC 9213),
//! storable statuses (RFC 9111 §3, RFC 9110 §15.1), field parsing, and `Cache-Status`
//! (RFC 9211) lists.

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::binary::BinaryEdge;
use crate::support::{edge_config, Origin, Script, TestEdge};

fn fresh(body: &'static str) -> Script {
    Script::ok(body).header("cache-control", "max-age=3600")
}

/// GET, wait for the fill to be stored, GET again: the second answer's `X-Cache`.
async fn second_get(edge: &TestEdge, path: &str) -> String {
    edge.get(path).await;
    edge.settle().await;
    edge.get(path).await.x_cache().to_string()
}

async fn send(edge: &TestEdge, method: &str, path: &str) -> StatusCode {
    let m = Method::from_bytes(method.as_bytes()).expect("method");
    edge.send(edge.req(m, path), Bytes::from_static(b"abc"))
        .await
        .status
}

#[tokio::test]
async fn successful_unsafe_method_invalidates_the_target_uri() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, method) in [
        "POST", "PUT", "DELETE", "PATCH", "M-SEARCH", "FOO", "get", "PURGE",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/inv/{i}");
        origin.script(&path, fresh("v1"));
        assert_eq!(second_get(&edge, &path).await, "HIT", "{method}");
        assert_eq!(send(&edge, method, &path).await, StatusCode::OK);
        let r = edge.get(&path).await;
        assert_eq!(
            r.x_cache(),
            "MISS",
            "{method}: the stored response was invalidated"
        );
        // GET, GET, the unsafe request, GET.
        assert_eq!(origin.count(&path), 3, "{method}");
    }
}

#[tokio::test]
async fn failed_unsafe_method_does_not_invalidate() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    origin.script("/inv/fail", fresh("v1"));
    assert_eq!(second_get(&edge, "/inv/fail").await, "HIT");
    for status in [500, 404] {
        origin.script("/inv/fail", Script::status(status, "no"));
        assert_eq!(send(&edge, "POST", "/inv/fail").await.as_u16(), status);
        assert_eq!(edge.get("/inv/fail").await.x_cache(), "HIT", "{status}");
    }
}

#[tokio::test]
async fn unsafe_method_invalidates_every_vary_variant() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    origin.script("/inv/vary", fresh("v").header("vary", "accept-language"));
    for lang in ["en", "fr"] {
        edge.get_with("/inv/vary", &[("accept-language", lang)])
            .await;
        edge.settle().await;
        let r = edge
            .get_with("/inv/vary", &[("accept-language", lang)])
            .await;
        assert_eq!(r.x_cache(), "HIT", "{lang}");
    }
    send(&edge, "POST", "/inv/vary").await;
    for lang in ["en", "fr"] {
        let r = edge
            .get_with("/inv/vary", &[("accept-language", lang)])
            .await;
        assert_eq!(r.x_cache(), "MISS", "{lang}");
    }
}

#[tokio::test]
async fn unsafe_method_invalidates_location_and_content_location_on_the_same_host() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for p in ["/inv/loc", "/inv/cl", "/inv/elsewhere"] {
        origin.script(p, fresh("target"));
        assert_eq!(second_get(&edge, p).await, "HIT", "{p}");
    }
    origin.script(
        "/inv/form",
        Script::status(201, "created")
            .header("location", "loc")
            .header("content-location", &edge.url("/inv/cl")),
    );
    assert_eq!(send(&edge, "POST", "/inv/form").await, StatusCode::CREATED);
    assert_eq!(edge.get("/inv/loc").await.x_cache(), "MISS");
    assert_eq!(edge.get("/inv/cl").await.x_cache(), "MISS");

    // Another host's URI is never invalidated on a response's word.
    origin.script(
        "/inv/form",
        Script::status(303, "").header("location", "http://other.example/inv/elsewhere"),
    );
    send(&edge, "POST", "/inv/form").await;
    assert_eq!(edge.get("/inv/elsewhere").await.x_cache(), "HIT");
}

/// Behind one viewer host, each route is its own origin: a `Location` from one route's origin
/// (an open `next=` redirect in a web app, a hostile tenant) used to invalidate another route's
/// objects, so one POST per request made every viewer of another origin's hot segment miss.
/// Only URIs served from the same origins are invalidated now; the target URI still is.
#[tokio::test]
async fn a_location_from_one_origin_never_invalidates_another_origins_object() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let mut raw = edge_config(&a);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/other/".into(),
        origin: b.url(),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    b.script("/other/hot.ts", fresh("B's segment"));
    a.script("/mine.ts", fresh("A's segment"));
    assert_eq!(second_get(&edge, "/other/hot.ts").await, "HIT");
    assert_eq!(second_get(&edge, "/mine.ts").await, "HIT");
    a.script(
        "/login",
        Script::status(302, "")
            .header("location", "/other/hot.ts")
            .header("content-location", "/mine.ts"),
    );
    assert_eq!(send(&edge, "POST", "/login").await, StatusCode::FOUND);
    assert_eq!(
        edge.get("/other/hot.ts").await.x_cache(),
        "HIT",
        "origin A's Location invalidated origin B's object"
    );
    assert_eq!(b.count("/other/hot.ts"), 1);
    // A's own URI, named by A, still goes.
    assert_eq!(edge.get("/mine.ts").await.x_cache(), "MISS");
}

/// A successful POST invalidates every stored variant of its URI, also those on disk after a
/// restart, when the edge no longer knows how the origin varies the URI: a viewer whose variant
/// the POST changed must not be served the copy from before it. (With the variants looked for
/// only where the edge knew the URI's `Vary`, the phone viewer got `v1` from disk.)
#[tokio::test]
async fn a_post_after_a_restart_invalidates_the_variants_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("vedge.store");
    let origin = Origin::start().await;
    let seg = |body: &'static str| {
        Script::ok(body)
            .header("cache-control", "max-age=3600")
            .header("content-type", "video/mp2t")
            .header("vary", "X-Device")
    };
    origin.script("/r/v.ts", seg("v1"));
    let flags = ["--store-size", "64MiB", "--store-region-size", "4MiB"];
    let start = || {
        let store_flag = [std::ffi::OsStr::new("--store"), store.as_os_str()];
        BinaryEdge::start(
            &origin.url(),
            store_flag
                .into_iter()
                .chain(flags.map(std::ffi::OsStr::new)),
        )
    };
    let send = |port: u16, head: String| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        out
    };
    let get = |port: u16, device: &'static str| {
        send(
            port,
            format!(
                "GET /r/v.ts HTTP/1.1\r\nHost: edge.test\r\nX-Device: {device}\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
    };
    let body_of = |raw: &[u8]| -> String {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        String::from_utf8_lossy(&raw[at..]).into_owned()
    };

    let mut v = start();
    v.ready().await;
    // Three times each: a pulled object goes to disk on its second request.
    for _ in 0..3 {
        for d in ["tv", "phone"] {
            get(v.port, d).await;
        }
    }
    for _ in 0..100 {
        if v.metric("vedge_store_objects").await >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        v.metric("vedge_store_objects").await >= 2,
        "the variants are on disk"
    );
    v.signal(libc::SIGTERM);
    drop(v);

    let v = start();
    v.ready().await;
    origin.script("/r/v.ts", seg("v2"));
    let post = send(
        v.port,
        "POST /r/v.ts HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
            .to_string(),
    )
    .await;
    assert!(
        post.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&post)
    );
    // The tv viewer teaches the edge the Vary again; the phone viewer must not get v1.
    assert_eq!(body_of(&get(v.port, "tv").await), "v2");
    assert_eq!(
        body_of(&get(v.port, "phone").await),
        "v2",
        "the phone viewer got the variant stored before the POST"
    );
}

#[tokio::test]
async fn cdn_cache_control_takes_precedence_over_cache_control() {
    let origin = Origin::start().await;
    origin.script(
        "/cdn/long",
        Script::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=3600"),
    );
    origin.script(
        "/cdn/private",
        Script::ok("x")
            .header("cache-control", "max-age=3600")
            .header("cdn-cache-control", "private"),
    );
    origin.script(
        "/cdn/zero",
        Script::ok("x")
            .header("cache-control", "max-age=3600")
            .header("cdn-cache-control", "max-age=0"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(second_get(&edge, "/cdn/long").await, "HIT");
    assert_ne!(second_get(&edge, "/cdn/private").await, "HIT");
    assert_ne!(second_get(&edge, "/cdn/zero").await, "HIT");
    // The viewer still gets both fields as the origin sent them.
    let r = edge.get("/cdn/long").await;
    assert_eq!(r.h("cache-control"), "no-store");
    assert_eq!(r.h("cdn-cache-control"), "max-age=3600");
}

#[tokio::test]
async fn invalid_cdn_cache_control_is_ignored_as_a_whole() {
    let origin = Origin::start().await;
    for (i, bad) in ["max-age=10000, &&&&&", "max-age=\"10000\"", "max-age =100"]
        .into_iter()
        .enumerate()
    {
        let path = format!("/cdn/bad{i}");
        origin.script(
            &path,
            Script::ok("x")
                .header("cache-control", "no-store")
                .header("cdn-cache-control", bad),
        );
    }
    let edge = TestEdge::start(edge_config(&origin)).await;
    for i in 0..3 {
        assert_eq!(
            second_get(&edge, &format!("/cdn/bad{i}")).await,
            "BYPASS",
            "{i}"
        );
    }
}

#[tokio::test]
async fn targeted_cache_control_fields_are_configurable_first_found_wins() {
    let origin = Origin::start().await;
    origin.script(
        "/cdn/mine",
        Script::ok("x")
            .header("cdn-cache-control", "no-store")
            .header("acme-cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.targeted_cache_control = Some(vec![
        "Acme-Cache-Control".into(),
        "CDN-Cache-Control".into(),
    ]);
    let edge = TestEdge::start(raw).await;
    assert_eq!(second_get(&edge, "/cdn/mine").await, "HIT");
}

#[tokio::test]
async fn any_status_with_explicit_freshness_is_stored() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for status in [302, 303, 307, 400, 500, 502, 503, 504, 299, 599] {
        let path = format!("/status/{status}");
        origin.script(
            &path,
            Script::status(status, "s").header("cache-control", "max-age=60"),
        );
        edge.get(&path).await;
        edge.settle().await;
        let r = edge.get(&path).await;
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.x_cache(), "HIT", "{status}");
        assert_eq!(origin.count(&path), 1, "{status}");
    }
}

#[tokio::test]
async fn statuses_without_explicit_freshness_need_heuristic_cacheability() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    for (status, cached) in [(301, true), (405, true), (302, false), (503, false)] {
        let path = format!("/heuristic/{status}");
        origin.script(
            &path,
            Script::status(status, "s").header("last-modified", lm),
        );
        let second = second_get(&edge, &path).await;
        assert_eq!(second == "HIT", cached, "{status}: {second}");
    }
}

#[tokio::test]
async fn invalid_age_is_ignored_and_invalid_expires_is_stale() {
    let origin = Origin::start().await;
    origin.script(
        "/parse/age",
        Script::ok("x")
            .header("cache-control", "max-age=3600")
            .header("age", "7200abc"),
    );
    // A list is read as its first member (RFC 9111 §5.1): two hours old, stale on arrival.
    origin.script(
        "/parse/age-list",
        Script::ok("x")
            .header("cache-control", "max-age=3600")
            .header("age", "7200,0"),
    );
    origin.script("/parse/expires", Script::ok("x").header("expires", "0"));
    origin.script(
        "/parse/quoted",
        Script::ok("x").header("cache-control", "extension=\"max-age=3600, x\", max-age=0"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    assert_eq!(second_get(&edge, "/parse/age").await, "HIT");
    assert_ne!(second_get(&edge, "/parse/age-list").await, "HIT");
    assert_ne!(second_get(&edge, "/parse/expires").await, "HIT");
    assert_ne!(second_get(&edge, "/parse/quoted").await, "HIT");
}

#[tokio::test]
async fn cache_status_keeps_upstream_entries_and_appends_ours_last() {
    let origin = Origin::start().await;
    origin.script(
        "/cs/a",
        fresh("x")
            .header("cache-status", "shield; hit")
            .header("cache-status", "OriginCache; fwd=miss"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let miss = edge.get("/cs/a").await;
    let entries: Vec<&str> = miss.h("cache-status").split(", ").collect();
    assert_eq!(&entries[..2], ["shield; hit", "OriginCache; fwd=miss"]);
    assert_eq!(entries.len(), 3);
    assert!(entries[2].starts_with("vedge; fwd=miss"), "{entries:?}");
    edge.settle().await;
    let hit = edge.get("/cs/a").await;
    let entries: Vec<&str> = hit.h("cache-status").split(", ").collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(entries[2].starts_with("vedge; hit"), "{entries:?}");
}

/// RFC 9211 §2.1 / §3: a stale-while-revalidate answer did not go forward (the refresh runs
/// in the background): one member, a hit with a negative `ttl`, no `fwd`.
#[tokio::test]
async fn stale_while_revalidate_is_one_hit_member_with_a_negative_ttl() {
    let origin = Origin::start().await;
    origin.script(
        "/cs/swr",
        Script::ok("x").header("cache-control", "max-age=1, stale-while-revalidate=60"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    edge.get("/cs/swr").await;
    edge.settle().await;
    edge.advance(std::time::Duration::from_millis(2100)).await;
    let r = edge.get("/cs/swr").await;
    assert_eq!(r.x_cache(), "STALE");
    let cs = r.h("cache-status");
    assert_eq!(cs.matches("vedge;").count(), 1, "{cs}");
    assert!(
        cs.starts_with("vedge; hit; ttl=-") && !cs.contains("fwd="),
        "{cs}"
    );
}

/// An origin on raw sockets that answers every request with a `103 Early Hints` interim
/// response, then a cacheable 200.
async fn early_hints_origin() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 65536 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                          HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nfinal",
                    )
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn interim_1xx_responses_are_never_stored_or_reused() {
    let origin = Origin::start().await;
    let mut raw = edge_config(&origin);
    raw.origin = Some(early_hints_origin().await);
    let edge = TestEdge::start(raw).await;
    let r = edge.get("/hints").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "final");
    edge.settle().await;
    let r = edge.get("/hints").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(r.body, "final");
    assert!(r.headers.get("link").is_none());
}

/// A HEAD passed to the origin (a `Cookie`), its request and its answer.
async fn passed_head(edge: &TestEdge, origin: &Origin, path: &str) {
    let r = edge
        .send(
            edge.req(Method::HEAD, path).header("cookie", "x=1"),
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.x_cache()),
        (StatusCode::OK, "BYPASS"),
        "{path}"
    );
    let seen = origin.seen(path);
    assert_eq!(
        seen.last().map(|s| s.method.as_str()),
        Some("HEAD"),
        "{path}: the HEAD reached the origin"
    );
}

/// RFC 9111 §4.3.5 against an origin that sends no validators (`vedge origin`, most
/// packagers): a passed HEAD whose 200 carries no `ETag`/`Last-Modified` and the stored
/// response's length names no other representation, so the stored GET stays (one tiny HEAD
/// with a cookie used to purge a live segment for every viewer); one answered with another
/// `Content-Length` still makes it stale. The stored length is the body's when the GET came
/// chunked (no `Content-Length` stored).
#[tokio::test]
async fn a_passed_head_without_validators_retires_the_stored_get_only_on_another_length() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    origin.script("/hv/seg.ts", fresh("segment"));
    assert_eq!(second_get(&edge, "/hv/seg.ts").await, "HIT");
    passed_head(&edge, &origin, "/hv/seg.ts").await;
    let r = edge.get("/hv/seg.ts").await;
    println!("after a HEAD of the same length: {}", r.x_cache());
    assert_eq!(r.x_cache(), "HIT", "same length, no validators: kept");
    assert_eq!(origin.count("/hv/seg.ts"), 2, "GET fill, HEAD");

    // Stored from a chunked answer; the HEAD announces the body's length.
    origin.script("/hv/chunked.ts", fresh("chunked").chunked());
    assert_eq!(second_get(&edge, "/hv/chunked.ts").await, "HIT");
    origin.script("/hv/chunked.ts", fresh("chunked"));
    passed_head(&edge, &origin, "/hv/chunked.ts").await;
    assert_eq!(edge.get("/hv/chunked.ts").await.x_cache(), "HIT");

    // Another length: another representation, the stored one goes.
    origin.script("/hv/seg.ts", fresh("segment, longer"));
    passed_head(&edge, &origin, "/hv/seg.ts").await;
    let r = edge.get("/hv/seg.ts").await;
    assert_eq!(
        (r.x_cache(), &r.body[..]),
        ("EXPIRED", &b"segment, longer"[..]),
        "another length: stale, revalidated"
    );
    assert_eq!(origin.count("/hv/seg.ts"), 4);
}
