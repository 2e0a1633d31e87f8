//! The public vocabulary: configuration, metadata, admission outcomes and stats.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use crate::io::EngineKind;

/// Which I/O engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring if the kernel (and seccomp) allow it, else psync; the fallback is logged with the errno.
    #[default]
    Auto,
    /// io_uring or a clear error.
    Uring,
    /// The portable pread/pwrite thread pool.
    Psync,
}

/// The region size a store of `size` bytes gets unless one is chosen: a power of two near
/// `size / 128`, from 64 MiB (objects up to 16 MiB are stored) to 256 MiB, and at most a
/// quarter of `size` for small stores. Eviction frees a whole region while the next one is
/// being filled, so about two regions are never cache: with 256 MiB regions an 8 GiB store
/// used 7.5 GiB (and a 1 GiB store had 3 regions); with 64 MiB regions, 7.9 GiB.
pub fn default_region_size(size: u64) -> u64 {
    let prev_pow2 = |n: u64| {
        if n == 0 {
            0
        } else {
            1u64 << (63 - n.leading_zeros())
        }
    };
    let near = prev_pow2(size / 128).clamp(64 << 20, 256 << 20);
    near.min(prev_pow2(size / 4)).max(64 << 10)
}

/// Store configuration. Build it with [`StoreConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// A regular file (created and preallocated if missing) or a raw block device.
    pub path: PathBuf,
    /// Bytes of the file/device to use; a multiple of 4096. Fixed at format time.
    pub size: u64,
    /// Eviction unit, a multiple of 4096 between 64 KiB and 4 GiB. Default
    /// [`default_region_size`] of `size`. Fixed at format time. Objects larger than a quarter
    /// region are not stored.
    pub region_size: u64,
    /// When the file already holds a store of this `size` formatted with another region size,
    /// open it with that one instead of refusing (for callers whose `region_size` is a default,
    /// not the operator's choice: a store formatted under an older default still opens).
    /// Default false.
    pub adopt_region_size: bool,
    /// Default [`EngineChoice::Auto`].
    pub engine: EngineChoice,
    /// Wipe and reformat what is at `path` when it cannot be opened as a store of this version
    /// and geometry (another version or size, a truncated store, a file that is not a store)
    /// instead of refusing to open; a valid store is opened as it is. Default false: each of
    /// those is an error.
    pub reformat: bool,
    /// Pulled objects are admitted on their second insert attempt within this window.
    /// Default 10 minutes; `Duration::ZERO` admits everything. Pushed and pinned ones always are.
    pub admit_window: Duration,
    /// Cap on admitted pulled bytes per second (token bucket, one second of burst). Default none.
    pub write_rate_limit: Option<u64>,
    /// Most bytes accepted by [`Store::insert`](crate::Store::insert) and not yet written;
    /// beyond it inserts are skipped as `Busy` (one object is always accepted into an empty
    /// queue). Default 256 MiB. A queued body may be the edge's only copy once its RAM tier
    /// has evicted it, so this is memory on top of the RAM tier: size it with the memory budget.
    /// Objects that eviction keeps are held in RAM between their read-back and their rewrite and
    /// count here too (a reclaim keeps at most what is left of this bound).
    pub max_queued_bytes: u64,
    /// Whether eviction may drop pinned objects. Default false: they are rewritten instead.
    pub allow_pinned_eviction: bool,
    /// Skip O_DIRECT as if the filesystem had refused it (the automatic fallback, forced).
    /// For tests on kernels whose tmpfs accepts O_DIRECT. Default false.
    #[doc(hidden)]
    pub buffered_io: bool,
    /// Where object reads land: `None` (default) for the store's own aligned buffers, or memory
    /// the caller lends per read (e.g. mappings it sends without a copy), so a hit's body is
    /// never copied after the device read. Verification is the same either way.
    pub read_memory: Option<std::sync::Arc<dyn crate::ReadMemory>>,
    /// The purge journal (a small regular file). Default: `path` + `.purges`; set it when
    /// `path` is a raw block device.
    pub journal_path: Option<PathBuf>,
}

impl StoreConfig {
    /// A config with the documented defaults.
    pub fn new(path: impl Into<PathBuf>, size: u64) -> Self {
        StoreConfig {
            path: path.into(),
            size,
            region_size: default_region_size(size),
            adopt_region_size: false,
            engine: EngineChoice::Auto,
            reformat: false,
            admit_window: Duration::from_secs(600),
            write_rate_limit: None,
            max_queued_bytes: 256 << 20,
            allow_pinned_eviction: false,
            buffered_io: false,
            read_memory: None,
            journal_path: None,
        }
    }
}

