//! A scripted HTTP/1.1 origin on `127.0.0.1:0`, written on raw sockets so it can misbehave in
//! ways a real HTTP server library refuses to: send fewer bytes than its `Content-Length`, drop a
//! chunked body before the terminating chunk, stall mid-body, or close without answering.
//!
//! Each path gets a [`Script`] (status, headers, body and a [`Fault`]); the origin counts requests
//! per path and records every request's headers and when each response's first and last body
//! bytes were written, so tests assert behaviour ("the origin saw 1 request", "the waiter's first
//! byte came before the origin finished") rather than timing.
//!
//! ```ignore
//! let origin = Origin::start().await;
//! origin.script("/a.ts", Script::ok("segment").header("cache-control", "max-age=60"));
//! // ... point an edge at origin.addr() ...
//! assert_eq!(origin.count("/a.ts"), 1);
//! origin.stop();      // refuses connections and cuts open ones
//! origin.restart().await; // same port, same scripts and counts
//! ```
//!
//! Conditional requests: when a script's headers carry an `ETag` and the request's
//! `If-None-Match` lists it, the origin answers `304 Not Modified` with the script's headers and
//! no body. Unscripted paths get a 404 that says so (and are counted too).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a scripted response misbehaves (or not).
#[derive(Debug, Clone, Default)]
pub enum Fault {
    /// A well-formed response.
    #[default]
    None,
    /// Close the connection right after reading the request: no response at all.
    Close,
    /// `Close` when the request is not the connection's first (the keep-alive race: an origin
    /// whose idle timeout fires as a pooled connection's next request arrives); a well-formed
    /// response on a new connection.
    CloseIfReused,
    /// Send the head and the first `n` body bytes, then close the connection. With
    /// `Content-Length` that is a short body; with chunked encoding, a body without its
    /// terminating chunk.
    Truncate(usize),
    /// Send the head and the first `n` body bytes, then hold the connection open without sending
    /// anything more (until the origin is stopped).
    Stall(usize),
}

/// One path's scripted response.
#[derive(Debug, Clone)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    /// Wait this long before sending the response head.
    pub head_delay: Duration,
    /// Send the body in this many chunks spread evenly over the duration (a chunk, then a
    /// pause, ...); `None` sends it at once.
    pub trickle: Option<(usize, Duration)>,
    pub fault: Fault,
    /// Answer with the request's own body, streamed back chunk by chunk as it arrives (chunked).
    /// Status and headers come from the script; `body` is ignored.
    pub echo: bool,
    /// Hold the response head until the test opens this gate.
    pub gate: Option<Gate>,
    /// Answer a single `Range: bytes=...` on a 200 script with a 206 of those bytes and its
    /// `Content-Range` (416 past the end), as a range-capable origin does.
    pub ranged: bool,
    /// Answer every request carrying `Range` with this script instead (an origin whose ranged
    /// answers say something its whole ones do not, e.g. `Content-Range: bytes 0-19/*`).
    pub on_range: Option<Box<Script>>,
}

