//! Keeps a caller on the CPU whose ring thread answers it.
//!
//! A ring thread commits its reply while it is the running task of its caller's CPU, so
//! the scheduler wakes the caller on an idle CPU if there is one. The caller's next request
//! then goes to that CPU's queue, whose thread answers and sends the caller back: once
//! started, the caller changes CPU on every request, and the wakeup of an idle virtual CPU
//! is dear (35 us a request on a 2-CPU VM, against 4-5 us for a round trip on one CPU).
//!
//! The scheduler counts a CPU whose runnable tasks are all SCHED_IDLE as idle
//! (`sched_idle_cpu`), and wakes the caller there, on the CPU it last ran on: the one
//! answering it, which it preempts at once. So while callers are to be kept, a ring thread
//! runs under SCHED_IDLE, and goes back to SCHED_BATCH when they no longer are. It stays
//! there between requests rather than switching for each commit: two sched_setscheduler
//! calls and one io_uring_enter fewer a round trip, about 1 us of 4.5.
//!
//! A SCHED_IDLE thread gets almost no CPU beside a busy task (about 0.3%), so a watchdog
//! (SCHED_FIFO where it may be) looks at each such thread every [`STUCK`] (its state in
//! `/proc/thread-self/stat`, its CPU time from its CPU clock), and puts back under SCHED_BATCH
//! one that was runnable but hardly ran over two looks: its caller may be waiting for it. A thread it had to
//! put back shares its CPU with a busy task, where the trick does not work anyway: it stays
//! under SCHED_BATCH for [`BACKOFF`]. When callers are no longer kept, the watchdog also puts
//! back the threads still under SCHED_IDLE (their next request would, but there may be
//! none for a while), and then sleeps.
//!
//! In `Auto` mode callers are kept only while they are seen changing CPU: a request from
//! the same caller as the one before, through another queue, scores [`MOVED`], one through
//! the same queue takes a point off, and a score of [`ON`] turns it on for [`HOLD`]. A
//! caller moved on every request, or on every other one (both happen), gets there in a few
//! requests; the scheduler's occasional moves for other reasons do not.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use log::debug;
use log::warn;

use crate::ll::fuse_abi as abi;

/// When ring threads run under SCHED_IDLE to keep their callers on their CPU
/// (`Config::io_uring_keep_caller_cpu`).
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq)]
pub enum KeepCallerCpu {
    /// While callers are seen changing CPU.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The watchdog looks this often while a ring thread runs under SCHED_IDLE.
const STUCK: Duration = Duration::from_millis(2);

/// How long callers seen changing CPU are kept on theirs.
const HOLD: Duration = Duration::from_millis(500);

/// What a request that finds its caller moved adds to the score; one that does not takes
/// one point off...
const MOVED: u32 = 4;

/// ...and the score that turns it on (it is kept below `2 * ON`).
const ON: u32 = 12;

/// How long a thread the watchdog had to put back stays under SCHED_BATCH.
const BACKOFF: Duration = Duration::from_secs(1);

/// Requests the kernel sends in the background: nobody waits for their reply.
const BACKGROUND: [abi::fuse_opcode; 2] = [
    abi::fuse_opcode::FUSE_RELEASE,
    abi::fuse_opcode::FUSE_RELEASEDIR,
];

/// A session's state, shared by its ring threads and the watchdog.
pub(crate) struct KeepCpu {
    mode: KeepCallerCpu,
    /// A watchdog runs: without one, no thread goes under SCHED_IDLE.
    watching: AtomicBool,
    start: Instant,
    /// `tid << 16 | queue` of the last request a caller waited for...
    last: AtomicU64,
    /// ...and the score of callers moving (see [`MOVED`]).
    score: AtomicU32,
    /// Callers are kept until then (ms since `start`).
    until_ms: AtomicU64,
    windows: Mutex<Vec<Arc<Window>>>,
    watchdog: Mutex<Option<thread::Thread>>,
    /// The watchdog sleeps until a ring thread wakes it.
    parked: AtomicBool,
}

/// One ring thread, as the watchdog sees it.
pub(crate) struct Window {
    tid: libc::pid_t,
    /// The queue (= CPU) the thread serves.
    qid: u16,
    /// The caller of the last request someone waited for (its tid).
    caller: AtomicU32,
    /// The thread runs under SCHED_IDLE. Changed, with the policy, under the lock: by the
    /// thread, or by the watchdog.
    idle: Mutex<bool>,
    /// The watchdog put the thread back under SCHED_BATCH while the thread held `idle`
    /// (preempted there, under SCHED_IDLE): `idle` is to be cleared at the next lock.
    kicked: AtomicBool,
    /// Stays under SCHED_BATCH until then (ms since the session's start): see [`BACKOFF`].
    backoff_until_ms: AtomicU64,
    /// The thread's `/proc/thread-self/stat` and CPU clock; None if they cannot be read,
    /// and then the thread never goes under SCHED_IDLE, as nothing could see it starve.
    /// (The clock is exact also while the thread runs; schedstat's figure moves only at
    /// ticks and switches, so a thread running alone on a kernel with 10 ms ticks looked
    /// stalled.)
    proc: Option<(File, libc::clockid_t)>,
}

impl Window {
    /// `idle`, locked, with a kick of the watchdog taken into account.
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, bool> {
        let mut idle = lock(&self.idle);
        self.settle(&mut idle);
        idle
    }

