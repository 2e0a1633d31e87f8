//! Large objects in slices (`cache.slice_size`): a cold range costs the slices it covers, not
//! the object; slices are cached and collapsed one by one; whole-object requests stream every
//! slice in order; origins that change the object between slices, ignore Range, or answer a
//! 206 that does not say what it carries are handled; purging the object purges its slices.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::{edge_config, until, TestEdge};
use crate::support::origin::{Gate, Origin, Script};

const MIB: usize = 1 << 20;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

/// An edge with `slice_size` slices in front of `origin`.
async fn edge_with(origin: &Origin, slice_size: &str) -> TestEdge {
    let mut raw = edge_config(origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.max_object_size = Some("128MiB".into());
    raw.cache.slice_size = Some(slice_size.into());
    TestEdge::start(raw).await
}

fn video(body: Vec<u8>, etag: &str) -> Script {
    Script::ok(body)
        .header("cache-control", "max-age=3600")
        .header("content-type", "video/mp4")
        .header("etag", etag)
        .ranged()
}

#[tokio::test]
async fn a_one_byte_range_on_a_cold_64mib_object_costs_one_slice() {
    let origin = Origin::start().await;
    let body = pattern(64 * MIB, 0);
    origin.script("/m/big.mp4", video(body.clone(), "\"v1\""));
    let edge = edge_with(&origin, "4MiB").await;

    let at = 40_000_000usize;
    let r = edge
        .get_with("/m/big.mp4", &[("range", &format!("bytes={at}-{at}"))])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.h("content-range"),
        format!("bytes {at}-{at}/{}", 64 * MIB)
    );
    assert_eq!(&r.body[..], &body[at..=at]);
    edge.settle().await;

    let seen = origin.seen("/m/big.mp4");
    assert_eq!(seen.len(), 1, "one origin request");
    let k = at / (4 * MIB);
    assert_eq!(
        seen[0].header("range"),
        Some(format!("bytes={}-{}", k * 4 * MIB, (k + 1) * 4 * MIB - 1).as_str())
    );
    assert_eq!(
        origin.body_bytes("/m/big.mp4"),
        4 * MIB,
        "one slice of bytes"
    );
}

#[tokio::test]
async fn a_range_spanning_two_slices_fetches_two() {
    let origin = Origin::start().await;
    let body = pattern(8 * MIB, 1);
    origin.script("/m/two.mp4", video(body.clone(), "\"v1\""));
    let edge = edge_with(&origin, "1MiB").await;

    let (a, b) = (MIB - 100, MIB + 100);
    let r = edge
        .get_with("/m/two.mp4", &[("range", &format!("bytes={a}-{b}"))])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &body[a..=b]);
    edge.settle().await;
    assert_eq!(origin.count("/m/two.mp4"), 2);
    assert_eq!(origin.body_bytes("/m/two.mp4"), 2 * MIB);
}

#[tokio::test]
async fn a_second_range_in_a_cached_slice_costs_nothing() {
    let origin = Origin::start().await;
    let body = pattern(8 * MIB, 2);
    origin.script("/m/again.mp4", video(body.clone(), "\"v1\""));
    let edge = edge_with(&origin, "1MiB").await;

    let r = edge
        .get_with("/m/again.mp4", &[("range", "bytes=3145728-3145827")])
        .await;
    assert_eq!(&r.body[..], &body[3145728..3145828]);
    edge.settle().await;
    let r = edge
        .get_with("/m/again.mp4", &[("range", "bytes=3200000-3300000")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(&r.body[..], &body[3200000..=3300000]);
    assert_eq!(origin.count("/m/again.mp4"), 1);
}

#[tokio::test]
async fn a_full_get_streams_every_slice_in_order() {
    let origin = Origin::start().await;
    let total = 5 * MIB + MIB / 2;
    let body = pattern(total, 3);
    origin.script("/m/full.mp4", video(body.clone(), "\"v1\""));
    let edge = edge_with(&origin, "1MiB").await;

    let r = edge.get("/m/full.mp4").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("content-length"), total.to_string());
    assert!(!r.headers.contains_key("content-range"));
    assert_eq!(r.h("etag"), "\"v1\"");
    assert!(r.body == body, "every byte, in order");
    edge.settle().await;
    let ranges: Vec<String> = origin
        .seen("/m/full.mp4")
        .iter()
        .map(|s| s.header("range").unwrap_or("").to_string())
        .collect();
    let want: Vec<String> = (0..6)
        .map(|k| format!("bytes={}-{}", k * MIB, (k + 1) * MIB - 1))
        .collect();
    assert_eq!(ranges, want, "one request per slice, in order");
    assert_eq!(origin.body_bytes("/m/full.mp4"), total);

    let again = edge.get("/m/full.mp4").await;
    assert_eq!(again.x_cache(), "HIT");
    assert!(again.body == body);
    let head = edge.req(http::Method::HEAD, "/m/full.mp4");
    let head = edge.send(head, bytes::Bytes::new()).await;
    assert_eq!(head.h("content-length"), total.to_string());
    assert_eq!(origin.count("/m/full.mp4"), 6);
}

#[tokio::test]
async fn concurrent_ranges_on_one_slice_collapse_to_one_origin_request() {
    let origin = Origin::start().await;
    let body = pattern(8 * MIB, 4);
    let gate = Gate::new();
    origin.script("/m/hot.mp4", video(body.clone(), "\"v1\"").gate(&gate));
    let edge = std::sync::Arc::new(edge_with(&origin, "1MiB").await);

    let mut viewers = Vec::new();
    for i in 0..20usize {
        let edge = edge.clone();
        viewers.push(tokio::spawn(async move {
            let a = 3 * MIB + i * 1000;
            let r = edge
                .get_with("/m/hot.mp4", &[("range", &format!("bytes={a}-{}", a + 99))])
                .await;
            (a, r)
        }));
    }
    until("the viewers collapse", || edge.collapsed() >= 19).await;
    gate.open();
    for v in viewers {
        let (a, r) = v.await.expect("viewer");
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&r.body[..], &body[a..a + 100]);
    }
    assert_eq!(origin.count("/m/hot.mp4"), 1);
}

