//! The chunk buffer readers stream from, and the reader (`FillReader`) that streams a byte range
//! of it to one viewer as chunks arrive.
//!
//! On drop of a reader (viewer gone), only its hold on the chunks goes: the fill goes on for
//! everyone else, and a trimming fill stops counting it as a reader. A reader waits for the next
//! chunk without a timeout of its own: the driver's between-bytes timeout ends the fill, and the
//! reader then yields that error.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::{pace, Fill, FillError};

/// The body's chunks, as far as the fill still keeps them.
#[derive(Default)]
pub(super) struct Buffer {
    /// The retained chunks; `chunks[0]` is chunk number `base` of the body.
    pub(super) chunks: Vec<Bytes>,
    pub(super) base: usize,
    /// Bytes in `chunks`.
    pub(super) retained: u64,
    /// Bytes pushed in all.
    pub(super) len: u64,
}

impl Buffer {
    /// The number the next chunk pushed will have.
    pub(super) fn next_chunk(&self) -> usize {
        self.base + self.chunks.len()
    }

    pub(super) fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.retained += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    /// Drops the chunks numbered below `upto` (every reader has passed them).
    pub(super) fn drop_before(&mut self, upto: usize) {
        let drop_n = upto.saturating_sub(self.base).min(self.chunks.len());
        for c in self.chunks.drain(..drop_n) {
            self.retained -= c.len() as u64;
        }
        self.base += drop_n;
    }
}

impl Fill {
    /// A stream of the body bytes in `[start, end)` (`end = None`: to the end of the body), as
    /// they arrive. Yields an error if the fill fails.
    pub fn reader(self: &Arc<Self>, start: u64, end: Option<u64>) -> FillReader {
        let pos = Arc::new(AtomicUsize::new(0));
        self.state.lock().trim.readers.push(Arc::downgrade(&pos));
        FillReader {
            fill: self.clone(),
            chunk: 0,
            chunk_start: 0,
            start,
            end,
            waiting: None,
            pos,
            first_polled: false,
        }
    }
}

type Wait = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Streams a fill's bytes to one viewer. Holding it keeps the fill's chunks alive, nothing more:
/// dropping it (viewer gone) never cancels the fill.
pub struct FillReader {
    pub(super) fill: Arc<Fill>,
    /// Index of the next chunk and the body offset where it starts.
    chunk: usize,
    chunk_start: u64,
    start: u64,
    end: Option<u64>,
    waiting: Option<Wait>,
    /// `chunk`, shared with the fill so it can trim behind its readers.
    pos: Arc<AtomicUsize>,
    /// Whether the first poll has been counted (`Fill::first_poll`).
    first_polled: bool,
}

impl Stream for FillReader {
    type Item = Result<Bytes, FillError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.first_polled {
            this.first_polled = true;
            if !this.fill.first_poll() {
                // Heads first (see `Fill::first_poll`): this viewer's head goes out now, its
                // body once every viewer woken with it has had its turn.
                let fill = this.fill.clone();
                this.waiting = Some(Box::pin(async move {
                    let _ = tokio::time::timeout(pace::HEADS_FIRST_MAX, fill.heads_sent()).await;
                }));
            }
        }
        loop {
            if let Some(w) = this.waiting.as_mut() {
                match w.as_mut().poll(cx) {
                    Poll::Ready(()) => this.waiting = None,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if this.end.is_some_and(|e| this.chunk_start >= e) {
                return Poll::Ready(None);
            }
            // Register interest before looking, so a push between the look and the wait is seen.
            let fill = this.fill.clone();
            let mut wait: Wait = Box::pin(async move {
                fill.notify.notified().await;
            });
            if wait.as_mut().poll(cx).is_ready() {
                // A notification raced in between creating and polling the wait: look again
                // with a fresh registration rather than park without a waker.
                continue;
            }
            let st = this.fill.state.lock();
            if this.chunk < st.buf.base {
                return Poll::Ready(Some(Err(FillError::Trimmed)));
            }
            if this.chunk < st.placed.chunks {
                // Everything placed from here on, as one slice of the mapping.
                let placed = &st.placed;
                let from = this.start.max(this.chunk_start);
                let to = this.end.map_or(placed.bytes, |e| e.min(placed.bytes));
                let slice = match &placed.written {
                    Some(w) if from < to => w.slice(from as usize, to as usize),
                    _ => None,
                };
                if slice.is_some() || from >= to {
                    this.chunk = placed.chunks;
                    this.chunk_start = placed.bytes;
                    drop(st);
                    this.pos.store(this.chunk, Relaxed);
                    match slice {
                        Some(s) => return Poll::Ready(Some(Ok(s))),
                        None => continue,
                    }
                }
            }
            if let Some(chunk) = st.buf.chunks.get(this.chunk - st.buf.base) {
                let chunk = chunk.clone();
                let trimming = st.trim.trimming;
                drop(st);
                let c_start = this.chunk_start;
                let c_end = c_start + chunk.len() as u64;
                this.chunk += 1;
                this.chunk_start = c_end;
                this.pos.store(this.chunk, Relaxed);
                if trimming {
                    this.fill.advanced.notify_one();
                }
                let from = this.start.max(c_start);
                let to = this.end.map_or(c_end, |e| e.min(c_end));
                if from < to {
                    let slice = chunk.slice((from - c_start) as usize..(to - c_start) as usize);
                    return Poll::Ready(Some(Ok(slice)));
                }
                continue;
            }
            match st.end {
                Some(Ok(())) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    drop(st);
                    // The wait registered above (before looking) wakes us on the next push.
                    this.waiting = Some(wait);
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zerocopy::ZeroCopy;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn readers_get_bytes_as_they_arrive_from_any_offset() {
        let fill = Fill::new();
        let mut whole = fill.reader(0, None);
        let mut range = fill.reader(3, Some(7));
        fill.push(Bytes::from_static(b"01234"));
        assert_eq!(whole.next().await, Some(Ok(Bytes::from_static(b"01234"))));
        assert_eq!(range.next().await, Some(Ok(Bytes::from_static(b"34"))));
        fill.push(Bytes::from_static(b"56789"));
        fill.finish(Ok(()));
        assert_eq!(whole.next().await, Some(Ok(Bytes::from_static(b"56789"))));
        assert_eq!(whole.next().await, None);
        assert_eq!(range.next().await, Some(Ok(Bytes::from_static(b"56"))));
        assert_eq!(range.next().await, None);
        assert_eq!(
            fill.body(&ZeroCopy::new(true)),
            Bytes::from_static(b"0123456789")
        );
    }
}
