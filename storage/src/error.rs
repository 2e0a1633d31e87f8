//! `StoreError`: what can go wrong, in words an operator can act on.

use std::io;
use std::path::PathBuf;

/// Errors returned by the store. Messages name the path, sizes and versions involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A device or file operation failed.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The store file could not be opened or prepared.
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Data read back failed verification (checksum, key or header mismatch).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store (or the share reserved for pinned objects) has no room for this write.
    #[error("store full: {0}")]
    Full(String),
    /// The write was refused by admission (rate limit, queue full, too large).
    #[error("write refused: {0}")]
    Refused(&'static str),
    /// A durable write was not written because, while it was queued, a newer insert of the same
    /// key replaced it or the key was removed or purged: these bytes are not on disk (a newer
    /// version, if any, carries its own guarantee).
    #[error("write superseded before it reached the device: a newer insert of the key, or a removal or purge, replaced it")]
    Superseded,
    /// The store has been closed.
    #[error("store is closed")]
    Closed,
    /// The file holds something else than a store this build can open with this config.
    #[error("store format mismatch at {path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The configured size cannot hold the superblocks, the snapshot area and three regions.
    #[error("store too small: {msg}")]
    TooSmall { msg: String },
    /// The configuration is inconsistent.
    #[error("invalid store config: {0}")]
    Config(String),
}
