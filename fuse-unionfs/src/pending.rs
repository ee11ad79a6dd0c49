//! Big copy-ups that finish after the request that needed them.
//!
//! Kernel overlayfs syncs a copy before it shows (ovl_copy_up_file): appending one byte to
//! a 1 GiB lower file waits for 1 GiB to reach the disk (over 2 s here). fuse-overlayfs
//! does not sync, and a crash can leave its half-written copy shadowing the lower file.
//! Here a big file's copy shows unsynced and a job in the background syncs it; for an
//! append-only opener (`O_WRONLY|O_APPEND`), which cannot read the file, the copy shows at
//! its full size before its data is there, and the job fills it in while the appends land
//! past its end.
//!
//! What keeps a crash from showing a half-made copy: before the copy shows, a record
//! naming it (the file handle of its upper parent, its name, its inode number) is made
//! durable in the work dir, and the job removes it once the copy and its name are on the
//! disk. [`recover`] runs before either driver mounts the union again and removes each copy
//! a record still names, so the lower file shows again, as if that copy-up had not
//! happened (what was written to the copy without an fsync is lost, as it may be on any
//! file system). An fsync of the copy waits for its job, so what a caller synced stays.
//!
//! Until its job is done, a request that would read the copy's data, change it other than
//! by appending, sync it, give it another name or move it waits for the job
//! ([`Pending::settle`]); a file with set-id bits or file capabilities is filled before it
//! shows (the job's writes would clear them). Its opens meanwhile are not passed through
//! (`Fs::open_mode`): each write comes to this server, which holds one below the size the
//! copy showed at until the fill is done ([`Pending::settle_write`]: an appender may stop
//! appending), and the FSYNC the kernel sends after a write synced by itself (O_DSYNC,
//! RWF_DSYNC) waits for the job. A union whose file handles cannot be decoded
//! (no CAP_DAC_READ_SEARCH) copies as before, synced before the copy shows.
//!
//! A job works a chunk at a time and gives way to the union's requests ([`give_way`]),
//! writing each chunk out as it goes (`copyup::fill`); a request that waits for it has it
//! go on at full speed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{
    AtFlags, FlockOperation, Mode, OFlags, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT,
};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::layer::Res;

/// The records' directory, inside the work dir beside this server's scratch dir (which a
/// mount empties; this one [`recover`] reads first).
pub(crate) const RECORDS_DIR: &str = "strata-copyups";
const RECORD_MAGIC: &str = "strata unfinished copy-up v1";

/// The durable record of a copy that may not be on the disk yet.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    /// File handle (type, bytes) of the copy's upper parent directory.
    parent: (i32, Vec<u8>),
    name: OsString,
    /// File handle of the copy itself (its generation too): whatever has the name later,
    /// or an inode reused since, is left alone.
    copy: (i32, Vec<u8>),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Record {
    fn encode(&self) -> String {
        format!(
            "{RECORD_MAGIC}\nparent {} {}\nname {}\ncopy {} {}\nend\n",
            self.parent.0,
            hex(&self.parent.1),
            hex(self.name.as_bytes()),
            self.copy.0,
            hex(&self.copy.1),
        )
    }

    /// None for anything else, a torn record among them: a record is synced before its
    /// copy shows, so a torn one stood for no copy.
    fn decode(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != RECORD_MAGIC {
            return None;
        }
        let (mut parent, mut name, mut copy, mut end) = (None, None, None, false);
        for line in lines {
            if end {
                return None;
            }
            if line == "end" {
                end = true;
                continue;
            }
            let handle = |rest: &str| {
                let (kind, bytes) = rest.split_once(' ')?;
                Some((kind.parse().ok()?, unhex(bytes)?))
            };
            match line.split_once(' ')? {
                ("parent", rest) => parent = Some(handle(rest)?),
                ("name", rest) => name = Some(OsString::from_vec(unhex(rest)?)),
                ("copy", rest) => copy = Some(handle(rest)?),
                _ => return None,
            }
        }
        if !end || !text.ends_with('\n') {
            return None;
        }
        let name = name.filter(|n| !n.is_empty() && !n.as_bytes().contains(&b'/'))?;
        Some(Record {
            parent: parent?,
            name,
            copy: copy?,
        })
    }
}

