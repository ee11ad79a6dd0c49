//! `unpack_layer`: an OCI layer blob -> a directory in overlay on-disk form, safe against
//! hostile archives.
//!
//! The tar crate parses headers (ustar, GNU long names, PAX); extraction is ours, because
//! the crate's unpacker turns devices into files, knows no whiteouts and resolves paths on
//! the host. Each entry's name is cleaned lexically (a `..` that climbs above the root is
//! refused), its parent is opened beneath the target with `openat2(RESOLVE_BENEATH)` (see
//! `root.rs`), and the entry itself is made with `*at` calls that never follow its last
//! component. Whiteouts become overlayfs' form: `.wh.NAME` -> char device 0/0 `NAME`,
//! `.wh..wh..opq` -> `trusted.overlay.opaque=y` on the directory. Later entries replace
//! earlier ones, a directory over a directory merges, and directory times are set last.
//! On error the target holds a partial tree: the caller unpacks into a staging directory
//! and removes it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::compress::decoder;
use super::guard::Guard;
use super::pax::Extensions;
use super::pipe::{self, ChunkReader};
use super::root::{Root, remove_all};
use super::{OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, is_layer_xattr};
use crate::Digest;
use crate::error::{Error, Result};

const BUFFER: usize = 1 << 20;
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// Unpacks the layer read from `input` into `target` (an existing, empty directory) and
/// returns its diff_id, the sha256 of the whole uncompressed tar stream.
pub fn unpack_layer(input: impl Read, target: &Path) -> Result<Digest> {
    let root = Root::open(target)
        .map_err(|e| Error::io("failed to open unpack target", target, e.into()))?;
    let mut decompressed = decoder(input).map_err(Error::LayerStream)?;
    let (to_extractor, from_feeder) = mpsc::sync_channel(pipe::IN_FLIGHT);
    let (recycle, recycled) = mpsc::sync_channel(pipe::IN_FLIGHT + 2);
    let abort = AtomicBool::new(false);

    // This thread: decompression + diff_id. Extracting thread: tar parsing + file system.
    let (extracted, fed) = std::thread::scope(|scope| {
        let extractor = scope.spawn(|| {
            let result = extract(ChunkReader::new(from_feeder, recycle), root);
            if result.is_err() {
                abort.store(true, Ordering::Release);
            }
            result
        });
        let fed = pipe::feed(&mut decompressed, to_extractor, recycled, &abort);
        (extractor.join(), fed)
    });
    let extracted = extracted.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    match (extracted, fed) {
        // A broken stream also makes the parser fail; the stream's error says why.
        (_, Err(e)) => Err(Error::LayerStream(e)),
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Some(diff_id))) => Ok(diff_id),
        (Ok(()), Ok(None)) => Err(Error::LayerStream(io::Error::other("unpack aborted"))),
    }
}

