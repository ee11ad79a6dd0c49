//! The container's filesystem view, built inside the new mount namespace in runc's order:
//! private propagation; the rootfs bound onto itself; /proc, a minimal /dev on tmpfs and
//! a read-only /sys mounted inside it (before pivot_root: in a user namespace the kernel
//! only allows a new proc mount while a fully visible one is reachable); pivot_root(".",
//! ".") and a lazy unmount of the old root (no put_old directory appears in the upper);
//! then runc's masked and read-only /proc and /sys paths.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::syscall::{Kind, Syscall};

/// What the filesystem setup needs to know.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub root: PathBuf,
    /// In a user namespace: devices are bind-mounted (mknod is not allowed there) and a
    /// sysfs may have to be bound from the host.
    pub userns: bool,
    /// Host files bound onto container paths (absolute inside the container), e.g. the
    /// container's own /etc/resolv.conf, /etc/hosts and /etc/hostname.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Host directories and files bound onto container paths (`run -v`, volumes).
    pub binds: Vec<Bind>,
    /// The cgroup hierarchies to show read-only at /sys/fs/cgroup (the process is in
    /// its own cgroup namespace by then, so each shows the container's cgroup as root).
    pub cgroups: Vec<crate::cgroup::ViewMount>,
    /// `run --read-only`: the root is remounted read-only once everything is mounted on it
    /// (its /dev, /proc, volumes and /etc files keep their own flags).
    pub read_only: bool,
    /// `run --privileged`: nothing masked or read-only in /proc, /sys and the cgroup view
    /// writable, and `host_devices` in /dev.
    pub privileged: bool,
    /// The host's devices a privileged container gets (`host_devices`), made in its /dev.
    pub host_devices: Vec<HostDevice>,
}

/// A host path bound onto a container path, as `docker run -v SRC:DST[:ro]` binds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute, inside the container.
    pub target: PathBuf,
    pub readonly: bool,
}

