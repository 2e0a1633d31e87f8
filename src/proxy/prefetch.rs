//! Prefetch (issue 17): when a fill stores a new copy of a live manifest (an HLS media playlist
//! without `EXT-X-ENDLIST`, or an MPD with `type="dynamic"`), the objects it newly lists are
//! fetched before a viewer asks, through the normal fill (so a viewer arriving meanwhile joins
//! it as a collapsed reader). Per route `prefetch = "off" | "next" | "all-new"`; never for a
//! manifest no viewer asked for within two target durations; bounded edge-wide by a semaphore.
//!
//! [`prefetch_hint`] is the same for one object a player announced (CMCD `nor`), bounded per
//! viewer as well.
//!
//! A prefetch has no viewer, so it skips the checks `dispatch` makes of one (a route's token,
//! its `allow_ips`/`deny_ips`): it only fills objects of the route whose manifest (or viewer)
//! named them, whose checks that viewer passed. A URI that resolves into another route of the
//! same host is left for its own viewers. Nor is an answer other than a success kept from a
//! prefetch (an origin's 403 to the edge's own request must not be served to viewers who would
//! have been let in): the fill passes, and viewers ask for themselves.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::fill::FillHead;
use crate::cache::lock::Claim;
use crate::cmcd::Cmcd;
use crate::config::{Prefetch, Route};
use crate::proxy::edge::Edge;
use crate::proxy::fill::{self, FillJob};
use crate::proxy::llhls::{self, Playlist, Scan};
use crate::proxy::request::Req;
use crate::proxy::{slice, target};
use http::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;
use vedge_manifest::dash::{self, LiveEdge};
use vedge_manifest::{ObjectKind, Reference};

/// Most prefetches one manifest update starts.
const PER_UPDATE: usize = 16;
/// CMCD `nor` hints in flight per viewer.
const PER_VIEWER: usize = 2;
/// CMCD `nor` hints in flight per client (an IPv4 address or an IPv6 /64, `address_key`),
/// whatever `sid`s it sends: the `sid` is the player's own word, so a client naming a new one
/// on each request would otherwise take the whole edge-wide budget (and starve the live
/// playlists' prefetch) by itself.
const PER_ADDRESS: usize = 8;
/// How recently an MPD must have been requested to drive prefetch (MPDs carry no target
/// duration: two typical 6 s segments).
const MPD_WATCHED: Duration = Duration::from_secs(12);
/// Most references one walk of a live MPD lists (its time-shift window's newest).
const LIVE_BUDGET: usize = 8192;
/// Segments per representation, newest first, whose kept refusal a live MPD copy drops.
const REFUSALS_PER_REPRESENTATION: usize = 3;
/// Most keys one live MPD copy looks up for refusals (the newest of every representation
/// first).
const REFUSALS_PER_COPY: usize = 64;

/// After a live media playlist was stored: prefetch what it newly lists, asking as `viewer`
/// (the request headers of the playlist fill's leader) would.
pub(crate) fn after_playlist(
    edge: &Arc<Edge>,
    route: &Route,
    pl_key: &str,
    pl: &Playlist,
    scan: &Scan,
    viewer: &HeaderMap,
) {
    if route.live.prefetch == Prefetch::Off {
        return;
    }
    let watched = (scan.target * 2).max(Duration::from_secs(1));
    // The first copy seen lists a whole window: only its live edge is worth fetching.
    let first_copy = !pl.knows_any();
    let mut fresh: Vec<(u64, &str)> = scan.uris().filter(|(_, u)| pl.learn_uri(u)).collect();
    if !pl.watched(watched) || fresh.is_empty() {
        return;
    }
    if route.live.prefetch == Prefetch::Next || first_copy {
        // The newest segment and the parts from it on: what a viewer at the live edge asks next.
        let newest_seg = scan
            .segments
            .iter()
            .rev()
            .find(|(_, u, _)| fresh.iter().any(|(_, f)| f == u))
            .map(|(n, _, _)| *n);
        let from = newest_seg.unwrap_or(scan.next_msn());
        fresh.retain(|(n, _)| *n >= from);
    }
    let skip = fresh.len().saturating_sub(PER_UPDATE);
    for (_, uri) in fresh.into_iter().skip(skip) {
        if let Some((host, pq)) = resolve(pl_key, uri) {
            start(edge, route, &host, &pq, None, viewer, None, None);
        }
    }
}

