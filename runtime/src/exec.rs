//! `exec`: one more process in a running container, as `docker exec` / `runc exec` start
//! it. It joins the container's cgroup and namespaces, takes the same identity setup as
//! the container's command (user, capabilities, no_new_privs) and execs.
//!
//! ```text
//! strata (parent) --fork--> joiner: cgroup, setns(user? ipc uts net cgroup pid mnt) --fork--> process
//!        <-- 'P' + pid (the process's host pid)
//!        <-- 'T' + pty master (SCM_RIGHTS), with a terminal    --> 'W' (window size set)
//!        <-- 'E' + message | EOF (the socket is close-on-exec: EOF = exec happened)
//! ```
//! The joiner stays to wait for the process and exits with its status, as the
//! intermediate process of `run` does.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;

use crate::container::{self, Identity};
use crate::error::{Error, Result};
use crate::process::{
    Child, dup_stdio, exec_or_exit, fail, hand_over_terminal, pid_message, send,
    terminal_then_exec, wait_and_exit,
};
use crate::sys::{self, ForkResult};
use crate::syscall::{Linux, Syscall};
use crate::{cgroup, tty};

/// What `exec` runs, and in which container.
pub struct ExecSpec {
    /// The container's pid 1, as the host sees it.
    pub pid: i32,
    pub args: Vec<String>,
    /// The environment (the container's, with `exec -e` on top).
    pub env: Vec<String>,
    /// Working directory inside the container ("" = /); it must exist.
    pub cwd: String,
    /// As `run`'s: name, uid, uid:gid or name:group, in the container's /etc/passwd.
    pub user: String,
    pub hostname: Option<String>,
    /// The container's cgroup ("" = none).
    pub cgroup_name: String,
    pub tty: bool,
    pub interactive: bool,
    /// As the container was started (`exec` does not change them).
    pub no_new_privileges: bool,
    pub seccomp_unconfined: bool,
    pub seccomp_profile: Option<String>,
    /// None: docker's default set.
    pub capabilities: Option<u64>,
    /// `exec --privileged`: every capability strata holds, whatever `capabilities` says;
    /// the seccomp filter (the container's choice of one) is compiled for them.
    pub privileged: bool,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Forwarded signals go to the process's group (it leads a session of its own: what
    /// it started too, as a shell's `cmd || exit 1` runs cmd), not to it alone.
    pub signal_group: bool,
}

/// The namespaces joined, in this order (the user namespace first, so that it owns the
/// rest; the mount namespace last, as it changes the root).
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The container's namespaces that differ from this process's (joining one's own user
/// namespace is EINVAL; the others it shares, e.g. the host network, need no joining).
fn namespaces_of(pid: i32) -> Result<Vec<(&'static str, CloneFlags, OwnedFd)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            (Err(err), _) => return Err(Error::io("failed to open", theirs, err)),
            (_, Err(_)) => false,
        };
        if !same {
            let file = std::fs::File::open(&theirs)
                .map_err(|err| Error::io("failed to open", theirs, err))?;
            out.push((name, flag, OwnedFd::from(file)));
        } else if name == "mnt" {
            // Every container has a mount namespace of its own: a process in ours is not
            // the container's (its pid was reused), and joining it would run on the host.
            return Err(Error::Spec(format!(
                "pid {pid} is not the container's process (it shares strata's mount namespace): the container is gone"
            )));
        }
    }
    Ok(out)
}

