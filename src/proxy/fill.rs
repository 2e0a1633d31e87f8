//! The fill driver: one origin fetch per key (a blocking playlist reload the origin answered
//! too early: one at a time until it is answered, `run`), detached from any viewer. It
//! publishes the origin's answer to the fill's readers, streams the body into the fill, and
//! stores the object when the body completed intact and the response is storable. Nothing is
//! stored from a failed or short body; readers of such a fill see their responses aborted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use crate::cache::fill::{Fill, FillError, FillHead, OriginFailure, StreamHead};
use crate::cache::lock::FillGuard;
use crate::cache::object::{strip_hop_by_hop, tags_of, CachedObject};
use crate::cache::policy::{self, ContentClass, Decision, DecisionInput};
use crate::cache::upstream;
use crate::cache::vary;
use crate::http::body::Slow;
use crate::metrics::Metrics;
use crate::origin::OriginError;
use crate::proxy::edge::Edge;
use crate::proxy::fill_limit::Refused;
use crate::proxy::llhls::Early;
use crate::proxy::request::Req;
use crate::proxy::slice::{self, SliceAsk, SliceHead};

/// What the driver needs from the request that started the fill.
#[derive(Clone)]
pub struct FillJob {
    route: usize,
    path_and_query: String,
    base_key: String,
    /// The leader's request headers: only what `OriginClient::fill_headers` picks from them
    /// reaches the origin.
    viewer_headers: HeaderMap,
    /// The origin `Host` (the route's, or the validated viewer host on `pass_host` routes).
    host: String,
    peer: Option<std::net::IpAddr>,
    stale: Option<Arc<CachedObject>>,
    /// A slice fill (`proxy::slice`): the origin is asked for this byte range of the object.
    slice: Option<SliceAsk>,
    /// A cold Range miss: too large an answer is dropped and the viewers pass (`range_pass`).
    range_probe: bool,
    /// A byte-range preload hint (`proxy::hint_range`): the origin is asked from this byte on.
    hinted_from: Option<u64>,
    /// A prefetch (`proxy::prefetch`): no viewer asked, so only a success is kept.
    speculative: bool,
    /// The leader's `Authorization` goes to the origin, and the answer is shared only when the
    /// origin marks it shareable (`proxy::request::authorized`).
    authorized: bool,
    /// The route forwards viewers' tokens to the origin (`[route.token] forward`): a refusal
    /// (401, 403) is of the leader's token, not of the object (`TOKEN_REFUSED`).
    token_forwarded: bool,
    /// The leader's CMCD says its player is short of media: its fill is admitted first when the
    /// route is at `origin_client.max_fills`.
    priority: crate::proxy::admission::Priority,
}

impl FillJob {
    /// Whether the job's stale copy may still answer an origin failure (stale-if-error) `extra`
    /// from `now`.
    fn stale_if_error_covers(&self, now: std::time::SystemTime, extra: Duration) -> bool {
        self.stale.as_ref().is_some_and(|s| {
            s.staleness(now)
                .is_some_and(|st| st.saturating_add(extra) <= s.freshness.stale_if_error)
        })
    }

    pub fn new(req: &Req<'_>, base_key: &str, stale: Option<Arc<CachedObject>>) -> FillJob {
        let route = req.route_index();
        FillJob {
            route,
            // The key's target: CMCD is dropped from it by default (one viewer's CMCD is not
            // the object's); `cmcd.forward` puts this viewer's back.
            path_and_query: if req.edge.config.cmcd.forward {
                crate::cmcd::with_query_of(&req.fill_target(), &req.path_and_query())
            } else {
                req.fill_target()
            },
            base_key: base_key.to_string(),
            viewer_headers: req.parts.headers.clone(),
            host: req.host().to_string(),
            peer: req.peer.map(|p| p.ip()),
            range_probe: crate::proxy::range_pass::probe(req, base_key, stale.is_none()),
            priority: crate::proxy::admission::Priority::urgent_if(
                crate::cmcd::Cmcd::from_request(&req.parts.headers, req.parts.uri.query())
                    .urgent(req.edge.config.cmcd.low_buffer_ms),
            ),
            authorized: crate::proxy::request::authorized(req),
            token_forwarded: req.route().token.as_ref().is_some_and(|t| t.forward),
            stale,
            slice: None,
            hinted_from: None,
            speculative: false,
        }
    }

    /// The same fill, asking the origin for a hinted resource from byte `from` on
    /// (`proxy::hint_range`); `None` leaves it as it is.
    pub fn hinted_range(self, from: Option<u64>) -> FillJob {
        match from {
            Some(n) => FillJob {
                hinted_from: Some(n),
                range_probe: false,
                ..self
            },
            None => self,
        }
    }

    /// The same fill, asking the origin for one slice of the object (`proxy::slice`).
    pub fn for_slice(&self, ask: SliceAsk) -> FillJob {
        FillJob {
            slice: Some(ask),
            stale: None,
            ..self.clone()
        }
    }
}

impl FillJob {
    /// A fill no viewer asked for (prefetch), asking as `viewer` (the request headers of the
    /// viewer whose manifest or hint named the object) would: the origin answers what that
    /// viewer's own request would have stored (a CORS answer to its `Origin`, under its
    /// variant), not an answer to headers no viewer sends. The route's origin host.
    pub fn prefetch(
        edge: &Edge,
        target: &crate::proxy::target::Target<'_>,
        viewer: &HeaderMap,
    ) -> FillJob {
        FillJob {
            route: edge
                .config
                .routes
                .iter()
                .position(|r| std::ptr::eq(r, target.route))
                .unwrap_or(0),
            path_and_query: target.fill_target(&edge.config.cache.drop_query_params),
            base_key: target.key.clone(),
            viewer_headers: viewer.clone(),
            host: target.origin_host().to_string(),
            peer: None,
            stale: None,
            slice: None,
            range_probe: false,
            hinted_from: None,
            speculative: true,
            authorized: false,
            token_forwarded: false,
            // Speculative: never ahead of a player short of media.
            priority: crate::proxy::admission::Priority::Normal,
        }
    }
}

/// The pass reason of a prefetch the origin refused: no answer for the viewers that joined it.
pub const PREFETCH_REFUSED: &str = "prefetch-refused";

/// The pass reason of a fill on a `forward` token route whose origin refused the leader's
/// token (401, 403): a refusal of that viewer's credential, as an `Authorization` one is.
pub const TOKEN_REFUSED: &str = "token-refused";

