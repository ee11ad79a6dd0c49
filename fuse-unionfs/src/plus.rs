//! Whether a READDIRPLUS gets each entry's lookup, or only its name.
//!
//! With attributes, a listing saves a caller that stats what it lists (`ls -l`, `tar`,
//! `du`, `find -printf %s`) a LOOKUP round trip per entry. A caller that only walks names
//! (`find -type f`, `ls`, a glob) gains nothing, and pays for them: finding an entry's
//! attributes stats it, which in a tree the page cache does not hold yet means reading its
//! inode from the disk. The kernel (FUSE_READDIRPLUS_AUTO) asks for a PLUS listing at the
//! start of every directory, whoever asks, so the server decides, per caller: an entry sent
//! with node id 0 is listed by name only, as READDIR lists it (fuse_direntplus_link).
//!
//! A caller starts with attributes; its [`FIRST_PROBE`]th listing, and every [`PROBE`]th
//! after, is by name only, to see whether it uses them. It keeps getting names only until
//! someone looks up a non-directory in a directory it was listed that way (a walker looks
//! up the directories it enters either way): the lister itself, or another process it feeds
//! (`find | xargs stat`). The kernel keeps a listing (strata refuses OPENDIR: listings are
//! cached) for whoever lists the directory next, so the choice matters beyond its caller:
//! the probes leave about one directory in [`PROBE`] of a stat'ing walk to LOOKUPs.
//!
//! Callers are told apart by thread id, in a fixed table of [`SLOTS`] slots, and listings by
//! name only by directory, in another: two that share a slot share one guess (as do the
//! callers the server's pid namespace does not see, all pid 0), and the two atomics of an
//! entry may come from different writers. Only speed depends on the guess; a LOOKUP takes
//! no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Callers tracked at once (by thread id modulo this), and directories listed by name only.
const SLOTS: usize = 256;

/// A caller that uses attributes gets names only in one listing out of this many...
const PROBE: u32 = 32;

/// ...and first in this one.
const FIRST_PROBE: u32 = 2;

#[derive(Default)]
struct Caller {
    /// The thread id this slot last served.
    tid: AtomicU32,
    /// Someone looked up a non-directory the caller was last listed by name only.
    uses_attrs: AtomicBool,
    /// Listings with attributes since the last one by name only.
    since_probe: AtomicU32,
}

/// A directory listed by name only, and to whom.
#[derive(Default)]
struct Listed {
    dir: AtomicU64,
    tid: AtomicU32,
}

/// Which callers' READDIRPLUS listings carry attributes (see the module doc).
pub(crate) struct PlusUse {
    callers: Box<[Caller]>,
    listed: Box<[Listed]>,
}

impl Default for PlusUse {
    fn default() -> PlusUse {
        PlusUse {
            callers: (0..SLOTS).map(|_| Caller::default()).collect(),
            listed: (0..SLOTS).map(|_| Listed::default()).collect(),
        }
    }
}

impl PlusUse {
    fn caller(&self, tid: u32) -> &Caller {
        &self.callers[tid as usize % SLOTS]
    }

    fn listed(&self, dir: u64) -> &Listed {
        &self.listed[(dir % SLOTS as u64) as usize]
    }

    /// Whether the READDIRPLUS of thread `tid` in directory `dir` gets attributes.
    pub(crate) fn with_attrs(&self, tid: u32, dir: u64) -> bool {
        let caller = self.caller(tid);
        if caller.tid.swap(tid, Ordering::Relaxed) != tid {
            // a new caller in this slot
            caller.uses_attrs.store(true, Ordering::Relaxed);
            caller
                .since_probe
                .store(PROBE - FIRST_PROBE, Ordering::Relaxed);
        }
        if caller.uses_attrs.load(Ordering::Relaxed)
            && caller.since_probe.fetch_add(1, Ordering::Relaxed) + 1 < PROBE
        {
            return true;
        }
        caller.since_probe.store(0, Ordering::Relaxed);
        caller.uses_attrs.store(false, Ordering::Relaxed);
        let listed = self.listed(dir);
        listed.dir.store(dir, Ordering::Relaxed);
        listed.tid.store(tid, Ordering::Relaxed);
        false
    }

    /// Someone looked up a name in directory `parent` (a directory, or not).
    pub(crate) fn looked_up(&self, parent: u64, is_dir: bool) {
        let listed = self.listed(parent);
        if is_dir || listed.dir.load(Ordering::Relaxed) != parent {
            return;
        }
        listed.dir.store(0, Ordering::Relaxed);
        let tid = listed.tid.load(Ordering::Relaxed);
        let caller = self.caller(tid);
        if caller.tid.load(Ordering::Relaxed) == tid {
            caller.uses_attrs.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listings (of directories 100, 101, ...) by name only among `count`; `stat`
    /// says whether a caller looks up a file in each directory after its listing.
    fn names_only(plus: &PlusUse, tid: u32, count: u64, stat: bool) -> Vec<u64> {
        (100..100 + count)
            .filter(|&dir| {
                let names = !plus.with_attrs(tid, dir);
                plus.looked_up(dir, true); // it enters subdirectories
                if stat {
                    plus.looked_up(dir, false);
                }
                names
            })
            .collect()
    }

    #[test]
    fn a_walker_of_names_gets_names_only_from_its_first_probe() {
        let plus = PlusUse::default();
        let got = names_only(&plus, 7, 100, false);
        assert_eq!(got.len(), 99, "{got:?}");
        assert_eq!(got[0], 100 + u64::from(FIRST_PROBE) - 1);
    }

    #[test]
    fn a_caller_that_stats_what_it_lists_gets_attributes_but_in_probes() {
        let plus = PlusUse::default();
        let got = names_only(&plus, 7, 3 * u64::from(PROBE), true);
        assert_eq!(got.len(), 3, "probes: {got:?}");
        // once it no longer uses them, the next probe takes them away for good
        let got = names_only(&plus, 7, 2 * u64::from(PROBE), false);
        let first = got[0];
        assert_eq!(got, (first..100 + 2 * u64::from(PROBE)).collect::<Vec<_>>());
    }

    #[test]
    fn a_lookup_by_another_caller_counts_for_the_lister() {
        let plus = PlusUse::default();
        names_only(&plus, 7, 10, false);
        assert!(!plus.with_attrs(7, 500));
        // `find | xargs stat`: the stat is another process
        plus.looked_up(500, false);
        assert!(plus.with_attrs(7, 501));
    }

    #[test]
    fn a_lookup_elsewhere_or_after_the_slot_changed_hands_does_not_count() {
        let plus = PlusUse::default();
        names_only(&plus, 7, 10, false);
        assert!(!plus.with_attrs(7, 500));
        plus.looked_up(501, false); // another directory
        plus.looked_up(500, true); // a directory
        assert!(!plus.with_attrs(7, 502));
        // the slot's next thread starts afresh, and a lookup in what 7 was listed is not
        // its own
        let other = 7 + SLOTS as u32;
        assert!(plus.with_attrs(other, 600));
        assert!(!plus.with_attrs(other, 601)); // its first probe
        plus.looked_up(502, false);
        assert!(!plus.with_attrs(other, 602));
    }
}
