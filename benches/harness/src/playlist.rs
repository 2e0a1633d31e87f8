//! Manifest text of the live simulator: HLS master and media playlists, DASH MPDs, for live
//! (sliding window) and VOD. Pure functions of a [`Timeline`] and the time since the stream began,
//! so they are tested under paused time.
//!
//! Room for Low-Latency HLS: a `Timeline` already knows when each segment starts and ends;
//! partial segments would add `#EXT-X-PART` lines from a part duration and `#EXT-X-PRELOAD-HINT`
//! for the next part, served by a blocking playlist reload (`_HLS_msn`/`_HLS_part`).

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a rendition looks like in a manifest.
#[derive(Debug, Clone)]
pub struct RenditionInfo {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub bandwidth: u64,
    pub codecs: String,
    pub timescale: u64,
}

/// The live clock of one stream.
///
/// The stream "began" `window` segments before its first request (`first_request`), so that the
/// first playlist already holds a full window. Segment `n` covers media time `[n*d, (n+1)*d)`,
/// starts at wall time `epoch + n*d` and becomes available when it ends, at `epoch + (n+1)*d`.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Wall clock of segment 0's start (the DASH availabilityStartTime).
    pub epoch: SystemTime,
    pub segment: Duration,
    pub window: u64,
}

impl Timeline {
    /// A stream whose first request arrives at wall time `first_request`.
    pub fn starting_at(first_request: SystemTime, segment: Duration, window: u64) -> Timeline {
        Timeline {
            epoch: first_request - segment * window as u32,
            segment,
            window,
        }
    }

    /// Number of segments available `since_first` after the first request.
    pub fn available(&self, since_first: Duration) -> u64 {
        self.window + (since_first.as_nanos() / self.segment.as_nanos()) as u64
    }

    /// Segments in the live window: `first..end` (end exclusive).
    pub fn window_at(&self, since_first: Duration) -> (u64, u64) {
        let end = self.available(since_first);
        (end.saturating_sub(self.window), end)
    }

    /// Wall-clock start of segment `n`.
    pub fn start_of(&self, n: u64) -> SystemTime {
        self.epoch + self.segment * n as u32
    }
}

/// RFC 3339 with milliseconds, UTC (`2026-11-22T04:38:03.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

// Howard Hinnant's days -> civil date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn iso_duration(d: Duration) -> String {
    format!("PT{}S", d.as_secs_f64())
}

/// HLS multivariant playlist.
pub fn hls_master(renditions: &[RenditionInfo]) -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in renditions {
        let _ = writeln!(
            s,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},CODECS=\"{}\",FRAME-RATE=30.000\n{}/media.m3u8",
            r.bandwidth * 11 / 10,
            r.bandwidth,
            r.width,
            r.height,
            r.codecs,
            r.id
        );
    }
    s
}

/// HLS media playlist of the live window at `since_first`, or of the whole VOD asset when
/// `vod_segments` is given.
pub fn hls_media(tl: &Timeline, since_first: Duration, vod_segments: Option<u64>) -> String {
    let (first, end) = match vod_segments {
        Some(n) => (0, n),
        None => tl.window_at(since_first),
    };
    let d = tl.segment.as_secs_f64();
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n");
    let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", tl.segment.as_secs().max(1));
    let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{first}");
    if vod_segments.is_some() {
        s.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    s.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"init.mp4\"\n");
    for n in first..end {
        if vod_segments.is_none() {
            let _ = writeln!(s, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(tl.start_of(n)));
        }
        let _ = writeln!(s, "#EXTINF:{d:.3},\nseg_{n}.m4s");
    }
    if vod_segments.is_some() {
        s.push_str("#EXT-X-ENDLIST\n");
    }
    s
}

/// How DASH addresses segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashAddressing {
    /// `SegmentTemplate@duration` and `$Number$`.
    Number,
    /// `$Time$` with a `SegmentTimeline` of the current window.
    Timeline,
}

