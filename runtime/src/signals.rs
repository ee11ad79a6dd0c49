//! Signal forwarding for `run`: while a container runs, the signals docker's sig-proxy
//! forwards ([`FORWARDED`]) go from strata to the container's process, and SIGWINCH copies strata's
//! terminal size to the container's pty. The handler only writes the signal number to a
//! self-pipe (async-signal-safe); one thread reads it and does the work. Handlers are
//! installed while at least one container is registered and restored afterwards, so a
//! library user's own dispositions come back.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use nix::sys::signal::{SigAction, Signal};

use crate::sys;

/// Every catchable signal a user or a supervisor sends, as docker's sig-proxy forwards
/// them (USR1/USR2 reopen logs or reload in many servers). Not caught: the faults (SEGV,
/// BUS, ...) and resource limits (XCPU, XFSZ) of strata itself, CHLD, PIPE (ignored),
/// URG, and the terminal's job control (TTIN, TTOU, TSTP).
pub const FORWARDED: [Signal; 11] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// Gives a process about to exec a container's command the dispositions it would have
/// under docker: the forwarded signals (ignored by strata's intermediate processes) and
/// SIGPIPE (ignored by Rust; an ignored signal stays ignored across execve, and `yes |
/// head -1` would not end `yes`) back to their defaults.
pub(crate) fn restore_defaults() {
    for signal in FORWARDED.into_iter().chain([Signal::SIGPIPE]) {
        let _ = sys::set_disposition(signal, false);
    }
}

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// How many [`STOPPING`] signals were caught, and the last one. The handler records them
/// itself, so [`Forwarding::caught`] sees a signal the pump thread has not read yet (a
/// container that ends by itself just after it would otherwise take it along).
static STOPS: AtomicU64 = AtomicU64::new(0);
static LAST_STOP: AtomicI32 = AtomicI32::new(0);

struct Entry {
    id: u64,
    /// None until the container has started; signals that arrive before are kept in
    /// `pending` and delivered then (so none is lost to a start-up race).
    pid: Option<i32>,
    pending: Vec<libc::c_int>,
    pty_master: Option<RawFd>,
    /// Stopping signals kill the container rather than reach it (`Spec::kill_on_signal`)...
    kill: bool,
    /// ...and the first such signal caught.
    caught: Option<libc::c_int>,
    /// [`STOPS`] when the entry was made.
    stops_before: u64,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    entries: Vec<Entry>,
    saved: Vec<(Signal, SigAction)>,
    thread_started: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    entries: Vec::new(),
    saved: Vec::new(),
    thread_started: false,
});

extern "C" fn on_signal(signal: libc::c_int) {
    record_stop(signal);
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        sys::write_raw(fd, &[signal as u8]);
    }
}

/// Counts a [`STOPPING`] signal (async-signal-safe: atomics only).
fn record_stop(signal: libc::c_int) {
    if STOPPING.contains(&signal) {
        LAST_STOP.store(signal, Ordering::Relaxed);
        STOPS.fetch_add(1, Ordering::Release);
    }
}

/// Unregisters the container when dropped.
pub struct Forwarding {
    id: u64,
}

/// The signals that end a container started with `kill`: strata's user wants it stopped.
const STOPPING: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Starts catching the forwarded signals for a container about to start; `Forwarding::
/// attach` names its process. With `kill`, the [`STOPPING`] signals SIGKILL it instead.
pub fn catch(kill: bool) -> std::io::Result<Forwarding> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|poison| poison.into_inner());
    if !registry.thread_started {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        PIPE_WRITE.store(write_end.as_raw_fd(), Ordering::Relaxed);
        std::mem::forget(write_end); // lives as long as the process, like the thread
        std::thread::Builder::new()
            .name("strata-signals".into())
            .spawn(move || pump(read_end))?;
        registry.thread_started = true;
    }
    if registry.entries.is_empty() {
        let mut saved = Vec::new();
        for signal in FORWARDED.iter().chain([Signal::SIGWINCH].iter()) {
            let previous = sys::set_handler(*signal, on_signal).map_err(std::io::Error::from)?;
            saved.push((*signal, previous));
        }
        registry.saved = saved;
    }
    registry.next_id += 1;
    let id = registry.next_id;
    registry.entries.push(Entry {
        id,
        pid: None,
        pending: Vec::new(),
        pty_master: None,
        kill,
        caught: None,
        stops_before: STOPS.load(Ordering::Acquire),
    });
    Ok(Forwarding { id })
}

impl Forwarding {
    /// The container runs as `pid`: deliver what was caught so far, then forward.
    pub fn attach(&self, pid: i32, pty_master: Option<RawFd>) {
        let mut registry = REGISTRY.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(entry) = registry
            .entries
            .iter_mut()
            .find(|entry| entry.id == self.id)
        {
            entry.pid = Some(pid);
            entry.pty_master = pty_master;
            for signal in std::mem::take(&mut entry.pending) {
                sys::kill_raw(pid, signal);
            }
        }
    }

    /// The stopping signal that killed the container, or that came while it ran, if one
    /// did (see [`catch`]).
    pub fn caught(&self) -> Option<libc::c_int> {
        let registry = REGISTRY.lock().unwrap_or_else(|poison| poison.into_inner());
        let entry = registry.entries.iter().find(|entry| entry.id == self.id)?;
        entry.caught.or_else(|| {
            // caught by the handler, not yet read by the pump
            (entry.kill && STOPS.load(Ordering::Acquire) > entry.stops_before)
                .then(|| LAST_STOP.load(Ordering::Relaxed))
        })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let mut registry = REGISTRY.lock().unwrap_or_else(|poison| poison.into_inner());
        registry.entries.retain(|entry| entry.id != self.id);
        if registry.entries.is_empty() {
            for (signal, action) in std::mem::take(&mut registry.saved) {
                let _ = sys::restore_action(signal, &action);
            }
        }
    }
}

fn pump(read_end: OwnedFd) {
    let mut file = std::fs::File::from(read_end);
    let mut byte = [0u8; 1];
    while file.read_exact(&mut byte).is_ok() {
        let signal = libc::c_int::from(byte[0]);
        let mut registry = REGISTRY.lock().unwrap_or_else(|poison| poison.into_inner());
        for entry in &mut registry.entries {
            if signal == libc::SIGWINCH {
                if let (Some(master), Some(size)) = (entry.pty_master, sys::terminal_size()) {
                    let _ = sys::set_window_size(master, &size);
                }
            } else {
                let signal = if entry.kill && STOPPING.contains(&signal) {
                    entry.caught.get_or_insert(signal);
                    libc::SIGKILL
                } else {
                    signal
                };
                match entry.pid {
                    Some(pid) => sys::kill_raw(pid, signal),
                    None => entry.pending.push(signal),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_signal_counts_before_the_pump_reads_it() {
        let forwarding = catch(true).unwrap();
        let other = catch(false).unwrap();
        assert_eq!(forwarding.caught(), None);
        // What the handler records when SIGTERM arrives, before the pump thread has read
        // its byte (here it never does): the container's end must see it all the same.
        record_stop(libc::SIGTERM);
        assert_eq!(forwarding.caught(), Some(libc::SIGTERM));
        // a container started without `kill` forwards it rather than stopping on it
        assert_eq!(other.caught(), None);
        // a container started afterwards did not see it
        let later = catch(true).unwrap();
        assert_eq!(later.caught(), None);
    }
}
