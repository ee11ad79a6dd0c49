//! Walking a cgroup tree through directory descriptors, never by path: a tree deeper than
//! PATH_MAX as the host names it (a privileged container may make one) is walked as well.
//! One descriptor is open at a time, so no depth is too deep for the open file limit.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

/// Where [`walk`] failed: opening `top` (or going back up, if a cgroup moved meanwhile),
/// or `leave` for the cgroup at this path below `top` (the first such failure).
pub(super) enum TreeError {
    Walk(Errno),
    Leave(PathBuf, Errno),
}

/// Walks `top` and the cgroups below it: `visit` sees each (`top` first) before its
/// children, `leave` each one below `top` (given its parent and its name) after its
/// children. A cgroup gone meanwhile is passed over, and so is one that cannot be opened
/// (it is left to `leave`, whose error says so); the walk goes on past an error of
/// `leave` and returns the first. cgroupfs has no symlinks.
pub(super) fn walk(
    top: &Path,
    mut visit: impl FnMut(BorrowedFd<'_>),
    mut leave: impl FnMut(BorrowedFd<'_>, &CStr) -> rustix::io::Result<()>,
) -> Result<(), TreeError> {
    /// A directory being walked: its subdirectories, and the next to go into.
    struct Level {
        children: Vec<CString>,
        next: usize,
    }
    let open_dir = |at: BorrowedFd<'_>, name: &CStr| {
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut dir = rustix::fs::open(
        top,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(TreeError::Walk)?;
    visit(dir.as_fd());
    let mut stack = vec![Level {
        children: children(&dir),
        next: 0,
    }];
    let mut failed = None;
    // `leave` for the child the deepest level is at, keeping its first failure
    let mut leave_child = |dir: BorrowedFd<'_>, stack: &[Level]| {
        let Some(parent) = stack.last() else {
            return;
        };
        if let Err(err) = leave(dir, &parent.children[parent.next - 1])
            && failed.is_none()
        {
            let below: PathBuf = stack
                .iter()
                .map(|level| OsStr::from_bytes(level.children[level.next - 1].to_bytes()))
                .collect();
            failed = Some(TreeError::Leave(below, err));
        }
    };
    while let Some(level) = stack.last_mut() {
        if let Some(name) = level.children.get(level.next).cloned() {
            level.next += 1;
            match open_dir(dir.as_fd(), &name) {
                Ok(child) => {
                    dir = child;
                    visit(dir.as_fd());
                    stack.push(Level {
                        children: children(&dir),
                        next: 0,
                    });
                }
                Err(_) => leave_child(dir.as_fd(), &stack),
            }
            continue;
        }
        stack.pop();
        if stack.is_empty() {
            break;
        }
        dir = open_dir(dir.as_fd(), c"..").map_err(TreeError::Walk)?;
        leave_child(dir.as_fd(), &stack);
    }
    failed.map_or(Ok(()), Err)
}

/// The subdirectories of `dir`.
fn children(dir: &OwnedFd) -> Vec<CString> {
    let Ok(mut entries) = rustix::fs::Dir::read_from(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name();
        let dir = matches!(entry.file_type(), FileType::Directory | FileType::Unknown);
        if dir && name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names
}

/// A file of the cgroup open as `dir`.
pub(super) fn read_at(dir: BorrowedFd<'_>, file: &str) -> Option<String> {
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    std::io::read_to_string(std::fs::File::from(fd)).ok()
}
