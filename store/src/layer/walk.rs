//! The tree walk behind `write_layer`: lstat every path of a directory in overlay on-disk
//! form (in parallel, with rayon), read its xattrs, and return the entries in layer order.
//!
//! Layer order is bytewise by tar path, which puts every parent before its children. A
//! whiteout (char device 0/0) is named `.wh.NAME` here already, and an opaque directory
//! (`trusted.overlay.opaque=y`) is followed by a synthetic `DIR/.wh..wh..opq` entry, so the
//! writer only has to emit the list in order.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, is_layer_xattr, is_whiteout};
use crate::error::{Error, Result};

/// Overlayfs xattrs that make an upper entry depend on lower layers in ways an OCI layer
/// cannot carry (overlayfs.rst, "Redirect dir" and "Metadata only copy up").
const UNEXPRESSIBLE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.redirect", b"trusted.overlay.metacopy"];

/// What kind of tar entry a path becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    Char(u64),
    Block(u64),
    /// An overlay whiteout (char 0/0): an empty `.wh.NAME` entry in the tar.
    Whiteout,
    /// The `.wh..wh..opq` entry that follows an opaque directory.
    OpaqueMarker,
}

/// One entry of the layer, with everything the tar header needs.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// The path inside the tar, without `./` and without a trailing slash.
    pub name: Vec<u8>,
    /// The file on disk (for reading file contents and for error messages).
    pub source: PathBuf,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// Sorted by name; `trusted.overlay.*` and `security.selinux` left out.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Walks `root` (not included itself) and returns its entries in layer order.
pub(crate) fn walk(root: &Path) -> Result<Vec<Node>> {
    let metadata =
        fs::metadata(root).map_err(|e| Error::io("failed to stat layer directory", root, e))?;
    if !metadata.is_dir() {
        return Err(Error::io(
            "failed to write a layer from",
            root,
            io::Error::from(io::ErrorKind::NotADirectory),
        ));
    }
    let mut nodes = walk_dir(root, &[])?;
    nodes.par_sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

fn walk_dir(dir: &Path, prefix: &[u8]) -> Result<Vec<Node>> {
    let read_error = |e| Error::io("failed to read directory", dir, e);
    let mut names: Vec<OsString> = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        names.push(entry.map_err(read_error)?.file_name());
    }
    let nested: Vec<Vec<Node>> = names
        .into_par_iter()
        .map(|name| {
            let source = dir.join(&name);
            let mut rel = prefix.to_vec();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let Some(node) = stat(source, rel)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            if node.kind == Kind::Dir {
                let opaque = lgetxattr(&node.source, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
                let children = walk_dir(&node.source, &node.name)?;
                if opaque {
                    out.push(opaque_marker(&node));
                }
                out.push(node);
                out.extend(children);
            } else {
                out.push(node);
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(nested.into_iter().flatten().collect())
}

/// lstat + readlink + xattrs of one path; `None` for sockets, which a tar cannot hold.
fn stat(source: PathBuf, rel: Vec<u8>) -> Result<Option<Node>> {
    let md = fs::symlink_metadata(&source).map_err(|e| Error::io("failed to stat", &source, e))?;
    let file_type = md.file_type();
    let mut name = rel;
    let kind = if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File
    } else if file_type.is_symlink() {
        let target =
            fs::read_link(&source).map_err(|e| Error::io("failed to read symlink", &source, e))?;
        Kind::Symlink(target.into_os_string().into_vec())
    } else if file_type.is_fifo() {
        Kind::Fifo
    } else if is_whiteout(&md) {
        let base = name.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        name.splice(base..base, WHITEOUT_PREFIX.bytes());
        Kind::Whiteout
    } else if file_type.is_char_device() {
        Kind::Char(md.rdev())
    } else if file_type.is_block_device() {
        Kind::Block(md.rdev())
    } else {
        tracing::warn!(path = %source.display(), "skipping socket: a layer cannot hold it");
        return Ok(None);
    };
    let xattrs = if kind == Kind::Whiteout {
        Vec::new()
    } else {
        xattrs(&source)?
    };
    Ok(Some(Node {
        name,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        size: if file_type.is_file() { md.len() } else { 0 },
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
        xattrs,
        source,
    }))
}

fn opaque_marker(dir: &Node) -> Node {
    let mut name = dir.name.clone();
    name.push(b'/');
    name.extend_from_slice(OPAQUE_MARKER.as_bytes());
    // As docker does: the directory's owner and permissions, no times (they would only
    // make the blob depend on when the directory was last touched).
    Node {
        name,
        source: dir.source.clone(),
        kind: Kind::OpaqueMarker,
        mode: dir.mode & 0o777,
        uid: dir.uid,
        gid: dir.gid,
        mtime: 0,
        size: 0,
        dev: 0,
        ino: 0,
        nlink: 1,
        xattrs: Vec::new(),
    }
}

/// The xattrs of `path` that belong in a layer (not following a symlink), sorted by name.
fn xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("failed to list xattrs of", path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        let name = name.as_bytes();
        if UNEXPRESSIBLE_XATTRS.contains(&name) {
            // A renamed-in-place directory or a metadata-only copy-up points into the
            // lower layers; a layer tar has no way to say so, and would silently lose data.
            return Err(Error::io(
                "cannot write a layer from an overlay upper with redirect_dir or metacopy entries \
                 (mount with redirect_dir=off,metacopy=off):",
                path,
                io::Error::other(format!("has xattr {}", String::from_utf8_lossy(name))),
            ));
        }
        if !is_layer_xattr(name) {
            continue;
        }
        if let Some(value) = lgetxattr(path, std::ffi::OsStr::from_bytes(name))? {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One xattr of `path` (not following a symlink); `None` when it is absent.
fn lgetxattr(path: &Path, name: impl AsRef<std::ffi::OsStr>) -> Result<Option<Vec<u8>>> {
    match xattr::get(path, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(None),
        got => got.map_err(|e| Error::io("failed to read xattr of", path, e)),
    }
}
