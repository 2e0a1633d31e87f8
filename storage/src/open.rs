//! Opening a store: validate, open the file, pick the engine, then format, load the clean-close
//! snapshot, or recover after a crash from region summaries plus a scan of unsealed regions.
//! Also the clean-close snapshot writer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::buf::{round_up, AlignedBuf};
use crate::config::{EngineChoice, StoreConfig};
use crate::error::StoreError;
use crate::format::{
    self, KeyHash, Layout, RegionSnap, RegionState, SbRead, Snapshot, SumEntry, Superblock, BLOCK,
    FORMAT_VERSION,
};
use crate::index::{Entry, PERSISTED, PINNED};
use crate::io::{psync::PsyncEngine, uring::UringEngine, Io, IoEngine, OwnedFile, PSYNC_THREADS};
use crate::journal::{self, Journal, Record};
use crate::marks::PrefixMarks;
use crate::store::{Inner, RegionMeta, State};
use crate::writer::{write_summary, Active};

const ZERO_CHUNK: u64 = 8 << 20;

fn open_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        source,
    }
}

fn fmt_err(path: &Path, msg: String) -> StoreError {
    StoreError::Format {
        path: path.to_path_buf(),
        msg,
    }
}

/// Opens with O_DIRECT, falling back to buffered I/O where the filesystem refuses it (EINVAL).
fn open_file(path: &Path, buffered: bool) -> Result<(File, bool), StoreError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    if buffered {
        return o
            .open(path)
            .map(|f| (f, false))
            .map_err(|e| open_err(path, e));
    }
    match o.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(path = %path.display(), "O_DIRECT refused (EINVAL); using buffered I/O");
            o.open(path)
                .map(|f| (f, false))
                .map_err(|e| open_err(path, e))
        }
        Err(e) => Err(open_err(path, e)),
    }
}

fn block_device_size(f: &File) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: fills 8 bytes of a local.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        // Only uniqueness across stores matters; time and pid are a fine fallback.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        v = t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40);
    }
    v
}

fn make_engine(
    choice: EngineChoice,
    file: Arc<OwnedFile>,
) -> Result<Arc<dyn IoEngine>, StoreError> {
    let psync =
        |file| PsyncEngine::new(file, PSYNC_THREADS).map(|e| Arc::new(e) as Arc<dyn IoEngine>);
    match choice {
        EngineChoice::Psync => Ok(psync(file)?),
        EngineChoice::Uring => Ok(Arc::new(UringEngine::new(file).map_err(|e| {
            StoreError::Config(format!(
                "io_uring unavailable ({e}); use EngineChoice::Auto or Psync"
            ))
        })?)),
        EngineChoice::Auto => match UringEngine::new(file.clone()) {
            Ok(e) => Ok(Arc::new(e)),
            Err(e) => {
                tracing::warn!(errno = e.raw_os_error().unwrap_or(0), error = %e, "io_uring unavailable; using psync");
                Ok(psync(file)?)
            }
        },
    }
}

