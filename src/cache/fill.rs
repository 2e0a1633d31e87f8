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
    /// Slices of the reserved mapping: chunks `[0, placed_chunks)` are its bytes
    /// `[0, placed)`, so a reader can take all of them as one slice.
    written: Option<memfile::Written>,
    placed: u64,
    placed_chunks: usize,
    /// Requests waiting for the head (`head`), then, from `set_head`, readers whose first poll
    /// is still to come before bodies may go out (`first_poll`).
    head_waiters: usize,
    heads_pending: usize,
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
    /// Signalled when the last waiter of the head has polled its reader (`first_poll`).
    heads: Notify,
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
            heads: Notify::new(),
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
        {
            let mut st = self.state.lock();
            // A small body goes out in the head's own write: nothing to hold back.
            let small = matches!(&head, FillHead::Streaming(h)
                if h.content_length.is_some_and(|n| n < HEADS_FIRST_MIN));
            st.heads_pending = if small { 0 } else { st.head_waiters };
            st.head = Some(head);
        }
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
        let dest = memfile::Growing::new(len);
        let mut st = self.state.lock();
        if st.chunks.is_empty() && st.base == 0 {
            st.written = dest.as_ref().map(memfile::Growing::written);
        }
        *self.dest.lock() = dest;
    }

    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let (chunk, placed) = {
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
        };
        {
            let mut st = self.state.lock();
            if placed && st.placed_chunks == st.base + st.chunks.len() {
                st.placed += chunk.len() as u64;
                st.placed_chunks += 1;
            }
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
        st.written = None;
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
        /// Counts a request among the head's waiters until it has the head or gives up.
        struct Waiting<'a>(Option<&'a Fill>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(fill) = self.0 {
                    let mut st = fill.state.lock();
                    st.head_waiters = st.head_waiters.saturating_sub(1);
                }
            }
        }
        let mut waiting = Waiting(None);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if let Some(h) = st.head.clone() {
                    // `set_head` has taken the count (`heads_pending`); nothing reads it after.
                    waiting.0 = None;
                    return h;
                }
                if waiting.0.is_none() {
                    st.head_waiters += 1;
                    waiting.0 = Some(self);
                }
            }
            notified.await;
        }
    }

    /// Counts a reader's first poll; `true` when bodies may go out now.
    ///
    /// Heads first: the origin's answer wakes every collapsed viewer at once, and a viewer's
    /// first body write pushes a socket window of bytes through the kernel (on loopback, ~100 KiB
    /// and the receiver's processing of it). Served in wake order, the last of 500 viewers got
    /// its head ~30 ms after the first. So the readers of the viewers that were waiting for the
    /// head hold their bodies (of `HEADS_FIRST_MIN` or more, or of unknown length) until each of
    /// those viewers has polled its reader once (its server has sent the head) or
    /// `HEADS_FIRST_MAX` passes, which bounds the wait when a waiter ends
    /// without a reader (a HEAD, a 304, a disconnect).
    fn first_poll(&self) -> bool {
        let mut st = self.state.lock();
        if st.heads_pending <= 1 {
            if st.heads_pending == 1 {
                st.heads_pending = 0;
                drop(st);
                self.heads.notify_waiters();
            }
            return true;
        }
        st.heads_pending -= 1;
        false
    }

    /// Resolves once every waiter of the head has polled its reader (`first_poll`).
    async fn heads_sent(&self) {
        loop {
            let notified = self.heads.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().heads_pending == 0 {
                return;
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
            first_polled: false,
        }
    }
}

type Wait = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Bodies shorter than this are sent with their head at once (`Fill::first_poll`).
const HEADS_FIRST_MIN: u64 = memfile::MIN_SIZE as u64;

