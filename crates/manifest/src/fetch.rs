//! Where a walk (and ingest) reads objects from: the [`Fetcher`] trait, a local directory
//! (`file:` URLs, confined to its root) and an in-memory map. The HTTP fetcher opens outbound
//! connections, so it lives in the edge (`vedge::origin::fetch::HttpFetcher`); an HTTP body it
//! opened still travels here as [`OpenedBody::Http`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use url::Url;

/// One fetched object: its bytes and the origin's headers (content type, validators, caching),
/// which ingest stores with it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Bytes,
    pub headers: HeaderMap,
}

/// Why a fetch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("not found (404)")]
    NotFound,
    #[error("origin answered {0}")]
    Status(u16),
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
    #[error("unsupported URL scheme {0:?}")]
    Scheme(String),
    #[error("{0} is outside the directory being ingested")]
    OutsideRoot(String),
}

impl FetchError {
    /// Worth another attempt: transport trouble and 5xx, not 4xx or local errors.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status(s) => *s >= 500 || *s == 429 || *s == 408,
            FetchError::Timeout(_) | FetchError::Io(_) => true,
            _ => false,
        }
    }
}

/// A future returned by [`Fetcher::fetch`].
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send + 'a>>;

/// A future returned by [`Fetcher::size`].
pub type SizeFuture<'a> = Pin<Box<dyn Future<Output = Option<u64>> + Send + 'a>>;

/// What a cheap probe (HEAD, file metadata) says of an object without reading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// Its length, if announced.
    pub len: Option<u64>,
    /// Its `ETag`, if it has one: a stored copy of the same length with another ETag is another
    /// version of the object, not the same one.
    pub etag: Option<String>,
}

/// A future returned by [`Fetcher::probe`].
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Probe> + Send + 'a>>;

/// A future returned by [`Fetcher::open`].
pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Result<Opened, FetchError>> + Send + 'a>>;

/// An object whose headers have arrived and whose body is still to be read: lets a sink put
/// the body straight where it will be stored (see `vedge_storage::ObjectBuf`).
#[derive(Debug)]
pub struct Opened {
    pub headers: HeaderMap,
    /// The exact body length, when known before reading (Content-Length, file size).
    pub len: Option<u64>,
    pub body: OpenedBody,
    /// Largest body accepted.
    pub max_bytes: usize,
}

/// The unread body of an [`Opened`] object.
#[derive(Debug)]
pub enum OpenedBody {
    /// Already in memory.
    Bytes(Bytes),
    /// An HTTP response body; each frame must arrive within `timeout`.
    Http {
        body: hyper::body::Incoming,
        timeout: Duration,
    },
    /// A local file at position 0: blocking reads, done off the runtime by whoever reads it.
    File(std::fs::File),
}

impl Opened {
    pub fn from_fetched(f: Fetched, max_bytes: usize) -> Self {
        Opened {
            headers: f.headers,
            len: Some(f.body.len() as u64),
            body: OpenedBody::Bytes(f.body),
            max_bytes,
        }
    }

    /// Reads the whole body into memory.
    pub async fn collect(self) -> Result<Fetched, FetchError> {
        let max = self.max_bytes;
        let body = match self.body {
            OpenedBody::Bytes(b) => b,
            OpenedBody::File(f) => tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut v = Vec::new();
                (&f).take(max as u64 + 1).read_to_end(&mut v)?;
                Ok::<_, std::io::Error>(v)
            })
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?
            .map_err(|e| FetchError::Io(e.to_string()))?
            .into(),
            mut body @ OpenedBody::Http { .. } => {
                let mut buf = bytes::BytesMut::with_capacity(
                    self.len.map_or(0, |l| l.min(max as u64) as usize),
                );
                while let Some(chunk) = body.next_chunk().await? {
                    if buf.len() + chunk.len() > max {
                        return Err(FetchError::TooLarge(max));
                    }
                    buf.extend_from_slice(&chunk);
                }
                buf.freeze()
            }
        };
        if body.len() > max {
            return Err(FetchError::TooLarge(max));
        }
        Ok(Fetched {
            body,
            headers: self.headers,
        })
    }
}

impl OpenedBody {
    /// The next piece of an in-memory or HTTP body (`None` at the end). Not for files.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        match self {
            OpenedBody::Bytes(b) if b.is_empty() => Ok(None),
            OpenedBody::Bytes(b) => Ok(Some(std::mem::take(b))),
            OpenedBody::Http { body, timeout } => loop {
                let frame = match tokio::time::timeout(*timeout, body.frame()).await {
                    Err(_) => return Err(FetchError::Timeout(*timeout)),
                    Ok(None) => return Ok(None),
                    Ok(Some(Err(e))) => return Err(FetchError::Io(e.to_string())),
                    Ok(Some(Ok(f))) => f,
                };
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            },
            OpenedBody::File(_) => Err(FetchError::Io("file bodies are read by the sink".into())),
        }
    }
}

/// Reads one object. Implementations are shared by concurrent tasks.
pub trait Fetcher: Send + Sync {
    /// Fetches `url`, failing with [`FetchError::TooLarge`] beyond `max_bytes`.
    fn fetch<'a>(&'a self, url: &'a Url, max_bytes: usize) -> FetchFuture<'a>;

    /// The object's size without reading it (HEAD, file metadata), if cheaply known. Used to
    /// check the store has room before anything is written.
    fn size<'a>(&'a self, url: &'a Url) -> SizeFuture<'a> {
        let _ = url;
        Box::pin(std::future::ready(None))
    }

    /// The object's size and ETag without reading it, for ingest's skip of what is already
    /// stored. The default knows the size only ([`Fetcher::size`]).
    fn probe<'a>(&'a self, url: &'a Url) -> ProbeFuture<'a> {
        Box::pin(async move {
            Probe {
                len: self.size(url).await,
                etag: None,
            }
        })
    }

