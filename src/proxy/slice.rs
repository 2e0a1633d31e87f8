//! Large objects in slices (`cache.slice_size`, in the spirit of nginx's `slice` module): a cold
//! object is first asked for with a range of one slice; an object larger than one slice is then
//! fetched and cached slice by slice, each slice an ordinary object under its own key, and every
//! viewer request (a range, or the whole object) is answered from the slices it covers,
//! fetching only the missing ones (one fill per slice key, so concurrent viewers collapse).
//!
//! Keys: a slice is `{base}\0\x01slice={n}` and the sliced-object record (the object's 200 head,
//! `Content-Length` = the whole length, and its validators; empty body) is `{base}\0\x01sliced`.
//! A `\0` starts a variant suffix (`cache::key`), so purging the base key purges both
//! (`Edge::purge_key` removes `{base}\0*`); `\x01` is no header-name character, so no `Vary`
//! variant can share them.
//!
//! The origin's side (`on_origin_head`, called by the fill driver for slice fills):
//! - a 206 must say which bytes it carries: a missing, unparsable or other range than asked is
//!   an origin error for that slice (502), never bytes stored at the wrong place;
//! - a 206 covering the whole object is stored as the ordinary 200 it is;
//! - a 200 (the origin ignores Range) is the whole object, cached as any fill is;
//! - a slice of an object without a strong validator (RFC 9110 §8.8.1: a strong `ETag`, or a
//!   `Last-Modified` at least a second before the `Date`, `http::conditional::strong_validator`)
//!   is not kept: partial responses may be combined only when they share a strong validator
//!   (RFC 9110 §15.3.7.3, RFC 9111 §3.4), and without one two versions of the same length are
//!   indistinguishable. The fill asks for the whole object instead, as for an origin that
//!   ignores `Range` (`SliceHead::Unsliceable`);
//! - a valid 206 of unknown complete length (`Content-Range: bytes a-b/*`, RFC 9110 §14.4) is
//!   not kept either, and the object is fetched whole the same way: without a length it has no
//!   last slice, nor can the part be stored as the whole (its end may not be the object's);
//! - a slice whose total, `ETag` or `Last-Modified` differs from the record means the object
//!   changed between slices: the record and every slice go, and the object restarts from this
//!   answer. A viewer whose response already carries the old version's bytes has it aborted
//!   (never a body spliced from two versions).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::response::Parts as ResponseParts;
use http::{HeaderMap, Method, Response, StatusCode};

use crate::cache::fill::{Fill, FillHead, FillReader, StreamHead};
use crate::cache::lock::Claim;
use crate::cache::object::{tags_of, CachedObject};
use crate::cache::policy::{ContentClass, Freshness};
use crate::cache::status::CacheStatus;
use crate::http::body::{Body, BoxError};
use crate::http::conditional::strong_validator;
use crate::http::response::{self, CacheInfo, Source};
use crate::metrics::Metrics;
use crate::proxy::edge::Edge;
use crate::proxy::error::EdgeError;
use crate::proxy::fill::{self, FillJob};
use crate::proxy::pass::relay;
use crate::proxy::request::Req;

/// One slice a fill asks the origin for: bytes `[index * size, (index + 1) * size)`.
#[derive(Debug, Clone, Copy)]
pub struct SliceAsk {
    pub index: u64,
    pub size: u64,
}

impl SliceAsk {
    fn start(self) -> u64 {
        self.index.saturating_mul(self.size)
    }

    /// The last byte asked for (inclusive, as `Range` writes it).
    fn last(self) -> u64 {
        self.start().saturating_add(self.size - 1)
    }

    pub fn range_header(self) -> HeaderValue {
        HeaderValue::from(RangeValue(self.start(), self.last()))
    }
}

struct RangeValue(u64, u64);

impl From<RangeValue> for HeaderValue {
    fn from(r: RangeValue) -> HeaderValue {
        HeaderValue::from_str(&format!("bytes={}-{}", r.0, r.1))
            .unwrap_or_else(|_| HeaderValue::from_static("bytes=0-0"))
    }
}

/// Where slice `k + 1` starts. Saturating: an origin may announce a total near `u64::MAX`, and
/// the last slice of that must not overflow (a panic, or a walk wrapping back to byte 0).
fn next_slice_start(k: u64, size: u64) -> u64 {
    k.saturating_add(1).saturating_mul(size)
}

/// The key of slice `n` of the object at `base`.
pub fn slice_key(base: &str, n: u64) -> String {
    format!("{base}\0\x01slice={n}")
}

/// The key of the sliced-object record of the object at `base`.
pub fn record_key(base: &str) -> String {
    format!("{base}\0\x01sliced")
}

