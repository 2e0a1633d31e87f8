//! A cleartext HTTP/2 origin (prior knowledge, for `origin_client.http2 = true`) on
//! `127.0.0.1:0`, served by hyper, for what the raw HTTP/1.1 scripted origin cannot do: many
//! requests on one connection, and a connection that stops taking new streams (GOAWAY) while
//! one of its streams still streams a body.
//!
//! `/long` tells the connection to go away (a graceful GOAWAY, sent before its response head)
//! and answers 4000 bytes over two seconds: the connection stays open, holding whatever the
//! client counts per connection, until that body ends, but takes no new request. Every other
//! path answers 200 `h2:<path>` with `max-age=60` at once. Requests are counted per path.
//!
//! ```ignore
//! let origin = H2Origin::start().await;
//! raw.origin_client.http2 = Some(true); // and origin.url() as the route's origin
//! assert_eq!(origin.count("/long"), 1);
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The h2c origin. Dropping it stops it (listener and connections).
pub struct H2Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl H2Origin {
    pub async fn start() -> H2Origin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the h2 origin");
        let addr = listener.local_addr().expect("h2 origin addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (s, c) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = c.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                tokio::spawn(connection(tcp, s.clone(), c.clone()));
            }
        });
        H2Origin { addr, seen, stop }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for `path` since start.
    pub fn count(&self, path: &str) -> usize {
        self.seen.lock().iter().filter(|p| *p == path).count()
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves one h2 connection; `/long` asks it to go away gracefully first.
async fn connection(
    tcp: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    // `/long` -> this task: go away; this task -> `/long`: the GOAWAY is queued, answer now
    // (so the GOAWAY goes out before the response head).
    let go_away = Arc::new((Notify::new(), Notify::new()));
    let g = go_away.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (seen, g) = (seen.clone(), g.clone());
        async move {
            let path = req.uri().path().to_string();
            seen.lock().push(path.clone());
            if path != "/long" {
                let body = Full::new(Bytes::from(format!("h2:{path}")))
                    .map_err(|e| match e {})
                    .boxed();
                return Ok::<_, Infallible>(cached(Response::new(body)));
            }
            g.0.notify_one();
            g.1.notified().await;
            let chunks = futures_util::stream::unfold(0u32, |i| async move {
                if i == 40 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok(Frame::data(Bytes::from(vec![1u8; 100]))), i + 1))
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            resp.headers_mut()
                .insert("content-length", http::HeaderValue::from_static("4000"));
            Ok(cached(resp))
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = conn.as_mut() => return,
        _ = go_away.0.notified() => {
            conn.as_mut().graceful_shutdown();
            go_away.1.notify_one();
        }
    }
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = conn => {}
    }
}

fn cached(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        "cache-control",
        http::HeaderValue::from_static("max-age=60"),
    );
    resp
}
