//! Regression tests from an adversarial review of the viewer-facing request path and the
//! origin-facing fill path: each proves one rule a hostile viewer or origin broke before.

use vedge::proxy::llhls::playlist_of;

use crate::llhls::config_for;
use crate::support::{until, Gate, Origin, Script, TestEdge};

/// A new edge that holds `/l/m.m3u8` at part 0 of segment 2 as the playlist's latest copy,
/// while the origin now answers (held behind `gate`) the next version, one part later.
/// Returns the edge, the playlist's path and that next version.
pub async fn edge_with_the_next_part_held(
    origin: &Origin,
    gate: &Gate,
) -> (TestEdge, &'static str, String) {
    let path = "/l/m.m3u8";
    let old = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PART-INF:PART-TARGET=0.25\n\
#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\ns0.ts\n#EXTINF:1.0,\ns1.ts\n\
#EXT-X-PART:DURATION=0.25,URI=\"p2_0.m4s\"\n"
        .to_string();
    let new = format!("{old}#EXT-X-PART:DURATION=0.25,URI=\"p2_1.m4s\"\n");
    origin.script(path, Script::ok(old).header("cache-control", "max-age=1"));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get(path).await.status, 200);
    latest_recorded(&edge, &format!("http|{}|{path}", origin.addr())).await;
    origin.script(
        path,
        Script::ok(new.clone())
            .header("cache-control", "max-age=1")
            .gate(gate),
    );
    (edge, path, new)
}

/// Waits until the edge holds a latest copy of the playlist keyed `key`.
async fn latest_recorded(edge: &TestEdge, key: &str) {
    until("the playlist's latest copy is recorded", || {
        playlist_of(&edge.edge, key).is_some_and(|p| p.latest().is_some())
    })
    .await;
}

/// A live playlist the origin varies by a request header: one viewer's variant, once it is the
/// playlist's latest copy, must not answer another viewer's blocking reload (LL-HLS answers
/// from the latest copy before the cache phases, which pick the variant). Before, a playlist
/// URL with a query kept in the key did exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_is_never_answered_with_another_viewers_vary_variant() {
    let origin = Origin::start().await;
    let playlist = |who: &str| {
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n\
#EXTINF:1.0,\n{who}0.ts\n#EXTINF:1.0,\n{who}1.ts\n"
        )
    };
    let scripted = |who: &str| {
        Script::ok(playlist(who))
            .header("cache-control", "max-age=10")
            .header("vary", "X-Device")
    };
    origin.script("/v/m.m3u8", scripted("tv"));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    let tv = edge.get_with("/v/m.m3u8?v=1", &[("x-device", "tv")]).await;
    assert_eq!(tv.status, 200);
    assert_eq!(tv.body, playlist("tv"));
    latest_recorded(&edge, &format!("http|{}|/v/m.m3u8?v=1", origin.addr())).await;

    origin.script("/v/m.m3u8", scripted("phone"));
    let phone = edge
        .get_with("/v/m.m3u8?v=1&_HLS_msn=1", &[("x-device", "phone")])
        .await;
    assert_eq!(phone.status, 200);
    assert_eq!(
        phone.body,
        playlist("phone"),
        "the phone viewer got the tv viewer's variant ({})",
        phone.h("cache-status")
    );
}

/// RFC 8216bis §6.2.5.2: a blocking reload is answered as soon as the playlist holds what it
/// asks for. One viewer asking for a later segment (held by the origin until that segment
/// exists) must not hold back another viewer's request for an earlier part: before, every
/// blocking request waited while any request of the playlist was upstream, so one far-ahead
/// request stalled the whole live edge (503 after three target durations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_for_a_later_segment_never_holds_back_one_for_an_earlier_part() {
    let origin = Origin::start().await;
    // The origin holds the far request (segment 3 does not exist yet) ...
    let gate = Gate::new();
    let (edge, path, new) = edge_with_the_next_part_held(&origin, &gate).await;
    let far_path = format!("{path}?_HLS_msn=3");
    let far = edge.get(&far_path);
    let near = async {
        until("the far request reached the origin", || {
            origin.count(path) == 2
        })
        .await;
        // ... while part 1 of segment 2 is out now.
        origin.script(
            path,
            Script::ok(new.clone()).header("cache-control", "max-age=1"),
        );
        let near = edge.get(&format!("{path}?_HLS_msn=2&_HLS_part=1")).await;
        gate.open();
        near
    };
    let (_, near) = tokio::join!(far, near);
    assert_eq!(near.status, 200, "{}", near.h("cache-status"));
    assert_eq!(near.body, new);
}