/// How an object reached the edge: pulled on a viewer miss or pushed by ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Pull,
    Push,
}

/// Metadata stored with each object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Opaque to the store: the edge's serialized status and headers.
    pub head: Bytes,
    pub stored_at: SystemTime,
    pub expires_at: SystemTime,
    pub tags: Vec<String>,
    /// Pinned objects survive eviction (see [`StoreConfig::allow_pinned_eviction`]).
    pub pinned: bool,
}

/// A verified object. `body` (and `meta.head`) are views of the buffer the device read into.
#[derive(Clone, Debug)]
pub struct Hit {
    pub meta: Meta,
    pub body: Bytes,
    /// A soft purge selected this object after it was written: serve it as stale (revalidate
    /// before using it fresh).
    pub soft_purged: bool,
}

/// Outcome of [`crate::Store::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The write is queued; lookups serve it from RAM until it is on disk.
    Queued,
    Skipped(SkipReason),
}

/// Why an insert was not queued. `RateLimited`, `Busy` and `PinnedFull` count as refused
/// writes in the stats, the others as skipped ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Larger than a quarter region.
    TooLarge,
    /// First pulled insert attempt within the admission window.
    FirstSighting,
    /// Over the configured write rate.
    RateLimited,
    /// Too many bytes already queued for writing.
    Busy,
    /// Pinned, and the pinned share of the store is full.
    PinnedFull,
    /// The store is closed.
    Closed,
    /// A durable, pinned write of the key (a push) is queued or being written: a plain insert
    /// does not replace it. Not a failure: the store is about to hold the pushed version.
    PushQueued,
    /// A push of the key was stored after the mark the insert was made against
    /// ([`Store::insert_since`](crate::Store::insert_since)): the insert's bytes come from a
    /// fetch that began before the push, and do not replace it.
    PushedSince,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TooLarge => "too_large",
            SkipReason::FirstSighting => "first_sighting",
            SkipReason::RateLimited => "rate_limited",
            SkipReason::Busy => "busy",
            SkipReason::PinnedFull => "pinned_full",
            SkipReason::Closed => "closed",
            SkipReason::PushQueued => "push_queued",
            SkipReason::PushedSince => "pushed_since",
        }
    }
}

/// A point-in-time copy of the store's counters and gauges.
#[derive(Clone, Debug)]
pub struct StoreStats {
    /// Objects in the index (on disk).
    pub objects: u64,
    /// Bytes of those objects on disk (4 KiB extents, headers included).
    pub bytes: u64,
    pub pinned_bytes: u64,
    /// Writes accepted but not yet on disk.
    pub queued_objects: u64,
    pub regions: u32,
    pub regions_in_use: u32,
    pub hits: u64,
    pub misses: u64,
    /// Object reads issued to the device (concurrent lookups of one object share one).
    pub device_reads: u64,
    pub bytes_written: u64,
    pub reinsertions: u64,
    /// Objects dropped by region eviction.
    pub evictions: u64,
    pub regions_evicted: u64,
    /// Reads that failed verification: dropped from the index, served as a miss.
    pub corrupt_reads: u64,
    /// Device reads that failed: a lookup's (object dropped, miss), or one attempt of
    /// reclaim's read-back, which tries an object up to three times before it drops it.
    pub read_errors: u64,
    /// Pinned objects reclaim had to drop because every read-back attempt failed with a
    /// device error: pushed assets lost to a bad device (each is also logged as an error).
    pub pinned_lost: u64,
    /// Writes refused: ENOSPC, full, rate limit, queue full, pinned share full.
    pub refused_writes: u64,
    /// Inserts not admitted yet (first sighting) or too large: normal, not failures.
    pub skipped_writes: u64,
    pub write_errors: u64,
    /// RAM used by the index table (bytes); divide by `objects` for the per-object cost.
    pub index_bytes: u64,
    /// Purge marks held for objects on disk (prefix tombstones and soft purges, checked on
    /// lookups); region reclaim drops the ones older than every region in use. At most 65,536:
    /// past that they fold (see the `marks` module).
    pub purge_marks: u64,
    pub engine: EngineKind,
    pub direct_io: bool,
}