/// DASH MPD: dynamic for live (`vod_segments == None`), static for VOD.
pub fn dash_mpd(
    tl: &Timeline,
    since_first: Duration,
    renditions: &[RenditionInfo],
    addressing: DashAddressing,
    vod_segments: Option<u64>,
) -> String {
    let now = tl.epoch + tl.segment * tl.window as u32 + since_first;
    let d = tl.segment.as_secs_f64();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    match vod_segments {
        Some(n) => {
            let _ = writeln!(
                s,
                "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" type=\"static\" mediaPresentationDuration=\"{}\" minBufferTime=\"PT2S\">",
                iso_duration(tl.segment * n as u32)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" type=\"dynamic\" availabilityStartTime=\"{}\" publishTime=\"{}\" minimumUpdatePeriod=\"{}\" timeShiftBufferDepth=\"{}\" suggestedPresentationDelay=\"{}\" minBufferTime=\"PT2S\">",
                rfc3339(tl.epoch),
                rfc3339(now),
                iso_duration(tl.segment),
                iso_duration(tl.segment * tl.window as u32),
                iso_duration(tl.segment * 3),
            );
        }
    }
    s.push_str(" <Period id=\"0\" start=\"PT0S\">\n");
    s.push_str("  <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\">\n");
    let template = |ts: u64, indent: &str| -> String {
        let dur_ticks = (d * ts as f64).round() as u64;
        match addressing {
            DashAddressing::Number => format!(
                "{indent}<SegmentTemplate timescale=\"{ts}\" duration=\"{dur_ticks}\" startNumber=\"0\" initialization=\"$RepresentationID$/init.mp4\" media=\"$RepresentationID$/seg_$Number$.m4s\"/>\n"
            ),
            DashAddressing::Timeline => {
                let (first, end) = match vod_segments {
                    Some(n) => (0, n),
                    None => tl.window_at(since_first),
                };
                format!(
                    "{indent}<SegmentTemplate timescale=\"{ts}\" initialization=\"$RepresentationID$/init.mp4\" media=\"$RepresentationID$/t_$Time$.m4s\">\n{indent} <SegmentTimeline><S t=\"{}\" d=\"{dur_ticks}\" r=\"{}\"/></SegmentTimeline>\n{indent}</SegmentTemplate>\n",
                    first * dur_ticks,
                    end.saturating_sub(first).saturating_sub(1)
                )
            }
        }
    };
    // One template for the set when every rendition has the same timescale; otherwise each
    // Representation carries its own, so that `$Time$` is in its own track's ticks (the
    // simulator answers `t_{time}` in the rendition's timescale).
    let shared = renditions
        .windows(2)
        .all(|w| w[0].timescale == w[1].timescale);
    if shared {
        let ts = renditions.first().map(|r| r.timescale).unwrap_or(1000);
        s.push_str(&template(ts, "   "));
    }
    for r in renditions {
        let _ = write!(
            s,
            "   <Representation id=\"{}\" codecs=\"{}\" bandwidth=\"{}\" width=\"{}\" height=\"{}\" frameRate=\"30\"",
            r.id, r.codecs, r.bandwidth, r.width, r.height
        );
        if shared {
            s.push_str("/>\n");
        } else {
            s.push_str(">\n");
            s.push_str(&template(r.timescale, "    "));
            s.push_str("   </Representation>\n");
        }
    }
    s.push_str("  </AdaptationSet>\n </Period>\n");
    if vod_segments.is_none() {
        // Players sync to the origin's clock; relative URL, resolved against the MPD's own.
        s.push_str(
            " <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"/__time\"/>\n",
        );
    }
    s.push_str("</MPD>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3u8_rs::Playlist;

    fn infos() -> Vec<RenditionInfo> {
        (0..2)
            .map(|i| RenditionInfo {
                id: format!("r{i}"),
                width: 160 * (i + 1),
                height: 90 * (i + 1),
                bandwidth: 150_000 * (i as u64 + 1),
                codecs: "avc1.42c01e".into(),
                timescale: 15360,
            })
            .collect()
    }

    fn timeline() -> Timeline {
        Timeline::starting_at(
            UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            Duration::from_secs(2),
            6,
        )
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_321_083_123)),
            "2026-11-22T04:18:03.123Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn master_parses_with_all_renditions() {
        let text = hls_master(&infos());
        match m3u8_rs::parse_playlist_res(text.as_bytes()) {
            Ok(Playlist::MasterPlaylist(m)) => {
                assert_eq!(m.variants.len(), 2);
                assert_eq!(m.variants[1].uri, "r1/media.m3u8");
                assert_eq!(m.variants[0].bandwidth, 165_000);
            }
            other => panic!("not a master playlist: {other:?}"),
        }
    }

    /// The window slides at wall-clock pace: checked with tokio's paused clock driving the time.
    #[tokio::test(start_paused = true)]
    async fn media_playlist_window_slides_with_the_clock() {
        let tl = timeline();
        let start = tokio::time::Instant::now();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let text = hls_media(&tl, start.elapsed(), None);
            let Ok(Playlist::MediaPlaylist(p)) = m3u8_rs::parse_playlist_res(text.as_bytes())
            else {
                panic!("not a media playlist:\n{text}");
            };
            assert_eq!(p.target_duration, 2);
            assert_eq!(p.segments.len(), 6);
            assert!(!p.end_list);
            let seq = p.media_sequence;
            for (i, s) in p.segments.iter().enumerate() {
                assert_eq!(s.uri, format!("seg_{}.m4s", seq + i as u64));
                assert!((s.duration - 2.0).abs() < 1e-6);
                let pdt = s.program_date_time.expect("PDT on every segment");
                let want = tl.start_of(seq + i as u64);
                let want_ms = want
                    .duration_since(UNIX_EPOCH)
                    .expect("after epoch")
                    .as_millis();
                assert_eq!(pdt.timestamp_millis() as u128, want_ms);
            }
            seen.push(seq);
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        // 0, 2.5, 5, 7.5, 10 s after the first request -> one new segment every 2 s.
        assert_eq!(seen, vec![0, 1, 2, 3, 5]);
    }

    #[test]
    fn vod_playlist_ends() {
        let text = hls_media(&timeline(), Duration::from_secs(100), Some(10));
        let Ok(Playlist::MediaPlaylist(p)) = m3u8_rs::parse_playlist_res(text.as_bytes()) else {
            panic!("not a media playlist");
        };
        assert!(p.end_list);
        assert_eq!(p.media_sequence, 0);
        assert_eq!(p.segments.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn dynamic_mpd_parses_and_its_timeline_follows_the_clock() {
        let tl = timeline();
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let since = start.elapsed();
        let mpd = dash_mpd(&tl, since, &infos(), DashAddressing::Number, None);
        let m = dash_mpd_core::parse(&mpd).expect("MPD parses");
        assert_eq!(m.mpdtype.as_deref(), Some("dynamic"));
        assert_eq!(m.minimumUpdatePeriod, Some(Duration::from_secs(2)));
        assert_eq!(m.timeShiftBufferDepth, Some(Duration::from_secs(12)));
        let ast = m.availabilityStartTime.expect("availabilityStartTime");
        let epoch_ms = tl
            .epoch
            .duration_since(UNIX_EPOCH)
            .expect("epoch")
            .as_millis();
        assert_eq!(ast.timestamp_millis() as u128, epoch_ms);
        let aset = &m.periods[0].adaptations[0];
        let st = aset.SegmentTemplate.as_ref().expect("template");
        assert_eq!(st.duration, Some(30720.0));
        assert_eq!(st.timescale, Some(15360));
        assert_eq!(aset.representations.len(), 2);

        let mpd = dash_mpd(&tl, since, &infos(), DashAddressing::Timeline, None);
        let m = dash_mpd_core::parse(&mpd).expect("MPD parses");
        let st = m.periods[0].adaptations[0]
            .SegmentTemplate
            .clone()
            .expect("template");
        let s = &st.SegmentTimeline.expect("timeline").segments[0];
        // 5 s after the first request: 8 segments exist, the window is 2..8.
        assert_eq!(s.t, Some(2 * 30720));
        assert_eq!(s.d, 30720);
        assert_eq!(s.r, Some(5));
    }

    #[test]
    fn static_mpd_for_vod() {
        let mpd = dash_mpd(
            &timeline(),
            Duration::ZERO,
            &infos(),
            DashAddressing::Number,
            Some(30),
        );
        let m = dash_mpd_core::parse(&mpd).expect("MPD parses");
        assert_eq!(m.mpdtype.as_deref(), Some("static"));
        assert_eq!(m.mediaPresentationDuration, Some(Duration::from_secs(60)));
    }

    /// Regression: the `$Time$` MPD used the first rendition's timescale for every rendition.
    #[test]
    fn renditions_with_their_own_timescale_get_their_own_template() {
        let mut infos = infos();
        infos[1].timescale = 90_000;
        let tl = timeline();
        let mpd = dash_mpd(&tl, Duration::ZERO, &infos, DashAddressing::Timeline, None);
        let m = dash_mpd_core::parse(&mpd).expect("MPD parses");
        let aset = &m.periods[0].adaptations[0];
        assert!(aset.SegmentTemplate.is_none(), "{mpd}");
        for (rep, ts) in aset.representations.iter().zip([15_360u64, 90_000]) {
            let st = rep
                .SegmentTemplate
                .as_ref()
                .expect("template per representation");
            assert_eq!(st.timescale, Some(ts));
            let s = &st.SegmentTimeline.as_ref().expect("timeline").segments[0];
            assert_eq!(s.d, 2 * ts);
            assert_eq!(s.r, Some(5));
        }
        // Same timescale everywhere: one template on the AdaptationSet, as before.
        let mpd = dash_mpd(
            &tl,
            Duration::ZERO,
            &self::infos(),
            DashAddressing::Timeline,
            None,
        );
        let m = dash_mpd_core::parse(&mpd).expect("MPD parses");
        assert!(m.periods[0].adaptations[0].SegmentTemplate.is_some());
    }
}
