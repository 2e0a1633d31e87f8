//! The viewer listener: accept loop, HTTP/1.1 + h2c (auto-detected) or TLS with ALPN (`tls`),
//! connection and rate limits (`limits`), hyper limits (header size and read timeout, h2 streams
//! and resets), idle and slow-reader timeouts (`conn`), graceful drain on shutdown. Each response goes out
//! through `access` (the access log).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConnTimeouts, H2Limits, ServerConfig};
use crate::http::access::{Logged, Pending};
use crate::http::body::Body;
use crate::http::conn::{self, Activity, Watched};
use crate::http::h2_flood::FloodGuard;
use crate::http::limits::{Admitted, Limits};
use crate::http::tls::Tls;
use crate::metrics::{LimitMetrics, Metrics};
use crate::zerocopy::{ZeroCopy, ZeroCopyStream};

/// What the viewer listener serves: the request path (`proxy`), with the settings and counters
/// the listener itself needs. The server knows nothing of caching; `lib.rs` hands it the edge.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    /// Answers one request. Never fails: errors are responses.
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Response<Body>> + Send;
    fn server_config(&self) -> &ServerConfig;
    fn metrics(&self) -> &Metrics;
    /// The zero-copy context viewer sockets send cached bodies through.
    fn zero_copy(&self) -> &Arc<ZeroCopy>;
    /// The connection and request-rate limits every accept loop shares.
    fn limits(&self) -> &Arc<Limits>;
}

/// Room an h2 header list gets for a long `:path`: the `http` crate holds no URI past 65,534
/// bytes, and hyper resets the stream of a longer one (PROTOCOL_ERROR) where past the list's
/// limit the viewer gets a 431.
const H2_LIST_WITH_PATH: usize = 64 << 10;

/// The connection builder with our limits: the most a request head may take (hyper answers
/// 431 past it; see `head_size`) and its read timeout, h2 keep-alive pings, stream concurrency
/// and rapid-reset caps (CVE-2023-44487: a client that opens and resets streams faster than
/// they are accepted, or provokes resets, loses the connection). `max_uri_size`: the target's
/// share of the head on top of the fields' (0: the fields' budget holds the whole head).
pub fn builder(
    t: &ConnTimeouts,
    h2: &H2Limits,
    max_header_size: usize,
    max_uri_size: usize,
) -> auto::Builder<TokioExecutor> {
    let head_size = max_header_size.saturating_add(max_uri_size);
    // h2 counts pseudo-fields in the list (and 32 bytes per field): the URI's share stops at
    // `H2_LIST_WITH_PATH` in all, never below the fields' own budget.
    let h2_list = head_size.min(max_header_size.max(H2_LIST_WITH_PATH));
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(t.header_read)
        .max_buf_size(head_size.max(8192))
        // A client may shut its write side once its request is out (`printf | ncat`, socat,
        // HTTP/1.0 tools) and still read the answer (RFC 9293 §3.6: a half-closed connection
        // still carries data the other way). hyper's default closed such a connection at the EOF,
        // so a request that waited on a fill got nothing. The cost: a viewer that really left is
        // noticed at the first write of its answer, not at the EOF.
        .half_close(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .max_header_list_size(u32::try_from(h2_list).unwrap_or(u32::MAX))
        .keep_alive_interval(t.h2_keepalive_interval)
        .keep_alive_timeout(t.h2_keepalive_timeout)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20);
    b
}

