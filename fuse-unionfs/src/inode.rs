//! The inode table: FUSE inode numbers for merged entries, stable for the life of the
//! mount. A number is handed out per real file (device, inode) the first time it is seen and
//! never reused; a copy-up registers the new upper file under the same number, so a file
//! keeps its st_ino when it moves up, and hard links (one real inode) share one number.
//! The number is the real inode's, with the index of its device among the branches' in the
//! bits above ([`INO_BITS`]), so that it is also the same across mounts, as kernel
//! overlayfs's (xino) are; one already handed out to another real file in this mount (an
//! inode ext4 reused, a second branch's name of one file) is counted from [`COUNTED`]. A
//! directory merged from upper and lower branches takes its topmost lower directory's
//! number, and a copied-up file its origin's (`Found::numbered_by`, `origin.rs`), as
//! overlayfs's do, so both keep their numbers across remounts.
//! One exception: a big file copied up while readers hold the lower file through FUSE
//! passthrough gets a new number (`renumber`; `fuse.rs` says why), as the readers keep
//! the old file.
//! Live nodes (those the kernel holds a lookup count on) remember where their entry is:
//! the (parent, name) links, the topmost branch and, for directories, the branches merged.
//! The maps are sharded so lookups on different inodes never contend.

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) const ROOT: u64 = 1;
const SHARDS: usize = 64;
/// A real inode number below 2^56 is kept whole; the device's index goes above it.
const INO_BITS: u32 = 56;
/// Devices with an index of their own (the rest get counted numbers).
const MAX_DEVICES: usize = 16;
/// Numbers not derived from a real file count from here, above every derived one.
const COUNTED: u64 = 1 << 60;

/// Where a live node's entry is, guarded by the node's lock.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    /// (parent inode, name) of every known name; the first reachable one is used.
    pub links: Vec<(u64, OsString)>,
    /// The topmost branch holding the entry (0 = upper).
    pub layer: usize,
    /// Directories: the branches merged into it, top first, cut after an opaque one.
    pub dir_layers: Vec<usize>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub ino: u64,
    pub is_dir: bool,
    pub state: RwLock<NodeState>,
    /// Kernel lookup count (FUSE forget protocol).
    lookups: AtomicU64,
    /// Serialises copy-up of this node only: other nodes proceed meanwhile.
    pub copy_lock: Mutex<()>,
    /// (size, nlink) of the node's lower file, as a lookup saw it: branches below the
    /// upper never change, so an open can decide how to serve the file without a stat.
    pub lower_file: OnceLock<(u64, u64)>,
    /// A removed directory's attributes (nlink 0): a process may still be in it, and
    /// fstat(2) of "." must answer, as on any file system.
    pub removed_dir: OnceLock<Box<crate::layer::Meta>>,
    /// A directory's default ACL: not looked at yet, none, or one (see `Union::default_acl`).
    pub default_acl: std::sync::atomic::AtomicU8,
    /// A file this server made, with no security.capability set since: the GETXATTR the
    /// kernel sends before a new file's first write (file_remove_privs) needs no syscall.
    pub caps_free: std::sync::atomic::AtomicBool,
    /// A directory whose upper copy holds entries with an origin (`origin.rs`): not looked
    /// at yet, no, yes. A copy-up in this mount needs no mark read: its number is known.
    pub impure: std::sync::atomic::AtomicU8,
}

impl Node {
    pub(crate) fn state(&self) -> RwLockReadGuard<'_, NodeState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state_mut(&self) -> RwLockWriteGuard<'_, NodeState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

type Shard<K, V> = RwLock<HashMap<K, V, BuildHasherDefault<DefaultHasher>>>;

/// A real file: (device, inode).
type Key = (u64, u64);

pub(crate) struct Table {
    nodes: Vec<Shard<u64, Arc<Node>>>,
    /// Real file -> its number and the branch it was first seen in.
    inos: Vec<Shard<(u64, u64), (u64, usize)>>,
    /// Real files reached through another branch too (hard links between branches): the
    /// numbers of those other names, by branch.
    others: RwLock<HashMap<(Key, usize), u64>>,
    /// The derived numbers in use: mapped from a real file, or held by the kernel (a live
    /// node). One goes back when neither is left, so a deleted file's number is not given
    /// to the file that reuses its inode while the kernel may still hold the old one.
    used: Vec<Shard<u64, ()>>,
    /// Numbers an upper file took through its copy-up origin (its lower file's), by the
    /// upper file: no other file may have one (two upper copies naming one origin; the
    /// lower file visible at another path, moved since its copy-up).
    lent: RwLock<HashMap<u64, Key>>,
    /// Devices by index: the branches' (upper first) from the start, others as seen.
    devices: RwLock<Vec<u64>>,
    next: AtomicU64,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// A table for branches on `devices` (upper first, then the lowers top down).
    pub(crate) fn new(devices: &[u64]) -> Table {
        let mut indexed = Vec::new();
        for &dev in devices {
            if !indexed.contains(&dev) {
                indexed.push(dev);
            }
        }
        indexed.truncate(MAX_DEVICES);
        Table {
            nodes: (0..SHARDS).map(|_| RwLock::default()).collect(),
            inos: (0..SHARDS).map(|_| RwLock::default()).collect(),
            others: RwLock::default(),
            used: (0..SHARDS).map(|_| RwLock::default()).collect(),
            lent: RwLock::default(),
            devices: RwLock::new(indexed),
            next: AtomicU64::new(COUNTED),
        }
    }

