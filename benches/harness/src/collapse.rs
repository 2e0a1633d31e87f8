//! `vedge bench collapse`: the collapsed-miss burst. N keep-alive connections ask for one object
//! nobody has asked for yet, all at the same instant; then S more objects, one every `cadence`,
//! as players do at a live edge right after the playlist announced each segment. Per request it
//! records the time to the response head (TTFB), the time to the last body byte, the status, and
//! whether the body matched its length; per object, how many requests the origin saw.
//!
//! It is the shape of `../shared/bench-peers/burst_client.py`, in Rust on hyper's client, so that
//! the client's own cost does not blur the edge's: the Python client reads 500 bodies on one
//! thread, and a connection's first byte waits until that thread comes round to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use url::Url;

use super::load;
use super::report::Pct;
use super::stamp::{Clock, Stamped};
use vedge_manifest::duration::parse as parse_duration;

/// Flags of `vedge bench collapse`.
#[derive(Debug, clap::Args)]
pub struct CollapseArgs {
    /// The edge to measure, as HOST:PORT.
    #[arg(long)]
    pub target: SocketAddr,
    /// Path of each object: the object's number replaces the `n` placeholder (in braces) and a
    /// fresh id the `run` placeholder, so every object is cold. The default matches `../shared/bench-peers/origin_slow.py` (a 200 ms origin) behind the edge.
    #[arg(long, default_value = "/live/{run}/seg_{n}.ts")]
    pub path: String,
    /// Concurrent viewers (one keep-alive connection each).
    #[arg(long, default_value_t = 500)]
    pub n: usize,
    /// Objects asked for in sequence after the first one.
    #[arg(long, default_value_t = 10)]
    pub segments: usize,
    /// Time between the sequential objects.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub cadence: Duration,
    /// Per-request limit, head and body.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The origin's `/__stats` URL, for origin requests per object. [default: none]
    #[arg(long)]
    pub origin_stats: Option<Url>,
    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One object's burst: N requests sent together.
#[derive(Debug, Serialize)]
pub struct Burst {
    pub path: String,
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    /// Statuses and transport errors, counted.
    pub outcomes: BTreeMap<String, usize>,
    pub ttfb_ms: Pct,
    /// TTFB by the kernel's receive stamp of the response's first segment (`bench::stamp`):
    /// when the byte reached this host, however long the client took to read it.
    pub ttfb_wire_ms: Pct,
    pub total_ms: Pct,
    /// Requests the origin saw for this path (1 is perfect collapsing); `None` without stats.
    pub origin_requests: Option<u64>,
}

/// The whole run: the single cold object, then the sequence.
#[derive(Debug, Serialize)]
pub struct CollapseReport {
    pub target: String,
    pub n: usize,
    pub single: Burst,
    pub seq: Vec<Burst>,
}

/// What one request ended as.
enum Outcome {
    Ok {
        ttfb: Duration,
        wire: Option<Duration>,
        total: Duration,
    },
    Failed(String),
}

/// Runs the bursts against `args.target` and returns what was measured.
pub async fn run(args: &CollapseArgs) -> anyhow::Result<CollapseReport> {
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    let run = super::run_id();
    let nofile = load::raise_nofile(args.n as u64 + 64);
    anyhow::ensure!(
        nofile >= args.n as u64 + 16,
        "open-file limit {nofile} is too low for --n {}",
        args.n
    );

    // Connect everyone first (128 at a time), so the bursts measure requests, not handshakes.
    let mut senders = Vec::with_capacity(args.n);
    while senders.len() < args.n {
        let batch = (args.n - senders.len()).min(128);
        for c in futures_util::future::join_all((0..batch).map(|_| connect(args.target))).await {
            senders.push(c.with_context(|| format!("connecting to {}", args.target))?);
        }
    }

    // Each connection waits for the next path, sends it, and reports how it went.
    let (go, _) = watch::channel::<Option<(usize, String)>>(None);
    let results: Arc<Mutex<Vec<Vec<Outcome>>>> = Arc::default();
    let bursts = args.segments + 1;
    results.lock().extend((0..bursts).map(|_| Vec::new()));
    let mut tasks = Vec::with_capacity(args.n);
    for (mut sender, clock) in senders {
        let mut rx = go.subscribe();
        let results = results.clone();
        let (host, limit) = (args.target.to_string(), args.timeout);
        tasks.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some((i, path)) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let outcome = one_request(&mut sender, &clock, &host, &path, limit).await;
                let broken = matches!(outcome, Outcome::Failed(_));
                results.lock()[i].push(outcome);
                if broken {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let path_of = |i: usize| {
        args.path
            .replace("{run}", &run)
            .replace("{n}", &i.to_string())
    };
    let start = Instant::now();
    let mut paths = Vec::with_capacity(bursts);
    for i in 0..bursts {
        // The single object first, then one every `cadence`.
        let at = if i == 0 {
            start
        } else {
            start + Duration::from_secs(1) + args.cadence * (i as u32 - 1)
        };
        tokio::time::sleep_until(at).await;
        let path = path_of(i);
        go.send_replace(Some((i, path.clone())));
        paths.push(path);
        wait_for(&results, i, args.n, args.timeout + Duration::from_secs(2)).await;
    }
    drop(go);
    for t in tasks {
        let _ = t.await;
    }

    let mut counts = BTreeMap::new();
    if let Some(stats) = &args.origin_stats {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let prefix = common_prefix(&paths);
        counts = load::origin_counts(stats, &prefix, Duration::from_secs(5))
            .await
            .context("--origin-stats")?;
    }
    let mut results = std::mem::take(&mut *results.lock());
    let mut out: Vec<Burst> = paths
        .iter()
        .zip(results.iter_mut())
        .map(|(path, outs)| {
            let origin = args
                .origin_stats
                .as_ref()
                .map(|_| counts.get(path).copied().unwrap_or(0));
            summarize(path, std::mem::take(outs), origin)
        })
        .collect();
    let single = out.remove(0);
    Ok(CollapseReport {
        target: args.target.to_string(),
        n: args.n,
        single,
        seq: out,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<(Sender, Arc<Clock>)> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let clock = Arc::new(Clock::default());
    let io = TokioIo::new(Stamped::new(stream, clock.clone()));
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok((sender, clock))
}

async fn one_request(
    sender: &mut Sender,
    clock: &Clock,
    host: &str,
    path: &str,
    limit: Duration,
) -> Outcome {
    let req = match http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "vedge-bench/collapse")
        .body(Empty::new())
    {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("request: {e}")),
    };
    clock.arm();
    let t0 = Instant::now();
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let ttfb = t0.elapsed();
        let status = resp.status();
        let want = content_length(resp.headers());
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            if let Some(d) = frame.data_ref() {
                got += d.len() as u64;
            }
        }
        if !status.is_success() {
            return Err(status.as_u16().to_string());
        }
        if want.is_some_and(|w| w != got) {
            return Err("short body".to_string());
        }
        Ok(Outcome::Ok {
            ttfb,
            wire: clock.first_byte(),
            total: t0.elapsed(),
        })
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("timeout".into()),
    }
}

/// `Content-Length` as a number, if present and valid (to tell a short body from a whole one).
fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits until burst `i` has `n` outcomes or `limit` passes (connections that broke earlier
/// never report, so the limit also ends a burst with fewer).
async fn wait_for(results: &Mutex<Vec<Vec<Outcome>>>, i: usize, n: usize, limit: Duration) {
    let end = Instant::now() + limit;
    while results.lock()[i].len() < n && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn summarize(path: &str, outs: Vec<Outcome>, origin_requests: Option<u64>) -> Burst {
    let mut outcomes = BTreeMap::new();
    let (mut ttfb, mut wire, mut total) = (load::hist(), load::hist(), load::hist());
    for o in &outs {
        match o {
            Outcome::Ok {
                ttfb: t,
                wire: w,
                total: d,
            } => {
                *outcomes.entry("200".to_string()).or_insert(0) += 1;
                ttfb.saturating_record(t.as_micros() as u64);
                if let Some(w) = w {
                    wire.saturating_record(w.as_micros() as u64);
                }
                total.saturating_record(d.as_micros() as u64);
            }
            Outcome::Failed(why) => *outcomes.entry(why.clone()).or_insert(0) += 1,
        }
    }
    let ok = ttfb.len() as usize;
    Burst {
        path: path.to_string(),
        requests: outs.len(),
        ok,
        errors: outs.len() - ok,
        outcomes,
        ttfb_ms: Pct::of(&ttfb),
        ttfb_wire_ms: Pct::of(&wire),
        total_ms: Pct::of(&total),
        origin_requests,
    }
}

/// The longest common directory of `paths` (`/live/run/seg_0.ts`, `/live/run/seg_1.ts` ->
/// `/live/run/`), for the origin's per-prefix counts.
fn common_prefix(paths: &[String]) -> String {
    let Some(first) = paths.first() else {
        return "/".into();
    };
    let mut end = first.len();
    for p in paths {
        end = end.min(
            first
                .bytes()
                .zip(p.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    match first[..end].rfind('/') {
        Some(i) => first[..=i].to_string(),
        None => "/".into(),
    }
}

/// The human summary: one line for the single object, one for the sequence.
pub fn summary(r: &CollapseReport) -> String {
    let line = |b: &Burst| {
        format!(
            "origin={} ok={}/{} ttfb p50/p99/max={:.1}/{:.1}/{:.1} ms (on arrival {:.1}/{:.1}/{:.1}) total p50/p99/max={:.1}/{:.1}/{:.1} ms",
            b.origin_requests.map_or("?".to_string(), |c| c.to_string()),
            b.ok,
            b.requests,
            b.ttfb_ms.p50,
            b.ttfb_ms.p99,
            b.ttfb_ms.max,
            b.ttfb_wire_ms.p50,
            b.ttfb_wire_ms.p99,
            b.ttfb_wire_ms.max,
            b.total_ms.p50,
            b.total_ms.p99,
            b.total_ms.max,
        )
    };
    let mut s = format!("collapse against {} with {} viewers\n", r.target, r.n);
    s.push_str(&format!("single: {}\n", line(&r.single)));
    for (i, b) in r.seq.iter().enumerate() {
        s.push_str(&format!("seq {i}: {}\n", line(b)));
    }
    if !r.seq.is_empty() {
        let mut p99: Vec<f64> = r.seq.iter().map(|b| b.ttfb_ms.p99).collect();
        p99.sort_by(f64::total_cmp);
        s.push_str(&format!(
            "seq: median of per-object ttfb p99 {:.1} ms\n",
            p99[p99.len() / 2]
        ));
    }
    s
}

/// Entry point of `vedge bench collapse`.
pub async fn cli(args: CollapseArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    print!("{}", summary(&report));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    failed(&report).map_or(Ok(()), |why| Err(anyhow::anyhow!(why)))
}

/// Why a run measured nothing: not one request of any burst answered with a success (a
/// `--path` the target does not serve, say). Such a run printed its empty figures and exited 0,
/// which read as a pass.
fn failed(report: &CollapseReport) -> Option<String> {
    let ok: usize = std::iter::once(&report.single)
        .chain(&report.seq)
        .map(|b| b.ok)
        .sum();
    (ok == 0).then(|| {
        format!(
            "no request was answered with a success ({}): is --path served by the target?",
            report.single.path
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_one_success_fails() {
        let burst = |ok| Burst {
            path: "/x/seg_0.ts".into(),
            requests: 2,
            ok,
            errors: 2 - ok,
            outcomes: BTreeMap::new(),
            ttfb_ms: Pct::default(),
            ttfb_wire_ms: Pct::default(),
            total_ms: Pct::default(),
            origin_requests: None,
        };
        let report = |single, seq| CollapseReport {
            target: "127.0.0.1:1".into(),
            n: 2,
            single: burst(single),
            seq: vec![burst(seq)],
        };
        assert!(failed(&report(0, 0)).is_some_and(|w| w.contains("--path")));
        assert!(failed(&report(0, 1)).is_none());
        assert!(failed(&report(2, 2)).is_none());
    }

    #[test]
    fn a_burst_summary_counts_outcomes_and_takes_percentiles_and_prefixes() {
        let ms = Duration::from_millis;
        let mut outs: Vec<Outcome> = (1..=100)
            .map(|i| Outcome::Ok {
                ttfb: ms(i),
                wire: Some(ms(i - 1)),
                total: ms(2 * i),
            })
            .collect();
        outs.push(Outcome::Failed("timeout".into()));
        let b = summarize("/x.ts", outs, Some(1));
        assert_eq!((b.requests, b.ok, b.errors), (101, 100, 1));
        assert_eq!(b.outcomes.get("timeout"), Some(&1));
        // Histogram percentiles, within their 3 significant digits.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(near(b.ttfb_ms.p50, 50.0), "{:?}", b.ttfb_ms);
        assert!(near(b.ttfb_ms.p99, 99.0), "{:?}", b.ttfb_ms);
        assert!(near(b.ttfb_ms.max, 100.0), "{:?}", b.ttfb_ms);
        assert!(near(b.total_ms.p50, 100.0), "{:?}", b.total_ms);
        assert!(near(b.ttfb_wire_ms.p99, 98.0), "{:?}", b.ttfb_wire_ms);
        let one = summarize(
            "/y.ts",
            vec![Outcome::Ok {
                ttfb: ms(7),
                wire: None,
                total: ms(7),
            }],
            None,
        );
        assert!(
            near(one.ttfb_ms.p50, 7.0) && near(one.ttfb_ms.p99, 7.0) && near(one.ttfb_ms.max, 7.0)
        );
        let paths = ["/live/r/seg_0.ts".to_string(), "/live/r/seg_10.ts".into()];
        assert_eq!(common_prefix(&paths), "/live/r/");
        assert_eq!(common_prefix(&["/a.ts".to_string()]), "/");
    }
}
