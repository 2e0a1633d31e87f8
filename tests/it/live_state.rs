//! Per-playlist live state (`proxy::llhls::Live`) is made only where it is needed and bounded in
//! bytes, keys included: playlist requests that store nothing (`only-if-cached`, a 404) make
//! none, blocking reloads' states are weighed in `live.state_memory` with their keys, and a
//! flood of either neither grows the edge nor strands a real playlist's blocking reload.

use std::time::Duration;

use vedge::config::RawConfig;
use vedge::proxy::llhls::{playlist_of, scan};

use crate::llhls::{config_for, sim_options, start_sim};
use crate::support::{Origin, Script, TestEdge};

/// Distinct playlist URLs of the flood, each `LONG` bytes of query.
const FLOOD: usize = 1_500;
const LONG: usize = 4_096;

/// `config_for` with a 1 MiB live state budget and no per-client request rate (the flood is
/// one client's).
fn budgeted(origin: &str) -> RawConfig {
    let mut raw = config_for(origin, "off");
    raw.live.state_memory = Some("1MiB".into());
    raw.limits.allow = Some(vec!["127.0.0.0/8".into()]);
    raw
}

/// The `i`th flood URL under `path`, `extra` added to its query.
fn flood_url(path: &str, i: usize, extra: &str) -> String {
    let x = format!("{i:08}").repeat(LONG / 8);
    format!("{path}?{extra}x={x}")
}

/// 1,500 distinct 4 KiB `.m3u8` URLs asked `only-if-cached` (504, no origin request) and 404
/// by the origin leave no live state at all; as many blocking reloads (`_HLS_msn`) of them,
/// which need one, are weighed with their keys and kept within `live.state_memory`. Before,
/// every request made a state keyed by its whole URL, weighed nowhere (`vedge_live_state_bytes`
/// stayed 0) and bounded only by count (10,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_playlist_urls_leaves_live_state_bounded_in_bytes() {
    let origin = Origin::start().await;
    origin.script("/gone/a.m3u8", Script::status(404, "no"));
    let edge = TestEdge::start(budgeted(&origin.url())).await;
    let cached_only = [("cache-control", "only-if-cached")];
    for i in 0..FLOOD {
        let r = edge
            .get_with(&flood_url("/live/a.m3u8", i, ""), &cached_only)
            .await;
        assert_eq!(r.status, 504, "{}", r.h("cache-status"));
    }
    for i in 0..50 {
        let r = edge.get(&flood_url("/gone/a.m3u8", i, "")).await;
        assert_eq!(r.status, 404);
    }
    edge.settle().await;
    assert_eq!(
        edge.edge.live.states(),
        0,
        "playlist requests that stored nothing made live state"
    );
    assert_eq!(origin.count("/live/a.m3u8"), 0);

    // Blocking reloads need a state each: every one is weighed, key and all.
    for i in 0..FLOOD {
        let r = edge
            .get_with(&flood_url("/live/a.m3u8", i, "_HLS_msn=5&"), &cached_only)
            .await;
        assert_eq!(r.status, 504, "{}", r.h("cache-status"));
    }
    // Each upstream request is remembered a little after it ended (its state is in use
    // meanwhile): one more reload once they are done weighs the rest down to the budget.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = edge
        .get_with(
            &flood_url("/live/a.m3u8", FLOOD, "_HLS_msn=5&"),
            &cached_only,
        )
        .await;
    assert_eq!(r.status, 504);
    let (states, bytes) = (edge.edge.live.states(), edge.edge.live.state_bytes());
    assert!(bytes <= 1 << 20, "{bytes} bytes of live state");
    assert!(
        states as u64 * LONG as u64 <= bytes,
        "{states} states of {LONG}-byte keys weighed as {bytes} bytes"
    );
}

