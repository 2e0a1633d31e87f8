//! Large RAM-tier bodies kept in anonymous memory that the viewer socket `vmsplice`s into a pipe
//! and `splice`s out, so their bytes are never copied from user space into the kernel (nginx's
//! advantage on large hits; the copy was over half of the edge's CPU on 1 MiB hits).
//!
//! A body is still an ordinary `Bytes` (`Bytes::from_owner` of the mapping), so ranges, the
//! store, HTTP/2 and TLS all read it like any other buffer. The plain-TCP socket wrapper
//! (`zerocopy::socket`) recognises a write whose slice lies inside a registered mapping and
//! splices it instead; the bytes are the same either way, so missing the fast path is never a
//! correctness problem.
//!
//! Only bodies of `MIN_SIZE` (512 KiB) and more: from 1 MiB a body starts on a huge-page boundary
//! and is advised `MADV_HUGEPAGE`, a tail of half a huge page or more rounded up to a whole one
//! (`footprint`), so a hit pins one huge page instead of hundreds of small ones. Smaller bodies
//! stay on the heap and are copied into the socket: measured side by side (`wrk -t2 -c64`, edge
//! CPU per hit), referencing pages cost more than copying them below 512 KiB. Earlier such
//! bodies lived in sealed memfds sent with `sendfile`, which looks the file up one 4 KiB page at
//! a time (a memfd this small never gets a huge page): at 256 KiB that lookup was a fifth of the
//! edge's CPU, and the copy took 20-30 % less CPU per hit at 64, 256 and 384 KiB
//! (benches/RESULTS.md).
//!
//! Why a mapping is safe here (the brief keeps mappings off the serving path): the memory is
//! anonymous, never disk-backed, so touching it can't block on I/O or SIGBUS; it is private to
//! this process; and every byte is written once, before any slice covering it exists (a body
//! filled while it is read, `Growing`, is only written past the end of every slice handed out),
//! so a page the kernel still references after `splice` (a pipe, TCP retransmission) keeps the
//! bytes it was sent with, and stays alive after `munmap` until the kernel lets go.
//!
//! Each body costs one or two mappings, so zero-copy bodies are made only while the context's
//! mapping budget allows (half of `vm.max_map_count`, configurable lower), taken before the
//! mapping is made and given back when it goes; beyond that bodies stay on the heap, as they do
//! when the context is disabled (`vedge_zero_copy_fallbacks_total`).
//!
//! On drop of the last `Bytes` of a body, its mapping is unmapped, unregistered and uncounted
//! (`Mapping::drop`); nothing here waits, so there is no timeout.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;

use bytes::Bytes;

use super::ZeroCopy;

/// Bodies smaller than this stay on the heap and are copied into the socket: below it, a copy
/// cost the edge less CPU per hit than page references (see the module comment).
pub const MIN_SIZE: usize = 512 << 10;

/// The transparent huge page size on x86-64 and (4 KiB-granule) arm64.
const HUGE_PAGE: usize = 2 << 20;

impl ZeroCopy {
    /// Concatenates `chunks` (`len` bytes in all) into one body: in anonymous pages
    /// when it is large enough, zero-copy is on and the budget allows, else on the heap. Copies
    /// once either way, a single chunk too: a chunk read from an origin is a slice of the
    /// buffer hyper read it into (up to hundreds of KiB, shared with the bytes around it), and
    /// kept in the RAM tier it would hold all of that while weighing its own length (one
    /// client alternating a large pass with tiny cached objects grew the process 600 KiB for
    /// each of them).
    pub fn concat(self: &Arc<Self>, chunks: &[Bytes], len: usize) -> Bytes {
        if chunks.is_empty() {
            return Bytes::new();
        }
        if let Some(body) = self.mapped(chunks, len) {
            return body;
        }
        if let [one] = chunks {
            return Bytes::copy_from_slice(one);
        }
        let mut b = bytes::BytesMut::with_capacity(len);
        for c in chunks {
            b.extend_from_slice(c);
        }
        b.freeze()
    }

    /// `body` moved into a zero-copy mapping if it is eligible and not in one already (disk hits
    /// promoted to RAM); otherwise `body` itself.
    pub fn adopt(self: &Arc<Self>, body: Bytes) -> Bytes {
        if !self.wanted(body.len()) || self.registered(body.as_ptr(), body.len()) {
            return body;
        }
        let len = body.len();
        // A body read from the store is an allocation of its own: kept as it is when it
        // cannot be mapped.
        self.mapped(std::slice::from_ref(&body), len)
            .unwrap_or(body)
    }