/// `Vary: Accept-Encoding` on playlists is what most web servers send: a varied live playlist
/// must still become the latest copy blocking reloads are answered from (and be scanned for
/// prefetch and retention). Before, a variant's key (`{base}\0accept-encoding=...`) was not
/// recognised as a playlist's, so every satisfied blocking reload went to the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_playlist_varying_on_accept_encoding_still_answers_blocking_reloads() {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n\
#EXTINF:1.0,\ns0.ts\n#EXTINF:1.0,\ns1.ts\n";
    origin.script(
        "/ae/m.m3u8",
        Script::ok(playlist)
            .header("cache-control", "max-age=10")
            .header("vary", "Accept-Encoding"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get("/ae/m.m3u8").await.status, 200);
    edge.settle().await;
    let key = format!("http|{}|/ae/m.m3u8", origin.addr());
    until("the varied playlist's latest copy is recorded", || {
        playlist_of(&edge.edge, &key).is_some_and(|p| p.latest().is_some())
    })
    .await;
    let r = edge.get("/ae/m.m3u8?_HLS_msn=1").await;
    assert_eq!(r.status, 200);
    assert!(
        r.h("cache-status").contains("llhls-latest"),
        "{}",
        r.h("cache-status")
    );
    // An uncoded copy suits viewers of any Accept-Encoding.
    let gz = edge
        .get_with("/ae/m.m3u8?_HLS_msn=1", &[("accept-encoding", "gzip")])
        .await;
    assert!(
        gz.h("cache-status").contains("llhls-latest"),
        "{}",
        gz.h("cache-status")
    );
    assert_eq!(origin.count("/ae/m.m3u8"), 1);
}

/// A slice is stored only when its body is exactly what its 206's `Content-Range` says. An
/// origin answering a slice with a chunked 206 that ends early (or runs long) is an origin
/// error: before, the short body was stored as the slice, and every later viewer of the object
/// got an aborted response until the slice expired, even after the origin was fixed.
#[tokio::test]
async fn a_chunked_slice_shorter_than_its_content_range_is_never_stored() {
    use http::Method;
    use http_body_util::BodyExt;

    const MIB: usize = 1 << 20;
    let body: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    let origin = Origin::start().await;
    let lying = Script::status(206, body[..1000].to_vec())
        .header("content-range", &format!("bytes 0-{}/{}", MIB - 1, 3 * MIB))
        .header("cache-control", "max-age=3600")
        .header("content-type", "video/mp4")
        .header("etag", "\"v1\"")
        .chunked();
    origin.script("/s/big.mp4", lying);
    let mut raw = crate::support::edge_config(&origin);
    raw.ram_size = Some("64MiB".into());
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;

    let first = edge
        .send_streaming(edge.req(Method::GET, "/s/big.mp4"), Default::default())
        .await;
    assert!(
        first.into_body().collect().await.is_err(),
        "a body the origin cut short cannot complete"
    );
    edge.settle().await;

    origin.script(
        "/s/big.mp4",
        Script::ok(body.clone())
            .header("cache-control", "max-age=3600")
            .header("content-type", "video/mp4")
            .header("etag", "\"v1\"")
            .ranged(),
    );
    let resp = edge
        .send_streaming(edge.req(Method::GET, "/s/big.mp4"), Default::default())
        .await;
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.map(|b| b.to_bytes());
    assert!(
        got.as_ref().is_ok_and(|b| b[..] == body[..]),
        "the second viewer gets the whole object once the origin is fixed ({:?} bytes)",
        got.map(|b| b.len())
    );
}

