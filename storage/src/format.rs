//! On-disk format: layout, superblock, region header and trailer, object header, summary, snapshot.
//!
//! Everything is little-endian and guarded by crc32c. See the crate docs for the big picture.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::buf::{round_up, AlignedBuf, ALIGN};
use crate::error::StoreError;

/// Bumped on any incompatible change; a store of another version is refused, never reformatted.
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SB_MAGIC: &[u8; 8] = b"VEDGESSD";
const REGION_MAGIC: u32 = u32::from_le_bytes(*b"VREG");
const RECLAIM_MAGIC: u32 = u32::from_le_bytes(*b"VRCL");
const TRAILER_MAGIC: u32 = u32::from_le_bytes(*b"VSUM");
const OBJ_MAGIC: u32 = u32::from_le_bytes(*b"VOBJ");
const SNAP_MAGIC: u32 = u32::from_le_bytes(*b"VSNP");
/// Payload checksum granularity.
pub(crate) const CHUNK: usize = 1 << 20;
pub(crate) const BLOCK: u64 = ALIGN as u64;
/// Fixed part of an object header, before key, head, tags and chunk checksums.
pub(crate) const OBJ_FIXED: usize = 76;
/// Bytes one object adds to its region's summary, besides its tags.
pub(crate) const SUMMARY_ENTRY: u64 = 28;
pub(crate) const SUMMARY_FIXED: u64 = 16;

// ---------------------------------------------------------------------------------------------
// Key hashing

/// 128-bit hash of a key, seeded with the store's random nonce so outsiders cannot aim
/// collisions. Stored as four u32 so an index slot packs into 28 bytes (no 16-byte alignment).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct KeyHash(pub [u32; 4]);

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: the index uses an identity hasher over these 64 bits.
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

impl KeyHash {
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, w) in self.0.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        KeyHash([w(0), w(4), w(8), w(12)])
    }
}

fn fmix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(crate) fn key_hash(nonce: u64, key: &[u8]) -> KeyHash {
    let mut a = fmix(nonce ^ 0x9e37_79b9_7f4a_7c15);
    let mut b = fmix(nonce.rotate_left(32) ^ 0xc2b2_ae3d_27d4_eb4f ^ key.len() as u64);
    for chunk in key.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        a = (a ^ w)
            .wrapping_mul(0x87c3_7b91_1142_53d5)
            .rotate_left(31)
            .wrapping_add(b);
        b = (b ^ w.rotate_left(17))
            .wrapping_mul(0x4cf5_ad43_2745_937f)
            .rotate_left(29)
            .wrapping_add(a);
    }
    let lo = fmix(a ^ (key.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let hi = fmix(b ^ lo);
    KeyHash([lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32])
}

// ---------------------------------------------------------------------------------------------
// Little-endian encoding helpers

#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    pub(crate) fn crc(&mut self) {
        let c = crc32c::crc32c(&self.0);
        self.u32(c);
    }
}

/// Cursor over untrusted bytes: every read is bounds-checked and reports `None` when short.
pub(crate) struct Dec<'a> {
    b: &'a [u8],
    pub pos: usize,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Dec { b, pos: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Checks the crc32c stored in the 4 bytes after `b[..len]`.
fn crc_ok(b: &[u8], len: usize) -> bool {
    match b.get(len..len + 4) {
        Some(c) => crc32c::crc32c(&b[..len]).to_le_bytes() == c,
        None => false,
    }
}

pub(crate) fn time_to_parts(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (d.as_secs(), d.subsec_nanos())
}

pub(crate) fn parts_to_time(secs: u64, nanos: u32) -> SystemTime {
    // Checked: a stored value past what `SystemTime` holds reads as the epoch (long expired),
    // never a panic.
    UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos.min(999_999_999)))
        .unwrap_or(UNIX_EPOCH)
}

