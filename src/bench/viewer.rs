//! One simulated viewer: the player state machine (HLS and DASH, live and VOD) over a [`Net`]
//! that fetches. The network is a trait so that tests drive a viewer against generated manifests
//! under tokio's paused clock, deterministically.
//!
//! The player model: fetch the master (or MPD), pick a rendition (fixed from the mix, or ABR by
//! measured throughput), reload the media playlist as RFC 8216 6.3.4 says (every target duration,
//! half of it after an unchanged reload), fetch every new segment in order, and play: playback
//! starts when the first segment arrives and each later segment is due when the playhead reaches
//! it; a segment that arrives after that is a stall, and the playhead waits for it.

use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use tokio::time::{sleep, sleep_until, Instant};
use url::Url;

/// What kind of object a request fetches (histograms are kept per class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// HLS multivariant playlist or DASH MPD.
    Master,
    /// HLS media playlist (or a DASH MPD reload).
    Playlist,
    Init,
    Segment,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Master, Class::Playlist, Class::Init, Class::Segment];
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Master => "master",
            Class::Playlist => "playlist",
            Class::Init => "init",
            Class::Segment => "segment",
        }
    }
}

/// A successful (2xx) response.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body for manifests; empty for media (only counted).
    pub body: Bytes,
    pub bytes: u64,
    pub total: Duration,
}

/// Why a request failed. The fetcher has already recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    Status(u16),
    Failed,
}

/// The viewer's view of the network and of the run's recorder.
pub trait Net: Send + Sync {
    fn get(
        &self,
        url: &str,
        class: Class,
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send;
    /// A stall of `d` ended now.
    fn stall(&self, d: Duration);
    /// A manifest could not be parsed.
    fn parse_error(&self);
    /// First segment arrived `d` after the viewer joined.
    fn startup(&self, d: Duration);
    /// The viewer left after watching for `d` (for stalls per viewer-hour).
    fn watched(&self, d: Duration);
}

/// How a viewer picks its rendition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// Index into the variants (taken modulo their count).
    Fixed(usize),
    /// Start on the lowest; after each segment take the highest whose bandwidth is below 70% of
    /// the measured throughput.
    Abr,
}

/// Where a live viewer starts and how it learns of new segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Three segments from the live edge; playlist polling (HLS) or template timing (DASH).
    Live,
    /// At the live edge (one segment of slack); every next segment is requested the moment it
    /// becomes available, computed from PROGRAM-DATE-TIME (HLS) or availabilityStartTime (DASH).
    Storm,
    /// VOD: random seeks, a few segments played after each.
    Vod,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Url,
    pub join_at: Instant,
    pub leave_at: Instant,
    pub pick: Pick,
    pub mode: Mode,
    pub seed: u64,
}

/// What a viewer saw; returned when it leaves.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub segments: u64,
    pub stalls: u64,
    pub stalled: Duration,
    /// Segments skipped because the live window moved past them.
    pub skipped: u64,
    pub started: bool,
}

/// Requests made this close to availability might beat the packager's clock by a hair; a small
/// margin keeps a storm from turning into a storm of 404s.
const AVAILABILITY_MARGIN: Duration = Duration::from_millis(20);
const RETRY: Duration = Duration::from_millis(500);

/// Playback clock.
#[derive(Debug, Clone, Default)]
struct Playback {
    start: Option<(Instant, u64)>,
    joined: Option<Instant>,
    stalled: Duration,
    stalls: u64,
    seg: Duration,
}

impl Playback {
    fn new(seg: Duration) -> Self {
        Playback {
            seg,
            joined: Some(Instant::now()),
            ..Default::default()
        }
    }
    /// When segment `n` must have arrived (None before playback starts).
    fn due(&self, n: u64) -> Option<Instant> {
        self.start
            .map(|(t, first)| t + self.seg * n.saturating_sub(first) as u32 + self.stalled)
    }
    fn arrived(&mut self, n: u64, now: Instant, net: &impl Net) {
        match self.due(n) {
            None => {
                if let Some(j) = self.joined.take() {
                    net.startup(now.saturating_duration_since(j));
                }
                self.start = Some((now, n));
            }
            Some(due) if now > due => {
                let d = now - due;
                self.stalls += 1;
                self.stalled += d;
                net.stall(d);
            }
            Some(_) => {}
        }
    }
    /// Playback restarts at a seek.
    fn seek(&mut self) {
        self.start = None;
    }
}

