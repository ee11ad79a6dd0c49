//! Images, names, layers and verification.

use std::fs;
use std::io::Read;

use strata_store::{Error, Store, refs::REF_NAME};

use super::fixtures::{image_of, make_tree, opts, scratch, store, tarball};

#[test]
fn same_tree_into_two_fresh_stores_gives_identical_manifest_digests() {
    let tree = scratch();
    make_tree(tree.path());
    let (_a_dir, a) = store();
    let (_b_dir, b) = store();
    let image_a = image_of(&a, &[tree.path()], "app:1");
    let image_b = image_of(&b, &[tree.path()], "app:1");
    assert_eq!(image_a.manifest_digest, image_b.manifest_digest);
    assert_eq!(image_a.id, image_b.id);

    // import with SOURCE_DATE_EPOCH is reproducible too
    let tar = tarball(tree.path(), &tree.path().with_extension("tar"), false);
    let one = a
        .import(fs::File::open(&tar).unwrap(), &["imp".into()], &opts())
        .unwrap();
    let two = b
        .import(fs::File::open(&tar).unwrap(), &["imp".into()], &opts())
        .unwrap();
    assert_eq!(one.manifest_digest, two.manifest_digest);
    fs::remove_file(tar).unwrap();
}

#[test]
fn index_entries_carry_the_ref_name_annotation() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "busybox");
    assert_eq!(image.names, vec!["busybox:latest".to_string()]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(store.index_path()).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["manifests"][0]["annotations"][REF_NAME],
        "busybox:latest"
    );
    assert_eq!(
        index["manifests"][0]["digest"],
        image.manifest_digest.to_string()
    );
}

#[test]
fn resolve_by_name_short_id_and_digest_then_tag_and_untag() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app:v1");
    assert_eq!(store.resolve("app:v1").unwrap().id, image.id);
    assert_eq!(store.resolve(&image.id.short()).unwrap().id, image.id);
    assert_eq!(store.resolve(&image.id.to_string()).unwrap().id, image.id);
    assert_eq!(
        store
            .resolve(&image.manifest_digest.to_string())
            .unwrap()
            .id,
        image.id
    );
    assert!(matches!(store.resolve("app"), Err(Error::ImageNotFound(_))));

    store.tag(&image, "app").unwrap();
    assert_eq!(
        store.resolve("app:latest").unwrap().names,
        vec!["app:latest".to_string(), "app:v1".to_string()]
    );
    assert_eq!(store.images().unwrap().len(), 1);
    store.untag("app:v1").unwrap();
    assert_eq!(
        store.resolve("app").unwrap().names,
        vec!["app:latest".to_string()]
    );
    store.remove_image("app").unwrap();
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn unnamed_images_stay_listed_until_removed() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let layer = store.create_layer(tree.path(), &opts()).unwrap();
    let config = super::fixtures::config_for(&[&layer]);
    let image = store
        .put_image(&config, std::slice::from_ref(&layer.descriptor), &[])
        .unwrap();
    assert!(image.names.is_empty());
    assert_eq!(store.images().unwrap().len(), 1);
    store.tag(&image, "named").unwrap();
    // naming it replaces the unnamed entry
    assert_eq!(store.index_entries().unwrap().len(), 1);
    store.remove_image(&image.id.short()).unwrap();
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn unpacked_layers_come_back_top_first_and_identical() {
    let base = scratch();
    make_tree(base.path());
    let top = scratch();
    fs::create_dir(top.path().join("etc")).unwrap();
    fs::write(top.path().join("etc/motd"), "changed\n").unwrap();
    let (_dir, store) = store();
    let image = image_of(&store, &[base.path(), top.path()], "two:layers");
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        fs::read_to_string(dirs[0].join("etc/motd")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read(dirs[1].join("var/lib/app/data")).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        fs::read_link(dirs[1].join("bin/alias")).unwrap().to_str(),
        Some("tool")
    );
    // a second call reuses the same dirs
    assert_eq!(store.layer_dirs(&image).unwrap(), dirs);
    assert!(
        fs::read_dir(store.tmp_dir()).unwrap().next().is_none(),
        "tmp/ left behind"
    );
}

#[test]
fn concurrent_unpacks_of_one_layer_both_succeed() {
    let tree = scratch();
    make_tree(tree.path());
    let (dir, store) = store();
    let image = image_of(&store, &[tree.path()], "race");
    let root = dir.path().join("root");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let root = root.clone();
            let image = image.clone();
            std::thread::spawn(move || Store::open(&root).unwrap().layer_dirs(&image).unwrap())
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        fs::read_to_string(results[0][0].join("etc/hostname")).unwrap(),
        "strata\n"
    );
    assert!(store.fsck().unwrap().is_empty());
}

