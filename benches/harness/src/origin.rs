//! `vedge origin`: the live packager simulator. Serves endless live HLS and DASH streams (and VOD
//! versions of them) for any stream name, from looped fMP4 fixtures, with per-request latency,
//! throttled bodies and fault injection, and counts requests per path at `/__stats`.
//!
//! URL map (`{kind}` is `live` or `vod`, `{s}` any stream name, `{r}` a rendition `r0`, `r1`, ...):
//! - `/{kind}/{s}/master.m3u8`, `/{kind}/{s}/{r}/media.m3u8`: HLS multivariant and media playlists
//! - `/{kind}/{s}/manifest.mpd` (`$Number$`), `/{kind}/{s}/manifest-timeline.mpd` (`$Time$`)
//! - `/{kind}/{s}/{r}/init.mp4`, `/{kind}/{s}/{r}/seg_{n}.m4s`, `/{kind}/{s}/{r}/t_{time}.m4s`
//! - `/{kind}/{s}/{r}/part_{n}_{k}.m4s`: part `k` of segment `n` (low-latency streams)
//! - `/cat/{id}.ts`: object `id` of the synthetic catalogue (`catalogue`: 1-2 MiB, deterministic
//!   bytes, long max-age, ETag/Last-Modified, single byte ranges), counted in `/__stats` as
//!   `catalogue.requests` and `catalogue.bytes` (body bytes sent) rather than per path
//! - `/ll/{s}/...`: the same stream low-latency for both HLS and DASH, whatever the flags
//! - `/__stats[?prefix=P]` (JSON request counts, blocking reloads per (playlist, msn, part)),
//!   `/__reset`, `/__time` (ISO clock for DASH)
//! - anything under a `--static PREFIX=DIR`: files (with `ETag` and single `Range` support)
//!
//! A live stream's clock starts at its first request (see `playlist::Timeline`), so a new stream
//! name is a cold start.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use rand::Rng as _;
use tokio::net::TcpListener;
use tokio::time::Instant;

use vedge_manifest::duration::parse as parse_duration;

use super::byterange;
use super::catalogue;
use super::cmaf::PartedRendition;
use super::ll::{self, Block, Delivery, PartPlan, Produced};
use super::media::{self, Rendition};
use super::playlist::{self, DashAddressing, RenditionInfo, Timeline};

/// Flags of `vedge origin`.
#[derive(Debug, clap::Args)]
pub struct OriginArgs {
    /// Listener address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: String,
    /// Segment duration in seconds (a multiple of the fixtures' 2 s GOP).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub segment_duration: Duration,
    /// Segments in the live playlist window (also the DASH timeShiftBufferDepth).
    #[arg(long, default_value_t = 6)]
    pub window: u64,
    /// Number of renditions (r0, r1, ...; they cycle over the two fixture bit rates).
    #[arg(long, default_value_t = 2)]
    pub renditions: usize,
    /// Segments in a VOD asset (/vod/...).
    #[arg(long, default_value_t = 30)]
    pub vod_segments: u64,
    /// Cache-Control of playlists and MPDs.
    #[arg(long, default_value = "max-age=1")]
    pub playlist_cache_control: String,
    /// Cache-Control of init and media segments.
    #[arg(long, default_value = "max-age=86400")]
    pub segment_cache_control: String,
    /// Added latency before each segment response: `200ms`, `100ms-300ms` (uniform) or
    /// `exp:100ms` (exponential with that mean).
    #[arg(long, default_value = "0ms", value_parser = Latency::parse)]
    pub segment_latency: Latency,
    /// Added latency before each playlist/MPD response (same syntax).
    #[arg(long, default_value = "0ms", value_parser = Latency::parse)]
    pub manifest_latency: Latency,
    /// Throughput limit per response in bytes/s (trickles the body), e.g. 500000. [default: none]
    #[arg(long)]
    pub rate_limit: Option<u64>,
    /// Fraction of stream requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of stream responses that stall halfway through the body for `--stall`.
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,
    /// Length of an injected stall.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub stall: Duration,
    /// Fraction of stream responses cut off halfway (the connection is closed).
    #[arg(long, default_value_t = 0.0)]
    pub truncate_rate: f64,
    /// Serve files: `PREFIX=DIR` or `DIR` (prefix `/`). Repeatable; longest prefix wins.
    #[arg(long = "static", value_name = "PREFIX=DIR")]
    pub statics: Vec<String>,
    /// Low-Latency HLS on /live/ streams: parts, preload hints, blocking playlist reloads, delta
    /// updates (always on under /ll/).
    #[arg(long)]
    pub ll_hls: bool,
    /// Low-latency DASH on /live/ streams: chunked CMAF segments streamed as produced,
    /// availabilityTimeOffset, a ServiceDescription (always on under /ll/).
    #[arg(long)]
    pub ll_dash: bool,
    /// Duration of an LL-HLS part and of an LL-DASH CMAF chunk (rounded to whole frames).
    #[arg(long, default_value = "333ms", value_parser = parse_duration)]
    pub part_duration: Duration,
    /// LL-DASH ServiceDescription latency target.
    #[arg(long, default_value = "2500ms", value_parser = parse_duration)]
    pub dash_latency_target: Duration,
}

