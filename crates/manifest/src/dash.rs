//! DASH: every Period, AdaptationSet and Representation of a static MPD, expanded to the URLs a
//! player requests: SegmentTemplate (`$Number$` with @duration or a SegmentTimeline, `$Time$`
//! with @r repeats including r=-1 up to the next S or the period end), SegmentList, SegmentBase
//! (the single file) and bare BaseURL representations. BaseURL is resolved at every level
//! (MPD, Period, AdaptationSet, Representation), first BaseURL of each level, as players do by
//! default.

use std::time::Duration;

use dash_mpd_core::{
    AdaptationSet, Initialization, Period, Representation, SegmentBase, SegmentList,
    SegmentTemplate, SegmentTimeline, MPD,
};
use url::Url;

use super::template::{self, Vars};
use super::timeline;
use super::variables::MAX_URI;
use super::{resolve, ObjectKind, Reference, WalkError};

/// Parses `body` (fetched from `url`) and returns what it references. `budget` is how many more
/// objects the asset may hold; expansion stops with [`WalkError::TooManyObjects`] beyond it,
/// before any large timeline is materialised.
///
/// An MPD with more `S` and `SegmentURL` elements than `budget` is refused with
/// [`WalkError::TooManyReferences`] before it is deserialized: dash-mpd-core holds every one
/// (a 16 MiB timeline of `<S d="1"/>` took 140 MiB), and each names at least one segment.
pub fn references(url: &Url, body: &[u8], budget: usize) -> Result<Vec<Reference>, WalkError> {
    let (text, _) = checked(url, body, budget)?;
    let mpd = deserialize(url, text)?;
    Walker {
        url,
        budget,
        out: Vec::new(),
        live: None,
        uri_room: None,
    }
    .mpd(&mpd)
}

/// What a live (`type="dynamic"`) MPD lists at `now`: a `SegmentTimeline` names its window
/// itself, but for a last run repeated until further notice (`S@r="-1"`, no period end), whose
/// segments are those ended by `now`, back to `timeShiftBufferDepth`; a `SegmentTemplate@duration` with `$Number$` lists the segments available at `now`
/// (ISO/IEC 23009-1 5.3.9.5.3: a segment is available once it ends, measured from
/// `availabilityStartTime` plus the period start) back to `timeShiftBufferDepth` (at most
/// `budget` of them, the newest kept). A static MPD is walked as [`references`] does.
/// The segments counted are those [`LiveEdge::Settled`] by `now` (what prefetch asks for).
pub fn live_references(
    url: &Url,
    body: &[u8],
    now: std::time::SystemTime,
    budget: usize,
) -> Result<Vec<Reference>, WalkError> {
    live_references_of(url, &parse(url, body)?, now, budget, LiveEdge::Settled)
}

/// When a live segment the clock decides on (the last run of a timeline, `$Number$` with
/// `@duration`) counts as there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveEdge {
    /// A guard (half a segment, at most 1 s) after its availability start: against clock skew
    /// and an `availabilityStartTime` rounded to the second, what surely is at the origin.
    /// What prefetch asks for (a segment asked for before the origin has it is a refusal).
    Settled,
    /// From its availability start (5.3.9.5.3), brought forward by the representation's
    /// `availabilityTimeOffset` (its `SegmentTemplate`'s plus its `BaseURL`s', as players sum
    /// them; `INF` is not counted): from then on the MPD says it exists, and a player may ask.
    Announced,
}

/// [`live_references`] of an MPD [`parse`] read, counting segments from `edge`.
pub fn live_references_of(
    url: &Url,
    mpd: &MPD,
    now: std::time::SystemTime,
    budget: usize,
    edge: LiveEdge,
) -> Result<Vec<Reference>, WalkError> {
    if mpd.mpdtype.as_deref() != Some("dynamic") {
        return Walker {
            url,
            budget,
            out: Vec::new(),
            live: None,
            uri_room: Some(LIVE_URI_BYTES),
        }
        .mpd(mpd);
    }
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ast_ms = mpd
        .availabilityStartTime
        .as_ref()
        .map_or(0, |t| t.timestamp_millis());
    let depth = mpd
        .timeShiftBufferDepth
        .as_ref()
        .map_or(LIVE_DEPTH_DEFAULT, secs);
    Walker {
        url,
        budget,
        out: Vec::new(),
        live: Some(LiveClock {
            elapsed: (now_ms.saturating_sub(ast_ms)) as f64 / 1000.0,
            depth,
            edge,
        }),
        uri_room: Some(LIVE_URI_BYTES),
    }
    .mpd(mpd)
}

/// The window a live MPD without `timeShiftBufferDepth` is taken to offer, in seconds.
const LIVE_DEPTH_DEFAULT: f64 = 30.0;

/// Where a live presentation is: seconds since `availabilityStartTime`, and its window.
#[derive(Debug, Clone, Copy)]
struct LiveClock {
    elapsed: f64,
    depth: f64,
    edge: LiveEdge,
}

impl LiveClock {
    /// This clock for a representation whose segments are available `ato` seconds before
    /// they end (`availabilityTimeOffset`): only an announced edge counts it.
    fn offset_by(self, ato: f64) -> LiveClock {
        match self.edge {
            LiveEdge::Announced if ato.is_finite() && ato > 0.0 => LiveClock {
                elapsed: self.elapsed + ato,
                ..self
            },
            _ => self,
        }
    }

    /// Seconds into the period (starting `period_start` into the presentation) up to which
    /// segments of `seg` seconds count as there.
    fn into_period(self, period_start: Option<f64>, seg: f64) -> f64 {
        let guard = match self.edge {
            LiveEdge::Settled => (seg / 2.0).min(1.0),
            LiveEdge::Announced => 0.0,
        };
        self.elapsed - period_start.unwrap_or(0.0) - guard
    }
}

pub fn parse(url: &Url, body: &[u8]) -> Result<MPD, WalkError> {
    // No budget of `S` and `SegmentURL` elements here: well-formed is enough.
    let (text, _) = checked(url, body, usize::MAX)?;
    deserialize(url, text)
}

/// Most `Representation`s of a live MPD the edge reads for itself ([`parse_live`]).
pub const LIVE_MAX_REPRESENTATIONS: usize = 1024;

/// Most bytes of URIs one walk of a live MPD lists ([`live_references_of`]): its `budget`
/// of references at 512 bytes each.
pub const LIVE_URI_BYTES: usize = 4 << 20;