/// The variant a response is stored under must tell apart every request the origin could
/// answer differently. A viewer adding a varied header line that is not plain text (obs-text
/// bytes) had it forwarded to the origin but left out of the variant, so its answer was stored
/// as the variant of viewers who never sent that line.
#[tokio::test]
async fn a_varied_header_the_origin_saw_is_never_left_out_of_the_variant() {
    use http::{HeaderValue, Method};

    let origin = Origin::start().await;
    let varied = |body: &'static str| {
        Script::ok(body)
            .header("cache-control", "max-age=3600")
            .header("vary", "Accept-Language")
    };
    origin.script("/t/subs.vtt", varied("for everyone"));
    let edge = TestEdge::start(crate::support::edge_config(&origin)).await;
    // The edge learns that the object varies on Accept-Language.
    let de = edge
        .get_with("/t/subs.vtt", &[("accept-language", "de")])
        .await;
    assert_eq!(de.status, 200);
    edge.settle().await;

    origin.script("/t/subs.vtt", varied("for the attacker"));
    let attack = edge
        .req(Method::GET, "/t/subs.vtt")
        .header("accept-language", "en")
        .header(
            "accept-language",
            HeaderValue::from_bytes(b"\xe9\xe9").expect("obs-text is a valid value"),
        );
    let a = edge.send(attack, Default::default()).await;
    assert_eq!(&a.body[..], b"for the attacker");
    edge.settle().await;
    let seen = origin.seen("/t/subs.vtt");
    assert_eq!(
        seen.last().map(|s| s
            .headers
            .iter()
            .filter(|(k, _)| k == "accept-language")
            .count()),
        Some(2),
        "the origin saw both lines"
    );

    origin.script("/t/subs.vtt", varied("for english viewers"));
    let en = edge
        .get_with("/t/subs.vtt", &[("accept-language", "en")])
        .await;
    assert_eq!(
        &en.body[..],
        b"for english viewers",
        "an english viewer got the attacker's answer ({})",
        en.h("cache-status")
    );
}

/// A live stream whose media sequence starts over (an encoder restart) must not leave blocking
/// reloads answered from the old stream's playlist. Before, the latest copy was replaced only
/// by a copy listing more segments, and answered every request it "satisfied" stale or not:
/// after the restart every `_HLS_msn` below the old stream's got the old playlist for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_live_stream_is_not_answered_from_the_old_streams_playlist() {
    let origin = Origin::start().await;
    let playlist = |first: u64| {
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n\
#EXTINF:1.0,\ns{first}.ts\n#EXTINF:1.0,\ns{}.ts\n",
            first + 1
        )
    };
    let scripted = |first| Script::ok(playlist(first)).header("cache-control", "max-age=1");
    origin.script("/r/m.m3u8", scripted(1000));
    let edge = TestEdge::start_with_tokio_clock(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get("/r/m.m3u8").await.body, playlist(1000));
    latest_recorded(&edge, &format!("http|{}|/r/m.m3u8", origin.addr())).await;

    // The encoder restarts: the media sequence starts over.
    origin.script("/r/m.m3u8", scripted(0));
    edge.advance(std::time::Duration::from_secs(2)).await;
    let r = edge.get("/r/m.m3u8?_HLS_msn=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, playlist(0), "{}", r.h("cache-status"));

    // The new stream's copy becomes the latest one blocking reloads are answered from.
    assert_eq!(edge.get("/r/m.m3u8").await.body, playlist(0));
    edge.settle().await;
    let r = edge.get("/r/m.m3u8?_HLS_msn=0").await;
    assert_eq!(r.body, playlist(0));
    assert!(
        r.h("cache-status").contains("llhls-latest"),
        "{}",
        r.h("cache-status")
    );
}

