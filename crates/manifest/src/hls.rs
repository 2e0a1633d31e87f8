//! HLS: the references of a master playlist (variants, I-frame playlists, EXT-X-MEDIA
//! renditions, session keys) and of a media playlist (segments, EXT-X-MAP, EXT-X-KEY), with
//! byte ranges collapsed to their resource.

use std::borrow::Cow;
use std::collections::HashSet;

use m3u8_rs::{KeyMethod, MasterPlaylist, MediaPlaylist, Playlist};
use url::Url;

use super::variables::{has_reference, Variables};
use super::{resolve, ObjectKind, Reference, WalkError};

/// Why a reference was not listed.
pub const SKIP_KEY: &str = "key file (keys are skipped unless --include-keys)";
pub const SKIP_SCHEME: &str = "not an http(s) or file URL";
pub const SKIP_VARIABLE: &str =
    "URI with an EXT-X-DEFINE variable it cannot resolve (IMPORT, undefined, too long)";

/// Room a playlist's references may take: the walk's object budget left, and the URLs it
/// already holds (they take none).
pub struct Room<'a> {
    /// New references the playlist may list (`Limits::max_objects` less what the asset holds).
    pub left: usize,
    /// Whether the walk already holds (or left out) this URL.
    pub known: &'a dyn Fn(&Url) -> bool,
}

impl Room<'_> {
    /// Room for `left` references, none known (a manifest read on its own).
    pub fn only(left: usize) -> Room<'static> {
        Room {
            left,
            known: &|_| false,
        }
    }
}

/// Lines m3u8-rs reads at a time. It builds a tag of a few hundred bytes for every line (a
/// comment too) before it builds the playlist, so a whole 16 MiB playlist of short lines held
/// 0.8 to 2 GiB; a chunk holds well under 1 MiB.
const CHUNK_LINES: usize = 1024;

