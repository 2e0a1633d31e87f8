//! The writer task: the only code that allocates space, seals and reclaims regions.
//!
//! It owns the active region. Each object gets the next 4 KiB-aligned extent and is written in
//! one transfer; up to `MAX_WRITES` run concurrently. An object enters the index only when its
//! write has completed, and leaves the in-RAM pending map at the same moment, so lookups see it
//! throughout. A region is sealed (summary + trailer written) only after every write into it has
//! completed. One region is always free: the last free one is opened by reclaiming the oldest
//! sealed region into it (`Writer::reclaim_into`): live objects that are pinned, or were hit
//! since they were written or last kept (most hits first, at most 7/8 of a region), are read
//! back (header verified; the payload's stored checksums are carried to the new copy, not
//! recomputed) and written into the fresh region with one hit less, the commit makes the old
//! region free, and the rest of it leaves the index.
//!
//! When the channel closes (every `Store` handle dropped) the task finishes what is queued and
//! exits without a snapshot. On `Close` it does the same and hands the active region back.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::buf::{round_up, AlignedBuf};
use crate::error::StoreError;
use crate::format::{self, KeyHash, RegionState, BLOCK, SUMMARY_ENTRY, SUMMARY_FIXED};
use crate::index::{Entry, PINNED};
use crate::store::{
    expired, Inner, Job, Purpose, ReadErr, ReadObj, ReadResult, RegionMeta, State, WriteJob,
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
    };
    tokio::spawn(async move {
        loop {
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
                Some(Job::Write(job)) => {
                    // Test hook (`Store::hold_writer`): the job stays queued (its pending
                    // entry is checked in `write`, after this).
                    w.inner.writer_gate.pass().await;
                    w.write(job).await
                }
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
    /// Finishes every write in flight.
    async fn drain(&mut self) {
        while let Some(done) = self.inflight.join_next().await {
            self.complete(done);
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
                    format::encode_object(&mut buf, nonce, gen, &m, body);
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
            self.open_next((blocks, reserve)).await?;
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

    /// Makes a region the active one. While two or more regions are free, the free one with
    /// the oldest generation is opened as it is. The last free one is opened by reclaiming the
    /// oldest sealed region into it ([`Writer::reclaim_into`]), which leaves that region free
    /// instead. So a region is always free, in RAM and (through the reclaim record of the
    /// commit) on disk after a crash, and a reclaim always copies what it keeps to a region
    /// other than the one it frees.
    ///
    /// Why the oldest free one first: a region freed by a reclaim is free on disk because the
    /// header of the region that reclaim opened names it. That region is newer than it, so it
    /// is reused only after it, and the record stays on disk as long as it is needed.
    ///
    /// `need` (blocks, summary bytes) is the allocation waiting for the region: a reclaim
    /// keeps hit objects only as far as it still fits after them.
    async fn open_next(&mut self, need: (u32, u64)) -> Result<(), StoreError> {
        let mut spared = false;
        loop {
            let (free, n_free, victim) = {
                let st = self.inner.st.lock();
                let oldest = |state: RegionState| {
                    st.regions
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.state == state)
                        .min_by_key(|(i, r)| (r.gen, *i))
                        .map(|(i, _)| i as u32)
                };
                let n_free = st
                    .regions
                    .iter()
                    .filter(|r| r.state == RegionState::Free)
                    .count();
                (
                    oldest(RegionState::Free),
                    n_free,
                    oldest(RegionState::Sealed),
                )
            };
            return match (free, victim) {
                (Some(t), Some(v)) if n_free == 1 => self.reclaim_into(t, v, need).await,
                (Some(t), _) => self.open_plain(t).await,
                (None, Some(_)) if !spared => {
                    spared = true;
                    if self.make_spare() {
                        continue;
                    }
                    Err(StoreError::Full(
                        "no free region, and every region holds pinned objects (a store last \
                         written by an older vedge, which reused regions in place): unpin or \
                         purge some objects, or reformat"
                            .into(),
                    ))
                }
                _ => Err(StoreError::Full("no region available".into())),
            };
        }
    }

    /// Opens the free region `region` for writing: a new generation, then its header.
    async fn open_plain(&mut self, region: u32) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let (gen, old_gen) = {
            let mut st = inner.st.lock();
            st.max_gen += 1;
            let gen = st.max_gen;
            let old_gen = st.regions[region as usize].gen;
            // Stamp the new generation before any byte is written: a lookup still reading the
            // old contents then fails verification and is not mistaken for corruption.
            st.regions[region as usize] = RegionMeta {
                gen,
                state: RegionState::Active,
            };
            st.next_seq = (gen << 32) | 1;
            prune_marks(&mut st);
            (gen, old_gen)
        };
        let hdr = format::encode_region_header(inner.nonce, region, gen, None);
        if let Err(e) = write_block(&inner, inner.layout.region_off(region), &hdr).await {
            inner.st.lock().regions[region as usize] = RegionMeta {
                gen: old_gen,
                state: RegionState::Free,
            };
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

    /// No region is free: the store was last written by an older build, which reused the
    /// oldest region in place. Frees the oldest sealed region that holds nothing reclaim must
    /// keep (no pinned object), evicting all of its objects; `reclaim_into` invalidates its
    /// header on disk before writing into it. Returns whether there was one.
    fn make_spare(&mut self) -> bool {
        let inner = &self.inner;
        let layout = inner.layout;
        let mut st = inner.st.lock();
        let mut pinned_in = vec![false; layout.regions as usize];
        if !inner.cfg.allow_pinned_eviction {
            for e in st.index.values().filter(|e| e.pinned()) {
                pinned_in[layout.region_of(e.block) as usize] = true;
            }
        }
        let Some(region) = st
            .regions
            .iter()
            .enumerate()
            .filter(|(i, r)| r.state == RegionState::Sealed && !pinned_in[*i])
            .min_by_key(|(i, r)| (r.gen, *i))
            .map(|(i, _)| i as u32)
        else {
            return false;
        };
        let doomed: Vec<KeyHash> = st
            .index
            .iter()
            .filter(|(_, e)| layout.region_of(e.block) == region)
            .map(|(h, _)| *h)
            .collect();
        for h in &doomed {
            st.index_remove(h);
        }
        st.regions[region as usize].state = RegionState::Free;
        drop(st);
        tracing::warn!(
            region,
            "no free region (store written by an older build): region evicted whole to make one"
        );
        inner.c.evictions.fetch_add(doomed.len() as u64, Relaxed);
        inner.c.regions_evicted.fetch_add(1, Relaxed);
        true
    }

    /// Reclaims sealed region `v` into free region `t`, which becomes the active region, and
    /// leaves `v` free. Keeps pinned objects and unexpired objects hit since they were written
    /// or last kept, most hits first, up to [`KEEP_SHARE`] of a region; the rest leave the
    /// index. A kept object's hit counter goes down by one, so an object that is no longer
    /// asked for leaves within three passes (a CLOCK with a two-bit counter: on a Zipf workload
    /// this holds the popular set like an LRU would, where FIFO regions alone lose every popular
    /// object once per lap of the store).
    ///
    /// Order, which is what makes a crash at any point lose nothing kept:
    /// 1. `t`'s header is zeroed and fdatasync'ed: nothing `t` held before can be recovered
    ///    over the blocks written next.
    /// 2. The kept objects are read back from `v` and written into `t` (`v` is never written),
    ///    then fdatasync'ed. Lookups keep reading them in `v`.
    /// 3. Commit: `t`'s header is written, with the reclaim record naming `v` and its
    ///    generation, and fdatasync'ed. Before that block is on disk, recovery finds `v` as it
    ///    was and `t` free; after it, the copies in `t` and `v` free.
    /// 4. Only then the index moves the kept objects to `t` and drops the rest of `v`.
    ///
    /// A read that still fails after [`READ_BACK_ATTEMPTS`] tries (`read_back`) drops only that
    /// object (as a failed lookup would); a pinned one is logged and counted (`pinned_lost`),
    /// and the reclaim goes on, so one bad sector cannot stop every write. A failed write or sync
    /// leaves the index as it was: every object stays readable in `v`, `t` stays free, and the
    /// next allocation tries again.
    async fn reclaim_into(&mut self, t: u32, v: u32, need: (u32, u64)) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let layout = inner.layout;
        let allow_pinned = inner.cfg.allow_pinned_eviction;
        let (gen, old_gen, gen_v, marks, cands, wanted, copies_end) = {
            let mut st = inner.st.lock();
            st.max_gen += 1;
            let gen = st.max_gen;
            let old_gen = st.regions[t as usize].gen;
            // `t` stays free until the commit; its new generation is stamped now so that a
            // lookup still reading its old contents fails verification as a race.
            st.regions[t as usize].gen = gen;
            let mut cands: Vec<(KeyHash, Entry)> = st
                .index
                .iter()
                .filter(|(_, e)| layout.region_of(e.block) == v)
                .map(|(h, e)| (*h, *e))
                .collect();
            let must = |e: &Entry| e.pinned() && !allow_pinned;
            // Pinned first, then by hits; ties in disk order (oldest first).
            cands.sort_by_key(|(_, e)| (!must(e), std::cmp::Reverse(e.freq()), e.block));
            let budget = keep_budget(layout.region_size);
            let mut kept_bytes = 0u64;
            // Hit objects are kept only while the object waiting for the region still fits
            // after them: new objects always get in. Pinned ones are kept regardless.
            let (mut end, mut reserved) = (1 + need.0, SUMMARY_FIXED + need.1);
            let wanted: Vec<(KeyHash, Entry)> = cands
                .iter()
                .filter(|(_, e)| {
                    let reserve = tags_reserve(st.tags.get(e.tagset));
                    let fits =
                        u64::from(end + e.blocks()) * BLOCK + round_up(reserved + reserve) + BLOCK
                            <= layout.region_size;
                    let want =
                        must(e) || (e.freq() > 0 && kept_bytes + e.bytes() <= budget && fits);
                    if want {
                        end += e.blocks();
                        reserved += reserve;
                        if !must(e) {
                            kept_bytes += e.bytes();
                        }
                    }
                    want
                })
                .copied()
                .collect();
            // Every copy lies below this sequence, so a purge during the reclaim takes a mark
            // above every copy a crash could find in `t` and its journal record covers them.
            let copies_end = 1 + wanted.iter().map(|(_, e)| e.blocks()).sum::<u32>();
            st.next_seq = (gen << 32) | u64::from(copies_end);
            let gen_v = st.regions[v as usize].gen;
            (gen, old_gen, gen_v, st.marks, cands, wanted, copies_end)
        };
        let mut dst = Active {
            region: t,
            gen,
            write_end: 1,
            reserved: SUMMARY_FIXED,
            objects: Vec::new(),
        };
        let CopyOutcome { copied, unreadable } =
            match self.copy_and_commit(&wanted, v, gen_v, &mut dst).await {
                Ok(c) => c,
                Err(e) => {
                    inner.st.lock().regions[t as usize].gen = old_gen;
                    return Err(e);
                }
            };
        let was_wanted: HashSet<KeyHash> = wanted.iter().map(|(h, _)| *h).collect();
        let mut late = Vec::new();
        let mut moved = 0u64;
        let mut dropped = 0u64;
        let mut lost = Vec::new();
        {
            let mut st = inner.st.lock();
            for (h, e) in &cands {
                // Removed, purged or replaced on disk meanwhile: leave it.
                let Some(cur) = st.index.get(h).copied().filter(|x| x.block == e.block) else {
                    continue;
                };
                let keep = copied.get(h).filter(|c| {
                    !st.prefix_dead(&layout, &c.key, &cur) && !st.soft_purged(&layout, &c.key, &cur)
                });
                let Some(c) = keep else {
                    if !was_wanted.contains(h) && cur.pinned() && !allow_pinned {
                        // Pinned after reclaim chose what to keep: copied now (`copy_late`), from
                        // `v`, which nothing writes before that.
                        late.push((*h, cur));
                        continue;
                    }
                    if unreadable.contains(h) && cur.pinned() {
                        lost.push(cur.block);
                    }
                    st.index_remove(h);
                    dropped += 1;
                    continue;
                };
                st.index_move(&layout, *h, cur, c.block);
                dst.objects.push(*h);
                moved += 1;
            }
            st.regions[v as usize].state = RegionState::Free;
            st.regions[t as usize] = RegionMeta {
                gen,
                state: RegionState::Active,
            };
            if st.marks != marks {
                // A purge took a mark below `copies_end`: nothing new may go below it.
                dst.write_end = dst.write_end.max(copies_end);
            }
            st.next_seq = (gen << 32) | u64::from(dst.write_end);
        }
        self.active = Some(dst);
        inner.c.reinsertions.fetch_add(moved, Relaxed);
        inner.c.evictions.fetch_add(dropped, Relaxed);
        inner.c.regions_evicted.fetch_add(1, Relaxed);
        for block in lost {
            pinned_lost(&inner, block);
        }
        self.copy_late(late, gen_v).await;
        // Only now: the objects pinned late still come from the freed region, and a mark taken
        // while it was being written may purge them (`write_late` checks the marks).
        prune_marks(&mut inner.st.lock());
        Ok(())
    }

    /// Copies into the active region the objects of the region just freed that were pinned
    /// while its reclaim was under way, after it had chosen what to keep: the pin holds. Runs
    /// before anything else is written (the freed region is the next one opened). Unlike the
    /// copies before the commit this is not crash-proof, and need not be: a pin is persisted
    /// only by a later summary or snapshot, so after a crash the object comes back unpinned and
    /// goes with its region, as it would have without the pin. An object that cannot be read,
    /// written or fitted in the region is dropped like the rest of its region.
    async fn copy_late(&mut self, late: Vec<(KeyHash, Entry)>, gen_v: u64) {
        let inner = self.inner.clone();
        for (h, e) in late {
            let mut unreadable = false;
            let placed = match read_back(&inner, h, e, gen_v).await {
                Ok(obj) => self.write_late(h, e, &obj).await,
                Err(ReadErr::Corrupt) => {
                    tracing::warn!(block = e.block, "corrupt object dropped by eviction");
                    inner.c.corrupt_reads.fetch_add(1, Relaxed);
                    None
                }
                Err(ReadErr::Io) => {
                    unreadable = true;
                    None
                }
            };
            let mut st = inner.st.lock();
            // Removed, purged or replaced meanwhile: leave it.
            let Some(cur) = st.index.get(&h).copied().filter(|x| x.block == e.block) else {
                continue;
            };
            let Some(block) = placed else {
                st.index_remove(&h);
                drop(st);
                inner.c.evictions.fetch_add(1, Relaxed);
                if unreadable && cur.pinned() {
                    pinned_lost(&inner, e.block);
                }
                continue;
            };
            st.index_move(&inner.layout, h, cur, block);
            if let Some(a) = self.active.as_mut() {
                a.objects.push(h);
            }
            inner.c.reinsertions.fetch_add(1, Relaxed);
        }
    }

    /// Writes `obj` (at `e` in the region just freed) at the end of the active region if it
    /// fits and no purge selects it. Returns its block.
    async fn write_late(&mut self, h: KeyHash, e: Entry, obj: &ReadObj) -> Option<u32> {
        let inner = self.inner.clone();
        let layout = inner.layout;
        let a = self.active.as_mut()?;
        let reserve = tags_reserve(&obj.meta.tags);
        let end = u64::from(a.write_end + e.blocks()) * BLOCK;
        if end + round_up(a.reserved + reserve) + BLOCK > layout.region_size {
            tracing::warn!(
                block = e.block,
                "object pinned during its region's reclaim did not fit; evicted"
            );
            return None;
        }
        let block = a.region * layout.region_blocks() + a.write_end;
        let pinned = {
            let mut st = inner.st.lock();
            let cur = st.index.get(&h).copied().filter(|x| x.block == e.block)?;
            if st.prefix_dead(&layout, &obj.key, &cur) || st.soft_purged(&layout, &obj.key, &cur) {
                return None;
            }
            a.write_end += e.blocks();
            a.reserved += reserve;
            // As `allocate` does: a purge from now on has a mark above this copy.
            st.next_seq = (a.gen << 32) | u64::from(a.write_end);
            cur.pinned()
        };
        let buf = encode_copy(obj, inner.nonce, a.gen, pinned, e.bytes());
        match inner.io.write(layout.block_off(block), buf).await {
            Ok(()) => {
                inner.c.bytes_written.fetch_add(e.bytes(), Relaxed);
                Some(block)
            }
            Err(err) => {
                write_error(&inner, err);
                None
            }
        }
    }

    /// Steps 1-3 of [`Writer::reclaim_into`]: copies `wanted` from region `v` (generation
    /// `gen_v`) into the empty region of `dst` and commits. Returns where each copy went.
    async fn copy_and_commit(
        &self,
        wanted: &[(KeyHash, Entry)],
        v: u32,
        gen_v: u64,
        dst: &mut Active,
    ) -> Result<CopyOutcome, StoreError> {
        let inner = &self.inner;
        let layout = inner.layout;
        let nonce = inner.nonce;
        let gen = dst.gen;
        let allow_pinned = inner.cfg.allow_pinned_eviction;
        let t_off = layout.region_off(dst.region);
        let werr = |e| write_error(inner, e);
        write_block(inner, t_off, &[]).await.map_err(werr)?;
        inner.io.sync().await.map_err(werr)?;
        let mut out = CopyOutcome::default();
        let mut failed = None;
        // Read back a few at a time and write each as it arrives: a region's worth in series
        // would stall the writer for one device read per object, and at most `MAX_WRITES`
        // bodies are held in RAM each way.
        let mut reads = JoinSet::new();
        let mut writes: JoinSet<io::Result<()>> = JoinSet::new();
        let mut next = wanted.iter().copied();
        loop {
            while reads.len() < MAX_WRITES {
                let Some((h, e)) = next.next() else { break };
                let inner = inner.clone();
                reads.spawn(async move { (h, e, read_back(&inner, h, e, gen_v).await) });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let Ok((h, e, res)) = done else { continue };
            let must = e.pinned() && !allow_pinned;
            let obj = match res {
                Ok(obj) => obj,
                // Not kept, so never served: it leaves the index with the rest of the region.
                Err(ReadErr::Corrupt) => {
                    tracing::warn!(block = e.block, "corrupt object dropped by eviction");
                    inner.c.corrupt_reads.fetch_add(1, Relaxed);
                    continue;
                }
                // Tried `READ_BACK_ATTEMPTS` times: dropped (and, if pinned, reported) at the
                // commit. Failing the reclaim instead would stop every write on one bad sector.
                Err(ReadErr::Io) => {
                    out.unreadable.insert(h);
                    continue;
                }
            };
            if !must && expired(&obj.meta) {
                continue;
            }
            let pinned = {
                let st = inner.st.lock();
                // Gone meanwhile, or purged: no copy (a soft-purged one, pinned or not, would
                // be newer than its purge and served as fresh, never revalidated; dropped, the
                // edge fetches it anew).
                let Some(cur) = st.index.get(&h).filter(|x| x.block == e.block) else {
                    continue;
                };
                if st.prefix_dead(&layout, &obj.key, cur) || st.soft_purged(&layout, &obj.key, cur)
                {
                    continue;
                }
                // The pin as it is now, not as when reclaim chose what to keep; the index
                // takes it as it is at the commit.
                cur.pinned()
            };
            let reserve = tags_reserve(&obj.meta.tags);
            let end = u64::from(dst.write_end + e.blocks()) * BLOCK;
            if end + round_up(dst.reserved + reserve) + BLOCK > layout.region_size {
                // Cannot happen: what is kept from a region fits an empty one. Never drop a
                // pinned object for it, though.
                if must {
                    failed = Some(StoreError::Full(format!(
                        "objects kept from region {v} do not fit region {}",
                        dst.region
                    )));
                    break;
                }
                continue;
            }
            let block = dst.region * layout.region_blocks() + dst.write_end;
            dst.write_end += e.blocks();
            dst.reserved += reserve;
            if writes.len() >= MAX_WRITES {
                if let Some(Err(err)) = writes.join_next().await.map(flatten) {
                    failed = Some(werr(err));
                    break;
                }
            }
            out.copied.insert(
                h,
                Copied {
                    block,
                    key: obj.key.clone(),
                },
            );
            inner.c.bytes_written.fetch_add(e.bytes(), Relaxed);
            let io = inner.io.clone();
            let off = layout.block_off(block);
            let extent = e.bytes();
            writes.spawn(async move {
                let buf = encode_copy(&obj, nonce, gen, pinned, extent);
                io.write(off, buf).await
            });
        }
        drop(reads);
        // Every write started finishes before this returns, failed or not: one still running
        // could land in `t` after a later use of it.
        while let Some(r) = writes.join_next().await {
            if let Err(err) = flatten(r) {
                failed.get_or_insert_with(|| werr(err));
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        inner.io.sync().await.map_err(werr)?;
        let hdr = format::encode_region_header(
            nonce,
            dst.region,
            gen,
            Some(format::Reclaimed {
                region: v,
                gen: gen_v,
            }),
        );
        write_block(inner, t_off, &hdr).await.map_err(werr)?;
        // Before `v` is written again (it is the next region opened), the commit is on disk.
        inner.io.sync().await.map_err(werr)?;
        Ok(out)
    }
}

/// What [`Writer::copy_and_commit`] did with the objects it was to keep.
#[derive(Default)]
struct CopyOutcome {
    /// Where each copy went.
    copied: HashMap<KeyHash, Copied>,
    /// Objects every read-back attempt failed with a device error: dropped at the commit.
    unreadable: HashSet<KeyHash>,
}

/// Where reclaim wrote a kept object.
struct Copied {
    block: u32,
    key: bytes::Bytes,
}

/// Reads reclaim makes of an object it keeps before dropping it for device errors.
const READ_BACK_ATTEMPTS: u32 = 3;
/// Wait before the second read-back attempt; doubled before the third.
const READ_BACK_BACKOFF: Duration = Duration::from_millis(10);

/// Reads back an object reclaim keeps (at `e`, in a region of generation `gen_v`), trying
/// again after a device error: a transient EIO (a bad moment of the device, a path failover)
/// must not cost a pinned object its only copy. Every failed attempt counts in `read_errors`.
/// Bounded (three attempts, 30 ms of waiting) because the writer waits for the read-back, and
/// every write with it; a corrupt read is final (the bytes on disk are wrong, not the read).
async fn read_back(inner: &Inner, h: KeyHash, e: Entry, gen_v: u64) -> ReadResult {
    let mut attempt = 1;
    loop {
        match inner.read_verified(h, e, gen_v, Purpose::Rewrite).await {
            Err(ReadErr::Io) => {
                inner.c.read_errors.fetch_add(1, Relaxed);
                if attempt == READ_BACK_ATTEMPTS {
                    tracing::warn!(
                        block = e.block,
                        attempts = attempt,
                        "object dropped by reclaim: every read-back failed"
                    );
                    return Err(ReadErr::Io);
                }
                tokio::time::sleep(READ_BACK_BACKOFF * (1 << (attempt - 1))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Reports a pinned object reclaim dropped because it could not read it back: a pushed asset
/// is gone from the store, which the operator must hear of (`pinned_lost`, an error log).
fn pinned_lost(inner: &Inner, block: u32) {
    inner.c.pinned_lost.fetch_add(1, Relaxed);
    tracing::error!(
        block,
        attempts = READ_BACK_ATTEMPTS,
        path = %inner.cfg.path.display(),
        "pinned object lost: reclaim could not read it back (device read errors); push it again"
    );
}

/// A kept object's copy for a region of generation `gen`: its stored checksums go with it
/// unchanged.
fn encode_copy(obj: &ReadObj, nonce: u64, gen: u64, pinned: bool, extent: u64) -> AlignedBuf {
    let m = format::ObjMeta {
        key: &obj.key,
        head: &obj.meta.head,
        tags: &obj.meta.tags,
        stored_at: obj.meta.stored_at,
        expires_at: obj.meta.expires_at,
        pinned,
    };
    let mut buf = AlignedBuf::uninit(extent as usize);
    match &obj.carried {
        Some(crcs) => format::encode_object_carried(&mut buf, nonce, gen, &m, &obj.body, crcs),
        None => {
            format::encode_object(&mut buf, nonce, gen, &m, &obj.body);
        }
    }
    buf
}

/// A write task's result, a panic counting as an I/O error.
fn flatten(r: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    r.unwrap_or_else(|e| Err(io::Error::other(format!("write task failed: {e}"))))
}

/// Writes `bytes` at the start of a zeroed block at `off`.
async fn write_block(inner: &Inner, off: u64, bytes: &[u8]) -> io::Result<()> {
    let mut buf = AlignedBuf::zeroed(BLOCK as usize);
    buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
    inner.io.write(off, buf).await
}

/// Drops the prefix tombstones and soft purges older than every region in use: nothing they
/// could select is left.
fn prune_marks(st: &mut State) {
    let min_gen = st
        .regions
        .iter()
        .filter(|r| r.state != RegionState::Free)
        .map(|r| r.gen)
        .min();
    if let Some(min_gen) = min_gen {
        st.prefixes.prune(min_gen);
        st.soft.retain(|(_, mark)| (mark >> 32) >= min_gen);
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
