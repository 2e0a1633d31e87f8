//! CMCD (Common Media Client Data, CTA-5004): what a player tells the edge about itself on each
//! request, read from the `CMCD` query parameter or the `CMCD-Request`, `CMCD-Object`,
//! `CMCD-Status` and `CMCD-Session` headers, for the access log, the per-route metrics and
//! admission priority (`Cmcd::urgent`). A leaf module: it knows nothing of the edge.
//!
//! The wire format is a Structured Field dictionary (RFC 8941) without parameters: pairs
//! `key=value` separated by commas, a key alone meaning boolean true. Values are integers,
//! decimals, tokens (unquoted) or strings (double-quoted, `\"` and `\\` escaped). In the query
//! form the whole list is URL-encoded (`CMCD=bl%3D21300%2Cbr%3D3200%2Cbs`), so a string value
//! such as `nor` that is itself URL-encoded arrives encoded twice.
//!
//! Everything here is hostile input: a source longer than `MAX_SOURCE_LEN` is ignored whole,
//! a malformed pair is skipped (the rest still count), unknown keys (CMCD v2's among them, and
//! custom `com.example-x` keys) are ignored, negative or out-of-range numbers are dropped, and
//! nothing panics. Players are not always exact, so a few departures are read leniently where
//! the meaning is not in doubt: an integer key given as a decimal is rounded, a token or a
//! string given in the other form is accepted, `true`/`false` are read as booleans.

use http::{HeaderMap, HeaderName};

/// The longest CMCD source (one header, or the query parameter's decoded value) read. A player
/// sends a few hundred bytes; anything longer is ignored whole rather than cut mid-pair.
pub const MAX_SOURCE_LEN: usize = 4096;

/// The longest string value kept. CTA-5004 caps `cid` and `sid` at 64 characters; `nor` is a
/// relative URL and may be longer. A longer value is skipped, never truncated (a cut `sid`
/// would name another session).
pub const MAX_STRING_LEN: usize = 1024;

/// The headers CMCD may arrive in (CTA-5004 §3.2: one per data type, lowercase as `http` holds
/// them), built once: a name given as text is parsed again on every lookup.
pub const HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("cmcd-request"),
    HeaderName::from_static("cmcd-object"),
    HeaderName::from_static("cmcd-status"),
    HeaderName::from_static("cmcd-session"),
];

/// The query parameter CMCD may arrive in (CTA-5004 §3.1).
pub const QUERY_PARAM: &str = "CMCD";

/// Integers above this are not Structured Field integers (15 digits) and are dropped.
const MAX_INTEGER: u64 = 999_999_999_999_999;

/// `ot`: the media type of the requested object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Manifest,
    Audio,
    Video,
    Muxed,
    Init,
    Caption,
    TimedText,
    Key,
    Other,
}

impl ObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Manifest => "m",
            ObjectType::Audio => "a",
            ObjectType::Video => "v",
            ObjectType::Muxed => "av",
            ObjectType::Init => "i",
            ObjectType::Caption => "c",
            ObjectType::TimedText => "tt",
            ObjectType::Key => "k",
            ObjectType::Other => "o",
        }
    }

    fn parse(s: &str) -> Option<ObjectType> {
        Some(match s {
            "m" => ObjectType::Manifest,
            "a" => ObjectType::Audio,
            "v" => ObjectType::Video,
            "av" => ObjectType::Muxed,
            "i" => ObjectType::Init,
            "c" => ObjectType::Caption,
            "tt" => ObjectType::TimedText,
            "k" => ObjectType::Key,
            "o" => ObjectType::Other,
            _ => return None,
        })
    }
}

/// `sf`: the streaming format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamingFormat {
    Dash,
    Hls,
    Smooth,
    Other,
}

