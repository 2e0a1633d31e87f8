//! The live edge of one playlist at a time (issue 17): Low-Latency HLS blocking reloads
//! (`_HLS_msn` / `_HLS_part` / `_HLS_skip`, RFC 8216bis §6.2.5.2), the latest copy of every live
//! playlist the fills stored, and live-window-aware retention of the segments they list.
//!
//! Blocking reloads: a request whose `(M, P)` the latest copy satisfies is answered from it at
//! once (when that copy is the request's own `Vary` variant); one more than two segments ahead
//! is 400; otherwise it waits while another request of the same playlist for the same or an
//! earlier `(M, P)` is upstream (any newer copy wakes every waiter, which answers from it if
//! satisfied) and goes upstream itself (its own key: same `(M, P)` collapse in the fill table)
//! when none is: a request for a later part, or a delta update, never holds it back. Once the
//! origin answered an `(M, P)` with what will be no fresh stored copy (`no-store`, `no-cache`,
//! `max-age=0`), every request for it or an earlier one goes upstream at once instead
//! (`answered_unshared`): no copy will come to answer them. No hold
//! lasts more than three target durations, nor more than `live.max_hold` (503). Delta updates
//! (`_HLS_skip`) are never answered from a full copy: they have their own key. A part index past
//! a complete segment's last stands for part 0 of the next segment, and a copy holding
//! `EXT-X-ENDLIST` answers every directive at once (§6.2.5.2: they are ignored then). An
//! origin's answer that lacks what its blocking reload asks for (an origin that does not hold
//! them) reaches no viewer and is not stored under its key: the fill driver asks again
//! (`unsatisfied`, `proxy::fill::run`).
//!
//! Retention: every segment and part a live playlist lists is remembered as a member of that
//! playlist; members are not offered to the SSD store unless the route keeps a DVR window
//! (`live_dvr`), and once one has left the playlist's window for longer than
//! `live_retention_margin`, and no other live playlist's window lists it (renditions sharing a
//! segment, an LL-HLS and a regular playlist of one stream), it is removed from RAM (quick_cache
//! cannot move an entry to the front of its eviction order, so "first in line" is done by
//! removing it outright) and, past the DVR window, from the store.
//!
//! A manifest over `proxy::READ_INLINE` is scanned, announced and observed on the blocking
//! pool (`announce_early`, `observe_late`), at most `SCANS_OFF_WORKER` at once: reading it
//! costs time in its size, which the worker's viewers would otherwise wait through.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use parking_lot::Mutex;
use quick_cache::sync::Cache;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use vedge_manifest::variables::{attributes, has_reference, Variables};

use crate::cache::fill::Fill;
use crate::cache::object::CachedObject;
use crate::cache::policy::ManifestFormat;
use crate::cache::status::CacheStatus;
use crate::config::Route;
use crate::http::body::Body;
use crate::proxy::edge::Edge;
use crate::proxy::error::EdgeError;
use crate::proxy::request::{self, serve_object, Req};

/// CMCD hint semaphores and byte-range hint starts remembered at once.
const PLAYLISTS: usize = 10_000;
/// What one entry of a state's lists costs beyond its string's bytes (String and slot headers,
/// a hash slot): an estimate, cheap to compute.
const ENTRY_COST: u64 = 48;
/// What a state costs before any list (the state, its lock, its watch channel).
const STATE_COST: u64 = 512;
/// What a state's entry in the ledger costs beyond its key's bytes (the map slot, the order
/// slot, the shared key's header).
const SLOT_COST: u64 = 128;
/// Busy states (in use by a request) passed over at most per eviction before it gives up: they
/// are as many as the requests using them, each holding a connection.
const MAX_BUSY_SKIPPED: usize = 1024;

/// Live members (segments, parts) remembered across all playlists.
const MEMBERS: usize = 200_000;
/// Members remembered per playlist window and per "left the window" queue.
const PER_PLAYLIST: usize = 4_096;
/// Playlists larger than this are not scanned (counted in `vedge_live_scans_skipped_total`). A
/// day-long DVR window of 2 s segments with long URIs and program date-times is 6-10 MB.
pub(crate) const MAX_SCAN: usize = 16 << 20;
/// Prefetch fills in flight across the edge.
pub const PREFETCH_PERMITS: usize = 64;
/// Scans of large live manifests (over `proxy::READ_INLINE`) on the blocking pool at once,
/// edge-wide: past it a new large copy is not scanned (`vedge_live_scans_skipped_total`), so a
/// flood of huge manifests cannot queue blocking work without bound.
pub const SCANS_OFF_WORKER: usize = 4;
/// Rounds a blocking request waits through (each ends with a newer copy or an upstream done).
const MAX_ROUNDS: usize = 256;
/// The shortest wait before a blocking reload the origin answered too early is asked again
/// (`unsatisfied`): half a part target of 0.2 s, or an origin that gives no target.
const MIN_REASK: Duration = Duration::from_millis(100);
/// Distinct blocking reloads of one playlist with a fill of their own asking the origin at
/// once (held there, or asking again in the playlist's pace). More are held at the edge without
/// a fill (`blocking_reload`) until a copy answers them or the origin's playlist is seen to
/// hold them: one client's distinct `_HLS_msn`/`_HLS_part`/`_HLS_skip` keys cannot grow the
/// fills, the first requests or the set of fills taking turns past it. Far above what players
/// ask at once (the next part, in full and as a delta update).
const MAX_ASKING: usize = 16;

/// The delivery directives of a playlist request (shared with the origin simulator).
pub use vedge_manifest::delivery::Delivery as Directives;

/// What a line scan of a media playlist found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    pub media_sequence: u64,
    pub target: Duration,
    /// `EXT-X-PART-INF:PART-TARGET`, when given.
    pub part_target: Option<Duration>,
    pub endlist: bool,
    /// Holds `EXT-X-SKIP` (a delta update).
    pub skipped: bool,
    /// Complete segments: (msn, URI, its parts' URIs).
    pub segments: Vec<(u64, String, Vec<String>)>,
    /// Parts of the segment in progress (msn `next_msn`).
    pub trailing_parts: Vec<String>,
    /// `EXT-X-PRELOAD-HINT` URIs.
    pub hints: Vec<String>,
    /// The hints that name a byte range: (URI, `BYTERANGE-START`).
    pub hint_starts: Vec<(String, u64)>,
    /// Whether any `#EXTM3U` media tag was seen (not a master playlist).
    pub media: bool,
    /// Whether a URI took a `QUERYPARAM` value from the requester's query: these URIs are that
    /// requester's reading of the playlist ([`scan_in`]).
    pub steered: bool,
}

impl Scan {
    /// The msn after the last complete segment (the one in progress).
    pub fn next_msn(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.media_sequence, |s| s.0.saturating_add(1))
    }

    /// The `(msn, part)` a request for `(msn, part)` stands for in this copy: RFC 8216bis
    /// §6.2.5.2, a Part Index past the final Partial Segment of a complete Parent Segment is
    /// Part Index 0 of the following one. Only a segment whose parts are still listed tells
    /// where its last part is; otherwise the request is taken as it is.
    pub fn roll_over(&self, msn: u64, part: Option<u64>) -> (u64, Option<u64>) {
        let Some(p) = part else {
            return (msn, part);
        };
        // Requests name segments near the live edge: search from the end.
        let parts = self
            .segments
            .iter()
            .rev()
            .find(|s| s.0 == msn)
            .map(|s| s.2.len());
        match parts {
            Some(n) if n > 0 && p >= n as u64 => (msn.saturating_add(1), Some(0)),
            _ => (msn, part),
        }
    }

    /// The farthest `(msn, part)` this copy holds (`order`): its last part when a segment is
    /// in progress, else its last segment whole. A request at or before it is satisfied by it
    /// (as `satisfies` reads a request, rolled over).
    pub fn reach(&self) -> Option<(u64, u64)> {
        match self.trailing_parts.len() {
            0 => self.segments.last().map(|s| order(s.0, None)),
            n => Some((self.next_msn(), n as u64 - 1)),
        }
    }

    /// Whether this copy answers a request for segment `msn` (part `part`).
    pub fn satisfies(&self, msn: u64, part: Option<u64>) -> bool {
        let (msn, part) = self.roll_over(msn, part);
        let next = self.next_msn();
        if msn < next {
            return true;
        }
        match part {
            Some(p) => msn == next && (p as usize) < self.trailing_parts.len(),
            None => false,
        }
    }

    /// More than two segments past the last one listed, or a part more than the Advance Part
    /// Limit past the last part listed (RFC 8216bis §6.2.5.2: 400).
    pub fn too_far(&self, msn: u64, part: Option<u64>) -> bool {
        self.too_far_at(msn, part, Duration::ZERO)
    }

    /// [`Scan::too_far`] of a copy `age` old. The rule is about the server's *current*
    /// playlist: a copy made `age` ago (a blocking response may be fresh for a minute) lags
    /// the origin's by as many segments and parts as it could have added since, and a request
    /// within that lag is not refused.
    pub fn too_far_at(&self, msn: u64, part: Option<u64>, age: Duration) -> bool {
        let (msn, part) = self.roll_over(msn, part);
        let since = |unit: Option<Duration>| match unit.filter(|u| !u.is_zero()) {
            Some(u) => (age.as_secs_f64() / u.as_secs_f64()).ceil().min(1e9) as u64,
            // No unit to count by: an aged copy cannot tell how far the origin has gone.
            None if age.is_zero() => 0,
            None => u64::MAX,
        };
        // The last complete segment is next_msn - 1; allowed: up to last + 2.
        let segments_since = since(Some(self.target));
        if msn
            > self
                .next_msn()
                .saturating_add(1)
                .saturating_add(segments_since)
        {
            return true;
        }
        match (part, self.parts_ahead(msn, part)) {
            (Some(_), Some(ahead)) => {
                ahead
                    > self
                        .advance_part_limit()
                        .saturating_add(since(self.part_target))
            }
            _ => false,
        }
    }

    /// How many parts `(msn, part)` lies past the last part listed; `None` when listed already
    /// or when the playlist does not tell (no parts, or a later segment whose part count is
    /// unknown).
    fn parts_ahead(&self, msn: u64, part: Option<u64>) -> Option<u64> {
        let (next, part) = (self.next_msn(), part?);
        if msn < next || self.part_target.is_none() {
            return None;
        }
        // Parts before the requested one in the segments between: as many as the fullest
        // listed segment has.
        let per_segment = self.segments.iter().map(|s| s.2.len() as u64).max();
        let before = match msn - next {
            0 => 0,
            n => n.saturating_mul(per_segment.filter(|&p| p > 0)?),
        };
        let wanted = before.saturating_add(part);
        let listed = self.trailing_parts.len() as u64;
        // Part index `listed` is the next one to appear: it is 1 past the last listed.
        // Saturating: `wanted` is the viewer's own number, up to `u64::MAX`.
        wanted.checked_sub(listed).map(|d| d.saturating_add(1))
    }

    /// RFC 8216bis §6.2.5.2: three divided by the part target when that is under a second
    /// (three seconds of parts), else three.
    fn advance_part_limit(&self) -> u64 {
        match self.part_target {
            Some(t) if t < Duration::from_secs(1) && !t.is_zero() => (3.0 / t.as_secs_f64()) as u64,
            _ => 3,
        }
    }

    /// Whether a newer playlist than `other` (more segments, or more parts).
    fn newer_than(&self, other: &Scan) -> bool {
        (self.next_msn(), self.trailing_parts.len())
            > (other.next_msn(), other.trailing_parts.len())
    }

    /// Whether this copy, received after `earlier`, shows the stream restarted (a packager
    /// restart resets the media sequence): its whole window, the segment in progress
    /// included, lies before `earlier`'s first segment. A late answer to an older blocking
    /// reload cannot look so: a live playlist keeps at least three target durations of
    /// segments (RFC 8216bis §6.2.2) and a hold lasts at most that long, so a straggler's
    /// window always reaches into the newer copy's.
    fn restarted_behind(&self, earlier: &Scan) -> bool {
        self.next_msn() <= earlier.media_sequence
    }

    /// The bytes this scan holds (an estimate).
    fn weight(&self) -> u64 {
        let list = |v: &[String]| v.iter().map(|u| u.len() as u64 + ENTRY_COST).sum::<u64>();
        let segments: u64 = self
            .segments
            .iter()
            .map(|(_, u, parts)| u.len() as u64 + ENTRY_COST + list(parts))
            .sum();
        let starts: u64 = self
            .hint_starts
            .iter()
            .map(|(u, _)| u.len() as u64 + ENTRY_COST)
            .sum();
        segments + list(&self.trailing_parts) + list(&self.hints) + starts
    }

    /// Every segment and part URI listed, oldest first, but those whose variables did not
    /// resolve ([`scan_in`]).
    pub fn uris(&self) -> impl Iterator<Item = (u64, &str)> {
        let next = self.next_msn();
        self.segments
            .iter()
            .flat_map(|(n, u, parts)| {
                parts
                    .iter()
                    .map(move |p| (*n, p.as_str()))
                    .chain(std::iter::once((*n, u.as_str())))
            })
            .chain(self.trailing_parts.iter().map(move |p| (next, p.as_str())))
            .filter(|(_, u)| !has_reference(u))
    }
}

