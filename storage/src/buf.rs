//! `AlignedBuf`: the 4 KiB-aligned heap buffer every device transfer goes through.
//!
//! O_DIRECT needs the memory, the offset and the length aligned to the logical block size. A read
//! lands in an `AlignedBuf` that is then handed to `Bytes::from_owner`, so the payload reaches the
//! caller with no copy after the device read.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment (and granularity) of every device transfer.
pub(crate) const ALIGN: usize = 4096;

/// A heap buffer aligned to [`ALIGN`], with a capacity rounded up to a multiple of it.
///
/// `len` counts the initialised bytes: `zeroed` buffers are initialised in full, `uninit` ones
/// become readable only after an engine has filled them and called [`AlignedBuf::set_filled`].
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively; moving it between threads is like moving a Vec.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]` of the initialised prefix.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, ALIGN).expect("ALIGN is a power of two and cap is bounded")
    }

    fn alloc(len: usize, zeroed: bool) -> Self {
        let cap = round_up(len.max(1) as u64) as usize;
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
        AlignedBuf {
            ptr,
            cap,
            len: if zeroed { cap } else { 0 },
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

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Marks the first `n` bytes as initialised.
    ///
    /// # Safety
    /// The caller must have written (or had the kernel write) all of the first `n` bytes.
    pub(crate) unsafe fn set_filled(&mut self, n: usize) {
        debug_assert!(n <= self.cap);
        self.len = n;
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
        // SAFETY: allocated in `alloc` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
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
    fn bytes_view_without_copy() {
        let mut b = AlignedBuf::zeroed(4096);
        b.as_mut_slice()[10] = 7;
        let p = b.as_slice().as_ptr();
        let bytes = bytes::Bytes::from_owner(b).slice(10..20);
        assert_eq!(bytes[0], 7);
        assert_eq!(bytes.as_ptr(), p.wrapping_add(10));
    }
}
