//! One test per operation of the FUSE driver, on a real mount of the common fixture.
//! Each checks the merged view and, where it matters, the upper dir's on-disk form.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use strata_unionfs::Driver;

use crate::common::{Fixture, Mounted, deadline, inode_numbers, set_xattr};

/// Appends `data` to the file at `path` (a copy-up through the mount).
fn append(path: impl AsRef<Path>, data: &[u8]) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

/// Mounts the fixture with FUSE and runs `f` under a deadline.
fn with_fuse(f: impl FnOnce(&Mounted) + Send + 'static) {
    let fixture = Fixture::new();
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let inner = mounted.clone();
    deadline(120, "operations on the FUSE mount", move || f(&inner));
    drop(mounted);
    drop(fixture);
}

#[test]
fn lookup_stops_at_whiteouts_and_opaque_dirs() {
    with_fuse(|m| {
        assert!(
            !m.path("etc/conf3").exists(),
            "file whiteout in the middle branch hides the bottom file"
        );
        assert!(
            !m.path("srv/gone").exists(),
            "directory whiteout hides the bottom dir"
        );
        assert_eq!(fs::read(m.path("srv/keep")).unwrap(), b"keep\n");
        assert_eq!(
            names(&m.path("opt/old")),
            ["c"],
            "opaque dir hides lower entries"
        );
        assert_eq!(
            fs::read(m.path("etc/conf0")).unwrap(),
            b"middle conf 0\n",
            "upper-most branch wins"
        );
        assert_eq!(
            fs::read_link(m.path("bin/conf-link")).unwrap(),
            Path::new("../etc/conf0")
        );
    });
}

/// Inode numbers are the same after a remount, whatever the order of the first lookups,
/// for lower files, for files made in the upper branch, for directories copied up (a
/// merged directory shows its lower directory's number) and for files copied up (their
/// origin's), as kernel overlayfs's are; a lower file or directory shows the number
/// overlayfs shows for it (all branches on one file system), and readdir gives each entry
/// the number stat gives it. Overlayfs reads the origins strata records.
#[test]
fn inode_numbers_are_the_same_across_remounts() {
    let fixture = Fixture::new();
    let mut first = fixture.mount("ino", Driver::Fuse);
    fs::write(first.path("made-here"), b"new\n").unwrap();
    fs::create_dir(first.path("made-dir")).unwrap();
    // copies etc and usr/lib up, merged with their lower directories
    fs::write(first.path("etc/made-in-a-lower-dir"), b"new\n").unwrap();
    fs::create_dir(first.path("usr/lib/made-dir")).unwrap();
    // copies files up: data, metadata only, a symlink's owner
    let lower_inos = inode_numbers(&first.mnt, false);
    append(first.path("etc/conf1"), b"more\n");
    fs::set_permissions(
        first.path("usr/lib/lib0.so"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::lchown(first.path("bin/tool-link"), Some(7), None).unwrap();
    // a copy-up moved to another directory, and one linked into another directory
    fs::rename(first.path("etc/conf2"), first.path("var/log/conf2-moved")).unwrap();
    append(first.path("etc/conf4"), b"more\n");
    fs::hard_link(first.path("etc/conf4"), first.path("srv/conf4-link")).unwrap();
    // (copied-up path, the lower path it came from)
    let copied = [
        ("etc/conf1", "etc/conf1"),
        ("usr/lib/lib0.so", "usr/lib/lib0.so"),
        ("bin/tool-link", "bin/tool-link"),
        ("var/log/conf2-moved", "etc/conf2"),
        ("etc/conf4", "etc/conf4"),
        ("srv/conf4-link", "etc/conf4"),
    ];
    let before = deadline(60, "listing", {
        let mnt = first.mnt.clone();
        move || inode_numbers(&mnt, false)
    });
    for (rel, from) in copied {
        assert_eq!(before[Path::new(rel)], lower_inos[Path::new(from)], "{rel}");
    }
    let (upper, work, mnt) = (first.upper.clone(), first.work.clone(), first.mnt.clone());
    first.unmount();
    let mut second = fixture.mount_at(&upper, &work, &mnt, Driver::Fuse);
    // readdir first, before a lookup numbers any entry
    // (the directories a copy-up was moved or linked into first: they hold no copy-up of
    // their own)
    let listed: Vec<(PathBuf, u64)> = ["srv", "var/log", "", "etc", "usr", "usr/lib", "bin"]
        .iter()
        .flat_map(|dir| {
            dir_inos(&second.path(dir))
                .into_iter()
                .map(move |(name, ino)| (Path::new(dir).join(name), ino))
        })
        .collect();
    let after = deadline(60, "listing", {
        let mnt = second.mnt.clone();
        move || inode_numbers(&mnt, true)
    });
    assert_eq!(before, after);
    for (rel, d_ino) in listed {
        assert_eq!(Some(&d_ino), after.get(&rel), "d_ino of {}", rel.display());
    }
    let kernel = fixture.mount("ino-kernel", Driver::Overlay);
    let overlay = inode_numbers(&kernel.mnt, false);
    assert!(overlay.len() > 10, "{overlay:?}");
    for rel in ["etc", "usr/lib"] {
        assert!(overlay.contains_key(Path::new(rel)), "{rel}: {overlay:?}");
    }
    for (rel, ino) in &overlay {
        if rel == Path::new("etc/conf2") {
            continue; // moved away in the first mount
        }
        assert_eq!(after.get(rel), Some(ino), "{}", rel.display());
    }
    // overlayfs over the upper strata made reads its origins: the same numbers (but for the
    // linked pair: overlayfs splits a hard link it did not copy up itself)
    drop(kernel);
    second.unmount();
    let under_kernel = fixture.mount_at(&upper, &work, &mnt, Driver::Overlay);
    for (rel, _) in &copied[..4] {
        let meta = fs::symlink_metadata(under_kernel.path(rel)).unwrap();
        assert_eq!(
            Some(&meta.ino()),
            after.get(Path::new(rel)),
            "{rel} under overlayfs"
        );
    }
}

/// An origin gives a number only while no other file has it: copies of a copied-up file
/// made with its xattrs (`cp -a` in the upper dir) and the lower file itself, moved since
/// its copy-up (visible at another path), each keep a number of their own and their own
/// data, in either order of lookups, and readdir agrees.
#[test]
fn origins_never_give_two_files_one_number() {
    let fixture = Fixture::new();
    let mut first = fixture.mount("dup", Driver::Fuse);
    append(first.path("etc/conf5"), b"edited\n");
    let (upper, work, mnt) = (first.upper.clone(), first.work.clone(), first.mnt.clone());
    first.unmount();
    for (copy, extra) in [("conf5.bak", "bak\n"), ("conf5.bak2", "bak2\n")] {
        let to = upper.join("etc").join(copy);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(upper.join("etc/conf5"))
            .arg(&to)
            .status()
            .unwrap();
        assert!(status.success());
        append(&to, extra.as_bytes());
    }
    let bottom = &fixture.lowers[2];
    fs::rename(bottom.join("etc/conf5"), bottom.join("srv/conf5-moved")).unwrap();
    let expected = [
        ("etc/conf5", "bottom conf 5\nedited\n"),
        ("etc/conf5.bak", "bottom conf 5\nedited\nbak\n"),
        ("etc/conf5.bak2", "bottom conf 5\nedited\nbak2\n"),
        ("srv/conf5-moved", "bottom conf 5\n"),
    ];
    for reverse in [false, true] {
        let mut m = fixture.mount_at(&upper, &work, &mnt, Driver::Fuse);
        let mut order = expected.to_vec();
        if reverse {
            order.reverse();
        }
        let mut numbers = std::collections::HashMap::new();
        for (rel, content) in order {
            let ino = fs::symlink_metadata(m.path(rel)).unwrap().ino();
            assert_eq!(fs::read_to_string(m.path(rel)).unwrap(), content, "{rel}");
            if let Some(other) = numbers.insert(ino, rel) {
                panic!("{rel} and {other} share inode number {ino}");
            }
        }
        for dir in ["etc", "srv"] {
            for (name, d_ino) in dir_inos(&m.path(dir)) {
                let rel = format!("{dir}/{name}");
                let ino = fs::symlink_metadata(m.path(&rel)).unwrap().ino();
                assert_eq!(d_ino, ino, "d_ino of {rel}");
            }
        }
        m.unmount();
    }
}

/// A caller that walks names without stat'ing them gets READDIRPLUS listings by name only
/// after its first (src/plus.rs): the names, types and numbers they give are those that
/// stat gives after. One that stats each entry after each listing gets them with
/// attributes: again the same. Each walk on a mount of its own (the kernel keeps a
/// listing for the next caller), from a thread of its own (a new caller).
#[test]
fn listings_by_name_only_or_with_attributes_agree_with_stat() {
    use std::os::unix::fs::{DirEntryExt, FileTypeExt};
    fn kind(t: fs::FileType) -> char {
        match () {
            _ if t.is_dir() => 'd',
            _ if t.is_symlink() => 'l',
            _ if t.is_file() => 'f',
            _ if t.is_fifo() => 'p',
            _ if t.is_char_device() => 'c',
            _ => '?',
        }
    }
    let fixture = Fixture::new();
    for stat_as_it_goes in [false, true] {
        let m = fixture.mount(&format!("walk-{stat_as_it_goes}"), Driver::Fuse);
        let mnt = m.mnt.clone();
        deadline(60, "a walk", move || {
            let (mut dirs, mut listed) = (vec![mnt.clone()], Vec::new());
            while let Some(dir) = dirs.pop() {
                for entry in fs::read_dir(&dir).unwrap() {
                    let entry = entry.unwrap();
                    // (d_type: read_dir stats nothing)
                    let seen = (kind(entry.file_type().unwrap()), entry.ino());
                    if seen.0 == 'd' {
                        dirs.push(entry.path());
                    }
                    if stat_as_it_goes {
                        let meta = fs::symlink_metadata(entry.path()).unwrap();
                        assert_eq!(seen, (kind(meta.file_type()), meta.ino()), "{entry:?}");
                    }
                    listed.push((entry.path(), seen));
                }
            }
            assert!(listed.len() > 20, "{listed:?}");
            for (path, seen) in listed {
                let meta = fs::symlink_metadata(&path).unwrap();
                assert_eq!(
                    seen,
                    (kind(meta.file_type()), meta.ino()),
                    "{}",
                    path.display()
                );
            }
        });
    }
}

/// Each entry's d_ino in a raw listing of `dir`, without "." and "..".
fn dir_inos(dir: &Path) -> Vec<(String, u64)> {
    let dir = fs::File::open(dir).unwrap();
    let mut raw = rustix::fs::Dir::read_from(&dir).unwrap();
    let mut out = Vec::new();
    while let Some(entry) = raw.read() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name != "." && name != ".." {
            out.push((name, entry.ino()));
        }
    }
    out
}

#[test]
fn readdir_merges_without_duplicates_or_whiteouts() {
    with_fuse(|m| {
        let etc = names(&m.path("etc"));
        let expected = [
            "conf0", "conf1", "conf2", "conf4", "conf5", "extra", "fifo", "null", "top",
        ];
        assert_eq!(etc, expected);
        // "." and ".." are listed, with the right inode numbers.
        let dir = fs::File::open(m.path("etc")).unwrap();
        let mut raw = rustix::fs::Dir::read_from(&dir).unwrap();
        let mut dots = Vec::new();
        while let Some(entry) = raw.read() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().to_string();
            if name == "." || name == ".." {
                dots.push((name, entry.ino()));
            }
        }
        dots.sort();
        assert_eq!(dots.len(), 2);
        assert_eq!(dots[0].1, fs::metadata(m.path("etc")).unwrap().ino());
        assert_eq!(dots[1].1, fs::metadata(&m.mnt).unwrap().ino());
    });
}

/// Names from one getdents64 call of `size` bytes on `fd`; empty at the end.
fn getdents(fd: &fs::File, size: usize) -> Vec<String> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; size];
    // SAFETY: a buffer of `size` bytes for the kernel to fill.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), size) };
    assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
    let (mut names, mut at) = (Vec::new(), 0);
    while at < n as usize {
        let len = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
        let name = &buf[at + 19..at + len];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        names.push(String::from_utf8_lossy(name).into_owned());
        at += len;
    }
    names
}

#[test]
fn a_listing_returns_each_entry_that_stays_once_while_the_directory_changes() {
    // POSIX: entries made or removed during a listing may or may not show; every other
    // one shows exactly once. The kernel asks again from where its reader is once the
    // directory changed (QA 17: `x.bak` made beside each `x` read came back as new `x`s).
    with_fuse(|m| {
        for (dir, big) in [("made", false), ("removed", true)] {
            fs::create_dir(m.path(dir)).unwrap();
            for i in 0..if big { 1000 } else { 100 } {
                fs::write(m.path(&format!("{dir}/f{i}")), b"").unwrap();
            }
        }
        let mut seen = std::collections::HashMap::new();
        for entry in fs::read_dir(m.path("made")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".bak") {
                fs::write(m.path(&format!("made/{name}.bak")), b"").unwrap();
                *seen.entry(name).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 100);
        assert!(seen.values().all(|&n| n == 1), "{seen:?}");
        // small reads; entries not returned yet go meanwhile, and many other directories
        // are listed whole between two chunks (a walker deep in a tree)
        for i in 0..300 {
            fs::create_dir_all(m.path(&format!("others/d{i}"))).unwrap();
        }
        let dir = fs::File::open(m.path("removed")).unwrap();
        let mut got = getdents(&dir, 1024);
        for i in 0..300 {
            assert_eq!(
                fs::read_dir(m.path(&format!("others/d{i}")))
                    .unwrap()
                    .count(),
                0
            );
        }
        let listed: std::collections::HashSet<String> = got.iter().cloned().collect();
        let gone: Vec<String> = (0..1000)
            .map(|i| format!("f{i}"))
            .filter(|n| !listed.contains(n))
            .take(100)
            .collect();
        for name in &gone {
            fs::remove_file(m.path(&format!("removed/{name}"))).unwrap();
        }
        loop {
            let more = getdents(&dir, 1024);
            if more.is_empty() {
                break;
            }
            got.extend(more);
        }
        let mut counts = std::collections::HashMap::new();
        for name in &got {
            *counts.entry(name.as_str()).or_insert(0) += 1;
        }
        for i in 0..1000 {
            let name = format!("f{i}");
            if !gone.contains(&name) {
                assert_eq!(counts.get(name.as_str()), Some(&1), "{name}");
            }
        }
        // Rust's remove_dir_all reads a directory lazily and empties each subdirectory
        // between two of its chunks (review 17: ENOTEMPTY once 256 listings came between)
        for i in 0..600 {
            fs::create_dir_all(m.path(&format!("wide/d{i}/x"))).unwrap();
        }
        fs::remove_dir_all(m.path("wide")).unwrap();
    });
}

