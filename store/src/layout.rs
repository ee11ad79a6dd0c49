//! The `Store` handle: opening a root, the directory layout below it, and the one way
//! anything is written there (stage in `tmp/`, fsync, rename, fsync the directory).
//!
//! ```text
//! <root>/
//!   oci/                 OCI image layout v1.1 (image-spec `image-layout.md`):
//!     oci-layout         {"imageLayoutVersion":"1.0.0"}
//!     index.json         one manifest descriptor per image name, annotated with
//!                        org.opencontainers.image.ref.name = "name:tag"; an image stored
//!                        without a name has one entry without that annotation
//!     blobs/sha256/<hex> manifests, configs, layers; the file name is the content's sha256
//!   layers/<diffid-hex>/ one unpacked layer in overlay on-disk form, renamed into place whole
//!   containers/<id>/     state.json, upper/, work/, rootfs/
//!   cache/<key-hex>.json build cache entries
//!   tmp/                 staging for atomic writes, named <kind>-<pid>_<pidns>-<n>-<nanos>;
//!                        emptied by gc, and of the files of processes now gone at each open
//!                        (tmp.rs)
//!   lock                 flock: shared while a Store is open, exclusive for gc
//!   refs.lock            flock held while index.json or container names change
//! ```
//!
//! A crash at any instant leaves either the old or the new file: the rename is the commit
//! point, and the fsync of the directory makes it durable.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Digest;
use crate::error::{Error, Result};
use crate::lock::{FileLock, LockMode};

/// `oci-layout` file content (image-spec `image-layout.md#oci-layout-file`).
pub(crate) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const EMPTY_INDEX: &[u8] =
    br#"{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#;

/// An open store. Holds the shared store lock (exclusive for `open_exclusive`) until dropped.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    lock: Mutex<FileLock>,
}

