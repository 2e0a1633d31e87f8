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
//! `dispatch` refuses a GET/HEAD with a body (400), then resolves the target before anything
//! else looks at it (`proxy::target`: Host validated, path normalised, routed, keyed; 400 or
//! 421), so routing, the content class, the key and the origin request all see one path.
//!
//! `Fill` claims the key's fill (the leader spawns the fill driver, `proxy::fill`) or joins it
//! (a collapsed reader); `Read` waits for the fill's head and answers from it (streaming,
//! a refreshed object, a pass, or an error with stale-if-error).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue, MAX_FORWARDS};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Incoming};

use crate::cache::fill::{Fill, FillHead, OriginFailure, StreamHead};
use crate::cache::lock::{Claim, FillGuard};
use crate::cache::object::CachedObject;
use crate::cache::policy;
use crate::cache::request_cc::{RequestDirectives, Verdict};
use crate::cache::status::CacheStatus;
use crate::cmcd::Cmcd;
use crate::config::{CorsConfig, Route};
use crate::http::body::Body;
use crate::http::cors;
use crate::http::response::{self, Ask, CacheInfo, Source};
use crate::metrics::Metrics;
use crate::origin::is_loop;
use crate::proxy::edge::Edge;
use crate::proxy::error::EdgeError;
use crate::proxy::fill::{self, FillJob};
use crate::proxy::pass::{pass, pass_as, relay};
use crate::proxy::signed;
use crate::proxy::slice;
use crate::proxy::target;
use crate::proxy::tiers::Tier;

/// Everything about the viewer request the cached path needs after the body is split off.
/// What only a fill or a pass asks the origin for (`host`, `path_and_query`, `fill_target`) is
/// worked out when asked: a hit never formats an origin request.
pub struct Req<'a> {
    pub edge: &'a Arc<Edge>,
    pub parts: &'a Parts,
    /// The resolved target (`proxy::target`): normalised path, query, hosts, the base key.
    pub target: target::Target<'a>,
    pub peer: Option<SocketAddr>,
}

impl<'a> Req<'a> {
    /// The route serving the request.
    pub fn route(&self) -> &'a Route {
        self.target.route
    }

    /// The route's index in `Config::routes` (what per-route limits are kept by).
    pub fn route_index(&self) -> usize {
        self.edge
            .config
            .routes
            .iter()
            .position(|r| std::ptr::eq(r, self.route()))
            .unwrap_or(0)
    }

    /// The base cache key (`proxy::target`).
    pub fn key(&self) -> &str {
        &self.target.key
    }

    /// The `Host` origin requests carry: the route's, or the validated viewer host
    /// (`pass_host`).
    pub fn host(&self) -> &str {
        self.target.origin_host()
    }

    /// What a pass-through asks the origin for: the normalised path and the viewer's query.
    pub fn path_and_query(&self) -> String {
        self.target.pass_target()
    }

    /// What a fill asks the origin for: the normalised path and the query the key keeps; with
    /// `[route.token] forward = true` and a query token, that token too (the origin wants it;
    /// the key drops it, so viewers share the object). Only the token the edge verified
    /// (`signed::admit` left that one alone in the query), none of the leader's other dropped
    /// parameters: the object stored under a key is the one the key names.
    pub fn fill_target(&self) -> String {
        let kept = self
            .target
            .fill_target(&self.edge.config.cache.drop_query_params);
        let token = self
            .route()
            .token
            .as_ref()
            .filter(|t| t.forward)
            .and_then(|t| {
                let q = self.target.query.as_deref()?;
                Some((&t.param, crate::auth::source::query_value(q, &t.param)?))
            });
        match token {
            Some((name, raw)) => {
                let sep = if kept.contains('?') { '&' } else { '?' };
                format!("{kept}{sep}{name}={raw}")
            }
            None => kept,
        }
    }

    pub(crate) fn ask(&self) -> Ask<'_> {
        Ask {
            method: &self.parts.method,
            headers: &self.parts.headers,
        }
    }

    /// This node's name in `Cache-Status` (RFC 9211 §2: a Token, or a String when `cdn_id` is
    /// not one, e.g. starting with a digit).
    pub(crate) fn cdn(&self) -> std::borrow::Cow<'_, str> {
        crate::http::cache_status::member_name(&self.edge.config.cdn_id)
    }
}

/// Handles one viewer request. Never fails: errors become responses.
/// Borrows the edge: the listener holds it for the connection, and a clone per request would be
/// two atomic operations on a line every core shares.
pub async fn handle(
    edge: &Arc<Edge>,
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    spend_max_forwards(&mut parts);
    let cmcd = read_cmcd(edge, &parts);
    let mut route_cors = None;
    let mut resp = match dispatch(edge, &parts, body, peer, cmcd.as_ref(), &mut route_cors).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.is_origin() {
                Metrics::inc(&edge.metrics.origin_errors);
            }
            e.response(&edge.config.cdn_id)
        }
    };
    // The route's CORS policy on every answer once routed (hits, misses, passes, the edge's
    // own errors: a player must see a 403 or a 503 as such); a preflight was answered whole.
    if let Some(policy) = route_cors {
        if !cors::is_preflight(&parts.method, &parts.headers) {
            cors::apply(policy, &parts.headers, resp.headers_mut());
        }
    }
    if let Some(c) = cmcd {
        resp.extensions_mut().insert(c);
    }
    resp
}

