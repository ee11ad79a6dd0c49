//! cgroups v2 and v1 behind one API (youki `libcgroups`): the layout is detected once from
//! /proc/self/mountinfo (unified, v1, or hybrid = v1 controllers with a v2 mount beside
//! them, as on this project's CI machine); each controller is one small file implementing
//! `Controller`. A container's cgroup is `<hierarchy>/strata/<name>` in every hierarchy it
//! uses; it survives the container's exit (so OOM kills can be read) until `remove`.

mod blkio;
mod cpu;
mod cpuset;
mod devices;
mod memory;
mod pids;
mod tree;

use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::Limits;
use crate::error::{Error, Result};

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone)]
pub enum Layout {
    /// cgroup2 only: one hierarchy.
    Unified(PathBuf),
    /// v1 hierarchies: each controller (or `name=NAME` of a named hierarchy, systemd's) at
    /// its mount point; `unified` is the v2 mount of a hybrid setup (it holds no
    /// controllers we can use, so limits go to v1).
    V1 {
        mounts: Vec<(String, PathBuf)>,
        unified: Option<PathBuf>,
    },
}

impl Layout {
    /// The layout of this machine, read once.
    pub fn get() -> &'static Layout {
        static LAYOUT: OnceLock<Layout> = OnceLock::new();
        LAYOUT.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            Layout::parse(&text)
        })
    }

    /// Parses /proc/self/mountinfo: `... mountpoint ... - fstype source superoptions`.
    pub fn parse(mountinfo: &str) -> Layout {
        // (whole hierarchy?, mount point, controllers or name=NAME) of each v1 mount
        let mut v1: Vec<(bool, &str, Vec<&str>)> = Vec::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut left = left.split(' ').skip(3);
            let (Some(root), Some(mount_point)) = (left.next(), left.next()) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, _source, options) =
                (right.next(), right.next(), right.next().unwrap_or(""));
            match fstype {
                Some("cgroup2") => unified = unified.or(Some(PathBuf::from(mount_point))),
                Some("cgroup") => {
                    // the super options: rw or ro, the controllers or name=NAME, and flags
                    // such as xattr, seclabel or release_agent=PATH
                    let hierarchy: Vec<&str> = options
                        .split(',')
                        .filter(|option| {
                            option.starts_with("name=") || V1_CONTROLLERS.contains(option)
                        })
                        .collect();
                    if !hierarchy.is_empty() {
                        v1.push((root == "/", mount_point, hierarchy));
                    }
                }
                _ => {}
            }
        }
        // A hierarchy mounted twice is used where it is mounted whole (not a subtree bound
        // elsewhere), else at its first mount point.
        v1.sort_by_key(|(whole, _, _)| !whole);
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for (_, mount_point, hierarchy) in v1 {
            if !mounts.iter().any(|(option, _)| option == hierarchy[0]) {
                for option in hierarchy {
                    mounts.push((option.to_string(), PathBuf::from(mount_point)));
                }
            }
        }
        // A named hierarchy (name=systemd, which a cgroup2 host may mount for an old
        // systemd in a container) carries no controller: it does not make a layout v1.
        let controllers = mounts
            .iter()
            .any(|(option, _)| !option.starts_with("name="));
        match (controllers, unified) {
            (false, Some(root)) => Layout::Unified(root),
            (_, unified) => Layout::V1 { mounts, unified },
        }
    }

    fn is_unified(&self) -> bool {
        matches!(self, Layout::Unified(_))
    }

    /// The directories of cgroup `name`, one per hierarchy we use (deduplicated: cpu and
    /// cpuacct are often co-mounted), the v2 one of a hybrid setup last.
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Layout::Unified(root) => vec![root.join("strata").join(name)],
            Layout::V1 { .. } => {
                let mut dirs = self.v1_dirs(name);
                dirs.extend(self.hybrid_dir(name));
                dirs
            }
        }
    }

    /// The directories of cgroup `name` in the v1 hierarchies.
    fn v1_dirs(&self, name: &str) -> Vec<PathBuf> {
        let Layout::V1 { mounts, .. } = self else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = mounts
            .iter()
            .map(|(_, mount)| mount.join("strata").join(name))
            .collect();
        dirs.dedup();
        dirs
    }

    /// The v2 cgroup `name` of a hybrid setup.
    fn hybrid_dir(&self, name: &str) -> Option<PathBuf> {
        match self {
            Layout::V1 {
                unified: Some(root),
                ..
            } => Some(root.join("strata").join(name)),
            _ => None,
        }
    }

    /// The v2 cgroup `name`: of the unified hierarchy, or a hybrid setup's.
    fn v2_dir(&self, name: &str) -> Option<PathBuf> {
        match self {
            Layout::Unified(root) => Some(root.join("strata").join(name)),
            Layout::V1 { .. } => self.hybrid_dir(name),
        }
    }

    fn controller_dir(&self, controller: &str, name: &str) -> Option<PathBuf> {
        match self {
            Layout::Unified(root) => Some(root.join("strata").join(name)),
            Layout::V1 { mounts, .. } => mounts
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, mount)| mount.join("strata").join(name)),
        }
    }
}