/// `Content-Range: bytes a-b/total` → `(a, b, total)`, with `a <= b < total`. A complete length
/// of `*` (unknown, RFC 9110 §14.4) is `None` here: `range_of_unknown_length` tells it apart
/// from an invalid field.
pub fn content_range(h: &HeaderMap) -> Option<(u64, u64, u64)> {
    match any_content_range(h)? {
        (a, b, Some(total)) => Some((a, b, total)),
        (_, _, None) => None,
    }
}

/// Whether `h` is a valid `Content-Range: bytes a-b/*`: a range of an object whose complete
/// length the origin does not know (one still being written, say).
fn range_of_unknown_length(h: &HeaderMap) -> bool {
    matches!(any_content_range(h), Some((_, _, None)))
}

/// `Content-Range: bytes a-b/total` or `bytes a-b/*` → `(a, b, total)`, `total` `None` for `*`;
/// `a <= b`, and `b < total` when it is known.
fn any_content_range(h: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let (unit, rest) = v.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let total = match total.trim() {
        "*" => None,
        n => Some(num(n)?),
    };
    let (a, b) = (num(a)?, num(b)?);
    (a <= b && total.is_none_or(|t| b < t)).then_some((a, b, total))
}

/// Whether two heads are of the same version of an object: every validator either carries is
/// the same in both, the `ETag` and the `Last-Modified` (only objects with a strong validator
/// are sliced, `on_origin_head`). Comparing the date beside a strong `ETag` is stricter than RFC
/// 9111 §3.4 asks: an origin whose dates disagree while its tags agree costs a restart, never
/// a mix; and a weak `ETag` that stays the same while the bytes change (with the date as the
/// strong validator) is caught by the date.
fn same_version(a: &HeaderMap, b: &HeaderMap) -> bool {
    let same = |name: header::HeaderName| a.get(&name) == b.get(&name);
    same(header::ETAG) && same(header::LAST_MODIFIED)
}

/// What a slice fill's origin answer is (`on_origin_head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceHead {
    /// A slice to store under the slice key, of an object of this many bytes.
    Slice(u64),
    /// A whole object (a 200, or a 206 rewritten as the 200 it is) or another status, filled
    /// as usual under the base key.
    Whole,
    /// A slice of an object of this many bytes without a strong validator: its slices could not
    /// be told from another version's, so it is never sliced. The fill drops this answer and
    /// asks for the whole object, which is cached as an origin ignoring `Range` would have it.
    /// `None`: a slice of an object whose complete length the origin does not know (`bytes
    /// a-b/*`), dropped likewise: without a length there is no last slice, and the part cannot
    /// be stored as the whole (its end may not be the object's).
    Unsliceable(Option<u64>),
}

/// The whole object's 200 head, from one slice's 206 head.
fn whole_head(slice: &HeaderMap, total: u64) -> HeaderMap {
    let mut h = slice.clone();
    h.remove(header::CONTENT_RANGE);
    h.remove(header::AGE);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    h
}

// ---- the origin's side (the fill driver's hook) ----

/// Judges a slice fill's origin answer before anything is published (`SliceHead`); `Err`: a 206
/// that does not say it carries the asked bytes (an origin error for this slice).
pub async fn on_origin_head(
    edge: &Edge,
    base: &str,
    ask: &SliceAsk,
    parts: &mut ResponseParts,
) -> Result<SliceHead, &'static str> {
    match parts.status {
        StatusCode::PARTIAL_CONTENT if range_of_unknown_length(&parts.headers) => {
            // A valid answer (RFC 9110 §14.4), just not one to slice: whatever range it
            // carries, its bytes are dropped and the object is fetched whole, without `Range`.
            forget(edge, base, "the object's length is unknown").await;
            // Fewer bytes than asked, from the slice's start: the representation ends there for
            // now (RFC 9110 §14.1.2), a length to judge it by; a whole slice says nothing of
            // the rest (a file still growing may never end).
            let ends = any_content_range(&parts.headers)
                .filter(|&(a, b, _)| a == ask.start() && b < ask.last())
                .map(|(_, b, _)| b + 1);
            Ok(SliceHead::Unsliceable(ends))
        }
        StatusCode::PARTIAL_CONTENT => {
            let (a, b, total) =
                content_range(&parts.headers).ok_or("206 without a valid Content-Range")?;
            if a != ask.start() || b != ask.last().min(total - 1) {
                return Err("206 with another range than asked");
            }
            let len = b - a + 1;
            if crate::cache::policy::content_length(&parts.headers).is_some_and(|n| n != len) {
                return Err("206 whose Content-Length disagrees with its Content-Range");
            }
            if a == 0 && b + 1 == total {
                // The whole object in one answer: an ordinary 200 of `total` bytes.
                parts.status = StatusCode::OK;
                parts.headers.remove(header::CONTENT_RANGE);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
                forget(edge, base, "the object now fits one slice").await;
                return Ok(SliceHead::Whole);
            }
            if !strong_validator(&parts.headers) {
                // Slices stored before (of a version that had one) are of no use either.
                forget(edge, base, "the object has no strong validator").await;
                return Ok(SliceHead::Unsliceable(Some(total)));
            }
            if let Some((rec, _)) = edge.lookup(&record_key(base)).await {
                let was = crate::cache::policy::content_length(&rec.headers);
                if was != Some(total) || !same_version(&rec.headers, &parts.headers) {
                    tracing::debug!(key = base, "object changed between slices: restarting it");
                    edge.purge_key(base);
                }
            }
            Ok(SliceHead::Slice(total))
        }
        StatusCode::OK => {
            forget(
                edge,
                base,
                "the origin answered a slice with the whole object",
            )
            .await;
            Ok(SliceHead::Whole)
        }
        _ => Ok(SliceHead::Whole),
    }
}

