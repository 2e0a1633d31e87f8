//! Token propagation through manifests: hls.js and dash.js resolve child URIs against the
//! manifest's URL but do not copy its query, so a viewer holding a query token would be refused
//! on every child request. The manifest a tokenised viewer gets has the same `param=token` on
//! every same-host URI (relative, scheme-relative or absolute on the request's host; other
//! hosts and schemes such as `skd:` or `data:` never see the token).
//!
//! A same-host URI that already holds a value of the parameter gets the viewer's token in its
//! place, never the value as stored: on a route that forwards tokens (`forward`) a shared fill
//! sends the origin one viewer's token, a packager that copies it onto the URIs it lists makes
//! the stored manifest name that viewer's token, and the edge cannot tell whose a value is. A
//! viewer without a query token on such a route gets those values taken out
//! (`Carry::without`).
//!
//! "Same host" is decided the way a player's URL parser reads the URI (`Carry::target`: `\` as
//! `/`, tabs and newlines dropped), after HLS `EXT-X-DEFINE` substitution, and in DASH against the
//! `BaseURL`s in scope: a relative URL under a `BaseURL` on another host goes there, so it gets
//! no token either (a segment URL given for an adaptation set or a period is under the
//! `BaseURL`s of every representation in it that inherits it). Under HLS content steering the
//! variant and rendition URIs of a multivariant playlist get no token added either: a pathway
//! clone of the steering server's may move them to another host, query included (unless the
//! route says every pathway is an edge of its token domain: `Carry::steered_too`); on a
//! `forward` route a value they hold is still replaced (`Mode::ReplaceOnly`), elsewhere it is
//! the origin's own and kept. Whatever is not certainly this host is treated as foreign.
//!
//! Cost, per response: HLS is one line scan (URI lines, and the quoted URI attributes of the
//! tags that carry one, `EXT-X-DATERANGE`'s interstitial `X-ASSET-URI`/`X-ASSET-LIST`
//! included) into one buffer sized up front from a count of URI lines and URI attributes, with
//! no allocation per URI; DASH one scan of the XML's tags (`BaseURL`, `Location`,
//! `PatchLocation` and `ContentSteering` text, the URL attributes of `SegmentTemplate`,
//! `SegmentURL`, `Initialization`, `RepresentationIndex` and `ContentSteering@proxyServerURL`,
//! remote elements' `xlink:href`, and the URL lists in the `@value` of an HTTP `UTCTiming` or
//! an MPD chaining/fallback descriptor, each URL on its own), skipping
//! comments, CDATA and processing instructions, collecting edits that are then applied in one
//! pass; no tree is built. Everything else stays byte-identical. Output is bounded
//! (`MAX_OUTPUT`).

/// The manifest formats that can carry tokens (one list of names, shared with the cache's
/// content classes).
pub use crate::cache::policy::ManifestFormat as Kind;

/// The token to add and where it may go.
#[derive(Debug, Clone)]
pub struct Carry {
    param: String,
    /// The token as it will be written: the viewer's query value with anything unsafe in a URI
    /// (or in a quoted HLS attribute) percent-encoded. `None` for a viewer whose token came
    /// another way (cookie, header) on a route that forwards tokens (`Carry::without`): its
    /// same-host URIs get no token, and lose any the stored manifest holds.
    value: Option<String>,
    /// The request's host (`host[:port]`), lower case: absolute URIs elsewhere are left alone.
    host: String,
    /// Variant, rendition and I-frame URIs of a multivariant playlist under content steering
    /// get the token too, by the same-host rule: the route's operator says every pathway is an
    /// edge of this token domain (`[route.token] steering_same_domain`).
    steered_too: bool,
    /// The route forwards viewers' tokens to the origin (`[route.token] forward`), so a value
    /// of the parameter in a stored manifest may be another viewer's: a steered variant's is
    /// replaced too (`Mode::ReplaceOnly`). Elsewhere the origin never saw a viewer's token,
    /// and a steered variant's value is the origin's own, which may be meant for another
    /// pathway's CDN: kept as written.
    forwarded: bool,
}

/// What a same-host URI gets (`Carry::push_with_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The viewer's token: added, or put in place of a value the URI holds.
    Add,
    /// A URI a steering clone may move elsewhere, on a `forward` route (`rewrite_hls`): no
    /// token is added, but a value it holds is still never kept as stored (replaced by the
    /// viewer's, or dropped).
    ReplaceOnly,
}

impl Carry {
    pub fn new(param: &str, raw_value: &str, host: &str) -> Carry {
        let mut value = String::with_capacity(raw_value.len());
        for &b in raw_value.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~!*'()+,;=:@/%".contains(&b) {
                value.push(b as char);
            } else {
                value.push_str(&format!("%{b:02X}"));
            }
        }
        Carry {
            param: param.to_string(),
            value: Some(value),
            host: host.to_ascii_lowercase(),
            steered_too: false,
            forwarded: false,
        }
    }

    /// No token to add, only stored ones to take out: for a viewer that brought its token in
    /// a cookie or a header on a route whose fills send the origin a viewer's token
    /// (`forward`), where a stored manifest may hold another viewer's token in its URIs.
    pub fn without(param: &str, host: &str) -> Carry {
        Carry {
            param: param.to_string(),
            value: None,
            host: host.to_ascii_lowercase(),
            steered_too: false,
            forwarded: true,
        }
    }

    /// The same token, given to a steered playlist's variants too when `yes` (`steered_too`).
    pub fn steered_too(mut self, yes: bool) -> Carry {
        self.steered_too = yes;
        self
    }

    /// The same token, on a route that forwards tokens to the origin when `yes` (`forwarded`).
    pub fn forwarded(mut self, yes: bool) -> Carry {
        self.forwarded = yes;
        self
    }

    /// Whether the manifest this carry goes on was fetched with the viewer's token (`forward`):
    /// then it is that viewer's whatever the rewrite finds to change (a packager may have
    /// written the token where no rewrite reads).
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }

    /// `uri` as this viewer gets it, or `None` when it stays as it is (another host, another
    /// scheme, empty, or nothing to add or take out).
    pub fn add_to(&self, uri: &str) -> Option<String> {
        if self.target(uri.trim()) == Target::Foreign {
            return None;
        }
        let mut out = String::new();
        self.push_with_token(uri, Mode::Add, &mut out)
            .then_some(out)
    }

    /// Writes `uri` (trimmed) to `out` carrying this viewer's token and returns true, or
    /// writes nothing and returns false when nothing changes (`uri` is empty, or holds no
    /// value of the parameter and there is nothing to add). A value of the parameter already
    /// in the query is never kept as stored: the manifest may come from a fill that sent the
    /// origin another viewer's token (`forward`), which a packager copies onto the URIs it
    /// lists, and the edge cannot tell whose a value is. So the first such pair (the name
    /// matched without case, as the cache key's drop list does) gets this viewer's token and
    /// any other is dropped (all of them without a token: `Carry::without`). Where `uri`
    /// points is the caller's decision (`target`).
    fn push_with_token(&self, uri: &str, mode: Mode, out: &mut String) -> bool {
        let uri = uri.trim();
        if uri.is_empty() {
            return false;
        }
        let (base, frag) = match memchr::memchr(b'#', uri.as_bytes()) {
            Some(i) => (&uri[..i], &uri[i..]),
            None => (uri, ""),
        };
        let (path, query) = match memchr::memchr(b'?', base.as_bytes()) {
            Some(i) => (&base[..i], Some(&base[i + 1..])),
            None => (base, None),
        };
        let held = query.is_some_and(|q| q.split('&').any(|pair| self.names_param(pair)));
        if !held {
            let Some(value) = self.value.as_deref().filter(|_| mode == Mode::Add) else {
                return false;
            };
            let sep = match query {
                Some(q) if !q.is_empty() && !q.ends_with('&') => "&",
                Some(_) => "",
                None => "?",
            };
            for piece in [base, sep, &self.param, "=", value, frag] {
                out.push_str(piece);
            }
            return true;
        }
        out.push_str(path);
        let mut sep = "?";
        let mut replaced = false;
        for pair in query.unwrap_or_default().split('&') {
            if self.names_param(pair) {
                match self.value.as_deref() {
                    Some(value) if !replaced => {
                        replaced = true;
                        for piece in [sep, &self.param, "=", value] {
                            out.push_str(piece);
                        }
                        sep = "&";
                    }
                    _ => {}
                }
                continue;
            }
            out.push_str(sep);
            out.push_str(pair);
            sep = "&";
        }
        out.push_str(frag);
        true
    }

    /// Whether a query pair (`name=value`, or a bare name) is the token parameter.
    fn names_param(&self, pair: &str) -> bool {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        name.eq_ignore_ascii_case(&self.param)
    }

    /// The most bytes `push_with_token` adds to a URI (putting the token in place of a stored
    /// value adds at most as much as appending it: the pair it replaces had the name).
    fn added_len(&self) -> usize {
        self.param.len() + self.value.as_ref().map_or(0, String::len) + 2
    }

    /// Where `uri` leads, read the way a browser's URL parser (WHATWG) reads it against an
    /// http(s) base: ASCII tabs and newlines are dropped, leading and trailing C0 controls and
    /// spaces trimmed, and `\` is a `/`, so `\\other.example/a` or `/\t/other.example/a` are the
    /// other host they are to a player. Anything this does not recognise as this host or a
    /// relative reference counts as foreign: the token never goes where it is not certain to
    /// come back here.
    fn target(&self, uri: &str) -> Target {
        let dirty = |b: u8| b < 0x20 || b == b'\\' || b == 0x7f;
        let norm;
        let uri = if uri.bytes().any(dirty) || uri.starts_with(' ') || uri.ends_with(' ') {
            norm = uri
                .trim_matches(|c: char| c <= ' ')
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                .map(|c| if c == '\\' { '/' } else { c })
                .collect::<String>();
            norm.as_str()
        } else {
            uri
        };
        let rest = if let Some(r) = uri.strip_prefix("//") {
            r
        } else {
            let scheme_end = memchr::memchr(b':', uri.as_bytes());
            let path_start = uri
                .bytes()
                .position(|b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(uri.len());
            match scheme_end {
                // A `:` before the path: a scheme, or to some players one (hls.js's
                // url-toolkit reads `1080p:seg.ts` as absolute, and the browser then resolves
                // it against the page's host): only http(s) with an authority can be this host.
                Some(i) if i < path_start => {
                    let scheme = &uri[..i];
                    let http = is_scheme(scheme)
                        && (scheme.eq_ignore_ascii_case("http")
                            || scheme.eq_ignore_ascii_case("https"));
                    match uri[i + 1..].strip_prefix("//") {
                        Some(r) if http => r,
                        _ => return Target::Foreign,
                    }
                }
                _ => return Target::Relative,
            }
        };
        let authority = &rest[..rest
            .bytes()
            .position(|b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len())];
        let bare = |a: &str| -> (usize, bool) {
            // The length without a default port, and whether one was there.
            for port in [":80", ":443"] {
                if a.len() > port.len() && a.ends_with(port) {
                    return (a.len() - port.len(), true);
                }
            }
            (a.len(), false)
        };
        let (a, _) = bare(authority);
        let (h, _) = bare(&self.host);
        if !authority.contains('@') && authority[..a].eq_ignore_ascii_case(&self.host[..h]) {
            Target::Ours
        } else {
            Target::Foreign
        }
    }
}

