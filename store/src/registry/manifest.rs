//! Manifest operations of distribution-spec v1.1: `HEAD`, `GET` (with every manifest and
//! index media type we read in `Accept`) and `PUT`. Manifests travel as raw bytes: their
//! digest is the sha256 of exactly those bytes, so they are never re-serialised, and a
//! fetched manifest is checked against the digest asked for or announced by the registry.

use ureq::http::StatusCode;

use super::blob::{pull_scope, push_scope};
use super::client::{Client, Payload, Request, error_from, header};
use super::media;
use crate::Digest;
use crate::error::{Error, Result};

/// Manifests larger than this are refused (distribution limits them to 4 MiB too).
const MAX_MANIFEST: u64 = 4 << 20;

/// A manifest or index as the registry sent it.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

impl Client {
    /// Digest, media type and size of a manifest, or `None` if the registry lacks it.
    pub fn manifest_exists(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Digest, String, u64)>> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let request = Request::new("HEAD", url.clone(), pull_scope(repository))
            .header("accept", media::ACCEPT_MANIFESTS);
        let response = self.send(&request)?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let digest = match header(&response, "docker-content-digest")
                    .and_then(|d| d.parse::<Digest>().ok())
                {
                    Some(d) => d,
                    // Without the header only a GET can tell the digest.
                    None => {
                        return Ok(Some(self.fetch_manifest(repository, reference)?).map(|m| {
                            let size = m.bytes.len() as u64;
                            (m.digest, m.media_type, size)
                        }));
                    }
                };
                let size = super::blob::content_length(&response).unwrap_or(0);
                let media_type = header(&response, "content-type")
                    .unwrap_or_default()
                    .to_string();
                Ok(Some((digest, media_type, size)))
            }
            _ => Err(error_from(&url, "HEAD manifest", response)),
        }
    }

    /// Fetches a manifest or index by tag or digest, verifying its digest.
    pub fn fetch_manifest(&self, repository: &str, reference: &str) -> Result<RawManifest> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let request = Request::new("GET", url.clone(), pull_scope(repository))
            .header("accept", media::ACCEPT_MANIFESTS);
        let mut response = self.send(&request)?;
        if !response.status().is_success() {
            return Err(error_from(&url, "GET manifest", response));
        }
        let announced = header(&response, "docker-content-digest").map(str::to_string);
        let content_type = header(&response, "content-type").map(str::to_string);
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| Error::Registry {
                url: url.clone(),
                message: format!("reading manifest failed: {e}"),
            })?;
        let digest = Digest::of(&bytes);
        // By digest, that digest; by tag, the one the registry announced for it.
        let expected = match reference.parse::<Digest>() {
            Ok(d) => Some((d, "")),
            Err(_) => announced
                .as_deref()
                .filter(|d| d.starts_with("sha256:"))
                .and_then(|d| d.parse().ok())
                .map(|d| {
                    (
                        d,
                        " (the digest its Docker-Content-Digest header announced)",
                    )
                }),
        };
        if let Some((expected, detail)) = expected
            && expected != digest
        {
            return Err(Error::RegistryDigestMismatch {
                url,
                expected,
                actual: digest,
                detail: detail.to_string(),
            });
        }
        let media_type = media::sniff(&bytes)
            .or_else(|| content_type.map(|t| t.split(';').next().unwrap_or("").trim().to_string()))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Registry {
                url: url.clone(),
                message: "manifest has no media type".into(),
            })?;
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Uploads a manifest under `reference` (a tag or its digest); returns its digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let mut request = Request::new("PUT", url.clone(), push_scope(repository))
            .header("content-type", media_type);
        request.body = Payload::Bytes(bytes);
        let response = self.send(&request)?;
        if !response.status().is_success() {
            return Err(error_from(&url, "PUT manifest", response));
        }
        Ok(Digest::of(bytes))
    }
}