#[tokio::test]
async fn an_etag_change_between_slices_restarts_the_object() {
    let origin = Origin::start().await;
    let v1 = pattern(3 * MIB, 5);
    let v2 = pattern(3 * MIB, 99);
    origin.script("/m/change.mp4", video(v1.clone(), "\"v1\""));
    let edge = edge_with(&origin, "1MiB").await;

    let r = edge
        .get_with("/m/change.mp4", &[("range", "bytes=0-99")])
        .await;
    assert_eq!(&r.body[..], &v1[..100]);
    edge.settle().await;

    origin.script("/m/change.mp4", video(v2.clone(), "\"v2\""));
    // Slice 1 comes back as another version: the old record and slice 0 go, and this viewer is
    // answered from the new version.
    let r = edge
        .get_with("/m/change.mp4", &[("range", "bytes=1048576-1048675")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.h("etag"), "\"v2\"");
    assert_eq!(&r.body[..], &v2[MIB..MIB + 100]);
    edge.settle().await;

    // Slice 0 of the old version is not served any more: it is fetched again.
    let r = edge.get("/m/change.mp4").await;
    assert_eq!(r.h("etag"), "\"v2\"");
    assert!(r.body == v2, "the whole new version, never a mix");
    edge.settle().await;
    // v1 slice 0, v2 slice 1, then v2 slices 0 and 2.
    assert_eq!(origin.count("/m/change.mp4"), 4);
}

#[tokio::test]
async fn an_origin_answering_200_to_a_range_is_cached_whole() {
    let origin = Origin::start().await;
    let body = pattern(6 * MIB, 6);
    origin.script(
        "/m/whole.mp4",
        Script::ok(body.clone()).header("cache-control", "max-age=3600"),
    );
    let edge = edge_with(&origin, "1MiB").await;

    let r = edge
        .get_with("/m/whole.mp4", &[("range", "bytes=2000000-2000099")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.h("content-range"),
        format!("bytes 2000000-2000099/{}", 6 * MIB)
    );
    assert_eq!(&r.body[..], &body[2000000..2000100]);
    edge.settle().await;
    let full = edge.get("/m/whole.mp4").await;
    assert_eq!(full.x_cache(), "HIT");
    assert!(full.body == body);
    assert_eq!(origin.count("/m/whole.mp4"), 1);
}

#[tokio::test]
async fn a_206_without_content_range_is_a_502() {
    let origin = Origin::start().await;
    origin.script(
        "/m/bad.mp4",
        Script::status(206, pattern(MIB, 7)).header("cache-control", "max-age=3600"),
    );
    origin.script(
        "/m/wrong.mp4",
        Script::status(206, pattern(MIB, 7))
            .header("cache-control", "max-age=3600")
            .header(
                "content-range",
                &format!("bytes {}-{}/{}", MIB, 2 * MIB - 1, 8 * MIB),
            ),
    );
    let edge = edge_with(&origin, "1MiB").await;
    let r = edge.get("/m/bad.mp4").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let r = edge
        .get_with("/m/wrong.mp4", &[("range", "bytes=0-9")])
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "a 206 of other bytes than asked"
    );
}

#[tokio::test]
async fn a_206_covering_the_whole_object_is_stored_as_a_200() {
    let origin = Origin::start().await;
    let body = pattern(300_000, 8);
    origin.script("/m/small.mp4", video(body.clone(), "\"s\""));
    let edge = edge_with(&origin, "1MiB").await;
    let r = edge.get("/m/small.mp4").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("content-length"), "300000");
    assert!(!r.headers.contains_key("content-range"));
    assert!(r.body == body);
    edge.settle().await;
    let r = edge
        .get_with("/m/small.mp4", &[("range", "bytes=10-19")])
        .await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(&r.body[..], &body[10..20]);
    assert_eq!(origin.count("/m/small.mp4"), 1);
}

