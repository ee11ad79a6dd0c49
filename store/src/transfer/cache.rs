//! Build-cache export and import for CI (`--cache-to`, `--cache-from`).
//!
//! A cache export is an ordinary OCI image manifest whose config blob (media type
//! `application/vnd.strata.cache.config.v1+json`) lists cache entries
//! `{"entries": [{"key": "sha256:..", "entry": CacheEntry}]}` and whose layers are the
//! layer blobs those entries name. `type=local` writes it into an OCI layout under the tag
//! `cache`; `type=registry` pushes it to a reference (blobs the registry already has are
//! not uploaded again). Import reads the entries eagerly (a small JSON) and fetches a
//! layer only when the build hits its entry (`CacheImport::get`), verified by digest.
//! `mode=min` exports the entries of the final stage, `mode=max` those of every stage.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Descriptor, LocalImage, Location, Platform, Quiet, TransferOptions, remote};
use crate::cache::CacheEntry;
use crate::error::{Error, Result};
use crate::layout::Store;
use crate::refs::descriptor_digest;
use crate::registry::{Client, ClientOptions, Reference, media};
use crate::{Digest, json};

const CACHE_TAG: &str = "cache";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    #[default]
    Min,
    Max,
}

/// Where a cache goes to or comes from: `type=local,dest=DIR|src=DIR[,mode=..]` or
/// `type=registry,ref=REF[,mode=..]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheSpec {
    Local {
        dir: PathBuf,
        mode: CacheMode,
    },
    Registry {
        reference: Reference,
        mode: CacheMode,
    },
}

