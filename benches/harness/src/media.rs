//! The looped fMP4 media behind the live simulator: fixture loading and the per-segment rewrite of
//! the fragment headers (mfhd sequence number, tfdt baseMediaDecodeTime) so that a 12 s loop plays
//! as an endless stream in hls.js and dash.js.
//!
//! The fixtures (fixtures/live/, made by fixtures/make-live.sh) are compiled into the binary so that
//! `vedge origin` and `vedge demo` work from any directory.

use bytes::{BufMut, Bytes, BytesMut};

/// One rendition of the fixture loop: an init segment and N chunks of `chunk_ticks` each.
#[derive(Debug, Clone)]
pub struct Rendition {
    pub width: u32,
    pub height: u32,
    /// Measured average bit rate of the chunks (bit/s).
    pub bandwidth: u64,
    pub codecs: String,
    pub init: Bytes,
    pub chunks: Vec<Chunk>,
    /// Track timescale from the init segment's mdhd.
    pub timescale: u64,
    /// Duration of one chunk in `timescale` ticks.
    pub chunk_ticks: u64,
}

/// One fixture chunk: the bytes and where its headers sit, so a copy can be patched cheaply.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The `moof` + `mdat` boxes (styp and sidx dropped: the rewrite would make sidx lie).
    pub bytes: Bytes,
    /// Offsets (into `bytes`) of every mfhd sequence_number field.
    pub mfhd_seq: Vec<usize>,
    /// Offsets of every tfdt field: (offset, is 64-bit).
    pub tfdt: Vec<(usize, bool)>,
    /// The chunk's own baseMediaDecodeTime in the fixture.
    pub base_time: u64,
}

/// Errors of fixture parsing. They mean the committed fixtures are broken (re-run make-live.sh).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("malformed MP4 box structure in {0}")]
    Malformed(&'static str),
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
}

const CHUNK_SECONDS: u64 = 2;

macro_rules! rendition_files {
    ($dir:literal) => {
        (
            include_str!(concat!("../../../fixtures/live/", $dir, "/info.txt")),
            &include_bytes!(concat!("../../../fixtures/live/", $dir, "/init.mp4"))[..],
            [
                &include_bytes!(concat!("../../../fixtures/live/", $dir, "/seg_0.m4s"))[..],
                &include_bytes!(concat!("../../../fixtures/live/", $dir, "/seg_1.m4s"))[..],
                &include_bytes!(concat!("../../../fixtures/live/", $dir, "/seg_2.m4s"))[..],
                &include_bytes!(concat!("../../../fixtures/live/", $dir, "/seg_3.m4s"))[..],
                &include_bytes!(concat!("../../../fixtures/live/", $dir, "/seg_4.m4s"))[..],
                &include_bytes!(concat!("../../../fixtures/live/", $dir, "/seg_5.m4s"))[..],
            ],
        )
    };
}

/// Loads the compiled-in fixture renditions (lowest bit rate first).
pub fn builtin() -> Result<Vec<Rendition>, MediaError> {
    let sets = [rendition_files!("r0"), rendition_files!("r1")];
    sets.iter()
        .map(|(info, init, segs)| load(info, init, segs))
        .collect()
}

/// Duration of one fixture chunk in seconds (every served segment is a whole number of chunks).
pub fn chunk_seconds() -> u64 {
    CHUNK_SECONDS
}

fn load(info: &str, init: &[u8], segs: &[&[u8]]) -> Result<Rendition, MediaError> {
    let field = |k: &str| -> Result<&str, MediaError> {
        info.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .ok_or_else(|| MediaError::Invalid("info.txt", format!("missing {k}")))
    };
    let num = |k: &str| -> Result<u64, MediaError> {
        field(k)?
            .trim()
            .parse()
            .map_err(|_| MediaError::Invalid("info.txt", format!("bad {k}")))
    };
    let timescale = init_timescale(init)?;
    let chunk_ticks = timescale * CHUNK_SECONDS;
    let mut chunks = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        let chunk = parse_chunk(seg)?;
        if chunk.base_time != i as u64 * chunk_ticks {
            return Err(MediaError::Invalid(
                "segment",
                format!(
                    "chunk {i} starts at {} ticks, expected {} (fixtures must be exact 2 s GOPs)",
                    chunk.base_time,
                    i as u64 * chunk_ticks
                ),
            ));
        }
        chunks.push(chunk);
    }
    if chunks.is_empty() {
        return Err(MediaError::Invalid("segment", "no chunks".into()));
    }
    Ok(Rendition {
        width: num("width")? as u32,
        height: num("height")? as u32,
        bandwidth: num("bandwidth")?,
        codecs: field("codecs")?.trim().to_string(),
        init: Bytes::copy_from_slice(init),
        chunks,
        timescale,
        chunk_ticks,
    })
}

