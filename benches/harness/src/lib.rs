//! vedge-bench: the live-burst load harness (`vedge bench live-burst`, `vedge bench collapse`)
//! and the live packager simulator (`vedge origin`).
//!
//! Its own crate because it measures any edge (vedge, nginx, Varnish) from the client side: it
//! depends on neither the `vedge` crate nor its cache, keeps its own HTTP client, and reads
//! manifests, DASH templates and durations through `vedge-manifest`, as the edge does.
//!
//! Module map:
//! - `origin`: the simulator's HTTP server, options, faults and `/__stats`.
//! - `byterange`: `Range` answers for the simulator's static files.
//! - `playlist`: HLS and DASH manifest text from a stream clock (pure, tested under paused time).
//! - `media`: the looped fMP4 fixtures and the mfhd/tfdt rewrite per segment number.
//! - `cmaf`: fixture chunks cut into CMAF parts (moof + mdat each) for the low-latency modes.
//! - `ll`: LL-HLS playlists, blocking reloads, LL-DASH attributes, when each part exists.
//! - `viewer`: one simulated player (HLS/DASH, live/storm/VOD) over a `Net` trait.
//! - `llviewer`: the Low-Latency HLS player of `--ll` (blocking reloads, preload-hint parts).
//! - `client`: the bounded keep-alive connection pool all viewers share, the timer-lag probe.
//! - `load`: the recorder, scenario schedules, the run loop.
//! - `workers`: `--processes N`, one run spread over N worker processes of this executable.
//! - `merge`: a worker's measurements as data, and their merge into one recorder.
//! - `report`: JSON, summary text and the HTML page.
//! - `collapse`: `vedge bench collapse`, N viewers asking for one cold object at once.
//! - `catalogue`: the synthetic `/cat/<id>.ts` objects (sizes, bytes, the Zipf sampler).
//! - `zipf`: `vedge bench zipf`, Zipf-popular catalogue objects over keep-alive connections.

pub mod byterange;
pub mod catalogue;
pub mod client;
pub mod cmaf;
pub mod collapse;
pub mod cost;
pub mod ll;
pub mod llviewer;
pub mod load;
pub mod media;
pub mod merge;
pub mod origin;
pub mod playlist;
pub mod report;
pub mod stamp;
pub mod viewer;
pub mod workers;
pub mod zipf;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use parking_lot::Mutex;
use tokio::time::Instant;
use url::Url;

use load::{ConnMode, HttpNet, Recorder, RunConfig, Scenario};
use vedge_manifest::duration::parse as parse_duration;

/// `vedge bench ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Simulate N live viewers against an edge and report latency, stalls and origin amplification.
    LiveBurst(LiveBurstArgs),
    /// N viewers ask for one cold object at the same instant, then for S more at a cadence:
    /// time to first byte, time to last byte, and origin requests per object.
    Collapse(collapse::CollapseArgs),
    /// Keep-alive connections ask for `/cat/<id>.ts` objects of `vedge origin`'s synthetic
    /// catalogue with Zipf popularity: throughput, latency, errors and the byte hit ratio.
    Zipf(zipf::ZipfArgs),
}

