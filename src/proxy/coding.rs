//! A manifest's content coding, undone so that the per-viewer token rewrite (`proxy::signed`)
//! can read it as text: gzip, deflate, br and zstd, each bounded to `MAX_REWRITE` decoded
//! bytes (an origin is hostile input: a few KiB of br or zstd can claim gigabytes). Any other
//! coding, a corrupt body or one that decodes past the bound is an `Undecodable`, which the
//! rewrite answers 502: sent as the origin coded it, the manifest would reach its player
//! without the token, and every child request would be refused (403).
//!
//! Decoding is done once per coded body, not once per viewer (`Decoded`): every HIT on a token
//! route hands the rewrite the same stored coded bytes, and without it each one decoded up to
//! `MAX_REWRITE` bytes again.

use std::hash::{Hash, Hasher};
use std::io::Read;

use bytes::Bytes;
use http::{header, HeaderMap};
use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

use crate::proxy::signed::MAX_REWRITE;

/// The largest zstd window accepted: RFC 9659 §3 has HTTP's `zstd` coding use at most 8 MB,
/// and ruzstd reserves the window a frame declares before decoding a byte of it.
const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// Codings stacked on one body that are undone (`Content-Encoding: gzip, br`); more is no
/// origin's honest answer.
const MAX_LAYERS: usize = 2;

/// A content coding this module can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Gzip,
    /// RFC 9110 §8.4.1.2: zlib; raw deflate (which some servers send) is tried too.
    Deflate,
    Br,
    Zstd,
}

impl Coding {
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    fn from_token(c: &str) -> Option<Coding> {
        [
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Br),
            ("zstd", Coding::Zstd),
        ]
        .into_iter()
        .find(|(name, _)| c.eq_ignore_ascii_case(name))
        .map(|(_, coding)| coding)
    }
}

/// Why a coded manifest cannot be given the token. One `as_str` for the log and the 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    /// A coding this edge does not decode (`compress`, `dcb`, a misspelling), or more than
    /// `MAX_LAYERS` of them.
    #[error("the manifest is in a content coding this edge does not decode")]
    Unknown,
    #[error("the manifest's content coding is corrupt or truncated")]
    Corrupt,
    #[error("the manifest decodes to more than the rewrite limit (4 MiB)")]
    TooLarge,
    /// The manifest as the origin sent it is over `MAX_REWRITE`, or would be over
    /// `propagate::MAX_OUTPUT` with the token added: coded or not, it is never sent without it.
    #[error("the manifest is larger than the edge adds a token to (4 MiB as sent, 16 MiB with the token)")]
    Oversized,
}

impl Undecodable {
    pub fn as_str(self) -> &'static str {
        match self {
            Undecodable::Unknown => "unknown-coding",
            Undecodable::Corrupt => "corrupt-coding",
            Undecodable::TooLarge => "decoded-too-large",
            Undecodable::Oversized => "manifest-too-large",
        }
    }
}

/// The codings of a response, in the order they were applied (`Content-Encoding` lists them
/// so); empty for none. `identity` is no coding.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Undecodable> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CONTENT_ENCODING) {
        let v = v.to_str().map_err(|_| Undecodable::Unknown)?;
        for c in v.split(',').map(str::trim) {
            if c.is_empty() || c.eq_ignore_ascii_case("identity") {
                continue;
            }
            out.push(Coding::from_token(c).ok_or(Undecodable::Unknown)?);
        }
    }
    if out.len() > MAX_LAYERS {
        return Err(Undecodable::Unknown);
    }
    Ok(out)
}

/// `body` with `codings` undone (last applied, first undone), at most `MAX_REWRITE` bytes at
/// every step.
pub fn decode(codings: &[Coding], body: &[u8]) -> Result<Vec<u8>, Undecodable> {
    let mut layers = codings.iter().rev();
    let Some(&outer) = layers.next() else {
        return Ok(body.to_vec());
    };
    let mut out = decode_one(outer, body)?;
    for &c in layers {
        out = decode_one(c, &out)?;
    }
    Ok(out)
}