struct Variant {
    url: Url,
    bandwidth: u64,
}

fn choose(pick: Pick, variants: &[Variant], throughput_bps: Option<f64>) -> usize {
    match pick {
        Pick::Fixed(i) => i % variants.len().max(1),
        Pick::Abr => {
            let budget = throughput_bps.map(|t| t * 0.7).unwrap_or(0.0);
            let mut by_bw: Vec<usize> = (0..variants.len()).collect();
            by_bw.sort_by_key(|&i| variants[i].bandwidth);
            by_bw
                .iter()
                .copied()
                .filter(|&i| (variants[i].bandwidth as f64) <= budget)
                .last()
                .or(by_bw.first().copied())
                .unwrap_or(0)
        }
    }
}

/// Converts a wall-clock time to the tokio clock (which tests pause).
fn instant_of(wall: SystemTime, now_wall: SystemTime, now: Instant) -> Instant {
    match wall.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
    }
}

/// Runs one viewer from `plan.join_at` to `plan.leave_at`. `wall` gives the wall clock matching
/// tokio's `Instant::now()` (the real clock in runs; a fixed mapping in paused-time tests).
pub async fn run(net: &impl Net, plan: &Plan, wall: &(impl Fn() -> SystemTime + Sync)) -> Outcome {
    sleep_until(plan.join_at).await;
    let is_dash = plan.target.path().ends_with(".mpd");
    let out = if is_dash {
        run_dash(net, plan, wall).await
    } else {
        run_hls(net, plan, wall).await
    };
    net.watched(Instant::now().saturating_duration_since(plan.join_at));
    out
}

/// Fetches and parses a manifest, retrying until `leave_at`.
async fn manifest<T>(
    net: &impl Net,
    plan: &Plan,
    url: &str,
    class: Class,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    while Instant::now() < plan.leave_at {
        if let Ok(f) = net.get(url, class).await {
            match parse(&f.body) {
                Some(v) => return Some(v),
                None => net.parse_error(),
            }
        }
        sleep(RETRY).await;
    }
    None
}

fn parse_hls(b: &[u8]) -> Option<m3u8_rs::Playlist> {
    m3u8_rs::parse_playlist_res(b).ok()
}

