//! Integration tests of strata-runtime with real namespaces and cgroups, on a busybox
//! rootfs built from the host's static busybox (`apt-get install -y busybox-static`).
//! Needs root. Tests that send signals to the test process itself take the write side of
//! `SIGNAL_LOCK`, so no other container is running when they do.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use strata_runtime::{Error, Limits, Network, Spec};

static SIGNAL_LOCK: RwLock<()> = RwLock::new(());

const BUSYBOX: &str = "/bin/busybox";

/// A busybox root: applet links from `busybox --list-full`, /etc/passwd and /etc/group
/// with root, a user `app` (1000) in a supplementary group `extra` (2000).
struct Rootfs {
    dir: tempfile::TempDir,
}

impl Rootfs {
    fn new() -> Rootfs {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: apt-get install -y busybox-static"
        );
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests need root (namespaces, mounts, cgroups)"
        );
        let dir = tempfile::Builder::new()
            .prefix("strata-rt-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        // Readable by the remapped root of a user namespace too.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for sub in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
            "home/app",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // Copied by cp(1), not in this process: a container another test forks meanwhile
        // would inherit our write descriptor to the binary, and exec it with ETXTBSY
        // (exit 126; killed_container_exits_137 failed so about once in ten runs).
        let copied = std::process::Command::new("cp")
            .arg(BUSYBOX)
            .arg(root.join("bin/busybox"))
            .status()
            .unwrap();
        assert!(copied.success(), "cp {BUSYBOX}");
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list-full")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            let link = root.join(applet);
            if applet == "bin/busybox" || link.exists() {
                continue;
            }
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/not-executable"), "data\n").unwrap();
        Rootfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self, args: &[&str]) -> Spec {
        Spec {
            rootfs: self.path().to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            hostname: Some("strata-test".into()),
            ..Spec::default()
        }
    }
}

/// The output files of one container run.
struct Output {
    dir: tempfile::TempDir,
}

impl Output {
    fn new() -> Output {
        Output {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn attach(&self, spec: &mut Spec) {
        let open = |name: &str| -> OwnedFd {
            std::fs::File::create(self.dir.path().join(name))
                .unwrap()
                .into()
        };
        spec.stdout = Some(open("stdout"));
        spec.stderr = Some(open("stderr"));
        spec.stdin = Some(std::fs::File::open("/dev/null").unwrap().into());
    }

    fn read(&self, name: &str) -> String {
        let mut text = String::new();
        std::fs::File::open(self.dir.path().join(name))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

fn cgroup_name(test: &str) -> String {
    format!("strata-test-{}-{test}", std::process::id())
}

/// Runs `args` and returns (exit code, stdout, stderr).
fn run(rootfs: &Rootfs, args: &[&str], configure: impl FnOnce(&mut Spec)) -> (i32, String, String) {
    let _guard = SIGNAL_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let output = Output::new();
    let mut spec = rootfs.spec(args);
    output.attach(&mut spec);
    configure(&mut spec);
    let cgroup = spec.cgroup_name.clone();
    let code = strata_runtime::run(spec).expect("container failed to start");
    if !cgroup.is_empty() {
        strata_runtime::remove_cgroup(&cgroup).unwrap();
    }
    (code, output.read("stdout"), output.read("stderr"))
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cgroup_v1_dir(controller: &str, name: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("strata")
        .join(name)
}

fn unified() -> bool {
    matches!(
        strata_runtime::cgroup::Layout::get(),
        strata_runtime::cgroup::Layout::Unified(_)
    )
}

#[test]
fn command_is_pid_1() {
    let rootfs = Rootfs::new();
    let (code, out, _) = run(&rootfs, &["sh", "-c", "echo $$"], |_| {});
    assert_eq!((code, out.trim()), (0, "1"));
}

#[test]
fn host_pids_are_invisible() {
    let rootfs = Rootfs::new();
    let (code, out, err) = run(
        &rootfs,
        &["sh", "-c", "ls /proc | grep '^[0-9][0-9]*$'"],
        |_| {},
    );
    assert_eq!(code, 0, "{err}");
    let pids: Vec<u32> = out.lines().map(|line| line.parse().unwrap()).collect();
    assert!(pids.contains(&1), "{pids:?}");
    assert!(
        pids.len() <= 4 && pids.iter().all(|pid| *pid < 10),
        "host pids visible: {pids:?}"
    );
}

#[test]
fn hostname_is_private() {
    let rootfs = Rootfs::new();
    let host = nix::unistd::gethostname().unwrap();
    // Without CAP_SYS_ADMIN (docker's default set) the container cannot rename itself.
    let (code, out, _) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "hostname; echo $HOSTNAME; hostname changed 2>/dev/null || echo denied",
        ],
        |_| {},
    );
    assert_eq!(code, 0);
    assert_eq!(out, "strata-test\nstrata-test\ndenied\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
}

#[test]
fn mounts_do_not_leak_into_the_host() {
    let _guard = SIGNAL_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let rootfs = Rootfs::new();
    let root = rootfs.path().display().to_string();
    let mentions = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .count()
    };
    assert_eq!(mentions(), 0);
    let mut spec = rootfs.spec(&["sh", "-c", "touch /tmp/ready && sleep 30"]);
    let output = Output::new();
    output.attach(&mut spec);
    let child = strata_runtime::spawn(spec).unwrap();
    wait_for(&rootfs.path().join("tmp/ready"));
    assert_eq!(mentions(), 0, "container mounts visible on the host");
    child.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap(), 137);
    assert_eq!(mentions(), 0);
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let rootfs = Rootfs::new();
    let (code, out, err) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "ls /sys/class/net; cat /sys/class/net/lo/flags; ping -c1 -W1 127.0.0.1 >/dev/null && echo ping-ok",
        ],
        |spec| spec.network = Network::None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "lo\n0x9\nping-ok\n");
}

