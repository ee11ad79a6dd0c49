//! The union filesystem's logic, free of FUSE types so it can be tested without the
//! kernel: lookup top-down through the branches (stopping at whiteouts, non-directories
//! and opaque directories), merged directory listings, attributes, open files and xattr
//! reads. Changes (create, remove, rename, copy-up) are in `modify`. Every public method
//! answers one request and returns an errno on failure; `fuse.rs` only translates.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use xattr::FileExt;

use crate::copyup::{get_xattr, io_errno, list_xattrs};
use crate::error::Result;
use crate::inode::{Node, NodeState, ROOT, Table};
use crate::layer::{Kind, Layers, Meta, Res, UPPER, arg, aufs_marker, shown_xattr, stored_xattr};
use crate::pending::{Later, Need, Pending};
use crate::prefetch::Prefetch;

/// The credentials of the process making a request (new entries belong to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A looked-up entry: its inode number and the attributes of its topmost real file.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub ino: u64,
    pub meta: Meta,
    /// The entry lives in the upper branch (may change); lower-only entries never do
    /// unless through this mount, so the kernel may cache them for long.
    pub upper: bool,
}

/// One name in a merged directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
    /// The topmost branch the listing found it in (see [`Union::lookup_listed`]).
    pub layer: usize,
}

/// An open regular file: the real file in its branch (upper: read-write; lower: read-only).
///
/// A lower file opened for reading gets its real file on first use ([`Union::fd`]): the
/// kernel serves most reads of a file it has read before from its page cache, and such an
/// open then costs no open(2), fstat(2) and close(2) here. Branches below the upper never
/// change, so the (branch, path) noted at open names the same file later, whiteouts and
/// copy-ups notwithstanding.
#[derive(Debug)]
pub struct OpenFile {
    fd: OnceLock<OwnedFd>,
    /// A lower file's copy, once the file was copied up under this handle: its reads come
    /// from the copy, as through overlayfs (since 4.19) they do.
    copy: OnceLock<OwnedFd>,
    /// An append-only file (chattr +a) opened for appending: its descriptor has O_APPEND,
    /// so it must not become the backing file other writers share.
    pub append_only: bool,
    lower: Option<LowerFile>,
    pub ino: u64,
    pub upper: bool,
}

#[derive(Debug)]
struct LowerFile {
    layer: usize,
    path: PathBuf,
    /// (size, nlink), from the lookup.
    size_nlink: (u64, u64),
}

impl OpenFile {
    pub(crate) fn new(fd: OwnedFd, ino: u64, upper: bool) -> OpenFile {
        OpenFile {
            fd: OnceLock::from(fd),
            copy: OnceLock::new(),
            append_only: false,
            lower: None,
            ino,
            upper,
        }
    }

    /// (size, nlink) of a lower file not opened yet; None once it has its real file.
    pub fn lower_size_nlink(&self) -> Option<(u64, u64)> {
        match self.fd.get() {
            Some(_) => None,
            None => self.lower.as_ref().map(|l| l.size_nlink),
        }
    }
}

/// Listings being read. The kernel reads a directory in chunks (one READDIR per page of
/// entries), and each chunk must come from the same snapshot: an entry that stays must be
/// listed once, whatever is made or removed meanwhile. There are no directory handles
/// (OPENDIR is refused, see `fuse.rs`), so the snapshot travels in the offsets instead,
/// and readers of one directory at the same time each keep their own. A snapshot is made
/// at offset 0. One read to its end is kept a while too: the kernel, which caches the
/// chunks, asks again from where its reader is when the directory changed meanwhile (a
/// program that makes `x.bak` beside each `x` it reads).
///
/// Offsets stay below 2^31, as 32-bit programs need (their readdir fails with EOVERFLOW
/// on a bigger d_off): `SNAPSHOT | id << INDEX_BITS | index + 1` for listings of fewer
/// than 2^19 entries, else the plain `index + 1`, listed afresh for each chunk.
#[derive(Default)]
struct Listings {
    snapshots: Mutex<Snapshots>,
    next: AtomicU64,
}

/// Listing snapshots by id. Those still being read are kept before those read to their
/// end, and each kind loses its least recently read first: a walker deep in a tree (which
/// lists each subdirectory whole between two chunks of its parent, as Rust's
/// `remove_dir_all` does) keeps the parent's.
#[derive(Default)]
struct Snapshots {
    by_id: HashMap<u64, Snapshot>,
    /// Ids being read, and read to their end, least recently read first.
    reading: VecDeque<u64>,
    done: VecDeque<u64>,
    /// What all of them hold, about (see [`Snapshot::bytes`]), and those read whole.
    bytes: usize,
    done_bytes: usize,
}

struct Snapshot {
    ino: u64,
    entries: Arc<Vec<DirEntry>>,
    bytes: usize,
}

impl Snapshot {
    fn new(ino: u64, entries: Arc<Vec<DirEntry>>) -> Snapshot {
        let bytes = entries
            .iter()
            .map(|e| size_of::<DirEntry>() + e.name.len())
            .sum();
        Snapshot {
            ino,
            entries,
            bytes,
        }
    }
}

/// Snapshots being read at most (a reader that stops half-way leaves one), read to their
/// end, and what they may hold, all and those read whole (a reader back to a snapshot gone
/// since gets its later chunks listed afresh). Fewer than [`IDS`], so that an id is never
/// in use twice.
const MAX_READING: usize = 1024;
const MAX_DONE: usize = 64;
const MAX_BYTES: usize = 32 << 20;
const MAX_DONE_BYTES: usize = 4 << 20;

