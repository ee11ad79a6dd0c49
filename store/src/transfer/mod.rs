//! Moving images in and out of the store: `push` and `pull` between the store, registries,
//! OCI image layouts (`oci:DIR[:TAG]`) and OCI archives (`oci-archive:FILE[:TAG]`), the
//! transport names skopeo uses.
//!
//! ```text
//! mod.rs      Location (transport parsing), options, Progress, platform choice, manifests
//! local.rs    images on disk: the store, an OCI layout, an OCI archive; writing a layout
//! remote.rs   registry push (HEAD, mount, upload only the missing) and pull (parallel, verified)
//! cache.rs    build-cache export/import (--cache-to / --cache-from)
//! ```
//!
//! Every blob that enters the store goes through `BlobWriter::commit(Some(digest))`, so
//! nothing unverified is ever stored; manifests are kept as the exact bytes received.

pub mod cache;
mod convert;
mod local;
mod remote;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::layout::Store;
use crate::registry::{ClientOptions, Reference, media};

pub use convert::recompress;
pub use local::{LocalImage, write_oci_dir};
pub use remote::{BlobSources, push_to_registry};

/// Where an image is: a registry, an OCI layout directory or an OCI archive file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Registry(Reference),
    OciDir { dir: PathBuf, tag: Option<String> },
    OciArchive { file: PathBuf, tag: Option<String> },
}

/// The reason for an `oci:` or `oci-archive:` location without its path.
fn what_reason(what: &str) -> &'static str {
    if what == "dir" {
        "oci: needs a directory, as oci:DIR[:TAG]"
    } else {
        "oci-archive: needs a file, as oci-archive:FILE[:TAG]"
    }
}

impl Location {
    /// Parses `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker://REF` or a plain registry
    /// reference.
    pub fn parse(text: &str) -> Result<Location> {
        // As skopeo reads them: the path ends at the first colon, and the rest is the
        // reference, colons and all (a layout's names are `name:tag`, even registry paths).
        let split = |rest: &str| -> (PathBuf, Option<String>) {
            match rest.split_once(':') {
                Some((path, tag)) if !path.is_empty() => (
                    PathBuf::from(path),
                    Some(tag.to_string()).filter(|t| !t.is_empty()),
                ),
                _ => (PathBuf::from(rest), None),
            }
        };
        let empty = |what: &str| Error::InvalidReference {
            reference: text.to_string(),
            reason: what_reason(what),
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = split(rest);
            if dir.as_os_str().is_empty() {
                return Err(empty("dir"));
            }
            return Ok(Location::OciDir { dir, tag });
        }
        if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (file, tag) = split(rest);
            if file.as_os_str().is_empty() {
                return Err(empty("file"));
            }
            return Ok(Location::OciArchive { file, tag });
        }
        let text = text.strip_prefix("docker://").unwrap_or(text);
        Ok(Location::Registry(Reference::parse(text)?))
    }

    /// Whether `text` names a transport rather than an image in the store.
    pub fn is_transport(text: &str) -> bool {
        text.starts_with("oci:")
            || text.starts_with("oci-archive:")
            || text.starts_with("docker://")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tagged =
            |f: &mut fmt::Formatter<'_>, kind: &str, path: &PathBuf, tag: &Option<String>| {
                write!(f, "{kind}:{}", path.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            };
        match self {
            Location::Registry(r) => write!(f, "{r}"),
            Location::OciDir { dir, tag } => tagged(f, "oci", dir, tag),
            Location::OciArchive { file, tag } => tagged(f, "oci-archive", file, tag),
        }
    }
}

