//! Region reclaim under faults: a crash or a write error at any write of a region rollover
//! (seal, reclaim of the oldest region, open of the next) loses none of the objects reclaim
//! keeps (pinned ones written with `insert_durable`, and hot ones); pins and unpins made while
//! a reclaim is under way hold.

use std::path::Path;

use vedge_storage::{EngineChoice, Source, Store, StoreConfig};

use crate::support::*;

const OBJ: usize = 30_000; // 32 KiB extents: 7 per 256 KiB region, 15 regions
const PINNED: [&str; 3] = ["pin0", "pin1", "pin2"];
/// Device writes swept by the fault tests: from the first write of the rollover (the seal of
/// the 13th region) past the end of the reclaim, in every design this store has had.
const FAULT_POINTS: u32 = 28;

/// A store whose oldest region holds three pinned objects and a hot one (all written with
/// `insert_durable`), filled to 13 of its 15 regions with plain inserts: nothing reclaimed yet,
/// the next two regions' worth of writes reclaim the oldest. Made once per engine and closed;
/// each case opens a copy (`from_template`).
async fn template(engine: EngineChoice) -> (tempfile::TempDir, StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&dir.path().join("store"), engine);
    let s = open(&c).await;
    for k in PINNED {
        s.insert_durable(
            k.as_bytes(),
            meta(k, &[], true),
            body_for(k, OBJ),
            Source::Push,
        )
        .await
        .unwrap();
    }
    put(&s, "hot", OBJ).await;
    for i in 0..13 * 7 - 4 {
        insert(&s, &format!("o{i}"));
    }
    s.flush().await;
    assert_eq!(s.stats().regions_evicted, 0, "reclaimed during setup");
    s.close().await.unwrap();
    (dir, c)
}

/// Opens a copy of the template store in `dir`, with "hot" hit since it was written.
async fn from_template(t: &StoreConfig, dir: &Path) -> (Store, StoreConfig) {
    let mut c = t.clone();
    c.path = dir.join("store");
    std::fs::copy(&t.path, &c.path).unwrap();
    let journal = |p: &Path| p.with_extension("purges");
    if journal(&t.path).exists() {
        std::fs::copy(journal(&t.path), journal(&c.path)).unwrap();
    }
    let s = open(&c).await;
    for _ in 0..3 {
        assert!(s.touch(b"hot"));
    }
    (s, c)
}

fn insert(s: &Store, k: &str) {
    s.insert(
        k.as_bytes(),
        meta(k, &[], false),
        body_for(k, OBJ),
        Source::Push,
    );
}

/// Writes until a rollover's reclaim is reading back what it keeps (device reads held), runs
/// `during` while it waits there, then lets the reclaim and the writes finish.
async fn during_reclaim_read_back(s: &Store, during: impl FnOnce()) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    s.hold_reads(true);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn({
        let (s, stop) = (s.clone(), stop.clone());
        async move {
            for i in 0..4 * 7 {
                if stop.load(SeqCst) {
                    return;
                }
                put(&s, &format!("t{i}"), OBJ).await;
            }
            panic!("no reclaim read anything back");
        }
    });
    s.reads_held(1).await;
    stop.store(true, SeqCst);
    during();
    s.hold_reads(false);
    writes.await.unwrap();
}

/// Whether `k` is served with the bytes it was written with.
async fn served(s: &Store, k: &str) -> bool {
    s.lookup(k.as_bytes())
        .await
        .is_some_and(|h| h.body == body_for(k, OBJ))
}

