//! The mount API: one spec, two drivers. `fuse` runs our filesystem (in-process worker
//! threads for [`mount`], a forked daemon for [`serve_daemon`]); `overlay` asks the kernel
//! for overlayfs with the same branches. The guard unmounts on drop with a deadline: a
//! hung FUSE server gets its connection aborted and a lazy unmount instead of a hang.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, KeepCallerCpu, Session, SessionACL};
use rustix::mount::UnmountFlags;

use crate::error::{Error, Result};
use crate::fuse::{Fs, Invalidator};
use crate::idshift::IdShift;
use crate::sys::{self, Forked};
use crate::union::Union;

/// How long a guard waits for a clean unmount before aborting the FUSE connection.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer it waits for a server still finishing big copy-ups (`pending.rs`):
/// killed then, it would leave them to be undone at the next mount.
const COPY_UP_GRACE: Duration = Duration::from_secs(600);

/// What to mount: lower dirs (top first), the writable upper, its work dir, the mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
    /// Owners shifted for a user namespace (FUSE driver only; see [`IdShift`]).
    pub id_shift: Option<IdShift>,
    /// The lowers may hold AUFS markers (`.wh.NAME`, `.wh..wh..opq`), as layers unpacked by
    /// containers/storage for a mount program do (FUSE driver only; strata's store never
    /// makes them, and looking for them costs a lookup per name a lower lacks).
    pub aufs_markers: bool,
    /// mount(8)'s `ro`, `nodev`, `nosuid`, `noexec`, set when the mount is made.
    pub flags: Flags,
}

/// Flags of the mount itself (not of the union's branches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub read_only: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// overlayfs's `volatile`, for an upper thrown away after a crash (a build step's):
    /// copy-ups are not synced before they show, and fsync(2) and syncfs(2) return at once.
    /// The work dir keeps overlayfs's marker (`work/incompat/volatile`), and neither driver
    /// mounts it again until someone who knows the union was unmounted cleanly removes it.
    pub volatile: bool,
}

impl Flags {
    fn mount_flags(self) -> rustix::mount::MountFlags {
        use rustix::mount::MountFlags;
        let mut flags = MountFlags::empty();
        flags.set(MountFlags::RDONLY, self.read_only);
        flags.set(MountFlags::NODEV, self.nodev);
        flags.set(MountFlags::NOSUID, self.nosuid);
        flags.set(MountFlags::NOEXEC, self.noexec);
        flags
    }
}

/// The union driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Driver {
    Fuse,
    Overlay,
    /// fuse when /dev/fuse can be opened, else overlay.
    #[default]
    Auto,
}

impl FromStr for Driver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Driver> {
        match s {
            "fuse" => Ok(Driver::Fuse),
            "overlay" => Ok(Driver::Overlay),
            "auto" => Ok(Driver::Auto),
            other => Err(Error::UnknownDriver(other.to_string())),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Fuse => "fuse",
            Driver::Overlay => "overlay",
            Driver::Auto => "auto",
        })
    }
}

impl Driver {
    /// Auto resolved to a concrete driver.
    pub fn resolve(self) -> Driver {
        match self {
            Driver::Auto if fuse_available() => Driver::Fuse,
            Driver::Auto => Driver::Overlay,
            other => other,
        }
    }
}

/// Whether /dev/fuse can be opened (the `auto` driver's test).
pub fn fuse_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

impl MountSpec {
    /// Checks the branches and makes every path absolute (a daemon changes directory).
    fn checked(&self) -> Result<MountSpec> {
        // A read-only union may be its upper alone (strata-unionfs serves a one-lower
        // read-only mount that way).
        if self.lowers.is_empty() && !self.flags.read_only {
            return Err(Error::Spec("at least one lower dir is needed".into()));
        }
        let abs = |p: &Path| -> Result<PathBuf> {
            let path = std::fs::canonicalize(p).map_err(|e| Error::io("resolve", p, e))?;
            if !path.is_dir() {
                return Err(Error::Spec(format!("{} is not a directory", p.display())));
            }
            Ok(path)
        };
        let work = abs(&self.work)?;
        if !self.flags.read_only {
            refuse_volatile_mark(&work)?;
        }
        // Copy-ups a crash left unfinished (or that a server unmounted a moment ago is
        // still finishing): before either driver shows the upper.
        crate::pending::recover(&abs(&self.upper)?, &work, COPY_UP_GRACE)?;
        Ok(MountSpec {
            lowers: self.lowers.iter().map(|p| abs(p)).collect::<Result<_>>()?,
            upper: abs(&self.upper)?,
            work,
            target: abs(&self.target)?,
            id_shift: self.id_shift,
            aufs_markers: self.aufs_markers,
            flags: self.flags,
        })
    }
}