/// An OS/architecture pair, as `--platform linux/amd64[/variant]` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(Error::Distribution {
                what: format!("platform {text:?}"),
                message: "expected OS/ARCH[/VARIANT], e.g. linux/amd64".into(),
            }),
        }
    }

    fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A descriptor as manifests and indexes hold it (OCI and Docker schema 2 share the shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The fields of a manifest or index that transfers need.
#[derive(Clone, Debug, Deserialize)]
pub struct ManifestDoc {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl ManifestDoc {
    pub fn parse(bytes: &[u8], what: &str) -> Result<ManifestDoc> {
        serde_json::from_slice(bytes).map_err(|e| Error::Distribution {
            what: what.to_string(),
            message: format!("invalid manifest: {e}"),
        })
    }

    /// Config first, then layers: every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// Checks that every layer is a kind `pull` can unpack.
    pub fn check_layers(&self, what: &str) -> Result<()> {
        const KNOWN: [&str; 6] = [
            media::OCI_LAYER_TAR,
            media::OCI_LAYER_GZIP,
            media::OCI_LAYER_ZSTD,
            media::DOCKER_LAYER_GZIP,
            media::DOCKER_LAYER_TAR,
            media::DOCKER_LAYER_ZSTD,
        ];
        for layer in &self.layers {
            if !KNOWN.contains(&layer.media_type.as_str()) {
                return Err(Error::Distribution {
                    what: format!("{what} layer {}", layer.digest),
                    message: format!("unsupported layer media type {:?}", layer.media_type),
                });
            }
        }
        Ok(())
    }
}

/// Picks the manifest for `platform` from an index.
pub fn select_platform(index: &ManifestDoc, platform: &Platform, what: &str) -> Result<Descriptor> {
    let found = index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)));
    if let Some(d) = found {
        return Ok(d.clone());
    }
    // An index without platforms (e.g. a plain OCI layout index) with one manifest is that image.
    if index.manifests.len() == 1 && index.manifests[0].platform.is_none() {
        return Ok(index.manifests[0].clone());
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| p.to_string())
        .collect();
    Err(Error::Distribution {
        what: what.to_string(),
        message: format!(
            "no manifest for platform {platform} (available: {})",
            available.join(", ")
        ),
    })
}

/// Reports what a transfer does, blob by blob, for progress bars or plain lines.
pub trait Progress: Sync {
    /// `action` is "push", "pull", "copy"; `size` in bytes.
    fn begin(&self, _digest: &Digest, _size: u64, _action: &str) {}
    fn advance(&self, _digest: &Digest, _bytes: u64) {}
    /// `outcome`: "done", "exists", "mounted from REPO", ...
    fn end(&self, _digest: &Digest, _outcome: &str) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Options for `pull` and `push`.
pub struct TransferOptions<'a> {
    pub client: ClientOptions,
    pub platform: Platform,
    /// Parallel blob transfers.
    pub jobs: usize,
    pub progress: &'a dyn Progress,
    /// `push --compression-format`: layers are recompressed so before they leave.
    pub compression: Option<crate::layer::Compression>,
}

impl Default for TransferOptions<'_> {
    fn default() -> Self {
        TransferOptions {
            client: ClientOptions::default(),
            platform: Platform::default(),
            jobs: 4,
            progress: &Quiet,
            compression: None,
        }
    }
}

/// Pulls `source` (a registry reference, `oci:DIR[:TAG]` or `oci-archive:FILE[:TAG]`) into
/// the store and names it: a registry image by its full reference, a layout image by the
/// name its index gives it (its tag otherwise). Blobs already in the store are skipped.
pub fn pull(store: &Store, source: &str, opts: &TransferOptions<'_>) -> Result<Image> {
    match Location::parse(source)? {
        Location::Registry(reference) => remote::pull_from_registry(store, &reference, opts),
        location => {
            let image = LocalImage::open(store, &location, &opts.platform)?;
            let names: Vec<String> = image.name.iter().cloned().collect();
            local::copy_into_store(store, &image, &names, opts)
        }
    }
}