/// Bug: the oldest region was reused (its header rewritten with a new generation) before the
/// objects reclaim kept from it were written elsewhere, so a crash in between lost them.
#[tokio::test]
async fn a_crash_at_any_write_of_a_region_reclaim_loses_no_kept_object() {
    for engine in ENGINES {
        let (_t, template) = template(engine).await;
        let mut reclaimed = 0;
        for n in 0..FAULT_POINTS {
            let dir = tempfile::tempdir().unwrap();
            let (s, c) = from_template(&template, dir.path()).await;
            s.inject_write_errno_after(n, libc::EIO);
            for i in 0..2 * 7 + 4 {
                insert(&s, &format!("t{i}"));
            }
            s.flush().await;
            reclaimed += s.stats().regions_evicted;
            drop(s); // nothing more reaches the file: a crash after write n
            let s = open(&c).await;
            for k in PINNED.iter().copied().chain(["hot"]) {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: crash after {n} writes of the rollover: {k} lost"
                );
            }
            assert_eq!(s.stats().corrupt_reads, 0, "{engine:?} crash after {n}");
            // Reclaim goes on after the crash, and keeps the pinned objects.
            for i in 0..3 * 7 {
                insert(&s, &format!("u{i}"));
            }
            s.flush().await;
            assert!(s.stats().regions_evicted > 0, "{engine:?} crash after {n}");
            for k in PINNED {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: crash after {n}, then more writes: {k} lost"
                );
            }
        }
        assert!(
            reclaimed > 0,
            "{engine:?}: no reclaim finished in the sweep"
        );
    }
}

/// Bug: a write error while reclaim carried objects over to the next region dropped them:
/// they were neither readable where they were nor written again.
#[tokio::test]
async fn a_write_error_at_any_write_of_a_region_rollover_loses_nothing_readable() {
    for engine in ENGINES {
        let (_t, template) = template(engine).await;
        for n in 0..FAULT_POINTS {
            let dir = tempfile::tempdir().unwrap();
            let (s, c) = from_template(&template, dir.path()).await;
            s.inject_write_errno_after(n, libc::EIO);
            for i in 0..2 * 7 + 4 {
                insert(&s, &format!("t{i}"));
            }
            s.flush().await;
            for k in PINNED.iter().copied().chain(["hot"]) {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: write error after {n} writes of the rollover: {k} no longer served"
                );
            }
            // The device recovers: reclaim is retried by later writes and keeps them.
            s.inject_write_errno(0);
            for i in 0..3 * 7 {
                insert(&s, &format!("u{i}"));
            }
            s.flush().await;
            assert!(s.stats().regions_evicted > 0, "{engine:?} error after {n}");
            for k in PINNED {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: error after {n}, then more writes: {k} lost"
                );
            }
            drop(s);
            let s = open(&c).await;
            for k in PINNED {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: error after {n}, reopened: {k} lost"
                );
            }
        }
    }
}

/// Bug: reclaim read an object's pin before reading the region back and applied it after, so a
/// pin or unpin in between was lost: an object pinned meanwhile was evicted, one unpinned
/// meanwhile was kept pinned.
#[tokio::test]
async fn a_pin_or_unpin_during_reclaims_read_back_holds() {
    for engine in ENGINES {
        let (_t, template) = template(engine).await;
        let dir = tempfile::tempdir().unwrap();
        // The oldest region holds pin0 (pinned: reclaim keeps it) and o0 (neither pinned nor
        // hit: reclaim drops it).
        let (s, _) = from_template(&template, dir.path()).await;
        during_reclaim_read_back(&s, || {
            assert!(s.pin(b"o0").unwrap(), "{engine:?}: o0 is stored");
            assert!(s.unpin(b"pin0"), "{engine:?}: pin0 is stored");
        })
        .await;
        match s.lookup(b"o0").await {
            Some(hit) => assert!(
                hit.meta.pinned,
                "{engine:?}: o0, pinned during reclaim's read-back, was kept unpinned"
            ),
            None => panic!("{engine:?}: o0, pinned during reclaim's read-back, was evicted"),
        }
        let hit = s
            .lookup(b"pin0")
            .await
            .expect("pin0 kept: it was read back");
        assert!(
            !hit.meta.pinned,
            "{engine:?}: pin0, unpinned during reclaim's read-back, is pinned again"
        );
        // And eviction goes by the new pins from then on: two laps later (the lookup above
        // was a hit, which buys pin0 one more reclaim) o0 is there, pin0 gone.
        for i in 0..2 * 15 * 7 {
            insert(&s, &format!("u{i}"));
        }
        s.flush().await;
        assert!(
            served(&s, "o0").await,
            "{engine:?}: pinned o0 evicted later"
        );
        assert!(!s.contains(b"pin0"), "{engine:?}: unpinned pin0 still kept");
        s.close().await.unwrap();
    }
}