/// `POST /admin/purge` with `body` on an admin listener of the edge's own.
async fn admin_purge(edge: &TestEdge, body: &str) -> (u16, serde_json::Value) {
    let api = edge.admin().await;
    crate::support::edge::admin_purge(api.addr.port(), body).await
}

#[tokio::test]
async fn slices_are_purged_with_the_base_key() {
    let origin = Origin::start().await;
    let body = pattern(4 * MIB, 9);
    origin.script("/m/purge.mp4", video(body.clone(), "\"p\""));
    let mut raw = edge_config(&origin);
    raw.cache.slice_size = Some("1MiB".into());
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let r = edge
        .get_with("/m/purge.mp4", &[("range", "bytes=2097152-2097161")])
        .await;
    assert_eq!(&r.body[..], &body[2097152..2097162]);
    edge.settle().await;
    assert_eq!(origin.count("/m/purge.mp4"), 1);

    let (status, v) = admin_purge(&edge, r#"{"urls":["/m/purge.mp4"]}"#).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["purged"].as_u64().is_some_and(|n| n >= 2),
        "the record and the slice went: {v}"
    );
    let r = edge
        .get_with("/m/purge.mp4", &[("range", "bytes=2097152-2097161")])
        .await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(origin.count("/m/purge.mp4"), 2);
}

