//! HTTP/2 frames that cost the edge work but carry no request: PING and SETTINGS (each answered
//! with an ACK unless it is one), PRIORITY, and frames with an empty payload that end nothing
//! (CVE-2019-9512, -9515, -9518). hyper's h2 answers every one of them, and nothing in its
//! builder bounds how many a client may send, so one client can keep a core busy on a single
//! connection while its request rate stays at zero. `FloodGuard` reads the client's byte stream
//! as h2 frames (after the connection preface; an HTTP/1.1 connection is passed through untouched
//! after its first bytes) and closes the connection once such frames outrun a token bucket
//! (`server.h2_control_frame_rate` per second, ten seconds of it as the burst).
//! WINDOW_UPDATE frames are what a downloading client sends in proportion to what it is sent,
//! so they have their own allowance: a burst plus one per `WINDOW_UPDATE_BYTES` the edge wrote
//! (the connection's `Activity::written`, which its socket wrapper counts).
//! The guard sits where hyper reads (above TLS), so it sees the frames as hyper does; parsing
//! costs a few comparisons per frame header and nothing per payload byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::conn::Activity;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes written to the client per WINDOW_UPDATE it may send past the burst. A client that
/// acknowledges every 16 KiB DATA frame on both its stream and the connection sends one per
/// 8 KiB; one per 256 bytes leaves room for small frames and stops a flood that takes nothing.
const WINDOW_UPDATE_BYTES: u64 = 256;

/// Seconds of the control-frame rate a client may send at once.
const BURST_SECONDS: u32 = 10;

/// Burst of WINDOW_UPDATE frames before they must be earned by bytes written.
const WINDOW_UPDATE_BURST: u64 = 1000;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// Where the reader is in the client's bytes.
enum Parse {
    /// Matching the preface: how many of its bytes have been seen.
    Preface(usize),
    /// Past the preface: the frame header being gathered, and payload bytes left to skip.
    Frames {
        head: [u8; 9],
        have: usize,
        skip: u64,
    },
    /// Not h2 (HTTP/1.1): nothing more to look at.
    Off,
}

/// What one frame header counts against.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Control,
    WindowUpdate,
    Other,
}

fn classify(ty: u8, flags: u8, len: u64) -> Kind {
    match ty {
        // ACKs too: a client acknowledges the server's few SETTINGS and keep-alive PINGs, and
        // unsolicited ones cost a parse each like the rest.
        PING | SETTINGS | PRIORITY => Kind::Control,
        DATA | HEADERS if len == 0 && flags & END_STREAM == 0 => Kind::Control,
        CONTINUATION if len == 0 => Kind::Control,
        WINDOW_UPDATE => Kind::WindowUpdate,
        // Extension frames a server ignores (RFC 9113 §5.5) still cost a parse each; the
        // ones browsers send (PRIORITY_UPDATE, one per request) fit the rate easily.
        t if t > CONTINUATION => Kind::Control,
        _ => Kind::Other,
    }
}

/// The control-frame token bucket. Refilled only when it runs dry, so a well-behaved client
/// costs no clock reads.
struct Bucket {
    rate: u32,
    tokens: u32,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate,
            tokens: rate.saturating_mul(BURST_SECONDS),
            refilled: Instant::now(),
        }
    }

    /// Takes one token; false when the client is past its rate.
    fn take(&mut self) -> bool {
        if self.tokens == 0 {
            let now = Instant::now();
            let earned = now.duration_since(self.refilled).as_secs_f64() * f64::from(self.rate);
            if earned < 1.0 {
                return false;
            }
            let burst = self.rate.saturating_mul(BURST_SECONDS);
            self.tokens = (earned.min(f64::from(burst))) as u32;
            self.refilled = now;
        }
        self.tokens -= 1;
        true
    }
}

/// A viewer connection's byte stream, read as h2 frames to bound the ones that carry no request.
pub struct FloodGuard<S> {
    inner: S,
    parse: Parse,
    bucket: Bucket,
    window_updates: u64,
    flooded: bool,
    activity: Arc<Activity>,
}

impl<S> FloodGuard<S> {
    /// `rate`: control frames per second a client may send (`server.h2_control_frame_rate`);
    /// 0 passes everything through unread. A flood is noted on `activity`, which the server
    /// counts when the connection ends.
    pub fn new(inner: S, rate: u32, activity: Arc<Activity>) -> FloodGuard<S> {
        FloodGuard {
            inner,
            parse: if rate == 0 {
                Parse::Off
            } else {
                Parse::Preface(0)
            },
            bucket: Bucket::new(rate),
            window_updates: 0,
            flooded: false,
            activity,
        }
    }