#[test]
fn network_host_sees_host_interfaces() {
    let rootfs = Rootfs::new();
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let (code, out, err) = run(&rootfs, &["ls", "/sys/class/net"], |spec| {
        spec.network = Network::Host
    });
    assert_eq!(code, 0, "{err}");
    let mut inside: Vec<&str> = out.lines().collect();
    let mut host: Vec<&str> = host.iter().map(String::as_str).collect();
    inside.sort();
    host.sort();
    assert_eq!(inside, host);
}

#[test]
fn etc_files_are_bound_from_the_host_and_writes_reach_the_host_copy() {
    let rootfs = Rootfs::new();
    let outside = tempfile::tempdir().unwrap();
    let resolv = outside.path().join("resolv.conf");
    let hosts = outside.path().join("hosts");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    std::fs::write(&hosts, "127.0.0.1\tlocalhost\n").unwrap();
    std::fs::write(rootfs.path().join("etc/hosts"), "image's own\n").unwrap();
    let (code, out, err) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "cat /etc/resolv.conf /etc/hosts; echo '10.0.0.9 added' >> /etc/hosts",
        ],
        |spec| {
            spec.network = Network::Host;
            spec.etc_files = vec![
                (resolv.clone(), "/etc/resolv.conf".into()),
                (hosts.clone(), "/etc/hosts".into()),
            ];
        },
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "nameserver 192.0.2.53\n127.0.0.1\tlocalhost\n");
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "127.0.0.1\tlocalhost\n10.0.0.9 added\n"
    );
    // The rootfs file under the bind is untouched; a missing target was created empty
    // (runc's behaviour: callers that must keep it out of an upper provide it in a lower).
    assert_eq!(
        std::fs::read_to_string(rootfs.path().join("etc/hosts")).unwrap(),
        "image's own\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.path().join("etc/resolv.conf")).unwrap(),
        ""
    );
}

#[test]
fn exit_codes_follow_docker() {
    let rootfs = Rootfs::new();
    assert_eq!(run(&rootfs, &["true"], |_| {}).0, 0);
    assert_eq!(run(&rootfs, &["sh", "-c", "exit 3"], |_| {}).0, 3);
    let (code, _, err) = run(&rootfs, &["no-such-command"], |_| {});
    assert_eq!(code, 127);
    assert!(
        err.contains("\"no-such-command\": executable file not found in $PATH"),
        "{err}"
    );
    let (code, _, err) = run(&rootfs, &["/etc/not-executable"], |_| {});
    assert_eq!(code, 126);
    assert!(err.contains("/etc/not-executable"), "{err}");
    // Signals from inside a pid namespace cannot kill its init: under --init the command
    // is pid 2, its self-inflicted SIGTERM gives 128+15.
    assert_eq!(
        run(&rootfs, &["sh", "-c", "kill -TERM $$; sleep 5"], |spec| {
            spec.init = true
        })
        .0,
        143
    );
}

#[test]
fn killed_container_exits_137() {
    let _guard = SIGNAL_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let rootfs = Rootfs::new();
    let child = strata_runtime::spawn(rootfs.spec(&["sleep", "30"])).unwrap();
    child.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap(), 137);
}