    fn settle(&self, idle: &mut bool) {
        if self.kicked.swap(false, Ordering::SeqCst) {
            // as the thread is now: a kick may have come just before it went idle again
            // SAFETY: sched_getscheduler has no preconditions.
            *idle = unsafe { libc::sched_getscheduler(self.tid) } == libc::SCHED_IDLE;
        }
    }

    /// Puts the thread, found starved under SCHED_IDLE while it holds `idle` (preempted in
    /// the few instructions it spends there), back under SCHED_BATCH without the lock.
    /// Whether it did.
    fn kick(&self) -> bool {
        // SAFETY: sched_getscheduler has no preconditions.
        let kicked = unsafe { libc::sched_getscheduler(self.tid) } == libc::SCHED_IDLE
            && set_policy(self.tid, libc::SCHED_BATCH);
        if kicked {
            self.kicked.store(true, Ordering::SeqCst);
        }
        kicked
    }

    /// Whether the thread is runnable (running or waiting for a CPU), and the CPU time it
    /// has had (ns).
    fn sample(&self) -> Option<(bool, u64)> {
        let (stat, clock) = self.proc.as_ref()?;
        let mut buf = [0u8; 512];
        let n = stat.read_at(&mut buf, 0).ok()?;
        // "tid (comm) S ...": the state follows the last ')'.
        let end = buf[..n].iter().rposition(|&b| b == b')')?;
        let runnable = buf.get(end + 2) == Some(&b'R');
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id of a thread of this process, and a timespec to fill.
        if unsafe { libc::clock_gettime(*clock, &mut time) } != 0 {
            return None;
        }
        let ran = time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64;
        Some((runnable, ran))
    }
}

impl KeepCpu {
    /// The state for a session in `mode`; `Never` where a thread cannot leave SCHED_IDLE
    /// again (an unprivileged one whose RLIMIT_NICE forbids it).
    pub(crate) fn new(mode: KeepCallerCpu) -> Arc<KeepCpu> {
        let mode = if mode != KeepCallerCpu::Never && !can_leave_idle() {
            debug!("threads cannot leave SCHED_IDLE here: callers may change CPU");
            KeepCallerCpu::Never
        } else {
            mode
        };
        let keep = Arc::new(KeepCpu {
            mode,
            watching: AtomicBool::new(false),
            start: Instant::now(),
            last: AtomicU64::new(0),
            score: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            windows: Mutex::default(),
            watchdog: Mutex::default(),
            parked: AtomicBool::new(false),
        });
        if mode != KeepCallerCpu::Never {
            let weak = Arc::downgrade(&keep);
            match thread::Builder::new()
                .name("fuser-watchdog".into())
                .spawn(move || watch(&weak))
            {
                Ok(handle) => {
                    *lock(&keep.watchdog) = Some(handle.thread().clone());
                    keep.watching.store(true, Ordering::SeqCst);
                }
                Err(err) => warn!("cannot start the ring watchdog ({err}): callers may change CPU"),
            }
        }
        keep
    }