/// A content-coded answer is chosen by the fill's `Accept-Encoding`, the leader's: when the
/// origin forgets `Vary: Accept-Encoding`, the edge must still keep it apart from what other
/// codings' viewers get. Before, one viewer accepting gzip had the gzip body stored as the only
/// variant and served to viewers that cannot decode it.
#[tokio::test]
async fn a_content_coded_answer_without_vary_is_never_served_to_viewers_of_another_coding() {
    let origin = Origin::start().await;
    origin.script(
        "/c/app.js",
        Script::ok("gzip bytes")
            .header("cache-control", "max-age=3600")
            .header("content-encoding", "gzip"),
    );
    let edge = TestEdge::start(crate::support::edge_config(&origin)).await;
    let gz = edge
        .get_with("/c/app.js", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(gz.h("content-encoding"), "gzip");
    edge.settle().await;

    origin.script(
        "/c/app.js",
        Script::ok("plain bytes").header("cache-control", "max-age=3600"),
    );
    let plain = edge.get("/c/app.js").await;
    assert_eq!(
        (plain.h("content-encoding"), &plain.body[..]),
        ("", &b"plain bytes"[..]),
        "a viewer without gzip got the gzip body ({})",
        plain.h("cache-status")
    );
}

/// RFC 9111 §4.3.4: a 304 updates only the stored response whose validator it carries. An
/// origin answering a revalidation of `"v1"` with a 304 naming `"v2"` (a changed object behind
/// a broken conditional handler) validates nothing the edge holds. Before, its headers were
/// merged: the `"v1"` body went out labelled `"v2"` and fresh for the 304's max-age; now the
/// edge asks again for the whole response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_naming_another_etag_never_relabels_the_stored_body() {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // v1 until the test moves the object on; then v2, as a 304 whenever asked conditionally.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let changed = Arc::new(AtomicBool::new(false));
    let flag = changed.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let changed = flag.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let v2 = changed.load(Ordering::SeqCst);
                    let conditional = req.headers().contains_key("if-none-match");
                    let resp = match (v2, conditional) {
                        (false, _) => http::Response::builder()
                            .header("etag", "\"v1\"")
                            .header("cache-control", "max-age=1")
                            .body(Full::new(Bytes::from_static(b"version one"))),
                        (_, true) => http::Response::builder()
                            .status(304)
                            .header("etag", "\"v2\"")
                            .header("cache-control", "max-age=3600")
                            .body(Full::new(Bytes::new())),
                        (_, false) => http::Response::builder()
                            .header("etag", "\"v2\"")
                            .header("cache-control", "max-age=3600")
                            .body(Full::new(Bytes::from_static(b"version two"))),
                    };
                    async move { Ok::<_, Infallible>(resp.expect("valid response")) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let mut raw = vedge::config::RawConfig {
        origin: Some(format!("http://{addr}")),
        ram_size: Some("64MiB".into()),
        ..Default::default()
    };
    raw.origin_client.first_byte_timeout = Some("5s".into());
    raw.server.shutdown_grace = Some("1s".into());
    let edge = TestEdge::start_with_tokio_clock(raw).await;
    let one = edge.get("/e/obj.bin").await;
    assert_eq!(
        (&one.body[..], one.h("etag")),
        (&b"version one"[..], "\"v1\"")
    );
    edge.settle().await;

    changed.store(true, Ordering::SeqCst);
    edge.advance(std::time::Duration::from_secs(2)).await;
    let r = edge.get("/e/obj.bin").await;
    assert_eq!(
        (&r.body[..], r.h("etag")),
        (&b"version two"[..], "\"v2\""),
        "{}",
        r.h("cache-status")
    );
    edge.settle().await;
    let hit = edge.get("/e/obj.bin").await;
    assert_eq!(
        (&hit.body[..], hit.h("etag")),
        (&b"version two"[..], "\"v2\"")
    );
}

/// Slices are kept under keys that carry no `Vary` variant. A sliced object the origin varies
/// (`Vary: Origin` with the matching CORS header, what S3 and most CORS setups answer) was
/// stored from the first viewer's answer and served to every other viewer: a player on another
/// site got the first site's `Access-Control-Allow-Origin` and was blocked by its browser.
/// Such an answer is now passed, never shared.
#[tokio::test]
async fn a_sliced_object_that_varies_is_never_served_to_another_variants_viewer() {
    const MIB: usize = 1 << 20;
    let body: Vec<u8> = (0..3 * MIB).map(|i| (i % 253) as u8).collect();
    let origin = Origin::start().await;
    let cors = |site: &str| {
        Script::ok(body.clone())
            .header("cache-control", "max-age=3600")
            .header("content-type", "video/mp4")
            .header("etag", "\"v1\"")
            .header("vary", "Origin")
            .header("access-control-allow-origin", site)
            .ranged()
    };
    origin.script("/cors/big.mp4", cors("https://a.example"));
    let mut raw = crate::support::edge_config(&origin);
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;

    let a = edge
        .get_with("/cors/big.mp4", &[("origin", "https://a.example")])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.h("access-control-allow-origin"), "https://a.example");
    assert_eq!(a.body.len(), 3 * MIB);
    edge.settle().await;

    origin.script("/cors/big.mp4", cors("https://b.example"));
    let b = edge
        .get_with(
            "/cors/big.mp4",
            &[("origin", "https://b.example"), ("range", "bytes=0-99")],
        )
        .await;
    assert_eq!(
        b.h("access-control-allow-origin"),
        "https://b.example",
        "{}",
        b.h("cache-status")
    );
    assert_eq!(&b.body[..], &body[..100]);
}

