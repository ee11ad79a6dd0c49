//! The store's one error type. Variants carry the path or digest involved.

use std::path::PathBuf;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest(String),
    #[error("blob {expected} is corrupt: content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    // layer (tar entries while unpacking; the entry path as the archive names it)
    #[error("entry {entry:?} {reason}")]
    LayerEntry { entry: String, reason: String },
    #[error("entry {entry:?}: {context}: {source}")]
    LayerEntryIo {
        entry: String,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the layer stream: {0}")]
    LayerStream(#[source] std::io::Error),
    // store (blobs, images, refs, containers, cache)
    #[error("blob {0} not found in the store")]
    BlobNotFound(Digest),
    #[error("{what} is not valid json: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("no such image: {0}")]
    ImageNotFound(String),
    #[error("image reference {reference:?} is ambiguous: it matches {count} images")]
    AmbiguousImage { reference: String, count: usize },
    #[error("image {image} is used by container {container}; remove the container first")]
    ImageInUse { image: String, container: String },
    #[error("no such container: {0}")]
    ContainerNotFound(String),
    #[error("container reference {reference:?} is ambiguous: it matches {count} containers")]
    AmbiguousContainer { reference: String, count: usize },
    #[error("container name {0:?} is already in use")]
    ContainerNameInUse(String),
    #[error("container {id} is still mounted at {path}; unmount it first")]
    ContainerMounted { id: String, path: PathBuf },
    #[error("layer {digest} unpacks to diff_id {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    // distribution (registry client, archives, transfers)
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },
    #[error("registry {url}: {message}")]
    Registry { url: String, message: String },
    /// Data a registry sent that is not what was asked for (the store is not at fault).
    #[error("registry {url} sent content that hashes to {actual}, not {expected}{detail}")]
    RegistryDigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
        /// More about it, from ` (`: the size sent, where the expected digest came from.
        detail: String,
    },
    #[error("credentials {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("credential helper {program} (for registry {registry}): {message}")]
    CredentialHelper {
        program: String,
        registry: String,
        message: String,
    },
    #[error("{what}: {message}")]
    Distribution { what: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error naming what was being done and the path it was done to.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
