//! The container process's side, after the namespaces exist: filesystem (rootfs.rs),
//! hostname, loopback, then the process identity in the order runc's `finalizeNamespace`
//! uses (bounding set, ids, capabilities, workdir, no_new_privs), then exec. `setup` runs
//! against the `Syscall` trait so its exact sequence is unit-tested; `exec` is the real
//! execve with docker's 126/127 conventions.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::mount::MsFlags;

use crate::rootfs::{self, Rootfs};
use crate::syscall::Syscall;
use crate::user;

/// The default PATH docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the in-container setup needs (plain data, built by the parent before fork).
#[derive(Debug, Clone)]
pub struct Setup {
    pub rootfs: Rootfs,
    pub hostname: Option<String>,
    pub loopback: bool,
    pub user: String,
    pub cwd: String,
    pub env: Vec<String>,
    pub tty: bool,
    pub last_cap: u32,
    /// The capabilities root keeps (bounding, permitted, effective sets): docker's default
    /// set, tweaked by `--cap-add` / `--cap-drop` (`caps::tweak`).
    pub caps: u64,
    /// `--security-opt no-new-privileges`: setuid binaries no longer elevate.
    pub no_new_privileges: bool,
    /// The compiled seccomp filter (`seccomp::default_program`); None: unconfined.
    pub seccomp: Option<Vec<u8>>,
    /// The process dies with its parent (a build's RUN).
    pub die_with_parent: bool,
}

/// The environment to exec with.
pub type Env = Vec<String>;

fn has_key(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|pair| pair.split_once('=').map(|(k, _)| k) == Some(key))
}

/// Runs the whole setup; the error is a message for strata's stderr (exit 125).
/// The container's terminal: a pty of its own devpts (so `tty` says /dev/pts/0, as
/// under runc), the slave also bound to /dev/console. The master goes to strata.
#[derive(Debug)]
pub struct Console {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// What `setup` leaves for the exec.
#[derive(Debug)]
pub struct Prepared {
    pub env: Env,
    pub console: Option<Console>,
}

pub fn setup(sys: &dyn Syscall, spec: &Setup) -> Result<Prepared, String> {
    rootfs::prepare(sys, &spec.rootfs)?;
    let console = if spec.tty {
        let (master, slave, path) = sys
            .open_pty()
            .map_err(|err| format!("open a pty on the container's devpts: {err}"))?;
        let target = Path::new("/dev/console");
        sys.touch(target)
            .map_err(|err| format!("create /dev/console: {err}"))?;
        sys.mount(Some(&path), target, None, MsFlags::MS_BIND, None)
            .map_err(|err| format!("bind {} on /dev/console: {err}", path.display()))?;
        Some(Console { master, slave })
    } else {
        None
    };
    if let Some(hostname) = &spec.hostname {
        sys.sethostname(hostname)
            .map_err(|err| format!("sethostname {hostname:?}: {err}"))?;
    }
    if spec.loopback {
        sys.loopback_up()
            .map_err(|err| format!("bring up loopback: {err}"))?;
    }

    let env = identity(
        sys,
        &Identity {
            user: &spec.user,
            cwd: &spec.cwd,
            env: &spec.env,
            hostname: spec.hostname.as_deref(),
            tty: spec.tty,
            last_cap: spec.last_cap,
            caps: spec.caps,
            create_cwd: true,
            no_new_privileges: spec.no_new_privileges,
            seccomp: spec.seccomp.as_deref(),
            die_with_parent: spec.die_with_parent,
            console: console.as_ref().map(|c| c.slave.as_fd()),
        },
    )?;
    Ok(Prepared { env, console })
}

/// Who the command runs as and where: `run`'s container process and `exec`'s both take
/// this identity, in runc's finalizeNamespace order.
pub struct Identity<'a> {
    pub user: &'a str,
    pub cwd: &'a str,
    pub env: &'a [String],
    pub hostname: Option<&'a str>,
    pub tty: bool,
    pub last_cap: u32,
    /// The capabilities root keeps (see `Setup::caps`).
    pub caps: u64,
    /// `run` makes a missing working directory; `exec` reports it.
    pub create_cwd: bool,
    /// Off by default, as docker's: a setuid `sudo` or `ping` must work for a non-root USER.
    pub no_new_privileges: bool,
    /// The seccomp filter to load; None: unconfined.
    pub seccomp: Option<&'a [u8]>,
    /// Set the parent-death signal again after the id switch, which clears it
    /// (commit_creds): a build's RUN as a non-root USER must die with the build too.
    pub die_with_parent: bool,
    /// `run`'s terminal, not yet on the standard descriptors (`exec`'s is).
    pub console: Option<std::os::fd::BorrowedFd<'a>>,
}