/// Reads `body` (fetched from `url`) and returns what it references, in at most `room.left`
/// new references.
///
/// Two passes over the text, neither of which holds more than a chunk of parsed playlist:
/// first [`units`] counts the new references the playlist lists (segment and variant URI
/// lines, EXT-X-MAP and EXT-X-MEDIA URIs, keys when included) and refuses one that lists
/// more than `room.left` with [`WalkError::TooManyReferences`], before anything is parsed;
/// then the same units go through m3u8-rs [`CHUNK_LINES`] lines at a time. Lines that cannot
/// change what the playlist references (EXTINF, byte ranges, dates, comments, unknown tags)
/// are not parsed at all; they stay in the body the walk keeps.
pub fn references(
    url: &Url,
    body: &[u8],
    include_keys: bool,
    skipped: &mut Vec<(String, &'static str)>,
    room: &Room<'_>,
) -> Result<Vec<Reference>, WalkError> {
    let text = std::str::from_utf8(body).map_err(|_| parse_error(url, "not UTF-8".into()))?;
    let Some(rest) = text.strip_prefix("#EXTM3U") else {
        return Err(parse_error(url, "does not start with #EXTM3U".into()));
    };
    // m3u8-rs decides on the whole text (the first master or media tag); so does the walk.
    let master = m3u8_rs::is_master_playlist(body);
    let mut listed = 0usize;
    units(url, rest, master, include_keys, room.known, |u| {
        listed += u.adds;
        if listed > room.left {
            return Err(WalkError::TooManyReferences {
                url: url.clone(),
                listed,
                room: room.left,
            });
        }
        Ok(())
    })?;
    let mut c = Collector {
        parent: url,
        include_keys,
        out: Vec::new(),
        skipped,
    };
    let mut chunk = String::from("#EXTM3U\n");
    let mut lines = 0usize;
    units(url, rest, master, include_keys, room.known, |u| {
        for line in u.lines.into_iter().flatten() {
            chunk.push_str(&line);
            chunk.push('\n');
            lines += 1;
        }
        if lines >= CHUNK_LINES {
            c.chunk(&chunk, master)?;
            chunk.truncate("#EXTM3U\n".len());
            lines = 0;
        }
        Ok(())
    })?;
    if lines > 0 {
        c.chunk(&chunk, master)?;
    }
    Ok(c.out)
}

/// One self-contained piece of a playlist as m3u8-rs reads it: a segment (its URI line and the
/// EXT-X-KEY and EXT-X-MAP that apply to it, which m3u8-rs attaches to the next segment only),
/// a variant (its tag and the URI line after it), or one EXT-X-MEDIA or EXT-X-SESSION-KEY line.
/// A playlist references what its units reference, each read alone. Lines have their
/// `EXT-X-DEFINE` variables substituted (`variables`); one that does not resolve is kept as
/// written, and its `{$` reference is skipped when collected (`SKIP_VARIABLE`).
struct Unit<'t> {
    lines: [Option<Cow<'t, str>>; 3],
    /// New references it may add (an upper bound: those the walk already holds do not count).
    adds: usize,
}

/// Calls `each` with the units of `text` (a playlist after its `#EXTM3U`), in order, leaving
/// out lines that reference nothing, a segment whose only reference was listed already (byte
/// ranges of one file) or is `known`, and an EXT-X-KEY or EXT-X-MAP repeated as it was.
/// Lines end at LF or CRLF (RFC 8216 4.1).
fn units<'t>(
    parent: &Url,
    text: &'t str,
    master: bool,
    include_keys: bool,
    known: &dyn Fn(&Url) -> bool,
    mut each: impl FnMut(Unit<'t>) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    // Media playlists: the EXT-X-KEY and EXT-X-MAP since the last segment, and the last of
    // each passed on. Master playlists: the variant tag whose URI line is still to come (a
    // URI line sets the newest variant's URI, the last one wins).
    let (mut key, mut map) = (None::<Cow<'t, str>>, None::<Cow<'t, str>>);
    let (mut last_key, mut last_map) = (None::<Cow<'t, str>>, None::<Cow<'t, str>>);
    let mut variant: Option<(Cow<'t, str>, Option<Cow<'t, str>>)> = None;
    // URI lines listed so far: at most `Room::left` + 1 of them before the count refuses.
    let mut listed: HashSet<Cow<'t, str>> = HashSet::new();
    // The playlist's variables, defined before use; `QUERYPARAM` reads the URL it came from.
    let mut vars = Variables::new(parent.query());
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = line.trim_start_matches([' ', '\t']);
        if t.is_empty() {
            continue;
        }
        if let Some(attrs) = t.strip_prefix("#EXT-X-DEFINE:") {
            vars.define(attrs);
            continue;
        }
        let t = vars.resolve(t).unwrap_or(Cow::Borrowed(t));
        if master {
            if t.starts_with("#EXT-X-STREAM-INF:") || t.starts_with("#EXT-X-I-FRAME-STREAM-INF:") {
                if let Some((tag, uri)) = variant.take() {
                    each(Unit {
                        lines: [Some(tag), uri, None],
                        adds: 1,
                    })?;
                }
                variant = Some((t, None));
            } else if t.starts_with("#EXT-X-MEDIA:") {
                let adds = usize::from(t.contains("URI="));
                each(Unit {
                    lines: [Some(t), None, None],
                    adds,
                })?;
            } else if t.starts_with("#EXT-X-SESSION-KEY:") {
                each(Unit {
                    lines: [Some(t), None, None],
                    adds: usize::from(include_keys),
                })?;
            } else if !t.starts_with('#') {
                // Before any variant m3u8-rs has nothing to give it to.
                if let Some((_, uri)) = variant.as_mut() {
                    *uri = Some(t);
                }
            }
            continue;
        }
        if t.starts_with("#EXT-X-KEY:") {
            key = Some(t);
        } else if t.starts_with("#EXT-X-MAP:") {
            map = Some(t);
        } else if !t.starts_with('#') {
            let k = key.take().filter(|k| last_key.as_ref() != Some(k));
            let m = map.take().filter(|m| last_map.as_ref() != Some(m));
            // An unresolvable URI counts as new and is passed on: the parse reports it.
            let new = !listed.contains(&t) && resolve(parent, &t).map_or(true, |u| !known(&u));
            if k.is_none() && m.is_none() && !new {
                continue;
            }
            if new {
                listed.insert(t.clone());
            }
            if k.is_some() {
                last_key.clone_from(&k);
            }
            if m.is_some() {
                last_map.clone_from(&m);
            }
            let adds = usize::from(new)
                + usize::from(m.is_some())
                + usize::from(k.is_some() && include_keys);
            each(Unit {
                lines: [k, m, Some(t)],
                adds,
            })?;
        }
    }
    if let Some((tag, uri)) = variant {
        each(Unit {
            lines: [Some(tag), uri, None],
            adds: 1,
        })?;
    }
    Ok(())
}

fn parse_error(url: &Url, reason: String) -> WalkError {
    WalkError::Parse {
        url: url.clone(),
        format: "HLS playlist",
        reason,
    }
}

