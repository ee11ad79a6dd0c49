//! `strata-unionfs`, the standalone server, run as fuse-overlayfs would be: by hand, and
//! by podman as its overlay `mount_program`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use strata_unionfs::Driver;

use crate::common::{self, Fixture, assert_same, deadline, snapshot};

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata-unionfs"))
}

fn umount(mnt: &Path) {
    let status = Command::new("umount").arg(mnt).status().unwrap();
    assert!(status.success(), "umount {}", mnt.display());
}

/// Runs the server (which forks its daemon); fails with its stderr unless it mounts.
fn start(args: &[&str], mnt: &Path) {
    start_with(&[], args, mnt);
}

/// `start`, with more environment variables.
fn start_with(env: &[(&str, &str)], args: &[&str], mnt: &Path) {
    let out = server()
        .envs(env.iter().copied())
        .args(args)
        .arg(mnt)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "strata-unionfs {args:?}: {stderr}");
}

/// Fails unless `mnt` shows the tree kernel overlayfs shows at `kernel`.
fn assert_same_tree(what: &str, kernel: &Path, mnt: &Path) {
    let mnt = mnt.to_path_buf();
    let view = deadline(60, "reading the mount", move || snapshot(&mnt, false));
    assert_same(what, &snapshot(kernel, false), &view);
}

/// A line of /proc/self/mountinfo.
struct MountLine {
    target: PathBuf,
    /// The mount's own options: ro, nodev, ...
    options: Vec<String>,
    fstype: String,
}

fn mount_table() -> Vec<MountLine> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let parse = |line: &str| {
        let mut fields = line.split(' ').skip(4);
        Some(MountLine {
            target: PathBuf::from(fields.next()?),
            options: fields.next()?.split(',').map(String::from).collect(),
            fstype: line.split(" - ").nth(1)?.split(' ').next()?.to_string(),
        })
    };
    info.lines().filter_map(parse).collect()
}

fn mounted_at(mnt: &Path) -> Option<MountLine> {
    mount_table().into_iter().find(|m| m.target == mnt)
}

/// The filesystem type mounted at `mnt`, if anything is.
fn mount_type(mnt: &Path) -> Option<String> {
    mounted_at(mnt).map(|m| m.fstype)
}

