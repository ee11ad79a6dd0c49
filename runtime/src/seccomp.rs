//! The default seccomp filter: the system calls docker's default profile (moby
//! `profiles/seccomp/default.json`) refuses a container that holds docker's default
//! capabilities, refused here too, with EPERM. `run --security-opt seccomp=unconfined`
//! goes without.
//!
//! Docker's profile allows a list and refuses the rest; this one refuses a list and
//! allows the rest, so a system call newer than the list is allowed (docker's answers
//! EPERM to it). What matters is the same: no new user namespace (where the container's
//! root would get every capability back and reach mount, netfilter, BPF...), no kernel
//! keyring, BPF, perf, userfaultfd, io_uring, module or kexec calls, no mount API, no
//! clock setting, no setns. Nor does it narrow personality(2) to docker's five values
//! (libseccomp cannot say "none of these" of one argument in a rule); the personalities
//! left (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC) weaken only the calling process.
//!
//! The filter is compiled by libseccomp (the library runc, crun and podman use) in the
//! parent, for every ABI an x86-64 process can call the kernel through (x86-64, i386 and
//! x32, whose numbers differ); the container process only loads the finished program
//! (`Syscall::seccomp`), as its last step before dropping its capabilities.

use std::io::{Read, Seek};

mod profile;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

/// Refused (EPERM) unless the container holds one of the capabilities given: what docker's
/// profile allows only with such a capability, what is obsolete, and kernel surfaces a
/// container has no need of. A name this libseccomp does not know is skipped.
const REFUSED: &[(&str, &[u32])] = &[
    // accounting, clocks, modules, reboot, kexec, swap, quotas
    // (clock_adjtime stays: glibc's adjtimex and ntp_gettime read the clock through it, and
    // the kernel checks CAP_SYS_TIME for a change)
    ("acct", &[SYS_PACCT]),
    ("clock_settime", &[SYS_TIME]),
    ("clock_settime64", &[SYS_TIME]),
    ("settimeofday", &[SYS_TIME]),
    ("stime", &[SYS_TIME]),
    ("create_module", &[SYS_MODULE]),
    ("delete_module", &[SYS_MODULE]),
    ("finit_module", &[SYS_MODULE]),
    ("init_module", &[SYS_MODULE]),
    ("get_kernel_syms", &[SYS_MODULE]),
    ("query_module", &[SYS_MODULE]),
    ("kexec_file_load", &[SYS_BOOT]),
    ("kexec_load", &[SYS_BOOT]),
    ("reboot", &[SYS_BOOT]),
    ("swapon", &[SYS_ADMIN]),
    ("swapoff", &[SYS_ADMIN]),
    ("quotactl", &[SYS_ADMIN]),
    ("quotactl_fd", &[SYS_ADMIN]),
    // mounts and namespaces (clone and unshare: only their namespace flags, below)
    ("mount", &[SYS_ADMIN]),
    ("umount", &[SYS_ADMIN]),
    ("umount2", &[SYS_ADMIN]),
    ("mount_setattr", &[SYS_ADMIN]),
    ("move_mount", &[SYS_ADMIN]),
    ("open_tree", &[SYS_ADMIN]),
    ("fsconfig", &[SYS_ADMIN]),
    ("fsmount", &[SYS_ADMIN]),
    ("fsopen", &[SYS_ADMIN]),
    ("fspick", &[SYS_ADMIN]),
    ("pivot_root", &[SYS_ADMIN]),
    ("setns", &[SYS_ADMIN]),
    // kernel surfaces: BPF, perf, fault handling, fanotify, handles, keyrings, io_uring
    ("bpf", &[SYS_ADMIN, BPF]),
    ("perf_event_open", &[SYS_ADMIN, PERFMON]),
    ("userfaultfd", &[]),
    ("kcmp", &[SYS_PTRACE]),
    ("process_madvise", &[SYS_PTRACE]),
    ("pidfd_getfd", &[SYS_PTRACE]),
    ("fanotify_init", &[SYS_ADMIN]),
    ("lookup_dcookie", &[SYS_ADMIN]),
    ("open_by_handle_at", &[DAC_READ_SEARCH]),
    ("add_key", &[]),
    ("keyctl", &[]),
    ("request_key", &[]),
    ("io_uring_setup", &[]),
    ("io_uring_enter", &[]),
    ("io_uring_register", &[]),
    // memory policy, raw I/O ports, the kernel log, terminals
    ("get_mempolicy", &[SYS_NICE]),
    ("mbind", &[SYS_NICE]),
    ("set_mempolicy", &[SYS_NICE]),
    ("move_pages", &[SYS_NICE]),
    ("migrate_pages", &[SYS_NICE]),
    ("ioperm", &[SYS_RAWIO]),
    ("iopl", &[SYS_RAWIO]),
    ("syslog", &[SYSLOG]),
    ("vhangup", &[SYS_TTY_CONFIG]),
    // obsolete
    ("nfsservctl", &[]),
    ("sysfs", &[]),
    ("_sysctl", &[]),
    ("uselib", &[]),
    ("ustat", &[]),
    ("vm86", &[]),
    ("vm86old", &[]),
];

