//! Shared fixtures for the end-to-end tests: a throwaway store root, a runner for the
//! `strata` binary, and the busybox base image every test builds on.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A fresh store root in a temp dir; removed (after unmounting anything below it) on drop.
pub struct TestStore {
    pub dir: tempfile::TempDir,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::Builder::new()
            .prefix("strata-e2e-")
            .tempdir_in(scratch_dir())
            .expect("create temp store");
        TestStore { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `strata --root <this store> ARGS...`, with a 120 s deadline.
    pub fn strata(&self, args: &[&str]) -> Output {
        self.strata_in(args, None)
    }

    /// Like `strata`, but run in `cwd`.
    pub fn strata_in(&self, args: &[&str], cwd: Option<&Path>) -> Output {
        let mut cmd = self.command(args);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        run_with_timeout(cmd, Duration::from_secs(120))
    }

    /// Like `ok`, with extra environment variables.
    pub fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let out = run_with_timeout(cmd, Duration::from_secs(120));
        assert_success(&out, args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(strata_bin());
        cmd.arg("--root").arg(self.root()).args(args);
        cmd
    }

    /// Runs strata and panics with its output unless it exits 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.strata(args);
        assert_success(&out, args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports the busybox rootfs as `busybox:latest` (or `name`).
    pub fn import_busybox(&self, name: &str) {
        let tar = busybox_rootfs_tar();
        self.ok(&["import", tar.to_str().unwrap(), name]);
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        // Containers a failed test left running (with their monitors and union servers)
        // end with it.
        if self.root().join("containers").is_dir() {
            let listed = self.strata(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.strata(&args);
            }
        }
        // Unmount anything a failed test left mounted below the root, deepest first, so
        // removing the temp dir never walks into a live mount.
        let root = self.root().to_path_buf();
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut mounts: Vec<PathBuf> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Where tests put their scratch trees: on the real disk (not tmpfs), so overlayfs and
/// xattrs behave as they do for users.
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "strata {} failed with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command, killing it (by its PID) if it outlives `limit`, so no test can hang CI.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || read_all(stdout));
    let err_thread = std::thread::spawn(move || read_all(stderr));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

fn read_all(mut r: impl std::io::Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

/// The busybox rootfs tarball made by scripts/busybox-rootfs.sh, built once per test run.
pub fn busybox_rootfs_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let out = scratch_dir().join(format!("busybox-rootfs-{}.tar", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .status()
            .expect("run busybox-rootfs.sh");
        assert!(
            status.success(),
            "scripts/busybox-rootfs.sh failed (fix: apt-get install -y busybox-static)"
        );
        out
    })
    .clone()
}

/// Fails the test with the fixing command when a host tool is missing.
pub fn require_tool(tool: &str, fix: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed (fix: {fix})");
}