/// A line scan of an HLS media playlist: media sequence, target duration, segments with their
/// parts, trailing parts, hints. `None` for what is not a playlist, or too large. Read as a
/// playlist requested without a query ([`scan_in`]).
pub fn scan(body: &[u8]) -> Option<Scan> {
    scan_in(body, None)
}

/// [`scan`] of a playlist requested with `query`: URIs have their `EXT-X-DEFINE` variables
/// substituted (`QUERYPARAM` values from `query`), as the players reading it do. A segment or
/// part whose URI does not resolve (`IMPORT`, an undefined name, past the bounds) still counts
/// (media sequence numbers, part indices) but keeps its `{$` reference and is listed by no
/// [`Scan::uris`]; such a hint is left out: the edge never asks for one literally.
pub fn scan_in(body: &[u8], query: Option<&str>) -> Option<Scan> {
    if body.len() > MAX_SCAN {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    if !text.trim_start_matches('\u{feff}').starts_with("#EXTM3U") {
        return None;
    }
    let mut s = Scan::default();
    let mut msn: Option<u64> = None;
    let mut parts = Vec::new();
    let mut in_segment = false;
    let mut vars = Variables::new(query);
    // A URI with its variables substituted; one that does not resolve is kept as written (its
    // `{$` keeps it out of `uris`).
    let uri = |u: &str, vars: &mut Variables<'_>| match vars.resolve(u) {
        Some(r) => r.into_owned(),
        None => u.to_string(),
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("#EXT-X-DEFINE:") {
            vars.define(v);
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            s.media_sequence = v.trim().parse().unwrap_or(0);
            s.media = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            let secs: f64 = v.trim().parse().unwrap_or(0.0);
            if secs.is_finite() && secs > 0.0 && secs < 86_400.0 {
                s.target = Duration::from_secs_f64(secs);
            }
            s.media = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:") {
            let secs = attr(v, "PART-TARGET").and_then(|t| t.trim().parse::<f64>().ok());
            if let Some(secs) = secs.filter(|t| t.is_finite() && *t > 0.0 && *t < 86_400.0) {
                s.part_target = Some(Duration::from_secs_f64(secs));
            }
        } else if line.starts_with("#EXT-X-ENDLIST") {
            s.endlist = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-SKIP:") {
            s.skipped = true;
            let n = attr(v, "SKIPPED-SEGMENTS").and_then(|n| n.parse::<u64>().ok());
            let at = msn.unwrap_or(s.media_sequence);
            msn = Some(at.saturating_add(n.unwrap_or(0)));
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            if let Some(u) = attr(v, "URI") {
                if parts.len() < PER_PLAYLIST {
                    parts.push(uri(u, &mut vars));
                }
            }
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            let hinted = attr(v, "URI")
                .filter(|_| s.hints.len() < PER_PLAYLIST)
                .and_then(|u| vars.resolve(u));
            if let Some(u) = hinted {
                if let Some(start) = attr(v, "BYTERANGE-START").and_then(|n| n.parse().ok()) {
                    s.hint_starts.push((u.to_string(), start));
                }
                s.hints.push(u.into_owned());
            }
        } else if line.starts_with("#EXTINF") {
            in_segment = true;
            s.media = true;
        } else if line.starts_with('#') {
            continue;
        } else if in_segment {
            let n = *msn.get_or_insert(s.media_sequence);
            // The newest segments are kept, not the first ones: the live edge (`next_msn`,
            // what a blocking reload asks for) is at the end of a long EVENT or DVR playlist.
            if s.segments.len() >= 2 * PER_PLAYLIST {
                s.segments.drain(..PER_PLAYLIST);
            }
            s.segments
                .push((n, uri(line, &mut vars), std::mem::take(&mut parts)));
            parts.clear();
            msn = Some(n.saturating_add(1));
            in_segment = false;
        }
    }
    if s.segments.len() > PER_PLAYLIST {
        s.segments.drain(..s.segments.len() - PER_PLAYLIST);
    }
    s.trailing_parts = parts;
    s.steered = vars.used_query();
    s.media.then_some(s)
}

/// A quoted or plain attribute value from an attribute list.
fn attr<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    attributes(list).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The key of a playlist without its delivery directives: what every copy of it shares.
pub fn playlist_key(key: &str) -> std::borrow::Cow<'_, str> {
    let key = key.split('\0').next().unwrap_or(key);
    let Some((base, query)) = key.split_once('?') else {
        return std::borrow::Cow::Borrowed(key);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !matches!(k, "_HLS_msn" | "_HLS_part" | "_HLS_skip")
        })
        .collect();
    if kept.is_empty() {
        std::borrow::Cow::Borrowed(base)
    } else {
        std::borrow::Cow::Owned(format!("{base}?{}", kept.join("&")))
    }
}

/// The latest copy of a playlist the edge holds.
pub struct Snapshot {
    pub scan: Scan,
    pub obj: Arc<CachedObject>,
    /// The `Vary` variant it was stored under (`\0name=value...`, empty when it does not
    /// vary): only a request of the same variant may be answered from it (unless the variants
    /// cannot differ, `serves`).
    pub variant: String,
    /// What `scan` and `variant` weigh (`Scan::weight`), reckoned once when the copy is made:
    /// the state's weight is taken under its lock, which viewers' blocking reloads take too,
    /// and a large playlist's scan lists up to `MAX_SCAN` bytes of URIs.
    weight: u64,
}

impl Snapshot {
    /// Whether this copy is the variant `req` would be served (as `proxy::request::lookup`
    /// picks one): another viewer's variant must never answer it.
    fn serves(&self, req: &Req<'_>) -> bool {
        // An uncoded copy varying only on Accept-Encoding suits every viewer.
        !crate::cache::vary::selects_representation(&self.obj.headers)
            || crate::proxy::fill::variant_for(req, &self.obj.vary) == self.variant
    }
}

/// One playlist's live state.
pub struct Playlist {
    state: Mutex<State>,
    /// Bumped on every newer copy and every upstream request that ends: waiters re-check.
    tick: watch::Sender<u64>,
}

/// Every playlist's live state, what each weighs (its key included), and in which order they
/// are forgotten past the budget: states that hold nothing learned yet (a blocking reload's
/// whose fill stored nothing) first, then the others least recently weighed first (a watched
/// live playlist is refilled, and so re-weighed, every target duration: least recently
/// weighed is least recently used). A state in use by a request (a blocking reload waiting on
/// it, one upstream, a fill observing) is not forgotten: its waiters would wait on a state no
/// new copy reaches.
#[derive(Default)]
struct Ledger {
    total: u64,
    /// Eviction order: (holds anything learned, sequence number) → key.
    order: std::collections::BTreeMap<(bool, u64), Arc<str>>,
    states: std::collections::HashMap<Arc<str>, Weighed>,
    next: u64,
}

/// A state in the ledger.
struct Weighed {
    pl: Arc<Playlist>,
    /// Its place in `Ledger::order`.
    at: (bool, u64),
    /// Its bytes, its key's included.
    bytes: u64,
}

impl Ledger {
    /// Puts `pl` under `key` weighing `bytes` (replacing what the key held), newest in its class.
    fn put(&mut self, key: Arc<str>, pl: Arc<Playlist>, bytes: u64, learned: bool) {
        self.take(&key);
        let at = (learned, self.next);
        self.next += 1;
        self.order.insert(at, key.clone());
        self.total += bytes;
        self.states.insert(key, Weighed { pl, at, bytes });
    }

    /// Removes `key`'s state.
    fn take(&mut self, key: &str) -> Option<Arc<Playlist>> {
        let w = self.states.remove(key)?;
        self.order.remove(&w.at);
        self.total = self.total.saturating_sub(w.bytes);
        Some(w.pl)
    }

    /// Forgets states, in order, until the total is within `budget`; the states forgotten (to
    /// be dropped outside the lock). A state someone holds besides the ledger is in use and
    /// passed over. Empty states in use are the cost of the requests holding them (blocking
    /// reloads of playlists not known yet, any viewer may send them): they never push out a
    /// state that learned something, and the total stays over the budget by them until those
    /// requests end.
    fn evict(&mut self, budget: u64) -> Vec<Arc<Playlist>> {
        let mut gone = Vec::new();
        let mut after: Option<(bool, u64)> = None;
        let mut busy = 0;
        let mut busy_empty = false;
        while self.total > budget {
            let next = match after {
                None => self.order.iter().next(),
                Some(a) => self
                    .order
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .next(),
            };
            let Some((at, key)) = next.map(|(at, k)| (*at, k.clone())) else {
                break;
            };
            let (learned, _) = at;
            if learned && busy_empty {
                break;
            }
            let in_use = self
                .states
                .get(&key)
                .is_some_and(|w| Arc::strong_count(&w.pl) > 1);
            if in_use {
                busy_empty |= !learned;
                busy += 1;
                if busy > MAX_BUSY_SKIPPED {
                    break;
                }
                after = Some(at);
                continue;
            }
            gone.extend(self.take(&key));
        }
        gone
    }
}

