//! `vedge bench live-burst --processes N`: one run spread over N worker processes, each under
//! its own open-file limit and on its own runtime, reported as if one process had run it.
//!
//! The parent checks the targets, picks a start instant a little ahead (wall clock, so every
//! process's bursts line up), and starts this same executable N times with its own arguments
//! plus `--worker K/N --worker-start-unix-us T --worker-run ID`. Worker K runs viewers
//! `i % N == K` of the whole run's schedule (the same join times, renditions and targets as a
//! one-process run) and writes, on stdout, a progress line every second and, at the end, its
//! whole measurement (`merge::Part`), each a JSON object after [`MARK`]. The parent merges the
//! parts into one recorder (`Recorder::merged`: histograms merged, never percentiles averaged),
//! reads the origin's counters once, and builds the report as a one-process run does.
//!
//! Failure and exit: every wait of the parent ends at the run's hard stop plus a grace; a
//! worker that exits without its part, fails, or is still running then fails the whole run (an
//! error, no partial report). Workers are killed when their handle is dropped (`kill_on_drop`:
//! the parent returning, with or without an error), and a worker whose parent died sees its
//! stdin close and exits at once.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cost::HarnessCost;
use crate::load::{ConnMode, Recorder, RunConfig, Share};
use crate::merge::Part;
use crate::report::{ProcessReport, Progress, Report};

/// What starts each worker line on a worker's stdout; anything else a worker prints there (a
/// log line) is passed through to the parent's stderr.
pub const MARK: &str = "vedge-bench-worker ";

/// At most this much output is read from one worker (its part carries up to a million
/// first-request paths; real runs send a few MiB).
const MAX_WORKER_OUTPUT: u64 = 1 << 30;

/// `--processes`: a number, or `auto` (enough processes for the open-file limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processes {
    Auto,
    Count(u64),
}

impl std::str::FromStr for Processes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Processes::Auto);
        }
        match s.parse::<u64>() {
            Ok(n) if (1..=MAX_PROCESSES).contains(&n) => Ok(Processes::Count(n)),
            _ => Err(format!("expected `auto` or 1..={MAX_PROCESSES}")),
        }
    }
}

/// More processes than this would be a mistake on any box the harness runs on.
pub const MAX_PROCESSES: u64 = 64;

/// Descriptors a process keeps for everything but viewer sockets: a tenth of its limit, and
/// 256 more (runtime, pipes, the origin-stats client).
pub fn usable_descriptors(nofile: u64) -> u64 {
    (nofile - nofile / 10).saturating_sub(256).max(1)
}

/// The automatic process count: the fewest processes whose share of `conns` connections stays
/// within each one's usable descriptors; at least 1, at most [`MAX_PROCESSES`]. `nofile` is the
/// soft open-file limit each process will have (0 when unknown: one process).
pub fn auto_processes(conns: u64, nofile: u64) -> u64 {
    if nofile == 0 {
        return 1;
    }
    conns
        .div_ceil(usable_descriptors(nofile))
        .clamp(1, MAX_PROCESSES)
}

/// How a worker is started: this executable with this process's own arguments (which name the
/// subcommand, however the binary was called: `vedge bench live-burst ...` or
/// `vedge-bench live-burst ...`); the worker flags are appended.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Launcher {
    /// This process again. The harness reads its own argv here (and nowhere else) because a
    /// worker must be the same command as its parent.
    pub fn this_process() -> anyhow::Result<Launcher> {
        Ok(Launcher {
            exe: std::env::current_exe().context("cannot find this executable to start workers")?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// What the parent tells a worker, besides its own arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    pub share: Share,
    /// The shared start instant, in microseconds since the Unix epoch.
    pub start_unix_us: u64,
    /// The run id `{run}` in the targets stands for (one stream for every process).
    pub run: String,
}

impl WorkerSpec {
    fn args(&self) -> Vec<OsString> {
        [
            "--worker".to_string(),
            format!("{}/{}", self.share.index, self.share.count),
            "--worker-start-unix-us".to_string(),
            self.start_unix_us.to_string(),
            "--worker-run".to_string(),
            self.run.clone(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }

    pub fn start(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(self.start_unix_us)
    }
}

/// `K/N` of `--worker`.
pub fn parse_share(s: &str) -> Result<Share, String> {
    let (k, n) = s.split_once('/').ok_or("expected K/N")?;
    let index: u64 = k.parse().map_err(|_| "K is not a number")?;
    let count: u64 = n.parse().map_err(|_| "N is not a number")?;
    if count == 0 || index >= count {
        return Err("expected K < N".into());
    }
    Ok(Share { index, count })
}

/// One line a worker writes (after [`MARK`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Progress(Progress),
    Part(Box<Part>),
}

fn emit(m: &Message) -> anyhow::Result<()> {
    let json = serde_json::to_string(m)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{json}")?;
    out.flush()?;
    Ok(())
}

/// The tokio instant of a wall-clock time.
fn instant_of(wall: SystemTime) -> Instant {
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    match wall.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
    }
}

/// Exits this worker when its parent goes away (its stdin, a pipe only the parent holds,
/// reaches end of file), so no worker outlives a killed parent.
fn exit_with_parent() {
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = std::io::Read::read(&mut stdin, &mut sink) {
                if n == 0 {
                    break;
                }
            }
            eprintln!("live-burst worker: the parent is gone; exiting");
            std::process::exit(3);
        });
    if let Err(e) = spawned {
        eprintln!("live-burst worker: cannot watch the parent ({e}); continuing");
    }
}