/// The standalone server takes fuse-overlayfs's command line: forked into the background
/// it serves the same tree as kernel overlayfs over the same branches, and exits on
/// umount; with -f it serves until SIGTERM, which unmounts; bad input fails before
/// anything is mounted, naming the option or the path.
#[test]
fn the_standalone_server_stands_in_for_fuse_overlayfs() {
    let fixture = Fixture::new();
    let kernel = fixture.mount("kernel", Driver::Overlay);
    let (upper, work, mnt, _cleanup) = branch_dirs(&fixture, "standalone");
    let lowers = lower_paths(&fixture);
    let options = format!(
        "lowerdir={},upperdir={},workdir={},nodev,fsync=0",
        lowers.join(":"),
        upper.display(),
        work.display()
    );

    // In the background: the command returns once the mount is live.
    start(&["-o", &options], &mnt);
    assert_eq!(mount_type(&mnt).as_deref(), Some("fuse.strata"));
    let device = std::fs::metadata(&mnt).unwrap().dev();
    assert_same_tree("standalone server against overlayfs", &kernel.mnt, &mnt);
    std::fs::write(mnt.join("etc/conf0"), b"changed\n").unwrap();
    umount(&mnt);
    let connection = format!("/sys/fs/fuse/connections/{}", rustix::fs::minor(device));
    common::wait_until("the server exits after umount", || {
        !std::path::Path::new(&connection).exists()
    });
    assert_eq!(
        std::fs::read(upper.join("etc/conf0")).unwrap(),
        b"changed\n"
    );

    // In the foreground (-f): SIGTERM unmounts and ends the server cleanly. Started with
    // a soft limit of 64 open files, it raises it to the hard one: it holds a descriptor
    // for each file open for writing by anyone through the mount.
    let mut limited = server();
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut limited, || {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = serve_in_foreground(limited, &options, &mnt);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3..5], ["4096", "4096"], "{limits}");
    assert_eq!(std::fs::read(mnt.join("etc/conf0")).unwrap(), b"changed\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = deadline(30, "the foreground server's exit", move || {
        child.wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
    assert_eq!(mount_type(&mnt), None, "SIGTERM unmounts");

    // Without an upperdir: read-only, like kernel overlayfs over lowers alone (its root
    // is the top lower's), with nodev honoured; one lowerdir alone is fine too.
    let kernel_ro = fixture.dir.path().join("standalone/kernel-ro");
    std::fs::create_dir_all(&kernel_ro).unwrap();
    let lowers_only = format!("lowerdir={}", lowers.join(":"));
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &lowers_only])
        .arg(&kernel_ro)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t overlay -o {lowers_only}");
    start(&["-o", &format!("{lowers_only},nodev")], &mnt);
    assert_same_tree("read-only standalone against overlayfs", &kernel_ro, &mnt);
    let (ours, theirs) = (
        std::fs::metadata(&mnt).unwrap(),
        std::fs::metadata(&kernel_ro).unwrap(),
    );
    assert_eq!(
        (ours.mode(), ours.uid(), ours.gid(), ours.mtime()),
        (theirs.mode(), theirs.uid(), theirs.gid(), theirs.mtime()),
        "the root"
    );
    let flags = mounted_at(&mnt).unwrap().options;
    assert!(
        flags.contains(&"ro".to_string()) && flags.contains(&"nodev".to_string()),
        "{flags:?}"
    );
    let write = std::fs::write(mnt.join("etc/conf0"), b"no\n").unwrap_err();
    assert_eq!(write.raw_os_error(), Some(libc::EROFS), "{write}");
    umount(&mnt);
    umount(&kernel_ro);
    let one = format!("lowerdir={}", lowers[2]);
    start(&["-o", &one], &mnt);
    assert!(mnt.join("etc/conf5").exists());
    umount(&mnt);

    // Bad input: usage errors exit 2, mount errors 1, and nothing is mounted.
    let fails = |args: &[&str], code: i32, needle: &str| {
        let out = server().args(args).arg(&mnt).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
        assert_eq!(mount_type(&mnt), None, "{args:?} mounted");
    };
    fails(
        &["-o", &format!("{options},squash_to_root")],
        2,
        "unknown option squash_to_root",
    );
    fails(&["-o", "upperdir=/u,workdir=/w"], 2, "lowerdir");
    let missing = fixture.dir.path().join("no-such-lower");
    let bad_lower = options.replacen(&lowers[0], missing.to_str().unwrap(), 1);
    fails(&["-o", &bad_lower], 1, missing.to_str().unwrap());
    // a work dir on another mount (a bind mount of the same file system): every copy-up
    // would fail with EXDEV, so it is refused, as overlayfs refuses it (QA 17c)
    let bound = fixture.dir.path().join("work-bind");
    std::fs::create_dir_all(&bound).unwrap();
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&work)
        .arg(&bound)
        .status()
        .unwrap();
    assert!(status.success());
    let elsewhere = options.replacen(
        &format!("workdir={}", work.display()),
        &format!("workdir={}", bound.display()),
        1,
    );
    let said = server()
        .args(["-o", &elsewhere])
        .arg(&mnt)
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&bound).status();
    assert_eq!(said.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&said.stderr).contains("must be on the same mount"),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    assert_eq!(mount_type(&mnt), None);
}

