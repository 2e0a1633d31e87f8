//! Signed URLs in the request path: on a route with `[route.token]`, every request is checked
//! (`admit`) before the cache is consulted, so hits, misses, ranges and HEADs are refused alike
//! (403 naming the reason class, counted in `vedge_token_refused_total`). An admitted request
//! continues without its token (query parameter, cookie or header, unless `forward`), which
//! keeps the token out of the origin request and of the credentials check. A viewer who came
//! with a query token gets manifests with that token on every same-host URI (`Gate::finish`,
//! `auth::propagate`), in place of any value a stored manifest holds: the cached manifest is
//! token-free unless the origin wrote tokens in, which with `forward` may be the token of the
//! viewer whose request filled it, so on such a route every viewer's manifest is rewritten
//! (without a query token: those values taken out). On such a route a manifest is in fact
//! fetched for each viewer and never stored (`own_manifest`); the rewrite stays for copies
//! stored before and for other routes.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::auth::edgeauth::{self, percent_decode};
use crate::auth::propagate::{self, Carry, Kind};
use crate::auth::source::{self, From};
use crate::auth::Refusal;
use crate::cache::key::normalize_path;
use crate::config::{Route, TokenConfig};
use crate::http::body::Body;
use crate::metrics::Metrics;
use crate::proxy::coding::{self, Undecodable};
use crate::proxy::edge::Edge;
use crate::proxy::error::EdgeError;

/// The largest manifest a token route adds the token to: the body as the origin sent it
/// (coded or not) and, coded, the text it decodes to. A manifest is kilobytes (a 10-hour VOD
/// playlist of 2 s segments is about 1 MiB); this bounds what one response holds in memory
/// while it is rewritten. Past it the manifest is a 502 naming why (`rewrite`), on a fill and
/// on a hit alike, never the origin's bytes without the token. The rewritten manifest is
/// bounded too (`propagate::MAX_OUTPUT`, 16 MiB), with the same answer past it.
pub const MAX_REWRITE: usize = 4 << 20;

/// Decodes and rewrites that read more than this many bytes run on the blocking pool
/// (`offload`), not on the worker serving the request: a rewrite costs time in the manifest's
/// size, per viewer (each viewer's token differs, so the output cannot be shared), and on a
/// worker a few viewers fetching a multi-MiB playlist would stall every other connection of
/// that worker for milliseconds each. Below it the hand-off would cost more than the work (an
/// 1,800-segment playlist, ~60 KiB, rewrites in ~0.2 ms).
pub const INLINE_MAX: usize = 64 << 10;

/// Offloaded decodes, rewrites and gzip codings (`compress`) running at once
/// (`ManifestWork::blocking`); more wait for a permit without holding a worker. Tokio's
/// blocking pool grows to 512 threads: unbounded, a crowd of viewers fetching a large
/// manifest would have hundreds of threads each holding a rewritten copy at once.
const MAX_OFFLOADED: usize = 4;

/// The edge's state for manifests on token routes: coded bodies decoded lately
/// (`coding::Decoded`) and the permits for work done off the workers (`offload`).
pub struct ManifestWork {
    pub decoded: coding::Decoded,
    blocking: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Default for ManifestWork {
    fn default() -> ManifestWork {
        ManifestWork {
            decoded: coding::Decoded::default(),
            blocking: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_OFFLOADED)),
        }
    }
}

/// The outcome of an admitted request.
#[derive(Default)]
pub struct Gate {
    /// The request without its token, when anything had to be taken out.
    parts: Option<Parts>,
    /// The token to give the URIs of a manifest response: a query token, or none in place of
    /// stored ones on a `forward` route (`admit`).
    carry: Option<Carry>,
    head: bool,
    path: String,
    /// The path names a manifest and the token is carried: `admit` already took the viewer's
    /// Range and validators out.
    whole: bool,
}

impl Gate {
    /// Whether a manifest answer is rewritten for this viewer (carries its token).
    pub fn rewrites(&self) -> bool {
        self.carry.is_some()
    }

    /// The request the rest of the path should see.
    pub fn parts<'a>(&'a self, original: &'a Parts) -> &'a Parts {
        self.parts.as_ref().unwrap_or(original)
    }

    /// The response, with the token added to a manifest's URIs when the viewer brought one in
    /// the query.
    /// A manifest whose coding cannot be undone, or too large to rewrite, is an error
    /// (`rewrite`).
    pub async fn finish(
        &self,
        edge: &Edge,
        resp: Response<Body>,
    ) -> Result<Response<Body>, EdgeError> {
        match &self.carry {
            Some(carry) if resp.status() == StatusCode::OK => {
                let ct = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                match Kind::of(&self.path, ct) {
                    Some(kind) => {
                        Box::pin(rewrite(edge, resp, kind, carry, self.head, &self.path)).await
                    }
                    None => Ok(resp),
                }
            }
            _ => Ok(resp),
        }
    }
}

