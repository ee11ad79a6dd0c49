//! Copy-up: makes the upper branch hold a copy of an entry that so far lives only in a
//! lower branch, before anything modifies it. The copy is built in the work dir (data by
//! FICLONE, else direct I/O for a big file, else copy_file_range of each data extent, holes
//! kept, else read/write; then xattrs, owner, mode, times, fsync) and renamed into place,
//! so the upper dir never shows a half-made file (overlayfs.rst "Non-directories": copy up
//! is atomic through the workdir). A big file opened or changed in place may show before
//! its copy is synced, or for an opener that only appends before its data is copied
//! ([`copy_up_later`]): a job finishes it, and a durable record lets the next mount
//! undo it if a crash comes first (`pending.rs`).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::layer::{Kind, Layers, Meta, Res, UPPER, arg, is_private_xattr};
use crate::pending::{Later, Pending, Work};

/// Copies of files this big (about 15 ms and up here) run as `fuser::blocking` sections,
/// and their data goes around the page cache ([`copy_direct`]).
const BIG_COPY: u64 = 16 << 20;

/// Copies `rel` from `src_layer` into the upper branch; its parent must already be there.
/// Returns Ok if the upper entry exists afterwards (also when a racing copy-up won).
pub(crate) fn copy_up(layers: &Layers, src_layer: usize, rel: &Path) -> Res<Meta> {
    copy_up_with(layers, src_layer, rel, !layers.volatile)
}

/// `sync: false` leaves the data unsynced, for a caller that copies many files and
/// syncs the filesystem once before making them visible (a directory rename).
pub(crate) fn copy_up_with(layers: &Layers, src_layer: usize, rel: &Path, sync: bool) -> Res<Meta> {
    let meta = layers.stat(src_layer, rel)?;
    copy_up_of(layers, src_layer, rel, &meta, sync)?;
    Ok(meta)
}

/// [`copy_up_with`] of an entry whose lower `meta` the caller has.
fn copy_up_of(layers: &Layers, src_layer: usize, rel: &Path, meta: &Meta, sync: bool) -> Res<()> {
    let tmp = layers.tmp_name();
    let copy = || build(layers, src_layer, rel, meta, &tmp, sync);
    // A big copy takes long enough to hold up the requests queued behind it.
    let built = if meta.kind() == Kind::File && meta.size >= BIG_COPY {
        fuser::blocking(copy)
    } else {
        copy()
    };
    place(layers, rel, &tmp, meta.kind(), built)
}

