//! `Store`: the public handle, lookups (with shared, verified reads) and the sync operations.
//!
//! Locking: one `parking_lot::Mutex<State>` guards the index, the in-flight writes and the
//! region table; it is held only for map operations, never across an await or an I/O, and a
//! large purge takes it in bounded shares (`purge_blocking`). Reads in flight are tracked in a
//! second small map so concurrent lookups of one object share one read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::buf::{round_up, AlignedBuf};
use crate::config::{Admit, Hit, Meta, SkipReason, Source, StoreConfig, StoreStats};
use crate::error::StoreError;
use crate::format::{self, key_hash, KeyHash, Layout, RegionState};
use crate::index::{index_bytes, Entry, HashIndex, TagSets, MAX_FREQ, PINNED};
use crate::io::Io;
use crate::journal::{Journal, Purge, Record, Selector};
use crate::marks::PrefixMarks;
use crate::object_buf::ObjectBuf;

/// Bound on the second-hit admission table.
const MAX_SEEN: usize = 1 << 18;
/// Bound on remembered soft purges (each is checked on every disk hit).
const MAX_SOFT: usize = 4096;
/// Bound on the purge marks the store holds (`StoreStats::purge_marks`): prefix tombstones
/// (`marks::MAX_MARKS`, folding past it) and soft purges (`MAX_SOFT`) together.
pub(crate) const MAX_PURGE_MARKS: usize = 65_536;
const _: () = assert!(crate::marks::MAX_MARKS + MAX_SOFT == MAX_PURGE_MARKS);
/// Work (entries visited) one hold of the state lock does for [`Store::purge`]: a lookup or
/// touch waiting for the lock meanwhile waits about this long, not for the whole purge.
const PURGE_HOLD: usize = 1 << 14;

/// An object accepted for writing.
pub(crate) struct Obj {
    pub key: Bytes,
    pub meta: Meta,
    /// `None` for an object written in place ([`ObjectBuf`]): its payload sits in the write
    /// buffer the writer still has to complete, so lookups cannot serve it from RAM and see
    /// the previous version (if any) until the write completes.
    pub body: Option<Bytes>,
}

/// An accepted write not yet in the index: served from RAM by lookups.
pub(crate) struct Pending {
    pub id: u64,
    pub obj: Arc<Obj>,
    pub pinned: bool,
    /// Written with `insert_durable`: a caller waits to hear these bytes are on disk.
    pub durable: bool,
    pub extent: u64,
    /// Hit counter the entry starts with once written: hits while the write is queued, or
    /// what eviction left of the counter of a reinserted object.
    pub freq: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RegionMeta {
    pub gen: u64,
    pub state: RegionState,
}

pub(crate) struct State {
    pub index: HashIndex<Entry>,
    pub tags: TagSets,
    pub pending: HashIndex<Pending>,
    pub regions: Vec<RegionMeta>,
    pub max_gen: u64,
    /// Prefix tombstones: objects whose key starts with the prefix and whose sequence is below
    /// the mark are dead. Checked on lookup; dropped once every older region has been reused.
    pub prefixes: PrefixMarks,
    /// Soft purges: objects they select whose sequence is below the mark are served as stale
    /// (`Hit::soft_purged`). Pruned like the prefix tombstones; at most `MAX_SOFT`, the oldest
    /// beyond that applied as a hard purge.
    pub soft: VecDeque<(Selector, u64)>,
    /// Sequence the next allocation will get (see `seq`). With no active region, the start of
    /// the next generation: every object on disk is below it.
    pub next_seq: u64,
    pub live_bytes: u64,
    pub pinned_bytes: u64,
    pub pending_pinned: u64,
    /// Marks taken from `next_seq` so far (purges, prefix removals): a reclaim that sees this
    /// change knows a mark lies below its copies' end (see `writer::Writer::reclaim_into`).
    pub marks: u64,
    /// Pinned objects region reclaim has moved: the sequence they were written at (the push),
    /// which their place in the index no longer tells (a copy is newer than every mark taken
    /// before the reclaim). [`SkipReason::PushedSince`] compares a fill's mark with it
    /// (`State::written_seq`). Only moved pinned objects have an entry (a few per pushed
    /// asset, not one per object); it goes with the index entry (`index_put`,
    /// `index_remove`). RAM only: every mark taken after a restart is newer than every
    /// object on disk.
    pub written_at: HashIndex<u64>,
}

impl State {
    pub(crate) fn new(layout: &Layout) -> Self {
        State {
            index: HashIndex::default(),
            tags: TagSets::new(),
            pending: HashIndex::default(),
            regions: vec![
                RegionMeta {
                    gen: 0,
                    state: RegionState::Free
                };
                layout.regions as usize
            ],
            max_gen: 0,
            prefixes: PrefixMarks::default(),
            soft: VecDeque::new(),
            next_seq: 1 << 32,
            live_bytes: 0,
            pinned_bytes: 0,
            pending_pinned: 0,
            marks: 0,
            written_at: HashIndex::default(),
        }
    }

    /// Sequence of an entry: (generation of its region, block within the region).
    pub(crate) fn seq(&self, layout: &Layout, e: &Entry) -> u64 {
        let r = layout.region_of(e.block);
        (self.regions[r as usize].gen << 32) | u64::from(e.block - r * layout.region_blocks())
    }

    /// The sequence `e` (the index entry of `h`) was written at: where it lies, unless region
    /// reclaim moved it there (`written_at`).
    pub(crate) fn written_seq(&self, layout: &Layout, h: &KeyHash, e: &Entry) -> u64 {
        match self.written_at.get(h) {
            Some(&s) => s,
            None => self.seq(layout, e),
        }
    }

    /// Inserts an index entry for a new write of `h` (or its recovery), releasing whatever it
    /// replaces.
    pub(crate) fn index_put(&mut self, h: KeyHash, e: Entry) {
        if let Some(old) = self.index.insert(h, e) {
            self.account_out(&old);
            self.written_at.remove(&h);
        }
        self.live_bytes += e.bytes();
        if e.pinned() {
            self.pinned_bytes += e.bytes();
        }
    }

    pub(crate) fn index_remove(&mut self, h: &KeyHash) -> Option<Entry> {
        let e = self.index.remove(h)?;
        self.account_out(&e);
        self.written_at.remove(h);
        Some(e)
    }

