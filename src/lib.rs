//! vedge: a CDN edge server for HLS and DASH video.
//!
//! Module map:
//! - `config`: raw TOML + CLI -> validated `Config`.
//! - `auth`: signed URLs (Akamai EdgeAuth 2.0 tokens): validation, token sources, propagation
//!   into manifests; pure, wired into the request path by `proxy::signed`.
//! - `cli`: the command-line definitions (parsed only in main.rs).
//! - `http`: the viewer side: hyper server (serving any `Handler`), responses, ranges, bodies.
//! - `cache`: keys, policy, collapsing (`lock`), the RAM tier, cached objects.
//! - `origin`: pooled origin client with timeouts, retries, Via and CDN-Loop.
//! - `admin`: admin listener: health, purge, ingest, and the rendering of `metrics`.
//! - `proxy`: the miss path: the edge's state, the tiers, the request state machine, the fill driver.
//! - `zerocopy`: anonymous-page bodies and the viewer socket that splices them.
//! - `cmcd`: CTA-5004 client data (query parameter and headers) for logs, metrics, admission.
//! - `metrics`, `clock`: counters everyone reports into; the injectable wall clock.
//! - `fuzzing`: properties shared by the fuzz targets and their corpus replay test.
//! - `demo`: the built-in sample origin behind `vedge demo`.
//! - `ingest`: push pre-warming (HLS/DASH walking is the `vedge-manifest` crate).
//!
//! `vedge origin` and `vedge bench` are the `vedge-bench` crate (benches/harness), which measures
//! any edge and depends on none of this one.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cmcd;
pub mod config;
pub mod demo;
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod zerocopy;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use proxy::Edge;

/// The bound listeners `run` serves. Bound by the caller (main.rs or a test on 127.0.0.1:0) after
/// the config validated, so a bad config never holds a port.
pub struct Listeners {
    pub viewer: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Runs the edge until `shutdown` resolves, then stops accepting, drains in-flight responses
/// within the grace period, and closes the store.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let edge = Edge::new(config).await?;
    serve(edge, listeners, shutdown).await
}

/// Like `run`, for an `Edge` the caller already built (and may inspect).
pub async fn serve(
    edge: Arc<Edge>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(edge, listeners, shutdown, Arc::new(Notify::new())).await
}

/// Like `run`, reloading the viewer TLS certificates and keys from their files each time
/// `reload` is notified (main.rs does it on SIGHUP): new handshakes use the new certificates,
/// open connections keep theirs, and a reload that fails keeps the old ones.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Arc<Notify>,
) -> anyhow::Result<()> {
    let edge = Edge::new(config).await?;
    serve_with(edge, listeners, shutdown, reload).await
}

/// `serve` with a reload trigger (see `run_with`).
pub async fn serve_with(
    edge: Arc<Edge>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Arc<Notify>,
) -> anyhow::Result<()> {
    let tls = match &edge.config.tls {
        Some(t) => Some(http::tls::Tls::new(t)?),
        None => None,
    };
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    if let Some(tls) = tls.clone() {
        let token = token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = reload.notified() => match tls.reload() {
                        Ok(()) => tracing::info!("TLS certificates reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the old certificates"),
                    },
                }
            }
        });
    }
    let admin = listeners
        .admin
        .map(|l| tokio::spawn(admin::serve(edge.clone(), l, token.clone())));
    tracing::info!(
        listen = %listeners.viewer.local_addr()?,
        routes = edge.config.routes.len(),
        ram = edge.config.ram_size,
        tls = tls.is_some(),
        "vedge serving"
    );
    http::server::serve(edge.clone(), listeners.viewer, tls, token.clone()).await;
    token.cancel();
    if let Some(a) = admin {
        let _ = a.await;
    }
    edge.close().await;
    Ok(())
}
