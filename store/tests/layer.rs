//! Integration tests of `strata_store::layer`: trees in overlay on-disk form -> layer blobs
//! -> unpacked trees, compared metadata by metadata; determinism; hostile archives built
//! header by header with the tar crate's raw API. Needs root (devices, chown, trusted.*
//! xattrs), as the whole project's test suite does.

#[path = "layer/properties.rs"]
mod properties;
#[path = "layer/support.rs"]
mod support;
#[path = "layer/unpack.rs"]
mod unpack;

use std::fs;
use std::path::Path;

use rustix::fs::FileType;
use strata_store::Digest;
use strata_store::layer::{Compression, WriteOptions, unpack_layer, write_layer};
use support::*;

#[test]
fn round_trip_preserves_every_file_type_and_metadata() {
    require_root();
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        rich_tree(&src);
        let opts = WriteOptions {
            compression,
            ..Default::default()
        };
        let mut blob = Vec::new();
        let info = write_layer(&src, &opts, &mut blob).unwrap();
        assert_eq!(info.digest, Digest::of(&blob), "{compression:?}");
        assert_eq!(info.size, blob.len() as u64);
        assert_eq!(info.media_type, compression.media_type());
        assert_eq!(info.diff_id, Digest::of(&decompress(&blob)));
        if compression == Compression::None {
            assert_eq!(info.digest, info.diff_id);
        }

        let dst = tmp.path().join("dst");
        fs::create_dir(&dst).unwrap();
        let diff_id = unpack_layer(&blob[..], &dst).unwrap();
        assert_eq!(diff_id, info.diff_id);
        assert_trees_equal(&src, &dst);
    }
}

#[test]
fn hard_links_are_stored_once_as_typeflag_1() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    let tar = layer_tar(&src, &WriteOptions::default());
    let entries = list(&tar);
    let data: Vec<_> = entries
        .iter()
        .filter(|e| ["links/a", "links/b", "links/c"].contains(&e.name.as_str()))
        .collect();
    assert_eq!(data.len(), 3, "{data:?}");
    assert_eq!(
        (data[0].name.as_str(), data[0].kind, data[0].size),
        ("links/a", b'0', 70_000)
    );
    for later in &data[1..] {
        assert!(later.xattrs.is_empty(), "{later:?}");
        assert_eq!(
            (later.kind, later.size, later.link.as_str()),
            (b'1', 0, "links/a")
        );
    }
}

#[test]
fn entries_are_sorted_parents_first_with_numeric_ids_and_no_names() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    let entries = list(&layer_tar(&src, &WriteOptions::default()));
    let names: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| {
            e.raw_name
                .strip_suffix(b"/")
                .unwrap_or(&e.raw_name)
                .to_vec()
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for entry in &entries {
        assert!(
            entry.uname.is_empty() && entry.gname.is_empty(),
            "{entry:?}"
        );
        if let Some(slash) = entry
            .raw_name
            .strip_suffix(b"/")
            .unwrap_or(&entry.raw_name)
            .iter()
            .rposition(|&b| b == b'/')
        {
            let parent = &entry.raw_name[..=slash];
            assert!(
                entries.iter().any(|e| e.raw_name == parent),
                "parent of {:?} missing",
                entry.name
            );
        }
    }
    let long = entries
        .iter()
        .rfind(|e| e.name.starts_with("long/"))
        .unwrap();
    assert!(
        long.name.len() > 230 && long.name.ends_with("fff"),
        "PAX path for long names: {long:?}"
    );
    let long_link = entries
        .iter()
        .find(|e| e.name == "links/longtarget")
        .unwrap();
    assert!(
        long_link.link.len() > 150,
        "PAX linkpath for long targets: {long_link:?}"
    );
    let big_ids = entries.iter().find(|e| e.name == "files/bigid").unwrap();
    assert_eq!((big_ids.uid, big_ids.gid), (3_000_000, 4_000_000));
    let xattr = entries.iter().find(|e| e.name == "files/xattrs").unwrap();
    assert!(
        xattr
            .xattrs
            .iter()
            .any(|(k, v)| k == "user.color" && v == b"blue"),
        "{xattr:?}"
    );
}