async fn run_hls(net: &impl Net, plan: &Plan, wall: &(impl Fn() -> SystemTime + Sync)) -> Outcome {
    let mut out = Outcome::default();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let Some(top) = manifest(net, plan, plan.target.as_str(), Class::Master, parse_hls).await
    else {
        return out;
    };
    let variants: Vec<Variant> = match top {
        m3u8_rs::Playlist::MasterPlaylist(m) => m
            .variants
            .iter()
            .filter(|v| !v.is_i_frame)
            .filter_map(|v| {
                Some(Variant {
                    url: plan.target.join(&v.uri).ok()?,
                    bandwidth: v.bandwidth,
                })
            })
            .collect(),
        m3u8_rs::Playlist::MediaPlaylist(_) => vec![Variant {
            url: plan.target.clone(),
            bandwidth: 0,
        }],
    };
    if variants.is_empty() {
        net.parse_error();
        return out;
    }
    let mut current = choose(plan.pick, &variants, None);
    let mut init_for: Option<usize> = None;
    let mut next: Option<u64> = None;
    let mut playback = Playback::new(Duration::from_secs(2));
    let mut last_shape: Option<(u64, usize)> = None;
    let mut throughput: Option<f64> = None;
    let mut vod_list: Option<m3u8_rs::MediaPlaylist> = None;

    while Instant::now() < plan.leave_at {
        let media_url = variants[current].url.clone();
        let pl =
            match &vod_list {
                Some(p) => p.clone(),
                None => {
                    let got = manifest(net, plan, media_url.as_str(), Class::Playlist, |b| {
                        match parse_hls(b)? {
                            m3u8_rs::Playlist::MediaPlaylist(p) => Some(p),
                            _ => None,
                        }
                    })
                    .await;
                    let Some(p) = got else { break };
                    if p.end_list {
                        vod_list = Some(p.clone());
                    }
                    p
                }
            };
        let target = Duration::from_secs(pl.target_duration.max(1));
        playback.seg = target;
        let first = pl.media_sequence;
        let end = first + pl.segments.len() as u64;
        if pl.segments.is_empty() {
            sleep(target / 2).await;
            continue;
        }
        // Init segment (once per rendition).
        if init_for != Some(current) {
            if let Some(map) = pl.segments.iter().find_map(|s| s.map.as_ref()) {
                let Ok(u) = media_url.join(&map.uri) else {
                    net.parse_error();
                    break;
                };
                if net.get(u.as_str(), Class::Init).await.is_err() {
                    sleep(RETRY).await;
                    continue;
                }
            }
            init_for = Some(current);
        }
        let start_at = |rng: &mut StdRng| match plan.mode {
            Mode::Live => end.saturating_sub(3).max(first),
            Mode::Storm => end.saturating_sub(2).max(first),
            Mode::Vod => rng.gen_range(first..end),
        };
        let mut n = match next {
            None => start_at(&mut rng),
            Some(n) if n < first => {
                out.skipped += first - n;
                first
            }
            Some(n) => n,
        };
        // VOD: play a run of 3..8 segments, then seek.
        let run_end = match plan.mode {
            Mode::Vod => (n + rng.gen_range(3..8)).min(end),
            _ => end,
        };
        let mut switched = false;
        while n < run_end && Instant::now() < plan.leave_at {
            // Keep at most 3 segments of buffer ahead of the playhead.
            if let Some(due) = playback.due(n.saturating_sub(3)) {
                if n >= 3 && due > Instant::now() {
                    sleep_until(due.min(plan.leave_at)).await;
                }
            }
            let seg = &pl.segments[(n - first) as usize];
            let Ok(u) = media_url.join(&seg.uri) else {
                net.parse_error();
                return out;
            };
            match net.get(u.as_str(), Class::Segment).await {
                Ok(f) => {
                    playback.arrived(n, Instant::now(), net);
                    out.segments += 1;
                    if f.total > Duration::ZERO {
                        throughput = Some(f.bytes as f64 * 8.0 / f.total.as_secs_f64());
                    }
                    n += 1;
                    if plan.pick == Pick::Abr {
                        let c = choose(plan.pick, &variants, throughput);
                        if c != current {
                            current = c;
                            switched = true;
                            break;
                        }
                    }
                }
                Err(_) => {
                    sleep(RETRY).await;
                    break;
                }
            }
        }
        next = Some(n);
        if switched {
            continue;
        }
        match plan.mode {
            Mode::Vod => {
                // Seek: a new random position, playback restarts there.
                next = None;
                playback.seek();
                if vod_list.is_none() {
                    sleep(target).await;
                }
            }
            Mode::Live => {
                // RFC 8216 6.3.4: reload after one target duration, or half of it when the
                // playlist did not change since the last reload.
                let shape = (first, pl.segments.len());
                let wait = if last_shape == Some(shape) {
                    target / 2
                } else {
                    target
                };
                last_shape = Some(shape);
                sleep(wait).await;
            }
            Mode::Storm => {
                // Segment n becomes available when it ends: PDT(n-1) + 2 target durations.
                let last = pl.segments.last().and_then(|s| s.program_date_time);
                let wait_until = match last {
                    Some(pdt) => {
                        let ms = pdt.timestamp_millis().max(0) as u64;
                        let last_start = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                        let k = n.saturating_sub(end - 1) + 1;
                        let avail = last_start + target * k as u32 + AVAILABILITY_MARGIN;
                        instant_of(avail, wall(), Instant::now())
                    }
                    None => Instant::now() + target / 2,
                };
                sleep_until(wait_until.min(plan.leave_at)).await;
                // Ask for the new segment directly (what an LL-HLS or DASH client does), then
                // carry on with the playlist reload.
                if Instant::now() < plan.leave_at && n >= end {
                    let last_uri = pl.segments.last().map(|s| s.uri.as_str()).unwrap_or("");
                    if let Some(uri) = next_uri(last_uri, end - 1, n) {
                        if let Ok(u) = media_url.join(&uri) {
                            if net.get(u.as_str(), Class::Segment).await.is_ok() {
                                playback.arrived(n, Instant::now(), net);
                                out.segments += 1;
                                next = Some(n + 1);
                            }
                        }
                    }
                }
            }
        }
    }
    out.stalls = playback.stalls;
    out.stalled = playback.stalled;
    out.started = playback.start.is_some() || out.segments > 0;
    out
}

