//! The origin side, the only outbound path: each route's origins as a group (`group.rs`: the
//! policy that picks one, behind the `Upstream` trait), each origin with its own pooled
//! hyper-util client over plain TCP or rustls (`target.rs`, `tls.rs`), active health checks
//! (`health.rs`) and passive ejection; connect, first-byte and between-bytes timeouts; one
//! retry before the response head (on the next healthy origin of a group); `Host` per route,
//! and `Via` / `CDN-Loop` (RFC 8586) so loops through shields are refused.

pub mod fetch;
pub mod group;
pub mod health;
pub mod pass_limit;
pub mod preconnect;
pub mod shield;
pub mod target;
pub mod tls;
pub mod upload;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::object::strip_hop_by_hop;
use crate::cache::vary::normalise_accept_encoding;
use crate::config::{never_forwarded_header, OriginClientConfig, Route};
use crate::http::body::Body;

pub use group::{rendezvous_order, Group, Upstream};
pub use pass_limit::{PassSlot, RelaySlot};
use shield::ShieldPlan;
pub use target::Target;
use target::{Family, Outcome};
pub use upload::{Upload, ViewerFault};

/// Why an origin request failed; maps to 502 or 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("origin refused or unreachable")]
    Connect,
    #[error("origin did not answer in time")]
    Timeout,
    #[error("origin sent an invalid response")]
    Protocol,
    #[error("TLS handshake with the origin failed (certificate not trusted or wrong name)")]
    Tls,
    #[error("internal error while fetching")]
    Internal,
    /// Every connection this edge may open to the origin (`max_connections_per_origin`) stayed
    /// in use until the first-byte timeout: the request never reached the origin, so this says
    /// nothing about its health (503 origin-busy, not retried elsewhere).
    #[error("origin busy: every connection this edge may open to it is in use, retry shortly")]
    Busy,
}

impl OriginError {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginError::Connect => "origin-unreachable",
            OriginError::Timeout => "origin-timeout",
            OriginError::Protocol => "origin-protocol",
            OriginError::Tls => "origin-tls",
            OriginError::Internal => "internal",
            OriginError::Busy => "origin-busy",
        }
    }
}

/// Whether `headers` name a transfer coding this edge cannot undo: anything but `chunked`
/// (RFC 9112 §6.1; hyper decodes `chunked` only) and `identity` (RFC 2616's no-op coding, which
/// old servers still send along with `chunked`).
fn undecodable_transfer_coding(headers: &HeaderMap) -> bool {
    crate::http::transfer_codings(headers)
        .any(|c| !c.eq_ignore_ascii_case(b"chunked") && !c.eq_ignore_ascii_case(b"identity"))
}

/// Whether an upstream's final status is one RFC 9110 §15 defines a class for (100-599);
/// hyper's parser accepts any three digits up to 999.
fn valid_status(status: http::StatusCode) -> bool {
    (100..=599).contains(&status.as_u16())
}

/// Who a pass (one viewer's request, forwarded uncached) is for: the client address whose
/// share of each origin's pass slots it takes (`pass_limit`), as the limits count it; `None`
/// for an address on `limits.allow` (no share, only the cap on passes as a whole).
/// A pass with a request body says how far its viewer got sending it (`upload`): a request that
/// failed by its viewer's doing counts neither for nor against the origin's health.
#[derive(Debug, Clone, Default)]
pub struct PassFor {
    pub client: Option<std::net::IpAddr>,
    pub upload: Option<Upload>,
    /// The request's whole content when it was read before sending (small, of known length,
    /// `proxy::pass`): the request can then be sent again, to the next candidate when the
    /// first could not be connected to (`fetch_plan`). Empty: no content.
    pub content: bytes::Bytes,
}

/// How one request is asked of an upstream's plan (`fetch_plan`), besides what it is.
#[derive(Clone, Copy)]
struct Ask<'a> {
    /// The collapse deadline a retry must land within (after a timeout the retry gets a whole
    /// first-byte timeout of its own).
    deadline: Option<Instant>,
    /// A pass: each attempt takes a pass slot of its target first.
    pass: Option<&'a PassFor>,
    /// A stale copy answers should this fail: a timed-out candidate is not retried.
    stale_stands_by: bool,
}

/// A pass's answer and the origin's pass slot it holds: keep `slot` until the response body
/// is done with (ended, failed or dropped).
pub struct Passed {
    pub response: Response<Incoming>,
    pub slot: Option<PassSlot>,
}