fn decode_one(coding: Coding, body: &[u8]) -> Result<Vec<u8>, Undecodable> {
    match coding {
        Coding::Gzip => bounded(&mut flate2::read::MultiGzDecoder::new(body)),
        Coding::Deflate => match bounded(&mut flate2::read::ZlibDecoder::new(body)) {
            Err(Undecodable::Corrupt) => bounded(&mut flate2::read::DeflateDecoder::new(body)),
            zlib => zlib,
        },
        // The window is the stream's (at most 16 MiB, reserved as the stream asks); output is
        // read through `bounded` like the others.
        Coding::Br => bounded(&mut brotli_decompressor::Decompressor::new(body, 4096)),
        Coding::Zstd => unzstd(body),
    }
}

/// Everything `r` yields, or `TooLarge` past `MAX_REWRITE` bytes (never reading more than one
/// byte past it), or `Corrupt`.
fn bounded(r: &mut dyn Read) -> Result<Vec<u8>, Undecodable> {
    let mut out = Vec::new();
    let n = r
        .take(MAX_REWRITE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Undecodable::Corrupt)?;
    if n > MAX_REWRITE {
        return Err(Undecodable::TooLarge);
    }
    Ok(out)
}

/// A zstd body: one frame or several back to back (RFC 8878 §3.1, as `zstd -d` reads them),
/// skippable frames skipped, each frame's checksum checked when it has one.
fn unzstd(body: &[u8]) -> Result<Vec<u8>, Undecodable> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::StreamingDecoder;

    let mut rest = body;
    let mut out = Vec::new();
    if rest.is_empty() {
        return Err(Undecodable::Corrupt);
    }
    while !rest.is_empty() {
        let mut frame = match StreamingDecoder::new_with_max_window_size(&mut rest, ZSTD_MAX_WINDOW)
        {
            Ok(frame) => frame,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                // The header (magic number and length) is read; skip the frame's content.
                rest = rest.get(length as usize..).ok_or(Undecodable::Corrupt)?;
                continue;
            }
            Err(_) => return Err(Undecodable::Corrupt),
        };
        let room = (MAX_REWRITE + 1).saturating_sub(out.len()) as u64;
        (&mut frame)
            .take(room)
            .read_to_end(&mut out)
            .map_err(|_| Undecodable::Corrupt)?;
        if out.len() > MAX_REWRITE {
            return Err(Undecodable::TooLarge);
        }
        let decoder = &frame.decoder;
        if !decoder.is_finished() {
            return Err(Undecodable::Corrupt);
        }
        if let Some(sent) = decoder.get_checksum_from_data() {
            if decoder.get_calculated_checksum() != Some(sent) {
                return Err(Undecodable::Corrupt);
            }
        }
    }
    Ok(out)
}

/// Memory for the decoded manifests kept (`Decoded`), coded and decoded bytes both weighed:
/// a few manifests at the largest (`MAX_REWRITE` each side), thousands of ordinary ones.
pub const DECODED_BYTES: u64 = 32 << 20;

/// The outcome of decoding coded manifests seen lately, keyed by their coded bytes and codings,
/// so that each coded body is decoded once and not once per viewer: on a token route every
/// request for a coded manifest is rewritten for its viewer, and every HIT hands the rewrite
/// the same stored coded bytes. Failures are kept too (a corrupt body may fail only after
/// decoding megabytes). Keyed by content, not by cache key: what a body decodes to depends
/// on nothing else, so a purge or a refill needs no invalidation here, and two routes share an
/// entry only when their origins sent the very same bytes. Bounded by `DECODED_BYTES`; an
/// entry holds the coded `Bytes` (usually the RAM tier's own, no copy) so a lookup can compare
/// them exactly.
pub struct Decoded {
    cache: Cache<Coded, Result<Bytes, Undecodable>, ByLen>,
}

impl Default for Decoded {
    fn default() -> Decoded {
        let largest = 2 * MAX_REWRITE as u64 + 2 * OVERHEAD;
        let opts = byte_weighted(1024, DECODED_BYTES, largest);
        Decoded {
            cache: Cache::with_options(opts, ByLen, Default::default(), Default::default()),
        }
    }
}

