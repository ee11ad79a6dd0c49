//! Image archives: `save` writes an OCI archive (a tar of an OCI image layout: `oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`) that `skopeo inspect oci-archive:FILE` and
//! `podman load` read, plus a docker-archive `manifest.json` naming the same blob files so
//! `docker load` (which decompresses gzip and, since docker 23, zstd layers) reads it too.
//! Layers are written as they are stored, not recompressed. `load` reads both forms,
//! including the older docker-archive layout (`<id>/layer.tar`, `<config>.json`), and
//! verifies every blob before it enters the store.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use crate::Digest;
use crate::blob::{BlobReader, blob_error};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::layer::Compression;
use crate::layout::{OCI_LAYOUT, Store, replace_file};
use crate::refs::{CONTAINERD_NAME, REF_NAME};
use crate::transfer::{Descriptor, LocalImage, ManifestDoc, Platform, select_platform};
use crate::{oci, refs};

/// index.json, manifest.json and friends are small; anything bigger is not one of them.
const MAX_METADATA: u64 = 16 << 20;

/// Writes `images` (each with the names to give it) as an OCI archive at `out`, atomically;
/// with `docker_manifest` also a docker-archive `manifest.json`.
pub fn write_archive(
    images: &[(&LocalImage, Vec<String>)],
    out: &Path,
    docker_manifest: bool,
) -> Result<()> {
    replace_file(out, 0o666, |file| {
        write_archive_to(images, file, out, docker_manifest)
    })
}

/// Writes the archive into `file`; `path` (where it will be) names it in errors.
fn write_archive_to(
    images: &[(&LocalImage, Vec<String>)],
    file: &mut File,
    path: &Path,
    docker_manifest: bool,
) -> Result<()> {
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let io_err = |e: io::Error| Error::io("failed to write archive", path, e);
    let mut index = Vec::new();
    let mut docker = Vec::new();
    let mut blobs: BTreeMap<Digest, std::path::PathBuf> = BTreeMap::new();
    for (image, names) in images {
        let entry = |name: Option<&str>| {
            let mut e = serde_json::json!({
                "mediaType": image.media_type,
                "digest": image.manifest_digest.to_string(),
                "size": image.manifest.len(),
            });
            if let Some(name) = name {
                e["annotations"] = serde_json::json!({ REF_NAME: name, CONTAINERD_NAME: name });
            }
            e
        };
        if names.is_empty() {
            index.push(entry(None));
        }
        for name in names {
            index.push(entry(Some(name)));
        }
        let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let config = image
            .doc
            .config
            .as_ref()
            .map(|c| blob_name(&c.digest))
            .unwrap_or_default();
        docker.push(serde_json::json!({
            "Config": config,
            "RepoTags": names,
            "Layers": image.doc.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
        }));
        for blob in image.doc.blobs() {
            blobs.insert(blob.digest, image.blob_path(&blob.digest));
        }
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": crate::registry::media::OCI_INDEX, "manifests": index});
    append_bytes(&mut tar, "oci-layout", OCI_LAYOUT).map_err(io_err)?;
    append_bytes(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).unwrap_or_default(),
    )
    .map_err(io_err)?;
    if docker_manifest {
        append_bytes(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(&docker).unwrap_or_default(),
        )
        .map_err(io_err)?;
    }
    append_dir(&mut tar, "blobs/").map_err(io_err)?;
    append_dir(&mut tar, "blobs/sha256/").map_err(io_err)?;
    for (image, _) in images {
        append_bytes(
            &mut tar,
            &format!("blobs/sha256/{}", image.manifest_digest.hex()),
            &image.manifest,
        )
        .map_err(io_err)?;
        blobs.remove(&image.manifest_digest);
    }
    for (digest, source) in blobs {
        let size = fs::metadata(&source)
            .map_err(|e| Error::io("failed to stat blob", &source, e))?
            .len();
        let mut header = header(size, tar::EntryType::Regular);
        // Checked as it is copied: a corrupt blob fails the archive, naming its digest.
        let blob = BlobReader::open(&source, &digest)?;
        tar.append_data(&mut header, format!("blobs/sha256/{}", digest.hex()), blob)
            .map_err(|e| blob_error(e, io_err))?;
    }
    let mut writer = tar.into_inner().map_err(io_err)?;
    writer.flush().map_err(io_err)
}