/// Whether the origin's answer to a slice's `Range` is about that range alone (a 416: the slice
/// starts past the end), so it is neither stored under the base key nor given to a viewer who
/// asked for no range. A viewer's `Range` far past the end probes such a slice.
pub fn answers_only_the_range(status: StatusCode) -> bool {
    status == StatusCode::RANGE_NOT_SATISFIABLE
}

/// Drops the record and the slices of an object that is no longer sliced.
async fn forget(edge: &Edge, base: &str, why: &'static str) {
    if edge.lookup(&record_key(base)).await.is_some() {
        tracing::debug!(key = base, why, "dropping the sliced object");
        edge.purge_key(base);
    }
}

/// Stores the sliced-object record from a storable slice's head (the fill driver's hook).
pub fn store_record(
    edge: &Edge,
    base: &str,
    slice: &HeaderMap,
    total: u64,
    freshness: Freshness,
    class: ContentClass,
) {
    let headers = crate::cache::object::owned(&whole_head(slice, total));
    let tags = tags_of(&headers);
    let record = CachedObject {
        status: StatusCode::OK,
        headers,
        body: Bytes::new(),
        class,
        freshness,
        stored_at: edge.clock.now(),
        vary: Default::default(),
        tags,
        pinned: false,
        disk: Default::default(),
        store_mark: 0,
    };
    edge.insert(record_key(base), Arc::new(record));
}

// ---- the viewer's side (the request state machine's `Slice` phase) ----

