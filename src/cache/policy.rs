//! Cache policy: content classes, TTL rules and the RFC 9111 storability and freshness decision
//! for an origin response. Pure functions; no I/O.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{header, HeaderMap, StatusCode};

use crate::cache::{sfv, vary};

/// A manifest format, HLS playlist or DASH MPD: one list of the names each goes by, shared by
/// the content classes here and by token propagation (`auth::propagate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Hls,
    Dash,
}

impl ManifestFormat {
    /// By `Content-Type`, else by the path's extension.
    pub fn of(path: &str, content_type: Option<&str>) -> Option<ManifestFormat> {
        content_type
            .and_then(ManifestFormat::from_content_type)
            .or_else(|| ManifestFormat::from_path(path))
    }

    /// By the media type of a `Content-Type` value (parameters and case ignored).
    pub fn from_content_type(value: &str) -> Option<ManifestFormat> {
        let media_type = value.split(';').next().unwrap_or(value).trim();
        const HLS: [&str; 4] = [
            "application/vnd.apple.mpegurl",
            "application/x-mpegurl",
            "audio/mpegurl",
            "audio/x-mpegurl",
        ];
        if HLS.iter().any(|t| t.eq_ignore_ascii_case(media_type)) {
            Some(ManifestFormat::Hls)
        } else if media_type.eq_ignore_ascii_case("application/dash+xml") {
            Some(ManifestFormat::Dash)
        } else {
            None
        }
    }

    /// By the extension of the path's last segment (`.m3u8`, `.mpd`; a query, a fragment or
    /// segment parameters are ignored: `extension`).
    pub fn from_path(path: &str) -> Option<ManifestFormat> {
        let ext = extension(path)?;
        if ext.eq_ignore_ascii_case("m3u8") {
            Some(ManifestFormat::Hls)
        } else if ext.eq_ignore_ascii_case("mpd") {
            Some(ManifestFormat::Dash)
        } else {
            None
        }
    }
}

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
        if content_type
            .and_then(ManifestFormat::from_content_type)
            .is_some()
        {
            return ContentClass::Manifest;
        }
        let ct = content_type
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match ct.as_deref() {
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

    /// Classifies by the path's extension alone (`None` when it says nothing; `extension`).
    pub fn from_path(path: &str) -> Option<ContentClass> {
        let ext = extension(path)?.to_ascii_lowercase();
        match ext.as_str() {
            "m3u8" | "mpd" => Some(ContentClass::Manifest),
            "ts" | "m4s" | "mp4" | "m4a" | "m4v" | "aac" | "cmfv" | "cmfa" | "vtt" | "webm"
            | "mp3" | "ac3" | "ec3" | "m4i" | "cmft" => Some(ContentClass::Segment),
            "key" => Some(ContentClass::Key),
            _ => None,
        }
    }
}

/// The extension of `path`'s last segment, read as routes read the path
/// (`proxy::target::routing_path`): a query or fragment, and the segment's parameters (`;` to
/// its end), left out. Servlet-style origins serve `/v/a.mpd;jsessionid=1` as `/v/a.mpd`, so it
/// is that manifest and gets a manifest's TTL and handling; judged as written (`mpd;jsessionid=1`)
/// it fell back to the `Content-Type`, and without one it was not cached at all.
fn extension(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let file = path.rsplit('/').next().unwrap_or(path);
    let file = file.split(';').next().unwrap_or(file);
    Some(file.rsplit_once('.')?.1)
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
    /// `must-understand` (RFC 9111 §5.2.2.3): stored only when the cache understands the
    /// status code, and then whatever `no-store` says.
    pub must_understand: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Field names of a qualified `no-cache="a, b"` or `private="a"` (lowercased): the
    /// response may be stored without them (RFC 9111 §5.2.2.4, §5.2.2.7). The qualified forms
    /// do not set `no_cache` / `private`.
    pub withheld_fields: Vec<String>,
}