/// Options of the simulator as a library (`vedge demo` embeds it).
#[derive(Debug, Clone)]
pub struct OriginOptions {
    pub segment_duration: Duration,
    pub window: u64,
    pub renditions: usize,
    pub vod_segments: u64,
    pub playlist_cache_control: String,
    pub segment_cache_control: String,
    pub segment_latency: Latency,
    pub manifest_latency: Latency,
    pub rate_limit: Option<u64>,
    pub error_rate: f64,
    pub stall_rate: f64,
    pub stall: Duration,
    pub truncate_rate: f64,
    /// (URL prefix, directory), e.g. ("/player/", "tests/players/www").
    pub statics: Vec<(String, PathBuf)>,
    pub ll: LowLatency,
}

/// The low-latency modes (`--ll-hls`, `--ll-dash`).
#[derive(Debug, Clone)]
pub struct LowLatency {
    pub hls: bool,
    pub dash: bool,
    pub part_duration: Duration,
    pub dash_latency_target: Duration,
    /// Longest hold of a blocking reload, a preload-hint or chunked-segment request before its
    /// object starts. The spec's limit is three target durations (the default, `None`); tests
    /// shorten it.
    pub hold_limit: Option<Duration>,
}

impl Default for LowLatency {
    fn default() -> Self {
        LowLatency {
            hls: false,
            dash: false,
            part_duration: Duration::from_millis(333),
            dash_latency_target: Duration::from_millis(2500),
            hold_limit: None,
        }
    }
}

impl Default for OriginOptions {
    fn default() -> Self {
        OriginOptions {
            segment_duration: Duration::from_secs(2),
            window: 6,
            renditions: 2,
            vod_segments: 30,
            playlist_cache_control: "max-age=1".into(),
            segment_cache_control: "max-age=86400".into(),
            segment_latency: Latency::Fixed(Duration::ZERO),
            manifest_latency: Latency::Fixed(Duration::ZERO),
            rate_limit: None,
            error_rate: 0.0,
            stall_rate: 0.0,
            stall: Duration::from_secs(5),
            truncate_rate: 0.0,
            statics: Vec::new(),
            ll: LowLatency::default(),
        }
    }
}

impl TryFrom<&OriginArgs> for OriginOptions {
    type Error = anyhow::Error;
    fn try_from(a: &OriginArgs) -> anyhow::Result<Self> {
        let statics = a
            .statics
            .iter()
            .map(|s| match s.split_once('=') {
                Some((p, d)) => (p.to_string(), PathBuf::from(d)),
                None => ("/".to_string(), PathBuf::from(s)),
            })
            .collect();
        Ok(OriginOptions {
            segment_duration: a.segment_duration,
            window: a.window,
            renditions: a.renditions,
            vod_segments: a.vod_segments,
            playlist_cache_control: a.playlist_cache_control.clone(),
            segment_cache_control: a.segment_cache_control.clone(),
            segment_latency: a.segment_latency,
            manifest_latency: a.manifest_latency,
            rate_limit: a.rate_limit,
            error_rate: a.error_rate,
            stall_rate: a.stall_rate,
            stall: a.stall,
            truncate_rate: a.truncate_rate,
            statics,
            ll: LowLatency {
                hls: a.ll_hls,
                dash: a.ll_dash,
                part_duration: a.part_duration,
                dash_latency_target: a.dash_latency_target,
                hold_limit: None,
            },
        })
    }
}

impl OriginOptions {
    /// Checks every field; the message names the flag to fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs = Vec::new();
        let chunk = media::chunk_seconds();
        let secs = self.segment_duration.as_secs();
        if self.segment_duration.subsec_nanos() != 0 || secs == 0 || secs % chunk != 0 {
            errs.push(format!(
                "--segment-duration must be a whole multiple of {chunk}s (the fixtures' GOP)"
            ));
        }
        if self.window < 3 {
            errs.push("--window must be at least 3 segments".into());
        }
        if self.renditions == 0 {
            errs.push("--renditions must be at least 1".into());
        }
        if self.vod_segments == 0 {
            errs.push("--vod-segments must be at least 1".into());
        }
        for (name, r) in [
            ("--error-rate", self.error_rate),
            ("--stall-rate", self.stall_rate),
            ("--truncate-rate", self.truncate_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                errs.push(format!("{name} must be between 0 and 1"));
            }
        }
        if self.ll.part_duration < Duration::from_millis(34)
            || self.ll.part_duration > Duration::from_secs(chunk)
        {
            errs.push(format!(
                "--part-duration must be between one frame (34ms) and {chunk}s"
            ));
        }
        // The part layout needs valid durations and renditions to be judged.
        if errs.is_empty() {
            let plans = media::builtin()
                .context("loading the compiled-in live fixtures")
                .and_then(|f| part_plans(self, &f));
            if let Err(e) = plans {
                errs.push(format!("{e:#}"));
            }
        }
        if self.rate_limit == Some(0) {
            errs.push("--rate-limit must be positive".into());
        }
        for (p, d) in &self.statics {
            if !p.starts_with('/') {
                errs.push(format!("--static prefix {p:?} must start with /"));
            }
            if !d.is_dir() {
                errs.push(format!("--static directory {} does not exist", d.display()));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid origin options:\n  {}", errs.join("\n  "))
        }
    }
}

