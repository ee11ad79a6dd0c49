//! Shared test machinery: a lower-branch fixture (files, dirs merged across branches,
//! symlinks, hard links, fifos, devices, xattrs, whiteouts, opaque dirs), mounts wrapped in
//! guards, a deadline runner so a hung FUSE fails a test instead of hanging it, and
//! snapshots of a merged view or an upper dir for comparison.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use strata_unionfs::{Driver, IdShift, MountGuard, MountSpec};

/// Where tests make their directories (created): not /tmp, which may be tmpfs, where
/// trusted xattrs and RENAME_WHITEOUT differ. STRATA_UNIONFS_TEST_DIR moves it (the run
/// over /dev/fuse keeps its fixtures apart).
pub fn test_base() -> PathBuf {
    let base = std::env::var_os("STRATA_UNIONFS_TEST_DIR").map_or_else(
        || PathBuf::from("/var/tmp/strata-unionfs-tests"),
        PathBuf::from,
    );
    fs::create_dir_all(&base).unwrap();
    base
}

/// Held by the tests that count CPU migrations or time the scheduler, and by the run of
/// the whole suite over /dev/fuse (`every_test_passes_over_dev_fuse_too`), whose load
/// would move their callers.
pub fn alone() -> MutexGuard<'static, ()> {
    static SCHEDULER: Mutex<()> = Mutex::new(());
    SCHEDULER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails with the fix when a prerequisite is missing (tests never skip).
pub fn require_root_and_fuse() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests mount filesystems: run them as root (sudo -E cargo test)"
    );
    assert!(
        strata_unionfs::fuse_available(),
        "/dev/fuse cannot be opened: `modprobe fuse` (and in a container: --device /dev/fuse)"
    );
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    assert!(
        filesystems.contains("overlay"),
        "kernel overlayfs missing: `modprobe overlay`"
    );
}

/// The FUSE connections of the mounts this process made, by mount point.
static CONNECTIONS: std::sync::Mutex<Vec<(PathBuf, u32)>> = std::sync::Mutex::new(Vec::new());

/// Runs `f` on another thread and fails the test if it takes longer than `secs`. Then the
/// FUSE connections of this process's mounts are aborted: threads stuck in the kernel on a
/// hung server would otherwise keep the test process from ever exiting.
pub fn deadline<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => {
            let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for (mnt, id) in CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let dev = format!(" 0:{id} ");
                let point = format!(" {} ", mnt.display());
                if mounted
                    .lines()
                    .any(|line| line.contains(&dev) && line.contains(&point))
                {
                    strata_unionfs::abort_connection(*id);
                }
            }
            panic!("{what} did not finish within {secs} s (hung mount?)")
        }
    }
}

/// Polls `done` until it holds; fails the test after 20 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch dir with lowers, and per-mount upper/work/mnt dirs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
}

