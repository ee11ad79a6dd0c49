//! COPY and ADD: find the sources ([`sources`]) and write them straight into the step's
//! upper dir with Docker's rules: a directory source copies its content, several sources
//! need a `/`-terminated destination, a relative destination is under WORKDIR, new files
//! are owned by 0:0 unless `--chown` (sources from another stage keep their owners),
//! `--chmod` sets every mode (octal) or changes it (symbolic, as chmod(1)), `--parents`
//! keeps each source's path, parent directories that exist in the image keep their
//! metadata in the upper.

mod sources;

pub(crate) use sources::{Item, Resolved, key_text, resolve};

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;

use rayon::prelude::*;

use super::archive;
use super::step::StageRun;
use crate::chmod::Chmod;
use crate::context::{self, Kind};
use crate::error::{Error, Result};
use crate::instructions::{Copy, Step};
use crate::tree::Tree;

fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{rel}"),
    }
}

/// Parses `--chown=user[:group]` (names looked up in the image).
pub(crate) fn owner(spec: &str, tree: &Tree) -> std::result::Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => tree
            .user(user)
            .ok_or_else(|| format!("unknown user {user:?} in /etc/passwd of the image"))?,
    };
    let gid = match group {
        None => {
            if user.parse::<u32>().is_ok() {
                uid
            } else {
                primary
            }
        }
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => tree
                .group(group)
                .ok_or_else(|| format!("unknown group {group:?} in /etc/group of the image"))?,
        },
    };
    Ok((uid, gid))
}

