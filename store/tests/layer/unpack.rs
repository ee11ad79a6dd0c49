//! Unpacking: hostile archives built header by header (each must be refused, or stay
//! inside the target, with nothing written beside it), and tar semantics (replacement,
//! missing parents, PAX records, v7 directories, non-UTF-8 names).

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use strata_store::layer::{WriteOptions, unpack_layer};

use super::support::*;

/// Unpacks `tar` into `<tmp>/root` beside `<tmp>/sentinel` and checks that the sentinel
/// and the rest of `<tmp>` are exactly as before. Returns the unpack error text.
fn hostile(build: impl FnOnce(&Path, &mut RawTar)) -> String {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("secret"), "untouched").unwrap();
    let before = snapshot(tmp.path());
    let mut tar = RawTar::default();
    build(&sentinel, &mut tar);
    let result = unpack_layer(&tar.finish()[..], &root);
    let after = snapshot(tmp.path());
    let outside = |s: &std::collections::BTreeMap<String, Summary>| {
        s.iter()
            .filter(|(k, _)| !k.starts_with("root/") && k.as_str() != "root")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outside(&before),
        outside(&after),
        "something outside the target changed"
    );
    assert_eq!(
        fs::read_to_string(sentinel.join("secret")).unwrap(),
        "untouched"
    );
    match result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unpack_rejects_dotdot_escape() {
    let error = hostile(|_, tar| tar.file("../sentinel/secret", b"pwned", 0o644));
    assert_eq!(
        error,
        r#"entry "../sentinel/secret" escapes the layer root"#
    );
    let error = hostile(|_, tar| tar.file("a/../../sentinel/new", b"pwned", 0o644));
    assert!(error.contains("escapes the layer root"), "{error}");
}

#[test]
fn unpack_strips_leading_slash_of_absolute_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut tar = RawTar::default();
    tar.file("/abs/file", b"inside", 0o644);
    unpack_layer(&tar.finish()[..], &root).unwrap();
    assert_eq!(fs::read_to_string(root.join("abs/file")).unwrap(), "inside");
}

#[test]
fn unpack_rejects_symlink_escape() {
    let error = hostile(|sentinel, tar| {
        tar.symlink("evil", sentinel.to_str().unwrap());
        tar.file("evil/secret", b"pwned", 0o644);
    });
    assert!(
        error.contains(r#"entry "evil/secret" escapes the layer root through a symlink"#),
        "{error}"
    );
    let error = hostile(|_, tar| {
        tar.symlink("evil", "../sentinel");
        tar.file("evil/new", b"pwned", 0o644);
    });
    assert!(
        error.contains("escapes the layer root through a symlink"),
        "{error}"
    );
    let error = hostile(|_, tar| {
        tar.symlink("proc", "/proc/self/root");
        tar.file("proc/tmp/pwned", b"pwned", 0o644);
    });
    assert!(error.contains("escapes the layer root"), "{error}");
}

#[test]
fn unpack_replaces_a_symlink_instead_of_writing_through_it() {
    let error = hostile(|sentinel, tar| {
        tar.symlink("link", sentinel.join("secret").to_str().unwrap());
        tar.file("link", b"pwned", 0o644);
    });
    assert_eq!(error, "");
}

#[test]
fn unpack_rejects_dir_replaced_by_symlink_then_written_beneath() {
    let error = hostile(|sentinel, tar| {
        tar.dir("d/", 0o755);
        tar.file("d/inside", b"ok", 0o644);
        tar.symlink("d", sentinel.to_str().unwrap());
        tar.file("d/secret", b"pwned", 0o644);
    });
    assert!(
        error.contains(r#"entry "d/secret" escapes the layer root through a symlink"#),
        "{error}"
    );
}

#[test]
fn unpack_rejects_hard_link_escape() {
    let error = hostile(|_, tar| tar.hard_link("stolen", "../sentinel/secret"));
    assert!(
        error.contains(
            r#"entry "stolen" is a hard link to "../sentinel/secret", outside the layer root"#
        ),
        "{error}"
    );
    let error = hostile(|sentinel, tar| {
        tar.symlink("s", sentinel.to_str().unwrap());
        tar.hard_link("stolen", "s/secret");
    });
    assert!(
        error.contains(r#"entry "stolen" escapes the layer root through a symlink"#),
        "{error}"
    );
    let error = hostile(|_, tar| tar.hard_link("dangling", "nothere"));
    assert!(
        error.contains(r#"is a hard link to "nothere", which does not exist"#),
        "{error}"
    );
}

#[test]
fn unpack_hard_link_to_symlink_links_the_symlink_itself() {
    let error = hostile(|sentinel, tar| {
        tar.symlink("s", sentinel.join("secret").to_str().unwrap());
        tar.hard_link("h", "s");
        tar.file("h", b"pwned", 0o644);
    });
    assert_eq!(error, "");
}

#[test]
fn unpack_rejects_bad_whiteouts_and_unknown_types() {
    let error = hostile(|_, tar| tar.file("a/.wh...", b"", 0o644));
    assert!(error.contains("whiteout that names no file"), "{error}");
    let error = hostile(|_, tar| tar.raw("weird", b'Z', b"", b""));
    assert!(
        error.contains(r#"entry "weird" has unsupported tar type 'Z'"#),
        "{error}"
    );
    let error = hostile(|_, tar| tar.raw("", b'0', b"", b"x"));
    assert!(error.contains("names the layer root"), "{error}");
}

#[test]
fn unpack_keeps_layer_xattrs_and_drops_overlay_and_selinux_ones() {
    require_root();
    let mut tar = RawTar::default();
    tar.pax(&[
        ("SCHILY.xattr.user.kept", b"1"),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        (
            "SCHILY.xattr.security.selinux",
            b"system_u:object_r:etc_t:s0",
        ),
        ("mtime", b"1700000000.25"),
    ]);
    tar.dir("d/", 0o755);
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&tar.finish()[..], tmp.path()).unwrap();
    let d = tmp.path().join("d");
    assert_eq!(get_xattr(&d, "user.kept").as_deref(), Some(&b"1"[..]));
    for dropped in [
        "trusted.overlay.redirect",
        "trusted.overlay.opaque",
        "security.selinux",
    ] {
        assert_eq!(get_xattr(&d, dropped), None, "{dropped}");
    }
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(&d).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 250_000_000));
}

#[test]
fn unpack_reads_v7_directories_marked_by_a_trailing_slash() {
    require_root();
    let mut tar = RawTar::default();
    tar.raw_entry(b"old/", 0, b"", b"", 0o750);
    tar.raw_entry(b"old/file", 0, b"", b"v7", 0o644);
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&tar.finish()[..], tmp.path()).unwrap();
    let md = fs::metadata(tmp.path().join("old")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o7777, 0o750);
    assert_eq!(fs::read(tmp.path().join("old/file")).unwrap(), b"v7");
}

#[test]
fn unpack_rejects_a_parent_that_is_a_file() {
    let error = hostile(|_, tar| {
        tar.file("f", b"file", 0o644);
        tar.file("f/child", b"x", 0o644);
    });
    assert_eq!(
        error,
        r#"entry "f/child" has a parent that is not a directory"#
    );
}

#[test]
fn unpack_later_entries_replace_earlier_ones() {
    require_root();
    let mut tar = RawTar::default();
    tar.dir("x/", 0o755);
    tar.file("x/child", b"c", 0o644);
    tar.file("x", b"now a file", 0o600);
    tar.file("y", b"first", 0o644);
    tar.dir("y/", 0o700);
    tar.dir("z/", 0o755);
    tar.file("z/keep", b"k", 0o644);
    tar.dir("z/", 0o711);
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&tar.finish()[..], tmp.path()).unwrap();
    assert_eq!(
        fs::read_to_string(tmp.path().join("x")).unwrap(),
        "now a file"
    );
    assert!(tmp.path().join("y").is_dir());
    assert_eq!(
        fs::metadata(tmp.path().join("z"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o711
    );
    assert_eq!(fs::read_to_string(tmp.path().join("z/keep")).unwrap(), "k");
}

#[test]
fn unpack_creates_missing_parents_and_sets_dir_times_last() {
    require_root();
    let mut tar = RawTar::default();
    tar.mtime = 1_234_567;
    tar.dir("d/", 0o755);
    tar.file("d/e/f", b"deep", 0o644);
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&tar.finish()[..], tmp.path()).unwrap();
    assert_eq!(fs::read(tmp.path().join("d/e/f")).unwrap(), b"deep");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(tmp.path().join("d")).unwrap().mtime(),
        1_234_567
    );
}

