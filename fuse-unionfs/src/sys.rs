//! The few raw syscalls the crate needs that have no safe wrapper: fork for the mount
//! daemon, pointing stdio at /dev/null, the inode flags ioctls, and file handles (copy-up
//! origins). Every unsafe block says why it is sound.

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

/// The longest file handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE: usize = 128;

/// A `struct file_handle` with room for the longest handle, u32-aligned as the kernel
/// wants it.
#[repr(C)]
struct HandleBuf {
    bytes: u32,
    kind: i32,
    handle: [u8; MAX_HANDLE],
}

fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
        .unwrap_or(rustix::io::Errno::IO)
}

/// name_to_handle_at(2) of `rel` under `dir`, not following a symlink: the handle's type
/// and bytes.
pub(crate) fn file_handle(
    dir: BorrowedFd<'_>,
    rel: &std::path::Path,
) -> rustix::io::Result<(i32, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(crate::layer::arg(rel).as_os_str().as_bytes())
        .map_err(|_| rustix::io::Errno::INVAL)?;
    let mut buf = HandleBuf {
        bytes: MAX_HANDLE as u32,
        kind: 0,
        handle: [0; MAX_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a file_handle whose `handle_bytes` says how much room follows it;
    // the path is NUL-terminated; `dir` is open for the whole call.
    let ret = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            path.as_ptr(),
            (&mut buf as *mut HandleBuf).cast(),
            &mut mount_id,
            0,
        )
    };
    if ret < 0 {
        return Err(last_errno());
    }
    let len = (buf.bytes as usize).min(MAX_HANDLE);
    Ok((buf.kind, buf.handle[..len].to_vec()))
}

/// open_by_handle_at(2) with O_PATH, on the file system of `mount_fd` (CAP_DAC_READ_SEARCH).
pub(crate) fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    kind: i32,
    handle: &[u8],
) -> rustix::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if handle.len() > MAX_HANDLE {
        return Err(rustix::io::Errno::INVAL);
    }
    let mut buf = HandleBuf {
        bytes: handle.len() as u32,
        kind,
        handle: [0; MAX_HANDLE],
    };
    buf.handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `buf` is a valid file_handle of `handle.len()` bytes; `mount_fd` is open for
    // the whole call; the descriptor returned is ours alone.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut buf as *mut HandleBuf).cast(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: open_by_handle_at returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The uuid of the file system `fd` is on (FS_IOC_GETFSUUID, Linux 6.5+), as overlayfs
/// compares it with an origin's; None where the kernel does not say.
pub(crate) fn fs_uuid(fd: BorrowedFd<'_>) -> Option<[u8; 16]> {
    /// struct fsuuid2 { __u8 len; __u8 uuid[16]; }
    #[repr(C)]
    struct FsUuid {
        len: u8,
        uuid: [u8; 16],
    }
    /// _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: u32 = 0x8011_1500;
    let mut out = FsUuid {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: FS_IOC_GETFSUUID fills a struct fsuuid2, which `out` is (17 bytes, byte
    // aligned); `fd` is open for the whole call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID as _, &mut out) };
    (ret == 0 && out.len as usize <= 16).then(|| {
        let mut uuid = [0; 16];
        uuid[..out.len as usize].copy_from_slice(&out.uuid[..out.len as usize]);
        uuid
    })
}

/// Puts the calling thread's I/O in the idle class (ioprio_set(2)): its requests go to the
/// disk after everyone else's (where the I/O scheduler has classes: mq-deadline, bfq).
pub(crate) fn idle_io() -> rustix::io::Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: u32 = 13;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours; who = 0 is
    // the calling thread.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if ret < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// sync_file_range(2) of `len` bytes of `fd` from `offset`: with `wait`, writes them out
/// and waits until they are written (pages already on their way too); without, starts
/// writing them. Their metadata is left to an fsync, and errors to it too.
pub(crate) fn sync_file_range(fd: BorrowedFd<'_>, offset: u64, len: u64, wait: bool) {
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes a descriptor, open for the whole call, and integers.
    unsafe {
        libc::sync_file_range(fd.as_raw_fd(), offset, len, flags);
    }
}
