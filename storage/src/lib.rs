//! vedge-storage: the SSD segment store under the edge's RAM tier.
//!
//! Immutable objects (video segments, 0.1-10 MB) are appended to fixed-size regions of one
//! preallocated file or block device, found through an in-RAM index of 128-bit key hashes, and
//! evicted a whole region at a time, oldest first, rewriting the objects hit since their last
//! pass (a CLOCK with a two-bit hit counter; [`Store::touch`] counts hits served by a tier
//! above). It knows nothing of HTTP: keys are opaque bytes, values are a body plus a small
//! [`Meta`].
//!
//! Module map:
//! - [`store`](crate::Store): the handle, lookups with shared and verified reads, removal, pins.
//! - `writer`: the single task that allocates space, writes, seals and evicts regions.
//! - `open`: format, snapshot load, crash recovery, clean-close snapshot.
//! - `journal`: the purge journal ([`Purge`], [`Selector`]).
//! - `marks`: the prefix tombstones lookups check (variant prefixes `key\0` and free-form
//!   prefixes in sorted maps; bounded, folding when full).
//! - `format`: every on-disk structure. `index`: the RAM index and tag sets.
//! - `io`: the [`IoEngine`](crate::EngineKind) trait with io_uring and psync engines. `buf`:
//!   the aligned buffers that become `Bytes` without a copy. `object_buf`: [`ObjectBuf`], an
//!   object the caller fills in place (push ingest).
//!
//! # On-disk format (version 1)
//!
//! ```text
//! 0        superblock copy A (4 KiB)   } the valid copy with the higher generation wins;
//! 4 KiB    superblock copy B (4 KiB)   } writes alternate between them
//! 8 KiB    snapshot area (size/128, min 64 KiB): index snapshot written on clean close
//! data     regions 0..n, each region_size bytes (64 KiB-aligned start):
//!            block 0            region header: magic, store nonce, region no, generation, crc;
//!                               if a reclaim opened the region, then its reclaim record:
//!                               magic, region it freed, that region's generation, crc
//!            block 1..          objects, each 4 KiB-aligned:
//!                                 header: magic, version, pinned, nonce, region generation,
//!                                 lengths, stored-at, expires-at, key, head blob, tags,
//!                                 one crc32c per 1 MiB payload chunk, header crc32c;
//!                                 then the payload right after the header, zero-padded
//!            last blocks        (sealed regions) summary: tag sets + (key hash, block,
//!                               extent|flags, tag set) per live object, then a trailer block:
//!                               magic, nonce, generation, summary length and crc32c, crc
//! ```
//!
//! Invariants:
//! - Formatting zero-fills the file. A file that is not zero and holds no valid superblock, a
//!   superblock of another version, or another size/region size is refused, never reformatted
//!   (unless `reformat`).
//! - Every region (re)opened for writing gets a new global generation, written in its header
//!   before any object; object headers carry it. Stale objects of an earlier use of the region
//!   can therefore never be mistaken for live ones, and an object's sequence number is
//!   (region generation, block) - no per-object counter is stored.
//! - The store nonce (random at format) is in every header and seeds the key hash, so a payload
//!   cannot forge a header or aim hash collisions.
//! - An object enters the index only after its write completed; until then lookups serve it
//!   from the in-RAM pending map, except an [`ObjectBuf`] written in place, whose payload lives
//!   in the write buffer: lookups see the previous version (or miss) until it is written.
//!   `insert_durable` and `insert_durable_buf` also wait for fdatasync.
//! - A region is sealed only after all its writes completed; its summary lists the objects the
//!   index still points to at that moment (so removals before sealing are persisted).
//! - Every read is verified: header crc, nonce, generation, extent, key hash and, per 1 MiB, the
//!   payload crc32c; the full key is compared with the caller's. Failures are dropped from the
//!   index, counted, and reported as a miss.
//!   Reclaim's read-back of an object it keeps checks the header only: the copy carries the
//!   stored payload checksums unchanged (no second checksum pass), so damage travels with the
//!   copy and is refused by the first lookup that reads it.
//! - One region is always free, and a reclaim never writes the region it frees before what it
//!   keeps is on disk elsewhere. The last free region is opened by reclaiming the oldest sealed
//!   one into it: the kept objects are copied into it and fdatasync'ed, then its header is
//!   written with the reclaim record naming the victim and its generation (the commit, one
//!   block) and fdatasync'ed; only then does the index move to the copies and the victim
//!   become free (it is the next region opened). Recovery takes a region named by a valid
//!   record, still at that generation, as free. A crash at any point thus finds every kept
//!   object either in the victim or in the new region, and a free region for the next reclaim;
//!   a write error leaves the index (and every object) where it was.
//! - Clean close: drain writes, write the snapshot, then the superblock with `clean`. Open
//!   with `clean`: load the snapshot and immediately write a dirty superblock. Otherwise
//!   (crash): read every region header and trailer, take sealed regions from their summaries,
//!   scan the others block by block (objects must pass all checks), newest sequence wins, and
//!   write summaries for the scanned regions.
//!
//! - Purge journal (`journal`): `Store::purge` applies a purge with a mark (the sequence the
//!   next allocation gets), appends a checksummed record to the journal file and fdatasyncs it
//!   before returning; open replays the records over the recovered index (objects below the
//!   mark that the purge selects are removed, or marked soft-purged), so an acknowledged purge
//!   is never undone by a crash. Compaction keeps the newest record per selector and folds
//!   prefix records into the bounded prefix marks: what it keeps selects at least what the
//!   records did. A large purge is applied in bounded holds of the state lock, on a blocking
//!   thread. A write re-checks its pending entry after allocation, so a
//!   purge concurrent with it either drops it or has a mark above its sequence. Records stay
//!   while any region written before them is still on disk, freed or not, hard ones after a
//!   clean close too (a crash after the next open recovers without the snapshot). Reclaim
//!   keeps no soft-purged object (its rewrite would be newer than the purge, so fresh).
//!
//! Crash semantics: every object whose insert was acknowledged (`insert_durable` returned, or
//! `flush` returned after `insert`) is served after restart; torn writes fail their checksums
//! and are dropped. Removals, prefix/tag purges and pin changes are persisted by the clean-close
//! snapshot and by summaries of regions sealed after them; after a crash, those made since the
//! last clean close on objects in regions sealed earlier are lost (removed objects can
//! reappear, pins revert to the value written with the object). Evicted objects can also
//! reappear after a crash if their region had not been rewritten yet.

mod buf;
mod config;
mod error;
mod format;
mod index;
mod io;
mod journal;
mod marks;
mod object_buf;
mod open;
mod store;
mod writer;

pub use buf::{ReadMemory, ReadTarget};
pub use config::{
    default_region_size, Admit, EngineChoice, EngineKind, Hit, Meta, SkipReason, Source,
    StoreConfig, StoreStats,
};
pub use error::StoreError;
#[doc(hidden)]
pub use io::RingFailure;
pub use journal::{Purge, Selector};
pub use object_buf::ObjectBuf;
pub use store::Store;