impl StreamingFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamingFormat::Dash => "d",
            StreamingFormat::Hls => "h",
            StreamingFormat::Smooth => "s",
            StreamingFormat::Other => "o",
        }
    }

    fn parse(s: &str) -> Option<StreamingFormat> {
        Some(match s {
            "d" => StreamingFormat::Dash,
            "h" => StreamingFormat::Hls,
            "s" => StreamingFormat::Smooth,
            "o" => StreamingFormat::Other,
            _ => return None,
        })
    }
}

/// `st`: the stream type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    Vod,
    Live,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Vod => "v",
            StreamType::Live => "l",
        }
    }

    fn parse(s: &str) -> Option<StreamType> {
        Some(match s {
            "v" => StreamType::Vod,
            "l" => StreamType::Live,
            _ => return None,
        })
    }
}

/// `nrr`: the byte range of the next request, `start-end`, `start-` (to the end) or `-suffix`
/// (the last bytes), as in an HTTP `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextRange {
    pub start: Option<u64>,
    pub end: Option<u64>,
}

impl NextRange {
    fn parse(s: &str) -> Option<NextRange> {
        let (a, b) = s.trim().split_once('-')?;
        let num = |x: &str| -> Option<Option<u64>> {
            if x.is_empty() {
                return Some(None);
            }
            digits(x).map(Some)
        };
        let (start, end) = (num(a)?, num(b)?);
        match (start, end) {
            (None, None) => None,
            (Some(s), Some(e)) if e < s => None,
            _ => Some(NextRange { start, end }),
        }
    }
}

/// One request's CMCD. Every field is optional (booleans default to false, as an absent key
/// means); the units are CTA-5004's: kbps for bitrates, milliseconds for durations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cmcd {
    /// Encoded bitrate of the requested object, kbps.
    pub br: Option<u64>,
    /// Buffer length, ms (rounded by the player to 100 ms).
    pub bl: Option<u64>,
    /// Buffer starvation since the last request.
    pub bs: bool,
    /// Content ID.
    pub cid: Option<String>,
    /// Object duration, ms.
    pub d: Option<u64>,
    /// Deadline: ms until the buffer runs dry at the current playback rate.
    pub dl: Option<u64>,
    /// Measured throughput, kbps.
    pub mtp: Option<u64>,
    /// Next object request: a URL relative to this request's (percent-decoded once more than
    /// the list itself, as CTA-5004 has it URL-encoded inside the string).
    pub nor: Option<String>,
    /// Next range request.
    pub nrr: Option<NextRange>,
    /// Object type.
    pub ot: Option<ObjectType>,
    /// Playback rate (1 = real time, 0 = not playing).
    pub pr: Option<f64>,
    /// Requested maximum throughput, kbps.
    pub rtp: Option<u64>,
    /// Streaming format.
    pub sf: Option<StreamingFormat>,
    /// Session ID.
    pub sid: Option<String>,
    /// Stream type.
    pub st: Option<StreamType>,
    /// Startup: the object is needed urgently (startup, seek, or recovery after starvation).
    pub su: bool,
    /// Top bitrate available for this object type, kbps.
    pub tb: Option<u64>,
    /// CMCD version (absent means 1). Version 2 lists are read with the version 1 keys; keys
    /// and list forms only v2 defines are ignored.
    pub v: Option<u64>,
}

impl Cmcd {
    /// The request's CMCD: the four headers, then the `CMCD` query parameter (which wins a key
    /// both carry; a player sends one form or the other).
    pub fn from_request(headers: &HeaderMap, query: Option<&str>) -> Cmcd {
        let mut c = Cmcd::default();
        for name in &HEADERS {
            for v in headers.get_all(name) {
                if let Ok(s) = v.to_str() {
                    c.merge_list(s);
                }
            }
        }
        // Most requests carry no CMCD: the query is split only when it names `CMCD`.
        if let Some(list) = query
            .filter(|q| q.contains(QUERY_PARAM))
            .and_then(query_value)
        {
            c.merge_list(&list);
        }
        c
    }