/// Every route's origin group, and what all origin requests share (timeouts, `Via`,
/// `CDN-Loop`). Shared by every request.
pub struct OriginClient {
    /// By route prefix (prefixes are unique in a validated config).
    groups: HashMap<String, Arc<Group>>,
    cfg: OriginClientConfig,
    via: HeaderValue,
    cdn_loop: HeaderValue,
    /// `{cdn_id}="Surrogate/1.0"` (Edge Architecture 1.0 §2.2): tells the origin the token
    /// `Surrogate-Control` directives may target at this edge (`policy::surrogate_control`).
    surrogate_capability: HeaderValue,
    /// `X-Forwarded-Proto`: the scheme viewers reach this edge with.
    proto: &'static str,
    /// Ends the health-check tasks (`stop_health`, on shutdown).
    stop: CancellationToken,
    /// The `[shield]` tier fills go through first (`shield.rs`).
    shield: Option<shield::Shield>,
    /// `origin_client.max_connections_per_origin`, for the shield nodes too.
    max_connections: usize,
}

impl OriginClient {
    /// One group per route, one pooled client per origin. Fails on TLS settings that cannot be
    /// built (validated config makes this rare: an unreadable CA file since validation).
    /// `max_connections`: `origin_client.max_connections_per_origin` (0: no cap), held by each
    /// origin's connector (`tls::Connector`).
    pub fn new(
        cfg: &OriginClientConfig,
        max_connections: usize,
        routes: &[Route],
        cdn_id: &str,
        node: &str,
    ) -> anyhow::Result<OriginClient> {
        let mut groups = HashMap::new();
        for route in routes {
            let targets = route
                .group
                .origins
                .iter()
                .map(|u| {
                    let mut t = Target::new(u, cfg, &route.group.tls, max_connections)?;
                    // Each origin gets its own host:port as `Host`, unless the route names one
                    // (or passes the viewer's through).
                    if route.host.as_deref() != Some(route_authority(&route.origin).as_str()) {
                        t.host = None;
                    }
                    Ok(Arc::new(t))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            groups.insert(
                route.prefix.clone(),
                Arc::new(Group::new(&route.prefix, targets, route.group.clone())),
            );
        }
        Ok(OriginClient {
            groups,
            cfg: cfg.clone(),
            via: HeaderValue::from_str(&format!("1.1 {cdn_id}"))
                .expect("cdn_id is a validated token"),
            cdn_loop: HeaderValue::from_str(&format!("{cdn_id}; node={node}"))
                .expect("cdn_id and node are validated tokens"),
            surrogate_capability: HeaderValue::from_str(&format!("{cdn_id}=\"Surrogate/1.0\""))
                .expect("cdn_id is a validated token"),
            proto: "http",
            stop: CancellationToken::new(),
            shield: None,
            max_connections,
        })
    }

    /// Fills of the routes `shield` covers go to the key's shield first.
    pub fn with_shield(
        mut self,
        shield: Option<&crate::config::ShieldConfig>,
    ) -> anyhow::Result<OriginClient> {
        self.shield = shield
            .map(|s| shield::Shield::new(s, &self.cfg, self.max_connections))
            .transpose()?;
        Ok(self)
    }

    /// The shield nodes for `key` on `route` in hash order (the first owns it); empty when the
    /// route does not go through shields.
    pub fn shield_order(&self, route: &Route, key: &str) -> Vec<String> {
        match &self.shield {
            Some(s) if s.covers(route) => {
                s.order(key).iter().map(|t| t.name().to_string()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// How long one attempt waits for `target`'s response head: a shield node's
    /// `[shield] first_byte_timeout` (longer than the shield's own wait for its origin, so its
    /// stale-if-error copy or its own error arrives), else `origin_client.first_byte_timeout`.
    fn first_byte_timeout(&self, target: &Target) -> Duration {
        match &self.shield {
            Some(s) if target.tier => s.cfg.first_byte_timeout,
            _ => self.cfg.first_byte_timeout,
        }
    }

    /// How long a fill of `route` may wait for its response head at most: one attempt and its
    /// one retry (`fetch_plan`), on shields or origins. Collapsed viewers wait that long
    /// (`Fill::expect_head_by`).
    pub fn head_within(&self, route: &Route) -> Duration {
        let mut attempt = self.cfg.first_byte_timeout;
        if let Some(s) = self.shield.as_ref().filter(|s| s.covers(route)) {
            attempt = attempt.max(s.cfg.first_byte_timeout);
        }
        attempt.saturating_mul(2)
    }

    /// Viewers reach this edge over TLS: `X-Forwarded-Proto: https`.
    pub fn with_tls_viewers(mut self, tls: bool) -> OriginClient {
        self.proto = if tls { "https" } else { "http" };
        self
    }

    /// The headers every outbound request of this edge carries whatever it is for (`Via`,
    /// `CDN-Loop`), for clients that build their own requests (push ingest's fetcher).
    pub fn identity_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::VIA, self.via.clone());
        h.insert("cdn-loop", self.cdn_loop.clone());
        h
    }

    pub fn between_bytes_timeout(&self) -> Duration {
        self.cfg.between_bytes_timeout
    }

    /// What an origin body (a fill's or a pass's) of `route` may take: the between-bytes
    /// timeout and the route's `min_body_rate` (else `origin_client.min_body_rate`) over the
    /// window.
    pub fn body_timeouts(&self, route: &Route) -> crate::http::body::BodyTimeouts {
        crate::http::body::BodyTimeouts {
            idle: self.cfg.between_bytes_timeout,
            min_rate: route.min_body_rate.unwrap_or(self.cfg.min_body_rate),
            window: self.cfg.min_body_rate_window,
        }
    }

    /// The group serving `route`.
    pub fn group(&self, route: &Route) -> Result<&Arc<Group>, OriginError> {
        self.groups.get(&route.prefix).ok_or(OriginError::Internal)
    }

    /// Every group, longest prefix first (for `/admin/origins` and metrics).
    fn groups_sorted(&self) -> Vec<&Arc<Group>> {
        let mut g: Vec<_> = self.groups.values().collect();
        g.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        g
    }

    /// The health-check tasks of every group that has `health` configured, for the caller to
    /// spawn on its task tracker. They end when `stop_health` is called.
    pub fn health_tasks(&self) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut tasks = Vec::new();
        for g in self.groups.values() {
            let Some(check) = &g.cfg.health else { continue };
            for t in &g.targets {
                tasks.push(health::run(t.clone(), check.clone(), self.stop.clone()));
            }
        }
        if let Some(s) = &self.shield {
            if let Some(check) = &s.cfg.health {
                for t in &s.nodes {
                    tasks.push(health::run(t.clone(), check.clone(), self.stop.clone()));
                }
            }
        }
        tasks
    }

    /// The warm-connection tasks (`preconnect`), one per origin of every group, for the caller
    /// to spawn on its task tracker; none when `origin_client.preconnect = false`. They end when
    /// `stop_health` is called.
    pub fn preconnect_tasks(&self) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.cfg.preconnect.enabled {
            return Vec::new();
        }
        self.groups
            .values()
            .flat_map(|g| g.targets.iter())
            .map(|t| preconnect::run(t.clone(), self.cfg.clone(), self.stop.clone()))
            .collect()
    }

    /// Warm-up requests that completed, over every origin (tests, `/admin/origins`).
    pub fn warmups(&self) -> u64 {
        self.groups
            .values()
            .flat_map(|g| g.targets.iter())
            .map(|t| t.traffic.warmups())
            .sum()
    }

    /// Ends the health-check tasks (shutdown).
    pub fn stop_health(&self) {
        self.stop.cancel();
    }

    /// The origin URI for a request target on `route`'s first origin.
    pub fn uri_for(route: &Route, path_and_query: &str) -> Result<Uri, OriginError> {
        let base = route.origin.path().trim_end_matches('/');
        let authority = route_authority(&route.origin);
        if authority.is_empty() {
            return Err(OriginError::Internal);
        }
        format!(
            "{}://{authority}{base}{path_and_query}",
            route.origin.scheme()
        )
        .parse()
        .map_err(|_| OriginError::Internal)
    }

    /// Headers for a pass-through (one viewer's own request, nothing shared): the viewer's
    /// headers without the hop-by-hop ones (RFC 9110 §7.6.1), without framing (the edge frames
    /// the body it streams), without anything `config::never_forwarded` names and without the
    /// viewer's own client-address claims (`CLIENT_ADDRESS_HEADERS`, unless the route's
    /// `forward_headers` lists one); then `Host`
    /// per route (or the validated viewer host), `Via`, `CDN-Loop`, `X-Forwarded-For` (the
    /// viewer's chain plus its address) and `X-Forwarded-Proto`.
    pub fn origin_headers(
        &self,
        route: &Route,
        viewer: &HeaderMap,
        viewer_host: &str,
        peer: Option<std::net::IpAddr>,
    ) -> HeaderMap {
        let mut h = viewer.clone();
        strip_hop_by_hop(&mut h);
        let never: Vec<HeaderName> = h
            .keys()
            .filter(|n| never_forwarded_header(n.as_str()))
            .cloned()
            .collect();
        for n in never {
            h.remove(n);
        }
        // A viewer's claim of its own address is not forwarded as if the edge vouched for it:
        // an origin that trusts these from its edge would log, rate-limit or authorise by a
        // forged client. The operator who lists one in `forward_headers` chose otherwise.
        for n in CLIENT_ADDRESS_HEADERS {
            if !route.integrity.forward_headers.iter().any(|f| f == n) {
                h.remove(*n);
            }
        }
        let prev_xff = join_values(viewer, "x-forwarded-for");
        h.remove("x-forwarded-for");
        self.stamp(
            &mut h,
            route.host.as_deref().unwrap_or(viewer_host),
            peer,
            prev_xff,
        );
        h
    }

    /// Headers for a fill: built for the cache key, not copied from the viewer that happened
    /// to lead it, since every viewer of the key gets what it returns. Only `Host` (the route's,
    /// or the validated viewer host on `pass_host` routes), the normalised `Accept-Encoding`,
    /// the viewer headers the object's known `Vary` names (`varied`) and the route's
    /// `forward_headers`, each unless `config::never_forwarded`; then `Via`, `CDN-Loop`
    /// (the viewer's entries kept, RFC 8586), `X-Forwarded-For` (the peer only: a chain the
    /// leader claims is not the other viewers') and `X-Forwarded-Proto`. The caller adds its own
    /// conditionals.
    pub fn fill_headers(
        &self,
        route: &Route,
        viewer: &HeaderMap,
        varied: &[HeaderName],
        host: &str,
        peer: Option<std::net::IpAddr>,
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        let accept = join_values(viewer, header::ACCEPT_ENCODING.as_str()).unwrap_or_default();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(normalise_accept_encoding(&accept)),
        );
        for name in varied.iter().chain(&route.integrity.forward_headers) {
            if *name == header::ACCEPT_ENCODING
                || h.contains_key(name)
                || never_forwarded_header(name.as_str())
                || STAMPED.contains(&name.as_str())
            {
                continue;
            }
            for v in viewer.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        for v in viewer.get_all(header::VIA) {
            h.append(header::VIA, v.clone());
        }
        for v in viewer.get_all(&CDN_LOOP) {
            h.append(CDN_LOOP, v.clone());
        }
        self.stamp(&mut h, host, peer, None);
        h
    }

    /// `Host`, our `Via` and `CDN-Loop` entries, `Surrogate-Capability`, `X-Forwarded-For`
    /// (`prev` then the peer) and `X-Forwarded-Proto` (the viewer listener's scheme).
    fn stamp(
        &self,
        h: &mut HeaderMap,
        host: &str,
        peer: Option<std::net::IpAddr>,
        prev: Option<String>,
    ) {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v);
        }
        h.append(header::VIA, self.via.clone());
        h.append("cdn-loop", self.cdn_loop.clone());
        // This edge's own, in place of any a viewer sent: viewers are no surrogates.
        h.insert("surrogate-capability", self.surrogate_capability.clone());
        let xff = match (prev, peer) {
            (Some(prev), Some(ip)) => Some(format!("{prev}, {ip}")),
            (None, Some(ip)) => Some(ip.to_string()),
            (prev, None) => prev,
        };
        if let Some(v) = xff.and_then(|x| HeaderValue::from_str(&x).ok()) {
            h.insert("x-forwarded-for", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static(self.proto));
    }

    /// Fetches `path_and_query` for `key` from `route`'s group (through the key's shields first
    /// when the route has them): a request whose body can be rebuilt (GET/HEAD: empty). Returns
    /// once a response head arrived. See `fetch_via`. `stale_stands_by`: the caller holds a
    /// copy it may serve should this fail (stale-if-error), so a candidate that timed out is not
    /// retried on the next: the copy answers now, not after a second whole timeout.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_for(
        &self,
        route: &Route,
        key: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        deadline: Option<Instant>,
        stale_stands_by: bool,
    ) -> Result<Response<Incoming>, OriginError> {
        let ask = Ask {
            deadline,
            pass: None,
            stale_stands_by,
        };
        self.fetch_route(route, key, method, path_and_query, headers, ask)
            .await
            .map(|(response, _)| response)
    }

