//! Eviction: oldest region first, pinned objects survive, the pinned share is bounded, objects
//! hit (on disk or in a tier above) are kept across reclaims within a bounded rewrite, and the
//! store's capacity holds live objects.

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

/// Objects of one lap of the store: 15 regions of 7.
const LAP: usize = 15 * 7;

#[tokio::test]
async fn objects_hit_on_disk_survive_region_reclaim() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        let hot: Vec<String> = (0..4).map(|i| format!("hot{i}")).collect();
        for k in &hot {
            put(&s, k, OBJ).await;
        }
        // Five laps of one-off objects, the hot ones asked for (and read from disk) between.
        for i in 0..5 * LAP {
            put(&s, &format!("o{i}"), OBJ).await;
            if i % 20 == 0 {
                for k in &hot {
                    assert_served(&s, k, OBJ).await;
                }
            }
        }
        assert!(s.lookup(b"o0").await.is_none(), "one-off objects still go");
        for k in &hot {
            assert_served(&s, k, OBJ).await;
        }
        assert!(
            s.stats().reinsertions >= 4 * 4,
            "hot objects were not reinserted"
        );
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn objects_hit_only_in_a_tier_above_survive_region_reclaim() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        let hot: Vec<String> = (0..4).map(|i| format!("hot{i}")).collect();
        for k in &hot {
            put(&s, k, OBJ).await;
        }
        let reads = s.stats().device_reads;
        // The edge serves these from its RAM tier: the store only hears `touch`.
        for i in 0..5 * LAP {
            put(&s, &format!("o{i}"), OBJ).await;
            if i % 20 == 0 {
                for k in &hot {
                    assert!(s.touch(k.as_bytes()), "{k} not stored");
                }
            }
        }
        let st = s.stats();
        assert_eq!(st.hits, 0, "touch is not a lookup");
        assert!(
            st.device_reads > reads,
            "kept objects are read back to be rewritten"
        );
        assert!(s.lookup(b"o0").await.is_none());
        for k in &hot {
            assert_served(&s, k, OBJ).await;
        }
        assert!(!s.touch(b"never-stored"));
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn an_object_no_longer_hit_leaves_within_three_reclaims() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        put(&s, "was-hot", OBJ).await;
        for _ in 0..10 {
            assert!(s.touch(b"was-hot"));
        }
        for i in 0..LAP + 7 {
            put(&s, &format!("o{i}"), OBJ).await;
        }
        assert!(s.contains(b"was-hot"), "kept by its first reclaim");
        // Each reclaim costs one hit: three hits buy three more laps at most.
        for i in LAP + 7..5 * LAP {
            put(&s, &format!("o{i}"), OBJ).await;
        }
        assert!(!s.contains(b"was-hot"), "kept without being hit");
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn eviction_frees_an_eighth_of_a_region_even_when_everything_is_hot() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        let n = 4 * LAP;
        for i in 0..n {
            let k = format!("o{i}");
            put(&s, &k, OBJ).await;
            // Everything is hit, over and over, while resident.
            for _ in 0..3 {
                s.touch(k.as_bytes());
            }
            // New objects always get in.
            assert_served(&s, &k, OBJ).await;
        }
        s.flush().await;
        let st = s.stats();
        assert!(st.reinsertions > 0, "hit objects were never reinserted");
        let extent = 32 * 1024;
        assert!(
            st.reinsertions * extent <= st.regions_evicted * REGION * 7 / 8,
            "{} reinsertions over {} reclaims keep more than 7/8 of a region each",
            st.reinsertions,
            st.regions_evicted
        );
        // Write amplification: at most 8 device bytes per new byte (plus one lap of slack).
        assert!(st.bytes_written <= 8 * (n as u64 + LAP as u64) * extent);
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn expired_objects_are_not_reinserted() {
    for engine in ENGINES {
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

#[tokio::test]
async fn a_full_store_keeps_live_objects_in_all_but_its_active_and_spare_regions() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        for i in 0..3 * LAP {
            put(&s, &format!("o{i}"), OBJ).await;
            if i >= LAP {
                // Reclaiming one region at a time, one region ahead (the free one is where the
                // next reclaim copies what it keeps): 13 sealed regions of 7 stay live.
                let st = s.stats();
                assert_eq!(st.regions_in_use, st.regions - 1);
                assert!(st.objects >= 13 * 7, "{} live objects", st.objects);
                assert_eq!(st.bytes, st.objects * 32 * 1024);
            }
        }
        s.close().await.unwrap();
    }
}

/// A reclaim rewrites a kept object with the checksums stored with it, without checking its
/// payload (two checksum passes per rewritten byte saved): damage travels with the copy and is
/// caught by the first lookup that reads it, which drops it. Never served either way.
#[tokio::test]
async fn a_corrupt_object_kept_by_its_hits_is_rewritten_with_its_checksums_and_never_served() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let c = cfg(&path, engine);
        let s = open(&c).await;
        put(&s, "victim", OBJ).await;
        s.flush().await;
        // Damage its payload under the running store (the edge keeps touching it from RAM).
        let data = std::fs::read(&path).unwrap();
        let h = header_of(&data, b"victim").expect("victim on disk");
        let head_len = meta("victim", &[], false).head.len();
        let hlen = 76 + "victim".len() + head_len + 2 + 4 + 4;
        flip(&path, (h + hlen + 1000) as u64);
        for i in 0..2 * LAP {
            assert!(s.touch(b"victim"), "kept by its hits at {i}");
            put(&s, &format!("o{i}"), OBJ).await;
        }
        s.flush().await;
        let st = s.stats();
        assert!(st.reinsertions >= 1, "the victim was rewritten");
        assert_eq!(st.corrupt_reads, 0, "reclaim does not read payloads");
        // The rewritten copy carries the damage and the original checksums: refused.
        assert!(s.lookup(b"victim").await.is_none());
        let st = s.stats();
        assert_eq!(st.corrupt_reads, 1, "found by the lookup's read");
        assert_eq!(st.hits, 0);
        assert!(!s.contains(b"victim"), "dropped once found");
        s.close().await.unwrap();
    }
}

/// A soft-purged object is served stale (so the edge revalidates it) until it is written
/// again by its caller; reclaim does not keep it, because its rewrite would be newer than the
/// purge and served as fresh. Whenever it is still found, it is still marked.
#[tokio::test]
async fn region_reclaim_never_clears_a_soft_purge() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&dir.path().join("store"), engine);
        let s = open(&c).await;
        put(&s, "hot", OBJ).await;
        assert_served(&s, "hot", OBJ).await;
        s.purge(&[vedge_storage::Purge {
            selector: vedge_storage::Selector::Key(b"hot".to_vec()),
            soft: true,
        }])
        .await
        .unwrap();
        assert!(s.lookup(b"hot").await.expect("kept").soft_purged);
        for i in 0..2 * LAP {
            put(&s, &format!("o{i}"), OBJ).await;
            if i % 20 == 0 {
                if let Some(hit) = s.lookup(b"hot").await {
                    assert!(
                        hit.soft_purged,
                        "soft purge lost after {i} one-off objects ({engine:?})"
                    );
                }
            }
        }
        assert!(s.stats().regions_evicted > 0, "no region was reclaimed");
        if let Some(hit) = s.lookup(b"hot").await {
            assert!(
                hit.soft_purged,
                "soft purge lost after two laps ({engine:?})"
            );
        }
        s.close().await.unwrap();
    }
}
