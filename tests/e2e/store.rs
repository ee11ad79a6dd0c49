//! The store verbs end to end: import, images, inspect, history, tag, rmi, gc, fsck; the
//! layout read by skopeo, umoci and oci-image-tool; crash safety under `kill -9`.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{
    TestStore, assert_success, busybox_rootfs_tar, require_tool, run_with_timeout, strata_bin,
};

fn inspect(store: &TestStore, target: &str) -> serde_json::Value {
    let out: serde_json::Value =
        serde_json::from_str(&store.ok(&["inspect", target])).expect("inspect prints json");
    out[0].clone()
}

#[test]
fn import_then_list_inspect_history_tag_and_rmi() {
    let store = TestStore::new();
    let tar = busybox_rootfs_tar();
    let id = store.ok(&["import", tar.to_str().unwrap(), "busybox"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");

    let table = store.ok(&["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("busybox") && l.contains("latest")),
        "{table}"
    );
    let list: serde_json::Value = serde_json::from_str(&store.ok(&["images", "--json"])).unwrap();
    assert_eq!(list[0]["Id"], id.trim());
    assert_eq!(list[0]["RepoTags"][0], "busybox:latest");

    let image = inspect(&store, "busybox");
    assert_eq!(image["Id"], id.trim());
    assert_eq!(image["Os"], "linux");
    assert_eq!(image["RootFS"]["Type"], "layers");
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    // docker's fields, zero where the image has none; null lists print as Go's empties
    assert_eq!(image["Config"]["Cmd"], serde_json::Value::Null);
    let line = store.ok(&[
        "inspect",
        "-f",
        "{{.Config.Cmd}} {{.Config.Labels}} {{len .Config.Entrypoint}} \
         {{.Config.User}}|{{.Config.WorkingDir}}|{{.Author}}|{{.Config.Tty}} \
         {{range .Config.Env}}{{.}}{{end}}",
        "busybox",
    ]);
    assert_eq!(
        line.trim(),
        "[] map[] 0 |||false PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(image["History"][0]["created_by"], "strata import");
    let history = store.ok(&["history", "busybox"]);
    assert!(history.contains("strata import"), "{history}");
    // docker's flags: ids only, whole ids, bytes and RFC 3339 times, and the id in JSON
    let full = id.trim();
    assert_eq!(store.ok(&["history", "-q", "busybox"]).trim(), &full[7..19]);
    assert_eq!(
        store.ok(&["history", "-q", "--no-trunc", "busybox"]).trim(),
        full
    );
    let listed: serde_json::Value =
        serde_json::from_str(&store.ok(&["history", "--json", "busybox"])).unwrap();
    assert_eq!(listed[0]["Id"], full, "{listed}");
    let size = listed[0]["Size"].as_u64().unwrap();
    let created = listed[0]["Created"].as_str().unwrap();
    assert!(size > 1000, "{listed}");
    assert_eq!(
        store.ok(&["history", "-H", "busybox"]),
        store.ok(&["history", "busybox"])
    );
    let raw = store.ok(&["history", "--human=false", "busybox"]);
    // Go's boolean spellings, as docker takes them
    assert_eq!(store.ok(&["history", "--human=0", "busybox"]), raw);
    assert_eq!(store.ok(&["history", "--human=F", "busybox"]), raw);
    assert_eq!(
        store.ok(&["history", "--human=TRUE", "busybox"]),
        store.ok(&["history", "busybox"])
    );
    let out = store.strata(&["history", "--human=maybe", "busybox"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("invalid boolean \"maybe\""),
        "{said}"
    );
    assert!(
        raw.starts_with("IMAGE") && raw.contains("CREATED AT"),
        "{raw}"
    );
    let row: Vec<&str> = raw
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], [&full[7..19], created], "{raw}");
    assert!(row.contains(&size.to_string().as_str()), "{raw}");
    assert_eq!(
        store.ok(&["images", "-q", "--no-trunc", "busybox"]).trim(),
        full
    );
    assert!(
        store
            .ok(&["images", "--no-trunc", "busybox"])
            .contains(full),
        "images --no-trunc shows the whole id"
    );
    // `diff` of one name wants a container; an image gets told how images are compared
    let out = store.strata(&["diff", "busybox"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("is an image, not a container"),
        "{said}"
    );

    store.ok(&["tag", "busybox", "tools:1.0"]);
    assert_eq!(inspect(&store, "tools:1.0")["Id"], id.trim());
    // several at once, and docker's template for scripts
    let both: serde_json::Value =
        serde_json::from_str(&store.ok(&["inspect", "busybox", "tools:1.0"])).unwrap();
    assert_eq!(both.as_array().map(Vec::len), Some(2));
    let line = store.ok(&["inspect", "-f", "{{.Id}} {{json .Config.Cmd}}", "tools:1.0"]);
    assert_eq!(line.split(' ').next(), Some(id.trim()), "{line}");
    let names = store.ok(&[
        "inspect",
        "-f",
        "{{range .RepoTags}}{{println .}}{{end}}",
        "tools:1.0",
    ]);
    assert!(names.lines().any(|l| l == "tools:1.0"), "{names}");
    let bad = store.strata(&["inspect", "-f", "{{range .RepoTags}}", "tools:1.0"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("without {{end}}")
    );
    let only_tools = store.ok(&["images", "tools"]);
    assert_eq!(only_tools.lines().count(), 2, "{only_tools}");
    assert!(
        only_tools.contains("1.0") && !only_tools.contains("busybox"),
        "{only_tools}"
    );
    // by id with two names needs -f, like docker
    assert!(!store.strata(&["rmi", &id.trim()[7..19]]).status.success());
    let out = store.ok(&["rmi", "tools:1.0"]);
    assert!(out.contains("Untagged: tools:1.0"), "{out}");
    let out = store.ok(&["rmi", "busybox"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(store.ok(&["images"]).lines().count(), 1);
    let missing = store.strata(&["inspect", "busybox"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no such image or container: busybox")
    );
}

#[test]
fn gc_frees_after_rmi_and_fsck_stays_clean() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    let nothing = store.ok(&["gc"]);
    assert!(nothing.contains("0 blobs"), "{nothing}");
    store.ok(&["rmi", "busybox"]);
    let freed = store.ok(&["gc"]);
    assert!(
        freed.contains("3 blobs") && freed.contains("1 unpacked layers"),
        "{freed}"
    );
    assert!(
        fs::read_dir(store.root().join("oci/blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
    store.ok(&["fsck"]);
}

#[test]
fn import_reads_gzip_and_zstd_from_stdin() {
    require_tool("zstd", "apt-get install -y zstd");
    let store = TestStore::new();
    let tar = busybox_rootfs_tar();
    let mut ids = Vec::new();
    for (tool, name) in [("gzip", "from:gzip"), ("zstd", "from:zstd")] {
        let compressed = store.root().with_extension(tool);
        let status = Command::new(tool)
            .args(["-c", tar.to_str().unwrap()])
            .stdout(File::create(&compressed).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "{tool} failed");
        let out = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["import", "-", name])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdin(File::open(&compressed).unwrap())
            .output()
            .unwrap();
        assert_success(&out, &["import", "-", name]);
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        fs::remove_file(compressed).unwrap();
    }
    assert_eq!(
        ids[0], ids[1],
        "the same tree gives the same image id however it was compressed"
    );
    store.ok(&["fsck"]);
}

#[test]
fn same_tree_into_two_fresh_stores_gives_identical_manifest_digests() {
    let tar = busybox_rootfs_tar();
    let digests: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let store = TestStore::new();
            let mut cmd = Command::new(strata_bin());
            cmd.arg("--root")
                .arg(store.root())
                .args(["import", tar.to_str().unwrap(), "bb"])
                .env("SOURCE_DATE_EPOCH", "1700000000");
            assert_success(
                &run_with_timeout(cmd, Duration::from_secs(120)),
                &["import"],
            );
            inspect(&store, "bb")["ManifestDigest"].clone()
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn skopeo_umoci_and_oci_image_tool_read_an_imported_image() {
    require_tool("skopeo", "apt-get install -y skopeo");
    require_tool("umoci", "apt-get install -y umoci");
    require_tool("oci-image-tool", "apt-get install -y oci-image-tool");
    let store = TestStore::new();
    let tar = busybox_rootfs_tar();
    store.ok(&["import", tar.to_str().unwrap(), "busybox:zstd"]);
    // umoci 0.4 and oci-image-tool 1.0.0-rc1 predate zstd layers: give them gzip
    store.ok(&[
        "import",
        "--compression",
        "gzip",
        tar.to_str().unwrap(),
        "busybox:gzip",
    ]);
    let layout = store.root().join("oci");
    let layout = layout.to_str().unwrap();

    for tag in ["busybox:zstd", "busybox:gzip"] {
        let out = tool("skopeo", &["inspect", &format!("oci:{layout}:{tag}")]);
        let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(info["Os"], "linux");
        assert_eq!(info["Digest"], inspect(&store, tag)["ManifestDigest"]);
        let copy = store.root().with_extension(format!("dir-{}", &tag[8..]));
        tool(
            "skopeo",
            &[
                "copy",
                &format!("oci:{layout}:{tag}"),
                &format!("dir:{}", copy.display()),
            ],
        );
        assert!(copy.join("manifest.json").is_file());
        fs::remove_dir_all(copy).unwrap();
    }

    let bundle = store.root().with_extension("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{layout}:busybox:gzip"),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert!(bundle.join("config.json").is_file());
    fs::remove_dir_all(&bundle).unwrap();

    let out = tool(
        "oci-image-tool",
        &[
            "validate",
            "--type",
            "image",
            "--ref",
            "name=busybox:gzip",
            layout,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out).contains("Validation succeeded"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // A zstd image pushed with --compression-format gzip: umoci unpacks it, skopeo turns
    // it into a docker v2s2 image, and pulled back it is the same image (same config).
    let export = store.root().with_extension("export");
    let target = format!("oci:{}:bb", export.display());
    store.ok(&[
        "push",
        "-q",
        "--compression-format",
        "gzip",
        "busybox:zstd",
        &target,
    ]);
    let manifest = tool("skopeo", &["inspect", "--raw", &target]);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:bb", export.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    let v2s2 = store.root().with_extension("v2s2");
    tool(
        "skopeo",
        &[
            "copy",
            "--format",
            "v2s2",
            &target,
            &format!("dir:{}", v2s2.display()),
        ],
    );
    let fresh = TestStore::new();
    fresh.ok(&["pull", "-q", &target]);
    assert_eq!(
        inspect(&fresh, "bb")["Id"],
        inspect(&store, "busybox:zstd")["Id"]
    );
    // An image already gzip goes out as it is: same manifest, same digest.
    let same = format!("oci:{}:same", export.display());
    let pushed = store.ok(&[
        "push",
        "-q",
        "--compression-format",
        "gzip",
        "busybox:gzip",
        &same,
    ]);
    assert_eq!(
        pushed.trim(),
        inspect(&store, "busybox:gzip")["ManifestDigest"]
            .as_str()
            .unwrap()
    );
    let out = store.strata(&[
        "push",
        "--compression-format",
        "lz4",
        "busybox:zstd",
        &target,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown compression is a usage error"
    );
    for dir in [bundle, export, v2s2] {
        fs::remove_dir_all(dir).unwrap();
    }
}

/// Runs a host tool and returns its stdout + stderr, failing the test with both on error.
fn tool(name: &str, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new(name);
    cmd.args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{name} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    [out.stdout, out.stderr].concat()
}

#[test]
fn flipped_byte_is_reported_by_fsck_and_refused_on_read() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    let image = inspect(&store, "busybox");
    let layer = image["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let config = image["Id"].as_str().unwrap().to_string();
    flip_byte(&blob_path(store.root(), &layer));
    let out = store.strata(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&layer) && stdout.contains("corrupt"),
        "{stdout}"
    );

    // Nothing exports it: an archive or a layout with a corrupt blob is never written.
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("busybox.tar");
    let layout = out_dir.path().join("layout");
    for args in [
        vec!["save", "busybox", "-o", archive.to_str().unwrap()],
        vec![
            "push",
            "-q",
            "busybox",
            &format!("oci:{}:bb", layout.display()),
        ],
        vec![
            "push",
            "-q",
            "busybox",
            &format!("oci-archive:{}", archive.display()),
        ],
    ] {
        let out = store.strata(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&layer) && stderr.contains("corrupt"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!archive.exists(), "no archive is left by a failed save");
    let copied = layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!copied.exists(), "the corrupt blob was exported");

    flip_byte(&blob_path(store.root(), &config));
    let out = store.strata(&["inspect", "busybox"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&config) && stderr.contains("corrupt"),
        "{stderr}"
    );
}

fn blob_path(root: &Path, digest: &str) -> std::path::PathBuf {
    root.join("oci/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn concurrent_imports_of_one_tarball_both_succeed() {
    let store = TestStore::new();
    let tar = busybox_rootfs_tar();
    let children: Vec<_> = ["one", "two", "three"]
        .iter()
        .map(|name| {
            Command::new(strata_bin())
                .arg("--root")
                .arg(store.root())
                .args(["import", tar.to_str().unwrap(), name])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list: serde_json::Value = serde_json::from_str(&store.ok(&["images", "--json"])).unwrap();
    let names: usize = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["RepoTags"].as_array().unwrap().len())
        .sum();
    assert_eq!(names, 3);
    store.ok(&["fsck"]);
}

/// `kill -9` of `strata import` at random moments never leaves a store fsck rejects.
/// STRATA_KILL_ITERATIONS sets the number of rounds (default 30).
#[test]
fn kill_9_during_import_never_breaks_the_store() {
    let iterations: u32 = std::env::var("STRATA_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let store = TestStore::new();
    let tar = busybox_rootfs_tar();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut killed = 0;
    for round in 0..iterations {
        // xorshift: good enough to spread the kills over the import
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 301);
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args([
                "import",
                tar.to_str().unwrap(),
                &format!("round:{}", round % 3),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            // SIGKILL to our own child, by its pid
            child.kill().unwrap();
            killed += 1;
        }
        let status = child.wait().unwrap();
        let out = store.strata(&["fsck"]);
        assert!(
            out.status.success(),
            "round {round}: fsck failed after killing import at {delay:?} (status {status})\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("killed {killed} of {iterations} imports");
    store.ok(&["import", tar.to_str().unwrap(), "final"]);
    store.ok(&["gc"]);
    store.ok(&["fsck"]);
    assert!(
        fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn gc_waits_for_other_users_of_the_store() {
    let store = TestStore::new();
    store.ok(&["images"]);
    let lock = File::open(store.root().join("lock")).unwrap();
    lock.lock_shared().unwrap();
    let mut child = Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .arg("gc")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let still_running = child.try_wait().unwrap().is_none();
    lock.unlock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("gc did not finish after the lock was released");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(still_running, "gc ran while another process held the store");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for other strata processes"));
}

#[test]
fn fsck_accepts_the_layers_a_failed_build_keeps_for_its_cache() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("f"), "x").unwrap();
    fs::write(
        context.path().join("Buildfile"),
        "FROM busybox\nCOPY f /f\nRUN false\n",
    )
    .unwrap();
    let out = store.strata(&["build", "-t", "broken", context.path().to_str().unwrap()]);
    assert!(!out.status.success(), "RUN false must fail the build");
    let out = store.strata(&["fsck"]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the COPY step's layer is the cache's: {said}"
    );
    // An unpacked layer that nothing names (a build killed between unpacking a step's
    // layer and recording it leaves one) is garbage, not a problem: gc removes it.
    let stray = store.root().join("layers").join("ab".repeat(32));
    fs::create_dir(&stray).unwrap();
    store.ok(&["fsck"]);
    store.ok(&["gc"]);
    assert!(!stray.exists());
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    // `strata inspect busybox | head -c 0`: the reader is gone before anything is written.
    // It is closed before strata starts: closed after, a busy machine could let strata
    // write into the pipe's buffer first (CI once saw it exit 0).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["inspect", "busybox"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "as a SIGPIPE death: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Docker Hub names are one image however they are spelled, as with docker:
/// `busybox`, `library/busybox` and `docker.io/library/busybox`.
#[test]
fn docker_hub_names_resolve_however_spelled() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    store.ok(&["tag", "busybox", "keep:1"]);
    for name in [
        "library/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
    ] {
        assert_eq!(
            store.ok(&["run", "--rm", name, "echo", "ok"]),
            "ok\n",
            "{name}"
        );
    }
    // one entry per name however spelled: the full spelling replaces the short one
    store.ok(&["tag", "busybox", "docker.io/library/busybox:latest"]);
    let listed: serde_json::Value = serde_json::from_str(&store.ok(&["images", "--json"])).unwrap();
    let names: Vec<&str> = listed[0]["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.ends_with("busybox:latest"))
            .count(),
        1,
        "{names:?}"
    );
    store.ok(&["tag", "busybox", "docker.io/legacy/img:v1"]);
    assert_eq!(
        store.ok(&["run", "--rm", "legacy/img:v1", "echo", "ok"]),
        "ok\n"
    );
    // rmi by another spelling removes that one name, not every name of the image
    store.ok(&["rmi", "docker.io/legacy/img:v1"]);
    let images = store.ok(&["images"]);
    assert!(
        images.contains("keep") && images.contains("busybox") && !images.contains("legacy"),
        "{images}"
    );
}

/// The build cache keeps a removed image's layers until `gc --cache` forgets it, as
/// `docker builder prune` does; an age keeps the recent entries.
#[test]
fn gc_cache_forgets_the_build_cache() {
    let store = TestStore::new();
    store.import_busybox("busybox");
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Buildfile"),
        "FROM busybox\nRUN --mount=type=cache,target=/c head -c 100000 /dev/urandom > /blob\n",
    )
    .unwrap();
    store.ok(&["build", "-t", "big", ctx.path().to_str().unwrap()]);
    store.ok(&["rmi", "big"]);
    let kept = store.ok(&["gc"]);
    let blobs = || {
        fs::read_dir(store.root().join("oci/blobs/sha256"))
            .unwrap()
            .count()
    };
    let with_cache = blobs();
    assert!(kept.contains("0 cache entries"), "{kept}");
    let recent = store.ok(&["gc", "--cache", "1d"]);
    assert!(
        recent.contains(" 0 cache entries"),
        "a day's entries stay: {recent}"
    );
    assert_eq!(blobs(), with_cache);
    let pruned = store.ok(&["gc", "--cache"]);
    assert!(!pruned.contains(" 0 cache entries"), "{pruned}");
    assert!(blobs() < with_cache, "the cached layer went: {pruned}");
    store.ok(&["fsck"]);
    assert!(!store.strata(&["gc", "--cache", "soon"]).status.success());
}

#[test]
fn a_damaged_image_is_left_out_of_images_and_removed_by_rmi_and_repair_mends_the_rest() {
    let store = TestStore::new();
    store.import_busybox("good");
    store.ok(&["run", "--name", "c", "good", "sh", "-c", "echo x > /f"]);
    store.ok(&["commit", "c", "broken"]);
    store.ok(&["rm", "c"]);
    let manifest = inspect(&store, "broken")["ManifestDigest"]
        .as_str()
        .expect("inspect shows the manifest digest")
        .to_string();
    fs::remove_file(blob_path(store.root(), &manifest)).unwrap();
    let out = store.strata(&["images"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("good") && !stdout.contains("broken"),
        "{stdout}"
    );
    assert!(
        stderr.contains("broken") && stderr.contains("damaged"),
        "{stderr}"
    );
    let out = store.strata(&["gc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rmi broken"));
    assert!(store.ok(&["rmi", "broken"]).contains("Untagged: broken"));
    store.ok(&["gc"]);
    store.ok(&["fsck"]);

    // A corrupt layer blob: --repair removes it; then index.json goes missing: the store
    // is not silently emptied, and --repair lists the image again, unnamed.
    let layer = inspect(&store, "good")["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let id = inspect(&store, "good")["Id"].as_str().unwrap().to_string();
    flip_byte(&blob_path(store.root(), &layer));
    let out = store.strata(&["fsck", "--repair"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("removed corrupt blob {layer}")),
        "{stdout}"
    );
    assert!(!blob_path(store.root(), &layer).exists());
    fs::remove_file(store.root().join("oci/index.json")).unwrap();
    let out = store.strata(&["images"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fsck --repair"));
    assert!(!store.strata(&["gc"]).status.success());
    let out = store.strata(&["fsck", "--repair"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt index.json: 1 image"));
    let ids = store.ok(&["images", "-q"]);
    assert!(id.contains(ids.trim()), "{ids}");
}

#[test]
fn rmi_force_untags_an_image_a_container_uses_and_gc_dangling_spares_it() {
    let store = TestStore::new();
    store.import_busybox("app");
    store.ok(&["run", "--name", "c", "app", "true"]);
    let out = store.strata(&["rmi", "app"]);
    assert!(!out.status.success(), "rmi without -f refuses");
    let out = store.ok(&["rmi", "-f", "app"]);
    assert!(
        out.contains("Untagged: app") && !out.contains("Deleted"),
        "{out}"
    );
    let listed = store.ok(&["images"]);
    assert!(listed.contains("<none>"), "{listed}");
    // a dangling image a container was made from stays through gc --dangling
    store.ok(&["gc", "--dangling"]);
    assert!(store.ok(&["images"]).contains("<none>"));
    store.ok(&["start", "-a", "c"]);
    store.ok(&["rm", "c"]);
    let out = store.ok(&["gc", "--dangling"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert!(!store.ok(&["images"]).contains("<none>"));
    store.ok(&["fsck"]);
}

#[test]
fn ps_and_images_take_docker_format_templates() {
    let store = TestStore::new();
    store.import_busybox("app:1");
    store.ok(&["run", "--name", "fmt", "app:1", "true"]);
    assert_eq!(
        store.ok(&["ps", "-a", "--format", "{{.Names}}\\t{{.State}}"]),
        "fmt\texited\n"
    );
    let table = store.ok(&["ps", "-a", "--format", "table {{.Names}}\\t{{.Image}}"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("NAMES") && lines[0].contains("IMAGE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("fmt") && lines[1].ends_with("app:1"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(store.ok(&["ps", "-a", "--format", "json"]).trim()).unwrap();
    assert_eq!(json["Names"], "fmt");
    let id = store.ok(&["images", "-q"]);
    assert_eq!(
        store.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]),
        format!("app:1 {}", id)
    );
    // a bad template fails before printing
    assert!(
        !store
            .strata(&["images", "--format", "{{.Nope"])
            .status
            .success()
    );
    // once its tag moves to another image, the container shows its image's id (docker)
    store.ok(&["commit", "fmt", "app:1"]);
    assert_eq!(
        store.ok(&["ps", "-a", "--format", "{{.Image}}"]).trim(),
        id.trim()
    );
    store.ok(&["images", "-a"]);
    store.ok(&["rm", "fmt"]);
}