/// The other side of the rule above: an uncoded slice whose `Vary` names only
/// `Accept-Encoding` (added to every response by many servers) suits every viewer and stays
/// sliced and cached.
#[tokio::test]
async fn a_sliced_object_varying_only_on_accept_encoding_is_still_cached() {
    const MIB: usize = 1 << 20;
    let body: Vec<u8> = (0..3 * MIB).map(|i| (i % 241) as u8).collect();
    let origin = Origin::start().await;
    origin.script(
        "/ae/big.mp4",
        Script::ok(body.clone())
            .header("cache-control", "max-age=3600")
            .header("content-type", "video/mp4")
            .header("vary", "Accept-Encoding")
            // Only an object with a strong validator is sliced.
            .header("etag", "\"ae1\"")
            .ranged(),
    );
    let mut raw = crate::support::edge_config(&origin);
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;
    let first = edge
        .get_with("/ae/big.mp4", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(first.body.len(), 3 * MIB);
    edge.settle().await;
    let again = edge
        .get_with("/ae/big.mp4", &[("range", "bytes=5-9")])
        .await;
    assert_eq!(&again.body[..], &body[5..10]);
    assert_eq!(again.x_cache(), "HIT", "{}", again.h("cache-status"));
}

/// A hostile origin may announce any total length in a slice's `Content-Range`, up to
/// `u64::MAX`. A viewer's range in the last slice of such an object overflowed the next slice's
/// offset: the request task panicked (debug) or the walk wrapped back to byte 0 (release).
#[tokio::test]
async fn a_slice_total_near_u64_max_never_panics_the_request() {
    const SIZE: u64 = 1 << 20;
    let total = u64::MAX;
    let start = (total - 1) / SIZE * SIZE;
    let last = total - 1;
    let body: Vec<u8> = (0..(last - start + 1)).map(|i| (i % 239) as u8).collect();
    let origin = Origin::start().await;
    origin.script(
        "/huge/obj.mp4",
        Script::status(206, body.clone())
            .header("content-range", &format!("bytes {start}-{last}/{total}"))
            .header("cache-control", "max-age=3600")
            .header("content-type", "video/mp4")
            .header("etag", "\"v1\""),
    );
    let mut raw = crate::support::edge_config(&origin);
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;
    let a = start + 100;
    let r = edge
        .get_with(
            "/huge/obj.mp4",
            &[("range", &format!("bytes={a}-{}", a + 9))],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.h("content-range"), format!("bytes {a}-{}/{total}", a + 9));
    assert_eq!(&r.body[..], &body[100..110]);
}

/// RFC 8216bis §6.2.5.2: an `_HLS_part` more than the Advance Part Limit (three seconds of
/// parts) past the last part listed is answered 400 at once. Before, only `_HLS_msn` was
/// checked: `_HLS_part=99999` of the segment in progress went to the origin (or was held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_part_past_the_advance_part_limit_is_400() {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
#EXT-X-MEDIA-SEQUENCE:10\n\
#EXT-X-PART:DURATION=0.5,URI=\"p10_0.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"p10_1.m4s\"\n\
#EXT-X-PART:DURATION=0.5,URI=\"p10_2.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"p10_3.m4s\"\n\
#EXTINF:2.0,\ns10.m4s\n\
#EXT-X-PART:DURATION=0.5,URI=\"p11_0.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"p11_1.m4s\"\n";
    origin.script(
        "/apl/m.m3u8",
        Script::ok(playlist).header("cache-control", "max-age=10"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get("/apl/m.m3u8").await.status, 200);
    latest_recorded(&edge, &format!("http|{}|/apl/m.m3u8", origin.addr())).await;
    for q in ["_HLS_msn=11&_HLS_part=99999", "_HLS_msn=12&_HLS_part=5"] {
        let r = edge.get(&format!("/apl/m.m3u8?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.h("cache-status"));
    }
    assert_eq!(origin.count("/apl/m.m3u8"), 1, "nothing went upstream");
    // Within the limit: sent upstream and answered once the origin's playlist lists the part
    // (an answer that does not is asked again, never served: `llhls::unsatisfied`).
    let newer = format!(
        "{playlist}#EXT-X-PART:DURATION=0.5,URI=\"p11_2.m4s\"\n\
#EXT-X-PART:DURATION=0.5,URI=\"p11_3.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"p11_4.m4s\"\n"
    );
    origin.script(
        "/apl/m.m3u8",
        Script::ok(newer).header("cache-control", "max-age=10"),
    );
    let ok = edge.get("/apl/m.m3u8?_HLS_msn=11&_HLS_part=4").await;
    assert_eq!(ok.status, 200, "{}", ok.h("cache-status"));
    assert_eq!(origin.count("/apl/m.m3u8"), 2);
}

/// Hit-for-pass learnt from one variant's answer is that variant's. An origin that will not
/// let one odd value of a varied header be shared (a `Set-Cookie` for an unknown device, say)
/// made the edge remember the whole URL as uncacheable: every viewer of every variant, cached
/// ones included, went past the cache to the origin for `hit_for_pass_ttl`.
#[tokio::test]
async fn one_variants_uncacheable_answer_never_sends_other_variants_past_the_cache() {
    let origin = Origin::start().await;
    let by_device = || {
        Script::ok("media")
            .header("cache-control", "max-age=3600")
            .header("vary", "X-Device")
    };
    origin.script("/hfp/seg.ts", by_device());
    let edge = TestEdge::start(crate::support::edge_config(&origin)).await;
    let tv = || edge.get_with("/hfp/seg.ts", &[("x-device", "tv")]);
    assert_eq!(tv().await.status, 200);
    edge.settle().await;
    assert_eq!(tv().await.x_cache(), "HIT");

    // One viewer's odd device gets an answer the origin marks per viewer.
    origin.script("/hfp/seg.ts", by_device().header("set-cookie", "d=odd"));
    let odd = edge.get_with("/hfp/seg.ts", &[("x-device", "odd")]).await;
    assert_eq!(odd.status, 200);
    edge.settle().await;
    origin.script("/hfp/seg.ts", by_device());

    let after = tv().await;
    assert_eq!(after.x_cache(), "HIT", "{}", after.h("cache-status"));
    let phone = || edge.get_with("/hfp/seg.ts", &[("x-device", "phone")]);
    assert_eq!(phone().await.status, 200);
    edge.settle().await;
    let again = phone().await;
    assert_eq!(again.x_cache(), "HIT", "{}", again.h("cache-status"));
    // The odd variant itself still passes.
    let odd = edge.get_with("/hfp/seg.ts", &[("x-device", "odd")]).await;
    assert_eq!(odd.x_cache(), "BYPASS", "{}", odd.h("cache-status"));
}