fn io_error(what: &'static str, path: &Path, err: Errno) -> Error {
    Error::io(what, path, std::io::Error::from(err))
}

/// Records of jobs that failed are renamed with this prefix: no job is finishing them, and
/// only a recovery undoes their copies.
const FAILED: &str = "failed-";

/// Undoes the copy-ups a crash left unfinished in the union of `upper` and `work` (see the
/// module doc): each copy a record names is removed, then the record. Returns how many
/// copies were removed. A server of the union holds a shared lock on the records for as
/// long as it runs; while it is still finishing copy-ups (a server unmounted a moment ago),
/// this waits for them, up to `timeout`. Without CAP_DAC_READ_SEARCH the records cannot be
/// read: an error says so, and mounting waits for someone who can.
pub(crate) fn recover(upper: &Path, work: &Path, timeout: std::time::Duration) -> Result<usize> {
    let dir_path = work.join(RECORDS_DIR);
    let dir = match rustix::fs::open(
        &dir_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(0),
        Err(err) => return Err(io_error("open directory", &dir_path, err)),
    };
    let started = std::time::Instant::now();
    loop {
        match rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            // A server runs: whatever it has not finished is its own business.
            Err(Errno::WOULDBLOCK) if !in_flight(work) => return Ok(0),
            Err(Errno::WOULDBLOCK) if started.elapsed() < timeout => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(Errno::WOULDBLOCK) => {
                return Err(Error::Spec(format!(
                    "{}: the union's FUSE server is still finishing copy-ups after {timeout:?}",
                    upper.display()
                )));
            }
            // (a file system without locks: no server could keep records on it)
            Err(_) if !in_flight(work) => return Ok(0),
            Err(err) => return Err(io_error("lock", &dir_path, err)),
        }
    }
    let upper_fd = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error("open directory", upper, e))?;
    let upper_path = std::fs::canonicalize(upper).map_err(|e| Error::io("resolve", upper, e))?;
    let entries = std::fs::read_dir(&dir_path).map_err(|e| Error::io("list", &dir_path, e))?;
    let (mut undone, mut removed) = (0, false);
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", &dir_path, e))?;
        let path = entry.path();
        let text = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        if let Some(record) = Record::decode(&String::from_utf8_lossy(&text)) {
            match undo(upper_fd.as_fd(), &upper_path, &record) {
                Ok(Some(copy)) => {
                    tracing::warn!(
                        "{}: its copy-up was not finished when the union last went down; \
                         removed the copy (and what was written to it), so the lower file \
                         shows again",
                        copy.display()
                    );
                    undone += 1;
                }
                Ok(None) => {}
                Err(Errno::PERM) => {
                    return Err(Error::Spec(format!(
                        "{} records copy-ups left unfinished; undoing them needs \
                         CAP_DAC_READ_SEARCH (open_by_handle_at): mount this union once as root",
                        path.display()
                    )));
                }
                Err(err) => return Err(io_error("undo the copy-up recorded in", &path, err)),
            }
        }
        rustix::fs::unlinkat(&dir, entry.file_name(), AtFlags::empty())
            .map_err(|e| io_error("remove", &path, e))?;
        removed = true;
    }
    // (no record, nothing to make durable: a mount does not wait for a journal commit)
    if removed {
        rustix::fs::fsync(&dir).map_err(|e| io_error("sync", &dir_path, e))?;
    }
    Ok(undone)
}

/// Makes the upper dir of the union of `upper` and `work` safe to read from outside the
/// union (a commit of a running container): while a server runs it, waits up to `timeout`
/// for its copy-ups to be finished; after a crash, undoes the unfinished ones. A copy whose
/// job failed in a running server is an error: only the next mount undoes it.
pub fn finish_copy_ups(upper: &Path, work: &Path, timeout: std::time::Duration) -> Result<()> {
    recover(upper, work, timeout)?;
    let dir = work.join(RECORDS_DIR);
    let failed = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().as_bytes().starts_with(FAILED.as_bytes()))
        })
        .unwrap_or(false);
    if failed {
        return Err(Error::Spec(format!(
            "{}: a copy-up failed in the union's running FUSE server (its log says which); \
             unmount the union, and the next mount removes that copy",
            upper.display()
        )));
    }
    Ok(())
}