/// Added latency per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform(Duration, Duration),
    Exponential(Duration),
}

impl Latency {
    /// `200ms`, `100ms-300ms`, `exp:100ms`.
    pub fn parse(s: &str) -> Result<Latency, String> {
        if let Some(m) = s.strip_prefix("exp:") {
            return Ok(Latency::Exponential(parse_duration(m)?));
        }
        if let Some((lo, hi)) = s.split_once('-') {
            let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
            if hi < lo {
                return Err(format!("{s}: upper bound below lower bound"));
            }
            return Ok(Latency::Uniform(lo, hi));
        }
        Ok(Latency::Fixed(parse_duration(s)?))
    }

    fn sample(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) if hi > lo => rand::thread_rng().gen_range(lo..=hi),
            Latency::Uniform(lo, _) => lo,
            Latency::Exponential(mean) => {
                let u: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
                // Capped at 20x the mean so that one draw cannot hang a run.
                mean.mul_f64((-u.ln()).min(20.0))
            }
        }
    }
}

/// Each rendition's part layout: its fixture cut into parts of `--part-duration`. A duration that
/// would leave a part RFC 8216bis 4.4.4.9 forbids is refused (by `validate`, before binding)
/// rather than served against the spec's MUST: a validator would reject every playlist.
fn part_plans(
    opts: &OriginOptions,
    fixtures: &[media::Rendition],
) -> anyhow::Result<Vec<PartPlan>> {
    let chunk = media::chunk_seconds();
    let chunks_per_segment = opts.segment_duration.as_secs() / chunk;
    let plans = (0..opts.renditions)
        .filter_map(|i| fixtures.get(i % fixtures.len().max(1)))
        .map(|f| {
            let part_ticks = (opts.ll.part_duration.as_secs_f64() * f.timescale as f64).round();
            Ok(PartPlan {
                media: PartedRendition::cut(f, part_ticks as u64)?,
                chunks_per_segment,
                segment: opts.segment_duration,
            })
        })
        .collect::<Result<Vec<_>, media::MediaError>>()
        .context("cutting the fixtures into parts")?;
    if let Some(short) = plans.iter().find_map(PartPlan::short_part) {
        anyhow::bail!(
            "--part-duration {:?} leaves a {:.0}ms part inside each {}s segment, under 85% of \
             PART-TARGET (RFC 8216bis 4.4.4.9): use a part duration that divides the {chunk}s \
             GOP into whole frames (at the fixtures' 30 fps: 100ms, 200ms, 333ms, 500ms) or \
             --segment-duration {chunk}s",
            opts.ll.part_duration,
            short.as_secs_f64() * 1000.0,
            opts.segment_duration.as_secs()
        );
    }
    Ok(plans)
}

