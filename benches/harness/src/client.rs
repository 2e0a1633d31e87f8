//! The harness's HTTP/1.1 client: a bounded pool of keep-alive connections per host. By default
//! every viewer has its own small pool (one connection, two for a low-latency viewer), so the
//! edge sees one connection per player as it would in the field; `--shared-pool N` makes all
//! viewers share one pool of N (20,000 viewers on a few thousand sockets). Every pool of a run
//! counts the connections it opened in one shared counter, and new connections to a loopback
//! target take their source address in turn from `127.0.0.1..=127.0.0.N` (`Sources`), so
//! 20,000+ connections do not run out of ephemeral ports of one source address.
//!
//! A request first checks out a connection slot (a semaphore permit, FIFO), then reuses an idle
//! connection or opens one. The wait for a slot is the harness's own queueing and is reported
//! apart from TTFB; the edge's clock (TTFB, full download, the request deadline) starts when
//! the slot is granted, and includes the TCP connect when a new connection is opened.
//!
//! Drop and timeout: a connection goes back to the idle list only after its response body was
//! read to the end; one whose response was cut short or timed out is dropped (hyper closes it).
//! The slot (permit) is released when the [`Checkout`] is dropped, whatever happened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{body::Incoming, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

type Sender = SendRequest<Empty<Bytes>>;

/// Why a pooled request failed; `as_str()` is the error kind in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// No connection slot within the timeout: the harness, not the target, was the bottleneck.
    PoolTimeout,
    /// TCP connect or HTTP handshake failed.
    Connect,
    /// No response head before the deadline.
    TimeoutHead,
    /// The request failed on an open connection.
    Request,
}

impl ClientError {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::PoolTimeout => "pool_timeout",
            ClientError::Connect => "connect",
            ClientError::TimeoutHead => "timeout_head",
            ClientError::Request => "request",
        }
    }
}

/// One host's slots and idle connections.
pub struct Host {
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Sender>>,
}

/// A bounded keep-alive pool: at most `max_per_host` connections to each `host:port`.
pub struct Pool {
    max_per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// Shared by every pool of a run (per-viewer mode has one pool per viewer).
    opened: Arc<std::sync::atomic::AtomicU64>,
    sources: Arc<Sources>,
}

/// Loopback source addresses new connections to a loopback target take in turn. Each source
/// address has its own ephemeral port range towards one target port.
#[derive(Debug, Default)]
pub struct Sources {
    addrs: Vec<std::net::Ipv4Addr>,
    next: std::sync::atomic::AtomicUsize,
}

impl Sources {
    /// `127.0.0.1` to `127.0.0.n` (at most 254); `n <= 1` binds nothing (the kernel picks).
    pub fn loopback(n: usize) -> Sources {
        let addrs = if n <= 1 {
            Vec::new()
        } else {
            (1..=n.min(254) as u8)
                .map(|i| std::net::Ipv4Addr::new(127, 0, 0, i))
                .collect()
        };
        Sources {
            addrs,
            next: Default::default(),
        }
    }

    fn pick(&self, target: &str) -> Option<(std::net::SocketAddr, std::net::Ipv4Addr)> {
        if self.addrs.is_empty() {
            return None;
        }
        let to: std::net::SocketAddr = target.parse().ok()?;
        if !to.ip().is_loopback() || !to.is_ipv4() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((to, self.addrs[i % self.addrs.len()]))
    }
}

/// TCP connect to `authority`, from the next source address when `sources` has one for it.
async fn tcp_connect(authority: &str, sources: &Sources) -> std::io::Result<TcpStream> {
    match sources.pick(authority) {
        Some((to, from)) => {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(std::net::SocketAddr::from((from, 0)))?;
            sock.connect(to).await
        }
        None => TcpStream::connect(authority).await,
    }
}

/// A granted slot on a connection: send through it, then [`Checkout::release`] it to keep the
/// connection, or drop it to close.
pub struct Checkout {
    host: Arc<Host>,
    sender: Sender,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
    /// Returns the connection to the idle list (call only after the body was read to the end).
    pub fn release(self) {
        if !self.sender.is_closed() {
            self.host.idle.lock().push(self.sender);
        }
    }
}

/// A response head and the slot its connection holds.
pub struct Sent {
    pub response: Response<Incoming>,
    pub checkout: Checkout,
}

impl Pool {
    pub fn new(max_per_host: usize) -> Self {
        Pool::sharing(max_per_host, Default::default(), Default::default())
    }

    /// A pool that counts its connections in `opened` and picks source addresses from
    /// `sources`, both shared with the run's other pools.
    pub fn sharing(
        max_per_host: usize,
        opened: Arc<std::sync::atomic::AtomicU64>,
        sources: Arc<Sources>,
    ) -> Self {
        Pool {
            max_per_host: max_per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
            opened,
            sources,
        }
    }

