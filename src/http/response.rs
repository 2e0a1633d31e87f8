//! Building viewer responses: from a cached object or a fill in progress (with conditionals and
//! ranges), the cache headers (`X-Cache`, `Age`, `Cache-Status`), and errors mapped to statuses.
//! Also the admin API's plain-text answers (`text`, `not_allowed`), shared by `crate::admin`
//! and the ingest routes it hands to `crate::ingest::admin`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::cache::fill::{Fill, FillReader};
use crate::cache::status::CacheStatus;
use crate::http::body::Body;
use crate::http::{conditional, range};

/// What the request asked for, as far as building the response goes.
pub struct Ask<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// Where the body comes from.
pub enum Source {
    Bytes(Bytes),
    /// A fill in progress, with the total length if the origin announced it.
    Fill(Arc<Fill>, Option<u64>),
    /// A fill in progress of a body of unknown length that already holds this many bytes (the
    /// caller waited for them): a range `a-b` within them is answered `206` with
    /// `Content-Range: bytes a-b/*` (RFC 9110 §14.4: the complete length is not known yet);
    /// any other request gets the whole body.
    Growing(Arc<Fill>, u64),
    /// A fill of unknown length read from its start by this reader, which the caller held
    /// while it waited: the whole body (the fill stopped keeping it, so a reader made now could
    /// find its start already dropped).
    Reading(FillReader),
    /// No body from here: the head for a representation of this many bytes, whose body the
    /// caller supplies (a sliced object, `proxy::slice`).
    Head(u64),
}

/// The cache part of the response headers.
pub struct CacheInfo {
    pub status: CacheStatus,
    /// The RFC 9211 `Cache-Status` member of this node; empty for none (a response the edge
    /// generated itself, RFC 9211 §2).
    pub cache_status: String,
    pub age: Option<u64>,
}

/// Log fields carried from the handler to the access log through response extensions.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogInfo {
    pub cache: Option<CacheStatus>,
    pub origin_ms: Option<u64>,
}

/// The stored `Content-Type` of a `304` answer, which drops the field (§15.4.5), as a response
/// extension: a caller that treats manifests apart (per-viewer token rewriting,
/// `proxy::signed`) still knows what the 304 was about.
#[derive(Clone, Debug)]
pub struct NotModifiedType(pub HeaderValue);

/// The length of the representation a `304` stands for (its 200's `Content-Length`, which the
/// 304 drops), as a response extension: edge-side gzip (`proxy::compress`) codes a manifest by
/// its length, and a 304 must carry the `ETag` its 200 would (§15.4.5), weak when coded.
#[derive(Clone, Copy, Debug)]
pub struct NotModifiedLength(pub u64);

/// `CDN-Loop` (RFC 8586), named once (the origin client stamps its own; `http` does not lean
/// on `origin`).
const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

