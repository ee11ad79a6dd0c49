//! Content-addressed blobs under `oci/blobs/sha256/<hex>`.
//!
//! Writes stream into `tmp/` through a hashing writer and are renamed into place only
//! after fsync and a digest check, so a blob file, once visible, is complete. Every read
//! re-hashes: `read_blob` before returning, `open_blob` when the reader reaches the end
//! (image-spec `descriptor.md#digests`: consumers must verify).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::Digest;
use crate::digest::HashingWriter;
use crate::error::{Error, Result};
use crate::layout::{Store, rename_durable};

impl Store {
    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores `bytes` and returns their digest and size. Storing a blob twice is harmless.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            self.write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok((digest, bytes.len() as u64))
    }

    /// Copies the file at `path` in as the blob `digest`; a file with other content is
    /// refused with `Error::DigestMismatch` and nothing is stored.
    pub fn put_blob_file(&self, path: &Path, digest: &Digest) -> Result<()> {
        let mut input = File::open(path).map_err(|e| Error::io("failed to open blob", path, e))?;
        let mut writer = self.blob_writer()?;
        io::copy(&mut input, &mut writer).map_err(|e| Error::io("failed to copy blob", path, e))?;
        writer.commit(Some(digest))?;
        Ok(())
    }

    /// A writer that streams a blob into `tmp/`; nothing is stored until `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = self.tmp_path("blob");
        let file = File::create_new(&tmp).map_err(|e| Error::io("failed to create", &tmp, e))?;
        // Locked while it is written, so no sweep of `tmp/` takes it for a dead process's
        // leftover (`tmp.rs`). A file system without flock only loses that extra check.
        let _ = file.try_lock();
        Ok(BlobWriter {
            inner: Some(HashingWriter::new(BufWriter::with_capacity(1 << 20, file))),
            tmp,
            blobs: self.blobs_dir(),
        })
    }

    /// Opens a blob for streaming. The reader fails at end of file if the content does
    /// not hash to `digest`; callers must read to the end before trusting what they read.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader> {
        BlobReader::open(&self.blob_path(digest), digest)
    }

    /// Reads a whole blob, verified against its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::BlobNotFound(*digest),
            _ => Error::io("failed to read blob", &path, e),
        })?;
        digest.verify(&bytes)?;
        Ok(bytes)
    }
}

/// A blob being written. Dropping it without `commit` deletes the staged file.
pub struct BlobWriter {
    inner: Option<HashingWriter<BufWriter<File>>>,
    tmp: PathBuf,
    blobs: PathBuf,
}

impl BlobWriter {
    /// Flushes, fsyncs and renames the blob into place. With `expected`, a different
    /// digest is refused with `Error::DigestMismatch` and nothing is stored.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let Some(writer) = self.inner.take() else {
            return Err(Error::Invalid {
                what: self.tmp.display().to_string(),
                message: "blob writer already used".into(),
            });
        };
        let (buffered, digest, size) = writer.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io("failed to write", &self.tmp, e.into_error()))?;
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                expected: *expected,
                actual: digest,
            });
        }
        file.sync_all()
            .map_err(|e| Error::io("failed to fsync", &self.tmp, e))?;
        // Renamed while still open, so still locked: never unlocked under its tmp name.
        let dest = self.blobs.join(digest.hex());
        rename_durable(&self.tmp, &dest)?;
        drop(file);
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Some(writer) => writer.write(buf),
            None => Err(io::Error::other("blob writer already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the tmp file has been renamed away and this fails quietly.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// A blob reader that verifies the digest when it reaches end of file.
pub struct BlobReader {
    file: File,
    hasher: Sha256,
    expected: Digest,
    done: bool,
}

impl BlobReader {
    /// Opens the blob file at `path` (in a store or any OCI layout), checked against
    /// `digest` as it is read.
    pub fn open(path: &Path, digest: &Digest) -> Result<BlobReader> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::BlobNotFound(*digest),
            _ => Error::io("failed to open blob", path, e),
        })?;
        Ok(BlobReader {
            file,
            hasher: Sha256::new(),
            expected: *digest,
            done: false,
        })
    }

    /// Reads whatever is left (discarding it) so the digest check runs.
    pub fn verify_rest(&mut self) -> Result<()> {
        let digest = self.expected;
        io::copy(self, &mut io::sink()).map_err(|e| {
            blob_error(e, |e| {
                Error::io("failed to read blob", format!("sha256:{}", digest.hex()), e)
            })
        })?;
        Ok(())
    }
}

/// An I/O error met while a [`BlobReader`] was read: the blob's own error (its digest
/// mismatch) as it is, any other through `other`.
pub(crate) fn blob_error(err: io::Error, other: impl FnOnce(io::Error) -> Error) -> Error {
    match err.downcast::<Error>() {
        Ok(err) => err,
        Err(err) => other(err),
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            let actual = Digest::from_bytes(self.hasher.clone().finalize().into());
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::DigestMismatch {
                        expected: self.expected,
                        actual,
                    },
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (digest, size) = store.put_blob(b"hello").unwrap();
        assert_eq!(size, 5);
        assert_eq!(store.read_blob(&digest).unwrap(), b"hello");
        let mut text = String::new();
        store
            .open_blob(&digest)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");
    }

    #[test]
    fn writer_refuses_a_wrong_expected_digest_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut writer = store.blob_writer().unwrap();
        writer.write_all(b"abc").unwrap();
        let wrong = Digest::of(b"xyz");
        assert!(matches!(
            writer.commit(Some(&wrong)),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&Digest::of(b"abc")));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_blob_is_refused_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (digest, _) = store.put_blob(b"payload").unwrap();
        fs::write(store.blob_path(&digest), b"paylaod").unwrap();
        assert!(matches!(
            store.read_blob(&digest),
            Err(Error::DigestMismatch { .. })
        ));
        let mut out = Vec::new();
        let err = store
            .open_blob(&digest)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
