//! The RAM tier: a byte-bounded cache of whole objects (`quick_cache`, S3-FIFO-like eviction,
//! weighted by object bytes). Holds parsed objects, so a hit costs no header parsing and the body
//! goes to the socket as the same `Bytes`.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

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
    cache: Cache<String, Arc<CachedObject>, ByBytes>,
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
        RamTier {
            cache: Cache::with_options(
                opts,
                ByBytes { zero_copy },
                Default::default(),
                Default::default(),
            ),
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
        self.cache.insert(key, obj);
    }

    pub fn remove(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Removes every object whose key satisfies `f`; returns how many.
    pub fn remove_where(&self, f: impl Fn(&str, &CachedObject) -> bool) -> usize {
        let n = std::sync::atomic::AtomicUsize::new(0);
        self.cache.retain(|k, v| {
            let drop = f(k, v);
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