/// The worker side: runs `cfg`'s share of the viewers from `spec`'s start instant and writes
/// its progress and its part on stdout.
pub async fn serve_worker(cfg: &RunConfig, spec: &WorkerSpec) -> anyhow::Result<()> {
    exit_with_parent();
    let start = instant_of(spec.start());
    let m = crate::measure(cfg, start, |rec| {
        // A parent that stopped reading is gone or failing: nothing to do about it here.
        let _ = emit(&Message::Progress(Progress::of(rec)));
    })
    .await;
    let part = Part::of(
        &m.rec,
        cfg.share.of(cfg.viewers),
        m.skipped,
        m.played,
        m.cost,
        m.start_late,
    );
    emit(&Message::Part(Box::new(part))).context("writing the worker's results")
}

/// The worker's configuration: the whole run's, for `spec`'s share (and its share of a shared
/// pool).
pub fn worker_config(mut cfg: RunConfig, spec: &WorkerSpec) -> RunConfig {
    cfg.share = spec.share;
    if let ConnMode::Shared(n) = cfg.mode {
        cfg.mode = ConnMode::Shared(spec.share.of_pool(n).max(1));
    }
    cfg
}

/// How the parent runs the workers.
#[derive(Debug, Clone)]
pub struct Spread {
    pub processes: u64,
    pub launcher: Launcher,
    /// The run id every worker's `{run}` stands for.
    pub run: String,
    /// How far ahead of now the shared start instant is (time to start every worker).
    pub lead: Duration,
    /// How long past the run's hard stop a worker may take to send its part and exit.
    pub grace: Duration,
}

impl Spread {
    pub fn new(processes: u64, launcher: Launcher, run: String) -> Spread {
        Spread {
            processes,
            launcher,
            run,
            lead: Duration::from_secs(1),
            grace: Duration::from_secs(30),
        }
    }
}

/// What a worker's reader task reports.
enum Event {
    Message(u64, Message),
    /// A line after the mark that is not a message.
    Garbled(u64, String),
    Exited(u64, std::io::Result<std::process::ExitStatus>),
}

/// The parent side: runs `cfg` over `spread.processes` workers and merges their parts into one
/// report. `progress` gets the workers' progress added up, about once a second.
pub async fn run_spread(
    cfg: &RunConfig,
    spread: &Spread,
    mut progress: impl FnMut(&Progress),
) -> anyhow::Result<Report> {
    let n = spread.processes.max(1);
    crate::precheck(cfg).await?;
    let start_wall = SystemTime::now() + spread.lead;
    let start = instant_of(start_wall);
    let start_unix_us = u64::try_from(
        start_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_micros(),
    )
    .context("the clock is past the year 500,000")?;
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    // Each task owns its worker: aborting the set (dropping it on any return) drops the child
    // handles, which kills the workers still running.
    let mut tasks = tokio::task::JoinSet::new();
    let mut stdins = Vec::new();
    for index in 0..n {
        let spec = WorkerSpec {
            share: Share { index, count: n },
            start_unix_us,
            run: spread.run.clone(),
        };
        let mut child = tokio::process::Command::new(&spread.launcher.exe)
            .args(&spread.launcher.args)
            .args(spec.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting harness process {index} of {n} ({})",
                    spread.launcher.exe.display()
                )
            })?;
        // Held until the run ends: its end of file tells the worker the parent is gone.
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tasks.spawn(read_worker(index, child, stdout, tx));
    }
    drop(tx);
    let hard_stop = start + cfg.duration + cfg.timeout * 2 + Duration::from_secs(2);
    let deadline = hard_stop + spread.grace;
    let mut parts: Vec<Option<Part>> = (0..n).map(|_| None).collect();
    let mut latest: Vec<Progress> = vec![Progress::default(); n as usize];
    let mut exited = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while exited < n {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Message(k, Message::Progress(p))) => latest[k as usize] = p,
                Some(Event::Message(k, Message::Part(p))) => parts[k as usize] = Some(*p),
                Some(Event::Garbled(k, line)) => anyhow::bail!(
                    "harness process {k} of {n} sent a line that is not a worker message: {line:.200}"
                ),
                Some(Event::Exited(k, status)) => {
                    let status = status.with_context(|| format!("waiting for harness process {k} of {n}"))?;
                    anyhow::ensure!(
                        status.success(),
                        "harness process {k} of {n} failed ({status}); the run is void"
                    );
                    anyhow::ensure!(
                        parts[k as usize].is_some(),
                        "harness process {k} of {n} exited without its results; the run is void"
                    );
                    exited += 1;
                }
                // Every reader ended without reporting an exit: cannot happen (each sends one).
                None => anyhow::bail!("lost track of the harness processes"),
            },
            _ = ticker.tick() => progress(&Progress::sum(&latest)),
            () = tokio::time::sleep_until(deadline) => {
                let missing: Vec<String> = parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_none())
                    .map(|(k, _)| k.to_string())
                    .collect();
                anyhow::bail!(
                    "harness processes did not finish within {:?} of the run's end (without results: {}); they were killed and the run is void",
                    spread.grace,
                    if missing.is_empty() { "none".into() } else { missing.join(", ") }
                );
            }
        }
    }
    drop(stdins);
    let parts: Vec<Part> = parts.into_iter().flatten().collect();
    let elapsed = start.elapsed();
    let rec = Recorder::merged(start, &parts);
    let cost = HarnessCost::sum(parts.iter().map(|p| &p.cost), cfg.viewers);
    let skipped = parts.iter().map(|p| p.skipped).sum();
    let played = parts.iter().map(|p| p.played).sum();
    let mut r = crate::finish(cfg, &rec, skipped, played, elapsed, cost).await;
    r.processes = n;
    r.by_process = parts.iter().map(ProcessReport::of).collect();
    Ok(r)
}