/// A live union mount; unmounts when dropped.
pub struct MountGuard {
    target: PathBuf,
    driver: Driver,
    fuse: Option<FuseMount>,
    /// The process serving a FUSE mount of [`mount_served`].
    server: Option<std::process::Child>,
    /// The union's work dir, where a FUSE server keeps the records of copy-ups it is still
    /// finishing.
    work: PathBuf,
}

struct FuseMount {
    session: BackgroundSession,
    /// Requests come over io_uring rather than /dev/fuse reads.
    io_uring: bool,
    /// /sys/fs/fuse/connections/<id>: lets a hung server be aborted.
    connection: Option<u32>,
}

impl fmt::Debug for MountGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountGuard")
            .field("target", &self.target)
            .field("driver", &self.driver)
            .finish()
    }
}

impl MountGuard {
    /// The driver that made the mount (never Auto).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Whether the FUSE server takes requests over io_uring (see `fuse_session`).
    pub fn io_uring(&self) -> bool {
        self.fuse.as_ref().is_some_and(|f| f.io_uring)
    }

    /// Unmounts now, reporting failures. A mount still in use is reported (EBUSY, as
    /// umount(8) says), then detached lazily as the drop does, so nothing outlives the
    /// guard.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner(WhenBusy::Retry)
    }

    fn unmount_inner(&mut self, busy: WhenBusy) -> Result<()> {
        let target = self.target.clone();
        if let Some(server) = self.server.take() {
            return match unmount_when(&target, busy) {
                Ok(Unmounted::Gone) => {
                    end_server(server, &target, &self.work);
                    Ok(())
                }
                // Its users still reach it through open files: the server serves them
                // until the last is closed, then ends on its own.
                Ok(Unmounted::Detached) => Ok(()),
                Err(err) => {
                    self.server = Some(server);
                    Err(err)
                }
            };
        }
        let Some(fuse) = self.fuse.take() else {
            if self.driver != Driver::Overlay {
                return Ok(());
            }
            unmount_when(&target, busy)?;
            self.driver = Driver::Auto;
            return Ok(());
        };
        let FuseMount {
            session,
            io_uring,
            connection,
        } = fuse;
        // The server ends once the kernel lets go of the mount; a server that hangs is
        // aborted after UNMOUNT_TIMEOUT rather than hanging its caller.
        let (done_tx, done_rx) = mpsc::channel();
        let worker_target = target.clone();
        std::thread::spawn(move || match unmount_when(&worker_target, busy) {
            Ok(Unmounted::Gone) => {
                let _ = session.join();
                let _ = done_tx.send(Ok(()));
            }
            Ok(Unmounted::Detached) => {
                // Its users still reach it through open files: the server serves them
                // until the last is closed, then its threads end on their own.
                drop(session);
                let _ = done_tx.send(Ok(()));
            }
            Err(err) => {
                let _ = done_tx.send(Err((err, session)));
            }
        });
        match wait_for_end(&done_rx, &self.work) {
            Ok(Ok(())) => Ok(()),
            Ok(Err((err, session))) => {
                // Still mounted and served: keep it, for a later try or the drop.
                self.fuse = Some(FuseMount {
                    session,
                    io_uring,
                    connection,
                });
                Err(err)
            }
            Err(_) => {
                tracing::warn!(
                    "FUSE server for {} did not stop in time; aborting it",
                    target.display()
                );
                if let Some(id) = connection {
                    abort_connection(id);
                }
                let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
                let _ = done_rx.recv_timeout(Duration::from_secs(5));
                Err(Error::Unmount {
                    target,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "FUSE server hung; connection aborted",
                    ),
                })
            }
        }
    }
}

/// What unmounting does with a mount that is still in use.
#[derive(Clone, Copy, PartialEq)]
enum WhenBusy {
    /// Leave it and say EBUSY.
    Fail,
    /// Try again for [`BUSY_PATIENCE`], then fail: for a guard's own unmount, where the
    /// mount may be busy only with a fork of this process.
    Retry,
    /// Detach it lazily: it goes from the namespace now and away once the last user
    /// lets go (what a guard does on drop, so nothing outlives it).
    Detach,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(err) = self.unmount_inner(WhenBusy::Detach) {
            tracing::warn!("{err}");
        }
    }
}

