//! Media types of OCI image-spec v1.1 and Docker image manifest v2 schema 2, and how to
//! tell a manifest from an index when a registry does not say.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Build-cache export: the config of a cache image (see `transfer::cache`).
pub const STRATA_CACHE_CONFIG: &str = "application/vnd.strata.cache.config.v1+json";

/// The `Accept` header for manifest requests: every form `pull` understands.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// The media type a manifest declares in its own `mediaType` field, or, for OCI documents
/// that omit it, what its fields say (`manifests` = index, `config` = manifest).
pub fn sniff(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(t) = value.get("mediaType").and_then(|t| t.as_str()) {
        return Some(t.to_string());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_string())
    } else if value.get("config").is_some() {
        Some(OCI_MANIFEST.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_declared_and_implied_types() {
        assert_eq!(
            sniff(br#"{"mediaType":"x","manifests":[]}"#).as_deref(),
            Some("x")
        );
        assert_eq!(
            sniff(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            sniff(br#"{"schemaVersion":2,"config":{}}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(sniff(b"not json"), None);
        assert!(
            is_index(DOCKER_MANIFEST_LIST)
                && is_manifest(DOCKER_MANIFEST)
                && !is_manifest(OCI_INDEX)
        );
    }
}