/// Guesses the URI of segment `n` from the URI of segment `last` by replacing the number in it
/// (`seg_41.m4s` -> `seg_42.m4s`). None when the number is not in the name.
fn next_uri(last_uri: &str, last: u64, n: u64) -> Option<String> {
    let ls = last.to_string();
    let pos = last_uri.rfind(&ls)?;
    Some(format!(
        "{}{}{}",
        &last_uri[..pos],
        n,
        &last_uri[pos + ls.len()..]
    ))
}

/// The parts of an MPD a viewer needs.
struct Dash {
    dynamic: bool,
    ast: SystemTime,
    seg: Duration,
    ticks: u64,
    start_number: u64,
    media: String,
    init: Option<String>,
    reps: Vec<(String, u64)>,
    update: Duration,
    total_segments: Option<u64>,
}

fn parse_dash(b: &[u8]) -> Option<Dash> {
    let text = std::str::from_utf8(b).ok()?;
    let mpd = dash_mpd_core::parse(text).ok()?;
    let period = mpd.periods.first()?;
    let aset = period
        .adaptations
        .iter()
        .find(|a| {
            a.contentType.as_deref() == Some("video") || a.mimeType.as_deref() == Some("video/mp4")
        })
        .or(period.adaptations.first())?;
    let st = aset
        .SegmentTemplate
        .clone()
        .or_else(|| aset.representations.first()?.SegmentTemplate.clone())?;
    let timescale = st.timescale.unwrap_or(1);
    let ticks = match (st.duration, &st.SegmentTimeline) {
        (Some(d), _) => d as u64,
        (None, Some(tl)) => tl.segments.first()?.d,
        _ => return None,
    };
    let seg = Duration::from_secs_f64(ticks as f64 / timescale as f64);
    if seg.is_zero() {
        return None;
    }
    let dynamic = mpd.mpdtype.as_deref() == Some("dynamic");
    let ast = match &mpd.availabilityStartTime {
        Some(t) => {
            SystemTime::UNIX_EPOCH + Duration::from_millis(t.timestamp_millis().max(0) as u64)
        }
        None => SystemTime::UNIX_EPOCH,
    };
    let total_segments = mpd
        .mediaPresentationDuration
        .map(|d| (d.as_secs_f64() / seg.as_secs_f64()).ceil() as u64);
    Some(Dash {
        dynamic,
        ast,
        seg,
        ticks,
        start_number: st.startNumber.unwrap_or(1),
        media: st.media?,
        init: st.initialization,
        reps: aset
            .representations
            .iter()
            .filter_map(|r| Some((r.id.clone()?, r.bandwidth.unwrap_or(0))))
            .collect(),
        update: mpd.minimumUpdatePeriod.unwrap_or(seg),
        total_segments,
    })
}

fn fill(template: &str, rep: &str, number: u64, time: u64) -> String {
    template
        .replace("$RepresentationID$", rep)
        .replace("$Number$", &number.to_string())
        .replace("$Time$", &time.to_string())
}