/// Mounts `spec` with `driver`; the guard unmounts on drop.
pub fn mount(spec: &MountSpec, driver: Driver) -> Result<MountGuard> {
    let spec = spec.checked()?;
    match driver.resolve() {
        Driver::Overlay => {
            mount_overlay(&spec)?;
            Ok(MountGuard {
                target: spec.target,
                driver: Driver::Overlay,
                fuse: None,
                server: None,
                work: spec.work,
            })
        }
        _ => {
            let session = fuse_session(&spec)?;
            let io_uring = session.io_uring();
            let session = session
                .spawn()
                .map_err(|e| mount_error("fuse", &spec.target, e))?;
            let connection = connection_id(&spec.target);
            Ok(MountGuard {
                target: spec.target,
                driver: Driver::Fuse,
                fuse: Some(FuseMount {
                    session,
                    io_uring,
                    connection,
                }),
                server: None,
                work: spec.work,
            })
        }
    }
}

/// How long [`mount_served`] waits for its server to mount.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Mounts `spec` as [`mount`] does, but a FUSE mount gets a server process of its own, so
/// the mount outlives this process: what runs on it goes on if this process is killed.
/// `server` is the command that serves it: it mounts the union given to it, serves it in
/// the foreground and writes `ready` and a newline to its stdout once it is mounted (as
/// `strata mount -f --ready` does). It is started in a session of its own (a terminal's
/// signals are not for it), with its stderr appended to `log`. The guard unmounts on drop,
/// and the server then ends.
pub fn mount_served(
    spec: &MountSpec,
    driver: Driver,
    mut server: std::process::Command,
    log: &Path,
) -> Result<MountGuard> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    if driver.resolve() == Driver::Overlay {
        return mount(spec, Driver::Overlay);
    }
    let spec = spec.checked()?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("open", log, e))?;
    let logged_from = log_file.metadata().map_or(0, |m| m.len());
    // The server keeps no descriptor of ours but its stdio (it outlives us): all are marked
    // close-on-exec, by close_range (Linux 5.11), else one by one up to the limit.
    let open_max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(1 << 16, |n| n.min(1 << 20) as i32);
    // SAFETY: setsid, close_range and fcntl are async-signal-safe, as code between fork and
    // exec must be.
    unsafe {
        server.pre_exec(move || {
            rustix::process::setsid()?;
            let all = libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if all != 0 {
                for fd in 3..open_max {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
    let mut child = server
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| mount_error("fuse", &spec.target, e))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(SERVER_START_TIMEOUT) {
        Ok(line) if line == "ready\n" => Ok(MountGuard {
            target: spec.target,
            driver: Driver::Fuse,
            fuse: None,
            server: Some(child),
            work: spec.work,
        }),
        answer => {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read(log)
                .ok()
                .and_then(|text| text.get(logged_from as usize..).map(<[u8]>::to_vec))
                .map(|text| String::from_utf8_lossy(&text).trim().to_string())
                .unwrap_or_default();
            let message = match (answer, said.is_empty()) {
                (Err(_), _) => format!("the server did not mount within {SERVER_START_TIMEOUT:?}"),
                (Ok(_), false) => said,
                (Ok(_), true) => "the server exited before mounting".to_string(),
            };
            Err(Error::Daemon {
                target: spec.target,
                message,
            })
        }
    }
}

/// Waits for what `ending` says, for [`UNMOUNT_TIMEOUT`], and while the server still
/// finishes copy-ups (records are left in `work`), up to [`COPY_UP_GRACE`] more.
fn wait_for_end<T>(
    ending: &mpsc::Receiver<T>,
    work: &Path,
) -> std::result::Result<T, mpsc::RecvTimeoutError> {
    let started = std::time::Instant::now();
    loop {
        match ending.recv_timeout(UNMOUNT_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Timeout)
                if crate::pending::in_flight(work) && started.elapsed() < COPY_UP_GRACE =>
            {
                tracing::info!("waiting for the FUSE server to finish its copy-ups");
            }
            other => return other,
        }
    }
}

/// Waits for the server of a mount just unmounted to end; kills one that does not within
/// [`UNMOUNT_TIMEOUT`] (see [`wait_for_end`]).
fn end_server(mut server: std::process::Child, target: &Path, work: &Path) {
    // Taken before the waiter may reap it: the descriptor keeps naming the server, where
    // its pid could name another process once reaped.
    let pid = server.id();
    let pidfd = rustix::process::Pid::from_raw(pid as i32).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    let (done, ended) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = server.wait();
        let _ = done.send(());
    });
    if wait_for_end(&ended, work).is_err() {
        tracing::warn!(
            "the FUSE server of {} did not end after the unmount; killing it",
            target.display()
        );
        match &pidfd {
            Some(pidfd) => {
                let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            }
            // No pidfd (before Linux 5.3): by pid, in the moment before the waiter reaps it.
            None => {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _ = waiter.join();
}

fn mount_error(driver: &'static str, target: &Path, source: std::io::Error) -> Error {
    Error::Mount {
        driver,
        target: target.to_path_buf(),
        source,
    }
}

/// Aborts FUSE connection `id`: every request waiting on its server fails with ENOTCONN.
/// The FUSE control file system, where that is done, is mounted first if it is not (it
/// is often not, outside systemd).
pub fn abort_connection(id: u32) {
    let connections = Path::new("/sys/fs/fuse/connections");
    let control = connections.join(id.to_string());
    if !control.exists() {
        let _ = rustix::mount::mount(
            "fusectl",
            connections,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        );
    }
    if let Err(err) = std::fs::write(control.join("abort"), "1") {
        tracing::warn!("abort FUSE connection {id}: {err}");
    }
}

fn connection_id(target: &Path) -> Option<u32> {
    rustix::fs::stat(target)
        .ok()
        .map(|st| rustix::fs::minor(st.st_dev))
}

/// The server holds a descriptor for each file open for writing through the mount, for
/// every process that uses it: up to the hard limit, not the soft one (1024 where shells
/// and services start), past which they would all get EMFILE.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the open file limit: {err}");
        }
    }
}

