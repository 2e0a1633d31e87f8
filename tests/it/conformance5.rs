//! LL-HLS delivery directives at the edge, checked against draft-pantos-hls-rfc8216bis
//! §6.2.5 as a client or a test suite sees them: rules the edge must apply itself when it
//! answers a blocking reload from the latest copy it holds instead of asking the origin.

use crate::llhls::config_for;
use crate::support::edge::Resp;
use crate::support::{until, Origin, Script, TestEdge};

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Segment 11 complete with its two parts listed; nothing of segment 12 yet.
const SEGMENT_11_COMPLETE: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0\n#EXT-X-PART-INF:PART-TARGET=1.0\n\
#EXT-X-MEDIA-SEQUENCE:10\n#EXTINF:2.0,\ns10.m4s\n\
#EXT-X-PART:DURATION=1.0,URI=\"p11_0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=1.0,URI=\"p11_1.m4s\"\n\
#EXTINF:2.0,\ns11.m4s\n";

/// RFC 8216bis §6.2.5.2: "If the Client requests a Part Index greater than that of the final
/// Partial Segment of the Parent Segment, the Server MUST treat the request as one for Part
/// Index 0 of the following Parent Segment." Segment 11 has parts 0 and 1, so
/// `_HLS_msn=11&_HLS_part=2` asks for part 12.0: the copy without it must not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_index_past_the_parent_segments_last_waits_for_part_0_of_the_next_segment() {
    let origin = Origin::start().await;
    let path = "/roll/media.m3u8";
    let cc = ("cache-control", "max-age=30");
    origin.script(path, Script::ok(SEGMENT_11_COMPLETE).header(cc.0, cc.1));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    let first = edge.get(path).await;
    assert_eq!(first.status, 200);
    edge.settle().await;
    // The origin now has part 12.0 (the copy the edge holds does not).
    let with_12_0 = format!(
        "{SEGMENT_11_COMPLETE}#EXT-X-PART:DURATION=1.0,URI=\"p12_0.m4s\",INDEPENDENT=YES\n"
    );
    origin.script(path, Script::ok(with_12_0).header(cc.0, cc.1));

    let r = edge.get(&format!("{path}?_HLS_msn=11&_HLS_part=2")).await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert!(
        text(&r).contains("p12_0.m4s"),
        "answered with a playlist lacking part 12.0 ({}):\n{}",
        r.h("cache-status"),
        text(&r)
    );
    assert_eq!(origin.count(path), 2, "the held copy could not answer");

    // A part the parent segment has is answered from the held copy at once.
    let listed = edge.get(&format!("{path}?_HLS_msn=11&_HLS_part=1")).await;
    assert_eq!(listed.status, 200);
    assert!(listed.h("cache-status").contains("llhls-latest"));
    assert_eq!(origin.count(path), 2);
}

/// An ended playlist: segments 0 to 2 and `EXT-X-ENDLIST`.
const ENDED: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.0,PART-HOLD-BACK=3.0\n\
#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\ns0.m4s\n\
#EXTINF:2.0,\ns1.m4s\n#EXTINF:2.0,\ns2.m4s\n#EXT-X-ENDLIST\n";