async fn run_dash(net: &impl Net, plan: &Plan, wall: &(impl Fn() -> SystemTime + Sync)) -> Outcome {
    let mut out = Outcome::default();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let url = plan.target.as_str();
    let Some(mut mpd) = manifest(net, plan, url, Class::Master, parse_dash).await else {
        return out;
    };
    if mpd.reps.is_empty() {
        net.parse_error();
        return out;
    }
    let variants: Vec<Variant> = mpd
        .reps
        .iter()
        .map(|(_, bw)| Variant {
            url: plan.target.clone(),
            bandwidth: *bw,
        })
        .collect();
    let mut current = choose(plan.pick, &variants, None);
    let mut init_for = None;
    let mut playback = Playback::new(mpd.seg);
    let mut last_reload = Instant::now();
    let mut throughput = None;
    // Index i (0-based from the period start) of the next segment.
    let live_edge = |mpd: &Dash| {
        let since = wall().duration_since(mpd.ast).unwrap_or_default();
        (since.as_nanos() / mpd.seg.as_nanos()) as u64
    };
    let total = mpd.total_segments.unwrap_or(u64::MAX);
    let mut i = match plan.mode {
        Mode::Live => live_edge(&mpd).saturating_sub(3),
        Mode::Storm => live_edge(&mpd).saturating_sub(2),
        Mode::Vod => rng.gen_range(0..total.clamp(1, 1 << 32)),
    };
    let mut run_left: u64 = rng.gen_range(3..8);
    while Instant::now() < plan.leave_at {
        let rep = mpd.reps[current].0.clone();
        if init_for != Some(current) {
            if let Some(init) = &mpd.init {
                let Ok(u) = plan.target.join(&fill(init, &rep, 0, 0)) else {
                    net.parse_error();
                    break;
                };
                if net.get(u.as_str(), Class::Init).await.is_err() {
                    sleep(RETRY).await;
                    continue;
                }
            }
            init_for = Some(current);
        }
        if mpd.dynamic {
            if mpd.update > Duration::ZERO && last_reload.elapsed() >= mpd.update {
                last_reload = Instant::now();
                if let Some(m) = manifest(net, plan, url, Class::Playlist, parse_dash).await {
                    mpd = m;
                }
            }
            // Segment i is available when it ends.
            let avail = mpd.ast + mpd.seg * (i + 1) as u32 + AVAILABILITY_MARGIN;
            let at = instant_of(avail, wall(), Instant::now());
            if at > plan.leave_at {
                sleep_until(plan.leave_at).await;
                break;
            }
            sleep_until(at).await;
            // Fell out of the time-shift window while waiting: skip ahead.
            let oldest = live_edge(&mpd).saturating_sub(5);
            if i < oldest {
                out.skipped += oldest - i;
                i = oldest;
            }
        } else if i >= total {
            i = rng.gen_range(0..total.clamp(1, 1 << 32));
            playback.seek();
            continue;
        } else if let Some(due) = playback.due(i.saturating_sub(3)) {
            if due > Instant::now() {
                sleep_until(due.min(plan.leave_at)).await;
            }
        }
        let media = fill(&mpd.media, &rep, i + mpd.start_number, i * mpd.ticks);
        let Ok(u) = plan.target.join(&media) else {
            net.parse_error();
            break;
        };
        match net.get(u.as_str(), Class::Segment).await {
            Ok(f) => {
                playback.arrived(i, Instant::now(), net);
                out.segments += 1;
                if f.total > Duration::ZERO {
                    throughput = Some(f.bytes as f64 * 8.0 / f.total.as_secs_f64());
                }
                i += 1;
                if plan.pick == Pick::Abr {
                    current = choose(plan.pick, &variants, throughput);
                }
                if plan.mode == Mode::Vod {
                    run_left = run_left.saturating_sub(1);
                    if run_left == 0 {
                        i = rng.gen_range(0..total.clamp(1, 1 << 32));
                        run_left = rng.gen_range(3..8);
                        playback.seek();
                    }
                }
            }
            Err(_) => sleep(RETRY).await,
        }
    }
    out.stalls = playback.stalls;
    out.stalled = playback.stalled;
    out.started = playback.start.is_some() || out.segments > 0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::playlist::{self, DashAddressing, RenditionInfo, Timeline};
    use parking_lot::Mutex;

    /// A packager in memory: manifests from the playlist module at the paused clock, a fixed
    /// response time per segment, and a log of every request.
    struct FakeNet {
        tl: Timeline,
        t0: Instant,
        seg_latency: Duration,
        log: Mutex<Vec<(Duration, String)>>,
        stalls: Mutex<Vec<Duration>>,
    }

    impl FakeNet {
        fn new(seg_latency: Duration) -> Self {
            FakeNet {
                tl: Timeline::starting_at(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                    Duration::from_secs(2),
                    6,
                ),
                t0: Instant::now(),
                seg_latency,
                log: Mutex::new(Vec::new()),
                stalls: Mutex::new(Vec::new()),
            }
        }
        fn wall(&self) -> SystemTime {
            self.tl.epoch + self.tl.segment * 6 + self.t0.elapsed()
        }
        fn infos() -> Vec<RenditionInfo> {
            vec![RenditionInfo {
                id: "r0".into(),
                width: 160,
                height: 90,
                bandwidth: 150_000,
                codecs: "avc1.42c01e".into(),
                timescale: 15360,
            }]
        }
        fn segments(&self) -> Vec<(Duration, u64)> {
            self.log
                .lock()
                .iter()
                .filter_map(|(t, p)| {
                    let n = p
                        .rsplit("seg_")
                        .next()?
                        .strip_suffix(".m4s")?
                        .parse()
                        .ok()?;
                    Some((*t, n))
                })
                .collect()
        }
    }

    impl Net for FakeNet {
        fn get(
            &self,
            url: &str,
            class: Class,
        ) -> impl Future<Output = Result<Fetched, FetchError>> + Send {
            let since = self.t0.elapsed();
            self.log.lock().push((since, url.to_string()));
            let body = if url.ends_with("master.m3u8") {
                playlist::hls_master(&Self::infos())
            } else if url.ends_with("media.m3u8") {
                playlist::hls_media(&self.tl, since, None)
            } else if url.ends_with(".mpd") {
                playlist::dash_mpd(
                    &self.tl,
                    since,
                    &Self::infos(),
                    DashAddressing::Number,
                    None,
                )
            } else {
                String::new()
            };
            let available = url
                .rsplit("seg_")
                .next()
                .and_then(|s| s.strip_suffix(".m4s"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_none_or(|n| n < self.tl.available(since));
            let latency = if class == Class::Segment {
                self.seg_latency
            } else {
                Duration::ZERO
            };
            async move {
                sleep(latency).await;
                if !available {
                    return Err(FetchError::Status(404));
                }
                Ok(Fetched {
                    bytes: 50_000,
                    body: Bytes::from(body),
                    total: latency,
                })
            }
        }
        fn stall(&self, d: Duration) {
            self.stalls.lock().push(d);
        }
        fn parse_error(&self) {
            panic!("parse error");
        }
        fn startup(&self, _: Duration) {}
        fn watched(&self, _: Duration) {}
    }

    fn plan(target: &str, mode: Mode, secs: u64) -> Plan {
        let now = Instant::now();
        Plan {
            target: Url::parse(target).expect("url"),
            join_at: now,
            leave_at: now + Duration::from_secs(secs),
            pick: Pick::Fixed(0),
            mode,
            seed: 7,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hls_live_viewer_plays_in_order_without_stalls() {
        let net = FakeNet::new(Duration::from_millis(100));
        let p = plan("http://edge/live/s/master.m3u8", Mode::Live, 20);
        let out = run(&net, &p, &|| net.wall()).await;
        let segs: Vec<u64> = net.segments().iter().map(|(_, n)| *n).collect();
        // Joins 3 segments from the live edge (6 available: 3, 4, 5), then one new every 2 s.
        assert_eq!(&segs[..3], &[3, 4, 5]);
        assert!(segs.windows(2).all(|w| w[1] == w[0] + 1), "{segs:?}");
        assert!(segs.len() >= 11, "{segs:?}");
        assert_eq!(out.stalls, 0);
        assert_eq!(out.skipped, 0);
        assert!(out.started);
        // Media playlist reloads: every 2 s, 1 s after an unchanged one; never faster than 1 s.
        let reloads: Vec<Duration> = net
            .log
            .lock()
            .iter()
            .filter(|(_, u)| u.ends_with("media.m3u8"))
            .map(|(t, _)| *t)
            .collect();
        assert!(reloads
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_segments_are_counted_as_stalls() {
        // Each segment takes 3 s to arrive but plays for 2 s: the buffer drains, stalls follow.
        let net = FakeNet::new(Duration::from_secs(3));
        let p = plan("http://edge/live/s/master.m3u8", Mode::Live, 30);
        let out = run(&net, &p, &|| net.wall()).await;
        assert!(out.stalls >= 3, "{out:?}");
        assert_eq!(out.stalls as usize, net.stalls.lock().len());
    }

    #[tokio::test(start_paused = true)]
    async fn storm_viewers_ask_for_each_segment_as_it_appears() {
        let net = FakeNet::new(Duration::from_millis(10));
        let p = plan("http://edge/live/s/master.m3u8", Mode::Storm, 11);
        let out = run(&net, &p, &|| net.wall()).await;
        let segs = net.segments();
        // Starts with 4 and 5, then segment n (available at (n - 5) * 2 s) is requested 20 ms
        // after it appears.
        assert_eq!(segs[0].1, 4);
        assert_eq!(segs[1].1, 5);
        for (t, n) in &segs[2..] {
            let avail = Duration::from_secs(2 * (n - 5));
            assert!(*t >= avail, "segment {n} asked at {t:?} before {avail:?}");
            assert!(
                *t - avail <= Duration::from_millis(25),
                "segment {n} at {t:?}"
            );
        }
        assert!(segs.len() >= 6, "{segs:?}");
        assert_eq!(out.stalls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dash_live_viewer_follows_the_template_clock() {
        let net = FakeNet::new(Duration::from_millis(50));
        let p = plan("http://edge/live/s/manifest.mpd", Mode::Live, 10);
        let out = run(&net, &p, &|| net.wall()).await;
        let segs: Vec<u64> = net.segments().iter().map(|(_, n)| *n).collect();
        assert_eq!(segs[0], 3);
        assert!(segs.windows(2).all(|w| w[1] == w[0] + 1), "{segs:?}");
        assert!(segs.len() >= 7, "{segs:?}");
        assert_eq!(out.stalls, 0);
        // MPD reloads follow minimumUpdatePeriod (2 s).
        let mpds = net
            .log
            .lock()
            .iter()
            .filter(|(_, u)| u.ends_with(".mpd"))
            .count();
        assert!((4..=7).contains(&mpds), "{mpds} MPD fetches");
    }

    #[test]
    fn abr_picks_the_highest_affordable_variant() {
        let v = |bw| Variant {
            url: Url::parse("http://x/").expect("url"),
            bandwidth: bw,
        };
        let vs = [v(400_000), v(150_000), v(1_000_000)];
        assert_eq!(choose(Pick::Abr, &vs, None), 1);
        assert_eq!(choose(Pick::Abr, &vs, Some(1_000_000.0)), 0);
        assert_eq!(choose(Pick::Abr, &vs, Some(10_000_000.0)), 2);
        assert_eq!(choose(Pick::Fixed(4), &vs, None), 1);
    }

    #[test]
    fn next_uri_replaces_the_number() {
        assert_eq!(
            next_uri("seg_41.m4s", 41, 42).as_deref(),
            Some("seg_42.m4s")
        );
        assert_eq!(
            next_uri("a/41/x41.ts", 41, 42).as_deref(),
            Some("a/41/x42.ts")
        );
        assert_eq!(next_uri("x.ts", 41, 42), None);
    }
}