/// Serves viewers until `shutdown`, then drains in-flight responses for up to the grace period.
///
/// By default (`server.threads` = 0) connections are served on the caller's runtime (tokio's
/// work-stealing scheduler). With `server.threads` = N each of N threads runs its own accept loop
/// on a single-threaded runtime (nginx's worker model): a connection lives on the thread that
/// accepted it, so a request never wakes another thread, but a thread that loses its core stalls
/// its connections. Fills, the store and the origin pool are shared either way.
pub async fn serve<H: Handler>(
    edge: H,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    let threads = edge.server_config().threads;
    if threads == 0 {
        return accept_loop(edge, listener, tls, shutdown).await;
    }
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot share the viewer listener");
            return;
        }
    };
    let mut ended = Vec::with_capacity(threads);
    for i in 0..threads {
        let (done, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = (edge.clone(), tls.clone(), shutdown.clone());
        // Thread 0 takes the listener it was given; the others get their own SO_REUSEPORT
        // socket on the same address when the given one allows it (`vedge serve` binds it so),
        // so the kernel spreads connections evenly; otherwise they share the given socket.
        let own = if i == 0 {
            listener.try_clone()
        } else {
            listener
                .local_addr()
                .and_then(|addr| bind_listener(addr, true))
                .or_else(|_| listener.try_clone())
        };
        let started = own.and_then(|l| {
            std::thread::Builder::new()
                .name(format!("vedge-worker-{i}"))
                .spawn(move || worker_thread(l, worker, done))
        });
        match started {
            Ok(_) => ended.push(ended_rx),
            Err(e) => tracing::error!(error = %e, "cannot start viewer worker thread {i}"),
        }
    }
    if ended.is_empty() {
        // No worker could start: serve on this runtime rather than not at all.
        if let Ok(l) = listener.try_clone().and_then(TcpListener::from_std) {
            accept_loop(edge, l, tls, shutdown).await;
        }
        return;
    }
    // Each worker holds its own descriptor of the socket. Kept here too, the socket would stay
    // open after every worker stopped accepting at shutdown: the kernel would go on completing
    // handshakes nobody accepts, and a new viewer hung until the drain ended, then got a reset,
    // where it should be refused at once and go to another node.
    drop(listener);
    for rx in ended {
        let _ = rx.await;
    }
}

/// A non-blocking viewer listener on `addr` with a deep accept queue (`LISTEN_BACKLOG`). With
/// `reuseport` it sets SO_REUSEPORT, so each per-thread event loop can bind its own socket for
/// the address (binding such a twin fails unless the first socket set it too).
///
/// Either way a second edge on the same address fails to start ("Address already in use"):
/// with SO_REUSEPORT the kernel would let another process of the same user bind the address
/// too and silently split the viewers between the two (an old edge left running by a restart
/// script, serving its old config and cache), so the address is first bound by a plain socket,
/// which a listener already there refuses, and released at once (never listening, so no
/// viewer can land in its queue).
pub fn bind_viewer(
    addr: std::net::SocketAddr,
    reuseport: bool,
) -> std::io::Result<std::net::TcpListener> {
    if reuseport && addr.port() != 0 {
        // SO_REUSEADDR as the listener has it, so connections of an earlier run in TIME_WAIT
        // do not count as a listener.
        tcp_socket(addr)?.bind(&addr.into())?;
    }
    bind_listener(addr, reuseport)
}

/// A TCP socket for `addr`'s family with SO_REUSEADDR.
fn tcp_socket(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn bind_listener(
    addr: std::net::SocketAddr,
    reuseport: bool,
) -> std::io::Result<std::net::TcpListener> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_port(reuseport)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Accept queue depth for viewer listeners: live joins arrive in bursts (tokio's default of
/// 1,024 overflowed at 2,000 simultaneous joins). The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 65_535;

type Worker<H> = (H, Option<Arc<Tls>>, CancellationToken);

/// One viewer worker: a single-threaded runtime running an accept loop until shutdown and drain.
fn worker_thread<H: Handler>(
    listener: std::net::TcpListener,
    (edge, tls, shutdown): Worker<H>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(l) => accept_loop(edge, l, tls, shutdown).await,
            Err(e) => tracing::error!(error = %e, "cannot register the viewer listener"),
        }
    });
    let _ = done.send(());
}

/// The lowest descriptor number past which the accept loop pauses: the open-file limit less a
/// reserve (1/64 of it, 64 to 1,024) that viewers do not take (one connection at most, the one
/// that finds the reserve, per accept loop). Without it a crowd of viewers took
/// every descriptor, and a fill's origin connection failed with EMFILE: a `502` for every
/// viewer collapsed onto it (the 20,000-viewer storm at a 20,000-descriptor limit). The store's
/// files and splice pipes draw on the reserve too; a connection that finds no pipe copies.
fn descriptor_ceiling() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    let limit = lim.rlim_cur;
    limit.saturating_sub((limit / 64).clamp(64, 1024))
}

