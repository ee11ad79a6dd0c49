//! Images: a config blob and a manifest blob (image-spec `config.md`, `manifest.md`) built
//! with oci-spec and written as canonical JSON, so the same config and layers always give
//! the same manifest digest; plus naming, lookup and removal over `oci/index.json`.

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use crate::layout::Store;
use crate::refs::{
    self, descriptor_digest, entry_name, index_entry, normalize_name, normalize_ref, oci_digest,
};
use crate::registry::media;
use crate::{Digest, json, oci};

/// An image in the store. `id` is the config digest (as docker shows it).
#[derive(Clone, Debug)]
pub struct Image {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest: oci::ImageManifest,
    pub config: oci::ImageConfiguration,
    /// `name:tag` names, sorted.
    pub names: Vec<String>,
}

impl Image {
    /// Sum of the (compressed) layer sizes plus the config, as stored.
    pub fn size(&self) -> u64 {
        self.manifest
            .layers()
            .iter()
            .map(|layer| layer.size())
            .sum::<u64>()
            + self.manifest.config().size()
    }

    /// The config's diff_ids, bottom layer first.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse())
            .collect()
    }
}

/// A layer blob in the store: its descriptor (compressed digest, size, media type) and
/// the diff_id (sha256 of the uncompressed tar) the image config lists.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    pub descriptor: oci::Descriptor,
    pub diff_id: Digest,
}

/// What `remove_image` did.
#[derive(Clone, Debug, Default)]
pub struct Removal {
    pub untagged: Vec<String>,
    /// Set when the image lost its last index entry (gc frees its blobs).
    pub deleted: Option<Digest>,
}