    /// The window of the calling ring thread, which serves queue `qid` (see `unregister`).
    pub(crate) fn register(&self, qid: u16) -> Arc<Window> {
        let proc = if self.watching.load(Ordering::SeqCst) {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: this thread's handle, and a clock id to fill.
            let clocked = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
            match File::open("/proc/thread-self/stat") {
                Ok(stat) if clocked == 0 => Some((stat, clock)),
                Ok(_) => {
                    debug!("no CPU clock for this thread: it stays under SCHED_BATCH");
                    None
                }
                Err(err) => {
                    debug!("no /proc stat ({err}): this ring thread stays under SCHED_BATCH");
                    None
                }
            }
        } else {
            None
        };
        let window = Arc::new(Window {
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
            qid,
            caller: AtomicU32::new(0),
            idle: Mutex::new(false),
            kicked: AtomicBool::new(false),
            backoff_until_ms: AtomicU64::new(0),
            proc,
        });
        lock(&self.windows).push(window.clone());
        window
    }

    /// The calling thread, whose `window` it is, ends: the watchdog forgets it.
    pub(crate) fn unregister(&self, window: &Arc<Window>) {
        lock(&self.windows).retain(|w| !Arc::ptr_eq(w, window));
        *window.lock_idle() = false;
    }

    /// The calling thread, whose `window` it is, is about to take long (`blocking`): back
    /// under SCHED_BATCH, so that neither the section nor the thread it may start for its
    /// queue (which would inherit the policy) waits behind a busy task. The next request
    /// someone waits for puts it back under SCHED_IDLE if callers are still kept.
    pub(crate) fn before_long_section(&self, window: &Window) {
        let mut idle = window.lock_idle();
        if *idle {
            self.leave_idle(0, &mut idle);
        }
    }

    /// Before the thread of `window` answers a request of caller `pid` through queue
    /// `qid`: puts it under SCHED_IDLE if that caller is to be kept on its CPU, back under
    /// SCHED_BATCH if not. A request nobody waits for changes nothing.
    pub(crate) fn before_reply(
        &self,
        window: &Window,
        pid: u32,
        qid: u16,
        opcode: Option<abi::fuse_opcode>,
    ) {
        let Some(want) = self.wants_idle(window, pid, qid, opcode) else {
            return;
        };
        window.caller.store(pid, Ordering::Relaxed);
        let mut idle = window.lock_idle();
        if *idle == want {
            return;
        }
        if !want {
            self.leave_idle(0, &mut idle);
        } else if set_policy(0, libc::SCHED_IDLE) {
            *idle = true;
            drop(idle);
            // The watchdog parks only after it saw no thread under SCHED_IDLE (see `watch`).
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.parked.load(Ordering::SeqCst)
                && let Some(watchdog) = &*lock(&self.watchdog)
            {
                watchdog.unpark();
            }
        }
    }

    /// Whether the thread of `window` is to answer this request under SCHED_IDLE; None if
    /// nobody waits for the reply (the thread may stay as it is).
    fn wants_idle(
        &self,
        window: &Window,
        pid: u32,
        qid: u16,
        opcode: Option<abi::fuse_opcode>,
    ) -> Option<bool> {
        if pid == 0 || opcode.is_none_or(|op| BACKGROUND.contains(&op)) {
            return None;
        }
        if !self.watching.load(Ordering::Relaxed) || window.proc.is_none() {
            return Some(false);
        }
        let now = self.now_ms();
        let on = match self.mode {
            KeepCallerCpu::Always => true,
            _ => self.callers_move(now, pid, qid),
        };
        Some(on && now >= window.backoff_until_ms.load(Ordering::Relaxed))
    }