/// Flags of `vedge bench live-burst`.
#[derive(Debug, clap::Args)]
pub struct LiveBurstArgs {
    /// Edge URL of the stream's master playlist or MPD. `{run}` is replaced by a fresh id, so
    /// that each run starts a new (cold) stream on `vedge origin`. Several edges of one tier
    /// (comma-separated or the flag repeated): viewers are spread over them in turn, and the
    /// origin amplification is the whole tier's.
    #[arg(long, required = true, value_delimiter = ',')]
    pub target: Vec<String>,
    /// The origin simulator's `/__stats` URL (for origin amplification). [default: none]
    #[arg(long)]
    pub origin_stats: Option<String>,
    /// Number of simulated viewers.
    #[arg(long, default_value_t = 100)]
    pub viewers: u64,
    /// How long viewers watch (from the start of the run).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// steady | burst | segment-storm | vod.
    #[arg(long, value_enum, default_value = "steady")]
    pub scenario: Scenario,
    /// Joins are spread over this long in `steady` and `vod`. [default: half the duration, at most 30s]
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// Every viewer joins within this window in `burst` and `segment-storm`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub burst_window: Duration,
    /// Rendition mix as weights per variant in playlist order, e.g. `3,1`.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub mix: Vec<u32>,
    /// Pick renditions by measured throughput instead of the mix.
    #[arg(long)]
    pub abr: bool,
    /// Per-request timeout (head and body), counted from when a pooled connection is granted; a
    /// request also gives up after waiting this long for one (error `pool_timeout`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Share one keep-alive pool of N connections among all viewers instead of giving each
    /// viewer its own connection (the default, as players do). Viewers spend most of their time
    /// waiting for the next segment, so a few thousand shared connections serve 20,000 viewers;
    /// the time a request waits for one is reported apart from TTFB. `--connections` is the
    /// old name.
    #[arg(long = "shared-pool", visible_alias = "connections", value_name = "N")]
    pub shared_pool: Option<usize>,
    /// Spread connections to a loopback target over source addresses 127.0.0.1..=N (each has
    /// its own ephemeral ports: per-viewer runs beyond ~28,000 connections need N >= 2).
    #[arg(long, default_value_t = 8)]
    pub sources: usize,
    /// Seed for join times and VOD seeks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the full report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// HLS viewers behave like Low-Latency HLS players: blocking playlist reloads
    /// (`_HLS_msn`/`_HLS_part`) and preload-hinted parts; the report adds the latency to the live
    /// edge and the origin's requests per (playlist, msn, part).
    #[arg(long)]
    pub ll: bool,
    /// Spread the viewers over N harness processes (this executable started again), each with
    /// its own open-file limit and runtime, merged into one report. `auto`: as many as keep
    /// each process's connections within its open-file limit, with headroom (1 for most runs).
    #[arg(long, default_value = "auto", value_name = "N|auto")]
    pub processes: workers::Processes,
    /// Internal: run as worker K of N of a spread run (set by the parent process).
    #[arg(long, hide = true, value_name = "K/N", value_parser = workers::parse_share,
          requires_all = ["worker_start_unix_us", "worker_run"])]
    pub worker: Option<load::Share>,
    /// Internal: a worker's shared start instant (microseconds since the Unix epoch).
    #[arg(long, hide = true)]
    pub worker_start_unix_us: Option<u64>,
    /// Internal: the run id a worker's `{run}` stands for.
    #[arg(long, hide = true)]
    pub worker_run: Option<String>,
}

/// Entry point of `vedge bench`.
pub async fn run_cli(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::LiveBurst(args) => live_burst(args).await,
        BenchCommand::Collapse(args) => collapse::cli(args).await,
        BenchCommand::Zipf(args) => zipf::cli(args).await,
    }
}

/// A fresh run id: what `{run}` in a target stands for.
pub fn run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("run{ms}")
}

impl LiveBurstArgs {
    /// Validates the flags into a run configuration.
    pub fn config(&self) -> anyhow::Result<RunConfig> {
        self.config_for_run(&run_id())
    }

