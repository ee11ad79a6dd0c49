//! Changes to the union: copy-up of nodes (parents first), creating entries (over a
//! whiteout through the work dir, directories then opaque), removing them (whiteouts when
//! a lower branch still has the name), hard links, setattr and xattr changes (rename is in
//! `rename`). All writes land in the upper branch only.

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT,
};
use rustix::io::Errno;

use crate::copyup::{copy_up_later, get_xattr, timespec};
use crate::inode::{Node, NodeState};
use crate::layer::{Kind, Res, UPPER, arg};
use crate::pending::{Later, Need};
use crate::union::{
    Caller, Entry, Found, OpenFile, Union, Unprivileged, drop_setid, drop_setid_at, without_setid,
};

/// A real file (device, inode).
pub(crate) type Key = (u64, u64);
/// Files a directory rename copied up: (lower file, its upper copy).
pub(crate) type Moved = Vec<(Key, Key)>;

/// A time to set: the given one or now.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// The changes of one setattr request.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// A caller that may not keep the file's set-ID bits (see [`drop_setid`]), for a
    /// truncate, a chown, or a request that changes nothing: the kernel's way of saying
    /// that a write it passes through, or a `chown(f, -1, -1)`, drops them. They go
    /// before anything else changes.
    pub drop_setid: Option<Unprivileged>,
    /// With `drop_setid`: only the file's owner may drop them; anyone else gets EPERM,
    /// and nothing is copied up (a `chown(f, -1, -1)`, which the kernel checks as a chmod).
    pub owner_only: bool,
}

fn ts(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(SetTime::At(t)) => timespec(t),
    }
}

