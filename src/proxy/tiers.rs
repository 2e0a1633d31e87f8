//! The tiers under the request path: RAM (quick_cache, byte-weighted) over the SSD store.
//! Lookup promotes disk hits to RAM; insert offers objects to the store, which decides
//! admission; purge removes keys, prefixes and tags from both. Every read of the tiers on the
//! request path goes through here (the state machine never reads `Edge::ram` itself).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use vedge_storage::{Admit, Meta, SkipReason, Source, Store};

use crate::cache::object::CachedObject;
use crate::cache::policy::ContentClass;
use crate::proxy::edge::Edge;

/// Which tier answered a lookup (the `detail` of `Cache-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Ram,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Ram => "ram",
            Tier::Disk => "disk",
        }
    }
}

impl Edge {
    /// Looks a key up in RAM, then on disk (promoting disk hits to RAM).
    pub async fn lookup(&self, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
        if let Some(o) = self.ram.get(key) {
            if !o.disk.load(Relaxed) {
                // Second request for an object not on disk yet: pulled objects are admitted
                // to the SSD on their second request.
                self.offer_to_store(key, &o);
            }
            return Some((o, Tier::Ram));
        }
        let hit = self.store.as_ref()?.lookup(key.as_bytes()).await?;
        let obj = Arc::new(CachedObject::decode(
            &hit.meta.head,
            self.zero_copy.adopt(hit.body),
            hit.meta.tags,
        )?);
        self.ram.insert(key.to_string(), obj.clone());
        Some((obj, Tier::Disk))
    }

    /// Stores a completed object: RAM always; the store decides admission (manifests never go
    /// to SSD: they live seconds).
    pub fn insert(&self, key: String, obj: Arc<CachedObject>) {
        self.offer_to_store(&key, &obj);
        self.ram.insert(key, obj);
    }

    /// Offers an object to the SSD store, which decides admission. Manifests never go to SSD
    /// (they live seconds), nor do pulled key files (they live a minute, and a key is worth
    /// keeping off disk); a permanent refusal (too large) is remembered on the object.
    fn offer_to_store(&self, key: &str, obj: &CachedObject) {
        let Some(store) = &self.store else {
            obj.disk.store(true, Relaxed);
            return;
        };
        if matches!(obj.class, ContentClass::Manifest | ContentClass::Key) && !obj.pinned {
            obj.disk.store(true, Relaxed);
            return;
        }
        let admit = store.insert(
            key.as_bytes(),
            store_meta(obj),
            obj.body.clone(),
            Source::Pull,
        );
        match admit {
            Admit::Queued | Admit::Skipped(SkipReason::TooLarge) => obj.disk.store(true, Relaxed),
            Admit::Skipped(_) => {}
        }
        tracing::trace!(key, ?admit, "store admission");
    }

    /// Bytes a new pinned (pushed) asset may still use on disk; `None` without a store.
    pub fn free_for_pinned(&self) -> Option<u64> {
        self.store.as_ref().map(Store::free_for_pinned)
    }

    /// The key's object if it is cached and fresh at `now`.
    pub async fn lookup_fresh(
        &self,
        key: &str,
        now: SystemTime,
    ) -> Option<(Arc<CachedObject>, Tier)> {
        self.lookup(key)
            .await
            .filter(|(o, _)| o.staleness(now).is_none())
    }

    /// The key's object if it is in RAM and fresh at `now` (no disk read: for the checks made
    /// while holding a fill claim).
    pub fn ram_fresh(&self, key: &str, now: SystemTime) -> Option<Arc<CachedObject>> {
        self.ram.get(key).filter(|o| o.staleness(now).is_none())
    }

    /// Removes one key (and its variants). Returns how many objects went.
    pub fn purge_key(&self, key: &str) -> usize {
        let variant_prefix = format!("{key}\0");
        let mut n = self
            .ram
            .remove_where(|k, _| k == key || k.starts_with(&variant_prefix));
        if let Some(store) = &self.store {
            let disk = store.remove(key.as_bytes()) as usize
                + store.remove_prefix(variant_prefix.as_bytes());
            n = n.max(disk);
        }
        self.vary_index.remove(key);
        self.hit_for_pass.remove(key);
        n
    }

    /// Removes every key starting with `prefix` (host + path prefix).
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.vary_index.retain(|k, _| !k.starts_with(prefix));
        let ram = self.ram.remove_where(|k, _| k.starts_with(prefix));
        let disk = self
            .store
            .as_ref()
            .map_or(0, |s| s.remove_prefix(prefix.as_bytes()));
        ram.max(disk)
    }

    /// Removes every object carrying `tag` (Surrogate-Key / Cache-Tag).
    pub fn purge_tag(&self, tag: &str) -> usize {
        let ram = self
            .ram
            .remove_where(|_, o| o.tags.iter().any(|t| t == tag));
        let disk = self.store.as_ref().map_or(0, |s| s.remove_tag(tag));
        ram.max(disk)
    }
}

/// The store's metadata for an object: the encoded head plus what the store itself acts on.
pub fn store_meta(obj: &CachedObject) -> Meta {
    Meta {
        head: obj.encode_head(),
        stored_at: obj.stored_at,
        expires_at: obj.expires_at(),
        tags: obj.tags.clone(),
        pinned: obj.pinned,
    }
}
