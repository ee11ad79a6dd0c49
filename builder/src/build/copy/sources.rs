//! COPY and ADD sources: what each names (build context matches, another stage's or an
//! image's files, heredocs, downloaded URLs), with `--exclude` and `--parents` applied,
//! and their part of the cache key (names, modes, owners, types, link targets, bytes; no
//! mtimes).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use rayon::prelude::*;

use super::join;
use crate::build::archive;
use crate::build::step::StageRun;
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
                || (crate::build::is_url(pattern)
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
        if crate::build::is_url(pattern) {
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
            // a match --exclude names goes whole (`COPY --exclude=*.txt hom* /d/` leaves
            // home.txt out), as do the entries below a match that it names
            if excludes.iter().any(|g| matches_or_parent(g, &rel)) {
                continue;
            }
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

/// Matches in the build context: (matched path, its items). A matched symlink is followed
/// inside the context, as BuildKit follows a COPY source (FollowSymlinks): `COPY link /d`
/// copies what the link points to, named `link`; links below a copied directory stay links.
fn context_matches(run: &StageRun<'_, '_>, clean: &str) -> Result<Vec<(String, Vec<Item>)>> {
    let ctx = &run.cx.context;
    let roots: Vec<String> = if has_glob(clean) {
        match glob(clean) {
            Ok(matcher) => {
                ctx.check_names(|odd| matcher.is_match(odd))?;
                ctx.entries
                    .keys()
                    .filter(|k| !k.is_empty() && matcher.is_match(k.as_str()))
                    .cloned()
                    .collect()
            }
            Err(_) => Vec::new(),
        }
    } else if ctx.entries.contains_key(clean) {
        vec![clean.to_string()]
    } else {
        // through a symlinked directory of the context (`linkdir/x.js`, linkdir -> src/app),
        // as BuildKit resolves it; the last name is followed below, if it is a link
        let (parent, last) = clean.rsplit_once('/').unwrap_or(("", clean));
        match ctx.resolve(parent) {
            Some(parent) if ctx.entries.contains_key(&join(&parent, last)) => {
                vec![join(&parent, last)]
            }
            _ => Vec::new(),
        }
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
        ctx.check_names(|odd| context::at_or_below(&source, odd))?;
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
    let roots: Vec<String> = if has_glob(clean) {
        // component by component: a glob may stand anywhere (`/out/*/lib/*.so`)
        let mut found = vec![String::new()];
        for part in clean.split('/').filter(|part| !part.is_empty()) {
            let mut next = Vec::new();
            for dir in &found {
                let dir = tree.resolve(dir)?;
                if has_glob(part) {
                    let Ok(matcher) = glob(part) else {
                        return Ok(Vec::new());
                    };
                    next.extend(
                        tree.read_dir(&dir)
                            .keys()
                            .filter(|name| matcher.is_match(name.as_str()))
                            .map(|name| join(&dir, name)),
                    );
                } else if tree.lookup(&join(&dir, part)).is_some() {
                    next.push(join(&dir, part));
                }
            }
            next.sort();
            next.dedup();
            found = next;
        }
        // a final name without a glob is followed if it is a symlink, as below
        if has_glob(last) {
            found
        } else {
            let mut resolved = Vec::with_capacity(found.len());
            for path in &found {
                resolved.push(tree.resolve(path)?);
            }
            resolved
        }
    } else {
        let parent = tree.resolve(parent)?;
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