/// Where the `Slice` phase sends the request.
pub enum Outcome {
    /// Answered from slices.
    Done(Response<Body>),
    /// The object is not sliced (a 200, an error, a small object): read the fill as any miss.
    Read { fill: Arc<Fill>, leader: bool },
    /// Not shareable: pass to the origin.
    Pass(&'static str),
    /// Look the key up again: another viewer's fill answered that viewer alone (its
    /// credentials, its own `CDN-Loop`), and this viewer claims a fill of its own.
    Lookup,
    /// The object turned up stored whole under the base key (a fill of the slice key that got
    /// a 200 stored it and ended between the request's lookup and its claim): it answers as a
    /// lookup's find would. Not a new lookup: that would spend one of the request's bounded
    /// rounds (`request::Lookup::rounds`), and a viewer that had already spent one (sent to
    /// claim its own fill by another viewer's credentialed answer) was passed to the origin
    /// for an object stored a moment before.
    Stored(Arc<CachedObject>),
    /// The probe's slice lies past the object's end (an empty object: `416` with
    /// `Content-Range: bytes */0`) and the viewer asked for all of it: an ordinary fill of the
    /// whole object, stored like any other.
    Whole,
}

/// What a sliced response is built from.
struct Sliced {
    /// The whole object's 200 head (validators included).
    head: HeaderMap,
    total: u64,
    age: u64,
}

/// A slice obtained for reading.
enum Got {
    Cached(Arc<CachedObject>),
    Filling(Arc<Fill>, Arc<StreamHead>),
    /// The fill's answer is not a slice.
    Other {
        fill: Arc<Fill>,
        leader: bool,
        head: FillHead,
    },
    /// A collapsed reader gave up waiting for the head (`request::collapsed_head`).
    TimedOut,
    /// The object is stored whole under the base key (a fill of this slice key that got a 200
    /// ended between our lookup and our claim): that object.
    Whole(Arc<CachedObject>),
    /// Not stored, and the viewer asked `only-if-cached` (`Reach::Stored`).
    Uncached,
}

/// How far `get_slice` goes for a slice that is not stored.
#[derive(Clone, Copy)]
enum Reach {
    /// Claims the slice's fill or joins the one in flight. `head_wait`: a collapsed reader
    /// gives up waiting for the head as `request::collapsed_head` says.
    Fill { head_wait: bool },
    /// `only-if-cached` (RFC 9111 §5.2.1.7): what is stored, never the origin.
    Stored,
}

/// Whether a miss on `key` (the base key, no `Vary` known) goes through the slice path.
pub fn applies(edge: &Edge, base: &str, key: &str) -> bool {
    // A whole-object fill already in flight for the key (a prefetch, a probe) is joined
    // instead: its bytes are on their way. An object a slice's answer showed to have no strong
    // validator is fetched whole (`Edge::is_unsliced`). Manifests are never sliced: they are
    // small, and a live or blocking playlist request must keep its own fill and hold rules.
    let path = crate::cache::key::key_path(base);
    let path = path.split('?').next().unwrap_or(path);
    edge.config.cache.slice_size > 0
        && base == key
        && crate::cache::policy::ContentClass::classify(path, None)
            != crate::cache::policy::ContentClass::Manifest
        && !edge.fills.in_flight(base)
        && !edge.is_unsliced(base)
}

/// The `Slice` phase: a fresh record answers from slices; without one, the slice holding the
/// viewer's first byte is fetched, and its answer tells whether the object is sliced.
/// `only_if_cached`: answered from a fresh record and stored slices alone, else a 504.
pub async fn serve(req: &Req<'_>, base: &str, only_if_cached: bool) -> Result<Outcome, EdgeError> {
    let edge = req.edge;
    let size = edge.config.cache.slice_size;
    let job = FillJob::new(req, base, None);
    let reach = if only_if_cached {
        Reach::Stored
    } else {
        Reach::Fill { head_wait: true }
    };
    // A restart (the object changed under us) happens at most twice; then the viewer gets
    // whatever the cold path gives.
    for _ in 0..3 {
        let now = edge.clock.now();
        let record = edge
            .lookup(&record_key(base))
            .await
            .map(|(o, _)| o)
            .filter(|o| o.staleness(now).is_none());
        let (sliced, first) = match record {
            // A record without a strong validator (stored by an edge that sliced such objects):
            // its slices may be of several versions. Dropped with them; the object starts over.
            Some(rec) if !strong_validator(&rec.headers) => {
                edge.purge_key(base);
                continue;
            }
            Some(rec) => match crate::cache::policy::content_length(&rec.headers) {
                Some(total) => (
                    Sliced {
                        head: rec.headers.clone(),
                        total,
                        age: rec.age(now).as_secs(),
                    },
                    None,
                ),
                None => {
                    edge.purge_key(base);
                    continue;
                }
            },
            None if only_if_cached => return Err(EdgeError::NotCached),
            None => {
                let k = first_slice(req, size);
                match get_slice(edge, &job, base, SliceAsk { index: k, size }, reach).await {
                    Got::Filling(fill, h) => match content_range(&h.headers) {
                        Some((_, _, total)) => (
                            Sliced {
                                head: whole_head(&h.headers, total),
                                total,
                                age: h.age_at(edge.clock.now()),
                            },
                            Some((k, Got::Filling(fill, h))),
                        ),
                        None => return Err(OriginErr.into()),
                    },
                    Got::Other { fill, leader, head } => {
                        return not_sliced(req, fill, leader, head)
                    }
                    Got::TimedOut => return Ok(Outcome::Pass("collapse-timeout")),
                    Got::Whole(obj) => return Ok(Outcome::Stored(obj)),
                    Got::Uncached => return Err(EdgeError::NotCached),
                    // A slice without a fresh record (expired, soft-purged, or the record
                    // never reached the disk): fetch it again, which renews the record and
                    // tells whether the other slices still stand.
                    Got::Cached(_) => {
                        edge.purge_key(&slice_key(base, k));
                        continue;
                    }
                }
            }
        };
        if let Some(out) = respond(req, &job, base, sliced, first, reach).await? {
            return Ok(out);
        }
    }
    Ok(Outcome::Pass("slice-restarts"))
}

/// A protocol error from the origin (a slice head that lost its range).
struct OriginErr;

impl From<OriginErr> for EdgeError {
    fn from(_: OriginErr) -> EdgeError {
        EdgeError::Origin(crate::origin::OriginError::Protocol)
    }
}

/// The slice holding the viewer's first byte when the range says it without the length; else
/// the first.
fn first_slice(req: &Req<'_>, size: u64) -> u64 {
    use crate::http::range::ByteRange;
    match crate::http::range::parse(&req.parts.headers) {
        Some(ByteRange::FromTo(a, _) | ByteRange::From(a)) => a / size,
        _ => 0,
    }
}

/// A probe answered with something other than a slice: the ordinary fill's answer.
fn not_sliced(
    req: &Req<'_>,
    fill: Arc<Fill>,
    leader: bool,
    head: FillHead,
) -> Result<Outcome, EdgeError> {
    let reason = match head {
        // Answers `request::read` handles for this path too: the leader's share of the fill
        // slots was taken (each viewer claims again, the leader once a slot of its share is
        // free), or a cold-Range probe too large to fetch whole (an object without a strong
        // validator, never sliced: `SliceHead::Unsliceable`), whose ranged viewers pass while
        // the others claim one whole-object fill.
        FillHead::Pass(fill::SHARE_TAKEN | crate::proxy::range_pass::REASON) => {
            return Ok(Outcome::Read { fill, leader })
        }
        FillHead::Pass(reason) => reason,
        // The probe's slice lies past the end: the 416 answers a viewer's own range, while a
        // viewer without one (an empty object's first slice) gets the whole object, fetched
        // and stored as an unsliced one. (Passed to the origin, an empty object was never
        // stored: two origin requests per viewer, for ever.)
        FillHead::Streaming(h)
            if answers_only_the_range(h.status)
                && !req.parts.headers.contains_key(header::RANGE) =>
        {
            return Ok(Outcome::Whole)
        }
        _ => return Ok(Outcome::Read { fill, leader }),
    };
    // Only the leader holds the origin's response. A 206 (a slice of an unshareable object)
    // answers a range the viewer did not ask for: the viewer passes with its own request.
    Ok(match leader.then(|| fill.take_pass()).flatten() {
        // No pass slot for this viewer's relay (`proxy::fill::relayed`).
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(resp)) if resp.status() != StatusCode::PARTIAL_CONTENT => {
            let edge = req.edge;
            edge.metrics.request(CacheStatus::Miss);
            Metrics::inc(&edge.metrics.passes);
            Outcome::Done(relay(
                req,
                resp,
                CacheStatus::Miss,
                &format!("fwd=miss; detail={reason}"),
            ))
        }
        // Not this viewer's answer: it looks again and claims one fill with the others (a
        // cold-Range probe dropped as too large, another viewer's credentials or `CDN-Loop`, a
        // refused prefetch of this slice), as `request::read` does.
        None if crate::proxy::request::looks_again(req, reason) => Outcome::Lookup,
        _ => Outcome::Pass(reason),
    })
}

