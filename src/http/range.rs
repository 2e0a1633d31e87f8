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

/// Parses the request's `Range`. `None` for no header, another unit, a syntax error, several
/// ranges or several `Range` lines (a singleton field: which one would be meant?): all of which
/// are served as the whole representation.
pub fn parse(headers: &HeaderMap) -> Option<ByteRange> {
    let mut all = headers.get_all(header::RANGE).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    parse_value(v.to_str().ok()?)
}

/// Parses one `Range` value (see `parse`). Positions are digits only (no sign, no spaces inside);
/// a number too large for `u64` saturates, which keeps its meaning: a first-byte-pos that large
/// is past any object (416), a last-byte-pos or suffix that large covers the rest of it.
pub fn parse_value(v: &str) -> Option<ByteRange> {
    let v = v.trim();
    let (unit, spec) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let spec = spec.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(position(b)?)),
        (false, true) => Some(ByteRange::From(position(a)?)),
        (false, false) => {
            let (a, b) = (position(a)?, position(b)?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

/// A byte position: ASCII digits, saturating at `u64::MAX`.
fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, c| {
        n.saturating_mul(10).saturating_add(u64::from(c - b'0'))
    }))
}

impl ByteRange {
    /// The half-open `[start, end)` this range selects from `len` bytes; `None` if unsatisfiable.
    /// When `Some`, `start < end <= len` always holds (a last-byte-pos past the end is clamped,
    /// RFC 9110 §14.1.2).
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo(a, b) if a < len => Some((a, b.saturating_add(1).min(len))),
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
    use proptest::prelude::*;

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
        assert_eq!(r("Bytes = 1-2"), Some(ByteRange::FromTo(1, 2)));
        assert_eq!(r("bytes=+1-2"), None);
        assert_eq!(r("bytes=1-+2"), None);
        assert_eq!(r("bytes=-"), None);
        assert_eq!(r("bytes=1 2-3"), None);
        let mut two = HeaderMap::new();
        two.append(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        two.append(header::RANGE, HeaderValue::from_static("bytes=2-3"));
        assert_eq!(parse(&two), None);
    }

    /// Issue: `bytes=1-18446744073709551615` overflowed `last + 1` and panicked in the slice.
    #[test]
    fn huge_positions_clamp_or_are_unsatisfiable() {
        let max = r("bytes=1-18446744073709551615");
        assert_eq!(max, Some(ByteRange::FromTo(1, u64::MAX)));
        assert_eq!(max.and_then(|m| m.resolve(10)), Some((1, 10)));
        let past = r("bytes=1-99999999999999999999999999");
        assert_eq!(past.and_then(|m| m.resolve(10)), Some((1, 10)));
        let from = r("bytes=18446744073709551615-");
        assert_eq!(from, Some(ByteRange::From(u64::MAX)));
        assert_eq!(from.and_then(|f| f.resolve(10)), None);
        let from = r("bytes=99999999999999999999999999-");
        assert_eq!(from.and_then(|f| f.resolve(u64::MAX)), None);
        let suffix = r("bytes=-18446744073709551615");
        assert_eq!(suffix.and_then(|s| s.resolve(10)), Some((0, 10)));
        assert_eq!(
            ByteRange::FromTo(u64::MAX, u64::MAX).resolve(u64::MAX),
            None
        );
        assert_eq!(
            ByteRange::FromTo(0, u64::MAX).resolve(u64::MAX),
            Some((0, u64::MAX))
        );
    }

    fn range_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,24}",
            "(bytes|BYTES|items)=[0-9]{0,22}-[0-9]{0,22}",
            "bytes= ?(-?[0-9]{1,21}|[0-9]{1,21}-)",
        ]
    }

    fn length() -> impl Strategy<Value = u64> {
        prop_oneof![0..64u64, any::<u64>(), Just(u64::MAX)]
    }

    proptest! {
        /// Whatever the header and length: no panic, and a satisfiable range lies inside the
        /// object and is not empty.
        #[test]
        fn a_resolved_range_is_inside_the_object(v in range_value(), len in length()) {
            if let Some(r) = parse_value(&v) {
                if let Some((start, end)) = r.resolve(len) {
                    prop_assert!(start < end && end <= len, "{v:?} on {len}: {start}..{end}");
                }
            }
        }
    }
}