/// Whether an MPD's root element says `type="dynamic"` (either quote, spaces around `=`, a
/// namespace prefix on `MPD`), read as bytes from its first 16 KiB. Read as text, a cut through
/// a multi-byte character (a title in another script) hid a live MPD, and only the exact
/// spelling `type="dynamic"` was seen.
fn mpd_is_dynamic(body: &[u8]) -> bool {
    let head = &body[..body.len().min(16 << 10)];
    let Some(root) = head.windows(4).enumerate().find_map(|(i, w)| {
        let opens = i > 0 && matches!(head[i - 1], b'<' | b':');
        (opens && &w[..3] == b"MPD" && w[3].is_ascii_whitespace()).then_some(i + 3)
    }) else {
        return false;
    };
    let tag = &head[root..];
    let tag = &tag[..tag.iter().position(|&b| b == b'>').unwrap_or(tag.len())];
    let mut rest = tag;
    while let Some(at) = rest
        .windows(5)
        .position(|w| w[0].is_ascii_whitespace() && &w[1..] == b"type")
    {
        rest = &rest[at + 5..];
        let value = rest.trim_ascii_start();
        let Some(value) = value.strip_prefix(b"=") else {
            continue;
        };
        let value = value.trim_ascii_start();
        let Some((&quote, value)) = value.split_first() else {
            return false;
        };
        return matches!(quote, b'"' | b'\'')
            && value.starts_with(b"dynamic")
            && value.get(7) == Some(&quote);
    }
    false
}

/// After a copy of a manifest that is not an HLS playlist went through a fill (stored, or
/// refreshed by a 304): a dynamic MPD drops the refusals kept for the segments it says are
/// available, then prefetches the media it newly lists.
pub(crate) fn observe_mpd(
    edge: &Arc<Edge>,
    route: &Route,
    key: &str,
    body: &[u8],
    viewer: &HeaderMap,
) {
    if !crate::proxy::llhls::is_mpd_path(key) || !mpd_is_dynamic(body) {
        return;
    }
    // Without the `Vary` variant (`\0...`) a varied MPD's key ends with.
    let path = key.splitn(3, '|').nth(2).unwrap_or("");
    let path = path.split('\0').next().unwrap_or(path);
    let Some(host) = key.split('|').nth(1) else {
        return;
    };
    let Ok(url) = url::Url::parse(&format!("http://{host}{path}")) else {
        return;
    };
    // Bounded (`dash::parse_live`, and the walks below by `dash::LIVE_URI_BYTES`): this runs on
    // every copy of an MPD the origin may refresh every second.
    let Ok(mpd) = dash::parse_live(&url, body, LIVE_BUDGET) else {
        return;
    };
    let now = edge.clock.now();
    let pl_key = llhls::playlist_key(key);
    // First, so the prefetch below finds no refusal in its way.
    if let Ok(refs) = dash::live_references_of(&url, &mpd, now, LIVE_BUDGET, LiveEdge::Announced) {
        forget_early_refusals(edge, &pl_key, &refs);
    }
    if route.live.prefetch == Prefetch::Off {
        return;
    }
    // A viewer's request makes no state (`llhls::intercept`): its fill does, and a downstream
    // tier's makes none (that edge prefetches for its viewers).
    let pl = match llhls::playlist_of(edge, &pl_key) {
        Some(pl) => pl,
        None if !crate::origin::from_own_tier(viewer, &edge.config.cdn_id) => {
            edge.live.for_fill(&pl_key, viewer, &edge.config.cdn_id)
        }
        None => return,
    };
    // What the live MPD lists now: its SegmentTimeline, or the `$Number$` segments its
    // availability window holds at this moment (settled: the origin surely has them).
    let Ok(refs) = dash::live_references_of(&url, &mpd, now, LIVE_BUDGET, LiveEdge::Settled) else {
        return;
    };
    let ranks = newest_ranks(&refs);
    let first_copy = !pl.knows_any();
    let mut fresh: Vec<(bool, String)> = refs
        .iter()
        .zip(&ranks)
        .map(|(r, rank)| (*rank == Some(0), r.url.to_string()))
        .filter(|(_, u)| pl.learn_uri(u))
        .collect();
    if !pl.watched(MPD_WATCHED) || fresh.is_empty() {
        return;
    }
    if route.live.prefetch == Prefetch::Next || first_copy {
        // The live edge of each representation: what a player asks for next.
        fresh.retain(|(newest, _)| *newest);
    }
    // Newest first, should the budget cut.
    fresh.reverse();
    for (_, u) in fresh.into_iter().take(PER_UPDATE) {
        if let Ok(u) = url::Url::parse(&u) {
            if u.host_str() == url.host_str() {
                let pq = match u.query() {
                    Some(q) => format!("{}?{q}", u.path()),
                    None => u.path().to_string(),
                };
                start(edge, route, host, &pq, None, viewer, None, None);
            }
        }
    }
}

