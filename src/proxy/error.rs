//! Request failures by whose fault they are, and the one mapping from a failure to the status,
//! body and cache headers the viewer gets.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::cache::fill::OriginFailure;
use crate::cache::status::CacheStatus;
use crate::http::body::Body;
use crate::http::response::{stamp, CacheInfo};
use crate::origin::OriginError;
use crate::proxy::target::TargetError;

/// A request failure, by whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("loop detected: this request already passed through this node (CDN-Loop)")]
    Loop,
    #[error("no origin route for this path")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    Origin(#[from] OriginError),
    /// A host or path refused before routing (`proxy::target`).
    #[error("{0}")]
    Target(#[from] TargetError),
    /// Every fill slot of the route stayed taken until the collapse deadline
    /// (`origin_client.max_fills`), or every connection to the origin until the first-byte
    /// timeout (`max_connections_per_origin`): 503 with `Retry-After`.
    #[error(
        "origin busy: this edge's fills or connections to the origin are all in use, retry shortly"
    )]
    OriginBusy,
    /// `Cache-Control: only-if-cached` and no stored response that may answer (RFC 9111
    /// §5.2.1.7): 504.
    #[error("not cached (only-if-cached)")]
    NotCached,
    /// `TRACE` or `CONNECT`: never forwarded (405). A `TRACE` would echo to the viewer what the
    /// edge adds toward the origin (internal host names, `Via`, `X-Forwarded-For`), and a
    /// reverse proxy opens no tunnels.
    #[error("method not allowed at this edge")]
    MethodNotAllowed,
    /// The viewer's `Via` / `CDN-Loop` entries are too long to carry upstream
    /// (`proxy::chain_limit`): 431.
    #[error("Via and CDN-Loop entries too long to forward")]
    ChainTooLong,
    /// A pass's request body was still arriving from the viewer when the origin's first-byte
    /// timeout ran out (`origin::upload`): 408, the viewer's fault, not the origin's.
    #[error("request body not received in time")]
    RequestTimeout,
    /// A manifest on a token route whose content coding cannot be undone to add the viewer's
    /// token (`proxy::coding`): 502, rather than a playlist whose every child is refused.
    #[error("the origin's manifest cannot carry the viewer's token: {0}")]
    Manifest(#[from] crate::proxy::coding::Undecodable),
    /// A request body in a transfer coding other than `chunked` (RFC 9112 §6.1: a server
    /// SHOULD answer 501): the HTTP layer undoes `chunked` only, and the rest would reach the
    /// origin still coded, relabelled as plain bytes.
    #[error("request body in a transfer coding other than chunked, which this edge refuses")]
    TransferCoding,
    /// A blocking playlist reload (`_HLS_msn`) the origin answered, asked until the hold's
    /// end, only with playlists that lack what it asks for (RFC 8216bis §6.2.5.2: 503).
    /// `proxy::llhls` answers it as any other hold that ran out, or holds on if its own time
    /// is not up.
    #[error("blocking playlist reload not satisfied within three target durations")]
    HoldUnsatisfied,
    /// `error`, failing the refetch of a stored response that could not stand in (expired
    /// past `stale-if-error`, or fresh and refused by the viewer's directives): the same
    /// status and detail, told as a request that had a stored response (RFC 9211 §2.2:
    /// `fwd=stale` or `fwd=request`, `X-Cache: EXPIRED`), as an origin's 5xx answer to it is.
    #[error("{error}")]
    Refetch {
        error: Box<EdgeError>,
        /// The `fwd` value: `stale` or `request` (`proxy::request::fwd_reason`).
        fwd: &'static str,
    },
}

/// A failed fill's origin failure, back in the origin client's terms: the same status and
/// `Cache-Status` detail as the error the fill driver mapped it from (`proxy::fill::failure`).
impl From<OriginFailure> for EdgeError {
    fn from(f: OriginFailure) -> EdgeError {
        EdgeError::Origin(match f {
            OriginFailure::Busy => return EdgeError::OriginBusy,
            OriginFailure::Unsatisfied => return EdgeError::HoldUnsatisfied,
            OriginFailure::TooFar => return EdgeError::BadRequest(crate::proxy::llhls::TOO_FAR),
            OriginFailure::Connect => OriginError::Connect,
            OriginFailure::Timeout => OriginError::Timeout,
            OriginFailure::Protocol => OriginError::Protocol,
            OriginFailure::Tls => OriginError::Tls,
            OriginFailure::Internal => OriginError::Internal,
        })
    }
}

