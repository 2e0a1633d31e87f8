//! Asset membership: which objects the manifests this edge stored reference (master ->
//! renditions -> init, segments, parts, keys), so `POST /admin/purge {"assets": [...]}` can
//! remove a whole asset in one call. Fed by the fill driver each time it stores a manifest
//! (a live playlist adds its new segments on every refresh); at purge time the walk also
//! parses manifests still in the tiers (pushed assets, manifests stored before a restart).
//!
//! Identities are `http://host/path?query` URLs (the url crate's normal form); the purge turns
//! each into cache keys with `cache::key`, for both schemes. Bounded: members per asset, assets
//! tracked (oldest forgotten first) and total bytes; a manifest whose references (DASH templates
//! expanded) pass the member cap is recorded by its directory instead (purged as a prefix).

use std::collections::{HashMap, HashSet, VecDeque};

use parking_lot::Mutex;
use url::Url;
use vedge_manifest::{dash, hls, sniff, Format, WalkError};

/// Most members remembered per asset (a 24 h live window of 2 s segments is ~43k).
pub const MAX_MEMBERS: usize = 50_000;
/// Most manifests remembered.
const MAX_ASSETS: usize = 20_000;
/// Most bytes of member URLs remembered across all assets.
const MAX_BYTES: usize = 64 << 20;
/// Manifests larger than this are not parsed.
const MAX_MANIFEST: usize = 8 << 20;

/// A manifest's references: (member, whether it is a manifest), and directory prefixes.
type Recorded = (Vec<(Url, bool)>, Vec<Url>);

#[derive(Default)]
struct Members {
    /// Member URL -> whether it is itself a manifest (walked further when purging).
    urls: HashMap<String, bool>,
    /// Directories (`http://host/dir/`) whose every object belongs to the asset.
    prefixes: HashSet<String>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    assets: HashMap<String, Members>,
    /// Learn order, oldest first (an asset appears once per learn; stale rows are skipped).
    order: VecDeque<String>,
    bytes: usize,
}

/// The membership index (one per edge).
#[derive(Default)]
pub struct AssetIndex {
    inner: Mutex<Inner>,
}

/// What a purge of an asset covers.
#[derive(Debug, Default)]
pub struct AssetMembers {
    /// Every object URL, the manifests included.
    pub urls: Vec<Url>,
    /// Directory URLs (`http://host/dir/`) to purge as prefixes.
    pub prefixes: Vec<Url>,
    /// Manifests walked (for forgetting them once purged).
    pub manifests: Vec<String>,
    /// Manifests whose members could not be read (not recorded, no body found): what they
    /// list is not covered.
    pub unresolved: Vec<String>,
}

/// The identity of `path_and_query` on `host`, or `None` if it is not a URL.
pub fn asset_url(host: &str, path_and_query: &str) -> Option<Url> {
    if !path_and_query.starts_with('/') {
        return None;
    }
    Url::parse(&format!("http://{host}{path_and_query}")).ok()
}

/// The references of one manifest body fetched from `url`: (member, is a manifest), and the
/// directory prefix to use when DASH templates expand past the cap.
fn references(url: &Url, body: &[u8]) -> (Vec<(Url, bool)>, Option<Url>) {
    if body.len() > MAX_MANIFEST {
        return (Vec::new(), None);
    }
    let refs = match sniff(body) {
        Some(Format::Hls) => {
            let room = hls::Room::only(MAX_MEMBERS);
            hls::references(url, body, true, &mut Vec::new(), &room)
        }
        Some(Format::Dash) => dash::references(url, body, MAX_MEMBERS),
        None => return (Vec::new(), None),
    };
    let refs = match refs {
        Err(WalkError::TooManyObjects { .. } | WalkError::TooManyReferences { .. }) => {
            // Templates over a long (or endless) timeline, a playlist listing more than the
            // cap: the members are the objects under the manifest's directory, matched when
            // purged rather than listed now.
            return (Vec::new(), url.join("./").ok());
        }
        r => r,
    };
    let refs = refs.unwrap_or_default();
    let members = refs
        .into_iter()
        .filter(|r| matches!(r.url.scheme(), "http" | "https"))
        .map(|r| {
            let mut u = r.url;
            // Scheme is not part of an object's identity here (keys are purged for both).
            let _ = u.set_scheme("http");
            u.set_fragment(None);
            (u, r.kind.is_manifest())
        })
        .collect();
    (members, None)
}