pub(crate) fn encode_tags(tags: &[String]) -> Vec<u8> {
    let mut e = Enc::default();
    e.u16(tags.len().min(u16::MAX as usize) as u16);
    for t in tags.iter().take(u16::MAX as usize) {
        let b = &t.as_bytes()[..t.len().min(u16::MAX as usize)];
        e.u16(b.len() as u16);
        e.bytes(b);
    }
    e.0
}

pub(crate) fn decode_tags(d: &mut Dec<'_>) -> Option<Vec<String>> {
    let n = d.u16()?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let l = d.u16()?;
        out.push(String::from_utf8_lossy(d.take(l as usize)?).into_owned());
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Layout

/// Where things live in the file. Derived from (size, region_size) only.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub size: u64,
    pub region_size: u64,
    pub snapshot_off: u64,
    pub snapshot_cap: u64,
    pub data_start: u64,
    pub regions: u32,
}

impl Layout {
    pub(crate) fn new(size: u64, region_size: u64) -> Result<Self, StoreError> {
        if region_size < 64 * 1024 || region_size % BLOCK != 0 || region_size > (1 << 32) {
            return Err(StoreError::Config(format!(
                "region_size {region_size} must be a multiple of 4096 between 64 KiB and 4 GiB"
            )));
        }
        let snapshot_off = 2 * BLOCK;
        // ~28 bytes per object in the snapshot: size/128 holds objects down to ~3.5 KiB on average.
        let snapshot_cap = round_up((size / 128).max(64 * 1024));
        let data_start = (snapshot_off + snapshot_cap).div_ceil(64 * 1024) * 64 * 1024;
        let regions = size.saturating_sub(data_start) / region_size;
        if regions < 3 {
            return Err(StoreError::TooSmall {
                msg: format!(
                    "size {size} bytes holds {regions} regions of {region_size} bytes after {data_start} bytes of \
                     superblocks and snapshot area; need at least 3 (try size >= {})",
                    data_start + 3 * region_size
                ),
            });
        }
        if (regions * region_size) / BLOCK > u32::MAX as u64 {
            return Err(StoreError::Config(format!(
                "size {size} exceeds the 16 TiB limit of one store"
            )));
        }
        Ok(Layout {
            size,
            region_size,
            snapshot_off,
            snapshot_cap,
            data_start,
            regions: regions as u32,
        })
    }

    pub(crate) fn region_blocks(&self) -> u32 {
        (self.region_size / BLOCK) as u32
    }

    pub(crate) fn region_off(&self, r: u32) -> u64 {
        self.data_start + r as u64 * self.region_size
    }

    pub(crate) fn block_off(&self, block: u32) -> u64 {
        self.data_start + block as u64 * BLOCK
    }

    pub(crate) fn region_of(&self, block: u32) -> u32 {
        block / self.region_blocks()
    }

    /// Largest object extent a region accepts: a quarter of a region.
    pub(crate) fn max_extent(&self) -> u64 {
        self.region_size / 4
    }
}

// ---------------------------------------------------------------------------------------------
// Superblock

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub version: u32,
    pub gen: u64,
    pub size: u64,
    pub region_size: u64,
    pub nonce: u64,
    pub clean: bool,
    pub snapshot_len: u64,
    pub snapshot_crc: u32,
}

/// What the first two blocks of a file hold.
pub(crate) enum SbRead {
    /// Both copies are zero: a freshly created or zero-filled file.
    Blank,
    Valid(Superblock),
    /// Not zero and no valid copy: someone else's data, or both copies torn.
    Garbage,
}