/// RFC 8216bis §6.2.5.2: "A Server MUST ignore `_HLS_msn` and `_HLS_part` if the Playlist
/// contains an EXT-X-ENDLIST tag" (and §6.2.5.1 the same of `_HLS_skip`). The edge holding the
/// ended playlist answers it at once: no 400 for an msn past its end, no hold, no origin
/// request per distinct directive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_playlist_ignores_hls_msn_part_and_skip() {
    let origin = Origin::start().await;
    let path = "/ended/media.m3u8";
    origin.script(
        path,
        Script::ok(ENDED).header("cache-control", "max-age=30"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get(path).await.status, 200);
    edge.settle().await;

    for q in [
        "_HLS_msn=9",
        "_HLS_msn=3",
        "_HLS_msn=3&_HLS_part=0",
        "_HLS_msn=4&_HLS_part=1&_HLS_skip=YES",
        "_HLS_msn=2&_HLS_skip=v2",
    ] {
        let r = edge.get(&format!("{path}?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.h("cache-status"));
        assert_eq!(text(&r), ENDED, "{q}: the whole ended playlist");
    }
    assert_eq!(
        origin.count(path),
        1,
        "directives on an ended playlist need no origin request"
    );
}

/// RFC 8216bis §6.2.1: "A Partial Segment MUST be similarly available at the time it is added
/// to a Playlist", and §6.2.6: "A hinted resource MUST be available for request when its
/// EXT-X-PRELOAD-HINT tag is added to the Playlist". A 404 the edge kept from a request made a
/// moment early (the origin SHOULD answer 404 for what it has not hinted yet) must not go on
/// answering once a playlist copy through the edge lists or hints the URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_listed_or_hinted_by_a_playlist_is_available_despite_an_earlier_404() {
    let origin = Origin::start().await;
    let path = "/early/media.m3u8";
    let cc = ("cache-control", "max-age=30");
    origin.script(path, Script::ok(SEGMENT_11_COMPLETE).header(cc.0, cc.1));
    let (listed, hinted) = ("/early/p12_0.m4s", "/early/p12_1.m4s");
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get(path).await.status, 200);
    // Asked for before they exist: the origin's 404s are kept for their 30 s.
    for part in [listed, hinted] {
        origin.script(part, Script::status(404, "not yet").header(cc.0, cc.1));
        assert_eq!(edge.get(part).await.status, 404);
        edge.settle().await;
        assert_eq!(edge.get(part).await.status, 404, "{part}: the 404 is kept");
        origin.script(part, Script::ok("cmaf part").header(cc.0, cc.1));
    }
    // The origin publishes part 12.0 and hints 12.1.
    let published = format!(
        "{SEGMENT_11_COMPLETE}#EXT-X-PART:DURATION=1.0,URI=\"p12_0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p12_1.m4s\"\n"
    );
    origin.script(path, Script::ok(published).header(cc.0, cc.1));
    let r = edge.get(&format!("{path}?_HLS_msn=12&_HLS_part=0")).await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("p12_0.m4s"));
    edge.settle().await;
    for part in [listed, hinted] {
        let got = edge.get(part).await;
        assert_eq!(got.status, 200, "{part}: {}", got.h("cache-status"));
        assert_eq!(&got.body[..], b"cmaf part");
    }
}

/// Bug: a live playlist whose URIs use `EXT-X-DEFINE` variables (RFC 8216bis §4.3,
/// `{$dir}/s12.m4s`) was read by the edge with its references unsubstituted: the 404 it kept
/// from a too-early request for `segs/s12.m4s` kept answering after a copy listed the segment
/// (the drop looked for `%7B$dir%7D/...`), and prefetch asked the origin for the literal
/// `/dv/%7B$dir%7D/...` URIs. Now `NAME`/`VALUE` and `QUERYPARAM` (from the playlist request's
/// query) are substituted; a URI still holding an unresolved reference (`IMPORT`) is never
/// fetched. The viewers' bytes are the origin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_listed_through_define_variables_is_available_despite_an_earlier_404() {
    let origin = Origin::start().await;
    let path = "/dv/media.m3u8";
    let cc = ("cache-control", "max-age=30");
    let head = "#EXTM3U\n#EXT-X-VERSION:11\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-DEFINE:NAME=\"dir\",VALUE=\"segs\"\n\
#EXT-X-DEFINE:QUERYPARAM=\"p\"\n#EXT-X-DEFINE:IMPORT=\"base\"\n#EXT-X-MEDIA-SEQUENCE:10\n\
#EXTINF:2.0,\n{$dir}/{$p}10.m4s\n#EXTINF:2.0,\n{$base}/s11.m4s\n";
    origin.script(path, Script::ok(head).header(cc.0, cc.1));
    for n in [10, 12] {
        let seg = format!("/dv/segs/s{n}.m4s");
        origin.script(&seg, Script::ok(format!("seg {n}")).header(cc.0, cc.1));
    }
    let (listed, early) = ("/dv/segs/s12.m4s", Script::status(404, "not yet"));
    origin.script(listed, early.header(cc.0, cc.1));
    let edge = TestEdge::start(config_for(&origin.url(), "next")).await;
    let first = edge.get(&format!("{path}?p=s")).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        &first.body[..],
        head.as_bytes(),
        "served as the origin wrote it"
    );
    // A player asks for segment 12 before it exists: the origin's 404 is kept for its 30 s.
    assert_eq!(edge.get(listed).await.status, 404);
    edge.settle().await;
    assert_eq!(edge.get(listed).await.status, 404, "the 404 is kept");
    origin.script(listed, Script::ok("seg 12").header(cc.0, cc.1));
    // The origin publishes segment 12; a blocking reload brings the copy that lists it. (Through
    // the playlist's own variable: one a viewer's query sets is that viewer's reading and
    // touches nothing shared, `adversarial9::a_viewers_query_parameter_cannot_evict_another_object`.)
    let published = format!("{head}#EXTINF:2.0,\n{{$dir}}/s12.m4s\n");
    origin.script(path, Script::ok(published.clone()).header(cc.0, cc.1));
    let r = edge.get(&format!("{path}?p=s&_HLS_msn=12")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], published.as_bytes());
    edge.settle().await;
    let got = edge.get(listed).await;
    assert_eq!(got.status, 200, "listed segment: {}", got.h("cache-status"));
    assert_eq!(&got.body[..], b"seg 12");
    let literal: Vec<String> = origin
        .targets()
        .into_iter()
        .filter(|t| t.contains('{') || t.to_ascii_lowercase().contains("%7b"))
        .collect();
    assert!(
        literal.is_empty(),
        "unsubstituted URIs fetched: {literal:?}"
    );
    // The first copy's prefetch asked for the newest segment it could resolve.
    until("segment 10 prefetched", || {
        origin.count("/dv/segs/s10.m4s") == 1
    })
    .await;
}

