//! strata-runtime: runs a command in fresh namespaces on a prepared root, under cgroup
//! limits, and returns its exit status (ARCHITECTURE.md "Runtime").
//!
//! Flow: `spawn` creates the cgroup, forks an intermediate process that unshares the
//! namespaces and forks the container's pid 1 (process.rs); pid 1 builds its filesystem
//! view (rootfs.rs), takes its identity (container.rs: user.rs, caps.rs) and execs. `run`
//! adds signal forwarding (signals.rs) and waits. Only sys.rs contains `unsafe`.

pub mod caps;
pub mod cgroup;
mod container;
mod error;
mod exec;
mod init;
mod process;
mod rootfs;
mod seccomp;
mod signals;
mod sys;
mod syscall;
mod tty;
mod user;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use error::{Error, Result};
pub use exec::ExecSpec;
pub use process::{Child, USERNS_HOST_START, USERNS_SIZE};
pub use rootfs::Bind;
pub use seccomp::profile_program as seccomp_program;

/// The host path of container path `inside` of the root `root`, with symlinks followed as
/// the container sees them (never outside `root`); the missing tail is kept as given.
pub fn resolve_in_root(root: &std::path::Path, inside: &std::path::Path) -> Result<PathBuf> {
    rootfs::resolve_in_root(&syscall::Linux, root, inside).map_err(Error::Spec)
}
pub use user::{ExecUser, resolve as resolve_user};

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A private network namespace with only the loopback interface, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// cgroup limits; `None` leaves the resource unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (no swap on top).
    pub memory: Option<u64>,
    /// CPUs as a CFS quota (`1.5` = 150 ms per 100 ms).
    pub cpus: Option<f64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// cpuset.cpus, e.g. "0-1".
    pub cpuset_cpus: Option<String>,
    /// Block I/O weight 10-1000 (dropped with a warning when the kernel has no weights).
    pub blkio_weight: Option<u16>,
    /// `run --privileged`: every device may be opened (else docker's default devices
    /// only), and the container is placed in (and sees) every hierarchy strata knows, limits
    /// or not, so that it can run containers with limits of its own.
    pub privileged: bool,
}

