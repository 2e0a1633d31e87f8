//! The sink that writes into vedge-storage directly (`vedge ingest --store PATH`, an edge that
//! is not running). Heads are the edge's own encoding (`CachedObject::for_push`), so the edge
//! serves these objects exactly like pulled ones once it opens the store.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use vedge_storage::{Source, Store, StoreError};

use super::engine::{put_collected, Existing, PushObject, Sink, SinkError, SinkFuture};
use super::holds::Holds;
use crate::cache::object::{strip_hop_by_hop, CachedObject};
use crate::cache::policy::ContentClass;
use crate::proxy::tiers::store_meta;
use vedge_manifest::fetch::{FetchError, Opened, OpenedBody};
use vedge_manifest::ObjectKind;

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
        ObjectKind::Key => ContentClass::Key,
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
    /// The holds of this process's runs on the store's keys.
    holds: Holds,
}

impl StoreSink {
    pub fn new(store: Store) -> StoreSink {
        StoreSink {
            store,
            holds: Holds::default(),
        }
    }
}

/// What `store` holds under `key`: length, ETag and whether it is a push (its head says so).
pub async fn existing_in(store: &Store, key: &str) -> Option<Existing> {
    if !store.contains(key.as_bytes()) {
        return None;
    }
    let hit = store.lookup(key.as_bytes()).await?;
    let object = CachedObject::decode(&hit.meta.head, hit.body.clone(), Vec::new());
    Some(Existing {
        len: hit.body.len() as u64,
        etag: object
            .as_ref()
            .and_then(|o| o.etag().and_then(|v| v.to_str().ok()).map(str::to_string)),
        pushed: object.is_some_and(|o| o.pinned),
    })
}

/// Pins what `store` holds under `key` where it is ([`Sink::adopt`]).
pub fn adopt_in(store: &Store, key: &str) -> Result<bool, SinkError> {
    store.pin(key.as_bytes()).map_err(sink_err)
}

pub(crate) fn sink_err(e: StoreError) -> SinkError {
    match e {
        StoreError::Full(m) => SinkError::Full(m),
        other => SinkError::Store(std::sync::Arc::new(other)),
    }
}

impl Sink for StoreSink {
    fn existing<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        Box::pin(async move { Ok(existing_in(&self.store, key).await) })
    }

    fn hold(&self, key: &str) {
        self.holds
            .hold(key, || self.store.is_pinned(key.as_bytes()));
    }

    fn adopt<'a>(&'a self, key: &'a str) -> SinkFuture<'a, bool> {
        Box::pin(std::future::ready(adopt_in(&self.store, key)))
    }

    fn settled<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Existing>> {
        Box::pin(async move {
            self.store.flush().await;
            Ok(existing_in(&self.store, key).await)
        })
    }

    fn free_for_pinned(&self) -> SinkFuture<'_, Option<u64>> {
        let free = self.store.free_for_pinned();
        Box::pin(std::future::ready(Ok(Some(free))))
    }

    fn put(&self, object: PushObject) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let meta = store_meta(&cached_object(&object));
            self.store
                .insert_durable(object.key.as_bytes(), meta, object.body, Source::Push)
                .await
                .map_err(sink_err)
        })
    }

    /// With a known length, the body goes straight into the store's write buffer
    /// (`stream_into_store`); otherwise it is read into memory first.
    fn put_opened(&self, key: String, kind: ObjectKind, opened: Opened) -> SinkFuture<'_, u64> {
        Box::pin(async move {
            let Some(len) = opened.len else {
                return put_collected(self, key, kind, opened).await;
            };
            stream_into_store(&self.store, key, kind, opened, len).await
        })
    }

    fn release<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, ()> {
        self.holds.release(keys, |k| {
            self.store.unpin(k.as_bytes());
        });
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Stores a pushed body of announced length `len` durably and pinned, reading it straight into
/// the store's write buffer (one copy: from the socket's frames or, for files, by the kernel
/// from the page cache) — never into a `Bytes` of its own first. The edge's admin ingest and
/// `vedge ingest --store` both use it. Returns the length.
pub async fn stream_into_store(
    store: &Store,
    key: String,
    kind: ObjectKind,
    opened: Opened,
    len: u64,
) -> Result<u64, SinkError> {
    let len = usize::try_from(len)
        .map_err(|_| SinkError::Other(format!("{len}-byte object too large")))?;
    if len > opened.max_bytes {
        return Err(SinkError::Fetch(FetchError::TooLarge(opened.max_bytes)));
    }
    // The head does not depend on the body: build it from the headers alone.
    let head_only = PushObject {
        key,
        kind,
        body: Bytes::new(),
        headers: opened.headers,
    };
    let meta = store_meta(&cached_object(&head_only));
    let mut buf = store
        .object_buf(head_only.key.as_bytes(), meta, len)
        .map_err(sink_err)?;
    match opened.body {
        OpenedBody::File(file) => {
            buf = tokio::task::spawn_blocking(move || {
                while buf.read_from(&file)? > 0 {}
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .map_err(|e| SinkError::Other(e.to_string()))?
            .map_err(|e| SinkError::Fetch(FetchError::Io(e.to_string())))?;
        }
        mut body => {
            while let Some(chunk) = body.next_chunk().await.map_err(SinkError::Fetch)? {
                buf.put(&chunk).map_err(|_| {
                    SinkError::Fetch(FetchError::Io(format!(
                        "body longer than its announced {len} bytes"
                    )))
                })?;
            }
        }
    }
    if !buf.is_complete() {
        return Err(SinkError::Fetch(FetchError::Io(format!(
            "body ended after {} of {len} bytes",
            buf.filled()
        ))));
    }
    store
        .insert_durable_buf(buf, Source::Push)
        .await
        .map_err(sink_err)?;
    Ok(len as u64)
}