/// podman with strata-unionfs as its overlay `mount_program`, as it runs fuse-overlayfs:
/// a container's root is our mount, its writes and deletes are committed as a layer, and
/// a container of that image (two lowers, one with a whiteout) sees them.
#[test]
fn podman_runs_containers_on_it_as_its_mount_program() {
    common::require_root_and_fuse();
    let version = Command::new("podman").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "podman is missing: apt-get install -y podman crun"
    );
    // Short: podman refuses a runroot path longer than 50 characters.
    let dir = tempfile::Builder::new()
        .prefix("strata-podman-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox: apt-get install -y busybox-static");
    for applet in ["sh", "cat", "ls", "rm", "grep", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    let packed = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success());

    let storage = dir.path().join("storage");
    let podman = |args: &[&str]| -> String {
        let out = Command::new("timeout")
            .args(["180", "podman", "--root"])
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!(
                "overlay.mount_program={}",
                env!("CARGO_BIN_EXE_strata-unionfs")
            ))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        podman_ok(args, &out)
    };
    let cleanup = Cleanup(storage.clone());
    podman(&["import", tar.to_str().unwrap(), "localhost/bb:1"]);
    // `podman mount` mounts a container's root with the storage driver, here through the
    // mount program (running a container would add nothing: the same mount, then crun).
    podman(&["create", "--name", "c1", "localhost/bb:1", "sh"]);
    let root = PathBuf::from(podman(&["mount", "c1"]).trim());
    assert_eq!(
        mount_type(&root).as_deref(),
        Some("fuse.strata"),
        "{}",
        root.display()
    );
    std::fs::write(root.join("new"), b"new\n").unwrap();
    std::fs::remove_file(root.join("bin/echo")).unwrap();
    podman(&["umount", "c1"]);
    assert_eq!(
        mount_type(&root),
        None,
        "podman umount leaves {}",
        root.display()
    );
    podman(&["commit", "c1", "localhost/bb:2"]);
    podman(&["create", "--name", "c2", "localhost/bb:2", "sh"]);
    let root = PathBuf::from(podman(&["mount", "c2"]).trim());
    assert_eq!(mount_type(&root).as_deref(), Some("fuse.strata"));
    assert_eq!(std::fs::read(root.join("new")).unwrap(), b"new\n");
    assert!(root.join("bin/cat").exists());
    let echo = std::fs::symlink_metadata(root.join("bin/echo"));
    assert!(
        echo.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound),
        "the committed whiteout is lost: {echo:?}"
    );
    podman(&["umount", "c2"]);
    podman(&["rm", "c1", "c2"]);
    drop(cleanup);
}

