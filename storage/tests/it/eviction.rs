//! Eviction: oldest region first, pinned objects survive, the pinned share is bounded, and
//! reinsertion of hit objects stays within its budget.

use std::time::{Duration, SystemTime};

use vedge_storage::{Source, StoreError};

use crate::support::*;

const OBJ: usize = 30_000; // 32 KiB extent: 7 per 256 KiB region

#[tokio::test]
async fn evicts_oldest_region_first() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        // 15 regions x 7 objects: 300 objects wrap the store about three times.
        for i in 0..300 {
            put(&s, &format!("o{i}"), OBJ).await;
        }
        let st = s.stats();
        assert!(st.evictions > 0 && st.regions_evicted > 0);
        assert!(s.lookup(b"o0").await.is_none(), "oldest evicted");
        let present: Vec<bool> = (0..300)
            .map(|i| s.contains(format!("o{i}").as_bytes()))
            .collect();
        // The survivors are exactly a suffix: eviction never skips an older region.
        let first = present.iter().position(|&p| p).unwrap();
        assert!(
            present[first..].iter().all(|&p| p),
            "survivors are not the newest objects"
        );
        assert!(300 - first >= 7 * 12, "too few survivors: {}", 300 - first);
        for i in first..300 {
            assert_served(&s, &format!("o{i}"), OBJ).await;
        }
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn pinned_objects_survive_eviction_and_restart() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        for i in 0..10 {
            let k = format!("pin{i}");
            s.insert_durable(
                k.as_bytes(),
                meta(&k, &[], true),
                body_for(&k, OBJ),
                Source::Push,
            )
            .await
            .unwrap();
        }
        put(&s, "later-pinned", OBJ).await;
        assert!(s.pin(b"later-pinned").unwrap());
        for i in 0..300 {
            put(&s, &format!("o{i}"), OBJ).await;
        }
        assert!(s.stats().reinsertions >= 11);
        for i in 0..10 {
            assert_served(&s, &format!("pin{i}"), OBJ).await;
        }
        assert_served(&s, "later-pinned", OBJ).await;
        s.close().await.unwrap();
        let s = open(&c).await;
        for i in 0..10 {
            assert_served(&s, &format!("pin{i}"), OBJ).await;
        }
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn pinned_share_full_is_refused_not_lost() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        let mut pinned = Vec::new();
        let err = loop {
            let k = format!("pin{}", pinned.len());
            let before = s.free_for_pinned();
            match s
                .insert_durable(
                    k.as_bytes(),
                    meta(&k, &[], true),
                    body_for(&k, OBJ),
                    Source::Push,
                )
                .await
            {
                Ok(()) => {
                    assert!(s.free_for_pinned() < before);
                    pinned.push(k);
                }
                Err(e) => break e,
            }
            assert!(pinned.len() < 200, "pinned share never filled");
        };
        assert!(matches!(err, StoreError::Full(_)), "{err}");
        assert!(s.free_for_pinned() < 32 * 1024);
        put(&s, "plain", OBJ).await;
        assert!(matches!(s.pin(b"plain"), Err(StoreError::Full(_))));
        // Unpinned traffic keeps flowing and no pinned object is lost.
        for i in 0..100 {
            put(&s, &format!("o{i}"), OBJ).await;
        }
        for k in &pinned {
            assert_served(&s, k, OBJ).await;
        }
        assert!(s.stats().refused_writes >= 1);
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn reinsertion_of_hit_objects_is_bounded_and_skips_expired() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        for i in 0..600 {
            let k = format!("o{i}");
            put(&s, &k, OBJ).await;
            // Everything is hit once while resident.
            assert!(s.lookup(k.as_bytes()).await.is_some());
        }
        let st = s.stats();
        assert!(st.reinsertions > 0, "hit objects were never reinserted");
        let reinserted = st.reinsertions * 32 * 1024;
        assert!(
            reinserted * 5 <= st.bytes_written + 5 * REGION,
            "reinsertion {reinserted} exceeds 20% of {} written",
            st.bytes_written
        );
        s.close().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        for i in 0..300 {
            let k = format!("x{i}");
            let mut m = meta(&k, &[], false);
            m.expires_at = SystemTime::now() - Duration::from_secs(1);
            s.insert_durable(k.as_bytes(), m, body_for(&k, OBJ), Source::Push)
                .await
                .unwrap();
            assert!(s.lookup(k.as_bytes()).await.is_some());
        }
        assert_eq!(s.stats().reinsertions, 0, "expired objects were reinserted");
        s.close().await.unwrap();
    }
}