impl EdgeError {
    /// `self` as the failure of a refetch of a stored response (`EdgeError::Refetch`), when the
    /// origin (or the way to it) failed; other errors stay as they are (an LL-HLS hold that ran
    /// out is `HoldUnsatisfied` to `proxy::llhls`, which asks again).
    pub fn refetching(self, fwd: &'static str) -> EdgeError {
        if let EdgeError::Origin(_) | EdgeError::OriginBusy = self {
            EdgeError::Refetch {
                error: Box::new(self),
                fwd,
            }
        } else {
            self
        }
    }

    /// Whether the origin failed the request (counted in `vedge_origin_errors_total`).
    pub fn is_origin(&self) -> bool {
        match self {
            EdgeError::Origin(_) => true,
            EdgeError::Refetch { error, .. } => error.is_origin(),
            _ => false,
        }
    }

    /// Whether the request went forward (or waited to) before it failed: its response says
    /// so in `Cache-Status`. RFC 9211 §2: a response the edge generates itself carries no
    /// member (its example: a proxy's 400 for a malformed request).
    fn forwarded(&self) -> bool {
        matches!(
            self,
            EdgeError::Origin(_)
                | EdgeError::OriginBusy
                | EdgeError::HoldUnsatisfied
                | EdgeError::Refetch { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::Refetch { error, .. } => error.status(),
            EdgeError::Loop => StatusCode::LOOP_DETECTED,
            EdgeError::NoRoute => StatusCode::BAD_GATEWAY,
            EdgeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EdgeError::Origin(OriginError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            EdgeError::Origin(OriginError::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
            EdgeError::Origin(OriginError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            EdgeError::Origin(_) => StatusCode::BAD_GATEWAY,
            EdgeError::Target(TargetError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            EdgeError::Target(TargetError::Misdirected(_)) => StatusCode::MISDIRECTED_REQUEST,
            EdgeError::Target(TargetError::NoRoute(_)) => StatusCode::BAD_GATEWAY,
            EdgeError::OriginBusy => StatusCode::SERVICE_UNAVAILABLE,
            EdgeError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            EdgeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            EdgeError::ChainTooLong => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            EdgeError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            EdgeError::Manifest(_) => StatusCode::BAD_GATEWAY,
            EdgeError::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            EdgeError::HoldUnsatisfied => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn detail(&self) -> &'static str {
        match self {
            EdgeError::Refetch { error, .. } => error.detail(),
            EdgeError::Loop => "loop",
            EdgeError::NoRoute => "no-route",
            EdgeError::BadRequest(_) => "bad-request",
            EdgeError::Origin(e) => e.as_str(),
            EdgeError::Target(TargetError::BadRequest(_)) => "bad-request",
            EdgeError::Target(TargetError::Misdirected(_)) => "misdirected",
            EdgeError::Target(TargetError::NoRoute(_)) => "no-route",
            EdgeError::OriginBusy => "origin-busy",
            EdgeError::NotCached => "only-if-cached",
            EdgeError::MethodNotAllowed => "method",
            EdgeError::ChainTooLong => "chain-too-long",
            EdgeError::RequestTimeout => "request-timeout",
            EdgeError::Manifest(why) => why.as_str(),
            EdgeError::TransferCoding => "transfer-coding",
            EdgeError::HoldUnsatisfied => "llhls-hold",
        }
    }

    /// A short plain-text response naming the problem.
    pub fn response(&self, cdn_id: &str) -> Response<Body> {
        let mut resp = crate::http::response::plain(self.status(), format!("vedge: {self}\n"));
        let h = resp.headers_mut();
        // What the failure was, and what the request had stored.
        let (error, fwd) = match self {
            EdgeError::Refetch { error, fwd } => (&**error, *fwd),
            e => (e, "miss"),
        };
        if let EdgeError::OriginBusy | EdgeError::Origin(OriginError::Busy) = error {
            // A slot frees as soon as one fill ends: retry soon.
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let EdgeError::MethodNotAllowed = error {
            // RFC 9110 §15.5.6: a 405 lists what the target does allow.
            h.insert(
                header::ALLOW,
                HeaderValue::from_static(crate::http::response::ALLOW),
            );
        }
        let status = match self {
            EdgeError::Refetch { .. } => CacheStatus::Expired,
            EdgeError::Origin(_)
            | EdgeError::OriginBusy
            | EdgeError::NotCached
            | EdgeError::HoldUnsatisfied => CacheStatus::Miss,
            _ => CacheStatus::Bypass,
        };
        // Only a request that went forward (or waited to) and failed says so in
        // `Cache-Status`, for whoever debugs the origin (`forwarded`).
        let cache_status = if self.forwarded() {
            format!(
                "{}; fwd={fwd}; detail={}",
                crate::http::cache_status::member_name(cdn_id),
                self.detail()
            )
        } else {
            String::new()
        };
        stamp(
            &mut resp,
            CacheInfo {
                status,
                cache_status,
                age: None,
            },
        );
        resp
    }
}
