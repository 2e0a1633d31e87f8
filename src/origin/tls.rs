//! TLS towards https origins: the rustls client config of each origin (roots, SNI, ALPN h2 +
//! http/1.1, session resumption) and the connector the pooled client dials with, which reports
//! an h2 ALPN to hyper so an origin that offers h2 is spoken to in h2. A handshake that fails
//! is an error of its own (`TlsError`), never a fallback to plaintext.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Uri};
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;

use crate::config::{read_ca_file, OriginTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TLS handshake with an origin failed (unknown CA, wrong name, expired, protocol): found in
/// the client error's source chain and reported as `origin-tls`.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {origin} failed: {reason}")]
pub struct TlsError {
    pub origin: String,
    pub reason: String,
}

/// What the connector needs to speak TLS to one origin.
#[derive(Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsSetup {
    /// The client config for an https origin at `host` with the route's TLS settings. Each
    /// origin keeps its config for the process's life, so its default in-memory session store
    /// resumes sessions across the pool's connections.
    pub fn new(host: &str, tls: &OriginTls) -> anyhow::Result<TlsSetup> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = if tls.insecure_skip_verify {
            tracing::warn!(
                origin = host,
                "insecure_skip_verify: the certificate of this https origin is NOT verified; \
                 anyone on the path can impersonate it"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let roots = match &tls.ca_file {
                Some(path) => {
                    let mut roots = RootCertStore::empty();
                    for cert in read_ca_file(path).map_err(anyhow::Error::msg)? {
                        roots.add(cert)?;
                    }
                    Arc::new(roots)
                }
                None => platform_roots(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = tls.sni.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| anyhow::anyhow!("origin {host}: `{name}` is not a server name: {e}"))?
            .to_owned();
        Ok(TlsSetup {
            config: Arc::new(config),
            name,
        })
    }
}

/// The platform's trust store (`rustls-native-certs`), read once per process.
fn platform_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the platform's CA certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no CA certificate found in the platform's trust store: https origins will \
                     fail verification (install ca-certificates or set ca_file on the route)"
                );
            }
            tracing::debug!(added, ignored, "platform CA certificates loaded");
            Arc::new(roots)
        })
        .clone()
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are
/// still checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

tokio::task_local! {
    /// The request being polled, for the dial it starts (`DialWatch::watch`).
    static DIAL: Arc<Dial>;
}

/// How a request's way to the origin went, for telling, when it failed, whether it ever left
/// this edge: whether it got a connection (hyper-util's `capture_connection`) and what its own
/// dials did. A request that never reached the origin failed by the edge's wait, not the
/// origin's fault, and must not feed the origin's health (a burst of viewers against a busy
/// origin would eject it). It waited on this edge's side when its time ran out:
///
/// - without a connection, its dial queued for one of this edge's connection slots
///   (`max_connections_per_origin`), or with no dial of its own at all: with an HTTP/2 origin
///   (`origin_client.http2`, prior knowledge) hyper-util runs one connect per origin, and every
///   other request waits in the pool for the connection that connect will open;
/// - with a connection that dropped it unsent and a dial begun after it, queued for a slot:
///   hyper-util re-sends a request an h2 connection refused before the pool knew that
///   connection was going away (GOAWAY while a body still streams on it, which keeps its slot).
///
/// Likewise a connect error of a request that never dialed is no connect to the origin: the
/// pool handed it a connection that had closed meanwhile (`waited_for_a_closed_one`). A connect
/// that is slow counts once, on the request that dials; one that fails wakes the waiters, each
/// of which dials for itself then (hyper-util retries the checkout), so a failing origin still
/// counts every request that tried it.
///
/// hyper-util starts a request's dial inside that request's poll (it races the pool checkout
/// against a lazy connect), so a task-local set around the request reaches `Connector::call`.
/// A dial the pool checkout overtook goes on in the background and its flags go stale: a
/// request that got a connection before its dial began counts as sent.
pub struct DialWatch(Arc<Dial>);

