//! `vedge origin`'s synthetic catalogue and `vedge bench zipf` at tiny scale: the origin's
//! `/cat/` answers (length, bytes, validators, ranges, HEAD) and counters, and the client's
//! byte hit ratio straight at the origin (0: every byte came from it) and through a vedge
//! (above 0 once the popular objects are cached).

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use url::Url;
use vedge_bench::catalogue;
use vedge_bench::origin::OriginOptions;
use vedge_bench::zipf::{self, Phase, ZipfConfig};

use super::{start_edge, start_origin};

type Http = Client<HttpConnector, http_body_util::Empty<bytes::Bytes>>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get(
    c: &Http,
    url: &str,
    headers: &[(&str, &str)],
    head: bool,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut b = http::Request::builder()
        .method(if head { "HEAD" } else { "GET" })
        .uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(http_body_util::Empty::new()).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

async fn cat_counters(base: &str) -> (u64, u64) {
    let u = Url::parse(&format!("{base}/__stats")).expect("url");
    zipf::origin_catalogue(&u, Duration::from_secs(5))
        .await
        .expect("stats")
}

fn run_config(target: &str, origin: &str, objects: u64, requests: u64) -> ZipfConfig {
    ZipfConfig {
        target: Url::parse(target).expect("url"),
        origin_stats: Some(Url::parse(&format!("{origin}/__stats")).expect("url")),
        connections: 4,
        objects,
        s: 1.0,
        measure: Phase {
            duration: Some(Duration::from_secs(60)),
            requests: Some(requests),
        },
        warmup: None,
        seed: 5,
        verify: true,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn catalogue_objects_have_their_deterministic_size_bytes_and_validators() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let c = http();
    let url = format!("{base}{}", catalogue::path(3));
    let (status, h, body) = get(&c, &url, &[], false).await;
    assert_eq!(status, 200);
    assert_eq!(body.len() as u64, catalogue::size(3));
    assert_eq!(body, catalogue::body(3));
    assert_eq!(h["content-length"], catalogue::size(3).to_string().as_str());
    assert!(h["cache-control"]
        .to_str()
        .expect("ascii")
        .contains("max-age="));
    let etag = h["etag"].to_str().expect("ascii").to_string();
    let lm = h["last-modified"].to_str().expect("ascii").to_string();
    // Revalidation: 304 without a body.
    let (status, _, body) = get(&c, &url, &[("if-none-match", &etag)], false).await;
    assert_eq!((status.as_u16(), body.len()), (304, 0));
    let (status, _, _) = get(&c, &url, &[("if-modified-since", &lm)], false).await;
    assert_eq!(status, 304);
    let (status, _, _) = get(&c, &url, &[("if-none-match", "\"other\"")], false).await;
    assert_eq!(status, 200);
    // A byte range, and one past the end.
    let (status, h, body) = get(&c, &url, &[("range", "bytes=100-199")], false).await;
    assert_eq!(status, 206);
    assert_eq!(&body[..], &catalogue::body(3)[100..200]);
    let cr = format!("bytes 100-199/{}", catalogue::size(3));
    assert_eq!(h["content-range"], cr.as_str());
    let (status, _, _) = get(&c, &url, &[("range", "bytes=4194304-")], false).await;
    assert_eq!(status, 416);
    // HEAD: the length a GET sends, no body.
    let (status, h, body) = get(&c, &url, &[], true).await;
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    assert_eq!(h["content-length"], catalogue::size(3).to_string().as_str());
    // Not catalogue paths.
    let (status, _, _) = get(&c, &format!("{base}/cat/03.ts"), &[], false).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn origin_stats_count_catalogue_requests_and_body_bytes() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let c = http();
    let (r0, b0) = cat_counters(&base).await;
    assert_eq!((r0, b0), (0, 0));
    for id in [1, 2, 2] {
        get(&c, &format!("{base}{}", catalogue::path(id)), &[], false).await;
    }
    get(
        &c,
        &format!("{base}{}", catalogue::path(9)),
        &[("range", "bytes=0-9")],
        false,
    )
    .await;
    let (r, b) = cat_counters(&base).await;
    assert_eq!(r, 4);
    assert_eq!(b, catalogue::size(1) + 2 * catalogue::size(2) + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipf_bench_straight_at_the_origin_has_a_byte_hit_ratio_of_zero() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let cfg = run_config(&base, &base, 20, 40);
    let r = zipf::run(&cfg).await.expect("run");
    let m = &r.measured;
    assert_eq!(m.error_total, 0, "{:?}", m.errors);
    assert_eq!((m.requests, m.ok), (40, 40));
    assert_eq!(m.origin_requests, Some(40));
    assert_eq!(m.origin_bytes, Some(m.bytes));
    assert_eq!(m.byte_hit_ratio, Some(0.0));
    assert!(m.distinct_objects >= 2 && m.distinct_objects <= 20);
    assert!(r.connections_opened <= 4, "{}", r.connections_opened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipf_bench_through_an_edge_counts_only_misses_at_the_origin() {
    let (origin, _stop_origin) = start_origin(OriginOptions::default()).await;
    let (edge, _stop_edge) = start_edge(&origin).await;
    let mut cfg = run_config(&edge, &origin, 8, 60);
    cfg.warmup = Some(Phase {
        duration: None,
        requests: Some(40),
    });
    let r = zipf::run(&cfg).await.expect("run");
    let w = r.warmup.as_ref().expect("warm-up report");
    assert_eq!(w.error_total, 0, "{:?}", w.errors);
    assert_eq!(w.requests, 40);
    let m = &r.measured;
    assert_eq!(m.error_total, 0, "{:?}", m.errors);
    assert_eq!(m.ok, 60);
    // The origin saw at most one fill per object over the whole run, so the measured phase
    // got most of its bytes from the edge's cache.
    let origin_total = w.origin_requests.unwrap_or(0) + m.origin_requests.unwrap_or(0);
    assert!(origin_total <= 2 * 8, "origin requests {origin_total}");
    let h = m.byte_hit_ratio.expect("ratio");
    assert!(h > 0.5, "byte hit ratio {h}");
}

#[test]
fn an_ideal_cache_holding_the_whole_catalogue_hits_every_byte() {
    let z = catalogue::Zipf::new(100, 1.0);
    let all = catalogue::total_bytes(100);
    assert!((zipf::ideal_byte_hit_ratio(&z, 100, all) - 1.0).abs() < 1e-12);
    let half = zipf::ideal_byte_hit_ratio(&z, 100, all / 2);
    // Zipf(1): the popular half of the objects draws far more than half of the bytes.
    assert!(half > 0.8 && half < 1.0, "{half}");
}
