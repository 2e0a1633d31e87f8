//! Admission: second hit within the window, size cap, write-rate cap.

use std::time::Duration;

use vedge_storage::{Admit, SkipReason, Source, StoreError};

use crate::support::*;

#[tokio::test]
async fn pulled_objects_need_a_second_attempt_pushed_do_not() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(&dir.path().join("store"), engine);
        c.admit_window = Duration::from_secs(60);
        let s = open(&c).await;
        // While the store has room, pulled objects are admitted on first sight; once it is
        // nearly full, only on their second request.
        let mut admitted = 0;
        for i in 0..200 {
            let k = format!("fill{i}");
            let fb = body_for(&k, 60_000);
            match s.insert(k.as_bytes(), meta(&k, &[], false), fb, Source::Pull) {
                Admit::Queued => admitted += 1,
                Admit::Skipped(SkipReason::FirstSighting) => break,
                other => panic!("unexpected {other:?}"),
            }
            s.flush().await;
        }
        assert!(
            admitted >= 20,
            "only {admitted} admitted while the store had room"
        );
        assert!(
            s.stats().regions_evicted == 0,
            "evicted before the store was full"
        );
        // Now nearly full: second-request admission applies.
        let b = body_for("p", 1000);
        assert_eq!(
            s.insert(b"p", meta("p", &[], false), b.clone(), Source::Pull),
            Admit::Skipped(SkipReason::FirstSighting)
        );
        assert!(!s.contains(b"p"));
        assert_eq!(
            s.insert(b"p", meta("p", &[], false), b.clone(), Source::Pull),
            Admit::Queued
        );
        assert_eq!(
            s.insert(b"q", meta("q", &[], false), b.clone(), Source::Push),
            Admit::Queued
        );
        assert_eq!(
            s.insert(b"r", meta("r", &[], true), b, Source::Pull),
            Admit::Queued,
            "pinned always admitted"
        );
        s.flush().await;
        assert!(s.contains(b"p") && s.contains(b"q") && s.contains(b"r"));
        assert_eq!(
            s.stats().skipped_writes,
            2,
            "the first post-fill object and p"
        );
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn oversized_objects_skip_the_store() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        let big = body_for("big", REGION as usize / 4);
        assert_eq!(
            s.insert(b"big", meta("big", &[], false), big.clone(), Source::Push),
            Admit::Skipped(SkipReason::TooLarge)
        );
        let err = s
            .insert_durable(b"big", meta("big", &[], false), big, Source::Push)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err}");
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn write_rate_cap_refuses_and_counts() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(&dir.path().join("store"), engine);
        c.write_rate_limit = Some(100_000);
        let s = open(&c).await;
        let mut refused = 0;
        for i in 0..20 {
            let k = format!("r{i}");
            if s.insert(
                k.as_bytes(),
                meta(&k, &[], false),
                body_for(&k, 20_000),
                Source::Pull,
            ) == Admit::Skipped(SkipReason::RateLimited)
            {
                refused += 1;
            }
        }
        // One second of burst (100 kB) admits at most four 24 KiB extents.
        assert!(refused >= 15, "refused {refused}");
        assert_eq!(s.stats().refused_writes, refused);
        s.close().await.unwrap();
    }
}

/// Issue 18: queued bodies are memory beyond the RAM tier, so `max_queued_bytes` bounds them;
/// an object larger than the bound still goes through an empty queue.
#[tokio::test]
async fn queued_writes_are_bounded_by_max_queued_bytes() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(&dir.path().join("store"), engine);
        c.max_queued_bytes = 100_000;
        let s = open(&c).await;
        // No await between inserts: the writer task (on this single-threaded runtime) cannot
        // drain the queue, so the third 40 KB object would take it past 100,000 bytes.
        let mut outcomes = Vec::new();
        for i in 0..4 {
            let k = format!("q{i}");
            outcomes.push(s.insert(
                k.as_bytes(),
                meta(&k, &[], false),
                body_for(&k, 40_000),
                Source::Push,
            ));
        }
        assert_eq!(
            &outcomes[..2],
            &[Admit::Queued, Admit::Queued],
            "{engine:?}"
        );
        assert!(
            outcomes[2..]
                .iter()
                .all(|o| *o == Admit::Skipped(SkipReason::Busy)),
            "{engine:?}: {outcomes:?}"
        );
        s.flush().await;
        assert!(s.contains(b"q0") && s.contains(b"q1") && !s.contains(b"q3"));
        // Drained: the queue takes writes again, even one larger than the bound when empty.
        let mut big = c.clone();
        big.max_queued_bytes = 1000;
        drop(s);
        let s = open(&big).await;
        let b = body_for("big", 60_000);
        assert_eq!(
            s.insert(b"big", meta("big", &[], false), b, Source::Push),
            Admit::Queued
        );
        s.flush().await;
        assert!(s.contains(b"big"));
    }
}

/// Bug: a plain insert of a key whose push it must not replace (`PushQueued`, `PushedSince`)
/// went through admission first, and a refusal there (rate, first sighting, a full queue) was
/// what its caller heard. The edge keeps a copy the store refused in its RAM tier, except for
/// those two reasons: under a write-rate cap, a viewer's fill that began before an operator's
/// push put the origin's bytes in RAM over the push. The push is checked first now.
#[tokio::test]
async fn a_push_of_the_key_is_reported_before_an_admission_refusal() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(&dir.path().join("store"), engine);
        // Less than one extent a second: every pulled insert is over the rate.
        c.write_rate_limit = Some(1_000);
        let s = open(&c).await;
        let pulled = |key: &str, mark: Option<u64>| {
            let (m, b) = (meta(key, &[], false), body_for("pulled", 20_000));
            match mark {
                Some(mark) => s.insert_since(key.as_bytes(), m, b, Source::Pull, mark),
                None => s.insert(key.as_bytes(), m, b, Source::Pull),
            }
        };
        let before_push = s.mark();
        let push = queue_push(&s, "k", 20_000).await;
        assert_eq!(
            pulled("k", None),
            Admit::Skipped(SkipReason::PushQueued),
            "{engine:?}"
        );
        s.hold_writer(false);
        push.await.unwrap().expect("the push");
        assert_eq!(
            pulled("k", Some(before_push)),
            Admit::Skipped(SkipReason::PushedSince),
            "{engine:?}: a fill begun before the push"
        );
        // The edge's re-offer of a RAM copy not yet on disk (`Edge::lookup`) is made against
        // mark 0.
        assert_eq!(
            pulled("k", Some(0)),
            Admit::Skipped(SkipReason::PushedSince),
            "{engine:?}: a RAM copy's re-offer"
        );
        assert_eq!(
            pulled("other", None),
            Admit::Skipped(SkipReason::RateLimited),
            "{engine:?}: the cap is on"
        );
        let hit = s.lookup(b"k").await.expect("the push");
        assert!(hit.meta.pinned && hit.body == body_for("k", 20_000));
        s.close().await.unwrap();
    }
}