/// Writes the resolved sources into `upper`.
pub(crate) fn execute(
    run: &mut StageRun<'_, '_>,
    step: &Step,
    copy: &Copy,
    resolved: &[Resolved],
    upper: &Path,
) -> Result<()> {
    let file = run.cx.buildfile.file.clone();
    let tree = Tree::new(run.state.lowers(run.cx.store)?);
    let owner =
        match &copy.chown {
            Some(spec) => Some(owner(spec, &tree).map_err(|e| {
                Error::step(&file, step.pos_of(spec), format!("--chown={spec}: {e}"))
            })?),
            None => None,
        };
    let chmod = match &copy.chmod {
        Some(mode) => Some(Chmod::parse(mode).map_err(|why| {
            Error::step(
                &file,
                step.pos_of(mode),
                format!("invalid --chmod {mode:?}: {why}"),
            )
        })?),
        None => None,
    };
    // an entry's mode: its own, changed by --chmod
    let mode_of = |mode: u32, is_dir: bool| chmod.as_ref().map_or(mode, |c| c.apply(mode, is_dir));
    let workdir = if run.state.config.working_dir.is_empty() {
        "/".to_string()
    } else {
        run.state.config.working_dir.clone()
    };
    let dest_abs = if copy.dest.starts_with('/') {
        copy.dest.clone()
    } else {
        format!("{workdir}/{}", copy.dest)
    };
    // Symlinks on the way are followed inside the image, as Docker and BuildKit resolve
    // the destination (a link to usr/lib stays a link; the file lands in usr/lib).
    let dest = tree.resolve(&context::clean(&dest_abs))?;
    let count: usize = resolved.len();
    let dest_exists_as_dir = tree.lookup(&dest).is_some_and(|(_, meta)| meta.is_dir());
    let dir_dest = copy.dest.ends_with('/')
        || copy.dest.ends_with("/.")
        || copy.dest == "."
        || dest.is_empty()
        || dest_exists_as_dir;
    let dir_dest = dir_dest || copy.parents;
    if count > 1 && !dir_dest {
        return Err(Error::step(
            &file,
            step.pos_of(&copy.dest),
            format!(
                "when copying more than one source the destination must be a directory ending in /, found {:?}",
                copy.dest
            ),
        ));
    }
    for source in resolved {
        match source {
            Resolved::Heredoc(doc) => {
                let target = if dir_dest {
                    join(&dest, &doc.name)
                } else {
                    dest.clone()
                };
                make_parents(&tree, upper, &target, owner)?;
                let path = upper.join(&target);
                replace(&path)?;
                fs::write(&path, &doc.content)
                    .map_err(|e| Error::io("failed to write", &path, e))?;
                set_meta(&path, mode_of(0o644, false), owner.unwrap_or((0, 0)))?;
            }
            Resolved::Path {
                name,
                items,
                from_context,
                archive: is_archive,
                parents,
            } => {
                let root = &items[0];
                if *is_archive {
                    make_dirs(&tree, upper, &dest, None)?;
                    archive::extract(run.cx.store, &root.real, &tree, upper, &dest).map_err(
                        |e| {
                            Error::step(
                                &file,
                                step.pos,
                                format!(
                                    "ADD {}: failed to extract archive: {e}",
                                    root.real.display()
                                ),
                            )
                        },
                    )?;
                    continue;
                }
                let base = if let Some(kept) = parents {
                    // the match at its path below the destination (a directory with its
                    // own metadata, as its files), the parents on the way made as for any
                    // destination
                    let base = join(&dest, kept);
                    make_dirs(
                        &tree,
                        upper,
                        base.rsplit_once('/').map_or("", |(parent, _)| parent),
                        owner,
                    )?;
                    base
                } else if root.kind == Kind::Dir {
                    let new = tree.lookup(&dest).is_none();
                    make_dirs(&tree, upper, &dest, owner)?;
                    // The directory this COPY makes for a copied directory's content takes
                    // --chmod, as the entries inside do (BuildKit since moby/buildkit#4945).
                    // The parents it makes on the way stay 0755: Docker 28.1 gave them the
                    // --chmod mode too, which left them without x (moby/moby#49851).
                    if let Some(chmod) = chmod.as_ref().filter(|_| new && !dest.is_empty()) {
                        let mode = chmod.apply(0o755, true);
                        set_meta(&upper.join(&dest), mode, owner.unwrap_or((0, 0)))?;
                    }
                    dest.clone()
                } else if dir_dest {
                    make_dirs(&tree, upper, &dest, owner)?;
                    join(&dest, name)
                } else {
                    make_parents(&tree, upper, &dest, owner)?;
                    dest.clone()
                };
                let meta_of = |item: &Item| {
                    let item_owner = owner.unwrap_or(if *from_context {
                        (0, 0)
                    } else {
                        (item.uid, item.gid)
                    });
                    (mode_of(item.mode, item.kind == Kind::Dir), item_owner)
                };
                // (a directory's content goes to the destination; under --parents the
                // directory itself too)
                let wanted = |item: &&Item| {
                    !(root.kind == Kind::Dir && item.rel.is_empty() && parents.is_none())
                };
                // Directories first, in path order (parents before children): each lands
                // where the image's symlinks lead (`COPY rootfs/ /` onto /lib -> usr/lib
                // writes into usr/lib). Then every other entry in parallel, below them.
                let mut links = Links::default();
                let mut dirs = Vec::new();
                for item in items.iter().filter(wanted).filter(|i| i.kind == Kind::Dir) {
                    let mut rel = links.place(&join(&base, &item.rel));
                    if let Some(to) = link_to_dir(&tree, upper, &rel)? {
                        links.0.push((rel, to.clone()));
                        rel = to;
                    }
                    let target = upper.join(&rel);
                    let (mode, item_owner) = meta_of(item);
                    copy_item(item, &target, mode, item_owner)?;
                    dirs.push((item, target));
                }
                let target_of = |item: &Item| upper.join(links.place(&join(&base, &item.rel)));
                // Hard links among the copied files stay links, as BuildKit keeps them:
                // the first name of an inode is copied, the others are linked to it.
                let second_names = hard_links(items, wanted);
                items
                    .par_iter()
                    .enumerate()
                    .filter(|(i, item)| {
                        wanted(item) && item.kind != Kind::Dir && !second_names.contains_key(i)
                    })
                    .try_for_each(|(_, item)| {
                        let (mode, item_owner) = meta_of(item);
                        copy_item(item, &target_of(item), mode, item_owner)
                    })?;
                for (&second, &first) in &second_names {
                    let (target, first) = (target_of(&items[second]), target_of(&items[first]));
                    replace(&target)?;
                    fs::hard_link(&first, &target)
                        .map_err(|e| Error::io("failed to link", &target, e))?;
                }
                // directory times last: creating entries inside changes them
                for (item, target) in dirs.iter().rev() {
                    copy_mtime(&item.real, target);
                }
            }
        }
    }
    Ok(())
}