/// [`parse`] for the edge's own reading of a live MPD, done on every copy (prefetch, dropping
/// early refusals): refuses, before deserializing, an MPD with more than
/// [`LIVE_MAX_REPRESENTATIONS`] `Representation`s or more `S` and `SegmentURL` elements than
/// `budget` (each names at least one segment, more than the walk lists). dash-mpd-core holds
/// every element at many times the size of its text: 20,000 Representations (918 KB) took
/// 285 MiB on each copy of an MPD refreshed every second.
pub fn parse_live(url: &Url, body: &[u8], budget: usize) -> Result<MPD, WalkError> {
    let (text, counted) = checked(url, body, budget)?;
    if counted.representations > LIVE_MAX_REPRESENTATIONS {
        return Err(WalkError::Unsupported {
            url: url.clone(),
            what: format!(
                "a live MPD of {} Representations (more than {LIVE_MAX_REPRESENTATIONS})",
                counted.representations
            ),
        });
    }
    deserialize(url, text)
}

/// `body` as text, with what [`well_formed`] counted in it, once it is UTF-8, well-formed and
/// lists at most `budget` `S` and `SegmentURL` elements (else
/// [`WalkError::TooManyReferences`]): what every reading of an MPD checks before
/// [`deserialize`]. The deserializer behind dash-mpd-core can panic on some malformed XML
/// (mismatched tags, found by fuzzing), so what is not well-formed is refused first
/// (`deserialize` turns any panic left into an error: an origin's bad MPD must fail its asset,
/// not the edge).
fn checked<'b>(url: &Url, body: &'b [u8], budget: usize) -> Result<(&'b str, Counted), WalkError> {
    let text = utf8(url, body)?;
    let counted = well_formed(text).map_err(|e| parse_error(url, super::clip(&e, 300)))?;
    if counted.entries > budget {
        return Err(WalkError::TooManyReferences {
            url: url.clone(),
            listed: counted.entries,
            room: budget,
        });
    }
    Ok((text, counted))
}

fn parse_error(url: &Url, reason: String) -> WalkError {
    WalkError::Parse {
        url: url.clone(),
        format: "DASH MPD",
        reason,
    }
}

fn utf8<'b>(url: &Url, body: &'b [u8]) -> Result<&'b str, WalkError> {
    std::str::from_utf8(body).map_err(|_| parse_error(url, "not UTF-8".into()))
}

/// dash-mpd-core's reading of a `text` [`well_formed`] passed, a panic turned into an error.
fn deserialize(url: &Url, text: &str) -> Result<MPD, WalkError> {
    match std::panic::catch_unwind(|| dash_mpd_core::parse(text)) {
        Ok(Ok(mpd)) => Ok(mpd),
        Ok(Err(e)) => Err(parse_error(url, super::clip(&e.to_string(), 300))),
        Err(_) => Err(parse_error(
            url,
            "the MPD parser gave up on this document".into(),
        )),
    }
}

/// Checks that `text` is well-formed XML (every element closed, end tags matching) and that no
/// attribute holds an xs:duration dash-mpd-core would overflow on. Returns how many elements
/// of the kinds dash-mpd-core holds at many times their text it holds.
/// What [`well_formed`] counted in an MPD's text.
#[derive(Debug, Default, Clone, Copy)]
struct Counted {
    /// `S` and `SegmentURL` elements: each names at least one segment.
    entries: usize,
    /// `Representation` elements.
    representations: usize,
}

fn well_formed(text: &str) -> Result<Counted, String> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(text);
    r.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut counted = Counted::default();
    loop {
        let event = r.read_event();
        if let Ok(Event::Start(e) | Event::Empty(e)) = &event {
            match e.local_name().as_ref() {
                "S" | "SegmentURL" => counted.entries += 1,
                "Representation" => counted.representations += 1,
                _ => {}
            }
            for a in e.attributes() {
                let a = a.map_err(|e| format!("bad attribute: {e}"))?;
                let v = a
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| format!("bad attribute value: {e}"))?;
                if !duration_in_range(&v) {
                    return Err(format!("duration {} out of range", super::clip(&v, 40)));
                }
            }
        }
        match event {
            Ok(Event::Start(_)) => depth += 1,
            Ok(Event::End(_)) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "end tag without a start tag".to_string())?;
            }
            Ok(Event::Eof) if depth == 0 => return Ok(counted),
            Ok(Event::Eof) => return Err(format!("{depth} element(s) not closed")),
            Ok(_) => {}
            Err(e) => return Err(format!("not well-formed XML: {e}")),
        }
    }
}

/// Whether `v`, if it starts like an xs:duration (`P1DT2H3.5S`), has no integer above 10^9:
/// dash-mpd-core computes seconds in `u64` without overflow checks (a panic in debug builds,
/// found by fuzzing; a wrong duration in release ones), and no real MPD needs more. Its pattern
/// is anchored at the start only, so the whole value is scanned, whatever follows.
fn duration_in_range(v: &str) -> bool {
    let t = v.trim_start().trim_start_matches(['+', '-']);
    if !t.starts_with('P') {
        return true;
    }
    // Integer parts only: dash-mpd-core keeps at most 9 fractional digits itself.
    let mut prev = b'P';
    let mut digits = 0usize;
    for b in t.bytes() {
        if b.is_ascii_digit() {
            if !matches!(prev, b'.' | b',') && (digits > 0 || b != b'0') {
                digits += 1;
                if digits > 9 {
                    return false;
                }
            }
        } else {
            prev = b;
            digits = 0;
        }
    }
    true
}

/// A SegmentTemplate's fields after inheritance (Period -> AdaptationSet -> Representation:
/// the lower level overrides attribute by attribute).
#[derive(Debug, Default, Clone)]
struct Tmpl<'a> {
    media: Option<&'a str>,
    initialization: Option<&'a str>,
    init_element: Option<&'a Initialization>,
    index: Option<&'a str>,
    start_number: Option<u64>,
    end_number: Option<u64>,
    duration: Option<f64>,
    timescale: Option<u64>,
    pto: Option<u64>,
    timeline: Option<&'a SegmentTimeline>,
    /// `availabilityTimeOffset`, seconds: the template's (lowest level wins) plus the
    /// representation's `BaseURL`s'.
    ato: f64,
}

impl<'a> Tmpl<'a> {
    fn layer(mut self, t: Option<&'a SegmentTemplate>) -> Self {
        let Some(t) = t else { return self };
        macro_rules! over {
            ($f:ident, $v:expr) => {
                if let Some(v) = $v {
                    self.$f = Some(v);
                }
            };
        }
        over!(media, t.media.as_deref());
        over!(initialization, t.initialization.as_deref());
        over!(init_element, t.Initialization.as_ref());
        over!(index, t.index.as_deref());
        over!(start_number, t.startNumber);
        over!(end_number, t.endNumber);
        over!(duration, t.duration);
        over!(timescale, t.timescale);
        over!(pto, t.presentationTimeOffset);
        over!(timeline, t.SegmentTimeline.as_ref());
        if let Some(ato) = t.availabilityTimeOffset {
            self.ato = ato;
        }
        self
    }
}

