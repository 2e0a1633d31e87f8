//! CORS on routes with a `[route.cors]` policy (the Fetch standard's CORS protocol, §3.2): the
//! edge answers preflights itself, and every other answer on the route (hit, miss, pass, error)
//! leaves with the policy's `Access-Control-*` fields in place of the origin's. The policy is the
//! edge's so that one stored object serves every viewer: fills never send the CORS request
//! fields, and the origin's CORS fields and `Vary: Origin` are dropped from what is stored
//! (`strip_origin_fields`, called by `proxy::fill`).
//!
//! `Origin` is the viewer's to write: it is only ever compared with the configured origins, and
//! what goes back is the configured value; only a subdomain of a `scheme://*.domain` entry is
//! echoed as sent, once every byte of it is checked (`subdomain_of`). Request header names are
//! reflected into `Access-Control-Allow-Headers` only with `allow_headers = ["*"]`, validated
//! as header names and bounded (`MAX_REQUEST_HEADERS`).

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::config::{CorsConfig, CorsHeaders, CorsOrigins, CORS_REQUEST_FIELDS};
use crate::http::body::Body;
use crate::metrics::Metrics;

/// At most this many bytes of `Access-Control-Request-Headers` (all lines) are read; a longer
/// one is refused. Players list a handful of names.
pub const MAX_REQUEST_HEADERS_LEN: usize = 1024;
/// At most this many names in one `Access-Control-Request-Headers`.
pub const MAX_REQUEST_HEADERS: usize = 32;

