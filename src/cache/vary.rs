//! `Vary`: which request headers select a variant, and how their values are normalised into the
//! variant part of a cache key.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// The request headers a response varies on, lowercased and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarySpec(pub Vec<HeaderName>);

/// More names than this in one `Vary` (or a name longer than `MAX_NAME`) is no real origin's
/// and is not shared (`vary-too-large`): the stored head writes the list's length in 16 bits,
/// so a longer one could not be read back from the store, and each name is compared with the
/// others on every fill.
pub const MAX_NAMES: usize = 64;
const MAX_NAME: usize = 256;

/// Parses the response's `Vary`. `Err` names why the response must not be shared: `Vary: *`
/// matches no later request, `Cookie`/`Authorization` vary per viewer, and a list past
/// `MAX_NAMES` is not kept.
pub fn parse(h: &HeaderMap) -> Result<VarySpec, &'static str> {
    let mut names = Vec::new();
    for value in h.get_all(header::VARY) {
        let Ok(v) = value.to_str() else {
            return Err("vary-invalid");
        };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err("vary-star");
            }
            let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
                return Err("vary-invalid");
            };
            if name == header::COOKIE || name == header::AUTHORIZATION {
                return Err("vary-per-viewer");
            }
            if name.as_str().len() > MAX_NAME {
                return Err("vary-too-large");
            }
            if !names.contains(&name) {
                if names.len() == MAX_NAMES {
                    return Err("vary-too-large");
                }
                names.push(name);
            }
        }
    }
    // A content-coded response the origin forgot to mark `Vary: Accept-Encoding` was still
    // chosen by the leader's `Accept-Encoding` (the fill sends it): kept as the only variant,
    // one viewer accepting gzip would hand gzip to every viewer that does not.
    if coded(h) && !names.contains(&header::ACCEPT_ENCODING) {
        names.push(header::ACCEPT_ENCODING);
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(VarySpec(names))
}

/// Whether viewers may get different representations from what this response is one of:
/// its `Vary` names a header other than `Accept-Encoding`, or it is content-coded. An uncoded
/// answer varying only on `Accept-Encoding` (what many servers add to every response) suits
/// every viewer: identity is always acceptable.
pub fn selects_representation(h: &HeaderMap) -> bool {
    match parse(h) {
        Ok(spec) => coded(h) || spec.0.iter().any(|n| *n != header::ACCEPT_ENCODING),
        Err(_) => true,
    }
}

/// Whether the response carries a content coding other than `identity`.
fn coded(h: &HeaderMap) -> bool {
    h.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(|c| c.trim_ascii())
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
    })
}

impl VarySpec {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The variant suffix for a request: `\0name=value` for each varied header.
    ///
    /// `Accept-Encoding` is normalised (the fill sends the normalised value too). Any other
    /// header is keyed as the fill sends it, line by line (`\n` between lines, which no value
    /// holds) with only the whitespace around each line dropped, and an absent header
    /// (`\0name`) apart from an empty one (`\0name=`): the origin sees the viewer's own lines,
    /// and an origin that reads the first line only (Go's `Header.Get`) answers `a` + `b` on
    /// two lines otherwise than `a,b` on one. Splitting at commas as if every field were a
    /// list keyed a viewer's User-Agent split at its comma into two lines under the genuine
    /// one's variant, with the answer the origin gave for its first half.
    pub fn variant(&self, req: &HeaderMap) -> String {
        let mut out = String::new();
        for name in &self.0 {
            out.push('\0');
            out.push_str(name.as_str());
            let mut lines = req.get_all(name).iter().map(value_text).peekable();
            if *name == header::ACCEPT_ENCODING {
                // Present or not, as the fill sends it: normalised (absent is `identity`).
                let values: Vec<Cow<'_, str>> = lines.collect();
                out.push('=');
                out.push_str(normalise_accept_encoding(&values.join(",")));
                continue;
            }
            if lines.peek().is_none() {
                continue;
            }
            out.push('=');
            for (i, line) in lines.enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(line.trim_matches([' ', '\t']));
            }
        }
        out
    }

    /// Serialises as the lowercase names joined by `,` (for the stored head).
    pub fn to_header_list(&self) -> String {
        self.0
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A request header value as variant text, one-to-one with what the origin is sent: visible
/// ASCII as is, and `%` and every other byte (obs-text) percent-escaped. Dropping a value that
/// is not text (as the variant once did) keyed a request whose header the origin saw and
/// answered by as if it had sent none, poisoning that variant for everyone.
fn value_text(v: &HeaderValue) -> Cow<'_, str> {
    match v.to_str() {
        Ok(s) if !s.contains('%') => Cow::Borrowed(s),
        _ => {
            let mut out = String::with_capacity(v.len() * 3);
            for &b in v.as_bytes() {
                if b == b'%' || !(b == b'\t' || (0x20..0x7f).contains(&b)) {
                    let _ = write!(out, "%{b:02X}");
                } else {
                    out.push(char::from(b));
                }
            }
            Cow::Owned(out)
        }
    }
}

