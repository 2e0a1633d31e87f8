//! The access log: the listener takes a `Pending` from each request and `finish`es it with the
//! response, which wraps the body in `Logged`, which counts the bytes sent
//! and writes one `vedge::access` event when the body ends or is dropped. Fields, not prose:
//!
//! `client_ip host method path status ua cache bytes complete ttfb_ms ms origin_ms` and, when
//! the request carried CMCD (attached by the request path as a `cmcd::Cmcd` response
//! extension), `cmcd_sid cmcd_cid cmcd_bl cmcd_br cmcd_ot cmcd_su cmcd_bs`. Absent values are
//! left out of the line. `path` never holds the query (tokens and CMCD stay out of logs).
//!
//! `complete` means the viewer was handed every byte the response promised: all of a known
//! length, or the end of a body without one. hyper stops polling a body once it has written
//! `Content-Length` bytes and drops it without asking for the end, so "the body said it ended"
//! alone marked every fill (a stream that only learns its end on the next poll) incomplete.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::cmcd::Cmcd;
use crate::http::body::{Body, BoxError};
use crate::http::conn::InFlight;
use crate::http::response::LogInfo;
use crate::http::server::{Conn, Handler};
use crate::metrics::Metrics;

/// The `tracing` target of access lines (filter it with `RUST_LOG=vedge::access=info`).
pub const TARGET: &str = "vedge::access";

/// Whether access lines are written (`vedge::access` enabled at INFO): with them off, nothing is
/// copied or recorded for the line on the request path.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// The longest path an access line keeps, in bytes; longer ones end in `...`. A viewer's path
/// and headers may be tens of KiB each (up to `server.max_header_size`): copied whole, every
/// line queued for a slow log sink would hold them (`main::init_tracing` bounds the queue in
/// lines), and one viewer could make the edge hold gigabytes of its own text.
const MAX_PATH: usize = 2048;

/// The longest `Host` or `User-Agent` an access line keeps, in bytes.
const MAX_FIELD: usize = 256;