/// An `OPTIONS` that arrived with `Max-Forwards: 0`: this edge answers it itself.
#[derive(Clone)]
struct NoForwardsLeft;

/// RFC 9110 §7.6.2: a proxy receiving an `OPTIONS` (or `TRACE`, which the edge refuses) with
/// `Max-Forwards` answers it itself when the value is 0 (`NoForwardsLeft`), and otherwise
/// forwards it with the value less one. An invalid value (not one decimal number) is left as
/// it came.
fn spend_max_forwards(parts: &mut Parts) {
    if parts.method != Method::OPTIONS {
        return;
    }
    let mut values = parts.headers.get_all(MAX_FORWARDS).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return;
    };
    let digits = v.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return;
    }
    // A longer number than u64 holds is still more hops than any chain has.
    let left = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    match left.checked_sub(1) {
        None => {
            parts.extensions.insert(NoForwardsLeft);
        }
        Some(n) => {
            parts.headers.insert(MAX_FORWARDS, HeaderValue::from(n));
        }
    }
}

/// The request's CMCD, read once: counted in the route's metrics, then handed to the access log
/// as a response extension. `None` when the player sent none.
fn read_cmcd(edge: &Edge, parts: &Parts) -> Option<Cmcd> {
    let c = Cmcd::from_request(&parts.headers, parts.uri.query());
    if c.is_empty() {
        return None;
    }
    if let Some(route) = edge.config.route_for(parts.uri.path()) {
        edge.metrics.cmcd.observe(&route.prefix, &c);
    }
    Some(c)
}

