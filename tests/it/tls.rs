//! Viewer TLS: h1 and h2 chosen by ALPN, SNI picking each host's certificate, session
//! resumption, certificate reload (SIGHUP to the real binary) that keeps open connections, and
//! the handshake timeout. A test CA and its certificates are made in the test with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use vedge::config::{RawConfig, RawTlsCert};

use crate::support::binary::BinaryEdge;
use crate::support::edge::{edge_config, until};
use crate::support::origin::{Origin, Script};

/// A test certificate authority that signs leaf certificates for host names.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate written to `dir` as `<name>.pem` / `<name>.key`.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vedge test CA");
        let key = rcgen::KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa { cert, key }
    }

    /// Signs a certificate for `hosts`, writing it and its key under `dir` as `name`.
    pub fn leaf(&self, dir: &Path, name: &str, hosts: &[&str]) -> Leaf {
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// A client config trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("trust the test CA");
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// A TLS connection to `addr` naming `sni`.
pub async fn connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp),
    )
    .await
    .expect("handshake within 10 s")
    .expect("handshake")
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("a peer certificate")[0]
        .clone()
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 client over `s`.
async fn h1(s: TlsStream<TcpStream>) -> H1 {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

async fn get_h1(send: &mut H1, host: &str, path: &str) -> (StatusCode, Bytes) {
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response within 10 s")
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

/// An edge serving TLS in process; dropping the sender shuts it down.
async fn start_tls(raw: RawConfig) -> (SocketAddr, Arc<vedge::Edge>, oneshot::Sender<()>) {
    let cfg = vedge::Config::try_from(raw).expect("valid config");
    let edge = vedge::Edge::new(cfg).await.expect("edge starts");
    let viewer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = viewer.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(vedge::serve(
        edge.clone(),
        vedge::Listeners {
            viewer,
            admin: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    (addr, edge, tx)
}

/// An origin with `/v.ts`, and a config whose default certificate is `a.test`'s and which has
/// a `[[tls.cert]]` for `b.test` and `*.wild.test`.
async fn two_host_setup(dir: &Path, ca: &TestCa) -> (Origin, RawConfig, Leaf, Leaf) {
    let origin = Origin::start().await;
    origin.script("/v.ts", Script::ok("segment bytes"));
    let a = ca.leaf(dir, "a", &["a.test"]);
    let b = ca.leaf(dir, "b", &["b.test", "*.wild.test"]);
    let mut raw = edge_config(&origin);
    raw.server.tls_cert = Some(a.cert.clone());
    raw.server.tls_key = Some(a.key.clone());
    raw.tls.certs = vec![RawTlsCert {
        hosts: vec!["b.test".into(), "*.wild.test".into()],
        cert: b.cert.clone(),
        key: b.key.clone(),
    }];
    (origin, raw, a, b)
}

#[tokio::test]
async fn viewer_tls_answers_h1_and_h2_chosen_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let (origin, raw, _, _) = two_host_setup(dir.path(), &ca).await;
    let (addr, _edge, _stop) = start_tls(raw).await;

    let s = connect(&ca.client(&[b"http/1.1"]), addr, "a.test").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut send = h1(s).await;
    let (status, body) = get_h1(&mut send, "a.test", "/v.ts").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"segment bytes"[..]));

    let s = connect(&ca.client(&[b"h2", b"http/1.1"]), addr, "a.test").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("https://a.test/v.ts")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"segment bytes");
    assert_eq!(origin.count("/v.ts"), 1, "the second request was a hit");
}

#[tokio::test]
async fn sni_selects_each_hosts_certificate_and_the_default_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let (_origin, raw, a, b) = two_host_setup(dir.path(), &ca).await;
    let (addr, _edge, _stop) = start_tls(raw).await;
    let client = ca.client(&[b"http/1.1"]);
    assert_eq!(peer_cert(&connect(&client, addr, "a.test").await), a.der);
    assert_eq!(peer_cert(&connect(&client, addr, "b.test").await), b.der);
    assert_eq!(peer_cert(&connect(&client, addr, "B.Test").await), b.der);
    assert_eq!(
        peer_cert(&connect(&client, addr, "x.wild.test").await),
        b.der
    );
    // An unknown name gets the default certificate (which the client then refuses).
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("other.test").expect("name");
    let refused = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await;
    assert!(
        refused.is_err(),
        "a.test's certificate is not valid for other.test"
    );
}

#[tokio::test]
async fn a_second_connection_resumes_the_tls_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let (_origin, raw, _, _) = two_host_setup(dir.path(), &ca).await;
    let (addr, _edge, _stop) = start_tls(raw).await;
    // One client config: its session cache carries the ticket to the second connection.
    let client = ca.client(&[b"http/1.1"]);
    let first = connect(&client, addr, "a.test").await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // TLS 1.3 tickets arrive after the handshake: one exchange makes sure they were read.
    let mut send = h1(first).await;
    assert_eq!(get_h1(&mut send, "a.test", "/v.ts").await.0, StatusCode::OK);
    let second = connect(&client, addr, "a.test").await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn a_handshake_not_finished_in_time_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let (_origin, mut raw, _, _) = two_host_setup(dir.path(), &ca).await;
    raw.server.tls_handshake_timeout = Some("300ms".into());
    let (addr, edge, _stop) = start_tls(raw).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // Send nothing: the edge must give up on the handshake and close.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    until("the timeout is counted", || {
        edge.metrics.limits.tls_handshake_timeouts.load(Relaxed) == 1
    })
    .await;
}

/// The real binary with `--tls-cert/--tls-key`: SIGHUP after the files were replaced makes new
/// handshakes use the new certificate while a connection opened before keeps working.
#[tokio::test]
async fn sighup_reloads_certificates_and_keeps_open_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let origin = Origin::start().await;
    origin.script("/v.ts", Script::ok("segment bytes"));
    let old = ca.leaf(dir.path(), "site", &["a.test"]);
    let args: Vec<String> = vec![
        "--tls-cert".into(),
        old.cert.display().to_string(),
        "--tls-key".into(),
        old.key.display().to_string(),
    ];
    let v = BinaryEdge::start(&origin.url(), &args);
    v.ready().await;
    let addr: SocketAddr = format!("127.0.0.1:{}", v.port).parse().expect("addr");
    let client = ca.client(&[b"http/1.1"]);

    let s = connect(&client, addr, "a.test").await;
    assert_eq!(peer_cert(&s), old.der);
    let mut open = h1(s).await;
    assert_eq!(get_h1(&mut open, "a.test", "/v.ts").await.0, StatusCode::OK);

    // Same file names, new key and certificate.
    let new = ca.leaf(dir.path(), "site", &["a.test"]);
    assert_ne!(new.der, old.der);
    v.notify(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if peer_cert(&connect(&client, addr, "a.test").await) == new.der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload not seen in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = get_h1(&mut open, "a.test", "/v.ts").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"segment bytes"[..]));
}