#[test]
fn concurrent_imports_of_one_tarball_both_succeed() {
    let tree = scratch();
    make_tree(tree.path());
    let tar = tarball(tree.path(), &tree.path().with_extension("tar.gz"), true);
    let (dir, store) = store();
    let root = dir.path().join("root");
    let handles: Vec<_> = ["one", "two", "one"]
        .into_iter()
        .map(|name| {
            let (root, tar) = (root.clone(), tar.clone());
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                store
                    .import(
                        fs::File::open(&tar).unwrap(),
                        &[name.to_string()],
                        &Default::default(),
                    )
                    .unwrap()
            })
        })
        .collect();
    let images: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(images[0].manifest.layers(), images[1].manifest.layers());
    assert_eq!(
        store
            .images()
            .unwrap()
            .iter()
            .flat_map(|i| i.names.clone())
            .count(),
        2
    );
    assert_eq!(store.fsck().unwrap(), vec![]);
    fs::remove_file(tar).unwrap();
}

#[test]
fn flipped_byte_is_reported_by_fsck_and_refused_on_read() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "victim");
    assert_eq!(store.fsck().unwrap(), vec![]);
    let layer: strata_store::Digest = image.manifest.layers()[0]
        .digest()
        .to_string()
        .parse()
        .unwrap();
    let path = store.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&path, &bytes).unwrap();

    let problems = store.fsck().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.subject == layer.to_string() && p.message.contains("corrupt")),
        "{problems:?}"
    );
    assert!(matches!(
        store.read_blob(&layer),
        Err(Error::DigestMismatch { .. })
    ));
    let mut sink = Vec::new();
    assert!(
        store
            .open_blob(&layer)
            .unwrap()
            .read_to_end(&mut sink)
            .is_err()
    );
    // and unpacking refuses it, leaving no layer dir behind
    assert!(store.layer_dirs(&image).is_err());
    assert!(fs::read_dir(store.layers_dir()).unwrap().next().is_none());
}

#[test]
fn put_image_refuses_missing_layer_blobs() {
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let layer = store.create_layer(tree.path(), &opts()).unwrap();
    let digest: strata_store::Digest = layer.descriptor.digest().to_string().parse().unwrap();
    fs::remove_file(store.blob_path(&digest)).unwrap();
    let config = super::fixtures::config_for(&[&layer]);
    assert!(matches!(
        store.put_image(
            &config,
            std::slice::from_ref(&layer.descriptor),
            &["x".into()]
        ),
        Err(Error::BlobNotFound(_))
    ));
}

#[test]
fn a_moved_name_leaves_its_old_image_dangling_until_pruned() {
    let tree = scratch();
    make_tree(tree.path());
    let other = scratch();
    fs::write(other.path().join("f"), "v2\n").unwrap();
    let (_dir, store) = store();
    let v1 = image_of(&store, &[tree.path()], "app:v1");
    // the same image named again changes nothing
    image_of(&store, &[tree.path()], "app:v1");
    assert_eq!(store.images().unwrap().len(), 1);
    let v2 = image_of(&store, &[other.path()], "app:v1");
    let images = store.images().unwrap();
    assert_eq!(
        images.len(),
        2,
        "docker keeps a rebuilt tag's image as <none>"
    );
    let old = images.iter().find(|i| i.id == v1.id).unwrap();
    assert!(old.names.is_empty());
    assert_eq!(store.resolve(&v1.id.hex()[..12]).unwrap().id, v1.id);
    assert_eq!(store.resolve("app:v1").unwrap().id, v2.id);
    // moving the name back leaves v2 dangling instead, and v1 named once
    store
        .tag(&store.resolve(&v1.id.hex()).unwrap(), "app:v1")
        .unwrap();
    let images = store.images().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(store.resolve("app:v1").unwrap().id, v1.id);
    assert!(
        images
            .iter()
            .find(|i| i.id == v2.id)
            .unwrap()
            .names
            .is_empty()
    );
    assert_eq!(store.prune_dangling().unwrap(), vec![v2.id]);
    assert_eq!(store.images().unwrap().len(), 1);
    store.gc().unwrap();
    assert_eq!(store.fsck().unwrap(), vec![]);
    assert!(store.resolve(&v2.id.hex()).is_err());
}

#[test]
fn rmi_of_one_of_two_manifests_of_an_image_does_not_call_it_deleted() {
    // A gzip push pulled back: the same config (image id) under a second manifest. Docker
    // deletes the image only when no name of it is left, whatever manifest holds it.
    let tree = scratch();
    make_tree(tree.path());
    let (_dir, store) = store();
    let image = image_of(&store, &[tree.path()], "app:v1");
    let mut manifest = serde_json::to_value(&image.manifest).unwrap();
    manifest["annotations"] = serde_json::json!({"pulled": "gzip"});
    let other = store
        .put_manifest_raw(
            &serde_json::to_vec(&manifest).unwrap(),
            &["app:gz".to_string()],
        )
        .unwrap();
    assert_eq!(other.id, image.id);
    assert_ne!(other.manifest_digest, image.manifest_digest);
    let removal = store.remove_image_report("app:gz", false).unwrap();
    assert_eq!(removal.untagged, ["app:gz"]);
    assert_eq!(removal.deleted, None, "the image is still here as app:v1");
    assert_eq!(store.resolve("app:v1").unwrap().id, image.id);
    let removal = store.remove_image_report("app:v1", false).unwrap();
    assert_eq!(removal.deleted, Some(image.id));
}