    /// Takes derived number `ino` for a real file; false when it is in use.
    fn claim(&self, ino: u64) -> bool {
        let shard = &self.used[(ino as usize) % SHARDS];
        write(shard).insert(ino, ()).is_none()
    }

    /// Gives derived number `ino` back (counted numbers are never handed out twice).
    fn release(&self, ino: u64) {
        if ino < COUNTED {
            write(&self.used[(ino as usize) % SHARDS]).remove(&ino);
        }
    }

    /// The real file whose derived number `ino` is.
    fn derived_from(&self, ino: u64) -> Option<Key> {
        if ino >= COUNTED || ino <= ROOT {
            return None;
        }
        let dev = *read(&self.devices).get((ino >> INO_BITS) as usize)?;
        Some((dev, ino & ((1 << INO_BITS) - 1)))
    }

    /// The number derived from a real file: its inode number, its device's index above.
    fn derived(&self, (dev, ino): Key) -> Option<u64> {
        if ino <= ROOT || ino >= 1 << INO_BITS {
            return None;
        }
        let known = read(&self.devices).iter().position(|&d| d == dev);
        let index = match known {
            Some(index) => index,
            None => {
                let mut devices = write(&self.devices);
                match devices.iter().position(|&d| d == dev) {
                    Some(index) => index,
                    None if devices.len() < MAX_DEVICES => {
                        devices.push(dev);
                        devices.len() - 1
                    }
                    None => return None,
                }
            }
        };
        Some((index as u64) << INO_BITS | ino)
    }

    /// A number for `key` no other real file has in this mount and the kernel does not
    /// hold: the derived one if it is free, else a counted one.
    fn fresh(&self, key: Key) -> u64 {
        if let Some(ino) = self.derived(key)
            && self.claim(ino)
        {
            return ino;
        }
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn node_shard(&self, ino: u64) -> &Shard<u64, Arc<Node>> {
        &self.nodes[(ino as usize) % SHARDS]
    }

    fn key_shard(&self, key: (u64, u64)) -> &Shard<(u64, u64), (u64, usize)> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.inos[(hash as usize) % SHARDS]
    }

    /// The inode number of a real file reached through branch `layer`, allocated on first
    /// sight. A file reached through two branches (a hard link between them, or between a
    /// lower branch and upper) is two entries, each with its branch and number, as kernel
    /// overlayfs without an index has it: a name's number leads to its own branch's name.
    pub(crate) fn ino_for(&self, key: (u64, u64), layer: usize) -> u64 {
        let shard = self.key_shard(key);
        let seen = read(shard).get(&key).copied();
        let (ino, home) = match seen {
            Some(seen) => seen,
            None => *write(shard)
                .entry(key)
                .or_insert_with(|| (self.fresh(key), layer)),
        };
        if home == layer {
            return ino;
        }
        if let Some(&ino) = read(&self.others).get(&(key, layer)) {
            return ino;
        }
        *write(&self.others)
            .entry((key, layer))
            .or_insert_with(|| self.fresh(key))
    }

    /// Gives `key`, seen in branch `layer`, a number never used before (see
    /// `Union::supersede`).
    pub(crate) fn renumber(&self, key: (u64, u64), layer: usize) -> u64 {
        let ino = self.fresh(key);
        write(self.key_shard(key)).insert(key, (ino, layer));
        ino
    }

    pub(crate) fn existing_ino(&self, key: (u64, u64)) -> Option<u64> {
        read(self.key_shard(key)).get(&key).map(|&(ino, _)| ino)
    }

    /// Makes `key`, seen in branch `layer` (a copied-up file: upper), answer with `ino`.
    pub(crate) fn alias(&self, key: (u64, u64), ino: u64, layer: usize) {
        write(self.key_shard(key)).insert(key, (ino, layer));
    }

    /// Lends number `ino` (a lower file's) to upper file `upper`, copied up from it: false
    /// if another upper file has it, or the kernel holds an inode by it (the lower file,
    /// visible at another path).
    pub(crate) fn lend(&self, ino: u64, upper: Key) -> bool {
        let mut lent = write(&self.lent);
        match lent.get(&ino) {
            Some(&owner) => owner == upper,
            None if self.get(ino).is_some() => false,
            None => {
                lent.insert(ino, upper);
                true
            }
        }
    }

