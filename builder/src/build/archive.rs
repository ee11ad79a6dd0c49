//! ADD's extras: local tar archives are unpacked (plain, gzip, bzip2, xz, zstd, told
//! apart by their first bytes, not their names), and http(s) URLs are downloaded into the
//! store's tmp/ and checked against `--checksum`.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use strata_store::Store;

use super::copy::link_to_dir;
use crate::tree::Tree;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn compression(head: &[u8]) -> Option<Format> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Format::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(Format::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Format::Xz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Format::Zstd)
    } else {
        None
    }
}

fn is_tar_header(block: &[u8]) -> bool {
    block.len() >= 512 && (&block[257..262] == b"ustar")
}

fn decoder(format: Format, file: fs::File) -> io::Result<Box<dyn Read>> {
    let reader = BufReader::new(file);
    Ok(match format {
        Format::Tar => Box::new(reader),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Format::Xz => {
            // lzma-rs decodes into a writer: decode to memory, then read from it
            let mut reader = reader;
            let mut out = Vec::new();
            lzma_rs::xz_decompress(&mut reader, &mut out)
                .map_err(|e| io::Error::other(format!("xz: {e}")))?;
            Box::new(io::Cursor::new(out))
        }
    })
}

/// The archive format of `path` if it is a (possibly compressed) tar.
pub(crate) fn detect(path: &Path) -> Option<Format> {
    let mut head = [0u8; 6];
    let mut file = fs::File::open(path).ok()?;
    let read = file.read(&mut head).ok()?;
    let format = compression(&head[..read]).unwrap_or(Format::Tar);
    let mut stream = decoder(format, fs::File::open(path).ok()?).ok()?;
    let mut block = vec![0u8; 512];
    stream.read_exact(&mut block).ok()?;
    is_tar_header(&block).then_some(format)
}

/// Unpacks archive `path` into directory `target` (merging with what is there).
/// Unpacks the archive at `path` into `upper` at `dest` (relative), merged with what is
/// there; its directories follow the image's symlinks as COPY's do.
pub(crate) fn extract(
    store: &Store,
    path: &Path,
    tree: &Tree,
    upper: &Path,
    dest: &str,
) -> Result<(), String> {
    let format = detect(path).ok_or("not a tar archive")?;
    let stream = decoder(format, fs::File::open(path).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let staging = store
        .tmp_dir_create("add-extract")
        .map_err(|e| e.to_string())?;
    let result = strata_store::layer::unpack_layer(stream, &staging)
        .map_err(|e| e.to_string())
        .and_then(|_| merge(&staging, tree, upper, dest));
    let _ = fs::remove_dir_all(&staging);
    result
}

/// Moves everything in `from` into `upper` at `rel`, merging directories.
fn merge(from: &Path, tree: &Tree, upper: &Path, rel: &str) -> Result<(), String> {
    let io = |e: io::Error| e.to_string();
    for item in fs::read_dir(from).map_err(io)? {
        let item = item.map_err(io)?;
        let name = item.file_name();
        let mut item_rel = Path::new(rel).join(&name).to_string_lossy().into_owned();
        let source_is_dir = item.file_type().map_err(io)?.is_dir();
        if source_is_dir
            && let Some(to) = link_to_dir(tree, upper, &item_rel).map_err(|e| e.to_string())?
        {
            item_rel = to;
        }
        let dest = upper.join(&item_rel);
        match fs::symlink_metadata(&dest) {
            Ok(meta) if meta.is_dir() && source_is_dir => {
                merge(&item.path(), tree, upper, &item_rel)?
            }
            Ok(meta) if meta.is_dir() => {
                fs::remove_dir_all(&dest).map_err(io)?;
                fs::rename(item.path(), &dest).map_err(io)?;
            }
            Ok(_) => {
                fs::remove_file(&dest).map_err(io)?;
                fs::rename(item.path(), &dest).map_err(io)?;
            }
            Err(_) => fs::rename(item.path(), &dest).map_err(io)?,
        }
    }
    Ok(())
}

/// A file `ADD <url>` downloaded.
pub(crate) struct Download {
    /// In the store's tmp/, dated by the response's Last-Modified when it has one.
    pub path: PathBuf,
    /// sha256 of the content (hex).
    pub hash: String,
    /// Its name in a directory: the URL path's last segment, else `__unnamed__` (the
    /// Dockerfile frontend's rule: it never asks the response).
    pub name: String,
}

/// Downloads `url` into the store's tmp/, after checking `checksum` (`sha256:<hex>`) when
/// given.
pub(crate) fn fetch(store: &Store, url: &str, checksum: Option<&str>) -> Result<Download, String> {
    let expected = match checksum {
        None => None,
        Some(text) => Some(
            text.strip_prefix("sha256:")
                .ok_or_else(|| format!("unsupported --checksum {text:?}: use sha256:<hex>"))?
                .to_ascii_lowercase(),
        ),
    };
    let mut response = ureq::get(url)
        .call()
        .map_err(|e| format!("download failed: {e}"))?;
    let modified = response
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok());
    let path = store.tmp_path("add-download");
    let mut hasher = Sha256::new();
    let copied = (|| {
        let mut file = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| format!("download failed: {e}"))?;
            if read == 0 {
                if let Some(time) = modified {
                    let when = rustix::fs::Timestamps {
                        last_access: timespec(time),
                        last_modification: timespec(time),
                    };
                    rustix::fs::futimens(&file, &when)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                return Ok(());
            }
            hasher.update(&buffer[..read]);
            file.write_all(&buffer[..read])
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    })();
    if let Err(err) = copied {
        // A cut download leaves nothing behind.
        let _ = fs::remove_file(&path);
        return Err(err);
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = expected
        && expected != actual
    {
        let _ = fs::remove_file(&path);
        return Err(format!(
            "checksum mismatch: expected sha256:{expected}, got sha256:{actual}"
        ));
    }
    Ok(Download {
        path,
        hash: actual,
        name: url_file_name(url),
    })
}

fn timespec(time: std::time::SystemTime) -> rustix::fs::Timespec {
    let secs = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    }
}

