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