/// The namespace flags clone(2) and unshare(2) may not carry (CLONE_NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET; unshare also NEWTIME, which in clone's
/// flags is a bit of the exit signal).
const NAMESPACES: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];
const CLONE_NEWTIME: u64 = 0x80;

const DAC_READ_SEARCH: u32 = 2;
const SYS_MODULE: u32 = 16;
const SYS_RAWIO: u32 = 17;
const SYS_PTRACE: u32 = 19;
const SYS_PACCT: u32 = 20;
const SYS_ADMIN: u32 = 21;
const SYS_BOOT: u32 = 22;
const SYS_NICE: u32 = 23;
const SYS_TIME: u32 = 25;
const SYS_TTY_CONFIG: u32 = 26;
const SYSLOG: u32 = 34;
const PERFMON: u32 = 38;
const BPF: u32 = 39;

/// The default filter for a container holding capabilities `caps` (a mask) as a BPF
/// program (`struct sock_filter` array), ready for seccomp(2).
pub fn default_program(caps: u64) -> Result<Vec<u8>, String> {
    let holds = |unlocking: &[u32]| unlocking.iter().any(|&cap| caps & (1 << cap) != 0);
    let fail =
        |what: &str, err: libseccomp::error::SeccompError| format!("seccomp filter: {what}: {err}");
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(|e| fail("init", e))?;
    // Loaded while the process still holds CAP_SYS_ADMIN: no_new_privs stays the
    // user's choice (off by default, as docker's), so setuid binaries keep working.
    ctx.set_ctl_nnp(false)
        .map_err(|e| fail("no_new_privs", e))?;
    if cfg!(target_arch = "x86_64") {
        for arch in [ScmpArch::X86, ScmpArch::X32] {
            ctx.add_arch(arch).map_err(|e| fail("add an ABI", e))?;
        }
    }
    let eperm = ScmpAction::Errno(libc::EPERM);
    for &(name, unlocking) in REFUSED {
        if holds(unlocking) {
            continue;
        }
        // a name this libseccomp does not know on any ABI cannot be called by it either
        let Ok(call) = ScmpSyscall::from_name(name) else {
            continue;
        };
        ctx.add_rule(eperm, call).map_err(|e| fail(name, e))?;
    }
    let has = |flag: u64| ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(flag), flag);
    let namespaces = if holds(&[SYS_ADMIN]) {
        &[][..]
    } else {
        NAMESPACES
    };
    for (name, extra) in [("clone", None), ("unshare", Some(CLONE_NEWTIME))] {
        let call = ScmpSyscall::from_name(name).map_err(|e| fail(name, e))?;
        let extra = extra.filter(|_| !namespaces.is_empty());
        for &flag in namespaces.iter().chain(extra.as_ref()) {
            ctx.add_rule_conditional(eperm, call, &[has(flag)])
                .map_err(|e| fail(name, e))?;
        }
    }
    // clone3 passes its flags in memory a filter cannot read: ENOSYS, so that glibc falls
    // back to clone, whose flags it can (docker does the same, unless CAP_SYS_ADMIN).
    if !holds(&[SYS_ADMIN]) {
        let clone3 = ScmpSyscall::from_name("clone3").map_err(|e| fail("clone3", e))?;
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), clone3)
            .map_err(|e| fail("clone3", e))?;
    }
    // vsock sockets reach the hypervisor's side (docker refuses the family too)
    let socket = ScmpSyscall::from_name("socket").map_err(|e| fail("socket", e))?;
    // (the kernel reads the family as an int: the upper half of the register is not its)
    let vsock = ScmpArgCompare::new(
        0,
        ScmpCompareOp::MaskedEqual(0xffff_ffff),
        libc::AF_VSOCK as u64,
    );
    ctx.add_rule_conditional(eperm, socket, &[vsock])
        .map_err(|e| fail("socket", e))?;

    export(&ctx)
}

/// The filter as a BPF program, through a memfd (libseccomp 2.5 writes to descriptors).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, String> {
    let memfd = rustix::fs::memfd_create("strata-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("seccomp filter: memfd_create: {e}"))?;
    ctx.export_bpf(&memfd)
        .map_err(|e| format!("seccomp filter: export: {e}"))?;
    let mut file = std::fs::File::from(memfd);
    let mut program = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut program))
        .map_err(|e| format!("seccomp filter: read the program back: {e}"))?;
    if program.is_empty() || program.len() % 8 != 0 {
        return Err(format!(
            "seccomp filter: libseccomp wrote {} bytes, not a BPF program",
            program.len()
        ));
    }
    Ok(program)
}

/// A docker seccomp profile (`--security-opt seccomp=FILE`'s JSON) compiled for a
/// container holding capabilities `caps`.
pub fn profile_program(json: &str, caps: u64) -> Result<Vec<u8>, String> {
    let ctx = profile::build(json, &profile::Host::this(caps))?;
    export(&ctx)
}

