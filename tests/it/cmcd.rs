//! CMCD (CTA-5004) at the edge: read from the query parameter and the `CMCD-*` headers, kept
//! out of the cache key and off shared fills (unless `cmcd.forward`), passed through on
//! pass-through requests, logged on the access line (whose `complete` is true when every
//! promised byte went out, MISS included) and counted per route on `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::support::{edge_config, until, Gate, Origin, Script, TestEdge};

/// CTA-5004's example list, URL-encoded as a query parameter (dash.js sends this shape).
const SPEC_QUERY: &str = "CMCD=bl%3D21300%2Cbr%3D3200%2Cbs%2Ccid%3D%22faec5fc2-ac30-11ea-bb37-0242ac130002%22%2Cd%3D4004%2Cdl%3D18500%2Cmtp%3D48100%2Cnor%3D%22..%252F300kbps%252Ftrack.m4v%22%2Cnrr%3D%2212323-48763%22%2Cot%3Dv%2Cpr%3D1.08%2Crtp%3D12000%2Csf%3Dd%2Csid%3D%226e2fb550-c457-11e9-bb97-0800200c9a66%22%2Csu%2Ctb%3D6000";

type Line = BTreeMap<String, String>;

/// Collects the real `vedge::access` events of the test that owns it.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<Line>>>);

thread_local! {
    /// The collector of the test running on this thread (its current-thread runtime runs the
    /// edge and the client), if it captures.
    static SINK: std::cell::RefCell<Option<AccessLog>> = const { std::cell::RefCell::new(None) };
}

/// Stops a test's capture when dropped.
struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        SINK.with(|s| s.borrow_mut().take());
    }
}

impl AccessLog {
    /// Sends this thread's access lines here until the guard drops. One subscriber for the
    /// whole test binary, always interested in `vedge::access`, hands each line to the
    /// collector of the thread that wrote it. A subscriber per test thread (`set_default`)
    /// came and went with each test, and tracing caches a callsite's interest across threads:
    /// `access::enabled()` then answered yes when a request came in and no when its response
    /// was built, and a MISS was logged with `cache` "-" (2 runs in 6 of this module).
    fn capture(&self) -> Capture {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(Router),
            );
        });
        SINK.with(|s| *s.borrow_mut() = Some(self.clone()));
        Capture
    }

    fn lines(&self) -> Vec<Line> {
        self.0.lock().clone()
    }

    /// Waits (bounded) for the line of the request to `path` (the line is written when the
    /// server drops the body, just after the client has read it).
    async fn line_for(&self, path: &str, nth: usize) -> Line {
        until("the access line is written", || {
            self.lines()
                .iter()
                .filter(|l| l.get("path").map(String::as_str) == Some(path))
                .count()
                > nth
        })
        .await;
        self.lines()
            .into_iter()
            .filter(|l| l.get("path").map(String::as_str) == Some(path))
            .nth(nth)
            .expect("line present")
    }
}

struct Fields<'a>(&'a mut Line);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// The test binary's subscriber: access lines only, each to its thread's collector.
struct Router;

impl<S: tracing::Subscriber> Layer<S> for Router {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if metadata.target() == "vedge::access" {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target() == "vedge::access"
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        SINK.with(|s| {
            if let Some(log) = &*s.borrow() {
                let mut line = Line::new();
                event.record(&mut Fields(&mut line));
                log.0.lock().push(line);
            }
        });
    }
}

#[tokio::test]
async fn cmcd_is_not_in_the_cache_key_nor_sent_on_shared_fills() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg1.m4s",
        Script::ok("segment").header("cache-control", "max-age=60"),
    );
    let edge = TestEdge::start(edge_config(&origin)).await;

    let first = edge
        .get_with(
            &format!("/v/seg1.m4s?{SPEC_QUERY}"),
            &[("cmcd-request", "bl=400"), ("cmcd-status", "bs")],
        )
        .await;
    assert_eq!(first.x_cache(), "MISS");
    edge.settle().await;
    // Another player, other CMCD, same object.
    let second = edge
        .get("/v/seg1.m4s?CMCD=bl%3D9000%2Csid%3D%22other%22")
        .await;
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.body, "segment");
    assert_eq!(origin.count("/v/seg1.m4s"), 1);

    let seen = &origin.seen("/v/seg1.m4s")[0];
    assert_eq!(seen.target, "/v/seg1.m4s", "no CMCD query on the fill");
    for h in ["cmcd-request", "cmcd-object", "cmcd-status", "cmcd-session"] {
        assert_eq!(seen.header(h), None, "{h} sent on a shared fill");
    }
}