/// Looks a slice up, or (as `reach` allows) claims its fill (spawning the driver) or joins the
/// fill in flight, and waits for its head.
async fn get_slice(
    edge: &Arc<Edge>,
    job: &FillJob,
    base: &str,
    ask: SliceAsk,
    reach: Reach,
) -> Got {
    let key = slice_key(base, ask.index);
    if let Some((obj, _)) = edge.lookup(&key).await {
        return Got::Cached(obj);
    }
    let head_wait = match reach {
        Reach::Fill { head_wait } => head_wait,
        Reach::Stored => return Got::Uncached,
    };
    let (fill, leader) = match edge.fills.claim(&key) {
        Claim::Leader(fill, guard) => {
            // Stored by a fill that ended between the lookup and the claim: as this slice, or
            // whole under the base key (the origin answered the slice with a 200).
            let now = edge.clock.now();
            for (k, whole) in [(key.as_str(), false), (base, true)] {
                if let Some(obj) = edge.ram_fresh(k, now) {
                    fill.set_head(FillHead::Complete(obj.clone()));
                    fill.finish(Ok(()));
                    drop(guard);
                    return if whole {
                        Got::Whole(obj)
                    } else {
                        Got::Cached(obj)
                    };
                }
            }
            let job = job.for_slice(ask);
            edge.spawn(fill::drive_fill(edge.clone(), guard, fill.clone(), job));
            (fill, true)
        }
        Claim::Reader(fill) => {
            Metrics::inc(&edge.metrics.collapsed);
            (fill, false)
        }
    };
    let head = if leader || !head_wait {
        fill.head().await
    } else {
        match crate::proxy::request::collapsed_head(edge, &fill).await {
            Some(h) => h,
            None => return Got::TimedOut,
        }
    };
    match head {
        FillHead::Streaming(h) if h.status == StatusCode::PARTIAL_CONTENT => Got::Filling(fill, h),
        FillHead::Complete(obj) if obj.status == StatusCode::PARTIAL_CONTENT => Got::Cached(obj),
        FillHead::Complete(obj) => Got::Whole(obj),
        head => Got::Other { fill, leader, head },
    }
}

