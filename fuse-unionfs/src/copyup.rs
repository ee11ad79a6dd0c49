//! Copy-up: makes the upper branch hold a copy of an entry that so far lives only in a
//! lower branch, before anything modifies it. The copy is built in the work dir (data by
//! FICLONE, else copy_file_range of each data extent, holes kept, else read/write; then
//! xattrs, owner, mode, times, fsync) and renamed into place, so the upper dir never shows
//! a half-made file (overlayfs.rst "Non-directories": copy up is atomic through the
//! workdir).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::layer::{Kind, Layers, Meta, Res, UPPER, arg, is_private_xattr};

/// Copies `rel` from `src_layer` into the upper branch; its parent must already be there.
/// Returns Ok if the upper entry exists afterwards (also when a racing copy-up won).
/// Copies of files this big (about 15 ms and up here) run as `fuser::blocking` sections.
const BIG_COPY: u64 = 16 << 20;

pub(crate) fn copy_up(layers: &Layers, src_layer: usize, rel: &Path) -> Res<Meta> {
    copy_up_with(layers, src_layer, rel, true)
}

/// `sync: false` leaves the data unsynced, for a caller that copies many files and
/// syncs the filesystem once before making them visible (a directory rename).
pub(crate) fn copy_up_with(layers: &Layers, src_layer: usize, rel: &Path, sync: bool) -> Res<Meta> {
    let meta = layers.stat(src_layer, rel)?;
    let tmp = layers.tmp_name();
    let copy = || build(layers, src_layer, rel, &meta, &tmp, sync);
    // A big copy takes long enough to hold up the requests queued behind it.
    let built = if meta.kind() == Kind::File && meta.size >= BIG_COPY {
        fuser::blocking(copy)
    } else {
        copy()
    };
    let built = built.and_then(|()| {
        rustix::fs::renameat_with(
            layers.work(),
            &tmp,
            layers.fd(UPPER),
            rel,
            RenameFlags::NOREPLACE,
        )
    });
    match built {
        Ok(()) => Ok(meta),
        Err(err) => {
            remove_tmp(layers, &tmp, meta.kind());
            if err == Errno::EXIST {
                Ok(meta)
            } else {
                Err(err)
            }
        }
    }
}

fn remove_tmp(layers: &Layers, tmp: &Path, kind: Kind) {
    let flags = if kind == Kind::Dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    let _ = rustix::fs::unlinkat(layers.work(), tmp, flags);
}

/// Builds the copy of `rel` at `tmp` in the work dir.
fn build(
    layers: &Layers,
    src_layer: usize,
    rel: &Path,
    meta: &Meta,
    tmp: &Path,
    sync: bool,
) -> Res<()> {
    let work = layers.work();
    let perm = Mode::from_raw_mode(meta.mode & 0o7777);
    match meta.kind() {
        Kind::Dir => rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?,
        Kind::File => {
            let src = rustix::fs::openat(
                layers.fd(src_layer),
                arg(rel),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let dst = rustix::fs::openat(
                work,
                tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            copy_data(src.as_fd(), dst.as_fd(), meta.size)?;
            // Kernel overlayfs syncs the copy before it becomes visible (ovl_copy_up_file).
            if sync {
                rustix::fs::fsync(&dst)?;
            }
        }
        Kind::Symlink => {
            let target = rustix::fs::readlinkat(layers.fd(src_layer), arg(rel), Vec::new())?;
            rustix::fs::symlinkat(target.as_bytes(), work, tmp)?;
        }
        kind => rustix::fs::mknodat(work, tmp, kind.file_type(), perm, meta.rdev)?,
    }
    copy_xattrs(
        &layers.abs(src_layer, rel),
        &layers.work_abs(tmp),
        meta.kind(),
    )?;
    set_owner_mode_times(work, tmp, meta)
}

/// Owner, then mode (chown clears set-id bits), then times, as the source had them.
pub(crate) fn set_owner_mode_times(dir: BorrowedFd<'_>, name: &Path, meta: &Meta) -> Res<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if meta.kind() != Kind::Symlink {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(meta.mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    let times = Timestamps {
        last_access: timespec(meta.atime),
        last_modification: timespec(meta.mtime),
    };
    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
}

pub(crate) fn timespec(t: std::time::SystemTime) -> Timespec {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        },
        Err(e) => {
            let d = e.duration();
            Timespec {
                tv_sec: -(d.as_secs() as i64),
                tv_nsec: 0,
            }
        }
    }
}

/// Data: a reflink when the filesystem shares extents, else each data extent by an
/// in-kernel copy, else by a loop; holes stay holes.
fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> Res<()> {
    if size == 0 || rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    // Data extent by extent: holes stay holes, as overlayfs keeps them. Where lseek gives
    // no answer, or one that makes no sense (a file system that ignores SEEK_DATA), the
    // rest is copied as data.
    let mut copier = Copier {
        src,
        dst,
        by_range: true,
        ranged: 0,
    };
    let mut pos = 0;
    while pos < size {
        let (start, end) = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(pos)) {
            // Only a hole is left (or data past the size, which the file did not have).
            Err(Errno::NXIO) => break,
            Ok(start) if start >= size => break,
            Ok(start) if start >= pos => {
                match rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(start)) {
                    Ok(end) if end > start => (start, end.min(size)),
                    _ => (start, size),
                }
            }
            _ => (pos, size),
        };
        copier.copy(start, end)?;
        pos = end;
    }
    // A trailing hole.
    rustix::fs::ftruncate(dst, size)
}

