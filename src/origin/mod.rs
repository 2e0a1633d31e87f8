//! The origin side: one pooled hyper-util client (keep-alive, HTTP/1.1 or h2c) with connect,
//! first-byte and between-bytes timeouts, one retry on connect failure for idempotent requests,
//! `Host` per route, and `Via` / `CDN-Loop` (RFC 8586) so loops through shields are refused.

pub mod fetch;

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::cache::object::strip_hop_by_hop;
use crate::cache::vary::normalise_accept_encoding;
use crate::config::{never_forwarded, OriginClientConfig, Route};
use crate::http::body::Body;

/// Why an origin request failed; maps to 502 or 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("origin refused or unreachable")]
    Connect,
    #[error("origin did not answer in time")]
    Timeout,
    #[error("origin sent an invalid response")]
    Protocol,
    #[error("internal error while fetching")]
    Internal,
}

impl OriginError {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginError::Connect => "origin-unreachable",
            OriginError::Timeout => "origin-timeout",
            OriginError::Protocol => "origin-protocol",
            OriginError::Internal => "internal",
        }
    }
}

/// The pooled client shared by every request.
pub struct OriginClient {
    client: Client<HttpConnector, Body>,
    cfg: OriginClientConfig,
    via: HeaderValue,
    cdn_loop: HeaderValue,
    /// `X-Forwarded-Proto`: the scheme viewers reach this edge with.
    proto: &'static str,
}

impl OriginClient {
    pub fn new(cfg: &OriginClientConfig, cdn_id: &str, node: &str) -> OriginClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .http2_only(cfg.http2)
            .build(connector);
        OriginClient {
            client,
            cfg: cfg.clone(),
            via: HeaderValue::from_str(&format!("1.1 {cdn_id}"))
                .expect("cdn_id is a validated token"),
            cdn_loop: HeaderValue::from_str(&format!("{cdn_id}; node={node}"))
                .expect("cdn_id and node are validated tokens"),
            proto: "http",
        }
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

    /// The origin URI for a request target on `route`.
    pub fn uri_for(route: &Route, path_and_query: &str) -> Result<Uri, OriginError> {
        let base = route.origin.path().trim_end_matches('/');
        let authority = match (route.origin.host_str(), route.origin.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return Err(OriginError::Internal),
        };
        format!("http://{authority}{base}{path_and_query}")
            .parse()
            .map_err(|_| OriginError::Internal)
    }

    /// Headers for a pass-through (one viewer's own request, nothing shared): the viewer's
    /// headers without the hop-by-hop ones (RFC 9110 §7.6.1), without framing (the edge frames
    /// the body it streams) and without anything `config::never_forwarded` names; then `Host`
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
            .filter(|n| never_forwarded(n.as_str()))
            .cloned()
            .collect();
        for n in never {
            h.remove(n);
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
        let stamped = ["via", "cdn-loop", "x-forwarded-for", "x-forwarded-proto"];
        for name in varied.iter().chain(&route.integrity.forward_headers) {
            if *name == header::ACCEPT_ENCODING
                || h.contains_key(name)
                || never_forwarded(name.as_str())
                || stamped.contains(&name.as_str())
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
        for v in viewer.get_all("cdn-loop") {
            h.append("cdn-loop", v.clone());
        }
        self.stamp(&mut h, host, peer, None);
        h
    }

    /// `Host`, our `Via` and `CDN-Loop` entries, `X-Forwarded-For` (`prev` then the peer) and
    /// `X-Forwarded-Proto` (the viewer listener's scheme).
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

    /// Sends a request whose body can be rebuilt (GET/HEAD: empty), retrying once if the
    /// connection could not be established. Returns once the response head arrived.
    pub async fn fetch(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, OriginError> {
        let build = || {
            let mut req = Request::new(Body::empty());
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            *req.headers_mut() = headers.clone();
            req
        };
        match self.send(build()).await {
            Err(OriginError::Connect) if method == Method::GET || method == Method::HEAD => {
                self.send(build()).await
            }
            other => other,
        }
    }

    /// Sends one request (any method, streamed body), bounded by the first-byte timeout.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, OriginError> {
        match tokio::time::timeout(self.cfg.first_byte_timeout, self.client.request(req)).await {
            Err(_) => Err(OriginError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(error = %e, "origin connect failed");
                Err(OriginError::Connect)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = ?e, "origin request failed");
                Err(OriginError::Protocol)
            }
        }
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

/// Whether a viewer request already passed through this node (or an unnamed vedge): RFC 8586.
/// Entries with our id and another node's name are other tiers of the same CDN, and pass.
pub fn is_loop(headers: &HeaderMap, cdn_id: &str, node: &str) -> bool {
    headers
        .get_all("cdn-loop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            let mut parts = entry.split(';').map(str::trim);
            let id = parts.next().unwrap_or("");
            if !id.eq_ignore_ascii_case(cdn_id) {
                return false;
            }
            let other_node = parts
                .filter_map(|p| p.strip_prefix("node="))
                .any(|n| n.trim_matches('"') != node);
            !other_node
        })
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
}
