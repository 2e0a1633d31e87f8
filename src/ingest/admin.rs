//! The ingest half of the admin API, called by `crate::admin` after it has checked the bearer
//! token (so a wrong token changes nothing):
//!
//! - `POST /admin/ingest` `{"assets": ["http://origin/vod/a/master.m3u8"], "host": "...",
//!   (host: only for `pass_host` routes; keys follow the edge's routes as viewer requests do)
//!   "allow_partial": false, "include_keys": false, "concurrency": 8}` -> `202 {"id": N}`
//! - `GET /admin/ingest/{id}` -> progress counters, then the per-asset reports when done
//! - `PUT /admin/objects/{path}` (header `X-Vedge-Host`, optional; the request's fields become
//!   the object's response fields, `Content-Type`, `Cache-Control`, tags etc., less the ones
//!   that only mean something in a request: `REQUEST_ONLY`)
//!   -> stores one pushed object, pinned
//! - `DELETE /admin/assets/{id}` -> stops job `id` if it still runs, then releases what it
//!   holds (unpinned unless another job or a `PUT` keeps it): `{"released": N, "cancelled": bool}`
//!
//! Handlers are generic over the request body so tests drive them without a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::engine::{
    ingest_asset, put_collected, AssetReport, Existing, IngestOptions, KeyMapper, Progress,
    ProgressSnapshot, PushObject, Sink, SinkError, SinkFuture,
};
use super::holds::Holds;
use super::store::{adopt_in, cached_object, existing_in, stream_into_store};
use crate::http::body::Body;
use crate::http::response::not_allowed;
use crate::origin::fetch::HttpFetcher;
use crate::proxy::Edge;
use vedge_manifest::fetch::Opened;
use vedge_manifest::{discover, Exclude, ObjectKind, Scope, WalkOptions};

/// Largest body accepted by `PUT /admin/objects/...`.
pub const MAX_PUSH_BYTES: usize = 1 << 30;

/// Pushed bodies larger than this go from the socket straight into the store's write buffer
/// and are not copied into the RAM tier (a viewer's first hit promotes them): an admin ingest
/// of a large asset then holds one object's write buffer at a time, not every body twice.
/// Smaller ones (manifests, keys, init segments) are also kept in RAM, ready to serve.
pub const RAM_COPY_MAX: u64 = 1 << 20;

/// The edge as a sink: pushed objects go where pulled ones go (`Edge::insert`).
pub struct EdgeSink {
    pub edge: Arc<Edge>,
    /// The holds of every ingest run on this edge (`IngestJobs::holds`).
    pub holds: Arc<Holds>,
    /// Keys this job holds, with how many holds each (given back by a failed asset's
    /// release, and by `DELETE /admin/assets/{id}`).
    pub held: Mutex<HashMap<String, u32>>,
}

impl EdgeSink {
    pub fn new(edge: Arc<Edge>, holds: Arc<Holds>) -> EdgeSink {
        EdgeSink {
            edge,
            holds,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Every hold this job has, once per hold, and forgets them.
    fn take_held(&self) -> Vec<String> {
        let held = std::mem::take(&mut *self.held.lock());
        held.into_iter()
            .flat_map(|(k, n)| std::iter::repeat_n(k, n as usize))
            .collect()
    }

    /// Gives back every hold this job has (`DELETE /admin/assets/{id}`); returns how many.
    pub fn release_all(&self) -> usize {
        let keys = self.take_held();
        self.give_back(&keys);
        keys.len()
    }

    /// Drops this job's holds and leaves its objects pinned (the job is forgotten).
    fn forget_all(&self) {
        self.holds.forget(&self.take_held());
    }

    /// Gives back one hold per key: a key nobody holds any more is unpinned in the store (or,
    /// without one, dropped from RAM); the store copy stays until evicted, so a rerun that
    /// finds it adopts it.
    fn give_back(&self, keys: &[String]) {
        match &self.edge.store {
            Some(store) => self.holds.release(keys, |k| {
                store.unpin(k.as_bytes());
            }),
            None => self.holds.release(keys, |k| {
                self.edge.purge_key(k);
            }),
        }
    }
}

impl Sink for EdgeSink {
    fn existing<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        Box::pin(async move {
            Ok(self.edge.lookup(key).await.map(|(o, _)| Existing {
                len: o.body.len() as u64,
                etag: o.etag().and_then(|v| v.to_str().ok()).map(str::to_string),
                pushed: o.pinned,
            }))
        })
    }

    fn hold(&self, key: &str) {
        self.holds.hold(key, || match &self.edge.store {
            Some(store) => store.is_pinned(key.as_bytes()),
            None => self.edge.ram.get(key).is_some_and(|o| o.pinned),
        });
        *self.held.lock().entry(key.to_string()).or_default() += 1;
    }

    fn adopt<'a>(&'a self, key: &'a str) -> SinkFuture<'a, bool> {
        let r = match &self.edge.store {
            Some(store) => adopt_in(store, key),
            // Without a store a push lives in RAM only, pinned by its own flag.
            None => Ok(self.edge.ram.get(key).is_some_and(|o| o.pinned)),
        };
        Box::pin(std::future::ready(r))
    }

    fn settled<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        Box::pin(async move {
            match &self.edge.store {
                Some(store) => {
                    store.flush().await;
                    Ok(existing_in(store, key).await)
                }
                None => self.existing(key).await,
            }
        })
    }