impl CacheControl {
    /// Parses every value of `name` in `headers`. Unknown directives are ignored; a malformed
    /// delta-seconds (`1e9`, `-1`, `+5`) is treated as 0 (RFC 9111 §1.2.2: invalid means stale)
    /// and a huge one as `MAX_DELTA_SECS`.
    pub fn parse(headers: &HeaderMap, name: impl header::AsHeaderName) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            // Read lossily, not skipped: obs-text is valid inside a quoted argument (RFC 9110
            // §5.6.4), and skipping such a line skipped the `private` or `no-store` beside it.
            // Directive names are tokens (ASCII), so a replaced byte can only land in an
            // argument.
            cc.add(&String::from_utf8_lossy(value.as_bytes()));
        }
        cc
    }

    /// Parses one header value (the first occurrence of a directive wins).
    pub fn parse_value(v: &str) -> CacheControl {
        let mut cc = CacheControl::default();
        cc.add(v);
        cc
    }

    /// Adds one field line's directives. Names are case-insensitive; the first occurrence of a
    /// directive wins (RFC 9111 §4.2.1: "the first occurrence should be used"); a comma or `=`
    /// inside a quoted argument belongs to the argument (`ext="max-age=1, x"` sets nothing).
    fn add(&mut self, v: &str) {
        self.add_directives(directives(v));
    }

    /// Adds parsed directives (see `add`).
    fn add_directives(&mut self, list: Vec<(String, Option<String>)>) {
        for (name, arg) in list {
            let first = |slot: &mut Option<u64>| {
                if slot.is_none() {
                    // RFC 9111 §1.2.2: an invalid delta-seconds means stale.
                    *slot = Some(arg.as_deref().and_then(delta_seconds).unwrap_or(0));
                }
            };
            match name.as_str() {
                "no-store" => self.no_store = true,
                // Field-qualified (`no-cache="Set-Cookie"`): a shared cache stores the
                // response without the named fields. A spoiled argument (`private="a`) is
                // read as the unqualified directive, the safe side.
                "no-cache" | "private"
                    if arg.as_deref().is_some_and(|a| !a.starts_with(INVALID)) =>
                {
                    let names: Vec<String> = arg
                        .as_deref()
                        .unwrap_or_default()
                        .split(',')
                        .map(|n| n.trim().to_ascii_lowercase())
                        .filter(|n| !n.is_empty())
                        .collect();
                    match (names.is_empty(), name.as_str()) {
                        // Naming nothing (`private=""`): the unqualified directive.
                        (true, "private") => self.private = true,
                        (true, _) => self.no_cache = true,
                        (false, _) => self.withheld_fields.extend(names),
                    }
                }
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
                "must-understand" => self.must_understand = true,
                "max-age" => first(&mut self.max_age),
                "s-maxage" => first(&mut self.s_maxage),
                "stale-while-revalidate" => first(&mut self.stale_while_revalidate),
                "stale-if-error" => first(&mut self.stale_if_error),
                _ => {}
            }
        }
    }

    /// The directives of a targeted field already parsed as a Structured Field Dictionary
    /// (RFC 9213 §2.2). `None` when a directive we act on has a value of the wrong type
    /// (`max-age="60"`, `max-age=1.5`, `max-age=-1`, `no-store=3`): RFC 9213 §2.1 says not to
    /// consume such values, and the caller then ignores the whole field. A Boolean `?0` means
    /// the directive is absent; parameters are ignored.
    pub fn from_dictionary(dict: &sfv::Dictionary) -> Option<CacheControl> {
        let mut cc = CacheControl::default();
        for (key, member) in dict {
            let bare = match member {
                sfv::Member::Item(item) => Some(&item.bare),
                sfv::Member::InnerList(..) => None,
            };
            let seconds = || match bare {
                Some(sfv::BareItem::Integer(n)) => {
                    u64::try_from(*n).ok().map(|n| n.min(MAX_DELTA_SECS))
                }
                _ => None,
            };
            let flag = || match bare {
                Some(sfv::BareItem::Boolean(b)) => Some(*b),
                _ => None,
            };
            // `private` and `no-cache` may name header fields (a String or an inner list of
            // them); for a shared cache that is the unqualified directive.
            let qualified = || match (bare, member) {
                (Some(sfv::BareItem::Boolean(b)), _) => Some(*b),
                (Some(sfv::BareItem::String(_) | sfv::BareItem::Token(_)), _) => Some(true),
                (None, sfv::Member::InnerList(..)) => Some(true),
                _ => None,
            };
            match key.as_str() {
                "max-age" => cc.max_age = Some(seconds()?),
                "s-maxage" => cc.s_maxage = Some(seconds()?),
                "stale-while-revalidate" => cc.stale_while_revalidate = Some(seconds()?),
                "stale-if-error" => cc.stale_if_error = Some(seconds()?),
                "no-store" => cc.no_store = flag()?,
                "public" => cc.public = flag()?,
                "must-revalidate" | "proxy-revalidate" => {
                    cc.must_revalidate |= flag()?;
                }
                "no-cache" => cc.no_cache = qualified()?,
                "private" => cc.private = qualified()?,
                "must-understand" => cc.must_understand = flag()?,
                _ => {}
            }
        }
        Some(cc)
    }
}

