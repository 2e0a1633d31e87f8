//! Heads first: the origin's answer wakes every collapsed viewer at once, and a viewer's first
//! body write pushes a socket window of bytes through the kernel (on loopback, ~100 KiB and the
//! receiver's processing of it). Served in wake order, the last of 500 viewers got its head
//! ~30 ms after the first. So the readers of the viewers that were waiting for the head hold
//! their bodies (of `HEADS_FIRST_MIN` or more, or of unknown length) until each of those viewers
//! has polled its reader once (its server has sent the head).
//!
//! On timeout: a reader holds back at most `HEADS_FIRST_MAX`, which bounds the wait when a
//! waiter ends without a reader (a HEAD, a 304, a disconnect). On drop of a request still
//! waiting for the head, it stops being counted (`Waiting`), so it never holds anyone back.

use std::time::Duration;

use super::{Fill, FillHead};

/// Bodies shorter than this are sent with their head at once (`Fill::first_poll`): they go out
/// in the head's own write, or nearly (a loopback socket's first window is about 100 KiB).
pub(super) const HEADS_FIRST_MIN: u64 = 64 << 10;

/// The longest a reader holds its body back so that other viewers' heads go first.
pub(super) const HEADS_FIRST_MAX: Duration = Duration::from_millis(10);

#[derive(Default)]
pub(super) struct Pace {
    /// Requests waiting for the head (`head`), then, from `set_head`, readers whose first poll
    /// is still to come before bodies may go out (`first_poll`).
    pub(super) head_waiters: usize,
    pub(super) heads_pending: usize,
}

impl Pace {
    /// The head is out: every request waiting for it is now a reader whose first poll counts.
    pub(super) fn on_head(&mut self, head: &FillHead) {
        // A small body goes out in the head's own write: nothing to hold back.
        let small = matches!(head, FillHead::Streaming(h)
            if h.content_length.is_some_and(|n| n < HEADS_FIRST_MIN));
        self.heads_pending = if small { 0 } else { self.head_waiters };
    }
}

impl Fill {
    /// Waits for the origin's answer. Callers bound this with their own deadline.
    pub async fn head(&self) -> FillHead {
        /// Counts a request among the head's waiters until it has the head or gives up.
        struct Waiting<'a>(Option<&'a Fill>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(fill) = self.0 {
                    let mut st = fill.state.lock();
                    st.pace.head_waiters = st.pace.head_waiters.saturating_sub(1);
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
                    st.pace.head_waiters += 1;
                    waiting.0 = Some(self);
                }
            }
            notified.await;
        }
    }

    /// Requests waiting for the head now (the leader's included): none once every viewer of
    /// the fill gave up on it, so a driver asking the origin again for them may stop.
    pub fn head_waiters(&self) -> usize {
        self.state.lock().pace.head_waiters
    }

    /// Counts a reader's first poll; `true` when bodies may go out now (see the module doc).
    pub(super) fn first_poll(&self) -> bool {
        let mut st = self.state.lock();
        if st.pace.heads_pending <= 1 {
            if st.pace.heads_pending == 1 {
                st.pace.heads_pending = 0;
                drop(st);
                self.heads.notify_waiters();
            }
            return true;
        }
        st.pace.heads_pending -= 1;
        false
    }

    /// Resolves once every waiter of the head has polled its reader (`first_poll`).
    pub(super) async fn heads_sent(&self) {
        loop {
            let notified = self.heads.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().pace.heads_pending == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fill::{FillReader, StreamHead};
    use crate::cache::vary::VarySpec;
    use bytes::Bytes;
    use futures_util::{Stream, StreamExt};
    use http::{HeaderMap, StatusCode};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::Context;

    /// Yields until `n` requests wait for the fill's head (bounded: a test never hangs).
    async fn waiters_at(fill: &Fill, n: usize) {
        for _ in 0..10_000 {
            if fill.state.lock().pace.head_waiters >= n {
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
            at: std::time::SystemTime::UNIX_EPOCH,
            origin_ms: 0,
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
