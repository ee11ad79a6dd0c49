//! The only `unsafe` code of strata-runtime: thin wrappers over the few syscalls that nix
//! does not wrap safely (fork, capget/capset, PR_CAPBSET_DROP, the loopback ioctl, the
//! controlling terminal, window size, async-signal-safe handlers). Everything else in the
//! crate calls these or nix/rustix.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::pty::Winsize;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

pub use nix::unistd::ForkResult;

/// fork(2) through glibc, so its atfork handlers keep malloc usable in the child even when
/// the parent runs FUSE server threads (a raw clone(2) would skip them).
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the child only runs the container setup path, which ends in execve or _exit,
    // or a freezer's thaw guard (syscalls, then _exit); glibc's fork resets the malloc
    // locks, so allocation in the child is sound.
    unsafe { nix::unistd::fork() }
}

/// _exit(2): leave a forked child without running the parent's atexit handlers or
/// flushing stdio buffers it inherited.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2) of the calling thread: effective, permitted and inheritable as 64-bit masks.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and data are valid, properly sized (version 3 takes two CapData) and
    // live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    Errno::result(rc).map(drop)
}

/// prctl(PR_CAPBSET_DROP, cap).
pub fn drop_bounding_cap(cap: u32) -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
pub fn clear_ambient_caps() -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Sets IFF_UP on the loopback interface of the current network namespace
/// (SIOCGIFFLAGS / SIOCSIFFLAGS on a datagram socket, as `ip link set lo up` does).
pub fn set_loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `request`.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) })?;
    // SAFETY: the union member ifru_flags was just written by the kernel.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `request`.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &request) }).map(drop)
}

/// ioctl(TIOCSCTTY): make `fd` (a pty slave) the controlling terminal of this new session.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// ioctl(TIOCGWINSZ).
pub fn window_size(fd: RawFd) -> nix::Result<Winsize> {
    let mut size = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`; a bad fd only gives an errno.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) })?;
    Ok(size)
}

/// The size of strata's terminal: of stdin, else stdout, else stderr (as docker reads it,
/// so `strata run -t ... < file` still sizes the container's terminal).
pub fn terminal_size() -> Option<Winsize> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO]
        .into_iter()
        .find_map(|fd| window_size(fd).ok())
}

/// ioctl(TIOCSWINSZ).
pub fn set_window_size(fd: RawFd, size: &Winsize) -> nix::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize; a bad fd only gives an errno.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, size) }).map(drop)
}

/// Installs `handler` (which must be async-signal-safe) for `signal` and returns the
/// previous action so it can be restored.
pub fn set_handler(signal: Signal, handler: extern "C" fn(libc::c_int)) -> nix::Result<SigAction> {
    let action = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: callers pass handlers that only make async-signal-safe calls (write, kill).
    unsafe { nix::sys::signal::sigaction(signal, &action) }
}

/// Restores an action saved by `set_handler`.
pub fn restore_action(signal: Signal, action: &SigAction) -> nix::Result<()> {
    // SAFETY: the action came from sigaction itself.
    unsafe { nix::sys::signal::sigaction(signal, action) }.map(drop)
}

/// Sets `signal` to SIG_DFL or SIG_IGN (exec keeps ignored dispositions, so the
/// container process resets what the intermediate process ignored).
pub fn set_disposition(signal: Signal, ignore: bool) -> nix::Result<()> {
    let handler = if ignore {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL / SIG_IGN install no code.
    unsafe { nix::sys::signal::sigaction(signal, &action) }.map(drop)
}

/// write(2) usable from a signal handler.
pub fn write_raw(fd: RawFd, bytes: &[u8]) {
    // SAFETY: the buffer is valid for its length; write is async-signal-safe.
    let _ = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// kill(2) usable from a signal handler.
pub fn kill_raw(pid: i32, signal: libc::c_int) {
    // SAFETY: kill is async-signal-safe and takes integers.
    let _ = unsafe { libc::kill(pid, signal) };
}

/// close_range(3, ~0, CLOSE_RANGE_CLOEXEC): no descriptor of strata's (store lock, FUSE
/// device, sockets) leaks into the container past exec.
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with the CLOEXEC flag only sets a flag on descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(rc).map(drop)
}

/// close_range(first, ~0, 0): closes every descriptor from `first` up.
pub fn close_from(first: u32) -> nix::Result<()> {
    // SAFETY: the caller owns no descriptor at or above `first` that it uses later.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    Errno::result(rc).map(drop)
}

/// Descriptor 0 as a borrowed fd for termios and poll calls.
pub fn stdin() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 stays open for the life of the process (strata never closes it).
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

/// Sends one tag byte with `fd` attached (SCM_RIGHTS) over a unix stream socket.
pub fn send_fd(socket: BorrowedFd<'_>, tag: u8, fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let buffer = [tag];
    let iov = [std::io::IoSlice::new(&buffer)];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// Receives one byte and the descriptor attached to it, if any. `Ok(None)` at EOF.
pub fn recv_fd(socket: BorrowedFd<'_>) -> nix::Result<Option<(u8, Option<std::os::fd::OwnedFd>)>> {
    use std::os::fd::{FromRawFd, OwnedFd};

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buffer = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    if message.bytes == 0 {
        return Ok(None);
    }
    let mut received = None;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for us; nothing
                // else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    Ok(Some((buffer[0], received)))
}
