//! What the HTTP caching conformance suite (cache-tests.fyi, http-tests/cache-tests) asks of a
//! shared cache, beyond `semantics.rs`: field-qualified `no-cache` / `private`, `no-cache`
//! responses kept for revalidation, `s-maxage` implying `proxy-revalidate`, and the viewer's
//! request directives (`no-cache`, `max-age`, `min-fresh`, `max-stale`, `only-if-cached`).
//! Each test names the suite's test ids it covers. Time moves with `TestEdge::advance`.

use std::time::Duration;

use http::StatusCode;

use crate::support::{edge_config, until, Fault, Gate, Origin, Script, TestEdge};

/// The stored copy of `path`: the first GET fills, the second must be a HIT.
async fn stored(edge: &TestEdge, path: &str) {
    edge.get(path).await;
    edge.settle().await;
    assert_eq!(edge.get(path).await.x_cache(), "HIT", "{path} is stored");
}

/// `headers-omit-headers-listed-in-Cache-Control-no-cache-single`,
/// `headers-omit-headers-listed-in-Cache-Control-no-cache`: a qualified `no-cache="a, b"` (or
/// `private="a"`, for a shared cache) keeps the response, without the named fields.
#[tokio::test]
async fn qualified_no_cache_and_private_store_the_response_without_the_named_fields() {
    let origin = Origin::start().await;
    origin.script(
        "/q/one",
        Script::ok("one")
            .header("cache-control", "no-cache=\"a\"")
            .header("cache-control", "max-age=3600")
            .header("a", "1")
            .header("b", "2"),
    );
    origin.script(
        "/q/two",
        Script::ok("two")
            .header("cache-control", "no-cache=\"a, b\", max-age=3600")
            .header("a", "1")
            .header("b", "2")
            .header("c", "3"),
    );
    origin.script(
        "/q/private",
        Script::ok("p")
            .header("cache-control", "max-age=3600, private=\"x-user\"")
            .header("x-user", "alice")
            .header("b", "2"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (path, gone, kept) in [
        ("/q/one", &["a"][..], &[("b", "2")][..]),
        ("/q/two", &["a", "b"][..], &[("c", "3")][..]),
        ("/q/private", &["x-user"][..], &[("b", "2")][..]),
    ] {
        stored(&edge, path).await;
        let r = edge.get(path).await;
        assert_eq!(r.x_cache(), "HIT", "{path}");
        for name in gone {
            assert!(!r.headers.contains_key(*name), "{path}: {name} withheld");
        }
        for (name, value) in kept {
            assert_eq!(r.h(name), *value, "{path}");
        }
        assert_eq!(origin.count(path), 1, "{path}");
    }
}

/// A spoiled or empty qualified argument is the unqualified directive: `private=""` is not
/// shared, `no-cache="a` (unclosed) is revalidated on every use.
#[tokio::test]
async fn spoiled_qualified_private_is_read_as_private() {
    let origin = Origin::start().await;
    origin.script(
        "/q/empty",
        Script::ok("e").header("cache-control", "max-age=3600, private=\"\""),
    );
    origin.script(
        "/q/open",
        Script::ok("o").header("cache-control", "max-age=3600, private=\"a"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/q/empty", "/q/open"] {
        edge.get(path).await;
        edge.settle().await;
        assert_ne!(edge.get(path).await.x_cache(), "HIT", "{path}");
        assert_eq!(origin.count(path), 2, "{path}");
    }
}

/// `cc-resp-no-cache-revalidate`, `cc-resp-no-cache-revalidate-fresh`: a `no-cache` response
/// with a validator is stored and revalidated (conditionally) on every use, with or without a
/// lifetime; `cc-resp-no-cache`: it is never used unrevalidated.
#[tokio::test]
async fn no_cache_response_with_a_validator_is_stored_and_revalidated_on_use() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (path, cc) in [
        ("/nc/plain", "no-cache"),
        ("/nc/fresh", "max-age=10000, no-cache"),
    ] {
        origin.script(
            path,
            Script::ok("body")
                .header("cache-control", cc)
                .header("etag", "\"abcd\""),
        );
        edge.get(path).await;
        edge.settle().await;
        origin.script(
            path,
            Script::status(304, "")
                .header("cache-control", cc)
                .header("etag", "\"abcd\""),
        );
        let r = edge.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body, "body", "{path}: the stored body, revalidated");
        let seen = origin.seen(path);
        assert_eq!(seen.len(), 2, "{path}");
        assert_eq!(seen[1].header("if-none-match"), Some("\"abcd\""), "{path}");
    }
}

/// `stale-close-must-revalidate`, `-proxy-revalidate`, `-no-cache`, `-s-maxage=2`: content of
/// no class (no configured stale window) is not served stale when the origin fails after it
/// expired with any of these. A class's configured `stale_if_error` is operator policy: it
/// serves an `s-maxage` response stale, never a `must-revalidate` / `proxy-revalidate` one.
#[tokio::test(flavor = "current_thread")]
async fn revalidate_directives_forbid_serving_stale_on_origin_failure() {
    let origin = Origin::start().await;
    let cases = [
        ("/sm/doc-mr", "max-age=1, must-revalidate", false),
        ("/sm/doc-pr", "max-age=1, proxy-revalidate", false),
        ("/sm/doc-nc", "max-age=1, no-cache", false),
        ("/sm/doc-sm", "max-age=1, s-maxage=1", false),
        ("/sm/seg-sm.ts", "max-age=1, s-maxage=1", true),
        ("/sm/seg-pr.ts", "max-age=1, proxy-revalidate", false),
        ("/sm/seg.ts", "max-age=1", true),
    ];
    for (path, cc, _) in cases {
        origin.script(
            path,
            Script::ok("v")
                .header("cache-control", cc)
                .header("etag", "\"e\""),
        );
    }
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    for (path, _, _) in cases {
        edge.get(path).await;
        edge.settle().await;
        origin.script(path, Script::ok("x").fault(Fault::Close));
    }
    edge.advance(Duration::from_secs(3)).await;
    for (path, cc, stale) in cases {
        let r = edge.get(path).await;
        assert_eq!(
            r.x_cache() == "STALE",
            stale,
            "{path} {cc}: {} {}",
            r.status,
            r.x_cache()
        );
        if !stale {
            assert!(r.status.is_server_error(), "{path}: {}", r.status);
        }
    }
}

/// `ccreq-no-cache`, `ccreq-no-cache-etag`, `ccreq-no-cache-lm`, `ccreq-ma0`: a viewer's
/// `no-cache` or `max-age=0` sends the request to the origin, conditionally on the stored
/// copy's validators; a 304 answers with the stored body and refreshes it.
#[tokio::test]
async fn request_no_cache_and_max_age_0_revalidate_a_fresh_response() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    for (i, directive) in ["no-cache", "max-age=0", "MAX-AGE=0, foo"]
        .iter()
        .enumerate()
    {
        let path = format!("/rq/{i}");
        origin.script(
            &path,
            Script::ok("stored")
                .header("cache-control", "max-age=3600")
                .header("etag", "\"v1\"")
                .header("last-modified", lm),
        );
        stored(&edge, &path).await;
        origin.script(
            &path,
            Script::status(304, "")
                .header("cache-control", "max-age=3600")
                .header("etag", "\"v1\"")
                .header("x-refreshed", "yes"),
        );
        let r = edge.get_with(&path, &[("cache-control", directive)]).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"stored"[..]));
        assert_eq!(r.h("x-refreshed"), "yes", "{directive}");
        let seen = origin.seen(&path);
        assert_eq!(seen.len(), 2, "{directive}: went to the origin");
        assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
        assert_eq!(seen[1].header("if-modified-since"), Some(lm));
        // Refreshed: a plain request is a hit again, with the 304's header.
        let r = edge.get(&path).await;
        assert_eq!((r.x_cache(), r.h("x-refreshed")), ("HIT", "yes"));
        assert_eq!(origin.count(&path), 2);
    }
}