/// Builds the response to a sliced object. `None`: its first slice is of another version than
/// the record (the object changed; the caller starts over).
async fn respond(
    req: &Req<'_>,
    job: &FillJob,
    base: &str,
    sliced: Sliced,
    first: Option<(u64, Got)>,
    reach: Reach,
) -> Result<Option<Outcome>, EdgeError> {
    let edge = req.edge;
    let size = edge.config.cache.slice_size;
    // A response without a body (a HEAD, a 304, a 416) is a hit unless the probe just went to
    // the origin for this object.
    let head_only = match first {
        Some(_) => CacheStatus::Miss,
        None => CacheStatus::Hit,
    };
    // The head, as `response::build` answers the viewer's conditionals and Range for an object
    // of `total` bytes; the body is ours.
    let mut resp = response::build(
        &req.ask(),
        StatusCode::OK,
        &sliced.head,
        Source::Head(sliced.total),
        info(req, head_only, sliced.age),
    );
    let range = match resp.status() {
        StatusCode::OK => Some((0, sliced.total)),
        StatusCode::PARTIAL_CONTENT => {
            content_range(resp.headers()).map(|(a, b, _)| (a, b.saturating_add(1)))
        }
        _ => None,
    };
    let (Some((start, end)), true) = (range, req.parts.method == Method::GET) else {
        edge.metrics.request(head_only);
        return Ok(Some(Outcome::Done(resp)));
    };
    let k = start / size;
    // `only-if-cached`: every slice the body needs must be stored before the head goes out
    // (the walk then only reads them; one evicted meanwhile cuts the body short).
    if matches!(reach, Reach::Stored) && !slices_stored(edge, base, size, start, end) {
        return Err(EdgeError::NotCached);
    }
    let got = match first {
        Some((n, got)) if n == k => got,
        _ => get_slice(edge, job, base, SliceAsk { index: k, size }, reach).await,
    };
    let (piece, status) = match got {
        Got::Cached(obj) if same_version(&obj.headers, &sliced.head) => (
            Piece::from_object(&obj, k, size, start, end)?,
            CacheStatus::Hit,
        ),
        Got::Cached(_) => {
            // A slice left from another version: drop it with the rest and start over.
            edge.purge_key(base);
            return Ok(None);
        }
        Got::Filling(fill, h) if same_version(&h.headers, &sliced.head) => (
            Piece::from_fill(&fill, k, size, start, end),
            CacheStatus::Miss,
        ),
        // The driver saw the change and restarted the object.
        Got::Filling(..) => return Ok(None),
        Got::Other { fill, leader, head } => {
            return not_sliced(req, fill, leader, head).map(Some);
        }
        Got::TimedOut => return Ok(Some(Outcome::Pass("collapse-timeout"))),
        Got::Whole(obj) => return Ok(Some(Outcome::Stored(obj))),
        Got::Uncached => return Err(EdgeError::NotCached),
    };
    edge.metrics.request(status);
    // `build` gave the head this node's provisional Cache-Status member; RFC 9211 wants one
    // member per cache, so the field goes back to the upstream caches' members stored with the
    // object and `stamp` appends this node's real one.
    let cache_status = header::HeaderName::from_static("cache-status");
    let h = resp.headers_mut();
    h.remove(&cache_status);
    for v in sliced.head.get_all(&cache_status) {
        h.append(&cache_status, v.clone());
    }
    response::stamp(&mut resp, info(req, status, sliced.age));
    let walk = Walk {
        edge: edge.clone(),
        job: job.clone(),
        base: base.to_string(),
        size,
        version: sliced.head,
        pos: next_slice_start(k, size).min(end),
        end,
        piece: Some(piece),
        reach: match reach {
            Reach::Fill { .. } => Reach::Fill { head_wait: false },
            Reach::Stored => Reach::Stored,
        },
    };
    *resp.body_mut() = Body::stream(walk.into_stream(), Some(end - start));
    Ok(Some(Outcome::Done(resp)))
}

/// Whether every slice holding a byte of `[start, end)` is stored, in RAM or on disk.
fn slices_stored(edge: &Edge, base: &str, size: u64, start: u64, end: u64) -> bool {
    (start / size..end.div_ceil(size)).all(|k| {
        let key = slice_key(base, k);
        edge.ram.contains(&key)
            || edge
                .store
                .as_ref()
                .is_some_and(|s| s.contains(key.as_bytes()))
    })
}

fn info(req: &Req<'_>, status: CacheStatus, age: u64) -> CacheInfo {
    let detail = match status {
        CacheStatus::Hit => "hit".to_string(),
        _ => "fwd=miss".to_string(),
    };
    CacheInfo {
        status,
        cache_status: format!("{}; {detail}; detail=slice", req.cdn()),
        age: Some(age),
    }
}

/// The part of one slice a response needs.
enum Piece {
    Bytes(Bytes),
    Reader(FillReader),
}

