//! Range on a cold object (`cache.range_passthrough_above`): a viewer's `Range` must not make
//! the edge fetch a whole large object it has never been asked for. The rule, kept simple so it
//! can be reasoned about:
//!
//! - a GET with `Range` that finds no copy of its key (not even a stale one) and no fill in
//!   flight is passed through to the origin with the viewer's `Range`, uncached
//!   (`Cache-Status: ...; fwd=bypass; detail=range-pass`): the origin sends the range, nothing
//!   more;
//! - the key is remembered in a byte-bounded "seen" set (`cache.index_memory`); the next request
//!   for it (a second viewer, or the same one again: the object is wanted) fills the whole
//!   object as usual and later ranges are answered from the cache;
//! - a Range request that finds a fill in flight joins it (no extra origin bytes).
//!
//! So each first Range request costs the origin its range only; a whole-object fill happens
//! once a key is asked for twice within the seen set's memory. `0` disables the rule (every
//! Range miss fills the whole object, bounded by `cache.max_object_size`); any other value turns
//! it on (the size is not known before the origin answers, so it cannot pick objects by size).
//!
//! Sliced fetching (`cache.slice_size`, another module) answers ranges from slices of the object;
//! where it applies, this rule should stand aside: it is consulted only from the one hook in
//! `request.rs`, before the fill is claimed.

use std::sync::atomic::Ordering::Relaxed;

use http::header;
use http::{Method, Response};

use crate::cache::status::CacheStatus;
use crate::http::body::Body;
use crate::proxy::edge::{SparseCache, Weigh};
use crate::proxy::error::EdgeError;
use crate::proxy::request::Req;

/// Keys passed through once with a Range (bounded in bytes like the other indexes).
pub type Seen = SparseCache<()>;

impl Weigh for () {
    fn weight(&self) -> u64 {
        0
    }
}

/// Whether this request's miss passes through with its range instead of filling. `cold`: no
/// copy of the key, not even stale (a stale copy is revalidated, usually for a 304).
pub fn passes(req: &Req<'_>, key: &str, cold: bool) -> bool {
    let edge = req.edge;
    if edge.config.abuse.range_passthrough_above == 0
        || !cold
        || req.parts.method != Method::GET
        || !req.parts.headers.contains_key(header::RANGE)
    {
        return false;
    }
    if edge.fills.in_flight(key) {
        return false;
    }
    if edge.range_seen.get(key).is_some() {
        // Asked for before: wanted, so it is filled (and the seen mark is spent).
        edge.range_seen.remove(key);
        return false;
    }
    edge.range_seen.insert(key.to_string(), ());
    true
}

/// The pass-through itself: the viewer's request (its `Range` included) to the origin, uncached.
pub async fn pass_range(req: &Req<'_>) -> Result<Response<Body>, EdgeError> {
    req.edge
        .metrics
        .abuse
        .range_passthrough
        .fetch_add(1, Relaxed);
    crate::proxy::pass::pass(req, None, "range-pass", CacheStatus::Bypass).await
}
