//! Cache semantics an outside RFC review found wrong (RFC 9110, 9111, 9211), each checked as a
//! viewer and the origin see it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::{edge_config, until, Fault, Gate, Origin, Script, TestEdge};

const BODY: &[u8] = b"0123456789abcdefghij";

/// Bug: a plain GET of an object whose origin answers the edge's slice probe (`Range:
/// bytes=0-4194303`, which the viewer never sent) with a valid 206 of unknown complete length
/// (`Content-Range: bytes 0-19/*`, RFC 9110 §14.4) was a 502: the slice hook rejected the `*`
/// as "206 without a valid Content-Range". Now such an object is not sliced: it is fetched
/// whole, without `Range`, and stored as the 200 the origin sends; a viewer's own range is cut
/// from it, and the 206 is never stored as the whole.
#[tokio::test]
async fn a_206_of_unknown_length_to_the_slice_probe_fetches_the_object_whole() {
    let origin = Origin::start().await;
    let headers = |s: Script| {
        s.header("cache-control", "max-age=100")
            .header("etag", "\"s\"")
            .header("content-type", "video/mp4")
    };
    for path in ["/g/growing.mp4", "/g/ranged.mp4"] {
        origin.script(
            path,
            headers(Script::ok(BODY)).on_range(
                headers(Script::status(206, BODY)).header("content-range", "bytes 0-19/*"),
            ),
        );
    }
    let mut raw = edge_config(&origin);
    raw.cache.slice_size = Some("4MiB".into());
    let edge = TestEdge::start(raw).await;

    let r = edge.get("/g/growing.mp4").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.h("cache-status"));
    assert_eq!(&r.body[..], BODY);
    edge.settle().await;
    let ranges: Vec<Option<String>> = origin
        .seen("/g/growing.mp4")
        .iter()
        .map(|s| s.header("range").map(str::to_string))
        .collect();
    assert_eq!(
        ranges,
        [Some("bytes=0-4194303".to_string()), None],
        "the probe, then the whole object"
    );
    let again = edge.get("/g/growing.mp4").await;
    assert_eq!((again.status, again.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(&again.body[..], BODY);
    assert_eq!(again.h("content-range"), "");
    assert_eq!(origin.count("/g/growing.mp4"), 2);

    // A viewer's own range of such an object: its bytes, cut from the whole object.
    let r = edge
        .get_with("/g/ranged.mp4", &[("range", "bytes=2-4")])
        .await;
    assert_eq!(
        r.status,
        StatusCode::PARTIAL_CONTENT,
        "{}",
        r.h("cache-status")
    );
    assert_eq!(&r.body[..], b"234");
    assert_eq!(r.h("content-range"), "bytes 2-4/20");
}

const NO_STORE: [(&str, &str); 1] = [("cache-control", "no-store")];

/// Bug: a viewer's `Cache-Control: no-store` (RFC 9111 §5.2.1.5: store no response to it) was
/// ignored with `cache.request_directives` on: its answer was stored and the next viewer got a
/// HIT. Now its miss is a pass of its own: nothing stored, no fill for others to join; a fresh
/// stored copy still answers it. Segments keep their class TTLs (as for `no-cache`).
#[tokio::test]
async fn a_viewers_no_store_stores_nothing_but_a_fresh_copy_still_answers_it() {
    let origin = Origin::start().await;
    let fresh = |body: &'static str| Script::ok(body).header("cache-control", "max-age=100");
    origin.script("/ns/doc", fresh("doc"));
    origin.script("/ns/seg.ts", fresh("segment"));
    let edge = TestEdge::start(edge_config(&origin)).await;

    let r = edge.get_with("/ns/doc", &NO_STORE).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"doc"[..]));
    edge.settle().await;
    let next = edge.get("/ns/doc").await;
    assert_eq!(
        next.x_cache(),
        "MISS",
        "the no-store request's answer was stored: {}",
        next.h("cache-status")
    );
    assert_eq!(origin.count("/ns/doc"), 2);
    edge.settle().await;
    // Stored by the plain request: it answers a no-store one too, and stays.
    let r = edge.get_with("/ns/doc", &NO_STORE).await;
    assert_eq!((r.x_cache(), &r.body[..]), ("HIT", &b"doc"[..]));
    assert_eq!(edge.get("/ns/doc").await.x_cache(), "HIT");
    assert_eq!(origin.count("/ns/doc"), 2);

    // A segment follows its class TTL whatever a player sends.
    edge.get_with("/ns/seg.ts", &NO_STORE).await;
    edge.settle().await;
    assert_eq!(edge.get("/ns/seg.ts").await.x_cache(), "HIT");
    assert_eq!(origin.count("/ns/seg.ts"), 1);
}