/// A one-way gate: scripted responses holding it wait (after `head_delay`) until `open`.
/// Lets a test line viewers up behind an unanswered origin request without sleeping.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Script {
    /// A 200 with `body` and no other headers.
    pub fn ok(body: impl Into<Bytes>) -> Script {
        Script::status(200, body)
    }

    pub fn status(status: u16, body: impl Into<Bytes>) -> Script {
        Script {
            status,
            headers: Vec::new(),
            body: body.into(),
            chunked: false,
            head_delay: Duration::ZERO,
            trickle: None,
            fault: Fault::None,
            echo: false,
            gate: None,
            ranged: false,
            on_range: None,
        }
    }

    /// Adds a response header (repeatable).
    pub fn header(mut self, name: &str, value: &str) -> Script {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn chunked(mut self) -> Script {
        self.chunked = true;
        self
    }

    pub fn head_delay(mut self, d: Duration) -> Script {
        self.head_delay = d;
        self
    }

    pub fn trickle(mut self, chunks: usize, over: Duration) -> Script {
        self.trickle = Some((chunks.max(1), over));
        self
    }

    pub fn fault(mut self, f: Fault) -> Script {
        self.fault = f;
        self
    }

    pub fn echo(mut self) -> Script {
        self.echo = true;
        self
    }

    pub fn gate(mut self, g: &Gate) -> Script {
        self.gate = Some(g.clone());
        self
    }

    /// Serves `Range` requests (see [`Script::ranged`]).
    pub fn ranged(mut self) -> Script {
        self.ranged = true;
        self
    }

    /// Answers requests carrying `Range` with `s` instead of this script.
    pub fn on_range(mut self, s: Script) -> Script {
        self.on_range = Some(Box::new(s));
        self
    }

    /// This script's answer to a request with `range`, when it is ranged: a 206 (or a 416)
    /// script of its own. `None`: the whole response.
    fn for_range(&self, range: &str) -> Option<Script> {
        if !self.ranged || self.status != 200 {
            return None;
        }
        let spec = range.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let len = self.body.len() as u64;
        let (start, end) = match (a.trim(), b.trim()) {
            ("", n) => {
                let n: u64 = n.parse().ok()?;
                (len.saturating_sub(n), len)
            }
            (a, "") => (a.parse().ok()?, len),
            (a, b) => (
                a.parse().ok()?,
                b.parse::<u64>().ok()?.saturating_add(1).min(len),
            ),
        };
        let mut out = self.clone();
        if start >= len || start >= end {
            out.status = 416;
            out.body = Bytes::new();
            out.headers
                .push(("content-range".into(), format!("bytes */{len}")));
            return Some(out);
        }
        out.status = 206;
        out.body = self.body.slice(start as usize..end as usize);
        out.headers.push((
            "content-range".into(),
            format!("bytes {start}-{}/{len}", end - 1),
        ));
        Some(out)
    }

    fn etag(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.as_str())
    }
}

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub at: Instant,
}

impl Seen {
    /// The first value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// When a response's body went out (for ordering assertions).
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    pub status: u16,
    pub first_byte: Option<Instant>,
    /// When the last body byte was written; `None` if the body never completed (fault, cut).
    pub last_byte: Option<Instant>,
    /// Body bytes written.
    pub bytes: usize,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Script>,
    seen: Vec<Seen>,
    sent: Vec<Sent>,
    /// TCP connections accepted since start.
    connections: usize,
}

/// The scripted origin. Dropping it stops it.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    run: Mutex<Option<Running>>,
}

struct Running {
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Origin {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the origin on loopback");
        let addr = listener.local_addr().expect("origin local addr");
        let origin = Origin {
            addr,
            state: Arc::new(Mutex::new(State::default())),
            run: Mutex::new(None),
        };
        origin.serve(listener);
        origin
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets (or replaces) the script for `path` (the request path, query excluded).
    pub fn script(&self, path: &str, s: Script) {
        self.state.lock().scripts.insert(path.to_string(), s);
    }

    /// Requests seen for `path` (any method, query excluded), since start.
    pub fn count(&self, path: &str) -> usize {
        self.state
            .lock()
            .seen
            .iter()
            .filter(|s| path_of(&s.target) == path)
            .count()
    }

    /// The target (path and query, as sent) of every request seen since start, in order.
    pub fn targets(&self) -> Vec<String> {
        self.state
            .lock()
            .seen
            .iter()
            .map(|s| s.target.clone())
            .collect()
    }

    /// TCP connections accepted since start (across restarts).
    pub fn connections(&self) -> usize {
        self.state.lock().connections
    }

    /// Body bytes sent for `path`, over every response.
    pub fn body_bytes(&self, path: &str) -> usize {
        self.state
            .lock()
            .sent
            .iter()
            .filter(|s| s.path == path)
            .map(|s| s.bytes)
            .sum()
    }

    /// Every request seen for `path`, in arrival order.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.state
            .lock()
            .seen
            .iter()
            .filter(|s| path_of(&s.target) == path)
            .cloned()
            .collect()
    }

