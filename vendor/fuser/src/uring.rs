//! FUSE over io_uring (Linux 6.14 and later, when `/sys/module/fuse/parameters/enable_uring`
//! is `Y`).
//!
//! The kernel keeps one request queue per possible CPU and puts each request on the queue of
//! the CPU its caller runs on. Here every queue is served by threads pinned to that CPU,
//! each with its own ring and one registered entry. A request is then read, served and
//! answered on the CPU that sent it, with no cross-CPU wakeup, which is most of a FUSE
//! round trip's cost on a virtual machine. When the reply wakes the caller, the scheduler
//! would rather put it on an idle CPU; [`keep_cpu`] keeps it where it is when it can.
//!
//! A queue starts with one thread (`Config::io_uring_threads`), as libfuse's io_uring
//! queues do, and its threads run under SCHED_BATCH (SCHED_IDLE while [`keep_cpu`] keeps
//! callers), which does not preempt the task that woke them. A caller's asynchronous requests (RELEASE after close(2), writeback) then wait
//! until it blocks on its next synchronous one, and the thread serves both in one wakeup:
//! the commit of the first fetches the second. With a second thread, or with preemption,
//! every such pair cost two more context switches. A handler about to take long (a big
//! copy-up, an fsync) says so with [`blocking`]: when every thread of its queue is inside
//! such a section, the queue gets one more thread first, so the CPU's other callers go on.
//!
//! Requests arrive split in three: the `fuse_in_header`, the opcode's fixed struct and the
//! rest (names, write data). They are laid back together in front of the payload, without
//! copying it, and parsed by the same code as requests read from /dev/fuse. FORGET and
//! INTERRUPT still come through /dev/fuse, where the ordinary event loops read them.

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread;
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use zerocopy::FromBytes;
use zerocopy::FromZeros;
use zerocopy::IntoBytes;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::dev_fuse::DevFuse;
use crate::ll::fuse_abi as abi;
use crate::request::RequestWithSender;
use crate::session::Ended;
use crate::session::Role;
use crate::session::SessionEventLoop;
use crate::session::spawn_reporting;

mod keep_cpu;
pub use keep_cpu::KeepCallerCpu;
use keep_cpu::KeepCpu;
use keep_cpu::Window;

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Room in front of the payload for the in-header and the opcode's struct.
const GAP: usize = 256;
const _: () =
    assert!(size_of::<abi::fuse_in_header>() + abi::FUSE_URING_OP_IN_OUT_SZ <= GAP && GAP % 8 == 0);

/// Opcodes the kernel expects no reply to (it sends most of them to /dev/fuse anyway).
const NO_REPLY: [abi::fuse_opcode; 4] = [
    abi::fuse_opcode::FUSE_FORGET,
    abi::fuse_opcode::FUSE_INTERRUPT,
    abi::fuse_opcode::FUSE_NOTIFY_REPLY,
    abi::fuse_opcode::FUSE_BATCH_FORGET,
];

/// Completion results that mean the connection is gone: the thread's work is done.
const ENDED: [i32; 4] = [
    libc::ENOTCONN,
    libc::ECONNABORTED,
    libc::ENODEV,
    libc::ECANCELED,
];

/// The rings of every queue, made before the INIT reply promises io_uring to the kernel:
/// once promised, the kernel holds every request until each queue has an entry, so a ring
/// that cannot be made must be found out before, not after.
pub(crate) struct Rings {
    rings: Vec<(u16, Ring)>,
    payload_size: usize,
    keep_caller_cpu: KeepCallerCpu,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings")
            .field("rings", &self.rings.len())
            .field("payload_size", &self.payload_size)
            .field("keep_caller_cpu", &self.keep_caller_cpu)
            .finish()
    }
}