/// quick_cache options for a cache of `bytes` holding items of up to `largest` bytes:
/// quick_cache refuses an item larger than a shard, so a shard holds two of the largest.
pub(crate) fn byte_weighted(items: usize, bytes: u64, largest: u64) -> quick_cache::Options {
    let shards = (bytes / (2 * largest)).clamp(1, 16);
    OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(bytes)
        .shards(shards.next_power_of_two() as usize)
        .build()
        .expect("quick_cache options are valid")
}

impl Decoded {
    /// What `body` under `codings` decoded to, if it was decoded lately.
    pub fn get(&self, codings: &[Coding], body: &Bytes) -> Option<Result<Bytes, Undecodable>> {
        self.cache.get(&Coded::new(codings, body.clone()))
    }

    /// Keeps what `body` under `codings` decoded to.
    pub fn insert(&self, codings: &[Coding], body: Bytes, decoded: Result<Bytes, Undecodable>) {
        self.cache.insert(Coded::new(codings, body), decoded);
    }
}

/// Per-entry bytes besides the bodies (the key, the map's slot), so empty bodies weigh too.
const OVERHEAD: u64 = 64;

/// A coded body and its codings: equal when the bytes are (the same memory, or the same
/// content), hashed over the codings, the length and a sample of the bytes (their ends) so a
/// lookup does not read a whole body to hash it. Bodies that share length and ends (an origin
/// crafting them) share a bucket and are told apart by comparing bytes, bounded by
/// `DECODED_BYTES` in all.
#[derive(Clone)]
struct Coded {
    codings: [Option<Coding>; MAX_LAYERS],
    body: Bytes,
}

impl Coded {
    fn new(codings: &[Coding], body: Bytes) -> Coded {
        let mut layers = [None; MAX_LAYERS];
        for (slot, &c) in layers.iter_mut().zip(codings) {
            *slot = Some(c);
        }
        Coded {
            codings: layers,
            body,
        }
    }
}

impl PartialEq for Coded {
    fn eq(&self, other: &Coded) -> bool {
        let (a, b) = (&self.body, &other.body);
        self.codings == other.codings
            && a.len() == b.len()
            // Bytes are immutable: the same memory is the same content (a HIT's stored body).
            && (a.as_ptr() == b.as_ptr() || a[..] == b[..])
    }
}

impl Eq for Coded {}

impl Hash for Coded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        const ENDS: usize = 64;
        let b = &self.body[..];
        self.codings.hash(state);
        b.len().hash(state);
        b[..b.len().min(ENDS)].hash(state);
        b[b.len().saturating_sub(ENDS)..].hash(state);
    }
}

#[derive(Clone)]
struct ByLen;

impl Weighter<Coded, Result<Bytes, Undecodable>> for ByLen {
    fn weight(&self, key: &Coded, decoded: &Result<Bytes, Undecodable>) -> u64 {
        let text = decoded.as_ref().map_or(0, Bytes::len);
        (key.body.len() + text) as u64 + OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ce(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, v.parse().expect("a header value"));
        h
    }

    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // Quality 5: quick on megabytes of test data in a debug build.
        let params = brotli::enc::BrotliEncoderParams {
            quality: 5,
            ..Default::default()
        };
        brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("br");
        out
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn names_the_codings_in_the_order_applied() {
        assert_eq!(codings(&HeaderMap::new()), Ok(vec![]));
        assert_eq!(codings(&ce("identity")), Ok(vec![]));
        assert_eq!(codings(&ce("BR")), Ok(vec![Coding::Br]));
        assert_eq!(
            codings(&ce("gzip, zstd")),
            Ok(vec![Coding::Gzip, Coding::Zstd])
        );
        assert_eq!(codings(&ce("compress")), Err(Undecodable::Unknown));
        assert_eq!(codings(&ce("br, dcb")), Err(Undecodable::Unknown));
        assert_eq!(codings(&ce("gzip, gzip, gzip")), Err(Undecodable::Unknown));
    }

