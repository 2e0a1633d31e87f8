//! CMAF chunks for the low-latency modes: cuts each fixture chunk (one `moof` + `mdat` per 2 s GOP)
//! into partial segments of about `--part-duration`, each its own `moof` + `mdat` that decodes on
//! its own after the init segment, and says when each byte of a part exists (for streaming a part
//! or a chunked segment "as it is produced").
//!
//! A low-latency segment is `styp` + its parts back to back, so a player may switch between the
//! parts and the whole segment (RFC 8216bis 4.4.4.9: the parts of a segment make up the segment).

use bytes::{BufMut, Bytes, BytesMut};

use super::media::{MediaError, Rendition};

/// One partial segment of a fixture chunk, with placeholder mfhd/tfdt values patched per use.
#[derive(Debug, Clone)]
pub struct PartTemplate {
    /// `moof` + `mdat`.
    pub bytes: Bytes,
    mfhd_seq: usize,
    /// Offset of the 64-bit tfdt value.
    tfdt: usize,
    /// Decode time of the first sample, relative to the chunk's start (ticks).
    pub start_ticks: u64,
    pub duration_ticks: u64,
    /// Starts with a sync sample (`INDEPENDENT=YES`).
    pub independent: bool,
    /// (end offset into `bytes`, end time in ticks relative to the part's start) per sample: the
    /// bytes up to the offset exist once the sample's duration has elapsed.
    pub sample_ends: Vec<(usize, u64)>,
}

/// A rendition cut into parts: `parts[i]` are the parts of fixture chunk `i`.
#[derive(Debug, Clone)]
pub struct PartedRendition {
    pub parts: Vec<Vec<PartTemplate>>,
    /// Most parts in one fixture chunk (numbers the mfhd sequence of parts).
    max_parts: u64,
    pub timescale: u64,
    pub chunk_ticks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    duration: u32,
    size: u32,
    flags: u32,
    cts: u32,
    data: usize,
}

/// trun flags.
const DATA_OFFSET: u32 = 0x1;
const FIRST_FLAGS: u32 = 0x4;
const S_DURATION: u32 = 0x100;
const S_SIZE: u32 = 0x200;
const S_FLAGS: u32 = 0x400;
const S_CTS: u32 = 0x800;
/// tfhd flags.
const BASE_DATA_OFFSET: u32 = 0x1;
const DEFAULT_BASE_IS_MOOF: u32 = 0x20000;
/// sample_is_non_sync_sample in sample flags.
const NON_SYNC: u32 = 0x0001_0000;

fn be32(b: &[u8], at: usize) -> Result<u32, MediaError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(MediaError::Malformed("truncated box field"))
}

/// (type, box start, payload start, box end).
type BoxAt = ([u8; 4], usize, usize, usize);

/// Box headers in `buf[start..end]`: (type, box start, payload start, box end).
fn boxes(buf: &[u8], start: usize, end: usize) -> Result<Vec<BoxAt>, MediaError> {
    let mut out = Vec::new();
    let mut off = start;
    while off + 8 <= end {
        let size = be32(buf, off)? as usize;
        let typ: [u8; 4] = buf[off + 4..off + 8]
            .try_into()
            .map_err(|_| MediaError::Malformed("box"))?;
        if size < 8 || off + size > end {
            return Err(MediaError::Malformed("box size (cmaf)"));
        }
        out.push((typ, off, off + 8, off + size));
        off += size;
    }
    Ok(out)
}

/// The track fragment header fields a part copies: flags and optional fields after track_ID.
struct Tfhd {
    flags: u32,
    track_id: u32,
    /// Raw optional fields except base_data_offset, in order.
    rest: Vec<u8>,
    default_duration: Option<u32>,
    default_size: Option<u32>,
    default_flags: Option<u32>,
}

fn parse_tfhd(b: &[u8], p: usize, end: usize) -> Result<Tfhd, MediaError> {
    let flags = be32(b, p)? & 0x00ff_ffff;
    let track_id = be32(b, p + 4)?;
    let mut at = p + 8;
    let mut rest = Vec::new();
    if flags & BASE_DATA_OFFSET != 0 {
        at += 8;
    }
    let mut field = |bit: u32, at: &mut usize| -> Result<Option<u32>, MediaError> {
        if flags & bit == 0 {
            return Ok(None);
        }
        let v = be32(b, *at)?;
        rest.extend_from_slice(&v.to_be_bytes());
        *at += 4;
        Ok(Some(v))
    };
    let _sdi = field(0x2, &mut at)?;
    let default_duration = field(0x8, &mut at)?;
    let default_size = field(0x10, &mut at)?;
    let default_flags = field(0x20, &mut at)?;
    if at > end {
        return Err(MediaError::Malformed("tfhd"));
    }
    Ok(Tfhd {
        flags: (flags & !BASE_DATA_OFFSET) | DEFAULT_BASE_IS_MOOF,
        track_id,
        rest,
        default_duration,
        default_size,
        default_flags,
    })
}