/// Entry point of `vedge origin`.
pub async fn run_cli(args: OriginArgs) -> anyhow::Result<()> {
    let opts = OriginOptions::try_from(&args)?;
    opts.validate()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("vedge origin: http://{addr}/live/<stream>/master.m3u8 | /live/<stream>/manifest.mpd | /ll/<stream>/... | /__stats");
    serve(opts, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

#[derive(Default)]
struct PathCount {
    count: u64,
    inflight: u64,
    max_inflight: u64,
}

struct State {
    opts: OriginOptions,
    fixtures: Vec<Rendition>,
    infos: Vec<RenditionInfo>,
    chunks_per_segment: u64,
    started: Instant,
    /// Live streams by name: (tokio instant, wall clock) of their first request.
    streams: Mutex<HashMap<String, (Instant, SystemTime)>>,
    counts: Mutex<HashMap<String, PathCount>>,
    /// Part layout per rendition (low-latency streams).
    plans: Vec<PartPlan>,
    /// Blocking playlist reloads by `path?_HLS_msn=M[&_HLS_part=P][&_HLS_skip=YES]`.
    blocking: Mutex<HashMap<String, u64>>,
    /// Requests and body bytes of `/cat/` objects.
    cat: Arc<CatCounters>,
}

/// What `/cat/` served: aggregate counters (a 16 GiB catalogue is ~11k paths; the per-path map
/// and its JSON would dwarf what a byte-hit-ratio run needs).
#[derive(Default)]
struct CatCounters {
    requests: AtomicU64,
    /// Body bytes handed to the connection (counted per 256 KiB chunk as it is sent, so a fill
    /// the edge abandons counts only what went out).
    bytes: AtomicU64,
    not_modified: AtomicU64,
    inflight: AtomicU64,
    max_inflight: AtomicU64,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Serves the simulator on `listener` until `shutdown` completes, then lets open responses finish
/// for up to 2 s.
pub async fn serve(
    opts: OriginOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    opts.validate()?;
    let fixtures = media::builtin().context("loading the compiled-in live fixtures")?;
    let infos = (0..opts.renditions)
        .map(|i| {
            let f = &fixtures[i % fixtures.len()];
            RenditionInfo {
                id: format!("r{i}"),
                width: f.width,
                height: f.height,
                bandwidth: f.bandwidth,
                codecs: f.codecs.clone(),
                timescale: f.timescale,
            }
        })
        .collect();
    let chunks_per_segment = opts.segment_duration.as_secs() / media::chunk_seconds();
    let plans = part_plans(&opts, &fixtures)?;
    let state = Arc::new(State {
        opts,
        fixtures,
        infos,
        chunks_per_segment,
        started: Instant::now(),
        streams: Mutex::new(HashMap::new()),
        counts: Mutex::new(HashMap::new()),
        plans,
        blocking: Mutex::new(HashMap::new()),
        cat: Arc::default(),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        // Races a new connection against shutdown; accept errors (EMFILE) back off briefly.
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "origin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(handle(&st, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
    Ok(())
}

fn full(status: StatusCode, ctype: &str, cc: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(ctype) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn not_found() -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        "text/plain",
        "no-store",
        "not found\n",
    )
}

/// What a stream path names.
#[derive(Debug, PartialEq)]
enum Object {
    Master,
    Media(usize),
    Mpd(DashAddressing),
    Init(usize),
    Segment(usize, u64),
    SegmentAtTime(usize, u64),
    /// Segment, part index.
    Part(usize, u64, usize),
}

fn parse_object(rest: &[&str], renditions: usize) -> Option<Object> {
    let rendition = |r: &str| {
        r.strip_prefix('r')?
            .parse::<usize>()
            .ok()
            .filter(|i| *i < renditions)
    };
    match rest {
        ["master.m3u8"] => Some(Object::Master),
        ["manifest.mpd"] => Some(Object::Mpd(DashAddressing::Number)),
        ["manifest-timeline.mpd"] => Some(Object::Mpd(DashAddressing::Timeline)),
        [r, f] => {
            let r = rendition(r)?;
            if *f == "media.m3u8" {
                Some(Object::Media(r))
            } else if *f == "init.mp4" {
                Some(Object::Init(r))
            } else if let Some(n) = f.strip_prefix("seg_").and_then(|x| x.strip_suffix(".m4s")) {
                Some(Object::Segment(r, n.parse().ok()?))
            } else if let Some(nk) = f.strip_prefix("part_").and_then(|x| x.strip_suffix(".m4s")) {
                let (n, k) = nk.split_once('_')?;
                Some(Object::Part(r, n.parse().ok()?, k.parse().ok()?))
            } else {
                let t = f.strip_prefix("t_").and_then(|x| x.strip_suffix(".m4s"))?;
                Some(Object::SegmentAtTime(r, t.parse().ok()?))
            }
        }
        _ => None,
    }
}

async fn handle(st: &State, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "no-store",
            "GET only\n",
        );
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/__stats" => return stats(st, req.uri().query()),
        "/__reset" => {
            st.counts.lock().clear();
            st.blocking.lock().clear();
            for c in [
                &st.cat.requests,
                &st.cat.bytes,
                &st.cat.not_modified,
                &st.cat.max_inflight,
            ] {
                c.store(0, Ordering::Relaxed);
            }
            return full(StatusCode::OK, "application/json", "no-store", "{}");
        }
        "/__time" => {
            return full(
                StatusCode::OK,
                "text/plain",
                "no-store",
                playlist::rfc3339(SystemTime::now()),
            )
        }
        _ => {}
    }
    if let Some(id) = catalogue::parse_path(&path) {
        return catalogue_object(st, &req, id);
    }
    {
        let mut c = st.counts.lock();
        let e = c.entry(path.clone()).or_default();
        e.count += 1;
        e.inflight += 1;
        e.max_inflight = e.max_inflight.max(e.inflight);
    }
    let query = req.uri().query();
    if path.ends_with(".m3u8") {
        if let Some(k) = Delivery::parse(query)
            .ok()
            .and_then(|d| ll::stats_key(&d, &path))
        {
            *st.blocking.lock().entry(k).or_default() += 1;
        }
    }
    let resp = respond(st, &path, query, req.headers()).await;
    if let Some(e) = st.counts.lock().get_mut(&path) {
        e.inflight = e.inflight.saturating_sub(1);
    }
    if req.method() == Method::HEAD {
        let (mut parts, body) = resp.into_parts();
        // What a GET would send (ingest's room check sizes objects with HEAD).
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(n));
        }
        return Response::from_parts(
            parts,
            Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
    }
    resp
}

async fn respond(
    st: &State,
    path: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Response<Body> {
    // Operator-given static prefixes win over the simulated streams (e.g. `--static /vod/=DIR`).
    if st
        .opts
        .statics
        .iter()
        .any(|(p, _)| path.starts_with(p.as_str()))
    {
        return static_file(st, path, headers).await;
    }
    let segs: Vec<&str> = path.split('/').collect();
    let (kind, stream, rest) = match segs.as_slice() {
        ["", kind @ ("live" | "vod" | "ll"), stream, rest @ ..] if !stream.is_empty() => {
            (*kind, *stream, rest)
        }
        _ => return static_file(st, path, headers).await,
    };
    let Some(obj) = parse_object(rest, st.opts.renditions) else {
        return not_found();
    };
    let vod = (kind == "vod").then_some(st.opts.vod_segments);
    let o = &st.opts;
    let (ll_hls, ll_dash) = match kind {
        "ll" => (true, true),
        "live" => (o.ll.hls, o.ll.dash),
        _ => (false, false),
    };
    let low_latency = ll_hls || ll_dash;
    let window = if low_latency {
        ll::ll_window(o.window)
    } else {
        o.window
    };
    let (tl, since) = match vod {
        Some(_) => (
            Timeline::starting_at(SystemTime::UNIX_EPOCH, o.segment_duration, o.window),
            Duration::ZERO,
        ),
        None => {
            // /ll/x and /live/x are different streams (each its own clock).
            let key = format!("{kind}/{stream}");
            let (t0, wall0) = *st
                .streams
                .lock()
                .entry(key)
                .or_insert_with(|| (Instant::now(), SystemTime::now()));
            (
                Timeline::starting_at(wall0, o.segment_duration, window),
                t0.elapsed(),
            )
        }
    };
    let is_manifest = matches!(obj, Object::Master | Object::Media(_) | Object::Mpd(_));
    let latency = if is_manifest {
        o.manifest_latency
    } else {
        o.segment_latency
    };
    let delay = latency.sample();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if o.error_rate > 0.0 && rand::thread_rng().gen_bool(o.error_rate) {
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no-store",
            "injected error\n",
        );
    }
    // Segment numbers are checked against the clock as of the response (after the delay).
    let since = match vod {
        Some(_) => since,
        None => since + delay,
    };
    let available = |n: u64| match vod {
        Some(total) => n < total,
        None => n < tl.available(since),
    };
    if low_latency {
        if let Some(resp) = low_latency_object(st, &obj, &tl, since, query, ll_hls, ll_dash).await {
            return resp;
        }
    }
    let ticks = |r: usize| {
        let f = &st.fixtures[r % st.fixtures.len()];
        f.chunk_ticks * st.chunks_per_segment
    };
    let (ctype, cc, body): (&str, &str, Bytes) = match obj {
        Object::Master => (
            "application/vnd.apple.mpegurl",
            &o.playlist_cache_control,
            playlist::hls_master(&st.infos).into(),
        ),
        Object::Media(_) => (
            "application/vnd.apple.mpegurl",
            &o.playlist_cache_control,
            playlist::hls_media(&tl, since, vod).into(),
        ),
        Object::Mpd(a) => (
            "application/dash+xml",
            &o.playlist_cache_control,
            playlist::dash_mpd(&tl, since, &st.infos, a, vod).into(),
        ),
        Object::Init(r) => (
            "video/mp4",
            &o.segment_cache_control,
            st.fixtures[r % st.fixtures.len()].init.clone(),
        ),
        Object::Part(..) => return not_found(),
        Object::Segment(r, n) | Object::SegmentAtTime(r, n) => {
            let n = match obj {
                Object::SegmentAtTime(_, t) if t % ticks(r) == 0 => t / ticks(r),
                Object::SegmentAtTime(..) => return not_found(),
                _ => n,
            };
            if !available(n) {
                return not_found();
            }
            (
                "video/iso.segment",
                &o.segment_cache_control,
                st.fixtures[r % st.fixtures.len()].segment(n, st.chunks_per_segment),
            )
        }
    };
    paced(st, ctype, cc, body)
}

/// The low-latency answers of a live stream: the LL-HLS media playlist (blocking reloads), the
/// LL-DASH MPD, and segments and parts served whole once produced or streamed while produced.
/// `None`: not a low-latency object (the normal path answers).
async fn low_latency_object(
    st: &State,
    obj: &Object,
    tl: &Timeline,
    since: Duration,
    query: Option<&str>,
    ll_hls: bool,
    ll_dash: bool,
) -> Option<Response<Body>> {
    let o = &st.opts;
    let base = Instant::now();
    let stream_time = tl.segment * tl.window as u32 + since;
    let hold = o.ll.hold_limit.unwrap_or(tl.segment * 3);
    let plan = |r: usize| &st.plans[r % st.plans.len()];
    let text = |status, body: &str| Some(full(status, "text/plain", "no-store", body.to_string()));
    match *obj {
        Object::Media(r) if ll_hls => {
            let d = match Delivery::parse(query) {
                Ok(d) => d,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            let now = match ll::block(plan(r), d, stream_time, hold) {
                Block::Now => stream_time,
                Block::At(at) => {
                    tokio::time::sleep_until(base + (at - stream_time)).await;
                    at.max(stream_time + base.elapsed())
                }
                Block::TooFar => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "_HLS_msn more than two segments ahead\n",
                    )
                }
                Block::Timeout(d) => {
                    tokio::time::sleep(d).await;
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "blocking reload not satisfied in time\n",
                    );
                }
            };
            let reports: Vec<(String, &PartPlan)> = st
                .infos
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != r)
                .map(|(i, info)| (format!("../{}/media.m3u8", info.id), plan(i)))
                .collect();
            let body = ll::hls_media(tl, plan(r), now, d.skip, &reports);
            Some(full(
                StatusCode::OK,
                "application/vnd.apple.mpegurl",
                &o.playlist_cache_control,
                body,
            ))
        }
        Object::Mpd(a) if ll_dash => {
            let mpd = playlist::dash_mpd(tl, since, &st.infos, a, None);
            let mpd = ll::dash_low_latency(
                &mpd,
                ll::dash_availability_offset(plan(0)),
                o.ll.dash_latency_target,
            );
            Some(full(
                StatusCode::OK,
                "application/dash+xml",
                &o.playlist_cache_control,
                mpd,
            ))
        }
        Object::Segment(r, n) => Some(produced(
            st,
            ll::segment(plan(r), n),
            stream_time,
            hold,
            base,
            "video/iso.segment",
        )),
        Object::SegmentAtTime(r, t) => {
            let f = &st.fixtures[r % st.fixtures.len()];
            let seg_ticks = f.chunk_ticks * st.chunks_per_segment;
            if t % seg_ticks != 0 {
                return Some(not_found());
            }
            Some(produced(
                st,
                ll::segment(plan(r), t / seg_ticks),
                stream_time,
                hold,
                base,
                "video/iso.segment",
            ))
        }
        Object::Part(r, n, k) => match ll::part(plan(r), n, k) {
            Some((p, _start)) => Some(produced(st, p, stream_time, hold, base, "video/mp4")),
            None => Some(not_found()),
        },
        _ => None,
    }
}

