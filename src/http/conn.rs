//! Connection timeouts hyper does not enforce: an idle keep-alive connection (no request in
//! flight for `idle_timeout`, h1 or h2) and a slow reader (a write blocked because the peer takes
//! no bytes for `write_timeout`) are closed. `Watched` wraps the socket and notes when writes
//! block; each request holds an `InFlight` token until its response body ends; `guard` runs the
//! connection against a watchdog that sleeps until the next deadline (one timer per connection,
//! woken about once per timeout, not per byte). With `server.min_send_rate`, a viewer that takes
//! a response's bytes slower than that rate, averaged over a `write_timeout` window in which its
//! writes blocked (it, not the origin, held the response back), is closed as a slow reader too.
//! A connection with a request in flight and nothing moving for `idle + write`, or one h2
//! stream whose response waits that long for its viewer to take it, is closed as stalled.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::ConnTimeouts;
use crate::http::limits::{epoch_ms, Stalled, StalledResponse};
use crate::metrics::{LimitMetrics, Metrics};

/// What one connection is doing, shared by its socket wrapper, its requests and its watchdog.
pub struct Activity {
    start: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `start` when the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// Milliseconds since `start` + 1 when a write started blocking; 0 while writes flow.
    blocked_since: AtomicU64,
    /// Bytes written to the socket (`min_send_rate`).
    written: AtomicU64,
    /// Whether a write blocked since the watchdog last looked (`min_send_rate`).
    blocked_in_window: std::sync::atomic::AtomicBool,
    /// What tells the watchdog that something moved (`Activity::moved`): response body bytes
    /// handed to the connection, bytes read from the socket, requests started.
    body_sent: AtomicU64,
    read: AtomicU64,
    requests: AtomicU64,
    /// Each multiplexed (h2) request's wait for its viewer (`InFlight::handed`): one stream
    /// whose flow-control window stays shut beside others that move would hold its response,
    /// and the fill or pass behind it, while the connection as a whole keeps moving. The same
    /// records are in the client's `limits::Stalled` list when it has one.
    streams: Mutex<Vec<Weak<StalledResponse>>>,
    /// `limits::epoch_ms` when the connection opened: turns a response's wait, kept on that
    /// process-wide clock, into this connection's milliseconds.
    epoch_at_start: u64,
    /// Whether `h2_flood::FloodGuard` closed the connection.
    h2_flood: std::sync::atomic::AtomicBool,
    /// An HTTP/1 response body failed part-way (`InFlight::cut_short`): the connection ends
    /// with a reset, not a FIN (`Watched`'s drop).
    cut_short: std::sync::atomic::AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            epoch_at_start: epoch_ms(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            written: AtomicU64::new(0),
            blocked_in_window: std::sync::atomic::AtomicBool::new(false),
            body_sent: AtomicU64::new(0),
            read: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            h2_flood: std::sync::atomic::AtomicBool::new(false),
            cut_short: std::sync::atomic::AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The client flooded frames that carry no request (`http::h2_flood`).
    pub fn note_h2_flood(&self) {
        self.h2_flood.store(true, Relaxed);
    }

    pub fn h2_flooded(&self) -> bool {
        self.h2_flood.load(Relaxed)
    }

    /// Bytes written to the socket so far (`Watched`; below TLS, so ciphertext on a TLS
    /// connection).
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    #[cfg(test)]
    pub fn note_written(&self, n: u64) {
        self.written.fetch_add(n, Relaxed);
    }

    /// A request started; the token ends it when dropped (its response body done or dropped).
    /// A `multiplexed` request (h2) shares the connection with others, so the watchdog also
    /// follows its own wait for the viewer (`InFlight::handed`).
    ///
    /// `stalled`: the client's h2 responses (`limits.per_ip_stalled_bytes`), which a
    /// multiplexed request joins.
    /// A request starts on the connection. `http1`: it came over HTTP/1 (its body's failure
    /// ends the connection, `InFlight::cut_short`); `multiplexed`: its wait for the viewer is
    /// watched stream by stream (h2).
    pub fn request(
        self: &Arc<Self>,
        http1: bool,
        multiplexed: bool,
        stalled: Option<&Arc<Stalled>>,
    ) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        let wait = multiplexed.then(|| {
            let wait = match stalled {
                Some(client) => client.join(),
                None => Arc::new(StalledResponse::default()),
            };
            let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            // Ended streams are dropped when the list is full, before it grows: amortised
            // constant work per request, and never more than twice the live streams.
            if streams.len() == streams.capacity() {
                streams.retain(|w| w.strong_count() > 0);
            }
            streams.push(Arc::downgrade(&wait));
            wait
        });
        InFlight {
            activity: self.clone(),
            http1,
            wait,
        }
    }

