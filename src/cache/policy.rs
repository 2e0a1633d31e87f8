//! Cache policy: content classes, TTL rules and the RFC 9111 storability and freshness decision
//! for an origin response. Pure functions; no I/O.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, StatusCode};

use crate::cache::vary;

/// What kind of object a response is; each class has its own TTL rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentClass {
    /// HLS playlists and DASH MPDs: short-lived, change every segment when live.
    Manifest,
    /// Media and init segments: immutable once published.
    Segment,
    /// HLS AES-128 / SAMPLE-AES key files (`.key`): a few bytes that unlock a stream. A short
    /// TTL (keys rotate) and never written to the SSD store unless pushed; on token routes they
    /// are checked like everything else, since the check precedes the cache.
    Key,
    Other,
}

impl ContentClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentClass::Manifest => "manifest",
            ContentClass::Segment => "segment",
            ContentClass::Key => "key",
            ContentClass::Other => "other",
        }
    }

    /// Classifies by path extension, then by Content-Type (when the path says nothing).
    pub fn classify(path: &str, content_type: Option<&str>) -> ContentClass {
        if let Some(c) = Self::from_path(path) {
            return c;
        }
        let ct = content_type
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match ct.as_deref() {
            Some(
                "application/vnd.apple.mpegurl"
                | "application/x-mpegurl"
                | "audio/mpegurl"
                | "audio/x-mpegurl"
                | "application/dash+xml",
            ) => ContentClass::Manifest,
            Some(t)
                if t.starts_with("video/")
                    || t.starts_with("audio/")
                    || t == "text/vtt"
                    || t == "application/mp4" =>
            {
                ContentClass::Segment
            }
            _ => ContentClass::Other,
        }
    }

    /// Classifies by the path's extension alone (`None` when it says nothing).
    pub fn from_path(path: &str) -> Option<ContentClass> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let file = path.rsplit('/').next().unwrap_or(path);
        let ext = file.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "m3u8" | "mpd" => Some(ContentClass::Manifest),
            "ts" | "m4s" | "mp4" | "m4a" | "m4v" | "aac" | "cmfv" | "cmfa" | "vtt" | "webm"
            | "mp3" | "ac3" | "ec3" | "m4i" | "cmft" => Some(ContentClass::Segment),
            "key" => Some(ContentClass::Key),
            _ => None,
        }
    }
}

/// TTL rules of one class (optionally per route).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlRules {
    /// Used when the origin gives no explicit freshness.
    pub default: Option<Duration>,
    /// Lower clamp. Above zero, it also makes `no-store`/`private`/`no-cache` responses cacheable
    /// (CloudFront semantics: the operator forces caching).
    pub min: Option<Duration>,
    /// Upper clamp.
    pub max: Option<Duration>,
    /// How long a stale copy may be served when the origin fails (unless the origin says).
    pub stale_if_error: Option<Duration>,
}

/// TTL rules for every class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassTtl {
    pub manifest: TtlRules,
    pub segment: TtlRules,
    pub key: TtlRules,
    pub other: TtlRules,
}

/// Default TTL of key files: a live join burst (every viewer fetching the current key within
/// seconds) still costs one origin fetch a minute, while a rotated or revoked key stops being
/// served within a minute. Not stretched when the origin fails (no stale-if-error default).
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(60);

impl ClassTtl {
    /// The documented defaults: manifests 2 s, segments 1 day (immutable), other RFC 9111
    /// heuristics. Segments may be served stale for 1 h when the origin fails; manifests are
    /// bounded separately by `manifest_stale_factor`.
    pub fn defaults() -> ClassTtl {
        ClassTtl {
            manifest: TtlRules {
                default: Some(Duration::from_secs(2)),
                stale_if_error: Some(Duration::from_secs(86400)),
                ..TtlRules::default()
            },
            segment: TtlRules {
                default: Some(Duration::from_secs(86400)),
                stale_if_error: Some(Duration::from_secs(3600)),
                ..TtlRules::default()
            },
            key: TtlRules {
                default: Some(DEFAULT_KEY_TTL),
                ..TtlRules::default()
            },
            other: TtlRules::default(),
        }
    }