/// Parses a playlist; m3u8-rs errors become [`WalkError::Parse`].
pub fn parse(url: &Url, body: &[u8]) -> Result<Playlist, WalkError> {
    let err = |reason: String| WalkError::Parse {
        url: url.clone(),
        format: "HLS playlist",
        reason,
    };
    // m3u8-rs works on bytes but its tag parsers assume UTF-8 text; say so plainly.
    if std::str::from_utf8(body).is_err() {
        return Err(err("not UTF-8".into()));
    }
    m3u8_rs::parse_playlist_res(body).map_err(|e| err(super::clip(&format!("{e:?}"), 200)))
}

fn fetchable(u: &Url) -> bool {
    matches!(u.scheme(), "http" | "https" | "file")
}

struct Collector<'a> {
    parent: &'a Url,
    include_keys: bool,
    out: Vec<Reference>,
    skipped: &'a mut Vec<(String, &'static str)>,
}

impl Collector<'_> {
    fn push(&mut self, reference: &str, kind: ObjectKind) -> Result<(), WalkError> {
        // Substituted before the parse (`units`): what still holds `{$` did not resolve, and
        // fetched as written it would be `%7B$name%7D`, an object no player asks for.
        if has_reference(reference) {
            self.skipped.push((reference.to_string(), SKIP_VARIABLE));
            return Ok(());
        }
        if reference.trim().is_empty() {
            return Err(WalkError::BadReference {
                reference: reference.to_string(),
                parent: self.parent.clone(),
                reason: "empty URI".into(),
            });
        }
        let url = resolve(self.parent, reference)?;
        if !fetchable(&url) {
            self.skipped.push((url.to_string(), SKIP_SCHEME));
            return Ok(());
        }
        if kind == ObjectKind::Key && !self.include_keys {
            self.skipped.push((url.to_string(), SKIP_KEY));
            return Ok(());
        }
        self.out.push(Reference { url, kind });
        Ok(())
    }

    /// Parses one chunk of units (after its own `#EXTM3U`) and collects its references.
    fn chunk(&mut self, chunk: &str, master: bool) -> Result<(), WalkError> {
        let err = |e: String| parse_error(self.parent, super::clip(&e, 200));
        if master {
            let m = m3u8_rs::parse_master_playlist_res(chunk.as_bytes())
                .map_err(|e| err(format!("{e:?}")))?;
            self.master(&m)
        } else {
            let m = m3u8_rs::parse_media_playlist_res(chunk.as_bytes())
                .map_err(|e| err(format!("{e:?}")))?;
            self.media(&m)
        }
    }

    fn key(&mut self, key: &m3u8_rs::Key) -> Result<(), WalkError> {
        if key.method == KeyMethod::None {
            return Ok(());
        }
        match &key.uri {
            Some(uri) => self.push(uri, ObjectKind::Key),
            None => Ok(()),
        }
    }
}

/// The references of a whole parsed master playlist.
pub fn master_references(
    url: &Url,
    m: &MasterPlaylist,
    include_keys: bool,
    skipped: &mut Vec<(String, &'static str)>,
) -> Result<Vec<Reference>, WalkError> {
    let mut c = Collector {
        parent: url,
        include_keys,
        out: Vec::new(),
        skipped,
    };
    c.master(m)?;
    Ok(c.out)
}

/// The references of a whole parsed media playlist.
pub fn media_references(
    url: &Url,
    m: &MediaPlaylist,
    include_keys: bool,
    skipped: &mut Vec<(String, &'static str)>,
) -> Result<Vec<Reference>, WalkError> {
    let mut c = Collector {
        parent: url,
        include_keys,
        out: Vec::new(),
        skipped,
    };
    c.media(m)?;
    Ok(c.out)
}

impl Collector<'_> {
    fn master(&mut self, m: &MasterPlaylist) -> Result<(), WalkError> {
        for v in &m.variants {
            self.push(&v.uri, ObjectKind::Playlist)?;
        }
        for alt in &m.alternatives {
            // CLOSED-CAPTIONS have no URI (they are in the video); others may be muxed in too.
            if let Some(uri) = &alt.uri {
                self.push(uri, ObjectKind::Playlist)?;
            }
        }
        for k in &m.session_key {
            self.key(&k.0)?;
        }
        Ok(())
    }

    fn media(&mut self, m: &MediaPlaylist) -> Result<(), WalkError> {
        // Discontinuities change nothing about which files exist: every segment on either side
        // is listed. Byte ranges are dropped here: the resource is stored once, whole.
        for s in &m.segments {
            if let Some(k) = &s.key {
                self.key(k)?;
            }
            if let Some(map) = &s.map {
                self.push(&map.uri, ObjectKind::Init)?;
            }
            self.push(&s.uri, ObjectKind::Segment)?;
        }
        Ok(())
    }
}
