//! A read-only merged view of an image's unpacked layers (top first), in userspace:
//! what COPY --from reads, where COPY finds the metadata of parent directories it must
//! recreate in the upper, and where `--chown=name` looks up /etc/passwd and /etc/group.
//! Overlay on-disk rules: a char device 0/0 hides the name below it, a directory with
//! `trusted.overlay.opaque=y` hides the directories below it.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use strata_store::layer::{is_opaque, is_whiteout};

/// Symlinks followed in one path before giving up, as Linux does (MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Resolves the symlinks in `rel` (clean, relative) inside a root where `link` gives the
/// target of a path that is a symlink: an absolute target starts again at the root and
/// `..` stops there, so a link never leads out. Returns the clean path it leads to, or
/// None after [`MAX_HOPS`] links (ELOOP). Image views and the build context share it.
pub fn resolve_links(rel: &str, link: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = rel
        .split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => resolved.push(part),
        }
        if let Some(target) = link(&resolved.join("/")) {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            resolved.pop();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .rev()
                    .map(String::from),
            );
        }
    }
    Some(resolved.join("/"))
}

/// A path that leads through more than [`MAX_HOPS`] symlinks: a loop (ELOOP).
#[derive(Debug, thiserror::Error)]
#[error("/{0}: too many levels of symbolic links")]
pub struct SymlinkLoop(pub String);

/// The merged view of `lowers` (top first).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub lowers: Vec<PathBuf>,
}

impl Tree {
    pub fn new(lowers: Vec<PathBuf>) -> Tree {
        Tree { lowers }
    }

    /// The real path and metadata of `rel` (clean, relative; "" = root) in the merged
    /// view, without following a final symlink.
    pub fn lookup(&self, rel: &str) -> Option<(PathBuf, fs::Metadata)> {
        for layer in self.layers_for(rel) {
            let path = if rel.is_empty() {
                layer.clone()
            } else {
                layer.join(rel)
            };
            if let Ok(meta) = fs::symlink_metadata(&path) {
                if is_whiteout(&meta) {
                    return None;
                }
                return Some((path, meta));
            }
        }
        None
    }

    /// The layers that can show `rel`: stops below a layer where a parent directory is
    /// opaque, a whiteout, or not a directory.
    fn layers_for(&self, rel: &str) -> Vec<&PathBuf> {
        let parents: Vec<&str> = {
            let mut out = Vec::new();
            let mut end = rel.len();
            while let Some(slash) = rel[..end].rfind('/') {
                out.push(&rel[..slash]);
                end = slash;
            }
            out.reverse();
            out
        };
        let mut out = Vec::new();
        'layers: for layer in &self.lowers {
            out.push(layer);
            for parent in &parents {
                let path = layer.join(parent);
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {
                        if is_opaque(&path) {
                            break 'layers;
                        }
                    }
                    Ok(_) => break 'layers,
                    Err(_) => {}
                }
            }
        }
        out
    }

    /// Names in directory `rel` of the merged view, each with its real path and metadata.
    pub fn read_dir(&self, rel: &str) -> BTreeMap<String, (PathBuf, fs::Metadata)> {
        let mut seen: BTreeMap<String, Option<(PathBuf, fs::Metadata)>> = BTreeMap::new();
        for layer in self.layers_for(rel) {
            let dir = if rel.is_empty() {
                layer.clone()
            } else {
                layer.join(rel)
            };
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            if !meta.is_dir() {
                break;
            }
            if let Ok(listing) = fs::read_dir(&dir) {
                for item in listing.flatten() {
                    let Some(name) = item.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if seen.contains_key(&name) {
                        continue;
                    }
                    let path = item.path();
                    match fs::symlink_metadata(&path) {
                        Ok(meta) if is_whiteout(&meta) => {
                            seen.insert(name, None);
                        }
                        Ok(meta) => {
                            seen.insert(name, Some((path, meta)));
                        }
                        Err(_) => {}
                    }
                }
            }
            if is_opaque(&dir) {
                break;
            }
        }
        seen.into_iter()
            .filter_map(|(name, found)| found.map(|f| (name, f)))
            .collect()
    }

    /// Resolves symlinks in `rel` inside the view (a link never leaves the root); returns
    /// the clean path it leads to.
    pub fn resolve(&self, rel: &str) -> Result<String, SymlinkLoop> {
        resolve_links(rel, |path| {
            let (real, meta) = self.lookup(path)?;
            meta.file_type()
                .is_symlink()
                .then(|| fs::read_link(real).ok())
                .flatten()
                .map(|target| target.to_string_lossy().into_owned())
        })
        .ok_or_else(|| SymlinkLoop(rel.to_string()))
    }

    /// Reads a whole file of the view (following symlinks inside it).
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        let (path, meta) = self.lookup(&self.resolve(rel).ok()?)?;
        if meta.is_file() {
            fs::read(path).ok()
        } else {
            None
        }
    }

    /// uid and primary gid of user `name` in /etc/passwd.
    pub fn user(&self, name: &str) -> Option<(u32, u32)> {
        let text = String::from_utf8(self.read("etc/passwd")?).ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 4 && fields[0] == name)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
        })
    }

    /// gid of group `name` in /etc/group.
    pub fn group(&self, name: &str) -> Option<u32> {
        let text = String::from_utf8(self.read("etc/group")?).ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 3 && fields[0] == name).then(|| fields[2].parse().ok())?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layer_wins_and_whiteouts_hide() {
        let top = tempfile::tempdir().unwrap();
        let bottom = tempfile::tempdir().unwrap();
        fs::create_dir(bottom.path().join("etc")).unwrap();
        fs::write(bottom.path().join("etc/a"), "old").unwrap();
        fs::write(
            bottom.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n",
        )
        .unwrap();
        fs::create_dir(top.path().join("etc")).unwrap();
        fs::write(top.path().join("etc/a"), "new").unwrap();
        let tree = Tree::new(vec![top.path().to_path_buf(), bottom.path().to_path_buf()]);
        assert_eq!(tree.read("etc/a").unwrap(), b"new");
        assert_eq!(tree.user("app"), Some((1000, 1001)));
        assert_eq!(
            tree.read_dir("etc").keys().cloned().collect::<Vec<_>>(),
            vec!["a", "passwd"]
        );
    }
}
