//! The branches of one union: the writable upper (index 0), the read-only lowers (top
//! first, index 1..) and the work dir, each held open as a directory fd so every request
//! resolves names relative to its branch. Also the on-disk overlay form both drivers share:
//! a whiteout is a char device 0/0, an opaque directory carries `trusted.overlay.opaque=y`.
//! Branches may also hold the AUFS form (`.wh.NAME`, `.wh..wh..opq`), which the FUSE server
//! reads, in every branch, when the mount says so (`MountSpec::aufs_markers`) but never
//! writes: containers/storage unpacks layers that way when a mount program (fuse-overlayfs,
//! or strata-unionfs) serves them, as docker's aufs driver did, and fuse-overlayfs writes
//! its whiteouts that way where it cannot make device nodes.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Index of the upper branch in [`Layers`].
pub(crate) const UPPER: usize = 0;
/// The xattr kernel overlayfs uses for opaque directories (Documentation/filesystems/overlayfs.rst).
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlayfs since Linux 6.7 (overlayfs.rst, "whiteouts and opaque directories"): a lower
/// branch may hold a whiteout as a zero-size file with this xattr, in a directory whose
/// opaque xattr is "x" (it may hold such whiteouts, and is not opaque). That is what the
/// kernel writes when its upper branch is itself on overlayfs, and what composefs uses.
const WHITEOUT_XATTR: &str = "trusted.overlay.whiteout";
/// Private overlay xattrs, hidden from users of the mount...
pub(crate) const PRIVATE_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// ...except the escaped ones: a client's `trusted.overlay.X` is stored as
/// `trusted.overlay.overlay.X` (see [`stored_xattr`]).
const ESCAPED_XATTR_PREFIX: &[u8] = b"trusted.overlay.overlay.";
/// AUFS markers: `.wh.NAME` hides NAME in the branches below (a directory NAME beside it,
/// in the same branch, is opaque), `.wh..wh..opq` makes its directory opaque, other
/// `.wh..wh.*` names are aufs's own. None of them is shown.
const AUFS_PREFIX: &[u8] = b".wh.";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const AUFS_OPAQUE: &str = ".wh..wh..opq";
/// Our scratch directory inside the work dir (kernel overlayfs owns `work/work` and `work/index`).
const WORK_SUBDIR: &str = "strata";

/// Per-request results: an errno the FUSE layer replies with.
pub type Res<T> = std::result::Result<T, Errno>;

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    pub(crate) fn from_file_type(file_type: FileType) -> Option<Kind> {
        Some(match file_type {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Unknown => return None,
        })
    }

    pub(crate) fn file_type(self) -> FileType {
        match self {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
            Kind::Symlink => FileType::Symlink,
            Kind::Fifo => FileType::Fifo,
            Kind::Socket => FileType::Socket,
            Kind::CharDevice => FileType::CharacterDevice,
            Kind::BlockDevice => FileType::BlockDevice,
        }
    }
}

/// The metadata of one real file in one branch.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
    }
}

impl Meta {
    /// Attributes for a reply the kernel reads no attributes from (a negative entry, "."
    /// and ".." in a readdirplus listing): a directory owned by root, at the epoch.
    pub const PLACEHOLDER: Meta = Meta {
        dev: 0,
        ino: 0,
        mode: 0o40755,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        blocks: 0,
        blksize: 4096,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
    };

    #[allow(clippy::unnecessary_cast)]
    pub(crate) fn from_stat(st: &rustix::fs::Stat) -> Meta {
        Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u64,
            size: st.st_size.max(0) as u64,
            blocks: st.st_blocks.max(0) as u64,
            blksize: st.st_blksize as u32,
            atime: time(st.st_atime as i64, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime as i64, st.st_ctime_nsec as i64),
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_file_type(FileType::from_raw_mode(self.mode)).unwrap_or(Kind::File)
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == Kind::Dir
    }

    /// A whiteout: char device 0/0 (overlayfs.rst "whiteouts and opaque directories").
    pub fn is_whiteout(&self) -> bool {
        self.kind() == Kind::CharDevice && self.rdev == 0
    }

