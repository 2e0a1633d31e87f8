//! Regression tests from the second adversarial review of the request path: each proves one
//! rule the first review left as a suspicion, and fails on the code before its fix.

use crate::support::{edge_config, Gate, Origin, Script, TestEdge};

fn body(n: usize) -> bytes::Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// A cold Range probe that turns out too large passes its Range viewers through; viewers
/// without a Range who collapsed onto it want the whole object and share one whole-object fill,
/// not one whole-object origin fetch each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_object_viewers_collapsed_on_a_cold_range_probe_share_one_origin_fill() {
    let origin = Origin::start().await;
    let full = body(64 << 10);
    let gate = Gate::new();
    origin.script(
        "/v/big.mp4",
        Script::ok(full.clone())
            .header("cache-control", "max-age=60")
            .gate(&gate)
            .ranged(),
    );
    let mut raw = edge_config(&origin);
    raw.cache.range_passthrough_above = Some("16KiB".into());
    raw.cache.slice_size = Some("0".into());
    let edge = std::sync::Arc::new(TestEdge::start(raw).await);

    let probe = {
        let edge = edge.clone();
        tokio::spawn(async move {
            edge.get_with("/v/big.mp4", &[("range", "bytes=0-99")])
                .await
        })
    };
    crate::support::until("the probe reached the origin", || {
        origin.count("/v/big.mp4") == 1
    })
    .await;
    let n = 8;
    let viewers: Vec<_> = (0..n)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get("/v/big.mp4").await })
        })
        .collect();
    crate::support::until("every viewer collapsed onto the probe", || {
        edge.collapsed() >= n
    })
    .await;
    gate.open();
    let r = probe.await.expect("probe");
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &full[..100]);
    for v in viewers {
        let r = v.await.expect("viewer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, full);
    }
    // The probe, the Range pass-through and one whole-object fill for the eight viewers.
    let whole = origin
        .seen("/v/big.mp4")
        .iter()
        .filter(|s| s.header("range").is_none())
        .count();
    assert_eq!(whole, 2, "the probe and one whole-object fill");
    assert_eq!(origin.count("/v/big.mp4"), 3);
}

const LIVE: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
#EXTINF:2.0,\ns0.ts\n#EXT-X-PART:DURATION=1.0,URI=\"secret/p1.0.m4s\"\n\
#EXT-X-PART:DURATION=1.0,URI=\"p1.1.m4s\"\n";

/// An edge with the open route `/` (prefetch on) and, on the same host, the route `/v/secret/`
/// that refuses every loopback viewer (prefetch on as well).
fn two_routes(origin: &Origin) -> vedge::config::RawConfig {
    let mut raw = crate::llhls::config_for(&origin.url(), "all-new");
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/v/secret/".into(),
        origin: origin.url(),
        prefetch: Some("all-new".into()),
        deny_ips: Some(vec!["127.0.0.0/8".into()]),
        ..Default::default()
    });
    raw
}

/// A live playlist of one route naming a URI of another route on the same host: prefetch has
/// no viewer to check against that route's rules (here: no loopback viewer may use it), so it
/// fills only what the playlist's own route serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_never_fills_an_object_of_another_route_than_the_playlists() {
    let origin = Origin::start().await;
    origin.script(
        "/v/live.m3u8",
        Script::ok(LIVE).header("cache-control", "max-age=1"),
    );
    for p in ["/v/s0.ts", "/v/p1.1.m4s", "/v/secret/p1.0.m4s"] {
        origin.script(
            p,
            Script::ok(body(1000)).header("cache-control", "max-age=60"),
        );
    }
    let edge = TestEdge::start(two_routes(&origin)).await;
    assert_eq!(edge.get("/v/live.m3u8").await.status, 200);
    crate::support::until("the playlist's own objects are prefetched", || {
        origin.count("/v/s0.ts") == 1 && origin.count("/v/p1.1.m4s") == 1
    })
    .await;
    crate::support::until("no fill in flight", || edge.edge.fills.is_empty()).await;
    assert_eq!(origin.count("/v/secret/p1.0.m4s"), 0);
    // And the other route still refuses the viewer its rules refuse.
    assert_eq!(edge.get("/v/secret/p1.0.m4s").await.status, 403);
    assert_eq!(origin.count("/v/secret/p1.0.m4s"), 0);
}

/// A prefetch's origin answer other than a success (a 403 to the edge's own, viewerless
/// request) is not kept: the next viewer asks the origin for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_refusal_of_a_prefetch_is_never_served_from_the_cache() {
    let origin = Origin::start().await;
    origin.script(
        "/v/live.m3u8",
        Script::ok(LIVE).header("cache-control", "max-age=1"),
    );
    origin.script(
        "/v/s0.ts",
        Script::status(403, "forbidden").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(crate::llhls::config_for(&origin.url(), "all-new")).await;
    assert_eq!(edge.get("/v/live.m3u8").await.status, 200);
    crate::support::until("the segment was prefetched", || {
        origin.count("/v/s0.ts") == 1
    })
    .await;
    crate::support::until("no fill in flight", || edge.edge.fills.is_empty()).await;
    origin.script(
        "/v/s0.ts",
        Script::ok(body(1000)).header("cache-control", "max-age=60"),
    );
    let r = edge.get("/v/s0.ts").await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert_eq!(origin.count("/v/s0.ts"), 2);
}