fn header(size: u64, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut header = header(bytes.len() as u64, tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut header = header(0, tar::EntryType::Directory);
    tar.append_data(&mut header, name, io::empty())
}

/// `strata save`: the named store images as one archive (OCI layout + docker manifest.json).
pub fn save(store: &Store, references: &[String], out: &Path) -> Result<()> {
    let images = save_images(store, references)?;
    let borrowed: Vec<(&LocalImage, Vec<String>)> =
        images.iter().map(|(l, n)| (l, n.clone())).collect();
    write_archive(&borrowed, out, true)
}

/// `strata save` to an open file (stdout); `name` says what it is in errors.
pub fn save_into(store: &Store, references: &[String], file: &mut File, name: &Path) -> Result<()> {
    let images = save_images(store, references)?;
    let borrowed: Vec<(&LocalImage, Vec<String>)> =
        images.iter().map(|(l, n)| (l, n.clone())).collect();
    write_archive_to(&borrowed, file, name, true)
}

/// The images `save` writes, each with the names it gets in the archive.
fn save_images(store: &Store, references: &[String]) -> Result<Vec<(LocalImage, Vec<String>)>> {
    let mut images: Vec<(LocalImage, Vec<String>)> = Vec::new();
    for reference in references {
        let (image, name) = store.resolve_named(reference)?;
        // Named as asked; saved by id or digest it gets no name, as `docker save ID` writes
        // no RepoTags. (A docker archive's RepoTags are tags: a name@digest is left out.)
        let name = name.filter(|name| !name.contains('@'));
        // one entry per image, with every name it was asked by, as docker's
        if let Some((_, names)) = images
            .iter_mut()
            .find(|(local, _)| local.manifest_digest == image.manifest_digest)
        {
            names.extend(name.filter(|name| !names.contains(name)));
            continue;
        }
        let local = LocalImage::from_store_image(store, &image, Some(reference))?;
        images.push((local, name.into_iter().collect()));
    }
    Ok(images)
}

/// `strata load`: reads an OCI archive or a docker archive into the store.
pub fn load(store: &Store, input: &Path) -> Result<Vec<Image>> {
    let file = File::open(input).map_err(|e| Error::io("failed to open archive", input, e))?;
    load_from(store, file, input)
}

/// `strata load` from a stream (stdin), read once from start to end; `input` names it in
/// errors.
pub fn load_from(store: &Store, file: impl Read, input: &Path) -> Result<Vec<Image>> {
    let read_err = |e: io::Error| Error::io("failed to read archive", input, e);
    let bad = |message: String| Error::Distribution {
        what: input.display().to_string(),
        message,
    };
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let mut metadata: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Blob files by their path in the archive (docker archives name layers by path).
    let mut by_path: BTreeMap<String, Digest> = BTreeMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(read_err)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if matches!(
            path.as_str(),
            "index.json" | "manifest.json" | "oci-layout" | "repositories"
        ) {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_METADATA)
                .read_to_end(&mut bytes)
                .map_err(read_err)?;
            metadata.insert(path, bytes);
            continue;
        }
        let expected = path
            .strip_prefix("blobs/sha256/")
            .and_then(|hex| Digest::from_hex(hex).ok());
        if let Some(digest) = expected
            && store.has_blob(&digest)
        {
            by_path.insert(path, digest);
            continue;
        }
        let mut writer = store.blob_writer()?;
        io::copy(&mut entry, &mut writer).map_err(read_err)?;
        let (digest, _) = writer.commit(expected.as_ref())?;
        by_path.insert(path, digest);
    }
    let mut images = Vec::new();
    if let Some(index) = metadata.get("index.json") {
        let index = ManifestDoc::parse(index, &format!("{} index.json", input.display()))?;
        for entry in &index.manifests {
            let name = entry
                .annotations
                .get(CONTAINERD_NAME)
                .or_else(|| entry.annotations.get(REF_NAME));
            let names: Vec<String> = name.into_iter().cloned().collect();
            let image = load_manifest(store, entry, &names).map_err(|e| missing(e, input))?;
            images.push(as_given(image, &names));
        }
    } else if let Some(manifest) = metadata.get("manifest.json") {
        let entries: Vec<DockerEntry> = serde_json::from_slice(manifest)
            .map_err(|e| bad(format!("invalid manifest.json: {e}")))?;
        for entry in entries {
            let lookup = |path: &str| {
                by_path
                    .get(path.trim_start_matches("./"))
                    .copied()
                    .ok_or_else(|| bad(format!("{path} is missing")))
            };
            let config_digest = lookup(&entry.config)?;
            let config_bytes = store.read_blob(&config_digest)?;
            let config: oci::ImageConfiguration = serde_json::from_slice(&config_bytes)
                .map_err(|e| bad(format!("config {}: {e}", entry.config)))?;
            let mut layers = Vec::new();
            for layer in &entry.layers {
                let digest = lookup(layer)?;
                let size = fs::metadata(store.blob_path(&digest))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let media_type = sniff_layer(&store.blob_path(&digest));
                layers.push(oci::Descriptor::new(
                    media_type,
                    size,
                    refs::oci_digest(&digest),
                ));
            }
            let image = store
                .put_image(&config, &layers, &entry.repo_tags)
                .map_err(|e| missing(e, input))?;
            images.push(as_given(image, &entry.repo_tags));
        }
    } else {
        return Err(bad(
            "neither index.json nor manifest.json: not an OCI or docker archive".into(),
        ));
    }
    Ok(images)
}

/// A loaded image with only the names the archive gave it (the store's other names for
/// it were not loaded: `load` reports what it loaded).
fn as_given(mut image: Image, given: &[String]) -> Image {
    let given: Vec<String> = given
        .iter()
        .filter_map(|name| refs::normalize_ref(name).ok())
        .collect();
    image.names.retain(|name| given.contains(name));
    image
}

/// A blob an archive's manifest names but neither the archive nor the store has.
fn missing(err: Error, input: &Path) -> Error {
    match err {
        Error::BlobNotFound(digest) => Error::Distribution {
            what: input.display().to_string(),
            message: format!("blob {digest} is missing from the archive"),
        },
        err => err,
    }
}

/// An entry of a docker-archive `manifest.json`.
#[derive(serde::Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn load_manifest(store: &Store, entry: &Descriptor, names: &[String]) -> Result<Image> {
    let bytes = store.read_blob(&entry.digest)?;
    let media_type = crate::registry::media::sniff(&bytes).unwrap_or_default();
    if crate::registry::media::is_index(&media_type) {
        let nested = ManifestDoc::parse(&bytes, &entry.digest.to_string())?;
        let chosen = select_platform(&nested, &Platform::default(), &entry.digest.to_string())?;
        return load_manifest(store, &chosen, names);
    }
    store.put_manifest_raw(&bytes, names)
}

/// The layer media type by magic bytes: gzip, zstd, else a plain tar.
fn sniff_layer(path: &Path) -> oci::MediaType {
    let mut magic = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .unwrap_or(0);
    oci::MediaType::from(Compression::sniff(&magic[..n]).media_type())
}