impl Rings {
    /// `threads_per_queue` rings for each possible CPU, with entries able to carry
    /// `payload_size` bytes (the kernel wants at least its largest request or reply).
    pub(crate) fn new(
        threads_per_queue: usize,
        payload_size: usize,
        keep_caller_cpu: KeepCallerCpu,
    ) -> io::Result<Rings> {
        let queues = possible_cpus()?;
        let qid_max = u16::try_from(queues).map_err(|_| io::Error::other("too many CPUs"))?;
        let mut rings = Vec::with_capacity(queues * threads_per_queue);
        for qid in 0..qid_max {
            for _ in 0..threads_per_queue.max(1) {
                rings.push((qid, new_ring()?));
            }
        }
        Ok(Rings {
            rings,
            payload_size,
            keep_caller_cpu,
        })
    }

    /// Starts one thread per ring, named `fuser-uring-QUEUE.N`; each serves requests until
    /// the connection ends and reports how it ended to `ended`.
    pub(crate) fn spawn<FS: Filesystem>(
        self,
        dev: &Arc<DevFuse>,
        event_loop: impl Fn(String) -> SessionEventLoop<FS> + Send + Sync + 'static,
        ended: &Ended,
    ) -> io::Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::with_capacity(self.rings.len());
        let mut previous = None;
        let mut n = 0;
        let queues = self
            .rings
            .iter()
            .map(|(qid, _)| *qid)
            .max()
            .map_or(0, |q| q + 1);
        let mut counts: Vec<QueueCount> = (0..queues).map(|_| QueueCount::default()).collect();
        for (qid, _) in &self.rings {
            counts[usize::from(*qid)].threads += 1;
        }
        let event_loop = Arc::new(event_loop);
        let keep = KeepCpu::new(self.keep_caller_cpu);
        let grow = Arc::new(Grow {
            counts: counts.into_iter().map(Mutex::new).collect(),
            spawn: {
                let (dev, ended, event_loop) = (dev.clone(), ended.clone(), event_loop.clone());
                let keep = keep.clone();
                let payload_size = self.payload_size;
                Box::new(move |qid, n, grow: Arc<Grow>| {
                    // Made on a thread of the queue: it inherits the CPU mask and policy.
                    let name = format!("fuser-uring-{qid}.{n}");
                    let ring = new_ring()?;
                    let mut server = Server::new(
                        qid,
                        ring,
                        &dev,
                        payload_size,
                        event_loop(name.clone()),
                        grow,
                        keep.clone(),
                    );
                    let (registered, waiting) = std::sync::mpsc::sync_channel(1);
                    server.registered = Some(registered);
                    spawn_reporting(name.clone(), Role::Ring, &ended, move || server.serve())?;
                    // Back only once its entry takes requests: one sent before would queue
                    // behind the caller's long section all the same (see `blocking`).
                    match waiting.recv_timeout(REGISTER_TIMEOUT) {
                        Ok(()) => Ok(()),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            warn!("{name} has not registered within {REGISTER_TIMEOUT:?}");
                            Ok(())
                        }
                        // It ended before registering (and said why): no thread was added.
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            Err(io::Error::other(format!("{name} ended before registering")))
                        }
                    }
                })
            },
        });
        // A thread starts with its creator's CPU mask, so each is made while this thread
        // is pinned to the queue's CPU: pinned from its first instruction, not some time
        // after the queue is already serving. Without our own mask, nothing is pinned.
        let own = match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
            Ok(cpus) => Some(RestoreAffinity(cpus)),
            Err(err) => {
                warn!("cannot read this thread's CPU mask ({err}); ring threads are not pinned");
                None
            }
        };
        for (qid, ring) in self.rings {
            n = if previous == Some(qid) { n + 1 } else { 0 };
            previous = Some(qid);
            let name = format!("fuser-uring-{qid}.{n}");
            let server = Server::new(
                qid,
                ring,
                dev,
                self.payload_size,
                event_loop(name.clone()),
                grow.clone(),
                keep.clone(),
            );
            if let Some(own) = &own
                && !pin_to_cpu(qid)
            {
                own.restore();
            }
            threads.push(spawn_reporting(name, Role::Ring, ended, move || {
                server.serve()
            })?);
        }
        drop(own);
        Ok(threads)
    }
}

fn new_ring() -> io::Result<Ring> {
    Ring::builder().build(4)
}

/// The most threads a queue grows to; past them a queue's callers wait as before.
const MAX_THREADS_PER_QUEUE: usize = 8;