/// `ccreq-ma1`, `ccreq-magreaterage`, `ccreq-min-fresh`, `ccreq-min-fresh-age`: a stored
/// response older than the viewer's `max-age`, or not fresh for the viewer's `min-fresh`
/// longer, is fetched again; one within both is a hit.
#[tokio::test]
async fn request_max_age_and_min_fresh_refuse_a_response_not_fresh_enough() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, (lifetime, age, asked, hit)) in [
        ("max-age=3600", "1800", "max-age=600", false),
        ("max-age=3600", "1800", "max-age=3000", true),
        ("max-age=1500", "0", "min-fresh=2000", false),
        ("max-age=1500", "1000", "min-fresh=1000", false),
        ("max-age=1500", "1000", "min-fresh=100", true),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/fresh/{i}");
        origin.script(
            &path,
            Script::ok("v")
                .header("cache-control", lifetime)
                .header("age", age),
        );
        edge.get(&path).await;
        edge.settle().await;
        let r = edge.get_with(&path, &[("cache-control", asked)]).await;
        assert_eq!(
            r.x_cache() == "HIT",
            hit,
            "Age {age}, {asked}: {}",
            r.x_cache()
        );
        assert_eq!(origin.count(&path), if hit { 1 } else { 2 }, "{asked}");
    }
}

