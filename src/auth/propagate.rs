//! Token propagation through manifests: hls.js and dash.js resolve child URIs against the
//! manifest's URL but do not copy its query, so a viewer holding a query token would be refused
//! on every child request. The manifest a tokenised viewer gets has the same `param=token` added
//! to every same-host URI (relative, scheme-relative or absolute on the request's host; other
//! hosts and schemes such as `skd:` or `data:` never see the token).
//!
//! HLS is rewritten by a line scan (URI lines, and the quoted `URI` attributes of the tags that
//! carry one); DASH by a scan of the XML's tags (`BaseURL` and `Location` text, the URL
//! attributes of `SegmentTemplate`, `SegmentURL`, `Initialization` and `RepresentationIndex`),
//! skipping comments, CDATA and processing instructions. Everything else stays byte-identical.

use crate::auth::source::query_value;

/// A manifest format that can carry tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hls,
    Dash,
}

impl Kind {
    /// By `Content-Type`, else by the path's extension.
    pub fn of(path: &str, content_type: Option<&str>) -> Option<Kind> {
        let ct = content_type
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match ct.as_deref() {
            Some(
                "application/vnd.apple.mpegurl"
                | "application/x-mpegurl"
                | "audio/mpegurl"
                | "audio/x-mpegurl",
            ) => return Some(Kind::Hls),
            Some("application/dash+xml") => return Some(Kind::Dash),
            _ => {}
        }
        let ext = path.rsplit('/').next()?.rsplit_once('.')?.1;
        if ext.eq_ignore_ascii_case("m3u8") {
            Some(Kind::Hls)
        } else if ext.eq_ignore_ascii_case("mpd") {
            Some(Kind::Dash)
        } else {
            None
        }
    }
}

/// The token to add and where it may go.
#[derive(Debug, Clone)]
pub struct Carry {
    param: String,
    /// The token as it will be written: the viewer's query value with anything unsafe in a URI
    /// (or in a quoted HLS attribute) percent-encoded.
    value: String,
    /// The request's host (`host[:port]`), lower case: absolute URIs elsewhere are left alone.
    host: String,
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
            value,
            host: host.to_ascii_lowercase(),
        }
    }

    /// `uri` with the token added, or `None` when it must stay as it is (another host, another
    /// scheme, empty, or already carrying the parameter).
    pub fn add_to(&self, uri: &str) -> Option<String> {
        let uri = uri.trim();
        if uri.is_empty() || !self.same_host(uri) {
            return None;
        }
        let (base, frag) = match uri.find('#') {
            Some(i) => (&uri[..i], &uri[i..]),
            None => (uri, ""),
        };
        let sep = match base.find('?') {
            Some(i) => {
                if query_value(&base[i + 1..], &self.param).is_some() {
                    return None;
                }
                if base.ends_with('?') || base.ends_with('&') {
                    ""
                } else {
                    "&"
                }
            }
            None => "?",
        };
        Some(format!("{base}{sep}{}={}{frag}", self.param, self.value))
    }

    fn same_host(&self, uri: &str) -> bool {
        let rest = if let Some(r) = uri.strip_prefix("//") {
            r
        } else {
            let scheme_end = uri.find(':');
            let path_start = uri.find(['/', '?', '#']).unwrap_or(uri.len());
            match scheme_end {
                Some(i) if i < path_start && is_scheme(&uri[..i]) => {
                    let scheme = uri[..i].to_ascii_lowercase();
                    match (scheme.as_str(), uri[i + 1..].strip_prefix("//")) {
                        ("http" | "https", Some(r)) => r,
                        _ => return false,
                    }
                }
                _ => return true, // relative
            }
        };
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let authority = authority.to_ascii_lowercase();
        let bare = |a: &str| {
            a.strip_suffix(":80")
                .or_else(|| a.strip_suffix(":443"))
                .unwrap_or(a)
                .to_string()
        };
        !authority.contains('@') && bare(&authority) == bare(&self.host)
    }
}

fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// The manifest with the token added to its URIs; `None` if nothing changed (or the body is not
/// text).
pub fn rewrite(kind: Kind, body: &[u8], carry: &Carry) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let out = match kind {
        Kind::Hls => rewrite_hls(text, carry),
        Kind::Dash => rewrite_dash(text, carry),
    };
    (out != text).then(|| out.into_bytes())
}

/// Tags whose attribute lists carry a quoted `URI` (RFC 8216 and its 2nd edition draft).
const HLS_URI_TAGS: &[&str] = &[
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

fn rewrite_hls(text: &str, carry: &Carry) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for piece in text.split_inclusive('\n') {
        let (line, eol) = split_eol(piece);
        if line.trim().is_empty() {
            out.push_str(piece);
        } else if let Some(tag) = line.strip_prefix('#') {
            match tag.split_once(':') {
                Some((name, attrs)) if HLS_URI_TAGS.contains(&name) => {
                    out.push('#');
                    out.push_str(name);
                    out.push(':');
                    out.push_str(&rewrite_attr_list(attrs, carry));
                    out.push_str(eol);
                }
                _ => out.push_str(piece),
            }
        } else {
            match carry.add_to(line) {
                Some(uri) => {
                    // Keep any leading/trailing blanks the line had around the URI.
                    let start = line.len() - line.trim_start().len();
                    let end = line.trim_end().len();
                    out.push_str(&line[..start]);
                    out.push_str(&uri);
                    out.push_str(&line[end..]);
                    out.push_str(eol);
                }
                None => out.push_str(piece),
            }
        }
    }
    out
}

