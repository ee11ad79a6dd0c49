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
/// put in `store` (gc removes them once nothing names them). What a layer is compressed
/// with is read from its bytes, not its media type. An image already so is returned as
/// it is (its manifest keeps its bytes and digest); foreign layers are left alone.
pub fn recompress(
    store: &Store,
    image: LocalImage,
    compression: Compression,
    progress: &dyn Progress,
) -> Result<LocalImage> {
    let what = || format!("manifest {}", image.manifest_digest);
    let docker = image.media_type == media::DOCKER_MANIFEST;
    let wanted = layer_media_type(compression, docker).ok_or_else(|| Error::Distribution {
        what: what(),
        message: "a docker v2s2 manifest cannot carry zstd layers: push it as gzip".into(),
    })?;
    // What each layer needs: nothing, a media type, or new bytes.
    let mut plan = Vec::with_capacity(image.doc.layers.len());
    for layer in &image.doc.layers {
        let step = if is_foreign(&layer.media_type) {
            Step::Keep
        } else if sniff(&image.blob_path(&layer.digest), &layer.digest)? != compression {
            Step::Recompress
        } else if layer.media_type != wanted {
            Step::Relabel
        } else {
            Step::Keep
        };
        plan.push(step);
    }
    if plan.iter().all(|step| *step == Step::Keep) {
        return Ok(image);
    }
    let config = image
        .doc
        .config
        .as_ref()
        .ok_or_else(|| Error::Distribution {
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
            message: format!(
                "{} layers but the config lists {} diff_ids",
                image.doc.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&image.manifest).map_err(|e| Error::Distribution {
            what: what(),
            message: format!("invalid JSON: {e}"),
        })?;
    let Some(layers) = manifest.get_mut("layers").and_then(|l| l.as_array_mut()) else {
        return Err(Error::Distribution {
            what: what(),
            message: "no layers array".into(),
        });
    };
    // The new manifest's blobs are all read from the store: the config and the layers
    // whose bytes stay come along from an OCI layout or archive.
    let config_digest = image.doc.config.as_ref().map(|c| c.digest);
    let kept = image
        .doc
        .layers
        .iter()
        .zip(&plan)
        .filter(|(_, step)| **step != Step::Recompress);
    for digest in config_digest
        .into_iter()
        .chain(kept.map(|(layer, _)| layer.digest))
    {
        if !store.has_blob(&digest) {
            store.put_blob_file(&image.blob_path(&digest), &digest)?;
        }
    }
    for (((layer, json), diff_id), step) in image
        .doc
        .layers
        .iter()
        .zip(layers.iter_mut())
        .zip(diff_ids)
        .zip(&plan)
    {
        match step {
            Step::Keep => continue,
            Step::Relabel => json["mediaType"] = wanted.into(),
            Step::Recompress => {
                let diff_id: Digest = diff_id.parse()?;
                progress.begin(&layer.digest, layer.size, "convert");
                let path = image.blob_path(&layer.digest);
                let (digest, size) =
                    recompress_layer(store, &path, &layer.digest, &diff_id, compression)?;
                progress.end(&layer.digest, &format!("as {digest}"));
                json["mediaType"] = wanted.into();
                json["digest"] = digest.to_string().into();
                json["size"] = size.into();
                forget_old_bytes(json);
            }
        }
    }
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Distribution {
        what: what(),
        message: format!("cannot serialize: {e}"),
    })?;
    let (digest, _) = store.put_blob(&bytes)?;
    LocalImage::with_digest(bytes, digest, store.blobs_dir(), image.name.clone())
}

/// What a layer of the manifest needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Keep,
    /// Its bytes are compressed as wanted; only its media type says otherwise.
    Relabel,
    Recompress,
}

/// Layers that are not stored with the image (docker foreign, OCI non-distributable):
/// neither read nor rewritten.
fn is_foreign(media_type: &str) -> bool {
    media_type.contains("foreign") || media_type.contains("nondistributable")
}

/// How the blob at `path` is compressed, from its first bytes.
fn sniff(path: &std::path::Path, digest: &Digest) -> Result<Compression> {
    let mut head = [0u8; 4];
    let n = io::Read::read(&mut BlobReader::open(path, digest)?, &mut head)
        .map_err(|e| Error::io("failed to read blob", path, e))?;
    Ok(Compression::sniff(&head[..n]))
}

/// Drops what a descriptor says about the bytes it no longer names: an embedded copy
/// (`data`) and the tables of contents of zstd:chunked and eStargz, which a puller
/// would otherwise use to fetch parts of the new blob at the old offsets.
fn forget_old_bytes(descriptor: &mut serde_json::Value) {
    let Some(fields) = descriptor.as_object_mut() else {
        return;
    };
    fields.remove("data");
    if let Some(annotations) = fields
        .get_mut("annotations")
        .and_then(|a| a.as_object_mut())
    {
        annotations.retain(|key, _| {
            !key.starts_with("io.github.containers.zstd-chunked.")
                && !key.starts_with("containerd.io/snapshot/stargz/")
        });
        if annotations.is_empty() {
            fields.remove("annotations");
        }
    }
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
    let read_error = |e: io::Error| {
        blob_error(e, |e| {
            Error::io("failed to decompress layer", digest.to_string(), e)
        })
    };
    let mut blob = BlobReader::open(path, digest)?;
    let mut out = HashingWriter::new(
        Encoder::new(compression, None, store.blob_writer()?).map_err(read_error)?,
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_converted_descriptor_forgets_its_old_bytes() {
        let mut descriptor = serde_json::json!({
            "mediaType": media::OCI_LAYER_ZSTD,
            "digest": "sha256:00",
            "size": 1,
            "data": "AA==",
            "annotations": {
                "io.github.containers.zstd-chunked.manifest-checksum": "sha256:11",
                "containerd.io/snapshot/stargz/toc.digest": "sha256:22",
                "org.opencontainers.image.title": "kept",
            },
        });
        forget_old_bytes(&mut descriptor);
        assert_eq!(descriptor.get("data"), None);
        assert_eq!(
            descriptor["annotations"],
            serde_json::json!({"org.opencontainers.image.title": "kept"})
        );
        let mut bare =
            serde_json::json!({"annotations": {"containerd.io/snapshot/stargz/toc.digest": "x"}});
        forget_old_bytes(&mut bare);
        assert_eq!(
            bare,
            serde_json::json!({}),
            "an emptied annotations map goes"
        );
    }

    #[test]
    fn foreign_layers_are_left_alone() {
        assert!(is_foreign(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(is_foreign(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(!is_foreign(media::OCI_LAYER_GZIP) && !is_foreign(media::DOCKER_LAYER_GZIP));
    }
}
