//! A viewer's `Cache-Control` request directives (RFC 9111 §5.2.1): what the viewer will
//! accept from the cache. Pure decisions; `proxy::request` acts on them.
//!
//! `Pragma: no-cache` is not read (RFC 9111 §5.4 deprecates it, and a browser's reload sends
//! `Cache-Control` as well).
//!
//! The directives that would send a request to the origin (`no-cache`, `max-age`, `min-fresh`)
//! apply to objects of the `other` class only. Manifests, segments and keys follow the
//! operator's class TTLs: a player whose HTTP stack adds `Cache-Control: no-cache` to every
//! request (a `fetch` with `cache: "no-store"` does) must not turn a live audience into origin
//! traffic. `max-stale` and `only-if-cached` only ever spare the origin, and apply to all.
//!
//! `no-store` (RFC 9111 §5.2.1.5: store no response to this request) follows the same class
//! rule: a miss of an `other` object becomes a pass of that viewer's own (nothing stored, no
//! fill for others to join, so a viewer's `no-store` never leaves another viewer's answer
//! unstored), while a fresh stored copy still answers it (storing nothing new).

use std::time::Duration;

use http::{header, HeaderMap};

use crate::cache::object::CachedObject;
use crate::cache::policy::{self, CacheControl, ContentClass, MAX_DELTA_SECS};

/// The request directives vedge acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache`: nothing stored may answer without a successful revalidation.
    pub no_cache: bool,
    /// `max-age=N`: no stored response older than N seconds (`max-age=0`: none at all).
    pub max_age: Option<u64>,
    /// `min-fresh=N`: only a stored response still fresh N seconds from now.
    pub min_fresh: Option<u64>,
    /// `max-stale[=N]`: a stored response stale by at most N seconds will do (no value: any).
    pub max_stale: Option<u64>,
    /// `only-if-cached`: answer from the cache or with a 504, never from the origin.
    pub only_if_cached: bool,
    /// `no-store`: nothing fetched for this request may be stored (`RequestDirectives::stores`).
    pub no_store: bool,
}

/// What the viewer's directives make of a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The directives change nothing: the usual freshness rules decide.
    AsStored,
    /// Ask the origin (conditionally, when the object has validators) before answering.
    Revalidate,
    /// Serve it although stale: the viewer accepts that much staleness (`max-stale`).
    ServeStale,
}

impl RequestDirectives {
    /// The directives of every `Cache-Control` line of a request. A directive with an invalid
    /// argument is read on the safe side: `max-age=x` as `max-age=0`, `min-fresh=x` and
    /// `max-stale=x` as absent. The first occurrence of a directive wins.
    pub fn parse(h: &HeaderMap) -> RequestDirectives {
        let mut d = RequestDirectives::default();
        for value in h.get_all(header::CACHE_CONTROL) {
            let Ok(v) = value.to_str() else { continue };
            for (name, arg) in policy::directives(v) {
                let seconds = || arg.as_deref().and_then(policy::delta_seconds);
                match name.as_str() {
                    "no-cache" => d.no_cache = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "no-store" => d.no_store = true,
                    "max-age" if d.max_age.is_none() => d.max_age = Some(seconds().unwrap_or(0)),
                    "min-fresh" if d.min_fresh.is_none() => d.min_fresh = seconds(),
                    "max-stale" if d.max_stale.is_none() => {
                        d.max_stale = match arg {
                            None => Some(MAX_DELTA_SECS),
                            Some(_) => seconds(),
                        }
                    }
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether the request carries no directive vedge acts on.
    pub fn is_empty(&self) -> bool {
        *self == RequestDirectives::default()
    }

    /// Whether what this request fetches of an object of `class` may be stored: not under
    /// `no-store`, for the `other` class (manifests, segments and keys follow the class TTLs,
    /// as for `no-cache`: a player's HTTP stack adding it to every request must not turn every
    /// live miss into one origin request per viewer).
    pub fn stores(&self, class: ContentClass) -> bool {
        !(self.no_store && class == ContentClass::Other)
    }

    /// The verdict on `obj` at its current `age`.
    pub fn judge(&self, obj: &CachedObject, age: Duration) -> Verdict {
        let ttl = obj.freshness.ttl;
        let secs = Duration::from_secs;
        if obj.class == ContentClass::Other {
            if let Some(v) = self.refusal(ttl, age) {
                return v;
            }
        }
        match (age.checked_sub(ttl), self.max_stale) {
            (Some(stale), Some(n)) if stale <= secs(n) && !forbids_stale(obj) => {
                Verdict::ServeStale
            }
            _ => Verdict::AsStored,
        }
    }

    /// `Revalidate` when `no-cache`, `max-age` or `min-fresh` refuse a stored response of this
    /// lifetime and age.
    fn refusal(&self, ttl: Duration, age: Duration) -> Option<Verdict> {
        let secs = Duration::from_secs;
        let refused = self.no_cache
            || self.max_age.is_some_and(|n| n == 0 || age > secs(n))
            || self
                .min_fresh
                .is_some_and(|n| ttl.saturating_sub(age) < secs(n));
        refused.then_some(Verdict::Revalidate)
    }
}

/// Whether the stored response forbids being served stale whatever a viewer accepts:
/// `must-revalidate`, `proxy-revalidate`, `no-cache`, or `s-maxage` (which implies
/// `proxy-revalidate`, RFC 9111 §5.2.2.10).
fn forbids_stale(obj: &CachedObject) -> bool {
    let cc = CacheControl::parse(&obj.headers, header::CACHE_CONTROL);
    cc.must_revalidate || cc.no_cache || cc.s_maxage.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(v: &'static str) -> RequestDirectives {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
        RequestDirectives::parse(&h)
    }

    #[test]
    fn request_directives_parse_on_the_safe_side() {
        assert!(parse("No-Cache").no_cache);
        assert_eq!(parse("max-age=abc").max_age, Some(0));
        assert_eq!(parse("max-age=5, max-age=9").max_age, Some(5));
        assert_eq!(parse("min-fresh=-1").min_fresh, None);
        assert_eq!(parse("max-stale").max_stale, Some(MAX_DELTA_SECS));
        assert_eq!(parse("max-stale=1e3").max_stale, None);
        assert_eq!(parse("max-stale=\"60\"").max_stale, Some(60));
        assert!(parse("only-if-cached").only_if_cached);
        assert!(parse("max-age=5, NO-STORE").no_store);
        assert!(!parse("no-store=\"x\"").stores(ContentClass::Other));
        assert!(parse("no-store").stores(ContentClass::Segment));
        assert!(parse("no-cache").stores(ContentClass::Other));
        assert!(parse("foo, bar=\"no-cache\"").is_empty());
    }
}
