//! Seeded random operation sequences for the differential test: each step picks an
//! operation and its paths from the reference mount's current tree, so sequences keep
//! hitting existing names (overwrites, EEXIST, ENOTEMPTY, whiteouts over whiteouts).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug)]
pub enum Op {
    Create(PathBuf, Vec<u8>),
    Write(PathBuf, Vec<u8>),
    Append(PathBuf, Vec<u8>),
    Truncate(PathBuf, u64),
    Chmod(PathBuf, u32),
    Chown(PathBuf, u32, u32),
    Utime(PathBuf),
    SetXattr(PathBuf, String, Vec<u8>),
    RemoveXattr(PathBuf, String),
    Unlink(PathBuf),
    Rmdir(PathBuf),
    RemoveTree(PathBuf),
    Mkdir(PathBuf, u32),
    Symlink(PathBuf, PathBuf),
    Link(PathBuf, PathBuf),
    Rename(PathBuf, PathBuf),
    Mkfifo(PathBuf),
    /// open(2) with O_TMPFILE in the path's directory, a write, then linkat(2) to the path.
    TmpfileLink(PathBuf, Vec<u8>),
    /// Open read-write, unlink, then fchmod, fsetxattr and ftruncate through the open file.
    ChangeUnlinked(PathBuf, u32),
}

pub struct Gen {
    rng: StdRng,
    /// Directories of the lowers: half the renames move one of them while any is left.
    lower_dirs: Vec<PathBuf>,
}