/// Where a URI in a manifest leads (`Carry::target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Relative to the manifest (or, in DASH, to the `BaseURL`s in scope).
    Relative,
    /// Absolute, on the host the viewer asked.
    Ours,
    /// Another host, another scheme, or not certainly this host.
    Foreign,
}

fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// The most a rewritten manifest may hold, and the most this reads: past it the manifest is
/// `Oversized`, which the edge answers 502 (`proxy::signed`), not the origin's bytes without
/// the token. No response grows without bound: a manifest of one-byte lines and a long token
/// would otherwise multiply its size by the token's length.
pub const MAX_OUTPUT: usize = 16 << 20;

/// The manifest, or the manifest with the token added, would be larger than `MAX_OUTPUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized;

/// The manifest with the token added to its URIs; `Ok(None)` if nothing changed or the body
/// is not text, `Oversized` if the body or the rewritten manifest would be larger than
/// `MAX_OUTPUT`.
pub fn rewrite(kind: Kind, body: &[u8], carry: &Carry) -> Result<Option<Vec<u8>>, Oversized> {
    if body.len() > MAX_OUTPUT {
        return Err(Oversized);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(None);
    };
    let out = match kind {
        // Labelled a playlist but none (an MPD served as `application/vnd.apple.mpegurl`):
        // its lines are no URIs, and the token put at their ends went wherever the player
        // reading the document as what it is resolved them. Sent as it is.
        Kind::Hls if !text.trim_start_matches('\u{feff}').starts_with("#EXTM3U") => None,
        Kind::Hls => rewrite_hls(text, carry)?,
        Kind::Dash => rewrite_dash(text, carry)?,
    };
    Ok(out.map(String::into_bytes))
}

/// Tags whose attribute lists carry a quoted URI (RFC 8216 and its 2nd edition draft):
/// `HLS_URI_ATTRS`, or for `EXT-X-DATERANGE` `DATERANGE_URI_ATTRS`.
const HLS_URI_TAGS: &[&str] = &[
    "EXT-X-DATERANGE",
    "EXT-X-MEDIA",
    "EXT-X-I-FRAME-STREAM-INF",
    "EXT-X-IMAGE-STREAM-INF",
    "EXT-X-MAP",
    "EXT-X-KEY",
    "EXT-X-SESSION-KEY",
    "EXT-X-SESSION-DATA",
    "EXT-X-PART",
    "EXT-X-PRELOAD-HINT",
    "EXT-X-RENDITION-REPORT",
    "EXT-X-CONTENT-STEERING",
];

/// URI attributes inside those tags (`SERVER-URI`: content steering).
const HLS_URI_ATTRS: &[&str] = &["URI", "SERVER-URI"];

/// The URIs of an `EXT-X-DATERANGE`: an HLS Interstitial's asset playlist and asset list
/// (rfc8216bis Appendix D), which the player fetches from where the playlist says, relative
/// to the playlist's URL like any other URI. Its other attributes are dates, ids and
/// free-form client data (`X-COM-...`), never rewritten.
const DATERANGE_URI_ATTRS: &[&str] = &["X-ASSET-URI", "X-ASSET-LIST"];

/// Whether attribute `attr` of tag `tag` is a URI the token goes on.
fn hls_uri_attr(tag: &str, attr: &str) -> bool {
    if tag == "EXT-X-DATERANGE" {
        DATERANGE_URI_ATTRS.contains(&attr)
    } else {
        HLS_URI_ATTRS.contains(&attr)
    }
}

/// The tags of a multivariant playlist whose URIs a content-steering pathway clone copies
/// (RFC 8216bis §7.2: every Variant Stream and Rendition of the base pathway), besides the URI
/// lines of `EXT-X-STREAM-INF`. Image streams are variant streams to the players that read them.
const CLONED_TAGS: &[&str] = &[
    "EXT-X-MEDIA",
    "EXT-X-I-FRAME-STREAM-INF",
    "EXT-X-IMAGE-STREAM-INF",
];

/// At most this many `EXT-X-DEFINE` variables are remembered; a URI using any other is treated
/// as unknown (`hls_target`).
const MAX_DEFINES: usize = 64;

/// One pass over the lines, into one output buffer sized up front: URI lines, and the quoted
/// URI attributes of the tags that carry one, get the token; every other byte is copied.
fn rewrite_hls(text: &str, carry: &Carry) -> Result<Option<String>, Oversized> {
    // Every addition is a URI line or a `URI="` (`X-ASSET-URI="` too) or `X-ASSET-LIST="`
    // attribute: counting them bounds the output, so the buffer never grows (one allocation
    // for the whole response).
    let uri_lines = lines(text)
        .filter(|l| {
            let l = l.trim_start();
            !l.is_empty() && !l.starts_with('#')
        })
        .count();
    let uri_attrs = memchr::memmem::find_iter(text.as_bytes(), b"URI=\"").count()
        + memchr::memmem::find_iter(text.as_bytes(), b"LIST=\"").count();
    let bound = text
        .len()
        .saturating_add((uri_lines + uri_attrs) * carry.added_len());
    if bound > MAX_OUTPUT {
        return Err(Oversized);
    }
    let mut out = String::with_capacity(bound);
    let mut changed = false;
    // Content steering (RFC 8216bis §4.4.6.6, §7.2): the steering manifest, which the player
    // fetches later from a server the edge does not answer for, may clone any pathway
    // (`PATHWAY-CLONES`; `BASE-ID` "." names the variants without a `PATHWAY-ID`) onto another
    // host: `URI-REPLACEMENT` `HOST` replaces the host of each of its variant and rendition URIs
    // and keeps their query, token and all. So under steering those URIs are not certainly this
    // host, wherever they point now. Searched as bytes anywhere, not as a parsed tag: a spelling
    // this scan would miss (a line break some player sees) still counts. Unless the operator
    // says every pathway accepts this route's tokens (`Carry::steered_too`): then the same-host
    // rule alone decides, as without steering.
    let steered = !carry.steered_too
        && memchr::memmem::find(text.as_bytes(), b"EXT-X-CONTENT-STEERING").is_some();
    // `EXT-X-DEFINE` names seen so far and their values, `None` when players may read them
    // otherwise (`define`); variables are defined before use.
    let mut defines: Vec<(&str, Option<&str>)> = Vec::new();
    for piece in lines(text) {
        let (line, eol) = split_eol(piece);
        // A line holding a break some player sees (RFC 8216 ends lines with LF or CRLF only,
        // but ExoPlayer's `readLine` and hls.js's patterns end one at a bare CR, and hls.js's
        // tag lines at U+2028/U+2029) is two lines to that player: a token added at its end
        // would follow a URI this scan never saw as one. So is a U+FEFF, which hls.js's `\S`
        // skips before a URI (whitespace to JavaScript, not to `str::trim`): `\u{FEFF}//x`
        // is host x to it. Left as it is, whatever it holds.
        if line.contains(['\r', '\u{2028}', '\u{2029}', '\u{feff}']) {
            out.push_str(piece);
            continue;
        }
        if let Some(tag) = line.strip_prefix('#') {
            let name_attrs =
                memchr::memchr(b':', tag.as_bytes()).map(|c| (&tag[..c], &tag[c + 1..]));
            match name_attrs {
                Some((name, _)) if steered && !carry.forwarded && CLONED_TAGS.contains(&name) => {
                    out.push_str(piece)
                }
                Some((name, attrs)) if HLS_URI_TAGS.contains(&name) => {
                    // A steered variant or rendition gets no token added, but on a `forward`
                    // route keeps none the stored playlist holds either (`Mode::ReplaceOnly`).
                    let mode = if steered && CLONED_TAGS.contains(&name) {
                        Mode::ReplaceOnly
                    } else {
                        Mode::Add
                    };
                    out.push('#');
                    out.push_str(name);
                    out.push(':');
                    changed |= rewrite_attr_list(name, attrs, carry, mode, &defines, &mut out);
                    out.push_str(eol);
                }
                Some(("EXT-X-DEFINE", attrs)) => {
                    define(attrs, &mut defines);
                    out.push_str(piece);
                }
                _ => out.push_str(piece),
            }
            continue;
        }
        let uri = line.trim();
        // In a steered (multivariant) playlist every URI line is a variant's: clonable.
        let mode = if steered {
            Mode::ReplaceOnly
        } else {
            Mode::Add
        };
        if (steered && !carry.forwarded)
            || uri.is_empty()
            || hls_target(uri, carry, &defines) == Target::Foreign
        {
            out.push_str(piece);
            continue;
        }
        // Keep any leading/trailing blanks the line had around the URI.
        let start = line.len() - line.trim_start().len();
        out.push_str(&line[..start]);
        if carry.push_with_token(uri, mode, &mut out) {
            changed = true;
        } else {
            out.push_str(uri);
        }
        out.push_str(&line[start + uri.len()..]);
        out.push_str(eol);
    }
    Ok(changed.then_some(out))
}