    pub(crate) fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// `rel` as a path argument: the branch root itself is ".".
pub(crate) fn arg(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Opens `rel` below `dir`, a lower branch's directory, with `flags` (for reading) and
/// O_NOATIME where this server may (see [`Layers::open_to_read`]).
pub(crate) fn open_lower_at<P>(dir: BorrowedFd<'_>, rel: P, flags: OFlags) -> Res<OwnedFd>
where
    P: rustix::path::Arg + Copy,
{
    match rustix::fs::openat(dir, rel, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dir, rel, flags, Mode::empty()),
        opened => opened,
    }
}

/// The open branches of one union.
pub(crate) struct Layers {
    fds: Vec<OwnedFd>,
    roots: Vec<PathBuf>,
    work: OwnedFd,
    /// The work dir as a path, through its descriptor (see `open`).
    work_path: PathBuf,
    tmp_counter: AtomicU64,
    /// The whiteout that new ones are hard links of (see [`Layers::whiteout`]): the number
    /// in its name in the work dir, 0 before the first; the lock is held to make another.
    shared_whiteout: AtomicU64,
    new_shared_whiteout: Mutex<()>,
    /// Branches may hold AUFS markers (see the module doc): read them, and refuse to make
    /// an entry whose name is one.
    pub(crate) aufs: bool,
    /// The upper held something when the union opened it, so it may hold markers. An empty
    /// one never does (markers are never made through the union): its lookups skip them.
    aufs_upper: bool,
    /// Each branch's file system: its device and its uuid (None where the kernel does not
    /// say, FS_IOC_GETFSUUID), for copy-up origins (`origin.rs`).
    fs: Vec<(u64, Option<[u8; 16]>)>,
    /// Mounted `volatile` (see `Flags::volatile`): nothing is synced.
    pub(crate) volatile: bool,
}

fn is_empty_dir(fd: &OwnedFd, path: &Path) -> Result<bool> {
    let read = |fd: &OwnedFd| -> rustix::io::Result<bool> {
        let mut dir = rustix::fs::Dir::read_from(fd)?;
        while let Some(entry) = dir.read() {
            if !matches!(entry?.file_name().to_bytes(), b"." | b"..") {
                return Ok(false);
            }
        }
        Ok(true)
    };
    read(fd).map_err(|e| Error::io("read directory", path, e))
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open directory", path, e))
}

/// The one-byte value of a directory's opaque xattr, as `read` (a getxattr) gives it: "y"
/// for opaque, "x" for one that may hold whiteouts in xattr form and is not opaque.
fn opaque_mark(read: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>) -> Option<u8> {
    let mut buf = [0u8; 4];
    match read(&mut buf) {
        Ok(1) => Some(buf[0]),
        _ => None,
    }
}

/// Copies are renamed from the work dir into upper: the two must be one mount, as
/// overlayfs demands too (two bind mounts of one file system answer EXDEV to rename).
pub(crate) fn check_same_mount(upper: &Path, work: &Path) -> Result<()> {
    let mount_of = |path: &Path| {
        rustix::fs::statx(
            rustix::fs::CWD,
            path,
            AtFlags::empty(),
            rustix::fs::StatxFlags::MNT_ID,
        )
        .map(|st| st.stx_mnt_id)
        .map_err(|e| Error::io("stat", path, e))
    };
    if mount_of(upper)? != mount_of(work)? {
        return Err(Error::Spec(format!(
            "upperdir {} and workdir {} must be on the same mount",
            upper.display(),
            work.display()
        )));
    }
    Ok(())
}

impl Layers {
    pub(crate) fn open(
        upper: &Path,
        lowers: &[PathBuf],
        work: &Path,
        aufs: bool,
    ) -> Result<Layers> {
        let mut fds = Vec::with_capacity(lowers.len() + 1);
        let mut roots = Vec::with_capacity(lowers.len() + 1);
        for path in std::iter::once(upper).chain(lowers.iter().map(PathBuf::as_path)) {
            fds.push(open_dir(path)?);
            roots.push(path.to_path_buf());
        }
        let work_path = work.join(WORK_SUBDIR);
        // Leftovers of a crash are only ever half-made copies: start from an empty dir.
        if work_path.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&work_path)
                .map_err(|e| Error::io("clean work dir", &work_path, e))?;
        }
        // This server's alone (as the kernel's work/work is): a copy is made there by name,
        // and anyone else who could swap it would choose what lands in the upper dir, with
        // the owner and set-id bits of the file copied up. Made afresh, and refused if
        // something else took the name meanwhile.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work)
            .map_err(|e| Error::io("create work dir", work, e))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work_path)
            .map_err(|e| Error::io("create work dir", &work_path, e))?;
        let work = rustix::fs::open(
            &work_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open directory", &work_path, e))?;
        // A directory another user put there between the two steps is not ours.
        let made =
            rustix::fs::fstat(&work).map_err(|e| Error::io("open directory", &work_path, e))?;
        if made.st_uid != rustix::process::geteuid().as_raw() {
            return Err(Error::io(
                "create work dir",
                &work_path,
                std::io::Error::other("made by another user meanwhile"),
            ));
        }
        // (whatever the umask)
        rustix::fs::fchmod(&work, Mode::from_raw_mode(0o700))
            .map_err(|e| Error::io("create work dir", &work_path, e))?;

        // What is done there by path (xattrs, ACLs, removal) goes through the directory
        // opened here, whatever is renamed or linked at its name later.
        let work_path = PathBuf::from(format!("/proc/self/fd/{}", work.as_raw_fd()));
        let aufs_upper = aufs && !is_empty_dir(&fds[UPPER], upper)?;
        let fs = fds
            .iter()
            .map(|fd| {
                let dev = rustix::fs::fstat(fd).map_or(0, |st| st.st_dev);
                (dev, crate::sys::fs_uuid(fd.as_fd()))
            })
            .collect();
        Ok(Layers {
            fs,
            fds,
            roots,
            work,
            work_path,
            tmp_counter: AtomicU64::new(0),
            shared_whiteout: AtomicU64::new(0),
            new_shared_whiteout: Mutex::new(()),
            aufs,
            aufs_upper,
            volatile: false,
        })
    }

