//! The request state machine, viewer to origin. `dispatch` checks and routes a request; a
//! cacheable GET/HEAD then runs through explicit phases (in the spirit of Varnish's
//! `cache_req_fsm.c` and pingora-proxy's cache phases), each step taking one `Phase` and
//! returning the next:
//!
//! ```text
//! Lookup ──fresh──────────────────────────────► Hit ──────────► Deliver
//!    │ ──stale, within stale-while-revalidate► StaleWhileRevalidate (+ background refresh) ► Deliver
//!    │ ──stale otherwise, or absent──────────► Fill ─► Read ──► Deliver
//!    │                                           │       ├─ other Vary variant ► Lookup (once)
//!    └─ hit-for-pass ─► Pass ◄───────────────────┴───────┴─ not shareable / collapse timeout
//! ```
//!
//! `Fill` claims the key's fill (the leader spawns the fill driver, `proxy::fill`) or joins it
//! (a collapsed reader); `Read` waits for the fill's head and answers from it (streaming,
//! a refreshed object, a pass, or an error with stale-if-error).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header;
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::cache::fill::{Fill, FillHead};
use crate::cache::key::cache_key;
use crate::cache::lock::{Claim, FillGuard};
use crate::cache::object::CachedObject;
use crate::cache::status::CacheStatus;
use crate::config::Route;
use crate::http::body::Body;
use crate::http::response::{self, Ask, CacheInfo, Source};
use crate::metrics::Metrics;
use crate::origin::is_loop;
use crate::proxy::edge::Edge;
use crate::proxy::error::EdgeError;
use crate::proxy::fill::{self, FillJob};
use crate::proxy::pass::{pass, relay};
use crate::proxy::tiers::Tier;

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

    pub(crate) fn cdn(&self) -> &str {
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
    if !route.acl.permits(peer.map(|p| p.ip())) {
        Metrics::inc(&edge.metrics.limits.ip_denied);
        return Ok(crate::http::limits::ip_denied(&edge.config.cdn_id));
    }
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

/// Where a cacheable request is; see the module doc for the transitions.
enum Phase {
    /// Look the key (its Vary variant once known) up in RAM, then on disk.
    Lookup,
    /// A fresh object answers.
    Hit(Arc<CachedObject>, Tier),
    /// Stale within stale-while-revalidate: answer it now, refresh once in the background.
    StaleWhileRevalidate(Arc<CachedObject>),
    /// No usable object: claim the key's fill, or join the one in flight.
    Fill { stale: Option<Arc<CachedObject>> },
    /// Wait for the fill's head and answer from it.
    Read {
        fill: Arc<Fill>,
        leader: bool,
        stale: Option<Arc<CachedObject>>,
    },
    /// Forward to the origin uncached.
    Pass {
        reason: &'static str,
        status: CacheStatus,
    },
    /// The response is ready.
    Deliver(Response<Body>),
}

/// What a request carries from phase to phase.
struct Lookup {
    base_key: String,
    /// `base_key`, plus the variant once the response is known to vary.
    key: String,
    /// Lookups done: a second happens only when a collapsed reader learns the response varies
    /// on a header whose value differs from the leader's.
    rounds: u8,
}

/// GET/HEAD through the cache.
async fn cached(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    let edge = req.edge;
    let base_key = cache_key(
        &req.host,
        &req.path_and_query,
        &edge.config.cache.drop_query_params,
    );
    let mut phase = if edge.is_hit_for_pass(&base_key) {
        Phase::Pass {
            reason: "hit-for-pass",
            status: CacheStatus::Bypass,
        }
    } else {
        Phase::Lookup
    };
    let mut at = Lookup {
        key: base_key.clone(),
        base_key,
        rounds: 0,
    };
    loop {
        phase = match phase {
            Phase::Lookup => lookup(req, &mut at).await,
            Phase::Hit(obj, tier) => Phase::Deliver(serve_hit(req, &obj, tier, edge.clock.now())),
            Phase::StaleWhileRevalidate(obj) => {
                refresh_in_background(req, &at, obj.clone());
                let now = edge.clock.now();
                Phase::Deliver(serve_stale(req, &obj, now, "stale-while-revalidate"))
            }
            Phase::Fill { stale } => claim(req, &at, stale).await,
            Phase::Read {
                fill,
                leader,
                stale,
            } => read(req, fill, leader, stale).await?,
            Phase::Pass { reason, status } => {
                return pass(req, None, reason, status).await;
            }
            Phase::Deliver(resp) => return Ok(resp),
        };
    }
}

/// `Lookup`: the variant key, then RAM and disk; fresh → Hit, stale → by the stale rules.
async fn lookup(req: &Req<'_>, at: &mut Lookup) -> Phase {
    let edge = req.edge;
    if at.rounds == 2 {
        return Phase::Pass {
            reason: "vary-mismatch",
            status: CacheStatus::Miss,
        };
    }
    at.rounds += 1;
    at.key = match edge.vary_index.get(&at.base_key) {
        Some(spec) => format!("{}{}", at.base_key, spec.variant(&req.parts.headers)),
        None => at.base_key.clone(),
    };
    let now = edge.clock.now();
    match edge.lookup(&at.key).await {
        Some((obj, tier)) => match obj.staleness(now) {
            None => Phase::Hit(obj, tier),
            Some(stale) if stale <= obj.freshness.stale_while_revalidate => {
                Phase::StaleWhileRevalidate(obj)
            }
            Some(_) => Phase::Fill { stale: Some(obj) },
        },
        None => Phase::Fill { stale: None },
    }
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

/// Starts a revalidation if none is in flight, reading nothing from it.
fn refresh_in_background(req: &Req<'_>, at: &Lookup, stale: Arc<CachedObject>) {
    let edge = req.edge;
    if let Claim::Leader(fill, guard) = edge.fills.claim(&at.key) {
        // Refreshed by a fill that ended since our lookup: nothing to do.
        if let Some(obj) = edge.ram_fresh(&at.key, edge.clock.now()) {
            release_with(fill, guard, obj);
            return;
        }
        let job = FillJob::new(req, &at.base_key, Some(stale));
        edge.spawn(fill::drive_fill(edge.clone(), guard, fill, job));
    }
}

/// Ends a fill claimed but not needed (the object turned up fresh): anyone who joined it in the
/// meantime gets that object instead of an error.
fn release_with(fill: Arc<Fill>, guard: FillGuard, obj: Arc<CachedObject>) {
    fill.set_head(FillHead::Complete(obj));
    fill.finish(Ok(()));
    drop(guard);
}

/// `Fill`: become the key's leader (spawning the fill driver, detached from every viewer) or a
/// reader of the fill in flight.
async fn claim(req: &Req<'_>, at: &Lookup, stale: Option<Arc<CachedObject>>) -> Phase {
    let edge = req.edge;
    match edge.fills.claim(&at.key) {
        Claim::Leader(fill, guard) => {
            // A fill may have stored the key and ended between our lookup and this claim: look
            // again now that we hold the key, or every such request would fetch it once more.
            if let Some((obj, tier)) = edge.lookup_fresh(&at.key, edge.clock.now()).await {
                release_with(fill, guard, obj.clone());
                return Phase::Hit(obj, tier);
            }
            let job = FillJob::new(req, &at.base_key, stale.clone());
            // Detached: a viewer that disconnects never cancels a fill others read or that
            // will be stored.
            edge.spawn(fill::drive_fill(edge.clone(), guard, fill.clone(), job));
            Phase::Read {
                fill,
                leader: true,
                stale,
            }
        }
        Claim::Reader(fill) => {
            Metrics::inc(&edge.metrics.collapsed);
            Phase::Read {
                fill,
                leader: false,
                stale,
            }
        }
    }
}

/// `Read`: the fill's head, then the response from it. A collapsed reader waits at most
/// `collapse_timeout` for the head, then passes.
async fn read(
    req: &Req<'_>,
    fill: Arc<Fill>,
    leader: bool,
    stale: Option<Arc<CachedObject>>,
) -> Result<Phase, EdgeError> {
    let edge = req.edge;
    let head = if leader {
        fill.head().await
    } else {
        match tokio::time::timeout(edge.config.cache.collapse_timeout, fill.head()).await {
            Ok(h) => h,
            Err(_) => {
                return Ok(Phase::Pass {
                    reason: "collapse-timeout",
                    status: CacheStatus::Miss,
                })
            }
        }
    };
    let now = edge.clock.now();
    let stale_ok = |obj: &CachedObject| {
        obj.staleness(now)
            .is_some_and(|s| s <= obj.freshness.stale_if_error)
    };
    let collapsed = if leader { "" } else { "; collapsed" };
    let resp = match head {
        FillHead::Streaming(h) => {
            if !h.vary.is_empty() && h.vary.variant(&req.parts.headers) != h.leader_variant {
                return Ok(Phase::Lookup);
            }
            if h.status.is_server_error() {
                if let Some(obj) = stale.as_deref().filter(|o| stale_ok(o)) {
                    return Ok(Phase::Deliver(serve_stale(req, obj, now, "stale-if-error")));
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
            None => {
                return Ok(Phase::Pass {
                    reason,
                    status: CacheStatus::Bypass,
                })
            }
        },
        FillHead::Failed(e) => match stale.as_deref().filter(|o| stale_ok(o)) {
            Some(obj) => serve_stale(req, obj, now, "stale-if-error"),
            None => return Err(e.into()),
        },
    };
    Ok(Phase::Deliver(resp))
}