/// The attributes of an HLS attribute list in order, as `(name, value)` with a quoted value's
/// quotes removed (an unquoted one is kept as written, up to its `,`).
fn attr_pairs(attrs: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = attrs;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        let after = &rest[eq + 1..];
        if let Some(q) = after.strip_prefix('"') {
            let Some(close) = q.find('"') else {
                break;
            };
            out.push((key, &q[..close]));
            rest = &q[close + 1..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            out.push((key, after[..end].trim()));
            rest = &after[end..];
        }
    }
    out
}

/// Records an `EXT-X-DEFINE` in `defines`. Its `NAME`/`VALUE` is known only when every player
/// reads the tag alike: hls.js keeps the last of an attribute named twice in one tag (another
/// player may keep the first) and takes `QUERYPARAM` (a value from the playlist's URL) over
/// `NAME`, and a name defined twice is a playlist error players settle differently. So every
/// name such a tag may define, and a name defined a second time, is recorded as `None`, which
/// `hls_target` treats as an undefined variable.
fn define<'a>(attrs: &'a str, defines: &mut Vec<(&'a str, Option<&'a str>)>) {
    let pairs = attr_pairs(attrs);
    let count = |n: &str| pairs.iter().filter(|(k, _)| *k == n).count();
    let clean = count("NAME") == 1
        && count("VALUE") == 1
        && count("QUERYPARAM") == 0
        && count("IMPORT") == 0;
    let value = pairs
        .iter()
        .find(|(k, _)| *k == "VALUE")
        .map(|(_, v)| *v)
        .filter(|_| clean);
    for (_, name) in pairs
        .iter()
        .filter(|(k, _)| matches!(*k, "NAME" | "QUERYPARAM" | "IMPORT"))
    {
        if let Some(known) = defines.iter_mut().find(|(n, _)| n == name) {
            known.1 = None;
        } else if defines.len() < MAX_DEFINES {
            defines.push((name, value));
        }
    }
}

/// Where an HLS URI leads once its `{$name}` variables are substituted. Known variables
/// (`EXT-X-DEFINE` NAME/VALUE) are substituted; past an unknown one (IMPORT, QUERYPARAM, or
/// undefined) only what comes before it is known, and it decides only when it fixes the host:
/// an absolute URI whose authority ends before the variable, or a relative path whose first
/// segment does (`v/{$x}`, `/v{$x}`). Otherwise the variable could make it another host.
fn hls_target(uri: &str, carry: &Carry, defines: &[(&str, Option<&str>)]) -> Target {
    if !has_variable(uri) {
        return carry.target(uri);
    }
    let mut resolved = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(at) = rest.find("{$") {
        resolved.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let value = after.find('}').and_then(|end| {
            defines
                .iter()
                .find(|(n, _)| *n == &after[..end])
                .and_then(|d| Some((end, d.1?)))
        });
        match value {
            Some((end, v)) => {
                resolved.push_str(v);
                rest = &after[end + 1..];
            }
            None => {
                // Unknown from here on: decide on the known prefix alone.
                let p = resolved.as_str();
                let fixed_path = match p.find(['/', '\\']) {
                    Some(0) => p.len() > 1 && !p[1..].starts_with(['/', '\\']),
                    Some(i) => !p[..i].contains(':'),
                    None => false,
                };
                return match carry.target(p) {
                    Target::Ours
                        if p.strip_prefix("//")
                            .or_else(|| p.split_once("://").map(|x| x.1))
                            .is_some_and(|r| r.contains(['/', '?', '#'])) =>
                    {
                        Target::Ours
                    }
                    Target::Relative if fixed_path => Target::Relative,
                    _ => Target::Foreign,
                };
            }
        }
    }
    resolved.push_str(rest);
    carry.target(&resolved)
}

/// The lines of `text`, each with its `\n` (like `split_inclusive('\n')`, found with memchr: a
/// playlist is thousands of short lines, and a per-character search costs more than the copy).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut from = 0;
    let mut ends = memchr::memchr_iter(b'\n', text.as_bytes());
    std::iter::from_fn(move || {
        if from >= text.len() {
            return None;
        }
        // `\n` is ASCII: one past it is a character boundary.
        let end = ends.next().map_or(text.len(), |nl| nl + 1);
        let line = &text[from..end];
        from = end;
        Some(line)
    })
}

/// Whether `uri` holds an `EXT-X-DEFINE` variable reference (`{$`).
fn has_variable(uri: &str) -> bool {
    memchr::memchr_iter(b'{', uri.as_bytes()).any(|i| uri.as_bytes().get(i + 1) == Some(&b'$'))
}

fn split_eol(piece: &str) -> (&str, &str) {
    let body = piece.trim_end_matches(['\n', '\r']);
    (body, &piece[body.len()..])
}

/// Copies the attribute list of tag `tag` to `out` with the token given to its quoted URI
/// attributes (`hls_uri_attr`) as `mode` says; anything it cannot read is copied as is.
/// Returns whether a URI changed.
fn rewrite_attr_list(
    tag: &str,
    attrs: &str,
    carry: &Carry,
    mode: Mode,
    defines: &[(&str, Option<&str>)],
    out: &mut String,
) -> bool {
    if !quoted_values_end_cleanly(attrs) {
        out.push_str(attrs);
        return false;
    }
    let b = attrs.as_bytes();
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        // Name up to '='.
        let Some(eq) = attrs[i..].find('=').map(|e| i + e) else {
            out.push_str(&attrs[i..]);
            break;
        };
        let name = attrs[i..eq].trim();
        out.push_str(&attrs[i..=eq]);
        i = eq + 1;
        if b.get(i) == Some(&b'"') {
            let Some(close) = attrs[i + 1..].find('"').map(|c| i + 1 + c) else {
                out.push_str(&attrs[i..]);
                break;
            };
            let value = &attrs[i + 1..close];
            out.push('"');
            let added = hls_uri_attr(tag, name)
                && !value.trim().is_empty()
                && hls_target(value.trim(), carry, defines) != Target::Foreign
                && carry.push_with_token(value, mode, out);
            if !added {
                out.push_str(value);
            }
            changed |= added;
            out.push('"');
            i = close + 1;
        }
        // Up to and including the next ',' (an unquoted value, or what follows a quoted one).
        match attrs[i..].find(',') {
            Some(c) => {
                out.push_str(&attrs[i..=i + c]);
                i += c + 1;
            }
            None => {
                out.push_str(&attrs[i..]);
                break;
            }
        }
    }
    changed
}

/// Whether every quoted value of the attribute list `attrs` ends where every player agrees it
/// ends: at a `"` followed by `,` or the end. hls.js reads `(".*?"|.*?)(?:,|$)`, so after
/// `URI="https://other.example/k"x,URI="key.bin"` its one attribute runs to the last quote on
/// the line, a URI on another host, where a scan stopping at the first quote sees a second,
/// relative one: given the token, it went to that other host. Such a list gets no token.
fn quoted_values_end_cleanly(attrs: &str) -> bool {
    let mut rest = attrs;
    while let Some(eq) = rest.find('=') {
        rest = &rest[eq + 1..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let Some(close) = quoted.find('"') else {
                return false;
            };
            rest = &quoted[close + 1..];
            if !rest.is_empty() && !rest.starts_with(',') {
                return false;
            }
        }
        match rest.find(',') {
            Some(c) => rest = &rest[c + 1..],
            None => break,
        }
    }
    true
}