/// Bug: an object pinned while its region's reclaim read back what it keeps was copied after
/// the purge marks older than every region still in use were dropped, the mark that purged it
/// among them (taken while its region was the one being written), so the copy brought a purged
/// object back, newer than its purge.
#[tokio::test]
async fn an_object_pinned_during_reclaim_stays_purged() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        // The first region: a pinned object (reclaim keeps it: a read to hold) and p/x, purged
        // by prefix while this region is the one being written.
        s.insert_durable(
            b"pin0",
            meta("pin0", &[], true),
            body_for("pin0", OBJ),
            Source::Push,
        )
        .await
        .unwrap();
        put(&s, "p/x", OBJ).await;
        // Not looked up after: a lookup that finds it purged drops it from the index.
        s.remove_prefix(b"p/");
        for i in 0..13 * 7 - 2 {
            insert(&s, &format!("o{i}"));
        }
        s.flush().await;
        assert_eq!(s.stats().regions_evicted, 0, "reclaimed during setup");
        // The index still holds the purged object (a prefix purge is a mark): the pin takes.
        during_reclaim_read_back(&s, || {
            assert!(s.pin(b"p/x").unwrap(), "{engine:?}: p/x is in the index");
        })
        .await;
        s.flush().await;
        assert!(
            s.lookup(b"p/x").await.is_none(),
            "{engine:?}: p/x, purged, came back after a pin during reclaim"
        );
        s.close().await.unwrap();
        let s = open(&c).await;
        assert!(
            s.lookup(b"p/x").await.is_none(),
            "{engine:?}: p/x, purged, came back after a restart"
        );
        s.close().await.unwrap();
    }
}

/// Bug: a device read error while reclaim read back what it keeps dropped the object at once:
/// one transient EIO made a pinned (pushed) object vanish with its region. Reclaim now tries a
/// read three times; one or two failed reads lose nothing.
#[tokio::test]
async fn a_transient_read_error_during_reclaims_read_back_keeps_every_pinned_object() {
    for engine in ENGINES {
        let (_t, template) = template(engine).await;
        // Two first: two of the four objects kept (three pinned) fail once, so a pinned one
        // is among them.
        for failed in [2, 1u32] {
            let dir = tempfile::tempdir().unwrap();
            let (s, c) = from_template(&template, dir.path()).await;
            let evicted = s.stats().regions_evicted;
            during_reclaim_read_back(&s, || s.inject_read_errno(libc::EIO, failed)).await;
            s.flush().await;
            assert!(
                s.stats().regions_evicted > evicted,
                "{engine:?}: the oldest region was reclaimed"
            );
            assert_eq!(
                s.stats().read_errors,
                u64::from(failed),
                "{engine:?}: every injected read error is counted"
            );
            for k in PINNED.iter().copied().chain(["hot"]) {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: {failed} failed read(s) during reclaim's read-back: {k} lost"
                );
            }
            for k in PINNED {
                let hit = s.lookup(k.as_bytes()).await.expect("served above");
                assert!(hit.meta.pinned, "{engine:?}: {k} no longer pinned");
            }
            assert_eq!(s.stats().pinned_lost, 0, "{engine:?}");
            // The copies are the committed ones: they survive a restart.
            s.close().await.unwrap();
            let s = open(&c).await;
            for k in PINNED {
                assert!(
                    served(&s, k).await,
                    "{engine:?}: {failed} failed read(s), reopened: {k} lost"
                );
            }
            s.close().await.unwrap();
        }
    }
}

