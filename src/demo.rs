//! `vedge demo` (and `cargo run --release` with no subcommand): a sample origin (the live
//! simulator of `vedge origin`, plus the committed VOD fixtures in HLS and DASH) and an edge in front of it, with URLs to paste into a
//! player or curl.

use std::future::Future;
use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cli::DemoArgs;
use crate::config::{Config, RawConfig};
use vedge_bench::origin::OriginOptions;

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
    // The live packager simulator, also serving the committed VOD assets under /vod/.
    let opts = OriginOptions {
        statics: vec![("/vod/".to_string(), root.join("vod"))],
        ..OriginOptions::default()
    };
    tokio::spawn(async move {
        if let Err(e) = vedge_bench::origin::serve(opts, origin, std::future::pending()).await {
            tracing::error!(error = %e, "sample origin stopped");
        }
    });

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
    let admin = match cfg.admin.listen {
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
    println!("  http://{edge}/live/demo/master.m3u8     (live HLS, 2 s segments)");
    println!("  http://{edge}/live/demo/manifest.mpd    (live DASH)");
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