/// `ccreq-max-stale`, `ccreq-max-stale-age`: a viewer's `max-stale` lets a stale copy answer
/// without the origin, within its bound; never a copy whose response said `must-revalidate`.
#[tokio::test]
async fn request_max_stale_accepts_a_stale_response() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, (cc, asked, served)) in [
        ("max-age=1500", "max-stale=1000", true),
        ("max-age=1500", "max-stale", true),
        ("max-age=1500", "max-stale=100", false),
        ("max-age=1500, must-revalidate", "max-stale=1000", false),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/ms/{i}");
        // Stored already 500 s stale.
        origin.script(
            &path,
            Script::ok("v")
                .header("cache-control", cc)
                .header("age", "2000"),
        );
        edge.get(&path).await;
        edge.settle().await;
        let r = edge.get_with(&path, &[("cache-control", asked)]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.x_cache() == "STALE",
            served,
            "{cc} / {asked}: {}",
            r.x_cache()
        );
        assert_eq!(
            origin.count(&path),
            if served { 1 } else { 2 },
            "{cc} / {asked}"
        );
    }
}

/// `ccreq-oic`: `only-if-cached` without a stored response answers 504 and never reaches the
/// origin; with a fresh one it is a hit.
#[tokio::test]
async fn only_if_cached_answers_504_without_a_stored_response() {
    let origin = Origin::start().await;
    origin.script(
        "/oic",
        Script::ok("v").header("cache-control", "max-age=3600"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .get_with("/oic", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.count("/oic"), 0);
    stored(&edge, "/oic").await;
    let r = edge
        .get_with("/oic", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(origin.count("/oic"), 1);
}

/// Manifests and segments follow the operator's class TTLs whatever the player asks: a
/// `no-cache` or `max-age=0` request for a fresh one is a hit (a player's `fetch` with
/// `cache: "no-store"` sends `no-cache` on every request). `only-if-cached` still holds.
#[tokio::test]
async fn video_objects_are_not_revalidated_on_a_players_no_cache() {
    let origin = Origin::start().await;
    origin.script("/v/seg.ts", Script::ok("seg"));
    origin.script("/v/index.m3u8", Script::ok("#EXTM3U\n"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/v/seg.ts", "/v/index.m3u8"] {
        stored(&edge, path).await;
        for asked in ["no-cache", "max-age=0", "min-fresh=100000"] {
            let r = edge.get_with(path, &[("cache-control", asked)]).await;
            assert_eq!(r.x_cache(), "HIT", "{path} {asked}");
        }
        assert_eq!(origin.count(path), 1, "{path}");
    }
    let r = edge
        .get_with("/v/other.ts", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
}

/// `cache.request_directives = false`: viewers' directives are ignored (a fresh copy answers
/// a `no-cache` request), as many CDNs do by default.
#[tokio::test]
async fn request_directives_can_be_turned_off() {
    let origin = Origin::start().await;
    origin.script(
        "/off",
        Script::ok("v").header("cache-control", "max-age=3600"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.request_directives = Some(false);
    let edge = TestEdge::start(raw).await;
    stored(&edge, "/off").await;
    let r = edge
        .get_with("/off", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(origin.count("/off"), 1);
}

/// `heuristic-501-cached` (and 200/203/204/404/405/410/414 as before): a 501 is heuristically
/// cacheable (RFC 9110 §15.1); `heuristic-201/202/403/502/503/504-not_cached`: those are not.
/// `public` makes a non-5xx status heuristically cacheable.
#[tokio::test]
async fn heuristic_freshness_covers_501_and_public_but_no_other_5xx() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    for (status, public, cached) in [
        (501, false, true),
        (201, false, false),
        (202, false, false),
        (403, false, false),
        (502, false, false),
        (504, false, false),
        (403, true, true),
        (599, true, false),
    ] {
        let path = format!("/h/{status}/{public}");
        let mut script = Script::status(status, "s").header("last-modified", lm);
        if public {
            script = script.header("cache-control", "public");
        }
        origin.script(&path, script);
        edge.get(&path).await;
        edge.settle().await;
        let r = edge.get(&path).await;
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.x_cache() == "HIT", cached, "{status} public={public}");
    }
}

/// Bug: an `Age` list (`7200, 0`, or two `Age` lines) was ignored as a whole, so a
/// `max-age=3600` response that arrived two hours old was stored fresh and sent on with
/// `Age: 0` (cache-tests.fyi `age-parse-suffix`, `age-parse-suffix-twoline`). RFC 9111 §5.1:
/// a cache SHOULD use the first member of a list-valued `Age`, and ignore an invalid one.
#[tokio::test]
async fn an_age_list_is_read_as_its_first_member() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, (lines, stale)) in [
        (&["7200, 0"][..], true),
        (&["7200", "0"][..], true),
        (&["7200,0", "1"][..], true),
        (&["0, 7200"][..], false),
        (&["0", "7200"][..], false),
        (&["abc, 7200"][..], false),
        (&["7200;a=b"][..], false),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/age/{i}");
        let mut script = Script::ok("a").header("cache-control", "max-age=3600");
        for line in lines {
            script = script.header("age", line);
        }
        origin.script(&path, script);
        let first = edge.get(&path).await;
        let age: u64 = first.h("age").parse().expect("an Age");
        assert_eq!(age >= 7200, stale, "{lines:?}: sent on with Age {age}");
        edge.settle().await;
        let again = edge.get(&path).await;
        assert_eq!(
            again.x_cache() == "HIT",
            !stale,
            "{lines:?}: {}",
            again.x_cache()
        );
        assert_eq!(origin.count(&path), if stale { 2 } else { 1 }, "{lines:?}");
    }
}

/// Bug: `must-understand` was not read: a `599` with `max-age=3600, must-understand` was
/// stored and reused (cache-tests.fyi `status-599-must-understand`; RFC 9111 §3: with
/// `must-understand` a cache stores only a status it understands). A status it understands
/// is stored whatever `no-store` beside it says (§5.2.2.3), and `599` without the directive is
/// still stored on its explicit lifetime.
#[tokio::test]
async fn must_understand_stores_only_understood_statuses_and_overrides_no_store() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (path, status, cc, kept) in [
        ("/mu/599", 599, "max-age=3600, must-understand", false),
        (
            "/mu/299",
            299,
            "max-age=3600, must-understand, no-store",
            false,
        ),
        (
            "/mu/200",
            200,
            "max-age=3600, must-understand, no-store",
            true,
        ),
        (
            "/mu/404",
            404,
            "no-store, max-age=3600, must-understand",
            true,
        ),
        ("/mu/599-plain", 599, "max-age=3600", true),
    ] {
        origin.script(
            path,
            Script::status(status, "x").header("cache-control", cc),
        );
        assert_eq!(edge.get(path).await.status.as_u16(), status, "{path}");
        edge.settle().await;
        let again = edge.get(path).await;
        assert_eq!(again.status.as_u16(), status, "{path}");
        assert_eq!(
            again.x_cache() == "HIT",
            kept,
            "{path}: {}",
            again.x_cache()
        );
        assert_eq!(origin.count(path), if kept { 1 } else { 2 }, "{path}");
    }
}

/// Bug: a `304` replaced the stored response's digests, so the stored body went out with the
/// digest of the 304's empty content (an origin that digests every message) or of another body
/// (cache-tests.fyi `304-etag-update-response-Content-MD5`; RFC 9111 §3.2: fields the stored
/// body depends on are not updated). Other fields of the 304 still are.
#[tokio::test]
async fn a_304_does_not_replace_the_stored_body_s_digests() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let path = "/digest/doc";
    let digests = [
        ("content-md5", "rL0Y20zC+Fzt72VPzMSk2A=="),
        (
            "content-digest",
            "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:",
        ),
        (
            "repr-digest",
            "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:",
        ),
    ];
    let mut script = Script::ok("foo")
        .header("cache-control", "max-age=1")
        .header("etag", "\"d1\"");
    for (name, value) in digests {
        script = script.header(name, value);
    }
    origin.script(path, script);
    edge.get(path).await;
    edge.settle().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    origin.script(
        path,
        Script::status(304, "")
            .header("cache-control", "max-age=3600")
            .header("etag", "\"d1\"")
            .header("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==")
            .header(
                "content-digest",
                "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
            )
            .header(
                "repr-digest",
                "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
            ),
    );
    for round in ["revalidated", "hit after"] {
        let r = edge.get(path).await;
        assert_eq!(
            (r.status, r.body.as_ref()),
            (StatusCode::OK, &b"foo"[..]),
            "{round}"
        );
        for (name, value) in digests {
            assert_eq!(r.h(name), value, "{round}: {name} is the stored body's");
        }
        assert!(
            r.h("cache-control").contains("3600"),
            "{round}: updated by the 304"
        );
        edge.settle().await;
    }
    assert_eq!(origin.count(path), 2);
}

/// `other-authorization`: an answer to a request with `Authorization` is not reused, even with
/// explicit freshness; `other-authorization-public`, `-must-revalidate`, `-smaxage`: it is when
/// the origin marks it so. The credentials reach the origin, and an unshared answer leaves no
/// hit-for-pass behind (an anonymous viewer's copy is still kept).
#[tokio::test]
async fn authorization_answers_are_shared_only_when_marked_public_s_maxage_or_must_revalidate() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (i, (cc, shared)) in [
        ("max-age=3600", false),
        ("max-age=3600, public", true),
        ("max-age=3600, must-revalidate", true),
        ("s-maxage=3600", true),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/auth/{i}");
        origin.script(&path, Script::ok("doc").header("cache-control", cc));
        let r = edge.get_with(&path, &[("authorization", "FOO")]).await;
        assert_eq!(r.body, "doc");
        edge.settle().await;
        assert_eq!(origin.seen(&path)[0].header("authorization"), Some("FOO"));
        let r = edge.get(&path).await;
        assert_eq!(r.x_cache() == "HIT", shared, "{cc}: {}", r.x_cache());
        if !shared {
            // The anonymous answer is the origin's to share: stored, then a hit.
            edge.settle().await;
            assert_eq!(edge.get(&path).await.x_cache(), "HIT", "{cc}");
            assert_eq!(origin.count(&path), 2, "{cc}");
        }
    }
}

/// A stored response answers a request with `Authorization` too (RFC 9111 §3.5 restricts
/// storing, not reuse).
#[tokio::test]
async fn a_stored_response_answers_an_authorized_request() {
    let origin = Origin::start().await;
    origin.script(
        "/auth/hit",
        Script::ok("doc").header("cache-control", "max-age=3600"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    stored(&edge, "/auth/hit").await;
    let r = edge
        .get_with("/auth/hit", &[("authorization", "FOO")])
        .await;
    assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"doc"[..]));
    assert_eq!(origin.count("/auth/hit"), 1);
}

/// Viewers without credentials collapsed onto a fill for a viewer with `Authorization` whose
/// answer is not shareable do not each go to the origin: they look again and share one fill of
/// their own, which is stored.
#[tokio::test]
async fn viewers_collapsed_on_an_unshared_authorized_fill_share_one_fill_of_their_own() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script(
        "/auth/burst",
        Script::ok("doc")
            .header("cache-control", "max-age=3600")
            .gate(&gate),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;
    let authorized = edge.get_with("/auth/burst", &[("authorization", "FOO")]);
    let anonymous = async {
        until("the authorized fill reached the origin", || {
            origin.count("/auth/burst") == 1
        })
        .await;
        let burst = async {
            tokio::join!(
                edge.get("/auth/burst"),
                edge.get("/auth/burst"),
                edge.get("/auth/burst")
            )
        };
        let open = async {
            until("three viewers collapsed", || edge.collapsed() >= 3).await;
            gate.open();
        };
        tokio::join!(burst, open).0
    };
    let (auth, (a, b, c)) = tokio::join!(authorized, anonymous);
    for r in [&auth, &a, &b, &c] {
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"doc"[..]));
    }
    assert_eq!(
        origin.count("/auth/burst"),
        2,
        "the authorized fill and one shared fill"
    );
    edge.settle().await;
    assert_eq!(edge.get("/auth/burst").await.x_cache(), "HIT");
}

