//! The load runner of `vedge bench live-burst`: the HTTP client every viewer shares (one tokio
//! runtime, one keep-alive pool, no thread per viewer), the recorder behind it, and the scenario
//! schedules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http::{header, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use tokio::time::Instant;
use url::Url;

use super::client::{Pool, Sources};
use super::viewer::{self, Class, FetchError, Fetched, Mode, Net, Pick, Plan};

/// Latency histograms of one object class, in microseconds.
pub struct ClassStats {
    pub requests: u64,
    pub ok: u64,
    pub bytes: u64,
    pub ttfb: Histogram<u64>,
    pub total: Histogram<u64>,
    /// Time waiting for a pooled connection slot (the harness's queue, not the edge's latency).
    pub wait: Histogram<u64>,
    pub cache: BTreeMap<String, u64>,
}

impl ClassStats {
    pub(crate) fn new() -> Self {
        ClassStats {
            requests: 0,
            ok: 0,
            bytes: 0,
            ttfb: hist(),
            total: hist(),
            wait: hist(),
            cache: BTreeMap::new(),
        }
    }
}

/// A latency histogram in microseconds (what `report::Pct::of` reads).
pub fn hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

/// One second of the run.
pub struct Second {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub stalls: u64,
    pub seg_ttfb: Histogram<u64>,
    pub seg_total: Histogram<u64>,
    /// Worst timer lag of the second, in microseconds.
    pub lag_max_us: u64,
}

/// Everything measured during a run. One lock: each request takes it once, for about a
/// microsecond, which is far below the rate a 2-core box can drive.
pub struct Recorder {
    pub start: Instant,
    pub classes: BTreeMap<Class, ClassStats>,
    pub errors: BTreeMap<String, u64>,
    pub seconds: Vec<Second>,
    pub stalls: u64,
    pub stalled: Duration,
    pub watched: Duration,
    pub startup: Histogram<u64>,
    pub parse_errors: u64,
    pub viewers_started: u64,
    pub viewers_active: u64,
    pub viewers_done: u64,
    /// Every request's wait for a connection slot (successes and HTTP errors).
    pub pool_wait: Histogram<u64>,
    /// How late a 10 ms timer woke up, sampled all run long: high values mean the harness
    /// itself was overloaded and its latencies include its own queueing.
    pub timer_lag: Histogram<u64>,
    pub connections_opened: u64,
    /// Low-latency viewers: how long after a part was produced they had it.
    pub live_latency: Histogram<u64>,
    /// The first request of each media object (segment or part) across all viewers: the
    /// request a prefetching edge should answer from cache or from a fill it already started.
    pub first_requests: BTreeMap<String, FirstRequest>,
}

/// How the first request of one media object went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstRequest {
    /// `Cache-Status` says `hit`, or the request joined a fill in flight (`collapsed`).
    pub hit_or_collapsed: bool,
    pub ttfb_us: u64,
    /// When the request was sent: of concurrent requests the earliest sent is the first.
    pub sent: Instant,
}

/// Media objects whose first request is remembered (bounded memory on long runs).
pub(crate) const FIRST_REQUESTS: usize = 1_000_000;

/// Whether a `Cache-Status` (RFC 9211) or `X-Cache` value says the answer came from the cache
/// or from a fill already in flight when the request arrived.
pub fn hit_or_collapsed(cache_status: &str, x_cache: &str) -> bool {
    let cs = cache_status.to_ascii_lowercase();
    cs.split(';').any(|p| p.trim() == "hit")
        || cs.contains("collapsed")
        || (cache_status.is_empty() && x_cache.eq_ignore_ascii_case("HIT"))
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            classes: Class::ALL.iter().map(|c| (*c, ClassStats::new())).collect(),
            errors: BTreeMap::new(),
            seconds: Vec::new(),
            stalls: 0,
            stalled: Duration::ZERO,
            watched: Duration::ZERO,
            startup: hist(),
            parse_errors: 0,
            viewers_started: 0,
            viewers_active: 0,
            viewers_done: 0,
            pool_wait: hist(),
            timer_lag: hist(),
            connections_opened: 0,
            live_latency: hist(),
            first_requests: BTreeMap::new(),
        }
    }

    pub(crate) fn second(&mut self, at: Instant) -> &mut Second {
        let i = at.saturating_duration_since(self.start).as_secs() as usize;
        while self.seconds.len() <= i {
            self.seconds.push(Second {
                requests: 0,
                bytes: 0,
                errors: 0,
                stalls: 0,
                seg_ttfb: hist(),
                seg_total: hist(),
                lag_max_us: 0,
            });
        }
        &mut self.seconds[i]
    }

    fn error(&mut self, kind: String) {
        let now = Instant::now();
        self.second(now).errors += 1;
        *self.errors.entry(kind).or_default() += 1;
    }

    /// One timer-lag sample.
    pub fn timer_lag(&mut self, lag: Duration) {
        let v = us(lag);
        let _ = self.timer_lag.record(v);
        let sec = self.second(Instant::now());
        sec.lag_max_us = sec.lag_max_us.max(v);
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

pub(crate) fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 600_000_000)
}