impl Superblock {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(SB_MAGIC);
        e.u32(self.version);
        e.u64(self.gen);
        e.u64(self.size);
        e.u64(self.region_size);
        e.u64(self.nonce);
        e.u8(self.clean as u8);
        e.u64(self.snapshot_len);
        e.u32(self.snapshot_crc);
        e.crc();
        e.0
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut d = Dec::new(b);
        if d.take(8)? != SB_MAGIC {
            return None;
        }
        let version = d.u32()?;
        let sb = Superblock {
            version,
            gen: d.u64()?,
            size: d.u64()?,
            region_size: d.u64()?,
            nonce: d.u64()?,
            clean: d.u8()? != 0,
            snapshot_len: d.u64()?,
            snapshot_crc: d.u32()?,
        };
        crc_ok(b, d.pos).then_some(sb)
    }

    /// Picks the valid copy with the highest generation from the first 8 KiB of the file.
    pub(crate) fn read(first_two_blocks: &[u8]) -> SbRead {
        let (a, b) = first_two_blocks.split_at(BLOCK as usize);
        let best = [Self::decode(a), Self::decode(b)]
            .into_iter()
            .flatten()
            .max_by_key(|s| s.gen);
        match best {
            Some(sb) => SbRead::Valid(sb),
            None if first_two_blocks.iter().all(|&x| x == 0) => SbRead::Blank,
            None => SbRead::Garbage,
        }
    }

    /// Copy slot for this generation: the two copies alternate so a torn write leaves the other.
    pub(crate) fn slot_off(&self) -> u64 {
        (self.gen % 2) * BLOCK
    }
}

// ---------------------------------------------------------------------------------------------
// Region header and trailer

/// A region a reclaim freed: its number and the generation it had. Written after the region
/// header of the region the reclaim copied its kept objects into (see `writer::reclaim_into`):
/// once that header is valid on disk, recovery takes the named region as free, provided its own
/// header still carries that generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reclaimed {
    pub region: u32,
    pub gen: u64,
}

/// The region header; `reclaimed` appends the reclaim record after the header's crc. Builds
/// that predate the record read the header and ignore what follows it (format version 1).
pub(crate) fn encode_region_header(
    nonce: u64,
    region: u32,
    gen: u64,
    reclaimed: Option<Reclaimed>,
) -> Vec<u8> {
    let mut e = Enc::default();
    e.u32(REGION_MAGIC);
    e.u64(nonce);
    e.u32(region);
    e.u64(gen);
    e.crc();
    if let Some(r) = reclaimed {
        e.u32(RECLAIM_MAGIC);
        e.u32(r.region);
        e.u64(r.gen);
        e.crc();
    }
    e.0
}

/// Returns the region's generation, and the region its opening reclaimed if it says so, if the
/// header is valid for this store and region.
pub(crate) fn decode_region_header(
    b: &[u8],
    nonce: u64,
    region: u32,
) -> Option<(u64, Option<Reclaimed>)> {
    let mut d = Dec::new(b);
    if d.u32()? != REGION_MAGIC || d.u64()? != nonce || d.u32()? != region {
        return None;
    }
    let gen = d.u64()?;
    if !crc_ok(b, d.pos) {
        return None;
    }
    d.pos += 4;
    let mut r = || {
        if d.u32()? != RECLAIM_MAGIC {
            return None;
        }
        let rec = Reclaimed {
            region: d.u32()?,
            gen: d.u64()?,
        };
        crc_ok(b, d.pos).then_some(rec)
    };
    Some((gen, r()))
}

pub(crate) struct Trailer {
    pub gen: u64,
    pub summary_len: u32,
    pub summary_crc: u32,
}

pub(crate) fn encode_trailer(nonce: u64, t: &Trailer) -> Vec<u8> {
    let mut e = Enc::default();
    e.u32(TRAILER_MAGIC);
    e.u64(nonce);
    e.u64(t.gen);
    e.u32(t.summary_len);
    e.u32(t.summary_crc);
    e.crc();
    e.0
}

pub(crate) fn decode_trailer(b: &[u8], nonce: u64) -> Option<Trailer> {
    let mut d = Dec::new(b);
    if d.u32()? != TRAILER_MAGIC || d.u64()? != nonce {
        return None;
    }
    let t = Trailer {
        gen: d.u64()?,
        summary_len: d.u32()?,
        summary_crc: d.u32()?,
    };
    crc_ok(b, d.pos).then_some(t)
}

// ---------------------------------------------------------------------------------------------
// Summary: the list of live objects of a sealed region

