//! Build contexts that are not a local directory, as `docker build` takes them:
//! - a git repository: `https://host/repo.git`, `git://`, `ssh://`, `git@host:repo`, or
//!   `github.com/owner/repo`, with an optional `#REF:SUBDIR` (branch, tag or commit; the
//!   context is SUBDIR of the checkout);
//! - an http(s) URL of a tar archive (plain, gzip, bzip2, xz or zstd), or of a lone
//!   Buildfile (then the context is empty);
//! - `-`: the same read from stdin.
//!
//! Each is fetched into a fresh directory under the store's tmp/, removed again when the
//! [`Fetched`] is dropped.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use strata_store::Store;

use crate::build::archive;
use crate::error::{Error, Result};

/// Where a build context comes from, by the shape of the argument.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Git {
        url: String,
        /// Branch, tag or commit; the remote's HEAD when None.
        reference: Option<String>,
        subdir: Option<String>,
    },
    /// An http(s) URL of a tar archive or a Buildfile.
    Url(String),
    Stdin,
}

impl Source {
    /// Tells the kinds apart as docker does: an existing directory is one (even if named
    /// like `github.com/o/r`); git by scheme or prefix, or an http(s) URL whose path ends
    /// in `.git`; any other http(s) URL is an archive or Buildfile.
    pub fn parse(arg: &str) -> Source {
        if arg == "-" {
            return Source::Stdin;
        }
        if Path::new(arg).is_dir() {
            return Source::Dir(PathBuf::from(arg));
        }
        let http = arg.starts_with("http://") || arg.starts_with("https://");
        let (base, fragment) = arg.split_once('#').unwrap_or((arg, ""));
        let git = ["git://", "git@", "ssh://", "github.com/"]
            .iter()
            .any(|prefix| arg.starts_with(prefix))
            || (http && base.ends_with(".git"));
        if git {
            let url = match base.strip_prefix("github.com/") {
                Some(rest) => format!("https://github.com/{rest}"),
                None => base.to_string(),
            };
            let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
            let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
            return Source::Git {
                url,
                reference: some(reference),
                subdir: some(subdir),
            };
        }
        if http {
            return Source::Url(arg.to_string());
        }
        Source::Dir(PathBuf::from(arg))
    }
}

