//! Who keeps each pushed key pinned. The store has one pin bit per key; ingest runs (one asset
//! of a job, or of `vedge ingest --store`) count their holds here, so one run's release never
//! unpins an object another run, a `PUT /admin/objects` or an earlier process still keeps.
//!
//! A run takes a hold on a key before it stores or adopts the object (so a run that starts
//! later always sees it), and gives its holds back when its asset fails or is deleted. The last
//! hold given back unpins the key, unless someone outside every run pinned it too: a pin found
//! when the first hold is taken (a push before a restart, a `PUT`, a forgotten job) or a `PUT`
//! while runs hold the key. Those pins are never released by a run.

use std::collections::HashMap;

use parking_lot::Mutex;

/// The holds of one process's ingest runs (one table per store or edge).
#[derive(Debug, Default)]
pub struct Holds {
    table: Mutex<HashMap<String, Holders>>,
}

#[derive(Debug, Default)]
struct Holders {
    /// Holds taken by runs and not given back.
    runs: u32,
    /// Pinned by someone outside every run: the last run's release leaves the pin alone.
    outside: bool,
}

impl Holds {
    /// Takes one hold on `key`. `pinned` says whether the key is pinned now; it is asked only
    /// when no run holds the key, under the table's lock, so no release can unpin in between.
    pub fn hold(&self, key: &str, pinned: impl FnOnce() -> bool) {
        let mut table = self.table.lock();
        let h = table.entry(key.to_string()).or_default();
        if h.runs == 0 {
            h.outside = pinned();
        }
        h.runs += 1;
    }

    /// A push of `key` outside any run (`PUT /admin/objects`): kept pinned after the runs
    /// holding it now give their holds back. (With no run holding it, the next run's first
    /// hold finds the pin by itself.)
    pub fn pushed(&self, key: &str) {
        if let Some(h) = self.table.lock().get_mut(key) {
            h.outside = true;
        }
    }

    /// Gives back one hold per key (a key listed twice was held twice) and calls `unpin` for
    /// each key that nobody holds any more and nobody outside the runs pinned. `unpin` runs
    /// under the table's lock, so a hold taken meanwhile cannot lose its pin.
    pub fn release(&self, keys: &[String], mut unpin: impl FnMut(&str)) {
        let mut table = self.table.lock();
        for k in keys {
            let Some(h) = table.get_mut(k) else {
                continue;
            };
            h.runs = h.runs.saturating_sub(1);
            if h.runs == 0 {
                if !h.outside {
                    unpin(k);
                }
                table.remove(k);
            }
        }
    }

    /// Gives back holds without unpinning: the objects stay pinned as if pushed outside any
    /// run (a finished job forgotten from the admin API's table).
    pub fn forget(&self, keys: &[String]) {
        let mut table = self.table.lock();
        for k in keys {
            if let Some(h) = table.get_mut(k) {
                h.runs = h.runs.saturating_sub(1);
                h.outside = true;
                if h.runs == 0 {
                    table.remove(k);
                }
            }
        }
    }

    /// Keys some run holds (for tests and metrics).
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Holds;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_last_hold_unpins_and_an_outside_pin_is_never_released() {
        let holds = Holds::default();
        let mut unpinned = Vec::new();
        // Two runs hold "a"; "b" was pinned before any run held it.
        holds.hold("a", || false);
        holds.hold("a", || unreachable!("asked only for the first hold"));
        holds.hold("b", || true);
        holds.release(&keys(&["a", "b"]), |k| unpinned.push(k.to_string()));
        assert!(
            unpinned.is_empty(),
            "one run still holds a; b was pinned outside: {unpinned:?}"
        );
        holds.release(&keys(&["a"]), |k| unpinned.push(k.to_string()));
        assert_eq!(unpinned, keys(&["a"]));
        assert!(holds.is_empty());
    }

    #[test]
    fn a_put_while_runs_hold_a_key_outlives_them_and_forget_keeps_the_pin() {
        let holds = Holds::default();
        let mut unpinned = Vec::new();
        holds.hold("a", || false);
        holds.pushed("a");
        holds.release(&keys(&["a"]), |k| unpinned.push(k.to_string()));
        holds.hold("c", || false);
        holds.forget(&keys(&["c"]));
        holds.release(&keys(&["c"]), |k| unpinned.push(k.to_string()));
        assert!(unpinned.is_empty(), "{unpinned:?}");
        assert!(holds.is_empty());
    }
}