/// How long [`blocking`] waits for a new thread's entry to be registered before it goes on.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct QueueCount {
    threads: usize,
    /// Threads inside a [`blocking`] section.
    blocked: usize,
}

/// Threads per queue, and how to start one more (see [`blocking`]).
struct Grow {
    counts: Vec<Mutex<QueueCount>>,
    #[allow(clippy::type_complexity)]
    spawn: Box<dyn Fn(u16, usize, Arc<Grow>) -> io::Result<()> + Send + Sync>,
}

impl Grow {
    fn count(&self, qid: u16) -> std::sync::MutexGuard<'_, QueueCount> {
        self.counts[usize::from(qid)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn enter(self: &Arc<Self>, qid: u16) {
        let mut count = self.count(qid);
        count.blocked += 1;
        if count.blocked < count.threads || count.threads >= MAX_THREADS_PER_QUEUE {
            return;
        }
        let n = count.threads;
        count.threads += 1;
        drop(count);
        if let Err(err) = (self.spawn)(qid, n, self.clone()) {
            warn!("cannot start another thread for queue {qid}: {err}");
            self.count(qid).threads -= 1;
        }
    }

    fn leave(&self, qid: u16) {
        self.count(qid).blocked -= 1;
    }
}

std::thread_local! {
    /// The queue a ring thread serves, for [`blocking`].
    static QUEUE: std::cell::RefCell<Option<(Arc<Grow>, u16)>> =
        const { std::cell::RefCell::new(None) };
    /// How deep in [`blocking`] sections this thread is: only the outermost counts.
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The ring thread's window, for [`blocking`] (see `KeepCpu::before_long_section`).
    static WINDOW: std::cell::RefCell<Option<(Arc<KeepCpu>, Arc<Window>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, which takes long (a big copy: seconds, not the milliseconds of most fsyncs).
/// On a ring thread whose queue's threads are all inside such a section, the queue first
/// gets one more thread, so the requests of the CPU's other callers are not held behind
/// `f`. Elsewhere it just runs `f`.
///
/// The thread is made before anything can queue behind `f`: the kernel hands a newly
/// registered entry new requests only, not those already waiting. It then serves for the
/// life of the mount (an entry cannot be taken back), and a queue of two threads costs
/// each close(2) a wakeup of its own: mark only what is really long.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    struct Leave(Option<(Arc<Grow>, u16)>);
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
            if let Some((grow, qid)) = &self.0 {
                grow.leave(*qid);
            }
        }
    }
    let outermost = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    let queue = if outermost {
        QUEUE.with(|q| q.borrow().clone())
    } else {
        None
    };
    if outermost {
        WINDOW.with(|w| {
            if let Some((keep, window)) = &*w.borrow() {
                keep.before_long_section(window);
            }
        });
    }
    if let Some((grow, qid)) = &queue {
        grow.enter(*qid);
    }
    let _leave = Leave(queue);
    f()
}

/// Gives the calling thread its CPU mask back when dropped (also on an early return).
struct RestoreAffinity(nix::sched::CpuSet);

impl RestoreAffinity {
    fn restore(&self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.0);
    }
}

impl Drop for RestoreAffinity {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The number of possible CPUs (`num_possible_cpus()`), which is the number of queues the
/// kernel makes; queue N takes the requests of CPU N.
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let bad = || io::Error::other(format!("cannot parse possible CPUs {text:?}"));
    // A list of ranges such as "0-3" or "0,2-5".
    let mut count = 0;
    for range in text.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let first: usize = first.parse().map_err(|_| bad())?;
        let last: usize = last.parse().map_err(|_| bad())?;
        count += last.checked_sub(first).ok_or_else(bad)? + 1;
    }
    Ok(count)
}

