//! The tiers under the request path: RAM (quick_cache, byte-weighted) over the SSD store.
//! Lookup promotes disk hits to RAM from an object's second disk read on (`DiskReads`); insert
//! offers objects to the store, which decides admission; purge removes keys, prefixes and tags from both. Every read of the tiers on the
//! request path goes through here (the state machine never reads `Edge::ram` itself).

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::SystemTime;

use vedge_storage::{
    Admit, Meta, Purge, ReadMemory, ReadTarget, Selector, SkipReason, Source, Store, StoreError,
};

use crate::cache::lock::{FillGuard, PurgeSelector};
use crate::cache::object::CachedObject;
use crate::cache::policy::ContentClass;
use crate::proxy::edge::Edge;
use crate::zerocopy::{Blank, ZeroCopy};

/// The store's reads of objects land in zero-copy mappings (`zerocopy::Blank`): a disk hit's
/// body is sent with `vmsplice` + `splice` and promoted to RAM as it is, with no copy after the
/// device read (before, each hit was read into a heap buffer and copied into a fresh mapping:
/// that copy and its page faults were the top of a disk-hit profile). Reads too small for
/// zero-copy, or past its budgets, use the store's own buffers.
pub struct ReadsIntoZeroCopy(pub Arc<ZeroCopy>);

impl std::fmt::Debug for ReadsIntoZeroCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadsIntoZeroCopy")
    }
}

impl ReadMemory for ReadsIntoZeroCopy {
    fn target(&self, len: usize) -> Option<ReadTarget> {
        let blank = Blank::new(&self.0, len)?;
        let (ptr, len) = (blank.as_mut_ptr(), blank.size());
        // SAFETY: the store calls the finisher only after a read that filled all `len` bytes.
        let finish = move || unsafe { blank.into_body() };
        // SAFETY: the mapping is page-aligned (4096 divides the page size), `len` bytes long,
        // zero-filled when made and written by nobody else; `Blank`, moved into the finisher,
        // keeps it alive until the store calls the finisher or drops it.
        Some(unsafe { ReadTarget::new(ptr, len, finish) })
    }
}

/// Disk hits smaller than this are promoted to RAM on their first read (see `DiskReads`).
const PROMOTE_AT_ONCE_BELOW: usize = 64 << 10;

/// The keys read from disk lately (hashes only, a bounded LRU-ish set): a disk hit is promoted
/// to RAM on the key's second read within that memory, not its first. Promoting every disk hit
/// made each one map, fault in, zero and later unmap fresh memory for an object the cold tail
/// of a catalogue asks for once; with 16 GiB of 1-2 MiB objects under a 2 GiB budget that churn
/// (clear_page, page pinning, unmap) was a quarter of the edge's CPU. A first read is served
/// from the store's pooled buffers (copied to the socket) and the buffer goes back to the pool.
/// Bodies under `PROMOTE_AT_ONCE_BELOW` are promoted on their first read: each costs a small
/// heap allocation and no mapping.
pub struct DiskReads {
    seen: quick_cache::sync::Cache<u64, ()>,
    hasher: std::hash::RandomState,
}