/// Checks and routes a request, then answers it. `route_cors` is set to the route's CORS policy
/// once the request is routed, for `handle` to apply to whatever answer comes back.
async fn dispatch<'e>(
    edge: &'e Arc<Edge>,
    parts: &Parts,
    body: Incoming,
    peer: Option<SocketAddr>,
    cmcd: Option<&Cmcd>,
    route_cors: &mut Option<&'e CorsConfig>,
) -> Result<Response<Body>, EdgeError> {
    // RFC 9112 §3.2: a server MUST answer 400 to any HTTP/1.1 request without `Host`, an
    // absolute-form one included. HTTP/1.0 may omit it (the route's own host is used);
    // HTTP/2 and HTTP/3 carry `:authority` instead.
    if parts.version == http::Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
        return Err(EdgeError::BadRequest(
            "an HTTP/1.1 request must carry a Host header",
        ));
    }
    if parts.method == Method::TRACE || parts.method == Method::CONNECT {
        return Err(EdgeError::MethodNotAllowed);
    }
    // The authority-form (`GET example.com:80 HTTP/1.1`) is CONNECT's alone (RFC 9112
    // §3.2.3); any other method with it names no resource (it was fetched and stored as `/`).
    if parts.uri.scheme().is_none() && parts.uri.authority().is_some() {
        return Err(EdgeError::BadRequest(
            "the authority-form request target is only for CONNECT",
        ));
    }
    // `OPTIONS *` asks about the server itself: in HTTP/1.1 the asterisk-form, in HTTP/2 a
    // `:path` of `*` (RFC 9113 §8.3.1), whose URI also carries the scheme and authority. One
    // whose `Max-Forwards` was 0 has this edge as its final recipient (RFC 9110 §7.6.2).
    if parts.method == Method::OPTIONS
        && (parts.uri.path() == "*" || parts.extensions.get::<NoForwardsLeft>().is_some())
    {
        return Ok(response::server_options());
    }
    if crate::http::transfer_codings(&parts.headers).any(|c| !c.eq_ignore_ascii_case(b"chunked")) {
        return Err(EdgeError::TransferCoding);
    }
    let cacheable_method = parts.method == Method::GET || parts.method == Method::HEAD;
    // First of all: a GET or HEAD with a body is refused (RFC 9110 §9.3.1 gives such a body no
    // meaning). Forwarded on a shared fill its framing would stall a strict origin for every
    // collapsed viewer; dropped silently, a smuggled second request could hide in it.
    if cacheable_method && carries_body(parts, &body) {
        return Err(EdgeError::BadRequest(
            "a GET or HEAD request must not carry a body",
        ));
    }
    if is_loop(&parts.headers, &edge.config.cdn_id, &edge.node) {
        // Both ids: ours, and the chain the request came through (a shield listing itself).
        tracing::warn!(
            node = %edge.node,
            cdn_loop = ?parts.headers.get_all("cdn-loop").iter().collect::<Vec<_>>(),
            "request looped back to this node: 508"
        );
        return Err(EdgeError::Loop);
    }
    // Carried on every upstream request, a shared fill's included: refused alone.
    if crate::proxy::chain_limit::too_long(&parts.headers) {
        return Err(EdgeError::ChainTooLong);
    }
    let target = target::resolve(
        &edge.config,
        viewer_host(parts)?,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    )?;
    // CORS preflights on a route with a policy are the edge's to answer (never the origin's),
    // before the token gate: a browser sends a preflight without credentials or cookies.
    if let Some(policy) = &target.route.cors {
        *route_cors = Some(policy);
        if cors::is_preflight(&parts.method, &parts.headers) {
            if !target.route.acl.permits(peer.map(|p| p.ip())) {
                Metrics::inc(&edge.metrics.limits.ip_denied);
                return Ok(crate::http::limits::ip_denied(&edge.config.cdn_id));
            }
            return Ok(cors::preflight(policy, &parts.headers, &edge.metrics));
        }
    }
    // Signed URLs: checked before the cache is consulted (on the normalised path the route
    // was chosen by); the rest sees the request without its token.
    let gate = match signed::admit(edge, target.route, parts, peer) {
        Ok(gate) => gate,
        Err(why) => return Ok(signed::refused(why)),
    };
    let parts = gate.parts(parts);
    // The token left the query: what passes to the origin must not carry it either.
    let target = if target.route.token.is_some() {
        target::resolve(
            &edge.config,
            viewer_host(parts)?,
            parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        )?
    } else {
        target
    };
    if !target.route.acl.permits(peer.map(|p| p.ip())) {
        Metrics::inc(&edge.metrics.limits.ip_denied);
        return Ok(crate::http::limits::ip_denied(&edge.config.cdn_id));
    }
    let req = Req {
        edge,
        parts,
        target,
        peer,
    };
    let mut resp = respond(&req, body).await?;
    // A manifest rewritten for its viewer is answered whole (`signed::Gate::answer_whole`).
    if let Some(whole) = gate.answer_whole(parts, &resp) {
        let again = Req {
            parts: &whole,
            target: req.target.clone(),
            ..req
        };
        resp = Box::pin(cacheable(&again)).await?;
    }
    if let Some(c) = cmcd {
        crate::proxy::prefetch::after_hinted_request(&req, c, resp.status());
    }
    let resp = gate.finish(edge, resp).await?;
    // Boxed, and only when on: every request's future would otherwise carry the compression
    // step's state (a collected body, the encoder hand-off).
    if !edge.config.cache.compress_manifests {
        return Ok(resp);
    }
    Ok(Box::pin(crate::proxy::compress::manifest(
        edge,
        parts,
        resp,
        !gate.rewrites(),
    ))
    .await)
}

/// Other methods and requests with cookies pass; GET/HEAD go through the cache, `Authorization`
/// included (see `authorized`).
async fn respond(req: &Req<'_>, body: Incoming) -> Result<Response<Body>, EdgeError> {
    let parts = req.parts;
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Box::pin(pass(req, Some(body), "method", CacheStatus::Bypass)).await;
    }
    drop(body);
    cacheable(req).await
}

/// A GET or HEAD: cookies on a non-public route pass, and so does a manifest on a route that
/// forwards tokens (`signed::own_manifest`: made for its viewer's token); the rest goes through
/// the cache.
async fn cacheable(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    if req.parts.headers.contains_key(header::COOKIE) && !req.route().public {
        return Box::pin(pass(req, None, "credentials", CacheStatus::Bypass)).await;
    }
    if signed::own_manifest(req.route(), &req.target.path, None) {
        return Box::pin(pass(
            req,
            None,
            signed::TOKEN_FORWARDED,
            CacheStatus::Bypass,
        ))
        .await;
    }
    cached(req).await
}

/// A request whose `Authorization` the origin decides on (RFC 9111 §3.5): a stored response
/// may answer it, but its fill forwards the credentials and what the origin answers is stored
/// (and shared with the fill's other viewers) only when marked `public`, `s-maxage` or
/// `must-revalidate` (`proxy::fill`). On `public` routes the edge stands for the origin's
/// access control and the header is neither forwarded nor looked at.
pub(crate) fn authorized(req: &Req<'_>) -> bool {
    !req.route().public && req.parts.headers.contains_key(header::AUTHORIZATION)
}

/// Whether a request carries a body: any `Transfer-Encoding`, a `Content-Length` other than 0
/// (an unparsable one included), or, on HTTP/2, DATA after the headers.
fn carries_body(parts: &Parts, body: &Incoming) -> bool {
    parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.to_str().ok().map(str::trim) != Some("0"))
        || !HttpBody::is_end_stream(body)
}

