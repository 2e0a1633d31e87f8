//! A strict HTTP/1.1 origin on raw TCP with hand-written parsing (not hyper), framing requests
//! exactly as nginx does: it reads a request's head, then exactly `Content-Length` body bytes
//! (or a chunked body under `Transfer-Encoding: chunked`) before it answers. A request that
//! announces a body it never sends therefore stalls it, as it would stall nginx. It records
//! every request's raw head (all header lines, in order) and body, answers scripted responses
//! (extra raw header lines, an optional delay) and keeps connections alive.
//!
//! ```ignore
//! let o = StrictOrigin::start().await;
//! o.script("/a.ts", StrictScript::ok("body").header("Cache-Control: max-age=60"));
//! // ... o.seen("/a.ts")[0].header("host")
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest head or chunk-size line it reads, so a broken client cannot grow its memory.
const MAX_LINE: usize = 16 << 10;
/// Largest body it reads.
const MAX_BODY: usize = 1 << 20;

/// One scripted answer.
#[derive(Clone)]
pub struct StrictScript {
    status: u16,
    headers: Vec<String>,
    body: Vec<u8>,
    delay: Duration,
}

impl StrictScript {
    pub fn ok(body: impl Into<Vec<u8>>) -> StrictScript {
        StrictScript {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a raw header line (`"Name: value"`) to the response.
    pub fn header(mut self, line: &str) -> StrictScript {
        self.headers.push(line.to_string());
        self
    }

    /// Waits this long after reading the request before answering.
    pub fn delay(mut self, d: Duration) -> StrictScript {
        self.delay = d;
        self
    }
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    /// Header lines in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body as the request's own framing delimited it (chunked: decoded).
    pub body: Vec<u8>,
}

impl SeenRequest {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any header of this name arrived.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, StrictScript>,
    seen: Vec<SeenRequest>,
}

/// The running origin; its accept loop stops on drop.
pub struct StrictOrigin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl StrictOrigin {
    pub async fn start() -> StrictOrigin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind strict origin");
        let addr = listener.local_addr().expect("strict origin addr");
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        StrictOrigin { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests for `path` (the target without its query) with `script`; other paths 404.
    pub fn script(&self, path: &str, script: StrictScript) {
        self.lock().scripts.insert(path.to_string(), script);
    }

    /// Every request whose target's path is `path`, in arrival order.
    pub fn seen(&self, path: &str) -> Vec<SeenRequest> {
        self.lock()
            .seen
            .iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    /// Every request it received.
    pub fn all(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for StrictOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: requests in sequence until the peer closes or sends something unframeable.
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut r = BufReader::new(stream);
    for _ in 0..10_000 {
        let Some(req) = read_request(&mut r).await else {
            return;
        };
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let script = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.seen.push(req.clone());
            st.scripts.get(&path).cloned()
        };
        let script = script.unwrap_or(StrictScript {
            status: 404,
            headers: Vec::new(),
            body: b"not found".to_vec(),
            delay: Duration::ZERO,
        });
        tokio::time::sleep(script.delay).await;
        let mut out = format!("HTTP/1.1 {} X\r\n", script.status);
        for h in &script.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        let body: &[u8] = if req.method == "HEAD" {
            &[]
        } else {
            &script.body
        };
        out.push_str(&format!("Content-Length: {}\r\n\r\n", script.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        if r.get_mut().write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Reads one line (CRLF or LF), bounded by `MAX_LINE`; `None` at EOF or on an overlong line.
async fn read_line(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .ok()?;
    if n == 0 || !line.ends_with(b"\n") {
        return None;
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).ok()
}

/// Head, then exactly the body its framing announces (nginx: `Transfer-Encoding` wins).
async fn read_request(r: &mut BufReader<TcpStream>) -> Option<SeenRequest> {
    let start = read_line(r).await?;
    let mut parts = start.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    for _ in 0..200 {
        let line = read_line(r).await?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut req = SeenRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        for _ in 0..10_000 {
            let size_line = read_line(r).await?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers up to the blank line.
                while !read_line(r).await?.is_empty() {}
                break;
            }
            if req.body.len() + size > MAX_BODY {
                return None;
            }
            let at = req.body.len();
            req.body.resize(at + size, 0);
            r.read_exact(&mut req.body[at..]).await.ok()?;
            read_line(r).await?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().ok()?;
        if len > MAX_BODY {
            return None;
        }
        req.body.resize(len, 0);
        r.read_exact(&mut req.body).await.ok()?;
    }
    Some(req)
}