/// What to create in `make`.
#[derive(Clone, Copy)]
enum New<'a> {
    Dir(u32),
    File(u32),
    Node(u32, u64),
    Symlink(&'a Path),
    Link(&'a Path),
    /// A link to an open upper file that has no name (an O_TMPFILE), and its node.
    LinkFd(BorrowedFd<'a>, u64),
}

impl New<'_> {
    /// Removes `name` in `dir`, the entry made for this, after a later step failed.
    fn unmake(&self, dir: BorrowedFd<'_>, name: impl rustix::path::Arg) {
        let flags = if matches!(self, New::Dir(_)) {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let _ = rustix::fs::unlinkat(dir, name, flags);
    }
}

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";
/// `Node::default_acl`: not looked at yet (0), none, one.
const ACL_NONE: u8 = 1;
const ACL_SOME: u8 = 2;

impl New<'_> {
    /// The same entry with the permission bits `umask` clears cleared.
    fn masked(self, umask: u32) -> Self {
        match self {
            New::Dir(mode) | New::File(mode) | New::Node(mode, _) => {
                self.with_mode(mode & 0o7777 & !(umask & 0o777))
            }
            other => other,
        }
    }

    /// The same entry with permission bits `mode`.
    fn with_mode(self, mode: u32) -> Self {
        match self {
            New::Dir(_) => New::Dir(mode),
            New::File(_) => New::File(mode),
            New::Node(old, rdev) => New::Node((old & !0o7777) | (mode & 0o7777), rdev),
            other => other,
        }
    }

    /// Below the default ACL `acl`: this entry's mode and its access ACL (None when the
    /// mode says it all).
    fn inherit(&self, acl: &[u8]) -> Option<(u32, Option<Vec<u8>>)> {
        let (New::Dir(mode) | New::File(mode) | New::Node(mode, _)) = *self else {
            return None;
        };
        inherit_acl(acl, mode & 0o7777)
    }
}

/// posix_acl_create's masking (fs/posix_acl.c `posix_acl_create_masq`) on a default ACL in
/// its xattr form (a version word, then (tag, perm, id) entries): the mode a new entry
/// made with `mode` gets, and its access ACL unless the mode alone says it all.
fn inherit_acl(acl: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    if acl.len() < 4 || !(acl.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut out = acl.to_vec();
    let perm_at = |out: &[u8], i: usize| u32::from(u16::from_le_bytes([out[i + 2], out[i + 3]]));
    let put = |out: &mut Vec<u8>, i: usize, perm: u32| {
        out[i + 2..i + 4].copy_from_slice(&((perm & 7) as u16).to_le_bytes());
    };
    let mut m = mode & 0o777;
    let mut not_equiv = false;
    let (mut group_obj, mut mask_obj) = (None, None);
    for i in (4..out.len()).step_by(8) {
        match u16::from_le_bytes([out[i], out[i + 1]]) {
            // ACL_USER_OBJ
            0x01 => {
                let perm = perm_at(&out, i) & (m >> 6);
                put(&mut out, i, perm);
                m &= (perm << 6) | !0o700;
            }
            // ACL_USER, ACL_GROUP
            0x02 | 0x08 => not_equiv = true,
            0x04 => group_obj = Some(i),
            0x10 => {
                mask_obj = Some(i);
                not_equiv = true;
            }
            // ACL_OTHER
            0x20 => {
                let perm = perm_at(&out, i) & m;
                put(&mut out, i, perm);
                m &= perm | !0o007;
            }
            _ => return None,
        }
    }
    let at = mask_obj.or(group_obj)?;
    let perm = perm_at(&out, at) & (m >> 3);
    put(&mut out, at, perm);
    m &= (perm << 3) | !0o070;
    Some(((mode & !0o777) | m, not_equiv.then_some(out)))
}

fn set_xattr(path: &Path, name: &OsStr, value: &[u8]) -> Res<()> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
}

impl Union {
    /// Makes a live node's entry exist in the upper branch, parents first; returns its path.
    pub(crate) fn copy_up_node(&self, node: &Arc<Node>) -> Res<PathBuf> {
        self.copy_up_node_for(node, Later::No)
    }

    /// [`Union::copy_up_node`], leaving what `later` allows to a job (`pending.rs`): only
    /// for a caller that gives the copy no other name.
    ///
    /// A node found copied up already may have a job still filling its copy (another
    /// request's copy-up, just now): a caller that reads or changes the copy waits for it.
    pub(crate) fn copy_up_node_for(&self, node: &Arc<Node>, later: Later) -> Res<PathBuf> {
        let path = self.path(node.ino)?;
        let copied = |path| {
            if later != Later::Fill {
                self.pending.settle(node.ino, Need::Data)?;
            }
            Ok(path)
        };
        if node.state().layer == UPPER {
            return copied(path);
        }
        let parent = node
            .state()
            .links
            .iter()
            .find_map(|(p, _)| self.table.get(*p))
            .ok_or(Errno::STALE)?;
        self.copy_up_node(&parent)?;
        // Another request may be copying this node (a long copy): wait as a blocking section.
        let _copying = match node.copy_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                fuser::blocking(|| node.copy_lock.lock().unwrap_or_else(|e| e.into_inner()))
            }
        };
        let layer = node.state().layer;
        if layer == UPPER {
            drop(_copying);
            return copied(path);
        }
        let (lower, work) = copy_up_later(&self.layers, &self.pending, layer, &path, later)?;
        if let Some(work) = work {
            self.pending.start(node.ino, work);
        }
        let upper = self.layers.stat(UPPER, &path)?;
        self.table.alias(upper.key(), node.ino, UPPER);
        if !node.is_dir {
            // its number is its origin's, as a later mount will find it (`Union::number_of`)
            self.table.lend(node.ino, upper.key());
        }
        if !node.is_dir && lower.nlink > 1 {
            self.link_up_aliases(node, &path, lower.key());
        }
        let mut state = node.state_mut();
        state.layer = UPPER;
        if node.is_dir {
            state.dir_layers.insert(0, UPPER);
        }
        Ok(path)
    }

    /// A lower file with several names: the names this mount knows are linked to the copy
    /// too, so they stay one file (POSIX link semantics; kernel overlayfs needs index=on for
    /// this). Names not yet looked up keep showing the lower file, under a new inode number.
    fn link_up_aliases(&self, node: &Arc<Node>, copied: &Path, lower_key: (u64, u64)) {
        self.table.unalias(lower_key);
        let links = node.state().links.clone();
        let mut kept = Vec::new();
        for (parent, name) in links {
            let Ok((pnode, ppath, players)) = self.dir_state(parent) else {
                continue;
            };
            let alias = ppath.join(&name);
            if alias == copied {
                kept.push((parent, name));
                continue;
            }
            let same = matches!(self.resolve(&players, &alias), Ok(found) if found.meta.key() == lower_key);
            if same
                && self.copy_up_node(&pnode).is_ok()
                && rustix::fs::linkat(
                    self.upper_fd(),
                    copied,
                    self.upper_fd(),
                    &alias,
                    AtFlags::empty(),
                )
                .is_ok()
            {
                kept.push((parent, name));
            }
        }
        node.state_mut().links = kept;
    }

    pub(crate) fn copy_up_dir(&self, ino: u64) -> Res<(Arc<Node>, PathBuf, Vec<usize>)> {
        let (node, _, _) = self.dir_state(ino)?;
        let path = self.copy_up_node(&node)?;
        let layers = node.state().dir_layers.clone();
        Ok((node, path, layers))
    }

    /// The default ACL of directory `ino`, if it has one; whether it has one is kept on
    /// its node (a create looks, and only a setxattr through the mount changes it).
    pub(crate) fn default_acl(&self, ino: u64) -> Option<Vec<u8>> {
        let node = self.table.get(ino)?;
        if !node.is_dir || node.default_acl.load(Ordering::Relaxed) == ACL_NONE {
            return None;
        }
        let path = self.path(ino).ok()?;
        let layer = node.state().layer;
        match get_xattr(&self.layers.abs(layer, &path), OsStr::new(ACL_DEFAULT)) {
            Ok(acl) => {
                node.default_acl.store(ACL_SOME, Ordering::Relaxed);
                Some(acl)
            }
            // Only a clear "none" is kept: a failure (a rename moving the path) asks again.
            Err(Errno::NODATA | Errno::NOTSUP) => {
                node.default_acl.store(ACL_NONE, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    /// Creates `name` in `parent` (copied up first). Over a whiteout the entry is built in
    /// the work dir and renamed into place; a directory made there is opaque, so the lower
    /// directory it replaces stays hidden (overlayfs.rst "whiteouts and opaque directories").
    ///
    /// `umask` is the caller's: the kernel leaves it to this server (FUSE_DONT_MASK), which
    /// applies it unless the directory has a default ACL, which decides the mode instead
    /// (as posix_acl_create does).
    fn make(
        &self,
        parent: u64,
        name: &OsStr,
        new: New<'_>,
        umask: u32,
        caller: Caller,
    ) -> Res<(Entry, Option<OwnedFd>)> {
        // An AUFS marker's name would hide an entry, and itself (AUFS refuses them too).
        if self.layers.is_aufs_marker(Path::new(name)) {
            return Err(Errno::PERM);
        }
        // Below a default ACL the upper file system gives an entry made in place its ACL;
        // one built in the work dir gets it from here (and the mode it implies).
        let acl = match new {
            New::Dir(_) | New::File(_) | New::Node(..) => self.default_acl(parent),
            _ => None,
        };
        let new = match acl {
            Some(_) => new,
            None => new.masked(umask),
        };
        let (pnode, ppath, _) = self.copy_up_dir(parent)?;
        let rel = ppath.join(name);
        // Made in place; over a whiteout, built under a fresh name in the work dir first.
        let mut tmp = None;
        // the permission bits the default ACL gives an entry built in the work dir
        let mut inherited_mode = None;
        let fd = match self.create_at(self.upper_fd(), &rel, &new) {
            Err(Errno::EXIST) => {
                if !self.layers.stat(UPPER, &rel)?.is_whiteout() {
                    return Err(Errno::EXIST);
                }
                let name = self.layers.tmp_name();
                let inherited = acl.as_deref().and_then(|acl| new.inherit(acl));
                let built = match inherited {
                    Some((mode, _)) => {
                        inherited_mode = Some(mode);
                        new.with_mode(mode)
                    }
                    None => new,
                };
                let fd = self.create_at(self.layers.work(), &name, &built)?;
                if let (Some(default), Some((_, access))) = (&acl, &inherited) {
                    let at = self.layers.work_abs(&name);
                    let set = || -> Res<()> {
                        if let Some(access) = access {
                            set_xattr(&at, OsStr::new(ACL_ACCESS), access)?;
                        }
                        if matches!(new, New::Dir(_)) {
                            set_xattr(&at, OsStr::new(ACL_DEFAULT), default)?;
                        }
                        Ok(())
                    };
                    if let Err(err) = set() {
                        new.unmake(self.layers.work(), &name);
                        return Err(err);
                    }
                }
                tmp = Some(name);
                fd
            }
            made => made?,
        };
        let (dir, at): (BorrowedFd<'_>, &Path) = match &tmp {
            Some(tmp) => (self.layers.work(), tmp),
            None => (self.upper_fd(), &rel),
        };
        // An entry this process made in place for its own ids already has the owner, the
        // group (a setgid parent's) and the mode the kernel asked for (our umask is 0): then
        // no chown, no chmod, no stat of the parent. Root in a container is that case. One
        // made in the work dir has the work dir's group and no inherited setgid bit.
        let as_made = tmp.is_none() && caller == self.maker && self.umask == 0;
        let finish = || -> Res<()> {
            if !as_made && !matches!(new, New::Link(_) | New::LinkFd(..)) {
                let (gid, setgid) = self.new_group(&ppath, caller)?;
                rustix::fs::chownat(
                    dir,
                    at,
                    Some(rustix::fs::Uid::from_raw(caller.uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
                if let New::Dir(mode) | New::File(mode) | New::Node(mode, _) = new {
                    let mut mode = mode & 0o7777;
                    if setgid && matches!(new, New::Dir(_)) {
                        mode |= 0o2000;
                    }
                    if acl.is_none() {
                        // chown clears set-id bits and our umask may have masked some: set
                        // exactly.
                        if mode & (0o7000 | self.umask) != 0 || self.umask != 0 {
                            let mode = Mode::from_raw_mode(mode);
                            rustix::fs::chmodat(dir, at, mode, AtFlags::empty())?;
                        }
                    } else {
                        // The default ACL made the permission bits (the file system, in
                        // place; `inherit_acl`, in the work dir, where our umask may have
                        // masked them): keep those, with the set-id bits asked for.
                        let now = rustix::fs::statat(dir, at, AtFlags::SYMLINK_NOFOLLOW)?.st_mode;
                        let perms = inherited_mode.unwrap_or(now) & 0o777;
                        let want = perms | (mode & 0o7000);
                        if want != now & 0o7777 {
                            let want = Mode::from_raw_mode(want);
                            rustix::fs::chmodat(dir, at, want, AtFlags::empty())?;
                        }
                    }
                }
            }
            if let Some(tmp) = &tmp {
                if let New::Dir(_) = new {
                    self.layers.set_opaque_at(&self.layers.work_abs(tmp))?;
                    rustix::fs::renameat_with(
                        self.layers.work(),
                        tmp,
                        self.upper_fd(),
                        &rel,
                        RenameFlags::EXCHANGE,
                    )?;
                    let _ = rustix::fs::unlinkat(self.layers.work(), tmp, AtFlags::empty());
                } else {
                    rustix::fs::renameat(self.layers.work(), tmp, self.upper_fd(), &rel)?;
                }
            }
            Ok(())
        };
        if let Err(err) = finish() {
            new.unmake(dir, at);
            return Err(err);
        }
        // A new file's descriptor saves a walk of its path.
        let meta = match &fd {
            Some(fd) => crate::layer::Meta::from_stat(&rustix::fs::fstat(fd)?),
            None => self.layers.stat(UPPER, &rel)?,
        };
        // A named O_TMPFILE keeps its node: its real inode answers with that number again,
        // should the release of another of its handles have forgotten it. A hard link shares
        // its file's number. Anything else is a new real inode, which gets a new number: the
        // number its (device, inode) had when ext4 last used them belongs to a file gone,
        // which an open handle may still hold.
        let ino = match new {
            New::LinkFd(_, ino) => {
                self.table.alias(meta.key(), ino, UPPER);
                ino
            }
            New::Link(_) => self.table.ino_for(meta.key(), UPPER),
            _ => self.table.renumber(meta.key(), UPPER),
        };
        let state = NodeState {
            links: vec![(pnode.ino, name.to_os_string())],
            layer: UPPER,
            dir_layers: if meta.is_dir() {
                vec![UPPER]
            } else {
                Vec::new()
            },
        };
        let node = self.table.lookup(ino, meta.is_dir(), state);
        if matches!(new, New::File(_)) {
            node.caps_free.store(true, Ordering::Relaxed);
        }
        Ok((
            Entry {
                ino,
                meta,
                upper: true,
            },
            fd,
        ))
    }

    /// The group of a new entry in upper directory `ppath`, and whether that directory is
    /// set-group-ID: then it hands its own group down (inode_init_owner), else the
    /// caller's group is taken.
    fn new_group(&self, ppath: &Path, caller: Caller) -> Res<(u32, bool)> {
        let parent = self.layers.stat(UPPER, ppath)?;
        let setgid = parent.mode & 0o2000 != 0;
        Ok((if setgid { parent.gid } else { caller.gid }, setgid))
    }

    fn create_at(&self, dir: BorrowedFd<'_>, at: &Path, new: &New<'_>) -> Res<Option<OwnedFd>> {
        match *new {
            New::Dir(mode) => {
                rustix::fs::mkdirat(dir, at, Mode::from_raw_mode(mode & 0o7777)).map(|()| None)
            }
            New::File(mode) => rustix::fs::openat(
                dir,
                at,
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode & 0o7777),
            )
            .map(Some),
            New::Node(mode, rdev) => {
                let kind = FileType::from_raw_mode(mode);
                if kind == FileType::Unknown
                    || kind == FileType::Directory
                    || kind == FileType::Symlink
                {
                    return Err(Errno::INVAL);
                }
                rustix::fs::mknodat(dir, at, kind, Mode::from_raw_mode(mode & 0o7777), rdev)
                    .map(|()| None)
            }
            New::Symlink(target) => rustix::fs::symlinkat(target, dir, at).map(|()| None),
            New::Link(source) => {
                rustix::fs::linkat(self.upper_fd(), source, dir, at, AtFlags::empty())
                    .map(|()| None)
            }
            New::LinkFd(fd, _) => {
                rustix::fs::linkat(fd, "", dir, at, AtFlags::EMPTY_PATH).map(|()| None)
            }
        }
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Res<Entry> {
        let _shared = self.shared();
        Ok(self.make(parent, name, New::Dir(mode), umask, caller)?.0)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        umask: u32,
        caller: Caller,
    ) -> Res<Entry> {
        // A character device 0/0 is a whiteout: overlayfs refuses to make one too.
        if FileType::from_raw_mode(mode) == FileType::CharacterDevice && rdev == 0 {
            return Err(Errno::PERM);
        }
        let _shared = self.shared();
        let new = if FileType::from_raw_mode(mode) == FileType::RegularFile {
            New::File(mode)
        } else {
            New::Node(mode, rdev)
        };
        Ok(self.make(parent, name, new, umask, caller)?.0)
    }

    pub fn symlink(&self, parent: u64, name: &OsStr, target: &Path, caller: Caller) -> Res<Entry> {
        let _shared = self.shared();
        Ok(self.make(parent, name, New::Symlink(target), 0, caller)?.0)
    }

    /// create + open: the new file is in the upper branch, open read-write.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Res<(Entry, u64, Arc<OpenFile>)> {
        let _shared = self.shared();
        let (entry, fd) = self.make(parent, name, New::File(mode), umask, caller)?;
        let fd = fd.ok_or(Errno::IO)?;
        let (fh, file) = self.files.insert(OpenFile::new(fd, entry.ino, true));
        Ok((entry, fh, file))
    }

    /// open(2) with O_TMPFILE: an unnamed file in the upper copy of directory `parent`,
    /// open read-write, which `link` may name later (as overlayfs makes it: ovl_tmpfile).
    pub fn tmpfile(
        &self,
        parent: u64,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Res<(Entry, u64, Arc<OpenFile>)> {
        let _shared = self.shared();
        // the umask as `make` applies it
        let acl = self.default_acl(parent).is_some();
        let mode = if acl { mode } else { mode & !(umask & 0o777) };
        let (_, ppath, _) = self.copy_up_dir(parent)?;
        let fd = rustix::fs::openat(
            self.upper_fd(),
            arg(&ppath),
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o7777),
        )?;
        // Owner and group as `make` gives them; then the mode exactly (chown clears set-ID
        // bits, and this process's umask may have masked some).
        let (gid, _) = self.new_group(&ppath, caller)?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(caller.uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
        let want = if acl {
            // the file system gave it the default ACL's permission bits: keep them
            (rustix::fs::fstat(&fd)?.st_mode & 0o777) | (mode & 0o7000)
        } else {
            mode & 0o7777
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(want))?;
        let meta = crate::layer::Meta::from_stat(&rustix::fs::fstat(&fd)?);
        // A new real inode: a new number (see `make`).
        let ino = self.table.renumber(meta.key(), UPPER);
        let state = NodeState {
            links: Vec::new(),
            layer: UPPER,
            dir_layers: Vec::new(),
        };
        self.table.lookup(ino, false, state);
        let (fh, file) = self.files.insert(OpenFile::new(fd, ino, true));
        let entry = Entry {
            ino,
            meta,
            upper: true,
        };
        Ok((entry, fh, file))
    }

    /// A hard link: the source is copied up, then linked in the upper branch, so both names
    /// show one inode number and the real link count.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Res<Entry> {
        let _shared = self.shared();
        let node = self.node(ino)?;
        if node.is_dir {
            return Err(Errno::PERM);
        }
        let caller = Caller { uid: 0, gid: 0 };
        let (mut entry, _) = match self.copy_up_node(&node) {
            // No name: an O_TMPFILE (the kernel links a file with none only if it was made
            // so, without O_EXCL).
            Err(Errno::STALE) => {
                let file = self.unlinked_open(ino, true)?;
                let fd = self.fd(&file)?;
                self.make(newparent, newname, New::LinkFd(fd, node.ino), 0, caller)?
            }
            source => {
                let source = source?;
                // (a crash must not leave a name that the copy-up's record does not know;
                // no job starts for a node already copied up)
                self.pending.settle(ino, Need::Durable)?;
                let (_, to, _) = self.copy_up_dir(newparent)?;
                crate::origin::carry(&self.layers, &source, &to);
                self.make(newparent, newname, New::Link(&source), 0, caller)?
            }
        };
        // `make` registered the new name on the node the upper inode maps to: the same one
        // (or the copy's number, with which the numbers it superseded get the name).
        for old in self.superseded_nodes(entry.ino) {
            old.state_mut()
                .links
                .push((newparent, newname.to_os_string()));
        }
        entry.ino = node.ino;
        Ok(entry)
    }

    /// Drops the (parent, name) link of node `ino`, the number the real file `key` had
    /// before its removal, and of the nodes its copy-up superseded, whose numbers it returns
    /// (their link count changed); forgets the real file's number if no name of it is left,
    /// so a recycled inode gets a new one. The number must be taken before the removal: after
    /// it, a request beside this one may already have made a file or directory on the
    /// recycled inode, and the key then answers with that one's number.
    pub(crate) fn unlinked(
        &self,
        parent: u64,
        name: &OsStr,
        key: (u64, u64),
        ino: Option<u64>,
        last: bool,
    ) -> Vec<u64> {
        let Some(ino) = ino else {
            return Vec::new();
        };
        let others = self.superseded_nodes(ino);
        for node in self.table.get(ino).iter().chain(&others) {
            node.state_mut()
                .links
                .retain(|(p, n)| !(*p == parent && n == name));
        }
        if last {
            self.untie_copy(ino);
            self.table.unalias_number(key, ino);
        }
        others.iter().map(|node| node.ino).collect()
    }

    /// Returns the numbers a copy-up of the file superseded (`Union::supersede`), whose
    /// link count changed with it.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Res<Vec<u64>> {
        let _shared = self.shared();
        let (_, ppath, players) = self.dir_state(parent)?;
        let rel = ppath.join(name);
        let found = self.resolve(&players, &rel)?;
        if found.meta.is_dir() {
            return Err(Errno::ISDIR);
        }
        let ino = self.table.existing_ino(found.meta.key());
        // (found below the upper: a lower branch has it)
        let lower = found.layer != UPPER || self.lower_has(&players, &rel)?;
        self.copy_up_dir(parent)?;
        if found.layer == UPPER {
            if lower {
                // Replace the upper file by a whiteout in one rename.
                let tmp = self.layers.tmp_name();
                self.layers.whiteout(self.layers.work(), &tmp)?;
                if let Err(err) =
                    rustix::fs::renameat(self.layers.work(), &tmp, self.upper_fd(), &rel)
                {
                    let _ = rustix::fs::unlinkat(self.layers.work(), &tmp, AtFlags::empty());
                    return Err(err);
                }
            } else {
                rustix::fs::unlinkat(self.upper_fd(), &rel, AtFlags::empty())?;
            }
        } else {
            self.layers.whiteout(self.upper_fd(), &rel)?;
        }
        Ok(self.unlinked(parent, name, found.meta.key(), ino, found.meta.nlink <= 1))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Res<()> {
        let _shared = self.shared();
        let (_, ppath, players) = self.dir_state(parent)?;
        let rel = ppath.join(name);
        let found = self.resolve(&players, &rel)?;
        if !found.meta.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if !self.list(&found.dir_layers, &rel)?.is_empty() {
            return Err(Errno::NOTEMPTY);
        }
        let lower = found.layer != UPPER || self.lower_has(&players, &rel)?;
        let ino = self.table.existing_ino(found.meta.key());
        self.copy_up_dir(parent)?;
        self.remove_upper_dir(&rel, found.layer == UPPER, lower)?;
        self.dir_removed(&found, ino);
        self.unlinked(parent, name, found.meta.key(), ino, true);
        Ok(())
    }

    /// Keeps a removed directory's attributes for its node `ino` (see `Node::removed_dir`),
    /// the number it had before the removal (see [`unlinked`](Self::unlinked)).
    pub(crate) fn dir_removed(&self, found: &Found, ino: Option<u64>) {
        if let Some(node) = ino.and_then(|ino| self.table.get(ino)) {
            let mut meta = found.meta;
            meta.nlink = 0;
            let _ = node.removed_dir.set(Box::new(meta));
        }
    }

    /// Removes a (merged-empty) directory: the upper part, which may hold whiteouts, moves
    /// to the work dir in one rename (exchanged with a whiteout if lowers have the name).
    pub(crate) fn remove_upper_dir(&self, rel: &Path, in_upper: bool, lower: bool) -> Res<()> {
        if !in_upper {
            return if lower {
                self.layers.whiteout(self.upper_fd(), rel)
            } else {
                Ok(())
            };
        }
        let tmp = self.layers.tmp_name();
        if lower {
            self.layers.whiteout(self.layers.work(), &tmp)?;
            if let Err(err) = rustix::fs::renameat_with(
                self.layers.work(),
                &tmp,
                self.upper_fd(),
                rel,
                RenameFlags::EXCHANGE,
            ) {
                let _ = rustix::fs::unlinkat(self.layers.work(), &tmp, AtFlags::empty());
                return Err(err);
            }
        } else {
            rustix::fs::renameat(self.upper_fd(), rel, self.layers.work(), &tmp)?;
        }
        self.layers.remove_work_tree(&tmp);
        Ok(())
    }

    /// setattr: any change copies up first (chmod, chown, truncate, utimens).
    pub fn setattr(&self, ino: u64, set: &SetAttr, fh: Option<u64>) -> Res<Entry> {
        self.pending.settle(ino, Need::Data)?;
        let _shared = self.shared();
        let node = self.node(ino)?;
        if set.owner_only
            && let Some(caller) = &set.drop_setid
        {
            let meta = match self.attr(&node) {
                Err(Errno::STALE) => {
                    let file = self.unlinked_open(ino, false)?;
                    crate::layer::Meta::from_stat(&rustix::fs::fstat(self.fd(&file)?)?)
                }
                attr => attr?.meta,
            };
            // Root in the branches' ids holds CAP_FOWNER (a container's root over the files
            // its namespace maps).
            let owner = caller.uid == 0 || meta.uid == caller.uid;
            if !owner && without_setid(meta.mode, meta.gid, caller).is_some() {
                return Err(Errno::PERM);
            }
        }
        let open = fh
            .and_then(|fh| self.files.get(fh).ok())
            .filter(|f| f.upper);
        let (open, path) = match self.copy_up_node_for(&node, Later::Sync) {
            // Every name is gone: the file is changed through an open upper file of it.
            // Only ftruncate(2) names its handle; fchmod, fchown and futimens do not.
            Err(Errno::STALE) => {
                let open = open.map_or_else(|| self.unlinked_open(ino, true), Ok)?;
                (Some(open), None)
            }
            path => (open, Some(path?)),
        };
        let upper = self.upper_fd();
        if let Some(caller) = &set.drop_setid {
            match (&open, &path) {
                (Some(file), _) => drop_setid(self.fd(file)?, caller)?,
                (None, Some(path)) => drop_setid_at(upper, path, caller)?,
                (None, None) => return Err(Errno::STALE),
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            let uid = set.uid.map(rustix::fs::Uid::from_raw);
            let gid = set.gid.map(rustix::fs::Gid::from_raw);
            match (&path, &open) {
                (Some(path), _) => {
                    rustix::fs::chownat(upper, arg(path), uid, gid, AtFlags::SYMLINK_NOFOLLOW)?
                }
                (None, Some(file)) => rustix::fs::fchown(self.fd(file)?, uid, gid)?,
                (None, None) => return Err(Errno::STALE),
            }
        }
        if let Some(mode) = set.mode {
            let mode = Mode::from_raw_mode(mode & 0o7777);
            match (&path, &open) {
                (Some(path), _) => rustix::fs::chmodat(upper, arg(path), mode, AtFlags::empty())?,
                (None, Some(file)) => rustix::fs::fchmod(self.fd(file)?, mode)?,
                (None, None) => return Err(Errno::STALE),
            }
        }
        if let Some(size) = set.size {
            match (&open, &path) {
                (Some(file), _) => rustix::fs::ftruncate(self.fd(file)?, size)?,
                (None, Some(path)) => {
                    let fd = rustix::fs::openat(
                        upper,
                        arg(path),
                        OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )?;
                    rustix::fs::ftruncate(&fd, size)?;
                }
                (None, None) => return Err(Errno::STALE),
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: ts(set.atime),
                last_modification: ts(set.mtime),
            };
            match (&path, &open) {
                (Some(path), _) => {
                    rustix::fs::utimensat(upper, arg(path), &times, AtFlags::SYMLINK_NOFOLLOW)?
                }
                (None, Some(file)) => rustix::fs::futimens(self.fd(file)?, &times)?,
                (None, None) => return Err(Errno::STALE),
            }
        }
        match (&path, &open) {
            (None, Some(file)) => {
                let meta = crate::layer::Meta::from_stat(&rustix::fs::fstat(self.fd(file)?)?);
                Ok(Entry {
                    ino,
                    meta,
                    upper: true,
                })
            }
            _ => self.attr(&node),
        }
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        let name = &*crate::layer::stored_xattr(name);
        self.pending.settle(ino, Need::Data)?;
        let _shared = self.shared();
        let node = self.node(ino)?;
        if name == ACL_DEFAULT {
            node.default_acl.store(0, Ordering::Relaxed);
        }
        if name.as_bytes().starts_with(b"security.") {
            node.caps_free.store(false, Ordering::Relaxed);
        }
        let flags = rustix::fs::XattrFlags::from_bits(flags as u32).ok_or(Errno::INVAL)?;
        let path = match self.copy_up_node(&node) {
            Err(Errno::STALE) => {
                let file = self.unlinked_file(ino, true)?;
                return rustix::fs::fsetxattr(file, name, value, flags);
            }
            path => path?,
        };
        let set = rustix::fs::lsetxattr(self.layers.abs(UPPER, &path), name, value, flags);
        if name == ACL_DEFAULT {
            // again: a create may have looked between the first reset and the set
            node.default_acl.store(0, Ordering::Relaxed);
        }
        set
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        let name = &*crate::layer::stored_xattr(name);
        self.pending.settle(ino, Need::Data)?;
        let _shared = self.shared();
        let node = self.node(ino)?;
        if name == ACL_DEFAULT {
            node.default_acl.store(0, Ordering::Relaxed);
        }
        let path = match self.path(ino) {
            Err(Errno::STALE) => {
                return rustix::fs::fremovexattr(self.unlinked_file(ino, true)?, name);
            }
            path => path?,
        };
        let layer = node.state().layer;
        if layer != UPPER {
            // Nothing to remove is not a change: no copy-up (ovl_xattr_set does the same).
            let lower = self.layers.abs(layer, &path);
            rustix::fs::lgetxattr(lower, name, &mut [0u8; 0][..])?;
        }
        let path = self.copy_up_node(&node)?;
        let removed = rustix::fs::lremovexattr(self.layers.abs(UPPER, &path), name);
        if name == ACL_DEFAULT {
            node.default_acl.store(0, Ordering::Relaxed);
        }
        removed
    }

    /// Kind of a live node (for replies that need it).
    pub fn kind_of(&self, meta: &crate::layer::Meta) -> Kind {
        meta.kind()
    }
}

/// The union logic without the kernel: requests are method calls on [`Union`] over real
/// branch dirs (as root: whiteouts are device nodes, opaque markers trusted xattrs).
#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::inode::ROOT;

    const ME: Caller = Caller { uid: 0, gid: 0 };

    fn setup() -> (tempfile::TempDir, Union) {
        fs::create_dir_all("/var/tmp/strata-unionfs-tests").unwrap();
        let dir = tempfile::tempdir_in("/var/tmp/strata-unionfs-tests").unwrap();
        let p = |s: &str| dir.path().join(s);
        for d in ["upper", "work", "top", "bottom/d", "bottom/gone"] {
            fs::create_dir_all(p(d)).unwrap();
        }
        fs::write(p("bottom/d/a"), b"a").unwrap();
        fs::write(p("bottom/file"), b"bottom").unwrap();
        fs::write(p("top/file"), b"top").unwrap();
        fs::create_dir(p("top/d")).unwrap();
        fs::write(p("top/d/b"), b"b").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p("top/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        let union = Union::new(&p("upper"), &[p("top"), p("bottom")], &p("work"), false).unwrap();
        (dir, union)
    }

    fn names(union: &Union, ino: u64) -> Vec<String> {
        let listing = union.dir_entries(ino, 0).unwrap();
        let mut v: Vec<String> = listing
            .entries
            .iter()
            .map(|e| e.name.to_string_lossy().into())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn each_reader_of_a_directory_keeps_its_own_snapshot() {
        let (_dir, union) = setup();
        let first = union.dir_entries(ROOT, 0).unwrap();
        assert!(first.entries.len() > 2);
        // The first reader took two entries; then the directory changes and a second
        // reader starts; the first goes on from where it was, in its own snapshot.
        let resume = first.offset(1);
        union
            .create(ROOT, OsStr::new("made-between"), 0o100644, 0, ME)
            .unwrap();
        let second = union.dir_entries(ROOT, 0).unwrap();
        assert_eq!(second.entries.len(), first.entries.len() + 1);
        let rest = union.dir_entries(ROOT, resume).unwrap();
        assert_eq!(rest.start, 2);
        let names = |l: &crate::union::Listing, from: usize| -> Vec<std::ffi::OsString> {
            l.entries[from..].iter().map(|e| e.name.clone()).collect()
        };
        assert_eq!(names(&rest, rest.start), names(&first, 2));
        assert_ne!(first.offset(0), second.offset(0));
        assert!(
            first.offset(first.entries.len()) < 1 << 31,
            "32-bit programs take it"
        );
        // Another directory's reader never gets this snapshot.
        let other = union.lookup(ROOT, OsStr::new("d")).unwrap().ino;
        let mixed = union.dir_entries(other, resume).unwrap();
        assert!(mixed.entries.iter().any(|e| e.name == "a"));
        assert!(mixed.entries.iter().all(|e| e.name != "file"));
        // A reader that had every chunk comes back (the kernel asks again from where its
        // reader is once the directory changed): the same snapshot.
        union.dir_entries_done(&first);
        union
            .create(ROOT, OsStr::new("made-after"), 0o100644, 0, ME)
            .unwrap();
        let back = union
            .dir_entries(ROOT, first.offset(first.entries.len() - 2))
            .unwrap();
        assert_eq!(
            names(&back, back.start),
            names(&first, first.entries.len() - 1)
        );
        // One being read outlives any number of listings read whole meanwhile (a walker
        // deep in a tree), under ids that never come back while it is kept.
        let reading = union.dir_entries(ROOT, 0).unwrap();
        for _ in 0..3000 {
            let whole = union.dir_entries(other, 0).unwrap();
            union.dir_entries_done(&whole);
        }
        union
            .create(ROOT, OsStr::new("made-last"), 0o100644, 0, ME)
            .unwrap();
        let on = union.dir_entries(ROOT, reading.offset(1)).unwrap();
        assert_eq!(names(&on, on.start), names(&reading, 2));
        // A snapshot read whole goes once enough others were read whole: listed afresh.
        let again = union.dir_entries(ROOT, resume).unwrap();
        assert_eq!(again.entries.len(), second.entries.len() + 2);
    }

    #[test]
    fn lookup_takes_the_top_branch_and_stops_at_whiteouts() {
        let (_dir, union) = setup();
        let file = union.lookup(ROOT, OsStr::new("file")).unwrap();
        assert_eq!(file.meta.size, 3);
        assert!(!file.upper);
        assert_eq!(
            union.lookup(ROOT, OsStr::new("gone")).unwrap_err(),
            Errno::NOENT
        );
        let d = union.lookup(ROOT, OsStr::new("d")).unwrap();
        assert_eq!(
            d.meta.nlink, 1,
            "a merged dir reports nlink 1 like overlayfs"
        );
        assert_eq!(names(&union, d.ino), [".", "..", "a", "b"]);
        assert_eq!(names(&union, ROOT), [".", "..", "d", "file"]);
    }

    #[test]
    fn unlink_of_lower_file_writes_whiteout_and_recreate_replaces_it() {
        let (dir, union) = setup();
        union.lookup(ROOT, OsStr::new("file")).unwrap();
        union.unlink(ROOT, OsStr::new("file")).unwrap();
        let upper = dir.path().join("upper/file");
        assert!(crate::layer::Meta::from_stat(&rustix::fs::lstat(&upper).unwrap()).is_whiteout());
        assert_eq!(
            union.lookup(ROOT, OsStr::new("file")).unwrap_err(),
            Errno::NOENT
        );
        let (entry, _, _) = union
            .create(ROOT, OsStr::new("file"), 0o100644, 0, ME)
            .unwrap();
        assert!(entry.upper);
        assert_eq!(fs::read(&upper).unwrap(), b"");
    }

    #[test]
    fn rmdir_then_mkdir_gives_an_opaque_directory() {
        let (dir, union) = setup();
        let d = union.lookup(ROOT, OsStr::new("d")).unwrap();
        assert_eq!(
            union.rmdir(ROOT, OsStr::new("d")).unwrap_err(),
            Errno::NOTEMPTY
        );
        for name in ["a", "b"] {
            union.lookup(d.ino, OsStr::new(name)).unwrap();
            union.unlink(d.ino, OsStr::new(name)).unwrap();
        }
        union.rmdir(ROOT, OsStr::new("d")).unwrap();
        let again = union.mkdir(ROOT, OsStr::new("d"), 0o40755, 0, ME).unwrap();
        assert_eq!(names(&union, again.ino), [".", ".."]);
        assert!(union.layers.is_opaque(UPPER, Path::new("d")));
        assert!(dir.path().join("upper/d").is_dir());
    }

    /// An O_TMPFILE never linked frees its real inode when its last handle goes; ext4 may
    /// then give that inode to a new directory, which must not take the file's number
    /// (and its node, a file's, while the kernel may still hold it). One linked keeps its,
    /// also when another handle of it went before the link.
    #[test]
    fn a_nameless_file_forgets_its_number_when_its_last_handle_goes() {
        let (_dir, union) = setup();
        let key = |file: &OpenFile| {
            let st = rustix::fs::fstat(union.fd(file).unwrap()).unwrap();
            crate::layer::Meta::from_stat(&st).key()
        };
        let (unnamed, fh, file) = union.tmpfile(ROOT, 0o100600, 0, ME).unwrap();
        let unnamed_key = key(&file);
        assert_eq!(union.table.existing_ino(unnamed_key), Some(unnamed.ino));
        drop(file);
        union.release(fh);
        assert_eq!(union.table.existing_ino(unnamed_key), None);

        let (named, fh, file) = union.tmpfile(ROOT, 0o100600, 0, ME).unwrap();
        // Opened again (through /proc/PID/fd), and that handle gone before the link.
        let (again, _) = union.open(named.ino, false).unwrap();
        union.release(again);
        let linked = union.link(named.ino, ROOT, OsStr::new("named")).unwrap();
        assert_eq!(linked.ino, named.ino);
        let named_key = key(&file);
        drop(file);
        union.release(fh);
        assert_eq!(union.table.existing_ino(named_key), Some(named.ino));
        let found = union.lookup(ROOT, OsStr::new("named")).unwrap();
        assert_eq!(found.ino, named.ino);
    }

    #[test]
    fn setattr_copies_up_and_keeps_the_inode_number() {
        let (dir, union) = setup();
        let file = union.lookup(ROOT, OsStr::new("file")).unwrap();
        let set = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        let after = union.setattr(file.ino, &set, None).unwrap();
        assert_eq!(after.ino, file.ino);
        assert!(after.upper);
        assert_eq!(after.meta.mode & 0o777, 0o600);
        assert_eq!(fs::read(dir.path().join("upper/file")).unwrap(), b"top");
    }

    #[test]
    fn renaming_a_merged_directory_moves_all_of_it() {
        let (dir, union) = setup();
        let d = union.lookup(ROOT, OsStr::new("d")).unwrap();
        union
            .rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), 0)
            .unwrap();
        assert_eq!(names(&union, d.ino), [".", "..", "a", "b"]);
        assert_eq!(
            union.lookup(ROOT, OsStr::new("d")).unwrap_err(),
            Errno::NOENT
        );
        assert_eq!(fs::read(dir.path().join("upper/e/a")).unwrap(), b"a");
        assert!(union.layers.is_opaque(UPPER, Path::new("e")));
    }

    #[test]
    fn a_clients_overlay_xattrs_are_its_own() {
        let (dir, union) = setup();
        let d = union.lookup(ROOT, OsStr::new("d")).unwrap();
        let opaque = OsStr::new("trusted.overlay.opaque");
        assert_eq!(union.getxattr(d.ino, opaque).unwrap_err(), Errno::NODATA);
        union.setxattr(d.ino, opaque, b"y", 0).unwrap();
        assert_eq!(union.getxattr(d.ino, opaque).unwrap(), b"y");
        assert!(
            !union.layers.is_opaque(UPPER, Path::new("d")),
            "the client's mark made the union's directory opaque"
        );
        let stored = xattr::get(dir.path().join("upper/d"), "trusted.overlay.overlay.opaque");
        assert_eq!(stored.unwrap().as_deref(), Some(&b"y"[..]));
        let list = union.listxattr(d.ino).unwrap();
        assert_eq!(list, b"trusted.overlay.opaque\0");
        union.removexattr(d.ino, opaque).unwrap();
        assert_eq!(union.getxattr(d.ino, opaque).unwrap_err(), Errno::NODATA);
        // The union's own marks stay hidden, and its directories stay merged.
        assert!(union.listxattr(d.ino).unwrap().is_empty());
        assert_eq!(names(&union, d.ino), [".", "..", "a", "b"]);
    }
}
