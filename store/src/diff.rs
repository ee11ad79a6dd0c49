//! Filesystem changes as `docker diff` lists them: `A` added, `C` changed, `D` deleted.
//!
//! `upper_changes` reads a container's upper dir (overlay on-disk form) against the image's
//! lowers: a char 0/0 device is a deletion; an opaque directory (`trusted.overlay.opaque=y`)
//! deletes whatever its lowers held that the upper does not bring back; any other path is
//! `C` when some lower shows it and `A` otherwise. Directories on the way to a change are
//! in the upper and so listed as `C` (or `A`), as docker does. `image_changes` compares the
//! merged trees of two images instead.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::Image;
use crate::layer::{is_opaque, is_whiteout};
use crate::layout::{Store, list_dir};

/// What happened to a path.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path, absolute inside the container (`/etc/hosts`).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.letter(), self.path)
    }
}

/// Changes an upper dir makes over `lowers` (top first), sorted by path.
pub fn upper_changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    walk_upper(upper, Path::new(""), lowers, &mut changes)?;
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

fn walk_upper(upper: &Path, rel: &Path, lowers: &[PathBuf], out: &mut Vec<Change>) -> Result<()> {
    let dir = upper.join(rel);
    for name in sorted_names(&dir)? {
        let child_rel = rel.join(&name);
        let path = upper.join(&child_rel);
        let meta =
            fs::symlink_metadata(&path).map_err(|e| Error::io("failed to stat", &path, e))?;
        if is_whiteout(&meta) {
            out.push(change(ChangeKind::Deleted, &child_rel));
            continue;
        }
        let kind = if lower_has(lowers, &child_rel) {
            ChangeKind::Changed
        } else {
            ChangeKind::Added
        };
        out.push(change(kind, &child_rel));
        if meta.is_dir() {
            if is_opaque(&path) {
                let in_upper: BTreeSet<OsString> = sorted_names(&path)?.into_iter().collect();
                for hidden in lower_children(lowers, &child_rel)? {
                    if !in_upper.contains(&hidden) {
                        out.push(change(ChangeKind::Deleted, &child_rel.join(hidden)));
                    }
                }
            }
            walk_upper(upper, &child_rel, lowers, out)?;
        }
    }
    Ok(())
}

/// Whether the merged view of `lowers` (top first) shows `rel`: a whiteout or a
/// non-directory on the way hides it, and an opaque directory hides the layers below.
fn lower_has(lowers: &[PathBuf], rel: &Path) -> bool {
    let parts: Vec<_> = rel.components().collect();
    for lower in lowers {
        let mut current = lower.clone();
        let mut opaque_above = false;
        for (i, part) in parts.iter().enumerate() {
            current.push(part);
            let Ok(meta) = fs::symlink_metadata(&current) else {
                break;
            };
            if is_whiteout(&meta) {
                return false;
            }
            if i + 1 == parts.len() {
                return true;
            }
            if !meta.is_dir() {
                return false;
            }
            if is_opaque(&current) {
                opaque_above = true;
            }
        }
        if opaque_above {
            return false;
        }
    }
    false
}

/// Names the merged lowers show inside the directory `rel`.
fn lower_children(lowers: &[PathBuf], rel: &Path) -> Result<BTreeSet<OsString>> {
    let mut names = BTreeSet::new();
    for lower in lowers {
        let dir = lower.join(rel);
        if dir.is_dir() {
            names.extend(sorted_names(&dir)?);
        }
    }
    Ok(names
        .into_iter()
        .filter(|name| lower_has(lowers, &rel.join(name)))
        .collect())
}

/// The merged tree of layer dirs given top first: relative path -> metadata summary.
fn merged_tree(layers: &[PathBuf]) -> Result<BTreeMap<PathBuf, Summary>> {
    let mut tree = BTreeMap::new();
    for layer in layers.iter().rev() {
        apply_layer(layer, Path::new(""), &mut tree)?;
    }
    Ok(tree)
}

fn apply_layer(layer: &Path, rel: &Path, tree: &mut BTreeMap<PathBuf, Summary>) -> Result<()> {
    for name in sorted_names(&layer.join(rel))? {
        let child_rel = rel.join(&name);
        let path = layer.join(&child_rel);
        let meta =
            fs::symlink_metadata(&path).map_err(|e| Error::io("failed to stat", &path, e))?;
        let replaces_children = is_whiteout(&meta) || !meta.is_dir() || is_opaque(&path);
        if replaces_children {
            let doomed: Vec<PathBuf> = tree
                .range(child_rel.clone()..)
                .map(|(p, _)| p.clone())
                .take_while(|p| p.starts_with(&child_rel))
                .collect();
            for path in doomed {
                if path != child_rel || is_whiteout(&meta) {
                    tree.remove(&path);
                }
            }
        }
        if is_whiteout(&meta) {
            continue;
        }
        tree.insert(child_rel.clone(), Summary::of(&path, &meta));
        if meta.is_dir() {
            apply_layer(layer, &child_rel, tree)?;
        }
    }
    Ok(())
}

/// Changes from the layer dirs `from` to the layer dirs `to` (both top first), sorted.
pub fn tree_changes(from: &[PathBuf], to: &[PathBuf]) -> Result<Vec<Change>> {
    let old = merged_tree(from)?;
    let new = merged_tree(to)?;
    let mut kinds: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
    for (path, summary) in &new {
        match old.get(path) {
            None => {
                kinds.insert(path.clone(), ChangeKind::Added);
            }
            Some(previous) if previous != summary => {
                kinds.insert(path.clone(), ChangeKind::Changed);
            }
            Some(_) => {}
        }
    }
    for path in old.keys() {
        let parent_kept = path
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || new.contains_key(p));
        if !new.contains_key(path) && parent_kept {
            kinds.insert(path.clone(), ChangeKind::Deleted);
        }
    }
    let changed: Vec<PathBuf> = kinds.keys().cloned().collect();
    for path in changed {
        for ancestor in path.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            kinds
                .entry(ancestor.to_path_buf())
                .or_insert(ChangeKind::Changed);
        }
    }
    let mut changes: Vec<Change> = kinds
        .into_iter()
        .map(|(path, kind)| change(kind, &path))
        .collect();
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// Changes from image `a` to image `b` (e.g. a base and an image built on it), sorted.
pub fn image_changes(store: &Store, a: &Image, b: &Image) -> Result<Vec<Change>> {
    tree_changes(&store.layer_dirs(a)?, &store.layer_dirs(b)?)
}

/// What makes two versions of a path "the same" (docker compares the same fields).
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    target: Option<PathBuf>,
}

impl Summary {
    fn of(path: &Path, meta: &Metadata) -> Summary {
        // Directory sizes and mtimes change with their entries; docker ignores both for dirs.
        let dir = meta.is_dir();
        Summary {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: if dir { 0 } else { meta.size() },
            mtime: if dir {
                (0, 0)
            } else {
                (meta.mtime(), meta.mtime_nsec())
            },
            rdev: meta.rdev(),
            target: meta
                .file_type()
                .is_symlink()
                .then(|| fs::read_link(path).unwrap_or_default()),
        }
    }
}

fn change(kind: ChangeKind, rel: &Path) -> Change {
    Change {
        kind,
        path: format!("/{}", rel.display()),
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = list_dir(dir)?.iter().map(fs::DirEntry::file_name).collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_match_docker() {
        let c = Change {
            kind: ChangeKind::Deleted,
            path: "/etc/motd".into(),
        };
        assert_eq!(c.to_string(), "D /etc/motd");
    }
}