    /// Parses one list (`key=value,key,...`), as a header carries it (not URL-encoded).
    pub fn parse(list: &str) -> Cmcd {
        let mut c = Cmcd::default();
        c.merge_list(list);
        c
    }

    /// True when no key was read.
    pub fn is_empty(&self) -> bool {
        *self == Cmcd::default()
    }

    /// The player is short of media: it reported starvation (`bs`), a startup/seek request
    /// (`su`), or a buffer below `low_buffer_ms` (`bl`). Such requests are admitted first when
    /// the edge is at a limit (`proxy::admission::PriorityGate`).
    pub fn urgent(&self, low_buffer_ms: u64) -> bool {
        self.bs || self.su || self.bl.is_some_and(|bl| bl < low_buffer_ms)
    }

    fn merge_list(&mut self, list: &str) {
        if list.len() > MAX_SOURCE_LEN {
            return;
        }
        for item in split_members(list) {
            self.merge_pair(item);
        }
    }

    /// Reads one `key[=value]` member; a malformed one changes nothing.
    fn merge_pair(&mut self, item: &str) {
        let item = item.trim_matches([' ', '\t']);
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim_end_matches([' ', '\t']), Some(v)),
            None => (item, None),
        };
        if !is_key(key) {
            return;
        }
        let value = value.map(|v| strip_params(v.trim_start_matches([' ', '\t'])));
        match key {
            "br" => set(&mut self.br, value.and_then(integer)),
            "bl" => set(&mut self.bl, value.and_then(integer)),
            "d" => set(&mut self.d, value.and_then(integer)),
            "dl" => set(&mut self.dl, value.and_then(integer)),
            "mtp" => set(&mut self.mtp, value.and_then(integer)),
            "rtp" => set(&mut self.rtp, value.and_then(integer)),
            "tb" => set(&mut self.tb, value.and_then(integer)),
            "v" => set(&mut self.v, value.and_then(integer)),
            "pr" => set(&mut self.pr, value.and_then(decimal)),
            "bs" => set_bool(&mut self.bs, value),
            "su" => set_bool(&mut self.su, value),
            "cid" => set(&mut self.cid, value.and_then(string)),
            "sid" => set(&mut self.sid, value.and_then(string)),
            "nor" => set(
                &mut self.nor,
                value
                    .and_then(string)
                    .and_then(|s| percent_decode(&s))
                    .filter(|s| !s.is_empty()),
            ),
            "nrr" => set(
                &mut self.nrr,
                value.and_then(string).and_then(|s| NextRange::parse(&s)),
            ),
            "ot" => set(
                &mut self.ot,
                value.and_then(token).and_then(|t| ObjectType::parse(&t)),
            ),
            "sf" => set(
                &mut self.sf,
                value
                    .and_then(token)
                    .and_then(|t| StreamingFormat::parse(&t)),
            ),
            "st" => set(
                &mut self.st,
                value.and_then(token).and_then(|t| StreamType::parse(&t)),
            ),
            _ => {}
        }
    }

    /// `nor` resolved against the request path it came with, as a player resolves a relative
    /// URL: an absolute path on the same host, its own query kept, or `None` when `nor` is
    /// absent, names another host or scheme, or climbs above the root.
    pub fn next_object(&self, request_path: &str) -> Option<String> {
        let nor = self.nor.as_deref()?;
        if nor.contains("://") || nor.starts_with("//") || nor.contains(['\\', '#']) {
            return None;
        }
        let (nor_path, nor_query) = match nor.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (nor, None),
        };
        let base = request_path.split('?').next().unwrap_or("/");
        let joined = if nor_path.starts_with('/') {
            nor_path.to_string()
        } else {
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{nor_path}")
        };
        let mut out: Vec<&str> = Vec::new();
        let segs: Vec<&str> = joined.split('/').skip(1).collect();
        let last = segs.len().saturating_sub(1);
        for (i, seg) in segs.iter().enumerate() {
            match *seg {
                "." => {}
                ".." => {
                    out.pop()?;
                }
                s => out.push(s),
            }
            // A path ending in `.` or `..` names a directory.
            if i == last && matches!(*seg, "." | "..") {
                out.push("");
            }
        }
        let mut path = format!("/{}", out.join("/"));
        if let Some(q) = nor_query {
            path.push('?');
            path.push_str(q);
        }
        Some(path)
    }
}

