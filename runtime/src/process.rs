//! The process tree of one container and the parent/child protocol.
//!
//! ```text
//! strata (parent) --fork--> intermediate --unshare(user?, then pid mnt uts ipc net)--fork--> container (pid 1)
//!        <-- 'U' (user namespace made)   --> 'A' (id maps written)
//!        <-- 'P' + pid (container's host pid)  [parent moves it into the cgroup]
//!        --> 'G' (go)                          [container sets up rootfs, ids, caps]
//!        <-- 'T' + pty master (SCM_RIGHTS), with a terminal: a pty of the container's devpts
//!        <-- 'E' + message | EOF (the socket is close-on-exec: EOF = exec happened)
//! ```
//! The intermediate process stays to wait for pid 1 and exits with its status (128+N for
//! a signal), so the parent needs no subreaper. Every process closes the socket ends and
//! pty descriptors it does not use, or the parent would never see EOF.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::Limits;
use crate::container::{self, Setup};
use crate::error::{Error, Result};
use crate::init;
use crate::rootfs::Rootfs;
use crate::sys::{self, ForkResult};
use crate::syscall::{Linux, Syscall};
use crate::{Network, Spec, cgroup, tty};

/// The host id range container root maps to with `userns` (docker's userns-remap default
/// size: 65536 ids).
pub const USERNS_HOST_START: u32 = 100_000;
pub const USERNS_SIZE: u32 = 65_536;

/// A command that could not be run: its exit code (127, 126) and why.
pub type ExecFailed = (i32, String);

/// A started container.
pub struct Child {
    /// The container's pid 1, as seen from the host.
    pub pid: i32,
    intermediate: Pid,
    cgroup: Option<String>,
    tty: Option<tty::Session>,
    /// The command could not be run (not found: 127, not executable: 126), and why: the
    /// container then exits with that code at once.
    exec_failure: Option<ExecFailed>,
}