/// [`copy_up`], leaving what `later` allows of a big file's copy (its sync, and for an
/// append-only opener, `fill`, its data) to a job (`pending.rs`). Returns the lower
/// file's metadata and the job's work: None where the copy was made whole (most copies),
/// or a racing copy-up won.
pub(crate) fn copy_up_later(
    layers: &Layers,
    pending: &Pending,
    src_layer: usize,
    rel: &Path,
    later: Later,
) -> Res<(Meta, Option<Work>)> {
    let meta = layers.stat(src_layer, rel)?;
    let sync = !layers.volatile;
    let fill = later == Later::Fill;
    // (a volatile copy has no sync to leave; only its data may wait)
    let defer = later != Later::No
        && meta.kind() == Kind::File
        // (a file with several names is linked up with them: names its record would lack)
        && meta.nlink == 1
        && meta.size >= BIG_COPY
        && (fill || sync)
        && (pending.records() || !sync);
    if !defer {
        copy_up_of(layers, src_layer, rel, &meta, sync)?;
        return Ok((meta, None));
    }
    let src_path = layers.abs(src_layer, rel);
    let xattrs = list_xattrs(&src_path)?;
    // The job's writes would clear set-id bits and file capabilities (file_remove_privs).
    let fill =
        fill && meta.mode & 0o6000 == 0 && !xattrs.iter().any(|name| name == "security.capability");
    let tmp = layers.tmp_name();
    let built = fuser::blocking(|| {
        let (src, dst) = open_both(layers, src_layer, rel, &tmp, OFlags::RDWR)?;
        let later = if fill {
            reserve_then_copy_tail(src.as_fd(), dst.as_fd(), meta.size)?
        } else {
            copy_data(src.as_fd(), dst.as_fd(), meta.size, false)?;
            Vec::new()
        };
        copy_listed_xattrs(&src_path, &layers.work_abs(&tmp), Kind::File, &xattrs)?;
        let origin = crate::origin::record(layers, src_layer, rel, &layers.work_abs(&tmp));
        set_owner_mode_times(layers.work(), &tmp, &meta)?;
        Ok((src, dst, later, origin))
    });
    let (src, dst, mut later, origin) = match built {
        Ok(built) => built,
        Err(err) => {
            remove_tmp(layers, &tmp, Kind::File);
            return Err(err);
        }
    };
    let parent = rustix::fs::openat(
        layers.fd(UPPER),
        parent_of(rel),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let name = rel.file_name().ok_or(Errno::INVAL);
    // Durable before the copy shows: a crash then finds it, and removes the copy.
    let record = if sync {
        let recorded = parent.as_ref().map_err(|e| *e).and_then(|parent| {
            let copy = crate::sys::file_handle(layers.work(), &tmp)?;
            pending.record(parent.as_fd(), name?, copy)
        });
        match recorded {
            Ok(record) => Some(record),
            Err(err) => {
                // No record (a full disk, an error): the copy is finished before it shows.
                tracing::warn!(
                    "{}: no record of its copy-up ({err}); copying it whole",
                    rel.display()
                );
                let finished = fuser::blocking(|| {
                    self::fill(src.as_fd(), dst.as_fd(), &later, true, || {})?;
                    rustix::fs::fsync(&dst)
                });
                if let Err(err) = finished {
                    remove_tmp(layers, &tmp, Kind::File);
                    return Err(err);
                }
                later.clear();
                None
            }
        }
    } else {
        None
    };
    let shown = (!later.is_empty()).then(|| {
        let times = Timestamps {
            last_access: timespec(meta.atime),
            last_modification: timespec(meta.mtime),
        };
        (meta.size, times)
    });
    match place(layers, rel, &tmp, Kind::File, Ok(origin)) {
        Ok(()) => {}
        Err(err) => {
            if let Some(record) = &record {
                pending.drop_record(record);
            }
            return Err(err);
        }
    }
    // A racing copy-up won: this copy is gone, the winner's stays.
    let ours = rustix::fs::statat(layers.fd(UPPER), rel, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| rustix::fs::fstat(&dst).is_ok_and(|own| own.st_ino == st.st_ino));
    if !ours {
        if let Some(record) = &record {
            pending.drop_record(record);
        }
        return Ok((meta, None));
    }
    if sync && record.is_none() {
        // (finished before it showed)
        return Ok((meta, None));
    }
    Ok((
        meta,
        Some(Work {
            src,
            dst,
            fill: later,
            sync,
            parent: parent.ok(),
            record,
            shown,
            path: rel.to_path_buf(),
        }),
    ))
}

/// For an append-only opener: reserves the blocks of each data extent (a full disk fails
/// the open, not the job), sets the size, and copies the last partial page now (a write
/// there may read it first); returns the ranges left to copy. Where blocks cannot be
/// reserved (no fallocate), everything is copied now.
fn reserve_then_copy_tail(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
) -> Res<Vec<(u64, u64)>> {
    let extents: Vec<(u64, u64)> = DataExtents::new(src, size).collect();
    for &(start, end) in &extents {
        match rustix::fs::fallocate(dst, FallocateFlags::empty(), start, end - start) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => {
                copy_data(src, dst, size, false)?;
                return Ok(Vec::new());
            }
            Err(err) => return Err(err),
        }
    }
    rustix::fs::ftruncate(dst, size)?;
    let tail = size / 4096 * 4096;
    let mut copier = Copier {
        src,
        dst,
        by_range: true,
        ranged: 0,
    };
    let mut later = Vec::new();
    for (start, end) in extents {
        if start < tail {
            later.push((start, end.min(tail)));
        }
        if end > tail {
            copier.copy(start.max(tail), end)?;
        }
    }
    Ok(later)
}

/// A job's work goes a chunk at a time (see [`fill`]).
const JOB_CHUNK: u64 = 8 << 20;