    /// `fetch_for` for a pass (a request of one viewer, forwarded uncached): each origin asked
    /// first gives it one of its pass slots (`pass_limit`), held by the returned `Passed` until
    /// the response body is done with. No slot in time: `OriginError::Busy`.
    pub async fn pass_fetch_for(
        &self,
        route: &Route,
        key: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        pass: &PassFor,
    ) -> Result<Passed, OriginError> {
        let ask = Ask {
            deadline: None,
            pass: Some(pass),
            stale_stands_by: false,
        };
        let (response, slot) = self
            .fetch_route(route, key, method, path_and_query, headers, ask)
            .await?;
        Ok(Passed { response, slot })
    }

    /// The shields in front of `group` for `route`, when there are shields and they cover it.
    fn shield_plan<'a>(&'a self, route: &Route, group: &'a Group) -> Option<ShieldPlan<'a>> {
        self.shield
            .as_ref()
            .filter(|s| s.covers(route))
            .map(|s| s.upstream(group))
    }

    /// `fetch_plan` on `route`'s upstream: its group, through the key's shields first when the
    /// route has them.
    async fn fetch_route(
        &self,
        route: &Route,
        key: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        ask: Ask<'_>,
    ) -> Result<(Response<Incoming>, Option<PassSlot>), OriginError> {
        let group = self.group(route)?.clone();
        let shielded = self.shield_plan(route, &group);
        let upstream: &dyn Upstream = match &shielded {
            Some(s) => s,
            None => group.as_ref(),
        };
        self.fetch_plan(upstream, key, method, path_and_query, headers, ask)
            .await
    }

