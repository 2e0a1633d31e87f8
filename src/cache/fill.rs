//! An in-progress origin fetch that any number of viewers read while it arrives.
//!
//! One task (the fill driver, spawned by the leader and detached from every viewer) pushes the
//! origin's body chunks here; readers stream them as they come, from any offset, so a collapsed
//! waiter gets its first byte as soon as the leader does. The chunks are `Bytes` slices, of the
//! body's reserved zero-copy mapping when its length was announced (`reserve`), else of the
//! origin's buffers: readers share them, nothing is copied per reader.
//!
//! On drop of the driver without `finish`, readers see an error (their response is aborted, never
//! a clean-looking truncated body).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cache::memfile;
use crate::cache::object::CachedObject;
use crate::cache::vary::VarySpec;
use crate::origin::OriginError;

/// What readers learn once the origin has answered.
#[derive(Clone)]
pub enum FillHead {
    /// A response whose body streams through this fill.
    Streaming(Arc<StreamHead>),
    /// The answer is a complete object (a 304 refreshed the stale copy).
    Complete(Arc<CachedObject>),
    /// Not shareable: only the leader may use the origin response (taken with `take_pass`);
    /// everyone else fetches for themselves.
    Pass(&'static str),
    /// The origin could not be reached or timed out.
    Failed(OriginError),
}

/// The response head of a streaming fill.
#[derive(Debug)]
pub struct StreamHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub content_length: Option<u64>,
    /// Whether the completed body will be stored.
    pub stored: bool,
    /// The response's Vary and the leader's variant, so a reader with other header values can
    /// tell this body is not for it.
    pub vary: VarySpec,
    pub leader_variant: String,
    /// Whether this fill was a revalidation/refetch of an expired object.
    pub refetch: bool,
    /// The age the response already had on arrival, in seconds (the origin's `Age` plus the
    /// response delay): the `Age` its readers are sent (RFC 9111 §5.1).
    pub age: u64,
}

/// Why a fill's body did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error("origin body failed mid-way")]
    Origin,
    #[error("origin stopped sending (between-bytes timeout)")]
    Timeout,
    #[error("origin body shorter than its Content-Length")]
    Truncated,
    #[error("fill abandoned")]
    Abandoned,
    #[error("this reader fell behind a fill that no longer keeps its start")]
    Trimmed,
}

#[derive(Default)]
struct State {
    head: Option<FillHead>,
    /// The retained chunks; `chunks[0]` is chunk number `base` of the body.
    chunks: Vec<Bytes>,
    base: usize,
    /// Bytes in `chunks`.
    retained: u64,
    len: u64,
    end: Option<Result<(), FillError>>,
    pass: Option<hyper::Response<Incoming>>,
    /// Set by `stop_keeping`: chunks every reader has passed are dropped.
    trimming: bool,
    /// The next chunk number of each reader (for trimming).
    readers: Vec<std::sync::Weak<AtomicUsize>>,
}

impl State {
    /// Drops the chunks that every live reader has passed.
    fn trim(&mut self) {
        self.readers.retain(|r| r.strong_count() > 0);
        let slowest = self
            .readers
            .iter()
            .filter_map(|r| r.upgrade())
            .map(|p| p.load(Relaxed))
            .min()
            .unwrap_or(self.base + self.chunks.len());
        let drop_n = slowest.saturating_sub(self.base).min(self.chunks.len());
        for c in self.chunks.drain(..drop_n) {
            self.retained -= c.len() as u64;
        }
        self.base += drop_n;
    }
}

/// A fill shared by its driver and its readers.
pub struct Fill {
    state: Mutex<State>,
    notify: Notify,
    /// Readers signal here when they move on while the fill is trimming (`wait_for_readers`).
    advanced: Notify,
    /// The body's final home when its length was known up front (`reserve`); only the driver
    /// touches it, so copying a chunk in never holds up readers.
    dest: Mutex<Option<memfile::Growing>>,
}

impl Default for Fill {
    fn default() -> Self {
        Fill {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            advanced: Notify::new(),
            dest: Mutex::new(None),
        }
    }
}

impl Fill {
    pub fn new() -> Arc<Fill> {
        Arc::new(Fill::default())
    }

    // ---- driver side ----

    pub fn set_head(&self, head: FillHead) {
        self.state.lock().head = Some(head);
        self.notify.notify_waiters();
    }

    /// Publishes a pass: the leader takes `resp`, waiters go to the origin themselves.
    pub fn set_pass(&self, resp: hyper::Response<Incoming>, reason: &'static str) {
        {
            let mut st = self.state.lock();
            st.pass = Some(resp);
            st.head = Some(FillHead::Pass(reason));
            st.end = Some(Ok(()));
        }
        self.notify.notify_waiters();
    }

