//! Consistency check: re-hash every blob, follow index -> manifest -> config and layers,
//! and check that unpacked layers, containers and cache entries make sense.
//!
//! Leftovers in `tmp/` and unreferenced blobs are not problems: a crash may leave them
//! and gc sweeps them. Everything a reader could trip over is.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};

use crate::error::{Error, Result};
use crate::layout::{Store, entry_digest, list_dir};
use crate::refs::{descriptor_digest, entry_name};
use crate::{Digest, json, oci};

/// One inconsistency, naming the blob or path involved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The digest or path the problem is about.
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

#[derive(Default)]
struct Findings {
    problems: Vec<Problem>,
    corrupt: HashSet<Digest>,
    diff_ids: HashSet<Digest>,
}

impl Findings {
    fn add(&mut self, subject: impl fmt::Display, message: impl Into<String>) {
        self.problems.push(Problem {
            subject: subject.to_string(),
            message: message.into(),
        });
    }
}

impl Store {
    /// Checks the whole store; an empty list means it is consistent.
    pub fn fsck(&self) -> Result<Vec<Problem>> {
        let mut found = Findings::default();
        self.check_layout_file(&mut found);
        self.check_blobs(&mut found)?;
        self.check_index(&mut found);
        self.check_layers(&mut found)?;
        self.check_containers(&mut found)?;
        Ok(found.problems)
    }

