//! The store's one error type. Variants carry the path or digest involved.

use std::path::PathBuf;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context} {path}: {source}")]
    Io { context: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest(String),
    #[error("blob {expected} is corrupt: content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    // layer (tar entries while unpacking; the entry path as the archive names it)
    #[error("entry {entry:?} {reason}")]
    LayerEntry { entry: String, reason: String },
    #[error("entry {entry:?}: {context}: {source}")]
    LayerEntryIo { entry: String, context: &'static str, #[source] source: std::io::Error },
    #[error("failed to read the layer stream: {0}")]
    LayerStream(#[source] std::io::Error),
    // distribution (registry client, archives, transfers)
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: &'static str },
    #[error("registry {url}: {message}")]
    Registry { url: String, message: String },
    #[error("credentials {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Distribution { what: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error naming what was being done and the path it was done to.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { context, path: path.into(), source }
    }
}
