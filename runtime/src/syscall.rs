//! The syscalls of container setup behind one trait (youki's `Syscall`), so the exact
//! sequence run inside the new namespaces can be unit-tested without root: `Linux` makes
//! the calls, `Recorder` (tests) writes them down and answers file reads from a map.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// What a path is, for masking: directories get a read-only tmpfs, files /dev/null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

pub trait Syscall {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    fn mkdir_all(&self, path: &Path) -> std::io::Result<()>;
    /// Creates an empty regular file (a bind-mount target) if nothing is there.
    fn touch(&self, path: &Path) -> std::io::Result<()>;
    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()>;
    /// Makes device node `path` as the host has `device` (type, number, mode, owner).
    fn device(&self, path: &Path, device: &crate::rootfs::HostDevice) -> std::io::Result<()>;
    fn kind(&self, path: &Path) -> Option<Kind>;
    /// The target of `path` when it is a symlink.
    fn read_link(&self, path: &Path) -> Option<PathBuf>;
    /// The flags of the mount holding `path` that a user namespace locks (a bind's
    /// remount must keep them: mount(2), EPERM).
    fn locked_flags(&self, path: &Path) -> MsFlags;
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    fn loopback_up(&self) -> nix::Result<()>;
    fn setgroups(&self, groups: &[u32]) -> nix::Result<()>;
    /// Gives the terminal `console` (else the one on the standard descriptors, if any) to
    /// `uid`:`gid`, as runc's fixStdioPermissions does: the user reopens it (`$(tty)`,
    /// tmux, pinentry).
    fn give_terminal(&self, console: Option<BorrowedFd<'_>>, uid: u32, gid: u32)
    -> nix::Result<()>;
    fn setresgid(&self, gid: u32) -> nix::Result<()>;
    fn setresuid(&self, uid: u32) -> nix::Result<()>;
    fn drop_bounding_cap(&self, cap: u32) -> nix::Result<()>;
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()>;
    fn clear_ambient_caps(&self) -> nix::Result<()>;
    fn set_no_new_privs(&self) -> nix::Result<()>;
    /// Loads a compiled seccomp filter (`seccomp::default_program`) on this process.
    fn seccomp(&self, program: &[u8]) -> nix::Result<()>;
    /// Joins a new, anonymous session keyring (a kernel without keyrings is no error).
    fn join_session_keyring(&self) -> nix::Result<()>;
    /// SIGKILL when the parent dies (set again after an id change, which clears it).
    fn set_parent_death_kill(&self) -> nix::Result<()>;
    /// Opens a pty pair on the container's own devpts: (master, slave, slave path).
    fn open_pty(&self) -> nix::Result<(OwnedFd, OwnedFd, PathBuf)>;
}

/// The real thing.
pub struct Linux;

impl Syscall for Linux {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn mkdir_all(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn touch(&self, path: &Path) -> std::io::Result<()> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
    }

    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn device(&self, path: &Path, device: &crate::rootfs::HostDevice) -> std::io::Result<()> {
        use nix::sys::stat::{Mode, SFlag};
        let kind = SFlag::from_bits_truncate(device.mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(device.mode & 0o7777);
        nix::sys::stat::mknod(path, kind, perm, device.rdev)?;
        std::os::unix::fs::chown(path, Some(device.uid), Some(device.gid))?;
        // (whatever this process's umask took off)
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }

    fn kind(&self, path: &Path) -> Option<Kind> {
        let meta = std::fs::metadata(path).ok()?;
        Some(if meta.is_dir() { Kind::Dir } else { Kind::File })
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        std::fs::read_link(path).ok()
    }

    fn locked_flags(&self, path: &Path) -> MsFlags {
        use nix::sys::statvfs::FsFlags;
        let Ok(stat) = nix::sys::statvfs::statvfs(path) else {
            return MsFlags::empty();
        };
        let mut flags = MsFlags::empty();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if stat.flags().contains(fs) {
                flags |= ms;
            }
        }
        flags
    }

    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn loopback_up(&self) -> nix::Result<()> {
        crate::sys::set_loopback_up()
    }

    fn setgroups(&self, groups: &[u32]) -> nix::Result<()> {
        let groups: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|gid| nix::unistd::Gid::from_raw(*gid))
            .collect();
        nix::unistd::setgroups(&groups)
    }

    fn setresgid(&self, gid: u32) -> nix::Result<()> {
        let gid = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(gid, gid, gid)
    }

    fn setresuid(&self, uid: u32) -> nix::Result<()> {
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn give_terminal(
        &self,
        console: Option<BorrowedFd<'_>>,
        uid: u32,
        gid: u32,
    ) -> nix::Result<()> {
        let (uid, gid) = (
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
        if let Some(console) = console {
            return nix::unistd::fchown(console, uid, gid);
        }
        for fd in 0..3 {
            // SAFETY: the standard descriptors stay open for the length of this call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if nix::unistd::isatty(fd).unwrap_or(false) {
                nix::unistd::fchown(fd, uid, gid)?;
            }
        }
        Ok(())
    }

    fn drop_bounding_cap(&self, cap: u32) -> nix::Result<()> {
        crate::sys::drop_bounding_cap(cap)
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()> {
        crate::sys::capset(effective, permitted, inheritable)
    }

    fn clear_ambient_caps(&self) -> nix::Result<()> {
        crate::sys::clear_ambient_caps()
    }

    fn set_parent_death_kill(&self) -> nix::Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
    }

    fn set_no_new_privs(&self) -> nix::Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn seccomp(&self, program: &[u8]) -> nix::Result<()> {
        crate::seccomp::load(program)
    }

    fn join_session_keyring(&self) -> nix::Result<()> {
        const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
        // SAFETY: a null name asks for a new anonymous keyring; no memory is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            )
        };
        match nix::errno::Errno::result(rc) {
            Err(nix::errno::Errno::ENOSYS) => Ok(()),
            other => other.map(drop),
        }
    }

