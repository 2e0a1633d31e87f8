//! vedge-manifest: HLS (m3u8-rs) and DASH (dash-mpd-core) manifest walking, from one asset URL to
//! every object a player could request (playlists, MPDs, init and media segments, subtitles, key
//! files), plus the pieces the edge (ingest) and the live-burst harness (`vedge-bench`) both read
//! manifests with: DASH template expansion ([`template`]), SegmentTimeline runs ([`timeline`]),
//! the duration syntax of their flags ([`duration`]) and HLS variable substitution
//! ([`variables`], `EXT-X-DEFINE`).
//!
//! The walk is pure apart from its [`Fetcher`]: the same code reads an origin over HTTP or a
//! local directory of packaged assets (`file:` URLs), and tests feed it files or strings.
//!
//! Invariants:
//! - URIs are resolved exactly as a player resolves them: RFC 3986 relative resolution with the
//!   `url` crate against the URL of the document that holds them (after DASH `BaseURL`s).
//! - Every resolved URL is checked against the asset's [`Scope`] before it is fetched or listed.
//! - Byte ranges (EXT-X-BYTERANGE, DASH `mediaRange`/`indexRange`) collapse to one resource:
//!   the edge stores whole objects and serves ranges from them.
//! - Expansion is bounded: [`Limits`] are checked before a timeline is expanded, so an MPD that
//!   implies billions of segments fails fast with the number it implies; and a manifest's new
//!   references are counted in its text before it is parsed, so one listing more than the
//!   budget left never reaches a parser (which holds several times the text's size). The
//!   edge's reading of a live MPD, on every copy, is bounded by the MPD's size as well: no URI
//!   over [`variables::MAX_URI`] is built, at most [`dash::LIVE_URI_BYTES`] are listed.

// `WalkError` carries the URLs it is about (an operator needs them); it is returned once per
// failed walk, never on a hot path, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod dash;
pub mod delivery;
pub mod duration;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod hls;
pub mod scope;
pub mod template;
pub mod timeline;
pub mod variables;

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use url::Url;

pub use fetch::{FetchError, Fetched, Fetcher};
pub use scope::Scope;

/// `s` cut to at most `max` bytes on a char boundary (error messages quote parser output, which
/// can be any UTF-8: `String::truncate` panics inside a multi-byte char).
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// What an object is to a player. Manifests become servable last (atomic publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// An HLS playlist (master or media).
    Playlist,
    /// A DASH MPD.
    Mpd,
    /// An initialisation segment (EXT-X-MAP, DASH Initialization).
    Init,
    /// A media segment, subtitle segment, or a whole single-file representation.
    Segment,
    /// A DASH segment index (RepresentationIndex, `index` templates).
    Index,
    /// An HLS key file (EXT-X-KEY / EXT-X-SESSION-KEY URI).
    Key,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Playlist => "playlist",
            ObjectKind::Mpd => "mpd",
            ObjectKind::Init => "init",
            ObjectKind::Segment => "segment",
            ObjectKind::Index => "index",
            ObjectKind::Key => "key",
        }
    }

    pub fn is_manifest(self) -> bool {
        matches!(self, ObjectKind::Playlist | ObjectKind::Mpd)
    }
}

/// One resource a player may request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub url: Url,
    pub kind: ObjectKind,
    /// The bytes that were walked, for manifests: ingest publishes exactly what it read, so the
    /// published manifest never references something the walk did not see.
    pub body: Option<Bytes>,
}

/// Everything a player could ask for, for one asset.
#[derive(Debug, Clone, Default)]
pub struct Asset {
    /// The URL the walk started from (master playlist or MPD).
    pub root: Option<Url>,
    /// Playlists and MPDs, root first, in discovery order.
    pub manifests: Vec<Object>,
    /// Everything else, deduplicated, in discovery order.
    pub media: Vec<Object>,
    /// References that were seen and deliberately not listed (key files when keys are skipped,
    /// non-HTTP key URIs such as `skd:`), with the reason.
    pub skipped: Vec<(String, &'static str)>,
}

impl Asset {
    /// Every object, media first then manifests: the order ingest stores them in.
    pub fn publish_order(&self) -> impl Iterator<Item = &Object> {
        self.media.iter().chain(self.manifests.iter())
    }

