//! The sink that writes into vedge-storage directly (`vedge ingest --store PATH`, an edge that
//! is not running). Heads are the edge's own encoding (`CachedObject::for_push`), so the edge
//! serves these objects exactly like pulled ones once it opens the store.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use vedge_storage::{Meta, Source, Store, StoreError};

use super::engine::{Existing, PushObject, Sink, SinkError, SinkFuture};
use crate::cache::object::{strip_hop_by_hop, CachedObject};
use crate::cache::policy::ContentClass;
use crate::manifest::ObjectKind;

/// Freshness given to pushed objects: they are immutable until purged or re-ingested.
pub const PUSH_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The edge-format object for one pushed response.
pub fn cached_object(object: &PushObject) -> CachedObject {
    let mut headers: HeaderMap = object.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    let class = match object.kind {
        ObjectKind::Playlist | ObjectKind::Mpd => ContentClass::Manifest,
        ObjectKind::Init | ObjectKind::Segment | ObjectKind::Index => ContentClass::Segment,
        ObjectKind::Key => ContentClass::Other,
    };
    CachedObject::for_push(
        StatusCode::OK,
        headers,
        object.body.clone(),
        class,
        PUSH_TTL,
    )
}

/// A vedge-storage store as an ingest sink.
pub struct StoreSink {
    pub store: Store,
}

fn sink_err(e: StoreError) -> SinkError {
    match e {
        StoreError::Full(m) => SinkError::Full(m),
        other => SinkError::Other(other.to_string()),
    }
}

impl Sink for StoreSink {
    fn existing<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        Box::pin(async move {
            if !self.store.contains(key.as_bytes()) {
                return Ok(None);
            }
            Ok(self.store.lookup(key.as_bytes()).await.map(|hit| {
                let etag = CachedObject::decode(&hit.meta.head, hit.body.clone(), Vec::new())
                    .and_then(|o| o.etag().and_then(|v| v.to_str().ok()).map(str::to_string));
                Existing {
                    len: hit.body.len() as u64,
                    etag,
                }
            }))
        })
    }

    fn free_for_pinned(&self) -> SinkFuture<'_, Option<u64>> {
        let free = self.store.free_for_pinned();
        Box::pin(std::future::ready(Ok(Some(free))))
    }

    fn put(&self, object: PushObject) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let obj = cached_object(&object);
            let meta = Meta {
                head: obj.encode_head(),
                stored_at: obj.stored_at,
                expires_at: obj.expires_at(),
                tags: obj.tags.clone(),
                pinned: true,
            };
            self.store
                .insert_durable(object.key.as_bytes(), meta, object.body, Source::Push)
                .await
                .map_err(sink_err)
        })
    }

    fn release<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, ()> {
        for k in keys {
            self.store.unpin(k.as_bytes());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
