//! Spellings of one path that an origin may serve as one object: runs of `/` merged (nginx's
//! default, Apache's file mapping) and each segment's parameters (`;` to the segment's end)
//! left out, with the dot segments that uncovers resolved (servlet containers). Routing reads
//! paths in that form (`target::routing_path`); keys keep the path as written, since an origin
//! may also tell the spellings apart (S3 keys, matrix parameters), and sharing one object
//! between them could hand one spelling's bytes to another.
//!
//! A purge must not miss them, though: purging `/vod/a.ts` while `/vod//a.ts` stays cached
//! leaves the old bytes with whoever uses that spelling. So objects under such a spelling live
//! in the RAM tier only (never on disk, where keys are hashes and cannot be read back), the edge
//! counts that it has stored some, and while it has, purges by URL or prefix also look at each
//! RAM key's routed form (`Batch` in `proxy::tiers`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Whether any object stored under an odd spelling may still be in the RAM tier.
#[derive(Default)]
pub struct Spellings {
    seen: AtomicBool,
}

impl Spellings {
    /// Notes that `key` is being stored; returns whether it is an odd spelling (to be kept off
    /// the store).
    pub fn note(&self, key: &str) -> bool {
        let odd = is_odd(key);
        if odd {
            self.seen.store(true, Relaxed);
        }
        odd
    }

    /// Whether purges must look at routed forms (an odd spelling was ever stored).
    pub fn any(&self) -> bool {
        self.seen.load(Relaxed)
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
}