impl Snapshots {
    /// Keeps `snapshot` as being read, under an id no other has, which it returns.
    fn insert(&mut self, next: &AtomicU64, snapshot: Snapshot) -> u64 {
        while self.reading.len() >= MAX_READING
            || (!self.by_id.is_empty() && self.bytes + snapshot.bytes > MAX_BYTES)
        {
            self.evict();
        }
        let id = loop {
            let id = next.fetch_add(1, Ordering::Relaxed) % IDS;
            if !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.bytes += snapshot.bytes;
        self.by_id.insert(id, snapshot);
        self.reading.push_back(id);
        id
    }

    /// The entries of snapshot `id` if it lists `ino`, now the most recently read.
    fn get(&mut self, id: u64, ino: u64) -> Option<Arc<Vec<DirEntry>>> {
        let snapshot = self.by_id.get(&id).filter(|s| s.ino == ino)?;
        let entries = snapshot.entries.clone();
        for list in [&mut self.reading, &mut self.done] {
            if let Some(at) = list.iter().position(|&i| i == id) {
                list.remove(at);
                list.push_back(id);
                break;
            }
        }
        Some(entries)
    }

    /// Snapshot `id` was read to its end.
    fn finish(&mut self, id: u64) {
        let Some(at) = self.reading.iter().position(|&i| i == id) else {
            return;
        };
        self.reading.remove(at);
        self.done.push_back(id);
        self.done_bytes += self.by_id.get(&id).map_or(0, |s| s.bytes);
        while self.done.len() > MAX_DONE || self.done_bytes > MAX_DONE_BYTES {
            let Some(old) = self.done.pop_front() else {
                break;
            };
            self.drop_snapshot(old, true);
        }
    }

    /// Drops the least recently read snapshot, one read to its end first.
    fn evict(&mut self) {
        if let Some(id) = self.done.pop_front() {
            self.drop_snapshot(id, true);
        } else if let Some(id) = self.reading.pop_front() {
            self.drop_snapshot(id, false);
        }
    }

    fn drop_snapshot(&mut self, id: u64, done: bool) {
        if let Some(snapshot) = self.by_id.remove(&id) {
            self.bytes -= snapshot.bytes;
            if done {
                self.done_bytes -= snapshot.bytes;
            }
        }
    }
}

const SNAPSHOT: u64 = 1 << 30;
const INDEX_BITS: u32 = 19;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Ids are reused after this many listings; a snapshot found under a reused id for
/// another directory is ignored.
const IDS: u64 = 1 << (30 - INDEX_BITS);

/// A listing snapshot and where in it a READDIR continues.
pub struct Listing {
    pub entries: Arc<Vec<DirEntry>>,
    /// None: too big for a snapshot id in its offsets.
    id: Option<u64>,
    pub start: usize,
}

impl Listing {
    /// The offset of entry `index`: where the reader continues after taking it.
    pub fn offset(&self, index: usize) -> u64 {
        match self.id {
            Some(id) => SNAPSHOT | id << INDEX_BITS | (index as u64 + 1),
            None => index as u64 + 1,
        }
    }
}

/// Topmost real file of a name plus the branches merged for a directory.
pub(crate) struct Found {
    pub meta: Meta,
    pub layer: usize,
    pub dir_layers: Vec<usize>,
    /// The real file whose number the entry shows, and its branch, if not its own: for a
    /// directory merged from the upper branch and lower ones, the topmost lower directory;
    /// for a copied-up file, the lower file it came from (`Union::lookup`). As kernel
    /// overlayfs does (OVL_CONST_INO), so that the number is the one it had before its
    /// copy-up, in this mount and the next.
    pub numbered_by: Option<((u64, u64), usize)>,
}

/// A table of open handles, sharded so opens and reads on different files do not contend.
type Shard<T> = Mutex<HashMap<u64, Arc<T>, BuildHasherDefault<DefaultHasher>>>;

pub(crate) struct Handles<T> {
    shards: Vec<Shard<T>>,
    next: AtomicU64,
}

impl<T> Handles<T> {
    fn new() -> Handles<T> {
        Handles {
            shards: (0..32).map(|_| Mutex::default()).collect(),
            next: AtomicU64::new(1),
        }
    }

    fn shard(
        &self,
        fh: u64,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<T>, BuildHasherDefault<DefaultHasher>>> {
        self.shards[(fh as usize) % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, value: T) -> (u64, Arc<T>) {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let value = Arc::new(value);
        self.shard(fh).insert(fh, value.clone());
        (fh, value)
    }

    pub(crate) fn get(&self, fh: u64) -> Res<Arc<T>> {
        self.shard(fh).get(&fh).cloned().ok_or(Errno::BADF)
    }

    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).remove(&fh)
    }

    /// Any handle that `pred` accepts (a scan of every shard: for rare requests only).
    pub(crate) fn find(&self, pred: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.shards.iter().find_map(|shard| {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.values().find(|v| pred(v)).cloned()
        })
    }
}

/// A merged listing entry.
pub(crate) struct Listed {
    pub name: OsString,
    pub kind: Kind,
    /// The real file it shows: (device, inode).
    pub key: (u64, u64),
    /// The branch that file is in.
    pub layer: usize,
    /// An upper directory a lower branch has a directory of the same name for: merged,
    /// unless opaque or whited out between (see `resolve`).
    pub merged: bool,
}

/// One mounted union: branches, inode table, open handles.
pub struct Union {
    pub(crate) layers: Layers,
    pub(crate) table: Table,
    /// Renames move whole subtrees, so they exclude path resolution; everything else
    /// shares this lock (never nested) and runs in parallel.
    rename_lock: RwLock<()>,
    pub(crate) files: Handles<OpenFile>,
    listings: Listings,
    /// This process's umask: new entries get exactly the mode the kernel asked for.
    pub(crate) umask: u32,
    /// Who this process makes new entries as (its effective ids).
    pub(crate) maker: Caller,
    /// Copy-up origins are decoded (see `origin.rs`) until the kernel says this process
    /// may not (EPERM, without CAP_DAC_READ_SEARCH).
    origins: std::sync::atomic::AtomicBool,
    ties: Ties,
    /// Copy-ups still being finished in the background (`pending.rs`).
    pub(crate) pending: Pending,
    /// Reads a scanned lower directory's small files ahead (`prefetch.rs`).
    prefetch: Prefetch,
}

/// Inodes superseded by a copy-up under passthrough readers (`Union::supersede`), tied to
/// the number their copy took. The two stand for one file: a name the copy gains or loses
/// the superseded node does too (its requests reach the file by name, and must not reach
/// another file that takes the name later), and a change of attributes through either
/// leaves the kernel's cache of the other stale (`fuse.rs` has it dropped).
#[derive(Default)]
struct Ties {
    /// Whether any tie exists (or one is being made): unlink, rename, link and attribute
    /// changes look.
    any: std::sync::atomic::AtomicBool,
    maps: Mutex<TieMaps>,
}

#[derive(Default)]
struct TieMaps {
    /// copy's number -> the superseded numbers
    by_copy: HashMap<u64, Vec<u64>>,
    /// superseded number -> the copy's number
    by_old: HashMap<u64, u64>,
}

impl Ties {
    fn maps(&self) -> Option<std::sync::MutexGuard<'_, TieMaps>> {
        self.any
            .load(Ordering::Acquire)
            .then(|| self.maps.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Ties `old` to the number `renumber` gives its copy (None: no other). The maps are
    /// held, and seen to hold a tie, meanwhile.
    fn tie_with(&self, old: u64, renumber: impl FnOnce() -> Option<u64>) -> Option<u64> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        self.any.store(true, Ordering::Release);
        let copy = renumber();
        if let Some(copy) = copy
            && maps.by_old.insert(old, copy).is_none()
        {
            maps.by_copy.entry(copy).or_default().push(old);
        }
        if maps.by_old.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        copy
    }