#[derive(Default)]
struct State {
    latest: Option<Arc<Snapshot>>,
    /// What each blocking request of this playlist upstream now waits for (`order`); delta
    /// updates are not listed (no copy of theirs ever becomes `latest`).
    upstream: Vec<(u64, u64)>,
    /// The newest `(M, P)` (`order`) the origin answered a blocking reload for with a copy no
    /// waiter can be served: not stored or stored stale (`no-store`, `no-cache`,
    /// `max-age=0`, `answered_unshared`). Its answer wakes no waiter and no copy will, so
    /// a request for it or an earlier one goes upstream at once, not behind the requests
    /// listed in `upstream`: the playlist holds what it asks for (RFC 8216bis §6.2.5.2).
    /// Forgotten when a copy shows the stream restarted behind it (`observe_scanned`).
    open: Option<(u64, u64)>,
    /// The soonest a fill of this playlist's blocking reloads may ask the origin again
    /// (`Pace`): one pace for all of them, whichever fill takes the turn.
    next_reask: Option<Instant>,
    /// That pace: the interval the last fill asking again was given.
    reask_every: Duration,
    /// How far the origin's playlist was last seen to reach (`order`), by any answer to a
    /// blocking reload of it that the fill driver read (`judge`), satisfied or not, stored or
    /// not: a held request it covers is sent upstream at once (`State::holds`), since its
    /// answer will hold it. Replaced by an answer whose stream restarted behind it.
    reach: Option<(u64, u64)>,
    /// The blocking reloads (base keys, one entry per fill) whose fills are asking the origin
    /// (`Pace`): at most `MAX_ASKING` distinct ones are let upstream (`blocking_reload`).
    asking: Vec<String>,
    viewed: Option<Instant>,
    /// URIs listed by the copies seen (prefetch: what is new).
    known: HashSet<String>,
    known_order: VecDeque<String>,
    /// The bytes of `known` and `known_order` (kept as they change: learned one URI at a time).
    known_bytes: u64,
    /// Members in the window: (msn, member key).
    window: VecDeque<(u64, String)>,
    /// Members that left the window, and when.
    left: VecDeque<(Instant, String)>,
}

impl State {
    /// Whether the origin's playlist was seen to hold `(msn, part)`: the farthest an answer to
    /// a blocking reload showed (`reach`), or the latest copy. A request for it sent upstream
    /// now is answered by the origin's first answer, whoever else waits.
    fn holds(&self, msn: u64, part: Option<u64>) -> bool {
        let Some(s) = &self.latest else {
            return self.reach.is_some_and(|r| order(msn, part) <= r);
        };
        let (m, p) = s.scan.roll_over(msn, part);
        s.scan.satisfies(msn, part) || self.reach.is_some_and(|r| order(m, p) <= r)
    }

    /// Whether the blocking reload `key` must wait without a fill of its own: `MAX_ASKING`
    /// fills of the playlist are asking the origin, none of them for `key` (a viewer of a key
    /// that has one joins it in the fill table).
    fn asking_full(&self, key: &str) -> bool {
        self.asking.len() >= MAX_ASKING && !self.asking.iter().any(|k| k == key)
    }

    /// Whether anything was learned into it: a copy, listed URIs, members.
    fn learned(&self) -> bool {
        self.latest.is_some() || !self.known.is_empty() || !self.window.is_empty()
    }

    /// The bytes this state holds (an estimate); the latest copy's body is the cache's.
    fn weight(&self) -> u64 {
        let entries = |n: usize, bytes: u64| n as u64 * ENTRY_COST + bytes;
        let window: u64 = self.window.iter().map(|(_, k)| k.len() as u64).sum();
        let left: u64 = self.left.iter().map(|(_, k)| k.len() as u64).sum();
        STATE_COST
            + self.latest.as_ref().map_or(0, |l| l.weight)
            + self.upstream.len() as u64 * 16
            + entries(
                self.asking.len(),
                self.asking.iter().map(|k| k.len() as u64).sum(),
            )
            + self.known_bytes
            + entries(self.window.len(), window)
            + entries(self.left.len(), left)
    }
}

impl Playlist {
    fn new() -> Playlist {
        Playlist {
            state: Mutex::new(State::default()),
            tick: watch::channel(0).0,
        }
    }

    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.state.lock().latest.clone()
    }

    fn bump(&self) {
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }

    /// Whether a viewer asked for this playlist within `within`.
    pub fn watched(&self, within: Duration) -> bool {
        self.state
            .lock()
            .viewed
            .is_some_and(|v| v.elapsed() <= within)
    }

    /// Blocking reloads of this playlist in progress (held, or upstream), and upstream answers
    /// still settling: what a test waits for to know a crowd of viewers is parked.
    pub fn waiting(&self) -> usize {
        self.tick.receiver_count()
    }

    /// Whether any URI of this playlist was learned yet.
    pub(crate) fn knows_any(&self) -> bool {
        !self.state.lock().known.is_empty()
    }

    /// Remembers `uri` as listed; true if it was not known.
    pub(crate) fn learn_uri(&self, uri: &str) -> bool {
        let mut st = self.state.lock();
        if st.known.contains(uri) {
            return false;
        }
        // Twice: in the set and in the order.
        let cost = |u: &str| 2 * (u.len() as u64 + ENTRY_COST);
        if st.known_order.len() >= PER_PLAYLIST {
            if let Some(old) = st.known_order.pop_front() {
                st.known.remove(&old);
                st.known_bytes = st.known_bytes.saturating_sub(cost(&old));
            }
        }
        st.known.insert(uri.to_string());
        st.known_order.push_back(uri.to_string());
        st.known_bytes += cost(uri);
        true
    }
}

/// A member of a live playlist, shared by every playlist listing it.
struct Member {
    dvr: Option<Duration>,
    /// Left every window for longer than the margin (past the DVR window).
    expired: std::sync::atomic::AtomicBool,
    /// The playlists whose window lists it now. Two renditions sharing a segment, or an LL-HLS
    /// and a regular playlist of one stream, list it in windows of their own: it leaves RAM
    /// only once none does. A playlist whose state was forgotten no longer holds it (weak).
    windows: Mutex<Vec<std::sync::Weak<Playlist>>>,
}

impl Member {
    fn new(dvr: Option<Duration>) -> Member {
        Member {
            dvr,
            expired: std::sync::atomic::AtomicBool::new(false),
            windows: Mutex::new(Vec::new()),
        }
    }

    /// `pl`'s window lists it (again).
    fn enter(&self, pl: &Arc<Playlist>) {
        self.expired
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut w = self.windows.lock();
        w.retain(|p| p.strong_count() > 0);
        if !w.iter().any(|p| std::ptr::eq(p.as_ptr(), Arc::as_ptr(pl))) {
            w.push(Arc::downgrade(pl));
        }
    }

    /// `pl`'s window no longer lists it.
    fn leave(&self, pl: &Playlist) {
        self.windows
            .lock()
            .retain(|p| p.strong_count() > 0 && !std::ptr::eq(p.as_ptr(), pl));
    }

    /// Whether any live playlist's window lists it.
    fn listed(&self) -> bool {
        self.windows.lock().iter().any(|p| p.strong_count() > 0)
    }
}

/// The live state of every playlist (one per edge).
pub struct Live {
    /// Every playlist's state, weighed in bytes, at most `budget` (`live.state_memory`) of
    /// them not in use.
    ledger: Mutex<Ledger>,
    budget: u64,
    members: Cache<String, Arc<Member>>,
    /// Prefetch fills in flight, edge-wide.
    pub prefetch_permits: Arc<Semaphore>,
    /// Large manifests being scanned on the blocking pool (`SCANS_OFF_WORKER`).
    scan_permits: Arc<Semaphore>,
    /// CMCD `nor` hints in flight per viewer.
    pub hints: Cache<String, Arc<Semaphore>>,
    /// Keys of URIs named by a byte-range `EXT-X-PRELOAD-HINT`, with its `BYTERANGE-START`
    /// (`proxy::hint_range`).
    hinted: Cache<String, u64>,
}

impl Default for Live {
    fn default() -> Self {
        Live::new(crate::config::DEFAULT_LIVE_STATE_MEMORY)
    }
}

impl Live {
    /// Live state weighing at most `state_memory` bytes.
    pub fn new(state_memory: u64) -> Live {
        Live {
            ledger: Mutex::new(Ledger::default()),
            budget: state_memory,
            members: Cache::new(MEMBERS),
            prefetch_permits: Arc::new(Semaphore::new(PREFETCH_PERMITS)),
            scan_permits: Arc::new(Semaphore::new(SCANS_OFF_WORKER)),
            hints: Cache::new(PLAYLISTS),
            hinted: Cache::new(PLAYLISTS),
        }
    }
}

impl Live {
    /// The live state of `key`, created on first use (weighed at once: its key may be long).
    /// One atomic get-or-insert: two first requests racing must share one state, or the
    /// waiters parked on the state that lost the insert would never be woken by the copies
    /// observed on the other.
    pub fn playlist(&self, key: &str) -> Arc<Playlist> {
        self.get_or_create(key).0
    }

    /// `playlist`, and whether it was created now.
    fn get_or_create(&self, key: &str) -> (Arc<Playlist>, bool) {
        let (pl, gone) = {
            let mut l = self.ledger.lock();
            if let Some(w) = l.states.get(key) {
                return (w.pl.clone(), false);
            }
            let pl = Arc::new(Playlist::new());
            l.put(key.into(), pl.clone(), weight_of(key, STATE_COST), false);
            (pl, l.evict(self.budget))
        };
        drop(gone);
        (pl, true)
    }

    /// The live state of `key` for a fill that stores a copy of it (`observe`, `announce`):
    /// created if need be, and then watched if the fill's leader (`leader`, its request
    /// headers) is a viewer. A viewer's request makes no state by itself (`intercept`): only
    /// what is stored, or a blocking reload, needs one.
    pub(crate) fn for_fill(
        &self,
        key: &str,
        leader: &http::HeaderMap,
        cdn_id: &str,
    ) -> Arc<Playlist> {
        let (pl, created) = self.get_or_create(key);
        if created && !crate::origin::from_own_tier(leader, cdn_id) {
            pl.state.lock().viewed = Some(Instant::now());
        }
        pl
    }

    fn existing(&self, key: &str) -> Option<Arc<Playlist>> {
        self.ledger.lock().states.get(key).map(|w| w.pl.clone())
    }

    /// Weighs `pl`'s state again after it changed, so the byte budget sees it (forgetting the
    /// states first in line past it). Only the entry that is `pl` is re-weighed: one
    /// forgotten meanwhile is put back, but not over a newer state of the key.
    fn reweigh(&self, key: &str, pl: &Arc<Playlist>) {
        let (bytes, learned) = {
            let st = pl.state.lock();
            (weight_of(key, st.weight()), st.learned())
        };
        let gone = {
            let mut l = self.ledger.lock();
            let key: Arc<str> = match l.states.get_key_value(key) {
                Some((_, w)) if !Arc::ptr_eq(&w.pl, pl) => return,
                Some((k, _)) => k.clone(),
                None => key.into(),
            };
            l.put(key, pl.clone(), bytes, learned);
            l.evict(self.budget)
        };
        // Outside the ledger's lock.
        drop(gone);
    }

    /// The bytes the live state of every playlist weighs, keys included (at most
    /// `live.state_memory`, beyond which only states in use by requests are kept).
    pub fn state_bytes(&self) -> u64 {
        self.ledger.lock().total
    }