    /// Fetches from the upstream's first candidate for `key`. A GET or HEAD that fails before
    /// its response head (refused, reset, timed out, TLS; or a status the upstream retries), or
    /// a request of any method that could not be connected, is tried once more, on the next
    /// candidate: after a timeout with a whole first-byte timeout of its own, otherwise if time
    /// is left before `deadline` (the collapse deadline). With a single origin only a failed
    /// connection is retried (on the same origin), as a stale pooled connection is the likely
    /// cause. Body bytes never flowed by then, so no viewer can notice.
    pub async fn fetch_via(
        &self,
        upstream: &dyn Upstream,
        key: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        deadline: Option<Instant>,
    ) -> Result<Response<Incoming>, OriginError> {
        let ask = Ask {
            deadline,
            pass: None,
            stale_stands_by: false,
        };
        self.fetch_plan(upstream, key, method, path_and_query, headers, ask)
            .await
            .map(|(response, _)| response)
    }

    /// `fetch_via`, for a pass when `ask.pass` is given: each attempt takes a pass slot of its
    /// origin first, and the answer comes with it.
    async fn fetch_plan(
        &self,
        upstream: &dyn Upstream,
        key: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        ask: Ask<'_>,
    ) -> Result<(Response<Incoming>, Option<PassSlot>), OriginError> {
        let Ask {
            deadline,
            pass,
            stale_stands_by,
        } = ask;
        let plan = upstream.plan(key);
        // An empty plan: every shield is down and `on_all_down = "error"` keeps the origin
        // out of it. Nothing can be reached, as the documented 502 says.
        let Some(first) = plan.first() else {
            return Err(OriginError::Connect);
        };
        let timeout = self.first_byte_timeout(first);
        let content = pass.map(|p| p.content.clone()).unwrap_or_default();
        let build = || {
            if content.is_empty() {
                Request::new(Body::empty())
            } else {
                Request::new(Body::full(content.clone()))
            }
        };
        let mut req = build();
        *req.method_mut() = method.clone();
        *req.headers_mut() = headers.clone();
        let result = self
            .attempt(upstream, first, path_and_query, req, timeout, pass)
            .await;
        let several = plan.len() > 1;
        let retry = match &result {
            Ok((resp, _)) => upstream.retries_status(resp.status().as_u16()),
            Err(OriginError::Connect) => true,
            // A stale copy answers now: a second whole timeout would only delay it.
            Err(OriginError::Timeout) if stale_stands_by => false,
            Err(OriginError::Timeout | OriginError::Protocol | OriginError::Tls) => several,
            // Waited for this edge's own connection slot for the whole first-byte timeout: the
            // origin is busy, not failing, and a local limit is no reason to fail over.
            Err(OriginError::Internal | OriginError::Busy) => false,
        };
        // A request that never reached the first candidate (no connection) may go to the next
        // whatever its method: nothing of it was sent. Past that, only a GET or HEAD is asked
        // twice (a DELETE that timed out may have been done).
        let unsent = matches!(result, Err(OriginError::Connect));
        if !retry || !(unsent || method == Method::GET || method == Method::HEAD) {
            return result;
        }
        let next = plan.get(1).unwrap_or(first);
        let timeout = self.first_byte_timeout(next);
        let left = match (&result, deadline) {
            // A candidate that let the whole first-byte timeout pass (hung, or cut off) is what
            // failover is for: the next gets a whole timeout too, past the collapse deadline
            // (collapsed viewers wait for an attempt and its retry, `request::collapsed_head`).
            // Bounded by the deadline, the retry never happened with the default timeouts
            // (collapse 10 s, first byte 15 s): every key the hung node owns was a 504.
            (Err(OriginError::Timeout), _) => timeout,
            (_, Some(d)) => d.saturating_duration_since(Instant::now()).min(timeout),
            (_, None) => timeout,
        };
        if left.is_zero() {
            return result;
        }
        tracing::debug!(
            key,
            from = first.name(),
            to = next.name(),
            outcome = ?result.as_ref().map(|(r, _)| r.status()),
            "retrying the fetch before its response head"
        );
        let mut req = build();
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        match self
            .attempt(upstream, next, path_and_query, req, left, pass)
            .await
        {
            // The retry could not even answer: the first origin's error status says more.
            Err(_) if result.is_ok() => result,
            second => second,
        }
    }

