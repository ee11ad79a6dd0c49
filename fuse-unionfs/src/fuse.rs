//! The fuser 0.18 callbacks: each translates one request into a call on [`Union`] and
//! sends one reply. Kernel caching is decided here: long TTLs (everything changes only
//! through this mount), negative entries, FOPEN_KEEP_CACHE and FOPEN_NOFLUSH, cached
//! directory listings without OPENDIR round trips, readdirplus (with attributes for callers
//! that stat what they list, see `plus`), and FUSE passthrough for
//! writers and big files (one BackingId per inode, shared by all its opens) with writeback
//! caching as the fallback when the kernel refuses passthrough (the two exclude each other,
//! fs/fuse/inode.c process_init_reply). A passthrough open carries no other FOPEN flags
//! (FOPEN_PASSTHROUGH_MASK, fs/fuse/iomode.c).
//!
//! The kernel allows one backing file per inode while any of its files is open. A big
//! lower file read through passthrough and then copied up cannot switch its backing file
//! to the copy while readers hold it. The open that needs the copy then gives it a new
//! inode number and fails with ESTALE; the kernel looks the name up again (do_filp_open
//! retries with LOOKUP_REVAL), finds the new number and opens that. A truncate by path,
//! which opens nothing, gives the copy its number itself and has the kernel forget the
//! name (`Invalidator`). The readers keep the lower file: a known difference from
//! overlayfs, whose readers follow the copy-up. Their inode still stands for the file in
//! all else: it has the copy's names (`Union::superseded_nodes`), attributes and xattrs,
//! and a chmod, chown, touch, xattr change, link, unlink or rename through either number
//! has the kernel drop what it cached of the other's attributes (`Fs::changed`, and the
//! unlink, rename and link handlers).
//!
//! Two kinds of open are spared that, while the copy still has the lower file's data (a
//! chmod, chown, touch or xattr change copied it up) and share the lower backing file:
//! - an exec, so that a binary copied up while it runs keeps its number. While a program
//!   runs, the kernel refuses to write or truncate its binary (ETXTBSY); a script's exec
//!   open is closed once its interpreter runs, which reads it through a plain open;
//! - any read-only open once the copy has its new number. Such an open comes by an old
//!   name or descriptor (re-executing /proc/PID/exe, reopening /dev/fd/N), which the
//!   kernel cannot look up again, and gets the lower file the old inode stands for.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::idshift::IdShift;
use crate::layer::{Kind, Meta};
use crate::modify::{SetAttr, SetTime};
use crate::pending::Later;
use crate::plus::PlusUse;
use crate::union::{Caller, DirEntry, Entry, OpenFile, Union, Unprivileged};

/// Entries change only through this mount (the branches must not be modified behind its
/// back, as for overlayfs), and the kernel updates its caches on every change it makes
/// (create, unlink, rename, setattr, writes): so it may keep them long.
const ENTRY_TTL: Duration = Duration::from_secs(86_400);
/// A lower file with several names may be split by a copy-up of one name (inode numbers
/// then change under the kernel): those are revalidated quickly.
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Names that do not exist: cached until this mount creates them.
const NEGATIVE_TTL: Duration = ENTRY_TTL;