/// What the container process needs besides `Setup`.
struct Launch {
    args: Vec<String>,
    init: bool,
    die_with_parent: bool,
    tty: bool,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// SIGKILL when `parent` goes; gone already (between fork and here), exit now. (A pid
/// namespace's first process sees its parent as pid 0.)
fn die_with_parent(parent: Pid) {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let now = nix::unistd::getppid();
    if now != parent && now.as_raw() != 0 {
        sys::exit_now(125);
    }
}

/// The parent's side of a 'P' message (a host pid) whose tag read gave `tag`; 'E'
/// carries the child's own error. Errors are messages for `Error::Setup`.
pub(crate) fn pid_message(
    sock: &mut UnixStream,
    tag: std::io::Result<u8>,
    who: &str,
) -> std::result::Result<i32, String> {
    match tag {
        Ok(b'P') => {
            let mut bytes = [0u8; 4];
            sock.read_exact(&mut bytes)
                .map_err(|err| format!("read the pid of {who}: {err}"))?;
            Ok(i32::from_le_bytes(bytes))
        }
        Ok(b'E') => {
            let mut message = String::new();
            let _ = sock.read_to_string(&mut message);
            Err(message)
        }
        Ok(other) => Err(format!("unexpected sync message {other:?}")),
        Err(err) => Err(format!("{who} exited early: {err}")),
    }
}

/// The parent reads on until EOF (the socket is close-on-exec: the exec happened) or an
/// 'E' message; with a terminal, 'T' brings the pty master first, which gets strata's
/// window size before 'W' lets the command run (a shell that asks at once must not see
/// 0x0).
pub(crate) fn terminal_then_exec(
    sock: &mut UnixStream,
    who: &str,
) -> std::result::Result<(Option<OwnedFd>, Option<ExecFailed>), String> {
    let mut pty_master = None;
    loop {
        match sys::recv_fd(sock.as_fd()) {
            // the command cannot be run: its exit code, then why
            Ok(Some((b'X', _))) => {
                let mut rest = Vec::new();
                let _ = sock.read_to_end(&mut rest);
                let code = rest.first().map_or(127, |&c| i32::from(c));
                let message = String::from_utf8_lossy(rest.get(1..).unwrap_or_default());
                return Ok((pty_master, Some((code, message.into_owned()))));
            }
            Ok(Some((b'T', Some(master)))) => {
                if let Some(size) = sys::terminal_size() {
                    let _ = sys::set_window_size(master.as_raw_fd(), &size);
                }
                send(sock, b"W");
                pty_master = Some(master);
            }
            Ok(Some((b'E', _))) => {
                let mut message = String::new();
                let _ = sock.read_to_string(&mut message);
                return Err(message);
            }
            Ok(Some((other, _))) => return Err(format!("unexpected sync message {other:?}")),
            Ok(None) => return Ok((pty_master, None)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(format!("read from {who}: {err}")),
        }
    }
}

/// The process's side of a terminal: `slave` becomes its controlling terminal and stdio,
/// `master` goes to strata, and the process waits until strata has sized it ('W').
pub(crate) fn hand_over_terminal(sock: &mut UnixStream, master: OwnedFd, slave: &OwnedFd) {
    if let Err(err) = sys::set_controlling_tty(slave.as_fd()) {
        fail(sock, &format!("set controlling terminal: {err}"));
    }
    let slave = Some(slave.as_fd());
    dup_stdio(sock, (slave, slave, slave));
    if let Err(err) = sys::send_fd(sock.as_fd(), b'T', master.as_fd()) {
        fail(sock, &format!("send the pty to strata: {err}"));
    }
    let mut sized = [0u8; 1];
    if sock.read_exact(&mut sized).is_err() || sized[0] != b'W' {
        sys::exit_now(125);
    }
}

/// Waits for `child` and leaves with its status (128+N for signal N).
pub(crate) fn wait_and_exit(child: Pid) -> ! {
    loop {
        match waitpid(child, None) {
            Ok(status) => {
                if let Some(code) = init::exit_code(status) {
                    sys::exit_now(code);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => sys::exit_now(125),
        }
    }
}

pub(crate) fn send(sock: &mut UnixStream, bytes: &[u8]) {
    let _ = sock.write_all(bytes);
}

/// Reports a setup failure to the parent and leaves (125: strata's own failure).
pub(crate) fn fail(sock: &mut UnixStream, message: &str) -> ! {
    let mut bytes = b"E".to_vec();
    bytes.extend_from_slice(message.as_bytes());
    send(sock, &bytes);
    sys::exit_now(125)
}

pub fn spawn(spec: Spec) -> Result<Child> {
    if spec.args.is_empty() {
        return Err(Error::Spec("no command given".into()));
    }
    if !spec.rootfs.is_dir() {
        return Err(Error::Spec(format!(
            "rootfs {} is not a directory",
            spec.rootfs.display()
        )));
    }
    let limits = Limits {
        privileged: spec.privileged,
        ..spec.limits.clone()
    };
    let cgroup = if spec.cgroup_name.is_empty() {
        None
    } else {
        Some(cgroup::Cgroup::create(&spec.cgroup_name, &limits)?)
    };
    let rootfs = std::fs::canonicalize(&spec.rootfs)
        .map_err(|err| Error::io("failed to resolve", &spec.rootfs, err))?;
    let (caps, seccomp) = if spec.privileged {
        (crate::caps::held(), None)
    } else {
        let caps = spec.capabilities.unwrap_or_else(crate::caps::default_mask);
        let seccomp = crate::seccomp::compiled(
            spec.seccomp_unconfined,
            spec.seccomp_profile.as_deref(),
            caps,
        )?;
        (caps, seccomp)
    };
    let setup = Setup {
        rootfs: Rootfs {
            root: rootfs,
            userns: spec.userns,
            files: spec
                .etc_files
                .iter()
                .map(|(host, inside)| (host.clone(), PathBuf::from(inside)))
                .collect(),
            binds: spec.binds.clone(),
            read_only: spec.read_only,
            cgroups: if spec.cgroup_name.is_empty() {
                Vec::new()
            } else {
                cgroup::view(&limits)
            },
            privileged: spec.privileged,
            host_devices: if spec.privileged {
                crate::rootfs::host_devices()
            } else {
                Vec::new()
            },
        },
        hostname: spec.hostname.clone(),
        loopback: spec.network == Network::None,
        user: spec.user.clone(),
        cwd: spec.cwd.clone(),
        env: spec.env.clone(),
        tty: spec.tty,
        last_cap: crate::caps::last_cap(),
        caps,
        no_new_privileges: spec.no_new_privileges,
        seccomp,
        die_with_parent: spec.die_with_parent,
    };
    // With a terminal, the container's stdio is the pty and `stdout` receives what the
    // pty master reads (so a detached `-t` container still has a log).
    let (stdout, tty_sink) = if spec.tty {
        (None, spec.stdout)
    } else {
        (spec.stdout, None)
    };
    let launch = Launch {
        args: spec.args.clone(),
        init: spec.init,
        die_with_parent: spec.die_with_parent,
        tty: spec.tty,
        stdin: spec.stdin,
        stdout,
        stderr: spec.stderr,
    };
    let (mut parent_sock, child_sock) =
        UnixStream::pair().map_err(|err| Error::io("failed to create", "sync socket", err))?;

    let parent = nix::unistd::getpid();
    let intermediate = match sys::fork().map_err(|err| Error::sys("fork", err))? {
        ForkResult::Child => {
            drop(parent_sock);
            if launch.die_with_parent {
                die_with_parent(parent);
            }
            intermediate_main(child_sock, spec.userns, spec.network, setup, launch)
        }
        ForkResult::Parent { child } => child,
    };
    // Close our copies: the container's stdio and the socket's other end live in the children.
    drop(child_sock);
    drop(launch);

    let abort = |message: String| -> Error {
        let _ = nix::sys::signal::kill(intermediate, Signal::SIGKILL);
        let _ = waitpid(intermediate, None);
        Error::Setup(message)
    };

    let mut tag = [0u8; 1];
    let read_tag = |sock: &mut UnixStream, tag: &mut [u8; 1]| sock.read_exact(tag).map(|()| tag[0]);
    let mut next = read_tag(&mut parent_sock, &mut tag);
    if spec.userns && next.as_ref().ok() == Some(&b'U') {
        write_id_maps(intermediate).map_err(|err| abort(err.to_string()))?;
        send(&mut parent_sock, b"A");
        next = read_tag(&mut parent_sock, &mut tag);
    }
    let pid = pid_message(&mut parent_sock, next, "the container process").map_err(abort)?;
    if let Some(cgroup) = &cgroup {
        cgroup.add(pid).map_err(|err| abort(err.to_string()))?;
    }
    send(&mut parent_sock, b"G");
    // Then: 'T' with the pty master attached (with a terminal), and EOF at exec or 'E'.
    let (pty_master, exec_failure) =
        terminal_then_exec(&mut parent_sock, "the container process").map_err(abort)?;
    let tty = match (spec.tty, pty_master) {
        (true, Some(master)) => Some(tty::Session::start(master, spec.interactive, tty_sink)?),
        (true, None) => return Err(abort("the container sent no terminal".into())),
        (false, _) => None,
    };
    Ok(Child {
        pid,
        intermediate,
        cgroup: cgroup.map(|c| c.name().to_string()),
        tty,
        exec_failure,
    })
}

/// runc's order: pid, mount, uts, ipc, net, in one unshare (the pid namespace applies to
/// the next child; the user namespace, when asked for, was made first so it owns them).
pub fn namespace_flags(network: Network) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

fn write_id_maps(intermediate: Pid) -> Result<()> {
    let map = format!("0 {USERNS_HOST_START} {USERNS_SIZE}\n");
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{intermediate}/{file}");
        std::fs::write(&path, &map).map_err(|err| Error::io("failed to write", path, err))?;
    }
    Ok(())
}

/// The intermediate process: namespaces, then fork pid 1 and wait for it.
fn intermediate_main(
    mut sock: UnixStream,
    userns: bool,
    network: Network,
    setup: Setup,
    launch: Launch,
) -> ! {
    // Terminal signals reach the whole foreground process group; only the container may
    // decide what to do with them (the parent forwards them).
    for signal in crate::signals::FORWARDED {
        let _ = sys::set_disposition(signal, true);
    }
    if userns {
        if let Err(err) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
            fail(&mut sock, &format!("unshare user namespace: {err}"));
        }
        send(&mut sock, b"U");
        let mut ack = [0u8; 1];
        if sock.read_exact(&mut ack).is_err() {
            sys::exit_now(125);
        }
        // Become root of the new namespace now that the maps exist.
        if let Err(err) = nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .and_then(|()| nix::unistd::setresuid(0.into(), 0.into(), 0.into()))
        {
            fail(
                &mut sock,
                &format!("become root in the user namespace: {err}"),
            );
        }
    }
    let flags = namespace_flags(network);
    if let Err(err) = Linux.unshare(flags) {
        fail(&mut sock, &format!("unshare namespaces {flags:?}: {err}"));
    }
    let intermediate = nix::unistd::getpid();
    let child = match sys::fork() {
        Ok(ForkResult::Child) => {
            if launch.die_with_parent {
                // pid 1: when it dies the kernel kills the whole pid namespace
                die_with_parent(intermediate);
            }
            container_main(sock, setup, launch)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(err) => fail(&mut sock, &format!("fork into the pid namespace: {err}")),
    };
    drop(launch);
    let mut message = b"P".to_vec();
    message.extend_from_slice(&child.as_raw().to_le_bytes());
    send(&mut sock, &message);
    drop(sock);
    // It only waits now. A fork of strata, it held strata's descriptors, the FUSE device
    // among them: with the server gone (strata killed), the connection then stayed open
    // with no one to answer, and every file access of the container hung.
    let _ = sys::close_from(3);
    wait_and_exit(child)
}

/// pid 1 of the container: wait for the go, set everything up, exec.
fn container_main(mut sock: UnixStream, setup: Setup, launch: Launch) -> ! {
    crate::signals::restore_defaults();
    // Not dumpable until the command's execve: the container's other processes (an
    // `--init`'s child, later ones) must not open /proc/1/exe, the host's strata binary.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut go = [0u8; 1];
    if sock.read_exact(&mut go).is_err() || go[0] != b'G' {
        sys::exit_now(125);
    }
    if let Err(err) = nix::unistd::setsid() {
        fail(&mut sock, &format!("setsid: {err}"));
    }
    let stdio = (
        launch.stdin.as_ref().map(|fd| fd.as_fd()),
        launch.stdout.as_ref().map(|fd| fd.as_fd()),
        launch.stderr.as_ref().map(|fd| fd.as_fd()),
    );
    dup_stdio(&mut sock, stdio);
    let _ = sys::cloexec_from(3);

    // Placed in its cgroup by now ('G'): a cgroup namespace of its own makes that cgroup
    // its root, in /proc/self/cgroup and in the view mounted at /sys/fs/cgroup.
    if !setup.rootfs.cgroups.is_empty()
        && let Err(err) = nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
    {
        fail(&mut sock, &format!("unshare cgroup namespace: {err}"));
    }
    let prepared = match container::setup(&Linux, &setup) {
        Ok(prepared) => prepared,
        Err(message) => fail(&mut sock, &message),
    };
    let env = prepared.env;
    if let Some(console) = prepared.console {
        hand_over_terminal(&mut sock, console.master, &console.slave);
    }
    // A command that cannot be run is told to strata before the exit, so that a detached
    // run fails as docker's does instead of reporting a container that started.
    if let Some(program) = launch.args.first()
        && let Err(failure) = container::find_program(program, &env)
    {
        let mut message = vec![b'X', failure.code as u8];
        message.extend_from_slice(failure.message.as_bytes());
        let _ = sock.write_all(&message);
        let _ = writeln!(std::io::stderr(), "strata: {}", failure.message);
        sys::exit_now(failure.code);
    }
    if launch.init {
        match sys::fork() {
            Ok(ForkResult::Child) => {
                let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
                if launch.tty {
                    let _ = sys::set_disposition(Signal::SIGTTOU, true);
                    let _ = nix::unistd::tcsetpgrp(std::io::stdin().as_fd(), nix::unistd::getpid());
                    let _ = sys::set_disposition(Signal::SIGTTOU, false);
                }
                exec_or_exit(&launch.args, &env)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(sock);
                // pid 1 never execs, so close-on-exec does not clean it: without this it
                // kept strata's descriptors (the FUSE device, host directories of the
                // upper and the layers) for the life of the container.
                let _ = sys::close_from(3);
                init::reap(child)
            }
            Err(err) => fail(&mut sock, &format!("fork the init's command: {err}")),
        }
    }
    exec_or_exit(&launch.args, &env)
}

pub(crate) fn dup_stdio(
    sock: &mut UnixStream,
    stdio: (
        Option<BorrowedFd<'_>>,
        Option<BorrowedFd<'_>>,
        Option<BorrowedFd<'_>>,
    ),
) {
    let dup = (
        stdio.0.map(nix::unistd::dup2_stdin).transpose(),
        stdio.1.map(nix::unistd::dup2_stdout).transpose(),
        stdio.2.map(nix::unistd::dup2_stderr).transpose(),
    );
    if let (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) = dup {
        fail(sock, &format!("set up stdio: {err}"));
    }
}

pub(crate) fn exec_or_exit(args: &[String], env: &[String]) -> ! {
    let failure = container::exec(args, env);
    let _ = writeln!(std::io::stderr(), "strata: {}", failure.message);
    sys::exit_now(failure.code)
}

impl Child {
    /// A started process: `pid` on the host, waited for through `waiter` (which exits with
    /// its status).
    pub(crate) fn new(
        pid: i32,
        waiter: Pid,
        cgroup: Option<String>,
        tty: Option<tty::Session>,
    ) -> Child {
        Child {
            pid,
            intermediate: waiter,
            cgroup,
            tty,
            exec_failure: None,
        }
    }

    /// The exit code and message of a command that could not be run (not found: 127, not
    /// executable: 126); the container exits with that code at once.
    pub fn exec_failure(&self) -> Option<&ExecFailed> {
        self.exec_failure.as_ref()
    }

    /// The intermediate process's pid (the parent of pid 1).
    pub fn monitor_pid(&self) -> i32 {
        self.intermediate.as_raw()
    }

    /// The pty master, when the container has a terminal.
    pub fn pty_master(&self) -> Option<std::os::fd::RawFd> {
        self.tty.as_ref().map(|tty| tty.master())
    }

    /// Sends `signal` to the container's pid 1.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.pid), signal)
            .map_err(|err| Error::sys(format!("kill {} {signal}", self.pid), err))
    }

    /// Waits for the container to exit: its exit code, 128+N for signal N, 137 when the
    /// cgroup saw an OOM kill and the command died of a signal.
    pub fn wait(mut self) -> Result<i32> {
        let code = loop {
            match waitpid(self.intermediate, None) {
                Ok(status) => {
                    if let Some(code) = init::exit_code(status) {
                        break code;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(Error::sys(format!("waitpid {}", self.intermediate), err)),
            }
        };
        if let Some(tty) = self.tty.take() {
            tty.finish();
        }
        let oom = self
            .cgroup
            .as_deref()
            .is_some_and(|name| cgroup::oom_kills(name) > 0);
        Ok(if oom && code > 128 { 137 } else { code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_none_adds_a_network_namespace() {
        let all = CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        assert_eq!(namespace_flags(Network::Host), all);
        assert_eq!(
            namespace_flags(Network::None),
            all | CloneFlags::CLONE_NEWNET
        );
    }
}
