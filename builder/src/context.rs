//! The build context: the directory COPY and ADD read from, minus what `.dockerignore`
//! (or `<Buildfile>.dockerignore` beside the Buildfile, which wins) excludes, by Docker's
//! rules: patterns are cleaned paths matched with `/`-respecting globs (`**` spans
//! directories), a pattern that matches a directory excludes everything below it, lines
//! starting with `!` re-include, and the last matching line decides.
//!
//! The context is scanned once (metadata only); file contents are hashed lazily and in
//! parallel, only for the files a step uses. Nothing here looks at mtimes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use globset::{Glob, GlobBuilder, GlobMatcher};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// One `.dockerignore` line.
#[derive(Debug)]
struct Rule {
    matcher: GlobMatcher,
    exception: bool,
}

/// The ignore rules of a context.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<Rule>,
    /// The file they came from, if any.
    pub file: Option<PathBuf>,
}

/// Builds a glob with Docker's separator rule: `*` and `?` never cross `/`.
pub(crate) fn glob(pattern: &str) -> std::result::Result<GlobMatcher, globset::Error> {
    let glob: Glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()?;
    Ok(glob.compile_matcher())
}

/// Cleans a pattern or path like Go's `filepath.Clean`, relative to the context root.
pub(crate) fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

impl Ignore {
    /// Reads `<buildfile>.dockerignore` if it exists, else `<context>/.dockerignore`.
    pub fn load(context: &Path, buildfile: &Path) -> Result<Ignore> {
        let mut beside = buildfile.as_os_str().to_owned();
        beside.push(".dockerignore");
        for candidate in [PathBuf::from(beside), context.join(".dockerignore")] {
            match fs::read_to_string(&candidate) {
                Ok(text) => return Ignore::parse(&text, &candidate),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("failed to read", &candidate, e)),
            }
        }
        Ok(Ignore::default())
    }

    pub fn parse(text: &str, file: &Path) -> Result<Ignore> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue;
            }
            let matcher = glob(&cleaned).map_err(|e| Error::Ignore {
                file: file.to_path_buf(),
                pattern: line.to_string(),
                message: e.kind().to_string(),
            })?;
            rules.push(Rule { matcher, exception });
        }
        Ok(Ignore {
            rules,
            file: Some(file.to_path_buf()),
        })
    }

    /// Whether `rel` (a clean relative path) is excluded: the last rule that matches it or
    /// one of its parent directories decides.
    pub fn excluded(&self, rel: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if excluded != rule.exception {
                // this rule cannot change the outcome
                continue;
            }
            if matches_or_parent(&rule.matcher, rel) {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }
}

/// Whether `rel` or one of its parent directories matches (an excluded directory
/// excludes everything below it).
pub(crate) fn matches_or_parent(matcher: &GlobMatcher, rel: &str) -> bool {
    if matcher.is_match(rel) {
        return true;
    }
    let mut end = rel.len();
    while let Some(slash) = rel[..end].rfind('/') {
        if matcher.is_match(&rel[..slash]) {
            return true;
        }
        end = slash;
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Device,
}

/// One file of the context (metadata; the content hash is computed on demand).
#[derive(Debug)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub link: Option<String>,
    hash: OnceLock<std::result::Result<String, String>>,
}

/// The scanned build context.
#[derive(Debug)]
pub struct Context {
    pub root: PathBuf,
    pub ignore: Ignore,
    /// Clean relative path ("a/b") -> entry; "" is the root.
    pub entries: BTreeMap<String, Entry>,
    /// Entries the ignore file keeps whose names are not UTF-8 (shown lossily), left out of
    /// `entries`: an error only for the steps that would copy them.
    odd_names: Vec<String>,
}