impl Gate {
    /// A manifest known only by its type (its path names none, so `admit` kept the viewer's
    /// Range and validators) that was answered from the stored bytes by them (a 304, 206 or
    /// 416): the request to answer once more without them, so that this viewer too gets the
    /// whole playlist carrying its token. `None` for everything else.
    pub fn answer_whole(&self, parts: &Parts, resp: &Response<Body>) -> Option<Parts> {
        let answered_by_viewer = matches!(
            resp.status(),
            StatusCode::NOT_MODIFIED
                | StatusCode::PARTIAL_CONTENT
                | StatusCode::RANGE_NOT_SATISFIABLE
        );
        if self.carry.is_none()
            || self.whole
            || !answered_by_viewer
            || !(parts.method == Method::GET || parts.method == Method::HEAD)
        {
            return None;
        }
        let ct = resp.headers().get(header::CONTENT_TYPE).or_else(|| {
            resp.extensions()
                .get::<crate::http::response::NotModifiedType>()
                .map(|t| &t.0)
        })?;
        Kind::from_content_type(ct.to_str().ok()?)?;
        let mut r = Request::new(());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        let mut headers = parts.headers.clone();
        for h in WHOLE {
            headers.remove(h);
        }
        *r.headers_mut() = headers;
        Some(r.into_parts().0)
    }
}

/// The request fields a manifest rewritten per viewer is answered without: its offsets and
/// validators describe the stored token-free bytes, not the viewer's.
const WHOLE: [header::HeaderName; 4] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// Why a manifest on a `forward` route passes (`own_manifest`): `Cache-Status` detail and the
/// hit-for-pass its fill teaches.
pub const TOKEN_FORWARDED: &str = "token-forwarded";

/// Whether an answer at `path` (of `content_type`, when known) is fetched for its viewer alone:
/// a manifest on a route that forwards tokens (`[route.token] forward`). The origin is sent
/// the viewer's token, and a packager that copies it onto the URIs it lists (absolute ones on
/// any host, in any spelling, in comments or attributes the rewrite never reads) makes the
/// manifest that viewer's: shared, it handed one viewer's token to every other, which no
/// rewrite of the stored text can rule out (the edge cannot tell whose a value is, nor find
/// every place a packager may write it). So a manifest there is never stored or shared: the
/// request passes (`request::cacheable`, by path) and a fill answered with one (by
/// `Content-Type`) is a pass its readers repeat for themselves, each with its own token
/// (`proxy::fill`). Segments stay shared: they hold no URIs.
/// The path is read as routes read it (`target::routing_path`: segment parameters left out),
/// so `/a/index.m3u8;v=2` is the manifest servlet-style origins serve for it: judged by its
/// last segment as written (`m3u8;v=2`), it fell back to the answer's `Content-Type`, and one
/// served as `application/octet-stream` was stored and shared with the first viewer's token.
pub fn own_manifest(route: &Route, path: &str, content_type: Option<&str>) -> bool {
    route.token.as_ref().is_some_and(|t| t.forward)
        && Kind::of(&crate::proxy::target::routing_path(path), content_type).is_some()
}

