//! gc, fsck, containers and the build cache.

use std::fs;

use strata_store::{CacheEntry, Digest, Error, Status};

use super::fixtures::{image_of, make_tree, scratch, store};

#[test]
fn gc_frees_after_rmi_and_fsck_stays_clean() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "doomed");
    store.layer_dirs(&image).unwrap();
    fs::write(store.tmp_dir().join("leftover"), b"crash debris").unwrap();

    let nothing = store.gc().unwrap();
    assert_eq!((nothing.blobs, nothing.layers, nothing.tmp), (0, 0, 1));
    assert_eq!(store.fsck().unwrap(), vec![]);

    store.remove_image("doomed").unwrap();
    assert_eq!(store.fsck().unwrap(), vec![]);
    let report = store.gc().unwrap();
    assert_eq!(report.blobs, 3, "manifest, config and layer");
    assert_eq!(report.layers, 1);
    assert!(report.freed_bytes > 100, "{report:?}");
    assert!(fs::read_dir(store.blobs_dir()).unwrap().next().is_none());
    assert_eq!(store.fsck().unwrap(), vec![]);
}

#[test]
fn gc_keeps_what_a_container_still_uses() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "base");
    let dirs = store.layer_dirs(&image).unwrap();
    let container = store.create_container(Some(&image), Some("web")).unwrap();
    assert!(matches!(
        store.remove_image("base"),
        Err(Error::ImageInUse { .. })
    ));
    store.tag(&image, "other").unwrap();
    store.remove_image("base").unwrap();
    store.remove_image("other").unwrap_err();
    assert_eq!(store.gc().unwrap().blobs, 0);
    assert!(dirs[0].is_dir());
    store.remove_container(&container).unwrap();
    store.remove_image("other").unwrap();
    assert_eq!(store.gc().unwrap().blobs, 3);
    assert_eq!(store.fsck().unwrap(), vec![]);
}

#[test]
fn fsck_reports_a_dangling_reference_but_not_a_stray_layer_dir() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app");
    fs::remove_file(store.blob_path(&image.id)).unwrap();
    // An unpacked layer nothing names is garbage a killed build leaves, as an unreferenced
    // blob is: gc's to remove, not a problem.
    let stray = store.layers_dir().join(Digest::of(b"nothing").hex());
    fs::create_dir(&stray).unwrap();
    let problems = store.fsck().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains(&format!("missing blob {}", image.id))),
        "{problems:?}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.subject.contains(&stray.display().to_string())),
        "{problems:?}"
    );
    store.remove_image("app").unwrap();
    store.gc().unwrap();
    assert!(!stray.exists());
    assert_eq!(store.fsck().unwrap(), vec![]);
}

#[test]
fn a_missing_index_is_not_replaced_and_repair_lists_the_images_again() {
    let tree = scratch();
    make_tree(tree.path());
    let (dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app");
    let blobs_dir = store.blobs_dir();
    let blobs = || fs::read_dir(&blobs_dir).unwrap().count();
    let before = blobs();
    drop(store);
    fs::remove_file(dir.path().join("root/oci/index.json")).unwrap();
    // Opening the store again must not make an empty index: every image would be garbage.
    let store = strata_store::Store::open(&dir.path().join("root")).unwrap();
    let err = store.images().unwrap_err().to_string();
    assert!(
        err.contains("index.json") && err.contains("missing"),
        "{err}"
    );
    assert!(store.gc().is_err());
    assert_eq!(blobs(), before, "gc deleted blobs without an index");
    let problems = store.fsck().unwrap();
    assert!(
        problems.iter().any(|p| p.subject.ends_with("index.json")),
        "{problems:?}"
    );
    let repair = store.repair().unwrap();
    assert_eq!(repair.reindexed, Some(1));
    let images = store.images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, image.id);
    assert!(images[0].names.is_empty());
    assert_eq!(store.fsck().unwrap(), vec![]);
    store.tag(&images[0], "app").unwrap();
    assert_eq!(store.resolve("app").unwrap().id, image.id);
}

#[test]
fn one_damaged_image_leaves_the_others_listed_and_removable_and_gc_names_it() {
    let tree = scratch();
    make_tree(tree.path());
    let other = scratch();
    fs::write(other.path().join("only"), "other\n").unwrap();
    let (_dir, store) = store();
    let good = image_of(&store, &[tree.path()], "good");
    let broken = image_of(&store, &[other.path()], "broken");
    fs::remove_file(store.blob_path(&broken.manifest_digest)).unwrap();
    let images = store.images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, good.id);
    // by id too: resolving by id lists the images
    assert_eq!(store.resolve(&good.id.hex()[..12]).unwrap().id, good.id);
    let err = store.gc().unwrap_err().to_string();
    assert!(err.contains("broken") && err.contains("rmi"), "{err}");
    store.remove_image("broken").unwrap();
    store.gc().unwrap();
    assert_eq!(store.fsck().unwrap(), vec![]);
    assert_eq!(store.resolve("good").unwrap().id, good.id);
}