/// A playlist claiming a target duration of almost a day: a blocking reload the origin does not
/// answer is held no longer than `live.max_hold` (503), not three of the origin's target
/// durations (before, it ran into the origin's first-byte timeout instead: a 504 after 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_hold_is_capped_by_live_max_hold_whatever_the_target_duration() {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:86000\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:5\n\
#EXTINF:86000.0,\ns5.ts\n#EXTINF:86000.0,\ns6.ts\n";
    origin.script(
        "/h/m.m3u8",
        Script::ok(playlist).header("cache-control", "max-age=60"),
    );
    let mut raw = crate::llhls::config_for(&origin.url(), "off");
    raw.cache.collapse_timeout = Some("60s".into());
    raw.live.max_hold = Some("1s".into());
    let edge = TestEdge::start(raw).await;
    assert_eq!(edge.get("/h/m.m3u8").await.status, 200);
    let key = format!("http|{}|/h/m.m3u8", origin.addr());
    crate::support::until("the playlist's latest copy is recorded", || {
        vedge::proxy::llhls::playlist_of(&edge.edge, &key).is_some_and(|p| p.latest().is_some())
    })
    .await;
    // The origin holds the next reload longer than its own first-byte timeout allows.
    origin.script(
        "/h/m.m3u8",
        Script::ok(playlist)
            .header("cache-control", "max-age=60")
            .head_delay(std::time::Duration::from_secs(30)),
    );
    let r = edge.get("/h/m.m3u8?_HLS_msn=7").await;
    assert_eq!(r.status, 503, "{}", r.h("cache-status"));
    assert!(r.h("cache-status").contains("llhls-hold"));
}

/// Live state is bounded in bytes, not only by count: distinct kept query strings on a long
/// live playlist each make a state of their own with a window of a thousand members, and the
/// states weigh no more than `live.state_memory` however many there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_state_of_many_long_playlists_stays_within_live_state_memory() {
    let origin = Origin::start().await;
    let mut playlist = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
    for i in 0..1000 {
        playlist.push_str(&format!(
            "#EXTINF:2.0,\nsegment_of_a_long_dvr_window_{i:06}.ts\n"
        ));
    }
    origin.script(
        "/d/m.m3u8",
        Script::ok(playlist).header("cache-control", "max-age=60"),
    );
    let mut raw = crate::llhls::config_for(&origin.url(), "all-new");
    raw.live.state_memory = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;
    for v in 0..12 {
        let r = edge.get(&format!("/d/m.m3u8?v={v}")).await;
        assert_eq!(r.status, 200);
        edge.settle().await;
        let bytes = edge.edge.live.state_bytes();
        assert!(bytes <= 1 << 20, "{bytes} bytes of live state after {v}");
    }
    // The newest playlist's state is kept (and weighed: a window of 1,000 members), the oldest
    // forgotten (before, all twelve were kept: the map was bounded by count only).
    let key = |v: u32| format!("http|{}|/d/m.m3u8?v={v}", origin.addr());
    assert!(vedge::proxy::llhls::playlist_of(&edge.edge, &key(11)).is_some());
    assert!(vedge::proxy::llhls::playlist_of(&edge.edge, &key(0)).is_none());
    assert!(edge.edge.live.state_bytes() > 100 << 10);
}

/// A flood of distinct values of a varied header: each is a variant of its own, and past
/// `MAX_VARIANTS` (64) of one object new ones are answered from their fill but not stored, so
/// they cannot push the rest of the RAM tier out (before, every one was stored).
#[tokio::test]
async fn variants_of_one_object_past_the_cap_are_answered_but_not_stored() {
    use vedge::proxy::vary_cap::MAX_VARIANTS;
    let origin = Origin::start().await;
    origin.script(
        "/v/obj.json",
        Script::ok("x")
            .header("cache-control", "max-age=60")
            .header("vary", "X-Device"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    // The variant without the header is one of the 64 (the first fill, which did not yet know
    // the object varies, also asked without it).
    assert_eq!(edge.get("/v/obj.json").await.status, 200);
    edge.settle().await;
    let n = MAX_VARIANTS + 5;
    for round in 0..2 {
        for i in 0..n {
            let device = format!("d{i}");
            let r = edge
                .get_with("/v/obj.json", &[("x-device", device.as_str())])
                .await;
            assert_eq!(r.status, 200);
            let stored = i < MAX_VARIANTS - 1;
            if round == 1 {
                assert_eq!(r.x_cache() == "HIT", stored, "variant {i}");
            }
            edge.settle().await;
        }
    }
    // Each variant once, and the six past the cap once more.
    assert_eq!(origin.count("/v/obj.json"), 1 + n + 6);
    assert_eq!(
        edge.edge
            .metrics
            .abuse
            .vary_limit
            .load(std::sync::atomic::Ordering::Relaxed),
        12
    );
}