/// Later values win (an RFC 8941 dictionary keeps the last of a repeated key); a malformed
/// value leaves what was there.
fn set<T>(field: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *field = value;
    }
}

fn set_bool(field: &mut bool, value: Option<&str>) {
    match value.map(|v| v.trim_end_matches([' ', '\t'])) {
        None | Some("?1") | Some("true") => *field = true,
        Some("?0") | Some("false") => *field = false,
        Some(_) => {}
    }
}

/// Splits a list on commas outside quoted strings.
fn split_members(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(list);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, b) in s.bytes().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// RFC 8941 keys: a lowercase letter or `*`, then lowercase letters, digits, `_ - . *`.
fn is_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'*')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
        && k.len() <= 64
}

/// Drops RFC 8941 parameters (`;name=value`) after a bare item; CMCD defines none. A `;` inside
/// a quoted string is part of it.
fn strip_params(v: &str) -> &str {
    if v.starts_with('"') {
        return v;
    }
    v.split(';').next().unwrap_or(v)
}

/// ASCII digits only, at most 15 of them.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A non-negative integer; a decimal is rounded (some players send `bl=2133.33`).
fn integer(v: &str) -> Option<u64> {
    let v = v.trim_end_matches([' ', '\t']);
    if let Some(n) = digits(v) {
        return Some(n);
    }
    let d = decimal(v)?;
    let r = d.round();
    (r <= MAX_INTEGER as f64).then_some(r as u64)
}

