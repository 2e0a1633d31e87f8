//! Push ingest: walking VOD assets (HLS or DASH, over HTTP or from a local directory) into the
//! edge's store so the first viewer never waits for the origin.
//!
//! - `engine`: one walked asset into a [`engine::Sink`]: room check, bounded fetches, skip of
//!   stored objects, atomic publish (manifests last) or release.
//! - `store`: the sink for `--store`: bodies of known length stream from the origin (HTTP frames
//!   or file reads) straight into the store's write buffer (`vedge_storage::ObjectBuf`).
//! - `holds`: which runs keep each pushed key pinned, so one run's release never unpins what
//!   another run, a `PUT` or an earlier process still keeps.
//! - `admin`: the admin API's ingest routes and its sink (the running edge; collects bodies,
//!   since the edge also keeps pushed objects in RAM). `client`: `--admin` mode.
//! - this file: the `vedge ingest` command: arguments, sources, progress bar, summary.

pub mod admin;
pub mod client;
pub mod engine;
pub mod holds;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use url::Url;

use crate::origin::fetch::HttpFetcher;
use engine::{AssetReport, IngestOptions, KeyMapper, Outcome, Progress, Sink};
use vedge_manifest::fetch::FileFetcher;
use vedge_manifest::{self as manifest, Asset, Limits, Scope, WalkOptions};

/// Flags of `vedge ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Master playlists, MPDs (http:// or https:// URLs, or local files) or local directories of packaged
    /// assets.
    #[arg(required = true)]
    pub assets: Vec<String>,

    /// Admin listener of a running edge (http://HOST:PORT).
    #[arg(long, conflicts_with = "store")]
    pub admin: Option<String>,

    /// Bearer token for the admin API.
    #[arg(long, env = "VEDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Store file of an edge that is not running.
    #[arg(long)]
    pub store: Option<PathBuf>,

    /// Size of the store (e.g. 4GiB) when --store creates it. [default: store.size from --config]
    #[arg(long)]
    pub store_size: Option<String>,

    /// Region size of that store (must match the edge's `store.region_size`).
    /// [default: store.region_size from --config, else the store's own (a new store: a power
    /// of two near its size / 128, 64MiB to 256MiB)]
    #[arg(long)]
    pub store_region_size: Option<String>,

    /// vedge config file (for drop_query_params, listen, the store's path and size).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,

    /// Viewer-facing host, for objects served by `pass_host` routes only: every other route keys
    /// on its own origin host, so pushes need no host. [default: none]
    #[arg(long)]
    pub host: Option<String>,

    /// Viewer path prefix that a local directory is served under.
    #[arg(long, default_value = "/")]
    pub path_prefix: String,

    /// Walk and print every object (key, kind, source) without fetching media or writing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the summary (or the dry-run list) as JSON.
    #[arg(long)]
    pub json: bool,

    /// Concurrent origin fetches.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Retries per object on transient origin errors (5xx, 429, timeouts, resets).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,

    /// Timeout per origin request, in seconds: for the response head, then for each read of
    /// the body (which streams into the store, so a large object may take longer in all).
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,

    /// Also ingest EXT-X-KEY / EXT-X-SESSION-KEY key files (default: skipped).
    #[arg(long)]
    pub include_keys: bool,

    /// Allow references to other hosts than the asset's.
    #[arg(long)]
    pub allow_other_hosts: bool,

    /// Allow references outside the asset's directory.
    #[arg(long)]
    pub allow_outside_dir: bool,

    /// Publish an asset even if some of its objects failed.
    #[arg(long)]
    pub allow_partial: bool,

    /// Most objects one asset may expand to (guards against runaway timelines).
    #[arg(long, default_value_t = Limits::default().max_objects)]
    pub max_objects: usize,

    /// Most manifests (playlists, MPDs) one asset may hold.
    #[arg(long, default_value_t = Limits::default().max_manifests)]
    pub max_manifests: usize,

    /// Most bytes all the manifests of one asset may hold together (each one is kept in memory
    /// until the asset is published), e.g. 64MiB.
    #[arg(long, value_parser = size_arg, default_value = "64MiB")]
    pub max_manifest_total_bytes: usize,
}

/// A size flag (`64MiB`, `1048576`) in bytes.
fn size_arg(s: &str) -> Result<usize, String> {
    let n = crate::config::parse_size(s)?;
    usize::try_from(n).map_err(|_| format!("{s}: too large"))
}

/// One asset to ingest: where it starts and how its objects are read.
pub enum Source {
    Http {
        url: Url,
        fetcher: Arc<HttpFetcher>,
    },
    Local {
        url: Url,
        dir: PathBuf,
        fetcher: Arc<FileFetcher>,
    },
}

impl Source {
    pub fn url(&self) -> &Url {
        match self {
            Source::Http { url, .. } | Source::Local { url, .. } => url,
        }
    }
}