/// The compiled filter (the profile given, else the default one), or None when unconfined. Compiled by the parent, before
/// any fork: the container process only loads it.
pub(crate) fn compiled(
    unconfined: bool,
    profile: Option<&str>,
    caps: u64,
) -> crate::Result<Option<Vec<u8>>> {
    if unconfined {
        return Ok(None);
    }
    match profile {
        Some(json) => profile_program(json, caps),
        None => default_program(caps),
    }
    .map(Some)
    .map_err(crate::Error::Setup)
}

/// Loads `program` (from [`default_program`]) on the calling thread: SECCOMP_SET_MODE_FILTER
/// with no flags. Needs CAP_SYS_ADMIN in the current user namespace or no_new_privs.
pub fn load(program: &[u8]) -> nix::Result<()> {
    let len = u16::try_from(program.len() / 8).map_err(|_| nix::errno::Errno::E2BIG)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `prog` points at `len` whole sock_filter entries that outlive the call; the
    // kernel copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `probe` in a forked child under the default filter; its exit code comes back.
    fn under_filter(probe: fn() -> i32) -> i32 {
        under_filter_with(crate::caps::default_mask(), probe)
    }

    fn under_filter_with(caps: u64, probe: fn() -> i32) -> i32 {
        under_program(default_program(caps).expect("compile"), probe)
    }

    /// Runs `probe` in a forked child under `program`; its exit code comes back.
    pub(super) fn under_program(program: Vec<u8>, probe: fn() -> i32) -> i32 {
        // SAFETY: the child only makes system calls and exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = match load(&program) {
                    Ok(()) => probe(),
                    Err(_) => 99,
                };
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("wait") {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("probe ended {other:?}"),
                }
            }
        }
    }

    pub(super) fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            nix::errno::Errno::last_raw()
        } else {
            0
        }
    }

    #[test]
    fn the_program_is_whole_instructions() {
        let program = default_program(crate::caps::default_mask()).unwrap();
        assert_eq!(program.len() % 8, 0);
        // the refused list, the namespace flags and three ABIs: well over a hundred
        assert!(
            program.len() / 8 > 100,
            "{} instructions",
            program.len() / 8
        );
    }

    /// Needs root (CAP_SYS_ADMIN loads a filter without no_new_privs), as every runtime test.
    #[test]
    fn refuses_new_user_namespaces_keyrings_and_mounts_and_allows_the_rest() {
        assert_eq!(nix::unistd::geteuid().as_raw(), 0, "run the tests as root");
        // a new user namespace: EPERM, by unshare and by clone
        assert_eq!(
            under_filter(|| errno_of(unsafe {
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)
            }) as i32),
            libc::EPERM
        );
        assert_eq!(
            under_filter(|| errno_of(unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWUSER | libc::SIGCHLD,
                    0,
                    0,
                    0,
                    0,
                )
            })),
            libc::EPERM
        );
        // mount (the kernel would say EFAULT to these arguments)
        assert_eq!(
            under_filter(|| errno_of(unsafe { libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0) })),
            libc::EPERM
        );
        // unshare without namespace flags is harmless and allowed
        assert_eq!(
            under_filter(|| errno_of(unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_FS) })),
            0
        );
        assert_eq!(
            under_filter(|| errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) })),
            libc::EPERM
        );
        assert_eq!(
            under_filter(|| errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) })),
            libc::ENOSYS
        );
        // with CAP_SYS_ADMIN (`--cap-add SYS_ADMIN`), as under docker's profile
        let admin = crate::caps::default_mask() | 1 << SYS_ADMIN;
        assert_eq!(
            under_filter_with(admin, || errno_of(unsafe {
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)
            })),
            0
        );
        assert_eq!(
            under_filter_with(admin, || errno_of(unsafe {
                libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)
            })),
            libc::EPERM
        );
        // reading the clock's state (glibc's adjtimex and ntp_gettime) is not refused
        assert_eq!(
            under_filter(|| {
                let mut timex: libc::timex = unsafe { std::mem::zeroed() };
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_clock_adjtime,
                        libc::CLOCK_REALTIME,
                        &raw mut timex,
                    )
                };
                if rc >= 0 { 0 } else { errno_of(rc) }
            }),
            0
        );
        assert_eq!(
            under_filter(|| errno_of(unsafe {
                libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0)
            })),
            libc::EPERM
        );
        // the family is an int: garbage above it does not get around the rule
        assert_eq!(
            under_filter(|| errno_of(unsafe {
                libc::syscall(
                    libc::SYS_socket,
                    0x1_0000_0000u64 | libc::AF_VSOCK as u64,
                    libc::SOCK_STREAM,
                    0,
                )
            })),
            libc::EPERM
        );
        // a plain fork (clone with SIGCHLD) still works
        assert_eq!(
            under_filter(|| match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => unsafe { libc::_exit(7) },
                Ok(nix::unistd::ForkResult::Parent { child }) => {
                    match nix::sys::wait::waitpid(child, None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, 7)) => 0,
                        _ => 1,
                    }
                }
                Err(_) => 2,
            }),
            0
        );
    }
}
