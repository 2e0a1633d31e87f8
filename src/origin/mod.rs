//! The origin side: one pooled hyper-util client (keep-alive, HTTP/1.1 or h2c) with connect,
//! first-byte and between-bytes timeouts, one retry on connect failure for idempotent requests,
//! `Host` per route, and `Via` / `CDN-Loop` (RFC 8586) so loops through shields are refused.

pub mod fetch;

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::cache::object::strip_hop_by_hop;
use crate::config::{OriginClientConfig, Route};
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
        }
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

    /// Prepares viewer headers for the origin: hop-by-hop removed, `Host` per route, `Via`,
    /// `CDN-Loop` and `X-Forwarded-For` added.
    pub fn origin_headers(
        &self,
        route: &Route,
        viewer: &HeaderMap,
        viewer_host: &str,
        peer: Option<std::net::IpAddr>,
    ) -> HeaderMap {
        let mut h = viewer.clone();
        strip_hop_by_hop(&mut h);
        let host = route.host.as_deref().unwrap_or(viewer_host);
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v);
        }
        h.append(header::VIA, self.via.clone());
        h.append("cdn-loop", self.cdn_loop.clone());
        if let Some(ip) = peer {
            let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert("x-forwarded-for", v);
            }
        }
        h
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