    /// Gives a body of `len` bytes its final place before it arrives (a zero-copy mapping when it
    /// is large enough): each pushed chunk is copied there once and readers get slices of it,
    /// which the viewer socket sends without a copy, and `body` then needs no second copy.
    pub fn reserve(&self, len: u64) {
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        *self.dest.lock() = memfile::Growing::new(len);
    }

    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let chunk = {
            let mut dest = self.dest.lock();
            match dest.as_mut().map(|d| d.append(&chunk)) {
                Some(Some(placed)) => placed,
                Some(None) => {
                    // More than announced: the rest stays in the origin's buffers.
                    *dest = None;
                    chunk
                }
                None => chunk,
            }
        };
        {
            let mut st = self.state.lock();
            st.len += chunk.len() as u64;
            st.retained += chunk.len() as u64;
            st.chunks.push(chunk);
            if st.trimming {
                st.trim();
            }
        }
        self.notify.notify_waiters();
    }

    /// For a body that will not be stored (it outgrew `max_object_size`): from now on, chunks
    /// that every current reader has passed are dropped, so the fill holds only the span between
    /// its slowest and its fastest reader instead of the whole body. No new reader may join
    /// (the driver releases the key first).
    pub fn stop_keeping(&self) {
        *self.dest.lock() = None;
        let mut st = self.state.lock();
        st.trimming = true;
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
                if !st.trimming {
                    return true;
                }
                st.trim();
                if st.readers.is_empty() {
                    return false;
                }
                if st.retained <= limit {
                    return true;
                }
            }
            advanced.await;
        }
    }

    /// Bytes the fill holds in memory for its readers.
    pub fn retained(&self) -> u64 {
        self.state.lock().retained
    }

    pub fn finish(&self, result: Result<(), FillError>) {
        if result.is_err() {
            // Readers keep the slices they hold; the rest of the file is released with them.
            *self.dest.lock() = None;
        }
        {
            let mut st = self.state.lock();
            if st.end.is_none() {
                st.end = Some(result);
            }
            if st.head.is_none() {
                st.head = Some(FillHead::Failed(OriginError::Internal));
            }
        }
        self.notify.notify_waiters();
    }

    pub fn is_finished(&self) -> bool {
        self.state.lock().end.is_some()
    }

    pub fn len(&self) -> u64 {
        self.state.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body as one `Bytes`: the reserved mapping when every byte went there, else
    /// copied once, into a zero-copy mapping when large enough (`memfile::concat`); a small body
    /// that arrived as a single chunk is shared.
    pub fn body(&self) -> Bytes {
        if let Some(whole) = self
            .dest
            .lock()
            .take()
            .and_then(memfile::Growing::into_body)
        {
            return whole;
        }
        let st = self.state.lock();
        memfile::concat(&st.chunks, st.len as usize)
    }

    // ---- reader side ----

    /// Waits for the origin's answer. Callers bound this with their own deadline.
    pub async fn head(&self) -> FillHead {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(h) = self.state.lock().head.clone() {
                return h;
            }
            notified.await;
        }
    }

    /// The leader's origin response after a `Pass`; `None` for everyone else.
    pub fn take_pass(&self) -> Option<hyper::Response<Incoming>> {
        self.state.lock().pass.take()
    }

    /// Waits until the fill has ended, returning how.
    pub async fn ended(&self) -> Result<(), FillError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(end) = self.state.lock().end {
                return end;
            }
            notified.await;
        }
    }

    /// A stream of the body bytes in `[start, end)` (`end = None`: to the end of the body), as
    /// they arrive. Yields an error if the fill fails.
    pub fn reader(self: &Arc<Self>, start: u64, end: Option<u64>) -> FillReader {
        let pos = Arc::new(AtomicUsize::new(0));
        self.state.lock().readers.push(Arc::downgrade(&pos));
        FillReader {
            fill: self.clone(),
            chunk: 0,
            chunk_start: 0,
            start,
            end,
            waiting: None,
            pos,
        }
    }
}

type Wait = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Streams a fill's bytes to one viewer. Holding it keeps the fill's chunks alive, nothing more:
/// dropping it (viewer gone) never cancels the fill.
pub struct FillReader {
    fill: Arc<Fill>,
    /// Index of the next chunk and the body offset where it starts.
    chunk: usize,
    chunk_start: u64,
    start: u64,
    end: Option<u64>,
    waiting: Option<Wait>,
    /// `chunk`, shared with the fill so it can trim behind its slowest reader.
    pos: Arc<AtomicUsize>,
}

impl Stream for FillReader {
    type Item = Result<Bytes, FillError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
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
            if this.chunk < st.base {
                return Poll::Ready(Some(Err(FillError::Trimmed)));
            }
            if let Some(chunk) = st.chunks.get(this.chunk - st.base) {
                let chunk = chunk.clone();
                let trimming = st.trimming;
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
    use futures_util::StreamExt;
    use std::time::Duration;

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
        assert_eq!(fill.body(), Bytes::from_static(b"0123456789"));
    }

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

    #[tokio::test]
    async fn a_failed_fill_errors_every_reader() {
        let fill = Fill::new();
        let mut r = fill.reader(0, None);
        fill.push(Bytes::from_static(b"abc"));
        let waiter = tokio::spawn(async move {
            let first = r.next().await;
            let second = r.next().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        fill.finish(Err(FillError::Truncated));
        let (first, second) = waiter.await.expect("reader task");
        assert_eq!(first, Some(Ok(Bytes::from_static(b"abc"))));
        assert_eq!(second, Some(Err(FillError::Truncated)));
    }
}