impl CacheSpec {
    pub fn parse(text: &str) -> Result<CacheSpec> {
        let bad = |message: String| Error::Distribution {
            what: format!("cache spec {text:?}"),
            message,
        };
        let mut fields = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            fields.insert(key.trim(), value.trim());
        }
        let mode = match fields.get("mode").copied() {
            None | Some("min") => CacheMode::Min,
            Some("max") => CacheMode::Max,
            Some(other) => return Err(bad(format!("mode must be min or max, not {other:?}"))),
        };
        match fields.get("type").copied() {
            Some("local") => {
                let dir = fields
                    .get("dest")
                    .or_else(|| fields.get("src"))
                    .ok_or_else(|| bad("needs dest=DIR or src=DIR".into()))?;
                Ok(CacheSpec::Local {
                    dir: PathBuf::from(dir),
                    mode,
                })
            }
            Some("registry") => {
                let reference = fields
                    .get("ref")
                    .ok_or_else(|| bad("needs ref=REF".into()))?;
                Ok(CacheSpec::Registry {
                    reference: Reference::parse(reference)?,
                    mode,
                })
            }
            Some(other) => Err(bad(format!(
                "type must be local or registry, not {other:?}"
            ))),
            None => Err(bad("needs type=local or type=registry".into())),
        }
    }

    pub fn mode(&self) -> CacheMode {
        match self {
            CacheSpec::Local { mode, .. } | CacheSpec::Registry { mode, .. } => *mode,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheConfig {
    entries: Vec<KeyedEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyedEntry {
    key: Digest,
    entry: CacheEntry,
}

/// Exports the store's cache entries for `keys` (those of every stage with `mode=max`,
/// `final_keys` with `mode=min`). Entries whose layer left the store are skipped.
pub fn export(
    store: &Store,
    spec: &CacheSpec,
    keys: &[Digest],
    final_keys: &[Digest],
    client: &ClientOptions,
) -> Result<usize> {
    let chosen = if spec.mode() == CacheMode::Max {
        keys
    } else {
        final_keys
    };
    let mut entries = Vec::new();
    for key in chosen {
        if let Some(entry) = store.cache_get(key)? {
            entries.push(KeyedEntry { key: *key, entry });
        }
    }
    entries.sort_by_key(|e| e.key);
    entries.dedup_by_key(|e| e.key);
    let count = entries.len();
    let mut layers: Vec<serde_json::Value> = Vec::new();
    for e in &entries {
        if let Some(layer) = &e.entry.layer {
            let value = serde_json::to_value(&layer.descriptor).map_err(|source| Error::Json {
                what: "cache layer descriptor".into(),
                source,
            })?;
            if !layers.contains(&value) {
                layers.push(value);
            }
        }
    }
    let config = json::to_canonical(&CacheConfig { entries }, "cache config")?;
    let (config_digest, config_size) = store.put_blob(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::STRATA_CACHE_CONFIG, "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    let manifest = json::to_canonical(&manifest, "cache manifest")?;
    let image = LocalImage::from_parts(manifest, store.blobs_dir(), None)?;
    match spec {
        CacheSpec::Local { dir, .. } => {
            super::write_oci_dir(&image, dir, Some(CACHE_TAG))?;
        }
        CacheSpec::Registry { reference, .. } => {
            let opts = TransferOptions {
                client: client.clone(),
                ..TransferOptions::default()
            };
            super::push_to_registry(store, &image, reference, &opts)?;
        }
    }
    Ok(count)
}

enum Origin {
    Local(PathBuf),
    Registry {
        client: Box<Client>,
        repository: String,
    },
}

/// Cache entries imported from `--cache-from`; layers are fetched on a hit.
pub struct CacheImport {
    entries: BTreeMap<Digest, CacheEntry>,
    origin: Origin,
}

impl CacheImport {
    /// Reads the entries of a cache export. A cache that does not exist yet (first CI run)
    /// gives an empty import, not an error.
    pub fn open(store: &Store, spec: &CacheSpec, client: &ClientOptions) -> Result<CacheImport> {
        match spec {
            CacheSpec::Local { dir, .. } => {
                let origin = Origin::Local(dir.join("blobs/sha256"));
                if !dir.join("index.json").exists() {
                    return Ok(CacheImport {
                        entries: BTreeMap::new(),
                        origin,
                    });
                }
                let location = Location::OciDir {
                    dir: dir.clone(),
                    tag: Some(CACHE_TAG.into()),
                };
                let image = LocalImage::open(store, &location, &Platform::default())?;
                let config = config_of(&image.doc.config, |d, _| {
                    let path = image.blob_path(d);
                    let bytes =
                        std::fs::read(&path).map_err(|e| Error::io("failed to read", &path, e))?;
                    d.verify(&bytes)?;
                    Ok(bytes)
                })?;
                Ok(CacheImport {
                    entries: config,
                    origin,
                })
            }
            CacheSpec::Registry { reference, .. } => {
                let client_ = Client::new(reference.api_host(), client.clone())?;
                let repository = reference.repository.clone();
                let exists = client_.manifest_exists(&repository, &reference.reference())?;
                let mut entries = BTreeMap::new();
                if exists.is_some() {
                    let raw = client_.fetch_manifest(&repository, &reference.reference())?;
                    let doc = super::ManifestDoc::parse(&raw.bytes, &reference.to_string())?;
                    entries = config_of(&doc.config, |d, size| {
                        client_.fetch_blob_bytes(&repository, d, size)
                    })?;
                }
                Ok(CacheImport {
                    entries,
                    origin: Origin::Registry {
                        client: Box::new(client_),
                        repository,
                    },
                })
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `key`, with its layer blob fetched into the store (verified) and the
    /// entry recorded in the store's own cache index.
    pub fn get(&self, store: &Store, key: &Digest) -> Result<Option<CacheEntry>> {
        let Some(entry) = self.entries.get(key) else {
            return Ok(None);
        };
        if let Some(layer) = &entry.layer {
            let digest = descriptor_digest(&layer.descriptor)?;
            if !store.has_blob(&digest) {
                match &self.origin {
                    Origin::Local(blobs) => {
                        store.put_blob_file(&blobs.join(digest.hex()), &digest)?
                    }
                    Origin::Registry { client, repository } => {
                        let descriptor = Descriptor {
                            media_type: layer.descriptor.media_type().to_string(),
                            digest,
                            size: layer.descriptor.size(),
                            platform: None,
                            annotations: BTreeMap::new(),
                        };
                        let opts = TransferOptions {
                            progress: &Quiet,
                            ..TransferOptions::default()
                        };
                        remote::fetch_blobs(store, client, repository, &[&descriptor], &opts)?;
                    }
                }
            }
        }
        store.cache_put(key, entry)?;
        Ok(Some(entry.clone()))
    }
}

fn config_of(
    config: &Option<Descriptor>,
    read: impl FnOnce(&Digest, u64) -> Result<Vec<u8>>,
) -> Result<BTreeMap<Digest, CacheEntry>> {
    let Some(config) = config else {
        return Ok(BTreeMap::new());
    };
    if config.media_type != media::STRATA_CACHE_CONFIG {
        return Err(Error::Distribution {
            what: format!("cache config {}", config.digest),
            message: format!(
                "media type {:?} is not a strata build cache",
                config.media_type
            ),
        });
    }
    let bytes = read(&config.digest, config.size)?;
    let parsed: CacheConfig = json::parse(&bytes, || format!("cache config {}", config.digest))?;
    Ok(parsed
        .entries
        .into_iter()
        .map(|e| (e.key, e.entry))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cache_specs() {
        assert_eq!(
            CacheSpec::parse("type=local,dest=/tmp/c,mode=max").unwrap(),
            CacheSpec::Local {
                dir: "/tmp/c".into(),
                mode: CacheMode::Max
            }
        );
        assert_eq!(
            CacheSpec::parse("type=local,src=/tmp/c").unwrap().mode(),
            CacheMode::Min
        );
        let CacheSpec::Registry { reference, .. } =
            CacheSpec::parse("type=registry,ref=localhost:5000/c:b").unwrap()
        else {
            panic!()
        };
        assert_eq!(reference.to_string(), "localhost:5000/c:b");
        for bad in [
            "type=s3",
            "type=local",
            "type=local,dest=x,mode=all",
            "junk",
        ] {
            assert!(CacheSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
