//! Akamai EdgeAuth Token 2.0, as the `akamai-edgeauth` generators (Python, Node, Java, Go) make
//! it: `[ip=..~][st=..~]exp=..[~acl=..][~id=..][~data=..]~hmac=HEX`, fields joined by `~`. The
//! HMAC (SHA-256, SHA-1 or MD5, keyed with the hex-decoded secret) covers the fields before
//! `hmac` exactly as they appear, then `~url=PATH` for a `url` token (the path is signed but not
//! carried) and `~salt=SALT` when a salt is configured. With `escape_early` the generators
//! URL-encode field values (lower-case hex) before signing; the Python generator uses
//! `quote_plus`, the Node one `encodeURIComponent` plus `~'*`, so a `url` token is checked
//! against both spellings of the path. `acl` holds `!`-separated patterns where `*` matches any
//! run of characters, `/` included.

use std::net::IpAddr;

use hmac::{Hmac, Mac};

use crate::auth::Refusal;
use crate::config::{TokenAlgorithm, TokenConfig, TokenKey};

/// Longer tokens are refused unparsed: a token is a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// At most this many `acl` patterns are tried.
const MAX_ACL_PATTERNS: usize = 64;

/// The request a token is checked against.
pub struct Request<'a> {
    /// The normalised request path (what `acl` patterns and `url` tokens must match).
    pub path: &'a str,
    /// The path as the viewer sent it (a `url` token may have been signed over this spelling).
    pub raw_path: &'a str,
    /// The viewer's address, for `ip` tokens.
    pub peer: Option<IpAddr>,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// The fields of a token, borrowed from it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fields<'a> {
    ip: Option<&'a str>,
    st: Option<u64>,
    exp: u64,
    acl: Option<&'a str>,
    hmac: &'a str,
    /// Everything before `~hmac=`: the signed fields, as sent.
    signed: &'a str,
}

/// Checks a token for `req` under `cfg`. The HMAC is checked first, so the other reasons are
/// only ever reported for authentic tokens.
pub fn verify(token: &str, cfg: &TokenConfig, req: &Request<'_>) -> Result<(), Refusal> {
    let f = parse(token)?;
    let urls = match f.acl {
        Some(_) => Vec::new(),
        None => url_spellings(req, cfg.escape_early),
    };
    let mut sources: Vec<String> = Vec::new();
    if f.acl.is_some() {
        sources.push(f.signed.to_string());
    } else {
        for u in &urls {
            sources.push(format!("{}~url={u}", f.signed));
        }
    }
    if let Some(salt) = &cfg.salt {
        for s in &mut sources {
            s.push_str("~salt=");
            s.push_str(salt);
        }
    }
    let given = decode_hex(f.hmac).ok_or(Refusal::Malformed)?;
    // Every key and spelling is tried (no early exit), each comparison in constant time.
    let mut ok = false;
    for key in &cfg.keys {
        for s in &sources {
            ok |= hmac_matches(cfg.algorithm, key, s.as_bytes(), &given);
        }
    }
    if !ok {
        return Err(Refusal::Hmac);
    }
    let skew = cfg.clock_skew.as_secs();
    if req.now > f.exp.saturating_add(skew) {
        return Err(Refusal::Expired);
    }
    if f.st.is_some_and(|st| req.now.saturating_add(skew) < st) {
        return Err(Refusal::NotYetValid);
    }
    if let Some(ip) = f.ip {
        let ip = if cfg.escape_early {
            percent_decode(ip)
        } else {
            ip.to_string()
        };
        let want: Option<IpAddr> = ip.trim().parse().ok();
        let peer = req.peer.map(canonical_ip);
        if want.map(canonical_ip).is_none() || want.map(canonical_ip) != peer {
            return Err(Refusal::Ip);
        }
    }
    if let Some(acl) = f.acl {
        let acl = if cfg.escape_early {
            percent_decode(acl)
        } else {
            acl.to_string()
        };
        if !acl
            .split('!')
            .take(MAX_ACL_PATTERNS)
            .any(|p| glob_match(p.as_bytes(), req.path.as_bytes()))
        {
            return Err(Refusal::Acl);
        }
    }
    Ok(())
}

/// `::ffff:a.b.c.d` and `a.b.c.d` are one client.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse(token: &str) -> Result<Fields<'_>, Refusal> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::Malformed);
    }
    let (signed, hmac) = match token.rfind("hmac=") {
        Some(0) => return Err(Refusal::Malformed),
        Some(i) if token.as_bytes()[i - 1] == b'~' => (&token[..i - 1], &token[i + 5..]),
        _ => return Err(Refusal::Malformed),
    };
    if hmac.is_empty() || hmac.contains('~') {
        return Err(Refusal::Malformed);
    }
    let mut f = Fields {
        signed,
        hmac,
        ..Fields::default()
    };
    let mut seen = [false; 6];
    let mut exp = None;
    for field in signed.split('~') {
        let (name, value) = field.split_once('=').ok_or(Refusal::Malformed)?;
        let slot = match name {
            "ip" => 0,
            "st" => 1,
            "exp" => 2,
            "acl" => 3,
            "id" => 4,
            "data" => 5,
            _ => return Err(Refusal::Malformed),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(Refusal::Malformed);
        }
        match slot {
            0 => f.ip = Some(value),
            1 => f.st = Some(number(value)?),
            2 => exp = Some(number(value)?),
            3 if value.is_empty() => return Err(Refusal::Malformed),
            3 => f.acl = Some(value),
            _ => {}
        }
    }
    f.exp = exp.ok_or(Refusal::Malformed)?;
    Ok(f)
}

