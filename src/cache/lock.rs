//! Collapsing: at most one origin fetch per key at a time. The first request for a key becomes
//! the leader and starts a fill; every concurrent request for the same key reads that fill.
//!
//! The driver's `FillGuard` removes the entry when the fill ends for any reason (finish, error,
//! panic, drop), so a key is never stuck; readers of the old fill keep their `Arc`.
//!
//! Purges beat fills in flight: every claim records the purge epoch it started at, each purge
//! bumps the epoch and is remembered in a bounded list of recent purges, and a fill stores its
//! object only through [`FillTable::store_unless_purged`], which refuses when a purge newer than
//! the fill's start selects the key or one of the tags the response carried.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cache::fill::{Fill, FillError};

#[derive(Default)]
pub struct FillTable {
    map: Mutex<HashMap<String, Arc<Fill>>>,
    purges: Mutex<RecentPurges>,
}

/// What a purge selects, in cache-key terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeSelector {
    /// One key and its Vary variants (`key` + `\0` + variant).
    Key(String),
    /// Every key starting with this.
    Prefix(String),
    /// Every object carrying this tag.
    Tag(String),
}

impl PurgeSelector {
    pub fn matches(&self, key: &str, tags: &[String]) -> bool {
        match self {
            PurgeSelector::Key(k) => key
                .strip_prefix(k.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('\0')),
            PurgeSelector::Prefix(p) => key.starts_with(p.as_str()),
            PurgeSelector::Tag(t) => tags.iter().any(|x| x == t),
        }
    }
}

/// Most purges remembered for fills in flight; a fill older than the oldest one forgotten is
/// treated as purged (it stores nothing: safe, and only a fill outliving 4096 purges pays).
const RECENT_PURGES: usize = 4096;

#[derive(Default)]
struct RecentPurges {
    epoch: u64,
    /// (epoch it was made at, selector), oldest first.
    recent: std::collections::VecDeque<(u64, PurgeSelector)>,
    /// Epoch of the newest purge dropped from `recent`.
    forgotten: u64,
}

/// The outcome of claiming a key.
pub enum Claim {
    /// No fetch was in flight: the caller must start one and release it through the guard.
    Leader(Arc<Fill>, FillGuard),
    /// A fetch is in flight: read it.
    Reader(Arc<Fill>),
}

impl FillTable {
    /// Whether a fill for `key` is in flight (a reader claiming it now would join it).
    pub fn in_flight(&self, key: &str) -> bool {
        self.map.lock().contains_key(key)
    }

    pub fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut map = self.map.lock();
        if let Some(f) = map.get(key) {
            return Claim::Reader(f.clone());
        }
        let fill = Fill::new();
        map.insert(key.to_string(), fill.clone());
        let epoch = self.purges.lock().epoch;
        Claim::Leader(
            fill.clone(),
            FillGuard {
                table: self.clone(),
                key: key.to_string(),
                fill,
                epoch,
                store_mark: None,
            },
        )
    }

    /// Records purges (before the tiers are purged, so a fill storing after this sees them and
    /// one that stored before is removed by the purge itself).
    /// Fills in flight for a purged key or prefix are also detached from the table: their
    /// readers still get their bytes, new requests start a fill of their own.
    pub fn record_purges(&self, selectors: &[PurgeSelector]) {
        self.map
            .lock()
            .retain(|k, _| !selectors.iter().any(|s| s.matches(k, &[])));
        let mut p = self.purges.lock();
        p.epoch += 1;
        let epoch = p.epoch;
        for s in selectors.iter().cloned() {
            if p.recent.len() == RECENT_PURGES {
                if let Some((e, _)) = p.recent.pop_front() {
                    p.forgotten = e;
                }
            }
            p.recent.push_back((epoch, s));
        }
    }

    /// Runs `store` unless a purge made after `guard`'s fill started selects `key` or `tags`.
    /// The check and `store` run under the purge lock, so no purge slips in between.
    /// Returns whether it stored.
    pub fn store_unless_purged(
        &self,
        guard: &FillGuard,
        key: &str,
        tags: &[String],
        store: impl FnOnce(),
    ) -> bool {
        self.unless_purged_since(guard.epoch, key, tags, store)
    }

    /// The purge epoch now, for [`FillTable::unless_purged_since`] (a fill's claim takes it).
    pub fn purge_epoch(&self) -> u64 {
        self.purges.lock().epoch
    }

    /// Runs `keep` unless a purge made after `epoch` selects `key` or `tags`, under the purge
    /// lock; returns whether it ran. For what was read or fetched since `epoch`: a store read
    /// promoting its object to RAM, as a fill storing it.
    pub fn unless_purged_since(
        &self,
        epoch: u64,
        key: &str,
        tags: &[String],
        keep: impl FnOnce(),
    ) -> bool {
        let p = self.purges.lock();
        let purged = epoch < p.forgotten
            || p.recent
                .iter()
                .rev()
                .take_while(|(e, _)| *e > epoch)
                .any(|(_, s)| s.matches(key, tags));
        if !purged {
            keep();
        }
        !purged
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held by the fill driver. On drop: ends the fill (as abandoned, if nobody finished it) and
/// removes the table entry if it still points at this fill.
pub struct FillGuard {
    table: Arc<FillTable>,
    key: String,
    fill: Arc<Fill>,
    /// The purge epoch when the fill started.
    epoch: u64,
    /// The store's mark when the fill started (`Store::insert_since`).
    store_mark: Option<u64>,
}

impl FillGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The store's mark when the fill started: a push stored after it is not replaced by what
    /// this fill fetched.
    pub fn store_mark(&self) -> Option<u64> {
        self.store_mark
    }

    pub fn set_store_mark(&mut self, mark: Option<u64>) {
        self.store_mark = mark;
    }

    /// Lets new requests for the key start their own fill while this one goes on for the readers
    /// it has (a body too large to keep, which new readers could not start from the beginning).
    pub fn release(&self) {
        let mut map = self.table.map.lock();
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            map.remove(&self.key);
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.fill.finish(Err(FillError::Abandoned));
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_per_key_and_release_on_drop() {
        let table = Arc::new(FillTable::default());
        let Claim::Leader(fill, guard) = table.claim("k") else {
            panic!("first claim must lead")
        };
        assert!(matches!(table.claim("k"), Claim::Reader(f) if Arc::ptr_eq(&f, &fill)));
        assert!(matches!(table.claim("other"), Claim::Leader(..)));
        drop(guard);
        assert!(fill.is_finished());
        assert!(matches!(table.claim("k"), Claim::Leader(..)));
    }

    #[test]
    fn a_purge_after_the_claim_stops_the_store_and_one_before_does_not() {
        let table = Arc::new(FillTable::default());
        table.record_purges(&[PurgeSelector::Prefix("http|h|/a".into())]);
        let Claim::Leader(_, guard) = table.claim("http|h|/a/1") else {
            panic!("first claim must lead")
        };
        assert!(table.store_unless_purged(&guard, "http|h|/a/1", &[], || {}));
        table.record_purges(&[PurgeSelector::Key("http|h|/a/1".into())]);
        assert!(!table.store_unless_purged(&guard, "http|h|/a/1\0gzip", &[], || {}));
        assert!(table.store_unless_purged(&guard, "http|h|/a/10", &[], || {}));
        table.record_purges(&[PurgeSelector::Tag("t".into())]);
        assert!(!table.store_unless_purged(&guard, "http|h|/b", &["t".into()], || {}));
    }
}
