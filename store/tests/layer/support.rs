//! Helpers for the layer tests: a tree with every file type and metadata a layer carries,
//! a tree-walk summary to compare two trees, a raw tar builder for hostile archives, and a
//! tar lister.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use sha2::{Digest as _, Sha256};
use strata_store::layer::{WriteOptions, write_layer};

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the layer tests need root (devices, chown, trusted.* xattrs): run `sudo cargo test -p strata-store --test layer`"
    );
}

pub fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------- building trees

enum Item {
    Dir(&'static str, u32),
    File(&'static str, Vec<u8>, u32),
    Symlink(&'static str, String),
    HardLinks(&'static [&'static str], usize),
    Node(&'static str, FileType, u32, u64),
}

fn items(overlay: bool) -> Vec<Item> {
    use Item::*;
    let long_dir: &'static str = Box::leak(format!("long/{}", "d".repeat(110)).into_boxed_str());
    let long_file: &'static str =
        Box::leak(format!("{long_dir}/{}", "f".repeat(120)).into_boxed_str());
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut items = vec![
        Dir("files", 0o755),
        Dir("links", 0o750),
        Dir("special", 0o755),
        Dir("perm", 0o755),
        Dir("perm/sticky", 0o1777),
        Dir("perm/setgid", 0o2755),
        Dir("perm/closed", 0o700),
        Dir("long", 0o755),
        Dir(long_dir, 0o755),
        File("files/empty", Vec::new(), 0o644),
        File("files/one", b"1".to_vec(), 0o644),
        File("files/block", vec![b'b'; 512], 0o644),
        File("files/block1", vec![b'c'; 513], 0o600),
        File("files/big", big, 0o644),
        File("files/xattrs", b"colored".to_vec(), 0o644),
        File("files/owned", b"owned".to_vec(), 0o640),
        File("files/bigid", b"big ids".to_vec(), 0o644),
        File("perm/setuid", b"#!/bin/sh\n".to_vec(), 0o4755),
        File("perm/setgid-file", b"x".to_vec(), 0o2711),
        File("perm/none", b"x".to_vec(), 0o000),
        File(long_file, b"long name".to_vec(), 0o644),
        HardLinks(&["links/a", "links/b", "links/c"], 70_000),
        Symlink("links/rel", "a".to_string()),
        Symlink("links/abs", "/etc/passwd".to_string()),
        Symlink("links/dangling", "nowhere".to_string()),
        Symlink("links/longtarget", format!("{}/target", "t".repeat(150))),
        Node("special/fifo", FileType::Fifo, 0o640, 0),
        Node(
            "special/null",
            FileType::CharacterDevice,
            0o666,
            rustix::fs::makedev(1, 3),
        ),
        Node(
            "special/loop",
            FileType::BlockDevice,
            0o660,
            rustix::fs::makedev(7, 200),
        ),
    ];
    if overlay {
        items.push(Dir("opaque", 0o755));
        items.push(File("opaque/inner", b"inner".to_vec(), 0o644));
        items.push(Node("files/deleted", FileType::CharacterDevice, 0o000, 0));
    }
    items
}

/// Every file type and metadata a layer carries, overlay whiteouts and an opaque dir included.
pub fn rich_tree(root: &Path) {
    build(root, false, true);
}

/// `rich_tree` made in the opposite order (other inode numbers, other first hard link).
pub fn rich_tree_reversed(root: &Path) {
    build(root, true, true);
}

/// `rich_tree` without overlay whiteouts and opaque dirs (for exchange with GNU tar).
pub fn plain_tree(root: &Path) {
    build(root, false, false);
}

fn build(root: &Path, reversed: bool, overlay: bool) {
    fs::create_dir_all(root).unwrap();
    let mut items = items(overlay);
    let non_utf8 = root.join("files").join(OsStr::from_bytes(b"caf\xe9"));
    // Directories first (parents before children), then everything else in either order.
    let (dirs, mut rest): (Vec<Item>, Vec<Item>) =
        items.drain(..).partition(|i| matches!(i, Item::Dir(..)));
    for item in &dirs {
        if let Item::Dir(path, _) = item {
            fs::create_dir_all(root.join(path)).unwrap();
        }
    }
    if reversed {
        rest.reverse();
    }
    for item in &rest {
        match item {
            Item::File(path, data, _) => fs::write(root.join(path), data).unwrap(),
            Item::Symlink(path, target) => {
                std::os::unix::fs::symlink(target, root.join(path)).unwrap()
            }
            Item::HardLinks(paths, size) => {
                let mut order: Vec<&str> = paths.to_vec();
                if reversed {
                    order.reverse();
                }
                fs::write(root.join(order[0]), vec![b'h'; *size]).unwrap();
                for other in &order[1..] {
                    fs::hard_link(root.join(order[0]), root.join(other)).unwrap();
                }
            }
            Item::Node(path, file_type, _, dev) => mknod(&root.join(path), *file_type, 0, *dev),
            Item::Dir(..) => {}
        }
    }
    fs::write(&non_utf8, "latin-1 name").unwrap();

    // Metadata after content, times last (directories after their children).
    chown(&root.join("files/owned"), 1234, 5678);
    chown(&root.join("files/bigid"), 3_000_000, 4_000_000);
    chown(&root.join("perm/closed"), 1000, 1000);
    chown(&root.join("links/dangling"), 42, 43);
    set_xattr(&root.join("files/xattrs"), "user.color", b"blue");
    set_xattr(
        &root.join("links/b"),
        "user.linked",
        b"shared by a, b and c",
    );
    set_xattr(
        &root.join("files/xattrs"),
        "trusted.binary",
        b"\x00\x01\xff",
    );
    set_xattr(&root.join("perm/setgid"), "user.dir", b"yes");
    set_xattr(&root.join("links/rel"), "trusted.on-symlink", b"1");
    if overlay {
        set_xattr(&root.join("opaque"), "trusted.overlay.opaque", b"y");
    }
    for item in dirs.iter().chain(&rest) {
        match item {
            Item::Dir(path, mode) | Item::File(path, _, mode) | Item::Node(path, _, mode, _) => {
                fs::set_permissions(root.join(path), fs::Permissions::from_mode(*mode)).unwrap()
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort();
    for (i, path) in all.iter().enumerate().rev() {
        set_mtime(path, 1_600_000_000 + i as i64 * 1000);
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            collect(&path, out);
        }
    }
}

pub fn mknod(path: &Path, file_type: FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(mode), dev).unwrap();
    rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(mode), AtFlags::empty()).unwrap();
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

pub fn remove_xattr(path: &Path, name: &str) {
    rustix::fs::lremovexattr(path, name).unwrap();
}

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

pub fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let md = fs::symlink_metadata(path).unwrap();
    md.file_type().is_char_device() && md.rdev() == 0
}

// ---------------------------------------------------------------- comparing trees

/// Everything a layer must carry about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub mtime: i64,
    /// For multiply-linked non-directories: the first path (sorted) of the same inode.
    pub hard_link_of: Option<String>,
}

/// Walks `root` (itself excluded) and summarises every path, keyed by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Summary> {
    let mut paths = Vec::new();
    collect(root, &mut paths);
    paths.sort();
    let mut first_of_inode: HashMap<(u64, u64), String> = HashMap::new();
    let mut out = BTreeMap::new();
    for path in paths {
        use std::os::unix::fs::FileTypeExt;
        let md = fs::symlink_metadata(&path).unwrap();
        let rel = String::from_utf8_lossy(path.strip_prefix(root).unwrap().as_os_str().as_bytes())
            .into_owned();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_char_device() {
            'c'
        } else {
            'b'
        };
        let sha256 = if ft.is_file() {
            let mut hasher = Sha256::new();
            let mut file = fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = file.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            hex(&hasher.finalize())
        } else {
            String::new()
        };
        let hard_link_of = (md.nlink() > 1 && !ft.is_dir()).then(|| {
            first_of_inode
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        out.insert(
            rel,
            Summary {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_file() { md.len() } else { 0 },
                sha256,
                link: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                rdev: md.rdev(),
                xattrs: xattrs(&path),
                mtime: md.mtime(),
                hard_link_of,
            },
        );
    }
    out
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut list = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = list[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let value = get_xattr(path, &name).unwrap_or_default();
            (name, value)
        })
        .collect();
    out.sort();
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn assert_trees_equal(expected: &Path, actual: &Path) {
    let a = snapshot(expected);
    let b = snapshot(actual);
    let mut problems = Vec::new();
    for (path, summary) in &a {
        match b.get(path) {
            None => problems.push(format!("missing {path}")),
            Some(other) if other != summary => {
                problems.push(format!("{path}:\n  want {summary:?}\n  got  {other:?}"))
            }
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        problems.push(format!("extra {path}"));
    }
    assert!(
        problems.is_empty(),
        "trees differ ({} vs {}):\n{}",
        expected.display(),
        actual.display(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------- tars

/// The layer blob of `dir`.
pub fn layer_tar(dir: &Path, opts: &WriteOptions) -> Vec<u8> {
    let mut blob = Vec::new();
    write_layer(dir, opts, &mut blob).unwrap();
    blob
}

pub fn decompress(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(blob)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
    } else if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out = blob.to_vec();
    }
    out
}

#[derive(Debug)]
pub struct Listed {
    pub name: String,
    pub raw_name: Vec<u8>,
    pub kind: u8,
    pub size: u64,
    pub link: String,
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The entries of a layer blob as the tar crate parses them.
pub fn list(blob: &[u8]) -> Vec<Listed> {
    let tar = decompress(blob);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().unwrap() {
            for record in records {
                let record = record.unwrap();
                if let Some(name) = record.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), record.value_bytes().to_vec()));
                }
            }
        }
        let header = entry.header();
        out.push(Listed {
            name: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            raw_name: entry.path_bytes().into_owned(),
            kind: header.entry_type().as_byte(),
            size: entry.size(),
            link: entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default(),
            mtime: header.mtime().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            uname: header.username_bytes().unwrap_or_default().to_vec(),
            gname: header.groupname_bytes().unwrap_or_default().to_vec(),
            xattrs,
        });
    }
    out
}

/// A tar built header by header, names written raw (the tar crate's `set_path` would
/// refuse the hostile ones).
pub struct RawTar {
    data: Vec<u8>,
    pub mtime: u64,
}

impl Default for RawTar {
    fn default() -> Self {
        RawTar {
            data: Vec::new(),
            mtime: 1_000_000,
        }
    }
}

impl RawTar {
    pub fn raw_entry(&mut self, name: &[u8], typeflag: u8, link: &[u8], data: &[u8], mode: u32) {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(tar::EntryType::new(typeflag));
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.data.write_all(header.as_bytes()).unwrap();
        self.data.write_all(data).unwrap();
        self.data.resize(self.data.len().div_ceil(512) * 512, 0);
    }

