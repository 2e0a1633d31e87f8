//! The writer task: the only code that allocates space, seals and evicts regions.
//!
//! It owns the active region. Each object gets the next 4 KiB-aligned extent and is written in
//! one transfer; up to `MAX_WRITES` run concurrently. An object enters the index only when its
//! write has completed, and leaves the in-RAM pending map at the same moment, so lookups see it
//! throughout. A region is sealed (summary + trailer written) only after every write into it has
//! completed. Eviction takes the oldest sealed region: live objects that are pinned, or were hit
//! since they were written or last kept (most hits first, at most 7/8 of a region), are read
//! back (header verified; the payload's stored checksums are carried to the new copy, not
//! recomputed) and queued again with one hit less; the rest leave the index.
//!
//! When the channel closes (every `Store` handle dropped) the task finishes what is queued and
//! exits without a snapshot. On `Close` it does the same and hands the active region back.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::buf::{round_up, AlignedBuf};
use crate::error::StoreError;
use crate::format::{self, KeyHash, RegionState, BLOCK, SUMMARY_ENTRY, SUMMARY_FIXED};
use crate::index::{Entry, PINNED};
use crate::store::{
    expired, Carried, Inner, Job, Obj, Pending, Purpose, ReadErr, RegionMeta, WriteJob,
};

const MAX_WRITES: usize = 8;

/// The active region's write position.
#[derive(Clone, Debug)]
pub(crate) struct Active {
    pub region: u32,
    pub gen: u64,
    /// Next free block within the region.
    pub write_end: u32,
    /// Summary bytes reserved by the objects allocated so far.
    pub reserved: u64,
    /// Objects written into this region (filtered against the index when sealing).
    pub objects: Vec<KeyHash>,
}

pub(crate) type ActiveSnap = Option<Active>;

struct Done {
    job: WriteJob,
    block: u32,
    res: io::Result<()>,
}

struct Writer {
    inner: Arc<Inner>,
    active: Option<Active>,
    inflight: JoinSet<Done>,
    local: VecDeque<WriteJob>,
}

pub(crate) fn spawn(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    active: Option<Active>,
) {
    let mut w = Writer {
        inner,
        active,
        inflight: JoinSet::new(),
        local: VecDeque::new(),
    };
    tokio::spawn(async move {
        loop {
            if let Some(job) = w.local.pop_front() {
                w.write(job).await;
                continue;
            }
            let job = tokio::select! {
                // Completions first so the index catches up before more work is taken.
                biased;
                Some(done) = w.inflight.join_next(), if !w.inflight.is_empty() => {
                    w.complete(done);
                    continue;
                }
                job = rx.recv() => job,
            };
            match job {
                Some(Job::Write(job)) => w.write(job).await,
                Some(Job::Flush(tx)) => {
                    w.drain().await;
                    let _ = tx.send(());
                }
                Some(Job::Close(tx)) => {
                    w.drain().await;
                    let _ = tx.send(w.active.take());
                    return;
                }
                None => {
                    w.drain().await;
                    return;
                }
            }
        }
    });
}

fn tags_reserve(tags: &[String]) -> u64 {
    SUMMARY_ENTRY + format::encode_tags(tags).len() as u64
}

impl Writer {
    /// Finishes reinsertion jobs and every write in flight.
    async fn drain(&mut self) {
        loop {
            while let Some(job) = self.local.pop_front() {
                self.write(job).await;
            }
            match self.inflight.join_next().await {
                Some(done) => self.complete(done),
                None if self.local.is_empty() => return,
                None => {}
            }
        }
    }

