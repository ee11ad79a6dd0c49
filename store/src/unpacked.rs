//! Layers in the store: writing a directory as a layer blob, and unpacking layer blobs
//! once into `layers/<diffid-hex>/` for mounting.
//!
//! Unpacking goes into a fresh directory in `tmp/` and is renamed into place only after
//! the blob's digest and the tar's diff_id both checked out. Two processes unpacking the
//! same layer at once both succeed: the second rename finds the directory there and the
//! loser discards its copy (same content, by diff_id).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{Image, LayerBlob};
use crate::layer::{self, WriteOptions};
use crate::layout::{Store, sync_parent};
use crate::refs::{descriptor_digest, normalize_name, oci_digest};
use crate::{Digest, oci, time};

/// Who made an imported image, as history shows it.
const IMPORT_CREATED_BY: &str = "strata import";

impl Store {
    /// Writes `dir` (overlay on-disk form) as a layer blob in one pass.
    pub fn create_layer(&self, dir: &Path, opts: &WriteOptions) -> Result<LayerBlob> {
        let mut writer = self.blob_writer()?;
        let info = layer::write_layer(dir, opts, &mut writer)?;
        let (digest, size) = writer.commit(Some(&info.digest))?;
        let descriptor = oci::Descriptor::new(
            oci::MediaType::from(info.media_type),
            size,
            oci_digest(&digest),
        );
        Ok(LayerBlob {
            descriptor,
            diff_id: info.diff_id,
        })
    }

    /// The unpacked form of a layer, unpacking it first if no one has yet.
    pub fn unpacked_layer(
        &self,
        descriptor: &oci::Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf> {
        let target = self.layers_dir().join(diff_id.hex());
        if target.is_dir() {
            return Ok(target);
        }
        let digest = descriptor_digest(descriptor)?;
        self.in_staging("unpack", |staging| {
            let mut reader = self.open_blob(&digest)?;
            let actual = layer::unpack_layer(&mut reader, staging)?;
            // The unpacker may stop at the tar end marker; the digest is checked at EOF.
            reader.verify_rest()?;
            if actual != *diff_id {
                return Err(Error::DiffIdMismatch {
                    digest,
                    expected: *diff_id,
                    actual,
                });
            }
            self.place_layer_dir(staging, &target)
        })?;
        Ok(target)
    }

    /// Runs `work` on a fresh directory in `tmp/`, which is removed afterwards unless
    /// `work` renamed it into place.
    fn in_staging<T>(&self, kind: &str, work: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let staging = self.tmp_dir_create(kind)?;
        let result = work(&staging);
        if staging.exists() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Renames a finished layer dir into `layers/`; losing a race to an equal one is fine.
    fn place_layer_dir(&self, staging: &Path, target: &Path) -> Result<()> {
        // The unpacker writes without fsync; one syncfs makes every file of the layer
        // durable before the rename publishes it (a power cut must not leave empty files).
        let dir = fs::File::open(staging).map_err(|e| Error::io("failed to open", staging, e))?;
        rustix::fs::syncfs(&dir)
            .map_err(|e| Error::io("failed to sync the filesystem of", staging, e.into()))?;
        match fs::rename(staging, target) {
            Ok(()) => sync_parent(target),
            Err(e)
                if target.is_dir()
                    && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io("failed to rename into place", target, e)),
        }
    }

    /// The image's unpacked layer dirs, top first (mount order), unpacking as needed.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let diff_ids = image.diff_ids()?;
        let layers = image.manifest.layers();
        if diff_ids.len() != layers.len() {
            return Err(Error::Invalid {
                what: format!("image {}", image.id),
                message: format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            });
        }
        let mut dirs = layers
            .iter()
            .zip(&diff_ids)
            .map(|(layer, diff_id)| self.unpacked_layer(layer, diff_id))
            .collect::<Result<Vec<_>>>()?;
        dirs.reverse();
        Ok(dirs)
    }

    /// `strata import`: a rootfs tarball (plain, gzip or zstd) becomes a one-layer image.
    /// `created` is `opts.source_date_epoch` when given, else now; the layer is written
    /// the canonical way (sorted entries), so the same tree gives the same image anywhere.
    pub fn import(&self, input: impl Read, names: &[String], opts: &WriteOptions) -> Result<Image> {
        let source_date_epoch = opts.source_date_epoch;
        // Refuse a bad name before doing the work.
        for name in names {
            normalize_name(name)?;
        }
        self.in_staging("import", |staging| {
            layer::unpack_layer(input, staging)?;
            let layer = self.create_layer(staging, opts)?;
            let created = time::format_rfc3339(source_date_epoch.unwrap_or_else(time::now));
            let config = import_config(&created, &layer.diff_id)?;
            let image = self.put_image(&config, std::slice::from_ref(&layer.descriptor), names)?;
            if source_date_epoch.is_none() {
                // Without clamping the blob is exactly this tree: keep it as the unpacked
                // layer. Placed after the config exists, so fsck always knows its diff_id.
                self.place_layer_dir(staging, &self.layers_dir().join(layer.diff_id.hex()))?;
            }
            Ok(image)
        })
    }
}

fn import_config(created: &str, diff_id: &Digest) -> Result<oci::ImageConfiguration> {
    let invalid = |e: oci_spec::OciSpecError| Error::Invalid {
        what: "image config".into(),
        message: e.to_string(),
    };
    let history = oci::HistoryBuilder::default()
        .created(created.to_string())
        .created_by(IMPORT_CREATED_BY.to_string())
        .build()
        .map_err(invalid)?;
    let rootfs = oci::RootFsBuilder::default()
        .typ("layers".to_string())
        .diff_ids(vec![diff_id.to_string()])
        .build()
        .map_err(invalid)?;
    let config = oci::ConfigBuilder::default()
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ])
        .build()
        .map_err(invalid)?;
    oci::ImageConfigurationBuilder::default()
        .created(created.to_string())
        .architecture(host_arch())
        .os(oci::Os::Linux)
        .config(config)
        .rootfs(rootfs)
        .history(vec![history])
        .build()
        .map_err(invalid)
}

/// The host's architecture in GOARCH spelling (image-spec `config.md` `architecture`).
pub fn host_arch() -> oci::Arch {
    match std::env::consts::ARCH {
        "x86_64" => oci::Arch::Amd64,
        "aarch64" => oci::Arch::ARM64,
        "arm" => oci::Arch::ARM,
        "x86" => oci::Arch::i386,
        "riscv64" => oci::Arch::RISCV64,
        "powerpc64" => oci::Arch::PowerPC64le,
        "s390x" => oci::Arch::s390x,
        other => oci::Arch::Other(other.to_string()),
    }
}
