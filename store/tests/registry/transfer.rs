//! Push, pull, layouts, archives and the build-cache export between stores and a real
//! `docker-registry`, with skopeo as the independent reader and writer.

use std::path::Path;
use std::process::Command;

use strata_store::layer::{Compression, WriteOptions};
use strata_store::registry::{Client, media};
use strata_store::transfer::cache::{CacheImport, CacheSpec};
use strata_store::transfer::{self, TransferOptions};
use strata_store::{CacheEntry, Digest, Image, Store, oci};

use super::harness::{Proxy, Registry, WrongBytesServer, run};
use super::{noise, options};

fn opts() -> TransferOptions<'static> {
    TransferOptions {
        client: options(),
        ..TransferOptions::default()
    }
}

/// A store holding one image `name` of two layers built from real directories.
fn store_with_image(
    root: &Path,
    name: &str,
    compression: Compression,
    seed: u64,
) -> (Store, Image) {
    let store = Store::open(root).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..2u64 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join(format!("etc/file{i}")),
            format!("layer {i} seed {seed}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("blob{i}.bin")),
            noise(200_000, seed * 10 + i),
        )
        .unwrap();
        let opts = WriteOptions {
            compression,
            source_date_epoch: Some(0),
            level: None,
        };
        let layer = store.create_layer(dir.path(), &opts).unwrap();
        diff_ids.push(layer.diff_id.to_string());
        layers.push(layer.descriptor);
    }
    let config: oci::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let image = store
        .put_image(&config, &layers, &[name.to_string()])
        .unwrap();
    (store, image)
}

fn count(proxy: &Proxy, method: &str, needle: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.contains(needle))
        .count()
}

#[test]
fn push_is_read_by_skopeo_and_a_re_push_uploads_no_blob() {
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.host, None);
    let root = tempfile::tempdir().unwrap();
    let (store, image) = store_with_image(root.path(), "app:v1", Compression::Zstd, 1);
    let dest = format!("{}/team/app:v1", proxy.host);
    let digest = transfer::push(&store, "app:v1", Some(&dest), &opts()).unwrap();
    assert_eq!(digest, image.manifest_digest);
    assert!(
        count(&proxy, "PUT", "/blobs/uploads/") >= 3,
        "config + 2 layers uploaded: {:?}",
        proxy.requests()
    );

    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/team/app:v1", registry.host),
    ]));
    let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inspected["Digest"], image.manifest_digest.to_string());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);

    proxy.clear();
    transfer::push(&store, "app:v1", Some(&dest), &opts()).unwrap();
    let seen = proxy.requests();
    assert_eq!(
        seen.len(),
        1,
        "one HEAD of the manifest, no blob request: {seen:?}"
    );
    assert_eq!(count(&proxy, "HEAD", "/manifests/v1"), 1);

    // Under a new tag the blobs are checked (HEAD) but none is uploaded.
    proxy.clear();
    transfer::push(
        &store,
        "app:v1",
        Some(&format!("{}/team/app:v2", proxy.host)),
        &opts(),
    )
    .unwrap();
    let seen = proxy.requests();
    assert!(
        seen.iter()
            .all(|r| r.method == "HEAD" || (r.method == "PUT" && r.path.contains("/manifests/"))),
        "{seen:?}"
    );
    assert_eq!(count(&proxy, "HEAD", "/blobs/"), 3);
}

