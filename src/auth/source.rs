//! Where a token travels: the query parameter, a cookie of the same name, or a header (the
//! route's `sources`, tried in order), and how it is taken out of the request again so it never
//! reaches the origin (unless `forward`) nor turns a cacheable request into a credentialed one.

use http::{header, HeaderMap, HeaderValue};

use crate::config::{TokenConfig, TokenSource};

/// Which source a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Query,
    Cookie,
    Header,
}

/// A token as found in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The value as sent (for a query parameter: still percent-encoded).
    pub raw: String,
    pub from: From,
    /// The header it came in (`From::Header`).
    pub header: Option<http::HeaderName>,
}

/// The first token in the configured sources.
pub fn find(cfg: &TokenConfig, query: Option<&str>, headers: &HeaderMap) -> Option<Found> {
    for s in &cfg.sources {
        let (found, from, header) = match s {
            TokenSource::Query => (
                query.and_then(|q| query_value(q, &cfg.param)),
                From::Query,
                None,
            ),
            TokenSource::Cookie => (cookie_value(headers, &cfg.param), From::Cookie, None),
            TokenSource::Header(name) => (
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim),
                From::Header,
                Some(name.clone()),
            ),
        };
        if let Some(raw) = found.filter(|raw| !raw.is_empty()) {
            return Some(Found {
                raw: raw.to_string(),
                from,
                header,
            });
        }
    }
    None
}

/// The value of the first `name=` pair of a query (name matched exactly).
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// The query without any `name` parameter, in any spelling the cache key reads as `name`
/// (case-insensitive, percent-escapes decoded: `h%64nts` is `hdnts`, as the key's drop list
/// reads it); `None` when nothing is left.
pub fn strip_query(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let n = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty() && !names(n, name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether the query parameter name `n` (as sent) reads as `name`.
fn names(n: &str, name: &str) -> bool {
    n.eq_ignore_ascii_case(name)
        || (n.contains('%') && crate::auth::edgeauth::percent_decode(n).eq_ignore_ascii_case(name))
}

fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (n, v) = c.trim().split_once('=')?;
            Some((n.trim(), v.trim().trim_matches('"')))
        })
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookie_pairs(headers)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Removes the `name` cookie from every `Cookie` header, dropping headers left empty.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|c| {
                    !c.is_empty() && c.split_once('=').map_or(*c, |(n, _)| n.trim()) != name
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.append(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_pair_is_found_and_stripped_from_the_query() {
        let q = "a=1&hdnts=exp=9~acl=/*~hmac=ab&b=2";
        assert_eq!(query_value(q, "hdnts"), Some("exp=9~acl=/*~hmac=ab"));
        assert_eq!(strip_query(q, "hdnts").as_deref(), Some("a=1&b=2"));
        assert_eq!(strip_query("HDNTS=x", "hdnts"), None);
        assert_eq!(
            strip_query("h%64nts=x&b=2&%68DNTS", "hdnts").as_deref(),
            Some("b=2")
        );
        assert_eq!(query_value("xhdnts=1", "hdnts"), None);
    }

    #[test]
    fn only_the_token_cookie_is_removed() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; hdnts=exp=1~hmac=00; b=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("hdnts=exp=1~hmac=00"),
        );
        assert_eq!(cookie_value(&h, "hdnts"), Some("exp=1~hmac=00"));
        strip_cookie(&mut h, "hdnts");
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, vec!["a=1; b=2"]);
    }
}