impl DiskReads {
    /// Remembers the last `ram_size / 512 KiB` keys read (at least 1,024): a few times the
    /// objects of segment size the RAM tier holds.
    pub fn new(ram_size: u64) -> DiskReads {
        let n = (ram_size / (512 << 10)).clamp(1024, 1 << 20) as usize;
        DiskReads {
            seen: quick_cache::sync::Cache::new(n),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Whether `key` was read from disk before (within memory); remembers it either way.
    fn read_again(&self, key: &str) -> bool {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        if self.seen.get(&h).is_some() {
            return true;
        }
        self.seen.insert(h, ());
        false
    }
}

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
                // to the SSD on their second request. Refused for a push of the key on its way
                // to disk, or written after this copy's fill began: this copy goes, and the
                // next request reads the push. Against the fill's own mark, not 0: a fill that
                // refreshed a stale push (the store refused its copy for admission) is newer
                // than the push, and dropping it sent the next request to the stale push and
                // the origin again, each time admission refused the refresh.
                if !self.offer_to_store(key, &o, Some(o.store_mark)) {
                    self.ram.remove(key);
                }
            } else if let Some(store) = &self.store {
                // The store keeps objects by their hits: a hit served from RAM counts too, or
                // an object hot enough to live in RAM loses its disk copy and is fetched from
                // the origin again the moment RAM lets it go.
                store.touch(key.as_bytes());
            }
            return Some((o, Tier::Ram));
        }
        // Boxed: a RAM hit's future stays a few bytes, not the store read's state machine,
        // which every request future would otherwise carry and move.
        Box::pin(self.lookup_disk(key)).await
    }

    async fn lookup_disk(&self, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
        let store = self.store.as_ref()?;
        // A purge or a write of the key while the read runs wins over what it read: a purge
        // clears RAM before the store, and a push lands in RAM before its write ends, so a
        // copy read before them and put in RAM after would answer as a fresh HIT for its TTL.
        let (epoch, mark) = (self.fills.purge_epoch(), store.mark());
        let again = self.disk_reads.read_again(key);
        let hit = if again {
            store.lookup(key.as_bytes()).await?
        } else {
            store.lookup_once(key.as_bytes()).await?
        };
        let promote = again || hit.body.len() < PROMOTE_AT_ONCE_BELOW;
        let body = if promote {
            self.zero_copy.adopt(hit.body)
        } else {
            hit.body
        };
        let mut obj = CachedObject::decode(&hit.meta.head, body, hit.meta.tags)?;
        if hit.soft_purged {
            expire_now(&mut obj, self.clock.now());
        }
        let obj = Arc::new(obj);
        // Purged meanwhile: a miss. Replaced meanwhile (a push, a newer fill): served to this
        // request, which began before, but not kept in RAM over the newer copy.
        let kept = self.fills.unless_purged_since(epoch, key, &obj.tags, || {
            if promote && store.unchanged_since(key.as_bytes(), mark) {
                self.ram.insert(key.to_string(), obj.clone());
            }
        });
        kept.then_some((obj, Tier::Disk))
    }

    /// The key's object without counting a request for it: RAM without a hit (no store
    /// admission, no touch), the store read once without promotion. For checks made on another
    /// request's behalf (a passed HEAD), which must not warm or keep what nobody asked for.
    pub async fn peek(&self, key: &str) -> Option<Arc<CachedObject>> {
        if let Some(o) = self.ram.peek(key) {
            return Some(o);
        }
        let hit = self.store.as_ref()?.lookup_once(key.as_bytes()).await?;
        CachedObject::decode(&hit.meta.head, hit.body, hit.meta.tags).map(Arc::new)
    }

    /// Stores a completed object: RAM, unless the store holds an operator's push of the key on
    /// its way to disk (see `offer_to_store`); the store decides admission (manifests never go
    /// to SSD: they live seconds).
    pub fn insert(&self, key: String, obj: Arc<CachedObject>) {
        self.insert_since(key, obj, None);
    }

    /// [`Edge::insert`] of what a fill fetched since the store's `mark`: a push of the key stored
    /// after it (an operator's push that landed while the fill ran) is kept, on disk and for the
    /// next viewer, and the fill's copy goes nowhere.
    fn insert_since(&self, key: String, obj: Arc<CachedObject>, mark: Option<u64>) {
        if self.offer_to_store(&key, &obj, mark) {
            self.ram.insert(key, obj);
        }
    }

    /// Offers an object to the SSD store, which decides admission. Manifests never go to SSD
    /// (they live seconds), nor do pulled key files (they live a minute, and a key is worth
    /// keeping off disk); a permanent refusal (too large) is remembered on the object.
    ///
    /// Returns whether the object may be kept in RAM: not when the store skipped it for a
    /// push of the key that is queued or being written (`SkipReason::PushQueued`) or written
    /// since `mark` (`PushedSince`), nor, without a store, when RAM holds a push of the key
    /// made since `mark` (`Edge::insert_push`). That push is the version the operator asked
    /// for; a fill's copy in RAM would shadow it, and one put there just after the push's
    /// handler cleared the key would stay until evicted.
    fn offer_to_store(&self, key: &str, obj: &CachedObject, mark: Option<u64>) -> bool {
        let odd = self.spellings.note(key, |k| self.ram.contains(k));
        let Some(store) = &self.store else {
            obj.disk.store(true, Relaxed);
            // Without a store, RAM keeps a push as the store would (`PushedSince`).
            return !mark.is_some_and(|m| {
                !obj.pinned
                    && self
                        .ram
                        .peek(key)
                        .is_some_and(|held| held.pinned && held.store_mark >= m)
            });
        };
        // An odd spelling of a path stays in RAM, where purges can read its key
        // (`proxy::spelling`).
        if odd && !obj.pinned {
            obj.disk.store(true, Relaxed);
            return true;
        }
        if matches!(obj.class, ContentClass::Manifest | ContentClass::Key) && !obj.pinned {
            obj.disk.store(true, Relaxed);
            return true;
        }
        // Live segments stay off disk, unless the route keeps a DVR window (`proxy::llhls`).
        if !obj.pinned && !self.live.admits_to_store(key) {
            obj.disk.store(true, Relaxed);
            return true;
        }
        let (meta, body) = (store_meta(obj), obj.body.clone());
        let admit = match mark {
            Some(m) => store.insert_since(key.as_bytes(), meta, body, Source::Pull, m),
            None => store.insert(key.as_bytes(), meta, body, Source::Pull),
        };
        tracing::trace!(key, ?admit, "store admission");
        match admit {
            Admit::Queued | Admit::Skipped(SkipReason::TooLarge) => obj.disk.store(true, Relaxed),
            Admit::Skipped(SkipReason::PushQueued | SkipReason::PushedSince) => {
                obj.disk.store(true, Relaxed);
                return false;
            }
            Admit::Skipped(_) => {}
        }
        true
    }

    /// The tiers' position now, taken when a fill begins (`FillGuard::store_mark`): a push
    /// stored from here on is newer than what the fill fetches, and stays. The store's mark;
    /// without a store, the number the next push into RAM gets (`Edge::insert_push`).
    pub fn fill_mark(&self) -> u64 {
        match &self.store {
            Some(store) => store.mark(),
            None => self.ram_pushes.load(SeqCst),
        }
    }

    /// Stores an operator's push on an edge without a store, where it lives in RAM only:
    /// numbered as the store numbers its writes, so that no fill which began before it
    /// replaces it (`offer_to_store`), and one that began after it, refreshing it, does.
    pub fn insert_push(&self, key: String, mut obj: CachedObject) {
        obj.store_mark = self.ram_pushes.fetch_add(1, SeqCst);
        self.insert(key, Arc::new(obj));
    }

    /// Bytes a new pinned (pushed) asset may still use on disk; `None` without a store.
    pub fn free_for_pinned(&self) -> Option<u64> {
        self.store.as_ref().map(Store::free_for_pinned)
    }

    /// The key's object if it is cached and fresh. Judged at the clock's reading after the
    /// lookup: a soft-purged object read from disk is made stale as of the read
    /// (`lookup_disk`), and judged at an instant taken before it, it was still fresh (a
    /// soft purge of an object only on disk was served once as a fresh HIT).
    pub async fn lookup_fresh(&self, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
        let found = self.lookup(key).await;
        let now = self.clock.now();
        found.filter(|(o, _)| o.staleness(now).is_none())
    }

    /// The key's object if it is in RAM and fresh at `now` (no disk read: for the checks made
    /// while holding a fill claim).
    pub fn ram_fresh(&self, key: &str, now: SystemTime) -> Option<Arc<CachedObject>> {
        self.ram.get(key).filter(|o| o.staleness(now).is_none())
    }

    /// Whether `key` holds an operator's push (pinned), in RAM or on disk.
    pub fn is_pinned(&self, key: &str) -> bool {
        self.ram.peek(key).is_some_and(|o| o.pinned)
            || self
                .store
                .as_ref()
                .is_some_and(|s| s.is_pinned(key.as_bytes()))
    }

    /// Removes one key (and its variants). Returns how many objects went. O(1) in the RAM tier
    /// unless it holds variants of the key: strangers name the keys a successful POST
    /// invalidates (`proxy::invalidate`). The store cannot tell whether it holds variants (its
    /// index holds hashes, and what the edge knew of the key's `Vary` is gone after a restart):
    /// they get a mark, one map entry (`storage::marks`, bounded). Past the bound the marks fold
    /// into one that forgets every variant and slice on disk, so 61,441 POSTs to new URLs
    /// emptied them all: a key not known to have any (RAM holds none, its `Vary` is unknown,
    /// no slice record is stored) gets a mark only while the marks are under half their bound
    /// (`Store::marks_spare`).
    pub fn purge_key(&self, key: &str) -> usize {
        let variant_prefix = format!("{key}\0");
        let in_ram = self.ram.has_variants(key);
        let mut n = if in_ram {
            self.ram
                .remove_where(|k, _| k == key || k.starts_with(&variant_prefix))
        } else {
            usize::from(self.ram.remove(key))
        };
        if let Some(store) = &self.store {
            let may_vary = in_ram
                || self.vary_index.get(key).is_some()
                || store.contains(crate::proxy::slice::record_key(key).as_bytes())
                || store.marks_spare();
            let variants = if may_vary {
                store.remove_prefix(variant_prefix.as_bytes())
            } else {
                0
            };
            n = n.max(store.remove(key.as_bytes()) as usize + variants);
        }
        self.vary_index.remove(key);
        self.hit_for_pass.remove(key);
        self.unsliced.remove(key);
        n
    }

    /// Makes `stored` (what a lookup of `key` returned, from RAM or disk) stale from now on, in
    /// the RAM tier, where a lookup finds it before any copy on disk: the next request
    /// revalidates it. Not journaled and not on disk (a viewer's request asks for it, see
    /// `invalidate::after_head`): after a restart, or once the RAM tier evicts it, the disk's
    /// copy is as it was. A copy stored meanwhile under `key` is left alone.
    pub fn expire_stored(&self, key: String, stored: &Arc<CachedObject>) {
        if self
            .ram
            .peek(&key)
            .is_some_and(|o| !Arc::ptr_eq(&o, stored))
        {
            return;
        }
        self.insert_stale(key, stored, self.clock.now());
    }

    /// Soft-purges `key` in the RAM tier (stale from `now` on); returns whether it was held.
    fn expire_in_ram(&self, key: &str, now: SystemTime) -> usize {
        let Some(obj) = self.ram.peek(key) else {
            return 0;
        };
        self.insert_stale(key.to_string(), &obj, now);
        1
    }

    /// Puts a copy of `obj`, stale from `now` on, in the RAM tier under `key`.
    fn insert_stale(&self, key: String, obj: &CachedObject, now: SystemTime) {
        let mut stale = CachedObject::clone(obj);
        expire_now(&mut stale, now);
        self.ram.insert(key, Arc::new(stale));
    }

    /// Stores what a fill fetched, unless a purge made since the fill started selects it (a
    /// purge beats a fill in flight). A stored manifest teaches the asset index its members
    /// (`manifest_url`: where it was fetched from). Returns whether it was stored.
    pub fn insert_from_fill(
        &self,
        guard: &FillGuard,
        key: String,
        obj: Arc<CachedObject>,
        manifest_url: Option<url::Url>,
    ) -> bool {
        let stored = self.fills.store_unless_purged(guard, &key, &obj.tags, || {
            self.insert_since(key.clone(), obj.clone(), guard.store_mark())
        });
        if !stored {
            tracing::debug!(key, "purged while filling: not stored");
        } else if let (ContentClass::Manifest, Some(u)) = (obj.class, manifest_url) {
            // Reading a manifest's references costs time in its size (a VOD playlist of 300,000
            // segments parses for a good part of a second): a large one is read on the
            // blocking pool, not on the worker that serves this fill's viewers and others. A
            // purge by asset meanwhile reads the manifest from the tiers (`admin::purge`).
            if obj.body.len() <= crate::proxy::READ_INLINE {
                self.assets.learn(&u, &obj.body);
            } else {
                let (assets, body) = (self.assets.clone(), obj.body.clone());
                tokio::task::spawn_blocking(move || assets.learn(&u, &body));
            }
        }
        stored
    }

    /// Purges `selectors` from every tier: fills in flight are told first (so none stores
    /// afterwards), then RAM, then the store, which returns once the purge is journaled (it
    /// survives a crash). Hard purges remove; soft ones (`soft`) mark the objects stale now,
    /// keeping them for stale-while-revalidate / stale-if-error and revalidation. Returns the
    /// objects each selector removed or marked (RAM or disk, whichever counted more: objects on
    /// disk under a prefix cannot be counted, the store holds key hashes).
    pub async fn purge(
        &self,
        selectors: &[PurgeSelector],
        soft: bool,
    ) -> Result<Vec<usize>, StoreError> {
        self.fills.record_purges(selectors);
        let now = self.clock.now();
        let mut counts = vec![0usize; selectors.len()];
        // A key without variants in RAM is one lookup. The other selectors go through
        // the RAM tier in batches, one scan per batch, keys by set membership: an asset purge
        // expands to tens of thousands of keys, and a scan per key cost keys × RAM entries.
        let mut scanned = Vec::new();
        // A URL purge also selects the odd spellings of its path in RAM (`proxy::spelling`):
        // those indexed under it, or, once the index overflowed, a scan.
        let spellings = self.spellings.any();
        let scan_spellings = self.spellings.overflowed();
        for (i, sel) in selectors.iter().enumerate() {
            if i > 0 && i % PURGE_BATCH == 0 {
                tokio::task::yield_now().await;
            }
            match sel {
                PurgeSelector::Key(k) if !scan_spellings && !self.ram.has_variants(k) => {
                    let odd = if spellings {
                        self.spellings.of(k, !soft)
                    } else {
                        Vec::new()
                    };
                    for key in std::iter::once(k.as_str()).chain(odd.iter().map(String::as_str)) {
                        counts[i] += if soft {
                            self.expire_in_ram(key, now)
                        } else {
                            self.hit_for_pass.remove(key);
                            usize::from(self.ram.remove(key))
                        };
                    }
                }
                _ => scanned.push(i),
            }
        }
        for batch in scanned.chunks(PURGE_BATCH) {
            // The purges are recorded above, so no fill stores a purged key meanwhile.
            tokio::task::yield_now().await;
            let batch = Batch::new(batch.iter().map(|&i| (i, &selectors[i])), spellings);
            crate::metrics::Metrics::inc(&self.metrics.purge_scans);
            if soft {
                let hits = parking_lot::Mutex::new(Vec::new());
                self.ram.remove_where(|k, o| {
                    let selecting = batch.selecting(k, &o.tags);
                    if !selecting.is_empty() {
                        hits.lock().push((selecting, k.to_string(), o.clone()));
                    }
                    false
                });
                for (selecting, k, mut stale) in hits.into_inner() {
                    expire_now(&mut stale, now);
                    self.ram.insert(k, Arc::new(stale));
                    for i in selecting {
                        counts[i] += 1;
                    }
                }
            } else {
                // What the origin varies a key on stays known (`vary_index`): forgetting it
                // made the first viewer after a purge fetch twice, once without its varied
                // header and once with it. The next answer's `Vary` replaces it anyway.
                self.hit_for_pass.retain(|hk, _| !batch.drops_pass(hk));
                let hits = parking_lot::Mutex::new(Vec::new());
                self.ram.remove_where(|k, o| {
                    let i = batch.first(k, &o.tags);
                    if let Some(i) = i {
                        hits.lock().push(i);
                    }
                    i.is_some()
                });
                for i in hits.into_inner() {
                    counts[i] += 1;
                }
            }
        }
        if let Some(store) = &self.store {
            let mut purges = Vec::with_capacity(selectors.len() * 2);
            for sel in selectors {
                let (a, b) = store_selectors(sel);
                purges.push(Purge { selector: a, soft });
                purges.extend(b.map(|selector| Purge { selector, soft }));
            }
            let disk = store.purge(&purges).await?;
            let mut at = 0;
            for (sel, n) in selectors.iter().zip(counts.iter_mut()) {
                let width = if matches!(sel, PurgeSelector::Key(_)) {
                    2
                } else {
                    1
                };
                let d: usize = disk[at..at + width].iter().sum();
                at += width;
                *n = (*n).max(d);
            }
        }
        Ok(counts)
    }
}

