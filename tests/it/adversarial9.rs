//! Regression tests from the ninth adversarial review: what one viewer's request names must not
//! decide what the edge keeps, evicts or forgets for every other viewer (a playlist variable
//! from the query, a second spelling of a forwarded token), and a token must not reach a host
//! a player reads in a URL list the edge split otherwise. Each fails on the code before its fix.

use crate::llhls::config_for;
use crate::support::edge::small_store;
use crate::support::{Origin, Script, TestEdge};

/// Copy `n` of a live playlist whose segment URIs take their directory from the request's
/// query (`EXT-X-DEFINE:QUERYPARAM`, RFC 8216bis §4.4.2.3), one segment per copy.
fn steered_copy(n: u64) -> String {
    format!(
        "#EXTM3U\n#EXT-X-VERSION:11\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-DEFINE:QUERYPARAM=\"p\"\n\
#EXT-X-MEDIA-SEQUENCE:{n}\n#EXTINF:2.0,\n{{$p}}{n}.m4s\n#EXTINF:2.0,\n{{$p}}{}.m4s\n",
        n + 1
    )
}

/// Bug: a live playlist's `QUERYPARAM` value is the requesting viewer's, and the URIs it
/// resolved joined the playlist's live window, which the edge evicts from RAM once a copy no
/// longer lists them (and keeps off disk, and clears kept 404s of). A viewer asking for
/// `media.m3u8?p=vod/x` made another viewer's VOD object `vod/x10.m4s` a member; the next copy
/// listed it no more, and the edge evicted it: its viewers went back to the origin. Now the
/// window is read from the origin's text alone (a URI resolved with a viewer's value is not a
/// member); prefetch still asks as that viewer would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_query_parameter_cannot_evict_another_object() {
    let origin = Origin::start().await;
    let (vod, refused) = ("/qp/vod/x10.m4s", "/qp/vod/x11.m4s");
    let day = ("cache-control", "max-age=86400");
    origin.script(vod, Script::ok("vod bytes").header(day.0, day.1));
    origin.script(refused, Script::status(404, "gone").header(day.0, day.1));
    let path = "/qp/media.m3u8";
    let cc = ("cache-control", "max-age=30");
    origin.script(path, Script::ok(steered_copy(10)).header(cc.0, cc.1));
    let mut raw = config_for(&origin.url(), "off");
    raw.routes[0].live_retention_margin = Some("0s".into());
    let edge = TestEdge::start(raw).await;

    // Viewers of the VOD asset: one object cached, one refusal kept for its day.
    assert_eq!(edge.get(vod).await.status, 200);
    assert_eq!(edge.get(refused).await.status, 404);
    edge.settle().await;

    // The hostile viewer names them through the playlist's variable, then reloads once the
    // origin moved on, so that its copy lists `x10` no more.
    let r = edge.get(&format!("{path}?p=vod/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        &r.body[..],
        steered_copy(10).as_bytes(),
        "the origin's bytes"
    );
    edge.settle().await;
    origin.script(path, Script::ok(steered_copy(11)).header(cc.0, cc.1));
    let r = edge.get(&format!("{path}?p=vod/x&_HLS_msn=12")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], steered_copy(11).as_bytes());
    edge.settle().await;

    let again = edge.get(vod).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.h("x-cache"), "HIT", "{}", again.h("cache-status"));
    assert_eq!(origin.count(vod), 1, "the VOD object was fetched again");
    let again = edge.get(refused).await;
    assert_eq!(again.status, 404);
    assert_eq!(origin.count(refused), 1, "the kept 404 was dropped");
}