/// Expands the command-line assets: URLs as they are, local files and directories to `file:`
/// URLs (a directory to every root manifest in it).
pub async fn sources(args: &IngestArgs) -> anyhow::Result<Vec<Source>> {
    let http = Arc::new(HttpFetcher::new(
        Duration::from_secs(args.timeout_secs.max(1)),
        args.retries,
    ));
    let mut out = Vec::new();
    for a in &args.assets {
        if a.starts_with("http://") || a.starts_with("https://") {
            let url = Url::parse(a).with_context(|| format!("{a}: not a URL"))?;
            out.push(Source::Http {
                url,
                fetcher: http.clone(),
            });
            continue;
        }
        let path = Path::new(a);
        let meta = tokio::fs::metadata(path)
            .await
            .with_context(|| format!("{a}: neither an http(s):// URL nor a readable path"))?;
        let dir = if meta.is_dir() {
            tokio::fs::canonicalize(path).await?
        } else {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            tokio::fs::canonicalize(parent.unwrap_or(Path::new("."))).await?
        };
        let fetcher = Arc::new(FileFetcher::new(&dir)?);
        let urls = if meta.is_dir() {
            let roots = manifest::local_roots(&dir).await?;
            if roots.is_empty() {
                anyhow::bail!("{a}: no .m3u8 or .mpd manifests found");
            }
            roots
        } else {
            let file = tokio::fs::canonicalize(path).await?;
            vec![Url::from_file_path(&file)
                .map_err(|()| anyhow::anyhow!("{a}: not an absolute path"))?]
        };
        for url in urls {
            out.push(Source::Local {
                url,
                dir: dir.clone(),
                fetcher: fetcher.clone(),
            });
        }
    }
    Ok(out)
}

impl IngestArgs {
    pub fn walk_options(&self, source: &Source) -> WalkOptions {
        WalkOptions {
            scope: Scope {
                allow_other_hosts: self.allow_other_hosts,
                allow_outside_dir: self.allow_outside_dir,
                root_dir: match source {
                    Source::Local { dir, .. } => dir_url(dir),
                    Source::Http { .. } => None,
                },
            },
            limits: Limits {
                max_objects: self.max_objects,
                max_manifests: self.max_manifests,
                max_manifest_total_bytes: self.max_manifest_total_bytes,
                ..Limits::default()
            },
            include_keys: self.include_keys,
            exclude: None,
        }
    }

    pub fn ingest_options(&self) -> IngestOptions {
        IngestOptions {
            concurrency: self.concurrency.max(1),
            allow_partial: self.allow_partial,
            ..IngestOptions::default()
        }
    }
}

fn dir_url(dir: &Path) -> Option<Url> {
    Url::from_directory_path(dir).ok()
}

/// The key mapper for one source.
pub fn key_mapper(source: &Source, keys: &KeySettings, drop: &[String], prefix: &str) -> KeyMapper {
    KeyMapper {
        host: keys.host.clone(),
        config: keys.config.clone(),
        drop_query_params: drop.to_vec(),
        local_root: match source {
            Source::Local { dir, .. } => dir_url(dir).map(|u| (u, prefix.to_string())),
            Source::Http { .. } => None,
        },
    }
}

async fn walk(args: &IngestArgs, source: &Source) -> Result<Asset, manifest::WalkError> {
    let opts = args.walk_options(source);
    match source {
        Source::Http { url, fetcher } => manifest::discover(url, fetcher.as_ref(), &opts).await,
        Source::Local { url, fetcher, .. } => {
            manifest::discover(url, fetcher.as_ref(), &opts).await
        }
    }
}

#[derive(Debug, Serialize)]
struct DryRunObject {
    key: String,
    kind: &'static str,
    source: String,
}