    /// Branch `layer`'s file system: (device, uuid).
    pub(crate) fn fs(&self, layer: usize) -> (u64, Option<[u8; 16]>) {
        self.fs[layer]
    }

    pub(crate) fn count(&self) -> usize {
        self.fds.len()
    }

    pub(crate) fn fd(&self, layer: usize) -> BorrowedFd<'_> {
        self.fds[layer].as_fd()
    }

    /// Opens `rel` in `layer` with `flags` (for reading); in a lower branch without
    /// touching its atime: kernel overlayfs reads its lower layers through noatime mounts,
    /// and an image's layers are no one's to change. (O_NOATIME is refused on a file this
    /// server does not own without CAP_FOWNER: then opened as usual.)
    pub(crate) fn open_to_read(&self, layer: usize, rel: &Path, flags: OFlags) -> Res<OwnedFd> {
        if layer == UPPER {
            return rustix::fs::openat(self.fd(layer), arg(rel), flags, Mode::empty());
        }
        open_lower_at(self.fd(layer), arg(rel), flags)
    }

    pub(crate) fn work(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// Absolute path of `rel` in `layer` (xattr calls have no *at form).
    pub(crate) fn abs(&self, layer: usize, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.roots[layer].clone()
        } else {
            self.roots[layer].join(rel)
        }
    }

    pub(crate) fn work_abs(&self, name: &Path) -> PathBuf {
        self.work_path.join(name)
    }

    /// A fresh name in the work dir, for building an entry before renaming it into place.
    pub(crate) fn tmp_name(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        PathBuf::from(format!("tmp-{}-{n}", std::process::id()))
    }

    /// An entry's metadata; a whiteout in xattr form comes as one of the 0/0 form.
    pub(crate) fn stat(&self, layer: usize, rel: &Path) -> Res<Meta> {
        let mut meta = rustix::fs::statat(self.fd(layer), arg(rel), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| Meta::from_stat(&st))?;
        if layer != UPPER
            && meta.size == 0
            && meta.kind() == Kind::File
            && self.is_xattr_whiteout(layer, rel)
        {
            meta.mode = libc::S_IFCHR;
            meta.rdev = 0;
        }
        Ok(meta)
    }

    /// Whether the zero-size file `rel` of a lower branch is a whiteout in xattr form.
    fn is_xattr_whiteout(&self, layer: usize, rel: &Path) -> bool {
        let path = self.abs(layer, rel);
        let mut buf = [0u8; 4];
        rustix::fs::lgetxattr(&path, WHITEOUT_XATTR, &mut buf[..0]).is_ok()
            && path
                .parent()
                .is_some_and(|dir| self.may_hold_xattr_whiteouts_at(dir))
    }

    /// Whether the directory at `path` (absolute) may hold whiteouts in xattr form.
    fn may_hold_xattr_whiteouts_at(&self, path: &Path) -> bool {
        opaque_mark(|buf| rustix::fs::lgetxattr(path, OPAQUE_XATTR, buf)) == Some(b'x')
    }

    /// Whether directory `dir` of `layer` may hold whiteouts in xattr form, whose listing
    /// then needs a look at each zero-size file.
    pub(crate) fn may_hold_xattr_whiteouts(&self, layer: usize, dir: BorrowedFd<'_>) -> bool {
        layer != UPPER
            && opaque_mark(|buf| rustix::fs::fgetxattr(dir, OPAQUE_XATTR, buf)) == Some(b'x')
    }

    pub(crate) fn is_opaque(&self, layer: usize, rel: &Path) -> bool {
        let path = self.abs(layer, rel);
        opaque_mark(|buf| rustix::fs::lgetxattr(&path, OPAQUE_XATTR, buf)) == Some(b'y')
            || (self.markers_in(layer) && self.stat(layer, &rel.join(AUFS_OPAQUE)).is_ok())
    }

    /// Whether `layer` may hold AUFS markers.
    pub(crate) fn markers_in(&self, layer: usize) -> bool {
        self.aufs && (layer != UPPER || self.aufs_upper)
    }

    /// Whether `layer` holds an AUFS `.wh.` file for `rel`.
    pub(crate) fn aufs_whiteout(&self, layer: usize, rel: &Path) -> bool {
        let Some(name) = rel.file_name().filter(|_| self.markers_in(layer)) else {
            return false;
        };
        let mut marker = OsString::from(OsStr::from_bytes(AUFS_PREFIX));
        marker.push(name);
        self.stat(layer, &rel.with_file_name(marker)).is_ok()
    }

    /// Whether `rel` names an AUFS marker rather than an entry.
    pub(crate) fn is_aufs_marker(&self, rel: &Path) -> bool {
        self.aufs
            && rel
                .file_name()
                .is_some_and(|n| aufs_marker(n.as_bytes()).is_some())
    }

    pub(crate) fn set_opaque_at(&self, path: &Path) -> Res<()> {
        rustix::fs::lsetxattr(path, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
    }

    /// Makes a whiteout at `name` below `dir`: a hard link of one whiteout kept in the work
    /// dir, as kernel overlayfs has made them since 5.8 (`ovl_whiteout`), so removing a
    /// lower file allocates no inode. On ext4 without a journal each new inode is a search
    /// past those freed in the last minute (`recently_deleted`): 65 us a whiteout made
    /// afresh here, 19 linked. Whiteouts are told by their type alone, so a linked one
    /// reads as any other, to both drivers and to the layer writer (which makes no hard
    /// link of a whiteout). A whiteout is made afresh where a link cannot be.
    pub(crate) fn whiteout(&self, dir: BorrowedFd<'_>, name: &Path) -> Res<()> {
        let mut shared = self.shared_whiteout.load(Ordering::Acquire);
        for _ in 0..2 {
            if shared != 0 {
                match rustix::fs::linkat(
                    self.work(),
                    shared_whiteout_name(shared),
                    dir,
                    name,
                    AtFlags::empty(),
                ) {
                    Ok(()) => return Ok(()),
                    Err(Errno::EXIST) => return Err(Errno::EXIST),
                    // The shared one has as many links as its file system allows.
                    Err(Errno::MLINK) => {}
                    Err(_) => break,
                }
            }
            match self.next_shared_whiteout(shared) {
                Ok(next) => shared = next,
                Err(_) => break,
            }
        }
        self.make_whiteout(dir, name)
    }

    /// Makes a new shared whiteout unless another request already replaced `seen`; returns
    /// the number of the current one. Those it replaces stay until the work dir is emptied
    /// at the next mount, so a request that read the old number still links it.
    fn next_shared_whiteout(&self, seen: u64) -> Res<u64> {
        let _one = self
            .new_shared_whiteout
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.shared_whiteout.load(Ordering::Acquire);
        if current != seen {
            return Ok(current);
        }
        let next = seen + 1;
        self.make_whiteout(self.work(), Path::new(&shared_whiteout_name(next)))?;
        self.shared_whiteout.store(next, Ordering::Release);
        Ok(next)
    }

    /// Makes a whiteout inode at `name` below `dir`, in the server's group as the kernel's
    /// are in the mounter's: a set-group-ID `dir` would otherwise give it its own group.
    fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &Path) -> Res<()> {
        rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)?;
        let gid = rustix::process::getegid();
        if rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_gid != gid.as_raw() {
            rustix::fs::chownat(dir, name, None, Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    /// Removes a tree inside the work dir (a replaced directory full of whiteouts).
    pub(crate) fn remove_work_tree(&self, name: &Path) {
        let path = self.work_abs(name);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
}

/// The name in the work dir of shared whiteout number `n` (see [`Layers::whiteout`]).
fn shared_whiteout_name(n: u64) -> String {
    format!("whiteout-{n}")
}

/// What a name in a directory listing is: None for an entry, Some for an AUFS marker,
/// with the name it hides, if any.
pub(crate) fn aufs_marker(name: &[u8]) -> Option<Option<&OsStr>> {
    if !name.starts_with(AUFS_PREFIX) {
        return None;
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Some(None);
    }
    Some(Some(OsStr::from_bytes(&name[AUFS_PREFIX.len()..])))
}

/// Whether stored xattr `name` is the union's own (an opaque mark): hidden, never copied.
pub(crate) fn is_private_xattr(name: &OsStr) -> bool {
    shown_xattr(name).is_none()
}

/// The name a client's xattr is stored under in the branches. `trusted.overlay.*` belongs
/// to the union, so a client's `trusted.overlay.X` gets one more `overlay.`, as overlayfs
/// escapes it since Linux 6.7. A tool that copies a tree with its xattrs (`cp -a`,
/// `rsync -X`, `tar --xattrs`) can then copy an overlay's branch (container storage)
/// through the mount, opaque marks included, without marking anything of the union's.
pub(crate) fn stored_xattr(name: &OsStr) -> std::borrow::Cow<'_, OsStr> {
    match name.as_bytes().strip_prefix(PRIVATE_XATTR_PREFIX) {
        Some(rest) => {
            let mut stored = ESCAPED_XATTR_PREFIX.to_vec();
            stored.extend_from_slice(rest);
            std::borrow::Cow::Owned(OsString::from_vec(stored))
        }
        None => std::borrow::Cow::Borrowed(name),
    }
}

/// The name stored xattr `stored` has for clients; None for the union's own.
pub(crate) fn shown_xattr(stored: &OsStr) -> Option<std::borrow::Cow<'_, OsStr>> {
    let bytes = stored.as_bytes();
    if let Some(rest) = bytes.strip_prefix(ESCAPED_XATTR_PREFIX) {
        let mut shown = PRIVATE_XATTR_PREFIX.to_vec();
        shown.extend_from_slice(rest);
        return Some(std::borrow::Cow::Owned(OsString::from_vec(shown)));
    }
    (!bytes.starts_with(PRIVATE_XATTR_PREFIX)).then_some(std::borrow::Cow::Borrowed(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_are_links_of_one_until_it_is_full() {
        std::fs::create_dir_all("/var/tmp/strata-unionfs-tests").unwrap();
        let dir = tempfile::tempdir_in("/var/tmp/strata-unionfs-tests").unwrap();
        let p = |s: &str| dir.path().join(s);
        for d in ["upper", "work", "lower", "fill"] {
            std::fs::create_dir(p(d)).unwrap();
        }
        let layers = Layers::open(&p("upper"), &[p("lower")], &p("work"), false).unwrap();
        let upper = layers.fd(UPPER);
        let made = |name: &str| {
            layers.whiteout(upper, Path::new(name)).unwrap();
            let stat = rustix::fs::lstat(p("upper").join(name)).unwrap();
            let meta = Meta::from_stat(&stat);
            assert!(meta.is_whiteout());
            (meta.ino, meta.nlink)
        };
        let (first, _) = made("a");
        let (second, nlink) = made("b");
        assert_eq!(second, first, "one inode");
        assert_eq!(nlink, 3, "two whiteouts and the shared one in the work dir");
        assert_eq!(layers.whiteout(upper, Path::new("a")), Err(Errno::EXIST));

        // Filled to its file system's link limit (ext4: 65,000), the next whiteout is a
        // link of a new one.
        let shared = p("work").join(WORK_SUBDIR).join(shared_whiteout_name(1));
        let full =
            (0..70_000).any(
                |i| match rustix::fs::link(&shared, p("fill").join(i.to_string())) {
                    Ok(()) => false,
                    Err(Errno::MLINK) => true,
                    Err(e) => panic!("link {}: {e}", shared.display()),
                },
            );
        assert!(
            full,
            "{} allows more than 70,000 links to a file: this test needs ext4 there",
            dir.path().display()
        );
        let (third, _) = made("c");
        assert_ne!(third, first);
        assert_eq!(made("d").0, third);

        // Where no link can be made, a whiteout is made afresh.
        std::fs::remove_file(p("work").join(WORK_SUBDIR).join(shared_whiteout_name(2))).unwrap();
        let (alone, nlink) = made("e");
        assert_ne!(alone, third);
        assert_eq!(nlink, 1);
    }
}