/// The host a viewer asked for: the request target's authority (absolute-form, HTTP/2
/// `:authority`; RFC 9112 §3.2.2 makes it win over `Host`), else the one `Host` header. Several
/// `Host` headers, or one that is not text, are refused (RFC 9112 §3.2: "any request message"),
/// an absolute-form one included: a proxy in front that reads another of them than the edge
/// does would route or key the request apart from what the edge fetches.
fn viewer_host(parts: &Parts) -> Result<Option<&str>, EdgeError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(
            h.to_str()
                .map_err(|_| EdgeError::BadRequest("Host is not text"))?,
        ),
        (Some(_), Some(_)) => return Err(EdgeError::BadRequest("more than one Host header")),
    };
    Ok(parts.uri.authority().map(|a| a.as_str()).or(host))
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
    /// No object under the base key and slicing on: a sliced object, or the probe telling
    /// whether it is one (`proxy::slice`).
    Slice,
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
struct Lookup<'r> {
    base_key: &'r str,
    /// `base_key`, plus the variant once the response is known to vary (borrowed until then:
    /// a hit on a key without variants copies no key).
    key: Cow<'r, str>,
    /// Lookups done, at most two: a second happens when a collapsed reader learns the response
    /// varies on a header whose value differs from the leader's, or that the fill's answer was
    /// its leader's alone (credentials, a cold-Range probe, the leader's own `CDN-Loop`, a
    /// refused prefetch, the leader's share of fill slots taken) and claims a fill of its own.
    /// A third is refused (a pass), so a phase must not send a request back to `Lookup` for
    /// what it found itself: an object found stored is judged in place (`from_stored`).
    rounds: u8,
    /// The viewer's `Cache-Control` directives (empty unless `cache.request_directives`).
    asked: RequestDirectives,
    /// The viewer's directives refused the stored object: the fill revalidates it even though
    /// it is fresh.
    revalidate: bool,
}

/// GET/HEAD through the cache; LL-HLS blocking reloads first (`proxy::llhls`).
async fn cached(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    if let Some(resp) = crate::proxy::llhls::intercept(req).await? {
        return Ok(resp);
    }
    phases(req).await
}

/// The phases of the module doc, from `Lookup` to `Deliver`.
pub(crate) async fn phases(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    let edge = req.edge;
    let base_key = req.key();
    let mut phase = if edge.is_hit_for_pass(base_key) {
        Phase::Pass {
            reason: "hit-for-pass",
            status: CacheStatus::Bypass,
        }
    } else {
        Phase::Lookup
    };
    let asked = if edge.config.cache.request_directives {
        RequestDirectives::parse(&req.parts.headers)
    } else {
        RequestDirectives::default()
    };
    let mut at = Lookup {
        key: Cow::Borrowed(base_key),
        base_key,
        rounds: 0,
        asked,
        revalidate: false,
    };
    loop {
        // `only-if-cached` (RFC 9111 §5.2.1.7): whatever would ask the origin answers 504
        // (a sliced object answers from stored slices alone, `slice::serve`).
        if at.asked.only_if_cached && matches!(phase, Phase::Fill { .. } | Phase::Pass { .. }) {
            return Err(EdgeError::NotCached);
        }
        phase = match phase {
            Phase::Lookup => lookup(req, &mut at).await,
            Phase::Hit(obj, tier) => Phase::Deliver(serve_hit(req, &obj, tier, edge.clock.now())),
            Phase::StaleWhileRevalidate(obj) => {
                // Under the viewer's `no-store` the copy answers, and the refresh is left to
                // the next viewer: its answer would be stored.
                if at.asked.stores(obj.class) {
                    refresh_in_background(req, &at, obj.clone());
                }
                let now = edge.clock.now();
                Phase::Deliver(serve_stale(req, &obj, now, "stale-while-revalidate"))
            }
            // The viewer's `no-store` (`RequestDirectives::stores`) on a miss: its own pass,
            // never a fill (which would store, and which others would join). A stored copy,
            // fresh or stale, whole or in slices, is served and refreshed as for any viewer:
            // `no-store` forbids storing, not serving, and the copy's stale-if-error stands.
            Phase::Fill { stale: None } if !stores_fetched(req, &at) => {
                return Box::pin(pass_unstored(req)).await;
            }
            Phase::Fill { stale } => Box::pin(claim(req, &at, stale)).await,
            Phase::Slice => {
                // As above, for an object that may be sliced: a miss of it (no record of its
                // slices stored) is the viewer's own pass; stored slices answer.
                if !stores_fetched(req, &at)
                    && edge.lookup(&slice::record_key(at.base_key)).await.is_none()
                {
                    return Box::pin(pass_unstored(req)).await;
                }
                match Box::pin(slice::serve(req, at.base_key, at.asked.only_if_cached)).await? {
                    slice::Outcome::Done(resp) => Phase::Deliver(resp),
                    slice::Outcome::Read { fill, leader } => Phase::Read {
                        fill,
                        leader,
                        stale: None,
                    },
                    slice::Outcome::Pass(reason) => Phase::Pass {
                        reason,
                        status: CacheStatus::Bypass,
                    },
                    slice::Outcome::Lookup => Phase::Lookup,
                    slice::Outcome::Stored(obj) => {
                        from_stored(req, &mut at, obj, Tier::Ram, edge.clock.now())
                    }
                    slice::Outcome::Whole => Phase::Fill { stale: None },
                }
            }
            Phase::Read {
                fill,
                leader,
                stale,
            } => Box::pin(read(req, fill, leader, stale)).await?,
            Phase::Pass { reason, status } => {
                return Box::pin(pass(req, None, reason, status)).await;
            }
            Phase::Deliver(resp) => return Ok(resp),
        };
    }
}