/// Bug: the `no-store` request led an ordinary fill, so its answer was stored. Fixed, it must
/// not open the opposite hole either: a viewer's `no-store` never leaves another viewer's
/// answer unstored. A no-store viewer arriving while another viewer's fill is in flight leaves
/// that fill stored; a plain viewer arriving while a no-store viewer's request is with the
/// origin gets a fill of its own (stored), not the no-store viewer's unstored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_no_store_never_unstores_another_viewers_fill() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/ns/first-plain", "/ns/first-no-store"] {
        let gate = Gate::new();
        origin.script(
            path,
            Script::ok("shared")
                .header("cache-control", "max-age=100")
                .gate(&gate),
        );
        let plain_first = path == "/ns/first-plain";
        let (first, second) = (
            if plain_first { &[][..] } else { &NO_STORE[..] },
            if plain_first { &NO_STORE[..] } else { &[][..] },
        );
        let (a, b) = tokio::join!(edge.get_with(path, first), async {
            until("the first request reached the origin", || {
                origin.count(path) == 1
            })
            .await;
            let collapsed = edge.collapsed();
            let (b, ()) = tokio::join!(edge.get_with(path, second), async {
                until("the second request reached the origin", || {
                    origin.count(path) == 2 || (plain_first && edge.collapsed() > collapsed)
                })
                .await;
                gate.open();
            });
            b
        });
        assert_eq!(
            (a.status, b.status),
            (StatusCode::OK, StatusCode::OK),
            "{path}"
        );
        assert_eq!((&a.body[..], &b.body[..]), (&b"shared"[..], &b"shared"[..]));
        edge.settle().await;
        let after = edge.get(path).await;
        assert_eq!(
            after.x_cache(),
            "HIT",
            "{path}: the plain viewer's answer was not stored ({})",
            after.h("cache-status")
        );
        assert!(origin.count(path) <= 2, "{path}");
    }
}

/// Bug: a `Location` or `Content-Location` naming the edge's host on another port or scheme
/// invalidated the stored response of that path (the check compared host names only), although
/// RFC 9111 §4.4 forbids invalidating a URI whose origin (scheme, host, port) differs from the
/// target's. Now only URIs of the request's own origin are invalidated.
#[tokio::test]
async fn a_location_on_another_port_or_scheme_invalidates_nothing() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    let here = edge.addr;
    for p in ["/iv/port", "/iv/scheme", "/iv/same", "/iv/relative"] {
        origin.script(p, Script::ok("v").header("cache-control", "max-age=100"));
        edge.get(p).await;
        edge.settle().await;
        assert_eq!(edge.get(p).await.x_cache(), "HIT", "{p}");
    }
    origin.script(
        "/iv/other",
        Script::status(201, "created")
            .header("content-location", "http://127.0.0.1:9/iv/port")
            .header("location", &format!("https://{here}/iv/scheme")),
    );
    let post =
        |path: &'static str| edge.send(edge.req(Method::POST, path), Bytes::from_static(b"x"));
    assert_eq!(post("/iv/other").await.status, StatusCode::CREATED);
    for p in ["/iv/port", "/iv/scheme"] {
        let r = edge.get(p).await;
        assert_eq!(
            r.x_cache(),
            "HIT",
            "{p} was invalidated by another origin's URI"
        );
    }

    // The request's own origin, written absolute or relative, still is invalidated.
    origin.script(
        "/iv/mine",
        Script::status(201, "created")
            .header("location", &format!("http://{here}/iv/same"))
            .header("content-location", "relative"),
    );
    assert_eq!(post("/iv/mine").await.status, StatusCode::CREATED);
    assert_eq!(edge.get("/iv/same").await.x_cache(), "MISS");
    assert_eq!(edge.get("/iv/relative").await.x_cache(), "MISS");
}

