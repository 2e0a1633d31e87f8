//! The purge journal: every purge the store acknowledges, as one checksummed record appended to
//! a small side file and fdatasync'ed before [`Store::purge`](crate::Store::purge) returns.
//! Replayed at open, after the index was rebuilt (snapshot or crash recovery), so a crash
//! never brings a purged object back from a region summary or a scan. Hard records stay after
//! a clean close too: the snapshot holds their effect, but a crash after the next open
//! recovers without it.
//!
//! Compacted at open, on clean close and, between them, by the purge that finds it has grown
//! by as many records as it kept at its last compaction (at least `COMPACT_AFTER`), so
//! compaction costs a constant share of the appends and the file stays within twice what it
//! keeps. Compaction ([`compact`]) keeps what can still select something:
//! - nothing older than every region on disk (freed or not: crash recovery revives a freed
//!   region until it is reused);
//! - of the records with one selector (and softness), the newest: it selects every object
//!   the older ones did;
//! - hard prefix records as the prefix marks they make ([`PrefixMarks`]), which cover and fold
//!   like the store's own: one mark per prefix, variant marks folded past the bound into one
//!   for every variant key, free-form prefixes into their common prefixes. A fold selects more
//!   than the records it replaces (those objects are fetched again), never less.
//!
//! What stays unbounded is one record per distinct key and tag purged since the oldest region
//! on disk was written: a key's record must hold until no region that may list the key is
//! left, and the store cannot tell which ones do (the index holds live objects only).
//!
//! Record (little endian): magic `VPJ1` u32, record length u32, store nonce u64, journal
//! sequence u64, store mark u64 (objects with a lower store sequence are the ones purged),
//! kind u8 (1 key, 2 prefix, 3 tag), soft u8, payload length u16, payload, crc32c u32 of
//! everything before it. Reading stops at the first record that fails a check (a torn tail
//! or the journal of an earlier format of the store).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::marks::PrefixMarks;

const MAGIC: u32 = 0x5650_4a31;
const FIXED: usize = 4 + 4 + 8 + 8 + 8 + 1 + 1 + 2;
/// Longest selector a record holds (keys and prefixes are URLs; tags are short).
pub const MAX_SELECTOR: usize = 16 << 10;
/// Records appended since the last compaction that make the next one due, at least (see the
/// module doc).
const COMPACT_AFTER: usize = 16 << 10;

/// What a purge selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// One key, exactly.
    Key(Vec<u8>),
    /// Every key that starts with these bytes.
    Prefix(Vec<u8>),
    /// Every object carrying this tag.
    Tag(String),
}

impl Selector {
    fn kind(&self) -> u8 {
        match self {
            Selector::Key(_) => 1,
            Selector::Prefix(_) => 2,
            Selector::Tag(_) => 3,
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Selector::Key(k) | Selector::Prefix(k) => k,
            Selector::Tag(t) => t.as_bytes(),
        }
    }

    /// Whether an object with `key` and `tags` is selected.
    pub(crate) fn matches(&self, key: &[u8], tags: &[String]) -> bool {
        match self {
            Selector::Key(k) => key == k.as_slice(),
            Selector::Prefix(p) => key.starts_with(p),
            Selector::Tag(t) => tags.iter().any(|x| x == t),
        }
    }
}

/// One purge: hard (the objects are removed) or soft (they stay, marked stale, so the edge
/// can still serve them stale and revalidate them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    pub selector: Selector,
    pub soft: bool,
}

/// A purge as journaled: `mark` is the store sequence at the moment it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub seq: u64,
    pub mark: u64,
    pub purge: Purge,
}