    /// How many playlists have live state.
    pub fn states(&self) -> usize {
        self.ledger.lock().states.len()
    }

    /// Whether `key` may go to the SSD store: not a live member, or one inside its DVR window.
    /// A range or slice of a member (`{member}\0...`) is judged as the member.
    pub fn admits_to_store(&self, key: &str) -> bool {
        let key = key.split('\0').next().unwrap_or(key);
        match self.members.get(key) {
            None => true,
            Some(m) => m.dvr.is_some() && !m.expired.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The `BYTERANGE-START` a live playlist's preload hint gave for `key`, if one did.
    pub fn hinted_start(&self, key: &str) -> Option<u64> {
        self.hinted.get(key)
    }
}

/// What a state of `state` bytes under `key` weighs in the ledger.
fn weight_of(key: &str, state: u64) -> u64 {
    state + key.len() as u64 + SLOT_COST
}

/// Whether `key` (a base key, or a `Vary` variant's `{base}\0...`) names an HLS playlist, read
/// as routes and content classes read a path (any case, segment parameters `;...` left out).
pub(crate) fn is_playlist_path(key: &str) -> bool {
    manifest_format(key) == Some(ManifestFormat::Hls)
}

/// Whether `key` (a base key or a `Vary` variant's) names a DASH MPD, read as
/// [`is_playlist_path`] reads it.
pub(crate) fn is_mpd_path(key: &str) -> bool {
    manifest_format(key) == Some(ManifestFormat::Dash)
}

/// The manifest format `key`'s path names, without its `Vary` variant (`\0...`).
fn manifest_format(key: &str) -> Option<ManifestFormat> {
    ManifestFormat::from_path(key.split('\0').next().unwrap_or(key))
}

/// Blocking reloads (and viewer bookkeeping) before the cache: `None` lets the request
/// through the usual phases.
pub async fn intercept(req: &Req<'_>) -> Result<Option<Response<Body>>, EdgeError> {
    let edge = req.edge;
    // A request from a downstream tier of this CDN (an edge asking its shield) is no viewer:
    // that edge prefetches for its viewers through each key's own shield, where this node
    // prefetching too would fetch keys another shield owns (two origin fills per object).
    let viewer = !crate::origin::from_own_tier(&req.parts.headers, &edge.config.cdn_id);
    // Only a state that exists is marked watched: a request that stores nothing (answered
    // `only-if-cached` 504, a 404) needs none, and a state per distinct URL would cost memory
    // in the URL's length for nothing. The fill of a playlist not yet known makes its state
    // (`Live::for_fill`), watched when its leader is a viewer. A tier's request marks nothing,
    // so it does not look the state up either.
    let watch_existing = |pl_key: &str| {
        if let Some(pl) = edge.live.existing(pl_key) {
            pl.state.lock().viewed = Some(Instant::now());
        }
    };
    if !is_playlist_path(req.key()) {
        if viewer && is_mpd_path(req.key()) {
            watch_existing(&playlist_key(req.key()));
        }
        return Ok(None);
    }
    // Read from the key's query (escapes of unreserved characters decoded, pairs sorted): what
    // the fill asks the origin. Read from the raw query, `%5FHLS_msn=9` was no directive here
    // but `_HLS_msn=9` upstream, and this request was held as waiting for another segment
    // than its fill asked for, holding every viewer of that segment behind it.
    let d = directives_of(req.key()).map_err(EdgeError::BadRequest)?;
    let pl_key = playlist_key(req.key());
    let Some(msn) = d.msn else {
        if viewer {
            watch_existing(&pl_key);
        }
        return Ok(None);
    };
    // A blocking reload needs the state: to wait on, or to say it is upstream.
    let pl = edge.live.playlist(&pl_key);
    if viewer {
        pl.state.lock().viewed = Some(Instant::now());
    }
    // Boxed: the hold's state (timers, the phases it runs upstream) is no weight on the future
    // of every other request.
    Box::pin(blocking_reload(req, &pl, &d, msn)).await.map(Some)
}

/// A blocking playlist reload (`_HLS_msn`, RFC 8216bis §6.2.5.2): answered from the newest
/// copy once it holds what was asked, sent upstream once per distinct directive, or held.
async fn blocking_reload(
    req: &Req<'_>,
    pl: &Arc<Playlist>,
    d: &Directives,
    msn: u64,
) -> Result<Response<Body>, EdgeError> {
    let edge = req.edge;
    let deadline = Instant::now() + hold(edge, pl.latest().as_deref());
    let mut tick = pl.tick.subscribe();
    // What the request stands for (a part past its segment's last is the next one's first),
    // so waiters and upstream requests compare as the playlist will satisfy them.
    let wants = match pl.latest() {
        Some(s) => {
            let (m, p) = s.scan.roll_over(msn, d.part);
            order(m, p)
        }
        None => order(msn, d.part),
    };
    for _ in 0..MAX_ROUNDS {
        tick.mark_unchanged();
        // Waiting only pays off behind a request whose answer comes no later than ours would:
        // one asking for a later segment (or a delta update, never kept as `latest`) would hold
        // this viewer until that later segment exists. Nor once the origin answered what it
        // waits for with a copy that answers no waiter (`State::open`): every such waiter goes
        // upstream itself at once, in parallel, collapsing in the fill table as far as that
        // answer may be shared (a `no-store` one with nobody).
        // Past `MAX_ASKING` distinct keys asking the origin, a new one waits here, without a fill,
        // until a copy answers it or an answer shows the origin's playlist holds it: then
        // it goes upstream at once, whatever else waits (its answer will hold it), as any
        // request does that the origin is known to hold.
        let (latest, busy, holds, full) = {
            let st = pl.state.lock();
            let open = st.open.is_some_and(|o| wants <= o);
            let busy = !open && st.upstream.iter().any(|t| *t <= wants);
            let holds = st.holds(msn, d.part);
            (st.latest.clone(), busy, holds, st.asking_full(req.key()))
        };
        if let Some(s) = &latest {
            // Only a fresh copy may refuse: an old one would call a request "too far" that
            // the origin's current playlist allows.
            let fresh = s.obj.staleness(edge.clock.now()).is_none();
            // RFC 8216bis §6.2.5.2 and §6.2.5.1: a playlist holding EXT-X-ENDLIST ignores
            // `_HLS_msn`, `_HLS_part` and `_HLS_skip`: it is answered at once, never held,
            // refused as too far, or sent upstream once per distinct directive.
            if fresh && s.scan.endlist {
                if s.serves(req) {
                    return Ok(serve_latest(req, &s.obj));
                }
            } else if fresh && s.scan.too_far_at(msn, d.part, s.obj.age(edge.clock.now())) {
                return Err(EdgeError::BadRequest(TOO_FAR));
            }
            // Nor may a stale one answer: the origin may have restarted the stream (an encoder
            // restart resets the media sequence), and the old copy would then claim to hold
            // every segment the new stream lists.
            if !d.skip && fresh && s.serves(req) && s.scan.satisfies(msn, d.part) {
                return Ok(serve_latest(req, &s.obj));
            }
        }
        if holds || ((d.skip || !busy) && !full) {
            // A viewer whose share of the route's fill slots is all taken would wait for it
            // inside `phases` while listed as upstream, holding every waiter behind it: it
            // waits here first, unlisted (`proxy::fill_limit`).
            if !request::share_free(req).await {
                return Err(crate::cache::fill::OriginFailure::Busy.into());
            }
            let upstream = Upstream::register(pl, (!d.skip).then_some(wants));
            let resp = tokio::time::timeout_at(deadline, request::phases(req)).await;
            // The fill asked the origin until its own hold ended (its leader's), and no
            // answer held what this request asks for: this viewer, which joined it later,
            // has time left. Nothing was stored, so there is nothing to settle: looked at
            // again, it answers from a newer copy or asks again with a fill of its own.
            if let Ok(Err(EdgeError::HoldUnsatisfied)) = resp {
                drop(upstream);
                continue;
            }
            // Waiters re-check once this copy is stored (or shortly after, if it is not); at
            // once when its answer is one no waiter can be served (`State::open`, marked before
            // the answer's head reached us): no copy will come to wake them.
            let mut settled = pl.tick.subscribe();
            edge.spawn(async move {
                if !upstream.opened() {
                    let settle = Duration::from_millis(200);
                    let _ = tokio::time::timeout(settle, settled.changed()).await;
                }
                drop(upstream);
            });
            return match resp {
                Ok(r) => r,
                Err(_) => Ok(hold_expired(req)),
            };
        }
        if tokio::time::timeout_at(deadline, tick.changed())
            .await
            .is_err()
        {
            return Ok(hold_expired(req));
        }
    }
    Ok(hold_expired(req))
}

/// How long a blocking reload is held, given the playlist's latest copy: three target
/// durations, but never past `live.max_hold` (the target duration is the origin's word, up to
/// a day, and a hold pins a viewer connection and a waiter); `cache.collapse_timeout` before a
/// copy is known.
fn hold(edge: &Edge, latest: Option<&Snapshot>) -> Duration {
    latest
        .map(|s| s.scan.target * 3)
        .filter(|h| !h.is_zero())
        .unwrap_or(edge.config.cache.collapse_timeout)
        .min(edge.config.live.max_hold)
}

/// The fill driver's judgement of the origin's 200 to the blocking reload `key`, before anyone
/// sees it: `None` when `body` holds what the reload asks for (RFC 8216bis §6.2.5.2), or when
/// it cannot tell (no media playlist, too large to read, `EXT-X-ENDLIST`: the directives are
/// ignored then); else how long to wait before asking the origin again. An origin that does
/// not hold blocking reloads (a file server behind the edge: the playlist still says
/// `CAN-BLOCK-RELOAD=YES`, the CDN being meant to hold) answers at once with the playlist it
/// has: served, the player asks again for what it already asked; stored under the blocking
/// key, every later request for it gets the same answer. Asked again every half part target
/// (half a target duration without parts), at least `MIN_REASK` apart: the origin's next
/// part is due within one.
#[cfg(test)]
pub(crate) fn unsatisfied(key: &str, body: &[u8]) -> Option<Early> {
    unsatisfied_by(key, scan_in(body, query_of(key)).as_ref())
}

/// The fill driver's reading of the origin's 200 to the blocking reload `key`: whether it
/// holds what was asked (`unsatisfied`), and, whatever it was asked, how far the origin's
/// playlist reaches (`State::reach`: the fills and waiters it covers ask at once, `Pace`).
pub(crate) fn judge(edge: &Edge, key: &str, body: &[u8]) -> Option<Early> {
    let scanned = scan_in(body, query_of(key));
    if let Some(reach) = scanned.as_ref().and_then(Scan::reach) {
        if let Some(pl) = edge.live.existing(&playlist_key(key)) {
            let farther = {
                let mut st = pl.state.lock();
                // A stream that restarted behind the mark (its media sequence back by more
                // than a late answer's lag) replaces it.
                let farther = st
                    .reach
                    .is_none_or(|r| r < reach || r.0 > reach.0.saturating_add(2));
                if farther {
                    st.reach = Some(reach);
                }
                farther
            };
            if farther {
                pl.bump();
            }
        }
    }
    unsatisfied_by(key, scanned.as_ref())
}

/// [`unsatisfied`] of a scanned answer.
fn unsatisfied_by(key: &str, scan: Option<&Scan>) -> Option<Early> {
    let (msn, part) = blocking_directives(key)?;
    let scan = scan?;
    if scan.endlist || scan.satisfies(msn, part) {
        return None;
    }
    // The answer is the origin's playlist now: a request past what it may add soon is refused,
    // as one past a fresh latest copy is (`blocking_reload`), not asked again for the hold.
    if scan.too_far(msn, part) {
        return Some(Early::TooFar);
    }
    let unit = scan.part_target.unwrap_or(scan.target);
    Some(Early::Again((unit / 2).max(MIN_REASK)))
}

/// What the fill of a blocking reload does with an origin answer that lacks what it asks for
/// (`unsatisfied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Early {
    /// Ask again, no sooner than this long after (and in a turn of the playlist's, `Pace`).
    Again(Duration),
    /// The request is more than the playlist may add soon: 400.
    TooFar,
}

/// The message of the 400 for a blocking reload too far past the playlist's last segment.
pub(crate) const TOO_FAR: &str = "_HLS_msn more than two segments, or _HLS_part more than the \
     advance part limit, past the playlist's last";

/// A blocking reload's fill asking its origin in its playlist's pace (`proxy::fill::run`):
/// every fill of one playlist asking again shares one turn per interval, whichever fill takes
/// it, so the origin sees one request per interval for the playlist however many distinct
/// requests wait (viewers asking for distinct parts in descending order, or delta updates,
/// each had a fill asking ten times a second before: 8 viewers, 56 requests a second against
/// a playlist that did not change).
///
/// Turns are not queued: a fill waits for the next one and the first to come takes it. A
/// queue handed them out in arrival order, so a client holding many distinct keys took most
/// of them, and an honest viewer's fill waited behind them until its hold ran out (503)
/// although the other fills' answers had long shown the origin's playlist held what it asked
/// for. Who asks does not matter now: every answer the fill driver reads tells how far the
/// origin's playlist reaches (`judge`, `State::reach`) and wakes every fill waiting for a turn.
/// A fill the latest copy answers ends at once (its viewers are served from that copy), and
/// one whose request the origin's playlist was seen to hold asks at once, out of the pace,
/// once (its answer will hold it; a delta update is never answered from a full copy). So a
/// held request is answered within about one interval of the origin having what it asks for,
/// whatever another client holds, at the cost of at most one request per distinct key: what
/// an origin that holds blocking reloads itself sees through the edge. Distinct keys
/// with a fill asking at once are at most `MAX_ASKING` (`blocking_reload`).
///
/// Dropped, it takes the fill off the playlist's list of keys asking.
pub(crate) struct Pace {
    pl: Arc<Playlist>,
    /// The fill's base key (the viewer's request key, as `blocking_reload` knows it).
    key: String,
    msn: u64,
    part: Option<u64>,
    /// The hold's end (`hold`, as long as the leader is held): no turn is taken past it.
    end: Instant,
    /// Asked once out of the pace already.
    out_of_turn: bool,
    /// Listed in `State::asking`.
    listed: bool,
}

/// What a fill waiting for its playlist's turn does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Send the request now.
    Ask,
    /// Ask no more: the latest copy answers the fill's viewers, the hold ended, or no viewer
    /// waits any more.
    Stop,
}