/// Samples of every `moof` in a fixture chunk (one track, one traf per moof).
fn samples(chunk: &[u8]) -> Result<(Tfhd, u32, Vec<Sample>), MediaError> {
    let mut out = Vec::new();
    let mut header = None;
    for (typ, bstart, payload, bend) in boxes(chunk, 0, chunk.len())? {
        if &typ != b"moof" {
            continue;
        }
        let trafs: Vec<_> = boxes(chunk, payload, bend)?
            .into_iter()
            .filter(|b| &b.0 == b"traf")
            .collect();
        let [(_, _, tp, te)] = trafs[..] else {
            return Err(MediaError::Invalid(
                "cmaf",
                "one traf per moof expected".into(),
            ));
        };
        let inner = boxes(chunk, tp, te)?;
        let tfhd = inner
            .iter()
            .find(|b| &b.0 == b"tfhd")
            .ok_or(MediaError::Malformed("traf without tfhd"))?;
        let tfhd = parse_tfhd(chunk, tfhd.2, tfhd.3)?;
        for (t, _, p, e) in inner.iter().filter(|b| &b.0 == b"trun") {
            debug_assert_eq!(t, b"trun");
            let vf = be32(chunk, *p)?;
            let (version, flags) = (vf >> 24, vf & 0x00ff_ffff);
            if flags & DATA_OFFSET == 0 {
                return Err(MediaError::Invalid(
                    "cmaf",
                    "trun without data_offset".into(),
                ));
            }
            let count = be32(chunk, p + 4)? as usize;
            let mut data = bstart + be32(chunk, p + 8)? as usize;
            let mut at = p + 12;
            let mut first_flags = None;
            if flags & FIRST_FLAGS != 0 {
                first_flags = Some(be32(chunk, at)?);
                at += 4;
            }
            if count > 100_000 {
                return Err(MediaError::Malformed("trun sample count"));
            }
            for i in 0..count {
                let mut next = |bit: u32| -> Result<Option<u32>, MediaError> {
                    if flags & bit == 0 {
                        return Ok(None);
                    }
                    let v = be32(chunk, at)?;
                    at += 4;
                    Ok(Some(v))
                };
                let duration = next(S_DURATION)?.or(tfhd.default_duration);
                let size = next(S_SIZE)?.or(tfhd.default_size);
                let sflags = next(S_FLAGS)?;
                let cts = next(S_CTS)?.unwrap_or(0);
                let (Some(duration), Some(size)) = (duration, size) else {
                    return Err(MediaError::Invalid(
                        "cmaf",
                        "sample without duration or size".into(),
                    ));
                };
                let flags = match (i, first_flags, sflags) {
                    (0, Some(f), _) => f,
                    (_, _, Some(f)) => f,
                    _ => tfhd.default_flags.unwrap_or(0),
                };
                if at > *e || data + size as usize > chunk.len() {
                    return Err(MediaError::Malformed("trun entries"));
                }
                out.push(Sample {
                    duration,
                    size,
                    flags,
                    cts,
                    data,
                });
                data += size as usize;
            }
            header.get_or_insert((tfhd_clone(&tfhd), version));
        }
    }
    let (tfhd, version) = header.ok_or(MediaError::Malformed("chunk without trun"))?;
    Ok((tfhd, version, out))
}

fn tfhd_clone(t: &Tfhd) -> Tfhd {
    Tfhd {
        flags: t.flags,
        track_id: t.track_id,
        rest: t.rest.clone(),
        default_duration: t.default_duration,
        default_size: t.default_size,
        default_flags: t.default_flags,
    }
}

fn put_box(out: &mut BytesMut, typ: &[u8; 4], body: &[u8]) {
    out.put_u32((body.len() + 8) as u32);
    out.put_slice(typ);
    out.put_slice(body);
}