    /// `chunks` copied into a zero-copy mapping, when one is wanted and the budget allows.
    fn mapped(self: &Arc<Self>, chunks: &[Bytes], len: usize) -> Option<Bytes> {
        let mut g = Growing::new(self, len)?;
        // Stops at the first chunk that does not fit: `into_body` then sees a short body.
        if chunks.iter().all(|c| g.append(c).is_some()) {
            return g.into_body();
        }
        None
    }

    /// Whether a body of `len` bytes would go to zero-copy memory, budgets aside.
    fn wanted(&self, len: usize) -> bool {
        len >= MIN_SIZE && self.enabled
    }

    /// Takes the mappings a body of `len` bytes needs from the budget, or counts a fallback to
    /// the heap. The check-and-take is one compare-and-swap, so fills racing for the last
    /// mapping never both get it: the budget is a hard ceiling, reached long before mmap fails
    /// with ENOMEM at `vm.max_map_count`.
    fn reserve(self: &Arc<Self>, len: usize) -> Option<Slot> {
        if !self.wanted(len) {
            return None;
        }
        let maps = mapping_cost(len);
        let taken = self.maps.fetch_update(Relaxed, Relaxed, |cur| {
            cur.checked_add(maps)
                .filter(|&next| next <= self.map_budget)
        });
        if taken.is_err() {
            self.map_fallbacks.fetch_add(1, Relaxed);
            return None;
        }
        Some(Slot {
            zc: self.clone(),
            maps,
        })
    }

    /// Whether `[ptr, ptr+len)` lies inside a body registered here (and can be spliced). The
    /// caller must hold a reference keeping the body alive (it does: it is writing it).
    pub fn registered(&self, ptr: *const u8, len: usize) -> bool {
        if self.live.load(Relaxed) == 0 {
            return false;
        }
        let p = ptr as usize;
        let Ok(reg) = self.registry.read() else {
            return false;
        };
        reg.range(..=p)
            .next_back()
            .is_some_and(|(_, &end)| p + len <= end)
    }
}

/// The mappings a body of `len` bytes takes: one, or two for anonymous memory whose whole huge
/// pages are advised `MADV_HUGEPAGE` and whose tail is not (the advice splits the mapping in
/// the kernel's count, `/proc/<pid>/maps`). Neighbours may merge, never split further: an upper
/// bound.
pub(super) fn mapping_cost(len: usize) -> usize {
    if len < MIN_SIZE || footprint(len) > len {
        return 1;
    }
    let huge = len / HUGE_PAGE * HUGE_PAGE;
    if huge > 0 && huge < len.next_multiple_of(page_size()) {
        2
    } else {
        1
    }
}

/// The memory a zero-copy body of `len` bytes occupies: its length, or, where the kernel gives
/// anonymous memory huge pages and the body's tail past its last whole huge page is at least half
/// of one, that tail rounded up to a whole huge page (at most 1 MiB more, and at most as much
/// again as the body). The RAM tier weighs bodies by it.
///
/// Why round: a 1-2 MiB segment in 4 KiB pages costs a fault and a clear per page when it is
/// filled or read from disk, and `vmsplice` pins each page again on every hit; perf on disk hits
/// of 1-2 MiB objects put those at a fifth of the edge's CPU (`madvise` 8-11 %, `vmsplice`
/// 10 %). In one huge page each is one operation. Side by side under the same load, the
/// goal-2 benchmark gave 19.06 against 17.44 Gbit/s per edge core (benches/RESULTS.md).
pub fn footprint(len: usize) -> usize {
    if len < MIN_SIZE || !huge_pages() {
        return len;
    }
    let tail = len % HUGE_PAGE;
    if tail >= HUGE_PAGE / 2 {
        len - tail + HUGE_PAGE
    } else {
        len
    }
}

/// Whether the kernel gives advised anonymous memory huge pages
/// (`/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`). A machine setting,
/// read once per process; unreadable (no THP in the kernel, another OS) counts as no.
fn huge_pages() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
    })
}