#[test]
fn repair_removes_a_corrupt_blob() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app");
    let layer: Digest = image.manifest.layers()[0]
        .digest()
        .to_string()
        .parse()
        .unwrap();
    let path = store.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let repair = store.repair().unwrap();
    assert_eq!(repair.removed, vec![layer]);
    assert_eq!(repair.reindexed, None);
    assert!(!path.exists());
    // what is left is a reference to a missing blob, which a pull would fetch again
    let problems = store.fsck().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains(&format!("missing blob {layer}"))),
        "{problems:?}"
    );
}

#[test]
fn containers_are_created_listed_found_and_removed() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app");
    let first = store.create_container(Some(&image), Some("first")).unwrap();
    let second = store.create_container(None, None).unwrap();
    assert!(first.upper_dir().is_dir() && first.work_dir().is_dir() && first.rootfs_dir().is_dir());
    assert_eq!(first.state.status, Status::Created);
    assert_eq!(first.state.image_id, Some(image.id));
    assert!(!second.state.name.is_empty());
    assert!(matches!(
        store.create_container(None, Some("first")),
        Err(Error::ContainerNameInUse(_))
    ));

    assert_eq!(store.containers().unwrap().len(), 2);
    assert_eq!(store.container("first").unwrap().id, first.id);
    assert_eq!(store.container(&second.id[..10]).unwrap().id, second.id);

    let mut running = store.container(&first.id).unwrap();
    running.state.status = Status::Exited;
    running.state.exit_code = Some(3);
    running.save().unwrap();
    assert_eq!(store.container("first").unwrap().state.exit_code, Some(3));

    store.remove_container(&running).unwrap();
    assert!(matches!(
        store.container("first"),
        Err(Error::ContainerNotFound(_))
    ));
    assert_eq!(store.containers().unwrap().len(), 1);
    assert_eq!(store.fsck().unwrap(), vec![]);
}

#[test]
fn cache_entries_survive_reopening_the_store() {
    let (dir, store) = store();
    let key = Digest::of(b"step");
    let entry = CacheEntry {
        layer: None,
        data: serde_json::json!({"cmd": ["sh"]}),
    };
    store.cache_put(&key, &entry).unwrap();
    drop(store);
    let store = strata_store::Store::open(&dir.path().join("root")).unwrap();
    assert_eq!(store.cache_get(&key).unwrap(), Some(entry));
    assert_eq!(store.cache_entries().unwrap().len(), 1);
}

#[test]
fn a_damaged_image_can_still_be_removed_by_name() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "broken");
    fs::write(store.blob_path(&image.id), b"{}").unwrap();
    assert!(matches!(
        store.resolve("broken"),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(!store.fsck().unwrap().is_empty());
    store.remove_image("broken").unwrap();
    store.gc().unwrap();
    assert_eq!(store.fsck().unwrap(), vec![]);
}

#[test]
fn a_damaged_container_is_skipped_by_lists_reported_by_fsck_and_stops_gc() {
    let (_dir, store) = store();
    let good = store.create_container(None, Some("good")).unwrap();
    let bad = store.create_container(None, Some("bad")).unwrap();
    fs::write(bad.dir.join("state.json"), b"{ truncated").unwrap();
    let listed: Vec<String> = store
        .containers()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, vec![good.id.clone()]);
    let problems = store.fsck().unwrap();
    assert!(
        problems.iter().any(|p| p.subject.contains(&bad.id)),
        "{problems:?}"
    );
    assert!(
        store.gc().is_err(),
        "gc must not guess which image a damaged container uses"
    );
}

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_mounted_container_is_not_removed() {
    let (_dir, store) = store();
    let container = store.create_container(None, Some("busy")).unwrap();
    let rootfs = container.rootfs_dir();
    nix::mount::mount(
        Some("tmpfs"),
        &rootfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a tmpfs (tests run as root)");
    let guard = Unmount(rootfs.clone());
    assert!(matches!(
        store.remove_container(&container),
        Err(Error::ContainerMounted { .. })
    ));
    assert!(container.dir.join("state.json").is_file());
    drop(guard);
    store.remove_container(&container).unwrap();
    assert!(!container.dir.exists());
}

#[test]
fn a_damaged_unnamed_image_is_removed_by_the_digest_gc_names() {
    let tree = scratch();
    make_tree(tree.path());
    let other = scratch();
    fs::write(other.path().join("f"), "other\n").unwrap();
    let (_dir, store) = store();
    let old = image_of(&store, &[tree.path()], "app");
    image_of(&store, &[other.path()], "app"); // the old image is left unnamed
    fs::remove_file(store.blob_path(&old.id)).unwrap();
    let err = store.gc().unwrap_err().to_string();
    let named = old.manifest_digest.to_string();
    assert!(err.contains(&format!("rmi {named}")), "{err}");
    let removal = store.remove_image_report(&named, false).unwrap();
    assert_eq!(removal.deleted, Some(old.manifest_digest));
    store.gc().unwrap();
    assert_eq!(store.fsck().unwrap(), vec![]);
}

#[test]
fn repair_moves_an_unreadable_index_aside_and_lists_the_images_again() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app");
    fs::write(store.index_path(), b"{ not json").unwrap();
    assert!(store.images().is_err());
    let repair = store.repair().unwrap();
    let aside = repair.damaged_index.expect("moved aside");
    assert_eq!(fs::read(&aside).unwrap(), b"{ not json");
    assert_eq!(repair.reindexed, Some(1));
    assert_eq!(store.images().unwrap()[0].id, image.id);
}