    pub fn len(&self) -> usize {
        self.manifests.len() + self.media.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bounds on what one asset may expand to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Objects (manifests + media) per asset.
    pub max_objects: usize,
    /// Manifests fetched per asset (HLS master + media playlists, MPDs).
    pub max_manifests: usize,
    /// Bytes of one manifest.
    pub max_manifest_bytes: usize,
    /// Bytes of all the manifests of one asset together. The walk keeps every manifest's body
    /// (ingest publishes the exact bytes it read), so without it an origin whose playlists name
    /// one another in a chain made one walk hold `max_manifests` x `max_manifest_bytes` (31 GiB).
    pub max_manifest_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_objects: 200_000,
            max_manifests: 2_000,
            max_manifest_bytes: 16 << 20,
            max_manifest_total_bytes: 64 << 20,
        }
    }
}

/// How to walk.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    pub scope: Scope,
    pub limits: Limits,
    /// List EXT-X-KEY / EXT-X-SESSION-KEY URIs (default: skip; key servers usually authorise
    /// each viewer and must not be cached at the edge).
    pub include_keys: bool,
    /// References within the scope that must still not be fetched (an edge's push fetches only
    /// from its routes' origins): left out of the walk and listed in `Asset::skipped` with the
    /// reason the filter gives.
    pub exclude: Option<Exclude>,
}

/// A filter on a walk's references: `Some(reason)` leaves one out (neither fetched nor listed).
#[derive(Clone)]
pub struct Exclude(pub std::sync::Arc<ExcludeFn>);

/// What `Exclude` calls for each reference.
pub type ExcludeFn = dyn Fn(&Url) -> Option<&'static str> + Send + Sync;

impl std::fmt::Debug for Exclude {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exclude(..)")
    }
}

/// Why a walk failed. Each variant names the URL it is about.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("fetching {url}: {source}")]
    Fetch {
        url: Url,
        #[source]
        source: FetchError,
    },
    #[error("{url}: not a valid {format}: {reason}")]
    Parse {
        url: Url,
        format: &'static str,
        reason: String,
    },
    #[error("{url} is neither an HLS playlist nor a DASH MPD")]
    UnknownFormat { url: Url },
    #[error("{reference} (in {parent}) is outside the asset's scope {scope}; allow it with --allow-other-hosts / --allow-outside-dir")]
    Escape {
        reference: String,
        parent: Url,
        scope: String,
    },
    #[error("{parent}: cannot resolve reference {reference:?}: {reason}")]
    BadReference {
        reference: String,
        parent: Url,
        reason: String,
    },
    #[error(
        "{url}: implies {implied} objects, more than the limit of {limit} (raise --max-objects)"
    )]
    TooManyObjects {
        url: Url,
        implied: u128,
        limit: usize,
    },
    /// Found by counting a playlist's references in its text, before it is parsed.
    #[error("{url}: lists at least {listed} new references, more than the {room} the asset's object limit leaves (counted before parsing; raise --max-objects)")]
    TooManyReferences {
        url: Url,
        listed: usize,
        room: usize,
    },
    #[error("{url}: more than {limit} manifests in one asset (raise --max-manifests)")]
    TooManyManifests { url: Url, limit: usize },
    #[error("{url}: the asset's manifests together are more than {limit} bytes (raise --max-manifest-total-bytes)")]
    ManifestsTooLarge { url: Url, limit: usize },
    #[error("{url}: {what} is not supported")]
    Unsupported { url: Url, what: String },
}

/// A reference found inside a manifest, before scope checks and dedup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub url: Url,
    pub kind: ObjectKind,
}

/// Resolves `reference` against `base` as a player does (RFC 3986).
pub(crate) fn resolve(base: &Url, reference: &str) -> Result<Url, WalkError> {
    let trimmed = reference.trim();
    base.join(trimmed).map_err(|e| WalkError::BadReference {
        reference: trimmed.to_string(),
        parent: base.clone(),
        reason: e.to_string(),
    })
}

/// Format of a manifest body, by content (extensions lie; `#EXTM3U` and `<MPD` do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hls,
    Dash,
}

pub fn sniff(body: &[u8]) -> Option<Format> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xEF && *b != 0xBB && *b != 0xBF)?;
    let rest = &body[start..];
    if rest.starts_with(b"#EXTM3U") {
        Some(Format::Hls)
    } else if rest.starts_with(b"<") {
        Some(Format::Dash)
    } else {
        None
    }
}

