//! `write_layer`: a directory in overlay on-disk form -> an OCI layer blob, streamed.
//!
//! The headers are written by hand (ustar + PAX) rather than with `tar::Builder`'s walker,
//! which drops xattrs and stores hard links twice. Every field is a function of the tree
//! alone (numeric ids, no user/group names, fixed PAX header names), so the same tree gives
//! the same bytes anywhere. The tar is hashed (diff_id), compressed and hashed again
//! (digest) in the one pass that writes it to `out`; file data streams through one reused
//! buffer, so memory does not grow with the layer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc;

use super::compress::Encoder;
use super::pax::{Records, XATTR_PREFIX};
use super::pipe::{self, ChunkWriter};
use super::walk::{self, Kind, Node};
use super::{LayerInfo, WriteOptions};
use crate::Digest;
use crate::digest::HashingWriter;
use crate::error::{Error, Result};

const BLOCK: usize = 512;
/// Largest value of the 8-byte octal uid/gid fields and the 12-byte size field.
const MAX_ID: u64 = 0o7777777;
const MAX_SIZE: u64 = 0o77777777777;

/// Writes the layer of `dir` to `out` and returns its digests. See the module docs.
pub fn write_layer(dir: &Path, opts: &WriteOptions, out: impl Write) -> Result<LayerInfo> {
    let nodes = walk::walk(dir)?;
    let out_error = |e| Error::io("failed to write the layer blob of", dir, e);

    let blob = HashingWriter::new(out);
    let mut encoder = Encoder::new(opts.compression, opts.level, blob).map_err(out_error)?;
    let (to_consumer, from_producer) = mpsc::sync_channel(pipe::IN_FLIGHT);
    let (recycle, recycled) = mpsc::sync_channel(pipe::IN_FLIGHT + 2);

    // Producer thread: tar + file reads + diff_id. This thread: compression + digest.
    let (produced, drained) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| -> Result<Digest> {
            let mut tar = ChunkWriter::new(to_consumer, recycled);
            let mut writer = TarWriter {
                opts,
                first_links: HashMap::new(),
            };
            for node in &nodes {
                writer.entry(&mut tar, node)?;
            }
            // End of archive: two zero blocks (POSIX.1-1988 ustar).
            tar.write_all(&[0u8; 2 * BLOCK]).map_err(out_error)?;
            tar.finish().map_err(out_error)
        });
        let drained = pipe::drain(from_producer, recycle, &mut encoder);
        (producer.join(), drained)
    });
    let diff_id = match (produced, drained) {
        // An output error stops the producer with a broken pipe: report the output's.
        (_, Err(e)) => return Err(out_error(e)),
        (Ok(result), Ok(())) => result?,
        (Err(panic), Ok(())) => std::panic::resume_unwind(panic),
    };
    let blob = encoder.finish().map_err(out_error)?;
    let (mut out, digest, size) = blob.finish();
    out.flush().map_err(out_error)?;
    Ok(LayerInfo {
        digest,
        diff_id,
        size,
        media_type: opts.compression.media_type(),
    })
}

struct TarWriter<'a> {
    opts: &'a WriteOptions,
    /// (dev, ino) of multiply-linked files -> the tar name they were first stored under.
    first_links: HashMap<(u64, u64), Vec<u8>>,
}