#[derive(Debug, Serialize)]
struct DryRunAsset {
    asset: String,
    objects: Vec<DryRunObject>,
    skipped: Vec<(String, &'static str)>,
    error: Option<String>,
}

/// The summary of a whole run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub assets: Vec<AssetReport>,
    pub objects: u64,
    pub bytes: u64,
    pub stored: u64,
    pub skipped: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// Entry point of `vedge ingest`.
pub async fn run_cli(args: IngestArgs) -> anyhow::Result<()> {
    let (host, drop) = key_settings(&args)?;
    let sources = sources(&args).await?;
    if args.dry_run {
        return dry_run(&args, &sources, &host, &drop).await;
    }
    if let Some(path) = &args.store {
        let from_config = store_size_from_config(&args)?;
        let size = match (&args.store_size, from_config) {
            (Some(s), _) => crate::config::parse_size(s)
                .map_err(|e| anyhow::anyhow!("--store-size {s}: {e}"))?,
            (None, Some((s, _, _))) => s,
            (None, None) => {
                anyhow::bail!("--store needs --store-size (or a --config with store.size)")
            }
        };
        let mut store_cfg = vedge_storage::StoreConfig::new(path, size);
        store_cfg.adopt_region_size = true;
        match (&args.store_region_size, from_config) {
            (Some(r), _) => {
                store_cfg.region_size = crate::config::parse_size(r)
                    .map_err(|e| anyhow::anyhow!("--store-region-size {r}: {e}"))?;
                store_cfg.adopt_region_size = false;
            }
            (None, Some((_, r, chosen))) => {
                store_cfg.region_size = r;
                store_cfg.adopt_region_size = !chosen;
            }
            (None, None) => {}
        }
        let store = vedge_storage::Store::open(store_cfg)
            .await
            .with_context(|| format!("opening store {}", path.display()))?;
        let sink = store::StoreSink::new(store);
        let summary = run_into(&args, &sources, &sink, &host, &drop).await;
        sink.store
            .close()
            .await
            .with_context(|| format!("closing store {}", path.display()))?;
        let summary = summary?;
        if !succeeded(&summary) {
            anyhow::bail!(
                "{} of {} assets were not published",
                summary
                    .assets
                    .iter()
                    .filter(|r| !matches!(
                        r.outcome,
                        Outcome::Published | Outcome::PublishedPartial
                    ))
                    .count(),
                summary.assets.len()
            );
        }
        return Ok(());
    }
    if let Some(admin) = &args.admin {
        let token = args
            .admin_token
            .as_deref()
            .context("--admin needs --admin-token (or VEDGE_ADMIN_TOKEN)")?;
        let client = client::AdminClient::new(admin, token, &host.host);
        client.check_token().await?;
        let http: Vec<String> = sources
            .iter()
            .filter(|s| matches!(s, Source::Http { .. }))
            .map(|s| s.url().to_string())
            .collect();
        let local: Vec<Source> = sources
            .into_iter()
            .filter(|s| matches!(s, Source::Local { .. }))
            .collect();
        let mut ok = true;
        if !http.is_empty() {
            let status = client.run_job(&http, args.allow_partial).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                for a in status["assets"].as_array().into_iter().flatten() {
                    println!(
                        "{}: {} ({} objects, {} bytes; stored {}, skipped {}, {} failed){}",
                        a["asset"].as_str().unwrap_or(""),
                        a["outcome"].as_str().unwrap_or(""),
                        a["objects"],
                        a["bytes"],
                        a["stored"],
                        a["skipped"],
                        a["failures"].as_array().map_or(0, |f| f.len()),
                        a["error"]
                            .as_str()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default(),
                    );
                }
            }
            ok &= status["assets"].as_array().into_iter().flatten().all(|a| {
                matches!(
                    a["outcome"].as_str(),
                    Some("published" | "published_partial")
                )
            });
        }
        if !local.is_empty() {
            let sink = client::AdminSink { client };
            let summary = run_into(&args, &local, &sink, &host, &drop).await?;
            ok &= succeeded(&summary);
        }
        if !ok {
            anyhow::bail!("some assets were not published");
        }
        return Ok(());
    }
    anyhow::bail!("give --store PATH or --admin URL (or --dry-run)")
}

/// Runs every source into `sink`, with a progress bar on a terminal, and prints the summary.
pub async fn run_into<S: Sink>(
    args: &IngestArgs,
    sources: &[Source],
    sink: &S,
    host: &KeySettings,
    drop: &[String],
) -> anyhow::Result<Summary> {
    let started = std::time::Instant::now();
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(&progress, args.json);
    let mut reports = Vec::new();
    for source in sources {
        let keys = key_mapper(source, host, drop, &args.path_prefix);
        let report = match walk(args, source).await {
            Err(e) => AssetReport::refused(source.url().as_str(), e.to_string()),
            Ok(asset) => {
                let opts = args.ingest_options();
                match source {
                    Source::Http { fetcher, .. } => {
                        engine::ingest_asset(&asset, fetcher, sink, &keys, &opts, &progress).await
                    }
                    Source::Local { fetcher, .. } => {
                        engine::ingest_asset(&asset, fetcher, sink, &keys, &opts, &progress).await
                    }
                }
            }
        };
        reports.push(report);
    }
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    let summary = Summary {
        objects: reports.iter().map(|r| r.objects).sum(),
        bytes: reports.iter().map(|r| r.bytes).sum(),
        stored: reports.iter().map(|r| r.stored).sum(),
        skipped: reports.iter().map(|r| r.skipped).sum(),
        failed: reports.iter().map(|r| r.failures.len() as u64).sum(),
        seconds: started.elapsed().as_secs_f64(),
        assets: reports,
    };
    print_summary(&summary, args.json)?;
    Ok(summary)
}

