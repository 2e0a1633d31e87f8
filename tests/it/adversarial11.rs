//! Regression tests from the eleventh adversarial review: work one viewer's request makes the
//! edge do on others' behalf stays bounded and shared. Each fails on the code before its fix.

use std::io::Read;
use std::sync::Arc;

use crate::support::binary::ADMIN_TOKEN;
use crate::support::edge::edge_config;
use crate::support::{Origin, Script, TestEdge};

/// Bug: with `cache.compress_manifests` on, every viewer that asked for a large shared
/// manifest before its gzip form was kept coded it again, each on a blocking thread of its
/// own (no bound): a new version of a 2 MiB DVR playlist asked for by a crowd at once was as
/// many level-6 compressions running at once as viewers. Now the first codes it (on the
/// blocking pool under the manifest work's bound) and the others wait for its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_asking_for_a_large_manifest_at_once_codes_it_once() {
    let origin = Origin::start().await;
    let path = "/v/dvr.m3u8";
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n");
    for i in 0..60_000 {
        text.push_str(&format!("#EXTINF:6.000,\nseg_{i:06}.ts\n"));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    assert!(text.len() > 1 << 20);
    origin.script(
        path,
        Script::ok(text.clone())
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=600"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.compress_manifests = Some(true);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = Arc::new(TestEdge::start_with_admin(raw).await);
    let api = edge.admin().await;

    // Stored first, uncoded; then the crowd, all at once.
    let plain = edge.get(path).await;
    assert_eq!(plain.body.len(), text.len());
    edge.settle().await;
    let crowd: Vec<_> = (0..12)
        .map(|_| {
            let e = edge.clone();
            tokio::spawn(async move { e.get_with(path, &[("accept-encoding", "gzip")]).await })
        })
        .collect();
    for viewer in crowd {
        let r = viewer.await.expect("viewer task");
        assert_eq!(r.h("content-encoding"), "gzip");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_end(&mut out)
            .expect("a gzip body");
        assert!(out == text.as_bytes(), "a viewer got other bytes");
    }
    assert_eq!(
        api.metric("vedge_manifest_gzip_codings_total").await,
        1,
        "the shared manifest was coded once for the crowd"
    );
    assert_eq!(
        api.metric("vedge_manifest_offloaded_total").await,
        1,
        "coded off the workers, under the manifest work's bound"
    );
    assert_eq!(api.metric("vedge_manifest_compressed_total").await, 12);
    assert_eq!(origin.count(path), 1);
}