/// Iterates the boxes in `buf[start..end]`: (type, box start, payload start, box end).
fn boxes(
    buf: &[u8],
    start: usize,
    end: usize,
) -> impl Iterator<Item = Result<([u8; 4], usize, usize, usize), MediaError>> + '_ {
    let mut off = start;
    std::iter::from_fn(move || {
        if off + 8 > end {
            return None;
        }
        let size = u32::from_be_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        let typ: [u8; 4] = buf[off + 4..off + 8].try_into().ok()?;
        let (payload, bend) = match size {
            1 => {
                if off + 16 > end {
                    return Some(Err(MediaError::Malformed("largesize")));
                }
                let s = u64::from_be_bytes(buf[off + 8..off + 16].try_into().ok()?) as usize;
                (off + 16, off.saturating_add(s))
            }
            0 => (off + 8, end),
            s => (off + 8, off + s),
        };
        if bend > end || bend < payload {
            off = end;
            return Some(Err(MediaError::Malformed("box size")));
        }
        let item = (typ, off, payload, bend);
        off = bend;
        Some(Ok(item))
    })
}

fn find(buf: &[u8], start: usize, end: usize, path: &[&[u8; 4]]) -> Option<(usize, usize)> {
    let (first, rest) = path.split_first()?;
    for b in boxes(buf, start, end) {
        let (typ, _, payload, bend) = b.ok()?;
        if &typ == *first {
            if rest.is_empty() {
                return Some((payload, bend));
            }
            if let Some(found) = find(buf, payload, bend, rest) {
                return Some(found);
            }
        }
    }
    None
}

fn init_timescale(init: &[u8]) -> Result<u64, MediaError> {
    let (p, end) = find(init, 0, init.len(), &[b"moov", b"trak", b"mdia", b"mdhd"])
        .ok_or(MediaError::Malformed("init: no moov/trak/mdia/mdhd"))?;
    let version = init[p];
    let at = if version == 1 { p + 4 + 16 } else { p + 4 + 8 };
    if at + 4 > end {
        return Err(MediaError::Malformed("mdhd"));
    }
    Ok(u32::from_be_bytes([init[at], init[at + 1], init[at + 2], init[at + 3]]) as u64)
}

fn parse_chunk(seg: &[u8]) -> Result<Chunk, MediaError> {
    let mut out = BytesMut::with_capacity(seg.len());
    let mut mfhd_seq = Vec::new();
    let mut tfdt = Vec::new();
    let mut base_time = None;
    for b in boxes(seg, 0, seg.len()) {
        let (typ, bstart, payload, bend) = b?;
        match &typ {
            b"styp" | b"sidx" => continue,
            b"moof" => {
                let shift = out.len() as isize - bstart as isize;
                for inner in boxes(seg, payload, bend) {
                    let (t, _, p, e) = inner?;
                    if &t == b"mfhd" {
                        mfhd_seq.push((p + 4) as isize + shift);
                    } else if &t == b"traf" {
                        let (tp, te) = find(seg, p, e, &[b"tfdt"])
                            .ok_or(MediaError::Malformed("traf without tfdt"))?;
                        let wide = seg[tp] == 1;
                        let at = tp + 4;
                        let need = if wide { 8 } else { 4 };
                        if at + need > te {
                            return Err(MediaError::Malformed("tfdt"));
                        }
                        let v = if wide {
                            u64::from_be_bytes(seg[at..at + 8].try_into().expect("8 bytes"))
                        } else {
                            u32::from_be_bytes(seg[at..at + 4].try_into().expect("4 bytes")) as u64
                        };
                        base_time.get_or_insert(v);
                        tfdt.push((at as isize + shift, wide));
                    }
                }
            }
            _ => {}
        }
        out.put_slice(&seg[bstart..bend]);
    }
    Ok(Chunk {
        bytes: out.freeze(),
        mfhd_seq: mfhd_seq.into_iter().map(|o| o as usize).collect(),
        tfdt: tfdt.into_iter().map(|(o, w)| (o as usize, w)).collect(),
        base_time: base_time.ok_or(MediaError::Malformed("segment without tfdt"))?,
    })
}

