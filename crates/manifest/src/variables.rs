//! HLS variable substitution (RFC 8216bis §4.3, §4.4.2.3 `EXT-X-DEFINE`): the `{$name}`
//! references of a playlist's URIs resolved as a player resolves them, for the edge's own reads
//! of a playlist (its prefetch, the refusals a listing drops, the ingest walk, asset purges).
//! The bytes served to viewers are never rewritten here.
//!
//! A reference resolves from the playlist's own `EXT-X-DEFINE:NAME=..,VALUE=..` and
//! `QUERYPARAM=..` (the value of that parameter in the query of the URL the playlist was
//! requested with). `IMPORT` (a value of the multivariant playlist, which a media playlist read
//! on its own does not show), an undefined name, a name defined twice (a playlist error players
//! settle differently) and a malformed reference leave the URI unresolved: [`Variables::resolve`]
//! says `None`, and the caller fetches nothing for it (fetched literally it would be a request
//! for `%7B$name%7D`, an object no player asks for).
//!
//! Bounded for hostile playlists: at most [`MAX_VARIABLES`] names are remembered (a reference to
//! any other is unresolved), a resolved URI is at most [`MAX_URI`] bytes, and one playlist's
//! substitutions add at most [`MAX_GROWTH`] bytes over its text all told, so a few short lines
//! referencing a long value cannot multiply a scan's memory.

use std::borrow::Cow;

/// Names remembered per playlist; a reference to any other name is unresolved. Real playlists
/// define a handful.
pub const MAX_VARIABLES: usize = 64;
/// Longest URI a substitution may produce; a longer one is unresolved.
pub const MAX_URI: usize = 8 << 10;
/// Bytes one playlist's substitutions may add over the references they replace, all URIs
/// together; past it every further reference is unresolved. A DVR window of 8,000 segments
/// with a 100-byte base path adds under 1 MiB.
pub const MAX_GROWTH: usize = 4 << 20;

/// The variables a playlist defined so far (they are defined before use, in order) and the
/// substitution budget it has left.
#[derive(Debug)]
pub struct Variables<'t> {
    /// Name -> value; `None` for a name whose value the edge cannot know (`IMPORT`, defined
    /// twice, a `QUERYPARAM` the request's query lacks).
    defined: Vec<(&'t str, Option<Value<'t>>)>,
    /// The query of the URL the playlist was requested with (for `QUERYPARAM`).
    query: Option<&'t str>,
    /// What substitutions may still add (`MAX_GROWTH`).
    growth_left: usize,
    /// Whether a resolved text took a value from the query ([`Variables::used_query`]).
    used_query: bool,
}

/// A variable's value and where it came from.
#[derive(Debug)]
struct Value<'t> {
    text: Cow<'t, str>,
    /// From the request's query (`QUERYPARAM`), not the playlist's own text.
    from_query: bool,
}