/// The directives of the first targeted cache-control field in `names` (RFC 9213 §2.1, e.g.
/// `CDN-Cache-Control`) whose value is a valid, non-empty Structured Field Dictionary. Several
/// lines of one field are one dictionary. `None` when no listed field qualifies: the response's
/// `Cache-Control`, `Surrogate-Control` and `Expires` then decide as usual.
pub fn targeted_cache_control(h: &HeaderMap, names: &[HeaderName]) -> Option<CacheControl> {
    names.iter().find_map(|name| {
        let mut joined = String::new();
        for value in h.get_all(name) {
            let v = value.to_str().ok()?;
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(v);
        }
        let dict = sfv::parse_dictionary(&joined).ok()?;
        if dict.is_empty() {
            return None;
        }
        CacheControl::from_dictionary(&dict)
    })
}

/// The argument `directives` gives for a quoted string spoiled by what follows it: no
/// directive value can start with a NUL.
const INVALID: &str = "\u{0}invalid";

/// `Surrogate-Control` (W3C Edge Architecture 1.0 §3) as this surrogate reads it: the
/// directives targeted at `device` (`max-age=60;vedge`: the token this edge names in the
/// `Surrogate-Capability` it sends upstream, its `cdn_id`, compared without case) when there
/// are any, as the most specific word for this edge (`max-age=3600, max-age=1;vedge` is one
/// second, `no-store, max-age=600;vedge` is stored), else those with no device token;
/// directives targeted at another device are never ours. `max-age=N+M` is a lifetime of N
/// that may be stretched M more seconds while the origin fails (`stale-if-error`, unless one
/// is given). `None` unless a directive this cache acts on remains: a field carrying only ESI's
/// `content="ESI/1.0"`, or only other devices' directives, leaves `Cache-Control` in charge.
pub fn surrogate_control(h: &HeaderMap, device: &str) -> Option<CacheControl> {
    let (mut targeted, mut general) = (Vec::new(), Vec::new());
    for value in h.get_all("surrogate-control") {
        for (name, arg) in directives(&String::from_utf8_lossy(value.as_bytes())) {
            // The device token follows the directive (and its argument) after a `;`.
            let (name, arg, target) = match arg {
                Some(a) => match a.split_once(';') {
                    Some((a, t)) => (name, Some(a.trim().to_string()), Some(t.to_string())),
                    None => (name, Some(a), None),
                },
                None => match name.split_once(';') {
                    Some((n, t)) => (n.trim().to_string(), None, Some(t.to_string())),
                    None => (name, None, None),
                },
            };
            let list = match &target {
                None => &mut general,
                Some(t) if t.trim().eq_ignore_ascii_case(device) => &mut targeted,
                Some(_) => continue,
            };
            match (
                name.as_str(),
                arg.as_deref().and_then(|a| a.split_once('+')),
            ) {
                ("max-age", Some((lifetime, extension))) => {
                    list.push((name.clone(), Some(lifetime.trim().to_string())));
                    list.push(("stale-if-error".into(), Some(extension.trim().to_string())));
                }
                _ => list.push((name, arg)),
            }
        }
    }
    let mut cc = CacheControl::default();
    cc.add_directives(if targeted.is_empty() {
        general
    } else {
        targeted
    });
    (cc != CacheControl::default()).then_some(cc)
}

