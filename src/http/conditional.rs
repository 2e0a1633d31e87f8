//! Viewer preconditions (RFC 9110 §13) evaluated against the representation a response is built
//! from: a stored object on a hit, the origin's head on a fill. The order is §13.2.2's:
//! `If-Match`, else `If-Unmodified-Since` (412 when false); then `If-None-Match`, else
//! `If-Modified-Since` (304 for GET/HEAD); `If-Range` decides later whether a Range applies.
//!
//! Pure and bounded: field values are read as bytes (an entity-tag may carry obs-text, which
//! `HeaderValue::to_str` refuses), each list is walked once.
//!
//! `If-Match` / `If-Unmodified-Since`: RFC 9111 §4.3.2 calls them "not applicable to a cache",
//! leaving them to the origin. A CDN edge answers for the origin on a hit (the origin never sees
//! the request), so, as nginx does for cached responses, they are evaluated against the stored
//! representation: a viewer asking "only if it is still `"v1"`" gets 412 rather than another
//! version's bytes.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method};
use std::time::SystemTime;

/// What the preconditions make of a request for a 2xx representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No precondition, or all of them hold: the normal answer (Range still to be applied).
    Proceed,
    /// 304: `If-None-Match` or `If-Modified-Since` of a GET/HEAD says the viewer's copy is current.
    NotModified,
    /// 412: `If-Match` or `If-Unmodified-Since` failed (or `If-None-Match` for another method).
    PreconditionFailed,
}

