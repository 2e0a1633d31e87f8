//! Issue 3's acceptance, end to end with the real binary: `vedge serve --store` in front of an
//! origin; fetch segments; stop vedge (SIGTERM, and separately SIGKILL); stop the origin; start
//! vedge again on the same store: every segment fetched before is a HIT from disk. On the
//! io_uring engine (auto) and on psync.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use crate::support::binary::BinaryEdge;
use crate::support::edge::RawResp;
use crate::support::origin::{Origin, Script};

/// `vedge serve` on `store` (64 MiB, 4 MiB regions) with the given I/O engine.
fn start(origin: &str, store: &Path, engine: &str) -> BinaryEdge {
    let flags = [
        "--store-size",
        "64MiB",
        "--store-region-size",
        "4MiB",
        "--io-engine",
        engine,
    ];
    let store_flag = [OsStr::new("--store"), store.as_os_str()];
    BinaryEdge::start(origin, store_flag.into_iter().chain(flags.map(OsStr::new)))
}

/// Asserts `r` was served from the edge's `tier` (`Cache-Status` detail `ram` or `disk`).
fn assert_tier(r: &RawResp, tier: &str, what: &str) {
    let status = r.header("cache-status");
    assert!(
        status
            .as_deref()
            .is_some_and(|c| c.contains(&format!("detail={tier}"))),
        "{what}: {status:?}"
    );
}

async fn restart_serves_from_disk(engine: &str, sig: i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("vedge.store");
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..3).map(|i| format!("/vod/seg_{i}.m4s")).collect();
    let bodies: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            (0..300_000u32)
                .map(|b| (b as u8) ^ i.wrapping_mul(37))
                .collect()
        })
        .collect();
    for (p, b) in paths.iter().zip(&bodies) {
        origin.script(p, Script::ok(b.clone()).header("content-type", "video/mp4"));
    }

    let mut v = start(&origin.url(), &store, engine);
    v.ready().await;
    for p in &paths {
        let r = v.get(v.port, p).await.expect("first fetch");
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("x-cache").as_deref(), Some("MISS"));
    }
    // Writes are asynchronous: wait (bounded) until the store holds all three.
    for _ in 0..200 {
        if v.metric("vedge_store_objects").await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        v.metric("vedge_store_objects").await,
        3,
        "{engine}: not all stored"
    );
    v.signal(sig);
    origin.stop_and_wait().await;

    // Same origin URL (now closed): default routes key on the origin's host.
    let v = start(&origin.url(), &store, engine);
    v.ready().await;
    for (p, b) in paths.iter().zip(&bodies) {
        let r = v.get(v.port, p).await.expect("fetch after restart");
        let (_, body) = r.split();
        assert_eq!(
            r.status(),
            200,
            "{engine}/{sig}: {p}: {}",
            r.text().lines().next().unwrap_or("")
        );
        assert_eq!(
            r.header("x-cache").as_deref(),
            Some("HIT"),
            "{engine}/{sig}: {p}"
        );
        assert_tier(&r, "disk", &format!("{engine}/{sig}: {p}"));
        assert_eq!(body, &b[..], "{engine}/{sig}: {p}: body differs");
    }
}

#[tokio::test]
async fn sigterm_then_restart_hits_from_disk_uring() {
    restart_serves_from_disk("auto", libc::SIGTERM).await;
}

#[tokio::test]
async fn sigkill_then_restart_hits_from_disk_uring() {
    restart_serves_from_disk("auto", libc::SIGKILL).await;
}

#[tokio::test]
async fn sigterm_then_restart_hits_from_disk_psync() {
    restart_serves_from_disk("psync", libc::SIGTERM).await;
}

#[tokio::test]
async fn sigkill_then_restart_hits_from_disk_psync() {
    restart_serves_from_disk("psync", libc::SIGKILL).await;
}

