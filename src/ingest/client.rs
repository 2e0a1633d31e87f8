//! `vedge ingest --admin URL`: drives a running edge's admin API. HTTP assets become a
//! `POST /admin/ingest` job polled until done (the edge fetches from its origin itself); local
//! files are pushed object by object with `PUT /admin/objects/{path}` (manifests last).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::engine::{Existing, PushObject, Sink, SinkError, SinkFuture};

/// A client of one edge's admin listener.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    /// Viewer host the edge builds keys for (`X-Vedge-Host`).
    host: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub fn new(base: &str, token: &str, host: &str) -> Self {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            host: host.to_string(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&HeaderValue>,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        // Only for `pass_host` routes; the edge keys every other route on its own host.
        if !self.host.is_empty() {
            req = req.header("x-vedge-host", &self.host);
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Full::new(body))?;
        let res = self
            .client
            .request(req)
            .await
            .with_context(|| format!("{}{path}", self.base))?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if status == StatusCode::UNAUTHORIZED {
            anyhow::bail!("{}: 401: wrong or missing --admin-token", self.base);
        }
        Ok((status, body))
    }

    /// Fails fast on a wrong token (401) before anything is fetched or pushed.
    pub async fn check_token(&self) -> anyhow::Result<()> {
        // Job 0 never exists: an authorised caller gets 404, a wrong token 401 (see `call`).
        self.call(Method::GET, "/admin/ingest/0", None, Bytes::new())
            .await
            .map(|_| ())
    }

    /// Starts a job for `assets` (http or https URLs) and polls it to the end; returns its final status.
    pub async fn run_job(
        &self,
        assets: &[String],
        allow_partial: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let req = serde_json::json!({
            "assets": assets,
            "host": (!self.host.is_empty()).then_some(&self.host),
            "allow_partial": allow_partial,
        });
        let (status, body) = self
            .call(
                Method::POST,
                "/admin/ingest",
                None,
                Bytes::from(req.to_string()),
            )
            .await?;
        if status != StatusCode::ACCEPTED {
            anyhow::bail!(
                "POST /admin/ingest: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let id = v["id"]
            .as_u64()
            .context("POST /admin/ingest returned no id")?;
        loop {
            let (status, body) = self
                .call(
                    Method::GET,
                    &format!("/admin/ingest/{id}"),
                    None,
                    Bytes::new(),
                )
                .await?;
            if status != StatusCode::OK {
                anyhow::bail!("GET /admin/ingest/{id}: {status}");
            }
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            if v["done"] == serde_json::Value::Bool(true) {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Pushes local objects to a running edge. The edge's pinned-space and presence checks are not
/// exposed over the API yet, so every object is sent.
pub struct AdminSink {
    pub client: AdminClient,
}

impl Sink for AdminSink {
    fn existing<'a>(&'a self, _key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn free_for_pinned(&self) -> SinkFuture<'_, Option<u64>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn put(&self, object: PushObject) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            // The key is scheme|host|viewer path (+ sorted query); the path part is what we PUT
            // and the edge keys it by its own routes.
            let target = match crate::cache::key::key_path(&object.key) {
                "" => "/".to_string(),
                p => p.to_string(),
            };
            let (status, body) = self
                .client
                .call(
                    Method::PUT,
                    &format!("/admin/objects{target}"),
                    object.headers.get(header::CONTENT_TYPE),
                    object.body,
                )
                .await
                .map_err(|e| SinkError::Other(e.to_string()))?;
            if status.is_success() {
                Ok(())
            } else if status == StatusCode::INSUFFICIENT_STORAGE {
                Err(SinkError::Full(String::from_utf8_lossy(&body).into_owned()))
            } else {
                Err(SinkError::Other(format!("PUT {target}: {status}")))
            }
        })
    }

    fn release<'a>(&'a self, _keys: &'a [String]) -> SinkFuture<'a, ()> {
        // Nothing to unpin per key over the API; an unpublished asset has no manifest anyway.
        Box::pin(std::future::ready(Ok(())))
    }
}