fn podman_ok(args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// SIGTERM unmounts the foreground server lazily: a file open in the mount is still served,
/// until a second signal (or the grace period) ends the server, as a libfuse server told to
/// stop ends; the file then answers ENOTCONN (ECONNABORTED, ECANCELED). The server never
/// outlives its stop for good (a mount copied into another mount namespace held it
/// forever before).
#[test]
fn sigterm_ends_the_foreground_server_though_the_mount_is_in_use() {
    use std::io::Read;
    let fixture = Fixture::new();
    let (upper, work, mnt, _cleanup) = branch_dirs(&fixture, "stop");
    let options = branch_options(&fixture, &upper, &work);
    let mut child = serve_in_foreground(server(), &options, &mnt);
    std::fs::write(mnt.join("held"), b"held open\n").unwrap();
    let mut held = std::fs::File::open(mnt.join("held")).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    common::wait_until("SIGTERM unmounts", || mount_type(&mnt).is_none());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the open file is still served"
    );
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "held open\n");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = deadline(30, "the server's exit at the second SIGTERM", move || {
        child.wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
    // (Reads may still come through passthrough, from the real file; a request does not.
    // ECONNABORTED for an aborted connection; ECANCELED when the request was queued on
    // the server's io_uring as it went.)
    let mut value = [0u8; 16];
    let err = rustix::fs::fgetxattr(&held, "user.x", &mut value).unwrap_err();
    assert!(
        matches!(
            err,
            rustix::io::Errno::NOTCONN
                | rustix::io::Errno::CONNABORTED
                | rustix::io::Errno::CANCELED
        ),
        "{err}"
    );
}

/// Runs `server` with `-f -o options mnt` and returns once the mount is there.
fn serve_in_foreground(mut server: Command, options: &str, mnt: &Path) -> std::process::Child {
    let child = server
        .args(["-f", "-o", options])
        .arg(mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until("the foreground server mounts", || mount_type(mnt).is_some());
    child
}

/// Fresh `upper`, `work` and `mnt` dirs in `name` below the fixture, and a [`Cleanup`] of
/// whatever a failing test leaves mounted there.
fn branch_dirs(fixture: &Fixture, name: &str) -> (PathBuf, PathBuf, PathBuf, Cleanup) {
    let base = fixture.dir.path().join(name);
    let (upper, work, mnt) = (base.join("upper"), base.join("work"), base.join("mnt"));
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    (upper, work, mnt, Cleanup(base))
}

/// Unmounts everything below a dir on drop, also when a test fails: here, what podman's
/// overlay driver leaves mounted in its storage (its own dir, made a private mount, and any
/// container root still mounted).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut mounts: Vec<PathBuf> = mount_table()
            .into_iter()
            .map(|m| m.target)
            .filter(|m| m.starts_with(&self.0))
            .collect();
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for mnt in mounts {
            let _ = rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// With `uidmapping=0:H:S,gidmapping=0:H:S` owners show as fuse-overlayfs shows them, each
/// id H higher, and what the container's root (host H) creates is stored as 0:0, for both.
#[test]
fn id_mappings_show_owners_as_fuse_overlayfs_does() {
    let fixture = Fixture::new();
    let base = fixture.dir.path().join("mapped");
    let _cleanup = Cleanup(base.clone());
    let lowers = lower_paths(&fixture);
    let mut mounts = Vec::new();
    for (name, program) in [
        ("fuse-overlayfs", "fuse-overlayfs"),
        ("strata-unionfs", env!("CARGO_BIN_EXE_strata-unionfs")),
    ] {
        let (upper, work, mnt) = (
            base.join(name).join("u"),
            base.join(name).join("w"),
            base.join(name).join("m"),
        );
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={},uidmapping=0:100000:65536,gidmapping=0:100000:65536",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        let out = Command::new(program)
            .args(["-o", &options])
            .arg(&mnt)
            .output();
        let out =
            out.unwrap_or_else(|e| panic!("{program}: {e} (apt-get install -y fuse-overlayfs)"));
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        mounts.push((upper, mnt));
    }
    let [(_, theirs), (_, ours)] = &mounts[..] else {
        unreachable!()
    };
    let (want, got) = {
        let (theirs, ours) = (theirs.clone(), ours.clone());
        deadline(60, "reading owners", move || {
            (owners(&theirs), owners(&ours))
        })
    };
    assert!(
        want.values().any(|&ids| ids == (100000, 100000)),
        "{want:?}"
    );
    assert_eq!(want, got, "owners: fuse-overlayfs, then strata-unionfs");
    for (upper, mnt) in &mounts {
        let made = Command::new("setpriv")
            .args([
                "--reuid",
                "100000",
                "--regid",
                "100000",
                "--clear-groups",
                "touch",
            ])
            .arg(mnt.join("etc/made"))
            .status()
            .unwrap();
        assert!(made.success(), "{}", mnt.display());
        let stored = std::fs::metadata(upper.join("etc/made")).unwrap();
        assert_eq!((stored.uid(), stored.gid()), (0, 0), "{}", upper.display());
        umount(mnt);
    }
}

/// The fixture's lower dirs, top first, as option text.
fn lower_paths(fixture: &Fixture) -> Vec<String> {
    fixture
        .lowers
        .iter()
        .map(|l| l.display().to_string())
        .collect()
}

/// `-o` options mounting the fixture's lowers under `upper`, with `work`.
fn branch_options(fixture: &Fixture, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower_paths(fixture).join(":"),
        upper.display(),
        work.display()
    )
}

/// Starts the server on the fixture's branches, with a fresh upper and work dir named
/// `name` and environment `env`; returns the mount point and the upper dir.
fn start_on_branches(
    fixture: &Fixture,
    name: &str,
    env: &[(&str, &str)],
) -> (PathBuf, PathBuf, Cleanup) {
    let (upper, work, mnt, cleanup) = branch_dirs(fixture, name);
    let options = branch_options(fixture, &upper, &work);
    start_with(env, &["-o", &options], &mnt);
    (mnt, upper, cleanup)
}

/// The owner of every entry below `root`, by path.
fn owners(root: &Path) -> std::collections::BTreeMap<PathBuf, (u32, u32)> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.insert(rel, (meta.uid(), meta.gid()));
        }
    }
    out
}