/// A device that fails every read while reclaim reads back what it keeps: the reclaim still
/// completes (writes go on: one bad sector must not stop the store), the pinned objects it
/// could not read are dropped, logged and counted (`pinned_lost`), never served torn, and once
/// the device reads again the store serves and reclaims as before.
#[tokio::test]
async fn a_persistent_read_error_during_reclaim_counts_the_lost_pinned_objects_and_does_not_wedge_the_store(
) {
    for engine in ENGINES {
        let (_t, template) = template(engine).await;
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = from_template(&template, dir.path()).await;
        let evicted = s.stats().regions_evicted;
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            during_reclaim_read_back(&s, || s.inject_read_errno(libc::EIO, u32::MAX)),
        )
        .await
        .unwrap_or_else(|_| panic!("{engine:?}: writes wedged by failing reads"));
        s.flush().await;
        let st = s.stats();
        assert!(
            st.regions_evicted > evicted,
            "{engine:?}: the reclaim completed"
        );
        assert_eq!(
            st.pinned_lost,
            PINNED.len() as u64,
            "{engine:?}: pinned objects lost to read errors are counted"
        );
        s.inject_read_errno(0, 0);
        for k in PINNED {
            assert!(
                s.lookup(k.as_bytes()).await.is_none(),
                "{engine:?}: {k}, never read back, is still served"
            );
        }
        // The device reads again: new objects are written, served, and reclaimed past.
        for i in 0..3 * 7 {
            put(&s, &format!("u{i}"), OBJ).await;
        }
        s.flush().await;
        assert!(s.stats().regions_evicted > st.regions_evicted, "{engine:?}");
        for i in 0..3 * 7 {
            assert!(served(&s, &format!("u{i}")).await, "{engine:?}: u{i}");
        }
        s.close().await.unwrap();
    }
}

/// Bug: `SkipReason::PushedSince` compared a fill's mark with where the pushed object lay, so
/// a reclaim that moved a pinned object into a newer region made it look pushed after every
/// mark taken before the move: a fill that began after the push (refreshing it) was skipped
/// as if it had begun before it. The comparison is with when the push was written, which a
/// move keeps: after the move, a fill begun before the push is still skipped, and one begun
/// after the push (before the move) replaces it, as it would have without the move.
#[tokio::test]
async fn a_reclaim_moving_a_push_does_not_change_which_fills_it_outlives() {
    use vedge_storage::{Admit, SkipReason};
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&cfg(&dir.path().join("store"), engine)).await;
        let before_push = s.mark();
        s.insert_durable(b"k", meta("k", &[], true), body_for("k", OBJ), Source::Push)
            .await
            .unwrap();
        let after_push = s.mark();
        // Plain writes until the push's region (the first) is reclaimed: the push, pinned, is
        // copied into a newer region; nothing else there is kept (never hit).
        for i in 0..20 * 7 {
            if s.stats().regions_evicted > 0 {
                break;
            }
            put(&s, &format!("o{i}"), OBJ).await;
        }
        let st = s.stats();
        assert!(st.regions_evicted > 0, "{engine:?}: nothing reclaimed");
        assert_eq!(
            st.reinsertions, 1,
            "{engine:?}: the push was the one object kept"
        );
        let fill = |mark| {
            s.insert_since(
                b"k",
                meta("k", &[], false),
                body_for("pulled", OBJ),
                Source::Pull,
                mark,
            )
        };
        assert_eq!(
            fill(before_push),
            Admit::Skipped(SkipReason::PushedSince),
            "{engine:?}: a fill begun before the push replaced it once reclaim moved it"
        );
        assert!(s.lookup(b"k").await.expect("the push").meta.pinned);
        assert_eq!(
            fill(after_push),
            Admit::Queued,
            "{engine:?}: a fill begun after the push (before reclaim moved it) did not \
             replace it"
        );
        s.flush().await;
        let hit = s.lookup(b"k").await.expect("the fill's copy");
        assert!(
            !hit.meta.pinned && hit.body == body_for("pulled", OBJ),
            "{engine:?}"
        );
        s.close().await.unwrap();
    }
}