/// How viewers reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// Each viewer opens its own connection (two for a low-latency viewer, whose part fetch
    /// and blocking playlist reload overlap), as a player does: the edge sees one connection
    /// per viewer.
    PerViewer,
    /// Every viewer shares one keep-alive pool of this many connections per host.
    Shared(usize),
}

impl ConnMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnMode::PerViewer => "per-viewer",
            ConnMode::Shared(_) => "shared-pool",
        }
    }
}

/// The HTTP client plus the recorder: what every viewer uses as its [`Net`] (shared-pool mode),
/// or what each viewer's own [`ViewerNet`] wraps (per-viewer mode).
pub struct HttpNet {
    pool: Pool,
    timeout: Duration,
    pub rec: Arc<Mutex<Recorder>>,
    /// Counts every connection any pool of this run opened.
    opened: Arc<std::sync::atomic::AtomicU64>,
    sources: Arc<Sources>,
}

/// `http://host[:port]/path?q` -> (`host:port`, request with an origin-form URI and Host).
fn request_for(url: &str) -> Option<(String, Request<Empty<Bytes>>)> {
    let uri: http::Uri = url.parse().ok()?;
    let auth = uri.authority()?;
    let authority = match auth.port_u16() {
        Some(_) => auth.as_str().to_string(),
        None => format!("{}:80", auth.host()),
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = Request::get(path)
        .header(header::HOST, auth.as_str())
        .header(header::USER_AGENT, "vedge-bench/live-burst")
        .body(Empty::new())
        .ok()?;
    Some((authority, req))
}

impl HttpNet {
    /// `connections`: the most keep-alive connections to one host that viewers share.
    pub fn new(timeout: Duration, connections: usize, rec: Arc<Mutex<Recorder>>) -> Self {
        HttpNet::with_sources(timeout, connections, Sources::loopback(1), rec)
    }

    /// Like `new`, with connections to a loopback target spread over `sources`.
    pub fn with_sources(
        timeout: Duration,
        connections: usize,
        sources: Sources,
        rec: Arc<Mutex<Recorder>>,
    ) -> Self {
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sources = Arc::new(sources);
        HttpNet {
            pool: Pool::sharing(connections, opened.clone(), sources.clone()),
            timeout,
            rec,
            opened,
            sources,
        }
    }

    /// Connections opened so far, by every pool of the run: what the target accepted.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A viewer's own client: a pool of `connections` that counts into this run's total.
    pub fn viewer(self: &Arc<Self>, connections: usize) -> ViewerNet {
        ViewerNet {
            pool: Pool::sharing(connections, self.opened.clone(), self.sources.clone()),
            net: self.clone(),
        }
    }

    async fn fetch(&self, pool: &Pool, url: &str, class: Class) -> Result<Fetched, FetchError> {
        let t0 = Instant::now();
        let Some((authority, req)) = request_for(url) else {
            self.rec.lock().error("bad_url".into());
            return Err(FetchError::Failed);
        };
        // The harness's own queue: waiting for a connection slot. Not the edge's time.
        let (permit, host) = match pool.slot(&authority, t0 + self.timeout).await {
            Ok(x) => x,
            Err(e) => {
                self.rec.lock().error(e.as_str().into());
                return Err(FetchError::Failed);
            }
        };
        // The edge's clock starts here: connect (if a new connection is needed), head, body.
        let t1 = Instant::now();
        let waited = t1 - t0;
        let deadline = t1 + self.timeout;
        let sent = match pool.send(permit, host, &authority, req, deadline).await {
            Ok(s) => s,
            Err(e) => {
                self.rec.lock().error(e.as_str().into());
                return Err(FetchError::Failed);
            }
        };
        let ttfb = t1.elapsed();
        let resp = sent.response;
        let status = resp.status();
        let cache = resp
            .headers()
            .get("x-cache")
            .or_else(|| resp.headers().get("x-cache-status"))
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split([',', ' ', ';'])
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase()
            })
            .unwrap_or_else(|| "-".into());
        let first = class == Class::Segment
            && hit_or_collapsed(
                resp.headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                &cache,
            );
        if class == Class::Segment && status.is_success() {
            // The earliest sent request of the object is the one that tells whether it was
            // there (or being fetched) before anyone asked; concurrent heads arrive in any order.
            let mut rec = self.rec.lock();
            if rec.first_requests.len() < FIRST_REQUESTS {
                // Keyed without the query (a token or CMCD does not make another object).
                let path = url.split('?').next().unwrap_or(url).to_string();
                let this = FirstRequest {
                    hit_or_collapsed: first,
                    ttfb_us: us(ttfb),
                    sent: t1,
                };
                rec.first_requests
                    .entry(path)
                    .and_modify(|f| {
                        if t1 < f.sent {
                            *f = this;
                        }
                    })
                    .or_insert(this);
            }
        }
        let keep = matches!(class, Class::Master | Class::Playlist);
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let mut bytes = 0u64;
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        bytes += d.len() as u64;
                        if keep {
                            buf.extend_from_slice(&d);
                        }
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    self.rec.lock().error("body".into());
                    return Err(FetchError::Failed);
                }
                Err(_) => {
                    self.rec.lock().error("timeout_body".into());
                    return Err(FetchError::Failed);
                }
            }
        }
        // The whole body was read: the connection can carry the next request.
        sent.checkout.release();
        let total = t1.elapsed();
        // `timeout_at` lets a response through when the task is polled after the deadline (the
        // future is polled before the timer). Late is late: count it as a timeout, not a success.
        if ttfb > self.timeout || total > self.timeout {
            let kind = if ttfb > self.timeout {
                "timeout_head"
            } else {
                "timeout_body"
            };
            self.rec.lock().error(kind.into());
            return Err(FetchError::Failed);
        }
        let now = Instant::now();
        let mut rec = self.rec.lock();
        let _ = rec.pool_wait.record(us(waited));
        if !status.is_success() {
            rec.error(format!("http_{}", status.as_u16()));
            let c = rec.classes.get_mut(&class).expect("every class present");
            c.requests += 1;
            return Err(FetchError::Status(status.as_u16()));
        }
        let sec = rec.second(now);
        sec.requests += 1;
        sec.bytes += bytes;
        if class == Class::Segment {
            let _ = sec.seg_ttfb.record(us(ttfb));
            let _ = sec.seg_total.record(us(total));
        }
        let c = rec.classes.get_mut(&class).expect("every class present");
        c.requests += 1;
        c.ok += 1;
        c.bytes += bytes;
        let _ = c.ttfb.record(us(ttfb));
        let _ = c.total.record(us(total));
        let _ = c.wait.record(us(waited));
        *c.cache.entry(cache).or_default() += 1;
        Ok(Fetched {
            body: buf.freeze(),
            bytes,
            total,
        })
    }
}