/// A context fetched into the store's tmp/, removed on drop.
#[derive(Debug)]
pub struct Fetched {
    root: PathBuf,
    /// The context directory (inside `root`).
    pub context: PathBuf,
    /// The Buildfile, when the source was one rather than an archive.
    pub buildfile: Option<PathBuf>,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Fetches a remote `source` (not `Source::Dir`); `stdin` is read for `Source::Stdin`.
pub fn fetch(store: &Store, source: &Source, stdin: impl Read) -> Result<Fetched> {
    let root = store.tmp_dir_create("context")?;
    let mut fetched = Fetched {
        context: root.join("context"),
        root,
        buildfile: None,
    };
    match source {
        Source::Dir(dir) => {
            return Err(Error::Other(format!(
                "{} is a local directory, not a remote context",
                dir.display()
            )));
        }
        Source::Git {
            url,
            reference,
            subdir,
        } => {
            let checkout = fetched.root.join("git");
            git_checkout(url, reference.as_deref(), &checkout)?;
            let shown = redacted(url);
            fetched.context = match subdir {
                None => checkout,
                Some(subdir) => {
                    let dir = inside(&checkout, subdir).ok_or_else(|| {
                        Error::Other(format!("{shown}: bad subdirectory {subdir:?}"))
                    })?;
                    if !dir.is_dir() {
                        return Err(Error::Other(format!(
                            "{shown}: no directory {subdir:?} in the checkout"
                        )));
                    }
                    // Symlinks in the repository must not lead the context out of it.
                    let real = |p: &Path| {
                        fs::canonicalize(p).map_err(|e| Error::io("failed to resolve", p, e))
                    };
                    let dir = real(&dir)?;
                    if !dir.starts_with(real(&checkout)?) {
                        return Err(Error::Other(format!(
                            "{shown}: subdirectory {subdir:?} leads out of the repository"
                        )));
                    }
                    dir
                }
            };
        }
        Source::Url(url) => {
            let download = archive::fetch(store, url, None).map_err(|e| {
                let shown = redacted(url);
                let e = e.to_string().replace(url.as_str(), &shown);
                Error::Other(format!("build context {shown}: {e}"))
            })?;
            let download = download.path;
            let file = fetched.root.join("download");
            fs::rename(&download, &file).map_err(|e| {
                let _ = fs::remove_file(&download);
                Error::io("failed to move", &download, e)
            })?;
            unpack_or_buildfile(store, &mut fetched, file, url)?;
        }
        Source::Stdin => {
            let file = fetched.root.join("stdin");
            let mut out =
                fs::File::create(&file).map_err(|e| Error::io("failed to create", &file, e))?;
            io::copy(&mut { stdin }, &mut out)
                .map_err(|e| Error::io("failed to read", "stdin", e))?;
            unpack_or_buildfile(store, &mut fetched, file, "stdin")?;
        }
    }
    Ok(fetched)
}

/// `-f -`: a Buildfile read from `stdin`, for a context given apart (`Fetched::buildfile`).
pub fn fetch_buildfile(store: &Store, stdin: impl Read) -> Result<Fetched> {
    let root = store.tmp_dir_create("buildfile")?;
    let file = root.join("stdin");
    let fetched = Fetched {
        context: root.clone(),
        buildfile: Some(file.clone()),
        root,
    };
    let mut out = fs::File::create(&file).map_err(|e| Error::io("failed to create", &file, e))?;
    io::copy(&mut { stdin }, &mut out).map_err(|e| Error::io("failed to read", "stdin", e))?;
    Ok(fetched)
}

/// A tar archive becomes the context; anything else is the Buildfile of an empty context.
fn unpack_or_buildfile(
    store: &Store,
    fetched: &mut Fetched,
    file: PathBuf,
    from: &str,
) -> Result<()> {
    fs::create_dir(&fetched.context)
        .map_err(|e| Error::io("failed to create", &fetched.context, e))?;
    if archive::detect(&file).is_some() {
        archive::extract(
            store,
            &file,
            &crate::tree::Tree::default(),
            &fetched.context,
            "",
        )
        .map_err(|e| Error::Other(format!("build context from {from}: {e}")))?;
        let _ = fs::remove_file(&file);
    } else {
        fetched.buildfile = Some(file);
    }
    Ok(())
}

/// `dir/rel` when `rel` stays inside `dir` (no `..`, not absolute).
fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| dir.join(rel))
}

/// A shallow checkout of `reference` (the remote HEAD when None) with its submodules,
/// without `.git`, as BuildKit gives it (so the history is not part of the context).
fn git_checkout(url: &str, reference: Option<&str>, dir: &Path) -> Result<()> {
    let git = |args: &[&str]| run_git(url, dir, args);
    fs::create_dir(dir).map_err(|e| Error::io("failed to create", dir, e))?;
    git(&["init", "-q"])?;
    git(&["remote", "add", "--", "origin", url])?;
    let wanted = reference.unwrap_or("HEAD");
    if wanted.starts_with('-') {
        // git would take it for an option.
        let shown = redacted(url);
        return Err(Error::Other(format!(
            "{shown}: bad git reference {wanted:?}"
        )));
    }
    let shallow = git(&[
        "fetch",
        "-q",
        "--depth",
        "1",
        "--no-tags",
        "--",
        "origin",
        wanted,
    ]);
    if let Err(shallow) = shallow {
        // A commit the server will not hand out by itself: fetch everything, then pick it.
        let is_commit = wanted.len() >= 7 && wanted.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_commit {
            return Err(shallow);
        }
        git(&["fetch", "-q", "--", "origin"])?;
        git(&["checkout", "-q", wanted])?;
    } else {
        git(&["checkout", "-q", "FETCH_HEAD"])?;
    }
    git(&[
        "submodule",
        "update",
        "-q",
        "--init",
        "--recursive",
        "--depth",
        "1",
    ])?;
    remove_dot_git(dir)
}

