//! `vedge bench zipf`: a fixed set of keep-alive connections asks an edge for objects of the
//! synthetic catalogue (`/cat/<id>.ts` of `vedge origin`) with Zipf popularity, as fast as the
//! edge answers. Reports request and byte rates, latency to the last byte, errors (status,
//! length, content) and, from the origin's `/__stats` read before and after the measured phase,
//! the origin's bytes and the byte hit ratio `1 - origin bytes / bytes served`.
//!
//! A run is an optional warm-up (fills the cache; not measured) and the measured phase, each
//! bounded by a duration and/or a request count, whichever comes first. Every connection is one
//! worker with its own seeded RNG: the draws of a seed are the same from run to run, only their
//! interleaving across connections depends on timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use rand::{rngs::StdRng, SeedableRng as _};
use serde::Serialize;
use tokio::time::Instant;
use url::Url;

use vedge_manifest::duration::parse as parse_duration;

use crate::catalogue::{self, Zipf};
use crate::client::{Pool, Sources};
use crate::report::Pct;

/// Flags of `vedge bench zipf`.
#[derive(Debug, Clone, clap::Args)]
pub struct ZipfArgs {
    /// The edge's base URL; objects are asked for as `<target>/cat/<id>.ts`.
    #[arg(long)]
    pub target: String,
    /// The origin simulator's `/__stats` URL (origin bytes and byte hit ratio). [default: none]
    #[arg(long)]
    pub origin_stats: Option<String>,
    /// Keep-alive connections, each asking for one object after another.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Catalogue size in GiB (objects `0..n`, the fewest whose sizes reach it; 1-2 MiB each).
    #[arg(long, default_value_t = 16.0)]
    pub catalogue_gib: f64,
    /// Catalogue size in objects (instead of `--catalogue-gib`).
    #[arg(long)]
    pub objects: Option<u64>,
    /// Zipf exponent s: object of popularity rank k is asked for with weight 1/(k+1)^s.
    #[arg(long = "zipf", default_value_t = 1.0)]
    pub s: f64,
    /// Length of the measured phase.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Ends the measured phase after this many requests (if before `--duration`).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Warm-up before the measured phase (not measured). [default: none]
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Ends the warm-up after this many requests (if before `--warmup`). [default: none]
    #[arg(long)]
    pub warmup_requests: Option<u64>,
    /// Seed of the draws (connection i uses seed + i; the warm-up seed + 1,000,000 + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also compare every body byte with the catalogue's (the length is always checked).
    #[arg(long)]
    pub verify: bool,
    /// Per-request timeout, head and body.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct ZipfConfig {
    pub target: Url,
    pub origin_stats: Option<Url>,
    pub connections: usize,
    pub objects: u64,
    pub s: f64,
    pub measure: Phase,
    pub warmup: Option<Phase>,
    pub seed: u64,
    pub verify: bool,
    pub timeout: Duration,
}

/// How long a phase runs: until its duration or its request count, whichever comes first (at
/// least one of them is set).
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
}