    pub fn get(&self, class: ContentClass) -> TtlRules {
        match class {
            ContentClass::Manifest => self.manifest,
            ContentClass::Segment => self.segment,
            ContentClass::Key => self.key,
            ContentClass::Other => self.other,
        }
    }
}

/// The largest delta-seconds we keep (RFC 9111 §1.2.2: a delta-seconds too large to hold is
/// 2147483648). Every freshness duration is capped here, so no sum of them, or of them and a
/// time, can overflow.
pub const MAX_DELTA_SECS: u64 = 1 << 31;

/// `MAX_DELTA_SECS` as a duration.
pub const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECS);

/// A delta-seconds (`1*DIGIT`): `None` unless every character is an ASCII digit; values above
/// `MAX_DELTA_SECS` (however many digits) become `MAX_DELTA_SECS`.
pub fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n = s.bytes().fold(0u64, |n, c| {
        n.saturating_mul(10).saturating_add(u64::from(c - b'0'))
    });
    Some(n.min(MAX_DELTA_SECS))
}

/// Parsed `Cache-Control` (or `Surrogate-Control`) directives we act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every value of `name` in `headers`. Unknown directives are ignored; a malformed
    /// delta-seconds (`1e9`, `-1`, `+5`) is treated as 0 (RFC 9111 §1.2.2: invalid means stale)
    /// and a huge one as `MAX_DELTA_SECS`.
    pub fn parse(headers: &HeaderMap, name: impl header::AsHeaderName) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            let Ok(v) = value.to_str() else { continue };
            cc.add(v);
        }
        cc
    }

    /// Parses one header value (a later directive overrides an earlier one).
    pub fn parse_value(v: &str) -> CacheControl {
        let mut cc = CacheControl::default();
        cc.add(v);
        cc
    }

    fn add(&mut self, v: &str) {
        let cc = self;
        for directive in v.split(',') {
            let (k, arg) = match directive.split_once('=') {
                Some((k, a)) => (k.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let secs = || arg.map(|a| delta_seconds(a).unwrap_or(0));
            match k.to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                // `no-cache="Set-Cookie"` (field-qualified) is treated as plain no-cache.
                "no-cache" => cc.no_cache = true,
                "private" => cc.private = true,
                "public" => cc.public = true,
                "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                "max-age" => cc.max_age = secs(),
                "s-maxage" => cc.s_maxage = secs(),
                "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                "stale-if-error" => cc.stale_if_error = secs(),
                _ => {}
            }
        }
    }
}

/// How long a stored object is fresh, and the windows in which it may be served stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness lifetime (RFC 9111 §4.2.1), after clamps.
    pub ttl: Duration,
    /// Age the response already had when received (`Age` + response delay).
    pub initial_age: Duration,
    /// After expiry: serve stale while one background revalidation runs.
    pub stale_while_revalidate: Duration,
    /// After expiry: serve stale when the origin fails.
    pub stale_if_error: Duration,
}

/// What to do with an origin response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store it and share it with every collapsed reader.
    Store(Freshness),
    /// Share it with the readers of this fill, but do not store it (5xx, uncacheable statuses).
    ShareOnly(&'static str),
    /// Not shareable at all: only the requesting viewer gets it; waiters fetch for themselves and
    /// the key is remembered as uncacheable for a while (hit-for-pass).
    Pass(&'static str),
}

/// Inputs of the decision besides the response itself.
pub struct DecisionInput<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub rules: TtlRules,
    pub class: ContentClass,
    pub negative_ttl: Duration,
    pub manifest_stale_factor: u32,
    pub max_object_size: u64,
    /// Time between sending the origin request and receiving its head.
    pub response_delay: Duration,
    pub now: SystemTime,
}