    /// As `config`, with `{run}` standing for `run` (a worker is given its parent's).
    pub fn config_for_run(&self, run: &str) -> anyhow::Result<RunConfig> {
        // One run id for every edge: they serve the same (cold) stream.
        let mut targets = Vec::new();
        for t in &self.target {
            let url = Url::parse(&t.replace("{run}", run))
                .with_context(|| format!("--target {t:?} is not a URL"))?;
            anyhow::ensure!(
                url.scheme() == "http",
                "--target must be an http:// URL (the harness speaks HTTP/1.1 without TLS)"
            );
            targets.push(url);
        }
        let target = targets
            .first()
            .cloned()
            .context("--target needs at least one URL")?;
        let origin_stats = self
            .origin_stats
            .as_deref()
            .map(Url::parse)
            .transpose()
            .context("--origin-stats is not a URL")?;
        anyhow::ensure!(self.viewers > 0, "--viewers must be at least 1");
        anyhow::ensure!(
            self.shared_pool != Some(0),
            "--shared-pool must be at least 1"
        );
        anyhow::ensure!(
            (1..=254).contains(&self.sources),
            "--sources must be 1..=254"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        anyhow::ensure!(
            self.mix.iter().any(|w| *w > 0),
            "--mix needs a positive weight"
        );
        Ok(RunConfig {
            target,
            targets,
            origin_stats,
            viewers: self.viewers,
            duration: self.duration,
            scenario: self.scenario,
            ramp: self
                .ramp
                .unwrap_or((self.duration / 2).min(Duration::from_secs(30))),
            burst_window: self.burst_window,
            mix: self.mix.clone(),
            abr: self.abr,
            timeout: self.timeout,
            mode: match self.shared_pool {
                Some(n) => ConnMode::Shared(n),
                None => ConnMode::PerViewer,
            },
            sources: self.sources,
            seed: self.seed,
            ll: self.ll,
            share: load::Share::ALL,
        })
    }

    /// The worker flags, when this process is a worker of a spread run.
    fn worker_spec(&self) -> Option<workers::WorkerSpec> {
        Some(workers::WorkerSpec {
            share: self.worker?,
            start_unix_us: self.worker_start_unix_us?,
            run: self.worker_run.clone()?,
        })
    }
}

/// The `/__stats` prefix for a target: its directory (`/live/abc/master.m3u8` -> `/live/abc/`).
pub fn stats_prefix(target: &Url) -> String {
    let p = target.path();
    match p.rfind('/') {
        Some(i) => p[..=i].to_string(),
        None => "/".into(),
    }
}

/// Runs a whole live-burst measurement in this process and returns the report (used by the
/// CLI and the tests).
pub async fn live_burst_report(
    cfg: &RunConfig,
    progress: impl FnMut(&Recorder),
) -> anyhow::Result<report::Report> {
    precheck(cfg).await?;
    let m = measure(cfg, Instant::now(), progress).await;
    Ok(finish(cfg, &m.rec, m.skipped, m.played, m.elapsed, m.cost).await)
}

/// Before anything is measured: every target accepts connections and the origin's counters
/// can be read.
pub(crate) async fn precheck(cfg: &RunConfig) -> anyhow::Result<()> {
    for t in &cfg.targets {
        load::reachable(t, Duration::from_secs(5))
            .await
            .with_context(|| format!("target {t} unreachable; nothing was measured"))?;
    }
    if let Some(stats) = &cfg.origin_stats {
        load::origin_counts(stats, "/", Duration::from_secs(5))
            .await
            .context("--origin-stats unreachable before the run")?;
    }
    Ok(())
}

/// What one process measured.
pub(crate) struct Measured {
    pub rec: Recorder,
    pub skipped: u64,
    pub played: u64,
    pub cost: cost::HarnessCost,
    pub elapsed: Duration,
    /// How late past `start` the viewers were ready to be started.
    pub start_late: Duration,
}

/// Runs this process's share of the viewers (`cfg.share`) from `start` (now, or a spread
/// run's shared instant) to the end, with the timer-lag probe beside them.
pub(crate) async fn measure(
    cfg: &RunConfig,
    start: Instant,
    mut progress: impl FnMut(&Recorder),
) -> Measured {
    let rec = Arc::new(Mutex::new(Recorder::new(start)));
    let shared = match cfg.mode {
        ConnMode::Shared(n) => n,
        // Unused by per-viewer runs except by requests made outside a viewer.
        ConnMode::PerViewer => 1,
    };
    let net = Arc::new(HttpNet::with_sources(
        cfg.timeout,
        shared,
        client::Sources::loopback(cfg.sources),
        rec.clone(),
    ));
    let cost0 = cost::Usage::now();
    // Runs beside the viewers on the same runtime from the start; ends on its own after the
    // hard stop.
    let probe_rec = rec.clone();
    let stop = start + cfg.duration + cfg.timeout * 2 + Duration::from_secs(2);
    let probe = tokio::spawn(async move {
        tokio::time::sleep_until(start).await;
        client::timer_lag_probe(Duration::from_millis(10), stop, move |lag| {
            probe_rec.lock().timer_lag(lag)
        })
        .await
    });
    let start_late = Instant::now().saturating_duration_since(start);
    let outs = load::run(cfg, net.clone(), &mut progress).await;
    probe.abort();
    rec.lock().connections_opened = net.connections_opened();
    let cost = cost::Usage::now().since(&cost0, cfg.share.of(cfg.viewers));
    let elapsed = start.elapsed();
    let skipped = outs.iter().map(|o| o.skipped).sum();
    let played = outs.iter().filter(|o| o.started).count() as u64;
    // Viewer tasks are done or aborted; take the recorder out whoever still holds the Arc.
    let rec = std::mem::replace(&mut *rec.lock(), Recorder::new(start));
    Measured {
        rec,
        skipped,
        played,
        cost,
        elapsed,
        start_late,
    }
}

/// The report of a run from its (merged) recorder: reads the origin's counters once, after
/// every viewer is done.
pub(crate) async fn finish(
    cfg: &RunConfig,
    rec: &Recorder,
    skipped: u64,
    played: u64,
    elapsed: Duration,
    harness_cost: cost::HarnessCost,
) -> report::Report {
    let prefix = stats_prefix(&cfg.target);
    let origin = match &cfg.origin_stats {
        None => Ok(None),
        Some(u) => load::origin_counts(u, &prefix, Duration::from_secs(5))
            .await
            .map(|c| Some(report::origin_report(&prefix, &c)))
            .map_err(|e| format!("{e:#}")),
    };
    let ll = match (&cfg.origin_stats, cfg.ll) {
        (Some(u), true) => load::origin_blocking(u, &prefix, Duration::from_secs(5))
            .await
            .ok(),
        _ => None,
    };
    let mut r = report::build(
        rec,
        cfg.scenario.as_str(),
        &cfg.targets_label(),
        cfg.viewers,
        cfg.duration,
        elapsed,
        skipped,
        played,
        connections(cfg),
        origin,
    );
    r.connection_mode = cfg.mode.as_str().to_string();
    r.harness_cost = Some(harness_cost);
    if cfg.ll {
        r.ll = Some(report::ll_report(rec, ll));
    }
    r
}

/// The connections the whole run may open: the shared pool, or each viewer's own (two for a
/// low-latency viewer).
fn connections(cfg: &RunConfig) -> u64 {
    match cfg.mode {
        ConnMode::Shared(n) => n as u64,
        ConnMode::PerViewer => cfg.viewers * if cfg.ll { 2 } else { 1 },
    }
}

/// The live progress line: a spinner on a terminal, else one line every 10 s.
struct ProgressLine {
    bar: indicatif::ProgressBar,
    tty: bool,
    prev: (u64, u64),
    ticks: u32,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        let tty = std::io::stderr().is_terminal();
        ProgressLine {
            bar: if tty {
                indicatif::ProgressBar::new_spinner()
            } else {
                indicatif::ProgressBar::hidden()
            },
            tty,
            prev: (0, 0),
            ticks: 0,
        }
    }

