//! Image names: parsing `name[:tag]`, and the entries of `oci/index.json` that carry them.
//!
//! Each name is one index entry annotated `org.opencontainers.image.ref.name = "name:tag"`
//! (image-spec `annotations.md`), which is what `skopeo ... oci:<root>/oci:name:tag` and
//! `umoci --image <root>/oci:name:tag` look up. An image stored without a name keeps one
//! entry without the annotation so it stays reachable (docker's `<none>:<none>`); removing
//! an image's last name removes its last entry, and gc then frees its blobs.

use std::collections::{HashMap, HashSet};
use std::fs;

use crate::error::{Error, Result};
use crate::layout::Store;
use crate::registry::media;
use crate::{Digest, json, oci};

/// The annotation that names an index entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd (and `docker save`) put the full image name in.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Parses `name[:tag]` into `name:tag` (`:latest` when no tag is given). The tag is what
/// follows the last `:` after the last `/`, so `localhost:5000/app` has no tag.
pub fn normalize_name(text: &str) -> Result<String> {
    let bad = |reason: &'static str| Error::InvalidReference {
        reference: text.to_string(),
        reason,
    };
    let (repo, tag) = split_name(text);
    if repo.is_empty() {
        return Err(bad("empty name"));
    }
    if text.contains('@') {
        return Err(bad("digests are not names; use the image id"));
    }
    // The distribution spec's grammar: [HOST[:PORT]/]PATH, the host only before the first '/'.
    let (host, path) = match repo.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, repo),
    };
    if let Some(host) = host {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let name_ok = name.split('.').all(|part| {
            part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        });
        let port_ok = port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !name_ok || !port_ok {
            return Err(bad(
                "a registry is HOST[:PORT] before the first '/', the port a number",
            ));
        }
    }
    let path_ok = path.split('/').all(|part| {
        part.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && !part.contains("..")
    });
    if !path_ok {
        return Err(bad(
            "names use lowercase letters and digits, '.', '_' or '-' between them, and '/' separators",
        ));
    }
    if repo.len() == 64 && repo.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("a 64-hex name would shadow image ids"));
    }
    let tag = tag.unwrap_or("latest");
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !tag_ok {
        return Err(bad(
            "tags are 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
        ));
    }
    Ok(format!("{repo}:{tag}"))
}

/// A name an image may carry in the index: `name[:tag]` (normalized, as `normalize_name`),
/// or `name@sha256:HEX`, the name of an image pulled by digest (a tag beside the digest is
/// dropped, as docker drops it).
pub fn normalize_ref(text: &str) -> Result<String> {
    let Some((name, digest)) = text.split_once('@') else {
        return normalize_name(text);
    };
    let bad = |reason: &'static str| Error::InvalidReference {
        reference: text.to_string(),
        reason,
    };
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| bad("a digest is sha256: and 64 lowercase hex digits"))?;
    let repo = normalize_name(name)?;
    let (repo, _) = split_name(&repo);
    Ok(format!("{repo}@sha256:{hex}"))
}

/// A normalized name as docker shows it: Docker Hub's host and its `library/` prefix
/// dropped (`docker.io/library/busybox:latest` -> `busybox:latest`), so that the names
/// docker treats as one image match here too.
pub fn familiar(name: &str) -> &str {
    let short = ["docker.io/", "index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|host| name.strip_prefix(host))
        .unwrap_or(name);
    match short.strip_prefix("library/") {
        Some(rest) if !split_name(rest).0.contains('/') => rest,
        _ => short,
    }
}

/// Splits `name[:tag]` into repository and tag; `name@sha256:HEX` has no tag.
pub fn split_name(text: &str) -> (&str, Option<&str>) {
    if let Some((repo, _)) = text.split_once('@') {
        return (repo, None);
    }
    let slash = text.rfind('/').map(|i| i + 1).unwrap_or(0);
    match text[slash..].rfind(':') {
        Some(colon) => (&text[..slash + colon], Some(&text[slash + colon + 1..])),
        None => (text, None),
    }
}

/// The name an index entry carries, if any.
pub fn entry_name(entry: &oci::Descriptor) -> Option<&str> {
    entry
        .annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

/// The store digest of a descriptor (sha256 only).
pub fn descriptor_digest(descriptor: &oci::Descriptor) -> Result<Digest> {
    descriptor.digest().to_string().parse()
}

/// An oci-spec digest from ours.
pub fn oci_digest(digest: &Digest) -> oci::Digest {
    // Our Display is always a valid sha256 digest string, which oci-spec accepts.
    digest
        .to_string()
        .parse()
        .unwrap_or_else(|_| unreachable!("sha256 digests always parse"))
}

/// A manifest descriptor for index.json, named when `name` is given.
pub fn index_entry(
    digest: &Digest,
    size: u64,
    media_type: oci::MediaType,
    name: Option<&str>,
) -> oci::Descriptor {
    let mut entry = oci::Descriptor::new(media_type, size, oci_digest(digest));
    if let Some(name) = name {
        entry.set_annotations(Some(HashMap::from([(
            REF_NAME.to_string(),
            name.to_string(),
        )])));
    }
    entry
}

impl Store {
    /// The entries of `oci/index.json`.
    pub fn index_entries(&self) -> Result<Vec<oci::Descriptor>> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Invalid {
                what: path.display().to_string(),
                message: "missing, though the store holds blobs; `strata fsck --repair` \
                          lists their images again (unnamed)"
                    .into(),
            },
            _ => Error::io("failed to read", &path, e),
        })?;
        let index: oci::ImageIndex = json::parse(&bytes, || path.display().to_string())?;
        Ok(index.manifests().clone())
    }

    /// Read-modify-write of index.json under `refs.lock`; written atomically.
    pub(crate) fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Vec<oci::Descriptor>) -> Result<T>,
    ) -> Result<T> {
        let _guard = self.refs_lock()?;
        let mut entries = self.index_entries()?;
        let before: Vec<oci::Descriptor> = entries.clone();
        let out = change(&mut entries)?;
        self.keep_images_of_containers(&before, &mut entries)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": entries,
        });
        let bytes = json::to_canonical(&index, "index.json")?;
        self.write_atomic(&self.index_path(), &bytes)?;
        Ok(out)
    }
}

