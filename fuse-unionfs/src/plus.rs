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
//! A caller gets names only until it looks up a non-directory it was listed that way (a
//! walker looks up the directories it enters either way), and attributes from then on,
//! except that every [`PROBE`]th listing it gets is names only again, to see whether it
//! still uses them. Callers are told apart by thread id, in a fixed table of [`SLOTS`]
//! (two callers that share a slot share one guess: only speed depends on it), so a LOOKUP
//! takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Callers tracked at once (by thread id modulo this).
const SLOTS: usize = 256;

/// A caller that uses attributes gets names only in one listing out of this many.
const PROBE: u32 = 32;

#[derive(Default)]
struct Slot {
    /// The thread id this slot last served.
    caller: AtomicU32,
    /// The directory the caller was last listed by name only (0: none since it used one).
    listed: AtomicU64,
    /// The caller looked up a non-directory it had been listed by name only.
    uses_attrs: AtomicBool,
    /// Listings with attributes since the last one by name only.
    since_probe: AtomicU32,
}

pub(crate) struct PlusUse {
    slots: Box<[Slot]>,
}

impl Default for PlusUse {
    fn default() -> PlusUse {
        PlusUse {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

impl PlusUse {
    fn slot(&self, caller: u32) -> &Slot {
        &self.slots[caller as usize % SLOTS]
    }

    /// Whether the READDIRPLUS of `caller` in directory `dir` gets attributes.
    pub(crate) fn with_attrs(&self, caller: u32, dir: u64) -> bool {
        let slot = self.slot(caller);
        if slot.caller.swap(caller, Ordering::Relaxed) != caller {
            // a new caller in this slot: nothing known of it
            slot.uses_attrs.store(false, Ordering::Relaxed);
        }
        if slot.uses_attrs.load(Ordering::Relaxed)
            && slot.since_probe.fetch_add(1, Ordering::Relaxed) + 1 < PROBE
        {
            return true;
        }
        slot.since_probe.store(0, Ordering::Relaxed);
        slot.uses_attrs.store(false, Ordering::Relaxed);
        slot.listed.store(dir, Ordering::Relaxed);
        false
    }

    /// `caller` looked up a name in directory `parent` (a directory, or not).
    pub(crate) fn looked_up(&self, caller: u32, parent: u64, is_dir: bool) {
        let slot = self.slot(caller);
        if !is_dir
            && slot.listed.load(Ordering::Relaxed) == parent
            && slot.caller.load(Ordering::Relaxed) == caller
        {
            slot.listed.store(0, Ordering::Relaxed);
            slot.uses_attrs.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walker_of_names_gets_names_only() {
        let plus = PlusUse::default();
        for dir in 2..100 {
            assert!(!plus.with_attrs(7, dir), "listing {dir}");
            // it enters subdirectories: lookups of directories
            plus.looked_up(7, dir, true);
        }
    }

    #[test]
    fn a_caller_that_stats_what_it_lists_gets_attributes_and_is_probed_now_and_then() {
        let plus = PlusUse::default();
        assert!(!plus.with_attrs(7, 2));
        plus.looked_up(7, 2, false);
        let mut names_only = Vec::new();
        for dir in 3..3 + 3 * u64::from(PROBE) {
            if !plus.with_attrs(7, dir) {
                names_only.push(dir);
                plus.looked_up(7, dir, false);
            }
        }
        assert_eq!(names_only.len(), 3, "probes: {names_only:?}");
        // once it no longer uses them, a probe takes them away
        let probed = (0..PROBE as u64)
            .map(|i| 1000 + i)
            .find(|&dir| !plus.with_attrs(7, dir))
            .expect("a probe within PROBE listings");
        assert!(!plus.with_attrs(7, probed + 1));
    }

    #[test]
    fn a_lookup_elsewhere_or_by_another_caller_does_not_count() {
        let plus = PlusUse::default();
        assert!(!plus.with_attrs(7, 2));
        plus.looked_up(7, 3, false); // another directory
        plus.looked_up(8, 2, false); // another caller
        assert!(!plus.with_attrs(7, 4));
        // a caller taking over a slot starts from nothing
        plus.looked_up(7, 4, false);
        assert!(!plus.with_attrs(7 + SLOTS as u32, 5));
        assert!(!plus.with_attrs(7 + SLOTS as u32, 6));
    }
}
