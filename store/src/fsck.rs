//! Consistency check: re-hash every blob, follow index -> manifest -> config and layers,
//! and check that unpacked layers, containers and cache entries make sense.
//!
//! Leftovers in `tmp/`, unreferenced blobs and unpacked layers are not problems: a crash
//! may leave them and gc sweeps them. Everything a reader could trip over is.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};

use crate::error::{Error, Result};
use crate::gc::remove_any;
use crate::layout::{Store, entry_digest, list_dir};
use crate::refs::{self, descriptor_digest, entry_name};
use crate::registry::media;
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

/// What `fsck --repair` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Repair {
    /// Corrupt blobs it removed.
    pub removed: Vec<Digest>,
    /// When index.json was missing (or did not parse): how many images the rebuilt one lists.
    pub reindexed: Option<usize>,
    /// Where an index.json that did not parse was moved.
    pub damaged_index: Option<std::path::PathBuf>,
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
        // Two names of one image reach the same damaged manifest: said once.
        let mut seen = HashSet::new();
        found
            .problems
            .retain(|p| seen.insert((p.subject.clone(), p.message.clone())));
        Ok(found.problems)
    }

    /// Mends what can be mended without guessing: removes corrupt blobs (a pull or a build
    /// fetches or makes them again; a name whose blob goes stays, damaged, for `rmi`) and
    /// rebuilds a missing index.json from the image manifests among the blobs, unnamed
    /// (`strata tag ID NAME` names them again). Under the exclusive lock, as gc.
    pub fn repair(&self) -> Result<Repair> {
        self.exclusively(|| self.repair_locked())
    }

    fn repair_locked(&self) -> Result<Repair> {
        let mut found = Findings::default();
        self.check_blobs(&mut found)?;
        let mut repair = Repair::default();
        let mut corrupt: Vec<Digest> = found.corrupt.into_iter().collect();
        corrupt.sort();
        for digest in corrupt {
            let path = self.blob_path(&digest);
            // only a regular file whose content is wrong: anything else (a symlink a user
            // made) may hold good data, and stays for them to look at
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let doomed = self.tmp_path("corrupt-blob");
            fs::rename(&path, &doomed).map_err(|e| Error::io("failed to move away", &path, e))?;
            remove_any(&doomed)?;
            repair.removed.push(digest);
        }
        // An index that does not parse is kept beside, for whoever wants its names back.
        let index = self.index_path();
        if index.exists() && matches!(self.index_entries(), Err(Error::Json { .. })) {
            let aside = index.with_file_name(format!("index.json.damaged-{}", crate::time::now()));
            fs::rename(&index, &aside).map_err(|e| Error::io("failed to move aside", &index, e))?;
            repair.damaged_index = Some(aside);
        }
        if !index.exists() {
            let entries = self.manifests_on_disk()?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": entries,
            });
            let _guard = self.refs_lock()?;
            self.write_atomic(
                &self.index_path(),
                &json::to_canonical(&index, "index.json")?,
            )?;
            repair.reindexed = Some(entries.len());
        }
        Ok(repair)
    }

    /// Unnamed index entries for the image manifests among the blobs whose config is
    /// there too, oldest first.
    fn manifests_on_disk(&self) -> Result<Vec<oci::Descriptor>> {
        let mut found = Vec::new();
        for entry in list_dir(&self.blobs_dir())? {
            let Some(digest) = entry_digest(&entry) else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.len() > 4 << 20 {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let media_type = value.get("mediaType").and_then(|m| m.as_str());
            let config = value.get("config");
            let config_type = config
                .and_then(|c| c.get("mediaType"))
                .and_then(|m| m.as_str());
            let config_digest = config
                .and_then(|c| c.get("digest"))
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse::<Digest>().ok());
            let is_image = matches!(
                media_type,
                None | Some(media::OCI_MANIFEST) | Some(media::DOCKER_MANIFEST)
            ) && matches!(
                config_type,
                Some(media::OCI_CONFIG) | Some(media::DOCKER_CONFIG)
            ) && value.get("layers").is_some_and(|l| l.is_array());
            if !is_image || !config_digest.is_some_and(|c| self.has_blob(&c)) {
                continue;
            }
            let media_type = oci::MediaType::from(media_type.unwrap_or(media::OCI_MANIFEST));
            let modified = meta.modified().ok();
            found.push((
                modified,
                refs::index_entry(&digest, meta.len(), media_type, None),
            ));
        }
        found.sort_by_key(|(modified, _)| *modified);
        Ok(found.into_iter().map(|(_, entry)| entry).collect())
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
        // An unpacked layer no config or cache entry names is garbage, as an unreferenced
        // blob is: a build killed between unpacking a step's layer and recording it leaves
        // one, and gc removes it.
        for entry in list_dir(&self.layers_dir())? {
            let path = entry.path();
            match entry_digest(&entry) {
                None => found.add(path.display(), "unpacked layer name is not a diff_id"),
                Some(_) if !path.is_dir() => {
                    found.add(path.display(), "unpacked layer is not a directory")
                }
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