/// Copies `ranges` of `src` into `dst` at the same offsets (a job's fill, `pending.rs`), a
/// chunk at a time, calling `give_way` before each. With `sync` (the copy is to be synced:
/// not in a volatile union), each chunk's pages are sent to the disk once copied
/// ([`WriteBehind`]), so the job's writes are spread over its copy rather than left to one
/// fsync of the whole file, which would take the disk for a second or more per GiB from the
/// requests the job runs beside.
pub(crate) fn fill(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    ranges: &[(u64, u64)],
    sync: bool,
    give_way: impl Fn(),
) -> Res<()> {
    let mut copier = Copier {
        src,
        dst,
        by_range: true,
        ranged: 0,
    };
    let mut behind = sync.then(|| WriteBehind::new(dst));
    for &(start, end) in ranges {
        for (from, to) in chunks(start, end) {
            give_way();
            copier.copy(from, to)?;
            if let Some(behind) = &mut behind {
                behind.copied(from, to);
            }
        }
    }
    Ok(())
}

/// Sends the first `size` bytes of `dst`'s pages to the disk as [`fill`] does, for a job
/// that has only a copy's sync to do.
pub(crate) fn write_out(dst: BorrowedFd<'_>, size: u64, give_way: impl Fn()) {
    let mut behind = WriteBehind::new(dst);
    for (from, to) in chunks(0, size) {
        give_way();
        behind.copied(from, to);
    }
}

/// [start, end) in pieces of [`JOB_CHUNK`].
fn chunks(start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end)
        .step_by(JOB_CHUNK as usize)
        .map(move |from| (from, (from + JOB_CHUNK).min(end)))
}

/// Writes a file out behind a copy: each chunk is sent to the disk once copied, and the one
/// before it is waited for, so at most two chunks' writes are on their way at a time.
struct WriteBehind<'a> {
    fd: BorrowedFd<'a>,
    previous: Option<(u64, u64)>,
}

impl<'a> WriteBehind<'a> {
    fn new(fd: BorrowedFd<'a>) -> Self {
        WriteBehind { fd, previous: None }
    }

    fn copied(&mut self, from: u64, to: u64) {
        crate::sys::sync_file_range(self.fd, from, to - from, false);
        if let Some((from, to)) = self.previous.replace((from, to)) {
            crate::sys::sync_file_range(self.fd, from, to - from, true);
        }
    }
}