/// One summary/snapshot entry: enough to rebuild an index entry and its tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SumEntry {
    pub hash: KeyHash,
    /// Block within the region (summary) or global block (snapshot).
    pub block: u32,
    /// Extent in blocks, with the index flag bits (see `index::Entry`).
    pub blocks_flags: u32,
    pub tagset: u32,
}

fn encode_tagsets(e: &mut Enc, tagsets: &[Vec<String>]) {
    e.u32(tagsets.len() as u32);
    for t in tagsets {
        e.bytes(&encode_tags(t));
    }
}

fn decode_tagsets(d: &mut Dec<'_>) -> Option<Vec<Vec<String>>> {
    let n = d.u32()?;
    let mut v = Vec::with_capacity((n as usize).min(1 << 16));
    for _ in 0..n {
        v.push(decode_tags(d)?);
    }
    Some(v)
}

fn encode_entry(e: &mut Enc, s: &SumEntry) {
    e.bytes(&s.hash.to_bytes());
    e.u32(s.block);
    e.u32(s.blocks_flags);
    e.u32(s.tagset);
}

fn decode_entry(d: &mut Dec<'_>) -> Option<SumEntry> {
    Some(SumEntry {
        hash: KeyHash::from_bytes(d.take(16)?),
        block: d.u32()?,
        blocks_flags: d.u32()?,
        tagset: d.u32()?,
    })
}

/// Summary body; its size never exceeds the per-object reserve (`SUMMARY_FIXED` +
/// per object `SUMMARY_ENTRY` + encoded tags) because the tagset table deduplicates.
pub(crate) fn encode_summary(tagsets: &[Vec<String>], entries: &[SumEntry]) -> Vec<u8> {
    let mut e = Enc::default();
    encode_tagsets(&mut e, tagsets);
    e.u32(entries.len() as u32);
    for s in entries {
        encode_entry(&mut e, s);
    }
    e.0
}

pub(crate) fn decode_summary(b: &[u8]) -> Option<(Vec<Vec<String>>, Vec<SumEntry>)> {
    let mut d = Dec::new(b);
    let tagsets = decode_tagsets(&mut d)?;
    let n = d.u32()?;
    let mut entries = Vec::with_capacity((n as usize).min(1 << 20));
    for _ in 0..n {
        entries.push(decode_entry(&mut d)?);
    }
    Some((tagsets, entries))
}

// ---------------------------------------------------------------------------------------------
// Object header

/// Decoded object header; `header_len` is where the payload starts.
pub(crate) struct ObjHeader {
    pub pinned: bool,
    pub key_range: (usize, usize),
    pub head_range: (usize, usize),
    pub tags: Vec<String>,
    pub payload_len: u64,
    pub stored_at: SystemTime,
    pub expires_at: SystemTime,
    pub chunk_crcs: Vec<u32>,
    pub header_len: usize,
}

impl ObjHeader {
    pub(crate) fn extent(&self) -> u64 {
        round_up(self.header_len as u64 + self.payload_len)
    }
}

pub(crate) struct ObjMeta<'a> {
    pub key: &'a [u8],
    pub head: &'a [u8],
    pub tags: &'a [String],
    pub stored_at: SystemTime,
    pub expires_at: SystemTime,
    pub pinned: bool,
}

pub(crate) fn header_len(key: usize, head: usize, tags_enc: usize, payload: u64) -> usize {
    OBJ_FIXED + key + head + tags_enc + 4 * (payload as usize).div_ceil(CHUNK) + 4
}

/// Writes header + payload + zero padding into `out` (at least the extent long; contents need
/// not be initialised) and marks it filled. Each 1 MiB chunk is checksummed and copied in one
/// go, so the source is read from memory once: for multi-MiB objects memory bandwidth, not the
/// device, was the write bottleneck.
pub(crate) fn encode_object(
    out: &mut AlignedBuf,
    nonce: u64,
    gen: u64,
    m: &ObjMeta<'_>,
    payload: &[u8],
) -> usize {
    let tags = encode_tags(m.tags);
    let hlen = header_len(m.key.len(), m.head.len(), tags.len(), payload.len() as u64);
    let crcs: Vec<u32> = payload
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| {
            out.put(hlen + i * CHUNK, c);
            crc32c::crc32c(c)
        })
        .collect();
    finish_header(out, nonce, gen, m, &tags, hlen, payload.len(), crcs);
    hlen
}