/// `conditional-etag-vary-headers`: the conditional request revalidating a stale variant
/// carries the request header its `Vary` names, with the stored variant's value, and its
/// `ETag`; a 304 refreshes that variant.
#[tokio::test(flavor = "current_thread")]
async fn revalidating_a_variant_sends_its_varied_header_and_etag() {
    let origin = Origin::start().await;
    origin.script(
        "/vary/abc",
        Script::ok("v123")
            .header("cache-control", "max-age=1")
            .header("etag", "\"abcdef\"")
            .header("vary", "Abc"),
    );
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    edge.get_with("/vary/abc", &[("abc", "123")]).await;
    edge.settle().await;
    // (A cold miss may take two origin requests: the first, not knowing the `Vary`, cannot send
    // `Abc`.)
    let before = origin.count("/vary/abc");
    origin.script(
        "/vary/abc",
        Script::status(304, "")
            .header("cache-control", "max-age=100")
            .header("etag", "\"abcdef\"")
            .header("vary", "Abc"),
    );
    edge.advance(Duration::from_secs(3)).await;
    let r = edge.get_with("/vary/abc", &[("abc", "123")]).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"v123"[..]));
    let seen = origin.seen("/vary/abc");
    assert_eq!(seen.len(), before + 1, "one revalidation");
    let last = &seen[before];
    assert_eq!(last.header("abc"), Some("123"));
    assert_eq!(last.header("if-none-match"), Some("\"abcdef\""));
    let r = edge.get_with("/vary/abc", &[("abc", "123")]).await;
    assert_eq!(r.x_cache(), "HIT");
}

