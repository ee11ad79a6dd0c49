//! The few raw syscalls the crate needs that have no safe wrapper: fork for the mount
//! daemon, pointing stdio at /dev/null, and the inode flags ioctls. Every unsafe block
//! says why it is sound.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Which side of a fork we are on.
pub(crate) enum Forked {
    Parent(nix::unistd::Pid),
    Child,
}

/// fork(2). Only called by `serve_daemon` before any thread of ours exists.
pub(crate) fn fork() -> std::io::Result<Forked> {
    // SAFETY: the callers (serve_daemon) run single-threaded at this point (the CLI starts
    // no threads before it), so the child may run arbitrary code, not only async-signal-safe.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Points stdin, stdout and stderr at /dev/null, so a daemon does not hold its caller's
/// pipes open (a `$(strata mount ...)` would otherwise wait for it forever).
pub(crate) fn detach_stdio() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` is a valid open fd for the
        // whole call and no Rust object owns fds 0-2 in a way that this invalidates.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An ioctl whose argument is a buffer the command reads or fills: the inode flags ones
/// (FS_IOC_GETFLAGS/SETFLAGS take an int, FS_IOC_FSGETXATTR/FSSETXATTR a struct fsxattr).
/// The caller sizes `buf` for `cmd`.
pub(crate) fn ioctl_buf(fd: BorrowedFd<'_>, cmd: u32, buf: &mut [u8]) -> rustix::io::Result<()> {
    let needed = match cmd {
        crate::union::FS_IOC_GETFLAGS | crate::union::FS_IOC_SETFLAGS => 4,
        crate::union::FS_IOC_FSGETXATTR | crate::union::FS_IOC_FSSETXATTR => 28,
        _ => return Err(rustix::io::Errno::NOTTY),
    };
    if buf.len() < needed {
        return Err(rustix::io::Errno::INVAL);
    }
    // SAFETY: `cmd` is one of the four commands above, and `buf` holds at least the bytes
    // each reads or writes; `fd` is open for the whole call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, buf.as_mut_ptr()) };
    if ret < 0 {
        return Err(
            rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                .unwrap_or(rustix::io::Errno::IO),
        );
    }
    Ok(())
}