    fn complete(&mut self, done: Result<Done, tokio::task::JoinError>) {
        let Ok(Done { job, block, res }) = done else {
            // The write task panicked: its job is lost; nothing was indexed.
            self.inner.c.write_errors.fetch_add(1, Relaxed);
            return;
        };
        let inner = &self.inner;
        inner.c.queued_bytes.fetch_sub(job.extent, Relaxed);
        let result = match res {
            Ok(()) => {
                let mut st = inner.st.lock();
                if st.pending.get(&job.hash).is_some_and(|p| p.id == job.id) {
                    let p = st.pending_remove(&job.hash).expect("checked above");
                    let tagset = st.tags.acquire(&job.obj.meta.tags);
                    let mut flags = (job.extent / BLOCK) as u32;
                    if p.pinned {
                        flags |= PINNED;
                    }
                    let mut e = Entry {
                        block,
                        blocks_flags: flags,
                        tagset,
                    };
                    e.set_freq(p.freq);
                    st.index_put(job.hash, e);
                    if let Some(a) = self.active.as_mut() {
                        a.objects.push(job.hash);
                    }
                }
                drop(st);
                inner.c.bytes_written.fetch_add(job.extent, Relaxed);
                Ok(())
            }
            Err(e) => {
                {
                    let mut st = inner.st.lock();
                    if st.pending.get(&job.hash).is_some_and(|p| p.id == job.id) {
                        st.pending_remove(&job.hash);
                    }
                }
                Err(write_error(inner, e))
            }
        };
        if let Some(tx) = job.done {
            let _ = tx.send(result);
        }
    }