/// Renames the copy built at `tmp` (`built`: whether it has an origin) to `rel` in the
/// upper dir; Ok also when a racing copy-up won (EEXIST). A failed copy is removed.
fn place(layers: &Layers, rel: &Path, tmp: &Path, kind: Kind, built: Res<bool>) -> Res<()> {
    // A copy-up changes nothing in the merged view: the upper parent keeps its times, as
    // overlayfs puts them back (ovl_copy_up_one).
    let parent = parent_of(rel);
    let parent_times = rustix::fs::statat(layers.fd(UPPER), parent, AtFlags::empty()).ok();
    let built = built.and_then(|origin| {
        // (before the copy shows, as overlayfs marks it: a crash between leaves no origin
        // in an unmarked directory)
        if origin {
            crate::origin::mark_impure(layers, rel.parent().unwrap_or(Path::new("")));
        }
        rustix::fs::renameat_with(
            layers.work(),
            tmp,
            layers.fd(UPPER),
            rel,
            RenameFlags::NOREPLACE,
        )
    });
    match built {
        Ok(()) => {
            if let Some(st) = parent_times {
                let times = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: st.st_atime,
                        tv_nsec: st.st_atime_nsec as _,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: st.st_mtime,
                        tv_nsec: st.st_mtime_nsec as _,
                    },
                };
                let _ = rustix::fs::utimensat(layers.fd(UPPER), parent, &times, AtFlags::empty());
            }
            Ok(())
        }
        Err(err) => {
            remove_tmp(layers, tmp, kind);
            if err == Errno::EXIST {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

fn parent_of(rel: &Path) -> &Path {
    match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn remove_tmp(layers: &Layers, tmp: &Path, kind: Kind) {
    let flags = if kind == Kind::Dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    let _ = rustix::fs::unlinkat(layers.work(), tmp, flags);
}

/// Builds the copy of `rel` at `tmp` in the work dir; whether it has an origin.
fn build(
    layers: &Layers,
    src_layer: usize,
    rel: &Path,
    meta: &Meta,
    tmp: &Path,
    sync: bool,
) -> Res<bool> {
    let work = layers.work();
    let perm = Mode::from_raw_mode(meta.mode & 0o7777);
    match meta.kind() {
        Kind::Dir => rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?,
        Kind::File => {
            let (src, dst) = open_both(layers, src_layer, rel, tmp, OFlags::WRONLY)?;
            // (a volatile union's copy stays in the page cache: direct writes wait for the disk)
            copy_data(src.as_fd(), dst.as_fd(), meta.size, !layers.volatile)?;
            // Kernel overlayfs syncs the copy before it becomes visible (ovl_copy_up_file).
            if sync {
                rustix::fs::fsync(&dst)?;
            }
        }
        Kind::Symlink => {
            let target = rustix::fs::readlinkat(layers.fd(src_layer), arg(rel), Vec::new())?;
            rustix::fs::symlinkat(target.as_bytes(), work, tmp)?;
        }
        kind => rustix::fs::mknodat(work, tmp, kind.file_type(), perm, meta.rdev)?,
    }
    copy_xattrs(
        &layers.abs(src_layer, rel),
        &layers.work_abs(tmp),
        meta.kind(),
    )?;
    let origin = crate::origin::record(layers, src_layer, rel, &layers.work_abs(tmp));
    set_owner_mode_times(work, tmp, meta)?;
    Ok(origin)
}

/// The lower file `rel` of `src_layer`, read-only, and a new file `tmp` in the work dir
/// (only its owner may open it yet), opened with `access`.
fn open_both(
    layers: &Layers,
    src_layer: usize,
    rel: &Path,
    tmp: &Path,
    access: OFlags,
) -> Res<(OwnedFd, OwnedFd)> {
    let src = layers.open_to_read(
        src_layer,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    )?;
    let dst = rustix::fs::openat(
        layers.work(),
        tmp,
        access | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok((src, dst))
}

/// Owner, then mode (chown clears set-id bits), then times, as the source had them.
pub(crate) fn set_owner_mode_times(dir: BorrowedFd<'_>, name: &Path, meta: &Meta) -> Res<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if meta.kind() != Kind::Symlink {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(meta.mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    let times = Timestamps {
        last_access: timespec(meta.atime),
        last_modification: timespec(meta.mtime),
    };
    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
}

pub(crate) fn timespec(t: std::time::SystemTime) -> Timespec {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        },
        Err(e) => {
            let d = e.duration();
            Timespec {
                tv_sec: -(d.as_secs() as i64),
                tv_nsec: 0,
            }
        }
    }
}

/// Data: a reflink when the filesystem shares extents, else each data extent by an
/// in-kernel copy, else by a loop; holes stay holes. A big file is written around the
/// page cache (see [`copy_direct`]).
fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64, direct: bool) -> Res<()> {
    if size == 0 || rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut copier = Copier {
        src,
        dst,
        by_range: true,
        ranged: 0,
    };
    let buffered = match (direct && size >= BIG_COPY).then(|| copy_direct(src, dst, size)) {
        // What direct I/O left: the unaligned ends of extents.
        Some(Ok(rest)) => rest,
        // No direct I/O here (or not at these offsets): the usual copy, from the start.
        None | Some(Err(Errno::INVAL)) => DataExtents::new(src, size).collect(),
        Some(Err(err)) => return Err(err),
    };
    for (start, end) in buffered {
        copier.copy(start, end)?;
    }
    // A trailing hole.
    rustix::fs::ftruncate(dst, size)
}

/// The data extents of a file up to `size`, by SEEK_DATA and SEEK_HOLE. Where lseek gives
/// no answer, or one that makes no sense (a file system that ignores SEEK_DATA), the rest
/// counts as data.
struct DataExtents<'a> {
    src: BorrowedFd<'a>,
    pos: u64,
    size: u64,
}

impl<'a> DataExtents<'a> {
    fn new(src: BorrowedFd<'a>, size: u64) -> Self {
        DataExtents { src, pos: 0, size }
    }
}

impl Iterator for DataExtents<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        use rustix::fs::SeekFrom;
        if self.pos >= self.size {
            return None;
        }
        let extent = match rustix::fs::seek(self.src, SeekFrom::Data(self.pos)) {
            // Only a hole is left (or data past the size, which the file did not have).
            Err(Errno::NXIO) => None,
            Ok(start) if start >= self.size => None,
            Ok(start) if start >= self.pos => {
                match rustix::fs::seek(self.src, SeekFrom::Hole(start)) {
                    Ok(end) if end > start => Some((start, end.min(self.size))),
                    _ => Some((start, self.size)),
                }
            }
            _ => Some((self.pos, self.size)),
        };
        self.pos = extent.map_or(self.size, |(_, end)| end);
        extent
    }
}

