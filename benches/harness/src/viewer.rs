//! One simulated viewer: the player state machine (HLS and DASH, live and VOD) over a [`Net`]
//! that fetches. The network is a trait so that tests drive a viewer against generated manifests
//! under tokio's paused clock, deterministically.
//!
//! The player model: fetch the master (or MPD), pick a rendition (fixed from the mix, or ABR by
//! measured throughput), reload the media playlist as RFC 8216 6.3.4 says (every target duration,
//! half of it after an unchanged reload), fetch every new segment in order, and play: playback
//! starts when the first segment arrives and each later segment is due when the playhead reaches
//! it; a segment that arrives after that is a stall, and the playhead waits for it.
//!
//! Deadlines are in media time, from the manifests' own durations: HLS segments are placed by
//! EXT-X-PROGRAM-DATE-TIME and EXTINF (`hls_positions`), DASH segments by their SegmentTemplate
//! (`@duration`, or the SegmentTimeline's t/d/r including `r="-1"`; see `Template`), never by an
//! assumed fixed segment length.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use tokio::time::{sleep, sleep_until, Instant};
use url::Url;
use vedge_manifest::template::{self, Vars};
use vedge_manifest::timeline;

/// What kind of object a request fetches (histograms are kept per class).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
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
    /// A low-latency viewer had a part `d` after it was produced (latency to the live edge).
    fn live_latency(&self, _d: Duration) {}
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
    /// Three segments from the live edge; playlist polling (HLS); DASH: template timing for
    /// `$Number$` and `r="-1"` timelines, MPD updates for explicit SegmentTimeline entries.
    Live,
    /// At the live edge (one segment of slack); every next segment is requested the moment it
    /// becomes available, computed from PROGRAM-DATE-TIME and EXTINF (HLS) or
    /// availabilityStartTime and the template (DASH). Past the end of what the playlist or
    /// SegmentTimeline lists, the next segment is assumed to last as long as the last one: a
    /// packager whose durations vary gets some early requests (404s, reported).
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
    /// Behave like a Low-Latency HLS player (`--ll`; HLS targets only).
    pub ll: bool,
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

/// Playback clock, in media time. Playback starts when the first segment arrives; the segment
/// that starts at media position `pos` is due when the playhead gets there, that is
/// `pos - (position of the first segment)` after the start, plus every stall so far.
#[derive(Debug, Clone, Default)]
struct Playback {
    /// (when playback began, media position of the first segment played)
    start: Option<(Instant, Duration)>,
    joined: Option<Instant>,
    stalled: Duration,
    stalls: u64,
}

