//! `Range` requests (RFC 9110 §14): single byte ranges are served as 206 from cached objects and
//! from fills in progress. A multi-range request gets the whole object as 200 (allowed: a server
//! may ignore Range); players ask for one range at a time.

use http::{header, HeaderMap};

/// One requested byte range, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive)
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

/// Parses the request's `Range`. `None` for no header, another unit, a syntax error or several
/// ranges: all of which are served as the whole representation.
pub fn parse(headers: &HeaderMap) -> Option<ByteRange> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = v.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
        (false, true) => Some(ByteRange::From(a.parse().ok()?)),
        (false, false) => {
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

impl ByteRange {
    /// The half-open `[start, end)` this range selects from `len` bytes; `None` if unsatisfiable.
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo(a, b) if a < len => Some((a, (b + 1).min(len))),
            ByteRange::From(a) if a < len => Some((a, len)),
            ByteRange::Suffix(n) if n > 0 && len > 0 => Some((len.saturating_sub(n), len)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn r(v: &'static str) -> Option<ByteRange> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static(v));
        parse(&h)
    }

    #[test]
    fn forms() {
        assert_eq!(r("bytes=0-99"), Some(ByteRange::FromTo(0, 99)));
        assert_eq!(r("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(r("bytes=-500"), Some(ByteRange::Suffix(500)));
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=5-1"), None);
        assert_eq!(ByteRange::FromTo(0, 99).resolve(50), Some((0, 50)));
        assert_eq!(ByteRange::From(50).resolve(50), None);
        assert_eq!(ByteRange::Suffix(500).resolve(100), Some((0, 100)));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
    }
}
