//! `POST /admin/purge`: removes (or, with `"soft": true`, marks stale) objects by URL, path
//! prefix, tag (`Surrogate-Key` / `Cache-Tag`) or whole asset (a manifest and everything it
//! references), in RAM and on the SSD store, for both schemes. Answers only once the purge is
//! journaled by the store (it survives a crash) and fills in flight for the purged keys will
//! not store what they fetch.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::StatusCode;
use url::Url;

use crate::admin::fanout::{local_after_shields, Fanout};
use crate::cache::key::{
    cache_key, key_prefix, normalize_host, normalize_path, request_key, Scheme,
};
use crate::cache::lock::PurgeSelector;
use crate::config::ClusterRole;
use crate::proxy::assets::asset_url;
use crate::proxy::{target, Edge};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Full URLs, or paths (then `host` is required).
    #[serde(default)]
    urls: Vec<String>,
    /// Path prefixes (with `host`) or full URLs whose path is the prefix, e.g. "/live/ch1/".
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Manifests (full URLs, or paths with `host`): each with everything it references.
    #[serde(default)]
    assets: Vec<String>,
    /// Viewer-facing host the keys were built with, for entries given as paths.
    host: Option<String>,
    /// Mark stale instead of removing.
    #[serde(default)]
    soft: bool,
    /// Also purge every `[cluster]` node, shields first (`fanout.rs`).
    #[serde(default)]
    fanout: bool,
}

/// Entries (`urls`, `prefixes`, `tags` and `assets` together) one purge request may list; more
/// is a 413. Each entry costs a pass over the RAM tier; a bigger purge is several requests.
pub const MAX_ENTRIES: usize = 10_000;

/// Entries turned into keys between two yields to the runtime.
const ENTRIES_PER_YIELD: usize = 256;

pub const USAGE: &str = "purge body must be JSON {\"urls\":[],\"prefixes\":[],\"tags\":[],\"assets\":[],\"host\":\"...\",\"soft\":false,\"fanout\":false}";

/// A bad request, in words for the operator.
pub struct BadPurge(pub String);

/// (host with port, if any, and path?query) of a full URL, or of a path on `host` (none: the
/// routes' own key hosts are used, see `url_keys`).
fn target(entry: &str, host: Option<&str>) -> Result<(Option<String>, String), BadPurge> {
    if let Ok(url) = Url::parse(entry) {
        // Only what a viewer can ask for is cached: an `ftp:` URL purged nothing, with a 200.
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BadPurge(format!(
                "`{entry}`: only http and https URLs name cached objects"
            )));
        }
        if let Some(h) = url.host_str() {
            let (h, pq) = url_target(&url, h);
            return Ok((Some(h), pq));
        }
    }
    if entry.starts_with('/') {
        // A fragment never reaches the edge in a request: `/a.ts#t=10` is `/a.ts` (it purged
        // nothing, with a 200).
        let path = entry.split('#').next().unwrap_or(entry);
        Ok((host.map(str::to_string), path.to_string()))
    } else {
        Err(BadPurge(format!(
            "`{entry}` is neither a full URL nor a path starting with `/`"
        )))
    }
}

fn url_target(url: &Url, host: &str) -> (String, String) {
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let pq = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    (host, pq)
}

