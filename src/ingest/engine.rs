//! The ingest of one walked asset into a [`Sink`]: size pass, room check, bounded concurrent
//! fetches with retries, adoption (pin in place) of what is already stored as the same push,
//! then atomic publish (manifests last, only when every other object is stored) or release of
//! this run's holds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::header::HeaderName;
use http::HeaderMap;
use serde::Serialize;
use url::Url;

use crate::cache::policy;

use vedge_manifest::fetch::{Opened, Probe};
use vedge_manifest::{Asset, FetchError, Fetcher, Object, ObjectKind};

/// One object to push, with the viewer-facing key it is stored under.
#[derive(Debug, Clone)]
pub struct PushObject {
    pub key: String,
    pub kind: ObjectKind,
    pub body: Bytes,
    /// Origin headers worth keeping (content type, validators, cache control).
    pub headers: HeaderMap,
}

/// What a sink already holds under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub len: u64,
    pub etag: Option<String>,
    /// Stored as a push (pinned, with the push's freshness), not a viewer's fill: only a push
    /// is adopted as it is. A pulled copy keeps the origin's freshness, and a refresh once
    /// stale would replace it with an unpinned one, so it is fetched again and pushed.
    pub pushed: bool,
}

impl Existing {
    /// Whether this is the same object as one of `len` bytes with `etag`: a push of the same
    /// length, with the same ETag when both sides have one.
    pub fn same_as(&self, len: u64, etag: Option<&str>) -> bool {
        self.pushed
            && self.len == len
            && match (self.etag.as_deref(), etag) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Why a sink refused an object.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("store full: {0}")]
    Full(String),
    /// Reading the body being stored failed (the origin's fault, maybe transient).
    #[error("{0}")]
    Fetch(FetchError),
    /// The store did not take the object (kept whole, so the admin `PUT` can answer what
    /// it means: 409 for a push a newer write replaced before it reached the device).
    #[error("{0}")]
    Store(std::sync::Arc<vedge_storage::StoreError>),
    #[error("{0}")]
    Other(String),
}

pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// Where ingested objects go: the store of a stopped edge, a running edge's admin API, or
/// memory (tests). Every stored object is pinned.
///
/// A run holds each key before it stores or adopts it ([`Sink::hold`]) and gives the holds back
/// when its asset is not published ([`Sink::release`]); a key stays pinned while any run (or a
/// push outside the runs) holds it (`ingest::holds`).
pub trait Sink: Send + Sync {
    /// What is stored under `key`, if anything (for skip and resume).
    fn existing<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>>;
    /// Takes this run's hold on `key`, before anything of it is stored or adopted. The default
    /// (a sink that cannot unpin, such as the admin client) keeps no count.
    fn hold(&self, key: &str) {
        let _ = key;
    }
    /// Pins the object already stored under `key` where it is (no refetch); `false` when it is
    /// no longer stored, so it must be fetched. The default cannot, and answers `false`.
    fn adopt<'a>(&'a self, key: &'a str) -> SinkFuture<'a, bool> {
        let _ = key;
        Box::pin(std::future::ready(Ok(false)))
    }
    /// After this run's write of `key` was superseded by a newer write of the key (another
    /// run's push of the same asset), waits for the writes queued so far and says what is
    /// stored now. The default is [`Sink::existing`].
    fn settled<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        self.existing(key)
    }
    /// Bytes still available to pinned objects, if the sink knows.
    fn free_for_pinned(&self) -> SinkFuture<'_, Option<u64>>;
    /// Stores (and pins) one object durably.
    fn put(&self, object: PushObject) -> SinkFuture<'_, ()>;
    /// Stores (and pins) one object whose body is still to be read; returns its length. The
    /// default reads it into memory and calls [`Sink::put`]; a store sink reads it straight
    /// into the store's write buffer instead.
    fn put_opened(&self, key: String, kind: ObjectKind, opened: Opened) -> SinkFuture<'_, u64> {
        Box::pin(put_collected(self, key, kind, opened))
    }
    /// Gives back this run's holds on `keys` (one per listing) for an asset that is not
    /// published: each key nobody else holds is unpinned.
    fn release<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, ()>;
}

