//! `AlignedBuf`: the 4 KiB-aligned heap buffer every device transfer goes through.
//!
//! O_DIRECT needs the memory, the offset and the length aligned to the logical block size. A read
//! lands in an `AlignedBuf` that is then handed to `Bytes::from_owner`, so the payload reaches the
//! caller with no copy after the device read.

use std::alloc::{self, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;

use bytes::Bytes;
use parking_lot::Mutex;

/// Alignment (and granularity) of every device transfer.
pub(crate) const ALIGN: usize = 4096;
/// Buffers of at least this size are aligned to it and advised as huge pages: a multi-MiB
/// object buffer then costs a few page faults instead of one per 4 KiB, which matters when
/// ingest fills one per segment at device speed (see benches/results/ingest.md).
const HUGE: usize = 2 << 20;

/// A heap buffer aligned to [`ALIGN`] (to 2 MiB from 2 MiB on), with a capacity rounded up to a
/// multiple of [`ALIGN`].
///
/// `len` counts the initialised bytes: `zeroed` buffers are initialised in full, `uninit` ones
/// become readable only after an engine has filled them and called [`AlignedBuf::set_filled`].
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    /// Size of the allocation (may exceed `size` when reused from the pool).
    cap: usize,
    /// Requested size rounded up to ALIGN: what reads fill and `capacity` reports.
    size: usize,
    len: usize,
    /// Memory the caller lent for a read ([`ReadTarget`]): not ours to pool or free; dropping
    /// this releases it, calling it hands the filled memory back as `Bytes`.
    lent: Option<Finish>,
}

type Finish = Box<dyn FnOnce() -> Bytes + Send>;

/// Memory a [`ReadMemory`] lends for one device read: the object then reaches the caller in
/// that memory (no copy after the device read), e.g. a mapping the edge can send with
/// `vmsplice`.
pub struct ReadTarget {
    ptr: NonNull<u8>,
    len: usize,
    finish: Finish,
}

impl ReadTarget {
    /// `len` bytes at `ptr` for one read; `finish` returns all `len` of them as `Bytes` once
    /// the read has filled them, and dropping it unused releases the memory.
    ///
    /// # Safety
    /// `ptr` must be 4096-aligned and valid for reads and writes of `len` bytes, initialised
    /// (e.g. fresh anonymous or memfd pages), until `finish` is called or dropped, and nothing
    /// else may access that memory meanwhile. The `Bytes` from `finish` must view exactly it.
    pub unsafe fn new(
        ptr: NonNull<u8>,
        len: usize,
        finish: impl FnOnce() -> Bytes + Send + 'static,
    ) -> Self {
        ReadTarget {
            ptr,
            len,
            finish: Box::new(finish),
        }
    }
}

/// Where device reads of stored objects land, if not in the store's own buffers (see
/// [`crate::StoreConfig::read_memory`]).
pub trait ReadMemory: Send + Sync + std::fmt::Debug {
    /// Memory for a read of `len` bytes (a multiple of 4096), or `None` for the store's own.
    fn target(&self, len: usize) -> Option<ReadTarget>;
}