impl AssetIndex {
    /// Manifests whose references are known.
    pub fn len(&self) -> usize {
        self.inner.lock().assets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records what the manifest at `url` (its body just stored) references.
    pub fn learn(&self, url: &Url, body: &[u8]) {
        let (members, prefix) = references(url, body);
        if members.is_empty() && prefix.is_none() {
            return;
        }
        let id = url.as_str().to_string();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let is_new = !inner.assets.contains_key(&id);
        let entry = inner.assets.entry(id.clone()).or_default();
        let mut added = 0;
        for (m, manifest) in members {
            if entry.urls.len() >= MAX_MEMBERS {
                break;
            }
            let s = m.as_str();
            if !entry.urls.contains_key(s) {
                added += s.len();
                entry.urls.insert(s.to_string(), manifest);
            }
        }
        if let Some(p) = prefix {
            if entry.prefixes.insert(p.as_str().to_string()) {
                added += p.as_str().len();
            }
        }
        entry.bytes += added;
        inner.bytes += added;
        if is_new {
            inner.bytes += id.len();
            inner.order.push_back(id);
        }
        while inner.assets.len() > MAX_ASSETS || inner.bytes > MAX_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(m) = inner.assets.remove(&old) {
                inner.bytes = inner.bytes.saturating_sub(m.bytes + old.len());
            }
        }
    }

    /// Forgets manifests (after they were purged).
    pub fn forget(&self, ids: &[String]) {
        let mut inner = self.inner.lock();
        for id in ids {
            if let Some(m) = inner.assets.remove(id) {
                inner.bytes = inner.bytes.saturating_sub(m.bytes + id.len());
            }
        }
        let Inner { assets, order, .. } = &mut *inner;
        order.retain(|id| assets.contains_key(id));
    }

    /// The members of the manifest at `url` as recorded (`None`: not tracked).
    fn recorded(&self, url: &Url) -> Option<Recorded> {
        let inner = self.inner.lock();
        let m = inner.assets.get(url.as_str())?;
        Some((
            m.urls
                .iter()
                .filter_map(|(u, is_manifest)| Some((Url::parse(u).ok()?, *is_manifest)))
                .collect(),
            m.prefixes
                .iter()
                .filter_map(|p| Url::parse(p).ok())
                .collect(),
        ))
    }

    /// Everything the asset rooted at `root` covers: recorded members, and the members of
    /// manifests found through `cached_body` (a manifest body still in the tiers, or the
    /// origin's) when they were not recorded. Walks at most `MAX_WALK` manifests and `MAX_MEMBERS` objects per
    /// manifest.
    pub async fn members<F, Fut>(&self, root: Url, cached_body: F) -> AssetMembers
    where
        F: Fn(Url) -> Fut,
        Fut: std::future::Future<Output = Option<bytes::Bytes>>,
    {
        const MAX_WALK: usize = 512;
        let mut out = AssetMembers::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut queue = VecDeque::from([root]);
        let mut walked = 0;
        while let Some(m) = queue.pop_front() {
            if walked == MAX_WALK {
                break;
            }
            walked += 1;
            let (members, prefixes) = match self.recorded(&m) {
                Some(r) => r,
                None => match cached_body(m.clone()).await {
                    Some(body) => {
                        self.learn(&m, &body);
                        let (members, prefix) = references(&m, &body);
                        (members, prefix.into_iter().collect())
                    }
                    None => {
                        out.unresolved.push(m.as_str().to_string());
                        (Vec::new(), Vec::new())
                    }
                },
            };
            out.manifests.push(m.as_str().to_string());
            out.prefixes.extend(prefixes);
            for (u, is_manifest) in members {
                if seen.insert(u.as_str().to_string()) {
                    if is_manifest {
                        queue.push_back(u.clone());
                    }
                    out.urls.push(u);
                }
            }
            if seen.insert(m.as_str().to_string()) {
                out.urls.push(m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nlow/index.m3u8\n";
    const MEDIA: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2,\ns1.m4s\n#EXTINF:2,\ns2.m4s\n#EXT-X-ENDLIST\n";

    #[tokio::test]
    async fn a_master_covers_its_renditions_and_their_segments() {
        let idx = AssetIndex::default();
        let master = asset_url("h", "/vod/master.m3u8").unwrap();
        idx.learn(&master, MASTER.as_bytes());
        idx.learn(
            &asset_url("h", "/vod/low/index.m3u8").unwrap(),
            MEDIA.as_bytes(),
        );
        let m = idx.members(master, |_| async { None }).await;
        let mut urls: Vec<&str> = m.urls.iter().map(|u| u.path()).collect();
        urls.sort();
        assert_eq!(
            urls,
            [
                "/vod/low/index.m3u8",
                "/vod/low/init.mp4",
                "/vod/low/s1.m4s",
                "/vod/low/s2.m4s",
                "/vod/master.m3u8"
            ]
        );
    }

    #[tokio::test]
    async fn an_untracked_manifest_is_read_from_the_tiers() {
        let idx = AssetIndex::default();
        let media = asset_url("h", "/a/index.m3u8").unwrap();
        let m = idx
            .members(media, |_| async {
                Some(bytes::Bytes::from_static(MEDIA.as_bytes()))
            })
            .await;
        assert_eq!(m.urls.len(), 4);
    }

    #[test]
    fn hostile_bodies_record_nothing() {
        let idx = AssetIndex::default();
        let u = asset_url("h", "/x.m3u8").unwrap();
        idx.learn(&u, b"\xff\xfe garbage");
        idx.learn(&u, b"<MPD <<<");
        assert!(idx.recorded(&u).is_none());
    }
}
