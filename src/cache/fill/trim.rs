//! Trimming a body too large to keep: once the driver calls `stop_keeping`, chunks every reader
//! has passed are dropped, and `wait_for_readers` paces the origin to the slowest reader, so
//! the fill holds only the window between its slowest and its fastest reader.
//!
//! On drop of a reader, it no longer holds the window back (its position is a `Weak` here); once
//! every reader is gone, `wait_for_readers` returns `false` and the driver stops. There is no
//! timeout here: a reader that stalls holds the origin back until the viewer's own connection
//! times out and drops it.

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
    /// no faster than the slowest viewer takes the bytes. `false` when no reader is left (the
    /// body is neither stored nor wanted: the driver stops).
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
    async fn a_fill_that_stops_keeping_holds_only_what_its_slowest_reader_still_needs() {
        let fill = Fill::new();
        let mut fast = fill.reader(0, None);
        let mut slow = fill.reader(0, None);
        for c in [b"aaaa", b"bbbb", b"cccc"] {
            fill.push(Bytes::from_static(c));
        }
        fill.stop_keeping();
        assert_eq!(fill.retained(), 12, "nobody has read anything yet");
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
        // Over the limit the driver waits until the slow reader moves on.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fill.wait_for_readers(8))
                .await
                .is_err(),
            "12 bytes retained, limit 8: the driver waits"
        );
        assert_eq!(slow.next().await, Some(Ok(Bytes::from_static(b"bbbb"))));
        assert!(fill.wait_for_readers(8).await, "c and d: within the limit");
        assert_eq!(fill.retained(), 8);
        // A reader that would start in the dropped part fails rather than skip bytes.
        let mut late = fill.reader(0, None);
        assert_eq!(late.next().await, Some(Err(FillError::Trimmed)));
        drop((fast, slow, late));
        assert!(!fill.wait_for_readers(8).await, "no reader left");
    }
}