#[test]
fn pull_of_a_docker_schema2_image_pushed_by_skopeo_into_a_fresh_store() {
    let registry = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let (store, image) = store_with_image(root.path(), "src:1", Compression::Gzip, 2);
    let layout = tempfile::tempdir().unwrap();
    transfer::push(
        &store,
        "src:1",
        Some(&format!("oci:{}:src", layout.path().display())),
        &opts(),
    )
    .unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:src", layout.path().display()),
        &format!("docker://{}/from/skopeo:v2s2", registry.host),
    ]));

    let fresh = tempfile::tempdir().unwrap();
    let fresh = Store::open(fresh.path()).unwrap();
    let reference = format!("{}/from/skopeo:v2s2", registry.host);
    let pulled = transfer::pull(&fresh, &reference, &opts()).unwrap();
    // named by the tag and, as docker records it, by the repo digest
    let repo_digest = format!("{}/from/skopeo@{}", registry.host, pulled.manifest_digest);
    assert_eq!(pulled.names, vec![reference.clone(), repo_digest]);
    assert_eq!(pulled.id, image.id, "the config travels unchanged");
    let manifest = fresh.read_blob(&pulled.manifest_digest).unwrap();
    assert_eq!(
        media::sniff(&manifest).as_deref(),
        Some(media::DOCKER_MANIFEST)
    );
    // An image made over it (as a build does) is plain OCI: docker's layer types become
    // OCI's for the same bytes.
    let docker: oci::ImageManifest = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        docker.layers()[0].media_type().to_string(),
        media::DOCKER_LAYER_GZIP
    );
    let derived = fresh
        .put_image(&pulled.config, docker.layers(), &["derived:1".into()])
        .unwrap();
    let derived: oci::ImageManifest =
        serde_json::from_slice(&fresh.read_blob(&derived.manifest_digest).unwrap()).unwrap();
    assert!(
        derived
            .layers()
            .iter()
            .all(|l| *l.media_type() == oci::MediaType::ImageLayerGzip),
        "{:?}",
        derived.layers()
    );
    // Layers unpack and match the diff_ids of the config.
    let dirs = fresh.layer_dirs(&pulled).unwrap();
    assert!(dirs.iter().any(|d| d.join("etc/file0").exists()));
    // A second pull downloads nothing.
    let blobs_before = std::fs::read_dir(fresh.blobs_dir()).unwrap().count();
    transfer::pull(&fresh, &reference, &opts()).unwrap();
    assert_eq!(
        std::fs::read_dir(fresh.blobs_dir()).unwrap().count(),
        blobs_before
    );
}

