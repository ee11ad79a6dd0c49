//! `push --compression-format`: an image with its layers recompressed, for tools that do
//! not read zstd (umoci 0.4, docker before 23, `skopeo copy --format v2s2`). Each layer is
//! decompressed, checked against its config's diff_id, compressed again and stored as a
//! new blob; the config is unchanged (diff_ids name the uncompressed tars) and the
//! manifest is rewritten over the new blobs. Layers already compressed so are kept.

use std::io;

use super::{LocalImage, Progress};
use crate::blob::{BlobReader, blob_error};
use crate::digest::HashingWriter;
use crate::error::{Error, Result};
use crate::layer::Compression;
use crate::layer::compress::{Encoder, decoder};
use crate::layout::Store;
use crate::registry::media;
use crate::{Digest, oci};

/// `image` with every layer compressed as `compression`; its new blobs and manifest are
/// put in `store` (gc removes them once nothing names them).
pub fn recompress(
    store: &Store,
    image: &LocalImage,
    compression: Compression,
    progress: &dyn Progress,
) -> Result<LocalImage> {
    let what = || format!("manifest {}", image.manifest_digest);
    let docker = image.media_type == media::DOCKER_MANIFEST;
    let wanted = layer_media_type(compression, docker).ok_or_else(|| Error::Distribution {
        what: what(),
        message: "a docker v2s2 manifest cannot carry zstd layers: push it as gzip".into(),
    })?;
    let config = image.doc.config.as_ref().ok_or_else(|| Error::Distribution {
        what: what(),
        message: "not an image manifest (no config)".into(),
    })?;
    let config: oci::ImageConfiguration = crate::json::parse(
        &super::local::read_verified(&image.blob_path(&config.digest), &config.digest)?,
        || format!("image config {}", config.digest),
    )?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != image.doc.layers.len() {
        return Err(Error::Distribution {
            what: what(),
            message: format!("{} layers but the config lists {} diff_ids", image.doc.layers.len(), diff_ids.len()),
        });
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest)
        .map_err(|e| Error::Distribution { what: what(), message: format!("invalid JSON: {e}") })?;
    let Some(layers) = manifest.get_mut("layers").and_then(|l| l.as_array_mut()) else {
        return Err(Error::Distribution { what: what(), message: "no layers array".into() });
    };
    // The new manifest's blobs are all read from the store: the config and the layers
    // kept as they are come along from an OCI layout or archive.
    let config_digest = image.doc.config.as_ref().map(|c| c.digest);
    let kept = image.doc.layers.iter().filter(|l| l.media_type == wanted).map(|l| l.digest);
    for digest in config_digest.into_iter().chain(kept) {
        if !store.has_blob(&digest) {
            store.put_blob_file(&image.blob_path(&digest), &digest)?;
        }
    }
    for ((layer, json), diff_id) in image.doc.layers.iter().zip(layers.iter_mut()).zip(diff_ids) {
        if layer.media_type == wanted {
            continue;
        }
        let diff_id: Digest = diff_id.parse()?;
        progress.begin(&layer.digest, layer.size, "convert");
        let (digest, size) = recompress_layer(store, &image.blob_path(&layer.digest), &layer.digest, &diff_id, compression)?;
        progress.end(&layer.digest, &format!("as {digest}"));
        json["mediaType"] = wanted.into();
        json["digest"] = digest.to_string().into();
        json["size"] = size.into();
    }
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Distribution { what: what(), message: format!("cannot serialize: {e}") })?;
    let (digest, _) = store.put_blob(&bytes)?;
    LocalImage::with_digest(bytes, digest, store.blobs_dir(), image.name.clone())
}

/// The media type of a layer compressed as `compression` in an OCI or a docker manifest.
fn layer_media_type(compression: Compression, docker: bool) -> Option<&'static str> {
    match (compression, docker) {
        (_, false) => Some(compression.media_type()),
        (Compression::Gzip, true) => Some(media::DOCKER_LAYER_GZIP),
        (Compression::None, true) => Some(media::DOCKER_LAYER_TAR),
        (Compression::Zstd, true) => None,
    }
}

/// Stores the layer at `path` compressed as `compression`; its new digest and size. The
/// old blob is checked against `digest` and its tar against `diff_id`.
fn recompress_layer(
    store: &Store,
    path: &std::path::Path,
    digest: &Digest,
    diff_id: &Digest,
    compression: Compression,
) -> Result<(Digest, u64)> {
    let read_error = |e: io::Error| blob_error(e, |e| Error::io("failed to decompress layer", digest.to_string(), e));
    let mut blob = BlobReader::open(path, digest)?;
    let mut out = HashingWriter::new(Encoder::new(compression, None, store.blob_writer()?).map_err(read_error)?);
    io::copy(&mut decoder(&mut blob).map_err(read_error)?, &mut out).map_err(read_error)?;
    // The old blob is trusted only once read to its end (its digest check).
    blob.verify_rest()?;
    let (encoder, actual, _) = out.finish();
    if actual != *diff_id {
        return Err(Error::Distribution {
            what: format!("layer {digest}"),
            message: format!("its tar hashes to {actual}, not to the config's diff_id {diff_id}"),
        });
    }
    let writer = encoder.finish().map_err(read_error)?;
    writer.commit(None)
}
