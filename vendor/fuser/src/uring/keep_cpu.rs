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
//! answering it, which it preempts at once. So a thread commits under SCHED_IDLE and goes
//! back to SCHED_BATCH as soon as it runs again. A SCHED_IDLE thread gets almost no CPU
//! beside a busy task (about 0.3%), so a watchdog (SCHED_FIFO where it may be) puts back
//! any thread still there within two of its looks, [`STUCK`] apart: its caller's next
//! request may be waiting for it. A thread it had to put back shares its CPU with a busy
//! task, where the trick does not work anyway: it commits as usual for [`BACKOFF`].
//!
//! In `Auto` mode commits are made so only while callers are seen changing CPU: a request
//! from the same caller as the one before, through another queue, scores [`MOVED`], one
//! through the same queue takes a point off, and a score of [`ON`] turns it on for
//! [`HOLD`]. A caller moved on every request, or on every other one (both happen), gets
//! there in a few requests; the scheduler's occasional moves for other reasons do not. It
//! costs two sched_setscheduler calls and one more io_uring_enter per reply, about 1 us.

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

/// When ring threads commit under SCHED_IDLE to keep their callers on their CPU
/// (`Config::io_uring_keep_caller_cpu`).
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq)]
pub enum KeepCallerCpu {
    /// While callers are seen changing CPU.
    #[default]
    Auto,
    /// For every reply a caller waits for.
    Always,
    /// Never.
    Never,
}

/// The watchdog looks this often while commits under SCHED_IDLE are made, and puts back a
/// thread whose commit it saw under way the last time.
const STUCK: Duration = Duration::from_millis(2);

/// How long callers seen changing CPU keep commits under SCHED_IDLE on.
const HOLD: Duration = Duration::from_millis(500);

/// What a request that finds its caller moved adds to the score; one that does not takes
/// one point off...
const MOVED: u32 = 4;

/// ...and the score that turns it on (it is kept below `2 * ON`).
const ON: u32 = 12;

/// How long a thread the watchdog had to put back commits as usual.
const BACKOFF: Duration = Duration::from_secs(1);

/// Requests the kernel sends in the background: nobody waits for their reply.
const BACKGROUND: [abi::fuse_opcode; 2] = [
    abi::fuse_opcode::FUSE_RELEASE,
    abi::fuse_opcode::FUSE_RELEASEDIR,
];

/// A session's state, shared by its ring threads and the watchdog.
pub(crate) struct KeepCpu {
    mode: KeepCallerCpu,
    /// A watchdog runs: without one, nothing is committed under SCHED_IDLE.
    watching: AtomicBool,
    start: Instant,
    /// `tid << 16 | queue` of the last request a caller waited for...
    last: AtomicU64,
    /// ...and the score of callers moving (see [`MOVED`]).
    score: AtomicU32,
    /// Commits go under SCHED_IDLE until then (ms since `start`).
    until_ms: AtomicU64,
    windows: Mutex<Vec<Arc<Window>>>,
    watchdog: Mutex<Option<thread::Thread>>,
    /// The watchdog sleeps until a ring thread wakes it.
    parked: AtomicBool,
}

/// One ring thread's commits: `generation` is odd while one is made under SCHED_IDLE.
pub(crate) struct Window {
    tid: libc::pid_t,
    generation: AtomicU64,
    /// Commits as usual until then (ms since the session's start): see [`BACKOFF`].
    backoff_until_ms: AtomicU64,
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

    /// The calling ring thread's window.
    pub(crate) fn register(&self) -> Arc<Window> {
        let window = Arc::new(Window {
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
            generation: AtomicU64::new(0),
            backoff_until_ms: AtomicU64::new(0),
        });
        lock(&self.windows).push(window.clone());
        window
    }

    /// Whether the reply to this request, from caller `pid` through queue `qid`, is to be
    /// committed under SCHED_IDLE by the thread of `window`.
    pub(crate) fn idle_commit(
        &self,
        window: &Window,
        pid: u32,
        qid: u16,
        opcode: Option<abi::fuse_opcode>,
    ) -> bool {
        if !self.watching.load(Ordering::Relaxed)
            || pid == 0
            || opcode.is_none_or(|op| BACKGROUND.contains(&op))
        {
            return false;
        }
        let now = self.now_ms();
        let on = match self.mode {
            KeepCallerCpu::Always => true,
            _ => self.callers_move(now, pid, qid),
        };
        on && now >= window.backoff_until_ms.load(Ordering::Relaxed)
    }