/// The regular files among the `wanted` `items` that are another name of an earlier one's
/// inode: index -> index of that earlier item.
fn hard_links(items: &[Item], wanted: impl Fn(&&Item) -> bool) -> HashMap<usize, usize> {
    use std::os::unix::fs::MetadataExt;
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut seconds = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        if item.kind != Kind::File || !wanted(&item) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&item.real) else {
            continue;
        };
        if meta.nlink() > 1 {
            let earlier = *first.entry((meta.dev(), meta.ino())).or_insert(index);
            if earlier != index {
                seconds.insert(index, earlier);
            }
        }
    }
    seconds
}

/// Directories of the image that a copied tree reached through a symlink: what is
/// below the link's name goes below where it leads.
#[derive(Default)]
struct Links(Vec<(String, String)>);

impl Links {
    /// Where `rel` (a clean relative path) lands, through the links met so far.
    fn place(&self, rel: &str) -> String {
        for (link, to) in self.0.iter().rev() {
            if let Some(rest) = rel.strip_prefix(link.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{to}{rest}");
            }
        }
        rel.to_string()
    }
}

/// Where a directory copied onto `rel` goes when the image has a symlink there (and this
/// step has not written `rel` yet): the directory it leads to, inside the image, with its
/// parents made in `upper`. A link to something that is not a directory is refused, as
/// BuildKit refuses it.
pub(crate) fn link_to_dir(tree: &Tree, upper: &Path, rel: &str) -> Result<Option<String>> {
    let is_link = fs::symlink_metadata(upper.join(rel)).is_err()
        && tree
            .lookup(rel)
            .is_some_and(|(_, meta)| meta.file_type().is_symlink());
    if !is_link {
        return Ok(None);
    }
    let to = tree.resolve(rel)?;
    if tree.lookup(&to).is_some_and(|(_, meta)| !meta.is_dir()) {
        return Err(Error::Other(format!(
            "cannot copy a directory to /{rel}: it is a symlink to /{to}, not a directory"
        )));
    }
    make_parents(tree, upper, &to, None)?;
    Ok(Some(to))
}

fn replace(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| Error::io("failed to replace", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io("failed to replace", path, e)),
        Err(_) => Ok(()),
    }
}

fn copy_item(item: &Item, target: &Path, mode: u32, owner: (u32, u32)) -> Result<()> {
    match item.kind {
        Kind::Dir => {
            match fs::symlink_metadata(target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    replace(target)?;
                    fs::create_dir(target)
                        .map_err(|e| Error::io("failed to create directory", target, e))?;
                }
                Err(_) => fs::create_dir(target)
                    .map_err(|e| Error::io("failed to create directory", target, e))?,
            }
            set_meta(target, mode, owner)?;
            copy_xattrs(&item.real, target)
        }
        Kind::File => {
            replace(target)?;
            fs::copy(&item.real, target).map_err(|e| Error::io("failed to copy to", target, e))?;
            set_meta(target, mode, owner)?;
            // after the chown, which clears file capabilities
            copy_xattrs(&item.real, target)?;
            copy_mtime(&item.real, target);
            Ok(())
        }
        Kind::Symlink => {
            replace(target)?;
            symlink(item.link.as_deref().unwrap_or(""), target)
                .map_err(|e| Error::io("failed to create symlink", target, e))?;
            lchown(target, Some(owner.0), Some(owner.1))
                .map_err(|e| Error::io("failed to chown", target, e))
        }
        Kind::Fifo => {
            replace(target)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                target,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(mode),
                0,
            )
            .map_err(|e| Error::io("failed to create fifo", target, e.into()))?;
            set_meta(target, mode, owner)
        }
        // sockets and devices are not copied (as Docker)
        Kind::Socket | Kind::Device => Ok(()),
    }
}