    /// Unties `old` (the kernel forgot it), or every number tied to `copy` (its last name
    /// went).
    fn untie(&self, old: Option<u64>, copy: Option<u64>) {
        let Some(mut maps) = self.maps() else {
            return;
        };
        if let Some(old) = old
            && let Some(copy) = maps.by_old.remove(&old)
            && let Some(olds) = maps.by_copy.get_mut(&copy)
        {
            olds.retain(|&o| o != old);
            if olds.is_empty() {
                maps.by_copy.remove(&copy);
            }
        }
        if let Some(copy) = copy
            && let Some(olds) = maps.by_copy.remove(&copy)
        {
            for old in olds {
                maps.by_old.remove(&old);
            }
        }
        if maps.by_old.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    /// The numbers tied to `ino`, either way.
    fn tied(&self, ino: u64) -> Vec<u64> {
        let Some(maps) = self.maps() else {
            return Vec::new();
        };
        let copy = maps.by_old.get(&ino).copied();
        let olds = maps.by_copy.get(&ino).into_iter().flatten().copied();
        copy.into_iter().chain(olds).collect()
    }

    /// The superseded numbers tied to `copy`.
    fn superseded(&self, copy: u64) -> Vec<u64> {
        let Some(maps) = self.maps() else {
            return Vec::new();
        };
        maps.by_copy.get(&copy).cloned().unwrap_or_default()
    }
}

impl Union {
    /// A `volatile` union syncs nothing (see `Flags::volatile`).
    pub fn with_volatile(mut self, volatile: bool) -> Union {
        self.layers.volatile = volatile;
        self
    }

    /// Opens the branches; `lowers` are top first. `aufs_markers`: see
    /// [`MountSpec`](crate::MountSpec).
    pub fn new(upper: &Path, lowers: &[PathBuf], work: &Path, aufs_markers: bool) -> Result<Union> {
        let layers = Layers::open(upper, lowers, work, aufs_markers)?;
        let roots: Vec<(usize, (u64, u64))> = (0..layers.count())
            .filter_map(|layer| Some((layer, layers.stat(layer, Path::new("")).ok()?.key())))
            .collect();
        let devices: Vec<u64> = roots.iter().map(|&(_, (dev, _))| dev).collect();
        let table = Table::new(&devices);
        let mut dir_layers = Vec::new();
        for &(layer, key) in &roots {
            table.alias(key, ROOT, layer);
            dir_layers.push(layer);
            if layers.is_opaque(layer, Path::new("")) {
                break;
            }
        }
        table.insert_root(NodeState {
            links: Vec::new(),
            layer: UPPER,
            dir_layers,
        });
        let umask = current_umask();
        let pending = Pending::new(layers.fd(UPPER), work);
        Ok(Union {
            layers,
            table,
            rename_lock: RwLock::new(()),
            files: Handles::new(),
            listings: Listings::default(),
            umask,
            maker: Caller {
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            },
            origins: std::sync::atomic::AtomicBool::new(true),
            ties: Ties::default(),
            pending,
            prefetch: Prefetch::new(),
        })
    }

