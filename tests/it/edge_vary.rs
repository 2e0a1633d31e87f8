//! `Vary`: each variant is cached and hit separately; `Vary: *` is never cached.

use crate::support::{edge_config, Origin, Script, TestEdge};

#[tokio::test]
async fn accept_encoding_variants_are_cached_separately() {
    let origin = Origin::start().await;
    let variant = |body: &str, coding: Option<&str>| {
        let s = Script::ok(body.to_string())
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding");
        match coding {
            Some(c) => s.header("content-encoding", c),
            None => s,
        }
    };
    origin.script("/v/manifest.mpd", variant("gzipped", Some("gzip")));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let gzip = [("accept-encoding", "gzip, deflate")];
    let identity = [("accept-encoding", "identity")];

    let r = edge.get_with("/v/manifest.mpd", &gzip).await;
    assert_eq!((r.x_cache(), &r.body[..]), ("MISS", &b"gzipped"[..]));
    edge.settle().await;

    // The origin negotiates: a viewer without gzip gets the identity body.
    origin.script("/v/manifest.mpd", variant("plain", None));
    let r = edge.get_with("/v/manifest.mpd", &identity).await;
    assert_eq!((r.x_cache(), &r.body[..]), ("MISS", &b"plain"[..]));
    edge.settle().await;

    for _ in 0..2 {
        let r = edge.get_with("/v/manifest.mpd", &gzip).await;
        assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"gzipped"[..]));
        assert_eq!(r.h("content-encoding"), "gzip");
        let r = edge.get_with("/v/manifest.mpd", &identity).await;
        assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"plain"[..]));
        assert_eq!(r.h("content-encoding"), "");
    }
    // Another spelling of "gzip accepted" is the same variant.
    let r = edge
        .get_with("/v/manifest.mpd", &[("accept-encoding", "gzip;q=1.0")])
        .await;
    assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"gzipped"[..]));
    assert_eq!(origin.count("/v/manifest.mpd"), 2);
}

#[tokio::test]
async fn vary_star_is_not_cached() {
    let origin = Origin::start().await;
    origin.script(
        "/v/star.ts",
        Script::ok("varies on everything")
            .header("cache-control", "max-age=60")
            .header("vary", "*"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for _ in 0..3 {
        let r = edge.get("/v/star.ts").await;
        assert_eq!(r.body, "varies on everything");
        assert_ne!(r.x_cache(), "HIT");
        edge.settle().await;
    }
    assert_eq!(origin.count("/v/star.ts"), 3);
    assert_eq!(edge.edge.ram.len(), 0);
}

/// The variant is what the origin is sent, line for line: a viewer sending a varied header as
/// two lines (`a` and `b`) is not keyed like one sending `a,b` on one line, which an origin
/// reading the first line only (Go's `Header.Get`) answers otherwise. Keyed alike, a viewer
/// could split another's User-Agent at its comma and have the answer to its first half stored
/// under the genuine one's variant.
#[tokio::test]
async fn a_varied_header_split_into_lines_is_its_own_variant() {
    let origin = Origin::start().await;
    origin.script(
        "/vl/a.ts",
        Script::ok("x")
            .header("cache-control", "max-age=60")
            .header("vary", "X-V"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let split = edge
        .get_with("/vl/a.ts", &[("x-v", "a"), ("x-v", "b")])
        .await;
    assert_eq!(split.x_cache(), "MISS");
    edge.settle().await;
    // (Two origin requests: the first fill did not know the object varies.)
    let fetched = origin.count("/vl/a.ts");
    let one_line = edge.get_with("/vl/a.ts", &[("x-v", "a,b")]).await;
    assert_eq!(
        one_line.x_cache(),
        "MISS",
        "the two-line answer served for one line: {}",
        one_line.h("cache-status")
    );
    edge.settle().await;
    assert_eq!(origin.count("/vl/a.ts"), fetched + 1);
    assert_eq!(
        edge.get_with("/vl/a.ts", &[("x-v", "a,b")]).await.x_cache(),
        "HIT"
    );
}

/// A `Vary` of more names than any real origin sends (here 100) is not shared: its stored head
/// could not be read back from the store past 64 KiB of names, and every fill compared each
/// name with the others. Each viewer gets the origin's answer.
#[tokio::test]
async fn a_vary_of_a_hundred_names_is_not_shared() {
    let origin = Origin::start().await;
    let names: Vec<String> = (0..100).map(|i| format!("x-h{i}")).collect();
    origin.script(
        "/vl/many.ts",
        Script::ok("x")
            .header("cache-control", "max-age=60")
            .header("vary", &names.join(", ")),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for i in 0..2 {
        let r = edge.get("/vl/many.ts").await;
        assert_eq!(r.status, 200);
        assert_ne!(r.x_cache(), "HIT", "request {i}: {}", r.h("cache-status"));
        edge.settle().await;
    }
    assert_eq!(origin.count("/vl/many.ts"), 2);
}