fn extract(stream: ChunkReader, root: Root) -> Result<()> {
    let mut archive = tar::Archive::new(Guard::new(stream));
    let mut unpacker = Unpacker {
        root,
        dir_times: BTreeMap::new(),
        buffer: vec![0u8; BUFFER],
    };
    for entry in archive.entries().map_err(Error::LayerStream)? {
        let mut entry = entry.map_err(Error::LayerStream)?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.set_dir_times()
}

struct Unpacker {
    root: Root,
    /// Directory path -> mtime, applied after everything else is written (creating
    /// children changes a directory's mtime).
    dir_times: BTreeMap<Vec<u8>, Timespec>,
    buffer: Vec<u8>,
}

/// An entry's metadata, read from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_name = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw_name).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(());
        }
        let refuse = |reason: &str| Error::LayerEntry {
            entry: display.clone(),
            reason: reason.to_string(),
        };
        let io_error = |context: &'static str, e: io::Error| Error::LayerEntryIo {
            entry: display.clone(),
            context,
            source: e,
        };
        let meta = read_meta(entry).map_err(|e| io_error("failed to read header", e))?;
        let rel = clean(&raw_name).ok_or_else(|| refuse("escapes the layer root"))?;
        if rel.is_empty() {
            // The root itself ("./"): only a directory may describe it.
            if !entry_type.is_dir() && !raw_name.ends_with(b"/") {
                return Err(refuse("names the layer root but is not a directory"));
            }
            let fd = self
                .root
                .open_dir(b"")
                .map_err(|e| io_error("failed to open the layer root", e.into()))?;
            apply_to_fd(&fd, &meta).map_err(|(context, e)| io_error(context, e))?;
            self.dir_times.insert(Vec::new(), meta.mtime);
            return Ok(());
        }
        if rel.starts_with(AUFS_META_PREFIX.as_bytes()) {
            // AUFS metadata at the root (`.wh..wh.plnk/`, `.wh..wh.aufs`, `.wh..wh.orph/`):
            // not part of the layer's content; docker skips it too.
            return Ok(());
        }
        let split = rel.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let parent = rel[..split.saturating_sub(1)].to_vec();
        let name = rel[split..].to_vec();

        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if name == OPAQUE_MARKER.as_bytes() {
                let dir = self.parent(&parent, &display)?;
                return set_xattr_fd(dir, OPAQUE_XATTR.as_bytes(), b"y")
                    .map_err(|e| io_error("failed to mark the directory opaque", e));
            }
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Ok(()); // other AUFS metadata, as above
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(refuse("is a whiteout that names no file"));
            }
            let whiteout = Meta {
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                mtime: meta.mtime,
                xattrs: Vec::new(),
            };
            return self.make_node(
                &parent,
                hidden,
                FileType::CharacterDevice,
                0,
                &whiteout,
                &display,
            );
        }

        use tar::EntryType as T;
        match entry_type {
            T::Directory => self.make_dir(&rel, &parent, &name, &meta, &display),
            // Pre-POSIX (v7) archives mark directories only by a trailing slash.
            T::Regular if raw_name.ends_with(b"/") => {
                self.make_dir(&rel, &parent, &name, &meta, &display)
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.make_file(entry, &parent, &name, &meta, &display)
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("is a symlink without a target"))?;
                let target = target.into_owned();
                self.make_symlink(&parent, &name, &target, &meta, &display)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("is a hard link without a target"))?;
                let target = target.into_owned();
                self.make_hard_link(&parent, &name, &target, &display)
            }
            T::Char | T::Block => {
                let file_type = if entry_type == T::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let rdev = rustix::fs::makedev(major, minor);
                self.make_node(&parent, &name, file_type, rdev, &meta, &display)
            }
            T::Fifo => self.make_node(&parent, &name, FileType::Fifo, 0, &meta, &display),
            other => Err(refuse(&format!(
                "has unsupported tar type {:?}",
                other.as_byte() as char
            ))),
        }
    }

    /// The parent directory of an entry, resolved beneath the root (created if missing).
    fn parent(&mut self, parent: &[u8], display: &str) -> Result<BorrowedFd<'_>> {
        self.root
            .parent(parent)
            .map_err(|e| resolve_error(display, e))
    }

    /// Removes whatever is at `name` in the parent (unless `keep_dir` and it is a directory).
    fn clear(&mut self, parent: &[u8], name: &[u8], keep_dir: bool, display: &str) -> Result<()> {
        let dir = self.parent(parent, display)?;
        if keep_dir
            && let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        {
            return Ok(());
        }
        let removed = remove_all(dir, name)
            .map_err(|e| io_entry(display, "failed to replace the existing file", e))?;
        if removed {
            self.root.invalidate();
        }
        Ok(())
    }

    fn make_dir(
        &mut self,
        rel: &[u8],
        parent: &[u8],
        name: &[u8],
        meta: &Meta,
        display: &str,
    ) -> Result<()> {
        self.clear(parent, name, true, display)?;
        let dir = self.parent(parent, display)?;
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_entry(display, "failed to create directory", e)),
        }
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_entry(display, "failed to open directory", e))?;
        apply_to_fd(&fd, meta).map_err(|(context, e)| Error::LayerEntryIo {
            entry: display.to_string(),
            context,
            source: e,
        })?;
        self.dir_times.insert(rel.to_vec(), meta.mtime);
        Ok(())
    }

    fn make_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[u8],
        name: &[u8],
        meta: &Meta,
        display: &str,
    ) -> Result<()> {
        self.clear(parent, name, false, display)?;
        let dir = self.parent(parent, display)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| io_entry(display, "failed to create file", e))?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) if written < entry.size() => {
                    let missing = entry.size() - written;
                    return Err(Error::LayerStream(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "entry {display:?} is cut short ({missing} of {} bytes missing)",
                            entry.size()
                        ),
                    )));
                }
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::LayerStream(e)),
            };
            written += n as u64;
            file.write_all(&self.buffer[..n])
                .map_err(|e| Error::LayerEntryIo {
                    entry: display.to_string(),
                    context: "failed to write file",
                    source: e,
                })?;
        }
        apply_to_fd(&file, meta).map_err(|(context, e)| Error::LayerEntryIo {
            entry: display.to_string(),
            context,
            source: e,
        })?;
        rustix::fs::futimens(&file, &times(meta.mtime))
            .map_err(|e| io_entry(display, "failed to set times", e))
    }

    fn make_symlink(
        &mut self,
        parent: &[u8],
        name: &[u8],
        target: &[u8],
        meta: &Meta,
        display: &str,
    ) -> Result<()> {
        self.clear(parent, name, false, display)?;
        let dir = self.parent(parent, display)?;
        // The target is stored as is: it is only ever resolved beneath a root (by this
        // unpacker or inside a container), never on the host.
        rustix::fs::symlinkat(target, dir, name)
            .map_err(|e| io_entry(display, "failed to create symlink", e))?;
        finish_at(dir, name, meta, false).map_err(|(context, e)| io_entry(display, context, e))
    }

    fn make_node(
        &mut self,
        parent: &[u8],
        name: &[u8],
        file_type: FileType,
        rdev: u64,
        meta: &Meta,
        display: &str,
    ) -> Result<()> {
        self.clear(parent, name, false, display)?;
        let dir = self.parent(parent, display)?;
        rustix::fs::mknodat(
            dir,
            name,
            file_type,
            Mode::from_raw_mode(meta.mode & 0o777),
            rdev,
        )
        .map_err(|e| io_entry(display, "failed to create device node", e))?;
        finish_at(dir, name, meta, true).map_err(|(context, e)| io_entry(display, context, e))
    }

    fn make_hard_link(
        &mut self,
        parent: &[u8],
        name: &[u8],
        target: &[u8],
        display: &str,
    ) -> Result<()> {
        let refuse = |reason: String| Error::LayerEntry {
            entry: display.to_string(),
            reason,
        };
        let target_display = String::from_utf8_lossy(target);
        let source = clean(target).filter(|s| !s.is_empty()).ok_or_else(|| {
            refuse(format!(
                "is a hard link to {target_display:?}, outside the layer root"
            ))
        })?;
        let split = source.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let (source_parent, source_name) = (&source[..split.saturating_sub(1)], &source[split..]);
        if source_parent == parent && source_name == name {
            return Err(refuse("is a hard link to itself".to_string()));
        }
        let source_dir = match self.root.open_dir(source_parent) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => {
                return Err(refuse(format!(
                    "is a hard link to {target_display:?}, which does not exist"
                )));
            }
            Err(e) => return Err(resolve_error(display, e)),
        };
        match rustix::fs::statat(&source_dir, source_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                return Err(refuse(format!(
                    "is a hard link to {target_display:?}, a directory"
                )));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(refuse(format!(
                    "is a hard link to {target_display:?}, which does not exist"
                )));
            }
            Err(e) => {
                return Err(io_entry(
                    display,
                    "failed to look up the hard link target",
                    e,
                ));
            }
        }
        self.clear(parent, name, false, display)?;
        let dir = self.parent(parent, display)?;
        // Flags 0: a symlink as the source is linked itself, never followed.
        rustix::fs::linkat(&source_dir, source_name, dir, name, AtFlags::empty())
            .map_err(|e| io_entry(display, "failed to create hard link", e))
    }

    /// Directory mtimes, last, since creating entries inside changed them.
    fn set_dir_times(&mut self) -> Result<()> {
        for (rel, mtime) in &self.dir_times {
            let display = String::from_utf8_lossy(rel);
            let split = rel.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            let result = if rel.is_empty() {
                rustix::fs::futimens(self.root.fd(), &times(*mtime))
            } else {
                // A later entry may have replaced the directory; then its time is not ours.
                match self.root.open_dir(&rel[..split.saturating_sub(1)]) {
                    Ok(parent) => {
                        match rustix::fs::statat(&parent, &rel[split..], AtFlags::SYMLINK_NOFOLLOW)
                        {
                            Ok(stat)
                                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory =>
                            {
                                rustix::fs::utimensat(
                                    &parent,
                                    &rel[split..],
                                    &times(*mtime),
                                    AtFlags::SYMLINK_NOFOLLOW,
                                )
                            }
                            _ => Ok(()),
                        }
                    }
                    Err(Errno::NOENT | Errno::NOTDIR) => Ok(()),
                    Err(e) => Err(e),
                }
            };
            result.map_err(|e| io_entry(&display, "failed to set directory times", e))?;
        }
        Ok(())
    }
}

