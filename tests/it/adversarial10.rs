//! Regression tests from the tenth adversarial review: an operator's push is the version every
//! viewer gets, whether or not the edge has a store, and what an ingest takes from the origin
//! is shared only when a viewer's fill of the same answer would be. Each fails on the code
//! before its fix.

use std::sync::Arc;

use crate::ingest::{finished_job, post_job};
use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::{admin_post, admin_send, edge_config, until};
use crate::support::{Gate, Origin, Script, TestEdge};

/// A body as text, for messages.
fn text(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(body)
}

/// Bug: without a `[store]` a push lives in RAM only, and the rule that a fill does not
/// replace a push made since it began was the store's alone: a viewer's fill that began
/// before a `PUT /admin/objects/...` and ended after it put the origin's bytes (unpinned) over
/// the pushed object, and every later viewer got the origin's version. Now RAM keeps the push
/// too: the fill's own viewer keeps the bytes it was sent, later viewers get the push, and a
/// fill that began after the push (refreshing it once a soft purge made it stale) still
/// replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_a_fill_in_flight_does_not_undo_a_push() {
    let path = "/v/p.m4s";
    let origin = Origin::start().await;
    let gate = Gate::new();
    let hour = ("cache-control", "max-age=3600");
    origin.script(
        path,
        Script::ok("origin bytes")
            .header(hour.0, hour.1)
            .gate(&gate),
    );
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = Arc::new(TestEdge::start(raw).await);
    assert!(edge.edge.store.is_none());
    let api = edge.admin().await;
    let port = api.addr.port();

    // A viewer's fill asks the origin, which holds its answer; the operator pushes meanwhile.
    let e = edge.clone();
    let viewer_a = tokio::spawn(async move { e.get(path).await });
    until("the fill asked the origin", || origin.count(path) == 1).await;
    let (status, answer) = admin_send(
        port,
        "PUT",
        "/admin/objects/v/p.m4s",
        &[("Content-Type", "video/mp4")],
        b"pushed bytes",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let pushed = edge.get(path).await;
    assert_eq!(text(&pushed.body), "pushed bytes", "{}", pushed.x_cache());
    gate.open();

    let a = viewer_a.await.expect("viewer a");
    assert_eq!(a.status, 200);
    assert_eq!(
        text(&a.body),
        "origin bytes",
        "the fill's viewer keeps its bytes"
    );
    edge.settle().await;
    let b = edge.get(path).await;
    assert_eq!(
        text(&b.body),
        "pushed bytes",
        "after the fill ended: {} {}",
        b.x_cache(),
        b.h("cache-status")
    );
    assert_eq!(b.x_cache(), "HIT");
    assert_eq!(origin.count(path), 1);

    // A fill that begins after the push, refreshing it once stale (a soft purge), replaces
    // it, as on the store path.
    origin.script(
        path,
        Script::ok("newer origin bytes").header(hour.0, hour.1),
    );
    let soft = format!(
        r#"{{"urls":["{path}"],"host":"{}","soft":true}}"#,
        edge.addr
    );
    let (status, answer) = admin_post(port, "/admin/purge", &soft).await;
    assert_eq!(status, 200, "{answer}");
    let refresh = edge.get(path).await;
    assert_eq!(
        text(&refresh.body),
        "newer origin bytes",
        "{}",
        refresh.x_cache()
    );
    assert_eq!(origin.count(path), 2);
    edge.settle().await;
    let c = edge.get(path).await;
    assert_eq!(text(&c.body), "newer origin bytes", "{}", c.x_cache());
    assert_eq!((c.x_cache(), origin.count(path)), ("HIT", 2));
}

/// Bug: an admin ingest stored the origin's answer with every field it had (hop-by-hop aside)
/// for a year and pinned: a `Set-Cookie` the origin gave the ingest client (a session, a load
/// balancer's sticky cookie) and `Cache-Control: private` or `no-store`, which a viewer's fill
/// never shares, went to every viewer as a HIT. Now such an object is not stored: the job
/// reports it failed, saying why, and goes on with the others; its viewers go to the origin.
#[tokio::test]
async fn an_ingest_does_not_share_what_a_fill_would_not() {
    let origin = Origin::start().await;
    let day = ("cache-control", "max-age=86400");
    origin.script(
        "/vod/media.m3u8",
        Script::ok(
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n\
#EXTINF:4,\ncookie.ts\n#EXTINF:4,\nprivate.ts\n#EXTINF:4,\nnostore.ts\n\
#EXTINF:4,\nshared.ts\n#EXT-X-ENDLIST\n",
        ),
    );
    origin.script(
        "/vod/cookie.ts",
        Script::ok("cookie segment")
            .header(day.0, day.1)
            .header("set-cookie", "session=ingest-client-secret; Path=/"),
    );
    origin.script(
        "/vod/private.ts",
        Script::ok("private segment").header("cache-control", "private, max-age=86400"),
    );
    origin.script(
        "/vod/nostore.ts",
        Script::ok("no-store segment").header("cache-control", "no-store"),
    );
    origin.script(
        "/vod/shared.ts",
        Script::ok("shared segment").header(day.0, day.1),
    );
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let port = api.addr.port();
    let asset = format!("{}/vod/media.m3u8", origin.url());
    let id = post_job(
        port,
        &format!(r#"{{"assets": ["{asset}"], "allow_partial": true}}"#),
    )
    .await;
    let done = finished_job(port, id).await;
    let report = &done["assets"][0];
    let failures: Vec<(String, String)> = report["failures"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|x| {
                    let s = |k: &str| x[k].as_str().unwrap_or_default().to_string();
                    (s("url"), s("reason"))
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, why) in [
        ("/vod/cookie.ts", "set-cookie"),
        ("/vod/private.ts", "private"),
        ("/vod/nostore.ts", "no-store"),
    ] {
        assert!(
            failures
                .iter()
                .any(|(url, reason)| url.ends_with(name) && reason.contains(why)),
            "{name} is not reported failed for {why}: {report}"
        );
    }
    assert_eq!(failures.len(), 3, "{report}");
    assert_eq!(report["outcome"], "published_partial", "{report}");

    // The job went on: the shareable segment and the playlist are served as pushed.
    for path in ["/vod/shared.ts", "/vod/media.m3u8"] {
        let before = origin.count(path);
        let r = edge.get(path).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"), "{path}");
        assert_eq!(origin.count(path), before, "{path}");
    }
    // The others are not stored: each viewer is answered by the origin, for that viewer alone.
    for path in ["/vod/cookie.ts", "/vod/private.ts", "/vod/nostore.ts"] {
        let before = origin.count(path);
        for viewer in ["viewer-1", "viewer-2"] {
            let r = edge.get_with(path, &[("user-agent", viewer)]).await;
            assert_eq!(r.status, 200);
            assert_ne!(
                r.x_cache(),
                "HIT",
                "{viewer} of {path}: {} set-cookie={:?}",
                r.h("cache-status"),
                r.h("set-cookie")
            );
        }
        assert_eq!(origin.count(path), before + 2, "{path}");
    }
}