#[test]
fn unpack_refuses_names_with_nul_bytes_or_non_utf8_cleanly() {
    require_root();
    let mut tar = RawTar::default();
    tar.raw_name(b"caf\xe9", b'0', b"latin-1");
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&tar.finish()[..], tmp.path()).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let mut content = String::new();
    fs::File::open(tmp.path().join(name))
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "latin-1");
}

#[test]
fn symlink_targets_are_stored_verbatim() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    symlink("../../../../etc/shadow", src.join("up")).unwrap();
    let blob = layer_tar(&src, &WriteOptions::default());
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    unpack_layer(&blob[..], &dst).unwrap();
    assert_eq!(
        fs::read_link(dst.join("up")).unwrap(),
        Path::new("../../../../etc/shadow")
    );
}

#[test]
fn unpack_refuses_huge_extension_headers_without_reading_them() {
    for typeflag in [b'x', b'g', b'L', b'K'] {
        let error = hostile(|_, tar| tar.sized("PaxHeader", typeflag, 4 << 30, b"9 path=a\n"));
        assert!(error.contains("exceeds the 1 MiB limit"), "{error}");
    }
}

#[test]
fn unpack_follows_pax_size_overrides() {
    require_root();
    let mut tar = RawTar::default();
    tar.pax(&[("size", b"1000")]);
    tar.sized("big", b'0', 0, &[b'z'; 1000]);
    tar.file("after", b"still framed", 0o644);
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&tar.finish()[..], tmp.path()).unwrap();
    assert_eq!(fs::read(tmp.path().join("big")).unwrap(), vec![b'z'; 1000]);
    assert_eq!(fs::read(tmp.path().join("after")).unwrap(), b"still framed");
}

#[test]
fn unpack_reads_gnu_sparse_files() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, offset) in [
        0u64,
        1 << 20,
        3 << 20,
        5 << 20,
        7 << 20,
        9 << 20,
        (10 << 20) - 5,
    ]
    .iter()
    .enumerate()
    {
        sparse
            .write_at(format!("part{i}").as_bytes(), *offset)
            .unwrap();
    }
    fs::write(src.join("after"), "after the sparse file").unwrap();
    let archive = tmp.path().join("sparse.tar");
    run(std::process::Command::new("tar")
        .args(["-c", "-S", "--format=gnu", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .args(["sparse", "after"]));
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    unpack_layer(fs::File::open(&archive).unwrap(), &dst).unwrap();
    assert_eq!(
        fs::read(dst.join("sparse")).unwrap(),
        fs::read(src.join("sparse")).unwrap()
    );
    assert_eq!(
        fs::read(dst.join("after")).unwrap(),
        b"after the sparse file"
    );
}
