//! How many `Vary` variants one object may have stored: a flood of distinct values of a varied
//! request header (each its own variant key) would otherwise fill the RAM tier with copies of
//! one object and evict everything else. Past `MAX_VARIANTS` distinct variants of a base key,
//! a new variant is still answered from its fill but not stored (`vedge_vary_limit_total`).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::proxy::edge::{Edge, SparseCache, Weigh};

/// Distinct variants stored per base key.
pub const MAX_VARIANTS: usize = 64;

/// Per base key: hashes of the variants stored (bounded in bytes like the other indexes).
pub type Variants = SparseCache<Arc<Mutex<HashSet<u64>>>>;

impl Weigh for Arc<Mutex<HashSet<u64>>> {
    fn weight(&self) -> u64 {
        // The set at its cap: what it may grow to after it was weighed.
        64 + MAX_VARIANTS as u64 * 16
    }
}

/// Whether the variant keyed `store_key` of `base_key` may be stored: one already counted, or
/// fewer than `MAX_VARIANTS` counted so far.
pub fn admit(edge: &Edge, base_key: &str, store_key: &str) -> bool {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    store_key.hash(&mut h);
    let hash = h.finish();
    let set = edge
        .variants
        .get_or_insert_with(base_key, || Arc::new(Mutex::new(HashSet::new())));
    let mut set = set.lock();
    if set.contains(&hash) {
        return true;
    }
    if set.len() >= MAX_VARIANTS {
        edge.metrics
            .abuse
            .vary_limit
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return false;
    }
    set.insert(hash);
    true
}
