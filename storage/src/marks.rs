//! Prefix tombstones: an object whose key starts with a purged prefix and whose sequence lies
//! below the purge's mark is dead. They are checked on every lookup (under the state lock) and
//! dropped once every region older than them has been reused (`writer::prune_marks`).
//!
//! Most of them are not free-form prefixes but a key's variants: the edge stores `Vary`
//! variants and slices under `key` + `\0` + suffix, and a purge of one key removes
//! `key\0*` with it. An asset purge names tens of thousands of keys, so those live in a map
//! looked up by the key's part up to its first `\0` (one lookup per read). Free-form prefixes,
//! which operators write (`prefixes` purges of up to 10,000 at once), live in a sorted map
//! looked up once per distinct prefix length, so neither a lookup nor adding a mark scans the
//! others.
//!
//! Viewers cause variant marks too (a successful POST invalidates its URI's variants, and the
//! store cannot tell whether it holds any), and operators can purge any number of prefixes,
//! so both are bounded and fold when full, trading precision for memory: an object a folded
//! mark selects that the marks it replaced did not is only fetched again.
//! - Past `MAX_FREE` free-form prefixes, they fold into their longest common prefixes (at most
//!   half as many), each at the newest mark it replaces.
//! - When every mark together would pass the bound (`max_marks`), the variant map folds into
//!   one mark for every variant key (`all_variants`): older variants of every key dead.

use std::collections::BTreeMap;

/// Every mark held at once (free-form, variant and the folded one); the store adds its soft
/// purges (`store::MAX_SOFT`) to make `vedge_store_purge_marks`' bound,
/// [`MAX_PURGE_MARKS`](crate::store::MAX_PURGE_MARKS).
pub(crate) const MAX_MARKS: usize = 61_440;

/// Free-form prefixes held one by one before they fold into common prefixes.
/// Generous: a fold over-purges (see the module doc), and lookups cost one map lookup per
/// distinct prefix length, not per prefix.
const MAX_FREE: usize = 16_384;

/// How a mark for every variant key is written in a snapshot's prefix list: no key starts with
/// `\0`, so as a prefix it selects nothing an older reader would misread.
const ALL_VARIANTS: &[u8] = b"\0";

pub(crate) struct PrefixMarks {
    /// Free-form prefixes and their marks.
    free: BTreeMap<Vec<u8>, u64>,
    /// How many free-form prefixes have each length: a lookup tries each length once.
    free_lens: BTreeMap<usize, usize>,
    /// Variant prefixes (`key\0`, no other `\0`) and their marks. Sorted, so a free-form prefix
    /// finds the variant marks it covers without a scan.
    variants: BTreeMap<Vec<u8>, u64>,
    /// Every variant key below this mark is dead (the map folded).
    all_variants: Option<u64>,
    max_marks: usize,
    max_free: usize,
}

impl Default for PrefixMarks {
    fn default() -> Self {
        PrefixMarks::with_bounds(MAX_MARKS, MAX_FREE)
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

/// The keys of `map` that start with `prefix`, in order.
fn under<'a>(
    map: &'a BTreeMap<Vec<u8>, u64>,
    prefix: &'a [u8],
) -> impl Iterator<Item = (&'a Vec<u8>, &'a u64)> + 'a {
    map.range::<[u8], _>((
        std::ops::Bound::Included(prefix),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(k, _)| k.starts_with(prefix))
}

impl PrefixMarks {
    fn with_bounds(max_marks: usize, max_free: usize) -> PrefixMarks {
        PrefixMarks {
            free: BTreeMap::new(),
            free_lens: BTreeMap::new(),
            variants: BTreeMap::new(),
            all_variants: None,
            max_marks,
            max_free: max_free.min(max_marks / 2).max(2),
        }
    }

    /// The newest free-form mark on a prefix of `key` (`key` itself included).
    fn free_mark(&self, key: &[u8]) -> Option<u64> {
        self.free_lens
            .keys()
            .take_while(|&&l| l <= key.len())
            .filter_map(|&l| self.free.get(&key[..l]).copied())
            .max()
    }