    /// Sends one pass of any method with a streamed body (not retried: the body cannot be
    /// rebuilt) to the first candidate for `key` of `route`'s upstream, through the key's
    /// shield when the route has them (as `fetch_for`), in one of its pass slots (see
    /// `pass_fetch_for`). Through the shield, not around it: an unsafe method's answer
    /// invalidates the target on every tier it passes (RFC 9111 §4.4), and the shield that
    /// owns `key` holds the copy this edge would refill from. Sent straight to the origin, a
    /// `POST` removed only this edge's copy, and its next `GET` brought the old one back from
    /// the shield for the shield's whole TTL.
    pub async fn pass_send_for(
        &self,
        route: &Route,
        key: &str,
        path_and_query: &str,
        req: Request<Body>,
        pass: &PassFor,
    ) -> Result<Passed, OriginError> {
        let group = self.group(route)?.clone();
        let shielded = self.shield_plan(route, &group);
        let upstream: &dyn Upstream = match &shielded {
            Some(s) => s,
            None => group.as_ref(),
        };
        let plan = upstream.plan(key);
        let target = plan.first().ok_or(OriginError::Connect)?;
        let (response, slot) = self
            .attempt(
                upstream,
                target,
                path_and_query,
                req,
                self.first_byte_timeout(target),
                Some(pass),
            )
            .await?;
        Ok(Passed { response, slot })
    }