    /// Every response written for `path`, in order.
    pub fn sent(&self, path: &str) -> Vec<Sent> {
        self.state
            .lock()
            .sent
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    /// Stops listening and cuts every open connection (connections then see a reset or EOF, new
    /// ones are refused). Scripts and counts are kept.
    pub fn stop(&self) {
        if let Some(r) = self.run.lock().take() {
            r.cancel.cancel();
            r.tasks.close();
        }
    }

    /// Like `stop`, and waits until the listener and every connection task have ended, so the
    /// port is closed when this returns.
    pub async fn stop_and_wait(&self) {
        let running = self.run.lock().take();
        if let Some(r) = running {
            r.cancel.cancel();
            r.tasks.close();
            r.tasks.wait().await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop_and_wait().await;
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the origin's port");
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = self.state.clone();
        let (c, t) = (cancel.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                // Races a new connection against stop; stop wins and drops the listener.
                let (stream, _) = tokio::select! {
                    _ = c.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                state.lock().connections += 1;
                let state = state.clone();
                let c = c.clone();
                t.spawn(async move {
                    tokio::select! {
                        _ = c.cancelled() => {}
                        _ = connection(stream, state) => {}
                    }
                });
            }
        });
        *self.run.lock() = Some(Running { cancel, tasks });
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// Serves one keep-alive connection until the peer closes or a fault ends it.
async fn connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    for n in 0.. {
        let Some(req) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let script = {
            let mut st = state.lock();
            st.seen.push(Seen {
                method: req.method.clone(),
                target: req.target.clone(),
                headers: req.headers.clone(),
                at: Instant::now(),
            });
            st.scripts.get(path_of(&req.target)).cloned()
        };
        let script = script.unwrap_or_else(|| {
            Script::status(404, format!("origin: no script for {}\n", req.target))
        });
        let path = path_of(&req.target).to_string();
        if n > 0 && matches!(script.fault, Fault::CloseIfReused) {
            return;
        }
        let keep = if script.echo {
            echo(&mut stream, &mut buf, &req, &script, &state, &path).await
        } else {
            if !skip_body(&mut stream, &mut buf, &req).await {
                return;
            }
            respond(&mut stream, &req, &script, &state, &path).await
        };
        if !keep {
            return;
        }
    }
}

struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one request head; `buf` keeps whatever followed it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_string();
            let target = first.next()?.to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Some(Head {
                method,
                target,
                headers,
            });
        }
        if !fill_buf(stream, buf).await {
            return None;
        }
    }
}

async fn fill_buf(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 16 << 10];
    match stream.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads the next piece of a request body: `Some(bytes)` (possibly empty only at the end),
/// `None` once the body is complete. Errors (EOF mid-body) end the connection.
struct BodyReader {
    chunked: bool,
    /// Bytes left: of the body (Content-Length) or of the current chunk (chunked).
    left: usize,
    done: bool,
}

impl BodyReader {
    fn new(req: &Head) -> BodyReader {
        let chunked = req.is_chunked();
        let left = if chunked { 0 } else { req.content_length() };
        BodyReader {
            chunked,
            left,
            done: !chunked && left == 0,
        }
    }

    async fn next(&mut self, s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Bytes>, ()> {
        if self.done {
            return Ok(None);
        }
        if self.chunked && self.left == 0 {
            // A chunk-size line (after the previous chunk's CRLF, if any).
            loop {
                if buf.starts_with(b"\r\n") {
                    buf.drain(..2);
                }
                if let Some(end) = find(buf, b"\r\n") {
                    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 2);
                    if line.is_empty() {
                        continue;
                    }
                    let size_hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_hex, 16).map_err(|_| ())?;
                    if size == 0 {
                        // Trailers are not expected; consume the final CRLF.
                        while find(buf, b"\r\n").is_none() {
                            if !fill_buf(s, buf).await {
                                return Err(());
                            }
                        }
                        let end = find(buf, b"\r\n").expect("checked above");
                        buf.drain(..end + 2);
                        self.done = true;
                        return Ok(None);
                    }
                    self.left = size;
                    break;
                }
                if !fill_buf(s, buf).await {
                    return Err(());
                }
            }
        }
        if buf.is_empty() && !fill_buf(s, buf).await {
            return Err(());
        }
        let n = self.left.min(buf.len());
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.drain(..n);
        self.left -= n;
        if !self.chunked && self.left == 0 {
            self.done = true;
        }
        Ok(Some(piece))
    }
}

async fn skip_body(s: &mut TcpStream, buf: &mut Vec<u8>, req: &Head) -> bool {
    let mut r = BodyReader::new(req);
    loop {
        match r.next(s, buf).await {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(()) => return false,
        }
    }
}

fn head_bytes(status: u16, headers: &[(String, String)], framing: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(framing);
    out.push_str("\r\n");
    out.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Scripted",
    }
}

