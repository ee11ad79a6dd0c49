//! Whether this process is serving requests, for work of a filesystem's own (a background
//! copy) that should give way to its callers' (strata patch, PATCHES.md).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();
/// Requests being dispatched, in all sessions.
static SERVING: AtomicUsize = AtomicUsize::new(0);
/// Nanoseconds from `EPOCH` to the end of the latest dispatch; 0 before the first.
static LAST: AtomicU64 = AtomicU64::new(0);
/// Dispatches ending closer together than this store one time between them: the threads
/// of every queue write this word, and its cache line need not move at each request.
const GRAIN_NS: u64 = 100_000;

fn now() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Counts a request as served from its dispatch to the guard's drop.
pub(crate) struct Serving(());

impl Serving {
    pub(crate) fn begin() -> Serving {
        SERVING.fetch_add(1, Ordering::Relaxed);
        Serving(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let now = now();
        let last = LAST.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= GRAIN_NS {
            LAST.store(now, Ordering::Relaxed);
        }
        SERVING.fetch_sub(1, Ordering::Release);
    }
}

/// How long the sessions of this process have served no request (to within 0.1 ms): zero
/// while one is being dispatched, `Duration::MAX` before the first. A request whose reply
/// a handler sends later, from another thread, counts until its handler returns.
pub fn idle_for() -> Duration {
    if SERVING.load(Ordering::Acquire) > 0 {
        return Duration::ZERO;
    }
    match LAST.load(Ordering::Relaxed) {
        0 => Duration::MAX,
        last => Duration::from_nanos(now().saturating_sub(last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_for_is_zero_while_a_request_is_served_and_grows_after() {
        let serving = Serving::begin();
        assert_eq!(idle_for(), Duration::ZERO);
        drop(serving);
        let after = idle_for();
        assert!(after < Duration::from_secs(1), "{after:?}");
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            idle_for() >= after + Duration::from_millis(4),
            "{:?}",
            idle_for()
        );
    }
}