/// The keys of one object: the key a viewer's request produces (`proxy::target`: on default
/// routes the route's own host, whatever host the purge names), then the plain and HTTPS keys
/// of the host as given (what a `pass_host` route, or an unnormalisable target, was stored
/// under). A purge is about content, so it covers both schemes.
fn url_keys(edge: &Edge, host: Option<&str>, pq: &str) -> Result<Vec<String>, BadPurge> {
    let drop = &edge.config.cache.drop_query_params;
    let mut keys = Vec::new();
    match target::resolve(&edge.config, None, pq)
        .or_else(|_| target::resolve(&edge.config, host, pq))
    {
        Ok(t) => keys.push(t.key),
        Err(e) if host.is_none() => return Err(BadPurge(format!("purge `{pq}`: {e}"))),
        Err(_) => {}
    }
    if let Some(host) = host {
        keys.push(cache_key(host, pq, drop));
        if let Ok(k) = request_key(Scheme::Https, host, pq, drop) {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Key prefixes under `prefix`: each route the prefix reaches that keys on its own host, and
/// both schemes of `host` when given; a prefix reaching a `pass_host` route needs `host`.
fn prefix_keys(edge: &Edge, host: Option<&str>, prefix: &str) -> Result<Vec<String>, BadPurge> {
    let path = normalize_path(prefix)
        .map_err(|_| BadPurge(format!("prefix purge: `{prefix}` is not a valid path")))?;
    let mut keys = Vec::new();
    let mut needs_host = false;
    for route in &edge.config.routes {
        if !(route.prefix.starts_with(&path) || path.starts_with(&route.prefix)) {
            continue;
        }
        match &route.integrity.key_host {
            Some(h) => keys.push(key_prefix(Scheme::Http, h, &path)),
            None => needs_host = true,
        }
    }
    match host {
        Some(host) => {
            for scheme in Scheme::ALL {
                let h = normalize_host(host, scheme).map_err(|_| {
                    BadPurge(format!("prefix purge: `{host}` is not a valid host"))
                })?;
                keys.push(key_prefix(scheme, &h, &path));
            }
        }
        None if needs_host => {
            return Err(BadPurge(format!(
                "prefix purge: `{prefix}` reaches a pass_host route, whose keys hold the viewer's host: give \"host\""
            )))
        }
        None => {}
    }
    Ok(keys)
}

/// The host a fill recorded an asset's manifest under (`proxy::fill`: the origin `Host`).
fn asset_host(edge: &Edge, host: Option<&str>, pq: &str) -> Option<String> {
    target::resolve(&edge.config, host, pq)
        .or_else(|_| target::resolve(&edge.config, None, pq))
        .ok()
        .map(|t| t.origin_host().to_string())
}

/// Runs a purge; the JSON answer reports the objects counted per selector kind.
pub async fn purge(
    edge: &Arc<Edge>,
    body: &[u8],
) -> Result<serde_json::Value, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let p: PurgeRequest = serde_json::from_slice(body).map_err(|e| bad(format!("{USAGE}: {e}")))?;
    let entries = p.urls.len() + p.prefixes.len() + p.tags.len() + p.assets.len();
    if entries > MAX_ENTRIES {
        // Before any work and before the fan-out: nothing is purged anywhere.
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "purge lists {entries} entries (urls, prefixes, tags and assets), more than \
                 {MAX_ENTRIES} per request: split it into several requests"
            ),
        ));
    }
    if let Some(h) = p.host.as_deref() {
        if normalize_host(h, Scheme::Http).is_err() {
            return Err(bad(format!(
                "\"host\": `{}` is not a valid host",
                h.escape_debug()
            )));
        }
    }
    // A fan-out with no `[cluster]` to reach would report every node purged, of none.
    if p.fanout && edge.config.tier.cluster.nodes.is_empty() {
        return Err(bad(
            "\"fanout\": true needs a [cluster] of nodes in this node's config; none is set".into(),
        ));
    }
    // Shields before edges, this node in its own place (`fanout.rs`).
    let mut fanout = p.fanout.then(|| Fanout::new(body));
    if let Some(f) = fanout.as_mut().filter(|_| local_after_shields(edge)) {
        f.phase(edge, ClusterRole::Shield).await;
    }
    let host = p.host.as_deref();
    // Yields now and then while the keys are worked out, so a long list leaves the worker's
    // other tasks their turns.
    let mut done = 0usize;
    let mut step = || {
        done += 1;
        done % ENTRIES_PER_YIELD == 0
    };
    // (kind, selectors of one entry), in request order.
    let mut groups: Vec<(&'static str, Vec<PurgeSelector>)> = Vec::new();
    for u in &p.urls {
        if step() {
            tokio::task::yield_now().await;
        }
        let (h, pq) = target(u, host).map_err(|e| bad(e.0))?;
        let keys = url_keys(edge, h.as_deref(), &pq).map_err(|e| bad(e.0))?;
        let sels = keys.into_iter().map(PurgeSelector::Key);
        groups.push(("urls", sels.collect()));
    }
    for prefix in &p.prefixes {
        if step() {
            tokio::task::yield_now().await;
        }
        let (h, path) = target(prefix, host).map_err(|e| bad(e.0))?;
        let sels = prefix_keys(edge, h.as_deref(), &path).map_err(|e| bad(e.0))?;
        groups.push((
            "prefixes",
            sels.into_iter().map(PurgeSelector::Prefix).collect(),
        ));
    }
    for tag in &p.tags {
        groups.push(("tags", vec![PurgeSelector::Tag(tag.clone())]));
    }
    let mut manifests = Vec::new();
    let mut unresolved: Vec<String> = Vec::new();
    // Manifests neither learnt nor in the tiers are asked of the origin until then.
    let asked_until = tokio::time::Instant::now() + ORIGIN_WALK;
    for a in &p.assets {
        let (h, pq) = target(a, host).map_err(|e| bad(e.0))?;
        let h = asset_host(edge, h.as_deref(), &pq)
            .ok_or_else(|| bad(format!("`{a}`: no route serves it")))?;
        let root = asset_url(&h, &pq).ok_or_else(|| bad(format!("`{a}` is not a URL")))?;
        let members = edge
            .assets
            .members(root, |u| {
                let edge = edge.clone();
                async move {
                    match cached_body(&edge, &u).await {
                        Some(body) => Some(body),
                        None => origin_body(&edge, &u, asked_until).await,
                    }
                }
            })
            .await;
        unresolved.extend(members.unresolved.iter().cloned());
        let mut sels = Vec::new();
        for u in &members.urls {
            if let Some(h) = u.host_str() {
                let (h, pq) = url_target(u, h);
                if let Ok(keys) = url_keys(edge, Some(&h), &pq) {
                    sels.extend(keys.into_iter().map(PurgeSelector::Key));
                }
            }
        }
        for u in &members.prefixes {
            if let Some(h) = u.host_str() {
                let (h, path) = url_target(u, h);
                if let Ok(keys) = prefix_keys(edge, Some(&h), &path) {
                    sels.extend(keys.into_iter().map(PurgeSelector::Prefix));
                }
            }
        }
        manifests.extend(members.manifests);
        groups.push(("assets", sels));
    }
    let all: Vec<PurgeSelector> = groups.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let counts = edge.purge(&all, p.soft).await.map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("purge not durable (store journal): {e}"),
        )
    })?;
    if !p.soft {
        edge.assets.forget(&manifests);
    }
    let mut per_kind = serde_json::Map::new();
    for kind in ["urls", "prefixes", "tags", "assets"] {
        per_kind.insert(kind.into(), 0.into());
    }
    let mut at = 0;
    let mut total = 0u64;
    for (kind, sels) in &groups {
        let n: usize = counts[at..at + sels.len()].iter().sum();
        at += sels.len();
        total += n as u64;
        let entry = per_kind.entry(*kind).or_insert(0.into());
        *entry = (entry.as_u64().unwrap_or(0) + n as u64).into();
    }
    edge.metrics.purged.fetch_add(total, Relaxed);
    let mut answer = serde_json::json!({
        "purged": total,
        "soft": p.soft,
        "selected": per_kind,
    });
    if !unresolved.is_empty() {
        // Said, not hidden in a count of 0: what these manifests list was not purged.
        tracing::warn!(manifests = ?unresolved, "asset purge could not read some manifests");
        answer["unresolved"] = unresolved.into();
    }
    if let Some(mut f) = fanout {
        if !local_after_shields(edge) {
            f.phase(edge, ClusterRole::Shield).await;
        }
        f.phase(edge, ClusterRole::Edge).await;
        answer["fanout"] = f.report();
    }
    Ok(answer)
}