/// A stopped server holds every request to its mount, so the sweep of stale mounts (run
/// by most strata commands) waited for it forever. It must pass such a mount over, and
/// still detach one whose server is dead.
#[test]
fn the_sweep_passes_over_a_stopped_server_and_detaches_a_dead_ones_mount() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    /// Lets a stopped server go on and end (unmounting), whatever the test did.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let pid = Pid::from_raw(self.0.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }

    let fixture = Fixture::new();
    let lowers = lower_paths(&fixture).join(":");
    let dir = fixture.dir.path().join("sweep");
    let start_one = |name: &str| {
        let (upper, work, mnt) = (
            dir.join(format!("{name}-upper")),
            dir.join(format!("{name}-work")),
            dir.join(name),
        );
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        let options = format!(
            "lowerdir={lowers},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        let child = server()
            .args(["-f", "-o", &options])
            .arg(&mnt)
            .spawn()
            .unwrap();
        common::wait_until("the server mounts", || mount_type(&mnt).is_some());
        (Server(child), mnt)
    };
    let (stopped, stopped_mnt) = start_one("stopped");
    let (mut dead, dead_mnt) = start_one("dead");
    kill(Pid::from_raw(stopped.0.id() as i32), Signal::SIGSTOP).unwrap();
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    // A sweep comes at a later command's start, not in the moment the kernel tears the
    // killed server's io_uring queues down: a request sent then can wait there for
    // seconds (and hold the teardown up), where one sent after is told ENOTCONN at once.
    std::thread::sleep(std::time::Duration::from_secs(1));

    let sweeping = dir.clone();
    let started = std::time::Instant::now();
    let swept = deadline(30, "a sweep beside a stopped server", move || {
        strata_unionfs::sweep_stale(&sweeping).unwrap()
    });
    if swept != 1 {
        // What the dead server's mount answers now, and how long that takes.
        let asking = dead_mnt.clone();
        let answer = deadline(30, "statfs of the dead server's mount", move || {
            let asked = std::time::Instant::now();
            (rustix::fs::statfs(&asking).map(drop), asked.elapsed())
        });
        panic!(
            "swept {swept} mounts in {:?}, not the dead server's; its statfs now: {answer:?}",
            started.elapsed()
        );
    }
    assert_eq!(mount_type(&dead_mnt), None);
    assert!(
        mount_type(&stopped_mnt).is_some_and(|t| t.starts_with("fuse")),
        "the stopped server's mount stays"
    );
    drop(stopped);
    assert_eq!(mount_type(&stopped_mnt), None, "SIGTERM unmounts");
}

/// A server killed while a big copy-up is being finished (src/pending.rs) leaves the
/// copy's record; the next mount, by either driver (overlayfs here), removes that copy
/// before the union shows, so the lower file shows whole rather than a copy with holes.
#[test]
fn a_copy_up_a_crash_left_unfinished_is_undone_at_the_next_mount() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let fixture = Fixture::new();
    let data = common::patterned(256 << 20);
    std::fs::write(fixture.lowers[1].join("big.log"), &data).unwrap();
    let (upper, work, mnt, _cleanup) = branch_dirs(&fixture, "crash");
    let options = branch_options(&fixture, &upper, &work);
    let mut child = server()
        .args(["-f", "-o", &options])
        .arg(&mnt)
        .spawn()
        .unwrap();
    common::wait_until("the server mounts", || mount_type(&mnt).is_some());
    let pid = Pid::from_raw(child.id() as i32);
    let appending = mnt.join("big.log");
    deadline(60, "an append to a big lower file", move || {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&appending)
            .unwrap();
        std::io::Write::write_all(&mut file, b"tail").unwrap();
    });
    // Stopped at once: the job cannot remove the record now.
    kill(pid, Signal::SIGSTOP).unwrap();
    let records = common::copy_up_records(&work);
    assert_eq!(
        records,
        ["big.log"],
        "no record of the copy just after the append: its job (fill, then fsync of 256 MiB) \
         cannot have finished"
    );
    kill(pid, Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH).unwrap();
    assert!(
        upper.join("big.log").exists(),
        "the copy is in the upper dir"
    );

    let spec = strata_unionfs::MountSpec {
        lowers: fixture.lowers.clone(),
        upper: upper.clone(),
        work: work.clone(),
        target: mnt.clone(),
        aufs_markers: false,
        flags: Default::default(),
        id_shift: None,
    };
    let guard = deadline(30, "mount", move || {
        strata_unionfs::mount(&spec, Driver::Overlay)
    })
    .expect("the union mounts again");
    assert!(
        !upper.join("big.log").exists(),
        "the unfinished copy stayed"
    );
    assert_eq!(common::copy_up_records(&work), Vec::<String>::new());
    let shown = std::fs::read(mnt.join("big.log")).unwrap();
    assert!(
        shown == data,
        "the lower file does not show whole ({} bytes)",
        shown.len()
    );
    guard.unmount().unwrap();
}

