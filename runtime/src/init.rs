//! `--init`: a tiny reaper as the container's pid 1 (what tini and docker-init do). The
//! setup process forks; the child becomes the command (in its own process group, the
//! terminal's foreground one under `-t`), the parent stays pid 1: it forwards every
//! catchable signal to the command, reaps every orphan, and exits with the command's status.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::sys;

static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let pid = COMMAND_PID.load(Ordering::Relaxed);
    if pid > 0 {
        sys::kill_raw(pid, signal);
    }
}

/// The exit code for a wait status: the code, or 128+N for signal N.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Runs as pid 1 until `command` exits; never returns.
pub fn reap(command: Pid) -> ! {
    COMMAND_PID.store(command.as_raw(), Ordering::Relaxed);
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGCHLD) {
            continue;
        }
        let _ = sys::set_handler(signal, forward);
    }
    loop {
        match waitpid(None, None) {
            Ok(status) => {
                if status.pid() == Some(command)
                    && let Some(code) = exit_code(status)
                {
                    sys::exit_now(code);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => sys::exit_now(125),
        }
    }
}
