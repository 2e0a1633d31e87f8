//! Prefix tombstones: an object whose key starts with a purged prefix and whose sequence lies
//! below the purge's mark is dead. They are checked on every lookup (under the state lock) and
//! dropped once every region older than them has been reused (`writer::prune_marks`).
//!
//! Most of them are not free-form prefixes but a key's variants: the edge stores `Vary`
//! variants and slices under `key` + `\0` + suffix, and a purge of one key removes
//! `key\0*` with it. An asset purge names tens of thousands of keys, so those live in a map
//! looked up by the key's part up to its first `\0` (one lookup per read); only free-form
//! prefixes, which operators write by hand, are scanned.
//!
//! Viewers cause variant marks too (a successful POST invalidates its URI's variants, and the
//! store cannot tell whether it holds any), so the map is bounded: past `MAX_VARIANT_MARKS` it
//! folds into one mark for every variant key (`all_variants`), older variants of every key dead
//! (they are fetched again), memory bounded.

use std::collections::HashMap;

/// Variant marks held one by one before they fold into one for all (`PrefixMarks::add`).
const MAX_VARIANT_MARKS: usize = 65_536;

/// How a mark for every variant key is written in a snapshot's prefix list: no key starts with
/// `\0`, so as a prefix it selects nothing an older reader would misread.
const ALL_VARIANTS: &[u8] = b"\0";

pub(crate) struct PrefixMarks {
    /// Free-form prefixes and their marks, scanned on lookup.
    free: Vec<(Vec<u8>, u64)>,
    /// Variant prefixes (`key\0`, no other `\0`) and their marks.
    variants: HashMap<Vec<u8>, u64>,
    /// Every variant key below this mark is dead (the map folded, see `MAX_VARIANT_MARKS`).
    all_variants: Option<u64>,
    max_variants: usize,
}

impl Default for PrefixMarks {
    fn default() -> Self {
        PrefixMarks::with_max_variants(MAX_VARIANT_MARKS)
    }
}

/// The variant prefix `key` falls under: its bytes up to and including the first `\0`.
fn variant_prefix(key: &[u8]) -> Option<&[u8]> {
    key.iter().position(|&b| b == 0).map(|at| &key[..=at])
}

/// Whether `prefix` is a variant prefix: its only `\0` is its last byte.
fn is_variant_prefix(prefix: &[u8]) -> bool {
    variant_prefix(prefix).is_some_and(|p| p.len() == prefix.len())
}

impl PrefixMarks {
    fn with_max_variants(max_variants: usize) -> PrefixMarks {
        PrefixMarks {
            free: Vec::new(),
            variants: HashMap::new(),
            all_variants: None,
            max_variants,
        }
    }

    /// Records that objects under `prefix` below `mark` are dead. A mark already held for a
    /// prefix of it that is at least as new covers it; marks it covers (under it, no newer)
    /// go.
    pub(crate) fn add(&mut self, prefix: &[u8], mark: u64) {
        let covered = |q: &[u8], m: u64| prefix.starts_with(q) && m >= mark;
        if self.free.iter().any(|(q, m)| covered(q, *m)) {
            return;
        }
        if prefix == ALL_VARIANTS {
            self.fold(mark);
            return;
        }
        if is_variant_prefix(prefix) {
            if self.all_variants.is_some_and(|m| m >= mark) {
                return;
            }
            if self.variants.len() >= self.max_variants && !self.variants.contains_key(prefix) {
                self.fold(mark);
                return;
            }
            match self.variants.get_mut(prefix) {
                Some(m) => *m = (*m).max(mark),
                None => {
                    self.variants.insert(prefix.to_vec(), mark);
                }
            }
            return;
        }
        let covers = |q: &[u8], m: u64| q.starts_with(prefix) && m <= mark;
        self.free.retain(|(q, m)| !covers(q, *m));
        self.variants.retain(|q, m| !covers(q, *m));
        self.free.push((prefix.to_vec(), mark));
    }

    /// Every variant key below `mark` is dead: the map's marks (all older) go into one.
    fn fold(&mut self, mark: u64) {
        self.variants.clear();
        self.all_variants = Some(self.all_variants.map_or(mark, |m| m.max(mark)));
    }

    /// Whether an object under `key` at sequence `seq` is dead.
    pub(crate) fn dead(&self, key: &[u8], seq: u64) -> bool {
        if self
            .all_variants
            .is_some_and(|m| seq < m && variant_prefix(key).is_some())
        {
            return true;
        }
        let by_variant = || {
            variant_prefix(key)
                .and_then(|p| self.variants.get(p))
                .is_some_and(|m| seq < *m)
        };
        (!self.variants.is_empty() && by_variant())
            || self
                .free
                .iter()
                .any(|(p, m)| seq < *m && key.starts_with(p))
    }