// SAFETY: the buffer owns its allocation exclusively; moving it between threads is like moving a Vec.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]` of the initialised prefix; `lent` is only
// taken or dropped through ownership or `&mut`, never reached through `&self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(cap: usize) -> Layout {
        // The alignment is a function of `cap` alone, so `Drop` (and the pool, keyed by `cap`)
        // always deallocates with the layout the buffer was allocated with.
        let align = if cap >= HUGE { HUGE } else { ALIGN };
        Layout::from_size_align(cap, align).expect("alignments are powers of two, cap is bounded")
    }

    fn alloc(len: usize, zeroed: bool) -> Self {
        let size = round_up(len.max(1) as u64) as usize;
        let filled = if zeroed { size } else { 0 };
        if let Some((ptr, cap)) = pool_take(size) {
            if zeroed {
                // SAFETY: ptr owns `cap` >= `size` writable bytes.
                unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) };
            }
            return AlignedBuf {
                ptr,
                cap,
                size,
                len: filled,
                lent: None,
            };
        }
        let cap = pool_class(size);
        let layout = Self::layout(cap);
        // SAFETY: layout has non-zero size.
        let raw = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        if cap >= HUGE {
            // Transparent huge pages are often in `madvise` mode. Advisory: failure is harmless.
            // SAFETY: the range is exactly this fresh allocation, HUGE-aligned.
            unsafe { libc::madvise(raw.cast(), cap - cap % HUGE, libc::MADV_HUGEPAGE) };
        }
        AlignedBuf {
            ptr,
            cap,
            size,
            len: filled,
            lent: None,
        }
    }

    /// A read buffer of `len` bytes in `mem`'s memory, or in the store's own if it has none
    /// of the right shape.
    pub(crate) fn for_read(len: usize, mem: Option<&dyn ReadMemory>) -> Self {
        let size = round_up(len.max(1) as u64) as usize;
        match mem.and_then(|m| m.target(size)) {
            Some(t) if t.len == size && t.ptr.as_ptr() as usize % ALIGN == 0 => AlignedBuf {
                ptr: t.ptr,
                cap: size,
                size,
                len: 0,
                lent: Some(t.finish),
            },
            _ => Self::uninit(len),
        }
    }

    /// The initialised bytes as `Bytes`, without a copy: lent memory goes back to its owner's
    /// `Bytes`, the store's own buffer becomes the owner of a `Bytes`.
    pub(crate) fn into_bytes(self) -> Bytes {
        let mut me = std::mem::ManuallyDrop::new(self);
        match me.lent.take() {
            Some(finish) => finish().slice(..me.len),
            None => Bytes::from_owner(std::mem::ManuallyDrop::into_inner(me)),
        }
    }

    /// A zero-filled buffer of at least `len` bytes (rounded up to [`ALIGN`]); all of it readable.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self::alloc(len, true)
    }

    /// A buffer of at least `len` bytes whose contents are not yet initialised (for reads).
    pub(crate) fn uninit(len: usize) -> Self {
        Self::alloc(len, false)
    }

    /// The requested size rounded up to [`ALIGN`]: what a read fills.
    pub(crate) fn capacity(&self) -> usize {
        self.size
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Marks the first `n` bytes as initialised.
    ///
    /// # Safety
    /// The caller must have written (or had the kernel write) all of the first `n` bytes.
    pub(crate) unsafe fn set_filled(&mut self, n: usize) {
        debug_assert!(n <= self.size);
        self.len = n;
    }

    /// Copies `data` to `at` without requiring the buffer to be initialised there.
    pub(crate) fn put(&mut self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.size, "write past the buffer");
        // SAFETY: the range lies within the allocation (checked) and cannot overlap `data`,
        // which is borrowed from elsewhere while we hold &mut self.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(at), data.len())
        }
    }

    /// Zeroes `from..to`.
    pub(crate) fn zero(&mut self, from: usize, to: usize) {
        assert!(from <= to && to <= self.size, "zero past the buffer");
        // SAFETY: the range lies within the allocation (checked).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(from), 0, to - from) }
    }

    /// Initialised bytes (see [`AlignedBuf::set_filled`]).
    pub(crate) fn filled(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (see the type's invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for as_slice, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.lent.take().is_some() {
            // Dropping the finisher released the lent memory.
            return;
        }
        if !pool_give(self.ptr, self.cap) {
            // SAFETY: allocated in `alloc` with this very layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

/// Free large buffers kept for reuse, by capacity.
///
/// Large allocations otherwise go to mmap/munmap in the system allocator, and the page faults
/// and kernel zeroing of every fresh 1-4 MiB read buffer cost about a quarter of read
/// throughput (measured; see benches/results/storage.md). A buffer is reused for a request of
/// up to its own size and at least 4/5 of it; at most `POOL_MAX_BYTES` are kept.
struct Pool {
    free: BTreeMap<usize, Vec<PoolPtr>>,
    bytes: usize,
}

struct PoolPtr(NonNull<u8>);
// SAFETY: a pooled pointer is an unowned-by-anyone allocation; only the pool touches it.
unsafe impl Send for PoolPtr {}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: BTreeMap::new(),
    bytes: 0,
});
const POOL_MIN: usize = 64 << 10;
const POOL_MAX_BYTES: usize = 128 << 20;