/// Whether a pass `reason` is an answer to the leader's own credentials (`Authorization`, a
/// forwarded token): it teaches nothing of the object (no hit-for-pass; a stale copy stays)
/// and the fill's key is released for the other viewers to claim a fill of their own.
pub fn leaders_own(reason: &str) -> bool {
    reason == policy::AUTHORIZED || reason == TOKEN_REFUSED
}

/// The head of a fill whose leader's share of the route's fill slots was all taken
/// (`proxy::fill_limit::Refused::Share`): not an answer for anyone, each claims again.
pub const SHARE_TAKEN: &str = "share-taken";

/// The pass reason of a slice (or hinted range) whose answer varies: slices carry no variant.
const VARY_RANGE: &str = "vary-range";

/// What an oversized fill may hold behind its fastest viewer: it reads the origin no further
/// ahead, and a viewer further behind is cut (`Fill::wait_for_readers`).
const TRIM_WINDOW: u64 = 16 << 20;

/// Whether `decision` stores the answer fresh: a copy that answers requests without the
/// origin, as the LL-HLS latest copy among them.
fn stored_fresh(decision: &Decision) -> bool {
    matches!(decision, Decision::Store(f) if f.initial_age < f.ttl)
}

/// `cache.range_passthrough_above`.
fn cache_limit(edge: &Edge) -> u64 {
    edge.config.abuse.range_passthrough_above
}

/// The pass reason of an object without a strong validator (never sliced) too large to cache
/// whole (`cache.max_object_size`).
const UNSLICEABLE: &str = "unsliceable-too-large";

/// The pass reason a slice fill ends with when its answer shows the object has no strong
/// validator: its viewers look again (`request::looks_again`) and share one whole-object fill.
pub const UNSLICED: &str = "unsliced";

/// How long an object found without a strong validator is fetched whole before a miss tries
/// slices again (a purge of the key forgets it at once).
const UNSLICED_FOR: Duration = Duration::from_secs(600);

/// Ends a cold-Range probe too large to fetch whole (`proxy::range_pass`): the viewers ask the
/// origin for their own ranges.
fn range_passed(edge: &Edge, guard: &FillGuard, fill: &Fill) {
    edge.metrics
        .abuse
        .range_passthrough
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The key is released before the head wakes anyone: collapsed viewers without a Range
    // claim one whole-object fill of their own (`range_pass::refill`), which must not find this
    // probe still holding the key.
    guard.release();
    fill.set_head(FillHead::Pass(crate::proxy::range_pass::REASON));
}

/// The origin client's error in the fill's own terms (the cache does not depend on `origin`);
/// `EdgeError`'s `From<OriginFailure>` maps it back, so viewers see the same status and detail.
fn failure(e: OriginError) -> OriginFailure {
    match e {
        OriginError::Connect => OriginFailure::Connect,
        OriginError::Timeout => OriginFailure::Timeout,
        OriginError::Protocol => OriginFailure::Protocol,
        OriginError::Tls => OriginFailure::Tls,
        OriginError::Internal => OriginFailure::Internal,
        OriginError::Busy => OriginFailure::Busy,
    }
}

/// Runs one fill to completion. The guard releases the key when this returns (or panics).
pub async fn drive_fill(edge: Arc<Edge>, mut guard: FillGuard, fill: Arc<Fill>, job: FillJob) {
    // Before the origin is asked: a push of the key stored from now on is newer than what this
    // fill fetches, and stays (`Edge::insert_from_fill`).
    guard.set_store_mark(Some(edge.fill_mark()));
    let key = guard.key().to_string();
    let result = run(&edge, &fill, &guard, job).await;
    if let Err(e) = result {
        Metrics::inc(&edge.metrics.fills_aborted);
        tracing::warn!(key = ?key, error = %e, "fill aborted; nothing stored");
        fill.finish(Err(e));
    }
    drop(guard);
}

/// The viewer's conditionals and ranges: the cache fetches whole representations (even should
/// a `Vary` name one of these), and answers each viewer's own from what arrives.
const NOT_ASKED: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// The request headers a fill led by `viewer` asks the origin with, before the fill's own
/// `Authorization`, `Range` and validators: built for the key (`OriginClient::fill_headers`),
/// without the viewer's conditionals and ranges, CMCD as `cmcd.forward` says. The fill and the
/// `Vary` variant a viewer is looked up under (`variant_for`) both come from here, so they
/// cannot disagree on what the origin was asked.
fn asked_headers(
    edge: &Edge,
    route: &crate::config::Route,
    viewer: &HeaderMap,
    varied: &[header::HeaderName],
    host: &str,
    peer: Option<std::net::IpAddr>,
) -> HeaderMap {
    let mut headers = edge.origin.fill_headers(route, viewer, varied, host, peer);
    for h in NOT_ASKED {
        headers.remove(h);
    }
    // On a route with a CORS policy no fill carries a viewer's CORS request fields: the
    // object must not depend on which viewer led its fill (`http::cors`).
    if route.cors.is_some() {
        for h in crate::config::CORS_REQUEST_FIELDS {
            headers.remove(*h);
        }
    }
    // `cmcd.forward` decides for the CMCD headers whatever `forward_headers` says.
    crate::cmcd::strip_headers(&mut headers);
    if edge.config.cmcd.forward {
        crate::cmcd::copy_headers(viewer, &mut headers);
    }
    headers
}

/// The `Vary` variant `req` is looked up and served under: `spec` over the request a fill for
/// it asks the origin with, as the stored variant was (`StreamHead::leader_variant`, computed
/// on what the fill asked). For a header a fill sends as the viewer sent it that is the
/// viewer's own value (`Accept-Encoding` is normalised alike on both sides), read without
/// building a request; a header the edge writes itself (`Host`, `Via`, `CDN-Loop`,
/// `X-Forwarded-For`, `X-Forwarded-Proto`) or never asks with (`config::never_forwarded`,
/// `NOT_ASKED`, CMCD) has the value the origin was sent. Read from the viewer's headers instead,
/// such a `Vary` (`X-Forwarded-Proto` is common behind TLS terminators; `Host`) matched no
/// viewer, and every request went to the origin three times (two fills and a pass).
pub(crate) fn variant_for(req: &Req<'_>, spec: &vary::VarySpec) -> String {
    let rewritten = |n: &header::HeaderName| {
        *n != header::ACCEPT_ENCODING
            && (crate::config::never_forwarded_header(n.as_str())
                || crate::origin::STAMPED.contains(&n.as_str())
                || NOT_ASKED.contains(n)
                || crate::cmcd::HEADERS.contains(n)
                || (req.route().cors.is_some()
                    && crate::config::CORS_REQUEST_FIELDS.contains(&n.as_str())))
    };
    if !spec.0.iter().any(rewritten) {
        return spec.variant(&req.parts.headers);
    }
    let asked = asked_headers(
        req.edge,
        req.route(),
        &req.parts.headers,
        &spec.0,
        req.host(),
        req.peer.map(|p| p.ip()),
    );
    spec.variant(&asked)
}