impl Store {
    /// Opens the store at `root`, creating the layout if needed, and takes the shared lock.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_mode(root, LockMode::Shared)
    }

    /// Opens the store holding the lock exclusively (waits for every other user to finish).
    pub fn open_exclusive(root: &Path) -> Result<Store> {
        Store::open_mode(root, LockMode::Exclusive)
    }

    /// Like `open_exclusive`, but `Ok(None)` instead of waiting when others use the store.
    pub fn try_open_exclusive(root: &Path) -> Result<Option<Store>> {
        let root = Store::prepare_root(root)?;
        let Some(lock) = FileLock::try_acquire(&root.join("lock"), LockMode::Exclusive)? else {
            return Ok(None);
        };
        Store::finish_open(root, lock).map(Some)
    }

    fn open_mode(root: &Path, mode: LockMode) -> Result<Store> {
        let root = Store::prepare_root(root)?;
        let lock = FileLock::acquire(&root.join("lock"), mode)?;
        Store::finish_open(root, lock)
    }

    fn prepare_root(root: &Path) -> Result<PathBuf> {
        fs::create_dir_all(root).map_err(|e| Error::io("failed to create store root", root, e))?;
        root.canonicalize()
            .map_err(|e| Error::io("failed to resolve store root", root, e))
    }

    fn finish_open(root: PathBuf, lock: FileLock) -> Result<Store> {
        let store = Store {
            root,
            lock: Mutex::new(lock),
        };
        store.init_layout()?;
        store.sweep_tmp();
        Ok(store)
    }

    fn init_layout(&self) -> Result<()> {
        for dir in [
            self.blobs_dir(),
            self.layers_dir(),
            self.containers_dir(),
            self.cache_dir(),
            self.tmp_dir(),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| Error::io("failed to create directory", &dir, e))?;
        }
        let layout = self.oci_dir().join("oci-layout");
        if !layout.exists() {
            self.write_atomic(&layout, OCI_LAYOUT)?;
        }
        let index = self.index_path();
        if !index.exists() {
            // Under refs.lock: a second process must not overwrite an index the first has
            // already created and added to. Only a new store gets an empty one: blobs
            // without an index are a damaged store, and an empty index would make every
            // image garbage to gc (`fsck --repair` lists them again).
            let _guard = self.refs_lock()?;
            if !index.exists() && list_dir(&self.blobs_dir())?.is_empty() {
                self.write_atomic(&index, EMPTY_INDEX)?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The OCI image layout directory (`oci:<this>:name:tag` for skopeo).
    pub fn oci_dir(&self) -> PathBuf {
        self.root.join("oci")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("oci/blobs/sha256")
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("oci/index.json")
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Waits until this handle holds the store lock exclusively (for gc), or shared again.
    pub(crate) fn set_lock_mode(&self, mode: LockMode) -> Result<()> {
        let path = self.root.join("lock");
        let mut lock = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lock.convert(mode, &path)
    }

    /// Runs `f` under the exclusive lock (waiting for other users of the store), then
    /// goes back to a shared lock if that is what this handle held.
    pub(crate) fn exclusively<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let previous = self.lock_mode();
        self.set_lock_mode(LockMode::Exclusive)?;
        let out = f();
        if previous == LockMode::Shared {
            self.set_lock_mode(LockMode::Shared)?;
        }
        out
    }

    pub(crate) fn lock_mode(&self) -> LockMode {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .mode()
    }

    /// Takes `refs.lock` for a read-modify-write of index.json or container names.
    pub(crate) fn refs_lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.root.join("refs.lock"), LockMode::Exclusive)
    }

    /// A fresh, unused path in `tmp/` (not created). `kind` shows up in the name to make
    /// leftovers of a crash recognisable.
    pub fn tmp_path(&self, kind: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // the pid, and the pid namespace it means something in (tmp.rs)
        let pid = std::process::id();
        self.tmp_dir().join(match crate::tmp::pid_namespace() {
            Some(ns) => format!("{kind}-{pid}_{ns}-{n}-{nanos:08x}"),
            None => format!("{kind}-{pid}-{n}-{nanos:08x}"),
        })
    }

    /// Creates a fresh empty directory in `tmp/` (for unpacking or building a container).
    pub fn tmp_dir_create(&self, kind: &str) -> Result<PathBuf> {
        let path = self.tmp_path(kind);
        fs::create_dir(&path).map_err(|e| Error::io("failed to create directory", &path, e))?;
        Ok(path)
    }

    /// Writes `bytes` to `dest` atomically: tmp file, fsync, rename, fsync of the directory.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path("write");
        let result = (|| {
            let mut file =
                File::create_new(&tmp).map_err(|e| Error::io("failed to create", &tmp, e))?;
            file.write_all(bytes)
                .map_err(|e| Error::io("failed to write", &tmp, e))?;
            file.sync_all()
                .map_err(|e| Error::io("failed to fsync", &tmp, e))?;
            rename_durable(&tmp, dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Renames `from` to `to` and fsyncs `to`'s directory so the rename survives a crash.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("failed to rename into place", to, e))?;
    sync_parent(to)
}

/// Replaces `path`, a file outside the store (credentials, an OCI layout's files, an
/// archive), atomically: `fill` writes a new file beside it, created with `mode`, which is
/// fsynced and renamed over `path`, and the directory is fsynced. On error `path` is left
/// as it was. The new file has no name until it is complete (O_TMPFILE), so a process
/// killed meanwhile leaves nothing behind; where the file system has no O_TMPFILE it is a
/// hidden tmp file, removed on error.
pub(crate) fn replace_file(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // before anything is written (rename(2) would refuse it only at the end)
    if path.is_dir() {
        return Err(Error::io(
            "cannot write a file over",
            path,
            std::io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let unnamed = rustix::fs::open(
        dir,
        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(mode),
    );
    let (mut file, named) = match unnamed {
        Ok(fd) => (File::from(fd), false),
        Err(_) => {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                // (named by the file asked for: the tmp file's name means nothing to anyone)
                .map_err(|e| Error::io("failed to create", path, e))?;
            (file, true)
        }
    };
    let result = (|| {
        fill(&mut file)?;
        file.sync_all()
            .map_err(|e| Error::io("failed to fsync", path, e))?;
        if !named {
            // A name for a moment, for rename(2) to move over `path`: by the descriptor
            // itself (AT_EMPTY_PATH: root, or any user since Linux 6.10), else through /proc.
            let _ = fs::remove_file(&tmp);
            let by_fd = rustix::fs::linkat(
                &file,
                "",
                rustix::fs::CWD,
                &tmp,
                rustix::fs::AtFlags::EMPTY_PATH,
            );
            if by_fd.is_err() {
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    rustix::fs::CWD,
                    &tmp,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(|e| Error::io("failed to link", &tmp, e.into()))?;
            }
        }
        rename_durable(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs the directory holding `path` (`.` for a bare file name).
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        None => Path::new("/"),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io("failed to fsync directory", parent, e))
}

/// The entries of `dir`, in no particular order.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("failed to list", dir, e))?;
    entries
        .map(|entry| entry.map_err(|e| Error::io("failed to list", dir, e)))
        .collect()
}

/// The digest a directory entry's name spells in hex (blobs, unpacked layers), if any.
pub(crate) fn entry_digest(entry: &fs::DirEntry) -> Option<Digest> {
    entry
        .file_name()
        .to_str()
        .and_then(|name| Digest::from_hex(name).ok())
}

/// Size in bytes of a file or of everything below a directory (not following symlinks).
pub(crate) fn disk_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            total += disk_size(&entry.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_names_the_file_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.tar");
        fs::write(&path, b"old").unwrap();
        let names = || {
            let mut names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        // While it is written (when a kill would stop it) the directory shows only the old
        // file: nothing is left behind.
        replace_file(&path, 0o640, |file| {
            file.write_all(b"new").unwrap();
            assert_eq!(names(), ["out.tar"]);
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(names(), ["out.tar"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "{mode:o}");
        // a failed fill keeps the old file
        let failed = replace_file(&path, 0o640, |file| {
            file.write_all(b"partial").unwrap();
            Err(Error::Invalid {
                what: "test".into(),
                message: "stop".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(names(), ["out.tar"]);
    }

    #[test]
    fn open_creates_an_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layout = fs::read(store.oci_dir().join("oci-layout")).unwrap();
        assert_eq!(layout, OCI_LAYOUT);
        assert!(store.blobs_dir().is_dir());
        assert!(store.index_path().is_file());
        // opening again keeps everything and works alongside the first handle
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.root(), store.root());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let dest = store.root().join("cache/x.json");
        store.write_atomic(&dest, b"one").unwrap();
        store.write_atomic(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
