//! Reads into memory the caller lends (`StoreConfig::read_memory`): a hit's body is a view of
//! the lent memory (no copy after the device read), every check still applies, and lent memory
//! that no hit keeps is given back.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use vedge_storage::{ReadMemory, ReadTarget};

use crate::support::*;

/// Lends zeroed, 4096-aligned heap blocks and counts them out and back.
#[derive(Debug, Default)]
struct Lender {
    lent: AtomicUsize,
    live: Arc<AtomicIsize>,
    /// Address ranges handed out, to check where bodies live.
    ranges: std::sync::Mutex<Vec<(usize, usize)>>,
}

struct Block {
    ptr: NonNull<u8>,
    len: usize,
    live: Arc<AtomicIsize>,
}

// SAFETY: the block is plain heap memory owned by this value.
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` zeroed (so initialised) bytes owned by this block.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
        // SAFETY: allocated in `target` with this layout.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align(self.len, 4096).unwrap(),
            )
        }
    }
}

impl ReadMemory for Lender {
    fn target(&self, len: usize) -> Option<ReadTarget> {
        let layout = Layout::from_size_align(len, 4096).ok()?;
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.lent.fetch_add(1, SeqCst);
        self.live.fetch_add(1, SeqCst);
        self.ranges
            .lock()
            .unwrap()
            .push((ptr.as_ptr() as usize, len));
        let block = Block {
            ptr,
            len,
            live: self.live.clone(),
        };
        // SAFETY: aligned, zeroed, `len` bytes owned by `block`, which the finisher turns into
        // the `Bytes` over exactly that memory.
        Some(unsafe { ReadTarget::new(ptr, len, move || Bytes::from_owner(block)) })
    }
}

impl Lender {
    fn holds(&self, b: &Bytes) -> bool {
        let p = b.as_ptr() as usize;
        self.ranges
            .lock()
            .unwrap()
            .iter()
            .any(|&(s, l)| p >= s && p + b.len() <= s + l)
    }
}

#[tokio::test]
async fn hits_are_read_into_lent_memory_and_verified_there() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let lender = Arc::new(Lender::default());
        let mut c = cfg(&path, engine);
        c.read_memory = Some(lender.clone());
        let s = open(&c).await;
        for i in 0..20 {
            put(&s, &format!("o{i}"), 30_000).await;
        }
        s.flush().await;
        for i in 0..20 {
            let k = format!("o{i}");
            let hit = s.lookup(k.as_bytes()).await.expect("stored");
            assert!(hit.body == body_for(&k, 30_000), "{k} body differs");
            assert!(
                lender.holds(&hit.body),
                "{k} was copied out of the lent memory"
            );
        }
        assert!(lender.lent.load(SeqCst) >= 20);
        // Every hit above is dropped: all lent memory is back.
        assert_eq!(lender.live.load(SeqCst), 0);
        s.close().await.unwrap();

        // A damaged payload fails verification in lent memory too, and the memory comes back.
        let data = std::fs::read(&path).unwrap();
        let h = header_of(&data, b"o7").expect("o7 on disk");
        let head_len = meta("o7", &[], false).head.len();
        let hlen = 76 + 2 + head_len + 2 + 4 + 4;
        flip(&path, (h + hlen + 777) as u64);
        let s = open(&c).await;
        let before = s.stats().corrupt_reads;
        assert!(
            s.lookup(b"o7").await.is_none(),
            "a corrupt object was served"
        );
        assert_eq!(s.stats().corrupt_reads, before + 1);
        assert_eq!(
            lender.live.load(SeqCst),
            0,
            "lent memory of a failed read kept"
        );
        assert_served(&s, "o8", 30_000).await;
        s.close().await.unwrap();
    }
}