fn fuse_config() -> Config {
    let mut config = Config::default();
    // Containers run as any user: everyone may use the mount, the kernel checks modes.
    config.acl = SessionACL::All;
    // Worker threads: STRATA_FUSE_THREADS, else one per CPU (at least 2, so a long
    // copy-up never blocks every request).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = std::env::var("STRATA_FUSE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok());
    config.n_threads = Some(
        threads
            .unwrap_or(cpus)
            .clamp(1, 64)
            .max(if threads.is_some() { 1 } else { 2 }),
    );
    config.clone_fd = true;
    // STRATA_FUSE_KEEP_CPU=always|never overrides when replies keep callers on their CPU
    // (fuser's KeepCallerCpu; `auto` by default).
    config.io_uring_keep_caller_cpu = match std::env::var("STRATA_FUSE_KEEP_CPU").as_deref() {
        Ok("always") => KeepCallerCpu::Always,
        Ok("never") => KeepCallerCpu::Never,
        Ok("auto") | Err(_) => KeepCallerCpu::Auto,
        Ok(other) => {
            tracing::warn!("STRATA_FUSE_KEEP_CPU={other:?}: not always, never or auto; using auto");
            KeepCallerCpu::Auto
        }
    };
    config
}

/// Mounts and completes the FUSE handshake: when this returns the mount is live.
fn fuse_session(spec: &MountSpec) -> Result<Session<Fs>> {
    raise_open_file_limit();
    if !spec.flags.read_only {
        crate::layer::check_same_mount(&spec.upper, &spec.work)?;
    }
    if spec.flags.volatile && !spec.flags.read_only {
        // (overlayfs makes its own)
        let mark = spec.work.join(VOLATILE_MARK);
        std::fs::create_dir_all(&mark).map_err(|e| Error::io("create", &mark, e))?;
    }
    let union = Arc::new(
        Union::new(&spec.upper, &spec.lowers, &spec.work, spec.aufs_markers)?
            .with_volatile(spec.flags.volatile),
    );
    // STRATA_FUSE_PASSTHROUGH=0 turns passthrough off (to compare, or to work around a kernel).
    let passthrough = std::env::var_os("STRATA_FUSE_PASSTHROUGH").is_none_or(|v| v != "0");
    // STRATA_FUSE_URING=0 keeps requests on /dev/fuse reads even where io_uring is offered.
    let io_uring = std::env::var_os("STRATA_FUSE_URING").is_none_or(|v| v != "0");
    let invalidator = Arc::new(Invalidator::default());
    let fs = Fs::new(
        union,
        passthrough,
        io_uring,
        spec.id_shift,
        invalidator.clone(),
    );
    let device = mount_fuse(&spec.target, &spec.upper, spec.flags)?;
    Session::from_fd(fs, device, SessionACL::All, fuse_config())
        .and_then(|session| {
            invalidator.start(session.notifier())?;
            Ok(session)
        })
        .map_err(|e| {
            // The kernel mount exists but nobody will serve it.
            let _ = rustix::mount::unmount(&spec.target, UnmountFlags::DETACH);
            mount_error("fuse", &spec.target, e)
        })
}