#[test]
fn whiteouts_and_opaque_dirs_become_oci_entries_and_back() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc/opaque/kept")).unwrap();
    fs::write(upper.join("etc/opaque/kept/file"), "x").unwrap();
    mknod(
        &upper.join("etc/deleted"),
        FileType::CharacterDevice,
        0o644,
        0,
    );
    mknod(&upper.join("gone"), FileType::CharacterDevice, 0, 0);
    set_xattr(&upper.join("etc/opaque"), "trusted.overlay.opaque", b"y");
    set_xattr(&upper.join("etc/opaque"), "trusted.overlay.origin", b"junk");

    let tar = layer_tar(&upper, &WriteOptions::default());
    let entries = list(&tar);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/.wh.deleted",
            "etc/opaque/",
            "etc/opaque/.wh..wh..opq",
            "etc/opaque/kept/",
            "etc/opaque/kept/file",
            ".wh.gone"
        ]
        .to_vec()
        .tap_sort()
    );
    for entry in &entries {
        assert!(
            entry
                .xattrs
                .iter()
                .all(|(k, _)| !k.starts_with("trusted.overlay.")),
            "{entry:?}"
        );
        if entry.name.contains(".wh.") {
            assert_eq!((entry.kind, entry.size), (b'0', 0));
        }
    }

    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    unpack_layer(&tar[..], &dst).unwrap();
    assert_trees_equal(&upper_without_origin(&upper), &dst);
    assert_eq!(
        get_xattr(&dst.join("etc/opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(is_whiteout(&dst.join("gone")) && is_whiteout(&dst.join("etc/deleted")));
}

#[test]
fn unpack_converts_foreign_whiteouts_and_skips_aufs_metadata() {
    require_root();
    let mut tar = RawTar::default();
    tar.dir("a/", 0o755);
    tar.file(".wh.hidden", b"", 0o600);
    tar.file("a/.wh.x", b"", 0o600);
    tar.file("a/.wh..wh..opq", b"", 0o600);
    tar.file(".wh..wh.plnk/123.456", b"", 0o600);
    tar.file(".wh..wh.aufs", b"", 0o600);
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    unpack_layer(&tar.finish()[..], &dst).unwrap();
    assert!(is_whiteout(&dst.join("hidden")));
    assert!(is_whiteout(&dst.join("a/x")));
    assert_eq!(
        get_xattr(&dst.join("a"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let mut names: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "hidden"]);
}

#[test]
fn same_tree_built_in_different_orders_gives_identical_blobs() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    rich_tree(&first);
    rich_tree_reversed(&second);
    assert_trees_equal(&first, &second);
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let opts = WriteOptions {
            compression,
            ..Default::default()
        };
        let a = write_layer(&first, &opts, std::io::sink()).unwrap();
        let b = write_layer(&second, &opts, std::io::sink()).unwrap();
        assert_eq!(a, b, "{compression:?}");
    }
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    for (root, future) in [(&first, 2_000_000_000), (&second, 2_100_000_000)] {
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/new"), "new").unwrap();
        fs::write(root.join("old"), "old").unwrap();
        set_mtime(&root.join("d/new"), future);
        set_mtime(&root.join("old"), 1_000);
        set_mtime(&root.join("d"), future);
    }
    let opts = WriteOptions {
        source_date_epoch: Some(1_500_000_000),
        ..Default::default()
    };
    let a = write_layer(&first, &opts, std::io::sink()).unwrap();
    let b = write_layer(&second, &opts, std::io::sink()).unwrap();
    assert_eq!(a, b);
    let entries = list(&layer_tar(&first, &opts));
    let mtimes: Vec<(&str, u64)> = entries.iter().map(|e| (e.name.as_str(), e.mtime)).collect();
    assert_eq!(
        mtimes,
        [
            ("d/", 1_500_000_000),
            ("d/new", 1_500_000_000),
            ("old", 1_000)
        ]
    );
    let unclamped = write_layer(&first, &WriteOptions::default(), std::io::sink()).unwrap();
    assert_ne!(unclamped.diff_id, a.diff_id);
}

#[test]
fn gnu_tar_reads_our_layer_and_we_read_gnu_tar() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    plain_tree(&src);
    // strata -> GNU tar
    let ours = layer_tar(
        &src,
        &WriteOptions {
            compression: Compression::None,
            ..Default::default()
        },
    );
    let layer = tmp.path().join("layer.tar");
    fs::write(&layer, &ours).unwrap();
    let by_gnu = tmp.path().join("by-gnu");
    fs::create_dir(&by_gnu).unwrap();
    run(std::process::Command::new("tar")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-f",
        ])
        .arg(&layer)
        .arg("-C")
        .arg(&by_gnu));
    assert_trees_equal(&src, &by_gnu);
    // GNU tar -> strata
    let gnu_tar = tmp.path().join("gnu.tar.gz");
    run(std::process::Command::new("tar")
        .args([
            "-c",
            "-z",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--format=posix",
            "-f",
        ])
        .arg(&gnu_tar)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let by_us = tmp.path().join("by-us");
    fs::create_dir(&by_us).unwrap();
    unpack_layer(fs::File::open(&gnu_tar).unwrap(), &by_us).unwrap();
    assert_trees_equal(&src, &by_us);
}