    /// Moves `h`'s entry `cur` to `block`, where region reclaim copied it: one hit less, and a
    /// pinned one keeps the sequence it was written at (`written_at`).
    pub(crate) fn index_move(&mut self, layout: &Layout, h: KeyHash, cur: Entry, block: u32) {
        let written = self.written_seq(layout, &h, &cur);
        let tags = self.tags.get(cur.tagset).to_vec();
        let mut moved_to = Entry {
            block,
            blocks_flags: cur.blocks_flags,
            tagset: self.tags.acquire(&tags),
        };
        moved_to.set_freq(cur.freq().saturating_sub(1));
        self.index_put(h, moved_to);
        if cur.pinned() {
            self.written_at.insert(h, written);
        }
    }

    fn account_out(&mut self, e: &Entry) {
        self.live_bytes -= e.bytes();
        if e.pinned() {
            self.pinned_bytes -= e.bytes();
        }
        self.tags.release(e.tagset);
    }

    pub(crate) fn pending_remove(&mut self, h: &KeyHash) -> Option<Pending> {
        let p = self.pending.remove(h)?;
        if p.pinned {
            self.pending_pinned -= p.extent;
        }
        Some(p)
    }

    /// Whether a soft purge newer than the entry selects it (the object is then served stale).
    pub(crate) fn soft_purged(&self, layout: &Layout, key: &[u8], e: &Entry) -> bool {
        !self.soft.is_empty() && {
            let s = self.seq(layout, e);
            let tags = self.tags.get(e.tagset);
            self.soft
                .iter()
                .any(|(sel, mark)| s < *mark && sel.matches(key, tags))
        }
    }

    /// Applies one purge at store sequence `mark`: at run time (`mark` = `next_seq`, so every
    /// indexed object is older) and again at open when the journal is replayed (objects
    /// written after the purge are newer and stay). Returns the objects it could count: exact
    /// keys and tags are counted; on-disk objects under a prefix cannot be (the index holds
    /// hashes), only writes still queued.
    pub(crate) fn apply_purge(
        &mut self,
        layout: &Layout,
        hash: &dyn Fn(&[u8]) -> KeyHash,
        p: &Purge,
        mark: u64,
    ) -> usize {
        let sel = &p.selector;
        // Writes still queued are dropped, soft or hard: the edge's RAM copy stays (and is
        // marked stale by the edge), the store simply does not get this version. A key's
        // write is found by its hash; other selectors look at every queued write.
        let pend: Vec<KeyHash> = match sel {
            Selector::Key(k) => {
                let h = hash(k);
                self.pending
                    .get(&h)
                    .filter(|q| q.obj.key == k.as_slice())
                    .map(|_| h)
                    .into_iter()
                    .collect()
            }
            _ => self
                .pending
                .iter()
                .filter(|(_, q)| sel.matches(&q.obj.key, &q.obj.meta.tags))
                .map(|(h, _)| *h)
                .collect(),
        };
        for h in &pend {
            self.pending_remove(h);
        }
        let older = |st: &State, e: &Entry| st.seq(layout, e) < mark;
        let on_disk: Vec<KeyHash> = match sel {
            Selector::Key(k) => {
                let h = hash(k);
                self.index
                    .get(&h)
                    .filter(|e| older(self, e))
                    .map(|_| h)
                    .into_iter()
                    .collect()
            }
            Selector::Tag(t) => {
                let ids = self.tags.containing(t);
                self.index
                    .iter()
                    .filter(|(_, e)| ids.contains(&e.tagset) && older(self, e))
                    .map(|(h, _)| *h)
                    .collect()
            }
            Selector::Prefix(_) => Vec::new(),
        };
        if p.soft {
            if !on_disk.is_empty() || matches!(sel, Selector::Prefix(_)) {
                self.soft.push_back((sel.clone(), mark));
                if self.soft.len() > MAX_SOFT {
                    if let Some((oldest, m)) = self.soft.pop_front() {
                        let hard = Purge {
                            selector: oldest,
                            soft: false,
                        };
                        self.apply_purge(layout, hash, &hard, m);
                    }
                }
            }
        } else {
            for h in &on_disk {
                self.index_remove(h);
            }
            if let Selector::Prefix(prefix) = sel {
                self.prefixes.add(prefix, mark);
            }
        }
        pend.len() + on_disk.len()
    }

    /// About how many entries `apply_purge` visits for `p` (a bound for one lock hold).
    fn purge_cost(&self, p: &Purge) -> usize {
        let scan = |sel: &Selector| match sel {
            Selector::Key(_) => 1,
            Selector::Prefix(_) => self.pending.len() + 1,
            Selector::Tag(_) => self.pending.len() + self.index.len() + 1,
        };
        // A soft purge past `MAX_SOFT` applies the oldest one as a hard purge.
        let evicted = match self.soft.front() {
            Some((oldest, _)) if p.soft && self.soft.len() >= MAX_SOFT => scan(oldest),
            _ => 0,
        };
        scan(&p.selector) + evicted
    }

    /// The oldest generation any region written so far has, freed ones included: a purge
    /// journal record with a mark below it selects nothing crash recovery could bring back.
    /// A freed region keeps its header and summary on disk until it is reused, and recovery
    /// (after a crash, when the snapshot is not trusted) revives it with whatever it listed, so
    /// records must outlive the region's place in the index, not only its live state.
    pub(crate) fn min_disk_gen(&self) -> Option<u64> {
        self.regions
            .iter()
            .filter(|r| r.gen > 0)
            .map(|r| r.gen)
            .min()
    }