/// One `moof` + `mdat` holding `samples` (all sample fields written explicitly, so the part does
/// not depend on the source's defaults for anything but the description index).
fn fragment(
    chunk: &[u8],
    tfhd: &Tfhd,
    version: u32,
    samples: &[Sample],
    start_ticks: u64,
) -> PartTemplate {
    let mut tfhd_body = BytesMut::new();
    tfhd_body.put_u32(tfhd.flags);
    tfhd_body.put_u32(tfhd.track_id);
    tfhd_body.put_slice(&tfhd.rest);
    let flags = DATA_OFFSET
        | S_DURATION
        | S_SIZE
        | S_FLAGS
        | if version == 1 || samples.iter().any(|s| s.cts != 0) {
            S_CTS
        } else {
            0
        };
    let mut trun = BytesMut::new();
    trun.put_u32((version << 24) | flags);
    trun.put_u32(samples.len() as u32);
    let data_offset_at = trun.len();
    trun.put_u32(0);
    for s in samples {
        trun.put_u32(s.duration);
        trun.put_u32(s.size);
        trun.put_u32(s.flags);
        if flags & S_CTS != 0 {
            trun.put_u32(s.cts);
        }
    }
    let mut tfdt = BytesMut::new();
    tfdt.put_u32(1 << 24);
    tfdt.put_u64(0);
    let mut traf = BytesMut::new();
    put_box(&mut traf, b"tfhd", &tfhd_body);
    let tfdt_in_traf = traf.len() + 12;
    put_box(&mut traf, b"tfdt", &tfdt);
    let trun_in_traf = traf.len() + 8;
    put_box(&mut traf, b"trun", &trun);
    let mut moof = BytesMut::new();
    put_box(&mut moof, b"mfhd", &[0u8; 8]);
    let traf_at = moof.len() + 8;
    put_box(&mut moof, b"traf", &traf);
    let mut out = BytesMut::new();
    put_box(&mut out, b"moof", &moof);
    let moof_len = out.len();
    // Offsets in `out`: moof header 8, mfhd header 8 + version/flags 4.
    let mfhd_seq = 8 + 8 + 4;
    let tfdt_at = 8 + traf_at + tfdt_in_traf;
    let data_offset = 8 + traf_at + trun_in_traf + data_offset_at;
    let payload: usize = samples.iter().map(|s| s.size as usize).sum();
    out[data_offset..data_offset + 4].copy_from_slice(&((moof_len + 8) as u32).to_be_bytes());
    out.put_u32((payload + 8) as u32);
    out.put_slice(b"mdat");
    let mut sample_ends = Vec::with_capacity(samples.len());
    let mut ticks = 0u64;
    for s in samples {
        out.put_slice(&chunk[s.data..s.data + s.size as usize]);
        ticks += s.duration as u64;
        sample_ends.push((out.len(), ticks));
    }
    PartTemplate {
        bytes: out.freeze(),
        mfhd_seq,
        tfdt: tfdt_at,
        start_ticks,
        duration_ticks: ticks,
        independent: samples.first().is_some_and(|s| s.flags & NON_SYNC == 0),
        sample_ends,
    }
}

impl PartedRendition {
    /// Cuts every chunk of `r` into parts of `part_ticks` rounded once to a whole number of frames
    /// (at least one): every part of a chunk has that many frames but the last, which may be
    /// shorter, and a sync sample always starts a new part. Rounding once, rather than cutting at
    /// the first frame past each multiple of `part_ticks`, keeps parts from alternating between
    /// longer and shorter ones (80 ms at 30 fps gave 100 ms and 67 ms parts, the short ones below
    /// the 85 % of PART-TARGET that RFC 8216bis 4.4.4.9 requires).
    pub fn cut(r: &Rendition, part_ticks: u64) -> Result<PartedRendition, MediaError> {
        let frame = match r.chunks.first() {
            Some(c) => samples(&c.bytes)?
                .2
                .first()
                .map_or(1, |s| s.duration.max(1)) as u64,
            None => 1,
        };
        let frames_per_part = ((part_ticks as f64 / frame as f64).round() as usize).max(1);
        let mut parts = Vec::with_capacity(r.chunks.len());
        for c in &r.chunks {
            let (tfhd, version, samples) = samples(&c.bytes)?;
            let mut cut = Vec::new();
            let (mut begin, mut begin_ticks, mut t) = (0usize, 0u64, 0u64);
            for (i, s) in samples.iter().enumerate() {
                let sync = s.flags & NON_SYNC == 0;
                let boundary = i > begin && (sync || i - begin >= frames_per_part);
                if boundary {
                    cut.push(fragment(
                        &c.bytes,
                        &tfhd,
                        version,
                        &samples[begin..i],
                        begin_ticks,
                    ));
                    begin = i;
                    begin_ticks = t;
                }
                t += s.duration as u64;
            }
            if begin < samples.len() {
                cut.push(fragment(
                    &c.bytes,
                    &tfhd,
                    version,
                    &samples[begin..],
                    begin_ticks,
                ));
            }
            if t != r.chunk_ticks {
                return Err(MediaError::Invalid(
                    "cmaf",
                    format!("samples last {t} ticks, the chunk {}", r.chunk_ticks),
                ));
            }
            parts.push(cut);
        }
        let max_parts = parts.iter().map(Vec::len).max().unwrap_or(1) as u64;
        Ok(PartedRendition {
            parts,
            max_parts,
            timescale: r.timescale,
            chunk_ticks: r.chunk_ticks,
        })
    }