/// The storability and freshness decision for one origin response (RFC 9111 §3 and §4.2).
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    let h = input.headers;
    let rules = input.rules;
    let forced = rules.min.is_some_and(|m| !m.is_zero());
    if h.contains_key(header::SET_COOKIE) {
        return Decision::Pass("set-cookie");
    }
    match vary::parse(h) {
        Ok(_) => {}
        Err(reason) => return Decision::Pass(reason),
    }
    let cc = CacheControl::parse(h, header::CACHE_CONTROL);
    let sc = CacheControl::parse(h, "surrogate-control");
    if !forced {
        if cc.private {
            return Decision::Pass("private");
        }
        if cc.no_store || sc.no_store {
            return Decision::Pass("no-store");
        }
    }
    if let Some(len) = content_length(h) {
        if len > input.max_object_size {
            return Decision::Pass("too-large");
        }
    }

    let status = input.status.as_u16();
    let negative = matches!(status, 404 | 410);
    let cacheable_status = matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    );
    if status >= 500 {
        return Decision::ShareOnly("origin-error");
    }
    if !cacheable_status {
        return Decision::ShareOnly("status");
    }

    // Explicit freshness, most specific first: Surrogate-Control is addressed to us (the CDN).
    let explicit = sc
        .max_age
        .or(cc.s_maxage)
        .or(cc.max_age)
        .map(Duration::from_secs)
        .or_else(|| expires_lifetime(h, input.now));
    let mut ttl = match explicit {
        Some(t) => t,
        None if negative => input.negative_ttl,
        None => match rules.default {
            Some(d) => d,
            None => match heuristic_lifetime(h, input.now) {
                Some(t) => t,
                None if forced => Duration::ZERO,
                None => return Decision::ShareOnly("no-freshness"),
            },
        },
    };
    if cc.no_cache && !forced {
        ttl = Duration::ZERO;
    }
    // Clamps. A 404 is never stretched to a segment's minimum of a day.
    if !negative {
        if let Some(min) = rules.min {
            ttl = ttl.max(min);
        }
    }
    if let Some(max) = rules.max {
        ttl = ttl.min(max);
    }
    // Configured clamps and defaults are durations of any size; cap them like the origin's.
    ttl = ttl.min(MAX_DELTA);
    if ttl.is_zero() && !has_validators(h) && !forced {
        return Decision::ShareOnly("zero-ttl");
    }

    let must_revalidate = (cc.must_revalidate || cc.no_cache) && !forced;
    let secs = |v: Option<u64>| v.map(Duration::from_secs);
    let mut swr = secs(sc.stale_while_revalidate.or(cc.stale_while_revalidate)).unwrap_or_default();
    let mut sie = secs(sc.stale_if_error.or(cc.stale_if_error))
        .or(rules.stale_if_error)
        .unwrap_or_default();
    swr = swr.min(MAX_DELTA);
    sie = sie.min(MAX_DELTA);
    if must_revalidate || negative {
        swr = Duration::ZERO;
        sie = Duration::ZERO;
    }
    if input.class == ContentClass::Manifest {
        // A frozen live playlist stalls every player: bound how long it may be served stale.
        let bound = ttl.saturating_mul(input.manifest_stale_factor);
        swr = swr.min(bound);
        sie = sie.min(bound);
    }

    let age = age(h).unwrap_or_default();
    Decision::Store(Freshness {
        ttl,
        initial_age: age.saturating_add(input.response_delay).min(MAX_DELTA),
        stale_while_revalidate: swr,
        stale_if_error: sie,
    })
}

/// The origin's `Age` (RFC 9111 §5.1), capped at `MAX_DELTA`. `None` when absent or not a
/// non-negative integer (`-1`, `1.5`, `12abc` are ignored, not read as a prefix). With several
/// `Age` fields the first counts.
pub fn age(h: &HeaderMap) -> Option<Duration> {
    age_value(h.get(header::AGE)?.to_str().ok()?)
}