impl ZipfArgs {
    pub fn config(&self) -> anyhow::Result<ZipfConfig> {
        let target = Url::parse(&self.target)
            .with_context(|| format!("--target {:?} is not a URL", self.target))?;
        anyhow::ensure!(
            target.scheme() == "http",
            "--target must be an http:// URL (the harness speaks HTTP/1.1 without TLS)"
        );
        let origin_stats = self
            .origin_stats
            .as_deref()
            .map(Url::parse)
            .transpose()
            .context("--origin-stats is not a URL")?;
        anyhow::ensure!(
            (1..=100_000).contains(&self.connections),
            "--connections must be 1..=100000"
        );
        anyhow::ensure!(
            self.s.is_finite() && (0.0..=10.0).contains(&self.s),
            "--zipf must be between 0 and 10"
        );
        let objects = match self.objects {
            Some(n) => n,
            None => {
                anyhow::ensure!(
                    self.catalogue_gib.is_finite()
                        && self.catalogue_gib > 0.0
                        && self.catalogue_gib <= 1024.0,
                    "--catalogue-gib must be in (0, 1024]"
                );
                catalogue::objects_for_bytes((self.catalogue_gib * (1u64 << 30) as f64) as u64)
            }
        };
        // Ids below 2^20 have distinct bytes (and the CDF stays a few MiB).
        anyhow::ensure!(
            (1..=1 << 20).contains(&objects),
            "--objects must be 1..=1048576"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        anyhow::ensure!(self.requests != Some(0), "--requests must be at least 1");
        let warmup = match (self.warmup, self.warmup_requests) {
            (None, None) => None,
            (d, r) => Some(Phase {
                duration: d.filter(|d| !d.is_zero()),
                requests: r.filter(|r| *r > 0),
            })
            .filter(|p| p.duration.is_some() || p.requests.is_some()),
        };
        Ok(ZipfConfig {
            target,
            origin_stats,
            connections: self.connections,
            objects,
            s: self.s,
            measure: Phase {
                duration: Some(self.duration),
                requests: self.requests,
            },
            warmup,
            seed: self.seed,
            verify: self.verify,
            timeout: self.timeout,
        })
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub elapsed_s: f64,
    /// Requests sent (answered or not).
    pub requests: u64,
    /// 200 answers with the right length (and bytes, with `--verify`).
    pub ok: u64,
    /// Body bytes of the good answers.
    pub bytes: u64,
    pub requests_per_s: f64,
    pub gbit_per_s: f64,
    /// Time to the response head, and to the last body byte, of good answers.
    pub ttfb_ms: Pct,
    pub total_ms: Pct,
    /// By kind: `status_<code>`, `length`, `content`, `body`, and the client's connection kinds.
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// Distinct objects asked for in this phase.
    pub distinct_objects: u64,
    /// The origin's catalogue counters over the phase (`None` without `--origin-stats`).
    pub origin_requests: Option<u64>,
    pub origin_bytes: Option<u64>,
    /// `1 - origin_bytes / bytes`.
    pub byte_hit_ratio: Option<f64>,
}

/// The whole run (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ZipfReport {
    pub target: String,
    pub connections: usize,
    pub objects: u64,
    pub catalogue_bytes: u64,
    pub zipf_s: f64,
    pub seed: u64,
    pub verify: bool,
    /// The byte share of all draws that the most popular objects fitting 1 GiB would get: what
    /// a perfect 1 GiB cache could hit (a yardstick for the measured ratio).
    pub ideal_byte_hit_ratio_per_gib: Vec<(u64, f64)>,
    pub connections_opened: u64,
    pub warmup: Option<PhaseReport>,
    pub measured: PhaseReport,
    pub harness_cost: Option<crate::cost::HarnessCost>,
}

/// One worker's tallies (merged at the end of a phase: no shared lock per request).
struct Tally {
    requests: u64,
    ok: u64,
    bytes: u64,
    ttfb: Histogram<u64>,
    total: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Objects asked for: one bit per id (bounded by the catalogue, not by the run's length).
    seen: Vec<u64>,
}

impl Tally {
    fn new(objects: u64) -> Tally {
        Tally {
            requests: 0,
            ok: 0,
            bytes: 0,
            ttfb: crate::load::hist(),
            total: crate::load::hist(),
            errors: BTreeMap::new(),
            seen: vec![0; objects.div_ceil(64) as usize],
        }
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.bytes += o.bytes;
        // Same bounds: adding cannot fail.
        let _ = self.ttfb.add(&o.ttfb);
        let _ = self.total.add(&o.total);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (a, b) in self.seen.iter_mut().zip(o.seen) {
            *a |= b;
        }
    }
}

/// The origin's catalogue counters: (requests, body bytes).
pub async fn origin_catalogue(stats: &Url, timeout: Duration) -> anyhow::Result<(u64, u64)> {
    let v = crate::load::stats_json(stats, "/cat/", timeout).await?;
    let c = v
        .get("catalogue")
        .context("origin stats: no \"catalogue\" object (is it `vedge origin`?)")?;
    let n = |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Ok((n("requests"), n("bytes")))
}

/// The fraction of requested bytes a perfect cache of `cap` bytes would hit: it holds the most
/// requested bytes per byte of space (all objects are 1-2 MiB, so ranking by popularity is close).
pub fn ideal_byte_hit_ratio(zipf: &Zipf, objects: u64, cap: u64) -> f64 {
    let mut all = 0.0;
    let mut held = 0.0;
    let mut used = 0u64;
    for k in 0..objects {
        let b = zipf.probability(k) * catalogue::size(k) as f64;
        all += b;
        if used + catalogue::size(k) <= cap {
            used += catalogue::size(k);
            held += b;
        }
    }
    if all > 0.0 {
        held / all
    } else {
        0.0
    }
}

/// Runs one phase with every connection of `pool`.
async fn phase(
    cfg: &ZipfConfig,
    pool: &Arc<Pool>,
    zipf: &Arc<Zipf>,
    p: Phase,
    seed: u64,
) -> anyhow::Result<PhaseReport> {
    let before = match &cfg.origin_stats {
        Some(u) => Some(origin_catalogue(u, Duration::from_secs(10)).await?),
        None => None,
    };
    let start = Instant::now();
    let deadline = p.duration.map(|d| start + d);
    let issued = Arc::new(AtomicU64::new(0));
    let authority = format!(
        "{}:{}",
        cfg.target.host_str().context("--target has no host")?,
        cfg.target.port_or_known_default().unwrap_or(80)
    );
    let base = cfg.target.path().trim_end_matches('/').to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.connections {
        let (pool, zipf, issued) = (pool.clone(), zipf.clone(), issued.clone());
        let (authority, base) = (authority.clone(), base.clone());
        let (limit, verify, timeout, objects) = (p.requests, cfg.verify, cfg.timeout, cfg.objects);
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        tasks.spawn(async move {
            let mut t = Tally::new(objects);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if limit.is_some_and(|l| issued.fetch_add(1, Ordering::Relaxed) >= l) {
                    break;
                }
                let id = zipf.sample(&mut rng);
                // The phase's end cuts no request short: each has its own timeout.
                let by = Instant::now() + timeout;
                fetch(&pool, &authority, &base, id, verify, by, &mut t).await;
            }
            t
        });
    }
    let mut all = Tally::new(cfg.objects);
    while let Some(t) = tasks.join_next().await {
        all.merge(t.context("a zipf worker panicked")?);
    }
    let elapsed = start.elapsed();
    let after = match &cfg.origin_stats {
        Some(u) => Some(origin_catalogue(u, Duration::from_secs(10)).await?),
        None => None,
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    let origin = before
        .zip(after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)));
    Ok(PhaseReport {
        elapsed_s: elapsed.as_secs_f64(),
        requests: all.requests,
        ok: all.ok,
        bytes: all.bytes,
        requests_per_s: all.ok as f64 / secs,
        gbit_per_s: all.bytes as f64 * 8.0 / secs / 1e9,
        ttfb_ms: Pct::of(&all.ttfb),
        total_ms: Pct::of(&all.total),
        error_total: all.errors.values().sum(),
        errors: all.errors,
        distinct_objects: all.seen.iter().map(|w| u64::from(w.count_ones())).sum(),
        origin_requests: origin.map(|o| o.0),
        origin_bytes: origin.map(|o| o.1),
        byte_hit_ratio: origin
            .filter(|_| all.bytes > 0)
            .map(|o| 1.0 - o.1 as f64 / all.bytes as f64),
    })
}