#[tokio::test]
async fn cmcd_stays_out_of_the_cache_key_under_an_operators_own_drop_list() {
    let origin = Origin::start().await;
    origin.script(
        "/v/seg9.m4s",
        Script::ok("segment").header("cache-control", "max-age=60"),
    );
    let mut raw = edge_config(&origin);
    raw.cache.drop_query_params = Some(vec!["utm_source".into()]);
    let edge = TestEdge::start(raw).await;

    let first = edge.get("/v/seg9.m4s?CMCD=bl%3D400&utm_source=a").await;
    assert_eq!(first.x_cache(), "MISS");
    edge.settle().await;
    let second = edge
        .get("/v/seg9.m4s?CMCD=bl%3D9000%2Csid%3D%22other%22")
        .await;
    assert_eq!(
        second.x_cache(),
        "HIT",
        "another viewer's CMCD is the same object"
    );
    assert_eq!(origin.count("/v/seg9.m4s"), 1);
    assert_eq!(origin.seen("/v/seg9.m4s")[0].target, "/v/seg9.m4s");
}

#[tokio::test]
async fn cmcd_forward_sends_it_on_fills_when_configured() {
    let origin = Origin::start().await;
    origin.script("/v/seg2.m4s", Script::ok("segment"));
    let mut raw = edge_config(&origin);
    raw.cmcd.forward = Some(true);
    let edge = TestEdge::start(raw).await;

    let r = edge
        .get_with(
            "/v/seg2.m4s?CMCD=bl%3D400&x=1",
            &[("cmcd-session", "sid=\"s1\"")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = &origin.seen("/v/seg2.m4s")[0];
    assert_eq!(seen.target, "/v/seg2.m4s?x=1&CMCD=bl%3D400");
    assert_eq!(seen.header("cmcd-session"), Some("sid=\"s1\""));
}

#[tokio::test]
async fn cmcd_other_query_parameters_still_reach_the_fill() {
    let origin = Origin::start().await;
    origin.script("/v/seg3.m4s", Script::ok("segment"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    edge.get("/v/seg3.m4s?a=1&CMCD=bl%3D400&b=2").await;
    assert_eq!(origin.seen("/v/seg3.m4s")[0].target, "/v/seg3.m4s?a=1&b=2");
}

/// A pass-through request is the viewer's own: it goes to the origin as sent, CMCD included.
#[tokio::test]
async fn cmcd_pass_through_requests_keep_it() {
    let origin = Origin::start().await;
    origin.script("/v/beacon", Script::ok("ok"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    let r = edge
        .send(
            edge.req(Method::POST, "/v/beacon?CMCD=bs%2Csid%3D%22s%22")
                .header("cmcd-status", "bs"),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.x_cache(), "BYPASS");
    let seen = &origin.seen("/v/beacon")[0];
    assert_eq!(seen.target, "/v/beacon?CMCD=bs%2Csid%3D%22s%22");
    assert_eq!(seen.header("cmcd-status"), Some("bs"));
}

/// The bug seen on a 196,608-byte fill: hyper drops a body once `Content-Length` bytes are
/// written, without polling it to its end, so a MISS was logged `complete=false`.
#[tokio::test]
async fn cmcd_access_line_of_a_196608_byte_miss_says_complete() {
    let log = AccessLog::default();
    let _guard = log.capture();
    let origin = Origin::start().await;
    let body = vec![7u8; 196_608];
    origin.script(
        "/v/big.m4s",
        Script::ok(body.clone()).header("cache-control", "max-age=60"),
    );
    origin.script("/v/chunked.m4s", Script::ok(body.clone()).chunked());
    let edge = TestEdge::start(edge_config(&origin)).await;

    let r = edge
        .get_with(
            &format!("/v/big.m4s?{SPEC_QUERY}"),
            &[("user-agent", "dash.js/4.7")],
        )
        .await;
    assert_eq!((r.x_cache(), r.body.len()), ("MISS", 196_608));
    let line = log.line_for("/v/big.m4s", 0).await;
    assert_eq!(line["cache"], "MISS");
    assert_eq!(line["bytes"], "196608");
    assert_eq!(line["complete"], "true", "{line:?}");
    assert_eq!(line["status"], "200");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["host"], edge.addr.to_string());
    assert_eq!(line["ua"], "dash.js/4.7");
    assert!(line.contains_key("ttfb_ms") && line.contains_key("ms"));
    assert!(
        line.contains_key("origin_ms"),
        "a MISS says how long the origin took"
    );
    assert_eq!(line["cmcd_sid"], "6e2fb550-c457-11e9-bb97-0800200c9a66");
    assert_eq!(line["cmcd_cid"], "faec5fc2-ac30-11ea-bb37-0242ac130002");
    assert_eq!(line["cmcd_bl"], "21300");
    assert_eq!(line["cmcd_br"], "3200");
    assert_eq!(line["cmcd_ot"], "v");
    assert_eq!(line["cmcd_su"], "true");
    assert_eq!(line["cmcd_bs"], "true");

    // The HIT, a range of it, and a MISS without a length are complete too.
    edge.settle().await;
    assert_eq!(edge.get("/v/big.m4s").await.x_cache(), "HIT");
    let hit = log.line_for("/v/big.m4s", 1).await;
    assert_eq!(
        (hit["complete"].as_str(), hit["bytes"].as_str()),
        ("true", "196608")
    );
    assert!(!hit.contains_key("cmcd_sid"), "no CMCD, no CMCD fields");
    assert!(
        !hit.contains_key("origin_ms"),
        "a HIT did not go to the origin"
    );
    let part = edge
        .get_with("/v/big.m4s", &[("range", "bytes=0-99")])
        .await;
    assert_eq!(part.body.len(), 100);
    let ranged = log.line_for("/v/big.m4s", 2).await;
    assert_eq!(
        (ranged["complete"].as_str(), ranged["bytes"].as_str()),
        ("true", "100")
    );
    assert_eq!(edge.get("/v/chunked.m4s").await.body.len(), 196_608);
    let chunked = log.line_for("/v/chunked.m4s", 0).await;
    assert_eq!(chunked["complete"], "true", "{chunked:?}");
    assert_eq!(
        edge.edge
            .metrics
            .responses_aborted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// The access line never carries the query (tokens, CMCD) in `path`.
#[tokio::test]
async fn cmcd_access_line_path_has_no_query() {
    let log = AccessLog::default();
    let _guard = log.capture();
    let origin = Origin::start().await;
    origin.script("/v/q.m4s", Script::ok("q"));
    let edge = TestEdge::start(edge_config(&origin)).await;
    edge.get("/v/q.m4s?token=secret&CMCD=bl%3D100").await;
    let line = log.line_for("/v/q.m4s", 0).await;
    assert!(line.values().all(|v| !v.contains("secret")), "{line:?}");
    assert_eq!(line["cmcd_bl"], "100");
}

#[tokio::test]
async fn cmcd_buffer_metrics_are_counted_per_route() {
    let origin = Origin::start().await;
    origin.script("/live/a.m4s", Script::ok("a"));
    origin.script("/vod/b.m4s", Script::ok("b"));
    let mut raw = edge_config(&origin);
    raw.routes = toml::from_str::<vedge::config::RawConfig>(&format!(
        "[[route]]\nprefix = \"/live/\"\norigin = \"{}\"\n",
        origin.url()
    ))
    .expect("route table")
    .routes;
    let edge = TestEdge::start(raw).await;

    edge.get_with(
        "/live/a.m4s",
        &[("cmcd-request", "bl=700"), ("cmcd-status", "bs")],
    )
    .await;
    edge.get("/live/a.m4s?CMCD=bl%3D1500").await;
    edge.get("/vod/b.m4s?CMCD=bl%3D30000").await;

    let m = &edge.edge.metrics.cmcd;
    assert_eq!(m.buffer_reports("/live/"), 2);
    assert_eq!(m.starvation("/live/"), 1);
    assert_eq!(m.buffer_reports("/"), 1);
    assert_eq!(m.starvation("/"), 0);
    let mut out = String::new();
    edge.edge.metrics.render(&mut out);
    assert!(out.contains("vedge_cmcd_buffer_length_ms_bucket{route=\"/live/\",le=\"1000\"} 1"));
    assert!(out.contains("vedge_cmcd_buffer_length_ms_bucket{route=\"/live/\",le=\"2000\"} 2"));
    assert!(out.contains("vedge_cmcd_buffer_starvation_total{route=\"/live/\"} 1"));
    assert!(out.contains("vedge_cmcd_buffer_length_ms_count{route=\"/\"} 1"));
}

/// CTA-5004 `nor` names the object the player asks for next (relative to this one): the edge
/// fetches it while the player is still busy with this one, so the next request is a HIT.
#[tokio::test]
async fn cmcd_nor_prefetches_the_next_object_before_the_player_asks() {
    let origin = Origin::start().await;
    for p in ["/v/hd/seg1.m4s", "/v/hd/seg2.m4s", "/v/sd/seg2.m4s"] {
        origin.script(p, Script::ok(p).header("cache-control", "max-age=60"));
    }
    let edge = TestEdge::start(edge_config(&origin)).await;

    // The header form (hls.js) and the query form (dash.js, URL-encoded), relative paths.
    let r = edge
        .get_with("/v/hd/seg1.m4s", &[("cmcd-request", "nor=\"seg2.m4s\"")])
        .await;
    assert_eq!(r.status, 200);
    until("the hinted object was fetched", || {
        origin.count("/v/hd/seg2.m4s") == 1
    })
    .await;
    edge.settle().await;
    let next = edge.get("/v/hd/seg2.m4s").await;
    assert_eq!(
        (next.x_cache(), next.body.as_ref()),
        ("HIT", &b"/v/hd/seg2.m4s"[..])
    );

    edge.get("/v/hd/seg1.m4s?CMCD=nor%3D%22..%252Fsd%252Fseg2.m4s%22%2Csid%3D%22s%22")
        .await;
    until("the query-form hint was fetched", || {
        origin.count("/v/sd/seg2.m4s") == 1
    })
    .await;
    edge.settle().await;
    assert_eq!(edge.get("/v/sd/seg2.m4s").await.x_cache(), "HIT");
    assert_eq!(origin.count("/v/sd/seg2.m4s"), 1);
}

/// A hint is the player's word about its own next request, not a way to make the edge fetch
/// anything: no prefetch for another host, above the root, from a request the edge refused or
/// the origin failed, or in a route with `prefetch = "off"`.
#[tokio::test]
async fn cmcd_nor_never_prefetches_elsewhere_or_after_a_failed_request() {
    let origin = Origin::start().await;
    origin.script(
        "/v/a.m4s",
        Script::ok("a").header("cache-control", "max-age=60"),
    );
    origin.script("/v/gone.m4s", Script::status(404, "no"));
    origin.script(
        "/off/a.m4s",
        Script::ok("a").header("cache-control", "max-age=60"),
    );
    for p in ["/x.m4s", "/v/after404.m4s", "/off/b.m4s"] {
        origin.script(p, Script::ok("x"));
    }
    let mut raw = edge_config(&origin);
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/off/".into(),
        origin: origin.url(),
        prefetch: Some("off".into()),
        ..vedge::config::RawRoute::default()
    });
    let edge = TestEdge::start(raw).await;

    for hint in [
        "nor=\"http://127.0.0.2/x.m4s\"",
        "nor=\"//127.0.0.2/x.m4s\"",
        "nor=\"../../x.m4s\"",
    ] {
        let r = edge.get_with("/v/a.m4s", &[("cmcd-request", hint)]).await;
        assert_eq!(r.status, 200, "{hint}");
    }
    let r = edge
        .get_with("/v/gone.m4s", &[("cmcd-request", "nor=\"after404.m4s\"")])
        .await;
    assert_eq!(r.status, 404);
    let r = edge
        .get_with("/off/a.m4s", &[("cmcd-request", "nor=\"b.m4s\"")])
        .await;
    assert_eq!(r.status, 200);
    // A hint that is taken starts its fill before the response goes out: by now, any would show.
    edge.settle().await;
    for p in ["/x.m4s", "/v/after404.m4s", "/off/b.m4s"] {
        assert_eq!(origin.count(p), 0, "{p} was prefetched");
    }
}

/// A route serving named viewer hosts (`hosts`) keys on its origin's host, which is none of
/// them: a `nor` hint there still prefetches (the hint was resolved as if a viewer had sent
/// the origin's host, and the route refused it as misdirected).
#[tokio::test]
async fn cmcd_nor_prefetches_on_a_route_with_named_hosts() {
    let origin = Origin::start().await;
    for p in ["/v/a1.m4s", "/v/a2.m4s"] {
        origin.script(p, Script::ok(p).header("cache-control", "max-age=60"));
    }
    let mut raw = edge_config(&origin);
    raw.origin = None;
    raw.routes = vec![vedge::config::RawRoute {
        prefix: "/".into(),
        origin: origin.url(),
        hosts: Some(vec!["live.example".into()]),
        ..Default::default()
    }];
    let edge = TestEdge::start(raw).await;
    let r = edge
        .get_with(
            "/v/a1.m4s",
            &[("host", "live.example"), ("cmcd-request", "nor=\"a2.m4s\"")],
        )
        .await;
    assert_eq!(r.status, 200);
    until("the hinted object was fetched", || {
        origin.count("/v/a2.m4s") == 1
    })
    .await;
}

/// An object that varies is stored under its viewers' variants, which a prefetch cannot fill:
/// a `nor` hint for such an object, already cached, sends nothing to the origin (it used to
/// fetch it again on every hint, under a variant no viewer has).
#[tokio::test]
async fn cmcd_nor_for_a_varied_object_already_cached_asks_the_origin_nothing() {
    let origin = Origin::start().await;
    for p in ["/v/b1.m4s", "/v/b2.m4s"] {
        origin.script(
            p,
            Script::ok(p)
                .header("cache-control", "max-age=60")
                .header("vary", "Origin"),
        );
    }
    let edge = TestEdge::start(edge_config(&origin)).await;
    let viewer = [("origin", "https://player.example")];
    assert_eq!(edge.get_with("/v/b2.m4s", &viewer).await.x_cache(), "MISS");
    edge.settle().await;
    // (Two origin requests: the first fill did not know the object varies.)
    let fetched = origin.count("/v/b2.m4s");
    for _ in 0..5 {
        let r = edge
            .get_with(
                "/v/b1.m4s",
                &[
                    ("origin", "https://player.example"),
                    ("cmcd-request", "nor=\"b2.m4s\""),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        edge.settle().await;
    }
    assert_eq!(
        origin.count("/v/b2.m4s"),
        fetched,
        "the hints fetched it again"
    );
    assert_eq!(edge.get_with("/v/b2.m4s", &viewer).await.x_cache(), "HIT");
}

/// CTA-5004 `nrr` is the byte range of the player's next request: of the `nor` object, or
/// without `nor` of this one (one file read range by range: DASH `SegmentBase`, HLS
/// `EXT-X-BYTERANGE`). It went unused: without `nor` nothing was prefetched, and with it the
/// whole object was fetched, whatever its size. Now the slice holding the range's first byte is
/// fetched, and the player's next range is a HIT that cost the origin one slice.
#[tokio::test]
async fn cmcd_nrr_prefetches_the_slice_of_the_next_range() {
    const MIB: usize = 1 << 20;
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    let video = |b: Vec<u8>| {
        Script::ok(b)
            .header("cache-control", "max-age=3600")
            .header("content-type", "video/mp4")
            .header("etag", "\"v1\"")
            .ranged()
    };
    origin.script("/v/one.mp4", video(body.clone()));
    origin.script("/v/two.mp4", video(body.clone()));
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.slice_size = Some("1MiB".into());
    let edge = TestEdge::start(raw).await;
    let ranges = |path: &str| -> Vec<String> {
        origin
            .seen(path)
            .iter()
            .map(|s| s.header("range").unwrap_or("").to_string())
            .collect()
    };

    // Without `nor`: the next range of this file (slice 3).
    let next = 3 * MIB + 100;
    let r = edge
        .get_with(
            "/v/one.mp4",
            &[
                ("range", "bytes=0-99"),
                ("cmcd-request", &format!("nrr=\"{next}-{}\"", next + 999)),
            ],
        )
        .await;
    assert_eq!(r.status, 206);
    until("the next range's slice was fetched", || {
        origin.count("/v/one.mp4") == 2
    })
    .await;
    edge.settle().await;
    assert_eq!(
        ranges("/v/one.mp4")[1],
        format!("bytes={}-{}", 3 * MIB, 4 * MIB - 1),
        "one slice, not the file"
    );
    let r = edge
        .get_with(
            "/v/one.mp4",
            &[("range", &format!("bytes={next}-{}", next + 999))],
        )
        .await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (206, "HIT"));
    assert_eq!(&r.body[..], &body[next..next + 1000]);

    // With `nor`: that object's range (slice 5), query form.
    edge.get_with(
        "/v/one.mp4?CMCD=nor%3D%22two.mp4%22%2Cnrr%3D%225242880-%22",
        &[("range", "bytes=0-99")],
    )
    .await;
    until("the named object's slice was fetched", || {
        origin.count("/v/two.mp4") == 1
    })
    .await;
    edge.settle().await;
    assert_eq!(
        ranges("/v/two.mp4"),
        [format!("bytes={}-{}", 5 * MIB, 6 * MIB - 1)]
    );
    let r = edge
        .get_with("/v/two.mp4", &[("range", "bytes=5242880-5242979")])
        .await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (206, "HIT"));
    assert_eq!(origin.count("/v/two.mp4"), 1);
    assert_eq!(origin.count("/v/one.mp4"), 2);
}

/// Bug: viewers that joined the edge's prefetch of a slice (a CMCD `nrr` hint) which the origin
/// then refused (a 503 to the prefetch) each passed to the origin with a request of their own:
/// the slice path lacked the whole-object path's rule that a refused prefetch's viewers claim
/// one fill between them. Two viewers: one origin request after the prefetch's, not two.
#[tokio::test]
async fn viewers_behind_a_refused_slice_prefetch_claim_one_fill() {
    const MIB: usize = 1 << 20;
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    let video = Script::ok(body.clone())
        .header("cache-control", "max-age=3600")
        .header("content-type", "video/mp4")
        .header("etag", "\"v1\"")
        .ranged();
    origin.script("/v/one.mp4", video.clone());
    let gate = Gate::new();
    origin.script("/v/two.mp4", Script::status(503, "not yet").gate(&gate));
    let mut raw = edge_config(&origin);
    raw.ram_size = Some("256MiB".into());
    raw.cache.slice_size = Some("1MiB".into());
    let edge = Arc::new(TestEdge::start(raw).await);

    edge.get_with(
        "/v/one.mp4",
        &[
            ("range", "bytes=0-99"),
            ("cmcd-request", "nor=\"two.mp4\",nrr=\"100-199\""),
        ],
    )
    .await;
    until(
        "the prefetch of two.mp4's first slice reached the origin",
        || origin.count("/v/two.mp4") == 1,
    )
    .await;
    let viewers: Vec<_> = (0..2)
        .map(|_| {
            let e = edge.clone();
            tokio::spawn(async move {
                e.get_with("/v/two.mp4", &[("range", "bytes=100-199")])
                    .await
            })
        })
        .collect();
    until("both viewers joined the prefetch", || edge.collapsed() == 2).await;
    origin.script("/v/two.mp4", video);
    gate.open();
    for v in viewers {
        let r = v.await.expect("viewer task");
        assert_eq!(r.status.as_u16(), 206, "{}", r.h("cache-status"));
        assert_eq!(&r.body[..], &body[100..200]);
    }
    assert_eq!(
        origin.count("/v/two.mp4"),
        2,
        "the refused prefetch, then one fill for both viewers"
    );
}
