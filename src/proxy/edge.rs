//! The edge's shared state: config, RAM tier, store, fills in flight, hit-for-pass memory, the
//! origin client, metrics, the clock, and the tracker of every task the edge spawns (fills,
//! background revalidations, ingest jobs), which shutdown drains before the store closes. The
//! tier operations over this state are in `tiers.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quick_cache::sync::Cache;

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use tokio_util::task::TaskTracker;
use vedge_storage::{Store, StoreConfig};

use crate::cache::lock::FillTable;
use crate::cache::ram::RamTier;
use crate::cache::vary::VarySpec;
use crate::clock::Clock;
use crate::config::Config;
use crate::http::limits::Limits;
use crate::metrics::Metrics;
use crate::origin::OriginClient;
use crate::zerocopy::ZeroCopy;

pub struct Edge {
    pub config: Config,
    /// This process's CDN-Loop node name: `node_id`, or random per start.
    pub node: String,
    pub ram: RamTier,
    /// The SSD store under the RAM tier, if configured.
    pub store: Option<Store>,
    /// Without a store, how many pushes RAM has taken: the tiers' mark (`Edge::fill_mark`).
    pub ram_pushes: AtomicU64,
    /// Keys read from the store lately: a disk hit enters RAM on its second read
    /// (`proxy::tiers::DiskReads`).
    pub disk_reads: crate::proxy::tiers::DiskReads,
    pub fills: Arc<FillTable>,
    /// Fill slots per route (`origin_client.max_fills`).
    pub fill_limit: crate::proxy::fill_limit::FillLimit,
    /// Keys asked for with a Range and passed through (`cache.range_passthrough_above`).
    pub range_seen: crate::proxy::range_pass::Seen,
    /// Which objects the stored manifests reference (purge by asset).
    pub assets: Arc<crate::proxy::assets::AssetIndex>,
    /// Keys whose responses were not shareable, until when they stay uncached.
    pub hit_for_pass: SparseCache<SystemTime>,
    /// Base keys of objects without a strong validator, until when they are fetched whole
    /// rather than in slices (`proxy::slice::applies`).
    pub unsliced: SparseCache<SystemTime>,
    /// Keys whose prefetch the edge did not keep (an error, past `cache.prefetch_max_size`),
    /// until when no prefetch asks for them again (`proxy::prefetch::start`).
    pub prefetch_refused: SparseCache<SystemTime>,
    /// Whether objects under odd spellings of their path may be in RAM (`proxy::spelling`).
    pub spellings: crate::proxy::spelling::Spellings,
    /// Base key -> the request headers its responses vary on.
    pub vary_index: SparseCache<Arc<VarySpec>>,
    /// The variants stored per base key (`proxy::vary_cap`).
    pub variants: crate::proxy::vary_cap::Variants,
    pub origin: OriginClient,
    pub metrics: Metrics,
    /// Viewer connection and request-rate limits (`[limits]`), shared by every accept loop.
    pub limits: Arc<Limits>,
    /// Zero-copy placement and sending (`server.zero_copy`): this edge's bodies, budget, pipes
    /// and counters, handed to the fill driver, the viewer sockets and the admin metrics.
    pub zero_copy: Arc<ZeroCopy>,
    /// Wall-clock time for freshness (the system clock; tests inject tokio's).
    pub clock: Clock,
    /// Every task the edge spawns that may touch the tiers: drained before the store closes.
    pub tasks: TaskTracker,
    /// Live playlists: latest copies, blocking reloads, prefetch, retention (`proxy::llhls`).
    pub live: crate::proxy::llhls::Live,
    /// Manifests rewritten for token viewers: decoded coded bodies, off-worker permits
    /// (`proxy::signed::ManifestWork`).
    pub manifests: crate::proxy::signed::ManifestWork,
    /// The gzip forms of shared manifests (`proxy::compress`).
    pub compressed: crate::proxy::compress::Compressed,
}

impl Edge {
    pub async fn new(config: Config) -> anyhow::Result<Arc<Edge>> {
        Edge::with_clock(config, Clock::System).await
    }

