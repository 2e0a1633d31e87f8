//! Issue 17, the edge side of Low-Latency HLS, against the real origin simulator
//! (`vedge_bench::origin`, `/ll/<stream>/...`) and, for exact holds, the scripted origin:
//! blocking reloads collapse per (playlist, msn, part), future parts wait on fewer upstream
//! requests than viewers, the spec's 400 and 503 limits, held preload-hint parts collapse.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use vedge::config::{RawConfig, RawRoute};
use vedge::proxy::llhls::scan;
use vedge_bench::origin::{self, LowLatency, OriginOptions};

use crate::support::{until, Gate, Origin, Script, TestEdge};

/// Starts the simulator on `127.0.0.1:0`; dropping the sender stops it.
pub async fn start_sim(opts: OriginOptions) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let r = origin::serve(opts, listener, async {
            let _ = rx.await;
        })
        .await;
        if let Err(e) = r {
            eprintln!("simulator: {e:#}");
        }
    });
    (format!("http://{addr}"), tx)
}

/// One route `/` over `origin`, short timeouts.
pub fn config_for(origin: &str, prefetch: &str) -> RawConfig {
    let mut raw = RawConfig {
        ram_size: Some("64MiB".into()),
        routes: vec![RawRoute {
            prefix: "/".into(),
            origin: origin.to_string(),
            prefetch: Some(prefetch.into()),
            ..RawRoute::default()
        }],
        ..RawConfig::default()
    };
    raw.cache.collapse_timeout = Some("10s".into());
    raw.origin_client.first_byte_timeout = Some("10s".into());
    raw.origin_client.between_bytes_timeout = Some("5s".into());
    raw.origin_client.connect_timeout = Some("1s".into());
    raw.server.shutdown_grace = Some("1s".into());
    raw
}

pub fn sim_options() -> OriginOptions {
    OriginOptions {
        segment_duration: Duration::from_secs(2),
        ll: LowLatency {
            hls: true,
            ..LowLatency::default()
        },
        ..OriginOptions::default()
    }
}

/// The simulator's `/__stats` blocking counts under `prefix`.
async fn blocking(base: &str, prefix: &str) -> serde_json::Map<String, serde_json::Value> {
    let body = reqwest_get(&format!("{base}/__stats?prefix={prefix}")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("stats json");
    v["blocking"].as_object().cloned().unwrap_or_default()
}

/// The simulator's `/__stats` request count of `path`.
pub async fn origin_count(base: &str, path: &str) -> u64 {
    origin_stats(base).await["paths"][path]
        .as_u64()
        .unwrap_or(0)
}

/// The simulator's `/__stats`.
pub async fn origin_stats(base: &str) -> serde_json::Value {
    let body = reqwest_get(&format!("{base}/__stats")).await;
    serde_json::from_slice(&body).expect("stats json")
}

/// Reads a streaming body to its end (at most 10,000 frames, each within 10 s), calling
/// `on_data(bytes so far, frame)` before each data frame is appended.
async fn read_frames<B>(mut body: B, mut on_data: impl FnMut(&[u8], &[u8])) -> Vec<u8>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("body frame in time")
        else {
            break;
        };
        if let Ok(data) = frame.expect("body frame").into_data() {
            on_data(&got, &data);
            got.extend_from_slice(&data);
        }
    }
    got
}