    fn free_for_pinned(&self) -> SinkFuture<'_, Option<u64>> {
        Box::pin(std::future::ready(Ok(self.edge.free_for_pinned())))
    }

    fn put(&self, object: PushObject) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let key = object.key.clone();
            let Some(store) = &self.edge.store else {
                self.edge.insert_push(key, cached_object(&object));
                return Ok(());
            };
            let obj = Arc::new(cached_object(&object));
            // Durable and pinned before it counts as stored (atomic publish relies on it).
            store
                .insert_durable(
                    key.as_bytes(),
                    crate::proxy::tiers::store_meta(&obj),
                    obj.body.clone(),
                    vedge_storage::Source::Push,
                )
                .await
                .map_err(|e| match e {
                    vedge_storage::StoreError::Full(m) => SinkError::Full(m),
                    other => SinkError::Store(Arc::new(other)),
                })?;
            obj.disk.store(true, Ordering::Relaxed);
            self.edge.ram.insert(key, obj);
            Ok(())
        })
    }

    /// Large bodies of known length stream into the store (`stream_into_store`); the rest
    /// (small ones, unknown length, an edge without a store) are read into memory and `put`.
    fn put_opened(&self, key: String, kind: ObjectKind, opened: Opened) -> SinkFuture<'_, u64> {
        Box::pin(async move {
            let (Some(store), Some(len)) = (&self.edge.store, opened.len) else {
                return put_collected(self, key, kind, opened).await;
            };
            if len <= RAM_COPY_MAX {
                return put_collected(self, key, kind, opened).await;
            }
            let n = stream_into_store(store, key.clone(), kind, opened, len).await?;
            // An older copy in RAM would shadow the new one: the next hit reads the store.
            self.edge.ram.remove(&key);
            Ok(n)
        })
    }

    fn release<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, ()> {
        {
            let mut held = self.held.lock();
            for k in keys {
                if let Some(n) = held.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(k);
                    }
                }
            }
        }
        self.give_back(keys);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One `POST /admin/ingest` job.
pub struct Job {
    pub progress: Arc<Progress>,
    pub reports: Mutex<Option<Vec<AssetReport>>>,
    pub sink: Arc<EdgeSink>,
    /// Cancelled by `DELETE /admin/assets/{id}`: the job's task drops its walk and fetches.
    cancel: CancellationToken,
    /// Cancelled once the job's task has ended (finished or stopped): from then on nothing of
    /// the job stores, pins or publishes anything.
    ended: CancellationToken,
}

/// How long `DELETE /admin/assets/{id}` waits for a running job to stop. The job's task drops
/// its ingest the next time it is polled, so this is only reached on a stalled runtime.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Finished jobs kept for `GET /admin/ingest/{id}` and `DELETE /admin/assets/{id}`: older
/// finished ones are forgotten when a new job starts, so the table stays bounded however many
/// jobs an edge runs. Running jobs are always kept. (A forgotten job's objects stay pinned, as
/// if pushed outside any job; they can still be released by purging them.)
pub const MAX_FINISHED_JOBS: usize = 100;

