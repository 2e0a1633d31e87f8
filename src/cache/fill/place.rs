//! Placing a fill's body in zero-copy memory (`zerocopy::body`): when a storable body announces
//! its length, `reserve` gives it its final home before it arrives, each pushed chunk is copied
//! there once, and readers are handed slices of that mapping (sent without a copy on plain TCP),
//! so the finished body needs no second copy.
//!
//! The fill takes the edge's `ZeroCopy` context as an argument (`reserve`, `body`) rather than
//! holding it: it only places bytes in memory, and never sends them (the socket half of
//! `zerocopy` is not used here). On drop of the fill (or `finish` with an error, or
//! `stop_keeping`), the reserved mapping is released once the last slice a reader holds goes.
//! Nothing here waits, so there is no timeout.

use bytes::Bytes;
use std::sync::Arc;

use super::buffer::Buffer;
use super::Fill;
use crate::zerocopy::{Growing, Written, ZeroCopy};

/// What of the body is in the reserved mapping: chunks `[0, chunks)` are its bytes
/// `[0, bytes)`, so a reader can take all of them as one slice.
#[derive(Default)]
pub(super) struct Placed {
    pub(super) written: Option<Written>,
    pub(super) bytes: u64,
    pub(super) chunks: usize,
}

impl Placed {
    /// Counts a chunk of `len` bytes about to be pushed into `buf`, if it went to the mapping
    /// (`placed`) right after everything placed before it.
    pub(super) fn note(&mut self, placed: bool, buf: &Buffer, len: usize) {
        if placed && self.chunks == buf.next_chunk() {
            self.bytes += len as u64;
            self.chunks += 1;
        }
    }
}

impl Fill {
    /// Gives a body of `len` bytes its final place before it arrives (a zero-copy mapping of
    /// `zc` when it is large enough and `zc` is enabled): each pushed chunk is copied there once
    /// and readers get slices of it, which the viewer socket sends without a copy, and `body`
    /// then needs no second copy.
    pub fn reserve(&self, zc: &Arc<ZeroCopy>, len: u64) {
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        let dest = Growing::new(zc, len);
        let mut st = self.state.lock();
        if st.buf.chunks.is_empty() && st.buf.base == 0 {
            st.placed.written = dest.as_ref().map(Growing::written);
        }
        *self.dest.lock() = dest;
    }

    /// Copies `chunk` into the reserved mapping if there is one and it fits; returns the chunk
    /// readers get (the mapping's slice, or `chunk` itself) and whether it was placed.
    pub(super) fn place(&self, chunk: Bytes) -> (Bytes, bool) {
        let mut dest = self.dest.lock();
        match dest.as_mut().map(|d| d.append(&chunk)) {
            Some(Some(placed)) => (placed, true),
            Some(None) => {
                // More than announced: the rest stays in the origin's buffers.
                *dest = None;
                (chunk, false)
            }
            None => (chunk, false),
        }
    }

    /// The whole body as one `Bytes`: the reserved mapping when every byte went there, else
    /// copied once, into a zero-copy mapping of `zc` when large enough (`ZeroCopy::concat`), a
    /// body that arrived as a single chunk too (never a slice of the origin's read buffer).
    pub fn body(&self, zc: &Arc<ZeroCopy>) -> Bytes {
        if let Some(whole) = self.dest.lock().take().and_then(Growing::into_body) {
            return whole;
        }
        let st = self.state.lock();
        zc.concat(&st.buf.chunks, st.buf.len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_reader_behind_a_reserved_fill_takes_everything_written_as_one_slice() {
        let zc = ZeroCopy::new(true);
        let fill = Fill::new();
        let len = 3 * 200_000;
        fill.reserve(&zc, len as u64);
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut early = fill.reader(0, None);
        fill.push(Bytes::copy_from_slice(&src[..200_000]));
        assert_eq!(
            early.next().await,
            Some(Ok(Bytes::copy_from_slice(&src[..200_000])))
        );
        fill.push(Bytes::copy_from_slice(&src[200_000..400_000]));
        fill.push(Bytes::copy_from_slice(&src[400_000..]));
        let got = early.next().await.expect("more").expect("bytes");
        assert!(got[..] == src[200_000..], "two origin chunks, one slice");
        // A ranged reader joining now gets its whole range at once, from the mapping.
        let mut range = fill.reader(100_000, Some(500_000));
        let got = range.next().await.expect("range").expect("bytes");
        assert!(got[..] == src[100_000..500_000]);
        let body = fill.body(&zc);
        assert!(
            zc.registered(body.as_ptr(), len),
            "a 600 kB body lives in zero-copy memory"
        );
        assert!(zc.registered(got.as_ptr(), got.len()));
        assert_eq!(
            got.as_ptr() as usize - body.as_ptr() as usize,
            100_000,
            "a slice of the body's own mapping"
        );
        fill.finish(Ok(()));
        assert_eq!(early.next().await, None);
        assert_eq!(range.next().await, None);
    }

    #[tokio::test]
    async fn a_disabled_context_leaves_a_reserved_fill_in_the_origins_buffers() {
        let zc = ZeroCopy::new(false);
        let fill = Fill::new();
        let len = 3 * 100_000;
        fill.reserve(&zc, len as u64);
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut reader = fill.reader(0, None);
        for part in src.chunks(100_000) {
            fill.push(Bytes::copy_from_slice(part));
        }
        fill.finish(Ok(()));
        let mut got = Vec::new();
        while let Some(chunk) = reader.next().await {
            got.extend_from_slice(&chunk.expect("bytes"));
        }
        assert!(got == src);
        let body = fill.body(&zc);
        assert!(body[..] == src[..]);
        assert!(!zc.registered(body.as_ptr(), body.len()));
        assert_eq!(zc.live(), 0);
    }
}
