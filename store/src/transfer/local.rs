//! Images on local disk: one in the store, in an OCI image layout directory
//! (image-spec `image-layout.md`: `oci-layout`, `index.json`, `blobs/sha256/<hex>`), or in
//! an OCI archive (a tar of such a layout, extracted hostile-safe into the store's `tmp/`).
//! All three end up as a `LocalImage`: raw manifest bytes plus a directory of blob files,
//! which push streams from and which `copy_into_store` verifies blob by blob.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use super::{Descriptor, Location, ManifestDoc, Platform, TransferOptions, select_platform};
use crate::Digest;
use crate::blob::{BlobReader, blob_error};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::layout::{OCI_LAYOUT, Store, replace_file};
use crate::refs::{CONTAINERD_NAME, REF_NAME};
use crate::registry::media;

/// An image whose blobs are files in `blobs_dir` (named by hex digest).
pub struct LocalImage {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub manifest_digest: Digest,
    pub doc: ManifestDoc,
    pub blobs_dir: PathBuf,
    /// The name the source gives the image, if any.
    pub name: Option<String>,
    _extracted: Option<TmpDir>,
}

/// A directory removed on drop.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl LocalImage {
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir.join(digest.hex())
    }

    /// An image made of `manifest` over blobs in `blobs_dir` (the build cache export).
    pub(crate) fn from_parts(
        manifest: Vec<u8>,
        blobs_dir: PathBuf,
        name: Option<String>,
    ) -> Result<LocalImage> {
        let manifest_digest = Digest::of(&manifest);
        LocalImage::with_digest(manifest, manifest_digest, blobs_dir, name)
    }

    /// `from_parts` for a manifest whose digest is already known.
    pub(super) fn with_digest(
        manifest: Vec<u8>,
        manifest_digest: Digest,
        blobs_dir: PathBuf,
        name: Option<String>,
    ) -> Result<LocalImage> {
        let doc = ManifestDoc::parse(&manifest, &format!("manifest {manifest_digest}"))?;
        let media_type = media::sniff(&manifest).unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        Ok(LocalImage {
            manifest,
            media_type,
            manifest_digest,
            doc,
            blobs_dir,
            name,
            _extracted: None,
        })
    }

    /// An image in the store, by name, id or manifest digest.
    pub fn from_store(store: &Store, reference: &str) -> Result<LocalImage> {
        let image = store.resolve(reference)?;
        LocalImage::from_store_image(store, &image, Some(reference))
    }

    pub fn from_store_image(
        store: &Store,
        image: &Image,
        reference: Option<&str>,
    ) -> Result<LocalImage> {
        let manifest = store.read_blob(&image.manifest_digest)?;
        let name = reference
            .filter(|r| {
                image
                    .names
                    .iter()
                    .any(|n| n == r || n.strip_suffix(":latest") == Some(r))
            })
            .map(str::to_string)
            .or_else(|| image.names.first().cloned());
        LocalImage::with_digest(manifest, image.manifest_digest, store.blobs_dir(), name)
    }

    /// An image in an OCI layout or archive. `platform` picks from a multi-platform index.
    pub fn open(store: &Store, location: &Location, platform: &Platform) -> Result<LocalImage> {
        match location {
            Location::OciDir { dir, tag } => open_layout(dir, tag.as_deref(), platform, None),
            Location::OciArchive { file, tag } => {
                let dir = TmpDir(store.tmp_dir_create("oci-archive")?);
                extract_archive(file, &dir.0)?;
                let path = dir.0.clone();
                open_layout(&path, tag.as_deref(), platform, Some(dir))
            }
            Location::Registry(r) => Err(Error::Distribution {
                what: r.to_string(),
                message: "a registry reference is not a local image".into(),
            }),
        }
    }
}

pub(super) fn read_verified(path: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| Error::io("failed to read", path, e))?;
    digest.verify(&bytes)?;
    Ok(bytes)
}

fn open_layout(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
    extracted: Option<TmpDir>,
) -> Result<LocalImage> {
    let index_path = dir.join("index.json");
    let index_bytes = fs::read(&index_path)
        .map_err(|e| Error::io("failed to read OCI layout index", &index_path, e))?;
    let index = ManifestDoc::parse(&index_bytes, &index_path.display().to_string())?;
    let what = match tag {
        Some(t) => format!("{}:{t}", dir.display()),
        None => dir.display().to_string(),
    };
    fn named(d: &Descriptor) -> Option<&str> {
        d.annotations.get(REF_NAME).map(String::as_str)
    }
    let entry = match tag {
        Some(tag) => index.manifests.iter().find(|d| {
            named(d) == Some(tag)
                || d.annotations.get(CONTAINERD_NAME).map(String::as_str) == Some(tag)
        }),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => None,
    };
    let Some(entry) = entry.cloned() else {
        let names: Vec<&str> = index.manifests.iter().filter_map(named).collect();
        let message = match tag {
            Some(_) => format!("no image with that tag (tags: {})", names.join(", ")),
            None => format!(
                "{} images in the layout: name one (tags: {})",
                index.manifests.len(),
                names.join(", ")
            ),
        };
        return Err(Error::Distribution { what, message });
    };
    let blobs_dir = dir.join("blobs/sha256");
    let name = entry
        .annotations
        .get(CONTAINERD_NAME)
        .or_else(|| entry.annotations.get(REF_NAME))
        .cloned();
    let mut descriptor = entry;
    let mut bytes = read_verified(&blobs_dir.join(descriptor.digest.hex()), &descriptor.digest)?;
    let mut media_type = media::sniff(&bytes).unwrap_or_else(|| descriptor.media_type.clone());
    if media::is_index(&media_type) {
        let nested = ManifestDoc::parse(&bytes, &what)?;
        descriptor = select_platform(&nested, platform, &what)?;
        bytes = read_verified(&blobs_dir.join(descriptor.digest.hex()), &descriptor.digest)?;
        media_type = media::sniff(&bytes).unwrap_or_else(|| descriptor.media_type.clone());
    }
    let doc = ManifestDoc::parse(&bytes, &what)?;
    if doc.config.is_none() {
        return Err(Error::Distribution {
            what,
            message: format!("{media_type} is not an image manifest"),
        });
    }
    Ok(LocalImage {
        manifest: bytes,
        media_type,
        manifest_digest: descriptor.digest,
        doc,
        blobs_dir,
        name,
        _extracted: extracted,
    })
}

