//! Signed URLs (`[route.token]`, Akamai EdgeAuth 2.0): every request on a token route is checked
//! before the cache, so a HIT never bypasses the check; refusals are 403s naming the reason and
//! counted by reason; the token never reaches the cache key or the origin (unless `forward`);
//! a tokenised master playlist or MPD comes back with the token on every same-host child URI.

use std::sync::atomic::Ordering::Relaxed;

use http::Method;
use vedge::auth::edgeauth::{generate, TokenSpec};
use vedge::auth::Refusal;
use vedge::config::{RawRoute, RawToken, TokenAlgorithm};

use crate::support::token::{hex, now, raw_token, token_edge as edge_with, token_with, KEY};
use crate::support::{edge_config, Origin, Script, TestEdge};

/// A token for `acl`, valid from a minute ago for an hour.
fn token(acl: &str) -> String {
    crate::support::token::token_for(acl, None)
}

const OLD_KEY: &str = "00112233445566778899aabbccddeeff";

fn refused(edge: &TestEdge, why: Refusal) -> u64 {
    edge.edge.metrics.token_refused[why.index()].load(Relaxed)
}

#[tokio::test]
async fn valid_tokens_are_served_and_every_bad_one_is_refused_even_on_a_hit() {
    let origin = Origin::start().await;
    origin.script(
        "/v/a.ts",
        Script::ok("segment bytes").header("cache-control", "max-age=600"),
    );
    let edge = edge_with(&origin, raw_token()).await;

    let good = token("/v/*");
    let r = edge.get(&format!("/v/a.ts?hdnts={good}")).await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (200, &b"segment bytes"[..])
    );
    edge.settle().await;
    let r = edge.get(&format!("/v/a.ts?hdnts={}", token("/v/*"))).await;
    assert_eq!(r.x_cache(), "HIT");

    let spec = |start: u64, exp: u64, acl: &'static str, ip: Option<&'static str>| TokenSpec {
        start: Some(start),
        exp,
        acl: vec![acl],
        ip,
        ..TokenSpec::default()
    };
    let n = now();
    // The same token with the last HMAC digit changed.
    let mut forged = good.clone();
    let last = forged.pop().expect("non-empty");
    forged.push(if last == '0' { '1' } else { '0' });
    let cases: Vec<(String, Refusal)> = vec![
        (
            format!(
                "?hdnts={}",
                token_with(&spec(n - 7200, n - 3600, "/v/*", None))
            ),
            Refusal::Expired,
        ),
        (
            format!(
                "?hdnts={}",
                token_with(&spec(n + 3600, n + 7200, "/v/*", None))
            ),
            Refusal::NotYetValid,
        ),
        (
            format!(
                "?hdnts={}",
                token_with(&spec(n - 60, n + 60, "/other/*", None))
            ),
            Refusal::Acl,
        ),
        (
            format!(
                "?hdnts={}",
                token_with(&spec(n - 60, n + 60, "/v/*", Some("10.9.8.7")))
            ),
            Refusal::Ip,
        ),
        (format!("?hdnts={forged}"), Refusal::Hmac),
        (String::new(), Refusal::Missing),
        ("?hdnts=exp=soon~hmac=00".into(), Refusal::Malformed),
    ];
    for (query, why) in &cases {
        let path = format!("/v/a.ts{query}");
        let r = edge.get(&path).await;
        assert_eq!(r.status.as_u16(), 403, "{why:?}");
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(body.contains(why.as_str()), "{why:?}: {body}");
        assert!(!body.contains(KEY), "no secret in the body");
        // HEAD and Range are refused alike.
        let head = edge
            .send(edge.req(Method::HEAD, &path), Default::default())
            .await;
        assert_eq!(head.status.as_u16(), 403, "HEAD {why:?}");
        let range = edge.get_with(&path, &[("range", "bytes=0-3")]).await;
        assert_eq!(range.status.as_u16(), 403, "Range {why:?}");
        assert_eq!(refused(&edge, *why), 3, "{why:?} counted");
    }
    // An IP token for this viewer (loopback) passes.
    let mine = token_with(&spec(n - 60, n + 60, "/v/*", Some("127.0.0.1")));
    let r = edge.get(&format!("/v/a.ts?hdnts={mine}")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(
        origin.count("/v/a.ts"),
        1,
        "refusals never reach the origin"
    );

    // Routes without [route.token] behave as before.
    origin.script(
        "/open.ts",
        Script::ok("open").header("cache-control", "max-age=60"),
    );
    assert_eq!(edge.get("/open.ts").await.status.as_u16(), 200);
}

#[tokio::test]
async fn metrics_name_each_refusal_reason() {
    let origin = Origin::start().await;
    let edge = edge_with(&origin, raw_token()).await;
    assert_eq!(edge.get("/v/x.ts").await.status.as_u16(), 403);
    let mut out = String::new();
    edge.edge.metrics.render(&mut out);
    assert!(
        out.contains("vedge_token_refused_total{reason=\"missing\"} 1"),
        "{out}"
    );
    assert!(
        out.contains("vedge_token_refused_total{reason=\"expired\"} 0"),
        "{out}"
    );
}

#[tokio::test]
async fn the_previous_key_is_accepted_during_rotation() {
    let origin = Origin::start().await;
    origin.script(
        "/v/r.ts",
        Script::ok("r").header("cache-control", "max-age=60"),
    );
    let edge = edge_with(
        &origin,
        RawToken {
            previous_key: Some(OLD_KEY.into()),
            ..raw_token()
        },
    )
    .await;
    let spec = TokenSpec {
        exp: now() + 60,
        acl: vec!["/v/*"],
        ..TokenSpec::default()
    };
    let old = generate(&spec, &hex(OLD_KEY), TokenAlgorithm::Sha256);
    let other = generate(&spec, &hex("deadbeef"), TokenAlgorithm::Sha256);
    assert_eq!(
        edge.get(&format!("/v/r.ts?hdnts={old}"))
            .await
            .status
            .as_u16(),
        200
    );
    assert_eq!(
        edge.get(&format!("/v/r.ts?hdnts={}", token("/v/*")))
            .await
            .status
            .as_u16(),
        200
    );
    assert_eq!(
        edge.get(&format!("/v/r.ts?hdnts={other}"))
            .await
            .status
            .as_u16(),
        403
    );
}

#[tokio::test]
async fn tokens_are_read_from_cookies_and_headers_and_stay_away_from_the_origin() {
    let origin = Origin::start().await;
    origin.script(
        "/v/c.ts",
        Script::ok("c").header("cache-control", "max-age=60"),
    );
    let edge = edge_with(
        &origin,
        RawToken {
            sources: Some(vec!["cookie".into(), "header".into()]),
            header: Some("x-edge-token".into()),
            ..raw_token()
        },
    )
    .await;
    let t = token("/v/*");
    let cookie = format!("other=1; hdnts={t}");
    let r = edge.get_with("/v/c.ts", &[("cookie", &cookie)]).await;
    assert_eq!(r.status.as_u16(), 200);
    let r = edge.get_with("/v/c.ts", &[("x-edge-token", &t)]).await;
    assert_eq!(r.status.as_u16(), 200);
    // The query is not a source on this route.
    let r = edge.get(&format!("/v/c.ts?hdnts={t}")).await;
    assert_eq!(r.status.as_u16(), 403);
    assert!(String::from_utf8_lossy(&r.body).contains("missing"));
    for seen in origin.seen("/v/c.ts") {
        assert!(!seen.target.contains("hdnts"), "{}", seen.target);
        assert!(seen.header("x-edge-token").is_none());
        assert!(!seen.header("cookie").unwrap_or("").contains("hdnts"));
    }
}