#[test]
fn setup_failure_is_an_error_not_an_exit_code() {
    let rootfs = Rootfs::new();
    let mut spec = rootfs.spec(&["true"]);
    spec.user = "ghost".into();
    let err = strata_runtime::run(spec).unwrap_err();
    assert!(matches!(err, Error::Setup(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "container setup failed: unable to find user ghost: no matching entries in /etc/passwd"
    );
}

#[test]
fn signals_are_forwarded_to_the_container() {
    let _guard = SIGNAL_LOCK.write().unwrap_or_else(|p| p.into_inner());
    let rootfs = Rootfs::new();
    for (signal, expected) in [
        (nix::sys::signal::Signal::SIGTERM, 42),
        (nix::sys::signal::Signal::SIGINT, 43),
        (nix::sys::signal::Signal::SIGHUP, 44),
    ] {
        let ready = rootfs.path().join("tmp/ready");
        let _ = std::fs::remove_file(&ready);
        let spec = rootfs.spec(&[
            "sh",
            "-c",
            "trap 'exit 42' TERM; trap 'exit 43' INT; trap 'exit 44' HUP; touch /tmp/ready; while :; do sleep 0.05; done",
        ]);
        let runner = std::thread::spawn(move || strata_runtime::run(spec).unwrap());
        wait_for(&ready);
        // run() has installed its handlers before the container could write the marker.
        nix::sys::signal::kill(nix::unistd::getpid(), signal).unwrap();
        assert_eq!(runner.join().unwrap(), expected, "{signal}");
    }
}

#[test]
fn memory_limit_oom_kills_a_200m_allocation() {
    let rootfs = Rootfs::new();
    let name = cgroup_name("oom");
    let _guard = SIGNAL_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let mut spec = rootfs.spec(&["tail", "/dev/zero"]); // buffers one endless line
    spec.limits = Limits {
        memory: Some(64 << 20),
        ..Limits::default()
    };
    spec.cgroup_name = name.clone();
    let output = Output::new();
    output.attach(&mut spec);
    let code = strata_runtime::run(spec).unwrap();
    let kills = strata_runtime::cgroup::oom_kills(&name);
    strata_runtime::remove_cgroup(&name).unwrap();
    assert_eq!(code, 137);
    assert!(kills >= 1, "no oom_kill counted");
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let rootfs = Rootfs::new();
    let (code, out, err) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 64 ]; do sleep 5 & i=$((i+1)); done; echo survived",
        ],
        |spec| {
            spec.limits.pids = Some(16);
            spec.cgroup_name = cgroup_name("pids");
        },
    );
    assert!(
        err.contains("can't fork"),
        "code {code}, out {out:?}, err {err:?}"
    );
    assert!(!out.contains("survived"));
    assert_ne!(code, 0);
}