/// One GET of object `id`: checks status, length and (with `verify`) every byte; records the
/// outcome in `t`. The connection is kept only after a complete, correct body.
async fn fetch(
    pool: &Pool,
    authority: &str,
    base: &str,
    id: u64,
    verify: bool,
    by: Instant,
    t: &mut Tally,
) {
    t.requests += 1;
    if let Some(w) = t.seen.get_mut((id / 64) as usize) {
        *w |= 1 << (id % 64);
    }
    let sent_at = Instant::now();
    let req = match Request::get(format!("{base}{}", catalogue::path(id)))
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(_) => return t.error("request"),
    };
    let (permit, host) = match pool.slot(authority, by).await {
        Ok(x) => x,
        Err(e) => return t.error(e.as_str()),
    };
    let sent = match pool.send(permit, host, authority, req, by).await {
        Ok(s) => s,
        Err(e) => return t.error(e.as_str()),
    };
    let ttfb = sent_at.elapsed();
    let status = sent.response.status();
    let mut body = sent.response.into_body();
    let want = catalogue::size(id);
    let mut got = 0u64;
    let mut wrong = false;
    loop {
        match tokio::time::timeout_at(by, body.frame()).await {
            Err(_) => return t.error("timeout_body"),
            Ok(None) => break,
            Ok(Some(Err(_))) => return t.error("body"),
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    if verify && status.is_success() && !wrong {
                        wrong = !catalogue::matches(id, got, d);
                    }
                    got += d.len() as u64;
                }
            }
        }
    }
    if status != http::StatusCode::OK {
        sent.checkout.release();
        return t.error(format!("status_{}", status.as_u16()));
    }
    if got != want {
        return t.error("length");
    }
    sent.checkout.release();
    if wrong {
        return t.error("content");
    }
    t.ok += 1;
    t.bytes += got;
    let us = |d: Duration| (d.as_micros() as u64).max(1);
    let _ = t.ttfb.record(us(ttfb));
    let _ = t.total.record(us(sent_at.elapsed()));
}

