//! Cache keys: host + path + query, with configured query parameters (tokens, CMCD, tracking)
//! dropped and the rest sorted, so equivalent URLs share one object. Push ingest builds keys with
//! the same function so a viewer's first request is a HIT.

/// Builds the primary cache key. `host` is the viewer-facing host (lowercased, default port
/// dropped); `path_and_query` is the request target as received.
pub fn cache_key(host: &str, path_and_query: &str, drop_params: &[String]) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let host = normalise_host(host);
    let mut key = String::with_capacity(host.len() + path_and_query.len());
    key.push_str(&host);
    key.push_str(path);
    if let Some(q) = query {
        let mut pairs: Vec<&str> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split_once('=').map_or(*p, |(n, _)| n);
                !drop_params.iter().any(|d| d.eq_ignore_ascii_case(name))
            })
            .collect();
        // Stable sort by name only would keep duplicate names in request order; sorting whole
        // pairs makes `a=2&a=1` and `a=1&a=2` one key, which is what origins serving video do.
        pairs.sort_unstable();
        if !pairs.is_empty() {
            key.push('?');
            key.push_str(&pairs.join("&"));
        }
    }
    key
}

/// Lowercases a host and drops a default `:80`.
pub fn normalise_host(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    match h.strip_suffix(":80") {
        Some(bare) => bare.to_string(),
        None => h,
    }
}

/// The path part of a key (for purge by prefix).
pub fn key_path(key: &str) -> &str {
    key.find('/').map_or("", |i| &key[i..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drop() -> Vec<String> {
        vec!["token".into(), "CMCD".into()]
    }

    #[test]
    fn drops_and_sorts() {
        assert_eq!(
            cache_key(
                "CDN.example.com:80",
                "/a/b.ts?z=1&token=abc&a=2&CMCD=br%3D100",
                &drop()
            ),
            "cdn.example.com/a/b.ts?a=2&z=1"
        );
        assert_eq!(cache_key("h", "/a.ts?token=x", &drop()), "h/a.ts");
        assert_eq!(cache_key("h:8080", "/a.ts", &drop()), "h:8080/a.ts");
        assert_eq!(key_path("h:8080/a/b.ts?x"), "/a/b.ts?x");
    }

    proptest! {
        #[test]
        fn order_of_params_never_matters(params in proptest::collection::vec(("[a-z]{1,3}", "[a-z0-9]{0,3}"), 0..6)) {
            let q1: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut q2 = q1.clone();
            q2.reverse();
            let k1 = cache_key("h", &format!("/p?{}", q1.join("&")), &drop());
            let k2 = cache_key("h", &format!("/p?{}", q2.join("&")), &drop());
            prop_assert_eq!(k1, k2);
        }

        #[test]
        fn dropped_params_never_reach_the_key(v in "[a-z0-9]{0,8}") {
            let k = cache_key("h", &format!("/p.ts?token={v}&CMCD={v}"), &drop());
            prop_assert_eq!(k, "h/p.ts");
        }
    }
}