/// The ids to forget so that at most `keep` finished jobs remain: the oldest (lowest) first.
fn finished_to_forget(jobs: impl Iterator<Item = (u64, bool)>, keep: usize) -> Vec<u64> {
    let mut finished: Vec<u64> = jobs.filter(|(_, done)| *done).map(|(id, _)| id).collect();
    if finished.len() <= keep {
        return Vec::new();
    }
    finished.sort_unstable();
    finished.truncate(finished.len() - keep);
    finished
}

/// The jobs of one admin listener.
#[derive(Default)]
pub struct IngestJobs {
    next: AtomicU64,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
    /// Which jobs hold each pushed key, so one job's release leaves what another (or a `PUT`)
    /// keeps pinned.
    holds: Arc<Holds>,
}

#[derive(Debug, Deserialize)]
struct IngestRequest {
    assets: Vec<String>,
    host: Option<String>,
    #[serde(default)]
    allow_partial: bool,
    #[serde(default)]
    include_keys: bool,
    #[serde(default)]
    allow_other_hosts: bool,
    #[serde(default)]
    allow_outside_dir: bool,
    concurrency: Option<usize>,
}

#[derive(Serialize)]
struct JobStatus<'a> {
    id: u64,
    done: bool,
    progress: ProgressSnapshot,
    assets: Option<&'a [AssetReport]>,
}

fn json(status: StatusCode, v: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

/// Whether `path` is under an ingest route, the requests `crate::admin` hands to [`handle`].
pub fn is_route(path: &str) -> bool {
    ["/admin/ingest", "/admin/objects/", "/admin/assets/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Handles the ingest routes. A route asked with another method than its own is a 405 naming
/// the ones it takes (RFC 9110 §15.5.6); `None` when the request is for no ingest route (a
/// route's prefix without an id names none).
pub async fn handle<B>(
    edge: &Arc<Edge>,
    jobs: &Arc<IngestJobs>,
    req: Request<B>,
) -> Option<Response<Body>>
where
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Another method on a route that names a job or an object: a 405 with the route's methods.
    let refuse = |id: &str, allow| (!id.is_empty()).then(|| not_allowed(allow));
    if path == "/admin/ingest" {
        if method == Method::POST {
            return Some(start_job(edge, jobs, req).await);
        }
        return Some(not_allowed("POST"));
    }
    if let Some(id) = path.strip_prefix("/admin/ingest/") {
        // HEAD as GET (RFC 9110 §9.3.2); hyper sends a HEAD's head only.
        if method == Method::GET || method == Method::HEAD {
            return Some(job_status(jobs, id));
        }
        return refuse(id, "GET, HEAD");
    }
    if let Some(rest) = path.strip_prefix("/admin/objects") {
        if method == Method::PUT {
            let target = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            return Some(put_object(edge, jobs, &target, req).await);
        }
        return refuse(rest.strip_prefix('/').unwrap_or_default(), "PUT");
    }
    if let Some(id) = path.strip_prefix("/admin/assets/") {
        if method == Method::DELETE {
            return Some(delete_job(jobs, id).await);
        }
        return refuse(id, "DELETE");
    }
    None
}

async fn read_body<B>(req: Request<B>, limit: usize) -> Result<(HeaderMap, Bytes), Response<Body>>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => Ok((parts.headers, b.to_bytes())),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
    }
}

