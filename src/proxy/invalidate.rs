//! Invalidation by unsafe methods (RFC 9111 §4.4): a non-error response to a request whose
//! method is not known to be safe (POST, PUT, DELETE, PATCH, any unknown method) removes what is
//! stored for its target URI, and for the `Location` and `Content-Location` URIs when their
//! origin (scheme, host, port) is the target's and a route with the same origins serves them. Every Vary variant and slice
//! goes with its key (`Edge::purge_key`); a pushed (pinned) object stays. A passed HEAD that
//! names another representation makes the stored GET response stale (RFC 9111 §4.3.5).

use http::{header, HeaderMap, Method, StatusCode};

use crate::cache::policy;
use crate::proxy::request::Req;
use crate::proxy::target;

/// RFC 9110 §9.2.1: the methods defined as safe; every other one, unknown ones included, may
/// change the resource.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Called with the origin's answer to a request passed through: invalidates when the method is
/// unsafe and the status says the change happened (2xx, 3xx). Returns how many objects went.
pub fn after_response(req: &Req<'_>, status: StatusCode, headers: &HeaderMap) -> usize {
    if !is_unsafe(&req.parts.method) || !(status.is_success() || status.is_redirection()) {
        return 0;
    }
    let edge = req.edge;
    let mut keys = vec![req.key().to_string()];
    // "Same origin" is the scheme and host the viewer named (the ones its Location values are
    // written against: RFC 9112 §3.3's target URI); the keys come from `proxy::target`, as a
    // viewer's GET of that URI would.
    let scheme = req
        .parts
        .uri
        .scheme_str()
        .unwrap_or(if edge.config.tls.is_some() {
            "https"
        } else {
            "http"
        });
    let viewer_host = req
        .parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or(req.host());
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let pq = req.path_and_query();
        if let Some((authority, pq)) = same_origin_target(scheme, viewer_host, &pq, v) {
            if let Ok(t) = target::resolve(&edge.config, Some(&authority), &pq) {
                // Behind one viewer host, routes are different origins: what one origin says
                // (an open redirect, a hostile tenant) invalidates only URIs of the same one
                // (RFC 9111 §4.4: never a URI whose origin differs from the target's).
                if same_origin(t.route, req.route()) && t.key_host == req.target.key_host {
                    keys.push(t.key);
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    // An operator's push is the version the operator chose (as for `after_head`): the origin's
    // word, on a stranger's request, never removes it; an admin purge or another push does.
    keys.retain(|k| !edge.is_pinned(k));
    let removed: usize = keys.iter().map(|k| edge.purge_key(k)).sum();
    tracing::debug!(
        method = %req.parts.method,
        status = status.as_u16(),
        keys = keys.len(),
        removed,
        "invalidated by an unsafe method"
    );
    removed
}

/// Whether two routes fetch from the same origins (the same route, or routes naming the same
/// origin group).
fn same_origin(a: &crate::config::Route, b: &crate::config::Route) -> bool {
    std::ptr::eq(a, b) || a.group.origins == b.group.origins
}

/// RFC 9111 §4.3.5: a 200 answer to a HEAD the edge passed to the origin (fills always ask with
/// GET; a HEAD goes inbound only when passed, e.g. with a `Cookie`) says whether the stored GET
/// response that request could have chosen is still current. When it names other validators or
/// another length, the stored response becomes stale (the RFC's "consider the stored response to
/// be stale"): the next GET revalidates it with its own validators, which costs the origin a 304
/// when the stored bytes are still current. It is not removed: the HEAD is one viewer's request,
/// with that viewer's `Accept-Encoding` and cookies, and an origin that answers a gzip HEAD with
/// a weak `ETag` would otherwise let any viewer evict any object, each time, for the price of a
/// HEAD. Otherwise, a HEAD without validators from an origin that sends none included, the
/// stored response is kept as it is (updating a shared copy's fields from one viewer's passed
/// HEAD is a SHOULD this edge declines: the HEAD may carry that viewer's personalised fields).
/// Returns whether a stored response was made stale.
pub async fn after_head(req: &Req<'_>, status: StatusCode, head: &HeaderMap) -> bool {
    if req.parts.method != Method::HEAD || status != StatusCode::OK {
        return false;
    }
    let edge = req.edge;
    let key = match edge.vary_index.get(req.key()) {
        Some(spec) => format!(
            "{}{}",
            req.key(),
            crate::proxy::fill::variant_for(req, &spec)
        ),
        None => req.key().to_string(),
    };
    let Some(stored) = edge.peek(&key).await else {
        return false;
    };
    // An operator's push is the version the operator chose, whatever the origin says.
    if stored.status != StatusCode::OK
        || stored.pinned
        || head_matches(&stored.headers, stored.body.len(), head)
    {
        return false;
    }
    tracing::debug!(
        key,
        "a passed HEAD names another representation: stored GET stale"
    );
    edge.expire_stored(key, &stored);
    true
}

/// §4.3.5's test, over what the HEAD answer carries: each validator it carries (`ETag`,
/// `Last-Modified`) equals the stored one, and its `Content-Length`, if any, is the stored
/// body's length (`stored_len`: the stored field when there is one, else the body, as for a GET
/// that came chunked). A HEAD without validators is judged by its length alone: an origin that
/// sends no validators answers every HEAD so, and two identical answers are one
/// representation.
fn head_matches(stored: &HeaderMap, stored_len: usize, head: &HeaderMap) -> bool {
    for name in [header::ETAG, header::LAST_MODIFIED] {
        if let Some(v) = head.get(&name) {
            if stored.get(&name) != Some(v) {
                return false;
            }
        }
    }
    if head.get(header::CONTENT_LENGTH).is_none() {
        return true;
    }
    let stored_len = policy::content_length(stored).unwrap_or(stored_len as u64);
    // An invalid length names no representation this edge could have stored.
    policy::content_length(head) == Some(stored_len)
}

/// `reference` (absolute or relative, RFC 3986 §5) resolved against the request's target URI
/// (`scheme`, `host` as the viewer wrote it, `path_and_query`); its authority and
/// path-and-query when it has the request's origin (RFC 9111 §4.4: a cache must not invalidate
/// a URI whose origin differs, RFC 9110 §4.3.1: scheme, host and port, a port left out being
/// the scheme's default).
fn same_origin_target(
    scheme: &str,
    host: &str,
    path_and_query: &str,
    reference: &str,
) -> Option<(String, String)> {
    let base = url::Url::parse(&format!("{scheme}://{host}{path_and_query}")).ok()?;
    let target = base.join(reference.trim()).ok()?;
    if origin_of(&target)? != origin_of(&base)? {
        return None;
    }
    let authority = match target.port() {
        Some(p) => format!("{}:{p}", target.host_str()?),
        None => target.host_str()?.to_string(),
    };
    let mut pq = target.path().to_string();
    if let Some(q) = target.query() {
        pq.push('?');
        pq.push_str(q);
    }
    Some((authority, pq))
}

/// An http(s) URI's origin: scheme, host, port (the scheme's default when left out).
fn origin_of(u: &url::Url) -> Option<(&str, &str, u16)> {
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    Some((u.scheme(), u.host_str()?, u.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_methods_are_every_method_not_defined_safe() {
        for m in ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH", "PURGE"] {
            assert!(is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!is_unsafe(&m), "{m}");
        }
    }

    #[test]
    fn a_head_matches_by_the_validators_and_length_it_carries() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, http::HeaderValue::from_static(v));
            }
            m
        };
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("content-length", "10"),
        ]);
        let matches = |head: &[(&'static str, &'static str)]| head_matches(&stored, 10, &h(head));
        assert!(matches(&[("etag", "\"v1\"")]));
        assert!(matches(&[("etag", "\"v1\""), ("content-length", "10")]));
        assert!(!matches(&[("etag", "\"v2\"")]));
        assert!(!matches(&[("etag", "\"v1\""), ("content-length", "11")]));
        assert!(!matches(&[(
            "last-modified",
            "Mon, 07 Nov 1994 08:49:37 GMT"
        )]));
        // No validators: the length decides, and no length names no other representation.
        assert!(matches(&[("content-length", "10")]));
        assert!(matches(&[]));
        assert!(!matches(&[("content-length", "11")]));
        assert!(!matches(&[("content-length", "ten")]));
        // A validator the stored response lacks is another representation.
        let bare = h(&[("content-length", "10")]);
        assert!(!head_matches(&bare, 10, &h(&[("etag", "\"v1\"")])));
        // Stored from a chunked answer: its body's length.
        assert!(head_matches(
            &HeaderMap::new(),
            10,
            &h(&[("content-length", "10")])
        ));
        assert!(!head_matches(
            &HeaderMap::new(),
            9,
            &h(&[("content-length", "10")])
        ));
    }

    #[test]
    fn location_targets_resolve_against_the_request_and_keep_to_its_origin() {
        let t = |r: &str| same_origin_target("http", "example.com:8080", "/a/b?x=1", r);
        assert_eq!(t("c"), Some(("example.com:8080".into(), "/a/c".into())));
        assert_eq!(
            t("/d?y=2"),
            Some(("example.com:8080".into(), "/d?y=2".into()))
        );
        assert_eq!(
            t("http://EXAMPLE.com:8080/e"),
            Some(("example.com:8080".into(), "/e".into()))
        );
        // Another port or scheme is another origin (RFC 9111 §4.4, RFC 9110 §4.3.1).
        assert_eq!(t("http://example.com/f"), None);
        assert_eq!(t("https://example.com:8080/f"), None);
        assert_eq!(t("//example.com:9/f"), None);
        assert_eq!(t("http://other.example/g"), None);
        assert_eq!(t("mailto:a@example.com"), None);

        // A port left out is the scheme's default, on either side.
        let plain = |r: &str| same_origin_target("http", "example.com", "/a", r);
        assert_eq!(
            plain("http://example.com:80/h"),
            Some(("example.com".into(), "/h".into()))
        );
        assert_eq!(plain("http://example.com:443/h"), None);
        assert_eq!(plain("https://example.com/h"), None);
        let tls = |r: &str| same_origin_target("https", "example.com", "/a", r);
        assert_eq!(
            tls("https://example.com:443/i"),
            Some(("example.com".into(), "/i".into()))
        );
        assert_eq!(tls("http://example.com/i"), None);
        assert_eq!(
            same_origin_target("https", "example.com:443", "/a", "/j"),
            Some(("example.com".into(), "/j".into()))
        );
    }
}