#[test]
fn big_directories_list_whole_while_read_by_several_at_once() {
    // Thousands of names take many READDIR chunks; each reader must get every name once
    // although there are no directory handles and other readers list the same directory.
    let fixture = Fixture::new();
    let big = fixture.lowers[2].join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..3000 {
        fs::write(big.join(format!("lower-file-with-a-long-name-{i:05}")), b"").unwrap();
    }
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(120, "listing a big directory", move || {
        let dir = m.path("big");
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    // Fresh opens read from the server until the kernel has cached the listing.
                    (0..5).map(|_| names(&dir)).collect::<Vec<_>>()
                })
            })
            .collect();
        for listing in readers.into_iter().flat_map(|r| r.join().unwrap()) {
            assert_eq!(listing.len(), 3000);
            assert!(listing.windows(2).all(|w| w[0] < w[1]), "a name came twice");
        }
        fs::write(dir.join("new"), b"").unwrap();
        fs::remove_file(dir.join("lower-file-with-a-long-name-00007")).unwrap();
        let after = names(&dir);
        assert_eq!(after.len(), 3000, "one created, one removed");
        assert!(after.contains(&"new".to_string()));
        assert!(!after.contains(&"lower-file-with-a-long-name-00007".to_string()));
    });
    drop(mounted);
    drop(fixture);
}

#[test]
fn copy_up_preserves_data_metadata_and_xattrs() {
    with_fuse(|m| {
        let before = fs::symlink_metadata(m.path("home/user/.profile")).unwrap();
        append(m.path("home/user/.profile"), b"export B=2\n");
        let upper = m.upper.join("home/user/.profile");
        assert_eq!(fs::read(&upper).unwrap(), b"export A=1\nexport B=2\n");
        let meta = fs::symlink_metadata(&upper).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (1000, 1000, before.mode() & 0o7777)
        );
        let dir = fs::symlink_metadata(m.upper.join("home/user")).unwrap();
        assert_eq!(
            (dir.uid(), dir.gid()),
            (1000, 1000),
            "parents are copied up with their owner"
        );
        // xattrs of the file and of its parent directory come along
        fs::OpenOptions::new()
            .write(true)
            .open(m.path("etc/conf2"))
            .unwrap()
            .write_all(b"X")
            .unwrap();
        assert_eq!(
            xattr(&m.upper.join("etc/conf2"), "user.origin").as_deref(),
            Some(&b"bottom"[..])
        );
        assert_eq!(
            xattr(&m.upper.join("etc"), "user.dir").as_deref(),
            Some(&b"top etc"[..])
        );
        // a big file: data intact, set-uid bit kept
        append(m.path("bin/tool"), b"#\n");
        assert_eq!(
            fs::read(m.path("bin/tool")).unwrap(),
            b"#!/bin/sh\necho tool\n#\n"
        );
        let lib = fs::read(m.path("usr/lib/lib5.so")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(m.path("usr/lib/lib5.so"))
            .unwrap()
            .write_all(b"\x09")
            .unwrap();
        let mut expected = lib.clone();
        expected[0] = 9;
        assert_eq!(fs::read(m.path("usr/lib/lib5.so")).unwrap(), expected);
        assert!(
            fs::read_dir(m.work.join("strata"))
                .unwrap()
                .next()
                .is_none(),
            "no leftovers in the work dir"
        );
        // The copies are made there: nobody else may swap them (QA 17: a user who could
        // put their own file at a copy's name got it in the upper dir, set-uid root).
        let scratch = fs::symlink_metadata(m.work.join("strata")).unwrap();
        assert_eq!(
            (scratch.mode() & 0o7777, scratch.uid()),
            (0o700, rustix::process::geteuid().as_raw()),
            "the work dir's scratch dir"
        );
    });
}

#[test]
fn every_modification_copies_up() {
    with_fuse(|m| {
        type Op = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Op)> = vec![
            (
                "etc/conf0",
                Box::new(|p| {
                    fs::OpenOptions::new().write(true).open(p).unwrap();
                }),
            ),
            (
                "etc/conf1",
                Box::new(|p| {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(3)
                        .unwrap()
                }),
            ),
            (
                "etc/conf2",
                Box::new(|p| fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap()),
            ),
            (
                "etc/conf4",
                Box::new(|p| {
                    rustix::fs::chown(p, Some(rustix::fs::Uid::from_raw(7)), None).unwrap()
                }),
            ),
            (
                "etc/conf5",
                Box::new(|p| {
                    let t = rustix::fs::Timespec {
                        tv_sec: 5,
                        tv_nsec: 0,
                    };
                    rustix::fs::utimensat(
                        rustix::fs::CWD,
                        p,
                        &rustix::fs::Timestamps {
                            last_access: t,
                            last_modification: t,
                        },
                        rustix::fs::AtFlags::empty(),
                    )
                    .unwrap();
                }),
            ),
            (
                "etc/extra",
                Box::new(|p| {
                    rustix::fs::setxattr(p, "user.k", b"v", rustix::fs::XattrFlags::empty())
                        .unwrap()
                }),
            ),
            (
                "usr/lib/lib1.so",
                Box::new(|p| fs::hard_link(p, p.with_file_name("lib1.link")).unwrap()),
            ),
        ];
        for (rel, op) in &cases {
            assert!(!m.upper.join(rel).exists());
            op(&m.path(rel));
            assert!(
                fs::symlink_metadata(m.upper.join(rel)).is_ok(),
                "{rel} was not copied up"
            );
        }
        assert_eq!(fs::metadata(m.path("etc/conf1")).unwrap().len(), 3);
        assert_eq!(fs::metadata(m.path("etc/conf5")).unwrap().mtime(), 5);
        assert_eq!(fs::metadata(m.path("etc/conf4")).unwrap().uid(), 7);
        // rename copies up the source and whites out the old name
        fs::rename(m.path("usr/lib/lib2.so"), m.path("usr/lib/lib2.moved")).unwrap();
        assert!(m.upper.join("usr/lib/lib2.moved").is_file());
        assert!(is_whiteout(&m.upper.join("usr/lib/lib2.so")));
    });
}