/// RFC 9110 §13.2.2, steps 1-4, for `method` against the representation whose header fields
/// are `rep`.
pub fn evaluate(method: &Method, req: &HeaderMap, rep: &HeaderMap) -> Outcome {
    let etag = rep.get(header::ETAG).map(|v| Tag::parse(v.as_bytes()));
    // Step 1 / 2: If-Match, else If-Unmodified-Since.
    if req.contains_key(header::IF_MATCH) {
        let held = members(req.get_all(header::IF_MATCH).iter()).any(|m| match m {
            Member::Any => true,
            Member::Tag(t) => etag.as_ref().is_some_and(|e| e.strong_eq(&t)),
        });
        if !held {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(ius) = single_date(req, header::IF_UNMODIFIED_SINCE) {
        // §13.1.4: ignored when the representation has no modification date.
        if date_of(rep, header::LAST_MODIFIED).is_some_and(|lm| lm > ius) {
            return Outcome::PreconditionFailed;
        }
    }
    let safe = method == Method::GET || method == Method::HEAD;
    // Step 3 / 4: If-None-Match, else If-Modified-Since (GET and HEAD only).
    if req.contains_key(header::IF_NONE_MATCH) {
        let matched = members(req.get_all(header::IF_NONE_MATCH).iter()).any(|m| match m {
            Member::Any => true,
            Member::Tag(t) => etag.as_ref().is_some_and(|e| e.weak_eq(&t)),
        });
        if matched {
            return if safe {
                Outcome::NotModified
            } else {
                Outcome::PreconditionFailed
            };
        }
        return Outcome::Proceed;
    }
    if safe {
        if let Some(ims) = single_date(req, header::IF_MODIFIED_SINCE) {
            // RFC 9111 §4.3.2: without `Last-Modified`, a cache judges by the stored `Date`.
            let modified =
                date_of(rep, header::LAST_MODIFIED).or_else(|| date_of(rep, header::DATE));
            if modified.is_some_and(|m| m <= ims) {
                return Outcome::NotModified;
            }
        }
    }
    Outcome::Proceed
}

/// `If-Range` (RFC 9110 §13.1.5): whether a Range applies to the representation `rep`. No field:
/// it does. An entity-tag matches only strongly (a weak one never does); a date only when it is
/// exactly the `Last-Modified` and that date is a strong validator, which for a cache means the
/// stored `Date` is at least a second later (§8.8.2.2: a representation changed twice within
/// its `Last-Modified` second would otherwise splice). Anything else (unparsable, several
/// lines) is false: the whole representation is sent, which is always a correct answer.
pub fn range_applies(req: &HeaderMap, rep: &HeaderMap) -> bool {
    let mut all = req.get_all(header::IF_RANGE).iter();
    let Some(v) = all.next() else {
        return true;
    };
    if all.next().is_some() {
        return false;
    }
    let b = v.as_bytes().trim_ascii();
    if b.first() == Some(&b'"') || b.starts_with(b"W/") {
        let asked = Tag::parse(b);
        return rep
            .get(header::ETAG)
            .is_some_and(|e| Tag::parse(e.as_bytes()).strong_eq(&asked));
    }
    match (parse_date(v), date_of(rep, header::LAST_MODIFIED)) {
        (Some(a), Some(lm)) => a == lm && strong_date(rep, lm),
        _ => false,
    }
}

/// Whether the representation `rep` has a strong validator for a cache (RFC 9110 §8.8.1): a
/// strong entity-tag, or a `Last-Modified` that §8.8.2.2 lets an intermediate cache take as
/// strong (its stored `Date` at least a second later). Only then may partial responses of it be
/// combined into one (RFC 9110 §15.3.7.3, RFC 9111 §3.4), as slices are (`proxy::slice`). An
/// entity-tag that is not a valid one (§8.8.3: unquoted) counts unless it starts with `W/` in
/// either case: `range_applies` compares such a tag by its bytes too, and the origin did not
/// call it weak. Several `ETag` lines say nothing certain, so they count for nothing.
pub fn strong_validator(rep: &HeaderMap) -> bool {
    let mut tags = rep.get_all(header::ETAG).iter();
    let strong_tag = match (tags.next(), tags.next()) {
        (Some(v), None) => match Tag::parse(v.as_bytes()) {
            Tag::Valid { weak, .. } => !weak,
            Tag::Raw(b) => !b.get(..2).is_some_and(|p| p.eq_ignore_ascii_case(b"W/")),
        },
        _ => false,
    };
    strong_tag || date_of(rep, header::LAST_MODIFIED).is_some_and(|lm| strong_date(rep, lm))
}

/// §8.8.2.2 for a cache: a `Last-Modified` of `lm` is strong when the stored `Date` is at least a
/// second later (a representation changed twice within its `Last-Modified` second would
/// otherwise pass for one).
fn strong_date(rep: &HeaderMap, lm: SystemTime) -> bool {
    date_of(rep, header::DATE)
        .and_then(|d| d.duration_since(lm).ok())
        .is_some_and(|after| after.as_secs() >= 1)
}

/// An entity-tag as received. A value that is not a valid `entity-tag` (RFC 9110 §8.8.3: unquoted,
/// a lowercase `w/`, `W\"..."`) is kept whole and compares equal only to the same bytes, never
/// weakly: `w/"x"` is not a weak `"x"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag<'a> {
    Valid { weak: bool, opaque: &'a [u8] },
    Raw(&'a [u8]),
}

impl<'a> Tag<'a> {
    fn parse(b: &'a [u8]) -> Tag<'a> {
        let b = b.trim_ascii();
        let (weak, rest) = match b.strip_prefix(b"W/") {
            Some(r) => (true, r),
            None => (false, b),
        };
        let quoted = rest.len() >= 2
            && rest[0] == b'"'
            && rest[rest.len() - 1] == b'"'
            && rest[1..rest.len() - 1].iter().all(|&c| etagc(c));
        if quoted {
            Tag::Valid { weak, opaque: rest }
        } else {
            Tag::Raw(b)
        }
    }

    /// Strong comparison (§8.8.3.2): both strong, same opaque tag.
    fn strong_eq(&self, other: &Tag<'_>) -> bool {
        match (self, other) {
            (
                Tag::Valid {
                    weak: false,
                    opaque: a,
                },
                Tag::Valid {
                    weak: false,
                    opaque: b,
                },
            ) => a == b,
            (Tag::Raw(a), Tag::Raw(b)) => a == b,
            _ => false,
        }
    }

    /// Weak comparison: same opaque tag, weakness ignored.
    fn weak_eq(&self, other: &Tag<'_>) -> bool {
        match (self, other) {
            (Tag::Valid { opaque: a, .. }, Tag::Valid { opaque: b, .. }) => a == b,
            (Tag::Raw(a), Tag::Raw(b)) => a == b,
            _ => false,
        }
    }
}

/// `etagc = %x21 / %x23-7E / obs-text`: a comma is one, so a list cannot be split on commas.
fn etagc(c: u8) -> bool {
    c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80
}

enum Member<'a> {
    Any,
    Tag(Tag<'a>),
}

/// The members of an `If-Match` / `If-None-Match` list over all its field lines: `*`, or
/// entity-tags (a quoted one may hold commas); an invalid member is read up to the next comma
/// and kept as a raw tag.
fn members<'a>(lines: impl Iterator<Item = &'a HeaderValue>) -> impl Iterator<Item = Member<'a>> {
    lines.flat_map(|v| ListIter { s: v.as_bytes() })
}

struct ListIter<'a> {
    s: &'a [u8],
}

impl<'a> Iterator for ListIter<'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        loop {
            let s = self.s.trim_ascii_start();
            let s = s.strip_prefix(b",").unwrap_or(s);
            let s = s.trim_ascii_start();
            if s.is_empty() {
                self.s = s;
                return None;
            }
            if s[0] == b',' {
                self.s = s;
                continue;
            }
            // A quoted tag runs to its closing quote, commas included.
            let open = if s.starts_with(b"W/\"") {
                Some(3)
            } else if s[0] == b'"' {
                Some(1)
            } else {
                None
            };
            let end = match open
                .and_then(|o| s[o..].iter().position(|&c| c == b'"').map(|p| o + p + 1))
            {
                Some(e) => {
                    // Only whitespace may follow before the next comma; otherwise it is raw.
                    let after = s[e..].trim_ascii_start();
                    if after.is_empty() || after[0] == b',' {
                        e
                    } else {
                        s.iter().position(|&c| c == b',').unwrap_or(s.len())
                    }
                }
                None => s.iter().position(|&c| c == b',').unwrap_or(s.len()),
            };
            let (m, rest) = s.split_at(end);
            self.s = rest;
            let m = m.trim_ascii();
            return Some(if m == b"*" {
                Member::Any
            } else {
                Member::Tag(Tag::parse(m))
            });
        }
    }
}