/// A disk too small for a big copy-up: the append-only open that would have its copy
/// filled in the background fails with ENOSPC (the blocks are reserved before the copy
/// shows), and leaves neither a copy nor a record; the lower file still shows whole.
#[test]
fn a_background_copy_up_that_cannot_fit_fails_the_open_with_enospc() {
    let fixture = Fixture::new();
    let data = common::patterned(48 << 20);
    std::fs::write(fixture.lowers[1].join("big.log"), &data).unwrap();
    let base = fixture.dir.path().join("full");
    let _cleanup = Cleanup(base.clone());
    let (image, disk) = (base.join("disk.ext4"), base.join("disk"));
    std::fs::create_dir_all(&disk).unwrap();
    std::fs::File::create_new(&image)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .status()
        .expect("mkfs.ext4 runs: apt-get install e2fsprogs");
    assert!(mkfs.success(), "mkfs.ext4 {}", image.display());
    let mounted = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -o loop {}", image.display());
    let (upper, work, mnt) = (disk.join("upper"), disk.join("work"), base.join("mnt"));
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    let m = std::sync::Arc::new(fixture.mount_at(&upper, &work, &mnt, Driver::Fuse));
    let inner = m.clone();
    let opened = deadline(60, "an append-only open on a full disk", move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(inner.path("big.log"))
            .map(drop)
            .map_err(|e| e.raw_os_error())
    });
    assert_eq!(opened, Err(Some(libc::ENOSPC)));
    assert!(!upper.join("big.log").exists(), "a copy was left");
    assert_eq!(common::copy_up_records(&work), Vec::<String>::new());
    let shown = std::fs::read(m.path("big.log")).unwrap();
    assert!(shown == data, "the lower file does not show whole");
    drop(m);
}

/// A served mount's server that does not end after the unmount is killed once the wait
/// for it runs out (through a pidfd taken before it could be reaped, so never another
/// process that got its pid), and the unmount returns. The server here is a shell that
/// runs strata-unionfs and then turns into a `sleep` that would outlive the mount.
#[test]
fn a_served_mounts_server_that_outlives_the_unmount_is_killed() {
    let fixture = Fixture::new();
    let (upper, work, mnt, _cleanup) = branch_dirs(&fixture, "served");
    let lowers: Vec<String> = lower_paths(&fixture);
    // A sleep no other process runs: how the test finds it again.
    let marker = format!("1000.{}", std::process::id());
    let script = format!(
        "\"$0\" -f -o lowerdir={},upperdir={},workdir={} {} & \
         until mountpoint -q {}; do sleep 0.05; done; echo ready; wait; exec sleep {marker}",
        lowers.join(":"),
        upper.display(),
        work.display(),
        mnt.display(),
        mnt.display(),
    );
    let mut command = Command::new("sh");
    command.args(["-c", &script, env!("CARGO_BIN_EXE_strata-unionfs")]);
    let spec = strata_unionfs::MountSpec {
        lowers: fixture.lowers.clone(),
        upper,
        work,
        target: mnt.clone(),
        aufs_markers: false,
        flags: Default::default(),
        id_shift: None,
    };
    let log = fixture.dir.path().join("served/server.log");
    let guard = strata_unionfs::mount_served(&spec, Driver::Fuse, command, &log).unwrap();
    assert!(mnt.join("etc").is_dir(), "the served mount shows the union");
    let sleeping = move || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == marker.as_bytes()))
        })
    };
    let seen = std::thread::spawn({
        let sleeping = sleeping.clone();
        move || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
            while std::time::Instant::now() < until {
                if sleeping() {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            false
        }
    });
    let started = std::time::Instant::now();
    deadline(60, "the unmount", move || guard.unmount()).unwrap();
    let took = started.elapsed();
    assert!(mounted_at(&mnt).is_none(), "unmounted");
    assert!(
        seen.join().unwrap(),
        "the server outlived the mount, as a sleep"
    );
    assert!(
        took >= std::time::Duration::from_secs(9),
        "the unmount waited for the server before killing it (took {took:?})"
    );
    assert!(!sleeping(), "the server that outlived its mount was killed");
}