#[test]
fn cpu_quota_is_written_and_cgroup_removed() {
    let _guard = SIGNAL_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let rootfs = Rootfs::new();
    let name = cgroup_name("cpu");
    let mut spec = rootfs.spec(&["true"]);
    spec.limits = Limits {
        cpus: Some(0.5),
        pids: Some(100),
        cpuset_cpus: Some("0".into()),
        blkio_weight: Some(300),
        ..Limits::default()
    };
    spec.cgroup_name = name.clone();
    assert_eq!(strata_runtime::run(spec).unwrap(), 0);
    let read = |controller: &str, file: &str| {
        let dir = if unified() {
            Path::new("/sys/fs/cgroup/strata").join(&name)
        } else {
            cgroup_v1_dir(controller, &name)
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    if unified() {
        assert_eq!(read("cpu", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    }
    assert_eq!(read("pids", "pids.max"), "100");
    strata_runtime::remove_cgroup(&name).unwrap();
    assert!(!cgroup_v1_dir("cpu", &name).exists() && !cgroup_v1_dir("memory", &name).exists());
}

#[test]
fn env_user_and_workdir() {
    let rootfs = Rootfs::new();
    let (code, out, err) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "echo $FOO; id -u; id -g; id -G; pwd; echo $HOME; echo $PATH",
        ],
        |spec| {
            spec.env = vec!["FOO=bar baz".into()];
            spec.user = "app".into();
            spec.cwd = "/work/dir".into();
        },
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "bar baz\n1000\n1000\n1000 2000\n/work/dir\n/home/app\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    assert!(rootfs.path().join("work/dir").is_dir());
    let (_, out, _) = run(&rootfs, &["sh", "-c", "id -u; id -g; id -G"], |spec| {
        spec.user = "4242:77".into()
    });
    assert_eq!(out, "4242\n77\n77\n");
}

#[test]
fn capabilities_are_dockers_and_no_new_privs_only_when_asked() {
    let rootfs = Rootfs::new();
    let status = [
        "grep",
        "-E",
        "^(CapEff|CapBnd|CapInh|NoNewPrivs)",
        "/proc/self/status",
    ];
    let (code, out, _) = run(&rootfs, &status, |_| {});
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "CapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nNoNewPrivs:\t0\n"
    );
    let (_, out, _) = run(&rootfs, &status, |spec| spec.no_new_privileges = true);
    assert!(out.ends_with("NoNewPrivs:\t1\n"), "{out}");
    let (_, out, _) = run(&rootfs, &["grep", "^CapEff", "/proc/self/status"], |spec| {
        spec.user = "app".into()
    });
    assert_eq!(out, "CapEff:\t0000000000000000\n");
}

#[test]
fn dev_proc_and_sys_are_set_up_like_runc() {
    let rootfs = Rootfs::new();
    let script = "ls /dev | tr '\\n' ' '; echo; \
        readlink /dev/fd; readlink /dev/stdin; readlink /dev/ptmx; \
        wc -c < /proc/timer_list; ls -A /proc/acpi | wc -l; ls -A /sys/firmware | wc -l; \
        echo x > /proc/sys/kernel/hostname 2>/dev/null && echo proc-sys-writable; \
        touch /sys/x 2>/dev/null && echo sys-writable; \
        head -c 4 /dev/urandom | wc -c; \
        grep -c ' /dev/pts ' /proc/self/mountinfo";
    let (code, out, err) = run(&rootfs, &["sh", "-c", script], |_| {});
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "core fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    assert_eq!(
        &lines[1..],
        [
            "/proc/self/fd",
            "/proc/self/fd/0",
            "pts/ptmx",
            "0",
            "0",
            "0",
            "4",
            "1"
        ]
    );
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_range() {
    let rootfs = Rootfs::new();
    let (code, out, err) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; cat /etc/passwd | head -1",
        ],
        |spec| spec.userns = true,
    );
    assert_eq!(code, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words[..8],
        [
            "0",
            "100000",
            "65536",
            "0",
            "100000",
            "65536",
            "0",
            "root:x:0:0:root:/root:/bin/sh"
        ]
    );
}

#[test]
fn tty_gives_a_terminal() {
    let rootfs = Rootfs::new();
    let (code, out, _) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "tty; test -t 0 && test -t 1 && echo is-a-tty; echo $TERM",
        ],
        |spec| spec.tty = true,
    );
    assert_eq!(code, 0);
    // The pty belongs to the container's own devpts (and is bound to /dev/console).
    assert_eq!(out.replace('\r', ""), "/dev/pts/0\nis-a-tty\nxterm\n");
}

#[test]
fn init_runs_the_command_as_pid_2_and_reaps() {
    let rootfs = Rootfs::new();
    let (code, out, _) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "echo $$; (sleep 0.1 &); sleep 0.3; ps -o stat,comm | grep -c '^Z'",
        ],
        |spec| spec.init = true,
    );
    assert_eq!(out.lines().next(), Some("2"), "{out}");
    assert_eq!(out.lines().nth(1), Some("0"), "zombies left: {out}");
    assert_eq!(code, 1); // grep -c found nothing

    // pid 1 holds its stdio and nothing of strata's (it never execs, so close-on-exec
    // descriptors stayed open in it).
    let (code, out, err) = run(&rootfs, &["ls", "/proc/1/fd"], |spec| spec.init = true);
    assert_eq!((code, out.as_str()), (0, "0\n1\n2\n"), "{err}");
}

#[test]
fn block_devices_cannot_be_opened() {
    let rootfs = Rootfs::new();
    // CAP_MKNOD is in docker's set: the node can be made, the devices cgroup refuses it.
    let (_, out, err) = run(
        &rootfs,
        &[
            "sh",
            "-c",
            "mknod /dev/blk b 7 0 && echo made; head -c1 /dev/blk; head -c1 /dev/zero | wc -c",
        ],
        |spec| spec.cgroup_name = cgroup_name("devices"),
    );
    assert_eq!(out, "made\n1\n");
    if !unified() {
        assert!(err.contains("Operation not permitted"), "{err}");
    }
}