/// A low-latency segment or part: whole once produced; while (or shortly before) it is produced,
/// held and streamed piece by piece as each frame exists, with chunked transfer encoding; 404 if
/// it starts more than `hold` from now.
fn produced(
    st: &State,
    p: Produced,
    now: Duration,
    hold: Duration,
    base: Instant,
    ctype: &str,
) -> Response<Body> {
    let cc = st.opts.segment_cache_control.clone();
    let Some(&(_, done_at)) = p.schedule.last() else {
        return not_found();
    };
    if done_at <= now {
        return full(StatusCode::OK, ctype, &cc, p.bytes);
    }
    let first_at = p.schedule.first().map(|e| e.1).unwrap_or(done_at);
    if first_at > now + hold {
        return not_found();
    }
    // Everything already produced goes at once, then one piece per frame as it exists.
    let produced = p.schedule.iter().filter(|e| e.1 <= now).count();
    let mut pieces: Vec<(usize, Duration)> = p.schedule[produced..].to_vec();
    if produced > 0 {
        pieces.insert(0, (p.schedule[produced - 1].0, now));
    }
    let bytes = p.bytes;
    let stream = futures_util::stream::iter(pieces)
        .scan(0usize, |sent, (end, at)| {
            let from = std::mem::replace(sent, end);
            futures_util::future::ready(Some((from, end, at)))
        })
        .then(move |(from, end, at)| {
            let chunk = bytes.slice(from..end);
            async move {
                tokio::time::sleep_until(base + at.saturating_sub(now)).await;
                Ok::<_, std::io::Error>(Frame::data(chunk))
            }
        });
    let mut r = full(StatusCode::OK, ctype, &cc, Bytes::new());
    *r.body_mut() = StreamBody::new(stream.boxed()).boxed_unsync();
    r
}