    /// For an upper non-directory copied up from a lower file: that file and its branch,
    /// whose number it shows (see `origin.rs`).
    fn origin(&self, rel: &Path, kind: Kind) -> Option<((u64, u64), usize)> {
        if !self.origins.load(Ordering::Relaxed) {
            return None;
        }
        match crate::origin::lower_of(&self.layers, rel, kind) {
            Ok(found) => found.map(|(meta, layer)| (meta.key(), layer)),
            Err(_) => {
                tracing::debug!("copy-up origins not decoded: no CAP_DAC_READ_SEARCH");
                self.origins.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether directory `dir` (at `path`, merged from `layers`) has an upper copy marked
    /// as holding entries with an origin; asked once per node.
    fn impure(&self, dir: &Node, path: &Path, layers: &[usize]) -> bool {
        match dir.impure.load(Ordering::Relaxed) {
            0 => {
                let impure = layers.first() == Some(&UPPER)
                    && self.origins.load(Ordering::Relaxed)
                    && crate::origin::is_impure(&self.layers, path);
                dir.impure
                    .store(if impure { 2 } else { 1 }, Ordering::Relaxed);
                impure
            }
            known => known == 2,
        }
    }

    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.rename_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.rename_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn node(&self, ino: u64) -> Res<Arc<Node>> {
        self.table.get(ino).ok_or(Errno::STALE)
    }

    /// The names of a node: (directory, name) pairs.
    pub(crate) fn names(&self, ino: u64) -> Vec<(u64, OsString)> {
        self.table
            .get(ino)
            .map_or_else(Vec::new, |node| node.state().links.clone())
    }

    /// The path of a live node relative to the branch roots ("" for the root).
    pub(crate) fn path(&self, ino: u64) -> Res<PathBuf> {
        let mut names: Vec<OsString> = Vec::new();
        let mut current = ino;
        while current != ROOT {
            if names.len() > 4096 {
                return Err(Errno::LOOP);
            }
            let node = self.node(current)?;
            let state = node.state();
            let (parent, name) = state
                .links
                .iter()
                .find(|(parent, _)| *parent == ROOT || self.table.get(*parent).is_some())
                .cloned()
                .ok_or(Errno::STALE)?;
            drop(state);
            names.push(name);
            current = parent;
        }
        Ok(names.iter().rev().collect())
    }

    /// Resolves `rel` through `parent_layers` (the parent's merged branches), top-down.
    pub(crate) fn resolve(&self, parent_layers: &[usize], rel: &Path) -> Res<Found> {
        self.resolve_below(parent_layers, rel, None)
    }

    /// [`resolve`](Self::resolve), passing over the lower branches above `listed_in` (see
    /// [`lookup_listed`](Self::lookup_listed)); the upper is always looked at, as it may
    /// have changed since the listing. A branch the parent no longer merges (it was made
    /// opaque meanwhile) passes over nothing.
    fn resolve_below(
        &self,
        parent_layers: &[usize],
        rel: &Path,
        listed_in: Option<usize>,
    ) -> Res<Found> {
        let mut top: Option<(Meta, usize)> = None;
        let mut dirs = Vec::new();
        let mut numbered_by = None;
        if self.layers.is_aufs_marker(rel) {
            return Err(Errno::NOENT);
        }
        let first = listed_in
            .and_then(|listed| parent_layers.iter().position(|&layer| layer == listed))
            .unwrap_or(0);
        for (at, &layer) in parent_layers.iter().enumerate() {
            if at < first && layer != UPPER {
                continue;
            }
            let meta = match self.layers.stat(layer, rel) {
                Ok(meta) => meta,
                Err(Errno::NOENT | Errno::NOTDIR) if self.layers.aufs_whiteout(layer, rel) => break,
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(err) => return Err(err),
            };
            if meta.is_whiteout() {
                break;
            }
            if top.is_none() {
                top = Some((meta, layer));
            }
            if !meta.is_dir() {
                break;
            }
            if dirs.len() == 1 && dirs[0] == UPPER {
                numbered_by = Some((meta.key(), layer));
            }
            dirs.push(layer);
            if self.layers.is_opaque(layer, rel) || self.layers.aufs_whiteout(layer, rel) {
                break;
            }
        }
        let (mut meta, layer) = top.ok_or(Errno::NOENT)?;
        if dirs.len() > 1 {
            // A merged directory reports nlink 1, like overlayfs (ovl_getattr).
            meta.nlink = 1;
        }
        Ok(Found {
            meta,
            layer,
            dir_layers: dirs,
            numbered_by,
        })
    }

    /// Whether a lower branch (below upper) shows something at `rel` in a directory merged
    /// from `parent_layers`: then removing or renaming `rel` needs a whiteout.
    pub(crate) fn lower_has(&self, parent_layers: &[usize], rel: &Path) -> Res<bool> {
        if self.layers.is_aufs_marker(rel) {
            return Ok(false);
        }
        for &layer in parent_layers.iter().filter(|&&l| l != UPPER) {
            match self.layers.stat(layer, rel) {
                Ok(meta) => return Ok(!meta.is_whiteout()),
                Err(Errno::NOENT | Errno::NOTDIR) if self.layers.aufs_whiteout(layer, rel) => {
                    return Ok(false);
                }
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(false)
    }

    pub(crate) fn dir_state(&self, ino: u64) -> Res<(Arc<Node>, PathBuf, Vec<usize>)> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(Errno::NOTDIR);
        }
        let path = match self.path(ino) {
            // Removed: what is made or looked up in a deleted directory is not there (as
            // on any file system), rather than a stale handle.
            Err(Errno::STALE) if node.removed_dir.get().is_some() => return Err(Errno::NOENT),
            path => path?,
        };
        let layers = node.state().dir_layers.clone();
        Ok((node, path, layers))
    }

    /// The inode number of a found entry (see `Found::numbered_by`); an upper file this mount
    /// has numbered already (a copy-up, an earlier lookup) keeps that number.
    fn number(&self, found: &Found) -> u64 {
        self.number_of(
            found.meta.key(),
            found.layer,
            found.meta.is_dir(),
            found.numbered_by,
        )
    }

    /// The number of real file `own` (in branch `layer`), numbered by `numbered_by` if
    /// given (see `Found::numbered_by`). A copied-up file takes its origin's number only if no
    /// other file has it; the upper file then answers with it (aliased), as after a copy-up
    /// in this mount, so that operations find the node by the file they reach.
    fn number_of(
        &self,
        own: (u64, u64),
        layer: usize,
        is_dir: bool,
        numbered_by: Option<((u64, u64), usize)>,
    ) -> u64 {
        let Some((by, by_layer)) = numbered_by else {
            return self.own_number(own, layer);
        };
        if let Some(ino) = self.table.existing_ino(own) {
            return ino;
        }
        let ino = self
            .table
            .existing_ino(by)
            .unwrap_or_else(|| self.table.ino_for(by, by_layer));
        if !is_dir && !self.table.lend(ino, own) {
            return self.own_number(own, layer);
        }
        self.table.alias(own, ino, layer);
        ino
    }

    /// The number of real file `key` reached in branch `layer` as itself: its own, unless
    /// an upper copy of it took that one through its origin (the lower file is visible at
    /// another path than the one it was copied up from): then a new one.
    fn own_number(&self, key: (u64, u64), layer: usize) -> u64 {
        let ino = self.table.ino_for(key, layer);
        match self.table.lent_to(ino) {
            Some(upper) if upper != key => self.table.renumber(key, layer),
            _ => ino,
        }
    }

    /// `ino` for real file `key` in branch `layer`, unless a live node has that number with
    /// the other type: a real inode recycled while its old node lives on (a directory
    /// removed and its number given to a file made right after, before the removal forgot
    /// the number). The kernel would find its inode changed type and call it bad (EIO): a
    /// new number. Lookups and listings apply it alike, so d_ino and st_ino agree.
    fn unless_retyped(&self, ino: u64, key: (u64, u64), layer: usize, is_dir: bool) -> u64 {
        match self.table.get(ino) {
            Some(node) if node.is_dir != is_dir => self.table.renumber(key, layer),
            _ => ino,
        }
    }

    /// Registers a found entry as a live node with one more kernel lookup.
    pub(crate) fn enter(&self, parent: u64, name: &OsStr, found: Found) -> Entry {
        let is_dir = found.meta.is_dir();
        let ino = self.unless_retyped(self.number(&found), found.meta.key(), found.layer, is_dir);
        let state = NodeState {
            links: vec![(parent, name.to_os_string())],
            layer: found.layer,
            dir_layers: found.dir_layers,
        };
        let node = self.table.lookup(ino, is_dir, state);
        if found.layer != UPPER && found.meta.kind() == Kind::File {
            let _ = node.lower_file.set((found.meta.size, found.meta.nlink));
        }
        let upper = node.state().layer == UPPER;
        Entry {
            ino,
            meta: found.meta,
            upper,
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Res<Entry> {
        self.lookup_below(parent, name, None)
    }

    /// A lookup of an entry of `parent`'s listing, which found it first in branch `layer`:
    /// the lower branches above that one are passed over (they never change, and the
    /// listing saw no such name there, nor a whiteout of it). On a cold READDIRPLUS of a
    /// directory merged from several branches this saves most of the stat(2) calls.
    pub fn lookup_listed(&self, parent: u64, name: &OsStr, layer: usize) -> Res<Entry> {
        self.lookup_below(parent, name, Some(layer))
    }

    fn lookup_below(&self, parent: u64, name: &OsStr, listed_in: Option<usize>) -> Res<Entry> {
        let _shared = self.shared();
        let (dir, path, layers) = self.dir_state(parent)?;
        let rel = path.join(name);
        let mut found = self.resolve_below(&layers, &rel, listed_in)?;
        // (an upper file this mount numbered already keeps that number: no origin to read)
        if found.layer == UPPER
            && !found.meta.is_dir()
            && self.table.existing_ino(found.meta.key()).is_none()
            && self.impure(&dir, &path, &layers)
        {
            found.numbered_by = self.origin(&rel, found.meta.kind());
        }
        Ok(self.enter(parent, name, found))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.table.forget(ino, count);
        if self.ties.any.load(Ordering::Relaxed) && self.table.get(ino).is_none() {
            self.ties.untie(Some(ino), None);
        }
    }

    /// The numbers tied to `ino` (see `Ties`): its copy's, or those it superseded.
    pub(crate) fn tied(&self, ino: u64) -> Vec<u64> {
        self.ties.tied(ino)
    }

    /// The live nodes of the numbers the copy-up of `copy` superseded (see `Ties`): a name
    /// `copy` gains or loses, they do too.
    pub(crate) fn superseded_nodes(&self, copy: u64) -> Vec<Arc<Node>> {
        self.ties
            .superseded(copy)
            .into_iter()
            .filter_map(|old| self.table.get(old))
            .collect()
    }

    /// The last name of the file numbered `copy` went: nothing is tied to it any more.
    pub(crate) fn untie_copy(&self, copy: u64) {
        self.ties.untie(None, Some(copy));
    }

    /// Whether the kernel still knows inode `ino` (it has not forgotten every lookup).
    pub fn is_live(&self, ino: u64) -> bool {
        self.table.get(ino).is_some()
    }

    pub(crate) fn attr(&self, node: &Node) -> Res<Entry> {
        let path = self.path(node.ino)?;
        let (layer, merged) = {
            let state = node.state();
            (state.layer, state.dir_layers.len() > 1)
        };
        let mut meta = self.layers.stat(layer, &path)?;
        // The name was removed (whited out) since the node's path was taken, by a request
        // beside this one: the whiteout's attributes are not the file's, and a device
        // where the kernel has a file makes it call the inode bad (EIO).
        if meta.is_whiteout() {
            return Err(Errno::STALE);
        }
        if merged {
            meta.nlink = 1;
        }
        Ok(Entry {
            ino: node.ino,
            meta,
            upper: layer == UPPER,
        })
    }

    /// getattr; with an open handle, from the open file (it may be unlinked).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Res<Entry> {
        let _shared = self.shared();
        // A lower file not opened yet has a name while its node has a path (lower files
        // never go away): the node's attributes serve, without opening it.
        if let Some(file) = fh.and_then(|fh| self.files.get(fh).ok())
            && (file.lower_size_nlink().is_none() || self.path(ino).is_err())
        {
            let meta = Meta::from_stat(&rustix::fs::fstat(self.fd(&file)?)?);
            if meta.nlink == 0 || self.path(ino).is_err() {
                return Ok(Entry {
                    ino,
                    meta,
                    upper: file.upper,
                });
            }
        }
        let node = self.node(ino)?;
        match self.attr(&node) {
            // fstat(2) of a file whose every name is gone comes without its handle
            // (vfs_getattr has no file): answer from any open file of the inode.
            // An upper handle is the file itself; a lower one shows what it reads, with
            // nlink 0, as every name is gone.
            Err(Errno::STALE) if node.removed_dir.get().is_some() => Ok(Entry {
                ino,
                meta: **node.removed_dir.get().ok_or(Errno::STALE)?,
                upper: true,
            }),
            Err(Errno::STALE) => {
                let file = self.unlinked_open(ino, false)?;
                let mut meta = Meta::from_stat(&rustix::fs::fstat(self.fd(&file)?)?);
                meta.nlink = 0;
                Ok(Entry {
                    ino,
                    meta,
                    upper: file.upper,
                })
            }
            attr => attr,
        }
    }

    pub fn readlink(&self, ino: u64) -> Res<Vec<u8>> {
        let _shared = self.shared();
        let node = self.node(ino)?;
        let path = self.path(ino)?;
        let layer = node.state().layer;
        Ok(rustix::fs::readlinkat(self.layers.fd(layer), arg(&path), Vec::new())?.into_bytes())
    }

    /// The merged listing of a directory: upper entries hide lower ones of the same name,
    /// whiteouts hide and are not shown, nothing below an opaque directory.
    pub(crate) fn list(&self, dir_layers: &[usize], rel: &Path) -> Res<Vec<Listed>> {
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut out: Vec<Listed> = Vec::new();
        // Upper directories by name (their index in `out`), until a lower one is found.
        let mut upper_dirs: HashMap<OsString, usize> = HashMap::new();
        for &layer in dir_layers {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = match self.layers.open_to_read(layer, rel, flags) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(err) => return Err(err),
            };
            let dev = Meta::from_stat(&rustix::fs::fstat(&fd)?).dev;
            let xattr_whiteouts = self.layers.may_hold_xattr_whiteouts(layer, fd.as_fd());
            let mut dir = rustix::fs::Dir::new(fd)?;
            // Names an AUFS marker hides, from the branches below this one only.
            let mut hidden = Vec::new();
            while let Some(entry) = dir.read() {
                let entry = entry?;
                let bytes = entry.file_name().to_bytes();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                if self.layers.markers_in(layer)
                    && let Some(hides) = aufs_marker(bytes)
                {
                    hidden.extend(hides.map(OsStr::to_os_string));
                    continue;
                }
                let name = OsStr::from_bytes(bytes).to_os_string();
                if seen.contains(&name) {
                    if !upper_dirs.is_empty()
                        && matches!(
                            entry.file_type(),
                            rustix::fs::FileType::Directory | rustix::fs::FileType::Unknown
                        )
                        && let Some(at) = upper_dirs.remove(&name)
                    {
                        out[at].merged = true;
                    }
                    continue;
                }
                let mut kind = Kind::from_file_type(entry.file_type());
                let mut ino = entry.ino();
                if matches!(kind, None | Some(Kind::CharDevice))
                    || (xattr_whiteouts && kind == Some(Kind::File))
                {
                    let meta = self.layers.stat(layer, &rel.join(&name))?;
                    if meta.is_whiteout() {
                        seen.insert(name);
                        continue;
                    }
                    kind = Some(meta.kind());
                    ino = meta.ino;
                }
                seen.insert(name.clone());
                let kind = kind.unwrap_or(Kind::File);
                if layer == UPPER && kind == Kind::Dir && dir_layers.len() > 1 {
                    upper_dirs.insert(name.clone(), out.len());
                }
                out.push(Listed {
                    name,
                    kind,
                    key: (dev, ino),
                    layer,
                    merged: false,
                });
            }
            seen.extend(hidden);
        }
        Ok(out)
    }

    /// The merged listing of directory `ino` (with "." and ".."), for a READDIR at
    /// `offset`: a fresh snapshot at offset 0, else the one that reader started with.
    pub fn dir_entries(&self, ino: u64, offset: u64) -> Res<Listing> {
        let (id, start) = if offset & SNAPSHOT != 0 {
            (Some(offset >> INDEX_BITS & (IDS - 1)), offset & INDEX_MASK)
        } else {
            (None, offset)
        };
        let start = start as usize;
        if let Some(id) = id
            && let Some(entries) = self.listings().get(id, ino)
        {
            return Ok(Listing {
                entries,
                id: Some(id),
                start,
            });
        }
        let entries = Arc::new(self.listing(ino)?);
        if entries.len() as u64 >= INDEX_MASK {
            return Ok(Listing {
                entries,
                id: None,
                start,
            });
        }
        let id = self
            .listings()
            .insert(&self.listings.next, Snapshot::new(ino, entries.clone()));
        Ok(Listing {
            entries,
            id: Some(id),
            start,
        })
    }

    /// The reader of `listing` got its last chunk.
    pub fn dir_entries_done(&self, listing: &Listing) {
        if let Some(id) = listing.id {
            self.listings().finish(id);
        }
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        self.listings
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn listing(&self, ino: u64) -> Res<Vec<DirEntry>> {
        let _shared = self.shared();
        let (node, path, layers) = self.dir_state(ino)?;
        let parent = node.state().links.first().map_or(ROOT, |(p, _)| *p);
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino,
                kind: Kind::Dir,
                layer: UPPER,
            },
            DirEntry {
                name: "..".into(),
                ino: parent,
                kind: Kind::Dir,
                layer: UPPER,
            },
        ];
        // An upper directory holding copied-up files: their numbers are their origins'.
        let impure = self.impure(&node, &path, &layers);
        for Listed {
            name,
            kind,
            key,
            layer,
            merged,
        } in self.list(&layers, &path)?
        {
            // A merged directory's number is its lower directory's, a copied-up file's its
            // origin's, as their stat says.
            let numbered_by = if merged {
                self.resolve(&layers, &path.join(&name))
                    .ok()
                    .and_then(|found| found.numbered_by)
            } else if impure
                && layer == UPPER
                && kind != Kind::Dir
                && self.table.existing_ino(key).is_none()
            {
                self.origin(&path.join(&name), kind)
            } else {
                None
            };
            let is_dir = kind == Kind::Dir;
            let ino = self.number_of(key, layer, is_dir, numbered_by);
            let ino = self.unless_retyped(ino, key, layer, is_dir);
            entries.push(DirEntry {
                name,
                ino,
                kind,
                layer,
            });
        }
        Ok(entries)
    }

    /// Opens a regular file; `write` copies it up first.
    pub fn open(&self, ino: u64, write: bool) -> Res<(u64, Arc<OpenFile>)> {
        self.open_appending(ino, write, false, Later::Sync)
    }

    /// An open; `append`: the caller opened with O_APPEND (see [`Union::open_real_for`]);
    /// `later`: what of a copy-up it allows to finish in the background (`pending.rs`: an
    /// opener that only appends may get a copy whose data is still coming).
    pub(crate) fn open_appending(
        &self,
        ino: u64,
        write: bool,
        append: bool,
        later: Later,
    ) -> Res<(u64, Arc<OpenFile>)> {
        let _shared = self.shared();
        let node = self.node(ino)?;
        let path = if write {
            self.copy_up_node_for(&node, later)
        } else {
            self.path(ino)
        };
        let path = match path {
            Err(Errno::STALE) => return self.open_again(ino, write),
            path => path?,
        };
        let layer = node.state().layer;
        if !write && layer == UPPER {
            // (a copy that shows may be being filled; once it shows, no job starts for it)
            self.pending.settle(ino, Need::Data)?;
        }
        if layer != UPPER
            && let Some(&size_nlink) = node.lower_file.get()
        {
            return Ok(self.files.insert(OpenFile {
                fd: OnceLock::new(),
                copy: OnceLock::new(),
                append_only: false,
                lower: Some(LowerFile {
                    layer,
                    path,
                    size_nlink,
                }),
                ino,
                upper: false,
            }));
        }
        let fd = match self.open_real_for(layer, &path, write, append && write) {
            // The name was unlinked (or whited out: a 0/0 device opens as ENXIO) between
            // the caller's lookup and this open. ESTALE has the kernel walk the path again
            // with revalidation (LOOKUP_REVAL), so an O_CREAT open creates the file, as it
            // would have on a file system where lookup and open are one step.
            Err(Errno::NOENT | Errno::NXIO) => return Err(Errno::STALE),
            fd => fd?,
        };
        let append_only = layer == UPPER
            && write
            && rustix::fs::fcntl_getfl(&fd).is_ok_and(|f| f.contains(OFlags::APPEND));
        let mut file = OpenFile::new(fd, ino, layer == UPPER);
        file.append_only = append_only;
        Ok(self.files.insert(file))
    }

    /// A lower file was opened to read (not to run): perhaps one of a scan of its directory,
    /// which `prefetch.rs` then reads ahead.
    pub(crate) fn opened_to_read(&self, file: &OpenFile) {
        if let Some(lower) = &file.lower {
            self.prefetch.opened(&self.layers, lower.layer, &lower.path);
        }
    }

    /// An open of a file whose every name is gone: through /proc/PID/fd, of an O_TMPFILE or
    /// of an unlinked file. Another open file of the inode is opened again through its
    /// descriptor (upper files read-write, as `open_real` opens them).
    fn open_again(&self, ino: u64, write: bool) -> Res<(u64, Arc<OpenFile>)> {
        let other = self.unlinked_open(ino, write)?;
        let flags = if other.upper {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let fd = self.fd(&other)?.as_raw_fd();
        let again = rustix::fs::open(
            format!("/proc/self/fd/{fd}"),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(self.files.insert(OpenFile::new(again, ino, other.upper)))
    }

    /// The real file of an open file, opened now if it was not yet (see [`OpenFile`]).
    pub fn fd<'a>(&self, file: &'a OpenFile) -> Res<BorrowedFd<'a>> {
        if let Some(fd) = file.fd.get() {
            return Ok(fd.as_fd());
        }
        let lower = file.lower.as_ref().ok_or(Errno::BADF)?;
        let fd = self.open_real(lower.layer, &lower.path, false)?;
        // Two first uses at once each open it; one keeps its descriptor.
        let _ = file.fd.set(fd);
        Ok(file.fd.get().ok_or(Errno::BADF)?.as_fd())
    }

    /// Upper files open read-write whatever the request (one backing file serves every
    /// open of an inode under passthrough); lower files read-only.
    pub(crate) fn open_real(&self, layer: usize, path: &Path, write: bool) -> Res<OwnedFd> {
        self.open_real_for(layer, path, write, false)
    }

    /// [`Union::open_real`] for an opener that appends (O_APPEND): an append-only upper file
    /// (chattr +a) opens for it, for appending (its handle is `append_only`); any other
    /// writer of such a file gets EPERM, as from the kernel's may_open.
    fn open_real_for(&self, layer: usize, path: &Path, write: bool, append: bool) -> Res<OwnedFd> {
        let flags = OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if layer == UPPER {
            let open = |extra: OFlags| {
                rustix::fs::openat(
                    self.layers.fd(layer),
                    arg(path),
                    flags | OFlags::RDWR | extra,
                    Mode::empty(),
                )
            };
            match open(OFlags::empty()) {
                // chattr +a: only an opener that appends may write (as may_open has it)
                Err(Errno::PERM) if write && append => return open(OFlags::APPEND),
                Err(Errno::ACCESS | Errno::PERM | Errno::ROFS | Errno::TXTBSY) if !write => {}
                other => return other,
            }
        }
        self.layers
            .open_to_read(layer, path, flags | OFlags::RDONLY)
    }

    /// Gives the copied-up file of `ino` a new inode number, leaving `ino` to the open
    /// files that still read the lower file (`fuse.rs` says why). The old node keeps the
    /// copy's names, tied to it (`Ties`), so requests on those open files (fstat, fchmod)
    /// reach the copy.
    /// Returns the copy's number, if it has one other than `ino`.
    pub fn supersede(&self, ino: u64) -> Res<Option<u64>> {
        let _shared = self.shared();
        let path = self.path(ino)?;
        let node = self.node(ino)?;
        if node.state().layer != UPPER {
            return Err(Errno::IO);
        }
        let key = self.layers.stat(UPPER, &path)?.key();
        // Tied before an unlink or rename of the name can see the copy's number: the
        // open that needs the copy holds no lock of the kernel's that would keep them out.
        Ok(self.ties.tie_with(ino, || {
            if self.table.existing_ino(key) == Some(ino) {
                let new = self.table.renumber(key, UPPER);
                tracing::debug!(
                    "{}: copied up under readers, inode {ino} is now {new}",
                    path.display()
                );
            }
            let new = self
                .table
                .existing_ino(key)
                .filter(|&current| current != ino);
            if let Some(new) = new {
                // (requests on the new number wait for the copy's job too)
                self.pending.alias(ino, new);
            }
            new
        }))
    }

    /// Waits for every copy-up job to be done (see `Pending::settle`).
    pub fn settle_all(&self) {
        self.pending.settle_all(Need::Durable);
    }

    pub fn file(&self, fh: u64) -> Res<Arc<OpenFile>> {
        self.files.get(fh)
    }

    pub fn release(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let file = self.files.remove(fh)?;
        // An upper file with no name left (an O_TMPFILE not linked yet, or one unlinked
        // while it had other names) is freed once its last descriptor closes, and its
        // inode may then be recycled: forget its number while a descriptor still holds the
        // inode, or a new file or directory with the recycled inode would take this node
        // (and its kind). A link of an O_TMPFILE binds it again.
        let nameless = file.upper
            && self
                .table
                .get(file.ino)
                .is_none_or(|node| node.state().links.is_empty());
        if nameless
            && let Some(fd) = file.fd.get()
            && let Ok(st) = rustix::fs::fstat(fd)
            && st.st_nlink == 0
        {
            let key = Meta::from_stat(&st).key();
            if self.table.unalias_number(key, file.ino) {
                self.untie_copy(file.ino);
            }
        }
        Some(file)
    }

    /// The file a handle's data comes from: its own, or for a lower file copied up since
    /// it was opened (by another handle's write), the copy. Otherwise a reader holding the
    /// file open would read the old data, and its reads would fill the page cache that
    /// every later open of the file shares with it.
    fn data_fd<'a>(&self, file: &'a OpenFile) -> Res<BorrowedFd<'a>> {
        if file.upper {
            return self.fd(file);
        }
        if let Some(fd) = file.copy.get() {
            return Ok(fd.as_fd());
        }
        let copied = self
            .table
            .get(file.ino)
            .is_some_and(|node| node.state().layer == UPPER);
        if !copied {
            return self.fd(file);
        }
        let _shared = self.shared();
        match self.path(file.ino) {
            Ok(path) => {
                let fd = self.open_real(UPPER, &path, false)?;
                let _ = file.copy.set(fd);
                Ok(file.copy.get().ok_or(Errno::BADF)?.as_fd())
            }
            // every name gone: the lower file is all there is to read
            Err(Errno::STALE) => self.fd(file),
            Err(err) => Err(err),
        }
    }

