//! COPY and ADD: find the sources (build context, another stage or an image, heredocs,
//! URLs), describe them for the cache key (names, modes, owners, types, link targets,
//! bytes; no mtimes), and write them straight into the step's upper dir with Docker's
//! rules: a directory source copies its content, several sources need a `/`-terminated
//! destination, a relative destination is under WORKDIR, new files are owned by 0:0 unless
//! `--chown` (sources from another stage keep their owners), `--chmod` sets every mode (octal) or changes it (symbolic, as chmod(1)),
//! parent directories that exist in the image keep their metadata in the upper.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::archive;
use super::step::StageRun;
use crate::chmod::Chmod;
use crate::context::{self, Kind, glob, hash_file, kind_of, matches_or_parent};
use crate::error::{Error, Result};
use crate::instructions::{Copy, Source, Step};
use crate::parser::Heredoc;
use crate::tree::Tree;

/// One file or directory to copy.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Path below the matched source ("" = the source itself).
    pub rel: String,
    pub real: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link: Option<String>,
    pub hash: String,
}

/// What one source word resolved to.
#[derive(Debug, Clone)]
pub(crate) enum Resolved {
    /// A matched file or directory; `items[0]` is the match itself.
    Path {
        name: String,
        items: Vec<Item>,
        from_context: bool,
        archive: bool,
        /// Under `COPY --parents`: the path the match keeps below the destination.
        parents: Option<String>,
    },
    Heredoc(Heredoc),
}