/// Bug: on a `[route.token] forward = true` route a shared fill asked the origin with the
/// leader's query as sent. The edge verifies the first `hdnts=` pair, the key drops every
/// spelling of the name (`h%64nts` is `hdnts` to it), and an origin reading the first decoded
/// `hdnts` (Go's `Query().Get`, Java's `getParameter`) saw the other one: a viewer with a valid
/// token sending `?h%64nts=EXPIRED&hdnts=<valid>` had the origin refuse a fill every viewer of
/// the segment shares (a 410 kept for `negative_ttl`, a `no-store` 403 teaching hit-for-pass).
/// The same for a bogus token in a source the edge tries later (a cookie beside a query token),
/// and for the leader's other dropped parameters (`utm_*`, `CMCD`). Now the origin is sent the
/// token the edge verified, once, where it came from, and the query the key keeps.
#[tokio::test]
async fn a_forwarded_token_is_the_one_the_edge_verified() {
    use crate::support::token::{raw_token, token_edge, token_for};
    use vedge::config::RawToken;

    let origin = Origin::start().await;
    let day = ("cache-control", "max-age=86400");
    for p in ["/v/q.ts", "/v/c.ts", "/v/h.ts"] {
        origin.script(p, Script::ok("segment").header(day.0, day.1));
    }
    let edge = token_edge(
        &origin,
        RawToken {
            forward: Some(true),
            sources: Some(vec!["query".into(), "cookie".into(), "header".into()]),
            header: Some("x-edge-token".into()),
            ..raw_token()
        },
    )
    .await;
    let valid = token_for("/v/*", Some("viewer"));

    // Beside the valid query token: another spelling, a second pair, a cookie, a header, and
    // parameters the key drops.
    let q = format!("/v/q.ts?h%64nts=EXPIRED&hdnts={valid}&HDNTS=x&utm_source=ad&CMCD=bl%3D1");
    let r = edge
        .get_with(
            &q,
            &[("cookie", "hdnts=EXPIRED"), ("x-edge-token", "EXPIRED")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.h("cache-status"));
    let seen = origin.seen("/v/q.ts");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, format!("/v/q.ts?hdnts={valid}"));
    assert!(
        seen[0].header("cookie").is_none(),
        "{:?}",
        seen[0].header("cookie")
    );
    assert!(seen[0].header("x-edge-token").is_none());

    // A cookie token that verified goes back alone, among the viewer's other cookies.
    let cookie = format!("a=1; hdnts={valid}; hdnts=EXPIRED");
    let r = edge
        .get_with(
            "/v/c.ts?H%44NTS=EXPIRED",
            &[("cookie", &cookie), ("x-edge-token", "x")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.h("cache-status"));
    let seen = origin.seen("/v/c.ts");
    assert_eq!(seen[0].target, "/v/c.ts");
    let cookies: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, [format!("a=1; hdnts={valid}")]);
    assert!(seen[0].header("x-edge-token").is_none());

    // A header token likewise (a fill sends it only if `forward_headers` lists it).
    let r = edge
        .get_with(
            "/v/h.ts",
            &[("x-edge-token", &valid), ("x-edge-token", "EXPIRED")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.h("cache-status"));
    let seen = origin.seen("/v/h.ts");
    let sent: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "x-edge-token")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(sent.iter().all(|v| *v == valid), "{sent:?}");
}

