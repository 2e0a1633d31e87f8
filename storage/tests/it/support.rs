use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use vedge_storage::{EngineChoice, Meta, Store, StoreConfig, StoreError};

pub const ENGINES: [EngineChoice; 2] = [EngineChoice::Uring, EngineChoice::Psync];
pub const REGION: u64 = 256 * 1024;

/// A small store: 15 regions of 256 KiB (objects up to 64 KiB), everything admitted.
pub fn cfg(path: &Path, engine: EngineChoice) -> StoreConfig {
    let mut c = StoreConfig::new(path, 4 << 20);
    c.region_size = REGION;
    c.engine = engine;
    c.admit_window = Duration::ZERO;
    c
}

/// Deterministic body for a key, so any served object can be checked against its key.
pub fn body_for(key: &str, len: usize) -> Bytes {
    let seed = key
        .bytes()
        .fold(17u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    Bytes::from(
        (0..len)
            .map(|i| (seed.wrapping_add(i as u32 * 7) >> 3) as u8)
            .collect::<Vec<u8>>(),
    )
}

pub fn meta(key: &str, tags: &[&str], pinned: bool) -> Meta {
    Meta {
        head: Bytes::from(format!("HTTP/1.1 200 OK\r\nx-key: {key}\r\n")),
        stored_at: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        pinned,
    }
}

pub async fn open(c: &StoreConfig) -> Store {
    Store::open(c.clone()).await.expect("open store")
}

/// Opens with io_uring, or None (saying so) where the kernel or seccomp refuses it.
pub async fn open_uring(c: &StoreConfig) -> Option<Store> {
    let mut c = c.clone();
    c.engine = EngineChoice::Uring;
    match Store::open(c).await {
        Ok(s) => Some(s),
        Err(StoreError::Config(m)) if m.contains("io_uring unavailable") => {
            eprintln!("{m}; skipped");
            None
        }
        Err(e) => panic!("open store: {e}"),
    }
}

pub async fn put(s: &Store, key: &str, len: usize) {
    s.insert_durable(
        key.as_bytes(),
        meta(key, &[], false),
        body_for(key, len),
        vedge_storage::Source::Push,
    )
    .await
    .expect("insert_durable");
}

/// Holds the writer and queues a push of `key` (a pinned `insert_durable` of `len` bytes) behind
/// it; returns once the writer has it waiting. `s.hold_writer(false)` lets it through.
pub async fn queue_push(
    s: &Store,
    key: &str,
    len: usize,
) -> tokio::task::JoinHandle<Result<(), StoreError>> {
    s.hold_writer(true);
    let push = tokio::spawn({
        let (s, key) = (s.clone(), key.to_string());
        async move {
            let (m, body) = (meta(&key, &[], true), body_for(&key, len));
            s.insert_durable(key.as_bytes(), m, body, vedge_storage::Source::Push)
                .await
        }
    });
    s.writer_held().await;
    push
}

/// Asserts `key` is served with the exact body and head it was written with.
pub async fn assert_served(s: &Store, key: &str, len: usize) {
    let hit = s
        .lookup(key.as_bytes())
        .await
        .unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(hit.body.len(), len, "{key} length");
    assert!(hit.body == body_for(key, len), "{key} body differs");
    assert_eq!(hit.meta.head, meta(key, &[], false).head);
}

/// Where the object header holding `key` starts in a store file's bytes: the first header
/// (its `VOBJ` magic) whose key, 76 bytes in (`OBJ_FIXED`), is `key`. A search for the key's
/// bytes alone can land in another object's checksums or a random nonce first: a two-byte key
/// such as `o7` did, one run in a few dozen, and the test damaged the wrong bytes.
pub fn header_of(data: &[u8], key: &[u8]) -> Option<usize> {
    const OBJ_FIXED: usize = 76;
    (0..data.len().saturating_sub(OBJ_FIXED + key.len())).find(|&h| {
        &data[h..h + 4] == b"VOBJ" && &data[h + OBJ_FIXED..h + OBJ_FIXED + key.len()] == key
    })
}

/// Flips one bit of the byte at `at` in the file at `path` (a corrupt device, for the checksums).
pub fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
}