    async fn write(&mut self, mut job: WriteJob) {
        let inner = self.inner.clone();
        let current = inner
            .st
            .lock()
            .pending
            .get(&job.hash)
            .is_some_and(|p| p.id == job.id);
        if !current {
            // Removed or replaced while queued: nothing to write, and a durable caller must not
            // be told its bytes are on disk.
            inner.c.queued_bytes.fetch_sub(job.extent, Relaxed);
            if let Some(tx) = job.done.take() {
                let _ = tx.send(Err(StoreError::Superseded));
            }
            return;
        }
        let blocks = (job.extent / BLOCK) as u32;
        let block = match self
            .allocate(blocks, tags_reserve(&job.obj.meta.tags))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                let mut st = inner.st.lock();
                if st.pending.get(&job.hash).is_some_and(|p| p.id == job.id) {
                    st.pending_remove(&job.hash);
                }
                drop(st);
                inner.c.refused_writes.fetch_add(1, Relaxed);
                inner.c.queued_bytes.fetch_sub(job.extent, Relaxed);
                if let Some(tx) = job.done.take() {
                    let _ = tx.send(Err(e));
                }
                return;
            }
        };
        // A purge between the check above and the allocation took a mark at or below this
        // object's sequence, so its journal record would not cover this write after a crash:
        // check again now that the sequence is taken (a purge from here on has a higher mark).
        let still_current = inner
            .st
            .lock()
            .pending
            .get(&job.hash)
            .is_some_and(|p| p.id == job.id);
        if !still_current {
            inner.c.queued_bytes.fetch_sub(job.extent, Relaxed);
            if let Some(tx) = job.done.take() {
                let _ = tx.send(Err(StoreError::Superseded));
            }
            return;
        }
        let gen = self
            .active
            .as_ref()
            .expect("allocate leaves an active region")
            .gen;
        while self.inflight.len() >= MAX_WRITES {
            if let Some(d) = self.inflight.join_next().await {
                self.complete(d);
            }
        }
        let io = inner.io.clone();
        let off = inner.layout.block_off(block);
        let nonce = inner.nonce;
        // Encoding (copy + checksums) runs in the write task, so several objects are prepared
        // in parallel on the runtime's workers instead of serially in this loop.
        self.inflight.spawn(async move {
            let o = job.obj.clone();
            let m = format::ObjMeta {
                key: &o.key,
                head: &o.meta.head,
                tags: &o.meta.tags,
                stored_at: o.meta.stored_at,
                expires_at: o.meta.expires_at,
                pinned: o.meta.pinned,
            };
            let buf = match (job.in_place.take(), &o.body) {
                (Some(ob), _) => {
                    let (hlen, len) = (ob.hlen, ob.len);
                    let mut buf = ob.buf;
                    format::encode_object_in_place(&mut buf, nonce, gen, &m, hlen, len);
                    buf
                }
                (None, Some(body)) => {
                    let mut buf = AlignedBuf::uninit(job.extent as usize);
                    match &o.carried {
                        // A rewrite: its stored checksums go with it unchanged.
                        Some(c) => {
                            format::encode_object_carried(&mut buf, nonce, gen, &m, body, &c.crcs)
                        }
                        None => {
                            format::encode_object(&mut buf, nonce, gen, &m, body);
                        }
                    }
                    buf
                }
                (None, None) => unreachable!("an object without a body is written in place"),
            };
            let mut res = io.write(off, buf).await;
            if res.is_ok() && job.durable {
                res = io.sync().await;
            }
            Done { job, block, res }
        });
    }

    /// Reserves `blocks` in the active region, sealing it and opening the next one as needed.
    async fn allocate(&mut self, blocks: u32, reserve: u64) -> Result<u32, StoreError> {
        let layout = self.inner.layout;
        let mut opened = 0u32;
        loop {
            if let Some(a) = self.active.as_mut() {
                let end = u64::from(a.write_end + blocks) * BLOCK;
                if end + round_up(a.reserved + reserve) + BLOCK <= layout.region_size {
                    let block = a.region * layout.region_blocks() + a.write_end;
                    a.write_end += blocks;
                    a.reserved += reserve;
                    self.inner.st.lock().next_seq = (a.gen << 32) | u64::from(a.write_end);
                    return Ok(block);
                }
                self.seal().await;
            }
            // Every region evicted once and still no room: pinned data has the store.
            if opened > layout.regions + 1 {
                return Err(StoreError::Full(format!(
                    "no region could be freed after evicting all {} regions (pinned data fills the store)",
                    layout.regions
                )));
            }
            self.open_next().await?;
            opened += 1;
        }
    }

    /// Waits for the active region's writes, then writes its summary and trailer.
    async fn seal(&mut self) {
        while let Some(d) = self.inflight.join_next().await {
            self.complete(d);
        }
        let Some(a) = self.active.take() else { return };
        if let Err(e) = write_summary(&self.inner, a.region, a.gen, &a.objects).await {
            // Without a summary the region is scanned after a crash; nothing is lost.
            tracing::warn!(error = %e, region = a.region, "writing region summary failed");
            self.inner.c.write_errors.fetch_add(1, Relaxed);
        }
        self.inner.st.lock().regions[a.region as usize].state = RegionState::Sealed;
    }

    /// Makes a free region (or the oldest sealed one, evicted) the active region.
    async fn open_next(&mut self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let pick = {
            let st = inner.st.lock();
            st.regions
                .iter()
                .position(|r| r.state == RegionState::Free)
                .map(|r| (r as u32, false))
                .or_else(|| {
                    st.regions
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.state == RegionState::Sealed)
                        .min_by_key(|(_, r)| r.gen)
                        .map(|(i, _)| (i as u32, true))
                })
        };
        let Some((region, sealed)) = pick else {
            return Err(StoreError::Full("no region available".into()));
        };
        if sealed {
            self.evict(region).await;
        }
        let gen = {
            let mut st = inner.st.lock();
            st.max_gen += 1;
            let gen = st.max_gen;
            // Stamp the new generation before any byte is written: a lookup still reading the
            // old contents then fails verification and is not mistaken for corruption.
            st.regions[region as usize] = RegionMeta {
                gen,
                state: RegionState::Active,
            };
            st.next_seq = (gen << 32) | 1;
            let min_gen = st
                .regions
                .iter()
                .filter(|r| r.state != RegionState::Free)
                .map(|r| r.gen)
                .min();
            if let Some(min_gen) = min_gen {
                st.prefixes.retain(|(_, mark)| (mark >> 32) >= min_gen);
                st.soft.retain(|(_, mark)| (mark >> 32) >= min_gen);
            }
            gen
        };
        let mut buf = AlignedBuf::zeroed(BLOCK as usize);
        let hdr = format::encode_region_header(inner.nonce, region, gen);
        buf.as_mut_slice()[..hdr.len()].copy_from_slice(&hdr);
        if let Err(e) = inner.io.write(inner.layout.region_off(region), buf).await {
            inner.st.lock().regions[region as usize].state = RegionState::Free;
            return Err(write_error(&inner, e));
        }
        self.active = Some(Active {
            region,
            gen,
            write_end: 1,
            reserved: SUMMARY_FIXED,
            objects: Vec::new(),
        });
        Ok(())
    }

    /// Empties `region`: keeps (reinserts) pinned objects and unexpired objects hit since they
    /// were written or last kept, most hits first, up to [`KEEP_SHARE`] of a region; drops the
    /// rest from the index. A kept object's hit counter goes down by one, so an object that is
    /// no longer asked for leaves within three passes (a CLOCK with a two-bit counter: on a
    /// Zipf workload this holds the popular set like an LRU would, where FIFO regions alone
    /// lose every popular object once per lap of the store).
    async fn evict(&mut self, region: u32) {
        let inner = self.inner.clone();
        let layout = inner.layout;
        let allow_pinned = inner.cfg.allow_pinned_eviction;
        let (mut cands, gen) = {
            let st = inner.st.lock();
            let c: Vec<(KeyHash, Entry)> = st
                .index
                .iter()
                .filter(|(_, e)| layout.region_of(e.block) == region)
                .map(|(h, e)| (*h, *e))
                .collect();
            (c, st.regions[region as usize].gen)
        };
        let must = |e: &Entry| e.pinned() && !allow_pinned;
        // Pinned first, then by hits; ties in disk order (oldest first).
        cands.sort_by_key(|(_, e)| (!must(e), std::cmp::Reverse(e.freq()), e.block));
        // Kept objects are held in RAM from their read to their rewrite, counted with the
        // queued writes (new admissions wait meanwhile): together they stay within
        // `max_queued_bytes`, the store's share of the memory budget.
        let queued = inner.c.queued_bytes.load(Relaxed);
        let budget =
            keep_budget(layout.region_size).min(inner.cfg.max_queued_bytes.saturating_sub(queued));
        let mut kept_bytes = 0u64;
        let wanted: Vec<(KeyHash, Entry)> = cands
            .iter()
            .filter(|(_, e)| {
                let want = must(e) || (e.freq() > 0 && kept_bytes + e.bytes() <= budget);
                if want && !must(e) {
                    kept_bytes += e.bytes();
                }
                want
            })
            .copied()
            .collect();
        let reserved: u64 = wanted.iter().map(|(_, e)| e.bytes()).sum();
        inner.c.queued_bytes.fetch_add(reserved, Relaxed);
        let mut unreserved = reserved;
        // Read back (and verify) the kept objects a few at a time: a region's worth in series
        // would stall the writer for one device read per object.
        let mut keep = Vec::with_capacity(wanted.len());
        let mut reads = JoinSet::new();
        let mut next = wanted.into_iter();
        loop {
            while reads.len() < MAX_WRITES {
                let Some((h, e)) = next.next() else { break };
                let inner = inner.clone();
                reads.spawn(async move {
                    (h, e, inner.read_verified(h, e, gen, Purpose::Rewrite).await)
                });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let Ok((h, e, res)) = done else { continue };
            let obj = match res {
                Ok(obj) => obj,
                // Not kept, so never served: it leaves the index with the rest of the region.
                Err(ReadErr::Corrupt) => {
                    tracing::warn!(block = e.block, "corrupt object dropped by eviction");
                    inner.c.corrupt_reads.fetch_add(1, Relaxed);
                    continue;
                }
                Err(ReadErr::Io) => {
                    inner.c.read_errors.fetch_add(1, Relaxed);
                    continue;
                }
            };
            if !must(&e) && expired(&obj.meta) {
                continue;
            }
            keep.push((h, e, obj));
        }
        let mut st = inner.st.lock();
        // Each object still where it was, with its hit counter as it is now (hits may have
        // come in during the reads).
        let mut removed = std::collections::HashMap::new();
        for (h, e) in &cands {
            if st.index.get(h).is_some_and(|x| x.block == e.block) {
                if let Some(now) = st.index_remove(h) {
                    removed.insert(*h, now.freq());
                }
            }
        }
        let mut dropped = removed.len() as u64;
        for (h, e, obj) in keep {
            // Skip objects removed (or purged by prefix) or replaced while we were reading them.
            let Some(&freq) = removed.get(&h) else {
                continue;
            };
            if st.pending.contains_key(&h) || st.prefix_dead(&layout, &obj.key, &e) {
                continue;
            }
            // Nor a soft-purged one, pinned or not: its rewrite would be newer than the purge
            // and served as fresh, never revalidated (serving what the operator said may have
            // changed is worse than losing a pin). Dropped, the edge fetches it anew.
            let seq = st.seq(&layout, &e);
            if st
                .soft
                .iter()
                .any(|(sel, mark)| seq < *mark && sel.matches(&obj.key, &obj.meta.tags))
            {
                continue;
            }
            let id = u64::MAX - inner.c.reinsertions.fetch_add(1, Relaxed);
            dropped -= 1;
            let pinned = e.pinned();
            let o = Arc::new(Obj {
                key: obj.key.clone(),
                meta: obj.meta.clone(),
                body: Some(obj.body.clone()),
                carried: obj.carried.clone().map(Carried::new),
            });
            let extent = e.bytes();
            if pinned {
                st.pending_pinned += extent;
            }
            st.pending.insert(
                h,
                Pending {
                    id,
                    obj: o.clone(),
                    pinned,
                    extent,
                    freq: freq.saturating_sub(1),
                },
            );
            unreserved -= extent;
            self.local.push_back(WriteJob {
                hash: h,
                id,
                obj: o,
                in_place: None,
                extent,
                durable: false,
                done: None,
            });
        }
        st.regions[region as usize].state = RegionState::Free;
        drop(st);
        // What was reserved for objects not kept after all (unreadable, expired, replaced).
        inner.c.queued_bytes.fetch_sub(unreserved, Relaxed);
        inner.c.evictions.fetch_add(dropped, Relaxed);
        inner.c.regions_evicted.fetch_add(1, Relaxed);
    }
}