/// An answer only the fill's leader may have, made ready for its relay: the relay is a pass
/// and takes a pass slot of the upstream that answered, for the leader's `client`, at once
/// (`OriginClient::relay_slot`). None free: the answer is dropped here, freeing its
/// connection, and the leader answers 503 origin-busy; the collapsed viewers fetch for
/// themselves as they do for any pass (within their own pass slots).
async fn relayed(
    mut resp: http::Response<hyper::body::Incoming>,
    client: Option<std::net::IpAddr>,
) -> Result<http::Response<hyper::body::Incoming>, OriginFailure> {
    match crate::origin::OriginClient::relay_slot(resp.extensions_mut(), client).await {
        Ok(()) => Ok(resp),
        Err(e) => Err(failure(e)),
    }
}

/// What one request to the origin came to.
enum Asked {
    /// The fill has its answer (or failure) published, or has ended.
    Done,
    /// A blocking playlist reload answered with a playlist that lacks what it asks for
    /// (`llhls::unsatisfied`): nothing was published or stored; ask again after this long, or
    /// refuse it as too far.
    Unsatisfied(Early),
}

/// Asks the origin for the fill's answer; a blocking playlist reload again and again, while
/// the origin answers with a playlist that lacks what it asks for (RFC 8216bis §6.2.5.2: the
/// server holds the request until the playlist holds it, which an origin that ignores
/// `_HLS_*` does not). Every viewer of the key stays collapsed on this one fill meanwhile, so
/// one request of it is with the origin at a time; none of them sees those answers. Bounded by
/// the hold (as long as the leader is held, `llhls::Pace`), and ended early once no viewer
/// waits for the head any more; then the viewers still waiting get `Unsatisfied`
/// (`llhls::blocking_reload` holds one whose own time is not up on, the rest 503). An origin
/// that holds answers once, with what was asked: it sees no more requests than before.
async fn run(
    edge: &Arc<Edge>,
    fill: &Arc<Fill>,
    guard: &FillGuard,
    job: FillJob,
) -> Result<(), FillError> {
    use crate::proxy::llhls::{Pace, Turn};
    // A blocking reload's place in its playlist's pace: every fill of the playlist asking
    // again shares one turn per interval, and any answer that shows the origin holds what
    // this one asks for ends the wait (`llhls::Pace`).
    let mut pace = Pace::of(edge, &job.base_key, tokio::time::Instant::now());
    if let Some(p) = pace.as_mut() {
        if p.first(edge, fill).await == Turn::Stop {
            fill.set_head(FillHead::Failed(OriginFailure::Unsatisfied));
            return Ok(());
        }
    }
    for _ in 0..MAX_ASKS {
        let after = match ask(edge, fill, guard, job.clone()).await? {
            Asked::Done => return Ok(()),
            Asked::Unsatisfied(Early::Again(after)) => after,
            Asked::Unsatisfied(Early::TooFar) => {
                fill.set_head(FillHead::Failed(OriginFailure::TooFar));
                return Ok(());
            }
        };
        // Up to the hold's end, not short of it: the viewers held as long as the leader time
        // out on their own (503), and only one that joined later has time left to go on with.
        // Nor once every viewer gave up (their holds ran out, or they left): nobody to ask for.
        // Nor once another fill's answer, now the playlist's latest copy, answers this one's
        // viewers: they look again (`llhls::blocking_reload`) and are served from it.
        let Some(p) = pace.as_mut() else {
            break;
        };
        if p.again(edge, fill, after).await == Turn::Stop {
            break;
        }
    }
    fill.set_head(FillHead::Failed(OriginFailure::Unsatisfied));
    Ok(())
}

/// Reads a blocking reload's answer `body` into `into`, chunk by chunk, within the body's
/// timeouts: `Some(whole body)` once it ended, `None` past `llhls::MAX_SCAN` bytes (no
/// playlist the edge reads; the rest is still to come, after `into`).
async fn read_whole(
    body: &mut hyper::body::Incoming,
    pace: &mut crate::http::body::Pace,
    into: &mut std::collections::VecDeque<bytes::Bytes>,
) -> Result<Option<bytes::Bytes>, OriginFailure> {
    let mut len = 0;
    while len <= crate::proxy::llhls::MAX_SCAN {
        match pace.next(body.frame()).await {
            Err(_) => return Err(OriginFailure::Timeout),
            Ok(Some(Err(_))) => return Err(OriginFailure::Protocol),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    pace.received(data.len());
                    len += data.len();
                    into.push_back(data);
                }
            }
            Ok(None) => {
                let mut whole = bytes::BytesMut::with_capacity(len);
                for chunk in into.iter() {
                    whole.extend_from_slice(chunk);
                }
                return Ok(Some(whole.freeze()));
            }
        }
    }
    Ok(None)
}

/// Requests one blocking reload's fill sends the origin at most, whatever the hold: at 100 ms
/// apart (`llhls::MIN_REASK`) over 100 s, past the default `live.max_hold` of 30 s. A viewer
/// held longer than that goes on with a fill of its own.
const MAX_ASKS: usize = 1024;