    /// Puts thread `tid` (0: the calling one) back under SCHED_BATCH, with `idle` its
    /// window's locked state.
    fn leave_idle(&self, tid: libc::pid_t, idle: &mut bool) {
        if set_policy(tid, libc::SCHED_BATCH) {
            *idle = false;
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            // the thread is gone (its window goes with it)
            *idle = false;
        } else {
            // Allowed at the start, refused now (RLIMIT_NICE lowered since?): the thread
            // stays under SCHED_IDLE, and no other goes there.
            let why = std::io::Error::last_os_error();
            warn!("a ring thread cannot leave SCHED_IDLE ({why}); callers may change CPU");
            self.watching.store(false, Ordering::Relaxed);
        }
    }

    /// Notes this request of caller `pid` through queue `qid`; whether callers are kept.
    fn callers_move(&self, now: u64, pid: u32, qid: u16) -> bool {
        let key = (u64::from(pid) << 16) | u64::from(qid);
        let previous = self.last.swap(key, Ordering::Relaxed);
        if previous >> 16 == u64::from(pid) {
            // Racy between queues, which only blurs the score.
            let score = self.score.load(Ordering::Relaxed);
            let score = if previous != key {
                (score + MOVED).min(2 * ON)
            } else {
                score.saturating_sub(1)
            };
            self.score.store(score, Ordering::Relaxed);
            if score >= ON {
                let until = now + HOLD.as_millis() as u64;
                if self.until_ms.swap(until, Ordering::SeqCst) < now {
                    debug!("callers change CPU: replies keep them on theirs for {HOLD:?}");
                }
            }
        }
        self.keeping(now)
    }

