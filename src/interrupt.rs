//! Temp files and staging directories that strata removes when a signal ends it (^C, `kill`,
//! a closed terminal). `tempfile` removes them when they are dropped, which a signal's
//! default action never reaches: without this, an interrupted `export -o` or `cp` to the host
//! left a `.strata-*` entry beside its destination, and an interrupted `pull` its partial
//! blobs in the store's `tmp/`.
//!
//! A thread takes the signals. It waits for a copy being moved into place to finish
//! ([`Removed::settle`]), removes what is still pending (again while the main thread, not yet
//! aware, adds to it), and ends strata as the signal would have. The main thread, once it
//! fails for lack of its files, waits for that end rather than exiting with a status of its
//! own ([`wait_if_interrupted`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The paths to remove if a signal comes now. Held while a copy is moved into place.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Union mounts of this process (served by its own threads) to detach if a signal comes:
/// they would stay as dead mounts (ENOTCONN) once it ends.
static MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Stores' `tmp/` directories whose files this process staged (partial downloads) are to
/// be removed if a signal comes.
static STAGING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A signal came: strata is about to end by it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Keeps a path on the list to remove until it is dropped or settled.
pub struct Removed {
    path: PathBuf,
}

/// Makes a temp file or directory with `make` (its path: `path`), to be removed, with all
/// it holds, if SIGINT, SIGTERM or SIGHUP ends strata before the returned guard is dropped;
/// strata then ends as the signal would have ended it. No signal can come between its
/// making and its listing.
pub fn removed_on_signal<T>(
    make: impl FnOnce() -> std::io::Result<T>,
    path: impl FnOnce(&T) -> &Path,
) -> std::io::Result<(T, Removed)> {
    handle_signals();
    let mut pending = pending();
    let made = make()?;
    let path = path(&made).to_path_buf();
    pending.push(path.clone());
    Ok((made, Removed { path }))
}

impl Removed {
    /// Runs `f`, which moves the path's content into place, with no removal under way or
    /// starting meanwhile; the path is then off the list. A signal during `f` ends strata
    /// once `f` is done.
    pub fn settle<T>(self, f: impl FnOnce() -> T) -> T {
        let mut pending = pending();
        let done = f();
        pending.retain(|p| *p != self.path);
        done
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        take_off(&mut pending(), &self.path);
    }
}

/// Takes `path` off a list (once: a path may be listed by two guards).
fn take_off(list: &mut Vec<PathBuf>, path: &Path) {
    if let Some(at) = list.iter().position(|p| p == path) {
        list.remove(at);
    }
}

/// Keeps a path on one of the lists ([`MOUNTS`], [`STAGING`]) until dropped.
pub struct Listed {
    list: &'static Mutex<Vec<PathBuf>>,
    path: PathBuf,
}

impl Listed {
    fn on(list: &'static Mutex<Vec<PathBuf>>, path: &Path) -> Listed {
        handle_signals();
        lock(list).push(path.to_path_buf());
        Listed {
            list,
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        take_off(&mut lock(self.list), &self.path);
    }
}

fn lock(list: &'static Mutex<Vec<PathBuf>>) -> MutexGuard<'static, Vec<PathBuf>> {
    list.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lists `tmp_dir`, a store's `tmp/`: if SIGINT, SIGTERM or SIGHUP ends strata before the
/// returned guard is dropped, the files this process staged there (a pull's partial blobs)
/// are removed, and strata ends as the signal would have. Files only: what it stages as
/// directories (mount points, layers being renamed into place) is not for this thread to
/// take away under the main one; `gc` does.
pub fn staged_files_removed_on_signal(tmp_dir: &Path) -> Listed {
    Listed::on(&STAGING, tmp_dir)
}

/// Lists `path`, where this process is about to mount a union it serves itself, to be
/// detached and removed if SIGINT, SIGTERM or SIGHUP ends strata before the returned guard
/// is dropped (after the union is unmounted).
pub fn unmounted_on_signal(path: &Path) -> Listed {
    Listed::on(&MOUNTS, path)
}

/// When a signal is ending strata, waits for that (its temp paths are being removed): the
/// error the main thread met meanwhile is a consequence, not news.
pub fn wait_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    lock(&PENDING)
}

/// From the first guard on, the signals go to a thread that removes what is pending and
/// then takes the signal's default action.
fn handle_signals() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // One ignored when strata started (a background job of a script ignores SIGINT)
        // stays ignored.
        let wanted = [SIGINT, SIGTERM, SIGHUP]
            .into_iter()
            .filter(|&s| !ignored(s));
        let spawned = signal_hook::iterator::Signals::new(wanted).and_then(|mut signals| {
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        end_by(signal);
                    }
                })
        });
        if let Err(err) = spawned {
            tracing::warn!("temp files will stay if a signal ends strata: {err}");
        }
    });
}

fn end_by(signal: i32) -> ! {
    INTERRUPTED.store(true, Ordering::SeqCst);
    for point in lock(&MOUNTS).drain(..) {
        // (not mounted yet, or already gone: nothing to detach)
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&point);
    }
    let mut pending = pending();
    for path in pending.iter() {
        if let Err(err) = remove(path) {
            eprintln!("strata: failed to remove {}: {err}", path.display());
        }
    }
    // The main thread may have checked a path inside just before it went, and then made
    // the directories down to it again (the tar crate's create_dir_all): by now it has met
    // the path's absence and stopped, so what it made meanwhile goes for good.
    std::thread::sleep(Duration::from_millis(50));
    for path in pending.drain(..) {
        if let Err(err) = remove(&path) {
            eprintln!("strata: failed to remove {}: {err}", path.display());
        }
    }
    // Held to the end, so no guard is dropped (and no directory forgotten) meanwhile. The
    // main thread may still be writing: a file it stages after this is the next open's to
    // sweep (its pid will be gone).
    let staging = lock(&STAGING);
    for dir in staging.iter() {
        strata_store::tmp::remove_files_of(dir, std::process::id());
    }
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal);
}

/// Removes a file or a tree that the main thread may still be adding to, until it is gone
/// (the main thread stops at its first entry whose directory is gone) or 2 s have passed.
fn remove(path: &Path) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let removed = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => Err(err),
        };
        match removed {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if Instant::now() >= until => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Whether `signal` is ignored now.
fn ignored(signal: i32) -> bool {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten; a null new action
    // only reads the current one.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    read == 0 && current.sa_sigaction == libc::SIG_IGN
}