/// Share of a region that eviction may keep: every reclaim frees at least an eighth of a
/// region, so reinsertion writes at most 7 bytes per new byte even when everything is hot.
pub(crate) const KEEP_SHARE: (u64, u64) = (7, 8);

/// Bytes of hit (unpinned) objects one eviction of a region of `region_size` may keep.
pub(crate) fn keep_budget(region_size: u64) -> u64 {
    region_size / KEEP_SHARE.1 * KEEP_SHARE.0
}

fn write_error(inner: &Inner, e: io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        inner.c.refused_writes.fetch_add(1, Relaxed);
        tracing::warn!(path = %inner.cfg.path.display(), "store device out of space (ENOSPC); write refused");
        StoreError::Full(format!(
            "device out of space (ENOSPC) at {}",
            inner.cfg.path.display()
        ))
    } else {
        inner.c.write_errors.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, "store write failed");
        StoreError::Io(e)
    }
}

/// Writes the summary of the objects of `objects` still indexed in `region`, and the trailer,
/// as one transfer at the end of the region.
pub(crate) async fn write_summary(
    inner: &Inner,
    region: u32,
    gen: u64,
    objects: &[KeyHash],
) -> io::Result<()> {
    let layout = inner.layout;
    let base = region * layout.region_blocks();
    let body = {
        let st = inner.st.lock();
        let mut sets: Vec<Vec<String>> = vec![Vec::new()];
        let mut set_ids = std::collections::HashMap::new();
        let mut entries = Vec::new();
        for h in objects {
            let Some(e) = st.index.get(h) else { continue };
            if layout.region_of(e.block) != region {
                continue;
            }
            let ts = if e.tagset == 0 {
                0
            } else {
                *set_ids.entry(e.tagset).or_insert_with(|| {
                    sets.push(st.tags.get(e.tagset).to_vec());
                    (sets.len() - 1) as u32
                })
            };
            entries.push(format::SumEntry {
                hash: *h,
                block: e.block - base,
                blocks_flags: e.blocks_flags & crate::index::PERSISTED,
                tagset: ts,
            });
        }
        format::encode_summary(&sets, &entries)
    };
    let sum_space = round_up(body.len() as u64) as usize;
    let mut buf = AlignedBuf::zeroed(sum_space + BLOCK as usize);
    buf.as_mut_slice()[..body.len()].copy_from_slice(&body);
    let trailer = format::encode_trailer(
        inner.nonce,
        &format::Trailer {
            gen,
            summary_len: body.len() as u32,
            summary_crc: crc32c::crc32c(&body),
        },
    );
    buf.as_mut_slice()[sum_space..sum_space + trailer.len()].copy_from_slice(&trailer);
    let off = layout.region_off(region) + layout.region_size - buf.as_slice().len() as u64;
    inner.io.write(off, buf).await
}