/// How long a truncated response waits after its half body before the connection is closed: the
/// time hyper has to write what it buffered. A viewer that reads nothing for that long may see
/// less than half (hyper's buffer is lost with the connection); a local edge reads at once.
const TRUNCATE_FLUSH: Duration = Duration::from_millis(100);

/// A 200 response whose body honours the throughput limit and the stall/truncation faults.
fn paced(st: &State, ctype: &str, cc: &str, body: Bytes) -> Response<Body> {
    let o = &st.opts;
    let mut rng = rand::thread_rng();
    let stall = (o.stall_rate > 0.0 && rng.gen_bool(o.stall_rate)).then_some(o.stall);
    let truncate = o.truncate_rate > 0.0 && rng.gen_bool(o.truncate_rate);
    if o.rate_limit.is_none() && stall.is_none() && !truncate {
        return full(StatusCode::OK, ctype, cc, body);
    }
    let len = body.len();
    let half = len / 2;
    let rate = o.rate_limit;
    // (remaining bytes, offset, stall still pending)
    let stream = futures_util::stream::unfold(
        (body, 0usize, stall),
        move |(body, off, stall)| async move {
            if off >= len {
                return None;
            }
            if truncate && off >= half {
                // hyper drops the connection, and with it whatever it has not written yet, as
                // soon as the body fails: one Pending first lets it flush the head and the half
                // body to the socket, so the viewer sees a 200 cut short, not a silent close.
                tokio::time::sleep(TRUNCATE_FLUSH).await;
                let e = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "injected truncation",
                );
                return Some((Err(e), (body, len, None)));
            }
            let mut stall = stall;
            if off >= half {
                if let Some(d) = stall.take() {
                    tokio::time::sleep(d).await;
                }
            }
            let mut end = (off + 16 * 1024).min(len);
            if (truncate || stall.is_some()) && off < half {
                end = end.min(half.max(off + 1));
            }
            if let Some(r) = rate {
                let secs = (end - off) as f64 / r as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            let chunk = body.slice(off..end);
            Some((Ok(Frame::data(chunk)), (body, end, stall)))
        },
    );
    let mut r = full(StatusCode::OK, ctype, cc, Bytes::new());
    *r.body_mut() = http_body_util::BodyExt::boxed_unsync(StreamBody::new(stream.boxed()));
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        r.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    r
}