    /// Notes this request of caller `pid` through queue `qid`; whether commits under
    /// SCHED_IDLE are on.
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
        now < self.until_ms.load(Ordering::Relaxed)
    }

    /// Runs `commit` (the submission of a reply) under SCHED_IDLE, then goes back to
    /// SCHED_BATCH (also should `commit` panic).
    pub(crate) fn idle<T>(&self, window: &Window, commit: impl FnOnce() -> T) -> T {
        /// Back to SCHED_BATCH, then the window closes.
        struct Close<'a>(&'a KeepCpu, &'a Window);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                if !set_policy(0, libc::SCHED_BATCH) {
                    // Allowed at the start, refused now (RLIMIT_NICE lowered since?): this
                    // thread stays under SCHED_IDLE, and no other commits go there.
                    let why = std::io::Error::last_os_error();
                    warn!("a ring thread cannot leave SCHED_IDLE ({why}); callers may change CPU");
                    self.0.watching.store(false, Ordering::Relaxed);
                }
                self.1.generation.fetch_add(1, Ordering::Release);
            }
        }
        window.generation.fetch_add(1, Ordering::SeqCst);
        // The watchdog parks only after it saw no window open (see `watch`).
        if self.parked.load(Ordering::SeqCst)
            && let Some(watchdog) = &*lock(&self.watchdog)
        {
            watchdog.unpark();
        }
        let _close = Close(self, window);
        set_policy(0, libc::SCHED_IDLE);
        commit()
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether the watchdog has work: commits may be made under SCHED_IDLE, or one is.
    fn active(&self) -> bool {
        self.mode == KeepCallerCpu::Always
            || self.now_ms() <= self.until_ms.load(Ordering::SeqCst)
            || lock(&self.windows)
                .iter()
                .any(|w| w.generation.load(Ordering::SeqCst) % 2 == 1)
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

/// Every [`STUCK`] while it has work, puts back to SCHED_BATCH a ring thread whose commit
/// under SCHED_IDLE it already saw under way the last time; parks when it has none. In
/// `Always` mode it always has work.
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
    let Some(start) = keep.upgrade().map(|k| k.start) else {
        return;
    };
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let Some(state) = keep.upgrade() else { return };
        if !state.active() {
            // A ring thread reads `parked` after it opens its window, and this reads the
            // windows after it sets `parked`: one of the two sees the other.
            state.parked.store(true, Ordering::SeqCst);
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
        drop(state);
        seen.resize(windows.len(), 0);
        for (window, seen) in windows.iter().zip(seen.iter_mut()) {
            let generation = window.generation.load(Ordering::Acquire);
            if generation % 2 == 1 && generation == *seen {
                debug!(
                    "ring thread {} stuck under SCHED_IDLE: put back",
                    window.tid
                );
                set_policy(window.tid, libc::SCHED_BATCH);
                let until = start.elapsed() + BACKOFF;
                window
                    .backoff_until_ms
                    .store(until.as_millis() as u64, Ordering::Relaxed);
            }
            *seen = generation;
        }
        thread::sleep(STUCK);
    }
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
        let keep_w = keep.register();
        // Caller 7 moves now and then: off.
        for queue in [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0] {
            assert!(!keep.idle_commit(&keep_w, 7, queue, GETATTR), "caller 7");
        }
        // Caller 8 on every other request: on after a few.
        let mut on = Vec::new();
        for queue in [0, 0, 1, 1, 0, 0, 1, 1, 0, 0] {
            on.push(keep.idle_commit(&keep_w, 8, queue, GETATTR));
        }
        assert_eq!(on.iter().position(|&on| on), Some(6), "caller 8: {on:?}");
        assert!(
            keep.idle_commit(&keep_w, 9, 1, GETATTR),
            "on for everyone for a while"
        );
        let release = Some(abi::fuse_opcode::FUSE_RELEASE);
        assert!(
            !keep.idle_commit(&keep_w, 9, 1, release),
            "nobody waits for a RELEASE"
        );
        assert!(
            !keep.idle_commit(&keep_w, 0, 1, GETATTR),
            "no caller (the kernel's own)"
        );
        assert!(
            !keep.idle_commit(&keep_w, 9, 1, None),
            "an opcode this fuser does not know"
        );
    }

    #[test]
    fn never_and_always() {
        require_policies();
        let never = KeepCpu::new(KeepCallerCpu::Never);
        let never_w = never.register();
        assert!(!never.idle_commit(&never_w, 8, 1, GETATTR));
        assert!(!never.idle_commit(&never_w, 8, 0, GETATTR));
        let always = KeepCpu::new(KeepCallerCpu::Always);
        let always_w = always.register();
        assert!(always.idle_commit(&always_w, 8, 0, GETATTR));
        assert!(always.idle_commit(&always_w, 8, 0, GETATTR));
    }

    #[test]
    fn a_commit_runs_under_sched_idle_and_ends_under_sched_batch() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Auto);
        let (during, after) = on_thread(move || {
            let window = keep.register();
            let during = keep.idle(&window, policy);
            (during, policy())
        });
        assert_eq!(during, libc::SCHED_IDLE);
        assert_eq!(after, libc::SCHED_BATCH);
    }

    #[test]
    fn the_watchdog_takes_back_a_thread_left_under_sched_idle() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        // A commit that takes 20 STUCKs: the watchdog must have put the thread back by then.
        let late = on_thread(move || {
            let window = keep.register();
            keep.idle(&window, || {
                thread::sleep(STUCK * 20);
                policy()
            })
        });
        assert_eq!(late, libc::SCHED_BATCH, "still SCHED_IDLE: no watchdog");
    }

    #[test]
    fn a_thread_put_back_commits_as_usual_for_a_while() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Always);
        let k = keep.clone();
        let stuck = on_thread(move || {
            let window = k.register();
            k.idle(&window, || thread::sleep(STUCK * 20));
            window
        });
        assert!(
            !keep.idle_commit(&stuck, 8, 0, GETATTR),
            "a thread the watchdog put back"
        );
        assert!(
            keep.idle_commit(&keep.register(), 8, 0, GETATTR),
            "another thread"
        );
    }

    #[test]
    fn the_watchdog_wakes_for_a_commit_made_after_it_parked() {
        require_policies();
        let keep = KeepCpu::new(KeepCallerCpu::Auto);
        // Nothing to do: it parks.
        for _ in 0..500 {
            if keep.parked.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        assert!(
            keep.parked.load(Ordering::SeqCst),
            "the watchdog did not park"
        );
        let late = on_thread(move || {
            let window = keep.register();
            keep.idle(&window, || {
                thread::sleep(STUCK * 20);
                policy()
            })
        });
        assert_eq!(late, libc::SCHED_BATCH, "the parked watchdog did not wake");
    }
}