fn errno(err: rustix::io::Errno) -> Errno {
    Errno::from_i32(err.raw_os_error())
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn attr(entry: &Entry) -> FileAttr {
    let meta = &entry.meta;
    FileAttr {
        ino: INodeNo(entry.ino),
        size: meta.size,
        blocks: meta.blocks,
        atime: meta.atime,
        mtime: meta.mtime,
        ctime: meta.ctime,
        crtime: meta.ctime,
        kind: file_type(meta.kind()),
        perm: (meta.mode & 0o7777) as u16,
        nlink: meta.nlink.min(u64::from(u32::MAX)) as u32,
        uid: meta.uid,
        gid: meta.gid,
        rdev: rustix::fs::makedev(rustix::fs::major(meta.rdev), rustix::fs::minor(meta.rdev))
            as u32,
        blksize: meta.blksize,
        flags: 0,
    }
}

fn ttl(entry: &Entry) -> Duration {
    let linked = entry.meta.nlink > 1 && !entry.meta.is_dir();
    if linked && !entry.upper {
        SHORT_TTL
    } else {
        ENTRY_TTL
    }
}

fn time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Files at least this big are read through passthrough; smaller ones through the page
/// cache, which keeps their attributes cached (a passthrough read invalidates atime, so
/// every later stat(2) would cost a GETATTR round trip). Reading a lower file through
/// the page cache also caches it twice (the FUSE inode's pages and the branch file's).
const PASSTHROUGH_MIN_SIZE: u64 = 1 << 20;

/// How the open handles of one inode do I/O: the kernel forbids mixing the two modes, and
/// passthrough opens of one inode share one BackingId (fs/fuse/iomode.c).
enum Mode {
    Passthrough { id: BackingId, upper: bool },
    Cached,
}

struct Opened {
    mode: Mode,
    count: usize,
    /// Of those, the handles open for writing.
    writers: usize,
    /// The copy's data may differ from the lower backing file's (see the module doc).
    diverged: bool,
    /// The copy has a new number: what opens this inode comes by an old name or
    /// descriptor (/proc/PID/exe, /dev/fd/N), and gets the lower file it stands for.
    superseded: bool,
}

#[derive(Default)]
struct OpenTable {
    by_ino: HashMap<u64, Opened>,
    /// Counted handles: their inode, and whether they write.
    handles: HashMap<u64, (u64, bool)>,
    /// Inodes written through passthrough since their page cache was last dropped.
    written: HashSet<u64>,
}

/// What an open reply says.
enum Reply {
    Passthrough,
    Cached { keep_cache: bool },
}

/// An open that finds the inode's backing file to be a lower file copied up since: see
/// the module doc.
struct Stale;

/// What an open is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    /// execve(2): the kernel's __FMODE_EXEC in the open flags.
    Exec,
    Write,
}

/// __FMODE_EXEC, which the kernel leaves in the flags of an exec's FUSE_OPEN.
const FMODE_EXEC: i32 = 0o40;

/// The fuser filesystem over one [`Union`].
pub(crate) struct Fs {
    union: Arc<Union>,
    passthrough: AtomicBool,
    /// FUSE_HANDLE_KILLPRIV_V2 was agreed (see `init`).
    killpriv: AtomicBool,
    /// FUSE_WRITEBACK_CACHE was agreed: written data may still be in the kernel's cache.
    writeback: AtomicBool,
    /// Ask for FUSE over io_uring when the kernel offers it (see `init`).
    io_uring: bool,
    /// Owners as a user namespace sees them (see [`IdShift`]).
    shift: Option<IdShift>,
    opens: Mutex<OpenTable>,
    invalidator: Arc<Invalidator>,
    /// Which callers' READDIRPLUS listings carry attributes.
    plus: PlusUse,
}

/// How long a request waits for the kernel to forget names (see [`Invalidator`]).
const INVALIDATE_WAIT: Duration = Duration::from_millis(200);

/// A name and the directory it is in.
type Name = (u64, OsString);

/// Names to forget, and where to say when they are.
type Job = (Vec<Name>, mpsc::SyncSender<()>);

/// Tells the kernel to forget names (FUSE_NOTIFY_INVAL_ENTRY) from a thread of its own,
/// and to drop inodes' attributes (FUSE_NOTIFY_INVAL_INODE) from the request's thread,
/// which takes no lock a caller may hold. For a name the kernel takes its directory's
/// lock, which an unlink, rename or link in that directory may hold while it waits for
/// the lock of the file whose request is being answered (a truncate's): so a request
/// waits for that only [`INVALIDATE_WAIT`].
#[derive(Default)]
pub(crate) struct Invalidator {
    jobs: OnceLock<(mpsc::Sender<Job>, Notifier)>,
}

