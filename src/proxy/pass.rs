//! Pass-through: requests forwarded to the origin uncached (other methods, credentialed
//! requests, hit-for-pass, responses that may not be shared), streamed both ways.

use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::cache::object::strip_hop_by_hop;
use crate::cache::policy::content_length;
use crate::cache::status::CacheStatus;
use crate::http::body::{incoming_stream, Body};
use crate::http::response::{self, CacheInfo};
use crate::metrics::Metrics;
use crate::proxy::error::EdgeError;
use crate::proxy::request::Req;

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
                .fetch_for(
                    req.route,
                    &req.path_and_query,
                    req.parts.method.clone(),
                    &req.path_and_query,
                    headers,
                    None,
                )
                .await?
        }
        Some(body) => {
            let len = content_length(&req.parts.headers);
            let stream = incoming_stream(body, edge.origin.between_bytes_timeout());
            let mut out = Request::new(Body::stream(stream, len));
            *out.method_mut() = req.parts.method.clone();
            *out.headers_mut() = headers;
            edge.origin
                .send_for(req.route, &req.path_and_query, &req.path_and_query, out)
                .await?
        }
    };
    crate::proxy::invalidate::after_response(req, resp.status(), resp.headers());
    // RFC 9211 §2.2: a method the cache cannot answer says `method`; the rest were the
    // cache's (configured or learnt) choice not to handle the request, `bypass`.
    let fwd = if reason == "method" {
        "method"
    } else {
        "bypass"
    };
    let mut resp = relay(req, resp, status, &format!("fwd={fwd}; detail={reason}"));
    if let Some(log) = response::log_info(&mut resp) {
        log.origin_ms = Some(started.elapsed().as_millis() as u64);
    }
    Ok(resp)
}

/// Streams an origin response to the viewer as it comes, hop-by-hop headers removed.
pub fn relay(
    req: &Req<'_>,
    resp: Response<Incoming>,
    status: CacheStatus,
    cache_status: &str,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let len = content_length(&parts.headers);
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