/// The URL attributes of segments, by element.
fn dash_url_attr(element: &str, attr: &str) -> bool {
    matches!(
        (element, attr),
        ("SegmentTemplate", "media" | "initialization" | "index")
            | ("SegmentURL", "media" | "index")
            | ("Initialization" | "RepresentationIndex", "sourceURL")
    )
}

/// An `xlink:href` (matched by its local name, as the prefix bound to the XLink namespace is
/// the document's choice) of an element that may be remote (ISO/IEC 23009-1 5.5: a period, an
/// adaptation set, a segment list, an event stream, and a representation to the players that
/// read one): the player fetches the element from there. `urn:mpeg:dash:resolve-to-zero:2013`
/// is no URL to fetch; as a `urn:` it is another scheme (`Carry::target`), so it stays as it is.
fn dash_xlink_attr(element: &str, attr: &str) -> bool {
    attr == "href"
        && matches!(
            element,
            "Period"
                | "AdaptationSet"
                | "Representation"
                | "SegmentList"
                | "EventStream"
                | "InbandEventStream"
        )
}

/// The elements whose text is a URL (`rewrite_dash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextUrl {
    BaseUrl,
    Location,
    /// Where the player fetches the MPD's patches (ISO/IEC 23009-1 5th ed. 5.15): resolved
    /// like the document's other URLs, so under the MPD's `BaseURL`s.
    PatchLocation,
    /// The DASH-IF content steering server (`<ContentSteering>`'s text), which dash.js and
    /// Shaka fetch before and during playback: an edge route may serve it.
    ContentSteering,
}

/// The `UTCTiming` schemes whose `@value` the player fetches over HTTP for its clock (ISO/IEC
/// 23009-1 5.8.5.7, and the 2012 spellings dash.js and Shaka still accept). `direct` and
/// `ntp`/`sntp` carry no URL, and `http-ntp` is NTP carried in HTTP that neither player
/// speaks: their values are left as written.
const UTC_HTTP_SCHEMES: &[&str] = &[
    "urn:mpeg:dash:utc:http-iso:2014",
    "urn:mpeg:dash:utc:http-xsdate:2014",
    "urn:mpeg:dash:utc:http-head:2014",
    "urn:mpeg:dash:utc:http-iso:2012",
    "urn:mpeg:dash:utc:http-xsdate:2012",
    "urn:mpeg:dash:utc:http-head:2012",
];

/// The descriptor schemes whose `@value` is the URL of another MPD the player goes on to (ISO/IEC
/// 23009-1 5.11: MPD chaining at the end of this one, MPD fallback when this one fails).
const CHAINING_SCHEMES: &[&str] = &["urn:mpeg:dash:chaining:2016", "urn:mpeg:dash:fallback:2016"];

/// Whether `element` with this `schemeIdUri` has a `@value` that is a list of URLs the player
/// fetches: a `UTCTiming` of an HTTP scheme, or an MPD chaining or fallback descriptor.
fn dash_scheme_value_is_url(element: &str, scheme: &str) -> bool {
    let scheme = scheme.trim();
    let known = |list: &[&str]| list.iter().any(|s| s.eq_ignore_ascii_case(scheme));
    match element {
        "UTCTiming" => known(UTC_HTTP_SCHEMES),
        "SupplementalProperty" | "EssentialProperty" => known(CHAINING_SCHEMES),
        _ => false,
    }
}

/// XML whitespace, which separates the URLs of a list-valued attribute (a `UTCTiming@value`
/// may name several servers, ISO/IEC 23009-1 5.8.5.7; dash.js tries them in turn).
fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a player may split a URL list at `c`: Unicode white space (JavaScript's `\s`, which
/// dash.js splits a `UTCTiming@value` on, is that and U+FEFF).
fn splits_urls(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// A byte of an XML name (NameChar, with every non-ASCII byte allowed).
fn xml_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':') || b >= 0x80
}

fn local_name(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

/// One element's place in the `BaseURL` hierarchy (MPD > Period > AdaptationSet >
/// Representation, ISO/IEC 23009-1 5.6): a relative URL resolves against the `BaseURL`s of its
/// element and of the elements around it.
struct Scope {
    parent: usize,
    /// The element has `BaseURL` children.
    has_base: bool,
    /// One of them is absolute and elsewhere.
    base_foreign: bool,
    /// One of them is relative (so inherits where the parent's lead).
    base_relative: bool,
    /// An element segment information belongs to (MPD, Period, AdaptationSet,
    /// Representation, SubRepresentation): what it gives, every representation below uses.
    level: bool,
}

/// The element whose representations use a segment URL given on `s`'s element: the nearest
/// enclosing `Scope::level` element (the document for none).
fn owner(scopes: &[Scope], mut s: usize) -> usize {
    while s != 0 && !scopes[s].level {
        s = scopes[s].parent;
    }
    s
}

/// An edit: bytes `[start, end)` become `new` (a range of the shared replacement buffer),
/// unless `relative_in` names a scope whose `BaseURL`s lead elsewhere (a relative URL under a
/// foreign `BaseURL` is foreign too), or with `below`, a scope any element inside which has
/// such `BaseURL`s.
struct Edit {
    start: usize,
    end: usize,
    new: std::ops::Range<usize>,
    relative_in: Option<usize>,
    /// A segment URL: resolved against the `BaseURL`s of each representation that uses it,
    /// which may lie below `relative_in` (ISO/IEC 23009-1 5.3.9: segment information given
    /// for an adaptation set or a period is inherited by its representations).
    below: bool,
    /// A segment template naming `$RepresentationID$`, which a player replaces with a
    /// representation's `id` as written.
    uses_id: bool,
}

/// The edits of one MPD, in document order, and what they put in: every replacement back to
/// back in one buffer (`Edit::new`), and one scratch URL, so no allocation per URL.
struct Edits<'c> {
    carry: &'c Carry,
    list: Vec<Edit>,
    repl: String,
    scratch: String,
}

impl Edits<'_> {
    /// The token for the URL at `span`: `url` is its value decoded (`None`: it cannot be) and
    /// `target` where it leads. No edit for a foreign URL or one the token leaves as it is.
    /// `quote` is the attribute value's (`None` in element text), `relative_in` the scope whose
    /// `BaseURL`s a relative URL resolves under, `segment` whether it is a segment URL
    /// (`Edit::below`, `Edit::uses_id`).
    fn add(
        &mut self,
        url: Option<&str>,
        target: Target,
        span: std::ops::Range<usize>,
        quote: Option<u8>,
        relative_in: Option<usize>,
        segment: bool,
    ) {
        let Some(url) = url.filter(|_| target != Target::Foreign) else {
            return;
        };
        self.scratch.clear();
        if !self
            .carry
            .push_with_token(url, Mode::Add, &mut self.scratch)
        {
            return;
        }
        let at = self.repl.len();
        xml_escape_into(&self.scratch, quote, &mut self.repl);
        self.list.push(Edit {
            start: span.start,
            end: span.end,
            new: at..self.repl.len(),
            relative_in: relative_in.filter(|_| target == Target::Relative),
            below: segment,
            uses_id: segment && url.contains("$RepresentationID$"),
        });
    }
}