/// A response for a cached object or a fill, honouring the viewer's preconditions (RFC 9110
/// §13.2.2, `http::conditional`) and Range (§14, GET only).
pub fn build(
    ask: &Ask<'_>,
    status: StatusCode,
    stored: &HeaderMap,
    src: Source,
    info: CacheInfo,
) -> Response<Body> {
    let mut headers = stored.clone();
    let len = match &src {
        Source::Bytes(b) => Some(b.len() as u64),
        Source::Fill(_, len) => *len,
        Source::Growing(..) | Source::Reading(_) => None,
        Source::Head(len) => Some(*len),
    };
    let mut out_status = status;
    let mut body_range = None;
    let mut not_modified_type = None;
    // §13.2.1: preconditions apply only where the answer without them would be a 2xx.
    if status.is_success() {
        match conditional::evaluate(ask.method, ask.headers, stored) {
            conditional::Outcome::NotModified => out_status = StatusCode::NOT_MODIFIED,
            conditional::Outcome::PreconditionFailed => {
                out_status = StatusCode::PRECONDITION_FAILED
            }
            conditional::Outcome::Proceed => {}
        }
    }
    // §14.2: Range is defined for GET only (a HEAD with Range gets the 200 head), and served
    // here from a whole 200 of known length.
    let ranged = out_status == StatusCode::OK && *ask.method == Method::GET;
    if let (true, Some(r), Some(total)) = (ranged, range::parse(ask.headers), len) {
        // §14.1.1: a suffix range is satisfiable on an empty representation too, and no 206
        // can describe it: the whole (empty) 200 answers it.
        let whole = total == 0 && matches!(r, range::ByteRange::Suffix(n) if n > 0);
        if !whole && conditional::range_applies(ask.headers, stored) {
            match r.resolve(total) {
                Some((start, end)) => {
                    out_status = StatusCode::PARTIAL_CONTENT;
                    body_range = Some((start, end));
                    headers.insert(
                        header::CONTENT_RANGE,
                        hv(&format!("bytes {}-{}/{total}", start, end - 1)),
                    );
                }
                None => {
                    out_status = StatusCode::RANGE_NOT_SATISFIABLE;
                    headers.insert(header::CONTENT_RANGE, hv(&format!("bytes */{total}")));
                }
            }
        }
    }
    if let (true, Some(range::ByteRange::FromTo(a, b)), Source::Growing(_, have)) =
        (ranged, range::parse(ask.headers), &src)
    {
        if a <= b && b < *have && conditional::range_applies(ask.headers, stored) {
            out_status = StatusCode::PARTIAL_CONTENT;
            body_range = Some((a, b + 1));
            headers.insert(header::CONTENT_RANGE, hv(&format!("bytes {a}-{b}/*")));
        }
    }
    if status == StatusCode::OK
        && len.is_some()
        && matches!(
            out_status,
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE
        )
    {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }

    let body = match out_status {
        StatusCode::NOT_MODIFIED => {
            // §15.4.5: the validators and caching fields of a 200 (ETag, Cache-Control,
            // Expires, Vary, Content-Location, Date all stay), no content; like nginx, not the
            // body's own metadata either (`Content-Length` would be the 200's, which §8.6
            // allows, but a client reading it as this message's framing would hang).
            not_modified_type = headers.get(header::CONTENT_TYPE).cloned();
            for h in [
                header::CONTENT_LENGTH,
                header::CONTENT_RANGE,
                header::ACCEPT_RANGES,
            ] {
                headers.remove(h);
            }
            // Kept for a cache downstream (a request that came through a CDN, `CDN-Loop`,
            // RFC 8586: another tier of vedge or a CDN in front): the 304 refreshes its stored
            // copy, which takes its fields from it (§15.4.5 allows metadata "for the purpose of
            // guiding cache updates"); without it an edge kept the old type for good after its
            // shield revalidated a changed one.
            if !ask.headers.contains_key(&CDN_LOOP) {
                headers.remove(header::CONTENT_TYPE);
            }
            Body::empty()
        }
        StatusCode::PRECONDITION_FAILED | StatusCode::RANGE_NOT_SATISFIABLE => {
            if out_status == StatusCode::PRECONDITION_FAILED {
                // An empty answer about the representation, not a piece of it.
                for h in [
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::CONTENT_RANGE,
                ] {
                    headers.remove(h);
                }
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            Body::empty()
        }
        _ => {
            let (start, end) = body_range.unwrap_or((0, len.unwrap_or(u64::MAX)));
            // `resolve` promises start < end <= len; saturating keeps a broken promise a short
            // body instead of an overflow. Unknown for a whole body of unknown length.
            let n = match body_range {
                Some(_) => Some(end.saturating_sub(start)),
                None => len,
            };
            match n {
                // RFC 9110 §8.6: never in a 204 (hyper drops it on h1, not on h2).
                _ if out_status == StatusCode::NO_CONTENT => {
                    headers.remove(header::CONTENT_LENGTH);
                }
                // The stored `Content-Length` already says it (a whole object): kept as is,
                // sparing the hit a formatted value.
                Some(n) if content_length(&headers) == Some(n) => {}
                Some(n) => {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                None => {
                    headers.remove(header::CONTENT_LENGTH);
                }
            }
            if ask.method == Method::HEAD {
                Body::empty()
            } else {
                match src {
                    Source::Bytes(b) => Body::full(slice(&b, start, end)),
                    Source::Fill(fill, _) | Source::Growing(fill, _) => {
                        Body::stream(fill.reader(start, n.map(|_| end)), n)
                    }
                    Source::Reading(reader) => Body::stream(reader, None),
                    Source::Head(_) => Body::empty(),
                }
            }
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = out_status;
    *resp.headers_mut() = headers;
    if let Some(t) = not_modified_type {
        resp.extensions_mut().insert(NotModifiedType(t));
        if let Some(n) = len {
            resp.extensions_mut().insert(NotModifiedLength(n));
        }
    }
    stamp(&mut resp, info);
    resp
}

/// `b[start..end]`, clamped to `b` (never a panic, whatever the range).
fn slice(b: &Bytes, start: u64, end: u64) -> Bytes {
    let end = usize::try_from(end).map_or(b.len(), |e| e.min(b.len()));
    let start = usize::try_from(start).map_or(end, |s| s.min(end));
    b.slice(start..end)
}

/// The methods the edge accepts (405's and `OPTIONS *`'s `Allow`): GET and HEAD through the
/// cache, the rest passed to the origin; TRACE and CONNECT are refused.
pub const ALLOW: &str = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE";

/// A short plain-text answer the edge makes itself (a refusal, an error): [`text`], never
/// stored by anyone (`no-store`).
pub fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = text(status, body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `body` as `text/plain`: the admin API's answers (`crate::admin`), and [`plain`]'s start.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// RFC 9110 §15.5.6: an admin endpoint asked with another method is a 405 naming the methods
/// it takes, not a 404. One answer for `crate::admin`'s endpoints and the ingest ones it hands
/// to `crate::ingest::admin`, which is why it lives here, below both.
pub fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The answer to `OPTIONS *` (RFC 9110 §9.3.7: a question about the server, not a resource):
/// answered here, as Apache does, rather than passed to an origin that would be asked about
/// the edge; a 200 with `Allow` and no content.
pub fn server_options() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Adds `X-Cache`, `Cache-Status` and `Age`, and the log fields.
pub fn stamp(resp: &mut Response<Body>, info: CacheInfo) {
    let h = resp.headers_mut();
    h.insert(X_CACHE, HeaderValue::from_static(info.status.as_str()));
    if !info.cache_status.is_empty() {
        h.insert(CACHE_STATUS, cache_status(h, info.cache_status));
    }
    if let Some(age) = info.age {
        h.insert(header::AGE, number(age));
    }
    if let Some(log) = log_info(resp) {
        log.cache = Some(info.status);
    }
}

/// The response's log fields, or `None` with the access log off: then nothing reads them, and
/// a hit spares the extensions map (two allocations and a hash per response).
pub fn log_info(resp: &mut Response<Body>) -> Option<&mut LogInfo> {
    crate::http::access::enabled().then(|| resp.extensions_mut().get_or_insert_default::<LogInfo>())
}

/// A header value for `n`; the small ones (a fresh object's `Age`) without an allocation.
fn number(n: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// The `Content-Length` of `h`, when it holds exactly one in canonical form (digits, no leading
/// zero), so keeping it sends the same bytes a formatted value would.
fn content_length(h: &HeaderMap) -> Option<u64> {
    let mut all = h.get_all(header::CONTENT_LENGTH).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    let v = v.as_bytes();
    let canonical = matches!(v, [b'0'] | [b'1'..=b'9', ..]);
    if !canonical || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// RFC 9211 §2: `Cache-Status` is a list, one entry per cache, the origin's nearest first; the
/// entries of upstream caches (a shield, another CDN) that came with the response (and were
/// stored with the object) are kept, within bounds (`cache_status::append`), and this node's
/// entry goes last. Several field lines become one.
fn cache_status(h: &HeaderMap, ours: String) -> HeaderValue {
    super::cache_status::append(h.get_all(CACHE_STATUS).iter(), ours)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn ranges_from_bytes() {
        let req = h(&[("range", "bytes=2-4")]);
        let ask = Ask {
            method: &Method::GET,
            headers: &req,
        };
        let info = || CacheInfo {
            status: CacheStatus::Hit,
            cache_status: "vedge; hit".into(),
            age: Some(0),
        };
        let resp = build(
            &ask,
            StatusCode::OK,
            &HeaderMap::new(),
            Source::Bytes(Bytes::from_static(b"0123456789")),
            info(),
        );
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()["content-range"], "bytes 2-4/10");
        assert_eq!(resp.headers()["content-length"], "3");
        let req = h(&[("range", "bytes=20-")]);
        let ask = Ask {
            method: &Method::GET,
            headers: &req,
        };
        let resp = build(
            &ask,
            StatusCode::OK,
            &HeaderMap::new(),
            Source::Bytes(Bytes::from_static(b"0123456789")),
            info(),
        );
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(resp.headers()["content-range"], "bytes */10");
    }

    /// A hit keeps the stored `Content-Length` only when it is the canonical form of the
    /// length it sends; anything else (leading zeros, a stale or doubled value, a range) is
    /// replaced, as it always was.
    #[test]
    fn content_length_is_always_the_canonical_length_sent() {
        let get = |stored: &[(&'static str, &'static str)], range: Option<&'static str>| {
            let req = h(&range.map(|r| vec![("range", r)]).unwrap_or_default());
            let mut stored_map = HeaderMap::new();
            for (k, v) in stored {
                stored_map.append(*k, HeaderValue::from_static(v));
            }
            let resp = build(
                &Ask {
                    method: &Method::GET,
                    headers: &req,
                },
                StatusCode::OK,
                &stored_map,
                Source::Bytes(Bytes::from_static(b"0123456789a")),
                CacheInfo {
                    status: CacheStatus::Hit,
                    cache_status: "vedge; hit".into(),
                    age: Some(0),
                },
            );
            let all: Vec<String> = resp
                .headers()
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .collect();
            all
        };
        assert_eq!(get(&[("content-length", "11")], None), ["11"]);
        assert_eq!(get(&[], None), ["11"]);
        assert_eq!(get(&[("content-length", "011")], None), ["11"]);
        assert_eq!(get(&[("content-length", "99")], None), ["11"]);
        assert_eq!(get(&[("content-length", "+11")], None), ["11"]);
        assert_eq!(
            get(&[("content-length", "11"), ("content-length", "11")], None),
            ["11"]
        );
        assert_eq!(get(&[("content-length", "11")], Some("bytes=0-1")), ["2"]);
        assert_eq!(content_length(&h(&[("content-length", "0")])), Some(0));
        assert_eq!(
            content_length(&h(&[("content-length", "99999999999999999999")])),
            None
        );
    }

    #[test]
    fn age_values_small_and_large() {
        for n in [0u64, 1, 9, 10, 59, 86_400, u64::MAX] {
            assert_eq!(number(n).to_str().ok(), Some(n.to_string().as_str()));
        }
    }

    /// Issue: `bytes=1-18446744073709551615` on a cached object panicked in `Bytes::slice`.
    #[test]
    fn huge_ranges_on_cached_bytes() {
        let cases: [(&'static str, StatusCode, Option<&str>, &[u8]); 4] = [
            (
                "bytes=1-18446744073709551615",
                StatusCode::PARTIAL_CONTENT,
                Some("bytes 1-9/10"),
                b"123456789",
            ),
            (
                "bytes=18446744073709551615-",
                StatusCode::RANGE_NOT_SATISFIABLE,
                Some("bytes */10"),
                b"",
            ),
            (
                "bytes=-18446744073709551615",
                StatusCode::PARTIAL_CONTENT,
                Some("bytes 0-9/10"),
                b"0123456789",
            ),
            (
                "bytes=1-99999999999999999999999",
                StatusCode::PARTIAL_CONTENT,
                Some("bytes 1-9/10"),
                b"123456789",
            ),
        ];
        for (range, status, content_range, body) in cases {
            let req = h(&[("range", range)]);
            let ask = Ask {
                method: &Method::GET,
                headers: &req,
            };
            let resp = build(
                &ask,
                StatusCode::OK,
                &HeaderMap::new(),
                Source::Bytes(Bytes::from_static(b"0123456789")),
                CacheInfo {
                    status: CacheStatus::Hit,
                    cache_status: "vedge; hit".into(),
                    age: Some(0),
                },
            );
            assert_eq!(resp.status(), status, "{range}");
            assert_eq!(
                resp.headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok()),
                content_range,
                "{range}"
            );
            assert_eq!(
                resp.headers()["content-length"],
                body.len().to_string().as_str()
            );
            match resp.into_body() {
                Body::Full(b) => assert_eq!(b.unwrap_or_default(), body, "{range}"),
                Body::Stream { .. } => panic!("{range}: a cached object streams"),
            }
        }
        assert_eq!(
            slice(&Bytes::from_static(b"abc"), 5, u64::MAX),
            Bytes::new()
        );
        assert_eq!(slice(&Bytes::from_static(b"abc"), 1, u64::MAX), "bc");
    }
}
