//! The in-RAM index: 128-bit key hash -> location, plus the interned tag sets.
//!
//! An index slot is a 16-byte hash and a 12-byte [`Entry`] (28 bytes, 4-byte aligned) in a
//! hashbrown table with a 1-byte control word per bucket. The sequence number of an entry is
//! implicit: (generation of its region, block), regions being stamped with a global, monotonic
//! generation when they are (re)opened for writing. Expiry and the key itself live only on disk;
//! the full key is compared on every read.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::format::KeyHash;

/// Hasher for keys that are already uniform hashes: passes the 64 bits through.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub(crate) type HashIndex<V> = HashMap<KeyHash, V, BuildHasherDefault<IdentityHasher>>;

pub(crate) const PINNED: u32 = 1 << 31;
/// A two-bit hit counter (0-3) lives in bits 28-29: raised by every hit, disk or RAM tier
/// ([`Entry::record_hit`]), lowered by one each time eviction keeps the object. RAM only: never
/// written to a summary or snapshot (those keep [`PERSISTED`]).
const FREQ_SHIFT: u32 = 28;
const FREQ_MASK: u32 = 3 << FREQ_SHIFT;
pub(crate) const MAX_FREQ: u32 = 3;
/// Extents are at most a quarter of a 4 GiB region: 2^18 blocks, well inside 28 bits.
const BLOCKS_MASK: u32 = (1 << FREQ_SHIFT) - 1;
/// The flags that go to disk: extent and pin.
pub(crate) const PERSISTED: u32 = PINNED | BLOCKS_MASK;

/// Where an object lives: global block (4 KiB units from the data start), extent and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub block: u32,
    /// Extent in blocks (low 28 bits) | hit counter (bits 28-29) | bit 30 unused | PINNED.
    pub blocks_flags: u32,
    pub tagset: u32,
}

impl Entry {
    pub(crate) fn blocks(&self) -> u32 {
        self.blocks_flags & BLOCKS_MASK
    }
    pub(crate) fn bytes(&self) -> u64 {
        u64::from(self.blocks()) * crate::format::BLOCK
    }
    pub(crate) fn pinned(&self) -> bool {
        self.blocks_flags & PINNED != 0
    }
    /// Hits since the object was written or last kept by eviction, saturating at [`MAX_FREQ`].
    pub(crate) fn freq(&self) -> u32 {
        (self.blocks_flags & FREQ_MASK) >> FREQ_SHIFT
    }
    pub(crate) fn set_freq(&mut self, f: u32) {
        self.blocks_flags = (self.blocks_flags & !FREQ_MASK) | (f.min(MAX_FREQ) << FREQ_SHIFT);
    }
    pub(crate) fn record_hit(&mut self) {
        self.set_freq(self.freq() + 1);
    }
    pub(crate) fn set_flag(&mut self, flag: u32, on: bool) {
        if on {
            self.blocks_flags |= flag;
        } else {
            self.blocks_flags &= !flag;
        }
    }
}

/// Interned tag sets with reference counts. Id 0 is the empty set. Segments of one asset share
/// one set, so this table holds one row per asset, not per object.
#[derive(Default)]
pub(crate) struct TagSets {
    ids: HashMap<Vec<String>, u32>,
    rows: Vec<(Vec<String>, u64)>,
    free: Vec<u32>,
}

impl TagSets {
    pub(crate) fn new() -> Self {
        let mut t = TagSets::default();
        t.rows.push((Vec::new(), 0));
        t.ids.insert(Vec::new(), 0);
        t
    }

    /// Returns the id for `tags`, taking one reference.
    pub(crate) fn acquire(&mut self, tags: &[String]) -> u32 {
        self.acquire_n(tags, 1)
    }

    /// Returns the id for `tags`, taking `n` references.
    pub(crate) fn acquire_n(&mut self, tags: &[String], n: u64) -> u32 {
        if tags.is_empty() {
            return 0;
        }
        let id = match self.ids.get(tags) {
            Some(&id) => id,
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.rows[id as usize] = (tags.to_vec(), 0);
                        id
                    }
                    None => {
                        self.rows.push((tags.to_vec(), 0));
                        (self.rows.len() - 1) as u32
                    }
                };
                self.ids.insert(tags.to_vec(), id);
                id
            }
        };
        self.rows[id as usize].1 += n;
        id
    }

    pub(crate) fn release(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        let Some(row) = self.rows.get_mut(id as usize) else {
            return;
        };
        row.1 = row.1.saturating_sub(1);
        if row.1 == 0 {
            let tags = std::mem::take(&mut row.0);
            self.ids.remove(&tags);
            self.free.push(id);
        }
    }

    pub(crate) fn get(&self, id: u32) -> &[String] {
        self.rows
            .get(id as usize)
            .map(|r| r.0.as_slice())
            .unwrap_or(&[])
    }

    /// Ids of every live set containing `tag`.
    pub(crate) fn containing(&self, tag: &str) -> Vec<u32> {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, (t, n))| *n > 0 && t.iter().any(|x| x == tag))
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// Bytes of RAM the index table uses per stored object, from hashbrown's real bucket count.
pub(crate) fn index_bytes(map: &HashIndex<Entry>) -> usize {
    // hashbrown: buckets = capacity * 8 / 7 rounded up to a power of two; each bucket holds a
    // slot plus one control byte (and 16 trailing control bytes for the SIMD group).
    let cap = map.capacity();
    let buckets = if cap < 8 {
        cap + 1
    } else {
        (cap * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<(KeyHash, Entry)>() + 1) + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_million_entries_cost_at_most_64_bytes_each() {
        let mut m: HashIndex<Entry> = HashIndex::default();
        for i in 0..1_000_000u32 {
            let h = crate::format::key_hash(1, &i.to_le_bytes());
            m.insert(
                h,
                Entry {
                    block: i,
                    blocks_flags: 1,
                    tagset: 0,
                },
            );
        }
        let per = index_bytes(&m) as f64 / m.len() as f64;
        assert!(per <= 64.0, "{per} bytes per object");
    }

    #[test]
    fn hit_counter_saturates_and_never_touches_extent_or_pin() {
        let mut e = Entry {
            block: 7,
            blocks_flags: BLOCKS_MASK | PINNED,
            tagset: 0,
        };
        for want in [1, 2, 3, 3, 3] {
            e.record_hit();
            assert_eq!(e.freq(), want);
        }
        assert_eq!(e.blocks(), BLOCKS_MASK);
        assert!(e.pinned());
        assert_eq!(e.blocks_flags & PERSISTED, BLOCKS_MASK | PINNED);
        e.set_freq(0);
        assert_eq!(e.blocks_flags, BLOCKS_MASK | PINNED);
        let max_extent_blocks = ((4u64 << 30) / 4 / crate::format::BLOCK) as u32;
        assert!(max_extent_blocks <= BLOCKS_MASK);
    }

    #[test]
    fn slot_is_28_bytes() {
        assert_eq!(std::mem::size_of::<(KeyHash, Entry)>(), 28);
    }

    #[test]
    fn tagsets_refcount_and_reuse() {
        let mut t = TagSets::new();
        let a = t.acquire(&["x".into()]);
        let b = t.acquire(&["x".into()]);
        assert_eq!(a, b);
        assert_eq!(t.acquire(&[]), 0);
        assert_eq!(t.containing("x"), vec![a]);
        t.release(a);
        assert_eq!(t.containing("x"), vec![a]);
        t.release(a);
        assert!(t.containing("x").is_empty());
        let c = t.acquire(&["y".into()]);
        assert_eq!(c, a, "freed id reused");
    }
}