/// What `Connector::call` tells the request it dials for.
struct Dial {
    captured: CaptureConnection,
    /// A dial of the request's own began.
    started: AtomicBool,
    /// A dial began after the request had been given a connection (a re-send).
    after_connection: AtomicBool,
    /// The latest dial was waiting for a connection slot when last polled (or cancelled).
    queued: AtomicBool,
}

impl DialWatch {
    /// A watch on `req`'s way to the origin; send `req` through `watch`.
    pub fn new<B>(req: &mut Request<B>) -> DialWatch {
        DialWatch(Arc::new(Dial {
            captured: capture_connection(req),
            started: AtomicBool::new(false),
            after_connection: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        }))
    }

    /// Runs `request` (a pooled client's request future) with this watch on the dials it starts.
    pub async fn watch<F: Future>(&self, request: F) -> F::Output {
        DIAL.scope(self.0.clone(), request).await
    }

    /// Whether the request, its time run out, was waiting on this edge's side (see above).
    pub fn waited_locally(&self) -> bool {
        let d = &self.0;
        let queued = d.queued.load(Relaxed);
        match d.captured.connection_metadata().is_some() {
            false => queued || !d.started.load(Relaxed),
            true => queued && d.after_connection.load(Relaxed),
        }
    }

    /// Whether a connect error is the pool's, not a dial's: the request never dialed.
    pub fn waited_for_a_closed_one(&self) -> bool {
        !self.0.started.load(Relaxed)
    }

    /// Whether the connection the request was given had carried an earlier exchange and has
    /// read no byte since this request began (`Exchanges`): the keep-alive race, where a
    /// failure says the origin closed an idle connection, not that it failed the request.
    pub fn reused_unanswered(&self) -> bool {
        let meta = self.0.captured.connection_metadata();
        let Some(connected) = meta.as_ref() else {
            return false;
        };
        let mut extras = http::Extensions::new();
        connected.get_extras(&mut extras);
        extras
            .get::<Exchanges>()
            .is_some_and(Exchanges::reused_unanswered)
    }
}

/// What one origin connection has carried, as its reads and writes show: how many requests
/// began on it (a write after a read, or its first write: HTTP/1.1 sends one request at a time
/// and reads its whole answer before the next) and whether anything was read since the latest
/// began. Shared between the connection and its `Connected` metadata, so a failed request can
/// tell a pooled connection that closed under it before any answer (RFC 9112 §9.3.1: safe to
/// send an idempotent request again) from a fresh one that failed (the origin's fault).
#[derive(Clone, Default)]
pub struct Exchanges(Arc<ExchangeCounts>);

#[derive(Default)]
struct ExchangeCounts {
    begun: std::sync::atomic::AtomicU32,
    answered: AtomicBool,
}

impl Exchanges {
    fn begin(&self) {
        self.0.begun.fetch_add(1, Relaxed);
        self.0.answered.store(false, Relaxed);
    }

    fn answered(&self) {
        self.0.answered.store(true, Relaxed);
    }

    fn reused_unanswered(&self) -> bool {
        self.0.begun.load(Relaxed) >= 2 && !self.0.answered.load(Relaxed)
    }
}

/// A connection's byte stream, telling its `Exchanges` when a write follows a read.
struct Watched<S> {
    io: S,
    exchanges: Exchanges,
    /// The latest operation that moved bytes was a write (a request is going out).
    writing: bool,
}

impl<S> Watched<S> {
    fn new(io: S) -> Watched<S> {
        Watched {
            io,
            exchanges: Exchanges::default(),
            writing: false,
        }
    }