/// One scan of the XML's tags (no tree is built): URL attributes and `BaseURL`/`Location`/
/// `PatchLocation`/`ContentSteering` text are collected as edits, in document order, then
/// applied in one pass into a buffer sized for them.
fn rewrite_dash(text: &str, carry: &Carry) -> Result<Option<String>, Oversized> {
    // A document type may declare entities, which the player's XML parser expands into text
    // or whole elements (`&cdn;` as a `BaseURL` on another host) that this scan of the tags as
    // written never sees. Every declaration of one is spelt `<!ENTITY` (a parameter entity's
    // too); MPDs have no use for them, so such a document is sent as it is: its players are
    // refused without the token rather than sent elsewhere with it.
    if memchr::memmem::find(text.as_bytes(), b"<!ENTITY").is_some() {
        tracing::warn!("MPD declares XML entities; sent without the token");
        return Ok(None);
    }
    let b = text.as_bytes();
    let mut found = Edits {
        carry,
        list: Vec::new(),
        repl: String::new(),
        scratch: String::new(),
    };
    // Scope 0 is the document: relative URLs there resolve against the MPD's own URL.
    let mut scopes = vec![Scope {
        parent: 0,
        has_base: false,
        base_foreign: false,
        base_relative: false,
        level: true,
    }];
    // The scopes of the open elements (bounded by the document's size: one per start tag).
    let mut open: Vec<usize> = Vec::new();
    let mut i = 0;
    // A `Location` leads elsewhere (see where it closes).
    let mut location_foreign = false;
    // A representation's `id` could change where a template leads (see where it is read).
    let mut risky_ids = false;
    // Where the text of an open BaseURL/Location/PatchLocation starts, which it is, and its
    // depth in `open`. Elements inside it do not end it: a player reads the element's whole
    // text content (`<BaseURL>https://other.example/<x/></BaseURL>` is that host to
    // mpd-parser), so it ends at its own end tag alone, with the markup in it.
    let mut text_from: Option<(usize, TextUrl, usize)> = None;
    while let Some(lt) = text[i..].find('<').map(|p| i + p) {
        let rest = &text[lt..];
        let skip_to = |end: &str| rest.find(end).map_or(text.len(), |p| lt + p + end.len());
        if rest.starts_with("<!--") {
            i = skip_to("-->");
            continue;
        }
        if rest.starts_with("<![CDATA[") {
            i = skip_to("]]>");
            continue;
        }
        // A processing instruction, or a declaration: players' parsers end them otherwise than
        // the standard where one holds a `>` early (dash.js ends `<?x ><BaseURL>...` at its
        // first `>`, and reads the BaseURL this would skip as part of it), or an internal
        // subset (`[...]`): such a document is sent as it is, without the token.
        if rest.starts_with("<?") || rest.starts_with("<!") {
            let end = if rest.starts_with("<?") { "?>" } else { ">" };
            let Some(body) = rest.find(end).map(|p| &rest[2..p.max(2)]) else {
                return Ok(None);
            };
            if body.contains('>') || (end == ">" && body.contains('[')) {
                tracing::warn!("MPD markup players read differently; sent without the token");
                return Ok(None);
            }
            i = skip_to(end);
            continue;
        }
        if rest.starts_with("</") {
            let closing = open.pop();
            let ends_text = text_from.is_some_and(|(_, _, depth)| depth == open.len());
            if let (Some((from, which, _)), Some(own)) = (text_from.take_if(|_| ends_text), closing)
            {
                let raw = &text[from..lt];
                let lead = raw.len() - raw.trim_start().len();
                let trimmed = raw.trim();
                // Markup inside the text (a comment, CDATA, a processing instruction) or a
                // reference this scan cannot decode is read by the player's XML parser
                // otherwise than here (`ht<!-- -->tps://other.example/` is that host to it),
                // so such a URL is not certainly this host: foreign.
                let url = if raw.contains('<') {
                    None
                } else {
                    xml_unescape(trimmed)
                };
                let target = url.as_deref().map_or(Target::Foreign, |u| carry.target(u));
                // A BaseURL belongs to its parent element's scope and resolves against the
                // grandparent's; a Location against the MPD's URL; a PatchLocation against
                // its parent's (the MPD's) BaseURLs.
                let parent = scopes[own].parent;
                let relative_in = match which {
                    TextUrl::BaseUrl => {
                        let p = &mut scopes[parent];
                        p.has_base = true;
                        p.base_foreign |= target == Target::Foreign;
                        p.base_relative |= target == Target::Relative;
                        Some(scopes[parent].parent)
                    }
                    TextUrl::Location => {
                        // dash.js resolves the document against its first `Location` (its
                        // `ManifestLoader` makes it the base URI on load): one elsewhere leads
                        // every relative URL of the document there.
                        location_foreign |= target == Target::Foreign;
                        None
                    }
                    // The steering server: dash.js and Shaka resolve it like the document's
                    // other URLs, under the MPD's BaseURLs.
                    TextUrl::PatchLocation | TextUrl::ContentSteering => Some(parent),
                };
                let start = from + lead;
                found.add(
                    url.as_deref(),
                    target,
                    start..start + trimmed.len(),
                    None,
                    relative_in,
                    false,
                );
            }
            i = skip_to(">");
            continue;
        }
        // A start tag: name, then attributes.
        let mut j = lt + 1;
        while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'/' && b[j] != b'>' {
            j += 1;
        }
        // A name of what XML names hold, or players end it elsewhere (dash.js reads
        // `<BaseURL=>` as a BaseURL, which this would see as another element): sent as it is.
        if !text[lt + 1..j].bytes().all(xml_name_byte) {
            tracing::warn!("MPD element name players read differently; sent without the token");
            return Ok(None);
        }
        let element = local_name(&text[lt + 1..j]);
        let scope = scopes.len();
        scopes.push(Scope {
            parent: open.last().copied().unwrap_or(0),
            has_base: false,
            base_foreign: false,
            base_relative: false,
            level: matches!(
                element,
                "MPD" | "Period" | "AdaptationSet" | "Representation" | "SubRepresentation"
            ),
        });
        let mut self_closing = false;
        // A descriptor's `schemeIdUri` and where its `value` lies (with its quote): which one
        // comes first is the document's choice, so the value is read once the tag is done.
        let mut scheme: Option<(usize, usize)> = None;
        let mut scheme_value: Option<(usize, usize)> = None;
        loop {
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j >= b.len() {
                break;
            }
            if b[j] == b'>' {
                j += 1;
                break;
            }
            if b[j] == b'/' {
                self_closing = true;
                j += 1;
                continue;
            }
            let name_start = j;
            while j < b.len() && b[j] != b'=' && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                j += 1;
            }
            let attr = local_name(&text[name_start..j]);
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if b.get(j) != Some(&b'=') {
                continue; // a bare name: not XML, copied as is
            }
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let Some(&quote) = b.get(j).filter(|q| **q == b'"' || **q == b'\'') else {
                continue;
            };
            let v_start = j + 1;
            let Some(v_end) = text[v_start..].find(quote as char).map(|p| v_start + p) else {
                j = b.len();
                break;
            };
            match attr {
                "schemeIdUri" => scheme = Some((v_start, v_end)),
                "value" => scheme_value = Some((v_start, v_end)),
                _ => {}
            }
            let segment = dash_url_attr(element, attr);
            let steering_proxy = element == "ContentSteering" && attr == "proxyServerURL";
            if segment || steering_proxy || dash_xlink_attr(element, attr) {
                // The token is percent-encoded (`Carry::new`), so it holds no `$` that a
                // SegmentTemplate would read as an identifier.
                // A value this scan cannot decode is not certainly this host (see above).
                let value = xml_unescape(&text[v_start..v_end]);
                let target = value
                    .as_deref()
                    .map_or(Target::Foreign, |v| carry.target(v.trim()));
                // A segment URL resolves under the BaseURLs of every representation that
                // uses it; a remote element's under those around the element it replaces
                // (its own are part of what it replaces); a steering proxy's under the
                // MPD's, as the steering server's own URL does.
                let relative_in = if segment {
                    owner(&scopes, scope)
                } else {
                    scopes[scope].parent
                };
                found.add(
                    value.as_deref(),
                    target,
                    v_start..v_end,
                    Some(quote),
                    Some(relative_in),
                    segment,
                );
            }
            if element == "Representation" && attr == "id" {
                // An `id` is put into `$RepresentationID$` as it is: a `:`, `/` or `\` (or
                // whitespace a URL parser drops) can make the template another host's URL
                // (`https://other.example`, or `/other.example` after a `/`).
                let id = xml_unescape(&text[v_start..v_end]);
                risky_ids |= id.as_deref().is_none_or(|id| {
                    id.chars().any(|c| {
                        matches!(c, ':' | '/' | '\\') || c.is_whitespace() || c.is_control()
                    })
                });
            }
            j = v_end + 1;
        }
        if let (Some((s0, s1)), Some((v0, v1))) = (scheme, scheme_value) {
            // A scheme this cannot decode is none the player knows either.
            let known =
                xml_unescape(&text[s0..s1]).is_some_and(|s| dash_scheme_value_is_url(element, &s));
            if known {
                // Relative URLs here resolve against the document (and its `BaseURL`s, for
                // Shaka): under those of the element the descriptor sits in.
                let relative_in = scopes[scope].parent;
                let mut k = v0;
                while k < v1 {
                    while k < v1 && is_xml_space(b[k]) {
                        k += 1;
                    }
                    let from = k;
                    while k < v1 && !is_xml_space(b[k]) {
                        k += 1;
                    }
                    if from == k {
                        break;
                    }
                    // Each URL of the list on its own. One this cannot decode, or that holds
                    // a space a player splits at and this does not (a reference to one, or a
                    // space outside XML's: dash.js splits on JavaScript's `\s`, which has
                    // U+00A0, U+2028, U+FEFF...), is two URLs to the player, one here: not
                    // certainly this host.
                    let url = xml_unescape(&text[from..k]).filter(|u| !u.chars().any(splits_urls));
                    let target = url.as_deref().map_or(Target::Foreign, |u| carry.target(u));
                    // The value's quote is the byte before it.
                    found.add(
                        url.as_deref(),
                        target,
                        from..k,
                        Some(b[v0 - 1]),
                        Some(relative_in),
                        false,
                    );
                }
            }
        }
        if !self_closing {
            open.push(scope);
        }
        let which = match element {
            "BaseURL" => Some(TextUrl::BaseUrl),
            "Location" => Some(TextUrl::Location),
            "PatchLocation" => Some(TextUrl::PatchLocation),
            "ContentSteering" => Some(TextUrl::ContentSteering),
            _ => None,
        };
        if text_from.is_none() {
            text_from = which
                .filter(|_| !self_closing)
                .map(|w| (j.min(text.len()), w, open.len() - 1));
        }
        i = j.min(text.len());
        if i <= lt {
            break; // no progress: malformed tail
        }
    }
    // Which scopes' BaseURLs lead elsewhere: parents come before their children.
    let mut foreign = vec![false; scopes.len()];
    foreign[0] = location_foreign;
    for (k, sc) in scopes.iter().enumerate().skip(1) {
        let inherited = foreign[sc.parent];
        foreign[k] = if sc.has_base {
            sc.base_foreign || (sc.base_relative && inherited)
        } else {
            inherited
        };
    }
    // Which scopes have a foreign scope inside them (themselves included): children come
    // after their parents.
    let mut below = foreign.clone();
    for k in (1..scopes.len()).rev() {
        if below[k] {
            below[scopes[k].parent] = true;
        }
    }
    let Edits {
        list: mut edits,
        repl,
        ..
    } = found;
    edits.retain(|e| match e.relative_in {
        _ if e.uses_id && risky_ids => false,
        None => true,
        Some(s) if e.below => !below[s],
        Some(s) => !foreign[s],
    });
    if edits.is_empty() {
        return Ok(None);
    }
    let added: usize = edits.iter().map(|e| e.new.len()).sum();
    if text.len().saturating_add(added) > MAX_OUTPUT {
        return Err(Oversized);
    }
    debug_assert!(
        edits.windows(2).all(|w| w[0].end <= w[1].start),
        "edits are collected in document order"
    );
    let mut out = String::with_capacity(text.len() + added);
    let mut at = 0;
    for e in edits {
        out.push_str(&text[at..e.start]);
        out.push_str(&repl[e.new]);
        at = e.end;
    }
    out.push_str(&text[at..]);
    Ok(Some(out))
}