fn progress_bar(
    progress: &Arc<Progress>,
    json: bool,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    let (b, p) = (bar.clone(), progress.clone());
    let ticker = tokio::spawn(async move {
        loop {
            let s = p.snapshot();
            b.set_length(s.bytes_total);
            b.set_position(s.bytes_done);
            b.set_message(format!(
                "objects {}/{} (skipped {}, failed {})",
                s.objects_done, s.objects_total, s.skipped, s.failed
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some((bar, ticker))
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    for r in &summary.assets {
        println!(
            "{}: {} ({} objects, {} bytes; stored {}, skipped {} already stored (pinned in place), {} failed)",
            r.asset,
            r.outcome.as_str(),
            r.objects,
            r.bytes,
            r.stored,
            r.skipped,
            r.failures.len()
        );
        if let Some(e) = &r.error {
            println!("  refused: {e}");
        }
        for f in &r.failures {
            println!("  failed: {} ({})", f.url, f.reason);
        }
    }
    println!(
        "total: {} objects, {} bytes, stored {}, skipped {}, failed {} in {:.1} s",
        summary.objects,
        summary.bytes,
        summary.stored,
        summary.skipped,
        summary.failed,
        summary.seconds
    );
    Ok(())
}

/// The store's size and region size from `--config`, if it names a store.
fn store_size_from_config(args: &IngestArgs) -> anyhow::Result<Option<(u64, u64, bool)>> {
    let Some(path) = &args.config else {
        return Ok(None);
    };
    let raw = crate::config::RawConfig::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let config = crate::config::Config::try_from(raw)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(config
        .store
        .map(|s| (s.size, s.region_size, s.region_size_chosen)))
}

/// How the CLI builds keys: the edge's config (its routes decide the key's host, as for viewer
/// requests) and `--host` (for `pass_host` routes; empty when not given).
pub struct KeySettings {
    pub host: String,
    pub config: Option<Arc<crate::config::Config>>,
}

/// The key settings and the dropped query parameters, from the flags and the config file.
/// With `--admin` the edge builds the keys itself (from its own routes), so neither is needed;
/// writing a store directly needs the edge's `--config` (or `--host` for a `pass_host` edge).
fn key_settings(args: &IngestArgs) -> anyhow::Result<(KeySettings, Vec<String>)> {
    let config = match &args.config {
        Some(path) => {
            let raw = crate::config::RawConfig::from_file(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(Arc::new(
                crate::config::Config::try_from(raw)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            ))
        }
        None => None,
    };
    if config.is_none() && args.host.is_none() && args.admin.is_none() {
        anyhow::bail!(
            "give --config (the edge's config file: keys follow its routes, as viewer requests do) \
             or --host (an edge whose routes pass the viewer's Host)"
        );
    }
    let drop = match &config {
        Some(c) => c.cache.drop_query_params.clone(),
        None => crate::config::DEFAULT_DROP_QUERY_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let keys = KeySettings {
        host: args.host.clone().unwrap_or_default(),
        config,
    };
    Ok((keys, drop))
}

async fn dry_run(
    args: &IngestArgs,
    sources: &[Source],
    host: &KeySettings,
    drop: &[String],
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut failed = false;
    for source in sources {
        let keys = key_mapper(source, host, drop, &args.path_prefix);
        let entry = match walk(args, source).await {
            Ok(asset) => DryRunAsset {
                asset: source.url().to_string(),
                objects: asset
                    .publish_order()
                    .map(|o| DryRunObject {
                        key: keys.key(&o.url),
                        kind: o.kind.as_str(),
                        source: o.url.to_string(),
                    })
                    .collect(),
                skipped: asset.skipped.clone(),
                error: None,
            },
            Err(e) => {
                failed = true;
                DryRunAsset {
                    asset: source.url().to_string(),
                    objects: Vec::new(),
                    skipped: Vec::new(),
                    error: Some(e.to_string()),
                }
            }
        };
        all.push(entry);
    }
    // A closed stdout (`| head`) ends the listing quietly instead of panicking in println!.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written: std::io::Result<()> = (|| {
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            return Ok(());
        }
        for a in &all {
            writeln!(out, "# {} ({} objects)", a.asset, a.objects.len())?;
            if let Some(e) = &a.error {
                writeln!(out, "# error: {e}")?;
            }
            for o in &a.objects {
                writeln!(out, "{}\t{}\t{}", o.kind, o.key, o.source)?;
            }
            for (u, why) in &a.skipped {
                writeln!(out, "# skipped {u}: {why}")?;
            }
        }
        Ok(())
    })();
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    if failed {
        anyhow::bail!("some assets could not be walked");
    }
    Ok(())
}

/// Whether an outcome counts as success for the exit status.
pub fn succeeded(summary: &Summary) -> bool {
    summary
        .assets
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Published | Outcome::PublishedPartial))
}

#[cfg(test)]
mod tests;