    /// One request to one origin, bounded by `timeout` up to the response head; its outcome
    /// goes to the origin's metrics and passive health. A pass first takes one of the origin's
    /// pass slots (waiting at most `timeout` too, which the request then has in full: the wait
    /// is the edge's, not the origin's).
    async fn attempt(
        &self,
        upstream: &dyn Upstream,
        target: &Target,
        path_and_query: &str,
        mut req: Request<Body>,
        timeout: Duration,
        pass: Option<&PassFor>,
    ) -> Result<(Response<Incoming>, Option<PassSlot>), OriginError> {
        *req.uri_mut() = target.uri(path_and_query)?;
        if let Some(host) = &target.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        let slot = match pass {
            None => None,
            // Never reached the origin: counts nowhere (`Target::record` ignores `Busy`).
            Some(p) => Some(
                target
                    .passes
                    .admit(p.client, timeout)
                    .await
                    .ok_or(OriginError::Busy)?,
            ),
        };
        let dial = tls::DialWatch::new(&mut req);
        let started = Instant::now();
        let request = dial.watch(target.client.request(req));
        let uploading = pass.and_then(|p| p.upload.as_ref());
        let result = match answered_within(timeout, uploading, request).await {
            // Waiting on this edge's side (its dial queued for a local slot, or behind another
            // request's h2 connect; `DialWatch`): the origin never saw the request.
            Err(_) if dial.waited_locally() => Err(OriginError::Busy),
            Err(_) => Err(OriginError::Timeout),
            // The edge never asks an upstream to switch protocols (`Upgrade` is hop-by-hop and
            // never forwarded), and hyper hands through no other 1xx: a 101 is no final answer
            // to relay (every viewer of a fill would get a head without a response).
            Ok(Ok(resp)) if resp.status().is_informational() => Err(OriginError::Protocol),
            // A status past 599 (hyper parses any three digits): RFC 9110 §15 defines none, so
            // it is an invalid answer like any broken one, not something to relay or store
            // (`HTTP/1.1 600 <none>` reached viewers, and was cached when given a lifetime).
            Ok(Ok(resp)) if !valid_status(resp.status()) => Err(OriginError::Protocol),
            // A transfer coding other than `chunked` (`Transfer-Encoding: gzip`): hyper reads
            // such a body to the connection's close and the coding, hop-by-hop, is dropped on
            // the way, so its coded bytes would reach viewers (and the cache) as plain ones.
            // So is one framed both ways (`Content-Length` and `Transfer-Encoding`, RFC 9112
            // §6.3: "ought to be handled as an error"): its viewers got no response at all.
            Ok(Ok(resp))
                if undecodable_transfer_coding(resp.headers())
                    || (resp.headers().contains_key(header::TRANSFER_ENCODING)
                        && resp.headers().contains_key(header::CONTENT_LENGTH)) =>
            {
                Err(OriginError::Protocol)
            }
            // A connect error without a dial of its own: the pool's, see `DialWatch`.
            Ok(Err(e)) if e.is_connect() && dial.waited_for_a_closed_one() => {
                tracing::debug!(origin = target.name(), error = %e, "no connection for the request");
                Err(OriginError::Busy)
            }
            Ok(Ok(mut resp)) => {
                resp.extensions_mut()
                    .insert(pass_limit::AnsweredBy(target.passes.clone()));
                Ok(resp)
            }
            Ok(Err(e)) => Err(classify(&e, target)),
        };
        let upload = pass.and_then(|p| p.upload.as_ref());
        let outcome = match &result {
            // The viewer's own body failed, or was still arriving when the time ran out: about
            // the request, not the origin (the viewer could otherwise eject it at will).
            Err(e) if *e != OriginError::Busy && upload.and_then(|u| u.fault(*e)).is_some() => {
                Outcome::ViewerFault
            }
            Ok(r) if r.status() == http::StatusCode::LOOP_DETECTED => Outcome::Loop,
            Ok(r) if r.status().is_server_error() => Outcome::ServerError(
                matches!(r.status().as_u16(), 502..=504)
                    && !(target.tier && shield::relays_upstream_status(r.headers())),
            ),
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(*e),
        };
        target.record(outcome, started.elapsed(), upstream.eject());
        result.map(|response| (response, slot))
    }