/// Purge selectors applied to the RAM tier between two yields to the runtime (`Edge::purge`):
/// keys looked up one by one, or the selectors of one scan.
const PURGE_BATCH: usize = 256;

/// One batch of purge selectors, applied to each RAM entry in one pass: keys by set membership
/// (a stored key's part before its first `\0` is the key it is a variant or slice of),
/// prefixes and tags in request order. A hard purge counts an entry for the first selector that
/// selects it (the one that removed it), a soft one for every selector that selects it.
struct Batch<'a> {
    keys: std::collections::HashMap<&'a str, usize>,
    others: Vec<(usize, &'a PurgeSelector)>,
    /// Whether an entry under an odd spelling is also selected by its routed form.
    spellings: bool,
}

impl<'a> Batch<'a> {
    fn new(
        selectors: impl Iterator<Item = (usize, &'a PurgeSelector)>,
        spellings: bool,
    ) -> Batch<'a> {
        let mut keys = std::collections::HashMap::new();
        let mut others = Vec::new();
        for (i, sel) in selectors {
            match sel {
                PurgeSelector::Key(k) => {
                    keys.entry(k.as_str()).or_insert(i);
                }
                _ => others.push((i, sel)),
            }
        }
        Batch {
            keys,
            others,
            spellings,
        }
    }