/// The longest a reader holds its body back so that other viewers' heads go first.
const HEADS_FIRST_MAX: std::time::Duration = std::time::Duration::from_millis(10);

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
                    let _ = tokio::time::timeout(HEADS_FIRST_MAX, fill.heads_sent()).await;
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
            if this.chunk < st.base {
                return Poll::Ready(Some(Err(FillError::Trimmed)));
            }
            if this.chunk < st.placed_chunks {
                // Everything placed from here on, as one slice of the mapping.
                let from = this.start.max(this.chunk_start);
                let to = this.end.map_or(st.placed, |e| e.min(st.placed));
                let slice = match &st.written {
                    Some(w) if from < to => w.slice(from as usize, to as usize),
                    _ => None,
                };
                if slice.is_some() || from >= to {
                    this.chunk = st.placed_chunks;
                    this.chunk_start = st.placed;
                    drop(st);
                    this.pos.store(this.chunk, Relaxed);
                    match slice {
                        Some(s) => return Poll::Ready(Some(Ok(s))),
                        None => continue,
                    }
                }
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
    #[tokio::test]
    async fn a_reader_behind_a_reserved_fill_takes_everything_written_as_one_slice() {
        memfile::configure(true);
        let fill = Fill::new();
        let len = 3 * 100_000;
        fill.reserve(len as u64);
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut early = fill.reader(0, None);
        fill.push(Bytes::copy_from_slice(&src[..100_000]));
        assert_eq!(
            early.next().await,
            Some(Ok(Bytes::copy_from_slice(&src[..100_000])))
        );
        fill.push(Bytes::copy_from_slice(&src[100_000..200_000]));
        fill.push(Bytes::copy_from_slice(&src[200_000..]));
        let got = early.next().await.expect("more").expect("bytes");
        assert!(got[..] == src[100_000..], "two origin chunks, one slice");
        // A ranged reader joining now gets its whole range at once, from the mapping.
        let mut range = fill.reader(50_000, Some(250_000));
        let got = range.next().await.expect("range").expect("bytes");
        assert!(got[..] == src[50_000..250_000]);
        let Some(memfile::Source::File(fd, 0)) = memfile::lookup(fill.body().as_ptr(), len) else {
            panic!("a 300 kB body lives in a memfd");
        };
        assert_eq!(
            memfile::lookup(got.as_ptr(), got.len()),
            Some(memfile::Source::File(fd, 50_000)),
            "a slice of the body's own mapping"
        );
        fill.finish(Ok(()));
        assert_eq!(early.next().await, None);
        assert_eq!(range.next().await, None);
    }

    /// Yields until `n` requests wait for the fill's head (bounded: a test never hangs).
    async fn waiters_at(fill: &Fill, n: usize) {
        for _ in 0..10_000 {
            if fill.state.lock().head_waiters >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{n} waiters never registered");
    }

    #[tokio::test]
    async fn bodies_wait_until_every_viewer_that_waited_for_the_head_has_polled_its_reader() {
        let fill = Fill::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let f = fill.clone();
                tokio::spawn(async move { f.head().await })
            })
            .collect();
        waiters_at(&fill, 3).await;
        fill.push(Bytes::from_static(b"body"));
        fill.set_head(FillHead::Pass("test"));
        for w in waiters {
            w.await.expect("waiter");
        }
        let (mut a, mut b, mut c) = (
            fill.reader(0, None),
            fill.reader(0, None),
            fill.reader(0, None),
        );
        let poll = |r: &mut FillReader| {
            let waker = futures_util::task::noop_waker();
            Pin::new(r).poll_next(&mut Context::from_waker(&waker))
        };
        assert!(poll(&mut a).is_pending(), "two heads still to go");
        assert!(poll(&mut b).is_pending(), "one head still to go");
        assert!(poll(&mut c).is_ready(), "the last one sends at once");
        assert_eq!(a.next().await, Some(Ok(Bytes::from_static(b"body"))));
        assert_eq!(b.next().await, Some(Ok(Bytes::from_static(b"body"))));

        // A small body goes out with its head: nothing is held back.
        let fill = Fill::new();
        let f = fill.clone();
        let w = tokio::spawn(async move { f.head().await });
        waiters_at(&fill, 1).await;
        fill.push(Bytes::from_static(b"#EXTM3U"));
        fill.set_head(FillHead::Streaming(Arc::new(StreamHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            content_length: Some(7),
            stored: true,
            vary: VarySpec::default(),
            leader_variant: String::new(),
            refetch: false,
            age: 0,
        })));
        w.await.expect("waiter");
        let (mut a, mut b) = (fill.reader(0, None), fill.reader(0, None));
        assert!(poll(&mut a).is_ready() && poll(&mut b).is_ready());

        // A waiter that never reads (a HEAD, a disconnect) holds the others back only briefly.
        let fill = Fill::new();
        let f = fill.clone();
        let w = tokio::spawn(async move { f.head().await });
        let f = fill.clone();
        let gone = tokio::spawn(async move { f.head().await });
        waiters_at(&fill, 2).await;
        fill.push(Bytes::from_static(b"x"));
        fill.set_head(FillHead::Pass("test"));
        drop((w.await, gone.await));
        let mut only = fill.reader(0, None);
        let got = tokio::time::timeout(Duration::from_secs(5), only.next()).await;
        assert_eq!(got, Ok(Some(Ok(Bytes::from_static(b"x")))));
    }
}