    /// Connections opened so far (a keep-alive pool opens about `max_per_host` per host).
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn host(&self, authority: &str) -> Arc<Host> {
        self.hosts
            .lock()
            .entry(authority.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    slots: Arc::new(Semaphore::new(self.max_per_host)),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Waits for a slot to `authority` until `by`. Returns the permit and the host.
    pub async fn slot(
        &self,
        authority: &str,
        by: Instant,
    ) -> Result<(OwnedSemaphorePermit, Arc<Host>), ClientError> {
        let host = self.host(authority);
        match tokio::time::timeout_at(by, host.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok((p, host)),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(ClientError::PoolTimeout),
        }
    }

    async fn connect(&self, authority: &str, by: Instant) -> Result<Sender, ClientError> {
        let tcp = match tokio::time::timeout_at(by, tcp_connect(authority, &self.sources)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(ClientError::Connect),
            Err(_) => return Err(ClientError::TimeoutHead),
        };
        let _ = tcp.set_nodelay(true);
        let hs = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp));
        let (sender, conn) = match tokio::time::timeout_at(by, hs).await {
            Ok(Ok(x)) => x,
            Ok(Err(_)) => return Err(ClientError::Connect),
            Err(_) => return Err(ClientError::TimeoutHead),
        };
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Ends when the server closes or every handle (sender, body) is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI plus Host) on a pooled connection of the granted slot and
    /// waits for the response head until `by`. A reused connection that the server had already
    /// closed is replaced by a new one, once (GETs are safe to resend).
    pub async fn send(
        &self,
        permit: OwnedSemaphorePermit,
        host: Arc<Host>,
        authority: &str,
        req: Request<Empty<Bytes>>,
        by: Instant,
    ) -> Result<Sent, ClientError> {
        let reused = loop {
            let s = host.idle.lock().pop();
            match s {
                Some(s) if s.is_closed() => continue,
                other => break other,
            }
        };
        let mut fresh = reused.is_none();
        let mut sender = match reused {
            Some(s) => s,
            None => self.connect(authority, by).await?,
        };
        loop {
            let ready = tokio::time::timeout_at(by, sender.ready()).await;
            let result = match ready {
                Err(_) => return Err(ClientError::TimeoutHead),
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => {
                    match tokio::time::timeout_at(by, sender.send_request(req.clone())).await {
                        Err(_) => return Err(ClientError::TimeoutHead),
                        Ok(r) => r,
                    }
                }
            };
            match result {
                Ok(response) => {
                    return Ok(Sent {
                        response,
                        checkout: Checkout {
                            host,
                            sender,
                            _permit: permit,
                        },
                    })
                }
                // A kept-alive connection can be closed by the server just as we reuse it.
                Err(_) if !fresh => {
                    fresh = true;
                    sender = self.connect(authority, by).await?;
                }
                Err(_) => return Err(ClientError::Request),
            }
        }
    }
}

/// How late a timer fires: sleeps `period` in a loop until `stop`, recording the lateness of each
/// wake-up in microseconds. A harness whose tasks are polled late shows it here first.
pub async fn timer_lag_probe(
    period: Duration,
    stop: Instant,
    mut record: impl FnMut(Duration) + Send,
) {
    let mut at = Instant::now() + period;
    while at < stop {
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        record(now.saturating_duration_since(at));
        at = now + period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timer_probe_reports_no_lag_on_an_idle_runtime() {
        let lags = Arc::new(Mutex::new(Vec::new()));
        let l = lags.clone();
        let stop = Instant::now() + Duration::from_millis(105);
        timer_lag_probe(Duration::from_millis(10), stop, move |d| l.lock().push(d)).await;
        let lags = lags.lock();
        assert_eq!(lags.len(), 10);
        assert!(lags.iter().all(|d| d.is_zero()), "{lags:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_runtime_shows_up_as_timer_lag() {
        let lags = Arc::new(Mutex::new(Vec::new()));
        let l = lags.clone();
        let stop = Instant::now() + Duration::from_millis(100);
        let probe = tokio::spawn(timer_lag_probe(Duration::from_millis(10), stop, move |d| {
            l.lock().push(d)
        }));
        // Let the probe arm its first timer, then jump the clock past it without yielding: to
        // the probe, its wake-up came 40 ms late.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(50)).await;
        probe.await.expect("probe");
        let max = lags.lock().iter().copied().max().unwrap_or_default();
        assert!(max >= Duration::from_millis(40), "{:?}", lags.lock());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_cannot_get_a_connection_in_time_is_a_pool_timeout() {
        let pool = Pool::new(1);
        let by = Instant::now() + Duration::from_secs(1);
        let held = pool.slot("127.0.0.1:9", by).await.expect("the only slot");
        let waited = pool.slot("127.0.0.1:9", by).await;
        assert_eq!(waited.err(), Some(ClientError::PoolTimeout));
        assert_eq!(ClientError::PoolTimeout.as_str(), "pool_timeout");
        // Freed: the next request gets it.
        drop(held);
        let by = Instant::now() + Duration::from_secs(1);
        assert!(pool.slot("127.0.0.1:9", by).await.is_ok());
    }

    #[tokio::test]
    async fn pool_reuses_connections_and_bounds_them() {
        use http_body_util::BodyExt as _;
        // A keep-alive server that answers "ok" (hyper on 127.0.0.1:0).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acc = accepted.clone();
        let server = tokio::spawn(async move {
            for _ in 0..64 {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                acc.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let pool = Arc::new(Pool::new(2));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let pool = pool.clone();
            let addr = addr.clone();
            tasks.spawn(async move {
                let by = Instant::now() + Duration::from_secs(10);
                let (permit, host) = pool.slot(&addr, by).await.expect("slot");
                let req = Request::get("/x")
                    .header(http::header::HOST, addr.as_str())
                    .body(Empty::new())
                    .expect("request");
                let sent = pool.send(permit, host, &addr, req, by).await.expect("send");
                let body = sent
                    .response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                sent.checkout.release();
                body
            });
        }
        while let Some(b) = tasks.join_next().await {
            assert_eq!(&b.expect("task")[..], b"ok");
        }
        // 20 requests, at most 2 at a time, on at most 2 kept-alive connections.
        assert!(pool.opened() <= 2, "opened {}", pool.opened());
        assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) <= 2);
        server.abort();
    }
}