/// Walks one asset from its master playlist or MPD.
pub async fn discover<F: Fetcher>(
    asset_url: &Url,
    fetcher: &F,
    opts: &WalkOptions,
) -> Result<Asset, WalkError> {
    let scope = opts.scope.for_asset(asset_url);
    let mut asset = Asset {
        root: Some(asset_url.clone()),
        ..Asset::default()
    };
    let mut seen: HashSet<Url> = HashSet::new();
    let mut queue: VecDeque<(Url, ObjectKind)> = VecDeque::new();
    // Bytes of the manifests kept so far (`Limits::max_manifest_total_bytes`).
    let mut manifest_bytes = 0usize;
    seen.insert(asset_url.clone());
    queue.push_back((asset_url.clone(), ObjectKind::Playlist));
    while let Some((url, _)) = queue.pop_front() {
        if asset.manifests.len() >= opts.limits.max_manifests {
            return Err(WalkError::TooManyManifests {
                url,
                limit: opts.limits.max_manifests,
            });
        }
        // Each manifest may take what is left of the asset's budget, no more: a fetch that
        // passes it stops reading there.
        let total = opts.limits.max_manifest_total_bytes;
        let left = total.saturating_sub(manifest_bytes);
        let cap = opts.limits.max_manifest_bytes.min(left);
        let body = match fetcher.fetch(&url, cap).await {
            Ok(f) => f.body,
            Err(FetchError::TooLarge(_)) if cap < opts.limits.max_manifest_bytes => {
                return Err(WalkError::ManifestsTooLarge { url, limit: total });
            }
            Err(source) => {
                return Err(WalkError::Fetch {
                    url: url.clone(),
                    source,
                })
            }
        };
        manifest_bytes += body.len();
        let budget = opts
            .limits
            .max_objects
            .saturating_sub(asset.len() + queue.len() + 1);
        let (kind, refs) = match sniff(&body) {
            Some(Format::Hls) => {
                // What the walk holds takes no room: a playlist naming them again adds nothing.
                let room = hls::Room {
                    left: budget,
                    known: &|u| seen.contains(u),
                };
                let refs =
                    hls::references(&url, &body, opts.include_keys, &mut asset.skipped, &room)?;
                (ObjectKind::Playlist, refs)
            }
            Some(Format::Dash) => (ObjectKind::Mpd, dash::references(&url, &body, budget)?),
            None => return Err(WalkError::UnknownFormat { url }),
        };
        asset.manifests.push(Object {
            url: url.clone(),
            kind,
            body: Some(body),
        });
        for r in refs {
            scope.check(&r.url, &url)?;
            if !seen.insert(r.url.clone()) {
                continue;
            }
            if let Some(reason) = opts.exclude.as_ref().and_then(|x| (x.0)(&r.url)) {
                asset.skipped.push((r.url.to_string(), reason));
                continue;
            }
            if r.kind.is_manifest() {
                queue.push_back((r.url, r.kind));
            } else {
                asset.media.push(Object {
                    url: r.url,
                    kind: r.kind,
                    body: None,
                });
            }
            let total = asset.len() + queue.len();
            if total > opts.limits.max_objects {
                return Err(WalkError::TooManyObjects {
                    url: url.clone(),
                    implied: total as u128,
                    limit: opts.limits.max_objects,
                });
            }
        }
    }
    Ok(asset)
}

/// Finds the root manifests of a local directory of packaged assets: every MPD, every HLS master
/// playlist, and every media playlist that no master in the directory references.
pub async fn local_roots(dir: &std::path::Path) -> std::io::Result<Vec<Url>> {
    let dir = tokio::fs::canonicalize(dir).await?;
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let mut rd = tokio::fs::read_dir(&d).await?;
        while let Some(e) = rd.next_entry().await? {
            let ft = e.file_type().await?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let p = e.path();
                let ext = p
                    .extension()
                    .and_then(|x| x.to_str())
                    .map(|x| x.to_ascii_lowercase());
                if matches!(ext.as_deref(), Some("m3u8") | Some("mpd")) {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    let mut masters = Vec::new();
    let mut media_playlists = Vec::new();
    let mut referenced: HashSet<Url> = HashSet::new();
    for p in files {
        let Ok(url) = Url::from_file_path(&p) else {
            continue;
        };
        let body = tokio::fs::read(&p).await?;
        match sniff(&body) {
            Some(Format::Dash) => masters.push(url),
            // A master, or a media playlist that does not start as one (the walk reports it).
            Some(Format::Hls) if !body.starts_with(b"#EXTM3U") => masters.push(url),
            Some(Format::Hls) if m3u8_rs::is_master_playlist(&body) => {
                let mut ignored = Vec::new();
                let room = hls::Room::only(usize::MAX);
                if let Ok(refs) = hls::references(&url, &body, false, &mut ignored, &room) {
                    referenced.extend(refs.into_iter().map(|r| r.url));
                }
                masters.push(url);
            }
            Some(Format::Hls) => media_playlists.push(url),
            None => {}
        }
    }
    masters.extend(
        media_playlists
            .into_iter()
            .filter(|u| !referenced.contains(u)),
    );
    Ok(masters)
}

#[cfg(test)]
mod tests;
