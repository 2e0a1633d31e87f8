//! A pass's request body as its viewer sends it (`proxy::pass` streams it to the origin as it
//! arrives): whether the viewer delivered it, so that a request that failed because of its own
//! body is not held against the origin. Without this a viewer could eject a healthy origin with
//! bodies it never finished (a `Content-Length` it did not send, bare-LF chunk framing, one byte
//! every few seconds): each counted as an origin protocol failure or timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::http::body::BoxError;
use crate::origin::OriginError;

/// Part of the body went out and the client has not asked for more: the origin (or the
/// connection to it) holds the body back, not the viewer.
const SENDING: u8 = 0;
const SENT: u8 = 1;
const BROKEN: u8 = 2;
/// The client asked for more and the viewer has not sent it yet.
const AWAITING_VIEWER: u8 = 3;

/// How far one request body got; shared by the stream that carries it (`watch`) and the
/// request's outcome (`fault`), and the moment it was all sent (`sent`).
#[derive(Debug, Clone, Default)]
pub struct Upload(Arc<Progress>);

#[derive(Debug)]
struct Progress {
    state: AtomicU8,
    /// Set once the whole body went out (`SENT`).
    sent: tokio::sync::watch::Sender<bool>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            state: AtomicU8::new(SENDING),
            sent: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Progress {
    fn store(&self, state: u8) {
        self.state.store(state, Relaxed);
        if state == SENT {
            self.sent.send_replace(true);
        }
    }
}

/// A failed pass that was its viewer's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerFault {
    /// The viewer's body failed: cut short (the viewer closed or reset), malformed framing, a
    /// gap longer than the between-bytes timeout.
    Broken,
    /// The body was still arriving when the first-byte timeout ran out: the origin cannot be
    /// blamed for not answering a request it has not received.
    Slow,
}

impl Upload {
    /// `body` (the viewer's, `declared` its `Content-Length`), noting how it ends. A body that
    /// ends short of `declared` ends with an error, so the origin never takes it as whole.
    pub fn watch<S>(
        &self,
        body: S,
        declared: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    {
        Watched {
            inner: Box::pin(body),
            state: self.0.clone(),
            declared,
            seen: 0,
            done: false,
        }
    }

    /// Whether a request that failed with `error` failed by its viewer's doing: its body broke,
    /// or the time ran out while the client waited for the viewer's next bytes. Any other
    /// failure with the body still arriving (a reset, a closed connection, an origin that
    /// stopped reading it) is the origin's.
    /// Resolves once the whole body went out to the origin.
    pub async fn sent(&self) {
        let mut rx = self.0.sent.subscribe();
        let _ = rx.wait_for(|sent| *sent).await;
    }

    pub fn fault(&self, error: OriginError) -> Option<ViewerFault> {
        match self.0.state.load(Relaxed) {
            BROKEN => Some(ViewerFault::Broken),
            AWAITING_VIEWER if error == OriginError::Timeout => Some(ViewerFault::Slow),
            _ => None,
        }
    }
}

struct Watched<S> {
    inner: Pin<Box<S>>,
    state: Arc<Progress>,
    declared: Option<u64>,
    seen: u64,
    done: bool,
}

impl<S> Stream for Watched<S>
where
    S: Stream<Item = Result<Bytes, BoxError>>,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => {
                self.state.store(AWAITING_VIEWER);
                return Poll::Pending;
            }
            Poll::Ready(item) => item,
        };
        // Noted before the client sees the item: the request's outcome reads it after.
        let out = match item {
            Some(Ok(b)) => {
                self.seen += b.len() as u64;
                // hyper's HTTP/1.1 client stops polling a body once its `Content-Length` is
                // written, so the end may never be asked for: the whole length is the end.
                let whole = self.declared.is_some_and(|n| self.seen >= n);
                self.state.store(if whole { SENT } else { SENDING });
                return Poll::Ready(Some(Ok(b)));
            }
            Some(Err(e)) => {
                self.state.store(BROKEN);
                Some(Err(e))
            }
            None if self.declared.is_some_and(|n| self.seen < n) => {
                self.state.store(BROKEN);
                Some(Err("request body shorter than its Content-Length".into()))
            }
            None => {
                self.state.store(SENT);
                None
            }
        };
        self.done = true;
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn chunks(
        items: Vec<Result<&'static [u8], &'static str>>,
    ) -> impl Stream<Item = Result<Bytes, BoxError>> {
        futures_util::stream::iter(
            items
                .into_iter()
                .map(|r| r.map(Bytes::from_static).map_err(BoxError::from)),
        )
    }

    async fn drain(s: impl Stream<Item = Result<Bytes, BoxError>>) -> (usize, bool) {
        let items: Vec<_> = s.collect().await;
        (items.len(), items.iter().any(Result::is_err))
    }

    #[tokio::test]
    async fn a_whole_body_is_no_fault_and_a_timeout_while_awaiting_the_viewer_is_the_viewers() {
        let u = Upload::default();
        assert_eq!(
            u.fault(OriginError::Timeout),
            None,
            "never asked for: the origin's"
        );
        let mut w = Box::pin(u.watch(
            futures_util::stream::pending::<Result<Bytes, BoxError>>(),
            Some(3),
        ));
        assert!(futures_util::poll!(w.next()).is_pending());
        assert_eq!(u.fault(OriginError::Timeout), Some(ViewerFault::Slow));
        assert_eq!(
            u.fault(OriginError::Protocol),
            None,
            "a reset mid-body: the origin's"
        );
        let (n, failed) = drain(u.watch(chunks(vec![Ok(b"ab"), Ok(b"c")]), Some(3))).await;
        assert_eq!((n, failed), (2, false));
        assert_eq!(
            u.fault(OriginError::Timeout),
            None,
            "sent whole: the origin's"
        );
    }

    /// hyper's HTTP/1.1 client never polls a body past its `Content-Length`: the length sent
    /// is the body sent, and an origin that then does not answer is at fault.
    #[tokio::test]
    async fn a_body_whose_whole_length_went_out_is_sent_without_its_end() {
        let u = Upload::default();
        let mut w = Box::pin(u.watch(chunks(vec![Ok(b"ab"), Ok(b"c")]), Some(3)));
        assert!(w.next().await.is_some());
        assert_eq!(u.fault(OriginError::Timeout), None, "origin holds 2 of 3");
        assert!(w.next().await.is_some());
        assert_eq!(u.fault(OriginError::Timeout), None, "all 3 sent");
    }

    #[tokio::test]
    async fn a_broken_or_short_body_is_the_viewers_fault() {
        let u = Upload::default();
        let (_, failed) = drain(u.watch(chunks(vec![Ok(b"ab"), Err("reset")]), None)).await;
        assert!(failed);
        assert_eq!(u.fault(OriginError::Protocol), Some(ViewerFault::Broken));

        let u = Upload::default();
        let (n, failed) = drain(u.watch(chunks(vec![Ok(b"ab")]), Some(10))).await;
        assert_eq!(
            (n, failed),
            (2, true),
            "ends with an error after the short body"
        );
        assert_eq!(u.fault(OriginError::Protocol), Some(ViewerFault::Broken));
    }
}