/// Runs the warm-up (if any) and the measured phase.
pub async fn run(cfg: &ZipfConfig) -> anyhow::Result<ZipfReport> {
    crate::load::reachable(&cfg.target, Duration::from_secs(5))
        .await
        .with_context(|| format!("target {} unreachable; nothing was measured", cfg.target))?;
    let zipf = Arc::new(Zipf::new(cfg.objects, cfg.s));
    let pool = Arc::new(Pool::sharing(
        cfg.connections,
        Default::default(),
        Arc::new(Sources::loopback(1)),
    ));
    let warmup = match cfg.warmup {
        Some(p) => Some(phase(cfg, &pool, &zipf, p, cfg.seed.wrapping_add(1_000_000)).await?),
        None => None,
    };
    let cost1 = crate::cost::Usage::now();
    let measured = phase(cfg, &pool, &zipf, cfg.measure, cfg.seed).await?;
    let harness_cost = crate::cost::Usage::now().since(&cost1, cfg.connections as u64);
    let total = catalogue::total_bytes(cfg.objects);
    let ideal = [1u64, 2, 4, 8]
        .into_iter()
        .filter(|g| (g << 30) < total)
        .map(|g| (g, ideal_byte_hit_ratio(&zipf, cfg.objects, g << 30)))
        .collect();
    Ok(ZipfReport {
        target: cfg.target.to_string(),
        connections: cfg.connections,
        objects: cfg.objects,
        catalogue_bytes: total,
        zipf_s: cfg.s,
        seed: cfg.seed,
        verify: cfg.verify,
        ideal_byte_hit_ratio_per_gib: ideal,
        connections_opened: pool.opened(),
        warmup,
        measured,
        harness_cost: Some(harness_cost),
    })
}

/// The human summary.
pub fn summary(r: &ZipfReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "zipf: {} objects ({:.2} GiB), s={}, {} connections ({} opened), target {}",
        r.objects,
        r.catalogue_bytes as f64 / (1u64 << 30) as f64,
        r.zipf_s,
        r.connections,
        r.connections_opened,
        r.target
    );
    let phase = |s: &mut String, name: &str, p: &PhaseReport| {
        let _ = writeln!(
            s,
            "{name}: {:.1} s, {} requests ({} ok, {} errors), {} distinct objects",
            p.elapsed_s, p.requests, p.ok, p.error_total, p.distinct_objects
        );
        let _ = writeln!(
            s,
            "  {:.1} req/s, {:.3} Gbit/s; total ms p50 {:.2} p99 {:.2} max {:.2}; ttfb ms p50 {:.2} p99 {:.2}",
            p.requests_per_s,
            p.gbit_per_s,
            p.total_ms.p50,
            p.total_ms.p99,
            p.total_ms.max,
            p.ttfb_ms.p50,
            p.ttfb_ms.p99
        );
        if let (Some(req), Some(b), Some(h)) = (p.origin_requests, p.origin_bytes, p.byte_hit_ratio)
        {
            let _ = writeln!(
                s,
                "  origin: {req} requests, {:.3} GiB; byte hit ratio {:.4}",
                b as f64 / (1u64 << 30) as f64,
                h
            );
        }
        if !p.errors.is_empty() {
            let _ = writeln!(s, "  errors: {:?}", p.errors);
        }
    };
    if let Some(w) = &r.warmup {
        phase(&mut s, "warm-up", w);
    }
    phase(&mut s, "measured", &r.measured);
    s
}

/// Entry point of `vedge bench zipf`.
pub async fn cli(args: ZipfArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    crate::load::raise_nofile(cfg.connections as u64 + 256);
    eprintln!(
        "zipf: {} connections, {} objects, s={}, warm-up {:?}, measure {:?}",
        cfg.connections, cfg.objects, cfg.s, cfg.warmup, cfg.measure
    );
    let report = run(&cfg).await?;
    print!("{}", summary(&report));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    anyhow::ensure!(
        report.measured.ok > 0,
        "no request succeeded ({} errors): the run could not be carried out",
        report.measured.error_total
    );
    Ok(())
}