/// Where overlayfs marks a work dir mounted `volatile` (fs/overlayfs/super.c).
const VOLATILE_MARK: &str = "work/incompat/volatile";

/// The mark of a work dir a `volatile` mount used: neither driver mounts it again (the
/// kernel refuses it too) until someone who knows the union was unmounted cleanly removes it.
fn refuse_volatile_mark(work: &Path) -> Result<()> {
    let mark = work.join(VOLATILE_MARK);
    if mark.exists() {
        return Err(Error::Spec(format!(
            "{} exists: this union was mounted volatile, and after a crash its upper may hold files that never reached the disk; remove that directory (rm -r) only if it was unmounted cleanly",
            mark.display()
        )));
    }
    Ok(())
}

/// The type of strata's FUSE mounts.
const FUSE_TYPE: &str = "fuse.strata";

/// Mounts a FUSE filesystem of type `fuse.strata` at `target` and returns the /dev/fuse
/// descriptor that serves it. fuser's own mount passes no subtype to the kernel, so its
/// mounts show as plain `fuse`; tools (findmnt -t, mount) tell ours apart by the type.
fn mount_fuse(target: &Path, upper: &Path, flags: Flags) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let fail = |e: rustix::io::Errno| mount_error("fuse", target, e.into());
    let device = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(fail)?;
    let root_type = rustix::fs::stat(target).map_err(fail)?.st_mode & libc::S_IFMT;
    // Anyone may use the mount (containers run as any user); the kernel checks modes.
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode={root_type:o},user_id={},group_id={},default_permissions,allow_other",
        device.as_raw_fd(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    ))
    .map_err(|_| fail(rustix::io::Errno::INVAL))?;
    // The source names the upper dir, as overlayfs's options do: `union_upper` tells whose
    // union a mount point holds by it.
    rustix::mount::mount(
        upper,
        target,
        FUSE_TYPE,
        flags.mount_flags(),
        data.as_c_str(),
    )
    .map_err(fail)?;
    Ok(device)
}

/// overlayfs option values escape ',' ':' and '\' with a backslash (fs/overlayfs/params.c).
fn escape(path: &Path) -> String {
    let mut out = String::new();
    for ch in path.to_string_lossy().chars() {
        if matches!(ch, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Kernel overlayfs, with index and redirects off (the defaults here): a lower directory
/// renamed through it gives EXDEV, which the FUSE driver deliberately does better.
fn mount_overlay(spec: &MountSpec) -> Result<()> {
    if spec.id_shift.is_some() {
        return Err(Error::Spec(
            "shifted owners (a user namespace) need the fuse driver: kernel overlayfs here does not shift ids"
                .into(),
        ));
    }
    let lowers: Vec<String> = spec.lowers.iter().map(|p| escape(p)).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},{OVERLAY_OPTIONS}{}",
        lowers.join(":"),
        escape(&spec.upper),
        escape(&spec.work),
        if spec.flags.volatile { ",volatile" } else { "" }
    );
    let fail = |e: rustix::io::Errno| mount_error("overlay", &spec.target, e.into());
    // mount(2) copies one page of options: many layers (about 40 store paths) do not fit,
    // and the kernel would report the cut lower as missing. The mount API takes them one
    // by one (lowerdir+, Linux 6.8).
    if data.len() >= 4096 {
        return mount_overlay_by_layer(spec).map_err(|e| match e {
            rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS => Error::Spec(format!(
                "kernel overlayfs refused {} layers one by one (lowerdir+ needs Linux 6.8 and paths under 256 bytes): use the fuse driver",
                spec.lowers.len()
            )),
            e => fail(e),
        });
    }
    let data = std::ffi::CString::new(data)
        .map_err(|e| mount_error("overlay", &spec.target, std::io::Error::other(e)))?;
    rustix::mount::mount(
        "overlay",
        &spec.target,
        "overlay",
        spec.flags.mount_flags(),
        Some(data.as_c_str()),
    )
    .map_err(fail)
}

const OVERLAY_OPTIONS: &str = "index=off,redirect_dir=off,metacopy=off";

/// Kernel overlayfs through the mount API (fsopen, fsconfig, fsmount, move_mount), one
/// lower at a time.
fn mount_overlay_by_layer(spec: &MountSpec) -> rustix::io::Result<()> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for lower in &spec.lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower)?;
    }
    fsconfig_set_string(&fs, "upperdir", &spec.upper)?;
    fsconfig_set_string(&fs, "workdir", &spec.work)?;
    for option in OVERLAY_OPTIONS.split(',') {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        fsconfig_set_string(&fs, key, value)?;
    }
    if spec.flags.volatile {
        rustix::mount::fsconfig_set_flag(&fs, "volatile")?;
    }
    fsconfig_create(&fs)?;
    let mut attrs = MountAttrFlags::empty();
    attrs.set(MountAttrFlags::MOUNT_ATTR_RDONLY, spec.flags.read_only);
    attrs.set(MountAttrFlags::MOUNT_ATTR_NODEV, spec.flags.nodev);
    attrs.set(MountAttrFlags::MOUNT_ATTR_NOSUID, spec.flags.nosuid);
    attrs.set(MountAttrFlags::MOUNT_ATTR_NOEXEC, spec.flags.noexec);
    let mount = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        &mount,
        "",
        rustix::fs::CWD,
        &spec.target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// Mounts without a guard, for a command whose mount outlives it: overlay is a kernel
