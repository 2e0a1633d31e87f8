//! Engine tests against an in-memory origin and sink: atomic publish, release on failure,
//! resume, room check, keys identical to the edge's.

use std::sync::Arc;

use super::engine::*;
use url::Url;
use vedge_manifest::fetch::MapFetcher;
use vedge_manifest::{discover, WalkOptions};

const BASE: &str = "http://origin.test/vod/a/";

fn origin() -> MapFetcher {
    let mut f = MapFetcher::default();
    f.insert(
        &format!("{BASE}master.m3u8"),
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv/index.m3u8?token=abc\n",
    );
    f.insert(
        &format!("{BASE}v/index.m3u8?token=abc"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2,\n1.m4s\n#EXTINF:2,\n2.m4s\n#EXTINF:2,\n3.m4s?b=2&a=1\n#EXT-X-ENDLIST\n",
    );
    for p in ["v/init.mp4", "v/1.m4s", "v/2.m4s", "v/3.m4s?b=2&a=1"] {
        f.insert(&format!("{BASE}{p}"), vec![7u8; 100]);
    }
    f
}

fn keys() -> KeyMapper {
    KeyMapper {
        host: "Edge.Test:80".into(),
        config: None,
        drop_query_params: vec!["token".into()],
        local_root: None,
    }
}

async fn run(f: &MapFetcher, sink: &MemorySink, opts: &IngestOptions) -> AssetReport {
    let root = Url::parse(&format!("{BASE}master.m3u8")).expect("url");
    let asset = discover(&root, f, &WalkOptions::default())
        .await
        .expect("walk");
    ingest_asset(
        &asset,
        f,
        sink,
        &keys(),
        opts,
        &Arc::new(Progress::default()),
    )
    .await
}

#[tokio::test]
async fn publishes_media_first_then_children_then_master_with_viewer_keys() {
    let (f, sink) = (origin(), MemorySink::default());
    let r = run(&f, &sink, &IngestOptions::default()).await;
    assert_eq!(r.outcome, Outcome::Published, "{r:?}");
    assert_eq!((r.objects, r.stored, r.skipped), (6, 6, 0));
    let log = sink.log.lock().clone();
    let n = log.len();
    assert_eq!(
        &log[n - 2..],
        [
            "http|edge.test|/vod/a/v/index.m3u8",
            "http|edge.test|/vod/a/master.m3u8"
        ]
    );
    assert!(log.contains(&"http|edge.test|/vod/a/v/3.m4s?a=1&b=2".to_string()));
    // The keys are exactly the edge's for the viewer's request targets.
    for (target, key) in [
        (
            "/vod/a/v/index.m3u8?token=xyz",
            "http|edge.test|/vod/a/v/index.m3u8",
        ),
        (
            "/vod/a/v/3.m4s?a=1&b=2",
            "http|edge.test|/vod/a/v/3.m4s?a=1&b=2",
        ),
    ] {
        let k = crate::cache::key::cache_key("edge.test", target, &["token".to_string()]);
        assert_eq!(k, key);
        assert!(sink.objects.lock().contains_key(&k));
    }
}

#[tokio::test]
async fn a_missing_segment_fails_the_asset_and_releases_what_it_stored() {
    let mut f = origin();
    f.objects.remove(&format!("{BASE}v/2.m4s"));
    let sink = MemorySink::default();
    let r = run(&f, &sink, &IngestOptions::default()).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.failures.len(), 1);
    assert!(r.failures[0].url.ends_with("v/2.m4s"));
    assert!(
        r.failures[0].reason.contains("404"),
        "{}",
        r.failures[0].reason
    );
    // No manifest was written and nothing stays pinned.
    assert!(sink.log.lock().iter().all(|k| !k.contains(".m3u8")));
    assert!(sink.pinned_keys().is_empty());

    // --allow-partial publishes anyway.
    let sink = MemorySink::default();
    let opts = IngestOptions {
        allow_partial: true,
        ..IngestOptions::default()
    };
    let r = run(&f, &sink, &opts).await;
    assert_eq!(r.outcome, Outcome::PublishedPartial);
    assert!(sink
        .objects
        .lock()
        .contains_key("http|edge.test|/vod/a/master.m3u8"));
}

#[tokio::test]
async fn second_run_skips_everything_and_an_interrupted_run_resumes() {
    let (f, sink) = (origin(), MemorySink::default());
    run(&f, &sink, &IngestOptions::default()).await;
    let r = run(&f, &sink, &IngestOptions::default()).await;
    assert_eq!(r.outcome, Outcome::Published);
    assert_eq!(r.skipped, 4, "every media object is skipped");
    assert_eq!(
        r.stored, 2,
        "manifests are rewritten (cheap, and they may have changed)"
    );

    // "Interrupted": only two media objects made it.
    let sink = MemorySink::default();
    let full = MemorySink::default();
    run(&f, &full, &IngestOptions::default()).await;
    for k in [
        "http|edge.test|/vod/a/v/init.mp4",
        "http|edge.test|/vod/a/v/1.m4s",
    ] {
        let o = full.objects.lock().get(k).expect("stored").0.clone();
        sink.objects.lock().insert(k.to_string(), (o, true));
    }
    let r = run(&f, &sink, &IngestOptions::default()).await;
    assert_eq!((r.outcome, r.skipped, r.stored), (Outcome::Published, 2, 4));
}

#[tokio::test]
async fn a_store_without_room_is_refused_before_writing_naming_the_size() {
    let f = origin();
    let sink = MemorySink::with_capacity(250);
    let r = run(&f, &sink, &IngestOptions::default()).await;
    assert_eq!(r.outcome, Outcome::Refused);
    let e = r.error.expect("error");
    assert!(e.contains("needs"), "{e}");
    let manifest_bytes: usize = f
        .objects
        .iter()
        .filter(|(k, _)| k.contains(".m3u8"))
        .map(|(_, v)| v.len())
        .sum();
    assert!(
        e.contains(&format!("{} bytes", 400 + manifest_bytes)),
        "{e}"
    );
    assert!(sink.log.lock().is_empty(), "nothing was written");
}
