//! Manifests gzip-compressed at the edge (`cache.compress_manifests`, off by default). A live
//! playlist is fetched by every player once per segment or part, and a long DVR playlist or a
//! `SegmentTimeline` MPD is tens of kilobytes of text that gzip shrinks five to ten times; an
//! origin that does not code them itself leaves that to the edge, as nginx's `gzip` does.
//!
//! What is compressed: a `200` to a GET or HEAD of a manifest (by path or content type, as the
//! token rewrite reads them), sent without a content coding and without `no-transform` (RFC
//! 9110 §7.7), to a viewer whose `Accept-Encoding` takes gzip, of `MIN_LEN` to
//! `signed::MAX_REWRITE` bytes. Such a response names `Accept-Encoding` in `Vary` whether it is
//! coded or not, as does a `206` cut from it (a cache downstream must not give one viewer's
//! coding to another), its strong `ETag` becomes weak (the coded bytes are not the stored
//! ones; `If-None-Match` compares weakly, so the viewer's revalidation still matches) and it
//! stops offering byte ranges.
//! Stored objects stay as the origin sent them: ranges, conditionals and every other viewer
//! work on those bytes.
//!
//! Whether a 200 is coded is decided by its head alone (`codes`: the length, or a length not
//! known yet), never by what gzip made of the body, so the answers that have no body agree
//! with it (RFC 9110 §9.3.2, §15.4.5): a HEAD carries the fields the GET would (coded: no
//! `Content-Length`, the coded one is not known without the body), and a `304` to a request
//! whose 200 this module would answer carries that 200's `Vary` and `ETag` (weak when coded;
//! `http::response::NotModifiedLength` tells it the stored length).
//!
//! The coded form of a shared body is kept by its bytes (`Compressed`): a playlist hit by ten
//! thousand players is compressed once per version, not once per request. A per-viewer body
//! (a manifest carrying that viewer's token) is compressed for its viewer alone, at a lower
//! level.

use std::hash::BuildHasher;
use std::io::Write;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::cache::policy::ManifestFormat;
use crate::cache::vary::accept_encoding_members;
use crate::http::body::Body;
use crate::http::response::{NotModifiedLength, NotModifiedType};
use crate::metrics::Metrics;
use crate::proxy::edge::Edge;
use crate::proxy::signed::MAX_REWRITE;

/// Bodies shorter than this go as they are: gzip's own 18 bytes and the viewer's inflate
/// would save next to nothing.
pub const MIN_LEN: usize = 512;

/// Bytes the coded forms of shared bodies may weigh, plain and coded copies counted.
const KEPT_BYTES: u64 = 32 << 20;

/// The gzip form of shared bodies compressed lately, keyed by a hash of the plain bytes and
/// checked against them (a hash alone could hand one body's coding to another).
pub struct Compressed {
    kept: Cache<u64, Kept, ByBytes>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Clone)]
struct Kept {
    plain: Bytes,
    coded: Bytes,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u64, Kept> for ByBytes {
    fn weight(&self, _: &u64, v: &Kept) -> u64 {
        (v.plain.len() + v.coded.len()) as u64 + 64
    }
}

impl Default for Compressed {
    fn default() -> Compressed {
        // Plain and coded, `MAX_REWRITE` at most each.
        let options =
            crate::proxy::coding::byte_weighted(4096, KEPT_BYTES, 2 * MAX_REWRITE as u64 + 64);
        Compressed {
            kept: Cache::with_options(options, ByBytes, Default::default(), Default::default()),
            hasher: Default::default(),
        }
    }
}

impl Compressed {
    fn hash(&self, plain: &[u8]) -> u64 {
        self.hasher.hash_one(plain)
    }
}

/// `resp` to the request `parts`, gzip-coded when the module doc says so (the caller checks
/// `cache.compress_manifests`). `shared`: the body is the same for every viewer of it (not
/// rewritten for this one), so its coded form is kept.
pub async fn manifest(
    edge: &Edge,
    parts: &Parts,
    resp: Response<Body>,
    shared: bool,
) -> Response<Body> {
    if resp.status() == StatusCode::NOT_MODIFIED {
        return not_modified(parts, resp);
    }
    let ct = resp.headers().get(header::CONTENT_TYPE);
    let status = resp.status();
    if !matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT)
        || !eligible(parts, resp.headers(), ct)
    {
        return resp;
    }
    let (mut head, body) = resp.into_parts();
    add_vary(&mut head.headers);
    // A range is cut from the stored bytes and never coded, but which representation it is
    // a part of was chosen by `Accept-Encoding` (the 200 may be gzip): it varies as the 200
    // does (RFC 9110 §12.5.5), or a cache downstream could answer a gzip viewer's later Range
    // with it, or merge it with parts of the coded body.
    if status == StatusCode::PARTIAL_CONTENT {
        return Response::from_parts(head, body);
    }
    if !accepts_gzip(&parts.headers) {
        return Response::from_parts(head, body);
    }
    if parts.method == Method::HEAD {
        // The head the GET would have, by the same rule; the coded length needs the body.
        if codes(crate::cache::policy::content_length(&head.headers)) {
            coded_headers(&mut head.headers, None);
        }
        return Response::from_parts(head, body);
    }
    // Decided by the head, as a HEAD's is: a body whose length the head does not give is
    // coded whatever length it turns out to have (short ones too), as the HEAD said it would
    // be; only one past `MAX_REWRITE` cannot be.
    if !codes(crate::cache::policy::content_length(&head.headers)) {
        return Response::from_parts(head, body);
    }
    let plain = match collect(body).await {
        Ok(plain) => plain,
        // Too long, or the fill failed: sent as it came, headers untouched.
        Err(body) => return Response::from_parts(head, body),
    };
    let coded = match gzip(edge, plain.clone(), shared).await {
        Some(coded) => coded,
        // The encoder failed (it cannot on a `Vec`; the blocking pool may): sent as it is.
        None => return Response::from_parts(head, Body::full(plain)),
    };
    edge.metrics
        .manifests
        .compressed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    coded_headers(&mut head.headers, Some(coded.len()));
    Response::from_parts(head, Body::full(coded))
}

