//! Cache keys: scheme class + validated host + normalised path + query, with configured query
//! parameters (tokens, CMCD, tracking) dropped and the rest sorted, so equivalent URLs share one
//! object and distinct ones never do. Push ingest builds keys with the same functions so a
//! viewer's first request is a HIT.
//!
//! A key reads `{scheme}|{host}|{path}` with `?{query}` appended when a parameter is kept, e.g.
//! `http|cdn.example.com|/vod/a/1.ts?q=2`. The encoding is unambiguous because no normalised part
//! can contain the delimiter that ends it: a scheme and a host never hold `|`, a path never holds
//! `?` (or `|`), a query pair never holds `&`, and nothing holds `\0` (which starts a `Vary`
//! variant suffix). Prefix purge keeps working on `{scheme}|{host}|{path prefix}` (`key_prefix`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The scheme class a request arrived with. It decides which port is the default one, and it is
/// the first field of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub const ALL: [Scheme; 2] = [Scheme::Http, Scheme::Https];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a `Host` (or `:authority`) was refused. Every variant is the viewer's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host longer than 255 bytes")]
    TooLong,
    #[error("host holds a character not allowed in a host name")]
    BadChar,
    #[error("host has an empty or over-long label")]
    BadLabel,
    #[error("host looks like an IPv4 address but is not a valid one")]
    BadIpv4,
    #[error("bracketed host is not a valid IPv6 address")]
    BadIpv6,
    #[error("port is not a number from 0 to 65535")]
    BadPort,
}

/// Why a request path was refused. Every variant is the viewer's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with `/`")]
    NotAbsolute,
    #[error("`%` not followed by two hex digits")]
    BadEscape,
    #[error("encoded slash (%2F) in path")]
    EncodedSlash,
    #[error("backslash (raw or %5C) in path")]
    Backslash,
    #[error("encoded NUL (%00) in path")]
    EncodedNul,
    #[error("control character in path")]
    ControlChar,
}

/// Either half of a refused request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Longest host accepted (DNS names are at most 253 bytes; the rest leaves room for a port).
const MAX_HOST: usize = 255;
const MAX_LABEL: usize = 63;

/// Validates and normalises a `Host` value: an RFC 3986 host (a DNS-style reg-name, a dotted
/// IPv4 address or a bracketed IPv6 address) with an optional port. The result is lower-cased,
/// an IPv6 address is written in its RFC 5952 form, a port loses leading zeros, and the
/// scheme's default port (or an empty port) is removed. Idempotent.
///
/// A reg-name is narrower than RFC 3986 allows: labels of letters, digits, `-` and `_`, no
/// sub-delims and no percent-encoding. No real host name needs those, and accepting them would
/// only give one origin several keys or smuggle delimiters. A name whose last label is numeric
/// must be a plain dotted quad (`127.1` or `010.0.0.1` are refused, not guessed at). One
/// trailing dot (the DNS root) is dropped.
pub fn normalize_host(host: &str, scheme: Scheme) -> Result<String, HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if host.len() > MAX_HOST {
        return Err(HostError::TooLong);
    }
    let (name, port) = split_port(host)?;
    // One allocation, sized for the common case (a name kept as it is, with its port).
    let mut out = String::with_capacity(host.len());
    if let Some(inner) = name.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
        let addr: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6)?;
        let _ = write!(out, "[{addr}]");
    } else {
        out.push_str(reg_name(name)?);
        out.make_ascii_lowercase();
    }
    match port {
        Some(p) if p.value != scheme.default_port() => {
            out.push(':');
            out.push_str(p.digits);
        }
        _ => {}
    }
    Ok(out)
}

/// A port: its value and its digits without leading zeros (`0` for zero), which is how the
/// normal form writes it.
struct Port<'h> {
    value: u16,
    digits: &'h str,
}

