//! Manifests gzip-coded at the edge (`cache.compress_manifests`): for viewers that accept gzip,
//! when the origin sent them uncoded; stored copies, ranges and every other viewer unchanged.

use std::io::Read;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::edge::{edge_config, Resp, TestEdge};
use crate::support::origin::{Origin, Script};

/// A VOD media playlist of `n` segments (about 30 bytes each).
fn playlist(n: usize) -> String {
    let mut p = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n");
    for i in 0..n {
        p.push_str(&format!("#EXTINF:6.000,\nseg_{i:05}.ts\n"));
    }
    p.push_str("#EXT-X-ENDLIST\n");
    p
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

async fn edge(origin: &Origin, on: bool) -> TestEdge {
    let mut raw = edge_config(origin);
    raw.cache.compress_manifests = Some(on);
    TestEdge::start(raw).await
}

fn script(body: &str, cc: &str) -> Script {
    Script::ok(body.to_string())
        .header("content-type", "application/vnd.apple.mpegurl")
        .header("cache-control", cc)
        .header("etag", "\"p1\"")
}

const GZIP: (&str, &str) = ("accept-encoding", "gzip, deflate, br");

#[tokio::test]
async fn a_playlist_is_sent_gzip_coded_to_viewers_that_accept_it() {
    let origin = Origin::start().await;
    let text = playlist(400);
    origin.script("/v/media.m3u8", script(&text, "max-age=60"));
    let edge = edge(&origin, true).await;

    let r = edge.get_with("/v/media.m3u8", &[GZIP]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("content-encoding"), "gzip");
    assert_eq!(r.h("content-length"), r.body.len().to_string());
    assert!(
        r.body.len() * 4 < text.len(),
        "{} of {}",
        r.body.len(),
        text.len()
    );
    assert_eq!(gunzip(&r.body), text.as_bytes());
    assert!(
        r.h("vary").eq_ignore_ascii_case("accept-encoding"),
        "{}",
        r.h("vary")
    );
    assert_eq!(r.h("etag"), "W/\"p1\"");
    assert!(r.headers.get("accept-ranges").is_none());
    edge.settle().await;

    // A hit: the same coded bytes, compressed once.
    let again = edge.get_with("/v/media.m3u8", &[GZIP]).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(again.body, r.body);
    assert_eq!(
        edge.edge
            .metrics
            .manifests
            .compressed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // A viewer without gzip gets the stored bytes, told they vary.
    let plain = edge.get("/v/media.m3u8").await;
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(plain.body, text.as_bytes());
    assert_eq!(plain.h("etag"), "\"p1\"");
    assert!(plain.h("vary").eq_ignore_ascii_case("accept-encoding"));
    let refused = edge
        .get_with("/v/media.m3u8", &[("accept-encoding", "br, gzip;q=0")])
        .await;
    assert!(refused.headers.get("content-encoding").is_none());

    // The weak ETag revalidates; a Range is answered from the stored bytes, uncoded.
    let r304 = edge
        .get_with("/v/media.m3u8", &[GZIP, ("if-none-match", "W/\"p1\"")])
        .await;
    assert_eq!(r304.status, StatusCode::NOT_MODIFIED);
    let part = edge
        .get_with("/v/media.m3u8", &[GZIP, ("range", "bytes=0-6")])
        .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&part.body[..], b"#EXTM3U");
    assert!(part.headers.get("content-encoding").is_none());

    // A HEAD says how a GET would come.
    let head = edge
        .send(
            edge.req(Method::HEAD, "/v/media.m3u8")
                .header(GZIP.0, GZIP.1),
            Bytes::new(),
        )
        .await;
    assert_eq!(head.h("content-encoding"), "gzip");
    assert!(head.body.is_empty());
    assert_eq!(origin.count("/v/media.m3u8"), 1);
}

#[tokio::test]
async fn only_uncoded_manifests_without_no_transform_are_coded_and_only_when_on() {
    let origin = Origin::start().await;
    let text = playlist(100);
    origin.script("/v/a.m3u8", script(&text, "max-age=60"));
    origin.script("/v/nt.m3u8", script(&text, "max-age=60, no-transform"));
    origin.script(
        "/v/seg.ts",
        Script::ok(text.clone())
            .header("content-type", "video/mp2t")
            .header("cache-control", "max-age=60"),
    );
    origin.script("/v/tiny.m3u8", script("#EXTM3U\n", "max-age=60"));
    let mpd = format!(
        "<?xml version=\"1.0\"?><MPD type=\"static\">{}</MPD>",
        "<Period/>".repeat(200)
    );
    origin.script(
        "/v/x.mpd",
        Script::ok(mpd.clone())
            .header("content-type", "application/dash+xml")
            .header("cache-control", "max-age=60"),
    );
    let on = edge(&origin, true).await;
    for p in ["/v/nt.m3u8", "/v/seg.ts", "/v/tiny.m3u8"] {
        let r = on.get_with(p, &[GZIP]).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        assert!(r.headers.get("content-encoding").is_none(), "{p}");
    }
    let r = on.get_with("/v/x.mpd", &[GZIP]).await;
    assert_eq!(r.h("content-encoding"), "gzip");
    assert_eq!(gunzip(&r.body), mpd.as_bytes());

    // Off (the default): the origin's bytes as they are.
    let off = edge(&origin, false).await;
    let r = off.get_with("/v/a.m3u8", &[GZIP]).await;
    assert!(r.headers.get("content-encoding").is_none());
    assert!(r.headers.get("vary").is_none());
    assert_eq!(r.body, text.as_bytes());
}

/// The fields RFC 9110 says a HEAD (§9.3.2) and a 304 (§15.4.5) share with the 200 they
/// stand for: coding, validator, `Vary`.
fn fields(r: &Resp) -> [Option<String>; 3] {
    ["content-encoding", "etag", "vary"].map(|n| field(r, n))
}

/// Every value of `name`, joined as one list; `None` when absent.
fn field(r: &Resp, name: &str) -> Option<String> {
    let values: Vec<&str> = r
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("a text value"))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Bug: with `compress_manifests` on, a HEAD was always answered as coded (`gzip`, weak ETag)
/// while a GET of a playlist under 512 bytes came identity with the strong ETag; and a 304 kept
/// the stored fields: no `Vary: Accept-Encoding` and the strong ETag, where the 200 to the same
/// request carried `Vary` and the weak one. Now a HEAD and a 304 carry what the GET's 200 would.
#[tokio::test]
async fn head_and_304_carry_the_fields_of_the_200_they_stand_for() {
    let origin = Origin::start().await;
    let (small, big) = (playlist(2), playlist(100));
    assert!(small.len() < 512 && big.len() > 2048);
    origin.script("/v/small.m3u8", script(&small, "max-age=60"));
    origin.script("/v/big.m3u8", script(&big, "max-age=60"));
    let edge = edge(&origin, true).await;
    let head = |path: &'static str, ae: &'static str| {
        let edge = &edge;
        async move {
            let req = edge.req(Method::HEAD, path).header("accept-encoding", ae);
            edge.send(req, Bytes::new()).await
        }
    };
    for (path, coded) in [("/v/small.m3u8", false), ("/v/big.m3u8", true)] {
        for ae in ["gzip", "identity"] {
            let get = edge.get_with(path, &[("accept-encoding", ae)]).await;
            assert_eq!(get.status, StatusCode::OK);
            let coded = coded && ae == "gzip";
            assert_eq!(
                field(&get, "content-encoding").is_some(),
                coded,
                "{path} {ae}"
            );
            assert!(get.h("vary").eq_ignore_ascii_case("accept-encoding"));
            edge.settle().await;

            let h = head(path, ae).await;
            assert_eq!(h.status, StatusCode::OK);
            assert_eq!(fields(&h), fields(&get), "HEAD {path} {ae}");
            if let Some(len) = field(&h, "content-length") {
                assert_eq!(len, get.body.len().to_string(), "HEAD {path} {ae}");
            }
            // Revalidated with the ETag it was given (weak or strong).
            let etag = get.h("etag").to_string();
            let req = [("accept-encoding", ae), ("if-none-match", etag.as_str())];
            let r304 = edge.get_with(path, &req).await;
            assert_eq!(r304.status, StatusCode::NOT_MODIFIED, "{path} {ae}");
            assert_eq!(field(&r304, "etag"), field(&get, "etag"), "304 {path} {ae}");
            assert_eq!(field(&r304, "vary"), field(&get, "vary"), "304 {path} {ae}");
            assert!(r304.body.is_empty());
        }
    }
    assert_eq!(
        origin.count("/v/small.m3u8") + origin.count("/v/big.m3u8"),
        2
    );
}

/// Bug: a Range of a manifest was answered (206, from the stored bytes, uncoded) without
/// `Vary: Accept-Encoding`, while its 200 names it: a cache downstream could keep the part as
/// the representation for every viewer, and answer a gzip viewer's later Range from it or
/// merge it with parts of the coded body. Now the 206 varies as its 200 does (RFC 9110
/// §12.5.5), with or without gzip in the request.
#[tokio::test]
async fn a_range_of_a_manifest_varies_as_its_200_does() {
    let origin = Origin::start().await;
    let text = playlist(100);
    origin.script("/v/r.m3u8", script(&text, "max-age=60"));
    let edge = edge(&origin, true).await;
    assert_eq!(edge.get("/v/r.m3u8").await.status, StatusCode::OK);
    edge.settle().await;
    for ask in [
        vec![GZIP, ("range", "bytes=0-6")],
        vec![("range", "bytes=0-6")],
    ] {
        let part = edge.get_with("/v/r.m3u8", &ask).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&part.body[..], b"#EXTM3U");
        assert!(part.headers.get("content-encoding").is_none());
        assert!(
            part.h("vary").eq_ignore_ascii_case("accept-encoding"),
            "{ask:?}: vary {:?}",
            part.h("vary")
        );
    }
}

/// Bug: a manifest whose length its head does not give (chunked) was coded for a HEAD (which
/// cannot know the length, and says gzip) but sent as it is to a GET when its body turned out
/// shorter than `MIN_LEN`: the HEAD described another response than the GET's (RFC 9110
/// §9.3.2). Now the GET is decided by its head too, and such a body is coded whatever its
/// length.
#[tokio::test]
async fn a_short_chunked_manifest_is_coded_as_its_head_says() {
    let origin = Origin::start().await;
    let text = playlist(2);
    assert!(text.len() < 512);
    origin.script("/v/short.m3u8", script(&text, "no-store").chunked());
    let edge = edge(&origin, true).await;
    let head = edge
        .send(
            edge.req(Method::HEAD, "/v/short.m3u8")
                .header(GZIP.0, GZIP.1),
            Bytes::new(),
        )
        .await;
    assert_eq!(head.h("content-encoding"), "gzip");
    let get = edge.get_with("/v/short.m3u8", &[GZIP]).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(
        get.h("content-encoding"),
        "gzip",
        "the GET the HEAD stood for"
    );
    assert_eq!(gunzip(&get.body), text.as_bytes());
}