#[test]
fn pull_picks_the_platform_from_an_index() {
    let registry = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let (store, amd) = store_with_image(root.path(), "amd:1", Compression::Zstd, 3);
    let (_, arm) = {
        let (_, image) = store_with_image(root.path(), "arm:1", Compression::Zstd, 4);
        (0, image)
    };
    transfer::push(
        &store,
        "amd:1",
        Some(&format!("{}/multi:amd", registry.host)),
        &opts(),
    )
    .unwrap();
    transfer::push(
        &store,
        "arm:1",
        Some(&format!("{}/multi:arm", registry.host)),
        &opts(),
    )
    .unwrap();
    let entry = |image: &Image, arch: &str| {
        let size = store.read_blob(&image.manifest_digest).unwrap().len();
        serde_json::json!({"mediaType": media::OCI_MANIFEST, "digest": image.manifest_digest.to_string(), "size": size,
                           "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [entry(&arm, "arm64"), entry(&amd, "amd64")]}),
    )
    .unwrap();
    let client = Client::new(&registry.host, options()).unwrap();
    client
        .put_manifest("multi", "latest", &index, media::OCI_INDEX)
        .unwrap();

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Store::open(fresh_dir.path()).unwrap();
    let reference = format!("{}/multi:latest", registry.host);
    assert_eq!(
        transfer::pull(&fresh, &reference, &opts()).unwrap().id,
        amd.id
    );
    let arm_opts = TransferOptions {
        platform: transfer::Platform::parse("linux/arm64").unwrap(),
        ..opts()
    };
    assert_eq!(
        transfer::pull(&fresh, &reference, &arm_opts).unwrap().id,
        arm.id
    );
    let s390 = TransferOptions {
        platform: transfer::Platform::parse("linux/s390x").unwrap(),
        ..opts()
    };
    let err = transfer::pull(&fresh, &reference, &s390)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn push_to_a_second_repository_mounts_instead_of_uploading() {
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.host, None);
    let root = tempfile::tempdir().unwrap();
    let (store, _) = store_with_image(root.path(), "app:1", Compression::Zstd, 5);
    transfer::push(
        &store,
        "app:1",
        Some(&format!("{}/first:1", proxy.host)),
        &opts(),
    )
    .unwrap();
    proxy.clear();
    transfer::push(
        &store,
        "app:1",
        Some(&format!("{}/second:1", proxy.host)),
        &opts(),
    )
    .unwrap();
    assert_eq!(count(&proxy, "POST", "mount="), 3, "{:?}", proxy.requests());
    assert_eq!(count(&proxy, "PUT", "/blobs/"), 0, "{:?}", proxy.requests());
    assert_eq!(count(&proxy, "PATCH", "/blobs/"), 0);
    // A registry whose mounts fail (optional to it): the blobs are uploaded, after three
    // tries at most each (QA 17b: one 500 aborted the push)
    let failing = Proxy::start_failing_mounts(&registry.host);
    for repository in ["third", "fourth", "fifth", "sixth"] {
        transfer::push(
            &store,
            "app:1",
            Some(&format!("{}/{repository}:1", failing.host)),
            &opts(),
        )
        .unwrap();
    }
    failing.clear();
    transfer::push(
        &store,
        "app:1",
        Some(&format!("{}/seventh:1", failing.host)),
        &opts(),
    )
    .unwrap();
    assert_eq!(
        count(&failing, "POST", "mount="),
        9,
        "{:?}",
        failing.requests()
    );
}

#[test]
fn wrong_bytes_fail_the_pull_and_store_nothing() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::of(config);
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": []}))
    .unwrap();
    let server = WrongBytesServer::start(manifest, b"not the config".to_vec());
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let err = transfer::pull(&store, &format!("{}/evil:1", server.host), &opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "registry http://{}/v2/evil/blobs/{config_digest} sent content that hashes to",
            server.host
        )),
        "{err}"
    );
    assert!(!store.has_blob(&config_digest));
    assert_eq!(
        std::fs::read_dir(store.blobs_dir()).unwrap().count(),
        0,
        "no blob stored"
    );
    assert_eq!(
        std::fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "no staging left behind"
    );
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn a_registry_sending_wrong_bytes_is_named_by_url_and_the_store_is_not_blamed() {
    let registry = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let (store, image) = store_with_image(root.path(), "lies:1", Compression::Zstd, 17);
    let reference = format!("{}/lies/app:1", registry.host);
    transfer::push(&store, "lies:1", Some(&reference), &opts()).unwrap();
    let check_nothing_kept = |fresh: &Store| {
        assert_eq!(std::fs::read_dir(fresh.tmp_dir()).unwrap().count(), 0);
        assert!(fresh.images().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(fresh.blobs_dir()).unwrap().count(),
            0,
            "no blob of {} kept",
            image.manifest_digest
        );
    };

    // Every blob body with one byte flipped.
    let proxy = Proxy::start_lying(&registry.host, true, false);
    let fresh_root = tempfile::tempdir().unwrap();
    let fresh = Store::open(fresh_root.path()).unwrap();
    let err = transfer::pull(&fresh, &format!("{}/lies/app:1", proxy.host), &opts())
        .unwrap_err()
        .to_string();
    let prefix = format!("registry http://{}/v2/lies/app/blobs/sha256:", proxy.host);
    assert!(
        err.starts_with(&prefix) && err.contains(" sent content that hashes to sha256:"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
    check_nothing_kept(&fresh);

    // A tag whose manifest comes with another Docker-Content-Digest.
    let proxy = Proxy::start_lying(&registry.host, false, true);
    let err = transfer::pull(&fresh, &format!("{}/lies/app:1", proxy.host), &opts())
        .unwrap_err()
        .to_string();
    let manifest_url = format!("http://{}/v2/lies/app/manifests/1", proxy.host);
    assert!(
        err.starts_with(&format!(
            "registry {manifest_url} sent content that hashes to sha256:"
        )) && err.contains(&format!("not sha256:{}", "0".repeat(64)))
            && err.contains("Docker-Content-Digest"),
        "{err}"
    );
    check_nothing_kept(&fresh);
}

#[test]
fn oci_layout_and_archive_transports_round_trip_through_skopeo() {
    let root = tempfile::tempdir().unwrap();
    let (store, image) = store_with_image(root.path(), "app:2", Compression::Zstd, 6);
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let archive = out.path().join("app.tar");
    transfer::push(
        &store,
        "app:2",
        Some(&format!("oci:{}:v2", layout.display())),
        &opts(),
    )
    .unwrap();
    transfer::push(
        &store,
        "app:2",
        Some(&format!("oci-archive:{}:v2", archive.display())),
        &opts(),
    )
    .unwrap();
    for source in [
        format!("oci:{}:v2", layout.display()),
        format!("oci-archive:{}", archive.display()),
    ] {
        let inspected: serde_json::Value =
            serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &source]))).unwrap();
        assert_eq!(
            inspected["Digest"],
            image.manifest_digest.to_string(),
            "{source}"
        );
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path()).unwrap();
        let pulled = transfer::pull(&fresh, &source, &opts()).unwrap();
        assert_eq!(pulled.manifest_digest, image.manifest_digest, "{source}");
        assert_eq!(pulled.names, vec!["v2:latest".to_string()]);
    }
}

