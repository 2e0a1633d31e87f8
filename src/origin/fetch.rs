//! `HttpFetcher`: the ingest walk's reader of `http:` and `https:` origins (the manifest crate's
//! `Fetcher` over pooled hyper-util clients; https through `origin::tls`'s connector). It lives here because only `origin/` opens outbound
//! connections; the walk itself stays network-free in `vedge-manifest`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::config::OriginTls;
use crate::origin::tls::{Connector, TlsSetup};
use vedge_manifest::fetch::{
    FetchError, FetchFuture, Fetched, Fetcher, OpenFuture, Opened, OpenedBody, Probe, ProbeFuture,
    SizeFuture,
};

/// Reads `http:` and `https:` URLs with pooled hyper-util clients: a per-attempt timeout and
/// bounded retries with exponential backoff on transient failures (transport errors, 5xx, 429).
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// One TLS client per https authority and TLS settings, built on first use: routes that
    /// share an origin may trust it differently (`ca_file`, `sni`, `insecure_skip_verify`), and
    /// each fetch must use its own route's. An ingest names a handful, so a list will do.
    tls_clients: Arc<Mutex<Vec<(String, OriginTls, TlsClient)>>>,
    /// The TLS settings for an https URL (an edge's push: the serving route's); default: the
    /// platform's roots, SNI from the URL.
    tls: Option<TlsFor>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    /// Sent on every request (the edge's `Via` and `CDN-Loop`, `OriginClient::identity_headers`).
    headers: http::HeaderMap,
    /// The `Host` for a URL (the serving route's, as a fill sends); `None`: the URL's.
    host: Option<HostFor>,
}

/// Maps a URL to the `Host` its request carries.
pub type HostFor = std::sync::Arc<dyn Fn(&Url) -> Option<String> + Send + Sync>;

/// Maps an https URL to the TLS settings its connection uses.
pub type TlsFor = std::sync::Arc<dyn Fn(&Url) -> OriginTls + Send + Sync>;

type TlsClient = Client<Connector, Empty<Bytes>>;