/// Extracts an OCI archive: only regular files and directories, only relative paths without
/// `..`, nothing followed through symlinks (none are created).
fn extract_archive(file: &Path, dir: &Path) -> Result<()> {
    let input = File::open(file).map_err(|e| Error::io("failed to open archive", file, e))?;
    let mut archive = tar::Archive::new(io::BufReader::new(input));
    let bad = |message: String| Error::Distribution {
        what: file.display().to_string(),
        message,
    };
    let entries = archive
        .entries()
        .map_err(|e| Error::io("failed to read archive", file, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::io("failed to read archive", file, e))?;
        let path = entry
            .path()
            .map_err(|e| Error::io("failed to read archive", file, e))?
            .into_owned();
        let mut target = dir.to_path_buf();
        for component in path.components() {
            match component {
                Component::Normal(part) => target.push(part),
                Component::CurDir => {}
                _ => {
                    return Err(bad(format!(
                        "entry {:?} escapes the archive",
                        path.display().to_string()
                    )));
                }
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::create_dir_all(&target).map_err(|e| Error::io("failed to create", &target, e))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io("failed to create", parent, e))?;
            }
            let mut out =
                File::create_new(&target).map_err(|e| Error::io("failed to create", &target, e))?;
            io::copy(&mut entry, &mut out)
                .map_err(|e| Error::io("failed to extract", &target, e))?;
        }
        // Links, devices and the like have no place in an OCI archive: skipped.
    }
    Ok(())
}

/// Copies an image's blobs into the store (each verified by `commit`), skipping those
/// already there, then stores its manifest bytes under `names`.
pub(crate) fn copy_into_store(
    store: &Store,
    image: &LocalImage,
    names: &[String],
    opts: &TransferOptions<'_>,
) -> Result<Image> {
    image.doc.check_layers(&image.manifest_digest.to_string())?;
    for blob in image.doc.blobs() {
        if store.has_blob(&blob.digest) {
            opts.progress.end(&blob.digest, "exists");
            continue;
        }
        opts.progress.begin(&blob.digest, blob.size, "copy");
        store.put_blob_file(&image.blob_path(&blob.digest), &blob.digest)?;
        opts.progress.end(&blob.digest, "done");
    }
    store.put_manifest_raw(&image.manifest, names)
}

/// Writes `image` into the OCI layout `dir` (created if needed), tagged `tag`. Blobs are
/// copied (not linked: the layout must not share files with the store), checked against
/// their digests on the way, through a tmp name.
pub fn write_oci_dir(image: &LocalImage, dir: &Path, tag: Option<&str>) -> Result<Digest> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| Error::io("failed to create", &blobs, e))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_file_atomic(&layout, OCI_LAYOUT)?;
    }
    for blob in image.doc.blobs() {
        let dest = blobs.join(blob.digest.hex());
        if dest.exists() {
            continue;
        }
        let src = image.blob_path(&blob.digest);
        let tmp = blobs.join(format!(".tmp-{}-{}", std::process::id(), blob.digest.hex()));
        let _ = fs::remove_file(&tmp);
        let mut reader = BlobReader::open(&src, &blob.digest)?;
        let mut copy = || -> io::Result<()> {
            let mut out = File::create_new(&tmp)?;
            io::copy(&mut reader, &mut out)?;
            out.sync_all()
        };
        if let Err(err) = copy() {
            let _ = fs::remove_file(&tmp);
            return Err(blob_error(err, |e| {
                Error::io("failed to copy blob", &src, e)
            }));
        }
        fs::rename(&tmp, &dest).map_err(|e| Error::io("failed to rename into place", &dest, e))?;
    }
    write_file_atomic(&blobs.join(image.manifest_digest.hex()), &image.manifest)?;
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Distribution {
            what: index_path.display().to_string(),
            message: format!("invalid JSON: {e}"),
        })?,
        Err(_) => serde_json::json!({"schemaVersion": 2, "manifests": []}),
    };
    let mut entry = serde_json::json!({
        "mediaType": image.media_type,
        "digest": image.manifest_digest.to_string(),
        "size": image.manifest.len(),
    });
    if let Some(tag) = tag {
        entry["annotations"] = serde_json::json!({ REF_NAME: tag });
    }
    let manifests = index.get_mut("manifests").and_then(|m| m.as_array_mut());
    let Some(manifests) = manifests else {
        return Err(Error::Distribution {
            what: index_path.display().to_string(),
            message: "no manifests array".into(),
        });
    };
    manifests.retain(|m| match tag {
        Some(tag) => {
            m.get("annotations")
                .and_then(|a| a.get(REF_NAME))
                .and_then(|v| v.as_str())
                != Some(tag)
        }
        None => m.get("digest") != entry.get("digest"),
    });
    manifests.push(entry);
    let bytes = serde_json::to_vec(&index).unwrap_or_default();
    write_file_atomic(&index_path, &bytes)?;
    Ok(image.manifest_digest)
}

/// `bytes` as the new content of `path`, atomically.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, 0o666, |file| {
        file.write_all(bytes)
            .map_err(|e| Error::io("failed to write", path, e))
    })
}