/// A real LL-HLS playlist's blocking reload, held while a flood of blocking reloads of distinct
/// long URLs pushes the live state over its budget, is answered with the part it asked for, from
/// one origin request; the playlist's state (its latest copy) outlives the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_blocking_reload_is_answered_through_a_flood_of_playlist_states() {
    let (base, _stop) = start_sim(sim_options()).await;
    let edge = TestEdge::start(budgeted(&base)).await;
    let path = "/ll/f1/r0/media.m3u8";
    let first = edge.get(path).await;
    assert_eq!(first.status, 200, "{}", first.h("cache-status"));
    edge.settle().await;
    let s = scan(&first.body).expect("media playlist");
    let (m, p) = (s.next_msn(), s.trailing_parts.len() as u64);
    let q = format!("{path}?_HLS_msn={m}&_HLS_part={p}");
    let held = {
        let e = &edge;
        let q = q.clone();
        async move { e.get(&q).await }
    };
    let flood = async {
        // Well over the budget's worth of 4 KiB keys (1 MiB: some 230).
        for i in 0..600 {
            let r = edge
                .get_with(
                    &flood_url(path, i, "_HLS_msn=1&"),
                    &[("cache-control", "only-if-cached")],
                )
                .await;
            assert_eq!(r.status, 504);
        }
    };
    let (r, ()) = tokio::join!(held, flood);
    assert_eq!(r.status, 200, "{}", r.h("cache-status"));
    let got = scan(&r.body).expect("playlist");
    assert!(
        got.satisfies(m, Some(p)),
        "the answer holds the part asked for"
    );
    let key = format!("http|{}|{path}", base.trim_start_matches("http://"));
    let pl = playlist_of(&edge.edge, &key).expect("the live playlist's state is kept");
    assert!(pl.latest().is_some());
    // The flood's last states were in use a little past their answers (see above).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = edge
        .get_with(
            &flood_url(path, 600, "_HLS_msn=1&"),
            &[("cache-control", "only-if-cached")],
        )
        .await;
    assert_eq!(r.status, 504);
    let bytes = edge.edge.live.state_bytes();
    assert!(bytes <= 1 << 20, "{bytes} bytes of live state");
    assert!(playlist_of(&edge.edge, &key).is_some_and(|p| p.latest().is_some()));
}

/// Blocking reloads of playlists the edge does not know yet (any viewer may send them, to any
/// URL) each hold an empty state while their fill waits at the origin. Past the budget, those
/// in use cannot go, and they pushed out the states that learned something instead: a real
/// live playlist's latest copy and window, which its viewers' next blocking reloads answer
/// from. Now the empty states in use stay over the budget until their requests end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_states_in_use_never_push_out_a_playlist_that_learned_something() {
    let origin = Origin::start().await;
    origin.script(
        "/real/p.m3u8",
        Script::ok(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n\
#EXTINF:2.0,\ns10.ts\n#EXTINF:2.0,\ns11.ts\n",
        )
        .header("content-type", "application/vnd.apple.mpegurl")
        .header("cache-control", "max-age=60"),
    );
    origin.script(
        "/hold/a.m3u8",
        Script::status(404, "no").head_delay(Duration::from_secs(3)),
    );
    let edge = TestEdge::start(budgeted(&origin.url())).await;
    assert_eq!(edge.get("/real/p.m3u8").await.status, 200);
    edge.settle().await;
    let key = format!(
        "http|{}|/real/p.m3u8",
        origin.url().trim_start_matches("http://")
    );
    let real = playlist_of(&edge.edge, &key).expect("the stored playlist has a state");
    assert!(real.latest().is_some());
    drop(real);
    // 300 states of 4 KiB keys held at once: over the 1 MiB budget.
    let urls: Vec<String> = (0..300)
        .map(|i| flood_url("/hold/a.m3u8", i, "_HLS_msn=5&"))
        .collect();
    let held = futures_util::future::join_all(urls.iter().map(|u| edge.get(u)));
    let live = &edge.edge.live;
    let check = async {
        crate::support::until("the held reloads' states are over the budget", || {
            live.state_bytes() > 1 << 20
        })
        .await;
        assert!(
            playlist_of(&edge.edge, &key).is_some_and(|p| p.latest().is_some()),
            "a flood of empty states in use pushed out the real playlist's ({} states, {} bytes)",
            live.states(),
            live.state_bytes()
        );
    };
    tokio::join!(held, check);
}