impl Store {
    /// Writes the config and a manifest over `layers` (bottom first; their blobs must be in
    /// the store) and gives the image `names` (none: kept as an unnamed image).
    pub fn put_image(
        &self,
        config: &oci::ImageConfiguration,
        layers: &[oci::Descriptor],
        names: &[String],
    ) -> Result<Image> {
        if config.rootfs().diff_ids().len() != layers.len() {
            return Err(Error::Invalid {
                what: "image config".into(),
                message: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs().diff_ids().len(),
                    layers.len()
                ),
            });
        }
        self.check_blobs_present(layers)?;
        let layers: Vec<oci::Descriptor> = layers.iter().map(oci_layer).collect();
        let config_bytes = json::to_canonical(config, "image config")?;
        let (config_digest, config_size) = self.put_blob(&config_bytes)?;
        let manifest = oci::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(oci::MediaType::ImageManifest)
            .config(oci::Descriptor::new(
                oci::MediaType::ImageConfig,
                config_size,
                oci_digest(&config_digest),
            ))
            .layers(layers)
            .build()
            .map_err(|e| Error::Invalid {
                what: "image manifest".into(),
                message: e.to_string(),
            })?;
        let manifest_bytes = json::to_canonical(&manifest, "image manifest")?;
        self.put_manifest_raw(&manifest_bytes, names)
    }

    /// Stores a manifest exactly as given (a pulled manifest keeps its bytes and digest) and
    /// names it. Its config and layer blobs must already be in the store.
    pub fn put_manifest_raw(&self, manifest_bytes: &[u8], names: &[String]) -> Result<Image> {
        let manifest: oci::ImageManifest = json::parse(manifest_bytes, || "image manifest".into())?;
        let config_digest = descriptor_digest(manifest.config())?;
        self.read_blob(&config_digest)?;
        self.check_blobs_present(manifest.layers())?;
        let (digest, size) = self.put_blob(manifest_bytes)?;
        let media_type = manifest
            .media_type()
            .clone()
            .unwrap_or(oci::MediaType::ImageManifest);
        let names = names
            .iter()
            .map(|name| normalize_ref(name))
            .collect::<Result<Vec<_>>>()?;
        let names = self.update_index(|entries| {
            if names.is_empty() {
                let present = entries
                    .iter()
                    .any(|e| descriptor_digest(e).ok() == Some(digest));
                if !present {
                    entries.push(index_entry(&digest, size, media_type.clone(), None));
                }
            }
            for name in &names {
                set_name(entries, &digest, size, media_type.clone(), name);
            }
            Ok(names_of(entries, &digest))
        })?;
        self.load_image(&digest, names)
    }

    /// `Error::BlobNotFound` for the first of `layers` whose blob is not in the store.
    fn check_blobs_present(&self, layers: &[oci::Descriptor]) -> Result<()> {
        for layer in layers {
            let digest = descriptor_digest(layer)?;
            if !self.has_blob(&digest) {
                return Err(Error::BlobNotFound(digest));
            }
        }
        Ok(())
    }

    fn load_image(&self, manifest_digest: &Digest, names: Vec<String>) -> Result<Image> {
        let bytes = self.read_blob(manifest_digest)?;
        let manifest: oci::ImageManifest =
            json::parse(&bytes, || format!("manifest {manifest_digest}"))?;
        let id = descriptor_digest(manifest.config())?;
        let config_bytes = self.read_blob(&id)?;
        let config: oci::ImageConfiguration =
            json::parse(&config_bytes, || format!("image config {id}"))?;
        Ok(Image {
            id,
            manifest_digest: *manifest_digest,
            manifest,
            config,
            names,
        })
    }

    /// Every image in index.json (one per manifest), in index order. Entries that are not
    /// image manifests (e.g. nested indexes) are skipped.
    pub fn images(&self) -> Result<Vec<Image>> {
        let mut order = Vec::new();
        let mut names: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for entry in self.index_entries()? {
            if *entry.media_type() == oci::MediaType::ImageIndex {
                continue;
            }
            let digest = descriptor_digest(&entry)?;
            let list = names.entry(digest).or_insert_with(|| {
                order.push(digest);
                Vec::new()
            });
            if let Some(name) = entry_name(&entry) {
                list.push(name.to_string());
            }
        }
        let mut images = Vec::new();
        for digest in order {
            let mut list = names.remove(&digest).unwrap_or_default();
            list.sort();
            match self.load_image(&digest, list.clone()) {
                Ok(image) => images.push(image),
                // One damaged image must not hide the others (nor block `rmi` of them).
                Err(
                    err @ (Error::BlobNotFound(_)
                    | Error::DigestMismatch { .. }
                    | Error::Json { .. }
                    | Error::InvalidDigest(_)),
                ) => {
                    let label = list.first().cloned().unwrap_or_else(|| digest.to_string());
                    tracing::warn!(
                        "image {label} is damaged ({err}): left out; `strata fsck` tells more, \
                         `strata rmi {label}` removes it"
                    );
                }
                Err(err) => return Err(err),
            }
        }
        Ok(images)
    }

    /// Finds an image by `name[:tag]`, full or short image id (`sha256:` optional), or
    /// `sha256:` manifest digest.
    pub fn resolve(&self, reference: &str) -> Result<Image> {
        self.resolve_named(reference).map(|(image, _)| image)
    }

    /// [`resolve`](Self::resolve), and the image's name that `reference` gave (as stored;
    /// `busybox` finds `docker.io/library/busybox:latest`); none when it was an id or digest.
    pub fn resolve_named(&self, reference: &str) -> Result<(Image, Option<String>)> {
        let not_found = || Error::ImageNotFound(reference.to_string());
        if let Ok(name) = normalize_ref(reference) {
            let entries = self.index_entries()?;
            // as written, else as docker equates Docker Hub names (busybox = library/busybox
            // = docker.io/library/busybox)
            let exact = entries
                .iter()
                .find(|e| entry_name(e) == Some(name.as_str()));
            let familiar = || {
                entries.iter().find(|e| {
                    entry_name(e).is_some_and(|n| refs::familiar(n) == refs::familiar(&name))
                })
            };
            if let Some(entry) = exact.or_else(familiar) {
                let digest = descriptor_digest(entry)?;
                let image = self.load_image(&digest, names_of(&entries, &digest))?;
                return Ok((image, entry_name(entry).map(str::to_string)));
            }
        }
        // `repo@sha256:D` of an image the store has under another name: the digest decides.
        let reference = match reference.split_once('@') {
            Some((_, digest)) if normalize_ref(reference).is_ok() => digest,
            _ => reference,
        };
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.is_empty()
            || hex.len() > 64
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(not_found());
        }
        let images = self.images()?;
        if let Some(image) = images.iter().find(|i| i.manifest_digest.hex() == hex) {
            return Ok((image.clone(), None));
        }
        let mut hits: Vec<&Image> = images
            .iter()
            .filter(|i| i.id.hex().starts_with(hex))
            .collect();
        hits.dedup_by_key(|i| i.id);
        match hits.len() {
            0 => Err(not_found()),
            1 => Ok((hits[0].clone(), None)),
            count => Err(Error::AmbiguousImage {
                reference: reference.to_string(),
                count,
            }),
        }
    }

    /// Gives `image` the name `name` (`:latest` added), moving the name if another image had it.
    pub fn tag(&self, image: &Image, name: &str) -> Result<()> {
        let name = normalize_name(name)?;
        self.name_image(image, &name)
    }

    /// Points the normalized `name` at `image`'s manifest.
    fn name_image(&self, image: &Image, name: &str) -> Result<()> {
        let size = self
            .blob_path(&image.manifest_digest)
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        let media_type = image
            .manifest
            .media_type()
            .clone()
            .unwrap_or(oci::MediaType::ImageManifest);
        self.update_index(|entries| {
            set_name(entries, &image.manifest_digest, size, media_type, name);
            Ok(())
        })
    }

    /// Names the manifest `manifest` `repo@digest` too (a push records where it went).
    pub fn add_repo_digest(&self, manifest: &Digest, name: &str) -> Result<()> {
        let name = normalize_ref(name)?;
        let image = self.load_image(manifest, Vec::new())?;
        self.name_image(&image, &name)
    }

    /// Removes the name `name`. An image left without names is gone (gc frees it).
    pub fn untag(&self, name: &str) -> Result<()> {
        let name = normalize_name(name)?;
        let image = self.resolve(&name)?;
        self.check_unused_after(&image, 1)?;
        self.update_index(|entries| {
            entries.retain(|e| entry_name(e) != Some(name.as_str()));
            Ok(())
        })
    }

    /// `rmi`: a name removes that name; an id or digest removes every name of the image.
    pub fn remove_image(&self, reference: &str) -> Result<()> {
        self.remove_image_report(reference, false).map(|_| ())
    }

    /// Like `remove_image`, and says what was untagged and whether the image is gone.
    /// `force`, as docker's `rmi -f`: an image a container was made from loses its names
    /// anyway, and stays, unnamed, for the container.
    pub fn remove_image_report(&self, reference: &str, force: bool) -> Result<Removal> {
        let image = match self.resolve(reference) {
            Ok(image) => image,
            // A name whose blobs are damaged or gone can still be removed.
            Err(
                err @ (Error::DigestMismatch { .. } | Error::BlobNotFound(_) | Error::Json { .. }),
            ) => {
                let Ok(name) = normalize_ref(reference) else {
                    return Err(err);
                };
                let removal = Removal {
                    untagged: vec![name.clone()],
                    deleted: None,
                };
                return self.drop_entries(|e| entry_name(e) == Some(name.as_str()), removal, err);
            }
            // A damaged image with no name (gc names it by its manifest digest): its
            // entries go by that digest.
            Err(err @ Error::ImageNotFound(_)) => {
                let Ok(digest) = reference.parse::<Digest>() else {
                    return Err(err);
                };
                let removal = Removal {
                    untagged: Vec::new(),
                    deleted: Some(digest),
                };
                return self.drop_entries(
                    |e| descriptor_digest(e).ok() == Some(digest),
                    removal,
                    err,
                );
            }
            Err(err) => return Err(err),
        };
        let by_name = normalize_ref(reference).ok().and_then(|name| {
            image
                .names
                .iter()
                .find(|n| **n == name || refs::familiar(n) == refs::familiar(&name))
                .cloned()
        });
        // The image goes when no tag is left: its repo digests (`repo@sha256:..`, recorded
        // by pull and push) do not keep it, as in docker.
        let last = match &by_name {
            None => true,
            Some(name) => !image.names.iter().any(|n| n != name && is_tag(n)),
        };
        let untagged = match &by_name {
            Some(name) if !last => vec![name.clone()],
            Some(name) => {
                let mut all = vec![name.clone()];
                all.extend(image.names.iter().filter(|n| *n != name).cloned());
                all
            }
            None => image.names.clone(),
        };
        let mut used = false;
        if last && let Err(err) = self.check_unused_after(&image, image.names.len()) {
            if !force {
                return Err(err);
            }
            used = true;
        }
        let manifest = image.manifest_digest;
        // The same config under another manifest (a gzip push pulled back) is the same
        // image to docker: it is not deleted while that is here.
        let elsewhere = last
            && !used
            && self
                .images()?
                .iter()
                .any(|other| other.id == image.id && other.manifest_digest != manifest);
        self.update_index(|entries| {
            match &by_name {
                Some(name) if !last => entries.retain(|e| entry_name(e) != Some(name.as_str())),
                _ => entries.retain(|e| descriptor_digest(e).ok() != Some(manifest)),
            }
            Ok(())
        })?;
        let deleted = last && !used && !elsewhere;
        Ok(Removal {
            untagged,
            deleted: deleted.then_some(image.id),
        })
    }

    /// Drops the index entries `doomed` picks, for an image that cannot be read: `removal`
    /// if there were any, else `err` (why it could not be found).
    fn drop_entries(
        &self,
        doomed: impl Fn(&oci::Descriptor) -> bool,
        removal: Removal,
        err: Error,
    ) -> Result<Removal> {
        let removed = self.update_index(|entries| {
            let before = entries.len();
            entries.retain(|e| !doomed(e));
            Ok(before != entries.len())
        })?;
        if removed { Ok(removal) } else { Err(err) }
    }

    /// `gc --dangling`, docker's `image prune`: drops the images without a tag (unnamed, or
    /// named only by repo digest) that no container uses; returns their ids. Their blobs
    /// are then garbage.
    pub fn prune_dangling(&self) -> Result<Vec<Digest>> {
        let entries = self.index_entries()?;
        let tagged: HashSet<Digest> = entries
            .iter()
            .filter(|e| entry_name(e).is_some_and(is_tag))
            .filter_map(|e| descriptor_digest(e).ok())
            .collect();
        let before: HashSet<Digest> = entries
            .iter()
            .filter_map(|e| descriptor_digest(e).ok())
            .filter(|d| !tagged.contains(d))
            .collect();
        if before.is_empty() {
            return Ok(Vec::new());
        }
        // update_index puts back the images containers were made from
        let after: HashSet<Digest> = self
            .update_index(|entries| {
                entries.retain(|e| descriptor_digest(e).is_ok_and(|d| tagged.contains(&d)));
                Ok(())
            })
            .and_then(|()| {
                Ok(self
                    .index_entries()?
                    .iter()
                    .filter_map(|e| descriptor_digest(e).ok())
                    .collect())
            })?;
        let mut pruned = Vec::new();
        for manifest in before.difference(&after) {
            let config = self
                .read_blob(manifest)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<oci::ImageManifest>(&bytes).ok())
                .and_then(|m| descriptor_digest(m.config()).ok());
            pruned.push(config.unwrap_or(*manifest));
        }
        pruned.sort();
        Ok(pruned)
    }

    /// Refuses when removing `removed` names would leave `image` unnamed while a container
    /// still runs from it.
    fn check_unused_after(&self, image: &Image, removed: usize) -> Result<()> {
        if image.names.len() > removed {
            return Ok(());
        }
        for container in self.containers()? {
            if container.state.image_id == Some(image.id) {
                return Err(Error::ImageInUse {
                    image: image
                        .names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| image.id.short()),
                    container: container.id[..12].to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A tag (`repo:tag`), as opposed to a repo digest (`repo@sha256:..`).
fn is_tag(name: &str) -> bool {
    !name.contains('@')
}

/// The names the index `entries` give the manifest `digest`, sorted.
fn names_of(entries: &[oci::Descriptor], digest: &Digest) -> Vec<String> {
    let mut names: Vec<String> = entries
        .iter()
        .filter(|e| descriptor_digest(e).ok() == Some(*digest))
        .filter_map(|e| entry_name(e).map(String::from))
        .collect();
    names.sort();
    names
}

/// Points `name` at `digest`: drops the entry that had the name and an unnamed entry of
/// the same manifest, then adds the named entry.
fn set_name(
    entries: &mut Vec<oci::Descriptor>,
    digest: &Digest,
    size: u64,
    media_type: oci::MediaType,
    name: &str,
) {
    let same_name =
        |existing: &str| existing == name || refs::familiar(existing) == refs::familiar(name);
    // The images this name moves away from: one left without a name stays listed, unnamed
    // (docker's dangling `<none>` image, after a rebuilt or re-pulled tag), until `rmi ID`
    // or `gc --dangling`.
    let left: Vec<oci::Descriptor> = entries
        .iter()
        .filter(|e| entry_name(e).is_some_and(same_name))
        .filter(|e| descriptor_digest(e).ok() != Some(*digest))
        .cloned()
        .collect();
    entries.retain(|e| {
        let same_manifest = descriptor_digest(e).ok() == Some(*digest);
        match entry_name(e) {
            // one name per image however spelled: busybox:latest replaces
            // docker.io/library/busybox:latest, as docker treats them as one
            Some(existing) => existing != name && refs::familiar(existing) != refs::familiar(name),
            None => !same_manifest,
        }
    });
    for mut old in left {
        let old_digest = descriptor_digest(&old).ok();
        if !entries
            .iter()
            .any(|e| descriptor_digest(e).ok() == old_digest)
        {
            old.set_annotations(None);
            entries.push(old);
        }
    }
    entries.push(refs::index_entry(digest, size, media_type, Some(name)));
}

/// A layer as an OCI manifest lists it: docker's media types for the same bytes become
/// OCI's (an image built on a pulled docker v2s2 base is not a mix of the two; BuildKit
/// converts them too).
fn oci_layer(layer: &oci::Descriptor) -> oci::Descriptor {
    let oci_type = match layer.media_type().to_string().as_str() {
        media::DOCKER_LAYER_GZIP => oci::MediaType::ImageLayerGzip,
        media::DOCKER_LAYER_TAR => oci::MediaType::ImageLayer,
        media::DOCKER_LAYER_ZSTD => oci::MediaType::ImageLayerZstd,
        _ => return layer.clone(),
    };
    let mut layer = layer.clone();
    layer.set_media_type(oci_type);
    layer
}