    /// The selectors of the batch that select the entry `key` (with `tags`), under its key as
    /// spelled or (odd spellings, `proxy::spelling`) as routed.
    fn selecting(&self, key: &str, tags: &[String]) -> Vec<usize> {
        let routed = if self.spellings {
            crate::proxy::spelling::routed(key)
        } else {
            None
        };
        let mut out = Vec::new();
        for k in std::iter::once(key).chain(routed.as_deref()) {
            out.extend(self.keys.get(base_key(k)).copied());
            out.extend(
                self.others
                    .iter()
                    .filter(|(_, sel)| sel.matches(k, tags))
                    .map(|(i, _)| *i),
            );
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first selector of the batch that selects the entry `key` (with `tags`).
    fn first(&self, key: &str, tags: &[String]) -> Option<usize> {
        self.selecting(key, tags).into_iter().min()
    }

    /// Whether a hard purge of the batch drops the hit-for-pass entry `key` (keys and
    /// prefixes do; tags name stored objects only).
    fn drops_pass(&self, key: &str) -> bool {
        self.keys.contains_key(base_key(key))
            || self.others.iter().any(
                |(_, sel)| matches!(sel, PurgeSelector::Prefix(p) if key.starts_with(p.as_str())),
            )
    }
}

/// The key a stored key is a variant or slice of: its part before the first `\0`.
fn base_key(key: &str) -> &str {
    key.split('\0').next().unwrap_or(key)
}

/// The store's selectors for one purge selector: a key also covers its Vary variants, stored
/// under `key` + `\0` + variant.
fn store_selectors(sel: &PurgeSelector) -> (Selector, Option<Selector>) {
    match sel {
        PurgeSelector::Key(k) => (
            Selector::Key(k.as_bytes().to_vec()),
            Some(Selector::Prefix(format!("{k}\0").into_bytes())),
        ),
        PurgeSelector::Prefix(p) => (Selector::Prefix(p.as_bytes().to_vec()), None),
        PurgeSelector::Tag(t) => (Selector::Tag(t.clone()), None),
    }
}

/// Makes `obj` stale from `now` on (soft purge): its freshness lifetime ends at its current
/// age, so the stale-while-revalidate and stale-if-error windows start now.
fn expire_now(obj: &mut CachedObject, now: SystemTime) {
    obj.freshness.ttl = obj.freshness.ttl.min(obj.age(now));
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
