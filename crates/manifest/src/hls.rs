//! HLS: the references of a master playlist (variants, I-frame playlists, EXT-X-MEDIA
//! renditions, session keys) and of a media playlist (segments, EXT-X-MAP, EXT-X-KEY), with
//! byte ranges collapsed to their resource.

use m3u8_rs::{KeyMethod, MasterPlaylist, MediaPlaylist, Playlist};
use url::Url;

use super::{resolve, ObjectKind, Reference, WalkError};

/// Why a reference was not listed.
pub const SKIP_KEY: &str = "key file (keys are skipped unless --include-keys)";
pub const SKIP_SCHEME: &str = "not an http(s) or file URL";

/// Parses `body` (fetched from `url`) and returns what it references.
pub fn references(
    url: &Url,
    body: &[u8],
    include_keys: bool,
    skipped: &mut Vec<(String, &'static str)>,
) -> Result<Vec<Reference>, WalkError> {
    match parse(url, body)? {
        Playlist::MasterPlaylist(m) => master_references(url, &m, include_keys, skipped),
        Playlist::MediaPlaylist(m) => media_references(url, &m, include_keys, skipped),
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
    for v in &m.variants {
        c.push(&v.uri, ObjectKind::Playlist)?;
    }
    for alt in &m.alternatives {
        // CLOSED-CAPTIONS have no URI (they are in the video); others may be muxed in too.
        if let Some(uri) = &alt.uri {
            c.push(uri, ObjectKind::Playlist)?;
        }
    }
    for k in &m.session_key {
        c.key(&k.0)?;
    }
    Ok(c.out)
}

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
    // Discontinuities change nothing about which files exist: every segment on either side is
    // listed. Byte ranges are dropped here: the resource is stored once, whole.
    for s in &m.segments {
        if let Some(k) = &s.key {
            c.key(k)?;
        }
        if let Some(map) = &s.map {
            c.push(&map.uri, ObjectKind::Init)?;
        }
        c.push(&s.uri, ObjectKind::Segment)?;
    }
    Ok(c.out)
}