    fn show(&mut self, p: &report::Progress) {
        let line = p.line(&mut self.prev);
        if self.tty {
            self.bar.set_message(line);
            self.bar.tick();
        } else {
            // Without a terminal, one line every 10 s keeps CI logs readable.
            self.ticks += 1;
            if self.ticks % 10 == 0 {
                eprintln!("{line}");
            }
        }
    }
}

async fn live_burst(args: LiveBurstArgs) -> anyhow::Result<()> {
    if let Some(spec) = args.worker_spec() {
        return live_burst_worker(&args, &spec).await;
    }
    let run = run_id();
    let cfg = args.config_for_run(&run)?;
    // Sockets: the pool's connections (or each viewer's), the origin-stats client, slack.
    let conns = connections(&cfg);
    let nofile = load::raise_nofile(conns + 256);
    let (auto, processes) = match args.processes {
        workers::Processes::Auto => (true, workers::auto_processes(conns, nofile)),
        workers::Processes::Count(n) => (false, n),
    };
    // Every process runs at least one viewer (and holds at least one pooled connection).
    let cap = match cfg.mode {
        ConnMode::Shared(n) => cfg.viewers.min(n as u64),
        ConnMode::PerViewer => cfg.viewers,
    };
    let processes = processes.clamp(1, cap.max(1));
    let per_process = conns.div_ceil(processes);
    if nofile < per_process + 256 {
        eprintln!(
            "warning: open-file limit {nofile} is below {per_process} connections + 256 per process; expect connect errors (--processes)"
        );
    }
    eprintln!(
        "live-burst: {} viewers on {} connections ({}), {} for {:?} against {}; {}",
        cfg.viewers,
        conns,
        cfg.mode.as_str(),
        cfg.scenario.as_str(),
        cfg.duration,
        cfg.targets_label(),
        workers::describe(processes, auto, nofile)
    );
    let mut line = ProgressLine::new();
    let report = if processes == 1 {
        live_burst_report(&cfg, |rec| line.show(&report::Progress::of(rec))).await?
    } else {
        let spread = workers::Spread::new(processes, workers::Launcher::this_process()?, run);
        workers::run_spread(&cfg, &spread, |p| line.show(p)).await?
    };
    line.bar.finish_and_clear();
    print!("{}", report::summary(&report));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, report::html(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    anyhow::ensure!(
        report.requests > 0,
        "no request succeeded ({} errors): the run could not be carried out",
        report.error_total
    );
    if let Some(e) = &report.origin_error {
        anyhow::bail!("origin stats could not be read after the run: {e}");
    }
    Ok(())
}

/// `live-burst` as worker K of N of a spread run: its share of the viewers, results on stdout.
async fn live_burst_worker(args: &LiveBurstArgs, spec: &workers::WorkerSpec) -> anyhow::Result<()> {
    let cfg = workers::worker_config(args.config_for_run(&spec.run)?, spec);
    let conns = match cfg.mode {
        ConnMode::Shared(n) => n as u64,
        ConnMode::PerViewer => cfg.share.of(cfg.viewers) * if cfg.ll { 2 } else { 1 },
    };
    let nofile = load::raise_nofile(conns + 256);
    if nofile < conns + 256 {
        eprintln!(
            "warning: harness process {}: open-file limit {nofile} is below {conns} connections + 256; expect connect errors",
            spec.share.index
        );
    }
    workers::serve_worker(&cfg, spec).await
}