/// mount, fuse gets a daemon ([`serve_daemon`]). Returns the driver used.
pub fn mount_detached(spec: &MountSpec, driver: Driver) -> Result<Driver> {
    match driver.resolve() {
        Driver::Overlay => {
            mount_overlay(&spec.checked()?)?;
            Ok(Driver::Overlay)
        }
        _ => {
            serve_daemon(spec)?;
            Ok(Driver::Fuse)
        }
    }
}

/// For `strata mount`: forks a daemon that serves the FUSE mount until it is unmounted.
/// Returns in the parent once the mount is live (or with the daemon's error).
pub fn serve_daemon(spec: &MountSpec) -> Result<()> {
    let spec = spec.checked()?;
    let (read_end, write_end) =
        std::io::pipe().map_err(|e| Error::io("create pipe", &spec.target, e))?;
    match sys::fork().map_err(|e| mount_error("fuse", &spec.target, e))? {
        Forked::Parent(child) => {
            drop(write_end);
            let mut message = String::new();
            let _ = { read_end }.read_to_string(&mut message);
            if message == "ok" {
                return Ok(());
            }
            let _ = nix::sys::wait::waitpid(child, None);
            let message = if message.is_empty() {
                "exited before mounting".to_string()
            } else {
                message
            };
            Err(Error::Daemon {
                target: spec.target,
                message,
            })
        }
        Forked::Child => {
            drop(read_end);
            let mut write_end = write_end;
            let _ = rustix::process::setsid();
            // Entries get exactly the mode the kernel sends (it applied the caller's umask).
            rustix::process::umask(rustix::fs::Mode::empty());
            let session = match fuse_session(&spec) {
                Ok(session) => session,
                Err(err) => {
                    let _ = write!(write_end, "{err}");
                    std::process::exit(1);
                }
            };
            let _ = std::env::set_current_dir("/");
            let _ = sys::detach_stdio();
            let _ = write_end.write_all(b"ok");
            drop(write_end);
            let code = match session.run() {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
    }
}

/// How long open files (or another mount namespace's copy of the mount) keep being
/// served after SIGINT or SIGTERM unmounted it, before the server ends anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// For `strata mount --foreground`: serves the FUSE mount in this process until it is
/// unmounted, like `fuse-overlayfs -f`. SIGINT and SIGTERM unmount it (lazily, so open
/// files keep working until closed) and end the serving; what still uses the mount
/// [`STOP_GRACE`] later (or at a second signal) gets ENOTCONN, as from a libfuse server
/// told to stop. `mounted` runs once the mount is live; its error unmounts and is
/// returned.
pub fn serve_foreground(
    spec: &MountSpec,
    mounted: impl FnOnce() -> std::result::Result<(), String>,
) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let spec = spec.checked()?;
    // Blocked here, before the session's threads exist, so only the waiter below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| Error::io("block signals", &spec.target, e))?;
    rustix::process::umask(rustix::fs::Mode::empty());
    let session = fuse_session(&spec)?;
    if let Err(message) = mounted() {
        let _ = rustix::mount::unmount(&spec.target, UnmountFlags::DETACH);
        return Err(Error::Daemon {
            target: spec.target,
            message,
        });
    }
    let (target, work) = (spec.target.clone(), spec.work.clone());
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            tracing::info!("{signal}: unmounting {}", target.display());
            let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
            // The serving ends when the kernel lets go of the mount: now, unless files
            // are open in it or another mount namespace holds a copy of it. Copy-ups
            // still being finished get longer (`wait_for_end`), unless a second signal
            // comes.
            let grace = libc::timespec {
                tv_sec: STOP_GRACE.as_secs() as libc::time_t,
                tv_nsec: 0,
            };
            let started = std::time::Instant::now();
            let again = loop {
                // SAFETY: `signals` is a valid set, blocked in this thread; the info
                // pointer may be null.
                let again =
                    unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &grace) };
                if again > 0
                    || !crate::pending::in_flight(&work)
                    || started.elapsed() > COPY_UP_GRACE
                {
                    break again;
                }
            };
            tracing::warn!(
                "{}: still in use {}; ending it (its users get ENOTCONN)",
                target.display(),
                if again > 0 {
                    "at a second signal"
                } else {
                    "after the grace period"
                }
            );
            std::process::exit(0);
        }
    });
    session
        .run()
        .map_err(|e| Error::io("serve the FUSE mount", &spec.target, e))
}