    /// A fill's answer that turned out to be one viewer's (not shareable: `private`, `no-store`,
    /// `Set-Cookie`, an answer to the leader's credentials or to its own `CDN-Loop` entries) is
    /// relayed to the viewer that led the fill, which is a pass: it holds the upstream's
    /// connection as long as that viewer takes the body. So it takes a pass slot of the
    /// upstream that answered (origin or shield node, `pass_limit`) for `client` (as
    /// `PassFor::client`), carried in the answer's extensions (`RelaySlot`) until the relay
    /// holds it. Taken at once or not at all: waiting would hold the very connection the slot
    /// bounds. `Err(Busy)`: the client's share or the cap on passes is full; the caller drops
    /// the answer (freeing the connection) and the leader answers 503 origin-busy.
    pub async fn relay_slot(
        extensions: &mut http::Extensions,
        client: Option<std::net::IpAddr>,
    ) -> Result<(), OriginError> {
        let Some(pass_limit::AnsweredBy(passes)) = extensions.remove() else {
            return Ok(());
        };
        let slot = passes
            .admit(client, Duration::ZERO)
            .await
            .ok_or(OriginError::Busy)?;
        extensions.insert(RelaySlot::new(slot));
        Ok(())
    }

    /// `/admin/origins`: every group's policy and each origin's state and counts.
    pub fn snapshot(&self) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .groups_sorted()
            .into_iter()
            .map(|g| {
                serde_json::json!({
                    "prefix": g.prefix,
                    "policy": g.cfg.policy.as_str(),
                    "health_checks": g.cfg.health.is_some(),
                    "retry_on": g.cfg.retry_on,
                    "origins": g.targets.iter().map(|t| t.snapshot()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let shields: Vec<serde_json::Value> = self
            .shield
            .iter()
            .flat_map(|s| s.nodes.iter().map(|t| t.snapshot()))
            .collect();
        serde_json::json!({ "routes": routes, "shields": shields })
    }

    /// Per-origin metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let groups = self.groups_sorted();
        for (family, name, kind) in Family::ALL {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for g in &groups {
                for t in &g.targets {
                    let labels = format!(
                        "route=\"{}\",origin=\"{}\"",
                        label_value(&g.prefix),
                        label_value(t.name())
                    );
                    t.render(family, &labels, out);
                }
            }
            for t in self.shield.iter().flat_map(|s| &s.nodes) {
                let labels = format!("route=\"shield\",origin=\"{}\"", label_value(t.name()));
                t.render(family, &labels, out);
            }
        }
    }
}

/// The request headers the edge writes itself on a fill (`OriginClient::stamp`, with the
/// viewer's `Via` and `CDN-Loop` entries kept before its own): never copied from the viewer
/// as they are, whatever `Vary` or `forward_headers` names.
pub const STAMPED: [&str; 4] = ["via", "cdn-loop", "x-forwarded-for", "x-forwarded-proto"];

/// `CDN-Loop` (RFC 8586), named once: a name given as text is parsed on every lookup.
pub const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

/// Request headers in which a client states its own address, which origins behind a CDN are
/// often configured to trust (nginx `real_ip_header`, Akamai, Cloudflare, Fastly conventions).
/// A pass drops the viewer's copies unless the route's `forward_headers` lists them; a fill
/// sends none of them anyway (it copies only what the route and `Vary` name). `Forwarded` is in
/// `config::NEVER_FORWARDED`; `X-Forwarded-For` is rewritten by `stamp` (the viewer's chain
/// followed by the peer the edge saw, so its last entry is the edge's own word).
pub const CLIENT_ADDRESS_HEADERS: &[&str] = &[
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-client-ip",
];

/// A header's values joined with `, ` (`None` when absent or not text).
fn join_values(h: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// A hyper-util client error in our terms; a TLS failure is found in its source chain.
fn classify(e: &hyper_util::client::legacy::Error, target: &Target) -> OriginError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<tls::TlsError>().is_some() {
            return OriginError::Tls;
        }
        source = s.source();
    }
    if e.is_connect() {
        tracing::debug!(origin = target.name(), error = %e, "origin connect failed");
        OriginError::Connect
    } else {
        tracing::debug!(origin = target.name(), error = ?e, "origin request failed");
        OriginError::Protocol
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn route_authority(u: &url::Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// Whether a viewer request already passed through this node (or an unnamed vedge): RFC 8586.
/// Entries with our id and another node's name are other tiers of the same CDN, and pass.
///
/// The field is hostile input and a missed loop costs a request storm, so the reading errs
/// toward "loop": ids and node names compare without case, whitespace around `;` and `=` is
/// ignored, a field line with bytes outside visible ASCII is still read (lossily: one merged line
/// cannot hide our entry behind one bad byte), and an entry naming several nodes loops when any
/// of them is this node.
pub fn is_loop(headers: &HeaderMap, cdn_id: &str, node: &str) -> bool {
    headers.get_all(&CDN_LOOP).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|entry| {
                let mut parts = entry.split(';').map(str::trim);
                let id = parts.next().unwrap_or("").trim_matches('"');
                if !id.eq_ignore_ascii_case(cdn_id) {
                    return false;
                }
                let mut named = parts
                    .filter_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("node")
                            .then(|| v.trim().trim_matches('"').trim())
                    })
                    .peekable();
                // No node named: an unnamed vedge of our CDN, which may be this one.
                named.peek().is_none() || named.any(|n| n.eq_ignore_ascii_case(node))
            })
    })
}

