//! `vedge bench live-burst --ll`: an HLS viewer that behaves like a Low-Latency HLS player
//! (hls.js `lowLatencyMode`): after one plain playlist load it issues blocking playlist reloads
//! for the next part (`_HLS_msn`/`_HLS_part`) while fetching the preload-hinted part, so that each
//! part arrives as it is produced. It records each part's latency to the live edge: how long after
//! the part's last sample was produced (from PROGRAM-DATE-TIME and the part durations) the viewer
//! had all of it.

use std::time::{Duration, SystemTime};

use tokio::time::{sleep, Instant};
use url::Url;

use super::viewer::{Class, Net, Outcome, Plan};

const RETRY: Duration = Duration::from_millis(500);

/// What an LL viewer needs from a media playlist.
#[derive(Debug, Default, PartialEq)]
pub struct LlView {
    pub map: Option<String>,
    /// Media sequence number of the segment after the last full one (the one parts are listed for).
    pub next_msn: u64,
    /// Parts listed after the last full segment: (URI, duration).
    pub tail_parts: Vec<(String, Duration)>,
    pub hint: Option<String>,
    /// Wall clock of the start of segment `next_msn` (from the last PROGRAM-DATE-TIME + EXTINFs).
    pub next_start: Option<SystemTime>,
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let v = &line[at..];
    match v.strip_prefix('"') {
        Some(q) => q.get(..q.find('"')?),
        None => v.split(',').next(),
    }
}

fn pdt(s: &str) -> Option<SystemTime> {
    let t = chrono_free_rfc3339(s)?;
    Some(t)
}

/// `YYYY-MM-DDTHH:MM:SS(.fff)Z` (what packagers write) to a wall-clock time.
fn chrono_free_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(ss.max(0.0)))
}

/// Reads the LL parts of a media playlist; `None` if it is not one.
pub fn parse(text: &str) -> Option<LlView> {
    if !text.starts_with("#EXTM3U") {
        return None;
    }
    let mut v = LlView::default();
    let mut msn = 0u64;
    let mut clock: Option<SystemTime> = None;
    let mut pending: Option<Duration> = None;
    for line in text.lines() {
        if let Some(x) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = x.trim().parse().ok()?;
        } else if let Some(x) = line.strip_prefix("#EXT-X-SKIP:") {
            msn += attr(x, "SKIPPED-SEGMENTS")?.parse::<u64>().ok()?;
        } else if let Some(x) = line.strip_prefix("#EXT-X-MAP:") {
            v.map = attr(x, "URI").map(str::to_string);
        } else if let Some(x) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            clock = pdt(x);
        } else if let Some(x) = line.strip_prefix("#EXTINF:") {
            pending = x
                .split(',')
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
                .map(Duration::from_secs_f64);
        } else if let Some(x) = line.strip_prefix("#EXT-X-PART:") {
            let d = Duration::from_secs_f64(attr(x, "DURATION")?.parse().ok()?);
            v.tail_parts.push((attr(x, "URI")?.to_string(), d));
        } else if let Some(x) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            if attr(x, "TYPE") == Some("PART") {
                v.hint = attr(x, "URI").map(str::to_string);
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            // A full segment: its parts are no longer the tail.
            msn += 1;
            v.tail_parts.clear();
            clock = clock.zip(pending.take()).map(|(c, d)| c + d);
        }
    }
    v.next_msn = msn;
    v.next_start = clock;
    Some(v)
}

/// One LL viewer: plays from the live edge until `leave_at`.
pub async fn run(
    net: &impl Net,
    plan: &Plan,
    media_url: Url,
    wall: &(impl Fn() -> SystemTime + Sync),
) -> Outcome {
    let mut out = Outcome::default();
    let mut init_done = false;
    // The blocking reload made beside the previous part's fetch.
    let mut reloaded = None;
    while Instant::now() < plan.leave_at {
        let got = match reloaded.take() {
            Some(r) => r,
            None => net.get(media_url.as_str(), Class::Playlist).await,
        };
        let Ok(got) = got else {
            sleep(RETRY).await;
            continue;
        };
        let Some(view) = std::str::from_utf8(&got.body).ok().and_then(parse) else {
            net.parse_error();
            sleep(RETRY).await;
            continue;
        };
        if !init_done {
            if let Some(u) = view.map.as_deref().and_then(|m| media_url.join(m).ok()) {
                if net.get(u.as_str(), Class::Init).await.is_err() {
                    sleep(RETRY).await;
                    continue;
                }
            }
            init_done = true;
        }
        let Some(hint) = view.hint.as_deref().and_then(|h| media_url.join(h).ok()) else {
            // Not a low-latency playlist: poll like a regular player.
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        // The hinted part is part `tail_parts.len()` of segment `next_msn`: reload the playlist
        // blocking on it while the part itself streams in.
        let (msn, part) = (view.next_msn, view.tail_parts.len());
        let mut reload = media_url.clone();
        reload.set_query(Some(&format!("_HLS_msn={msn}&_HLS_part={part}")));
        let (p, next) = futures_util::future::join(
            net.get(hint.as_str(), Class::Segment),
            net.get(reload.as_str(), Class::Playlist),
        )
        .await;
        reloaded = Some(next);
        match p {
            Ok(_) => {
                if !out.started {
                    out.started = true;
                    net.startup(Instant::now().saturating_duration_since(plan.join_at));
                }
                out.segments += 1;
                // End of the hinted part: the segment start plus the listed parts before it; its
                // own duration is learnt from the next playlist, so use the last part's.
                let before: Duration = view.tail_parts.iter().map(|p| p.1).sum();
                let own = view.tail_parts.last().map(|p| p.1).unwrap_or_default();
                if let Some(start) = view.next_start {
                    if let Ok(late) = wall().duration_since(start + before + own) {
                        net.live_latency(late);
                    }
                }
            }
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tail_parts_and_the_hint() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00.000Z\n#EXT-X-PART:DURATION=1.0,URI=\"p12.0\"\n#EXTINF:2.0,\nseg12\n#EXT-X-PART:DURATION=0.5,URI=\"p13.0\",INDEPENDENT=YES\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p13.1\"\n";
        let v = parse(text).expect("parses");
        assert_eq!(v.next_msn, 13);
        assert_eq!(
            v.tail_parts,
            vec![("p13.0".into(), Duration::from_millis(500))]
        );
        assert_eq!(v.hint.as_deref(), Some("p13.1"));
        assert_eq!(v.map.as_deref(), Some("init.mp4"));
        let jan1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(v.next_start, Some(jan1 + Duration::from_secs(2)));
    }
}