/// Splits `name[:port]`; an empty port counts as none (RFC 3986 §6.2.3).
fn split_port(host: &str) -> Result<(&str, Option<Port<'_>>), HostError> {
    let (name, port) = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => match &host[i + 1..] {
                "" => (host, None),
                rest => (
                    &host[..=i],
                    Some(rest.strip_prefix(':').ok_or(HostError::BadIpv6)?),
                ),
            },
            None => return Err(HostError::BadIpv6),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            // Leading zeros are allowed, so parse the digits after them (no overflow on length).
            let digits = p.trim_start_matches('0');
            if digits.len() > 5 {
                return Err(HostError::BadPort);
            }
            let digits = if digits.is_empty() { "0" } else { digits };
            let n: u32 = digits.parse().map_err(|_| HostError::BadPort)?;
            Some(Port {
                value: u16::try_from(n).map_err(|_| HostError::BadPort)?,
                digits,
            })
        }
        Some(_) => return Err(HostError::BadPort),
    };
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    Ok((name, port))
}

/// Validates a reg-name or dotted quad and returns it without its root dot; the caller
/// lower-cases it (a no-op on a dotted quad).
fn reg_name(name: &str) -> Result<&str, HostError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::BadLabel);
    }
    if let Some(b) = name
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        // `[` here means a bracket that did not open the host.
        return Err(if b == b'[' || b == b']' {
            HostError::BadIpv6
        } else {
            HostError::BadChar
        });
    }
    if name.split('.').any(|l| l.is_empty() || l.len() > MAX_LABEL) {
        return Err(HostError::BadLabel);
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        // Rust's parser takes exactly four decimal octets without leading zeros, which is the
        // canonical text: a name it accepts is already normalised (no formatting per request).
        name.parse::<Ipv4Addr>().map_err(|_| HostError::BadIpv4)?;
    }
    Ok(name)
}

/// Normalises a request path (without its query): percent-escapes of unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) decoded and every other escape's hex upper-cased, characters outside
/// RFC 3986 `pchar` escaped, then dot segments removed (RFC 3986 §5.2.4), so
/// `/vod/%2e%2e/live/x.ts` becomes `/live/x.ts`. Idempotent.
///
/// Refused, so the caller can answer 400: a path not starting with `/`, a `%` without two hex
/// digits, `%2F` (it would make `/a%2Fb` and `/a/b` one key for an origin that decodes it and
/// two for one that does not), `%5C` and raw `\` (Windows-style separators some origins
/// honour), `%00` and raw control characters.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // The common case, a path already in normal form, is copied as it is.
    if is_normal(path) {
        return Ok(path.to_owned());
    }
    rewrite_path(path)
}

/// `normalize_path` for a path that needs rewriting (an absolute one).
fn rewrite_path(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let v = hex_pair(b, i).ok_or(PathError::BadEscape)?;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::EncodedNul),
                    _ => push_escaped_or_plain(&mut out, v),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            c if c < 0x20 || c == 0x7f => return Err(PathError::ControlChar),
            c if is_pchar(c) || c == b'/' => out.push(c as char),
            c => push_escape(&mut out, c),
        }
        i += 1;
    }
    Ok(remove_dot_segments(&out))
}

