//! An edge under test, in process: `vedge::serve` on `127.0.0.1:0` in front of a given origin
//! (the one launcher every in-process test uses; `support::binary` runs the real binary), with a
//! small HTTP client and raw-socket helpers for what a well-behaved client cannot send or notice
//! (malformed requests, truncated bodies).
//!
//! ```ignore
//! let origin = Origin::start().await;
//! let edge = TestEdge::start(edge_config(&origin)).await;   // or tweak the RawConfig first
//! let r = edge.get("/a.ts").await;
//! assert_eq!(r.x_cache(), "MISS");
//! edge.settle().await;                                      // fills done, objects stored
//! ```
//!
//! `TestEdge::start_config` takes an already validated `Config` (e.g. `Config::for_origin` with a
//! store set); `edge.edge` is the `Arc<Edge>` for tests that drive it directly. Dropping a
//! `TestEdge` shuts the server down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use vedge::config::{RawConfig, RawTtl};

use super::origin::Origin;

/// A `RawConfig` for tests: the given origin, a small RAM tier, short timeouts, so a broken
/// test fails in seconds rather than hanging.
pub fn edge_config(origin: &Origin) -> RawConfig {
    edge_config_for(origin.url())
}

/// [`edge_config`] in front of an origin at `url` (one a test serves itself).
pub fn edge_config_for(url: String) -> RawConfig {
    let mut raw = RawConfig {
        origin: Some(url),
        ram_size: Some("64MiB".into()),
        ..RawConfig::default()
    };
    raw.cache.collapse_timeout = Some("5s".into());
    raw.origin_client.first_byte_timeout = Some("5s".into());
    raw.origin_client.between_bytes_timeout = Some("3s".into());
    raw.origin_client.connect_timeout = Some("1s".into());
    raw.server.shutdown_grace = Some("1s".into());
    raw
}

/// A 64 MiB store in `dir` that admits every object on its first request.
pub fn small_store(dir: &std::path::Path) -> vedge::config::RawStore {
    vedge::config::RawStore {
        path: Some(dir.join("store")),
        size: Some("64MiB".into()),
        region_size: Some("4MiB".into()),
        admit_window: Some("0s".into()),
        ..vedge::config::RawStore::default()
    }
}

/// A TTL rule with only `default` set, for `raw.cache.ttl.<class>`.
pub fn ttl(default: &str) -> Option<RawTtl> {
    Some(RawTtl {
        default: Some(default.into()),
        ..RawTtl::default()
    })
}

/// The admin API of a [`TestEdge`], served until this drops.
pub struct AdminApi {
    pub addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

/// `POST path` with a JSON `body` and the admin token to the admin API on loopback `port`:
/// (status, body as text).
pub async fn admin_post(port: u16, path: &str, body: &str) -> (u16, String) {
    let json = [("Content-Type", "application/json")];
    admin_send(port, "POST", path, &json, body.as_bytes()).await
}

/// `method path` with `headers`, `body` and the admin token to the admin API on loopback
/// `port`: (status, body as text).
pub async fn admin_send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin connects");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        super::binary::ADMIN_TOKEN,
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await.expect("send admin request");
    let r = read_raw(&mut s).await;
    let (_, b) = r.split();
    (r.status(), String::from_utf8_lossy(b).into_owned())
}

impl AdminApi {
    /// A gauge or counter (unlabelled) from this edge's `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let (status, text) = admin_send(self.addr.port(), "GET", "/metrics", &[], b"").await;
        assert_eq!(status, 200, "/metrics: {text}");
        super::binary::metric_in(&text, name)
    }
}