    /// The parts of global chunk `n` (the loop repeats the fixture chunks).
    pub fn chunk_parts(&self, n: u64) -> &[PartTemplate] {
        &self.parts[(n % self.parts.len() as u64) as usize]
    }

    /// Bytes of part `j` of global chunk `n`, with its sequence number and decode time.
    pub fn part(&self, n: u64, j: usize) -> Option<Bytes> {
        let t = self.chunk_parts(n).get(j)?;
        let mut b = BytesMut::from(&t.bytes[..]);
        let seq = (n * self.max_parts + j as u64 + 1) as u32;
        b[t.mfhd_seq..t.mfhd_seq + 4].copy_from_slice(&seq.to_be_bytes());
        let time = n * self.chunk_ticks + t.start_ticks;
        b[t.tfdt..t.tfdt + 8].copy_from_slice(&time.to_be_bytes());
        Some(b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media;

    #[test]
    fn parts_cover_the_chunk_and_decode_times_follow() {
        let r = &media::builtin().expect("fixtures")[0];
        let p = PartedRendition::cut(r, r.timescale / 3).expect("cut");
        let parts = p.chunk_parts(7);
        assert_eq!(parts.len(), 6, "2 s GOP in 333 ms parts");
        assert!(parts[0].independent);
        assert!(parts[1..].iter().all(|t| !t.independent));
        let total: u64 = parts.iter().map(|t| t.duration_ticks).sum();
        assert_eq!(total, r.chunk_ticks);
        for (j, t) in parts.iter().enumerate() {
            let b = p.part(7, j).expect("part");
            let (seqs, times) = media::inspect(&b).expect("parse");
            assert_eq!(times, vec![7 * r.chunk_ticks + t.start_ticks]);
            assert_eq!(seqs.len(), 1);
            assert_eq!(t.sample_ends.last().map(|e| e.0), Some(b.len()));
        }
    }

    /// Bug: parts were cut at the first frame past each multiple of the part duration, so 80 ms
    /// and 50 ms parts at 30 fps alternated between 100 and 67 ms (67 and 33 ms): parts shorter
    /// than 85 % of PART-TARGET (RFC 8216bis 4.4.4.9), which is only allowed for the last part of
    /// a segment and INDEPENDENT ones.
    #[test]
    fn parts_are_a_whole_number_of_frames_but_the_last() {
        let renditions = media::builtin().expect("fixtures");
        for (r, ms) in renditions
            .iter()
            .flat_map(|r| [50, 80, 100, 250, 333, 500, 1000].map(|ms| (r, ms)))
        {
            let p = PartedRendition::cut(r, r.timescale * ms / 1000).expect("cut");
            let longest = p
                .parts
                .iter()
                .flatten()
                .map(|t| t.duration_ticks)
                .max()
                .expect("parts");
            for chunk in &p.parts {
                let durations: Vec<u64> = chunk.iter().map(|t| t.duration_ticks).collect();
                let (last, rest) = chunk.split_last().expect("a part");
                for t in rest {
                    assert_eq!(t.duration_ticks, longest, "{ms} ms: {durations:?}");
                }
                assert!(last.duration_ticks <= longest, "{ms} ms");
            }
            // Rounded to the nearest whole frame: within half a frame of the asked duration.
            let frame = p.parts[0][0].sample_ends[0].1;
            let asked = r.timescale * ms / 1000;
            assert!(
                longest.abs_diff(asked) <= frame / 2 + 1,
                "{ms} ms: {longest} ticks"
            );
        }
    }
}