async fn reqwest_get(url: &str) -> Vec<u8> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    let client =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let resp = client
        .get(url.parse().expect("uri"))
        .await
        .expect("origin stats");
    resp.into_body()
        .collect()
        .await
        .expect("stats body")
        .to_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blocking_reloads_for_one_msn_part_send_one_origin_request() {
    let (base, _stop) = start_sim(sim_options()).await;
    let edge = TestEdge::start(config_for(&base, "off")).await;
    let path = "/ll/c1/r0/media.m3u8";
    let first = edge.get(path).await;
    assert_eq!(
        first.status,
        200,
        "{:?} {}",
        first.body,
        first.h("cache-status")
    );
    let s = scan(&first.body).expect("media playlist");
    // The next part to be produced: the playlist does not hold it yet.
    let (m, p) = (s.next_msn(), s.trailing_parts.len() as u64);
    let q = format!("{path}?_HLS_msn={m}&_HLS_part={p}");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let e = &edge;
        let q = q.clone();
        tasks.push(async move { e.get(&q).await });
    }
    let resps = futures_util::future::join_all(tasks).await;
    for r in &resps {
        assert_eq!(r.status, 200, "{}", r.h("cache-status"));
        let got = scan(&r.body).expect("playlist");
        assert!(got.satisfies(m, Some(p)), "answer holds the part asked for");
    }
    let b = blocking(&base, "/ll/c1/").await;
    let key = format!("{path}?_HLS_msn={m}&_HLS_part={p}");
    assert_eq!(b.get(&key).and_then(|v| v.as_u64()), Some(1), "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_different_future_parts_wait_on_fewer_upstream_requests_than_viewers() {
    let (base, _stop) = start_sim(sim_options()).await;
    let edge = TestEdge::start(config_for(&base, "off")).await;
    let path = "/ll/c2/r0/media.m3u8";
    let first = edge.get(path).await;
    let s = scan(&first.body).expect("media playlist");
    let (m, p) = (s.next_msn(), s.trailing_parts.len() as u64);
    let mut asks = Vec::new();
    for k in 0..3 {
        for _ in 0..3 {
            asks.push(format!("{path}?_HLS_msn={m}&_HLS_part={}", p + k));
        }
    }
    let viewers = asks.len() as u64;
    let resps = futures_util::future::join_all(asks.iter().map(|q| edge.get(q))).await;
    for r in &resps {
        assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    }
    let b = blocking(&base, "/ll/c2/").await;
    let upstream: u64 = b.values().filter_map(|v| v.as_u64()).sum();
    assert!(
        upstream < viewers,
        "{upstream} upstream blocking requests for {viewers} viewers: {b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_more_than_two_segments_ahead_is_400() {
    let (base, _stop) = start_sim(sim_options()).await;
    let edge = TestEdge::start(config_for(&base, "off")).await;
    let path = "/ll/c3/r0/media.m3u8";
    let s = scan(&edge.get(path).await.body).expect("media playlist");
    let r = edge
        .get(&format!("{path}?_HLS_msn={}", s.next_msn() + 5))
        .await;
    assert_eq!(r.status, 400);
    let ok = edge
        .get(&format!("{path}?_HLS_msn={}", s.next_msn() - 1))
        .await;
    assert_eq!(ok.status, 200, "an msn already listed is answered at once");
    assert!(ok.h("cache-status").contains("llhls-latest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_never_exceeds_three_target_durations() {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n\
#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\ns5.ts\n#EXTINF:1.0,\ns6.ts\n";
    origin.script(
        "/h/m.m3u8",
        Script::ok(playlist).header("cache-control", "max-age=1"),
    );
    let mut cfg = config_for(&origin.url(), "off");
    // Below the origin's 8 s hold too: on a loaded box the first copy may not be recorded as the
    // playlist's latest yet, and then the edge holds for the collapse timeout instead of three
    // target durations. Either bound must end in a 503.
    cfg.cache.collapse_timeout = Some("4s".into());
    let edge = TestEdge::start(cfg).await;
    assert_eq!(edge.get("/h/m.m3u8").await.status, 200);
    // The origin now holds every request far longer than the edge may.
    origin.script(
        "/h/m.m3u8",
        Script::ok(playlist)
            .header("cache-control", "max-age=1")
            .head_delay(Duration::from_secs(8)),
    );
    let r = edge.get("/h/m.m3u8?_HLS_msn=7").await;
    assert_eq!(r.status, 503);
    assert!(r.h("cache-status").contains("llhls-hold"));
    // Marked like any other miss the edge answered (it had none).
    assert_eq!(r.x_cache(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_held_preload_hint_part_get_its_bytes_before_it_completes_from_one_origin_request(
) {
    let (base, _stop) = start_sim(sim_options()).await;
    let edge = TestEdge::start(config_for(&base, "off")).await;
    let path = "/ll/c5/r0/media.m3u8";
    let s = scan(&edge.get(path).await.body).expect("media playlist");
    let hint = s.hints.first().expect("a preload hint").clone();
    let part = format!("/ll/c5/r0/{hint}");
    let view = || async {
        let resp = edge
            .send_streaming(edge.req(http::Method::GET, &part), bytes::Bytes::new())
            .await;
        assert_eq!(resp.status(), 200);
        let mut early = false;
        // Bounded: a part is a few hundred milliseconds of frames.
        let got = read_frames(resp.into_body(), |got, data| {
            // Bytes while the edge's one fill of the part is still running: the part was not
            // complete yet.
            if got.is_empty() && !data.is_empty() && !edge.edge.fills.is_empty() {
                early = true;
            }
        })
        .await;
        (got, early)
    };
    let ((a, early_a), (b, early_b)) = tokio::join!(view(), view());
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert!(
        early_a && early_b,
        "both viewers got bytes before the part completed"
    );
    assert_eq!(origin_count(&base, &part).await, 1);
}

/// A scripted LL-HLS origin whose preload hint names bytes 1000.. of a segment still being
/// produced: the segment is held, then sent in `chunks` pieces over `over`, answering
/// `Range: bytes=1000-` with a 206 from byte 1000 (RFC 8216bis: the range starting at
/// `BYTERANGE-START`). Returns the origin, the segment path and the segment's bytes.
async fn byte_range_hint_origin(chunks: usize, over: Duration) -> (Origin, &'static str, Vec<u8>) {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
#EXT-X-MEDIA-SEQUENCE:6\n#EXTINF:2.0,\nseg_6.mp4\n\
#EXT-X-PART:DURATION=0.5,URI=\"seg_7.mp4\",BYTERANGE=\"1000@0\",INDEPENDENT=YES\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_7.mp4\",BYTERANGE-START=1000\n";
    origin.script(
        "/br/media.m3u8",
        Script::ok(playlist)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=1"),
    );
    let seg: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    origin.script(
        "/br/seg_7.mp4",
        Script::ok(seg.clone())
            .header("content-type", "video/mp4")
            .header("cache-control", "max-age=60")
            .ranged()
            .chunked()
            .trickle(chunks, over),
    );
    (origin, "/br/seg_7.mp4", seg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_ended_range_requests_of_a_byte_range_preload_hint_are_one_streaming_fill() {
    let (origin, seg_path, seg) = byte_range_hint_origin(4, Duration::from_millis(1600)).await;
    let mut raw = config_for(&origin.url(), "off");
    // Slicing on (small slices) and the cold-Range rule on: neither may split or pass the hint.
    raw.cache.slice_size = Some("64KiB".into());
    let edge = TestEdge::start(raw).await;
    let pl = edge.get("/br/media.m3u8").await;
    assert_eq!(pl.status, 200);
    let view = || async {
        let resp = edge
            .send_streaming(
                edge.req(http::Method::GET, seg_path)
                    .header("range", "bytes=1000-"),
                bytes::Bytes::new(),
            )
            .await;
        let status = resp.status();
        let content_range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut first_at = None;
        // Bounded: four chunks.
        let got = read_frames(resp.into_body(), |_, data| {
            if first_at.is_none() && !data.is_empty() {
                first_at = Some(std::time::Instant::now());
            }
        })
        .await;
        (status, content_range, got, first_at)
    };
    let viewers = futures_util::future::join_all((0..6).map(|_| view())).await;
    assert_eq!(
        origin.count(seg_path),
        1,
        "one origin request for every viewer"
    );
    let asked = origin.seen(seg_path);
    assert_eq!(asked[0].header("range"), Some("bytes=1000-"));
    let done = origin.sent(seg_path)[0]
        .last_byte
        .expect("the origin finished the part");
    for (status, content_range, got, first_at) in viewers {
        assert_eq!(status, 206);
        assert!(content_range.starts_with("bytes 1000-"), "{content_range}");
        assert_eq!(
            got,
            seg[1000..],
            "the hinted bytes, from BYTERANGE-START on"
        );
        assert!(
            first_at.expect("bytes") < done,
            "the first bytes reached the viewer before the origin finished the part"
        );
    }
    // Completed: the next viewer of the hint is a HIT.
    let again = edge.get_with(seg_path, &[("range", "bytes=1000-")]).await;
    assert_eq!(again.status, 206);
    assert_eq!(again.body, seg[1000..]);
    assert!(
        again.h("cache-status").contains("hit"),
        "{}",
        again.h("cache-status")
    );
    assert_eq!(origin.count(seg_path), 1);
}

/// A viewer picks the `N` of `Range: bytes=N-`; only the hint's own `BYTERANGE-START` gets a
/// fill of its own. Any other start on the hinted URI follows the usual cold-range rules
/// (here: slices), so one viewer walking N cannot make one origin fill per N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_ended_ranges_other_than_the_hinted_start_do_not_each_fill_from_the_origin() {
    let (origin, seg_path, seg) = byte_range_hint_origin(1, Duration::from_millis(10)).await;
    let mut raw = config_for(&origin.url(), "off");
    raw.cache.slice_size = Some("64KiB".into());
    let edge = TestEdge::start(raw).await;
    assert_eq!(edge.get("/br/media.m3u8").await.status, 200);
    for n in [1001usize, 1500, 2000, 2500, 3999] {
        let r = edge
            .get_with(seg_path, &[("range", &format!("bytes={n}-"))])
            .await;
        assert_eq!(r.status, 206, "bytes={n}-");
        assert_eq!(r.body, seg[n..], "bytes={n}-");
    }
    assert_eq!(
        origin.count(seg_path),
        1,
        "one slice fill for every start, not one origin request per start"
    );
}

/// A long EVENT (or DVR) LL-HLS playlist lists more segments than the edge remembers per
/// playlist: the edge keeps the newest ones, so a blocking reload at the live edge of a
/// 5,000-segment playlist is answered (from the copy that lists it), never refused as too far
/// ahead because the edge had counted only the first 4,096.
#[tokio::test]
async fn a_blocking_reload_at_the_live_edge_of_a_long_playlist_is_answered() {
    let origin = Origin::start().await;
    let mut pl = String::from(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n#EXT-X-PART-INF:PART-TARGET=1\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3\n\
         #EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-MEDIA-SEQUENCE:0\n",
    );
    for n in 0..5000 {
        pl.push_str(&format!("#EXTINF:4.0,\nseg_{n}.ts\n"));
    }
    pl.push_str("#EXT-X-PART:DURATION=1.0,URI=\"part_5000_0.ts\"\n");
    pl.push_str("#EXT-X-PART:DURATION=1.0,URI=\"part_5000_1.ts\"\n");
    origin.script(
        "/ev/media.m3u8",
        Script::ok(pl)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=4"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get("/ev/media.m3u8").await.status, 200);
    edge.settle().await;
    for q in ["_HLS_msn=4999", "_HLS_msn=5000&_HLS_part=1"] {
        let r = edge.get(&format!("/ev/media.m3u8?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.h("cache-status"));
    }
}

/// A live LL-HLS playlist of `segments` segments (from msn 0, a program date-time each), two
/// parts of segment `segments` listed and a preload hint: over 256 KiB from 3,500 segments.
fn large_live_playlist(segments: u64) -> String {
    let mut pl = String::from(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
#EXT-X-MEDIA-SEQUENCE:0\n",
    );
    for i in 0..segments {
        let (h, m, s) = (i * 2 / 3600, i * 2 / 60 % 60, i * 2 % 60);
        pl.push_str(&format!(
            "#EXT-X-PROGRAM-DATE-TIME:2026-12-07T{h:02}:{m:02}:{s:02}.000Z\n#EXTINF:2.0,\nseg_{i}.m4s\n"
        ));
    }
    for p in 0..2 {
        pl.push_str(&format!(
            "#EXT-X-PART:DURATION=0.5,URI=\"part_{segments}_{p}.m4s\"\n"
        ));
    }
    pl.push_str(&format!(
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part_{segments}_2.m4s\"\n"
    ));
    pl
}

/// A large live playlist (a long DVR window, or a hostile origin's) is scanned off the worker
/// that stored it: on a single-threaded runtime (the edge and this test share one thread),
/// another task runs between the fill's end and the playlist's latest copy being recorded.
/// Before, its scan, window bookkeeping and prefetch planning ran inline on that worker,
/// holding every viewer scheduled there (a 7.7 MB playlist held victims' hits for 0.4-1.6 s).
/// Its announce still works: the newest segment and the parts it lists are prefetched from
/// the origin before any viewer asks, and a viewer's request for them is a hit.
#[tokio::test(flavor = "current_thread")]
async fn a_large_live_playlist_is_scanned_off_the_worker_and_still_drives_prefetch() {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    const SEGMENTS: u64 = 3_500;
    let origin = Origin::start().await;
    let body = large_live_playlist(SEGMENTS);
    assert!(body.len() > 256 << 10, "{} bytes", body.len());
    let path = "/big/live.m3u8";
    origin.script(path, playlist(body, "max-age=1"));
    let newest = format!("/big/seg_{}.m4s", SEGMENTS - 1);
    let parts: Vec<String> = (0..2)
        .map(|p| format!("/big/part_{SEGMENTS}_{p}.m4s"))
        .collect();
    for p in std::iter::once(&newest).chain(&parts) {
        origin.script(
            p,
            Script::ok(format!("media {p}")).header("cache-control", "max-age=60"),
        );
    }
    let edge = Arc::new(TestEdge::start(config_for(&origin.url(), "next")).await);
    let key = format!("http|{}|{path}", origin.addr());
    let observer = {
        let (edge, key) = (edge.clone(), key.clone());
        tokio::spawn(async move {
            let mut turns = 0u64;
            for _ in 0..50_000_000u64 {
                let recorded = vedge::proxy::llhls::playlist_of(&edge.edge, &key)
                    .is_some_and(|p| p.latest().is_some());
                if recorded {
                    return Some(turns);
                }
                // The playlist's fill stored it (prefetch fills its announce started may
                // still be running).
                if edge.edge.ram.contains(&key) {
                    turns += 1;
                }
                tokio::task::yield_now().await;
            }
            None
        })
    };
    let r = edge.get(path).await;
    assert_eq!(r.status, 200);
    let turns = observer.await.expect("observer");
    println!("turns between the fill's end and the latest copy being recorded: {turns:?}");
    assert!(
        turns.is_some_and(|t| t > 0),
        "the playlist was scanned on the worker that stored it: {turns:?}"
    );
    // Prefetch as for a small playlist (the first copy seen: its live edge only).
    for p in std::iter::once(&newest).chain(&parts) {
        crate::support::until(&format!("{p} is prefetched"), || origin.count(p) == 1).await;
    }
    assert_eq!(origin.count(&format!("/big/seg_{}.m4s", SEGMENTS - 2)), 0);
    edge.settle().await;
    for p in std::iter::once(&newest).chain(&parts) {
        let r = edge.get(p).await;
        assert_eq!(
            (r.status.as_u16(), origin.count(p)),
            (200, 1),
            "{p}: {}",
            r.h("cache-status")
        );
    }
    assert_eq!(
        edge.edge.metrics.abuse.live_scans_skipped.load(Relaxed),
        0,
        "one large scan at a time is never skipped"
    );
}

/// A scripted media playlist answer: `body`, the HLS content type, `Cache-Control: cc`.
fn playlist(body: impl Into<bytes::Bytes>, cc: &str) -> Script {
    Script::ok(body)
        .header("content-type", "application/vnd.apple.mpegurl")
        .header("cache-control", cc)
}

/// An LL-HLS media playlist (target duration 2 s, parts of 0.5 s) whose last listed part is
/// part 2 of segment 7: the answer to `_HLS_msn=7&_HLS_part=2`.
const PART_7_2_LISTED: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5\n\
#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:2.0,\nseg_5.m4s\n#EXTINF:2.0,\nseg_6.m4s\n\
#EXT-X-PART:DURATION=0.5,URI=\"part_7_0.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"part_7_1.m4s\"\n\
#EXT-X-PART:DURATION=0.5,URI=\"part_7_2.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part_7_3.m4s\"\n";

/// Ten viewers ask for the next part of a playlist the origin marks `cache_control`, so no
/// answer is kept as the playlist's latest copy. The origin holds the first request (the part
/// does not exist yet) while the other nine wait at the edge, then answers it and holds every
/// later request until the test lets go: the other viewers must reach the origin at once, not
/// one per settle timeout behind whichever of them went upstream first (conformance F0: 30
/// viewers answered 200 ms apart, 12 of 60 given 503 past the hold although the origin had the
/// part). `shared`: the answer may be shared with the requests that join its fill (`no-cache`
/// without a validator: `Decision::ShareOnly`), and the nine all collapse onto one fill;
/// otherwise (`no-store`) it is shared with nobody, and each asks the origin itself.
async fn a_crowd_of_the_next_part_is_released_at_once(cache_control: &str, shared: bool) {
    use std::sync::Arc;
    const VIEWERS: usize = 10;
    let origin = Origin::start().await;
    let path = "/crowd/media.m3u8";
    let script = |gate: &Gate| playlist(PART_7_2_LISTED, cache_control).gate(gate);
    let first = Gate::new();
    origin.script(path, script(&first));
    let edge = Arc::new(TestEdge::start(config_for(&origin.url(), "off")).await);
    let q = format!("{path}?_HLS_msn=7&_HLS_part=2");
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| {
            let (edge, q) = (edge.clone(), q.clone());
            tokio::spawn(async move { edge.get(&q).await })
        })
        .collect();
    let key = format!("http|{}|{path}", origin.addr());
    until("one viewer's request reached the origin", || {
        origin.count(path) == 1
    })
    .await;
    until("every viewer is a blocking reload in progress", || {
        vedge::proxy::llhls::playlist_of(&edge.edge, &key).is_some_and(|p| p.waiting() == VIEWERS)
    })
    .await;
    assert_eq!(origin.count(path), 1, "the others wait at the edge");
    // The part exists now: the first request is answered, every later one held.
    let later = Gate::new();
    origin.script(path, script(&later));
    first.open();
    if shared {
        // All of the nine but the one that may lead one more fill: the answer is shared with
        // its fill's readers only, never stored, so a viewer claiming after the first fill
        // ended needs a fill of its own, which the rest join (origin requests stay at most 2,
        // asserted below). Counted from the start: a viewer that joined the first fill before
        // the origin answered joined it too.
        until(
            "the other viewers all joined a fill (the first's, or one more) at once",
            || edge.collapsed() >= VIEWERS as u64 - 2,
        )
        .await;
    } else {
        until(
            "every other viewer's own request reached the origin while the first of them is held",
            || origin.count(path) == VIEWERS,
        )
        .await;
    }
    later.open();
    for v in viewers {
        let r = v.await.expect("viewer task");
        assert_eq!(r.status, 200, "{}", r.h("cache-status"));
        let got = scan(&r.body).expect("a media playlist");
        assert!(
            got.satisfies(7, Some(2)),
            "the answer lists the part asked for"
        );
    }
    if shared {
        assert!(
            origin.count(path) <= 2,
            "{} origin requests: the first, and one the others shared",
            origin.count(path)
        );
    } else {
        assert_eq!(
            origin.count(path),
            VIEWERS,
            "one each: no-store is shared with nobody"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_no_cache_playlist_s_next_part_are_released_together() {
    a_crowd_of_the_next_part_is_released_at_once("no-cache", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_no_store_playlist_s_next_part_each_go_upstream_at_once() {
    a_crowd_of_the_next_part_is_released_at_once("no-store", false).await;
}

/// An LL-HLS media playlist listing segment 7 complete.
const SEGMENT_7_LISTED: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\nseg_5.ts\n\
#EXTINF:1.0,\nseg_6.ts\n#EXTINF:1.0,\nseg_7.ts\n";

/// The origin holds a blocking reload 1.1 s (until the segment exists) and gives it a 1 s TTL.
/// The hold is the protocol, not transit: the answer is new (`Age: 0`), stored fresh, and the
/// next viewer of the same URL is a hit, one origin request in all (conformance F1: `Age: 1`,
/// stored already stale, and the same `_HLS_msn` asked of the origin twice). Through a tier the
/// same: the shield's answer says `Age: 0`, and the edge leaves out the shield's hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_held_by_the_origin_is_not_aged_by_the_hold() {
    let origin = Origin::start().await;
    // One playlist asked of the shield, one of the edge in front of it: each reload is the
    // first its node (and the shield) sees of that playlist, so each goes to the origin.
    let (direct, tiered) = ("/held/a.m3u8", "/held/b.m3u8");
    for path in [direct, tiered] {
        origin.script(
            path,
            playlist(SEGMENT_7_LISTED, "max-age=1").head_delay(Duration::from_millis(1100)),
        );
    }
    let mut shield_cfg = config_for(&origin.url(), "off");
    shield_cfg.node_id = Some("shield-0".into());
    let shield = TestEdge::start(shield_cfg).await;
    let mut edge_cfg = config_for(&origin.url(), "off");
    edge_cfg.node_id = Some("edge-0".into());
    edge_cfg.shield = Some(vedge::config::RawShield {
        nodes: vec![format!("http://{}", shield.addr)],
        ..vedge::config::RawShield::default()
    });
    let edge = TestEdge::start(edge_cfg).await;
    for (node, path) in [(&shield, direct), (&edge, tiered)] {
        let q = format!("{path}?_HLS_msn=7");
        let first = node.get(&q).await;
        assert_eq!(first.status, 200, "{q}: {}", first.h("cache-status"));
        assert_eq!(
            first.h("age"),
            "0",
            "{q}: the held answer is new: {}",
            first.h("cache-status")
        );
        let again = node.get(&q).await;
        assert_eq!(
            (again.status.as_u16(), again.x_cache()),
            (200, "HIT"),
            "{q}: {}",
            again.h("cache-status")
        );
        assert_eq!(origin.count(path), 1, "{q}: one origin request");
    }
}

/// RFC 8216bis §6.2.5.1 defines `_HLS_skip=YES` and `v2` and nothing makes another value an
/// error: such a request is an ordinary one with that query (conformance L1: 400 from the
/// edge), sent upstream and cached as such, and with `_HLS_msn` a full blocking reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hls_skip_values_are_no_directive_and_no_error() {
    let origin = Origin::start().await;
    let path = "/skip/media.m3u8";
    origin.script(path, playlist(SEGMENT_7_LISTED, "max-age=60"));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    for v in ["NO", "yes"] {
        let q = format!("{path}?_HLS_skip={v}");
        let r = edge.get(&q).await;
        assert_eq!(r.status, 200, "{q}: {:?}", r.body);
        assert_eq!(r.body, SEGMENT_7_LISTED.as_bytes(), "{q}");
        let seen = origin.seen(path);
        assert_eq!(
            seen.last().map(|s| s.target.as_str()),
            Some(q.as_str()),
            "sent upstream with its query"
        );
        edge.settle().await;
        let again = edge.get(&q).await;
        assert_eq!(
            (again.status.as_u16(), again.x_cache()),
            (200, "HIT"),
            "{q}"
        );
    }
    let asked = origin.count(path);
    let r = edge.get(&format!("{path}?_HLS_msn=7&_HLS_skip=NO")).await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert!(scan(&r.body).is_some_and(|s| s.satisfies(7, None) && !s.skipped));
    assert!(origin.count(path) <= asked + 1);
}

/// Bug: a playlist refreshed by a `304 Not Modified` (an origin serving it with an `ETag`) was
/// stored fresh again, but the copy that answers blocking reloads stayed the stale one from
/// before: every `_HLS_msn` request that copy satisfies went to the origin until the playlist
/// changed. The refreshed copy answers them now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playlist_refreshed_by_a_304_answers_blocking_reloads_it_satisfies() {
    let origin = Origin::start().await;
    let path = "/etag/media.m3u8";
    origin.script(
        path,
        playlist(SEGMENT_7_LISTED, "max-age=1").header("etag", "\"p1\""),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get(path).await.status, 200);
    edge.settle().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refreshed = edge.get(path).await;
    assert_eq!(refreshed.status, 200);
    edge.settle().await;
    let seen = origin.seen(path);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].header("if-none-match"),
        Some("\"p1\""),
        "revalidated"
    );
    assert_eq!(edge.get(path).await.x_cache(), "HIT", "stored fresh again");

    let r = edge.get(&format!("{path}?_HLS_msn=7")).await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert_eq!(r.body, SEGMENT_7_LISTED.as_bytes());
    assert_eq!(
        origin.count(path),
        2,
        "answered from the refreshed copy: {}",
        r.h("cache-status")
    );
}

/// A live playlist past 4 MiB (a day-long DVR window: 80,000 segments here, 5.9 MB) was not
/// read at all, and nothing said so: no prefetch of its newest segment, no window bookkeeping,
/// and a 404 kept from a too-early request for a segment it lists stayed until its TTL ran
/// out. Playlists up to 16 MiB are read now; a larger one is counted in
/// `vedge_live_scans_skipped_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_long_dvr_playlist_is_still_read_and_drives_prefetch() {
    const SEGMENTS: u64 = 80_000;
    let origin = Origin::start().await;
    let body = large_live_playlist(SEGMENTS);
    assert!(body.len() > 5 << 20, "{} bytes", body.len());
    let path = "/dvr/live.m3u8";
    origin.script(path, playlist(body, "max-age=1"));
    let newest = format!("/dvr/seg_{}.m4s", SEGMENTS - 1);
    origin.script(
        &newest,
        Script::ok("newest").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "next")).await;
    assert_eq!(edge.get(path).await.status, 200);
    crate::support::until(&format!("{newest} is prefetched"), || {
        origin.count(&newest) == 1
    })
    .await;
    edge.settle().await;
    let r = edge.get(&newest).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"));
    assert_eq!(
        edge.edge
            .metrics
            .abuse
            .live_scans_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// An LL-HLS media playlist (target duration 1 s) whose last complete segment is 6: the
/// playlist an origin that does not hold blocking reloads answers `_HLS_msn=7` with at once.
const SEGMENT_6_LAST: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\nseg_5.ts\n\
#EXTINF:1.0,\nseg_6.ts\n";

/// The blocking reloads (`_HLS_msn`) the origin saw for `path`, with when each arrived.
fn blocking_seen(origin: &Origin, path: &str) -> Vec<crate::support::origin::Seen> {
    origin
        .seen(path)
        .into_iter()
        .filter(|s| s.target.contains("_HLS_msn"))
        .collect()
}

/// Bug: against an origin that ignores `_HLS_*` (a file server; its playlist still says
/// `CAN-BLOCK-RELOAD=YES`), the edge answered `_HLS_msn=7` at once with the playlist whose
/// last segment is 6, to every viewer collapsed on that request, and stored it under the
/// blocking key. Now no viewer gets that answer: the edge asks the origin again, one request
/// at a time for all of them, and answers each as soon as the playlist holds segment 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_the_origin_answers_too_early_is_held_until_the_playlist_holds_it() {
    use std::sync::Arc;
    const VIEWERS: usize = 3;
    let origin = Origin::start().await;
    let path = "/early/media.m3u8";
    origin.script(path, playlist(SEGMENT_6_LAST, "max-age=1"));
    let mut cfg = config_for(&origin.url(), "off");
    // The hold is three target durations (3 s) once a copy is known, and no longer before.
    cfg.cache.collapse_timeout = Some("3s".into());
    let edge = Arc::new(TestEdge::start(cfg).await);
    assert_eq!(edge.get(path).await.status, 200);
    edge.settle().await;
    let q = format!("{path}?_HLS_msn=7");
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| {
            let (edge, q) = (edge.clone(), q.clone());
            tokio::spawn(async move { edge.get(&q).await })
        })
        .collect();
    until("the origin was asked for segment 7 twice", || {
        blocking_seen(&origin, path).len() >= 2
    })
    .await;
    assert!(
        viewers.iter().all(|v| !v.is_finished()),
        "no viewer was answered with a playlist lacking segment 7"
    );
    // Segment 7 exists now.
    origin.script(path, playlist(SEGMENT_7_LISTED, "max-age=1"));
    for v in viewers {
        let r = v.await.expect("viewer task");
        assert_eq!(r.status, 200, "{}", r.h("cache-status"));
        let got = scan(&r.body).expect("a media playlist");
        assert!(got.satisfies(7, None), "the answer lists segment 7");
    }
    // One request at a time: each sent after the answer to the one before had ended.
    let asked = blocking_seen(&origin, path);
    let sent = origin.sent(path);
    for (i, s) in asked.iter().enumerate().skip(1) {
        let before = sent
            .iter()
            .filter_map(|r| r.last_byte)
            .filter(|t| *t <= s.at)
            .count();
        assert!(
            before > i,
            "blocking request {i} reached the origin while another was upstream"
        );
    }
    let again = edge.get(&q).await;
    assert_eq!(again.status, 200, "{}", again.h("cache-status"));
    assert_eq!(again.body, SEGMENT_7_LISTED.as_bytes());
}

/// Bug: an origin that ignores `_HLS_*` and never gets segment 7 had the edge answer
/// `_HLS_msn=7` at once with the playlist lacking it (`200`, stored), and the next requests
/// for it were HITs with the same body. Now the hold runs out in a 503 (`llhls-hold`, RFC
/// 8216bis §6.2.5.2), and since nothing was stored under the blocking key, the next request
/// once the segment exists is answered with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_the_origin_never_satisfies_is_503_and_leaves_nothing_stored() {
    let origin = Origin::start().await;
    let path = "/never/media.m3u8";
    origin.script(path, playlist(SEGMENT_6_LAST, "max-age=1"));
    let mut cfg = config_for(&origin.url(), "off");
    cfg.cache.collapse_timeout = Some("3s".into());
    let edge = TestEdge::start(cfg).await;
    assert_eq!(edge.get(path).await.status, 200);
    edge.settle().await;
    let q = format!("{path}?_HLS_msn=7");
    let r = edge.get(&q).await;
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.h("cache-status").contains("llhls-hold"));
    edge.settle().await;
    // Asked again within the hold, half a target duration (0.5 s) apart at the most often:
    // at 0, 0.5, ..., 2.5 s into the 3 s hold (3 s on a loaded box: the hold's end).
    let asked = blocking_seen(&origin, path).len();
    assert!(
        (2..=7).contains(&asked),
        "{asked} blocking requests upstream"
    );

    origin.script(path, playlist(SEGMENT_7_LISTED, "max-age=1"));
    let r = edge.get(&q).await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert_eq!(
        r.body,
        SEGMENT_7_LISTED.as_bytes(),
        "{}",
        r.h("cache-status")
    );
}

/// Bug: after a packager restart (the media sequence back from 100-105 to 0), a blocking
/// reload in the new numbering was answered from the pre-restart playlist: that copy, a
/// blocking answer fresh for 30 s, stayed the playlist's latest although a plain request had
/// since fetched the new stream's playlist (whose window lies wholly before the old copy's
/// first segment), and it "held" every small `_HLS_msn`. The newer fetch replaces it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stream_s_playlist_replaces_a_fresh_copy_of_the_old_stream() {
    let origin = Origin::start().await;
    let path = "/restart/media.m3u8";
    let media = |first: u64, last: u64| {
        let mut pl = format!(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
        );
        for n in first..=last {
            pl.push_str(&format!("#EXTINF:1.0,\nseg_{n}.ts\n"));
        }
        pl
    };
    origin.script(path, playlist(media(100, 105), "max-age=30"));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    let old = edge.get(&format!("{path}?_HLS_msn=105")).await;
    assert_eq!(old.status, 200, "{}", old.h("cache-status"));
    edge.settle().await;
    // The packager restarts: a new player's plain request gets the new stream's playlist.
    origin.script(path, playlist(media(0, 1), "max-age=1"));
    let plain = edge.get(path).await;
    assert_eq!(plain.body, media(0, 1).as_bytes());
    edge.settle().await;
    origin.script(path, playlist(media(0, 2), "max-age=1"));
    let r = edge.get(&format!("{path}?_HLS_msn=2")).await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        media(0, 2),
        "the new stream's playlist, not the old one: {}",
        r.h("cache-status")
    );
}

/// Bug: against an origin that does not hold blocking reloads, each distinct blocking request
/// the edge sent upstream (viewers asking in descending order each go up, none waiting behind
/// a later one; delta updates always do) had its own fill asking the origin again every half
/// target duration, so the origin's load grew with the number of distinct requests (an outside
/// review: 8 viewers, 56 requests a second for a playlist that never changed). The fills of
/// one playlist now share one pace: one request per interval between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_asking_again_for_one_playlist_share_one_pace() {
    let origin = Origin::start().await;
    let path = "/pace/media.m3u8";
    origin.script(path, playlist(SEGMENT_6_LAST, "max-age=1"));
    let mut cfg = config_for(&origin.url(), "off");
    cfg.cache.collapse_timeout = Some("3s".into());
    let edge = std::sync::Arc::new(TestEdge::start(cfg).await);
    let asks = [
        "_HLS_msn=8",
        "_HLS_msn=7",
        "_HLS_msn=8&_HLS_skip=YES",
        "_HLS_msn=7&_HLS_skip=YES",
        "_HLS_msn=8&_HLS_skip=v2",
        "_HLS_msn=7&_HLS_skip=v2",
    ];
    let mut viewers = Vec::new();
    for q in asks {
        let (edge, q) = (edge.clone(), format!("{path}?{q}"));
        viewers.push(tokio::spawn(async move { edge.get(&q).await }));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for v in viewers {
        let r = v.await.expect("viewer task");
        assert_eq!(r.status, 503, "{}", r.h("cache-status"));
    }
    edge.settle().await;
    // One request per distinct directive, then one every half target duration (0.5 s) for all
    // of them over the 3 s hold: about 12. Each fill on its own pace asked about 36 times.
    let asked = blocking_seen(&origin, path).len();
    assert!(
        (asks.len()..=asks.len() + 8).contains(&asked),
        "{asked} blocking requests upstream"
    );
}

/// Bug: a blocking reload far past the playlist's last segment was held for the whole hold,
/// asked of the origin again and again, when no fresh copy was there to refuse it: the
/// origin's answer (last segment 6) already shows `_HLS_msn=1000000` is more than two segments
/// ahead (RFC 8216bis §6.2.5.2: 400), and it is refused at once now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_the_origin_s_answer_shows_too_far_is_400_at_once() {
    let origin = Origin::start().await;
    let path = "/far/media.m3u8";
    origin.script(path, playlist(SEGMENT_6_LAST, "max-age=1"));
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    let r = edge.get(&format!("{path}?_HLS_msn=1000000")).await;
    assert_eq!(r.status, 400, "{}", r.h("cache-status"));
    assert_eq!(blocking_seen(&origin, path).len(), 1, "asked once");
}

/// One hostile client holds many distinct blocking reloads of a playlist whose origin answers
/// them at once (a file server: `cc` on every answer) while an honest viewer asks for the next
/// segment; the origin gets it once the honest viewer is held. Returns the honest viewer's
/// answer and the blocking requests the origin saw.
async fn honest_behind_hostile_keys(dir: &str, cc: &str) -> (crate::support::edge::Resp, usize) {
    use std::sync::Arc;
    // Delta updates of segments 7 and 8, parts 0-11: distinct keys, none too far (the playlist
    // has no parts, so no part is past the advance part limit), none ever settled by a full
    // copy of the playlist.
    const HOSTILE: usize = 24;
    let origin = Origin::start().await;
    let path = format!("/{dir}/media.m3u8");
    origin.script(&path, playlist(SEGMENT_6_LAST, cc));
    let mut cfg = config_for(&origin.url(), "off");
    cfg.cache.collapse_timeout = Some("3s".into());
    let edge = Arc::new(TestEdge::start(cfg).await);
    assert_eq!(edge.get(&path).await.status, 200);
    edge.settle().await;
    let key = format!("http|{}|{path}", origin.addr());
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|i| {
            let q = format!(
                "{path}?_HLS_msn={}&_HLS_part={}&_HLS_skip=YES",
                7 + i % 2,
                i / 2
            );
            let edge = edge.clone();
            tokio::spawn(async move { edge.get(&q).await })
        })
        .collect();
    until(
        "every hostile request is a blocking reload in progress",
        || {
            vedge::proxy::llhls::playlist_of(&edge.edge, &key)
                .is_some_and(|p| p.waiting() >= HOSTILE)
        },
    )
    .await;
    // A hostile request asked again: the playlist's pace is set, so the honest viewer's
    // request cannot be the first in it.
    until("a hostile fill asked again", || {
        let seen = blocking_seen(&origin, &path);
        let distinct: std::collections::HashSet<_> = seen.iter().map(|s| &s.target).collect();
        distinct.len() < seen.len()
    })
    .await;
    let asked_at = std::time::Instant::now();
    let honest = {
        let (edge, q) = (edge.clone(), format!("{path}?_HLS_msn=7"));
        tokio::spawn(async move { edge.get(&q).await })
    };
    // Two more early answers (half a target duration apart): the honest viewer is held by now.
    let before = blocking_seen(&origin, &path).len();
    until("the origin was asked twice more", || {
        blocking_seen(&origin, &path).len() >= before + 2
    })
    .await;
    assert!(!honest.is_finished(), "segment 7 does not exist yet");
    origin.script(&path, playlist(SEGMENT_7_LISTED, cc));
    let r = honest.await.expect("honest viewer");
    // Before its 3 s hold ran out: at its end the viewer is answered anyway when the fill
    // it waits on gives up in the same timer tick (it looks at the latest copy once more).
    let took = asked_at.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "answered {took:?} after it asked: at the end of its hold"
    );
    for h in hostile {
        let _ = h.await.expect("hostile task");
    }
    edge.settle().await;
    let asked = blocking_seen(&origin, &path).len();
    println!("{cc}: {asked} blocking requests upstream");
    (r, asked)
}