const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// Whether a request is a CORS preflight (Fetch §3.2.2): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Any other `OPTIONS` is an ordinary request.
pub fn is_preflight(method: &Method, h: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && h.contains_key(header::ORIGIN)
        && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The `Access-Control-Allow-Origin` a request gets under `policy`: `*` for `allow_origins =
/// ["*"]` (with or without `Origin`, as the Fetch standard advises for a static value), the
/// configured origin equal to the request's one `Origin` line, or that line when a
/// `scheme://*.domain` entry covers it (`subdomain_of`), else none.
fn allowed_origin<'a>(policy: &'a CorsConfig, h: &'a HeaderMap) -> Option<&'a HeaderValue> {
    static ANY: HeaderValue = HeaderValue::from_static("*");
    match &policy.origins {
        CorsOrigins::Any => Some(&ANY),
        CorsOrigins::List { exact, subdomains } => {
            let mut lines = h.get_all(header::ORIGIN).iter();
            let (Some(origin), None) = (lines.next(), lines.next()) else {
                return None;
            };
            exact
                .iter()
                .find(|v| v.as_bytes() == origin.as_bytes())
                .or_else(|| {
                    subdomains
                        .iter()
                        .any(|(scheme, domain)| subdomain_of(origin.as_bytes(), scheme, domain))
                        .then_some(origin)
                })
        }
    }
}

/// Whether `origin` is `scheme` + one or more DNS labels + `domain` (`.example.com[:port]`),
/// as browsers serialise such an origin: labels of lower-case letters, digits and `-`, none
/// empty. Nothing else may stand between the two ends (no `/`, `@`, `:` or upper case), so
/// `https://evil.example/.example.com` or `https://a.example.com.evil` never match.
fn subdomain_of(origin: &[u8], scheme: &str, domain: &str) -> bool {
    if origin.len() > crate::config::MAX_CORS_ORIGIN_LEN {
        return false;
    }
    let Some(labels) = origin
        .strip_prefix(scheme.as_bytes())
        .and_then(|o| o.strip_suffix(domain.as_bytes()))
    else {
        return false;
    };
    !labels.is_empty()
        && labels.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Applies `policy` to an answer on its route (not a preflight's): the origin's own
/// `Access-Control-*` fields go, and an allowed request gets the policy's
/// `Access-Control-Allow-Origin`, `-Allow-Credentials` and `-Expose-Headers`. With a list of
/// origins every answer says `Vary: Origin`, those to requests without `Origin` or with another
/// one included (Fetch §3.2.5, "CORS protocol and HTTP caches"): a browser or a cache in front
/// that stored the answer to one must not hand it to another.
pub fn apply(policy: &CorsConfig, req: &HeaderMap, resp: &mut HeaderMap) {
    strip_access_control(resp);
    if let Some(origin) = allowed_origin(policy, req) {
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if policy.credentials {
            resp.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &policy.expose {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
    if matches!(policy.origins, CorsOrigins::List { .. }) && !varies_on_origin(resp) {
        resp.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Why a preflight is refused: the plain-text body of the 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method,
    Headers,
}

impl Refusal {
    /// Its place in `metrics::CORS_PREFLIGHT_RESULTS` (0 is a granted preflight).
    pub fn index(self) -> usize {
        match self {
            Refusal::Origin => 1,
            Refusal::Method => 2,
            Refusal::Headers => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Origin => "origin not allowed",
            Refusal::Method => "method not allowed",
            Refusal::Headers => "request headers not allowed",
        }
    }
}

/// The edge's answer to a preflight on a route with `policy`: `204` granting the request (the
/// Fetch standard wants an ok status, `Access-Control-Allow-Origin`, and the method and headers
/// listed), or `403` without any `Access-Control-*` field naming what was refused. Why 403 and
/// not a 204 without the grant: either fails the browser's CORS check, but a 403 says so to
/// everything else too (logs, `curl`, an operator debugging a player), and a 2xx would read as a
/// success there.
/// Counted in `vedge_cors_preflights_total{result}`.
pub fn preflight(policy: &CorsConfig, req: &HeaderMap, metrics: &Metrics) -> Response<Body> {
    let result = grant(policy, req);
    Metrics::inc(&metrics.cors_preflights[result.as_ref().map_or_else(|r| r.index(), |_| 0)]);
    match result {
        Ok(h) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.headers_mut() = h;
            resp
        }
        Err(why) => {
            let mut resp = crate::http::response::plain(
                StatusCode::FORBIDDEN,
                format!("vedge: CORS preflight refused: {}\n", why.as_str()),
            );
            resp.headers_mut().insert(header::VARY, PREFLIGHT_VARY);
            resp
        }
    }
}

/// The fields of a granted preflight, or why it is refused.
pub fn grant(policy: &CorsConfig, req: &HeaderMap) -> Result<HeaderMap, Refusal> {
    let origin = allowed_origin(policy, req).ok_or(Refusal::Origin)?;
    let mut methods = req.get_all(header::ACCESS_CONTROL_REQUEST_METHOD).iter();
    let method = match (methods.next(), methods.next()) {
        (Some(m), None) => Method::from_bytes(m.as_bytes()).map_err(|_| Refusal::Method)?,
        _ => return Err(Refusal::Method),
    };
    if !policy.methods.contains(&method) {
        return Err(Refusal::Method);
    }
    let asked = requested_headers(req).ok_or(Refusal::Headers)?;
    let allow_headers = match &policy.headers {
        CorsHeaders::Any if asked.is_empty() => None,
        CorsHeaders::Any => {
            let names: Vec<&str> = asked.iter().map(HeaderName::as_str).collect();
            Some(HeaderValue::from_str(&names.join(", ")).map_err(|_| Refusal::Headers)?)
        }
        CorsHeaders::List { names, value } => {
            if asked.iter().any(|a| !names.contains(a)) {
                return Err(Refusal::Headers);
            }
            value.clone()
        }
    };
    let mut h = HeaderMap::new();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        policy.methods_value.clone(),
    );
    if let Some(v) = allow_headers {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, policy.max_age.clone());
    h.insert(header::VARY, PREFLIGHT_VARY);
    Ok(h)
}

/// The names `Access-Control-Request-Headers` lists, lower case, without repeats; `None` when
/// it is not a list of header names or is past `MAX_REQUEST_HEADERS_LEN`/`MAX_REQUEST_HEADERS`.
fn requested_headers(req: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut out: Vec<HeaderName> = Vec::new();
    let mut len = 0;
    for line in req.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        len += line.len();
        if len > MAX_REQUEST_HEADERS_LEN {
            return None;
        }
        for name in line.as_bytes().split(|&b| b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            let name = HeaderName::from_bytes(name).ok()?;
            if !out.contains(&name) {
                if out.len() == MAX_REQUEST_HEADERS {
                    return None;
                }
                out.push(name);
            }
        }
    }
    Some(out)
}

/// An origin's answer as a route with a policy keeps it (fills, before anything is decided or
/// stored): without its `Access-Control-*` fields and with the CORS request fields (`Origin`,
/// `Access-Control-Request-*`) left out of its `Vary`. S3, GCS and many packagers add both only
/// when the request had an `Origin`; kept, the object depended on whether its first viewer was
/// a browser, or split into one variant per `Origin` value.
pub fn strip_origin_fields(h: &mut HeaderMap) {
    strip_access_control(h);
    let names_cors = |v: &HeaderValue| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|n| {
                CORS_REQUEST_FIELDS
                    .iter()
                    .any(|f| n.trim().eq_ignore_ascii_case(f))
            })
        })
    };
    if !h.get_all(header::VARY).iter().any(names_cors) {
        return;
    }
    let lines: Vec<HeaderValue> = h.get_all(header::VARY).iter().cloned().collect();
    h.remove(header::VARY);
    for line in lines {
        if !names_cors(&line) {
            h.append(header::VARY, line);
            continue;
        }
        let kept: Vec<&str> = line
            .to_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .filter(|n| {
                !CORS_REQUEST_FIELDS
                    .iter()
                    .any(|f| n.eq_ignore_ascii_case(f))
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            if !kept.is_empty() {
                h.append(header::VARY, v);
            }
        }
    }
}

/// Removes every `Access-Control-*` response field (the origin's, or a stored copy's from
/// before the route had a policy). Allocates only when there is one.
fn strip_access_control(h: &mut HeaderMap) {
    let is_ac = |n: &HeaderName| n.as_str().starts_with("access-control-");
    if !h.keys().any(is_ac) {
        return;
    }
    let names: Vec<HeaderName> = h.keys().filter(|n| is_ac(n)).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

/// Whether a `Vary` already names `Origin` (or is `*`).
fn varies_on_origin(h: &HeaderMap) -> bool {
    h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n.eq_ignore_ascii_case("origin"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: CorsOrigins, headers: CorsHeaders, credentials: bool) -> CorsConfig {
        CorsConfig {
            origins,
            methods: vec![Method::GET, Method::HEAD],
            methods_value: HeaderValue::from_static("GET, HEAD"),
            headers,
            expose: Some(HeaderValue::from_static("content-range")),
            max_age: HeaderValue::from_static("7200"),
            credentials,
        }
    }

    fn list() -> CorsConfig {
        policy(
            CorsOrigins::List {
                exact: vec![HeaderValue::from_static("https://a.example")],
                subdomains: vec![("https://".into(), ".cdn.example".into())],
            },
            CorsHeaders::List {
                names: vec![HeaderName::from_static("range")],
                value: Some(HeaderValue::from_static("range")),
            },
            true,
        )
    }

    fn req(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_listed_origin_is_echoed_and_always_from_the_config() {
        let p = list();
        let mut resp = req(&[("access-control-allow-origin", "https://evil.example")]);
        apply(&p, &req(&[("origin", "https://evil.example")]), &mut resp);
        assert!(resp.get("access-control-allow-origin").is_none());
        assert_eq!(resp.get("vary").map(|v| v.as_bytes()), Some(&b"Origin"[..]));
        // A prefix, a suffix, another case, two lines: none of them is the listed origin.
        for o in [
            "https://a.example.evil",
            "https://a.exampl",
            "HTTPS://A.EXAMPLE",
            "https://a.example/",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
            assert!(allowed_origin(&p, &h).is_none(), "{o}");
        }
        // `https://*.cdn.example`: one or more labels, nothing else, echoed as sent.
        for (o, ok) in [
            ("https://x.cdn.example", true),
            ("https://a-1.b2.cdn.example", true),
            ("https://cdn.example", false),
            ("https://.cdn.example", false),
            ("https://a..cdn.example", false),
            ("https://evilcdn.example", false),
            ("https://X.cdn.example", false),
            ("http://x.cdn.example", false),
            ("https://x.cdn.example:8443", false),
            ("https://x.cdn.example.evil", false),
            ("https://evil.example/.cdn.example", false),
            ("https://u@x.cdn.example", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
            let got = allowed_origin(&p, &h).map(|v| v.as_bytes().to_vec());
            assert_eq!(got, ok.then(|| o.as_bytes().to_vec()), "{o}");
        }
        let two = req(&[
            ("origin", "https://a.example"),
            ("origin", "https://a.example"),
        ]);
        assert!(allowed_origin(&p, &two).is_none());
        let mut resp = HeaderMap::new();
        apply(&p, &req(&[("origin", "https://a.example")]), &mut resp);
        assert_eq!(resp["access-control-allow-origin"], "https://a.example");
        assert_eq!(resp["access-control-allow-credentials"], "true");
        assert_eq!(resp["access-control-expose-headers"], "content-range");
    }

    #[test]
    fn preflights_are_granted_or_refused_by_the_policy() {
        let p = list();
        let ok = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "Range"),
        ]);
        let h = grant(&p, &ok).expect("granted");
        assert_eq!(h["access-control-allow-headers"], "range");
        assert_eq!(h["access-control-max-age"], "7200");
        let post = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert_eq!(grant(&p, &post).err(), Some(Refusal::Method));
        let odd = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range, x-evil"),
        ]);
        assert_eq!(grant(&p, &odd).err(), Some(Refusal::Headers));
        // `*`: names reflected only once they are header names, and bounded.
        let any = policy(CorsOrigins::Any, CorsHeaders::Any, false);
        let h = grant(&any, &odd).expect("any header");
        assert_eq!(h["access-control-allow-headers"], "range, x-evil");
        assert_eq!(h["access-control-allow-origin"], "*");
        let bad = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "a b"),
        ]);
        assert_eq!(grant(&any, &bad).err(), Some(Refusal::Headers));
        let mut many = req(&[
            ("origin", "https://x.example"),
            ("access-control-request-method", "GET"),
        ]);
        let names: Vec<String> = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("x-{i}"))
            .collect();
        many.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_str(&names.join(",")).expect("names"),
        );
        assert_eq!(grant(&any, &many).err(), Some(Refusal::Headers));
    }

    #[test]
    fn origin_cors_fields_and_vary_origin_are_stripped() {
        let mut h = req(&[
            ("access-control-allow-origin", "https://a.example"),
            ("access-control-allow-methods", "GET"),
            (
                "vary",
                "Origin, Access-Control-Request-Headers, Accept-Encoding",
            ),
            ("vary", "origin"),
            ("content-type", "video/mp2t"),
        ]);
        strip_origin_fields(&mut h);
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, vec!["Accept-Encoding"]);
        assert!(h.get("access-control-allow-origin").is_none());
        assert!(h.get("access-control-allow-methods").is_none());
        assert_eq!(h["content-type"], "video/mp2t");
    }
}