/// A `304` to a request whose `200` this module answers: with that 200's `Vary` and, when the
/// 200 would be coded for this viewer, its weak `ETag` (RFC 9110 §15.4.5). Its length is the
/// stored one (`NotModifiedLength`); a 304 without it (the origin's, relayed by a pass) is
/// taken as coded, as a body of unknown length is.
fn not_modified(parts: &Parts, mut resp: Response<Body>) -> Response<Body> {
    // The 304 drops `Content-Type`; `http::response` keeps it aside.
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .or_else(|| resp.extensions().get::<NotModifiedType>().map(|t| &t.0));
    if !eligible(parts, resp.headers(), ct) {
        return resp;
    }
    let len = resp.extensions().get::<NotModifiedLength>().map(|n| n.0);
    let h = resp.headers_mut();
    add_vary(h);
    if accepts_gzip(&parts.headers) && codes(len) {
        weaken_etag(h);
    }
    resp
}

/// Whether a 200 whose body is `len` bytes (`None`: not known yet) is coded for a viewer that
/// takes gzip: from `MIN_LEN` to `MAX_REWRITE` bytes. Unknown is taken as coded, whatever the
/// body turns out to be (a manifest mostly is in range; a HEAD cannot wait to see), unless it
/// outgrows `MAX_REWRITE` (`collect` gives up on it and it goes as it is).
fn codes(len: Option<u64>) -> bool {
    len.is_none_or(|n| (MIN_LEN as u64..=MAX_REWRITE as u64).contains(&n))
}

/// An answer to a GET or HEAD of a manifest (`ct`: its 200's `Content-Type`) whose fields `h`
/// name no content coding and no `no-transform`.
fn eligible(parts: &Parts, h: &HeaderMap, ct: Option<&HeaderValue>) -> bool {
    let ct = ct.and_then(|v| v.to_str().ok());
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && !h.contains_key(header::CONTENT_ENCODING)
        && ManifestFormat::of(parts.uri.path(), ct).is_some()
        && !h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        })
}

/// Whether `Accept-Encoding` takes gzip (RFC 9110 §12.5.3): `gzip` or `x-gzip` with a weight
/// above 0, or else `*` with one; a listed `gzip;q=0` refuses it whatever `*` says. Weights as
/// `cache::vary::accept_encoding_members` reads them (`Q=0` too; an invalid one refuses).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut star = None;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for (coding, acceptable) in accept_encoding_members(v) {
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return acceptable;
            }
            if coding == "*" {
                star = Some(acceptable);
            }
        }
    }
    star.unwrap_or(false)
}

/// Adds `Accept-Encoding` to `Vary` unless it is there or `Vary` is `*`.
fn add_vary(h: &mut HeaderMap) {
    let listed = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|n| {
                let n = n.trim();
                n == "*" || n.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !listed {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The fields of a gzip-coded answer: its coding and length (`None`: unknown, a HEAD), a weak
/// `ETag`, no byte ranges.
fn coded_headers(h: &mut HeaderMap, len: Option<usize>) {
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    match len {
        Some(n) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.remove(header::CONTENT_LENGTH);
        }
    }
    h.remove(header::ACCEPT_RANGES);
    weaken_etag(h);
}

/// A strong `ETag` made weak: the coded bytes are not the stored ones (RFC 9110 §8.8.3).
fn weaken_etag(h: &mut HeaderMap) {
    if let Some(tag) = h.get(header::ETAG) {
        if !tag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => {
                    h.insert(header::ETAG, v);
                }
                Err(_) => {
                    h.remove(header::ETAG);
                }
            }
        }
    }
}