impl TarWriter<'_> {
    fn entry(&mut self, tar: &mut ChunkWriter, node: &Node) -> Result<()> {
        let out_error = |e| Error::io("failed to write the layer entry for", &node.source, e);
        let hard_link = node.nlink > 1
            && !matches!(node.kind, Kind::Dir | Kind::Whiteout | Kind::OpaqueMarker)
            && {
                let first = self
                    .first_links
                    .entry((node.dev, node.ino))
                    .or_insert_with(|| node.name.clone());
                *first != node.name
            };
        let (entry_type, size, link): (tar::EntryType, u64, Option<&[u8]>) = if hard_link {
            (
                tar::EntryType::Link,
                0,
                Some(self.first_links[&(node.dev, node.ino)].as_slice()),
            )
        } else {
            match &node.kind {
                Kind::File => (tar::EntryType::Regular, node.size, None),
                Kind::Dir => (tar::EntryType::Directory, 0, None),
                Kind::Symlink(target) => (tar::EntryType::Symlink, 0, Some(target.as_slice())),
                Kind::Fifo => (tar::EntryType::Fifo, 0, None),
                Kind::Char(_) => (tar::EntryType::Char, 0, None),
                Kind::Block(_) => (tar::EntryType::Block, 0, None),
                Kind::Whiteout | Kind::OpaqueMarker => (tar::EntryType::Regular, 0, None),
            }
        };
        let mut name = node.name.clone();
        if entry_type == tar::EntryType::Directory {
            name.push(b'/');
        }
        let rdev = match node.kind {
            Kind::Char(rdev) | Kind::Block(rdev) if !hard_link => rdev,
            _ => 0,
        };
        let mtime = match self.opts.source_date_epoch {
            Some(epoch) => node.mtime.min(epoch),
            None => node.mtime,
        };
        // A hard link shares its inode's xattrs, stored once with the data.
        let xattrs = if hard_link || matches!(node.kind, Kind::Whiteout | Kind::OpaqueMarker) {
            &[][..]
        } else {
            &node.xattrs[..]
        };

        let mut header = tar::Header::new_ustar();
        let mut records = Records::default();
        set_bytes(&mut header.as_old_mut().name, &name, b"path", &mut records);
        if let Some(link) = link {
            set_bytes(
                &mut header.as_old_mut().linkname,
                link,
                b"linkpath",
                &mut records,
            );
        }
        header.set_entry_type(entry_type);
        header.set_mode(node.mode);
        header.set_mtime(mtime.max(0) as u64);
        set_number(
            &mut header,
            u64::from(node.uid),
            MAX_ID,
            b"uid",
            &mut records,
            tar::Header::set_uid,
        );
        set_number(
            &mut header,
            u64::from(node.gid),
            MAX_ID,
            b"gid",
            &mut records,
            tar::Header::set_gid,
        );
        set_number(
            &mut header,
            size,
            MAX_SIZE,
            b"size",
            &mut records,
            tar::Header::set_size,
        );
        header
            .set_device_major(rustix::fs::major(rdev))
            .map_err(out_error)?;
        header
            .set_device_minor(rustix::fs::minor(rdev))
            .map_err(out_error)?;
        for (key, value) in xattrs {
            let mut full_key = XATTR_PREFIX.to_vec();
            full_key.extend_from_slice(key);
            records.add(&full_key, value);
        }
        header.set_cksum();

        if !records.is_empty() {
            write_pax(tar, &records).map_err(out_error)?;
        }
        tar.write_all(header.as_bytes()).map_err(out_error)?;
        if entry_type == tar::EntryType::Regular && size > 0 {
            self.copy_file(tar, node)?;
            let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
            tar.write_all(&[0u8; BLOCK][..pad]).map_err(out_error)?;
        }
        Ok(())
    }

    /// Streams exactly `node.size` bytes of the file; a file that changed size since the
    /// walk is an error rather than a silently inconsistent layer.
    fn copy_file(&mut self, tar: &mut ChunkWriter, node: &Node) -> Result<()> {
        let read_error = |e| Error::io("failed to read", &node.source, e);
        let mut file = File::open(&node.source).map_err(read_error)?;
        let read = tar.read_from(&mut file, node.size).map_err(read_error)?;
        if read < node.size {
            return Err(read_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file shrank while being archived ({} of {} bytes missing)",
                    node.size - read,
                    node.size
                ),
            )));
        }
        Ok(())
    }
}

/// Puts `value` in a fixed header field, or a PAX record when it does not fit.
fn set_bytes(field: &mut [u8; 100], value: &[u8], key: &[u8], records: &mut Records) {
    if value.len() > field.len() {
        records.add(key, value);
    }
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Puts a number in its octal header field, or a PAX record (and 0) when it is too big.
fn set_number(
    header: &mut tar::Header,
    value: u64,
    max: u64,
    key: &[u8],
    records: &mut Records,
    set: fn(&mut tar::Header, u64),
) {
    if value > max {
        records.add(key, value.to_string().as_bytes());
        set(header, 0);
    } else {
        set(header, value);
    }
}

/// A PAX extended header entry (typeflag `x`) with a fixed name and no times, so that it
/// adds nothing machine-dependent.
fn write_pax<W: Write>(tar: &mut W, records: &Records) -> io::Result<()> {
    let data = records.as_bytes();
    let mut header = tar::Header::new_ustar();
    set_bytes(
        &mut header.as_old_mut().name,
        b"PaxHeader",
        b"",
        &mut Records::default(),
    );
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_device_major(0)?;
    header.set_device_minor(0)?;
    header.set_cksum();
    tar.write_all(header.as_bytes())?;
    tar.write_all(data)?;
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    tar.write_all(&[0u8; BLOCK][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes of 8 GiB and more and ids past 2097151 do not fit ustar's octal fields: they
    /// go to PAX records, which readers (the tar crate here) prefer to the header.
    #[test]
    fn oversized_numbers_go_to_pax_records() {
        let mut header = tar::Header::new_ustar();
        let mut records = Records::default();
        let size = 9 << 30;
        set_number(
            &mut header,
            size,
            MAX_SIZE,
            b"size",
            &mut records,
            tar::Header::set_size,
        );
        set_number(
            &mut header,
            3_000_000,
            MAX_ID,
            b"uid",
            &mut records,
            tar::Header::set_uid,
        );
        set_number(
            &mut header,
            42,
            MAX_ID,
            b"gid",
            &mut records,
            tar::Header::set_gid,
        );
        set_bytes(
            &mut header.as_old_mut().name,
            b"huge",
            b"path",
            &mut records,
        );
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        assert_eq!(header.size().unwrap(), 0);

        let mut tar = Vec::new();
        write_pax(&mut tar, &records).unwrap();
        tar.extend_from_slice(header.as_bytes());
        let mut archive = tar::Archive::new(&tar[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.size(), size);
        assert_eq!(entry.header().uid().unwrap(), 3_000_000);
        assert_eq!(entry.header().gid().unwrap(), 42);
        assert_eq!(&*entry.path_bytes(), b"huge");
    }
}