/// [`Sink::put_opened`] by reading the body into memory first.
pub async fn put_collected<S: Sink + ?Sized>(
    sink: &S,
    key: String,
    kind: ObjectKind,
    opened: Opened,
) -> Result<u64, SinkError> {
    let fetched = opened.collect().await.map_err(SinkError::Fetch)?;
    let bytes = fetched.body.len() as u64;
    sink.put(PushObject {
        key,
        kind,
        body: fetched.body,
        headers: fetched.headers,
    })
    .await?;
    Ok(bytes)
}

/// Maps a source URL to the key a viewer's request for it produces at the edge.
#[derive(Debug, Clone)]
pub struct KeyMapper {
    /// Viewer-facing host (`Host` of viewer requests); empty when none was given. With
    /// `config`, only `pass_host` routes key on it.
    pub host: String,
    /// The edge's config: keys follow its routes exactly as viewer requests do
    /// (`proxy::target`). `None` keys every object on `host` (tests, and `--host` without
    /// `--config`).
    pub config: Option<Arc<crate::config::Config>>,
    /// Query parameters the edge drops from keys.
    pub drop_query_params: Vec<String>,
    /// For `file:` sources: the local directory and the viewer path prefix it is served under.
    pub local_root: Option<(Url, String)>,
}

impl KeyMapper {
    /// The viewer's request target for `url` (path and query).
    pub fn viewer_path(&self, url: &Url) -> String {
        let path = match (&self.local_root, url.scheme()) {
            (Some((root, prefix)), "file") => {
                let rel = url.path().strip_prefix(root.path()).unwrap_or(url.path());
                format!(
                    "{}/{}",
                    prefix.trim_end_matches('/'),
                    rel.trim_start_matches('/')
                )
            }
            _ => self
                .config
                .as_deref()
                .and_then(|c| viewer_path_of(c, url))
                .map(|(path, _)| path)
                .unwrap_or_else(|| url.path().to_string()),
        };
        match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        }
    }

    pub fn key(&self, url: &Url) -> String {
        let target = self.viewer_path(url);
        self.check(url).unwrap_or_else(|_| {
            crate::cache::key::cache_key(&self.host, &target, &self.drop_query_params)
        })
    }

    /// The key, or why no route of the edge would serve it under the key a viewer uses.
    pub fn check(&self, url: &Url) -> Result<String, String> {
        let target = self.viewer_path(url);
        let host = (!self.host.is_empty()).then_some(self.host.as_str());
        match &self.config {
            Some(config) => crate::proxy::target::resolve(config, host, &target)
                .map(|t| t.key)
                .map_err(|e| format!("{target}: {e}")),
            None => Ok(crate::cache::key::cache_key(
                &self.host,
                &target,
                &self.drop_query_params,
            )),
        }
    }
}

/// The path a viewer asks for to get the origin URL `url`, as a fill of one of `config`'s
/// routes would fetch it: the URL's path less the base path of that route's origin (a route
/// to `http://o/base` fills `/vod/a.ts` from `http://o/base/vod/a.ts`). An origin is one of
/// the route's (or a shield node covering it) with the URL's scheme, host and port, whose
/// base the path starts with at a segment boundary, and the rest must be routed to that very
/// route. `None` when no route would fetch `url` for any viewer path: an ingest keyed on the
/// URL's own path would store another object's bytes under it. With the path, the route.
pub fn viewer_path_of<'c>(
    config: &'c crate::config::Config,
    url: &Url,
) -> Option<(String, &'c crate::config::Route)> {
    let path = url.path();
    config.routes.iter().find_map(|route| {
        let shields = config
            .tier
            .shield
            .iter()
            .filter(|s| s.covers(route))
            .flat_map(|s| &s.nodes);
        route
            .group
            .origins
            .iter()
            .chain(shields)
            .filter(|o| o.origin() == url.origin())
            .find_map(|o| {
                let rest = path.strip_prefix(o.path().trim_end_matches('/'))?;
                let routed = crate::cache::key::normalize_path(rest).ok()?;
                let here = config
                    .route_for(&routed)
                    .is_some_and(|r| std::ptr::eq(r, route));
                (rest.starts_with('/') && here).then(|| (rest.to_string(), route))
            })
    })
}