    pub(crate) fn prefix_dead(&self, layout: &Layout, key: &[u8], e: &Entry) -> bool {
        !self.prefixes.is_empty() && self.prefixes.dead(key, self.seq(layout, e))
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub device_reads: AtomicU64,
    pub bytes_written: AtomicU64,
    pub reinsertions: AtomicU64,
    pub evictions: AtomicU64,
    pub regions_evicted: AtomicU64,
    pub corrupt_reads: AtomicU64,
    pub read_errors: AtomicU64,
    pub pinned_lost: AtomicU64,
    pub refused_writes: AtomicU64,
    pub skipped_writes: AtomicU64,
    pub write_errors: AtomicU64,
    pub queued_bytes: AtomicU64,
}

struct Admission {
    seen: HashMap<u64, Instant>,
    order: std::collections::VecDeque<(u64, Instant)>,
    tokens: f64,
    last: Instant,
}

pub(crate) struct Inner {
    pub cfg: StoreConfig,
    pub layout: Layout,
    pub io: Io,
    pub direct: bool,
    pub nonce: u64,
    pub sb: Mutex<format::Superblock>,
    pub st: Mutex<State>,
    pub c: Counters,
    pub closed: AtomicBool,
    pub pinned_limit: u64,
    /// Test hook (`Store::hold_writer`): while closed, the writer takes no write job, so
    /// inserts stay queued.
    pub writer_gate: crate::io::Gate,
    next_id: AtomicU64,
    reads: Mutex<HashMap<ReadKey, ReadWaiters>>,
    admit: Mutex<Admission>,
}

/// An object read from the device: verified, or for a rewrite (`Inner::read_verified` with
/// `Purpose::Rewrite`) checked up to its header, with the payload's stored checksums in
/// `carried`.
pub(crate) struct ReadObj {
    pub key: Bytes,
    pub meta: Meta,
    pub body: Bytes,
    pub carried: Option<Vec<u32>>,
}

/// Why an object is read from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// To serve it: read into the caller's lent memory (`read_memory`), payload verified.
    Lookup,
    /// To serve it once ([`Store::lookup_once`]): the store's own pooled buffers, which go
    /// back to the pool when the body is dropped; payload verified.
    LookupOnce,
    /// To write it again (eviction keeping it): the store's own pooled buffers; the header is
    /// verified, the payload is not (its stored checksums are written with it and checked when
    /// the new copy is read). Saves two checksum passes per rewritten byte.
    Rewrite,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum ReadErr {
    Corrupt,
    Io,
}

pub(crate) type ReadResult = Result<Arc<ReadObj>, ReadErr>;
/// One object version at one place: (key hash, block, region generation).
type ReadKey = (KeyHash, u32, u64);
/// Lookups waiting on a read another lookup started.
type ReadWaiters = Vec<oneshot::Sender<ReadResult>>;

pub(crate) enum Job {
    Write(WriteJob),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<crate::writer::ActiveSnap>),
}

pub(crate) struct WriteJob {
    pub hash: KeyHash,
    pub id: u64,
    pub obj: Arc<Obj>,
    /// The filled buffer of an in-place object (then `obj.body` is `None`); boxed to keep
    /// jobs small on the channel.
    pub in_place: Option<Box<ObjectBuf>>,
    pub extent: u64,
    pub durable: bool,
    pub done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The SSD segment store. Cheap to clone; all clones share one store.
///
/// Must be opened inside a tokio runtime (it spawns its writer task). Dropping the last clone
/// without [`Store::close`] stops the writer without a snapshot: the next open recovers as after
/// a crash.
#[derive(Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

struct Handle {
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<Job>,
    journal: Arc<Journal>,
}

impl Inner {
    pub(crate) fn new(
        cfg: StoreConfig,
        layout: Layout,
        io: Io,
        direct: bool,
        sb: format::Superblock,
        st: State,
    ) -> Self {
        // Pinned objects may fill all regions but two, at the packing density objects of up to a
        // quarter region can always reach (3/4), so eviction can always make progress.
        let pinned_limit = (u64::from(layout.regions) - 2) * layout.region_size / 4 * 3;
        Inner {
            layout,
            io,
            direct,
            nonce: sb.nonce,
            sb: Mutex::new(sb),
            st: Mutex::new(st),
            c: Counters::default(),
            closed: AtomicBool::new(false),
            pinned_limit,
            writer_gate: crate::io::Gate::new(),
            next_id: AtomicU64::new(1),
            reads: Mutex::new(HashMap::new()),
            admit: Mutex::new(Admission {
                seen: HashMap::new(),
                order: Default::default(),
                tokens: cfg.write_rate_limit.unwrap_or(0) as f64,
                last: Instant::now(),
            }),
            cfg,
        }
    }

    pub(crate) fn hash(&self, key: &[u8]) -> KeyHash {
        key_hash(self.nonce, key)
    }

    /// Reads and verifies the object at `e` in a region of generation `gen`.
    /// A lookup's read lands in the caller's lent memory (`read_memory`), where it is served;
    /// eviction's read-back (`Purpose::Rewrite`) only feeds a rewrite, so it uses the store's
    /// own pooled buffers rather than fresh mappings, and leaves the payload's checksums to be
    /// checked on the new copy.
    pub(crate) async fn read_verified(
        &self,
        h: KeyHash,
        e: Entry,
        gen: u64,
        purpose: Purpose,
    ) -> ReadResult {
        self.c.device_reads.fetch_add(1, Relaxed);
        let lent = purpose == Purpose::Lookup;
        let served = purpose != Purpose::Rewrite;
        let mem = self.cfg.read_memory.as_deref().filter(|_| lent);
        let buf = AlignedBuf::for_read(e.bytes() as usize, mem);
        let buf = match self.io.read_into(self.layout.block_off(e.block), buf).await {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(error = %err, block = e.block, "store read failed");
                return Err(ReadErr::Io);
            }
        };
        let Some(hdr) = format::decode_object_header(buf.as_slice(), self.nonce, gen) else {
            return Err(ReadErr::Corrupt);
        };
        if hdr.extent() != e.bytes()
            || hdr.header_len + hdr.payload_len as usize > buf.as_slice().len()
            || (served && !format::payload_ok(buf.as_slice(), &hdr))
        {
            return Err(ReadErr::Corrupt);
        }
        let bytes = buf.into_bytes();
        let key = bytes.slice(hdr.key_range.0..hdr.key_range.1);
        if self.hash(&key) != h {
            return Err(ReadErr::Corrupt);
        }
        let body = bytes.slice(hdr.header_len..hdr.header_len + hdr.payload_len as usize);
        let meta = Meta {
            head: bytes.slice(hdr.head_range.0..hdr.head_range.1),
            stored_at: hdr.stored_at,
            expires_at: hdr.expires_at,
            tags: hdr.tags,
            pinned: e.pinned(),
        };
        let carried = (!served).then_some(hdr.chunk_crcs);
        Ok(Arc::new(ReadObj {
            key,
            meta,
            body,
            carried,
        }))
    }

