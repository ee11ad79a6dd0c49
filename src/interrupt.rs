//! Temp files and staging directories that strata removes when a signal ends it (^C, `kill`,
//! a closed terminal). `tempfile` removes them when they are dropped, which a signal's
//! default action never reaches: without this, an interrupted `export -o` or `cp` to the host
//! left a `.strata-*` entry beside its destination.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The paths to remove if a signal comes now.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Keeps `path` on the list to remove until it is dropped.
pub struct Removed {
    path: PathBuf,
}

/// Removes `path` (a file, or a directory with all it holds) if SIGINT, SIGTERM or SIGHUP
/// ends strata before the returned guard is dropped; strata then ends as the signal would
/// have ended it.
pub fn remove_on_signal(path: &Path) -> Removed {
    handle_signals();
    pending().push(path.to_path_buf());
    Removed {
        path: path.to_path_buf(),
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        let mut pending = pending();
        if let Some(at) = pending.iter().position(|p| *p == self.path) {
            pending.remove(at);
        }
    }
}

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut signals = match signal_hook::iterator::Signals::new(wanted) {
            Ok(signals) => signals,
            Err(err) => {
                tracing::warn!("temp files will stay if a signal ends strata: {err}");
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                for path in pending().drain(..) {
                    let removed = match std::fs::symlink_metadata(&path) {
                        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                        Ok(_) => std::fs::remove_file(&path),
                        Err(_) => Ok(()),
                    };
                    if let Err(err) = removed {
                        eprintln!("strata: failed to remove {}: {err}", path.display());
                    }
                }
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
    });
}

/// Whether `signal` is ignored now.
fn ignored(signal: i32) -> bool {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten; a null new action
    // only reads the current one.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    read == 0 && current.sa_sigaction == libc::SIG_IGN
}