#[tokio::test]
async fn the_token_reaches_the_origin_only_with_forward() {
    for forward in [false, true] {
        let origin = Origin::start().await;
        origin.script(
            "/v/f.ts",
            Script::ok("f").header("cache-control", "max-age=60"),
        );
        let edge = edge_with(
            &origin,
            RawToken {
                forward: Some(forward),
                ..raw_token()
            },
        )
        .await;
        let t = token("/v/*");
        let r = edge.get(&format!("/v/f.ts?x=1&hdnts={t}")).await;
        assert_eq!(r.status.as_u16(), 200);
        edge.settle().await;
        // Another viewer's token: the same cache key.
        let r = edge
            .get(&format!("/v/f.ts?hdnts={}&x=1", token("/v/f.ts")))
            .await;
        assert_eq!(r.x_cache(), "HIT", "the token is not part of the key");
        let seen = origin.seen("/v/f.ts");
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].target.contains("hdnts="),
            forward,
            "{}",
            seen[0].target
        );
        assert!(seen[0].target.contains("x=1"));
    }
}

#[tokio::test]
async fn a_custom_param_is_dropped_from_the_cache_key() {
    let origin = Origin::start().await;
    origin.script(
        "/v/p.ts",
        Script::ok("p").header("cache-control", "max-age=60"),
    );
    let edge = edge_with(
        &origin,
        RawToken {
            param: Some("auth".into()),
            ..raw_token()
        },
    )
    .await;
    assert!(edge
        .edge
        .config
        .cache
        .drop_query_params
        .iter()
        .any(|p| p == "auth"));
    assert_eq!(
        edge.get(&format!("/v/p.ts?auth={}", token("/v/*")))
            .await
            .status
            .as_u16(),
        200
    );
    edge.settle().await;
    let r = edge.get(&format!("/v/p.ts?auth={}", token("/v/p*"))).await;
    assert_eq!(r.x_cache(), "HIT");
}

const MASTER: &str = "#EXTM3U\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"audio.m3u8\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO=\"aud\"\n\
low/index.m3u8\n\
#EXT-X-STREAM-INF:BANDWIDTH=1600000\n\
https://elsewhere.example/high/index.m3u8\n";

const MEDIA: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"../k/1.key\"\n\
#EXTINF:4.0,\nseg1.ts\n#EXT-X-ENDLIST\n";

#[tokio::test]
async fn a_tokenised_master_gives_child_uris_that_carry_the_token_and_work() {
    let origin = Origin::start().await;
    let m3u8 = |body: &'static str| {
        Script::ok(body)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=60")
            .header("etag", "\"m1\"")
    };
    origin.script("/v/master.m3u8", m3u8(MASTER));
    origin.script("/v/low/index.m3u8", m3u8(MEDIA));
    origin.script("/v/audio.m3u8", m3u8(MEDIA));
    origin.script(
        "/v/low/seg1.ts",
        Script::ok("seg").header("cache-control", "max-age=60"),
    );
    origin.script("/v/k/1.key", Script::ok("0123456789abcdef"));
    let edge = edge_with(&origin, raw_token()).await;

    let t = token("/v/*");
    let r = edge.get(&format!("/v/master.m3u8?hdnts={t}")).await;
    assert_eq!(r.status.as_u16(), 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert_eq!(
        r.h("content-length"),
        body.len().to_string(),
        "length of the rewritten body"
    );
    assert_eq!(
        r.h("etag"),
        "",
        "the origin's ETag does not describe these bytes"
    );
    assert!(
        body.contains(&format!("URI=\"audio.m3u8?hdnts={t}\"")),
        "{body}"
    );
    assert!(
        body.contains(&format!("\nlow/index.m3u8?hdnts={t}\n")),
        "{body}"
    );
    assert!(
        body.contains("\nhttps://elsewhere.example/high/index.m3u8\n"),
        "{body}"
    );

    // Follow the child URIs as a player does (relative to the playlist's URL).
    let r = edge.get(&format!("/v/low/index.m3u8?hdnts={t}")).await;
    let media = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        media.contains(&format!("URI=\"../k/1.key?hdnts={t}\"")),
        "{media}"
    );
    assert!(media.contains(&format!("\nseg1.ts?hdnts={t}\n")), "{media}");
    let seg = edge.get(&format!("/v/low/seg1.ts?hdnts={t}")).await;
    assert_eq!((seg.status.as_u16(), &seg.body[..]), (200, &b"seg"[..]));
    let key = edge.get(&format!("/v/k/1.key?hdnts={t}")).await;
    assert_eq!(key.status.as_u16(), 200);
    assert_eq!(
        edge.get("/v/k/1.key").await.status.as_u16(),
        403,
        "keys are token-checked"
    );

    // The cached playlist stays token-free: another viewer gets their own token, not ours.
    edge.settle().await;
    let t2 = token("/v/*");
    let r = edge.get(&format!("/v/master.m3u8?hdnts={t2}")).await;
    assert_eq!(r.x_cache(), "HIT");
    let body2 = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(body2.contains(&format!("low/index.m3u8?hdnts={t2}")));
    assert_eq!(origin.count("/v/master.m3u8"), 1);
    // A Range on a tokenised manifest is answered whole (the rewrite changes every offset).
    let r = edge
        .get_with(
            &format!("/v/master.m3u8?hdnts={t}"),
            &[("range", "bytes=0-5")],
        )
        .await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, body.len()));
}

const MPD: &str = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT4S">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate initialization="init-$RepresentationID$.mp4" media="$RepresentationID$-$Number$.m4s" startNumber="1" duration="4" timescale="1"/>
      <Representation id="v1" bandwidth="100000"/>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <Representation id="a1" bandwidth="1000">
        <BaseURL>http://other.example/audio.mp4</BaseURL>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#;

