//! Walker tests: every committed fixture (the walk must list exactly the files on disk, since
//! the fixtures hold only what a player needs), and hand-written edge cases.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::fetch::{FileFetcher, MapFetcher};
use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vod")
}

fn rel(root: &Path, u: &Url) -> String {
    let p = u.to_file_path().expect("file url");
    p.strip_prefix(root)
        .expect("under root")
        .to_string_lossy()
        .into_owned()
}

fn files_on_disk(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir)
                        .expect("under")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out
}

async fn walk_fixture(name: &str, root_file: &str) -> (Asset, BTreeSet<String>, PathBuf) {
    let dir = std::fs::canonicalize(fixtures().join(name)).expect("fixture dir");
    let fetcher = FileFetcher::new(&dir).expect("fetcher");
    let url = Url::from_file_path(dir.join(root_file)).expect("url");
    let asset = discover(&url, &fetcher, &WalkOptions::default())
        .await
        .expect("walk");
    let listed: BTreeSet<String> = asset.publish_order().map(|o| rel(&dir, &o.url)).collect();
    assert_eq!(listed.len(), asset.len(), "no object is listed twice");
    (asset, listed, dir)
}

#[tokio::test]
async fn every_fixture_lists_exactly_its_files() {
    for (name, root) in [
        ("hls-fmp4", "master.m3u8"),
        ("hls-ts", "master.m3u8"),
        ("hls-byterange", "master.m3u8"),
        ("dash-timeline", "manifest.mpd"),
        ("dash-number", "manifest.mpd"),
        ("dash-list", "manifest.mpd"),
        ("dash-base", "manifest.mpd"),
    ] {
        let (asset, listed, dir) = walk_fixture(name, root).await;
        assert_eq!(listed, files_on_disk(&dir), "{name}");
        assert_eq!(asset.manifests[0].url.path().rsplit('/').next(), Some(root));
        assert!(asset.manifests.iter().all(|m| m.body.is_some()));
    }
}

#[tokio::test]
async fn hls_fixture_kinds() {
    let (asset, _, _) = walk_fixture("hls-fmp4", "master.m3u8").await;
    // master + 3 variants + audio + subtitles + I-frame playlist
    assert_eq!(asset.manifests.len(), 7);
    let count = |k| asset.media.iter().filter(|o| o.kind == k).count();
    assert_eq!(count(ObjectKind::Init), 4); // v0, v1, v2, audio (I-frames share v0's)
                                            // 5 segments x 3 variants + 6 audio + 5 WebVTT; the I-frame ranges add no resource.
    assert_eq!(count(ObjectKind::Segment), 15 + 6 + 5);
}

