//! CORS (`[route.cors]`): the edge answers preflights itself and puts its own
//! `Access-Control-*` fields on every answer of the route, hits included, so one stored object
//! serves browsers and non-browsers alike, whatever the origin did with `Origin`.

use http::Method;
use vedge::config::RawRoute;

use crate::support::token::{raw_token, token_for};
use crate::support::{edge_config, Origin, Script, TestEdge};

const PLAYER: &str = "https://player.example";

/// An edge whose `/v/` route has the policy in `cors` (the TOML of a `[route.cors]` table);
/// `extra` adds lines to the route (before the table).
async fn cors_edge(origin: &Origin, extra: &str, cors: &str) -> TestEdge {
    let mut raw = edge_config(origin);
    raw.routes.push(route(origin, extra, cors));
    TestEdge::start(raw).await
}

fn route(origin: &Origin, extra: &str, cors: &str) -> RawRoute {
    let text = format!(
        "prefix = \"/v/\"\norigin = \"{}\"\n{extra}\n[cors]\n{cors}\n",
        origin.url()
    );
    toml::from_str(&text).expect("route parses")
}

fn vary_names(r: &crate::support::edge::Resp) -> Vec<String> {
    r.headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// S3 (and GCS, and many packagers) add `Access-Control-Allow-Origin` only when the request
/// has an `Origin`. The first request here is a non-browser one (a prefetch, a probe, curl): the
/// stored answer has no CORS fields, and a browser's request that hits it still gets the edge's.
#[tokio::test]
async fn a_browser_hitting_an_object_stored_from_a_non_browser_request_gets_acao() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg1.ts",
        Script::ok("segment").header("cache-control", "max-age=60"),
    );
    let edge = cors_edge(&origin, "", &format!("allow_origins = [\"{PLAYER}\"]")).await;

    let first = edge.get("/v/seg1.ts").await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    assert_eq!(first.h("access-control-allow-origin"), "");
    edge.settle().await;

    let r = edge.get_with("/v/seg1.ts", &[("origin", PLAYER)]).await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.x_cache(),
            r.h("access-control-allow-origin")
        ),
        (200, "HIT", PLAYER)
    );
    // The answer depends on Origin: a browser cache must not reuse the first one for a CORS
    // request.
    assert!(vary_names(&first).contains(&"origin".to_string()));
    assert!(r
        .h("access-control-expose-headers")
        .contains("content-range"));
    assert!(r
        .h("access-control-expose-headers")
        .contains("cache-status"));
    assert!(vary_names(&r).contains(&"origin".to_string()));
    assert_eq!(r.body, "segment");
    assert_eq!(origin.count("/v/seg1.ts"), 1);
}

/// The origin's own CORS fields (here S3's answer to the first viewer's `Origin`, with
/// `Vary: Origin`) are the origin's, not the route's: with `allow_origins = ["*"]` one stored
/// object answers every viewer, each gets `*`, and no viewer's `Origin` reaches the origin.
#[tokio::test]
async fn the_origins_cors_fields_and_vary_origin_neither_leak_nor_split_the_cache() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg2.ts",
        Script::ok("segment")
            .header("cache-control", "max-age=60")
            .header("access-control-allow-origin", "https://a.example")
            .header("access-control-allow-methods", "GET, PUT, DELETE")
            .header("access-control-max-age", "3000")
            .header("vary", "Origin, Access-Control-Request-Headers"),
    );
    let edge = cors_edge(&origin, "", "allow_origins = [\"*\"]").await;

    for (i, viewer) in ["https://a.example", "https://b.example", ""]
        .into_iter()
        .enumerate()
    {
        let headers: Vec<(&str, &str)> = if viewer.is_empty() {
            vec![]
        } else {
            vec![("origin", viewer)]
        };
        let r = edge.get_with("/v/seg2.ts", &headers).await;
        let want = if i == 0 { "MISS" } else { "HIT" };
        assert_eq!(
            (r.x_cache(), r.h("access-control-allow-origin")),
            (want, "*"),
            "viewer {viewer:?}"
        );
        assert_eq!(r.h("access-control-allow-methods"), "");
        assert_eq!(r.h("access-control-max-age"), "");
        assert!(
            !vary_names(&r).contains(&"origin".to_string()),
            "a `*` answer does not vary: {:?}",
            vary_names(&r)
        );
        edge.settle().await;
    }
    assert_eq!(origin.count("/v/seg2.ts"), 1);
    let seen = origin.seen("/v/seg2.ts");
    assert_eq!(
        seen[0].header("origin"),
        None,
        "a viewer's Origin reached the fill"
    );
}

