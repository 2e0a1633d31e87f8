//! Regression tests from the second adversarial review of the request path: each proves one
//! rule the first review left as a suspicion, and fails on the code before its fix.

use crate::support::{edge_config, Gate, Origin, Script, TestEdge};

fn body(n: usize) -> bytes::Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// A cold Range probe that turns out too large passes its Range viewers through; viewers
/// without a Range who collapsed onto it want the whole object and share one whole-object fill,
/// not one whole-object origin fetch each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_object_viewers_collapsed_on_a_cold_range_probe_share_one_origin_fill() {
    let origin = Origin::start().await;
    let full = body(64 << 10);
    let gate = Gate::new();
    origin.script(
        "/v/big.mp4",
        Script::ok(full.clone())
            .header("cache-control", "max-age=60")
            .gate(&gate)
            .ranged(),
    );
    let mut raw = edge_config(&origin);
    raw.cache.range_passthrough_above = Some("16KiB".into());
    raw.cache.slice_size = Some("0".into());
    let edge = std::sync::Arc::new(TestEdge::start(raw).await);

    let probe = {
        let edge = edge.clone();
        tokio::spawn(async move {
            edge.get_with("/v/big.mp4", &[("range", "bytes=0-99")])
                .await
        })
    };
    crate::support::until("the probe reached the origin", || {
        origin.count("/v/big.mp4") == 1
    })
    .await;
    let n = 8;
    let viewers: Vec<_> = (0..n)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get("/v/big.mp4").await })
        })
        .collect();
    crate::support::until("every viewer collapsed onto the probe", || {
        edge.collapsed() >= n
    })
    .await;
    gate.open();
    let r = probe.await.expect("probe");
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &full[..100]);
    for v in viewers {
        let r = v.await.expect("viewer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, full);
    }
    // The probe, the Range pass-through and one whole-object fill for the eight viewers.
    let whole = origin
        .seen("/v/big.mp4")
        .iter()
        .filter(|s| s.header("range").is_none())
        .count();
    assert_eq!(whole, 2, "the probe and one whole-object fill");
    assert_eq!(origin.count("/v/big.mp4"), 3);
}
