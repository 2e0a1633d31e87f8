//! The `Cache-Status` list (RFC 9211) a response leaves with: the entries upstream caches (a
//! shield, another CDN) sent, then this node's own. Upstream entries are hostile input: a line
//! that is not a valid Structured Field List (an unclosed quote would swallow our entry, a bare
//! comma would split it) is dropped whole, and only the last `MAX_UPSTREAM_ENTRIES` entries,
//! at most `MAX_UPSTREAM_BYTES` of them, are kept, so the field cannot grow without bound as
//! tiers stack up or as an origin stuffs it.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::HeaderValue;

use crate::cache::sfv;

/// Upstream entries kept: enough for any real chain (shield, mid-tier, another CDN, origin
/// cache), dropping the ones nearest the origin first.
pub const MAX_UPSTREAM_ENTRIES: usize = 8;

/// Bytes of upstream entries kept (separators included).
pub const MAX_UPSTREAM_BYTES: usize = 1024;

/// The field value: the valid upstream entries of `upstream` (field lines in order, the origin's
/// nearest first) within the caps, then `ours` last.
pub fn append<'a>(upstream: impl Iterator<Item = &'a HeaderValue>, ours: String) -> HeaderValue {
    let mut kept: Vec<&str> = Vec::new();
    for line in upstream {
        // Not visible ASCII: not a Structured Field, so not a list we can extend.
        let Ok(line) = line.to_str() else { continue };
        let Ok(spans) = sfv::list_member_spans(line) else {
            continue;
        };
        kept.extend(spans.into_iter().map(|r| &line[r]));
    }
    // The entries nearest this node matter most: drop from the front.
    let mut from = kept.len().saturating_sub(MAX_UPSTREAM_ENTRIES);
    while from < kept.len() && joined_len(&kept[from..]) > MAX_UPSTREAM_BYTES {
        from += 1;
    }
    let kept = &kept[from..];
    let value = if kept.is_empty() {
        ours
    } else {
        let mut list = kept.join(", ");
        list.push_str(", ");
        list.push_str(&ours);
        list
    };
    // The String's buffer becomes the header value (no second copy).
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `id` as the cache's name in a `Cache-Status` member (RFC 9211 §2: a Token or a String): as
/// it is when it is an `sf-token` (RFC 8941 §3.3.4: a letter or `*` first), else quoted.
pub fn member_name(id: &str) -> Cow<'_, str> {
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
    let b = id.as_bytes();
    let token = b
        .first()
        .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'*')
        && b.iter().all(|&c| tchar(c));
    if token {
        return Cow::Borrowed(id);
    }
    let mut s = String::with_capacity(id.len() + 2);
    s.push('"');
    for c in id.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            ' '..='~' => s.push(c),
            _ => s.push('?'),
        }
    }
    s.push('"');
    Cow::Owned(s)
}

fn joined_len(entries: &[&str]) -> usize {
    entries.iter().map(|e| e.len() + 2).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(lines: &[&[u8]], ours: &str) -> String {
        let values: Vec<HeaderValue> = lines
            .iter()
            .map(|l| HeaderValue::from_bytes(l).expect("test header value"))
            .collect();
        let v = append(values.iter(), ours.to_string());
        v.to_str().expect("ASCII").to_string()
    }

    #[test]
    fn member_names_are_tokens_or_strings() {
        assert_eq!(member_name("vedge"), "vedge");
        assert_eq!(member_name("edge-1.example_x"), "edge-1.example_x");
        assert_eq!(member_name("1cdn"), "\"1cdn\"");
        assert_eq!(member_name("-x"), "\"-x\"");
        for id in ["1cdn", "-x", "a b", "q\"\\"] {
            let line = format!("{}; hit", member_name(id));
            assert!(sfv::list_member_spans(&line).is_ok(), "{line}");
        }
    }

    #[test]
    fn upstream_entries_come_first_and_ours_last() {
        assert_eq!(field(&[], "edge; hit"), "edge; hit");
        assert_eq!(
            field(
                &[b"origin-cache; hit", b"shield; fwd=miss; stored"],
                "edge; hit"
            ),
            "origin-cache; hit, shield; fwd=miss; stored, edge; hit"
        );
        assert_eq!(
            field(
                &[b"\"Other CDN\"; hit;ttl=30, shield;fwd=uri-miss"],
                "edge; hit"
            ),
            "\"Other CDN\"; hit;ttl=30, shield;fwd=uri-miss, edge; hit"
        );
    }

    #[test]
    fn malformed_upstream_lines_cannot_swallow_or_split_our_entry() {
        for bad in [
            &b"shield; detail=\"unterminated"[..],
            b"shield; hit,",
            b", shield",
            b"shield; hit, ,x",
            b"shield; Detail=x",
            b"shield hit",
            b"shield; hit\xff",
            b"(a b",
        ] {
            assert_eq!(
                field(&[bad, b"good; hit"], "edge; miss"),
                "good; hit, edge; miss",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn upstream_entries_are_capped_in_count_keeping_the_nearest() {
        let long: String = (0..1000)
            .map(|i| format!("c{i}; hit, "))
            .collect::<String>()
            + "last";
        let v = field(&[long.as_bytes()], "edge; hit");
        let entries: Vec<&str> = v.split(", ").collect();
        assert_eq!(entries.len(), MAX_UPSTREAM_ENTRIES + 1);
        assert_eq!(entries[MAX_UPSTREAM_ENTRIES - 1], "last");
        assert_eq!(entries[MAX_UPSTREAM_ENTRIES], "edge; hit");
    }

    #[test]
    fn upstream_entries_are_capped_in_bytes() {
        let huge = format!("big; detail=\"{}\"", "x".repeat(10_000));
        let v = field(&[b"small; hit", huge.as_bytes()], "edge; hit");
        assert_eq!(v, "edge; hit", "an entry over the byte cap is dropped");
        let v = field(&[huge.as_bytes(), b"small; hit"], "edge; hit");
        assert_eq!(v, "small; hit, edge; hit");
        assert!(v.len() <= MAX_UPSTREAM_BYTES + "edge; hit".len());
    }
}