#[tokio::test]
async fn byte_range_hls_plays_from_slices() {
    let origin = Origin::start().await;
    // One file per rendition (`ffmpeg -hls_flags single_file`): segments are byte ranges.
    let media = pattern(5 * MIB, 10);
    origin.script("/hls/v.ts", video(media.clone(), "\"m\""));
    let seg = 700_000usize;
    let mut playlist = String::from(
        "#EXTM3U\n#EXT-X-VERSION:4\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n",
    );
    let mut at = 0;
    while at < media.len() {
        let n = seg.min(media.len() - at);
        playlist.push_str(&format!("#EXTINF:4.0,\n#EXT-X-BYTERANGE:{n}@{at}\nv.ts\n"));
        at += n;
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    origin.script(
        "/hls/v.m3u8",
        Script::ok(playlist.clone())
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=60"),
    );
    let edge = edge_with(&origin, "1MiB").await;

    for round in 0..2 {
        let pl = String::from_utf8_lossy(&edge.get("/hls/v.m3u8").await.body).to_string();
        let mut lines = pl.lines();
        let mut segments = 0;
        while let Some(line) = lines.next() {
            let Some(r) = line.strip_prefix("#EXT-X-BYTERANGE:") else {
                continue;
            };
            let (n, at) = r.split_once('@').expect("n@offset");
            let (n, at): (usize, usize) = (n.parse().expect("n"), at.parse().expect("offset"));
            let uri = lines.next().expect("uri");
            let r = edge
                .get_with(
                    &format!("/hls/{uri}"),
                    &[("range", &format!("bytes={at}-{}", at + n - 1))],
                )
                .await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(&r.body[..], &media[at..at + n], "segment at {at}");
            if round == 1 {
                assert_eq!(r.x_cache(), "HIT");
            }
            segments += 1;
        }
        assert_eq!(segments, 8);
        edge.settle().await;
    }
    assert_eq!(origin.count("/hls/v.ts"), 5, "each slice once");
    assert_eq!(origin.body_bytes("/hls/v.ts"), media.len());
}

#[tokio::test]
async fn an_expired_object_is_revalidated_by_one_slice_and_keeps_its_other_slices() {
    let origin = Origin::start().await;
    let body = pattern(4 * MIB, 11);
    origin.script(
        "/m/ttl.mp4",
        Script::ok(body.clone())
            .header("cache-control", "max-age=2")
            .header("etag", "\"t\"")
            .ranged(),
    );
    let mut raw = edge_config(&origin);
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start_with_tokio_clock(raw).await;
    for at in [0, 2 * MIB] {
        let r = edge
            .get_with(
                "/m/ttl.mp4",
                &[("range", &format!("bytes={at}-{}", at + 9))],
            )
            .await;
        assert_eq!(&r.body[..], &body[at..at + 10]);
        edge.settle().await;
    }
    assert_eq!(origin.count("/m/ttl.mp4"), 2);

    edge.advance(std::time::Duration::from_secs(5)).await;
    let at = 2 * MIB;
    let r = edge
        .get_with(
            "/m/ttl.mp4",
            &[("range", &format!("bytes={at}-{}", at + 9))],
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &body[at..at + 10]);
    edge.settle().await;
    assert_eq!(origin.count("/m/ttl.mp4"), 3, "one slice renews the object");
    // The same version: slice 0 stays.
    let r = edge.get_with("/m/ttl.mp4", &[("range", "bytes=0-9")]).await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(&r.body[..], &body[..10]);
    assert_eq!(origin.count("/m/ttl.mp4"), 3);
}

/// RFC 9211 §2: one `Cache-Status` member per cache, this node's last. A response built from
/// slices names this node once, with what happened (a slice fetched now is a miss, a cached one
/// a hit, a head-only answer to a cold object a miss too), after the upstream cache's member
/// stored with the object.
#[tokio::test]
async fn a_sliced_response_has_one_cache_status_member_for_this_node() {
    let origin = Origin::start().await;
    let body = pattern(3 * MIB, 4);
    for p in ["/m/cs.mp4", "/m/cs-head.mp4"] {
        origin.script(
            p,
            video(body.clone(), "\"v1\"").header("cache-status", "shield; hit"),
        );
    }
    let edge = edge_with(&origin, "1MiB").await;
    let ours = |v: &str| -> Vec<String> {
        v.split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| m.starts_with("vedge"))
            .collect()
    };

    let r = edge
        .get_with("/m/cs.mp4", &[("range", "bytes=1048000-1049000")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &body[1048000..=1049000]);
    let cs = r.h("cache-status");
    assert!(cs.starts_with("shield; hit, "), "{cs}");
    let mine = ours(cs);
    assert_eq!(mine.len(), 1, "{cs}");
    assert!(mine[0].contains("fwd=miss"), "{cs}");
    assert_eq!(r.x_cache(), "MISS");
    edge.settle().await;

    let r = edge
        .get_with("/m/cs.mp4", &[("range", "bytes=1048000-1049000")])
        .await;
    let cs = r.h("cache-status");
    let mine = ours(cs);
    assert_eq!(mine.len(), 1, "{cs}");
    assert!(mine[0].starts_with("vedge; hit"), "{cs}");
    assert_eq!(r.x_cache(), "HIT");

    let r = edge
        .send(edge.req(Method::HEAD, "/m/cs-head.mp4"), Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cs = r.h("cache-status");
    let mine = ours(cs);
    assert_eq!(mine.len(), 1, "{cs}");
    assert!(mine[0].contains("fwd=miss"), "a cold object's head: {cs}");
}

/// A CMCD `nor` hint naming a sliced object too large to keep whole makes the edge ask for the
/// whole object once (a prefetch), which the origin answers too large; that must not turn the
/// object into hit-for-pass, which would send every viewer's ranges past its cached slices.
#[tokio::test]
async fn a_hint_for_a_large_sliced_object_never_makes_it_pass_the_cache() {
    let origin = Origin::start().await;
    let body = pattern(8 * MIB, 3);
    origin.script("/m/big.mp4", video(body.clone(), "\"v1\""));
    origin.script(
        "/m/prev.mp4",
        Script::ok("prev").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.max_object_size = Some("4MiB".into());
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;
    // The first slice, cached.
    let r = edge
        .get_with("/m/big.mp4", &[("range", "bytes=0-1023")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    edge.settle().await;
    let r = edge
        .get_with("/m/prev.mp4", &[("cmcd-request", "nor=\"big.mp4\"")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    until("the hint asked the origin for the whole object", || {
        origin.seen("/m/big.mp4").len() >= 2
    })
    .await;
    edge.settle().await;
    let r = edge
        .get_with("/m/big.mp4", &[("range", "bytes=0-1023")])
        .await;
    assert_eq!(
        (r.status, r.x_cache()),
        (StatusCode::PARTIAL_CONTENT, "HIT"),
        "{}",
        r.h("cache-status")
    );
    assert_eq!(&r.body[..], &body[..1024]);
}

/// A successful unsafe method on a sliced object's URI invalidates its slices too (RFC 9111
/// §4.4): they are stored under the object's key plus a suffix, as `Vary` variants are, and the
/// invalidation of a viewer's POST only looks past the key itself when the edge knows the key
/// has such entries.
#[tokio::test]
async fn a_successful_post_invalidates_every_slice_of_the_object() {
    let origin = Origin::start().await;
    let body = pattern(3 * MIB, 5);
    origin.script("/m/inv.mp4", video(body.clone(), "\"v1\""));
    let edge = edge_with(&origin, "1MiB").await;
    let r = edge.get("/m/inv.mp4").await;
    assert_eq!(r.status, StatusCode::OK);
    edge.settle().await;
    let before = origin.count("/m/inv.mp4");
    let r = edge
        .get_with("/m/inv.mp4", &[("range", "bytes=1500000-1500009")])
        .await;
    assert_eq!(&r.body[..], &body[1_500_000..1_500_010]);
    assert_eq!(origin.count("/m/inv.mp4"), before, "the slice was a HIT");

    let post = edge.req(http::Method::POST, "/m/inv.mp4");
    let r = edge.send(post, bytes::Bytes::from_static(b"x")).await;
    assert_eq!(r.status, StatusCode::OK);
    let after_post = origin.count("/m/inv.mp4");
    let r = edge
        .get_with("/m/inv.mp4", &[("range", "bytes=1500000-1500009")])
        .await;
    assert_eq!(&r.body[..], &body[1_500_000..1_500_010]);
    assert!(
        origin.count("/m/inv.mp4") > after_post,
        "the POST left the slice stored"
    );
}

/// `only-if-cached` (RFC 9111 §5.2.1.7) on a sliced object used to be a 504 always, even with
/// every slice stored: the slice path counted as going to the origin. Now what is stored
/// answers (whole or a range), a range reaching a slice never fetched is a 504, and neither
/// asks the origin.
#[tokio::test]
async fn only_if_cached_answers_a_sliced_object_from_its_stored_slices() {
    let origin = Origin::start().await;
    let body = pattern(4 * MIB, 4);
    origin.script("/m/oic.mp4", video(body.clone(), "\"v1\""));
    let edge = edge_with(&origin, "1MiB").await;
    let oic = ("cache-control", "only-if-cached");

    // Nothing stored yet: 504, and the origin is not asked.
    let r = edge.get_with("/m/oic.mp4", &[oic]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.count("/m/oic.mp4"), 0);

    // Slices 0 and 1 stored.
    let r = edge
        .get_with(
            "/m/oic.mp4",
            &[("range", &format!("bytes=0-{}", 2 * MIB - 1))],
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    edge.settle().await;
    assert_eq!(origin.count("/m/oic.mp4"), 2);

    let a = MIB - 10;
    let r = edge
        .get_with(
            "/m/oic.mp4",
            &[oic, ("range", &format!("bytes={a}-{}", MIB + 10))],
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(&r.body[..], &body[a..=MIB + 10]);

    let head = edge
        .req(Method::HEAD, "/m/oic.mp4")
        .header("cache-control", "only-if-cached");
    let head = edge.send(head, Bytes::new()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.h("content-length"), (4 * MIB).to_string());

    // Slice 2 was never fetched: a range reaching it, and the whole object, are 504s.
    let r = edge
        .get_with(
            "/m/oic.mp4",
            &[oic, ("range", &format!("bytes={}-", 2 * MIB - 5))],
        )
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let r = edge.get_with("/m/oic.mp4", &[oic]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    edge.settle().await;
    assert_eq!(
        origin.count("/m/oic.mp4"),
        2,
        "only-if-cached never asks the origin"
    );
}

/// An empty object from an origin that honours Range (an empty WebVTT or ID3 segment): the
/// edge's slice probe gets `416` with `Content-Range: bytes */0`, the right answer. Each viewer
/// was then passed to the origin with its own request and nothing was stored: two origin
/// requests per viewer, for ever. Now the empty object is fetched whole once, stored, and the
/// next viewers are hits.
#[tokio::test]
async fn an_empty_object_from_a_range_capable_origin_is_stored_whole() {
    let origin = Origin::start().await;
    origin.script("/m/empty.vtt", video(Vec::new(), "\"e\""));
    let edge = edge_with(&origin, "1MiB").await;
    let first = edge.get("/m/empty.vtt").await;
    assert_eq!((first.status, first.body.len()), (StatusCode::OK, 0));
    edge.settle().await;
    for _ in 0..2 {
        let r = edge.get("/m/empty.vtt").await;
        assert_eq!(
            (r.status, r.x_cache()),
            (StatusCode::OK, "HIT"),
            "{}",
            r.h("cache-status")
        );
    }
    assert_eq!(
        origin.count("/m/empty.vtt"),
        2,
        "the probe, then the whole object"
    );
}

/// A large object whose answer varies (`Vary: X-A` here; `Vary: Origin` from a CORS-enabled
/// bucket is the common case): slices carry no variant, so such an answer was a remembered
/// pass, and every request fetched the whole object from the origin (3 requests, 4 full
/// fetches). What it varies on is learnt instead: the next request fills its variant whole,
/// and the ones after are hits.
#[tokio::test]
async fn a_large_object_that_varies_is_cached_whole_per_variant() {
    let origin = Origin::start().await;
    let body = pattern(9 * MIB, 5);
    origin.script(
        "/m/varied.mp4",
        video(body.clone(), "\"v\"").header("vary", "X-A"),
    );
    let edge = edge_with(&origin, "4MiB").await;
    for round in 0..4 {
        let r = edge.get_with("/m/varied.mp4", &[("x-a", "1")]).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}");
        assert!(r.body == body, "round {round}: every byte");
        if round >= 2 {
            assert_eq!(r.x_cache(), "HIT", "round {round}: {}", r.h("cache-status"));
        }
        edge.settle().await;
    }
    assert!(
        origin.count("/m/varied.mp4") <= 3,
        "{} origin requests",
        origin.count("/m/varied.mp4")
    );
    // Another variant is its own fill, then its own hit.
    edge.get_with("/m/varied.mp4", &[("x-a", "2")]).await;
    edge.settle().await;
    let r = edge.get_with("/m/varied.mp4", &[("x-a", "2")]).await;
    assert_eq!(r.x_cache(), "HIT");
}

/// Bug: with slicing on, a cold `Range` request for an object that fits one slice but is over
/// `range_passthrough_above` (16 MiB slices and a 12 MiB object in the review; a 300 KB object
/// at `100KiB` with 4 MiB slices) made the first slice's fill a probe whose whole-object answer
/// was dropped as too large, and every viewer collapsed onto it passed to the origin on its own
/// (`detail=range-pass`), whole-object viewers included: one full origin fetch per plain GET,
/// nothing stored, the next request a miss. Any viewer could cause it by asking first with a
/// `Range` (a player's `bytes=0-1`, a suffix, a bogus `If-Range`, several ranges). Now the
/// viewers without a `Range` claim one fill between them (stored; the next request is a hit),
/// and a waiter with a `Range` of its own passes with it, as the README documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_gets_collapsed_on_a_cold_range_probe_of_a_one_slice_object_share_one_fill() {
    const PLAIN: usize = 3;
    let full = pattern(64 << 10, 7);
    let leaders: [&[(&str, &str)]; 4] = [
        &[("range", "bytes=0-1")],
        &[("range", "bytes=-1")],
        &[("range", "bytes=0-0"), ("if-range", "\"bogus\"")],
        &[("range", "bytes=0-0,5-5")],
    ];
    for leader_headers in leaders {
        let case = format!("{leader_headers:?}");
        let origin = Origin::start().await;
        let gate = Gate::new();
        origin.script("/m/one.mp4", video(full.clone(), "\"v1\"").gate(&gate));
        let mut raw = edge_config(&origin);
        raw.cache.slice_size = Some("1MiB".into());
        raw.cache.range_passthrough_above = Some("16KiB".into());
        let edge = std::sync::Arc::new(TestEdge::start(raw).await);

        let leader = {
            let e = edge.clone();
            tokio::spawn(async move { e.get_with("/m/one.mp4", leader_headers).await })
        };
        until("the probe reached the origin", || {
            origin.count("/m/one.mp4") == 1
        })
        .await;
        // Plain GETs, and one viewer with a Range of its own.
        let mut waiters: Vec<_> = (0..PLAIN)
            .map(|_| {
                let e = edge.clone();
                tokio::spawn(async move { e.get("/m/one.mp4").await })
            })
            .collect();
        let e = edge.clone();
        let ranged = tokio::spawn(async move {
            e.get_with("/m/one.mp4", &[("range", "bytes=100-199")])
                .await
        });
        until("every waiter joined the probe", || {
            edge.collapsed() as usize == PLAIN + 1
        })
        .await;
        gate.open();

        for w in waiters.drain(..) {
            let r = w.await.expect("plain waiter");
            let status = r.h("cache-status").to_string();
            assert_eq!(r.status, StatusCode::OK, "{case}: {status}");
            assert!(r.body == full, "{case}: every byte");
            // From the one fill (`fwd=miss`), or stored once it ended (a hit): never a pass.
            assert!(
                !status.contains("range-pass") && !status.contains("fwd=bypass"),
                "{case}: a plain GET passed: {status}"
            );
        }
        let r = ranged.await.expect("ranged waiter");
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{case}");
        assert_eq!(&r.body[..], &full[100..200], "{case}");
        let l = leader.await.expect("leader");
        assert!(l.status.is_success(), "{case}: leader {}", l.status);

        // The probe, the leader's own pass, the ranged waiter's pass, and one fill for the
        // plain GETs; none of them fetched the object whole without a Range.
        edge.settle().await;
        let seen = origin.seen("/m/one.mp4");
        let unranged = seen.iter().filter(|s| s.header("range").is_none()).count();
        assert_eq!(
            (seen.len(), unranged),
            (4, 0),
            "{case}: origin requests (all, without a Range)"
        );
        let next = edge.get("/m/one.mp4").await;
        assert_eq!(
            (next.status, next.x_cache()),
            (StatusCode::OK, "HIT"),
            "{case}: {}",
            next.h("cache-status")
        );
    }
}

/// `Last-Modified` of a version: a date long before the `Date` the origin sends (strong for a
/// cache, RFC 9110 §8.8.2.2).
fn modified(version: u8) -> String {
    format!("Mon, 01 Jan 2024 00:00:0{version} GMT")
}

/// Bug: slices were joined when their `ETag`s matched, and a weak `ETag` was compared like a
/// strong one while `Last-Modified` was ignored: an origin whose `W/"fixed"` stays the same while
/// the bytes and `Last-Modified` change had slice 0 of the old version stitched to the new
/// version's other slices, and the whole response served from that mix (RFC 9111 §3.4: only
/// partial responses sharing a strong validator may be combined). Now the `Last-Modified`,
/// the strong validator here, is compared too, and the change restarts the object.
#[tokio::test]
async fn a_weak_etag_that_stays_while_last_modified_changes_never_stitches_two_versions() {
    let origin = Origin::start().await;
    let v0 = pattern(3 * MIB, 10);
    let v1 = pattern(3 * MIB, 11);
    let version = |body: &Vec<u8>, n: u8| {
        video(body.clone(), "W/\"fixed\"").header("last-modified", &modified(n))
    };
    let path = "/m/weakfix.mp4";
    origin.script(path, version(&v0, 0));
    let edge = edge_with(&origin, "1MiB").await;

    let r = edge.get_with(path, &[("range", "bytes=0-9")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &v0[..10]);
    edge.settle().await;
    // Still sliced: the `Last-Modified` is a strong validator.
    assert_eq!(
        origin.seen(path)[0].header("range"),
        Some(format!("bytes=0-{}", MIB - 1).as_str())
    );

    origin.script(path, version(&v1, 1));
    let at = 2 * MIB;
    let r = edge
        .get_with(path, &[("range", &format!("bytes={at}-{}", at + 9))])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &v1[at..at + 10]);
    edge.settle().await;

    let r = edge.get(path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.h("last-modified"), modified(1));
    assert!(r.body == v1, "the whole new version, never a mix");
    edge.settle().await;
    let again = edge.get(path).await;
    assert!(again.body == v1, "what is kept is one version");
}

/// Bug: an object without a strong validator (none at all, a weak `ETag` only, or a
/// `Last-Modified` within the second of its `Date`) was sliced, and slices of two versions of
/// the same length were joined: after the origin changed it, a viewer got slice 0 of the old
/// version followed by the new version's other slices, and that mix was served as a HIT from
/// then on. Now such an object is not sliced: the probe's 206 is dropped and the object
/// fetched and cached whole, as for an origin that ignores `Range`.
#[tokio::test]
async fn an_object_without_a_strong_validator_is_cached_whole_not_sliced() {
    let origin = Origin::start().await;
    let weak_date = modified(0);
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("/m/noval.mp4", &[]),
        ("/m/weaketag.mp4", &[("etag", "W/\"w\"")]),
        (
            "/m/samesecond.mp4",
            &[("last-modified", &weak_date), ("date", &weak_date)],
        ),
    ];
    let edge = edge_with(&origin, "1MiB").await;
    for (seed, (path, validators)) in cases.into_iter().enumerate() {
        let v0 = pattern(3 * MIB, 20 + seed as u8);
        let v1 = pattern(3 * MIB, 40 + seed as u8);
        let version = |body: &Vec<u8>| {
            validators
                .iter()
                .fold(video_without_validators(body.clone()), |s, (k, v)| {
                    s.header(k, v)
                })
        };
        origin.script(path, version(&v0));

        let r = edge.get_with(path, &[("range", "bytes=0-9")]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{path}");
        assert_eq!(&r.body[..], &v0[..10], "{path}");
        edge.settle().await;

        origin.script(path, version(&v1));
        let at = 2 * MIB;
        let ranged = edge
            .get_with(path, &[("range", &format!("bytes={at}-{}", at + 9))])
            .await;
        edge.settle().await;
        let whole = edge.get(path).await;
        assert!(whole.body == v0, "{path}: one version, never a mix");
        assert_eq!(whole.x_cache(), "HIT", "{path}");
        assert_eq!(ranged.x_cache(), "HIT", "{path}");
        assert_eq!(&ranged.body[..], &v0[at..at + 10], "{path}");
        let seen = origin.seen(path);
        assert_eq!(seen.len(), 2, "{path}: the probe, then the whole object");
        assert_eq!(seen[1].header("range"), None, "{path}: fetched whole");
    }
}

/// Bug: an object without a strong validator was sliced whatever its size (and could be joined
/// from two versions). Now it is not sliced; one larger than `cache.max_object_size` cannot be
/// kept whole either, so each viewer's range goes to the origin as it was asked, and the next
/// viewers skip the probe (hit-for-pass).
#[tokio::test]
async fn an_unsliceable_object_too_large_to_keep_passes_each_range() {
    let origin = Origin::start().await;
    let body = pattern(3 * MIB, 60);
    let path = "/m/unsliceable.mp4";
    origin.script(path, video_without_validators(body.clone()));
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.max_object_size = Some("2MiB".into());
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;

    for (a, b) in [(100, 199), (2 * MIB + 5, 2 * MIB + 9)] {
        let r = edge
            .get_with(path, &[("range", &format!("bytes={a}-{b}"))])
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.h("content-range"), format!("bytes {a}-{b}/{}", 3 * MIB));
        assert_eq!(&r.body[..], &body[a..=b]);
        edge.settle().await;
    }
    let ranges: Vec<String> = origin
        .seen(path)
        .iter()
        .map(|s| s.header("range").unwrap_or("").to_string())
        .collect();
    let want = [
        format!("bytes=0-{}", MIB - 1),
        "bytes=100-199".to_string(),
        format!("bytes={}-{}", 2 * MIB + 5, 2 * MIB + 9),
    ];
    assert_eq!(ranges, want, "the probe, then each viewer's own range");
}

/// A range-capable origin's video without `ETag` or `Last-Modified`.
fn video_without_validators(body: Vec<u8>) -> Script {
    Script::ok(body)
        .header("cache-control", "max-age=3600")
        .header("content-type", "video/mp4")
        .ranged()
}

/// Bug: viewers seeking at once into different slices of a cold object without a strong
/// validator (an nginx-like `W/` tag) each had a slice fill of their own, and each of those,
/// finding the object unsliceable, fetched the whole object under its slice's key: 8 viewers,
/// 8 downloads of the whole object. They now look again and share one whole-object fill.
#[tokio::test]
async fn a_seek_burst_on_an_unsliceable_object_fetches_it_whole_once() {
    const VIEWERS: usize = 8;
    let origin = Origin::start().await;
    let body = pattern(VIEWERS * MIB, 70);
    let path = "/m/weak-burst.mp4";
    let gate = Gate::new();
    origin.script(
        path,
        video_without_validators(body.clone())
            .header("etag", "W/\"5f3a-800000\"")
            .gate(&gate),
    );
    let edge = std::sync::Arc::new(edge_with(&origin, "1MiB").await);
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|i| {
            let e = edge.clone();
            let at = i * MIB + 100;
            tokio::spawn(async move {
                let r = e
                    .get_with(path, &[("range", &format!("bytes={at}-{}", at + 999))])
                    .await;
                (at, r)
            })
        })
        .collect();
    until("every viewer's slice probe reached the origin", || {
        origin.count(path) == VIEWERS
    })
    .await;
    gate.open();
    for v in viewers {
        let (at, r) = v.await.expect("viewer task");
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{at}");
        assert_eq!(&r.body[..], &body[at..at + 1000], "{at}");
    }
    edge.settle().await;
    let whole = origin
        .seen(path)
        .iter()
        .filter(|s| s.header("range").is_none())
        .count();
    assert_eq!(whole, 1, "the object fetched whole once, for every viewer");
    assert_eq!(edge.get(path).await.x_cache(), "HIT");
}
