//! The cache headers of a response made for one viewer (a manifest carrying that viewer's
//! token, `proxy::signed`): `private` (RFC 9111 §5.2.2.7), so no shared cache downstream (a CDN
//! in front of the edge, an ISP or corporate proxy; many key on the path alone) stores it and
//! hands the token to the next viewer. The origin's lifetime still holds for the viewer's own
//! cache; every field addressed to shared caches goes.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cache::policy::directives;

/// Directives kept from the origin's `Cache-Control` (with a numeric argument, or none): those
/// that mean the same to a private cache. `public`, `s-maxage`, `proxy-revalidate`, qualified
/// forms and extensions are dropped.
const KEPT: &[&str] = &[
    "max-age",
    "no-cache",
    "no-store",
    "must-revalidate",
    "no-transform",
    "immutable",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Fields addressed only to shared caches besides `Cache-Control` (RFC 9213 targeted fields
/// end in `cache-control`: `CDN-Cache-Control`, `Akamai-Cache-Control`...).
fn for_shared_caches(name: &HeaderName) -> bool {
    let n = name.as_str();
    (n.ends_with("cache-control") && n != "cache-control")
        || matches!(n, "surrogate-control" | "edge-control")
}

/// Marks `h` as one viewer's: `Cache-Control: private` plus what of the origin's still applies,
/// and no targeted or surrogate fields.
pub fn make_private(h: &mut HeaderMap) {
    let mut cc = String::from("private");
    for v in h.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for (name, arg) in directives(v) {
            if !KEPT.contains(&name.as_str()) || cc.split(", ").any(|d| d.starts_with(&name)) {
                continue;
            }
            match arg {
                None => {
                    cc.push_str(", ");
                    cc.push_str(&name);
                }
                Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
                    cc.push_str(", ");
                    cc.push_str(&name);
                    cc.push('=');
                    cc.push_str(&a);
                }
                Some(_) => {}
            }
        }
    }
    let targeted: Vec<HeaderName> = h.keys().filter(|n| for_shared_caches(n)).cloned().collect();
    for n in targeted {
        h.remove(n);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cc).unwrap_or(HeaderValue::from_static("private")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        make_private(&mut h);
        h
    }

    #[test]
    fn shared_cache_directives_and_fields_go_the_lifetime_stays() {
        let h = private(&[
            ("cache-control", "public, max-age=30, s-maxage=60"),
            (
                "cache-control",
                "proxy-revalidate, no-cache=\"set-cookie\", stale-if-error=5",
            ),
            ("cdn-cache-control", "max-age=600"),
            ("akamai-cache-control", "max-age=600"),
            ("surrogate-control", "max-age=600"),
            ("content-type", "application/vnd.apple.mpegurl"),
        ]);
        assert_eq!(h["cache-control"], "private, max-age=30, stale-if-error=5");
        assert_eq!(h.get_all("cache-control").iter().count(), 1);
        for gone in [
            "cdn-cache-control",
            "akamai-cache-control",
            "surrogate-control",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert!(h.contains_key("content-type"));
        assert_eq!(private(&[])["cache-control"], "private");
        assert_eq!(
            private(&[(
                "cache-control",
                "no-store, private=\"x\", max-age=1, max-age=9"
            )])["cache-control"],
            "private, no-store, max-age=1"
        );
    }
}