/// `s` cut to at most `max` bytes (at a character boundary), marked with `...` when cut.
fn clipped(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The request's path as the access line shows it (unquoted): a byte outside printable ASCII
/// (raw UTF-8, which the request line lets through as obs-text, or a control byte) written as
/// `%XX`, so no path can hold a character a log reader takes for a line break (U+2028,
/// U+0085) or forge another field.
fn loggable_path(path: &str) -> String {
    let path = clipped(path, MAX_PATH);
    if path.bytes().all(|b| b.is_ascii_graphic()) {
        return path;
    }
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the access line needs from the request, taken before the request is handed on.
pub struct Pending {
    started: Instant,
    method: Method,
    /// `None` with access logging off: then nothing is copied.
    who: Option<Who>,
}

impl Pending {
    pub fn of(req: &Request<Incoming>) -> Pending {
        let text = |name| {
            req.headers()
                .get(name)
                .and_then(|h| h.to_str().ok())
                .map(|v| clipped(v, MAX_FIELD))
        };
        let who = enabled().then(|| Who {
            path: loggable_path(req.uri().path()),
            // The host the edge served, as it routes and keys (`request::viewer_host`): the
            // target's authority (absolute-form, h2 `:authority`) wins over `Host` (RFC 9112
            // §3.2.2), or a viewer could log its traffic under another customer's host.
            host: req
                .uri()
                .authority()
                .map(|a| clipped(a.as_str(), MAX_FIELD))
                .or_else(|| text(header::HOST))
                .unwrap_or_default(),
            ua: text(header::USER_AGENT).unwrap_or_default(),
        });
        Pending {
            started: Instant::now(),
            method: req.method().clone(),
            who,
        }
    }

    /// Wraps the response's body so the access line is written when it ends. `in_flight` is
    /// the connection's count of this request, held until the body is done or dropped.
    pub fn finish<H: Handler>(
        self,
        conn: Arc<Conn<H>>,
        peer: Option<SocketAddr>,
        mut resp: Response<Body>,
        in_flight: InFlight,
    ) -> Response<Logged<H>> {
        let ttfb = self.started.elapsed();
        let info = resp
            .extensions()
            .get::<LogInfo>()
            .copied()
            .unwrap_or_default();
        let cmcd = resp.extensions_mut().remove::<Cmcd>();
        let status = resp.status().as_u16();
        let hint = http_body::Body::size_hint(resp.body());
        in_flight.promise(hint.exact().unwrap_or(hint.lower()));
        in_flight.handed();
        resp.map(|body| {
            let promised = http_body::Body::size_hint(&body).exact();
            Logged {
                body,
                sent: 0,
                promised,
                done: false,
                in_flight,
                line: Some(AccessLine {
                    conn,
                    method: self.method,
                    who: self.who,
                    peer,
                    status,
                    info,
                    cmcd,
                    started: self.started,
                    ttfb_ms: ttfb.as_millis() as u64,
                }),
            }
        })
    }
}

/// Request details only the access line needs.
struct Who {
    path: String,
    host: String,
    ua: String,
}

struct AccessLine<H: Handler> {
    /// The connection (and through it the edge's metrics).
    conn: Arc<Conn<H>>,
    method: Method,
    who: Option<Who>,
    peer: Option<SocketAddr>,
    status: u16,
    info: LogInfo,
    cmcd: Option<Cmcd>,
    started: Instant,
    /// Request received to response head ready (handed to the connection).
    ttfb_ms: u64,
}

/// A response body that counts what it sent and logs one access line when it is finished or
/// dropped (a dropped, unfinished body is an aborted response).
pub struct Logged<H: Handler> {
    body: Body,
    sent: u64,
    /// The body's exact length when known (`Content-Length`, a range's length).
    promised: Option<u64>,
    done: bool,
    /// Ends the request for the connection's idle timeout when the body is done or dropped,
    /// and tells the connection's watchdog each time body bytes go out (`http::conn`).
    in_flight: InFlight,
    line: Option<AccessLine<H>>,
}

impl<H: Handler> Logged<H> {
    /// Every promised byte was handed to the connection, or the body said it ended.
    fn complete(&self) -> bool {
        self.done
            || http_body::Body::is_end_stream(&self.body)
            || self.promised.is_some_and(|n| self.sent >= n)
    }
}

impl<H: Handler> http_body::Body for Logged<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.in_flight.polled();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                    this.in_flight.sent(d.len() as u64);
                }
            }
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(_))) => this.in_flight.cut_short(),
            Poll::Pending => {}
        }
        r
    }

    /// Also true once the promised length went out, so h2 can end the stream with the last
    /// data frame instead of an empty one after another poll.
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream() || self.promised.is_some_and(|n| self.sent >= n)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<H: Handler> Drop for Logged<H> {
    fn drop(&mut self) {
        let Some(l) = self.line.take() else { return };
        let complete = self.complete();
        let m = l.conn.edge().metrics();
        m.bytes_sent
            .fetch_add(self.sent, std::sync::atomic::Ordering::Relaxed);
        if !complete {
            Metrics::inc(&m.responses_aborted);
        }
        let Some(who) = &l.who else { return };
        let c = l.cmcd.as_ref();
        tracing::info!(
            target: TARGET,
            client_ip = l.peer.map(|p| tracing::field::display(p.ip())),
            // Viewer text goes in as strings, which the formatter quotes and escapes: shown
            // plain, a `User-Agent` or `Host` holding spaces would forge fields of the line.
            host = who.host.as_str(),
            method = %l.method,
            path = %who.path,
            status = l.status,
            ua = who.ua.as_str(),
            cache = l.info.cache.map_or("-", |c| c.as_str()),
            bytes = self.sent,
            complete,
            ttfb_ms = l.ttfb_ms,
            ms = l.started.elapsed().as_millis() as u64,
            origin_ms = l.info.origin_ms,
            cmcd_sid = c.and_then(|c| c.sid.as_deref()),
            cmcd_cid = c.and_then(|c| c.cid.as_deref()),
            cmcd_bl = c.and_then(|c| c.bl),
            cmcd_br = c.and_then(|c| c.br),
            cmcd_ot = c.and_then(|c| c.ot).map(|o| o.as_str()),
            cmcd_su = c.filter(|c| c.su).map(|_| true),
            cmcd_bs = c.filter(|c| c.bs).map(|_| true),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{clipped, loggable_path};

    #[test]
    fn a_path_is_logged_in_printable_ascii() {
        assert_eq!(loggable_path("/vod/a.ts?x=1"), "/vod/a.ts?x=1");
        assert_eq!(
            loggable_path("/vod/a\u{2028}forged\u{85}line.ts"),
            "/vod/a%E2%80%A8forged%C2%85line.ts"
        );
        assert_eq!(loggable_path("/a b\tc"), "/a%20b%09c");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(clipped("short", 8), "short");
        let cut = clipped(&"é".repeat(10), 8);
        assert!(cut.len() <= 8 && cut.ends_with("..."), "{cut}");
        assert_eq!(cut, "éé...");
    }
}
