//! What a request names: its validated host, its normalised path (routed and keyed after
//! normalisation, so `/vod/../live/x.ts` is `/live/x.ts` everywhere), the route serving it, and
//! the cache key. Viewer requests, push ingest and purge all resolve targets here, so a pushed
//! object lands under the key a viewer's request produces.
//!
//! Which host names an object is a per-route choice: a route that sends its origin its own
//! `Host` (the default) keys on that host, so no viewer `Host` can fan one object out into many
//! keys; a `pass_host` route forwards the viewer's validated host and keys on it. Keys are built
//! with `Scheme::Http` for plain and TLS viewers alike: both fetch the same origin object, and
//! push ingest (which has no viewer scheme) must land where either kind of viewer looks.

use crate::cache::key::{encode_key, normalize_host, normalize_path, normalize_query, Scheme};
use crate::config::{Config, Route};

/// Why a target was refused; each maps to one status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The viewer's fault: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The route does not answer this host: 421 Misdirected Request (RFC 9110 §15.5.20).
    #[error("{0}")]
    Misdirected(String),
    /// No route serves the path (no default origin): 404.
    #[error("no route serves {0}")]
    NoRoute(String),
}

/// A resolved request target.
#[derive(Debug, Clone)]
pub struct Target<'c> {
    pub route: &'c Route,
    /// The validated viewer host, normalised (`None` when none was given: push without a host).
    pub viewer_host: Option<String>,
    /// The host the key is built on (the route's, or the viewer's on `pass_host` routes).
    pub key_host: std::borrow::Cow<'c, str>,
    /// The normalised path, without query.
    pub path: String,
    /// The query as received (without `?`).
    pub query: Option<String>,
    /// The base cache key (before any `Vary` variant).
    pub key: String,
}

impl Target<'_> {
    /// What a fill asks the origin for: the normalised path and the query the key keeps, so the
    /// object stored under a key is the one that key names.
    pub fn fill_target(&self, drop_params: &[String]) -> String {
        let q = self
            .query
            .as_deref()
            .map(|q| normalize_query(q, drop_params))
            .unwrap_or_default();
        if q.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{q}", self.path)
        }
    }

    /// What a pass-through (one viewer's own request) asks for: the normalised path and the
    /// viewer's whole query (tokens included: the origin may need them, and nothing is shared).
    pub fn pass_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The `Host` a request to the origin carries: the route's, else the viewer's.
    pub fn origin_host(&self) -> &str {
        self.route
            .host
            .as_deref()
            .or(self.viewer_host.as_deref())
            .unwrap_or(&self.key_host)
    }
}

/// Validates `viewer_host` (when given) and `path_and_query`, routes the normalised path, and
/// builds the key. A host outside the route's `hosts` is `Misdirected`; a `pass_host` route
/// without a viewer host cannot be keyed (`BadRequest`).
pub fn resolve<'c>(
    config: &'c Config,
    viewer_host: Option<&str>,
    path_and_query: &str,
) -> Result<Target<'c>, TargetError> {
    let (raw_path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let path = normalize_path(raw_path)
        .map_err(|e| TargetError::BadRequest(format!("request path refused: {e}")))?;
    let viewer_host = viewer_host
        .map(|h| normalize_host(h, Scheme::Http))
        .transpose()
        .map_err(|e| TargetError::BadRequest(format!("Host refused: {e}")))?;
    let route = config
        .route_for(&routing_path(&path))
        .ok_or_else(|| TargetError::NoRoute(path.clone()))?;
    let integrity = &route.integrity;
    if let Some(h) = &viewer_host {
        if !integrity.hosts.is_empty() && !integrity.hosts.contains(h) {
            return Err(TargetError::Misdirected(format!(
                "route {} does not serve host {h}",
                route.prefix
            )));
        }
    }
    let key_host = match (&integrity.key_host, &viewer_host) {
        (Some(route_host), _) => std::borrow::Cow::Borrowed(route_host.as_str()),
        (None, Some(viewer)) => std::borrow::Cow::Owned(viewer.clone()),
        (None, None) => {
            return Err(TargetError::BadRequest(format!(
                "route {} keys on the viewer's host (pass_host): a host is required",
                route.prefix
            )))
        }
    };
    let key = encode_key(
        Scheme::Http,
        &key_host,
        &path,
        query,
        &config.cache.drop_query_params,
    );
    Ok(Target {
        route,
        viewer_host,
        key_host,
        path,
        query: query.map(str::to_string),
        key,
    })
}