/// A hierarchy the container sees at /sys/fs/cgroup: `dir` below it ("" for a cgroup2
/// at /sys/fs/cgroup itself), the file system type and its mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    pub dir: String,
    pub fstype: &'static str,
    pub options: String,
}

/// The hierarchies a container with `limits` is placed in (`Cgroup::create`'s choice),
/// to mount read-only inside it as docker does: the JVM, Go and Node read their memory
/// and CPU limits there.
pub fn view(limits: &Limits) -> Vec<ViewMount> {
    match Layout::get() {
        Layout::Unified(_) => vec![ViewMount {
            dir: String::new(),
            fstype: "cgroup2",
            options: String::new(),
        }],
        Layout::V1 { mounts, unified } => {
            let mut out: Vec<ViewMount> = Vec::new();
            for (controller, point) in mounts {
                let joined = controller == "memory"
                    || limits.privileged
                    || CONTROLLERS
                        .iter()
                        .any(|c| c.name() == controller && c.wanted(limits));
                let Some(dir) = point.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if joined && !out.iter().any(|m| m.dir == dir) {
                    // what the host mounted there: "cpu,cpuacct", "name=systemd"
                    let options: Vec<&str> = mounts
                        .iter()
                        .filter(|(_, other)| other == point)
                        .map(|(option, _)| option.as_str())
                        .collect();
                    out.push(ViewMount {
                        dir: dir.to_string(),
                        fstype: "cgroup",
                        options: options.join(","),
                    });
                }
            }
            // the v2 hierarchy beside them, holding no controller (runc joins it too)
            if let Some(dir) = unified.as_deref().filter(|_| limits.privileged)
                && let Some(dir) = dir.file_name().and_then(|n| n.to_str())
            {
                out.push(ViewMount {
                    dir: dir.to_string(),
                    fstype: "cgroup2",
                    options: String::new(),
                });
            }
            out
        }
    }
}

/// One resource controller: applies its part of `Limits` to a cgroup directory.
pub trait Controller: Sync {
    /// The v1 controller name (subsystem), e.g. "memory".
    fn name(&self) -> &'static str;
    /// Does `limits` ask anything of this controller?
    fn wanted(&self, limits: &Limits) -> bool;
    /// Writes the limits into `dir` (the v1 controller dir or the v2 cgroup dir).
    fn apply(&self, dir: &Path, limits: &Limits, unified: bool) -> Result<()>;
}

/// The v1 controllers a hierarchy may carry (the kernel's cgroup_subsys names). Other mount
/// options are flags: rw, xattr, clone_children, and seclabel on SELinux hosts, for one.
const V1_CONTROLLERS: [&str; 15] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

static CONTROLLERS: [&dyn Controller; 6] = [
    &memory::Memory,
    &cpu::Cpu,
    &pids::Pids,
    &cpuset::Cpuset,
    &blkio::Blkio,
    &devices::Devices,
];

/// A container's cgroup, in every hierarchy.
#[derive(Debug)]
pub struct Cgroup {
    name: String,
    dirs: Vec<PathBuf>,
}