/// Like [`encode_object`] for a payload whose chunk checksums are already known (a rewrite
/// carries the ones stored with it): copies without checksumming. A damaged payload therefore
/// stays damaged *and* detectable, exactly as it was on the device.
pub(crate) fn encode_object_carried(
    out: &mut AlignedBuf,
    nonce: u64,
    gen: u64,
    m: &ObjMeta<'_>,
    payload: &[u8],
    crcs: &[u32],
) {
    let tags = encode_tags(m.tags);
    let hlen = header_len(m.key.len(), m.head.len(), tags.len(), payload.len() as u64);
    assert_eq!(
        crcs.len(),
        payload.len().div_ceil(CHUNK),
        "one checksum per chunk"
    );
    out.put(hlen, payload);
    finish_header(
        out,
        nonce,
        gen,
        m,
        &tags,
        hlen,
        payload.len(),
        crcs.to_vec(),
    );
}

/// Completes an object whose payload is already in place at `hlen..hlen + payload_len` of
/// `out` (an [`ObjectBuf`](crate::ObjectBuf)): checksums it, writes the header and the padding.
pub(crate) fn encode_object_in_place(
    out: &mut AlignedBuf,
    nonce: u64,
    gen: u64,
    m: &ObjMeta<'_>,
    hlen: usize,
    payload_len: usize,
) {
    let tags = encode_tags(m.tags);
    debug_assert_eq!(
        hlen,
        header_len(m.key.len(), m.head.len(), tags.len(), payload_len as u64)
    );
    let crcs: Vec<u32> = out.as_slice()[hlen..hlen + payload_len]
        .chunks(CHUNK)
        .map(crc32c::crc32c)
        .collect();
    finish_header(out, nonce, gen, m, &tags, hlen, payload_len, crcs);
}

#[allow(clippy::too_many_arguments)]
fn finish_header(
    out: &mut AlignedBuf,
    nonce: u64,
    gen: u64,
    m: &ObjMeta<'_>,
    tags: &[u8],
    hlen: usize,
    payload_len: usize,
    crcs: Vec<u32>,
) {
    let (sa, sn) = time_to_parts(m.stored_at);
    let (ea, en) = time_to_parts(m.expires_at);
    let mut e = Enc(Vec::with_capacity(hlen));
    e.u32(OBJ_MAGIC);
    e.u16(FORMAT_VERSION as u16);
    e.u16(m.pinned as u16);
    e.u64(nonce);
    e.u64(gen);
    e.u32(m.key.len() as u32);
    e.u32(m.head.len() as u32);
    e.u32(tags.len() as u32);
    e.u64(payload_len as u64);
    e.u64(sa);
    e.u32(sn);
    e.u64(ea);
    e.u32(en);
    e.u32(crcs.len() as u32);
    e.u32(hlen as u32);
    debug_assert_eq!(e.0.len(), OBJ_FIXED);
    e.bytes(m.key);
    e.bytes(m.head);
    e.bytes(tags);
    for c in crcs {
        e.u32(c);
    }
    e.crc();
    debug_assert_eq!(e.0.len(), hlen);
    out.put(0, &e.0);
    let size = out.capacity();
    out.zero(hlen + payload_len, size);
    // SAFETY: header, payload and the zeroed tail together cover 0..size.
    unsafe { out.set_filled(size) };
}