    /// Reads from `offset` into `buf` until it is full or the file ends; returns how much.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Res<usize> {
        let file = self.files.get(fh)?;
        let fd = self.data_fd(&file)?;
        // (after `data_fd`: a copy it switched to may be being filled)
        self.pending.settle(file.ino, Need::Data)?;
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(done)
    }

    /// A write; `drop_setid`, a caller that may not keep the file's set-ID bits, clears
    /// them first, as a write through the kernel does (see [`drop_setid`]): never is the
    /// new content there under the old bits.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        drop_setid: Option<Unprivileged>,
    ) -> Res<u32> {
        let file = self.files.get(fh)?;
        if !file.upper {
            return Err(Errno::BADF);
        }
        self.pending.settle_write(file.ino, offset)?;
        let fd = self.fd(&file)?;
        if let Some(caller) = &drop_setid {
            self::drop_setid(fd, caller)?;
        }
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(done as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        let file = self.files.get(fh)?;
        if file.lower_size_nlink().is_some() || self.layers.volatile {
            // A lower file, read only and not even opened yet: nothing to write out (and a
            // volatile union writes nothing out).
            return Ok(());
        }
        // (its copy-up's job syncs the data and removes the record that would undo it)
        self.pending.settle(file.ino, Need::Durable)?;
        let fd = self.fd(&file)?;
        if datasync {
            rustix::fs::fdatasync(fd)
        } else {
            rustix::fs::fsync(fd)
        }
    }

    pub fn fsyncdir(&self, ino: u64) -> Res<()> {
        if self.layers.volatile {
            return Ok(());
        }
        let _shared = self.shared();
        let node = self.node(ino)?;
        if node.state().layer != UPPER {
            return Ok(());
        }
        let path = self.path(ino)?;
        let fd = rustix::fs::openat(
            self.layers.fd(UPPER),
            arg(&path),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fsync(&fd)
    }

    pub fn statfs(&self) -> Res<rustix::fs::StatVfs> {
        rustix::fs::fstatvfs(self.layers.fd(UPPER))
    }

    /// getxattr; the union's own attributes do not exist for users of the mount, whose
    /// `trusted.overlay.*` are stored escaped (`stored_xattr`).
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Res<Vec<u8>> {
        let name = &*stored_xattr(name);
        let _shared = self.shared();
        let node = self.node(ino)?;
        if name.as_bytes() == b"security.capability"
            && node.caps_free.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Errno::NODATA);
        }
        let path = match self.path(ino) {
            Err(Errno::STALE) => {
                let file = self.unlinked_file(ino, false)?;
                return file
                    .get_xattr(name)
                    .map_err(|e| io_errno(&e))?
                    .ok_or(Errno::NODATA);
            }
            path => path?,
        };
        let layer = node.state().layer;
        get_xattr(&self.layers.abs(layer, &path), name)
    }

