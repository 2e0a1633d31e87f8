//! Properties the walkers must hold on any input, shared by the cargo-fuzz targets (fuzz/) and
//! a unit test that replays the committed corpus, so CI checks them without a fuzzer.

use url::Url;

use super::fetch::MapFetcher;
use super::{discover, Limits, WalkOptions};

/// The URL a fuzz input is served at; everything in scope lives under its directory.
pub const ROOT: &str = "http://origin.test/vod/a/root";
const DIR: &str = "http://origin.test/vod/a/";
const LIMIT: usize = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds")
}

/// Walks `input` as the asset's root manifest (with itself also served at every child URL a
/// master may name, via a small map) and checks: no panic; on success every object is unique,
/// in scope, under the limit, and the root comes first; on failure the error says something.
pub fn check(input: &[u8]) {
    let mut f = MapFetcher::default();
    f.insert(ROOT, input.to_vec());
    let opts = WalkOptions {
        limits: Limits {
            max_objects: LIMIT,
            max_manifests: 50,
            max_manifest_bytes: 1 << 20,
            max_manifest_total_bytes: 64 << 20,
        },
        ..WalkOptions::default()
    };
    let root = Url::parse(ROOT).expect("constant URL");
    let result = runtime().block_on(discover(&root, &f, &opts));
    match result {
        Ok(asset) => {
            assert_eq!(asset.manifests.first().map(|m| &m.url), Some(&root));
            assert!(
                asset.len() <= LIMIT,
                "{} objects over the limit",
                asset.len()
            );
            let mut seen = std::collections::HashSet::new();
            for o in asset.publish_order() {
                assert!(seen.insert(o.url.clone()), "{} listed twice", o.url);
                assert!(
                    o.url.as_str().starts_with(DIR),
                    "{} escaped the scope",
                    o.url
                );
                assert_eq!(o.kind.is_manifest(), o.body.is_some());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// The DASH expansion alone with a small budget: never more references than the budget.
pub fn check_dash(input: &[u8]) {
    let root = Url::parse(ROOT).expect("constant URL");
    if let Ok(refs) = super::dash::references(&root, input, LIMIT) {
        assert!(
            refs.len() <= LIMIT,
            "{} references over the budget",
            refs.len()
        );
    }
    check(input);
}

/// The HLS parse alone, then the walk.
pub fn check_hls(input: &[u8]) {
    let root = Url::parse(ROOT).expect("constant URL");
    let mut skipped = Vec::new();
    let room = super::hls::Room::only(LIMIT);
    if let Ok(refs) = super::hls::references(&root, input, true, &mut skipped, &room) {
        for r in refs {
            assert!(matches!(r.url.scheme(), "http" | "https" | "file"));
        }
    }
    check(input);
}