impl Pace {
    /// The pace of the fill of `key` (its base key), started at `started`: `None` unless `key`
    /// is a blocking playlist reload.
    pub(crate) fn of(edge: &Edge, key: &str, started: Instant) -> Option<Pace> {
        let (msn, part) = blocking_directives(key)?;
        let pl = edge.live.playlist(&playlist_key(key));
        let end = started + hold(edge, pl.latest().as_deref());
        Some(Pace {
            pl,
            key: key.to_string(),
            msn,
            part,
            end,
            out_of_turn: false,
            listed: false,
        })
    }

    /// Before the fill's first request: at once, unless the playlist's fills are asking again
    /// (its origin answered one too early) and the next turn is still to come; then in a turn,
    /// or sooner as `Pace` says. A viewer whose fill ran out of turns before its own hold did
    /// looks again with a new fill (`blocking_reload`): unpaced, each such fill was one more
    /// request. An origin that holds blocking reloads never sets the pace.
    pub(crate) async fn first(&mut self, edge: &Edge, fill: &Fill) -> Turn {
        self.list();
        let now = Instant::now();
        if self.pl.state.lock().next_reask.is_none_or(|at| at <= now) {
            return Turn::Ask;
        }
        self.wait(edge, fill, now).await
    }

    /// After an answer that came too early: asks again `after` its last request at the soonest,
    /// in a turn of the playlist's (or sooner as `Pace` says); no turn is taken for `after`.
    pub(crate) async fn again(&mut self, edge: &Edge, fill: &Fill, after: Duration) -> Turn {
        let at = Instant::now() + after;
        {
            let mut st = self.pl.state.lock();
            st.next_reask = Some(st.next_reask.map_or(at, |n| n.max(at)));
            st.reask_every = after;
        }
        self.wait(edge, fill, at).await
    }

    fn list(&mut self) {
        if !self.listed {
            self.pl.state.lock().asking.push(self.key.clone());
            self.listed = true;
        }
    }

    /// Waits for a turn of the playlist's, no sooner than `own` (the fill's own interval), and
    /// wakes on every change of its state (a newer copy, a farther reach, a request ended).
    async fn wait(&mut self, edge: &Edge, fill: &Fill, own: Instant) -> Turn {
        let mut tick = self.pl.tick.subscribe();
        // The viewers are counted once the fill waited: the leader reads the head only after
        // it started the fill.
        let mut waited = false;
        for _ in 0..MAX_ROUNDS {
            if self.settled(edge) {
                return Turn::Stop;
            }
            let now = Instant::now();
            if now >= self.end || (waited && fill.head_waiters() == 0) {
                return Turn::Stop;
            }
            let wake = {
                let mut st = self.pl.state.lock();
                if !self.out_of_turn && st.holds(self.msn, self.part) {
                    self.out_of_turn = true;
                    return Turn::Ask;
                }
                let turn = st.next_reask.unwrap_or(now).max(own);
                if turn <= now {
                    st.next_reask = Some(now + st.reask_every);
                    return Turn::Ask;
                }
                turn
            };
            // Races the turn (or the hold's end) against any change of the playlist's state.
            tokio::select! {
                _ = tokio::time::sleep_until(wake.min(self.end)) => {}
                _ = tick.changed() => {}
            }
            waited = true;
        }
        Turn::Stop
    }

    /// Whether the playlist's latest copy, fresh, now answers the fill's request (holds what it
    /// asks for, or shows it too far): another fill's answer came meanwhile, so this one's
    /// viewers look again (`blocking_reload`) rather than wait for its next request.
    fn settled(&self, edge: &Edge) -> bool {
        let Ok(d) = directives_of(&self.key) else {
            return false;
        };
        let Some(s) = self.pl.latest() else {
            return false;
        };
        let now = edge.clock.now();
        if s.obj.staleness(now).is_some() {
            return false;
        }
        s.scan.endlist
            || s.scan.too_far_at(self.msn, self.part, s.obj.age(now))
            || (!d.skip && s.scan.satisfies(self.msn, self.part))
    }
}

impl Drop for Pace {
    fn drop(&mut self) {
        if self.listed {
            let mut st = self.pl.state.lock();
            if let Some(i) = st.asking.iter().position(|k| *k == self.key) {
                st.asking.swap_remove(i);
            }
            drop(st);
            // Waiters held back by `MAX_ASKING` look again.
            self.pl.bump();
        }
    }
}

/// `(msn, part)` in the order a live playlist satisfies them: a whole segment (`part` absent)
/// after every part of it.
fn order(msn: u64, part: Option<u64>) -> (u64, u64) {
    (msn, part.unwrap_or(u64::MAX))
}

/// A blocking request upstream (listed under what it waits for, unless a delta update);
/// dropping it wakes the waiters.
struct Upstream(Arc<Playlist>, Option<(u64, u64)>);

impl Upstream {
    fn register(pl: &Arc<Playlist>, wants: Option<(u64, u64)>) -> Upstream {
        if let Some(w) = wants {
            pl.state.lock().upstream.push(w);
        }
        Upstream(pl.clone(), wants)
    }

    /// Whether the origin answered what this request waits for with a copy that answers no
    /// waiter (`State::open`).
    fn opened(&self) -> bool {
        self.1
            .is_some_and(|w| self.0.state.lock().open.is_some_and(|o| w <= o))
    }
}

/// The `(_HLS_msn, _HLS_part)` of `key` when it is a blocking playlist reload (an `.m3u8`
/// asked with `_HLS_msn`), read as `intercept` reads them: from the key's query.
fn blocking_directives(key: &str) -> Option<(u64, Option<u64>)> {
    if !is_playlist_path(key) {
        return None;
    }
    let d = directives_of(key).ok()?;
    Some((d.msn?, d.part))
}

/// The delivery directives of a key's query (`Directives::parse`).
fn directives_of(key: &str) -> Result<Directives, &'static str> {
    let base = key.split('\0').next().unwrap_or(key);
    Directives::parse(base.split_once('?').map(|(_, q)| q))
}

/// Whether the fill of `key` is a blocking playlist reload, which the origin may hold until the
/// playlist holds what it asks for (`proxy::fill` leaves that hold out of the answer's age).
pub(crate) fn is_blocking_reload(key: &str) -> bool {
    blocking_directives(key).is_some()
}

/// The fill driver's call when the origin answered the blocking reload `key` (2xx, or a 304
/// revalidating it) with what will be no fresh stored copy: not stored (`no-store`, an answer
/// only shared with the fill's readers: `no-cache` without a validator, `max-age=0`), or
/// stored already stale. No copy will wake this playlist's waiters for that `(M, P)`, and each
/// would otherwise go upstream only once the request before it left the upstream list, one per
/// settle timeout: the mark (`State::open`) sends every waiter for it, or an earlier one,
/// upstream at once. Made before the viewers get the answer's head.
pub(crate) fn answered_unshared(edge: &Edge, key: &str) {
    let Some((msn, part)) = blocking_directives(key) else {
        return;
    };
    // Only a playlist someone holds for: the blocking reload that sent this made the state.
    let Some(pl) = edge.live.existing(&playlist_key(key)) else {
        return;
    };
    {
        let mut st = pl.state.lock();
        let (m, p) = match &st.latest {
            Some(s) => s.scan.roll_over(msn, part),
            None => (msn, part),
        };
        let answered = order(m, p);
        if st.open.is_none_or(|o| o < answered) {
            st.open = Some(answered);
        }
    }
    pl.bump();
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(w) = self.1 {
            let mut st = self.0.state.lock();
            if let Some(i) = st.upstream.iter().position(|t| *t == w) {
                st.upstream.swap_remove(i);
            }
        }
        self.0.bump();
    }
}

fn serve_latest(req: &Req<'_>, obj: &CachedObject) -> Response<Body> {
    let cache_status = format!("{}; hit; detail=llhls-latest", req.cdn());
    serve_object(
        req,
        obj,
        CacheStatus::Hit,
        cache_status,
        req.edge.clock.now(),
    )
}

