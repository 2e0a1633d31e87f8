//! `vedge demo` (and `cargo run --release` with no subcommand): a sample origin serving the
//! committed fixtures (VOD in HLS and DASH) and an edge in front of it, with URLs to paste into a
//! player or curl.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::cli::DemoArgs;
use crate::config::{Config, RawConfig};
use crate::http::body::Body;
use crate::http::fetch::content_type_for;

/// Runs the sample origin and the edge until `shutdown`.
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let root = args
        .fixtures
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"));
    anyhow::ensure!(
        root.is_dir(),
        "fixtures directory {} not found (pass --fixtures DIR)",
        root.display()
    );
    let origin = TcpListener::bind(&args.origin_listen)
        .await
        .with_context(|| format!("--origin-listen: cannot bind {}", args.origin_listen))?;
    let origin_addr = origin.local_addr()?;
    tokio::spawn(serve_dir(origin, root.clone()));

    let token = format!("demo-{:016x}", rand::random::<u64>());
    let raw = RawConfig {
        listen: Some(args.listen.clone()),
        origin: Some(format!("http://{origin_addr}")),
        admin_listen: Some(args.admin_listen.clone()),
        admin_token: Some(token.clone()),
        ..RawConfig::default()
    };
    let cfg = Config::try_from(raw)?;
    let viewer = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("--listen: cannot bind {}", cfg.listen))?;
    let admin = match cfg.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("--admin-listen: cannot bind {a}"))?,
        ),
        None => None,
    };
    let edge = viewer.local_addr()?;
    println!(
        "vedge demo: sample origin on http://{origin_addr} (serving {})",
        root.display()
    );
    println!("edge on http://{edge}; try:");
    for p in [
        "/vod/hls-fmp4/master.m3u8",
        "/vod/hls-ts/master.m3u8",
        "/vod/dash-timeline/manifest.mpd",
    ] {
        if root.join(p.trim_start_matches('/')).exists() {
            println!("  http://{edge}{p}");
        }
    }
    println!(
        "  curl -sI http://{edge}/vod/hls-fmp4/master.m3u8   (run twice: X-Cache MISS, then HIT)"
    );
    println!(
        "admin on http://{}: /metrics, /healthz; purge with -H 'Authorization: Bearer {token}'",
        args.admin_listen
    );
    crate::run(cfg, crate::Listeners { viewer, admin }, shutdown).await
}

/// A static file origin over `root`: the sample origin of the demo.
pub async fn serve_dir(listener: TcpListener, root: PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let root = root.clone();
                async move { Ok::<_, Infallible>(file_response(&root, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn file_response(root: &Path, req: Request<Incoming>) -> Response<Body> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = s;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let rel = Path::new(req.uri().path().trim_start_matches('/'));
    // Only plain names: no `..`, no absolute paths.
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return status(StatusCode::NOT_FOUND);
    }
    let path = root.join(rel);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut r = Response::new(Body::full(Bytes::from(bytes)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, content_type_for(req.uri().path()));
            r
        }
        Err(_) => status(StatusCode::NOT_FOUND),
    }
}