pub struct Mounted {
    pub guard: Option<MountGuard>,
    pub mnt: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Mounted {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn unmount(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.unmount().expect("unmount");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.guard.take());
    }
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn whiteout(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

impl Fixture {
    /// Three lowers (index 0 = top) exercising every kind of entry and the overlay markers.
    pub fn new() -> Fixture {
        Fixture::build(false)
    }

    pub fn with_lower_links() -> Fixture {
        Fixture::build(true)
    }

    fn build(with_lower_links: bool) -> Fixture {
        require_root_and_fuse();
        let dir = tempfile::Builder::new()
            .prefix("union-")
            .tempdir_in(test_base())
            .unwrap();
        let l = |n: usize| dir.path().join(format!("lower{n}"));
        let (top, mid, bottom) = (l(0), l(1), l(2));
        for d in [&top, &mid, &bottom] {
            fs::create_dir_all(d).unwrap();
        }
        // bottom: a tree of plain entries
        for i in 0..6 {
            write(
                &bottom.join(format!("etc/conf{i}")),
                format!("bottom conf {i}\n").as_bytes(),
            );
            write(
                &bottom.join(format!("usr/lib/lib{i}.so")),
                &vec![i as u8; 1000 + i * 4096],
            );
            write(&bottom.join(format!("var/log/d{i}/log")), b"log\n");
        }
        write(&bottom.join("bin/tool"), b"#!/bin/sh\necho tool\n");
        fs::set_permissions(bottom.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("tool", bottom.join("bin/tool-link")).unwrap();
        symlink("../etc/conf0", bottom.join("bin/conf-link")).unwrap();
        // Hard links in a lower branch: kernel overlayfs (index=off) splits them on copy-up,
        // strata keeps them one file. The differential fixture leaves them out; ops.rs tests it.
        if with_lower_links {
            fs::hard_link(bottom.join("etc/conf1"), bottom.join("etc/conf1.hard")).unwrap();
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            bottom.join("etc/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            bottom.join("etc/null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        set_xattr(&bottom.join("etc/conf2"), "user.origin", b"bottom");
        set_xattr(&bottom.join("etc"), "user.dir", b"etc");
        write(&bottom.join("home/user/.profile"), b"export A=1\n");
        rustix::fs::chown(
            bottom.join("home/user"),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
        )
        .unwrap();
        rustix::fs::chown(
            bottom.join("home/user/.profile"),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
        )
        .unwrap();
        write(&bottom.join("opt/old/a"), b"hidden by opaque\n");
        write(&bottom.join("srv/gone/x"), b"whited out dir\n");
        write(&bottom.join("srv/keep"), b"keep\n");
        // middle: overrides, whiteouts (file and dir), merged dirs
        write(&mid.join("etc/conf0"), b"middle conf 0\n");
        write(&mid.join("etc/extra"), b"middle extra\n");
        write(&mid.join("var/log/d0/mid"), b"mid\n");
        whiteout(&mid.join("etc/conf3"));
        whiteout(&mid.join("srv/gone"));
        write(&mid.join("opt/old/b"), b"middle b\n");
        // top: an opaque dir hiding the lower ones, more merging
        write(&top.join("opt/old/c"), b"top c\n");
        set_xattr(&top.join("opt/old"), "trusted.overlay.opaque", b"y");
        write(&top.join("etc/top"), b"top\n");
        set_xattr(&top.join("etc"), "user.dir", b"top etc");
        write(&top.join("usr/share/doc/readme"), b"readme\n");
        Fixture {
            dir,
            lowers: vec![top, mid, bottom],
        }
    }

    /// A spec of the lowers with a fresh upper, work dir and mount point under `name`: no
    /// flags, no shifted owners.
    pub fn fresh_spec(&self, name: &str) -> MountSpec {
        let base = self.dir.path().join(name);
        let spec = MountSpec {
            lowers: self.lowers.clone(),
            upper: base.join("upper"),
            work: base.join("work"),
            target: base.join("mnt"),
            aufs_markers: false,
            flags: Default::default(),
            id_shift: None,
        };
        for dir in [&spec.upper, &spec.work, &spec.target] {
            fs::create_dir_all(dir).unwrap();
        }
        spec
    }

    /// Mounts the lowers with a fresh upper named `name`.
    pub fn mount(&self, name: &str, driver: Driver) -> Mounted {
        self.mount_shifted(name, driver, None)
    }

    /// Like `mount`, with owners shifted for a user namespace.
    pub fn mount_shifted(&self, name: &str, driver: Driver, shift: Option<IdShift>) -> Mounted {
        self.mount_fresh(name, driver, shift, false)
    }

    /// Like `mount`, reading AUFS markers in the lowers (FUSE).
    pub fn mount_aufs(&self, name: &str) -> Mounted {
        self.mount_fresh(name, Driver::Fuse, None, true)
    }

    fn mount_fresh(
        &self,
        name: &str,
        driver: Driver,
        shift: Option<IdShift>,
        aufs_markers: bool,
    ) -> Mounted {
        let spec = self.fresh_spec(name);
        self.mount_with(
            &spec.upper,
            &spec.work,
            &spec.target,
            driver,
            shift,
            aufs_markers,
        )
    }

    pub fn mount_at(&self, upper: &Path, work: &Path, mnt: &Path, driver: Driver) -> Mounted {
        self.mount_with(upper, work, mnt, driver, None, false)
    }

    fn mount_with(
        &self,
        upper: &Path,
        work: &Path,
        mnt: &Path,
        driver: Driver,
        id_shift: Option<IdShift>,
        aufs_markers: bool,
    ) -> Mounted {
        let spec = MountSpec {
            lowers: self.lowers.clone(),
            upper: upper.into(),
            work: work.into(),
            target: mnt.into(),
            aufs_markers,
            flags: Default::default(),
            id_shift,
        };
        let guard =
            deadline(30, "mount", move || strata_unionfs::mount(&spec, driver)).expect("mount");
        assert_eq!(
            guard.driver(),
            if driver == Driver::Overlay {
                Driver::Overlay
            } else {
                Driver::Fuse
            }
        );
        if guard.driver() == Driver::Fuse
            && std::env::var_os("STRATA_FUSE_URING").is_some_and(|v| v == "0")
        {
            assert!(!guard.io_uring(), "STRATA_FUSE_URING=0, yet on a ring");
        }
        if guard.driver() == Driver::Fuse
            && let Ok(meta) = fs::metadata(mnt)
        {
            let id = rustix::fs::minor(meta.dev());
            let mut connections = CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
            connections.push((mnt.into(), id));
        }
        Mounted {
            guard: Some(guard),
            mnt: mnt.into(),
            upper: upper.into(),
            work: work.into(),
        }
    }
}

/// What a test compares about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
    pub nlink: Option<u64>,
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub opaque: bool,
}

fn kind_char(ft: fs::FileType) -> char {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        's'
    }
}

fn xattrs(path: &Path, upper: bool) -> (BTreeMap<String, Vec<u8>>, bool) {
    let mut out = BTreeMap::new();
    let mut opaque = false;
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut buf[..]).unwrap_or(0);
    for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap_or(0);
        value.truncate(len);
        if name == "trusted.overlay.opaque" {
            opaque = value == b"y";
        } else if name.starts_with("user.") {
            out.insert(name, value);
        } else if !upper {
            panic!(
                "{}: unexpected xattr {name} visible through the mount",
                path.display()
            );
        }
    }
    (out, opaque)
}

/// Every entry's st_ino below `root`, walked in name order or its reverse (the order of
/// first lookups decides nothing).
pub fn inode_numbers(root: &Path, reverse: bool) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        if reverse {
            entries.reverse();
        }
        for path in entries {
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            found.insert(path.strip_prefix(root).unwrap().to_path_buf(), meta.ino());
        }
    }
    found
}