/// Presentation time bounds of a period, in seconds.
#[derive(Debug, Clone, Copy)]
struct PeriodTime {
    duration: Option<f64>,
    /// Start in the presentation, in seconds, when known.
    start: Option<f64>,
}

struct Walker<'u> {
    url: &'u Url,
    budget: usize,
    out: Vec<Reference>,
    /// Walking a live MPD (`live_references`).
    live: Option<LiveClock>,
    /// Bytes of URIs the walk may still list, for the edge's own reading of a live MPD
    /// ([`live_references_of`], on every copy): no URI longer than [`MAX_URI`] is built or
    /// listed (a `BaseURL` that long hides what is beneath it, a template that long its
    /// representation's segments), and at most [`LIVE_URI_BYTES`] in all. A 3 MB
    /// `SegmentTemplate@media` was copied into each segment's URL, twice per copy: 293 MiB and
    /// 3 s of CPU for each. `None`: ingest, whose walk lists what it is given.
    uri_room: Option<usize>,
}

/// The `availabilityTimeOffset` of the `BaseURL` a level uses (its first), 0 without one.
fn base_ato(list: &[dash_mpd_core::BaseURL]) -> f64 {
    list.first()
        .and_then(|b| b.availability_time_offset)
        .unwrap_or(0.0)
}

/// The URL a segment's `$Number$` or `$Time$` may add to the length of another one's of the
/// same template: the digits of a `u64`.
const DIGITS_SLACK: usize = 20;

fn secs(d: &Duration) -> f64 {
    d.as_secs_f64()
}

