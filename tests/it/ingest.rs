//! Push ingest end to end: a real HTTP origin on 127.0.0.1:0 serving fixtures/vod, the walker
//! and engine over HTTP, a real vedge-storage store. After ingest the origin is stopped and
//! every object a player could request is read back from the reopened store under the key the
//! edge builds for the viewer's request; a failed asset publishes no manifest.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use url::Url;
use vedge::cache::key::cache_key;
use vedge::cache::object::CachedObject;
use vedge::ingest::engine::{
    ingest_asset, AssetReport, IngestOptions, KeyMapper, Outcome, Progress,
};
use vedge::ingest::store::StoreSink;
use vedge::origin::fetch::HttpFetcher;
use vedge_manifest::{discover, Asset, WalkOptions};
use vedge_storage::{Store, StoreConfig};

use crate::support::TestEdge;

/// A scripted origin: serves files under `root`, answers 404 for `missing`, counts requests.
struct Origin {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

async fn origin(root: PathBuf, missing: Vec<String>) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicU64::new(0));
    let count = requests.clone();
    let missing = Arc::new(missing);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (root, count, missing) = (root.clone(), count.clone(), missing.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (root, count, missing) = (root.clone(), count.clone(), missing.clone());
                async move {
                    count.fetch_add(1, Ordering::Relaxed);
                    let path = req.uri().path().trim_start_matches('/').to_string();
                    let file = root.join(&path);
                    let res = match std::fs::read(&file) {
                        Ok(b) if !missing.contains(&path) => {
                            let len = b.len();
                            let body = if req.method() == http::Method::HEAD {
                                Bytes::new()
                            } else {
                                Bytes::from(b)
                            };
                            Response::builder()
                                .header("content-length", len)
                                .header(
                                    "content-type",
                                    vedge_manifest::fetch::content_type_for(&path),
                                )
                                .body(Full::new(body))
                        }
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, Infallible>(res.expect("response"))
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Origin {
        addr,
        requests,
        task,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vod")
}

fn store_config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir.join("edge.store"), 64 << 20);
    c.region_size = 4 << 20;
    c
}

const HOST: &str = "cdn.test";

/// The key a viewer's request for `path` produces at `edge` (default routes key on the route's
/// origin host, whatever the viewer's Host).
fn viewer_key(edge: &vedge::Edge, path: &str) -> String {
    vedge::proxy::target::resolve(&edge.config, Some(HOST), path)
        .expect("a routed target")
        .key
}

fn keys() -> KeyMapper {
    KeyMapper {
        host: HOST.into(),
        config: None,
        drop_query_params: vec!["token".into()],
        local_root: None,
    }
}

/// Every file of an asset directory, as the viewer path a player requests for it.
/// Walks the asset at `url` and ingests it into `sink` with default options.
async fn walk_and_ingest(
    url: &Url,
    fetcher: &HttpFetcher,
    sink: &StoreSink,
    progress: &Arc<Progress>,
) -> (Asset, AssetReport) {
    let asset = discover(url, fetcher, &WalkOptions::default())
        .await
        .expect("walk");
    let report = ingest_asset(
        &asset,
        fetcher,
        sink,
        &keys(),
        &IngestOptions::default(),
        progress,
    )
    .await;
    (asset, report)
}

fn files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under")
                    .to_string_lossy()
                    .into_owned();
                out.push(format!("{prefix}/{rel}"));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn after_ingest_with_the_origin_stopped_every_object_is_in_the_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = origin(fixtures(), Vec::new()).await;
    let fetcher = HttpFetcher::new(Duration::from_secs(5), 2);
    let store = Store::open(store_config(tmp.path())).await.expect("open");
    let sink = StoreSink::new(store);
    let mut expected: HashMap<String, usize> = HashMap::new();
    for (name, root) in [
        ("hls-fmp4", "master.m3u8"),
        ("hls-ts", "master.m3u8"),
        ("dash-timeline", "manifest.mpd"),
        ("dash-number", "manifest.mpd"),
        ("dash-list", "manifest.mpd"),
        ("dash-base", "manifest.mpd"),
    ] {
        let url = Url::parse(&format!("http://{}/{name}/{root}", o.addr)).expect("url");
        let progress = Arc::new(Progress::default());
        let (_, r) = walk_and_ingest(&url, &fetcher, &sink, &progress).await;
        assert_eq!(r.outcome, Outcome::Published, "{name}: {r:?}");
        let p = progress.snapshot();
        assert_eq!(p.objects_done, p.objects_total);
        for f in files(&fixtures().join(name), &format!("/{name}")) {
            let len = std::fs::metadata(fixtures().join(&f[1..]))
                .expect("meta")
                .len();
            expected.insert(f, len as usize);
        }
    }
    let before = o.requests.load(Ordering::Relaxed);
    o.task.abort();
    sink.store.close().await.expect("close");

    // Second run against the stopped origin would fail; instead reopen the store (as the edge
    // does at start) and read every object a player needs under the viewer's key.
    let store = Store::open(store_config(tmp.path())).await.expect("reopen");
    for (path, len) in &expected {
        // A viewer's request with a token still hits the ingested key.
        let key = cache_key(
            HOST,
            &format!("{path}?token=viewer1"),
            &["token".to_string()],
        );
        let hit = store
            .lookup(key.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(hit.body.len(), *len, "{key}");
        assert!(hit.meta.pinned, "{key} is pinned");
        let obj =
            CachedObject::decode(&hit.meta.head, hit.body.clone(), Vec::new()).expect("our head");
        assert_eq!(obj.status, StatusCode::OK);
        assert!(obj.headers.get("content-type").is_some(), "{key}");
    }
    assert!(before > 0);
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_missing_segment_leaves_the_asset_unpublished_and_a_rerun_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = "hls-fmp4/v1/seg_003.m4s".to_string();
    let o = origin(fixtures(), vec![missing.clone()]).await;
    let fetcher = HttpFetcher::new(Duration::from_secs(5), 1);
    let store = Store::open(store_config(tmp.path())).await.expect("open");
    let sink = StoreSink::new(store);
    let url = Url::parse(&format!("http://{}/hls-fmp4/master.m3u8", o.addr)).expect("url");
    let progress = Arc::new(Progress::default());
    let (_, r) = walk_and_ingest(&url, &fetcher, &sink, &progress).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.failures.len(), 1);
    assert!(r.failures[0].url.ends_with(&missing));
    assert!(r.failures[0].reason.contains("404"));
    // No manifest of the failed asset is servable.
    for m in [
        "/hls-fmp4/master.m3u8",
        "/hls-fmp4/v1/index.m3u8",
        "/hls-fmp4/audio/index.m3u8",
    ] {
        let key = cache_key(HOST, m, &[]);
        assert!(
            !sink.store.contains(key.as_bytes()),
            "{m} must not be published"
        );
    }
    o.task.abort();

    // The origin is fixed; a rerun skips what is stored and publishes.
    let o = origin(fixtures(), Vec::new()).await;
    let url = Url::parse(&format!("http://{}/hls-fmp4/master.m3u8", o.addr)).expect("url");
    let (asset, r) = walk_and_ingest(&url, &fetcher, &sink, &progress).await;
    assert_eq!(r.outcome, Outcome::Published, "{r:?}");
    assert_eq!(
        r.skipped,
        asset.media.len() as u64 - 1,
        "only the missing segment is fetched"
    );
    let key = cache_key(HOST, "/hls-fmp4/master.m3u8", &[]);
    assert!(sink.store.contains(key.as_bytes()));
    o.task.abort();
    sink.store.close().await.expect("close");
}

#[tokio::test]
async fn a_store_without_room_is_refused_before_writing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = origin(fixtures(), Vec::new()).await;
    let fetcher = HttpFetcher::new(Duration::from_secs(5), 1);
    let mut cfg = StoreConfig::new(tmp.path().join("tiny.store"), (2 << 20) + (3 << 20));
    cfg.region_size = 1 << 20;
    let sink = StoreSink::new(Store::open(cfg).await.expect("open"));
    // Fill the pinned share asset by asset (2.8 MB of fixtures in all) until one does not fit.
    let mut refused = None;
    for name in [
        "hls-ts/master.m3u8",
        "hls-fmp4/master.m3u8",
        "dash-list/manifest.mpd",
        "dash-number/manifest.mpd",
        "dash-timeline/manifest.mpd",
        "dash-base/manifest.mpd",
        "hls-ts/master.m3u8",
    ] {
        let url = Url::parse(&format!("http://{}/{name}", o.addr)).expect("url");
        let objects_before = sink.store.stats().objects;
        let free = sink.store.free_for_pinned();
        let (_, r) = walk_and_ingest(&url, &fetcher, &sink, &Arc::new(Progress::default())).await;
        if r.outcome == Outcome::Refused {
            assert_eq!(
                sink.store.stats().objects,
                objects_before,
                "nothing was written"
            );
            refused = Some((r.error.expect("reason"), free));
            break;
        }
        assert_eq!(r.outcome, Outcome::Published, "{name}: {r:?}");
    }
    let (e, free) = refused.expect("the store filled up before the fixtures ran out");
    assert!(
        e.contains(&format!("has {free} bytes free")) && e.contains("needs"),
        "{e}"
    );
    o.task.abort();
    sink.store.close().await.expect("close");
}

