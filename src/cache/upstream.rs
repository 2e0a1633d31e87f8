//! What the nearest upstream cache (a shield, another CDN) says of the freshness of the answer
//! it sent: its `Cache-Status` entry (RFC 9211), read only to shorten this node's own.
//!
//! Why: an answer's `Age` and `max-age` cannot say that a cache made its copy stale early. A
//! soft purge does exactly that (the copy's lifetime ends at its current age), and a shield
//! serving such a copy stale (stale-while-revalidate, stale-if-error) sent it with a small
//! `Age`: the edge stored it, or took its `304` as a revalidation, fresh for the whole
//! `max-age` (RFC 9111 §4.3.4: a stale response is not made fresh by a validation that never
//! reached the origin). The upstream's `ttl` (§2.4: its remaining freshness, negative when
//! stale) says it. Only ever shortening means an upstream cannot extend what the response's
//! own fields and this node's rules allow.

use std::time::Duration;

use http::HeaderMap;

use crate::cache::policy::{self, Freshness};
use crate::cache::sfv::{self, BareItem};

/// The nearest upstream cache's word on the answer's freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Its entry says nothing of freshness (a fill's `fwd=miss`), or there is none.
    Silent,
    /// Fresh for this many more seconds, as that cache reckoned it when it sent the answer.
    Fresh(u64),
    /// It answered with a stale copy (a negative `ttl`, or a `detail` naming a stale answer:
    /// `stale-while-revalidate`, `stale-if-error`, `max-stale`), stale by this many seconds
    /// (0 when it said stale without a `ttl`).
    Stale(u64),
}

/// Reads the nearest upstream cache's `Cache-Status` member
/// (`nearest_member`); no valid member says nothing.
pub fn nearest(headers: &HeaderMap) -> Upstream {
    let Some(last) = nearest_member(headers) else {
        return Upstream::Silent;
    };
    let param = |name: &str| {
        last.params()
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    };
    let ttl = match param("ttl") {
        Some(BareItem::Integer(n)) => Some(*n),
        _ => None,
    };
    let served_stale = match param("detail") {
        Some(BareItem::Token(d) | BareItem::String(d)) => {
            d.starts_with("stale-") || d == "max-stale"
        }
        _ => false,
    };
    match ttl {
        Some(n) if n < 0 => Upstream::Stale(n.unsigned_abs()),
        _ if served_stale => Upstream::Stale(0),
        Some(n) => Upstream::Fresh(n.unsigned_abs()),
        None => Upstream::Silent,
    }
}

/// The nearest upstream cache's member of `headers`' `Cache-Status` (RFC 9211 §2: each cache
/// appends its own, so the last is the nearest): the last member of the last line that is a
/// valid List. A malformed line is skipped, as `http::cache_status::append` drops it, so an
/// origin's broken entry cannot hide the entry of the shield that relayed it.
pub fn nearest_member(headers: &http::HeaderMap) -> Option<sfv::Member> {
    headers
        .get_all("cache-status")
        .iter()
        .rev()
        .filter_map(|line| sfv::parse_list(line.to_str().ok()?).ok())
        .find_map(|members| members.into_iter().next_back())
        .map(|(_, member)| member)
}

