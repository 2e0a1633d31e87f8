//! Regression tests from the eighth adversarial review (hostile origins and viewers): a token
//! route's manifest rewrite read otherwise than players read it (XML references, comments,
//! CDATA and entities in MPDs, inherited segment templates, `Location`, representation ids;
//! HLS line breaks only some players see, a leading U+FEFF, ambiguous `EXT-X-DEFINE`s), a
//! `Vary` on a header the edge writes itself, an `_HLS_part` near `u64::MAX`, and
//! `Cache-Control` lines holding obs-text. Each proves one rule that hostile input broke
//! before, and fails on the code before its fix.

use vedge::proxy::llhls::playlist_of;

use crate::llhls::config_for;
use crate::support::token::{raw_token, token_edge, token_for};
use crate::support::{edge_config, until, Origin, Script, TestEdge};

/// An MPD whose `BaseURL`s name another host in spellings an XML parser reads and a plain text
/// scan does not: a character reference padded with zeros (`&#0000000058;` is `:`), and a
/// `BaseURL` split by a comment or wrapped in CDATA (entities a DTD declares:
/// `a_token_never_reaches_another_host_through_an_entity_expanding_to_a_base_url`). The last
/// two already carry the token parameter (empty), so a scan that takes them for relative
/// URLs adds nothing to them and leaves them as the player reads them; the segments under
/// every one of them are relative, so a player asks that other host for them, with whatever
/// query the edge gave them.
const DISGUISED_MPD: &str = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <BaseURL>https&#0000000058;//other.example/a/?hdnts=</BaseURL>
      <SegmentTemplate media="a-$Number$.m4s"/>
      <Representation id="a" bandwidth="1"/>
    </AdaptationSet>
    <AdaptationSet mimeType="video/mp4">
      <BaseURL>ht<!-- -->tps://other.example/c/?hdnts=</BaseURL>
      <SegmentTemplate media="c-$Number$.m4s"/>
      <Representation id="c" bandwidth="1"/>
    </AdaptationSet>
    <AdaptationSet mimeType="video/mp4">
      <BaseURL><![CDATA[https://other.example/d/?hdnts=]]></BaseURL>
      <SegmentTemplate media="d-$Number$.m4s"/>
      <Representation id="d" bandwidth="1"/>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <SegmentTemplate media="mine-$Number$.m4s"/>
      <Representation id="m" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;

/// A token route adds the viewer's token only to URLs that certainly lead back to this host.
/// Before, the MPD scan read a `BaseURL` it could not decode (a character reference longer
/// than ten bytes, a comment or CDATA inside the text) as a relative URL: the segments under
/// sets c and d got the token while their `BaseURL`s, untouched,
/// still named other.example, where the player sent it; set a's `BaseURL` got the token
/// written into its character reference (`https&amp;?hdnts=...#0000000058;//other...`), a URL
/// of neither host. Now a URL the scan cannot read exactly as a parser does counts as foreign:
/// left as the origin wrote it, and nothing under it gets the token.
#[tokio::test]
async fn a_token_never_reaches_another_host_through_a_disguised_mpd_base_url() {
    let origin = Origin::start().await;
    origin.script(
        "/v/x/stream.mpd",
        Script::ok(DISGUISED_MPD).header("content-type", "application/dash+xml"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/x/*", None);
    let r = edge.get(&format!("/v/x/stream.mpd?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains(&format!("media=\"mine-$Number$.m4s?hdnts={t}\"")),
        "the segments of this host carry the token:\n{body}"
    );
    for (set, base) in [
        ("a", "https&#0000000058;//other.example/a/?hdnts="),
        ("c", "ht<!-- -->tps://other.example/c/?hdnts="),
        ("d", "<![CDATA[https://other.example/d/?hdnts=]]>"),
    ] {
        assert!(
            body.contains(&format!("<BaseURL>{base}</BaseURL>"))
                && body.contains(&format!("media=\"{set}-$Number$.m4s\"")),
            "set {set}: its BaseURL (another host) changed or its segments got the token:\n{body}"
        );
    }
}

/// `Vary` naming a request header the edge writes itself on every fill: `Host` (the route's,
/// or the viewer's normalised host: part of the key either way) and `X-Forwarded-Proto` (the
/// listener's scheme), which origins behind a TLS terminator often vary on. The variant a
/// viewer is looked up under must be the one the origin was asked for. Before, it was read
/// from the viewer's own headers (its `Host: 127.0.0.1:<edge port>`, no `X-Forwarded-Proto`),
/// so no viewer ever matched the stored variant: every request went to the origin three times
/// (a fill, a second fill for its own variant, then a pass) and nothing was served from cache.
#[tokio::test]
async fn vary_on_a_header_the_edge_writes_itself_still_caches() {
    let origin = Origin::start().await;
    for (path, vary) in [("/h.ts", "Host"), ("/p.ts", "X-Forwarded-Proto")] {
        origin.script(
            path,
            Script::ok("media")
                .header("cache-control", "max-age=60")
                .header("vary", vary),
        );
    }
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/h.ts", "/p.ts"] {
        let first = edge.get(path).await;
        assert_eq!(first.status, 200, "{path}: {}", first.h("cache-status"));
        edge.settle().await;
        let second = edge.get(path).await;
        assert_eq!(second.body, "media");
        assert_eq!(
            (second.x_cache(), origin.count(path)),
            ("HIT", 1),
            "{path}: {}",
            second.h("cache-status")
        );
    }
}

/// RFC 8216bis §6.2.5.2: an `_HLS_part` more than the Advance Part Limit past the last part
/// listed is a 400, whatever its size. Before, a part index near `u64::MAX` of the segment in
/// progress, on a playlist that had just completed a segment (no trailing parts yet), overflowed
/// the "parts ahead" count (`d + 1`): a panic of the request's task in a build with overflow
/// checks, and in a release build a count of 0, so the request was taken as the next part and
/// held or sent upstream instead of refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_part_near_u64_max_is_400_not_a_panic() {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
#EXT-X-MEDIA-SEQUENCE:10\n\
#EXT-X-PART:DURATION=0.5,URI=\"p10_0.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"p10_1.m4s\"\n\
#EXT-X-PART:DURATION=0.5,URI=\"p10_2.m4s\"\n#EXT-X-PART:DURATION=0.5,URI=\"p10_3.m4s\"\n\
#EXTINF:2.0,\ns10.m4s\n";
    origin.script(
        "/big/m.m3u8",
        Script::ok(playlist).header("cache-control", "max-age=10"),
    );
    let edge = TestEdge::start(config_for(&origin.url(), "off")).await;
    assert_eq!(edge.get("/big/m.m3u8").await.status, 200);
    let key = format!("http|{}|/big/m.m3u8", origin.addr());
    until("the playlist's latest copy is recorded", || {
        playlist_of(&edge.edge, &key).is_some_and(|p| p.latest().is_some())
    })
    .await;
    let r = edge
        .raw(
            format!(
                "GET /big/m.m3u8?_HLS_msn=11&_HLS_part={} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
                u64::MAX
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), 400, "{}", r.text());
    assert_eq!(origin.count("/big/m.m3u8"), 1, "nothing went upstream");
}

/// An MPD whose segment URLs are given once for an adaptation set (or a period) and used by
/// every representation in it (ISO/IEC 23009-1 5.3.9: segment information is inherited),
/// while one representation's `BaseURL` names another host: that representation's segments
/// are fetched from there.
const INHERITED_MPD: &str = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate initialization="v-init.mp4" media="v-$Number$.m4s"/>
      <Representation id="here" bandwidth="1"/>
      <Representation id="there" bandwidth="2">
        <BaseURL>https://other.example/v/</BaseURL>
      </Representation>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <SegmentList>
        <SegmentURL media="a-1.m4s"/>
      </SegmentList>
      <Representation id="a" bandwidth="1">
        <BaseURL>https://other.example/a/</BaseURL>
      </Representation>
    </AdaptationSet>
    <AdaptationSet mimeType="text/vtt">
      <SegmentTemplate media="mine-$Number$.vtt"/>
      <Representation id="t" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;

/// A relative segment URL resolves against the `BaseURL`s of the representation that uses it,
/// which may lie below the element carrying it. Before, the scan resolved it against the
/// `BaseURL`s above its own element only: the adaptation set's `SegmentTemplate` and
/// `SegmentList` got the viewer's token, and the player sent it to other.example with the
/// segments of the representations whose `BaseURL` is there. Now a segment URL gets the token
/// only when no representation that may use it has a `BaseURL` elsewhere.
#[tokio::test]
async fn a_token_never_reaches_another_host_through_an_inherited_segment_template() {
    let origin = Origin::start().await;
    origin.script(
        "/v/i/stream.mpd",
        Script::ok(INHERITED_MPD).header("content-type", "application/dash+xml"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/i/*", None);
    let r = edge.get(&format!("/v/i/stream.mpd?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains(&format!("media=\"mine-$Number$.vtt?hdnts={t}\"")),
        "the segments of this host carry the token:\n{body}"
    );
    for attr in [
        "initialization=\"v-init.mp4\"",
        "media=\"v-$Number$.m4s\"",
        "media=\"a-1.m4s\"",
    ] {
        assert!(
            body.contains(attr),
            "{attr}: used under a BaseURL on another host, it got the token:\n{body}"
        );
    }
}

/// An MPD whose document type declares an entity holding markup: the XML parser of the player
/// expands `&cdn;` into a `BaseURL` element of the adaptation set, which a scan of the tags as
/// written never sees.
const ENTITY_MARKUP_MPD: &str = r#"<?xml version="1.0"?>
<!DOCTYPE MPD [<!ENTITY cdn "<BaseURL>https://other.example/v/</BaseURL>">]>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      &cdn;
      <SegmentTemplate media="v-$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;

/// Before, the scan skipped the document type declaration and took the segment template for
/// one under no `BaseURL`, so it got the viewer's token, which the player then sent to
/// other.example. Entities are the document's own markup language: an MPD that declares any
/// is sent as the origin wrote it (its players are refused without the token, never sent
/// elsewhere with it).
#[tokio::test]
async fn a_token_never_reaches_another_host_through_an_entity_expanding_to_a_base_url() {
    let origin = Origin::start().await;
    origin.script(
        "/v/e/stream.mpd",
        Script::ok(ENTITY_MARKUP_MPD).header("content-type", "application/dash+xml"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/e/*", None);
    let r = edge.get(&format!("/v/e/stream.mpd?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains("media=\"v-$Number$.m4s\""),
        "segments under the entity's BaseURL (another host) got the token:\n{body}"
    );
}

/// An HLS playlist with a line break only some readers see: a bare carriage return, which
/// Java's `BufferedReader.readLine` (ExoPlayer) and hls.js's line patterns (`[^\r\n]`) end a
/// line at, and a Unicode line separator, which ends hls.js's tag lines (`#.*`). To the edge's
/// line scan (RFC 8216: lines end in LF or CRLF) each is inside one URI, which a URL parser
/// reads as a relative one (it drops CR; U+2028 is escaped into the path), so the token was
/// appended at its end: after the break, to the other host's URI a player reads there.
const SPLIT_LINES_HLS: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-MAP:URI=\"init.mp4\r//other.example/x/init.mp4\"\n\
#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\u{2028}//other.example/x/k.key\"\n\
#EXTINF:4,\nmine.ts\n\
#EXTINF:4,\nseg.ts\r//other.example/x/seg.ts\n\
#EXT-X-ENDLIST\n";

/// Before, each of the three URIs above got the token after its break, where ExoPlayer or
/// hls.js read a URI on other.example. Now a line holding a break some player sees is left as
/// it is: no token on either side of it.
#[tokio::test]
async fn a_token_never_follows_a_line_break_some_players_see_in_a_playlist() {
    let origin = Origin::start().await;
    origin.script(
        "/v/s/media.m3u8",
        Script::ok(SPLIT_LINES_HLS).header("content-type", "application/vnd.apple.mpegurl"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/s/*", None);
    let r = edge.get(&format!("/v/s/media.m3u8?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains(&format!("\nmine.ts?hdnts={t}\n")),
        "the segments of this host carry the token:\n{body:?}"
    );
    assert_eq!(
        body.matches(&t).count(),
        1,
        "only mine.ts carries the token:\n{body:?}"
    );
}

/// hls.js finds a URI line with `(?!#) *(\S[^\r\n]*)`: JavaScript's `\S` skips a leading
/// U+FEFF (whitespace to JavaScript, not to Rust's `trim`), so `\u{FEFF}//other.example/x.ts`
/// is that other host's URI to it, while the edge's scan read the whole line as one relative
/// URI. Before, the token was appended to it; now such a line is left as it is.
#[tokio::test]
async fn a_token_never_follows_a_leading_byte_order_mark_onto_another_hosts_uri() {
    let origin = Origin::start().await;
    origin.script(
        "/v/b/media.m3u8",
        Script::ok(
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nmine.ts\n\
#EXTINF:4,\n\u{FEFF}//other.example/x.ts\n#EXT-X-ENDLIST\n",
        )
        .header("content-type", "application/vnd.apple.mpegurl"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/b/*", None);
    let r = edge.get(&format!("/v/b/media.m3u8?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains(&format!("\nmine.ts?hdnts={t}\n"))
            && body.contains("\n\u{FEFF}//other.example/x.ts\n"),
        "only mine.ts carries the token:\n{body:?}"
    );
}

/// `EXT-X-DEFINE` tags that players read otherwise than a first-match scan: hls.js keeps the
/// last value of an attribute named twice in one tag (its attribute list is a map), so `{$a}`
/// is `https://other.example` to it; and a tag naming two variables defines `b` there, not
/// `x`, so the later `b` (a relative path to the scan, which had taken `b` for defined) is
/// hls.js's first and only definition of it.
const AMBIGUOUS_DEFINES_HLS: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n\
#EXT-X-DEFINE:NAME=\"a\",VALUE=\"seg\",VALUE=\"https://other.example\"\n\
#EXT-X-DEFINE:NAME=\"b\",VALUE=\"seg\",NAME=\"x\"\n\
#EXT-X-DEFINE:NAME=\"b\",VALUE=\"https://other.example\"\n\
#EXTINF:4,\nmine.ts\n\
#EXTINF:4,\n{$a}/1.ts\n\
#EXTINF:4,\n{$b}/2.ts\n\
#EXT-X-ENDLIST\n";

/// Before, the scan took each variable's first `VALUE` and first definition, so `{$a}/1.ts`
/// and `{$b}/2.ts` were relative paths and got the token, which hls.js sent to other.example.
/// Now a variable defined ambiguously (an attribute named twice, a name defined twice, a value
/// from elsewhere) is unknown, as an undefined one is.
#[tokio::test]
async fn a_token_never_reaches_another_host_through_an_ambiguous_hls_variable() {
    let origin = Origin::start().await;
    origin.script(
        "/v/d/media.m3u8",
        Script::ok(AMBIGUOUS_DEFINES_HLS).header("content-type", "application/vnd.apple.mpegurl"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/d/*", None);
    let r = edge.get(&format!("/v/d/media.m3u8?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains(&format!("\nmine.ts?hdnts={t}\n"))
            && body.contains("\n{$a}/1.ts\n")
            && body.contains("\n{$b}/2.ts\n"),
        "only mine.ts carries the token:\n{body}"
    );
}

/// `Cache-Control` may carry obs-text inside a quoted argument (RFC 9110 §5.6.4 `qdtext`), as
/// an extension directive's value can. Before, a field line that was not visible ASCII was
/// skipped whole, directives and all: `private` (or `no-store`) next to such an extension was
/// never read, and one viewer's private answer was stored and served to the next viewer.
#[tokio::test]
async fn private_or_no_store_beside_an_obs_text_extension_is_never_shared() {
    let origin = Origin::start().await;
    for (path, cc) in [
        ("/p.ts", "private, max-age=60, note=\"café\""),
        ("/n.ts", "no-store, max-age=60, note=\"café\""),
    ] {
        origin.script(path, Script::ok("mine").header("cache-control", cc));
    }
    let edge = TestEdge::start(edge_config(&origin)).await;
    for path in ["/p.ts", "/n.ts"] {
        assert_eq!(edge.get(path).await.status, 200);
        edge.settle().await;
        let second = edge.get(path).await;
        assert_eq!(
            (second.x_cache(), origin.count(path)),
            ("BYPASS", 2),
            "{path}: {}",
            second.h("cache-status")
        );
    }
}

/// dash.js resolves an MPD's relative URLs against its first `Location` (its `ManifestLoader`
/// sets the manifest's base URI from it on load), not only the URL it was fetched from.
const LOCATED_MPD: &str = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic">
  <Location>https://other.example/live/stream.mpd</Location>
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate media="v-$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;

/// Before, the `Location` on another host was left alone but the relative segment URLs got
/// the viewer's token, which dash.js sent to other.example. Now a `Location` elsewhere is a
/// `BaseURL` elsewhere for the document's relative URLs.
#[tokio::test]
async fn a_token_never_reaches_another_host_through_an_mpd_location() {
    let origin = Origin::start().await;
    origin.script(
        "/v/l/stream.mpd",
        Script::ok(LOCATED_MPD).header("content-type", "application/dash+xml"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/l/*", None);
    let r = edge.get(&format!("/v/l/stream.mpd?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        body.contains("media=\"v-$Number$.m4s\"") && !body.contains(&t),
        "segments resolved against a Location on another host got the token:\n{body}"
    );
}

/// A segment template's `$RepresentationID$` is replaced by the representation's `id`, which
/// may hold any character but whitespace: `https://other.example` makes
/// `$RepresentationID$/$Number$.m4s` an absolute URL on that host, and `/other.example` makes
/// `/$RepresentationID$/...` a protocol-relative one.
const ID_MPD: &str = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate media="$RepresentationID$/$Number$.m4s"/>
      <Representation id="https://other.example" bandwidth="1"/>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <SegmentTemplate media="/$RepresentationID$/a-$Number$.m4s"/>
      <Representation id="/other.example" bandwidth="1"/>
    </AdaptationSet>
  </Period>
</MPD>
"#;

/// Before, both templates read as relative paths and got the viewer's token, which the player
/// sent to other.example once it put the `id` in. Now a template using `$RepresentationID$` in
/// a document whose ids could change where a URL leads (a `:`, `/` or `\`, whitespace) is
/// foreign.
#[tokio::test]
async fn a_token_never_reaches_another_host_through_a_representation_id() {
    let origin = Origin::start().await;
    origin.script(
        "/v/r/stream.mpd",
        Script::ok(ID_MPD).header("content-type", "application/dash+xml"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/r/*", None);
    let r = edge.get(&format!("/v/r/stream.mpd?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    assert!(
        !body.contains(&t),
        "a template naming another host through its id got the token:\n{body}"
    );
}

/// A multivariant playlist under HLS content steering (RFC 8216bis §4.4.6.6 and §7): the
/// steering server's manifest may clone any pathway (`PATHWAY-CLONES`, `BASE-ID` "." for
/// variants without a `PATHWAY-ID`), and a clone is each Variant Stream and Rendition of the
/// base pathway with its URI's host replaced by `URI-REPLACEMENT` `HOST` (and `PARAMS` added),
/// its query kept. The steering manifest is fetched by the player later, from a server the
/// edge does not control.
const STEERED_HLS: &str = "#EXTM3U\n\
#EXT-X-CONTENT-STEERING:SERVER-URI=\"steering.json\",PATHWAY-ID=\"edge\"\n\
#EXT-X-SESSION-DATA:DATA-ID=\"com.example.title\",URI=\"title.json\"\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"audio/en.m3u8\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=1000000,AUDIO=\"aud\",PATHWAY-ID=\"edge\"\n\
v1/media.m3u8\n\
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,URI=\"v1/iframes.m3u8\",PATHWAY-ID=\"edge\"\n";

/// Before, every variant, rendition and I-frame URI of a steered playlist got the token, and a
/// pathway clone carried it, query and all, to the clone's host (another CDN). Now the URIs a
/// clone may copy count as not certainly this host: they get no token. What no clone copies
/// (the steering server's URI, session data) keeps the same-host rule.
#[tokio::test]
async fn a_token_never_reaches_another_host_through_a_content_steering_pathway_clone() {
    let origin = Origin::start().await;
    origin.script(
        "/v/s/master.m3u8",
        Script::ok(STEERED_HLS).header("content-type", "application/vnd.apple.mpegurl"),
    );
    let edge = token_edge(&origin, raw_token()).await;
    let t = token_for("/v/s/*", None);
    let r = edge.get(&format!("/v/s/master.m3u8?hdnts={t}")).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).expect("utf8");
    let tokenised: Vec<&str> = body.lines().filter(|l| l.contains("hdnts=")).collect();
    let cloneable = ["audio/en.m3u8", "v1/media.m3u8", "v1/iframes.m3u8"];
    assert!(
        cloneable
            .iter()
            .all(|u| !tokenised.iter().any(|l| l.contains(u))),
        "a pathway clone's URI carries the token: {tokenised:?}"
    );
    assert!(
        body.contains(&format!("SERVER-URI=\"steering.json?hdnts={t}\""))
            && body.contains(&format!("URI=\"title.json?hdnts={t}\"")),
        "what no clone copies keeps the token:\n{body}"
    );
}