#[tokio::test]
async fn a_tokenised_mpd_gives_segment_urls_that_carry_the_token() {
    let origin = Origin::start().await;
    origin.script(
        "/v/d/stream.mpd",
        Script::ok(MPD).header("content-type", "application/dash+xml"),
    );
    origin.script("/v/d/init-v1.mp4", Script::ok("init"));
    origin.script("/v/d/v1-1.m4s", Script::ok("media"));
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/d/*");
    let r = edge.get(&format!("/v/d/stream.mpd?hdnts={t}")).await;
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert_eq!(r.h("content-length"), body.len().to_string());
    assert!(
        body.contains(&format!(
            "initialization=\"init-$RepresentationID$.mp4?hdnts={t}\""
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "media=\"$RepresentationID$-$Number$.m4s?hdnts={t}\""
        )),
        "{body}"
    );
    assert!(
        body.contains("<BaseURL>http://other.example/audio.mp4</BaseURL>"),
        "{body}"
    );
    for child in ["init-v1.mp4", "v1-1.m4s"] {
        let r = edge.get(&format!("/v/d/{child}?hdnts={t}")).await;
        assert_eq!(r.status.as_u16(), 200, "{child}");
    }
}

#[tokio::test]
async fn token_config_errors_are_named() {
    let origin = Origin::start().await;
    let mut raw = edge_config(&origin);
    raw.routes.push(RawRoute {
        prefix: "/v/".into(),
        origin: origin.url(),
        token: Some(RawToken {
            key: Some("xyz".into()),
            algorithm: Some("sha512".into()),
            sources: Some(vec!["carrier-pigeon".into()]),
            ..RawToken::default()
        }),
        ..RawRoute::default()
    });
    raw.routes.push(RawRoute {
        prefix: "/w/".into(),
        origin: origin.url(),
        token: Some(RawToken {
            key_env: Some("VEDGE_TEST_UNSET_TOKEN_KEY".into()),
            ..RawToken::default()
        }),
        ..RawRoute::default()
    });
    let err = vedge::Config::try_from(raw.clone()).expect_err("bad token config accepted");
    let text = err.to_string();
    for field in [
        "token.key",
        "token.algorithm",
        "token.sources",
        "VEDGE_TEST_UNSET_TOKEN_KEY",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    assert!(!text.contains("xyz"), "the key is never echoed");
    // The environment is read through RawConfig::read_env (main.rs passes std::env::var).
    raw.routes.remove(0);
    raw.read_env(|name| (name == "VEDGE_TEST_UNSET_TOKEN_KEY").then(|| KEY.to_string()));
    vedge::Config::try_from(raw).expect("key from the environment");
}

/// URIs a player resolves to another host: backslashes and tabs (read as `/` and dropped by the
/// WHATWG URL parser), a userinfo trick, HLS variables naming a host, and in DASH relative URLs
/// under a `BaseURL` on another host.
const FOREIGN_HLS: &str = "#EXTM3U\n\
#EXT-X-DEFINE:NAME=\"cdn\",VALUE=\"https://other.example\"\n\
#EXT-X-MAP:URI=\"\\\\other.example/init.mp4\"\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"/\\other.example/k.key\"\n\
#EXTINF:4,\n/\t/other.example/a.ts\n\
#EXTINF:4,\nhttp://127.0.0.1@other.example/b.ts\n\
#EXTINF:4,\n{$cdn}/c.ts\n\
#EXTINF:4,\nmine.ts\n";

const FOREIGN_MPD: &str = r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <BaseURL>https://other.example/v/</BaseURL>
      <SegmentTemplate initialization="init.mp4" media="$Number$.m4s"/>
      <Representation id="v1" bandwidth="1"/>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <SegmentTemplate media="audio-$Number$.m4s"/>
      <Representation id="a1" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;

#[tokio::test]
async fn the_token_never_reaches_another_host_through_a_manifest() {
    let origin = Origin::start().await;
    origin.script(
        "/v/f/media.m3u8",
        Script::ok(FOREIGN_HLS).header("content-type", "application/vnd.apple.mpegurl"),
    );
    origin.script(
        "/v/f/stream.mpd",
        Script::ok(FOREIGN_MPD).header("content-type", "application/dash+xml"),
    );
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/f/*");

    let r = edge.get(&format!("/v/f/media.m3u8?hdnts={t}")).await;
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert_eq!(
        body.matches("hdnts=").count(),
        1,
        "only mine.ts carries the token:\n{body}"
    );
    assert!(body.contains(&format!("\nmine.ts?hdnts={t}\n")), "{body}");

    let r = edge.get(&format!("/v/f/stream.mpd?hdnts={t}")).await;
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(body.contains("initialization=\"init.mp4\""), "{body}");
    assert!(body.contains("media=\"$Number$.m4s\""), "{body}");
    assert!(
        body.contains(&format!("media=\"audio-$Number$.m4s?hdnts={t}\"")),
        "{body}"
    );
    assert_eq!(body.matches("hdnts=").count(), 1, "{body}");
}

/// RFC 9112 §3.2.2: a request in absolute-form names its host in the target, and a server
/// ignores `Host` then; the edge routes and keys it by the target's authority
/// (`request::viewer_host`). Before, the manifest rewrite took its "same host" from `Host`
/// first: a viewer asking `http://edge.example/...` with `Host: other.example` had the token
/// added to other.example's URIs and not to edge.example's, where the player goes. Now the
/// rewrite uses the authority the rest of the edge uses.
#[tokio::test]
async fn an_absolute_form_request_carries_the_token_to_its_targets_host_not_to_host() {
    let origin = Origin::start().await;
    origin.script(
        "/v/abs/media.m3u8",
        Script::ok(
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n\
#EXTINF:4.0,\nhttp://edge.example/v/abs/1.ts\n\
#EXTINF:4.0,\nhttp://other.example/v/abs/2.ts\n#EXT-X-ENDLIST\n",
        )
        .header("content-type", "application/vnd.apple.mpegurl"),
    );
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/abs/*");
    let r = edge
        .raw(
            format!(
                "GET http://edge.example/v/abs/media.m3u8?hdnts={t} HTTP/1.1\r\n\
Host: other.example\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let (_, body) = r.split();
    let body = String::from_utf8_lossy(body);
    let tokenised: Vec<&str> = body.lines().filter(|l| l.contains("hdnts=")).collect();
    assert_eq!(
        tokenised,
        [format!("http://edge.example/v/abs/1.ts?hdnts={t}")],
        "only the target's host gets the token"
    );
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).expect("gzip");
    z.finish().expect("gzip")
}

/// A body as the viewer's player reads it: inflated when its `Content-Encoding` says gzip.
fn as_played(r: &crate::support::edge::Resp) -> String {
    use std::io::Read;
    let mut out = String::new();
    if r.h("content-encoding") == "gzip" {
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_string(&mut out)
            .expect("gunzip");
    } else {
        out = String::from_utf8(r.body.to_vec()).expect("utf8");
    }
    out
}

/// An origin compressing playlists: `/v/z/asked.m3u8` with gzip when the request accepts it
/// (`Vary: Accept-Encoding`), `/v/z/always.m3u8` with gzip whatever it was asked. Counts
/// requests per path.
async fn gzip_origin() -> (
    String,
    std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
) {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = std::sync::Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_string();
                    *seen.lock().entry(path.clone()).or_default() += 1;
                    let accepts = req
                        .headers()
                        .get("accept-encoding")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("gzip"));
                    let playlist = MEDIA.as_bytes();
                    let b = http::Response::builder()
                        .header(
                            "content-type",
                            if path.ends_with(".vtt") {
                                "text/vtt"
                            } else {
                                "application/vnd.apple.mpegurl"
                            },
                        )
                        .header("cache-control", "max-age=60");
                    let resp = match (path.as_str(), accepts) {
                        ("/v/z/always.m3u8", _)
                        | ("/v/z/asked.m3u8", true)
                        | ("/v/z/sub.vtt", true) => b
                            .header("content-encoding", "gzip")
                            .header("vary", "Accept-Encoding")
                            .body(Full::new(Bytes::from(gzip(playlist)))),
                        _ => b
                            .header("vary", "Accept-Encoding")
                            .body(Full::new(Bytes::from_static(playlist))),
                    };
                    async move { Ok::<_, Infallible>(resp.expect("valid response")) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), counts)
}

/// Before, a playlist the origin answered with `Content-Encoding: gzip` went to a tokenised
/// viewer as the origin coded it, without the token (the rewrite reads text), and its player
/// was refused every child. Now a viewer whose manifests are rewritten asks the origin for
/// `identity` (the fill, its `Vary` variant and the stored copy all say so), and a coded
/// manifest the origin sends anyway is inflated, rewritten and served `identity`.
#[tokio::test]
async fn a_compressed_manifest_still_carries_the_token_to_its_children() {
    let (base, counts) = gzip_origin().await;
    let mut raw = edge_config(&Origin::start().await);
    raw.routes.push(RawRoute {
        prefix: "/v/".into(),
        origin: base,
        token: Some(raw_token()),
        ..RawRoute::default()
    });
    let edge = TestEdge::start(raw).await;
    let t = token("/v/z/*");
    // What OkHttp (ExoPlayer) sends; a browser's `br` is asked of the origin as `br`.
    let player = [("accept-encoding", "gzip")];
    for path in ["/v/z/asked.m3u8", "/v/z/always.m3u8", "/v/z/asked.m3u8"] {
        let r = edge.get_with(&format!("{path}?hdnts={t}"), &player).await;
        assert_eq!(r.status, 200);
        let played = as_played(&r);
        assert!(
            played.contains(&format!("\nseg1.ts?hdnts={t}\n"))
                && played.contains(&format!("URI=\"../k/1.key?hdnts={t}\"")),
            "{path} ({}, content-encoding {:?}) carries no token:\n{played}",
            r.h("cache-status"),
            r.h("content-encoding")
        );
        assert_eq!(
            (r.h("content-encoding"), r.h("content-length")),
            ("", played.len().to_string().as_str()),
            "{path}: served identity, its length"
        );
        edge.settle().await;
    }
    assert_eq!(
        counts.lock().get("/v/z/asked.m3u8").copied(),
        Some(1),
        "the second viewer is a hit on the stored identity copy"
    );
}

/// Only what may be a manifest is asked of the origin as `identity` for a viewer whose
/// manifests carry its token: a caption or a segment (its path says so) keeps the encodings its
/// viewer accepts. Before, every request carrying a query token asked for `identity`.
#[tokio::test]
async fn a_tokenised_caption_keeps_the_viewers_accept_encoding() {
    let (base, counts) = gzip_origin().await;
    let mut raw = edge_config(&Origin::start().await);
    raw.routes.push(RawRoute {
        prefix: "/v/".into(),
        origin: base,
        token: Some(raw_token()),
        ..RawRoute::default()
    });
    let edge = TestEdge::start(raw).await;
    let t = token("/v/z/*");
    let r = edge
        .get_with(
            &format!("/v/z/sub.vtt?hdnts={t}"),
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(counts.lock().get("/v/z/sub.vtt").copied(), Some(1));
    assert_eq!(
        r.h("content-encoding"),
        "gzip",
        "the caption was asked of the origin as identity ({})",
        r.h("cache-status")
    );
}

fn br(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Quality 5: quick on megabytes of test data in a debug build.
    let params = brotli::enc::BrotliEncoderParams {
        quality: 5,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).expect("br");
    out
}

fn zstd(body: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(body, ruzstd::encoding::CompressionLevel::Fastest)
}

const CODED_MPD: &str = "<?xml version=\"1.0\"?>\n\
<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\" mediaPresentationDuration=\"PT8S\">\
<Period><AdaptationSet mimeType=\"video/mp4\"><Representation id=\"v\" bandwidth=\"1000\">\
<SegmentTemplate initialization=\"init.mp4\" media=\"$Number$.m4s\" duration=\"4\"/>\
</Representation></AdaptationSet></Period></MPD>\n";

/// An origin that ignores `Accept-Encoding: identity` and answers a playlist with
/// `Content-Encoding: br` or an MPD with `zstd`. Before, such a manifest went to its tokenised
/// viewer as the origin coded it, without the token (only gzip and deflate were undone), and
/// the player was refused every child. Now both are decoded, rewritten and served identity,
/// from the fill and from the stored (coded) copy alike.
#[tokio::test]
async fn a_br_or_zstd_manifest_is_decoded_and_carries_the_token() {
    let origin = Origin::start().await;
    origin.script(
        "/v/c/media.m3u8",
        Script::ok(br(MEDIA.as_bytes()))
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("content-encoding", "br")
            .header("cache-control", "max-age=60"),
    );
    origin.script(
        "/v/c/stream.mpd",
        Script::ok(zstd(CODED_MPD.as_bytes()))
            .header("content-type", "application/dash+xml")
            .header("content-encoding", "zstd")
            .header("cache-control", "max-age=60"),
    );
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/c/*");
    // What a browser sends: it would take br and zstd, but the token must be in the text.
    let browser = [("accept-encoding", "gzip, deflate, br, zstd")];
    // Each case as the player gets it, all in one assertion (so the code before shows them all).
    let mut got = Vec::new();
    let mut want = Vec::new();
    for round in ["fill", "stored copy"] {
        for (path, tokens) in [
            (
                "/v/c/media.m3u8",
                [
                    format!("\nseg1.ts?hdnts={t}\n"),
                    format!("URI=\"../k/1.key?hdnts={t}\""),
                ],
            ),
            (
                "/v/c/stream.mpd",
                [
                    format!("initialization=\"init.mp4?hdnts={t}\""),
                    format!("media=\"$Number$.m4s?hdnts={t}\""),
                ],
            ),
        ] {
            let r = edge.get_with(&format!("{path}?hdnts={t}"), &browser).await;
            let body = String::from_utf8_lossy(&r.body).to_string();
            let carries = tokens.iter().all(|u| body.contains(u));
            got.push(format!(
                "{path} ({round}): {} content-encoding {:?}, length {} of {}, token {}",
                r.status.as_u16(),
                r.h("content-encoding"),
                r.h("content-length"),
                body.len(),
                if carries { "in every URI" } else { "missing" },
            ));
            want.push(format!(
                "{path} ({round}): 200 content-encoding \"\", length {0} of {0}, token in every URI",
                body.len()
            ));
        }
        edge.settle().await;
    }
    assert_eq!(
        got, want,
        "br and zstd manifests are served identity, with the token"
    );
    assert_eq!(origin.count("/v/c/media.m3u8"), 1, "the second is a hit");
    assert_eq!(
        origin.seen("/v/c/media.m3u8")[0].header("accept-encoding"),
        Some("identity"),
        "the origin was asked for identity"
    );
}

/// A few KiB of br or zstd that decode to more than the rewrite limit (4 MiB), a coding the
/// edge does not know, and a corrupt body: none of them can be given the token, and sent as
/// they are each would be a playlist whose every child is refused (before: 200, coded, no
/// token). Now each is a 502 naming the reason (a HEAD too, for a coding unknown by its name),
/// and the edge decodes no more than one byte past the limit (`proxy::coding`'s unit tests).
#[tokio::test]
async fn a_manifest_that_cannot_carry_the_token_is_a_502_naming_why() {
    let origin = Origin::start().await;
    let bomb = {
        let mut text = MEDIA.as_bytes().to_vec();
        text.resize(vedge::proxy::signed::MAX_REWRITE + 1, b'\n');
        text
    };
    let cases: [(&str, &str, Vec<u8>, &str); 4] = [
        ("br-bomb", "br", br(&bomb), "decodes to more than"),
        ("zstd-bomb", "zstd", zstd(&bomb), "decodes to more than"),
        (
            "unknown",
            "compress",
            MEDIA.as_bytes().to_vec(),
            "does not decode",
        ),
        ("corrupt", "zstd", br(MEDIA.as_bytes()), "corrupt"),
    ];
    for (name, coding, body, _) in &cases {
        assert!(body.len() < 64 << 10 || *name == "unknown");
        origin.script(
            &format!("/v/b/{name}.m3u8"),
            Script::ok(body.clone())
                .header("content-type", "application/vnd.apple.mpegurl")
                .header("content-encoding", coding)
                .header("cache-control", "max-age=60"),
        );
    }
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/b/*");
    let mut got = Vec::new();
    let mut want = Vec::new();
    for (name, coding, _, why) in &cases {
        let path = format!("/v/b/{name}.m3u8?hdnts={t}");
        let r = edge.get(&path).await;
        let body = String::from_utf8_lossy(&r.body).to_string();
        let named = body.contains("cannot carry the viewer's token") && body.contains(why);
        got.push(format!(
            "{name} ({coding}): {} {}",
            r.status.as_u16(),
            if named {
                format!("names why ({why})")
            } else {
                format!(
                    "{} content-encoding {:?}, {} bytes",
                    r.h("cache-status"),
                    r.h("content-encoding"),
                    r.body.len()
                )
            }
        ));
        want.push(format!("{name} ({coding}): 502 names why ({why})"));
    }
    // A HEAD knows a coding by its name only: one the edge cannot decode is a 502 too.
    let head = edge
        .send(
            edge.req(Method::HEAD, &format!("/v/b/unknown.m3u8?hdnts={t}")),
            Default::default(),
        )
        .await;
    got.push(format!("HEAD unknown: {}", head.status.as_u16()));
    want.push("HEAD unknown: 502".into());
    assert_eq!(got, want, "no coded manifest goes out without the token");
    // A viewer whose manifests are not rewritten (no query token) gets the bytes as stored.
    let signed = crate::support::token::token_for("/v/b/*", None);
    let r = edge
        .get_with(
            "/v/b/unknown.m3u8",
            &[("cookie", &format!("hdnts={signed}"))],
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.h("content-encoding")),
        (200, "compress")
    );
}

/// `[route.token] steering_same_domain`: an operator whose content-steering pathways are all
/// edges of this token domain has the token added to a steered playlist's variant, rendition
/// and I-frame URIs too. Off (the default), they get none, as before (a pathway clone may move
/// them to another CDN).
#[tokio::test]
async fn steering_same_domain_gives_steered_variants_the_token() {
    const STEERED: &str = "#EXTM3U\n\
#EXT-X-CONTENT-STEERING:SERVER-URI=\"steering.json\",PATHWAY-ID=\"edge\"\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"audio/en.m3u8\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=1000000,AUDIO=\"aud\",PATHWAY-ID=\"edge\"\n\
v1/media.m3u8\n\
#EXT-X-STREAM-INF:BANDWIDTH=1000000,AUDIO=\"aud\",PATHWAY-ID=\"other\"\n\
https://other-cdn.example/v/s/v1/media.m3u8\n\
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,URI=\"v1/iframes.m3u8\",PATHWAY-ID=\"edge\"\n";
    let origin = Origin::start().await;
    origin.script(
        "/v/s/master.m3u8",
        Script::ok(STEERED).header("content-type", "application/vnd.apple.mpegurl"),
    );
    let t = token("/v/s/*");
    let same_domain = edge_with(
        &origin,
        RawToken {
            steering_same_domain: Some(true),
            ..raw_token()
        },
    )
    .await;
    let default = edge_with(&origin, raw_token()).await;
    let tokenised = |body: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(body)
            .lines()
            .filter(|l| l.contains("hdnts="))
            .map(str::to_string)
            .collect()
    };

    let r = same_domain
        .get(&format!("/v/s/master.m3u8?hdnts={t}"))
        .await;
    assert_eq!(r.status, 200);
    let on = tokenised(&r.body);
    for uri in [
        format!("URI=\"audio/en.m3u8?hdnts={t}\""),
        format!("v1/media.m3u8?hdnts={t}"),
        format!("URI=\"v1/iframes.m3u8?hdnts={t}\""),
        format!("SERVER-URI=\"steering.json?hdnts={t}\""),
    ] {
        assert!(
            on.iter().any(|l| l.contains(&uri)),
            "steering_same_domain = true: {uri} missing from {on:#?}"
        );
    }
    assert!(
        !on.iter().any(|l| l.contains("other-cdn.example")),
        "another host never gets the token: {on:#?}"
    );

    let r = default.get(&format!("/v/s/master.m3u8?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let off = tokenised(&r.body);
    assert_eq!(
        off,
        [format!(
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"steering.json?hdnts={t}\",PATHWAY-ID=\"edge\""
        )],
        "by default only what no clone copies gets the token"
    );
}

/// A media playlist of `n` segments (`seg-000000.ts`…), 27 bytes each.
fn long_playlist(n: usize) -> String {
    let mut m = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n");
    for i in 0..n {
        m.push_str(&format!("#EXTINF:4.0,\nseg-{i:06}.ts\n"));
    }
    m.push_str("#EXT-X-ENDLIST\n");
    m
}

/// An identity manifest over the rewrite bound (`signed::MAX_REWRITE`, 4 MiB as sent), and
/// one under it whose rewrite would pass `propagate::MAX_OUTPUT` (one-byte URI lines, each
/// given a ~100-byte token). Before, both went to the tokenised viewer as the origin sent them,
/// without the token, on the fill and on the hit, and the player was refused every segment with
/// nothing in the answer to say why (a coded one got a 502). Now each is a 502 naming why, on
/// the fill and on the hit alike.
#[tokio::test]
async fn a_manifest_too_large_for_the_token_is_a_502_never_sent_without_it() {
    let origin = Origin::start().await;
    let over = long_playlist(vedge::proxy::signed::MAX_REWRITE / 27 + 1000);
    assert!(over.len() > vedge::proxy::signed::MAX_REWRITE);
    let fanout = format!("#EXTM3U\n{}", "a\n".repeat(1 << 20));
    for (name, body) in [("over", over), ("fanout", fanout)] {
        origin.script(
            &format!("/v/big/{name}.m3u8"),
            Script::ok(body.into_bytes())
                .header("content-type", "application/vnd.apple.mpegurl")
                .header("cache-control", "max-age=60"),
        );
    }
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/big/*");
    let mut got = Vec::new();
    let mut want = Vec::new();
    for name in ["over", "fanout"] {
        for round in ["fill", "hit"] {
            let r = edge.get(&format!("/v/big/{name}.m3u8?hdnts={t}")).await;
            let body = String::from_utf8_lossy(&r.body);
            let named = body.contains("cannot carry the viewer's token")
                && body.contains("larger than the edge adds a token to");
            got.push(format!(
                "{name} ({round}): {} {}",
                r.status.as_u16(),
                if named {
                    "names why".to_string()
                } else {
                    format!(
                        "{} bytes, token {}",
                        r.body.len(),
                        if body.contains(&format!("?hdnts={t}")) {
                            "added"
                        } else {
                            "missing"
                        }
                    )
                }
            ));
            want.push(format!("{name} ({round}): 502 names why"));
            edge.settle().await;
        }
    }
    assert_eq!(got, want, "no manifest goes out without the token");
    // A viewer whose manifests are not rewritten (a cookie token) gets it as stored.
    let r = edge
        .get_with(
            "/v/big/over.m3u8",
            &[("cookie", &format!("hdnts={}", token("/v/big/*")))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() > vedge::proxy::signed::MAX_REWRITE);
}

/// A br manifest asked for by several viewers, each with its own token: decoded once (the
/// first viewer's fill), its text reused for every hit after (`proxy::coding::Decoded`), and
/// each viewer's rewrite of a playlist this large done off the worker (`signed::INLINE_MAX`).
/// Before, every request decoded the stored br body again on the worker, and the rewrite ran
/// there too; `/metrics` had neither count.
#[tokio::test]
async fn a_coded_manifest_is_decoded_once_for_every_viewer() {
    let origin = Origin::start().await;
    let text = long_playlist(4000);
    assert!(text.len() > vedge::proxy::signed::INLINE_MAX);
    let coded = br(text.as_bytes());
    assert!(
        coded.len() <= vedge::proxy::signed::INLINE_MAX,
        "decoded inline"
    );
    origin.script(
        "/v/c/long.m3u8",
        Script::ok(coded)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("content-encoding", "br")
            .header("cache-control", "max-age=60"),
    );
    let edge = edge_with(&origin, raw_token()).await;
    let api = edge.admin().await;
    const VIEWERS: usize = 4;
    let mut got = Vec::new();
    let mut want = Vec::new();
    for n in 0..VIEWERS {
        let t = crate::support::token::token_for("/v/c/*", Some(&format!("viewer-{n}")));
        let r = edge.get(&format!("/v/c/long.m3u8?hdnts={t}")).await;
        let body = String::from_utf8_lossy(&r.body);
        let ours = body.matches(&format!("?hdnts={t}\n")).count();
        got.push(format!(
            "viewer {n}: {} {} content-encoding {:?}, {ours} of 4000 URIs with its token, {} tokens in all",
            r.status.as_u16(),
            r.x_cache(),
            r.h("content-encoding"),
            body.matches("?hdnts=").count(),
        ));
        want.push(format!(
            "viewer {n}: {} {} content-encoding \"\", 4000 of 4000 URIs with its token, 4000 tokens in all",
            200,
            if n == 0 { "MISS" } else { "HIT" },
        ));
        edge.settle().await;
    }
    for (name, n) in [
        ("vedge_manifest_decodes_total", 1),
        ("vedge_manifest_decodes_reused_total", VIEWERS as u64 - 1),
        ("vedge_manifest_offloaded_total", VIEWERS as u64),
    ] {
        got.push(format!("{name} {}", api.metric(name).await));
        want.push(format!("{name} {n}"));
    }
    assert_eq!(got, want, "one decode, every viewer its own token");
    assert_eq!(origin.count("/v/c/long.m3u8"), 1);
}

/// A live playlist as a packager that copies the request's token onto the URIs it lists
/// writes it for the viewer whose token it was sent (`forward = true`: the shared fill
/// carries the first viewer's token).
fn echoed_playlist(token: &str) -> String {
    format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:1\n\
#EXT-X-MAP:URI=\"init.mp4?hdnts={token}\"\n\
#EXTINF:4.0,\nseg1.ts?hdnts={token}\n\
#EXTINF:4.0,\nseg2.ts?n=2&hdnts={token}\n"
    )
}

/// The same packager's MPD.
fn echoed_mpd(token: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" minimumUpdatePeriod="PT2S">
  <Period id="0">
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate initialization="init.mp4?hdnts={token}" media="s-$Number$.m4s?hdnts={token}" duration="4" timescale="1"/>
      <Representation id="v" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#
    )
}

/// Bug: on a `forward = true` route the shared fill sent the origin the first viewer's
/// token, the token is no part of the key, and a packager that copies the query token onto
/// the URIs it lists produced a playlist naming that viewer's token, which was stored and
/// served to everyone: the per-viewer rewrite left URIs that "already carry the parameter"
/// alone, so every later viewer (HIT, the same bytes gzip-coded, DASH alike) was handed the
/// first viewer's token (an IP-bound one: 403 on every segment), and a viewer whose token
/// came in a header got it too. Now a same-host URI's value of the parameter is replaced by
/// the viewer's own token, or taken out for a viewer without a query token (and such a
/// manifest is no longer shared at all: see the next test).
#[tokio::test]
async fn a_forwarded_token_the_origin_copied_into_a_manifest_reaches_no_other_viewer() {
    let t1 = crate::support::token::token_for("/v/*", Some("viewer-1"));
    let t2 = crate::support::token::token_for("/v/*", Some("viewer-2"));
    let t3 = crate::support::token::token_for("/v/*", Some("viewer-3"));
    let origin = Origin::start().await;
    let m3u8 = |body: Vec<u8>| {
        Script::ok(body)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=60")
    };
    origin.script("/v/live.m3u8", m3u8(echoed_playlist(&t1).into_bytes()));
    origin.script(
        "/v/z/live.m3u8",
        m3u8(gzip(echoed_playlist(&t1).as_bytes())).header("content-encoding", "gzip"),
    );
    origin.script(
        "/v/live.mpd",
        Script::ok(echoed_mpd(&t1))
            .header("content-type", "application/dash+xml")
            .header("cache-control", "max-age=60"),
    );
    origin.script(
        "/v/seg1.ts",
        Script::ok("seg").header("cache-control", "max-age=60"),
    );
    let edge = edge_with(
        &origin,
        RawToken {
            forward: Some(true),
            sources: Some(vec!["query".into(), "header".into()]),
            header: Some("x-edge-token".into()),
            ..raw_token()
        },
    )
    .await;
    for path in ["/v/live.m3u8", "/v/z/live.m3u8", "/v/live.mpd"] {
        // Viewer 1 fills the key: the origin is sent (and echoes) its token.
        let r = edge.get(&format!("{path}?hdnts={t1}")).await;
        assert_eq!(r.status.as_u16(), 200, "{path}");
        edge.settle().await;
        assert!(
            origin.seen(path)[0].target.contains(&t1),
            "{path}: forwarded"
        );
        // Viewer 2: its own answer (a manifest on a `forward` route is never shared), and
        // whatever token a same-host URI holds is replaced by viewer 2's own (the scripted
        // origin writes viewer 1's whatever it is sent).
        let r = edge.get(&format!("{path}?hdnts={t2}")).await;
        let body = as_played(&r);
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "BYPASS"), "{path}");
        assert!(
            !body.contains(&t1),
            "{path}: viewer 2 was served viewer 1's token:\n{body}"
        );
        let want = if path.ends_with(".mpd") {
            vec![
                format!("initialization=\"init.mp4?hdnts={t2}\""),
                format!("media=\"s-$Number$.m4s?hdnts={t2}\""),
            ]
        } else {
            vec![
                format!("URI=\"init.mp4?hdnts={t2}\""),
                format!("\nseg1.ts?hdnts={t2}\n"),
                format!("\nseg2.ts?n=2&hdnts={t2}\n"),
            ]
        };
        for w in want {
            assert!(body.contains(&w), "{path}: {w} missing from:\n{body}");
        }
        assert_eq!(r.h("content-length"), body.len().to_string(), "{path}");
        // A viewer whose token travels in a header gets no token in its URIs, nobody's.
        let r = edge.get_with(path, &[("x-edge-token", &t3)]).await;
        let body = as_played(&r);
        assert_eq!(r.status.as_u16(), 200, "{path}");
        assert!(
            !body.contains("hdnts="),
            "{path}: a header viewer was served a stored token:\n{body}"
        );
        assert_eq!(
            origin.count(path),
            3,
            "{path}: each viewer asked for itself"
        );
    }
    // What viewer 2's playlist names works for viewer 2.
    let r = edge.get(&format!("/v/seg1.ts?hdnts={t2}")).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"seg"[..]));
}

/// Bug: the manifest rewrite on a token route did not give the viewer's token to an HLS
/// Interstitial's `X-ASSET-URI` / `X-ASSET-LIST` (`EXT-X-DATERANGE`), a DASH `PatchLocation`
/// or a remote element's `xlink:href` (a `Period`, an `AdaptationSet`), so a player following
/// them was refused (403). Now same-host ones carry it like every other URI; other hosts and
/// `urn:mpeg:dash:resolve-to-zero:2013` stay as they are.
#[tokio::test]
async fn interstitials_patch_locations_and_remote_periods_carry_the_token() {
    const MEDIA: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n\
#EXT-X-DATERANGE:ID=\"ad1\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:00Z\",X-ASSET-URI=\"ads/ad1.m3u8\"\n\
#EXT-X-DATERANGE:ID=\"ad2\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:02Z\",X-ASSET-LIST=\"ads/list.json\"\n\
#EXT-X-DATERANGE:ID=\"ad3\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:04Z\",X-ASSET-URI=\"https://ads.other.example/a.m3u8\"\n\
#EXTINF:2,\ns10.m4s\n";
    const MPD: &str = r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:xlink="http://www.w3.org/1999/xlink" type="dynamic" minBufferTime="PT2S"><PatchLocation ttl="60">patch.mpp</PatchLocation><Period id="0" start="PT0S"><AdaptationSet mimeType="video/mp4"><SegmentTemplate media="s$Number$.m4s" duration="2" timescale="1"/><Representation id="v" bandwidth="1"/></AdaptationSet><AdaptationSet xlink:href="as1.xml"/></Period><Period id="1" xlink:href="period1.xml" xlink:actuate="onLoad"/><Period id="2" xlink:href="urn:mpeg:dash:resolve-to-zero:2013"/></MPD>"#;
    let origin = Origin::start().await;
    origin.script(
        "/v/i/media.m3u8",
        Script::ok(MEDIA).header("content-type", "application/vnd.apple.mpegurl"),
    );
    origin.script(
        "/v/i/x.mpd",
        Script::ok(MPD).header("content-type", "application/dash+xml"),
    );
    for child in [
        "ads/ad1.m3u8",
        "ads/list.json",
        "patch.mpp",
        "period1.xml",
        "as1.xml",
    ] {
        origin.script(&format!("/v/i/{child}"), Script::ok("child"));
    }
    let edge = edge_with(&origin, raw_token()).await;
    let t = token("/v/i/*");
    let hls = as_played(&edge.get(&format!("/v/i/media.m3u8?hdnts={t}")).await);
    let mpd = as_played(&edge.get(&format!("/v/i/x.mpd?hdnts={t}")).await);
    for (body, attr, child) in [
        (&hls, "X-ASSET-URI=\"", "ads/ad1.m3u8"),
        (&hls, "X-ASSET-LIST=\"", "ads/list.json"),
        (&mpd, "<PatchLocation ttl=\"60\">", "patch.mpp"),
        (&mpd, "<Period id=\"1\" xlink:href=\"", "period1.xml"),
        (&mpd, "<AdaptationSet xlink:href=\"", "as1.xml"),
    ] {
        let uri = format!("{child}?hdnts={t}");
        assert!(
            body.contains(&format!("{attr}{uri}")),
            "{child} carries no token:\n{body}"
        );
        // Followed as a player does, relative to the manifest.
        let r = edge.get(&format!("/v/i/{uri}")).await;
        assert_eq!(r.status.as_u16(), 200, "{child}");
        assert_eq!(origin.count(&format!("/v/i/{child}")), 1, "{child}");
    }
    assert!(
        hls.contains("X-ASSET-URI=\"https://ads.other.example/a.m3u8\""),
        "another host never gets the token:\n{hls}"
    );
    assert!(
        mpd.contains("xlink:href=\"urn:mpeg:dash:resolve-to-zero:2013\""),
        "{mpd}"
    );
}

/// Bug: the MPD rewrite on a token route left the URLs a DASH player fetches outside the
/// segment tree without the viewer's token: a `UTCTiming@value` of an HTTP scheme (dash.js and
/// Shaka fetch it for their clock), the `<ContentSteering>` server and its `proxyServerURL`, and
/// the next MPD of a chaining or fallback descriptor, so the player was refused (403 "token
/// missing") on each. Now same-host and relative ones carry it once, each URL of a list on its
/// own; other hosts and schemes without a URL (`direct`) stay as written.
#[tokio::test]
async fn clock_steering_and_chained_mpd_urls_carry_the_token() {
    let origin = Origin::start().await;
    let edge = edge_with(&origin, raw_token()).await;
    let here = edge.url("");
    let here = here.trim_end_matches('/');
    let mpd = format!(
        r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" minimumUpdatePeriod="PT2S">
 <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="{here}/v/u/time"/>
 <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-xsdate:2014" value="xs https://other.example/xs"/>
 <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-head:2014" value="/v/u/head"/>
 <UTCTiming schemeIdUri="urn:mpeg:dash:utc:direct:2014" value="2024-01-01T00:00:00Z"/>
 <ContentSteering defaultServiceLocation="a" proxyServerURL="proxy">{here}/v/u/steer.json</ContentSteering>
 <SupplementalProperty schemeIdUri="urn:mpeg:dash:chaining:2016" value="next.mpd"/>
 <EssentialProperty schemeIdUri="urn:mpeg:dash:fallback:2016" value="https://other.example/fb.mpd"/>
 <Period id="0" start="PT0S"><AdaptationSet mimeType="video/mp4"><SegmentTemplate media="s$Number$.m4s" duration="2" timescale="1"/><Representation id="v" bandwidth="1"/></AdaptationSet></Period>
</MPD>"#
    );
    origin.script(
        "/v/u/x.mpd",
        Script::ok(mpd).header("content-type", "application/dash+xml"),
    );
    for child in ["time", "xs", "head", "proxy", "steer.json", "next.mpd"] {
        origin.script(&format!("/v/u/{child}"), Script::ok("child"));
    }
    let t = token("/v/u/*");
    let r = edge.get(&format!("/v/u/x.mpd?hdnts={t}")).await;
    assert_eq!(r.status.as_u16(), 200);
    let body = as_played(&r);
    // (as written in the MPD, as a player resolves it against the MPD's URL)
    for (written, child) in [
        (format!("value=\"{here}/v/u/time?hdnts={t}\""), "time"),
        (
            format!("value=\"xs?hdnts={t} https://other.example/xs\""),
            "xs",
        ),
        (format!("value=\"/v/u/head?hdnts={t}\""), "head"),
        (format!("proxyServerURL=\"proxy?hdnts={t}\""), "proxy"),
        (
            format!(">{here}/v/u/steer.json?hdnts={t}</ContentSteering>"),
            "steer.json",
        ),
        (format!("value=\"next.mpd?hdnts={t}\""), "next.mpd"),
    ] {
        assert!(body.contains(&written), "{child} carries no token:\n{body}");
        let r = edge.get(&format!("/v/u/{child}?hdnts={t}")).await;
        assert_eq!(r.status.as_u16(), 200, "{child}");
        assert_eq!(origin.count(&format!("/v/u/{child}")), 1, "{child}");
    }
    for untouched in [
        "value=\"2024-01-01T00:00:00Z\"",
        "value=\"https://other.example/fb.mpd\"",
    ] {
        assert!(body.contains(untouched), "{untouched}:\n{body}");
    }
    // The six above and the segment template, each once.
    assert_eq!(body.matches("hdnts=").count(), 7, "each URL once:\n{body}");
}

/// A packager that writes absolute URLs on the `Host` it is sent (the route's origin
/// `host:port`, not the viewer's) and copies the query token it was sent onto every URI it
/// lists, relative and absolute: `/v/p/live.m3u8` (and `/v/p/hls`) and `/v/p/live.mpd`, and
/// segments. Records
/// every request target it is sent.
async fn packager_origin() -> (String, std::sync::Arc<parking_lot::Mutex<Vec<String>>>) {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let targets = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen = targets.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    seen.lock().push(req.uri().to_string());
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let tok = req
                        .uri()
                        .query()
                        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("hdnts=")))
                        .unwrap_or_default()
                        .to_string();
                    let path = req.uri().path();
                    let (ct, body) = match path {
                        "/v/p/live.m3u8" | "/v/p/hls" | "/v/p/plain.m3u8;v=2" => (
                            if path.ends_with(";v=2") {
                                "application/octet-stream"
                            } else {
                                "application/vnd.apple.mpegurl"
                            },
                            format!(
                                "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
#EXT-X-MAP:URI=\"http://{host}/v/p/init.mp4?hdnts={tok}\"\n\
#EXTINF:2.0,\nhttp://{host}/v/p/s0.m4s?hdnts={tok}\n\
#EXTINF:2.0,\ns1.m4s?hdnts={tok}\n"
                            ),
                        ),
                        "/v/p/live.mpd" => (
                            "application/dash+xml",
                            format!(
                                r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" minimumUpdatePeriod="PT2S">
  <BaseURL>http://{host}/v/p/</BaseURL>
  <Period id="0">
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate initialization="init.mp4?hdnts={tok}" media="s$Number$.m4s?hdnts={tok}" duration="2" timescale="1"/>
      <Representation id="v" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#
                            ),
                        ),
                        _ => ("video/mp4", "segment".to_string()),
                    };
                    let resp = http::Response::builder()
                        .header("content-type", ct)
                        .header("cache-control", "max-age=60")
                        .body(Full::new(Bytes::from(body)));
                    async move { Ok::<_, Infallible>(resp.expect("valid response")) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), targets)
}

/// Bug: on a `forward = true` route a shared fill sent the origin the first viewer's token,
/// and a packager writing absolute URLs on the `Host` it was sent (the origin's `host:port`,
/// another host to the viewer) copied that token onto them; the stored playlist/MPD was served
/// to every later viewer (a HIT) with those URIs as the origin wrote them, so viewer 2 was
/// handed `http://127.0.0.1:<origin>/v/p/init.mp4?hdnts=<viewer 1's token>` (only same-host
/// URIs got viewer 2's token). Now a manifest on a `forward` route is fetched for each viewer
/// with its own token and never stored or shared; segments still are.
#[tokio::test]
async fn a_forwarded_token_copied_onto_absolute_urls_reaches_no_other_viewer() {
    let (base, targets) = packager_origin().await;
    let mut raw = edge_config(&Origin::start().await);
    raw.routes.push(RawRoute {
        prefix: "/v/".into(),
        origin: base.clone(),
        token: Some(RawToken {
            forward: Some(true),
            ..raw_token()
        }),
        ..RawRoute::default()
    });
    let edge = TestEdge::start(raw).await;
    let t1 = crate::support::token::token_for("/v/*", Some("viewer-1"));
    let t2 = crate::support::token::token_for("/v/*", Some("viewer-2"));
    // The HMAC is the token's own part no encoding changes (hex digits).
    let hmac1 = t1
        .rsplit("hmac=")
        .next()
        .expect("a token ends with its hmac");
    let origin_host = base.trim_start_matches("http://");
    // `/v/p/hls` is a playlist known only by its `Content-Type`; `/v/p/plain.m3u8;v=2` one
    // known only by its routed path (`;v=2` is a segment parameter), served as
    // `application/octet-stream` (an outside review saw it stored and shared).
    for path in [
        "/v/p/live.m3u8",
        "/v/p/live.mpd",
        "/v/p/hls",
        "/v/p/plain.m3u8;v=2",
    ] {
        let r = edge.get(&format!("{path}?hdnts={t1}")).await;
        assert_eq!(r.status.as_u16(), 200, "{path}");
        edge.settle().await;
        let r = edge.get(&format!("{path}?hdnts={t2}")).await;
        let body = as_played(&r);
        assert_eq!(r.status.as_u16(), 200, "{path}");
        assert!(
            !body.contains(hmac1),
            "{path}: viewer 2 ({}) was served viewer 1's token:\n{body}",
            r.h("cache-status")
        );
        // The origin's absolute URLs hold the token it was sent for viewer 2: viewer 2's own.
        let own = if path.ends_with(".mpd") {
            format!("media=\"s$Number$.m4s?hdnts={t2}\"")
        } else {
            format!("\nhttp://{origin_host}/v/p/s0.m4s?hdnts={t2}\n")
        };
        assert!(body.contains(&own), "{path}: {own} missing from:\n{body}");
        let asked: Vec<String> = targets
            .lock()
            .iter()
            .filter(|t| t.starts_with(path))
            .cloned()
            .collect();
        assert_eq!(
            asked.len(),
            2,
            "{path}: each viewer's own request: {asked:?}"
        );
        assert!(asked[1].contains(&t2), "{path}: forwarded: {asked:?}");
    }
    // Segments hold no URIs: still one shared fill.
    for t in [&t1, &t2] {
        let r = edge.get(&format!("/v/p/s1.m4s?hdnts={t}")).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"segment"[..]));
        edge.settle().await;
    }
    let segment_fills = targets
        .lock()
        .iter()
        .filter(|t| t.starts_with("/v/p/s1.m4s"))
        .count();
    assert_eq!(segment_fills, 1);
}