/// The `(name, argument)` pairs of a `Cache-Control` line: names lowercased, quoted arguments
/// unquoted (`\x` escapes honoured). A name followed by whitespace before its `=`
/// (`max-age =60`) keeps that whitespace, so it matches no directive (RFC 9111 §5.2 grammar:
/// `token [ "=" ( token / quoted-string ) ]`).
pub(crate) fn directives(v: &str) -> Vec<(String, Option<String>)> {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let name = &v[start..i];
        if i >= b.len() || b[i] == b',' {
            out.push((name.trim_end().to_ascii_lowercase(), None));
            continue;
        }
        i += 1; // '='
        let arg = if b.get(i) == Some(&b'"') {
            i += 1;
            let mut arg = String::new();
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        arg.push(char::from(b[i + 1]));
                        i += 2;
                    }
                    c => {
                        arg.push(char::from(c));
                        i += 1;
                    }
                }
            }
            // Anything between the closing quote and the next comma spoils the argument.
            let rest_start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            let clean = closed && v[rest_start..i].trim().is_empty();
            if clean {
                arg
            } else {
                INVALID.to_string()
            }
        } else {
            let arg_start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            v[arg_start..i].trim_end().to_string()
        };
        out.push((name.to_ascii_lowercase(), Some(arg)));
    }
    out
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
    /// Targeted cache-control fields, in precedence order (`cache.targeted_cache_control`).
    pub targeted: &'a [HeaderName],
    /// This edge's device token for `Surrogate-Control` targeting (`cdn_id`).
    pub surrogate_device: &'a str,
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
    // RFC 9213 §2.1: a valid targeted field (CDN-Cache-Control) replaces Cache-Control and
    // Expires for this cache. Without one, `Surrogate-Control` (Edge Architecture 1.0), the
    // older field addressed to surrogates, does the same when it says anything for this edge:
    // `Cache-Control: no-store` for browsers with `Surrogate-Control: max-age=600` for the CDN
    // is stored for 600 s (it was passed, as cache-tests.fyi `surrogate-fresh-cc-nostore`
    // shows), as Fastly reads it.
    let own = targeted_cache_control(h, input.targeted)
        .or_else(|| surrogate_control(h, input.surrogate_device));
    let use_expires = own.is_none();
    let cc = own.unwrap_or_else(|| CacheControl::parse(h, header::CACHE_CONTROL));
    let status = input.status.as_u16();
    // RFC 9111 §3 and §5.2.2.3: with `must-understand`, a status this cache does not know the
    // caching rules of is never stored (`599` with `max-age=3600, must-understand` was kept and
    // reused), and one it knows is stored whatever `no-store` beside it says (the directive
    // exists so that origins can send `no-store` to caches that do not implement it).
    let understood = cc.must_understand && understood_status(status);
    if cc.must_understand && !understood && !forced {
        return Decision::ShareOnly("must-understand");
    }
    if !forced {
        if cc.private {
            return Decision::Pass("private");
        }
        if cc.no_store && !understood {
            return Decision::Pass("no-store");
        }
    }
    if let Some(len) = content_length(h) {
        if len > input.max_object_size {
            return Decision::Pass("too-large");
        }
    }

    // Interim, partial and not-modified answers are never objects of their own (the fill asks
    // for whole representations; a 304 only refreshes a stored one).
    if status < 200 || matches!(status, 206 | 304) {
        return Decision::ShareOnly("status");
    }
    let negative = matches!(status, 404 | 410);
    let error = status >= 400;

    // Explicit freshness, most specific first.
    let explicit = cc
        .s_maxage
        .or(cc.max_age)
        .map(Duration::from_secs)
        .or_else(|| {
            use_expires
                .then(|| expires_lifetime(h, input.now))
                .flatten()
        });
    if explicit.is_none() {
        // RFC 9111 §3: any final status may be stored with explicit freshness; without it only
        // the heuristically cacheable ones (RFC 9110 §15.1) or, short of a 5xx, one marked
        // `public`. A 5xx other than 501 is never kept on a heuristic: an outage must not
        // outlive itself on a guess.
        if status >= 500 && status != 501 {
            return Decision::ShareOnly("origin-error");
        }
        if !heuristically_cacheable(status) && !cc.public {
            return Decision::ShareOnly("status");
        }
    }
    let mut ttl = match explicit {
        Some(t) => t,
        // `no-cache` with a validator and no lifetime: stored, revalidated on every use.
        None if cc.no_cache && !forced && has_validators(h) => Duration::ZERO,
        None if negative => input.negative_ttl,
        // A class default (a segment's day) is for content: an error only gets a heuristic.
        None if error => match heuristic_lifetime(h, input.now) {
            Some(t) => t,
            None => return Decision::ShareOnly("no-freshness"),
        },
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
    // Clamps. An error (a 404, a 500 with max-age) is never stretched to a class minimum such
    // as a segment's day.
    if !error {
        if let Some(min) = rules.min {
            ttl = ttl.max(min);
        }
    }
    if let Some(max) = rules.max {
        ttl = ttl.min(max);
    }
    // Configured clamps and defaults are durations of any size; cap them like the origin's.
    ttl = ttl.min(MAX_DELTA);
    if ttl.is_zero() && !has_validators(h) && (error || !forced) {
        return Decision::ShareOnly("zero-ttl");
    }

    let must_revalidate = (cc.must_revalidate || cc.no_cache) && !forced;
    let secs = |v: Option<u64>| v.map(Duration::from_secs);
    // The class's configured stale-if-error protects content, not errors: an error keeps only
    // the window its origin gave.
    // `s-maxage` implies `proxy-revalidate` (RFC 9111 §5.2.2.10), but a class's configured
    // window is the operator's policy (a segment outliving an origin outage) and `s-maxage` is
    // how most origins address CDNs: it keeps the window. Content of no class configures none,
    // so there `s-maxage` alone never serves stale; `must-revalidate` / `proxy-revalidate` /
    // `no-cache` close every window (below).
    let configured_sie = if error { None } else { rules.stale_if_error };
    let mut swr = secs(cc.stale_while_revalidate).unwrap_or_default();
    let mut sie = secs(cc.stale_if_error)
        .or(configured_sie)
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

/// Why an origin's answer with `headers` is for its requester alone by `decide`'s rules
/// (`Decision::Pass`: a `Set-Cookie`, `private` or `no-store` in the cache-control this cache
/// obeys, a `Vary` no cache can match), read as a `200` under no TTL rule of the operator's
/// (a class minimum forces caching of what viewers pull, not of what an ingest takes); `None`
/// when it may be shared. For answers stored without a viewer asking (an ingest's), which
/// must not hand one client's state to every viewer.
pub fn unshared(
    headers: &HeaderMap,
    targeted: &[HeaderName],
    surrogate_device: &str,
) -> Option<&'static str> {
    let input = DecisionInput {
        status: StatusCode::OK,
        headers,
        rules: TtlRules::default(),
        class: ContentClass::Other,
        negative_ttl: Duration::ZERO,
        manifest_stale_factor: 1,
        max_object_size: u64::MAX,
        targeted,
        surrogate_device,
        response_delay: Duration::ZERO,
        now: SystemTime::now(),
    };
    match decide(&input) {
        Decision::Pass(reason) => Some(reason),
        Decision::Store(_) | Decision::ShareOnly(_) => None,
    }
}