/// A live MPD copy through the edge drops the 404s and 410s the edge keeps for the segments it
/// now says are available (`refs`: from their availability start, `availabilityTimeOffset`
/// counted, `LiveEdge::Announced`), as a playlist copy does for what it lists (`llhls::forget_refusals`,
/// which this calls). ISO/IEC 23009-1 5.3.9.5.3: a segment is available from then on, and a
/// player whose clock runs a little ahead (or an LL-DASH player, by design) asks a moment
/// before: the origin's 404 to that, kept for `negative_ttl`, went on answering after the
/// segment existed, and the prefetch of it was skipped as cached. Only each representation's
/// `REFUSALS_PER_REPRESENTATION` newest segments are looked up (what an early request asks
/// for), at most `REFUSALS_PER_COPY` in all, newest first: a long DVR window is never walked
/// key by key.
fn forget_early_refusals(edge: &Edge, pl_key: &str, refs: &[Reference]) {
    let drop = &edge.config.cache.drop_query_params;
    let mut newest: Vec<(usize, String)> = newest_ranks(refs)
        .into_iter()
        .zip(refs)
        .filter_map(|(rank, r)| {
            let rank = rank.filter(|n| *n < REFUSALS_PER_REPRESENTATION)?;
            Some((rank, llhls::member_key(pl_key, r.url.as_str(), drop)?))
        })
        .collect();
    newest.sort_by_key(|(rank, _)| *rank);
    let keys: Vec<String> = newest
        .into_iter()
        .take(REFUSALS_PER_COPY)
        .map(|(_, k)| k)
        .collect();
    llhls::forget_refusals(edge, &keys);
}

/// For each reference of a live MPD's walk, its rank among its representation's segments
/// counted from the newest (0); `None` for what is not a segment. The walker lists each
/// representation's init, then its segments oldest first, so a run of segments ends with its
/// representation's newest.
fn newest_ranks(refs: &[Reference]) -> Vec<Option<usize>> {
    let mut ranks = vec![None; refs.len()];
    let mut run = 0;
    for (i, r) in refs.iter().enumerate().rev() {
        if r.kind == ObjectKind::Segment {
            ranks[i] = Some(run);
            run += 1;
        } else {
            run = 0;
        }
    }
    ranks
}

/// `(host, path?query)` of `uri` listed in the playlist keyed `pl_key`.
fn resolve(pl_key: &str, uri: &str) -> Option<(String, String)> {
    let mut it = pl_key.splitn(3, '|');
    let (_, host, path) = (it.next()?, it.next()?, it.next()?);
    let path = path.split('?').next().unwrap_or(path);
    let base = url::Url::parse(&format!("http://{host}{path}")).ok()?;
    let u = base.join(uri.trim()).ok()?;
    if u.host_str() != base.host_str() || u.port() != base.port() {
        return None;
    }
    let pq = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    Some((host.to_string(), pq))
}