#[test]
fn save_and_load_round_trip_and_skopeo_reads_the_archive() {
    let root = tempfile::tempdir().unwrap();
    let (store, image) = store_with_image(root.path(), "saved:1", Compression::Gzip, 7);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("saved.tar");
    strata_store::archive::save(&store, &["saved:1".to_string()], &file).unwrap();
    let inspected: serde_json::Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", &format!("oci-archive:{}", file.display())])
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], image.manifest_digest.to_string());
    // docker-archive's manifest.json sits beside the layout.
    let listing = run(Command::new("tar").arg("-tf").arg(&file));
    assert!(listing.lines().any(|l| l == "manifest.json"), "{listing}");
    run(Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", file.display())]));

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Store::open(fresh_dir.path()).unwrap();
    let loaded = strata_store::archive::load(&fresh, &file).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        (loaded[0].id, loaded[0].manifest_digest),
        (image.id, image.manifest_digest)
    );
    assert_eq!(fresh.resolve("saved:1").unwrap().id, image.id);

    // The classic docker-archive layout (`<hex>.tar` layers, `<config>.json`) as skopeo
    // writes it for `docker load`: loads to the same image id.
    let classic = out.path().join("classic.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{}", file.display()),
        &format!("docker-archive:{}:classic/app:1", classic.display()),
    ]));
    let other_dir = tempfile::tempdir().unwrap();
    let other = Store::open(other_dir.path()).unwrap();
    let loaded = strata_store::archive::load(&other, &classic).unwrap();
    assert_eq!(loaded[0].id, image.id);
    assert_eq!(
        loaded[0].names,
        vec!["docker.io/classic/app:1".to_string()],
        "RepoTags as skopeo wrote them"
    );
    assert!(
        other
            .layer_dirs(&loaded[0])
            .unwrap()
            .iter()
            .any(|d| d.join("etc/file1").exists())
    );
}

#[test]
fn build_cache_exports_and_imports_through_a_layout_and_a_registry() {
    let registry = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let (store, image) = store_with_image(root.path(), "base:1", Compression::Zstd, 8);
    let layer = strata_store::LayerBlob {
        descriptor: image.manifest.layers()[1].clone(),
        diff_id: image.diff_ids().unwrap()[1],
    };
    let hit = Digest::of(b"step with a layer");
    let meta = Digest::of(b"step without a layer");
    store
        .cache_put(
            &hit,
            &CacheEntry {
                layer: Some(layer.clone()),
                data: serde_json::json!({"n": 1}),
            },
        )
        .unwrap();
    store
        .cache_put(
            &meta,
            &CacheEntry {
                layer: None,
                data: serde_json::json!({"env": "X=1"}),
            },
        )
        .unwrap();
    let layout = tempfile::tempdir().unwrap();
    let specs = [
        format!("type=local,dest={},mode=max", layout.path().display()),
        format!(
            "type=registry,ref={}/cache/app:buildcache,mode=max",
            registry.host
        ),
    ];
    for spec in &specs {
        let spec = CacheSpec::parse(spec).unwrap();
        assert_eq!(
            strata_store::transfer::cache::export(&store, &spec, &[hit, meta], &[], &options())
                .unwrap(),
            2
        );
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path()).unwrap();
        let import = CacheImport::open(&fresh, &spec, &options()).unwrap();
        assert_eq!(import.len(), 2);
        let layer_digest: Digest = layer.descriptor.digest().to_string().parse().unwrap();
        assert!(
            !fresh.has_blob(&layer_digest),
            "layers are fetched on a hit only"
        );
        let entry = import.get(&fresh, &hit).unwrap().unwrap();
        assert_eq!(entry.layer, Some(layer.clone()));
        assert!(fresh.has_blob(&layer_digest));
        assert_eq!(
            fresh.cache_get(&hit).unwrap().unwrap().data,
            serde_json::json!({"n": 1})
        );
        assert!(
            import
                .get(&fresh, &Digest::of(b"unknown"))
                .unwrap()
                .is_none()
        );
        // mode=min with no final keys exports nothing but still writes a valid cache.
    }
    // A cache that does not exist yet is empty, not an error (the first CI run).
    let empty = tempfile::tempdir().unwrap();
    let spec = CacheSpec::parse(&format!(
        "type=local,src={}",
        empty.path().join("none").display()
    ))
    .unwrap();
    assert!(
        CacheImport::open(&store, &spec, &options())
            .unwrap()
            .is_empty()
    );
    let spec =
        CacheSpec::parse(&format!("type=registry,ref={}/cache/none:x", registry.host)).unwrap();
    assert!(
        CacheImport::open(&store, &spec, &options())
            .unwrap()
            .is_empty()
    );
}
