//! The request path, viewer to origin:
//!
//! 1. loop check (CDN-Loop), route by longest prefix;
//! 2. non-GET/HEAD and credentialed requests pass through uncached (BYPASS);
//! 3. key (host + path + normalised query, + Vary variant) -> RAM -> disk;
//! 4. fresh: HIT. Stale: within stale-while-revalidate serve STALE and refresh once in the
//!    background; else revalidate/refetch through a fill (EXPIRED), falling back to the stale copy
//!    within stale-if-error (STALE);
//! 5. miss: claim the key's fill; the leader's fetch streams to every reader (MISS).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header;
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::admin::metrics::Metrics;
use crate::cache::fill::{Fill, FillHead};
use crate::cache::key::cache_key;
use crate::cache::lock::{Claim, FillGuard};
use crate::cache::object::CachedObject;
use crate::cache::status::CacheStatus;
use crate::config::Route;
use crate::edge::{Edge, Tier};
use crate::http::body::{incoming_stream, Body};
use crate::http::fetch::{self, FillJob};
use crate::http::response::{self, Ask, CacheInfo, EdgeError, LogInfo, Source};
use crate::origin::{is_loop, OriginClient};

/// Everything about the viewer request the cached path needs after the body is split off.
pub struct Req<'a> {
    pub edge: &'a Arc<Edge>,
    pub parts: &'a Parts,
    pub route: &'a Route,
    pub host: String,
    pub path_and_query: String,
    pub peer: Option<SocketAddr>,
}

impl Req<'_> {
    fn ask(&self) -> Ask<'_> {
        Ask {
            method: &self.parts.method,
            headers: &self.parts.headers,
        }
    }

    fn cdn(&self) -> &str {
        &self.edge.config.cdn_id
    }
}

/// Handles one viewer request. Never fails: errors become responses.
pub async fn handle(
    edge: Arc<Edge>,
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    match dispatch(&edge, &parts, body, peer).await {
        Ok(resp) => resp,
        Err(e) => {
            if let EdgeError::Origin(_) = e {
                Metrics::inc(&edge.metrics.origin_errors);
            }
            e.response(&edge.config.cdn_id)
        }
    }
}

async fn dispatch(
    edge: &Arc<Edge>,
    parts: &Parts,
    body: Incoming,
    peer: Option<SocketAddr>,
) -> Result<Response<Body>, EdgeError> {
    if is_loop(&parts.headers, &edge.config.cdn_id, &edge.node) {
        return Err(EdgeError::Loop);
    }
    let path = parts.uri.path();
    if !path.starts_with('/') {
        return Err(EdgeError::BadRequest(
            "request target must be an absolute path",
        ));
    }
    let route = edge.config.route_for(path).ok_or(EdgeError::NoRoute)?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let req = Req {
        edge,
        parts,
        route,
        host,
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        peer,
    };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return pass(&req, Some(body), "method", CacheStatus::Bypass).await;
    }
    drop(body);
    let credentials = parts.headers.contains_key(header::AUTHORIZATION)
        || parts.headers.contains_key(header::COOKIE);
    if credentials && !route.public {
        return pass(&req, None, "credentials", CacheStatus::Bypass).await;
    }
    cached(&req).await
}

/// GET/HEAD through the cache.
async fn cached(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    let edge = req.edge;
    let base_key = cache_key(
        &req.host,
        &req.path_and_query,
        &edge.config.cache.drop_query_params,
    );
    if edge.is_hit_for_pass(&base_key) {
        return pass(req, None, "hit-for-pass", CacheStatus::Bypass).await;
    }
    // A second round happens only when a collapsed reader learns the response varies on a
    // header whose value differs from the leader's: then it looks up its own variant.
    for _ in 0..2 {
        let key: Cow<str> = match edge.vary_index.get(&base_key) {
            Some(spec) => format!("{base_key}{}", spec.variant(&req.parts.headers)).into(),
            None => Cow::Borrowed(&base_key),
        };
        let now = SystemTime::now();
        let found = edge.lookup(&key).await;
        let outcome = match found {
            Some((obj, tier)) => match obj.staleness(now) {
                None => return Ok(serve_hit(req, &obj, tier, now)),
                Some(stale) if stale <= obj.freshness.stale_while_revalidate => {
                    refresh_in_background(req, &key, &base_key, obj.clone());
                    return Ok(serve_stale(req, &obj, now, "stale-while-revalidate"));
                }
                Some(_) => through_fill(req, &key, &base_key, Some(obj)).await?,
            },
            None => through_fill(req, &key, &base_key, None).await?,
        };
        match outcome {
            FillOutcome::Done(resp) => return Ok(resp),
            FillOutcome::OtherVariant => continue,
        }
    }
    pass(req, None, "vary-mismatch", CacheStatus::Miss).await
}

