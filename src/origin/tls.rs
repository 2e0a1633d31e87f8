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

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
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

/// Dials one origin: TCP through hyper-util's `HttpConnector` (connect timeout, nodelay,
/// keep-alive), then the TLS handshake for an https origin, bounded by the connect timeout too.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<TlsSetup>,
    handshake_timeout: Duration,
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
        }
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
        Box::pin(async move {
            let origin = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let tcp = http.call(uri).await?;
            let Some(tls) = tls else {
                return Ok(OriginStream::Plain(tcp));
            };
            let connector = tokio_rustls::TlsConnector::from(tls.config);
            let handshake = connector.connect(tls.name, tcp.into_inner());
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => Ok(OriginStream::Tls(Box::new(TokioIo::new(stream)))),
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

/// A connection to an origin, plain or TLS.
pub enum OriginStream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is a kilobyte, a plain stream a few words.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for OriginStream {
    fn connected(&self) -> Connected {
        match self {
            OriginStream::Plain(s) => s.connected(),
            OriginStream::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl hyper::rt::Read for OriginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            OriginStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for OriginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            OriginStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_flush(cx),
            OriginStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            OriginStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            OriginStream::Plain(s) => s.is_write_vectored(),
            OriginStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            OriginStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