const NAMES: [&str; 8] = ["n0", "n1", "n2", "conf0", "conf3", "gone", "old", "d0"];

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            lower_dirs: Vec::new(),
        }
    }

    /// A generator whose renames move one of `lower_dirs` (paths in the merged view) half
    /// of the time, while one is left.
    pub fn with_dir_renames(seed: u64, lower_dirs: Vec<PathBuf>) -> Gen {
        Gen {
            lower_dirs,
            ..Gen::new(seed)
        }
    }

    fn data(&mut self) -> Vec<u8> {
        let len = self.rng.random_range(0..6000);
        (0..len).map(|_| self.rng.random()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn new_path(&mut self, dirs: &[PathBuf]) -> PathBuf {
        let dir = self.pick(dirs).clone();
        dir.join(*self.pick(&NAMES))
    }

    /// Next operation, given the entries (path, kind) of the reference tree.
    pub fn next(&mut self, entries: &[(PathBuf, char)]) -> Op {
        let mut dirs: Vec<PathBuf> = entries
            .iter()
            .filter(|(_, k)| *k == 'd')
            .map(|(p, _)| p.clone())
            .collect();
        dirs.push(PathBuf::new());
        let files: Vec<PathBuf> = entries
            .iter()
            .filter(|(_, k)| *k == 'f')
            .map(|(p, _)| p.clone())
            .collect();
        let any: Vec<PathBuf> = entries.iter().map(|(p, _)| p.clone()).collect();
        let non_links: Vec<PathBuf> = entries
            .iter()
            .filter(|(_, k)| *k != 'l')
            .map(|(p, _)| p.clone())
            .collect();
        let kind = self.rng.random_range(0..23);
        if files.is_empty() || any.is_empty() {
            // Files as well as directories: with Mkdir alone a tree without files stays so.
            let path = self.new_path(&dirs);
            return if self.rng.random_bool(0.5) {
                Op::Create(path, self.data())
            } else {
                Op::Mkdir(path, 0o755)
            };
        }
        match kind {
            0 | 1 => {
                let path = self.new_path(&dirs);
                Op::Create(path, self.data())
            }
            2 => {
                let path = self.pick(&files).clone();
                Op::Write(path, self.data())
            }
            3 => {
                let path = self.pick(&files).clone();
                Op::Append(path, self.data())
            }
            4 => {
                let path = self.pick(&files).clone();
                Op::Truncate(path, self.rng.random_range(0..3000))
            }
            5 => {
                let path = self.pick(&non_links).clone();
                Op::Chmod(
                    path,
                    *self.pick(&[0o644, 0o600, 0o755, 0o4755, 0o700, 0o1777, 0o2755]),
                )
            }
            6 => {
                let path = self.pick(&any).clone();
                let id = *self.pick(&[0, 1000, 65534]);
                Op::Chown(path, id, *self.pick(&[0, 1000, 65534]))
            }
            7 => Op::Utime(self.pick(&non_links).clone()),
            8 => {
                let path = self.pick(&any).clone();
                let name = format!("user.k{}", self.rng.random_range(0..3));
                Op::SetXattr(path, name, self.data().into_iter().take(50).collect())
            }
            9 => Op::RemoveXattr(
                self.pick(&non_links).clone(),
                format!("user.k{}", self.rng.random_range(0..3)),
            ),
            10 | 11 => Op::Unlink(self.pick(&any).clone()),
            12 | 13 => {
                let real: Vec<PathBuf> = dirs
                    .iter()
                    .filter(|d| !d.as_os_str().is_empty())
                    .cloned()
                    .collect();
                if real.is_empty() {
                    return Op::Mkdir(self.new_path(&dirs), 0o755);
                }
                let dir = self.pick(&real).clone();
                if kind == 12 {
                    Op::Rmdir(dir)
                } else {
                    Op::RemoveTree(dir)
                }
            }
            14 | 15 => {
                let path = self.new_path(&dirs);
                Op::Mkdir(path, *self.pick(&[0o755, 0o700, 0o2775]))
            }
            16 => {
                let path = self.new_path(&dirs);
                Op::Symlink(path, self.pick(&any).clone())
            }
            17 => {
                let source = self.pick(&files).clone();
                Op::Link(source, self.new_path(&dirs))
            }
            18 | 19 => {
                let lower_dirs: Vec<PathBuf> = dirs
                    .iter()
                    .filter(|d| self.lower_dirs.contains(d))
                    .cloned()
                    .collect();
                if !lower_dirs.is_empty() && self.rng.random_bool(0.5) {
                    // to a new name, not one of the names the other renames aim at
                    let source = self.pick(&lower_dirs).clone();
                    let outside: Vec<PathBuf> = dirs
                        .iter()
                        .filter(|d| !d.starts_with(&source))
                        .cloned()
                        .collect();
                    return Op::Rename(source, self.new_path(&outside));
                }
                let source = self.pick(&any).clone();
                let target = if self.rng.random_bool(0.3) {
                    self.pick(&any).clone()
                } else {
                    self.new_path(&dirs)
                };
                Op::Rename(source, target)
            }
            21 => {
                let path = self.new_path(&dirs);
                Op::TmpfileLink(path, self.data())
            }
            22 => {
                let path = self.pick(&files).clone();
                Op::ChangeUnlinked(path, *self.pick(&[0o600, 0o4755, 0o2750]))
            }
            _ => Op::Mkfifo(self.new_path(&dirs)),
        }
    }
}

fn errno(err: std::io::Error) -> i32 {
    err.raw_os_error().unwrap_or(-1)
}

fn rustix_errno(err: rustix::io::Errno) -> i32 {
    err.raw_os_error()
}

/// Applies `op` below `root`; the result is the errno the operation failed with.
pub fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &Path| root.join(rel);
    match op {
        Op::Create(path, data) => {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p(path))
                .map_err(errno)?;
            file.write_all(data).map_err(errno)
        }
        Op::Write(path, data) => fs::write(p(path), data).map_err(errno),
        Op::Append(path, data) => {
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(p(path))
                .map_err(errno)?;
            file.write_all(data).map_err(errno)
        }
        Op::Truncate(path, size) => {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            file.set_len(*size).map_err(errno)
        }
        Op::Chmod(path, mode) => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).map_err(errno)
        }
        Op::Chown(path, uid, gid) => rustix::fs::chownat(
            rustix::fs::CWD,
            p(path),
            Some(rustix::fs::Uid::from_raw(*uid)),
            Some(rustix::fs::Gid::from_raw(*gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(rustix_errno),
        Op::Utime(path) => {
            let t = rustix::fs::Timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            };
            let times = rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p(path),
                &times,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(rustix_errno)
        }
        Op::SetXattr(path, name, value) => rustix::fs::lsetxattr(
            p(path),
            name.as_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(rustix_errno),
        Op::RemoveXattr(path, name) => {
            rustix::fs::lremovexattr(p(path), name.as_str()).map_err(rustix_errno)
        }
        Op::Unlink(path) => fs::remove_file(p(path)).map_err(errno),
        Op::Rmdir(path) => fs::remove_dir(p(path)).map_err(errno),
        Op::RemoveTree(path) => fs::remove_dir_all(p(path)).map_err(errno),
        Op::Mkdir(path, mode) => {
            rustix::fs::mkdir(p(path), rustix::fs::Mode::from_raw_mode(*mode)).map_err(rustix_errno)
        }
        Op::Symlink(path, target) => symlink(target, p(path)).map_err(errno),
        Op::Link(source, path) => fs::hard_link(p(source), p(path)).map_err(errno),
        Op::Rename(source, target) => fs::rename(p(source), p(target)).map_err(errno),
        Op::Mkfifo(path) => rustix::fs::mknodat(
            rustix::fs::CWD,
            p(path),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .map_err(rustix_errno),
        Op::TmpfileLink(path, data) => {
            let dir = p(path.parent().unwrap_or(Path::new("")));
            let fd = rustix::fs::openat(
                rustix::fs::CWD,
                &dir,
                rustix::fs::OFlags::TMPFILE
                    | rustix::fs::OFlags::RDWR
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o640),
            )
            .map_err(rustix_errno)?;
            let mut file = fs::File::from(fd);
            file.write_all(data).map_err(errno)?;
            rustix::fs::linkat(
                &file,
                "",
                rustix::fs::CWD,
                p(path),
                rustix::fs::AtFlags::EMPTY_PATH,
            )
            .map_err(rustix_errno)
        }
        Op::ChangeUnlinked(path, mode) => {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            fs::remove_file(p(path)).map_err(errno)?;
            rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(*mode))
                .map_err(rustix_errno)?;
            rustix::fs::fsetxattr(&file, "user.k0", b"gone", rustix::fs::XattrFlags::empty())
                .map_err(rustix_errno)?;
            file.set_len(1).map_err(errno)
        }
    }
}