/// Resolves the user in the container's /etc/passwd and /etc/group, completes the
/// environment (PATH, HOSTNAME, HOME, TERM), then loads the seccomp filter, drops the
/// bounding set, switches ids, sets capabilities, enters the working directory and sets
/// no_new_privs. Returns the
/// environment to exec with.
pub fn identity(sys: &dyn Syscall, id: &Identity<'_>) -> Result<Env, String> {
    let passwd = sys.read_file(Path::new("/etc/passwd")).unwrap_or_default();
    let group = sys.read_file(Path::new("/etc/group")).unwrap_or_default();
    let exec_user = user::resolve(id.user, &passwd, &group).map_err(|err| err.to_string())?;

    let mut env = id.env.to_vec();
    if !has_key(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(hostname) = id.hostname
        && !has_key(&env, "HOSTNAME")
    {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has_key(&env, "HOME") {
        env.push(format!("HOME={}", exec_user.home));
    }
    if id.tty && !has_key(&env, "TERM") {
        env.push("TERM=xterm".into());
    }

    let cwd = if id.cwd.is_empty() { "/" } else { id.cwd };
    if !cwd.starts_with('/') {
        return Err(format!("working directory {cwd:?} is not absolute"));
    }
    // docker creates a missing workdir (as root, before the user switch) for run, not exec.
    if id.create_cwd {
        sys.mkdir_all(Path::new(cwd))
            .map_err(|err| format!("create working directory {cwd}: {err}"))?;
    }

    // A session keyring of its own, as runc gives each container: the one strata was
    // started with (a login session's Kerberos or ecryptfs keys) is not the container's.
    // Before the filter, which refuses keyctl.
    sys.join_session_keyring()
        .map_err(|err| format!("join a new session keyring: {err}"))?;
    // The filter is loaded while the process still holds CAP_SYS_ADMIN, which lets it
    // go without no_new_privs (runc does the same when no_new_privs is off); nothing
    // after this calls what it refuses.
    if let Some(program) = id.seccomp {
        sys.seccomp(program)
            .map_err(|err| format!("load the seccomp filter: {err}"))?;
    }
    let keep = id.caps;
    for cap in 0..=id.last_cap {
        if keep & (1u64 << cap) == 0 {
            sys.drop_bounding_cap(cap)
                .map_err(|err| format!("drop capability {cap} from the bounding set: {err}"))?;
        }
    }
    sys.clear_ambient_caps()
        .map_err(|err| format!("clear ambient capabilities: {err}"))?;
    if id.tty && exec_user.uid != 0 {
        sys.give_terminal(id.console, exec_user.uid, exec_user.gid)
            .map_err(|err| format!("give the terminal to {}: {err}", exec_user.uid))?;
    }
    sys.setgroups(&exec_user.groups)
        .map_err(|err| format!("setgroups {:?}: {err}", exec_user.groups))?;
    sys.setresgid(exec_user.gid)
        .map_err(|err| format!("setresgid {}: {err}", exec_user.gid))?;
    sys.setresuid(exec_user.uid)
        .map_err(|err| format!("setresuid {}: {err}", exec_user.uid))?;
    if id.die_with_parent {
        sys.set_parent_death_kill()
            .map_err(|err| format!("set the parent-death signal: {err}"))?;
    }
    // Root keeps docker's set; any other user keeps none (the kernel already cleared them
    // on the uid change; say so explicitly). Inheritable stays empty (CVE-2022-24769).
    let mask = if exec_user.uid == 0 { keep } else { 0 };
    sys.capset(mask, mask, 0)
        .map_err(|err| format!("capset: {err}"))?;
    sys.chdir(Path::new(cwd))
        .map_err(|err| format!("chdir to working directory {cwd}: {err}"))?;
    if id.no_new_privileges {
        sys.set_no_new_privs()
            .map_err(|err| format!("set no_new_privs: {err}"))?;
    }
    Ok(env)
}

/// How an exec attempt ended: the exit code and the message docker would print.
pub struct ExecFailure {
    pub code: i32,
    pub message: String,
}

fn path_of(env: &[String]) -> &str {
    env.iter()
        .find_map(|pair| pair.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Finds `program` like execvp, with the container's PATH: Err(127) when nothing is
/// there, Err(126) when the only match is not executable.
pub fn find_program(program: &str, env: &[String]) -> Result<std::path::PathBuf, ExecFailure> {
    use nix::unistd::{AccessFlags, access};
    if program.contains('/') {
        return Ok(program.into());
    }
    let mut denied = None;
    for dir in path_of(env).split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file() && access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        denied.get_or_insert(candidate);
    }
    Err(match denied {
        Some(path) => ExecFailure {
            code: 126,
            message: format!("exec: {:?}: permission denied", path.display().to_string()),
        },
        None => ExecFailure {
            code: 127,
            message: format!("exec: {program:?}: executable file not found in $PATH"),
        },
    })
}

/// execve, or the failure to report: ENOENT -> 127, EACCES/ENOEXEC/EISDIR -> 126.
pub fn exec(args: &[String], env: &[String]) -> ExecFailure {
    let Some(program) = args.first() else {
        return ExecFailure {
            code: 125,
            message: "no command given".into(),
        };
    };
    let path = match find_program(program, env) {
        Ok(path) => path,
        Err(failure) => return failure,
    };
    let to_c = |s: &str| {
        CString::new(s).map_err(|_| ExecFailure {
            code: 125,
            message: format!("{s:?} contains a NUL byte"),
        })
    };
    let (Ok(path_c), Ok(argv), Ok(envp)) = (
        to_c(&path.to_string_lossy()),
        args.iter().map(|a| to_c(a)).collect::<Result<Vec<_>, _>>(),
        env.iter().map(|e| to_c(e)).collect::<Result<Vec<_>, _>>(),
    ) else {
        return ExecFailure {
            code: 125,
            message: "argument or environment contains a NUL byte".into(),
        };
    };
    let err = match nix::unistd::execve(&path_c, &argv, &envp) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    let code = match err {
        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => 127,
        _ => 126,
    };
    ExecFailure {
        code,
        message: format!("exec {:?}: {err}", path.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::caps;
    use crate::syscall::{Kind, Recorder};

    fn setup_spec(userns: bool) -> Setup {
        Setup {
            rootfs: Rootfs {
                root: "/r".into(),
                userns,
                files: vec![("/c/resolv.conf".into(), "/etc/resolv.conf".into())],
                binds: Vec::new(),
                cgroups: Vec::new(),
                read_only: false,
                privileged: false,
                host_devices: Vec::new(),
            },
            hostname: Some("box".into()),
            loopback: true,
            user: "app".into(),
            cwd: "/work".into(),
            env: vec!["A=1".into()],
            tty: false,
            last_cap: 40,
            caps: caps::default_mask(),
            no_new_privileges: true,
            seccomp: Some(vec![0; 16]),
            die_with_parent: false,
        }
    }

    fn recorder() -> Recorder {
        let mut recorder = Recorder::default();
        recorder.files.insert(
            PathBuf::from("/etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into(),
        );
        recorder.files.insert(
            PathBuf::from("/etc/group"),
            "app:x:1000:\nextra:x:2000:app\n".into(),
        );
        recorder
            .files
            .insert(PathBuf::from("/proc/kcore"), String::new());
        recorder.dirs.push(PathBuf::from("/proc/sys"));
        recorder.dirs.push(PathBuf::from("/sys/firmware"));
        recorder
    }

    fn position(calls: &[String], prefix: &str) -> usize {
        calls
            .iter()
            .position(|call| call == prefix || call.starts_with(&format!("{prefix} ")))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
    }

    #[test]
    fn unconfined_loads_no_filter() {
        let recorder = recorder();
        let spec = Setup {
            seccomp: None,
            ..setup_spec(false)
        };
        setup(&recorder, &spec).unwrap();
        let calls = recorder.calls();
        assert!(
            !calls.iter().any(|c| c.starts_with("seccomp")),
            "{calls:#?}"
        );
    }

    #[test]
    fn setup_follows_runc_order() {
        let recorder = recorder();
        let env = setup(&recorder, &setup_spec(false)).unwrap().env;
        let calls = recorder.calls();
        assert_eq!(calls[0], "mount none / - MS_REC|MS_PRIVATE -");
        assert_eq!(calls[1], "mount /r /r - MS_BIND|MS_REC -");
        let order = [
            "mount proc /r/proc proc",
            "mount tmpfs /r/dev tmpfs",
            "mount /dev/null /r/dev/null",
            "mount devpts /r/dev/pts devpts",
            "mount shm /r/dev/shm tmpfs",
            "symlink pts/ptmx /r/dev/ptmx",
            "mount sysfs /r/sys sysfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC",
            "chdir /r",
            "pivot_root . .",
            "mount none . - MS_REC|MS_SLAVE",
            "umount . MNT_DETACH",
            "chdir /",
            "mount /dev/null /proc/kcore - MS_BIND",
            "mount tmpfs /sys/firmware tmpfs MS_RDONLY",
            "mount /proc/sys /proc/sys - MS_BIND|MS_REC",
            "sethostname box",
            "loopback_up",
            "mkdir /work",
            "join_session_keyring",
            // loaded while CAP_SYS_ADMIN is still held (no no_new_privs needed)
            "seccomp 2 instructions",
            "drop_bounding_cap 2",
            "clear_ambient_caps",
            "setgroups [1000, 2000]",
            "setresgid 1000",
            "setresuid 1000",
            "capset 0x0 0x0 0x0",
            "chdir /work",
            "set_no_new_privs",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|prefix| position(&calls, prefix))
            .collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "out of order: {positions:?}\n{calls:#?}"
        );
        assert_eq!(calls.last().unwrap(), "set_no_new_privs");
        // Only the docker default caps survive in the bounding set.
        let dropped: Vec<&String> = calls
            .iter()
            .filter(|c| c.starts_with("drop_bounding_cap"))
            .collect();
        assert_eq!(dropped.len(), 41 - caps::DOCKER_DEFAULT.len());
        assert!(!calls.contains(&"drop_bounding_cap 0".to_string()));
        assert_eq!(
            env,
            [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "A=1",
                "HOSTNAME=box",
                "HOME=/home/app"
            ]
        );
    }

    #[test]
    fn tty_opens_the_pty_inside_and_binds_the_console() {
        let recorder = recorder();
        let mut spec = setup_spec(false);
        spec.tty = true;
        let prepared = setup(&recorder, &spec).unwrap();
        assert!(prepared.console.is_some());
        assert!(prepared.env.contains(&"TERM=xterm".to_string()));
        let calls = recorder.calls();
        let open = position(&calls, "open_pty");
        assert!(position(&calls, "pivot_root . .") < open);
        assert_eq!(calls[open + 2], "mount /dev/pts/0 /dev/console - MS_BIND -");
        assert!(open < position(&calls, "setresuid 1000"));
        // the user (not root) can open its own terminal again, as under runc (QA 17b)
        let given = position(&calls, "give_terminal 1000:1000");
        assert!(open < given && given < position(&calls, "setresuid 1000"));
    }

    #[test]
    fn etc_files_are_bound_before_the_pivot() {
        let recorder = recorder();
        setup(&recorder, &setup_spec(false)).unwrap();
        let calls = recorder.calls();
        let touch = position(&calls, "touch /r/etc/resolv.conf");
        let bind = position(
            &calls,
            "mount /c/resolv.conf /r/etc/resolv.conf - MS_BIND -",
        );
        assert!(position(&calls, "mkdir /r/etc") < touch, "{calls:#?}");
        assert!(
            touch < bind && bind < position(&calls, "pivot_root . ."),
            "{calls:#?}"
        );
    }

    #[test]
    fn root_keeps_docker_caps() {
        let recorder = recorder();
        let mut spec = setup_spec(false);
        spec.user = String::new();
        setup(&recorder, &spec).unwrap();
        assert!(
            recorder
                .calls()
                .contains(&"capset 0xa80425fb 0xa80425fb 0x0".to_string())
        );
    }

    #[test]
    fn userns_binds_sysfs_from_host() {
        let recorder = recorder();
        setup(&recorder, &setup_spec(true)).unwrap();
        let calls = recorder.calls();
        assert!(
            calls
                .iter()
                .any(|c| c == "mount /sys /r/sys - MS_BIND|MS_REC -"),
            "{calls:#?}"
        );
        assert!(!calls.iter().any(|c| c.contains("sysfs")));
        assert!(
            calls
                .iter()
                .any(|c| c.contains("newinstance,ptmxmode=0666,mode=0620") && !c.contains("gid=5"))
        );
    }

    #[test]
    fn unknown_user_fails_before_any_identity_change() {
        let recorder = recorder();
        let mut spec = setup_spec(false);
        spec.user = "ghost".into();
        let err = setup(&recorder, &spec).unwrap_err();
        assert_eq!(
            err,
            "unable to find user ghost: no matching entries in /etc/passwd"
        );
        assert!(!recorder.calls().iter().any(|c| c.starts_with("setres")));
        let _ = Kind::Dir;
    }

    #[test]
    fn missing_program_is_127() {
        let failure = find_program(
            "surely-not-a-program-xyz",
            &["PATH=/nonexistent:/bin".into()],
        )
        .unwrap_err();
        assert_eq!(failure.code, 127);
        assert!(
            failure
                .message
                .contains("executable file not found in $PATH")
        );
    }
}
