//! What processes leave in `tmp/`, and taking it away again.
//!
//! Staged entries are named `<kind>-<pid>_<pidns>-<n>-<nanos>` ([`Store::tmp_path`]): the
//! pid of the process that staged them and its pid namespace (the inode of
//! /proc/self/ns/pid). A process a signal ends removes its own files
//! ([`remove_files_of`], called by the binary's signal thread); one killed outright
//! (`kill -9`, a crash, a power cut) cannot, so every open of the store sweeps the regular
//! files whose process is gone ([`Store::sweep_tmp`]), as `gc` sweeps all of `tmp/` under
//! the exclusive lock. Safe beside other strata processes sharing the store:
//!
//! - a file is left alone while its pid names a live process: ours, another strata's, or
//!   a stranger that reused the pid (that file then waits for a later sweep or `gc`);
//! - a file staged in another pid namespace (a strata in a container sharing the store),
//!   or named without one, is left alone: its pid means nothing here;
//! - a file a writer holds an `flock` on is left alone whatever its pid says (a blob being
//!   downloaded is locked until it is renamed into place);
//! - directories (and anything else but regular files) are left to `gc`: they may be mount
//!   points or layers about to be renamed.
//!
//! Removing a file's name cannot break an atomic write: its rename into place either came
//! first (the name is gone already) or fails, and the destination keeps its old content.

use std::fs::{self, File, TryLockError};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::layout::Store;

/// This process's pid namespace: the inode number of /proc/self/ns/pid.
pub fn pid_namespace() -> Option<u64> {
    static NS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
    })
}

/// The pid in a staged entry's name, `<kind>-<pid>_<pidns>-<n>-<nanos>` (`kind` may hold
/// `-`), when it was staged in this pid namespace.
pub(crate) fn owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(4, '-');
    let nanos = parts.next()?;
    let n = parts.next()?;
    let (pid, ns) = parts.next()?.split_once('_')?;
    let _kind = parts.next().filter(|kind| !kind.is_empty())?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = nanos.len() >= 8 && nanos.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex && digits(n) && digits(pid) && digits(ns)) {
        return None;
    }
    if ns.parse::<u64>().ok() != pid_namespace() {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

/// Whether a process with this pid exists (in this pid namespace). A zombie counts.
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks without sending; EPERM: it exists, owned by someone else.
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Whether some process holds an flock on the file at `path`.
fn locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

/// Removes the regular files in `tmp_dir` that process `pid` staged; how many. For a process
/// about to end by a signal, on its own files: whatever it was writing is abandoned.
pub fn remove_files_of(tmp_dir: &Path, pid: u32) -> usize {
    remove_files(tmp_dir, |_, owner| owner == pid)
}

/// Removes the regular files in `tmp_dir` whose owner `doomed` condemns (given the path
/// and the owner's pid); how many. Errors (the entry already gone, say) skip the entry.
fn remove_files(tmp_dir: &Path, doomed: impl Fn(&Path, u32) -> bool) -> usize {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(owner) else {
            continue;
        };
        // Regular files only (file_type does not follow symlinks): opening a fifo to test
        // its lock would block, and directories are gc's.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        if doomed(&path, pid) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl Store {
    /// Removes the files in `tmp/` that processes now gone left there (partial downloads
    /// of a killed pull, say) and no one holds locked; how many. Runs when the store is
    /// opened; see the module doc for why it is safe beside other users.
    pub fn sweep_tmp(&self) -> usize {
        let removed = remove_files(&self.tmp_dir(), |path, pid| !alive(pid) && !locked(path));
        if removed > 0 {
            tracing::debug!(removed, "swept files left in tmp/ by processes now gone");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn ns() -> u64 {
        pid_namespace().expect("/proc/self/ns/pid")
    }

    #[test]
    fn owner_reads_the_pid_of_names_staged_in_this_pid_namespace_only() {
        let ns = ns();
        assert_eq!(owner(&format!("blob-26218_{ns}-4-136b7712")), Some(26218));
        assert_eq!(owner(&format!("gc-layer-77_{ns}-0-0000abcd")), Some(77));
        for name in [
            "blob".to_string(),
            "blob-1-2".to_string(),
            format!("-1_{ns}-2-0000abcd"),
            format!("x-y_{ns}-2-0000abcd"),
            format!("x-1_{ns}-2-xyz"),
            // staged in another pid namespace, or by a strata that did not say
            format!("blob-26218_{}-4-136b7712", ns + 1),
            "blob-26218-4-136b7712".to_string(),
        ] {
            assert_eq!(owner(&name), None, "{name}");
        }
    }

    /// Callers derive names from a staged one with `with_extension` (a build's `.etc` and
    /// `.rootfs` beside its upper): a staged name has no dot of its own.
    #[test]
    fn staged_names_have_no_extension() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (store.tmp_path("build-upper"), store.tmp_path("build-upper"));
        assert_eq!(a.extension(), None, "{}", a.display());
        assert_ne!(a.with_extension("etc"), b.with_extension("etc"));
        assert_eq!(
            owner(a.file_name().unwrap().to_str().unwrap()),
            Some(std::process::id())
        );
    }

    /// The pid of a process that has ended (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().expect("run true");
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn open_sweeps_files_of_dead_processes_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp = store.tmp_dir();
        let dead = dead_pid();
        let mut sleeper = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("run sleep");
        let live = sleeper.id();
        let ns = ns();
        let name = |kind: &str, pid: u32| tmp.join(format!("{kind}-{pid}_{ns}-0-0000abcd"));
        fs::write(name("blob", dead), b"partial").unwrap();
        fs::write(name("write", dead), b"partial").unwrap();
        fs::write(name("blob", live), b"in progress").unwrap();
        fs::write(name("blob", std::process::id()), b"ours").unwrap();
        fs::write(tmp.join("not-a-staged-name"), b"?").unwrap();
        // a dead pid of another pid namespace (a strata in a container): not ours to judge
        let elsewhere = format!("write-{dead}_{}-0-0000abcd", ns + 1);
        fs::write(tmp.join(&elsewhere), b"in progress").unwrap();
        fs::create_dir(name("build-upper", dead)).unwrap();
        // A dead pid but a held lock: left alone.
        let held_path = name("held", dead);
        let held = File::create(&held_path).unwrap();
        held.lock().unwrap();

        drop(Store::open(dir.path()).unwrap());
        let mut left: Vec<String> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = vec![
            format!("blob-{live}_{ns}-0-0000abcd"),
            format!("blob-{}_{ns}-0-0000abcd", std::process::id()),
            format!("build-upper-{dead}_{ns}-0-0000abcd"),
            format!("held-{dead}_{ns}-0-0000abcd"),
            elsewhere,
            "not-a-staged-name".to_string(),
        ];
        expected.sort();
        assert_eq!(left, expected);

        // Once the lock and the live process are gone, so are their files.
        drop(held);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_eq!(store.sweep_tmp(), 2);
        assert!(!name("blob", live).exists() && !held_path.exists());
        assert!(name("blob", std::process::id()).exists());
        assert_eq!(remove_files_of(&tmp, std::process::id()), 1);
    }
}