/// `freshness` as decided from `headers` (the answer as received: a 304's own fields, not the
/// stored ones it updates), with its lifetime cut to what the nearest upstream cache reckoned:
/// that cache's lifetime is its `Age` plus its `ttl` (`Age` and `ttl` are read at the same
/// moment, when it sent the answer). A stale answer's lifetime ends at or before its `Age`, so
/// it is stored stale: served only within stale-while-revalidate / stale-if-error, and
/// revalidated by the next request.
pub fn cap(mut freshness: Freshness, headers: &HeaderMap) -> Freshness {
    let age = policy::age(headers).unwrap_or_default();
    let lifetime = match nearest(headers) {
        Upstream::Silent => return freshness,
        Upstream::Fresh(n) => age.saturating_add(Duration::from_secs(n)),
        Upstream::Stale(n) => age.saturating_sub(Duration::from_secs(n)),
    };
    freshness.ttl = freshness.ttl.min(lifetime);
    freshness
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cache_status: &[&str], age: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in cache_status {
            h.append("cache-status", v.parse().expect("test value"));
        }
        if let Some(a) = age {
            h.insert(http::header::AGE, a.parse().expect("test value"));
        }
        h
    }

    fn freshness(ttl: u64, initial_age: u64) -> Freshness {
        Freshness {
            ttl: Duration::from_secs(ttl),
            initial_age: Duration::from_secs(initial_age),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
        }
    }

    /// Bug: the lines were joined and parsed as one List, so one malformed line (an origin's
    /// unclosed quote, relayed by a shield that is not vedge) made the whole field say nothing,
    /// and the shield's stale answer was stored as fresh for the whole `max-age`. A malformed
    /// line is skipped, as `http::cache_status::append` drops it.
    #[test]
    fn a_malformed_upstream_line_does_not_hide_the_nearest_member() {
        let h = |v: &[&str]| nearest(&headers(v, None));
        assert_eq!(
            h(&[
                "origin; detail=\"x",
                "shield; hit; ttl=-3; detail=stale-while-revalidate"
            ]),
            Upstream::Stale(3)
        );
        assert_eq!(
            h(&["shield; hit; ttl=20", "o; detail=\"x"]),
            Upstream::Fresh(20),
            "a broken last line: the nearest valid member"
        );
    }

    #[test]
    fn the_last_member_is_the_nearest_cache() {
        let h = |v: &[&str]| nearest(&headers(v, None));
        assert_eq!(h(&[]), Upstream::Silent);
        assert_eq!(h(&["vedge; hit; ttl=30; detail=ram"]), Upstream::Fresh(30));
        assert_eq!(
            h(&[
                "origin-cache; hit; ttl=-5",
                "shield; fwd=miss; fwd-status=200"
            ]),
            Upstream::Silent,
            "the shield's own fill says nothing; the origin cache's entry is not the nearest"
        );
        assert_eq!(
            h(&["shield; hit; ttl=-1; detail=stale-while-revalidate"]),
            Upstream::Stale(1)
        );
        assert_eq!(
            h(&["vedge; fwd=stale; fwd-status=503; ttl=-3; detail=stale-if-error"]),
            Upstream::Stale(3)
        );
        assert_eq!(
            h(&["other; fwd=stale; detail=\"stale-if-error\""]),
            Upstream::Stale(0)
        );
        assert_eq!(h(&["c; hit; detail=max-stale"]), Upstream::Stale(0));
        // A refetch that got a fresh answer is no stale one.
        assert_eq!(
            h(&["vedge; fwd=stale; fwd-status=200; stored"]),
            Upstream::Silent
        );
        // Not a List: dropped downstream, so it says nothing here either.
        assert_eq!(h(&["vedge; hit; ttl=-1, \"open"]), Upstream::Silent);
        assert_eq!(h(&["vedge; hit; ttl=1.5"]), Upstream::Silent);
    }

    #[test]
    fn the_cap_only_ever_shortens() {
        let f = freshness(3600, 10);
        // A soft-purged copy served stale: its lifetime ends before its Age.
        let stale = cap(
            f,
            &headers(
                &["vedge; hit; ttl=-1; detail=stale-while-revalidate"],
                Some("10"),
            ),
        );
        assert_eq!(stale.ttl, Duration::from_secs(9));
        assert!(stale.ttl <= stale.initial_age, "stale on arrival");
        assert_eq!(
            (stale.stale_while_revalidate, stale.stale_if_error),
            (f.stale_while_revalidate, f.stale_if_error),
            "its stale windows stand"
        );
        // Fresh upstream: Age + ttl, never more than our own.
        let shorter = cap(f, &headers(&["s; hit; ttl=50"], Some("10")));
        assert_eq!(shorter.ttl, Duration::from_secs(60));
        let longer = cap(f, &headers(&["s; hit; ttl=999999"], Some("10")));
        assert_eq!(longer.ttl, f.ttl, "an upstream cannot extend freshness");
        // Stale by more than its Age says: stale since it arrived.
        let odd = cap(f, &headers(&["s; hit; ttl=-99"], Some("3")));
        assert_eq!(odd.ttl, Duration::ZERO);
        // Said stale without a ttl: its lifetime ends at its Age.
        let no_ttl = cap(f, &headers(&["s; detail=stale-if-error"], Some("10")));
        assert_eq!(no_ttl.ttl, Duration::from_secs(10));
        assert_eq!(cap(f, &headers(&["s; fwd=miss"], Some("10"))), f);
    }
}