fn serve_hit(req: &Req<'_>, obj: &CachedObject, tier: Tier, now: SystemTime) -> Response<Body> {
    req.edge.metrics.request(CacheStatus::Hit);
    response::build(
        &req.ask(),
        obj.status,
        &obj.headers,
        Source::Bytes(obj.body.clone()),
        CacheInfo {
            status: CacheStatus::Hit,
            cache_status: format!(
                "{}; hit; ttl={}; detail={}",
                req.cdn(),
                obj.ttl_left(now),
                tier.as_str()
            ),
            age: Some(obj.age(now).as_secs()),
        },
    )
}

fn serve_stale(req: &Req<'_>, obj: &CachedObject, now: SystemTime, why: &str) -> Response<Body> {
    req.edge.metrics.request(CacheStatus::Stale);
    response::build(
        &req.ask(),
        obj.status,
        &obj.headers,
        Source::Bytes(obj.body.clone()),
        CacheInfo {
            status: CacheStatus::Stale,
            cache_status: format!(
                "{}; hit; ttl={}; fwd=stale; detail={why}",
                req.cdn(),
                obj.ttl_left(now)
            ),
            age: Some(obj.age(now).as_secs()),
        },
    )
}

enum FillOutcome {
    Done(Response<Body>),
    /// The in-flight response varies and is not this request's variant.
    OtherVariant,
}

/// Starts a revalidation if none is in flight, reading nothing from it.
fn refresh_in_background(req: &Req<'_>, key: &str, base_key: &str, stale: Arc<CachedObject>) {
    if let Claim::Leader(fill, guard) = req.edge.fills.claim(key) {
        // Refreshed by a fill that ended since our lookup: nothing to do.
        if let Some(obj) = req
            .edge
            .ram
            .get(key)
            .filter(|o| o.staleness(SystemTime::now()).is_none())
        {
            release_with(fill, guard, obj);
            return;
        }
        let job = FillJob::new(req, base_key, Some(stale));
        tokio::spawn(fetch::drive_fill(req.edge.clone(), guard, fill, job));
    }
}

/// The key's object if it is cached and fresh.
async fn fresh(edge: &Edge, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
    edge.lookup(key)
        .await
        .filter(|(o, _)| o.staleness(SystemTime::now()).is_none())
}

/// Ends a fill claimed but not needed (the object turned up fresh): anyone who joined it in the
/// meantime gets that object instead of an error.
fn release_with(fill: Arc<Fill>, guard: FillGuard, obj: Arc<CachedObject>) {
    fill.set_head(FillHead::Complete(obj));
    fill.finish(Ok(()));
    drop(guard);
}

