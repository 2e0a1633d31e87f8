//! Trimming a body too large to keep: once the driver calls `stop_keeping`, chunks every reader
//! has passed are dropped, and `wait_for_readers` paces the origin to the fastest reader within
//! a window: chunks the fastest reader has passed are dropped once the fill holds more than the
//! window, and a reader that still needed them is cut (`FillError::Trimmed`).
//!
//! Why the fastest: paced to the slowest, one viewer that stopped reading (or took a byte now
//! and then, never idle long enough for its write timeout) held every other viewer of the fill
//! at its pace. Paced to the fastest, memory stays bounded by the window all the same, and
//! only the viewer that fell a window behind loses its response.
//!
//! On drop of a reader, it no longer holds the window back (its position is a `Weak` here); once
//! every reader is gone, `wait_for_readers` returns `false` and the driver stops.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Weak;

use super::{Fill, State};

#[derive(Default)]
pub(super) struct Trim {
    /// Set by `stop_keeping`: chunks every reader has passed are dropped.
    pub(super) trimming: bool,
    /// The next chunk number of each reader.
    pub(super) readers: Vec<Weak<AtomicUsize>>,
}

impl State {
    /// Drops the chunks that every live reader has passed.
    pub(super) fn trim(&mut self) {
        self.trim.readers.retain(|r| r.strong_count() > 0);
        let slowest = self
            .trim
            .readers
            .iter()
            .filter_map(|r| r.upgrade())
            .map(|p| p.load(Relaxed))
            .min()
            .unwrap_or(self.buf.next_chunk());
        self.buf.drop_before(slowest);
    }

    /// Past the window (`limit` bytes retained): drops the oldest chunks the fastest reader has
    /// passed until the window is kept; the readers still behind them are cut.
    fn leave_behind(&mut self, limit: u64) {
        let fastest = self
            .trim
            .readers
            .iter()
            .filter_map(|r| r.upgrade())
            .map(|p| p.load(Relaxed))
            .max()
            .unwrap_or(self.buf.next_chunk());
        let mut upto = self.buf.base;
        let mut retained = self.buf.retained;
        for c in &self.buf.chunks {
            if retained <= limit || upto >= fastest {
                break;
            }
            retained -= c.len() as u64;
            upto += 1;
        }
        self.buf.drop_before(upto);
    }
}

impl Fill {
    /// For a body that will not be stored (it outgrew `max_object_size`): from now on, chunks
    /// that every current reader has passed are dropped, so the fill holds only the span between
    /// its slowest and its fastest reader instead of the whole body. No new reader may join
    /// (the driver releases the key first).
    pub fn stop_keeping(&self) {
        *self.dest.lock() = None;
        let mut st = self.state.lock();
        st.placed.written = None;
        st.trim.trimming = true;
        st.trim();
    }

    /// While trimming: waits until at most `limit` bytes are retained, so a fast origin is read
    /// no faster than the fastest viewer takes the bytes; readers more than `limit` behind are
    /// left behind (`State::leave_behind`). `false` when no reader is left (the body is neither
    /// stored nor wanted: the driver stops).
    pub async fn wait_for_readers(&self, limit: u64) -> bool {
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            {
                let mut st = self.state.lock();
                if !st.trim.trimming {
                    return true;
                }
                st.trim();
                if st.trim.readers.is_empty() {
                    return false;
                }
                st.leave_behind(limit);
                if st.buf.retained <= limit {
                    return true;
                }
            }
            advanced.await;
        }
    }

    /// Bytes the fill holds in memory for its readers.
    pub fn retained(&self) -> u64 {
        self.state.lock().buf.retained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fill::FillError;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn a_fill_that_stops_keeping_is_paced_to_its_fastest_reader_within_the_window() {
        let fill = Fill::new();
        let mut fast = fill.reader(0, None);
        let mut slow = fill.reader(0, None);
        for c in [b"aaaa", b"bbbb", b"cccc"] {
            fill.push(Bytes::from_static(c));
        }
        fill.stop_keeping();
        assert_eq!(fill.retained(), 12, "nobody has read anything yet");
        // Over the limit the driver waits until the fastest reader moves on.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fill.wait_for_readers(8))
                .await
                .is_err(),
            "12 bytes retained, limit 8, no reader has taken any: the driver waits"
        );
        for want in [b"aaaa", b"bbbb", b"cccc"] {
            assert_eq!(fast.next().await, Some(Ok(Bytes::from_static(want))));
        }
        assert_eq!(slow.next().await, Some(Ok(Bytes::from_static(b"aaaa"))));
        fill.push(Bytes::from_static(b"dddd"));
        assert_eq!(
            fill.retained(),
            12,
            "b, c, d: the slow reader still needs b and c"
        );
        // The fast reader has passed b: the window is kept without waiting for the slow one,
        // which is cut rather than handed bytes with a gap.
        assert!(fill.wait_for_readers(8).await, "c and d: within the limit");
        assert_eq!(fill.retained(), 8);
        assert_eq!(slow.next().await, Some(Err(FillError::Trimmed)));
        // A reader that would start in the dropped part fails rather than skip bytes.
        let mut late = fill.reader(0, None);
        assert_eq!(late.next().await, Some(Err(FillError::Trimmed)));
        drop((fast, slow, late));
        assert!(!fill.wait_for_readers(8).await, "no reader left");
    }
}