    /// Drops the marks older than generation `min_gen`: nothing they could select is left.
    pub(crate) fn prune(&mut self, min_gen: u64) {
        self.free.retain(|(_, m)| (m >> 32) >= min_gen);
        self.variants.retain(|_, m| (*m >> 32) >= min_gen);
        self.all_variants = self.all_variants.filter(|m| (m >> 32) >= min_gen);
    }

    pub(crate) fn len(&self) -> usize {
        self.free.len() + self.variants.len() + usize::from(self.all_variants.is_some())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every mark, for the index snapshot.
    pub(crate) fn to_vec(&self) -> Vec<(Vec<u8>, u64)> {
        let variants = self.variants.iter().map(|(p, m)| (p.clone(), *m));
        let all = self.all_variants.map(|m| (ALL_VARIANTS.to_vec(), m));
        self.free
            .iter()
            .cloned()
            .chain(variants)
            .chain(all)
            .collect()
    }

    /// The marks of a snapshot.
    pub(crate) fn from_vec(marks: Vec<(Vec<u8>, u64)>) -> PrefixMarks {
        let mut out = PrefixMarks::default();
        for (p, m) in marks {
            out.add(&p, m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_marks_select_the_key_s_variants_only_below_their_mark() {
        let mut m = PrefixMarks::default();
        m.add(b"a/x\0", 10);
        assert!(m.dead(b"a/x\0accept-encoding=gzip", 9));
        assert!(m.dead(b"a/x\0\x01slice=3", 9));
        assert!(!m.dead(b"a/x\0v", 10), "written after the purge");
        assert!(!m.dead(b"a/x", 9), "the key itself is purged by key");
        assert!(!m.dead(b"a/xy\0v", 9));
        assert!(!m.dead(b"a/\0v", 9));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn free_prefixes_cover_variant_marks_and_are_covered_by_newer_ones() {
        let mut m = PrefixMarks::default();
        for (i, k) in ["a/1\0", "a/2\0", "b/1\0"].iter().enumerate() {
            m.add(k.as_bytes(), 10 + i as u64);
        }
        m.add(b"a/", 20);
        assert_eq!(m.len(), 2, "a/'s variant marks are covered");
        assert!(m.dead(b"a/1\0v", 19));
        assert!(m.dead(b"b/1\0v", 11));
        m.add(b"a/3\0", 15);
        assert_eq!(m.len(), 2, "an older mark under a/ adds nothing");
        m.add(b"a/b", 5);
        assert_eq!(m.len(), 2);
        m.add(b"a/b", 30);
        assert!(m.dead(b"a/b/c", 25));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn variant_marks_past_the_bound_fold_into_one_for_every_variant_key() {
        let mut m = PrefixMarks::with_max_variants(3);
        for i in 0..3u64 {
            m.add(format!("k{i}\0").as_bytes(), 10 + i);
        }
        assert_eq!(m.len(), 3);
        m.add(b"k9\0", 20);
        assert_eq!(m.len(), 1, "folded");
        assert!(m.dead(b"k0\0v", 12) && m.dead(b"other\0v", 19));
        assert!(!m.dead(b"k0\0v", 20), "written after the fold");
        assert!(!m.dead(b"k0", 5), "a key without variant suffix");
        let back = PrefixMarks::from_vec(m.to_vec());
        assert!(back.dead(b"other\0v", 19) && !back.dead(b"plain", 1));
        m.add(b"k1\0", 15);
        assert_eq!(m.len(), 1, "an older variant mark adds nothing");
        m.prune(1);
        assert!(m.is_empty());
    }

    #[test]
    fn pruning_and_snapshots_keep_what_is_still_needed() {
        let mut m = PrefixMarks::default();
        m.add(b"k\0", 1 << 32);
        m.add(b"p/", 3 << 32);
        m.add(b"q\0", 4 << 32);
        let back = PrefixMarks::from_vec(m.to_vec());
        assert_eq!(back.len(), 3);
        assert!(back.dead(b"k\0v", 5));
        m.prune(3);
        assert_eq!(m.len(), 2);
        assert!(!m.dead(b"k\0v", 5));
        assert!(m.dead(b"q\0v", 5) && m.dead(b"p/z", 5));
    }
}