/// The capacity a pooled buffer of `size` bytes is allocated with: from `POOL_MIN` on, rounded
/// up to an eighth of the power of two above it (at most 12.5 % more), so buffers of objects
/// of nearby sizes (1-2 MiB segments differ by a few KiB) are interchangeable in the pool
/// instead of each fitting only its own size. The rounding costs little memory: a transfer
/// touches only `size` bytes, and pages past them are faulted in only within a huge page.
fn pool_class(size: usize) -> usize {
    if size < POOL_MIN {
        return size;
    }
    let step = (size.next_power_of_two() / 8).max(ALIGN);
    size.next_multiple_of(step)
}

fn pool_take(cap: usize) -> Option<(NonNull<u8>, usize)> {
    if cap < POOL_MIN {
        return None;
    }
    let mut p = POOL.lock();
    let key = *p.free.range(cap..=cap + cap / 4).next()?.0;
    let list = p.free.get_mut(&key)?;
    let ptr = list.pop()?;
    if list.is_empty() {
        p.free.remove(&key);
    }
    p.bytes -= key;
    Some((ptr.0, key))
}

fn pool_give(ptr: NonNull<u8>, cap: usize) -> bool {
    if cap < POOL_MIN {
        return false;
    }
    let mut p = POOL.lock();
    if p.bytes + cap > POOL_MAX_BYTES {
        return false;
    }
    p.bytes += cap;
    p.free.entry(cap).or_default().push(PoolPtr(ptr));
    true
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub(crate) fn round_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        let b = AlignedBuf::zeroed(5000);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.capacity(), 8192);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        let u = AlignedBuf::uninit(1);
        assert_eq!(u.as_slice().len(), 0);
    }

    #[test]
    fn pooled_buffers_are_reused_and_rezeroed() {
        let mut a = AlignedBuf::zeroed(1 << 20);
        a.as_mut_slice()[5] = 9;
        let p = a.as_slice().as_ptr();
        drop(a);
        let b = AlignedBuf::zeroed((1 << 20) - 4096);
        // Another test may have taken it meanwhile; only check contents when reused.
        if b.as_slice().as_ptr() == p {
            assert_eq!(
                b.capacity(),
                (1 << 20) - 4096,
                "reads fill the requested size only"
            );
        }
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn segment_buffers_of_nearby_sizes_share_a_pool_class() {
        // 1-2 MiB segments a few KiB apart get the same capacity, so one's freed buffer fits
        // the next; the rounding stays within an eighth of the next power of two.
        assert_eq!(pool_class(1_290_000), pool_class(1_310_000));
        for size in [
            64 << 10,
            100_000,
            1 << 20,
            1_300_000,
            (2 << 20) + 4096,
            5_000_000,
        ] {
            let c = pool_class(size);
            assert!(
                c >= size && c - size <= size.next_power_of_two() / 8,
                "{size} -> {c}"
            );
            assert_eq!(c % ALIGN, 0);
        }
        assert_eq!(pool_class(10_000), 10_000, "below the pool: exact");
    }

    #[test]
    fn large_buffers_are_huge_page_aligned() {
        let b = AlignedBuf::uninit(3 << 20);
        assert_eq!(b.ptr.as_ptr() as usize % HUGE, 0);
        assert_eq!(b.capacity(), 3 << 20);
    }

    #[test]
    fn bytes_view_without_copy() {
        let mut b = AlignedBuf::zeroed(4096);
        b.as_mut_slice()[10] = 7;
        let p = b.as_slice().as_ptr();
        let bytes = bytes::Bytes::from_owner(b).slice(10..20);
        assert_eq!(bytes[0], 7);
        assert_eq!(bytes.as_ptr(), p.wrapping_add(10));
    }
}