/// `s` spelt as `normalize_path` spells a path's characters, without the path rules (dot
/// segments, refused escapes): an escaped unreserved character decoded, every other escape in
/// upper-case hex, a character a path cannot hold plain escaped (a stray `%` too). For text
/// that is compared with normalised paths but is no path itself (a token's `acl` pattern,
/// whose `*` stays a wildcard): written in any spelling of the same path, it still matches.
pub fn normalize_escapes(s: &str) -> std::borrow::Cow<'_, str> {
    let b = s.as_bytes();
    if b.iter().all(|&c| c != b'%' && (is_pchar(c) || c == b'/')) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex_pair(b, i)) {
            (b'%', Some(v)) => {
                push_escaped_or_plain(&mut out, v);
                i += 3;
                continue;
            }
            (c, _) if c != b'%' && (is_pchar(c) || c == b'/') => out.push(c as char),
            (c, _) => push_escape(&mut out, c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `normalize_path` would return `path` unchanged: only `pchar`s and `/` (no escape to
/// decode or upper-case, nothing to escape or refuse) and no `.` or `..` segment.
fn is_normal(path: &str) -> bool {
    let dots = |seg: &[u8]| seg == b"." || seg == b"..";
    let b = path.as_bytes();
    let mut seg = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'/' {
            if dots(&b[seg..i]) {
                return false;
            }
            seg = i + 1;
        } else if !is_pchar(c) {
            return false;
        }
    }
    !dots(&b[seg..])
}

/// The byte a `%XX` at `b[i]` encodes.
fn hex_pair(b: &[u8], i: usize) -> Option<u8> {
    let hi = hex_val(*b.get(i + 1)?)?;
    let lo = hex_val(*b.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus pct-encoded: unreserved, sub-delims, `:` and `@`.
fn is_pchar(c: u8) -> bool {
    is_unreserved(c)
        || matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// A decoded escape goes back in: as the plain character if it is unreserved, else re-escaped
/// with upper-case hex (a decoded `?` or `/` keeps its escape, so meaning never changes).
fn push_escaped_or_plain(out: &mut String, v: u8) {
    if is_unreserved(v) {
        out.push(v as char);
    } else {
        push_escape(out, v);
    }
}

fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(v >> 4)] as char);
    out.push(HEX[usize::from(v & 15)] as char);
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments vanish, `..` removes the segment before
/// it (never above the root).
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    // Segments after the leading `/`; the last one is empty when the path ends in `/`.
    let segs: Vec<&str> = path[1..].split('/').collect();
    let n = segs.len();
    for (i, seg) in segs.into_iter().enumerate() {
        let last = i + 1 == n;
        match seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The kept query parameters, each with its escapes normalised like a path's (unreserved
/// decoded, hex upper-cased; a stray `%` becomes `%25` rather than an error, since queries are
/// the origin's business), parameters named in `drop_params` (case-insensitive) removed, the
/// rest sorted and joined with `&`. Empty when nothing is kept.
pub fn normalize_query(query: &str, drop_params: &[String]) -> String {
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(normalize_query_part)
        .filter(|p| {
            let name = p.split_once('=').map_or(p.as_str(), |(n, _)| n);
            !drop_params.iter().any(|d| d.eq_ignore_ascii_case(name))
        })
        .collect();
    // Sorting whole pairs makes `a=2&a=1` and `a=1&a=2` one key, which is what origins serving
    // video do.
    pairs.sort_unstable();
    pairs.join("&")
}

fn normalize_query_part(part: &str) -> String {
    let b = part.as_bytes();
    let mut out = String::with_capacity(part.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if let Some(v) = hex_pair(b, i) {
                push_escaped_or_plain(&mut out, v);
                i += 3;
                continue;
            }
            push_escape(&mut out, c);
        } else if is_pchar(c) || matches!(c, b'/' | b'?') {
            out.push(c as char);
        } else {
            // Controls, spaces, `#`, `&` (never here: it splits pairs), non-ASCII: escaped,
            // which also keeps `\0` (the variant separator) out of every key.
            push_escape(&mut out, c);
        }
        i += 1;
    }
    out
}

/// Encodes a key from parts that are already normalised: `host` from `normalize_host` and
/// `path` from `normalize_path` (debug builds check the delimiters). `query` is raw (without
/// `?`) and is normalised here with `drop_params`.
pub fn encode_key(
    scheme: Scheme,
    host: &str,
    path: &str,
    query: Option<&str>,
    drop_params: &[String],
) -> String {
    debug_assert!(!host.contains(['|', '\0']), "host not normalised: {host:?}");
    debug_assert!(
        path.starts_with('/') && !path.contains(['?', '|', '\0']),
        "path not normalised: {path:?}"
    );
    let query = query.map(|q| normalize_query(q, drop_params));
    let mut key = key_prefix(scheme, host, path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        key.push('?');
        key.push_str(&q);
    }
    key
}

/// The start every key for `path_prefix` on this scheme and host shares (purge by prefix).
/// `host` normalised; `path_prefix` normalised (any prefix of a normalised path is one).
pub fn key_prefix(scheme: Scheme, host: &str, path_prefix: &str) -> String {
    let mut key = String::with_capacity(8 + host.len() + path_prefix.len());
    key.push_str(scheme.as_str());
    key.push('|');
    key.push_str(host);
    key.push('|');
    key.push_str(path_prefix);
    key
}

/// Validates and normalises a whole request: the `Host` (or `:authority`) and the request target
/// (`path?query`). An error is the viewer's (answer 400). The path the origin is asked for must
/// be the normalised one, so the object stored under a key is the one that key names.
pub fn request_key(
    scheme: Scheme,
    host: &str,
    path_and_query: &str,
    drop_params: &[String],
) -> Result<String, KeyError> {
    let (path, query) = split_target(path_and_query);
    let host = normalize_host(host, scheme)?;
    let path = normalize_path(path)?;
    Ok(encode_key(scheme, &host, &path, query, drop_params))
}

fn split_target(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    }
}

/// The key for a plain-HTTP request, for callers that cannot refuse one (push ingest with an
/// operator-given host, and the request handler until it validates with `request_key`).
/// A host or path that does not normalise is kept, escaped, behind a `!` (which no normalised
/// host or path starts with): such a key can only ever equal the key of the same raw input.
pub fn cache_key(host: &str, path_and_query: &str, drop_params: &[String]) -> String {
    let scheme = Scheme::Http;
    let (path, query) = split_target(path_and_query);
    let host = normalize_host(host, scheme).unwrap_or_else(|_| opaque(host));
    let path = normalize_path(path).unwrap_or_else(|_| opaque(path));
    let mut key = key_prefix(scheme, &host, &path);
    if let Some(q) = query.map(|q| normalize_query(q, drop_params)) {
        if !q.is_empty() {
            key.push('?');
            key.push_str(&q);
        }
    }
    key
}

/// `!` then every byte that is not unreserved escaped: injective, and free of `|`, `?`, `\0`.
fn opaque(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len() + 1);
    s.push('!');
    for &c in raw.as_bytes() {
        if is_unreserved(c) {
            s.push(c as char);
        } else {
            push_escape(&mut s, c);
        }
    }
    s
}

/// The path part of a key (`/...` plus any query), for purge by prefix.
pub fn key_path(key: &str) -> &str {
    let mut it = key.splitn(3, '|');
    match (it.next(), it.next(), it.next()) {
        (Some(_), Some(_), Some(rest)) => rest,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drop() -> Vec<String> {
        vec!["token".into(), "CMCD".into()]
    }

    #[test]
    fn drops_and_sorts() {
        assert_eq!(
            cache_key(
                "CDN.example.com:80",
                "/a/b.ts?z=1&token=abc&a=2&CMCD=br%3D100",
                &drop()
            ),
            "http|cdn.example.com|/a/b.ts?a=2&z=1"
        );
        assert_eq!(cache_key("h", "/a.ts?token=x", &drop()), "http|h|/a.ts");
        assert_eq!(cache_key("h:8080", "/a.ts", &drop()), "http|h:8080|/a.ts");
        assert_eq!(key_path("http|h:8080|/a/b.ts?x"), "/a/b.ts?x");
        // An escaped parameter name is still the dropped one.
        assert_eq!(cache_key("h", "/a.ts?t%6Fken=x", &drop()), "http|h|/a.ts");
    }

    /// Issue: `Host: cdn/x` + `/y.ts` and `Host: cdn` + `/x/y.ts` were one key.
    #[test]
    fn host_with_a_slash_is_refused_and_never_shares_a_key() {
        assert_eq!(
            normalize_host("cdn/x", Scheme::Http),
            Err(HostError::BadChar)
        );
        assert_eq!(
            request_key(Scheme::Http, "cdn/x", "/y.ts", &[]),
            Err(KeyError::Host(HostError::BadChar))
        );
        let a = cache_key("cdn/x", "/y.ts", &[]);
        let b = cache_key("cdn", "/x/y.ts", &[]);
        assert_ne!(a, b);
        assert_eq!(b, "http|cdn|/x/y.ts");
    }

    #[test]
    fn hosts() {
        let ok = |h: &str, s: Scheme| normalize_host(h, s);
        assert_eq!(
            ok("CDN.Example.COM", Scheme::Http).as_deref(),
            Ok("cdn.example.com")
        );
        assert_eq!(
            ok("cdn.example.com.", Scheme::Http).as_deref(),
            Ok("cdn.example.com")
        );
        assert_eq!(ok("cdn:80", Scheme::Http).as_deref(), Ok("cdn"));
        assert_eq!(ok("cdn:443", Scheme::Http).as_deref(), Ok("cdn:443"));
        assert_eq!(ok("cdn:443", Scheme::Https).as_deref(), Ok("cdn"));
        assert_eq!(ok("cdn:00080", Scheme::Http).as_deref(), Ok("cdn"));
        assert_eq!(ok("cdn:", Scheme::Http).as_deref(), Ok("cdn"));
        assert_eq!(ok("cdn:08080", Scheme::Http).as_deref(), Ok("cdn:8080"));
        assert_eq!(ok("cdn:000", Scheme::Http).as_deref(), Ok("cdn:0"));
        assert_eq!(ok("CDN.:08080", Scheme::Http).as_deref(), Ok("cdn:8080"));
        assert_eq!(
            ok("10.0.0.1:8080", Scheme::Http).as_deref(),
            Ok("10.0.0.1:8080")
        );
        assert_eq!(ok("[::1]", Scheme::Http).as_deref(), Ok("[::1]"));
        assert_eq!(ok("[0:0:0::1]:443", Scheme::Https).as_deref(), Ok("[::1]"));
        assert_eq!(
            ok("[2001:DB8::A]:8443", Scheme::Https).as_deref(),
            Ok("[2001:db8::a]:8443")
        );
        assert_eq!(ok("a_b-c.d", Scheme::Http).as_deref(), Ok("a_b-c.d"));
        for (bad, err) in [
            ("", HostError::Empty),
            (":80", HostError::Empty),
            ("a b", HostError::BadChar),
            ("user@cdn", HostError::BadChar),
            ("cdn\\x", HostError::BadChar),
            ("cdn%2fx", HostError::BadChar),
            ("cdn|x", HostError::BadChar),
            ("a..b", HostError::BadLabel),
            (".a", HostError::BadLabel),
            (".", HostError::BadLabel),
            ("cdn:65536", HostError::BadPort),
            ("cdn:99999999999999999999", HostError::BadPort),
            ("cdn:-1", HostError::BadPort),
            ("cdn:80:80", HostError::BadPort),
            ("[::1", HostError::BadIpv6),
            ("[::1]x", HostError::BadIpv6),
            ("[::g]", HostError::BadIpv6),
            ("[1.2.3.4]", HostError::BadIpv6),
            ("[fe80::1%25eth0]", HostError::BadIpv6),
            ("::1", HostError::BadPort),
            ("127.1", HostError::BadIpv4),
            ("010.0.0.1", HostError::BadIpv4),
            ("256.0.0.1", HostError::BadIpv4),
        ] {
            assert_eq!(ok(bad, Scheme::Http), Err(err), "{bad:?}");
        }
        assert_eq!(ok(&"a".repeat(64), Scheme::Http), Err(HostError::BadLabel));
        assert_eq!(ok(&"a.".repeat(128), Scheme::Http), Err(HostError::TooLong));
    }

    #[test]
    fn paths() {
        let ok = |p: &str| normalize_path(p);
        assert_eq!(ok("/vod/%2e%2e/live/x.ts").as_deref(), Ok("/live/x.ts"));
        assert_eq!(ok("/vod/%2E./live/x.ts").as_deref(), Ok("/live/x.ts"));
        assert_eq!(ok("/a/./b/../c").as_deref(), Ok("/a/c"));
        assert_eq!(ok("/../../a").as_deref(), Ok("/a"));
        assert_eq!(ok("/a/..").as_deref(), Ok("/"));
        assert_eq!(ok("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(ok("/").as_deref(), Ok("/"));
        assert_eq!(ok("/a/...").as_deref(), Ok("/a/..."));
        assert_eq!(ok("/%7e%41%2d").as_deref(), Ok("/~A-"));
        assert_eq!(ok("/a%3fb%c3%a9").as_deref(), Ok("/a%3Fb%C3%A9"));
        assert_eq!(ok("/a b|é").as_deref(), Ok("/a%20b%7C%C3%A9"));
        assert_eq!(ok("/a:b@c;d=e").as_deref(), Ok("/a:b@c;d=e"));
        for (bad, err) in [
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::EncodedNul),
            ("/a\0", PathError::ControlChar),
            ("/a\r\n", PathError::ControlChar),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
        ] {
            assert_eq!(ok(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_prefixes() {
        let k = request_key(
            Scheme::Https,
            "CDN:443",
            "/vod/%2e%2e/live/x.ts?b=1&a=2",
            &[],
        );
        assert_eq!(k.as_deref(), Ok("https|cdn|/live/x.ts?a=2&b=1"));
        let k = k.unwrap_or_default();
        assert!(k.starts_with(&key_prefix(Scheme::Https, "cdn", "/live/")));
        assert!(!k.starts_with(&key_prefix(Scheme::Https, "cd", "/")));
        assert_eq!(
            request_key(Scheme::Http, "cdn", "/a%2Fb", &[]),
            Err(KeyError::Path(PathError::EncodedSlash))
        );
        // `/a?` and `/a` are one object; a query of only dropped parameters is none.
        assert_eq!(cache_key("h", "/a?", &[]), cache_key("h", "/a", &[]));
        // The fallback never meets a valid key.
        assert_eq!(cache_key("a b", "/x", &[]), "http|!a%20b|/x");
        assert_eq!(cache_key("h", "/a%2Fb", &[]), "http|h|!%2Fa%252Fb");
    }

    /// Splits a key back into its parts; the encoding is injective if this inverts it.
    fn decode(key: &str) -> (String, String, String, Vec<String>) {
        let mut it = key.splitn(3, '|');
        let scheme = it.next().unwrap_or_default().to_string();
        let host = it.next().unwrap_or_default().to_string();
        let rest = it.next().unwrap_or_default();
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q.split('&').map(str::to_string).collect()),
            None => (rest, Vec::new()),
        };
        (scheme, host, path.to_string(), query)
    }

    fn host_input() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9._/@|: -]{0,12}",
            "[a-z]{1,4}(\\.[a-z0-9]{1,3}){0,2}(:[0-9]{0,5})?",
            "\\[[0-9a-fA-F:.]{2,12}\\](:[0-9]{1,3})?",
            "[0-9]{1,3}(\\.[0-9]{1,3}){3}",
        ]
    }

    fn path_input() -> impl Strategy<Value = String> {
        prop_oneof![
            "/[a-z./%2eEfF5cC0-9]{0,16}",
            "(/(\\.|\\.\\.|%2e|%2E%2e|[a-z]{1,2}|%41|%7e|%C3%a9)){0,6}/?",
            "/[ -~]{0,12}",
        ]
    }

    fn scheme() -> impl Strategy<Value = Scheme> {
        prop_oneof![Just(Scheme::Http), Just(Scheme::Https)]
    }

    proptest! {
        #[test]
        fn order_of_params_never_matters(params in proptest::collection::vec(("[a-z]{1,3}", "[a-z0-9]{0,3}"), 0..6)) {
            let q1: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut q2 = q1.clone();
            q2.reverse();
            let k1 = cache_key("h", &format!("/p?{}", q1.join("&")), &drop());
            let k2 = cache_key("h", &format!("/p?{}", q2.join("&")), &drop());
            prop_assert_eq!(k1, k2);
        }

        #[test]
        fn dropped_params_never_reach_the_key(v in "[a-z0-9]{0,8}") {
            let k = cache_key("h", &format!("/p.ts?token={v}&CMCD={v}"), &drop());
            prop_assert_eq!(k, "http|h|/p.ts");
        }

        #[test]
        fn host_normalisation_is_idempotent(h in host_input(), s in scheme()) {
            if let Ok(n) = normalize_host(&h, s) {
                prop_assert_eq!(normalize_host(&n, s), Ok(n.clone()));
                prop_assert!(!n.contains(['|', '/', '?', '@', ' ', '\0', '\\']));
                prop_assert_eq!(n.to_ascii_lowercase(), n);
            }
        }

        #[test]
        fn paths_taken_as_normal_are_what_the_rewrite_makes_of_them(p in path_input()) {
            if p.starts_with('/') && is_normal(&p) {
                prop_assert_eq!(rewrite_path(&p).ok(), Some(p.clone()));
            }
        }

        #[test]
        fn path_normalisation_is_idempotent_and_leaves_no_dot_segment(p in path_input()) {
            if let Ok(n) = normalize_path(&p) {
                prop_assert_eq!(normalize_path(&n), Ok(n.clone()));
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains(['?', '|', '\0', '\\']));
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{}", n);
            }
        }

        #[test]
        fn query_normalisation_is_idempotent(q in "[ -~]{0,16}") {
            let n = normalize_query(&q, &drop());
            prop_assert_eq!(normalize_query(&n, &drop()), n.clone());
            prop_assert!(!n.contains(['#', '\0', ' ']));
        }

        /// Distinct normalised requests never share a key: decoding a key gives back exactly
        /// the parts it was built from.
        #[test]
        fn distinct_requests_never_share_a_key(
            s in scheme(), h in host_input(), p in path_input(), q in proptest::option::of("[ -~]{0,12}"),
        ) {
            let (Ok(host), Ok(path)) = (normalize_host(&h, s), normalize_path(&p)) else {
                return Ok(());
            };
            let key = encode_key(s, &host, &path, q.as_deref(), &drop());
            let query = q.map(|q| normalize_query(&q, &drop())).unwrap_or_default();
            let pairs: Vec<String> = if query.is_empty() {
                Vec::new()
            } else {
                query.split('&').map(str::to_string).collect()
            };
            prop_assert_eq!(decode(&key), (s.as_str().to_string(), host, path, pairs));
            prop_assert!(!key.contains('\0'));
        }

        /// The lenient form never merges an invalid request with a valid one either.
        #[test]
        fn fallback_keys_decode_too(h in host_input(), p in path_input()) {
            let key = cache_key(&h, &p, &[]);
            let (_, host, path, _) = decode(&key);
            match normalize_host(&h, Scheme::Http) {
                Ok(n) => prop_assert_eq!(host, n),
                Err(_) => prop_assert_eq!(host, opaque(&h)),
            }
            let (raw_path, _) = split_target(&p);
            match normalize_path(raw_path) {
                Ok(n) => prop_assert_eq!(path, n),
                Err(_) => prop_assert_eq!(path, opaque(raw_path)),
            }
        }
    }
}