/// Bug: `Surrogate-Control` (W3C Edge Architecture 1.0) was read beside `Cache-Control`, never
/// instead of it: `Cache-Control: no-store` for browsers with `Surrogate-Control: max-age` for
/// the CDN was passed every time, and a directive targeted at this edge (`max-age=600;vedge`)
/// read as garbage (cache-tests.fyi `surrogate-fresh-cc-nostore`,
/// `surrogate-max-age-me-target`). The edge now names its device token upstream
/// (`Surrogate-Capability: vedge="Surrogate/1.0"`), and a `Surrogate-Control` that says anything
/// for it replaces `Cache-Control` for its own decisions; one for other devices only, or with
/// nothing this cache acts on (ESI's `content`), leaves `Cache-Control` in charge.
#[tokio::test]
async fn surrogate_control_for_this_edge_replaces_cache_control() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (path, cc, sc, kept) in [
        ("/sc/me", "no-store", "max-age=3600;vedge", true),
        ("/sc/me-case", "no-store", "max-age=3600;VEDGE", true),
        ("/sc/all", "private", "max-age=3600", true),
        ("/sc/other", "no-store", "max-age=3600;not-for-you", false),
        ("/sc/other-ns", "max-age=3600", "no-store;not-for-you", true),
        ("/sc/esi", "no-store", "content=\"ESI/1.0\"", false),
        ("/sc/no-store", "max-age=3600", "no-store", false),
        ("/sc/extension", "no-store", "max-age=3600+600", true),
        // Directives targeted at this edge win over untargeted ones.
        (
            "/sc/targeted-wins",
            "max-age=3600",
            "no-store, max-age=3600;vedge",
            true,
        ),
        (
            "/sc/targeted-no-store",
            "max-age=3600",
            "max-age=3600, no-store;vedge",
            false,
        ),
    ] {
        origin.script(
            path,
            Script::ok("doc")
                .header("cache-control", cc)
                .header("surrogate-control", sc),
        );
        edge.get(path).await;
        edge.settle().await;
        let again = edge.get(path).await;
        assert_eq!(
            again.x_cache() == "HIT",
            kept,
            "{path}: {}",
            again.x_cache()
        );
        assert_eq!(origin.count(path), if kept { 1 } else { 2 }, "{path}");
        assert_eq!(
            origin.seen(path)[0].header("surrogate-capability"),
            Some("vedge=\"Surrogate/1.0\""),
            "{path}: the edge names its device token"
        );
    }
    // The lifetime targeted at this edge, not the general one: one second, not an hour.
    let path = "/sc/targeted-lifetime";
    origin.script(
        path,
        Script::ok("doc").header("surrogate-control", "max-age=3600, max-age=1;vedge"),
    );
    edge.get(path).await;
    edge.settle().await;
    let hit = edge.get(path).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(
        ["ttl=1;", "ttl=0;"]
            .iter()
            .any(|t| hit.h("cache-status").contains(t)),
        "{}",
        hit.h("cache-status")
    );
}