impl Context {
    /// Scans `root` (metadata only), leaving out what `ignore` excludes.
    pub fn scan(root: &Path, ignore: Ignore) -> Result<Context> {
        let meta = fs::symlink_metadata(root)
            .map_err(|e| Error::io("failed to read build context", root, e))?;
        if !meta.is_dir() {
            return Err(Error::Other(format!(
                "build context {} is not a directory",
                root.display()
            )));
        }
        let mut entries = BTreeMap::new();
        let mut odd_names = Vec::new();
        entries.insert(String::new(), entry_of(root, &meta)?);
        // With no `!` rule, nothing below an excluded directory can come back.
        let prune = !ignore.has_exceptions();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let listing = fs::read_dir(&dir).map_err(|e| Error::io("failed to list", &dir, e))?;
            for item in listing {
                let item = item.map_err(|e| Error::io("failed to list", &dir, e))?;
                let name = item.file_name();
                let lossy = name.to_string_lossy();
                let child_rel = if rel.is_empty() {
                    lossy.to_string()
                } else {
                    format!("{rel}/{lossy}")
                };
                let excluded = ignore.excluded(&child_rel);
                if name.to_str().is_none() {
                    if !excluded {
                        odd_names.push(child_rel);
                    }
                    continue;
                }
                let path = item.path();
                let meta = fs::symlink_metadata(&path)
                    .map_err(|e| Error::io("failed to stat", &path, e))?;
                if meta.is_dir() && !(excluded && prune) {
                    stack.push((path.clone(), child_rel.clone()));
                }
                if !excluded {
                    entries.insert(child_rel, entry_of(&path, &meta)?);
                }
            }
        }
        // A directory excluded itself but holding re-included files is still needed.
        if !prune {
            let missing: Vec<String> = entries
                .keys()
                .flat_map(|rel| {
                    let mut parents = Vec::new();
                    let mut end = rel.len();
                    while let Some(slash) = rel[..end].rfind('/') {
                        parents.push(rel[..slash].to_string());
                        end = slash;
                    }
                    parents
                })
                .filter(|p| !entries.contains_key(p))
                .collect();
            for rel in missing {
                let path = root.join(&rel);
                let meta = fs::symlink_metadata(&path)
                    .map_err(|e| Error::io("failed to stat", &path, e))?;
                entries.insert(rel, entry_of(&path, &meta)?);
            }
        }
        Ok(Context {
            root: root.to_path_buf(),
            ignore,
            entries,
            odd_names,
        })
    }

    /// Fails if a path `takes` (see [`at_or_below`]) has a name that is not UTF-8: such a
    /// file cannot be copied, and is not left out without a word.
    pub fn check_names(&self, takes: impl Fn(&str) -> bool) -> Result<()> {
        match self.odd_names.iter().find(|odd| takes(odd)) {
            Some(odd) => Err(Error::Other(format!(
                "{}: file name is not UTF-8 (the build context takes UTF-8 names; \
                 .dockerignore can leave it out)",
                self.root.join(odd).display()
            ))),
            None => Ok(()),
        }
    }

    /// Where `rel` (clean) leads with its symlinks followed inside the context: an absolute
    /// link starts again at the context root, `..` stops there. None for a loop.
    pub fn resolve(&self, rel: &str) -> Option<String> {
        crate::tree::resolve_links(rel, |path| match self.entries.get(path) {
            Some(Entry {
                kind: Kind::Symlink,
                link: Some(target),
                ..
            }) => Some(target.clone()),
            _ => None,
        })
    }

    /// What a bind mount of `rel` sees, as text for a cache key: the key line of every
    /// entry at or below it.
    pub fn subtree_key(&self, rel: &str) -> Result<String> {
        self.check_names(|odd| at_or_below(rel, odd))?;
        let mut text = String::new();
        for (key, entry) in self.subtree(rel) {
            text.push_str(&entry.key_line(key, &self.root.join(key))?);
            text.push('\n');
        }
        Ok(text)
    }

    /// Fills the empty directory `mask` so that a union of `mask` over the context
    /// directory shows what COPY sees: a whiteout for each top-most entry the ignore file
    /// leaves out, and the directories above them with the context's own metadata.
    pub fn write_mask(&self, mask: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let copy_meta = |from: &Path, to: &Path| -> Result<()> {
            let meta =
                fs::symlink_metadata(from).map_err(|e| Error::io("failed to stat", from, e))?;
            std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| Error::io("failed to chown", to, e))?;
            fs::set_permissions(to, meta.permissions())
                .map_err(|e| Error::io("failed to chmod", to, e))
        };
        copy_meta(&self.root, mask)?;
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = self.root.join(&rel);
            for item in fs::read_dir(&dir).map_err(|e| Error::io("failed to list", &dir, e))? {
                let item = item.map_err(|e| Error::io("failed to list", &dir, e))?;
                let real_name = item.file_name();
                let name = real_name.to_string_lossy();
                let child = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                match self.entries.get(&child) {
                    Some(entry) if entry.kind == Kind::Dir => {
                        // the directory exists in the mask only if something below is hidden
                        stack.push(child);
                    }
                    Some(_) => {}
                    None => {
                        // (by its own name: one that is not UTF-8 is keyed lossily)
                        let path = mask.join(&rel).join(&real_name);
                        let mut made = PathBuf::from(mask);
                        for part in Path::new(&rel).components() {
                            made.push(part);
                            if !made.exists() {
                                fs::create_dir(&made)
                                    .map_err(|e| Error::io("failed to create", &made, e))?;
                                copy_meta(
                                    &self.root.join(made.strip_prefix(mask).unwrap_or(&made)),
                                    &made,
                                )?;
                            }
                        }
                        rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &path,
                            rustix::fs::FileType::CharacterDevice,
                            rustix::fs::Mode::empty(),
                            0,
                        )
                        .map_err(|e| Error::io("failed to create a whiteout", &path, e.into()))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries at or below `rel` (clean; "" = everything), parents before children.
    pub fn subtree<'a>(
        &'a self,
        rel: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        // `rel` itself, then the keys starting with `rel/`: not one range from `rel` on,
        // since siblings such as `rel.py` or `rel-x` sort between (b'.' < b'/').
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        let own = self.entries.get_key_value(rel).filter(|_| !rel.is_empty());
        own.into_iter().chain(
            self.entries
                .range(prefix.clone()..)
                .take_while(move |(key, _)| key.starts_with(&prefix)),
        )
    }

    /// Content hashes of every regular file among `paths`, computed in parallel.
    pub fn hash_files(&self, paths: &[&String]) -> Result<()> {
        paths.par_iter().try_for_each(|rel| {
            let entry = &self.entries[*rel];
            if entry.kind == Kind::File {
                entry
                    .content_hash(&self.root.join(rel.as_str()))
                    .map(|_| ())
            } else {
                Ok(())
            }
        })
    }
}