/// Writes one scripted response. Returns whether the connection may carry another request.
async fn respond(
    s: &mut TcpStream,
    req: &Head,
    script: &Script,
    state: &Mutex<State>,
    path: &str,
) -> bool {
    if matches!(script.fault, Fault::Close) {
        return false;
    }
    if !script.head_delay.is_zero() {
        tokio::time::sleep(script.head_delay).await;
    }
    if let Some(g) = &script.gate {
        g.wait().await;
    }
    let not_modified = match (script.etag(), req.header("if-none-match")) {
        (Some(etag), Some(inm)) => inm.split(',').any(|t| t.trim() == etag),
        _ => false,
    };
    if not_modified {
        let head = head_bytes(304, &script.headers, "");
        let ok = s.write_all(&head).await.is_ok();
        state.lock().sent.push(Sent {
            path: path.to_string(),
            status: 304,
            first_byte: None,
            last_byte: None,
            bytes: 0,
        });
        return ok;
    }
    let partial = req.header("range").and_then(|r| match &script.on_range {
        Some(s) => Some((**s).clone()),
        None => script.for_range(r),
    });
    let script = partial.as_ref().unwrap_or(script);
    let body: &[u8] = if req.method == "HEAD" {
        &[]
    } else {
        &script.body
    };
    let framing = if script.chunked {
        "transfer-encoding: chunked\r\n".to_string()
    } else {
        format!("content-length: {}\r\n", script.body.len())
    };
    if s.write_all(&head_bytes(script.status, &script.headers, &framing))
        .await
        .is_err()
    {
        return false;
    }
    let idx = {
        let mut st = state.lock();
        st.sent.push(Sent {
            path: path.to_string(),
            status: script.status,
            first_byte: None,
            last_byte: None,
            bytes: 0,
        });
        st.sent.len() - 1
    };
    let limit = match script.fault {
        Fault::Truncate(n) | Fault::Stall(n) => n.min(body.len()),
        _ => body.len(),
    };
    let (pieces, pause) = match script.trickle {
        Some((n, over)) => (n, over / n as u32),
        None => (1, Duration::ZERO),
    };
    let piece_len = body.len().div_ceil(pieces).max(1);
    let mut written = 0;
    for (i, piece) in body[..limit].chunks(piece_len).enumerate() {
        if i > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let ok = if script.chunked {
            let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
            c.extend_from_slice(piece);
            c.extend_from_slice(b"\r\n");
            s.write_all(&c).await.is_ok()
        } else {
            s.write_all(piece).await.is_ok()
        };
        if !ok {
            return false;
        }
        written += piece.len();
        state.lock().sent[idx].bytes = written;
        if i == 0 {
            state.lock().sent[idx].first_byte = Some(Instant::now());
        }
    }
    match script.fault {
        Fault::Truncate(_) => {
            let _ = s.flush().await;
            return false;
        }
        Fault::Stall(_) => {
            // Held open until the origin is stopped (the connection task is cancelled).
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    if script.chunked && s.write_all(b"0\r\n\r\n").await.is_err() {
        return false;
    }
    debug_assert_eq!(written, body.len());
    state.lock().sent[idx].last_byte = Some(Instant::now());
    true
}

/// Streams the request body back as a chunked response, each piece as soon as it arrives.
async fn echo(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &Head,
    script: &Script,
    state: &Mutex<State>,
    path: &str,
) -> bool {
    let head = head_bytes(
        script.status,
        &script.headers,
        "transfer-encoding: chunked\r\n",
    );
    if s.write_all(&head).await.is_err() {
        return false;
    }
    let mut reader = BodyReader::new(req);
    let mut first = None;
    loop {
        match reader.next(s, buf).await {
            Ok(Some(piece)) if !piece.is_empty() => {
                let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
                c.extend_from_slice(&piece);
                c.extend_from_slice(b"\r\n");
                if s.write_all(&c).await.is_err() {
                    return false;
                }
                first.get_or_insert_with(Instant::now);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(()) => return false,
        }
    }
    let ok = s.write_all(b"0\r\n\r\n").await.is_ok();
    state.lock().sent.push(Sent {
        path: path.to_string(),
        status: script.status,
        first_byte: first,
        last_byte: Some(Instant::now()),
        bytes: 0,
    });
    ok
}
