//! An https origin on `127.0.0.1:0` for the TLS tests: a CA made in the test (rcgen), a server
//! certificate it signs for the names asked, and hyper serving HTTP/1.1 and h2 (ALPN) behind
//! rustls. Counts requests per path and records the HTTP version each was made with.
//!
//! ```ignore
//! let ca = TestCa::new();
//! let origin = TlsOrigin::start(&ca, &["origin.test"]).await;
//! std::fs::write(&ca_path, ca.pem())?;   // route: ca_file = ca_path, sni = "origin.test"
//! assert_eq!(origin.versions("/a.ts"), vec![http::Version::HTTP_2]);
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A certificate authority made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vedge test CA");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    /// The CA certificate in PEM, for a route's `ca_file`.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate and key signed by this CA for `names`.
    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("server key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("CA signs the server certificate");
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

#[derive(Default)]
struct State {
    seen: Vec<(String, Version)>,
}

/// The https origin. Every path answers 200 `tls:<path>` with `max-age=60`; `/health` too.
/// Dropping it stops it.
pub struct TlsOrigin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    gate: watch::Sender<bool>,
    stop: CancellationToken,
}

impl TlsOrigin {
    /// Serves with a certificate from `ca` for `names`; responses wait for `open()` when
    /// `gated`.
    pub async fn start(ca: &TestCa, names: &[&str], gated: bool) -> TlsOrigin {
        let (cert, key) = ca.issue(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS origin on loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let (gate, gate_rx) = watch::channel(!gated);
        let stop = CancellationToken::new();
        let (st, c) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                // Races a new connection against stop; stop wins and drops the listener.
                let stream = tokio::select! {
                    _ = c.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let (acceptor, st, c, gate) =
                    (acceptor.clone(), st.clone(), c.clone(), gate_rx.clone());
                tokio::spawn(async move {
                    // A failed handshake (the client refused our certificate) just ends here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (st, mut gate) = (st.clone(), gate.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            st.lock().seen.push((path.clone(), req.version()));
                            let _ = gate.wait_for(|open| *open).await;
                            let resp = Response::builder()
                                .header("cache-control", "max-age=60")
                                .body(Full::new(Bytes::from(format!("tls:{path}"))))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = c.cancelled() => {}
                        _ = builder.serve_connection(TokioIo::new(tls), svc) => {}
                    }
                });
            }
        });
        TlsOrigin {
            addr,
            state,
            gate,
            stop,
        }
    }

    /// `https://127.0.0.1:PORT` (the certificate's names are not an IP: set the route's `sni`).
    pub fn ip_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://localhost:PORT`.
    pub fn localhost_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    pub fn count(&self, path: &str) -> usize {
        self.state
            .lock()
            .seen
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    /// The HTTP version of each request for `path`.
    pub fn versions(&self, path: &str) -> Vec<Version> {
        self.state
            .lock()
            .seen
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| *v)
            .collect()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