/// Starts `spec.args` in the container; returns once it has been exec'd (or failed to).
pub fn spawn(spec: ExecSpec) -> Result<Child> {
    if spec.args.is_empty() {
        return Err(Error::Spec("no command given".into()));
    }
    let namespaces = namespaces_of(spec.pid)?;
    let (stdout, tty_sink) = if spec.tty {
        (None, spec.stdout)
    } else {
        (spec.stdout, None)
    };
    let stdio = (spec.stdin, stdout, spec.stderr);
    let (mut parent_sock, child_sock) =
        UnixStream::pair().map_err(|err| Error::io("failed to create", "sync socket", err))?;
    let caps = if spec.privileged {
        crate::caps::held()
    } else {
        spec.capabilities.unwrap_or_else(crate::caps::default_mask)
    };
    let identity = Who {
        user: spec.user,
        cwd: spec.cwd,
        env: spec.env,
        hostname: spec.hostname,
        tty: spec.tty,
        last_cap: crate::caps::last_cap(),
        caps,
        no_new_privileges: spec.no_new_privileges,
        seccomp: crate::seccomp::compiled(
            spec.seccomp_unconfined,
            spec.seccomp_profile.as_deref(),
            caps,
        )?,
    };
    let joiner = match sys::fork().map_err(|err| Error::sys("fork", err))? {
        ForkResult::Child => {
            drop(parent_sock);
            joiner_main(
                child_sock,
                &spec.cgroup_name,
                namespaces,
                identity,
                spec.args,
                stdio,
            )
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_sock);
    drop(stdio);
    let abort = |message: String| -> Error {
        let _ = nix::sys::signal::kill(joiner, Signal::SIGKILL);
        let _ = waitpid(joiner, None);
        Error::Setup(message)
    };
    let mut tag = [0u8; 1];
    let next = parent_sock.read_exact(&mut tag).map(|()| tag[0]);
    let pid = pid_message(&mut parent_sock, next, "the exec process").map_err(abort)?;
    let (pty_master, _) =
        terminal_then_exec(&mut parent_sock, "the exec process").map_err(abort)?;
    let tty = match (spec.tty, pty_master) {
        (true, Some(master)) => Some(tty::Session::start(master, spec.interactive, tty_sink)?),
        (true, None) => return Err(abort("the exec process sent no terminal".into())),
        (false, _) => None,
    };
    let cgroup = (!spec.cgroup_name.is_empty()).then_some(spec.cgroup_name);
    Ok(Child::new(pid, joiner, cgroup, tty))
}

/// The process's identity, owned (it crosses the forks); see `container::Identity`.
struct Who {
    user: String,
    cwd: String,
    env: Vec<String>,
    hostname: Option<String>,
    tty: bool,
    last_cap: u32,
    caps: u64,
    no_new_privileges: bool,
    seccomp: Option<Vec<u8>>,
}
type Stdio = (Option<OwnedFd>, Option<OwnedFd>, Option<OwnedFd>);

/// The joiner: the container's cgroup, then its namespaces, then fork the process into
/// its pid namespace and wait for it.
fn joiner_main(
    mut sock: UnixStream,
    cgroup_name: &str,
    namespaces: Vec<(&'static str, CloneFlags, OwnedFd)>,
    identity: Who,
    args: Vec<String>,
    stdio: Stdio,
) -> ! {
    // Not dumpable from here to the command's execve (which makes it dumpable again): a
    // process of the container must not open /proc/N/exe, the host's strata binary
    // (runc's CVE-2019-5736).
    let _ = nix::sys::prctl::set_dumpable(false);
    // The process waits for this pipe until the pid message is on the socket, so that
    // the parent reads 'P' before the process's own messages.
    let (go_read, go_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(err) => fail(&mut sock, &format!("pipe: {err}")),
    };
    // The parent forwards terminal signals to the process; the joiner only waits.
    for signal in crate::signals::FORWARDED {
        let _ = sys::set_disposition(signal, true);
    }
    // Before the mount namespace hides the host's cgroupfs.
    if !cgroup_name.is_empty()
        && let Err(err) = cgroup::join(cgroup_name, nix::unistd::getpid().as_raw())
    {
        fail(&mut sock, &format!("join the container's cgroup: {err}"));
    }
    for (name, flag, fd) in &namespaces {
        if let Err(err) = nix::sched::setns(fd.as_fd(), *flag) {
            fail(
                &mut sock,
                &format!("enter the container's {name} namespace: {err}"),
            );
        }
    }
    drop(namespaces);
    let child = match sys::fork() {
        Ok(ForkResult::Child) => {
            drop(go_write);
            let mut go = [0u8; 1];
            if std::fs::File::from(go_read).read_exact(&mut go).is_err() {
                sys::exit_now(125);
            }
            process_main(sock, identity, args, stdio)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(err) => fail(
            &mut sock,
            &format!("fork into the container's pid namespace: {err}"),
        ),
    };
    drop(stdio);
    drop(go_read);
    let mut message = b"P".to_vec();
    message.extend_from_slice(&child.as_raw().to_le_bytes());
    send(&mut sock, &message);
    drop(sock);
    let _ = std::io::Write::write_all(&mut std::fs::File::from(go_write), b"G");
    wait_and_exit(child)
}

/// The process: its own session, the terminal or the given stdio, the identity, exec.
fn process_main(mut sock: UnixStream, identity: Who, args: Vec<String>, stdio: Stdio) -> ! {
    crate::signals::restore_defaults();
    if let Err(err) = nix::unistd::setsid() {
        fail(&mut sock, &format!("setsid: {err}"));
    }
    if identity.tty {
        let (master, slave, _) = match Linux.open_pty() {
            Ok(pty) => pty,
            Err(err) => fail(
                &mut sock,
                &format!("open a pty on the container's devpts: {err}"),
            ),
        };
        hand_over_terminal(&mut sock, master, &slave);
    } else {
        dup_stdio(
            &mut sock,
            (
                stdio.0.as_ref().map(|fd| fd.as_fd()),
                stdio.1.as_ref().map(|fd| fd.as_fd()),
                stdio.2.as_ref().map(|fd| fd.as_fd()),
            ),
        );
    }
    drop(stdio);
    let _ = sys::cloexec_from(3);
    let id = Identity {
        user: &identity.user,
        cwd: &identity.cwd,
        env: &identity.env,
        hostname: identity.hostname.as_deref(),
        tty: identity.tty,
        last_cap: identity.last_cap,
        caps: identity.caps,
        create_cwd: false,
        no_new_privileges: identity.no_new_privileges,
        seccomp: identity.seccomp.as_deref(),
        die_with_parent: false,
        console: None,
    };
    let env = match container::identity(&Linux, &id) {
        Ok(env) => env,
        Err(message) => fail(&mut sock, &message),
    };
    exec_or_exit(&args, &env)
}