/// The text of an XML attribute value or text node with its references decoded, or `None`
/// when an `&` does not open one this decodes exactly as an XML parser does: the five
/// predefined entities and character references of any length (`&#0000000058;` is `:`).
/// Anything else (an entity of the document's own DTD, a stray `&`) the player's parser reads
/// otherwise or not at all, so the caller cannot know where the URL leads.
fn xml_unescape(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !s.contains('&') {
        return Some(s.into());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        let semi = after.find(';')?;
        let ent = &after[..semi];
        let ch = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let (digits, radix) = match ent.strip_prefix("#x") {
                    Some(h) => (h, 16),
                    None => (ent.strip_prefix('#')?, 10),
                };
                if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                    return None;
                }
                // Leading zeros carry no value; what is left of a valid character is short.
                let digits = digits.trim_start_matches('0');
                let n = u32::from_str_radix(if digits.is_empty() { "0" } else { digits }, radix)
                    .ok()?;
                char::from_u32(n).filter(|&c| c != '\0')?
            }
        };
        out.push(ch);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(out.into())
}

/// Appends `s` to `out`, escaped for XML text, or for an attribute quoted with `quote`. Runs
/// without a special byte are copied whole (a URL is mostly such a run).
fn xml_escape_into(s: &str, quote: Option<u8>, out: &mut String) {
    let mut from = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let entity = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' if quote == Some(b'"') => "&quot;",
            b'\'' if quote == Some(b'\'') => "&apos;",
            _ => continue,
        };
        // `b` is ASCII, so `i` and `i + 1` are character boundaries.
        out.push_str(&s[from..i]);
        out.push_str(entity);
        from = i + 1;
    }
    out.push_str(&s[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carry() -> Carry {
        Carry::new("hdnts", "exp=9~acl=/*~hmac=ab", "cdn.example:8080")
    }

    /// `m` rewritten, which must change it and fit.
    fn rewritten(kind: Kind, m: &str, c: &Carry) -> String {
        let out = rewrite(kind, m.as_bytes(), c)
            .expect("fits")
            .expect("changed");
        String::from_utf8(out).expect("utf8")
    }

    const T: &str = "hdnts=exp=9~acl=/*~hmac=ab";

    #[test]
    fn uris_get_the_parameter_appended_correctly() {
        let c = carry();
        assert_eq!(c.add_to("a.ts").as_deref(), Some(&*format!("a.ts?{T}")));
        assert_eq!(
            c.add_to("a.ts?x=1").as_deref(),
            Some(&*format!("a.ts?x=1&{T}"))
        );
        assert_eq!(c.add_to("a.ts?").as_deref(), Some(&*format!("a.ts?{T}")));
        assert_eq!(
            c.add_to("a.ts#t=1").as_deref(),
            Some(&*format!("a.ts?{T}#t=1"))
        );
        assert_eq!(
            c.add_to("http://CDN.example:8080/v/a.ts").as_deref(),
            Some(&*format!("http://CDN.example:8080/v/a.ts?{T}"))
        );
        assert_eq!(
            c.add_to("//cdn.example:8080/a.ts").as_deref(),
            Some(&*format!("//cdn.example:8080/a.ts?{T}"))
        );
        for untouched in [
            "https://other.example/a.ts",
            "//other.example/a.ts",
            "skd://key-id",
            "data:text/plain;base64,AAAA",
            "https://other.example/a.ts?hdnts=someone-elses",
            "",
        ] {
            assert_eq!(c.add_to(untouched), None, "{untouched}");
        }
        let odd = Carry::new("hdnts", "a\"b<c>&d", "h");
        assert_eq!(odd.add_to("x").as_deref(), Some("x?hdnts=a%22b%3Cc%3E%26d"));
    }

    #[test]
    fn a_stored_value_of_the_parameter_is_replaced_never_kept() {
        let c = carry();
        for (stored, want) in [
            ("a.ts?hdnts=viewer1", format!("a.ts?{T}")),
            ("a.ts?x=1&hdnts=viewer1&y=2", format!("a.ts?x=1&{T}&y=2")),
            ("a.ts?HDNTS=viewer1#t=1", format!("a.ts?{T}#t=1")),
            ("a.ts?hdnts", format!("a.ts?{T}")),
            ("a.ts?hdnts=one&x=1&hdnts=two", format!("a.ts?{T}&x=1")),
            (
                "//cdn.example:8080/a.ts?hdnts=viewer1",
                format!("//cdn.example:8080/a.ts?{T}"),
            ),
            ("a.ts?xhdnts=1", format!("a.ts?xhdnts=1&{T}")),
        ] {
            assert_eq!(c.add_to(stored).as_deref(), Some(&*want), "{stored}");
        }
        // Without a token of its own (a cookie or header viewer on a `forward` route) the
        // viewer gets the stored values taken out, and nothing added.
        let none = Carry::without("hdnts", "cdn.example:8080");
        for (stored, want) in [
            ("a.ts?hdnts=viewer1", Some("a.ts")),
            ("a.ts?x=1&hdnts=viewer1#f", Some("a.ts?x=1#f")),
            ("a.ts?hdnts=a&x=1&hdnts=b", Some("a.ts?x=1")),
            ("a.ts?x=1", None),
            ("a.ts", None),
            ("https://other.example/a.ts?hdnts=viewer1", None),
        ] {
            assert_eq!(none.add_to(stored).as_deref(), want, "{stored}");
        }
        let m = "#EXTM3U\n#EXT-X-MAP:URI=\"i.mp4?hdnts=v1\"\n#EXTINF:4,\ns.ts?hdnts=v1\n";
        let out = rewrite(Kind::Hls, m.as_bytes(), &none)
            .expect("fits")
            .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "#EXTM3U\n#EXT-X-MAP:URI=\"i.mp4\"\n#EXTINF:4,\ns.ts\n"
        );
        let mpd = r#"<MPD><BaseURL>v/?a=1&amp;hdnts=v1</BaseURL><SegmentTemplate media="s.m4s?hdnts=v1"/></MPD>"#;
        let out = rewrite(Kind::Dash, mpd.as_bytes(), &c)
            .expect("fits")
            .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!(
                r#"<MPD><BaseURL>v/?a=1&amp;{T}</BaseURL><SegmentTemplate media="s.m4s?{T}"/></MPD>"#
            )
        );
    }

    #[test]
    fn steered_variants_get_no_token_but_keep_no_stored_one_on_a_forward_route() {
        let c = carry().forwarded(true);
        let m = "#EXTM3U\n\
#EXT-X-CONTENT-STEERING:SERVER-URI=\"steer.json\"\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"en.m3u8?hdnts=v1\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=1\n\
v.m3u8?hdnts=v1\n\
#EXT-X-STREAM-INF:BANDWIDTH=2\n\
w.m3u8\n";
        let out = rewritten(Kind::Hls, m, &c);
        for want in [
            format!("SERVER-URI=\"steer.json?{T}\""),
            format!("URI=\"en.m3u8?{T}\""),
            format!("\nv.m3u8?{T}\n"),
            "\nw.m3u8\n".to_string(),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
        // Elsewhere the origin never saw a viewer's token: a steered variant's value is its
        // own (perhaps for another pathway's CDN) and stays as written.
        let out = rewritten(Kind::Hls, m, &carry());
        for want in [
            format!("SERVER-URI=\"steer.json?{T}\""),
            "URI=\"en.m3u8?hdnts=v1\"".to_string(),
            "\nv.m3u8?hdnts=v1\n".to_string(),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
    }

    #[test]
    fn interstitial_assets_get_the_token_and_other_daterange_attributes_do_not() {
        let c = carry();
        let m = "#EXTM3U\n\
#EXT-X-DATERANGE:ID=\"ad1\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:00Z\",X-ASSET-URI=\"ads/ad1.m3u8\"\n\
#EXT-X-DATERANGE:ID=\"ad2\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:02Z\",X-ASSET-LIST=\"/ads/list.json?p=1\",X-COM-EXAMPLE-URI=\"x.json\"\n\
#EXT-X-DATERANGE:ID=\"ad3\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:04Z\",X-ASSET-URI=\"https://ads.other.example/a.m3u8\"\n\
#EXT-X-DATERANGE:ID=\"d\",START-DATE=\"2024-01-01T00:00:00Z\",URI=\"not-a-daterange-uri\"\n\
#EXTINF:4,\ns.ts\n";
        let out = rewritten(Kind::Hls, m, &c);
        for want in [
            format!("X-ASSET-URI=\"ads/ad1.m3u8?{T}\""),
            format!("X-ASSET-LIST=\"/ads/list.json?p=1&{T}\",X-COM-EXAMPLE-URI=\"x.json\""),
            "X-ASSET-URI=\"https://ads.other.example/a.m3u8\"".to_string(),
            "URI=\"not-a-daterange-uri\"".to_string(),
            format!("\ns.ts?{T}\n"),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
    }

    #[test]
    fn patch_locations_and_remote_elements_get_the_token_where_they_stay_here() {
        let c = carry();
        let m = r#"<MPD xmlns:xlink="http://www.w3.org/1999/xlink">
  <PatchLocation ttl="60">patch.mpp</PatchLocation>
  <Period id="0" xlink:href="period0.xml" xlink:actuate="onLoad"/>
  <Period id="1" xlink:href="urn:mpeg:dash:resolve-to-zero:2013"/>
  <Period id="2" xlink:href="https://other.example/p.xml"/>
  <Period id="3">
    <AdaptationSet x:href="as.xml" xmlns:x="http://www.w3.org/1999/xlink"/>
    <AdaptationSet><Representation id="r"><SegmentList xlink:href="list.xml"/></Representation></AdaptationSet>
  </Period>
  <Period id="4">
    <BaseURL>https://other.example/four/</BaseURL>
    <AdaptationSet xlink:href="far.xml"/>
  </Period>
</MPD>"#;
        let out = rewritten(Kind::Dash, m, &c);
        for want in [
            format!("<PatchLocation ttl=\"60\">patch.mpp?{T}</PatchLocation>"),
            format!("xlink:href=\"period0.xml?{T}\""),
            "xlink:href=\"urn:mpeg:dash:resolve-to-zero:2013\"".to_string(),
            "xlink:href=\"https://other.example/p.xml\"".to_string(),
            format!("x:href=\"as.xml?{T}\""),
            format!("xlink:href=\"list.xml?{T}\""),
            "xlink:href=\"far.xml\"".to_string(),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
        // Under an MPD whose BaseURL is elsewhere, a relative PatchLocation is elsewhere too.
        let far = r#"<MPD><BaseURL>https://other.example/</BaseURL><PatchLocation>p.mpp</PatchLocation></MPD>"#;
        assert_eq!(rewrite(Kind::Dash, far.as_bytes(), &c), Ok(None));
    }

    #[test]
    fn clock_steering_and_chained_mpd_urls_get_the_token_where_they_stay_here() {
        let c = carry();
        let m = r#"<MPD>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="http://cdn.example:8080/time"/>
  <UTCTiming value='/t2 https://other.example/t3	t4?a=1&amp;b=2' schemeIdUri="urn:mpeg:dash:utc:http-xsdate:2014"/>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-head:2012" value="h"/>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:direct:2014" value="2024-01-01T00:00:00Z"/>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-ntp:2014" value="ntp"/>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="a&#32;b"/>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="/n&#160;https://other.example/n"/>
  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="/l&#x2028;https://other.example/l"/>
  <ContentSteering proxyServerURL="/proxy" defaultServiceLocation="a">steer.json</ContentSteering>
  <SupplementalProperty schemeIdUri="urn:mpeg:dash:chaining:2016" value="next.mpd"/>
  <EssentialProperty schemeIdUri="urn:mpeg:dash:fallback:2016" value="https://other.example/fb.mpd"/>
  <SupplementalProperty schemeIdUri="urn:example:other" value="x.mpd"/>
</MPD>"#;
        let out = rewritten(Kind::Dash, m, &c);
        for want in [
            format!("value=\"http://cdn.example:8080/time?{T}\""),
            format!("value='/t2?{T} https://other.example/t3\tt4?a=1&amp;b=2&amp;{T}'"),
            format!("value=\"h?{T}\""),
            "value=\"2024-01-01T00:00:00Z\"".to_string(),
            "value=\"ntp\"".to_string(),
            "value=\"a&#32;b\"".to_string(),
            // dash.js splits at U+00A0 and U+2028: two URLs, one on another host.
            "value=\"/n&#160;https://other.example/n\"".to_string(),
            "value=\"/l&#x2028;https://other.example/l\"".to_string(),
            format!("proxyServerURL=\"/proxy?{T}\""),
            format!(">steer.json?{T}</ContentSteering>"),
            format!("value=\"next.mpd?{T}\""),
            "value=\"https://other.example/fb.mpd\"".to_string(),
            "value=\"x.mpd\"".to_string(),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
        // The same as written, not referenced: a raw U+00A0 between them.
        let raw = "<MPD><UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" \
value=\"/r\u{a0}https://other.example/r\"/></MPD>";
        assert_eq!(rewrite(Kind::Dash, raw.as_bytes(), &c), Ok(None));
        // Under an MPD whose BaseURL is elsewhere, relative ones are elsewhere too.
        let far = r#"<MPD><BaseURL>https://other.example/</BaseURL><UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="t"/><ContentSteering>s.json</ContentSteering></MPD>"#;
        assert_eq!(rewrite(Kind::Dash, far.as_bytes(), &c), Ok(None));
    }

    #[test]
    fn every_hls_uri_carries_the_token_and_nothing_else_changes() {
        let m = "#EXTM3U\r\n#EXT-X-VERSION:9\r\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"audio/en.m3u8\"\r\n\
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI=\"if.m3u8\"\r\n\
#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"k.key\"\r\n\
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",AUDIO=\"a\"\r\n\
v/720.m3u8?q=1\r\n\
#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"10@0\"\r\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"https://keys.other/k\",IV=0x1\r\n\
#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://abc\"\r\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"key.key\"\r\n\
#EXTINF:4.0,\r\n\
seg1.ts\r\n\
#EXT-X-PART:DURATION=1.0,URI=\"p1.mp4\",INDEPENDENT=YES\r\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p2.mp4\"\r\n\
#EXT-X-RENDITION-REPORT:URI=\"../b/x.m3u8\",LAST-MSN=1\r\n\
# a comment\r\n";
        let out = rewritten(Kind::Hls, m, &carry());
        for want in [
            format!("URI=\"audio/en.m3u8?{T}\""),
            format!("URI=\"if.m3u8?{T}\""),
            format!("URI=\"k.key?{T}\""),
            format!("\r\nv/720.m3u8?q=1&{T}\r\n"),
            format!("URI=\"init.mp4?{T}\",BYTERANGE=\"10@0\""),
            "URI=\"https://keys.other/k\",IV=0x1".to_string(),
            "URI=\"skd://abc\"".to_string(),
            format!("URI=\"key.key?{T}\""),
            format!("\r\nseg1.ts?{T}\r\n"),
            format!("URI=\"p1.mp4?{T}\",INDEPENDENT=YES"),
            format!("URI=\"p2.mp4?{T}\""),
            format!("URI=\"../b/x.m3u8?{T}\",LAST-MSN=1"),
            "CODECS=\"avc1.4d401f,mp4a.40.2\",AUDIO=\"a\"".to_string(),
            "# a comment\r\n".to_string(),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
        // Only the token was added.
        assert_eq!(
            out.replace(&format!("?{T}"), "")
                .replace(&format!("&{T}"), ""),
            m
        );
    }

    #[test]
    fn every_dash_url_carries_the_token_and_the_rest_is_byte_identical() {
        let m = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- <BaseURL>commented/</BaseURL> -->
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">
  <BaseURL> media/ </BaseURL>
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate timescale="1000" initialization="v/init-$RepresentationID$.mp4" media='v/$RepresentationID$-$Number%05d$.m4s?a=1&amp;b=2' index="idx.sidx"/>
    </AdaptationSet>
    <AdaptationSet mimeType="video/mp4">
      <Representation id="1080" bandwidth="2">
        <BaseURL>https://other.example/v/</BaseURL>
        <SegmentList><SegmentURL media="f1.m4s"/></SegmentList>
      </Representation>
    </AdaptationSet>
    <AdaptationSet mimeType="video/mp4">
      <Representation id="720" bandwidth="1">
        <SegmentList>
          <Initialization sourceURL="init.mp4"/>
          <SegmentURL media="s1.m4s" index="s1.idx"/>
        </SegmentList>
        <SegmentBase><RepresentationIndex sourceURL="ri.sidx"/></SegmentBase>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"#;
        let out = rewritten(Kind::Dash, m, &carry());
        for want in [
            format!("<BaseURL> media/?{T} </BaseURL>"),
            format!("initialization=\"v/init-$RepresentationID$.mp4?{T}\""),
            format!("media='v/$RepresentationID$-$Number%05d$.m4s?a=1&amp;b=2&amp;{T}'"),
            format!("index=\"idx.sidx?{T}\""),
            "<BaseURL>https://other.example/v/</BaseURL>".to_string(),
            "<SegmentURL media=\"f1.m4s\"/>".to_string(),
            format!("sourceURL=\"init.mp4?{T}\""),
            format!("<SegmentURL media=\"s1.m4s?{T}\" index=\"s1.idx?{T}\"/>"),
            format!("sourceURL=\"ri.sidx?{T}\""),
            "<!-- <BaseURL>commented/</BaseURL> -->".to_string(),
        ] {
            assert!(out.contains(&want), "{want} missing from:\n{out}");
        }
        let stripped = out
            .replace(&format!("&amp;{T}"), "")
            .replace(&format!("?{T}"), "");
        assert_eq!(stripped, m);
    }

    #[test]
    fn hostile_manifests_do_not_panic() {
        let c = carry();
        for m in [
            "<",
            "<a",
            "<a b",
            "<a b=",
            "<a b=\"",
            "<BaseURL>x",
            "<!--",
            "<![CDATA[",
            "<?x",
            "#EXT-X-KEY:URI=\"",
            "#EXT-X-KEY:URI",
            "#EXT-X-MAP:",
            "\u{0}\n\n",
        ] {
            let _ = rewrite(Kind::Dash, m.as_bytes(), &c);
            let _ = rewrite(Kind::Hls, m.as_bytes(), &c);
        }
        assert_eq!(rewrite(Kind::Hls, &[0xff, 0xfe], &c), Ok(None));
    }

    #[test]
    fn uris_a_browser_reads_as_another_host_never_carry_the_token() {
        let c = carry();
        // WHATWG URL parsing: `\` is `/`, tabs and newlines vanish, C0 controls are trimmed.
        for foreign in [
            "\\\\other.example/a.ts",
            "/\\other.example/a.ts",
            "/\t/other.example/a.ts",
            "\u{1}//other.example/a.ts",
            "http:\\\\other.example/a.ts",
            "https://cdn.example:8080@other.example/a.ts",
            "https://other.example\\@cdn.example:8080/a.ts",
            "http:other.example/a.ts",
            "javascript:alert(1)",
            "data:,x",
        ] {
            assert_eq!(c.add_to(foreign), None, "{foreign:?}");
            let m = format!("#EXTM3U\n#EXT-X-MAP:URI=\"{foreign}\"\n#EXTINF:4,\n{foreign}\n");
            assert_eq!(
                rewrite(Kind::Hls, m.as_bytes(), &c),
                Ok(None),
                "{foreign:?}"
            );
        }
        assert!(c.add_to("HTTPS://CDN.EXAMPLE:8080/a.ts").is_some());
    }

    #[test]
    fn hls_variables_that_could_name_another_host_keep_the_token_out() {
        let c = carry();
        let m = "#EXTM3U\n\
#EXT-X-DEFINE:NAME=\"far\",VALUE=\"https://other.example\"\n\
#EXT-X-DEFINE:NAME=\"dir\",VALUE=\"v1\"\n\
#EXT-X-DEFINE:IMPORT=\"base\"\n\
#EXTINF:4,\n{$far}/a.ts\n\
#EXTINF:4,\n{$base}/b.ts\n\
#EXTINF:4,\n/{$base}/c.ts\n\
#EXTINF:4,\n{$dir}/d.ts\n\
#EXTINF:4,\nseg/{$base}.ts\n\
#EXT-X-MAP:URI=\"{$base}init.mp4\"\n";
        let out = rewritten(Kind::Hls, m, &c);
        for kept in [
            "\n{$far}/a.ts\n",
            "\n{$base}/b.ts\n",
            "\n/{$base}/c.ts\n",
            "URI=\"{$base}init.mp4\"",
        ] {
            assert!(out.contains(kept), "{kept:?} got a token:\n{out}");
        }
        for tokenised in [
            format!("\n{{$dir}}/d.ts?{T}\n"),
            format!("\nseg/{{$base}}.ts?{T}\n"),
        ] {
            assert!(out.contains(&tokenised), "{tokenised:?} missing:\n{out}");
        }
    }

    #[test]
    fn xml_references_decode_as_a_parser_reads_them_or_not_at_all() {
        let un = |s| xml_unescape(s).map(|c| c.into_owned());
        assert_eq!(
            un("a&amp;b&#58;&#x3A;&#0000000058;").as_deref(),
            Some("a&b:::")
        );
        for undecodable in [
            "&cdn;",
            "a&b",
            "&#;",
            "&#x;",
            "&#X3A;",
            "&#0;",
            "&#99999999999;",
        ] {
            assert_eq!(un(undecodable), None, "{undecodable}");
        }
    }

    #[test]
    fn relative_dash_urls_under_a_foreign_base_url_never_carry_the_token() {
        let c = carry();
        let m = r#"<MPD>
  <BaseURL>https://other.example/root/</BaseURL>
  <Period id="far">
    <AdaptationSet><SegmentTemplate media="a-$Number$.m4s" initialization="a-init.mp4"/>
      <Representation id="r"><BaseURL>sub/</BaseURL><SegmentList><SegmentURL media="x.m4s"/></SegmentList></Representation>
    </AdaptationSet>
  </Period>
  <Period id="back">
    <BaseURL>http://cdn.example:8080/here/</BaseURL>
    <AdaptationSet><SegmentTemplate media="b-$Number$.m4s"/></AdaptationSet>
  </Period>
  <Period id="mixed">
    <BaseURL>https://cdn.example:8080/one/</BaseURL>
    <BaseURL>https://other.example/two/</BaseURL>
    <AdaptationSet><SegmentTemplate media="c-$Number$.m4s"/></AdaptationSet>
  </Period>
</MPD>"#;
        let out = rewritten(Kind::Dash, m, &c);
        for kept in [
            "media=\"a-$Number$.m4s\"",
            "initialization=\"a-init.mp4\"",
            "<BaseURL>sub/</BaseURL>",
            "media=\"x.m4s\"",
            "<BaseURL>https://other.example/two/</BaseURL>",
            "media=\"c-$Number$.m4s\"",
        ] {
            assert!(out.contains(kept), "{kept} got a token:\n{out}");
        }
        for tokenised in [
            format!("media=\"b-$Number$.m4s?{T}\""),
            format!("<BaseURL>https://cdn.example:8080/one/?{T}</BaseURL>"),
        ] {
            assert!(out.contains(&tokenised), "{tokenised} missing:\n{out}");
        }
    }

    #[test]
    fn quotes_newlines_and_hashes_in_uris_stay_inside_their_line_and_attribute() {
        let c = Carry::new("hdnts", "v\"a\nl#ue", "cdn.example:8080");
        let m = "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"ey.key\",IV=0x1\n#EXT-X-MAP:URI=\"i.mp4#frag\"\n#EXTINF:4,\nseg.ts#t=1\n#EXTINF:4,\nline\rwith-cr.ts\n";
        let out = rewritten(Kind::Hls, m, &c);
        let token = "hdnts=v%22a%0Al%23ue";
        assert!(
            out.contains(&format!("URI=\"i.mp4?{token}#frag\"")),
            "{out}"
        );
        assert!(out.contains(&format!("\nseg.ts?{token}#t=1\n")), "{out}");
        // A quote inside a quoted value: players disagree where it ends, so no token.
        assert!(
            out.contains("#EXT-X-KEY:METHOD=AES-128,URI=\"k\"ey.key\",IV=0x1\n"),
            "{out}"
        );
        // The token adds no line: as many lines as before.
        assert_eq!(out.lines().count(), m.lines().count());
    }

    #[test]
    fn uris_players_read_as_another_host_get_no_token() {
        let c = carry();
        let m = "#EXTM3U\n#EXT-X-MAP:URI=\"https://evil.example/p\"z,URI=\"init.mp4\"\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"https://evil.example/k\"x,URI=\"key.bin\"\n\
#EXTINF:4,\n1080p:seg1.ts\n#EXTINF:4,\nseg2.ts\n";
        let out = rewritten(Kind::Hls, m, &c);
        for kept in [
            "#EXT-X-MAP:URI=\"https://evil.example/p\"z,URI=\"init.mp4\"\n",
            "#EXT-X-KEY:METHOD=AES-128,URI=\"https://evil.example/k\"x,URI=\"key.bin\"\n",
            "\n1080p:seg1.ts\n",
        ] {
            assert!(out.contains(kept), "{kept:?} changed:\n{out}");
        }
        assert!(out.contains(&format!("\nseg2.ts?{T}\n")), "{out}");
    }

    #[test]
    fn a_huge_manifest_is_rewritten_into_one_buffer_or_refused_when_too_large() {
        let c = carry();
        let mut m = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n");
        for n in 0..1800 {
            m.push_str(&format!("#EXTINF:4.000,\nseg-{n:05}.ts\n"));
        }
        let out = rewrite(Kind::Hls, m.as_bytes(), &c)
            .expect("fits")
            .expect("changed");
        assert_eq!(out.len(), m.len() + 1800 * (T.len() + 1));
        // One-byte URI lines and a long token: past MAX_OUTPUT the manifest is `Oversized`.
        let long = Carry::new("hdnts", &"x".repeat(8 << 10), "h");
        let lines = format!("#EXTM3U\n{}", "a\n".repeat(4096));
        assert_eq!(rewrite(Kind::Hls, lines.as_bytes(), &long), Err(Oversized));
        let mpd = format!("<MPD>{}</MPD>", "<SegmentURL media=\"a\"/>".repeat(4096));
        assert_eq!(rewrite(Kind::Dash, mpd.as_bytes(), &long), Err(Oversized));
    }
}
