//! Range on a cold object (`cache.range_passthrough_above`, default 8 MiB): a viewer's `Range`
//! must not make the edge fetch a whole large object nobody else asked for. The rule:
//!
//! - a GET with `Range` that finds no copy of its key (not even a stale one) starts the fill as
//!   usual (whole object, so a small one is cached at once), marked as a *range probe*;
//! - when the origin's head arrives, a probe whose body is larger than `range_passthrough_above`
//!   (or of unknown length) is dropped before its body is read (what was fetched beyond the
//!   range is at most what sat in socket buffers); the viewer, and any reader that joined, are
//!   passed through to the origin with their own request, `Range` included, uncached
//!   (`Cache-Status: ...; fwd=bypass; detail=range-pass`); a reader that joined *without* a
//!   `Range` wants the whole object, which is exactly what the rule does for a wanted key: the
//!   probe releases the key first and those readers claim it again, one collapsed whole-object
//!   fill between them (`refill`), instead of one whole-object pass each;
//! - the key is remembered in a byte-bounded "seen" set (`cache.index_memory`): the next request
//!   for it (the object is wanted) fills the whole object as usual, and later ranges are served
//!   from the cache. A Range request that finds a fill in flight joins it.
//!
//! `0` disables the rule: every Range miss fills the whole object (bounded by
//! `cache.max_object_size`). Sliced fetching (`cache.slice_size`, another module) answers ranges
//! from slices, so this rule stands aside for a sliced object; it still judges the first slice
//! fill's answer when that is the whole object (an object that fits one slice, whose 206 comes
//! back as the 200 it is, or an origin that ignores `Range`), and the slice path sends waiters
//! without a `Range` to claim again the same way (`slice::not_sliced`).

use http::{header, Method, StatusCode};

use crate::proxy::edge::{SparseCache, Weigh};
use crate::proxy::request::Req;

/// Keys probed once with a Range (bounded in bytes like the other indexes).
pub type Seen = SparseCache<()>;

impl Weigh for () {
    fn weight(&self) -> u64 {
        0
    }
}

/// Whether the fill this request leads is a range probe: a GET with `Range`, no copy of the key
/// (`cold`), the rule on, and the key not asked for with a Range before (the mark is set here
/// and spent by the next request, which fills the whole object).
pub fn probe(req: &Req<'_>, base_key: &str, cold: bool) -> bool {
    let edge = req.edge;
    if edge.config.abuse.range_passthrough_above == 0
        || !cold
        || req.parts.method != Method::GET
        || !req.parts.headers.contains_key(header::RANGE)
    {
        return false;
    }
    if edge.range_seen.get(base_key).is_some() {
        edge.range_seen.remove(base_key);
        return false;
    }
    edge.range_seen.insert(base_key.to_string(), ());
    true
}

/// The pass reason of a probe whose answer was too large.
pub const REASON: &str = "range-pass";

/// Whether a collapsed reader told to pass for `reason` should instead claim the key again: a
/// viewer without `Range` on a probe dropped as too large (the probe released the key).
pub fn refill(req: &Req<'_>, reason: &str) -> bool {
    reason == REASON && !req.parts.headers.contains_key(header::RANGE)
}

/// Whether a probe's origin answer is too large to fetch whole for one viewer's range: a 200
/// whose length is unknown or above `limit`.
pub fn too_large(status: StatusCode, content_length: Option<u64>, limit: u64) -> bool {
    status == StatusCode::OK && content_length.is_none_or(|n| n > limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_or_unknown_200s_are_too_large() {
        assert!(too_large(StatusCode::OK, None, 10));
        assert!(too_large(StatusCode::OK, Some(11), 10));
        assert!(!too_large(StatusCode::OK, Some(10), 10));
        assert!(!too_large(StatusCode::NOT_FOUND, None, 10));
    }
}