/// A container's cgroup name: one path component of ours.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::Spec(format!("bad cgroup name {name:?}")));
    }
    Ok(())
}

pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| Error::io("failed to write", path, source))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

impl Cgroup {
    /// Creates (or reuses) cgroup `name` and applies `limits`.
    pub fn create(name: &str, limits: &Limits) -> Result<Cgroup> {
        check_name(name)?;
        let layout = Layout::get();
        let unified = layout.is_unified();
        if let Layout::Unified(root) = layout {
            // Controllers must be enabled top-down for the leaf to get their files.
            let wanted = "+memory +cpu +pids +cpuset +io";
            let parent = root.join("strata");
            mkdir(&parent)?;
            for dir in [root.as_path(), parent.as_path()] {
                for controller in wanted.split(' ') {
                    let _ = std::fs::write(dir.join("cgroup.subtree_control"), controller);
                }
            }
        }
        // v1: join memory (OOM accounting) and the hierarchies that carry a limit; every
        // mkdir/rmdir in cgroupfs costs, and an unlimited controller adds nothing. A
        // privileged container joins every hierarchy, as under docker: a runtime or systemd
        // inside finds its own cgroup in each.
        let mut dirs: Vec<PathBuf> = match layout {
            Layout::Unified(_) => layout.dirs(name),
            Layout::V1 { .. } if limits.privileged => layout.v1_dirs(name),
            Layout::V1 { .. } => CONTROLLERS
                .iter()
                .filter(|c| c.name() == "memory" || c.wanted(limits))
                .filter_map(|c| layout.controller_dir(c.name(), name))
                .collect(),
        };
        dirs.dedup();
        for dir in &dirs {
            if let Some(parent) = dir.parent() {
                mkdir(parent)?;
                cpuset::inherit(parent, unified)?;
            }
            mkdir(dir)?;
            cpuset::inherit(dir, unified)?;
        }
        // A hybrid setup's v2 hierarchy carries no controller: the container is placed in
        // it as runc places one (systemd inside looks there), where the host lets us.
        let mut v2_freezer = false;
        if let Some(dir) = layout.hybrid_dir(name)
            && dir.parent().is_none_or(|parent| mkdir(parent).is_ok())
            && mkdir(&dir).is_ok()
        {
            v2_freezer = dir.join("cgroup.freeze").exists();
            dirs.push(dir);
        }
        // The freezer, which pauses it (`freeze`): a v2 cgroup's own (Linux 5.2 and
        // later), else v1's controller.
        if let Layout::V1 { .. } = layout
            && !limits.privileged
            && !v2_freezer
            && let Some(dir) = layout.controller_dir("freezer", name)
        {
            if let Some(parent) = dir.parent() {
                mkdir(parent)?;
            }
            mkdir(&dir)?;
            dirs.push(dir);
        }
        for controller in CONTROLLERS {
            if !controller.wanted(limits) {
                continue;
            }
            let dir = layout
                .controller_dir(controller.name(), name)
                .ok_or_else(|| Error::Cgroup {
                    name: name.to_string(),
                    message: format!("controller {} is not mounted", controller.name()),
                })?;
            controller.apply(&dir, limits, unified)?;
        }
        Ok(Cgroup {
            name: name.to_string(),
            dirs,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves `pid` into the cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> Result<()> {
        for dir in &self.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Did the kernel OOM-kill a process of this cgroup?
    pub fn oom_killed(&self) -> bool {
        oom_kills(&self.name) > 0
    }
}

/// Moves `pid` into the existing cgroup `name` in every hierarchy that has it (`exec`
/// joins the container's).
pub fn join(name: &str, pid: i32) -> Result<()> {
    check_name(name)?;
    for dir in Layout::get().dirs(name) {
        if dir.is_dir() {
            write(&dir, "cgroup.procs", &pid.to_string())?;
        }
    }
    Ok(())
}

/// The number of OOM kills in cgroup `name` (v2 memory.events, v1 memory.oom_control).
pub fn oom_kills(name: &str) -> u64 {
    let layout = Layout::get();
    let Some(dir) = layout.controller_dir("memory", name) else {
        return 0;
    };
    let file = if layout.is_unified() {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    memory::oom_kill_count(&read(&dir, file).unwrap_or_default())
}

/// The freezer of a cgroup: v2's (part of every v2 cgroup) or v1's controller.
#[derive(Debug, Clone, Copy)]
enum Freezer {
    V2,
    V1,
}

impl Freezer {
    /// The control file, and what freezes and thaws.
    fn control(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Freezer::V2 => ("cgroup.freeze", "1", "0"),
            Freezer::V1 => ("freezer.state", "FROZEN", "THAWED"),
        }
    }

    /// Are all processes of the cgroup at `dir` frozen?
    fn frozen(self, dir: &Path) -> bool {
        match self {
            Freezer::V2 => read(dir, "cgroup.events")
                .is_some_and(|events| events.lines().any(|line| line == "frozen 1")),
            Freezer::V1 => read(dir, "freezer.state").is_some_and(|state| state.trim() == "FROZEN"),
        }
    }
}

/// A cgroup whose processes are frozen; `thaw` or dropping it thaws them, and so does its
/// thaw guard (`ThawGuard`) if this process dies first.
#[derive(Debug)]
pub struct Frozen {
    dir: PathBuf,
    freezer: Freezer,
    thawed: bool,
    guard: Option<ThawGuard>,
}

impl Frozen {
    /// Thaws the cgroup (the drop that follows dismisses the guard); an error says it stays
    /// frozen.
    pub fn thaw(mut self) -> Result<()> {
        self.thawed = true;
        self.write_thaw()
    }

    fn write_thaw(&self) -> Result<()> {
        let (file, _, thaw) = self.freezer.control();
        write(&self.dir, file, thaw)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed
            && let Err(err) = self.write_thaw()
        {
            tracing::error!("{err}: the container stays frozen");
        }
        if let Some(guard) = self.guard.take() {
            guard.dismiss();
        }
    }
}

/// A child process that thaws a frozen cgroup if the process that froze it dies without
/// thawing it (a SIGKILLed `strata commit` would otherwise leave its container paused for
/// good). It waits on a pipe whose write end only the freezer holds: a byte there dismisses
/// it; the end of the pipe with no byte (its holder gone, however it died) makes it write
/// the thaw itself. It runs in a session of its own with the freezer's signal mask, so what
/// ends the freezer's process group or its terminal session does not end it too, and it
/// keeps what the freezer held open (a lock on the container, say) until it is done.
#[derive(Debug)]
struct ThawGuard {
    pid: nix::unistd::Pid,
    tell: std::io::PipeWriter,
}

impl ThawGuard {
    /// Starts the guard of the freezer control `file` in `dir`, which thaws with `thaw`.
    fn start(dir: &Path, file: &str, thaw: &'static str) -> Result<ThawGuard> {
        let path = dir.join(file);
        let control = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| Error::io("failed to open", &path, source))?;
        let (wait, tell) = std::io::pipe()
            .map_err(|source| Error::io("failed to create a pipe for", &path, source))?;
        match crate::sys::fork().map_err(|source| Error::Sys {
            op: "fork (thaw guard)".into(),
            source,
        })? {
            crate::sys::ForkResult::Child => {
                // Only syscalls from here on: the parent may have other threads.
                drop(tell);
                let _ = rustix::process::setsid();
                let mut byte = [0u8];
                let dismissed = loop {
                    match rustix::io::read(&wait, &mut byte) {
                        Err(Errno::INTR) => continue,
                        Ok(n) => break n > 0,
                        Err(_) => break false,
                    }
                };
                if !dismissed {
                    let _ = rustix::io::write(&control, thaw.as_bytes());
                }
                crate::sys::exit_now(0)
            }
            crate::sys::ForkResult::Parent { child } => Ok(ThawGuard { pid: child, tell }),
        }
    }

    /// The freezer thawed the cgroup itself: the guard ends without touching it.
    fn dismiss(self) {
        use std::io::Write;
        let ThawGuard { pid, mut tell } = self;
        let _ = tell.write_all(b"t");
        drop(tell);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// Freezes the processes of cgroup `name` (docker's pause) and returns once all are
/// frozen, or fails after `timeout` (thawing them again): with the v2 freezer where the
/// container has a v2 cgroup (a unified or hybrid layout), else with the v1 freezer.
pub fn freeze(name: &str, timeout: Duration) -> Result<Frozen> {
    check_name(name)?;
    let layout = Layout::get();
    let v1 = || layout.controller_dir("freezer", name);
    let (dir, freezer) = match layout
        .v2_dir(name)
        .filter(|dir| dir.join("cgroup.freeze").exists())
    {
        Some(dir) => (dir, Freezer::V2),
        None => match v1().filter(|dir| dir.is_dir()) {
            Some(dir) => (dir, Freezer::V1),
            None => {
                return Err(Error::Cgroup {
                    name: name.to_string(),
                    message: "no freezer: neither a v2 cgroup nor a v1 freezer cgroup".into(),
                });
            }
        },
    };
    freeze_at(name, dir, freezer, timeout)
}

/// Freezes the cgroup at `dir` (cgroup `name`) with `freezer`: see `freeze`.
fn freeze_at(name: &str, dir: PathBuf, freezer: Freezer, timeout: Duration) -> Result<Frozen> {
    let (file, freeze, thaw) = freezer.control();
    let guard = ThawGuard::start(&dir, file, thaw)?;
    let frozen = Frozen {
        dir,
        freezer,
        thawed: false,
        guard: Some(guard),
    };
    write(&frozen.dir, file, freeze)?;
    let deadline = std::time::Instant::now() + timeout;
    while !freezer.frozen(&frozen.dir) {
        if std::time::Instant::now() > deadline {
            return Err(Error::Cgroup {
                name: name.to_string(),
                message: format!(
                    "its processes did not freeze within {} s (one may be stuck in the kernel)",
                    timeout.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(frozen)
}

fn mkdir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(Error::io("failed to create cgroup", dir, err))
        }
        _ => Ok(()),
    }
}

/// Removes the empty cgroups below strata's parent, in every hierarchy, that are at least
/// `min_age` old and whose name `wanted` accepts: what a SIGKILLed strata leaves (a build
/// step's, a container's whose runner died), with the cgroups made below them. One with a
/// process anywhere below it is never touched; the age spares one made a moment ago for a
/// process about to join it. Stores share the parent, and a cgroup outlives its process
/// only after a crash, so any store's sweep may take any of them. Returns how many
/// directories went.
pub fn sweep_empty(min_age: Duration, wanted: impl Fn(&str) -> bool) -> usize {
    let mut parents: Vec<PathBuf> = match Layout::get() {
        Layout::Unified(root) => vec![root.join("strata")],
        Layout::V1 { mounts, unified } => mounts
            .iter()
            .map(|(_, m)| m)
            .chain(unified)
            .map(|m| m.join("strata"))
            .collect(),
    };
    parents.dedup();
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if !meta.is_dir() || !old || !wanted(&name.to_string_lossy()) {
                continue;
            }
            // with the cgroups a container made below it, if none holds a process
            let mut empty = true;
            let walked = tree::walk(
                &dir,
                |cgroup| {
                    empty &=
                        tree::read_at(cgroup, "cgroup.procs").is_some_and(|p| p.trim().is_empty())
                },
                |_, _| Ok(()),
            );
            if walked.is_err() || !empty {
                continue;
            }
            let below = tree::walk(&dir, |_| {}, remove_child);
            if below.is_ok() && std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes cgroup `name` from every hierarchy, with the cgroups the container made below
/// it (a privileged one may: a container runtime or systemd inside). What still runs in
/// any of them is killed first (v2 cgroup.kill on the top, v1 SIGKILL to each listed
/// pid, and v1 freezer cgroups thawed); then they go deepest first, walked again while
/// one is busy (a child made meanwhile). A missing cgroup is not an error.
pub fn remove(name: &str) -> Result<()> {
    check_name(name)?;
    for top in Layout::get().dirs(name) {
        remove_tree(&top)?;
    }
    Ok(())
}

fn remove_tree(top: &Path) -> Result<()> {
    let _ = std::fs::write(top.join("cgroup.kill"), "1");
    let kill = |cgroup: BorrowedFd<'_>| {
        for pid in tree::read_at(cgroup, "cgroup.procs")
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                crate::sys::kill_raw(pid, libc::SIGKILL);
            }
        }
        thaw_at(cgroup);
    };
    let mut attempt = 0;
    loop {
        // every process of the tree first, then the cgroups deepest first
        let walked = tree::walk(top, kill, |_, _| Ok(()))
            .and_then(|()| tree::walk(top, |_| {}, remove_child));
        let (dir, err) = match walked {
            Err(tree::TreeError::Walk(Errno::NOENT)) => return Ok(()),
            Err(tree::TreeError::Walk(err)) => (top.to_path_buf(), err),
            Err(tree::TreeError::Leave(below, err)) => (top.join(below), err),
            Ok(()) => match rustix::fs::unlinkat(rustix::fs::CWD, top, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                Err(err) => (top.to_path_buf(), err),
            },
        };
        if attempt == 50 {
            return Err(Error::io("failed to remove cgroup", dir, err.into()));
        }
        attempt += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes cgroup `name` below `parent`; one gone already is no error.
fn remove_child(parent: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Err(Errno::NOENT) => Ok(()),
        other => other,
    }
}

/// Thaws cgroup `name`'s v1 freezer cgroups, so that a SIGKILL sent to its processes
/// lands (see [`thaw_at`]), and its v2 cgroup (a pause `freeze` left).
pub fn thaw(name: &str) {
    let layout = Layout::get();
    if let Some(dir) = layout.controller_dir("freezer", name) {
        let _ = tree::walk(&dir, thaw_at, |_, _| Ok(()));
    }
    // (a commit whose thaw guard was killed with it left its v2 cgroup frozen)
    if let Some(dir) = layout.v2_dir(name) {
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    }
}

/// A v1 freezer cgroup frozen inside a privileged container (a nested runtime's pause, or
/// one that froze itself) holds its tasks, SIGKILL pending, until thawed. Each cgroup of a
/// tree is thawed: a parent's thaw does not reach a child that froze itself (runc kills
/// and then thaws the same way). v2's freezer lets SIGKILL through.
fn thaw_at(cgroup: BorrowedFd<'_>) {
    let flags = OFlags::WRONLY | OFlags::CLOEXEC;
    if let Ok(state) = rustix::fs::openat(cgroup, "freezer.state", flags, Mode::empty()) {
        let _ = rustix::io::write(&state, b"THAWED");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
";

    #[test]
    fn hybrid_layout_uses_v1_controllers() {
        let Layout::V1 { mounts, unified } = Layout::parse(HYBRID) else {
            panic!("expected v1")
        };
        assert_eq!(unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let names: Vec<&str> = mounts.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["cpu", "memory", "pids", "name=systemd"]);
    }

    #[test]
    fn a_hybrid_layouts_v2_hierarchy_is_one_of_a_cgroups_dirs() {
        let layout = Layout::parse(HYBRID);
        let dirs = layout.dirs("c");
        assert_eq!(
            dirs.last(),
            Some(&PathBuf::from("/sys/fs/cgroup/unified/strata/c"))
        );
        assert_eq!(layout.v1_dirs("c").len() + 1, dirs.len());
    }

    #[test]
    fn a_named_hierarchy_does_not_make_a_cgroup2_host_v1() {
        let text = "\
25 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
26 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,seclabel,name=systemd
";
        assert!(matches!(Layout::parse(text), Layout::Unified(_)));
    }

    #[test]
    fn every_controller_counts_and_mount_flags_do_not() {
        let text = "\
30 29 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,seclabel,xattr,release_agent=/x,name=systemd
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,seclabel,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/misc rw - cgroup cgroup rw,misc
33 30 0:29 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,clone_children,net_cls,net_prio
";
        let Layout::V1 { mounts, .. } = Layout::parse(text) else {
            panic!("expected v1")
        };
        let names: Vec<&str> = mounts.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "name=systemd",
                "cpu",
                "cpuacct",
                "misc",
                "net_cls",
                "net_prio"
            ]
        );
    }

    #[test]
    fn a_hierarchy_mounted_twice_is_used_where_it_is_whole() {
        let text = "\
40 30 0:32 /strata/c1 /var/lib/c1/sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 30 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
42 30 0:32 / /mnt/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            Layout::parse(text).dirs("c"),
            [PathBuf::from("/sys/fs/cgroup/memory/strata/c")]
        );
    }

    #[test]
    fn unified_layout() {
        let text = "25 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::parse(text);
        assert!(matches!(&layout, Layout::Unified(root) if root == Path::new("/sys/fs/cgroup")));
        assert_eq!(
            layout.dirs("c1"),
            [PathBuf::from("/sys/fs/cgroup/strata/c1")]
        );
    }

    /// CPU time (user + system, in clock ticks) of process `pid`.
    fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// A busy process in a cgroup of its own at `dir`; killed and its cgroup removed on drop.
    struct Busy {
        child: std::process::Child,
        dir: PathBuf,
    }

    impl Busy {
        fn start(dir: PathBuf) -> Busy {
            mkdir(dir.parent().unwrap()).unwrap();
            mkdir(&dir).unwrap();
            let child = std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap();
            let busy = Busy { child, dir };
            write(&busy.dir, "cgroup.procs", &busy.child.id().to_string()).unwrap();
            busy
        }

        /// The CPU time it takes in `span`.
        fn runs_for(&self, span: Duration) -> u64 {
            let before = cpu_ticks(self.child.id());
            std::thread::sleep(span);
            cpu_ticks(self.child.id()) - before
        }
    }

    impl Drop for Busy {
        fn drop(&mut self) {
            // (thawed first: a frozen v1 task does not die)
            let _ = write(&self.dir, "freezer.state", "THAWED");
            let _ = write(&self.dir, "cgroup.freeze", "0");
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    /// Each freezer this host has (v1's controller, a v2 hierarchy's) stops every process of
    /// the cgroup until `Frozen::thaw`. (Root, and a mounted cgroupfs: as the runtime.)
    #[test]
    fn each_freezer_stops_a_busy_process_until_it_is_thawed() {
        let name = format!("strata-unit-freeze-{}", std::process::id());
        let layout = Layout::get();
        let mut freezers = Vec::new();
        if let Layout::V1 { .. } = layout
            && let Some(dir) = layout.controller_dir("freezer", &name)
        {
            freezers.push((dir, Freezer::V1));
        }
        // (a v2 cgroup has a freezer from Linux 5.2 on)
        if let Some(dir) = layout.v2_dir(&name)
            && let Some(parent) = dir.parent()
            && mkdir(parent).is_ok()
            && parent.join("cgroup.freeze").exists()
        {
            freezers.push((dir, Freezer::V2));
        }
        assert!(
            !freezers.is_empty(),
            "no cgroup freezer here: mount -t cgroup2 none /sys/fs/cgroup/unified \
             (or mount -t cgroup -o freezer none /sys/fs/cgroup/freezer)"
        );
        let span = Duration::from_millis(300);
        for (dir, freezer) in freezers {
            let busy = Busy::start(dir.clone());
            assert!(
                busy.runs_for(span) > 0,
                "{freezer:?}: the busy loop does not run"
            );
            let frozen = freeze_at(&name, dir, freezer, Duration::from_secs(10)).unwrap();
            assert_eq!(busy.runs_for(span), 0, "{freezer:?}: it ran while frozen");
            frozen.thaw().unwrap();
            assert!(
                busy.runs_for(span) > 0,
                "{freezer:?}: it stayed frozen after the thaw"
            );
        }
    }

    #[test]
    fn comounted_controllers_share_one_dir() {
        let text = "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let layout = Layout::parse(text);
        assert_eq!(
            layout.dirs("c"),
            [PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/strata/c")]
        );
    }
}