/// The reason a response to a request with `Authorization` is not shared (see
/// `shareable_when_authorized`).
pub const AUTHORIZED: &str = "authorization";

/// RFC 9111 §3.5: a shared cache stores a response to a request with `Authorization` only when
/// the response says `public`, `s-maxage` or `must-revalidate` (in `Cache-Control`).
pub fn shareable_when_authorized(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(directives)
        .any(|(name, _)| matches!(name.as_str(), "public" | "s-maxage" | "must-revalidate"))
}

/// The header fields a stored copy of this response must not keep: those named by a qualified
/// `no-cache` or `private` in `Cache-Control` (RFC 9111 §5.2.2.4, §5.2.2.7), as header names.
pub fn withheld_fields(h: &HeaderMap) -> Vec<HeaderName> {
    CacheControl::parse(h, header::CACHE_CONTROL)
        .withheld_fields
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// Removes `withheld_fields` from headers about to be stored.
pub fn withhold(h: &mut HeaderMap) {
    for name in withheld_fields(h) {
        h.remove(name);
    }
}

/// The origin's `Age` (RFC 9111 §5.1), capped at `MAX_DELTA`. A list (`7200, 0`, or several
/// `Age` lines, which are one list) is read as its first member, as §5.1 says a cache SHOULD:
/// ignoring the whole list made a response that arrived two hours old fresh, and sent it on
/// with `Age: 0`. `None` when absent, or when that member is not a non-negative integer
/// (`-1`, `1.5`, `12abc`, `7200;a=b` are ignored, not read as a prefix).
pub fn age(h: &HeaderMap) -> Option<Duration> {
    let first_line = h.get_all(header::AGE).iter().next()?.to_str().ok()?;
    age_value(first_line.split(',').next().unwrap_or(first_line))
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

/// RFC 9110 §15.1: the statuses a cache may give heuristic freshness (206 aside: the fill
/// never stores partial content).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The final statuses RFC 9110 §15 defines (306 and 418 are reserved, not defined): the ones
/// whose caching rules this cache implements, for `must-understand`.
pub fn understood_status(status: u16) -> bool {
    matches!(
        status,
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
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

    static TARGETED: [HeaderName; 2] = [
        HeaderName::from_static("vedge-cache-control"),
        HeaderName::from_static("cdn-cache-control"),
    ];

    #[test]
    fn manifest_formats_are_named_by_content_type_first_then_extension() {
        use ManifestFormat::{Dash, Hls};
        for (path, ct, want) in [
            (
                "/a.bin",
                Some("Application/VND.Apple.MpegURL; charset=utf-8"),
                Some(Hls),
            ),
            ("/a.bin", Some(" audio/x-mpegurl"), Some(Hls)),
            ("/a.m3u8", Some("application/dash+xml"), Some(Dash)),
            ("/a.M3U8", None, Some(Hls)),
            ("/live/x.mpd?token=1", None, Some(Dash)),
            ("/a.mpd/seg.ts", None, None),
            ("/a.ts", Some("video/mp2t"), None),
            ("/m3u8", None, None),
        ] {
            assert_eq!(ManifestFormat::of(path, ct), want, "{path} {ct:?}");
        }
        assert_eq!(
            ContentClass::classify("/x", Some("application/x-mpegURL")),
            ContentClass::Manifest
        );
    }

    fn input<'a>(h: &'a HeaderMap, class: ContentClass, rules: TtlRules) -> DecisionInput<'a> {
        DecisionInput {
            status: StatusCode::OK,
            headers: h,
            rules,
            class,
            negative_ttl: Duration::from_secs(2),
            manifest_stale_factor: 2,
            max_object_size: 1 << 30,
            targeted: &TARGETED,
            surrogate_device: "vedge",
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
        // Segment parameters are left out, as routes read the path.
        for (path, want) in [
            ("/d/a.mpd;jsessionid=1", ContentClass::Manifest),
            ("/d/a.m3u8;x=1?y=2", ContentClass::Manifest),
            ("/d/s.m4s;x=1", ContentClass::Segment),
            ("/d/k.key;v=2", ContentClass::Key),
            ("/d;v=1.mpd/s.ts", ContentClass::Segment),
            ("/d/a;x=.mpd", ContentClass::Other),
        ] {
            assert_eq!(ContentClass::classify(path, None), want, "{path}");
        }
        assert_eq!(
            ManifestFormat::from_path("/d/a.mpd;jsessionid=1"),
            Some(ManifestFormat::Dash)
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
        // A list is read as its first member (RFC 9111 §5.1).
        let two = headers(&[("age", "7200"), ("age", "0")]);
        assert_eq!(age(&two), Some(Duration::from_secs(7200)));
        assert_eq!(age(&headers(&[("age", "0, 7200")])), Some(Duration::ZERO));
        assert_eq!(age(&headers(&[("age", "x, 7200")])), None);
        assert_eq!(
            age(&headers(&[("age", "30")])),
            Some(Duration::from_secs(30))
        );
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

    fn with_status(h: &HeaderMap, status: u16) -> Decision {
        let mut i = input(h, ContentClass::Other, TtlRules::default());
        i.status = StatusCode::from_u16(status).unwrap();
        decide(&i)
    }

    #[test]
    fn targeted_field_replaces_cache_control_and_expires() {
        let d = TtlRules::default();
        let h = headers(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Other, d))),
            Duration::from_secs(600)
        );
        let h = headers(&[
            ("cache-control", "max-age=3600"),
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("cdn-cache-control", "max-age=1"),
        ]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Other, d))),
            Duration::from_secs(1)
        );
        for v in ["private", "no-store"] {
            let mut h = headers(&[("cache-control", "max-age=3600")]);
            h.insert("cdn-cache-control", HeaderValue::from_static(v));
            assert!(
                matches!(
                    decide(&input(&h, ContentClass::Other, d)),
                    Decision::Pass(_)
                ),
                "{v}"
            );
        }
        // First listed field wins.
        let h = headers(&[
            ("cdn-cache-control", "max-age=5"),
            ("vedge-cache-control", "max-age=50"),
        ]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Other, d))),
            Duration::from_secs(50)
        );
    }

    #[test]
    fn invalid_targeted_field_is_ignored_as_a_whole() {
        let d = TtlRules::default();
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=1.5",
            "max-age=-1",
            "max-age =100",
            "",
        ] {
            let mut h = headers(&[("cache-control", "no-store")]);
            h.insert("cdn-cache-control", HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                decide(&input(&h, ContentClass::Other, d)),
                Decision::Pass("no-store"),
                "{bad:?}"
            );
        }
        let h = headers(&[("cdn-cache-control", "max-age=99999999999")]);
        assert_eq!(
            ttl_of(decide(&input(&h, ContentClass::Other, d))),
            MAX_DELTA
        );
    }

    #[test]
    fn any_status_with_explicit_freshness_is_stored() {
        let h = headers(&[("cache-control", "max-age=60")]);
        for status in [
            200, 203, 204, 299, 301, 302, 303, 307, 308, 400, 404, 410, 499, 500, 502, 503, 504,
            599,
        ] {
            assert_eq!(
                ttl_of(with_status(&h, status)),
                Duration::from_secs(60),
                "{status}"
            );
        }
        for status in [206, 304] {
            assert!(
                matches!(with_status(&h, status), Decision::ShareOnly(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn heuristic_freshness_only_for_heuristically_cacheable_statuses() {
        let h = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        for status in [200, 203, 204, 300, 301, 308, 405, 414, 501] {
            assert!(
                matches!(with_status(&h, status), Decision::Store(_)),
                "{status}"
            );
        }
        for status in [201, 202, 302, 303, 307, 400, 403, 500, 502, 503, 504, 599] {
            assert!(
                matches!(with_status(&h, status), Decision::ShareOnly(_)),
                "{status}"
            );
        }
    }

    /// cache-tests.fyi `heuristic-599-cached` is left: a 5xx is never kept on a heuristic.
    #[test]
    fn public_makes_a_non_error_status_heuristically_cacheable() {
        let lm = ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT");
        let public = headers(&[lm, ("cache-control", "public")]);
        for status in [302, 307, 403, 499] {
            assert!(
                matches!(with_status(&public, status), Decision::Store(_)),
                "{status}"
            );
        }
        assert!(matches!(with_status(&public, 599), Decision::ShareOnly(_)));
    }

    #[test]
    fn errors_get_no_class_default_only_a_heuristic() {
        let segment = ClassTtl::defaults().segment;
        let none = HeaderMap::new();
        let mut i = input(&none, ContentClass::Segment, segment);
        i.status = StatusCode::METHOD_NOT_ALLOWED;
        assert_eq!(decide(&i), Decision::ShareOnly("no-freshness"));
    }

    #[test]
    fn errors_are_not_stretched_by_class_minimums() {
        let rules = TtlRules {
            min: Some(Duration::from_secs(86400)),
            stale_if_error: Some(Duration::from_secs(3600)),
            ..TtlRules::default()
        };
        let h = headers(&[("cache-control", "max-age=5")]);
        let mut i = input(&h, ContentClass::Segment, rules);
        i.status = StatusCode::SERVICE_UNAVAILABLE;
        let f = stored(decide(&i));
        assert_eq!(
            (f.ttl, f.stale_if_error),
            (Duration::from_secs(5), Duration::ZERO)
        );
    }

    #[test]
    fn cache_control_first_directive_wins_and_quotes_hide_commas() {
        assert_eq!(
            CacheControl::parse_value("max-age=1800, max-age=1").max_age,
            Some(1800)
        );
        let mut h = HeaderMap::new();
        h.append("cache-control", HeaderValue::from_static("max-age=1"));
        h.append("cache-control", HeaderValue::from_static("max-age=1800"));
        assert_eq!(
            CacheControl::parse(&h, header::CACHE_CONTROL).max_age,
            Some(1)
        );
        let cc = CacheControl::parse_value("ext=\"max-age=3600, no-store\", MAX-AGE=\"7\"");
        assert_eq!((cc.max_age, cc.no_store), (Some(7), false));
        assert_eq!(CacheControl::parse_value("max-age =3600").max_age, None);
        assert_eq!(CacheControl::parse_value("max-age= 3600").max_age, Some(0));
        assert_eq!(CacheControl::parse_value("max-age='3600'").max_age, Some(0));
        assert_eq!(
            CacheControl::parse_value("max-age=003600").max_age,
            Some(3600)
        );
        assert_eq!(
            CacheControl::parse_value("max-age=\"36\"00").max_age,
            Some(0)
        );
        assert!(CacheControl::parse_value("No-Store").no_store);
    }

    #[test]
    fn an_answer_unshared_by_decide_is_unshared_whatever_its_freshness() {
        fn unshared(pairs: &[(&'static str, &'static str)]) -> Option<&'static str> {
            let cdn = [HeaderName::from_static("cdn-cache-control")];
            super::unshared(&headers(pairs), &cdn, "vedge")
        }
        let day = ("cache-control", "max-age=86400");
        assert_eq!(unshared(&[day]), None);
        assert_eq!(unshared(&[]), None, "no freshness is not a reason");
        assert_eq!(unshared(&[day, ("set-cookie", "s=1")]), Some("set-cookie"));
        assert_eq!(
            unshared(&[("cache-control", "private, max-age=60")]),
            Some("private")
        );
        assert_eq!(unshared(&[("cache-control", "no-store")]), Some("no-store"));
        // The field addressed to this cache decides, as for a pull.
        let targeted = [
            ("cache-control", "private"),
            ("cdn-cache-control", "max-age=60"),
        ];
        assert_eq!(unshared(&targeted), None);
    }
}