/// The whole body, when it ends within `MAX_REWRITE` bytes; otherwise what `Body` sends the
/// same bytes (what was read, then the rest, or the fill's error).
async fn collect(body: Body) -> Result<Bytes, Body> {
    let (mut stream, len) = match body {
        Body::Full(b) => return Ok(b.unwrap_or_default()),
        Body::Stream { stream, len } => (stream, len),
    };
    if len.is_some_and(|n| n > MAX_REWRITE as u64) {
        return Err(Body::Stream { stream, len });
    }
    let mut buf = BytesMut::new();
    loop {
        match stream.next().await {
            None => return Ok(buf.freeze()),
            Some(Ok(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_REWRITE {
                    let read = futures_util::stream::iter([Ok(buf.freeze())]);
                    return Err(Body::Stream {
                        stream: Box::pin(read.chain(stream)),
                        len,
                    });
                }
            }
            Some(Err(e)) => {
                let read = futures_util::stream::iter([Ok(buf.freeze()), Err(e)]);
                return Err(Body::Stream {
                    stream: Box::pin(read),
                    len,
                });
            }
        }
    }
}

/// `plain` gzip-coded: from the kept forms when `shared` and compressed before, else now
/// (`code`). `None` when the coding failed. Kept even when it saved nothing (text of `MIN_LEN`
/// bytes and more hardly ever does): whether an answer is coded is its head's to say
/// (`codes`), which a HEAD and a 304 can read too.
///
/// A shared body is coded once however many viewers ask for it at once: the first holds the
/// kept form's placeholder while it codes, the others wait on it (a new version of a large
/// live playlist is asked for by every player within a second; each coding it would be
/// thousands of multi-MiB compressions). A coder that fails or whose viewer leaves hands the
/// placeholder to the next one waiting.
async fn gzip(edge: &Edge, plain: Bytes, shared: bool) -> Option<Bytes> {
    if !shared {
        return code(edge, plain, flate2::Compression::fast()).await;
    }
    // Shared bodies are coded once and sent many times: worth the better level.
    let level = flate2::Compression::new(6);
    let kept = &edge.compressed;
    match kept.kept.get_value_or_guard_async(&kept.hash(&plain)).await {
        Ok(hit) if hit.plain == plain => Some(hit.coded),
        // Another body with the same hash (keyed hashing makes it a chance, not a choice a
        // viewer has): coded alone, never handed the other's coding.
        Ok(_) => code(edge, plain, level).await,
        Err(placeholder) => {
            let coded = code(edge, plain.clone(), level).await?;
            let _ = placeholder.insert(Kept {
                plain,
                coded: coded.clone(),
            });
            Some(coded)
        }
    }
}

/// `plain` coded at `level`, off the worker past `INLINE_MAX` bytes under the same bound as
/// the token rewrite's work (`signed::offload`): a crowd of viewers of different large
/// manifests holds at most that many blocking threads, not one each.
async fn code(edge: &Edge, plain: Bytes, level: flate2::Compression) -> Option<Bytes> {
    Metrics::inc(&edge.metrics.manifests.gzipped);
    crate::proxy::signed::offload(edge, plain.len(), move || encode(&plain, level))
        .await
        .ok()
        .flatten()
}

fn encode(plain: &[u8], level: flate2::Compression) -> Option<Bytes> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(plain.len() / 4), level);
    e.write_all(plain).ok()?;
    e.finish().ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(v).expect("value"),
        );
        h
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "br;q=1, GZIP;q=0.5",
            "x-gzip",
            "*",
            "br, *;q=0.1",
        ] {
            assert!(accepts_gzip(&ae(yes)), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br",
            "gzip;q=0",
            "gzip;q=0.0, *",
            "*;q=0",
            "gzipx",
            "gzip;q=x",
            "gzip;Q=0",
            "gzip;q=0.000",
            "gzip;q=inf",
            "x-gzip;q=1.5",
        ] {
            assert!(!accepts_gzip(&ae(no)), "{no}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn coding_is_decided_by_the_length_alone() {
        assert!(!codes(Some(MIN_LEN as u64 - 1)));
        assert!(codes(Some(MIN_LEN as u64)));
        assert!(codes(Some(MAX_REWRITE as u64)));
        assert!(!codes(Some(MAX_REWRITE as u64 + 1)));
        assert!(codes(None), "unknown: as a GET of a manifest mostly is");
    }

    #[test]
    fn a_coded_answer_has_a_weak_etag_its_length_and_no_ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9000"));
        coded_headers(&mut h, Some(700));
        assert_eq!(h[header::ETAG], "W/\"v1\"");
        assert_eq!(h[header::CONTENT_LENGTH], "700");
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert!(!h.contains_key(header::ACCEPT_RANGES));
        let mut v = HeaderMap::new();
        v.insert(
            header::VARY,
            HeaderValue::from_static("Origin, accept-encoding"),
        );
        add_vary(&mut v);
        assert_eq!(v.get_all(header::VARY).iter().count(), 1);
        let mut v = HeaderMap::new();
        v.insert(header::VARY, HeaderValue::from_static("Origin"));
        add_vary(&mut v);
        assert_eq!(v.get_all(header::VARY).iter().count(), 2);
    }
}
