//! Rename: files move within the upper branch (a whiteout stays at the old name when a
//! lower branch still has it, via RENAME_WHITEOUT); a directory with parts in lower
//! branches is first copied up whole (hard links inside it kept, one syncfs instead of a
//! fsync per file), made opaque and then renamed, so rename(2) succeeds where kernel
//! overlayfs with redirect_dir=off and fuse-overlayfs answer EXDEV. Live nodes below a moved
//! directory are then pointed at the upper branch, keeping their inode numbers.
//!
//! Renames exclude every other request (they move whole subtrees under path resolution),
//! so the tree copy, which may take seconds, is done before that, in place and beside
//! other requests: a copy-up changes nothing anyone sees. The exclusive part then only
//! walks the copied tree for what changed meanwhile and renames.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

use crate::copyup::{copy_up, copy_up_with, io_errno};
use crate::inode::ROOT;
use crate::layer::{Res, UPPER};
use crate::modify::{Key, Moved};
use crate::pending::Need;
use crate::union::{Found, Listed, Union};

/// The names and flags of one rename request.
#[derive(Clone, Copy)]
struct Request<'a> {
    parent: u64,
    name: &'a OsStr,
    newparent: u64,
    newname: &'a OsStr,
    flags: RenameFlags,
}

impl Union {
    /// Copies a whole merged directory tree into the upper branch (for a directory rename),
    /// keeping hard links within it; returns (lower file, upper copy) pairs so inode
    /// numbers follow the files.
    fn copy_up_tree(
        &self,
        rel: &Path,
        found_layer: usize,
        dir_layers: &[usize],
        links: &mut HashMap<Key, PathBuf>,
        moved: &mut Moved,
    ) -> Res<()> {
        if found_layer != UPPER {
            let lower = copy_up_with(&self.layers, found_layer, rel, false)?;
            self.moved(moved, lower.key(), self.layers.stat(UPPER, rel)?.key());
        }
        for Listed { name, .. } in self.list(dir_layers, rel)? {
            let child = rel.join(&name);
            let found = match self.resolve(dir_layers, &child) {
                Ok(found) => found,
                // Removed since the listing, by a request running beside the copy.
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err),
            };
            if found.meta.is_dir() {
                self.copy_up_tree(&child, found.layer, &found.dir_layers, links, moved)?;
            } else if found.layer != UPPER {
                let key = found.meta.key();
                match links.get(&key) {
                    Some(first) => rustix::fs::linkat(
                        self.upper_fd(),
                        first,
                        self.upper_fd(),
                        &child,
                        AtFlags::empty(),
                    )?,
                    None => {
                        copy_up_with(&self.layers, found.layer, &child, false)?;
                        if found.meta.nlink > 1 {
                            links.insert(key, child.clone());
                        }
                    }
                }
                self.moved(moved, key, self.layers.stat(UPPER, &child)?.key());
            }
        }
        Ok(())
    }

    /// Records a copied file; the copy answers with the inode number the kernel knows.
    fn moved(&self, moved: &mut Moved, lower: Key, upper: Key) {
        if let Some(ino) = self.table.existing_ino(lower) {
            self.table.alias(upper, ino, UPPER);
        }
        moved.push((lower, upper));
    }

    /// Waits for the copy-ups still being finished (`pending.rs`) of what a rename moves:
    /// their records name them by their names. A directory may hold some of them.
    fn settle_moved(&self, request: &Request<'_>) -> Res<()> {
        if self.pending.idle() {
            return Ok(());
        }
        let Some((src, dst)) = self.rename_sides(request)? else {
            return Ok(());
        };
        let path = |parent, name| -> Res<PathBuf> { Ok(self.dir_state(parent)?.1.join(name)) };
        let exchanged = dst.filter(|_| request.flags.contains(RenameFlags::EXCHANGE));
        let sides = [
            (request.parent, request.name),
            (request.newparent, request.newname),
        ];
        for (moved, (parent, name)) in std::iter::once(src).chain(exchanged).zip(sides) {
            if moved.meta.is_dir() {
                self.pending
                    .settle_under(&path(parent, name)?, Need::Durable);
                continue;
            }
            if let Some(ino) = self.table.existing_ino(moved.meta.key()) {
                self.pending.settle(ino, Need::Durable)?;
            }
        }
        Ok(())
    }

    /// What a rename moves: the source and the entry it replaces or swaps with, after
    /// the checks rename(2) makes before changing anything. None: both names are one
    /// file already (hard links), nothing to do.
    fn rename_sides(&self, request: &Request<'_>) -> Res<Option<(Found, Option<Found>)>> {
        let Request {
            parent,
            name,
            newparent,
            newname,
            flags,
        } = *request;
        let (_, ppath, players) = self.dir_state(parent)?;
        let (_, npath, nplayers) = self.dir_state(newparent)?;
        let nrel = npath.join(newname);
        let src = self.resolve(&players, &ppath.join(name))?;
        let dst = match self.resolve(&nplayers, &nrel) {
            Ok(found) => Some(found),
            Err(Errno::NOENT) => None,
            Err(err) => return Err(err),
        };
        if flags.contains(RenameFlags::NOREPLACE) && dst.is_some() {
            return Err(Errno::EXIST);
        }
        if flags.contains(RenameFlags::EXCHANGE) && dst.is_none() {
            return Err(Errno::NOENT);
        }
        if let Some(dst) = &dst {
            if src.meta.key() == dst.meta.key() {
                return Ok(None);
            }
            if dst.meta.is_dir()
                && !flags.contains(RenameFlags::EXCHANGE)
                && !self.list(&dst.dir_layers, &nrel)?.is_empty()
            {
                return Err(Errno::NOTEMPTY);
            }
        }
        Ok(Some((src, dst)))
    }

    /// The slow part of a directory rename, beside other requests: once rename(2)'s checks
    /// pass, copies the source directory (and, for an exchange, the target) into the upper
    /// branch in place and syncs the copies once.
    fn copy_up_before_rename(&self, request: &Request<'_>, moved: &mut Moved) -> Res<()> {
        let _shared = self.shared();
        let Some((src, dst)) = self.rename_sides(request)? else {
            return Ok(());
        };
        let mut sides = vec![(request.parent, request.name, src)];
        if request.flags.contains(RenameFlags::EXCHANGE)
            && let Some(dst) = dst
        {
            sides.push((request.newparent, request.newname, dst));
        }
        let before = moved.len();
        for (parent, name, found) in sides {
            if found.meta.is_dir() && found.dir_layers.iter().any(|&l| l != UPPER) {
                let (_, path, _) = self.copy_up_dir(parent)?;
                self.materialize(&path.join(name), &found, moved)?;
            }
        }
        if moved.len() > before {
            self.sync_tree_copy()?;
        }
        Ok(())
    }

    /// A tree copy skipped per-file fsync: one syncfs before a rename shows it (none in a
    /// volatile union).
    fn sync_tree_copy(&self) -> Res<()> {
        if self.layers.volatile {
            return Ok(());
        }
        rustix::fs::syncfs(self.upper_fd())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<Vec<u64>> {
        let flags = RenameFlags::from_bits(flags).ok_or(Errno::INVAL)?;
        if flags.contains(RenameFlags::WHITEOUT) {
            return Err(Errno::INVAL);
        }
        if self.layers.is_aufs_marker(Path::new(newname)) {
            return Err(Errno::PERM);
        }
        let request = Request {
            parent,
            name,
            newparent,
            newname,
            flags,
        };
        self.settle_moved(&request)?;
        let mut copied = Vec::new();
        self.copy_up_before_rename(&request, &mut copied)?;
        let _exclusive = self.exclusive();
        // (one that started since: none can start while this lock is held)
        self.settle_moved(&request)?;
        let Some((src, dst)) = self.rename_sides(&request)? else {
            return Ok(Vec::new());
        };
        // The inodes the kernel knows the two sides as, before a copy-up below may make a
        // lower file's key stop naming its inode (one of several hard links).
        let src_ino = self.table.existing_ino(src.meta.key());
        let dst_ino = dst
            .as_ref()
            .and_then(|d| self.table.existing_ino(d.meta.key()));
        let (_, ppath, players) = self.dir_state(parent)?;
        let (_, npath, nplayers) = self.dir_state(newparent)?;
        let (rel, nrel) = (ppath.join(name), npath.join(newname));
        self.copy_up_dir(parent)?;
        self.copy_up_dir(newparent)?;
        let src_lower = self.lower_has(&players, &rel)?;
        let mut moved = Vec::new();
        self.materialize(&rel, &src, &mut moved)?;
        if flags.contains(RenameFlags::EXCHANGE) {
            let dst = dst.as_ref().ok_or(Errno::NOENT)?;
            self.materialize(&nrel, dst, &mut moved)?;
        }
        if !moved.is_empty() {
            self.sync_tree_copy()?;
        }
        moved.extend(copied);
        // A file with an origin taking a name in another directory marks it (`origin.rs`).
        if ppath != npath {
            if !src.meta.is_dir() {
                crate::origin::carry(&self.layers, &rel, &npath);
            }
            if let Some(dst) = dst
                .as_ref()
                .filter(|_| flags.contains(RenameFlags::EXCHANGE))
                && !dst.meta.is_dir()
            {
                crate::origin::carry(&self.layers, &nrel, &ppath);
            }
        }
        // Moved directories with lower parts, to rid of whiteouts once renamed.
        let mut to_clean = Vec::new();
        // numbers superseded by a copy-up of either side (see `after_rename`)
        let mut superseded = Vec::new();
        if flags.contains(RenameFlags::EXCHANGE) {
            let dst = dst.as_ref().ok_or(Errno::NOENT)?;
            rustix::fs::renameat_with(
                self.upper_fd(),
                &rel,
                self.upper_fd(),
                &nrel,
                RenameFlags::EXCHANGE,
            )?;
            for (path, found, into) in [(&rel, dst, &players), (&nrel, &src, &nplayers)] {
                if moved_dir_is_opaque(found, into) {
                    self.layers.set_opaque_at(&self.layers.abs(UPPER, path))?;
                }
                if moved_with_lower_parts(found) {
                    to_clean.push(path.clone());
                }
            }
        } else {
            if let Some(dst) = &dst {
                if dst.meta.is_dir() {
                    self.remove_upper_dir(&nrel, dst.layer == UPPER, false)?;
                    self.dir_removed(dst, dst_ino);
                } else if dst.layer != UPPER && src.meta.is_dir() {
                    // nothing in upper to replace: the lower file is hidden by the opaque dir below
                } else if src.meta.is_dir() {
                    rustix::fs::unlinkat(self.upper_fd(), &nrel, AtFlags::empty())?;
                }
            }
            if src.meta.is_dir() {
                // A whiteout left at the new name cannot be replaced by a directory.
                if let Ok(meta) = self.layers.stat(UPPER, &nrel)
                    && meta.is_whiteout()
                {
                    rustix::fs::unlinkat(self.upper_fd(), &nrel, AtFlags::empty())?;
                }
            }
            self.rename_upper(&rel, &nrel, src_lower)?;
            if moved_dir_is_opaque(&src, &nplayers) {
                self.layers.set_opaque_at(&self.layers.abs(UPPER, &nrel))?;
            }
            if moved_with_lower_parts(&src) {
                to_clean.push(nrel.clone());
            }
            if let Some(dst) = &dst {
                superseded = self.unlinked(
                    newparent,
                    newname,
                    dst.meta.key(),
                    dst_ino,
                    dst.meta.is_dir() || dst.meta.nlink <= 1,
                );
            }
        }
        superseded.extend(self.after_rename(
            parent, name, newparent, newname, src_ino, dst_ino, flags, &moved,
        ));
        for path in to_clean {
            // The rename is done and seen right: what is left only bothers kernel overlayfs.
            if let Err(err) = self.drop_whiteouts_below(&path) {
                tracing::warn!("{}: whiteouts left below it: {err}", path.display());
            }
        }
        Ok(superseded)
    }

    /// Brings a rename source (or exchange target) wholly into the upper branch.
    fn materialize(&self, rel: &Path, found: &Found, moved: &mut Moved) -> Res<()> {
        if found.meta.is_dir() {
            if found.dir_layers.iter().any(|&l| l != UPPER) {
                // A whole tree: long, like a big file's copy.
                fuser::blocking(|| {
                    self.copy_up_tree(
                        rel,
                        found.layer,
                        &found.dir_layers,
                        &mut HashMap::new(),
                        moved,
                    )
                })?;
            }
        } else if found.layer != UPPER {
            let key = found.meta.key();
            let node = (found.meta.nlink > 1)
                .then(|| self.table.existing_ino(key))
                .flatten()
                .and_then(|ino| self.table.get(ino));
            if let Some(node) = node {
                // One of several names of a lower file the kernel knows as one inode: the
                // names it knows are linked to the copy (they stay one file), and the lower
                // file's key stops meaning this inode, so a name not looked up yet shows the
                // lower file under a number of its own, as a plain copy-up does.
                self.copy_up_node(&node)?;
            }
            if self.layers.stat(UPPER, rel).is_err() {
                copy_up(&self.layers, found.layer, rel)?;
            }
            self.moved(moved, key, self.layers.stat(UPPER, rel)?.key());
        }
        Ok(())
    }

    /// After a directory with lower parts moved to `rel`: removes the whiteouts below it,
    /// left by removals before the move. Nothing of a lower branch shows there (it is
    /// opaque), and kernel overlayfs never has whiteouts in such a directory: it would list
    /// them as entries it cannot stat, and not remove the directory. (Still under the
    /// rename's exclusion: a whiteout removed here cannot be a file someone just made.)
    fn drop_whiteouts_below(&self, rel: &Path) -> Res<()> {
        let mut stack = vec![self.layers.abs(UPPER, rel)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| io_errno(&e))? {
                let entry = entry.map_err(|e| io_errno(&e))?;
                let kind = entry.file_type().map_err(|e| io_errno(&e))?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if std::os::unix::fs::FileTypeExt::is_char_device(&kind)
                    && std::os::unix::fs::MetadataExt::rdev(
                        &entry.metadata().map_err(|e| io_errno(&e))?,
                    ) == 0
                {
                    std::fs::remove_file(entry.path()).map_err(|e| io_errno(&e))?;
                }
            }
        }
        Ok(())
    }

    /// rename(2) inside upper, leaving a whiteout at the old name if a lower has it.
    fn rename_upper(&self, rel: &Path, nrel: &Path, whiteout: bool) -> Res<()> {
        let upper = self.upper_fd();
        if !whiteout {
            return rustix::fs::renameat(upper, rel, upper, nrel);
        }
        match rustix::fs::renameat_with(upper, rel, upper, nrel, RenameFlags::WHITEOUT) {
            Err(Errno::INVAL | Errno::NOSYS) => {
                rustix::fs::renameat(upper, rel, upper, nrel)?;
                self.layers.whiteout(upper, rel)
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn after_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        src_ino: Option<u64>,
        dst_ino: Option<u64>,
        flags: RenameFlags,
        moved: &[(Key, Key)],
    ) -> Vec<u64> {
        // Each copied file already answers with its old inode number (`moved`).
        let old = (parent, name.to_os_string());
        let new = (newparent, newname.to_os_string());
        // the renamed inodes, and the numbers their copy-up superseded, which are renamed
        // with them and returned
        let mut superseded = Vec::new();
        let mut relink =
            |ino: Option<u64>, from: &(u64, std::ffi::OsString), to: &(u64, std::ffi::OsString)| {
                let Some(ino) = ino else {
                    return;
                };
                let others = self.superseded_nodes(ino);
                superseded.extend(others.iter().map(|node| node.ino));
                for node in self.table.get(ino).iter().chain(&others) {
                    let mut state = node.state_mut();
                    for link in state.links.iter_mut() {
                        if link == from {
                            *link = to.clone();
                        }
                    }
                    state.layer = UPPER;
                    if node.is_dir {
                        state.dir_layers = vec![UPPER];
                    }
                }
            };
        relink(src_ino, &old, &new);
        if flags.contains(RenameFlags::EXCHANGE) {
            relink(dst_ino, &new, &old);
        }
        // Everything below a moved directory now lives in the upper branch only.
        let roots: Vec<u64> = [
            src_ino,
            if flags.contains(RenameFlags::EXCHANGE) {
                dst_ino
            } else {
                None
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        if !moved.is_empty()
            && roots
                .iter()
                .any(|&ino| self.table.get(ino).is_some_and(|n| n.is_dir))
        {
            for node in self.table.all() {
                if self.below(node.ino, &roots) {
                    let mut state = node.state_mut();
                    state.layer = UPPER;
                    if node.is_dir {
                        state.dir_layers = vec![UPPER];
                    }
                }
            }
        }
        superseded
    }

    fn below(&self, ino: u64, roots: &[u64]) -> bool {
        let mut current = ino;
        for _ in 0..4096 {
            if current == ROOT {
                return false;
            }
            let Some(node) = self.table.get(current) else {
                return false;
            };
            let Some(parent) = node.state().links.first().map(|(p, _)| *p) else {
                return false;
            };
            if roots.contains(&parent) {
                return true;
            }
            current = parent;
        }
        false
    }
}

/// Whether a directory renamed into a directory merged from `into` is opaque there, as
/// ovl_rename makes it: one with lower branches was copied up whole (its lower names must
/// not show through at the new place); one only in upper is opaque when it lands in a
/// directory with lower branches, whether or not they have its name.
fn moved_dir_is_opaque(found: &Found, into: &[usize]) -> bool {
    let lower = |layers: &[usize]| layers.iter().any(|&l| l != UPPER);
    found.meta.is_dir() && (lower(&found.dir_layers) || lower(into))
}

/// Whether a renamed entry is a directory copied up whole (see [`Union::drop_whiteouts_below`]).
fn moved_with_lower_parts(found: &Found) -> bool {
    found.meta.is_dir() && found.dir_layers.iter().any(|&l| l != UPPER)
}