    /// Starts reading `url`: headers now, the body by the caller (to stream it into a store
    /// buffer). The default fetches the whole object.
    fn open<'a>(&'a self, url: &'a Url, max_bytes: usize) -> OpenFuture<'a> {
        Box::pin(async move {
            let f = self.fetch(url, max_bytes).await?;
            Ok(Opened::from_fetched(f, max_bytes))
        })
    }

    /// How often a transient failure while reading an opened body is worth retrying
    /// (opening itself retries inside `open`).
    fn retries(&self) -> u32 {
        0
    }
}

impl<T: Fetcher + ?Sized> Fetcher for std::sync::Arc<T> {
    fn fetch<'a>(&'a self, url: &'a Url, max_bytes: usize) -> FetchFuture<'a> {
        (**self).fetch(url, max_bytes)
    }

    fn size<'a>(&'a self, url: &'a Url) -> SizeFuture<'a> {
        (**self).size(url)
    }

    fn probe<'a>(&'a self, url: &'a Url) -> ProbeFuture<'a> {
        (**self).probe(url)
    }

    fn open<'a>(&'a self, url: &'a Url, max_bytes: usize) -> OpenFuture<'a> {
        (**self).open(url, max_bytes)
    }

    fn retries(&self) -> u32 {
        (**self).retries()
    }
}

/// Content type by extension, for objects read from disk.
pub fn content_type_for(path: &str) -> &'static str {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mpd") => "application/dash+xml",
        Some("ts") => "video/mp2t",
        Some("m4s") | Some("mp4") | Some("m4v") | Some("cmfv") => "video/mp4",
        Some("m4a") | Some("cmfa") => "audio/mp4",
        Some("aac") => "audio/aac",
        Some("vtt") | Some("webvtt") => "text/vtt",
        Some("key") => "application/octet-stream",
        _ => "application/octet-stream",
    }
}

/// Reads `file:` URLs below one root directory. Paths are canonicalised before reading, so
/// neither `..` nor a symlink can reach outside the root.
#[derive(Debug, Clone)]
pub struct FileFetcher {
    root: PathBuf,
}

impl FileFetcher {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(FileFetcher {
            root: std::fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn read(&self, url: &Url, max_bytes: usize) -> Result<Fetched, FetchError> {
        self.open_file(url, max_bytes).await?.collect().await
    }

    /// Checks `url` (inside the root, a regular file, not too large) and opens it.
    async fn open_file(&self, url: &Url, max_bytes: usize) -> Result<Opened, FetchError> {
        if url.scheme() != "file" {
            return Err(FetchError::Scheme(url.scheme().to_string()));
        }
        let path = url
            .to_file_path()
            .map_err(|()| FetchError::Io(format!("{url} is not a local path")))?;
        let canonical = match tokio::fs::canonicalize(&path).await {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FetchError::NotFound),
            Err(e) => return Err(FetchError::Io(e.to_string())),
        };
        if !canonical.starts_with(&self.root) {
            return Err(FetchError::OutsideRoot(path.display().to_string()));
        }
        let meta = tokio::fs::metadata(&canonical)
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        if !meta.is_file() {
            return Err(FetchError::NotFound);
        }
        if meta.len() > max_bytes as u64 {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let file = std::fs::File::open(&canonical).map_err(|e| FetchError::Io(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type_for(url.path())),
        );
        if let Ok(modified) = meta.modified() {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
                headers.insert(http::header::LAST_MODIFIED, v);
            }
        }
        Ok(Opened {
            headers,
            len: Some(meta.len()),
            body: OpenedBody::File(file),
            max_bytes,
        })
    }
}

impl Fetcher for FileFetcher {
    fn fetch<'a>(&'a self, url: &'a Url, max_bytes: usize) -> FetchFuture<'a> {
        Box::pin(self.read(url, max_bytes))
    }

    fn open<'a>(&'a self, url: &'a Url, max_bytes: usize) -> OpenFuture<'a> {
        Box::pin(self.open_file(url, max_bytes))
    }

    fn size<'a>(&'a self, url: &'a Url) -> SizeFuture<'a> {
        Box::pin(async move {
            let path = url.to_file_path().ok()?;
            let canonical = tokio::fs::canonicalize(&path).await.ok()?;
            if !canonical.starts_with(&self.root) {
                return None;
            }
            tokio::fs::metadata(&canonical).await.ok().map(|m| m.len())
        })
    }
}

/// An in-memory fetcher (tests, fuzzing): URL -> body.
#[derive(Debug, Clone, Default)]
pub struct MapFetcher {
    pub objects: std::collections::HashMap<String, Bytes>,
}

impl MapFetcher {
    pub fn insert(&mut self, url: &str, body: impl Into<Bytes>) {
        self.objects.insert(url.to_string(), body.into());
    }
}

impl Fetcher for MapFetcher {
    fn fetch<'a>(&'a self, url: &'a Url, max_bytes: usize) -> FetchFuture<'a> {
        let r = match self.objects.get(url.as_str()) {
            Some(b) if b.len() > max_bytes => Err(FetchError::TooLarge(max_bytes)),
            Some(b) => Ok(Fetched {
                body: b.clone(),
                headers: HeaderMap::new(),
            }),
            None => Err(FetchError::NotFound),
        };
        Box::pin(std::future::ready(r))
    }

    fn size<'a>(&'a self, url: &'a Url) -> SizeFuture<'a> {
        let r = self.objects.get(url.as_str()).map(|b| b.len() as u64);
        Box::pin(std::future::ready(r))
    }
}