/// After a viewer's GET was answered: its CMCD `nor` (CTA-5004 §3.3.4, the object the player
/// asks for next, relative to this one) starts a prefetch of that object, and its `nrr` (the
/// byte range of that next request; without `nor`, of this object: a single file read range by
/// range, as DASH `SegmentBase` and HLS `EXT-X-BYTERANGE` are) narrows the prefetch to the
/// slice holding the range's first byte (`cache.slice_size`). Only for a request the route
/// admitted (token and address checks passed: `dispatch` calls this after them) and answered
/// with a success, and only for a `nor` on the same host that stays below the root
/// (`Cmcd::next_object`); the viewer is the CMCD `sid`, else the client address.
pub(crate) fn after_hinted_request(req: &Req<'_>, cmcd: &Cmcd, status: http::StatusCode) {
    if req.parts.method != http::Method::GET || !status.is_success() {
        return;
    }
    // A suffix range (`-n`) names no first byte until the object's length is known.
    let from = cmcd.nrr.and_then(|r| r.start);
    let next = match cmcd.next_object(req.parts.uri.path()) {
        Some(next) => next,
        // This object again, as its key names it (the viewer's CMCD query is not in it); only
        // in slices: without them this request's own fill is the whole object.
        None if from.is_some() && req.edge.config.cache.slice_size > 0 => {
            crate::cache::key::key_path(req.key()).to_string()
        }
        None => return,
    };
    let viewer = match (&cmcd.sid, req.peer) {
        (Some(sid), _) => format!("s|{sid}"),
        (None, Some(peer)) => format!("v|{}", peer.ip()),
        (None, None) => return,
    };
    let Some(address) = req.peer.map(|p| address_key(p.ip())) else {
        return;
    };
    let Some(per_address) = hint_permit(req.edge, &address, PER_ADDRESS) else {
        return;
    };
    prefetch_hint(
        req.edge,
        req.route(),
        req.key(),
        Hinted { uri: &next, from },
        &viewer,
        &req.parts.headers,
        Some(per_address),
    );
}

/// The `hint_permit` key of a client's share (`PER_ADDRESS`): the client as every other limit
/// counts it (`http::limits::client_of`: an IPv4 address, an IPv6 /64), so one subscriber's
/// /64 cannot take `PER_ADDRESS` fills per address it picks until the edge-wide pool is spent.
fn address_key(ip: std::net::IpAddr) -> String {
    format!("a|{}", crate::http::limits::client_of(ip))
}

/// A permit of `bound` per `who`, if one is free: `s|sid` and `v|address` are viewers, `a|address`
/// a client address (the prefixes keep a `sid` from naming another client's semaphore).
fn hint_permit(edge: &Edge, who: &str, bound: usize) -> Option<OwnedSemaphorePermit> {
    // One lookup-or-insert: with a get, then an insert, two first hints racing from one viewer
    // could each make a semaphore, and the second would replace the first with a fresh budget.
    let made: Result<_, std::convert::Infallible> = edge
        .live
        .hints
        .get_or_insert_with(who, || Ok(Arc::new(tokio::sync::Semaphore::new(bound))));
    let Ok(s) = made;
    s.try_acquire_owned().ok()
}

/// What a CMCD hint names: the object the player asks for next (`uri`, relative to the one it
/// is requesting now) and, when it said (`nrr`), the first byte it will ask of it.
pub struct Hinted<'a> {
    pub uri: &'a str,
    pub from: Option<u64>,
}

