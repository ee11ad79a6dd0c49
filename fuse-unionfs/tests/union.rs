//! Integration tests of strata-unionfs on real mounts: the FUSE driver against kernel
//! overlayfs (differential, seeded random operation sequences), one test per operation,
//! concurrency, and containers moving between drivers. Every mount is held by a guard and
//! every batch of operations runs under a deadline, so a hung FUSE fails instead of hanging.
//! STRATA_DIFF_OPS sets the number of random operations (default 2000), STRATA_DIFF_SEED
//! the first seed.

#[path = "union/common.rs"]
mod common;
#[path = "union/ops.rs"]
mod ops;
#[path = "union/random.rs"]
mod random;
#[path = "union/standalone.rs"]
mod standalone;

use std::path::PathBuf;

use common::{Fixture, assert_same, deadline, inode_numbers, link_groups, snapshot};
use random::{Gen, Op, apply, copy_then_remove, entries};
use strata_unionfs::Driver;

/// STRATA_DIFF_PAUSE=SECS keeps the mounts up that long on a mismatch, to look around.
fn pause_on_mismatch(ok: bool, mnt: &std::path::Path) {
    if let (false, Some(secs)) = (
        ok,
        std::env::var("STRATA_DIFF_PAUSE")
            .ok()
            .and_then(|v| v.parse().ok()),
    ) {
        eprintln!("mismatch: pausing {secs} s, fuse at {}", mnt.display());
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

fn diff_ops() -> usize {
    std::env::var("STRATA_DIFF_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn diff_seed() -> u64 {
    std::env::var("STRATA_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0574_2a7a)
}

/// Runs `count` random operations on the FUSE mount and on kernel overlayfs over the same
/// lowers. Every result (errno) must match and the merged views must match. With
/// `dir_renames`, a rename the kernel refuses with EXDEV (a directory with lower parts,
/// redirect_dir=off) is where strata deliberately differs: strata must succeed, and the
/// kernel side gets what `mv` falls back to (copy, then delete) so the views stay equal.
fn differential(
    seed: u64,
    count: usize,
    dir_renames: bool,
) -> (Fixture, common::Mounted, common::Mounted, usize) {
    let fixture = Fixture::new();
    let fuse = fixture.mount("fuse", Driver::Fuse);
    let kernel = fixture.mount("kernel", Driver::Overlay);
    let (fuse_mnt, kernel_mnt) = (fuse.mnt.clone(), kernel.mnt.clone());
    // what the kernel view starts with is all from the lowers
    let lower_dirs: Vec<PathBuf> = entries(&kernel_mnt)
        .into_iter()
        .filter(|(_, kind)| *kind == 'd')
        .map(|(path, _)| path)
        .collect();
    // The snapshots every 250 steps grow with the tree, so a run's time is about
    // quadratic in its length: 600 s covers CI's 2,000 ops many times over.
    let secs = 600 + (count as u64 / 1000).pow(2) * 5;
    let renamed = deadline(secs, "differential operations", move || {
        let mut generator = if dir_renames {
            Gen::with_dir_renames(seed, lower_dirs)
        } else {
            Gen::new(seed)
        };
        let mut renamed = 0;
        for step in 0..count {
            let op = generator.next(&entries(&kernel_mnt));
            if std::env::var("STRATA_DIFF_STOP")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                == Some(step)
            {
                pause_on_mismatch(false, &fuse_mnt);
            }
            let expected = apply(&kernel_mnt, &op);
            if std::env::var_os("STRATA_DIFF_TRACE").is_some() {
                eprintln!("step {step}: {op:?} -> kernel {expected:?}");
            }
            let got = match (&op, expected) {
                (Op::Rename(source, target), Err(libc::EXDEV)) => {
                    if !dir_renames {
                        continue;
                    }
                    // Deliberate difference: strata renames a lower directory. The kernel says
                    // EXDEV before it looks at the target; onto a non-empty directory strata
                    // (and mv's fallback) must fail with ENOTEMPTY.
                    let got = apply(&fuse_mnt, &op);
                    let target_full = std::fs::read_dir(kernel_mnt.join(target))
                        .is_ok_and(|mut d| d.next().is_some());
                    if target_full {
                        assert_eq!(
                            got,
                            Err(libc::ENOTEMPTY),
                            "step {step}: rename {source:?} onto non-empty {target:?}"
                        );
                        continue;
                    }
                    pause_on_mismatch(got == Ok(()), &fuse_mnt);
                    assert_eq!(
                        got,
                        Ok(()),
                        "step {step}: strata must rename {source:?} -> {target:?}"
                    );
                    copy_then_remove(&kernel_mnt, source, target)
                        .expect("mv fallback on the kernel side");
                    renamed += 1;
                    assert!(!fuse_mnt.join(source).exists() && fuse_mnt.join(target).is_dir());
                    Ok(())
                }
                (_, expected) => {
                    let got = apply(&fuse_mnt, &op);
                    pause_on_mismatch(got == expected, &fuse_mnt);
                    assert_eq!(got, expected, "step {step} (seed {seed}): {op:?}");
                    got
                }
            };
            let _ = got;
            if step % 250 == 249 || std::env::var_os("STRATA_DIFF_TRACE").is_some() {
                assert_same(
                    &format!("merged views after step {step} (seed {seed})"),
                    &snapshot(&kernel_mnt, false),
                    &snapshot(&fuse_mnt, false),
                );
            }
        }
        if let Some(secs) = std::env::var("STRATA_DIFF_PAUSE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            eprintln!(
                "pausing {secs} s: fuse at {}, kernel at {}",
                fuse_mnt.display(),
                kernel_mnt.display()
            );
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
        assert_same(
            &format!("merged views at the end (seed {seed})"),
            &snapshot(&kernel_mnt, false),
            &snapshot(&fuse_mnt, false),
        );
        assert_eq!(
            link_groups(&kernel_mnt),
            link_groups(&fuse_mnt),
            "hard link groups (seed {seed})"
        );
        renamed
    });
    (fixture, fuse, kernel, renamed)
}

/// Runs `ops` random operations from `seed` on both drivers and compares their uppers.
fn uppers_match(seed: u64, ops: usize) {
    let (fixture, mut fuse, mut kernel, _) = differential(seed, ops, false);
    fuse.unmount();
    kernel.unmount();
    let mut kernel_upper = snapshot(&kernel.upper, true);
    let fuse_upper = snapshot(&fuse.upper, true);
    // ovl_rename marks a directory found only in upper opaque before it tries to move it
    // into a merged parent, and leaves the mark when rename(2) then fails (ENOTEMPTY);
    // strata marks it once the rename succeeded. Where no lower has a directory, the mark
    // hides nothing, so only there the two may differ.
    for (rel, desc) in kernel_upper.iter_mut() {
        let no_lower_dir = !fixture
            .lowers
            .iter()
            .any(|lower| std::fs::symlink_metadata(lower.join(rel)).is_ok_and(|m| m.is_dir()));
        if let Some(other) = fuse_upper.get(rel)
            && desc.kind == 'd'
            && other.kind == 'd'
            && no_lower_dir
        {
            desc.opaque = other.opaque;
        }
    }
    assert_same(
        &format!("upper dirs (seed {seed}, {ops} operations)"),
        &kernel_upper,
        &fuse_upper,
    );
}

#[test]
fn differential_random_ops_match_overlayfs() {
    uppers_match(diff_seed(), diff_ops());
}

/// Many short sequences: a long one rewrites most of what came from the lowers before
/// the uppers are compared, so a difference in how a lower entry is first changed (a
/// needless copy-up, a missing opaque mark) shows in about a third of 80-step runs and
/// rarely in one of 2,000 steps.
#[test]
fn differential_short_sequences_match_overlayfs() {
    for seed in diff_seed()..diff_seed() + 40 {
        uppers_match(seed, 80);
    }
}

#[test]
fn differential_with_directory_renames() {
    let seed = diff_seed() + 1;
    let (_fixture, _fuse, _kernel, renamed) = differential(seed, diff_ops() / 2, true);
    assert!(
        renamed > 0,
        "the sequence renamed no lower directory; change the seed"
    );
}

/// A container's upper made under one driver mounts with the other and shows the same
/// tree; the overlay-made one with the numbers overlayfs gave its entries (copy-up origins
/// included).
#[test]
fn container_moves_between_drivers() {
    let seed = diff_seed() + 2;
    let (fixture, mut fuse, mut kernel, _) = differential(seed, 400, false);
    let fuse_view = snapshot(&fuse.mnt, false);
    let kernel_view = snapshot(&kernel.mnt, false);
    let kernel_inos = inode_numbers(&kernel.mnt, false);
    fuse.unmount();
    kernel.unmount();
    // Swap: the FUSE-made upper under kernel overlayfs, the kernel-made one under FUSE.
    let remount = |m: &common::Mounted, driver| {
        let base = m.upper.parent().unwrap().to_path_buf();
        let mnt: PathBuf = base.join("mnt");
        fixture.mount_at(&m.upper, &m.work, &mnt, driver)
    };
    let fuse_under_kernel = remount(&fuse, Driver::Overlay);
    let kernel_under_fuse = remount(&kernel, Driver::Fuse);
    assert_same(
        "fuse-made upper under overlayfs",
        &fuse_view,
        &snapshot(&fuse_under_kernel.mnt, false),
    );
    assert_same(
        "overlay-made upper under fuse",
        &kernel_view,
        &snapshot(&kernel_under_fuse.mnt, false),
    );
    assert_eq!(
        kernel_inos,
        inode_numbers(&kernel_under_fuse.mnt, true),
        "overlay-made upper under fuse: inode numbers"
    );
}

/// A guard never leaves its mount behind: unmounting a mount in use reports EBUSY (as
/// umount(8) does), then the guard detaches it lazily. Files open on it keep working (FUSE:
/// the server serves them) until closed, and then the FUSE server ends.
#[test]
fn a_busy_mount_is_reported_then_detached_by_its_guard() {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    for driver in [Driver::Fuse, Driver::Overlay] {
        let fixture = Fixture::new();
        let mut mounted = fixture.mount("busy", driver);
        let mnt = mounted.mnt.clone();
        let device = std::fs::metadata(&mnt).unwrap().dev();
        let mut open = std::fs::File::open(mounted.path("srv/keep")).unwrap();
        let guard = mounted.guard.take().unwrap();
        let err = deadline(60, "unmounting a busy mount", move || guard.unmount())
            .expect_err("a mount with an open file cannot be unmounted");
        assert!(err.to_string().contains("busy"), "{driver}: {err}");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(&format!(" {} ", mnt.display())),
            "{driver}: the busy mount was left at {}",
            mnt.display()
        );
        let mut text = String::new();
        open.read_to_string(&mut text).unwrap();
        assert_eq!(text, "keep\n", "{driver}: the open file after the detach");
        drop(open);
        if driver == Driver::Fuse {
            // FUSE connections are named by the mount's device minor.
            let connection = format!("/sys/fs/fuse/connections/{}", rustix::fs::minor(device));
            common::wait_until("the FUSE server ends once its last file is closed", || {
                !std::path::Path::new(&connection).exists()
            });
        }
    }
}

/// The tests that need FUSE over io_uring's ring threads (a queue per CPU): they check
/// how those threads share a CPU and keep their callers on it, which /dev/fuse's threads
/// do not do.
const RING_ONLY: [&str; 3] = [
    "a_big_copy_up_does_not_hold_up_requests_from_the_same_cpu",
    "ring_threads_under_sched_idle_keep_the_caller_and_are_not_starved",
    "by_default_a_caller_that_moves_is_kept_on_its_cpu",
];

/// Every other test of this suite again, with requests read from /dev/fuse
/// (`STRATA_FUSE_URING=0`), in a child run of this test binary. The fuse module leaves FUSE
/// over io_uring off unless `enable_uring` is set, and kernels before 6.14 lack it, so that
/// is how most machines serve strata: several threads reading one device, where requests
/// race otherwise than through per-CPU rings (the EIO fixed in 9cfd6c8 showed only there).
/// One test at a time in the child, beside this binary's own but for those that time the
/// scheduler (`common::alone`); every mount it makes asserts that it is not on a ring.
#[test]
fn every_test_passes_over_dev_fuse_too() {
    use std::os::unix::process::CommandExt;
    let _alone = common::alone();
    let exe = std::env::current_exe().expect("this test binary's path");
    let mut child = std::process::Command::new(&exe);
    child.env("STRATA_FUSE_URING", "0").args([
        "--test-threads",
        "1",
        "--skip",
        "every_test_passes_over_dev_fuse_too",
    ]);
    for name in RING_ONLY {
        child.args(["--skip", name]);
    }
    // (its output in files: a pipe it filled would stop it; its fixtures in a dir of its own)
    let logs = tempfile::tempdir_in("/var/tmp").unwrap();
    let fixtures = logs.path().join("fixtures");
    child.env("STRATA_UNIONFS_TEST_DIR", &fixtures);
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    // (a group of its own: a timeout ends it and the servers its standalone tests started)
    let mut run = child
        .process_group(0)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run this test binary again");
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > limit {
            let group = nix::unistd::Pid::from_raw(-(run.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = run.wait();
            // its FUSE mounts, served by the process killed
            let _ = strata_unionfs::detach_all_below(&fixtures);
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let passed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok());
    assert!(
        status.is_some_and(|s| s.success()) && passed.is_some_and(|n| n > 20),
        "the suite over /dev/fuse ({} {}): {}\n{stdout}\n{}",
        exe.display(),
        status.map_or("killed after 1800 s".into(), |s| s.to_string()),
        passed.map_or("no result line".into(), |n| format!("{n} passed")),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
}