/// Reads worker `k`'s stdout to its end, then waits for it to exit; reports both.
async fn read_worker(
    k: u64,
    mut child: tokio::process::Child,
    stdout: tokio::process::ChildStdout,
    tx: mpsc::Sender<Event>,
) {
    let mut lines = BufReader::new(stdout.take(MAX_WORKER_OUTPUT));
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let ev = match text.strip_prefix(MARK) {
            Some(json) => match serde_json::from_str::<Message>(json) {
                Ok(m) => Event::Message(k, m),
                Err(e) => Event::Garbled(k, format!("{e}: {json}")),
            },
            None => {
                // A log line of the worker: not ours to parse, but not to be lost either.
                eprintln!("[process {k}] {text}");
                continue;
            }
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    let status = child.wait().await;
    let _ = tx.send(Event::Exited(k, status)).await;
}

/// The summary's note on how the viewers were spread (for the CLI's first line).
pub fn describe(processes: u64, auto: bool, nofile: u64) -> String {
    match (processes, auto) {
        (1, true) => format!("1 process (automatic: within the open-file limit {nofile})"),
        (1, false) => "1 process".into(),
        (n, true) => format!(
            "{n} processes (automatic: open-file limit {nofile} per process, {} usable for viewer connections)",
            usable_descriptors(nofile)
        ),
        (n, false) => format!("{n} processes (--processes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_processes_keep_each_under_its_open_file_limit() {
        // This sandbox's hard limit: 20,000 per process.
        assert_eq!(auto_processes(100, 20_000), 1);
        assert_eq!(auto_processes(17_000, 20_000), 1);
        assert_eq!(auto_processes(20_000, 20_000), 2);
        assert_eq!(auto_processes(40_000, 20_000), 3);
        assert_eq!(auto_processes(20_000, 1 << 20), 1);
        assert_eq!(auto_processes(20_000, 0), 1, "unknown limit: one process");
        assert_eq!(auto_processes(10_000_000, 1024), MAX_PROCESSES);
        for (conns, nofile) in [(20_000u64, 20_000u64), (5_000, 1024), (50_000, 20_000)] {
            let n = auto_processes(conns, nofile);
            assert!(conns.div_ceil(n) + 256 <= nofile, "{conns} over {n}");
        }
    }

    #[test]
    fn worker_flags_round_trip() {
        assert_eq!(parse_share("1/2"), Ok(Share { index: 1, count: 2 }));
        assert!(parse_share("2/2").is_err());
        assert!(parse_share("0/0").is_err());
        assert!(parse_share("x").is_err());
        assert_eq!("auto".parse::<Processes>(), Ok(Processes::Auto));
        assert_eq!("3".parse::<Processes>(), Ok(Processes::Count(3)));
        assert!("0".parse::<Processes>().is_err());
        let spec = WorkerSpec {
            share: Share { index: 1, count: 3 },
            start_unix_us: 1_800_000_000_000_000,
            run: "run1".into(),
        };
        let args: Vec<String> = spec
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--worker",
                "1/3",
                "--worker-start-unix-us",
                "1800000000000000",
                "--worker-run",
                "run1"
            ]
        );
    }
}
