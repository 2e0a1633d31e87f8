//! Pass-through: requests forwarded to the origin uncached (other methods, credentialed
//! requests, hit-for-pass, responses that may not be shared), streamed both ways.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::{Stream, TryStreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::cache::object::strip_hop_by_hop;
use crate::cache::policy::content_length;
use crate::cache::status::CacheStatus;
use crate::http::body::{incoming_stream, Body, BodyTimeouts, BoxError, Slow};
use crate::http::response::{self, CacheInfo};
use crate::metrics::Metrics;
use crate::origin::{PassFor, Passed, RelaySlot, Upload, ViewerFault};
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
    pass_as(req, body, reason, fwd(reason), status).await
}

/// `pass`, with the RFC 9211 `fwd` parameter (`fwd=...`) of its `Cache-Status` member given
/// rather than read from `reason`: for a pass whose reason says nothing of what was stored
/// (a viewer's `no-store` over an expired copy is `fwd=stale`, over nothing `fwd=miss`).
pub async fn pass_as(
    req: &Req<'_>,
    body: Option<Incoming>,
    reason: &str,
    fwd: &str,
    status: CacheStatus,
) -> Result<Response<Body>, EdgeError> {
    let edge = req.edge;
    Metrics::inc(&edge.metrics.passes);
    edge.metrics.request(status);
    let mut headers = edge.origin.origin_headers(
        req.route(),
        &req.parts.headers,
        req.host(),
        req.peer.map(|p| p.ip()),
    );
    let target = req.path_and_query();
    let mut who = PassFor {
        client: client_of(req),
        upload: None,
        content: bytes::Bytes::new(),
    };
    let started = Instant::now();
    // What of the viewer's body is still to stream: none when the request can be rebuilt
    // (sent again to the next candidate when the first cannot be connected to,
    // `OriginClient::fetch_plan`, through the key's shield either way).
    let streamed = match body {
        None => None,
        // The viewer sent no content (`Content-Length: 0`, or neither it nor
        // `Transfer-Encoding`, or an h2 HEADERS frame that ended the stream): neither does the
        // edge. A body of unknown length would go out chunked, and an origin that reads no body
        // on a DELETE or OPTIONS (Python's http.server) took its `0` for the next request on the
        // pooled connection (RFC 9112 §6.3: such a request has no content).
        Some(body)
            if body.is_end_stream()
                && content_length(&req.parts.headers).is_none_or(|n| n == 0) =>
        {
            let framed = content_length(&req.parts.headers) == Some(0);
            if framed || anticipates_content(&req.parts.method) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            None
        }
        // Small content of a known length (a DRM licence request, a beacon) is read whole
        // first, so the request is rebuildable too: a streamed body, handed to the first
        // connection attempt, is lost with it (502 until the node was ejected).
        Some(body) if content_length(&req.parts.headers).is_some_and(|n| n <= RESEND_MAX) => {
            who.content = read_content(req, body).await?;
            None
        }
        Some(body) => Some(body),
    };
    let Passed {
        response: resp,
        slot,
    } = match streamed {
        None => {
            edge.origin
                .pass_fetch_for(
                    req.route(),
                    req.key(),
                    req.parts.method.clone(),
                    &target,
                    headers,
                    &who,
                )
                .await?
        }
        Some(body) => {
            let len = content_length(&req.parts.headers);
            let upload = Upload::default();
            // The viewer's body: how fast it uploads is its own business (bounded by the
            // first-byte timeout), so no minimum rate.
            let stream = incoming_stream(
                body,
                BodyTimeouts::idle_only(edge.origin.between_bytes_timeout()),
            );
            let stream = upload.watch(stream, len);
            let mut out = Request::new(Body::stream(stream, len));
            *out.method_mut() = req.parts.method.clone();
            *out.headers_mut() = headers;
            who.upload = Some(upload.clone());
            match edge
                .origin
                .pass_send_for(req.route(), req.key(), &target, out, &who)
                .await
            {
                Ok(passed) => passed,
                // The viewer's own body failed (the origin's health did not count it): whose
                // fault it is decides the answer, not the error the origin client saw.
                Err(e) => {
                    return Err(match upload.fault(e) {
                        Some(ViewerFault::Broken) => {
                            EdgeError::BadRequest("request body incomplete or malformed")
                        }
                        Some(ViewerFault::Slow) => EdgeError::RequestTimeout,
                        None => e.into(),
                    })
                }
            }
        }
    };
    crate::proxy::invalidate::after_response(req, resp.status(), resp.headers());
    crate::proxy::invalidate::after_head(req, resp.status(), resp.headers()).await;
    let mut resp = relay_holding(
        req,
        resp,
        status,
        &format!("{fwd}; detail={reason}"),
        slot.map(RelaySlot::new),
    );
    if let Some(log) = response::log_info(&mut resp) {
        log.origin_ms = Some(started.elapsed().as_millis() as u64);
    }
    Ok(resp)
}

/// Request content up to this size, with a `Content-Length`, is read whole before the request
/// is sent (`pass`), so it can be sent again; larger content streams through (an upload).
const RESEND_MAX: u64 = 64 << 10;

/// The whole content of a viewer's request `body`, within the first-byte timeout (the time a
/// request streaming its content to the origin has to be answered) and the between-bytes
/// timeout: a viewer that stops sending or sends too slowly gets 408, one whose body breaks
/// (cut short, bad framing) 400, as when its content streams to the origin.
async fn read_content(req: &Req<'_>, body: Incoming) -> Result<bytes::Bytes, EdgeError> {
    let idle = BodyTimeouts::idle_only(req.edge.origin.between_bytes_timeout());
    let read = async {
        let mut stream = std::pin::pin!(incoming_stream(body, idle));
        let mut content = bytes::BytesMut::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            match chunk {
                Ok(c) => content.extend_from_slice(&c),
                Err(e) if e.is::<Slow>() => return Err(EdgeError::RequestTimeout),
                Err(_) => {
                    return Err(EdgeError::BadRequest(
                        "request body incomplete or malformed",
                    ))
                }
            }
        }
        Ok(content.freeze())
    };
    let within = req.edge.config.origin_client.first_byte_timeout;
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(EdgeError::RequestTimeout))
}