/// Whether what a fill fetches for this request on a miss may be stored, as the viewer's
/// `no-store` says for the class its path names (an object whose path names none is `other`).
fn stores_fetched(req: &Req<'_>, at: &Lookup<'_>) -> bool {
    // Read only under `no-store`: every other miss goes on without classifying its path.
    !at.asked.no_store
        || at
            .asked
            .stores(policy::ContentClass::classify(&req.target.path, None))
}

/// A miss whose answer must not be stored (the viewer's `no-store`), forwarded as a pass
/// (`fwd=miss`, `detail=no-store`).
async fn pass_unstored(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    pass_as(req, None, "no-store", "fwd=miss", CacheStatus::Miss).await
}

/// `Lookup`: the variant key, then RAM and disk; fresh → Hit, stale → by the stale rules.
async fn lookup<'r>(req: &'r Req<'_>, at: &mut Lookup<'r>) -> Phase {
    let edge = req.edge;
    if at.rounds == 2 {
        return Phase::Pass {
            reason: "vary-mismatch",
            status: CacheStatus::Miss,
        };
    }
    at.rounds += 1;
    at.key = match edge.vary_index.get(at.base_key) {
        Some(spec) => Cow::Owned(format!("{}{}", at.base_key, fill::variant_for(req, &spec))),
        None => Cow::Borrowed(at.base_key),
    };
    // A variant the origin would not let be shared (`proxy::fill` remembers it per variant).
    if at.key != at.base_key && edge.is_hit_for_pass(&at.key) {
        return Phase::Pass {
            reason: "hit-for-pass",
            status: CacheStatus::Bypass,
        };
    }
    let found = edge.lookup(&at.key).await;
    // Read after the lookup: a soft-purged object read from disk is made stale as of the
    // lookup's own clock reading (`Edge::lookup_disk`), and judged at an earlier instant it was
    // still fresh, served as a HIT.
    let now = edge.clock.now();
    match found {
        Some((obj, tier)) => from_stored(req, at, obj, tier, now),
        None => match crate::proxy::hint_range::key_for(req, at.base_key) {
            // A byte-range preload hint: its own collapsed, streaming fill (`hint_range`).
            Some(key) => {
                at.key = Cow::Owned(key);
                match edge.lookup(&at.key).await {
                    Some((obj, tier)) if obj.staleness(now).is_none() => Phase::Hit(obj, tier),
                    _ => Phase::Fill { stale: None },
                }
            }
            None if slice::applies(edge, at.base_key, &at.key) => Phase::Slice,
            None => Phase::Fill { stale: None },
        },
    }
}

/// What a stored object found for the request makes of it at `now`: a hit, a stale answer, or
/// a fill (revalidating it), as the viewer's directives and the object's freshness say.
fn from_stored(
    req: &Req<'_>,
    at: &mut Lookup<'_>,
    obj: Arc<CachedObject>,
    tier: Tier,
    now: SystemTime,
) -> Phase {
    match at.asked.judge(&obj, obj.age(now)) {
        Verdict::Revalidate => {
            at.revalidate = true;
            Phase::Fill { stale: Some(obj) }
        }
        Verdict::ServeStale => Phase::Deliver(serve_stale(req, &obj, now, "max-stale")),
        Verdict::AsStored => match obj.staleness(now) {
            None => Phase::Hit(obj, tier),
            Some(stale) if stale <= obj.freshness.stale_while_revalidate => {
                Phase::StaleWhileRevalidate(obj)
            }
            Some(_) => Phase::Fill { stale: Some(obj) },
        },
    }
}

fn serve_hit(req: &Req<'_>, obj: &CachedObject, tier: Tier, now: SystemTime) -> Response<Body> {
    let cache_status = format!(
        "{}; hit; ttl={}; detail={}",
        req.cdn(),
        obj.ttl_left(now),
        tier.as_str()
    );
    serve_object(req, obj, CacheStatus::Hit, cache_status, now)
}

