//! Collapsing: at most one origin fetch per key at a time. The first request for a key becomes
//! the leader and starts a fill; every concurrent request for the same key reads that fill.
//!
//! The driver's `FillGuard` removes the entry when the fill ends for any reason (finish, error,
//! panic, drop), so a key is never stuck; readers of the old fill keep their `Arc`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cache::fill::{Fill, FillError};

#[derive(Default)]
pub struct FillTable {
    map: Mutex<HashMap<String, Arc<Fill>>>,
}

/// The outcome of claiming a key.
pub enum Claim {
    /// No fetch was in flight: the caller must start one and release it through the guard.
    Leader(Arc<Fill>, FillGuard),
    /// A fetch is in flight: read it.
    Reader(Arc<Fill>),
}

impl FillTable {
    pub fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut map = self.map.lock();
        if let Some(f) = map.get(key) {
            return Claim::Reader(f.clone());
        }
        let fill = Fill::new();
        map.insert(key.to_string(), fill.clone());
        Claim::Leader(
            fill.clone(),
            FillGuard {
                table: self.clone(),
                key: key.to_string(),
                fill,
            },
        )
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
}

impl FillGuard {
    pub fn key(&self) -> &str {
        &self.key
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
}
