//! Byte-range preload hints (issue 17, RFC 8216bis §4.4.5.3 `EXT-X-PRELOAD-HINT` with
//! `BYTERANGE-START`): a player asks for the hinted resource with an open-ended
//! `Range: bytes=N-` while the origin is still producing it, and the origin answers the range
//! starting at N as the bytes are produced (held, chunked). Neither the cold-Range rule
//! (`range_pass`: an answer of unknown length would send every viewer to the origin) nor
//! slicing (`slice`: fixed slices of a resource whose length nobody knows yet) fits that, so a
//! hinted URI asked for from N on gets a fill of its own:
//!
//! - keyed `{base}\0\x01from=N`: every viewer of the same open-ended range collapses onto one
//!   origin request (`Range: bytes=N-`), whose 206 (the origin's `Content-Range`, its framing)
//!   streams to each of them as it arrives;
//! - a complete 206 starting at N is stored under that key like a slice (judged as its 200
//!   would be), so later viewers of the same hint are HITs; a 206 starting elsewhere is an
//!   origin error (the range asked for is not the one answered);
//! - a fresh whole object under the base key answers first (a plain 206 from it).
//!
//! It applies only to the start a live playlist's hint gave (`Live::hinted_start`): the viewer
//! picks N, and any other N on the same URI keeps the usual rules (slices, the cold-Range
//! rule), so walking N cannot make one origin fill and one stored object per value.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::http::range::{self, ByteRange};
use crate::proxy::request::Req;

/// What follows the base key in the key of a hinted range fill.
const MARK: &str = "\0\x01from=";

/// The key of this request's hinted-range fill, when it is one: a GET with one open-ended
/// `Range: bytes=N-` of a URI a live playlist hinted with `BYTERANGE-START=N` (N > 0: from 0
/// the whole-object fill serves the same bytes).
pub fn key_for(req: &Req<'_>, base_key: &str) -> Option<String> {
    if req.parts.method != Method::GET || req.parts.headers.contains_key(header::IF_RANGE) {
        return None;
    }
    let ByteRange::From(n) = range::parse(&req.parts.headers)? else {
        return None;
    };
    (n > 0 && req.edge.live.hinted_start(base_key) == Some(n))
        .then(|| format!("{base_key}{MARK}{n}"))
}

/// The first byte a hinted-range key asks for; `None` for any other key.
pub fn start_of(key: &str) -> Option<u64> {
    key.split_once(MARK)?.1.parse().ok()
}

/// The `Range` the fill of a hinted-range key sends the origin.
pub fn range_header(from: u64) -> HeaderValue {
    HeaderValue::try_from(format!("bytes={from}-")).expect("digits make a valid header value")
}

/// Whether the origin's answer to `Range: bytes=N-` starts at N (RFC 8216bis: the server
/// answers a byte-range hint with the range starting at `BYTERANGE-START`). A 200 (the origin
/// ignored the Range) is not: its bytes start at 0.
pub fn starts_at(status: StatusCode, headers: &HeaderMap, from: u64) -> bool {
    if status != StatusCode::PARTIAL_CONTENT {
        return false;
    }
    let Some(v) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(spec) = v.trim().strip_prefix("bytes ") else {
        return false;
    };
    let first = spec.split(['-', '/']).next().unwrap_or("").trim();
    first.parse::<u64>().ok() == Some(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hinted_range_keys_carry_their_first_byte() {
        assert_eq!(start_of("http|h|/a/seg.mp4\0\x01from=1000"), Some(1000));
        assert_eq!(start_of("http|h|/a/seg.mp4"), None);
        assert_eq!(range_header(1000), "bytes=1000-");
    }

    #[test]
    fn only_a_206_from_the_hinted_byte_is_accepted() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            "bytes 1000-3999/4000".parse().unwrap(),
        );
        assert!(starts_at(StatusCode::PARTIAL_CONTENT, &h, 1000));
        assert!(!starts_at(StatusCode::PARTIAL_CONTENT, &h, 0));
        assert!(!starts_at(StatusCode::OK, &h, 1000));
        h.insert(header::CONTENT_RANGE, "bytes 1000-*/*".parse().unwrap());
        assert!(starts_at(StatusCode::PARTIAL_CONTENT, &h, 1000));
        assert!(!starts_at(
            StatusCode::PARTIAL_CONTENT,
            &HeaderMap::new(),
            1000
        ));
    }
}