/// Made over a whiteout (built in the work dir, then renamed into place), an entry in a
/// setgid directory still takes the directory's group, and a directory its setgid bit, as
/// under overlayfs. Through the server binary, whose umask is 0 as `strata run`'s server's
/// is: root's creates then skip the chown, which an entry made in the work dir needs.
#[test]
fn entries_made_over_whiteouts_in_a_setgid_directory_take_its_group() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new();
    let shared = fixture.lowers[2].join("shared");
    std::fs::create_dir_all(shared.join("d")).unwrap();
    std::fs::write(shared.join("f"), b"old").unwrap();
    for path in [&shared, &shared.join("d"), &shared.join("f")] {
        std::os::unix::fs::chown(path, Some(0), Some(50)).unwrap();
    }
    for path in [&shared, &shared.join("d")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o2775)).unwrap();
    }
    let kernel = fixture.mount("kernel", Driver::Overlay);
    let (mnt, upper, _cleanup) = start_on_branches(&fixture, "standalone", &[]);
    let run = |mnt: &Path, upper: &Path| {
        std::fs::remove_dir(mnt.join("shared/d")).unwrap();
        std::fs::create_dir(mnt.join("shared/d")).unwrap();
        std::fs::remove_file(mnt.join("shared/f")).unwrap();
        std::fs::write(mnt.join("shared/f"), b"new").unwrap();
        ["d", "f"].map(|name| {
            let meta = std::fs::metadata(upper.join("shared").join(name)).unwrap();
            (name, meta.uid(), meta.gid(), meta.mode() & 0o7777)
        })
    };
    let theirs = run(&kernel.mnt, &kernel.upper);
    let (m, u) = (mnt.clone(), upper.clone());
    let ours = deadline(60, "making entries over whiteouts", move || run(&m, &u));
    umount(&mnt);
    assert_eq!(
        (theirs[0].2, theirs[1].2),
        (50, 50),
        "overlayfs: {theirs:?}"
    );
    assert!(theirs[0].3 & 0o2000 != 0, "overlayfs: {theirs:?}");
    assert_eq!(ours, theirs, "strata-unionfs, then overlayfs");
}

/// With passthrough off, written data may still be in the kernel's writeback cache, not in
/// the upper file: SEEK_DATA and SEEK_HOLE must see it all the same. The server leaves them
/// to the kernel then (answering from the upper file, it found no data in a file just
/// written).
#[test]
fn seeks_under_the_writeback_cache_see_data_not_written_back_yet() {
    use std::io::Write;
    let fixture = Fixture::new();
    let (mnt, _, _cleanup) =
        start_on_branches(&fixture, "writeback", &[("STRATA_FUSE_PASSTHROUGH", "0")]);
    let m = mnt.clone();
    let seeks = deadline(60, "seeks in a file just written", move || {
        let mut file = std::fs::File::create(m.join("written")).unwrap();
        file.write_all(&vec![1u8; 8 << 20]).unwrap();
        [
            rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(0)),
            rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)),
        ]
    });
    umount(&mnt);
    assert_eq!(seeks, [Ok(0), Ok(8 << 20)]);
}

/// Over /dev/fuse (FUSE over io_uring off, as on kernels before 6.14 or with the module's
/// `enable_uring` at its default N), requests for one directory's entries are served by
/// several threads at once. An unlink or rmdir looked its file's number up again after the
/// removal, when a mkdir or create served beside it could have made an entry on the
/// recycled inode: it then gave that entry's key up, and a rmdir gave that entry the removed
/// directory's attributes. The kernel met a number it had as a file answered as a directory
/// (or the reverse), called the inode bad, and reads of files opened a moment before failed
/// with EIO (3-18 per run here).
#[test]
fn files_and_dirs_churned_over_dev_fuse_never_give_eio() {
    let fixture = Fixture::new();
    let (mnt, _, _cleanup) = start_on_branches(&fixture, "dev-fuse", &[("STRATA_FUSE_URING", "0")]);
    let m = mnt.clone();
    let errors = deadline(120, "file and directory churn over /dev/fuse", move || {
        crate::ops::churn_files_and_dirs(&|rel| m.join(rel))
    });
    umount(&mnt);
    assert!(errors.is_empty(), "{errors:?}");
}

/// The pid of the server serving `mnt` (its command line names the mount point).
fn server_pid(mnt: &Path) -> u32 {
    let want = mnt.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.starts_with(env!("CARGO_BIN_EXE_strata-unionfs").as_bytes())
                && cmdline.split(|&b| b == 0).any(|arg| arg == want)
        })
        .unwrap_or_else(|| panic!("no strata-unionfs process serves {}", mnt.display()))
}

/// Each thread of process `pid`: its name and scheduling policy (/proc/PID/task/*/stat).
fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            // Field 41 is the policy; `rest` starts at field 3.
            let policy = rest.split_whitespace().nth(41 - 3)?.parse().ok()?;
            Some((name, policy))
        })
        .collect()
}