/// Removes `.git` (the repository's directory, and each submodule's `.git` file) from the
/// checkout; git never tracks an entry of that name, so nothing of the tree goes.
fn remove_dot_git(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("failed to list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("failed to list", dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("failed to stat", &path, e))?;
        if entry.file_name() == ".git" {
            let removed = if kind.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io("failed to remove", &path, e))?;
        } else if kind.is_dir() {
            remove_dot_git(&path)?;
        }
    }
    Ok(())
}

/// `url` as messages show it: a password or token in it masked (`https://u:***@host/r`,
/// `https://***@host/r`).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..end].rsplit_once('@') else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{user}@{host}{}", &rest[end..])
}

fn run_git(url: &str, dir: &Path, args: &[&str]) -> Result<()> {
    let shown = redacted(url);
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // Never wait for a password on the terminal: fail instead.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Other(format!(
                "build context {shown}: cannot run git ({e}): apt-get install -y git"
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).replace(url, &shown);
    Err(Error::Other(format!(
        "build context {shown}: git {} failed: {}",
        args.join(" "),
        stderr.trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(url: &str, reference: Option<&str>, subdir: Option<&str>) -> Source {
        Source::Git {
            url: url.into(),
            reference: reference.map(Into::into),
            subdir: subdir.map(Into::into),
        }
    }

    #[test]
    fn sources_are_told_apart_as_docker_does() {
        assert_eq!(Source::parse("-"), Source::Stdin);
        assert_eq!(Source::parse("."), Source::Dir(".".into()));
        assert_eq!(Source::parse("dir/sub"), Source::Dir("dir/sub".into()));
        assert_eq!(
            Source::parse("https://example.com/r.git"),
            git("https://example.com/r.git", None, None)
        );
        assert_eq!(
            Source::parse("https://example.com/r.git#v1.2:app/web"),
            git("https://example.com/r.git", Some("v1.2"), Some("app/web"))
        );
        assert_eq!(
            Source::parse("git://127.0.0.1:9418/r#:sub"),
            git("git://127.0.0.1:9418/r", None, Some("sub"))
        );
        assert_eq!(
            Source::parse("git@example.com:o/r.git#main"),
            git("git@example.com:o/r.git", Some("main"), None)
        );
        assert_eq!(
            Source::parse("github.com/o/r#abc123"),
            git("https://github.com/o/r", Some("abc123"), None)
        );
        assert_eq!(
            Source::parse("https://example.com/ctx.tar.gz"),
            Source::Url("https://example.com/ctx.tar.gz".into())
        );
    }

    #[test]
    fn messages_mask_passwords_and_tokens_in_urls() {
        for (url, shown) in [
            (
                "https://u:secret@h.example/r.git#main",
                "https://u:***@h.example/r.git#main",
            ),
            (
                "https://ghp_token@github.com/o/r.git",
                "https://***@github.com/o/r.git",
            ),
            ("https://h.example/a@b/r.git", "https://h.example/a@b/r.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            (
                "http://127.0.0.1:8000/ctx.tgz",
                "http://127.0.0.1:8000/ctx.tgz",
            ),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }

    #[test]
    fn subdirectories_stay_inside_the_checkout() {
        let dir = Path::new("/c");
        assert_eq!(inside(dir, "a/b"), Some(PathBuf::from("/c/a/b")));
        assert_eq!(inside(dir, "./a"), Some(PathBuf::from("/c/./a")));
        assert_eq!(inside(dir, "../x"), None);
        assert_eq!(inside(dir, "a/../../x"), None);
        assert_eq!(inside(dir, "/etc"), None);
    }
}