/// One `Age` value (see `age`).
pub fn age_value(v: &str) -> Option<Duration> {
    delta_seconds(v.trim()).map(Duration::from_secs)
}

/// `Content-Length` as a number, if present and valid: ASCII digits only (no sign, no list)
/// that fit a `u64`.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    content_length_value(h.get(header::CONTENT_LENGTH)?.to_str().ok()?)
}

/// One `Content-Length` value (see `content_length`).
pub fn content_length_value(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn has_validators(h: &HeaderMap) -> bool {
    h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED)
}

fn http_date(h: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(h.get(name)?.to_str().ok()?).ok()
}

/// `Expires - Date` (RFC 9111 §4.2.1), capped at `MAX_DELTA`; an invalid Expires means already
/// expired. `None` without `Expires`.
pub fn expires_lifetime(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let raw = h.get(header::EXPIRES)?;
    let date = http_date(h, header::DATE);
    Some(expires_lifetime_values(raw.to_str().ok(), date, now))
}

/// `expires - date` from raw values: `date` parsed already (`None` means `now`), `expires` as
/// received (unparseable or absent text means zero).
pub fn expires_lifetime_values(
    expires: Option<&str>,
    date: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let Some(expires) = expires.and_then(|v| httpdate::parse_http_date(v).ok()) else {
        return Duration::ZERO;
    };
    expires
        .duration_since(date.unwrap_or(now))
        .unwrap_or_default()
        .min(MAX_DELTA)
}