/// `POST /admin/purge` with `body` to the admin API on loopback `port`: (status, the answer as
/// JSON, or as a JSON string when it is not JSON).
pub async fn admin_purge(port: u16, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = admin_post(port, "/admin/purge", body).await;
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// A running edge. Dropping it shuts it down.
pub struct TestEdge {
    pub edge: Arc<vedge::Edge>,
    pub addr: SocketAddr,
    /// The admin listener, for edges started with `start_with_admin`.
    pub admin: Option<SocketAddr>,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestEdge {
    /// Validates `raw`, builds the edge and serves it on `127.0.0.1:0`.
    pub async fn start(raw: RawConfig) -> TestEdge {
        let cfg = vedge::Config::try_from(raw).expect("test config is valid");
        TestEdge::start_config(cfg).await
    }

    /// Like `start`, with freshness read from tokio's clock: the test moves time with
    /// `advance` instead of sleeping past TTLs.
    pub async fn start_with_tokio_clock(raw: RawConfig) -> TestEdge {
        let cfg = vedge::Config::try_from(raw).expect("test config is valid");
        let edge = vedge::Edge::with_clock(cfg, vedge::clock::Clock::tokio())
            .await
            .expect("edge starts");
        TestEdge::serve(edge).await
    }

    /// Builds the edge from a validated config and serves it on `127.0.0.1:0`.
    pub async fn start_config(cfg: vedge::Config) -> TestEdge {
        let edge = vedge::Edge::new(cfg).await.expect("edge starts");
        TestEdge::serve(edge).await
    }

    /// Like `start`, with the admin API on another `127.0.0.1:0` (`raw` needs an admin token),
    /// and the node on its own runtime and threads, like a process of its own: dropping it
    /// kills every task the node runs (connections, fills) at once, as a crash would, where
    /// the shared runtime would keep its connection tasks running past shutdown.
    pub async fn start_with_admin(raw: RawConfig) -> TestEdge {
        let cfg = vedge::Config::try_from(raw).expect("test config is valid");
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("node runtime");
            rt.block_on(async move {
                let edge = vedge::Edge::new(cfg).await.expect("edge starts");
                let viewer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
                let addrs = (
                    viewer.local_addr().expect("addr"),
                    admin.local_addr().expect("admin addr"),
                );
                tokio::spawn(vedge::serve(
                    edge.clone(),
                    vedge::Listeners {
                        viewer,
                        admin: Some(admin),
                    },
                    std::future::pending::<()>(),
                ));
                let _ = ready_tx.send((edge, addrs));
                let _ = rx.await;
            });
            rt.shutdown_timeout(Duration::ZERO);
        });
        let (edge, (addr, admin)) = ready_rx.await.expect("node thread started");
        TestEdge {
            edge,
            addr,
            admin: Some(admin),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(64)
                .build_http(),
            shutdown: Some(tx),
        }
    }

    /// Moves the edge's clock (one made by `start_with_tokio_clock`) forward by `by`. On a
    /// current-thread runtime tokio's time is paused, advanced and resumed, so every timer due
    /// in between fires and the sockets keep working in real time afterwards; a multi-threaded
    /// runtime cannot be paused, so there only the edge's clock skips ahead.
    pub async fn advance(&self, by: std::time::Duration) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            tokio::time::pause();
            tokio::time::advance(by).await;
            tokio::time::resume();
        } else {
            self.edge.clock.skip(by);
        }
    }

    async fn serve(edge: Arc<vedge::Edge>) -> TestEdge {
        let viewer = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the edge on loopback");
        let addr = viewer.local_addr().expect("edge local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        tokio::spawn(vedge::serve(
            edge.clone(),
            vedge::Listeners {
                viewer,
                admin: None,
            },
            shutdown,
        ));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build_http();
        TestEdge {
            edge,
            addr,
            admin: None,
            client,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An HTTP/2 client connection (prior knowledge, cleartext) to this edge, its driver
    /// spawned.
    pub async fn h2<B>(&self) -> hyper::client::conn::http2::SendRequest<B>
    where
        B: http_body::Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        send
    }

    /// A request builder for `path` on this edge.
    pub fn req(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(self.url(path))
    }

    /// `GET path`, body read to the end.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path), Bytes::new()).await
    }

    /// `GET path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = self.req(Method::GET, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b, Bytes::new()).await
    }

    /// Sends a request and reads the whole response (panics if the body fails: use
    /// `send_streaming` or `raw` to observe aborted bodies).
    pub async fn send(&self, b: http::request::Builder, body: Bytes) -> Resp {
        let resp = self.send_streaming(b, body).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("response body within 10 s")
            .expect("response body completes")
            .to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request and returns once the response head arrived.
    pub async fn send_streaming(
        &self,
        b: http::request::Builder,
        body: Bytes,
    ) -> http::Response<hyper::body::Incoming> {
        let req = b.body(Full::new(body)).expect("valid test request");
        tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("response head within 10 s")
            .expect("request to the edge")
    }

    /// Writes `bytes` on a fresh connection and reads until the edge closes it (or 10 s).
    pub async fn raw(&self, bytes: &[u8]) -> RawResp {
        let mut s = TcpStream::connect(self.addr)
            .await
            .expect("connect to edge");
        s.write_all(bytes).await.expect("write raw request");
        read_raw(&mut s).await
    }

    /// Waits (bounded, 5 s) until no origin fetch is in flight: every fill has ended and its
    /// object, if storable, is in the cache. A response can be complete at the viewer before the
    /// fill driver stores it; tests that expect a HIT next call this first.
    /// Starts the admin API of this edge on a listener of its own (`127.0.0.1:0`); it stops
    /// when the returned handle drops.
    pub async fn admin(&self) -> AdminApi {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = l.local_addr().expect("admin addr");
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(vedge::admin::serve(self.edge.clone(), l, stop.clone()));
        AdminApi {
            addr,
            _stop: stop.drop_guard(),
        }
    }

    pub async fn settle(&self) {
        until("every fill ended", || self.edge.fills.is_empty()).await;
    }

    /// Tells the server to shut down (as SIGTERM does) without dropping the handle: it stops
    /// accepting and drains its open connections. Dropping the `TestEdge` does the same.
    pub fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// How many requests joined another request's fill (the `collapsed` counter).
    pub fn collapsed(&self) -> u64 {
        self.edge
            .metrics
            .collapsed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Waits until `cond` holds, checking every 2 ms, failing the test after 10 s. For state the
/// edge exposes no event for (fills in flight, counters); never a fixed sleep.
pub async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// A header's value as text ("" when absent).
    pub fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn x_cache(&self) -> &str {
        self.h("x-cache")
    }
}

/// What a raw connection received before the edge closed it.
#[derive(Debug)]
pub struct RawResp {
    pub bytes: Vec<u8>,
    /// Whether the edge closed the connection (EOF or reset) within the time limit.
    pub closed: bool,
}

impl RawResp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response.
    pub fn status(&self) -> u16 {
        self.text()
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The head (up to the blank line) and the body bytes after it.
    pub fn split(&self) -> (String, &[u8]) {
        match self.bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => (
                String::from_utf8_lossy(&self.bytes[..i]).into_owned(),
                &self.bytes[i + 4..],
            ),
            None => (self.text(), &[]),
        }
    }

    /// A response header's value (first match, case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.split();
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads until EOF/reset or 10 s.
pub async fn read_raw(s: &mut TcpStream) -> RawResp {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return RawResp {
                    bytes,
                    closed: false,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawResp {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}