    /// The upper file number `ino` is lent to, if any.
    pub(crate) fn lent_to(&self, ino: u64) -> Option<Key> {
        read(&self.lent).get(&ino).copied()
    }

    /// Forgets a real file that no longer exists, so a recycled inode gets a fresh number.
    pub(crate) fn unalias(&self, key: (u64, u64)) {
        let removed = write(self.key_shard(key)).remove(&key);
        self.unaliased(key, removed);
    }

    /// [`unalias`](Self::unalias) for a file removed a moment ago that had number `ino`: only
    /// while `key` still answers with it. Another request may have made a file or directory
    /// on the real inode, recycled since the removal, and given that key a number of its own.
    /// Says whether it did.
    pub(crate) fn unalias_number(&self, key: (u64, u64), ino: u64) -> bool {
        let removed = {
            let mut shard = write(self.key_shard(key));
            match shard.get(&key) {
                Some(&(mapped, _)) if mapped == ino => shard.remove(&key),
                _ => None,
            }
        };
        let done = removed.is_some();
        self.unaliased(key, removed);
        done
    }

    fn unaliased(&self, key: (u64, u64), removed: Option<(u64, usize)>) {
        if let Some((ino, _)) = removed {
            let mut lent = write(&self.lent);
            if lent.get(&ino) == Some(&key) {
                lent.remove(&ino);
            }
        }
        // Its own number goes back once the kernel holds no inode by it (else `forget`
        // gives it back). A copy-up's alias carries another file's number: that stays.
        if let Some((ino, _)) = removed
            && self.derived(key) == Some(ino)
            && self.get(ino).is_none()
        {
            self.release(ino);
        }
    }

    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Node>> {
        read(self.node_shard(ino)).get(&ino).cloned()
    }