    /// Like `read_verified`, but concurrent callers for one location share one device read.
    async fn read_shared(
        self: &Arc<Self>,
        h: KeyHash,
        e: Entry,
        gen: u64,
        purpose: Purpose,
    ) -> ReadResult {
        let slot = (h, e.block, gen);
        let waiter = {
            let mut reads = self.reads.lock();
            match reads.get_mut(&slot) {
                Some(w) => {
                    let (tx, rx) = oneshot::channel();
                    w.push(tx);
                    Some(rx)
                }
                None => {
                    reads.insert(slot, Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiter {
            // Err: the leading lookup was cancelled before finishing; read ourselves.
            return match rx.await {
                Ok(r) => r,
                Err(_) => self.read_verified(h, e, gen, purpose).await,
            };
        }
        // If this future is dropped mid-read, the guard removes the slot and the waiters'
        // senders drop with it, so they fall back to their own read instead of hanging.
        let guard = ReadSlot { inner: self, slot };
        let res = self.read_verified(h, e, gen, purpose).await;
        for w in guard.finish() {
            let _ = w.send(res.clone());
        }
        res
    }

    /// Drops an entry that failed a read, unless it moved meanwhile (then the failure was a
    /// race with eviction or a newer write, not corruption). Returns whether it was dropped.
    fn drop_failed(&self, h: KeyHash, e: Entry, gen: u64) -> bool {
        let mut st = self.st.lock();
        let same = st.index.get(&h).is_some_and(|x| x.block == e.block)
            && st.regions[self.layout.region_of(e.block) as usize].gen == gen;
        if same {
            st.index_remove(&h);
        }
        same
    }

    /// Why a plain insert of `key` (hash `h`; `pinned`, made `since` a mark) must not replace
    /// the push of it the store has, if it must not.
    ///
    /// A plain insert does not replace a push (a durable, pinned write) of the key that is
    /// queued or being written: the push would fail with `Superseded` and the key end up
    /// unpinned, so an operator's pushed asset would lose to a viewer's fill of the same key
    /// that happened to finish while the push waited for the device. The push is the version
    /// the operator asked the store to keep; the plain insert's caller (a fill, which has served
    /// its viewers already) is told `Skipped` and loses nothing. Durable inserts, removals and
    /// purges still replace it. Nor does an unpinned insert of bytes fetched since a mark
    /// replace a push written after that mark (`PushedSince`: when the push was written, not
    /// where it lies now, which a reclaim that moved it after the mark made newer).
    fn yields_to_push(
        &self,
        st: &State,
        h: &KeyHash,
        key: &[u8],
        pinned: bool,
        since: Option<u64>,
    ) -> Option<SkipReason> {
        if st
            .pending
            .get(h)
            .is_some_and(|p| p.durable && p.pinned && p.obj.key == key)
        {
            return Some(SkipReason::PushQueued);
        }
        let pushed_since = |e: &Entry| {
            e.pinned() && since.is_some_and(|m| st.written_seq(&self.layout, h, e) >= m)
        };
        (!pinned && st.index.get(h).is_some_and(pushed_since)).then_some(SkipReason::PushedSince)
    }

    fn admit_pull(&self, h: KeyHash, len: u64) -> Result<(), SkipReason> {
        // Second-request admission protects a full store from one-hit churn. While the store
        // still has never-used regions, nothing would be evicted to make room, so there is
        // nothing to protect: admit, and a cold edge keeps what it fetched across a restart.
        // One free region is always there (reclaim's spare, see `writer`): it does not count.
        let has_room = self
            .st
            .lock()
            .regions
            .iter()
            .filter(|r| r.state == RegionState::Free)
            .count()
            > 1;
        let mut a = self.admit.lock();
        let now = Instant::now();
        let window = self.cfg.admit_window;
        if !window.is_zero() && !has_room {
            let k = u64::from(h.0[0]) | (u64::from(h.0[1]) << 32);
            while let Some(&(old, t)) = a.order.front() {
                if now.duration_since(t) <= window && a.order.len() < MAX_SEEN {
                    break;
                }
                a.order.pop_front();
                if a.seen.get(&old) == Some(&t) {
                    a.seen.remove(&old);
                }
            }
            if a.seen.remove(&k).is_none() {
                a.seen.insert(k, now);
                a.order.push_back((k, now));
                return Err(SkipReason::FirstSighting);
            }
        }
        if let Some(rate) = self.cfg.write_rate_limit {
            let elapsed = now.duration_since(a.last).as_secs_f64();
            a.last = now;
            a.tokens = (a.tokens + elapsed * rate as f64).min(rate as f64);
            if a.tokens < len as f64 {
                return Err(SkipReason::RateLimited);
            }
            a.tokens -= len as f64;
        }
        Ok(())
    }
}

struct ReadSlot<'a> {
    inner: &'a Inner,
    slot: ReadKey,
}

impl ReadSlot<'_> {
    fn finish(self) -> ReadWaiters {
        let w = self
            .inner
            .reads
            .lock()
            .remove(&self.slot)
            .unwrap_or_default();
        std::mem::forget(self);
        w
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        self.inner.reads.lock().remove(&self.slot);
    }
}

/// What `enqueue` writes: a body to copy, or a filled in-place buffer.
enum Body {
    Bytes(Bytes),
    InPlace(ObjectBuf),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::InPlace(buf) => buf.len(),
        }
    }
}

/// The on-disk extent of an object (header + payload, rounded up to 4 KiB).
pub(crate) fn extent_of(key: &[u8], meta: &Meta, body_len: u64) -> u64 {
    let tags = format::encode_tags(&meta.tags).len();
    round_up((format::header_len(key.len(), meta.head.len(), tags, body_len) as u64) + body_len)
}

impl Store {
    /// Opens (formatting on first use) or recovers the store at `cfg.path`.
    ///
    /// Must be called inside a tokio runtime. Formatting zero-fills the whole file.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let (inner, active) = crate::open::open(cfg).await?;
        let journal = crate::open::replay_journal(&inner).await?;
        let inner = Arc::new(inner);
        let (tx, rx) = mpsc::unbounded_channel();
        crate::writer::spawn(inner.clone(), rx, active);
        Ok(Store {
            handle: Arc::new(Handle {
                inner,
                tx,
                journal: Arc::new(journal),
            }),
        })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Looks `key` up. Every hit from the device is verified (key, header, payload checksums);
    /// a corrupt object is dropped, counted and reported as a miss.
    pub async fn lookup(&self, key: &[u8]) -> Option<Hit> {
        self.lookup_for(key, Purpose::Lookup).await
    }

    /// Like [`Store::lookup`], for a body the caller serves once and drops rather than keeps:
    /// a device read lands in the store's own pooled buffers instead of the caller's lent
    /// memory (`read_memory`), and the buffer goes back to the pool with the body. Concurrent
    /// lookups of one object still share one read, whichever memory it lands in.
    pub async fn lookup_once(&self, key: &[u8]) -> Option<Hit> {
        self.lookup_for(key, Purpose::LookupOnce).await
    }