pub(crate) fn encode(nonce: u64, r: &Record, out: &mut Vec<u8>) {
    let payload = r.purge.selector.payload();
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&((FIXED + payload.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(&nonce.to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.mark.to_le_bytes());
    out.push(r.purge.selector.kind());
    out.push(u8::from(r.purge.soft));
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes the records of `b` up to the first one that fails a check.
pub(crate) fn decode_all(b: &[u8], nonce: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some((r, len)) = decode_one(&b[at..], nonce) {
        out.push(r);
        at += len;
    }
    out
}

fn decode_one(b: &[u8], nonce: u64) -> Option<(Record, usize)> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    if u32_at(0)? != MAGIC {
        return None;
    }
    let len = u32_at(4)? as usize;
    if !(FIXED + 4..=FIXED + MAX_SELECTOR + 4).contains(&len) || b.len() < len {
        return None;
    }
    let crc = u32_at(len - 4)?;
    if crc32c::crc32c(&b[..len - 4]) != crc || u64_at(8)? != nonce {
        return None;
    }
    let plen = u16::from_le_bytes(b.get(34..36)?.try_into().ok()?) as usize;
    if FIXED + plen + 4 != len {
        return None;
    }
    let payload = b.get(FIXED..FIXED + plen)?.to_vec();
    let selector = match b[32] {
        1 => Selector::Key(payload),
        2 => Selector::Prefix(payload),
        3 => Selector::Tag(String::from_utf8(payload).ok()?),
        _ => return None,
    };
    let r = Record {
        seq: u64_at(16)?,
        mark: u64_at(24)?,
        purge: Purge {
            selector,
            soft: b[33] != 0,
        },
    };
    Some((r, len))
}

/// What a journal of `records` needs to keep, given the oldest generation of a region on disk
/// (`None`: no region was ever written, so nothing can come back). See the module doc.
pub(crate) fn compact(records: Vec<Record>, min_gen: Option<u64>) -> Vec<Record> {
    let Some(min_gen) = min_gen else {
        return Vec::new();
    };
    let mut marks = PrefixMarks::default();
    let mut newest: HashMap<(Selector, bool), Record> = HashMap::new();
    let mut last_seq = 0;
    for r in records.into_iter().filter(|r| (r.mark >> 32) >= min_gen) {
        last_seq = last_seq.max(r.seq);
        match &r.purge {
            Purge {
                selector: Selector::Prefix(p),
                soft: false,
            } => marks.add(p, r.mark),
            purge => {
                let at = (purge.selector.clone(), purge.soft);
                match newest.get_mut(&at) {
                    Some(held) if held.mark >= r.mark => {}
                    Some(held) => *held = r,
                    None => {
                        newest.insert(at, r);
                    }
                }
            }
        }
    }
    // A soft purge no newer than a hard one of its selector selects nothing that is left.
    let hard_mark = |sel: &Selector| newest.get(&(sel.clone(), false)).map(|r| r.mark);
    let mut rest: Vec<Record> = newest
        .values()
        .filter(|r| !r.purge.soft || hard_mark(&r.purge.selector).is_none_or(|m| m < r.mark))
        .cloned()
        .collect();
    rest.sort_unstable_by_key(|r| r.seq);
    let prefixes = marks.to_vec().into_iter().map(|(p, mark)| Record {
        seq: last_seq,
        mark,
        purge: Purge {
            selector: Selector::Prefix(p),
            soft: false,
        },
    });
    prefixes.chain(rest).collect()
}

/// The journal file of an open store.
pub(crate) struct Journal {
    path: PathBuf,
    nonce: u64,
    /// Appends and rewrites take this lock (on a blocking thread: they fsync).
    file: Mutex<Tail>,
    next_seq: AtomicU64,
}

/// The open journal file and how it has grown since it was last compacted.
struct Tail {
    file: File,
    /// Records appended since the last compaction.
    appended: usize,
    /// Records the last compaction kept.
    kept: usize,
}

/// Where the journal of a store at `store_path` lives unless configured.
pub(crate) fn default_path(store_path: &Path) -> PathBuf {
    let mut p = store_path.as_os_str().to_owned();
    p.push(".purges");
    p.into()
}

/// Every valid record of the journal at `path` (none if it does not exist).
pub(crate) fn read(path: &Path, nonce: u64) -> io::Result<Vec<Record>> {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    Ok(decode_all(&buf, nonce))
}

/// Writes `records` to a temporary file, fsyncs it, renames it over `path` and fsyncs the
/// directory: the journal is either the old one or the new one, never a mix.
fn write_atomically(path: &Path, nonce: u64, records: &[Record]) -> io::Result<File> {
    let mut bytes = Vec::new();
    for r in records {
        encode(nonce, r, &mut bytes);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

impl Journal {
    /// Replaces the journal at `path` with `keep` and opens it for appending.
    pub(crate) fn create(path: PathBuf, nonce: u64, keep: &[Record]) -> io::Result<Journal> {
        let file = write_atomically(&path, nonce, keep)?;
        let next = keep.iter().map(|r| r.seq + 1).max().unwrap_or(1);
        Ok(Journal {
            path,
            nonce,
            file: Mutex::new(Tail {
                file,
                appended: 0,
                kept: keep.len(),
            }),
            next_seq: AtomicU64::new(next),
        })
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Relaxed)
    }

    /// Appends `records` and waits for fdatasync. Returns whether a compaction is due (see
    /// the module doc). Blocking: run it on a blocking thread.
    pub(crate) fn append_blocking(&self, records: &[Record]) -> io::Result<bool> {
        let mut bytes = Vec::new();
        for r in records {
            encode(self.nonce, r, &mut bytes);
        }
        let mut t = self.file.lock();
        t.file.write_all(&bytes)?;
        t.file.sync_data()?;
        t.appended += records.len();
        Ok(t.appended >= t.kept.max(COMPACT_AFTER))
    }

    /// Rewrites the journal with what [`compact`] keeps, given the oldest generation of a
    /// region on disk. Blocking. Appends wait meanwhile; one that lands between the caller
    /// reading `min_gen` and this is read back with the rest.
    pub(crate) fn compact_blocking(&self, min_gen: Option<u64>) -> io::Result<()> {
        let mut t = self.file.lock();
        let records = compact(read(&self.path, self.nonce)?, min_gen);
        t.file = write_atomically(&self.path, self.nonce, &records)?;
        t.appended = 0;
        t.kept = records.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_a_torn_tail_is_dropped() {
        let recs = vec![
            Record {
                seq: 1,
                mark: 7 << 32,
                purge: Purge {
                    selector: Selector::Key(b"http|h|/a".to_vec()),
                    soft: false,
                },
            },
            Record {
                seq: 2,
                mark: (7 << 32) | 5,
                purge: Purge {
                    selector: Selector::Tag("movie".into()),
                    soft: true,
                },
            },
        ];
        let mut b = Vec::new();
        for r in &recs {
            encode(42, r, &mut b);
        }
        assert_eq!(decode_all(&b, 42), recs);
        assert!(
            decode_all(&b, 43).is_empty(),
            "another store's journal is ignored"
        );
        b.truncate(b.len() - 1);
        assert_eq!(decode_all(&b, 42), recs[..1]);
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    fn rec(seq: u64, mark: u64, selector: Selector, soft: bool) -> Record {
        Record {
            seq,
            mark,
            purge: Purge { selector, soft },
        }
    }

    #[test]
    fn compaction_keeps_the_newest_record_per_selector_and_folds_prefixes() {
        let g = |n: u64| n << 32;
        let key = |k: &str| Selector::Key(k.as_bytes().to_vec());
        let prefix = |k: &str| Selector::Prefix(k.as_bytes().to_vec());
        let records = vec![
            rec(1, g(1), key("old"), false),
            rec(2, g(2), key("a"), false),
            rec(3, g(2) + 1, prefix("a\0"), false),
            rec(4, g(3), key("a"), false),
            rec(5, g(3) + 1, prefix("a\0"), false),
            rec(6, g(3) + 2, key("b"), true),
            rec(7, g(3) + 3, key("b"), false),
            rec(8, g(3) + 4, key("c"), false),
            rec(9, g(3) + 5, key("c"), true),
            rec(10, g(3) + 6, prefix("d/x\0"), false),
            rec(11, g(3) + 7, prefix("d/"), false),
        ];
        let kept = compact(records, Some(2));
        let sel: Vec<(&Selector, u64, bool)> = kept
            .iter()
            .map(|r| (&r.purge.selector, r.mark, r.purge.soft))
            .collect();
        assert_eq!(
            sel,
            [
                (&prefix("d/"), g(3) + 7, false),
                (&prefix("a\0"), g(3) + 1, false),
                (&key("a"), g(3), false),
                (&key("b"), g(3) + 3, false),
                (&key("c"), g(3) + 4, false),
                (&key("c"), g(3) + 5, true),
            ],
            "older than every region, superseded, covered: gone"
        );
        assert!(kept.iter().all(|r| r.seq <= 11));
        assert!(compact(kept, None).is_empty());
    }
}