/// Busy loops, one pinned to each CPU, until dropped.
struct BusyCpus {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    fn start() -> BusyCpus {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCpus { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// This thread's migrations between CPUs so far (/proc/thread-self/sched).
fn migrations() -> u64 {
    let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap();
    sched
        .lines()
        .find_map(|l| {
            l.strip_prefix("se.nr_migrations")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("se.nr_migrations in /proc/thread-self/sched")
}

/// How many times a thread moved between CPUs while it made `n` getxattr requests, one
/// after the other, on a file of the mount at `mnt`.
fn migrations_in_getxattrs(mnt: &Path, n: usize) -> u64 {
    let m = mnt.to_path_buf();
    deadline(60, "getxattr after getxattr", move || {
        let file = std::fs::File::open(m.join("etc/conf0")).unwrap();
        let before = migrations();
        for _ in 0..n {
            let got = rustix::fs::fgetxattr(&file, "user.none", &mut [0u8; 8]);
            assert_eq!(got, Err(rustix::io::Errno::NODATA));
        }
        migrations() - before
    })
}

/// STRATA_FUSE_KEEP_CPU=always: ring threads run under SCHED_IDLE, so that the caller
/// wakes on the CPU that served it.
/// - A caller making request after request stays on its CPU (without it, the scheduler
///   moved it on most requests here: 33,575 migrations in 40,000 getxattr and isatty calls).
/// - With a busy task pinned to every CPU, where a thread under SCHED_IDLE gets almost no
///   CPU, requests of every kind still go through: the watchdog puts a starved ring thread
///   back under SCHED_BATCH.
#[test]
fn ring_threads_under_sched_idle_keep_the_caller_and_are_not_starved() {
    let _alone = crate::common::alone();
    use std::os::fd::AsRawFd;
    let fixture = Fixture::new();
    let (mnt, _, _cleanup) =
        start_on_branches(&fixture, "keep-cpu", &[("STRATA_FUSE_KEEP_CPU", "always")]);
    let pid = server_pid(&mnt);
    let moved = migrations_in_getxattrs(&mnt, 5000);
    let busy = BusyCpus::start();
    let m = mnt.clone();
    let made = deadline(120, "requests beside a busy task on every CPU", move || {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let dir = m.join(format!("keep-{t}"));
                std::thread::spawn(move || {
                    std::fs::create_dir(&dir).unwrap();
                    for i in 0..300 {
                        let path = dir.join(format!("f{i}"));
                        std::fs::write(&path, format!("{t}/{i}")).unwrap();
                        let file = std::fs::File::open(&path).unwrap();
                        // SAFETY: isatty on a descriptor this thread holds open.
                        let tty = unsafe { libc::isatty(file.as_raw_fd()) };
                        assert_eq!(tty, 0, "{}", path.display());
                        assert_eq!(
                            rustix::fs::fgetxattr(&file, "user.none", &mut [0u8; 8]),
                            Err(rustix::io::Errno::NODATA)
                        );
                    }
                    std::fs::read_dir(&dir).unwrap().count()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    drop(busy);
    let threads = thread_policies(pid);
    umount(&mnt);
    assert!(
        moved < 50,
        "the caller changed CPU {moved} times in 5000 requests"
    );
    assert_eq!(made, [300, 300]);
    let rings: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("fuser-uring-"))
        .collect();
    assert!(
        !rings.is_empty(),
        "no ring threads in {threads:?}: FUSE over io_uring is off \
         (echo Y > /sys/module/fuse/parameters/enable_uring; scripts/install-deps.sh does it)"
    );
    assert!(
        threads.iter().any(|(name, _)| name == "fuser-watchdog"),
        "no watchdog among {threads:?}"
    );
    for (name, policy) in rings {
        assert!(
            [libc::SCHED_IDLE, libc::SCHED_BATCH].contains(policy),
            "{name} in {threads:?}"
        );
    }
}

/// The default (Auto) mode finds a caller that moves between CPUs and keeps it on one: few
/// migrations in 5,000 requests. Left alone (STRATA_FUSE_KEEP_CPU=never), the scheduler
/// here moved the caller 337 times in one run of four, when it fell into moving it on
/// every request or every other one; the others stayed put, so this catches a broken Auto
/// mode only some of the time.
#[test]
fn by_default_a_caller_that_moves_is_kept_on_its_cpu() {
    let _alone = crate::common::alone();
    let fixture = Fixture::new();
    let (mnt, _, _cleanup) = start_on_branches(&fixture, "keep-auto", &[]);
    let moved = migrations_in_getxattrs(&mnt, 5000);
    umount(&mnt);
    assert!(
        moved < 100,
        "the caller changed CPU {moved} times in 5000 requests"
    );
}