/// The last segment of a URL's path (no query or fragment; Go's `path.Base`, which
/// skips trailing slashes), else `__unnamed__`.
fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let path = path.split_once('/').map_or("", |(_, path)| path);
    match path.split('/').rfind(|s| !s.is_empty()) {
        Some(name) if name != "." && name != ".." => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_follow_the_dockerfile_frontend() {
        for (url, name) in [
            ("http://h:8/a/b.tgz", "b.tgz"),
            ("http://h:8/a/b.tgz?x=1#f", "b.tgz"),
            ("https://h/dir/", "dir"),
            ("https://codeload.example/o/r/tar.gz/refs/tags/v1", "v1"),
            ("http://h:8/", "__unnamed__"),
            ("http://h:8", "__unnamed__"),
        ] {
            assert_eq!(url_file_name(url), name, "{url}");
        }
    }

    #[test]
    fn detects_compressed_tars_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "a.txt", &b"hi"[..])
            .unwrap();
        let tar_bytes = builder.into_inner().unwrap();
        let plain = dir.path().join("x.bin");
        fs::write(&plain, &tar_bytes).unwrap();
        assert_eq!(detect(&plain), Some(Format::Tar));
        let gz = dir.path().join("noext");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&tar_bytes).unwrap();
        fs::write(&gz, encoder.finish().unwrap()).unwrap();
        assert_eq!(detect(&gz), Some(Format::Gzip));
        let bz = dir.path().join("b");
        let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        encoder.write_all(&tar_bytes).unwrap();
        fs::write(&bz, encoder.finish().unwrap()).unwrap();
        assert_eq!(detect(&bz), Some(Format::Bzip2));
        let xz = dir.path().join("c");
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut &tar_bytes[..], &mut out).unwrap();
        fs::write(&xz, out).unwrap();
        assert_eq!(detect(&xz), Some(Format::Xz));
        let zst = dir.path().join("d");
        fs::write(&zst, zstd::encode_all(&tar_bytes[..], 3).unwrap()).unwrap();
        assert_eq!(detect(&zst), Some(Format::Zstd));
        let text = dir.path().join("t.tar");
        fs::write(&text, "not a tar at all").unwrap();
        assert_eq!(detect(&text), None);
    }
}
