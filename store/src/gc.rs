//! Garbage collection: mark what is reachable, sweep the rest, under the exclusive lock.
//!
//! Roots: every `index.json` entry (manifests, and the manifests of nested indexes), the
//! image of every container (its config, its unpacked layers, and any manifest still on
//! disk over that config, so `commit` keeps working after `rmi`), and layer blobs named
//! by build cache entries. Swept: unreachable blobs, unpacked layers no reachable config
//! lists, and everything in `tmp/` (no one else can be writing there: we hold the lock
//! exclusively). Containers themselves are never touched.

use std::collections::HashSet;
use std::fs;

use crate::error::{Error, Result};
use crate::layout::{Store, disk_size, entry_digest, list_dir};
use crate::refs::{descriptor_digest, entry_name};
use crate::{Digest, json, oci};

/// What gc removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub freed_bytes: u64,
    pub blobs: usize,
    pub layers: usize,
    pub tmp: usize,
}

/// Blobs and unpacked layers that must stay.
#[derive(Debug, Default)]
pub(crate) struct Reachable {
    pub blobs: HashSet<Digest>,
    pub diff_ids: HashSet<Digest>,
}

impl Store {
    /// Frees everything unreachable. Waits for other users of the store to finish first.
    pub fn gc(&self) -> Result<GcReport> {
        self.exclusively(|| self.gc_locked())
    }

    fn gc_locked(&self) -> Result<GcReport> {
        let keep = self.reachable()?;
        let mut report = GcReport::default();

        for entry in list_dir(&self.blobs_dir())? {
            if !entry_digest(&entry).is_some_and(|d| keep.blobs.contains(&d)) {
                report.freed_bytes += disk_size(&entry.path());
                remove_any(&entry.path())?;
                report.blobs += 1;
            }
        }

        for entry in list_dir(&self.layers_dir())? {
            if !entry_digest(&entry).is_some_and(|d| keep.diff_ids.contains(&d)) {
                // Move out first, so a crash mid-delete never leaves a half layer in layers/.
                let doomed = self.tmp_path("gc-layer");
                report.freed_bytes += disk_size(&entry.path());
                fs::rename(entry.path(), &doomed)
                    .map_err(|e| Error::io("failed to move away", entry.path(), e))?;
                remove_any(&doomed)?;
                report.layers += 1;
            }
        }

        for entry in list_dir(&self.tmp_dir())? {
            report.freed_bytes += disk_size(&entry.path());
            remove_any(&entry.path())?;
            report.tmp += 1;
        }
        Ok(report)
    }

    /// Marks everything reachable from the roots. Fails (so gc deletes nothing) when a
    /// root cannot be read: deleting around a damaged index would lose data.
    pub(crate) fn reachable(&self) -> Result<Reachable> {
        let mut keep = Reachable::default();
        for entry in self.index_entries()? {
            self.mark_descriptor(&entry, &mut keep).map_err(|err| {
                let label = entry_name(&entry)
                    .map(String::from)
                    .unwrap_or_else(|| entry.digest().to_string());
                Error::Invalid {
                    what: format!("image {label}"),
                    message: format!(
                        "{err}; gc deletes nothing while an image is damaged \
                         (`strata rmi {label}` removes it, `strata fsck` tells more)"
                    ),
                }
            })?;
        }
        let mut orphan_configs = HashSet::new();
        for container in self.containers_strict()? {
            if let Some(id) = container.state.image_id
                && !keep.blobs.contains(&id)
                && self.has_blob(&id)
            {
                self.mark_config(&id, &mut keep)?;
                orphan_configs.insert(id);
            }
        }
        if !orphan_configs.is_empty() {
            self.mark_manifests_of(&orphan_configs, &mut keep)?;
        }
        for (_, entry) in self.cache_entries()? {
            if let Some(layer) = entry.layer {
                let digest = descriptor_digest(&layer.descriptor)?;
                if self.has_blob(&digest) {
                    keep.blobs.insert(digest);
                }
            }
        }
        Ok(keep)
    }

    fn mark_descriptor(&self, descriptor: &oci::Descriptor, keep: &mut Reachable) -> Result<()> {
        let digest = descriptor_digest(descriptor)?;
        if !keep.blobs.insert(digest) {
            return Ok(());
        }
        let bytes = self.read_blob(&digest)?;
        if *descriptor.media_type() == oci::MediaType::ImageIndex {
            let index: oci::ImageIndex = json::parse(&bytes, || format!("image index {digest}"))?;
            for child in index.manifests() {
                if self.has_blob(&descriptor_digest(child)?) {
                    self.mark_descriptor(child, keep)?;
                }
            }
            return Ok(());
        }
        let manifest: oci::ImageManifest = json::parse(&bytes, || format!("manifest {digest}"))?;
        self.mark_manifest(&manifest, keep)
    }

    fn mark_manifest(&self, manifest: &oci::ImageManifest, keep: &mut Reachable) -> Result<()> {
        let config = descriptor_digest(manifest.config())?;
        self.mark_config(&config, keep)?;
        for layer in manifest.layers() {
            keep.blobs.insert(descriptor_digest(layer)?);
        }
        Ok(())
    }

    fn mark_config(&self, config: &Digest, keep: &mut Reachable) -> Result<()> {
        keep.blobs.insert(*config);
        let bytes = self.read_blob(config)?;
        let parsed: oci::ImageConfiguration =
            json::parse(&bytes, || format!("image config {config}"))?;
        for diff_id in parsed.rootfs().diff_ids() {
            keep.diff_ids.insert(diff_id.parse()?);
        }
        Ok(())
    }

    /// Keeps manifests (and their layers) whose config is one of `configs`.
    fn mark_manifests_of(&self, configs: &HashSet<Digest>, keep: &mut Reachable) -> Result<()> {
        for entry in list_dir(&self.blobs_dir())? {
            let small = entry.metadata().is_ok_and(|m| m.len() < 4 << 20);
            let Some(digest) = entry_digest(&entry) else {
                continue;
            };
            if !small || keep.blobs.contains(&digest) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&digest) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<oci::ImageManifest>(&bytes) else {
                continue;
            };
            if descriptor_digest(manifest.config()).is_ok_and(|c| configs.contains(&c)) {
                keep.blobs.insert(digest);
                self.mark_manifest(&manifest, keep)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn remove_any(path: &std::path::Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("failed to stat", path, e))?;
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| Error::io("failed to remove", path, e))
}