/// The reply to the request a ring thread is serving. Replies are stored here rather than
/// in the entry's payload, because the request being served borrows the payload until
/// its handler returns; and a handler may reply from another thread, later. A thread
/// reuses its `RingReply` (and its buffer) for the next request unless a handler still
/// holds it.
#[derive(Debug)]
pub(crate) struct RingReply {
    unique: AtomicU64,
    slot: Mutex<Slot>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    bytes: Vec<u8>,
    ready: bool,
    /// The ring thread waits for a late reply: only then does `store` wake it (a futex
    /// call on every reply otherwise).
    waiting: bool,
}

impl RingReply {
    fn new(unique: u64) -> Self {
        RingReply {
            unique: AtomicU64::new(unique),
            slot: Mutex::default(),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `bufs` (out-header first) answers this request, rather than being a
    /// notification, which must go to /dev/fuse.
    pub(crate) fn is_reply(&self, bufs: &[io::IoSlice<'_>]) -> bool {
        let unique = self.unique.load(Ordering::Relaxed);
        bufs.first()
            .and_then(|b| abi::fuse_out_header_unique(b))
            .is_some_and(|u| u == unique)
    }

    pub(crate) fn store(&self, bufs: &[io::IoSlice<'_>]) {
        let mut slot = self.lock();
        slot.bytes.clear();
        for buf in bufs {
            slot.bytes.extend_from_slice(buf);
        }
        self.ready(slot);
    }

    /// Whether `unique` is the request this reply answers.
    pub(crate) fn answers(&self, unique: u64) -> bool {
        self.unique.load(Ordering::Relaxed) == unique
    }

    /// Stores the reply `fill` lays out in place (see [`crate::ll::reply::fill_reply`]).
    pub(crate) fn fill(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut slot = self.lock();
        fill(&mut slot.bytes);
        self.ready(slot);
    }

    fn ready(&self, mut slot: std::sync::MutexGuard<'_, Slot>) {
        slot.ready = true;
        let waiting = slot.waiting;
        drop(slot);
        if waiting {
            self.done.notify_all();
        }
    }

    /// The stored reply, waiting for it unless `wait` is false; None when none came.
    fn take(&self, wait: bool) -> Option<std::sync::MutexGuard<'_, Slot>> {
        let mut slot = self.lock();
        while !slot.ready {
            if !wait {
                return None;
            }
            slot.waiting = true;
            slot = self.done.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot.waiting = false;
        slot.ready = false;
        Some(slot)
    }
}

/// One registered entry: the header buffer and the payload buffer the kernel reads requests
/// into and replies out of. Both are raw allocations because the kernel writes them while
/// the entry is registered; we touch them only between a completion and the next commit.
#[derive(Debug)]
struct Entry {
    header: NonNull<abi::fuse_uring_req_header>,
    /// `GAP` bytes, then the payload. 8-byte words, so parsed headers are aligned.
    buf: NonNull<[u64]>,
    payload_size: usize,
}

// The buffers are owned by the entry and only used by the thread serving it.
unsafe impl Send for Entry {}

impl Entry {
    fn new(payload_size: usize) -> Self {
        let header = Box::new(abi::fuse_uring_req_header::new_zeroed());
        let words = (GAP + payload_size).div_ceil(8);
        let buf: Box<[u64]> = vec![0u64; words].into_boxed_slice();
        Entry {
            header: NonNull::from(Box::leak(header)),
            buf: NonNull::from(Box::leak(buf)),
            payload_size,
        }
    }

    fn iovecs(&self) -> [libc::iovec; 2] {
        [
            libc::iovec {
                iov_base: self.header.as_ptr().cast(),
                iov_len: size_of::<abi::fuse_uring_req_header>(),
            },
            libc::iovec {
                // SAFETY: GAP is inside the allocation, which is GAP + payload_size long.
                iov_base: unsafe { self.buf.cast::<u8>().as_ptr().add(GAP) }.cast(),
                iov_len: self.payload_size,
            },
        ]
    }

    /// The header and the bytes buffer. Only between a completion and the next submit.
    fn parts(&mut self) -> (&mut abi::fuse_uring_req_header, &mut [u8]) {
        // SAFETY: both allocations are ours and live; the kernel does not touch them while
        // the entry is with userspace, which is the only time this is called.
        unsafe { (self.header.as_mut(), self.buf.as_mut().as_mut_bytes()) }
    }

    /// The request the kernel just delivered, laid out as /dev/fuse would give it.
    /// Also its unique, opcode and caller.
    fn request<'a>(&'a mut self, scratch: &'a mut Vec<u64>) -> io::Result<Delivered<'a>> {
        let payload_size = self.payload_size;
        let (header, buf) = self.parts();
        let (in_header, _) = abi::fuse_in_header::read_from_prefix(&header.in_out)
            .map_err(|_| io::Error::other("short in-header"))?;
        let payload = header.ring_ent_in_out.payload_sz as usize;
        let head = size_of::<abi::fuse_in_header>();
        let op = (in_header.len as usize)
            .checked_sub(head + payload)
            .filter(|&op| op <= abi::FUSE_URING_OP_IN_OUT_SZ && payload <= payload_size)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "malformed ring request: len {} with payload {payload}",
                    in_header.len
                ))
            })?;
        let start = GAP - op - head;
        buf[start..start + head].copy_from_slice(&header.in_out[..head]);
        buf[GAP - op..GAP].copy_from_slice(&header.op_in[..op]);
        let request = &buf[start..GAP + payload];
        let (unique, opcode, pid) = (in_header.unique, in_header.opcode, in_header.pid);
        if start % 8 == 0 {
            return Ok((unique, opcode, pid, request));
        }
        // An opcode struct whose size is not a multiple of 8 would leave the in-header
        // misaligned; no such struct exists today, but copy rather than misparse.
        scratch.clear();
        scratch.resize(request.len().div_ceil(8), 0);
        let bytes = &mut scratch.as_mut_bytes()[..request.len()];
        bytes.copy_from_slice(request);
        Ok((unique, opcode, pid, bytes))
    }