pub(crate) async fn open(mut cfg: StoreConfig) -> Result<(Inner, Option<Active>), StoreError> {
    if cfg.size % BLOCK != 0 {
        return Err(StoreError::Config(format!(
            "size {} is not a multiple of 4096",
            cfg.size
        )));
    }
    let mut layout = Layout::new(cfg.size, cfg.region_size)?;
    let path = cfg.path.clone();
    let (file, direct) = open_file(&path, cfg.buffered_io)?;
    let meta = file.metadata().map_err(|e| open_err(&path, e))?;
    // `reformat` wipes only what cannot be opened as a store of this version and geometry (the
    // cases below that are otherwise errors). It wiped every store at every start before, a
    // valid one of the same version and size included: an operator who set it as a safety
    // valve lost every cached and pushed object on each restart.
    let mut must_format = false;
    if meta.file_type().is_block_device() {
        let dev = block_device_size(&file).map_err(|e| open_err(&path, e))?;
        if dev < cfg.size {
            return Err(StoreError::TooSmall {
                msg: format!(
                    "device {} has {dev} bytes, config asks for {}",
                    path.display(),
                    cfg.size
                ),
            });
        }
    } else if meta.len() == 0 || (meta.len() < cfg.size && cfg.reformat) {
        must_format = true;
    } else if meta.len() < cfg.size {
        return Err(fmt_err(
            &path,
            format!(
                "file is {} bytes but the config size is {}; a truncated store or another file (set reformat to wipe it)",
                meta.len(),
                cfg.size
            ),
        ));
    }
    if must_format && meta.file_type().is_file() && meta.len() < cfg.size {
        // SAFETY: plain syscall on an open descriptor.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, cfg.size as libc::off_t) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) {
                return Err(StoreError::Full(format!(
                    "cannot preallocate {} bytes at {}: no space left on device",
                    cfg.size,
                    path.display()
                )));
            }
            file.set_len(cfg.size).map_err(|e| open_err(&path, e))?;
        }
    }
    let owned = Arc::new(OwnedFile {
        fd: file.into_raw_fd(),
    });
    let io = Io::new(make_engine(cfg.engine, owned)?);
    tracing::info!(path = %path.display(), engine = io.kind().as_str(), direct, "opening store");

    let first = io.read(0, 2 * BLOCK as usize).await?;
    let found = Superblock::read(first.as_slice());
    // A store of this size formatted with another region size opens with its own when the
    // caller's region size was only a default (`adopt_region_size`).
    if let SbRead::Valid(sb) = &found {
        let adopt = cfg.adopt_region_size
            && !must_format
            && sb.version == FORMAT_VERSION
            && sb.size == cfg.size
            && sb.region_size != cfg.region_size;
        if adopt {
            if let Ok(theirs) = Layout::new(cfg.size, sb.region_size) {
                tracing::info!(
                    region_size = sb.region_size,
                    "opening the store with the region size it was formatted with"
                );
                cfg.region_size = sb.region_size;
                layout = theirs;
            }
        }
    }
    let (mut sb, st, active) = match found {
        _ if must_format => format_store(&io, &layout).await?,
        SbRead::Blank => format_store(&io, &layout).await?,
        SbRead::Garbage if cfg.reformat => format_store(&io, &layout).await?,
        SbRead::Valid(sb)
            if cfg.reformat
                && (sb.version != FORMAT_VERSION
                    || sb.size != cfg.size
                    || sb.region_size != cfg.region_size) =>
        {
            tracing::warn!(
                version = sb.version,
                size = sb.size,
                region_size = sb.region_size,
                "reformatting a store of another version or geometry (reformat is set)"
            );
            format_store(&io, &layout).await?
        }
        SbRead::Garbage => return Err(fmt_err(
            &path,
            "no valid vedge superblock and not zero-filled: not a store (set reformat to wipe it)"
                .into(),
        )),
        SbRead::Valid(sb) => {
            if sb.version != FORMAT_VERSION {
                return Err(fmt_err(
                    &path,
                    format!(
                        "store has format version {}, this build reads version {FORMAT_VERSION}; set reformat to wipe it",
                        sb.version
                    ),
                ));
            }
            if sb.size != cfg.size || sb.region_size != cfg.region_size {
                return Err(fmt_err(
                    &path,
                    format!(
                        "store was formatted with size {} and region_size {}, config says size {} and region_size {}; \
                         fix the config or set reformat to wipe it",
                        sb.size, sb.region_size, cfg.size, cfg.region_size
                    ),
                ));
            }
            let loaded = if sb.clean {
                load_snapshot(&io, &layout, &sb).await
            } else {
                None
            };
            match loaded {
                Some((st, active)) => (sb, st, active),
                None => {
                    if sb.clean {
                        tracing::warn!(
                            "index snapshot unreadable; rebuilding from region summaries"
                        );
                    }
                    let (st, _) = recover(&io, &layout, sb.nonce).await?;
                    (sb, st, None)
                }
            }
        }
    };
    // From here on a crash must not trust the snapshot: mark the store dirty before any write.
    sb.gen += 1;
    sb.clean = false;
    write_superblock(&io, &sb).await?;
    let inner = Inner::new(cfg, layout, io, direct, sb, st);
    Ok((inner, active))
}

async fn write_superblock(io: &Io, sb: &Superblock) -> Result<(), StoreError> {
    let mut buf = AlignedBuf::zeroed(BLOCK as usize);
    let e = sb.encode();
    buf.as_mut_slice()[..e.len()].copy_from_slice(&e);
    io.write(sb.slot_off(), buf).await?;
    io.sync().await?;
    Ok(())
}