/// A CMCD `nor` prefetch hint (CTA-5004 §3.3.4): the player announced it will ask for `next`
/// (relative to the object keyed `base_key` it is requesting now) next. Starts a fill of it (of
/// the slice holding `next.from`, `start`) unless the route has `prefetch = "off"`, it is
/// cached or being filled, `viewer` (`s|` and a CMCD `sid`, else `v|` and the client address)
/// already has `PER_VIEWER` hints in flight, or the edge-wide prefetch budget is spent.
/// `address_permit` (the client address's share, held until the fill ends) is taken by the
/// caller. The fill asks as the hinting request
/// (`headers`) would. Returns whether a fill started.
pub fn prefetch_hint(
    edge: &Arc<Edge>,
    route: &Route,
    base_key: &str,
    next: Hinted<'_>,
    viewer: &str,
    headers: &HeaderMap,
    address_permit: Option<OwnedSemaphorePermit>,
) -> bool {
    if route.live.prefetch == Prefetch::Off {
        return false;
    }
    let Some((host, pq)) = resolve(base_key, next.uri) else {
        return false;
    };
    let Some(permit) = hint_permit(edge, viewer, PER_VIEWER) else {
        return false;
    };
    start(
        edge,
        route,
        &host,
        &pq,
        next.from,
        headers,
        Some(permit),
        address_permit,
    )
}