fn stats(st: &State, query: Option<&str>) -> Response<Body> {
    let prefix = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("prefix="))
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let counts = st.counts.lock();
    let mut paths = serde_json::Map::new();
    let mut inflight = serde_json::Map::new();
    let mut total = 0;
    let mut keys: Vec<&String> = counts.keys().filter(|k| k.starts_with(&prefix)).collect();
    keys.sort();
    for k in keys {
        let c = &counts[k];
        total += c.count;
        paths.insert(k.clone(), c.count.into());
        inflight.insert(k.clone(), c.max_inflight.into());
    }
    drop(counts);
    let mut blocking = serde_json::Map::new();
    let b = st.blocking.lock();
    let mut keys: Vec<&String> = b.keys().filter(|k| k.starts_with(&prefix)).collect();
    keys.sort();
    for k in keys {
        blocking.insert(k.clone(), b[k].into());
    }
    drop(b);
    let v = serde_json::json!({
        "uptime_s": st.started.elapsed().as_secs_f64(),
        "total": total,
        "paths": paths,
        "max_inflight": inflight,
        "blocking": blocking,
        "catalogue": {
            "requests": st.cat.requests.load(Ordering::Relaxed),
            "bytes": st.cat.bytes.load(Ordering::Relaxed),
            "not_modified": st.cat.not_modified.load(Ordering::Relaxed),
            "max_inflight": st.cat.max_inflight.load(Ordering::Relaxed),
        },
    });
    full(
        StatusCode::OK,
        "application/json",
        "no-store",
        v.to_string(),
    )
}

/// `Last-Modified` of every catalogue object: fixed, so a revalidation always matches.
const CAT_LAST_MODIFIED: &str = "Thu, 01 Jan 2026 00:00:00 GMT";