/// A non-negative decimal: digits, optionally `.` and digits (RFC 8941 allows 12 + 3; a few
/// more fraction digits are tolerated).
fn decimal(v: &str) -> Option<f64> {
    let v = v.trim_end_matches([' ', '\t']);
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty()
        || int.len() > 12
        || frac.len() > 6
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    v.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A quoted string (escapes `\"` and `\\` only, printable ASCII), or a bare token read as one.
fn string(v: &str) -> Option<String> {
    let v = v.trim_end_matches([' ', '\t']);
    let Some(inner) = v.strip_prefix('"') else {
        return token(v);
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    loop {
        match chars.next()? {
            '\\' => match chars.next()? {
                c @ ('"' | '\\') => out.push(c),
                _ => return None,
            },
            '"' => break,
            c if (' '..='~').contains(&c) => out.push(c),
            _ => return None,
        }
        if out.len() > MAX_STRING_LEN {
            return None;
        }
    }
    // Nothing may follow the closing quote.
    chars.as_str().is_empty().then_some(out)
}

/// An RFC 8941 token (a letter or `*`, then tchar, `:` or `/`), or a quoted string read as one.
fn token(v: &str) -> Option<String> {
    let v = v.trim_end_matches([' ', '\t']);
    if v.starts_with('"') {
        return string(v);
    }
    let mut b = v.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'*')
        && b.all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
        && v.len() <= MAX_STRING_LEN;
    ok.then(|| v.to_string())
}

/// The decoded value of the `CMCD` parameter in a raw query string, if present and not too long.
fn query_value(query: &str) -> Option<String> {
    // The last occurrence wins, as for a repeated key inside the list.
    let (_, v) = query
        .rsplit('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| *name == QUERY_PARAM)?;
    if v.len() > MAX_SOURCE_LEN * 3 {
        return None;
    }
    percent_decode(v)
}

/// Percent-decodes `s` (`%XX`; a `%` not followed by two hex digits is kept as is, as browsers
/// do). `None` if the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `target` (a fill's path and query, CMCD already dropped with the key's parameters) with the
/// `CMCD` parameters of `viewer` (the viewer's path and query) appended, for `cmcd.forward`.
pub fn with_query_of(target: &str, viewer: &str) -> String {
    let Some((_, query)) = viewer.split_once('?') else {
        return target.to_string();
    };
    let has = |q: &str| {
        q.split('&')
            .any(|p| p.split('=').next() == Some(QUERY_PARAM))
    };
    let own = target.split_once('?').map(|(_, q)| q);
    if own.is_some_and(has) {
        return target.to_string();
    }
    let mut out = target.to_string();
    for pair in query
        .split('&')
        .filter(|p| p.split('=').next() == Some(QUERY_PARAM))
    {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(pair);
    }
    out
}

/// Removes the four CMCD headers (from a fill's request: one viewer's CMCD is not the
/// object's, and the origin would log it as every viewer's).
pub fn strip_headers(headers: &mut HeaderMap) {
    for name in &HEADERS {
        headers.remove(name);
    }
}

/// Copies the viewer's CMCD headers into `to` (a fill's request, with `cmcd.forward`).
pub fn copy_headers(viewer: &HeaderMap, to: &mut HeaderMap) {
    for name in &HEADERS {
        for v in viewer.get_all(name) {
            to.append(name.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The example of CTA-5004 §3.1 (dash.js sends this shape), as a query parameter.
    const SPEC_QUERY: &str = "CMCD=bl%3D21300%2Cbr%3D3200%2Cbs%2Ccid%3D%22faec5fc2-ac30-11ea-bb37-0242ac130002%22%2Cd%3D4004%2Cdl%3D18500%2Cmtp%3D48100%2Cnor%3D%22..%252F300kbps%252Ftrack.m4v%22%2Cnrr%3D%2212323-48763%22%2Cot%3Dv%2Cpr%3D1.08%2Crtp%3D12000%2Csf%3Dd%2Csid%3D%226e2fb550-c457-11e9-bb97-0800200c9a66%22%2Csu%2Ctb%3D6000";

    fn spec_example() -> Cmcd {
        Cmcd {
            br: Some(3200),
            bl: Some(21300),
            bs: true,
            cid: Some("faec5fc2-ac30-11ea-bb37-0242ac130002".into()),
            d: Some(4004),
            dl: Some(18500),
            mtp: Some(48100),
            nor: Some("../300kbps/track.m4v".into()),
            nrr: Some(NextRange {
                start: Some(12323),
                end: Some(48763),
            }),
            ot: Some(ObjectType::Video),
            pr: Some(1.08),
            rtp: Some(12000),
            sf: Some(StreamingFormat::Dash),
            sid: Some("6e2fb550-c457-11e9-bb97-0800200c9a66".into()),
            st: None,
            su: true,
            tb: Some(6000),
            v: None,
        }
    }

    #[test]
    fn query_form_of_the_spec_example_reads_every_key() {
        let c = Cmcd::from_request(&HeaderMap::new(), Some(SPEC_QUERY));
        assert_eq!(c, spec_example());
    }

    #[test]
    fn query_parameter_among_others() {
        let q = format!("a=1&{SPEC_QUERY}&b=2");
        let c = Cmcd::from_request(&HeaderMap::new(), Some(&q));
        assert_eq!(c, spec_example());
        assert!(Cmcd::from_request(&HeaderMap::new(), Some("cmcd_x=bl%3D1&a=b")).is_empty());
    }

    #[test]
    fn header_form_of_the_spec_example_reads_every_key() {
        let mut h = HeaderMap::new();
        let mut put = |n: &'static str, v: &str| {
            h.insert(n, HeaderValue::from_str(v).unwrap());
        };
        put(
            "cmcd-request",
            "bl=21300,dl=18500,mtp=48100,nor=\"..%2F300kbps%2Ftrack.m4v\",nrr=\"12323-48763\",su",
        );
        put("cmcd-object", "br=3200,d=4004,ot=v,tb=6000");
        put("cmcd-status", "bs,rtp=12000");
        put(
            "cmcd-session",
            "cid=\"faec5fc2-ac30-11ea-bb37-0242ac130002\",pr=1.08,sf=d,sid=\"6e2fb550-c457-11e9-bb97-0800200c9a66\"",
        );
        assert_eq!(Cmcd::from_request(&h, None), spec_example());
    }

    /// hls.js (cmcd-controller, via @svta/common-media-library) query form: `st`, `v` absent,
    /// `sf=h`, live.
    #[test]
    fn hls_js_query() {
        let q = "CMCD=br%3D1200%2Cbl%3D3900%2Cd%3D4000%2Cmtp%3D9200%2Cot%3Dav%2Csf%3Dh%2Csid%3D%22a7f0d4b2%22%2Cst%3Dl%2Ctb%3D4500";
        let c = Cmcd::from_request(&HeaderMap::new(), Some(q));
        assert_eq!(c.ot, Some(ObjectType::Muxed));
        assert_eq!(c.sf, Some(StreamingFormat::Hls));
        assert_eq!(c.st, Some(StreamType::Live));
        assert_eq!(c.bl, Some(3900));
        assert_eq!(c.sid.as_deref(), Some("a7f0d4b2"));
        assert!(!c.urgent(2000));
        assert!(c.urgent(4000));
    }

    #[test]
    fn booleans_are_keys_alone_or_structured_booleans() {
        assert!(Cmcd::parse("bs").bs);
        assert!(Cmcd::parse("bs=?1").bs);
        assert!(!Cmcd::parse("bs=?0").bs);
        assert!(Cmcd::parse("su=true").su);
        assert!(!Cmcd::parse("bs=maybe").bs);
    }

    #[test]
    fn malformed_pairs_are_skipped_and_the_rest_kept() {
        let c = Cmcd::parse("bl=-5,br=abc,d=4004,,=3,BL=7,sid=x y,tb=6000");
        assert_eq!(c.d, Some(4004));
        assert_eq!(c.tb, Some(6000));
        assert_eq!(c.bl, None);
        assert_eq!(c.sid, None);
        // An unterminated string swallows the rest of the list, and nothing after it counts.
        let c = Cmcd::parse("bl=100,sid=\"open,tb=6000");
        assert_eq!(c.bl, Some(100));
        assert_eq!((c.sid, c.tb), (None, None));
    }

    #[test]
    fn unknown_and_v2_keys_are_ignored() {
        let c = Cmcd::parse("com.example-x=\"y\",ltc=120,msd=300,bl=800,v=2,sta=p");
        assert_eq!(c.bl, Some(800));
        assert_eq!(c.v, Some(2));
        // A v2 inner list is not a v1 value: the pair is skipped.
        assert_eq!(Cmcd::parse("br=(3200 1600)").br, None);
    }

    #[test]
    fn spaces_after_commas_and_params_are_tolerated() {
        let c = Cmcd::parse("bl=1000, br=200;x=1 , ot=v");
        assert_eq!(c.bl, Some(1000));
        assert_eq!(c.br, Some(200));
        assert_eq!(c.ot, Some(ObjectType::Video));
    }

    #[test]
    fn strings_unescape_and_stay_bounded() {
        assert_eq!(
            Cmcd::parse(r#"cid="a\"b\\c,d""#).cid.as_deref(),
            Some(r#"a"b\c,d"#)
        );
        let long = format!("sid=\"{}\"", "x".repeat(MAX_STRING_LEN + 1));
        assert_eq!(Cmcd::parse(&long).sid, None);
        assert_eq!(Cmcd::parse("sid=\"a\"junk").sid, None);
        assert_eq!(Cmcd::parse("sid=\"caf\u{e9}\"").sid, None);
    }

    #[test]
    fn over_long_sources_are_ignored_whole() {
        let list = format!("bl=100,{}", "x,".repeat(MAX_SOURCE_LEN));
        assert!(Cmcd::parse(&list).is_empty());
    }

    #[test]
    fn numbers_are_bounded_and_decimals_rounded_for_integer_keys() {
        assert_eq!(Cmcd::parse("bl=9999999999999999").bl, None);
        assert_eq!(Cmcd::parse("bl=2133.6").bl, Some(2134));
        assert_eq!(Cmcd::parse("pr=1.5").pr, Some(1.5));
        assert_eq!(Cmcd::parse("pr=inf").pr, None);
        assert_eq!(Cmcd::parse("pr=1e9").pr, None);
    }

    #[test]
    fn next_range_forms() {
        let r = |s: &str| Cmcd::parse(&format!("nrr=\"{s}\"")).nrr;
        assert_eq!(
            r("100-"),
            Some(NextRange {
                start: Some(100),
                end: None
            })
        );
        assert_eq!(
            r("-500"),
            Some(NextRange {
                start: None,
                end: Some(500)
            })
        );
        assert_eq!(r("9-1"), None);
        assert_eq!(r("-"), None);
    }

    #[test]
    fn urgent_means_starving_starting_or_low_buffer() {
        assert!(Cmcd::parse("bs").urgent(2000));
        assert!(Cmcd::parse("su").urgent(2000));
        assert!(Cmcd::parse("bl=1900").urgent(2000));
        assert!(!Cmcd::parse("bl=2000").urgent(2000));
        assert!(!Cmcd::default().urgent(2000));
    }

    #[test]
    fn next_object_resolves_like_a_player() {
        let c = Cmcd::parse("nor=\"..%2F300kbps%2Ftrack.m4v\"");
        assert_eq!(
            c.next_object("/live/600kbps/seg1.m4v").as_deref(),
            Some("/live/300kbps/track.m4v")
        );
        let c = Cmcd::parse("nor=\"seg2.ts?x=1\"");
        assert_eq!(
            c.next_object("/a/seg1.ts").as_deref(),
            Some("/a/seg2.ts?x=1")
        );
        assert_eq!(Cmcd::parse("nor=\"../../x\"").next_object("/a/b"), None);
        assert_eq!(
            Cmcd::parse("nor=\"http%3A%2F%2Fevil%2Fx\"").next_object("/a/b"),
            None
        );
    }

    #[test]
    fn with_query_of_appends_only_the_viewers_cmcd() {
        assert_eq!(
            with_query_of("/a.ts?x=2", "/a.ts?CMCD=bl%3D1&x=2"),
            "/a.ts?x=2&CMCD=bl%3D1"
        );
        assert_eq!(
            with_query_of("/a.ts", "/a.ts?CMCD=bl%3D1"),
            "/a.ts?CMCD=bl%3D1"
        );
        assert_eq!(with_query_of("/a.ts", "/a.ts?x=1"), "/a.ts");
        // Kept by the key already (CMCD removed from `drop_query_params`): not twice.
        assert_eq!(
            with_query_of("/a.ts?CMCD=bl%3D1", "/a.ts?CMCD=bl%3D1"),
            "/a.ts?CMCD=bl%3D1"
        );
    }

    #[test]
    fn percent_decode_keeps_stray_percent() {
        assert_eq!(percent_decode("a%2Cb%").as_deref(), Some("a,b%"));
        assert_eq!(percent_decode("%4").as_deref(), Some("%4"));
        assert_eq!(percent_decode("%ff"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,600}") {
            let _ = Cmcd::parse(&s);
            let _ = Cmcd::from_request(&HeaderMap::new(), Some(&s));
            let _ = Cmcd::parse(&s).next_object(&s);
        }

        #[test]
        fn parsing_structured_bytes_never_panics(s in "[a-z=,\"\\\\%0-9;.?\\- ]{0,300}") {
            let c = Cmcd::parse(&s);
            let _ = c.next_object("/a/b/c");
        }
    }
}