#[test]
fn unlink_and_rmdir_of_lower_entries_write_whiteouts() {
    with_fuse(|m| {
        fs::remove_file(m.path("etc/conf4")).unwrap();
        assert!(is_whiteout(&m.upper.join("etc/conf4")));
        assert!(!m.path("etc/conf4").exists());
        fs::remove_dir_all(m.path("var/log/d0")).unwrap();
        assert!(is_whiteout(&m.upper.join("var/log/d0")));
        assert!(!m.path("var/log/d0").exists());
        // a file only in upper goes away without a whiteout
        fs::write(m.path("etc/new"), b"x").unwrap();
        fs::remove_file(m.path("etc/new")).unwrap();
        assert!(fs::symlink_metadata(m.upper.join("etc/new")).is_err());
        // a copied-up file that also exists below becomes a whiteout
        fs::write(m.path("etc/conf5"), b"changed").unwrap();
        fs::remove_file(m.path("etc/conf5")).unwrap();
        assert!(is_whiteout(&m.upper.join("etc/conf5")));
        assert_eq!(
            fs::remove_dir(m.path("usr/lib"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOTEMPTY)
        );
        assert_eq!(
            fs::remove_file(m.path("usr")).unwrap_err().raw_os_error(),
            Some(libc::EISDIR)
        );
        // In a set-group-ID directory a whiteout still belongs to the mounter's group, as
        // the kernel's do (it makes them in the work dir): not to the directory's.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        fs::set_permissions(m.path("var/log/d2"), fs::Permissions::from_mode(0o2755)).unwrap();
        std::os::unix::fs::chown(m.path("var/log/d2"), None, Some(65534)).unwrap();
        fs::remove_file(m.path("var/log/d2/log")).unwrap();
        let whiteout = m.upper.join("var/log/d2/log");
        assert!(is_whiteout(&whiteout));
        let meta = fs::symlink_metadata(&whiteout).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        // Each is a link of one whiteout, as the kernel's are (layer.rs, `whiteout`).
        let other = fs::symlink_metadata(m.upper.join("etc/conf4")).unwrap();
        assert_eq!(meta.ino(), other.ino());
    });
}

#[test]
fn a_lower_file_open_for_reading_keeps_its_content_when_its_name_changes() {
    // Such an open gets its real file only at the first read (union.rs OpenFile): the
    // handle must still read the lower file after the name is whited out and reused, or
    // after the directory above is renamed (copied up). Nothing reads them before, so the
    // reads below cannot come from the page cache.
    with_fuse(|m| {
        let removed = fs::File::open(m.path("etc/conf4")).unwrap();
        let moved = fs::File::open(m.path("var/log/d1/log")).unwrap();
        fs::remove_file(m.path("etc/conf4")).unwrap();
        fs::write(m.path("etc/conf4"), b"another file\n").unwrap();
        fs::rename(m.path("var/log/d1"), m.path("var/log/moved")).unwrap();
        let read = |mut f: &fs::File| {
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            v
        };
        let meta = removed.metadata().unwrap();
        assert_eq!((meta.len(), meta.nlink()), (14, 0), "every name is gone");
        assert_eq!(read(&removed), b"bottom conf 4\n");
        assert_eq!(read(&moved), b"log\n");
        assert_eq!(fs::read(m.path("etc/conf4")).unwrap(), b"another file\n");
        assert_eq!(fs::read(m.path("var/log/moved/log")).unwrap(), b"log\n");
    });
}

#[test]
fn mkdir_over_whiteout_is_opaque() {
    with_fuse(|m| {
        fs::remove_dir_all(m.path("var/log/d1")).unwrap();
        fs::create_dir(m.path("var/log/d1")).unwrap();
        assert!(
            names(&m.path("var/log/d1")).is_empty(),
            "old contents stay hidden"
        );
        assert_eq!(
            xattr(&m.upper.join("var/log/d1"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        // and a file over a whiteout is a plain file
        fs::remove_file(m.path("etc/conf2")).unwrap();
        fs::write(m.path("etc/conf2"), b"again").unwrap();
        assert_eq!(fs::read(m.upper.join("etc/conf2")).unwrap(), b"again");
        assert_eq!(
            fs::create_dir(m.path("etc")).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
    });
}

#[test]
fn rename_of_lower_directory_succeeds() {
    with_fuse(|m| {
        let ino = fs::metadata(m.path("usr/lib/lib3.so")).unwrap().ino();
        let content = fs::read(m.path("usr/lib/lib3.so")).unwrap();
        // Kernel overlayfs (redirect_dir=off) and fuse-overlayfs answer EXDEV here.
        fs::rename(m.path("usr"), m.path("usr2")).unwrap();
        assert!(!m.path("usr").exists());
        assert!(is_whiteout(&m.upper.join("usr")));
        assert_eq!(
            xattr(&m.upper.join("usr2"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(fs::read(m.path("usr2/lib/lib3.so")).unwrap(), content);
        assert_eq!(
            fs::metadata(m.path("usr2/lib/lib3.so")).unwrap().ino(),
            ino,
            "inode numbers follow the rename"
        );
        assert_eq!(names(&m.path("usr2")), ["lib", "share"]);
        // merged directory (parts in two branches) into another directory, and back
        fs::rename(m.path("var/log"), m.path("etc/log")).unwrap();
        assert_eq!(fs::read(m.path("etc/log/d0/mid")).unwrap(), b"mid\n");
        fs::rename(m.path("etc/log"), m.path("var/log")).unwrap();
        assert_eq!(names(&m.path("var/log/d0")), ["log", "mid"]);
        // a directory made in upper moves onto a whited-out name: opaque, nothing leaks
        fs::create_dir(m.path("fresh")).unwrap();
        fs::rename(m.path("fresh"), m.path("srv/gone")).unwrap();
        assert!(names(&m.path("srv/gone")).is_empty());
        // one made in upper moving into a directory with lower branches is opaque there
        // even where no lower has its name, as ovl_rename makes it; into one only in
        // upper, it is not
        fs::create_dir_all(m.path("fresh/a")).unwrap();
        fs::create_dir_all(m.path("new-top")).unwrap();
        fs::rename(m.path("fresh/a"), m.path("etc/a")).unwrap();
        fs::rename(m.path("etc/a"), m.path("new-top/a")).unwrap();
        fs::create_dir(m.path("fresh/b")).unwrap();
        fs::rename(m.path("fresh/b"), m.path("etc/b")).unwrap();
        let opaque = |rel: &str| xattr(&m.upper.join(rel), "trusted.overlay.opaque");
        assert_eq!(opaque("etc/b").as_deref(), Some(&b"y"[..]));
        assert_eq!(
            opaque("new-top/a").as_deref(),
            Some(&b"y"[..]),
            "kept when moved on"
        );
        fs::create_dir(m.path("fresh/c")).unwrap();
        fs::rename(m.path("fresh/c"), m.path("new-top/c")).unwrap();
        assert_eq!(opaque("new-top/c"), None);
        // files: lower file over lower file
        fs::rename(m.path("etc/conf0"), m.path("etc/conf1")).unwrap();
        assert_eq!(fs::read(m.path("etc/conf1")).unwrap(), b"middle conf 0\n");
        assert!(!m.path("etc/conf0").exists());
    });
}

#[test]
fn a_renamed_directory_keeps_no_whiteouts_and_kernel_overlayfs_reads_it() {
    // Nothing below a moved directory shows from a lower branch (it is opaque): whiteouts
    // of names removed before the move are dropped, as kernel overlayfs would never write
    // them there; it lists them as entries it cannot stat, and rm -rf fails (QA 17).
    let fixture = Fixture::new();
    let fuse = fixture.mount("fuse", Driver::Fuse);
    fs::remove_file(fuse.path("usr/lib/lib3.so")).unwrap();
    fs::remove_file(fuse.path("usr/share/doc/readme")).unwrap();
    assert!(is_whiteout(&fuse.upper.join("usr/lib/lib3.so")));
    fs::rename(fuse.path("usr"), fuse.path("usr2")).unwrap();
    let lib = names(&fuse.path("usr2/lib"));
    assert!(
        !lib.contains(&"lib3.so".to_string()) && !lib.is_empty(),
        "{lib:?}"
    );
    assert!(names(&fuse.path("usr2/share/doc")).is_empty());
    let mut stack = vec![fuse.upper.join("usr2")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(!is_whiteout(&path), "{} is a whiteout", path.display());
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    let (upper, work) = (fuse.upper.clone(), fuse.work.clone());
    drop(fuse);
    let kernel_mnt = upper.with_file_name("kernel-mnt");
    fs::create_dir_all(&kernel_mnt).unwrap();
    let kernel = fixture.mount_at(&upper, &work, &kernel_mnt, Driver::Overlay);
    assert_eq!(names(&kernel.path("usr2/lib")), lib);
    assert!(names(&kernel.path("usr2/share/doc")).is_empty());
    fs::remove_dir_all(kernel.path("usr2")).unwrap();
    assert!(!kernel.path("usr2").exists());
}

#[test]
fn directory_rename_copies_up_beside_other_requests() {
    // The tree copy of a big lower directory takes a while; requests elsewhere (here a
    // create, which always reaches the server) must not wait for it.
    let fixture = Fixture::new();
    let tree = fixture.lowers[2].join("tree");
    for i in 0..128 {
        let dir = tree.join(format!("d{}", i % 8));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), vec![i as u8; 2 << 20]).unwrap();
    }
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(300, "a directory rename beside a create", move || {
        let copying = m.upper.join("tree");
        let (mnt, upper) = (m.mnt.clone(), m.upper.clone());
        // Looked up now: the kernel locks the rename's parent (here the root) meanwhile.
        assert!(m.path("etc").is_dir());
        let other = std::thread::spawn(move || {
            // (A rename done before this thread looked fails the test below, not a hang.)
            while !copying.exists() && !upper.join("moved").exists() {
                std::thread::yield_now();
            }
            fs::write(mnt.join("etc/made-during-rename"), b"x").unwrap();
            let done = std::time::Instant::now();
            // The copy was still going: the rename had not happened yet.
            let renamed = upper.join("moved").exists();
            (done, renamed)
        });
        fs::rename(m.path("tree"), m.path("moved")).unwrap();
        let rename_done = std::time::Instant::now();
        let (create_done, renamed_before) = other.join().unwrap();
        assert!(
            create_done < rename_done && !renamed_before,
            "the create waited for the whole tree copy ({:?} after the rename, renamed before: {renamed_before})",
            create_done.saturating_duration_since(rename_done)
        );
        assert_eq!(fs::read(m.path("moved/d3/f3")).unwrap(), vec![3u8; 2 << 20]);
        assert_eq!(fs::read_dir(m.path("moved")).unwrap().count(), 8);
        assert!(!m.path("tree").exists());
        assert_eq!(fs::read(m.path("etc/made-during-rename")).unwrap(), b"x");
    });
    drop(mounted);
    drop(fixture);
}

#[test]
fn refused_directory_rename_copies_nothing_up() {
    with_fuse(|m| {
        let refused = |flags| {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                m.path("var/log/d1"),
                rustix::fs::CWD,
                m.path("var/log/d2"),
                flags,
            )
            .unwrap_err()
        };
        assert_eq!(
            refused(rustix::fs::RenameFlags::empty()),
            rustix::io::Errno::NOTEMPTY
        );
        assert_eq!(
            refused(rustix::fs::RenameFlags::NOREPLACE),
            rustix::io::Errno::EXIST
        );
        assert!(
            !m.upper.join("var/log/d1").exists(),
            "a rename that fails leaves the upper branch alone"
        );
    });
}

#[test]
fn hard_links_share_inode_and_link_count() {
    with_fuse(|m| {
        fs::write(m.path("etc/a"), b"one").unwrap();
        fs::hard_link(m.path("etc/a"), m.path("srv/b")).unwrap();
        let (a, b) = (
            fs::metadata(m.path("etc/a")).unwrap(),
            fs::metadata(m.path("srv/b")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        fs::write(m.path("srv/b"), b"two").unwrap();
        assert_eq!(fs::read(m.path("etc/a")).unwrap(), b"two");
        fs::remove_file(m.path("etc/a")).unwrap();
        assert_eq!(fs::metadata(m.path("srv/b")).unwrap().nlink(), 1);
        // linking a lower file copies it up first
        fs::hard_link(m.path("etc/top"), m.path("etc/top2")).unwrap();
        assert_eq!(
            fs::metadata(m.path("etc/top")).unwrap().ino(),
            fs::metadata(m.path("etc/top2")).unwrap().ino()
        );
    });
}

#[test]
fn lower_hard_links_stay_one_file_after_copy_up() {
    let fixture = Fixture::with_lower_links();
    let m = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let inner = m.clone();
    deadline(60, "lower hard links", move || {
        let m = inner;
        let (a, b) = (
            fs::metadata(m.path("etc/conf1")).unwrap(),
            fs::metadata(m.path("etc/conf1.hard")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        fs::write(m.path("etc/conf1.hard"), b"changed").unwrap();
        assert_eq!(
            fs::read(m.path("etc/conf1")).unwrap(),
            b"changed",
            "kernel overlayfs with index=off splits them"
        );
        let (a, b) = (
            fs::metadata(m.upper.join("etc/conf1")).unwrap(),
            fs::metadata(m.upper.join("etc/conf1.hard")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    });
}

#[test]
fn renaming_one_name_of_lower_hard_links_keeps_both_readable() {
    // Each mount: the other name known to the kernel before the rename (both names stay
    // one file, as after a write), or looked up only after it (it shows the lower file).
    for (round, known) in [(0, false), (1, true)] {
        let fixture = Fixture::with_lower_links();
        let m = std::sync::Arc::new(fixture.mount(&format!("fuse{round}"), Driver::Fuse));
        let inner = m.clone();
        deadline(60, "rename of a lower hard link", move || {
            let m = inner;
            let before = fs::read(m.path("etc/conf1")).unwrap();
            if known {
                fs::metadata(m.path("etc/conf1.hard")).unwrap();
            }
            fs::metadata(m.path("etc/conf1")).unwrap();
            fs::rename(m.path("etc/conf1"), m.path("etc/conf1.moved")).unwrap();
            assert_eq!(
                fs::read(m.path("etc/conf1.moved")).unwrap(),
                before,
                "known={known}"
            );
            assert_eq!(
                fs::read(m.path("etc/conf1.hard")).unwrap(),
                before,
                "known={known}"
            );
            assert!(!m.path("etc/conf1").exists());
            let (moved, hard) = (
                fs::metadata(m.path("etc/conf1.moved")).unwrap(),
                fs::metadata(m.path("etc/conf1.hard")).unwrap(),
            );
            if known {
                assert_eq!((moved.ino(), moved.nlink()), (hard.ino(), 2));
            } else {
                assert_ne!(moved.ino(), hard.ino());
                assert_eq!(moved.nlink(), 1);
            }
        });
    }
}

#[test]
fn create_racing_unlink_of_lower_names_never_opens_a_whiteout() {
    // An open(O_CREAT) whose lookup found a name another thread then unlinked (leaving a
    // whiteout) must not open the whiteout (ENXIO): the server says ESTALE and the kernel
    // walks again, and creates the file.
    with_fuse(|m| {
        let names: Vec<PathBuf> = (0..4).map(|i| m.path(&format!("etc/conf{i}"))).collect();
        let errors = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
        std::thread::scope(|scope| {
            for t in 0..6 {
                let (names, errors) = (&names, &errors);
                scope.spawn(move || {
                    for k in 0..600 {
                        let name = &names[k % names.len()];
                        let result = if (k + t) % 3 == 0 {
                            fs::remove_file(name).map(drop)
                        } else {
                            fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(name)
                                .map(drop)
                        };
                        match result {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                *errors.lock().unwrap().entry(e.to_string()).or_default() += 1
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap();
        assert!(
            !errors.keys().any(|e| e.contains("No such device")),
            "{errors:?}"
        );
        // A second race within the kernel's one retry can still say ESTALE, rarely.
        let stale: usize = errors.values().sum();
        assert!(stale <= 10, "{errors:?}");
    });
}

#[test]
fn a_reader_opened_before_a_copy_up_reads_the_copy() {
    // As through overlayfs since 4.19: a handle of the lower file, opened before another
    // one's write copied the file up, reads the copy; and its reads must not leave the old
    // data in the page cache that a later open shares.
    with_fuse(|m| {
        let path = m.path("etc/conf0");
        let mut early = fs::File::open(&path).unwrap();
        fs::write(&path, b"written after the open\n").unwrap();
        let mut seen = String::new();
        early.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "written after the open\n");
        drop(early);
        assert_eq!(fs::read(&path).unwrap(), b"written after the open\n");

        // appended: the old handle sees the whole file, not the lower file's bytes
        let path = m.path("etc/conf1");
        let lower = fs::read(&path).unwrap();
        let early = fs::File::open(&path).unwrap();
        let mut appender = fs::OpenOptions::new().append(true).open(&path).unwrap();
        appender.write_all(b"more\n").unwrap();
        drop(appender);
        let mut all = lower.clone();
        all.extend_from_slice(b"more\n");
        let mut buf = vec![0u8; 4096];
        let n = std::os::unix::fs::FileExt::read_at(&early, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], &all[..]);
    });
}

/// A big lower file opened only to append is copied up in the background (src/pending.rs):
/// the open returns before the copy's data is there. Whatever reads, changes, syncs,
/// renames or links the copy next waits for that, and sees the whole file.
#[test]
fn a_copy_ups_job_gives_way_to_requests_and_a_rename_waits_only_for_jobs_it_moves() {
    // A big lower file opened to append shows at once, and a job fills its copy in the
    // background (pending.rs). While the union serves requests without a pause, the job
    // gives way: 8 MiB a second at most. A rename of another directory does not wait for
    // it; a rename of the directory holding it does, and has it finish at full speed.
    use std::sync::atomic::{AtomicBool, Ordering};
    let fixture = Fixture::new();
    let data = crate::common::patterned(256 << 20);
    fs::create_dir(fixture.lowers[1].join("logs")).unwrap();
    fs::write(fixture.lowers[1].join("logs/big.log"), &data).unwrap();
    let mounted = fixture.mount("fuse", Driver::Fuse);
    let (mnt, work) = (mounted.mnt.clone(), mounted.work.clone());
    deadline(120, "a job giving way to requests", move || {
        let busy = AtomicBool::new(true);
        fs::create_dir(mnt.join("busy")).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // (each a CREATE and an UNLINK the server answers: no pause of 2 ms)
                let path = mnt.join("busy/file");
                while busy.load(Ordering::Relaxed) {
                    fs::write(&path, b"x").unwrap();
                    fs::remove_file(&path).unwrap();
                }
            });
            // (stops the requests when the checks end, as they pass or fail)
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&busy);
            append(mnt.join("logs/big.log"), b"tail\n");
            assert_eq!(crate::common::copy_up_records(&work), ["big.log"]);
            fs::rename(mnt.join("var/log/d0"), mnt.join("var/log/d0.moved")).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(2));
            assert_eq!(
                crate::common::copy_up_records(&work),
                ["big.log"],
                "256 MiB filled in 2 s of steady requests: the job did not give way"
            );
            fs::rename(mnt.join("logs"), mnt.join("logs.moved")).unwrap();
            assert!(
                crate::common::copy_up_records(&work).is_empty(),
                "a rename of the directory returned before the copy in it was done"
            );
        });
        let read = fs::read(mnt.join("logs.moved/big.log")).unwrap();
        assert!(read.len() == data.len() + 5 && read[..data.len()] == data[..]);
        assert_eq!(&read[data.len()..], b"tail\n");
    });
    drop(mounted);
}

#[test]
fn appends_to_a_big_lower_file_keep_its_data_whatever_comes_next() {
    let fixture = Fixture::new();
    let data = std::sync::Arc::new(crate::common::patterned(96 << 20));
    let names = [
        "read.log",
        "race.log",
        "sync.log",
        "moved.log",
        "linked.log",
        "cut.log",
        "setuid",
        "unappend.log",
        "dsync.log",
        "rdwr.db",
    ];
    for name in names {
        fs::write(fixture.lowers[1].join(name), &*data).unwrap();
    }
    let setuid = fixture.lowers[1].join("setuid");
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).unwrap();
    let mut mounted = fixture.mount("fuse", Driver::Fuse);
    let m = std::sync::Arc::new((
        mounted.mnt.clone(),
        mounted.work.clone(),
        mounted.upper.clone(),
    ));
    let whole = {
        let data = data.clone();
        move |tail: &str| [&data[..], tail.as_bytes()].concat()
    };
    let check = whole.clone();
    let data_ = data.clone();
    deadline(300, "appends to big lower files", move || {
        let data = data_;
        let (mnt, work, upper) = &*m;
        let read = mnt.join("read.log");
        append(&read, b"one\n");
        assert!(
            fs::read(&read).unwrap() == check("one\n"),
            "read.log reads whole"
        );
        append(&read, b"two\n");
        assert!(
            fs::read(&read).unwrap() == check("one\ntwo\n"),
            "read.log, appended twice"
        );

        // a reader that opens as soon as the copy shows (its fill takes a while longer)
        // reads it whole
        let race = mnt.join("race.log");
        let appender = {
            let race = race.clone();
            std::thread::spawn(move || append(&race, b"r"))
        };
        while !upper.join("race.log").exists() {
            std::hint::spin_loop();
        }
        // (the fill of 96 MiB takes a few milliseconds more, from the start: the end first)
        std::thread::sleep(std::time::Duration::from_millis(1));
        let reader = fs::File::open(&race).unwrap();
        let mut end = vec![0u8; 1 << 20];
        let at = data.len() - end.len();
        std::os::unix::fs::FileExt::read_exact_at(&reader, &mut end, at as u64).unwrap();
        assert!(
            end == data[at..],
            "race.log's last MiB, read as its copy showed"
        );
        let read = fs::read(&race).unwrap();
        appender.join().unwrap();
        assert!(
            read == check("") || read == check("r"),
            "race.log read as its copy showed: {} bytes, not the file's",
            read.len()
        );

        // an fsync returns once the copy is on the disk: its record is gone
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("sync.log"))
            .unwrap();
        file.write_all(b"s").unwrap();
        file.sync_all().unwrap();
        drop(file);
        let records = crate::common::copy_up_records(work);
        assert!(
            !records.contains(&"sync.log".to_string()),
            "after fsync: {records:?}"
        );

        // a rename waits for every copy to be on the disk
        append(mnt.join("moved.log"), b"m");
        fs::rename(mnt.join("moved.log"), mnt.join("moved2.log")).unwrap();
        assert_eq!(crate::common::copy_up_records(work), Vec::<String>::new());
        assert!(
            fs::read(mnt.join("moved2.log")).unwrap() == check("m"),
            "moved2.log"
        );

        append(mnt.join("linked.log"), b"l");
        fs::hard_link(mnt.join("linked.log"), mnt.join("linked2.log")).unwrap();
        let (a, b) = (
            fs::metadata(mnt.join("linked.log")).unwrap(),
            fs::metadata(mnt.join("linked2.log")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one file, two names");
        assert!(
            fs::read(mnt.join("linked2.log")).unwrap() == check("l"),
            "linked2.log"
        );

        // a truncate while the copy is being filled cuts the whole file, not a part
        let cut = mnt.join("cut.log");
        let mut appender = fs::OpenOptions::new().append(true).open(&cut).unwrap();
        appender.write_all(b"c").unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(10)
            .unwrap();
        appender.write_all(b"d").unwrap();
        drop(appender);
        assert_eq!(fs::read(&cut).unwrap(), [&check("")[..10], b"d"].concat());

        // an appender that stops appending (F_SETFL) and writes where the fill has yet to
        // come (it comes last just before the end) keeps what it wrote
        let unappend = mnt.join("unappend.log");
        let file = fs::OpenOptions::new().append(true).open(&unappend).unwrap();
        rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty()).unwrap();
        let at = data.len() as u64 - 3;
        std::os::unix::fs::FileExt::write_all_at(&file, b"XYZ!", at).unwrap();
        drop(file);
        assert!(
            fs::read(&unappend).unwrap() == [&data[..data.len() - 3], b"XYZ!"].concat(),
            "unappend.log: the write below its end was overwritten by the fill"
        );

        // a write synced by itself (RWF_DSYNC) is on the disk with its copy: no record left
        // to undo it, for an appender and for a writer that opened read-write
        for (name, flags) in [("dsync.log", "a"), ("rdwr.db", "rw")] {
            let file = fs::OpenOptions::new()
                .append(flags == "a")
                .read(flags == "rw")
                .write(flags == "rw")
                .open(mnt.join(name))
                .unwrap();
            rustix::io::pwritev2(
                &file,
                &[std::io::IoSlice::new(b"D")],
                0,
                rustix::io::ReadWriteFlags::DSYNC,
            )
            .unwrap();
            let records = crate::common::copy_up_records(work);
            assert!(
                !records.contains(&name.to_string()),
                "{name} after a RWF_DSYNC write: {records:?}"
            );
        }

        // set-id bits would not survive the background writes: that copy is filled first
        append(mnt.join("setuid"), b"u");
        let meta = fs::metadata(mnt.join("setuid")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o4755, "setuid's mode");
    });
    mounted.unmount();
    let upper = &mounted.upper;
    for (name, tail) in [
        ("read.log", "one\ntwo\n"),
        ("sync.log", "s"),
        ("moved2.log", "m"),
    ] {
        assert!(
            fs::read(upper.join(name)).unwrap() == whole(tail),
            "upper {name}"
        );
    }
    assert!(
        fs::read(upper.join("setuid")).unwrap() == whole("u"),
        "upper setuid"
    );
    assert_eq!(
        crate::common::copy_up_records(&mounted.work),
        Vec::<String>::new()
    );
}

#[test]
fn a_removed_directory_held_open_still_answers_fstat() {
    // A shell whose cwd was removed, or a program holding the directory open: fstat(2)
    // answers with nlink 0, as on any file system, rather than ESTALE.
    with_fuse(|m| {
        for (dir, lower) in [("new-dir", false), ("var/log/d1", true)] {
            let path = m.path(dir);
            if !lower {
                fs::create_dir(&path).unwrap();
            }
            for entry in fs::read_dir(&path).unwrap() {
                let entry = entry.unwrap().path();
                if entry.is_dir() {
                    fs::remove_dir_all(&entry).unwrap();
                } else {
                    fs::remove_file(&entry).unwrap();
                }
            }
            let held = fs::File::open(&path).unwrap();
            fs::remove_dir(&path).unwrap();
            let meta = held.metadata().unwrap();
            assert!(meta.is_dir(), "{dir}");
            assert_eq!(meta.nlink(), 0, "{dir}");
        }
    });
}

#[test]
fn inode_flags_are_read_and_set_as_chattr_does() {
    use std::os::fd::AsRawFd;
    const GETFLAGS: libc::c_ulong = 0x8008_6601;
    const SETFLAGS: libc::c_ulong = 0x4008_6602;
    const IMMUTABLE: libc::c_int = 0x10;
    const APPEND: libc::c_int = 0x20;
    fn flags(path: &Path) -> std::io::Result<libc::c_int> {
        let file = fs::File::open(path)?;
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int.
        match unsafe { libc::ioctl(file.as_raw_fd(), GETFLAGS, &mut flags) } {
            0 => Ok(flags),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
    fn set_flags(path: &Path, flags: libc::c_int) -> std::io::Result<()> {
        let file = fs::File::open(path)?;
        // SAFETY: FS_IOC_SETFLAGS reads one int.
        match unsafe { libc::ioctl(file.as_raw_fd(), SETFLAGS, &flags) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
    with_fuse(|m| {
        // a lower file: read from the lower branch; set on its copy
        let top = m.path("etc/top");
        let before = flags(&top).unwrap();
        set_flags(&top, before | IMMUTABLE).unwrap();
        assert_eq!(flags(&top).unwrap() & IMMUTABLE, IMMUTABLE);
        assert!(m.upper.join("etc/top").exists(), "set on the upper copy");
        let err = fs::remove_file(&top).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        set_flags(&top, before).unwrap();
        // append-only: appends pass, truncation does not
        let log = m.path("etc/log");
        fs::write(&log, b"one\n").unwrap();
        let base = flags(&log).unwrap();
        set_flags(&log, base | APPEND).unwrap();
        append(&log, b"two\n");
        assert!(fs::write(&log, b"gone").is_err());
        // a writer that does not append may not open it (the kernel's may_open)
        let err = fs::OpenOptions::new().write(true).open(&log).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        set_flags(&log, base).unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"one\ntwo\n");
        // directories too (lsattr -d)
        flags(&m.path("etc")).unwrap();
    });
}

#[test]
fn a_default_acl_decides_new_entries_modes_in_place_and_over_whiteouts() {
    // u::rwx, u:1000:rwx, g::r-x, m::rwx, o::r-x: a file asked for as 0666 gets 0664 and an
    // access ACL with mask rw- (the umask does not apply below a default ACL), a directory
    // asked for as 0777 gets 0775 and the default ACL too; the same over a whiteout, where
    // the entry is built in the work dir, away from the parent's default ACL.
    let entry = |tag: u16, perm: u16, id: u32| {
        [
            &tag.to_le_bytes()[..],
            &perm.to_le_bytes()[..],
            &id.to_le_bytes()[..],
        ]
        .concat()
    };
    let acl: Vec<u8> = [
        2u32.to_le_bytes().to_vec(),
        entry(0x01, 7, u32::MAX),
        entry(0x02, 7, 1000),
        entry(0x04, 5, u32::MAX),
        entry(0x10, 7, u32::MAX),
        entry(0x20, 5, u32::MAX),
    ]
    .concat();
    with_fuse(move |m| {
        let dir = m.path("etc");
        xattr::set(&dir, "system.posix_acl_default", &acl).unwrap();
        fs::remove_file(m.path("etc/conf0")).unwrap();
        for name in ["fresh", "conf0"] {
            let file = dir.join(name);
            fs::File::create(&file).unwrap();
            assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o664, "{name}");
            let access = xattr::get(&file, "system.posix_acl_access")
                .unwrap()
                .unwrap();
            // the mask entry (0x10) is now rw-
            let mask = access[4..]
                .chunks(8)
                .find(|e| u16::from_le_bytes([e[0], e[1]]) == 0x10)
                .map(|e| u16::from_le_bytes([e[2], e[3]]));
            assert_eq!(mask, Some(6), "{name}");
        }
        fs::create_dir(dir.join("subdir")).unwrap();
        let sub = fs::metadata(dir.join("subdir")).unwrap();
        assert_eq!(sub.mode() & 0o777, 0o775);
        assert!(
            xattr::get(dir.join("subdir"), "system.posix_acl_default")
                .unwrap()
                .is_some()
        );
        // a directory over a whiteout (a lower one removed), built in the work dir
        let logs = m.path("var/log");
        xattr::set(&logs, "system.posix_acl_default", &acl).unwrap();
        fs::remove_dir_all(logs.join("d1")).unwrap();
        fs::create_dir(logs.join("d1")).unwrap();
        let d1 = fs::metadata(logs.join("d1")).unwrap();
        assert_eq!(d1.mode() & 0o777, 0o775, "directory over a whiteout");
        assert!(
            xattr::get(logs.join("d1"), "system.posix_acl_default")
                .unwrap()
                .is_some()
        );
        // an O_TMPFILE gets the default ACL's bits too, not the 0666 asked for
        let tmp = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o666)
            .open(&dir)
            .unwrap();
        assert_eq!(tmp.metadata().unwrap().mode() & 0o777, 0o664, "O_TMPFILE");
    });
}

#[test]
fn a_new_file_has_no_capability_until_one_is_set() {
    // The server answers a new file's security.capability without a syscall until a
    // security xattr is set through the mount: then the real one is read.
    with_fuse(|m| {
        let file = m.path("etc/new-tool");
        fs::write(&file, b"#!/bin/sh\n").unwrap();
        assert_eq!(xattr::get(&file, "security.capability").unwrap(), None);
        // VFS_CAP_REVISION_2, effective; permitted CAP_NET_BIND_SERVICE (10)
        let mut cap = Vec::new();
        cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
        cap.extend_from_slice(&[0u8; 12]);
        xattr::set(&file, "security.capability", &cap).unwrap();
        assert_eq!(
            xattr::get(&file, "security.capability").unwrap().as_deref(),
            Some(&cap[..])
        );
        // a write by the owner keeps it (root); the value still reads back
        assert!(
            xattr::list(&file)
                .unwrap()
                .any(|n| n == "security.capability")
        );
    });
}

#[test]
fn a_copy_up_leaves_the_parent_directory_times_alone() {
    // Copying a file up changes nothing in the merged view: its directory (copied up
    // first, with the lower times) keeps them, as overlayfs puts them back.
    with_fuse(|m| {
        let dir = m.path("var/log/d0");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        fs::File::open(&dir)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
            .unwrap();
        let before = fs::metadata(&dir).unwrap().mtime();
        assert_eq!(before, 1_000_000_000);
        fs::set_permissions(dir.join("log"), fs::Permissions::from_mode(0o600)).unwrap();
        let upper = fs::metadata(m.upper.join("var/log/d0")).unwrap();
        assert_eq!(upper.mtime(), before, "the upper copy of the directory");
        // a real change still moves it
        std::thread::sleep(std::time::Duration::from_millis(1100));
        fs::write(dir.join("new"), b"x").unwrap();
        assert_ne!(
            fs::metadata(m.upper.join("var/log/d0")).unwrap().mtime(),
            before
        );
    });
}

#[test]
fn reads_and_rmdirs_racing_removals_never_see_a_whiteout_as_the_file() {
    // A GETATTR that stats a name whited out a moment before must not answer with the
    // whiteout (a device where the kernel has a file or directory: it calls the inode bad,
    // and every later use gives EIO).
    with_fuse(|m| {
        let errors = churn_files_and_dirs(&|rel| m.path(rel));
        assert!(errors.is_empty(), "{errors:?}");
    });
}

/// Eight threads unlink, write and read `etc/conf0..3` and remove, make and stat
/// `var/log/d0..3` (emptied first) of a mount of the fixture, through `path`; returns the
/// EIO errors they met, by message. The real inodes of removed files and directories are
/// recycled at once for new ones, by requests served beside each other.
pub(crate) fn churn_files_and_dirs(
    path: &(dyn Fn(&str) -> PathBuf + Sync),
) -> std::collections::BTreeMap<String, usize> {
    let files: Vec<PathBuf> = (0..4).map(|i| path(&format!("etc/conf{i}"))).collect();
    let dirs: Vec<PathBuf> = (0..4).map(|i| path(&format!("var/log/d{i}"))).collect();
    for dir in &dirs {
        for entry in fs::read_dir(dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    let errors = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (files, dirs, errors) = (&files, &dirs, &errors);
            scope.spawn(move || {
                for k in 0..1500 {
                    let (file, dir) = (&files[k % 4], &dirs[k % 4]);
                    let result = match (k + t) % 6 {
                        0 => fs::remove_file(file),
                        1 => fs::write(file, b"y"),
                        2 => fs::read(file).map(drop),
                        3 => fs::remove_dir(dir),
                        4 => fs::create_dir(dir),
                        _ => fs::metadata(dir).map(drop),
                    };
                    if let Err(e) = result
                        && e.raw_os_error() == Some(libc::EIO)
                    {
                        *errors.lock().unwrap().entry(e.to_string()).or_default() += 1;
                    }
                }
            });
        }
    });
    errors.into_inner().unwrap()
}

#[test]
fn symlinks_fifos_and_devices() {
    with_fuse(|m| {
        symlink("../etc/top", m.path("bin/top-link")).unwrap();
        assert_eq!(
            fs::read_link(m.path("bin/top-link")).unwrap(),
            Path::new("../etc/top")
        );
        assert_eq!(fs::read(m.path("bin/top-link")).unwrap(), b"top\n");
        assert_eq!(
            fs::read(m.path("bin/tool-link")).unwrap(),
            b"#!/bin/sh\necho tool\n"
        );
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.path("etc/fifo2"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let fifo = m.path("etc/fifo2");
        let writer = std::thread::spawn(move || {
            fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .unwrap()
                .write_all(b"through the fifo")
                .unwrap()
        });
        let mut got = String::new();
        fs::File::open(m.path("etc/fifo2"))
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        writer.join().unwrap();
        assert_eq!(got, "through the fifo");
        // a device node from a lower branch and a new one both work (mounted with dev)
        fs::write(m.path("etc/null"), b"discarded").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.path("etc/zero"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 5),
        )
        .unwrap();
        let mut buf = [1u8; 8];
        fs::File::open(m.path("etc/zero"))
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        assert_eq!(buf, [0; 8]);
        assert_eq!(
            fs::symlink_metadata(m.path("etc/zero")).unwrap().rdev(),
            rustix::fs::makedev(1, 5)
        );
        // A device 0/0 would be a whiteout in the upper: refused, as overlayfs does.
        assert_eq!(
            rustix::fs::mknodat(
                rustix::fs::CWD,
                m.path("etc/whiteout"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            ),
            Err(rustix::io::Errno::PERM)
        );
        assert!(!m.upper.join("etc/whiteout").exists());
    });
}

/// How many regular files are under `dir`, at any depth (overlayfs keeps a whiteout in
/// its work dir to link whiteouts from).
fn files_under(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                files_under(&e.path())
            } else {
                usize::from(kind.is_file())
            }
        })
        .sum()
}

/// open(2) with O_TMPFILE makes an unnamed file, as under overlayfs, in a lower directory
/// (copied up first): it reads back, has no link, shows in no listing, and linkat(2) names
/// it, also over whiteouts (a lower's and the upper's); with O_EXCL it can never be named.
/// Unnamed ones leave nothing.
#[test]
fn o_tmpfile_makes_an_unnamed_file_that_link_can_name() {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let fixture = Fixture::new();
    let fuse = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let overlay = fixture.mount("overlay", Driver::Overlay);
    let run = |m: &Mounted| {
        let tmpfile = |flags: OFlags| {
            rustix::fs::openat(
                CWD,
                m.path("etc"),
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC | flags,
                Mode::from_raw_mode(0o640),
            )
            .unwrap()
        };
        let listing = names(&m.path("etc"));
        let named = tmpfile(OFlags::empty());
        rustix::io::write(&named, b"unnamed so far\n").unwrap();
        rustix::fs::fchmod(&named, Mode::from_raw_mode(0o604)).unwrap();
        let st = rustix::fs::fstat(&named).unwrap();
        let before = (st.st_mode & 0o7777, st.st_nlink, st.st_size);
        let listed_unnamed = names(&m.path("etc")) == listing;
        let link = |fd: &std::os::fd::OwnedFd, name: &str| {
            rustix::fs::linkat(fd, "", CWD, m.path(name), AtFlags::EMPTY_PATH)
        };
        // Over a whiteout in a lower ("conf3") and over one in the upper ("conf5").
        fs::remove_file(m.path("etc/conf5")).unwrap();
        let linked = (
            link(&named, "etc/named"),
            link(&named, "etc/conf3"),
            link(&named, "etc/conf5"),
        );
        let st = rustix::fs::fstat(&named).unwrap();
        let excl = tmpfile(OFlags::EXCL);
        let refused = link(&excl, "etc/never");
        drop((named, excl, tmpfile(OFlags::empty())));
        let meta = fs::metadata(m.path("etc/named")).unwrap();
        (
            before,
            listed_unnamed,
            linked,
            st.st_nlink,
            refused,
            fs::read(m.path("etc/named")).unwrap(),
            fs::read(m.path("etc/conf3")).unwrap(),
            fs::read(m.path("etc/conf5")).unwrap(),
            (meta.mode() & 0o7777, meta.nlink()),
            names(&m.path("etc")).len() - listing.len(),
            names(&m.upper.join("etc")),
            files_under(&m.work),
        )
    };
    let theirs = run(&overlay);
    let m = fuse.clone();
    let ours = deadline(60, "O_TMPFILE", move || run(&m));
    assert_eq!(
        (&theirs.0, theirs.1, &theirs.2, theirs.3, &theirs.4),
        (
            &(0o604, 0, 15),
            true,
            &(Ok(()), Ok(()), Ok(())),
            3,
            &Err(rustix::io::Errno::NOENT)
        ),
        "overlayfs"
    );
    assert_eq!(theirs.10, ["conf3", "conf5", "named"], "overlayfs's upper");
    assert_eq!(theirs.11, 0, "files left in overlayfs's work dir");
    assert_eq!(ours, theirs, "strata-unionfs, then overlayfs");
    drop(fuse);
    drop(overlay);
    drop(fixture);
}

/// SEEK_DATA and SEEK_HOLE find a sparse file's data and holes, as under overlayfs, in a
/// lower file and in its copy-up: without the server's answer the kernel took the whole
/// file for data, and the copy-up filled the holes.
#[test]
fn sparse_files_show_their_holes() {
    let fixture = Fixture::new();
    let lower = fixture.lowers[2].join("etc/sparse");
    let file = fs::File::create(&lower).unwrap();
    file.set_len(8 << 20).unwrap();
    rustix::io::pwrite(&file, b"data", 4 << 20).unwrap();
    drop(file);
    let fuse = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let overlay = fixture.mount("overlay", Driver::Overlay);
    let run = |m: &Mounted| {
        let seeks = |file: &fs::File| {
            [
                rustix::fs::seek(file, rustix::fs::SeekFrom::Data(0)),
                rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(0)),
                rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(4 << 20)),
                rustix::fs::seek(file, rustix::fs::SeekFrom::Data(5 << 20)),
            ]
        };
        let lower = seeks(&fs::File::open(m.path("etc/sparse")).unwrap());
        let copy = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("etc/sparse"))
            .unwrap();
        let copied = (seeks(&copy), fs::read(m.path("etc/sparse")).unwrap());
        (lower, copied.0, copied.1)
    };
    let theirs = run(&overlay);
    let m = fuse.clone();
    let ours = deadline(60, "seeks in a sparse file", move || run(&m));
    // The data ends at a block boundary, and in a copy at most at the end of overlayfs's
    // copy chunk (1 MiB); the rest is as in the lower file.
    let shape = |seeks: [rustix::io::Result<u64>; 4]| {
        let hole_after_data = *seeks[2].as_ref().unwrap();
        assert!(
            hole_after_data > 4 << 20 && hole_after_data <= 5 << 20,
            "{seeks:?}"
        );
        [seeks[0], seeks[1], seeks[3]]
    };
    let sparse = [Ok(4 << 20), Ok(0), Err(rustix::io::Errno::NXIO)];
    assert_eq!(
        (shape(theirs.0), shape(theirs.1)),
        (sparse, sparse),
        "overlayfs"
    );
    let mut bytes = vec![0u8; 8 << 20];
    bytes[4 << 20..(4 << 20) + 4].copy_from_slice(b"data");
    assert!(theirs.2 == bytes, "overlayfs's copy");
    assert_eq!(ours.0, theirs.0, "strata-unionfs, then overlayfs");
    assert_eq!(shape(ours.1), sparse, "strata-unionfs's copy");
    assert!(ours.2 == bytes, "strata-unionfs's copy: its bytes");
    let allocated = fs::metadata(fuse.upper.join("etc/sparse"))
        .unwrap()
        .blocks()
        * 512;
    assert!(
        allocated <= 1 << 20,
        "strata-unionfs's copy: {allocated} bytes on disk"
    );
    drop(fuse);
    drop(overlay);
    drop(fixture);
}

#[test]
fn xattrs_work_and_private_ones_are_hidden() {
    with_fuse(|m| {
        let opaque = m.path("opt/old");
        let mut list = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(&opaque, &mut list[..]).unwrap();
        assert!(
            !String::from_utf8_lossy(&list[..n]).contains("overlay"),
            "trusted.overlay.* is hidden"
        );
        assert!(xattr(&opaque, "trusted.overlay.opaque").is_none());
        assert_eq!(
            xattr(&m.path("etc/conf2"), "user.origin").as_deref(),
            Some(&b"bottom"[..])
        );
        rustix::fs::setxattr(
            m.path("etc/conf2"),
            "user.new",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        // Removing what a lower file lacks fails and changes nothing: no copy-up.
        assert_eq!(
            rustix::fs::removexattr(m.path("var/log/d2/log"), "user.none"),
            Err(rustix::io::Errno::NODATA)
        );
        assert!(
            !m.upper.join("var/log/d2").exists(),
            "copied up for nothing"
        );
        rustix::fs::removexattr(m.path("etc/conf2"), "user.origin").unwrap();
        assert!(xattr(&m.path("etc/conf2"), "user.origin").is_none());
        assert_eq!(
            xattr(&m.path("etc/conf2"), "user.new").as_deref(),
            Some(&b"1"[..])
        );
    });
}

/// A client's `trusted.overlay.*` attributes (an overlay branch copied with its xattrs into
/// a container, say) are its own, stored escaped as overlayfs has stored them since Linux
/// 6.7: set, read, listed and removed as overlayfs does it, and never taken for the
/// union's (a directory marked so stays merged). Before, they were refused (EOPNOTSUPP).
#[test]
fn a_clients_overlay_xattrs_are_stored_escaped_as_overlayfs_stores_them() {
    let fixture = Fixture::new();
    let fuse = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let overlay = fixture.mount("overlay", Driver::Overlay);
    let run = |m: &Mounted| {
        let set = |rel: &str, name: &str, value: &[u8]| {
            rustix::fs::lsetxattr(m.path(rel), name, value, rustix::fs::XattrFlags::empty())
        };
        let list = |rel: &str| {
            let mut buf = vec![0u8; 4096];
            let n = rustix::fs::llistxattr(m.path(rel), &mut buf[..]).unwrap();
            let mut names: Vec<String> = buf[..n]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            names.sort();
            names
        };
        let stored = |rel: &str| {
            let mut buf = vec![0u8; 4096];
            let n = rustix::fs::llistxattr(m.upper.join(rel), &mut buf[..]).unwrap_or(0);
            let mut names: Vec<String> = buf[..n]
                .split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .filter(|s| s.starts_with("trusted.overlay.overlay."))
                .collect();
            names.sort();
            names
        };
        let before = xattr(&m.path("opt/old"), "trusted.overlay.opaque");
        let results = [
            set("etc/conf2", "trusted.overlay.foo", b"bar"),
            set("etc/conf2", "trusted.overlay.overlay.x", b"1"),
            set("etc", "trusted.overlay.opaque", b"y"),
        ];
        let after = (
            xattr(&m.path("etc/conf2"), "trusted.overlay.foo"),
            xattr(&m.path("etc/conf2"), "trusted.overlay.overlay.x"),
            list("etc/conf2"),
            stored("etc/conf2"),
            stored("etc"),
            names(&m.path("etc")),
        );
        let removed = rustix::fs::lremovexattr(m.path("etc/conf2"), "trusted.overlay.foo");
        (before, results, after, removed, list("etc/conf2"))
    };
    let f = fuse.clone();
    let ours = deadline(60, "trusted.overlay.* through the mount", move || run(&f));
    let theirs = run(&overlay);
    assert_eq!(theirs.1, [Ok(()), Ok(()), Ok(())], "overlayfs: {theirs:?}");
    assert!(
        theirs.2.5.len() > 1,
        "overlayfs: etc lost its lower entries: {theirs:?}"
    );
    assert_eq!(ours, theirs, "strata-unionfs, then overlayfs");
    drop(fuse);
    drop(overlay);
    drop(fixture);
}

#[test]
fn statfs_fsync_and_flock() {
    with_fuse(|m| {
        let (mnt, upper) = (
            rustix::fs::statvfs(&m.mnt).unwrap(),
            rustix::fs::statvfs(&m.upper).unwrap(),
        );
        assert_eq!((mnt.f_blocks, mnt.f_bsize), (upper.f_blocks, upper.f_bsize));
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(m.path("etc/synced"))
            .unwrap();
        file.write_all(b"durable").unwrap();
        file.sync_all().unwrap();
        file.sync_data().unwrap();
        fs::File::open(m.path("etc")).unwrap().sync_all().unwrap();
        let first = fs::File::open(m.path("etc/conf0")).unwrap();
        let second = fs::File::open(m.path("etc/conf0")).unwrap();
        rustix::fs::flock(&first, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert_eq!(
            rustix::fs::flock(
                &second,
                rustix::fs::FlockOperation::NonBlockingLockExclusive
            )
            .unwrap_err(),
            rustix::io::Errno::WOULDBLOCK
        );
        rustix::fs::flock(&first, rustix::fs::FlockOperation::Unlock).unwrap();
        rustix::fs::flock(
            &second,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .unwrap();
    });
}

#[test]
fn inode_numbers_are_stable() {
    with_fuse(|m| {
        let paths = ["etc/conf0", "usr/lib", "var/log/d2/log", "bin/tool-link"];
        let before: Vec<u64> = paths
            .iter()
            .map(|p| fs::symlink_metadata(m.path(p)).unwrap().ino())
            .collect();
        fs::set_permissions(m.path("etc/conf0"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(m.path("usr/lib/new"), b"x").unwrap();
        // make the kernel forget what it cached, so the numbers come from us again
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        let after: Vec<u64> = paths
            .iter()
            .map(|p| fs::symlink_metadata(m.path(p)).unwrap().ino())
            .collect();
        assert_eq!(before, after);
    });
}

#[test]
fn permissions_are_checked() {
    with_fuse(|m| {
        fs::write(m.path("etc/secret"), b"root only").unwrap();
        fs::set_permissions(m.path("etc/secret"), fs::Permissions::from_mode(0o600)).unwrap();
        let as_nobody = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap()
        };
        let secret = m.path("etc/secret");
        let out = as_nobody(&["cat", secret.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
        let readable = m.path("etc/conf0");
        assert!(
            as_nobody(&["cat", readable.to_str().unwrap()])
                .status
                .success()
        );
        let target = m.path("etc/by-nobody");
        assert!(
            !as_nobody(&["touch", target.to_str().unwrap()])
                .status
                .success(),
            "etc is not writable for nobody"
        );
    });
}

/// Writes and truncates by a caller without CAP_FSETID drop set-ID bits as they do under
/// overlayfs, though the FUSE server writes as root (FUSE_HANDLE_KILLPRIV_V2, which spares
/// every write(2) a GETXATTR round trip): set-user-ID always, set-group-ID when the file is
/// group-executable or the caller is not in its group (its supplementary groups count);
/// fallocate too. Root keeps both.
/// Files made by root and then written by nobody, whose writes pass through to the upper
/// file as the server (root): the kernel asks the server first, in an empty SETATTR, to
/// drop the bits. Also a file made set-user-ID while open for writing, a chgrp by an owner
/// not in the file's group, and a chown that changes nothing, as overlayfs has them. What
/// nobody makes belongs to nobody.
#[test]
fn set_id_bits_are_dropped_by_unprivileged_writes_as_overlayfs_drops_them() {
    let fixture = Fixture::new();
    let fuse = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let overlay = fixture.mount("overlay", Driver::Overlay);
    let run = |m: &Mounted| {
        fs::create_dir(m.path("w")).unwrap();
        fs::set_permissions(m.path("w"), fs::Permissions::from_mode(0o777)).unwrap();
        let modes = [
            ("g", 0o4777),
            ("a", 0o4777),
            ("b", 0o2777),
            ("c", 0o2766),
            ("d", 0o4777),
            ("e", 0o4777),
            ("h", 0o2766),
            ("i", 0o777),
            ("j", 0o2744),
            ("k", 0o4777),
            ("l", 0o4755),
            ("m", 0o6755),
            ("n", 0o4755),
        ];
        for (name, mode) in modes {
            fs::write(m.path(&format!("w/{name}")), b"x\n").unwrap();
            fs::set_permissions(
                m.path(&format!("w/{name}")),
                fs::Permissions::from_mode(mode),
            )
            .unwrap();
        }
        // In the file's group through a supplementary group: set-group-ID stays.
        std::os::unix::fs::chown(m.path("w/h"), None, Some(50)).unwrap();
        fs::set_permissions(m.path("w/h"), fs::Permissions::from_mode(0o2766)).unwrap();
        // Nobody's own files: "j" in a group nobody is not in. The chown drops set-user-ID:
        // the mode again.
        for (name, gid) in [("i", 65534), ("j", 50), ("k", 65534), ("n", 65534)] {
            let path = m.path(&format!("w/{name}"));
            std::os::unix::fs::chown(&path, Some(65534), Some(gid)).unwrap();
            let mode = modes.iter().find(|(n, _)| *n == name).unwrap().1;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, mode, "{name}");
        }
        // `script` in w/ as nobody, with `groups` ("--clear-groups" or "--groups=N").
        let as_nobody = |groups: &str, script: &str| {
            let out = std::process::Command::new("setpriv")
                .args([
                    "--reuid", "65534", "--regid", "65534", groups, "sh", "-c", script,
                ])
                .current_dir(m.path("w"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        as_nobody("--groups=50", "echo more >> h");
        as_nobody(
            "--clear-groups",
            "echo more >> a && echo more >> b && echo more >> c && truncate -s 1 d \
             && echo new > made && mkdir made-dir && fallocate -l 8192 g",
        );
        // Made set-user-ID while open for writing, then written: the write drops the bit.
        // A chgrp by the owner drops set-group-ID when it is not in the file's group, and
        // so does a chown that changes nothing, which also drops set-user-ID.
        as_nobody(
            "--clear-groups",
            "exec 3>> i && chmod 4777 i && echo more >&3 && chgrp 65534 j \
             && python3 -c 'import os; os.chown(\"k\", -1, -1)'",
        );
        // Not the owner: refused, as the chmod it would be (a write would drop the bits).
        as_nobody(
            "--clear-groups",
            "python3 -c 'import os\ntry: os.chown(\"l\", -1, -1)\n\
             except PermissionError: pass\nelse: raise SystemExit(\"chown of l worked\")'",
        );
        // Root's chown that changes nothing drops set-user-ID, and group-executable
        // set-group-ID, also on another user's file ("n", nobody's).
        for name in ["w/m", "w/n"] {
            std::os::unix::fs::chown(m.path(name), None, None).unwrap();
        }
        append(m.path("w/e"), b"by root\n");
        for made in ["made", "made-dir"] {
            let meta = fs::metadata(m.upper.join("w").join(made)).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (65534, 65534),
                "{made} in {}",
                m.upper.display()
            );
        }
        modes.map(|(name, _)| {
            let meta = fs::metadata(m.path(&format!("w/{name}"))).unwrap();
            (name, meta.mode() & 0o7777, meta.len())
        })
    };
    let theirs = run(&overlay);
    let m = fuse.clone();
    let ours = deadline(120, "writes by nobody", move || run(&m));
    assert_eq!(
        theirs,
        [
            ("g", 0o777, 8192),
            ("a", 0o777, 7),
            ("b", 0o777, 7),
            ("c", 0o766, 7),
            ("d", 0o777, 1),
            ("e", 0o4777, 10),
            ("h", 0o2766, 7),
            ("i", 0o777, 7),
            ("j", 0o744, 2),
            ("k", 0o777, 2),
            ("l", 0o4755, 2),
            ("m", 0o755, 2),
            ("n", 0o755, 2)
        ],
        "overlayfs"
    );
    assert_eq!(ours, theirs, "strata-unionfs, then overlayfs");
    drop(fuse);
    drop(overlay);
    drop(fixture);
}

/// A file open for writing stays changeable after its every name is gone, as under
/// overlayfs: fchmod, fchown, ftruncate, fsetxattr, fremovexattr and futimens (only
/// ftruncate comes with the file's handle), on a lower file copied up by the open and on a
/// file made in the upper; and it opens again through /proc/self/fd.
#[test]
fn an_open_file_whose_names_are_gone_can_still_be_changed() {
    use std::os::fd::{AsFd, AsRawFd};
    let fixture = Fixture::new();
    let fuse = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let overlay = fixture.mount("overlay", Driver::Overlay);
    let run = |m: &Mounted| {
        fs::write(m.path("etc/made"), b"made\n").unwrap();
        ["etc/conf4", "etc/made"].map(|name| {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.path(name))
                .unwrap();
            fs::remove_file(m.path(name)).unwrap();
            let fd = file.as_fd();
            let results = [
                rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(0o4711)),
                rustix::fs::fchown(
                    fd,
                    Some(rustix::fs::Uid::from_raw(7)),
                    Some(rustix::fs::Gid::from_raw(8)),
                ),
                rustix::fs::ftruncate(fd, 2),
                rustix::fs::fsetxattr(fd, "user.gone", b"yes", rustix::fs::XattrFlags::empty()),
                rustix::fs::fsetxattr(fd, "user.removed", b"", rustix::fs::XattrFlags::empty())
                    .and_then(|()| rustix::fs::fremovexattr(fd, "user.removed")),
                rustix::fs::futimens(
                    fd,
                    &rustix::fs::Timestamps {
                        last_access: rustix::fs::Timespec {
                            tv_sec: 5,
                            tv_nsec: 0,
                        },
                        last_modification: rustix::fs::Timespec {
                            tv_sec: 6,
                            tv_nsec: 0,
                        },
                    },
                ),
            ];
            let st = rustix::fs::fstat(fd).unwrap();
            // Opened again through /proc, read-only: what it reads.
            let again = fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let again = again.map_err(|e| e.raw_os_error());
            let mut value = [0u8; 8];
            let got =
                rustix::fs::fgetxattr(fd, "user.gone", &mut value).map(|n| value[..n].to_vec());
            let mut list = [0u8; 256];
            let listed = rustix::fs::flistxattr(fd, &mut list).map(|n| {
                let names = list[..n]
                    .split(|b| *b == 0)
                    .filter(|n| n.starts_with(b"user."));
                names
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect::<Vec<_>>()
            });
            (
                name,
                results,
                st.st_mode & 0o7777,
                (st.st_uid, st.st_gid),
                (st.st_atime, st.st_mtime),
                st.st_size,
                st.st_nlink,
                got,
                listed,
                again,
            )
        })
    };
    let theirs = run(&overlay);
    let m = fuse.clone();
    let ours = deadline(60, "changes to unlinked open files", move || run(&m));
    assert_eq!(
        theirs[0],
        (
            "etc/conf4",
            [Ok(()), Ok(()), Ok(()), Ok(()), Ok(()), Ok(())],
            0o711,
            (7, 8),
            (5, 6),
            2,
            0,
            Ok(b"yes".to_vec()),
            Ok(vec!["user.gone".to_string()]),
            Ok(b"bo".to_vec())
        ),
        "overlayfs"
    );
    assert_eq!(ours, theirs, "strata-unionfs, then overlayfs");
    drop(fuse);
    drop(overlay);
    drop(fixture);
}

/// A POSIX access ACL in the kernel's xattr form: owner rw, user `uid` r, group and
/// others nothing, mask r.
fn acl_granting_read_to(uid: u32) -> Vec<u8> {
    const ANY: u32 = u32::MAX;
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, ANY),
        (0x02, 4, uid),
        (0x04, 0, ANY),
        (0x10, 4, ANY),
        (0x20, 0, ANY),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    acl
}

/// The fixture with a lower file `etc/acl-file` (0640) whose access ACL lets uid 1000
/// read it; and that ACL.
fn fixture_with_acl_file() -> (Fixture, Vec<u8>) {
    let fixture = Fixture::new();
    let lower = fixture.lowers[2].join("etc/acl-file");
    fs::write(&lower, b"for 1000 only\n").unwrap();
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o640)).unwrap();
    let acl = acl_granting_read_to(1000);
    rustix::fs::setxattr(
        &lower,
        "system.posix_acl_access",
        &acl,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    (fixture, acl)
}

/// `cat PATH` as `uid` (and the same gid).
fn cat_as(path: &Path, uid: u32) -> std::process::Output {
    std::process::Command::new("cat")
        .arg(path)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
}

#[test]
fn posix_acls_are_enforced_as_overlayfs_does() {
    let (fixture, acl) = fixture_with_acl_file();
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(120, "reading through an ACL", move || {
        let cat_as = |uid: u32| cat_as(&m.path("etc/acl-file"), uid);
        let granted = cat_as(1000);
        assert!(
            granted.status.success(),
            "the ACL lets uid 1000 read: {}",
            String::from_utf8_lossy(&granted.stderr)
        );
        assert_eq!(granted.stdout, b"for 1000 only\n");
        assert!(!cat_as(1001).status.success(), "others may not");
        assert_eq!(
            xattr(&m.path("etc/acl-file"), "system.posix_acl_access"),
            Some(acl)
        );
        // A chmod copies the file up and keeps the ACL, narrowed by the new mode.
        fs::set_permissions(m.path("etc/acl-file"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            !cat_as(1000).status.success(),
            "the mask no longer allows it"
        );
        assert!(
            xattr(&m.upper.join("etc/acl-file"), "system.posix_acl_access").is_some(),
            "the copy keeps its ACL"
        );
    });
    drop(mounted);
    drop(fixture);
}

#[test]
fn concurrent_readers_and_writers() {
    with_fuse(|m| {
        let mnt = m.mnt.clone();
        let mut threads = Vec::new();
        for t in 0..4 {
            let mnt = mnt.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..150 {
                    let dir = mnt.join(format!("var/log/d{}", t));
                    fs::write(dir.join(format!("w{i}")), format!("{t}-{i}")).unwrap();
                    append(dir.join("log"), b"+");
                    if i % 10 == 0 {
                        fs::rename(dir.join(format!("w{i}")), dir.join(format!("r{i}"))).unwrap();
                    }
                }
            }));
        }
        for _ in 0..4 {
            let mnt = mnt.clone();
            threads.push(std::thread::spawn(move || {
                for _ in 0..20 {
                    for lib in 0..6 {
                        let data = fs::read(mnt.join(format!("usr/lib/lib{lib}.so"))).unwrap();
                        assert_eq!(data.len(), 1000 + lib * 4096);
                    }
                    let _ = fs::read_dir(mnt.join("var/log")).unwrap().count();
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..4 {
            assert_eq!(
                fs::read(mnt.join(format!("var/log/d{t}/log")))
                    .unwrap()
                    .len(),
                4 + 150
            );
            assert_eq!(
                fs::read_dir(mnt.join(format!("var/log/d{t}")))
                    .unwrap()
                    .count(),
                151 + usize::from(t == 0)
            );
        }
    });
}

/// Each CPU's request queue starts with one thread (vendor/fuser uring.rs). A big copy-up
/// runs as a `fuser::blocking` section, so the queue gets another thread and the CPU's
/// other callers are not held behind the copy.
#[test]
fn a_big_copy_up_does_not_hold_up_requests_from_the_same_cpu() {
    let _alone = crate::common::alone();
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let pin_to_cpu0 = || {
        let mut set = nix::sched::CpuSet::new();
        set.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    };
    let fixture = Fixture::new();
    fs::write(fixture.lowers[0].join("huge.bin"), vec![7u8; 768 << 20]).unwrap();
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    assert!(
        mounted.guard.as_ref().unwrap().io_uring(),
        "FUSE over io_uring is off: echo Y > /sys/module/fuse/parameters/enable_uring"
    );
    let m = mounted.clone();
    deadline(120, "lookups beside a big copy-up on one CPU", move || {
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let (done, huge) = (done.clone(), m.path("huge.bin"));
            std::thread::spawn(move || {
                pin_to_cpu0();
                let start = Instant::now();
                // The write-open copies the file up before it returns.
                let file = fs::OpenOptions::new().write(true).open(huge).unwrap();
                done.store(true, Ordering::SeqCst);
                drop(file);
                start.elapsed()
            })
        };
        pin_to_cpu0();
        std::thread::sleep(Duration::from_millis(50));
        // A second writer waits for the first one's copy: that wait must not hold the
        // queue either.
        let second = {
            let huge = m.path("huge.bin");
            std::thread::spawn(move || {
                pin_to_cpu0();
                fs::OpenOptions::new().write(true).open(huge).unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let mut during = 0;
        for i in 0.. {
            if done.load(Ordering::SeqCst) {
                break;
            }
            // A new name each time: a LOOKUP request, never the kernel's cache.
            let _ = fs::symlink_metadata(m.path(&format!("etc/missing{i}")));
            if !done.load(Ordering::SeqCst) {
                during += 1;
            }
        }
        let took = writer.join().unwrap();
        second.join().unwrap();
        assert!(
            took > Duration::from_millis(150),
            "the copy-up took {took:?}, too quick to test (a reflinking filesystem?)"
        );
        assert!(
            during > 0,
            "no lookup from CPU 0 finished during the {took:?} copy-up"
        );
        assert_eq!(
            fs::metadata(m.upper.join("huge.bin")).unwrap().len(),
            768 << 20
        );
    });
    drop(mounted);
    drop(fixture);
}

#[test]
fn rename_exchange_and_noreplace() {
    with_fuse(|m| {
        let swap = |a: &str, b: &str, flags| {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                m.path(a),
                rustix::fs::CWD,
                m.path(b),
                flags,
            )
        };
        swap("etc/conf0", "etc/top", rustix::fs::RenameFlags::EXCHANGE).unwrap();
        assert_eq!(fs::read(m.path("etc/conf0")).unwrap(), b"top\n");
        assert_eq!(fs::read(m.path("etc/top")).unwrap(), b"middle conf 0\n");
        // a lower directory with a file
        swap("var/log/d2", "etc/conf1", rustix::fs::RenameFlags::EXCHANGE).unwrap();
        assert_eq!(fs::read(m.path("var/log/d2")).unwrap(), b"bottom conf 1\n");
        assert_eq!(names(&m.path("etc/conf1")), ["log"]);
        assert_eq!(
            swap("etc/conf2", "etc/conf4", rustix::fs::RenameFlags::NOREPLACE).unwrap_err(),
            rustix::io::Errno::EXIST
        );
        swap("etc/conf2", "etc/conf9", rustix::fs::RenameFlags::NOREPLACE).unwrap();
        assert!(!m.path("etc/conf2").exists());
    });
}

#[test]
fn write_open_succeeds_while_a_big_lower_file_is_open_for_reading() {
    // The reader's open makes the lower file the inode's one passthrough backing file; the
    // writer needs the copy, so the copy gets a new inode number and the kernel retries
    // the open on it (ESTALE) instead of failing it with EIO (fs/fuse/iomode.c).
    let fixture = Fixture::new();
    fs::write(fixture.lowers[0].join("big.bin"), vec![b'a'; 2 << 20]).unwrap();
    fs::write(fixture.lowers[0].join("big2.bin"), vec![b'c'; 2 << 20]).unwrap();
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(120, "write-open beside a passthrough reader", move || {
        let read_at = |file: &fs::File, at: u64| {
            let mut buf = [0u8; 4];
            std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, at).unwrap();
            buf
        };
        let reader = fs::File::open(m.path("big.bin")).unwrap();
        assert_eq!(&read_at(&reader, 0), b"aaaa");
        let mut writer = fs::OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .expect("write-open while a reader holds the lower file");
        writer.write_all(b"bbbb").unwrap();
        drop(writer);
        let fresh = fs::File::open(m.path("big.bin")).unwrap();
        assert_eq!(
            &read_at(&fresh, 0),
            b"bbbb",
            "a new open sees the copied-up file"
        );
        assert_eq!(
            &read_at(&reader, 0),
            b"aaaa",
            "the earlier reader keeps the lower file (a known difference: overlayfs's follows the copy)"
        );
        assert_eq!(&read_at(&reader, (2 << 20) - 4), b"aaaa");
        assert_eq!(&fs::read(m.upper.join("big.bin")).unwrap()[..4], b"bbbb");
        assert_eq!(fs::metadata(m.path("big.bin")).unwrap().len(), 2 << 20);
        // The two numbers stand for one file: a change of its attributes through either is
        // seen through the other (the kernel kept the other's for a day).
        let mode = |meta: fs::Metadata| meta.permissions().mode() & 0o7777;
        reader
            .set_permissions(fs::Permissions::from_mode(0o600))
            .unwrap();
        assert_eq!(mode(fs::metadata(m.path("big.bin")).unwrap()), 0o600);
        fs::set_permissions(m.path("big.bin"), fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(mode(reader.metadata().unwrap()), 0o640);
        drop(reader);
        drop(fresh);

        // A truncate copies up without an open; the next open, a reader's, needs the copy.
        let reader = fs::File::open(m.path("big2.bin")).unwrap();
        assert_eq!(&read_at(&reader, 4096), b"cccc");
        let path = std::ffi::CString::new(m.path("big2.bin").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: a valid NUL-terminated path; truncate(2) keeps no pointer.
        assert_eq!(
            unsafe { libc::truncate(path.as_ptr(), 8192) },
            0,
            "truncate(2)"
        );
        // The copy has its new number at once (QA 22 1.2: it had it only from the next
        // open, so a stat of the path showed the reader's number with the copy's size).
        let stat = fs::metadata(m.path("big2.bin")).unwrap();
        assert_eq!(stat.len(), 8192);
        assert_ne!(
            stat.ino(),
            reader.metadata().unwrap().ino(),
            "a stat right after the truncate shows the copy's new number"
        );
        let fresh = fs::File::open(m.path("big2.bin")).expect("open after the truncate");
        assert_eq!(fresh.metadata().unwrap().len(), 8192);
        assert_eq!(fresh.metadata().unwrap().ino(), stat.ino());
        assert_eq!(&read_at(&fresh, 4096), b"cccc");
        assert_eq!(&read_at(&reader, (2 << 20) - 4), b"cccc");
        assert_eq!(fs::metadata(m.upper.join("big2.bin")).unwrap().len(), 8192);
    });
    drop(mounted);
    drop(fixture);
}

#[test]
fn a_readers_descriptor_follows_its_file_not_its_old_name() {
    // After a truncate by path gives the copy a new number, the reader keeps the old one,
    // which acts on the file by name: through a rename, and never on a file that takes the
    // name after an unlink (review 22: fchmod and fsetxattr through the reader changed it).
    let fixture = Fixture::new();
    for name in ["moved.bin", "gone.bin"] {
        fs::write(fixture.lowers[0].join(name), vec![b'm'; 2 << 20]).unwrap();
    }
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(
        120,
        "a reader's descriptor after truncate, rename, unlink",
        move || {
            let truncate = |path: &Path| {
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path; truncate(2) keeps no pointer.
                assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4096) }, 0, "truncate");
            };
            let mode = |meta: fs::Metadata| meta.permissions().mode() & 0o7777;

            let reader = fs::File::open(m.path("moved.bin")).unwrap();
            truncate(&m.path("moved.bin"));
            fs::rename(m.path("moved.bin"), m.path("renamed.bin")).unwrap();
            fs::write(m.path("moved.bin"), b"another file\n").unwrap();
            reader
                .set_permissions(fs::Permissions::from_mode(0o600))
                .unwrap();
            assert_eq!(mode(fs::metadata(m.path("renamed.bin")).unwrap()), 0o600);
            assert_eq!(
                mode(fs::metadata(m.upper.join("renamed.bin")).unwrap()),
                0o600
            );
            assert_eq!(
                mode(fs::metadata(m.upper.join("moved.bin")).unwrap()),
                0o644
            );
            assert_eq!(reader.metadata().unwrap().len(), 4096);
            drop(reader);

            let reader = fs::File::open(m.path("gone.bin")).unwrap();
            truncate(&m.path("gone.bin"));
            fs::remove_file(m.path("gone.bin")).unwrap();
            fs::write(m.path("gone.bin"), b"another file\n").unwrap();
            let _ = reader.set_permissions(fs::Permissions::from_mode(0o600));
            let _ = xattr::FileExt::set_xattr(&reader, "user.probe", b"1");
            let new = fs::metadata(m.upper.join("gone.bin")).unwrap();
            assert_eq!(mode(new), 0o644, "the new file's mode is its own");
            assert_eq!(
                xattr::get(m.upper.join("gone.bin"), "user.probe").unwrap(),
                None,
                "the new file got no xattr"
            );
            let meta = reader.metadata().unwrap();
            assert_eq!(meta.nlink(), 0, "the reader's file has no name left");
            assert_ne!(meta.len(), 13);
        },
    );
    drop(mounted);
    drop(fixture);
}

#[test]
fn a_truncate_racing_an_unlink_of_a_file_read_through_passthrough_ends() {
    // A truncate by path of a big lower file that a reader holds has the kernel forget the
    // name, which takes the directory's lock. An unlink of the same file holds that lock
    // while it waits for the file's, which the truncate holds until its SETATTR is
    // answered: the answer must not wait for the kernel to forget.
    // The unlink mostly comes first: the other order came in 1 round in 4 to 1 in 75 here,
    // and with an unbounded wait it hung the mount.
    const FILES: usize = 120;
    let fixture = Fixture::new();
    for i in 0..FILES {
        // sparse: big enough for passthrough, no data to write
        let file = fs::File::create(fixture.lowers[0].join(format!("r{i}"))).unwrap();
        file.set_len(1 << 20).unwrap();
    }
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(120, "truncates racing unlinks", move || {
        for i in 0..FILES {
            let path = m.path(&format!("r{i}"));
            let reader = fs::File::open(&path).unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let (p, b) = (path.clone(), barrier.clone());
            let truncate = std::thread::spawn(move || {
                let c = std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).unwrap();
                b.wait();
                // SAFETY: a valid NUL-terminated path; truncate(2) keeps no pointer.
                match unsafe { libc::truncate(c.as_ptr(), 10) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
            barrier.wait();
            let unlinked = fs::remove_file(&path);
            let truncated = truncate.join().unwrap();
            unlinked.unwrap();
            // the truncate may come after the unlink
            if let Err(err) = truncated {
                assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "truncate: {err}");
            }
            assert!(!path.exists());
            let mut data = Vec::new();
            (&reader).read_to_end(&mut data).unwrap();
            assert_eq!(data.len(), 1 << 20, "the reader keeps the lower file");
        }
    });
    drop(mounted);
    drop(fixture);
}

#[test]
fn a_running_binary_keeps_its_inode_number_when_chmod_copies_it_up() {
    // Executing the big lower binary makes the lower file the inode's passthrough backing
    // file. A chmod copies it up with the same data; another exec shares that backing file
    // (the kernel refuses to change a running binary) and the number stays. Other opens of
    // the copy take a number of their own, and see every later change of its data.
    use std::os::unix::fs::FileExt;
    use std::os::unix::process::CommandExt;
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let fixture = Fixture::new();
    fs::copy("/bin/busybox", fixture.lowers[0].join("busybox"))
        .expect("/bin/busybox: apt-get install -y busybox-static");
    let original = fs::read("/bin/busybox").unwrap();
    assert!(original.len() >= 1 << 20);
    fs::write(fixture.lowers[0].join("data"), vec![b'a'; 2 << 20]).unwrap();
    let mounted = std::sync::Arc::new(fixture.mount("fuse", Driver::Fuse));
    let m = mounted.clone();
    deadline(120, "chmod of a running lower binary", move || {
        let bin = m.path("busybox");
        let number = fs::metadata(&bin).unwrap().ino();
        let running = Running(
            std::process::Command::new(&bin)
                .args(["sleep", "30"])
                .spawn()
                .unwrap(),
        );
        // Wait until the exec has opened it (its /proc/PID/exe names the binary).
        let exe = format!("/proc/{}/exe", running.0.id());
        while fs::read_link(&exe).ok().as_deref() != Some(bin.as_path()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o700)).unwrap();
        let upper = fs::metadata(m.upper.join("busybox")).expect("chmod copied it up");
        assert_eq!(upper.mode() & 0o7777, 0o700);
        let out = std::process::Command::new(&bin)
            .args(["echo", "again"])
            .output()
            .unwrap();
        assert_eq!(
            out.stdout, b"again\n",
            "the copy runs while the lower file does"
        );
        let seen = fs::metadata(&bin).unwrap();
        assert_eq!(seen.mode() & 0o7777, 0o700);
        assert_eq!(
            seen.ino(),
            number,
            "chmod of a running binary kept its number"
        );
        // A plain read of the copy gives it a number of its own; the running binary stays
        // readable and executable through /proc/PID/exe (runc and Go programs re-execute
        // themselves so), which the kernel cannot look up again.
        assert_eq!(fs::read(&bin).unwrap(), original);
        assert_eq!(fs::read(&exe).unwrap(), original, "reading {exe}");
        let out = std::process::Command::new(&exe)
            .arg0("busybox")
            .args(["echo", "again"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"again\n", "executing {exe}");
        drop(running);

        // A reader that opens the copy sees later changes of its data: a write, and a
        // truncate by an O_RDONLY|O_TRUNC open (which reaches the server as a read-only open
        // and then a SETATTR).
        let data = m.path("data");
        let held = fs::File::open(&data).unwrap();
        let read_at = |file: &fs::File, at: u64| {
            let mut buf = [0u8; 4];
            let n = file.read_at(&mut buf, at).unwrap();
            buf[..n].to_vec()
        };
        assert_eq!(read_at(&held, 0), b"aaaa");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o600)).unwrap();
        let reader = fs::File::open(&data).unwrap();
        let mut writer = fs::OpenOptions::new().write(true).open(&data).unwrap();
        writer.write_all(b"bbbb").unwrap();
        drop(writer);
        assert_eq!(
            read_at(&reader, 0),
            b"bbbb",
            "the reader opened after the chmod"
        );
        let truncated = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&data)
            .unwrap();
        assert_eq!(truncated.metadata().unwrap().len(), 0);
        assert_eq!(read_at(&truncated, 0), b"");
        assert_eq!(read_at(&reader, 0), b"");
        drop(held);
    });
    drop(mounted);
    drop(fixture);
}

/// For a user namespace mapping container ids 0.. to host ids 100000..: the kernel sees
/// every owner 100000 higher, while the upper dir keeps the image's own ids, for new
/// entries, chown and POSIX ACLs alike; lower entries an ACL grants to container uid
/// 1000 are readable by host uid 101000 and no one else.
#[test]
fn owners_are_shifted_for_a_user_namespace() {
    use strata_unionfs::IdShift;
    const START: u32 = 100_000;
    let shift = IdShift {
        host_start: START,
        size: 65_536,
    };
    let (fixture, _) = fixture_with_acl_file();
    let spec = strata_unionfs::MountSpec {
        id_shift: Some(shift),
        ..fixture.fresh_spec("refused")
    };
    let refused = strata_unionfs::mount(&spec, Driver::Overlay).expect_err("overlay cannot shift");
    assert!(refused.to_string().contains("fuse driver"), "{refused}");

    let mounted = std::sync::Arc::new(fixture.mount_shifted("fuse", Driver::Fuse, Some(shift)));
    let m = mounted.clone();
    deadline(120, "operations with shifted owners", move || {
        let owner = |path: &Path| {
            let meta = fs::symlink_metadata(path).unwrap();
            (meta.uid(), meta.gid())
        };
        assert_eq!(
            owner(&m.path("srv/keep")),
            (START, START),
            "a lower file of root"
        );
        assert_eq!(owner(&m.path("etc")), (START, START));

        // Host root (strata itself) creates as the container's root.
        fs::write(m.path("by-root"), b"x").unwrap();
        assert_eq!(owner(&m.path("by-root")), (START, START));
        assert_eq!(owner(&m.upper.join("by-root")), (0, 0));

        // chown to container 1000:50.
        rustix::fs::chown(
            m.path("by-root"),
            Some(rustix::fs::Uid::from_raw(START + 1000)),
            Some(rustix::fs::Gid::from_raw(START + 50)),
        )
        .unwrap();
        assert_eq!(owner(&m.path("by-root")), (START + 1000, START + 50));
        assert_eq!(owner(&m.upper.join("by-root")), (1000, 50));

        // A process of container uid 7 makes a directory; it is 7's on disk.
        fs::create_dir(m.path("shared")).unwrap();
        fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o777)).unwrap();
        let made = std::process::Command::new("mkdir")
            .arg(m.path("shared/seven"))
            .uid(START + 7)
            .gid(START + 7)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(owner(&m.path("shared/seven")), (START + 7, START + 7));
        assert_eq!(owner(&m.upper.join("shared/seven")), (7, 7));

        // The lower ACL names container uid 1000: host 101000 reads, host 1000 does not.
        let cat_as = |uid: u32| cat_as(&m.path("etc/acl-file"), uid);
        assert!(
            cat_as(START + 1000).status.success(),
            "the ACL's user, shifted"
        );
        assert!(
            !cat_as(1000).status.success(),
            "an unshifted uid is a stranger"
        );
        assert_eq!(
            xattr(&m.path("etc/acl-file"), "system.posix_acl_access"),
            Some(acl_granting_read_to(START + 1000))
        );
        // An ACL set through the mount is stored in container ids.
        rustix::fs::setxattr(
            m.path("by-root"),
            "system.posix_acl_access",
            &acl_granting_read_to(START + 33),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(
            xattr(&m.upper.join("by-root"), "system.posix_acl_access"),
            Some(acl_granting_read_to(33))
        );
        // File capabilities of the namespace's root (v3, root id 100000, as the kernel
        // writes them for a setcap inside) are stored as v2, as a layer carries them.
        let caps = |revision: u32, rootid: Option<u32>| {
            let mut v = (revision | 1).to_le_bytes().to_vec();
            v.extend([0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            if let Some(id) = rootid {
                v.extend(id.to_le_bytes());
            }
            v
        };
        rustix::fs::setxattr(
            m.path("by-root"),
            "security.capability",
            &caps(0x0300_0000, Some(START)),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let stored = xattr(&m.upper.join("by-root"), "security.capability");
        assert_eq!(stored, Some(caps(0x0200_0000, None)));
    });
    drop(mounted);
    drop(fixture);
}

/// Lower branches in the AUFS form (as containers/storage unpacks layers for a mount
/// program): `.wh.NAME` hides NAME below, `.wh..wh..opq` makes a directory opaque, and no
/// marker is ever shown. Changes on top are written in the overlay form.
#[test]
fn aufs_markers_in_lower_branches_are_honoured() {
    let fixture = Fixture::new();
    let (top, bottom) = (&fixture.lowers[0], &fixture.lowers[2]);
    let put = |root: &Path, rel: &str, data: &str| {
        let path = root.join("aufs").join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    };
    for rel in ["a/keep", "a/gone", "d/x", "e/old"] {
        put(bottom, rel, "bottom\n");
    }
    put(top, "a/.wh.gone", "");
    put(top, "d/.wh..wh..opq", "");
    put(top, "d/new", "top\n");
    put(top, "e/.wh.old", "");
    put(top, "e/old", "top again\n");
    fs::create_dir_all(top.join("aufs/.wh..wh.plnk")).unwrap();
    // A directory beside its own marker is new in that branch: nothing below merges in.
    put(bottom, "g/app/a.conf", "bottom\n");
    put(top, "g/.wh.app", "");
    put(top, "g/app/b.conf", "top\n");
    // A marker in the upper (fuse-overlayfs writes them where it cannot mknod).
    put(bottom, "u/k", "bottom\n");
    put(&fixture.dir.path().join("aufs/upper"), "u/.wh.k", "");
    let mounted = std::sync::Arc::new(fixture.mount_aufs("aufs"));
    let m = mounted.clone();
    deadline(60, "operations over AUFS markers", move || {
        let aufs = m.path("aufs");
        assert_eq!(names(&aufs), ["a", "d", "e", "g", "u"]);
        assert_eq!(names(&aufs.join("g/app")), ["b.conf"]);
        assert!(names(&aufs.join("u")).is_empty());
        assert_eq!(names(&aufs.join("a")), ["keep"]);
        assert_eq!(names(&aufs.join("d")), ["new"]);
        assert_eq!(names(&aufs.join("e")), ["old"]);
        assert_eq!(
            fs::read_to_string(aufs.join("e/old")).unwrap(),
            "top again\n"
        );
        for hidden in [
            "a/gone",
            "a/.wh.gone",
            "d/x",
            "d/.wh..wh..opq",
            ".wh..wh.plnk",
        ] {
            assert!(
                fs::symlink_metadata(aufs.join(hidden)).is_err(),
                "{hidden} shows"
            );
        }
        // A hidden name is free: creating it needs no whiteout, and shows the new file.
        fs::write(aufs.join("a/gone"), "new\n").unwrap();
        assert_eq!(fs::read_to_string(aufs.join("a/gone")).unwrap(), "new\n");
        assert!(!is_whiteout(&m.upper.join("aufs/a/gone")));
        // Removing what the markers left visible writes overlay whiteouts.
        fs::remove_file(aufs.join("a/keep")).unwrap();
        fs::remove_file(aufs.join("d/new")).unwrap();
        fs::remove_dir(aufs.join("d")).unwrap();
        assert!(is_whiteout(&m.upper.join("aufs/a/keep")));
        assert!(is_whiteout(&m.upper.join("aufs/d")));
        assert_eq!(names(&aufs), ["a", "e", "g", "u"]);
        fs::create_dir(aufs.join("d")).unwrap();
        assert!(names(&aufs.join("d")).is_empty());
        // A marker's name is refused: it would hide `e/old`, and itself.
        let refused = |what: &str, res: std::io::Result<()>| {
            let err = res.expect_err(what);
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{what}: {err}");
        };
        refused("create", fs::write(aufs.join("e/.wh.old"), ""));
        refused("mkdir", fs::create_dir(aufs.join("e/.wh.old")));
        refused("mkdir opq", fs::create_dir(aufs.join("e/.wh..wh..opq")));
        refused("symlink", symlink("x", aufs.join("e/.wh.old")));
        let (old, marker) = (aufs.join("e/old"), aufs.join("e/.wh.old"));
        refused("link", fs::hard_link(&old, &marker));
        refused("rename", fs::rename(&old, &marker));
        assert_eq!(names(&aufs.join("e")), ["old"]);
        assert!(fs::symlink_metadata(m.upper.join("aufs/e/.wh.old")).is_err());
    });
    // Mounts that do not ask for them (strata's own) take the markers for plain files.
    let plain = fixture.mount("plain", Driver::Fuse);
    assert_eq!(names(&plain.path("aufs/a")), [".wh.gone", "gone", "keep"]);
}

/// Eighty layers with long paths: more than one page of overlayfs options, which mount(2)
/// cuts; the overlay driver then adds the lowers one by one, and both drivers show all.
#[test]
fn many_layers_mount_with_either_driver() {
    let dir = tempfile::Builder::new()
        .prefix("many-")
        .tempdir_in(crate::common::test_base())
        .unwrap();
    let lowers: Vec<_> = (0..80)
        .map(|n| {
            let lower = dir.path().join(format!("layer-{n:02}-{}", "x".repeat(64)));
            fs::create_dir(&lower).unwrap();
            fs::write(lower.join(format!("f{n}")), n.to_string()).unwrap();
            fs::write(lower.join("shared"), n.to_string()).unwrap();
            lower
        })
        .collect();
    let length: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(length > 4096, "the lowers fill more than a page: {length}");
    let fixture = Fixture { dir, lowers };
    for (name, driver) in [("kernel", Driver::Overlay), ("fuse", Driver::Fuse)] {
        let mounted = fixture.mount(name, driver);
        let mnt = mounted.mnt.clone();
        deadline(60, "reading eighty layers", move || {
            for n in 0..80 {
                assert_eq!(
                    fs::read_to_string(mnt.join(format!("f{n}"))).unwrap(),
                    n.to_string()
                );
            }
            assert_eq!(
                fs::read_to_string(mnt.join("shared")).unwrap(),
                "0",
                "the top layer wins"
            );
            fs::write(mnt.join("new"), b"w").unwrap();
        });
        assert_eq!(fs::read(mounted.upper.join("new")).unwrap(), b"w");
    }
}

/// Whiteouts in xattr form (overlayfs since 6.7: a zero-size file with
/// trusted.overlay.whiteout in a directory whose opaque xattr is "x", as the kernel writes
/// them on a nested overlay and composefs does) hide what is below, with either driver.
#[test]
fn xattr_whiteouts_in_a_lower_layer_hide_as_whiteouts_do() {
    let dir = tempfile::Builder::new()
        .prefix("xwh-")
        .tempdir_in(crate::common::test_base())
        .unwrap();
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    for layer in [&top, &bottom] {
        fs::create_dir_all(layer.join("d")).unwrap();
    }
    fs::write(bottom.join("d/deleted"), b"old\n").unwrap();
    fs::write(bottom.join("d/kept"), b"keep\n").unwrap();
    fs::write(bottom.join("d/empty-kept"), b"").unwrap();
    set_xattr(&top.join("d"), "trusted.overlay.opaque", b"x");
    fs::write(top.join("d/deleted"), b"").unwrap();
    set_xattr(&top.join("d/deleted"), "trusted.overlay.whiteout", b"y");
    // an empty file of its own in that directory is a file, not a whiteout
    fs::write(top.join("d/empty"), b"").unwrap();
    let fixture = Fixture {
        dir,
        lowers: vec![top, bottom],
    };
    for (name, driver) in [("kernel", Driver::Overlay), ("fuse", Driver::Fuse)] {
        let m = fixture.mount(name, driver);
        assert_eq!(
            names(&m.path("d")),
            ["empty", "empty-kept", "kept"],
            "{name}"
        );
        assert_eq!(
            fs::symlink_metadata(m.path("d/deleted"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT),
            "{name}"
        );
        // made again over it, then removed: gone again
        fs::write(m.path("d/deleted"), b"new\n").unwrap();
        assert_eq!(fs::read(m.path("d/deleted")).unwrap(), b"new\n");
        fs::remove_file(m.path("d/deleted")).unwrap();
        assert!(!m.path("d/deleted").exists(), "{name}");
        assert_eq!(
            names(&m.path("d")),
            ["empty", "empty-kept", "kept"],
            "{name}"
        );
    }
}

/// The scratch dir in the work dir is reached through the descriptor opened at mount
/// time: whoever renames it and puts a link to a directory of theirs at its name later
/// gets none of what copy-up does there (review 17: the copy's xattrs went to their files,
/// and the upper copy came without them).
#[test]
fn copy_up_goes_through_the_scratch_dir_it_made_whatever_takes_its_name() {
    let fixture = Fixture::new();
    let m = fixture.mount("fuse", Driver::Fuse);
    let evil = m.work.with_file_name("evil");
    fs::create_dir_all(&evil).unwrap();
    fs::rename(m.work.join("strata"), m.work.join("moved")).unwrap();
    symlink(&evil, m.work.join("strata")).unwrap();
    // a directory with an xattr, copied up by a chmod
    fs::set_permissions(m.path("etc"), fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(
        xattr(&m.upper.join("etc"), "user.dir").as_deref(),
        Some(&b"top etc"[..])
    );
    assert!(fs::read_dir(&evil).unwrap().next().is_none());
}

/// One real file reached through two branches (a hard link between lower branches, or
/// between a lower branch and upper, as stores that dedupe layers make): each name is an
/// entry of its own branch, as under kernel overlayfs without an index. Both names were
/// looked up, then neither opened (QA 17c: ENOENT and ESTALE, tar failed).
#[test]
fn a_file_linked_between_branches_reads_and_copies_up_under_each_name() {
    let dir = tempfile::Builder::new()
        .prefix("xlink-")
        .tempdir_in(crate::common::test_base())
        .unwrap();
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    for layer in [&top, &bottom] {
        fs::create_dir_all(layer).unwrap();
    }
    fs::write(bottom.join("x2"), b"cross\n").unwrap();
    fs::hard_link(bottom.join("x2"), top.join("x1")).unwrap();
    let fixture = Fixture {
        dir,
        lowers: vec![top.clone(), bottom],
    };
    let m = fixture.mount("fuse", Driver::Fuse);
    fs::write(m.upper.join("upf"), b"up\n").unwrap();
    fs::hard_link(m.upper.join("upf"), top.join("lowalias")).unwrap();
    for name in ["x1", "x2", "upf", "lowalias"] {
        fs::symlink_metadata(m.path(name)).unwrap();
    }
    for (name, content) in [
        ("x1", "cross\n"),
        ("x2", "cross\n"),
        ("upf", "up\n"),
        ("lowalias", "up\n"),
    ] {
        assert_eq!(fs::read_to_string(m.path(name)).unwrap(), content, "{name}");
    }
    // a change under one name copies that name up; the other keeps the lower file
    append(m.path("x1"), b"more\n");
    fs::set_permissions(m.path("x2"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::read_to_string(m.path("x1")).unwrap(), "cross\nmore\n");
    assert_eq!(fs::read_to_string(m.path("x2")).unwrap(), "cross\n");
    assert_eq!(
        fs::metadata(m.path("x2")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = std::process::Command::new("tar")
        .args(["-cf", "/dev/null", "."])
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    // (tar may warn that "." changed: the test wrote to the branches under the mount)
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("Cannot open") && !said.contains("Read error"),
        "{said}"
    );
}

/// Reads through the union leave the lower branches' atimes alone, as kernel overlayfs
/// (which reads them through noatime mounts) does: an image's layers are no one's to
/// change (QA 17c).
#[test]
fn reading_through_the_union_leaves_lower_atimes_alone() {
    let fixture = Fixture::new();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
    let times = fs::FileTimes::new().set_accessed(old);
    // relatime would update an atime this old on a read
    let lower_file = fixture.lowers[0].join("etc/top");
    let lower_dir = fixture.lowers[0].join("etc");
    for path in [&lower_file, &lower_dir] {
        fs::File::open(path).unwrap().set_times(times).unwrap();
    }
    let before = |path: &Path| fs::metadata(path).unwrap().atime();
    let (file_atime, dir_atime) = (before(&lower_file), before(&lower_dir));
    let m = fixture.mount("fuse", Driver::Fuse);
    assert_eq!(fs::read(m.path("etc/top")).unwrap(), b"top\n");
    assert!(!names(&m.path("etc")).is_empty());
    assert_eq!(before(&lower_file), file_atime, "the lower file's atime");
    assert_eq!(before(&lower_dir), dir_atime, "the lower directory's atime");
}

/// A volatile union (a build step's: see `Flags::volatile`) copies up and syncs as any
/// other does, as far as its callers can tell, and leaves overlayfs's mark in its work dir:
/// then neither driver mounts that union again until the mark is removed.
#[test]
fn a_volatile_union_is_not_mounted_again_until_its_mark_is_removed() {
    for driver in [Driver::Fuse, Driver::Overlay] {
        let fixture = Fixture::new();
        let spec = strata_unionfs::MountSpec {
            flags: strata_unionfs::Flags {
                volatile: true,
                ..Default::default()
            },
            ..fixture.fresh_spec("volatile")
        };
        let mount = |spec: &strata_unionfs::MountSpec, driver| {
            let spec = spec.clone();
            deadline(30, "mount", move || strata_unionfs::mount(&spec, driver))
        };
        let guard = mount(&spec, driver).expect("a volatile mount");
        let conf = spec.target.join("etc/conf1");
        let before = fs::read(&conf).unwrap();
        let mut file = fs::OpenOptions::new().append(true).open(&conf).unwrap();
        file.write_all(b"appended\n").unwrap();
        file.sync_all().unwrap();
        drop(file);
        assert_eq!(
            fs::read(&conf).unwrap(),
            [&before[..], b"appended\n"].concat()
        );
        deadline(30, "unmount", move || guard.unmount()).unwrap();

        let mark = spec.work.join("work/incompat/volatile");
        assert!(mark.is_dir(), "{driver}: no {}", mark.display());
        let plain = strata_unionfs::MountSpec {
            flags: Default::default(),
            ..spec.clone()
        };
        for again in [Driver::Fuse, Driver::Overlay] {
            let refused = mount(&plain, again).expect_err("a marked union mounted again");
            assert!(
                refused.to_string().contains("mounted volatile"),
                "{driver} then {again}: {refused}"
            );
        }
        fs::remove_dir_all(&mark).unwrap();
        let guard = mount(&plain, driver).expect("mounted once the mark is gone");
        assert_eq!(
            fs::read(spec.target.join("etc/conf1")).unwrap(),
            [&before[..], b"appended\n"].concat(),
            "{driver}: the copy-up after a clean unmount"
        );
        deadline(30, "unmount", move || guard.unmount()).unwrap();
    }
}

/// Pages of `path` in the page cache (cachestat(2), Linux 6.5+: it reads nothing in, as a
/// probing read would start the kernel's read-ahead).
fn cached_pages(path: &Path) -> u64 {
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = fs::File::open(path).unwrap();
    let range = [0u64; 2]; // offset 0, length 0: the whole file
    let mut stat = [0u64; 5]; // nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted
    use std::os::fd::AsRawFd;
    // SAFETY: both pointers are to live arrays of the sizes the kernel reads and writes.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            range.as_ptr(),
            stat.as_mut_ptr(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "cachestat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    stat[0]
}

#[test]
fn a_scan_of_a_lower_directory_reads_its_small_files_ahead() {
    // Two files of one lower directory opened in a row (a scan: tar, cp -r) have the server
    // advise the kernel to read that directory's other small files at once; one file
    // opened again and again does not, nor do programs run from one directory, and a big
    // file is left to its own read-ahead.
    let fixture = Fixture::new();
    let bottom = fixture.lowers[2].clone();
    let mut files = Vec::new();
    for dir in ["scan", "single", "progs"] {
        fs::create_dir(bottom.join(dir)).unwrap();
        for i in 0..8 {
            let path = bottom.join(format!("{dir}/f{i}"));
            fs::write(&path, crate::common::patterned(8192 + i)).unwrap();
            files.push(path);
        }
    }
    for name in ["true1", "true2"] {
        fs::copy("/bin/true", bottom.join("progs").join(name)).unwrap();
    }
    let big = bottom.join("scan/big");
    fs::write(&big, crate::common::patterned(1 << 20)).unwrap();
    files.push(big.clone());
    for path in &files {
        // written back, then dropped from the page cache (these files only)
        let file = fs::File::open(path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert_eq!(cached_pages(path), 0, "{} still cached", path.display());
    }
    let m = std::sync::Arc::new(fixture.mount("prefetch", Driver::Fuse));
    let inner = m.clone();
    deadline(60, "a scan of a lower directory", move || {
        let read = |rel: &str| fs::read(inner.path(rel)).unwrap();
        for _ in 0..3 {
            assert_eq!(read("single/f0"), crate::common::patterned(8192));
        }
        for name in ["true1", "true2"] {
            let status = std::process::Command::new(inner.path("progs").join(name))
                .status()
                .unwrap();
            assert!(status.success(), "progs/{name}: {status}");
        }
        assert_eq!(read("scan/f0"), crate::common::patterned(8192));
        assert_eq!(read("scan/f1"), crate::common::patterned(8193));
        crate::common::wait_until("the rest of scan/ read ahead", || {
            (2..8).all(|i| cached_pages(&bottom.join(format!("scan/f{i}"))) > 0)
        });
        // (the thread takes its jobs in order: one for single/ would have come first)
        for i in (1..8)
            .map(|i| format!("single/f{i}"))
            .chain((0..8).map(|i| format!("progs/f{i}")))
        {
            let path = bottom.join(i);
            assert_eq!(cached_pages(&path), 0, "{} read ahead", path.display());
        }
        assert_eq!(
            cached_pages(&bottom.join("scan/big")),
            0,
            "the big file read ahead"
        );
        // what was read ahead is what the mount shows
        for i in 2..8 {
            assert_eq!(
                read(&format!("scan/f{i}")),
                crate::common::patterned(8192 + i)
            );
        }
    });
    drop(m);
    drop(fixture);
}