/// Symlinks followed in one path before ELOOP, as Linux does (MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// The host path of container path `inside`, its symlinks followed as they read inside
/// the container: an absolute link starts again at `root` and `..` stops there, so nothing
/// mounted on the result can land outside the container (what runc's securejoin does).
/// The missing tail of the path is kept as given, to be created.
pub fn resolve_in_root(sys: &dyn Syscall, root: &Path, inside: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let push_parts = |pending: &mut Vec<std::ffi::OsString>, path: &Path| {
        for part in path.components().rev() {
            match part {
                Component::Normal(name) => pending.push(name.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    let mut pending = Vec::new();
    push_parts(&mut pending, inside);
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(&part);
        if let Some(target) = sys.read_link(&root.join(&resolved)) {
            hops += 1;
            if hops > MAX_HOPS {
                return Err(format!(
                    "{}: too many levels of symbolic links",
                    inside.display()
                ));
            }
            resolved.pop();
            if target.is_absolute() {
                resolved.clear();
            }
            push_parts(&mut pending, &target);
        }
    }
    Ok(root.join(resolved))
}

/// runc's default masked paths (libcontainer/specconv/example.go).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes bound from the host's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Trees of the host's /dev a privileged container does not get: its own /dev has them
/// (pts, shm, fd) or they are not devices of the host (mqueue, container managers'), as
/// runc leaves them out.
const NOT_HOST_DEVICES: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// A host device node, as a privileged container gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Relative to /dev ("sda", "net/tun").
    pub path: PathBuf,
    /// Type and permission bits (st_mode).
    pub mode: u32,
    pub rdev: u64,
    pub uid: u32,
    pub gid: u32,
}

/// The host's device nodes (character and block) that `run --privileged` gives the
/// container, as docker gives them (runc's `HostDevices`): /dev walked without
/// [`NOT_HOST_DEVICES`], the console, the nodes the container's /dev has of its own (its
/// ptmx, [`DEVICES`]) and other file systems mounted below it. Symlinks are not followed.
/// The container's /dev gets nodes of the same numbers (mknod, as runc makes them): no
/// mount per device, and one removed from the host meanwhile costs nothing.
pub fn host_devices() -> Vec<HostDevice> {
    devices_below(Path::new("/dev"))
}

/// The device nodes below `dev` that [`host_devices`] gives, paths relative to it.
fn devices_below(dev: &Path) -> Vec<HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(top) = std::fs::metadata(dev) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(dev.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            // lstat, not the entry's type: a node bound over a file (the /dev of a container
            // of ours) shows as the node
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let name = entry.file_name();
            let path = rel.join(&name);
            let kind = meta.file_type();
            if kind.is_dir() {
                if meta.dev() == top.dev() && !NOT_HOST_DEVICES.iter().any(|skip| name == *skip) {
                    pending.push(path);
                }
            } else if (kind.is_char_device() || kind.is_block_device())
                && !(rel.as_os_str().is_empty()
                    && (name == "console"
                        || name == "ptmx"
                        || DEVICES.iter().any(|own| name == *own)))
            {
                out.push(HostDevice {
                    path,
                    mode: meta.mode(),
                    rdev: meta.rdev(),
                    uid: meta.uid(),
                    gid: meta.gid(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

type Step = Result<(), String>;

fn sys_err(what: String) -> impl FnOnce(nix::Error) -> String {
    move |err| format!("{what}: {err}")
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> String {
    move |err| format!("{what}: {err}")
}

fn mount(
    sys: &dyn Syscall,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Step {
    sys.mount(source, target, fstype, flags, data)
        .map_err(sys_err(format!(
            "mount {} on {}",
            fstype
                .map(str::to_string)
                .or_else(|| source.map(|s| s.display().to_string()))
                .unwrap_or_default(),
            target.display()
        )))
}

fn mkdir(sys: &dyn Syscall, path: &Path) -> Step {
    sys.mkdir_all(path)
        .map_err(io_err(format!("mkdir {}", path.display())))
}

/// Everything up to and including the pivot into the new root.
pub fn prepare(sys: &dyn Syscall, spec: &Rootfs) -> Step {
    let root = spec.root.as_path();
    // Nothing we mount may propagate back to the host (and pivot_root refuses shared mounts).
    mount(
        sys,
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount(
        sys,
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;

    let proc_dir = root.join("proc");
    mkdir(sys, &proc_dir)?;
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount(
        sys,
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nosuid_noexec_nodev,
        None,
    )?;

    dev(sys, spec)?;

    let sys_dir = root.join("sys");
    mkdir(sys, &sys_dir)?;
    // A privileged container may write sysfs, as docker's.
    let ro = if spec.privileged {
        nosuid_noexec_nodev
    } else {
        nosuid_noexec_nodev | MsFlags::MS_RDONLY
    };
    // A fresh sysfs, also with the host's network (root may mount it there): a bind of
    // the host's /sys would bring its submounts (tracefs, debugfs, bpf...) writable.
    let fresh = if !spec.userns {
        sys.mount(Some(Path::new("sysfs")), &sys_dir, Some("sysfs"), ro, None)
            .is_ok()
    } else {
        false
    };
    if !fresh {
        // sysfs belongs to the network namespace's owner: without one of our own, bind the
        // host's and make the bind read-only (runc does the same for rootless containers).
        mount(
            sys,
            Some(Path::new("/sys")),
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mount(
            sys,
            None,
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
            None,
        )?;
    }

    cgroup_view(sys, spec);
    bind_files(sys, spec)?;
    bind_volumes(sys, spec)?;

    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only
    // the container's tree (pivot_root(2), "NOTES": new_root and put_old may be the same).
    sys.chdir(root)
        .map_err(sys_err(format!("chdir {}", root.display())))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(sys_err(format!("pivot_root {}", root.display())))?;
    mount(
        sys,
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(sys_err("detach old root".into()))?;
    sys.chdir(Path::new("/"))
        .map_err(sys_err("chdir /".into()))?;

    if !spec.privileged {
        mask(sys)?;
    }
    if spec.read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(
            sys,
            None,
            Path::new("/"),
            None,
            flags | sys.locked_flags(Path::new("/")),
            None,
        )?;
    }
    Ok(())
}

/// Mounts the container's cgroup hierarchies read-only at /sys/fs/cgroup: cgroup2 there,
/// or a tmpfs holding one mount per v1 hierarchy (and `cpu`, `cpuacct` links to a
/// co-mounted `cpu,cpuacct`), as docker shows them. Best effort: a container whose
/// kernel refuses (v1 inside some user namespaces) runs without the view.
fn cgroup_view(sys: &dyn Syscall, spec: &Rootfs) {
    if spec.cgroups.is_empty() {
        return;
    }
    let base = spec.root.join("sys/fs/cgroup");
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !spec.privileged {
        flags |= MsFlags::MS_RDONLY;
    }
    if let [only] = spec.cgroups.as_slice()
        && only.dir.is_empty()
    {
        let _ = mount(
            sys,
            Some(Path::new("cgroup2")),
            &base,
            Some(only.fstype),
            flags,
            None,
        );
        return;
    }
    let writable = flags - MsFlags::MS_RDONLY;
    if mount(
        sys,
        Some(Path::new("tmpfs")),
        &base,
        Some("tmpfs"),
        writable,
        Some("mode=755"),
    )
    .is_err()
    {
        return;
    }
    for hierarchy in &spec.cgroups {
        let target = base.join(&hierarchy.dir);
        if mkdir(sys, &target).is_err() {
            continue;
        }
        let options = Some(hierarchy.options.as_str());
        let _ = mount(
            sys,
            Some(Path::new("cgroup")),
            &target,
            Some(hierarchy.fstype),
            flags,
            options,
        );
        if hierarchy.dir.contains(',') {
            for controller in hierarchy.dir.split(',') {
                let _ = sys.symlink(&hierarchy.dir, &base.join(controller));
            }
        }
    }
    let _ = mount(sys, None, &base, None, MsFlags::MS_REMOUNT | flags, None);
}

/// Binds the given host files onto their container paths, before the pivot (while the
/// host's side is reachable). Like runc, a missing target is created as an empty file:
/// that lands in the upper, so a caller that must keep it out of the container's changes
/// (docker's "init layer") provides the mount points in a lower layer.
fn bind_files(sys: &dyn Syscall, spec: &Rootfs) -> Step {
    for (host, inside) in &spec.files {
        let target = resolve_in_root(sys, &spec.root, inside)?;
        match sys.kind(&target) {
            Some(Kind::Dir) => {
                return Err(format!(
                    "bind {} on {}: the target is a directory",
                    host.display(),
                    inside.display()
                ));
            }
            Some(Kind::File) => {}
            None => {
                if let Some(parent) = target.parent() {
                    mkdir(sys, parent)?;
                }
                sys.touch(&target)
                    .map_err(io_err(format!("create {}", target.display())))?;
            }
        }
        mount(sys, Some(host), &target, None, MsFlags::MS_BIND, None)?;
    }
    Ok(())
}

/// Binds host directories and files onto their container paths (`run -v`), creating the
/// mount point when the image lacks it, as docker does; read-only ones are remounted so.
fn bind_volumes(sys: &dyn Syscall, spec: &Rootfs) -> Step {
    for bind in &spec.binds {
        let what = || {
            format!(
                "bind {} on {}",
                bind.source.display(),
                bind.target.display()
            )
        };
        let target = resolve_in_root(sys, &spec.root, &bind.target)?;
        let Some(kind) = sys.kind(&bind.source) else {
            return Err(format!("{}: the source does not exist", what()));
        };
        match (sys.kind(&target), kind) {
            (None, Kind::Dir) => mkdir(sys, &target)?,
            (None, Kind::File) => {
                if let Some(parent) = target.parent() {
                    mkdir(sys, parent)?;
                }
                sys.touch(&target)
                    .map_err(io_err(format!("create {}", target.display())))?;
            }
            (Some(Kind::Dir), Kind::File) => {
                return Err(format!("{}: a file onto a directory", what()));
            }
            (Some(Kind::File), Kind::Dir) => {
                return Err(format!("{}: a directory onto a file", what()));
            }
            _ => {}
        }
        let bind_flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(sys, Some(&bind.source), &target, None, bind_flags, None)?;
        if bind.readonly {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(
                sys,
                None,
                &target,
                None,
                flags | sys.locked_flags(&target),
                None,
            )?;
        }
    }
    Ok(())
}

/// /dev: a small tmpfs with the host's device nodes bound in, a private devpts, /dev/shm
/// and the /proc/self/fd links.
fn dev(sys: &dyn Syscall, spec: &Rootfs) -> Step {
    let dev = spec.root.join("dev");
    mkdir(sys, &dev)?;
    mount(
        sys,
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        sys.touch(&target)
            .map_err(io_err(format!("create {}", target.display())))?;
        let host = Path::new("/dev").join(name);
        mount(sys, Some(&host), &target, None, MsFlags::MS_BIND, None)?;
    }
    for device in &spec.host_devices {
        let target = dev.join(&device.path);
        if let Some(parent) = target.parent() {
            sys.mkdir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        sys.device(&target, device)
            .map_err(io_err(format!("mknod {}", target.display())))?;
    }
    let pts = dev.join("pts");
    mkdir(sys, &pts)?;
    // gid=5 (tty) is only valid where it is mapped; leave it out in a user namespace.
    let pts_options = if spec.userns {
        "newinstance,ptmxmode=0666,mode=0620"
    } else {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    };
    mount(
        sys,
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts_options),
    )?;
    let shm = dev.join("shm");
    mkdir(sys, &shm)?;
    mount(
        sys,
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("/proc/kcore", "core"),
    ] {
        let link = dev.join(link);
        sys.symlink(target, &link)
            .map_err(io_err(format!("symlink {}", link.display())))?;
    }
    Ok(())
}

/// Masks and read-only paths, inside the new root.
fn mask(sys: &dyn Syscall) -> Step {
    for path in MASKED_PATHS.iter().map(Path::new) {
        match sys.kind(path) {
            Some(Kind::Dir) => mount(
                sys,
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Some(Kind::File) => mount(
                sys,
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            None => {}
        }
    }
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for path in READONLY_PATHS.iter().map(Path::new) {
        if sys.kind(path).is_none() {
            continue;
        }
        mount(
            sys,
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mount(
            sys,
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Recorder;

    fn recorder(links: &[(&str, &str)]) -> Recorder {
        Recorder {
            links: links
                .iter()
                .map(|(link, target)| (PathBuf::from(link), PathBuf::from(target)))
                .collect(),
            ..Recorder::default()
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let sys = recorder(&[
            ("/r/abs", "/etc"),
            ("/r/rel", "usr/lib"),
            ("/r/usr/lib/up", "../../../../.."),
            ("/r/loop", "/loop"),
        ]);
        let resolve = |inside: &str| resolve_in_root(&sys, Path::new("/r"), Path::new(inside));
        assert_eq!(resolve("/abs/x").unwrap(), Path::new("/r/etc/x"));
        assert_eq!(
            resolve("/rel/app/data").unwrap(),
            Path::new("/r/usr/lib/app/data")
        );
        assert_eq!(
            resolve("/rel/up/tmp").unwrap(),
            Path::new("/r/tmp"),
            "never above the root"
        );
        assert_eq!(resolve("/../../x/./y/..").unwrap(), Path::new("/r/x"));
        let err = resolve("/loop/x").unwrap_err();
        assert!(err.contains("too many levels of symbolic links"), "{err}");
    }

    #[test]
    fn binds_follow_links_inside_and_read_only_ones_keep_locked_flags() {
        let mut sys = recorder(&[("/r/data", "/srv/data")]);
        sys.dirs.push("/host/dir".into());
        sys.files.insert("/host/file".into(), String::new());
        let spec = Rootfs {
            root: "/r".into(),
            userns: false,
            files: Vec::new(),
            binds: vec![
                Bind {
                    source: "/host/dir".into(),
                    target: "/data".into(),
                    readonly: true,
                },
                Bind {
                    source: "/host/file".into(),
                    target: "/etc/app.conf".into(),
                    readonly: false,
                },
            ],
            cgroups: Vec::new(),
            read_only: false,
            privileged: false,
            host_devices: Vec::new(),
        };
        bind_volumes(&sys, &spec).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mkdir /r/srv/data",
                "mount /host/dir /r/srv/data - MS_BIND|MS_REC -",
                "mount none /r/srv/data - MS_RDONLY|MS_NOSUID|MS_REMOUNT|MS_BIND -",
                "mkdir /r/etc",
                "touch /r/etc/app.conf",
                "mount /host/file /r/etc/app.conf - MS_BIND|MS_REC -",
            ]
        );
        let missing = Rootfs {
            binds: vec![Bind {
                source: "/nope".into(),
                target: "/x".into(),
                readonly: false,
            }],
            ..spec
        };
        let err = bind_volumes(&sys, &missing).unwrap_err();
        assert!(
            err.contains("/nope") && err.contains("does not exist"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod host_device_tests {
    use super::*;

    /// What a privileged container gets of the host's /dev: its device nodes, not the ones
    /// the container's /dev has of its own, nor the pts tree or symlinks.
    #[test]
    fn host_devices_are_the_nodes_the_container_lacks() {
        assert!(
            Path::new("/dev/fuse").exists(),
            "needs /dev/fuse: modprobe fuse"
        );
        let devices: Vec<PathBuf> = host_devices().into_iter().map(|d| d.path).collect();
        assert!(devices.contains(&PathBuf::from("fuse")), "{devices:?}");
        for own in ["null", "tty", "ptmx", "console", "stdin", "fd", "core"] {
            assert!(!devices.contains(&PathBuf::from(own)), "{own}: {devices:?}");
        }
        assert!(devices.iter().all(|d| !d.starts_with("pts")), "{devices:?}");
    }

    /// Unmounts and removes a test's scratch /dev.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0.join("net/fuse"), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A /dev whose nodes are bound over files (a container's, for a container inside it)
    /// lists them too, with the host node's numbers.
    #[test]
    fn nodes_bound_over_files_count() {
        use std::os::unix::fs::MetadataExt;
        let dev = Scratch(PathBuf::from(format!(
            "/var/tmp/strata-devtest-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(dev.0.join("net")).unwrap();
        let bound = dev.0.join("net/fuse");
        std::fs::write(&bound, b"").unwrap();
        std::fs::write(dev.0.join("plain"), b"").unwrap();
        nix::mount::mount(
            Some("/dev/fuse"),
            &bound,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind /dev/fuse (needs root and /dev/fuse)");
        let found = devices_below(&dev.0);
        let host = std::fs::metadata("/dev/fuse").unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, PathBuf::from("net/fuse"));
        assert_eq!((found[0].rdev, found[0].mode), (host.rdev(), host.mode()));
    }
}

#[cfg(test)]
mod cgroup_view_tests {
    use super::*;
    use crate::cgroup::ViewMount;
    use crate::syscall::Recorder;

    fn spec(cgroups: Vec<ViewMount>) -> Rootfs {
        Rootfs {
            root: "/r".into(),
            userns: false,
            files: Vec::new(),
            binds: Vec::new(),
            cgroups,
            read_only: false,
            privileged: false,
            host_devices: Vec::new(),
        }
    }

    #[test]
    fn v1_hierarchies_under_a_read_only_tmpfs() {
        let sys = Recorder::default();
        let v1 = |dir: &str| ViewMount {
            dir: dir.into(),
            fstype: "cgroup",
            options: dir.into(),
        };
        cgroup_view(&sys, &spec(vec![v1("memory"), v1("cpu,cpuacct")]));
        assert_eq!(
            sys.calls(),
            [
                "mount tmpfs /r/sys/fs/cgroup tmpfs MS_NOSUID|MS_NODEV|MS_NOEXEC mode=755",
                "mkdir /r/sys/fs/cgroup/memory",
                "mount cgroup /r/sys/fs/cgroup/memory cgroup MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC memory",
                "mkdir /r/sys/fs/cgroup/cpu,cpuacct",
                "mount cgroup /r/sys/fs/cgroup/cpu,cpuacct cgroup MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC cpu,cpuacct",
                "symlink cpu,cpuacct /r/sys/fs/cgroup/cpu",
                "symlink cpu,cpuacct /r/sys/fs/cgroup/cpuacct",
                "mount none /r/sys/fs/cgroup - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_REMOUNT -",
            ]
        );
    }

    #[test]
    fn cgroup2_at_the_top() {
        let sys = Recorder::default();
        cgroup_view(
            &sys,
            &spec(vec![ViewMount {
                dir: String::new(),
                fstype: "cgroup2",
                options: String::new(),
            }]),
        );
        assert_eq!(
            sys.calls(),
            ["mount cgroup2 /r/sys/fs/cgroup cgroup2 MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -"]
        );
    }
}