/// Copies byte ranges at the same offsets: copy_file_range, else read and write.
struct Copier<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    /// copy_file_range works (until it fails before copying anything)...
    by_range: bool,
    /// ...and has copied this much.
    ranged: u64,
}

impl Copier<'_> {
    fn copy(&mut self, mut pos: u64, end: u64) -> Res<()> {
        while self.by_range && pos < end {
            let chunk = (end - pos).min(1 << 30) as usize;
            let (mut from, mut to) = (pos, pos);
            match rustix::fs::copy_file_range(
                self.src,
                Some(&mut from),
                self.dst,
                Some(&mut to),
                chunk,
            ) {
                // The source ends before its size: the loop below says so.
                Ok(0) => self.by_range = false,
                Ok(n) => {
                    pos += n as u64;
                    self.ranged += n as u64;
                }
                Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP)
                    if self.ranged == 0 =>
                {
                    self.by_range = false;
                }
                Err(Errno::INTR) => {}
                Err(err) => return Err(err),
            }
        }
        let mut buf = vec![0u8; (end - pos).min(1 << 20) as usize];
        while pos < end {
            let want = buf.len().min((end - pos) as usize);
            let n = match rustix::io::pread(self.src, &mut buf[..want], pos) {
                // The source is shorter than its size: it changed under the copy.
                Ok(0) => return Err(Errno::IO),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(err) => return Err(err),
            };
            let mut done = 0;
            while done < n {
                match rustix::io::pwrite(self.dst, &buf[done..n], pos + done as u64) {
                    Ok(0) => return Err(Errno::IO),
                    Ok(w) => done += w,
                    Err(Errno::INTR) => {}
                    Err(err) => return Err(err),
                }
            }
            pos += n as u64;
        }
        Ok(())
    }
}

pub(crate) fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_io_error(err).unwrap_or(Errno::IO)
}

/// All xattrs but overlay's private ones. user.* cannot live on symlinks (xattr(7)).
pub(crate) fn copy_xattrs(src: &Path, dst: &Path, kind: Kind) -> Res<()> {
    for name in list_xattrs(src)? {
        if is_private_xattr(&name) {
            continue;
        }
        let value = match get_xattr(src, &name) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        match rustix::fs::lsetxattr(
            dst,
            name.as_os_str(),
            &value,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::PERM | Errno::OPNOTSUPP) if kind == Kind::Symlink => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn list_xattrs(path: &Path) -> Res<Vec<OsString>> {
    Ok(xattr::list(path).map_err(|e| io_errno(&e))?.collect())
}

/// One xattr (not following a symlink); ENODATA when absent.
pub(crate) fn get_xattr(path: &Path, name: &std::ffi::OsStr) -> Res<Vec<u8>> {
    xattr::get(path, name)
        .map_err(|e| io_errno(&e))?
        .ok_or(Errno::NODATA)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A 16 MiB file with 8 KiB of data at 4 MiB and 8 bytes at 12 MiB, in `dir`.
    fn sparse_file(dir: &Path) -> (std::fs::File, Vec<u8>) {
        let path = dir.join("sparse");
        let file = std::fs::File::create_new(&path).unwrap();
        file.set_len(16 << 20).unwrap();
        let mut want = vec![0u8; 16 << 20];
        for (at, data) in [(4 << 20, vec![7u8; 8192]), (12 << 20, b"the end!".to_vec())] {
            rustix::io::pwrite(&file, &data, at as u64).unwrap();
            want[at..at + data.len()].copy_from_slice(&data);
        }
        (std::fs::File::open(&path).unwrap(), want)
    }

    /// Copies from `src_dir` to /var/tmp: the same bytes, the holes left as holes.
    fn copies_sparse(src_dir: &Path) {
        let src = tempfile::tempdir_in(src_dir).unwrap();
        let (file, want) = sparse_file(src.path());
        let dst_dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let dst_path = dst_dir.path().join("copy");
        let dst = std::fs::File::create_new(&dst_path).unwrap();
        copy_data(file.as_fd(), dst.as_fd(), 16 << 20).unwrap();
        assert_eq!(std::fs::read(&dst_path).unwrap(), want);
        let allocated = std::fs::metadata(&dst_path).unwrap().blocks() * 512;
        assert!(allocated <= 1 << 20, "{allocated} bytes allocated");
    }

    #[test]
    fn copy_file_range_copies_the_data_and_keeps_the_holes() {
        copies_sparse(Path::new("/var/tmp"));
    }

    /// tmpfs to ext4: copy_file_range refuses (EXDEV), read and write do the copy.
    #[test]
    fn the_read_write_copy_keeps_the_holes_too() {
        copies_sparse(Path::new("/dev/shm"));
    }
}
