//! The edge's shared state: config, RAM tier, store, fills in flight, hit-for-pass memory, the
//! origin client and metrics; and the tier operations (lookup, insert, purge) over RAM and disk.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quick_cache::sync::Cache;

use crate::admin::metrics::Metrics;
use crate::cache::lock::FillTable;
use crate::cache::memfile;
use crate::cache::object::CachedObject;
use crate::cache::policy::ContentClass;
use crate::cache::ram::RamTier;
use crate::cache::vary::VarySpec;
use crate::config::Config;
use crate::origin::OriginClient;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use vedge_storage::{Admit, Meta, SkipReason, Source, Store, StoreConfig};

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

pub struct Edge {
    pub config: Config,
    /// This process's CDN-Loop node name: random per start.
    pub node: String,
    pub ram: RamTier,
    /// The SSD store under the RAM tier, if configured.
    pub store: Option<Store>,
    pub fills: Arc<FillTable>,
    /// Keys whose responses were not shareable, until when they stay uncached.
    pub hit_for_pass: SparseCache<SystemTime>,
    /// Base key -> the request headers its responses vary on.
    pub vary_index: SparseCache<Arc<VarySpec>>,
    pub origin: OriginClient,
    pub metrics: Metrics,
}

impl Edge {
    pub async fn new(config: Config) -> anyhow::Result<Arc<Edge>> {
        let node = format!("{:08x}", rand::random::<u32>());
        let origin = OriginClient::new(&config.origin_client, &config.cdn_id, &node);
        let store = match &config.store {
            None => None,
            Some(s) => {
                let mut sc = StoreConfig::new(&s.path, s.size);
                sc.region_size = s.region_size;
                sc.reformat = s.reformat;
                sc.engine = s.io_engine;
                sc.admit_window = s.admit_window;
                sc.write_rate_limit = s.write_rate;
                let store = Store::open(sc)
                    .await
                    .map_err(|e| anyhow::anyhow!("store {}: {e}", s.path.display()))?;
                let st = store.stats();
                tracing::info!(
                    path = %s.path.display(),
                    objects = st.objects,
                    bytes = st.bytes,
                    engine = ?st.engine,
                    direct_io = st.direct_io,
                    "store open"
                );
                Some(store)
            }
        };
        memfile::configure(config.server.zero_copy);
        Ok(Arc::new(Edge {
            store,
            ram: RamTier::new(config.ram_size, config.cache.max_object_size),
            fills: Arc::new(FillTable::default()),
            hit_for_pass: SparseCache::new(100_000),
            vary_index: SparseCache::new(100_000),
            origin,
            metrics: Metrics::default(),
            node,
            config,
        }))
    }

    /// Flushes and closes the store (clean shutdown: the next start is warm and fast).
    pub async fn close(&self) {
        if let Some(store) = &self.store {
            if let Err(e) = store.clone().close().await {
                tracing::error!(error = %e, "store close failed; the next start will recover");
            }
        }
    }

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
            memfile::adopt(hit.body),
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
    /// (they live seconds); a permanent refusal (too large) is remembered on the object.
    fn offer_to_store(&self, key: &str, obj: &CachedObject) {
        let Some(store) = &self.store else {
            obj.disk.store(true, Relaxed);
            return;
        };
        if obj.class == ContentClass::Manifest && !obj.pinned {
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

    /// Whether `key` is remembered as uncacheable.
    pub fn is_hit_for_pass(&self, key: &str) -> bool {
        match self.hit_for_pass.get(key) {
            Some(until) if until > SystemTime::now() => true,
            Some(_) => {
                self.hit_for_pass.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn remember_pass(&self, key: &str, ttl: Duration) {
        if !ttl.is_zero() {
            self.hit_for_pass
                .insert(key.to_string(), SystemTime::now() + ttl);
        }
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

/// A bounded map that is empty on most edges (hit-for-pass keys, Vary specs) but consulted on
/// every request: until something is first inserted, reads return at once instead of hashing the
/// key and taking a shard lock (quick_cache's `is_empty` locks every shard).
pub struct SparseCache<V> {
    map: Cache<String, V>,
    used: AtomicBool,
}

impl<V: Clone> SparseCache<V> {
    pub fn new(capacity: usize) -> SparseCache<V> {
        SparseCache {
            map: Cache::new(capacity),
            used: AtomicBool::new(false),
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        if !self.used.load(Relaxed) {
            return None;
        }
        self.map.get(key)
    }

    pub fn insert(&self, key: String, value: V) {
        self.used.store(true, Relaxed);
        self.map.insert(key, value);
    }

    pub fn remove(&self, key: &str) {
        if self.used.load(Relaxed) {
            self.map.remove(key);
        }
    }

    pub fn retain(&self, keep: impl Fn(&String, &V) -> bool) {
        if self.used.load(Relaxed) {
            self.map.retain(keep);
        }
    }
}