async fn start_job<B>(edge: &Arc<Edge>, jobs: &Arc<IngestJobs>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (_, body) = match read_body(req, 1 << 20).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r: IngestRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be JSON {{\"assets\": [\"http://...\"]}}: {e}"),
            )
        }
    };
    let mut urls = Vec::new();
    for a in &r.assets {
        match Url::parse(a) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => urls.push(u),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{a}: not an http:// or https:// URL"),
                )
            }
        }
    }
    if urls.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no assets given");
    }
    // Keys follow the edge's routes (`proxy::target`), so `host` matters only on `pass_host`
    // routes. An asset no route would serve under the key a viewer uses is refused up front.
    let keys = KeyMapper {
        host: r.host.clone().unwrap_or_default(),
        config: Some(Arc::new(edge.config.clone())),
        drop_query_params: edge.config.cache.drop_query_params.clone(),
        local_root: None,
    };
    for url in &urls {
        if let Err(e) = keys.check(url) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{url}: viewers would never be served this push: {e}"),
            );
        }
        if let Err(e) = fetchable(&edge.config, url) {
            return error(StatusCode::BAD_REQUEST, e);
        }
    }
    let id = jobs.next.fetch_add(1, Ordering::Relaxed) + 1;
    let job = Arc::new(Job {
        progress: Arc::new(Progress::default()),
        reports: Mutex::new(None),
        sink: Arc::new(EdgeSink::new(edge.clone(), jobs.holds.clone())),
        cancel: CancellationToken::new(),
        ended: CancellationToken::new(),
    });
    {
        let mut table = jobs.jobs.lock();
        let forget = finished_to_forget(
            table
                .iter()
                .map(|(id, j)| (*id, j.reports.lock().is_some())),
            MAX_FINISHED_JOBS,
        );
        for old in forget {
            if let Some(j) = table.remove(&old) {
                j.sink.forget_all();
            }
        }
        table.insert(id, job.clone());
    }
    let walk = WalkOptions {
        scope: Scope {
            allow_other_hosts: r.allow_other_hosts,
            allow_outside_dir: r.allow_outside_dir,
            root_dir: None,
        },
        include_keys: r.include_keys,
        // A manifest's references obey the rule the asset URLs do: one naming another host
        // (`allow_other_hosts` lets the walk see it) is left out and reported, not fetched.
        exclude: Some(Exclude({
            let config = edge.config.clone();
            Arc::new(move |url: &Url| fetchable(&config, url).err().map(|_| NOT_AN_ORIGIN))
        })),
        ..WalkOptions::default()
    };
    let opts = IngestOptions {
        concurrency: r.concurrency.unwrap_or(8).clamp(1, 256),
        allow_partial: r.allow_partial,
        targeted_cache_control: edge.config.cache.targeted_cache_control.clone(),
        cdn_id: edge.config.cdn_id.clone(),
        ..IngestOptions::default()
    };
    let job_edge = edge.clone();
    edge.spawn(async move {
        // Through the origin client's identity (Via, CDN-Loop) and the serving route's Host,
        // like a fill: `origin/` is the edge's only outbound path.
        let fetcher = HttpFetcher::new(Duration::from_secs(30), 3)
            .with_headers(job_edge.origin.identity_headers())
            .with_host(route_host(job_edge.clone()))
            .with_tls(route_tls(job_edge.clone()));
        let run = async {
            let mut reports = Vec::new();
            for url in urls {
                let report = match discover(&url, &fetcher, &walk).await {
                    Ok(asset) => {
                        ingest_asset(
                            &asset,
                            &fetcher,
                            job.sink.as_ref(),
                            &keys,
                            &opts,
                            &job.progress,
                        )
                        .await
                    }
                    Err(e) => AssetReport::refused(url.as_str(), e.to_string()),
                };
                reports.push(report);
            }
            reports
        };
        // Races the job against its DELETE. On the DELETE, `run` is dropped here, with the walk
        // and every fetch and store write it has in flight: nothing more is fetched, pinned or
        // published. (A write the store already queued still lands; the DELETE's release,
        // which waits for `ended`, unpins it.)
        let reports = tokio::select! {
            _ = job.cancel.cancelled() => Vec::new(),
            reports = run => reports,
        };
        *job.reports.lock() = Some(reports);
        job.ended.cancel();
    });
    json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id }))
}

/// Why a manifest's reference was left out of an admin ingest (`fetchable`).
const NOT_AN_ORIGIN: &str = "not one of the origins or shields of the route serving it";