impl Playback {
    /// `joined`: when the viewer joined (startup is measured from there, manifests included).
    fn new(joined: Instant) -> Self {
        Playback {
            joined: Some(joined),
            ..Default::default()
        }
    }
    /// When the segment starting at media position `pos` must have arrived (None before
    /// playback starts).
    fn due(&self, pos: Duration) -> Option<Instant> {
        self.start
            .map(|(t, first)| t + pos.saturating_sub(first) + self.stalled)
    }
    /// Waits (at most until `until`) while fetching the segment at `pos` would put more than
    /// `ahead` of media in the buffer.
    async fn pace(&self, pos: Duration, ahead: Duration, until: Instant) {
        if let Some(wake) = self.due(pos).and_then(|d| d.checked_sub(ahead)) {
            if wake > Instant::now() {
                sleep_until(wake.min(until)).await;
            }
        }
    }
    fn arrived(&mut self, pos: Duration, now: Instant, net: &impl Net) {
        match self.due(pos) {
            None => {
                if let Some(j) = self.joined.take() {
                    net.startup(now.saturating_duration_since(j));
                }
                self.start = Some((now, pos));
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
                .rfind(|&i| (variants[i].bandwidth as f64) <= budget)
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

/// Media position and duration of each segment of a media playlist. A segment with
/// EXT-X-PROGRAM-DATE-TIME is at that wall-clock position; the others are placed from it by
/// EXTINF (forward and back). Without any PDT, positions learned on earlier reloads (`known`, by
/// media sequence number) anchor the playlist, else it starts at 0.
fn hls_positions(
    pl: &m3u8_rs::MediaPlaylist,
    known: &BTreeMap<u64, Duration>,
) -> Vec<(Duration, Duration)> {
    let n = pl.segments.len();
    let first = pl.media_sequence;
    let target = Duration::from_secs(pl.target_duration.max(1));
    let durs: Vec<Duration> = pl
        .segments
        .iter()
        .map(|s| Duration::from_secs_f64(f64::from(s.duration).max(0.0)))
        .collect();
    let pdt = |i: usize| {
        pl.segments[i]
            .program_date_time
            .map(|p| Duration::from_millis(p.timestamp_millis().max(0) as u64))
    };
    let (a, at) = (0..n)
        .find_map(|i| pdt(i).map(|p| (i, p)))
        .or_else(|| (0..n).find_map(|i| known.get(&(first + i as u64)).map(|p| (i, *p))))
        .unwrap_or_else(|| match known.iter().next_back() {
            // Jumped past everything known: estimate the gap with the target duration.
            Some((k, p)) if first > *k => (0, *p + target * (first - k) as u32),
            _ => (0, Duration::ZERO),
        });
    let mut pos = vec![Duration::ZERO; n];
    if n == 0 {
        return Vec::new();
    }
    pos[a] = at;
    for i in a + 1..n {
        pos[i] = pdt(i).unwrap_or(pos[i - 1] + durs[i - 1]);
    }
    for i in (0..a).rev() {
        pos[i] = pos[i + 1].saturating_sub(durs[i]);
    }
    pos.into_iter().zip(durs).collect()
}

/// Position and duration of segment `n` of a playlist whose segments `first..` are at `pos`;
/// past the end, extrapolated with the last segment's duration.
fn hls_segment(n: u64, first: u64, pos: &[(Duration, Duration)]) -> Option<(Duration, Duration)> {
    let i = n.checked_sub(first)? as usize;
    if let Some(p) = pos.get(i) {
        return Some(*p);
    }
    let (last, d) = *pos.last()?;
    let ahead = (i - (pos.len() - 1)) as u32;
    Some((last + d * ahead, d))
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
    if plan.ll && plan.mode != Mode::Vod {
        return super::llviewer::run(net, plan, variants[current].url.clone(), wall).await;
    }
    let mut init_for: Option<usize> = None;
    let mut next: Option<u64> = None;
    let mut playback = Playback::new(plan.join_at);
    let mut known: BTreeMap<u64, Duration> = BTreeMap::new();
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
        let first = pl.media_sequence;
        let end = first + pl.segments.len() as u64;
        if pl.segments.is_empty() {
            sleep(target / 2).await;
            continue;
        }
        let pos = hls_positions(&pl, &known);
        known = (first..end).zip(pos.iter().map(|p| p.0)).collect();
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
            let (at, _) = pos[(n - first) as usize];
            // Keep at most 3 target durations of media buffered ahead of the playhead.
            playback.pace(at, target * 3, plan.leave_at).await;
            let seg = &pl.segments[(n - first) as usize];
            let Ok(u) = media_url.join(&seg.uri) else {
                net.parse_error();
                return out;
            };
            match net.get(u.as_str(), Class::Segment).await {
                Ok(f) => {
                    playback.arrived(at, Instant::now(), net);
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
                // Segment n is available when it ends: its start (from the last segment's PDT
                // and EXTINF, extrapolated) plus its duration.
                let has_pdt = pl
                    .segments
                    .last()
                    .is_some_and(|s| s.program_date_time.is_some());
                let wait_until = match hls_segment(n, first, &pos) {
                    Some((at, d)) if has_pdt => {
                        let avail = SystemTime::UNIX_EPOCH + at + d + AVAILABILITY_MARGIN;
                        instant_of(avail, wall(), Instant::now())
                    }
                    _ => Instant::now() + target / 2,
                };
                sleep_until(wait_until.min(plan.leave_at)).await;
                // Ask for the new segment directly (what an LL-HLS or DASH client does), then
                // carry on with the playlist reload.
                if Instant::now() < plan.leave_at && n >= end {
                    let last_uri = pl.segments.last().map(|s| s.uri.as_str()).unwrap_or("");
                    let guess = next_uri(last_uri, end - 1, n)
                        .and_then(|uri| media_url.join(&uri).ok())
                        .zip(hls_segment(n, first, &pos));
                    if let Some((u, (at, _))) = guess {
                        if net.get(u.as_str(), Class::Segment).await.is_ok() {
                            playback.arrived(at, Instant::now(), net);
                            out.segments += 1;
                            next = Some(n + 1);
                            known.insert(n, at);
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

/// How one representation addresses its segments: its own SegmentTemplate, attributes it lacks
/// taken from the AdaptationSet's.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    timescale: u64,
    /// presentationTimeOffset: the media time (ticks) at period position 0.
    pto: u64,
    start_number: u64,
    media: String,
    init: Option<String>,
    addressing: Addressing,
}

#[derive(Debug, Clone, PartialEq)]
enum Addressing {
    /// `@duration`: segment i starts at `i * ticks`.
    Number { ticks: u64 },
    /// A SegmentTimeline, as runs of equal segments.
    Timeline(Vec<Run>),
}

/// `<S t d r>` as `vedge_manifest::timeline` reads it: `count` segments of `d` ticks from `t`;
/// `None` for an open `r="-1"` run (the live edge then comes from the clock).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    t: u64,
    d: u64,
    count: Option<u64>,
}

/// One segment as a template addresses it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SegRef {
    /// `$Number$`.
    number: u64,
    /// `$Time$` (media timeline ticks).
    time: u64,
    /// Period position of its start, and its duration.
    start: Duration,
    dur: Duration,
}

fn ticks_to(ticks: u64, timescale: u64) -> Duration {
    let ns = ticks as u128 * 1_000_000_000 / timescale.max(1) as u128;
    Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

impl Template {
    fn from_mpd(
        rep: Option<&dash_mpd_core::SegmentTemplate>,
        set: Option<&dash_mpd_core::SegmentTemplate>,
    ) -> Option<Template> {
        macro_rules! field {
            ($f:ident) => {
                rep.and_then(|t| t.$f.clone())
                    .or_else(|| set.and_then(|t| t.$f.clone()))
            };
        }
        let timescale = field!(timescale).unwrap_or(1).max(1);
        let addressing = match (field!(SegmentTimeline), field!(duration)) {
            (Some(tl), _) => {
                // No period end: a live timeline's last `r="-1"` run stays open (the clock
                // extends it). Times beyond u64 are not a stream a viewer can play.
                let runs = timeline::runs(&tl.segments, None)
                    .map(|r| {
                        let r = r.ok()?;
                        Some(Run {
                            t: u64::try_from(r.t).ok()?,
                            d: r.d,
                            count: r.count.map(u64::try_from).transpose().ok()?,
                        })
                    })
                    .collect::<Option<Vec<Run>>>()?;
                if runs.is_empty() {
                    return None;
                }
                Addressing::Timeline(runs)
            }
            (None, Some(d)) if d >= 1.0 => Addressing::Number { ticks: d as u64 },
            _ => return None,
        };
        Some(Template {
            timescale,
            pto: field!(presentationTimeOffset).unwrap_or(0),
            start_number: field!(startNumber).unwrap_or(1),
            media: field!(media)?,
            init: field!(initialization),
            addressing,
        })
    }

    fn seg(&self, index: u64, time: u64, d: u64) -> SegRef {
        SegRef {
            number: self.start_number + index,
            time,
            start: ticks_to(time.saturating_sub(self.pto), self.timescale),
            dur: ticks_to(d, self.timescale),
        }
    }

    /// The first segment that starts at or after period position `pos` (less 1 ms, so that a
    /// position computed in another timescale still finds its segment). Past the end of a
    /// timeline, segments are predicted with the last duration until a reload lists them.
    fn segment_from(&self, pos: Duration) -> Option<SegRef> {
        let want = pos.saturating_sub(Duration::from_millis(1));
        let want_t = (want.as_nanos() * self.timescale as u128).div_ceil(1_000_000_000);
        let want_t = (want_t.min(u64::MAX as u128) as u64).saturating_add(self.pto);
        match &self.addressing {
            Addressing::Number { ticks } => {
                let i = (want_t - self.pto).div_ceil(*ticks);
                Some(self.seg(i, self.pto + i * ticks, *ticks))
            }
            Addressing::Timeline(runs) => {
                let mut index = 0u64;
                for (j, run) in runs.iter().enumerate() {
                    // An open run that another follows ends where that one starts.
                    let count = run.count.or_else(|| {
                        runs.get(j + 1)
                            .map(|next| next.t.saturating_sub(run.t).div_ceil(run.d))
                    });
                    let k = want_t.saturating_sub(run.t).div_ceil(run.d);
                    match count {
                        Some(c) if k >= c => index += c,
                        _ => return Some(self.seg(index + k, run.t + k * run.d, run.d)),
                    }
                }
                let last = runs.last()?;
                let end_t = last.t + last.count? * last.d;
                let k = want_t.saturating_sub(end_t).div_ceil(last.d);
                Some(self.seg(index + k, end_t + k * last.d, last.d))
            }
        }
    }

    /// Where the listed segments end (period position), for a timeline that lists them all; the
    /// live edge is not beyond it even when the clock says more media exists.
    fn listed_end(&self) -> Option<Duration> {
        match &self.addressing {
            Addressing::Timeline(runs) => {
                let last = runs.last()?;
                let end_t = last.t + last.count? * last.d;
                Some(ticks_to(end_t.saturating_sub(self.pto), self.timescale))
            }
            Addressing::Number { .. } => None,
        }
    }

    /// Start of the segment `back` segments behind the live edge at period position `now` (the
    /// newest complete segment is 1 back), looking no further back than `depth`.
    fn live_start(&self, now: Duration, depth: Duration, back: usize) -> Duration {
        let now = self.listed_end().map_or(now, |e| now.min(e));
        let mut done: Vec<Duration> = Vec::new();
        let mut s = self.segment_from(now.saturating_sub(depth));
        while let Some(seg) = s {
            if seg.start + seg.dur > now || done.len() >= 10_000 {
                break;
            }
            done.push(seg.start);
            s = self.segment_from(seg.start + seg.dur);
        }
        done.len()
            .checked_sub(back)
            .and_then(|i| done.get(i))
            .or(done.first())
            .copied()
            .unwrap_or(now)
    }
}

struct Rep {
    id: String,
    bandwidth: u64,
    tpl: Template,
}

/// The parts of an MPD a viewer needs.
struct Dash {
    dynamic: bool,
    /// Wall clock of period position 0: availabilityStartTime + Period@start.
    base: SystemTime,
    reps: Vec<Rep>,
    update: Duration,
    /// timeShiftBufferDepth: how far behind the live edge segments stay available.
    depth: Duration,
    total: Option<Duration>,
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
    let reps: Vec<Rep> = aset
        .representations
        .iter()
        .map(|r| {
            Some(Rep {
                id: r.id.clone()?,
                bandwidth: r.bandwidth.unwrap_or(0),
                tpl: Template::from_mpd(r.SegmentTemplate.as_ref(), aset.SegmentTemplate.as_ref())?,
            })
        })
        .collect::<Option<_>>()?;
    let first = reps.first()?.tpl.segment_from(Duration::ZERO)?.dur;
    if first.is_zero() {
        return None;
    }
    let dynamic = mpd.mpdtype.as_deref() == Some("dynamic");
    let ast = match &mpd.availabilityStartTime {
        Some(t) => {
            SystemTime::UNIX_EPOCH + Duration::from_millis(t.timestamp_millis().max(0) as u64)
        }
        None => SystemTime::UNIX_EPOCH,
    };
    Some(Dash {
        dynamic,
        base: ast + period.start.unwrap_or_default(),
        reps,
        update: mpd.minimumUpdatePeriod.unwrap_or(first),
        depth: mpd.timeShiftBufferDepth.unwrap_or(first * 5),
        total: mpd.mediaPresentationDuration,
    })
}

/// A segment's URL from its representation's template (`None`: a template the edge's own walker
/// would reject too, or a URL that does not resolve).
fn fill(base: &Url, template: &str, rep: &Rep, number: u64, time: u64) -> Option<Url> {
    let vars = Vars {
        representation_id: &rep.id,
        bandwidth: Some(rep.bandwidth),
        number: Some(number),
        time: Some(time),
    };
    base.join(&template::expand(template, &vars).ok()?).ok()
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
        .map(|r| Variant {
            url: plan.target.clone(),
            bandwidth: r.bandwidth,
        })
        .collect();
    let mut current = choose(plan.pick, &variants, None);
    let mut init_for = None;
    let mut playback = Playback::new(plan.join_at);
    let mut last_reload = Instant::now();
    let mut throughput = None;
    // Period position of the live edge: how much media exists by the clock.
    let live_now = |mpd: &Dash| wall().duration_since(mpd.base).unwrap_or_default();
    // A VOD seek: a random segment boundary of the first representation.
    let seek = |rng: &mut StdRng, mpd: &Dash| -> Duration {
        let Some(first) = mpd.reps[0].tpl.segment_from(Duration::ZERO) else {
            return Duration::ZERO;
        };
        let count = mpd.total.map_or(1, |t| {
            (t.as_secs_f64() / first.dur.as_secs_f64()).ceil() as u64
        });
        first.dur * rng.gen_range(0..count.clamp(1, 1 << 31)) as u32
    };
    // Period position of the next segment to fetch.
    let mut next_pos = match plan.mode {
        Mode::Live => mpd.reps[current]
            .tpl
            .live_start(live_now(&mpd), mpd.depth, 3),
        Mode::Storm => mpd.reps[current]
            .tpl
            .live_start(live_now(&mpd), mpd.depth, 2),
        Mode::Vod => seek(&mut rng, &mpd),
    };
    let mut run_left: u64 = rng.gen_range(3..8);
    while Instant::now() < plan.leave_at {
        current = current.min(mpd.reps.len() - 1);
        let rep = &mpd.reps[current];
        if init_for != Some(current) {
            if let Some(init) = &rep.tpl.init {
                let Some(u) = fill(&plan.target, init, rep, 0, 0) else {
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
        if mpd.dynamic && mpd.update > Duration::ZERO && last_reload.elapsed() >= mpd.update {
            last_reload = Instant::now();
            if let Some(m) = manifest(net, plan, url, Class::Playlist, parse_dash).await {
                if !m.reps.is_empty() {
                    mpd = m;
                }
            }
            continue;
        }
        let Some(mut seg) = rep.tpl.segment_from(next_pos) else {
            net.parse_error();
            break;
        };
        if mpd.dynamic
            && plan.mode != Mode::Storm
            && rep.tpl.listed_end().is_some_and(|end| seg.start >= end)
        {
            // Players do not guess SegmentTimeline entries: wait for an update that lists it.
            // (A storm viewer does guess, with the last duration: see `Mode::Storm`.)
            let at = last_reload + mpd.update;
            if at > plan.leave_at {
                sleep_until(plan.leave_at).await;
                break;
            }
            sleep_until(at).await;
            continue;
        }
        if mpd.dynamic {
            // A segment is available when it ends.
            let avail = mpd.base + seg.start + seg.dur + AVAILABILITY_MARGIN;
            let at = instant_of(avail, wall(), Instant::now());
            if at > plan.leave_at {
                sleep_until(plan.leave_at).await;
                break;
            }
            sleep_until(at).await;
            // Fell out of the time-shift window while waiting: skip ahead.
            let oldest = live_now(&mpd).saturating_sub(mpd.depth);
            if seg.start < oldest {
                if let Some(s) = rep.tpl.segment_from(oldest) {
                    out.skipped += s.number.saturating_sub(seg.number);
                    seg = s;
                }
            }
        } else {
            if mpd.total.is_some_and(|t| seg.start >= t) {
                next_pos = if plan.mode == Mode::Vod {
                    seek(&mut rng, &mpd)
                } else {
                    Duration::ZERO
                };
                playback.seek();
                continue;
            }
            playback.pace(seg.start, seg.dur * 3, plan.leave_at).await;
        }
        let Some(u) = fill(&plan.target, &rep.tpl.media, rep, seg.number, seg.time) else {
            net.parse_error();
            break;
        };
        match net.get(u.as_str(), Class::Segment).await {
            Ok(f) => {
                playback.arrived(seg.start, Instant::now(), net);
                out.segments += 1;
                if f.total > Duration::ZERO {
                    throughput = Some(f.bytes as f64 * 8.0 / f.total.as_secs_f64());
                }
                next_pos = seg.start + seg.dur;
                if plan.pick == Pick::Abr {
                    current = choose(plan.pick, &variants, throughput);
                }
                if plan.mode == Mode::Vod {
                    run_left = run_left.saturating_sub(1);
                    if run_left == 0 {
                        next_pos = seek(&mut rng, &mpd);
                        run_left = rng.gen_range(3..8);
                        playback.seek();
                    }
                }
            }
            Err(_) => {
                next_pos = seg.start;
                sleep(RETRY).await;
            }
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
    use crate::playlist::{self, DashAddressing, RenditionInfo, Timeline};
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
            ll: false,
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

    /// Segment URLs come from the manifest crate's template expansion, the one the edge's ingest
    /// walk uses: `%0Nd` widths, `$Bandwidth$` and `$$` are expanded as players expand them.
    #[test]
    fn dash_templates_expand_widths_and_every_identifier() {
        let rep = Rep {
            id: "v1".into(),
            bandwidth: 800_000,
            tpl: Template {
                timescale: 1,
                pto: 0,
                start_number: 1,
                media: String::new(),
                init: None,
                addressing: Addressing::Number { ticks: 2 },
            },
        };
        let base = Url::parse("http://edge.test/live/a/manifest.mpd").expect("url");
        let url = |t: &str| fill(&base, t, &rep, 7, 14).map(|u| u.path().to_string());
        assert_eq!(
            url("$RepresentationID$/seg_$Number%05d$.m4s").as_deref(),
            Some("/live/a/v1/seg_00007.m4s")
        );
        assert_eq!(
            url("$Bandwidth$/t_$Time$$$.m4s").as_deref(),
            Some("/live/a/800000/t_14$.m4s")
        );
        assert_eq!(url("$Nope$.m4s"), None, "an unknown identifier is an error");
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

    /// A scripted server: `respond(url, since_start)` gives the body, or None for a 404.
    struct Script<F> {
        t0: Instant,
        respond: F,
        seg_latency: Duration,
        log: Mutex<Vec<(Duration, String, bool)>>,
        stalls: Mutex<Vec<Duration>>,
    }

    /// Wall clock at the scripted server's start (whole seconds).
    const WALL0: u64 = 1_800_000_000;

    impl<F: Fn(&str, Duration) -> Option<String> + Send + Sync> Script<F> {
        fn new(seg_latency: Duration, respond: F) -> Self {
            Script {
                t0: Instant::now(),
                respond,
                seg_latency,
                log: Mutex::new(Vec::new()),
                stalls: Mutex::new(Vec::new()),
            }
        }
        fn wall(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(WALL0) + self.t0.elapsed()
        }
        /// (time, `$Time$`) of every successful `t_{time}.m4s` request.
        fn times(&self) -> Vec<(Duration, u64)> {
            self.log
                .lock()
                .iter()
                .filter(|(_, _, ok)| *ok)
                .filter_map(|(at, u, _)| Some((*at, seg_time(u)?)))
                .collect()
        }
        fn misses(&self) -> usize {
            self.log.lock().iter().filter(|(_, _, ok)| !ok).count()
        }
    }

    fn seg_time(url: &str) -> Option<u64> {
        url.rsplit("t_").next()?.strip_suffix(".m4s")?.parse().ok()
    }

    impl<F: Fn(&str, Duration) -> Option<String> + Send + Sync> Net for Script<F> {
        fn get(
            &self,
            url: &str,
            class: Class,
        ) -> impl Future<Output = Result<Fetched, FetchError>> + Send {
            let since = self.t0.elapsed();
            let body = (self.respond)(url, since);
            self.log
                .lock()
                .push((since, url.to_string(), body.is_some()));
            let latency = if class == Class::Segment {
                self.seg_latency
            } else {
                Duration::ZERO
            };
            async move {
                sleep(latency).await;
                match body {
                    Some(b) => Ok(Fetched {
                        bytes: 50_000,
                        body: Bytes::from(b),
                        total: latency,
                    }),
                    None => Err(FetchError::Status(404)),
                }
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

    /// A dynamic MPD (timescale 1000) whose period began `ast_ago` before the script started.
    fn timeline_mpd(ast_ago: Duration, timeline: &str) -> String {
        let ast = SystemTime::UNIX_EPOCH + Duration::from_secs(WALL0) - ast_ago;
        format!(
            r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="dynamic" availabilityStartTime="{}" minimumUpdatePeriod="PT2S" timeShiftBufferDepth="PT12S" minBufferTime="PT2S">
 <Period id="0" start="PT0S">
  <AdaptationSet contentType="video" mimeType="video/mp4">
   <SegmentTemplate timescale="1000" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/t_$Time$.m4s">
    <SegmentTimeline>{timeline}</SegmentTimeline>
   </SegmentTemplate>
   <Representation id="v" bandwidth="100000" codecs="avc1.42c01e" width="160" height="90"/>
  </AdaptationSet>
 </Period>
</MPD>"#,
            playlist::rfc3339(ast)
        )
    }

    /// `r="-1"`: one S stands for every segment up to the live edge, which comes from the clock.
    #[tokio::test(start_paused = true)]
    async fn dash_time_viewer_extends_an_open_ended_timeline_by_the_clock() {
        // Segments of 2 s from t=0; the period began 13 s before the join, so 0..=5 exist
        // (segment 6 ends at 14 s).
        let ago = Duration::from_secs(13);
        let net = Script::new(Duration::from_millis(10), move |url, since| {
            if url.ends_with(".mpd") {
                return Some(timeline_mpd(ago, r#"<S t="0" d="2000" r="-1"/>"#));
            }
            match seg_time(url) {
                Some(t) => (t % 2000 == 0 && Duration::from_millis(t + 2000) <= ago + since)
                    .then(String::new),
                None => Some(String::new()),
            }
        });
        let p = plan("http://edge/live/s/manifest-timeline.mpd", Mode::Live, 8);
        let out = run(&net, &p, &|| net.wall()).await;
        let got = net.times();
        let ts: Vec<u64> = got.iter().map(|(_, t)| *t).collect();
        // Three back from the live edge, then every 2 s as each segment completes.
        assert_eq!(
            ts,
            [6000, 8000, 10000, 12000, 14000, 16000, 18000],
            "{got:?}"
        );
        for (at, t) in &got[3..] {
            let avail = Duration::from_millis(t + 2000) - ago;
            assert!(
                *at >= avail && *at - avail <= Duration::from_millis(25),
                "{t} at {at:?}"
            );
        }
        assert_eq!(net.misses(), 0);
        assert_eq!(out.stalls, 0);
    }

    /// Durations cycling 2 s, 3 s, 1 s: `$Time$` values are the timeline's own, each segment is
    /// asked for once the MPD lists it, never before, and none is skipped or requested twice.
    #[tokio::test(start_paused = true)]
    async fn dash_time_viewer_follows_an_irregular_timeline() {
        const DURS: [u64; 3] = [2000, 3000, 1000];
        // Starts: 0, 2000, 5000, 6000, 8000, 11000, 12000, 14000, 17000, 18000, 20000, ...
        let segments = |until_ms: u64| {
            let (mut t, mut k, mut v) = (0u64, 0usize, Vec::new());
            while t + DURS[k % 3] <= until_ms {
                v.push((t, DURS[k % 3]));
                t += DURS[k % 3];
                k += 1;
            }
            v
        };
        let ago = Duration::from_secs(12);
        let net = Script::new(Duration::from_millis(10), move |url, since| {
            let now_ms = (ago + since).as_millis() as u64;
            let done = segments(now_ms);
            if url.ends_with(".mpd") {
                // The window: the last 6 complete segments, one S each (t, d).
                let s: String = done[done.len().saturating_sub(6)..]
                    .iter()
                    .map(|(t, d)| format!(r#"<S t="{t}" d="{d}"/>"#))
                    .collect();
                return Some(timeline_mpd(ago, &s));
            }
            match seg_time(url) {
                Some(t) => done.iter().any(|(s, _)| *s == t).then(String::new),
                None => Some(String::new()),
            }
        });
        let p = plan("http://edge/live/s/manifest-timeline.mpd", Mode::Live, 9);
        let out = run(&net, &p, &|| net.wall()).await;
        let got = net.times();
        let ts: Vec<u64> = got.iter().map(|(_, t)| *t).collect();
        // 6 complete at the join (ends 2, 5, 6, 8, 11, 12 s): start 3 back, at 6000.
        assert_eq!(
            ts,
            [6000, 8000, 11000, 12000, 14000, 17000, 18000],
            "{got:?}"
        );
        // 12000 (ends at 14 s = 2 s in) is listed by the update at 2 s; 14000 (ends 17 s) and
        // 17000 (ends 18 s) by the one at 6 s.
        assert!(got[3].0 >= Duration::from_secs(2), "{got:?}");
        assert!(got[4].0 >= Duration::from_secs(6), "{got:?}");
        assert_eq!(net.misses(), 0, "{:?}", net.log.lock());
        assert_eq!(out.stalls, 0);
        assert_eq!(out.skipped, 0);
    }

    #[test]
    fn timeline_addressing_handles_repeats_gaps_and_offsets() {
        let tpl = |runs: Vec<Run>, pto: u64| Template {
            timescale: 1000,
            pto,
            start_number: 1,
            media: "t_$Time$.m4s".into(),
            init: None,
            addressing: Addressing::Timeline(runs),
        };
        let ms = Duration::from_millis;
        // 3 x 2 s from 0, a gap, then open-ended 1 s segments from 10 s.
        let t = tpl(
            vec![
                Run {
                    t: 0,
                    d: 2000,
                    count: Some(3),
                },
                Run {
                    t: 10_000,
                    d: 1000,
                    count: None,
                },
            ],
            0,
        );
        let s = t.segment_from(ms(2000)).expect("segment");
        assert_eq!(
            (s.number, s.time, s.start, s.dur),
            (2, 2000, ms(2000), ms(2000))
        );
        // Inside a segment: the next one. In the gap: the first after it.
        assert_eq!(t.segment_from(ms(2500)).map(|s| s.time), Some(4000));
        assert_eq!(
            t.segment_from(ms(7000)).map(|s| (s.number, s.time)),
            Some((4, 10_000))
        );
        assert_eq!(t.segment_from(ms(12_000)).map(|s| s.time), Some(12_000));
        assert_eq!(t.listed_end(), None);
        // Open-ended run followed by another S: repeats until that one starts.
        let t = tpl(
            vec![
                Run {
                    t: 0,
                    d: 2000,
                    count: None,
                },
                Run {
                    t: 6000,
                    d: 3000,
                    count: Some(2),
                },
            ],
            0,
        );
        let starts: Vec<u64> = std::iter::successors(t.segment_from(Duration::ZERO), |s| {
            t.segment_from(s.start + s.dur)
        })
        .take(6)
        .map(|s| s.time)
        .collect();
        // Past the listed end (12 s), segments are predicted with the last duration.
        assert_eq!(starts, [0, 2000, 4000, 6000, 9000, 12_000]);
        assert_eq!(t.listed_end(), Some(ms(12_000)));
        // presentationTimeOffset: $Time$ 90000 is period position 0.
        let t = tpl(
            vec![Run {
                t: 90_000,
                d: 2000,
                count: Some(5),
            }],
            90_000,
        );
        let s = t.segment_from(ms(4000)).expect("segment");
        assert_eq!((s.time, s.start), (94_000, ms(4000)));
        // Live start: the 3rd newest complete segment. At 9.5 s the segments from 0, 2, 4 and 6 s
        // are complete (the one from 8 s ends at 10 s); at 11 s, the listed end (10 s) caps it.
        assert_eq!(t.live_start(ms(9500), ms(12_000), 3), ms(2000));
        assert_eq!(t.live_start(ms(11_000), ms(12_000), 3), ms(4000));
        assert_eq!(t.live_start(ms(11_000), ms(3000), 1), ms(8000));
    }

    #[test]
    fn hls_positions_come_from_pdt_then_extinf() {
        let parse = |text: &str| match parse_hls(text.as_bytes()) {
            Some(m3u8_rs::Playlist::MediaPlaylist(p)) => p,
            other => panic!("{other:?}"),
        };
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // PDT on the second segment only: the first is placed before it by its EXTINF, the
        // rest after it by theirs.
        let pl = parse(
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:10\n#EXTINF:1.5,\na.ts\n#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:00.000Z\n#EXTINF:4.0,\nb.ts\n#EXTINF:2.5,\nc.ts\n",
        );
        let pos = hls_positions(&pl, &BTreeMap::new());
        // 2027-01-15T08:00:00Z is 1.8e9 s after the Unix epoch.
        let b = s(1_800_000_000);
        assert_eq!(pos[1], (b, s(4)));
        assert_eq!(pos[0], (b - ms(1500), ms(1500)));
        assert_eq!(pos[2], (b + s(4), ms(2500)));
        // No PDT: EXTINF from 0 on a first load, then anchored by what was learned.
        let pl = parse("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:10\n#EXTINF:1,\na\n#EXTINF:3,\nb\n#EXTINF:2,\nc\n");
        let pos = hls_positions(&pl, &BTreeMap::new());
        assert_eq!(
            pos.iter().map(|p| p.0).collect::<Vec<_>>(),
            [s(0), s(1), s(4)]
        );
        let known: BTreeMap<u64, Duration> = (10..13).zip(pos.iter().map(|p| p.0)).collect();
        let next = parse("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:11\n#EXTINF:3,\nb\n#EXTINF:2,\nc\n#EXTINF:4,\nd\n");
        let pos = hls_positions(&next, &known);
        assert_eq!(
            pos.iter().map(|p| p.0).collect::<Vec<_>>(),
            [s(1), s(4), s(6)]
        );
        // Past the end: extrapolated with the last duration.
        assert_eq!(hls_segment(15, 11, &pos), Some((s(14), s(4))));
    }

    /// Deadlines follow EXTINF, not the target duration: 1 s segments that take 1.5 s to
    /// arrive stall the player even though the target duration (4 s) would have hidden it.
    #[tokio::test(start_paused = true)]
    async fn hls_deadlines_follow_extinf() {
        let vod = |extinf: &str| {
            let mut p = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n");
            for n in 0..40 {
                p.push_str(&format!("#EXTINF:{extinf},\nseg_{n}.m4s\n"));
            }
            p + "#EXT-X-ENDLIST\n"
        };
        for (extinf, stalls) in [("1.0", true), ("4.0", false)] {
            let body = vod(extinf);
            let net = Script::new(Duration::from_millis(1500), move |url, _| {
                Some(if url.ends_with(".m3u8") {
                    body.clone()
                } else {
                    String::new()
                })
            });
            let p = plan("http://edge/vod/a/media.m3u8", Mode::Vod, 30);
            let out = run(&net, &p, &|| net.wall()).await;
            assert!(out.segments >= 10, "{out:?}");
            assert_eq!(out.stalls > 0, stalls, "EXTINF {extinf}: {out:?}");
            assert_eq!(out.stalls as usize, net.stalls.lock().len());
        }
    }
}