impl<'t> Variables<'t> {
    /// No variables yet, for a playlist requested with `query` (without its `?`).
    pub fn new(query: Option<&'t str>) -> Variables<'t> {
        Variables {
            defined: Vec::new(),
            query,
            growth_left: MAX_GROWTH,
            used_query: false,
        }
    }

    /// Reads the attribute list of one `EXT-X-DEFINE` tag (after its `:`).
    pub fn define(&mut self, attrs: &'t str) {
        let (mut name, mut value, mut param, mut import) = (None, None, None, None);
        let mut named = 0;
        for (k, v) in attributes(attrs) {
            match k {
                "NAME" => (name, named) = (Some(v), named + 1),
                "VALUE" => value = Some(v),
                "QUERYPARAM" => (param, named) = (Some(v), named + 1),
                "IMPORT" => (import, named) = (Some(v), named + 1),
                _ => {}
            }
        }
        // Exactly one of NAME, QUERYPARAM, IMPORT (§4.4.2.3); anything else is a tag players
        // read differently, so every name it mentions is unknown.
        let known = |v: Option<&'t str>| v.filter(|n| valid_name(n));
        let (n, v) = match (named, known(name), known(param), known(import)) {
            (1, Some(n), None, None) => (n, value.map(|v| Value::own(Cow::Borrowed(v)))),
            (1, None, Some(p), None) => (p, self.query_value(p).map(Value::queried)),
            (1, None, None, Some(i)) => (i, None),
            _ => {
                for n in [name, param, import].into_iter().flatten() {
                    self.set(n, None);
                }
                return;
            }
        };
        self.set(n, v);
    }

    /// Records `name`; a second definition makes it unknown.
    fn set(&mut self, name: &'t str, value: Option<Value<'t>>) {
        if let Some(d) = self.defined.iter_mut().find(|(n, _)| *n == name) {
            d.1 = None;
        } else if self.defined.len() < MAX_VARIABLES {
            self.defined.push((name, value));
        }
    }

    /// The (percent-decoded) value of the request query's first `param`, as a player's URL
    /// parser reads it.
    fn query_value(&self, param: &str) -> Option<String> {
        let query = self.query?;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == param)
            .map(|(_, v)| v.into_owned())
    }

    /// `text` with every `{$name}` replaced by its value, or `None` when one does not resolve
    /// (see the module doc) or the result would pass the bounds. Text without references is
    /// returned as it is, without a copy.
    pub fn resolve<'u>(&mut self, text: &'u str) -> Option<Cow<'u, str>> {
        if !has_reference(text) {
            return Some(Cow::Borrowed(text));
        }
        let mut out = String::with_capacity(text.len().min(MAX_URI));
        let mut from_query = false;
        let mut rest = text;
        while let Some(at) = rest.find("{$") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after.find('}')?;
            let name = &after[..end];
            let value = self
                .defined
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.as_ref())?;
            if out.len() + value.text.len() > MAX_URI {
                return None;
            }
            out.push_str(&value.text);
            from_query |= value.from_query;
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        // A value holding `{$` is not substituted again (§4.3 is one pass): a player would ask
        // for that text as it is, an object no origin has.
        if out.len() > MAX_URI || has_reference(&out) {
            return None;
        }
        let grown = out.len().saturating_sub(text.len());
        self.growth_left = self.growth_left.checked_sub(grown)?;
        self.used_query |= from_query;
        Some(Cow::Owned(out))
    }

    /// Whether a text [`Variables::resolve`]d so far took a value from the request's query
    /// (`QUERYPARAM`): a value the requester chose, not the playlist's author. What it resolved
    /// is that requester's reading of the playlist, not the origin's, and must not decide
    /// anything shared with other requesters.
    pub fn used_query(&self) -> bool {
        self.used_query
    }
}

impl<'t> Value<'t> {
    fn own(text: Cow<'t, str>) -> Value<'t> {
        Value {
            text,
            from_query: false,
        }
    }

    fn queried(text: String) -> Value<'t> {
        Value {
            text: Cow::Owned(text),
            from_query: true,
        }
    }
}

/// Whether `text` holds a variable reference (`{$`).
pub fn has_reference(text: &str) -> bool {
    text.contains("{$")
}