/// Reads the key's fill, starting it if this request is first.
async fn through_fill(
    req: &Req<'_>,
    key: &str,
    base_key: &str,
    stale: Option<Arc<CachedObject>>,
) -> Result<FillOutcome, EdgeError> {
    let edge = req.edge;
    let (fill, leader): (Arc<Fill>, bool) = match edge.fills.claim(key) {
        Claim::Leader(fill, guard) => {
            // A fill may have stored the key and ended between our lookup and this claim: look
            // again now that we hold the key, or every such request would fetch it once more.
            if let Some((obj, tier)) = fresh(edge, key).await {
                release_with(fill, guard, obj.clone());
                return Ok(FillOutcome::Done(serve_hit(
                    req,
                    &obj,
                    tier,
                    SystemTime::now(),
                )));
            }
            let job = FillJob::new(req, base_key, stale.clone());
            // Detached: a viewer that disconnects never cancels a fill others read or that
            // will be stored.
            tokio::spawn(fetch::drive_fill(edge.clone(), guard, fill.clone(), job));
            (fill, true)
        }
        Claim::Reader(fill) => {
            Metrics::inc(&edge.metrics.collapsed);
            (fill, false)
        }
    };
    let head = if leader {
        fill.head().await
    } else {
        match tokio::time::timeout(edge.config.cache.collapse_timeout, fill.head()).await {
            Ok(h) => h,
            Err(_) => {
                let resp = pass(req, None, "collapse-timeout", CacheStatus::Miss).await?;
                return Ok(FillOutcome::Done(resp));
            }
        }
    };
    let now = SystemTime::now();
    let stale_ok = |obj: &CachedObject| {
        obj.staleness(now)
            .is_some_and(|s| s <= obj.freshness.stale_if_error)
    };
    let collapsed = if leader { "" } else { "; collapsed" };
    let resp = match head {
        FillHead::Streaming(h) => {
            if !h.vary.is_empty() && h.vary.variant(&req.parts.headers) != h.leader_variant {
                return Ok(FillOutcome::OtherVariant);
            }
            if h.status.is_server_error() {
                if let Some(obj) = stale.as_deref().filter(|o| stale_ok(o)) {
                    return Ok(FillOutcome::Done(serve_stale(
                        req,
                        obj,
                        now,
                        "stale-if-error",
                    )));
                }
            }
            let status = if h.refetch {
                CacheStatus::Expired
            } else {
                CacheStatus::Miss
            };
            edge.metrics.request(status);
            let fwd = if h.refetch { "stale" } else { "miss" };
            let stored = if h.stored { "; stored" } else { "" };
            response::build(
                &req.ask(),
                h.status,
                &h.headers,
                Source::Fill(fill.clone(), h.content_length),
                CacheInfo {
                    status,
                    cache_status: format!(
                        "{}; fwd={fwd}; fwd-status={}{stored}{collapsed}",
                        req.cdn(),
                        h.status.as_u16()
                    ),
                    age: Some(h.age),
                },
            )
        }
        FillHead::Complete(obj) => {
            edge.metrics.request(CacheStatus::Expired);
            response::build(
                &req.ask(),
                obj.status,
                &obj.headers,
                Source::Bytes(obj.body.clone()),
                CacheInfo {
                    status: CacheStatus::Expired,
                    cache_status: format!(
                        "{}; fwd=stale; fwd-status=304; ttl={}{collapsed}",
                        req.cdn(),
                        obj.ttl_left(now)
                    ),
                    age: Some(obj.age(now).as_secs()),
                },
            )
        }
        // Only the leader may take the origin response: a waiter that took it first would drop
        // it, sending the leader to the origin a second time.
        FillHead::Pass(reason) => match leader.then(|| fill.take_pass()).flatten() {
            Some(resp) => {
                edge.metrics.request(CacheStatus::Miss);
                Metrics::inc(&edge.metrics.passes);
                relay(
                    req,
                    resp,
                    CacheStatus::Miss,
                    &format!("fwd=miss; detail={reason}"),
                )
            }
            None => pass(req, None, reason, CacheStatus::Bypass).await?,
        },
        FillHead::Failed(e) => match stale.as_deref().filter(|o| stale_ok(o)) {
            Some(obj) => serve_stale(req, obj, now, "stale-if-error"),
            None => return Err(e.into()),
        },
    };
    Ok(FillOutcome::Done(resp))
}

/// Forwards the request to the origin uncached and streams the answer back (other methods,
/// credentialed requests, hit-for-pass, unshareable responses for collapsed waiters).
pub async fn pass(
    req: &Req<'_>,
    body: Option<Incoming>,
    reason: &str,
    status: CacheStatus,
) -> Result<Response<Body>, EdgeError> {
    let edge = req.edge;
    Metrics::inc(&edge.metrics.passes);
    edge.metrics.request(status);
    let uri = OriginClient::uri_for(req.route, &req.path_and_query)?;
    let headers = edge.origin.origin_headers(
        req.route,
        &req.parts.headers,
        &req.host,
        req.peer.map(|p| p.ip()),
    );
    let started = Instant::now();
    let resp = match body {
        None => {
            edge.origin
                .fetch(req.parts.method.clone(), uri, headers)
                .await?
        }
        Some(body) => {
            let len = crate::cache::policy::content_length(&req.parts.headers);
            let stream = incoming_stream(body, edge.origin.between_bytes_timeout());
            let mut out = Request::new(Body::stream(stream, len));
            *out.method_mut() = req.parts.method.clone();
            *out.uri_mut() = uri;
            *out.headers_mut() = headers;
            edge.origin.send(out).await?
        }
    };
    let mut resp = relay(req, resp, status, &format!("fwd=bypass; detail={reason}"));
    resp.extensions_mut()
        .get_or_insert_default::<LogInfo>()
        .origin_ms = Some(started.elapsed().as_millis() as u64);
    Ok(resp)
}

/// Streams an origin response to the viewer as it comes, hop-by-hop headers removed.
fn relay(
    req: &Req<'_>,
    resp: Response<Incoming>,
    status: CacheStatus,
    cache_status: &str,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    crate::cache::object::strip_hop_by_hop(&mut parts.headers);
    let len = crate::cache::policy::content_length(&parts.headers);
    let stream = incoming_stream(body, req.edge.origin.between_bytes_timeout());
    let body = if req.parts.method == Method::HEAD {
        Body::empty()
    } else {
        Body::stream(stream, len)
    };
    let mut out = Response::from_parts(parts, body);
    response::stamp(
        &mut out,
        CacheInfo {
            status,
            cache_status: format!("{}; {cache_status}", req.cdn()),
            age: None,
        },
    );
    out
}