fn has_glob(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// Resolves every source of a COPY/ADD (URLs are downloaded, so ADD's key covers bytes).
pub(crate) fn resolve(
    run: &mut StageRun<'_, '_>,
    step: &Step,
    copy: &Copy,
    add: bool,
) -> Result<Vec<Resolved>> {
    let file = run.cx.buildfile.file.clone();
    let excludes = copy
        .excludes
        .iter()
        .map(|pattern| {
            glob(&context::clean(pattern)).map_err(|e| {
                Error::syntax(
                    &file,
                    step.pos_of(pattern),
                    format!("invalid --exclude pattern {pattern:?}: {}", e.kind()),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let tree = match &copy.from {
        Some(from) => Some(Tree::new(run.source_lowers(step, from)?)),
        None => None,
    };
    let mut out = Vec::new();
    for source in &copy.sources {
        let pattern = match source {
            Source::Heredoc(doc) => {
                out.push(Resolved::Heredoc(doc.clone()));
                continue;
            }
            Source::Path(pattern) => pattern,
        };
        // (COPY takes such a name for a file of the context)
        let git = add
            && (pattern.starts_with("git://")
                || pattern.starts_with("git@")
                || (super::is_url(pattern)
                    && pattern
                        .split('#')
                        .next()
                        .is_some_and(|u| u.ends_with(".git"))));
        if git {
            return Err(Error::syntax(
                &file,
                step.pos_of(pattern),
                format!(
                    "{} {pattern}: git sources are not supported here; clone in a RUN step, or \
                     build from the repository as the context",
                    if add { "ADD" } else { "COPY" }
                ),
            ));
        }
        if super::is_url(pattern) {
            if !add {
                return Err(Error::syntax(
                    &file,
                    step.pos_of(pattern),
                    format!("COPY cannot fetch URLs ({pattern}); use ADD"),
                ));
            }
            let download = archive::fetch(run.cx.store, pattern, copy.checksum.as_deref())
                .map_err(|e| {
                    Error::step(&file, step.pos_of(pattern), format!("ADD {pattern}: {e}"))
                })?;
            let (name, hash) = (download.name, download.hash);
            let item = Item {
                rel: String::new(),
                real: download.path,
                kind: Kind::File,
                mode: 0o600,
                uid: 0,
                gid: 0,
                link: None,
                hash,
            };
            out.push(Resolved::Path {
                name,
                items: vec![item],
                from_context: false,
                archive: false,
                parents: None,
            });
            continue;
        }
        if copy.checksum.is_some() {
            return Err(Error::syntax(
                &file,
                step.pos,
                "ADD --checksum only works with http(s) URLs",
            ));
        }
        let clean = context::clean(pattern);
        // --parents keeps each match's path below the destination: all of it, or what
        // follows a `/./` pivot (`COPY --parents src/./app/*.js /d/` gives /d/app/x.js).
        // (the pivot's components, which may be globs: as many go from each match)
        let pivot = pattern.find("/./").map_or(0, |at| {
            context::clean(&pattern[..at])
                .split('/')
                .filter(|part| !part.is_empty())
                .count()
        });
        let kept = |rel: &str| {
            copy.parents
                .then(|| rel.split('/').skip(pivot).collect::<Vec<_>>().join("/"))
        };
        let matches = match &tree {
            None => context_matches(run, &clean)?,
            Some(tree) => tree_matches(tree, &clean)?,
        };
        if matches.is_empty() {
            let place = if copy.from.is_some() {
                format!("in {}", copy.from.as_deref().unwrap_or(""))
            } else {
                "in the build context".to_string()
            };
            let why = if copy.from.is_none() && run.cx.context.ignore.excluded(&clean) {
                " (excluded by .dockerignore)"
            } else {
                ""
            };
            return Err(Error::step(
                &file,
                step.pos_of(pattern),
                format!(
                    "{} source {pattern:?} not found {place}{why}",
                    if add { "ADD" } else { "COPY" }
                ),
            ));
        }
        for (rel, mut items) in matches {
            items.retain(|item| {
                item.rel.is_empty()
                    || !excludes.iter().any(|g| {
                        matches_or_parent(g, &item.rel)
                            || matches_or_parent(g, &join(&rel, &item.rel))
                    })
            });
            hash_items(&mut items)?;
            let name = rel.rsplit('/').next().unwrap_or("").to_string();
            let archive = add
                && tree.is_none()
                && items.len() == 1
                && items[0].kind == Kind::File
                && archive::detect(&items[0].real).is_some();
            out.push(Resolved::Path {
                name,
                items,
                from_context: tree.is_none(),
                archive,
                parents: kept(&rel),
            });
        }
    }
    Ok(out)
}

fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{rel}"),
    }
}

/// Matches in the build context: (matched path, its items). A matched symlink is followed
/// inside the context, as BuildKit follows a COPY source (FollowSymlinks): `COPY link /d`
/// copies what the link points to, named `link`; links below a copied directory stay links.
fn context_matches(run: &StageRun<'_, '_>, clean: &str) -> Result<Vec<(String, Vec<Item>)>> {
    let ctx = &run.cx.context;
    let roots: Vec<String> = if has_glob(clean) {
        match glob(clean) {
            Ok(matcher) => ctx
                .entries
                .keys()
                .filter(|k| !k.is_empty() && matcher.is_match(k.as_str()))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    } else if ctx.entries.contains_key(clean) {
        vec![clean.to_string()]
    } else {
        Vec::new()
    };
    let mut matches = Vec::with_capacity(roots.len());
    for root in roots {
        let source = match ctx.entries[&root].link.as_deref() {
            Some(target) => match ctx.resolve(&root) {
                Some(to) if ctx.entries.contains_key(&to) => to,
                Some(to) => {
                    return Err(Error::Other(format!(
                        "{root} is a symlink to {target}, and /{to} is not in the build context"
                    )));
                }
                None => {
                    return Err(Error::Other(format!(
                        "{root}: too many levels of symbolic links"
                    )));
                }
            },
            None => root.clone(),
        };
        let items = ctx
            .subtree(&source)
            .map(|(key, entry)| {
                let rel = if key == &source {
                    String::new()
                } else {
                    key[if source.is_empty() {
                        0
                    } else {
                        source.len() + 1
                    }..]
                        .to_string()
                };
                Item {
                    rel,
                    real: ctx.root.join(key),
                    kind: entry.kind,
                    mode: entry.mode,
                    uid: entry.uid,
                    gid: entry.gid,
                    link: entry.link.clone(),
                    hash: String::new(),
                }
            })
            .collect();
        matches.push((root, items));
    }
    Ok(matches)
}

/// Matches in another stage or image (globs in the last path component).
fn tree_matches(tree: &Tree, clean: &str) -> Result<Vec<(String, Vec<Item>)>> {
    let (parent, last) = clean.rsplit_once('/').unwrap_or(("", clean));
    let parent = tree.resolve(parent)?;
    let roots: Vec<String> = if has_glob(last) {
        match glob(last) {
            Ok(matcher) => tree
                .read_dir(&parent)
                .keys()
                .filter(|name| matcher.is_match(name.as_str()))
                .map(|name| join(&parent, name))
                .collect(),
            Err(_) => Vec::new(),
        }
    } else {
        let full = join(&parent, last);
        // a final symlink is followed, as Docker does for COPY --from sources
        let resolved = if full.is_empty() {
            full
        } else {
            tree.resolve(&full)?
        };
        if resolved.is_empty() || tree.lookup(&resolved).is_some() {
            vec![resolved]
        } else {
            Vec::new()
        }
    };
    Ok(roots
        .into_iter()
        .filter_map(|root| {
            let (real, meta) = tree.lookup(&root)?;
            let mut items = vec![tree_item(String::new(), real, &meta)];
            if meta.is_dir() {
                walk_tree(tree, &root, "", &mut items);
            }
            Some((root, items))
        })
        .collect())
}

fn walk_tree(tree: &Tree, root: &str, rel: &str, items: &mut Vec<Item>) {
    for (name, (real, meta)) in tree.read_dir(&join(root, rel)) {
        let child = join(rel, &name);
        items.push(tree_item(child.clone(), real, &meta));
        if meta.is_dir() {
            walk_tree(tree, root, &child, items);
        }
    }
}

fn tree_item(rel: String, real: PathBuf, meta: &fs::Metadata) -> Item {
    let kind = kind_of(meta);
    let link = if kind == Kind::Symlink {
        fs::read_link(&real)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Item {
        rel,
        real,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        link,
        hash: String::new(),
    }
}

fn hash_items(items: &mut [Item]) -> Result<()> {
    items.par_iter_mut().try_for_each(|item| {
        if item.kind == Kind::File && item.hash.is_empty() {
            item.hash =
                hash_file(&item.real).map_err(|e| Error::io("failed to hash", &item.real, e))?;
        }
        Ok(())
    })
}

/// The sources' part of the cache key.
pub(crate) fn key_text(resolved: &[Resolved]) -> String {
    let mut text = String::new();
    for source in resolved {
        match source {
            Resolved::Heredoc(doc) => {
                text.push_str(&format!("heredoc {} {}\n", doc.name, doc.content.len()))
            }
            Resolved::Path {
                name,
                items,
                archive,
                parents,
                ..
            } => {
                text.push_str(&format!("source {name} archive={archive}"));
                // (where --parents puts it; nothing otherwise, so keys stay as they were)
                if let Some(kept) = parents {
                    text.push_str(&format!(" parents={kept}"));
                }
                text.push('\n');
                for item in items {
                    text.push_str(&format!(
                        "{}\0{:?}\0{:o}\0{}\0{}\0{}\0{}\n",
                        item.rel,
                        item.kind,
                        item.mode,
                        item.uid,
                        item.gid,
                        item.link.as_deref().unwrap_or(""),
                        item.hash
                    ));
                }
            }
        }
    }
    text
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
                    make_dirs(&tree, upper, &dest, owner)?;
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