/// Each of this many threads reads a chunk of this size and writes it, so that the disk
/// has several writes queued while the next chunks are read.
const DIRECT_THREADS: usize = 4;
const DIRECT_CHUNK: u64 = 4 << 20;
/// Extents whose aligned part is smaller are copied buffered: a direct write that small
/// gains nothing, and its fallocate waits for the writes in flight.
const DIRECT_MIN_EXTENT: u64 = 1 << 20;

/// Copies the aligned part of each big data extent with O_DIRECT writes and returns the
/// rest (unaligned ends, small extents) for a buffered copy. EINVAL where the destination
/// takes no direct I/O (its file system reports no STATX_DIOALIGN, or refuses O_DIRECT at
/// any point): the caller then copies everything buffered, from the start.
///
/// The copy must reach the disk before it becomes visible (the fsync that follows).
/// Through the page cache, each byte is copied into a newly allocated page that is then
/// dirty until that fsync writes it, and the cache fills with pages that duplicate the
/// source's. Written around the cache, with several writes queued, the disk writes while
/// the copy runs: 1 GiB here takes 0.41-0.56 s against the kernel's 0.70-1.26 s (run T in
/// `bench/unionfs-results.txt`). The price: the copy's first reads come from the disk.
fn copy_direct(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> Res<Vec<(u64, u64)>> {
    let align = dio_align(dst).ok_or(Errno::INVAL)?;
    let flags = rustix::fs::fcntl_getfl(dst)?;
    rustix::fs::fcntl_setfl(dst, flags | OFlags::DIRECT)?;
    let chunks = Mutex::new(Chunks {
        dst,
        align,
        extents: DataExtents::new(src, size),
        next: 0..0,
        rest: Vec::new(),
    });
    let failed = Mutex::new(None);
    let work = || {
        let copied = AlignedBuf::new(DIRECT_CHUNK as usize, align as usize).and_then(|mut buf| {
            loop {
                // (Not `while let`: its guard would hold the lock through the copy.)
                let next = lock(&chunks).next();
                let Some((pos, len)) = next else { break };
                let buf = &mut buf.as_mut()[..len];
                read_exact_at(src, buf, pos)?;
                write_all_at(dst, buf, pos)?;
            }
            Ok(())
        });
        if let Err(err) = copied {
            lock(&failed).get_or_insert(err);
            // The others stop at their next chunk.
            lock(&chunks).stop();
        }
    };
    std::thread::scope(|scope| {
        // This thread works too, so the copy goes on (slower) where no thread can be made.
        for _ in 1..DIRECT_THREADS {
            let _ = std::thread::Builder::new()
                .name("strata-copyup".into())
                .spawn_scoped(scope, || {
                    unpin();
                    work();
                });
        }
        work();
    });
    let restored = rustix::fs::fcntl_setfl(dst, flags);
    match lock(&failed).take() {
        Some(err) => Err(err),
        None => restored.map(|()| std::mem::take(&mut lock(&chunks).rest)),
    }
}

/// The alignment direct I/O to `fd` gets (of memory, offsets and lengths): what statx's
/// STATX_DIOALIGN (Linux 6.1) asks for, and at least a page (ext4 asks for 512 bytes, but
/// buffers not aligned to pages write slower); None where the file system gives none.
fn dio_align(fd: BorrowedFd<'_>) -> Option<u64> {
    use rustix::fs::{StatxFlags, statx};
    const PAGE: u32 = 4096;
    let st = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    let align = st.stx_dio_mem_align.max(st.stx_dio_offset_align).max(PAGE);
    let reported = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN);
    (reported && st.stx_dio_offset_align > 0 && align.is_power_of_two())
        .then_some(u64::from(align))
        .filter(|&a| a <= DIRECT_MIN_EXTENT)
}