/// Why an answer that varies is not pushed (`crate::cache::vary::selects_representation`).
pub const VARIES: &str = "the origin's answer varies (Vary names a request header other than \
     Accept-Encoding, or the body is content-coded): a push would give its one variant to \
     every viewer; not stored, viewers fill it";

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Concurrent origin fetches.
    pub concurrency: usize,
    /// Publish the asset even if some objects failed.
    pub allow_partial: bool,
    /// Largest single object.
    pub max_object_bytes: usize,
    /// The fields this cache obeys before `Cache-Control` (`cache.targeted_cache_control`) and
    /// its `Surrogate-Control` device token (`cdn_id`): an object whose origin answer a
    /// viewer's fill would not share by them is not stored (`policy::unshared`).
    pub targeted_cache_control: Vec<HeaderName>,
    pub cdn_id: String,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            concurrency: 8,
            allow_partial: false,
            max_object_bytes: 1 << 30,
            targeted_cache_control: crate::config::DEFAULT_TARGETED_CACHE_CONTROL
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
            cdn_id: crate::config::DEFAULT_CDN_ID.to_string(),
        }
    }
}

/// Live counters, shared with a progress bar or the admin API's job status.
#[derive(Debug, Default)]
pub struct Progress {
    pub objects_total: AtomicU64,
    pub objects_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
    /// Manifests of assets that were not published (never written, neither done nor failed):
    /// once a job ends, `objects_done + failed + not_published == objects_total`.
    pub not_published: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            objects_total: self.objects_total.load(Ordering::Relaxed),
            objects_done: self.objects_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            not_published: self.not_published.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub objects_total: u64,
    pub objects_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub skipped: u64,
    pub failed: u64,
    pub not_published: u64,
}

/// One object that could not be ingested.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub url: String,
    pub reason: String,
}

/// How an asset ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every object stored, manifests published.
    Published,
    /// Some objects failed but `--allow-partial` published the manifests anyway.
    PublishedPartial,
    /// Not published; objects stored by this run were released.
    Failed,
    /// Refused before writing (no room, walk error).
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::PublishedPartial => "published_partial",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// The summary of one asset.
#[derive(Debug, Clone, Serialize)]
pub struct AssetReport {
    pub asset: String,
    pub outcome: Outcome,
    pub objects: u64,
    pub bytes: u64,
    pub stored: u64,
    pub stored_bytes: u64,
    /// Objects found already stored as the same push (same length, same ETag when both have
    /// one): pinned where they are, for this asset, and not fetched again.
    pub skipped: u64,
    pub failures: Vec<Failure>,
    /// References the walk saw and left out, with the reason (key files when keys are skipped,
    /// other URL schemes, hosts that are none of the route's origins): never fetched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_fetched: Vec<Failure>,
    /// Set when the asset was refused before anything was written.
    pub error: Option<String>,
}

impl AssetReport {
    pub fn refused(asset: &str, error: String) -> Self {
        AssetReport {
            asset: asset.to_string(),
            outcome: Outcome::Refused,
            objects: 0,
            bytes: 0,
            stored: 0,
            stored_bytes: 0,
            skipped: 0,
            failures: Vec::new(),
            not_fetched: Vec::new(),
            error: Some(error),
        }
    }
}

enum Done {
    Stored {
        bytes: u64,
    },
    /// Already stored as the same push: pinned in place.
    Adopted,
    Failed(Failure),
}

