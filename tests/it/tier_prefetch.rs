//! A shield leaves live prefetch to its edges: requests that came through another node of the
//! same CDN (`CDN-Loop` names our id and another node) do not make a playlist "watched", so the
//! shield owning the playlist does not prefetch segments that another shield owns (which cost
//! a second origin fill per object with two shields, benches/tier.sh).

use std::time::Duration;

use vedge::proxy::llhls::scan;
use vedge_bench::origin::OriginOptions;

use crate::llhls::{config_for, start_sim};

const FROM_EDGE: (&str, &str) = ("cdn-loop", "vedge; node=edge-1");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_does_not_prefetch_for_playlists_its_edges_ask_for() {
    let (base, _stop) = start_sim(OriginOptions {
        segment_duration: Duration::from_secs(2),
        window: 3,
        playlist_cache_control: "max-age=1".into(),
        ..OriginOptions::default()
    })
    .await;
    let shield = crate::support::TestEdge::start(config_for(&base, "next")).await;
    let playlist = "/live/t1/r0/media.m3u8";
    let mut seen = std::collections::HashSet::new();
    let first = shield.get_with(playlist, &[FROM_EDGE]).await;
    for (_, u, _) in &scan(&first.body).expect("playlist").segments {
        seen.insert(u.clone());
    }
    let mut statuses = Vec::new();
    for _ in 0..400 {
        if statuses.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = shield.get_with(playlist, &[FROM_EDGE]).await;
        for (_, u, _) in &scan(&r.body).expect("playlist").segments {
            if seen.insert(u.clone()) {
                let r = shield
                    .get_with(&format!("/live/t1/r0/{u}"), &[FROM_EDGE])
                    .await;
                assert_eq!(r.status, 200);
                statuses.push(r.h("cache-status").to_string());
            }
        }
    }
    assert_eq!(statuses.len(), 2);
    for s in &statuses {
        assert!(
            s.contains("fwd=miss") && !s.contains("collapsed"),
            "not prefetched by the shield: {s}"
        );
    }
}