/// A thread starts with its creator's CPU mask, and a ring thread's is its one CPU: gives
/// the calling thread the main thread's mask (which no ring thread's pinning touches), so
/// that the copy's helper threads spread over the CPUs.
pub(crate) fn unpin() {
    use nix::sched::{sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    if let Ok(cpus) = sched_getaffinity(Pid::this()) {
        let _ = sched_setaffinity(Pid::from_raw(0), &cpus);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The aligned chunks of the data extents, in order; the unaligned ends are set aside.
struct Chunks<'a> {
    dst: BorrowedFd<'a>,
    align: u64,
    extents: DataExtents<'a>,
    /// What is left of the current extent's aligned part.
    next: std::ops::Range<u64>,
    rest: Vec<(u64, u64)>,
}

impl Chunks<'_> {
    fn stop(&mut self) {
        self.extents.pos = self.extents.size;
        self.next = 0..0;
    }

    fn next(&mut self) -> Option<(u64, usize)> {
        while self.next.is_empty() {
            let (start, end) = self.extents.next()?;
            let (from, to) = (
                start.next_multiple_of(self.align),
                end / self.align * self.align,
            );
            if from >= to || to - from < DIRECT_MIN_EXTENT {
                self.rest.push((start, end));
                continue;
            }
            let ends = [(start, from), (to, end)];
            self.rest.extend(ends.into_iter().filter(|(a, b)| a < b));
            // Direct writes past the end of the file, or into a hole, take the inode's
            // lock one at a time (ext4_dio_write_checks); into allocated blocks they run
            // side by side. A file system without fallocate gets them one at a time, and
            // a full disk fails the writes.
            let _ = rustix::fs::fallocate(self.dst, FallocateFlags::empty(), from, to - from);
            self.next = from..to;
        }
        let pos = self.next.start;
        let len = (self.next.end - pos).min(DIRECT_CHUNK);
        self.next.start += len;
        Some((pos, len as usize))
    }
}

fn read_exact_at(fd: BorrowedFd<'_>, buf: &mut [u8], pos: u64) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], pos + done as u64) {
            // The source is shorter than its size: it changed under the copy.
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn write_all_at(fd: BorrowedFd<'_>, buf: &[u8], pos: u64) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], pos + done as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// A buffer whose start is aligned for direct I/O.
struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// ENOMEM when there is no memory for it, EINVAL when it cannot be aligned (then the
    /// copy goes buffered).
    fn new(len: usize, align: usize) -> Res<Self> {
        let mut vec = Vec::new();
        vec.try_reserve_exact(len + align)
            .map_err(|_| Errno::NOMEM)?;
        vec.resize(len + align, 0);
        let start = vec.as_ptr().align_offset(align);
        if start.checked_add(len).is_none_or(|end| end > vec.len()) {
            return Err(Errno::INVAL);
        }
        Ok(AlignedBuf { vec, start, len })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// Copies byte ranges at the same offsets: copy_file_range, else read and write.
struct Copier<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    /// copy_file_range works (until it fails before copying anything)...
    by_range: bool,
    /// ...and has copied this much.
    ranged: u64,
}

impl Copier<'_> {
    fn copy(&mut self, mut pos: u64, end: u64) -> Res<()> {
        while self.by_range && pos < end {
            let chunk = (end - pos).min(1 << 30) as usize;
            let (mut from, mut to) = (pos, pos);
            match rustix::fs::copy_file_range(
                self.src,
                Some(&mut from),
                self.dst,
                Some(&mut to),
                chunk,
            ) {
                // The source ends before its size: the loop below says so.
                Ok(0) => self.by_range = false,
                Ok(n) => {
                    pos += n as u64;
                    self.ranged += n as u64;
                }
                Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP)
                    if self.ranged == 0 =>
                {
                    self.by_range = false;
                }
                Err(Errno::INTR) => {}
                Err(err) => return Err(err),
            }
        }
        let mut buf = vec![0u8; (end - pos).min(1 << 20) as usize];
        while pos < end {
            let want = buf.len().min((end - pos) as usize);
            read_exact_at(self.src, &mut buf[..want], pos)?;
            write_all_at(self.dst, &buf[..want], pos)?;
            pos += want as u64;
        }
        Ok(())
    }
}

pub(crate) fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_io_error(err).unwrap_or(Errno::IO)
}