/// A stale object answering without the origin (stale-while-revalidate, a viewer's
/// `max-stale`): RFC 9211 §2.1 calls it a hit, its staleness the negative `ttl` (§3: "a stale
/// hit just has negative freshness"); the background refresh is no forwarding of this request.
fn serve_stale(req: &Req<'_>, obj: &CachedObject, now: SystemTime, why: &str) -> Response<Body> {
    let cache_status = format!(
        "{}; hit; ttl={}; detail={why}",
        req.cdn(),
        obj.ttl_left(now)
    );
    serve_object(req, obj, CacheStatus::Stale, cache_status, now)
}

/// A stale object standing in for a failed origin (stale-if-error): the request did go forward
/// (`fwd=stale`, with the status the origin answered, if it answered), so it is no hit.
fn serve_stale_on_error(
    req: &Req<'_>,
    obj: &CachedObject,
    now: SystemTime,
    origin_status: Option<http::StatusCode>,
) -> Response<Body> {
    let fwd_status = origin_status
        .map(|s| format!("; fwd-status={}", s.as_u16()))
        .unwrap_or_default();
    let cache_status = format!(
        "{}; fwd=stale{fwd_status}; ttl={}; detail=stale-if-error",
        req.cdn(),
        obj.ttl_left(now)
    );
    serve_object(req, obj, CacheStatus::Stale, cache_status, now)
}

/// RFC 9211 §2.2's reason a request with a stored object went forward: the object was stale,
/// or it was fresh and only the viewer's request directives refused it (`request`).
fn fwd_reason(stale: Option<&CachedObject>, now: SystemTime) -> &'static str {
    match stale {
        Some(obj) if obj.staleness(now).is_none() => "request",
        Some(_) => "stale",
        None => "miss",
    }
}

/// A response from a stored object (hit, stale, an LL-HLS playlist already satisfying the
/// request), counted under `status`.
pub(crate) fn serve_object(
    req: &Req<'_>,
    obj: &CachedObject,
    status: CacheStatus,
    cache_status: String,
    now: SystemTime,
) -> Response<Body> {
    req.edge.metrics.request(status);
    response::build(
        &req.ask(),
        obj.status,
        &obj.headers,
        Source::Bytes(obj.body.clone()),
        CacheInfo {
            status,
            cache_status,
            age: Some(obj.age(now).as_secs()),
        },
    )
}