    /// Puts `reply` (out-header, then data) where the kernel reads it on commit.
    fn set_reply(&mut self, unique: u64, reply: &[u8]) {
        let payload_size = self.payload_size;
        let (header, buf) = self.parts();
        let head = size_of::<abi::fuse_out_header>();
        let (out, data) = match reply.split_at_checked(head) {
            Some((out, data)) if data.len() <= payload_size => (out, data),
            _ => {
                error!("reply to request {unique} does not fit the ring entry; answering EIO");
                header.in_out[..head].copy_from_slice(abi::fuse_out_header::eio(unique).as_bytes());
                header.ring_ent_in_out.payload_sz = 0;
                return;
            }
        };
        header.in_out[..head].copy_from_slice(out);
        buf[GAP..GAP + data.len()].copy_from_slice(data);
        header.ring_ent_in_out.payload_sz = data.len() as u32;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: made by Box::leak in `new`, dropped once.
        unsafe {
            drop(Box::from_raw(self.header.as_ptr()));
            drop(Box::from_raw(self.buf.as_ptr()));
        }
    }
}

/// A request as [`Entry::request`] gives it: unique, opcode, caller's pid, bytes.
type Delivered<'a> = (u64, u32, u32, &'a [u8]);

/// One thread's ring and entry.
struct Server<FS: Filesystem> {
    qid: u16,
    ring: Ring,
    dev: Arc<DevFuse>,
    entry: Entry,
    /// Where the request being served is answered; see [`RingReply`].
    reply: Option<Arc<RingReply>>,
    session: SessionEventLoop<FS>,
    grow: Arc<Grow>,
    /// Told once the entry is registered, for a thread [`blocking`] waits for.
    registered: Option<std::sync::mpsc::SyncSender<()>>,
    keep: Arc<KeepCpu>,
    /// This thread's commits under SCHED_IDLE, once it runs.
    window: Option<Arc<Window>>,
}

impl<FS: Filesystem> Server<FS> {
    fn new(
        qid: u16,
        ring: Ring,
        dev: &Arc<DevFuse>,
        payload_size: usize,
        session: SessionEventLoop<FS>,
        grow: Arc<Grow>,
        keep: Arc<KeepCpu>,
    ) -> Self {
        Server {
            qid,
            ring,
            dev: dev.clone(),
            entry: Entry::new(payload_size),
            reply: None,
            session,
            grow,
            registered: None,
            keep,
            window: None,
        }
    }