fn number(v: &str) -> Result<u64, Refusal> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Malformed);
    }
    v.parse().map_err(|_| Refusal::Malformed)
}

/// The spellings of the request path a `url` token may have been signed over.
fn url_spellings(req: &Request<'_>, escape_early: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in [req.path, req.raw_path] {
        let candidates = if escape_early {
            let plain = percent_decode(p);
            vec![
                escape(&plain, EscapeStyle::Python),
                escape(&plain, EscapeStyle::Node),
            ]
        } else {
            vec![p.to_string()]
        };
        for c in candidates {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

fn hmac_matches(alg: TokenAlgorithm, key: &TokenKey, msg: &[u8], given: &[u8]) -> bool {
    fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8], given: &[u8]) -> bool {
        match <M as hmac::digest::KeyInit>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(msg);
                m.verify_slice(given).is_ok()
            }
            Err(_) => false,
        }
    }
    match alg {
        TokenAlgorithm::Sha256 => check::<Hmac<sha2::Sha256>>(&key.0, msg, given),
        TokenAlgorithm::Sha1 => check::<Hmac<sha1::Sha1>>(&key.0, msg, given),
        TokenAlgorithm::Md5 => check::<Hmac<md5::Md5>>(&key.0, msg, given),
    }
}

/// The lower-case hex HMAC of `msg` (the generators' `hexdigest()`).
fn hmac_hex(alg: TokenAlgorithm, key: &[u8], msg: &[u8]) -> String {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
        match <M as hmac::digest::KeyInit>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length; this arm is unreachable in practice.
            Err(_) => Vec::new(),
        }
    }
    let bytes = match alg {
        TokenAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, msg),
        TokenAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, msg),
        TokenAlgorithm::Md5 => run::<Hmac<md5::Md5>>(key, msg),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 || s.len() > 256 {
        return None;
    }
    let d = |b: u8| (b as char).to_digit(16);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((d(p[0])? * 16 + d(p[1])?) as u8))
        .collect()
}

/// `*` matches any run of bytes (none included); everything else matches itself. Linear in
/// practice, O(pattern × path) at worst, and both are bounded.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Decodes `%XX` escapes (a stray `%` stays); `+` is left alone (it is a path character).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = (b[i + 1] as char).to_digit(16);
            let l = (b[i + 2] as char).to_digit(16);
            if let (Some(h), Some(l)) = (h, l) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which generator's `escape_early` spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeStyle {
    /// Python `quote_plus` (safe: letters, digits, `_.-~`; space as `+`), hex lower-cased.
    Python,
    /// Node `encodeURIComponent`, then `~'*` escaped too, hex lower-cased.
    Node,
}

/// A field value as a generator with `escape_early` signs it.
pub fn escape(s: &str, style: EscapeStyle) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        let safe = b.is_ascii_alphanumeric()
            || match style {
                EscapeStyle::Python => matches!(b, b'_' | b'.' | b'-' | b'~'),
                EscapeStyle::Node => matches!(b, b'_' | b'.' | b'-' | b'!' | b'(' | b')'),
            };
        if safe {
            out.push(b as char);
        } else if b == b' ' && style == EscapeStyle::Python {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// What a token is made of: the generators' options.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec<'a> {
    pub ip: Option<&'a str>,
    pub start: Option<u64>,
    pub exp: u64,
    /// `acl` patterns (joined with `!`); ignored when `url` is set.
    pub acl: Vec<&'a str>,
    /// A `url` token: signed over this path, which the token does not carry.
    pub url: Option<&'a str>,
    pub id: Option<&'a str>,
    pub data: Option<&'a str>,
    pub salt: Option<&'a str>,
    pub escape_early: bool,
}

/// Makes a token as the Python generator (`EdgeAuth._generate_token`) does: the same field
/// order, `escape_early` spelling (`quote_plus`, lower-case hex; `acl` is not escaped) and HMAC.
/// For operators' tooling and the tests; the edge itself only verifies.
pub fn generate(spec: &TokenSpec<'_>, key: &[u8], alg: TokenAlgorithm) -> String {
    let esc = |v: &str| {
        if spec.escape_early {
            escape(v, EscapeStyle::Python)
        } else {
            v.to_string()
        }
    };
    let mut fields = Vec::new();
    if let Some(ip) = spec.ip {
        fields.push(format!("ip={}", esc(ip)));
    }
    if let Some(st) = spec.start {
        fields.push(format!("st={st}"));
    }
    fields.push(format!("exp={}", spec.exp));
    if spec.url.is_none() {
        fields.push(format!("acl={}", spec.acl.join("!")));
    }
    if let Some(id) = spec.id {
        fields.push(format!("id={}", esc(id)));
    }
    if let Some(data) = spec.data {
        fields.push(format!("data={}", esc(data)));
    }
    let mut signed = fields.clone();
    if let Some(url) = spec.url {
        signed.push(format!("url={}", esc(url)));
    }
    if let Some(salt) = spec.salt {
        signed.push(format!("salt={salt}"));
    }
    let mac = hmac_hex(alg, key, signed.join("~").as_bytes());
    fields.push(format!("hmac={mac}"));
    fields.join("~")
}