    fn check_layout_file(&self, found: &mut Findings) {
        let path = self.oci_dir().join("oci-layout");
        let version = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|v| {
                v.get("imageLayoutVersion")
                    .and_then(|v| v.as_str().map(String::from))
            });
        if version.is_none() {
            found.add(path.display(), "missing or without imageLayoutVersion");
        }
    }

    /// Re-hashes every blob; remembers corrupt ones and the diff_ids of every config.
    fn check_blobs(&self, found: &mut Findings) -> Result<()> {
        for entry in list_dir(&self.blobs_dir())? {
            let path = entry.path();
            let Some(expected) = entry_digest(&entry) else {
                found.add(path.display(), "not a sha256 blob name");
                continue;
            };
            let meta =
                fs::symlink_metadata(&path).map_err(|e| Error::io("failed to stat", &path, e))?;
            if !meta.is_file() {
                found.add(expected, "blob is not a regular file");
                found.corrupt.insert(expected);
                continue;
            }
            let actual = if meta.len() < 4 << 20 {
                let bytes = fs::read(&path).map_err(|e| Error::io("failed to read", &path, e))?;
                let actual = Digest::of(&bytes);
                if actual == expected
                    && let Ok(config) = serde_json::from_slice::<oci::ImageConfiguration>(&bytes)
                {
                    found.diff_ids.extend(
                        config
                            .rootfs()
                            .diff_ids()
                            .iter()
                            .filter_map(|d| d.parse::<Digest>().ok()),
                    );
                }
                actual
            } else {
                let mut file =
                    File::open(&path).map_err(|e| Error::io("failed to open", &path, e))?;
                Digest::of_reader(&mut file).map_err(|e| Error::io("failed to read", &path, e))?
            };
            if actual != expected {
                found.add(
                    expected,
                    format!("blob is corrupt: content hashes to {actual}"),
                );
                found.corrupt.insert(expected);
            }
        }
        Ok(())
    }

    fn check_index(&self, found: &mut Findings) {
        let entries = match self.index_entries() {
            Ok(entries) => entries,
            Err(e) => return found.add(self.index_path().display(), e.to_string()),
        };
        let mut names = HashSet::new();
        for entry in &entries {
            let label = entry_name(entry)
                .map(String::from)
                .unwrap_or_else(|| entry.digest().to_string());
            if let Some(name) = entry_name(entry)
                && !names.insert(name.to_string())
            {
                found.add(
                    format!("index.json entry {name}"),
                    "name appears more than once",
                );
            }
            self.check_descriptor(entry, &format!("index.json entry {label}"), found);
        }
    }

    /// Checks that a descriptor's blob exists, is intact and has the declared size, then
    /// follows manifests and indexes down to configs and layers.
    fn check_descriptor(
        &self,
        descriptor: &oci::Descriptor,
        from: &str,
        found: &mut Findings,
    ) -> Option<Vec<u8>> {
        let digest = match descriptor_digest(descriptor) {
            Ok(digest) => digest,
            Err(e) => {
                found.add(from, e.to_string());
                return None;
            }
        };
        let path = self.blob_path(&digest);
        let Ok(meta) = fs::metadata(&path) else {
            found.add(from, format!("refers to missing blob {digest}"));
            return None;
        };
        if meta.len() != descriptor.size() {
            found.add(
                from,
                format!(
                    "blob {digest} is {} bytes, descriptor says {}",
                    meta.len(),
                    descriptor.size()
                ),
            );
        }
        if found.corrupt.contains(&digest) {
            found.add(from, format!("refers to corrupt blob {digest}"));
            return None;
        }
        let media_type = descriptor.media_type();
        let is_json = matches!(
            media_type,
            oci::MediaType::ImageManifest
                | oci::MediaType::ImageIndex
                | oci::MediaType::ImageConfig
        ) || media_type.to_string().ends_with("+json");
        if !is_json {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        if *media_type == oci::MediaType::ImageIndex
            || media_type.to_string().contains("manifest.list")
        {
            match json::parse::<oci::ImageIndex>(&bytes, || format!("image index {digest}")) {
                Ok(index) => {
                    for child in index.manifests() {
                        if self.has_blob(&descriptor_digest(child).ok()?) {
                            self.check_descriptor(child, &format!("image index {digest}"), found);
                        }
                    }
                }
                Err(e) => found.add(from, e.to_string()),
            }
        } else if *media_type == oci::MediaType::ImageConfig
            || media_type.to_string().contains("container.image")
        {
            if let Err(e) =
                json::parse::<oci::ImageConfiguration>(&bytes, || format!("image config {digest}"))
            {
                found.add(from, e.to_string());
            }
        } else {
            self.check_manifest(&digest, &bytes, found);
        }
        Some(bytes)
    }

    fn check_manifest(&self, digest: &Digest, bytes: &[u8], found: &mut Findings) {
        let from = format!("manifest {digest}");
        let manifest = match json::parse::<oci::ImageManifest>(bytes, || from.clone()) {
            Ok(manifest) => manifest,
            Err(e) => return found.add(&from, e.to_string()),
        };
        let config_bytes = self.check_descriptor(manifest.config(), &from, found);
        for layer in manifest.layers() {
            self.check_descriptor(layer, &from, found);
        }
        let Some(config_bytes) = config_bytes else {
            return;
        };
        if let Ok(config) = serde_json::from_slice::<oci::ImageConfiguration>(&config_bytes)
            && config.rootfs().diff_ids().len() != manifest.layers().len()
        {
            found.add(
                &from,
                format!(
                    "{} layers but the config lists {} diff_ids",
                    manifest.layers().len(),
                    config.rootfs().diff_ids().len()
                ),
            );
        }
    }

    fn check_layers(&self, found: &mut Findings) -> Result<()> {
        // A build step's layer is unpacked as it is made: a build that fails later leaves
        // layers only its cache entries name (gc drops them; the next build reuses them).
        let cached: HashSet<Digest> = self
            .cache_entries()?
            .into_iter()
            .filter_map(|(_, entry)| entry.layer.map(|l| l.diff_id))
            .collect();
        for entry in list_dir(&self.layers_dir())? {
            let path = entry.path();
            match entry_digest(&entry) {
                None => found.add(path.display(), "unpacked layer name is not a diff_id"),
                Some(diff_id) if !found.diff_ids.contains(&diff_id) && !cached.contains(&diff_id) => found.add(
                    path.display(),
                    format!("unpacked layer {diff_id} is not a diff_id of any image config or build cache entry"),
                ),
                Some(_) if !path.is_dir() => found.add(path.display(), "unpacked layer is not a directory"),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn check_containers(&self, found: &mut Findings) -> Result<()> {
        for entry in list_dir(&self.containers_dir())? {
            let state_path = entry.path().join("state.json");
            let state = fs::read(&state_path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<crate::ContainerState>(&bytes)
                        .map_err(|e| e.to_string())
                });
            match state {
                Err(e) => found.add(state_path.display(), e),
                Ok(state) => {
                    if let Some(id) = state.image_id
                        && !self.has_blob(&id)
                    {
                        found.add(
                            format!("container {}", state.name),
                            format!("image config {id} is missing"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