async fn format_store(
    io: &Io,
    layout: &Layout,
) -> Result<(Superblock, State, Option<Active>), StoreError> {
    tracing::info!(
        size = layout.size,
        regions = layout.regions,
        "formatting store (zero-fill)"
    );
    let mut set = JoinSet::new();
    let mut off = 0u64;
    while off < layout.size {
        let len = ZERO_CHUNK.min(layout.size - off);
        let io2 = io.clone();
        let at = off;
        set.spawn(async move { io2.write(at, AlignedBuf::zeroed(len as usize)).await });
        off += len;
        if set.len() >= 4 {
            if let Some(r) = set.join_next().await {
                r.map_err(|e| io::Error::other(e.to_string()))??;
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| io::Error::other(e.to_string()))??;
    }
    io.sync().await?;
    let sb = Superblock {
        version: FORMAT_VERSION,
        gen: 1,
        size: layout.size,
        region_size: layout.region_size,
        nonce: random_u64(),
        clean: false,
        snapshot_len: 0,
        snapshot_crc: 0,
    };
    Ok((sb, State::new(layout), None))
}

async fn load_snapshot(
    io: &Io,
    layout: &Layout,
    sb: &Superblock,
) -> Option<(State, Option<Active>)> {
    if sb.snapshot_len == 0 || sb.snapshot_len > layout.snapshot_cap {
        return None;
    }
    let buf = io
        .read(layout.snapshot_off, sb.snapshot_len as usize)
        .await
        .ok()?;
    let b = buf.as_slice().get(..sb.snapshot_len as usize)?;
    if crc32c::crc32c(b) != sb.snapshot_crc {
        return None;
    }
    let snap = format::decode_snapshot(b, sb.nonce)?;
    if snap.regions.len() != layout.regions as usize {
        return None;
    }
    let mut st = State::new(layout);
    st.max_gen = snap.max_gen;
    st.prefixes = PrefixMarks::from_vec(snap.prefixes);
    // Soft purges are not in the snapshot: the journal keeps them across a clean close.
    st.regions = snap
        .regions
        .iter()
        .map(|r| RegionMeta {
            gen: r.gen,
            state: r.state,
        })
        .collect();
    // Intern each snapshot tag set once, then hand out references in bulk.
    let mut counts = vec![0u64; snap.tagsets.len()];
    for e in &snap.entries {
        *counts.get_mut(e.tagset as usize)? += 1;
    }
    let mut ids = vec![0u32; snap.tagsets.len()];
    for (i, t) in snap.tagsets.iter().enumerate() {
        if counts[i] > 0 && !t.is_empty() {
            ids[i] = st.tags.acquire_n(t, counts[i]);
        }
    }
    st.index.reserve(snap.entries.len());
    for e in &snap.entries {
        if layout.region_of(e.block) >= layout.regions {
            return None;
        }
        let entry = Entry {
            block: e.block,
            blocks_flags: e.blocks_flags & PERSISTED,
            tagset: ids[e.tagset as usize],
        };
        st.index_put(e.hash, entry);
    }
    let active = snap
        .regions
        .iter()
        .enumerate()
        .find(|(_, r)| r.state == RegionState::Active)
        .map(|(i, r)| {
            let region = i as u32;
            let objects = st
                .index
                .iter()
                .filter(|(_, e)| layout.region_of(e.block) == region)
                .map(|(h, _)| *h)
                .collect();
            Active {
                region,
                gen: r.gen,
                write_end: r.write_end,
                reserved: r.reserved,
                objects,
            }
        });
    st.next_seq = match &active {
        Some(a) => (a.gen << 32) | u64::from(a.write_end),
        None => (st.max_gen + 1) << 32,
    };
    Some((st, active))
}

/// An object found during recovery, before the newest version of each key is chosen.
struct Found {
    seq: u64,
    hash: KeyHash,
    block: u32,
    blocks_flags: u32,
    tags: u32,
}

/// Rebuilds the index after a crash (or an unreadable snapshot): sealed regions from their
/// summaries, the others by scanning. Scanned regions get a summary written afterwards.
/// Returns the state and the number of regions scanned.
pub(crate) async fn recover(
    io: &Io,
    layout: &Layout,
    nonce: u64,
) -> Result<(State, usize), StoreError> {
    let mut st = State::new(layout);
    let mut found: Vec<Found> = Vec::new();
    let mut tagsets: Vec<Vec<String>> = Vec::new();
    let mut scanned: Vec<(u32, u64, Vec<KeyHash>)> = Vec::new();
    let rb = layout.region_blocks();
    let mut headers = Vec::with_capacity(layout.regions as usize);
    for r in 0..layout.regions {
        let head = io.read(layout.region_off(r), BLOCK as usize).await?;
        headers.push(format::decode_region_header(head.as_slice(), nonce, r));
    }
    // A region a committed reclaim freed (named, at the generation its header still has, by
    // the header of the region its kept objects were copied into) is free: everything it kept
    // is in that region, newer, and the rest was evicted.
    let freed: Vec<(u32, u64)> = headers
        .iter()
        .flatten()
        .filter_map(|(_, rec)| rec.map(|x| (x.region, x.gen)))
        .collect();
    for r in 0..layout.regions {
        let Some((gen, _)) = headers[r as usize] else {
            continue;
        };
        st.max_gen = st.max_gen.max(gen);
        if freed.contains(&(r, gen)) {
            st.regions[r as usize] = RegionMeta {
                gen,
                state: RegionState::Free,
            };
            continue;
        }
        st.regions[r as usize] = RegionMeta {
            gen,
            state: RegionState::Sealed,
        };
        let roff = layout.region_off(r);
        let base = r * rb;
        if let Some(entries) = read_summary(io, layout, nonce, r, gen, &mut tagsets).await {
            for e in entries {
                found.push(Found {
                    seq: (gen << 32) | u64::from(e.block),
                    hash: e.hash,
                    block: base + e.block,
                    blocks_flags: e.blocks_flags & PERSISTED,
                    tags: e.tagset,
                });
            }
            continue;
        }
        // Unsealed (the active region at the crash) or summary damaged: scan every block.
        tracing::info!(region = r, gen, "scanning unsealed region");
        let buf = io.read(roff, layout.region_size as usize).await?;
        let b = buf.as_slice();
        let mut hashes = Vec::new();
        let mut blk = 1u32;
        while blk < rb - 1 {
            let off = blk as usize * BLOCK as usize;
            if let Some(h) = format::decode_object_header(&b[off..], nonce, gen) {
                let ext = h.extent();
                let end = off as u64 + ext;
                if end <= layout.region_size - BLOCK && format::payload_ok(&b[off..], &h) {
                    let hash =
                        format::key_hash(nonce, &b[off + h.key_range.0..off + h.key_range.1]);
                    tagsets.push(h.tags.clone());
                    found.push(Found {
                        seq: (gen << 32) | u64::from(blk),
                        hash,
                        block: base + blk,
                        blocks_flags: (ext / BLOCK) as u32 | if h.pinned { PINNED } else { 0 },
                        tags: (tagsets.len() - 1) as u32,
                    });
                    hashes.push(hash);
                    blk += (ext / BLOCK) as u32;
                    continue;
                }
            }
            blk += 1;
        }
        scanned.push((r, gen, hashes));
    }
    st.next_seq = (st.max_gen + 1) << 32;
    found.sort_unstable_by_key(|f| f.seq);
    st.index.reserve(found.len());
    for f in &found {
        let tagset = match tagsets.get(f.tags as usize) {
            Some(t) if !t.is_empty() => st.tags.acquire(t),
            _ => 0,
        };
        st.index_put(
            f.hash,
            Entry {
                block: f.block,
                blocks_flags: f.blocks_flags,
                tagset,
            },
        );
    }
    let n = scanned.len();
    if n > 0 {
        // Summaries for the scanned regions, so the next crash does not scan them again. Needs
        // an Inner-free writer: borrow the pieces write_summary uses through a temporary.
        let tmp = crate::store::Inner::new(
            StoreConfig::new("", layout.size),
            *layout,
            io.clone(),
            false,
            Superblock {
                version: FORMAT_VERSION,
                gen: 0,
                size: layout.size,
                region_size: layout.region_size,
                nonce,
                clean: false,
                snapshot_len: 0,
                snapshot_crc: 0,
            },
            st,
        );
        for (r, gen, hashes) in &scanned {
            if let Err(e) = write_summary(&tmp, *r, *gen, hashes).await {
                tracing::warn!(error = %e, region = r, "writing recovered summary failed");
            }
        }
        st = tmp.st.into_inner();
    }
    tracing::info!(
        objects = st.index.len(),
        regions_scanned = n,
        "store recovered after unclean shutdown"
    );
    Ok((st, n))
}

/// Reads and checks the summary of sealed region `r`, appending its tag sets to `tagsets` and
/// returning entries whose `tagset` indexes that table.
async fn read_summary(
    io: &Io,
    layout: &Layout,
    nonce: u64,
    r: u32,
    gen: u64,
    tagsets: &mut Vec<Vec<String>>,
) -> Option<Vec<SumEntry>> {
    let end = layout.region_off(r) + layout.region_size;
    let tb = io.read(end - BLOCK, BLOCK as usize).await.ok()?;
    let t = format::decode_trailer(tb.as_slice(), nonce)?;
    if t.gen != gen {
        return None;
    }
    let space = round_up(u64::from(t.summary_len));
    if space + 2 * BLOCK > layout.region_size {
        return None;
    }
    let sb = io.read(end - BLOCK - space, space as usize).await.ok()?;
    let body = sb.as_slice().get(..t.summary_len as usize)?;
    if crc32c::crc32c(body) != t.summary_crc {
        tracing::warn!(
            region = r,
            "region summary checksum mismatch; scanning the region instead"
        );
        return None;
    }
    let (sets, mut entries) = format::decode_summary(body)?;
    let base = tagsets.len() as u32;
    for e in &mut entries {
        if e.tagset as usize >= sets.len() || e.block == 0 || e.block >= layout.region_blocks() {
            return None;
        }
        e.tagset += base;
    }
    tagsets.extend(sets);
    Some(entries)
}

/// Replays the purge journal over the index just opened (snapshot or recovery) and rewrites
/// it with what can still select something (`journal::compact`), and opens it for appending. Before the writer starts: nothing is written meanwhile.
pub(crate) async fn replay_journal(inner: &Inner) -> Result<Journal, StoreError> {
    let path = inner
        .cfg
        .journal_path
        .clone()
        .unwrap_or_else(|| journal::default_path(&inner.cfg.path));
    let nonce = inner.nonce;
    let p = path.clone();
    let records = tokio::task::spawn_blocking(move || journal::read(&p, nonce))
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
        .map_err(|e| open_err(&path, e))?;
    // What compaction keeps selects every object the records did: replaying it is replaying
    // them, at the cost of one record per selector and a bounded set of prefix marks.
    let min_gen = inner.st.lock().min_disk_gen();
    let keep: Vec<Record> = journal::compact(records, min_gen);
    {
        let mut st = inner.st.lock();
        for r in &keep {
            st.apply_purge(&inner.layout, &|k| inner.hash(k), &r.purge, r.mark);
        }
    }
    if !keep.is_empty() {
        tracing::info!(records = keep.len(), "purge journal replayed");
    }
    let p = path.clone();
    tokio::task::spawn_blocking(move || Journal::create(p, nonce, &keep))
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
        .map_err(|e| open_err(&path, e))
}

/// Writes the index snapshot and marks the superblock clean. Called by `Store::close` after
/// the writer has drained. Returns whether the snapshot was written (false: it did not fit,
/// the next open recovers from region summaries).
pub(crate) async fn write_snapshot(
    inner: &Inner,
    active: Option<Active>,
) -> Result<bool, StoreError> {
    let layout = inner.layout;
    let body = {
        let st = inner.st.lock();
        let mut snap = Snapshot {
            max_gen: st.max_gen,
            regions: st
                .regions
                .iter()
                .map(|r| RegionSnap {
                    gen: r.gen,
                    state: r.state,
                    write_end: 0,
                    reserved: 0,
                })
                .collect(),
            prefixes: st.prefixes.to_vec(),
            tagsets: vec![Vec::new()],
            entries: Vec::with_capacity(st.index.len()),
        };
        if let Some(a) = &active {
            snap.regions[a.region as usize] = RegionSnap {
                gen: a.gen,
                state: RegionState::Active,
                write_end: a.write_end,
                reserved: a.reserved,
            };
        }
        let mut ids = std::collections::HashMap::new();
        for (h, e) in &st.index {
            let ts = if e.tagset == 0 {
                0
            } else {
                *ids.entry(e.tagset).or_insert_with(|| {
                    snap.tagsets.push(st.tags.get(e.tagset).to_vec());
                    (snap.tagsets.len() - 1) as u32
                })
            };
            snap.entries.push(SumEntry {
                hash: *h,
                block: e.block,
                blocks_flags: e.blocks_flags & PERSISTED,
                tagset: ts,
            });
        }
        format::encode_snapshot(inner.nonce, &snap)
    };
    if body.len() as u64 > layout.snapshot_cap {
        tracing::warn!(
            len = body.len(),
            cap = layout.snapshot_cap,
            "index snapshot does not fit its area; next open rebuilds from region summaries"
        );
        return Ok(false);
    }
    let mut buf = AlignedBuf::zeroed(body.len());
    buf.as_mut_slice()[..body.len()].copy_from_slice(&body);
    inner.io.write(layout.snapshot_off, buf).await?;
    inner.io.sync().await?;
    let sb = {
        let mut sb = inner.sb.lock();
        sb.gen += 1;
        sb.clean = true;
        sb.snapshot_len = body.len() as u64;
        sb.snapshot_crc = crc32c::crc32c(&body);
        sb.clone()
    };
    write_superblock(&inner.io, &sb).await?;
    tracing::info!(
        objects = inner.st.lock().index.len(),
        bytes = body.len(),
        "store closed cleanly"
    );
    Ok(true)
}