    #[test]
    fn br_and_zstd_round_trip_and_stack() {
        let text = b"#EXTM3U\n#EXTINF:4.0,\nseg1.ts\n".repeat(50);
        assert_eq!(decode(&[Coding::Br], &br(&text)), Ok(text.clone()));
        assert_eq!(decode(&[Coding::Zstd], &zstd(&text)), Ok(text.clone()));
        // `Content-Encoding: zstd, br`: zstd applied first, undone last.
        let both = br(&zstd(&text));
        assert_eq!(decode(&[Coding::Zstd, Coding::Br], &both), Ok(text.clone()));
        // Two zstd frames back to back, a skippable frame between them.
        let mut frames = zstd(&text[..100]);
        frames.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        frames.extend_from_slice(&zstd(&text[100..]));
        assert_eq!(decode(&[Coding::Zstd], &frames), Ok(text));
    }

    #[test]
    fn bombs_stop_at_the_limit_and_garbage_is_corrupt() {
        let huge = vec![b'#'; MAX_REWRITE + 1];
        let exact = vec![b'#'; MAX_REWRITE];
        for c in [Coding::Br, Coding::Zstd] {
            let enc = if c == Coding::Br { br } else { zstd };
            let bomb = enc(&huge);
            assert!(bomb.len() < 64 << 10, "{c:?}: {} bytes", bomb.len());
            assert_eq!(decode(&[c], &bomb), Err(Undecodable::TooLarge), "{c:?}");
            assert_eq!(decode(&[c], &enc(&exact)).map(|v| v.len()), Ok(MAX_REWRITE));
            let whole = enc(b"#EXTM3U\n#EXTINF:4.0,\nseg1.ts\n");
            let cut = &whole[..whole.len() - 3];
            assert_eq!(decode(&[c], cut), Err(Undecodable::Corrupt), "{c:?} cut");
            assert_eq!(
                decode(&[c], b"#EXTM3U\nnot coded at all\n"),
                Err(Undecodable::Corrupt),
                "{c:?} garbage"
            );
        }
    }

    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused_before_it_is_reserved() {
        // Frame header: magic, descriptor (no single segment, no checksum, no dict id),
        // window descriptor exponent 30 (1 GiB), then a raw last block of 0 bytes.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x01, 0x00, 0x00];
        assert_eq!(decode(&[Coding::Zstd], &frame), Err(Undecodable::Corrupt));
        // The same frame with a 1 KiB window decodes to nothing.
        let small = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00, 0x01, 0x00, 0x00];
        assert_eq!(decode(&[Coding::Zstd], &small), Ok(vec![]));
    }

    #[test]
    fn decoded_bodies_are_found_by_their_bytes_and_codings_only() {
        let d = Decoded::default();
        let lines = (0..1000).map(|i| format!("#EXTINF:4.0,\nseg{i}.ts\n"));
        let text = Bytes::from(lines.collect::<String>());
        let body = Bytes::from(br(&text));
        assert!(body.len() > 2 * 64, "longer than the ends hashed");
        d.insert(&[Coding::Br], body.clone(), Ok(text.clone()));
        assert_eq!(d.get(&[Coding::Br], &body), Some(Ok(text.clone())));
        // The same bytes elsewhere in memory (a fill's copy) are the same body.
        let copy = Bytes::copy_from_slice(&body);
        assert_eq!(d.get(&[Coding::Br], &copy), Some(Ok(text)));
        // The same bytes under another coding, or other bytes with the same length and ends
        // (the same hash), are not.
        assert_eq!(d.get(&[Coding::Zstd], &body), None);
        let mut other = body.to_vec();
        other[body.len() / 2] ^= 1;
        assert_eq!(d.get(&[Coding::Br], &Bytes::from(other)), None);
        // A failure is kept too: a corrupt body is not decoded again either.
        let corrupt = Bytes::from_static(b"not br");
        d.insert(&[Coding::Br], corrupt.clone(), Err(Undecodable::Corrupt));
        assert_eq!(
            d.get(&[Coding::Br], &corrupt),
            Some(Err(Undecodable::Corrupt))
        );
    }
}