/// Cleans an entry name: drops leading `/` (as docker does), `.` and empty components,
/// and applies `..`; `None` when a `..` would climb above the root.
fn clean(name: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    Some(parts.join(&b'/'))
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let header = entry.header();
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what} out of range"));
    let mode = header.mode()? & 0o7777;
    let uid = u32::try_from(header.uid()?)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| invalid("uid"))?;
    let gid = u32::try_from(header.gid()?)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| invalid("gid"))?;
    let header_mtime = i64::try_from(header.mtime()?).map_err(|_| invalid("mtime"))?;
    let extensions = Extensions::read(entry)?;
    let (secs, nanos) = extensions.mtime.unwrap_or((header_mtime, 0));
    let xattrs = extensions
        .xattrs
        .into_iter()
        .filter(|(name, _)| is_layer_xattr(name))
        .collect();
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime: Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        },
        xattrs,
    })
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs, on an open file or directory.
fn apply_to_fd(fd: impl AsFd, meta: &Meta) -> Result<(), (&'static str, io::Error)> {
    let fd = fd.as_fd();
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| ("failed to set owner", e.into()))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
        .map_err(|e| ("failed to set mode", e.into()))?;
    for (name, value) in &meta.xattrs {
        set_xattr_fd(fd, name, value).map_err(|e| ("failed to set xattr", e))?;
    }
    Ok(())
}