/// `/cat/<id>.ts`: the whole object, a single byte range of it (206/416), or 304 for a matching
/// `If-None-Match` (or, without one, an `If-Modified-Since` equal to `Last-Modified`: the value
/// a cache sends back). Other range forms (several ranges, non-bytes units) get the whole object,
/// as RFC 9110 allows.
fn catalogue_object(st: &State, req: &Request<Incoming>, id: u64) -> Response<Body> {
    let cat = &st.cat;
    cat.requests.fetch_add(1, Ordering::Relaxed);
    let size = catalogue::size(id);
    let etag = format!("\"cat-{id}-{size}\"");
    let headers = req.headers();
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let not_modified = match text(header::IF_NONE_MATCH) {
        Some(inm) => inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag),
        None => text(header::IF_MODIFIED_SINCE) == Some(CAT_LAST_MODIFIED),
    };
    let cc = "max-age=31536000";
    let mut resp = if not_modified {
        cat.not_modified.fetch_add(1, Ordering::Relaxed);
        let mut r = full(StatusCode::NOT_MODIFIED, "video/mp2t", cc, Bytes::new());
        r.headers_mut().remove(header::CONTENT_TYPE);
        r
    } else {
        match crate::byterange::answer(req.headers().get(header::RANGE), size) {
            crate::byterange::Answer::Unsatisfiable => {
                let mut r = full(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "text/plain",
                    "no-store",
                    Bytes::new(),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
            crate::byterange::Answer::Part { start: a, end: b } => {
                let body = catalogue::body(id).slice(a as usize..=b as usize);
                let mut r = counted(StatusCode::PARTIAL_CONTENT, body, st.cat.clone());
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            crate::byterange::Answer::Whole => {
                counted(StatusCode::OK, catalogue::body(id), st.cat.clone())
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static(CAT_LAST_MODIFIED),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if req.method() == Method::HEAD {
        let (mut parts, body) = resp.into_parts();
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        return Response::from_parts(
            parts,
            Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
    }
    resp
}

/// A response whose body counts its bytes into the catalogue counters as they are sent.
fn counted(status: StatusCode, body: Bytes, cat: Arc<CatCounters>) -> Response<Body> {
    let now = cat.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    cat.max_inflight.fetch_max(now, Ordering::Relaxed);
    let mut r = Response::new(CountedBody { rest: body, cat }.boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    r
}

/// A body sent in 256 KiB slices, each counted when hyper takes it; its exact size hint gives
/// the response its Content-Length (and HEAD the length a GET would send).
struct CountedBody {
    rest: Bytes,
    cat: Arc<CatCounters>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(256 << 10);
        let chunk = self.rest.split_to(n);
        self.cat.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.cat.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "application/javascript",
        "json" => "application/json",
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "m4s" => "video/iso.segment",
        "mp4" | "m4v" => "video/mp4",
        "ts" => "video/mp2t",
        "css" => "text/css",
        _ => "application/octet-stream",
    }
}

/// A file under a `--static` prefix, with a strong `ETag` (its length and modification time, as
/// nginx makes it) and `Range` support (`byterange`); `If-Range` with another validator gets the
/// whole file.
async fn static_file(st: &State, path: &str, headers: &http::HeaderMap) -> Response<Body> {
    let best = st
        .opts
        .statics
        .iter()
        .filter(|(p, _)| path.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len());
    let Some((prefix, dir)) = best else {
        return not_found();
    };
    let rel = percent_encoding::percent_decode_str(&path[prefix.len()..]).decode_utf8_lossy();
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return not_found();
    }
    let mut file = dir.join(rel);
    if file.is_dir() {
        file = file.join("index.html");
    }
    match tokio::fs::read(&file).await {
        Ok(b) => {
            let cc = if matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("m3u8" | "mpd")
            ) {
                st.opts.playlist_cache_control.clone()
            } else {
                "max-age=3600".into()
            };
            let b = Bytes::from(b);
            let len = b.len() as u64;
            let mtime = tokio::fs::metadata(&file)
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let etag = format!("\"{mtime:x}-{len:x}\"");
            let range = match headers.get(header::IF_RANGE) {
                Some(v) if v.as_bytes() != etag.as_bytes() => None,
                _ => headers.get(header::RANGE),
            };
            let ctype = content_type(&file);
            let (mut r, content_range) = match byterange::answer(range, len) {
                byterange::Answer::Whole => (paced(st, ctype, &cc, b), None),
                byterange::Answer::Part { start, end } => {
                    // Both within `len`, which came from a usize.
                    let piece = b.slice(start as usize..=end as usize);
                    let mut r = paced(st, ctype, &cc, piece);
                    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                    (r, Some(format!("bytes {start}-{end}/{len}")))
                }
                byterange::Answer::Unsatisfiable => (
                    full(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "text/plain",
                        "no-store",
                        Bytes::new(),
                    ),
                    Some(format!("bytes */{len}")),
                ),
            };
            let h = r.headers_mut();
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            for (name, v) in [
                (header::ETAG, Some(etag)),
                (header::CONTENT_RANGE, content_range),
            ] {
                if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    h.insert(name, v);
                }
            }
            r
        }
        Err(_) => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_syntax() {
        assert_eq!(
            Latency::parse("200ms"),
            Ok(Latency::Fixed(Duration::from_millis(200)))
        );
        assert_eq!(
            Latency::parse("100ms-300ms"),
            Ok(Latency::Uniform(
                Duration::from_millis(100),
                Duration::from_millis(300)
            ))
        );
        assert_eq!(
            Latency::parse("exp:1s"),
            Ok(Latency::Exponential(Duration::from_secs(1)))
        );
        assert!(Latency::parse("fast").is_err());
        assert!(Latency::parse("3s-1s").is_err());
    }

    #[test]
    fn object_paths() {
        assert_eq!(parse_object(&["master.m3u8"], 2), Some(Object::Master));
        assert_eq!(
            parse_object(&["r1", "seg_42.m4s"], 2),
            Some(Object::Segment(1, 42))
        );
        assert_eq!(
            parse_object(&["r0", "t_61440.m4s"], 2),
            Some(Object::SegmentAtTime(0, 61440))
        );
        assert_eq!(parse_object(&["r2", "init.mp4"], 2), None);
        assert_eq!(parse_object(&["r0", "seg_x.m4s"], 2), None);
    }

    #[test]
    fn options_are_validated() {
        assert!(OriginOptions::default().validate().is_ok());
        let bad = OriginOptions {
            segment_duration: Duration::from_secs(3),
            error_rate: 2.0,
            ..OriginOptions::default()
        };
        let msg = format!("{:#}", bad.validate().expect_err("invalid"));
        assert!(msg.contains("--segment-duration"), "{msg}");
        assert!(msg.contains("--error-rate"), "{msg}");
    }
}