/// Whether the union with work dir `work` has copy-ups a server is still finishing (or a
/// crash left unfinished).
pub(crate) fn in_flight(work: &Path) -> bool {
    std::fs::read_dir(work.join(RECORDS_DIR)).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().as_bytes().starts_with(FAILED.as_bytes()))
    })
}

/// Removes the copy `record` names if it still has that name in a directory below
/// `upper_path`; its path if it did.
fn undo(upper: BorrowedFd<'_>, upper_path: &Path, record: &Record) -> Res<Option<PathBuf>> {
    let open =
        |(kind, handle): &(i32, Vec<u8>)| match crate::sys::open_by_handle(upper, *kind, handle) {
            Ok(fd) => Ok(Some(fd)),
            // gone (the copy, or its directory and the copy with it)
            Err(Errno::STALE | Errno::NOENT) => Ok(None),
            Err(err) => Err(err),
        };
    let (Some(copy), Some(parent)) = (open(&record.copy)?, open(&record.parent)?) else {
        return Ok(None);
    };
    let copy = rustix::fs::fstat(&copy)?;
    // (an O_PATH descriptor: opened again to be written in)
    let parent = rustix::fs::openat(
        &parent,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match rustix::fs::statat(&parent, &record.name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if (st.st_dev, st.st_ino) == (copy.st_dev, copy.st_ino) => {}
        Ok(_) | Err(Errno::NOENT) => return Ok(None),
        Err(err) => return Err(err),
    }
    // (a handle names any directory of the file system: only the upper dir's are ours)
    let dir = rustix::fs::readlinkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&parent)),
        Vec::new(),
    )
    .map(|p| PathBuf::from(OsString::from_vec(p.into_bytes())))?;
    if !dir.starts_with(upper_path) {
        return Ok(None);
    }
    rustix::fs::unlinkat(&parent, &record.name, AtFlags::empty())?;
    rustix::fs::fsync(&parent)?;
    Ok(Some(dir.join(&record.name)))
}

/// What a job has left to do for one copy.
pub(crate) struct Work {
    /// The lower file, and the copy (open read-write: it may have been renamed since).
    pub src: OwnedFd,
    pub dst: OwnedFd,
    /// Byte ranges of the lower file's data still to copy (an append-only opener's).
    pub fill: Vec<(u64, u64)>,
    /// Sync the copy and its parent dir (off in a volatile union).
    pub sync: bool,
    /// The copy's upper parent dir, to sync once the copy is renamed into it.
    pub parent: Option<OwnedFd>,
    /// The record's name in the records dir, removed once all is on the disk.
    pub record: Option<OsString>,
    /// The copy's size and times when it showed: the fill's writes change its times, which
    /// are put back if nothing was appended.
    pub shown: Option<(u64, rustix::fs::Timestamps)>,
    /// For messages.
    pub path: PathBuf,
}

/// What of a copy-up may be left to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Later {
    /// Nothing: the copy is whole and synced before it shows.
    No,
    /// Its sync.
    Sync,
    /// Its data too (an opener that only appends).
    Fill,
}

/// What a request needs of a copy whose job is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Need {
    /// Its data (a read, a change): the fill done.
    Data,
    /// Its durability (an fsync, a new name for it): the job done, its record gone.
    Durable,
}

/// How far one copy's job has got.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Filling,
    /// Filled; syncing.
    Filled,
    Done,
    Failed,
}

struct Job {
    phase: Mutex<Phase>,
    cond: Condvar,
    /// Requests waiting for it: the job then does not give way ([`give_way`]).
    waiters: AtomicUsize,
    /// The copy's path in the upper branch. It holds while the job runs: a request that
    /// would give the copy or a directory above it a new name waits for the job first.
    path: PathBuf,
    /// The size the copy showed at when its data is left to fill (0: none): a write from
    /// there on (an append) need not wait for the job.
    filled_below: u64,
}