/// One request to the origin for the fill, and what became of its answer.
async fn ask(
    edge: &Arc<Edge>,
    fill: &Arc<Fill>,
    guard: &FillGuard,
    job: FillJob,
) -> Result<Asked, FillError> {
    let key = guard.key();
    let route = &edge.config.routes[job.route];
    // Built for the key, not copied from the leader: every viewer of the key gets the answer.
    let varied = edge
        .vary_index
        .get(&job.base_key)
        .map(|spec| spec.0.clone())
        .unwrap_or_default();
    let mut headers = asked_headers(
        edge,
        route,
        &job.viewer_headers,
        &varied,
        &job.host,
        job.peer,
    );
    if job.authorized {
        for v in job.viewer_headers.get_all(header::AUTHORIZATION) {
            headers.append(header::AUTHORIZATION, v.clone());
        }
    }
    if let Some(ask) = &job.slice {
        headers.insert(header::RANGE, ask.range_header());
    }
    if let Some(n) = job.hinted_from {
        headers.insert(header::RANGE, crate::proxy::hint_range::range_header(n));
    }
    if let Some(stale) = &job.stale {
        if let Some(etag) = stale.etag() {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = stale.last_modified() {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    // A retry on another origin must land while the collapsed viewers still wait for the head;
    // so must a fill queued for its route's slot (`origin_client.max_fills`).
    let deadline = tokio::time::Instant::now() + edge.config.cache.collapse_timeout;
    // Held until the body is in (or the fill fails): the slot bounds origin fetches, not heads.
    // The leader's address as the limits count it, unless it is on `limits.allow`.
    let client = job
        .peer
        .filter(|ip| !edge.limits.bypasses(*ip))
        .map(crate::http::limits::client_of);
    let _slot = match edge
        .fill_limit
        .admit(
            job.route,
            client,
            job.priority,
            deadline,
            &edge.metrics.abuse,
        )
        .await
    {
        Ok(slot) => slot,
        Err(Refused::Busy) => {
            fill.set_head(FillHead::Failed(OriginFailure::Busy));
            return Ok(Asked::Done);
        }
        Err(Refused::Share) => {
            // The leader's share of the route is all taken: the key is free before anyone
            // wakes, so the viewers that joined claim one fill between them, under their own
            // shares; the leader waits for its own (`request::read`).
            tracing::debug!(
                key,
                "the leader's share of the fill slots is taken: key released"
            );
            guard.release();
            fill.set_head(FillHead::Pass(SHARE_TAKEN));
            return Ok(Asked::Done);
        }
    };
    // The request goes to the origin now: its head, or its failure, comes within one attempt
    // and its one retry, each bounded by its upstream's first-byte timeout (a shield's is the
    // longer, `origin::fetch_via`, `OriginClient::head_within`).
    // Collapsed readers wait for it that long (`request::collapsed_head`), not only
    // `collapse_timeout`, also when the answer may turn out to be the leader's alone (its
    // credentials, a cold-Range probe too large to keep): then they claim one fill between them
    // (`request::read`). Going their own way at the deadline instead, each to the origin, let
    // any viewer turn a crowd waiting on a slow origin into a herd with one `Authorization` or
    // `Range` header.
    let within = edge.origin.head_within(route);
    fill.expect_head_by(tokio::time::Instant::now() + within);
    // A stale copy that will still answer a failure when the wait is over (`request::read`,
    // stale-if-error): a shield or origin that timed out is not retried on the next for
    // another whole timeout; the copy answers at once.
    let stale_stands_by = job.stale_if_error_covers(edge.clock.now(), within);
    Metrics::inc(&edge.metrics.origin_fetches);
    let sent = Instant::now();
    let asked = headers.clone();
    let resp = match edge
        .origin
        .fetch_for(
            route,
            &job.base_key,
            Method::GET,
            &job.path_and_query,
            headers,
            Some(deadline),
            stale_stands_by,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            Metrics::inc(&edge.metrics.origin_errors);
            tracing::debug!(key, error = %e, "origin fetch failed");
            fill.set_head(FillHead::Failed(failure(e)));
            return Ok(Asked::Done);
        }
    };
    let response_delay = sent.elapsed();
    // A blocking playlist reload (`_HLS_msn`) is held by the origin until the playlist holds
    // what it asks for (RFC 8216bis §6.2.5.2): that hold is the protocol, not time the answer
    // spent in transit, and counted into the age (RFC 9111 §4.2.3's response_delay) it made a
    // playlist held as long as its TTL stored already stale (no `llhls-latest`, the next
    // viewer of the same `(M, P)` sent to the origin again) and reported as old to every
    // viewer and tier below. The origin's own `Age` still counts.
    let blocking = crate::proxy::llhls::is_blocking_reload(&job.base_key);
    let age_delay = if blocking {
        Duration::ZERO
    } else {
        response_delay
    };
    if let Some(reason) =
        crate::proxy::loop_answer::leader_only(resp.status(), &job.viewer_headers, &asked)
    {
        // The leader's `CDN-Loop` / `Via` entries may be all the upstream refused: the answer
        // is the leader's; the key is released first so the other viewers claim a fresh fill
        // without them.
        tracing::debug!(
            key,
            status = resp.status().as_u16(),
            "refusal of a fill carrying the leader's own entries: leader only"
        );
        guard.release();
        fill.set_pass(relayed(resp, client).await, reason);
        return Ok(Asked::Done);
    }
    let (mut parts, mut body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // A route with a CORS policy answers CORS itself: the origin's CORS fields and its
    // `Vary: Origin` are neither stored nor keyed on, so one object serves every viewer.
    if route.cors.is_some() {
        crate::http::cors::strip_origin_fields(&mut parts.headers);
    }
    // RFC 9110 §6.6.1: a response without `Date` gets the time it was received, once, so
    // every hit carries the same `Date` (with a growing `Age`) instead of each one's own send
    // time, which would make the stored copy look newly generated to caches further down.
    if !parts.headers.contains_key(header::DATE) {
        if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(edge.clock.now())) {
            parts.headers.insert(header::DATE, v);
        }
    }
    let cache = &edge.config.cache;
    // `headers`: what the decision reads (a 304's merged into the stored ones); `answer`: the
    // response as received, whose own `Cache-Status` may only shorten the lifetime
    // (`cache::upstream`): a shield's stale copy, sent with a small `Age` after a soft purge,
    // is stored stale, and its `304` freshens nothing.
    let decide = |status, headers: &HeaderMap, class, answer: &HeaderMap| {
        let decision = policy::decide(&DecisionInput {
            status,
            headers,
            rules: edge.config.ttl_for(route, class),
            class,
            negative_ttl: cache.negative_ttl,
            manifest_stale_factor: cache.manifest_stale_factor,
            max_object_size: cache.max_object_size,
            targeted: &cache.targeted_cache_control,
            surrogate_device: &edge.config.cdn_id,
            response_delay: age_delay,
            now: edge.clock.now(),
        });
        match decision {
            Decision::Store(f) => Decision::Store(upstream::cap(f, answer)),
            other => other,
        }
    };

    // RFC 9110 §15.4.5: a 304 answers a conditional request. To a fill that sent no validator
    // it is an origin protocol error, not an answer: nothing to relay to the viewers (they
    // asked for the object) and nothing to store or refresh; a usable stale copy still
    // answers within stale-if-error, as for any origin failure.
    if parts.status == StatusCode::NOT_MODIFIED
        && !asked.contains_key(header::IF_NONE_MATCH)
        && !asked.contains_key(header::IF_MODIFIED_SINCE)
    {
        Metrics::inc(&edge.metrics.origin_errors);
        tracing::debug!(key, "304 to a fill that sent no validator");
        fill.set_head(FillHead::Failed(OriginFailure::Protocol));
        return Ok(Asked::Done);
    }
    if parts.status == StatusCode::NOT_MODIFIED
        && job
            .stale
            .as_ref()
            .is_some_and(|s| !s.revalidated_by(&parts.headers))
    {
        // The 304 validates another representation than the stored one: nothing may be
        // updated from it, so ask once more for the whole response (without conditionals: this
        // cannot come back here).
        Metrics::inc(&edge.metrics.origin_errors);
        tracing::debug!(
            key,
            "304 naming another validator: fetching the whole response"
        );
        drop((_slot, body));
        let job = FillJob { stale: None, ..job };
        return Box::pin(ask(edge, fill, guard, job)).await;
    }
    if parts.status == StatusCode::NOT_MODIFIED {
        if let Some(stale) = &job.stale {
            // RFC 9111 §4.3.4: update the stored headers, keep the body.
            let mut merged = stale.merged_headers(&parts.headers);
            policy::withhold(&mut merged);
            // A revalidation led with credentials is that viewer's, as its 200 would be (RFC
            // 9111 §3.5): unless the refreshed response may be shared with them, its fields
            // (a per-user one, a longer `max-age`) must not update the shared copy, nor its
            // `private` or `no-store` purge it (with its stale-if-error standing). The
            // leader's request is asked again without the stored validators, and its 200 is
            // answered as any credentialed answer: to that viewer alone, the others claiming
            // a fill of their own.
            if job.authorized && !policy::shareable_when_authorized(&merged) {
                drop((_slot, body));
                let job = FillJob { stale: None, ..job };
                return Box::pin(ask(edge, fill, guard, job)).await;
            }
            let decision = decide(stale.status, &merged, stale.class, &parts.headers);
            if blocking && !stored_fresh(&decision) {
                crate::proxy::llhls::answered_unshared(edge, key);
            }
            if let Decision::Store(freshness) = decision {
                merged.remove(header::AGE);
                let refreshed = Arc::new(CachedObject {
                    stored_at: edge.clock.now(),
                    ..stale.refreshed(merged, freshness)
                });
                // A playlist's body, unchanged, has nothing new to say; a live MPD's does: the
                // segments of its `$Number$` templates and open timeline runs are whatever its
                // availability window holds now, which moved with the clock (an origin serving
                // it with an `ETag` answers every refresh with a 304). Read before the key is
                // released, as a stored copy's `announce` is: a viewer that finds the refreshed
                // copy finds what it says is available asked for anew.
                // A playlist's copy that answers blocking reloads is fresh again with it.
                crate::proxy::llhls::refreshed(edge, key, stale, &refreshed);
                if refreshed.class == ContentClass::Manifest
                    && !crate::proxy::llhls::is_playlist_path(key)
                {
                    crate::proxy::llhls::observe_late(
                        edge,
                        job.route,
                        key,
                        &refreshed,
                        &job.viewer_headers,
                        None,
                    );
                }
                edge.insert_from_fill(guard, key.to_string(), refreshed.clone(), None);
                fill.set_head(FillHead::Complete(refreshed));
            } else {
                edge.purge_key(key);
                fill.set_head(FillHead::Complete(stale.clone()));
            }
            fill.finish(Ok(()));
            return Ok(Asked::Done);
        }
    }

    // A slice fill: `Some(total)` when the answer is a slice to keep under the slice key; a
    // whole object (a 200, or a 206 covering all of it) goes on as an ordinary fill.
    let sliced = match &job.slice {
        Some(asked_slice) => {
            match slice::on_origin_head(edge, &job.base_key, asked_slice, &mut parts).await {
                Ok(SliceHead::Slice(total)) => Some(total),
                Ok(SliceHead::Whole) => None,
                Ok(SliceHead::Unsliceable(total)) => {
                    drop((_slot, body));
                    // Never sliced: whoever asks for it next looks for the whole object.
                    edge.remember_unsliced(&job.base_key, UNSLICED_FOR);
                    // Too large to keep whole: every viewer asks the origin for its own range
                    // (remembered, so the next ones skip this probe), as for a 200 too large to
                    // store when slicing is off. A length the origin does not know (`bytes
                    // a-b/*` of a whole slice: `slice::on_origin_head`) is judged by the whole
                    // object's own answer, as any fill's is; a cold range of it passes below.
                    if total.is_some_and(|t| t > cache.max_object_size) {
                        tracing::debug!(key, total, "unsliceable object too large to cache");
                        edge.remember_pass(&job.base_key, cache.hit_for_pass_ttl);
                        fill.set_head(FillHead::Pass(UNSLICEABLE));
                        return Ok(Asked::Done);
                    }
                    // A cold range past `range_passthrough_above` passes as one on an object
                    // fetched whole would (`range_pass`), without asking for the body first.
                    // So does one of a length the origin does not know: fetched whole, it
                    // could be any size (a file still growing never ends).
                    if job.range_probe && total.is_none_or(|t| t > cache_limit(edge)) {
                        range_passed(edge, guard, fill);
                        return Ok(Asked::Done);
                    }
                    // Each viewer that was reading a slice of it (a seek burst: one slice fill
                    // per viewer) looks again and joins one whole-object fill under the base
                    // key; fetched whole here, under the slice's key, each slice fill was one
                    // more download of the whole object.
                    tracing::debug!(key, ?total, "unsliceable slice: fetching it whole");
                    guard.release();
                    fill.set_head(FillHead::Pass(UNSLICED));
                    return Ok(Asked::Done);
                }
                Err(why) => {
                    Metrics::inc(&edge.metrics.origin_errors);
                    tracing::debug!(key, why, "bad slice response");
                    fill.set_head(FillHead::Failed(OriginFailure::Protocol));
                    return Ok(Asked::Done);
                }
            }
        }
        None => None,
    };
    // A hinted range: a 206 from the hinted byte is kept under the range key; a 206 of other
    // bytes answers another question (an origin error); anything else is an ordinary answer
    // (a 200: the origin ignored the Range; viewers get their range of it from the fill).
    let hinted = match job.hinted_from {
        Some(n) if crate::proxy::hint_range::starts_at(parts.status, &parts.headers, n) => true,
        Some(_) if parts.status == StatusCode::PARTIAL_CONTENT => {
            Metrics::inc(&edge.metrics.origin_errors);
            tracing::debug!(key, "206 not from the hinted byte");
            fill.set_head(FillHead::Failed(OriginFailure::Protocol));
            return Ok(Asked::Done);
        }
        _ => false,
    };
    // A prefetch keeps nothing but a success: the origin's refusal of the edge's own request
    // (a 403 for want of a viewer's token or address) is no answer for the viewers the route
    // lets in. Readers that joined ask for themselves; no hit-for-pass is remembered.
    // Nor does it fetch more than a segment's worth (`cache.prefetch_max_size`): a whole VOD
    // file named by a CMCD `nor` or a hostile manifest, which no viewer may ever read, would
    // otherwise be pulled whole into RAM (past every slice rule: a prefetch asks for the
    // object). Its body is dropped unread with the head (closing the origin connection).
    let oversized = job.speculative
        && policy::content_length(&parts.headers).is_some_and(|n| n > cache.prefetch_max_size);
    if job.speculative && (oversized || !parts.status.is_success()) {
        if oversized {
            Metrics::inc(&edge.metrics.abuse.prefetch_abandoned);
        }
        tracing::debug!(
            key,
            status = parts.status.as_u16(),
            oversized,
            "prefetch answer not kept"
        );
        // Not asked for again by a prefetch for a while: a CMCD `nor` naming the same refused
        // or oversized URL on every cheap HIT made one origin request each time.
        let refused_for = if oversized {
            cache.hit_for_pass_ttl
        } else {
            cache.negative_ttl
        };
        edge.remember_prefetch_refused(&job.base_key, refused_for);
        // The key is free before the readers wake: they claim one fill of their own between
        // them (`request::read`) rather than each passing to the origin; theirs follows the
        // usual rules (slices, `max_object_size`).
        guard.release();
        fill.set_head(FillHead::Pass(PREFETCH_REFUSED));
        return Ok(Asked::Done);
    }
    let path = job.path_and_query.split('?').next().unwrap_or("");
    let class = ContentClass::classify(
        path,
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    // A slice is a part of a 200 and is judged as that 200 would be.
    let judged = if sliced.is_some() || hinted {
        StatusCode::OK
    } else {
        parts.status
    };
    let mut decision = decide(judged, &parts.headers, class, &parts.headers);
    // A 416 to a slice's `Range` says the slice lies past the end, nothing of the object:
    // stored under the base key it answered every viewer of the object (`proxy::slice`).
    if job.slice.is_some() && slice::answers_only_the_range(parts.status) {
        decision = Decision::ShareOnly("slice-past-end");
    }
    // Slices and hinted ranges live under keys of their own that carry no `Vary` variant, and
    // their readers do not check one: an answer that varies (`Vary: Origin` with a CORS header,
    // say) would reach every viewer, so it is shared with none.
    let unvaried = sliced.is_some() || job.hinted_from.is_some();
    if unvaried
        && !matches!(decision, Decision::Pass(_))
        && vary::selects_representation(&parts.headers)
    {
        decision = Decision::Pass(VARY_RANGE);
        // What it varies on is learnt instead of a pass: the next request looks its own
        // variant up and, missing, fills the whole object under the variant's key, as for an
        // object too small to slice. A remembered pass sent every request for it to the origin
        // whole (`Vary: Origin` from a CORS-enabled bucket made every large file uncacheable).
        if let Ok(spec) = vary::parse(&parts.headers) {
            if !spec.is_empty() {
                edge.vary_index.insert(job.base_key.clone(), Arc::new(spec));
            }
        }
    }
    // An answer to one viewer's credentials that is not to be shared is that viewer's alone,
    // whatever made it so (a 401 with `no-store`, a `Set-Cookie`, `private`): it teaches
    // nothing of the object (no hit-for-pass, the stale copy stays) and the other viewers
    // claim a fill of their own.
    if job.authorized
        && (matches!(decision, Decision::Pass(_))
            || !policy::shareable_when_authorized(&parts.headers))
    {
        decision = Decision::Pass(policy::AUTHORIZED);
    }
    // The origin refused the token this fill forwarded, the leader's: the other viewers have
    // tokens of their own (as valid to the edge) and claim a fill of their own.
    if job.token_forwarded
        && matches!(
            parts.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    {
        decision = Decision::Pass(TOKEN_REFUSED);
    }
    // An origin error while a stale copy may still stand in for it (stale-if-error; RFC 5861
    // §4: a 500, 502, 503 or 504 is an error) does not replace that copy, even when the error
    // carries freshness of its own, and is not a pass either when it says `no-store` or
    // `private` (vedge's own 502/503/504 do, so a shield with its origin down answers so):
    // shared with this fill's readers, each of which serves the stale copy instead.
    let stale_stands_in = parts.status.is_server_error()
        && job.stale_if_error_covers(edge.clock.now(), Duration::ZERO);
    if stale_stands_in && matches!(decision, Decision::Pass(r) if !leaders_own(r)) {
        decision = Decision::ShareOnly("origin-error");
    }
    // A copy still fresh is refetched only when one viewer's request directives asked
    // (`no-cache`, `max-age=0`, `min-fresh`): an error answer to that (a 5xx, a 429 the
    // viewer's own refetches provoked, a 404 of a moment) is that request's alone. It replaces
    // nothing, and teaches no hit-for-pass, so every other viewer keeps the fresh copy they
    // would have had without that viewer.
    let fresh_stays = parts.status.as_u16() >= 400
        && job
            .stale
            .as_ref()
            .is_some_and(|s| s.staleness(edge.clock.now()).is_none());
    if fresh_stays && matches!(decision, Decision::Store(_)) {
        decision = Decision::ShareOnly("fresh-kept");
    }
    // A manifest on a route that forwards tokens was made for the leader's token, which the
    // origin may have copied into it: the leader's alone (`signed::own_manifest`), whatever
    // its status or `Cache-Control`, and no stale copy stands in for it (one stored before may
    // hold a token too). Remembered as a pass, so later viewers ask with their own.
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if edge
        .config
        .routes
        .get(job.route)
        .is_some_and(|r| crate::proxy::signed::own_manifest(r, path, ct))
    {
        decision = Decision::Pass(crate::proxy::signed::TOKEN_FORWARDED);
    }
    // Nor does any error answer (a 5xx, or a 429 from a rate-limiting upstream such as a
    // shield) say whether the object may be cached, whatever its `Cache-Control`: it teaches
    // no hit-for-pass and purges no stale copy (Varnish abandons a background fetch that gets
    // a 5xx the same way).
    let error_answer =
        parts.status.is_server_error() || parts.status == StatusCode::TOO_MANY_REQUESTS;
    if let (Some(total), Decision::Store(freshness)) = (sliced, &decision) {
        slice::store_record(
            edge,
            &job.base_key,
            &parts.headers,
            total,
            *freshness,
            class,
        );
    }
    // A blocking reload's 200 is read whole before anyone sees it (a playlist: small), and one
    // that lacks what the reload asks for is neither published nor stored under its key
    // (`llhls::unsatisfied`): the fill asks again (`run`). Only what would become a fresh
    // stored copy is kept, as the playlist's latest copy when it is newer: it may answer other
    // waiters. A pass is relayed as it comes: its body is the leader's to stream.
    let mut pace = edge.origin.body_timeouts(route).pace();
    let mut prefix = std::collections::VecDeque::new();
    let judged = blocking
        && parts.status == StatusCode::OK
        && sliced.is_none()
        && !hinted
        && !matches!(decision, Decision::Pass(_))
        && policy::content_length(&parts.headers)
            .is_none_or(|n| n <= crate::proxy::llhls::MAX_SCAN as u64);
    if judged {
        let whole = match read_whole(&mut body, &mut pace, &mut prefix).await {
            Ok(whole) => whole,
            Err(f) => {
                Metrics::inc(&edge.metrics.origin_errors);
                tracing::debug!(key, error = %f, "blocking reload's body failed");
                fill.set_head(FillHead::Failed(f));
                return Ok(Asked::Done);
            }
        };
        let after = whole
            .as_ref()
            .and_then(|b| crate::proxy::llhls::judge(edge, key, b));
        if let (Some(after), Some(body)) = (after, whole) {
            tracing::debug!(key, "blocking reload answered before the playlist held it");
            let fresh = match &decision {
                Decision::Store(f) if stored_fresh(&decision) => Some(*f),
                _ => None,
            };
            if let Some(freshness) = fresh {
                let mut headers = crate::cache::object::owned(&parts.headers);
                headers.remove(header::AGE);
                policy::withhold(&mut headers);
                let spec = vary::parse(&parts.headers).unwrap_or_default();
                let copy_key = format!("{}{}", job.base_key, spec.variant(&asked));
                let obj = Arc::new(CachedObject {
                    status: parts.status,
                    tags: tags_of(&headers),
                    headers,
                    body,
                    class,
                    freshness,
                    stored_at: edge.clock.now(),
                    vary: spec,
                    pinned: false,
                    disk: Default::default(),
                    store_mark: 0,
                });
                crate::proxy::llhls::observe_late(
                    edge,
                    job.route,
                    &copy_key,
                    &obj,
                    &job.viewer_headers,
                    None,
                );
            }
            return Ok(Asked::Unsatisfied(after));
        }
    }
    // The waiters of a blocking reload the origin answered: one fresh stored copy wakes and
    // answers them all (`llhls::observe`); anything else they each ask upstream at once.
    if blocking && parts.status.is_success() && !stored_fresh(&decision) {
        crate::proxy::llhls::answered_unshared(edge, key);
    }
    if let Decision::Pass(reason) = decision {
        // A pass learnt from one variant's answer is that variant's: one viewer sending an odd
        // value of a varied header must not send every other variant (cached ones included)
        // past the cache. Slices and hinted ranges have no variants: theirs is the object's.
        // So is one without `Vary` for an object known to vary: an error page an origin made
        // of a varied header's odd value mostly comes without the `Vary` its 200s carry.
        let pass_key = match vary::parse(&parts.headers) {
            _ if unvaried => job.base_key.clone(),
            Ok(spec) if !spec.is_empty() => {
                let variant = spec.variant(&asked);
                edge.vary_index.insert(job.base_key.clone(), Arc::new(spec));
                format!("{}{variant}", job.base_key)
            }
            _ => match edge.vary_index.get(&job.base_key) {
                Some(known) => format!("{}{}", job.base_key, known.variant(&asked)),
                None => job.base_key.clone(),
            },
        };
        // A refusal to share one viewer's credentialed answer says nothing of the object, nor
        // does an error. Nor does "too large" with slicing on: viewers get the object from
        // slices (`proxy::slice`), which a remembered pass would send to the origin whole (a
        // prefetch or a probe asks for the whole object).
        let sliced_later = reason == "too-large"
            && edge.config.cache.slice_size > 0
            && !edge.is_unsliced(&job.base_key);
        let varied_later = reason == VARY_RANGE && edge.vary_index.get(&job.base_key).is_some();
        let learnt =
            !leaders_own(reason) && !error_answer && !sliced_later && !varied_later && !fresh_stays;
        if learnt {
            edge.remember_pass(&pass_key, cache.hit_for_pass_ttl);
        }
        if job.stale.is_some() && learnt {
            edge.purge_key(key);
        }
        if leaders_own(reason) {
            // The collapsed viewers claim a fill of their own (`proxy::request::read`): the key
            // is free before they wake.
            guard.release();
        }
        let resp = http::Response::from_parts(parts, body);
        fill.set_pass(relayed(resp, client).await, reason);
        return Ok(Asked::Done);
    }
    // A 204 ends at its head whatever its `Content-Length` says (RFC 9112 §6.3), and must not
    // carry one (RFC 9110 §8.6): counted against the empty body it was a truncated fill, never
    // stored, every request sent to the origin.
    if parts.status == StatusCode::NO_CONTENT {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    // A slice's (or a hinted range's) 206 says in its Content-Range how many bytes it carries,
    // even when it comes chunked: a body of any other length is an origin error, never a slice.
    let content_length = policy::content_length(&parts.headers).or_else(|| {
        (sliced.is_some() || hinted)
            .then(|| slice::content_range(&parts.headers))
            .flatten()
            .map(|(a, b, _)| b - a + 1)
    });
    let limit = cache_limit(edge);
    if job.range_probe && crate::proxy::range_pass::too_large(parts.status, content_length, limit) {
        // Dropping the body closes the origin connection after the head: the viewers ask
        // the origin for their own ranges instead.
        range_passed(edge, guard, fill);
        return Ok(Asked::Done);
    }

    // Slices are kept under their own keys and never vary (`proxy::slice`).
    let spec = match sliced {
        Some(_) => Default::default(),
        None if job.hinted_from.is_some() => Default::default(),
        None => vary::parse(&parts.headers).unwrap_or_default(),
    };
    // The variant of what the origin was asked, not of what the leader sent: a header the
    // fill did not forward (the response's `Vary` was not yet known) must not label the object
    // as if the origin had seen it.
    let leader_variant = spec.variant(&asked);
    let store_key = if sliced.is_some() || job.hinted_from.is_some() {
        key.to_string()
    } else if spec.is_empty() {
        edge.vary_index.remove(&job.base_key);
        job.base_key.clone()
    } else {
        edge.vary_index
            .insert(job.base_key.clone(), Arc::new(spec.clone()));
        format!("{}{leader_variant}", job.base_key)
    };
    let age = match &decision {
        Decision::Store(f) => f.initial_age,
        _ => policy::age(&parts.headers)
            .unwrap_or_default()
            .saturating_add(age_delay),
    };
    parts.headers.remove(header::AGE);
    let mut store = matches!(decision, Decision::Store(_)) && !stale_stands_in;
    if store {
        // Qualified `no-cache="a"` / `private="a"`: kept without the named fields; the
        // viewers of this fill share the stored head, so none of them gets those either.
        policy::withhold(&mut parts.headers);
    }
    // A variant past the object's cap is answered but not kept (`proxy::vary_cap`).
    if store && !spec.is_empty() && !crate::proxy::vary_cap::admit(edge, &job.base_key, &store_key)
    {
        store = false;
    }
    fill.set_head(FillHead::Streaming(Arc::new(StreamHead {
        status: parts.status,
        headers: parts.headers.clone(),
        content_length,
        stored: store,
        vary: spec.clone(),
        leader_variant,
        refetch: job.stale.is_some(),
        age: age.as_secs(),
        at: edge.clock.now(),
        origin_ms: response_delay.as_millis() as u64,
    })));

    if let Some(len) = content_length.filter(|&n| store && n <= cache.max_object_size) {
        fill.reserve(&edge.zero_copy, len);
    }
    // Between-bytes timeout and minimum rate (`origin_client.min_body_rate`): an origin that
    // trickles would otherwise hold this fill, and every viewer collapsed on it, for as long
    // as it liked. Only time spent waiting for the origin counts (not `wait_for_readers`).
    let mut received = 0u64;
    let mut trimming = false;
    let mut early = Vec::new();
    let mut announced = None;
    loop {
        // What was read to judge a blocking reload's answer goes first (`pace` counted it).
        let (next, replayed) = match prefix.pop_front() {
            Some(data) => (Ok(Some(Ok(hyper::body::Frame::data(data)))), true),
            None => (pace.next(body.frame()).await, false),
        };
        match next {
            Err(Slow::Idle) => return Err(FillError::Timeout),
            Err(Slow::BelowRate) => {
                Metrics::inc(&edge.metrics.slow_bodies[crate::metrics::SLOW_BODY_FILL]);
                return Err(FillError::TooSlow);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(key, error = %e, "origin body failed");
                return Err(FillError::Origin);
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !replayed {
                        pace.received(data.len());
                    }
                    received += data.len() as u64;
                    if content_length.is_some_and(|cl| received > cl) {
                        tracing::debug!(key, "origin body longer than it announced");
                        return Err(FillError::Origin);
                    }
                    let outgrown = received > cache.max_object_size;
                    // A prefetch's body without a length past `cache.prefetch_max_size`.
                    let past_cap = job.speculative && received > cache.prefetch_max_size;
                    if (outgrown || past_cap) && !trimming {
                        // Too large to keep (a body without a length that turned out bigger
                        // than `max_object_size`): it goes on streaming to the viewers reading
                        // it, holding a window behind the fastest of them (one further behind
                        // is cut); new requests pass to the origin themselves. A prefetch
                        // nobody reads stops here (`wait_for_readers`), without a pass: a
                        // viewer's own fill may keep the object.
                        trimming = true;
                        store = false;
                        guard.release();
                        if outgrown {
                            edge.remember_pass(&job.base_key, cache.hit_for_pass_ttl);
                        }
                        if past_cap {
                            Metrics::inc(&edge.metrics.abuse.prefetch_abandoned);
                            edge.remember_prefetch_refused(&job.base_key, cache.hit_for_pass_ttl);
                        }
                        fill.stop_keeping();
                    }
                    // A live manifest announces its new objects before its viewers read its
                    // last byte (`proxy::llhls::announce`: prefetch starts first); a large one
                    // on the blocking pool, a little later (`llhls::announce_early`).
                    if class == ContentClass::Manifest && store && content_length.is_some() {
                        early.extend_from_slice(&data);
                        if content_length == Some(received) {
                            announced = crate::proxy::llhls::announce_early(
                                edge,
                                job.route,
                                key,
                                std::mem::take(&mut early),
                                &job.viewer_headers,
                            );
                        }
                    }
                    fill.push(data);
                    if trimming && !fill.wait_for_readers(TRIM_WINDOW).await {
                        tracing::debug!(key, "every viewer of an oversized body left");
                        return Err(FillError::Abandoned);
                    }
                }
            }
        }
    }
    if content_length.is_some_and(|cl| cl != received) {
        return Err(FillError::Truncated);
    }
    match decision {
        Decision::Store(freshness) if store => {
            let tags = tags_of(&parts.headers);
            let obj = CachedObject {
                status: parts.status,
                headers: crate::cache::object::owned(&parts.headers),
                body: fill.body(&edge.zero_copy),
                class,
                freshness,
                stored_at: edge.clock.now(),
                vary: spec,
                tags,
                pinned: false,
                disk: Default::default(),
                store_mark: guard.store_mark().unwrap_or(0),
            };
            let url = crate::proxy::assets::asset_url(&job.host, &job.path_and_query);
            let obj = Arc::new(obj);
            let stored = edge.insert_from_fill(guard, store_key.clone(), obj.clone(), url);
            if stored && class == ContentClass::Manifest {
                crate::proxy::llhls::observe_late(
                    edge,
                    job.route,
                    &store_key,
                    &obj,
                    &job.viewer_headers,
                    announced,
                );
            }
        }
        _ => {
            if job.stale.is_some() && parts.status.is_success() {
                // A fresh answer that may not be stored replaces nothing: drop the stale copy.
                edge.purge_key(key);
            }
        }
    }
    fill.finish(Ok(()));
    Ok(Asked::Done)
}