/// Parses and checks an object header at the start of `b`. `gen` must match the region's
/// generation: a header from an earlier use of the region is stale, not an object.
pub(crate) fn decode_object_header(b: &[u8], nonce: u64, gen: u64) -> Option<ObjHeader> {
    let mut d = Dec::new(b);
    if d.u32()? != OBJ_MAGIC || d.u16()? != FORMAT_VERSION as u16 {
        return None;
    }
    let flags = d.u16()?;
    if d.u64()? != nonce || d.u64()? != gen {
        return None;
    }
    let key_len = d.u32()? as usize;
    let head_len = d.u32()? as usize;
    let tags_len = d.u32()? as usize;
    let payload_len = d.u64()?;
    let (sa, sn) = (d.u64()?, d.u32()?);
    let (ea, en) = (d.u64()?, d.u32()?);
    let chunks = d.u32()? as usize;
    let hlen = d.u32()? as usize;
    if hlen > b.len() || hlen < OBJ_FIXED + 4 || !crc_ok(b, hlen - 4) {
        return None;
    }
    if chunks != (payload_len as usize).div_ceil(CHUNK)
        || header_len(key_len, head_len, tags_len, payload_len) != hlen
    {
        return None;
    }
    let key_range = (d.pos, d.pos + key_len);
    d.take(key_len)?;
    let head_range = (d.pos, d.pos + head_len);
    d.take(head_len)?;
    let tags_bytes = d.take(tags_len)?;
    let tags = decode_tags(&mut Dec::new(tags_bytes))?;
    let mut chunk_crcs = Vec::with_capacity(chunks);
    for _ in 0..chunks {
        chunk_crcs.push(d.u32()?);
    }
    Some(ObjHeader {
        pinned: flags & 1 != 0,
        key_range,
        head_range,
        tags,
        payload_len,
        stored_at: parts_to_time(sa, sn),
        expires_at: parts_to_time(ea, en),
        chunk_crcs,
        header_len: hlen,
    })
}

/// Verifies the payload (which must follow the header in `b`) against its chunk checksums.
pub(crate) fn payload_ok(b: &[u8], h: &ObjHeader) -> bool {
    let Some(p) = b.get(h.header_len..h.header_len + h.payload_len as usize) else {
        return false;
    };
    chunks_ok(p, &h.chunk_crcs)
}

/// Whether `payload` matches one crc32c per [`CHUNK`] in `crcs`.
pub(crate) fn chunks_ok(payload: &[u8], crcs: &[u32]) -> bool {
    payload.len().div_ceil(CHUNK) == crcs.len()
        && payload
            .chunks(CHUNK)
            .zip(crcs)
            .all(|(c, &crc)| crc32c::crc32c(c) == crc)
}

// ---------------------------------------------------------------------------------------------
// Snapshot (written on clean close into the snapshot area)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionState {
    Free,
    Sealed,
    Active,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RegionSnap {
    pub gen: u64,
    pub state: RegionState,
    /// Next free block within the region (Active only).
    pub write_end: u32,
    /// Summary bytes reserved so far (Active only).
    pub reserved: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub max_gen: u64,
    pub regions: Vec<RegionSnap>,
    pub prefixes: Vec<(Vec<u8>, u64)>,
    pub tagsets: Vec<Vec<String>>,
    pub entries: Vec<SumEntry>,
}

pub(crate) fn encode_snapshot(nonce: u64, s: &Snapshot) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(64 + s.entries.len() * 28));
    e.u32(SNAP_MAGIC);
    e.u64(nonce);
    e.u64(s.max_gen);
    e.u32(s.regions.len() as u32);
    for r in &s.regions {
        e.u64(r.gen);
        e.u8(match r.state {
            RegionState::Free => 0,
            RegionState::Sealed => 1,
            RegionState::Active => 2,
        });
        e.u32(r.write_end);
        e.u64(r.reserved);
    }
    e.u32(s.prefixes.len() as u32);
    for (p, mark) in &s.prefixes {
        e.u32(p.len() as u32);
        e.bytes(p);
        e.u64(*mark);
    }
    encode_tagsets(&mut e, &s.tagsets);
    e.u64(s.entries.len() as u64);
    for x in &s.entries {
        encode_entry(&mut e, x);
    }
    e.0
}

