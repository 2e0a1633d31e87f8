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
use crate::config::{canonical_ip, TokenAlgorithm, TokenConfig, TokenKey};

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
    /// The path as routes match it (`proxy::target::routing_path`: segment parameters out, the
    /// dot segments that leaves resolved). `acl` patterns must match it as well as `path`: a
    /// servlet container serves `/free/..;/paid/seg.ts` as `/paid/seg.ts`.
    pub routed: &'a str,
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
        // Two spellings come with `escape_early`: Akamai's current Python and Node generators
        // write `acl` as given (`/a/my%20show/*`), the published test vectors escape all of it
        // (`%2Fpath1%2F...%21%2Fpath2`). A pattern starts with `/` or `*`, so only the second
        // is decoded. Then patterns are compared with the normalised path in the same
        // spelling: the path a player asks for may spell an escape otherwise (`%c3`, `%31`).
        let wholly_escaped = cfg.escape_early && !acl.starts_with(['/', '*']);
        let acl: std::borrow::Cow<'_, str> = if wholly_escaped {
            percent_decode(acl).into()
        } else {
            acl.into()
        };
        // Borrowed unless a pattern holds an escape or a character paths escape.
        let allows = |path: &str| {
            acl.split('!').take(MAX_ACL_PATTERNS).any(|p| {
                glob_match(
                    crate::cache::key::normalize_escapes(p).as_bytes(),
                    path.as_bytes(),
                )
            })
        };
        if !allows(req.path) || (req.routed != req.path && !allows(req.routed)) {
            return Err(Refusal::Acl);
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::TokenSource;

    /// The key of the vectors published with the Node generator's tests (test/test_local.json
    /// in akamai/EdgeAuth-Token-Node).
    const KEY: &str = "7a5c2be9f42a1f32cd889d1cf775f05d0cd162bd2871d00fe705ab28c9bba5a5";

    fn key() -> Vec<u8> {
        (0..KEY.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&KEY[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn cfg(alg: TokenAlgorithm, salt: Option<&str>, escape_early: bool) -> TokenConfig {
        TokenConfig {
            keys: vec![TokenKey(key())],
            param: "hdnts".into(),
            algorithm: alg,
            sources: vec![TokenSource::Query],
            clock_skew: Duration::from_secs(5),
            escape_early,
            forward: false,
            salt: salt.map(str::to_string),
            steering_same_domain: false,
        }
    }

    fn at<'a>(path: &'a str, ip: Option<&str>, now: u64) -> Request<'a> {
        Request {
            path,
            raw_path: path,
            routed: path,
            peer: ip.map(|i| i.parse().expect("ip")),
            now,
        }
    }

    #[test]
    fn the_generator_reproduces_the_published_vectors() {
        let k = key();
        let s = TokenAlgorithm::Sha256;
        let base = TokenSpec {
            start: Some(1492404013),
            exp: 1493008813,
            ..TokenSpec::default()
        };
        // atk2, atk3.
        let t = generate(
            &TokenSpec {
                acl: vec!["/*"],
                ..base.clone()
            },
            &k,
            s,
        );
        assert_eq!(t, "st=1492404013~exp=1493008813~acl=/*~hmac=57cef6aa3c30939b3f599ee7b1bda3bd63c58937ff713d605d5139e449e09a3c");
        let t = generate(
            &TokenSpec {
                acl: vec!["/path1", "/path2"],
                ..base.clone()
            },
            &k,
            s,
        );
        assert_eq!(t, "st=1492404013~exp=1493008813~acl=/path1!/path2~hmac=17f163a7cb8d38e2bb97849375674758cc47a5937764c4b2e82678f23cee6380");
        let url = TokenSpec {
            exp: 1492405000,
            url: Some("/target/url"),
            ..base.clone()
        };
        // atk5 .. atk9: url tokens, id, ip, data, salt.
        assert_eq!(generate(&url, &k, s), "st=1492404013~exp=1492405000~hmac=637d42fd0739315be4129508f9d3cbeba15c7ab561d767844f1fd468c4fb0694");
        let full = TokenSpec {
            id: Some("MY_SESSION_ID_E1905##"),
            ip: Some("192.168.0.1"),
            data: Some("goodjoon"),
            ..url.clone()
        };
        assert_eq!(generate(&full, &k, s), "ip=192.168.0.1~st=1492404013~exp=1492405000~id=MY_SESSION_ID_E1905##~data=goodjoon~hmac=8dcd3d6b2c56ca712b04dfa31373d5a7d71bae2b8ed9c67fe7c9ad459c0ef7dc");
        let salted = TokenSpec {
            salt: Some("passwd"),
            ..full.clone()
        };
        assert_eq!(generate(&salted, &k, s), "ip=192.168.0.1~st=1492404013~exp=1492405000~id=MY_SESSION_ID_E1905##~data=goodjoon~hmac=4852b47e438c4474c14971d54ac81ce677a58b8870cc6ad1e2f9ca0ecac991c3");
        // atk11: escape_early (the `#`s of the id become %23).
        let early = TokenSpec {
            escape_early: true,
            ..salted.clone()
        };
        assert_eq!(generate(&early, &k, s), "ip=192.168.0.1~st=1492404013~exp=1492405000~id=MY_SESSION_ID_E1905%23%23~data=goodjoon~hmac=77390902cddba1ef5a55ce7c12ed33b44045273c7e9cd92d365c5bd29eb016e4");
    }

    #[test]
    fn published_tokens_verify_with_every_algorithm() {
        let now = 1492404500;
        // atk4 (sha256 acl), atk13 (md5) and atk14 (sha1): escaped acl, id, ip, data, salt.
        let t = "st=1492404013~exp=1492405000~acl=/path1!/path2~hmac=918aa0dbc9a471967c4996b66e9c7e32b75f9784e4cec520fb45c4c1a56f8253";
        let c = cfg(TokenAlgorithm::Sha256, None, false);
        assert_eq!(verify(t, &c, &at("/path2", None, now)), Ok(()));
        assert_eq!(verify(t, &c, &at("/path3", None, now)), Err(Refusal::Acl));
        let tail = "ip=192.168.0.1~st=1492404013~exp=1492405000~acl=%2Fpath1%2F%40%23%24%25%21%2Fpath2%2F%5E%24%5E%24%25%5E~id=MY_SESSION_ID_E1905%23%23~data=goodjoon~hmac=";
        for (alg, mac) in [
            (TokenAlgorithm::Md5, "ead636fa310b3da4731b77629f810db2"),
            (
                TokenAlgorithm::Sha1,
                "bfaf6944765c3e8122cbdc54e17ae2c0d9467e36",
            ),
        ] {
            let c = cfg(alg, Some("passwd"), true);
            let t = format!("{tail}{mac}");
            // The path `/path2/^$^$%^` as a request carries it (and the edge normalises it).
            let ok = at("/path2/%5E$%5E$%25%5E", Some("192.168.0.1"), now);
            assert_eq!(verify(&t, &c, &ok), Ok(()), "{alg:?}");
            let other_ip = at("/path2/%5E$%5E$%25%5E", Some("10.0.0.1"), now);
            assert_eq!(verify(&t, &c, &other_ip), Err(Refusal::Ip));
            let unsalted = cfg(alg, None, true);
            assert_eq!(verify(&t, &unsalted, &ok), Err(Refusal::Hmac));
        }
        // atk7: a url token, checked against the request path.
        let t = "ip=192.168.0.1~st=1492404013~exp=1492405000~id=MY_SESSION_ID_E1905##~hmac=03ff877afaf13c6dd58ee320d6f61da0772b9149072558f9dc5439f482ddcedd";
        let c = cfg(TokenAlgorithm::Sha256, None, false);
        assert_eq!(
            verify(t, &c, &at("/target/url", Some("192.168.0.1"), now)),
            Ok(())
        );
        assert_eq!(
            verify(t, &c, &at("/target/other", Some("192.168.0.1"), now)),
            Err(Refusal::Hmac)
        );
    }

    #[test]
    fn time_bounds_honour_the_clock_skew() {
        let k = key();
        let spec = TokenSpec {
            start: Some(1000),
            exp: 2000,
            acl: vec!["/*"],
            ..TokenSpec::default()
        };
        let t = generate(&spec, &k, TokenAlgorithm::Sha256);
        let c = cfg(TokenAlgorithm::Sha256, None, false);
        assert_eq!(verify(&t, &c, &at("/a", None, 2005)), Ok(()));
        assert_eq!(verify(&t, &c, &at("/a", None, 2006)), Err(Refusal::Expired));
        assert_eq!(verify(&t, &c, &at("/a", None, 995)), Ok(()));
        assert_eq!(
            verify(&t, &c, &at("/a", None, 994)),
            Err(Refusal::NotYetValid)
        );
    }

    #[test]
    fn malformed_tokens_are_named_so() {
        let c = cfg(TokenAlgorithm::Sha256, None, false);
        let r = at("/a", None, 10);
        for t in [
            "",
            "hmac=00",
            "exp=10",
            "exp=x~acl=/*~hmac=00",
            "exp=10~acl=/*~bogus=1~hmac=00",
            "exp=10~exp=11~acl=/*~hmac=00",
            "exp=10~acl=/*~hmac=zz",
            "exp=10~acl=/*~hmac=",
        ] {
            assert_eq!(verify(t, &c, &r), Err(Refusal::Malformed), "{t:?}");
        }
        let long = format!("exp=10~acl={}~hmac=00", "a".repeat(MAX_TOKEN_LEN));
        assert_eq!(verify(&long, &c, &r), Err(Refusal::Malformed));
    }

    #[test]
    fn acl_wildcards_match_any_run_of_characters() {
        assert!(glob_match(b"/vod/*", b"/vod/a/b/c.ts"));
        assert!(glob_match(b"/vod/*/x.m3u8", b"/vod/a/b/x.m3u8"));
        assert!(glob_match(b"*", b"/"));
        assert!(!glob_match(b"/vod/*", b"/live/a.ts"));
        assert!(!glob_match(b"/vod/a", b"/vod/ab"));
        assert!(glob_match(b"/a*b*c", b"/aXbYbZc"));
    }

    #[test]
    fn escape_early_spellings_follow_each_generator() {
        assert_eq!(escape("/a b~*", EscapeStyle::Python), "%2fa+b~%2a");
        assert_eq!(escape("/a b~*", EscapeStyle::Node), "%2fa%20b%7e%2a");
    }
}