    fn wrote(&mut self) {
        if !self.writing {
            self.writing = true;
            self.exchanges.begin();
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.writing = false;
            this.exchanges.answered();
        }
        read
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !buf.is_empty() {
            this.wrote();
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().any(|b| !b.is_empty()) {
            this.wrote();
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Dials one origin: TCP through hyper-util's `HttpConnector` (connect timeout, nodelay,
/// keep-alive), then the TLS handshake for an https origin, bounded by the connect timeout too.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<TlsSetup>,
    handshake_timeout: Duration,
    /// `origin_client.max_connections_per_origin`: one permit per open connection to this
    /// origin, held by the connection until it closes. hyper-util's pool caps idle connections
    /// only; a dial waiting here is overtaken by any pooled connection that frees up.
    slots: Option<Arc<Semaphore>>,
}

impl Connector {
    pub fn new(
        mut http: HttpConnector,
        tls: Option<TlsSetup>,
        handshake_timeout: Duration,
    ) -> Self {
        // The scheme decides nothing here: this origin's connector knows whether it speaks TLS.
        http.enforce_http(false);
        Connector {
            http,
            tls,
            handshake_timeout,
            slots: None,
        }
    }

    /// At most `max` connections open to this origin at once (0: no cap).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.slots = (max > 0).then(|| Arc::new(Semaphore::new(max)));
        self
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = OriginStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<OriginStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        let slots = self.slots.clone();
        // Read now: `call` runs inside the request's poll, the async block below may not.
        let watch = DIAL.try_with(Arc::clone).ok();
        if let Some(w) = &watch {
            w.started.store(true, Relaxed);
            if w.captured.connection_metadata().is_some() {
                w.after_connection.store(true, Relaxed);
            }
            w.queued.store(false, Relaxed);
        }
        Box::pin(async move {
            // Waits for a connection to this origin to close; the caller's first-byte timeout
            // bounds the wait, and a request cancelled here leaves its watch set (the caller
            // reads it after the timeout dropped this future).
            let slot = match slots {
                None => None,
                Some(sem) => Some(match sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        crate::metrics::ORIGIN_CONNECTION_WAITS.fetch_add(1, Relaxed);
                        if let Some(w) = &watch {
                            w.queued.store(true, Relaxed);
                        }
                        let p = sem.acquire_owned().await?;
                        if let Some(w) = &watch {
                            w.queued.store(false, Relaxed);
                        }
                        p
                    }
                }),
            };
            let io = |io| OriginStream { io, _slot: slot };
            let origin = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let tcp = http.call(uri).await?.into_inner();
            let Some(tls) = tls else {
                return Ok(io(OriginIo::Plain(TokioIo::new(Watched::new(tcp)))));
            };
            let connector = tokio_rustls::TlsConnector::from(tls.config);
            let handshake = connector.connect(tls.name, tcp);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => Ok(io(OriginIo::Tls(Box::new(TokioIo::new(Watched::new(
                    stream,
                )))))),
                Ok(Err(e)) => {
                    let e = TlsError {
                        origin,
                        reason: e.to_string(),
                    };
                    tracing::warn!(error = %e, "origin TLS handshake failed");
                    Err(e.into())
                }
                Err(_) => {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out").into())
                }
            }
        })
    }
}

/// A connection to an origin, holding its origin's connection slot until it closes.
pub struct OriginStream {
    io: OriginIo,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connection for OriginStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for OriginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for OriginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A connection to an origin, plain or TLS.
enum OriginIo {
    Plain(TokioIo<Watched<TcpStream>>),
    /// Boxed: a TLS session is a kilobyte, a plain stream a few words.
    Tls(Box<TokioIo<Watched<TlsStream<TcpStream>>>>),
}

impl Connection for OriginIo {
    fn connected(&self) -> Connected {
        match self {
            OriginIo::Plain(s) => {
                let w = s.inner();
                w.io.connected().extra(w.exchanges.clone())
            }
            OriginIo::Tls(s) => {
                let w = s.inner();
                let (tcp, session) = w.io.get_ref();
                let connected = tcp.connected().extra(w.exchanges.clone());
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl hyper::rt::Read for OriginIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            OriginIo::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for OriginIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            OriginIo::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginIo::Plain(s) => Pin::new(s).poll_flush(cx),
            OriginIo::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            OriginIo::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            OriginIo::Plain(s) => s.is_write_vectored(),
            OriginIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            OriginIo::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