/// Issue 18 goal 2: the store keeps objects by their hits, and a hit the RAM tier serves counts.
/// A hot object, asked for again and again but always answered from RAM (never read from the
/// store), must keep its disk copy while two laps of other objects go through the store: after
/// a restart (RAM empty) with the origin gone, it is still a disk HIT. With FIFO regions, or
/// with only disk reads counted, its copy went with its region on the first lap.
#[tokio::test]
async fn an_object_served_from_ram_keeps_its_disk_copy_across_store_laps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("vedge.store");
    let origin = Origin::start().await;
    let body = |i: u32| -> Vec<u8> { (0..300_000u32).map(|b| (b ^ i) as u8).collect() };
    let hot = "/vod/hot.m4s";
    origin.script(
        hot,
        Script::ok(body(7777)).header("content-type", "video/mp4"),
    );
    // 64 MiB of 4 MiB regions: 15 regions, ~13 objects of 300 kB each, ~200 a lap (more with
    // the rewrites of objects asked for twice).
    let cold: Vec<String> = (0..700).map(|i| format!("/vod/cold_{i}.m4s")).collect();
    for (i, p) in cold.iter().enumerate() {
        origin.script(
            p,
            Script::ok(body(i as u32)).header("content-type", "video/mp4"),
        );
    }

    let mut v = start(&origin.url(), &store, "auto");
    v.ready().await;
    assert_eq!(v.get(v.port, hot).await.expect("hot").status(), 200);
    for (i, p) in cold.iter().enumerate() {
        // Twice: once the store is full, a pulled object is admitted on its second request.
        for _ in 0..2 {
            let r = v.get(v.port, p).await.expect("cold fetch");
            assert_eq!(r.status(), 200, "{p}");
        }
        if i % 8 == 0 {
            let r = v.get(v.port, hot).await.expect("hot again");
            assert_eq!(r.status(), 200);
            assert_tier(&r, "ram", "the hot object is served from RAM");
        }
    }
    v.get(v.port, hot).await.expect("hot last");
    let regions = v.metric("vedge_store_regions").await;
    // Writes are queued: on a loaded box the last laps may still be on their way to disk.
    let mut evicted = 0;
    for _ in 0..100 {
        evicted = v.metric("vedge_store_regions_evicted_total").await;
        if evicted >= 2 * regions - 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        evicted >= 2 * regions - 2,
        "the store did not wrap twice: {evicted} of {regions} regions evicted"
    );
    assert_eq!(origin.count(hot), 1);
    v.signal(libc::SIGTERM);
    origin.stop_and_wait().await;

    let v = start(&origin.url(), &store, "auto");
    v.ready().await;
    let r = v.get(v.port, hot).await.expect("hot after restart");
    assert_eq!(r.status(), 200, "{}", r.text().lines().next().unwrap_or(""));
    assert_tier(&r, "disk", "hot after restart");
    let (_, got) = r.split();
    assert_eq!(got, &body(7777)[..]);
    // A first disk read is served from the store's pooled buffers and not kept in RAM (the
    // next read is from disk again); the second is promoted.
    let r = v.get(v.port, hot).await.expect("hot read again");
    assert_tier(&r, "disk", "hot read again");
    let (_, got) = r.split();
    assert_eq!(got, &body(7777)[..]);
    let r = v.get(v.port, hot).await.expect("hot from RAM");
    assert_tier(&r, "ram", "hot from RAM");
}

/// `/metrics` is a valid Prometheus text exposition a scraper keeps every family of: each
/// family has one `# HELP` and one `# TYPE` line, before its samples, each sample belongs to
/// the family declared last (a histogram's `_bucket`, `_sum`, `_count`), and no series comes
/// twice. Before, no family had a `# HELP` line (an operator's dashboard tooling showed every
/// vedge metric without a description).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_a_valid_exposition_with_help_for_every_family() {
    use std::collections::HashSet;
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::start().await;
    origin.script("/m/seg.ts", Script::ok(vec![7u8; 4096]));
    let v = start(&origin.url(), &dir.path().join("vedge.store"), "auto");
    v.ready().await;
    // A fill, so the origin's labelled families have series.
    let got = v.get(v.port, "/m/seg.ts").await.expect("a segment");
    assert_eq!(got.status(), 200);
    let answer = v.get(v.admin, "/metrics").await.expect("metrics");
    assert_eq!(answer.status(), 200);
    let text = String::from_utf8_lossy(answer.split().1).into_owned();
    let (mut helped, mut typed, mut series) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "{line}");
            assert!(helped.insert(family.to_string()), "HELP twice: {family}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                helped.contains(family),
                "TYPE without HELP before it: {family}"
            );
            assert!(typed.insert(family.to_string()), "TYPE twice: {family}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            current = Some((family.to_string(), kind.to_string()));
        } else {
            assert!(!line.starts_with('#'), "stray comment: {line}");
            let (series_id, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "not a number: {line:?}");
            let name = series_id.split('{').next().unwrap_or(series_id);
            let (family, kind) = current.as_ref().expect("a sample before any TYPE");
            let belongs = name == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family.as_str())));
            assert!(belongs, "{name} under family {family}");
            assert!(
                series.insert(series_id.to_string()),
                "series twice: {series_id}"
            );
        }
    }
    assert!(typed.len() > 60, "{} families", typed.len());
    assert_eq!(helped, typed, "a HELP for each family, and only for those");
}