    /// Returns the live node for `ino` with one more lookup, creating it from `state` if it
    /// is not live; a known node gains the (parent, name) link if it is new.
    pub(crate) fn lookup(&self, ino: u64, is_dir: bool, state: NodeState) -> Arc<Node> {
        {
            let shard = read(self.node_shard(ino));
            if let Some(node) = shard.get(&ino) {
                node.lookups.fetch_add(1, Ordering::Relaxed);
                let node = node.clone();
                drop(shard);
                add_links(&node, &state.links);
                return node;
            }
        }
        let mut shard = write(self.node_shard(ino));
        let node = shard
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(Node {
                    ino,
                    is_dir,
                    state: RwLock::new(NodeState {
                        links: Vec::new(),
                        ..state.clone()
                    }),
                    lookups: AtomicU64::new(0),
                    copy_lock: Mutex::new(()),
                    lower_file: OnceLock::new(),
                    removed_dir: OnceLock::new(),
                    default_acl: std::sync::atomic::AtomicU8::new(0),
                    caps_free: std::sync::atomic::AtomicBool::new(false),
                    impure: std::sync::atomic::AtomicU8::new(0),
                })
            })
            .clone();
        node.lookups.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        add_links(&node, &state.links);
        node
    }

    /// Adds the root node (never forgotten).
    pub(crate) fn insert_root(&self, state: NodeState) {
        let node = Arc::new(Node {
            ino: ROOT,
            is_dir: true,
            state: RwLock::new(state),
            lookups: AtomicU64::new(1 << 40),
            copy_lock: Mutex::new(()),
            lower_file: OnceLock::new(),
            removed_dir: OnceLock::new(),
            default_acl: std::sync::atomic::AtomicU8::new(0),
            caps_free: std::sync::atomic::AtomicBool::new(false),
            impure: std::sync::atomic::AtomicU8::new(0),
        });
        write(self.node_shard(ROOT)).insert(ROOT, node);
    }

    /// FUSE forget: drops `count` lookups; the node goes when none are left.
    pub(crate) fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let mut shard = write(self.node_shard(ino));
        if let Some(node) = shard.get(&ino) {
            let before = node.lookups.fetch_sub(
                count.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if before <= count {
                shard.remove(&ino);
                drop(shard);
                // The kernel let go of it: a derived number no real file maps to any more
                // (the file was deleted) goes back.
                if let Some(key) = self.derived_from(ino)
                    && read(self.key_shard(key)).get(&key).map(|&(n, _)| n) != Some(ino)
                {
                    self.release(ino);
                }
            }
        }
    }

    /// Every live node (for the rare sweep after a directory rename).
    pub(crate) fn all(&self) -> Vec<Arc<Node>> {
        self.nodes
            .iter()
            .flat_map(|shard| read(shard).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub(crate) fn live_count(&self) -> usize {
        self.nodes.iter().map(|shard| read(shard).len()).sum()
    }
}

fn add_links(node: &Node, links: &[(u64, OsString)]) {
    if links.is_empty() {
        return;
    }
    if links.iter().all(|l| node.state().links.contains(l)) {
        return;
    }
    let mut state = node.state_mut();
    for link in links {
        if !state.links.contains(link) {
            state.links.insert(0, link.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            links: vec![(ROOT, "a".into())],
            layer: 0,
            dir_layers: vec![],
        }
    }

    #[test]
    fn inode_numbers_are_stable_and_shared_by_aliases() {
        let table = Table::new(&[1]);
        let a = table.ino_for((1, 10), 1);
        assert_eq!(table.ino_for((1, 10), 1), a);
        table.alias((1, 99), a, 0);
        assert_eq!(table.ino_for((1, 99), 0), a);
        assert_ne!(table.ino_for((1, 11), 1), a);
        // the same real file through another branch: a number of its own, kept
        let b = table.ino_for((1, 10), 2);
        assert_ne!(b, a);
        assert_eq!(table.ino_for((1, 10), 2), b);
        assert_eq!(table.ino_for((1, 10), 1), a);
        // gone while the kernel holds its inode: the next file on that inode gets another
        table.lookup(a, false, state());
        table.unalias((1, 10));
        assert_ne!(table.ino_for((1, 10), 1), a);
    }

    /// Numbers are the real inode's, with the device's index above; one a real file had
    /// already is counted instead.
    #[test]
    fn numbers_come_from_real_inodes_once() {
        let table = Table::new(&[7, 9, 7]);
        assert_eq!(table.ino_for((7, 100), 1), 100);
        assert_eq!(table.ino_for((9, 100), 2), 1 << INO_BITS | 100);
        // a device not among the branches' gets the next index
        assert_eq!(table.ino_for((3, 5), 1), 2 << INO_BITS | 5);
        // a new real file (renumber) keeps its own number when it is free...
        assert_eq!(table.renumber((7, 555), 0), 555);
        // ...and a recycled inode, or a second number of one file, is counted
        assert!(table.renumber((7, 100), 0) >= COUNTED);
        assert!(table.ino_for((7, 100), 2) >= COUNTED);
        // inode 1 is the root's number; numbers too big for the bits are counted
        assert!(table.ino_for((7, 1), 1) >= COUNTED);
        assert!(table.ino_for((7, 1 << INO_BITS), 1) >= COUNTED);
    }

    /// A deleted file's number is not given to the next file on its inode while the kernel
    /// holds the old one, and goes back once it does not (the set of numbers in use does
    /// not grow with every file made and deleted).
    #[test]
    fn a_deleted_files_number_comes_back_once_forgotten() {
        let table = Table::new(&[7]);
        let gone = table.renumber((7, 300), 0);
        assert_eq!(gone, 300);
        table.lookup(gone, false, state());
        table.unalias((7, 300));
        // the kernel still holds inode 300: ext4's reuse of the inode gets a counted number
        let reused = table.renumber((7, 300), 0);
        assert!(reused >= COUNTED);
        table.unalias((7, 300));
        table.forget(gone, 1);
        assert_eq!(table.renumber((7, 300), 0), 300);
        // made and deleted, never looked up by the kernel: back at once
        table.unalias((7, 300));
        assert_eq!(table.renumber((7, 300), 0), 300);
        let used: usize = table.used.iter().map(|s| read(s).len()).sum();
        assert_eq!(used, 1);
    }

    /// A removed file's key is given up only while it still answers with the file's
    /// number: not once a new entry on the recycled inode has its own.
    #[test]
    fn unalias_number_leaves_a_recycled_inodes_new_number() {
        let table = Table::new(&[7]);
        let file = table.renumber((7, 300), 0);
        table.lookup(file, false, state());
        // the file is removed, and a directory made at once on its inode
        let dir = table.renumber((7, 300), 0);
        assert_ne!(dir, file);
        assert!(!table.unalias_number((7, 300), file));
        assert_eq!(table.existing_ino((7, 300)), Some(dir));
        assert!(table.unalias_number((7, 300), dir));
        assert_eq!(table.existing_ino((7, 300)), None);
    }

    #[test]
    fn forget_drops_node_after_last_lookup() {
        let table = Table::new(&[1]);
        let node = table.lookup(5, false, state());
        table.lookup(
            5,
            false,
            NodeState {
                links: vec![(ROOT, "b".into())],
                ..state()
            },
        );
        assert_eq!(node.state().links.len(), 2);
        table.forget(5, 1);
        assert!(table.get(5).is_some());
        table.forget(5, 1);
        assert!(table.get(5).is_none());
    }
}