impl Walker<'_> {
    fn too_many(&self, implied: u128) -> WalkError {
        WalkError::TooManyObjects {
            url: self.url.clone(),
            implied: implied + self.out.len() as u128,
            limit: self.out.len() + self.budget,
        }
    }

    /// Reserves room for `n` more references, failing before they are generated.
    fn reserve(&mut self, n: u128) -> Result<(), WalkError> {
        if n > self.budget as u128 {
            return Err(self.too_many(n));
        }
        self.budget -= n as usize;
        Ok(())
    }

    /// Lists `url`; false (not listed) when a bounded walk (`uri_room`) has no room for it.
    fn push(&mut self, url: Url, kind: ObjectKind) -> bool {
        if let Some(room) = self.uri_room {
            let n = url.as_str().len();
            if n > MAX_URI || n > room {
                return false;
            }
            self.uri_room = Some(room - n);
        }
        self.out.push(Reference { url, kind });
        true
    }

    fn push_ref(&mut self, base: &Url, reference: &str, kind: ObjectKind) -> Result<(), WalkError> {
        self.reserve(1)?;
        if let Some(url) = self.resolve_within(base, reference)? {
            self.push(url, kind);
        }
        Ok(())
    }

    /// `reference` resolved against `base`, unless a bounded walk skips it: longer than
    /// [`MAX_URI`] before or after resolving (neither is built).
    fn resolve_within(&self, base: &Url, reference: &str) -> Result<Option<Url>, WalkError> {
        let bounded = self.uri_room.is_some();
        if bounded && reference.trim().len() > MAX_URI {
            return Ok(None);
        }
        let url = resolve(base, reference)?;
        Ok((!bounded || url.as_str().len() <= MAX_URI).then_some(url))
    }

    /// The base URL of a level with these `BaseURL`s (its first), under `base`; `None` when a
    /// bounded walk skips it, and with it everything the level holds.
    fn base_of(
        &self,
        base: &Url,
        list: &[dash_mpd_core::BaseURL],
    ) -> Result<Option<Url>, WalkError> {
        match list.first() {
            Some(b) if !b.base.trim().is_empty() => self.resolve_within(base, &b.base),
            _ => Ok(Some(base.clone())),
        }
    }

    /// `tmpl` expanded with `v`; `None` when a bounded walk skips the result (longer than
    /// [`MAX_URI`], found without copying more than that).
    fn expand(&self, tmpl: &str, v: &Vars<'_>) -> Result<Option<String>, WalkError> {
        let max = if self.uri_room.is_some() {
            MAX_URI
        } else {
            usize::MAX
        };
        template::expand_within(tmpl, v, max)
            .map_err(|e| self.bad(format!("template {:?}: {e}", super::clip(tmpl, 200))))
    }

    /// Lists the segment `media` names with `v` under `base`; false when a bounded walk skips
    /// it. Its representation's other segments are skipped then as well: their URIs differ
    /// only by a number, and each would be built to be skipped.
    fn push_segment(&mut self, base: &Url, media: &str, v: &Vars<'_>) -> Result<bool, WalkError> {
        let Some(s) = self.expand(media, v)? else {
            return Ok(false);
        };
        let Some(url) = self.resolve_within(base, &s)? else {
            return Ok(false);
        };
        Ok(self.push(url, ObjectKind::Segment))
    }

    /// How many of `wanted` segments whose newest `media` names with `newest` a bounded
    /// walk's room holds (`wanted` for an unbounded one); 0 when it skips them.
    fn fit(
        &self,
        base: &Url,
        media: &str,
        newest: &Vars<'_>,
        wanted: u128,
    ) -> Result<u128, WalkError> {
        let Some(room) = self.uri_room else {
            return Ok(wanted);
        };
        let Some(s) = self.expand(media, newest)? else {
            return Ok(0);
        };
        let Some(url) = self.resolve_within(base, &s)? else {
            return Ok(0);
        };
        let each = url.as_str().len() + DIGITS_SLACK;
        Ok(wanted.min((room / each) as u128))
    }

    fn bad(&self, what: String) -> WalkError {
        WalkError::Parse {
            url: self.url.clone(),
            format: "DASH MPD",
            reason: what,
        }
    }

    fn mpd(mut self, mpd: &MPD) -> Result<Vec<Reference>, WalkError> {
        if mpd.mpdtype.as_deref() == Some("dynamic") && self.live.is_none() {
            return Err(WalkError::Unsupported {
                url: self.url.clone(),
                what: "a dynamic (live) MPD".into(),
            });
        }
        let Some(base) = self.base_of(self.url, &mpd.base_url)? else {
            return Ok(self.out);
        };
        // Offsets add up level by level: the MPD's BaseURL's counts for every representation.
        self.live = self.live.map(|c| c.offset_by(base_ato(&mpd.base_url)));
        // Period timing (5.3.2.1): start defaults to the previous period's end; duration to the
        // next period's start, or the presentation's end for the last one.
        let total = mpd.mediaPresentationDuration.as_ref().map(secs);
        let mut starts = Vec::with_capacity(mpd.periods.len());
        let mut prev_end = Some(0.0);
        for p in &mpd.periods {
            let start = p.start.as_ref().map(secs).or(prev_end);
            prev_end = match (start, p.duration.as_ref().map(secs)) {
                (Some(s), Some(d)) => Some(s + d),
                _ => None,
            };
            starts.push(start);
        }
        for (i, p) in mpd.periods.iter().enumerate() {
            let end = match p.duration.as_ref().map(secs) {
                Some(d) => starts[i].map(|s| s + d),
                None => match starts.get(i + 1) {
                    Some(next) => *next,
                    None => total,
                },
            };
            let duration = match (starts[i], end) {
                (Some(s), Some(e)) if e >= s => Some(e - s),
                _ => p.duration.as_ref().map(secs),
            };
            let start = starts[i];
            self.period(&base, p, PeriodTime { duration, start })?;
        }
        Ok(self.out)
    }

    fn period(&mut self, base: &Url, p: &Period, time: PeriodTime) -> Result<(), WalkError> {
        if let Some(href) = &p.href {
            if href != "urn:mpeg:dash:resolve-to-zero:2013" {
                return Err(WalkError::Unsupported {
                    url: self.url.clone(),
                    what: format!("a remote Period (xlink:href={href:?})"),
                });
            }
            return Ok(());
        }
        let Some(base) = self.base_of(base, &p.BaseURL)? else {
            return Ok(());
        };
        for a in &p.adaptations {
            self.adaptation(&base, p, a, time)?;
        }
        Ok(())
    }

    fn adaptation(
        &mut self,
        base: &Url,
        p: &Period,
        a: &AdaptationSet,
        time: PeriodTime,
    ) -> Result<(), WalkError> {
        if a.href.is_some() {
            return Err(WalkError::Unsupported {
                url: self.url.clone(),
                what: "a remote AdaptationSet (xlink:href)".into(),
            });
        }
        let Some(base) = self.base_of(base, &a.BaseURL)? else {
            return Ok(());
        };
        for r in &a.representations {
            self.representation(&base, p, a, r, time)?;
        }
        Ok(())
    }

    fn representation(
        &mut self,
        base: &Url,
        p: &Period,
        a: &AdaptationSet,
        r: &Representation,
        time: PeriodTime,
    ) -> Result<(), WalkError> {
        let Some(base) = self.base_of(base, &r.BaseURL)? else {
            return Ok(());
        };
        let rid = r.id.as_deref().unwrap_or("");
        let has_template = p.SegmentTemplate.is_some()
            || a.SegmentTemplate.is_some()
            || r.SegmentTemplate.is_some();
        // The lowest level that carries segment information decides the addressing mode.
        if r.SegmentList.is_some() || (r.SegmentTemplate.is_none() && a.SegmentList.is_some()) {
            let list = r
                .SegmentList
                .as_ref()
                .or(a.SegmentList.as_ref())
                .or(p.SegmentList.as_ref());
            return self.segment_list(&base, list);
        }
        if has_template && r.SegmentBase.is_none() {
            let mut t = Tmpl::default()
                .layer(p.SegmentTemplate.as_ref())
                .layer(a.SegmentTemplate.as_ref())
                .layer(r.SegmentTemplate.as_ref());
            // The MPD's own BaseURL's offset was added to the clock by `mpd`.
            t.ato += base_ato(&p.BaseURL) + base_ato(&a.BaseURL) + base_ato(&r.BaseURL);
            let vars = Vars {
                representation_id: rid,
                bandwidth: r.bandwidth,
                number: None,
                time: None,
            };
            return self.segment_template(&base, &t, &vars, time);
        }
        if p.SegmentList.is_some() && r.SegmentBase.is_none() && a.SegmentBase.is_none() {
            return self.segment_list(&base, p.SegmentList.as_ref());
        }
        let sb = r
            .SegmentBase
            .as_ref()
            .or(a.SegmentBase.as_ref())
            .or(p.SegmentBase.as_ref());
        self.segment_base(&base, sb)
    }

    fn initialization(
        &mut self,
        base: &Url,
        init: Option<&Initialization>,
    ) -> Result<(), WalkError> {
        // A range without a sourceURL is a byte range of the representation's file, which is
        // listed anyway.
        if let Some(src) = init.and_then(|i| i.sourceURL.as_deref()) {
            self.push_ref(base, src, ObjectKind::Init)?;
        }
        Ok(())
    }

    /// SegmentBase, or no segment information at all: the representation is one file at its
    /// BaseURL (ranges of it are served from the whole stored object).
    fn segment_base(&mut self, base: &Url, sb: Option<&SegmentBase>) -> Result<(), WalkError> {
        if base == self.url {
            // No BaseURL anywhere and no segment information: nothing addressable.
            return Err(
                self.bad("a Representation with no BaseURL and no segment information".into())
            );
        }
        self.reserve(1)?;
        if !self.push(base.clone(), ObjectKind::Segment) {
            return Ok(());
        }
        if let Some(sb) = sb {
            self.initialization(base, sb.Initialization.as_ref())?;
            if let Some(src) = sb
                .representation_index
                .as_ref()
                .and_then(|ri| ri.sourceURL.as_deref())
            {
                self.push_ref(base, src, ObjectKind::Index)?;
            }
        }
        Ok(())
    }

    fn segment_list(&mut self, base: &Url, list: Option<&SegmentList>) -> Result<(), WalkError> {
        let Some(list) = list else {
            return Ok(());
        };
        if list.href.is_some() {
            return Err(WalkError::Unsupported {
                url: self.url.clone(),
                what: "a remote SegmentList (xlink:href)".into(),
            });
        }
        self.initialization(base, list.Initialization.as_ref())?;
        self.reserve(list.segment_urls.len() as u128)?;
        // reserve() counted every SegmentURL; give back the ones that add nothing.
        for s in &list.segment_urls {
            match s.media.as_deref() {
                Some(m) if !m.trim().is_empty() => {
                    let pushed = match self.resolve_within(base, m)? {
                        Some(u) => self.push(u, ObjectKind::Segment),
                        None => false,
                    };
                    if !pushed {
                        return Ok(());
                    }
                }
                // No @media: the segment is a range of the BaseURL resource.
                _ => {
                    if base == self.url {
                        return Err(self.bad("a SegmentURL without @media and no BaseURL".into()));
                    }
                    if !self.push(base.clone(), ObjectKind::Segment) {
                        return Ok(());
                    }
                }
            }
            if let Some(i) = s.index.as_deref() {
                self.push_ref(base, i, ObjectKind::Index)?;
            }
        }
        Ok(())
    }

    fn segment_template(
        &mut self,
        base: &Url,
        t: &Tmpl<'_>,
        vars: &Vars<'_>,
        time: PeriodTime,
    ) -> Result<(), WalkError> {
        if let Some(init) = t.initialization {
            if let Some(s) = self.expand(init, vars)? {
                self.push_ref(base, &s, ObjectKind::Init)?;
            }
        } else {
            self.initialization(base, t.init_element)?;
        }
        if let Some(index) = t.index {
            if !template::is_indexed(index) {
                if let Some(s) = self.expand(index, vars)? {
                    self.push_ref(base, &s, ObjectKind::Index)?;
                }
            }
        }
        let Some(media) = t.media else {
            return Ok(());
        };
        let start_number = t.start_number.unwrap_or(1);
        let timescale = t.timescale.unwrap_or(1).max(1);
        let live = self.live.map(|c| c.offset_by(t.ato));
        if let Some(tl) = t.timeline {
            let pto = t.pto;
            return self.timeline(
                base,
                media,
                tl,
                start_number,
                timescale,
                pto,
                vars,
                time,
                live,
            );
        }
        if !template::is_indexed(media) {
            return match self.expand(media, vars)? {
                Some(s) => self.push_ref(base, &s, ObjectKind::Segment),
                None => Ok(()),
            };
        }
        if let (Some(clock), None, Some(d)) = (live, t.end_number, t.duration) {
            return self.live_template(base, media, vars, start_number, timescale, d, clock, time);
        }
        let count: u128 = match (t.end_number, t.duration) {
            (Some(end), _) => u128::from(end.saturating_sub(start_number)) + 1,
            (None, Some(d)) if d > 0.0 && d.is_finite() => {
                let Some(period) = time.duration else {
                    return Err(self.bad(
                        "SegmentTemplate@duration without a known period or presentation duration"
                            .into(),
                    ));
                };
                let n = (period * timescale as f64 / d).ceil();
                if !n.is_finite() || n < 0.0 {
                    return Err(self.bad(format!("segment count {n} from @duration {d}")));
                }
                // `as` saturates for floats beyond u128::MAX.
                n as u128
            }
            _ => {
                return Err(self.bad(
                    "SegmentTemplate with $Number$/$Time$ but neither SegmentTimeline, @duration nor @endNumber"
                        .into(),
                ))
            }
        };
        self.reserve(count)?;
        let d = t.duration.unwrap_or(0.0);
        for i in 0..count as u64 {
            let v = Vars {
                number: Some(start_number.saturating_add(i)),
                time: Some((i as f64 * d) as u64),
                ..*vars
            };
            if !self.push_segment(base, media, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The `$Number$` segments of a live `SegmentTemplate@duration` available now, oldest
    /// first, within the time-shift window and the budget (the newest kept).
    #[allow(clippy::too_many_arguments)]
    fn live_template(
        &mut self,
        base: &Url,
        media: &str,
        vars: &Vars<'_>,
        start_number: u64,
        timescale: u64,
        d: f64,
        clock: LiveClock,
        time: PeriodTime,
    ) -> Result<(), WalkError> {
        let seg = d / timescale as f64;
        if !(seg.is_finite() && seg > 0.0) {
            return Err(self.bad(format!("SegmentTemplate@duration {d}")));
        }
        let into = clock.into_period(time.start, seg);
        // Segments 0..ended have ended (are available); keep the window's worth, newest last.
        let mut ended = (into / seg).floor();
        // A period that has ended (the next one started, or it has a duration) has no
        // segments past its end: without the bound, a past period of a multi-period MPD (an
        // ad break) named a new, nonexistent segment every `seg` seconds.
        if let Some(len) = time.duration.filter(|d| d.is_finite() && *d >= 0.0) {
            ended = ended.min((len / seg).ceil());
        }
        if !ended.is_finite() || ended < 1.0 {
            return Ok(());
        }
        let ended = ended.min(u64::MAX as f64 / 2.0) as u64;
        let in_window = ((clock.depth / seg).ceil().max(1.0) as u64).min(self.budget as u64);
        let vars_of = |k: u64| Vars {
            number: Some(start_number.saturating_add(k)),
            time: Some((k as f64 * d) as u64),
            ..*vars
        };
        // The newest that fit the walk's room for URIs.
        let fits = self.fit(base, media, &vars_of(ended - 1), u128::from(in_window))?;
        let in_window = u64::try_from(fits).unwrap_or(in_window);
        let first = ended.saturating_sub(in_window);
        self.reserve(u128::from(ended - first))?;
        for k in first..ended {
            if !self.push_segment(base, media, &vars_of(k))? {
                break;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn timeline(
        &mut self,
        base: &Url,
        media: &str,
        tl: &SegmentTimeline,
        start_number: u64,
        timescale: u64,
        pto: Option<u64>,
        vars: &Vars<'_>,
        time: PeriodTime,
        live: Option<LiveClock>,
    ) -> Result<(), WalkError> {
        let period_end: Option<u128> = time.duration.and_then(|d| {
            let ticks = d * timescale as f64;
            (ticks.is_finite() && ticks >= 0.0)
                .then(|| ticks as u128 + u128::from(pto.unwrap_or(0)))
        });
        // First pass: count, so a timeline implying billions of segments fails before any is
        // generated.
        let mut runs = Vec::with_capacity(tl.segments.len());
        let mut total: u128 = 0;
        for run in timeline::runs(&tl.segments, period_end) {
            let run = run.map_err(|e| self.bad(e.to_string()))?;
            // `(count, listed, skip)`: the run's segments, the first `listed` of which are
            // available (all but in a live MPD), of which the first `skip` are not listed.
            let (count, listed, skip) = match (run.count, live) {
                (Some(count), None) => (count, count, 0),
                // A run the timeline bounds may still name segments that are not available
                // yet: a packager lists the segment in production (its end in the future).
                // Availability is the same as for an open run (5.3.9.5.3: from the segment's
                // end), whatever the MPD lists.
                (Some(count), Some(clock)) => {
                    let ended = ended_by(clock, time.start, timescale, pto, run.t, run.d);
                    (count, count.min(ended), 0)
                }
                // An open run (`S@r` negative, neither a later `S@t` nor the period's end
                // bounding it: the live edge of most live MPDs) goes on with the clock.
                (None, Some(clock)) => {
                    let room = (self.budget as u128).saturating_sub(total);
                    let (ended, skip) =
                        open_run(clock, time.start, timescale, pto, run.t, run.d, room);
                    (ended, ended, skip)
                }
                (None, None) => {
                    return Err(
                        self.bad("S@r=-1 at the end of a timeline with no known period end".into())
                    );
                }
            };
            total = total.saturating_add(listed.saturating_sub(skip));
            if total > self.budget as u128 {
                return Err(self.too_many(total));
            }
            runs.push((run.t, u128::from(run.d), count, listed, skip));
        }
        if let Some(newest) = newest_of(&runs, start_number) {
            // The newest that fit the walk's room for URIs: the oldest are dropped.
            let v = Vars {
                number: Some(newest.0),
                time: u64::try_from(newest.1).ok(),
                ..*vars
            };
            let fits = self.fit(base, media, &v, total)?;
            let mut drop = total - fits;
            for run in runs.iter_mut() {
                let take = drop.min(run.3.saturating_sub(run.4));
                run.4 += take;
                drop -= take;
            }
            total = fits;
        }
        self.reserve(total)?;
        let mut number = start_number;
        for (t0, d, count, listed, skip) in runs {
            // `$Number$` counts the segments not listed too, before and after those listed.
            let first = number;
            for k in skip..listed {
                let tk = t0 + d * k;
                let v = Vars {
                    number: Some(first.saturating_add(u64::try_from(k).unwrap_or(u64::MAX))),
                    time: Some(u64::try_from(tk).map_err(|_| self.bad("S@t overflows".into()))?),
                    ..*vars
                };
                if !self.push_segment(base, media, &v)? {
                    return Ok(());
                }
            }
            number = first.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
        }
        Ok(())
    }
}

/// `($Number$, $Time$)` of the newest segment a timeline's `runs` (`(t, d, count, listed,
/// skip)`, numbered from `start_number`) list, if they list any.
fn newest_of(runs: &[(u128, u128, u128, u128, u128)], start_number: u64) -> Option<(u64, u128)> {
    let mut number = start_number;
    let mut newest = None;
    for &(t0, d, count, listed, skip) in runs {
        if listed > skip {
            let k = listed - 1;
            newest = Some((
                number.saturating_add(u64::try_from(k).unwrap_or(u64::MAX)),
                t0.saturating_add(d.saturating_mul(k)),
            ));
        }
        number = number.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
    }
    newest
}

/// How many segments of `d` ticks from `t` (a timeline run's) have ended by `clock`, that is are
/// available (ISO/IEC 23009-1 5.3.9.5.3: from `availabilityStartTime` plus the period's start
/// plus the segment's end, less the presentation time offset, as `LiveClock::into_period`
/// counts); 0 when none has, or the clock cannot be read.
fn ended_by(
    clock: LiveClock,
    period_start: Option<f64>,
    timescale: u64,
    pto: Option<u64>,
    t: u128,
    d: u64,
) -> u128 {
    let seg = d as f64 / timescale as f64;
    if !(seg.is_finite() && seg > 0.0) {
        return 0;
    }
    let into = clock.into_period(period_start, seg);
    // Media timeline ticks at that moment (the presentation time offset is where the period
    // starts on the media timeline).
    let now_ticks = into * timescale as f64 + pto.unwrap_or(0) as f64;
    let ended = ((now_ticks - t as f64) / d as f64).floor();
    if !ended.is_finite() || ended < 1.0 {
        return 0;
    }
    // `as` saturates; a bound far beyond any budget.
    ended.min(1e30) as u128
}

/// The segments of an open `SegmentTimeline` run (`S@r` negative with nothing after it to stop
/// it) of a live MPD at `clock`: `(count, skip)`, the segments from the run's start that have
/// ended (ISO/IEC 23009-1 5.3.9.5.3: available once it ends, measured from
/// `availabilityStartTime` plus the period's start, as `LiveClock::into_period` counts), the
/// first `skip` of which lie before the time-shift window (or past `room` newest ones). A run
/// that starts in the future, or a clock that cannot be read, has none.
fn open_run(
    clock: LiveClock,
    period_start: Option<f64>,
    timescale: u64,
    pto: Option<u64>,
    t: u128,
    d: u64,
    room: u128,
) -> (u128, u128) {
    let seg = d as f64 / timescale as f64;
    let ended = ended_by(clock, period_start, timescale, pto, t, d);
    if ended == 0 {
        return (0, 0);
    }
    let in_window = ((clock.depth / seg).ceil().clamp(1.0, 1e30) as u128).min(room);
    (ended, ended.saturating_sub(in_window))
}

#[cfg(test)]
mod live_tests {
    use super::*;

    const LIVE: &str = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z" timeShiftBufferDepth="PT6S" minBufferTime="PT2S">
 <Period id="0" start="PT0S">
  <AdaptationSet mimeType="video/mp4">
   <SegmentTemplate timescale="1000" duration="2000" startNumber="0" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg_$Number$.m4s"/>
   <Representation id="r0" bandwidth="1"/>
   <Representation id="r1" bandwidth="2"/>
  </AdaptationSet>
 </Period>
</MPD>"#;

    fn at(secs: u64) -> std::time::SystemTime {
        // 2026-01-01T00:00:00Z
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600 + secs)
    }

    fn names(refs: &[Reference]) -> Vec<String> {
        refs.iter()
            .map(|r| r.url.path().trim_start_matches('/').to_string())
            .collect()
    }

    #[test]
    fn a_live_number_template_lists_the_segments_available_now_within_the_window() {
        let url = Url::parse("http://o/live/manifest.mpd").unwrap();
        // 21 s in, less the 1 s guard: segments 0..=9 have ended; a 6 s window holds the
        // last 3.
        let refs = live_references(&url, LIVE.as_bytes(), at(21), 100).unwrap();
        assert_eq!(
            names(&refs),
            [
                "live/r0/init.mp4",
                "live/r0/seg_7.m4s",
                "live/r0/seg_8.m4s",
                "live/r0/seg_9.m4s",
                "live/r1/init.mp4",
                "live/r1/seg_7.m4s",
                "live/r1/seg_8.m4s",
                "live/r1/seg_9.m4s",
            ]
        );
        // Two seconds later the window moved by one segment.
        let later = names(&live_references(&url, LIVE.as_bytes(), at(23), 100).unwrap());
        assert!(
            later.contains(&"live/r0/seg_10.m4s".to_string()),
            "{later:?}"
        );
        assert!(
            !later.contains(&"live/r0/seg_7.m4s".to_string()),
            "{later:?}"
        );
        // Before the first segment ended: only the inits.
        let early = names(&live_references(&url, LIVE.as_bytes(), at(1), 100).unwrap());
        assert_eq!(early, ["live/r0/init.mp4", "live/r1/init.mp4"]);
        // The plain walker still refuses a live MPD.
        assert!(references(&url, LIVE.as_bytes(), 100).is_err());
    }

    /// The announced edge counts a segment from its availability start, with no guard,
    /// brought forward by `availabilityTimeOffset` (the template's plus the BaseURLs'); the
    /// settled edge (prefetch) keeps its guard and no offset.
    #[test]
    fn the_announced_edge_counts_a_segment_from_its_availability_start_and_offset() {
        let url = Url::parse("http://o/live/manifest.mpd").unwrap();
        let newest = |mpd: &str, secs_ms: u64, edge: LiveEdge| {
            let now = at(0) + std::time::Duration::from_millis(secs_ms);
            let mpd = parse(&url, mpd.as_bytes()).unwrap();
            let refs = names(&live_references_of(&url, &mpd, now, 100, edge).unwrap());
            refs.last().cloned().unwrap_or_default()
        };
        // Segment 9 ends at 20 s.
        assert_eq!(
            newest(LIVE, 20_100, LiveEdge::Announced),
            "live/r1/seg_9.m4s"
        );
        assert_eq!(newest(LIVE, 20_100, LiveEdge::Settled), "live/r1/seg_8.m4s");
        assert_eq!(
            newest(LIVE, 19_900, LiveEdge::Announced),
            "live/r1/seg_8.m4s"
        );
        // Available 1.5 s before it ends (0.5 s by the template, 1 s by a BaseURL).
        let ll = LIVE
            .replace("<Period id=\"0\" start=\"PT0S\">", "<Period id=\"0\" start=\"PT0S\"><BaseURL availabilityTimeOffset=\"1\">./</BaseURL>")
            .replace("duration=\"2000\"", "duration=\"2000\" availabilityTimeOffset=\"0.5\"");
        assert_eq!(
            newest(&ll, 18_600, LiveEdge::Announced),
            "live/r1/seg_9.m4s"
        );
        assert_eq!(
            newest(&ll, 18_400, LiveEdge::Announced),
            "live/r1/seg_8.m4s"
        );
        assert_eq!(newest(&ll, 20_100, LiveEdge::Settled), "live/r1/seg_8.m4s");
        // `INF` (every segment of the period at once) is not counted.
        let inf = LIVE.replace(
            "duration=\"2000\"",
            "duration=\"2000\" availabilityTimeOffset=\"INF\"",
        );
        assert_eq!(
            newest(&inf, 20_100, LiveEdge::Announced),
            "live/r1/seg_9.m4s"
        );
    }

    /// A live timeline ending in `S@r="-1"` lists the segments of that open run that have
    /// ended by now, within the time-shift window, numbered from the run's start.
    #[test]
    fn an_open_timeline_run_lists_what_has_ended_within_the_window() {
        let mpd = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z" timeShiftBufferDepth="PT6S" minBufferTime="PT2S">
 <Period id="0" start="PT0S">
  <AdaptationSet mimeType="video/mp4">
   <SegmentTemplate timescale="1000" startNumber="10" media="$Number$-$Time$.m4s">
    <SegmentTimeline><S t="0" d="1000" r="1"/><S d="2000" r="-1"/></SegmentTimeline>
   </SegmentTemplate>
   <Representation id="r0" bandwidth="1"/>
  </AdaptationSet>
 </Period>
</MPD>"#;
        let url = Url::parse("http://o/live/manifest.mpd").unwrap();
        // 21 s in, less the 1 s guard: the open run starts at 2 s, so 9 of its 2 s segments
        // (2..20 s) have ended; a 6 s window holds its last 3. The two first segments
        // (numbers 10 and 11) are older than the window as well but are listed as given.
        let refs = live_references(&url, mpd.as_bytes(), at(21), 100).unwrap();
        assert_eq!(
            names(&refs),
            [
                "live/10-0.m4s",
                "live/11-1000.m4s",
                "live/18-14000.m4s",
                "live/19-16000.m4s",
                "live/20-18000.m4s",
            ]
        );
        // Before the open run's first segment ended: only what of the runs listed has (the
        // second segment ends at 2 s, available to prefetch from 2.5 s).
        let early = names(&live_references(&url, mpd.as_bytes(), at(2), 100).unwrap());
        assert_eq!(early, ["live/10-0.m4s"]);
        let early = names(&live_references(&url, mpd.as_bytes(), at(3), 100).unwrap());
        assert_eq!(early, ["live/10-0.m4s", "live/11-1000.m4s"]);
    }

    /// Bug: a live timeline's bounded runs were listed whole, the segment in production too
    /// (a packager lists it in `<S r=...>` before it ends, legal and common), so prefetch asked
    /// the origin for it before it was available (a 404 per representation per MPD update).
    /// Now a run's segment counts from its availability start (its end), as an open run's and
    /// a `$Number$` template's do, the numbers of later segments unchanged.
    #[test]
    fn a_timeline_segment_listed_before_it_ends_is_not_available_yet() {
        let mpd = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z" timeShiftBufferDepth="PT60S" minBufferTime="PT2S">
 <Period id="0" start="PT10S">
  <AdaptationSet mimeType="video/mp4">
   <SegmentTemplate timescale="1000" startNumber="5" presentationTimeOffset="4000" media="$Number$-$Time$.m4s">
    <SegmentTimeline><S t="4000" d="2000" r="3"/><S d="1000" r="1"/></SegmentTimeline>
   </SegmentTemplate>
   <Representation id="r0" bandwidth="1"/>
  </AdaptationSet>
 </Period>
</MPD>"#;
        let url = Url::parse("http://o/live/manifest.mpd").unwrap();
        let listed = |ms: u64, edge: LiveEdge| {
            let now = at(0) + std::time::Duration::from_millis(ms);
            let mpd = parse(&url, mpd.as_bytes()).unwrap();
            names(&live_references_of(&url, &mpd, now, 100, edge).unwrap())
        };
        // The period starts at 10 s; its segments end at 12, 14, 16, 18, then 19 and 20 s.
        assert_eq!(listed(11_900, LiveEdge::Announced), Vec::<String>::new());
        assert_eq!(listed(12_000, LiveEdge::Announced), ["live/5-4000.m4s"]);
        // Prefetch keeps its guard (half a segment, at most 1 s).
        assert_eq!(listed(12_900, LiveEdge::Settled), Vec::<String>::new());
        assert_eq!(
            listed(17_500, LiveEdge::Announced),
            ["live/5-4000.m4s", "live/6-6000.m4s", "live/7-8000.m4s"]
        );
        // The second run is numbered after all of the first.
        let at_19 = listed(19_000, LiveEdge::Announced);
        assert_eq!(at_19.last().map(String::as_str), Some("live/9-12000.m4s"));
        assert_eq!(at_19.len(), 5);
        assert_eq!(listed(30_000, LiveEdge::Settled).len(), 6);
    }

    /// Bug: the edge's reading of a live MPD built every segment's URI from its template and
    /// BaseURL whatever their length: a 3 MB `SegmentTemplate@media` made 15 URIs of 3 MB (and
    /// a 3 MB `BaseURL` as many), on every copy, twice. Now a URI longer than 8 KiB is neither
    /// built nor listed (a BaseURL that long hides what is beneath it), the walk lists at most
    /// `LIVE_URI_BYTES`, and an MPD of more than `LIVE_MAX_REPRESENTATIONS` is not read.
    #[test]
    fn what_a_hostile_live_mpd_expands_to_is_bounded() {
        let url = Url::parse("http://o/live/manifest.mpd").unwrap();
        let rep = |seg: &str| {
            format!(
                r#"<AdaptationSet mimeType="video/mp4">{seg}<Representation id="r" bandwidth="1"/></AdaptationSet>"#
            )
        };
        let mpd = |sets: &str| {
            format!(
                r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z"><Period id="0" start="PT0S">{sets}</Period></MPD>"#
            )
        };
        let long = "L".repeat(3 << 20);
        let plain = rep(r#"<SegmentTemplate timescale="1" duration="2" media="ok/$Number$.m4s"/>"#);
        let hostile = [
            rep(&format!(
                r#"<SegmentTemplate timescale="1" duration="2" initialization="{long}i.mp4" media="{long}$Number$.m4s"/>"#
            )),
            rep(&format!(
                r#"<BaseURL>{long}/</BaseURL><SegmentTemplate timescale="1" duration="2" media="$Number$.m4s"/>"#
            )),
            rep(&format!(
                r#"<SegmentTemplate timescale="1000" media="{long}$Time$.m4s"><SegmentTimeline><S t="0" d="2000" r="-1"/></SegmentTimeline></SegmentTemplate>"#
            )),
        ];
        for h in &hostile {
            let body = mpd(&format!("{h}{plain}"));
            let parsed = parse_live(&url, body.as_bytes(), 8192).unwrap();
            let refs = live_references_of(&url, &parsed, at(101), 8192, LiveEdge::Settled).unwrap();
            let longest = refs.iter().map(|r| r.url.as_str().len()).max().unwrap_or(0);
            assert!(
                longest <= MAX_URI,
                "{} URIs, the longest {longest} bytes",
                refs.len()
            );
            // The representation beside it is listed: 30 s of 2 s segments.
            assert_eq!(names(&refs).len(), 15, "{:?}", &names(&refs)[..1]);
        }
        // Within 8 KiB, but 30 s of 1 ns segments (the budget's worth): the bytes are bounded.
        let wide = "W".repeat(8000);
        let body = mpd(&rep(&format!(
            r#"<SegmentTemplate timescale="1000000000" duration="1" media="{wide}$Number$.m4s"/>"#
        )));
        let parsed = parse_live(&url, body.as_bytes(), 8192).unwrap();
        let refs = live_references_of(&url, &parsed, at(101), 8192, LiveEdge::Settled).unwrap();
        let bytes: usize = refs.iter().map(|r| r.url.as_str().len()).sum();
        assert!(bytes <= LIVE_URI_BYTES && !refs.is_empty(), "{bytes} bytes");
        // The newest kept (101 s in: about the 101e9th segment).
        let newest: u64 = names(&refs).last().unwrap()[("live/".len() + wide.len())..]
            .trim_end_matches(".m4s")
            .parse()
            .unwrap();
        assert!(newest > 100_999_000_000, "{newest}");
        // 20,000 Representations are refused before they are deserialized.
        let many: String = (0..LIVE_MAX_REPRESENTATIONS + 1)
            .map(|i| format!(r#"<Representation id="r{i}" bandwidth="1"/>"#))
            .collect();
        let body = mpd(&format!(
            r#"<AdaptationSet><SegmentTemplate timescale="1" duration="2" media="$RepresentationID$/$Number$.m4s"/>{many}</AdaptationSet>"#
        ));
        assert!(matches!(
            parse_live(&url, body.as_bytes(), 8192),
            Err(WalkError::Unsupported { .. })
        ));
    }

    /// A period that ended (the next one started) lists no segment past its end, however
    /// long ago it ended: its last segments stay what it had.
    #[test]
    fn a_past_period_of_a_live_mpd_lists_nothing_past_its_end() {
        let mpd = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z" timeShiftBufferDepth="PT1000S" minBufferTime="PT2S">
 <Period id="p0" start="PT0S">
  <AdaptationSet mimeType="video/mp4">
   <SegmentTemplate timescale="1000" duration="2000" startNumber="0" media="p0/$RepresentationID$/seg_$Number$.m4s"/>
   <Representation id="r0" bandwidth="1"/>
  </AdaptationSet>
 </Period>
 <Period id="p1" start="PT600S">
  <AdaptationSet mimeType="video/mp4">
   <SegmentTemplate timescale="1000" duration="2000" startNumber="0" media="p1/$RepresentationID$/seg_$Number$.m4s"/>
   <Representation id="r0" bandwidth="1"/>
  </AdaptationSet>
 </Period>
</MPD>"#;
        let url = Url::parse("http://o/live/manifest.mpd").unwrap();
        let refs = names(&live_references(&url, mpd.as_bytes(), at(900), 10_000).unwrap());
        let p0: Vec<u64> = refs
            .iter()
            .filter_map(|n| n.strip_prefix("live/p0/r0/seg_"))
            .filter_map(|n| n.strip_suffix(".m4s")?.parse().ok())
            .collect();
        // 600 s of 2 s segments: 0..=299.
        assert_eq!(p0.iter().max(), Some(&299), "{:?}", &refs[..3]);
        assert!(
            refs.contains(&"live/p1/r0/seg_148.m4s".to_string()),
            "{refs:?}"
        );
    }
}