/// Whether a request came through another node of this CDN (a `CDN-Loop` entry with our id):
/// a downstream tier (an edge in front of this shield), which runs its own prefetch.
pub fn from_own_tier(headers: &HeaderMap, cdn_id: &str) -> bool {
    headers.get_all(&CDN_LOOP).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|entry| {
                let id = entry
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches('"');
                id.eq_ignore_ascii_case(cdn_id)
            })
    })
}

/// `request`'s answer within `timeout` of its being sent whole: for a request streaming its
/// viewer's body (`upload`), `timeout` for the body to go out (a viewer still sending then is
/// too slow, `ViewerFault::Slow`), then `timeout` from the moment it did for the origin's
/// head. Counted from the start alone, the upload's time came out of the origin's: a body
/// finished 2.4 s into a 3 s timeout left the origin 0.6 s, the viewer got a 504 for a
/// request the origin carried out, and a few such uploads ejected a healthy origin.
async fn answered_within<F: std::future::Future>(
    timeout: Duration,
    upload: Option<&Upload>,
    request: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let Some(upload) = upload else {
        return tokio::time::timeout(timeout, request).await;
    };
    let mut request = std::pin::pin!(request);
    let before_sent = tokio::time::timeout(timeout, async {
        tokio::select! {
            answer = request.as_mut() => Some(answer),
            () = upload.sent() => None,
        }
    })
    .await?;
    match before_sent {
        Some(answer) => Ok(answer),
        None => tokio::time::timeout(timeout, request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_detected_per_node() {
        let mut h = HeaderMap::new();
        assert!(!is_loop(&h, "vedge", "n1"));
        h.insert("cdn-loop", HeaderValue::from_static("othercdn, vedge"));
        assert!(is_loop(&h, "vedge", "n1"));
        h.insert("cdn-loop", HeaderValue::from_static("vedge; node=n2"));
        assert!(
            !is_loop(&h, "vedge", "n1"),
            "another tier of the same CDN passes"
        );
        h.append("cdn-loop", HeaderValue::from_static("vedge; node=n1"));
        assert!(is_loop(&h, "vedge", "n1"));
    }

    #[test]
    fn requests_through_another_node_of_this_cdn_are_from_its_own_tier() {
        let mut h = HeaderMap::new();
        assert!(!from_own_tier(&h, "vedge"));
        h.insert("cdn-loop", HeaderValue::from_static("othercdn; node=x"));
        assert!(!from_own_tier(&h, "vedge"));
        h.append(
            "cdn-loop",
            HeaderValue::from_static("foo, VEDGE ; node=edge-1"),
        );
        assert!(from_own_tier(&h, "vedge"));
    }

    #[test]
    fn loop_detection_is_not_bypassed_by_case_whitespace_or_bad_bytes() {
        let looped = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                "cdn-loop",
                HeaderValue::from_bytes(v).expect("header value"),
            );
            is_loop(&h, "vedge", "Shield-A")
        };
        for v in [
            &b"vedge; node=Shield-A"[..],
            b"VEDGE; NODE=shield-a",
            b"  vedge ;\tnode = shield-a  ",
            b"vedge;node=\"shield-a\"",
            b"\"vedge\"; node=shield-a",
            b"other, vedge; node=n2; node=shield-a",
            b"vedge; foo=bar",
            b"x\xff\xfey, vedge; node=shield-a",
            b"vedge; node=\xff, vedge; node=shield-a",
        ] {
            assert!(looped(v), "{:?} is a loop", String::from_utf8_lossy(v));
        }
        for v in [
            &b"vedge; node=shield-b"[..],
            b"vedgex; node=shield-a",
            b"other; node=shield-a",
            b"vedge; node=shield-ab",
        ] {
            assert!(!looped(v), "{:?} is no loop", String::from_utf8_lossy(v));
        }
    }
}
