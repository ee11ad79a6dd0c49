//! Inter-process locks on the store, all `flock(2)` through `std::fs::File::lock*`.
//!
//! `<root>/lock` is held shared by every open `Store` for its whole life and exclusively
//! by `gc`, so gc never deletes a blob or tmp file another process is still writing.
//! `<root>/refs.lock` is taken exclusively for the few milliseconds of a read-modify-write
//! of `oci/index.json` or of a container name check, so concurrent tags never lose an entry.
//! flock locks die with the process, so `kill -9` never leaves the store locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, Result};

/// How the store lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A held flock; released when dropped (the descriptor closes).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    mode: LockMode,
}

impl FileLock {
    /// Opens (creating) `path` and locks it in `mode`, waiting for conflicting holders.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock> {
        let file = open_lock_file(path)?;
        let locked = match mode {
            LockMode::Shared => file.lock_shared(),
            LockMode::Exclusive => file.lock(),
        };
        locked.map_err(|e| Error::io("failed to lock", path, e))?;
        Ok(FileLock { file, mode })
    }

    /// Like `acquire`, but returns `Ok(None)` instead of waiting when someone else holds it.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        let locked = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match locked {
            Ok(()) => Ok(Some(FileLock { file, mode })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::io("failed to lock", path, e)),
        }
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// Converts the held lock to `mode` (flock converts in place; not atomic, so a
    /// conversion to exclusive may wait for other shared holders to finish).
    pub fn convert(&mut self, mode: LockMode, path: &Path) -> Result<()> {
        if self.mode == mode {
            return Ok(());
        }
        let locked = match mode {
            LockMode::Shared => self.file.lock_shared(),
            LockMode::Exclusive => self.file.lock(),
        };
        locked.map_err(|e| Error::io("failed to lock", path, e))?;
        self.mode = mode;
        Ok(())
    }
}

/// Opens (creating, never truncating) the file a lock is taken on.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("failed to open lock file", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclude_an_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = FileLock::acquire(&path, LockMode::Shared).unwrap();
        let b = FileLock::try_acquire(&path, LockMode::Shared).unwrap();
        assert!(b.is_some());
        assert!(
            FileLock::try_acquire(&path, LockMode::Exclusive)
                .unwrap()
                .is_none()
        );
        drop((a, b));
        assert!(
            FileLock::try_acquire(&path, LockMode::Exclusive)
                .unwrap()
                .is_some()
        );
    }
}