    /// Whether callers are kept on their CPU at `now`.
    fn keeping(&self, now: u64) -> bool {
        self.mode == KeepCallerCpu::Always || now < self.until_ms.load(Ordering::SeqCst)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether the watchdog has work: callers are kept, or a thread is under SCHED_IDLE.
    fn active(&self) -> bool {
        // A window locked by its thread may be about to go under SCHED_IDLE.
        self.keeping(self.now_ms())
            || lock(&self.windows)
                .iter()
                .any(|w| w.idle.try_lock().map_or(true, |idle| *idle))
    }
}

impl Drop for KeepCpu {
    fn drop(&mut self) {
        // The watchdog holds a weak reference: woken, it finds it gone and ends.
        if let Some(watchdog) = lock(&self.watchdog).take() {
            watchdog.unpark();
        }
    }
}

/// What the watchdog saw of a thread under SCHED_IDLE at its last look.
#[derive(Clone, Copy)]
struct Look {
    at: Instant,
    /// Its CPU time then (ns).
    ran: u64,
    /// It was runnable then, and since the look before had run a tenth of the time at most.
    stalled: bool,
}

/// Every [`STUCK`] while it has work: puts back under SCHED_BATCH (for [`BACKOFF`]) a ring
/// thread under SCHED_IDLE found stalled (runnable, and hardly run) at two looks in a row,
/// and every thread under SCHED_IDLE once callers are no longer kept; parks when it has no
/// work. In `Always` mode it always has work. A thread beside a busy task gets almost no
/// CPU under SCHED_IDLE; one woken for a request nobody waits for (a RELEASE) waits, as
/// under SCHED_BATCH, only as long as the caller that sent it runs on. (CPU time comes
/// from the thread's CPU clock, exact at each look: a running thread is never stalled.)
fn watch(keep: &Weak<KeepCpu>) {
    // Not to be starved itself, whatever the session's thread runs under: SCHED_FIFO where
    // allowed (it runs for microseconds every few milliseconds), else SCHED_OTHER at nice 0.
    let fifo = libc::sched_param { sched_priority: 1 };
    // SAFETY: a valid param struct; a refusal changes nothing.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) } != 0 {
        set_policy(0, libc::SCHED_OTHER);
        // SAFETY: setpriority on this thread; a refusal changes nothing.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 0) };
    }
    // Each window's last look, while its thread was under SCHED_IDLE.
    let mut seen: Vec<Option<Look>> = Vec::new();
    loop {
        let Some(state) = keep.upgrade() else { return };
        if !state.active() {
            // A ring thread reads `parked` after it goes under SCHED_IDLE, and this reads
            // the windows after it sets `parked`: one of the two sees the other.
            state.parked.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            let idle = !state.active();
            drop(state);
            if idle {
                thread::park();
            }
            let Some(state) = keep.upgrade() else { return };
            state.parked.store(false, Ordering::SeqCst);
            seen.clear();
            continue;
        }
        let windows = lock(&state.windows).clone();
        let keeping = state.keeping(state.now_ms());
        seen.resize(windows.len(), None);
        for (window, seen) in windows.iter().zip(seen.iter_mut()) {
            // Its thread holds the lock for a few instructions or a sched_setscheduler
            // call. Preempted there under SCHED_IDLE, it starves with the lock: it is
            // looked at all the same, and kicked back without the lock.
            let mut idle = window.idle.try_lock().ok();
            if let Some(idle) = idle.as_deref_mut() {
                window.settle(idle);
                if !*idle {
                    *seen = None;
                    continue;
                }
            }
            let look = window.sample().map(|(runnable, ran)| {
                let at = Instant::now();
                let stalled = runnable
                    && seen.is_some_and(|before| {
                        let got = ran.saturating_sub(before.ran) as u128;
                        got * 10 <= at.duration_since(before.at).as_nanos()
                    });
                Look { at, ran, stalled }
            });
            let starved = look.is_some_and(|l| l.stalled) && seen.is_some_and(|l| l.stalled);
            if starved || (!keeping && idle.is_some()) {
                // Behind its own caller, which sent it a request nobody waits for (a
                // RELEASE) and runs on: back under SCHED_BATCH, to be served at the next
                // tick as before, but not held off the next time.
                // (one found starved with its lock held may have been under SCHED_BATCH)
                let back_off =
                    starved && (idle.is_some() || window.kick()) && !caller_runs_on(window);
                if back_off {
                    debug!(
                        "ring thread {} starved under SCHED_IDLE: put back",
                        window.tid
                    );
                    let until = state.now_ms() + BACKOFF.as_millis() as u64;
                    window.backoff_until_ms.store(until, Ordering::Relaxed);
                }
                if let Some(idle) = idle.as_deref_mut() {
                    state.leave_idle(window.tid, idle);
                }
                *seen = None;
            } else {
                *seen = look;
            }
        }
        drop(state);
        thread::sleep(STUCK);
    }
}

/// Whether the last caller the thread of `window` served is running or runnable on the
/// thread's CPU (`/proc/TID/stat`: the state, and field 39, the CPU).
fn caller_runs_on(window: &Window) -> bool {
    let caller = window.caller.load(Ordering::Relaxed);
    if caller == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{caller}/stat")) else {
        return false;
    };
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = fields.split_ascii_whitespace().collect();
    fields.first() == Some(&"R")
        && fields.get(36).and_then(|cpu| cpu.parse().ok()) == Some(window.qid)
}