/// The last `Cache-Status` member: this node's (`vedge; fwd=stale; ...`).
fn our_member(cs: &str) -> &str {
    cs.rsplit(',').next().unwrap_or("").trim()
}

/// Bug: when an expired stored response's refetch failed at the connection level (a reset, a
/// refused connection) and the copy could not stand in (no `stale-if-error`), the 502 said
/// `X-Cache: MISS` and `Cache-Status: fwd=miss`, as if nothing had been stored; the same case
/// with an origin 503 already said `EXPIRED` and `fwd=stale` (RFC 9211 §2.2: a stale stored
/// response was selected). Now both say `EXPIRED` and `fwd=stale`.
#[tokio::test]
async fn a_failed_refetch_of_an_expired_copy_says_stale_not_miss() {
    let origin = Origin::start().await;
    let expiring = Script::ok("v")
        .header("cache-control", "max-age=1")
        .header("etag", "\"v\"");
    for p in ["/cs/reset", "/cs/refused", "/cs/never"] {
        origin.script(p, expiring.clone());
    }
    let edge = TestEdge::start_with_tokio_clock(edge_config(&origin)).await;
    for p in ["/cs/reset", "/cs/refused"] {
        edge.get(p).await;
    }
    edge.settle().await;
    edge.advance(Duration::from_secs(3)).await;

    origin.script("/cs/reset", Script::ok("x").fault(Fault::Close));
    let r = edge.get("/cs/reset").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        (r.x_cache(), our_member(r.h("cache-status"))),
        ("EXPIRED", "vedge; fwd=stale; detail=origin-protocol"),
    );

    // Nothing stored: still a miss.
    origin.script("/cs/never", Script::ok("x").fault(Fault::Close));
    let r = edge.get("/cs/never").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.x_cache(), "MISS");
    assert!(
        r.h("cache-status").contains("fwd=miss"),
        "{}",
        r.h("cache-status")
    );

    origin.stop_and_wait().await;
    let r = edge.get("/cs/refused").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.x_cache(), "EXPIRED");
    assert!(
        our_member(r.h("cache-status")).starts_with("vedge; fwd=stale; detail="),
        "{}",
        r.h("cache-status")
    );
}

/// Bug: `Accept-Encoding: gzip;Q=0` was served the stored gzip variant: the variant's
/// normalisation matched the weight's name case-sensitively (`q=`), so `Q=0` read as no weight
/// at all, although parameter names are case-insensitive and a weight of 0 means "not
/// acceptable" (RFC 9110 §12.4.2). Now such a viewer is the identity variant, and the origin is
/// asked for identity.
#[tokio::test]
async fn a_zero_weight_refuses_gzip_however_it_is_spelled() {
    let origin = Origin::start().await;
    let edge = TestEdge::start(edge_config(&origin)).await;
    for (path, refusing) in [
        ("/ae/upper", "gzip;Q=0"),
        ("/ae/spaced", "gzip; q=0.000"),
        ("/ae/listed", "gzip;q=0, identity"),
    ] {
        origin.script(
            path,
            Script::ok("coded")
                .header("cache-control", "max-age=100")
                .header("vary", "Accept-Encoding")
                .header("content-encoding", "gzip"),
        );
        edge.get_with(path, &[("accept-encoding", "gzip")]).await;
        edge.settle().await;
        let r = edge.get_with(path, &[("accept-encoding", refusing)]).await;
        assert_ne!(
            r.x_cache(),
            "HIT",
            "{refusing:?} was served the gzip variant"
        );
        let seen = origin.seen(path);
        assert_eq!(seen.len(), 2, "{refusing:?}");
        assert_eq!(
            seen[1].header("accept-encoding"),
            Some("identity"),
            "{refusing:?}"
        );
    }
}