impl Invalidator {
    /// Starts the thread, once the session (whose device it writes to) exists. It ends
    /// with the [`Fs`], which holds the last handle.
    pub(crate) fn start(&self, notifier: Notifier) -> io::Result<()> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let sender = notifier.clone();
        std::thread::Builder::new()
            .name("strata-inval".into())
            .spawn(move || {
                for (names, done) in queue {
                    for (parent, name) in names {
                        // (a name the kernel does not hold is no error)
                        if let Err(err) = notifier.inval_entry(INodeNo(parent), &name) {
                            tracing::debug!("forget {name:?} in {parent}: {err}");
                        }
                    }
                    let _ = done.send(());
                }
            })?;
        let _ = self.jobs.set((jobs, sender));
        Ok(())
    }

    /// Has the kernel forget `names`, waiting up to [`INVALIDATE_WAIT`].
    fn forget(&self, names: Vec<Name>) {
        let Some((jobs, _)) = self.jobs.get() else {
            return;
        };
        let (done, wait) = mpsc::sync_channel(1);
        if jobs.send((names, done)).is_err() {
            return;
        }
        // It takes microseconds unless the lock is held: only then is the rest of the wait
        // a blocking section, so that requests from this CPU go on meanwhile (a section
        // leaves the queue a thread more).
        let quick = Duration::from_millis(2);
        if wait.recv_timeout(quick).is_err()
            && fuser::blocking(|| wait.recv_timeout(INVALIDATE_WAIT - quick)).is_err()
        {
            tracing::debug!("the kernel took over {INVALIDATE_WAIT:?} to forget names");
        }
    }

    /// Has the kernel drop what it holds of the attributes and ACLs of `inos`.
    fn refresh(&self, inos: &[u64]) {
        let Some((_, notifier)) = self.jobs.get() else {
            return;
        };
        for &ino in inos {
            // (an inode the kernel does not hold is no error)
            if let Err(err) = notifier.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!("refresh inode {ino}: {err}");
            }
        }
    }
}

impl Fs {
    pub(crate) fn new(
        union: Arc<Union>,
        passthrough: bool,
        io_uring: bool,
        shift: Option<IdShift>,
        invalidator: Arc<Invalidator>,
    ) -> Fs {
        Fs {
            union,
            passthrough: AtomicBool::new(passthrough),
            killpriv: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
            io_uring,
            shift,
            opens: Mutex::default(),
            invalidator,
            plus: PlusUse::default(),
        }
    }

    /// An entry's attributes as the kernel sees them.
    fn attr(&self, entry: &Entry) -> FileAttr {
        let mut attr = attr(entry);
        if let Some(shift) = self.shift {
            attr.uid = shift.to_host(attr.uid);
            attr.gid = shift.to_host(attr.gid);
        }
        attr
    }

    /// Who makes a new entry, in the branches' ids.
    fn caller(&self, req: &Request) -> Caller {
        let Caller { uid, gid } = caller(req);
        match self.shift {
            Some(shift) => Caller {
                uid: shift.to_image(uid),
                gid: shift.to_image(gid),
            },
            None => Caller { uid, gid },
        }
    }

    /// A caller that may not keep a file's set-ID bits when it truncates, fallocates or
    /// chowns the file (see [`drop_setid`](crate::union::drop_setid)).
    /// The kernel asks for CAP_FSETID in the initial user namespace, which the request does
    /// not carry: host root is who has it, as for the WRITEs it marks (the root of a
    /// `--userns private` container is not). Only under FUSE_HANDLE_KILLPRIV_V2; without
    /// it the kernel drops the bits itself.
    fn setid_dropper(&self, req: &Request) -> Option<Unprivileged> {
        (self.killpriv.load(Ordering::Relaxed) && req.uid() != 0).then(|| self.unprivileged(req))
    }

    fn unprivileged(&self, req: &Request) -> Unprivileged {
        let caller = self.caller(req);
        Unprivileged {
            uid: caller.uid,
            gid: caller.gid,
            pid: req.pid(),
            shift: self.shift,
        }
    }

    fn reply_entry(&self, result: rustix::io::Result<Entry>, reply: ReplyEntry) {
        match result {
            Ok(entry) => reply.entry(&ttl(&entry), &self.attr(&entry), Generation(0)),
            Err(err) => reply.error(errno(err)),
        }
    }

