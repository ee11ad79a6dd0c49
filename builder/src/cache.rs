//! Cache keys and remote cache hooks. A step's key is the sha256 of its parent's key
//! and everything that decides its result: the instruction after expansion, the variables
//! it can see (RUN) and the content of its sources (names, modes, owners, types, link
//! targets, bytes; never mtimes). `CacheSource`/`CacheSink` let `--cache-from` and
//! `--cache-to` (strata's distribution side) serve and receive entries on a local miss.

use strata_store::{CacheEntry, Digest, Store};

/// Builds one cache key from labelled parts.
pub struct KeyBuilder {
    text: Vec<u8>,
}

impl KeyBuilder {
    pub fn new(parent: &Digest) -> KeyBuilder {
        // The version changes when the same step starts to make a different layer, so
        // entries of an older strata are not served for it: v2, COPY and WORKDIR follow
        // the image's symlinks and chown the directories they make.
        let mut text = b"strata-build-cache-v2\0".to_vec();
        text.extend_from_slice(parent.to_string().as_bytes());
        KeyBuilder { text }
    }

    /// Adds a labelled part (length-prefixed so parts cannot run into each other).
    pub fn part(mut self, label: &str, bytes: &[u8]) -> KeyBuilder {
        self.text.extend_from_slice(label.as_bytes());
        self.text
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.text.extend_from_slice(bytes);
        self
    }

    pub fn finish(self) -> Digest {
        Digest::of(&self.text)
    }
}

/// The key that starts a chain (a base image or scratch).
pub fn root_key(what: &str) -> Digest {
    Digest::of(format!("strata-build-root\0{what}").as_bytes())
}

/// Consulted on a local cache miss (`--cache-from`): returns an entry whose layer blob it
/// has already put in `store`, or `None`.
pub trait CacheSource: Send + Sync {
    fn fetch(&self, store: &Store, key: &Digest) -> strata_store::Result<Option<CacheEntry>>;
}

/// Told about every entry the build wrote or reused (`--cache-to`).
pub trait CacheSink: Send + Sync {
    fn export(&self, store: &Store, key: &Digest, entry: &CacheEntry) -> strata_store::Result<()>;
}