pub(crate) fn decode_snapshot(b: &[u8], nonce: u64) -> Option<Snapshot> {
    let mut d = Dec::new(b);
    if d.u32()? != SNAP_MAGIC || d.u64()? != nonce {
        return None;
    }
    let max_gen = d.u64()?;
    let n = d.u32()?;
    let mut regions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let gen = d.u64()?;
        let state = match d.u8()? {
            0 => RegionState::Free,
            1 => RegionState::Sealed,
            2 => RegionState::Active,
            _ => return None,
        };
        regions.push(RegionSnap {
            gen,
            state,
            write_end: d.u32()?,
            reserved: d.u64()?,
        });
    }
    let np = d.u32()?;
    let mut prefixes = Vec::new();
    for _ in 0..np {
        let l = d.u32()? as usize;
        let p = d.take(l)?.to_vec();
        prefixes.push((p, d.u64()?));
    }
    let tagsets = decode_tagsets(&mut d)?;
    let ne = d.u64()?;
    let mut entries = Vec::with_capacity((ne as usize).min(b.len() / 28));
    for _ in 0..ne {
        entries.push(decode_entry(&mut d)?);
    }
    Some(Snapshot {
        max_gen,
        regions,
        prefixes,
        tagsets,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_roundtrip_and_bitflips() {
        let payload: Vec<u8> = (0..(CHUNK + 1000)).map(|i| (i * 7) as u8).collect();
        let tags = vec!["a".to_string(), "bb".to_string()];
        let m = ObjMeta {
            key: b"k1",
            head: b"HEAD",
            tags: &tags,
            stored_at: UNIX_EPOCH + Duration::from_secs(5),
            expires_at: UNIX_EPOCH + Duration::from_secs(9),
            pinned: true,
        };
        let mut buf = AlignedBuf::uninit(3 << 20);
        let hlen = encode_object(&mut buf, 42, 7, &m, &payload);
        let mut out = buf.as_slice().to_vec();
        assert!(
            out[hlen + payload.len()..].iter().all(|&b| b == 0),
            "padding zeroed"
        );
        let h = decode_object_header(&out, 42, 7).expect("valid");
        assert_eq!(h.header_len, hlen);
        assert_eq!(&out[h.key_range.0..h.key_range.1], b"k1");
        assert_eq!(&out[h.head_range.0..h.head_range.1], b"HEAD");
        assert_eq!(h.tags, tags);
        assert!(h.pinned);
        assert!(payload_ok(&out, &h));
        assert!(decode_object_header(&out, 43, 7).is_none(), "other store");
        assert!(
            decode_object_header(&out, 42, 8).is_none(),
            "stale generation"
        );
        out[hlen + CHUNK + 3] ^= 1;
        assert!(!payload_ok(&out, &h));
        out[10] ^= 0x40;
        assert!(decode_object_header(&out, 42, 7).is_none());
    }

    #[test]
    fn a_rewrite_with_carried_checksums_is_the_same_object_in_a_new_generation() {
        let mut payload: Vec<u8> = (0..(2 * CHUNK + 10)).map(|i| (i * 13) as u8).collect();
        let m = ObjMeta {
            key: b"k",
            head: b"H",
            tags: &[],
            stored_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH + Duration::from_secs(9),
            pinned: false,
        };
        let mut first = AlignedBuf::uninit(3 << 20);
        encode_object(&mut first, 1, 7, &m, &payload);
        let h = decode_object_header(first.as_slice(), 1, 7).expect("valid");
        let mut again = AlignedBuf::uninit(3 << 20);
        encode_object_carried(&mut again, 1, 8, &m, &payload, &h.chunk_crcs);
        let h2 = decode_object_header(again.as_slice(), 1, 8).expect("valid in generation 8");
        assert_eq!(h2.chunk_crcs, h.chunk_crcs);
        assert!(payload_ok(again.as_slice(), &h2));
        assert_eq!(
            &again.as_slice()[..h2.header_len + payload.len()][h2.header_len..],
            &payload[..]
        );
        // A payload damaged before the rewrite stays detectably damaged after it.
        payload[CHUNK + 5] ^= 1;
        let mut bad = AlignedBuf::uninit(3 << 20);
        encode_object_carried(&mut bad, 1, 9, &m, &payload, &h.chunk_crcs);
        let h3 = decode_object_header(bad.as_slice(), 1, 9).expect("header intact");
        assert!(!payload_ok(bad.as_slice(), &h3));
        assert!(!chunks_ok(&payload, &h.chunk_crcs));
        assert!(!chunks_ok(&payload[..CHUNK], &h.chunk_crcs), "chunk count");
    }

    #[test]
    fn region_header_carries_the_reclaim_record_and_reads_without_it() {
        let rec = Reclaimed { region: 3, gen: 41 };
        let with = encode_region_header(7, 5, 42, Some(rec));
        assert_eq!(decode_region_header(&with, 7, 5), Some((42, Some(rec))));
        let plain = encode_region_header(7, 5, 42, None);
        assert_eq!(decode_region_header(&plain, 7, 5), Some((42, None)));
        // The header alone is what builds before the record read: unchanged.
        assert_eq!(with[..plain.len()], plain[..]);
        // A damaged record is no record; a damaged header is no header.
        let mut b = with.clone();
        b[plain.len() + 5] ^= 1;
        assert_eq!(decode_region_header(&b, 7, 5), Some((42, None)));
        let mut b = with;
        b[13] ^= 1;
        assert_eq!(decode_region_header(&b, 7, 5), None);
        assert_eq!(decode_region_header(&plain, 7, 6), None, "another region");
    }

    #[test]
    fn superblock_picks_newest_valid_copy() {
        let mut sb = Superblock {
            version: FORMAT_VERSION,
            gen: 4,
            size: 1 << 30,
            region_size: 1 << 20,
            nonce: 9,
            clean: false,
            snapshot_len: 0,
            snapshot_crc: 0,
        };
        let mut file = vec![0u8; 8192];
        assert!(matches!(Superblock::read(&file), SbRead::Blank));
        let e = sb.encode();
        file[..e.len()].copy_from_slice(&e);
        sb.gen = 5;
        let e = sb.encode();
        file[4096..4096 + e.len()].copy_from_slice(&e);
        assert!(matches!(Superblock::read(&file), SbRead::Valid(s) if s.gen == 5));
        file[4100] ^= 1;
        assert!(matches!(Superblock::read(&file), SbRead::Valid(s) if s.gen == 4));
        file[4] ^= 1;
        assert!(matches!(Superblock::read(&file), SbRead::Garbage));
    }

    #[test]
    fn summary_and_snapshot_roundtrip() {
        let e = SumEntry {
            hash: key_hash(1, b"x"),
            block: 3,
            blocks_flags: 5 | (1 << 31),
            tagset: 1,
        };
        let ts = vec![vec![], vec!["t".to_string()]];
        let b = encode_summary(&ts, std::slice::from_ref(&e));
        assert!(b.len() as u64 <= SUMMARY_FIXED + SUMMARY_ENTRY + encode_tags(&ts[1]).len() as u64);
        assert_eq!(decode_summary(&b), Some((ts.clone(), vec![e.clone()])));
        let s = Snapshot {
            max_gen: 3,
            regions: vec![RegionSnap {
                gen: 3,
                state: RegionState::Active,
                write_end: 4,
                reserved: 40,
            }],
            prefixes: vec![(b"p/".to_vec(), 77)],
            tagsets: ts,
            entries: vec![e],
        };
        assert_eq!(decode_snapshot(&encode_snapshot(5, &s), 5), Some(s));
    }

    #[test]
    fn key_hash_spreads() {
        let a = key_hash(1, b"seg-1.ts");
        assert_ne!(a, key_hash(1, b"seg-2.ts"));
        assert_ne!(a, key_hash(2, b"seg-1.ts"));
        assert_ne!(key_hash(1, b""), key_hash(1, b"\0"));
        assert_eq!(a, KeyHash::from_bytes(&a.to_bytes()));
    }
}