    /// An open file of `ino` whose every name is gone, for the requests that come
    /// without a handle (fstat, fchmod, fgetxattr and the like): an upper one if there is
    /// one, else a lower one unless `upper`; STALE if none. Rare: a scan of the handles.
    pub(crate) fn unlinked_open(&self, ino: u64, upper: bool) -> Res<Arc<OpenFile>> {
        self.files
            .find(|f| f.ino == ino && f.upper)
            .or_else(|| {
                (!upper)
                    .then(|| self.files.find(|f| f.ino == ino))
                    .flatten()
            })
            .ok_or(Errno::STALE)
    }

    /// [`Union::unlinked_open`] as a `File` (a dup of its descriptor), for the xattr crate.
    pub(crate) fn unlinked_file(&self, ino: u64, upper: bool) -> Res<std::fs::File> {
        let file = self.unlinked_open(ino, upper)?;
        let fd = self.fd(&file)?.try_clone_to_owned();
        Ok(std::fs::File::from(fd.map_err(|e| io_errno(&e))?))
    }

    /// listxattr as the NUL-separated list the syscall returns, private names removed.
    pub fn listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        let _shared = self.shared();
        let node = self.node(ino)?;
        let names = match self.path(ino) {
            Err(Errno::STALE) => {
                let file = self.unlinked_file(ino, false)?;
                file.list_xattr().map_err(|e| io_errno(&e))?.collect()
            }
            path => list_xattrs(&self.layers.abs(node.state().layer, &path?))?,
        };
        let mut out = Vec::new();
        for name in names.iter().filter_map(|name| shown_xattr(name)) {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Live nodes (for tests and diagnostics).
    pub fn live_nodes(&self) -> usize {
        self.table.live_count()
    }

    pub(crate) fn upper_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.layers.fd(UPPER)
    }
}