/// RFC 8216bis §6.2.5.2: `_HLS_msn` and `_HLS_part` carry a `decimal-integer` (§4.2: the
/// characters `0`-`9` only). A signed value is as malformed as a negative one: refused with 400
/// rather than read as a blocking reload of another msn and forwarded as it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_directive_values_are_decimal_integers() {
    let origin = Origin::start().await;
    let path = "/dec/media.m3u8";
    origin.script(
        path,
        Script::ok(SEGMENT_11_COMPLETE).header("cache-control", "max-age=30"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get(path).await.status, 200);
    for q in ["_HLS_msn=+12", "_HLS_msn=11&_HLS_part=+0", "_HLS_msn=-1"] {
        let r = edge.get(&format!("{path}?{q}")).await;
        assert_eq!(r.status, 400, "{q}");
    }
    assert_eq!(
        origin.count(path),
        1,
        "no malformed directive reached the origin"
    );
}

/// Segments `first..=last` of a 2 s target, `Age` seconds old at the origin, fresh for a minute
/// (as origins mark blocking responses: one URI per msn/part never changes).
fn aged_playlist(first: u64, last: u64, age: &str) -> Script {
    let mut pl = format!(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for n in first..=last {
        pl.push_str(&format!("#EXTINF:2.0,\ns{n}.ts\n"));
    }
    Script::ok(pl)
        .header("cache-control", "max-age=60")
        .header("age", age)
}

/// RFC 8216bis §6.2.5.2: 400 is for an `_HLS_msn` more than two segments past the last one "in
/// the current Playlist". A copy the edge holds that is 10 s old (2 s segments) is not the
/// current playlist: the origin may have five more segments by now, and a player that saw them
/// (another rendition's report, another edge) must not be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_msn_ahead_of_an_old_copy_is_too_far_only_beyond_what_the_origin_added_since() {
    let origin = Origin::start().await;
    let path = "/aged/media.m3u8";
    origin.script(path, aged_playlist(10, 11, "10"));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get(path).await.status, 200);
    edge.settle().await;
    origin.script(path, aged_playlist(12, 15, "0"));

    let r = edge.get(&format!("{path}?_HLS_msn=14")).await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert!(text(&r).contains("s14.ts"));
    // Beyond anything 10 s could have added (11 + 2 + 5, and the newer copy now held says 15).
    let far = edge.get(&format!("{path}?_HLS_msn=40")).await;
    assert_eq!(far.status, 400);
}
