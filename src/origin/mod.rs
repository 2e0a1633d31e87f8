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

/// What `fetch_plan` does after one attempt.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Answer with this attempt's outcome.
    Stop,
    /// Send the request to the same candidate once more (on a new connection).
    Again,
    /// Nothing reached an origin: the next candidate, as long as the plan has one;
    /// `alone_again`: the same one, once, when it is the plan's only candidate.
    Onward { alone_again: bool },
    /// The one retry, on the next candidate; `alone_again`: on the same one when it is the
    /// plan's only candidate.
    Retry { alone_again: bool },
}

/// How one attempt (`OriginClient::attempt`) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failed {
    error: OriginError,
    /// The upstream provably never processed the request (`not_processed`): it may be sent
    /// again, to the same upstream, on a new connection.
    unprocessed: bool,
}

impl From<OriginError> for Failed {
    fn from(error: OriginError) -> Failed {
        Failed {
            error,
            unprocessed: false,
        }
    }
}

impl From<Failed> for OriginError {
    fn from(f: Failed) -> OriginError {
        f.error
    }
}

type Attempted = Result<(Response<Incoming>, Option<PassSlot>), Failed>;

/// A walk's outcome (`fetch_plan`): its last attempt's, unless that failed and an earlier
/// candidate answered with a status that was retried: that status says more.
fn settle(
    last: Attempted,
    answered: Option<(Response<Incoming>, Option<PassSlot>)>,
) -> Result<(Response<Incoming>, Option<PassSlot>), OriginError> {
    match (last, answered) {
        (Ok(answer), _) | (Err(_), Some(answer)) => Ok(answer),
        (Err(f), None) => Err(f.error),
    }
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
    /// `forward_headers` lists one), its `Cookie` fields joined into one (`join_cookies`);
    /// then `Host` per route (or the validated viewer host), `Via`, `CDN-Loop`,
    /// `X-Forwarded-For` (the viewer's chain plus its address) and `X-Forwarded-Proto`.
    pub fn origin_headers(
        &self,
        route: &Route,
        viewer: &HeaderMap,
        viewer_host: &str,
        peer: Option<std::net::IpAddr>,
    ) -> HeaderMap {
        let mut h = viewer.clone();
        strip_hop_by_hop(&mut h);
        join_cookies(&mut h);
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
    /// `forward_headers` (several `Cookie` fields joined into one), each unless
    /// `config::never_forwarded`; then `Via`, `CDN-Loop`
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
        join_cookies(&mut h);
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

    /// Fetches from the upstream's first candidate for `key`. A request that reached no origin
    /// (refused connection; a shield's own `502 origin-unreachable` to a GET or HEAD) goes on
    /// to the next candidate, each at most once; a GET or HEAD the candidate never processed
    /// (a pooled connection closed under it, HTTP/2 GOAWAY or REFUSED_STREAM) is sent to it
    /// again on a new connection, once; one that fails otherwise before its response head
    /// (reset, timed out, TLS; or a status the upstream retries) is tried once more, on the
    /// next candidate: after a timeout with a whole first-byte timeout of its own, otherwise
    /// if time is left before `deadline` (the collapse deadline). See `fetch_plan`. Body bytes
    /// never flowed by then, so no viewer can notice.
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
    ///
    /// One loop walks the plan under one rule: a request that reached no origin goes on down
    /// the plan, one attempt per candidate, whatever else happened before; one that may have
    /// cost a candidate something is retried once. Reached no origin: the candidate could not
    /// be connected to (nothing was sent, any method), or it is a shield that answered its own
    /// `502 origin-unreachable` (a GET or HEAD; `shield::reached_no_origin`). A GET or HEAD the
    /// candidate provably never processed (`not_processed`: a pooled connection closed under
    /// it, HTTP/2 GOAWAY or REFUSED_STREAM) is sent once more to the same candidate on a new
    /// connection first. The one retry (GET or HEAD: a timeout, a broken answer, a TLS failure,
    /// a `retry_on` status) goes to the next candidate; with a single one only a status is
    /// asked again there (and a failed connection, as a stale pooled one is the likely cause).
    /// After a timeout the retry gets a whole first-byte timeout and the walk ends with it;
    /// otherwise each later attempt must start before `deadline` (the collapse deadline).
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
        let content = pass.map(|p| p.content.clone()).unwrap_or_default();
        let build = || {
            let mut req = if content.is_empty() {
                Request::new(Body::empty())
            } else {
                Request::new(Body::full(content.clone()))
            };
            *req.method_mut() = method.clone();
            *req.headers_mut() = headers.clone();
            req
        };
        // Only a GET or HEAD is asked twice once something of it was sent (a DELETE that timed
        // out may have been done).
        let idempotent = method == Method::GET || method == Method::HEAD;
        let mut at = 0;
        let mut timeout = self.first_byte_timeout(first);
        let mut until = deadline;
        let mut retried = false;
        let mut asked_again = false;
        // The latest answer that was retried: should every later attempt fail without one, its
        // status says more than their errors.
        let mut answered = None;
        // Bounded: every step moves down the plan or spends `asked_again` or `retried`.
        loop {
            let target = &plan[at];
            let result = self
                .attempt(upstream, target, path_and_query, build(), timeout, pass)
                .await;
            let step = match &result {
                Ok((resp, _))
                    if target.tier
                        && idempotent
                        && shield::reached_no_origin(resp.status(), resp.headers()) =>
                {
                    Step::Onward { alone_again: false }
                }
                Ok((resp, _)) if idempotent && upstream.retries_status(resp.status().as_u16()) => {
                    Step::Retry { alone_again: true }
                }
                Ok(_) => Step::Stop,
                Err(f) if f.unprocessed && idempotent && !asked_again => Step::Again,
                Err(f) if f.error == OriginError::Connect => Step::Onward { alone_again: true },
                // A stale copy answers now: a second whole timeout would only delay it.
                Err(f) if f.error == OriginError::Timeout && stale_stands_by => Step::Stop,
                Err(f)
                    if idempotent
                        && matches!(
                            f.error,
                            OriginError::Timeout | OriginError::Protocol | OriginError::Tls
                        ) =>
                {
                    Step::Retry { alone_again: false }
                }
                // Waited for this edge's own connection slot for the whole first-byte timeout:
                // the origin is busy, not failing, and a local limit is no reason to fail over.
                Err(_) => Step::Stop,
            };
            let next = match step {
                Step::Stop => None,
                Step::Again => {
                    asked_again = true;
                    Some(at)
                }
                Step::Onward { .. } if at + 1 < plan.len() => Some(at + 1),
                Step::Onward { alone_again } if alone_again && plan.len() == 1 && !asked_again => {
                    asked_again = true;
                    Some(at)
                }
                Step::Onward { .. } => None,
                Step::Retry { .. } if retried => None,
                Step::Retry { alone_again } => {
                    retried = true;
                    if at + 1 < plan.len() {
                        Some(at + 1)
                    } else {
                        (alone_again && plan.len() == 1).then_some(at)
                    }
                }
            };
            let Some(next) = next else {
                return settle(result, answered);
            };
            let next_timeout = self.first_byte_timeout(&plan[next]);
            let left = match &result {
                // A candidate that let the whole first-byte timeout pass (hung, or cut off) is
                // what failover is for: the next gets a whole timeout too, past the collapse
                // deadline (collapsed viewers wait for an attempt and its retry,
                // `request::collapsed_head`), and any later attempt must start within it.
                // Bounded by the deadline, the retry never happened with the default timeouts
                // (collapse 10 s, first byte 15 s): every key the hung node owns was a 504.
                Err(f) if f.error == OriginError::Timeout => {
                    until = Some(Instant::now() + next_timeout);
                    next_timeout
                }
                _ => until.map_or(next_timeout, |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(next_timeout)
                }),
            };
            if left.is_zero() {
                return settle(result, answered);
            }
            tracing::debug!(
                key,
                from = target.name(),
                to = plan[next].name(),
                outcome = ?result.as_ref().map(|(r, _)| r.status()).map_err(|f| f.error),
                "retrying the fetch before its response head"
            );
            if let Ok(answer) = result {
                answered = Some(answer);
            }
            at = next;
            timeout = left;
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
    ) -> Attempted {
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
        let mut unprocessed = false;
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
            Ok(Err(e)) => {
                let error = classify(&e, target);
                unprocessed = error == OriginError::Protocol && not_processed(&e, &dial);
                if unprocessed {
                    tracing::debug!(origin = target.name(), error = ?e, "origin did not process the request");
                }
                Err(error)
            }
        };
        let upload = pass.and_then(|p| p.upload.as_ref());
        let outcome = match &result {
            // The viewer's own body failed, or was still arriving when the time ran out: about
            // the request, not the origin (the viewer could otherwise eject it at will).
            Err(e) if *e != OriginError::Busy && upload.and_then(|u| u.fault(*e)).is_some() => {
                Outcome::ViewerFault
            }
            Err(_) if unprocessed => Outcome::Unprocessed,
            Ok(r) if r.status() == http::StatusCode::LOOP_DETECTED => Outcome::Loop,
            Ok(r) if r.status().is_server_error() => Outcome::ServerError(
                matches!(r.status().as_u16(), 502..=504)
                    && !(target.tier && shield::relays_upstream_status(r.headers())),
            ),
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(*e),
        };
        target.record(outcome, started.elapsed(), upstream.eject());
        result
            .map(|response| (response, slot))
            .map_err(|error| Failed { error, unprocessed })
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

/// Joins a request's `Cookie` field lines into one, separated by `; `. An HTTP/2 viewer may
/// send each cookie-pair as a field of its own, and RFC 9113 §8.2.3 requires them joined that
/// way before the request goes to an HTTP/1.1 hop (where RFC 6265 §5.4 allows one `Cookie`
/// line: origins read only the first, or reject the request). Joined for HTTP/2 origins too:
/// one field is as valid there.
fn join_cookies(h: &mut HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid field values joined by `; ` are a valid field value.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

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

/// Whether a request that failed before its response head provably never reached the
/// upstream's processing, so that sending it again cannot do anything twice:
///
/// - HTTP/2: its stream was refused, by a GOAWAY whose last stream id is below it (or one that
///   came before it was opened) or by `RST_STREAM(REFUSED_STREAM)` (RFC 9113 §6.8, §8.7: such
///   a request "can be safely retried"). h2 reports those as the peer's GOAWAY or reset on the
///   stream itself; a stream the peer had taken and then lost with the connection gets an I/O
///   error instead (a broken pipe), and is not retried.
/// - HTTP/1.1: the connection closed or was reset before any byte of the answer, and it had
///   carried an earlier exchange (`DialWatch::reused_unanswered`): the keep-alive race, an
///   origin closing an idle connection as the request arrives (RFC 9112 §9.3.1). hyper-util
///   re-sends such a request itself only when hyper had not begun writing it (its
///   `retry_canceled_requests`); once written, hyper reports an incomplete message. On a new
///   connection the same failure is the origin's own, and counts against it.
fn not_processed(e: &hyper_util::client::legacy::Error, dial: &tls::DialWatch) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut closed = false;
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            closed |= h.is_incomplete_message();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            closed |= matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = s.source();
    }
    closed && dial.reused_unanswered()
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