impl Job {
    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.cond.notify_all();
    }

    fn failed(&self) -> bool {
        matches!(
            *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            Phase::Failed
        )
    }

    fn wait(&self, need: Need) -> Res<()> {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let mut waiting = None;
        loop {
            match (*phase, need) {
                (Phase::Failed, _) => return Err(Errno::IO),
                (Phase::Done, _) | (Phase::Filled, Need::Data) => return Ok(()),
                _ => {
                    waiting.get_or_insert_with(|| Waiting::new(&self.waiters));
                    phase = self.cond.wait(phase).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

/// Counts a waiter for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A job gives way to the union's callers before each chunk of its work (`copyup::fill`):
/// while this process serves a request, or served one less than [`QUIET`] ago, it waits,
/// for at most [`GIVE_WAY_MAX`] a chunk, so that under load that never pauses it still
/// moves on (8 MiB a second). Its reads and writes would otherwise fill the disk's queue,
/// and each cold read of a request would wait behind them: an `rm -rf` of a lower tree of
/// 1,061 entries took 0.25-0.42 s here while a 1 GiB copy-up's job ran, 0.14 s alone. And
/// what it writes while a request runs, that request's syncfs or fsync has the disk flush
/// too (a virtual disk's flush waits for the host to write it all). It does not give way
/// while a request waits for it (a read of the copy, an fsync, an unmount).
fn give_way(job: &Job) {
    let until = Instant::now() + GIVE_WAY_MAX;
    while job.waiters.load(Ordering::Relaxed) == 0
        && fuser::idle_for() < QUIET
        && Instant::now() < until
    {
        std::thread::sleep(QUIET);
    }
}

const QUIET: Duration = Duration::from_millis(2);
const GIVE_WAY_MAX: Duration = Duration::from_secs(1);

struct Jobs {
    /// By the FUSE inode number of the copy.
    by_ino: Mutex<HashMap<u64, Arc<Job>>>,
    /// How many are in the map: zero is the common case, checked without the lock.
    count: AtomicUsize,
    records: Option<OwnedFd>,
    next_record: AtomicU64,
    /// The work dir, synced before the first record (so the records dir's own entry is on
    /// the disk), not at every mount.
    work: PathBuf,
    work_synced: std::sync::atomic::AtomicBool,
}

/// Ends a job when dropped: its phase set (Failed unless told otherwise) and, once done,
/// its entries gone from the map (a failed job keeps them, so that its readers fail).
struct Ending<'a> {
    jobs: &'a Jobs,
    job: &'a Arc<Job>,
    phase: Phase,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let mut map = self.jobs.by_ino.lock().unwrap_or_else(|e| e.into_inner());
        self.job.set(self.phase);
        if matches!(self.phase, Phase::Done) {
            map.retain(|_, job| !Arc::ptr_eq(job, self.job));
        }
        self.jobs.count.store(map.len(), Ordering::Release);
    }
}

/// The copy-ups of one union still being finished (see the module doc).
pub(crate) struct Pending {
    jobs: Arc<Jobs>,
}

impl Pending {
    /// Records go in `work`'s records dir; `upper`'s file handles must decode (else no
    /// records, and [`Pending::records`] says so).
    pub(crate) fn new(upper: BorrowedFd<'_>, work: &Path) -> Pending {
        let handles = crate::sys::file_handle(upper, Path::new(""))
            .and_then(|(kind, handle)| crate::sys::open_by_handle(upper, kind, &handle))
            .is_ok();
        let records = handles
            .then(|| {
                let path = work.join(RECORDS_DIR);
                let made = match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => Ok(()),
                    Err(err) => Err(err),
                };
                let dir = made.and_then(|()| {
                    rustix::fs::open(
                        &path,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                });
                // Held for as long as this server runs (see `recover`, which holds the
                // exclusive lock only while it undoes copies).
                let locked = dir.and_then(|dir| {
                    rustix::fs::flock(&dir, FlockOperation::LockShared).map(|()| dir)
                });
                locked
                    .inspect_err(|err| {
                        tracing::warn!(
                            "{}: {err}; big copy-ups are synced before they show",
                            path.display()
                        );
                    })
                    .ok()
            })
            .flatten();
        Pending {
            jobs: Arc::new(Jobs {
                by_ino: Mutex::new(HashMap::new()),
                count: AtomicUsize::new(0),
                records,
                next_record: AtomicU64::new(0),
                work: work.to_path_buf(),
                work_synced: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether copies may show before they are synced (records can be kept).
    pub(crate) fn records(&self) -> bool {
        self.jobs.records.is_some()
    }

    /// Makes the record of `copy` (a file handle), about to show as `name` in the upper dir
    /// `parent` (see the module doc), durable; returns its name, for [`Work::record`].
    pub(crate) fn record(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        copy: (i32, Vec<u8>),
    ) -> Res<OsString> {
        let dir = self.jobs.records.as_ref().ok_or(Errno::NOTSUP)?;
        if !self.jobs.work_synced.load(Ordering::Acquire) {
            let work = rustix::fs::open(&self.jobs.work, OFlags::RDONLY, Mode::empty())?;
            rustix::fs::fsync(&work)?;
            self.jobs.work_synced.store(true, Ordering::Release);
        }
        let record = Record {
            parent: crate::sys::file_handle(parent, Path::new(""))?,
            name: name.to_os_string(),
            copy,
        };
        let n = self.jobs.next_record.fetch_add(1, Ordering::Relaxed);
        let file_name = OsString::from(format!("{}-{n}", std::process::id()));
        let file = rustix::fs::openat(
            dir,
            &file_name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let written = write_all(file.as_fd(), record.encode().as_bytes())
            .and_then(|()| rustix::fs::fsync(&file))
            .and_then(|()| rustix::fs::fsync(dir));
        if let Err(err) = written {
            self.drop_record(&file_name);
            return Err(err);
        }
        Ok(file_name)
    }

    /// Forgets a record whose copy never showed (or showed whole and synced).
    pub(crate) fn drop_record(&self, name: &OsStr) {
        if let Some(dir) = &self.jobs.records {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .and_then(|()| rustix::fs::fsync(dir));
        }
    }

    /// Starts the job finishing the copy of inode `ino`, in a thread of its own.
    pub(crate) fn start(&self, ino: u64, work: Work) {
        let job = Arc::new(Job {
            phase: Mutex::new(Phase::Filling),
            cond: Condvar::new(),
            waiters: AtomicUsize::new(0),
            path: work.path.clone(),
            filled_below: work.shown.as_ref().map_or(0, |(size, _)| *size),
        });
        {
            let mut map = self.jobs.by_ino.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(ino, job.clone());
            self.jobs.count.store(map.len(), Ordering::Release);
        }
        let jobs = self.jobs.clone();
        // (shared, so that this thread can run the job if no thread can be made for it)
        let slot = Arc::new(Mutex::new(Some(work)));
        let taken = slot.clone();
        let run = move || {
            let Some(work) = taken.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return;
            };
            // Whatever happens (a panic too), the job ends and its waiters go on.
            let mut ending = Ending {
                jobs: &jobs,
                job: &job,
                phase: Phase::Failed,
            };
            let records = jobs.records.as_ref().map(|d| d.as_fd());
            match finish(&work, records, || job.set(Phase::Filled), || give_way(&job)) {
                Ok(()) => ending.phase = Phase::Done,
                Err(err) => {
                    // The record stays, marked failed: the next mount removes the copy.
                    tracing::error!(
                        "{}: finishing its copy-up failed: {err}. Reads of it fail; what is \
                         written to it is lost when the union is next mounted, which removes \
                         the copy so that the lower file shows again",
                        work.path.display()
                    );
                    if let (Some(dir), Some(name)) = (records, &work.record) {
                        let mut failed = OsString::from(FAILED);
                        failed.push(name);
                        let _ = rustix::fs::renameat(dir, name, dir, &failed);
                    }
                }
            }
        };
        let job_thread = run.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-copyup-job".into())
            .spawn(move || {
                crate::copyup::unpin();
                // The job's writes (the sync of a big file) must not hold up the disk for
                // the requests it left to go on: theirs go first.
                let _ = crate::sys::idle_io();
                job_thread();
            });
        if let Err(err) = spawned {
            tracing::warn!("no thread to finish a copy-up ({err}): finishing it now");
            run();
        }
        drop(slot);
    }

    /// Files the job of inode `old`, if it has one, under `new` too (the copy took a new
    /// number, `Union::supersede`).
    pub(crate) fn alias(&self, old: u64, new: u64) {
        let mut map = self.jobs.by_ino.lock().unwrap_or_else(|e| e.into_inner());
        // (a job done meanwhile has left the map, and would never leave it again)
        let running = map.get(&old).filter(|job| {
            !matches!(
                *job.phase.lock().unwrap_or_else(|e| e.into_inner()),
                Phase::Done
            )
        });
        if let Some(job) = running.cloned() {
            map.insert(new, job);
            self.jobs.count.store(map.len(), Ordering::Release);
        }
    }

    /// Whether no job is running (or failed): nothing to wait for.
    pub(crate) fn idle(&self) -> bool {
        self.jobs.count.load(Ordering::Acquire) == 0
    }

    fn job(&self, ino: u64) -> Option<Arc<Job>> {
        if self.idle() {
            return None;
        }
        let map = self.jobs.by_ino.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ino).cloned()
    }

    /// Whether inode `ino` has a job not done yet, or one that failed (kept until the next
    /// mount, which removes the copy): its opens are served here, not passed through to the
    /// copy, so that each write comes here first (`settle_write`, and the FSYNC the kernel
    /// sends after an O_DSYNC or RWF_DSYNC write) and a failed copy's reads and writes fail.
    pub(crate) fn running(&self, ino: u64) -> bool {
        self.job(ino).is_some()
    }

    /// Waits until the job of inode `ino`, if it has one, has done what `need` asks; EIO if
    /// the job failed.
    pub(crate) fn settle(&self, ino: u64, need: Need) -> Res<()> {
        match self.job(ino) {
            Some(job) => fuser::blocking(|| job.wait(need)),
            None => Ok(()),
        }
    }

    /// [`Pending::settle`] for a write at `offset`: an append (from the size the copy
    /// showed at) goes on at once; a write below that waits for the fill, which would
    /// overwrite it, and for the copy's times to be put back, which would undo its mtime
    /// (an appender that stopped appending, by `fcntl(F_SETFL)` or RWF_NOAPPEND).
    pub(crate) fn settle_write(&self, ino: u64, offset: u64) -> Res<()> {
        match self.job(ino) {
            Some(job) if offset < job.filled_below => fuser::blocking(|| job.wait(Need::Data)),
            Some(job) if job.failed() => Err(Errno::IO),
            _ => Ok(()),
        }
    }

    /// Waits until every job has done what `need` asks (a failed one does not hold this up).
    pub(crate) fn settle_all(&self, need: Need) {
        self.settle_under(Path::new(""), need);
    }

    /// [`Pending::settle_all`] for the copies at or below `dir` (relative to the upper
    /// branch): those a rename of `dir` moves.
    pub(crate) fn settle_under(&self, dir: &Path, need: Need) {
        if self.idle() {
            return;
        }
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .by_ino
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|job| job.path.starts_with(dir))
            .cloned()
            .collect();
        fuser::blocking(|| {
            for job in jobs {
                let _ = job.wait(need);
            }
        });
    }
}

impl Drop for Pending {
    /// A server that ends (unmounted) finishes its copies first.
    fn drop(&mut self) {
        self.settle_all(Need::Durable);
    }
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Res<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The job: the data still to copy (then `filled`), the syncs, then the record goes.
fn finish(
    work: &Work,
    records: Option<BorrowedFd<'_>>,
    filled: impl FnOnce(),
    give_way: impl Fn(),
) -> Res<()> {
    if work.fill.is_empty() && work.sync {
        // (a copy made whole before it showed: its pages are all dirty)
        let size = rustix::fs::fstat(&work.dst)?.st_size as u64;
        crate::copyup::write_out(work.dst.as_fd(), size, &give_way);
    }
    crate::copyup::fill(
        work.src.as_fd(),
        work.dst.as_fd(),
        &work.fill,
        work.sync,
        &give_way,
    )?;
    let size_now = || rustix::fs::fstat(&work.dst).map(|st| st.st_size as u64);
    if let Some((size, times)) = &work.shown
        && size_now()? == *size
    {
        rustix::fs::futimens(&work.dst, times)?;
        // (an append between the check and the restore had its mtime undone: now, again)
        if size_now()? != *size {
            let now = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_NOW,
                },
            };
            rustix::fs::futimens(&work.dst, &now)?;
        }
    }
    filled();
    if work.sync {
        rustix::fs::fsync(&work.dst)?;
        if let Some(parent) = &work.parent {
            rustix::fs::fsync(parent)?;
        }
    }
    if let (Some(dir), Some(name)) = (records, &work.record) {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        rustix::fs::fsync(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_record_reads_back_and_a_torn_one_is_none() {
        let record = Record {
            parent: (1, vec![0, 1, 0xfe, 0xff]),
            name: OsString::from_vec(b"odd name\n\xff".to_vec()),
            copy: (2, vec![9, 8, 7]),
        };
        let text = record.encode();
        assert_eq!(Record::decode(&text), Some(record));
        for cut in 0..text.len() - 1 {
            assert_eq!(Record::decode(&text[..cut]), None, "cut at {cut}: {text:?}");
        }
        assert_eq!(Record::decode(&text.replace("name ", "name 2f")), None);
    }

    /// A record names a copy: `recover` removes it if it still has its name, and leaves
    /// another file that took the name.
    #[test]
    fn recovery_removes_the_copy_a_record_names_and_nothing_else() {
        let root = tempfile::tempdir_in("/var/tmp").unwrap();
        let (upper, work) = (root.path().join("upper"), root.path().join("work"));
        std::fs::create_dir_all(upper.join("d/e")).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let upper_fd = rustix::fs::open(&upper, OFlags::RDONLY, Mode::empty()).unwrap();
        let pending = Pending::new(upper_fd.as_fd(), &work);
        assert!(
            pending.records(),
            "no file handles on /var/tmp (as root: sudo cargo test)"
        );
        let dir = |rel: &str| rustix::fs::open(upper.join(rel), OFlags::RDONLY, Mode::empty());
        let handle = |rel: &str| crate::sys::file_handle(upper_fd.as_fd(), Path::new(rel)).unwrap();
        // records `name` in `parent` as the file now at `file`
        let record = |pending: &Pending, parent: &str, name: &str, file: &str| {
            let parent = dir(parent).unwrap();
            pending
                .record(parent.as_fd(), OsStr::new(name), handle(file))
                .unwrap()
        };
        std::fs::write(upper.join("d/e/copy"), b"half").unwrap();
        std::fs::write(upper.join("d/replaced"), b"old").unwrap();
        record(&pending, "d/e", "copy", "d/e/copy");
        record(&pending, "d", "replaced", "d/replaced");
        // another file takes the second name
        std::fs::write(upper.join("d/new"), b"new").unwrap();
        std::fs::rename(upper.join("d/new"), upper.join("d/replaced")).unwrap();
        // a record of a directory removed since
        std::fs::create_dir(upper.join("gone")).unwrap();
        record(&pending, "gone", "x", "d/replaced");
        std::fs::remove_dir(upper.join("gone")).unwrap();
        // the parent moved since: the handle still finds it
        std::fs::rename(upper.join("d/e"), upper.join("d/f")).unwrap();
        drop(pending);

        assert_eq!(recover(&upper, &work, Duration::ZERO).unwrap(), 1);
        assert!(!upper.join("d/f/copy").exists(), "the recorded copy stayed");
        assert_eq!(std::fs::read(upper.join("d/replaced")).unwrap(), b"new");
        let left = std::fs::read_dir(work.join(RECORDS_DIR)).unwrap().count();
        assert_eq!(left, 0, "records left");
        // a finished job's record is gone: nothing to undo
        let pending = Pending::new(upper_fd.as_fd(), &work);
        std::fs::write(upper.join("d/f/copy"), b"whole").unwrap();
        let name = record(&pending, "d/f", "copy", "d/f/copy");
        pending.drop_record(&name);
        assert_eq!(recover(&upper, &work, Duration::ZERO).unwrap(), 0);
        // a running server's records are its own: recovery waits for them, then gives up
        let name = record(&pending, "d/f", "copy", "d/f/copy");
        let err = recover(&upper, &work, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("still finishing"), "{err}");
        assert_eq!(std::fs::read(upper.join("d/f/copy")).unwrap(), b"whole");
        pending.drop_record(&name);
        assert_eq!(std::fs::read(upper.join("d/f/copy")).unwrap(), b"whole");
    }
}