/// One viewer's own connection(s) over the run's shared recorder (per-viewer mode). Dropped
/// when the viewer leaves, closing its connections.
pub struct ViewerNet {
    net: Arc<HttpNet>,
    pool: Pool,
}

impl Net for ViewerNet {
    fn get(
        &self,
        url: &str,
        class: Class,
    ) -> impl std::future::Future<Output = Result<Fetched, FetchError>> + Send {
        self.net.fetch(&self.pool, url, class)
    }
    fn stall(&self, d: Duration) {
        self.net.stall(d)
    }
    fn parse_error(&self) {
        self.net.parse_error()
    }
    fn startup(&self, d: Duration) {
        self.net.startup(d)
    }
    fn live_latency(&self, d: Duration) {
        self.net.live_latency(d)
    }
    fn watched(&self, d: Duration) {
        self.net.watched(d)
    }
}

impl Net for HttpNet {
    fn get(
        &self,
        url: &str,
        class: Class,
    ) -> impl std::future::Future<Output = Result<Fetched, FetchError>> + Send {
        self.fetch(&self.pool, url, class)
    }
    fn stall(&self, d: Duration) {
        let mut r = self.rec.lock();
        r.stalls += 1;
        r.stalled += d;
        r.second(Instant::now()).stalls += 1;
    }
    fn parse_error(&self) {
        let mut r = self.rec.lock();
        r.parse_errors += 1;
        r.error("parse".into());
    }
    fn startup(&self, d: Duration) {
        let _ = self.rec.lock().startup.record(us(d));
    }
    fn live_latency(&self, d: Duration) {
        let _ = self.rec.lock().live_latency.record(us(d));
    }
    fn watched(&self, d: Duration) {
        self.rec.lock().watched += d;
    }
}