fn split_eol(piece: &str) -> (&str, &str) {
    let body = piece.trim_end_matches(['\n', '\r']);
    (body, &piece[body.len()..])
}

/// An HLS attribute list with the quoted URI attributes rewritten; anything it cannot read is
/// copied as is.
fn rewrite_attr_list(attrs: &str, carry: &Carry) -> String {
    let b = attrs.as_bytes();
    let mut out = String::with_capacity(attrs.len() + 64);
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
            match HLS_URI_ATTRS
                .contains(&name)
                .then(|| carry.add_to(value))
                .flatten()
            {
                Some(v) => out.push_str(&v),
                None => out.push_str(value),
            }
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
    out
}

/// Elements whose text is a URL.
const DASH_TEXT_URLS: &[&str] = &["BaseURL", "Location"];

/// The URL attributes, by element.
fn dash_url_attr(element: &str, attr: &str) -> bool {
    matches!(
        (element, attr),
        ("SegmentTemplate", "media" | "initialization" | "index")
            | ("SegmentURL", "media" | "index")
            | ("Initialization" | "RepresentationIndex", "sourceURL")
    )
}

fn local_name(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

fn rewrite_dash(text: &str, carry: &Carry) -> String {
    let b = text.as_bytes();
    // (start, end, replacement) in document order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 0;
    // Where the text of an open BaseURL/Location starts.
    let mut text_from: Option<usize> = None;
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
        if rest.starts_with("<?") {
            i = skip_to("?>");
            continue;
        }
        if rest.starts_with("<!") {
            i = skip_to(">");
            continue;
        }
        if rest.starts_with("</") {
            if let Some(from) = text_from.take() {
                let raw = &text[from..lt];
                let lead = raw.len() - raw.trim_start().len();
                let trimmed = raw.trim();
                if let Some(new) = carry.add_to(&xml_unescape(trimmed)) {
                    let start = from + lead;
                    edits.push((start, start + trimmed.len(), xml_escape(&new, None)));
                }
            }
            i = skip_to(">");
            continue;
        }
        // A start tag: name, then attributes.
        let mut j = lt + 1;
        while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'/' && b[j] != b'>' {
            j += 1;
        }
        let element = local_name(&text[lt + 1..j]);
        let mut self_closing = false;
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
            if dash_url_attr(element, attr) {
                // The token is percent-encoded (`Carry::new`), so it holds no `$` that a
                // SegmentTemplate would read as an identifier.
                let value = xml_unescape(&text[v_start..v_end]);
                if let Some(new) = carry.add_to(&value) {
                    edits.push((v_start, v_end, xml_escape(&new, Some(quote))));
                }
            }
            j = v_end + 1;
        }
        if !self_closing && DASH_TEXT_URLS.contains(&element) {
            text_from = Some(j.min(text.len()));
        } else {
            text_from = None;
        }
        i = j.min(text.len());
        if i <= lt {
            break; // no progress: malformed tail
        }
    }
    let mut out = String::with_capacity(text.len() + edits.len() * (carry.value.len() + 16));
    let mut at = 0;
    for (s, e, new) in edits {
        out.push_str(&text[at..s]);
        out.push_str(&new);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let after = &rest[p..];
        let Some(semi) = after.find(';').filter(|&n| n <= 10) else {
            out.push('&');
            rest = &after[1..];
            continue;
        };
        let ent = &after[1..semi];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes for XML text, or for an attribute quoted with `quote`.
fn xml_escape(s: &str, quote: Option<u8>) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if quote == Some(b'"') => out.push_str("&quot;"),
            '\'' if quote == Some(b'\'') => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carry() -> Carry {
        Carry::new("hdnts", "exp=9~acl=/*~hmac=ab", "cdn.example:8080")
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
            "a.ts?hdnts=already",
            "",
        ] {
            assert_eq!(c.add_to(untouched), None, "{untouched}");
        }
        let odd = Carry::new("hdnts", "a\"b<c>&d", "h");
        assert_eq!(odd.add_to("x").as_deref(), Some("x?hdnts=a%22b%3Cc%3E%26d"));
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
        let out = String::from_utf8(rewrite(Kind::Hls, m.as_bytes(), &carry()).expect("changed"))
            .expect("utf8");
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
      <Representation id="720" bandwidth="1">
        <BaseURL>https://other.example/v/</BaseURL>
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
        let out = String::from_utf8(rewrite(Kind::Dash, m.as_bytes(), &carry()).expect("changed"))
            .expect("utf8");
        for want in [
            format!("<BaseURL> media/?{T} </BaseURL>"),
            format!("initialization=\"v/init-$RepresentationID$.mp4?{T}\""),
            format!("media='v/$RepresentationID$-$Number%05d$.m4s?a=1&amp;b=2&amp;{T}'"),
            format!("index=\"idx.sidx?{T}\""),
            "<BaseURL>https://other.example/v/</BaseURL>".to_string(),
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
        assert_eq!(rewrite(Kind::Hls, &[0xff, 0xfe], &c), None);
    }
}
