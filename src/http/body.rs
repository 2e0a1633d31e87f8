//! The response (and origin request) body type: a whole `Bytes` for hits (zero-copy from the
//! cache to the socket), or a stream for fills, passes and forwarded request bodies.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body::{Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// A body: empty, one buffer, or a stream (with its length when known).
pub enum Body {
    Full(Option<Bytes>),
    Stream { stream: BoxStream, len: Option<u64> },
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(b: Bytes) -> Body {
        if b.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(b))
        }
    }

    pub fn stream<S, E>(s: S, len: Option<u64>) -> Body
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Body::Stream {
            stream: Box::pin(s.map(|r| r.map_err(Into::into))),
            len,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream { stream, .. } => match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Stream { len: Some(n), .. } => SizeHint::with_exact(*n),
            Body::Stream { len: None, .. } => SizeHint::default(),
        }
    }
}

/// How long a body may take to arrive: `idle` without a frame (the between-bytes timeout), and,
/// when `min_rate` is above 0, fewer than `min_rate` bytes/s over each `window` of time spent
/// waiting for it (`origin_client.min_body_rate`, `min_body_rate_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeouts {
    pub idle: Duration,
    pub min_rate: u64,
    pub window: Duration,
}

impl BodyTimeouts {
    /// The between-bytes timeout alone (a viewer's request body: how fast a viewer uploads is
    /// its own business, bounded by the first-byte timeout of its pass).
    pub fn idle_only(idle: Duration) -> BodyTimeouts {
        BodyTimeouts {
            idle,
            min_rate: 0,
            window: Duration::ZERO,
        }
    }

    /// The clock of one body read under these bounds.
    pub fn pace(self) -> Pace {
        Pace {
            t: self,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    fn rated(&self) -> bool {
        self.min_rate > 0 && !self.window.is_zero()
    }
}

/// Why a body read gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Slow {
    #[error("between-bytes timeout")]
    Idle,
    #[error("body below the minimum rate (origin_client.min_body_rate)")]
    BelowRate,
}

/// One body's reads against its `BodyTimeouts`. Windows are tumbling and count only the time
/// spent waiting for the body (`next`), never the time between reads: a pass whose viewer takes
/// its bytes slowly, or a fill holding back behind its viewers (`Fill::wait_for_readers`), is
/// not the sender's fault, and it is judged on how fast it answers when asked.
pub struct Pace {
    t: BodyTimeouts,
    /// Time spent in `next` in the current window.
    waited: Duration,
    /// Bytes counted (`received`) in the current window.
    bytes: u64,
}

impl Pace {
    /// `read` (the next frame), within the idle timeout; fails with `BelowRate` when a window
    /// ends with fewer bytes than the minimum rate asks of it. A window that ends while `read`
    /// waits is judged then, so a sender that trickles is cut at the window's end, not at its
    /// next byte.
    pub async fn next<F: Future>(&mut self, read: F) -> Result<F::Output, Slow> {
        if !self.t.rated() {
            return tokio::time::timeout(self.t.idle, read)
                .await
                .map_err(|_| Slow::Idle);
        }
        let mut read = std::pin::pin!(read);
        let mut idle_left = self.t.idle;
        loop {
            // Judged only here, before waiting: a frame that arrived as its window ended
            // still counts for it (`received` ran in between).
            if self.waited >= self.t.window {
                self.judge()?;
            }
            let bound = idle_left.min(self.t.window.saturating_sub(self.waited));
            let started = tokio::time::Instant::now();
            let out = tokio::time::timeout(bound, read.as_mut()).await;
            let spent = started.elapsed();
            self.waited += spent;
            match out {
                Ok(v) => return Ok(v),
                Err(_) if spent >= idle_left => return Err(Slow::Idle),
                Err(_) => idle_left -= spent,
            }
        }
    }

    /// Counts `n` bytes of the body towards the current window.
    pub fn received(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n as u64);
    }

    /// The window that just ended: at least `min_rate * window` bytes, or `BelowRate`. A new
    /// window starts empty (a timer's late wake-up is not carried over against the sender).
    fn judge(&mut self) -> Result<(), Slow> {
        let window_ms = u64::try_from(self.t.window.as_millis()).unwrap_or(u64::MAX);
        if self.bytes.saturating_mul(1000) < self.t.min_rate.saturating_mul(window_ms) {
            return Err(Slow::BelowRate);
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }
}

/// Streams an origin (or viewer) `Incoming` body frame by frame, failing (with a `Slow`) when
/// it is slower than `timeouts` allow. Trailers are dropped.
pub fn incoming_stream(
    body: hyper::body::Incoming,
    timeouts: BodyTimeouts,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    futures_util::stream::unfold(Some((body, timeouts.pace())), move |state| async move {
        let (mut body, mut pace) = state?;
        loop {
            match pace.next(http_body_util::BodyExt::frame(&mut body)).await {
                Err(slow) => return Some((Err(slow.into()), None)),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(e.into()), None)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            pace.received(data.len());
                            return Some((Ok(data), Some((body, pace))));
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rated(rate: u64, window_ms: u64, idle_ms: u64) -> Pace {
        BodyTimeouts {
            idle: Duration::from_millis(idle_ms),
            min_rate: rate,
            window: Duration::from_millis(window_ms),
        }
        .pace()
    }

    /// A frame of `n` bytes after `after`, read through `pace` (counted as the callers do).
    async fn frame(pace: &mut Pace, after: u64, n: usize) -> Result<(), Slow> {
        pace.next(tokio::time::sleep(Duration::from_millis(after)))
            .await?;
        pace.received(n);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_at_the_end_of_its_first_window() {
        // 1 byte every 2 s, never an idle gap past the 10 s between-bytes timeout; the
        // defaults' shape: 16 B/s over 20 s.
        let mut pace = rated(16, 20_000, 10_000);
        let start = tokio::time::Instant::now();
        let mut got = Ok(());
        for _ in 0..100 {
            got = frame(&mut pace, 2_000, 1).await;
            if got.is_err() {
                break;
            }
        }
        assert_eq!(got, Err(Slow::BelowRate));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(20),
            "cut as its window ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_above_the_rate_and_short_gaps_pass() {
        // 64 kbit/s audio as chunked CMAF in real time: 4 KB every 500 ms, for 2 minutes,
        // with an 8 s gap (under the between-bytes timeout) in the middle.
        let mut pace = rated(16, 20_000, 10_000);
        for i in 0..240 {
            let after = if i == 120 { 8_000 } else { 500 };
            assert_eq!(frame(&mut pace, after, 4_000).await, Ok(()), "frame {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_between_reads_is_not_the_senders() {
        // The reader takes 5 s per frame (its viewer is slow); the sender answers each read
        // at once: never judged slow.
        let mut pace = rated(1_000, 1_000, 10_000);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(frame(&mut pace, 0, 10).await, Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_still_applies_and_zero_rate_is_off() {
        let mut pace = rated(16, 10_000, 3_000);
        assert_eq!(frame(&mut pace, 2_000, 100).await, Ok(()));
        assert_eq!(frame(&mut pace, 5_000, 100).await, Err(Slow::Idle));
        let mut off = rated(0, 1_000, 3_000);
        for _ in 0..10 {
            assert_eq!(frame(&mut off, 2_000, 1).await, Ok(()));
        }
        assert_eq!(frame(&mut off, 3_001, 1).await, Err(Slow::Idle));
    }
}