    /// Records that objects under `prefix` below `mark` are dead. A mark already held for a
    /// prefix of it that is at least as new covers it; marks it covers (under it, no newer)
    /// go.
    pub(crate) fn add(&mut self, prefix: &[u8], mark: u64) {
        if self.free_mark(prefix).is_some_and(|m| m >= mark) {
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
            if let Some(m) = self.variants.get_mut(prefix) {
                *m = (*m).max(mark);
                return;
            }
            if self.len() >= self.max_marks {
                self.fold(mark);
                return;
            }
            self.variants.insert(prefix.to_vec(), mark);
            return;
        }
        self.insert_free(prefix, mark);
        if self.free.len() > self.max_free {
            self.fold_free();
        }
        if self.len() > self.max_marks {
            let newest = self.variants.values().copied().max();
            if let Some(m) = newest {
                self.fold(m);
            }
        }
    }

    /// Adds a free-form mark not covered by another, dropping the marks it covers.
    fn insert_free(&mut self, prefix: &[u8], mark: u64) {
        let covered = |map: &BTreeMap<Vec<u8>, u64>| -> Vec<Vec<u8>> {
            under(map, prefix)
                .filter(|(_, m)| **m <= mark)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in covered(&self.free) {
            self.free.remove(&k);
            self.forget_len(k.len());
        }
        for k in covered(&self.variants) {
            self.variants.remove(&k);
        }
        match self.free.get_mut(prefix) {
            Some(m) => *m = (*m).max(mark),
            None => {
                self.free.insert(prefix.to_vec(), mark);
                *self.free_lens.entry(prefix.len()).or_default() += 1;
            }
        }
    }

    fn forget_len(&mut self, len: usize) {
        if let Some(n) = self.free_lens.get_mut(&len) {
            *n -= 1;
            if *n == 0 {
                self.free_lens.remove(&len);
            }
        }
    }

    /// Every variant key below `mark` is dead: the map's marks no newer than it go into one.
    /// (At run time every mark in the map is older; a snapshot or journal replay may add newer
    /// ones first.)
    fn fold(&mut self, mark: u64) {
        self.variants.retain(|_, m| *m > mark);
        self.all_variants = Some(self.all_variants.map_or(mark, |m| m.max(mark)));
    }

    /// Folds the free-form prefixes into at most half the bound: the longest cut `l` such that
    /// cutting every prefix to `l` bytes leaves few enough distinct ones, then each group of
    /// prefixes sharing a cut becomes their longest common prefix at their newest mark. Every
    /// object a replaced mark selected, the new one selects.
    fn fold_free(&mut self) {
        let target = self.max_free / 2;
        let marks: Vec<(Vec<u8>, u64)> = std::mem::take(&mut self.free).into_iter().collect();
        self.free_lens.clear();
        let groups = |l: usize| {
            let mut n = 0;
            let mut last: Option<&[u8]> = None;
            for (p, _) in &marks {
                let cut = &p[..p.len().min(l)];
                if last != Some(cut) {
                    n += 1;
                    last = Some(cut);
                }
            }
            n
        };
        // groups(l) grows with l: find the largest l with groups(l) <= target.
        let (mut lo, mut hi) = (
            0usize,
            marks.iter().map(|(p, _)| p.len()).max().unwrap_or(0),
        );
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if groups(mid) <= target {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        // Sorted, so the prefixes sharing a cut are neighbours.
        let mut folded: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut group: Option<Vec<u8>> = None;
        for (p, m) in marks {
            let cut = &p[..p.len().min(lo)];
            match folded.last_mut() {
                Some((q, qm)) if group.as_deref() == Some(cut) => {
                    let common = q.iter().zip(&p).take_while(|(a, b)| a == b).count();
                    q.truncate(common);
                    *qm = (*qm).max(m);
                }
                _ => {
                    group = Some(cut.to_vec());
                    folded.push((p, m));
                }
            }
        }
        for (p, m) in folded {
            if self.free_mark(&p).is_some_and(|x| x >= m) {
                continue;
            }
            self.insert_free(&p, m);
        }
    }

    /// Whether an object under `key` at sequence `seq` is dead.
    pub(crate) fn dead(&self, key: &[u8], seq: u64) -> bool {
        let variant = || variant_prefix(key);
        if self.all_variants.is_some_and(|m| seq < m) && variant().is_some() {
            return true;
        }
        if !self.variants.is_empty()
            && variant()
                .and_then(|p| self.variants.get(p))
                .is_some_and(|m| seq < *m)
        {
            return true;
        }
        !self.free.is_empty() && self.free_mark(key).is_some_and(|m| seq < m)
    }

    /// Drops the marks older than generation `min_gen`: nothing they could select is left.
    pub(crate) fn prune(&mut self, min_gen: u64) {
        self.free.retain(|_, m| (*m >> 32) >= min_gen);
        self.free_lens.clear();
        for p in self.free.keys() {
            *self.free_lens.entry(p.len()).or_default() += 1;
        }
        self.variants.retain(|_, m| (*m >> 32) >= min_gen);
        self.all_variants = self.all_variants.filter(|m| (m >> 32) >= min_gen);
    }

    pub(crate) fn len(&self) -> usize {
        self.free.len() + self.variants.len() + usize::from(self.all_variants.is_some())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every mark, for the index snapshot and the journal's compaction. Adding them again in
    /// this order (`from_vec`) gives the same marks.
    pub(crate) fn to_vec(&self) -> Vec<(Vec<u8>, u64)> {
        let free = self.free.iter().map(|(p, m)| (p.clone(), *m));
        let variants = self.variants.iter().map(|(p, m)| (p.clone(), *m));
        let all = self.all_variants.map(|m| (ALL_VARIANTS.to_vec(), m));
        free.chain(variants).chain(all).collect()
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
        assert!(!m.dead(b"a/c", 25) && m.dead(b"a/c", 19));
        assert_eq!(m.len(), 3);
        m.add(b"a", 40);
        assert_eq!(m.len(), 2, "a covers a/ and a/b");
    }

    #[test]
    fn variant_marks_past_the_bound_fold_into_one_for_every_variant_key() {
        let mut m = PrefixMarks::with_bounds(3, 2);
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

    /// A snapshot lists the variant map before the folded mark: reading it back must not fold
    /// the variant marks taken after the fold into it (they are newer: they would be lost).
    #[test]
    fn variant_marks_newer_than_the_fold_survive_a_snapshot() {
        let mut m = PrefixMarks::with_bounds(3, 2);
        for i in 0..4u64 {
            m.add(format!("k{i}\0").as_bytes(), 10 + i);
        }
        m.add(b"late\0", 30);
        assert_eq!(m.len(), 2);
        let mut back = PrefixMarks::with_bounds(3, 2);
        for (p, mark) in m.to_vec() {
            back.add(&p, mark);
        }
        assert!(back.dead(b"late\0v", 29), "the mark after the fold kept");
        assert!(back.dead(b"k0\0v", 12) && !back.dead(b"k0\0v", 13));
    }

    #[test]
    fn free_prefixes_past_their_bound_fold_into_common_prefixes() {
        let mut m = PrefixMarks::with_bounds(1000, 8);
        for i in 0..9u64 {
            m.add(format!("live/ch{}/{i}/", i % 2).as_bytes(), 100 + i);
        }
        assert!(m.len() <= 4, "{:?}", m.to_vec());
        for i in 0..9u64 {
            let key = format!("live/ch{}/{i}/seg.ts", i % 2);
            assert!(m.dead(key.as_bytes(), 100 + i - 1), "{key} purged");
        }
        assert!(!m.dead(b"vod/x", 1), "outside every folded prefix");
        assert!(!m.dead(b"live/ch0/0/seg.ts", 109), "newer than every mark");
        let mut n = PrefixMarks::with_bounds(1000, 8);
        for i in 0..100u64 {
            n.add(format!("{i}/").as_bytes(), 100 + i);
            assert!(n.len() <= 8);
        }
        assert!(n.dead(b"7/x", 106) && !n.dead(b"7/x", 200));
    }

    #[test]
    fn every_mark_counts_against_the_bound() {
        let mut m = PrefixMarks::with_bounds(10, 4);
        for i in 0..4u64 {
            m.add(format!("p{i}/").as_bytes(), 10 + i);
        }
        for i in 0..20u64 {
            m.add(format!("k{i}\0").as_bytes(), 20 + i);
            assert!(m.len() <= 10, "{} marks", m.len());
        }
        assert!(m.dead(b"k3\0v", 22) && m.dead(b"k19\0v", 38) && m.dead(b"p2/x", 11));
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