#[test]
fn corrupted_streams_give_errors_not_panics() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let mut blob = Vec::new();
        write_layer(
            &src,
            &WriteOptions {
                compression,
                ..Default::default()
            },
            &mut blob,
        )
        .unwrap();
        // A plain tar has checksums only in its headers: flip one there (the caller's diff_id
        // check catches flipped data). zstd (content checksum) and gzip (crc32) catch any flip.
        let at = if compression == Compression::None {
            100
        } else {
            blob.len() / 2
        };
        for (what, bad) in [
            ("flipped", flip(&blob, at)),
            ("truncated", blob[..blob.len() / 3].to_vec()),
        ] {
            let dst = tmp.path().join(format!("dst-{compression:?}-{what}"));
            fs::create_dir(&dst).unwrap();
            let result = unpack_layer(&bad[..], &dst);
            assert!(result.is_err(), "{compression:?} {what}: {result:?}");
        }
    }
    let dst = tmp.path().join("garbage");
    fs::create_dir(&dst).unwrap();
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let error = unpack_layer(&garbage[..], &dst).unwrap_err().to_string();
    assert!(error.contains("layer stream"), "{error}");
}

#[test]
fn unpack_reports_an_entry_cut_short() {
    require_root();
    let mut tar = RawTar::default();
    tar.file("big", &vec![b'x'; 10_000], 0o644);
    let tar = tar.finish();
    let tmp = tempfile::tempdir().unwrap();
    let error = unpack_layer(&tar[..5_000], tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(r#"entry "big" is cut short (5512 of 10000 bytes missing)"#),
        "{error}"
    );
}

#[test]
fn write_layer_skips_sockets_and_refuses_a_non_directory() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("file"), "x").unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    let names: Vec<String> = list(&layer_tar(&src, &WriteOptions::default()))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["file"]);
    let error = write_layer(&src.join("file"), &WriteOptions::default(), std::io::sink())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("failed to write a layer from ") && error.contains("src/file"),
        "{error}"
    );
}

/// A writer that fails once `limit` bytes went through.
struct FailingWriter {
    limit: usize,
}

impl std::io::Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.limit {
            return Err(std::io::Error::other("disk full"));
        }
        self.limit -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_layer_reports_output_errors_without_hanging() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rich_tree(&src);
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        for limit in [0, 1000, 20_000] {
            let opts = WriteOptions {
                compression,
                ..Default::default()
            };
            let error = write_layer(&src, &opts, FailingWriter { limit })
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("failed to write the layer blob of")
                    && error.ends_with("disk full"),
                "{error}"
            );
        }
    }
}

#[test]
fn write_layer_refuses_overlay_redirects_and_metacopy() {
    require_root();
    for xattr in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        fs::create_dir_all(upper.join("moved")).unwrap();
        set_xattr(&upper.join("moved"), xattr, b"/orig");
        let error = write_layer(&upper, &WriteOptions::default(), std::io::sink())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("redirect_dir=off,metacopy=off") && error.contains(xattr),
            "{error}"
        );
    }
}

fn flip(blob: &[u8], at: usize) -> Vec<u8> {
    let mut bad = blob.to_vec();
    bad[at] ^= 0x55;
    bad
}

fn upper_without_origin(upper: &Path) -> std::path::PathBuf {
    remove_xattr(&upper.join("etc/opaque"), "trusted.overlay.origin");
    upper.to_path_buf()
}

trait TapSort {
    fn tap_sort(self) -> Self;
}
impl TapSort for Vec<&str> {
    fn tap_sort(mut self) -> Self {
        self.sort_by(|a, b| a.trim_end_matches('/').cmp(b.trim_end_matches('/')));
        self
    }
}
