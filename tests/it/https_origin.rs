//! https origins: fills over rustls (cached, collapsed, h2 when the origin offers it), SNI from
//! the origin host or the route's `sni`, and a certificate that fails verification answered
//! with 502 `detail=origin-tls`, never by falling back to plaintext.

use std::path::PathBuf;
use std::sync::Arc;

use http::Version;
use vedge::config::{RawConfig, RawRoute};

use crate::support::tls_origin::{TestCa, TlsOrigin};
use crate::support::{until, TestEdge};

/// One route `/` to `url`, trusting `ca` (written to a temp file), with short timeouts.
fn https_config(url: String, ca: &TestCa, sni: Option<&str>, dir: &tempfile::TempDir) -> RawConfig {
    let ca_file: PathBuf = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA file");
    let mut raw = RawConfig {
        ram_size: Some("64MiB".into()),
        routes: vec![RawRoute {
            prefix: "/".into(),
            origin: url,
            sni: sni.map(str::to_string),
            ca_file: Some(ca_file),
            ..RawRoute::default()
        }],
        ..RawConfig::default()
    };
    raw.cache.collapse_timeout = Some("5s".into());
    raw.origin_client.first_byte_timeout = Some("5s".into());
    raw.origin_client.connect_timeout = Some("2s".into());
    raw.server.shutdown_grace = Some("1s".into());
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_over_https_is_collapsed_cached_and_speaks_h2() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca, &["origin.test"], true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = Arc::new(
        TestEdge::start(https_config(
            origin.ip_url(),
            &ca,
            Some("origin.test"),
            &dir,
        ))
        .await,
    );
    let viewers: Vec<_> = (0..8)
        .map(|_| {
            let e = edge.clone();
            tokio::spawn(async move { e.get("/v/seg.ts").await })
        })
        .collect();
    until("seven viewers wait on the first one's fill", || {
        edge.collapsed() >= 7
    })
    .await;
    origin.open();
    for v in viewers {
        let r = v.await.expect("viewer");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"tls:/v/seg.ts");
    }
    assert_eq!(origin.count("/v/seg.ts"), 1, "one fill for eight viewers");
    assert_eq!(
        origin.versions("/v/seg.ts"),
        vec![Version::HTTP_2],
        "h2 negotiated by ALPN"
    );
    edge.settle().await;
    let hit = edge.get("/v/seg.ts").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(origin.count("/v/seg.ts"), 1);
}

#[tokio::test]
async fn sni_and_verification_default_to_the_origin_host() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca, &["localhost"], false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = TestEdge::start(https_config(origin.localhost_url(), &ca, None, &dir)).await;
    let r = edge.get("/a.ts").await;
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(&r.body[..], b"tls:/a.ts");
}

async fn assert_tls_failure(edge: &TestEdge, origin: &TlsOrigin) {
    let r = edge.get("/bad.ts").await;
    assert_eq!(r.status, 502);
    assert!(
        r.h("cache-status").contains("detail=origin-tls"),
        "Cache-Status: {}",
        r.h("cache-status")
    );
    assert_eq!(origin.count("/bad.ts"), 0, "no request went out unverified");
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_a_502_origin_tls() {
    let (real, trusted) = (TestCa::new(), TestCa::new());
    let origin = TlsOrigin::start(&real, &["origin.test"], false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = TestEdge::start(https_config(
        origin.ip_url(),
        &trusted,
        Some("origin.test"),
        &dir,
    ))
    .await;
    assert_tls_failure(&edge, &origin).await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_502_origin_tls() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca, &["other.test"], false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = TestEdge::start(https_config(
        origin.ip_url(),
        &ca,
        Some("origin.test"),
        &dir,
    ))
    .await;
    assert_tls_failure(&edge, &origin).await;
}