    /// Serves until the connection ends (Ok), the kernel refuses the entry and falls back
    /// to /dev/fuse (Ok), or the ring fails (Err: the queue has lost a server).
    fn serve(mut self) -> io::Result<()> {
        QUEUE.with(|q| *q.borrow_mut() = Some((self.grow.clone(), self.qid)));
        // SAFETY: sched_setscheduler with a valid param struct; failure changes nothing.
        let param = libc::sched_param { sched_priority: 0 };
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            debug!("SCHED_BATCH refused: {}", io::Error::last_os_error());
        }
        let window = self.keep.register(self.qid);
        self.window = Some(window.clone());
        WINDOW.with(|w| *w.borrow_mut() = Some((self.keep.clone(), window.clone())));
        let iov = self.entry.iovecs();
        let result = self.serve_entry(&iov);
        QUEUE.with(|q| q.borrow_mut().take());
        WINDOW.with(|w| w.borrow_mut().take());
        self.keep.unregister(&window);
        if result.is_err() {
            // A command may still be in flight, and the kernel write into the buffers.
            std::mem::forget(self.entry);
        }
        result
    }

    fn serve_entry(&mut self, iov: &[libc::iovec; 2]) -> io::Result<()> {
        self.register(iov)?;
        if let Some(registered) = self.registered.take() {
            // The kernel adds the entry to the queue while it takes the submission.
            submit_now(&mut self.ring)?;
            let _ = registered.send(());
        }
        // The kernel accepted the entry: it has delivered a request through it.
        let mut accepted = false;
        let mut scratch = Vec::new();
        loop {
            match self.next_completion()? {
                0 => accepted = true,
                e if e == -libc::EAGAIN && !accepted => {
                    // The kernel had not finished INIT yet; it will have in a moment.
                    thread::sleep(Duration::from_millis(1));
                    self.register(iov)?;
                    continue;
                }
                e if ENDED.contains(&-e) => {
                    let why = io::Error::from_raw_os_error(-e);
                    debug!("{} ends: {why}", self.session.thread_name);
                    return Ok(());
                }
                e if !accepted => {
                    // A refused REGISTER turns io_uring off for the connection: requests
                    // go on through /dev/fuse.
                    let why = io::Error::from_raw_os_error(-e);
                    warn!("FUSE over io_uring refused ({why}); serving from /dev/fuse");
                    return Ok(());
                }
                e => {
                    let err = io::Error::from_raw_os_error(-e);
                    error!("{}: {err}", self.session.thread_name);
                    return Err(err);
                }
            }
            let unique = self.serve_one(&mut scratch);
            // Submitted with the wait for the next request.
            self.commit(unique)?;
        }
    }

    /// Serves the request in the entry and leaves its reply there; returns its unique.
    fn serve_one(&mut self, scratch: &mut Vec<u64>) -> u64 {
        let (unique, opcode, pid, data) = match self.entry.request(scratch) {
            Ok(request) => request,
            Err(err) => {
                // Answer what we can read of it, so the caller is not left waiting.
                error!("{err}");
                let (header, _) = self.entry.parts();
                let unique = abi::fuse_in_header::read_from_prefix(&header.in_out)
                    .map_or(0, |(h, _)| h.unique);
                self.entry
                    .set_reply(unique, abi::fuse_out_header::eio(unique).as_bytes());
                return unique;
            }
        };
        let opcode = abi::fuse_opcode::try_from(opcode).ok();
        if let Some(window) = &self.window {
            // Nobody waits for a request owed no reply.
            let waited = opcode.filter(|op| !NO_REPLY.contains(op));
            self.keep.before_reply(window, pid, self.qid, waited);
        }
        match self.reply.as_mut().and_then(Arc::get_mut) {
            // Only this thread holds it: no handler can still answer an old request, and
            // nothing stored for one (a reply to a request owed none) carries over.
            Some(reply) => {
                *reply.unique.get_mut() = unique;
                reply
                    .slot
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .ready = false;
            }
            None => self.reply = Some(Arc::new(RingReply::new(unique))),
        }
        let reply = self.reply.clone().expect("set above");
        let sender = ChannelSender::for_ring(self.dev.clone(), reply.clone());
        match RequestWithSender::new(sender, data) {
            // As the /dev/fuse loop does; the session calls `destroy` when its threads end.
            _ if opcode == Some(abi::fuse_opcode::FUSE_DESTROY) => {
                reply.store(&[io::IoSlice::new(
                    abi::fuse_out_header::empty(unique).as_bytes(),
                )]);
            }
            Some(request) => {
                // A panicking handler drops its reply object, which answers EIO; without
                // the catch the entry would be lost with its caller waiting.
                let dispatched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    request.dispatch(&self.session)
                }));
                if dispatched.is_err() {
                    error!("{}: request {unique} panicked", self.session.thread_name);
                }
            }
            None => reply.store(&[io::IoSlice::new(
                abi::fuse_out_header::eio(unique).as_bytes(),
            )]),
        }
        // Nothing is owed for some requests; the entry still has to be committed to be
        // reused. Otherwise a handler that kept its reply object answers later, from
        // another thread: wait for it.
        let owed = !opcode.is_some_and(|op| NO_REPLY.contains(&op));
        match reply.take(owed) {
            Some(slot) => self.entry.set_reply(unique, &slot.bytes),
            None => self
                .entry
                .set_reply(unique, abi::fuse_out_header::empty(unique).as_bytes()),
        }
        unique
    }

    fn register(&mut self, iov: &[libc::iovec; 2]) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(
            types::Fd(self.dev.as_raw_fd()),
            abi::FUSE_IO_URING_CMD_REGISTER,
        )
        .cmd(self.cmd(0))
        .addr(Some(iov.as_ptr() as u64))
        .build();
        self.submit(with_len(sqe, iov.len() as u32))
    }

    fn commit(&mut self, unique: u64) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(
            types::Fd(self.dev.as_raw_fd()),
            abi::FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
        )
        .cmd(self.cmd(unique))
        .build();
        self.submit(sqe)
    }

    fn cmd(&self, commit_id: u64) -> [u8; 80] {
        let req = abi::fuse_uring_cmd_req {
            flags: 0,
            commit_id,
            qid: self.qid,
            padding: [0; 6],
        };
        let mut cmd = [0u8; 80];
        cmd[..size_of::<abi::fuse_uring_cmd_req>()].copy_from_slice(req.as_bytes());
        cmd
    }

    fn submit(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        // SAFETY: the buffers the command points at outlive it: the entry lives as long as
        // the thread (or is leaked), and REGISTER's iovec array lives on `serve`'s stack
        // until the thread ends, in case the kernel reads it after submission.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("ring submission queue full"))?;
        Ok(())
    }

    /// Submits what is queued and waits for the entry's command to complete; its result.
    fn next_completion(&mut self) -> io::Result<i32> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            if let Some(cqe) = self.ring.completion().next() {
                return Ok(cqe.result());
            }
        }
    }
}

/// Submits what is queued without waiting for anything.
fn submit_now(ring: &mut Ring) -> io::Result<()> {
    loop {
        match ring.submit() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            submitted => return submitted.map(drop),
        }
    }
}

/// Sets an SQE's `len` field, which `UringCmd80` has no setter for; REGISTER passes the
/// number of iovecs there.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    /// Offset of `len` in `struct io_uring_sqe` (uapi, fixed).
    const LEN: usize = 24;
    // SAFETY: Entry128 is repr(C): the 64-byte io_uring_sqe, then 64 bytes of command; any
    // bytes are a valid value of it.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[LEN..LEN + 4].copy_from_slice(&len.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Pins the calling thread to `cpu`; false (with a warning) when it cannot be.
fn pin_to_cpu(cpu: u16) -> bool {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(usize::from(cpu))
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(err) = &pinned {
        // An offline CPU gets no requests; its queue still needs an entry to be ready.
        warn!("cannot pin the ring threads of CPU {cpu}: {err}");
    }
    pinned.is_ok()
}