/// Whether `method` defines a meaning for enclosed content, so a request of it without any is
/// sent `Content-Length: 0` (RFC 9110 §8.6: a user agent "SHOULD send Content-Length" then; some
/// origins answer such a POST without it 411 Length Required). Other methods go with no framing.
fn anticipates_content(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The client a pass counts against (`origin::pass_limit`): its address as the limits count it
/// (IPv6 per /64), unless it is on `limits.allow`, as for fills (`proxy::fill_limit`).
fn client_of(req: &Req<'_>) -> Option<IpAddr> {
    req.peer
        .map(|p| p.ip())
        .filter(|ip| !req.edge.limits.bypasses(*ip))
        .map(crate::http::limits::client_of)
}

/// RFC 9211 §2.2 / §2.6: why a passed request went forward, for its `Cache-Status` member.
fn fwd(reason: &str) -> &'static str {
    match reason {
        // The method's semantics need the origin.
        "method" => "fwd=method",
        // It tried to collapse onto a fill in flight and gave up waiting.
        "collapse-timeout" => "fwd=miss; collapsed=?0",
        // The URI's stored responses vary, and none was this request's variant.
        "vary-mismatch" => "fwd=vary-miss",
        // The cache's own choice (configured, or learnt: hit-for-pass, credentials).
        _ => "fwd=bypass",
    }
}

/// Streams an origin response to the viewer as it comes, hop-by-hop headers removed: a fill's
/// answer only its leader may have, holding the pass slot the fill took for it
/// (`OriginClient::relay_slot`), if any.
pub fn relay(
    req: &Req<'_>,
    mut resp: Response<Incoming>,
    status: CacheStatus,
    cache_status: &str,
) -> Response<Body> {
    let slot = resp.extensions_mut().remove::<RelaySlot>();
    relay_holding(req, resp, status, cache_status, slot)
}

/// `relay`, holding the pass's origin slot (`origin::pass_limit`) until the body ends, fails
/// or is dropped (the viewer left); a HEAD's body is dropped at once.
fn relay_holding(
    req: &Req<'_>,
    resp: Response<Incoming>,
    status: CacheStatus,
    cache_status: &str,
    slot: Option<RelaySlot>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // RFC 9211 §2.3: what the next hop answered, said outright (a tier in front of this edge
    // reads it to tell an upstream's failure, relayed, from this node's own).
    let fwd_status = format!("fwd-status={}", parts.status.as_u16());
    let cache_status = match cache_status.split_once("; ") {
        Some((fwd, rest)) => format!("{}; {fwd}; {fwd_status}; {rest}", req.cdn()),
        None => format!("{}; {cache_status}; {fwd_status}", req.cdn()),
    };
    let len = content_length(&parts.headers);
    let stream = too_slow_counted(
        req,
        incoming_stream(body, req.edge.origin.body_timeouts(req.route())),
    );
    let body = if req.parts.method == Method::HEAD {
        Body::empty()
    } else {
        Body::stream(
            Holding {
                inner: Box::pin(stream),
                slot,
            },
            len,
        )
    };
    let mut out = Response::from_parts(parts, body);
    response::stamp(
        &mut out,
        CacheInfo {
            status,
            cache_status,
            age: None,
        },
    );
    out
}

/// `stream` (an origin body), counting and logging a cut for `origin_client.min_body_rate`
/// (`vedge_origin_body_too_slow_total{path="pass"}`): the pass's viewer sees its response end
/// short, as for any failed origin body.
fn too_slow_counted<S>(
    req: &Req<'_>,
    stream: S,
) -> impl Stream<Item = Result<bytes::Bytes, BoxError>> + Send + 'static
where
    S: Stream<Item = Result<bytes::Bytes, BoxError>> + Send + 'static,
{
    let edge = req.edge.clone();
    let key = req.key().to_string();
    stream.inspect_err(move |e| {
        if e.downcast_ref::<Slow>() == Some(&Slow::BelowRate) {
            Metrics::inc(&edge.metrics.slow_bodies[crate::metrics::SLOW_BODY_PASS]);
            tracing::warn!(key = ?key, error = %e, "pass body cut");
        }
    })
}

/// A relayed body and the pass slot it holds, given back as soon as the body ends or fails
/// (hyper may keep a finished body a while before dropping it).
struct Holding<S> {
    inner: Pin<Box<S>>,
    slot: Option<RelaySlot>,
}

impl<S: Stream> Stream for Holding<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if matches!(item, Poll::Ready(None)) {
            self.slot = None;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::fwd;

    #[test]
    fn pass_reasons_map_to_rfc_9211_fwd_values() {
        assert_eq!(fwd("method"), "fwd=method");
        assert_eq!(fwd("collapse-timeout"), "fwd=miss; collapsed=?0");
        assert_eq!(fwd("vary-mismatch"), "fwd=vary-miss");
        for other in ["credentials", "hit-for-pass", "authorization"] {
            assert_eq!(fwd(other), "fwd=bypass", "{other}");
        }
        for reason in [
            "method",
            "collapse-timeout",
            "vary-mismatch",
            "hit-for-pass",
        ] {
            let member = format!("vedge; {}; detail={reason}", fwd(reason));
            assert!(
                crate::cache::sfv::list_member_spans(&member).is_ok(),
                "{member}"
            );
        }
    }
}
