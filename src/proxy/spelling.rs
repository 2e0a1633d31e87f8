//! Spellings of one path that an origin may serve as one object: runs of `/` merged (nginx's
//! default, Apache's file mapping) and each segment's parameters (`;` to the segment's end)
//! left out, with the dot segments that uncovers resolved (servlet containers). Routing reads
//! paths in that form (`target::routing_path`); keys keep the path as written, since an origin
//! may also tell the spellings apart (S3 keys, matrix parameters), and sharing one object
//! between them could hand one spelling's bytes to another.
//!
//! A purge must not miss them, though: purging `/vod/a.ts` while `/vod//a.ts` stays cached
//! leaves the old bytes with whoever uses that spelling. So objects under such a spelling live
//! in the RAM tier only (never on disk, where keys are hashes and cannot be read back), and the
//! edge indexes their keys by routed form: a purge by URL removes the key and the odd spellings
//! indexed under it, a lookup each, and purges by prefix or tag (scans of the RAM tier anyway)
//! also match each RAM key's routed form (`Batch` in `proxy::tiers`). Any viewer can make an
//! odd spelling stored (`//vod/a.ts`), so the index is bounded: past `MAX_INDEXED` keys still in
//! RAM, URL purges scan the RAM tier instead, as every one did before the index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use parking_lot::Mutex;

/// Most odd-spelled keys indexed at once.
const MAX_INDEXED: usize = 65_536;

/// The odd-spelled keys the RAM tier may hold.
#[derive(Default)]
pub struct Spellings {
    index: Mutex<Index>,
    /// An odd spelling was stored while the index was full of keys still in RAM: URL purges
    /// scan the RAM tier from then on.
    overflowed: AtomicBool,
}

#[derive(Default)]
struct Index {
    /// Odd-spelled keys (variant suffix included) by their routed form's base key (before any
    /// `\0`): what a purge by URL names.
    by_routed: HashMap<String, Vec<String>>,
    keys: usize,
}

impl Spellings {
    /// Notes that `key` is being stored; returns whether it is an odd spelling (to be kept off
    /// the store). `in_ram` tells which indexed keys the RAM tier still holds, for when the
    /// index is full.
    pub fn note(&self, key: &str, in_ram: impl Fn(&str) -> bool) -> bool {
        let Some(routed) = routed(key) else {
            return false;
        };
        let base = routed.split('\0').next().unwrap_or(&routed).to_string();
        let mut ix = self.index.lock();
        if ix
            .by_routed
            .get(&base)
            .is_some_and(|v| v.iter().any(|k| k == key))
        {
            return true;
        }
        if ix.keys >= MAX_INDEXED {
            ix.by_routed.retain(|_, v| {
                v.retain(|k| in_ram(k));
                !v.is_empty()
            });
            ix.keys = ix.by_routed.values().map(Vec::len).sum();
            if ix.keys >= MAX_INDEXED {
                self.overflowed.store(true, Relaxed);
                return true;
            }
        }
        ix.by_routed.entry(base).or_default().push(key.to_string());
        ix.keys += 1;
        true
    }

    /// The odd-spelled keys indexed under the URL key `base`; `forget` drops them from the
    /// index (a hard purge removes them).
    pub fn of(&self, base: &str, forget: bool) -> Vec<String> {
        let mut ix = self.index.lock();
        let keys = if forget {
            ix.by_routed.remove(base).unwrap_or_default()
        } else {
            ix.by_routed.get(base).cloned().unwrap_or_default()
        };
        ix.keys -= if forget { keys.len() } else { 0 };
        keys
    }

    /// Whether purges by URL must scan the RAM tier (the index overflowed).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Relaxed)
    }

    /// Whether scans must match routed forms (an odd spelling may be in RAM).
    pub fn any(&self) -> bool {
        self.overflowed() || self.index.lock().keys > 0
    }
}

/// The path part of a key (`scheme|host|path?query\0variant`).
fn path_of(key: &str) -> Option<(usize, usize)> {
    let start = key.match_indices('|').nth(1)?.0 + 1;
    let end = key[start..]
        .find(['?', '\0'])
        .map_or(key.len(), |i| start + i);
    Some((start, end))
}

/// Where the key's path is, when it is spelled otherwise than routes read it.
fn odd_path(key: &str) -> Option<std::ops::Range<usize>> {
    let (a, b) = path_of(key)?;
    let p = &key[a..b];
    (p.contains("//") || p.contains(';')).then_some(a..b)
}

/// Whether the key's path is spelled otherwise than routes read it.
pub fn is_odd(key: &str) -> bool {
    odd_path(key).is_some()
}

/// `key` with its path in routed form, when that differs from the key.
pub fn routed(key: &str) -> Option<String> {
    let path = odd_path(key)?;
    let routed = crate::proxy::target::routing_path(&key[path.clone()]);
    Some(format!(
        "{}{}{}",
        &key[..path.start],
        routed,
        &key[path.end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_spellings_and_their_routed_forms() {
        assert_eq!(routed("http|h|/vod/a.ts"), None);
        assert_eq!(
            routed("http|h|/vod//a.ts").as_deref(),
            Some("http|h|/vod/a.ts")
        );
        assert_eq!(
            routed("http|h|//vod/a.ts?x=1\0gzip").as_deref(),
            Some("http|h|/vod/a.ts?x=1\0gzip")
        );
        assert_eq!(
            routed("http|h|/vod;a/b/..;/a.ts").as_deref(),
            Some("http|h|/vod/a.ts")
        );
        // Only the path counts: a `;` or `//` in the query is no odd spelling.
        assert!(!is_odd("http|h|/vod/a.ts?u=http://x;y"));
        assert!(is_odd("http|h|/vod/a.ts;v=1"));
    }

    /// The index holds what the RAM tier holds: keys it let go make room; only a full index of
    /// live keys sends URL purges back to scanning.
    #[test]
    fn the_index_is_bounded_and_overflows_only_with_live_keys() {
        let s = Spellings::default();
        assert!(!s.note("http|h|/vod/a.ts", |_| true), "not odd");
        assert!(!s.any());
        for i in 0..MAX_INDEXED {
            assert!(s.note(&format!("http|h|//vod/{i}.ts"), |_| true));
        }
        assert!(!s.overflowed());
        assert_eq!(s.of("http|h|/vod/7.ts", false), ["http|h|//vod/7.ts"]);
        // Evicted from RAM: pruned, and the new key indexed.
        assert!(s.note("http|h|/x;a/y.ts", |_| false));
        assert!(!s.overflowed());
        assert_eq!(s.of("http|h|/x/y.ts", true), ["http|h|/x;a/y.ts"]);
        assert!(s.of("http|h|/x/y.ts", false).is_empty(), "forgotten");
        for i in 0..MAX_INDEXED {
            s.note(&format!("http|h|//live/{i}.ts"), |_| true);
        }
        assert!(s.note("http|h|//one/more.ts", |_| true));
        assert!(s.overflowed(), "full of live keys");
        assert!(s.any());
    }
}