/// What `mv` does where rename(2) says EXDEV: copy (`cp -a`), then delete. Except that a
/// file also linked from outside `source` keeps its inode (it is linked, not copied, into
/// the target), since strata's rename, like rename(2) anywhere, keeps those links.
pub fn copy_then_remove(root: &Path, source: &Path, target: &Path) -> Result<(), i32> {
    let (source, target) = (root.join(source), root.join(target));
    if target.is_dir() {
        fs::remove_dir(&target).map_err(errno)?;
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&source)
        .arg(&target)
        .status()
        .map_err(errno)?;
    assert!(
        status.success(),
        "cp -a {} {} failed",
        source.display(),
        target.display()
    );
    // GNU cp keeps the set-group-ID bit a directory inherits from a set-group-ID parent
    // even with -a; rename(2) changes no mode, so the copies get exactly the sources'.
    set_dir_modes(&source, &target);
    let mut files = Vec::new();
    regular_files(&source, Path::new(""), &mut files);
    let inside = |ino: u64| files.iter().filter(|(_, i, _)| *i == ino).count() as u64;
    for (rel, ino, nlink) in &files {
        if *nlink > inside(*ino) {
            let copy = target.join(rel);
            fs::remove_file(&copy).map_err(errno)?;
            fs::hard_link(source.join(rel), &copy).map_err(errno)?;
        }
    }
    fs::remove_dir_all(&source).map_err(errno)
}

/// Gives every directory of the copy `target` exactly the mode of its `source`.
fn set_dir_modes(source: &Path, target: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(source).unwrap();
    if !meta.is_dir() {
        return;
    }
    fs::set_permissions(
        target,
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )
    .unwrap();
    for entry in fs::read_dir(source).unwrap() {
        let name = entry.unwrap().file_name();
        set_dir_modes(&source.join(&name), &target.join(&name));
    }
}

/// The regular files below `root/rel`: (path from `root`, inode, link count).
fn regular_files(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64, u64)>) {
    use std::os::unix::fs::MetadataExt;
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
        if meta.is_dir() {
            regular_files(root, &rel, out);
        } else if meta.is_file() {
            out.push((rel, meta.ino(), meta.nlink()));
        }
    }
}

/// The entries of a tree (path, kind), sorted.
pub fn entries(root: &Path) -> Vec<(PathBuf, char)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, char)>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let rel = rel.join(entry.file_name());
            let ft = entry.file_type().unwrap();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else {
                'o'
            };
            out.push((rel.clone(), kind));
            if kind == 'd' {
                walk(root, &rel, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}