/// Unmounts a union (either driver); a dead FUSE mount (ENOTCONN) is detached.
pub fn unmount(target: &Path) -> Result<()> {
    unmount_when(target, WhenBusy::Fail).map(drop)
}

/// How a mount went.
enum Unmounted {
    /// Unmounted (or a dead FUSE mount detached): nothing uses it any more.
    Gone,
    /// Detached while in use.
    Detached,
}

fn unmount_when(target: &Path, busy: WhenBusy) -> Result<Unmounted> {
    let fail = |e: rustix::io::Errno| Error::Unmount {
        target: target.to_path_buf(),
        source: e.into(),
    };
    let detach = || rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(fail);
    let busy_until = Instant::now() + BUSY_PATIENCE;
    let unmounted = loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY)
                if busy == WhenBusy::Retry && Instant::now() < busy_until =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other,
        }
    };
    match unmounted {
        Ok(()) => Ok(Unmounted::Gone),
        Err(rustix::io::Errno::NOTCONN) => detach().map(|()| Unmounted::Gone),
        Err(rustix::io::Errno::BUSY) if busy == WhenBusy::Detach => {
            tracing::debug!("{} is busy; detaching it lazily", target.display());
            detach().map(|()| Unmounted::Detached)
        }
        // umount(2) says EINVAL for "not a mount point", and for a locked mount
        Err(rustix::io::Errno::INVAL) if !mount_table()?.iter().any(|m| m.point == target) => {
            Err(Error::NotMounted(target.to_path_buf()))
        }
        Err(e) => Err(fail(e)),
    }
}

/// How long a guard's unmount retries a busy mount. A mount is busy for a moment with
/// nobody using it while a fork of any thread of this process (a build step, a helper)
/// holds copies of its open files until the child execs.
const BUSY_PATIENCE: Duration = Duration::from_secs(1);

/// How long the sweep waits for a FUSE server's answer before it leaves the mount alone.
const SWEEP_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the sweep waits for the second answer of a mount that gave none.
const SWEEP_REASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Detaches FUSE mounts below `dir` whose server is gone (they answer ENOTCONN), as a
/// crash leaves them. Returns how many were swept. statfs asks the server every time;
/// a stat may be answered from the kernel's attribute cache.
///
/// A server that is alive but does not answer (stopped, or stuck) would hold statfs, and
/// the command sweeping, forever: each mount is asked from its own thread, and one with no
/// answer within [`SWEEP_ANSWER_TIMEOUT`] is asked once more and then left mounted with a
/// warning. The second question is for a server killed a moment ago: a request sent while
/// the kernel still tears down its io_uring queues can wait there for seconds, while one
/// sent after is told ENOTCONN at once. A thread with no answer stays blocked until the
/// server answers or this process exits (the wait is killable).
pub fn sweep_stale(dir: &Path) -> Result<usize> {
    let dir = as_in_mount_table(dir);
    let points: Vec<PathBuf> = mount_table()?
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.point.starts_with(&dir))
        .map(|m| m.point)
        .collect();
    let first = ask_statfs(&points, SWEEP_ANSWER_TIMEOUT);
    let silent: Vec<PathBuf> = points
        .iter()
        .zip(&first)
        .filter(|(_, answer)| answer.is_none())
        .map(|(point, _)| point.clone())
        .collect();
    let mut second = ask_statfs(&silent, SWEEP_REASK_TIMEOUT).into_iter();
    let mut swept = 0;
    for (point, answer) in points.iter().zip(first) {
        match answer.or_else(|| second.next().flatten()) {
            Some(Err(rustix::io::Errno::NOTCONN | rustix::io::Errno::CONNABORTED)) => {
                if rustix::mount::unmount(point, UnmountFlags::DETACH).is_ok() {
                    swept += 1;
                }
            }
            Some(_) => {}
            None => tracing::warn!(
                "{}: its FUSE server does not answer (stopped?); left mounted",
                point.display()
            ),
        }
    }
    Ok(swept)
}

