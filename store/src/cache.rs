//! The build cache index: `cache/<key-hex>.json`, one file per cache key, each naming the
//! layer a step produced (if any) and whatever else the builder wants to remember about
//! it (config changes). Entries are written atomically; a missing layer blob makes an
//! entry a miss, so gc may free layers without touching the index.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::LayerBlob;
use crate::layout::{Store, list_dir};
use crate::refs::descriptor_digest;
use crate::{Digest, json};

/// One cached build step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub layer: Option<LayerBlob>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Store {
    /// Where the entry for `key` lives: `cache/<key-hex>.json`.
    fn cache_path(&self, key: &Digest) -> PathBuf {
        self.cache_dir().join(format!("{}.json", key.hex()))
    }

    /// The entry for `key`, or `None` (also when its layer blob is no longer in the store).
    pub fn cache_get(&self, key: &Digest) -> Result<Option<CacheEntry>> {
        let path = self.cache_path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("failed to read cache entry", &path, e)),
        };
        let entry: CacheEntry = json::parse(&bytes, || path.display().to_string())?;
        if let Some(layer) = &entry.layer
            && !self.has_blob(&descriptor_digest(&layer.descriptor)?)
        {
            return Ok(None);
        }
        Ok(Some(entry))
    }

    pub fn cache_put(&self, key: &Digest, entry: &CacheEntry) -> Result<()> {
        let bytes = json::to_canonical(entry, "cache entry")?;
        self.write_atomic(&self.cache_path(key), &bytes)
    }

    /// Forgets the cache entries written more than `age` ago (all of them with zero), so
    /// that the next gc can free their layers (`docker builder prune`). Returns how many.
    pub fn cache_prune(&self, age: std::time::Duration) -> Result<usize> {
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for item in list_dir(&self.cache_dir())? {
            // entries only: cache/ also holds the directories of RUN --mount=type=cache
            if !item.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            let old = item
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|written| now.duration_since(written).unwrap_or_default() >= age);
            if old {
                match fs::remove_file(item.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io("failed to remove cache entry", item.path(), e));
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Every readable entry, sorted by key. Unreadable files are skipped (fsck reports them).
    pub fn cache_entries(&self) -> Result<Vec<(Digest, CacheEntry)>> {
        let mut out = Vec::new();
        for item in list_dir(&self.cache_dir())? {
            let name = item.file_name();
            let Some(key) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|h| Digest::from_hex(h).ok())
            else {
                continue;
            };
            let Ok(bytes) = fs::read(item.path()) else {
                continue;
            };
            if let Ok(entry) = serde_json::from_slice::<CacheEntry>(&bytes) {
                out.push((key, entry));
            }
        }
        out.sort_by_key(|(key, _)| *key);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci;
    use crate::refs::oci_digest;

    #[test]
    fn put_then_get_round_trips_and_missing_layer_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of(b"RUN echo hi");
        assert_eq!(store.cache_get(&key).unwrap(), None);
        let entry = CacheEntry {
            layer: None,
            data: serde_json::json!({"env": ["A=1"]}),
        };
        store.cache_put(&key, &entry).unwrap();
        assert_eq!(store.cache_get(&key).unwrap(), Some(entry));

        let (blob, size) = store.put_blob(b"layer bytes").unwrap();
        let layer = LayerBlob {
            descriptor: oci::Descriptor::new(
                oci::MediaType::ImageLayerZstd,
                size,
                oci_digest(&blob),
            ),
            diff_id: Digest::of(b"tar"),
        };
        let other = Digest::of(b"COPY . /");
        let with_layer = CacheEntry {
            layer: Some(layer),
            data: serde_json::Value::Null,
        };
        store.cache_put(&other, &with_layer).unwrap();
        assert_eq!(store.cache_get(&other).unwrap(), Some(with_layer));
        assert_eq!(store.cache_entries().unwrap().len(), 2);
        fs::remove_file(store.blob_path(&blob)).unwrap();
        assert_eq!(store.cache_get(&other).unwrap(), None);
    }
}