/// A share of the budgets held by one body (taken by `ZeroCopy::reserve`), given back on drop:
/// when the body's mapping goes, or at once if it could not be made.
struct Slot {
    zc: Arc<ZeroCopy>,
    maps: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.zc.maps.fetch_sub(self.maps, Relaxed);
    }
}

/// A zero-copy body being filled, possibly while it is read: a fill
/// copies each origin chunk in as it arrives and hands readers slices of it, so they are sent
/// without a copy before the fill ends, and the finished body needs no second copy.
///
/// The mapping is registered from the start. That keeps this module's invariant: every byte is
/// written once, before any slice covering it exists; later writes only go past the end of every
/// slice handed out, so the bytes a socket still references never change.
pub struct Growing {
    mem: Bytes,
    ptr: NonNull<u8>,
    /// Bytes written so far; only this value stores it, `Written` handles read it.
    written: Arc<AtomicUsize>,
}

/// A read handle on a `Growing` body that hands out slices of the bytes written so far, however
/// many chunks they arrived in: a reader that is behind takes everything available as one slice
/// (one `vmsplice` instead of one per origin read).
#[derive(Clone)]
pub struct Written {
    mem: Bytes,
    written: Arc<AtomicUsize>,
}

impl Written {
    /// Bytes `[from, to)` of the body, if all of them have been written.
    pub fn slice(&self, from: usize, to: usize) -> Option<Bytes> {
        (from <= to && to <= self.written.load(Acquire)).then(|| self.mem.slice(from..to))
    }
}

// SAFETY: `ptr` points into the mapping `mem` keeps alive; only the owner of the `Growing`
// writes through it, and only past every slice handed out.
unsafe impl Send for Growing {}

impl Growing {
    /// A mapping for a body of exactly `len` bytes, registered in `zc`, if it is eligible and
    /// can be made.
    pub fn new(zc: &Arc<ZeroCopy>, len: usize) -> Option<Growing> {
        let slot = zc.reserve(len)?;
        match Mapping::new(slot, len) {
            Ok(f) => Some(Growing {
                ptr: f.ptr,
                mem: f.into_bytes(),
                written: Arc::default(),
            }),
            Err(e) => {
                tracing::debug!(error = %e, len, "zero-copy body unavailable; using the heap");
                None
            }
        }
    }

    /// Copies `chunk` in after what is already there and returns the slice of the mapping now
    /// holding it, or `None` if it does not fit (nothing is written then).
    pub fn append(&mut self, chunk: &[u8]) -> Option<Bytes> {
        let at = self.written.load(Relaxed);
        let end = at.checked_add(chunk.len())?;
        if end > self.mem.len() {
            return None;
        }
        // SAFETY: `[at, end)` lies inside the mapping, and no slice of it exists yet (slices are
        // only made of bytes already written), so nothing reads it concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(chunk.as_ptr(), self.ptr.as_ptr().add(at), chunk.len());
        }
        self.written.store(end, Release);
        Some(self.mem.slice(at..end))
    }

    /// A handle for slices of what has been written, from any thread.
    pub fn written(&self) -> Written {
        Written {
            mem: self.mem.clone(),
            written: self.written.clone(),
        }
    }

    /// The whole body, once every byte of it has been written.
    pub fn into_body(self) -> Option<Bytes> {
        (self.written.load(Relaxed) == self.mem.len()).then_some(self.mem)
    }
}

/// A registered mapping of exactly `len` bytes that something else fills in one go, e.g. the
/// SSD store's O_DIRECT read of an object: the hit is then sent from the memory the device read
/// into (`vmsplice`), with no copy into a body on the way to the RAM tier. The
/// same invariant as `Growing`: every byte is written (by the read) before any slice exists.
pub struct Blank {
    g: Growing,
}

impl Blank {
    /// A mapping of `len` bytes if it is eligible and the budgets allow; `None` otherwise.
    pub fn new(zc: &Arc<ZeroCopy>, len: usize) -> Option<Blank> {
        Growing::new(zc, len).map(|g| Blank { g })
    }

    /// Where to write (page-aligned, `len` bytes, valid while `self` lives).
    pub fn as_mut_ptr(&self) -> NonNull<u8> {
        self.g.ptr
    }

    /// Its length in bytes (never zero: bodies below `MIN_SIZE` get no mapping).
    pub fn size(&self) -> usize {
        self.g.mem.len()
    }

