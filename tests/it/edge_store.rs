//! Issue 3's acceptance, end to end with the real binary: `vedge serve --store` in front of an
//! origin; fetch segments; stop vedge (SIGTERM, and separately SIGKILL); stop the origin; start
//! vedge again on the same store: every segment fetched before is a HIT from disk. On the
//! io_uring engine (auto) and on psync.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use crate::support::binary::BinaryEdge;
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
        assert!(
            r.header("cache-status")
                .is_some_and(|c| c.contains("detail=disk")),
            "{engine}/{sig}: {p}: {:?}",
            r.header("cache-status")
        );
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