/// Snapshot of a tree: every entry below `root` (not `root` itself) by relative path.
/// `upper`: the tree is an upper dir (whiteouts and opaque markers are data there).
pub fn snapshot(root: &Path, upper: bool) -> BTreeMap<PathBuf, Desc> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), upper, &mut out);
    out
}

fn walk(root: &Path, rel: &Path, upper: bool, out: &mut BTreeMap<PathBuf, Desc>) {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let kind = kind_char(meta.file_type());
        let (xattrs, opaque) = if kind == 'l' {
            (BTreeMap::new(), false)
        } else {
            xattrs(&path, upper)
        };
        let desc = Desc {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: (kind == 'f' || kind == 'l').then(|| meta.size()),
            content: (kind == 'f').then(|| {
                fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            }),
            target: (kind == 'l').then(|| fs::read_link(&path).unwrap()),
            // The kernel links its whiteouts to one shared inode (ovl_whiteout): their link
            // count says nothing about the tree.
            nlink: (kind != 'd' && !(upper && kind == 'c' && meta.rdev() == 0))
                .then(|| meta.nlink()),
            rdev: (kind == 'c' || kind == 'b').then(|| meta.rdev()),
            xattrs,
            opaque,
        };
        out.insert(rel.clone(), desc);
        if kind == 'd' {
            walk(root, &rel, upper, out);
        }
    }
}

/// Groups of paths sharing an inode (hard links), as seen through a mount.
pub fn link_groups(root: &Path) -> BTreeSet<Vec<PathBuf>> {
    let mut by_ino: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for (rel, desc) in snapshot(root, false) {
        if desc.kind != 'd' {
            let ino = fs::symlink_metadata(root.join(&rel)).unwrap().ino();
            by_ino.entry(ino).or_default().push(rel);
        }
    }
    by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

/// Panics with the first differences between two snapshots.
pub fn assert_same(what: &str, a: &BTreeMap<PathBuf, Desc>, b: &BTreeMap<PathBuf, Desc>) {
    let mut diffs = Vec::new();
    for (path, da) in a {
        match b.get(path) {
            None => diffs.push(format!("{}: only in the first: {da:?}", path.display())),
            Some(db) if da != db => {
                diffs.push(format!("{}:\n   {da:?}\n   {db:?}", path.display()))
            }
            _ => {}
        }
    }
    for (path, db) in b {
        if !a.contains_key(path) {
            diffs.push(format!("{}: only in the second: {db:?}", path.display()));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} difference(s):\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `len` bytes in which no two 8-byte words are alike (a big file whose every page the
/// test can tell apart).
pub fn patterned(len: usize) -> Vec<u8> {
    (0..len as u64 / 8)
        .flat_map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes())
        .collect()
}

/// The names the unfinished copy-up records in `work` stand for (fuse-unionfs
/// src/pending.rs: a `name` line holds the name in hex).
pub fn copy_up_records(work: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(work.join("strata-copyups")) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for entry in entries {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        for hex in text.lines().filter_map(|l| l.strip_prefix("name ")) {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            names.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    names.sort();
    names
}