impl Store {
    /// An image a container was made from stays listed when it loses its last name (a
    /// rebuilt or re-pulled tag, `rmi -f`), nameless, as docker keeps it as `<none>`:
    /// the container's diff, mount and commit need it, and gc keeps what is listed.
    fn keep_images_of_containers(
        &self,
        before: &[oci::Descriptor],
        after: &mut Vec<oci::Descriptor>,
    ) -> Result<()> {
        let listed: HashSet<Digest> = after
            .iter()
            .filter_map(|e| descriptor_digest(e).ok())
            .collect();
        let mut dropped: Vec<&oci::Descriptor> = Vec::new();
        for entry in before {
            if let Ok(digest) = descriptor_digest(entry)
                && !listed.contains(&digest)
                && !dropped
                    .iter()
                    .any(|d| descriptor_digest(d).ok() == Some(digest))
            {
                dropped.push(entry);
            }
        }
        if dropped.is_empty() || !self.containers_dir().is_dir() {
            return Ok(());
        }
        let used: HashSet<Digest> = self
            .containers()?
            .into_iter()
            .filter_map(|c| c.state.image_id)
            .collect();
        if used.is_empty() {
            return Ok(());
        }
        for entry in dropped {
            let digest = descriptor_digest(entry)?;
            let Ok(bytes) = self.read_blob(&digest) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<oci::ImageManifest>(&bytes) else {
                continue;
            };
            if descriptor_digest(manifest.config()).is_ok_and(|config| used.contains(&config)) {
                let mut kept = entry.clone();
                kept.set_annotations(None);
                after.push(kept);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_latest_and_keep_registry_ports() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_name("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalize_name("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_name("localhost:5000/app:v1").unwrap(),
            "localhost:5000/app:v1"
        );
        assert_eq!(
            normalize_name("127.0.0.1:5000/a/b-c__d.e:1").unwrap(),
            "127.0.0.1:5000/a/b-c__d.e:1"
        );
        assert_eq!(
            normalize_name("Registry.example.com/app").unwrap(),
            "Registry.example.com/app:latest"
        );
    }

    #[test]
    fn docker_hub_names_have_a_familiar_form() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("library/busybox:1"), "busybox:1");
        assert_eq!(familiar("index.docker.io/legacy/img:v1"), "legacy/img:v1");
        assert_eq!(
            familiar("127.0.0.1:5000/library/x:1"),
            "127.0.0.1:5000/library/x:1"
        );
        assert_eq!(familiar("busybox:latest"), "busybox:latest");
    }

    #[test]
    fn digest_references_name_the_repository() {
        let hex = "ab".repeat(32);
        assert_eq!(
            normalize_ref(&format!("r:5/app@sha256:{hex}")).unwrap(),
            format!("r:5/app@sha256:{hex}")
        );
        assert_eq!(
            normalize_ref(&format!("app:v1@sha256:{hex}")).unwrap(),
            format!("app@sha256:{hex}")
        );
        assert_eq!(normalize_ref("app").unwrap(), "app:latest");
        assert_eq!(
            split_name(&format!("r:5/app@sha256:{hex}")),
            ("r:5/app", None)
        );
        for bad in [
            "app@sha256:12",
            "app@md5:00",
            &format!("App@sha256:{hex}"),
            &format!("@sha256:{hex}"),
        ] {
            assert!(normalize_ref(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "Busybox",
            "a b",
            "x:",
            "x:-y",
            "a//b",
            "app@sha256:00",
            &"a".repeat(64),
            "a:b:c:d",
            "host:notaport/x",
            "host:/x",
            "-a",
            "a_",
            "a..b",
            "bad_host.com/x",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