/// All xattrs but overlay's private ones. user.* cannot live on symlinks (xattr(7)).
pub(crate) fn copy_xattrs(src: &Path, dst: &Path, kind: Kind) -> Res<()> {
    copy_listed_xattrs(src, dst, kind, &list_xattrs(src)?)
}

/// [`copy_xattrs`] of the xattrs `names` (as listed).
fn copy_listed_xattrs(src: &Path, dst: &Path, kind: Kind, names: &[OsString]) -> Res<()> {
    for name in names {
        if is_private_xattr(name) {
            continue;
        }
        let value = match get_xattr(src, name) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        match rustix::fs::lsetxattr(
            dst,
            name.as_os_str(),
            &value,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::PERM | Errno::OPNOTSUPP) if kind == Kind::Symlink => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn list_xattrs(path: &Path) -> Res<Vec<OsString>> {
    Ok(xattr::list(path).map_err(|e| io_errno(&e))?.collect())
}

/// One xattr (not following a symlink); ENODATA when absent.
pub(crate) fn get_xattr(path: &Path, name: &std::ffi::OsStr) -> Res<Vec<u8>> {
    xattr::get(path, name)
        .map_err(|e| io_errno(&e))?
        .ok_or(Errno::NODATA)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use rustix::fs::ioctl_ficlone;

    use super::*;

    /// A 16 MiB file with 8 KiB of data at 4 MiB and 8 bytes at 12 MiB, in `dir`.
    fn sparse_file(dir: &Path) -> (std::fs::File, Vec<u8>) {
        let path = dir.join("sparse");
        let file = std::fs::File::create_new(&path).unwrap();
        file.set_len(16 << 20).unwrap();
        let mut want = vec![0u8; 16 << 20];
        for (at, data) in [(4 << 20, vec![7u8; 8192]), (12 << 20, b"the end!".to_vec())] {
            rustix::io::pwrite(&file, &data, at as u64).unwrap();
            want[at..at + data.len()].copy_from_slice(&data);
        }
        (std::fs::File::open(&path).unwrap(), want)
    }

    /// Copies from `src_dir` to /var/tmp: the same bytes, the holes left as holes.
    fn copies_sparse(src_dir: &Path) {
        let src = tempfile::tempdir_in(src_dir).unwrap();
        let (file, want) = sparse_file(src.path());
        let dst_dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let dst_path = dst_dir.path().join("copy");
        let dst = std::fs::File::create_new(&dst_path).unwrap();
        copy_data(file.as_fd(), dst.as_fd(), 16 << 20, true).unwrap();
        assert_eq!(std::fs::read(&dst_path).unwrap(), want);
        let allocated = std::fs::metadata(&dst_path).unwrap().blocks() * 512;
        assert!(allocated <= 1 << 20, "{allocated} bytes allocated");
    }

    #[test]
    fn copy_file_range_copies_the_data_and_keeps_the_holes() {
        copies_sparse(Path::new("/var/tmp"));
    }

    /// tmpfs to ext4: copy_file_range refuses (EXDEV), read and write do the copy.
    #[test]
    fn the_read_write_copy_keeps_the_holes_too() {
        copies_sparse(Path::new("/dev/shm"));
    }

    /// A big file (20 MiB and 7 bytes): data to 5 MiB and 7 bytes, a hole, data from 12
    /// MiB to the end, each byte its offset's.
    fn big_file(dir: &Path) -> (std::fs::File, Vec<u8>) {
        let size = (20 << 20) + 7;
        let want: Vec<u8> = (0..size)
            .map(|i| {
                if ((5 << 20) + 7..12 << 20).contains(&i) {
                    0
                } else {
                    (i % 251) as u8
                }
            })
            .collect();
        let path = dir.join("big");
        let file = std::fs::File::create_new(&path).unwrap();
        file.set_len(size as u64).unwrap();
        for range in [0..(5 << 20) + 7, 12 << 20..size] {
            rustix::io::pwrite(&file, &want[range.clone()], range.start as u64).unwrap();
        }
        (std::fs::File::open(&path).unwrap(), want)
    }

    /// Bytes of `path` in the page cache, by fincore(1) (util-linux).
    fn cached_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore runs: apt-get install util-linux-extra");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// A big copy to /var/tmp (a disk) writes around the page cache: the same bytes, the
    /// hole kept, and of the copy only the unaligned end is cached.
    #[test]
    fn a_big_copy_is_written_around_the_page_cache() {
        for src_dir in ["/var/tmp", "/dev/shm"] {
            let src = tempfile::tempdir_in(src_dir).unwrap();
            let (file, want) = big_file(src.path());
            let dst_dir = tempfile::tempdir_in("/var/tmp").unwrap();
            let dst_path = dst_dir.path().join("copy");
            let dst = std::fs::File::create_new(&dst_path).unwrap();
            assert!(
                dio_align(dst.as_fd()).is_some() && ioctl_ficlone(&dst, &file).is_err(),
                "this test needs /var/tmp on a disk file system with direct I/O and without \
                 reflinks (ext4)"
            );
            copy_data(file.as_fd(), dst.as_fd(), want.len() as u64, true).unwrap();
            let cached = cached_bytes(&dst_path);
            assert_eq!(
                rustix::fs::fcntl_getfl(&dst).unwrap() & OFlags::DIRECT,
                OFlags::empty(),
                "O_DIRECT left on"
            );
            assert!(
                cached <= 64 << 10,
                "{cached} bytes of the copy cached (from {src_dir})"
            );
            assert!(
                std::fs::read(&dst_path).unwrap() == want,
                "the copy differs"
            );
            let allocated = std::fs::metadata(&dst_path).unwrap().blocks() * 512;
            assert!(
                allocated <= 14 << 20,
                "{allocated} bytes allocated: the hole was filled"
            );
        }
    }

    /// A file system mounted on a new dir under /var/tmp, unmounted when dropped.
    struct Mounted(tempfile::TempDir);

    impl Mounted {
        /// `mount ARGS... DIR`.
        fn new(args: &[&str]) -> Mounted {
            let dir = tempfile::tempdir_in("/var/tmp").unwrap();
            let out = std::process::Command::new("mount")
                .args(args)
                .arg(dir.path())
                .output();
            let out = out.expect("mount(8) runs");
            assert!(
                out.status.success(),
                "mount {args:?} (as root: sudo cargo test): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Mounted(dir)
        }

        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// ramfs takes no direct I/O: the copy is buffered, and right.
    #[test]
    fn a_big_copy_where_direct_io_is_refused_is_buffered() {
        let dir = Mounted::new(&["-t", "ramfs", "ramfs"]);
        let src = tempfile::tempdir_in("/var/tmp").unwrap();
        let (file, want) = big_file(src.path());
        let dst_path = dir.path().join("copy");
        let dst = std::fs::File::create_new(&dst_path).unwrap();
        assert_eq!(
            rustix::fs::fcntl_setfl(&dst, OFlags::WRONLY | OFlags::DIRECT),
            Err(Errno::INVAL),
            "ramfs took O_DIRECT: this test tests nothing"
        );
        copy_data(file.as_fd(), dst.as_fd(), want.len() as u64, true).unwrap();
        assert!(
            std::fs::read(&dst_path).unwrap() == want,
            "the copy differs"
        );
    }

    /// A disk that fills up during a direct copy: ENOSPC, from whichever thread met it,
    /// and the destination's O_DIRECT cleared.
    #[test]
    fn a_full_disk_fails_a_direct_copy_with_enospc() {
        let images = tempfile::tempdir_in("/var/tmp").unwrap();
        let image = images.path().join("small.ext4");
        std::fs::File::create_new(&image)
            .unwrap()
            .set_len(12 << 20)
            .unwrap();
        let mkfs = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 runs: apt-get install e2fsprogs");
        assert!(mkfs.success(), "mkfs.ext4 {}", image.display());
        let disk = Mounted::new(&["-o", "loop", image.to_str().unwrap()]);
        let src = tempfile::tempdir_in("/var/tmp").unwrap();
        let (file, want) = big_file(src.path());
        let dst = std::fs::File::create_new(disk.path().join("copy")).unwrap();
        assert!(
            dio_align(dst.as_fd()).is_some(),
            "no direct I/O on ext4: this test tests nothing"
        );
        let copied = copy_data(file.as_fd(), dst.as_fd(), want.len() as u64, true);
        assert_eq!(copied, Err(Errno::NOSPC));
        assert_eq!(
            rustix::fs::fcntl_getfl(&dst).unwrap() & OFlags::DIRECT,
            OFlags::empty(),
            "O_DIRECT left on"
        );
    }
}