    /// Since when (ms since `start`) the longest-waiting multiplexed response has waited for
    /// its viewer to take it, if one waits.
    fn oldest_wait(&self) -> Option<u64> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.retain(|w| w.strong_count() > 0);
        streams
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|w| w.since.load(Relaxed))
            .filter(|&since| since != 0)
            .min()
            .map(|since| (since - 1).saturating_sub(self.epoch_at_start))
    }

    /// Resolves when the connection has broken a timeout, saying which.
    async fn expired(&self, t: &ConnTimeouts) -> Expired {
        // The send-rate window: when it started and the bytes written by then.
        let mut window = (self.now_ms(), self.written.load(Relaxed));
        // What moved last, and when the watchdog saw it move.
        let mut moved = (self.moved(), self.now_ms());
        let stall = ms(t.idle).saturating_add(ms(t.write));
        loop {
            let now = self.now_ms();
            // A request in flight and no response byte taken, nothing read, no new request for
            // `idle + write` (90 s by default; longer than any hold or origin wait): the peer
            // holds the response without taking it and without blocking a write, as an h2
            // client does that never opens its flow-control window. Its streams would keep
            // their fills' and passes' origin connections for as long as it liked.
            let now_moved = self.moved();
            if now_moved != moved.0 {
                moved = (now_moved, now);
            }
            let busy = self.in_flight.load(Relaxed) > 0;
            if busy && now.saturating_sub(moved.1) >= stall {
                return Expired::Stalled;
            }
            // The same for one h2 stream whose response waits for a viewer that takes none of
            // it while its other streams move. hyper gives no handle to reset one stream from
            // here, so the connection goes: a player does not leave a response unread for
            // `idle + write`, and the streams it still wanted are asked for again.
            let stream_deadline = self.oldest_wait().map(|since| since.saturating_add(stall));
            if stream_deadline.is_some_and(|d| d <= now) {
                return Expired::Stalled;
            }
            if t.min_send_rate > 0 && now.saturating_sub(window.0) >= ms(t.write) {
                let sent = self.written.load(Relaxed) - window.1;
                let elapsed = now - window.0;
                // Only a viewer that held the response back (its writes blocked) and has a
                // request in flight is judged: an origin that trickles is not its fault.
                let judged =
                    self.blocked_in_window.swap(false, Relaxed) && self.in_flight.load(Relaxed) > 0;
                if judged && sent.saturating_mul(1000) < t.min_send_rate.saturating_mul(elapsed) {
                    return Expired::SlowReader;
                }
                window = (now, self.written.load(Relaxed));
            }
            let blocked = self.blocked_since.load(Relaxed);
            let write_deadline = (blocked != 0).then(|| blocked - 1 + ms(t.write));
            let idle_deadline = (self.in_flight.load(Relaxed) == 0)
                .then(|| self.idle_since.load(Relaxed) + ms(t.idle));
            if write_deadline.is_some_and(|d| d <= now) {
                return Expired::SlowReader;
            }
            if idle_deadline.is_some_and(|d| d <= now) {
                return Expired::Idle;
            }
            // Nothing due: look again at the earliest deadline, and at least once per write
            // timeout and per idle timeout (a request may start and its writes block while this
            // sleeps, so a write is cut at most twice the timeout after it blocked; a request
            // in flight now may end while this sleeps, so an idle close comes at most twice the
            // idle timeout after it, never a write timeout late).
            let next = [
                write_deadline,
                idle_deadline,
                busy.then(|| moved.1.saturating_add(stall)),
                stream_deadline,
                Some(now + ms(t.write)),
                Some(now + ms(t.idle)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
            let wait = Duration::from_millis(next.saturating_sub(now).max(1));
            tokio::time::sleep(wait).await;
        }
    }
}

impl Activity {
    /// Changes whenever something moves: response body bytes taken, requests started, and
    /// bytes read counted in 256-byte units. Not socket writes, nor a few bytes read: h2
    /// keep-alive PINGs and their ACKs (17 bytes each way every `h2_keepalive_interval`) would
    /// count as progress for a client that answers them and takes no byte of its responses.
    fn moved(&self) -> u64 {
        self.body_sent
            .load(Relaxed)
            .wrapping_add(self.read.load(Relaxed) / 256)
            .wrapping_add(self.requests.load(Relaxed))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// One request in flight on a connection.
pub struct InFlight {
    activity: Arc<Activity>,
    http1: bool,
    /// A multiplexed request's wait for its viewer (`StalledResponse::since`, set when its
    /// response head or a body frame was handed over and the body was not polled since; 0
    /// while the body is being polled: the edge or the origin, not the viewer, is behind) and
    /// its body's length. Followed by the connection's watchdog and, for a client under
    /// `limits.per_ip_stalled_bytes`, by its `limits::Stalled` list.
    wait: Option<Arc<StalledResponse>>,
}

impl InFlight {
    /// The response body failed before its end (the fill or pass behind it broke). Over
    /// HTTP/1 the viewer must not take what it got for the whole answer: a chunked body lacks
    /// its last chunk, but a close-delimited one (an HTTP/1.0 viewer, no `Content-Length`)
    /// ends at the close, so the connection is reset instead of closed (RFC 9112 §6.3, §9.6:
    /// an incomplete message). Over h2 the stream's reset already says it.
    pub fn cut_short(&self) {
        if self.http1 {
            self.activity.cut_short.store(true, Relaxed);
        }
    }

    /// The response body's length (exact, or the least it will be).
    pub fn promise(&self, len: u64) {
        if let Some(w) = &self.wait {
            w.len.store(len, Relaxed);
        }
    }

    /// `n` bytes of this request's response body were handed to the connection.
    pub fn sent(&self, n: u64) {
        self.activity.body_sent.fetch_add(n, Relaxed);
        self.handed();
    }

    /// The response (its head, or a body frame) was handed to the connection, which polls the
    /// body again when its viewer has room for more.
    pub fn handed(&self) {
        if let Some(w) = &self.wait {
            w.since.store(epoch_ms() + 1, Relaxed);
        }
    }

    /// The connection polls the body for more: whatever comes next, the viewer is not the one
    /// holding it back.
    pub fn polled(&self) {
        if let Some(w) = &self.wait {
            w.since.store(0, Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        a.idle_since.store(a.now_ms(), Relaxed);
        a.in_flight.fetch_sub(1, Relaxed);
    }
}

enum Expired {
    Idle,
    SlowReader,
    /// A request in flight and nothing moving on the connection (`Activity::expired`).
    Stalled,
}

/// Runs the connection `conn` until it ends or breaks a timeout of `t` (then it is dropped,
/// which closes the socket), counting the closes in `m`.
pub async fn guard<F: Future>(conn: F, activity: &Activity, t: &ConnTimeouts, m: &LimitMetrics) {
    tokio::select! {
        _ = conn => {}
        why = activity.expired(t) => match why {
            Expired::Idle => Metrics::inc(&m.idle_closed),
            Expired::SlowReader => {
                Metrics::inc(&m.slow_readers_closed);
                tracing::debug!(timeout = ?t.write, "closed a connection whose peer stopped reading");
            }
            Expired::Stalled => {
                Metrics::inc(&m.slow_readers_closed);
                tracing::debug!(after = ?(t.idle + t.write), "closed a connection with a request in flight and nothing moving");
            }
        },
    }
}

/// A socket that tells its `Activity` when writes block and when they flow again.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// The socket `inner` owns (`resetting`).
    socket: Option<RawFd>,
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        let Some(fd) = self.socket else { return };
        if !self.activity.cut_short.load(Relaxed) {
            return;
        }
        // SAFETY: `inner`, which owns `fd`, is dropped after this body: the descriptor is
        // open and is this connection's for the whole borrow.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        // A zero linger makes the close that follows send a reset (and drop what is unsent).
        if let Err(e) = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "could not reset a connection whose body was cut short");
        }
    }
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched {
            inner,
            activity,
            socket: None,
        }
    }

    /// Resets rather than closes the socket `fd`, which `inner` owns, when an HTTP/1 body was
    /// cut short (`InFlight::cut_short`).
    pub fn resetting(mut self, fd: RawFd) -> Watched<S> {
        self.socket = Some(fd);
        self
    }

    fn note<T>(&self, r: Poll<T>) -> Poll<T> {
        let a = &self.activity;
        match r {
            Poll::Pending => {
                a.blocked_in_window.store(true, Relaxed);
                if a.blocked_since.load(Relaxed) == 0 {
                    a.blocked_since.store(a.now_ms() + 1, Relaxed);
                }
            }
            Poll::Ready(_) => {
                if a.blocked_since.load(Relaxed) != 0 {
                    a.blocked_since.store(0, Relaxed);
                }
            }
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.read.fetch_add(n as u64, Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.activity.written.fetch_add(*n as u64, Relaxed);
        }
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.activity.written.fetch_add(*n as u64, Relaxed);
        }
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