/// Bug: every fill of one playlist asking the origin again took turns in arrival order
/// (`reask_at`), one turn per half target duration. A client holding 24 delta updates of the
/// next segments took 24 turns for every one of the honest viewer's, whose `_HLS_msn=7` was
/// answered only at the end of its 3 s hold (503; or, when its fill gave up in the same timer
/// tick, the latest copy) although the origin listed segment 7 a second into it, and the other
/// fills' answers said so. Now any answer that shows the playlist holds a
/// request answers it (here from the latest copy), whoever's turn it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_s_blocking_keys_do_not_hold_back_an_honest_viewer() {
    let (r, asked) = honest_behind_hostile_keys("fair", "max-age=1").await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert_eq!(String::from_utf8_lossy(&r.body), SEGMENT_7_LISTED);
    // First requests of 16 keys at most (`MAX_ASKING`; the other 8 wait at the edge), one per
    // half target duration for the whole playlist over the 3 s holds (7), and one for each key
    // once the origin's playlist holds it (segment 7: 12 hostile keys and the honest one).
    assert!(asked <= 16 + 7 + 13, "{asked} blocking requests upstream");
}

/// Bug: as above, with answers no copy is kept of (`no-cache`): the honest viewer's fill waited
/// for its turn behind the hostile client's 24 and was answered at the end of its hold. Now an answer showing the
/// origin's playlist holds what a held request asks for sends that request to the origin at
/// once (its answer will hold it), out of turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_s_blocking_keys_do_not_hold_back_an_honest_viewer_of_an_unstored_playlist(
) {
    let (r, asked) = honest_behind_hostile_keys("fair-nc", "no-cache").await;
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    assert_eq!(String::from_utf8_lossy(&r.body), SEGMENT_7_LISTED);
    assert!(asked <= 16 + 7 + 13, "{asked} blocking requests upstream");
}

/// Bug: a playlist path in another case (`/ll/X/MEDIA.M3U8`) or with segment parameters
/// (`media.m3u8;jsessionid=1`), which content classes read as a manifest, was no playlist to the
/// LL-HLS layer: a blocking reload far past its end was not judged (no 400, RFC 8216bis
/// §6.2.5.2) but relayed as an ordinary request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlists_are_recognised_in_any_case_and_with_segment_parameters() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    for path in ["/far/MEDIA.M3U8", "/far/media.m3u8;jsessionid=1"] {
        origin.script(path, playlist(SEGMENT_6_LAST, "max-age=1"));
        let r = edge.get(&format!("{path}?_HLS_msn=1000000")).await;
        assert_eq!(r.status, 400, "{path}: {}", r.h("cache-status"));
    }
}