/// `dir` as the mount table names it: absolute, without symlinks. A dead FUSE mount
/// cannot be resolved itself (ENOTCONN): then its parent is, and its name kept.
fn as_in_mount_table(dir: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(dir) {
        return real;
    }
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|parent| parent.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// statfs of each of `points`, all asked at once, each from its own thread: the answers
/// in order, None for one that gave none within `timeout`.
fn ask_statfs(points: &[PathBuf], timeout: Duration) -> Vec<Option<rustix::io::Result<()>>> {
    let asked: Vec<_> = points
        .iter()
        .map(|point| {
            let (tx, rx) = std::sync::mpsc::channel();
            let asking = point.clone();
            let spawned = std::thread::Builder::new()
                .name("strata-sweep".into())
                .spawn(move || {
                    let _ = tx.send(rustix::fs::statfs(&asking).map(drop));
                });
            (point, spawned.map(|_| rx))
        })
        .collect();
    let deadline = Instant::now() + timeout;
    asked
        .into_iter()
        .map(|(point, rx)| match rx {
            Ok(rx) => rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok(),
            // No thread for it: ask here.
            Err(_) => Some(rustix::fs::statfs(point).map(drop)),
        })
        .collect()
}

/// Detaches every mount below `dir` (any type), deepest first: what a killed build left
/// in the store's tmp/ (its union, a bind of a cache directory) before tmp/ is emptied,
/// which would otherwise delete through a bind or fail on a busy mount point. Returns how
/// many were detached.
pub fn detach_all_below(dir: &Path) -> Result<usize> {
    let mut points: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.point)
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    let mut detached = 0;
    for point in points {
        if rustix::mount::unmount(&point, UnmountFlags::DETACH).is_ok() {
            detached += 1;
        }
    }
    Ok(detached)
}

/// The file system type mounted at `target` (the topmost, if several are stacked there),
/// or None when `target` is not a mount point.
pub fn mount_type(target: &Path) -> Result<Option<String>> {
    Ok(mount_table()?
        .into_iter()
        .rev()
        .find(|m| m.point == target)
        .map(|m| m.fstype))
}

/// One line of /proc/self/mountinfo, as far as strata reads it.
struct MountLine {
    point: PathBuf,
    fstype: String,
    /// The mount's source, unescaped: the upper dir for strata's FUSE mounts.
    source: Vec<u8>,
    /// The super block's options as shown, each value still escaped (`\054` for a comma).
    options: String,
}

/// Every mount of this mount namespace, in mount order, from /proc/self/mountinfo.
fn mount_table() -> Result<Vec<MountLine>> {
    let mountinfo = std::fs::read("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut table = Vec::new();
    for line in mountinfo.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        table.push(MountLine {
            point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(point))),
            fstype: fstype.to_string(),
            source: fields.get(sep + 2).map(|s| unescape(s)).unwrap_or_default(),
            options: fields.get(sep + 3).unwrap_or(&"").to_string(),
        });
    }
    Ok(table)
}

/// The upper dir of the union mounted at `target` (the topmost mount there): overlayfs
/// shows it among its options, strata's FUSE mounts as their source. None when `target`
/// is not a union mount. Reads only /proc, so a stopped FUSE server cannot hold it.
pub fn union_upper(target: &Path) -> Result<Option<PathBuf>> {
    let Some(line) = mount_table()?
        .into_iter()
        .rev()
        .find(|line| line.point == target)
    else {
        return Ok(None);
    };
    let upper = match line.fstype.as_str() {
        FUSE_TYPE => Some(line.source),
        "overlay" => line
            .options
            .split(',')
            .find_map(|option| option.strip_prefix("upperdir="))
            .map(unescape),
        _ => None,
    };
    Ok(upper.map(|bytes| PathBuf::from(std::ffi::OsString::from_vec(bytes))))
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_parses_and_prints() {
        for name in ["fuse", "overlay", "auto"] {
            assert_eq!(name.parse::<Driver>().unwrap().to_string(), name);
        }
        assert!("zfs".parse::<Driver>().is_err());
    }

    #[test]
    fn overlay_options_escape_separators() {
        assert_eq!(escape(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }

    #[test]
    fn mountinfo_unescapes_octal() {
        assert_eq!(unescape("/mnt/a\\040b"), b"/mnt/a b");
    }
}