/// Copies the extended attributes BuildKit carries over: `user.*` and file capabilities
/// (`security.capability`). Not SELinux labels, ACLs or `trusted.*` (an unpacked layer's
/// overlay markers live there).
fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let wanted = |name: &[u8]| name.starts_with(b"user.") || name == b"security.capability";
    let names = match xattr::list(from) {
        Ok(names) => names,
        // a file system without xattrs has none to copy
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
            return Ok(());
        }
        Err(e) => return Err(Error::io("failed to list the xattrs of", from, e)),
    };
    for name in names.filter(|n| wanted(n.as_bytes())) {
        let value = match xattr::get(from, &name) {
            Ok(Some(value)) => value,
            // removed meanwhile
            Ok(None) => continue,
            Err(e) => return Err(Error::io("failed to read an xattr of", from, e)),
        };
        match xattr::set(to, &name, &value) {
            Ok(()) => {}
            // a store on a file system without user xattrs (tmpfs before 6.6) keeps none
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
                tracing::warn!(
                    "{}: the store's file system takes no {name:?}",
                    to.display()
                );
            }
            Err(e) => return Err(Error::io("failed to set an xattr on", to, e)),
        }
    }
    Ok(())
}

fn set_meta(path: &Path, mode: u32, owner: (u32, u32)) -> Result<()> {
    lchown(path, Some(owner.0), Some(owner.1))
        .map_err(|e| Error::io("failed to chown", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("failed to chmod", path, e))
}

fn copy_mtime(from: &Path, to: &Path) {
    let Ok(meta) = fs::symlink_metadata(from) else {
        return;
    };
    let Ok(modified) = meta.modified() else {
        return;
    };
    if let Ok(file) = fs::File::open(to) {
        let _ = file.set_times(fs::FileTimes::new().set_modified(modified));
    }
}

fn make_parents(tree: &Tree, upper: &Path, rel: &str, owner: Option<(u32, u32)>) -> Result<()> {
    match rel.rsplit_once('/') {
        Some((parent, _)) => make_dirs(tree, upper, parent, owner),
        None => Ok(()),
    }
}

/// Creates `rel` and its parents in `upper`. Directories that exist in the image are
/// recreated with their metadata (so the layer does not change them); new ones are
/// 0755, owned by `owner` or root (BuildKit chowns every directory it makes for a
/// `--chown` COPY or a WORKDIR under USER).
pub(crate) fn make_dirs(
    tree: &Tree,
    upper: &Path,
    rel: &str,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let mut current = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        current = join(&current, part);
        let path = upper.join(&current);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let in_image = tree.lookup(&current);
        if in_image.as_ref().is_some_and(|(_, meta)| !meta.is_dir()) {
            // mkdir -p fails here too: a file is not replaced by a directory on the way
            return Err(Error::Other(format!(
                "/{current} exists in the image and is not a directory"
            )));
        }
        replace(&path)?;
        fs::create_dir(&path).map_err(|e| Error::io("failed to create directory", &path, e))?;
        match in_image {
            Some((real, meta)) if meta.is_dir() => {
                set_meta(&path, meta.mode() & 0o7777, (meta.uid(), meta.gid()))?;
                copy_mtime(&real, &path);
            }
            _ => set_meta(&path, 0o755, owner.unwrap_or((0, 0)))?,
        }
    }
    Ok(())
}
