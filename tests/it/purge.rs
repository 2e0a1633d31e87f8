//! `POST /admin/purge`, end to end: each selector (url, prefix, tag, asset), soft purge, host
//! handling, a purge beating a fill in flight, and (real binary) a purge surviving SIGKILL.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::binary::{BinaryEdge, ADMIN_TOKEN};
use crate::support::edge::{
    admin_purge as purge, admin_send, edge_config, until, AdminApi, TestEdge,
};
use crate::support::origin::{Gate, Origin, Script};

/// An in-process edge with its admin API on a port of its own.
struct Setup {
    edge: TestEdge,
    admin: u16,
    _api: AdminApi,
}

async fn setup(origin: &Origin) -> Setup {
    let mut raw = edge_config(origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    Setup {
        edge,
        admin: api.addr.port(),
        _api: api,
    }
}

fn cached(body: &str) -> Script {
    Script::ok(body.to_string()).header("cache-control", "max-age=600")
}

#[tokio::test]
async fn url_purge_makes_the_next_request_reach_the_origin_for_that_url_only() {
    let origin = Origin::start().await;
    origin.script("/a.ts", cached("a"));
    origin.script("/b.ts", cached("b"));
    let s = setup(&origin).await;
    for p in ["/a.ts", "/b.ts", "/a.ts", "/b.ts"] {
        s.edge.get(p).await;
    }
    let host = s.edge.addr.to_string();
    let (st, v) = purge(s.admin, &format!(r#"{{"urls":["/a.ts"],"host":"{host}"}}"#)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["purged"], 1);
    assert_eq!(v["selected"]["urls"], 1);
    s.edge.get("/a.ts").await;
    s.edge.get("/b.ts").await;
    assert_eq!(origin.count("/a.ts"), 2);
    assert_eq!(origin.count("/b.ts"), 1);
    // A full URL carries its own host.
    let (st, v) = purge(s.admin, &format!(r#"{{"urls":["http://{host}/b.ts"]}}"#)).await;
    assert_eq!((st, v["purged"].clone()), (200, 1.into()));
    s.edge.get("/b.ts").await;
    assert_eq!(origin.count("/b.ts"), 2);
}

#[tokio::test]
async fn paths_purge_the_routes_keys_and_need_a_host_only_on_pass_host_routes() {
    let origin = Origin::start().await;
    origin.script("/a.ts", cached("a"));
    origin.script("/ph/b.ts", cached("b"));
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    raw.routes.push(vedge::config::RawRoute {
        prefix: "/ph/".into(),
        origin: origin.url(),
        pass_host: Some(true),
        ..Default::default()
    });
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let admin = api.addr.port();

    edge.get("/a.ts").await;
    edge.get("/ph/b.ts").await;
    // A default route keys on its own origin host, so a path names its key without a host.
    let (st, v) = purge(admin, r#"{"urls":["/a.ts"]}"#).await;
    assert_eq!((st, v["purged"].clone()), (200, 1.into()), "{v}");
    edge.get("/a.ts").await;
    assert_eq!(origin.count("/a.ts"), 2);
    // A pass_host route keys on the viewer's host: a path there needs "host".
    let (st, _) = purge(admin, r#"{"prefixes":["/ph/"]}"#).await;
    assert_eq!(st, 400, "a pass_host prefix without a host is refused");
    let (st, _) = purge(admin, r#"{"url":["/a.ts"],"host":"x"}"#).await;
    assert_eq!(st, 400, "a misspelt selector is an error, not a no-op");
    let (st, v) = purge(admin, r#"{"prefixes":["/ph/"],"host":"other.example"}"#).await;
    assert_eq!(st, 200, "{v}");
    edge.get("/ph/b.ts").await;
    assert_eq!(origin.count("/ph/b.ts"), 1, "another host's purge left it");
    let host = edge.addr.to_string();
    let (st, v) = purge(
        admin,
        &format!(r#"{{"prefixes":["/ph/"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!((st, v["purged"].clone()), (200, 1.into()), "{v}");
    edge.get("/ph/b.ts").await;
    assert_eq!(origin.count("/ph/b.ts"), 2);
}

#[tokio::test]
async fn prefix_purge_removes_everything_under_the_prefix() {
    let origin = Origin::start().await;
    for p in ["/live/ch1/1.ts", "/live/ch1/2.ts", "/live/ch2/1.ts"] {
        origin.script(p, cached(p));
    }
    let s = setup(&origin).await;
    for p in ["/live/ch1/1.ts", "/live/ch1/2.ts", "/live/ch2/1.ts"] {
        s.edge.get(p).await;
    }
    let host = s.edge.addr.to_string();
    let (st, v) = purge(
        s.admin,
        &format!(r#"{{"prefixes":["/live/ch1/"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["selected"]["prefixes"], 2);
    for p in ["/live/ch1/1.ts", "/live/ch1/2.ts", "/live/ch2/1.ts"] {
        s.edge.get(p).await;
    }
    assert_eq!(origin.count("/live/ch1/1.ts"), 2);
    assert_eq!(origin.count("/live/ch1/2.ts"), 2);
    assert_eq!(origin.count("/live/ch2/1.ts"), 1);
}

#[tokio::test]
async fn tag_purge_removes_every_object_carrying_the_tag() {
    let origin = Origin::start().await;
    origin.script(
        "/m/1.ts",
        cached("1").header("surrogate-key", "movie other"),
    );
    origin.script("/m/2.ts", cached("2").header("surrogate-key", "movie"));
    origin.script("/n/1.ts", cached("3").header("surrogate-key", "other"));
    let s = setup(&origin).await;
    for p in ["/m/1.ts", "/m/2.ts", "/n/1.ts"] {
        s.edge.get(p).await;
    }
    let (st, v) = purge(s.admin, r#"{"tags":["movie"]}"#).await;
    assert_eq!((st, v["selected"]["tags"].clone()), (200, 2.into()));
    for p in ["/m/1.ts", "/m/2.ts", "/n/1.ts"] {
        s.edge.get(p).await;
    }
    assert_eq!(origin.count("/m/1.ts"), 2);
    assert_eq!(origin.count("/m/2.ts"), 2);
    assert_eq!(origin.count("/n/1.ts"), 1);
}

#[tokio::test]
async fn asset_purge_removes_the_manifest_and_everything_it_references() {
    let origin = Origin::start().await;
    let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow/index.m3u8\n";
    let media = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2,\ns1.m4s\n#EXTINF:2,\ns2.m4s\n#EXT-X-ENDLIST\n";
    let hls = "application/vnd.apple.mpegurl";
    origin.script(
        "/vod/movie/master.m3u8",
        cached(master).header("content-type", hls),
    );
    origin.script(
        "/vod/movie/low/index.m3u8",
        cached(media).header("content-type", hls),
    );
    let objects = [
        "/vod/movie/low/init.mp4",
        "/vod/movie/low/s1.m4s",
        "/vod/movie/low/s2.m4s",
    ];
    for p in objects {
        origin.script(p, cached(p).header("content-type", "video/mp4"));
    }
    origin.script("/vod/other/s1.m4s", cached("x"));
    let s = setup(&origin).await;
    let all: Vec<&str> = ["/vod/movie/master.m3u8", "/vod/movie/low/index.m3u8"]
        .into_iter()
        .chain(objects)
        .collect();
    for p in all.iter().chain(&["/vod/other/s1.m4s"]) {
        assert_eq!(s.edge.get(p).await.status, 200);
    }
    let host = s.edge.addr.to_string();
    let (st, v) = purge(
        s.admin,
        &format!(r#"{{"assets":["/vod/movie/master.m3u8"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["selected"]["assets"], 5, "{v}");
    for p in all.iter().chain(&["/vod/other/s1.m4s"]) {
        s.edge.get(p).await;
    }
    for p in &all {
        assert_eq!(origin.count(p), 2, "{p} was not purged");
    }
    assert_eq!(origin.count("/vod/other/s1.m4s"), 1);
}

#[tokio::test]
async fn soft_purge_serves_stale_and_revalidates() {
    let origin = Origin::start().await;
    origin.script(
        "/s.ts",
        Script::ok("body")
            .header("cache-control", "max-age=600, stale-while-revalidate=600")
            .header("etag", "\"v1\""),
    );
    let s = setup(&origin).await;
    s.edge.get("/s.ts").await;
    assert_eq!(s.edge.get("/s.ts").await.x_cache(), "HIT");
    let host = s.edge.addr.to_string();
    let (st, v) = purge(
        s.admin,
        &format!(r#"{{"urls":["/s.ts"],"host":"{host}","soft":true}}"#),
    )
    .await;
    assert_eq!(
        (st, v["soft"].clone(), v["purged"].clone()),
        (200, true.into(), 1.into())
    );
    let r = s.edge.get("/s.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        &r.body[..],
        b"body",
        "the stale copy still protects viewers"
    );
    assert_ne!(
        r.x_cache(),
        "HIT",
        "a soft-purged object is not served as fresh"
    );
    until("the origin sees a revalidation", || {
        origin.count("/s.ts") == 2
    })
    .await;
    let seen = origin.seen("/s.ts");
    assert!(
        seen[1]
            .headers
            .iter()
            .any(|(k, v)| k == "if-none-match" && v == "\"v1\""),
        "the next fetch revalidates: {:?}",
        seen[1].headers
    );
}

#[tokio::test]
async fn a_purge_beats_a_fill_in_flight() {
    let origin = Origin::start().await;
    let gate = Gate::new();
    origin.script("/slow.ts", cached("old").gate(&gate));
    let s = setup(&origin).await;
    let e = Arc::new(s.edge);
    let first = {
        let e = e.clone();
        tokio::spawn(async move { e.get("/slow.ts").await })
    };
    until("the fill reached the origin", || {
        origin.count("/slow.ts") == 1
    })
    .await;
    let host = e.addr.to_string();
    let (st, _) = purge(
        s.admin,
        &format!(r#"{{"urls":["/slow.ts"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(st, 200);
    gate.open();
    let r = first.await.expect("first viewer");
    assert_eq!(
        &r.body[..],
        b"old",
        "the viewer attached to the fill gets its bytes"
    );
    e.get("/slow.ts").await;
    assert_eq!(
        origin.count("/slow.ts"),
        2,
        "the purged fill stored nothing"
    );
}

/// A POST to the binary's admin API.
async fn binary_purge(v: &BinaryEdge, body: &str) -> u16 {
    purge(v.admin, body).await.0
}

fn start_with_store(origin: &str, store: &std::path::Path) -> BinaryEdge {
    let flags = ["--store-size", "64MiB", "--store-region-size", "4MiB"];
    let store_flag = [OsStr::new("--store"), store.as_os_str()];
    BinaryEdge::start(origin, store_flag.into_iter().chain(flags.map(OsStr::new)))
}

#[tokio::test]
async fn an_acknowledged_purge_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("vedge.store");
    let origin = Origin::start().await;
    let paths = [
        "/p/url.m4s",
        "/p/dir/1.m4s",
        "/p/dir/2.m4s",
        "/p/tag.m4s",
        "/p/keep.m4s",
    ];
    for p in paths {
        let mut sc = Script::ok(vec![7u8; 100_000])
            .header("content-type", "video/mp4")
            .header("cache-control", "max-age=600");
        if p == "/p/tag.m4s" {
            sc = sc.header("surrogate-key", "t1");
        }
        origin.script(p, sc);
    }
    let mut v = start_with_store(&origin.url(), &store);
    v.ready().await;
    for p in paths {
        assert_eq!(v.get(v.port, p).await.expect("fetch").status(), 200);
    }
    for _ in 0..200 {
        if v.metric("vedge_store_objects").await >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(v.metric("vedge_store_objects").await, 5, "not all stored");
    let body = r#"{"urls":["/p/url.m4s"],"prefixes":["/p/dir/"],"tags":["t1"],"host":"edge.test"}"#;
    assert_eq!(binary_purge(&v, body).await, 200);
    v.signal(libc::SIGKILL);

    let v = start_with_store(&origin.url(), &store);
    v.ready().await;
    for p in paths {
        let r = v.get(v.port, p).await.expect("fetch after restart");
        assert_eq!(r.status(), 200);
    }
    for p in ["/p/url.m4s", "/p/dir/1.m4s", "/p/dir/2.m4s", "/p/tag.m4s"] {
        assert_eq!(
            origin.count(p),
            2,
            "{p} came back from the SSD after SIGKILL"
        );
    }
    assert_eq!(
        origin.count("/p/keep.m4s"),
        1,
        "the unpurged object is a disk hit"
    );
}

/// A purge removes a varied object's variants, not what the edge learnt of how the origin
/// varies it: the first viewer after the purge is answered by one origin fetch that already
/// carries its varied header, not by a fetch without it followed by a second one with it.
#[tokio::test]
async fn the_first_request_after_purging_a_varied_object_fetches_once() {
    let origin = Origin::start().await;
    origin.script("/v/seg.ts", cached("for tv").header("vary", "X-Device"));
    let s = setup(&origin).await;
    let tv = [("x-device", "tv")];
    s.edge.get_with("/v/seg.ts", &tv).await;
    s.edge.settle().await;
    let r = s.edge.get_with("/v/seg.ts", &tv).await;
    assert_eq!(r.x_cache(), "HIT");
    let before = origin.count("/v/seg.ts");

    let host = s.edge.addr.to_string();
    let (st, v) = purge(
        s.admin,
        &format!(r#"{{"urls":["/v/seg.ts"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let r = s.edge.get_with("/v/seg.ts", &tv).await;
    assert_eq!(&r.body[..], b"for tv");
    assert_eq!(
        origin.count("/v/seg.ts"),
        before + 1,
        "one fetch after the purge"
    );
    let seen = origin.seen("/v/seg.ts");
    let last = seen.last().expect("the origin saw the refill");
    let device = last.headers.iter().find(|(n, _)| n == "x-device");
    assert_eq!(device.map(|(_, v)| v.as_str()), Some("tv"));
    s.edge.settle().await;
    assert_eq!(s.edge.get_with("/v/seg.ts", &tv).await.x_cache(), "HIT");
}

/// The key a viewer's request for `path` is cached under on `edge`.
fn key_of(edge: &TestEdge, path: &str) -> String {
    vedge::proxy::target::resolve(&edge.edge.config, None, path)
        .expect("routed")
        .key
}

/// A purge request listing more entries than `admin::purge::MAX_ENTRIES` (10,000) is refused
/// (413, naming the bound) before anything is purged or fanned out. Before, a purge of 10^5
/// URLs ran them all at once.
#[tokio::test]
async fn a_purge_listing_more_entries_than_the_bound_is_refused_and_purges_nothing() {
    const MAX_ENTRIES: usize = 10_000;
    let origin = Origin::start().await;
    origin.script("/a.ts", cached("a"));
    let s = setup(&origin).await;
    s.edge.get("/a.ts").await;
    s.edge.settle().await;
    let urls: Vec<String> = std::iter::once("/a.ts".to_string())
        .chain((1..100_000).map(|i| format!("/x/{i}.ts")))
        .collect();
    let body = serde_json::json!({ "urls": urls }).to_string();
    let (st, v) = purge(s.admin, &body).await;
    let after = s.edge.get("/a.ts").await;
    println!(
        "100000 urls: {st} {}; /a.ts afterwards: {}",
        v.to_string().chars().take(200).collect::<String>(),
        after.x_cache()
    );
    assert_eq!(st, 413, "{v}");
    assert!(
        v.as_str()
            .is_some_and(|m| m.contains(&MAX_ENTRIES.to_string())),
        "the error names the bound: {v}"
    );
    assert_eq!(after.x_cache(), "HIT", "nothing was purged");
    assert_eq!(origin.count("/a.ts"), 1);
    // At the bound, the purge runs.
    let urls: Vec<String> = std::iter::once("/a.ts".to_string())
        .chain((1..MAX_ENTRIES).map(|i| format!("/x/{i}.ts")))
        .collect();
    let body = serde_json::json!({ "urls": urls }).to_string();
    let (st, v) = purge(s.admin, &body).await;
    assert_eq!((st, &v["purged"]), (200, &1.into()), "{v}");
}

/// A large purge lets the runtime's other tasks run while it works: on a single-threaded
/// runtime (the edge, its admin API and this test share one thread), another task sees the
/// purge half done (its first object gone, the purge not answered yet) at least once. Before,
/// the whole purge ran in one poll, so nothing else on that worker ran until it was over.
#[tokio::test(flavor = "current_thread")]
async fn a_large_purge_lets_other_tasks_run_while_it_works() {
    use std::sync::atomic::Ordering::Relaxed;
    let origin = Origin::start().await;
    origin.script("/a.ts", cached("a"));
    let s = Arc::new(setup(&origin).await);
    s.edge.get("/a.ts").await;
    s.edge.settle().await;
    let key = key_of(&s.edge, "/a.ts");
    assert!(s.edge.edge.ram.contains(&key));
    let purged_before = s.edge.edge.metrics.purged.load(Relaxed);

    // Counts the turns it gets between the purge removing /a.ts and the purge ending.
    let observer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut turns_mid_purge = 0u64;
            for _ in 0..50_000_000u64 {
                let ended = s.edge.edge.metrics.purged.load(Relaxed) != purged_before;
                if ended {
                    return Some(turns_mid_purge);
                }
                if !s.edge.edge.ram.contains(&key) {
                    turns_mid_purge += 1;
                }
                tokio::task::yield_now().await;
            }
            None
        })
    };
    let urls: Vec<String> = std::iter::once("/a.ts".to_string())
        .chain((1..5_000).map(|i| format!("/x/{i}.ts")))
        .collect();
    let body = serde_json::json!({ "urls": urls }).to_string();
    let (st, v) = purge(s.admin, &body).await;
    let turns = observer.await.expect("observer");
    println!("purge answered {st}; the other task's turns while it ran: {turns:?}");
    assert_eq!((st, &v["purged"]), (200, &1.into()), "{v}");
    assert!(
        turns.is_some_and(|t| t > 0),
        "another task ran while the purge worked: {turns:?}"
    );
}

/// An outside review: on an edge with an SSD store, a 10,000-URL purge stalled a concurrent RAM
/// hit for ~2 s (the same purge without a store: a few ms). The store applied the purge on the
/// worker under its state lock, which every RAM hit takes to count the hit
/// (`Store::touch`), and each mark cost a scan of the operators' prefix marks. Here the edge
/// and this test share one thread: every viewer request made while the purge runs must be
/// answered long before it ends.
#[tokio::test]
async fn a_large_purge_with_a_store_does_not_stall_ram_hits() {
    let origin = Origin::start().await;
    origin.script("/a.ts", cached("a"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = edge_config(&origin);
    raw.admin_token = Some(ADMIN_TOKEN.into());
    raw.store = crate::support::edge::small_store(dir.path());
    let edge = TestEdge::start(raw).await;
    let api = edge.admin().await;
    let admin = api.addr.port();
    let host = edge.addr.to_string();
    for _ in 0..2 {
        assert_eq!(edge.get("/a.ts").await.status, 200);
        edge.settle().await;
    }
    // Operators' prefix purges from before: marks the store keeps.
    let prefixes: Vec<String> = (0..4000).map(|i| format!("/old/{i}/")).collect();
    let body = serde_json::json!({ "prefixes": prefixes, "host": host }).to_string();
    assert_eq!(purge(admin, &body).await.0, 200);

    let urls: Vec<String> = (0..10_000).map(|i| format!("/x/{i}.ts")).collect();
    let body = serde_json::json!({ "urls": urls, "host": host }).to_string();
    let started = std::time::Instant::now();
    let big = tokio::spawn(async move { purge(admin, &body).await });
    let (mut worst, mut hits) = (Duration::ZERO, 0u32);
    while !big.is_finished() {
        let t = std::time::Instant::now();
        let r = edge.get("/a.ts").await;
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
        hits += 1;
    }
    let took = started.elapsed();
    let (st, v) = big.await.expect("purge task");
    println!("10,000-URL purge: {took:?}; {hits} RAM hits meanwhile, the slowest {worst:?}");
    assert_eq!(st, 200, "{v}");
    assert!(
        worst < Duration::from_millis(500),
        "a RAM hit waited {worst:?} for a purge that took {took:?}"
    );
}

/// One purge mixing kinds: a varied URL (three variants: the one the edge fetched before it
/// knew the `Vary`, tv and phone), a plain URL, a prefix that also covers the plain URL, and a
/// tag. A hard purge counts each object once, for the first entry that selects it; a soft one
/// counts every entry's objects. Keys without variants are looked up one by one and the rest go
/// through the RAM tier in one scan per batch: the counts must not depend on which.
#[tokio::test]
async fn a_mixed_purge_counts_each_object_once_for_the_entry_that_selects_it() {
    let origin = Origin::start().await;
    origin.script("/mix/v.ts", cached("v").header("vary", "X-Device"));
    for p in ["/mix/plain.ts", "/mix/dir/1.ts", "/mix/dir/2.ts"] {
        origin.script(p, cached(p));
    }
    origin.script("/mix/tagged.ts", cached("t").header("cache-tag", "mixtag"));
    let s = setup(&origin).await;
    let host = s.edge.addr.to_string();
    let body = format!(
        r#"{{"urls":["/mix/v.ts","/mix/plain.ts"],"prefixes":["/mix/dir/","/mix/plain"],"tags":["mixtag"],"host":"{host}"SOFT}}"#
    );
    for soft in [false, true] {
        for d in ["tv", "phone"] {
            s.edge.get_with("/mix/v.ts", &[("x-device", d)]).await;
        }
        for p in [
            "/mix/plain.ts",
            "/mix/dir/1.ts",
            "/mix/dir/2.ts",
            "/mix/tagged.ts",
        ] {
            s.edge.get(p).await;
        }
        s.edge.settle().await;
        let body = body.replace("SOFT", if soft { r#","soft":true"# } else { "" });
        let (st, v) = purge(s.admin, &body).await;
        assert_eq!(st, 200, "{v}");
        // The soft round comes after the hard one: the edge knows the Vary, so the variant
        // fetched without the header is not made again.
        let (urls, prefixes) = if soft { (3, 3) } else { (4, 2) };
        assert_eq!(v["purged"], urls + prefixes + 1, "soft {soft}: {v}");
        assert_eq!(v["selected"]["urls"], urls, "soft {soft}: {v}");
        assert_eq!(v["selected"]["prefixes"], prefixes, "soft {soft}: {v}");
        assert_eq!(v["selected"]["tags"], 1, "soft {soft}: {v}");
        let r = s.edge.get_with("/mix/v.ts", &[("x-device", "tv")]).await;
        assert_ne!(r.x_cache(), "HIT", "soft {soft}");
        assert_ne!(s.edge.get("/mix/plain.ts").await.x_cache(), "HIT");
    }
}

/// A large manifest's references (what a purge by asset removes) are read off the worker that
/// stored it: on a single-threaded runtime (the edge and this test share one thread), another
/// task runs between the fill's end and the index knowing the manifest. Before, a VOD playlist
/// of 300,000 segments held its worker, and every viewer on it, for over a second.
#[tokio::test(flavor = "current_thread")]
async fn a_large_manifest_is_indexed_off_the_worker_that_stored_it() {
    use std::sync::atomic::Ordering::Relaxed;
    let origin = Origin::start().await;
    let mut playlist = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    for i in 0..20_000 {
        playlist.push_str(&format!("#EXTINF:2.0,\nseg_{i:06}.ts\n"));
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    assert!(playlist.len() > 256 << 10);
    origin.script(
        "/vod/long/index.m3u8",
        cached(&playlist).header("content-type", "application/vnd.apple.mpegurl"),
    );
    let s = Arc::new(setup(&origin).await);
    assert!(s.edge.edge.assets.is_empty());
    let observer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut turns = 0u64;
            for _ in 0..50_000_000u64 {
                if !s.edge.edge.assets.is_empty() {
                    return Some(turns);
                }
                let filled = s.edge.edge.fills.is_empty()
                    && s.edge.edge.metrics.fills_aborted.load(Relaxed) == 0
                    && !s.edge.edge.ram.is_empty();
                if filled {
                    turns += 1;
                }
                tokio::task::yield_now().await;
            }
            None
        })
    };
    let r = s.edge.get("/vod/long/index.m3u8").await;
    assert_eq!(r.status, http::StatusCode::OK);
    let turns = observer.await.expect("observer");
    println!("turns between the fill's end and the index knowing the manifest: {turns:?}");
    assert!(
        turns.is_some_and(|t| t > 0),
        "the manifest was read on the worker that stored it: {turns:?}"
    );
}

/// RFC 9110 §11.1: the authentication scheme is case-insensitive. `bearer TOKEN` (as curl's
/// `--oauth2-bearer` peers and some HTTP libraries send it) was refused 401.
#[tokio::test]
async fn the_admin_token_scheme_is_case_insensitive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let s = setup(&origin).await;
    let status = |auth: String| async move {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.admin))
            .await
            .expect("admin connects");
        let req = format!(
            "GET /admin/origins HTTP/1.1\r\nHost: admin\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(
            status(format!("{scheme} {ADMIN_TOKEN}")).await,
            "200",
            "{scheme}"
        );
    }
    assert_eq!(
        status(format!("Bearer  {ADMIN_TOKEN}")).await,
        "200",
        "two spaces"
    );
    assert_eq!(status(format!("bearer {ADMIN_TOKEN}x")).await, "401");
    assert_eq!(status(format!("Basic {ADMIN_TOKEN}")).await, "401");
    assert_eq!(status(ADMIN_TOKEN.to_string()).await, "401");
}

/// Origins that merge slashes or drop path parameters serve `/vod//x.ts`, `//vod/x.ts` and
/// `/vod/x.ts;v=1` as `/vod/x.ts`; the edge keys each spelling as written. A purge of the URL
/// (or of the prefix `/vod/`) left the other spellings cached, so whoever used one kept the old
/// bytes for the object's whole lifetime. Purges now select them by their routed form too.
#[tokio::test]
async fn a_purge_reaches_every_spelling_of_its_path() {
    let origin = Origin::start().await;
    let spellings = [
        "/vod/x.ts",
        "/vod//x.ts",
        "//vod/x.ts",
        "/vod/x.ts;v=1",
        "/vod;a/x.ts",
    ];
    let s = setup(&origin).await;
    let host = s.edge.addr.to_string();
    for (round, body) in [("urls", "/vod/x.ts"), ("prefixes", "/vod/")] {
        for p in spellings {
            origin.script(p, cached("old"));
        }
        for p in spellings {
            s.edge.get(p).await;
            s.edge.settle().await;
            assert_eq!(s.edge.get(p).await.x_cache(), "HIT", "{round} {p}");
        }
        for p in spellings {
            origin.script(p, cached("new"));
        }
        let (st, v) = purge(
            s.admin,
            &format!(r#"{{"{round}":["{body}"],"host":"{host}"}}"#),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        for p in spellings {
            let r = s.edge.get(p).await;
            assert_eq!(
                (r.x_cache(), &r.body[..]),
                ("MISS", &b"new"[..]),
                "{round}: {p} after the purge"
            );
        }
        // An unrelated object stays.
        origin.script("/other/y.ts", cached("y"));
        s.edge.get("/other/y.ts").await;
        s.edge.settle().await;
        purge(
            s.admin,
            &format!(r#"{{"{round}":["{body}"],"host":"{host}"}}"#),
        )
        .await;
        assert_eq!(s.edge.get("/other/y.ts").await.x_cache(), "HIT");
    }
}

/// Any viewer can get an odd spelling stored (`//vod/x.ts`, served by an origin that merges
/// slashes). From then on every purge by URL scanned the whole RAM tier, for ever, to find such
/// spellings: one request made each of an operator's URL purges cost a pass over millions of
/// entries. Odd spellings are indexed by routed form now: a URL purge still reaches them, with
/// no scan (`vedge_purge_ram_scans_total` counts scans; a prefix purge is one).
#[tokio::test]
async fn a_stored_odd_spelling_never_makes_url_purges_scan_the_ram_tier() {
    let origin = Origin::start().await;
    let s = setup(&origin).await;
    let host = s.edge.addr.to_string();
    let scans = || async {
        let (_, text) = admin_send(s.admin, "GET", "/metrics", &[], b"").await;
        let line = text
            .lines()
            .find(|l| l.starts_with("vedge_purge_ram_scans_total "))
            .map(str::to_string);
        line.expect("vedge_purge_ram_scans_total is exported")
    };
    for p in ["/vod/x.ts", "//vod/x.ts", "/vod/x.ts;v=1", "/vod/y.ts"] {
        origin.script(p, cached("old"));
        s.edge.get(p).await;
        s.edge.settle().await;
        assert_eq!(s.edge.get(p).await.x_cache(), "HIT", "{p}");
    }
    let (st, v) = purge(
        s.admin,
        &format!(r#"{{"urls":["/vod/x.ts"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for p in ["/vod/x.ts", "//vod/x.ts", "/vod/x.ts;v=1"] {
        origin.script(p, cached("new"));
        let r = s.edge.get(p).await;
        assert_eq!((r.x_cache(), &r.body[..]), ("MISS", &b"new"[..]), "{p}");
    }
    assert_eq!(s.edge.get("/vod/y.ts").await.x_cache(), "HIT");
    assert_eq!(scans().await, "vedge_purge_ram_scans_total 0");
    purge(
        s.admin,
        &format!(r#"{{"prefixes":["/vod/"],"host":"{host}"}}"#),
    )
    .await;
    assert_eq!(scans().await, "vedge_purge_ram_scans_total 1");
    assert_eq!(s.edge.get("/vod/y.ts").await.x_cache(), "MISS");
}

/// A soft purge of an object held only on the SSD (here after a restart): the next request
/// must revalidate it, as for an object in RAM. It was served once as a fresh hit
/// (`X-Cache: HIT`, `Cache-Status: ...; hit; ttl=-1; detail=disk`, the origin not asked): the
/// fill's second look at the key judged the copy it read at an instant taken before the read,
/// which is what makes a soft-purged disk copy stale.
#[tokio::test]
async fn a_soft_purge_of_an_object_only_on_disk_revalidates_on_the_next_request() {
    let origin = Origin::start().await;
    origin.script(
        "/d.ts",
        Script::ok(vec![7u8; 200_000])
            .header("cache-control", "max-age=3600")
            .header("etag", "\"v1\""),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("edge.store");
    let start = || {
        BinaryEdge::start(
            &origin.url(),
            [
                OsStr::new("--store"),
                store.as_os_str(),
                OsStr::new("--store-size"),
                OsStr::new("64MiB"),
                OsStr::new("--store-region-size"),
                OsStr::new("4MiB"),
            ],
        )
    };
    let get = |port: u16| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"GET /d.ts HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        head.lines()
            .find_map(|l| l.strip_prefix("x-cache: "))
            .unwrap_or("")
            .to_string()
    };
    let mut v = start();
    v.ready().await;
    // Pulled objects go to disk on their second request.
    for _ in 0..3 {
        get(v.port).await;
    }
    for _ in 0..100 {
        if v.metric("vedge_store_objects").await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(v.metric("vedge_store_objects").await >= 1, "on disk");
    v.signal(libc::SIGTERM);
    drop(v);

    let v = start();
    v.ready().await;
    let (st, body) = crate::support::edge::admin_post(
        v.admin,
        "/admin/purge",
        r#"{"urls":["/d.ts"],"host":"edge.test","soft":true}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let asked = origin.count("/d.ts");
    let first = get(v.port).await;
    assert_ne!(first, "hit", "a soft-purged object is not fresh");
    assert_eq!(origin.count("/d.ts"), asked + 1, "revalidated");
}

/// The admin API as an operator's tooling meets it: load balancers check health with HEAD
/// (it was a 404); a known endpoint asked with another method is a 405 naming the methods it
/// takes (it was a 404 "no such admin endpoint"); a purge body declared past 4 MiB is a 413 at
/// once (the edge waited for the bytes, then said 400); a fan-out without a `[cluster]` is a
/// 400 (it was a 200 reporting every node purged, of none).
#[tokio::test]
async fn the_admin_api_answers_head_405_413_and_a_fanout_without_a_cluster() {
    let origin = Origin::start().await;
    let s = setup(&origin).await;
    for path in ["/healthz", "/metrics"] {
        let (st, body) = admin_send(s.admin, "HEAD", path, &[], b"").await;
        assert_eq!((st, body.as_str()), (200, ""), "HEAD {path}");
        let (st, _) = admin_send(s.admin, "DELETE", path, &[], b"").await;
        assert_eq!(st, 405, "DELETE {path}");
    }
    for (method, path) in [
        ("GET", "/admin/purge"),
        ("PUT", "/admin/purge"),
        ("POST", "/admin/origins"),
    ] {
        let (st, body) = admin_send(s.admin, method, path, &[], b"").await;
        assert_eq!(st, 405, "{method} {path}: {body}");
    }
    let (st, _) = admin_send(s.admin, "HEAD", "/admin/origins", &[], b"").await;
    assert_eq!(st, 200);

    // Declared too long: refused before any body byte is sent.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.admin))
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(
        format!(
            "POST /admin/purge HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: 5000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("answered without the body")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    let (st, v) = purge(s.admin, r#"{"urls":["/a.ts"],"fanout":true}"#).await;
    assert_eq!(st, 400, "{v}");
}

/// Purge entries no viewer's request could name were answered 200 and purged nothing: an
/// `ftp:` URL, a `host` that is no host (`"a b\n"`). Both are 400s now, before any work. A
/// path's fragment (which never reaches the edge) is left out, so `/f.ts#t=10` purges `/f.ts`
/// (it purged nothing).
#[tokio::test]
async fn purge_entries_no_request_could_name_are_refused_and_fragments_ignored() {
    let origin = Origin::start().await;
    origin.script("/f.ts", cached("old"));
    let s = setup(&origin).await;
    let host = s.edge.addr.to_string();
    let (st, v) = purge(s.admin, r#"{"urls":["ftp://cdn.example/f.ts"]}"#).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = purge(s.admin, r#"{"urls":["/f.ts"],"host":"a b\n"}"#).await;
    assert_eq!(st, 400, "{v}");
    s.edge.get("/f.ts").await;
    s.edge.settle().await;
    assert_eq!(s.edge.get("/f.ts").await.x_cache(), "HIT");
    let (st, v) = purge(
        s.admin,
        &format!(r##"{{"urls":["/f.ts#t=10"],"host":"{host}"}}"##),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.edge.get("/f.ts").await.x_cache(), "MISS");
}

/// Bug: the ingest and object endpoints asked with another method than theirs answered 404 "no
/// such admin endpoint" (`GET /admin/ingest`, `DELETE /admin/ingest/1`, `GET /admin/assets/1`,
/// `GET /admin/objects/x.ts`), though README promises a 405 with `Allow` for every known
/// endpoint (RFC 9110 §15.5.6), as `/admin/purge` and `/admin/origins` answer. A job's status
/// answers HEAD as GET.
#[tokio::test]
async fn ingest_endpoints_asked_with_another_method_are_405_with_allow() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let s = setup(&origin).await;
    for (method, path, allow) in [
        ("GET", "/admin/ingest", "POST"),
        ("DELETE", "/admin/ingest/1", "GET, HEAD"),
        ("GET", "/admin/assets/1", "DELETE"),
        ("GET", "/admin/objects/x.ts", "PUT"),
    ] {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.admin))
            .await
            .expect("connect");
        conn.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let r = crate::support::edge::read_raw(&mut conn).await;
        let (head, _) = r.split();
        let head = head.to_ascii_lowercase();
        assert_eq!(r.status(), 405, "{method} {path}: {head}");
        assert!(
            head.contains(&format!("allow: {}", allow.to_ascii_lowercase())),
            "{method} {path}: {head}"
        );
        assert!(
            head.contains("content-type: text/plain"),
            "the 405 every admin endpoint gives: {head}"
        );
    }
    let (st, _) = admin_send(s.admin, "GET", "/admin/nothing", &[], b"").await;
    assert_eq!(st, 404, "an unknown endpoint stays a 404");
    // An ingest path without its id (or only like one) names no endpoint, whatever the method.
    for (method, path) in [
        ("POST", "/admin/ingest/"),
        ("GET", "/admin/assets/"),
        ("GET", "/admin/objects/"),
        ("GET", "/admin/ingestx"),
    ] {
        let (st, body) = admin_send(s.admin, method, path, &[], b"").await;
        assert_eq!(
            (st, body.as_str()),
            (404, "no such admin endpoint\n"),
            "{method} {path}"
        );
    }
    let (st, body) = admin_send(s.admin, "HEAD", "/admin/ingest/no-such-job", &[], b"").await;
    assert_eq!((st, body.as_str()), (404, ""), "HEAD of a job as GET of it");
}
