//! Blob operations of distribution-spec v1.1: `HEAD` to check, `GET` streamed into a
//! writer (resumed with `Range` after a dropped connection, hashed and verified at the
//! end), uploads (`POST` + monolithic `PUT` for small blobs, `PATCH` chunks + `PUT` for
//! large ones, falling back to monolithic when a registry refuses chunks) and cross-repository
//! mounts (`POST ?mount=&from=`). A failed upload restarts from the start of the blob in a
//! new session, a bounded number of times.

use std::io::{self, Read, Write};
use std::path::Path;

use ureq::http::StatusCode;

use super::client::{Client, Payload, Request, error_from, header, percent_encode};
use crate::Digest;
use crate::digest::HashingWriter;
use crate::error::{Error, Result};

pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// Where an upload's bytes come from: a file on disk (streamed) or bytes in memory.
#[derive(Clone, Copy)]
pub enum BlobSource<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

impl Client {
    /// Where a blob of `repository` is fetched from.
    pub(crate) fn blob_url(&self, repository: &str, digest: &Digest) -> String {
        self.url(&format!("/v2/{repository}/blobs/{digest}"))
    }

    /// The size of a blob if `repository` has it.
    pub fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = self.blob_url(repository, digest);
        let response = self.send(&Request::new("HEAD", url.clone(), pull_scope(repository)))?;
        match response.status() {
            s if s.is_success() => Ok(Some(content_length(&response).unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(error_from(&url, "HEAD blob", response)),
        }
    }

    /// Streams a blob into `out`, verifying it against `digest` when `verify` is set (pass
    /// false only when `out` verifies itself, as the store's blob writer does). A dropped
    /// connection resumes where it stopped with a `Range` request. A body longer than
    /// `size` (the descriptor's) is refused as soon as it is: a registry that sends more
    /// would fill the disk before the digest could say so. Returns the size.
    pub fn fetch_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: Option<u64>,
        out: &mut dyn Write,
        verify: bool,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<u64> {
        let url = self.blob_url(repository, digest);
        // Hash here only when the writer does not verify by itself (the store's does).
        let mut out = if verify {
            Sink::Hashing(HashingWriter::new(out))
        } else {
            Sink::Plain(out)
        };
        let mut written = 0u64;
        let mut attempt = 0;
        loop {
            let mut request = Request::new("GET", url.clone(), pull_scope(repository));
            if written > 0 {
                request = request.header("range", format!("bytes={written}-"));
            }
            let mut response = self.send(&request)?;
            let status = response.status();
            if !status.is_success() {
                return Err(error_from(&url, "GET blob", response));
            }
            // A 200 to a range request repeats the start: skip what we already have.
            let mut skip = if written > 0 && status != StatusCode::PARTIAL_CONTENT {
                written
            } else {
                0
            };
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 256 << 10];
            let failure = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        let mut chunk = &buf[..n];
                        if skip > 0 {
                            let s = skip.min(n as u64) as usize;
                            skip -= s as u64;
                            chunk = &chunk[s..];
                        }
                        if let Some(size) = size
                            && written + chunk.len() as u64 > size
                        {
                            return Err(Error::Registry {
                                url,
                                message: format!(
                                    "GET blob: more than the {size} bytes of {digest} its descriptor gives"
                                ),
                            });
                        }
                        out.write_all(chunk).map_err(|e| {
                            Error::io("failed to write blob", digest.to_string(), e)
                        })?;
                        written += chunk.len() as u64;
                        if let Some(report) = progress {
                            report(chunk.len() as u64);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Some(e),
                }
            };
            match failure {
                None => break,
                Some(e) if attempt < self.options.retries => {
                    attempt += 1;
                    tracing::debug!(%digest, written, "blob download interrupted, resuming: {e}");
                    std::thread::sleep(self.backoff(attempt));
                }
                Some(e) => {
                    return Err(Error::Registry {
                        url,
                        message: format!("GET blob interrupted after {written} bytes: {e}"),
                    });
                }
            }
        }
        if let Sink::Hashing(hashing) = out {
            let (_, actual, _) = hashing.finish();
            if actual != *digest {
                return Err(wrong_blob(url, *digest, actual, written, size));
            }
        }
        Ok(written)
    }

    /// Reads a small blob (a config) into memory, verified.
    pub fn fetch_blob_bytes(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.fetch_blob(repository, digest, Some(size), &mut bytes, true, None)?;
        Ok(bytes)
    }

    /// Asks the registry to mount `digest` from `from` into `repository`; true if it did.
    pub fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool> {
        let path = format!(
            "/v2/{repository}/blobs/uploads/?mount={}&from={}",
            digest,
            percent_encode(from)
        );
        let url = self.url(&path);
        let mut request = Request::new("POST", url.clone(), push_scope(repository));
        request.scopes.push(pull_scope(from));
        // Optional to the registry: a failure falls back to an upload, without retries.
        request.replayable = false;
        let response = self.send(&request)?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            // 202: the registry opened an ordinary upload instead; abandoning it is harmless.
            s if s.is_success() => Ok(false),
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(false),
            _ => Err(error_from(&url, "POST blob mount", response)),
        }
    }

    /// Uploads a blob of `size` bytes, restarting from the start of the blob on a failure.
    pub fn upload_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        source: BlobSource<'_>,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<()> {
        let mut chunked =
            size > self.options.monolithic_limit && matches!(source, BlobSource::File(_));
        let mut attempt = 0;
        loop {
            let result = self.upload_once(repository, digest, size, source, progress, chunked);
            match result {
                Ok(()) => return Ok(()),
                Err(UploadError::ChunksRefused) => {
                    tracing::debug!(%digest, "registry refused chunked upload, uploading monolithically");
                    chunked = false;
                }
                Err(UploadError::Transient(e)) if attempt < self.options.retries => {
                    attempt += 1;
                    tracing::debug!(%digest, attempt, "upload failed, restarting: {e}");
                    std::thread::sleep(self.backoff(attempt));
                }
                Err(UploadError::Transient(e) | UploadError::Fatal(e)) => return Err(e),
            }
        }
    }

    fn upload_once(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        source: BlobSource<'_>,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        chunked: bool,
    ) -> Result<(), UploadError> {
        let start_url = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        let response = self.send(&Request::new(
            "POST",
            start_url.clone(),
            push_scope(repository),
        ))?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(fail(&start_url, "POST blob upload", response));
        }
        let mut location = self.location(&response, &start_url)?;
        let payload = |offset: u64, len: u64| match source {
            BlobSource::File(path) => Payload::File {
                path,
                offset,
                len,
                progress,
            },
            BlobSource::Bytes(bytes) => {
                Payload::Bytes(&bytes[offset as usize..(offset + len) as usize])
            }
        };
        let mut offset = 0;
        if chunked {
            while offset < size {
                let len = self.options.chunk_size.min(size - offset);
                let mut request = Request::new("PATCH", location.clone(), push_scope(repository))
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{}-{}", offset, offset + len - 1));
                request.body = payload(offset, len);
                request.replayable = false;
                let response = self.send(&request).map_err(UploadError::Transient)?;
                match response.status() {
                    StatusCode::ACCEPTED | StatusCode::NO_CONTENT => {}
                    StatusCode::RANGE_NOT_SATISFIABLE
                    | StatusCode::METHOD_NOT_ALLOWED
                    | StatusCode::NOT_IMPLEMENTED => {
                        return Err(UploadError::ChunksRefused);
                    }
                    _ => return Err(fail(&location, "PATCH blob chunk", response)),
                }
                location = self.location(&response, &location)?;
                offset += len;
            }
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let mut request = Request::new("PUT", put_url.clone(), push_scope(repository));
        if offset < size {
            request = request.header("content-type", "application/octet-stream");
            request.body = payload(offset, size - offset);
        }
        request.replayable = false;
        let response = self.send(&request).map_err(UploadError::Transient)?;
        if response.status() == StatusCode::CREATED || response.status().is_success() {
            return Ok(());
        }
        Err(fail(&put_url, "PUT blob", response))
    }

    fn location(
        &self,
        response: &ureq::http::Response<ureq::Body>,
        url: &str,
    ) -> Result<String, UploadError> {
        match header(response, "location") {
            Some(l) => Ok(self.resolve_location(l)),
            None => Err(UploadError::Fatal(Error::Registry {
                url: url.to_string(),
                message: "upload response has no Location header".into(),
            })),
        }
    }
}