    /// The whole mapping as one body.
    ///
    /// # Safety
    /// Every byte must have been written through [`Blank::as_mut_ptr`] (a read that failed
    /// short leaves zeros, which is initialised memory but not the object: callers verify).
    pub unsafe fn into_body(self) -> Bytes {
        self.g.mem
    }
}

/// One body's mapping of anonymous memory.
struct Mapping {
    /// The context this body is counted and registered in.
    zc: Arc<ZeroCopy>,
    /// Its share of the budget, given back when the mapping is gone (fields drop after
    /// `Drop::drop` has unmapped it).
    _slot: Slot,
    ptr: NonNull<u8>,
    len: usize,
    /// The mapped length (`len` rounded up to whole pages, or to a whole huge page).
    mapped: usize,
    registered: bool,
}

// SAFETY: the mapping is plain memory owned by this value; it is written only by its one
// `Growing`, and only past every slice of it that other threads can read.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Anonymous memory; from 1 MiB starting on a huge-page boundary and advised `MADV_HUGEPAGE`
    /// over its whole huge pages. A tail of half a huge page or more is rounded up to a whole
    /// one (`footprint`); a shorter tail stays in small pages.
    fn new(slot: Slot, len: usize) -> io::Result<Mapping> {
        let zc = slot.zc.clone();
        let rounded = footprint(len);
        let (mapped, huge) = if rounded > len {
            (rounded, rounded)
        } else {
            (
                len.next_multiple_of(page_size()),
                len / HUGE_PAGE * HUGE_PAGE,
            )
        };
        let span = if huge > 0 { mapped + HUGE_PAGE } else { mapped };
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let raw = raw as usize;
        let start = if huge > 0 {
            raw.next_multiple_of(HUGE_PAGE)
        } else {
            raw
        };
        // SAFETY: both trims lie inside the mapping just made and outside `[start, start+mapped)`.
        unsafe {
            if start > raw {
                libc::munmap(raw as *mut libc::c_void, start - raw);
            }
            let end = start + mapped;
            if raw + span > end {
                libc::munmap(end as *mut libc::c_void, raw + span - end);
            }
        }
        if huge > 0 {
            // SAFETY: advice on whole huge pages of our mapping; failure only loses huge pages.
            unsafe { libc::madvise(start as *mut libc::c_void, huge, libc::MADV_HUGEPAGE) };
        }
        // Every byte of the body is written right after (a disk hit's copy, a fill as it
        // arrives): fault the pages in with one call rather than one trap per 4 KiB page
        // (perf on disk hits of 1-2 MiB objects: the traps were a fifth of the edge's CPU).
        // After the huge-page advice, so advised ranges still get huge pages. Advisory: on a
        // kernel without it (before 5.14) the pages fault in on first write as before.
        // SAFETY: the range is exactly our fresh mapping.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                mapped,
                libc::MADV_POPULATE_WRITE,
            )
        };
        let ptr = NonNull::new(start as *mut u8).ok_or_else(io::Error::last_os_error)?;
        zc.live.fetch_add(1, Relaxed);
        Ok(Mapping {
            zc,
            _slot: slot,
            ptr,
            len,
            mapped,
            registered: false,
        })
    }

    /// Registers the mapping for `ZeroCopy::registered` and hands it out as `Bytes` (written
    /// only through `Growing`, past every slice made of it).
    fn into_bytes(mut self) -> Bytes {
        if let Ok(mut reg) = self.zc.registry.write() {
            let start = self.ptr.as_ptr() as usize;
            reg.insert(start, start + self.len);
            self.registered = true;
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and alive while `self` is. `Bytes::from_owner`
        // reads this once, before anything is written; later readers see only written bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.registered {
            if let Ok(mut reg) = self.zc.registry.write() {
                reg.remove(&(self.ptr.as_ptr() as usize));
            }
        }
        // SAFETY: unmaps exactly the mapping `new` kept; no reference to it outlives `self`.
        // Pages the kernel still holds (a pipe, a socket's retransmit queue) outlive the mapping
        // with their bytes unchanged.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
        self.zc.live.fetch_sub(1, Relaxed);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_live_in_a_registered_mapping_and_smaller_ones_on_the_heap() {
        let zc = ZeroCopy::new(true);
        let a = Bytes::from(vec![7u8; 400 << 10]);
        let b = Bytes::from(vec![9u8; 200 << 10]);
        let body = zc.concat(&[a.clone(), b.clone()], 600 << 10);
        assert_eq!(body.len(), 600 << 10);
        assert_eq!(&body[..a.len()], &a[..]);
        assert_eq!(&body[a.len()..], &b[..]);
        assert!(zc.registered(body.as_ptr(), body.len()));
        let tail = body.slice(1000..);
        assert!(zc.registered(tail.as_ptr(), tail.len()));

        // Heap buffers and bodies under MIN_SIZE are not found (a 256 KiB body is copied).
        assert!(!zc.registered(a.as_ptr(), a.len()));
        let under = zc.concat(
            &[a.clone(), b.slice(..MIN_SIZE - 1 - a.len())],
            MIN_SIZE - 1,
        );
        assert!(!zc.registered(under.as_ptr(), under.len()));
        assert!(Growing::new(&zc, MIN_SIZE - 1).is_none());
        let small = zc.concat(&[Bytes::from_static(b"abc")], 3);
        assert!(!zc.registered(small.as_ptr(), small.len()));

        // Adopting a body already in a mapping keeps it; a heap one moves.
        let same = zc.adopt(body.clone());
        assert_eq!(same.as_ptr(), body.as_ptr());
        let big = Bytes::from(vec![3u8; MIN_SIZE]);
        let moved = zc.adopt(big.clone());
        assert!(zc.registered(moved.as_ptr(), moved.len()));
        assert_eq!(moved, big);
        assert_eq!(
            zc.adopt(a.clone()).as_ptr(),
            a.as_ptr(),
            "under MIN_SIZE: kept"
        );

        let start = body.as_ptr() as usize;
        let live = zc.live();
        drop((body, tail, same));
        assert!(zc.registry.read().unwrap().get(&start).is_none());
        assert_eq!(zc.live(), live - 1, "the body's mapping is gone");
    }

    #[test]
    fn a_disabled_context_keeps_every_body_on_the_heap() {
        let zc = ZeroCopy::new(false);
        let a = Bytes::from(vec![7u8; 1 << 20]);
        let body = zc.concat(&[a.slice(..1000), a.slice(1000..)], a.len());
        assert_eq!(body, a);
        assert!(!zc.registered(body.as_ptr(), body.len()));
        assert!(Growing::new(&zc, 1 << 20).is_none());
        assert_eq!(zc.adopt(a.clone()).as_ptr(), a.as_ptr());
        assert_eq!(zc.live(), 0);
    }

    #[test]
    fn a_growing_body_hands_out_registered_slices_of_what_is_written() {
        let zc = ZeroCopy::new(true);
        let len = 600 << 10;
        let mut g = Growing::new(&zc, len).expect("eligible");
        let first = g.append(&vec![1u8; 400 << 10]).expect("fits");
        assert!(zc.registered(first.as_ptr(), first.len()));
        assert!(first.iter().all(|&b| b == 1));
        // Too much is refused and writes nothing.
        assert!(g.append(&vec![3u8; 300 << 10]).is_none());
        let second = g.append(&vec![2u8; 200 << 10]).expect("fits");
        assert!(zc.registered(second.as_ptr(), second.len()));
        assert_eq!(
            second.as_ptr() as usize - first.as_ptr() as usize,
            400 << 10
        );
        let body = g.into_body().expect("complete");
        assert_eq!(body.len(), len);
        assert_eq!(&body[..first.len()], &first[..]);
        assert_eq!(&body[first.len()..], &second[..]);

        let mut short = Growing::new(&zc, len).expect("eligible");
        short.append(b"partial").expect("fits");
        assert!(short.into_body().is_none());
    }

    #[test]
    fn large_bodies_live_in_anonymous_pages_aligned_from_two_mib() {
        let zc = ZeroCopy::new(true);
        let len = (5 << 20) + 12_345;
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let half = Bytes::copy_from_slice(&src[..len / 2]);
        let rest = Bytes::copy_from_slice(&src[len / 2..]);
        let body = zc.concat(&[half, rest], len);
        assert_eq!(&body[..], &src[..]);
        assert_eq!(
            body.as_ptr() as usize % HUGE_PAGE,
            0,
            "starts on a huge page"
        );
        assert!(zc.registered(body.as_ptr(), body.len()));
        let mid = body.slice(3_000_001..4_000_000);
        assert!(zc.registered(mid.as_ptr(), mid.len()));

        let mut g = Growing::new(&zc, len).expect("eligible");
        let first = g.append(&src[..1 << 20]).expect("fits");
        assert!(zc.registered(first.as_ptr(), first.len()));
        g.append(&src[1 << 20..]).expect("fits");
        assert_eq!(&g.into_body().expect("complete")[..], &src[..]);

        // Between MIN_SIZE and 1 MiB: anonymous, no alignment asked for.
        let mid = zc.concat(
            &[Bytes::copy_from_slice(&src[..MIN_SIZE + 1])],
            MIN_SIZE + 1,
        );
        assert!(zc.registered(mid.as_ptr(), mid.len()));
        assert_eq!(&mid[..], &src[..MIN_SIZE + 1]);

        // From 1 MiB to 2 MiB: one whole huge page where the kernel gives them.
        let seg = (3 << 19) + 777;
        let mut g = Growing::new(&zc, seg).expect("eligible");
        g.append(&src[..seg]).expect("fits");
        let seg_body = g.into_body().expect("complete");
        assert_eq!(&seg_body[..], &src[..seg]);
        assert!(zc.registered(seg_body.as_ptr(), seg));
        if huge_pages() {
            assert_eq!(seg_body.as_ptr() as usize % HUGE_PAGE, 0, "on a huge page");
        }
    }

    #[test]
    fn footprints_round_a_tail_of_half_a_huge_page_or_more() {
        let mib = 1 << 20;
        assert_eq!(footprint(MIN_SIZE), MIN_SIZE, "under 1 MiB: never");
        assert_eq!(footprint(mib - 1), mib - 1);
        assert_eq!(footprint(4 * mib), 4 * mib, "whole huge pages");
        assert_eq!(
            footprint(4 * mib + 4096),
            4 * mib + 4096,
            "a short tail stays small"
        );
        let (seg, big) = (3 * mib / 2, 5 * mib + mib / 2);
        if huge_pages() {
            assert_eq!(footprint(mib), 2 * mib);
            assert_eq!(footprint(seg), 2 * mib);
            assert_eq!(footprint(big), 6 * mib);
            assert_eq!(mapping_cost(seg), 1, "advised whole: one mapping");
        } else {
            assert_eq!((footprint(seg), footprint(big)), (seg, big));
        }
    }

    #[test]
    fn a_body_past_the_mapping_budget_stays_on_the_heap_until_a_mapping_is_given_back() {
        let zc = ZeroCopy::with_budgets(true, 2, 0);
        let src = Bytes::from(vec![5u8; MIN_SIZE + (100 << 10)]);
        let a = zc.concat(std::slice::from_ref(&src), src.len());
        let b = zc.concat(std::slice::from_ref(&src), src.len());
        assert_eq!(zc.mappings(), 2);
        let c = zc.concat(std::slice::from_ref(&src), src.len());
        assert_eq!(c, src, "the same bytes, from the heap");
        assert!(!zc.registered(c.as_ptr(), c.len()));
        assert_eq!((zc.mappings(), zc.fallbacks()), (2, 1));
        // A body over 2 MiB with a tail costs two mappings: it does not fit in one.
        drop(a);
        assert_eq!(mapping_cost((2 << 20) + 1), 2);
        assert_eq!(mapping_cost(4 << 20), 1);
        assert!(Growing::new(&zc, (2 << 20) + 1).is_none());
        assert_eq!(zc.fallbacks(), 2);
        let d = zc.adopt(src.clone());
        assert!(zc.registered(d.as_ptr(), d.len()), "mapping resumes");
        drop((b, d));
        assert_eq!((zc.mappings(), zc.live()), (0, 0));
    }

    #[test]
    fn fills_racing_for_the_last_mappings_never_take_more_than_the_budget() {
        const BUDGET: usize = 3;
        let zc = ZeroCopy::with_budgets(true, BUDGET, 0);
        let most = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (zc, most) = (zc.clone(), most.clone());
                s.spawn(move || {
                    for _ in 0..200 {
                        let g = Growing::new(&zc, MIN_SIZE);
                        most.fetch_max(zc.live(), Relaxed);
                        drop(g);
                    }
                });
            }
        });
        assert!(
            most.load(Relaxed) <= BUDGET,
            "{} > {BUDGET}",
            most.load(Relaxed)
        );
        assert_eq!((zc.live(), zc.mappings()), (0, 0));
    }
}