/// The descriptor number the next `accept` would get (the lowest free one), probed with a
/// `dup` that is closed at once; `None` if even that fails (then accepting waits on).
fn lowest_free_descriptor(listener: &TcpListener) -> Option<u64> {
    // SAFETY: duplicates our listener's descriptor and closes the duplicate; nothing else
    // sees it.
    let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is the duplicate just made, owned here.
    unsafe { libc::close(fd) };
    Some(fd as u64)
}

async fn accept_loop<H: Handler>(
    edge: H,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    let cfg = edge.server_config();
    let builder = Arc::new(builder(
        &cfg.timeouts,
        &cfg.h2,
        cfg.max_header_size,
        cfg.max_uri_size,
    ));
    // On shutdown every open connection is told to finish its in-flight responses and close
    // (`graceful`: h1 stops keep-alive and closes once idle, h2 sends GOAWAY); `cut` drops the
    // ones still open when the grace period ends, which closes their sockets. `tasks` lets the
    // loop return only once every connection is gone, so nothing answers after `serve` returns.
    let graceful = GracefulShutdown::new();
    let cut = CancellationToken::new();
    let tasks = TaskTracker::new();
    let ceiling = descriptor_ceiling();
    // Set when a viewer got a descriptor in the reserve: accepting waits until one below the
    // ceiling is free again, and viewers wait in the listen backlog as they would at EMFILE.
    let mut saturated = false;
    loop {
        if saturated {
            if lowest_free_descriptor(&listener).is_some_and(|fd| fd >= ceiling) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                }
            }
            saturated = false;
        }
        // Races a new connection against shutdown; shutdown wins and stops accepting.
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // In the descriptors kept for fills: this viewer is served, and accepting pauses until
        // the crowd shrinks, so the reserve stays for origin connections. Descriptors are
        // handed out lowest first, so this one's number says how many are in use.
        if stream.as_raw_fd() as u64 >= ceiling {
            edge.limits().paused_for_descriptors();
            saturated = true;
        }
        // Over a connection cap: closed at once, before TLS or a single byte of HTTP.
        let Ok(admitted) = edge.limits().admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let send_buffer = edge.server_config().send_buffer;
        let h2_rate = edge.server_config().h2.control_frame_rate;
        let zero_copy = edge.zero_copy().clone();
        let activity = Activity::new();
        let conn = Arc::new(Conn {
            edge: edge.clone(),
            admitted,
            activity: activity.clone(),
            watch_streams: !edge.limits().bypasses(peer.ip()),
        });
        // Each request clones the connection's `Arc`, not the edge's: the edge's count is one
        // cache line every core would bounce on every request.
        let svc = service_fn(move |req: Request<Incoming>| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(respond(conn, req, Some(peer)).await) }
        });
        let edge = edge.clone();
        let cut = cut.clone();
        match &tls {
            None => {
                let fd = stream.as_raw_fd();
                let io = Watched::new(
                    ZeroCopyStream::new(stream, send_buffer, zero_copy),
                    activity.clone(),
                )
                .resetting(fd);
                // Boxed: the connection task holds it as its own and in the guard's future,
                // and a boxed one is a pointer in each (5.6 KiB of task per connection else).
                let io = FloodGuard::new(io, h2_rate, activity.clone());
                let conn = Box::pin(
                    graceful.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned()),
                );
                tasks.spawn(async move {
                    let cfg = edge.server_config();
                    let served =
                        conn::guard(conn, &activity, &cfg.timeouts, &edge.metrics().limits);
                    // Races the connection against the end of the drain; dropped, it closes.
                    tokio::select! {
                        _ = served => {}
                        _ = cut.cancelled() => {}
                    }
                    if activity.h2_flooded() {
                        Metrics::inc(&edge.metrics().limits.h2_flood_closed);
                    }
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tasks.spawn(async move {
                    let cfg = edge.server_config();
                    let m = &edge.metrics().limits;
                    let fd = stream.as_raw_fd();
                    let io = Watched::new(stream, activity.clone()).resetting(fd);
                    let tls =
                        match tokio::time::timeout(cfg.tls_handshake_timeout, acceptor.accept(io))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                Metrics::inc(&m.tls_handshake_errors);
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                Metrics::inc(&m.tls_handshake_timeouts);
                                return;
                            }
                        };
                    let tls = FloodGuard::new(tls, h2_rate, activity.clone());
                    let conn = Box::pin(
                        watcher.watch(
                            builder
                                .serve_connection(TokioIo::new(tls), svc)
                                .into_owned(),
                        ),
                    );
                    // As above: the connection, or the end of the drain (the handshake before
                    // it is bounded by `tls_handshake_timeout`).
                    tokio::select! {
                        _ = conn::guard(conn, &activity, &cfg.timeouts, m) => {}
                        _ = cut.cancelled() => {}
                    }
                    if activity.h2_flooded() {
                        Metrics::inc(&m.h2_flood_closed);
                    }
                });
            }
        }
    }
    drop(listener);
    let grace = edge.server_config().shutdown_grace;
    // Races the drain of every connection against the grace period.
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    cut.cancel();
    tasks.close();
    // Every task ends at its next poll now (`cut`), so this wait is short.
    tasks.wait().await;
}