/// Collapses the thousands of `Accept-Encoding` spellings into the few codings we could store.
/// A coding counts when its first listing is acceptable (`accept_encoding_members`).
pub fn normalise_accept_encoding(v: &str) -> &'static str {
    let accepts = |coding: &str| {
        accept_encoding_members(v)
            .find(|(name, _)| name.eq_ignore_ascii_case(coding))
            .is_some_and(|(_, acceptable)| acceptable)
    };
    if accepts("br") {
        "br"
    } else if accepts("zstd") {
        "zstd"
    } else if accepts("gzip") {
        "gzip"
    } else {
        "identity"
    }
}

/// The members of an `Accept-Encoding` value (RFC 9110 §12.5.3), in order: each coding, and
/// whether it is acceptable, i.e. has no weight or one above 0 (§12.4.2: the parameter `q`,
/// its name case-insensitive, so `gzip;Q=0` refuses gzip). A weight that is no valid qvalue
/// counts as 0: a viewer whose header cannot be read is not sent a coding it may not decode.
/// The one reading of weights the edge has (`proxy::compress` reads gzip's here too).
pub fn accept_encoding_members(v: &str) -> impl Iterator<Item = (&str, bool)> {
    v.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let coding = parts.next()?.trim();
        if coding.is_empty() {
            return None;
        }
        let weight = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map(|(_, q)| qvalue(q.trim()));
        Some((coding, weight.is_none_or(|w| w.is_some_and(|w| w > 0))))
    })
}

/// RFC 9110 §12.4.2's `qvalue` (`0[.ddd]` or `1[.000]`) in thousandths; `None` when invalid.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_normalise() {
        let mut resp = HeaderMap::new();
        resp.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, X-Device"),
        );
        let spec = parse(&resp).expect("shareable");
        let mut a = HeaderMap::new();
        a.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        a.insert("x-device", HeaderValue::from_static("tv"));
        let mut b = HeaderMap::new();
        b.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br;q=1.0, gzip"),
        );
        b.insert("x-device", HeaderValue::from_static(" tv "));
        assert_eq!(spec.variant(&a), spec.variant(&b));
        b.insert("x-device", HeaderValue::from_static("phone"));
        assert_ne!(spec.variant(&a), spec.variant(&b));
        // What the origin is sent, line for line: two lines are not one list, a space after a
        // comma is kept, and an empty header is not an absent one.
        let variant_of = |lines: &[&'static str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append("x-device", HeaderValue::from_static(l));
            }
            spec.variant(&h)
        };
        assert_ne!(variant_of(&["a", "b"]), variant_of(&["a,b"]));
        assert_ne!(variant_of(&["a, b"]), variant_of(&["a,b"]));
        assert_ne!(variant_of(&[""]), variant_of(&[]));
        assert_eq!(variant_of(&["a\t"]), variant_of(&["a"]));
        assert_eq!(normalise_accept_encoding("gzip;q=0, identity"), "identity");
        for refusing in [
            "gzip;Q=0",
            "gzip; q=0.000",
            "gzip;q=0.",
            "gzip ; Q = 0",
            "gzip;q=x",
            "gzip;q=1.5",
            "gzip;q=-1",
            "gzip;q=inf",
            "gzip;q=0, gzip",
        ] {
            assert_eq!(
                normalise_accept_encoding(refusing),
                "identity",
                "{refusing}"
            );
        }
        assert_eq!(normalise_accept_encoding("GZIP;Q=0.001"), "gzip");
        assert_eq!(normalise_accept_encoding("br;q=1.000, gzip"), "br");
        assert_eq!(normalise_accept_encoding("br;level=1;q=0, gzip"), "gzip");
    }
}