/// A caller that may not keep the set-ID bits of the files it writes (one without
/// CAP_FSETID): its gid in the branches' ids, and its pid, for its supplementary groups.
#[derive(Clone, Copy, Debug)]
pub struct Unprivileged {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub shift: Option<crate::IdShift>,
}

impl Unprivileged {
    /// Whether the caller is in group `gid` (branch ids): its own, or one of its
    /// supplementary groups, which the request does not carry: read from /proc. Root in
    /// the branches' ids counts as in every group: host root, or the root of a
    /// `--userns private` container, which holds CAP_FSETID over the files its namespace
    /// maps (`in_group_or_capable`).
    fn in_group(&self, gid: u32) -> bool {
        self.uid == 0
            || gid == self.gid
            || std::fs::read_to_string(format!("/proc/{}/status", self.pid)).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Groups:"))
                    .is_some_and(|groups| {
                        groups
                            .split_whitespace()
                            .filter_map(|g| g.parse().ok())
                            .map(|g| self.shift.map_or(g, |shift| shift.to_image(g)))
                            .any(|g| g == gid)
                    })
            })
    }
}

/// Clears a file's set-ID bits as the kernel does when a caller without CAP_FSETID writes,
/// truncates or chowns it (`setattr_should_drop_suidgid`): set-user-ID always, set-group-ID
/// when the file is group-executable or the caller is not in its group; only on regular
/// files. This server works as root, whose changes keep both, so it drops them itself for
/// the callers that may not keep them (FUSE_HANDLE_KILLPRIV_V2, see `fuse.rs`).
pub(crate) fn drop_setid(fd: BorrowedFd<'_>, caller: &Unprivileged) -> Res<()> {
    let st = rustix::fs::fstat(fd)?;
    if let Some(mode) = without_setid(st.st_mode, st.st_gid, caller) {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    }
    Ok(())
}