/// RFC 9111 §4.2.2: 10 % of the time since Last-Modified, capped at a day.
fn heuristic_lifetime(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let lm = http_date(h, header::LAST_MODIFIED)?;
    let date = http_date(h, header::DATE).unwrap_or(now);
    let since = date.duration_since(lm).ok()?;
    Some((since / 10).min(Duration::from_secs(86400)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn input<'a>(h: &'a HeaderMap, class: ContentClass, rules: TtlRules) -> DecisionInput<'a> {
        DecisionInput {
            status: StatusCode::OK,
            headers: h,
            rules,
            class,
            negative_ttl: Duration::from_secs(2),
            manifest_stale_factor: 2,
            max_object_size: 1 << 30,
            response_delay: Duration::ZERO,
            now: SystemTime::now(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ttl_of(d: Decision) -> Duration {
        match d {
            Decision::Store(f) => f.ttl,
            other => panic!("not stored: {other:?}"),
        }
    }

    #[test]
    fn classes() {
        assert_eq!(
            ContentClass::classify("/a/b.m3u8?x=1", None),
            ContentClass::Manifest
        );
        assert_eq!(
            ContentClass::classify("/a/b.MPD", None),
            ContentClass::Manifest
        );
        assert_eq!(
            ContentClass::classify("/a/seg_1.m4s", None),
            ContentClass::Segment
        );
        assert_eq!(
            ContentClass::classify("/a/init.mp4", None),
            ContentClass::Segment
        );
        assert_eq!(
            ContentClass::classify("/a/playlist", Some("application/vnd.apple.mpegURL")),
            ContentClass::Manifest
        );
        assert_eq!(
            ContentClass::classify("/a/x", Some("video/mp2t")),
            ContentClass::Segment
        );
        assert_eq!(
            ContentClass::classify("/index.html", None),
            ContentClass::Other
        );
    }

    #[test]
    fn defaults_per_class_and_precedence() {
        let d = ClassTtl::defaults();
        let h = HeaderMap::new();
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Manifest, d.manifest))),
            Duration::from_secs(2)
        );
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Segment, d.segment))),
            Duration::from_secs(86400)
        );
        assert!(matches!(
            decide(&input(&h, ContentClass::Other, d.other)),
            Decision::ShareOnly(_)
        ));
        let h = headers(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Segment, d.segment))),
            Duration::from_secs(20)
        );
        let h = headers(&[
            ("cache-control", "max-age=10"),
            ("surrogate-control", "max-age=30"),
        ]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Segment, d.segment))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn clamps_force_ttls_whatever_the_origin_says() {
        let forced = TtlRules {
            min: Some(Duration::from_secs(2)),
            max: Some(Duration::from_secs(2)),
            ..TtlRules::default()
        };
        for cc in [
            "max-age=600",
            "no-cache",
            "private",
            "no-store",
            "max-age=0",
        ] {
            let h = headers(&[("cache-control", cc)]);
            let h = {
                let mut h = h;
                h.insert("cache-control", HeaderValue::from_str(cc).unwrap());
                h
            };
            assert_eq!(
                ttl_of(decide(&input(&h, ContentClass::Manifest, forced))),
                Duration::from_secs(2),
                "{cc}"
            );
        }
    }

    #[test]
    fn not_shareable_responses_pass() {
        let d = ClassTtl::defaults().segment;
        for (k, v) in [
            ("cache-control", "private"),
            ("cache-control", "no-store"),
            ("set-cookie", "a=b"),
            ("vary", "*"),
            ("vary", "Cookie"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_static(v));
            assert!(
                matches!(
                    decide(&input(&h, ContentClass::Segment, d)),
                    Decision::Pass(_)
                ),
                "{k}: {v}"
            );
        }
    }

    #[test]
    fn errors_are_not_stored_and_404_gets_negative_ttl() {
        let d = ClassTtl::defaults().segment;
        let h = HeaderMap::new();
        let mut i = input(&h, ContentClass::Segment, d);
        i.status = StatusCode::BAD_GATEWAY;
        assert!(matches!(decide(&i), Decision::ShareOnly(_)));
        i.status = StatusCode::NOT_FOUND;
        assert_eq!(ttl_of(decide(&i)), Duration::from_secs(2));
    }

    #[test]
    fn manifest_staleness_is_bounded() {
        let d = ClassTtl::defaults().manifest;
        let h = headers(&[(
            "cache-control",
            "max-age=2, stale-while-revalidate=60, stale-if-error=600",
        )]);
        match decide(&input(&h, ContentClass::Manifest, d)) {
            Decision::Store(f) => {
                assert_eq!(f.stale_while_revalidate, Duration::from_secs(4));
                assert_eq!(f.stale_if_error, Duration::from_secs(4));
            }
            other => panic!("{other:?}"),
        }
        let h = headers(&[(
            "cache-control",
            "max-age=2, must-revalidate, stale-if-error=600",
        )]);
        match decide(&input(
            &h,
            ContentClass::Segment,
            ClassTtl::defaults().segment,
        )) {
            Decision::Store(f) => assert_eq!(f.stale_if_error, Duration::ZERO),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn age_counts_against_freshness() {
        let h = headers(&[("cache-control", "max-age=10"), ("age", "4")]);
        match decide(&input(
            &h,
            ContentClass::Segment,
            ClassTtl::defaults().segment,
        )) {
            Decision::Store(f) => assert_eq!(f.initial_age, Duration::from_secs(4)),
            other => panic!("{other:?}"),
        }
    }

    fn stored(d: Decision) -> Freshness {
        match d {
            Decision::Store(f) => f,
            other => panic!("not stored: {other:?}"),
        }
    }

    /// Issue: huge origin values overflowed durations and times.
    #[test]
    fn huge_delta_seconds_are_capped_at_2_pow_31() {
        let d = ClassTtl::defaults();
        let h = headers(&[
            ("cache-control", "max-age=10"),
            ("age", "18446744073709551615"),
        ]);
        let f = stored(decide(&input(&h, ContentClass::Segment, d.segment)));
        assert_eq!(f.initial_age, MAX_DELTA);
        let h = headers(&[(
            "cache-control",
            "max-age=9223372036854775807, stale-while-revalidate=9223372036854775807",
        )]);
        let mut i = input(&h, ContentClass::Manifest, d.manifest);
        i.manifest_stale_factor = u32::MAX;
        i.response_delay = Duration::MAX;
        let f = stored(decide(&i));
        assert_eq!(f.ttl, MAX_DELTA);
        assert_eq!(f.stale_while_revalidate, MAX_DELTA);
        assert_eq!(f.initial_age, MAX_DELTA);
        let h = headers(&[("cache-control", "s-maxage=99999999999999999999")]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Segment, d.segment))),
            MAX_DELTA
        );
        // A configured clamp of any size is capped too.
        let huge = TtlRules {
            min: Some(Duration::MAX),
            stale_if_error: Some(Duration::MAX),
            ..TtlRules::default()
        };
        let f = stored(decide(&input(&HeaderMap::new(), ContentClass::Other, huge)));
        assert_eq!((f.ttl, f.stale_if_error), (MAX_DELTA, MAX_DELTA));
    }

    #[test]
    fn malformed_delta_seconds_mean_zero() {
        let cc = CacheControl::parse_value(
            "max-age=+5, stale-while-revalidate=1e9, stale-if-error=-1, s-maxage=\"60\"",
        );
        assert_eq!(cc.max_age, Some(0));
        assert_eq!(cc.stale_while_revalidate, Some(0));
        assert_eq!(cc.stale_if_error, Some(0));
        assert_eq!(cc.s_maxage, Some(60));
        let h = headers(&[("cache-control", "max-age=60, stale-while-revalidate=1e9")]);
        let f = stored(decide(&input(
            &h,
            ContentClass::Segment,
            ClassTtl::defaults().segment,
        )));
        assert_eq!(f.stale_while_revalidate, Duration::ZERO);
        assert_eq!(delta_seconds(""), None);
        assert_eq!(delta_seconds("2147483649"), Some(MAX_DELTA_SECS));
        assert_eq!(delta_seconds("0042"), Some(42));
    }

    #[test]
    fn age_must_be_a_whole_non_negative_number() {
        for bad in ["-1", "1.5", "12abc", "", "+3", "0x10", "1 2"] {
            assert_eq!(age_value(bad), None, "{bad:?}");
        }
        assert_eq!(age_value(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(age_value("18446744073709551616"), Some(MAX_DELTA));
        let h = headers(&[("cache-control", "max-age=10"), ("age", "12abc")]);
        let f = stored(decide(&input(
            &h,
            ContentClass::Segment,
            ClassTtl::defaults().segment,
        )));
        assert_eq!(f.initial_age, Duration::ZERO);
    }

    #[test]
    fn expires_garbage_is_already_expired() {
        let now = SystemTime::now();
        assert_eq!(
            expires_lifetime_values(Some("garbage"), None, now),
            Duration::ZERO
        );
        let h = headers(&[("expires", "garbage")]);
        assert_eq!(
            decide(&input(&h, ContentClass::Other, TtlRules::default())),
            Decision::ShareOnly("zero-ttl")
        );
        let date = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").ok();
        assert_eq!(
            expires_lifetime_values(Some("Fri, 31 Dec 9999 23:59:59 GMT"), date, now),
            MAX_DELTA
        );
        assert_eq!(
            expires_lifetime_values(Some("Sun, 06 Nov 1994 08:49:38 GMT"), date, now),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn content_length_is_digits_that_fit() {
        for bad in [
            "+5",
            "-1",
            "5, 5",
            "",
            "99999999999999999999999",
            "1e3",
            "0x10",
        ] {
            assert_eq!(content_length_value(bad), None, "{bad:?}");
        }
        assert_eq!(content_length_value(" 42 "), Some(42));
        assert_eq!(content_length_value("18446744073709551615"), Some(u64::MAX));
    }
}