    /// Reads `bytes` (just received) as frames; an error once the client floods.
    fn scan(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Off => return Ok(()),
                Parse::Preface(seen) => {
                    let n = bytes.len().min(PREFACE.len() - *seen);
                    if bytes[..n] != PREFACE[*seen..*seen + n] {
                        self.parse = Parse::Off;
                        return Ok(());
                    }
                    *seen += n;
                    bytes = &bytes[n..];
                    if *seen == PREFACE.len() {
                        self.parse = Parse::Frames {
                            head: [0; 9],
                            have: 0,
                            skip: 0,
                        };
                    }
                }
                Parse::Frames { head, have, skip } => {
                    if *skip > 0 {
                        let n = (*skip).min(bytes.len() as u64);
                        *skip -= n;
                        bytes = &bytes[n as usize..];
                        continue;
                    }
                    let n = (head.len() - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < head.len() {
                        continue;
                    }
                    *have = 0;
                    let len =
                        u64::from(head[0]) << 16 | u64::from(head[1]) << 8 | u64::from(head[2]);
                    *skip = len;
                    let kind = classify(head[3], head[4], len);
                    self.count(kind)?;
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, kind: Kind) -> io::Result<()> {
        let within = match kind {
            Kind::Other => true,
            Kind::Control => self.bucket.take(),
            Kind::WindowUpdate => {
                self.window_updates += 1;
                let written = self.activity.written();
                self.window_updates <= WINDOW_UPDATE_BURST + written / WINDOW_UPDATE_BYTES
            }
        };
        if within {
            return Ok(());
        }
        self.activity.note_h2_flood();
        tracing::debug!(
            ?kind,
            "closed an h2 connection flooding frames that carry no request"
        );
        self.flooded = true;
        self.parse = Parse::Off;
        Err(io::Error::other("h2 control-frame flood"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FloodGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.flooded {
            // Closed for flooding: stays closed.
            return Poll::Ready(Err(io::Error::other("h2 control-frame flood")));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && !matches!(self.parse, Parse::Off) {
            let this = &mut *self;
            if let Err(e) = this.scan(&buf.filled()[before..]) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FloodGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: u8 = 0x1;

    fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            ty,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn guard(rate: u32) -> FloodGuard<()> {
        FloodGuard::new((), rate, Activity::new())
    }

    #[test]
    fn http1_is_passed_through_after_its_first_bytes() {
        let mut g = guard(1);
        g.scan(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(matches!(g.parse, Parse::Off));
        for _ in 0..100 {
            g.scan(&frame(PING, 0, &[0; 8])).unwrap();
        }
    }

    #[test]
    fn pings_past_the_burst_close_the_connection_acks_included() {
        let mut g = guard(1);
        g.scan(PREFACE).unwrap();
        for i in 0..BURST_SECONDS {
            let flags = if i % 2 == 0 { ACK } else { 0 };
            g.scan(&frame(PING, flags, &[0; 8])).unwrap();
        }
        assert!(g.scan(&frame(PING, ACK, &[0; 8])).is_err());
        assert!(g.flooded);
        assert!(g.activity.h2_flooded());
    }

    #[test]
    fn frames_split_across_reads_are_parsed_as_one() {
        let mut g = guard(1);
        let mut bytes = PREFACE.to_vec();
        // A large DATA frame whose payload must be skipped, then pings past the burst.
        bytes.extend(frame(DATA, 0, &vec![7u8; 40_000]));
        for _ in 0..=BURST_SECONDS {
            bytes.extend(frame(PING, 0, &[0; 8]));
        }
        let mut failed = false;
        for chunk in bytes.chunks(5) {
            if g.scan(chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "the eleventh ping went unnoticed");
    }

    #[test]
    fn window_updates_are_earned_by_bytes_written() {
        let mut g = guard(100);
        g.scan(PREFACE).unwrap();
        let wu = frame(WINDOW_UPDATE, 0, &[0, 0, 0x40, 0]);
        for _ in 0..WINDOW_UPDATE_BURST {
            g.scan(&wu).unwrap();
        }
        g.activity.note_written(100 * WINDOW_UPDATE_BYTES);
        for _ in 0..100 {
            g.scan(&wu).unwrap();
        }
        assert!(g.scan(&wu).is_err());
    }

    #[test]
    fn requests_and_their_data_never_count() {
        let mut g = guard(1);
        g.scan(PREFACE).unwrap();
        for _ in 0..10_000 {
            g.scan(&frame(HEADERS, 0x4, b"abc")).unwrap();
            g.scan(&frame(DATA, END_STREAM, b"")).unwrap();
        }
    }
}