/// [`drop_setid`] for the file at `path` under `dir`, if it is a regular file (opened
/// without following a link).
pub(crate) fn drop_setid_at(dir: BorrowedFd<'_>, path: &Path, caller: &Unprivileged) -> Res<()> {
    let st = rustix::fs::statat(dir, arg(path), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    if without_setid(st.st_mode, st.st_gid, caller).is_some() {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = rustix::fs::openat(dir, arg(path), flags | OFlags::CLOEXEC, Mode::empty())?;
        drop_setid(fd.as_fd(), caller)?;
    }
    Ok(())
}

/// The permission bits a file of `mode` and group `gid` is left with by [`drop_setid`],
/// or None if it keeps them.
pub(crate) fn without_setid(mode: u32, gid: u32, caller: &Unprivileged) -> Option<u32> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut drop = libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller.in_group(gid)) {
        drop |= libc::S_ISGID;
    }
    (mode & drop != 0).then_some(mode & 0o7777 & !drop)
}

/// The process umask, read without changing it (setting and restoring it would race with
/// other threads creating files): /proc/self/status has it since Linux 4.7.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

/// The inode flags ioctls (lsattr, chattr; FUSE sends them since Linux 5.13 for
/// fileattr_get/set): `_IOR('f', 1, long)`, `_IOW('f', 2, long)` (an int is passed),
/// `_IOR('X', 31, struct fsxattr)`, `_IOW('X', 32, struct fsxattr)`.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

impl Union {
    /// An inode flags ioctl on the real file: read from the topmost branch holding it,
    /// set on the upper copy (copied up first). This server acts as root, so it checks
    /// the caller itself, as vfs_fileattr_set does (kernels before 5.13 pass these
    /// ioctls on unchecked): `who` is (caller is root, caller is root or the owner); only
    /// the owner may set flags, and only root change the immutable, append-only and
    /// data-journalling ones. Regular files and directories only.
    /// `input` is the flags (an int) or a `struct fsxattr`; the ioctl's answer comes back.
    pub fn fileattr(&self, ino: u64, cmd: u32, input: &[u8], who: (bool, bool)) -> Res<Vec<u8>> {
        let (size, guarded) = match cmd {
            // FS_IMMUTABLE_FL, FS_APPEND_FL, FS_JOURNAL_DATA_FL
            FS_IOC_GETFLAGS | FS_IOC_SETFLAGS => (4, 0x10 | 0x20 | 0x4000),
            // FS_XFLAG_IMMUTABLE, FS_XFLAG_APPEND
            FS_IOC_FSGETXATTR | FS_IOC_FSSETXATTR => (28, 0x8 | 0x10),
            _ => return Err(Errno::NOTTY),
        };
        let set = matches!(cmd, FS_IOC_SETFLAGS | FS_IOC_FSSETXATTR);
        let (root, owner) = who;
        if set && !owner {
            return Err(Errno::PERM);
        }
        if set {
            // (an immutable or append-only flag would stop the copy-up's job)
            self.pending.settle(ino, Need::Data)?;
        }
        let _shared = self.shared();
        let node = self.node(ino)?;
        let path = self.path(ino)?;
        let kind = self.layers.stat(node.state().layer, &path)?.mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Err(Errno::NOTTY);
        }
        let path = if set { self.copy_up_node(&node)? } else { path };
        let layer = node.state().layer;
        let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        if node.is_dir {
            flags |= OFlags::DIRECTORY;
        }
        let fd = rustix::fs::openat(self.layers.fd(layer), arg(&path), flags, Mode::empty())?;
        let get = if set {
            match cmd {
                FS_IOC_SETFLAGS => FS_IOC_GETFLAGS,
                _ => FS_IOC_FSGETXATTR,
            }
        } else {
            cmd
        };
        let mut current = vec![0u8; size];
        crate::sys::ioctl_buf(fd.as_fd(), get, &mut current)?;
        if !set {
            return Ok(current);
        }
        let mut wanted = arg_bytes(input, size)?.to_vec();
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if !root && (word(&current) ^ word(&wanted)) & guarded != 0 {
            return Err(Errno::PERM);
        }
        crate::sys::ioctl_buf(fd.as_fd(), cmd, &mut wanted)?;
        Ok(Vec::new())
    }

    /// lseek with SEEK_DATA or SEEK_HOLE, answered by the real file: the kernel does the
    /// other kinds itself, and without this would take a whole file for data.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Res<i64> {
        let file = self.files.get(fh)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::NXIO)?;
        let to = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset),
            _ => return Err(Errno::INVAL),
        };
        let fd = self.data_fd(&file)?;
        self.pending.settle(file.ino, Need::Data)?;
        // The handle's own offset moves, but reads and writes give theirs.
        Ok(rustix::fs::seek(fd, to)? as i64)
    }

    /// fallocate; `drop_setid` as for [`Union::write`].
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        drop_setid: Option<Unprivileged>,
    ) -> Res<()> {
        let file = self.files.get(fh)?;
        if !file.upper {
            return Err(Errno::BADF);
        }
        self.pending.settle(file.ino, Need::Data)?;
        if let Some(caller) = &drop_setid {
            self::drop_setid(self.fd(&file)?, caller)?;
        }
        rustix::fs::fallocate(
            self.fd(&file)?,
            rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
            offset,
            len,
        )
    }
}

/// The first `size` bytes of an ioctl's input; EINVAL when it is shorter.
fn arg_bytes(input: &[u8], size: usize) -> Res<&[u8]> {
    input.get(..size).ok_or(Errno::INVAL)
}