/// With `kill_on_signal`, a stopping signal the caller caught before `run` took the
/// signals over (a build's ^C while its RUN was being set up) keeps the container from
/// starting at all.
#[test]
fn a_signal_caught_before_run_keeps_the_container_from_starting() {
    let rootfs = Rootfs::new();
    let marker = rootfs.path().join("started");
    let mut spec = rootfs.spec(&["sh", "-c", "touch /started"]);
    spec.kill_on_signal = true;
    spec.cancelled = Some(std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(
        libc::SIGINT as usize,
    )));
    match strata_runtime::run(spec) {
        Err(strata_runtime::Error::Interrupted(signal)) => assert_eq!(signal, libc::SIGINT),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    assert!(!marker.exists(), "the container ran");
}

#[test]
fn a_cgroup_tree_deeper_than_path_max_goes_with_its_process() {
    // A privileged container may nest cgroups past PATH_MAX as the host names them; they are
    // walked and removed through directory descriptors, their processes killed first.
    use rustix::fs::{Mode, OFlags};
    let name = cgroup_name("deep");
    let top = pids_cgroup_dir(&name);
    std::fs::create_dir_all(&top).unwrap();
    let long = "n".repeat(200);
    let mut dir = rustix::fs::open(&top, OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..25 {
        rustix::fs::mkdirat(&dir, long.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, long.as_str(), OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    assert!(top.as_os_str().len() + 25 * 201 > libc::PATH_MAX as usize);
    let mut left = Leftovers::new(&name);
    left.children.push(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let procs = rustix::fs::openat(&dir, "cgroup.procs", OFlags::WRONLY, Mode::empty()).unwrap();
    rustix::io::write(&procs, left.children[0].id().to_string().as_bytes()).unwrap();
    drop((procs, dir));
    strata_runtime::remove_cgroup(&name).expect("the deep tree is removed");
    assert!(!top.exists(), "{} is gone", top.display());
    left.assert_killed();
}

#[test]
fn a_wide_cgroup_tree_goes_with_every_process_in_it() {
    // Every process of the tree is killed before any cgroup is removed: a removal that
    // stopped at the first cgroup still busy never reached the processes further on.
    let name = cgroup_name("wide");
    let top = pids_cgroup_dir(&name);
    let mut left = Leftovers::new(&name);
    for i in 0..120 {
        let dir = top.join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        left.children.push(child);
    }
    strata_runtime::remove_cgroup(&name).expect("the wide tree is removed");
    assert!(!top.exists(), "{} is gone", top.display());
    left.assert_killed();
}

/// Cgroup `name` in the pids hierarchy (v1) or the unified one.
fn pids_cgroup_dir(name: &str) -> PathBuf {
    if unified() {
        Path::new("/sys/fs/cgroup").join("strata").join(name)
    } else {
        cgroup_v1_dir("pids", name)
    }
}

/// A test's processes and cgroup tree: killed and removed when dropped, so that a failed
/// test leaves neither.
struct Leftovers {
    name: String,
    children: Vec<std::process::Child>,
}

impl Leftovers {
    fn new(name: &str) -> Leftovers {
        Leftovers {
            name: name.to_string(),
            children: Vec::new(),
        }
    }

    /// Every process ended by SIGKILL.
    fn assert_killed(&mut self) {
        while let Some(mut child) = self.children.pop() {
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = strata_runtime::remove_cgroup(&self.name);
    }
}

#[test]
fn empty_cgroups_left_by_a_killed_process_are_swept_and_busy_ones_kept() {
    let name = format!("strata-sweep-test-{}", std::process::id());
    let dirs = |name: &str| -> Vec<PathBuf> {
        if unified() {
            vec![Path::new("/sys/fs/cgroup").join("strata").join(name)]
        } else {
            vec![cgroup_v1_dir("memory", name)]
        }
    };
    strata_runtime::cgroup::Cgroup::create(&name, &Limits::default()).unwrap();
    assert!(dirs(&name).iter().all(|d| d.is_dir()));
    // too young: kept
    let mine = |n: &str| n == name;
    assert_eq!(
        strata_runtime::sweep_cgroups(Duration::from_secs(3600), mine),
        0
    );
    assert!(dirs(&name).iter().all(|d| d.is_dir()));
    // a busy one is kept however old
    let busy = format!("{name}-busy");
    strata_runtime::cgroup::Cgroup::create(&busy, &Limits::default()).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    for dir in dirs(&busy) {
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    }
    let swept = strata_runtime::sweep_cgroups(Duration::ZERO, |n| n == name || n == busy);
    assert!(swept >= 1);
    assert!(
        dirs(&name).iter().all(|d| !d.exists()),
        "the empty one went"
    );
    assert!(
        dirs(&busy).iter().all(|d| d.is_dir()),
        "the busy one stayed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    strata_runtime::remove_cgroup(&busy).unwrap();
}