/// Whether an admin ingest may fetch `url`: a fill of some viewer path on one of the edge's
/// routes must fetch exactly that URL (`engine::viewer_path_of`: one of the route's origins
/// or, when the `[shield]` tier covers the route, a shield node, with the origin's base path).
/// The admin API must not become a way to make the edge fetch from any host its network
/// reaches, nor to store one origin path's bytes under the key of another (a route to
/// `http://o/base` fills `/vod/a.ts` from `/base/vod/a.ts`, never from `/vod/a.ts`).
fn fetchable(config: &crate::config::Config, url: &Url) -> Result<(), String> {
    crate::cache::key::normalize_path(url.path())
        .map_err(|e| format!("{url}: not a path a viewer could ask for: {e}"))?;
    if crate::ingest::engine::viewer_path_of(config, url).is_some() {
        return Ok(());
    }
    Err(format!(
        "{url}: ingest fetches only what a fill of one of the edge's routes would fetch (an \
         origin or shield of the route serving the path, under that origin's base path), and \
         no route fills from {url}"
    ))
}

/// The `Host` an ingest fetch of `url` carries: the Host of the route that serves its path,
/// when that route's origin is the URL's authority (as a fill of it would send); else the URL's.
fn route_host(edge: Arc<Edge>) -> crate::origin::fetch::HostFor {
    Arc::new(move |url: &Url| {
        let (_, route) = crate::ingest::engine::viewer_path_of(&edge.config, url)?;
        let same = route.origin.host_str() == url.host_str()
            && route.origin.port_or_known_default() == url.port_or_known_default();
        same.then(|| route.host.clone()).flatten()
    })
}

/// The TLS settings of the route whose origin serves `url` (its `ca_file`, `sni`), as a fill
/// would use; the platform's roots for any other https URL.
fn route_tls(edge: Arc<Edge>) -> crate::origin::fetch::TlsFor {
    Arc::new(move |url: &Url| {
        crate::ingest::engine::viewer_path_of(&edge.config, url)
            .and_then(|(_, route)| {
                route
                    .group
                    .origins
                    .iter()
                    .any(|o| {
                        o.host_str() == url.host_str()
                            && o.port_or_known_default() == url.port_or_known_default()
                    })
                    .then(|| route.group.tls.clone())
            })
            .unwrap_or_default()
    })
}

fn job_status(jobs: &IngestJobs, id: &str) -> Response<Body> {
    let Some(job) = id
        .parse::<u64>()
        .ok()
        .and_then(|i| jobs.jobs.lock().get(&i).cloned())
    else {
        return error(StatusCode::NOT_FOUND, format!("no ingest job {id}"));
    };
    let reports = job.reports.lock();
    json(
        StatusCode::OK,
        &JobStatus {
            id: id.parse().unwrap_or(0),
            done: reports.is_some(),
            progress: job.progress.snapshot(),
            assets: reports.as_deref(),
        },
    )
}

/// `DELETE /admin/assets/{id}`: stops the job if it still runs, then gives back every hold it
/// has, so what no other job (or `PUT`) keeps is unpinned and left to eviction.
async fn delete_job(jobs: &IngestJobs, id: &str) -> Response<Body> {
    let Some((n, job)) = id
        .parse::<u64>()
        .ok()
        .and_then(|i| Some((i, jobs.jobs.lock().get(&i).cloned()?)))
    else {
        return error(StatusCode::NOT_FOUND, format!("no ingest job {id}"));
    };
    let running = !job.ended.is_cancelled();
    job.cancel.cancel();
    // Released only once the job's task has dropped its ingest: a release before it would
    // leave the job free to pin and publish the rest.
    if tokio::time::timeout(STOP_WAIT, job.ended.cancelled())
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ingest job {id} is still stopping; DELETE it again"),
        );
    }
    // A concurrent DELETE of the same job may have released it first.
    if jobs.jobs.lock().remove(&n).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no ingest job {id}"));
    }
    let released = job.sink.release_all();
    json(
        StatusCode::OK,
        &serde_json::json!({ "released": released, "cancelled": running }),
    )
}