fn etag_of(h: &HeaderMap) -> Option<String> {
    h.get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Ingests one walked asset. Objects are fetched at most `concurrency` at a time; manifests are
/// written (with the exact bytes the walk read) only after every other object is stored.
pub async fn ingest_asset<F: Fetcher, S: Sink>(
    asset: &Asset,
    fetcher: &F,
    sink: &S,
    keys: &KeyMapper,
    opts: &IngestOptions,
    progress: &Arc<Progress>,
) -> AssetReport {
    let name = asset
        .root
        .as_ref()
        .map_or_else(String::new, |u| u.to_string());
    // Owned work items: the futures below must not borrow from a stream's items (a spawned
    // caller would otherwise need them to be valid for any lifetime).
    let media: Vec<(Object, String)> = asset
        .media
        .iter()
        .map(|o| (o.clone(), keys.key(&o.url)))
        .collect();
    let conc = opts.concurrency.max(1);
    progress
        .objects_total
        .fetch_add(asset.len() as u64, Ordering::Relaxed);

    // Size pass: what is already stored, and how much room the rest needs, before anything is
    // written. Sizes and ETags come from the fetcher's cheap probe (HEAD, file metadata).
    let manifest_bytes: u64 = asset
        .manifests
        .iter()
        .map(|m| m.body.as_ref().map_or(0, |b| b.len() as u64))
        .sum();
    let urls: Vec<Url> = media.iter().map(|(o, _)| o.url.clone()).collect();
    let probes: Vec<Probe> = stream::iter(urls)
        .map(move |u| async move { fetcher.probe(&u).await })
        .buffered(conc)
        .collect()
        .await;
    let key_list: Vec<String> = media.iter().map(|(_, k)| k.clone()).collect();
    let existing: Vec<Option<Existing>> = stream::iter(key_list)
        .map(move |k| async move { sink.existing(&k).await.ok().flatten() })
        .buffered(conc)
        .collect()
        .await;
    let total_bytes: u64 = probes.iter().map(|p| p.len.unwrap_or(0)).sum::<u64>() + manifest_bytes;
    let needed: u64 = probes
        .iter()
        .zip(&existing)
        .filter(|(p, e)| match (p.len, e) {
            (Some(len), Some(e)) => !e.same_as(len, p.etag.as_deref()),
            _ => true,
        })
        .map(|(p, _)| p.len.unwrap_or(0))
        .sum::<u64>()
        + manifest_bytes;
    progress
        .bytes_total
        .fetch_add(total_bytes, Ordering::Relaxed);
    let refuse = |error: String| {
        progress
            .failed
            .fetch_add(asset.len() as u64, Ordering::Relaxed);
        AssetReport::refused(&name, error)
    };
    match sink.free_for_pinned().await {
        Ok(Some(free)) if free < needed => {
            return refuse(format!(
                "the store has {free} bytes free for pinned objects; this asset needs {needed} bytes ({:.1} MiB) more",
                needed as f64 / (1 << 20) as f64
            ));
        }
        Ok(_) => {}
        Err(e) => return refuse(format!("store: {e}")),
    }

    // Every key of the asset is held before any of it is stored or adopted, so another run's
    // release cannot unpin it under this one (and this run's release gives back exactly these).
    let mut held: Vec<String> = media.iter().map(|(_, k)| k.clone()).collect();
    for k in &held {
        sink.hold(k);
    }

    let items: Vec<(Object, String, Probe, Option<Existing>)> = media
        .into_iter()
        .zip(probes.into_iter().zip(existing))
        .map(|((o, k), (p, e))| (o, k, p, e))
        .collect();
    let results: Vec<Done> = stream::iter(items)
        .map(move |(o, key, probe, present)| async move {
            let fail = |reason: String| {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                Done::Failed(Failure {
                    url: o.url.to_string(),
                    reason,
                })
            };
            let adopted = |bytes: u64| {
                progress.objects_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
                progress.skipped.fetch_add(1, Ordering::Relaxed);
                Done::Adopted
            };
            // Already stored as the same push: pinned where it is (it may have been released
            // by a failed run, so left unpinned, and the store would evict it).
            if let (Some(e), Some(len)) = (&present, probe.len) {
                if e.same_as(len, probe.etag.as_deref()) {
                    match sink.adopt(&key).await {
                        Ok(true) => return adopted(len),
                        Ok(false) => {} // evicted since the size pass: fetch it
                        Err(e) => return fail(format!("store: {e}")),
                    }
                }
            }
            // The body goes from the origin straight into the sink; a transient failure while
            // reading it reopens the object (opening retries by itself).
            let mut attempt = 0;
            // Length and ETag of the body last handed to the sink.
            let mut sent: (Option<u64>, Option<String>);
            let put = loop {
                let mut opened = match fetcher.open(&o.url, opts.max_object_bytes).await {
                    Ok(f) => f,
                    Err(e) => return fail(e.to_string()),
                };
                // A pushed object goes to every viewer for a year: an answer a viewer's fill
                // would keep for its requester (a session cookie the origin gave this client,
                // `private`, `no-store`) is not stored.
                let (targeted, device) = (&opts.targeted_cache_control, opts.cdn_id.as_str());
                if let Some(why) = policy::unshared(&opened.headers, targeted, device) {
                    return fail(format!(
                        "the origin's answer may not be shared ({why}): not stored"
                    ));
                }
                // A push is the one answer every viewer of the key gets: one variant of an
                // answer that varies (`Vary: Accept-Language`, a coded body) would reach the
                // viewers of every other variant, where a fill keeps each apart.
                if crate::cache::vary::selects_representation(&opened.headers) {
                    return fail(VARIES.to_string());
                }
                if let (Some(e), None) = (&present, probe.len) {
                    if opened.len.is_none() {
                        match opened.collect().await {
                            Ok(f) => opened = Opened::from_fetched(f, opts.max_object_bytes),
                            Err(e) => return fail(e.to_string()),
                        }
                    }
                    if let Some(len) = opened.len {
                        if e.same_as(len, etag_of(&opened.headers).as_deref()) {
                            match sink.adopt(&key).await {
                                Ok(true) => return adopted(len),
                                Ok(false) => {}
                                Err(e) => return fail(format!("store: {e}")),
                            }
                        }
                    }
                }
                sent = (opened.len, etag_of(&opened.headers));
                match sink.put_opened(key.clone(), o.kind, opened).await {
                    Err(SinkError::Fetch(e)) if e.is_transient() && attempt < fetcher.retries() => {
                        attempt += 1;
                        tracing::debug!(url = %o.url, attempt, error = %e, "retrying the body");
                    }
                    other => break other,
                }
            };
            let put = match put {
                Err(SinkError::Store(e)) if superseded(&e) => {
                    let (len, etag) = sent;
                    same_after_superseded(sink, &key, len, etag.as_deref())
                        .await
                        .ok_or(SinkError::Store(e))
                }
                other => other,
            };
            match put {
                Ok(bytes) => {
                    progress.objects_done.fetch_add(1, Ordering::Relaxed);
                    progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
                    Done::Stored { bytes }
                }
                Err(SinkError::Fetch(e)) => fail(e.to_string()),
                Err(e) => fail(format!("store: {e}")),
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;

    let mut report = AssetReport {
        asset: name,
        outcome: Outcome::Published,
        objects: asset.len() as u64,
        bytes: total_bytes,
        stored: 0,
        stored_bytes: 0,
        skipped: 0,
        failures: Vec::new(),
        not_fetched: asset
            .skipped
            .iter()
            .map(|(url, reason)| Failure {
                url: url.clone(),
                reason: reason.to_string(),
            })
            .collect(),
        error: None,
    };
    for r in results {
        match r {
            Done::Stored { bytes } => {
                report.stored += 1;
                report.stored_bytes += bytes;
            }
            Done::Adopted => report.skipped += 1,
            Done::Failed(f) => report.failures.push(f),
        }
    }
    // Sizes probed up front can be unknown (no Content-Length on HEAD): never report fewer
    // bytes than were actually stored.
    report.bytes = report.bytes.max(report.stored_bytes);
    if !report.failures.is_empty() && !opts.allow_partial {
        progress
            .not_published
            .fetch_add(asset.manifests.len() as u64, Ordering::Relaxed);
        return fail_asset(sink, report, &held).await;
    }

    // Publish: child playlists before the master (reverse discovery order), so even between
    // these writes no stored manifest references an unstored one.
    let mut seen = HashMap::new();
    let mut left = asset.manifests.len() as u64;
    for m in asset.manifests.iter().rev() {
        left -= 1;
        let key = keys.key(&m.url);
        if seen.insert(key.clone(), ()).is_some() {
            // The same key as a manifest written just before: counted as done with it.
            progress.objects_done.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        sink.hold(&key);
        held.push(key.clone());
        let body = m.body.clone().unwrap_or_default();
        let bytes = body.len() as u64;
        let mut headers = HeaderMap::new();
        let ct = vedge_manifest::fetch::content_type_for(m.url.path());
        let ct = match m.kind {
            ObjectKind::Mpd => "application/dash+xml",
            ObjectKind::Playlist => "application/vnd.apple.mpegurl",
            _ => ct,
        };
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ct),
        );
        let put = match sink
            .put(PushObject {
                key: key.clone(),
                kind: m.kind,
                body,
                headers,
            })
            .await
        {
            Err(SinkError::Store(e)) if superseded(&e) => {
                same_after_superseded(sink, &key, Some(bytes), None)
                    .await
                    .map(|_| ())
                    .ok_or(SinkError::Store(e))
            }
            other => other,
        };
        match put {
            Ok(()) => {
                report.stored += 1;
                report.stored_bytes += bytes;
                progress.objects_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                progress.not_published.fetch_add(left, Ordering::Relaxed);
                report.failures.push(Failure {
                    url: m.url.to_string(),
                    reason: format!("store: {e}"),
                });
                // A master without its children would point at missing playlists: stop here.
                return fail_asset(sink, report, &held).await;
            }
        }
    }
    if !report.failures.is_empty() {
        report.outcome = Outcome::PublishedPartial;
    }
    report
}

/// Ends an asset that is not published: this run's holds are given back (what nobody else
/// holds is unpinned, left to eviction; a rerun that finds it still stored adopts it).
async fn fail_asset<S: Sink>(sink: &S, mut report: AssetReport, held: &[String]) -> AssetReport {
    report.outcome = Outcome::Failed;
    if let Err(e) = sink.release(held).await {
        report.failures.push(Failure {
            url: String::new(),
            reason: format!("releasing partial objects: {e}"),
        });
    }
    report
}

/// Whether a store error says a newer write of the key replaced this one before it reached
/// the device.
fn superseded(e: &vedge_storage::StoreError) -> bool {
    matches!(e, vedge_storage::StoreError::Superseded)
}

/// After a write of `key` was superseded (two runs pushing the same asset at once): the bytes
/// stored if the write that replaced it stored the same object, so nothing of this run is
/// lost; `None` when it stored another one (the origin changed in between) or failed.
async fn same_after_superseded<S: Sink>(
    sink: &S,
    key: &str,
    len: Option<u64>,
    etag: Option<&str>,
) -> Option<u64> {
    let now = sink.settled(key).await.ok().flatten()?;
    let len = len?;
    now.same_as(len, etag).then_some(len)
}

/// Shorthand used by tests and the CLI for "no such object".
pub fn is_not_found(e: &FetchError) -> bool {
    matches!(e, FetchError::NotFound)
}

/// An in-memory sink with a capacity: tests and `--dry-run` accounting.
#[derive(Debug, Default)]
pub struct MemorySink {
    pub capacity: Option<u64>,
    pub objects: parking_lot::Mutex<HashMap<String, (PushObject, bool)>>,
    /// Keys in the order they were put (to check publish order).
    pub log: parking_lot::Mutex<Vec<String>>,
    /// The runs' holds on its keys.
    pub holds: super::holds::Holds,
}

impl MemorySink {
    pub fn with_capacity(capacity: u64) -> Self {
        MemorySink {
            capacity: Some(capacity),
            ..MemorySink::default()
        }
    }

    pub fn pinned_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .objects
            .lock()
            .iter()
            .filter(|(_, (_, pinned))| *pinned)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    fn used(&self) -> u64 {
        self.objects
            .lock()
            .values()
            .filter(|(_, p)| *p)
            .map(|(o, _)| o.body.len() as u64)
            .sum()
    }
}

impl Sink for MemorySink {
    fn existing<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        let r = self.objects.lock().get(key).map(|(o, _)| Existing {
            len: o.body.len() as u64,
            etag: etag_of(&o.headers),
            pushed: true,
        });
        Box::pin(std::future::ready(Ok(r)))
    }

    fn hold(&self, key: &str) {
        self.holds
            .hold(key, || self.objects.lock().get(key).is_some_and(|o| o.1));
    }

    fn adopt<'a>(&'a self, key: &'a str) -> SinkFuture<'a, bool> {
        let found = self.objects.lock().get_mut(key).map(|o| o.1 = true);
        Box::pin(std::future::ready(Ok(found.is_some())))
    }

    fn free_for_pinned(&self) -> SinkFuture<'_, Option<u64>> {
        let r = self.capacity.map(|c| c.saturating_sub(self.used()));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn put(&self, object: PushObject) -> SinkFuture<'_, ()> {
        let r = match self.capacity {
            Some(c) if self.used() + object.body.len() as u64 > c => Err(SinkError::Full(format!(
                "{} bytes over capacity",
                object.body.len()
            ))),
            _ => {
                self.log.lock().push(object.key.clone());
                self.objects
                    .lock()
                    .insert(object.key.clone(), (object, true));
                Ok(())
            }
        };
        Box::pin(std::future::ready(r))
    }

    fn release<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, ()> {
        let mut objects = self.objects.lock();
        self.holds.release(keys, |k| {
            if let Some(o) = objects.get_mut(k) {
                o.1 = false;
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }
}