fn admin_request(method: &str, uri: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("x-vedge-host", HOST)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn json_of(res: http::Response<vedge::http::body::Body>) -> serde_json::Value {
    use http_body_util::BodyExt;
    let b = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&b).expect("json")
}

#[tokio::test]
async fn admin_ingest_job_and_push_fill_the_running_edge() {
    use vedge::ingest::admin::{handle, IngestJobs};
    let o = origin(fixtures(), Vec::new()).await;
    let config = vedge::config::Config::for_origin(&format!("http://{}", o.addr)).expect("config");
    let running = TestEdge::start_config(config).await;
    let edge = running.edge.clone();
    let jobs = Arc::new(IngestJobs::default());

    // PUT one object, push-CDN style.
    let res = handle(
        &edge,
        &jobs,
        admin_request("PUT", "/admin/objects/push/a.ts", "segment"),
    )
    .await
    .expect("routed");
    assert_eq!(res.status(), StatusCode::CREATED);
    let (obj, _) = edge
        .lookup(&viewer_key(&edge, "/push/a.ts"))
        .await
        .expect("pushed");
    assert_eq!(&obj.body[..], b"segment");
    assert!(obj.pinned);

    // POST a job, poll it to completion.
    let body = format!(
        r#"{{"assets": ["http://{}/dash-timeline/manifest.mpd"], "host": "{HOST}"}}"#,
        o.addr
    );
    let res = handle(&edge, &jobs, admin_request("POST", "/admin/ingest", &body))
        .await
        .expect("routed");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let id = json_of(res).await["id"].as_u64().expect("id");
    let status = loop {
        let res = handle(
            &edge,
            &jobs,
            admin_request("GET", &format!("/admin/ingest/{id}"), ""),
        )
        .await
        .expect("routed");
        let v = json_of(res).await;
        if v["done"] == serde_json::Value::Bool(true) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["assets"][0]["outcome"], "published", "{status}");
    assert_eq!(
        status["progress"]["objects_done"],
        status["progress"]["objects_total"]
    );
    o.task.abort();
    // With the origin stopped, every file of the asset is in the edge under the viewer's key.
    for f in files(&fixtures().join("dash-timeline"), "/dash-timeline") {
        let key = viewer_key(&edge, &f);
        assert!(edge.lookup(&key).await.is_some(), "{key} missing");
    }
    let res = handle(
        &edge,
        &jobs,
        admin_request("DELETE", &format!("/admin/assets/{id}"), ""),
    )
    .await
    .expect("routed");
    assert_eq!(res.status(), StatusCode::OK);
    let res = handle(&edge, &jobs, admin_request("GET", "/admin/purge", "")).await;
    assert!(res.is_none(), "other admin routes are not ours");
}