    fn open_pty(&self) -> nix::Result<(OwnedFd, OwnedFd, PathBuf)> {
        use nix::fcntl::OFlag;
        let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        nix::pty::grantpt(&master)?;
        nix::pty::unlockpt(&master)?;
        let path = PathBuf::from(nix::pty::ptsname_r(&master)?);
        let slave = nix::fcntl::open(
            &path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok((master.into(), slave, path))
    }
}

/// Test double: records every call as one line and serves `read_file` from `files`.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub calls: std::cell::RefCell<Vec<String>>,
    pub files: std::collections::HashMap<PathBuf, String>,
    pub dirs: Vec<PathBuf>,
    pub links: std::collections::HashMap<PathBuf, PathBuf>,
}

#[cfg(test)]
impl Recorder {
    fn log(&self, line: String) {
        self.calls.borrow_mut().push(line);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

/// Flag names joined with `|`, in bit order.
#[cfg(test)]
fn names<T>(flags: impl Iterator<Item = (&'static str, T)>) -> String {
    let names: Vec<&str> = flags.map(|(name, _)| name).collect();
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

#[cfg(test)]
impl Syscall for Recorder {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.log(format!("unshare {}", names(flags.iter_names())));
        Ok(())
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        let source = source
            .map(|s| s.display().to_string())
            .unwrap_or_else(|| "none".into());
        self.log(format!(
            "mount {source} {} {} {} {}",
            target.display(),
            fstype.unwrap_or("-"),
            names(flags.iter_names()),
            data.unwrap_or("-")
        ));
        Ok(())
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.log(format!(
            "umount {} {}",
            target.display(),
            names(flags.iter_names())
        ));
        Ok(())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.log(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ));
        Ok(())
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.log(format!("chdir {}", path.display()));
        Ok(())
    }

    fn mkdir_all(&self, path: &Path) -> std::io::Result<()> {
        self.log(format!("mkdir {}", path.display()));
        Ok(())
    }

    fn touch(&self, path: &Path) -> std::io::Result<()> {
        self.log(format!("touch {}", path.display()));
        Ok(())
    }

    fn symlink(&self, target: &str, link: &Path) -> std::io::Result<()> {
        self.log(format!("symlink {target} {}", link.display()));
        Ok(())
    }

    fn device(&self, path: &Path, device: &crate::rootfs::HostDevice) -> std::io::Result<()> {
        self.log(format!(
            "mknod {} {:o} {} {}:{}",
            path.display(),
            device.mode,
            device.rdev,
            device.uid,
            device.gid
        ));
        Ok(())
    }

    fn kind(&self, path: &Path) -> Option<Kind> {
        if self.dirs.iter().any(|dir| dir == path) {
            Some(Kind::Dir)
        } else if self.files.contains_key(path) {
            Some(Kind::File)
        } else {
            None
        }
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        self.links.get(path).cloned()
    }

    fn locked_flags(&self, _path: &Path) -> MsFlags {
        MsFlags::MS_NOSUID
    }

    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        self.log(format!("sethostname {name}"));
        Ok(())
    }

    fn loopback_up(&self) -> nix::Result<()> {
        self.log("loopback_up".into());
        Ok(())
    }

    fn setgroups(&self, groups: &[u32]) -> nix::Result<()> {
        self.log(format!("setgroups {groups:?}"));
        Ok(())
    }

    fn setresgid(&self, gid: u32) -> nix::Result<()> {
        self.log(format!("setresgid {gid}"));
        Ok(())
    }

    fn setresuid(&self, uid: u32) -> nix::Result<()> {
        self.log(format!("setresuid {uid}"));
        Ok(())
    }

    fn give_terminal(
        &self,
        _console: Option<BorrowedFd<'_>>,
        uid: u32,
        gid: u32,
    ) -> nix::Result<()> {
        self.log(format!("give_terminal {uid}:{gid}"));
        Ok(())
    }

    fn drop_bounding_cap(&self, cap: u32) -> nix::Result<()> {
        self.log(format!("drop_bounding_cap {cap}"));
        Ok(())
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()> {
        self.log(format!(
            "capset {effective:#x} {permitted:#x} {inheritable:#x}"
        ));
        Ok(())
    }

    fn clear_ambient_caps(&self) -> nix::Result<()> {
        self.log("clear_ambient_caps".into());
        Ok(())
    }

    fn set_parent_death_kill(&self) -> nix::Result<()> {
        self.log("set_parent_death_kill".into());
        Ok(())
    }

    fn set_no_new_privs(&self) -> nix::Result<()> {
        self.log("set_no_new_privs".into());
        Ok(())
    }

    fn seccomp(&self, program: &[u8]) -> nix::Result<()> {
        self.log(format!("seccomp {} instructions", program.len() / 8));
        Ok(())
    }

    fn join_session_keyring(&self) -> nix::Result<()> {
        self.log("join_session_keyring".into());
        Ok(())
    }

    fn open_pty(&self) -> nix::Result<(OwnedFd, OwnedFd, PathBuf)> {
        self.log("open_pty".into());
        let null = || {
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|_| nix::errno::Errno::EIO)
        };
        Ok((null()?, null()?, PathBuf::from("/dev/pts/0")))
    }
}
