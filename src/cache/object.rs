//! A cached response: head, body bytes and the freshness decided when it was stored, plus its
//! encoding as the opaque `head` blob the SSD store keeps next to the body.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::cache::policy::{ContentClass, Freshness};
use crate::cache::vary::VarySpec;

/// `h` with every value in an allocation of its own. The values hyper parses are slices of the
/// buffer it read the connection into (8 KiB, growing to hundreds of KiB after large bodies),
/// so a stored head kept all of that buffer alive while the RAM tier weighed the values'
/// lengths (`CachedObject::weight`): tiny objects stored after a large transfer on the same
/// origin connection held ~600 KiB each, and `ram_size` bounded nothing. Heads going into the
/// tiers are copied once, here.
pub fn owned(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        out.append(name.clone(), owned_value(value));
    }
    out
}

/// `v` in an allocation of its own (see `owned`), marked sensitive as it was.
pub fn owned_value(v: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(v.as_bytes()) {
        Ok(mut copy) => {
            copy.set_sensitive(v.is_sensitive());
            copy
        }
        Err(_) => v.clone(),
    }
}

/// One stored response. Immutable: a revalidation builds a new object sharing the body bytes.
#[derive(Debug, Clone)]
pub struct CachedObject {
    pub status: StatusCode,
    /// End-to-end headers as received (hop-by-hop and `Age` removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub class: ContentClass,
    pub freshness: Freshness,
    /// Wall-clock time the response was received (RFC 9111 `response_time`).
    pub stored_at: SystemTime,
    pub vary: VarySpec,
    /// Purge tags from `Surrogate-Key` / `Cache-Tag`.
    pub tags: Vec<String>,
    /// Pushed (ingested) objects are pinned in the store.
    pub pinned: bool,
    /// Set once the SSD store accepted (or for good refused) this object, so later RAM hits
    /// stop offering it. Shared by refreshed copies of the same body.
    pub disk: Arc<AtomicBool>,
    /// The store's mark when the fill that fetched these bytes began (`FillGuard::store_mark`),
    /// for the offers RAM hits make (`Edge::lookup`): a push of the key written after it
    /// outlives this copy, an older one does not. 0 when unknown: every push outlives it.
    /// A push into RAM on an edge without a store carries the mark it was made at
    /// (`Edge::insert_push`), which fills that began by then do not reach.
    pub store_mark: u64,
}

/// Fields a `304` does not update on a stored response (`CachedObject::merged_headers`): the
/// body's framing, coding and range, `Vary`, and digests of the body (`Content-MD5`, RFC 9530
/// `Content-Digest` and `Repr-Digest`, RFC 3230 `Digest`). A 304 from an origin whose
/// middleware digests every message carried the digest of its own empty content, and the
/// stored body then went out with a digest that did not match it (cache-tests.fyi
/// `304-etag-update-response-Content-MD5`).
const BODY_FIELDS: [&str; 8] = [
    "content-length",
    "content-encoding",
    "content-range",
    "vary",
    "content-md5",
    "content-digest",
    "repr-digest",
    "digest",
];