    /// An edge whose freshness decisions read `clock` (tests: `Clock::tokio()`).
    pub async fn with_clock(config: Config, clock: Clock) -> anyhow::Result<Arc<Edge>> {
        let node = config
            .tier
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
        let origin = OriginClient::new(
            &config.origin_client,
            config.abuse.max_connections_per_origin,
            &config.routes,
            &config.cdn_id,
            &node,
        )?
        .with_tls_viewers(config.tls.is_some())
        .with_shield(config.tier.shield.as_ref())?;
        let zero_copy = ZeroCopy::with_budgets(
            config.server.zero_copy,
            config.server.zero_copy_budgets.maps,
            config.server.zero_copy_budgets.fds,
        );
        let store = match &config.store {
            None => None,
            Some(s) => {
                let mut sc = StoreConfig::new(&s.path, s.size);
                if zero_copy.enabled() {
                    sc.read_memory = Some(Arc::new(crate::proxy::tiers::ReadsIntoZeroCopy(
                        zero_copy.clone(),
                    )));
                }
                sc.region_size = s.region_size;
                sc.adopt_region_size = !s.region_size_chosen;
                sc.reformat = s.reformat;
                sc.engine = s.io_engine;
                sc.admit_window = s.admit_window;
                sc.write_rate_limit = s.write_rate;
                sc.max_queued_bytes = store_queue_bound(config.ram_size);
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
        let metrics = Metrics::default();
        let limits = Arc::new(Limits::new(config.limits.clone(), metrics.limits.clone()));
        let edge = Arc::new(Edge {
            store,
            ram_pushes: AtomicU64::new(0),
            disk_reads: crate::proxy::tiers::DiskReads::new(config.ram_size),
            limits,
            ram: RamTier::new(
                config.ram_size,
                config.cache.max_object_size,
                zero_copy.enabled(),
            ),
            fills: Arc::new(FillTable::default()),
            fill_limit: crate::proxy::fill_limit::FillLimit::new(
                config.routes.len(),
                config.abuse.max_fills,
            ),
            range_seen: crate::proxy::range_pass::Seen::new(config.abuse.index_memory),
            assets: Default::default(),
            hit_for_pass: SparseCache::new(config.abuse.index_memory),
            unsliced: SparseCache::new(config.abuse.index_memory),
            prefetch_refused: SparseCache::new(config.abuse.index_memory),
            spellings: Default::default(),
            vary_index: SparseCache::new(config.abuse.index_memory),
            variants: SparseCache::new(config.abuse.index_memory),
            origin,
            metrics,
            zero_copy,
            clock,
            tasks: TaskTracker::new(),
            live: crate::proxy::llhls::Live::new(config.live.state_memory),
            manifests: Default::default(),
            compressed: Default::default(),
            node,
            config,
        });
        for check in edge.origin.health_tasks() {
            edge.spawn(check);
        }
        for warm in edge.origin.preconnect_tasks() {
            edge.spawn(warm);
        }
        Ok(edge)
    }

    /// Runs `task` on the runtime, tracked so shutdown waits for it before closing the store.
    /// Use it for every task that outlives a request (fills, revalidations, ingest jobs).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Waits up to `grace` for the tracked tasks, then flushes and closes the store (clean
    /// shutdown: the next start is warm and fast). A task still running after the grace period
    /// (a fill from a stalled origin) is logged and left behind: the store refuses its insert
    /// once closed, so nothing half-written is kept.
    pub async fn close(&self) {
        self.origin.stop_health();
        self.tasks.close();
        let grace = self.config.server.shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tasks.len(),
                "tasks still running after the shutdown grace period; closing the store anyway"
            );
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.clone().close().await {
                tracing::error!(error = %e, "store close failed; the next start will recover");
            }
        }
    }

    /// Whether `key` is remembered as uncacheable.
    pub fn is_hit_for_pass(&self, key: &str) -> bool {
        self.marked(&self.hit_for_pass, key)
    }

    pub fn remember_pass(&self, key: &str, ttl: Duration) {
        self.mark(&self.hit_for_pass, key, ttl);
    }

    /// Whether the object of base key `key` is remembered as one never sliced (no strong
    /// validator), so its viewers share one whole-object fill.
    pub fn is_unsliced(&self, key: &str) -> bool {
        self.marked(&self.unsliced, key)
    }

    pub fn remember_unsliced(&self, key: &str, ttl: Duration) {
        self.mark(&self.unsliced, key, ttl);
    }

    /// Whether a prefetch of `key` was refused lately (`prefetch_refused`).
    pub fn is_prefetch_refused(&self, key: &str) -> bool {
        self.marked(&self.prefetch_refused, key)
    }

    pub fn remember_prefetch_refused(&self, key: &str, ttl: Duration) {
        self.mark(&self.prefetch_refused, key, ttl);
    }