async fn put_object<B>(
    edge: &Arc<Edge>,
    jobs: &IngestJobs,
    target: &str,
    req: Request<B>,
) -> Response<Body>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !target.starts_with('/') || target.len() < 2 {
        return error(
            StatusCode::BAD_REQUEST,
            "PUT /admin/objects/{path}: path required",
        );
    }
    let host = req
        .headers()
        .get("x-vedge-host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The key a viewer's request for `target` produces (`proxy::target`); a target no route
    // would serve under it is refused before its body is read.
    let key = match crate::proxy::target::resolve(&edge.config, host.as_deref(), target) {
        Ok(t) => t.key,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("no route would serve {target} from this push: {e}"),
            )
        }
    };
    if crate::cache::vary::selects_representation(req.headers()) {
        return error(StatusCode::BAD_REQUEST, crate::ingest::engine::VARIES);
    }
    let path = target.split('?').next().unwrap_or(target);
    let kind = match path.rsplit('.').next() {
        Some("m3u8") => ObjectKind::Playlist,
        Some("mpd") => ObjectKind::Mpd,
        _ => ObjectKind::Segment,
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_PUSH_BYTES as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over the {MAX_PUSH_BYTES}-byte push limit"),
        );
    }
    if let (Some(store), Some(len)) = (&edge.store, announced) {
        if len > RAM_COPY_MAX {
            return put_streaming(edge, store, &jobs.holds, key, kind, req, len).await;
        }
    }
    let (mut headers, body) = match read_body(req, MAX_PUSH_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    keep_response_fields(&mut headers);
    let len = body.len();
    let obj = PushObject {
        key: key.clone(),
        kind,
        body,
        headers,
    };
    let sink = EdgeSink::new(edge.clone(), jobs.holds.clone());
    if let Err(e) = sink.put(obj).await {
        let status = match &e {
            SinkError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            // A newer push of the key, or a purge, replaced this one while it was queued: 409,
            // as for a streamed `PUT` (`put_streaming`).
            SinkError::Store(e) => store_error_status(e),
            // The body was already read: a fetch error cannot come from `put`.
            SinkError::Fetch(_) | SinkError::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        return error(status, e.to_string());
    }
    // Pinned by the operator, not by a job: no job's release unpins it.
    jobs.holds.pushed(&key);
    json(
        StatusCode::CREATED,
        &serde_json::json!({ "key": key, "bytes": len }),
    )
}

/// Fields of a `PUT /admin/objects` request that describe the request, not the object: they
/// never become the pushed object's response fields (a `curl -T` with the operator's `Cookie`
/// served that cookie, its `Host`, `Expect`, `User-Agent` and `Accept` to every viewer).
/// Request context (RFC 9110 §10.1), credentials, conditionals and ranges, proxy and
/// forwarding fields, the admin's own `X-Vedge-Host`; framing and hop-by-hop fields are
/// dropped when the object is made (`ingest::store::cached_object`).
const REQUEST_ONLY: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "b3",
    "cache-status",
    "cdn-loop",
    "cookie",
    "device-memory",
    "downlink",
    "dnt",
    "dpr",
    "early-data",
    "ect",
    "expect",
    "forwarded",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "max-forwards",
    "origin",
    "prefer",
    "priority",
    "proxy-authorization",
    "purpose",
    "range",
    "referer",
    "rtt",
    "save-data",
    "te",
    "traceparent",
    "tracestate",
    "upgrade-insecure-requests",
    "user-agent",
    "via",
    "viewport-width",
    "want-content-digest",
    "want-digest",
    "want-repr-digest",
    "width",
    "x-amzn-trace-id",
    "x-client-ip",
    "x-cloud-trace-context",
    "x-cluster-client-ip",
    "x-http-method-override",
    "x-real-ip",
    "x-request-id",
    "x-rewrite-url",
    "x-vedge-host",
];

/// Prefixes of request-only field families: fetch metadata (`Sec-`), CMCD, forwarding and
/// rewriting by a proxy in front of the admin API (`X-Forwarded-`, `X-Original-`), CORS
/// preflight requests, B3 tracing, and the client-address claims of CDNs
/// (`CF-Connecting-IP`, `Fastly-Client-IP`, `True-Client-IP`: `-client-ip`, `-connecting-ip`).
const REQUEST_ONLY_PREFIXES: &[&str] = &[
    "sec-",
    "cmcd-",
    "x-forwarded-",
    "x-original-",
    "access-control-request-",
    "x-b3-",
];
const REQUEST_ONLY_SUFFIXES: &[&str] = &["-client-ip", "-connecting-ip"];