/// The HTTP-date of a request field that has exactly one line (§13.1.3 / §13.1.4: a value with
/// several members, or not a valid date, is ignored).
fn single_date(req: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let mut all = req.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => parse_date(v),
        _ => None,
    }
}

fn date_of(h: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    h.get(name).and_then(parse_date)
}

/// IMF-fixdate, rfc850-date or asctime-date (RFC 9110 §5.6.7).
fn parse_date(v: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_bytes(v).expect("test value"));
        }
        m
    }

    const LM: &[u8] = b"Sun, 22 Nov 2026 04:00:00 GMT";

    fn rep(etag: &'static [u8]) -> HeaderMap {
        h(&[
            ("etag", etag),
            ("last-modified", LM),
            ("date", b"Mon, 23 Nov 2026 04:00:00 GMT"),
        ])
    }

    fn get(req: &[(&'static str, &'static [u8])], etag: &'static [u8]) -> Outcome {
        evaluate(&Method::GET, &h(req), &rep(etag))
    }

    #[test]
    fn if_none_match_compares_weakly_over_the_whole_list() {
        use Outcome::*;
        let inm = |v: &'static [u8], etag| get(&[("if-none-match", v)], etag);
        assert_eq!(inm(b"\"v1\"", b"\"v1\""), NotModified);
        assert_eq!(inm(b"W/\"v1\"", b"\"v1\""), NotModified);
        assert_eq!(inm(b"\"v1\"", b"W/\"v1\""), NotModified);
        assert_eq!(inm(b"\"x\", \"v1\"", b"\"v1\""), NotModified);
        assert_eq!(inm(b"\"a,b\", \"v1\"", b"\"v1\""), NotModified);
        assert_eq!(inm(b"\"a,b\"", b"\"a,b\""), NotModified);
        assert_eq!(inm(b"\"a,b\"", b"\"a\""), Proceed);
        assert_eq!(inm(b"*", b"\"v1\""), NotModified);
        assert_eq!(inm(b"\"v2\"", b"\"v1\""), Proceed);
        assert_eq!(
            inm("\"abcdefü\"".as_bytes(), "\"abcdefü\"".as_bytes()),
            NotModified
        );
        // A lowercase `w/` is no weakness flag: not the same tag as `"v1"` or `W/"v1"`.
        assert_eq!(inm(b"w/\"v1\"", b"\"v1\""), Proceed);
        assert_eq!(inm(b"W/\"v1\"", b"w/\"v1\""), Proceed);
        assert_eq!(inm(b"w/\"v1\"", b"w/\"v1\""), NotModified);
        // Unquoted is not an entity-tag: equal only to the same bytes.
        assert_eq!(inm(b"v1", b"\"v1\""), Proceed);
        assert_eq!(inm(b"v1", b"v1"), NotModified);
        // Several lines are one list.
        let req = h(&[("if-none-match", b"\"x\""), ("if-none-match", b"\"v1\"")]);
        assert_eq!(evaluate(&Method::GET, &req, &rep(b"\"v1\"")), NotModified);
        // Another method: 412 instead of 304.
        let req = h(&[("if-none-match", b"*")]);
        assert_eq!(
            evaluate(&Method::POST, &req, &rep(b"\"v1\"")),
            PreconditionFailed
        );
    }

    #[test]
    fn if_modified_since_yields_to_if_none_match_and_ignores_bad_dates() {
        use Outcome::*;
        let later: &[u8] = b"Sun, 22 Nov 2026 05:00:00 GMT";
        let earlier: &[u8] = b"Sun, 22 Nov 2026 03:00:00 GMT";
        assert_eq!(get(&[("if-modified-since", later)], b"\"v1\""), NotModified);
        assert_eq!(get(&[("if-modified-since", LM)], b"\"v1\""), NotModified);
        assert_eq!(get(&[("if-modified-since", earlier)], b"\"v1\""), Proceed);
        assert_eq!(
            get(
                &[("if-modified-since", b"Sunday, 22-Nov-26 05:00:00 GMT")],
                b"\"v1\""
            ),
            NotModified
        );
        assert_eq!(
            get(&[("if-modified-since", b"yesterday")], b"\"v1\""),
            Proceed
        );
        assert_eq!(
            get(
                &[("if-modified-since", later), ("if-modified-since", later)],
                b"\"v1\""
            ),
            Proceed
        );
        assert_eq!(
            get(
                &[("if-none-match", b"\"v2\""), ("if-modified-since", later)],
                b"\"v1\""
            ),
            Proceed
        );
        // Only GET and HEAD.
        let req = h(&[("if-modified-since", later)]);
        assert_eq!(evaluate(&Method::POST, &req, &rep(b"\"v1\"")), Proceed);
        // No Last-Modified: the stored Date stands in (RFC 9111 §4.3.2).
        let dated = h(&[("date", LM)]);
        assert_eq!(evaluate(&Method::GET, &req, &dated), NotModified);
        assert_eq!(evaluate(&Method::GET, &req, &HeaderMap::new()), Proceed);
    }

    #[test]
    fn if_match_and_if_unmodified_since_fail_first() {
        use Outcome::*;
        let earlier: &[u8] = b"Sun, 22 Nov 2026 03:00:00 GMT";
        assert_eq!(get(&[("if-match", b"\"v1\"")], b"\"v1\""), Proceed);
        assert_eq!(get(&[("if-match", b"*")], b"\"v1\""), Proceed);
        assert_eq!(get(&[("if-match", b"\"x\", \"v1\"")], b"\"v1\""), Proceed);
        assert_eq!(
            get(&[("if-match", b"\"v2\"")], b"\"v1\""),
            PreconditionFailed
        );
        // Strong comparison: a weak tag on either side never matches.
        assert_eq!(
            get(&[("if-match", b"W/\"v1\"")], b"\"v1\""),
            PreconditionFailed
        );
        assert_eq!(
            get(&[("if-match", b"\"v1\"")], b"W/\"v1\""),
            PreconditionFailed
        );
        // Step 1 wins over step 3.
        assert_eq!(
            get(
                &[("if-match", b"\"v2\""), ("if-none-match", b"\"v1\"")],
                b"\"v1\""
            ),
            PreconditionFailed
        );
        assert_eq!(
            get(&[("if-unmodified-since", earlier)], b"\"v1\""),
            PreconditionFailed
        );
        assert_eq!(get(&[("if-unmodified-since", LM)], b"\"v1\""), Proceed);
        assert_eq!(get(&[("if-unmodified-since", b"soon")], b"\"v1\""), Proceed);
        // If-Match present: If-Unmodified-Since is not looked at.
        assert_eq!(
            get(
                &[("if-match", b"\"v1\""), ("if-unmodified-since", earlier)],
                b"\"v1\""
            ),
            Proceed
        );
        // No Last-Modified: If-Unmodified-Since is ignored.
        let req = h(&[("if-unmodified-since", earlier)]);
        assert_eq!(evaluate(&Method::GET, &req, &HeaderMap::new()), Proceed);
    }

    #[test]
    fn if_range_needs_a_strong_tag_or_the_exact_date() {
        let r = |v: &'static [u8], etag| range_applies(&h(&[("if-range", v)]), &rep(etag));
        assert!(range_applies(&HeaderMap::new(), &rep(b"\"v1\"")));
        assert!(r(b"\"v1\"", b"\"v1\""));
        assert!(!r(b"\"v0\"", b"\"v1\""));
        assert!(!r(b"W/\"v1\"", b"W/\"v1\""));
        assert!(!r(b"\"v1\"", b"W/\"v1\""));
        assert!(r(LM, b"\"v1\""));
        assert!(!r(b"Sun, 22 Nov 2026 05:00:00 GMT", b"\"v1\""));
        assert!(!r(b"garbage", b"\"v1\""));
        // A Last-Modified within the second of the response's Date is weak: no range on it.
        let same_second = h(&[("last-modified", LM), ("date", LM)]);
        assert!(!range_applies(&h(&[("if-range", LM)]), &same_second));
        assert!(!range_applies(
            &h(&[("if-range", LM)]),
            &h(&[("last-modified", LM)])
        ));
    }

    #[test]
    fn list_parsing_is_bounded_and_total() {
        for v in [
            &b""[..],
            b",",
            b",,,",
            b"\"",
            b"W/",
            b"W/\"",
            b"\"a\" junk, \"b\"",
            b"*, *",
            b"\"unterminated, \"v1\"",
        ] {
            let req = h(&[("if-none-match", v)]);
            let _ = evaluate(&Method::GET, &req, &rep(b"\"v1\""));
        }
        let req = h(&[("if-none-match", b"\"a\" junk, \"v1\"")]);
        assert_eq!(
            evaluate(&Method::GET, &req, &rep(b"\"v1\"")),
            Outcome::NotModified
        );
    }

    #[test]
    fn a_strong_validator_is_a_strong_tag_or_a_last_modified_a_second_before_date() {
        let date: (&'static str, &'static [u8]) = ("date", b"Mon, 23 Nov 2026 04:00:00 GMT");
        assert!(strong_validator(&h(&[("etag", b"\"v1\"")])));
        assert!(strong_validator(&h(&[("etag", b"v1")])));
        assert!(!strong_validator(&h(&[("etag", b"W/\"v1\"")])));
        assert!(!strong_validator(&h(&[("etag", b"w/\"v1\"")])));
        assert!(!strong_validator(&h(&[
            ("etag", b"\"a\""),
            ("etag", b"\"b\"")
        ])));
        assert!(!strong_validator(&HeaderMap::new()));
        // A weak tag beside a strong `Last-Modified`: the date is the strong validator.
        assert!(strong_validator(&h(&[
            ("etag", b"W/\"v1\""),
            ("last-modified", LM),
            date
        ])));
        assert!(strong_validator(&h(&[("last-modified", LM), date])));
        // Within its own second, or without a `Date`, a `Last-Modified` is weak.
        assert!(!strong_validator(&h(&[
            ("last-modified", LM),
            ("date", b"Sun, 22 Nov 2026 04:00:00 GMT")
        ])));
        assert!(!strong_validator(&h(&[("last-modified", LM)])));
    }
}