/// The named load shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Joins spread evenly over the ramp; players start 3 segments behind the live edge.
    Steady,
    /// Every viewer joins within the burst window.
    Burst,
    /// Every viewer sits at the live edge and asks for each new segment as soon as it exists.
    SegmentStorm,
    /// Random seeks in a VOD asset.
    Vod,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Burst => "burst",
            Scenario::SegmentStorm => "segment-storm",
            Scenario::Vod => "vod",
        }
    }
}

/// A run's parameters (already validated).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The first of `targets` (the stream's path, for `/__stats`).
    pub target: Url,
    /// Every edge of the tier under test; viewer `i` plays from `targets[i % len]`.
    pub targets: Vec<Url>,
    pub origin_stats: Option<Url>,
    pub viewers: u64,
    pub duration: Duration,
    pub scenario: Scenario,
    pub ramp: Duration,
    pub burst_window: Duration,
    pub mix: Vec<u32>,
    pub abr: bool,
    pub timeout: Duration,
    /// Per-viewer connections (default) or one shared keep-alive pool of N per host.
    pub mode: ConnMode,
    /// Loopback source addresses (127.0.0.1..=N) new connections to a loopback target use.
    pub sources: usize,
    pub seed: u64,
    /// HLS viewers behave like Low-Latency HLS players (blocking reloads, preload hints).
    pub ll: bool,
    /// The viewers this process runs (all of them unless the run is spread over processes).
    pub share: Share,
}

/// Which of a run's viewers one process runs: viewer `i` of the schedule when
/// `i % count == index`. Interleaved, so each process gets the same mix of join times,
/// renditions and targets as the whole run, and the schedule stays the whole run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u64,
    pub count: u64,
}

impl Share {
    /// Every viewer: the one-process run.
    pub const ALL: Share = Share { index: 0, count: 1 };

    pub fn has(self, viewer: u64) -> bool {
        viewer % self.count.max(1) == self.index
    }

    /// How many of `viewers` this share runs.
    pub fn of(self, viewers: u64) -> u64 {
        let count = self.count.max(1);
        if self.index >= viewers {
            return 0;
        }
        (viewers - self.index).div_ceil(count)
    }

    /// This share of a pool of `n` connections (the first `n % count` shares get one more).
    pub fn of_pool(self, n: usize) -> usize {
        let count = self.count.max(1) as usize;
        n / count + usize::from((self.index as usize) < n % count)
    }
}

/// The join schedule: (join offset, pick) per viewer.
pub fn schedule(cfg: &RunConfig) -> Vec<(Duration, Pick)> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let spread = match cfg.scenario {
        Scenario::Steady | Scenario::Vod => cfg.ramp,
        Scenario::Burst | Scenario::SegmentStorm => cfg.burst_window,
    };
    let weight_sum: u32 = cfg.mix.iter().sum::<u32>().max(1);
    (0..cfg.viewers)
        .map(|i| {
            let at = match cfg.scenario {
                // Evenly spaced, so the arrival rate is constant.
                Scenario::Steady | Scenario::Vod => {
                    spread.mul_f64(i as f64 / cfg.viewers.max(1) as f64)
                }
                Scenario::Burst | Scenario::SegmentStorm => spread.mul_f64(rng.gen::<f64>()),
            };
            let pick = if cfg.abr {
                Pick::Abr
            } else {
                // Weighted pick by position so the mix is exact, not just expected.
                let slot = ((i as u128 * weight_sum as u128) / cfg.viewers.max(1) as u128) as u32;
                let mut acc = 0;
                let idx = cfg
                    .mix
                    .iter()
                    .position(|w| {
                        acc += w;
                        slot < acc
                    })
                    .unwrap_or(0);
                Pick::Fixed(idx)
            };
            (at, pick)
        })
        .collect()
}