/// RFC 8216bis §4.4.2.3: a variable name is `[a-zA-Z0-9-_]+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The attributes of an HLS attribute list (RFC 8216bis §4.2) in order, `(name, value)`: a
/// quoted value without its quotes, as written (a quoted-string's spaces are its own), an
/// unquoted one trimmed; stops at the first one it cannot read.
pub fn attributes(list: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = list;
    std::iter::from_fn(move || {
        let (k, after) = rest.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim();
        let (v, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], &q[end + 1..])
            }
            None => {
                let (v, next) = after.split_at(after.find(',').unwrap_or(after.len()));
                (v.trim(), next)
            }
        };
        rest = next;
        Some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'t>(defines: &[&'t str], query: Option<&'t str>) -> Variables<'t> {
        let mut v = Variables::new(query);
        for d in defines {
            v.define(d);
        }
        v
    }

    #[test]
    fn names_and_query_params_resolve() {
        let mut v = vars(
            &[
                "NAME=\"dir\",VALUE=\"segs\"",
                "QUERYPARAM=\"v\"",
                "NAME=\"e-1_x\",VALUE=\"\"",
            ],
            Some("a=1&v=abc%2Fd"),
        );
        assert_eq!(
            v.resolve("{$dir}/{$v}/s1{$e-1_x}.m4s").as_deref(),
            Some("segs/abc/d/s1.m4s")
        );
        assert_eq!(v.resolve("plain.ts").as_deref(), Some("plain.ts"));
    }

    #[test]
    fn attribute_lists_read_as_players_read_them() {
        let list = "PART-TARGET=1.0 ,URI=\" a b.m4s\",SKIPPED-SEGMENTS= 3,X=\"q,r\"";
        let got: Vec<_> = attributes(list).collect();
        assert_eq!(
            got,
            [
                ("PART-TARGET", "1.0"),
                ("URI", " a b.m4s"),
                ("SKIPPED-SEGMENTS", "3"),
                ("X", "q,r")
            ]
        );
    }

    #[test]
    fn a_value_from_the_query_is_told_apart() {
        let mut v = vars(
            &["NAME=\"d\",VALUE=\"segs\"", "QUERYPARAM=\"q\""],
            Some("q=x"),
        );
        assert_eq!(v.resolve("{$d}/s.ts").as_deref(), Some("segs/s.ts"));
        assert!(!v.used_query(), "the playlist's own value");
        assert_eq!(v.resolve("{$q}/s.ts").as_deref(), Some("x/s.ts"));
        assert!(v.used_query());
    }

    #[test]
    fn unknown_references_do_not_resolve() {
        let mut v = vars(
            &[
                "IMPORT=\"base\"",
                "NAME=\"twice\",VALUE=\"a\"",
                "NAME=\"twice\",VALUE=\"b\"",
                "QUERYPARAM=\"missing\"",
                "NAME=\"both\",QUERYPARAM=\"x\",VALUE=\"c\"",
                "NAME=\"bad name\",VALUE=\"d\"",
            ],
            Some("x=1"),
        );
        for uri in [
            "{$base}s.ts",
            "{$twice}s.ts",
            "{$missing}s.ts",
            "{$both}s.ts",
            "{$x}s.ts",
            "{$bad name}s.ts",
            "{$undefined}s.ts",
            "{$unclosed/s.ts",
        ] {
            assert_eq!(v.resolve(uri), None, "{uri}");
        }
    }

    #[test]
    fn a_value_is_not_substituted_again() {
        let mut v = vars(&["NAME=\"a\",VALUE=\"{$a}\""], None);
        assert_eq!(v.resolve("{$a}/s.ts"), None);
    }

    #[test]
    fn hostile_playlists_are_bounded() {
        // Thousands of names: only the first MAX_VARIABLES are remembered.
        let names: Vec<String> = (0..5000)
            .map(|i| format!("NAME=\"v{i}\",VALUE=\"x\""))
            .collect();
        let mut v = Variables::new(None);
        for n in &names {
            v.define(n);
        }
        assert_eq!(v.defined.len(), MAX_VARIABLES);
        assert!(v.resolve("{$v0}").is_some());
        assert!(v.resolve("{$v4999}").is_none());
        // A long value: one URI at most MAX_URI, all of them at most MAX_GROWTH more.
        let long = format!("NAME=\"l\",VALUE=\"{}\"", "a".repeat(MAX_URI / 2));
        let mut v = vars(&[&long], None);
        assert!(v.resolve("{$l}{$l}{$l}").is_none());
        let mut resolved = 0usize;
        for _ in 0..10_000 {
            resolved += v.resolve("{$l}").map_or(0, |u| u.len());
        }
        assert!(resolved <= MAX_GROWTH + 10_000 * 4, "{resolved}");
    }
}