/// One viewer connection: the edge serving it, its place under the limits and its activity,
/// shared by its requests.
pub struct Conn<H> {
    edge: H,
    admitted: Admitted,
    activity: Arc<Activity>,
    /// Whether the watchdog follows each h2 stream's wait for its viewer. Not for peers on
    /// `limits.allow` (edges of a tier): one stalled viewer behind an edge would otherwise cut
    /// the edge's whole h2 link, and every other viewer's fill multiplexed on it.
    watch_streams: bool,
}

impl<H> Conn<H> {
    pub fn edge(&self) -> &H {
        &self.edge
    }
}

/// The request's own limits on its head, answered before anything else looks at it: a target
/// (path and query, what the edge keys, logs and forwards) past `max_uri_size` is a 414 (RFC
/// 9112 §3), header fields past `max_header_size` (each counted as on an HTTP/1.1 line) a 431.
///
/// hyper reads a head of both budgets together (`builder`), so each is checked here on its
/// own. With only the fields' budget, a long target took the fields' room and a target past
/// the buffer was hyper's 431 (Request Header Fields Too Large) where RFC 9112 §3 asks for a
/// 414. A target past the limit is now read and answered 414 as long as the head fits both
/// budgets (h2: the list fits `H2_LIST_WITH_PATH`, or the fields' budget if larger); a longer
/// head is still hyper's 431, as hyper stops reading before the request line ends. The budget
/// is not larger than that because each viewer connection may hold it while its head arrives.
fn head_refusal(
    req: &Request<Incoming>,
    cfg: &ServerConfig,
    m: &LimitMetrics,
) -> Option<Response<Body>> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > cfg.max_uri_size {
        Metrics::inc(&m.uri_too_long);
        return Some(refusal(
            StatusCode::URI_TOO_LONG,
            "vedge: request target too long\n",
        ));
    }
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if fields > cfg.max_header_size {
        Metrics::inc(&m.header_fields_too_large);
        return Some(refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "vedge: request header fields too large\n",
        ));
    }
    None
}

/// A plain-text refusal of the viewer's request, never stored downstream.
fn refusal(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// 429 for a client over its request rate, with when to come back (RFC 6585).
fn too_many_requests(retry_after: Duration) -> Response<Body> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut r = refusal(
        StatusCode::TOO_MANY_REQUESTS,
        "vedge: too many requests from this address\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// Handles a request under the connection's limits; the body goes out through `access::Logged`,
/// which writes the access line when it ends.
pub async fn respond<H: Handler>(
    conn: Arc<Conn<H>>,
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Response<Logged<H>> {
    let in_flight = conn.activity.request(
        req.version() < http::Version::HTTP_2,
        conn.watch_streams && req.version() == http::Version::HTTP_2,
        conn.admitted.stalled(),
    );
    let pending = Pending::of(&req);
    let resp = match conn.admitted.take_request() {
        // A client whose h2 streams already hold `limits.per_ip_stalled_bytes` of responses it
        // does not take gets no more until they drain: each would pin another body in memory.
        Ok(()) if conn.admitted.over_stalled_bytes() => {
            Metrics::inc(&conn.edge.metrics().limits.stalled_refused);
            too_many_requests(Duration::from_secs(1))
        }
        Ok(()) => {
            match head_refusal(&req, conn.edge.server_config(), &conn.edge.metrics().limits) {
                Some(refused) => refused,
                None => conn.edge.handle(req, peer).await,
            }
        }
        Err(retry_after) => too_many_requests(retry_after),
    };
    pending.finish(conn, peer, resp, in_flight)
}