    /// Whether `map` marks `key` until a time still to come (an expired mark is dropped).
    fn marked(&self, map: &SparseCache<SystemTime>, key: &str) -> bool {
        match map.get(key) {
            Some(until) if until > self.clock.now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn mark(&self, map: &SparseCache<SystemTime>, key: &str, ttl: Duration) {
        if !ttl.is_zero() {
            // The TTL comes from config (validated), but never trust an addition to overflow.
            let now = self.clock.now();
            let until = now.checked_add(ttl).unwrap_or(now);
            map.insert(key.to_string(), until);
        }
    }
}

/// A map bounded in bytes that is empty on most edges (hit-for-pass keys, Vary specs) but
/// consulted on every request: until something is first inserted, reads return at once instead
/// of hashing the key and taking a shard lock (quick_cache's `is_empty` locks every shard).
///
/// Each entry weighs its key's length, its value's estimate (`Weigh`) and `ENTRY_OVERHEAD` for
/// the map's own bookkeeping, so a flood of long hostile keys evicts older entries instead of
/// growing the process (`cache.index_memory` per map).
pub struct SparseCache<V: Weigh> {
    map: Cache<String, V, ByteWeight>,
    used: AtomicBool,
}

/// What a map entry's value costs in memory, beyond the key (an estimate: cheap to compute).
pub trait Weigh {
    fn weight(&self) -> u64;
}

impl Weigh for SystemTime {
    fn weight(&self) -> u64 {
        std::mem::size_of::<SystemTime>() as u64
    }
}

impl Weigh for Arc<VarySpec> {
    fn weight(&self) -> u64 {
        // The Arc's allocation (two counts and the Vec) plus each header name's bytes.
        let names: u64 = self.0.iter().map(|n| n.as_str().len() as u64 + 32).sum();
        48 + names
    }
}

/// Per-entry bookkeeping (hash slot, String and value headers) counted on top of the bytes.
const ENTRY_OVERHEAD: u64 = 64;

/// quick_cache weighter: key bytes + value estimate + overhead.
#[derive(Clone, Copy)]
pub struct ByteWeight;

impl<V: Weigh> quick_cache::Weighter<String, V> for ByteWeight {
    fn weight(&self, key: &String, val: &V) -> u64 {
        key.len() as u64 + val.weight() + ENTRY_OVERHEAD
    }
}

impl<V: Clone + Weigh> SparseCache<V> {
    /// A map weighing at most `bytes` (estimated).
    pub fn new(bytes: u64) -> SparseCache<V> {
        // quick_cache sizes its tables for the expected count: guess entries of ~128 bytes.
        let items = (bytes / 128).clamp(16, 1 << 20) as usize;
        SparseCache {
            map: Cache::with_weighter(items, bytes, ByteWeight),
            used: AtomicBool::new(false),
        }
    }

    /// The estimated bytes the entries weigh now.
    pub fn weight(&self) -> u64 {
        self.map.weight()
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

    /// The entry of `key`, made by `make` if there is none: one atomic step, so two requests
    /// racing on a new key share one value.
    pub fn get_or_insert_with(&self, key: &str, make: impl FnOnce() -> V) -> V {
        self.used.store(true, Relaxed);
        match self
            .map
            .get_or_insert_with(key, || Ok::<_, std::convert::Infallible>(make()))
        {
            Ok(v) => v,
            Err(never) => match never {},
        }
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

/// Bytes of pulled objects the store may hold queued for writing: half the RAM tier, between
/// 16 MiB and 256 MiB (the store's default, reached at the default 512 MiB tier). A queued body
/// outlives its RAM-tier copy when the tier evicts it first, so under a memory budget the
/// queue has to shrink with the tier (issue 18: a 64 MiB tier with a fixed 256 MiB queue was
/// OOM-killed in a 256 MiB cgroup).
fn store_queue_bound(ram_size: u64) -> u64 {
    (ram_size / 2).clamp(16 << 20, 256 << 20)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_write_queue_shrinks_with_the_ram_tier() {
        assert_eq!(store_queue_bound(64 << 20), 32 << 20);
        assert_eq!(store_queue_bound(1 << 20), 16 << 20);
        // The default tier keeps the store's default queue; larger tiers do not grow it.
        assert_eq!(
            store_queue_bound(crate::config::DEFAULT_RAM_SIZE),
            256 << 20
        );
        assert_eq!(store_queue_bound(8 << 30), 256 << 20);
    }

    #[test]
    fn sparse_cache_is_bounded_in_bytes_not_entries() {
        let map: SparseCache<SystemTime> = SparseCache::new(64 << 10);
        // Long hostile keys: 1,000 of 4 KiB would be 4 MiB unbounded.
        for i in 0..1000 {
            map.insert(
                format!("{i:04}{}", "k".repeat(4096)),
                SystemTime::UNIX_EPOCH,
            );
        }
        assert!(map.weight() <= 64 << 10, "weight {}", map.weight());
        // Short keys still fit by the hundred.
        let small: SparseCache<SystemTime> = SparseCache::new(64 << 10);
        for i in 0..300 {
            small.insert(format!("/k/{i}"), SystemTime::UNIX_EPOCH);
        }
        assert!(small.get("/k/299").is_some());
    }
}