#[tokio::test]
async fn local_roots_finds_masters_and_mpds() {
    let roots = local_roots(&fixtures()).await.expect("roots");
    let names: BTreeSet<String> = roots
        .iter()
        .map(|u| {
            let p = u.path();
            let mut it = p.rsplit('/');
            let f = it.next().unwrap_or("");
            format!("{}/{f}", it.next().unwrap_or(""))
        })
        .collect();
    let want: BTreeSet<String> = [
        "hls-fmp4/master.m3u8",
        "hls-ts/master.m3u8",
        "hls-byterange/master.m3u8",
        "dash-timeline/manifest.mpd",
        "dash-number/manifest.mpd",
        "dash-list/manifest.mpd",
        "dash-base/manifest.mpd",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
}

const BASE: &str = "http://o.example/vod/a/";

async fn walk_map(files: &[(&str, &str)], opts: &WalkOptions) -> Result<Asset, WalkError> {
    let mut f = MapFetcher::default();
    for (p, b) in files {
        f.insert(&format!("{BASE}{p}"), b.to_string());
    }
    let root = Url::parse(&format!("{BASE}{}", files[0].0)).expect("url");
    discover(&root, &f, opts).await
}

fn paths(a: &Asset) -> Vec<String> {
    a.publish_order()
        .map(|o| o.url.as_str().trim_start_matches(BASE).to_string())
        .collect()
}

#[tokio::test]
async fn hls_byteranges_keys_discontinuities_and_session_keys() {
    let master = "#EXTM3U\n#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"keys/s.key\"\n\
        #EXT-X-STREAM-INF:BANDWIDTH=1000\nm.m3u8?v=1\n";
    let media = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-VERSION:4\n\
        #EXT-X-KEY:METHOD=AES-128,URI=\"keys/k1.key\"\n\
        #EXTINF:2,\n#EXT-X-BYTERANGE:100@0\nall.ts\n\
        #EXTINF:2,\n#EXT-X-BYTERANGE:100\nall.ts\n\
        #EXT-X-DISCONTINUITY\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://fairplay\"\n\
        #EXTINF:2,\nother/b.ts\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\n/vod/a/c.ts\n#EXT-X-ENDLIST\n";
    let files = [("master.m3u8", master), ("m.m3u8?v=1", media)];
    let a = walk_map(&files, &WalkOptions::default())
        .await
        .expect("walk");
    assert_eq!(
        paths(&a),
        ["all.ts", "other/b.ts", "c.ts", "master.m3u8", "m.m3u8?v=1"]
    );
    let reasons: Vec<&str> = a.skipped.iter().map(|s| s.1).collect();
    assert_eq!(reasons, [hls::SKIP_KEY, hls::SKIP_KEY, hls::SKIP_SCHEME]);
    let with_keys = WalkOptions {
        include_keys: true,
        ..WalkOptions::default()
    };
    let a = walk_map(&files, &with_keys).await.expect("walk");
    let p = paths(&a);
    assert!(p.contains(&"keys/s.key".to_string()) && p.contains(&"keys/k1.key".to_string()));
    assert!(a.media.iter().any(|o| o.kind == ObjectKind::Key));
}

#[tokio::test]
async fn escaping_references_are_refused_unless_allowed() {
    for bad in ["../b/x.ts", "http://evil.example/x.ts", "/other/x.ts"] {
        let media =
            format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{bad}\n#EXT-X-ENDLIST\n");
        let err = walk_map(&[("m.m3u8", &media)], &WalkOptions::default())
            .await
            .expect_err("escape");
        assert!(matches!(err, WalkError::Escape { .. }), "{bad}: {err}");
        let allow = WalkOptions {
            scope: Scope {
                allow_other_hosts: true,
                allow_outside_dir: true,
                root_dir: None,
            },
            ..WalkOptions::default()
        };
        walk_map(&[("m.m3u8", &media)], &allow)
            .await
            .expect("allowed");
    }
}

#[tokio::test]
async fn missing_playlist_is_a_fetch_error_naming_it() {
    let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\ngone.m3u8\n";
    let err = walk_map(&[("master.m3u8", master)], &WalkOptions::default())
        .await
        .expect_err("404");
    match err {
        WalkError::Fetch { url, source } => {
            assert!(url.as_str().ends_with("gone.m3u8"));
            assert!(matches!(source, FetchError::NotFound));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn malformed_inputs_are_parse_errors() {
    let inputs: [&[u8]; 4] = [
        b"#EXTM3U\n#EXTINF:2,\n\xff\xfe.ts\n",
        b"<MPD><Period><",
        b"<MPD type=\"static\"><Period><AdaptationSet><SegmentTemplate media=\"$Number$\"/><Representation id=\"v\"/></AdaptationSet></Period></MPD>",
        b"garbage",
    ];
    for body in inputs {
        let mut f = MapFetcher::default();
        f.insert(&format!("{BASE}m"), body.to_vec());
        let root = Url::parse(&format!("{BASE}m")).expect("url");
        let err = discover(&root, &f, &WalkOptions::default())
            .await
            .expect_err("malformed");
        assert!(
            matches!(
                err,
                WalkError::Parse { .. } | WalkError::UnknownFormat { .. }
            ),
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

fn mpd(period: &str, extra: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT10S" {extra}>{period}</MPD>"#
    )
}

#[tokio::test]
async fn dash_timeline_repeats_and_r_minus_one() {
    let body = mpd(
        r#"<Period duration="PT10S"><AdaptationSet><SegmentTemplate timescale="10" media="$RepresentationID$/t$Time$.m4s" initialization="$RepresentationID$/init.mp4"><SegmentTimeline><S t="0" d="20" r="1"/><S d="10" r="-1"/><S t="60" d="20" r="-1"/></SegmentTimeline></SegmentTemplate><Representation id="v" bandwidth="1"/></AdaptationSet></Period>"#,
        "",
    );
    let a = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect("walk");
    assert_eq!(
        paths(&a),
        [
            "v/init.mp4",
            "v/t0.m4s",
            "v/t20.m4s",
            "v/t40.m4s",
            "v/t50.m4s",
            "v/t60.m4s",
            "v/t80.m4s",
            "m.mpd"
        ]
    );
}

#[tokio::test]
async fn dash_number_width_bandwidth_startnumber_and_base_urls() {
    let body = mpd(
        r#"<BaseURL>cdn/</BaseURL><Period><BaseURL>p1/</BaseURL><AdaptationSet><BaseURL>as/</BaseURL><SegmentTemplate timescale="1000" duration="4000" startNumber="3" media="$Bandwidth$/s$Number%04d$.m4s" initialization="$Bandwidth$/i.mp4"/><Representation id="a" bandwidth="500"><BaseURL>r/</BaseURL></Representation></AdaptationSet></Period>"#,
        "",
    );
    let a = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect("walk");
    assert_eq!(
        paths(&a),
        [
            "cdn/p1/as/r/500/i.mp4",
            "cdn/p1/as/r/500/s0003.m4s",
            "cdn/p1/as/r/500/s0004.m4s",
            "cdn/p1/as/r/500/s0005.m4s",
            "m.mpd"
        ]
    );
}

#[tokio::test]
async fn dash_multi_period_durations_come_from_the_next_start() {
    let body = mpd(
        r#"<Period id="1" start="PT0S"><AdaptationSet><SegmentTemplate duration="2" media="p1-$Number$.m4s"/><Representation id="a"/></AdaptationSet></Period><Period id="2" start="PT4S"><AdaptationSet><SegmentTemplate duration="3" media="p2-$Number$.m4s" startNumber="0"/><Representation id="a"/></AdaptationSet></Period>"#,
        "",
    );
    let a = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect("walk");
    assert_eq!(
        paths(&a),
        ["p1-1.m4s", "p1-2.m4s", "p2-0.m4s", "p2-1.m4s", "m.mpd"]
    );
}

#[tokio::test]
async fn dash_list_and_base() {
    let body = mpd(
        r#"<Period><AdaptationSet><Representation id="l"><SegmentList duration="2"><Initialization sourceURL="l/init.mp4"/><SegmentURL media="l/1.m4s"/><SegmentURL media="l/2.m4s"/></SegmentList></Representation><Representation id="b"><BaseURL>b/file.mp4</BaseURL><SegmentBase indexRange="800-900"><Initialization range="0-799"/></SegmentBase></Representation><Representation id="r"><BaseURL>r.mp4</BaseURL><SegmentList><SegmentURL mediaRange="0-10"/><SegmentURL mediaRange="11-20"/></SegmentList></Representation></AdaptationSet></Period>"#,
        "",
    );
    let a = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect("walk");
    assert_eq!(
        paths(&a),
        [
            "l/init.mp4",
            "l/1.m4s",
            "l/2.m4s",
            "b/file.mp4",
            "r.mp4",
            "m.mpd"
        ]
    );
}

#[tokio::test]
async fn timeline_implying_billions_fails_fast_with_the_number() {
    let body = mpd(
        r#"<Period duration="PT10S"><AdaptationSet><SegmentTemplate timescale="1" media="$Time$.m4s"><SegmentTimeline><S t="0" d="1" r="4000000000"/></SegmentTimeline></SegmentTemplate><Representation id="v"/></AdaptationSet></Period>"#,
        "",
    );
    let started = std::time::Instant::now();
    let err = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect_err("limit");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    match err {
        WalkError::TooManyObjects { implied, limit, .. } => {
            assert_eq!(implied, 4_000_000_001);
            assert_eq!(limit, Limits::default().max_objects - 1);
        }
        other => panic!("{other}"),
    }
    // Same for @duration over a long presentation.
    let body = mpd(
        r#"<Period><AdaptationSet><SegmentTemplate timescale="1000" duration="1" media="$Number$.m4s"/><Representation id="v"/></AdaptationSet></Period>"#,
        "",
    )
    .replace("PT10S", "P365D");
    let err = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect_err("limit");
    assert!(matches!(err, WalkError::TooManyObjects { .. }), "{err}");
    assert!(err.to_string().contains("--max-objects"));
}

#[tokio::test]
async fn dynamic_mpds_and_remote_periods_are_unsupported() {
    let body = mpd("<Period/>", "").replace("static", "dynamic");
    let err = walk_map(&[("m.mpd", &body)], &WalkOptions::default())
        .await
        .expect_err("live");
    assert!(matches!(err, WalkError::Unsupported { .. }));
}

#[test]
fn clip_cuts_on_char_boundaries() {
    assert_eq!(clip("abc", 10), "abc");
    assert_eq!(clip("abcdef", 3), "abc");
    // 'é' is two bytes: cutting at 2 would split it.
    assert_eq!(clip("aé", 2), "a");
    assert_eq!(clip("€€", 4), "€");
}

#[test]
fn mpd_durations_that_would_overflow_are_refused_and_long_fractions_are_not() {
    let root = Url::parse(fuzzing::ROOT).unwrap();
    let doc =
        |d: &str| format!("<MPD type=\"static\" mediaPresentationDuration=\"{d}\"><Period/></MPD>");
    // Found by fuzzing: days * 86400 overflowed u64 inside dash-mpd-core (a debug-build panic).
    for d in [
        "P0000917807588391314335D",
        "PT99999999999H",
        "P1Y2M3W4DT99999999999S",
        // The pattern is anchored at the start only: what follows the duration does not matter.
        "PT14757841025415133412HHHH5555&lt;5555S",
        "+PT99999999999H",
    ] {
        let err = dash::parse(&root, doc(d).as_bytes()).expect_err(d);
        assert!(err.to_string().contains("out of range"), "{d}: {err}");
    }
    for d in ["PT10.010010010010011S", "P0001DT00000002H", "PT8S"] {
        dash::parse(&root, doc(d).as_bytes()).unwrap_or_else(|e| panic!("{d}: {e}"));
    }
}

#[test]
fn malformed_mpds_are_errors_not_panics() {
    let root = Url::parse(fuzzing::ROOT).unwrap();
    for body in [
        "<MPD><Period></MPD>",
        "<MPD type=\"static\"><Period><AdaptationSet></Period></AdaptationSet></MPD>",
        "<MPD><Period>",
        "</MPD>",
        "<MPD>\u{e9}\u{e9}\u{e9}</Foo>",
    ] {
        let err = dash::parse(&root, body.as_bytes()).expect_err(body);
        assert!(matches!(err, WalkError::Parse { .. }), "{body}: {err}");
    }
}

#[test]
fn fuzz_corpus_holds_the_fuzz_properties() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut n = 0;
    for (sub, check) in [
        ("hls", fuzzing::check_hls as fn(&[u8])),
        ("dash", fuzzing::check_dash),
    ] {
        for e in std::fs::read_dir(corpus.join(sub)).expect("corpus dir") {
            let bytes = std::fs::read(e.expect("entry").path()).expect("read");
            check(&bytes);
            n += 1;
        }
    }
    assert!(n >= 10, "corpus has {n} inputs");
}

proptest::proptest! {
    #[test]
    fn arbitrary_playlists_hold_the_properties(lines in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::strategy::Just("#EXTM3U".to_string()),
            proptest::strategy::Just("#EXT-X-TARGETDURATION:2".to_string()),
            proptest::strategy::Just("#EXTINF:2,".to_string()),
            proptest::strategy::Just("#EXT-X-BYTERANGE:10@5".to_string()),
            proptest::strategy::Just("#EXT-X-DISCONTINUITY".to_string()),
            proptest::strategy::Just("#EXT-X-STREAM-INF:BANDWIDTH=1".to_string()),
            proptest::strategy::Just("#EXT-X-MAP:URI=\"i.mp4\"".to_string()),
            "[a-z./%:]{0,12}",
        ], 0..20)) {
        fuzzing::check_hls(lines.join("\n").as_bytes());
    }

    #[test]
    fn arbitrary_timelines_hold_the_properties(
        runs in proptest::collection::vec((proptest::option::of(0u64..100), 0u64..5, -1i64..4), 0..6),
        duration in 0u32..50,
    ) {
        let s: String = runs.iter().map(|(t, d, r)| {
            let t = t.map(|t| format!(" t=\"{t}\"")).unwrap_or_default();
            format!("<S{t} d=\"{d}\" r=\"{r}\"/>")
        }).collect();
        let body = format!(r#"<MPD type="static" mediaPresentationDuration="PT{duration}S"><Period><AdaptationSet><SegmentTemplate media="$Time$-$Number$.m4s"><SegmentTimeline>{s}</SegmentTimeline></SegmentTemplate><Representation id="v"/></AdaptationSet></Period></MPD>"#);
        fuzzing::check_dash(body.as_bytes());
    }
}

/// Read a chunk at a time, a playlist references exactly what m3u8-rs finds in it whole:
/// keys and maps that change mid-way, byte ranges of one file, comments and unknown tags,
/// CRLF line ends, and a master's renditions and variants whose URI line comes late.
#[test]
fn chunked_hls_references_match_a_whole_parse() {
    let url = Url::parse("http://o/a/v.m3u8").unwrap();
    let mut media = String::from("#EXTM3U\r\n#EXT-X-TARGETDURATION:2\n");
    for i in 0..5_000 {
        if i % 700 == 0 {
            media.push_str(&format!("#EXT-X-KEY:METHOD=AES-128,URI=\"k{}\"\n", i / 700));
        }
        if i % 1_300 == 0 {
            media.push_str(&format!("#EXT-X-MAP:URI=\"init{}.mp4\"\n", i / 1_300));
        }
        media.push_str("# a comment\n#EXT-X-UNKNOWN:1\n#EXTINF:2,\n");
        if i % 3 == 0 {
            media.push_str(&format!("#EXT-X-BYTERANGE:10@{i}\nall.ts\r\n"));
        } else {
            media.push_str(&format!("  s{i}.ts\n"));
        }
    }
    let mut master = String::from("#EXTM3U\n");
    for i in 0..3_000 {
        master.push_str(&format!(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"n{i}\",URI=\"au{i}.m3u8\"\n"
        ));
        master.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={i}\n#X\nearly{i}.m3u8\n"
        ));
        master.push_str(&format!("late{i}.m3u8\n"));
    }
    for (body, include_keys) in [(&media, true), (&media, false), (&master, true)] {
        let set = |refs: Vec<Reference>| {
            refs.into_iter()
                .map(|r| (r.url.to_string(), r.kind))
                .collect::<BTreeSet<_>>()
        };
        let whole = match hls::parse(&url, body.as_bytes()).unwrap() {
            m3u8_rs::Playlist::MasterPlaylist(m) => {
                hls::master_references(&url, &m, include_keys, &mut Vec::new())
            }
            m3u8_rs::Playlist::MediaPlaylist(m) => {
                hls::media_references(&url, &m, include_keys, &mut Vec::new())
            }
        };
        let room = hls::Room::only(100_000);
        let chunked = hls::references(&url, body.as_bytes(), include_keys, &mut Vec::new(), &room);
        let whole = set(whole.unwrap());
        assert!(whole.len() > 3_000, "{}", whole.len());
        assert_eq!(set(chunked.unwrap()), whole);
    }
}

/// A playlist or MPD listing more new references than the room left is refused before it
/// is parsed, and what the walk already holds takes no room.
#[test]
fn too_many_references_are_refused_before_parsing() {
    let url = Url::parse("http://o/a/v.m3u8").unwrap();
    let media = "#EXTM3U\n#EXTINF:1,\na.ts\n#EXTINF:1,\nb.ts\n#EXTINF:1,\nc.ts\n";
    let err = hls::references(
        &url,
        media.as_bytes(),
        false,
        &mut Vec::new(),
        &hls::Room::only(2),
    )
    .expect_err("3 > 2");
    assert!(
        matches!(
            err,
            WalkError::TooManyReferences {
                listed: 3,
                room: 2,
                ..
            }
        ),
        "{err}"
    );
    let held = url.join("a.ts").unwrap();
    let room = hls::Room {
        left: 2,
        known: &|u| *u == held,
    };
    let refs = hls::references(&url, media.as_bytes(), false, &mut Vec::new(), &room).unwrap();
    assert_eq!(refs.len(), 2);
    let body = mpd(
        &format!(
            r#"<Period duration="PT100S"><AdaptationSet><SegmentTemplate timescale="1" media="$Time$.m4s"><SegmentTimeline>{}</SegmentTimeline></SegmentTemplate><Representation id="v"/></AdaptationSet></Period>"#,
            r#"<S d="1"/>"#.repeat(11)
        ),
        "",
    );
    let err = dash::references(&url, body.as_bytes(), 10).expect_err("11 > 10");
    assert!(
        matches!(
            err,
            WalkError::TooManyReferences {
                listed: 11,
                room: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        dash::references(&url, body.as_bytes(), 11).unwrap().len(),
        11
    );
}

/// RFC 8216bis §4.3: the walk reads a playlist's URIs with their `EXT-X-DEFINE` variables
/// substituted (`NAME`/`VALUE`, `QUERYPARAM` from the playlist's URL), and lists none it cannot
/// resolve (`IMPORT`, undefined): fetched as written, `{$x}` would be `%7B$x%7D`.
#[test]
fn hls_variables_are_substituted_and_unresolved_uris_skipped() {
    let url = Url::parse("http://o.example/live/v.m3u8?cdn=c1").unwrap();
    let media = "#EXTM3U\n#EXT-X-VERSION:8\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-DEFINE:NAME=\"dir\",VALUE=\"segs\"\n#EXT-X-DEFINE:QUERYPARAM=\"cdn\"\n\
#EXT-X-DEFINE:IMPORT=\"base\"\n\
#EXT-X-MAP:URI=\"{$dir}/init.mp4\"\n\
#EXTINF:2.0,\n{$dir}/s1.m4s\n#EXTINF:2.0,\n{$dir}/s2.m4s?c={$cdn}\n\
#EXTINF:2.0,\n{$base}/s3.m4s\n#EXTINF:2.0,\n{$nowhere}/s4.m4s\n#EXT-X-ENDLIST\n";
    let mut skipped = Vec::new();
    let refs = hls::references(
        &url,
        media.as_bytes(),
        false,
        &mut skipped,
        &hls::Room::only(100),
    )
    .unwrap();
    let got: Vec<&str> = refs.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        got,
        [
            "http://o.example/live/segs/init.mp4",
            "http://o.example/live/segs/s1.m4s",
            "http://o.example/live/segs/s2.m4s?c=c1",
        ]
    );
    let skipped: Vec<&str> = skipped.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(skipped, ["{$base}/s3.m4s", "{$nowhere}/s4.m4s"]);
}