/// Serves `handle` behind a bearer-token check, standing in for the lead's admin listener.
async fn admin_server(edge: Arc<vedge::Edge>, token: &'static str) -> std::net::SocketAddr {
    use vedge::ingest::admin::{handle, IngestJobs};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let jobs = Arc::new(IngestJobs::default());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (edge, jobs) = (edge.clone(), jobs.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (edge, jobs) = (edge.clone(), jobs.clone());
                async move {
                    let ok = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        == Some(&format!("Bearer {token}"));
                    let res = if !ok {
                        let mut r =
                            http::Response::new(vedge::http::body::Body::full(Bytes::new()));
                        *r.status_mut() = StatusCode::UNAUTHORIZED;
                        r
                    } else {
                        handle(&edge, &jobs, req).await.unwrap_or_else(|| {
                            let mut r =
                                http::Response::new(vedge::http::body::Body::full(Bytes::new()));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        })
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: vedge::ingest::IngestArgs,
}

fn cli(argv: &[&str]) -> vedge::ingest::IngestArgs {
    use clap::Parser;
    let mut v = vec!["ingest"];
    v.extend_from_slice(argv);
    Cli::parse_from(v).args
}

#[tokio::test]
async fn cli_admin_mode_pushes_a_local_dir_and_runs_a_job_and_a_wrong_token_changes_nothing() {
    let o = origin(fixtures(), Vec::new()).await;
    let config = vedge::config::Config::for_origin(&format!("http://{}", o.addr)).expect("config");
    let running = TestEdge::start_config(config).await;
    let edge = running.edge.clone();
    let admin = format!("http://{}", admin_server(edge.clone(), "s3cret").await);
    let dir = fixtures().join("hls-ts");
    let dir_s = dir.to_string_lossy().into_owned();
    let origin_url = format!("http://{}/dash-list/manifest.mpd", o.addr);

    // Wrong token: refused, nothing stored.
    let err = vedge::ingest::run_cli(cli(&[
        &dir_s,
        "--admin",
        &admin,
        "--admin-token",
        "nope",
        "--host",
        HOST,
        "--path-prefix",
        "/vod/ts",
        "--json",
    ]))
    .await
    .expect_err("401");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    assert!(edge
        .lookup(&viewer_key(&edge, "/vod/ts/master.m3u8"))
        .await
        .is_none());

    vedge::ingest::run_cli(cli(&[
        &dir_s,
        &origin_url,
        "--admin",
        &admin,
        "--admin-token",
        "s3cret",
        "--host",
        HOST,
        "--path-prefix",
        "/vod/ts",
        "--json",
    ]))
    .await
    .expect("ingest");
    o.task.abort();
    for f in files(&dir, "/vod/ts")
        .into_iter()
        .chain(files(&fixtures().join("dash-list"), "/dash-list"))
    {
        let key = viewer_key(&edge, &f);
        assert!(edge.lookup(&key).await.is_some(), "{key} missing");
    }
}

/// GET through the edge's viewer listener: (status, X-Cache, body length).
async fn viewer_get(edge_addr: std::net::SocketAddr, path: &str) -> (StatusCode, String, usize) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = Request::get(format!("http://{edge_addr}{path}"))
        .header("host", HOST)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let res = client.request(req).await.expect("edge answers");
    let status = res.status();
    let x_cache = res
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let len = res
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len();
    (status, x_cache, len)
}

#[tokio::test]
async fn with_the_origin_stopped_every_ingested_object_is_a_hit_and_a_failed_asset_serves_no_manifest(
) {
    let o = origin(fixtures(), vec!["hls-fmp4/v1/seg_003.m4s".to_string()]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config =
        vedge::config::Config::for_origin(&format!("http://{}", o.addr)).expect("config");
    // A store-backed edge: pushed objects go to disk, durable and pinned.
    config.store = Some(vedge::config::StoreSettings {
        path: tmp.path().join("edge.store"),
        size: (2 << 20) + (16 << 20),
        region_size: 2 << 20,
        region_size_chosen: true,
        reformat: false,
        io_engine: vedge_storage::EngineChoice::Psync,
        admit_window: Duration::from_secs(600),
        write_rate: None,
    });
    // The outage below ends the origin's accept loop only: a warm pooled connection would
    // still reach it, so this edge does not preconnect.
    config.origin_client.preconnect.enabled = false;
    let running = TestEdge::start_config(config).await;
    let edge = running.edge.clone();
    let admin = format!("http://{}", admin_server(edge.clone(), "s3cret").await);
    let client = vedge::ingest::client::AdminClient::new(&admin, "s3cret", HOST);
    let status = client
        .run_job(
            &[
                format!("http://{}/dash-timeline/manifest.mpd", o.addr),
                format!("http://{}/hls-fmp4/master.m3u8", o.addr),
            ],
            false,
        )
        .await
        .expect("job");
    assert_eq!(status["assets"][0]["outcome"], "published", "{status}");
    assert_eq!(status["assets"][1]["outcome"], "failed", "{status}");
    o.task.abort();

    let edge_addr = running.addr;
    let dir = fixtures().join("dash-timeline");
    let store = edge.store.as_ref().expect("store");
    for f in files(&dir, "/dash-timeline") {
        let key = viewer_key(&edge, &f);
        let hit = store
            .lookup(key.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{key} on disk"));
        assert!(hit.meta.pinned, "{key} pinned");
    }
    for f in files(&dir, "/dash-timeline") {
        let want = std::fs::metadata(dir.join(f.trim_start_matches("/dash-timeline/")))
            .expect("meta")
            .len() as usize;
        let (status, x_cache, len) = viewer_get(edge_addr, &format!("{f}?token=viewer")).await;
        assert_eq!(
            (status, x_cache.as_str(), len),
            (StatusCode::OK, "HIT", want),
            "{f}"
        );
    }
    for m in ["/hls-fmp4/master.m3u8", "/hls-fmp4/v1/index.m3u8"] {
        let (status, x_cache, _) = viewer_get(edge_addr, m).await;
        assert!(
            status != StatusCode::OK && x_cache != "HIT",
            "{m}: {status} {x_cache}"
        );
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_refetched_then_fails_the_asset() {
    use crate::support::origin::{Fault, Origin as Scripted, Script};
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = Scripted::start().await;
    o.script(
        "/a/index.m3u8",
        Script::ok("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n#EXTINF:2,\ns1.ts\n#EXT-X-ENDLIST\n"),
    );
    o.script("/a/s0.ts", Script::ok(vec![7u8; 3000]));
    // Content-Length 5000, 1000 bytes, then the connection closes: every time.
    o.script(
        "/a/s1.ts",
        Script::ok(vec![9u8; 5000]).fault(Fault::Truncate(1000)),
    );
    let fetcher = HttpFetcher::new(Duration::from_secs(5), 2);
    let sink = StoreSink::new(Store::open(store_config(tmp.path())).await.expect("open"));
    let url = Url::parse(&format!("{}/a/index.m3u8", o.url())).expect("url");
    let (_, r) = walk_and_ingest(&url, &fetcher, &sink, &Arc::new(Progress::default())).await;
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(r.failures.len(), 1, "{r:?}");
    assert!(r.failures[0].url.ends_with("/a/s1.ts"), "{r:?}");
    // hyper notices the short body itself ("error reading a body from connection").
    assert!(
        r.failures[0].reason.contains("body"),
        "{}",
        r.failures[0].reason
    );
    // The first GET and the two retries the fetcher allows; no partial object is served.
    let gets = o
        .seen("/a/s1.ts")
        .iter()
        .filter(|s| s.method == "GET")
        .count();
    assert_eq!(gets, 3);
    let key = cache_key(HOST, "/a/s1.ts", &[]);
    assert!(sink.store.lookup(key.as_bytes()).await.is_none());
    // The good segment was stored whole, then released (unpinned) with the failed asset.
    let hit = sink
        .store
        .lookup(cache_key(HOST, "/a/s0.ts", &[]).as_bytes())
        .await
        .expect("s0 stored");
    assert_eq!(hit.body, Bytes::from(vec![7u8; 3000]));
    assert!(!hit.meta.pinned);
    sink.store.close().await.expect("close");
}

#[tokio::test]
async fn cli_store_mode_reads_a_local_directory_into_the_store_byte_for_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store_path = tmp.path().join("edge.store");
    let dir = fixtures().join("hls-fmp4");
    vedge::ingest::run_cli(cli(&[
        &dir.to_string_lossy(),
        "--store",
        &store_path.to_string_lossy(),
        "--store-size",
        "64MiB",
        "--store-region-size",
        "4MiB",
        "--host",
        HOST,
        "--path-prefix",
        "/vod/f",
        "--json",
    ]))
    .await
    .expect("ingest");
    let store = Store::open(store_config(tmp.path())).await.expect("reopen");
    let viewer_paths = files(&dir, "/vod/f");
    assert!(viewer_paths.len() > 10);
    for path in viewer_paths {
        let on_disk = std::fs::read(dir.join(path.trim_start_matches("/vod/f/"))).expect("read");
        let key = cache_key(HOST, &path, &[]);
        let hit = store
            .lookup(key.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{key} missing"));
        assert!(
            hit.body == on_disk,
            "{key}: stored bytes differ from the file"
        );
        assert!(hit.meta.pinned, "{key}");
    }
    store.close().await.expect("close");
}

/// A store-backed edge whose regions take objects of up to a quarter of `region_size`.
async fn store_edge(origin: &str, tmp: &Path, region_size: u64) -> TestEdge {
    TestEdge::start_config(store_edge_config(origin, tmp, region_size)).await
}

/// The config of `store_edge`.
fn store_edge_config(origin: &str, tmp: &Path, region_size: u64) -> vedge::config::Config {
    let mut config = vedge::config::Config::for_origin(origin).expect("config");
    config.store = Some(vedge::config::StoreSettings {
        path: tmp.join("edge.store"),
        // Three regions (the store's minimum) plus its superblocks and snapshot area.
        size: 3 * region_size + (16 << 20),
        region_size,
        region_size_chosen: true,
        reformat: false,
        io_engine: vedge_storage::EngineChoice::Psync,
        admit_window: Duration::from_secs(600),
        write_rate: None,
    });
    config.origin_client.preconnect.enabled = false;
    // For the tests that push over the admin API (`TestEdge::admin`).
    config.admin.token = Some(crate::support::binary::ADMIN_TOKEN.into());
    config
}

/// Deterministic, position-dependent bytes (a shifted or truncated copy does not compare equal).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect()
}

#[tokio::test]
async fn a_63_mib_put_streams_into_the_store_and_reads_back_byte_identical() {
    use vedge::ingest::admin::{handle, IngestJobs};
    let tmp = tempfile::tempdir().expect("tempdir");
    // 256 MiB regions: the largest object is a quarter region, header included.
    let running = store_edge("http://127.0.0.1:9", tmp.path(), 256 << 20).await;
    let edge = running.edge.clone();
    let jobs = Arc::new(IngestJobs::default());
    let data = Bytes::from(pattern(63 << 20));
    // The body arrives in 1 MiB frames, as from a socket, with its Content-Length.
    let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = data
        .chunks(1 << 20)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::builder()
        .method("PUT")
        .uri("/admin/objects/big/seg.ts")
        .header("x-vedge-host", HOST)
        .header("content-length", data.len())
        .body(body)
        .expect("request");
    let res = handle(&edge, &jobs, req).await.expect("routed");
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = viewer_key(&edge, "/big/seg.ts");
    // Streamed to the store only: no RAM-tier copy until a viewer asks.
    assert!(
        edge.ram.get(&key).is_none(),
        "large push not copied into RAM"
    );
    let store = edge.store.as_ref().expect("store");
    let hit = store.lookup(key.as_bytes()).await.expect("on disk");
    assert!(hit.meta.pinned);
    assert!(hit.body == data, "stored bytes differ");
    let (obj, _) = edge.lookup(&key).await.expect("served");
    assert!(obj.body == data);
}

#[tokio::test]
async fn a_put_shorter_than_its_content_length_stores_nothing() {
    use vedge::ingest::admin::{handle, IngestJobs};
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge("http://127.0.0.1:9", tmp.path(), 16 << 20).await;
    let edge = running.edge.clone();
    let jobs = Arc::new(IngestJobs::default());
    let req = Request::builder()
        .method("PUT")
        .uri("/admin/objects/short/seg.ts")
        .header("x-vedge-host", HOST)
        .header("content-length", 3 << 20)
        .body(Full::new(Bytes::from(pattern(2 << 20))))
        .expect("request");
    let res = handle(&edge, &jobs, req).await.expect("routed");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(edge
        .lookup(&viewer_key(&edge, "/short/seg.ts"))
        .await
        .is_none());
}

#[tokio::test]
async fn admin_ingest_streams_large_segments_into_the_store_and_small_ones_into_ram() {
    let src = tempfile::tempdir().expect("tempdir");
    let seg = pattern(3 << 20);
    std::fs::create_dir_all(src.path().join("big")).expect("mkdir");
    std::fs::write(src.path().join("big/seg0.ts"), &seg).expect("segment");
    std::fs::write(
        src.path().join("big/index.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-PLAYLIST-TYPE:VOD\n\
         #EXTINF:6.0,\nseg0.ts\n#EXT-X-ENDLIST\n",
    )
    .expect("playlist");
    let o = origin(src.path().to_path_buf(), Vec::new()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&format!("http://{}", o.addr), tmp.path(), 16 << 20).await;
    let edge = running.edge.clone();
    let admin = format!("http://{}", admin_server(edge.clone(), "s3cret").await);
    let client = vedge::ingest::client::AdminClient::new(&admin, "s3cret", HOST);
    let status = client
        .run_job(&[format!("http://{}/big/index.m3u8", o.addr)], false)
        .await
        .expect("job");
    assert_eq!(status["assets"][0]["outcome"], "published", "{status}");
    let seg_key = viewer_key(&edge, "/big/seg0.ts");
    let playlist_key = viewer_key(&edge, "/big/index.m3u8");
    assert!(
        edge.ram.get(&seg_key).is_none(),
        "3 MiB segment streamed to disk only"
    );
    assert!(
        edge.ram.get(&playlist_key).is_some(),
        "small objects also in RAM"
    );
    let store = edge.store.as_ref().expect("store");
    let hit = store.lookup(seg_key.as_bytes()).await.expect("on disk");
    assert!(hit.meta.pinned);
    assert!(hit.body[..] == seg[..], "stored bytes differ");
    o.task.abort();
}

/// `GET path` with the admin token from the admin API on loopback `port`: (status, JSON).
async fn admin_get_json(port: u16, path: &str) -> (u16, serde_json::Value) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin connects");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        crate::support::binary::ADMIN_TOKEN
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let r = crate::support::edge::read_raw(&mut s).await;
    let (_, b) = r.split();
    (r.status(), serde_json::from_slice(b).unwrap_or_default())
}

/// `POST /admin/ingest` fetches only from the serving route's own origins (and shields): an
/// asset URL on any other host is refused with a 400 naming it, and a manifest's absolute
/// references to other hosts are left out and reported, never fetched, even with
/// `allow_other_hosts`. Before, the edge fetched whatever URL the request or a manifest named
/// (a request forgery from the edge's network, and the answer stored under a viewer's key).
#[tokio::test]
async fn admin_ingest_fetches_only_from_the_routes_own_origins() {
    use crate::support::edge::{admin_post, edge_config};
    use crate::support::{Origin as Scripted, Script};
    let origin = Scripted::start().await;
    // Stands for a host the edge can reach and nobody should make it fetch from.
    let other = Scripted::start().await;
    let elsewhere = other.addr();
    let playlist = |segments: &[String]| {
        let mut p = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n");
        for s in segments {
            p.push_str(&format!("#EXTINF:4,\n{s}\n"));
        }
        p + "#EXT-X-ENDLIST\n"
    };
    origin.script(
        "/vod/master.m3u8",
        Script::ok(format!(
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nlow.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2000\nhttp://{elsewhere}/vod/high.m3u8\n"
        )),
    );
    origin.script(
        "/vod/low.m3u8",
        Script::ok(playlist(&[
            "a.ts".into(),
            format!("http://{elsewhere}/vod/b.ts"),
        ])),
    );
    origin.script("/vod/a.ts", Script::ok("segment a"));
    for p in [
        "/vod/master.m3u8",
        "/vod/high.m3u8",
        "/vod/b.ts",
        "/internal",
    ] {
        other.script(p, Script::ok(playlist(&["c.ts".into()])));
    }
    other.script("/vod/c.ts", Script::ok("segment c"));
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(crate::support::binary::ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let port = api.addr.port();

    let (refused, body) = admin_post(
        port,
        "/admin/ingest",
        &format!(r#"{{"assets": ["http://{elsewhere}/vod/master.m3u8"]}}"#),
    )
    .await;
    let (status, job) = admin_post(
        port,
        "/admin/ingest",
        &format!(
            r#"{{"assets": ["{}/vod/master.m3u8"], "allow_other_hosts": true}}"#,
            origin.url()
        ),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = serde_json::from_str::<serde_json::Value>(&job).expect("json")["id"]
        .as_u64()
        .expect("id");
    let mut report = serde_json::Value::Null;
    for _ in 0..500 {
        let (_, v) = admin_get_json(port, &format!("/admin/ingest/{id}")).await;
        if v["done"] == true {
            report = v["assets"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked: Vec<(&str, usize)> = [
        "/vod/master.m3u8",
        "/vod/high.m3u8",
        "/vod/b.ts",
        "/vod/c.ts",
    ]
    .into_iter()
    .map(|p| (p, other.count(p)))
    .filter(|(_, n)| *n > 0)
    .collect();
    println!(
        "asset on another host: {refused} {body}; requests the other host saw: {asked:?}; \
         report: {report}"
    );
    assert_eq!(refused, 400, "{body}");
    assert!(
        body.contains(&format!("http://{elsewhere}/vod/master.m3u8")),
        "the error names the URL: {body}"
    );
    assert_eq!(asked, vec![], "nothing was fetched from the other host");
    assert_eq!(report["outcome"], "published", "{report}");
    assert_eq!(
        (&report["objects"], &report["stored"]),
        (&3.into(), &3.into()),
        "master.m3u8, low.m3u8 and a.ts: {report}"
    );
    let left_out: Vec<&str> = report["not_fetched"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["url"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        left_out,
        [
            format!("http://{elsewhere}/vod/high.m3u8"),
            format!("http://{elsewhere}/vod/b.ts"),
        ],
        "{report}"
    );
}

/// Two routes to the same https origin with different TLS settings: each ingest fetch uses its
/// own route's. Before, the fetcher kept one TLS client per authority, so whichever route was
/// fetched first decided the trust, SNI and verification of every later fetch there: here the
/// route without the CA went first, and the route that trusts the origin's CA then failed its
/// handshake too.
#[tokio::test]
async fn admin_ingest_uses_each_routes_own_tls_settings_on_a_shared_origin() {
    use crate::support::edge::admin_post;
    use crate::support::tls_origin::{TestCa, TlsOrigin};
    use vedge::config::{RawConfig, RawRoute};
    let ca = TestCa::new();
    let tls = TlsOrigin::start(&ca, &["origin.test"], false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA file");
    let route = |prefix: &str, ca_file: Option<PathBuf>| RawRoute {
        prefix: prefix.into(),
        origin: tls.ip_url(),
        sni: Some("origin.test".into()),
        ca_file,
        ..RawRoute::default()
    };
    let mut raw = RawConfig {
        origin: Some(tls.ip_url()),
        ram_size: Some("64MiB".into()),
        // `/untrusted/` has the platform's roots, which do not know the test CA.
        routes: vec![
            route("/trusted/", Some(ca_file)),
            route("/untrusted/", None),
        ],
        admin_token: Some(crate::support::binary::ADMIN_TOKEN.into()),
        ..RawConfig::default()
    };
    raw.server.shutdown_grace = Some("1s".into());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let port = api.addr.port();
    let (status, job) = admin_post(
        port,
        "/admin/ingest",
        &format!(
            r#"{{"assets": ["{0}/untrusted/master.m3u8", "{0}/trusted/master.m3u8"]}}"#,
            tls.ip_url()
        ),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = serde_json::from_str::<serde_json::Value>(&job).expect("json")["id"]
        .as_u64()
        .expect("id");
    let mut assets = serde_json::Value::Null;
    for _ in 0..500 {
        let (_, v) = admin_get_json(port, &format!("/admin/ingest/{id}")).await;
        if v["done"] == true {
            assets = v["assets"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors: Vec<&str> = (0..2)
        .map(|i| assets[i]["error"].as_str().unwrap_or(""))
        .collect();
    let seen = (
        tls.count("/untrusted/master.m3u8"),
        tls.count("/trusted/master.m3u8"),
    );
    println!("requests the origin saw (untrusted, trusted): {seen:?}; errors: {errors:?}");
    // The origin answers every path with `tls:<path>`: a trusted fetch gets that far, and the
    // walk then says it is no playlist.
    assert_eq!(seen, (0, 1), "{errors:?}");
    assert!(errors[0].contains("fetching"), "{errors:?}");
    assert!(
        errors[1].contains("neither an HLS playlist nor a DASH MPD"),
        "{errors:?}"
    );
}

/// Bug: a small `PUT /admin/objects/...` (read whole, then stored as one durable write) that a
/// newer `PUT` of the same key replaced while it waited for the device was answered 500, as if
/// the edge had failed; a large (streamed) one was answered 409 Conflict. Both are 409 now:
/// the older push is not on disk because the newer one is, which is the operator's race, not
/// the edge's fault.
#[tokio::test]
async fn a_small_put_replaced_by_a_newer_put_before_it_was_written_is_a_conflict() {
    use crate::support::edge::admin_send;
    use crate::support::Origin as Scripted;
    let origin = Scripted::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();
    let store = running.edge.store.clone().expect("store");
    let key = viewer_key(&running.edge, "/vod/seg.ts");
    let put = |body: &'static [u8]| {
        tokio::spawn(async move {
            let headers = [("X-Vedge-Host", HOST), ("Content-Type", "video/mp2t")];
            admin_send(port, "PUT", "/admin/objects/vod/seg.ts", &headers, body).await
        })
    };
    let (older_body, newer_body): (&[u8], &[u8]) = (b"the older push", b"the newer push");

    // The device is slow: the older push's write waits, and the newer one replaces it.
    store.hold_writer(true);
    let older = put(older_body);
    store.writer_held().await;
    let newer = put(newer_body);
    // A queued write is what lookups see: the newer push is queued once they see its bytes.
    let mut queued = false;
    for _ in 0..1000 {
        if let Some(hit) = store.lookup(key.as_bytes()).await {
            if hit.body[..] == newer_body[..] {
                queued = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(queued, "the newer PUT never reached the store");
    store.hold_writer(false);

    let (older_status, older_answer) = older.await.expect("older PUT");
    let (newer_status, newer_answer) = newer.await.expect("newer PUT");
    assert_eq!(
        older_status, 409,
        "the PUT a newer one replaced: {older_answer}"
    );
    assert_eq!(newer_status, 201, "the newer PUT: {newer_answer}");
    let hit = store.lookup(key.as_bytes()).await.expect("stored");
    assert!(hit.meta.pinned && hit.body[..] == newer_body[..]);
    let served = running.get("/vod/seg.ts").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(&served.body[..], newer_body, "x-cache {}", served.x_cache());
    assert_eq!(origin.count("/vod/seg.ts"), 0, "the origin was never asked");
}

/// Bug: under a store write-rate cap (`store.write_rate`), a viewer's fill that began before an
/// operator's `PUT` of its key, and ended after it, put the origin's bytes in the RAM tier over
/// the push, and viewers were served them: the store answered the fill's insert with its rate
/// refusal before it looked for the push, and the edge keeps a copy the store refused in RAM
/// unless a push is the reason. The store reports the push first now, and viewers get it.
#[tokio::test]
async fn a_fill_begun_before_a_put_does_not_shadow_it_in_ram_under_a_write_rate_cap() {
    use crate::support::edge::admin_send;
    use crate::support::{Gate, Origin as Scripted};
    let origin = Scripted::start().await;
    let gate = Gate::new();
    let pulled: &[u8] = b"the origin's bytes, fetched before the push";
    script_segment(&origin, pulled, Some(&gate));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = store_edge_config(&origin.url(), tmp.path(), 16 << 20);
    if let Some(store) = config.store.as_mut() {
        // Less than one extent a second: the store refuses every pulled object for the rate.
        store.write_rate = Some(1_000);
    }
    let running = TestEdge::start_config(config).await;
    let api = running.admin().await;
    let port = api.addr.port();

    // A viewer's miss: its fill takes the store's mark, then waits for the origin, while
    // the operator pushes the key.
    let pushed: &[u8] = b"the operator's push";
    let push = async {
        crate::support::edge::until("the fill asked the origin", || {
            origin.count("/vod/seg.ts") == 1
        })
        .await;
        let headers = [("X-Vedge-Host", HOST), ("Content-Type", "video/mp2t")];
        let answer = admin_send(port, "PUT", "/admin/objects/vod/seg.ts", &headers, pushed).await;
        gate.open();
        answer
    };
    let (first, (status, answer)) = tokio::join!(running.get("/vod/seg.ts"), push);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        &first.body[..],
        pulled,
        "the fill's viewer gets what it was sent"
    );
    running.settle().await;

    let after = running.get("/vod/seg.ts").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&after.body),
        String::from_utf8_lossy(pushed),
        "x-cache {}",
        after.x_cache()
    );
    assert_eq!(origin.count("/vod/seg.ts"), 1);
}

/// Bug: a RAM copy the store had not taken yet was offered to it again on its next hit against
/// mark 0, as if fetched before every push: a fill that refreshed a soft-purged push, whose copy
/// the store refused for admission (a full store's first sighting), lost that copy on its next
/// hit, and the request after it read the stale push from disk and went to the origin again,
/// every second request. The offer is made against the mark of the fill that fetched the copy
/// now: a push older than the fill does not outlive it. Under a write-rate cap too, where the
/// rate refusal used to come first and hide the push (`SkipReason` order, `Store::enqueue`).
#[tokio::test]
async fn a_refresh_of_a_soft_purged_push_stays_in_ram_when_the_store_refuses_it() {
    let mut got = Vec::new();
    for refusal in ["first sighting", "write rate"] {
        let (fetches, served) = refetches_of_a_refreshed_push(refusal == "write rate").await;
        got.push((refusal, fetches, served));
    }
    // Each request: the refresh, from the fill, then from RAM; the origin asked once.
    let refreshed = |served: &[(String, String)]| {
        served
            .iter()
            .all(|(_, body)| body == "the origin's bytes, fetched after the push")
    };
    assert!(
        got.iter()
            .all(|(_, fetches, served)| *fetches == 1 && refreshed(served)),
        "(store refusal, origin fetches, [(x-cache, body)] per request): {got:?}"
    );
}

/// Pushes `/vod/seg.ts`, soft-purges it and requests it four times from an edge whose store
/// refuses pulled objects (for the rate with `rate_cap`, else as first sightings in a full
/// store): (origin fetches, `X-Cache` and body of each request).
async fn refetches_of_a_refreshed_push(rate_cap: bool) -> (usize, Vec<(String, String)>) {
    use crate::support::edge::{admin_purge, admin_send};
    use crate::support::Origin as Scripted;
    let origin = Scripted::start().await;
    let pulled: &[u8] = b"the origin's bytes, fetched after the push";
    script_segment(&origin, pulled, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = store_edge_config(&origin.url(), tmp.path(), 1 << 20);
    if let (Some(store), true) = (config.store.as_mut(), rate_cap) {
        // Less than one extent a second: the store refuses every pulled object for the rate.
        store.write_rate = Some(1_000);
    }
    let running = TestEdge::start_config(config).await;
    if !rate_cap {
        // Every region but reclaim's spare in use: pulled objects need a second sighting.
        let store = running.edge.store.clone().expect("store");
        for i in 0..1000 {
            let st = store.stats();
            if st.regions_in_use + 1 >= st.regions {
                break;
            }
            let k = format!("filler{i}");
            let stored = store.insert_durable(
                k.as_bytes(),
                filler_meta(),
                Bytes::from(pattern(200_000)),
                vedge_storage::Source::Push,
            );
            stored.await.expect("filler stored");
        }
    }
    let api = running.admin().await;
    let port = api.addr.port();
    let headers = [("X-Vedge-Host", HOST), ("Content-Type", "video/mp2t")];
    let pushed: &[u8] = b"the operator's push";
    let (status, answer) =
        admin_send(port, "PUT", "/admin/objects/vod/seg.ts", &headers, pushed).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = admin_purge(
        port,
        &format!(r#"{{"urls":["/vod/seg.ts"],"host":"{HOST}","soft":true}}"#),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // The push is stale: a fill refreshes it, and its copy stays in RAM (the store refused it).
    let mut served = Vec::new();
    for _ in 0..4 {
        let r = running.get("/vod/seg.ts").await;
        running.settle().await;
        assert_eq!(r.status, StatusCode::OK);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        served.push((r.x_cache().to_string(), body));
    }
    (origin.count("/vod/seg.ts"), served)
}

/// Bug: a soft-purged object read from the store was answered as a fresh HIT: the lookup makes
/// it stale as of its own clock reading, and the request judged it at the instant it took
/// before the lookup, when it was not stale yet. It is judged after the lookup now: the purged
/// push is refreshed from the origin.
#[tokio::test]
async fn a_soft_purged_push_read_from_disk_is_not_served_as_fresh() {
    use crate::support::edge::{admin_purge, admin_send};
    use crate::support::Origin as Scripted;
    let origin = Scripted::start().await;
    let pulled: &[u8] = b"the origin's bytes, fetched after the push";
    script_segment(&origin, pulled, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 1 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();
    let headers = [("X-Vedge-Host", HOST), ("Content-Type", "video/mp2t")];
    let (status, answer) = admin_send(
        port,
        "PUT",
        "/admin/objects/vod/seg.ts",
        &headers,
        b"the operator's push",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    // On disk only: the next lookup reads the store.
    running
        .edge
        .ram
        .remove(&viewer_key(&running.edge, "/vod/seg.ts"));
    let (status, answer) = admin_purge(
        port,
        &format!(r#"{{"urls":["/vod/seg.ts"],"host":"{HOST}","soft":true}}"#),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let r = running.get("/vod/seg.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.x_cache(), String::from_utf8_lossy(&r.body).as_ref()),
        ("EXPIRED", "the origin's bytes, fetched after the push"),
        "the soft-purged push"
    );
    assert_eq!(origin.count("/vod/seg.ts"), 1);
}

/// Bug: whether a fill outlived a push (`PushedSince`) was judged by where the push lay, so a
/// region reclaim that moved the push into a newer region while a fill ran made it look pushed
/// after that fill began: the fill's copy, fetched after the push, was thrown away, where
/// without the move it replaces the push (as a refresh of a stale push does). It is judged by
/// when the push was written now. The fill here begins after the push because a device read
/// error made the push's lookup a miss.
#[tokio::test]
async fn a_fill_begun_after_a_push_replaces_it_though_reclaim_moved_the_push_meanwhile() {
    use crate::support::edge::admin_send;
    use crate::support::{Gate, Origin as Scripted};
    let origin = Scripted::start().await;
    let gate = Gate::new();
    let pulled: &[u8] = b"the origin's bytes, fetched after the push";
    script_segment(&origin, pulled, Some(&gate));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = store_edge_config(&origin.url(), tmp.path(), 1 << 20);
    if let Some(store) = config.store.as_mut() {
        // Pulled objects are admitted on first sight, a full store or not.
        store.admit_window = Duration::ZERO;
    }
    let running = TestEdge::start_config(config).await;
    let api = running.admin().await;
    let store = running.edge.store.clone().expect("store");
    let key = viewer_key(&running.edge, "/vod/seg.ts");
    let headers = [("X-Vedge-Host", HOST), ("Content-Type", "video/mp2t")];
    let pushed: &[u8] = b"the operator's push";
    let (status, answer) = admin_send(
        api.addr.port(),
        "PUT",
        "/admin/objects/vod/seg.ts",
        &headers,
        pushed,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    // The next viewer reads the push from disk, and that read fails: a miss, and a fill.
    running.edge.ram.remove(&key);
    store.inject_read_errno(5, 1);

    let move_the_push = async {
        crate::support::edge::until("the fill asked the origin", || {
            origin.count("/vod/seg.ts") == 1
        })
        .await;
        // Other writes until the push's region is reclaimed: the push, pinned, is copied into
        // a newer region (nothing else there is kept: nothing else was hit).
        for i in 0..1000 {
            if store.stats().regions_evicted > 0 {
                break;
            }
            let k = format!("filler{i}");
            let body = Bytes::from(pattern(200_000));
            let stored = store.insert_durable(
                k.as_bytes(),
                filler_meta(),
                body,
                vedge_storage::Source::Push,
            );
            stored.await.expect("filler stored");
        }
        assert!(store.stats().regions_evicted > 0, "no region was reclaimed");
        assert_eq!(store.stats().reinsertions, 1, "reclaim kept the push alone");
        gate.open();
    };
    let (first, ()) = tokio::join!(running.get("/vod/seg.ts"), move_the_push);
    assert_eq!(&first.body[..], pulled);
    running.settle().await;
    store.flush().await;

    let hit = store.lookup(key.as_bytes()).await.expect("stored");
    assert!(
        !hit.meta.pinned && hit.body[..] == pulled[..],
        "the fill was not stored: the store holds {} ({} bytes)",
        if hit.meta.pinned {
            "the push"
        } else {
            "another copy"
        },
        hit.body.len()
    );
    let after = running.get("/vod/seg.ts").await;
    assert_eq!(&after.body[..], pulled, "x-cache {}", after.x_cache());
    assert_eq!(origin.count("/vod/seg.ts"), 1, "no refetch");
}

/// Metadata for the objects a test writes into an edge's store to fill it.
fn filler_meta() -> vedge_storage::Meta {
    vedge_storage::Meta {
        head: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
        stored_at: std::time::SystemTime::now(),
        expires_at: std::time::SystemTime::now() + Duration::from_secs(3600),
        tags: Vec::new(),
        pinned: false,
    }
}

/// Scripts `/vod/seg.ts` at `origin`: `body`, fresh for an hour, held until `gate` opens.
fn script_segment(
    origin: &crate::support::Origin,
    body: &'static [u8],
    gate: Option<&crate::support::Gate>,
) {
    let mut script = crate::support::Script::ok(body)
        .header("content-type", "video/mp2t")
        .header("cache-control", "max-age=3600");
    if let Some(gate) = gate {
        script = script.gate(gate);
    }
    origin.script("/vod/seg.ts", script);
}

/// A viewer's fill that began before an operator's `PUT` of the same key, and ends after the
/// push is on disk, does not replace the push: the fill's viewer gets the origin's bytes (it
/// asked first), every viewer after it the pushed ones, pinned. Before, the fill's plain insert
/// replaced the pinned object on disk and its copy went to RAM.
#[tokio::test]
async fn a_fill_that_began_before_a_push_does_not_replace_it() {
    use crate::support::origin::Gate;
    use crate::support::{Origin as Scripted, Script};
    use vedge::ingest::admin::{handle, IngestJobs};
    let origin = Scripted::start().await;
    let pulled: Vec<u8> = pattern(300_000).iter().map(|b| b ^ 0x33).collect();
    let gate = Gate::new();
    origin.script(
        "/vod/seg2.ts",
        Script::ok(pulled.clone())
            .header("content-type", "video/mp2t")
            .header("cache-control", "max-age=3600")
            .gate(&gate),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = Arc::new(store_edge(&origin.url(), tmp.path(), 16 << 20).await);
    let edge = running.edge.clone();
    let store = edge.store.clone().expect("store");
    let jobs = Arc::new(IngestJobs::default());

    // The viewer's miss reaches the origin, which holds its answer.
    let miss = tokio::spawn({
        let running = running.clone();
        async move { running.get("/vod/seg2.ts").await }
    });
    for _ in 0..200 {
        if origin.count("/vod/seg2.ts") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.count("/vod/seg2.ts"), 1, "the fill asked the origin");

    // Meanwhile the operator pushes the key, and the push is on disk.
    let pushed = Bytes::from(pattern(200_000));
    let req = Request::builder()
        .method("PUT")
        .uri("/admin/objects/vod/seg2.ts")
        .header("x-vedge-host", HOST)
        .header("content-type", "video/mp2t")
        .header("content-length", pushed.len())
        .body(Full::new(pushed.clone()))
        .expect("request");
    let res = handle(&edge, &jobs, req).await.expect("routed");
    assert_eq!(res.status(), StatusCode::CREATED);

    // Now the origin answers and the fill ends.
    gate.open();
    let first = miss.await.expect("viewer task");
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.body[..] == pulled[..],
        "the first viewer gets what it asked for"
    );
    running.settle().await;
    store.flush().await;

    let key = viewer_key(&edge, "/vod/seg2.ts");
    let hit = store.lookup(key.as_bytes()).await.expect("stored");
    assert!(
        hit.meta.pinned && hit.body == pushed,
        "the fill replaced the push on disk (pinned {}, {} bytes)",
        hit.meta.pinned,
        hit.body.len()
    );
    let after = running.get("/vod/seg2.ts").await;
    assert!(
        after.body == pushed,
        "the next viewer got the fill's copy ({} bytes, x-cache {})",
        after.body.len(),
        after.x_cache()
    );
    assert_eq!(origin.count("/vod/seg2.ts"), 1, "no refetch");
}

/// Bug: a stranger's POST (or PUT, DELETE, any unsafe method) to a pushed object's URL, which
/// the origin answered 2xx, removed the operator's push from RAM and disk (RFC 9111 §4.4
/// invalidation): every viewer after it missed to the origin, which for a pushed VOD library
/// may not hold the asset at all. A push is the version the operator chose; the origin's
/// answer to a viewer's request no longer removes it (a pulled object still goes).
#[tokio::test]
async fn an_unsafe_method_answered_2xx_never_removes_a_pushed_object() {
    use crate::support::edge::admin_send;
    use crate::support::{Origin as Scripted, Script};
    let origin = Scripted::start().await;
    origin.script("/vod/seg.ts", Script::ok("origin bytes"));
    origin.script(
        "/vod/pulled.ts",
        Script::ok("pulled").header("cache-control", "max-age=3600"),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let headers = [("X-Vedge-Host", HOST), ("Content-Type", "video/mp2t")];
    let (status, answer) = admin_send(
        api.addr.port(),
        "PUT",
        "/admin/objects/vod/seg.ts",
        &headers,
        b"pushed bytes",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    running.get("/vod/pulled.ts").await;
    running.settle().await;

    for method in ["POST", "PUT", "DELETE", "FOO"] {
        for path in ["/vod/seg.ts", "/vod/pulled.ts"] {
            let m = http::Method::from_bytes(method.as_bytes()).expect("method");
            let r = running
                .send(running.req(m, path), Bytes::from_static(b"x"))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{method} {path}");
        }
        let r = running.get("/vod/seg.ts").await;
        assert_eq!(&r.body[..], b"pushed bytes", "{method}: {}", r.x_cache());
        assert_eq!(r.x_cache(), "HIT", "{method}");
    }
    assert_eq!(origin.count("/vod/seg.ts"), 4, "only the unsafe requests");
    // A pulled object is still invalidated.
    assert_eq!(running.get("/vod/pulled.ts").await.x_cache(), "MISS");
}

/// Bug: `PUT /admin/objects` kept every field of the request as the pushed object's response
/// fields: a `curl -T` carrying the operator's `Cookie` served that cookie, the admin `Host`,
/// `Expect`, `User-Agent` and `Accept` to every viewer of the object. Fields of the request
/// stay out; the object's own (`Content-Type`, `Cache-Control`, custom ones) stay in.
#[tokio::test]
async fn a_push_keeps_the_object_s_fields_and_none_of_the_request_s() {
    use crate::support::edge::admin_send;
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge("http://127.0.0.1:9", tmp.path(), 1 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();
    let headers = [
        ("X-Vedge-Host", HOST),
        ("Content-Type", "video/mp2t"),
        ("Cache-Control", "max-age=600"),
        ("X-Asset-Id", "a-17"),
        ("Cookie", "admin_session=s3cr3t"),
        ("User-Agent", "curl/7.88.1"),
        ("Accept", "*/*"),
        ("Accept-Encoding", "identity"),
        ("If-None-Match", "\"x\""),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Sec-Fetch-Mode", "cors"),
        ("X-Forwarded-Server", "admin-proxy.internal"),
        ("X-Original-URL", "/internal/admin"),
        ("True-Client-IP", "10.1.2.3"),
        ("CF-Connecting-IP", "10.1.2.3"),
        (
            "Traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("X-Request-Id", "r-1"),
        ("Prefer", "return=minimal"),
        ("Access-Control-Request-Method", "PUT"),
        ("Save-Data", "on"),
    ];
    let (status, answer) = admin_send(
        port,
        "PUT",
        "/admin/objects/vod/seg.ts",
        &headers,
        b"pushed",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let r = running.get("/vod/seg.ts").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(r.body.as_ref(), b"pushed");
    for (name, value) in [
        ("content-type", "video/mp2t"),
        ("cache-control", "max-age=600"),
        ("x-asset-id", "a-17"),
    ] {
        assert_eq!(r.h(name), value, "{name} is the object's");
    }
    for name in [
        "cookie",
        "host",
        "user-agent",
        "accept",
        "accept-encoding",
        "if-none-match",
        "x-forwarded-for",
        "sec-fetch-mode",
        "authorization",
        "x-vedge-host",
        "x-forwarded-server",
        "x-original-url",
        "true-client-ip",
        "cf-connecting-ip",
        "traceparent",
        "x-request-id",
        "prefer",
        "access-control-request-method",
        "save-data",
    ] {
        assert!(
            r.headers.get(name).is_none(),
            "{name} of the push request served to a viewer: {:?}",
            r.headers.get(name)
        );
    }
}

/// `POST /admin/ingest` of `asset` (a path on `origin`) with `concurrency` to the admin API on
/// `port`: the job's id.
async fn start_job(port: u16, origin: &str, asset: &str, concurrency: usize) -> u64 {
    let body = format!(r#"{{"assets": ["{origin}{asset}"], "concurrency": {concurrency}}}"#);
    post_job(port, &body).await
}

/// `POST /admin/ingest` of the JSON `body` to the admin API on `port`: the job's id.
pub(crate) async fn post_job(port: u16, body: &str) -> u64 {
    let (status, text) = crate::support::edge::admin_post(port, "/admin/ingest", body).await;
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["id"].as_u64().expect("id")
}

/// Polls job `id` on the admin API on `port` until it is done (at most 20 s): its status.
pub(crate) async fn finished_job(port: u16, id: u64) -> serde_json::Value {
    for _ in 0..2000 {
        let (status, v) = admin_get_json(port, &format!("/admin/ingest/{id}")).await;
        assert_eq!(status, 200, "{v}");
        if v["done"] == serde_json::Value::Bool(true) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("ingest job {id} did not finish");
}

/// A VOD media playlist listing `segments`.
fn playlist_of(segments: &[&str]) -> String {
    let mut p = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    for s in segments {
        p.push_str(&format!("#EXTINF:2.0,\n{s}\n"));
    }
    p.push_str("#EXT-X-ENDLIST\n");
    p
}

/// Bug: two ingest jobs of one asset at once: the job whose queued segment write the other
/// job's write of the same key replaced failed ("write superseded before it reached the
/// device"), and a job's release (its failure, or `DELETE /admin/assets/{id}`) unpinned every
/// key it had stored, though the other job had published the asset with them: the store then
/// evicted a published asset's segments. A write replaced by the same object is not a
/// failure now, and keys are held per job: each stays pinned until the last job holding it
/// lets go. (The writes are made to meet behind a held store writer once both jobs have read
/// their bodies; if one slipped through first, only the release half is tested.)
#[tokio::test]
async fn two_jobs_of_one_asset_both_publish_and_one_delete_leaves_it_pinned() {
    use crate::support::{Gate, Origin as Scripted, Script};
    let origin = Scripted::start().await;
    let gate = Gate::new();
    origin.script(
        "/two/index.m3u8",
        Script::ok(playlist_of(&["s0.ts", "s1.ts"])),
    );
    origin.script("/two/s0.ts", Script::ok(pattern(200_000)).gate(&gate));
    origin.script("/two/s1.ts", Script::ok(vec![7u8; 150_000]).gate(&gate));
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();
    let store = running.edge.store.clone().expect("store");
    let keys: Vec<String> = ["/two/s0.ts", "/two/s1.ts", "/two/index.m3u8"]
        .iter()
        .map(|p| viewer_key(&running.edge, p))
        .collect();

    // Both jobs probe the segments before either stores one (the probes wait at the gate), so
    // both fetch and write them; the writes wait for the device, where the later replaces the
    // earlier.
    store.hold_writer(true);
    let first = start_job(port, &origin.url(), "/two/index.m3u8", 2).await;
    let second = start_job(port, &origin.url(), "/two/index.m3u8", 2).await;
    crate::support::edge::until("both jobs probed both segments", || {
        origin.count("/two/s0.ts") == 2 && origin.count("/two/s1.ts") == 2
    })
    .await;
    gate.open();
    crate::support::edge::until("both jobs read both segments", || {
        ["/two/s0.ts", "/two/s1.ts"].iter().all(|p| {
            origin
                .sent(p)
                .iter()
                .filter(|s| s.bytes > 0 && s.last_byte.is_some())
                .count()
                == 2
        })
    })
    .await;
    store.writer_held().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.hold_writer(false);

    for id in [first, second] {
        let status = finished_job(port, id).await;
        let asset = &status["assets"][0];
        assert_eq!(asset["outcome"], "published", "job {id}: {status}");
    }
    for k in &keys {
        assert!(store.is_pinned(k.as_bytes()), "{k} pinned after both jobs");
    }
    // Releasing one job leaves everything the other still holds pinned.
    let (status, text) = crate::support::edge::admin_send(
        port,
        "DELETE",
        &format!("/admin/assets/{first}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    for k in &keys {
        assert!(
            store.is_pinned(k.as_bytes()),
            "{k} unpinned by one job's DELETE while the other job still publishes it"
        );
    }
    // The last holder's release unpins.
    let (status, text) = crate::support::edge::admin_send(
        port,
        "DELETE",
        &format!("/admin/assets/{second}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    for k in &keys {
        assert!(
            !store.is_pinned(k.as_bytes()),
            "{k} released by its last job"
        );
    }
}

/// Bug: a rerun after a failed ingest published the asset but never pinned the segments the
/// failed run had stored (and released): it found them stored and skipped them as they were,
/// unpinned, so the store evicted a published asset's segments like any pulled object; and a
/// segment a viewer had pulled into the store was skipped the same way. A rerun now pins a
/// pushed copy where it is (not fetched again) and fetches and pushes a pulled one. The failed
/// run's progress counts add up, its unpublished playlist counted as `not_published`.
#[tokio::test]
async fn a_rerun_pins_what_a_failed_run_or_a_viewer_left_in_the_store() {
    use crate::support::{Origin as Scripted, Script};
    let origin = Scripted::start().await;
    let segments = ["s0.ts", "s1.ts", "s2.ts", "s3.ts"];
    origin.script("/re/index.m3u8", Script::ok(playlist_of(&segments)));
    for (i, s) in segments.iter().enumerate() {
        let body = vec![b'a' + i as u8; 100_000];
        origin.script(
            &format!("/re/{s}"),
            Script::ok(body).header("cache-control", "max-age=3600"),
        );
    }
    origin.script("/re/s2.ts", Script::status(404, "not yet"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();
    let store = running.edge.store.clone().expect("store");
    let key = |p: &str| viewer_key(&running.edge, p);

    // A viewer pulls s3 twice: admitted to the store on its second request, unpinned.
    for _ in 0..2 {
        assert_eq!(running.get("/re/s3.ts").await.status, StatusCode::OK);
        running.settle().await;
    }
    store.flush().await;
    assert!(
        store.contains(key("/re/s3.ts").as_bytes())
            && !store.is_pinned(key("/re/s3.ts").as_bytes())
    );

    let id = start_job(port, &origin.url(), "/re/index.m3u8", 1).await;
    let failed = finished_job(port, id).await;
    assert_eq!(failed["assets"][0]["outcome"], "failed", "{failed}");
    let p = &failed["progress"];
    let counted = ["objects_done", "failed", "not_published"]
        .iter()
        .map(|f| p[f].as_u64().expect("count"))
        .sum::<u64>();
    assert_eq!(
        Some(counted),
        p["objects_total"].as_u64(),
        "counts add up: {p}"
    );
    assert!(
        !store.is_pinned(key("/re/s0.ts").as_bytes()),
        "a failed run releases what it stored"
    );

    origin.script("/re/s2.ts", Script::ok(vec![b'c'; 100_000]));
    let id = start_job(port, &origin.url(), "/re/index.m3u8", 1).await;
    let rerun = finished_job(port, id).await;
    let asset = &rerun["assets"][0];
    assert_eq!(asset["outcome"], "published", "{rerun}");
    // s0, s1 and s3 (the viewer's copy the failed run pushed anew) are adopted where they are.
    assert_eq!(asset["skipped"], 3, "{rerun}");
    store.flush().await;
    for p in [
        "/re/s0.ts",
        "/re/s1.ts",
        "/re/s2.ts",
        "/re/s3.ts",
        "/re/index.m3u8",
    ] {
        assert!(
            store.is_pinned(key(p).as_bytes()),
            "{p} of a published asset is not pinned"
        );
    }
    let gets = |p: &str| origin.seen(p).iter().filter(|s| s.method == "GET").count();
    assert_eq!(
        gets("/re/s0.ts"),
        1,
        "an adopted segment is not fetched again"
    );
    assert_eq!(
        gets("/re/s3.ts"),
        2,
        "the viewer's pulled copy was pushed anew"
    );
}

/// Bug: `DELETE /admin/assets/{id}` of a running job released what it had stored so far and
/// forgot the job, which ran on: it fetched, pinned and published the rest, and nothing could
/// release those any more (the job was gone: 404). The DELETE now stops the job first (no
/// further fetch, pin or publish) and then releases everything it held.
#[tokio::test]
async fn delete_of_a_running_job_stops_it_and_releases_everything() {
    use crate::support::edge::admin_send;
    use crate::support::{Gate, Origin as Scripted, Script};
    let origin = Scripted::start().await;
    origin.script(
        "/run/index.m3u8",
        Script::ok(playlist_of(&["s0.ts", "s1.ts", "s2.ts"])),
    );
    origin.script("/run/s0.ts", Script::ok(vec![0u8; 100_000]));
    origin.script("/run/s2.ts", Script::ok(vec![2u8; 100_000]));
    // s1's probe waits at `probed`; once it is seen, s1 is scripted anew so that the job's GET
    // of it waits at `fetched`, after s0 is stored.
    let (probed, fetched) = (Gate::new(), Gate::new());
    origin.script("/run/s1.ts", Script::ok(vec![1u8; 100_000]).gate(&probed));
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();
    let store = running.edge.store.clone().expect("store");
    let key = |p: &str| viewer_key(&running.edge, p);

    let id = start_job(port, &origin.url(), "/run/index.m3u8", 1).await;
    crate::support::until("s1 probed", || origin.count("/run/s1.ts") == 1).await;
    origin.script("/run/s1.ts", Script::ok(vec![1u8; 100_000]).gate(&fetched));
    probed.open();
    crate::support::until("s1 fetched", || origin.count("/run/s1.ts") == 2).await;
    crate::support::until("s0 stored", || {
        store.is_pinned(key("/run/s0.ts").as_bytes())
    })
    .await;

    let (status, text) = admin_send(port, "DELETE", &format!("/admin/assets/{id}"), &[], b"").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""cancelled":true"#), "{text}");
    // Let the origin answer s1: a job still running would store it, fetch s2 and publish.
    // (Bounded: nothing more happens when the job stopped, so there is no event to wait for.)
    fetched.open();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if origin.count("/run/s2.ts") > 1 || store.contains(key("/run/index.m3u8").as_bytes()) {
            break;
        }
    }
    store.flush().await;
    assert_eq!(
        origin
            .seen("/run/s2.ts")
            .iter()
            .filter(|s| s.method == "GET")
            .count(),
        0,
        "a deleted job fetched on"
    );
    for p in ["/run/s0.ts", "/run/s1.ts", "/run/s2.ts", "/run/index.m3u8"] {
        assert!(
            !store.is_pinned(key(p).as_bytes()),
            "{p} pinned after DELETE"
        );
    }
    assert!(
        !store.contains(key("/run/index.m3u8").as_bytes()),
        "a deleted job published its playlist"
    );
    let (status, _) = admin_get_json(port, &format!("/admin/ingest/{id}")).await;
    assert_eq!(status, 404);
}

/// Bug: one asset's manifests were bounded only in number (2,000) and each in size (16 MiB),
/// and the walk keeps every manifest's body until it publishes, so an origin whose playlists
/// name one another in a chain made one admin ingest hold up to 31 GiB (a review measured
/// 2 GiB for 2,000 manifests of 1 MB). The asset's manifests now share a 64 MiB budget: here
/// 70 manifests of 1 MiB are refused at the 65th, with the budget named.
#[tokio::test]
async fn a_chain_of_manifests_is_refused_past_the_assets_byte_budget() {
    use crate::support::{Origin as Scripted, Script};
    let origin = Scripted::start().await;
    let pad = format!("#PAD:{}\n", "x".repeat(64 << 10));
    for k in 0..70 {
        let mut body = format!(
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nc{}.m3u8\n",
            k + 1
        );
        while body.len() < 1 << 20 {
            body.push_str(&pad);
        }
        origin.script(&format!("/chain/c{k}.m3u8"), Script::ok(body));
    }
    origin.script("/chain/c70.m3u8", Script::ok(playlist_of(&[])));
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();

    let id = start_job(port, &origin.url(), "/chain/c0.m3u8", 1).await;
    let status = finished_job(port, id).await;
    let asset = &status["assets"][0];
    assert_eq!(asset["outcome"], "refused", "{status}");
    let error = asset["error"].as_str().unwrap_or_default();
    assert!(error.contains("67108864 bytes"), "{error}");
    let fetched = (0..=70)
        .filter(|k| origin.count(&format!("/chain/c{k}.m3u8")) > 0)
        .count();
    assert!(fetched <= 65, "{fetched} manifests fetched past the budget");
}

/// Bug: a re-ingest kept an old segment when the origin had replaced it with one of the same
/// length and a new ETag: the size pass skipped anything stored with the length the HEAD
/// announced, though the rule it meant is "same length, and the same ETag when both sides
/// have one". It compares the HEAD's ETag now, and viewers get the new bytes.
#[tokio::test]
async fn a_reingest_replaces_a_segment_of_the_same_length_with_a_new_etag() {
    use crate::support::{Origin as Scripted, Script};
    let origin = Scripted::start().await;
    origin.script("/tag/index.m3u8", Script::ok(playlist_of(&["s0.ts"])));
    origin.script(
        "/tag/s0.ts",
        Script::ok(vec![b'A'; 5000]).header("etag", "\"A\""),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = store_edge(&origin.url(), tmp.path(), 16 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();

    let id = start_job(port, &origin.url(), "/tag/index.m3u8", 1).await;
    let first = finished_job(port, id).await;
    assert_eq!(first["assets"][0]["outcome"], "published", "{first}");
    origin.script(
        "/tag/s0.ts",
        Script::ok(vec![b'B'; 5000]).header("etag", "\"B\""),
    );
    let id = start_job(port, &origin.url(), "/tag/index.m3u8", 1).await;
    let second = finished_job(port, id).await;
    let asset = &second["assets"][0];
    assert_eq!(asset["outcome"], "published", "{second}");
    assert_eq!(asset["skipped"], 0, "{second}");
    let served = running.get("/tag/s0.ts").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.h("etag"), "\"B\"");
    assert_eq!(
        &served.body[..],
        &[b'B'; 5000][..],
        "x-cache {}",
        served.x_cache()
    );
}

/// Bug: one HLS media playlist within every limit could get the edge OOM-killed: a 16 MiB
/// playlist of ~800,000 tiny segments was parsed whole by m3u8-rs (a few hundred bytes per
/// line) and every reference built before the 200,000-object limit was checked, +1.25 GiB for
/// one admin ingest to end in a refusal. The walk now counts a playlist's new references in
/// its text first and refuses before parsing ("counted before parsing"), and parses what it
/// lets in a chunk at a time; the byte ranges of one file count once (a playlist of 210,000
/// of them is one object and is published).
#[tokio::test]
async fn a_playlist_listing_more_than_the_object_limit_is_refused_before_it_is_parsed() {
    use crate::support::{Origin as Scripted, Script};
    let origin = Scripted::start().await;
    let names: Vec<String> = (0..200_001).map(|i| format!("{i:x}.ts")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    origin.script("/big/v.m3u8", Script::ok(playlist_of(&names)));
    let mut ranges = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-VERSION:4\n");
    for k in 0..210_000 {
        ranges.push_str(&format!(
            "#EXTINF:1,\n#EXT-X-BYTERANGE:4@{}\nall.ts\n",
            4 * k
        ));
    }
    ranges.push_str("#EXT-X-ENDLIST\n");
    origin.script("/ranges/v.m3u8", Script::ok(ranges));
    origin.script("/ranges/all.ts", Script::ok(vec![7u8; 1_000_000]));
    let tmp = tempfile::tempdir().expect("tempdir");
    // Regions large enough to store that 8 MiB playlist.
    let running = store_edge(&origin.url(), tmp.path(), 64 << 20).await;
    let api = running.admin().await;
    let port = api.addr.port();

    let id = start_job(port, &origin.url(), "/big/v.m3u8", 1).await;
    let status = finished_job(port, id).await;
    let asset = &status["assets"][0];
    assert_eq!(asset["outcome"], "refused", "{status}");
    let error = asset["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("counted before parsing") && error.contains("--max-objects"),
        "{error}"
    );
    assert_eq!(
        origin.count("/big/0.ts"),
        0,
        "nothing fetched past the walk"
    );

    let id = start_job(port, &origin.url(), "/ranges/v.m3u8", 1).await;
    let status = finished_job(port, id).await;
    assert_eq!(status["assets"][0]["outcome"], "published", "{status}");
    assert_eq!(status["assets"][0]["objects"], 2, "{status}");
}
