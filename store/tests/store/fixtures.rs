//! Small trees and tarballs the store tests build on.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_store::layer::{Compression, WriteOptions};
use strata_store::{Image, LayerBlob, Store, oci};

/// A fresh store in a temp dir (on disk, so xattrs work), kept alive with the dir.
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::Builder::new()
        .prefix("strata-store-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    (dir, store)
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-tree-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// A little rootfs: dirs, files with modes, a symlink.
pub fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("var/lib/app")).unwrap();
    fs::write(root.join("etc/hostname"), "strata\n").unwrap();
    fs::write(root.join("etc/motd"), "welcome\n").unwrap();
    fs::write(root.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("var/lib/app/data"), vec![7u8; 100_000]).unwrap();
    symlink("tool", root.join("bin/alias")).unwrap();
}

/// Fixed options so layers are reproducible.
pub fn opts() -> WriteOptions {
    WriteOptions {
        compression: Compression::Zstd,
        source_date_epoch: Some(1_700_000_000),
        level: None,
    }
}

/// A config over `layers` (bottom first), fixed dates so digests are stable.
pub fn config_for(layers: &[&LayerBlob]) -> oci::ImageConfiguration {
    let rootfs = oci::RootFsBuilder::default()
        .typ("layers".to_string())
        .diff_ids(
            layers
                .iter()
                .map(|l| l.diff_id.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .unwrap();
    let history: Vec<oci::History> = layers
        .iter()
        .map(|_| {
            oci::HistoryBuilder::default()
                .created("2023-11-14T22:13:20Z".to_string())
                .created_by("test".to_string())
                .build()
                .unwrap()
        })
        .collect();
    oci::ImageConfigurationBuilder::default()
        .created("2023-11-14T22:13:20Z".to_string())
        .architecture(oci::Arch::Amd64)
        .os(oci::Os::Linux)
        .rootfs(rootfs)
        .history(history)
        .build()
        .unwrap()
}

/// An image of the given layer dirs (bottom first) named `name`.
pub fn image_of(store: &Store, dirs: &[&Path], name: &str) -> Image {
    let layers: Vec<LayerBlob> = dirs
        .iter()
        .map(|d| store.create_layer(d, &opts()).unwrap())
        .collect();
    let refs: Vec<&LayerBlob> = layers.iter().collect();
    let descriptors: Vec<oci::Descriptor> = layers.iter().map(|l| l.descriptor.clone()).collect();
    store
        .put_image(&config_for(&refs), &descriptors, &[name.to_string()])
        .unwrap()
}

/// `tar -c` of `dir` into `out` (gzip when `gzip`), as a user would make a rootfs tarball.
pub fn tarball(dir: &Path, out: &Path, gzip: bool) -> PathBuf {
    let flags = if gzip { "-czf" } else { "-cf" };
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg(flags)
        .arg(out)
        .arg(".")
        .status()
        .expect("run tar (fix: apt-get install -y tar)");
    assert!(status.success(), "tar failed");
    out.to_path_buf()
}

/// A char 0/0 device: the overlay whiteout.
pub fn whiteout(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mknod a whiteout (tests run as root)");
}

/// Marks a directory opaque the overlayfs way.
pub fn opaque(path: &Path) {
    rustix::fs::lsetxattr(
        path,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("set trusted.overlay.opaque (tests run as root)");
}