impl CachedObject {
    /// Current age (RFC 9111 §4.2.3): the age it arrived with plus the time resident here.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.freshness
            .initial_age
            .saturating_add(now.duration_since(self.stored_at).unwrap_or_default())
    }

    /// Remaining freshness in seconds; negative once stale.
    pub fn ttl_left(&self, now: SystemTime) -> i64 {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        // In the whole seconds the `Age` header shows, so that `ttl` + `Age` is the lifetime.
        let left = secs(self.freshness.ttl).saturating_sub(secs(self.age(now)));
        match self.staleness(now) {
            None => left,
            // Stale is negative (RFC 9211 §2.2) from the first moment: 2.3 s into a 2 s
            // lifetime the seconds say 0, which reads as still fresh.
            Some(_) => left.min(-1),
        }
    }

    /// How long past its freshness lifetime the object is; `None` while fresh.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        let age = self.age(now);
        (age >= self.freshness.ttl).then(|| age - self.freshness.ttl)
    }

    /// When the object stops being servable at all (stale windows included).
    pub fn expires_at(&self) -> SystemTime {
        let f = &self.freshness;
        let window = f.stale_if_error.max(f.stale_while_revalidate);
        let servable = f.ttl.saturating_add(window);
        match servable.checked_sub(f.initial_age) {
            Some(left) => add_saturating(self.stored_at, left),
            None => self.stored_at,
        }
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    pub fn has_validators(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }

    /// Bytes this object costs in the RAM tier (body plus a head estimate).
    pub fn weight(&self) -> u64 {
        let head: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + head + 256) as u64
    }

    /// Whether a `304 Not Modified` answer to a request conditional on this object's validators
    /// selects it for update (RFC 9111 §4.3.4): a validator the 304 carries must be this
    /// object's own. A 304 naming another `ETag` (or `Last-Modified`) validates some other
    /// representation, and merged here it would relabel this body as that one.
    pub fn revalidated_by(&self, not_modified: &HeaderMap) -> bool {
        if let Some(tag) = not_modified.get(header::ETAG) {
            // Weakly compared: an origin that weakens its tags on a 304 still names this one.
            let opaque = |t: &HeaderValue| {
                let b = t.as_bytes().trim_ascii();
                b.strip_prefix(b"W/").unwrap_or(b).to_vec()
            };
            return self.etag().is_some_and(|own| opaque(own) == opaque(tag));
        }
        match (
            not_modified.get(header::LAST_MODIFIED),
            self.last_modified(),
        ) {
            (Some(new), Some(old)) => new == old,
            _ => true,
        }
    }

    /// The stored headers updated by a `304 Not Modified` (RFC 9111 §4.3.4) (`owned`: none
    /// of the 304's values holds its connection's read buffer): each header the
    /// 304 carries replaces the stored one, except the fields the stored body depends on
    /// (§3.2): its length, its content coding, its range and its digests, which a 304 cannot
    /// change since it sends no body, and `Vary`, which chose the key the body is stored under (a 304 that
    /// names other headers would leave the copy under a key its own `Vary` does not make).
    /// The next full answer brings new ones with a new body.
    pub fn merged_headers(&self, not_modified: &HeaderMap) -> HeaderMap {
        let mut headers = self.headers.clone();
        for name in not_modified.keys() {
            if is_hop_by_hop(name) || BODY_FIELDS.contains(&name.as_str()) {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), owned_value(v));
            }
        }
        headers
    }

    /// A copy with revalidated headers (see `merged_headers`), the same body, and freshness
    /// restarting from now.
    pub fn refreshed(&self, headers: HeaderMap, freshness: Freshness) -> CachedObject {
        CachedObject {
            headers,
            freshness,
            stored_at: SystemTime::now(),
            ..self.clone()
        }
    }

    /// An object pushed by an operator (ingest): immutable until purged. Its headers are
    /// `owned`.
    pub fn for_push(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        class: ContentClass,
        ttl: Duration,
    ) -> CachedObject {
        let tags = tags_of(&headers);
        CachedObject {
            status,
            headers: owned(&headers),
            body,
            class,
            freshness: Freshness {
                ttl,
                initial_age: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            stored_at: SystemTime::now(),
            vary: VarySpec::default(),
            tags,
            pinned: true,
            disk: Arc::default(),
            store_mark: 0,
        }
    }

    /// Encodes everything but the body and tags (the store keeps tags itself) into the opaque
    /// head blob the SSD store persists.
    pub fn encode_head(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(256);
        b.put_slice(HEAD_MAGIC);
        b.put_u16(self.status.as_u16());
        b.put_u8(match self.class {
            ContentClass::Manifest => 0,
            ContentClass::Segment => 1,
            ContentClass::Other => 2,
            ContentClass::Key => 3,
        });
        b.put_u8(self.pinned as u8);
        let f = &self.freshness;
        for d in [
            f.ttl,
            f.initial_age,
            f.stale_while_revalidate,
            f.stale_if_error,
        ] {
            b.put_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
        b.put_u64(unix_ms(self.stored_at));
        put_str(&mut b, &self.vary.to_header_list());
        b.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            put_str(&mut b, name.as_str());
            b.put_u32(value.len() as u32);
            b.put_slice(value.as_bytes());
        }
        b.freeze()
    }

    /// Rebuilds an object from a stored head blob and body. `None` if the blob is not ours or is
    /// damaged (the store verifies checksums; this guards against format drift).
    pub fn decode(head: &[u8], body: Bytes, tags: Vec<String>) -> Option<CachedObject> {
        let mut b = head;
        if b.len() < HEAD_MAGIC.len() || &b[..HEAD_MAGIC.len()] != HEAD_MAGIC {
            return None;
        }
        b.advance(HEAD_MAGIC.len());
        if b.remaining() < 2 + 2 + 8 * 5 {
            return None;
        }
        let status = StatusCode::from_u16(b.get_u16()).ok()?;
        let class = match b.get_u8() {
            0 => ContentClass::Manifest,
            1 => ContentClass::Segment,
            3 => ContentClass::Key,
            _ => ContentClass::Other,
        };
        let pinned = b.get_u8() != 0;
        let mut ms = || Duration::from_millis(b.get_u64());
        let freshness = Freshness {
            ttl: ms(),
            initial_age: ms(),
            stale_while_revalidate: ms(),
            stale_if_error: ms(),
        };
        let stored_at = UNIX_EPOCH.checked_add(Duration::from_millis(b.get_u64()))?;
        let vary_list = get_str(&mut b)?;
        let vary = VarySpec(
            vary_list
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
                .collect(),
        );
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16();
        let mut headers = HeaderMap::with_capacity(n as usize);
        for _ in 0..n {
            let name = HeaderName::from_bytes(get_str(&mut b)?.as_bytes()).ok()?;
            if b.remaining() < 4 {
                return None;
            }
            let len = b.get_u32() as usize;
            if b.remaining() < len {
                return None;
            }
            let value = HeaderValue::from_bytes(&b[..len]).ok()?;
            b.advance(len);
            headers.append(name, value);
        }
        Some(CachedObject {
            status,
            headers,
            body,
            class,
            freshness,
            stored_at,
            vary,
            tags,
            pinned,
            disk: Arc::new(AtomicBool::new(true)),
            store_mark: 0,
        })
    }
}