enum Sink<'a> {
    Hashing(HashingWriter<&'a mut dyn Write>),
    Plain(&'a mut dyn Write),
}

impl Sink<'_> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Hashing(w) => w.write_all(bytes),
            Sink::Plain(w) => w.write_all(bytes),
        }
    }
}

enum UploadError {
    /// Worth another attempt from the start of the blob.
    Transient(Error),
    ChunksRefused,
    Fatal(Error),
}

impl From<Error> for UploadError {
    fn from(e: Error) -> Self {
        UploadError::Transient(e)
    }
}

/// A 5xx after the retries in `send` is still worth a fresh session; 4xx are final.
fn fail(url: &str, what: &str, response: ureq::http::Response<ureq::Body>) -> UploadError {
    let transient = response.status().is_server_error();
    let e = error_from(url, what, response);
    if transient {
        UploadError::Transient(e)
    } else {
        UploadError::Fatal(e)
    }
}

/// The error for a blob body that does not hash to the digest asked for: the registry's
/// fault, named by its URL, with the size sent when the descriptor gives another.
pub(crate) fn wrong_blob(
    url: String,
    expected: Digest,
    actual: Digest,
    sent: u64,
    size: Option<u64>,
) -> Error {
    let detail = match size {
        Some(size) if size != sent => format!(" ({sent} bytes; the manifest gives {size})"),
        _ => String::new(),
    };
    Error::RegistryDigestMismatch {
        url,
        expected,
        actual,
        detail,
    }
}

pub(crate) fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    header(response, "content-length")?.parse().ok()
}