/// The path routes are matched on: `path` with every run of `/` merged into one and each
/// segment's parameters (`;` to the segment's end) left out. Origins that merge slashes (nginx's
/// default, Apache's file mapping) serve `//v/seg.ts` as `/v/seg.ts`, and servlet containers
/// (Tomcat, Jetty: Java packagers such as Wowza) serve `/v;x=1/seg.ts` as `/v/seg.ts`, so a
/// route's gate (token, address lists) must guard every spelling, or such a spelling walks
/// around it through a less guarded route. A segment that is a dot segment once its parameters
/// are gone (`..;`, `.;x`) is resolved again, as those containers resolve it: `/x/..;/v/seg.ts`
/// is their `/v/seg.ts`. The path fetched and keyed stays as written.
pub(crate) fn routing_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains("//") && !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut in_params = false;
    for c in path.chars() {
        match c {
            '/' => {
                in_params = false;
                if !out.ends_with('/') {
                    out.push(c);
                }
            }
            ';' => in_params = true,
            c if !in_params => out.push(c),
            _ => {}
        }
    }
    std::borrow::Cow::Owned(crate::cache::key::remove_dot_segments(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn config(extra: &str) -> Config {
        let raw: RawConfig =
            toml::from_str(&format!("origin = \"http://127.0.0.1:9000\"\n{extra}")).expect("toml");
        Config::try_from(raw).expect("valid")
    }

    #[test]
    fn default_routes_key_on_the_route_not_the_viewer_host() {
        let c = config("");
        let a = resolve(&c, Some("evil.example"), "/a/b.ts").unwrap();
        let b = resolve(&c, Some("cdn.example:8080"), "/a/b.ts").unwrap();
        let c2 = resolve(&c, None, "/a/b.ts").unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, c2.key);
        assert_eq!(a.key, "http|127.0.0.1:9000|/a/b.ts");
        assert_eq!(a.origin_host(), "127.0.0.1:9000");
    }

    #[test]
    fn pass_host_routes_key_on_the_validated_viewer_host() {
        let c = config(
            "[[route]]\nprefix = \"/p/\"\norigin = \"http://127.0.0.1:9001\"\npass_host = true\n",
        );
        let a = resolve(&c, Some("A.example:80"), "/p/x.ts").unwrap();
        assert_eq!(a.key, "http|a.example|/p/x.ts");
        assert_eq!(a.origin_host(), "a.example");
        assert!(matches!(
            resolve(&c, None, "/p/x.ts"),
            Err(TargetError::BadRequest(_))
        ));
        assert!(matches!(
            resolve(&c, Some("cdn/x"), "/p/y.ts"),
            Err(TargetError::BadRequest(_))
        ));
    }

    #[test]
    fn paths_are_normalised_before_routing() {
        let c = config("[[route]]\nprefix = \"/live/\"\norigin = \"http://127.0.0.1:9001\"\n");
        let t = resolve(&c, Some("h"), "/vod/../live/x.ts?b=1&a=2&token=z").unwrap();
        assert_eq!(t.route.prefix, "/live/");
        assert_eq!(t.path, "/live/x.ts");
        assert_eq!(
            t.fill_target(&c.cache.drop_query_params),
            "/live/x.ts?a=2&b=1"
        );
        assert_eq!(t.pass_target(), "/live/x.ts?b=1&a=2&token=z");
        for bad in ["/a%2Fb", "/a%5Cb", "/a\\b", "/a%00"] {
            assert!(
                matches!(resolve(&c, Some("h"), bad), Err(TargetError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn doubled_slashes_route_as_single_ones() {
        let c = config("[[route]]\nprefix = \"/live/\"\norigin = \"http://127.0.0.1:9001\"\n");
        for p in ["//live/x.ts", "///live//x.ts", "/live//x.ts"] {
            let t = resolve(&c, Some("h"), p).unwrap();
            assert_eq!(t.route.prefix, "/live/", "{p}");
            assert_eq!(t.path, p, "fetched and keyed as written");
        }
        assert_eq!(routing_path("/a/b"), "/a/b");
    }

    #[test]
    fn path_parameters_route_as_the_bare_segments() {
        let c = config("[[route]]\nprefix = \"/live/\"\norigin = \"http://127.0.0.1:9001\"\n");
        for p in [
            "/live;x=1/a.ts",
            "/live;jsessionid=9//a.ts",
            "/;x/live/a.ts",
        ] {
            let t = resolve(&c, Some("h"), p).unwrap();
            assert_eq!(t.route.prefix, "/live/", "{p}");
            assert_eq!(t.path, p, "fetched and keyed as written");
        }
        assert_eq!(routing_path("/a;p=1/b;q"), "/a/b");
        assert_eq!(routing_path("/x/..;/live/a.ts"), "/live/a.ts");
        assert_eq!(routing_path("/live/.;x/a.ts"), "/live/a.ts");
        assert_eq!(routing_path("/..;/..;/live/a.ts"), "/live/a.ts");
    }

    #[test]
    fn hosts_outside_the_list_are_misdirected() {
        let c = config(
            "[[route]]\nprefix = \"/r/\"\norigin = \"http://127.0.0.1:9001\"\nhosts = [\"CDN.example\"]\n",
        );
        assert!(resolve(&c, Some("cdn.example"), "/r/x").is_ok());
        assert!(matches!(
            resolve(&c, Some("other.example"), "/r/x"),
            Err(TargetError::Misdirected(_))
        ));
    }
}