impl Piece {
    /// `[start, end)` of the object, clipped to slice `k`, from a stored slice.
    fn from_object(
        obj: &CachedObject,
        k: u64,
        size: u64,
        start: u64,
        end: u64,
    ) -> Result<Piece, EdgeError> {
        let at = k * size;
        let (from, to) = (start.max(at) - at, end.min(at.saturating_add(size)) - at);
        let from = usize::try_from(from).map_err(|_| OriginErr)?;
        let to = usize::try_from(to).map_err(|_| OriginErr)?;
        if to > obj.body.len() || from > to {
            return Err(OriginErr.into());
        }
        Ok(Piece::Bytes(obj.body.slice(from..to)))
    }

    fn from_fill(fill: &Arc<Fill>, k: u64, size: u64, start: u64, end: u64) -> Piece {
        let at = k * size;
        let (from, to) = (start.max(at) - at, end.min(at.saturating_add(size)) - at);
        Piece::Reader(fill.reader(from, Some(to)))
    }
}

/// Why a sliced body stopped short.
#[derive(Debug, thiserror::Error)]
enum WalkError {
    #[error("the object changed at the origin between slices")]
    Changed,
    #[error("a slice could not be fetched")]
    Slice,
    #[error("slice fill failed: {0}")]
    Fill(#[from] crate::cache::fill::FillError),
}

/// A response body walking the slices `[pos, end)` covers, one slice at a time, each from the
/// cache or its fill as it arrives. Bounded: every step consumes a piece or moves `pos` on.
struct Walk {
    edge: Arc<Edge>,
    job: FillJob,
    base: String,
    size: u64,
    /// The head the response was built from: every slice must be of its version.
    version: HeaderMap,
    pos: u64,
    end: u64,
    piece: Option<Piece>,
    /// How later slices are obtained.
    reach: Reach,
}

impl Walk {
    fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, BoxError>> + Send {
        futures_util::stream::unfold(Some(self), |walk| async move {
            let mut walk = walk?;
            match walk.next().await {
                Ok(Some(b)) => Some((Ok(b), Some(walk))),
                Ok(None) => None,
                Err(e) => Some((Err(BoxError::from(e)), None)),
            }
        })
    }

