//! An in-progress origin fetch that any number of viewers read while it arrives.
//!
//! One task (the fill driver, spawned by the leader and detached from every viewer) pushes the
//! origin's body chunks here; readers stream them as they come, from any offset, so a collapsed
//! waiter gets its first byte as soon as the leader does. The fill does four jobs behind one
//! mutex, one file each:
//!
//! - `buffer`: the chunks readers stream from, and the reader itself;
//! - `place`: the body's final home in zero-copy memory, when its length is announced;
//! - `pace`: heads first, holding bodies back until every woken viewer has had its head sent;
//! - `trim`: for a body too large to keep, dropping what every reader has passed and pacing the
//!   origin to the fastest reader within a window (a reader a window behind is cut).
//!
//! On drop of the driver without `finish` (the `FillGuard` finishes it as abandoned), readers
//! see an error: their response is aborted, never a clean-looking truncated body. The fill
//! itself sets no timers; every wait on it is bounded by its caller (the head by
//! `collapse_timeout`, or by the driver's own deadline once its request is with the origin,
//! `expect_head_by`; the body by the driver's between-bytes timeout).
//!
//! The error types are the cache's own (`OriginFailure`, `FillError`): the driver
//! (`proxy::fill`) maps the origin client's errors to them, so `cache` never imports `origin`.

mod buffer;
mod pace;
mod place;
mod trim;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cache::object::CachedObject;
use crate::cache::vary::VarySpec;
use crate::zerocopy::Growing;

pub use buffer::FillReader;

/// What readers learn once the origin has answered.
#[derive(Clone)]
pub enum FillHead {
    /// A response whose body streams through this fill.
    Streaming(Arc<StreamHead>),
    /// The answer is a complete object (a 304 refreshed the stale copy).
    Complete(Arc<CachedObject>),
    /// Not shareable: only the leader may use the origin response (taken with `take_pass`, or
    /// the failure that took its place: no pass slot for it); everyone else fetches for
    /// themselves.
    Pass(&'static str),
    /// The origin could not be reached or timed out.
    Failed(OriginFailure),
}

/// Why the origin gave no usable answer, in the cache's own words (the driver maps the origin
/// client's error to it; the viewer side maps it back to a status and `Cache-Status` detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginFailure {
    #[error("origin refused or unreachable")]
    Connect,
    #[error("origin did not answer in time")]
    Timeout,
    #[error("origin sent an invalid response")]
    Protocol,
    #[error("TLS handshake with the origin failed")]
    Tls,
    #[error("internal error while fetching")]
    Internal,
    /// No fill slot for the route before the collapse deadline (`origin_client.max_fills`), or
    /// no connection to the origin before the first-byte timeout (`max_connections_per_origin`).
    #[error("origin busy: too many fills or connections in flight")]
    Busy,
    /// A blocking playlist reload whose every answer from the origin, asked again until the
    /// hold's end, lacked what it asks for (`proxy::fill`, `proxy::llhls::unsatisfied`).
    #[error("the origin's playlist did not hold what the blocking reload asks for in time")]
    Unsatisfied,
    /// A blocking playlist reload for more than two segments (or the advance part limit) past
    /// the last the origin's answer lists (RFC 8216bis §6.2.5.2: 400).
    #[error("the blocking reload asks for more than the origin's playlist may add")]
    TooFar,
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
    /// response delay).
    pub age: u64,
    /// When the head arrived, on the edge's clock: a reader that joins later is sent the age
    /// plus the time since (`age_at`).
    pub at: std::time::SystemTime,
    /// Origin request sent to its response head, in ms (the access line's `origin_ms`).
    pub origin_ms: u64,
}

impl StreamHead {
    /// The `Age` a reader is sent at `now` (RFC 9111 §4: the response's current age, also for
    /// a viewer that joins the fill seconds after its head came in).
    pub fn age_at(&self, now: std::time::SystemTime) -> u64 {
        let since = now.duration_since(self.at).unwrap_or_default();
        self.age.saturating_add(since.as_secs())
    }
}

