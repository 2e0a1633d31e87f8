//! The response (and origin request) body type: a whole `Bytes` for hits (zero-copy from the
//! cache to the socket), or a stream for fills, passes and forwarded request bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

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

/// Streams an origin (or viewer) `Incoming` body frame by frame, failing if no frame arrives
/// within `idle` (between-bytes timeout). Trailers are dropped.
pub fn incoming_stream(
    body: hyper::body::Incoming,
    idle: std::time::Duration,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        loop {
            match tokio::time::timeout(idle, http_body_util::BodyExt::frame(&mut body)).await {
                Err(_) => {
                    let e: BoxError = "between-bytes timeout".into();
                    return Some((Err(e), None));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(e.into()), None)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Some((Ok(data), Some(body)));
                        }
                    }
                }
            }
        }
    })
}
