//! How many `Vary` variants one object may have stored: a flood of distinct values of a varied
//! request header (each its own variant key) would otherwise fill the RAM tier with copies of
//! one object and evict everything else. Past `MAX_VARIANTS` distinct variants of a base key,
//! a new variant is still answered from its fill but not stored (`vedge_vary_limit_total`).
//! The variants counted are the ones still in a tier: at the cap, those purged or evicted since
//! they were stored are forgotten first, so a flood that has aged out of the cache does not keep
//! later genuine variants out for as long as the object's entry lives.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::proxy::edge::{Edge, SparseCache, Weigh};

/// Distinct variants stored per base key.
pub const MAX_VARIANTS: usize = 64;

/// Bytes of variant suffixes kept per base key (64 bytes each on average): what bounds the
/// set's weight, since long header values make long suffixes.
const MAX_SUFFIX_BYTES: usize = MAX_VARIANTS * 64;

/// The variants of one base key that were stored: the part of each store key after the base
/// key (the normalised values of the varied headers), so their presence in the tiers can be
/// checked again when the set is full.
#[derive(Default)]
pub struct VariantSet {
    suffixes: Mutex<Suffixes>,
}

#[derive(Default)]
struct Suffixes {
    set: HashSet<Box<str>>,
    bytes: usize,
}

impl Suffixes {
    fn full(&self, adding: usize) -> bool {
        self.set.len() >= MAX_VARIANTS || self.bytes + adding > MAX_SUFFIX_BYTES
    }
}

/// Per base key: the variants stored (bounded in bytes like the other indexes).
pub type Variants = SparseCache<Arc<VariantSet>>;

impl Weigh for Arc<VariantSet> {
    fn weight(&self) -> u64 {
        // The set at its cap: what it may grow to after it was weighed (the index needs one
        // weight per value for as long as it holds it).
        64 + MAX_VARIANTS as u64 * 32 + MAX_SUFFIX_BYTES as u64
    }
}

/// Whether the variant keyed `store_key` of `base_key` may be stored: one already counted, or
/// fewer than `MAX_VARIANTS` of the counted ones still in a tier.
pub fn admit(edge: &Edge, base_key: &str, store_key: &str) -> bool {
    let suffix = store_key.strip_prefix(base_key).unwrap_or(store_key);
    let set = edge
        .variants
        .get_or_insert_with(base_key, || Arc::new(VariantSet::default()));
    let mut suffixes = set.suffixes.lock();
    if suffixes.set.contains(suffix) {
        return true;
    }
    if suffixes.full(suffix.len()) {
        // Forget the variants no tier holds any more (purged, evicted).
        let Suffixes { set, bytes } = &mut *suffixes;
        set.retain(|s| {
            let keep = in_a_tier(edge, &format!("{base_key}{s}"));
            if !keep {
                *bytes -= s.len();
            }
            keep
        });
    }
    if suffixes.full(suffix.len()) {
        edge.metrics
            .abuse
            .vary_limit
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return false;
    }
    suffixes.bytes += suffix.len();
    suffixes.set.insert(suffix.into());
    true
}

/// Whether the RAM tier or the store holds `key` (neither read nor counted as a hit).
fn in_a_tier(edge: &Edge, key: &str) -> bool {
    edge.ram.contains(key)
        || edge
            .store
            .as_ref()
            .is_some_and(|s| s.contains(key.as_bytes()))
}