    /// A header whose size field says `header_size`, followed by `data` (which may be
    /// shorter or longer: for PAX size overrides and lying headers).
    pub fn sized(&mut self, name: &str, typeflag: u8, header_size: u64, data: &[u8]) {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::new(typeflag));
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_size(header_size);
        header.set_cksum();
        self.data.write_all(header.as_bytes()).unwrap();
        self.data.write_all(data).unwrap();
        self.data.resize(self.data.len().div_ceil(512) * 512, 0);
    }

    pub fn raw(&mut self, name: &str, typeflag: u8, link: &[u8], data: &[u8]) {
        self.raw_entry(name.as_bytes(), typeflag, link, data, 0o644);
    }

    pub fn raw_name(&mut self, name: &[u8], typeflag: u8, data: &[u8]) {
        self.raw_entry(name, typeflag, b"", data, 0o644);
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) {
        self.raw_entry(name.as_bytes(), b'0', b"", data, mode);
    }

    pub fn dir(&mut self, name: &str, mode: u32) {
        self.raw_entry(name.as_bytes(), b'5', b"", b"", mode);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.raw_entry(name.as_bytes(), b'2', target.as_bytes(), b"", 0o777);
    }

    pub fn hard_link(&mut self, name: &str, target: &str) {
        self.raw_entry(name.as_bytes(), b'1', target.as_bytes(), b"", 0o644);
    }

    /// A PAX extended header (typeflag `x`) for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (key, value) in records {
            let base = key.len() + value.len() + 3;
            let mut len = base + base.to_string().len();
            len = base + len.to_string().len();
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw_entry(b"PaxHeader", b'x', b"", &data, 0o644);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.data.extend_from_slice(&[0u8; 1024]);
        self.data
    }
}