const HEAD_MAGIC: &[u8] = b"VEH1";

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_u16() as usize;
    if b.remaining() < len {
        return None;
    }
    let s = std::str::from_utf8(&b[..len]).ok()?.to_string();
    b.advance(len);
    Some(s)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A time far enough ahead to mean "never" (year 2514) yet small enough for every encoding of a
/// time in the store.
pub const FAR_FUTURE_SECS: u64 = 1 << 34;

/// `t + d`, or the far future when that overflows (`SystemTime + Duration` panics instead).
pub fn add_saturating(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(FAR_FUTURE_SECS))
}

/// Purge tags a response carries: `Surrogate-Key` (space-separated, Fastly) and `Cache-Tag`
/// (comma-separated, Cloudflare/Akamai).
pub fn tags_of(h: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for v in h.get_all("surrogate-key") {
        if let Ok(v) = v.to_str() {
            tags.extend(v.split_whitespace().map(str::to_string));
        }
    }
    for v in h.get_all("cache-tag") {
        if let Ok(v) = v.to_str() {
            tags.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            );
        }
    }
    tags.sort();
    tags.dedup();
    tags
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never stored or forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    let hop: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for n in hop {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        let mut obj = CachedObject::for_push(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"payload"),
            ContentClass::Segment,
            Duration::from_secs(86400),
        );
        obj.vary = VarySpec(vec![header::ACCEPT_ENCODING]);
        let head = obj.encode_head();
        let back = CachedObject::decode(&head, obj.body.clone(), vec![]).expect("decodes");
        assert_eq!(back.status, obj.status);
        assert_eq!(back.headers, obj.headers);
        assert_eq!(back.freshness, obj.freshness);
        assert_eq!(back.vary, obj.vary);
        assert_eq!(unix_ms(back.stored_at), unix_ms(obj.stored_at));
        assert!(back.pinned);
        for cut in 0..head.len() {
            assert!(CachedObject::decode(&head[..cut], Bytes::new(), vec![]).is_none());
        }
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    fn object(f: Freshness, stored_at: SystemTime) -> CachedObject {
        let mut obj = CachedObject::for_push(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            ContentClass::Segment,
            Duration::ZERO,
        );
        obj.freshness = f;
        obj.stored_at = stored_at;
        obj
    }

    /// Issue: `max-age` near 2^63 with a store configured overflowed `stored_at + ttl`.
    #[test]
    fn huge_freshness_never_overflows_a_time() {
        let now = SystemTime::now();
        let huge = Freshness {
            ttl: Duration::MAX,
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::MAX,
            stale_if_error: Duration::MAX,
        };
        let obj = object(huge, now);
        assert_eq!(
            obj.expires_at(),
            UNIX_EPOCH + Duration::from_secs(FAR_FUTURE_SECS)
        );
        assert_eq!(obj.ttl_left(now), i64::MAX);
        assert_eq!(obj.staleness(now), None);
        let old = Freshness {
            ttl: Duration::from_secs(10),
            initial_age: Duration::MAX,
            ..huge
        };
        let obj = object(old, UNIX_EPOCH);
        assert_eq!(obj.age(now), Duration::MAX);
        assert!(obj.ttl_left(now) < 0);
        assert!(obj.staleness(now).is_some());
        // Arrived older than it can ever be served: unservable from the moment it was stored.
        assert_eq!(obj.expires_at(), UNIX_EPOCH);
        // Round trip of the capped values through the store's head blob.
        let obj = object(huge, now);
        let back = CachedObject::decode(&obj.encode_head(), Bytes::new(), vec![]).expect("decodes");
        assert!(back.expires_at() >= now);
        assert_eq!(
            add_saturating(UNIX_EPOCH, Duration::from_secs(5)),
            UNIX_EPOCH + Duration::from_secs(5)
        );
    }
}