/// Checks the request's token on a token route. `Ok` with what the rest of the path needs;
/// `Err` with the reason (counted already), for `refused` to answer.
pub fn admit(
    edge: &Edge,
    route: &Route,
    parts: &Parts,
    peer: Option<SocketAddr>,
) -> Result<Gate, Refusal> {
    let Some(cfg) = &route.token else {
        return Ok(Gate::default());
    };
    let refuse = |why: Refusal| {
        edge.metrics.refused(why);
        tracing::debug!(
            reason = why.as_str(),
            path = parts.uri.path(),
            "token refused"
        );
        Err(why)
    };
    let query = parts.uri.query();
    let Some(found) = source::find(cfg, query, &parts.headers) else {
        return refuse(Refusal::Missing);
    };
    let raw_path = parts.uri.path();
    // ACLs match the path the origin is asked for; a path that does not normalise matches none.
    let Ok(path) = normalize_path(raw_path) else {
        return refuse(Refusal::Acl);
    };
    let now = edge
        .clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let routed = super::target::routing_path(&path);
    let req = edgeauth::Request {
        path: &path,
        raw_path,
        routed: &routed,
        peer: peer.map(|p| p.ip()),
        now,
    };
    if let Err(why) = verify(&found.raw, cfg, &req) {
        return refuse(why);
    }
    let head = parts.method == Method::HEAD;
    // The host the viewer asked, as the edge routes and keys the request
    // (`request::viewer_host`): the target's authority (absolute-form, HTTP/2 `:authority`),
    // which RFC 9112 §3.2.2 makes win over `Host`, else `Host`.
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    // A query token goes on the manifest's same-host URIs, in place of any value of the
    // parameter the stored manifest holds. With `forward` a shared fill sends the origin one
    // viewer's token, which a packager may copy onto the URIs it lists, and the stored copy
    // then names that viewer's token for everyone: so a viewer whose token came another way
    // gets those values taken out (`Carry::without`), never another viewer's.
    let carry = match found.from {
        From::Query => Some(
            Carry::new(&cfg.param, &found.raw, host)
                .steered_too(cfg.steering_same_domain)
                .forwarded(cfg.forward),
        ),
        From::Cookie | From::Header if cfg.forward => {
            Some(Carry::without(&cfg.param, host).steered_too(cfg.steering_same_domain))
        }
        From::Cookie | From::Header => None,
    };
    // The normalised path (escapes decoded): `/a%2Em3u8` is the manifest `/a.m3u8`.
    let whole = carry.is_some() && Kind::of(&path, None).is_some();
    // Only what may be a manifest (its path says so, or says nothing and its type may) asks
    // for identity: a segment, a key or a caption keeps the encodings its viewer accepts.
    let may_rewrite = carry.is_some()
        && !matches!(
            crate::cache::policy::ContentClass::from_path(&path),
            Some(
                crate::cache::policy::ContentClass::Segment
                    | crate::cache::policy::ContentClass::Key
            )
        );
    match without_token(parts, cfg, &found, whole, may_rewrite) {
        Ok(stripped) => Ok(Gate {
            parts: stripped,
            carry,
            head,
            path,
            whole,
        }),
        Err(()) => refuse(Refusal::Malformed),
    }
}

/// The token as sent, then (if it holds escapes and did not verify) percent-decoded once: a
/// client may have encoded the whole value, or characters such as `#` a raw token can hold.
fn verify(raw: &str, cfg: &TokenConfig, req: &edgeauth::Request<'_>) -> Result<(), Refusal> {
    let first = edgeauth::verify(raw, cfg, req);
    match first {
        Err(Refusal::Hmac | Refusal::Malformed) if raw.contains('%') => {
            match edgeauth::verify(&percent_decode(raw), cfg, req) {
                Err(Refusal::Hmac | Refusal::Malformed) => first,
                second => second,
            }
        }
        other => other,
    }
}

