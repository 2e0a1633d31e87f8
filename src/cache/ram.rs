//! The RAM tier: a byte-bounded cache of whole objects (`quick_cache`, S3-FIFO-like eviction,
//! weighted by object bytes). Holds parsed objects, so a hit costs no header parsing and the body
//! goes to the socket as the same `Bytes`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::cache::object::CachedObject;
use crate::zerocopy::footprint;

/// Weighs an object by the memory it holds: with zero-copy bodies on, a body's huge-page
/// rounding counts too (`zerocopy::footprint`), so `ram_size` stays a bound on memory.
#[derive(Clone)]
struct ByBytes {
    zero_copy: bool,
}

impl Weighter<String, Arc<CachedObject>> for ByBytes {
    fn weight(&self, key: &String, obj: &Arc<CachedObject>) -> u64 {
        let len = obj.body.len();
        let rounding = if self.zero_copy {
            footprint(len) - len
        } else {
            0
        };
        obj.weight() + (rounding + key.len()) as u64
    }
}

/// Byte-bounded RAM tier keyed by the (variant) cache key.
pub struct RamTier {
    cache: Cache<String, Arc<CachedObject>, ByBytes, DefaultHashBuilder, Variants>,
    variants: Variants,
}

/// Per base key, how many entries the tier holds under `base\0…` (`Vary` variants, slices),
/// kept on insert, removal and eviction (a replaced value counts as evicted): whether a key has
/// variants here is one lookup, not a scan of the tier.
#[derive(Clone, Default)]
struct Variants(Arc<Mutex<HashMap<String, u32>>>);

impl Variants {
    fn added(&self, key: &str) {
        if let Some(base) = variant_base(key) {
            *self.0.lock().entry(base.to_string()).or_insert(0) += 1;
        }
    }

    fn removed(&self, key: &str) {
        if let Some(base) = variant_base(key) {
            let mut m = self.0.lock();
            if let Some(n) = m.get_mut(base) {
                *n -= 1;
                if *n == 0 {
                    m.remove(base);
                }
            }
        }
    }
}

impl Lifecycle<String, Arc<CachedObject>> for Variants {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut (), key: String, _: Arc<CachedObject>) {
        self.removed(&key);
    }
}

/// The key `key` is a variant (or slice) of, if it is one: its part before the first `\0`.
fn variant_base(key: &str) -> Option<&str> {
    key.find('\0').map(|at| &key[..at])
}

impl RamTier {
    /// `capacity` bytes in all; `zero_copy`: large bodies live in zero-copy memory (their
    /// huge-page rounding is weighed). Shards are sized so that one shard still holds the
    /// largest cacheable object (quick_cache refuses items larger than a shard).
    pub fn new(capacity: u64, max_object: u64, zero_copy: bool) -> RamTier {
        let mut shards = 16u64;
        while shards > 1 && capacity / shards < max_object.saturating_mul(2) {
            shards /= 2;
        }
        let opts = OptionsBuilder::new()
            .estimated_items_capacity((capacity / (256 << 10)).clamp(1024, 1 << 20) as usize)
            .weight_capacity(capacity)
            .shards(shards as usize)
            .build()
            .expect("quick_cache options are valid");
        let variants = Variants::default();
        RamTier {
            cache: Cache::with_options(
                opts,
                ByBytes { zero_copy },
                Default::default(),
                variants.clone(),
            ),
            variants,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.cache.get(key)
    }

    /// Whether `key` is held, without counting it as a hit.
    pub fn contains(&self, key: &str) -> bool {
        self.peek(key).is_some()
    }

    /// The object held under `key`, without counting it as a hit.
    pub fn peek(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.cache.peek(key)
    }

    pub fn insert(&self, key: String, obj: Arc<CachedObject>) {
        // Counted on every insert: quick_cache reports the value an insert replaces as evicted
        // (and a value too large to keep, at once).
        self.variants.added(&key);
        self.cache.insert(key, obj);
    }

    pub fn remove(&self, key: &str) -> bool {
        let removed = self.cache.remove(key).is_some();
        if removed {
            self.variants.removed(key);
        }
        removed
    }

    /// Whether the tier may hold entries under `base\0…` (variants or slices of `base`).
    pub fn has_variants(&self, base: &str) -> bool {
        self.variants.0.lock().contains_key(base)
    }

    /// Removes every object whose key satisfies `f`; returns how many.
    pub fn remove_where(&self, f: impl Fn(&str, &CachedObject) -> bool) -> usize {
        let n = std::sync::atomic::AtomicUsize::new(0);
        self.cache.retain(|k, v| {
            let drop = f(k, v);
            if drop {
                self.variants.removed(k);
            }
            n.fetch_add(drop as usize, std::sync::atomic::Ordering::Relaxed);
            !drop
        });
        n.into_inner()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    pub fn capacity(&self) -> u64 {
        self.cache.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::ContentClass;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use std::time::Duration;

    fn obj(len: usize) -> Arc<CachedObject> {
        Arc::new(CachedObject::for_push(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![7u8; len]),
            ContentClass::Segment,
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn variants_are_known_by_their_base_key_until_the_last_one_goes() {
        let ram = RamTier::new(4 << 20, 1 << 20, false);
        ram.insert("k\0a".into(), obj(100));
        ram.insert("k\0a".into(), obj(100));
        ram.insert("k\0b".into(), obj(100));
        ram.insert("k".into(), obj(100));
        assert!(ram.has_variants("k"));
        assert!(!ram.has_variants("k\0a") && !ram.has_variants("j"));
        assert!(ram.remove("k\0a"));
        assert!(ram.has_variants("k"), "k\\0b is left");
        assert_eq!(ram.remove_where(|k, _| k.starts_with("k\0")), 1);
        assert!(!ram.has_variants("k"));
        // Evictions: variants among 12 MiB of inserts into a 4 MiB tier. Whichever went, the
        // count says whether some of a base's variants are still held.
        for i in 0..20 {
            ram.insert(format!("e{i}\0x"), obj(16 << 10));
        }
        for i in 0..200 {
            ram.insert(format!("f{i}"), obj(64 << 10));
            ram.get(&format!("f{i}"));
            ram.get(&format!("f{i}"));
        }
        let held = (0..20)
            .filter(|i| ram.contains(&format!("e{i}\0x")))
            .count();
        let known = (0..20)
            .filter(|i| ram.has_variants(&format!("e{i}")))
            .count();
        assert!(held < 20, "nothing was evicted: {held}");
        assert_eq!(
            held, known,
            "an evicted variant is forgotten, a held one known"
        );
    }

    #[test]
    fn bounded_in_bytes_not_entries() {
        let ram = RamTier::new(8 << 20, 1 << 20, false);
        for i in 0..64 {
            ram.insert(format!("k{i}"), obj(512 << 10));
        }
        assert!(ram.bytes() <= 8 << 20, "{} bytes", ram.bytes());
        assert!(ram.len() < 64 && ram.len() >= 8, "{} objects", ram.len());
        // A large object still fits a shard.
        ram.insert("big".into(), obj(1 << 20));
        assert!(ram.get("big").is_some());
    }

    #[test]
    fn zero_copy_bodies_weigh_their_huge_page_rounding() {
        let len = 1536 << 10;
        let plain = RamTier::new(64 << 20, 4 << 20, false);
        let mapped = RamTier::new(64 << 20, 4 << 20, true);
        plain.insert("k".into(), obj(len));
        mapped.insert("k".into(), obj(len));
        assert_eq!(
            mapped.bytes() - plain.bytes(),
            (footprint(len) - len) as u64,
            "the rounding is weighed once, only with zero copy on"
        );
    }
}
