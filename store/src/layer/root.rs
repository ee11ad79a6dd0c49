//! The unpack target as a directory fd, and path resolution that cannot leave it.
//!
//! Every lookup goes through `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`:
//! the kernel refuses (`EXDEV`) any resolution that would step above the target, whether
//! by `..`, an absolute symlink or a relative one that climbs out, and it does so at the
//! moment of the lookup, so no earlier entry of the archive can prepare an escape. The
//! last component of an entry is always handled with `*at` calls on its parent's fd and
//! never followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The target directory of an unpack, with a one-entry cache of the last parent directory
/// (entries of a tar mostly come in runs with the same parent).
pub(crate) struct Root {
    fd: OwnedFd,
    cached: Option<(Vec<u8>, OwnedFd)>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

impl Root {
    pub fn open(target: &Path) -> Result<Root, Errno> {
        let fd = rustix::fs::open(target, DIR_FLAGS, Mode::empty())?;
        Ok(Root { fd, cached: None })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory at `rel` (components joined by `/`, no `.` or `..`; empty for
    /// the root itself). Symlinks on the way are followed only while they stay beneath.
    pub fn open_dir(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        let path: &[u8] = if rel.is_empty() { b"." } else { rel };
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks us to retry.
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(&self.fd, path, DIR_FLAGS, Mode::empty(), how) {
                Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
                result => return result,
            }
        }
    }

    /// The directory that will hold an entry, created (0755, like docker and tar do) with
    /// any missing ancestors when the archive did not list it.
    pub fn parent(&mut self, rel: &[u8]) -> Result<BorrowedFd<'_>, Errno> {
        let hit = matches!(&self.cached, Some((path, _)) if path == rel);
        if !hit {
            let fd = match self.open_dir(rel) {
                Err(Errno::NOENT) => self.create_dirs(rel)?,
                result => result?,
            };
            self.cached = Some((rel.to_vec(), fd));
        }
        match &self.cached {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Errno::NOENT),
        }
    }

    /// Forgets the cached parent: must be called whenever anything is removed, since the
    /// removed thing may have been that directory or one of its ancestors.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    fn create_dirs(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        let mut current = self.open_dir(b"")?;
        let mut end = 0;
        for component in rel.split(|&b| b == b'/') {
            end += component.len();
            let prefix = &rel[..end];
            current = match self.open_dir(prefix) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&current, component, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                    self.open_dir(prefix)?
                }
                Err(e) => return Err(e),
            };
            end += 1;
        }
        Ok(current)
    }
}

/// Removes `name` in `dir` (a directory recursively), never following a symlink.
/// Returns whether anything was there.
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool, Errno> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        return Ok(true);
    }
    let child = rustix::fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&child)? {
        let entry = entry?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(entry_name.to_vec());
        }
    }
    for entry_name in names {
        remove_all(child.as_fd(), &entry_name)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(true)
}
