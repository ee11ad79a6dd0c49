//! `strata mount` / `strata umount` end to end: raw branches with both drivers (the FUSE
//! server outlives the command and exits on umount), images and containers from the
//! store, a container moving between drivers, and a crashed daemon's mount swept on the
//! next mount. Everything touching a mount runs under a deadline.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::TestStore;

/// Runs `f` on a thread; fails the test if it takes longer than 60 s (a hung mount).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what} hung for 60 s"),
    }
}

fn mount_type(target: &Path) -> Option<String> {
    let target = fs::canonicalize(target).ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (Path::new(fields[4]) == target).then(|| fields[sep + 1].to_string())
    })
}

/// The PIDs of processes whose command line mentions `needle` (the FUSE daemon).
fn daemons(needle: &str) -> Vec<i32> {
    command_lines()
        .filter(|(pid, cmdline)| {
            cmdline.contains("strata")
                && cmdline.contains(needle)
                && *pid != std::process::id() as i32
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process's pid and command line (words joined by spaces).
fn command_lines() -> impl Iterator<Item = (i32, String)> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Branches {
    lower: String,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn branches(root: &Path, name: &str) -> Branches {
    let base = root.join(name);
    let (l1, l2) = (base.join("l1"), base.join("l2"));
    for d in ["l1", "l2", "upper", "work", "mnt"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    fs::write(l1.join("bottom"), b"bottom\n").unwrap();
    fs::write(l1.join("gone"), b"hidden\n").unwrap();
    fs::create_dir(l1.join("dir")).unwrap();
    fs::write(l1.join("dir/a"), b"a\n").unwrap();
    fs::write(l2.join("top"), b"top\n").unwrap();
    nix::sys::stat::mknod(
        &l2.join("gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    Branches {
        lower: format!("{}:{}", l2.display(), l1.display()),
        upper: base.join("upper"),
        work: base.join("work"),
        mnt: base.join("mnt"),
    }
}

fn raw_mount(store: &TestStore, b: &Branches, driver: &str) {
    raw_mount_env(store, b, driver, &[]);
}

fn raw_mount_env(store: &TestStore, b: &Branches, driver: &str, env: &[(&str, &str)]) {
    let mut args = vec!["mount"];
    args.extend(branch_args(b, driver));
    store.ok_env(&args, env);
}

/// `--driver D --lower .. --upper .. --work .. MNT` for `strata mount`.
fn branch_args<'a>(b: &'a Branches, driver: &'a str) -> [&'a str; 9] {
    [
        "--driver",
        driver,
        "--lower",
        &b.lower,
        "--upper",
        b.upper.to_str().unwrap(),
        "--work",
        b.work.to_str().unwrap(),
        b.mnt.to_str().unwrap(),
    ]
}

#[test]
fn mount_raw_branches_with_each_driver_then_umount() {
    let store = TestStore::new();
    for (driver, fstype) in [("fuse", "fuse.strata"), ("overlay", "overlay")] {
        let b = branches(store.root(), driver);
        raw_mount(&store, &b, driver);
        // The command returned: the mount must already be live.
        assert_eq!(mount_type(&b.mnt).as_deref(), Some(fstype));
        let mnt = b.mnt.clone();
        within("reading and writing the mount", move || {
            assert_eq!(fs::read(mnt.join("top")).unwrap(), b"top\n");
            assert_eq!(fs::read(mnt.join("bottom")).unwrap(), b"bottom\n");
            assert!(!mnt.join("gone").exists());
            fs::write(mnt.join("new"), b"new\n").unwrap();
            fs::remove_file(mnt.join("bottom")).unwrap();
            fs::rename(mnt.join("dir"), mnt.join("dir2"))
                .or_else(|e| {
                    // kernel overlayfs (redirect_dir=off) refuses to rename a lower directory
                    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
                    Ok::<(), std::io::Error>(())
                })
                .unwrap();
        });
        if driver == "fuse" {
            assert_eq!(
                daemons(b.mnt.to_str().unwrap()).len(),
                1,
                "one daemon serves the mount"
            );
        }
        store.ok(&["umount", b.mnt.to_str().unwrap()]);
        assert_eq!(mount_type(&b.mnt), None);
        assert_eq!(fs::read(b.upper.join("new")).unwrap(), b"new\n");
        let whiteout = fs::symlink_metadata(b.upper.join("bottom")).unwrap();
        assert!(
            whiteout.file_type().is_char_device(),
            "{driver}: unlink of a lower file leaves a whiteout"
        );
        if driver == "fuse" {
            wait_until("the daemon exits after umount", || {
                daemons(b.mnt.to_str().unwrap()).is_empty()
            });
            assert!(
                b.upper.join("dir2/a").is_file(),
                "strata renames lower directories"
            );
        }
    }
}

#[test]
fn mount_image_makes_a_container_that_moves_between_drivers() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    let mnt = store.root().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let id = store
        .ok(&[
            "mount",
            "--driver",
            "fuse",
            "busybox",
            mnt.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "prints the new container's id: {id}");
    assert_eq!(mount_type(&mnt).as_deref(), Some("fuse.strata"));
    let inner = mnt.clone();
    within("writing into the image mount", move || {
        assert!(inner.join("bin/busybox").is_file());
        fs::write(inner.join("hello"), b"from fuse\n").unwrap();
        fs::remove_dir_all(inner.join("etc")).ok();
    });
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(store.root().join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["driver"], "fuse");
    // Neither a second union on the same directory nor a second mount of the container.
    let containers = || {
        fs::read_dir(store.root().join("containers"))
            .unwrap()
            .count()
    };
    let before = containers();
    let out = store.strata(&["mount", "busybox", mnt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is already a union mount (fuse.strata)"),
        "{stderr}"
    );
    assert_eq!(
        containers(),
        before,
        "the refused mount leaves no container"
    );
    let other = store.root().join("mnt2");
    fs::create_dir(&other).unwrap();
    let out = store.strata(&["mount", &id, other.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is mounted at"), "{stderr}");
    assert_eq!(mount_type(&other), None);
    store.ok(&["umount", mnt.to_str().unwrap()]);
    // The same container under kernel overlayfs shows what the FUSE mount wrote.
    let again = store.ok(&[
        "mount",
        "--driver",
        "overlay",
        &id[..12],
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(again.trim(), id);
    let inner = mnt.clone();
    within("reading the container under overlay", move || {
        assert_eq!(fs::read(inner.join("hello")).unwrap(), b"from fuse\n");
        assert!(!inner.join("etc").exists());
        assert!(inner.join("bin/busybox").is_file());
    });
    store.ok(&["umount", mnt.to_str().unwrap()]);
    // Anything else at a directory is left alone (QA 17b: a tmpfs, a disk, /proc).
    let tmpfs = store.root().join("not-a-union");
    fs::create_dir(&tmpfs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&tmpfs)
        .status()
        .unwrap();
    assert!(mounted.success());
    let out = store.strata(&["umount", tmpfs.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let still = mount_type(&tmpfs);
    let _ = std::process::Command::new("umount").arg(&tmpfs).status();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a tmpfs mount, not a union"), "{stderr}");
    assert_eq!(still.as_deref(), Some("tmpfs"));
    let out = store.strata(&["umount", tmpfs.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing is mounted there"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(store.root().join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    assert!(state["mounted_at"].is_null());
}

/// A container `strata mount` has mounted is not run again over a second union (its end
/// would forget the user's mount, and `rm` then delete the upper under it); `cp` goes
/// through the user's mount, so both see the same files; no `cp` leaves its mount point.
#[test]
fn a_mounted_container_is_not_started_and_cp_uses_its_mount() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    store.ok(&[
        "run",
        "--name",
        "kept",
        "busybox",
        "sh",
        "-c",
        "echo data > /important",
    ]);
    let mnt = store.root().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    store.ok(&["mount", "kept", m]);
    fs::write(mnt.join("precious"), "precious\n").unwrap();
    for args in [
        vec!["start", "-a", "kept"],
        vec!["restart", "kept"],
        vec!["rm", "kept"],
    ] {
        let out = store.strata(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} went through");
        assert!(stderr.contains("mounted at"), "{args:?}: {stderr}");
    }
    let src = store.root().join("src.txt");
    fs::write(&src, "via cp\n").unwrap();
    store.ok(&["cp", src.to_str().unwrap(), "kept:/tmp/viacp"]);
    assert_eq!(fs::read(mnt.join("tmp/viacp")).unwrap(), b"via cp\n");
    let back = store.root().join("back.txt");
    store.ok(&["cp", "kept:/precious", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), b"precious\n");
    store.ok(&["umount", m]);
    store.ok(&["cp", src.to_str().unwrap(), "kept:/tmp/second"]);
    let left: Vec<_> = fs::read_dir(store.root().join("tmp"))
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cp left {left:?} in tmp/");
    let out = store.ok(&["start", "-a", "kept"]);
    assert_eq!(out, "", "{out}");
    store.ok(&["rm", "kept"]);
}

/// A POSIX write lock on `path`, as strata takes a container's `mount.lock`; `wait`: block
/// for it, else give up at once (false when someone else holds it).
fn posix_lock(file: &fs::File, wait: bool) -> bool {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let arg = if wait {
        nix::fcntl::FcntlArg::F_SETLKW(&lock)
    } else {
        nix::fcntl::FcntlArg::F_SETLK(&lock)
    };
    nix::fcntl::fcntl(file, arg).is_ok()
}

#[test]
fn mounting_a_container_waits_for_its_mount_lock_and_the_daemon_keeps_none() {
    within("mount lock", || {
        let store = TestStore::new();
        store.import_busybox("busybox");
        store.ok(&["run", "--name", "locked", "busybox", "true"]);
        let id = store.ok(&["inspect", "-f", "{{.Id}}", "locked"]);
        let lock_path = store
            .root()
            .join("containers")
            .join(id.trim())
            .join("mount.lock");
        let mnt = store.root().join("mnt");
        fs::create_dir(&mnt).unwrap();
        // Someone (a `start` between its check and its mount) holds the lock: `strata mount`
        // waits rather than mounting a second union over the upper.
        let held = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap();
        assert!(posix_lock(&held, true));
        let mut mount = std::process::Command::new(crate::common::strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["mount", "locked"])
            .arg(&mnt)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(mount.try_wait().unwrap().is_none(), "mount did not wait");
        assert_eq!(mount_type(&mnt), None);
        drop(held);
        assert!(mount.wait().unwrap().success());
        assert!(mount_type(&mnt).is_some());
        // The daemon serving the mount (forked from `strata mount`) holds no lock: the
        // next `start` would wait for it forever.
        let probe = fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
        assert!(posix_lock(&probe, false), "the mount daemon kept the lock");
        drop(probe);
        let out = store.strata(&["start", "-a", "locked"]);
        assert!(!out.status.success());
        store.ok(&["umount", mnt.to_str().unwrap()]);
        assert_eq!(store.ok(&["start", "-a", "locked"]), "");
        store.ok(&["rm", "locked"]);
    });
}

/// Processes whose command line is exactly `words`.
fn processes(words: &str) -> Vec<i32> {
    command_lines()
        .filter(|(_, cmdline)| cmdline.trim_end() == words)
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn two_starts_at_once_run_the_container_once() {
    within("two starts", || {
        let store = TestStore::new();
        store.import_busybox("busybox");
        store.ok(&["run", "-d", "--name", "twice", "busybox", "sleep", "2.345"]);
        let id = store.ok(&["inspect", "-f", "{{.Id}}", "twice"]);
        let rootfs = store
            .root()
            .join("containers")
            .join(id.trim())
            .join("rootfs");
        for gap in [0, 40, 90] {
            store.ok(&["wait", "twice"]);
            let start = || {
                std::process::Command::new(crate::common::strata_bin())
                    .arg("--root")
                    .arg(store.root())
                    .args(["start", "twice"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let first = start();
            std::thread::sleep(Duration::from_millis(gap));
            let second = start();
            // as docker's: starting a running container succeeds and changes nothing
            for child in [first, second] {
                let out = child.wait_with_output().unwrap();
                let said = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "gap {gap} ms: {said}");
            }
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(processes("sleep 2.345").len(), 1, "gap {gap} ms: run twice");
            let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let unions = info
                .lines()
                .filter(|line| line.split(' ').nth(4) == rootfs.to_str())
                .count();
            assert_eq!(unions, 1, "gap {gap} ms: {unions} unions on the rootfs");
        }
        store.ok(&["wait", "twice"]);
        store.ok(&["rm", "twice"]);
    });
}

#[test]
fn a_plain_umount_and_another_mount_there_do_not_pass_for_the_container() {
    // `strata mount` records where it mounted a container. After a plain umount(8) the
    // record stays; another container mounted at the same place must not be taken for it
    // (start refused, cp writing into the other container, rm refused).
    let store = TestStore::new();
    store.import_busybox("busybox");
    for name in ["first", "second"] {
        store.ok(&["run", "--name", name, "busybox", "true"]);
    }
    for driver in ["fuse", "overlay"] {
        let mnt = store.root().join(format!("mnt-{driver}"));
        fs::create_dir(&mnt).unwrap();
        let m = mnt.to_str().unwrap();
        store.ok(&["mount", "--driver", driver, "first", m]);
        // Its init layer is on top, as in `run`: the mount points of /etc's files.
        assert!(
            mnt.join("etc/resolv.conf").is_file(),
            "{driver}: no init layer"
        );
        let status = std::process::Command::new("umount")
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(status.success());
        store.ok(&["mount", "--driver", driver, "second", m]);
        let src = store.root().join("src.txt");
        fs::write(&src, "for first\n").unwrap();
        store.ok(&["cp", src.to_str().unwrap(), "first:/copied"]);
        assert!(
            !mnt.join("copied").exists(),
            "{driver}: cp into first wrote into second's mount"
        );
        let out = store.ok(&["start", "-a", "first"]);
        assert_eq!(out, "", "{driver}: {out}");
        let back = store.root().join("back.txt");
        store.ok(&["cp", "first:/copied", back.to_str().unwrap()]);
        assert_eq!(fs::read(&back).unwrap(), b"for first\n");
        // second's mount is still refused to second itself
        let out = store.strata(&["start", "second"]);
        assert!(
            !out.status.success(),
            "{driver}: second started while mounted"
        );
        if driver == "overlay" {
            store.ok(&["rm", "first"]);
        }
        store.ok(&["umount", m]);
    }
    store.ok(&["rm", "second"]);
}

/// A FUSE mount of `b` whose daemon is killed, as a crash leaves it.
fn mount_then_kill_the_daemon(store: &TestStore, b: &Branches) {
    raw_mount(store, b, "fuse");
    let pids = daemons(b.mnt.to_str().unwrap());
    assert_eq!(pids.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mnt = b.mnt.clone();
    wait_until(
        "the dead mount answers ENOTCONN",
        move || matches!(fs::metadata(&mnt), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
    );
}

#[test]
fn crashed_daemon_mount_is_swept_on_next_mount() {
    let store = TestStore::new();
    let b = branches(store.root(), "crash");
    mount_then_kill_the_daemon(&store, &b);
    raw_mount(&store, &b, "fuse");
    let mnt = b.mnt.clone();
    within("reading the new mount", move || {
        assert_eq!(fs::read(mnt.join("top")).unwrap(), b"top\n")
    });
    store.ok(&["umount", b.mnt.to_str().unwrap()]);
}

/// `strata mount IMAGE DIR` with DIR relative, its daemon killed: the next `strata mount`
/// there sweeps the dead mount (the mount table names it by its absolute path), and so
/// does `rm` of the container, which had refused while the record named a mount.
#[test]
fn crashed_daemon_mount_at_a_relative_dir_is_swept_by_mount_and_rm() {
    let store = crate::run::store_with_busybox();
    let root = store.root().to_path_buf();
    let dir = root.join("crash-rel-dir");
    fs::create_dir_all(&dir).unwrap();
    let kill_the_daemon = || {
        let pids = daemons("crash-rel-dir");
        assert_eq!(pids.len(), 1, "{pids:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // (a stat may come from the kernel's cache; a listing asks the server)
        let mnt = dir.clone();
        wait_until(
            "the dead mount answers ENOTCONN",
            move || matches!(fs::read_dir(&mnt), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
        );
    };
    let mount = |args: &[&str]| {
        let out = store.strata_in(args, Some(&root));
        crate::common::assert_success(&out, args);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = mount(&["mount", "--driver", "fuse", "busybox", "crash-rel-dir"]);
    kill_the_daemon();
    let second = mount(&["mount", "--driver", "fuse", "busybox", "crash-rel-dir"]);
    assert!(dir.join("bin/busybox").is_file(), "the new mount serves");
    kill_the_daemon();
    // the first container's record names no live mount: it goes; the second's mount is
    // dead, and `rm` detaches it rather than refusing
    store.ok(&["rm", &first]);
    store.ok(&["rm", &second]);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains("crash-rel-dir"), "{mountinfo}");
}

#[test]
fn crashed_daemon_mount_is_swept_by_gc() {
    let store = TestStore::new();
    let b = branches(store.root(), "crash-gc");
    mount_then_kill_the_daemon(&store, &b);
    store.ok(&["gc"]);
    assert!(b.mnt.is_dir(), "the mount point is a plain directory again");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(b.mnt.to_str().unwrap()),
        "the dead mount is detached"
    );
}

#[test]
fn mount_errors_name_the_problem() {
    let store = TestStore::new();
    let b = branches(store.root(), "errors");
    let out = store.strata(&[
        "mount", "--driver", "zfs", "--lower", &b.lower, "--upper", "u", "--work", "w", "m",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown union driver \"zfs\""));
    let out = store.strata(&[
        "mount",
        "--lower",
        "/nonexistent",
        "--upper",
        b.upper.to_str().unwrap(),
        "--work",
        b.work.to_str().unwrap(),
        b.mnt.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = store.strata(&["umount", b.mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to unmount") && stderr.contains("nothing is mounted there"),
        "{stderr}"
    );
}

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// A FUSE daemon thread: its name, voluntary context switches and allowed CPUs.
struct DaemonThread {
    name: String,
    switches: u64,
    cpus: String,
}

fn daemon_threads(pid: i32) -> Vec<DaemonThread> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        threads.push(DaemonThread {
            name: field("Name:"),
            switches: field("voluntary_ctxt_switches:").parse().unwrap_or(0),
            cpus: field("Cpus_allowed_list:"),
        });
    }
    threads
}

/// The io_uring queue a ring thread serves, from its name `fuser-uring-QUEUE.N`.
fn ring_queue(thread: &DaemonThread) -> Option<usize> {
    thread
        .name
        .strip_prefix("fuser-uring-")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Voluntary context switches of each queue's ring threads, by queue.
fn switches_by_queue(pid: i32, queues: usize) -> Vec<u64> {
    let mut by_queue = vec![0; queues];
    for t in daemon_threads(pid) {
        if let Some(q) = ring_queue(&t) {
            by_queue[q] += t.switches;
        }
    }
    by_queue
}

fn possible_cpus() -> usize {
    // The kernel makes num_possible_cpus() queues: count the ranges ("0-3", "0,2-5").
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    text.trim()
        .split(',')
        .map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            last.parse::<usize>().unwrap() - first.parse::<usize>().unwrap() + 1
        })
        .sum()
}

/// Opens, reads and closes `path` `times` times from a thread pinned to CPU 0.
fn read_from_cpu0(path: PathBuf, times: usize) {
    within("reading from CPU 0", move || {
        let mut cpu0 = nix::sched::CpuSet::new();
        cpu0.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).unwrap();
        for _ in 0..times {
            assert_eq!(fs::read(&path).unwrap(), b"top\n");
        }
    });
}

#[test]
fn fuse_requests_are_served_over_io_uring_on_the_callers_cpu() {
    let enabled = fs::read_to_string(ENABLE_URING).unwrap_or_else(|_| {
        panic!(
            "{ENABLE_URING} is missing: FUSE over io_uring needs Linux 6.14+ (CONFIG_FUSE_IO_URING)"
        )
    });
    assert_eq!(
        enabled.trim(),
        "Y",
        "FUSE over io_uring is off (fix: echo Y > {ENABLE_URING}; scripts/install-deps.sh does it)"
    );
    let store = TestStore::new();
    let b = branches(store.root(), "uring");
    raw_mount(&store, &b, "fuse");
    let pid = daemons(b.mnt.to_str().unwrap())[0];

    // Every possible CPU has a queue, served by threads pinned to that CPU. The daemon
    // starts them once it has answered INIT, which may be after `strata mount` returns.
    let queues = possible_cpus();
    let ring_threads = || -> Vec<DaemonThread> {
        daemon_threads(pid)
            .into_iter()
            .filter(|t| ring_queue(t).is_some())
            .collect()
    };
    wait_until("every possible CPU has a ring thread", || {
        let rings = ring_threads();
        (0..queues).all(|q| rings.iter().any(|t| ring_queue(t) == Some(q)))
    });
    let rings = ring_threads();
    for q in 0..queues {
        let serving: Vec<&DaemonThread> =
            rings.iter().filter(|t| ring_queue(t) == Some(q)).collect();
        assert!(
            !serving.is_empty(),
            "no ring thread serves CPU {q}: {:?}",
            rings.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
        for t in serving {
            assert_eq!(t.cpus, q.to_string(), "{} is pinned to CPU {q}", t.name);
        }
    }

    // Requests from CPU 0 wake CPU 0's ring threads (one OPEN and one RELEASE per read;
    // the data is cached), and no other queue's.
    const READS: usize = 400;
    let before = switches_by_queue(pid, queues);
    read_from_cpu0(b.mnt.join("top"), READS);
    let after = switches_by_queue(pid, queues);
    let woken: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        woken[0] >= READS as u64,
        "CPU 0's rings woke {} times for {READS} opens: {woken:?}",
        woken[0]
    );
    for (q, &n) in woken.iter().enumerate().skip(1) {
        assert!(
            n < READS as u64 / 4,
            "CPU {q}'s rings served requests sent from CPU 0: {woken:?}"
        );
    }
    store.ok(&["umount", b.mnt.to_str().unwrap()]);
    wait_until("the daemon exits after umount", || {
        daemons(b.mnt.to_str().unwrap()).is_empty()
    });
}

#[test]
fn fuse_requests_are_served_from_dev_fuse_with_io_uring_turned_off() {
    let store = TestStore::new();
    let b = branches(store.root(), "no-uring");
    raw_mount_env(&store, &b, "fuse", &[("STRATA_FUSE_URING", "0")]);
    let pid = daemons(b.mnt.to_str().unwrap())[0];
    let mnt = b.mnt.clone();
    within("using the mount", move || {
        assert_eq!(fs::read(mnt.join("bottom")).unwrap(), b"bottom\n");
        fs::write(mnt.join("dir/a"), b"changed\n").unwrap();
        fs::rename(mnt.join("dir"), mnt.join("moved")).unwrap();
        assert_eq!(fs::read(mnt.join("moved/a")).unwrap(), b"changed\n");
        fs::remove_file(mnt.join("top")).unwrap();
        let mut names: Vec<String> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["bottom", "moved"]);
    });
    let threads = daemon_threads(pid);
    assert!(
        threads.iter().all(|t| ring_queue(t).is_none()),
        "no ring threads when STRATA_FUSE_URING=0: {:?}",
        threads.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    store.ok(&["umount", b.mnt.to_str().unwrap()]);
}

/// Starts `strata mount --foreground` with raw branches; returns once the mount is live.
fn foreground_mount(store: &TestStore, b: &Branches) -> std::process::Child {
    let child = std::process::Command::new(crate::common::strata_bin())
        .args([
            "--root",
            store.root().to_str().unwrap(),
            "mount",
            "--foreground",
        ])
        .args(["--driver", "fuse", "--lower", &b.lower])
        .args(["--upper", b.upper.to_str().unwrap()])
        .args(["--work", b.work.to_str().unwrap(), b.mnt.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_until("the foreground mount is live", || {
        mount_type(&b.mnt).as_deref() == Some("fuse.strata")
    });
    child
}

/// Waits (under a deadline) for the foreground server to exit; its exit code.
fn exit_code(mut child: std::process::Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("strata mount --foreground did not exit after its mount went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn foreground_mount_serves_until_unmounted_or_signalled() {
    let store = TestStore::new();
    let b = branches(store.root(), "foreground");

    // Ended by umount from elsewhere.
    let server = foreground_mount(&store, &b);
    let mnt = b.mnt.clone();
    within("using the foreground mount", move || {
        assert_eq!(fs::read(mnt.join("top")).unwrap(), b"top\n");
        fs::write(mnt.join("new"), b"new\n").unwrap();
    });
    assert!(daemons(b.mnt.to_str().unwrap()).contains(&(server.id() as i32)));
    store.ok(&["umount", b.mnt.to_str().unwrap()]);
    assert_eq!(exit_code(server), Some(0));
    assert_eq!(fs::read(b.upper.join("new")).unwrap(), b"new\n");

    // Ended by SIGTERM: the server unmounts and exits cleanly.
    let server = foreground_mount(&store, &b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(exit_code(server), Some(0));
    assert_eq!(mount_type(&b.mnt), None, "SIGTERM unmounts");

    // The overlay driver has no server to keep in the foreground.
    let mut args = vec!["mount", "--foreground"];
    args.extend(branch_args(&b, "overlay"));
    let out = store.strata(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlay driver has no server"));
}