/// RFC 8216bis §6.2.5.2: not satisfied within three target durations.
fn hold_expired(req: &Req<'_>) -> Response<Body> {
    let mut resp = Response::new(Body::full(bytes::Bytes::from_static(
        b"blocking playlist reload not satisfied within three target durations\n",
    )));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    // `X-Cache` and `Cache-Status` as on any miss the edge answered (and its access line).
    crate::http::response::stamp(
        &mut resp,
        crate::http::response::CacheInfo {
            status: crate::cache::status::CacheStatus::Miss,
            cache_status: format!("{}; fwd=miss; detail=llhls-hold", req.cdn()),
            age: None,
        },
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Called by the fill driver for every manifest it stores: the latest copy (waking blocking
/// requests it satisfies), then `announce`.
///
/// `viewer` is the request headers of the fill's leader: the prefetches a new copy starts ask
/// as that viewer would.
pub fn observe(
    edge: &Arc<Edge>,
    route: &Route,
    key: &str,
    obj: &Arc<CachedObject>,
    viewer: &http::HeaderMap,
) {
    let scanned = scan_of(key, &obj.body);
    observe_scanned(edge, route, key, obj, scanned, viewer);
}

/// `observe` of a copy whose body `scan_of` read already.
fn observe_scanned(
    edge: &Arc<Edge>,
    route: &Route,
    key: &str,
    obj: &Arc<CachedObject>,
    scanned: Option<Scan>,
    viewer: &http::HeaderMap,
) {
    if let Some(scan) = scanned.as_ref().filter(|s| !s.skipped) {
        let pl = edge
            .live
            .for_fill(&playlist_key(key), viewer, &edge.config.cdn_id);
        // Made before the lock is taken: copying and weighing a large scan (on the blocking
        // pool, `observe_late`) must not hold the viewers' blocking reloads of this playlist.
        let variant = key.find('\0').map_or("", |i| &key[i..]).to_string();
        let copy = Arc::new(Snapshot {
            weight: scan.weight() + variant.len() as u64,
            scan: scan.clone(),
            obj: obj.clone(),
            variant,
        });
        let (newer, replaced) = {
            let mut st = pl.state.lock();
            // A late copy older than the latest does not replace it, unless the latest is
            // stale: a media sequence that went backwards (a restarted stream) would
            // otherwise never be recorded again.
            // Nor may a fresh latest copy hide a restart: a blocking answer may be fresh for
            // a minute while the copies after it show the new stream, and every request in
            // the new numbering would be answered from the old one (it "holds" them all).
            let now = edge.clock.now();
            let newer = st.latest.as_ref().is_none_or(|l| {
                !l.scan.newer_than(scan)
                    || l.obj.staleness(now).is_some()
                    || (obj.stored_at >= l.obj.stored_at && scan.restarted_behind(&l.scan))
            });
            // A stream that restarted behind the origin's last unshared answer (its media
            // sequence back by more than the two segments a request may be ahead): that mark
            // is of the old stream, and would send this one's waiters upstream uncollapsed.
            if newer
                && st
                    .open
                    .is_some_and(|(m, _)| m > scan.next_msn().saturating_add(2))
            {
                st.open = None;
            }
            // The copy it replaces is freed after the lock, as it was made before it.
            let replaced = if newer { st.latest.replace(copy) } else { None };
            (newer, replaced)
        };
        drop(replaced);
        if newer {
            edge.live.reweigh(&playlist_key(key), &pl);
            pl.bump();
        }
    }
    announce_scanned(edge, route, key, &obj.body, scanned.as_ref(), viewer);
}

/// Called by the fill driver when a `304` refreshed a stored playlist (`stale`, now `fresh`:
/// the same body, fresh again). When the copy answering blocking reloads is that body, of the
/// same variant, the refreshed copy takes its place: a stale one answers none, and each
/// request it satisfies would go to the origin until the playlist changed. Waiters re-check.
pub fn refreshed(edge: &Edge, key: &str, stale: &CachedObject, fresh: &Arc<CachedObject>) {
    if !is_playlist_path(key) {
        return;
    }
    let Some(pl) = edge.live.existing(&playlist_key(key)) else {
        return;
    };
    let variant = key.find('\0').map_or("", |i| &key[i..]);
    let replaced = {
        let mut st = pl.state.lock();
        let Some(l) = st
            .latest
            .as_ref()
            .filter(|l| l.variant == variant && l.obj.body == stale.body)
        else {
            return;
        };
        let copy = Arc::new(Snapshot {
            scan: l.scan.clone(),
            obj: fresh.clone(),
            variant: l.variant.clone(),
            weight: l.weight,
        });
        st.latest.replace(copy)
    };
    // Freed after the lock, as `observe_scanned` frees the copy it replaces.
    drop(replaced);
    pl.bump();
}

/// Window membership, retention and prefetch for a live manifest's body. The fill driver calls
/// it as soon as the whole body arrived, before the viewers get its last bytes, so a viewer who
/// reads the new manifest finds the newly listed objects already being fetched; `observe` calls
/// it again (a no-op for what was seen).
pub fn announce(edge: &Arc<Edge>, route: &Route, key: &str, body: &[u8], viewer: &http::HeaderMap) {
    if body.len() > MAX_SCAN && is_playlist_path(key) {
        tracing::debug!(key, len = body.len(), "live playlist too large to read");
        crate::metrics::Metrics::inc(&edge.metrics.abuse.live_scans_skipped);
    }
    let scanned = scan_of(key, body);
    announce_scanned(edge, route, key, body, scanned.as_ref(), viewer);
}

/// The scan `announce` and `observe` work from: a media playlist's, `None` for anything else
/// (an MPD is read by `prefetch::observe_mpd`) or a playlist that does not scan.
fn scan_of(key: &str, body: &[u8]) -> Option<Scan> {
    is_playlist_path(key)
        .then(|| scan_in(body, query_of(key)))
        .flatten()
}

/// The query of the request keyed `key` (for `EXT-X-DEFINE:QUERYPARAM`): the one its cache key
/// kept, so a parameter the route drops (`drop_query_params`, a token) defines nothing.
fn query_of(key: &str) -> Option<&str> {
    let path = key.splitn(3, '|').nth(2)?;
    let path = path.split('\0').next().unwrap_or(path);
    path.split_once('?').map(|(_, q)| q)
}

/// `announce` of a body whose `scan_of` is `scanned`.
fn announce_scanned(
    edge: &Arc<Edge>,
    route: &Route,
    key: &str,
    body: &[u8],
    scanned: Option<&Scan>,
    viewer: &http::HeaderMap,
) {
    if !is_playlist_path(key) {
        crate::proxy::prefetch::observe_mpd(edge, route, key, body, viewer);
        let pl_key = playlist_key(key);
        if let Some(pl) = edge.live.existing(&pl_key) {
            edge.live.reweigh(&pl_key, &pl);
        }
        return;
    }
    let Some(scan) = scanned else {
        return;
    };
    if scan.endlist {
        return;
    }
    let pl_key = playlist_key(key);
    let pl = edge.live.for_fill(&pl_key, viewer, &edge.config.cdn_id);
    // What the window holds, evicts, keeps off disk and clears refusals of is shared by every
    // viewer, so it is read from the origin's text alone: a URI resolved with a `QUERYPARAM`
    // value is the requesting viewer's choice (`?p=../vod/x%23` names any object of the host)
    // and is left out, as an unresolved one is. Prefetch asks the origin as that viewer would,
    // so it follows the viewer's reading.
    let origin_read;
    let shared = if scan.steered {
        origin_read = scan_in(body, None);
        match origin_read.as_ref() {
            Some(s) => s,
            None => return,
        }
    } else {
        scan
    };
    for (h, start) in &shared.hint_starts {
        if let Some(k) = member_key(&pl_key, h, &edge.config.cache.drop_query_params) {
            edge.live.hinted.insert(k, *start);
        }
    }
    retain(edge, route, &pl_key, &pl, shared);
    crate::proxy::prefetch::after_playlist(edge, route, &pl_key, &pl, scan, viewer);
    edge.live.reweigh(&pl_key, &pl);
}

/// Whether reading the manifest at `key` (`len` bytes) for `announce` and `observe` is work
/// for the blocking pool: a playlist or MPD over `READ_INLINE` (a playlist past `MAX_SCAN` is
/// not scanned at all).
fn off_worker(key: &str, len: usize) -> bool {
    if len <= crate::proxy::READ_INLINE {
        return false;
    }
    (is_playlist_path(key) && len <= MAX_SCAN) || is_mpd_path(key)
}

/// A large manifest's `announce` running on the blocking pool (`announce_early`): its scan,
/// and the permit of `SCANS_OFF_WORKER` it holds until `observe_late` is done with it.
pub struct Offloaded(tokio::task::JoinHandle<(Option<Scan>, OwnedSemaphorePermit)>);

/// A permit to read one large manifest on the blocking pool, if fewer than `SCANS_OFF_WORKER`
/// are; else the copy is not scanned (logged, counted).
fn scan_permit(edge: &Edge, key: &str, len: usize) -> Option<OwnedSemaphorePermit> {
    let permit = edge.live.scan_permits.clone().try_acquire_owned().ok();
    if permit.is_none() {
        tracing::debug!(
            key,
            len,
            "large live manifest not scanned: the scans are busy"
        );
        crate::metrics::Metrics::inc(&edge.metrics.abuse.live_scans_skipped);
    }
    permit
}

/// The fill driver's call at a manifest's last byte, with its whole `body`: `announce` on this
/// worker for a manifest up to `READ_INLINE` (the hot live path: prefetch starts before the
/// viewers read the last byte), on the blocking pool for a larger one. A large manifest's
/// prefetch therefore starts a scan's time later, maybe after its viewers have read it: the
/// price of not holding this worker's viewers for that time. `None` when nothing was sent to
/// the pool (done inline, or skipped when too many large scans are running).
pub fn announce_early(
    edge: &Arc<Edge>,
    route: usize,
    key: &str,
    body: Vec<u8>,
    viewer: &http::HeaderMap,
) -> Option<Offloaded> {
    let r = edge.config.routes.get(route)?;
    if !off_worker(key, body.len()) {
        announce(edge, r, key, &body, viewer);
        return None;
    }
    let permit = scan_permit(edge, key, body.len())?;
    let (edge, key, viewer) = (edge.clone(), key.to_string(), viewer.clone());
    Some(Offloaded(tokio::task::spawn_blocking(move || {
        let scanned = scan_of(&key, &body);
        if let Some(route) = edge.config.routes.get(route) {
            announce_scanned(&edge, route, &key, &body, scanned.as_ref(), &viewer);
        }
        (scanned, permit)
    })))
}

/// The fill driver's call once it stored a manifest: `observe` on this worker for one up to
/// `READ_INLINE`, on the blocking pool for a larger one (reusing the scan `early` made, if it
/// did). The latest copy of a large playlist, which answers blocking reloads, is so recorded
/// a scan's time after the fill ended.
pub fn observe_late(
    edge: &Arc<Edge>,
    route: usize,
    key: &str,
    obj: &Arc<CachedObject>,
    viewer: &http::HeaderMap,
    early: Option<Offloaded>,
) {
    let Some(r) = edge.config.routes.get(route) else {
        return;
    };
    if early.is_none() && !off_worker(key, obj.body.len()) {
        observe(edge, r, key, obj, viewer);
        return;
    }
    let (edge2, key, obj, viewer) = (edge.clone(), key.to_string(), obj.clone(), viewer.clone());
    edge.spawn(async move {
        let edge = edge2;
        let (scanned, permit) = match early {
            Some(Offloaded(h)) => match h.await {
                Ok((scanned, permit)) => (Some(scanned), permit),
                Err(e) => {
                    tracing::warn!(key, error = %e, "live manifest scan failed");
                    return;
                }
            },
            None => match scan_permit(&edge, &key, obj.body.len()) {
                Some(permit) => (None, permit),
                None => return,
            },
        };
        let scan = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let Some(route) = edge.config.routes.get(route) else {
                return;
            };
            let scanned = scanned.unwrap_or_else(|| scan_of(&key, &obj.body));
            observe_scanned(&edge, route, &key, &obj, scanned, &viewer);
        });
        if let Err(e) = scan.await {
            tracing::warn!(error = %e, "live manifest observe failed");
        }
    });
}

/// Records the window's members and ages out what left it: out of RAM (and, past the DVR
/// window, out of the store) once no live playlist's window lists it any more.
fn retain(edge: &Edge, route: &Route, pl_key: &str, pl: &Arc<Playlist>, scan: &Scan) {
    let live = route.live;
    let now = Instant::now();
    let mut expired = Vec::new();
    let mut gone = Vec::new();
    // Members that entered this window, and members that left it (its own bookkeeping).
    let mut entered = Vec::new();
    let mut left_window = Vec::new();
    let drop = &edge.config.cache.drop_query_params;
    let listed: Vec<(u64, String)> = scan
        .uris()
        .filter_map(|(n, u)| member_key(pl_key, u, drop).map(|k| (n, k)))
        .collect();
    let listed_set: HashSet<&str> = listed.iter().map(|(_, k)| k.as_str()).collect();
    // Newly listed members and every hinted URI: each must be available now (below).
    let mut announced: Vec<String> = scan
        .hints
        .iter()
        .filter_map(|u| member_key(pl_key, u, drop))
        .collect();
    {
        let mut st = pl.state.lock();
        let in_window: HashSet<String> = st.window.iter().map(|(_, k)| k.clone()).collect();
        for (n, k) in &listed {
            if !in_window.contains(k) {
                announced.push(k.clone());
                if st.window.len() >= PER_PLAYLIST {
                    if let Some((_, k)) = st.window.pop_front() {
                        left_window.push(k);
                    }
                }
                entered.push(k.clone());
                st.window.push_back((*n, k.clone()));
            }
        }
        let first = scan.media_sequence;
        let mut kept = VecDeque::with_capacity(st.window.len());
        let window = std::mem::take(&mut st.window);
        for (n, k) in window {
            let still = n >= first && listed_set.contains(k.as_str());
            if still || (scan.skipped && n >= first) {
                kept.push_back((n, k));
            } else {
                left_window.push(k.clone());
                if st.left.len() >= PER_PLAYLIST {
                    if let Some((_, k)) = st.left.pop_front() {
                        expired.push(k);
                    }
                }
                st.left.push_back((now, k));
            }
        }
        st.window = kept;
        while let Some((at, _)) = st.left.front() {
            let age = now.saturating_duration_since(*at);
            if age < live.retention_margin {
                break;
            }
            let beyond_dvr = live.dvr.is_none_or(|d| age >= d);
            if !beyond_dvr {
                break;
            }
            if let Some((_, k)) = st.left.pop_front() {
                gone.push(k);
            }
        }
        // Past the margin but inside the DVR window: out of RAM, kept on disk.
        for (at, k) in st.left.iter() {
            if now.saturating_duration_since(*at) >= live.retention_margin {
                expired.push(k.clone());
            }
        }
    }
    forget_refusals(edge, &announced);
    // Outside the state's lock (each member has its own): memberships first, then removals,
    // each only of a member no other window lists.
    let members = &edge.live.members;
    for k in entered {
        let made = members.get_or_insert_with(&k, || {
            Ok::<_, std::convert::Infallible>(Arc::new(Member::new(live.dvr)))
        });
        let Ok(m) = made;
        m.enter(pl);
    }
    for k in &left_window {
        if let Some(m) = members.get(k) {
            m.leave(pl);
        }
    }
    let unlisted = |k: &str| members.get(k).is_none_or(|m| !m.listed());
    for k in expired {
        if unlisted(&k) {
            edge.ram.remove(&k);
        }
    }
    for k in gone {
        match members.get(&k) {
            Some(m) if m.listed() => continue,
            Some(m) => m.expired.store(true, std::sync::atomic::Ordering::Relaxed),
            None => {
                let m = Member::new(live.dvr);
                m.expired.store(true, std::sync::atomic::Ordering::Relaxed);
                members.insert(k.clone(), Arc::new(m));
            }
        }
        edge.ram.remove(&k);
        // Only a DVR route put live members on disk.
        if let (Some(store), Some(_)) = (&edge.store, live.dvr) {
            store.remove(k.as_bytes());
        }
    }
}

/// RFC 8216bis §6.2.1 and §6.2.6: a segment or part "MUST be available" when it is added to a
/// playlist, and a hinted resource when its `EXT-X-PRELOAD-HINT` is. A 404 or 410 the edge kept
/// from a request made before that (a player or a prefetch a moment early, the origin's SHOULD
/// for resources it does not have yet) would keep answering for its TTL what the playlist now
/// says exists: it is dropped as soon as a copy of the playlist lists or hints the URI. A live
/// MPD's copy does the same for the segments it says are available
/// (`prefetch::forget_early_refusals`).
pub(crate) fn forget_refusals(edge: &Edge, keys: &[String]) {
    for k in keys {
        let refused = edge
            .ram
            .get(k)
            .is_some_and(|o| matches!(o.status.as_u16(), 404 | 410));
        if refused {
            edge.purge_key(k);
        }
    }
}

/// The cache key of `uri` listed in the playlist keyed `pl_key` (same scheme and host; the
/// URI resolved against the playlist's path). `None` for another host or a bad URI.
pub fn member_key(pl_key: &str, uri: &str, drop: &[String]) -> Option<String> {
    let mut it = pl_key.splitn(3, '|');
    let (scheme, host, path) = (it.next()?, it.next()?, it.next()?);
    let path = path.split('?').next().unwrap_or(path);
    let base = url::Url::parse(&format!("http://{host}{path}")).ok()?;
    let u = base.join(uri.trim()).ok()?;
    if u.host_str() != base.host_str() || u.port() != base.port() {
        return None;
    }
    let scheme = match scheme {
        "https" => crate::cache::key::Scheme::Https,
        _ => crate::cache::key::Scheme::Http,
    };
    let npath = crate::cache::key::normalize_path(u.path()).ok()?;
    Some(crate::cache::key::encode_key(
        scheme,
        host,
        &npath,
        u.query(),
        drop,
    ))
}

/// The existing live state of `pl_key` (tests, prefetch).
pub fn playlist_of(edge: &Edge, pl_key: &str) -> Option<Arc<Playlist>> {
    edge.live.existing(pl_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LL: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n\
#EXT-X-PART:DURATION=0.333,URI=\"part_10_0.m4s\"\n#EXTINF:2.0,\nseg_10.m4s\n\
#EXTINF:2.0,\nseg_11.m4s\n#EXT-X-PART:DURATION=0.333,URI=\"part_12_0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.333,URI=\"part_12_1.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part_12_2.m4s\"\n";

    /// The reach agrees with `satisfies`: every request up to it is held, the next one not.
    #[test]
    fn reach_is_the_last_request_a_copy_satisfies() {
        let s = scan(LL.as_bytes()).expect("playlist");
        assert_eq!(s.reach(), Some((12, 1)));
        for (msn, part) in [(11, None), (12, Some(0)), (12, Some(1))] {
            assert!(order(msn, part) <= (12, 1) && s.satisfies(msn, part));
        }
        for (msn, part) in [(12, Some(2)), (12, None), (13, Some(0))] {
            assert!(order(msn, part) > (12, 1) && !s.satisfies(msn, part));
        }
        let whole = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n\
#EXTINF:1.0,\nseg_5.ts\n#EXTINF:1.0,\nseg_6.ts\n";
        let w = scan(whole.as_bytes()).expect("playlist");
        assert_eq!(w.reach(), Some(order(6, None)));
        assert!(order(7, Some(0)) > order(6, None) && !w.satisfies(7, Some(0)));
    }

    #[test]
    fn scan_finds_last_segment_and_trailing_parts() {
        let s = scan(LL.as_bytes()).expect("playlist");
        assert_eq!(s.next_msn(), 12);
        assert_eq!(s.trailing_parts.len(), 2);
        assert_eq!(s.target, Duration::from_secs(2));
        assert!(s.satisfies(11, None));
        assert!(s.satisfies(12, Some(1)));
        assert!(!s.satisfies(12, Some(2)));
        assert!(!s.satisfies(12, None));
        assert!(!s.too_far(13, None));
        assert!(s.too_far(14, None));
        assert_eq!(s.hints, vec!["part_12_2.m4s".to_string()]);
    }

    #[test]
    fn a_part_index_past_a_complete_segments_last_is_the_next_segments_first() {
        // Segment 10 is complete with one part listed: its part 1 is segment 11's part 0,
        // which the copy holds (segment 11 is complete).
        let s = scan(LL.as_bytes()).expect("playlist");
        assert_eq!(s.roll_over(10, Some(1)), (11, Some(0)));
        assert!(s.satisfies(10, Some(1)));
        // Segment 11 lists no parts: nothing tells where its last is.
        assert_eq!(s.roll_over(11, Some(5)), (11, Some(5)));
        // The segment in progress is not complete: its part count is open.
        assert_eq!(s.roll_over(12, Some(2)), (12, Some(2)));
        assert!(!s.satisfies(12, Some(2)));
        // Whole-segment requests and parts within the segment stay as asked.
        assert_eq!(s.roll_over(10, Some(0)), (10, Some(0)));
        assert_eq!(s.roll_over(10, None), (10, None));
        // Segment 11 complete with parts 0 and 1, nothing of 12 yet: 11.2 is 12.0, not there.
        let pl = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:11\n\
#EXT-X-PART:DURATION=1.0,URI=\"p11_0.m4s\"\n#EXT-X-PART:DURATION=1.0,URI=\"p11_1.m4s\"\n\
#EXTINF:2.0,\ns11.m4s\n";
        let s = scan(pl.as_bytes()).expect("playlist");
        assert!(s.satisfies(11, Some(1)));
        assert!(!s.satisfies(11, Some(2)));
        assert!(!s.satisfies(11, Some(u64::MAX)));
    }

    #[test]
    fn parts_past_the_advance_part_limit_are_too_far() {
        let pl = LL.replace(
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MEDIA-SEQUENCE",
        );
        let s = scan(pl.as_bytes()).expect("playlist");
        // Parts 12.0 and 12.1 listed; the limit is 3 / 0.5 = 6 parts past 12.1.
        assert!(!s.too_far(12, Some(7)));
        assert!(s.too_far(12, Some(8)));
        assert!(s.too_far(12, Some(u64::MAX)));
        // Segment 13: one part per segment listed (segment 10's), so 13.4 is 12.5: 4 past.
        assert!(!s.too_far(13, Some(4)));
        assert!(s.too_far(13, Some(7)));
        assert!(!s.too_far(11, Some(99)), "listed already");
        // Without a part target nothing is judged by parts.
        assert!(!scan(LL.as_bytes()).expect("playlist").too_far(12, Some(99)));
        // A copy 1.2 s old may lag the origin by 3 parts of 0.5 s (limit 6 + 3).
        let aged = Duration::from_millis(1200);
        assert!(!s.too_far_at(12, Some(10), aged));
        assert!(s.too_far_at(12, Some(11), aged));
    }

    #[test]
    fn an_aged_copy_refuses_only_beyond_what_the_origin_could_have_added_since() {
        // Target 2 s, last segment 11: 14 is too far for a new copy, not for one 3 s old (the
        // origin may have added two segments since); 16 is too far for both.
        let s = scan(LL.as_bytes()).expect("playlist");
        assert!(s.too_far_at(14, None, Duration::ZERO));
        assert!(!s.too_far_at(14, None, Duration::from_secs(3)));
        assert!(!s.too_far_at(15, None, Duration::from_secs(3)));
        assert!(s.too_far_at(16, None, Duration::from_secs(3)));
    }

    /// A media playlist of target duration 1 s listing segments `first..=last`.
    fn window(first: u64, last: u64) -> Scan {
        let mut pl = format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
        for n in first..=last {
            pl.push_str(&format!("#EXTINF:1.0,\ns{n}.ts\n"));
        }
        scan(pl.as_bytes()).expect("playlist")
    }

    #[test]
    fn a_window_wholly_before_the_latest_is_a_restart_and_a_late_answer_is_not() {
        let latest = window(101, 106);
        // A packager restart: the new stream's window ends before the old one's first segment.
        assert!(window(0, 1).restarted_behind(&latest));
        assert!(window(95, 100).restarted_behind(&latest));
        // A late answer to an older blocking reload overlaps the newer copy's window: it is
        // no restart, and (not newer) it replaces nothing.
        let late = window(100, 105);
        assert!(!late.restarted_behind(&latest));
        assert!(latest.newer_than(&late));
        assert!(!window(101, 106).restarted_behind(&latest));
    }

    #[test]
    fn an_answer_that_lacks_what_the_blocking_reload_asks_for_is_asked_again() {
        let key = "http|h|/l/m.m3u8?_HLS_msn=12";
        // Last segment 11: 12 is not there; half a target duration of 2 s.
        assert_eq!(
            unsatisfied(key, LL.as_bytes()),
            Some(Early::Again(Duration::from_secs(1)))
        );
        assert_eq!(
            unsatisfied("http|h|/l/m.m3u8?_HLS_msn=11", LL.as_bytes()),
            None
        );
        // Part 12.1 is listed, 12.2 is not: half the part target.
        let pl = LL.replace(
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MEDIA-SEQUENCE",
        );
        let part = "http|h|/l/m.m3u8?_HLS_msn=12&_HLS_part=";
        assert_eq!(unsatisfied(&format!("{part}1"), pl.as_bytes()), None);
        assert_eq!(
            unsatisfied(&format!("{part}2"), pl.as_bytes()),
            Some(Early::Again(Duration::from_millis(250)))
        );
        // Never faster than MIN_REASK; an ended playlist ignores the directives; what is no
        // media playlist, or no blocking reload, is not judged.
        let fast = pl.replace("PART-TARGET=0.5", "PART-TARGET=0.1");
        assert_eq!(
            unsatisfied(&format!("{part}2"), fast.as_bytes()),
            Some(Early::Again(MIN_REASK))
        );
        let ended = format!("{LL}#EXT-X-ENDLIST\n");
        assert_eq!(unsatisfied(key, ended.as_bytes()), None);
        assert_eq!(unsatisfied(key, b"not a playlist"), None);
        assert_eq!(unsatisfied("http|h|/l/m.m3u8", LL.as_bytes()), None);
        // More than two segments past the last: refused, not asked again.
        assert_eq!(
            unsatisfied("http|h|/l/m.m3u8?_HLS_msn=14", LL.as_bytes()),
            Some(Early::TooFar)
        );
    }

    #[test]
    fn delivery_directives_leave_the_playlist_key() {
        assert_eq!(
            playlist_key("http|h|/a/m.m3u8?_HLS_msn=3&_HLS_part=1&x=1"),
            "http|h|/a/m.m3u8?x=1"
        );
        assert_eq!(
            playlist_key("http|h|/a/m.m3u8?_HLS_msn=3"),
            "http|h|/a/m.m3u8"
        );
    }

    #[test]
    fn malformed_directives_are_refused() {
        assert!(Directives::parse(Some("_HLS_part=1")).is_err());
        assert!(Directives::parse(Some("_HLS_msn=x")).is_err());
        assert!(!Directives::parse(Some("_HLS_skip=NO")).expect("ok").skip);
        let d = Directives::parse(Some("_HLS_msn=4&_HLS_part=2&_HLS_skip=v2")).expect("ok");
        assert_eq!((d.msn, d.part, d.skip), (Some(4), Some(2), true));
    }

    #[test]
    fn live_members_reach_the_store_only_inside_a_dvr_window() {
        let live = Live::default();
        assert!(live.admits_to_store("vod"));
        let m = |dvr, expired| {
            let m = Member::new(dvr);
            m.expired
                .store(expired, std::sync::atomic::Ordering::Relaxed);
            Arc::new(m)
        };
        live.members.insert("a".into(), m(None, false));
        live.members
            .insert("b".into(), m(Some(Duration::from_secs(7200)), false));
        live.members
            .insert("c".into(), m(Some(Duration::from_secs(7200)), true));
        assert!(!live.admits_to_store("a"));
        assert!(live.admits_to_store("b"));
        assert!(!live.admits_to_store("c"));
    }

    #[test]
    fn concurrent_first_uses_of_a_playlist_share_one_live_state() {
        // Many rounds of threads asking for a new key at once: every one must get the same
        // state (get-then-insert let two racing first requests create two).
        let live = Arc::new(Live::default());
        for round in 0..200 {
            let key = format!("http|h|/r{round}.m3u8");
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (live, key, barrier) = (live.clone(), key.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        live.playlist(&key)
                    })
                })
                .collect();
            let states: Vec<Arc<Playlist>> = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect();
            assert!(
                states.iter().all(|s| Arc::ptr_eq(s, &states[0])),
                "round {round}: two live states for one playlist"
            );
            assert!(Arc::ptr_eq(&live.playlist(&key), &states[0]));
        }
    }

    /// A state in use (a blocking reload waiting on it holds it) is never forgotten, however
    /// many new states push the ledger past its budget: a copy observed later must reach the
    /// state its waiters watch. States holding a copy go after those holding nothing.
    #[test]
    fn states_in_use_or_holding_a_copy_outlive_a_flood_of_empty_ones() {
        let live = Live::new(1 << 20);
        let long = "x".repeat(4096);
        let waited = live.playlist("http|h|/waited.m3u8");
        let filled = live.playlist("http|h|/filled.m3u8");
        filled.state.lock().known.insert("seg.ts".into());
        live.reweigh("http|h|/filled.m3u8", &filled);
        drop(filled);
        for i in 0..2_000 {
            drop(live.playlist(&format!("http|h|/f.m3u8?i={i}&{long}")));
            assert!(live.state_bytes() <= (1 << 20) + 4096 + SLOT_COST + STATE_COST);
        }
        let still = live.existing("http|h|/waited.m3u8").expect("in use: kept");
        assert!(Arc::ptr_eq(&still, &waited));
        assert!(live.existing("http|h|/filled.m3u8").is_some());
        assert!(live.states() < 300, "{} states", live.states());
    }

    /// Past `SCANS_OFF_WORKER` large scans on the blocking pool, a new large copy is not
    /// scanned (counted), rather than queued; once one ends, the next is scanned again.
    #[tokio::test]
    async fn large_scans_past_the_bound_are_skipped_and_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let cfg = crate::Config::for_origin("http://127.0.0.1:1").expect("config");
        let edge = Edge::new(cfg).await.expect("edge");
        let mut body = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
        while body.len() <= crate::proxy::READ_INLINE {
            body.push_str("#EXTINF:2.0,\nsegment_with_a_long_name.ts\n");
        }
        let key = "http|h|/l/live.m3u8";
        let busy = edge
            .live
            .scan_permits
            .clone()
            .try_acquire_many_owned(SCANS_OFF_WORKER as u32)
            .expect("permits");
        let headers = http::HeaderMap::new();
        let skipped = announce_early(&edge, 0, key, body.clone().into_bytes(), &headers);
        assert!(skipped.is_none(), "no scan sent to the pool");
        assert_eq!(edge.metrics.abuse.live_scans_skipped.load(Relaxed), 1);
        assert!(playlist_of(&edge, key).is_none(), "nothing announced");
        drop(busy);
        let sent = announce_early(&edge, 0, key, body.into_bytes(), &headers).expect("sent");
        let (scanned, _permit) = sent.0.await.expect("scan");
        assert_eq!(scanned.map(|s| s.segments.len()), Some(PER_PLAYLIST));
        assert!(playlist_of(&edge, key).is_some_and(|p| p.knows_any()));
        assert_eq!(edge.metrics.abuse.live_scans_skipped.load(Relaxed), 1);
    }

    #[test]
    fn member_keys_resolve_against_the_playlist() {
        assert_eq!(
            member_key("http|h|/ll/s/r0/media.m3u8", "seg_3.m4s", &[]).as_deref(),
            Some("http|h|/ll/s/r0/seg_3.m4s")
        );
        assert_eq!(
            member_key("http|h|/a/m.m3u8", "http://other/x.ts", &[]),
            None
        );
    }

    #[test]
    fn scans_substitute_define_variables_and_count_what_they_cannot_resolve() {
        let pl = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:5\n\
#EXT-X-DEFINE:NAME=\"d\",VALUE=\"segs\"\n#EXT-X-DEFINE:QUERYPARAM=\"q\"\n\
#EXT-X-DEFINE:IMPORT=\"i\"\n#EXTINF:2.0,\n{$d}/s5.m4s?x={$q}\n#EXTINF:2.0,\n{$i}/s6.m4s\n\
#EXT-X-PART:DURATION=1.0,URI=\"{$d}/p7_0.m4s\"\n#EXT-X-PART:DURATION=1.0,URI=\"{$i}/p7_1.m4s\"\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{$d}/p7_2.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{$i}/x\"\n";
        let key = "http|h|/a/m.m3u8?q=1&_HLS_msn=7";
        let s = scan_in(pl.as_bytes(), query_of(key)).expect("playlist");
        // Unresolved segments and parts still count: segment 6 is complete, part 7.1 listed.
        assert_eq!(s.next_msn(), 7);
        assert!(s.satisfies(7, Some(1)));
        let uris: Vec<&str> = s.uris().map(|(_, u)| u).collect();
        assert_eq!(uris, ["segs/s5.m4s?x=1", "segs/p7_0.m4s"]);
        assert_eq!(s.hints, ["segs/p7_2.m4s"]);
        // Read without the query, the QUERYPARAM one does not resolve either.
        let s = scan(pl.as_bytes()).expect("playlist");
        assert_eq!(s.uris().count(), 1);
    }
}