/// How long an asset purge may spend asking the origin for manifests the edge no longer
/// holds (`origin_body`), all of them together; past it the rest are reported unresolved.
const ORIGIN_WALK: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest manifest read from the origin for an asset purge.
const MAX_MANIFEST: usize = crate::proxy::signed::MAX_REWRITE;

/// The body of a manifest as its origin serves it now, asked as a fill would ask (through the
/// route's shields), for an asset the index has not learnt and the tiers no longer hold: a
/// pulled manifest lives in RAM only, so after a restart an asset purge found no manifest and
/// purged nothing. What the origin lists now is what viewers can still ask for. `None` past
/// `until`, or when the origin does not answer a `200` of at most `MAX_MANIFEST` bytes in
/// time. Nothing is stored.
async fn origin_body(edge: &Edge, u: &Url, until: tokio::time::Instant) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let h = u.host_str()?;
    let (h, pq) = url_target(u, h);
    let t = target::resolve(&edge.config, Some(&h), &pq)
        .or_else(|_| target::resolve(&edge.config, None, &pq))
        .ok()?;
    let headers =
        edge.origin
            .fill_headers(t.route, &http::HeaderMap::new(), &[], t.origin_host(), None);
    let ask = async {
        let resp = edge
            .origin
            .fetch_for(
                t.route,
                &t.key,
                http::Method::GET,
                &t.fill_target(&edge.config.cache.drop_query_params),
                headers,
                None,
                false,
            )
            .await
            .ok()?;
        if resp.status() != StatusCode::OK
            || crate::cache::vary::selects_representation(resp.headers())
        {
            return None;
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_MANIFEST);
        body.collect().await.ok().map(|b| b.to_bytes())
    };
    tokio::time::timeout_at(until, ask).await.ok().flatten()
}

/// The body of a manifest still in the tiers (for an asset the index has not learned).
async fn cached_body(edge: &Edge, u: &Url) -> Option<bytes::Bytes> {
    let h = u.host_str()?;
    let (h, pq) = url_target(u, h);
    for k in url_keys(edge, Some(&h), &pq).ok()? {
        if let Some((o, _)) = edge.lookup(&k).await {
            return Some(o.body.clone());
        }
    }
    None
}