impl HttpFetcher {
    pub fn new(timeout: Duration, retries: u32) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        HttpFetcher {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            tls_clients: Arc::new(Mutex::new(Vec::new())),
            tls: None,
            timeout,
            retries,
            backoff: Duration::from_millis(100),
            headers: http::HeaderMap::new(),
            host: None,
        }
    }

    /// Chooses each https URL's TLS settings (an edge's push: the serving route's `ca_file`,
    /// `sni`).
    pub fn with_tls(mut self, tls: TlsFor) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `req` to `url`'s origin: plain, or over TLS for https.
    async fn send(
        &self,
        url: &Url,
        req: http::Request<Empty<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, FetchError> {
        if url.scheme() != "https" {
            return self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Io(format!("{e:?}")));
        }
        let client = self.tls_client(url)?;
        client
            .request(req)
            .await
            .map_err(|e| FetchError::Io(format!("{e:?}")))
    }

    /// The pooled TLS client for `url`'s authority with the TLS settings chosen for `url`.
    fn tls_client(&self, url: &Url) -> Result<TlsClient, FetchError> {
        let host = url
            .host_str()
            .ok_or_else(|| FetchError::Io(format!("{url}: no host")))?;
        let authority = format!("{host}:{}", url.port_or_known_default().unwrap_or(443));
        let settings = self.tls.as_ref().map(|f| f(url)).unwrap_or_default();
        let mut clients = self.tls_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = clients
            .iter()
            .find(|(a, s, _)| *a == authority && *s == settings)
        {
            return Ok(c.clone());
        }
        let setup = TlsSetup::new(host, &settings).map_err(|e| FetchError::Io(e.to_string()))?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.timeout));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Connector::new(http, Some(setup), self.timeout));
        clients.push((authority, settings, client.clone()));
        Ok(client)
    }

    /// Adds headers to every request (an edge's push: its `Via` and `CDN-Loop`).
    pub fn with_headers(mut self, headers: http::HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// Chooses each request's `Host` (an edge's push: the serving route's).
    pub fn with_host(mut self, host: HostFor) -> Self {
        self.host = Some(host);
        self
    }

    /// One attempt, up to the response headers.
    async fn open_once(&self, url: &Url, max_bytes: usize) -> Result<Opened, FetchError> {
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| FetchError::Io(e.to_string()))?;
        let mut req = http::Request::get(uri)
            .header(http::header::USER_AGENT, "vedge-ingest")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Io(e.to_string()))?;
        for (name, value) in &self.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(host) = self.host.as_ref().and_then(|f| f(url)) {
            if let Ok(v) = http::HeaderValue::from_str(&host) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let res = self.send(url, req).await?;
        let status = res.status();
        if status == StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound);
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let (parts, body) = res.into_parts();
        let len = crate::cache::policy::content_length(&parts.headers);
        if len.is_some_and(|l| l > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        Ok(Opened {
            headers: parts.headers,
            len,
            body: OpenedBody::Http {
                body,
                timeout: self.timeout,
            },
            max_bytes,
        })
    }

    /// One attempt, the whole body.
    async fn once(&self, url: &Url, max_bytes: usize) -> Result<Fetched, FetchError> {
        self.open_once(url, max_bytes).await?.collect().await
    }

    async fn with_retries(&self, url: &Url, max_bytes: usize) -> Result<Fetched, FetchError> {
        self.retrying(url, || self.once(url, max_bytes)).await
    }

    async fn open_with_retries(&self, url: &Url, max_bytes: usize) -> Result<Opened, FetchError> {
        self.retrying(url, || self.open_once(url, max_bytes)).await
    }

    /// Runs `attempt_once` under the per-attempt timeout, retrying transient failures with
    /// exponential backoff.
    async fn retrying<T, F, Fut>(&self, url: &Url, attempt_once: F) -> Result<T, FetchError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, FetchError>>,
    {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Scheme(url.scheme().to_string()));
        }
        let mut attempt = 0;
        loop {
            let result = match tokio::time::timeout(self.timeout, attempt_once()).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Timeout(self.timeout)),
            };
            match result {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    tracing::debug!(%url, attempt, error = %e, "retrying");
                    tokio::time::sleep(self.backoff * 2u32.saturating_pow(attempt - 1)).await;
                }
                other => return other,
            }
        }
    }
}

impl HttpFetcher {
    /// A HEAD of `url`: its announced length and ETag (nothing when it fails or is not 2xx).
    async fn head(&self, url: &Url) -> Probe {
        let Some(res) = self.send_head(url).await else {
            return Probe::default();
        };
        let field = |name| {
            res.headers()
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        Probe {
            len: field(http::header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            etag: field(http::header::ETAG).map(str::to_string),
        }
    }

    async fn send_head(&self, url: &Url) -> Option<http::Response<hyper::body::Incoming>> {
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        let uri: http::Uri = url.as_str().parse().ok()?;
        let req = http::Request::head(uri)
            .header(http::header::USER_AGENT, "vedge-ingest")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let res = tokio::time::timeout(self.timeout, self.send(url, req))
            .await
            .ok()?
            .ok()?;
        res.status().is_success().then_some(res)
    }
}

impl Fetcher for HttpFetcher {
    fn fetch<'a>(&'a self, url: &'a Url, max_bytes: usize) -> FetchFuture<'a> {
        Box::pin(self.with_retries(url, max_bytes))
    }

    fn open<'a>(&'a self, url: &'a Url, max_bytes: usize) -> OpenFuture<'a> {
        Box::pin(self.open_with_retries(url, max_bytes))
    }

    fn retries(&self) -> u32 {
        self.retries
    }

    fn size<'a>(&'a self, url: &'a Url) -> SizeFuture<'a> {
        Box::pin(async move { self.head(url).await.len })
    }

    fn probe<'a>(&'a self, url: &'a Url) -> ProbeFuture<'a> {
        Box::pin(self.head(url))
    }
}