    /// Picks the I/O mode of a new handle: the mode of the inode's other open handles, else
    /// passthrough for writers and big files (when the kernel allows it), else cached; Stale
    /// when the inode's lower backing file is held open but the file is now the copy.
    fn open_mode(
        &self,
        fh: u64,
        file: &OpenFile,
        access: Access,
        open_backing: impl FnOnce(&OpenFile) -> io::Result<BackingId>,
    ) -> Result<Reply, Stale> {
        let writer = access == Access::Write;
        let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(opened) = table.by_ino.get_mut(&file.ino) {
            let reply = match &opened.mode {
                Mode::Passthrough { upper, .. } if *upper == file.upper => Reply::Passthrough,
                // the copy, whose data is the lower backing file's: an exec, or any reader
                // once the name has a new number (see the module doc)
                Mode::Passthrough { upper: false, .. }
                    if !writer
                        && !opened.diverged
                        && (access == Access::Exec || opened.superseded) =>
                {
                    Reply::Passthrough
                }
                Mode::Passthrough { .. } => return Err(Stale),
                Mode::Cached => Reply::Cached { keep_cache: true },
            };
            opened.count += 1;
            opened.writers += usize::from(writer);
            table.handles.insert(fh, (file.ino, writer));
            return Ok(reply);
        }
        // (size, nlink): a lower file not opened yet has them from its lookup.
        let stat = || {
            file.lower_size_nlink().or_else(|| {
                let fd = self.union.fd(file).ok()?;
                let st = rustix::fs::fstat(fd).ok()?;
                Some((st.st_size as u64, st.st_nlink))
            })
        };
        let big = |size: u64| size >= PASSTHROUGH_MIN_SIZE;
        let wanted = if file.upper {
            // A passthrough write reaches the file as this server (root), which keeps
            // set-ID bits; but the kernel first asks this server to drop them when the
            // caller may not keep them (an empty SETATTR, see `setattr`).
            writer || stat().is_some_and(|(size, _)| big(size))
        } else {
            // A lower file with several names is copied up with all of them (modify.rs),
            // which a new inode number for one name would split: those stay cached.
            stat().is_some_and(|(size, nlink)| big(size) && nlink == 1)
        };
        // A copy still being finished (`pending.rs`) is served here, and stays so while a
        // handle opened meanwhile is open: a write passed through could land where the job
        // has yet to fill, or be synced (RWF_DSYNC) while the record that undoes the copy
        // after a crash remains.
        let finishing = file.upper && self.union.pending.running(file.ino);
        let mut mode = Mode::Cached;
        if self.passthrough.load(Ordering::Relaxed) && wanted && !file.append_only && !finishing {
            match open_backing(file) {
                Ok(id) => {
                    mode = Mode::Passthrough {
                        id,
                        upper: file.upper,
                    }
                }
                Err(err) => {
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
                    ) {
                        tracing::debug!(
                            "passthrough refused ({err}); serving reads and writes ourselves"
                        );
                        self.passthrough.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        let reply = match mode {
            Mode::Passthrough { .. } => Reply::Passthrough,
            // Pages cached before a passthrough writer changed the file are stale.
            Mode::Cached => Reply::Cached {
                keep_cache: !table.written.remove(&file.ino),
            },
        };
        let writers = usize::from(writer);
        table.by_ino.insert(
            file.ino,
            Opened {
                mode,
                count: 1,
                writers,
                diverged: false,
                superseded: false,
            },
        );
        table.handles.insert(fh, (file.ino, writer));
        Ok(reply)
    }

    /// Answers a CREATE or a TMPFILE with the new file, open read-write.
    fn reply_created(
        &self,
        made: rustix::io::Result<(Entry, u64, Arc<OpenFile>)>,
        reply: ReplyCreate,
    ) {
        let (entry, fh, file) = match made {
            Ok(made) => made,
            Err(err) => return reply.error(errno(err)),
        };
        let (ttl, attr) = (ttl(&entry), self.attr(&entry));
        let Ok(mode) = self.open_mode(fh, &file, Access::Write, |f| {
            reply.open_backing(self.union.fd(f)?)
        }) else {
            let err = self.refuse_stale(fh, file.ino);
            // The kernel never sees the entry, so no FORGET comes for the lookup it took.
            self.union.forget(entry.ino, 1);
            return reply.error(err);
        };
        self.reply_open(fh, file.ino, mode, |flags, backing| match backing {
            Some(id) => {
                reply.created_passthrough(&ttl, &attr, Generation(0), FileHandle(fh), flags, id)
            }
            None => reply.created(&ttl, &attr, Generation(0), FileHandle(fh), flags),
        });
    }

    /// Whether a handle of the inode is open for writing.
    fn written_to(&self, ino: u64) -> bool {
        let table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        table
            .by_ino
            .get(&ino)
            .is_some_and(|opened| opened.writers > 0)
    }

    fn with_backing(&self, ino: u64, f: impl FnOnce(&BackingId)) -> bool {
        let table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        match table.by_ino.get(&ino) {
            Some(Opened {
                mode: Mode::Passthrough { id, .. },
                ..
            }) => {
                f(id);
                true
            }
            _ => false,
        }
    }

    /// The inode's data changed by a SETATTR (a truncate: by path, ftruncate, O_TRUNC).
    /// When its handles read the lower file through passthrough (only a truncate by path
    /// gets here then: the others need a writer, which has the copy), the copy gets its
    /// new number now rather than at the next open, and the kernel forgets the names, so
    /// that a stat of the path shows the new number at once.
    fn truncated(&self, ino: u64) {
        let lower_backed = {
            let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
            let Some(opened) = table.by_ino.get_mut(&ino) else {
                return;
            };
            opened.diverged = true;
            matches!(opened.mode, Mode::Passthrough { upper: false, .. }) && !opened.superseded
        };
        if lower_backed && self.supersede(ino).is_ok() {
            self.invalidator.forget(self.union.names(ino));
        }
    }

    fn release_mode(&self, fh: u64) -> Option<Opened> {
        let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        let (ino, writer) = table.handles.remove(&fh)?;
        let opened = table.by_ino.get_mut(&ino)?;
        opened.count -= 1;
        opened.writers -= usize::from(writer);
        if opened.count > 0 {
            return None;
        }
        let gone = table.by_ino.remove(&ino);
        if let Some(Opened {
            mode: Mode::Passthrough { upper: true, .. },
            ..
        }) = gone
        {
            table.written.insert(ino);
        }
        gone
    }

    /// Fills a READDIR or READDIRPLUS reply from `offset` with `add`, which adds one entry
    /// (given the offset of the next) and says whether the reply is full.
    fn fill_dir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> Result<(), Errno> {
        let listing = self.union.dir_entries(ino, offset).map_err(errno)?;
        let full = (listing.start..listing.entries.len())
            .any(|i| add(&listing.entries[i], listing.offset(i)));
        if !full {
            self.union.dir_entries_done(&listing);
        }
        Ok(())
    }

    /// Answers an open that found the inode's backing file superseded: the copied-up
    /// file gets a new inode number and the kernel, told ESTALE, looks the name up again.
    fn refuse_stale(&self, fh: u64, ino: u64) -> Errno {
        self.union.release(fh);
        match self.supersede(ino) {
            Ok(()) => Errno::ESTALE,
            Err(err) => errno(err),
        }
    }

    /// Gives the copy of `ino` a new number (`Union::supersede`), leaving `ino` to the
    /// handles that read the lower file.
    fn supersede(&self, ino: u64) -> rustix::io::Result<()> {
        let copy = self.union.supersede(ino)?;
        {
            let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(opened) = table.by_ino.get_mut(&ino) {
                opened.superseded = true;
            }
        }
        // A change through `ino` that came before the tie may have missed the copy's.
        self.invalidator.refresh(copy.as_slice());
        Ok(())
    }

    /// After a change of the attributes, xattrs or link count of `ino`: a superseded inode
    /// and its copy's are one file (`Union::tied`), of which the kernel must not keep the
    /// other's old attributes.
    fn changed(&self, ino: u64) {
        self.invalidator.refresh(&self.union.tied(ino));
    }

    /// Sends an open reply in the chosen mode.
    fn reply_open(
        &self,
        fh: u64,
        ino: u64,
        reply: Reply,
        send: impl FnOnce(FopenFlags, Option<&BackingId>),
    ) {
        match reply {
            Reply::Passthrough => {
                let mut send = Some(send);
                self.with_backing(ino, |id| {
                    if let Some(send) = send.take() {
                        send(FopenFlags::FOPEN_NOFLUSH, Some(id));
                    }
                });
                if let Some(send) = send {
                    send(FopenFlags::FOPEN_NOFLUSH, None);
                }
            }
            Reply::Cached { keep_cache } => {
                let _ = fh;
                // FLUSH does nothing here: NOFLUSH saves a round trip on every close(2).
                let flags = if keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
                } else {
                    FopenFlags::FOPEN_NOFLUSH
                };
                send(flags, None);
            }
        }
    }
}

impl Filesystem for Fs {
    /// The server ends: copy-ups still being finished finish first (`pending.rs`).
    fn destroy(&mut self) {
        self.union.settle_all();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // The kernel enforces POSIX ACLs (as overlayfs does through the real files)
            // and caches them per inode; without it every `ls -l` asks for
            // system.posix_acl_access once per file.
            InitFlags::FUSE_POSIX_ACL,
            // The umask is this server's to apply (`Union::make`): not below a
            // directory with a default ACL, which decides the new entry's mode instead.
            InitFlags::FUSE_DONT_MASK,
        ] {
            if caps.contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        // Without it every write(2) costs a GETXATTR round trip: before each write the
        // kernel asks for security.capability (file_remove_privs) unless the inode is marked
        // S_NOSEC, which it is only on a superblock with SB_NOSEC, set for a server that
        // drops set-ID bits itself. This one does: on a WRITE with FUSE_WRITE_KILL_SUIDGID,
        // on a truncate, fallocate or chown by a caller that may not keep them, and on the
        // empty SETATTR the kernel sends before such a caller's write passes through
        // (`setattr`). Capabilities are still removed by the kernel (a REMOVEXATTR), or
        // under passthrough by the branch's file system.
        if caps.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            && config
                .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
                .is_ok()
        {
            self.killpriv.store(true, Ordering::Relaxed);
        }
        let mut passthrough =
            self.passthrough.load(Ordering::Relaxed) && caps.contains(InitFlags::FUSE_PASSTHROUGH);
        if passthrough {
            passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
        }
        if !passthrough && caps.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
            let agreed = config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok();
            self.writeback.store(agreed, Ordering::Relaxed);
        }
        self.passthrough.store(passthrough, Ordering::Relaxed);
        // Requests over io_uring are served on the CPU that sent them, by a thread pinned
        // there: a round trip without the cross-CPU wakeups that make up most of its cost
        // (about 150 µs against 15 µs on this kind of VM). The kernel offers it when
        // /sys/module/fuse/parameters/enable_uring is Y.
        if self.io_uring && caps.contains(InitFlags::FUSE_OVER_IO_URING) {
            let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
        }
        // The kernel sends at most max_pages (256 by default) per WRITE anyway; a smaller
        // max_write keeps each ring entry's payload buffer at 1 MiB rather than 16.
        let _ = config.set_max_write(1 << 20);
        let _ = config
            .set_max_readahead(1 << 20)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.union.lookup(parent.0, name);
        if let Ok(entry) = &found {
            self.plus.looked_up(parent.0, entry.meta.is_dir());
        }
        match found {
            Err(rustix::io::Errno::NOENT) => {
                // Node id 0: a cached negative entry; the kernel reads no attributes.
                let negative = attr(&Entry {
                    ino: 0,
                    meta: Meta::PLACEHOLDER,
                    upper: false,
                });
                reply.entry(&NEGATIVE_TTL, &negative, Generation(0));
            }
            result => self.reply_entry(result, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
        // The kernel dropped the inode, and its page cache with it: nothing stale is left
        // to drop at the next open (and the set does not grow with every file written).
        if !self.union.is_live(ino.0) {
            let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
            table.written.remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(entry) => reply.attr(&ttl(&entry), &self.attr(&entry)),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inward = |id: u32| self.shift.map_or(id, |shift| shift.to_image(id));
        let chown = uid.is_some() || gid.is_some();
        // Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves set-ID bits to this server on a
        // truncate, a chown, and when a write it passes through or a `chown(f, -1, -1)`
        // should drop them: it then sends a SETATTR that changes nothing (it takes the mode
        // out of the kernel's own change).
        let nothing =
            mode.is_none() && !chown && size.is_none() && atime.is_none() && mtime.is_none();
        // The kernel says so in FATTR_KILL_SUIDGID for a truncate and a chown, but fuser
        // does not pass it on: decided here by the caller's uid (see `setid_dropper`).
        let mut drop_setid = if size.is_some() || chown || nothing {
            self.setid_dropper(req)
        } else {
            None
        };
        // An empty SETATTR for an inode that no handle writes is a `chown(f, -1, -1)`: it
        // drops set-user-ID even for root, and only for the file's owner or root (others
        // get EPERM, the answer to their chmod); a passthrough write needs a writing
        // handle. A chown(f, -1, -1) while another handle writes counts as a write.
        let chown_nothing = nothing && !self.written_to(ino.0);
        if chown_nothing && self.killpriv.load(Ordering::Relaxed) {
            drop_setid = Some(self.unprivileged(req));
        }
        let set = SetAttr {
            mode,
            uid: uid.map(inward),
            gid: gid.map(inward),
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            drop_setid,
            owner_only: chown_nothing,
        };
        match self.union.setattr(ino.0, &set, fh.map(|f| f.0)) {
            Ok(entry) => {
                if size.is_some() {
                    self.truncated(ino.0);
                }
                self.changed(ino.0);
                reply.attr(&ttl(&entry), &self.attr(&entry))
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            self.union.mknod(
                parent.0,
                name,
                mode,
                u64::from(rdev),
                umask,
                self.caller(req),
            ),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            self.union
                .mkdir(parent.0, name, mode, umask, self.caller(req)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.union.unlink(parent.0, name) {
            // a superseded number tied to the file sees its link count change too
            Ok(superseded) => {
                self.invalidator.refresh(&superseded);
                reply.ok()
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.union.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            self.union
                .symlink(parent.0, link_name, target, self.caller(req)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .union
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(superseded) => {
                self.invalidator.refresh(&superseded);
                reply.ok()
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let linked = self.union.link(ino.0, newparent.0, newname);
        if linked.is_ok() {
            self.changed(ino.0);
        }
        self.reply_entry(linked, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let append = flags.0 & libc::O_APPEND != 0 && flags.0 & libc::O_TRUNC == 0;
        // What of a copy-up may finish in the background (`pending.rs`): its data, for an
        // opener that only appends; nothing for one that syncs each write itself (that
        // goes through passthrough, and no fsync would come to wait for the copy's job).
        let later = if flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            Later::No
        } else if flags.acc_mode() == OpenAccMode::O_WRONLY && append {
            Later::Fill
        } else {
            Later::Sync
        };
        let access = if write {
            Access::Write
        } else if flags.0 & FMODE_EXEC != 0 {
            Access::Exec
        } else {
            Access::Read
        };
        match self.union.open_appending(ino.0, write, append, later) {
            Ok((fh, file)) => {
                let Ok(mode) =
                    self.open_mode(fh, &file, access, |f| reply.open_backing(self.union.fd(f)?))
                else {
                    return reply.error(self.refuse_stale(fh, file.ino));
                };
                self.reply_open(fh, file.ino, mode, |flags, backing| match backing {
                    Some(id) => reply.opened_passthrough(FileHandle(fh), flags, id),
                    None => reply.opened(FileHandle(fh), flags),
                });
                if access == Access::Read {
                    self.union.opened_to_read(&file);
                }
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply.fill(size as usize, |buf| {
            self.union.read(fh.0, offset, buf).map_err(errno)
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Set by the kernel for a caller without CAP_FSETID (see `init`).
        let drop_setid = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| self.unprivileged(req));
        match self.union.write(fh.0, offset, data, drop_setid) {
            Ok(n) => reply.written(n),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = ino;
        // (the inode's BackingId, if this was its last handle, and the descriptor are
        // closed after the reply, and outside the table's lock)
        let _last = self.release_mode(fh.0);
        let _file = self.union.release(fh.0);
        reply.ok();
    }

    /// Only the inode flags ioctls are served (lsattr, chattr), on the real file, as
    /// overlayfs passes them. The kernel asks for every ioctl (it keeps no "not
    /// implemented" for them), and each shell script and each Python open(2) sends TCGETS:
    /// that one is answered ENOTTY at once, before any lock or lookup.
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // lsattr and chattr; anything else (isatty's TCGETS first) is not for files here.
        let set = matches!(
            cmd,
            crate::union::FS_IOC_SETFLAGS | crate::union::FS_IOC_FSSETXATTR
        );
        let root = req.uid() == 0;
        // the owner as the caller sees it (shifted under a user namespace)
        let owner = root
            || (set
                && self
                    .union
                    .getattr(ino.0, None)
                    .is_ok_and(|entry| self.attr(&entry).uid == req.uid()));
        match self.union.fileattr(ino.0, cmd, in_data, (root, owner)) {
            Ok(out) => reply.ioctl(0, &out),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.union.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    /// Refused, so the kernel stops sending OPENDIR and RELEASEDIR (FUSE_NO_OPENDIR_SUPPORT)
    /// and caches every listing as if opened with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR
    /// (fuse_do_open): a warm `find` then costs no round trip at all.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let filled = self.fill_dir(ino.0, offset, |entry, next| {
            reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name)
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // (see the `plus` module)
        let with_attrs = self.plus.with_attrs(req.pid(), ino.0);
        let filled = self.fill_dir(ino.0, offset, |dirent, next| {
            if dirent.name == "." || dirent.name == ".." {
                // The kernel takes no lookup for these (fuse_direntplus_link): attrs unused.
                let entry = Entry {
                    ino: dirent.ino,
                    meta: Meta::PLACEHOLDER,
                    upper: true,
                };
                let attr = self.attr(&entry);
                return reply.add(
                    INodeNo(dirent.ino),
                    next,
                    &dirent.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                );
            }
            if !with_attrs {
                let kind = file_type(dirent.kind);
                return reply.add_name(INodeNo(dirent.ino), next, kind, &dirent.name);
            }
            let Ok(entry) = self.union.lookup_listed(ino.0, &dirent.name, dirent.layer) else {
                return false;
            };
            let full = reply.add(
                INodeNo(entry.ino),
                next,
                &dirent.name,
                &ttl(&entry),
                &self.attr(&entry),
                Generation(0),
            );
            if full {
                // Not sent: the kernel will not count this lookup.
                self.union.forget(entry.ino, 1);
            }
            full
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.union.fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let value = match self.shift {
            Some(shift) => shift.xattr_in(name, value),
            None => std::borrow::Cow::Borrowed(value),
        };
        match self.union.setxattr(ino.0, name, &value, flags) {
            Ok(()) => {
                self.changed(ino.0);
                reply.ok()
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self.union.getxattr(ino.0, name).map(|mut value| {
            if let Some(shift) = self.shift {
                shift.xattr_out(name, &mut value);
            }
            value
        });
        reply_xattr(value, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.union.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.union.removexattr(ino.0, name) {
            Ok(()) => {
                self.changed(ino.0);
                reply.ok()
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.reply_created(
            self.union
                .create(parent.0, name, mode, umask, self.caller(req)),
            reply,
        );
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.reply_created(
            self.union.tmpfile(parent.0, mode, umask, self.caller(req)),
            reply,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // Under the writeback cache the real file may lack data the kernel holds (it asks
        // without flushing): ENOSYS leaves SEEK_DATA and SEEK_HOLE to the kernel, which
        // takes the whole file for data, for good.
        if self.writeback.load(Ordering::Relaxed) {
            return reply.error(Errno::ENOSYS);
        }
        match self.union.lseek(fh.0, offset, whence) {
            Ok(offset) => reply.offset(offset),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // FUSE_FALLOCATE carries no kill flag; overlayfs drops the bits (file_remove_privs).
        let drop_setid = self.setid_dropper(req);
        match self.union.fallocate(fh.0, offset, length, mode, drop_setid) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }
}

fn reply_xattr(result: rustix::io::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(err) => reply.error(errno(err)),
    }
}