/// A preflight is the edge's: granted per the policy with no origin request, refused (403, no
/// `Access-Control-Allow-Origin`) for an origin, method or header the policy does not allow.
#[tokio::test]
async fn preflights_are_answered_at_the_edge() {
    let origin = Origin::start().await;
    let edge = cors_edge(
        &origin,
        "",
        &format!("allow_origins = [\"{PLAYER}\"]\nmax_age = \"10m\""),
    )
    .await;
    let preflight = |origin_h: &'static str, method: &'static str, headers: &'static str| {
        let mut b = edge
            .req(Method::OPTIONS, "/v/live/seg3.m4s")
            .header("origin", origin_h)
            .header("access-control-request-method", method);
        if !headers.is_empty() {
            b = b.header("access-control-request-headers", headers);
        }
        edge.send(b, bytes::Bytes::new())
    };

    let r = preflight(PLAYER, "GET", "range,cmcd-request").await;
    assert_eq!(r.status.as_u16(), 204);
    assert_eq!(r.h("access-control-allow-origin"), PLAYER);
    assert_eq!(r.h("access-control-allow-methods"), "GET, HEAD");
    let allowed = r.h("access-control-allow-headers");
    assert!(
        allowed.contains("range") && allowed.contains("cmcd-request"),
        "{allowed}"
    );
    assert_eq!(r.h("access-control-max-age"), "600");

    for (o, m, h) in [
        ("https://evil.example", "GET", ""),
        ("https://player.example.evil.example", "GET", ""),
        ("null", "GET", ""),
        (PLAYER, "DELETE", ""),
        (PLAYER, "GET", "range, x-evil"),
    ] {
        let r = preflight(o, m, h).await;
        assert_eq!(r.status.as_u16(), 403, "{o} {m} {h}");
        assert_eq!(r.h("access-control-allow-origin"), "", "{o} {m} {h}");
        assert_eq!(r.h("access-control-allow-methods"), "", "{o} {m} {h}");
    }
    assert_eq!(origin.count("/v/live/seg3.m4s"), 0);
    let mut metrics = String::new();
    edge.edge.metrics.render(&mut metrics);
    for line in [
        "vedge_cors_preflights_total{result=\"granted\"} 1",
        "vedge_cors_preflights_total{result=\"origin\"} 3",
        "vedge_cors_preflights_total{result=\"method\"} 1",
        "vedge_cors_preflights_total{result=\"headers\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// A disallowed `Origin` is served the content (CORS is the browser's to enforce) but gets no
/// `Access-Control-Allow-Origin`, not even the `*` the origin sent; nor does a look-alike of a
/// listed origin or of a `https://*.domain` entry.
#[tokio::test]
async fn a_disallowed_origin_is_never_reflected() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg4.ts",
        Script::ok("segment")
            .header("cache-control", "max-age=60")
            .header("access-control-allow-origin", "*"),
    );
    let edge = cors_edge(
        &origin,
        "",
        &format!("allow_origins = [\"{PLAYER}\", \"https://*.tv.example\"]"),
    )
    .await;
    for evil in [
        "https://evil.example",
        "https://player.example.evil.example",
        "https://player.example:8443",
        "http://player.example",
        "null",
        "https://tv.example",
        "https://app.tv.example.evil.example",
        "https://evil.example/.tv.example",
    ] {
        let r = edge.get_with("/v/seg4.ts", &[("origin", evil)]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"segment"[..]));
        assert_eq!(r.h("access-control-allow-origin"), "", "{evil}");
        assert_eq!(r.h("access-control-allow-credentials"), "", "{evil}");
        assert!(vary_names(&r).contains(&"origin".to_string()), "{evil}");
        edge.settle().await;
    }
    let r = edge.get_with("/v/seg4.ts", &[("origin", PLAYER)]).await;
    assert_eq!(
        (r.x_cache(), r.h("access-control-allow-origin")),
        ("HIT", PLAYER)
    );
    // A subdomain of a `https://*.tv.example` entry is allowed, and echoed as it came.
    let app = "https://app.tv.example";
    let r = edge.get_with("/v/seg4.ts", &[("origin", app)]).await;
    assert_eq!(
        (r.x_cache(), r.h("access-control-allow-origin")),
        ("HIT", app)
    );
    assert_eq!(origin.count("/v/seg4.ts"), 1);
}

/// `allow_credentials`: the allowed origin is echoed (never `*`) with
/// `Access-Control-Allow-Credentials: true` and `Vary: Origin`, on hits and on the edge's own
/// errors (a token refusal, so a player sees the 403 rather than a CORS failure), and the
/// preflight, which carries no credentials, is granted before the token gate. `*` with
/// credentials is refused at start.
#[tokio::test]
async fn credentials_echo_the_origin_on_hits_and_on_token_refusals() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg5.ts",
        Script::ok("segment").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    let mut r = route(
        &origin,
        "",
        &format!("allow_origins = [\"{PLAYER}\"]\nallow_credentials = true"),
    );
    r.token = Some(raw_token());
    raw.routes.push(r);
    let edge = TestEdge::start(raw).await;

    let signed = format!("/v/seg5.ts?hdnts={}", token_for("/v/*", None));
    for want in ["MISS", "HIT"] {
        let r = edge.get_with(&signed, &[("origin", PLAYER)]).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, want));
        assert_eq!(r.h("access-control-allow-origin"), PLAYER);
        assert_eq!(r.h("access-control-allow-credentials"), "true");
        assert!(vary_names(&r).contains(&"origin".to_string()));
        edge.settle().await;
    }
    let r = edge.get_with("/v/seg5.ts", &[("origin", PLAYER)]).await;
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(r.h("access-control-allow-origin"), PLAYER);
    assert_eq!(r.h("access-control-allow-credentials"), "true");

    let pre = edge
        .req(Method::OPTIONS, "/v/seg5.ts")
        .header("origin", PLAYER)
        .header("access-control-request-method", "GET");
    let r = edge.send(pre, bytes::Bytes::new()).await;
    assert_eq!(r.status.as_u16(), 204);
    assert_eq!(r.h("access-control-allow-origin"), PLAYER);
    assert_eq!(r.h("access-control-allow-credentials"), "true");
    assert_eq!(origin.count("/v/seg5.ts"), 1);

    let mut bad = edge_config(&origin);
    bad.routes.push(route(
        &origin,
        "",
        "allow_origins = [\"*\"]\nallow_credentials = true",
    ));
    let err = vedge::Config::try_from(bad).expect_err("`*` with credentials is refused");
    assert!(err.to_string().contains("allow_credentials"), "{err}");
}
