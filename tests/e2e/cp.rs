//! `strata cp` end to end: docker cp's rules for where a copy lands, what it keeps (modes,
//! times, links, hard links, special files, xattrs), container paths resolved inside the
//! container, a running container's volumes, and failures that leave nothing behind.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::run::{code, store_with_busybox, text, wait_status};

/// `cp` between the host and a container, stopped (its union mounted for the copy) or
/// running, with container paths resolved inside the container.
#[test]
fn cp_between_host_and_containers() {
    let store = store_with_busybox();
    let host = store.root().join("host");
    std::fs::create_dir_all(host.join("dir/sub")).unwrap();
    std::fs::write(host.join("dir/sub/f"), "a\n").unwrap();
    store.ok(&[
        "run",
        "--name",
        "stopped",
        "busybox",
        "sh",
        "-c",
        "mkdir /data && echo inside > /data/x && ln -s /etc /esc",
    ]);
    store.ok(&["cp", "stopped:/data", host.join("out").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(host.join("out/x")).unwrap(),
        "inside\n"
    );
    store.ok(&["cp", host.join("dir").to_str().unwrap(), "stopped:/data/"]);
    // a link in the container leads inside it, not to the host's /etc
    store.ok(&[
        "cp",
        host.join("dir/sub/f").to_str().unwrap(),
        "stopped:/esc/from-host",
    ]);
    assert!(!std::path::Path::new("/etc/from-host").exists());
    let diff = store.ok(&["diff", "stopped"]);
    assert!(
        diff.contains("A /data/dir/sub/f") && diff.contains("A /etc/from-host"),
        "{diff}"
    );
    store.ok(&["run", "-d", "--name", "live", "busybox", "sleep", "60"]);
    wait_status(&store, "live", "running");
    store.ok(&["cp", host.join("dir/sub/f").to_str().unwrap(), "live:/tmp/"]);
    assert_eq!(store.ok(&["exec", "live", "cat", "/tmp/f"]), "a\n");
    let out = store.strata(&["cp", "live:/nope", host.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("live:/nope: no such file"),
        "{}",
        text(&out.stderr)
    );

    // `-`: SRC as a tar on stdout; a tar from stdin unpacked into a directory
    let cp = |args: &[&str], stdin: std::process::Stdio, stdout: std::process::Stdio| {
        std::process::Command::new(crate::common::strata_bin())
            .arg("--root")
            .arg(store.root())
            .arg("cp")
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    };
    let packed = host.join("data.tar");
    let out = cp(
        &["stopped:/data", "-"],
        std::process::Stdio::null(),
        std::fs::File::create(&packed).unwrap().into(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&packed)
        .output()
        .unwrap();
    let listing = text(&listing.stdout);
    assert!(
        listing.contains("data/x") && listing.contains("data/dir/sub/f"),
        "{listing}"
    );
    let out = cp(
        &["stopped:/data/.", "-"],
        std::process::Stdio::null(),
        std::fs::File::create(&packed).unwrap().into(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&packed)
        .output()
        .unwrap();
    let listing = text(&listing.stdout);
    assert!(
        listing.lines().any(|l| l == "x") && !listing.contains("data"),
        "DIR/. packs the content: {listing}"
    );
    let tar_of = |entries: &[(&str, tar::EntryType, &str, &[u8])]| {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            // raw name bytes: the tar crate's set_path refuses ".." (a hostile tar has them)
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        let file = host.join("in.tar");
        std::fs::write(&file, tar.into_inner().unwrap()).unwrap();
        std::fs::File::open(file).unwrap()
    };
    let good = tar_of(&[
        ("new/", tar::EntryType::Directory, "", b""),
        ("new/f", tar::EntryType::Regular, "", b"from a tar\n"),
    ]);
    let out = cp(
        &["-", "stopped:/data"],
        good.into(),
        std::process::Stdio::null(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out_of_root = tar_of(&[(
        "../../../../../../../tmp/strata-cp-escape",
        tar::EntryType::Regular,
        "",
        b"x",
    )]);
    let out = cp(
        &["-", "stopped:/data"],
        out_of_root.into(),
        std::process::Stdio::null(),
    );
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("strata-cp-escape"),
        "{}",
        text(&out.stderr)
    );
    assert!(!std::path::Path::new("/tmp/strata-cp-escape").exists());
    let through_link = tar_of(&[
        ("up", tar::EntryType::Symlink, "/etc", b""),
        ("up/strata-cp-escape", tar::EntryType::Regular, "", b"x"),
    ]);
    let out = cp(
        &["-", "stopped:/data"],
        through_link.into(),
        std::process::Stdio::null(),
    );
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("up/strata-cp-escape"),
        "{}",
        text(&out.stderr)
    );
    assert!(!std::path::Path::new("/etc/strata-cp-escape").exists());
    // a destination that is a link resolves inside the container (/esc -> /etc is the
    // container's /etc), never on the host
    let good = tar_of(&[(
        "strata-cp-linked",
        tar::EntryType::Regular,
        "",
        b"in the container\n",
    )]);
    let out = cp(
        &["-", "stopped:/esc"],
        good.into(),
        std::process::Stdio::null(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!std::path::Path::new("/etc/strata-cp-linked").exists());
    assert!(
        store
            .ok(&["diff", "stopped"])
            .contains("A /etc/strata-cp-linked")
    );
    let out = cp(
        &["-", "stopped:/data/x"],
        std::fs::File::open(&packed).unwrap().into(),
        std::process::Stdio::null(),
    );
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("not a directory"),
        "{}",
        text(&out.stderr)
    );
    store.ok(&[
        "cp",
        "stopped:/data/new/f",
        host.join("unpacked").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(host.join("unpacked")).unwrap(),
        "from a tar\n"
    );
    let diff = store.ok(&["diff", "stopped"]);
    assert!(
        diff.contains("A /data/new/f") && !diff.contains("escape"),
        "{diff}"
    );

    store.ok(&["rm", "-f", "live", "stopped"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(store.root().to_str().unwrap()),
        "the copy's mount is gone"
    );
}

/// What a copy keeps, both ways: modes, times, links, hard links, a fifo, xattrs.
#[test]
fn cp_keeps_what_cp_a_keeps_both_ways() {
    let store = store_with_busybox();
    let host = store.root().join("host");
    let src = host.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("f"), "a\n").unwrap();
    std::fs::hard_link(src.join("f"), src.join("hard")).unwrap();
    std::os::unix::fs::symlink("f", src.join("link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    rustix::fs::setxattr(
        src.join("f"),
        "user.kept",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("sub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    std::fs::File::open(src.join("sub"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    store.ok(&["run", "--name", "c", "busybox", "true"]);
    store.ok(&["cp", src.to_str().unwrap(), "c:/data"]);
    let back = host.join("back");
    store.ok(&["cp", "c:/data", back.to_str().unwrap()]);
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    let (f, hard) = (meta(&back.join("f")), meta(&back.join("hard")));
    assert_eq!(
        (f.ino(), f.nlink()),
        (hard.ino(), 2),
        "hard links stay one file"
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("f")
    );
    let fifo = meta(&back.join("fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    let sub = meta(&back.join("sub"));
    assert_eq!(sub.mode() & 0o7777, 0o750);
    assert_eq!(
        sub.modified().unwrap(),
        old,
        "a directory's time is set after its entries"
    );
    let mut value = [0u8; 8];
    let n = rustix::fs::getxattr(back.join("f"), "user.kept", &mut value).unwrap();
    assert_eq!(&value[..n], b"yes");
    assert_eq!(f.uid(), 0);
}

/// Where a copy lands (docker cp's, and `cp -R`'s, rules), and what a refused or failed
/// copy leaves: nothing, on either side.
#[test]
fn cp_places_by_cp_r_rules_and_a_failed_copy_leaves_nothing() {
    let store = store_with_busybox();
    let host = store.root().join("host");
    std::fs::create_dir_all(host.join("dir/sub")).unwrap();
    std::fs::write(host.join("dir/sub/f"), "a\n").unwrap();
    std::fs::write(host.join("file"), "new\n").unwrap();
    let h = |rel: &str| host.join(rel).to_str().unwrap().to_string();
    store.ok(&[
        "run",
        "--name",
        "c",
        "busybox",
        "sh",
        "-c",
        "mkdir /into && echo old > /into/file",
    ]);
    store.ok(&["cp", &h("dir"), "c:/into"]); // into an existing directory
    store.ok(&["cp", &h("dir"), "c:/renamed"]); // as a new name
    store.ok(&["cp", &h("dir/."), "c:/content"]); // a directory's content
    store.ok(&["cp", &h("file"), "c:/into/file"]); // a file replaces a file
    let diff = store.ok(&["diff", "c"]);
    for line in [
        "A /into/dir/sub/f",
        "A /renamed/sub/f",
        "A /content/sub/f",
        "A /into/file",
    ] {
        assert!(diff.lines().any(|l| l == line), "{line} in\n{diff}");
    }
    assert!(!diff.contains("/content/dir"), "{diff}");
    store.ok(&["cp", "c:/into/file", &h("out-file")]);
    assert_eq!(
        std::fs::read_to_string(host.join("out-file")).unwrap(),
        "new\n"
    );

    let refused = |args: &[&str], says: &str| {
        let out = store.strata(args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    };
    refused(
        &["cp", &h("dir"), "c:/into/file"],
        "cannot copy a directory to c:/into/file",
    );
    refused(
        &["cp", &h("file"), "c:/missing/"],
        "c:/missing/: no such directory",
    );
    refused(
        &["cp", &h("file"), "c:/no/such/dir/x"],
        "its directory does not exist",
    );
    refused(
        &["cp", "c:/renamed", &h("file")],
        "cannot copy a directory to",
    );
    assert_eq!(std::fs::read_to_string(host.join("file")).unwrap(), "new\n");

    // Copying again into the directories: replaced in place, hard links too (a second
    // copy of a tree with hard links failed with EEXIST half-way in the tar crate)
    std::fs::hard_link(host.join("dir/sub/f"), host.join("dir/sub/g")).unwrap();
    store.ok(&["cp", &h("dir"), "c:/into"]);
    store.ok(&["cp", &h("dir"), "c:/into"]);
    store.ok(&["cp", "c:/into/dir", &h("twice")]);
    store.ok(&["cp", "c:/into/dir", &h("twice")]);
    assert_eq!(
        std::fs::read_to_string(host.join("twice/dir/sub/g")).unwrap(),
        "a\n"
    );

    // A copy that fails half-way (a full disk) changes nothing at its destination, on the
    // host or in the container, into a directory or as a new name.
    let small = host.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(&small);
    std::fs::write(small.join("kept"), "old\n").unwrap();
    store.ok(&[
        "run",
        "--name",
        "big",
        "busybox",
        "sh",
        "-c",
        "mkdir /big && head -c 400000 /dev/zero > /big/z && echo new > /big/kept",
    ]);
    let full = |args: &[&str]| {
        let out = store.strata(args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(
            text(&out.stderr).contains("No space left"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    };
    full(&["cp", "big:/big/.", small.to_str().unwrap()]);
    full(&["cp", "big:/big", small.join("as-new").to_str().unwrap()]);
    let left: Vec<_> = std::fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["kept"], "only what was there");
    assert_eq!(
        std::fs::read_to_string(small.join("kept")).unwrap(),
        "old\n"
    );
    // into the container: a volume on the small disk
    let volume = format!("{}:/vol", small.display());
    store.ok(&[
        "run", "-d", "--name", "live", "-v", &volume, "busybox", "sleep", "60",
    ]);
    wait_status(&store, "live", "running");
    std::fs::create_dir_all(host.join("bigdir")).unwrap();
    std::fs::write(host.join("bigdir/kept"), "new\n").unwrap();
    std::fs::write(host.join("bigdir/z"), vec![0u8; 400_000]).unwrap();
    let out = store.strata(&["cp", &h("bigdir/."), "live:/vol"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let out = store.strata(&["cp", &h("bigdir"), "live:/vol/as-new"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert_eq!(
        store.ok(&["exec", "live", "ls", "-a", "/vol"]),
        ".\n..\nkept\n"
    );
    assert_eq!(store.ok(&["exec", "live", "cat", "/vol/kept"]), "old\n");
    // a relative container path is relative to its root, as docker's
    store.ok(&["cp", "live:etc/hostname", &h("hostname")]);
    assert!(host.join("hostname").exists());
    store.ok(&["rm", "-f", "live", "big"]);
    let diff = store.ok(&["diff", "c"]);
    assert!(
        !diff.contains(".strata-cp") && !diff.contains("/missing") && !diff.contains("/no"),
        "{diff}"
    );
    store.ok(&["rm", "-f", "c"]);
}

/// A running container is copied to and from as it sees itself: its volumes too, and
/// with its own links, which never lead to the host.
#[test]
fn cp_sees_a_running_containers_volumes_and_links() {
    let store = store_with_busybox();
    let host = store.root().join("host");
    let volume = host.join("vol");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(host.join("f"), "from the host\n").unwrap();
    let mount = format!("{}:/vol", volume.display());
    store.ok(&[
        "run",
        "-d",
        "--name",
        "live",
        "-v",
        &mount,
        "busybox",
        "sh",
        "-c",
        "ln -s / /up && echo made > /vol/made && sleep 60",
    ]);
    wait_status(&store, "live", "running");
    let start = std::time::Instant::now();
    while !volume.join("made").exists() {
        assert!(
            start.elapsed().as_secs() < 20,
            "the container never wrote /vol/made"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    store.ok(&["cp", host.join("f").to_str().unwrap(), "live:/vol/"]);
    assert_eq!(
        std::fs::read_to_string(volume.join("f")).unwrap(),
        "from the host\n"
    );
    store.ok(&["cp", "live:/vol/made", host.join("made").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(host.join("made")).unwrap(),
        "made\n"
    );
    // /up -> / is the container's root
    store.ok(&[
        "cp",
        host.join("f").to_str().unwrap(),
        "live:/up/etc/strata-cp-through-link",
    ]);
    assert!(!Path::new("/etc/strata-cp-through-link").exists());
    assert_eq!(
        store.ok(&["exec", "live", "cat", "/etc/strata-cp-through-link"]),
        "from the host\n"
    );
    store.ok(&["rm", "-f", "live"]);
}

/// With `--userns private`, what is copied in belongs to the container's root (host uid
/// 100000), in its union and in its volumes, and a tar out shows owners as the container
/// sees them: the helper joins its user namespace, as its root.
#[test]
fn cp_into_a_user_namespace_belongs_to_its_root() {
    let store = store_with_busybox();
    let host = store.root().join("host");
    let volume = host.join("vol");
    std::fs::create_dir_all(&volume).unwrap();
    std::os::unix::fs::chown(&volume, Some(100_000), Some(100_000)).unwrap();
    std::fs::write(host.join("f"), "data\n").unwrap();
    let mount = format!("{}:/vol", volume.display());
    store.ok(&[
        "run", "-d", "--name", "u", "--userns", "private", "-v", &mount, "busybox", "sleep", "60",
    ]);
    wait_status(&store, "u", "running");
    store.ok(&["cp", host.join("f").to_str().unwrap(), "u:/vol/"]);
    store.ok(&["cp", host.join("f").to_str().unwrap(), "u:/tmp/"]);
    assert_eq!(
        store.ok(&["exec", "u", "stat", "-c", "%u:%g", "/vol/f", "/tmp/f"]),
        "0:0\n0:0\n"
    );
    let on_host = std::fs::metadata(volume.join("f")).unwrap();
    assert_eq!((on_host.uid(), on_host.gid()), (100_000, 100_000));
    let out = std::process::Command::new(crate::common::strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["cp", "u:/tmp/f", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(
        (entry.header().uid().unwrap(), entry.header().gid().unwrap()),
        (0, 0)
    );
    store.ok(&["rm", "-f", "u"]);
}

/// A stopped container's volumes are bound for a copy where the container has them (as
/// docker mounts them), read-only ones read-only, and only for that copy.
#[test]
fn cp_reaches_a_stopped_containers_volumes() {
    let store = store_with_busybox();
    let host = store.root().join("host");
    let (volume, readonly) = (host.join("vol"), host.join("ro"));
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::create_dir_all(&readonly).unwrap();
    std::fs::write(readonly.join("x"), "in the volume\n").unwrap();
    std::fs::write(host.join("f"), "data\n").unwrap();
    let (rw, ro) = (
        format!("{}:/vol", volume.display()),
        format!("{}:/ro:ro", readonly.display()),
    );
    store.ok(&[
        "run", "--name", "s", "-v", &rw, "-v", &ro, "busybox", "true",
    ]);
    store.ok(&["cp", host.join("f").to_str().unwrap(), "s:/vol/"]);
    assert_eq!(std::fs::read_to_string(volume.join("f")).unwrap(), "data\n");
    assert!(
        !store.ok(&["diff", "s"]).contains("/vol/f"),
        "not in its upper"
    );
    let out = store.strata(&["cp", host.join("f").to_str().unwrap(), "s:/ro/"]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    store.ok(&["cp", "s:/ro/x", host.join("x").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(host.join("x")).unwrap(),
        "in the volume\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(store.root().to_str().unwrap()),
        "the binds went with the copy"
    );
    store.ok(&["rm", "s"]);
}

/// The pid of a child of `parent` whose command line holds `word`, once there is one.
fn child_running(parent: u32, word: &str) -> u32 {
    let start = std::time::Instant::now();
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
                continue;
            };
            let ppid: Option<u32> = after.split(' ').nth(1).and_then(|p| p.parse().ok());
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if ppid == Some(parent) && cmdline.split(|&b| b == 0).any(|arg| arg == word.as_bytes())
            {
                return entry.file_name().to_string_lossy().parse().unwrap();
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no {word} child of {parent}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn temp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".strata-"))
        .collect()
}

/// A ^C while `export -o` or a `cp` to the host is under way ends strata as SIGINT does and
/// takes its temp file or staging directory with it. The copy's helper is stopped while
/// strata is interrupted, so the signal always comes mid-copy.
#[test]
fn an_interrupted_export_or_copy_leaves_no_temp_files() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let store = store_with_busybox();
    store.ok(&[
        "run",
        "--name",
        "big",
        "busybox",
        "sh",
        "-c",
        "mkdir /data && dd if=/dev/zero of=/data/zeros bs=1M count=128 2>/dev/null",
    ]);
    let host = store.root().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let out = host.join("big.tar");
    let copies: [&[&str]; 2] = [
        &["export", "-o", out.to_str().unwrap(), "big"],
        &["cp", "big:/data", host.to_str().unwrap()],
    ];
    for args in copies {
        let mut strata = std::process::Command::new(crate::common::strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(args)
            .spawn()
            .unwrap();
        let helper = child_running(strata.id(), "cp-tar");
        kill(Pid::from_raw(helper as i32), Signal::SIGSTOP).unwrap();
        let start = std::time::Instant::now();
        while temp_entries(&host).is_empty() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{args:?}: no temp entry in {}",
                host.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        kill(Pid::from_raw(strata.id() as i32), Signal::SIGINT).unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = strata.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{args:?}: strata went on after ^C"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        // The helper (stopped, so still mid-copy) dies with strata: it would go on writing
        // a tar nobody reads.
        let start = std::time::Instant::now();
        let gone = loop {
            let state = std::fs::read_to_string(format!("/proc/{helper}/stat"));
            // gone, or a zombie its new parent has yet to reap
            if state.map_or(true, |s| {
                s.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
            }) {
                break true;
            }
            if start.elapsed() > std::time::Duration::from_secs(10) {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        if !gone {
            let _ = kill(Pid::from_raw(helper as i32), Signal::SIGKILL);
        }
        assert!(gone, "{args:?}: its cp-tar helper outlived strata");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGINT),
            "{args:?}"
        );
        assert_eq!(temp_entries(&host), Vec::<String>::new(), "{args:?}");
        assert!(
            !out.exists() && !host.join("data").exists(),
            "{args:?}: nothing arrived"
        );
        // The union the copy read through (served by strata itself) went with it: no
        // dead mount (ENOTCONN) is left in the store's tmp/.
        let tmp = store.root().join("tmp").to_string_lossy().into_owned();
        let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|line| {
                line.split(' ')
                    .nth(4)
                    .is_some_and(|at| at.starts_with(&tmp))
            })
            .map(str::to_string)
            .collect();
        assert!(left.is_empty(), "{args:?}: {left:?}");
    }

    // A ^C as a terminal sends it, to the whole process group: the helper (which ignores
    // it while strata reads its pipe) keeps streaming, strata keeps unpacking until its
    // staging directory is gone under it, and it still ends by SIGINT with nothing left.
    // A copy that was done before the signal came is tried again.
    let mut interrupted = 0;
    for _ in 0..5 {
        let mut strata = std::process::Command::new(crate::common::strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["cp", "big:/data", host.to_str().unwrap()])
            .process_group(0)
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while temp_entries(&host).is_empty() && strata.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "no staging directory in {}",
                host.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(strata.id() as i32), Signal::SIGINT);
        let status = strata.wait().unwrap();
        assert_eq!(temp_entries(&host), Vec::<String>::new(), "{status:?}");
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGINT) {
            interrupted += 1;
        } else {
            // done first: whole
            assert!(status.success(), "{status:?}");
            assert_eq!(
                std::fs::metadata(host.join("data/zeros")).unwrap().len(),
                128 << 20
            );
        }
        let _ = std::fs::remove_dir_all(host.join("data"));
    }
    assert!(interrupted > 0, "no copy was under way when its ^C came");
}