/// Starts a revalidation if none is in flight, reading nothing from it.
fn refresh_in_background(req: &Req<'_>, at: &Lookup<'_>, stale: Arc<CachedObject>) {
    let edge = req.edge;
    if let Claim::Leader(fill, guard) = edge.fills.claim(&at.key) {
        // Refreshed by a fill that ended since our lookup: nothing to do.
        if let Some(obj) = edge.ram_fresh(&at.key, edge.clock.now()) {
            release_with(fill, guard, obj);
            return;
        }
        let job = FillJob::new(req, at.base_key, Some(stale))
            .hinted_range(crate::proxy::hint_range::start_of(&at.key));
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
async fn claim(req: &Req<'_>, at: &Lookup<'_>, stale: Option<Arc<CachedObject>>) -> Phase {
    let edge = req.edge;
    match edge.fills.claim(&at.key) {
        Claim::Leader(fill, guard) => {
            // A fill may have stored the key and ended between our lookup and this claim: look
            // again now that we hold the key, or every such request would fetch it once more.
            // (Not when the viewer's directives refused the fresh copy: it is revalidated.)
            if !at.revalidate {
                if let Some((obj, tier)) = edge.lookup_fresh(&at.key).await {
                    release_with(fill, guard, obj.clone());
                    return Phase::Hit(obj, tier);
                }
            }
            let job = FillJob::new(req, at.base_key, stale.clone())
                .hinted_range(crate::proxy::hint_range::start_of(&at.key));
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

/// A collapsed reader's wait for its fill's head: `collapse_timeout`, and past it for as long
/// as the fill's request is with the origin (`Fill::expect_head_by`: until the driver's own
/// timeouts would have ended it, plus `HEAD_DUE_SLACK`). `None`: the reader goes its own way.
///
/// Why not `collapse_timeout` alone: an origin slower than it but within its first-byte
/// timeout sent every waiter of a fill to the origin at once (60 viewers, 60 origin requests),
/// exactly when the origin struggled. `collapse_timeout` still bounds a fill that cannot
/// produce: one still queued for a fill slot (`origin_client.max_fills`, whose own wait ends
/// at the collapse deadline), or one whose driver is past its due time.
pub(crate) async fn collapsed_head(edge: &Edge, fill: &Fill) -> Option<FillHead> {
    let head = fill.head();
    tokio::pin!(head);
    let patience = tokio::time::Instant::now() + edge.config.cache.collapse_timeout;
    if let Ok(h) = tokio::time::timeout_at(patience, &mut head).await {
        return Some(h);
    }
    let due = fill.head_due()? + HEAD_DUE_SLACK;
    tokio::time::timeout_at(due, head).await.ok()
}

/// Waits until this viewer's share of its route's fill slots has a free one, within the
/// collapse deadline (`proxy::fill_limit::FillLimit::share_free`).
pub(crate) async fn share_free(req: &Req<'_>) -> bool {
    let edge = req.edge;
    let client = req
        .peer
        .map(|p| p.ip())
        .filter(|ip| !edge.limits.bypasses(*ip))
        .map(crate::http::limits::client_of);
    let deadline = tokio::time::Instant::now() + edge.config.cache.collapse_timeout;
    edge.fill_limit
        .share_free(req.route_index(), client, deadline)
        .await
}

/// Whether a viewer that joined a fill given up as `reason`, an answer that was not its to
/// share, looks the key up again (bounded by `Lookup::rounds`) to claim one fill with the others
/// rather than pass to the origin on its own, one request per viewer:
/// - a whole-object viewer collapsed onto a cold-Range probe (`range_pass::refill`);
/// - a viewer without credentials behind another viewer's credentialed answer;
/// - behind a leader whose forwarded token the origin refused (`fill::TOKEN_REFUSED`);
/// - behind a leader whose own `CDN-Loop` earned its 508 (`loop_answer`);
/// - behind the edge's own prefetch, which the origin refused;
/// - behind a slice fill whose answer showed the object has no strong validator (fetched
///   whole, under the base key, once for all of them).
///
/// The whole-object path (`read`) and the slice path (`slice::not_sliced`) ask the same.
pub(crate) fn looks_again(req: &Req<'_>, reason: &str) -> bool {
    crate::proxy::range_pass::refill(req, reason)
        || (reason == policy::AUTHORIZED && !authorized(req))
        || reason == fill::TOKEN_REFUSED
        || crate::proxy::loop_answer::refill(reason)
        || reason == fill::PREFETCH_REFUSED
        || reason == fill::UNSLICED
}

/// The body of a response from a fill in progress. A body of unknown length (an origin answer
/// without `Content-Length`) cannot be ranged when its head arrives, and a `200` of the whole
/// body broke the promise that ranges are answered `206` from fills in progress; so a GET whose
/// `Range` applies waits before its head: for `a-b`, until the fill holds byte `b` (a `206` with
/// `Content-Range: bytes a-b/*`, RFC 9110 §14.4; what players parse, ExoPlayer and ffmpeg take
/// the range's start from it) or ends; for `a-` and `-n`, which only the length resolves, until
/// it ends (`0-` asks for all of it: the `200` streams). Once it ended the length is known: a
/// `206` with it, or a `416` for a range past the end, which a head sent before the fill reached
/// it could not have become. The wait is the fill's own (its driver's between-bytes and
/// body-rate timeouts end it), on a reader of it: a fill that stops keeping its body (it outgrew
/// `max_object_size`) still counts this viewer. A failed fill leaves the source as it was: the
/// body yields the error, the response aborts.
async fn fill_source(req: &Req<'_>, fill: &Arc<Fill>, h: &StreamHead) -> Source {
    use crate::http::{conditional, range};
    let unknown = Source::Fill(fill.clone(), h.content_length);
    if h.content_length.is_some() {
        return unknown;
    }
    let headers = &req.parts.headers;
    let asked = match range::parse(headers) {
        // `bytes=0-` asks for every byte, which the 200 streams as they arrive (ffmpeg asks so
        // on every open; a chunked live segment would otherwise reach it only once complete).
        Some(range::ByteRange::From(0)) | None => return unknown,
        Some(r) => r,
    };
    let ranged = h.status == StatusCode::OK
        && req.parts.method == Method::GET
        && conditional::evaluate(&req.parts.method, headers, &h.headers)
            == conditional::Outcome::Proceed
        && conditional::range_applies(headers, &h.headers);
    if !ranged {
        return unknown;
    }
    let needed = match asked {
        range::ByteRange::FromTo(_, b) => b.saturating_add(1),
        range::ByteRange::From(_) | range::ByteRange::Suffix(_) => u64::MAX,
    };
    // Keeps the body's start while the range waits; a fill that stops keeping its body is then
    // paced to its readers, and this one answers with the whole body from there.
    let held = fill.reader(0, None);
    match fill.reached(needed).await {
        Ok((_, Some(total))) => Source::Fill(fill.clone(), Some(total)),
        Ok((have, None)) => Source::Growing(fill.clone(), have),
        Err(crate::cache::fill::FillError::Trimmed) => Source::Reading(held),
        Err(_) => unknown,
    }
}

/// How long past a fill's due time a reader still waits for the driver to publish its answer
/// (scheduling, not the origin).
const HEAD_DUE_SLACK: Duration = Duration::from_secs(1);

/// `Read`: the fill's head, then the response from it. A collapsed reader waits for the head
/// as `collapsed_head` says, then passes.
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
        match collapsed_head(edge, &fill).await {
            Some(h) => h,
            None => {
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
            if !h.vary.is_empty() && fill::variant_for(req, &h.vary) != h.leader_variant {
                return Ok(Phase::Lookup);
            }
            // An answer to someone else's request that will not be stored is no answer to
            // this viewer's credentials: it asks the origin itself.
            if !leader && !h.stored && authorized(req) {
                return Ok(Phase::Pass {
                    reason: policy::AUTHORIZED,
                    status: CacheStatus::Miss,
                });
            }
            if h.status.is_server_error() {
                if let Some(obj) = stale.as_deref().filter(|o| stale_ok(o)) {
                    return Ok(Phase::Deliver(serve_stale_on_error(
                        req,
                        obj,
                        now,
                        Some(h.status),
                    )));
                }
            }
            let status = if h.refetch {
                CacheStatus::Expired
            } else {
                CacheStatus::Miss
            };
            edge.metrics.request(status);
            let fwd = if h.refetch {
                fwd_reason(stale.as_deref(), now)
            } else {
                "miss"
            };
            let stored = if h.stored { "; stored" } else { "" };
            let mut resp = response::build(
                &req.ask(),
                h.status,
                &h.headers,
                fill_source(req, &fill, &h).await,
                CacheInfo {
                    status,
                    cache_status: format!(
                        "{}; fwd={fwd}; fwd-status={}{stored}{collapsed}",
                        req.cdn(),
                        h.status.as_u16()
                    ),
                    age: Some(h.age_at(now)),
                },
            );
            if let Some(log) = response::log_info(&mut resp) {
                log.origin_ms = Some(h.origin_ms);
            }
            resp
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
                        "{}; fwd={}; fwd-status=304; ttl={}{collapsed}",
                        req.cdn(),
                        stale
                            .as_deref()
                            .map_or("stale", |o| fwd_reason(Some(o), now)),
                        obj.ttl_left(now)
                    ),
                    age: Some(obj.age(now).as_secs()),
                },
            )
        }
        // Only the leader may take the origin response: a waiter that took it first would drop
        // it, sending the leader to the origin a second time.
        FillHead::Pass(reason) => match leader.then(|| fill.take_pass()).flatten() {
            // The answer found no pass slot for this viewer (`proxy::fill::relayed`).
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(resp)) => {
                edge.metrics.request(CacheStatus::Miss);
                Metrics::inc(&edge.metrics.passes);
                relay(
                    req,
                    resp,
                    CacheStatus::Miss,
                    &format!("fwd=miss; detail={reason}"),
                )
            }
            None if looks_again(req, reason) => return Ok(Phase::Lookup),
            // The leader's share of the route's fill slots was all taken, so its fill gave the
            // key up (`proxy::fill_limit`): the viewers that joined claim one of their own at
            // once; the leader first waits for a slot of its share to free.
            None if reason == fill::SHARE_TAKEN => {
                if leader && !share_free(req).await {
                    return Err(OriginFailure::Busy.into());
                }
                return Ok(Phase::Lookup);
            }
            None => {
                return Ok(Phase::Pass {
                    reason,
                    status: CacheStatus::Bypass,
                })
            }
        },
        // A blocking reload's stale copy is no answer to it: the stream may have restarted
        // since (`llhls::blocking_reload` never answers from a stale copy either).
        FillHead::Failed(e) => match stale.as_deref().filter(|o| {
            !matches!(e, OriginFailure::Unsatisfied | OriginFailure::TooFar) && stale_ok(o)
        }) {
            Some(obj) => serve_stale_on_error(req, obj, now, None),
            // Told as the refetch of the stored copy it was (`fwd=stale`, `EXPIRED`), as the
            // origin's 5xx answer to it is above.
            None => {
                let failed = EdgeError::from(e);
                return Err(match stale.as_deref() {
                    Some(obj) => failed.refetching(fwd_reason(Some(obj), now)),
                    None => failed,
                });
            }
        },
    };
    Ok(Phase::Deliver(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a request's future, as the type of what `f` returns for a request.
    fn future_size<R>(_: impl FnOnce(&'static Req<'static>) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every request's future is built, moved into hyper's slot and polled at its full size,
    /// whatever path it takes: the miss, pass, slice, LL-HLS hold and disk-read state machines
    /// (kilobytes each) are boxed where they start, so a RAM hit carries none of them.
    #[test]
    fn a_hit_moves_no_miss_path_state() {
        let cached = future_size(|r| cached(r));
        assert!(cached <= 1024, "cached(): {cached} bytes");
        let lookup = future_size(|r| r.edge.lookup("k"));
        assert!(lookup <= 128, "Edge::lookup: {lookup} bytes");
        let intercept = future_size(|r| crate::proxy::llhls::intercept(r));
        assert!(intercept <= 256, "llhls::intercept: {intercept} bytes");
    }
}