/// The request without the token (unless `forward`) and, for a manifest whose URIs will be
/// rewritten, without `Range`/`If-Range` (the rewritten body is sent whole) and without
/// `If-None-Match`/`If-Modified-Since`: the stored validators describe the token-free bytes,
/// not this viewer's, so a 304 could confirm a copy that holds another (an expired) token.
/// A viewer whose manifests get its token asks for `Accept-Encoding: identity` for whatever may
/// be a manifest (`carried`): the rewrite reads text, and a coded manifest (a browser's `br`)
/// went out without the token. Its
/// fill, the `Vary` variant it is looked up under and the copy stored all follow from the
/// request as changed here, so they agree. `None` when nothing changes.
fn without_token(
    parts: &Parts,
    cfg: &TokenConfig,
    found: &source::Found,
    whole: bool,
    carried: bool,
) -> Result<Option<Parts>, ()> {
    let mut headers = parts.headers.clone();
    let mut uri = parts.uri.clone();
    let mut changed = false;
    // Every value of the token's name goes, in every source; with `forward` the one that
    // verified is put back, once, where it came from. The origin must be sent the token the
    // edge checked and no other: beside it, another spelling of the name (`h%64nts=expired`,
    // which the key drops as `hdnts`), a second pair, cookie or header, or a value in a source
    // tried later would be the one an origin reads first (or last), and its refusal of that
    // value was the answer of a fill every viewer of the object shares.
    let back = |from: From| (cfg.forward && found.from == from).then_some(found.raw.as_str());
    if let Some(q) = parts.uri.query() {
        let mut kept = source::strip_query(q, &cfg.param);
        if let Some(raw) = back(From::Query) {
            let pair = format!("{}={raw}", cfg.param);
            kept = Some(kept.map_or_else(|| pair.clone(), |k| format!("{k}&{pair}")));
        }
        if kept.as_deref() != Some(q) {
            let pq = match kept {
                Some(k) => format!("{}?{k}", parts.uri.path()),
                None => parts.uri.path().to_string(),
            };
            let mut b = http::uri::Builder::new();
            if let Some(s) = parts.uri.scheme() {
                b = b.scheme(s.clone());
            }
            if let Some(a) = parts.uri.authority() {
                b = b.authority(a.clone());
            }
            uri = b.path_and_query(pq).build().map_err(|_| ())?;
            changed = true;
        }
    }
    if headers.contains_key(header::COOKIE) {
        source::strip_cookie(&mut headers, &cfg.param);
        changed = true;
    }
    if let Some(raw) = back(From::Cookie) {
        // One field, as RFC 9113 §8.2.3 has cookie fields joined for HTTP/1.
        let mut joined: Vec<&str> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let pair = format!("{}={raw}", cfg.param);
        joined.push(&pair);
        let joined = HeaderValue::try_from(joined.join("; ")).map_err(|_| ())?;
        headers.insert(header::COOKIE, joined);
    }
    for s in &cfg.sources {
        if let crate::config::TokenSource::Header(name) = s {
            changed |= headers.remove(name).is_some();
        }
    }
    if let (Some(raw), Some(name)) = (back(From::Header), &found.header) {
        headers.insert(name.clone(), HeaderValue::try_from(raw).map_err(|_| ())?);
    }
    if whole {
        for h in WHOLE {
            changed |= headers.remove(h).is_some();
        }
    }
    if carried {
        let identity = HeaderValue::from_static("identity");
        let asked = headers.get_all(header::ACCEPT_ENCODING).iter().count();
        if asked != 1 || headers.get(header::ACCEPT_ENCODING) != Some(&identity) {
            headers.insert(header::ACCEPT_ENCODING, identity);
            changed = true;
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = uri;
    *r.version_mut() = parts.version;
    *r.headers_mut() = headers;
    Ok(Some(r.into_parts().0))
}

/// 403 naming the reason class; never stored by anyone.
pub fn refused(why: Refusal) -> Response<Body> {
    crate::http::response::plain(
        StatusCode::FORBIDDEN,
        format!("403 Forbidden: token {}\n", why.as_str()),
    )
}

/// Reads the whole manifest (a hit's `Bytes`, or a fill until it completes), adds the token to
/// its URIs, and fixes the headers: `private` (`proxy::per_viewer`), a new `Content-Length`, no
/// `ETag` or `Last-Modified` (the bytes are no longer the origin's, and a validator would only
/// invite conditionals `without_token` ignores), no `Accept-Ranges`. A coded manifest (an origin
/// that codes whatever it is asked, or a copy stored before) is decoded first (gzip, deflate,
/// br, zstd: `proxy::coding`, once per coded body: `coding::Decoded`) and sent `identity`. One
/// that cannot be given the token (another coding, corrupt, larger than `MAX_REWRITE` as sent
/// or decoded, or larger than `propagate::MAX_OUTPUT` rewritten) is an error (502): sent as it
/// is, it would reach the player without the token, and every child request would be refused.
/// Large decodes and rewrites run off the worker (`offload`).
async fn rewrite(
    edge: &Edge,
    resp: Response<Body>,
    kind: Kind,
    carry: &Carry,
    head: bool,
    path: &str,
) -> Result<Response<Body>, EdgeError> {
    let (mut parts, body) = resp.into_parts();
    let refuse = |why: Undecodable, headers: &http::HeaderMap| {
        tracing::warn!(
            path,
            reason = why.as_str(),
            content_encoding = ?headers.get_all(header::CONTENT_ENCODING).iter().collect::<Vec<_>>(),
            "manifest on a token route cannot carry the viewer's token: 502"
        );
        Err(EdgeError::Manifest(why))
    };
    let codings = match coding::codings(&parts.headers) {
        Ok(c) => c,
        Err(why) => return refuse(why, &parts.headers),
    };
    let fix = |h: &mut http::HeaderMap, len: Option<usize>| {
        // The bytes carry this viewer's token: no shared cache downstream may keep them.
        crate::proxy::per_viewer::make_private(h);
        h.remove(header::ETAG);
        h.remove(header::LAST_MODIFIED);
        h.remove(header::ACCEPT_RANGES);
        // Whatever the origin coded, this viewer is sent identity.
        h.remove(header::CONTENT_ENCODING);
        match len {
            Some(n) => {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None => {
                h.remove(header::CONTENT_LENGTH);
            }
        }
    };
    if head {
        // No body to measure: the rewritten length is unknown; a GET's would be `identity`
        // (or a 502 if the body does not decode, which a HEAD cannot know).
        fix(&mut parts.headers, None);
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = match body {
        Body::Full(b) => b.unwrap_or_default(),
        Body::Stream { stream, len } => {
            let mut data = stream;
            let mut buf = BytesMut::new();
            loop {
                match data.next().await {
                    None => break,
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        // Stop reading here: past the bound the answer is a 502 (below).
                        if buf.len() > MAX_REWRITE {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        // The fill failed: the viewer's response fails the same way.
                        let got = buf.freeze();
                        let body = Body::stream(futures_util::stream::iter([Ok(got), Err(e)]), len);
                        return Ok(Response::from_parts(parts, body));
                    }
                }
            }
            buf.freeze()
        }
    };
    // A fill and a hit of the same manifest get the same answer: checked on the bytes as sent,
    // before anything is decoded. Before, an identity manifest past the bound went out without
    // the token, and its player was refused every segment with nothing to say why.
    if bytes.len() > MAX_REWRITE {
        return refuse(Undecodable::Oversized, &parts.headers);
    }
    let text = if codings.is_empty() {
        bytes
    } else {
        match decoded(edge, &codings, bytes).await? {
            Ok(text) => text,
            Err(why) => return refuse(why, &parts.headers),
        }
    };
    let (input, carried) = (text.clone(), carry.clone());
    let rewritten = offload(edge, text.len(), move || {
        propagate::rewrite(kind, &input, &carried)
    })
    .await?;
    match rewritten {
        Ok(Some(new)) => {
            fix(&mut parts.headers, Some(new.len()));
            Ok(Response::from_parts(parts, Body::full(Bytes::from(new))))
        }
        Err(propagate::Oversized) => refuse(Undecodable::Oversized, &parts.headers),
        // Nothing to add, and decoded: no longer the origin's bytes (its validators name the
        // coded ones), sent identity all the same.
        Ok(None) if !codings.is_empty() => {
            fix(&mut parts.headers, Some(text.len()));
            Ok(Response::from_parts(parts, Body::full(text)))
        }
        // Nothing to add: the manifest as the origin sent it. On a `forward` route it was
        // fetched with this viewer's token, which the packager may have written anywhere: as
        // the viewer's own as a rewritten one (a HEAD of it says `private` too).
        Ok(None) => {
            let len = text.len();
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if carry.is_forwarded() {
                crate::proxy::per_viewer::make_private(&mut parts.headers);
            }
            Ok(Response::from_parts(parts, Body::full(text)))
        }
    }
}

/// `body` under `codings` decoded, from `ManifestWork::decoded` when this coded body was
/// decoded lately (counted in `vedge_manifest_decodes_reused_total`), else decoded now
/// (`vedge_manifest_decodes_total`), off the worker when large, and kept for the next viewer.
/// Viewers collapsed on one fill may each decode it once, before the first is kept.
async fn decoded(
    edge: &Edge,
    codings: &[coding::Coding],
    body: Bytes,
) -> Result<Result<Bytes, Undecodable>, EdgeError> {
    let work = &edge.manifests;
    if let Some(known) = work.decoded.get(codings, &body) {
        Metrics::inc(&edge.metrics.manifests.decodes_reused);
        return Ok(known);
    }
    Metrics::inc(&edge.metrics.manifests.decodes);
    let (coded, layers) = (body.clone(), codings.to_vec());
    let out = offload(edge, body.len(), move || {
        coding::decode(&layers, &coded).map(Bytes::from)
    })
    .await?;
    work.decoded.insert(codings, body, out.clone());
    Ok(out)
}

/// `work`'s result, computed inline when it reads at most `INLINE_MAX` bytes (`size`), else
/// on tokio's blocking pool once one of `MAX_OFFLOADED` permits is free (counted in
/// `vedge_manifest_offloaded_total`). The permit is held until the work ends; a viewer that
/// leaves meanwhile drops only its wait for the result, and the permit is released when the
/// work returns. A panic in the work is the request's failure (500), as on the worker, where
/// it would have failed the connection's task.
pub(crate) async fn offload<T, F>(edge: &Edge, size: usize, work: F) -> Result<T, EdgeError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if size <= INLINE_MAX {
        return Ok(work());
    }
    let permit = edge
        .manifests
        .blocking
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| EdgeError::Origin(crate::origin::OriginError::Internal))?;
    Metrics::inc(&edge.metrics.manifests.offloaded);
    let done = tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    });
    done.await.map_err(|e| {
        tracing::error!(error = %e, "manifest work on the blocking pool failed");
        EdgeError::Origin(crate::origin::OriginError::Internal)
    })
}