/// Raises the soft open-file limit to the hard limit (and the hard one to `want` when it is
/// lower and the process may raise it). Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_max < want {
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return want;
            }
        }
        // An unlimited hard limit cannot be the soft one (the kernel caps at fs.nr_open): then
        // settle for `want`.
        for soft in [lim.rlim_max, want.min(lim.rlim_max)] {
            if soft <= lim.rlim_cur {
                break;
            }
            let up = libc::rlimit {
                rlim_cur: soft,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return soft;
            }
        }
        lim.rlim_cur
    }
}

/// Reads the origin simulator's counters (`/__stats`), filtered by `prefix`.
pub async fn stats_json(
    stats: &Url,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut u = stats.clone();
    u.query_pairs_mut().clear().append_pair("prefix", prefix);
    let req = Request::get(u.as_str()).body(Empty::new())?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .context("origin stats: timed out")?
        .with_context(|| format!("origin stats: GET {u}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "origin stats: GET {u} -> {}",
        resp.status()
    );
    let body = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .context("origin stats: body timed out")??
        .to_bytes();
    serde_json::from_slice(&body).context("origin stats: not JSON")
}

/// Request counts per path under `prefix` from the simulator's `/__stats`.
pub async fn origin_counts(
    stats: &Url,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let v = stats_json(stats, prefix, timeout).await?;
    let paths = v
        .get("paths")
        .and_then(|p| p.as_object())
        .context("origin stats: no \"paths\" object")?;
    Ok(paths
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect())
}

/// Blocking playlist reloads per `playlist?_HLS_msn=M&_HLS_part=P` under `prefix` (LL-HLS).
pub async fn origin_blocking(
    stats: &Url,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let v = stats_json(stats, prefix, timeout).await?;
    let b = v
        .get("blocking")
        .and_then(|p| p.as_object())
        .context("origin stats: no \"blocking\" object")?;
    Ok(b.iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect())
}

/// Checks that `url`'s host accepts TCP connections (without touching any cache).
pub async fn reachable(url: &Url, timeout: Duration) -> anyhow::Result<()> {
    let host = url.host_str().context("URL without host")?;
    let port = url.port_or_known_default().context("URL without port")?;
    tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .with_context(|| format!("{host}:{port}: connect timed out"))?
        .with_context(|| format!("{host}:{port} is unreachable"))?;
    Ok(())
}

impl RunConfig {
    /// The targets as one report field (`a, b, c`).
    pub fn targets_label(&self) -> String {
        let all: Vec<&str> = self.targets.iter().map(Url::as_str).collect();
        if all.is_empty() {
            self.target.to_string()
        } else {
            all.join(", ")
        }
    }
}

/// Runs every viewer to completion. `tick` is called about once a second with the recorder.
pub async fn run(
    cfg: &RunConfig,
    net: Arc<HttpNet>,
    mut tick: impl FnMut(&Recorder),
) -> Vec<viewer::Outcome> {
    let start = net.rec.lock().start;
    let leave_at = start + cfg.duration;
    let mode = match cfg.scenario {
        Scenario::Steady | Scenario::Burst => Mode::Live,
        Scenario::SegmentStorm => Mode::Storm,
        Scenario::Vod => Mode::Vod,
    };
    // Tie the tokio clock to the wall clock once, so viewers can turn PDTs into instants.
    let (wall0, inst0) = (SystemTime::now(), Instant::now());
    let wall = move || wall0 + inst0.elapsed();
    let mut set = tokio::task::JoinSet::new();
    for (i, (at, pick)) in schedule(cfg).into_iter().enumerate() {
        if !cfg.share.has(i as u64) {
            continue;
        }
        let plan = Plan {
            target: cfg
                .targets
                .get(i % cfg.targets.len().max(1))
                .unwrap_or(&cfg.target)
                .clone(),
            join_at: start + at,
            leave_at,
            pick,
            mode,
            seed: cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ll: cfg.ll,
        };
        let net = net.clone();
        let mode_conn = cfg.mode;
        set.spawn(async move {
            tokio::time::sleep_until(plan.join_at).await;
            {
                let mut r = net.rec.lock();
                r.viewers_started += 1;
                r.viewers_active += 1;
            }
            let out = match mode_conn {
                ConnMode::Shared(_) => viewer::run(&*net, &plan, &wall).await,
                ConnMode::PerViewer => {
                    let own = net.viewer(if plan.ll { 2 } else { 1 });
                    viewer::run(&own, &plan, &wall).await
                }
            };
            let mut r = net.rec.lock();
            r.viewers_active -= 1;
            r.viewers_done += 1;
            out
        });
    }
    let mut outs = Vec::with_capacity(cfg.share.of(cfg.viewers) as usize);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    // Hard bound: every viewer leaves at `leave_at`; a request in flight then ends within two
    // timeouts. Anything still running after that is aborted (and reported as unfinished).
    // A request may wait up to the timeout for a connection slot and then up to the timeout
    // for the edge.
    let hard_stop = leave_at + cfg.timeout * 2 + Duration::from_secs(2);
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(o)) => outs.push(o),
                Some(Err(_)) => net.rec.lock().error("viewer_panic".into()),
                None => break,
            },
            _ = ticker.tick() => tick(&net.rec.lock()),
            () = tokio::time::sleep_until(hard_stop) => {
                let n = set.len() as u64;
                set.abort_all();
                *net.rec.lock().errors.entry("viewer_unfinished".into()).or_default() += n;
                break;
            }
        }
    }
    outs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scenario: Scenario, viewers: u64) -> RunConfig {
        RunConfig {
            target: Url::parse("http://127.0.0.1:1/live/x/master.m3u8").expect("url"),
            targets: Vec::new(),
            origin_stats: None,
            viewers,
            duration: Duration::from_secs(10),
            scenario,
            ramp: Duration::from_secs(5),
            burst_window: Duration::from_millis(500),
            mix: vec![3, 1],
            abr: false,
            timeout: Duration::from_secs(5),
            mode: ConnMode::PerViewer,
            sources: 1,
            seed: 1,
            ll: false,
            share: Share::ALL,
        }
    }

    #[test]
    fn schedules_follow_the_scenario() {
        let s = schedule(&cfg(Scenario::Steady, 100));
        assert_eq!(s[0].0, Duration::ZERO);
        assert_eq!(s[50].0, Duration::from_millis(2500));
        let picks = s.iter().filter(|(_, p)| *p == Pick::Fixed(0)).count();
        assert_eq!(picks, 75, "mix 3:1");
        let b = schedule(&cfg(Scenario::Burst, 1000));
        assert!(b.iter().all(|(t, _)| *t < Duration::from_millis(500)));
    }

    #[test]
    fn shares_split_viewers_and_a_pool_without_gaps_or_overlap() {
        for (viewers, count) in [(40u64, 2u64), (41, 3), (2, 5), (20_000, 2)] {
            let shares: Vec<Share> = (0..count).map(|index| Share { index, count }).collect();
            let total: u64 = shares.iter().map(|s| s.of(viewers)).sum();
            assert_eq!(total, viewers);
            for i in 0..viewers {
                assert_eq!(shares.iter().filter(|s| s.has(i)).count(), 1);
            }
            for s in &shares {
                assert_eq!(
                    s.of(viewers),
                    (0..viewers).filter(|i| s.has(*i)).count() as u64
                );
            }
            let pool: usize = shares.iter().map(|s| s.of_pool(7)).sum();
            assert_eq!(pool, 7);
        }
        assert_eq!(Share::ALL.of(9), 9);
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let soft = raise_nofile(1);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes a valid local struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        if lim.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(lim.rlim_cur, lim.rlim_max);
        }
    }

    /// A response that is only looked at after its deadline (the harness's runtime was busy)
    /// is a timeout, not a success with a TTFB above the timeout.
    #[tokio::test]
    async fn a_late_response_counts_as_a_timeout() {
        // The server runs on its own thread and runtime, so blocking this one does not stop it.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                // One connection is enough: the harness sends a single request.
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"late")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        });
        let rec = Arc::new(Mutex::new(Recorder::new(Instant::now())));
        let net = Arc::new(HttpNet::new(Duration::from_millis(50), 4, rec.clone()));
        let n = net.clone();
        let url = format!("http://{addr}/x.m4s");
        let task = tokio::spawn(async move { n.get(&url, Class::Segment).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Block this (current-thread) runtime past the deadline while the response arrives.
        std::thread::sleep(Duration::from_millis(300));
        let r = task.await.expect("task");
        assert!(r.is_err(), "{r:?}");
        let rec = rec.lock();
        assert_eq!(rec.classes[&Class::Segment].ok, 0);
        assert_eq!(rec.errors.get("timeout_head"), Some(&1), "{:?}", rec.errors);
    }
}