impl Rendition {
    /// Bytes of the global chunk number `n` (0-based since the stream's origin): the fixture chunk
    /// `n % len` with mfhd sequence `n + 1` and its decode times moved to loop `n / len`.
    pub fn chunk(&self, n: u64) -> Bytes {
        let len = self.chunks.len() as u64;
        let c = &self.chunks[(n % len) as usize];
        let shift = (n / len) * len * self.chunk_ticks;
        let mut b = BytesMut::from(&c.bytes[..]);
        for &off in &c.mfhd_seq {
            b[off..off + 4].copy_from_slice(&((n + 1) as u32).to_be_bytes());
        }
        for &(off, wide) in &c.tfdt {
            if wide {
                let v = u64::from_be_bytes(b[off..off + 8].try_into().expect("checked at load"));
                b[off..off + 8].copy_from_slice(&(v + shift).to_be_bytes());
            } else {
                // 32-bit tfdt wraps after 2^32 ticks (about 77 h at 15360 Hz); fine for a simulator.
                let v = u32::from_be_bytes(b[off..off + 4].try_into().expect("checked at load"));
                b[off..off + 4].copy_from_slice(&(v.wrapping_add(shift as u32)).to_be_bytes());
            }
        }
        b.freeze()
    }

    /// A served segment of `chunks_per_segment` chunks: `styp` then the rewritten chunks.
    pub fn segment(&self, number: u64, chunks_per_segment: u64) -> Bytes {
        const STYP: &[u8] = b"\x00\x00\x00\x18stypmsdh\x00\x00\x00\x00msdhmsix";
        let mut out = BytesMut::new();
        out.put_slice(STYP);
        for j in 0..chunks_per_segment {
            out.put_slice(&self.chunk(number * chunks_per_segment + j));
        }
        out.freeze()
    }
}

/// Reads (mfhd sequence numbers, tfdt values) of a served segment; used by tests and checks.
pub fn inspect(seg: &[u8]) -> Result<(Vec<u32>, Vec<u64>), MediaError> {
    let mut seqs = Vec::new();
    let mut times = Vec::new();
    for b in boxes(seg, 0, seg.len()) {
        let (typ, _, payload, bend) = b?;
        if &typ != b"moof" {
            continue;
        }
        if let Some((p, _)) = find(seg, payload, bend, &[b"mfhd"]) {
            seqs.push(u32::from_be_bytes(
                seg[p + 4..p + 8].try_into().expect("4 bytes"),
            ));
        }
        if let Some((p, _)) = find(seg, payload, bend, &[b"traf", b"tfdt"]) {
            times.push(if seg[p] == 1 {
                u64::from_be_bytes(seg[p + 4..p + 12].try_into().expect("8 bytes"))
            } else {
                u32::from_be_bytes(seg[p + 4..p + 8].try_into().expect("4 bytes")) as u64
            });
        }
    }
    Ok((seqs, times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_load_and_loop_continues() {
        let r = builtin().expect("fixtures load");
        assert_eq!(r.len(), 2);
        let r0 = &r[0];
        assert_eq!(r0.chunk_ticks, r0.timescale * 2);
        let len = r0.chunks.len() as u64;
        for n in [0, 1, len - 1, len, len + 1, 5 * len + 3] {
            let (seqs, times) = inspect(&r0.segment(n, 1)).expect("parse");
            assert_eq!(seqs, vec![(n + 1) as u32], "mfhd of segment {n}");
            assert_eq!(times, vec![n * r0.chunk_ticks], "tfdt of segment {n}");
        }
        // A 4 s segment is two consecutive chunks.
        let (seqs, times) = inspect(&r0.segment(3, 2)).expect("parse");
        assert_eq!(seqs, vec![7, 8]);
        assert_eq!(times, vec![6 * r0.chunk_ticks, 7 * r0.chunk_ticks]);
    }
}