/// Starts one prefetch fill of `path_and_query` on `host` (the key's host), unless it is cached
/// or in flight, the budget is spent, or it belongs to another route than `route` (the one whose
/// viewer named it). `from`: only the slice holding that byte, where a viewer's range would be
/// served from slices (`slice::applies`; the whole object where it would not). It asks the
/// origin as `viewer` (that viewer's request headers) would: a fill with none of a viewer's
/// headers got answers no viewer gets (no CORS headers and no `Vary: Origin` from an origin
/// that adds both only for an `Origin`), stored for everyone.
#[allow(clippy::too_many_arguments)]
fn start(
    edge: &Arc<Edge>,
    route: &Route,
    host: &str,
    path_and_query: &str,
    from: Option<u64>,
    viewer: &HeaderMap,
    viewer_permit: Option<OwnedSemaphorePermit>,
    address_permit: Option<OwnedSemaphorePermit>,
) -> bool {
    // `host` is the one in the playlist's key: the route's own key host, which need not be one
    // of the viewer hosts the route serves (`hosts`), unless the route keys on the viewer's.
    let viewer_host = route.integrity.key_host.is_none().then_some(host);
    let Ok(target) = target::resolve(&edge.config, viewer_host, path_and_query) else {
        return false;
    };
    if !std::ptr::eq(target.route, route) || target.route.live.prefetch == Prefetch::Off {
        return false;
    }
    let base = target.key.clone();
    if edge.ram_fresh(&base, edge.clock.now()).is_some()
        || edge.is_hit_for_pass(&base)
        || edge.is_prefetch_refused(&base)
    {
        return false;
    }
    // An object that varies is stored under its viewers' variants, which a prefetch (no
    // viewer's headers) can neither find nor fill: it would ask the origin again each time.
    if edge.vary_index.get(&base).is_some() {
        return false;
    }
    let size = edge.config.cache.slice_size;
    let slice = from
        .filter(|_| slice::applies(edge, &base, &base))
        .map(|at| slice::SliceAsk {
            index: at / size,
            size,
        });
    let key = match slice {
        Some(ask) => {
            // Stored whole (no fill asks for a slice of it), or the slice already is.
            let key = slice::slice_key(&base, ask.index);
            if edge.ram_fresh(&key, edge.clock.now()).is_some()
                || edge
                    .store
                    .as_ref()
                    .is_some_and(|s| s.contains(base.as_bytes()))
            {
                return false;
            }
            key
        }
        // A viewer's request for the object went out as a slice probe (its first slice's
        // fill, `slice::serve`), whose answer stores the object whole when it is under the
        // slice size and its first slice otherwise: a whole-object fill would ask the origin
        // for the same bytes again (hls.js asks for a hinted part while its blocking reload
        // lists it). The slice path joins a whole-object fill in flight; this is the other way.
        None if edge.config.cache.slice_size > 0
            && edge.fills.in_flight(&slice::slice_key(&base, 0)) =>
        {
            return false;
        }
        None => base,
    };
    let Ok(permit) = edge.live.prefetch_permits.clone().try_acquire_owned() else {
        return false;
    };
    let Claim::Leader(f, guard) = edge.fills.claim(&key) else {
        return false;
    };
    let job = FillJob::prefetch(edge, &target, viewer);
    let job = match slice {
        Some(ask) => job.for_slice(ask),
        None => job,
    };
    let edge2 = edge.clone();
    edge.spawn(async move {
        let _permits = (permit, viewer_permit, address_permit);
        if let Some((obj, _)) = edge2.lookup_fresh(&key).await {
            f.set_head(FillHead::Complete(obj));
            f.finish(Ok(()));
            drop(guard);
            return;
        }
        fill::drive_fill(edge2, guard, f, job).await;
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One client's share of CMCD `nor` prefetches is counted as every other limit counts a
    /// client (`http::limits::client_of`): an IPv6 /64 is one client, so the addresses of one
    /// /64 cannot each take `PER_ADDRESS` fills of the edge-wide pool.
    #[tokio::test]
    async fn the_hint_share_of_an_ipv6_client_is_its_64() {
        let cfg = crate::Config::for_origin("http://127.0.0.1:1").expect("config");
        let edge = Edge::new(cfg).await.expect("edge");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("address");
        let mut held = Vec::new();
        for i in 1..=PER_ADDRESS {
            let a = ip(&format!("2001:db8:1:2::{i:x}"));
            held.push(hint_permit(&edge, &address_key(a), PER_ADDRESS).expect("within share"));
        }
        let refused = hint_permit(&edge, &address_key(ip("2001:db8:1:2:ffff::9")), PER_ADDRESS);
        println!(
            "keys {} and {}; another address of the /64 got a permit: {}",
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:2:ffff::9")),
            refused.is_some()
        );
        assert!(
            refused.is_none(),
            "the /64 is one client: its share is spent"
        );
        assert!(
            hint_permit(&edge, &address_key(ip("2001:db8:1:3::1")), PER_ADDRESS).is_some(),
            "another /64 is another client"
        );
        assert_eq!(address_key(ip("192.0.2.7")), "a|192.0.2.7");
        assert_ne!(
            address_key(ip("192.0.2.7")),
            address_key(ip("192.0.2.8")),
            "IPv4: each address is a client"
        );
    }

    /// Each representation's segments are ranked from its newest (0); inits are not ranked.
    #[test]
    fn segments_are_ranked_from_each_representations_newest() {
        let r = |u: &str, kind| Reference {
            url: url::Url::parse(&format!("http://o/{u}")).expect("url"),
            kind,
        };
        let refs = [
            r("a/init.mp4", ObjectKind::Init),
            r("a/1.m4s", ObjectKind::Segment),
            r("a/2.m4s", ObjectKind::Segment),
            r("b/init.mp4", ObjectKind::Init),
            r("b/7.m4s", ObjectKind::Segment),
        ];
        assert_eq!(newest_ranks(&refs), [None, Some(1), Some(0), None, Some(0)]);
    }

    #[test]
    fn an_mpd_is_dynamic_by_its_root_elements_type_attribute() {
        let pad = |n: usize| "x".repeat(n);
        assert!(mpd_is_dynamic(
            b"<?xml version=\"1.0\"?><MPD type=\"dynamic\" a=\"b\">"
        ));
        assert!(mpd_is_dynamic(
            b"<mpd:MPD xmlns:mpd=\"u\"\n  type = 'dynamic'>"
        ));
        assert!(!mpd_is_dynamic(b"<MPD type=\"static\">"));
        assert!(!mpd_is_dynamic(
            b"<MPD profiletype=\"dynamic\" type=\"static\">"
        ));
        assert!(!mpd_is_dynamic(b"<MPD type=\"dynamicx\">"));
        assert!(!mpd_is_dynamic(b"<MPD>type=\"dynamic\"</MPD>"));
        assert!(!mpd_is_dynamic(b"<MPDX type=\"dynamic\">"));
        // A multi-byte character across byte 4096 no longer hides it.
        let mpd = format!(
            "<MPD type=\"dynamic\"><Title>{}\u{e9}</Title></MPD>",
            pad(4068)
        );
        assert_eq!(mpd.find('\u{e9}'), Some(4095));
        assert!(mpd_is_dynamic(mpd.as_bytes()));
    }
}