    async fn lookup_for(&self, key: &[u8], purpose: Purpose) -> Option<Hit> {
        let inner = self.inner();
        let h = inner.hash(key);
        let (e, gen, soft_purged) = {
            let mut st = inner.st.lock();
            if let Some(p) = st.pending.get_mut(&h) {
                if let (true, Some(body)) = (p.obj.key == key, &p.obj.body) {
                    p.freq = (p.freq + 1).min(MAX_FREQ);
                    let mut meta = p.obj.meta.clone();
                    meta.pinned = p.pinned;
                    let body = body.clone();
                    drop(st);
                    inner.c.hits.fetch_add(1, Relaxed);
                    return Some(Hit {
                        meta,
                        body,
                        soft_purged: false,
                    });
                }
            }
            let found = st.index.get_mut(&h).map(|e| {
                e.record_hit();
                *e
            });
            match found {
                Some(e) if st.prefix_dead(&inner.layout, key, &e) => {
                    st.index_remove(&h);
                    None
                }
                Some(e) => Some((
                    e,
                    st.regions[inner.layout.region_of(e.block) as usize].gen,
                    st.soft_purged(&inner.layout, key, &e),
                )),
                None => None,
            }
        }
        .or_else(|| {
            inner.c.misses.fetch_add(1, Relaxed);
            None
        })?;
        match inner.read_shared(h, e, gen, purpose).await {
            Ok(obj) if obj.key == key => {
                inner.c.hits.fetch_add(1, Relaxed);
                Some(Hit {
                    meta: obj.meta.clone(),
                    body: obj.body.clone(),
                    soft_purged,
                })
            }
            // Another key with the same 128-bit hash: a miss, never the wrong object.
            Ok(_) => {
                inner.c.misses.fetch_add(1, Relaxed);
                None
            }
            // A pinned object (an operator's push) is the only copy of what it holds: one I/O
            // error, perhaps transient, does not drop it. This lookup is a miss and the next
            // one reads again (a fill that replaces it meanwhile still can).
            Err(ReadErr::Io) if e.pinned() => {
                tracing::warn!(
                    block = e.block,
                    "read error on a pinned object: kept, served as a miss"
                );
                inner.c.read_errors.fetch_add(1, Relaxed);
                inner.c.misses.fetch_add(1, Relaxed);
                None
            }
            Err(err) => {
                if inner.drop_failed(h, e, gen) {
                    match err {
                        ReadErr::Corrupt => {
                            tracing::warn!(
                                block = e.block,
                                "corrupt object dropped from the store"
                            );
                            inner.c.corrupt_reads.fetch_add(1, Relaxed);
                        }
                        ReadErr::Io => {
                            inner.c.read_errors.fetch_add(1, Relaxed);
                        }
                    }
                }
                inner.c.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Records a hit on `key` served by a tier above the store (the edge's RAM tier), without
    /// reading anything: eviction keeps objects by their hits, and an object that is hot in RAM
    /// must keep its disk copy for when RAM lets it go. By hash only (a 128-bit collision could
    /// at worst keep another object longer). Returns whether `key` is stored or being written.
    pub fn touch(&self, key: &[u8]) -> bool {
        let inner = self.inner();
        let h = inner.hash(key);
        let mut st = inner.st.lock();
        if let Some(e) = st.index.get_mut(&h) {
            e.record_hit();
            return true;
        }
        if let Some(p) = st.pending.get_mut(&h) {
            p.freq = (p.freq + 1).min(MAX_FREQ);
            return true;
        }
        false
    }

    /// Queues `body` for writing without waiting. See [`Admit`] for why it may be skipped.
    pub fn insert(&self, key: &[u8], meta: Meta, body: Bytes, src: Source) -> Admit {
        match self.enqueue(key, meta, Body::Bytes(body), src, None, None) {
            Ok(()) => Admit::Queued,
            Err(r) => Admit::Skipped(r),
        }
    }

    /// The store's position now: an object written from here on is newer than it (for
    /// [`Store::insert_since`]).
    pub fn mark(&self) -> u64 {
        self.inner().st.lock().next_seq
    }

    /// Whether `key`'s copy is still one written before `mark` (taken with [`Store::mark`]
    /// before a lookup): no write of the key queued, and its indexed copy neither removed,
    /// purged nor written since. A lookup's caller keeps what it read only then (a region
    /// reclaim that moved the copy since also says no: keeping it is an optimisation).
    pub fn unchanged_since(&self, key: &[u8], mark: u64) -> bool {
        let inner = self.inner();
        let h = inner.hash(key);
        let st = inner.st.lock();
        !st.pending.contains_key(&h)
            && st
                .index
                .get(&h)
                .is_some_and(|e| st.written_seq(&inner.layout, &h, e) < mark)
    }

    /// [`Store::insert`] of bytes fetched since `mark` (taken with [`Store::mark`] when the
    /// fetch began): skipped ([`SkipReason::PushedSince`]) when a push of the key (a pinned
    /// object) was written after `mark`. An operator's push that lands while a viewer's fill
    /// of the same key is under way stays; a fill that began after the push (one refreshing
    /// it once it is stale) replaces it.
    pub fn insert_since(
        &self,
        key: &[u8],
        meta: Meta,
        body: Bytes,
        src: Source,
        mark: u64,
    ) -> Admit {
        match self.enqueue(key, meta, Body::Bytes(body), src, None, Some(mark)) {
            Ok(()) => Admit::Queued,
            Err(r) => Admit::Skipped(r),
        }
    }

    /// Writes `body` and returns once it is on disk (written and fdatasync'ed). For push ingest:
    /// no second-hit or rate admission, but size, pinned share and device errors still apply.
    ///
    /// `Ok(())` means these bytes are written and fdatasync'ed: a crash from then on brings them
    /// back, unless a newer version of the key, a removal or a purge replaces them. If a newer
    /// insert of the key (plain or durable) replaces this one, or the key is removed or purged,
    /// while it is still queued, nothing is written and the result is
    /// [`StoreError::Superseded`], so the caller can tell its bytes are not on disk (a newer
    /// durable insert answers for itself). A replacement that comes once the write is under way
    /// does not stop it: the bytes reach the disk and the result is `Ok`. A pinned durable
    /// insert (a push) is never replaced by a plain [`Store::insert`] while it is queued or
    /// being written: that insert is skipped ([`SkipReason::PushQueued`]).
    pub async fn insert_durable(
        &self,
        key: &[u8],
        meta: Meta,
        body: Bytes,
        src: Source,
    ) -> Result<(), StoreError> {
        self.durable(key, meta, Body::Bytes(body), src).await
    }

    /// A buffer for an object of `len` payload bytes under `key`, to fill and then store with
    /// [`Store::insert_durable_buf`]: the payload goes straight into the buffer the device write
    /// uses (no copy on the way). Refused up front if the object can never fit.
    pub fn object_buf(&self, key: &[u8], meta: Meta, len: usize) -> Result<ObjectBuf, StoreError> {
        let inner = self.inner();
        if inner.closed.load(Relaxed) {
            return Err(StoreError::Closed);
        }
        if extent_of(key, &meta, len as u64) > inner.layout.max_extent() {
            return Err(StoreError::Refused("object larger than a quarter region"));
        }
        Ok(ObjectBuf::new(key, meta, len))
    }

    /// [`Store::insert_durable`] for a filled [`ObjectBuf`], with the same contract (including
    /// [`StoreError::Superseded`]). Refused if fewer bytes were filled than declared. Until the
    /// write completes, lookups of the key see what was there before.
    pub async fn insert_durable_buf(&self, buf: ObjectBuf, src: Source) -> Result<(), StoreError> {
        if !buf.is_complete() {
            return Err(StoreError::Refused("object buffer not completely filled"));
        }
        let key = buf.key.clone();
        let meta = buf.meta.clone();
        self.durable(&key, meta, Body::InPlace(buf), src).await
    }

    async fn durable(
        &self,
        key: &[u8],
        meta: Meta,
        body: Body,
        src: Source,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let len = body.len();
        match self.enqueue(key, meta, body, src, Some(tx), None) {
            Ok(()) => {}
            Err(SkipReason::Closed) => return Err(StoreError::Closed),
            Err(SkipReason::TooLarge) => {
                return Err(StoreError::Refused("object larger than a quarter region"));
            }
            Err(SkipReason::PinnedFull) => {
                return Err(StoreError::Full(format!(
                    "pinned share full: {} of {} bytes used, {len}-byte pinned object refused",
                    self.inner().st.lock().pinned_bytes,
                    self.inner().pinned_limit
                )));
            }
            Err(r) => return Err(StoreError::Refused(r.as_str())),
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    fn enqueue(
        &self,
        key: &[u8],
        meta: Meta,
        body: Body,
        src: Source,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
        since: Option<u64>,
    ) -> Result<(), SkipReason> {
        // A durable insert is one whose caller waits to hear that its bytes are on disk.
        let durable = done.is_some();
        let inner = self.inner();
        let refuse = |r: SkipReason| {
            let c = match r {
                SkipReason::TooLarge
                | SkipReason::FirstSighting
                | SkipReason::Closed
                | SkipReason::PushQueued
                | SkipReason::PushedSince => &inner.c.skipped_writes,
                _ => &inner.c.refused_writes,
            };
            c.fetch_add(1, Relaxed);
            Err(r)
        };
        if inner.closed.load(Relaxed) {
            return refuse(SkipReason::Closed);
        }
        let extent = extent_of(key, &meta, body.len() as u64);
        if extent > inner.layout.max_extent() {
            return refuse(SkipReason::TooLarge);
        }
        let h = inner.hash(key);
        // A push of the key wins over a plain insert whatever admission would say, so it is
        // checked first: the caller must hear `PushQueued` or `PushedSince` rather than a
        // refusal by admission (first sighting, rate, a full queue), which leaves a copy in
        // the edge's RAM tier over the push (`Edge::offer_to_store` keeps its copy out of RAM
        // only for those two).
        if !durable {
            let st = inner.st.lock();
            if let Some(r) = inner.yields_to_push(&st, &h, key, meta.pinned, since) {
                drop(st);
                return refuse(r);
            }
        }
        if src == Source::Pull && !meta.pinned && !durable {
            if let Err(r) = inner.admit_pull(h, extent) {
                return refuse(r);
            }
        }
        // Bounded by `max_queued_bytes`, except that an empty queue takes any one object (or
        // one larger than the bound could never be stored).
        let queued = inner.c.queued_bytes.load(Relaxed);
        if !durable && queued > 0 && queued + extent > inner.cfg.max_queued_bytes {
            return refuse(SkipReason::Busy);
        }
        let id = inner.next_id.fetch_add(1, Relaxed);
        let pinned = meta.pinned;
        let (body, in_place) = match body {
            Body::Bytes(b) => (Some(b), None),
            Body::InPlace(buf) => (None, Some(Box::new(buf))),
        };
        let obj = Arc::new(Obj {
            key: Bytes::copy_from_slice(key),
            meta,
            body,
        });
        {
            let mut st = inner.st.lock();
            // Again under the lock that queues it: a push may have been queued or written
            // since the check before admission.
            if !durable {
                if let Some(r) = inner.yields_to_push(&st, &h, key, pinned, since) {
                    drop(st);
                    return refuse(r);
                }
            }
            if pinned {
                let replaced = st
                    .index
                    .get(&h)
                    .filter(|e| e.pinned())
                    .map_or(0, |e| e.bytes());
                if st.pinned_bytes + st.pending_pinned + extent > inner.pinned_limit + replaced {
                    drop(st);
                    return refuse(SkipReason::PinnedFull);
                }
                st.pending_pinned += extent;
            }
            if let Some(old) = st.pending.insert(
                h,
                Pending {
                    id,
                    obj: obj.clone(),
                    pinned,
                    durable,
                    extent,
                    freq: 0,
                },
            ) {
                if old.pinned {
                    st.pending_pinned -= old.extent;
                }
            }
        }
        inner.c.queued_bytes.fetch_add(extent, Relaxed);
        let job = WriteJob {
            hash: h,
            id,
            obj,
            in_place,
            extent,
            durable,
            done,
        };
        if self.handle.tx.send(Job::Write(job)).is_err() {
            inner.st.lock().pending_remove(&h);
            inner.c.queued_bytes.fetch_sub(extent, Relaxed);
            return refuse(SkipReason::Closed);
        }
        Ok(())
    }

    /// Applies `purges` and returns once they are durable: each is journaled and the journal
    /// fdatasync'ed before this returns, so a crash right after never brings a purged object
    /// back. Hard purges remove; soft ones keep the objects and report them as
    /// [`Hit::soft_purged`] until they are rewritten. Returns the objects counted per purge (see
    /// [`Store::remove_prefix`] for why objects under a prefix are not).
    pub async fn purge(&self, purges: &[Purge]) -> Result<Vec<usize>, StoreError> {
        if purges.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(p) = purges.iter().find(|p| {
            let len = match &p.selector {
                Selector::Key(k) | Selector::Prefix(k) => k.len(),
                Selector::Tag(t) => t.len(),
            };
            len > crate::journal::MAX_SELECTOR
        }) {
            return Err(StoreError::Refused(match p.selector {
                Selector::Tag(_) => "purge tag longer than 16 KiB",
                _ => "purge key or prefix longer than 16 KiB",
            }));
        }
        // Off the runtime's workers: applying 10,000 selectors and fsyncing their records
        // takes a while, and a worker busy with it serves no viewer meanwhile.
        let (inner, journal) = (self.inner().clone(), self.handle.journal.clone());
        let purges = purges.to_vec();
        tokio::task::spawn_blocking(move || purge_blocking(&inner, &journal, &purges))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// Removes `key`. Returns whether it was stored (or being written). Not journaled: a crash
    /// may bring it back (use [`Store::purge`] for a removal that must hold).
    pub fn remove(&self, key: &[u8]) -> bool {
        let inner = self.inner();
        let h = inner.hash(key);
        let mut st = inner.st.lock();
        let p =
            st.pending.get(&h).is_some_and(|p| p.obj.key == key) && st.pending_remove(&h).is_some();
        st.index_remove(&h).is_some() || p
    }

    /// Whether prefix marks are under half their bound: room for a mark that may select
    /// nothing (the variants of a key a stranger named, which the store cannot tell it holds).
    /// Marks past the bound fold into one that forgets every variant on disk; marks added only
    /// while this holds never fold the map by themselves.
    pub fn marks_spare(&self) -> bool {
        self.inner().st.lock().prefixes.len() < crate::marks::MAX_MARKS / 2
    }

    /// Removes every object whose key starts with `prefix`.
    ///
    /// Objects still being written are removed at once and counted in the result. Objects on
    /// disk are invalidated by a prefix tombstone checked on every lookup (the index holds key
    /// hashes only, so they cannot be counted); they are never served again and their space is
    /// reclaimed by eviction.
    pub fn remove_prefix(&self, prefix: &[u8]) -> usize {
        let inner = self.inner();
        let mut st = inner.st.lock();
        let doomed: Vec<KeyHash> = st
            .pending
            .iter()
            .filter(|(_, p)| p.obj.key.starts_with(prefix))
            .map(|(h, _)| *h)
            .collect();
        for h in &doomed {
            st.pending_remove(h);
        }
        let mark = st.next_seq;
        st.marks += 1;
        st.prefixes.add(prefix, mark);
        doomed.len()
    }

    /// Removes every object carrying `tag`. Returns how many.
    pub fn remove_tag(&self, tag: &str) -> usize {
        let inner = self.inner();
        let mut st = inner.st.lock();
        let ids = st.tags.containing(tag);
        let doomed: Vec<KeyHash> = st
            .index
            .iter()
            .filter(|(_, e)| ids.contains(&e.tagset))
            .map(|(h, _)| *h)
            .collect();
        for h in &doomed {
            st.index_remove(h);
        }
        let pend: Vec<KeyHash> = st
            .pending
            .iter()
            .filter(|(_, p)| p.obj.meta.tags.iter().any(|t| t == tag))
            .map(|(h, _)| *h)
            .collect();
        for h in &pend {
            st.pending_remove(h);
        }
        doomed.len() + pend.len()
    }

    /// Pins a stored object so eviction keeps it. `Ok(false)` if it is not stored; an error if
    /// the pinned share is full.
    pub fn pin(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.set_pin(key, true)
    }

    /// Unpins `key`. Returns whether it is stored.
    pub fn unpin(&self, key: &[u8]) -> bool {
        self.set_pin(key, false).unwrap_or(false)
    }

    fn set_pin(&self, key: &[u8], on: bool) -> Result<bool, StoreError> {
        let inner = self.inner();
        let h = inner.hash(key);
        let mut st = inner.st.lock();
        let st = &mut *st;
        let limit = inner.pinned_limit;
        let used = st.pinned_bytes + st.pending_pinned;
        if let Some(p) = st.pending.get_mut(&h).filter(|p| p.obj.key == key) {
            if p.pinned != on {
                if on && used + p.extent > limit {
                    return Err(StoreError::Full(format!(
                        "pinned share full: {used} of {limit} bytes used"
                    )));
                }
                p.pinned = on;
                if on {
                    st.pending_pinned += p.extent;
                } else {
                    st.pending_pinned -= p.extent;
                }
            }
            return Ok(true);
        }
        let Some(e) = st.index.get_mut(&h) else {
            return Ok(false);
        };
        if e.pinned() != on {
            let b = e.bytes();
            if on && used + b > limit {
                return Err(StoreError::Full(format!(
                    "pinned share full: {used} of {limit} bytes used"
                )));
            }
            e.set_flag(PINNED, on);
            if on {
                st.pinned_bytes += b;
            } else {
                st.pinned_bytes -= b;
            }
        }
        Ok(true)
    }

    /// Whether `key` is stored or being written (by hash: no device read).
    pub fn contains(&self, key: &[u8]) -> bool {
        let inner = self.inner();
        let h = inner.hash(key);
        let st = inner.st.lock();
        st.pending.get(&h).is_some_and(|p| p.obj.key == key)
            || st
                .index
                .get(&h)
                .is_some_and(|e| !st.prefix_dead(&inner.layout, key, e))
    }

    /// Whether `key` is stored, or being written, as a push (pinned; by hash: no device read).
    pub fn is_pinned(&self, key: &[u8]) -> bool {
        let inner = self.inner();
        let h = inner.hash(key);
        let st = inner.st.lock();
        match st.pending.get(&h) {
            Some(p) if p.obj.key == key => p.pinned,
            _ => st
                .index
                .get(&h)
                .is_some_and(|e| e.pinned() && !st.prefix_dead(&inner.layout, key, e)),
        }
    }

    /// Bytes a new pinned object may still use (for ingest's up-front space check).
    pub fn free_for_pinned(&self) -> u64 {
        let inner = self.inner();
        let st = inner.st.lock();
        inner
            .pinned_limit
            .saturating_sub(st.pinned_bytes + st.pending_pinned)
    }

    /// Waits until every write queued before this call is on disk (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.tx.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn stats(&self) -> StoreStats {
        let inner = self.inner();
        let c = &inner.c;
        let st = inner.st.lock();
        StoreStats {
            objects: st.index.len() as u64,
            bytes: st.live_bytes,
            pinned_bytes: st.pinned_bytes,
            queued_objects: st.pending.len() as u64,
            regions: inner.layout.regions,
            regions_in_use: st
                .regions
                .iter()
                .filter(|r| r.state != RegionState::Free)
                .count() as u32,
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            device_reads: c.device_reads.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            reinsertions: c.reinsertions.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            regions_evicted: c.regions_evicted.load(Relaxed),
            corrupt_reads: c.corrupt_reads.load(Relaxed),
            read_errors: c.read_errors.load(Relaxed),
            pinned_lost: c.pinned_lost.load(Relaxed),
            refused_writes: c.refused_writes.load(Relaxed),
            skipped_writes: c.skipped_writes.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            index_bytes: index_bytes(&st.index) as u64,
            purge_marks: (st.prefixes.len() + st.soft.len()) as u64,
            engine: inner.io.kind(),
            direct_io: inner.direct,
        }
    }

    /// Test hook: make every device write and sync fail with `errno` (0 restores normal
    /// operation).
    #[doc(hidden)]
    pub fn inject_write_errno(&self, errno: i32) {
        self.inner().io.inject_write_errno(errno);
    }

    /// Test hook: let the next `writes` device writes through, then fail every write and sync
    /// with `errno` until [`Store::inject_write_errno`]`(0)`. With a drop of the store right
    /// after, the file is what a crash at that write would leave.
    #[doc(hidden)]
    pub fn inject_write_errno_after(&self, writes: u32, errno: i32) {
        self.inner().io.inject_write_errno_after(writes, errno);
    }

    /// Test hook: the next `times` device reads (lookups' and reclaim's) fail with `errno`
    /// before reaching the engine, on either engine (`u32::MAX`: until called again; `errno`
    /// 0 restores normal operation). Reads held by [`Store::hold_reads`] count when let go.
    #[doc(hidden)]
    pub fn inject_read_errno(&self, errno: i32, times: u32) {
        self.inner().io.inject_read_errno(errno, times);
    }

    /// Test hook: while `on`, device reads (lookups' and reclaim's) wait before they start.
    #[doc(hidden)]
    pub fn hold_reads(&self, on: bool) {
        self.inner().io.hold_reads(on);
    }

    /// Test hook: waits until at least `n` device reads are held by [`Store::hold_reads`].
    #[doc(hidden)]
    pub async fn reads_held(&self, n: usize) {
        self.inner().io.reads_held(n).await;
    }

    /// Test hook: while `on`, the writer task starts no write: inserts (plain and durable)
    /// stay queued, as behind a slow device, and can still be replaced, removed or purged.
    #[doc(hidden)]
    pub fn hold_writer(&self, on: bool) {
        self.inner().writer_gate.hold(on);
    }

    /// Test hook: waits until the writer, held by [`Store::hold_writer`], has a write waiting.
    #[doc(hidden)]
    pub async fn writer_held(&self) {
        self.inner().writer_gate.held(1).await;
    }

    /// Test hook: the next `times` io_uring submissions that carry an operation fail with
    /// `errno`, as if `io_uring_enter` had failed (no effect on psync).
    #[doc(hidden)]
    pub fn inject_submit_errno(&self, errno: i32, times: u32) {
        self.inner().io.inject_submit_errno(errno, times);
    }

    /// How the operations in flight fared if the io_uring ring failed (None: it has not).
    #[doc(hidden)]
    pub fn ring_failure(&self) -> Option<crate::RingFailure> {
        self.inner().io.ring_failure()
    }

    /// Finishes queued writes, writes the index snapshot and marks the store clean.
    /// Other clones keep serving lookups; their inserts are refused.
    pub async fn close(self) -> Result<(), StoreError> {
        let inner = self.inner().clone();
        if inner.closed.swap(true, Relaxed) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        self.handle
            .tx
            .send(Job::Close(tx))
            .map_err(|_| StoreError::Closed)?;
        let active = rx.await.map_err(|_| StoreError::Closed)?;
        if crate::open::write_snapshot(&inner, active).await? {
            // The snapshot holds every hard purge's effect, but only the next open reads it:
            // a crash after that open recovers from region summaries, which may still list
            // purged objects. So hard records stay as long as soft ones do.
            let min_gen = inner.st.lock().min_disk_gen();
            let journal = self.handle.journal.clone();
            tokio::task::spawn_blocking(move || journal.compact_blocking(min_gen))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        Ok(())
    }
}

/// [`Store::purge`] on a blocking thread: applies `purges` in order, each at its own mark, taking
/// the state lock for at most about `PURGE_HOLD` entries at a time and handing it to a waiter
/// (a lookup, a touch, the writer) in between; then journals them and waits for fdatasync, and
/// compacts the journal when it has grown enough since it last was (`Journal::append_blocking`).
/// Each purge is applied whole under one hold, so a write racing it is either dropped or newer
/// than its mark, as with a single purge.
fn purge_blocking(
    inner: &Inner,
    journal: &Journal,
    purges: &[Purge],
) -> Result<Vec<usize>, StoreError> {
    let hash = |k: &[u8]| inner.hash(k);
    let mut records = Vec::with_capacity(purges.len());
    let mut n = Vec::with_capacity(purges.len());
    let mut rest = purges;
    while !rest.is_empty() {
        let mut st = inner.st.lock();
        let mut work = 0;
        while let Some((p, tail)) = rest.split_first() {
            let cost = st.purge_cost(p);
            if work > 0 && work + cost > PURGE_HOLD {
                break;
            }
            work += cost;
            let mark = st.next_seq;
            st.marks += 1;
            n.push(st.apply_purge(&inner.layout, &hash, p, mark));
            records.push(Record {
                seq: journal.next_seq(),
                mark,
                purge: p.clone(),
            });
            rest = tail;
        }
        parking_lot::MutexGuard::unlock_fair(st);
    }
    if journal.append_blocking(&records)? {
        let min_gen = inner.st.lock().min_disk_gen();
        journal.compact_blocking(min_gen)?;
    }
    Ok(n)
}

/// Seconds-resolution check used when deciding reinsertion.
pub(crate) fn expired(meta: &Meta) -> bool {
    meta.expires_at <= SystemTime::now()
}