/// Bug: a `UTCTiming@value` is a list of URLs; the token rewrite split it at XML's spaces only,
/// and dash.js splits it at JavaScript's `\s` (U+00A0, U+2028 and other Unicode spaces too). A
/// packager's `value="/t&#160;https://other.example/t"` was one same-host URL to the edge, which
/// gave it the viewer's token at its end: to dash.js, the second URL, on another host, so the
/// player sent that host the token. Now a URL holding any space a player may split at is not
/// certainly this host and gets no token.
#[tokio::test]
async fn a_clock_url_list_split_at_a_unicode_space_gives_no_other_host_the_token() {
    use crate::support::token::{raw_token, token_edge, token_for};

    let origin = Origin::start().await;
    let mpd = "<?xml version=\"1.0\"?><MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\">\
<UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"/v/t&#160;https://other.example/t\"/>\
<UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"/v/r\u{2028}https://other.example/r\"/>\
<Period><AdaptationSet mimeType=\"video/mp4\"><SegmentTemplate media=\"s$Number$.m4s\" duration=\"2\" \
timescale=\"1\"/><Representation id=\"v\" bandwidth=\"1\"/></AdaptationSet></Period></MPD>";
    origin.script(
        "/v/x.mpd",
        Script::ok(mpd).header("content-type", "application/dash+xml"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/*", None);
    let r = edge.get(&format!("/v/x.mpd?hdnts={t}")).await;
    assert_eq!(r.status.as_u16(), 200);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("s$Number$.m4s?hdnts="),
        "the rewrite ran: {body}"
    );
    for host in ["https://other.example/t", "https://other.example/r"] {
        let after = body.split(host).nth(1).unwrap_or_default();
        assert!(!after.starts_with('?'), "{host} got the token: {body}");
    }
}

/// Bug: a revalidation led by a viewer with `Authorization` merged the origin's 304 into the
/// shared copy, where a 200 to the same request is that viewer's alone (RFC 9111 §3.5): a 304
/// carrying a per-user field and a longer `max-age` (no `public`) made every other viewer's HIT
/// carry them, and one saying `private` purged the shared copy, whose stale-if-error then
/// answered no one when the origin went down. Now such a 304 updates nothing: the leader's
/// request is asked again without validators and answered to that viewer alone.
#[tokio::test]
async fn a_credentialed_revalidation_does_not_rewrite_or_purge_the_shared_copy() {
    use crate::support::edge_config;
    use std::time::Duration;

    let origin = Origin::start().await;
    let (fields, gone) = ("/o/fields.bin", "/o/gone.bin");
    let shared = |cc: &str| {
        Script::ok("shared body")
            .header("cache-control", cc)
            .header("etag", "\"v1\"")
    };
    origin.script(fields, shared("max-age=1"));
    origin.script(gone, shared("max-age=1, stale-if-error=600"));
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    for p in [fields, gone] {
        assert_eq!(edge.get(p).await.status, 200);
    }
    edge.settle().await;
    edge.advance(Duration::from_millis(1100)).await;

    // The origin's answers to Alice's credentials (a 304 to her revalidation).
    let alice = [("authorization", "Bearer alice")];
    origin.script(fields, shared("max-age=600").header("x-user", "alice"));
    origin.script(gone, shared("private"));
    for p in [fields, gone] {
        let r = edge.get_with(p, &alice).await;
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(&r.body[..], b"shared body");
    }
    assert_eq!(edge.get_with(fields, &alice).await.h("x-user"), "alice");
    edge.settle().await;

    // Anonymous viewers: the origin answers them without Alice's field.
    origin.script(fields, shared("max-age=600"));
    let bob = edge.get(fields).await;
    assert_eq!(bob.status, 200);
    assert_eq!(bob.h("x-user"), "", "Alice's field reached another viewer");
    // The other copy still stands in for an origin that went down.
    origin.stop_and_wait().await;
    let bob = edge.get(gone).await;
    assert_eq!(bob.status, 200, "{}", bob.h("cache-status"));
    assert_eq!(&bob.body[..], b"shared body");
}

/// Bug: a pass learnt from an answer without `Vary` was the whole object's, also when the
/// object is known to vary: one viewer sending an odd value of a varied header (`X-Lang:
/// evil`) got the origin's error page, `no-store` and without the `Vary` its 200s carry (as
/// error pages mostly come), and every viewer of every variant, cached ones included, went
/// past the cache for `hit_for_pass_ttl`. Now that pass is the odd variant's alone.
#[tokio::test]
async fn an_odd_variant_error_without_vary_sends_no_other_variant_past_the_cache() {
    use crate::support::edge_config;

    let origin = Origin::start().await;
    let p = "/l/page.ts";
    let ok = || {
        Script::ok("english")
            .header("cache-control", "max-age=600")
            .header("vary", "x-lang")
    };
    origin.script(p, ok());
    let edge = TestEdge::start(edge_config(&origin)).await;
    let en = [("x-lang", "en")];
    assert_eq!(edge.get_with(p, &en).await.status, 200);
    edge.settle().await;
    assert_eq!(edge.get_with(p, &en).await.x_cache(), "HIT");

    origin.script(
        p,
        Script::status(400, "no such language").header("cache-control", "no-store"),
    );
    let odd = edge.get_with(p, &[("x-lang", "evil")]).await;
    assert_eq!(odd.status, 400);
    edge.settle().await;

    origin.script(p, ok());
    let before = origin.count(p);
    let r = edge.get_with(p, &en).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "HIT", "{}", r.h("cache-status"));
    assert_eq!(
        origin.count(p),
        before,
        "the cached variant went to the origin"
    );
}

/// An edge with `small_store` whose object at `path` is on disk only (RAM let it go), and a
/// viewer's request for it whose store read is held; returns the edge, the key and that
/// request.
async fn held_disk_read(
    origin: &Origin,
    dir: &std::path::Path,
    path: &'static str,
) -> (
    std::sync::Arc<TestEdge>,
    String,
    tokio::task::JoinHandle<crate::support::edge::Resp>,
) {
    let mut raw = crate::support::edge_config(origin);
    raw.store = small_store(dir);
    let edge = std::sync::Arc::new(TestEdge::start(raw).await);
    assert_eq!(edge.get(path).await.status, 200);
    let key = format!("http|{}|{path}", origin.addr());
    let store = edge.edge.store.clone().expect("store");
    store.flush().await;
    assert!(store.contains(key.as_bytes()), "on disk");
    assert!(edge.edge.ram.remove(&key), "in RAM");
    store.hold_reads(true);
    let e = edge.clone();
    let viewer = tokio::spawn(async move { e.get(path).await });
    tokio::time::timeout(std::time::Duration::from_secs(5), store.reads_held(1))
        .await
        .expect("the viewer's store read is held");
    (edge, key, viewer)
}

/// Bug: a store read that began before a hard purge put what it read into RAM after the purge
/// had cleared RAM (the purge clears RAM, then the store): every viewer after the purge
/// returned got the purged bytes as a fresh HIT for their TTL (9 of 30 rounds of a hot object
/// purged under load, without any hook). Now a read a purge selected meanwhile is a miss, and
/// nothing it read reaches RAM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_read_racing_a_purge_does_not_bring_the_object_back() {
    use vedge::cache::lock::PurgeSelector;

    let origin = Origin::start().await;
    let path = "/v/purged.m4s";
    let hour = ("cache-control", "max-age=3600");
    origin.script(path, Script::ok(vec![b'1'; 10_000]).header(hour.0, hour.1));
    let dir = tempfile::tempdir().expect("tempdir");
    let (edge, key, viewer) = held_disk_read(&origin, dir.path(), path).await;
    origin.script(path, Script::ok(vec![b'2'; 10_000]).header(hour.0, hour.1));
    let store = edge.edge.store.clone().expect("store");
    edge.edge
        .purge(&[PurgeSelector::Key(key.clone())], false)
        .await
        .expect("purge");
    store.hold_reads(false);
    let during = viewer.await.expect("viewer");
    assert_eq!(during.status, 200);
    let after = edge.get(path).await;
    assert_eq!(
        after.body[0],
        b'2',
        "{}: the purged bytes",
        after.h("cache-status")
    );
}

/// Bug: the same race against an operator's push: a store read of the older pulled copy, in
/// flight while the push was stored (the push lands in RAM), put that copy in RAM over the
/// push, breaking "a push is not undone by a fill". Now a copy replaced while it was read is
/// served to the request that read it and not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_read_racing_a_push_does_not_shadow_it() {
    use vedge::ingest::engine::{PushObject, Sink};

    let origin = Origin::start().await;
    let path = "/v/pushed.m4s";
    origin.script(
        path,
        Script::ok(vec![b'1'; 10_000]).header("cache-control", "max-age=3600"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (edge, key, viewer) = held_disk_read(&origin, dir.path(), path).await;
    let sink = vedge::ingest::admin::EdgeSink::new(edge.edge.clone(), Default::default());
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("video/mp4"));
    sink.put(PushObject {
        key,
        kind: vedge_manifest::ObjectKind::Segment,
        body: bytes::Bytes::from(vec![b'P'; 10_000]),
        headers,
    })
    .await
    .expect("push stored");
    edge.edge.store.as_ref().expect("store").hold_reads(false);
    assert_eq!(viewer.await.expect("viewer").status, 200);
    let after = edge.get(path).await;
    assert_eq!(
        after.body[0],
        b'P',
        "{}: the pulled copy over the push",
        after.h("cache-status")
    );
}

/// One HTTP/1.1 GET of `path` from source address `from` to `edge`; the response head.
async fn get_from(from: &str, edge: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{from}:0").parse().expect("source"))
        .expect("bind the source address");
    let mut c = s.connect(edge).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let read = c.read_to_end(&mut out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), read).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Bug: on a dual-stack listener (`[::]`, how one edge serves IPv4 and IPv6 viewers) an IPv4
/// viewer arrives as `::ffff:a.b.c.d`, and the fill-slot and prefetch shares cut that to its
/// IPv6 /64, `::`: every IPv4 viewer was one client. One client leading its quarter of a
/// route's fills made every other IPv4 viewer's miss wait and end in 503 `origin-busy` with
/// three quarters of the slots free. Now `limits::client_of` reads an IPv4-mapped address as
/// the IPv4 address it is, as the connection limits did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_viewers_of_a_dual_stack_listener_are_clients_of_their_own() {
    use crate::support::{edge_config, until, Gate};

    let origin = Origin::start().await;
    let gate = Gate::new();
    let held = "/v/held.ts";
    origin.script(
        held,
        Script::ok("held")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    origin.script(
        "/v/next.ts",
        Script::ok("next").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    // Four fill slots: a client may lead one of them.
    raw.limits.allow = Some(Vec::new());
    raw.origin_client.max_fills = Some(4);
    raw.cache.collapse_timeout = Some("1s".into());
    let edge = vedge::Edge::new(vedge::Config::try_from(raw).expect("config"))
        .await
        .expect("edge");
    let viewer = match tokio::net::TcpListener::bind("[::]:0").await {
        Ok(l) => l,
        Err(e) => return eprintln!("no IPv6 here ({e}): nothing to check"),
    };
    let port = viewer.local_addr().expect("addr").port();
    tokio::spawn(vedge::serve(
        edge.clone(),
        vedge::Listeners {
            viewer,
            admin: None,
        },
        std::future::pending::<()>(),
    ));
    let at: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // One client leads a fill the origin holds: its whole share.
    let hostile = tokio::spawn(async move { get_from("127.0.0.1", at, held).await });
    until("the held fill reached the origin", || {
        origin.count(held) == 1
    })
    .await;
    // Another client, another cold object of the route.
    let other = get_from("127.0.0.2", at, "/v/next.ts").await;
    gate.open();
    let _ = hostile.await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    assert_eq!(origin.count("/v/next.ts"), 1);
}

/// Bug: every key a successful POST names (`/api/p?n=<any>`) got a store mark for its
/// variants, which the store cannot tell it holds; past the marks' bound (61,440) they fold
/// into one that forgets every variant and slice on disk, for every viewer (61,600 POSTs took
/// 6 s; again every 6 s). Now a key not known to have variants gets a mark only while the
/// marks are under half their bound: the others' variants on disk stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_of_strangers_keys_do_not_forget_every_variant_on_disk() {
    let origin = Origin::start().await;
    let path = "/v/varied.ts";
    origin.script(
        path,
        Script::ok("tv bytes")
            .header("cache-control", "max-age=3600")
            .header("vary", "x-device"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = crate::support::edge_config(&origin);
    raw.store = small_store(dir.path());
    let edge = TestEdge::start(raw).await;
    let tv = [("x-device", "tv")];
    for _ in 0..2 {
        assert_eq!(edge.get_with(path, &tv).await.status, 200);
    }
    let store = edge.edge.store.clone().expect("store");
    store.flush().await;
    edge.edge.ram.remove_where(|_, _| true);
    let fetched = origin.count(path);
    // What 61,441 successful POSTs to new URLs invalidate.
    let host = origin.addr();
    for n in 0..61_441 {
        edge.edge.purge_key(&format!("http|{host}|/api/p?n={n}"));
    }
    let r = edge.get_with(path, &tv).await;
    assert_eq!(&r.body[..], b"tv bytes");
    assert_eq!(r.x_cache(), "HIT", "{}", r.h("cache-status"));
    assert_eq!(
        origin.count(path),
        fetched,
        "the variant on disk was forgotten"
    );
}

/// Bug: the token rewrite read an HLS attribute list otherwise than hls.js: after
/// `URI="https://evil.example/k"x,` it saw a second, relative `URI="key.bin"` and gave it the
/// viewer's token, where hls.js reads one value running to the last quote on the line, on
/// evil.example, and fetched it there with the token. And `1080p:seg1.ts`, relative to the
/// edge, is absolute to hls.js's url-toolkit (the page's host got the token). Such URIs now get
/// no token; the player's request for them is refused, not the token leaked.
#[tokio::test]
async fn playlist_uris_a_player_reads_as_another_host_get_no_token() {
    use crate::support::token::{raw_token, token_edge, token_for};

    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-MAP:URI=\"https://evil.example/p\"z,URI=\"init.mp4\"\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"https://evil.example/k\"x,URI=\"key.bin\"\n\
#EXTINF:4,\n1080p:seg1.ts\n#EXTINF:4,\nseg2.ts\n#EXT-X-ENDLIST\n";
    origin.script(
        "/v/media.m3u8",
        Script::ok(playlist).header("content-type", "application/vnd.apple.mpegurl"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/*", None);
    let r = edge.get(&format!("/v/media.m3u8?hdnts={t}")).await;
    assert_eq!(r.status.as_u16(), 200);
    let body = String::from_utf8_lossy(&r.body);
    for line in body.lines() {
        let leaks = line.contains("evil.example") || line.starts_with("1080p:");
        assert!(!(leaks && line.contains("hdnts=")), "{line}");
    }
    assert!(body.contains(&format!("seg2.ts?hdnts={t}")), "{body}");
}

/// Bug: the MPD token rewrite read markup otherwise than dash.js's parser, which a hostile
/// origin used to hide a `BaseURL` on another host and have relative segment URLs under it
/// carry the viewer's token there: `<BaseURL=>` (a BaseURL to dash.js, another element here),
/// `<?x ><BaseURL>...` (dash.js ends the processing instruction at its first `>`). And an MPD
/// served as `application/vnd.apple.mpegurl` was rewritten line by line as a playlist, the
/// token put at the end of lines dash.js reads as other-host URLs. Such documents now go as
/// the origin wrote them, without the token.
#[tokio::test]
async fn an_mpd_read_otherwise_by_players_gets_no_token() {
    use crate::support::token::{raw_token, token_edge, token_for};

    let origin = Origin::start().await;
    let template = "<Period><AdaptationSet mimeType=\"video/mp4\"><SegmentTemplate \
initialization=\"init.mp4\" media=\"$Number$.m4s\" duration=\"2\" timescale=\"1\"/>\
<Representation id=\"v\" bandwidth=\"1\"/></AdaptationSet></Period></MPD>";
    let head =
        "<?xml version=\"1.0\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\">";
    let documents = [
        (
            "/v/eq.mpd",
            format!("{head}<BaseURL=>https://evil.example/v/</BaseURL>{template}"),
            "application/dash+xml",
        ),
        (
            "/v/pi.mpd",
            format!("{head}<?x ><BaseURL>https://evil.example/v/</BaseURL><?y ?>{template}"),
            "application/dash+xml",
        ),
        (
            "/v/as-hls.mpd",
            format!(
                "{head}<Period><AdaptationSet><SegmentTemplate initialization=\"https://evil.example/init.mp4\n\" \
media=\"https://evil.example/$Number$.m4s\n\"/></AdaptationSet></Period></MPD>"
            ),
            "application/vnd.apple.mpegurl",
        ),
    ];
    for (path, body, ct) in &documents {
        origin.script(path, Script::ok(body.clone()).header("content-type", ct));
    }
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/*", None);
    for (path, body, _) in &documents {
        let r = edge.get(&format!("{path}?hdnts={t}")).await;
        assert_eq!(r.status.as_u16(), 200, "{path}");
        let got = String::from_utf8_lossy(&r.body);
        assert!(!got.contains("hdnts="), "{path}: the token went in:\n{got}");
        assert_eq!(got, *body, "{path}: as the origin wrote it");
    }
}

/// Bug: a CMCD `nor` prefetch the edge did not keep (the origin refused it, or it was past
/// `cache.prefetch_max_size`) left nothing behind, so a viewer naming the same URL on every
/// cheap HIT made one origin request each time (a chunked VOD file: up to 32 MiB pulled and
/// dropped each time). Now a refused prefetch is not asked for again for a while
/// (`negative_ttl`; past the size cap, `hit_for_pass_ttl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_prefetch_is_not_repeated_for_every_hint() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg1.m4s",
        Script::ok("seg1").header("cache-control", "max-age=60"),
    );
    origin.script("/v/missing.m4s", Script::status(404, "no such segment"));
    let edge = TestEdge::start(crate::support::edge_config(&origin)).await;
    for i in 0..5 {
        let hint = format!("nor=\"missing.m4s\",sid=\"s{i}\"");
        let r = edge
            .get_with("/v/seg1.m4s", &[("cmcd-request", hint.as_str())])
            .await;
        assert_eq!(r.status, 200);
        edge.settle().await;
    }
    assert_eq!(origin.count("/v/seg1.m4s"), 1);
    assert_eq!(origin.count("/v/missing.m4s"), 1, "one prefetch per hint");
}