/// Whether the clean relative `path` is `rel` or below it ("" = the root: everything).
pub fn at_or_below(rel: &str, path: &str) -> bool {
    rel.is_empty()
        || path
            .strip_prefix(rel)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Entry {
    /// sha256 of the file's bytes (hex), computed once.
    pub fn content_hash(&self, path: &Path) -> Result<String> {
        self.hash
            .get_or_init(|| hash_file(path).map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| {
                Error::Other(format!("failed to hash {}: {message}", path.display()))
            })
    }

    /// The line this entry contributes to a cache key: everything but the mtime.
    pub fn key_line(&self, rel: &str, path: &Path) -> Result<String> {
        let content = if self.kind == Kind::File {
            self.content_hash(path)?
        } else {
            String::new()
        };
        Ok(format!(
            "{rel}\0{:?}\0{:o}\0{}\0{}\0{}\0{content}\n",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.link.as_deref().unwrap_or("")
        ))
    }
}

pub(crate) fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub(crate) fn kind_of(meta: &fs::Metadata) -> Kind {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_fifo() {
        Kind::Fifo
    } else if file_type.is_socket() {
        Kind::Socket
    } else if file_type.is_block_device() || file_type.is_char_device() {
        Kind::Device
    } else {
        Kind::File
    }
}

fn entry_of(path: &Path, meta: &fs::Metadata) -> Result<Entry> {
    let kind = kind_of(meta);
    let link = if kind == Kind::Symlink {
        let target = fs::read_link(path).map_err(|e| Error::io("failed to read link", path, e))?;
        Some(target.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(Entry {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.len(),
        link,
        hash: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Ignore {
        Ignore::parse(text, Path::new(".dockerignore")).unwrap()
    }

    #[test]
    fn dockerignore_rules_match_docker() {
        let ignore =
            rules("# comment\n*.log\n!keep.log\nbuild/\n**/*.tmp\n/abs\ndocs\n!docs/README.md\n");
        assert!(ignore.excluded("a.log"));
        assert!(!ignore.excluded("keep.log"));
        assert!(!ignore.excluded("sub/a.log"), "* does not cross /");
        assert!(
            ignore.excluded("build/x/y"),
            "a directory excludes its content"
        );
        assert!(ignore.excluded("deep/er/x.tmp") && ignore.excluded("x.tmp"));
        assert!(ignore.excluded("abs"));
        assert!(ignore.excluded("docs/other.md"));
        assert!(!ignore.excluded("docs/README.md"));
    }

    #[test]
    fn a_subtree_is_not_cut_short_by_a_sibling_that_sorts_inside_it() {
        // "app.py" and "app-x" sort between "app" and "app/main.py" (b'.', b'-' < b'/')
        let dir = tempfile::tempdir().unwrap();
        for d in ["app/sub", "app-x"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in ["app/main.py", "app/sub/z", "app.py", "app-x/y", "apq"] {
            fs::write(dir.path().join(f), f).unwrap();
        }
        let context = Context::scan(dir.path(), Ignore::default()).unwrap();
        let keys = |rel| -> Vec<&str> { context.subtree(rel).map(|(k, _)| k.as_str()).collect() };
        assert_eq!(keys("app"), ["app", "app/main.py", "app/sub", "app/sub/z"]);
        assert_eq!(keys("app/sub"), ["app/sub", "app/sub/z"]);
        assert_eq!(keys("app.py"), ["app.py"]);
        assert_eq!(keys("").len(), 9, "{:?}", keys(""));
        assert!(keys("nope").is_empty());
    }

    #[test]
    fn clean_follows_go() {
        assert_eq!(clean("/a/./b/../c/"), "a/c");
        assert_eq!(clean("./"), "");
    }
}