/// Why a fill's body did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error("origin body failed mid-way")]
    Origin,
    #[error("origin stopped sending (between-bytes timeout)")]
    Timeout,
    #[error("origin body below origin_client.min_body_rate")]
    TooSlow,
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
    end: Option<Result<(), FillError>>,
    pass: Option<Result<hyper::Response<Incoming>, OriginFailure>>,
    /// Set once the driver's request is with the origin (`expect_head_by`).
    head_due: Option<tokio::time::Instant>,
    buf: buffer::Buffer,
    placed: place::Placed,
    pace: pace::Pace,
    trim: trim::Trim,
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
    dest: Mutex<Option<Growing>>,
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
            st.pace.on_head(&head);
            st.head = Some(head);
        }
        self.notify.notify_waiters();
    }

    /// The driver's request is with the origin (past its wait for a fill slot), and its head,
    /// or its failure, is published by `due`: the driver's own timeouts end it by then. A
    /// collapsed reader that waited `collapse_timeout` keeps waiting until `due`
    /// (`proxy::request::collapsed_head`) instead of asking the origin for itself. The driver
    /// does not call it for a fill whose answer may turn out to be its leader's alone.
    pub fn expect_head_by(&self, due: tokio::time::Instant) {
        self.state.lock().head_due = Some(due);
    }

    /// Publishes a pass: the leader takes `resp` (or its failure: the answer could not be
    /// relayed, `proxy::fill`), waiters go to the origin themselves.
    pub fn set_pass(
        &self,
        resp: Result<hyper::Response<Incoming>, OriginFailure>,
        reason: &'static str,
    ) {
        {
            let mut st = self.state.lock();
            st.pass = Some(resp);
            st.head = Some(FillHead::Pass(reason));
            st.end = Some(Ok(()));
        }
        self.notify.notify_waiters();
    }

    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let (chunk, placed) = self.place(chunk);
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            st.placed.note(placed, &st.buf, chunk.len());
            st.buf.push(chunk);
            if st.trim.trimming {
                st.trim();
            }
        }
        self.notify.notify_waiters();
    }

    pub fn finish(&self, result: Result<(), FillError>) {
        if result.is_err() {
            // Readers keep the slices they hold; the rest of the mapping is released with them.
            *self.dest.lock() = None;
        }
        {
            let mut st = self.state.lock();
            if st.end.is_none() {
                st.end = Some(result);
            }
            if st.head.is_none() {
                st.head = Some(FillHead::Failed(OriginFailure::Internal));
            }
        }
        self.notify.notify_waiters();
    }

    pub fn is_finished(&self) -> bool {
        self.state.lock().end.is_some()
    }

    pub fn len(&self) -> u64 {
        self.state.lock().buf.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- reader side ----

    /// When the head is due, once the driver's request is with the origin (`expect_head_by`);
    /// `None` while the fill waits for a slot, or for a fill that set none.
    pub fn head_due(&self) -> Option<tokio::time::Instant> {
        self.state.lock().head_due
    }

    /// The leader's origin response (or what failed it) after a `Pass`; `None` for everyone
    /// else.
    pub fn take_pass(&self) -> Option<Result<hyper::Response<Incoming>, OriginFailure>> {
        self.state.lock().pass.take()
    }

    /// Waits until the body holds at least `n` bytes or the fill has ended: the bytes it holds
    /// and, once it ended whole, the body's length; a failed fill's error. Bounded as the fill
    /// is: its driver's between-bytes and body-rate timeouts end it. `Trimmed` once the fill
    /// stops keeping its body: it then paces the origin to its readers, and a caller waiting
    /// here (holding a reader at the start) would hold it back for good.
    pub async fn reached(&self, n: u64) -> Result<(u64, Option<u64>), FillError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock();
                match st.end {
                    Some(Err(e)) => return Err(e),
                    Some(Ok(())) => return Ok((st.buf.len, Some(st.buf.len))),
                    None if st.buf.len >= n => return Ok((st.buf.len, None)),
                    None if st.trim.trimming => return Err(FillError::Trimmed),
                    None => {}
                }
            }
            notified.await;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

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