/// One container to run.
#[derive(Debug, Default)]
pub struct Spec {
    /// The already-mounted root (the union mount point).
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    /// `K=V` pairs; PATH, HOME and HOSTNAME are added when missing, as docker does.
    pub env: Vec<String>,
    /// Working directory inside the container ("" = /); created when missing.
    pub cwd: String,
    /// "", name, uid, uid:gid, name:group; resolved in the rootfs's /etc/passwd and /etc/group.
    pub user: String,
    pub hostname: Option<String>,
    pub network: Network,
    /// Host files bound onto container paths (`(host file, "/etc/resolv.conf")`), in
    /// order, before the pivot. Docker-style per-container copies of /etc/resolv.conf,
    /// /etc/hosts and /etc/hostname go here; writes to them reach the host file, never
    /// the rootfs. A missing target is created empty in the rootfs (see `rootfs.rs`).
    pub etc_files: Vec<(PathBuf, String)>,
    /// Host paths bound onto container paths after `etc_files` (`run -v`, volumes).
    pub binds: Vec<Bind>,
    /// Map container root to host ids USERNS_HOST_START.. (USERNS_SIZE ids).
    pub userns: bool,
    pub limits: Limits,
    /// The cgroup's name (e.g. "strata-<id>"); "" = no cgroup.
    pub cgroup_name: String,
    pub tty: bool,
    pub interactive: bool,
    pub init: bool,
    /// The container dies with the process that started it (PR_SET_PDEATHSIG down the
    /// chain): a build's RUN must not outlive a killed build.
    pub die_with_parent: bool,
    /// A SIGINT, SIGTERM, SIGHUP or SIGQUIT strata gets kills the container (SIGKILL, all
    /// its processes) instead of being forwarded, and `run` then fails with
    /// [`Error::Interrupted`]: a build's RUN is cancelled, as docker build's is.
    pub kill_on_signal: bool,
    /// With `kill_on_signal`: a stopping signal the caller's own handlers caught before
    /// `run` took the signals over (its number; 0 for none). Checked once they are taken
    /// over: the container is then not started, and `run` fails with `Interrupted`.
    pub cancelled: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Set no_new_privs (docker's `--security-opt no-new-privileges`); off by default.
    pub no_new_privileges: bool,
    /// The capabilities container root keeps (`caps::tweak`); None: docker's default set.
    pub capabilities: Option<u64>,
    /// No seccomp filter (docker's `--security-opt seccomp=unconfined`); the default
    /// filter (`seccomp.rs`) otherwise.
    pub seccomp_unconfined: bool,
    /// A docker seccomp profile (JSON) instead of the default filter
    /// (`--security-opt seccomp=FILE`).
    pub seccomp_profile: Option<String>,
    /// The root is read-only (`run --read-only`); mounts on it keep their own flags.
    pub read_only: bool,
    /// docker's `--privileged`: every capability strata holds (`capabilities` aside), no
    /// seccomp filter, nothing masked or read-only in /proc, sysfs and the cgroup view
    /// writable, the host's devices in /dev, and all of them allowed by the devices cgroup.
    pub privileged: bool,
    /// None = inherit strata's. With `tty` the container's stdio is its pty: `stdout`
    /// then receives what the pty prints (strata's stdout when None) and `stdin`/`stderr`
    /// are unused (input comes from strata's stdin with `interactive`).
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Runs the container to completion: forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT (and window
/// size changes) to it and returns its exit code (128+N for signal N, 137 for an OOM kill,
/// 126/127 when the command cannot be executed). `Err` means strata failed before the
/// command started (the caller exits 125).
pub fn run(spec: Spec) -> Result<i32> {
    run_observed(spec, |_| {})
}

/// `run`, calling `started` once the command runs (e.g. to record its pid).
pub fn run_observed(spec: Spec, started: impl FnOnce(&Child)) -> Result<i32> {
    // Catch before the container starts: it may be signalled as soon as it runs.
    let forwarding = signals::catch(spec.kill_on_signal)
        .map_err(|err| Error::io("failed to install", "signal handlers", err))?;
    if let Some(signal) = spec
        .cancelled
        .as_ref()
        .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        && signal != 0
    {
        return Err(Error::Interrupted(signal as i32));
    }
    let child = spawn(spec)?;
    forwarding.attach(child.pid, child.pty_master());
    started(&child);
    let code = child.wait();
    match forwarding.caught() {
        Some(signal) => Err(Error::Interrupted(signal)),
        None => code,
    }
}

/// Runs one more command in a running container (`exec`) to completion, forwarding
/// signals as `run` does; returns its exit code (126/127 when it cannot be executed).
pub fn exec(spec: ExecSpec) -> Result<i32> {
    let forwarding = signals::catch(false)
        .map_err(|err| Error::io("failed to install", "signal handlers", err))?;
    let group = spec.signal_group;
    let child = exec::spawn(spec)?;
    // (kill(2) of a negative pid signals that process group.)
    forwarding.attach(
        if group { -child.pid } else { child.pid },
        child.pty_master(),
    );
    let code = child.wait();
    drop(forwarding);
    code
}

/// Starts the container and returns once its command has been exec'd (or failed to).
pub fn spawn(spec: Spec) -> Result<Child> {
    process::spawn(spec)
}

/// Whether the kernel has OOM-killed a process of cgroup `name` (its memory limit).
pub fn oom_killed(name: &str) -> bool {
    cgroup::oom_kills(name) > 0
}

/// Removes the empty cgroups a killed strata left, of any store (see
/// [`cgroup::sweep_empty`]): those older than `min_age` whose name `wanted` accepts.
pub fn sweep_cgroups(min_age: std::time::Duration, wanted: impl Fn(&str) -> bool) -> usize {
    cgroup::sweep_empty(min_age, wanted)
}

/// Removes cgroup `name` from every hierarchy (killing what is left in it).
pub fn remove_cgroup(name: &str) -> Result<()> {
    cgroup::remove(name)
}

/// Freezes the processes of cgroup `name` until the returned guard is thawed or dropped
/// (docker's pause, for a consistent `commit`); fails after `timeout`.
pub fn freeze_cgroup(name: &str, timeout: std::time::Duration) -> Result<cgroup::Frozen> {
    cgroup::freeze(name, timeout)
}

/// Thaws what is frozen in cgroup `name`'s tree (v1 freezer) and the cgroup itself (v2),
/// after a SIGKILL to it.
pub fn thaw_cgroup(name: &str) {
    cgroup::thaw(name)
}