/// The image a Buildfile's `FROM` names: from the store if it is there (as written, or by
/// its full registry name, `busybox` = `docker.io/library/busybox:latest`), else pulled.
/// The builder's pull-on-FROM hook.
pub fn resolve_or_pull(
    store: &Store,
    reference: &str,
    opts: &TransferOptions<'_>,
) -> Result<Image> {
    match store.resolve(reference) {
        Ok(image) => return Ok(image),
        Err(Error::ImageNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    if !Location::is_transport(reference) {
        let parsed = Reference::parse(reference)?;
        if parsed.digest.is_none() {
            match store.resolve(&parsed.name()) {
                Ok(image) => return Ok(image),
                Err(Error::ImageNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    pull(store, reference, opts)
}

/// Pushes `image` (a store reference, or `oci:`/`oci-archive:` source) to `dest`
/// (registry reference, `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`); `dest` defaults to the
/// image's own name. Returns the digest of the manifest pushed.
pub fn push(
    store: &Store,
    image: &str,
    dest: Option<&str>,
    opts: &TransferOptions<'_>,
) -> Result<Digest> {
    let source = if Location::is_transport(image) {
        LocalImage::open(store, &Location::parse(image)?, &opts.platform)?
    } else {
        LocalImage::from_store(store, image)?
    };
    let source = match opts.compression {
        Some(compression) => recompress(store, source, compression, opts.progress)?,
        None => source,
    };
    let dest = match dest {
        Some(d) => d.to_string(),
        None if !Location::is_transport(image) => image.to_string(),
        None => {
            return Err(Error::Distribution {
                what: format!("push {image}"),
                message: "a destination is needed when pushing from a layout or archive".into(),
            });
        }
    };
    match Location::parse(&dest)? {
        Location::Registry(reference) => {
            let digest = push_to_registry(store, &source, &reference, opts)?;
            // As docker records it: the image is now also `repo@digest` (RepoDigests).
            if !Location::is_transport(image) && digest == source.manifest_digest {
                store.add_repo_digest(
                    &digest,
                    &format!("{}/{}@{digest}", reference.registry, reference.repository),
                )?;
            }
            Ok(digest)
        }
        Location::OciDir { dir, tag } => write_oci_dir(&source, &dir, tag.as_deref()),
        Location::OciArchive { file, tag } => {
            let name =
                tag.unwrap_or_else(|| source.name.clone().unwrap_or_else(|| "latest".into()));
            crate::archive::write_archive(&[(&source, vec![name])], &file, false)?;
            Ok(source.manifest_digest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports() {
        assert_eq!(
            Location::parse("oci:/tmp/lay:bench").unwrap(),
            Location::OciDir {
                dir: "/tmp/lay".into(),
                tag: Some("bench".into())
            }
        );
        assert_eq!(
            Location::parse("oci:/tmp/lay").unwrap(),
            Location::OciDir {
                dir: "/tmp/lay".into(),
                tag: None
            }
        );
        assert_eq!(
            Location::parse("oci-archive:img.tar:v1").unwrap(),
            Location::OciArchive {
                file: "img.tar".into(),
                tag: Some("v1".into())
            }
        );
        // skopeo's split: the reference may hold colons and slashes
        assert_eq!(
            Location::parse("oci:/store/oci:docker.io/library/app:1").unwrap(),
            Location::OciDir {
                dir: "/store/oci".into(),
                tag: Some("docker.io/library/app:1".into())
            }
        );
        assert_eq!(
            Location::parse("oci-archive:a.tar:name:tag").unwrap(),
            Location::OciArchive {
                file: "a.tar".into(),
                tag: Some("name:tag".into())
            }
        );
        let Location::Registry(r) = Location::parse("docker://127.0.0.1:5000/a:b").unwrap() else {
            panic!()
        };
        assert_eq!(r.to_string(), "127.0.0.1:5000/a:b");
        assert!(Location::is_transport("oci:x") && !Location::is_transport("app:1"));
        assert!(Location::parse("oci:").is_err() && Location::parse("oci-archive:").is_err());
    }

    #[test]
    fn selects_platform_from_index() {
        let d = |arch: &str, variant: Option<&str>| Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: Digest::of(arch.as_bytes()),
            size: 1,
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: BTreeMap::new(),
        };
        let index = ManifestDoc {
            media_type: Some(media::OCI_INDEX.into()),
            config: None,
            layers: vec![],
            manifests: vec![d("arm64", Some("v8")), d("amd64", None)],
        };
        assert_eq!(
            select_platform(&index, &Platform::default(), "x")
                .unwrap()
                .digest,
            Digest::of(b"amd64")
        );
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            select_platform(&index, &arm, "x").unwrap().digest,
            Digest::of(b"arm64")
        );
        let err = select_platform(&index, &Platform::parse("linux/s390x").unwrap(), "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
            "{err}"
        );
        assert!(Platform::parse("linux").is_err());
    }
}