    async fn next(&mut self) -> Result<Option<Bytes>, WalkError> {
        loop {
            match &mut self.piece {
                Some(Piece::Bytes(b)) => {
                    let b = std::mem::take(b);
                    self.piece = None;
                    if !b.is_empty() {
                        return Ok(Some(b));
                    }
                }
                Some(Piece::Reader(r)) => match r.next().await {
                    Some(Ok(b)) => return Ok(Some(b)),
                    Some(Err(e)) => return Err(e.into()),
                    None => self.piece = None,
                },
                None => {
                    if self.pos >= self.end {
                        return Ok(None);
                    }
                    let k = self.pos / self.size;
                    let next = fetch(
                        &self.edge,
                        &self.job,
                        &self.base,
                        &self.version,
                        SliceAsk {
                            index: k,
                            size: self.size,
                        },
                        (self.pos, self.end),
                        self.reach,
                    );
                    self.piece = Some(next.await?);
                    self.pos = next_slice_start(k, self.size).min(self.end);
                }
            }
        }
    }
}

/// Slice `ask`'s part of `[start, end)`; a stored slice of another version than `version` is
/// dropped and fetched once more.
async fn fetch(
    edge: &Arc<Edge>,
    job: &FillJob,
    base: &str,
    version: &HeaderMap,
    ask: SliceAsk,
    (start, end): (u64, u64),
    reach: Reach,
) -> Result<Piece, WalkError> {
    let (k, size) = (ask.index, ask.size);
    for _ in 0..2 {
        match get_slice(edge, job, base, ask, reach).await {
            Got::Cached(obj) if same_version(&obj.headers, version) => {
                return Piece::from_object(&obj, k, size, start, end).map_err(|_| WalkError::Slice);
            }
            Got::Cached(_) => {
                // Drop that slice alone; the record decides whether the rest stays.
                edge.purge_key(&slice_key(base, k));
            }
            Got::Filling(fill, h) if same_version(&h.headers, version) => {
                return Ok(Piece::from_fill(&fill, k, size, start, end));
            }
            Got::Filling(..) => return Err(WalkError::Changed),
            // Another viewer's fill answered for that viewer alone (its credentials refused,
            // its own `CDN-Loop`): the fill released the slice's key, so this walk claims the
            // slice with its own request.
            Got::Other {
                leader: false,
                head: FillHead::Pass(reason),
                ..
            } if fill::leaders_own(reason)
                || reason == fill::SHARE_TAKEN
                || crate::proxy::loop_answer::refill(reason) => {}
            Got::Other { .. } | Got::TimedOut | Got::Whole(_) | Got::Uncached => {
                return Err(WalkError::Slice)
            }
        }
    }
    Err(WalkError::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let cr = |v: &str| content_range(&h(&[("content-range", v)]));
        assert_eq!(cr("bytes 0-99/1000"), Some((0, 99, 1000)));
        assert_eq!(cr("bytes 900-999/1000"), Some((900, 999, 1000)));
        assert_eq!(cr("bytes 0-99/*"), None);
        let unknown = |v: &str| range_of_unknown_length(&h(&[("content-range", v)]));
        assert!(unknown("bytes 0-99/*"));
        assert!(unknown("bytes 0-19 / *"));
        assert!(!unknown("bytes 0-99/1000"));
        assert!(!unknown("bytes 9-1/*"));
        assert!(!unknown("bytes */*"));
        assert!(!unknown("bytes */1000"));
        assert!(!unknown("bytes 0-99/**"));
        assert_eq!(cr("bytes 0-1000/1000"), None);
        assert_eq!(cr("bytes 9-1/1000"), None);
        assert_eq!(cr("items 0-1/10"), None);
        assert_eq!(cr("bytes -1-5/10"), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[test]
    fn slice_keys_never_collide_with_variants_or_each_other() {
        let base = "http|h|/a.mp4";
        assert_ne!(slice_key(base, 1), slice_key(base, 10));
        assert!(slice_key(base, 1).starts_with(&format!("{base}\0")));
        assert!(record_key(base).starts_with(&format!("{base}\0")));
        assert!(!slice_key(base, 1).starts_with(&slice_key(base, 10)));
    }

    #[test]
    fn versions_compare_every_validator() {
        let a = h(&[("etag", "\"a\""), ("last-modified", "x")]);
        let b = h(&[("etag", "\"b\""), ("last-modified", "x")]);
        assert!(!same_version(&a, &b));
        assert!(same_version(&a, &a.clone()));
        let w = h(&[("etag", "W/\"w\""), ("last-modified", "x")]);
        let w2 = h(&[("etag", "W/\"w\""), ("last-modified", "y")]);
        assert!(
            !same_version(&w, &w2),
            "a weak tag that stays, a date that moves"
        );
        let c = h(&[("last-modified", "x")]);
        let d = h(&[("last-modified", "y")]);
        assert!(!same_version(&c, &d));
        assert!(same_version(&HeaderMap::new(), &HeaderMap::new()));
    }

    /// Bug: a viewer whose lookup missed, and whose claim of the first slice found that a fill
    /// of that slice (answered with a 200) had stored the object whole under the base key and
    /// ended meanwhile, was sent to `Lookup` again. A viewer that had already spent its second
    /// lookup round (sent to claim a fill of its own by another viewer's credentialed answer)
    /// was then passed to the origin (`vary-mismatch`): a straggler fill for an object stored a
    /// moment before (3 origin requests instead of 2 in
    /// `edge_collapse::a_leaders_credentials_or_range_never_turn_its_waiters_into_a_herd`,
    /// a few runs in 25 on a loaded box). The claim now answers with that object.
    #[tokio::test]
    async fn a_slice_claim_finding_the_object_stored_whole_answers_with_it() {
        let cfg = crate::Config::for_origin("http://127.0.0.1:1").expect("config");
        let edge = Edge::new(cfg).await.expect("edge");
        let (parts, ()) = http::Request::get("/v/seg.ts")
            .header(header::HOST, "edge.test")
            .body(())
            .expect("request")
            .into_parts();
        let target = crate::proxy::target::resolve(&edge.config, Some("edge.test"), "/v/seg.ts")
            .expect("routed");
        let req = Req {
            edge: &edge,
            parts: &parts,
            target,
            peer: None,
        };
        let base = req.key().to_string();
        assert!(
            applies(&edge, &base, &base),
            "a segment miss takes the slice path"
        );
        // The interleaving: the request's lookup of the base key missed; then the fill of the
        // first slice, answered with the whole object, stored it under the base key and ended.
        let obj = Arc::new(CachedObject::for_push(
            StatusCode::OK,
            h(&[("content-length", "12")]),
            Bytes::from_static(b"slow segment"),
            ContentClass::Segment,
            std::time::Duration::from_secs(60),
        ));
        edge.insert(base.clone(), obj.clone());
        match serve(&req, &base, false).await {
            Ok(Outcome::Stored(got)) => assert!(Arc::ptr_eq(&got, &obj), "the stored object"),
            Ok(Outcome::Lookup) => panic!(
                "the object stored a moment ago sent the request to look up again, \
                 a round it may not have left"
            ),
            _ => panic!("not answered with the stored object"),
        }
        assert!(edge.fills.is_empty(), "the slice's claim was given back");
        let fetches = edge
            .metrics
            .origin_fetches
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(fetches, 0, "nothing asked of the origin");
    }

    #[test]
    fn a_slice_asks_for_whole_slices() {
        let ask = SliceAsk {
            index: 2,
            size: 1 << 20,
        };
        assert_eq!(ask.range_header(), "bytes=2097152-3145727");
    }
}
