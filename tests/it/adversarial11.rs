//! Regression tests from the eleventh adversarial review: work one viewer's request makes the
//! edge do on others' behalf stays bounded and shared. Each fails on the code before its fix.

use std::io::Read;
use std::sync::Arc;

use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::edge_config;
use http::Method;

/// A body as text, for messages.
fn text(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(body)
}

use crate::support::{Origin, Script, TestEdge};

/// Bug: with `cache.compress_manifests` on, every viewer that asked for a large shared
/// manifest before its gzip form was kept coded it again, each on a blocking thread of its
/// own (no bound): a new version of a 2 MiB DVR playlist asked for by a crowd at once was as
/// many level-6 compressions running at once as viewers. Now the first codes it (on the
/// blocking pool under the manifest work's bound) and the others wait for its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_asking_for_a_large_manifest_at_once_codes_it_once() {
    let origin = Origin::start().await;
    let path = "/v/dvr.m3u8";
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n");
    for i in 0..60_000 {
        text.push_str(&format!("#EXTINF:6.000,\nseg_{i:06}.ts\n"));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    assert!(text.len() > 1 << 20);
    origin.script(
        path,
        Script::ok(text.clone())
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=600"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.compress_manifests = Some(true);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = Arc::new(TestEdge::start_with_admin(raw).await);
    let api = edge.admin().await;

    // Stored first, uncoded; then the crowd, all at once.
    let plain = edge.get(path).await;
    assert_eq!(plain.body.len(), text.len());
    edge.settle().await;
    let crowd: Vec<_> = (0..12)
        .map(|_| {
            let e = edge.clone();
            tokio::spawn(async move { e.get_with(path, &[("accept-encoding", "gzip")]).await })
        })
        .collect();
    for viewer in crowd {
        let r = viewer.await.expect("viewer task");
        assert_eq!(r.h("content-encoding"), "gzip");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_end(&mut out)
            .expect("a gzip body");
        assert!(out == text.as_bytes(), "a viewer got other bytes");
    }
    assert_eq!(
        api.metric("vedge_manifest_gzip_codings_total").await,
        1,
        "the shared manifest was coded once for the crowd"
    );
    assert_eq!(
        api.metric("vedge_manifest_offloaded_total").await,
        1,
        "coded off the workers, under the manifest work's bound"
    );
    assert_eq!(api.metric("vedge_manifest_compressed_total").await, 12);
    assert_eq!(origin.count(path), 1);
}

/// Bug: an element inside an MPD's `BaseURL` (or `Location`) ended the scan's reading of its
/// text, so `<BaseURL>http://evil.example/<x/></BaseURL>` set no base at all and the relative
/// segment URLs under it got the viewer's token, while a player reads the element's whole
/// text (mpd-parser: `http://evil.example/seg_00001.m4s?hdnts=...`) and sent that host the
/// token. Now the text ends at the element's own end tag, and markup in it makes the URL not
/// certainly this host: no token under it.
#[tokio::test]
async fn markup_inside_a_base_url_gives_no_other_host_the_token() {
    use crate::support::token::{raw_token, token_edge, token_for};

    let origin = Origin::start().await;
    let mpd = |base: &str| {
        format!(
            "<?xml version=\"1.0\"?><MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\">\
{base}<Period id=\"p0\"><AdaptationSet mimeType=\"video/mp4\"><SegmentTemplate \
media=\"seg_$Number%05d$.m4s\" initialization=\"init_$RepresentationID$.mp4\" duration=\"2\" \
timescale=\"1\"/><Representation id=\"v0\" bandwidth=\"1\"/></AdaptationSet></Period></MPD>"
        )
    };
    let cases = [
        (
            "/v/child.mpd",
            "<BaseURL>http://evil.example/<x/></BaseURL>",
        ),
        (
            "/v/split.mpd",
            "<BaseURL>http://<b>evil</b>.example/</BaseURL>",
        ),
        (
            "/v/loc.mpd",
            "<Location>http://evil.example/m.mpd<x/></Location>",
        ),
        ("/v/plain.mpd", "<BaseURL>seg/</BaseURL>"),
    ];
    for (path, base) in cases {
        origin.script(
            path,
            Script::ok(mpd(base)).header("content-type", "application/dash+xml"),
        );
    }
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/*", None);
    for (path, base) in cases {
        let r = edge.get(&format!("{path}?hdnts={t}")).await;
        assert_eq!(r.status.as_u16(), 200, "{path}");
        let body = String::from_utf8_lossy(&r.body);
        let tokened = body.contains("seg_$Number%05d$.m4s?hdnts=");
        if path == "/v/plain.mpd" {
            assert!(tokened, "the rewrite ran for a same-host base: {body}");
        } else {
            assert!(
                !tokened,
                "{base}: the segments under it got the token: {body}"
            );
        }
    }
}

/// Bug: `OPTIONS *` over HTTP/2 (`:path` `*`, RFC 9113 §8.3.1) was refused 400 ("path does not
/// start with `/`"), where over HTTP/1.1 it was answered: the h2 request's URI carries the
/// scheme and authority, so the check for the asterisk-form never matched. And `Max-Forwards`
/// on an `OPTIONS` was passed on as it came: with 0 the origin was asked (RFC 9110 §7.6.2:
/// the proxy answers it itself), otherwise not decremented.
#[tokio::test]
async fn options_star_over_h2_and_max_forwards_are_honoured() {
    use http_body_util::{BodyExt, Empty};

    let origin = Origin::start().await;
    origin.script("/mf/a.ts", Script::ok("").header("allow", "GET, OPTIONS"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let mut send = edge.h2().await;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(edge.addr.to_string())
        .path_and_query("*")
        .build()
        .expect("uri");
    let req = http::Request::options(uri)
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = send.send_request(req).await.expect("answer");
    let status = r.status();
    let allow = r.headers().get("allow").cloned();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(allow.is_some_and(|a| a.to_str().is_ok_and(|a| a.contains("GET"))));
    assert_eq!(origin.count("*"), 0);

    // Max-Forwards: 0 is this edge's to answer; 5 reaches the origin as 4.
    let options = |mf: &'static str| {
        edge.send(
            edge.req(Method::OPTIONS, "/mf/a.ts")
                .header("max-forwards", mf),
            bytes::Bytes::new(),
        )
    };
    let zero = options("0").await;
    assert_eq!(zero.status, 200);
    assert!(zero.h("allow").contains("GET"), "{}", zero.h("allow"));
    assert_eq!(origin.count("/mf/a.ts"), 0, "Max-Forwards: 0 was forwarded");
    let five = options("5").await;
    assert_eq!(five.status, 200);
    let seen = origin.seen("/mf/a.ts");
    let asked = seen.last().expect("the origin was asked");
    assert_eq!(asked.header("max-forwards"), Some("4"));
}

/// Bug: an HTTP/1.0 viewer (no chunked coding: the body ends at the close) whose answer broke
/// part-way (the origin died mid-body) got a clean close after the bytes that came, a short
/// body that looked whole (curl --http1.0 exited 0). Now the connection is reset: the
/// truncation shows (RFC 9112 §6.3, §9.6).
#[tokio::test]
async fn a_close_delimited_answer_cut_short_ends_in_a_reset() {
    use crate::support::Fault;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = Origin::start().await;
    let mut script = Script::ok(vec![b'x'; 256 << 10]).header("cache-control", "max-age=60");
    script.chunked = true;
    script.fault = Fault::Truncate(8 << 10);
    origin.script("/cut/a.bin", script);
    let edge = TestEdge::start(edge_config(&origin)).await;
    let mut s = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /cut/a.bin HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let end = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the answer ended");
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
    let e = end.expect_err("a short close-delimited body ended in a clean close");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
}

/// Bug: a request target in authority-form on a GET (`GET example.com:80 HTTP/1.1`, CONNECT's
/// form alone, RFC 9112 §3.2.3) was answered 200: fetched from the origin and stored as `/`.
/// Now it is refused 400 and the origin is not asked.
#[tokio::test]
async fn an_authority_form_get_is_refused() {
    let origin = Origin::start().await;
    origin.script(
        "/",
        Script::ok("root").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let raw = edge
        .raw(b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw.status(), 400, "{}", raw.text());
    assert_eq!(origin.count("/"), 0);
    let ok = edge.get("/").await;
    assert_eq!(ok.status, 200);
}

/// Bug: the access line wrote the request's path as it came, and the request line lets raw
/// UTF-8 through: `GET /log/a<U+2028>forged<U+0085>line.ts` put two characters that log
/// readers (Python's `splitlines`, JavaScript) take for line breaks into one record. Now a
/// byte outside printable ASCII is written `%XX`.
#[tokio::test]
async fn a_raw_line_separator_in_the_path_stays_in_one_access_line() {
    use crate::adversarial3::{first_access_line, serve_logging_to};
    use tokio::io::AsyncWriteExt;

    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("edge.log");
    let (port, _edge) = serve_logging_to(&origin, &log).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(
        "GET /log/a\u{2028}forged\u{85}line.ts HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"
            .as_bytes(),
    )
    .await
    .expect("send");
    crate::support::edge::read_raw(&mut s).await;
    let line = first_access_line(&log).await;
    assert!(
        !line.contains('\u{2028}') && !line.contains('\u{85}'),
        "a line break inside the record: {line:?}"
    );
    assert!(
        line.contains("/log/a%E2%80%A8forged%C2%85line.ts"),
        "{line}"
    );
}

/// Bug: an origin URL with credentials (`http://user:pass@host`) was accepted: the edge never
/// sent them (the origin saw no `Authorization`), and the URL, password included, labelled
/// the origin's series on the unauthenticated `/metrics`. Now such a config is refused at
/// start with a message saying why.
#[tokio::test]
async fn an_origin_url_with_credentials_is_refused_at_start() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vedge"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--origin", "http://edgeuser:s3cretpw@127.0.0.1:9"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vedge");
    let mut status = None;
    for _ in 0..200 {
        status = child.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("vedge started with credentials in its origin URL");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(err.contains("must not carry credentials"), "{err}");
    assert!(
        !err.contains("s3cretpw"),
        "the message repeats the password: {err}"
    );
}

/// Bug: an admin ingest keyed what it fetched by the URL's own path, ignoring the base path
/// of the route's origin. On a route `/vod/` to `http://origin/base`, ingesting
/// `http://origin/vod/a/media.m3u8` fetched `/vod/a/seg1.ts` (another file) and pinned it
/// under the key of `/vod/a/seg1.ts`, whose fill asks `/base/vod/a/seg1.ts`: every viewer got
/// the wrong bytes for a year. Now an ingest fetches only what a fill would (the origin's
/// base path included) and keys it by the viewer's path.
#[tokio::test]
async fn an_ingest_fetches_under_the_origins_base_path() {
    use crate::ingest::{finished_job, post_job};
    use crate::support::edge::{admin_post, edge_config_for};

    let origin = Origin::start().await;
    let day = ("cache-control", "max-age=86400");
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n\
#EXTINF:2.0,\nseg1.ts\n#EXT-X-ENDLIST\n";
    for base in ["/base", ""] {
        let body = if base.is_empty() { "WRONG" } else { "RIGHT" };
        origin.script(
            &format!("{base}/vod/a/media.m3u8"),
            Script::ok(playlist).header(day.0, day.1),
        );
        origin.script(
            &format!("{base}/vod/a/seg1.ts"),
            Script::ok(body).header(day.0, day.1),
        );
    }
    let mut raw = edge_config_for(format!("{}/base", origin.url()));
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let port = api.addr.port();

    // Not what any fill fetches: refused, nothing fetched.
    let outside = format!(r#"{{"assets": ["{}/vod/a/media.m3u8"]}}"#, origin.url());
    let (status, text) = admin_post(port, "/admin/ingest", &outside).await;
    assert!((400..500).contains(&status), "{status} {text}");
    assert_eq!(origin.count("/vod/a/seg1.ts"), 0);

    // Under the base: fetched from there, and a viewer's first request is a hit.
    let inside = format!(
        r#"{{"assets": ["{}/base/vod/a/media.m3u8"]}}"#,
        origin.url()
    );
    let done = finished_job(port, post_job(port, &inside).await).await;
    assert_eq!(
        done["assets"][0]["failures"],
        serde_json::json!([]),
        "{done}"
    );
    let r = edge.get("/vod/a/seg1.ts").await;
    assert_eq!(&r.body[..], b"RIGHT");
    assert_eq!(r.x_cache(), "HIT");
    let gets = origin.seen("/base/vod/a/seg1.ts");
    assert_eq!(
        gets.iter().filter(|s| s.method == "GET").count(),
        1,
        "{gets:?}"
    );
    assert_eq!(origin.count("/vod/a/seg1.ts"), 0);
}

/// Bug: a push ignored the origin's `Vary`: an ingested segment the origin answered with
/// `Vary: Accept-Language` (GERMAN without the header) was served from the push to a viewer
/// sending `Accept-Language: fr`, where a pulled copy gives each language its own variant
/// (RFC 9111 §4.1). Now an answer that varies is not pushed (the job reports why) and viewers
/// fill their own variant; a `PUT` that varies is refused.
#[tokio::test]
async fn a_varying_answer_is_not_pushed_to_every_variant() {
    use crate::ingest::{finished_job, post_job};
    use crate::support::edge::admin_send;

    let origin = Origin::start().await;
    let day = ("cache-control", "max-age=86400");
    origin.script(
        "/vod/l/media.m3u8",
        Script::ok(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n\
#EXTINF:2.0,\nsub.ts\n#EXTINF:2.0,\nplain.ts\n#EXT-X-ENDLIST\n",
        )
        .header(day.0, day.1),
    );
    origin.script(
        "/vod/l/sub.ts",
        Script::ok("GERMAN")
            .header(day.0, day.1)
            .header("vary", "Accept-Language"),
    );
    origin.script(
        "/vod/l/plain.ts",
        Script::ok("PLAIN")
            .header(day.0, day.1)
            .header("vary", "Accept-Encoding"),
    );
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    raw.routes.insert(
        0,
        vedge::config::RawRoute {
            prefix: "/vod/l/".into(),
            origin: origin.url(),
            forward_headers: Some(vec!["accept-language".into()]),
            ..Default::default()
        },
    );
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let port = api.addr.port();
    let asset = format!("{}/vod/l/media.m3u8", origin.url());
    let id = post_job(
        port,
        &format!(r#"{{"assets": ["{asset}"], "allow_partial": true}}"#),
    )
    .await;
    let done = finished_job(port, id).await;
    let failures = done["assets"][0]["failures"].to_string();
    assert!(
        failures.contains("sub.ts") && failures.contains("varies"),
        "{done}"
    );
    assert!(
        !failures.contains("plain.ts"),
        "an uncoded Vary: Accept-Encoding suits all: {done}"
    );

    // The French viewer fills its own variant.
    origin.script(
        "/vod/l/sub.ts",
        Script::ok("FRENCH")
            .header(day.0, day.1)
            .header("vary", "Accept-Language"),
    );
    let fr = edge
        .get_with("/vod/l/sub.ts", &[("accept-language", "fr")])
        .await;
    assert_eq!(&fr.body[..], b"FRENCH", "{}", fr.h("cache-status"));
    assert_eq!(edge.get("/vod/l/plain.ts").await.x_cache(), "HIT");

    let (status, text) = admin_send(
        port,
        "PUT",
        "/admin/objects/vod/l/put.ts",
        &[("vary", "Accept-Language")],
        b"one variant",
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

/// Bug: an asset purge read the asset's members from the edge's index or from the manifest in
/// its tiers, and a pulled manifest lives in RAM only: after a restart (its segments still on
/// the store) or once RAM let it go, `{"assets": [".../master.m3u8"]}` found no manifest,
/// purged nothing and answered 200 `purged: 0`, and the old segments stayed. Now a manifest
/// the edge no longer holds is asked of the origin (as a fill would ask, nothing stored), and
/// one that cannot be read is reported as `unresolved`.
#[tokio::test]
async fn an_asset_purge_reads_a_manifest_the_edge_no_longer_holds_from_the_origin() {
    use crate::support::edge::admin_purge;

    let origin = Origin::start().await;
    let day = ("cache-control", "max-age=86400");
    origin.script(
        "/vod/h/master.m3u8",
        Script::ok("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nvid/index.m3u8\n")
            .header(day.0, day.1),
    );
    origin.script(
        "/vod/h/vid/index.m3u8",
        Script::ok(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n\
#EXTINF:2.0,\ns1.ts\n#EXTINF:2.0,\ns2.ts\n#EXT-X-ENDLIST\n",
        )
        .header(day.0, day.1),
    );
    for s in ["s1", "s2"] {
        origin.script(
            &format!("/vod/h/vid/{s}.ts"),
            Script::ok(format!("{s} v1")).header(day.0, day.1),
        );
    }
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    // The segments are held; their manifests never passed through this edge.
    for s in ["s1", "s2"] {
        assert_eq!(edge.get(&format!("/vod/h/vid/{s}.ts")).await.status, 200);
    }
    edge.settle().await;
    assert_eq!(edge.get("/vod/h/vid/s1.ts").await.x_cache(), "HIT");

    let (status, answer) = admin_purge(
        api.addr.port(),
        r#"{"assets": ["/vod/h/master.m3u8"], "host": "e"}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["selected"]["assets"].as_u64().unwrap_or(0) >= 2,
        "{answer}"
    );
    assert!(answer.get("unresolved").is_none(), "{answer}");
    for s in ["s1", "s2"] {
        origin.script(
            &format!("/vod/h/vid/{s}.ts"),
            Script::ok(format!("{s} v2")).header(day.0, day.1),
        );
        let r = edge.get(&format!("/vod/h/vid/{s}.ts")).await;
        assert_eq!(r.body, format!("{s} v2").as_bytes(), "{s} was not purged");
    }
    // Nothing of the manifests was stored by the purge.
    assert_eq!(edge.get("/vod/h/master.m3u8").await.x_cache(), "MISS");

    // A manifest nobody can read is said to be so.
    let (status, answer) = admin_purge(
        api.addr.port(),
        r#"{"assets": ["/vod/gone/master.m3u8"], "host": "e"}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["unresolved"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
}

/// Bug: the README's way to filter the log, `RUST_LOG=vedge::access=info`, was ignored: only
/// `--log`/`VEDGE_LOG` were read (default `info`), so `RUST_LOG=warn,vedge::access=off` still
/// printed every access line. Now `RUST_LOG` applies when neither is given.
#[tokio::test]
async fn rust_log_filters_the_log_when_no_flag_says_otherwise() {
    use tokio::io::AsyncWriteExt;

    let origin = Origin::start().await;
    origin.script(
        "/rl/a.ts",
        Script::ok("a").header("cache-control", "max-age=60"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    for (filter, access_wanted) in [
        ("warn,vedge::access=off", false),
        ("warn,vedge::access=info", true),
    ] {
        let log = dir.path().join("edge.log");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
            l.local_addr().expect("probe addr").port()
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vedge"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--origin", &origin.url()])
            .env("RUST_LOG", filter)
            .env_remove("VEDGE_LOG")
            .stdout(std::process::Stdio::from(
                std::fs::File::create(&log).expect("log"),
            ))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn vedge");
        let _child = crate::adversarial3::Killed(child);
        let mut s = None;
        for _ in 0..200 {
            if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                s = Some(c);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut s = s.expect("vedge listens");
        s.write_all(b"GET /rl/a.ts HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        crate::support::edge::read_raw(&mut s).await;
        let mut text = String::new();
        for _ in 0..40 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if !access_wanted || text.contains("vedge::access") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !access_wanted {
            // The line is written when the body ends; give it the time it would take.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            text = std::fs::read_to_string(&log).unwrap_or_default();
        }
        assert_eq!(
            text.contains("vedge::access"),
            access_wanted,
            "RUST_LOG={filter}: {text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.contains(" INFO ") && !l.contains("vedge::access")),
            "RUST_LOG={filter} let info through: {text}"
        );
    }
}

/// Bug: a live playlist's prefetch of a segment a viewer was already fetching asked the origin
/// again: the viewer's request went out as a slice probe (`Range: bytes=0-...`, a fill keyed
/// by the first slice), and the prefetch, when the next playlist listed the segment, claimed
/// the whole-object key, found no fill there and started its own. With hls.js fetching the
/// hinted part while its blocking reload lists it, half the parts of an LL-HLS stream were
/// fetched twice (the harness printed amplification 1.44). Now a prefetch leaves an object
/// whose first slice is being fetched alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_joins_no_second_fetch_of_a_segment_a_viewer_is_fetching() {
    use crate::support::Gate;

    let origin = Origin::start().await;
    let live = |segs: &[&str]| {
        let mut p = String::from(
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n",
        );
        for s in segs {
            p.push_str(&format!("#EXTINF:2.0,\n{s}\n"));
        }
        Script::ok(p)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=1")
    };
    origin.script("/lp/media.m3u8", live(&["s1.ts"]));
    origin.script(
        "/lp/s1.ts",
        Script::ok("one").header("cache-control", "max-age=60"),
    );
    let gate = Gate::new();
    origin.script(
        "/lp/s2.ts",
        Script::ok("two")
            .header("cache-control", "max-age=60")
            .gate(&gate),
    );
    let mut raw = edge_config(&origin);
    raw.routes.insert(
        0,
        vedge::config::RawRoute {
            prefix: "/lp/".into(),
            origin: origin.url(),
            prefetch: Some("next".into()),
            ..Default::default()
        },
    );
    let edge = Arc::new(TestEdge::start(raw).await);
    assert_eq!(edge.get("/lp/media.m3u8").await.status, 200);

    // A viewer asks for the next segment before the playlist lists it; the origin holds it.
    let e = edge.clone();
    let viewer = tokio::spawn(async move { e.get("/lp/s2.ts").await });
    crate::support::edge::until("the viewer's fill asked the origin", || {
        origin.count("/lp/s2.ts") == 1
    })
    .await;
    // The playlist now lists it: the edge's prefetch sees a new segment.
    origin.script("/lp/media.m3u8", live(&["s1.ts", "s2.ts"]));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let listed = edge.get("/lp/media.m3u8").await;
    assert!(
        text(&listed.body).contains("s2.ts"),
        "{}",
        text(&listed.body)
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    gate.open();
    let r = viewer.await.expect("viewer");
    assert_eq!(&r.body[..], b"two");
    edge.settle().await;
    assert_eq!(
        origin.count("/lp/s2.ts"),
        1,
        "the segment was fetched twice"
    );
    assert_eq!(edge.get("/lp/s2.ts").await.x_cache(), "HIT");
}

/// Bug: a token's `acl` was compared with the request's normalised path byte for byte, and
/// with `escape_early` it was percent-decoded first. Akamai's generators write `acl` as given,
/// so a token for `/v/my%20show/*` was refused (`token acl`) with `escape_early` on, and one
/// for exactly the path a player asks, spelt `/v/%c3%a4/seg1.ts` or `/v/a/seg%31.ts`, was
/// refused too (the path is normalised to `%C3%A4`, `1`). Now patterns are spelt as paths are.
#[tokio::test]
async fn an_acl_matches_the_path_it_names_in_any_spelling() {
    use crate::support::token::{raw_token, token_edge, token_for};

    let origin = Origin::start().await;
    for p in ["/v/my%20show/seg1.ts", "/v/%C3%A4/seg1.ts", "/v/a/seg1.ts"] {
        origin.script(p, Script::ok("seg").header("cache-control", "max-age=60"));
    }
    for early in [false, true] {
        let mut t = raw_token();
        t.escape_early = Some(early);
        let edge = token_edge(&origin, t).await;
        for (acl, path) in [
            ("/v/my%20show/*", "/v/my%20show/seg1.ts"),
            ("/v/%c3%a4/seg1.ts", "/v/%c3%a4/seg1.ts"),
            ("/v/a/seg%31.ts", "/v/a/seg%31.ts"),
            ("/v/a/*", "/v/a/seg1.ts"),
        ] {
            let r = edge
                .get(&format!("{path}?hdnts={}", token_for(acl, None)))
                .await;
            assert_eq!(
                r.status.as_u16(),
                200,
                "escape_early={early}, acl {acl}, GET {path}: {}",
                text(&r.body)
            );
        }
        // Still only what it names.
        let r = edge
            .get(&format!(
                "/v/a/seg1.ts?hdnts={}",
                token_for("/v/my%20show/*", None)
            ))
            .await;
        assert_eq!(r.status.as_u16(), 403);
    }
}

/// Bug: on a `forward` route (the origin is sent the viewer's token) a manifest the rewrite
/// found nothing to change in went out with the origin's `Cache-Control: public`, where the
/// packager may have written the viewer's token anywhere (a session-data value, a key on
/// another host): a downstream shared cache, keying on the bare path (a header token is not in
/// the URL), could hand it to others. The HEAD of it already said `private`; the GET now too.
#[tokio::test]
async fn a_forwarded_tokens_manifest_is_private_even_when_nothing_is_rewritten() {
    use crate::support::token::{raw_token, token_edge, token_for};

    let origin = Origin::start().await;
    let t = token_for("/v/*", Some("AAA"));
    origin.script(
        "/v/own.m3u8",
        Script::ok(format!(
            "#EXTM3U\n#EXT-X-SESSION-DATA:DATA-ID=\"com.example.t\",VALUE=\"{t}\"\n\
#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nhttps://keys.example/seg1.ts\n#EXT-X-ENDLIST\n"
        ))
        .header("content-type", "application/vnd.apple.mpegurl")
        .header("cache-control", "public, max-age=60"),
    );
    let mut cfg = raw_token();
    cfg.forward = Some(true);
    cfg.sources = Some(vec!["query".into(), "header".into()]);
    cfg.header = Some("x-edge-token".into());
    let edge = token_edge(&origin, cfg).await;
    for (how, r) in [
        (
            "header",
            edge.get_with("/v/own.m3u8", &[("x-edge-token", &t)]).await,
        ),
        ("query", edge.get(&format!("/v/own.m3u8?hdnts={t}")).await),
    ] {
        assert_eq!(r.status.as_u16(), 200, "{how}");
        assert!(text(&r.body).contains(&t), "{how}: the packager's copy");
        let cc = r.h("cache-control").to_ascii_lowercase();
        assert!(
            cc.contains("private") && !cc.contains("public"),
            "{how}: {cc}"
        );
    }
}

/// Bug: a stored object's head held the buffer hyper read its origin connection into: header
/// values are slices of it, and so is a small body that arrived in one read. After a large
/// transfer on the same pooled connection that buffer is hundreds of KiB, and the RAM tier
/// weighed each tiny object at its values' lengths: one client alternating a large pass with
/// a tiny new key grew the process ~600 KiB per stored object (178 MiB for 300 objects
/// weighing 0.18 MiB), so `ram_size` bounded nothing. Stored heads and single-chunk bodies are
/// now copied into their own allocations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_stored_objects_do_not_hold_the_origin_connections_read_buffer() {
    use crate::support::binary::BinaryEdge;

    let origin = Origin::start().await;
    origin.script(
        "/big/pass.bin",
        Script::ok(vec![b'p'; 2 << 20]).header("cache-control", "no-store"),
    );
    origin.script(
        "/x/tiny.txt",
        Script::ok("tiny").header("cache-control", "max-age=3600"),
    );
    let edge = BinaryEdge::start(&origin.url(), ["--ram-size", "64MiB"]);
    edge.ready().await;
    let rss_mib = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", edge.pid()))
            .expect("the edge's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmRSS")
            / 1024
    };
    // The pooled origin connection's buffer grown by a first large transfer.
    assert!(edge.get(edge.port, "/big/pass.bin").await.is_some());
    let before = rss_mib();
    let n = 200;
    for i in 0..n {
        let pass = edge.get(edge.port, "/big/pass.bin").await.expect("pass");
        assert_eq!(pass.status(), 200);
        let tiny = edge
            .get(edge.port, &format!("/x/tiny.txt?v={i}"))
            .await
            .expect("tiny");
        assert_eq!(tiny.status(), 200);
    }
    assert_eq!(edge.metric("vedge_ram_objects").await, n);
    let grown = rss_mib().saturating_sub(before);
    // The old code grew ~120 MiB here; the objects weigh under 0.2 MiB.
    assert!(
        grown < 48,
        "{n} tiny objects grew the edge {grown} MiB (weighed {} bytes)",
        edge.metric("vedge_ram_bytes").await
    );
}

/// Bug: on a `forward` token route a fill sends the origin its leader's token, and the
/// origin's refusal of that token (a 403, not storable) went to every viewer collapsed onto
/// the fill: viewer B, with a token of its own, got viewer A's refusal. A refusal (401, 403)
/// of a forwarded token is now the leader's alone, as an `Authorization` one is: the others
/// claim a fill of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_the_leaders_forwarded_token_is_the_leaders_alone() {
    use crate::support::token::{raw_token, token_for};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An origin that refuses the token with id=AAA, slowly, and serves every other.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).into_owned();
                if head.contains("seg.ts") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let answer: &[u8] = if head.contains("id=AAA") {
                    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrefused"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nCache-Control: max-age=60\r\nConnection: close\r\n\r\nseg"
                };
                let _ = s.write_all(answer).await;
            });
        }
    });
    let origin = Origin::start().await;
    let mut cfg = raw_token();
    cfg.forward = Some(true);
    let mut raw = crate::support::edge_config(&origin);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/v/".into(),
        origin: format!("http://{addr}"),
        token: Some(cfg),
        ..Default::default()
    });
    let edge = Arc::new(TestEdge::start(raw).await);
    let e = edge.clone();
    let a = tokio::spawn(async move {
        let t = token_for("/v/*", Some("AAA"));
        e.get(&format!("/v/seg.ts?hdnts={t}")).await
    });
    crate::support::edge::until("A's fill asked the origin", || {
        asked.load(Ordering::SeqCst) == 1
    })
    .await;
    let b = edge
        .get(&format!(
            "/v/seg.ts?hdnts={}",
            token_for("/v/*", Some("BBB"))
        ))
        .await;
    let a = a.await.expect("viewer A");
    assert_eq!(a.status.as_u16(), 403, "A's own refusal");
    assert_eq!(
        (b.status.as_u16(), text(&b.body).into_owned()),
        (200, "seg".to_string()),
        "B got A's refusal: {}",
        b.h("cache-status")
    );
}

/// Bug (a regression of this change set, found by a review of it): a viewer's `no-store` sent
/// every request for a large `other` object past its fresh stored slices, a whole-object fetch
/// from the origin each time, and over an expired copy it lost the copy's stale-if-error (the
/// viewer got the origin's 503). `no-store` forbids storing, not serving: a stored copy, fresh
/// or stale, whole or in slices, answers it as it answers anyone.
#[tokio::test]
async fn a_viewers_no_store_is_served_from_what_is_stored() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..(16usize << 20)).map(|i| (i % 251) as u8).collect();
    origin.script(
        "/dl/big.bin",
        Script::ok(body.clone())
            .header("cache-control", "max-age=3600")
            .header("content-type", "application/octet-stream")
            .header("etag", "\"v1\"")
            .ranged(),
    );
    origin.script(
        "/dl/sie.bin",
        Script::ok("still good").header("cache-control", "max-age=1, stale-if-error=60"),
    );
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.max_object_size = Some("128MiB".into());
    raw.cache.slice_size = Some("4MiB".into());
    let edge = TestEdge::start_with_tokio_clock(raw).await;
    assert_eq!(edge.get("/dl/big.bin").await.body.len(), body.len());
    assert_eq!(edge.get("/dl/sie.bin").await.status.as_u16(), 200);
    edge.settle().await;
    let asked = origin.count("/dl/big.bin");
    for _ in 0..3 {
        let r = edge
            .get_with("/dl/big.bin", &[("cache-control", "no-store")])
            .await;
        assert_eq!(r.body.len(), body.len());
        assert_eq!(r.x_cache(), "HIT", "{}", r.h("cache-status"));
    }
    assert_eq!(
        origin.count("/dl/big.bin"),
        asked,
        "the origin was asked again"
    );

    origin.script("/dl/sie.bin", Script::status(503, "down"));
    edge.advance(std::time::Duration::from_millis(1100)).await;
    let r = edge
        .get_with("/dl/sie.bin", &[("cache-control", "no-store")])
        .await;
    assert_eq!(
        (r.status.as_u16(), text(&r.body).into_owned()),
        (200, "still good".to_string()),
        "{}",
        r.h("cache-status")
    );
}

/// Bug (a regression of this change set): a slice probe answered `206` with a length the
/// origin does not know (`bytes 0-4194303/*`) sent the object to be fetched whole, so a cold
/// `Range: bytes=100-199` of a 64 MiB file over `max_object_size` pulled all 64 MiB on every
/// request (never stored, never remembered) and answered 200 with all of it. A cold range of
/// an object whose length is unknown now passes with its own range, as one of an object too
/// large to keep does.
#[tokio::test]
async fn a_cold_range_of_an_object_of_unknown_length_passes_with_its_range() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..(64usize << 20)).map(|i| (i % 251) as u8).collect();
    let probe = body[..4 << 20].to_vec();
    let h = |s: Script| {
        s.header("cache-control", "max-age=3600")
            .header("content-type", "video/mp4")
            .header("etag", "\"g\"")
    };
    origin.script(
        "/g/huge.mp4",
        h(Script::ok(body.clone()).ranged())
            .on_range(h(Script::status(206, probe)).header("content-range", "bytes 0-4194303/*")),
    );
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.max_object_size = Some("16MiB".into());
    raw.cache.slice_size = Some("4MiB".into());
    let edge = TestEdge::start(raw).await;
    // The first cold range passes as asked; the next fills the object whole once (the
    // cold-range rule), finds it too large to keep and remembers so; later ones pass as asked.
    let mut last = None;
    for _ in 0..4 {
        let r = edge
            .get_with("/g/huge.mp4", &[("range", "bytes=100-199")])
            .await;
        edge.settle().await;
        last = Some((r.status.as_u16(), r.h("cache-status").to_string()));
    }
    let (status, cs) = last.expect("answered");
    // This scripted origin answers every range with its first 4 MiB: the edge relays it.
    assert_eq!(status, 206, "{cs}");
    assert!(
        origin.body_bytes("/g/huge.mp4") < 96 << 20,
        "{} bytes from the origin for 4 ranges of 100 bytes",
        origin.body_bytes("/g/huge.mp4")
    );
}
