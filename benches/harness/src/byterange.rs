//! `Range` for the simulator's static files (RFC 9110 §14): one `bytes=` range is answered with a
//! 206 and its `Content-Range`, an unsatisfiable one with a 416, anything else (no `Range`, a
//! malformed one, several ranges) with the whole file, as an origin may. Byte-range HLS
//! (`EXT-X-BYTERANGE`) and an edge's slice fills need an origin that honours ranges.

use http::header::HeaderValue;

/// What to answer to a request's `Range` for a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The whole body, 200.
    Whole,
    /// Bytes `[start, end]` (inclusive), 206.
    Part { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Reads `range` (the request's `Range` header, if any) against a body of `len` bytes.
pub fn answer(range: Option<&HeaderValue>, len: u64) -> Answer {
    let Some(spec) = range
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Answer::Whole;
    };
    if spec.contains(',') {
        // Several ranges would need multipart/byteranges; the whole body is a valid answer.
        return Answer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Answer::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Longer than u64: larger than any file here, so "to the end".
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (num(a), num(b)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if a.trim().is_empty() => match n {
            0 => Answer::Unsatisfiable,
            _ if len == 0 => Answer::Unsatisfiable,
            n => Answer::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (Some(start), last) if b.trim().is_empty() || last.is_some() => {
            if last.is_some_and(|l| l < start) {
                return Answer::Whole; // invalid: ignored (RFC 9110 §14.1.1)
            }
            if start >= len {
                return Answer::Unsatisfiable;
            }
            let end = last.unwrap_or(u64::MAX).min(len - 1);
            Answer::Part { start, end }
        }
        _ => Answer::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(v: &str, len: u64) -> Answer {
        answer(Some(&HeaderValue::from_str(v).expect("value")), len)
    }

    #[test]
    fn one_range_is_a_part() {
        assert_eq!(ask("bytes=0-9", 100), Answer::Part { start: 0, end: 9 });
        assert_eq!(ask("bytes=90-", 100), Answer::Part { start: 90, end: 99 });
        assert_eq!(ask("bytes=-10", 100), Answer::Part { start: 90, end: 99 });
        assert_eq!(ask("bytes=-1000", 100), Answer::Part { start: 0, end: 99 });
        // A slice fill asks past the end of a short file: clipped to it.
        assert_eq!(
            ask("bytes=0-4194303", 100),
            Answer::Part { start: 0, end: 99 }
        );
        assert_eq!(
            ask("bytes=5-99999999999999999999999", 100),
            Answer::Part { start: 5, end: 99 }
        );
    }

    #[test]
    fn past_the_end_is_unsatisfiable() {
        assert_eq!(ask("bytes=100-", 100), Answer::Unsatisfiable);
        assert_eq!(ask("bytes=100-200", 100), Answer::Unsatisfiable);
        assert_eq!(ask("bytes=-0", 100), Answer::Unsatisfiable);
        assert_eq!(ask("bytes=0-", 0), Answer::Unsatisfiable);
    }

    #[test]
    fn anything_else_gets_the_whole_body() {
        assert_eq!(answer(None, 100), Answer::Whole);
        assert_eq!(ask("bytes=0-1,5-6", 100), Answer::Whole);
        assert_eq!(ask("bytes=9-1", 100), Answer::Whole);
        assert_eq!(ask("items=0-1", 100), Answer::Whole);
        assert_eq!(ask("bytes=a-b", 100), Answer::Whole);
        assert_eq!(ask("bytes=-", 100), Answer::Whole);
        assert_eq!(ask("bytes=1", 100), Answer::Whole);
    }
}