/// Owner, mode (not for symlinks), xattrs and times of `name` in `dir`, not following it.
fn finish_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    chmod: bool,
) -> Result<(), (&'static str, Errno)> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ("failed to set owner", e))?;
    if chmod {
        // A device or fifo just made by mknodat in a directory only this unpacker writes.
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(|e| ("failed to set mode", e))?;
    }
    if !meta.xattrs.is_empty() {
        // lsetxattr on the path through our own fd of the parent: the last component is
        // not followed, and the parent is the directory already resolved beneath the root.
        let mut path =
            format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
        path.extend_from_slice(name);
        let path = OsStr::from_bytes(&path);
        for (key, value) in &meta.xattrs {
            match rustix::fs::lsetxattr(path, OsStr::from_bytes(key), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => {
                    tracing::warn!(xattr = %String::from_utf8_lossy(key), "filesystem does not support xattr, skipped")
                }
                Err(e) => return Err(("failed to set xattr", e)),
            }
        }
    }
    rustix::fs::utimensat(dir, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ("failed to set times", e))
}

fn set_xattr_fd(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    match rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOTSUP) => {
            tracing::warn!(xattr = %String::from_utf8_lossy(name), "filesystem does not support xattr, skipped");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn io_entry(display: &str, context: &'static str, e: Errno) -> Error {
    Error::LayerEntryIo {
        entry: display.to_string(),
        context,
        source: e.into(),
    }
}

/// Maps a failed lookup beneath the root to the reason an expert wants to read.
fn resolve_error(display: &str, e: Errno) -> Error {
    let reason = match e {
        Errno::XDEV => "escapes the layer root through a symlink",
        Errno::LOOP => "resolves through a symlink loop or a magic link",
        Errno::NOTDIR => "has a parent that is not a directory",
        _ => return io_entry(display, "failed to open the parent directory", e),
    };
    Error::LayerEntry {
        entry: display.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn clean_strips_leading_slash_and_dots() {
        assert_eq!(clean(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(clean(b"./a/./b/").unwrap(), b"a/b");
        assert_eq!(clean(b"a/../b").unwrap(), b"b");
        assert_eq!(clean(b"./").unwrap(), b"");
    }

    #[test]
    fn clean_refuses_climbing_above_root() {
        assert!(clean(b"../etc/passwd").is_none());
        assert!(clean(b"a/../../b").is_none());
        assert!(clean(b"/..").is_none());
    }
}