/// Leaves in `headers` (a push request's) only fields that mean something in a response.
fn keep_response_fields(headers: &mut HeaderMap) {
    for name in REQUEST_ONLY {
        headers.remove(*name);
    }
    let described: Vec<_> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            REQUEST_ONLY_PREFIXES.iter().any(|p| n.starts_with(p))
                || REQUEST_ONLY_SUFFIXES.iter().any(|p| n.ends_with(p))
        })
        .cloned()
        .collect();
    for name in described {
        headers.remove(name);
    }
}

/// `PUT /admin/objects/...` of a large body with `Content-Length` into an edge with a store:
/// frames go from the socket straight into the store's write buffer (`vedge_storage::ObjectBuf`),
/// with no `Bytes` of the whole body first and no RAM-tier copy.
async fn put_streaming<B>(
    edge: &Arc<Edge>,
    store: &vedge_storage::Store,
    holds: &Holds,
    key: String,
    kind: ObjectKind,
    req: Request<B>,
    len: u64,
) -> Response<Body>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    keep_response_fields(&mut headers);
    let head_only = PushObject {
        key: key.clone(),
        kind,
        body: Bytes::new(),
        headers,
    };
    let meta = crate::proxy::tiers::store_meta(&cached_object(&head_only));
    let size = len as usize; // at most MAX_PUSH_BYTES, checked by the caller
    let mut buf = match store.object_buf(key.as_bytes(), meta, size) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
    };
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                return error(StatusCode::BAD_REQUEST, format!("reading body: {e}"));
            }
        };
        if let Ok(mut data) = frame.into_data() {
            use bytes::Buf;
            let chunk = data.copy_to_bytes(data.remaining());
            if buf.put(&chunk).is_err() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body longer than its Content-Length {len}"),
                );
            }
        }
    }
    if !buf.is_complete() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("body ended after {} of {len} bytes", buf.filled()),
        );
    }
    if let Err(e) = store
        .insert_durable_buf(buf, vedge_storage::Source::Push)
        .await
    {
        return error(store_error_status(&e), e.to_string());
    }
    // An older copy in RAM would shadow the new one: the next hit reads the store.
    edge.ram.remove(&key);
    holds.pushed(&key);
    json(
        StatusCode::CREATED,
        &serde_json::json!({ "key": key, "bytes": len }),
    )
}

/// The answer to a `PUT` whose store write failed: 507 for a full store, 409 when another push
/// of the key (a `PUT`, an ingest) or a purge replaced these bytes before they reached the
/// device (the object now stored, if any, is not this body), else 500. A viewer's fill of the
/// key cannot: the store skips a plain insert of a key whose push is queued.
fn store_error_status(e: &vedge_storage::StoreError) -> StatusCode {
    match e {
        vedge_storage::StoreError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        vedge_storage::StoreError::Superseded => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::{finished_to_forget, store_error_status};

    #[test]
    fn a_put_replaced_before_it_was_written_is_a_conflict_not_a_server_error() {
        use http::StatusCode;
        use vedge_storage::StoreError;
        assert_eq!(
            store_error_status(&StoreError::Superseded),
            StatusCode::CONFLICT
        );
        assert_eq!(
            store_error_status(&StoreError::Full("full".into())),
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(
            store_error_status(&StoreError::Closed),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn only_the_newest_finished_jobs_are_kept_and_running_ones_never_dropped() {
        // Jobs 1..=150, every third one still running: exactly 100 finished, nothing to forget.
        let jobs = (1..=150u64).map(|id| (id, id % 3 != 0));
        assert_eq!(finished_to_forget(jobs, 100), Vec::<u64>::new());
        let jobs: Vec<(u64, bool)> = (1..=300u64).map(|id| (id, id % 3 != 0)).collect();
        let forget = finished_to_forget(jobs.iter().copied(), 100);
        // 200 finished, 100 kept: the 100 oldest finished go, no running job does.
        assert_eq!(forget.len(), 100);
        assert!(forget.iter().all(|id| id % 3 != 0));
        let newest_forgotten = *forget.iter().max().unwrap();
        let kept_finished = jobs
            .iter()
            .filter(|(id, done)| *done && !forget.contains(id))
            .count();
        assert_eq!(kept_finished, 100);
        assert!(jobs
            .iter()
            .filter(|(id, done)| *done && !forget.contains(id))
            .all(|(id, _)| *id > newest_forgotten));
    }
}