/// Sets the scheduling policy of thread `tid` (0: the calling one); false if refused.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid param struct; a refusal changes nothing.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Whether a thread may go to SCHED_IDLE and come back (an unprivileged one may come back
/// only as far as RLIMIT_NICE allows). Tried on a thread of its own, which then ends.
fn can_leave_idle() -> bool {
    thread::spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_BATCH))
        .join()
        .unwrap_or(false)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GETATTR: Option<abi::fuse_opcode> = Some(abi::fuse_opcode::FUSE_GETATTR);

    fn policy() -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// On a thread of its own, so that the test's thread keeps its policy whatever happens.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        thread::spawn(f).join().expect("test thread")
    }

    fn require_policies() {
        assert!(
            can_leave_idle(),
            "this test needs to set SCHED_IDLE and SCHED_BATCH: run it as root (sudo cargo test)"
        );
    }

    #[test]
    fn auto_turns_on_once_a_caller_changes_queue() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Auto);
        let keep_w = keep.register(0);
        // Caller 7 moves now and then: off.
        for queue in [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0] {
            assert_eq!(keep.wants_idle(&keep_w, 7, queue, GETATTR), Some(false));
        }
        // Caller 8 on every other request: on after a few.
        let mut on = Vec::new();
        for queue in [0, 0, 1, 1, 0, 0, 1, 1, 0, 0] {
            on.push(keep.wants_idle(&keep_w, 8, queue, GETATTR) == Some(true));
        }
        assert_eq!(on.iter().position(|&on| on), Some(6), "caller 8: {on:?}");
        assert_eq!(
            keep.wants_idle(&keep_w, 9, 1, GETATTR),
            Some(true),
            "on for everyone for a while"
        );
        let release = Some(abi::fuse_opcode::FUSE_RELEASE);
        assert_eq!(
            keep.wants_idle(&keep_w, 9, 1, release),
            None,
            "nobody waits for a RELEASE"
        );
        assert_eq!(
            keep.wants_idle(&keep_w, 0, 1, GETATTR),
            None,
            "no caller (the kernel's own)"
        );
        assert_eq!(
            keep.wants_idle(&keep_w, 9, 1, None),
            None,
            "an opcode this fuser does not know, or one owed no reply"
        );
    }

    #[test]
    fn never_and_always() {
        require_policies();
        let never = KeepCpu::new(KeepCallerCpu::Never);
        let never_w = never.register(0);
        assert_eq!(never.wants_idle(&never_w, 8, 1, GETATTR), Some(false));
        assert_eq!(never.wants_idle(&never_w, 8, 0, GETATTR), Some(false));
        let always = KeepCpu::new(KeepCallerCpu::Always);
        let always_w = always.register(0);
        assert_eq!(always.wants_idle(&always_w, 8, 0, GETATTR), Some(true));
        assert_eq!(always.wants_idle(&always_w, 8, 0, GETATTR), Some(true));
    }

    /// Waits until the watchdog of `keep` parks.
    fn parked(keep: &KeepCpu) {
        for _ in 0..500 {
            if keep.parked.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
        panic!("the watchdog did not park");
    }

    #[test]
    fn a_thread_stays_under_sched_idle_while_callers_are_kept_then_goes_back() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Auto);
        // Nothing to do: the watchdog parks, and must wake for the thread below.
        parked(&keep);
        let (kept, between, after, again) = on_thread(move || {
            let window = keep.register(0);
            // A caller moving on every request turns it on.
            for queue in [0, 1, 0, 1, 0, 1] {
                keep.before_reply(&window, 8, queue, GETATTR);
            }
            let kept = policy();
            keep.before_reply(&window, 8, 1, Some(abi::fuse_opcode::FUSE_RELEASE));
            keep.before_reply(&window, 8, 1, GETATTR);
            let between = policy();
            // No more requests: once callers are no longer kept, the watchdog puts the
            // thread back, and not for long (it did not starve).
            thread::sleep(HOLD + STUCK * 20);
            let after = policy();
            for queue in [0, 1, 0, 1] {
                keep.before_reply(&window, 8, queue, GETATTR);
            }
            (kept, between, after, policy())
        });
        assert_eq!(kept, libc::SCHED_IDLE, "callers kept");
        assert_eq!(between, libc::SCHED_IDLE, "between replies");
        assert_eq!(after, libc::SCHED_BATCH, "callers no longer kept");
        assert_eq!(again, libc::SCHED_IDLE, "kept again");
    }

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    /// A busy task beside a thread under SCHED_IDLE on one CPU, the task being the thread's
    /// last caller or not, the thread holding its window's lock meanwhile (preempted there)
    /// or not: the thread gets almost nothing until the watchdog puts it back. Its window,
    /// and how long it waited.
    fn starve(keep: &Arc<KeepCpu>, hog_is_caller: bool, holding: bool) -> (Arc<Window>, Duration) {
        let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
        let done = Arc::new(AtomicBool::new(false));
        let spin = done.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let hog = thread::spawn(move || {
            pin(cpu);
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            while !spin.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let hog_tid = tid_rx.recv().unwrap();
        let caller = if hog_is_caller { hog_tid } else { 999_999_999 };
        let k = keep.clone();
        let starved = on_thread(move || {
            pin(cpu);
            let window = k.register(cpu as u16);
            k.before_reply(&window, caller, cpu as u16, GETATTR);
            let held = holding.then(|| lock(&window.idle));
            let start = Instant::now();
            while policy() == libc::SCHED_IDLE && start.elapsed() < Duration::from_secs(5) {
                std::hint::spin_loop();
            }
            drop(held);
            (window, start.elapsed())
        });
        done.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        starved
    }

    #[test]
    fn a_running_thread_shows_its_cpu_time_between_ticks() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        let done = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let (spin, count) = (done.clone(), spins.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let k = keep.clone();
        let spinner = thread::spawn(move || {
            tx.send(k.register(0)).unwrap();
            while !spin.load(Ordering::Relaxed) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        let window = rx.recv().unwrap();
        // Looks 200 us apart, well within one tick (4 ms at HZ=250, 10 ms at HZ=100): when
        // the thread ran in between, its time grew (the watchdog must not take it for
        // stalled). Other tests' threads may keep it off its CPU for some pairs.
        let (mut ran, mut grew) = (0, 0);
        let start = Instant::now();
        while ran < 10 && start.elapsed() < Duration::from_secs(5) {
            let (_, before) = window.sample().unwrap();
            let counted = spins.load(Ordering::Relaxed);
            thread::sleep(Duration::from_micros(200));
            let moved = spins.load(Ordering::Relaxed) > counted;
            let (_, after) = window.sample().unwrap();
            if moved {
                ran += 1;
                grew += usize::from(after > before);
            }
        }
        done.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        assert!(ran >= 10, "the spinning thread hardly ran");
        assert_eq!(
            grew, ran,
            "CPU time grew between only {grew} of {ran} pairs of looks"
        );
    }

    #[test]
    fn the_watchdog_takes_back_a_starved_thread_for_a_while() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        let (starved, waited) = starve(&keep, false, false);
        assert!(
            waited < Duration::from_secs(5),
            "still SCHED_IDLE: no watchdog"
        );
        assert_eq!(
            keep.wants_idle(&starved, 8, 0, GETATTR),
            Some(false),
            "a thread the watchdog put back"
        );
        assert_eq!(
            keep.wants_idle(&keep.register(0), 8, 0, GETATTR),
            Some(true),
            "another thread"
        );
    }

    /// Preempted under SCHED_IDLE while it holds its window's lock (which the watchdog then
    /// cannot take), a starved thread is put back all the same; it notes so at its next lock.
    #[test]
    fn a_thread_starved_while_it_holds_its_window_is_put_back() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        let (window, waited) = starve(&keep, false, true);
        assert!(
            waited < Duration::from_secs(5),
            "still SCHED_IDLE: the watchdog did not see it"
        );
        assert!(!*window.lock_idle(), "its window still says SCHED_IDLE");
    }

    /// Behind its own caller (which sent a RELEASE and computes on) the thread is put back
    /// as well, but not held off: the next request someone waits for keeps the caller again.
    #[test]
    fn a_thread_behind_its_own_caller_is_put_back_without_backoff() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        let (window, waited) = starve(&keep, true, false);
        assert!(
            waited < Duration::from_secs(5),
            "still SCHED_IDLE: no watchdog"
        );
        assert_eq!(keep.wants_idle(&window, 8, 0, GETATTR), Some(true));
    }

    #[test]
    fn a_long_section_runs_under_sched_batch_and_an_ended_thread_is_forgotten() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        let k = keep.clone();
        let (idle, long) = on_thread(move || {
            let window = k.register(0);
            k.before_reply(&window, 8, 0, GETATTR);
            let idle = policy();
            k.before_long_section(&window);
            let long = policy();
            k.unregister(&window);
            (idle, long)
        });
        assert_eq!((idle, long), (libc::SCHED_IDLE, libc::SCHED_BATCH));
        assert!(
            lock(&keep.windows).is_empty(),
            "the ended thread's window stays"
        );
    }
}
