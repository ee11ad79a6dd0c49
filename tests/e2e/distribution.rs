//! End-to-end distribution: `strata push`, `pull`, `save`, `load`, `login`, `logout`
//! against a real Debian `docker-registry` (plain and htpasswd), with skopeo reading what
//! strata wrote.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{TestStore, assert_success, require_tool, run_with_timeout, strata_bin};

#[allow(dead_code)]
#[path = "../../store/tests/registry/harness.rs"]
mod harness;

use harness::{Proxy, Registry};

fn skopeo(args: &[&str]) -> serde_json::Value {
    require_tool("skopeo", "apt-get install -y skopeo");
    let out = harness::run(Command::new("skopeo").args(args));
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// strata with an explicit credentials file.
fn strata_with_auth(store: &TestStore, auth_file: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(strata_bin());
    cmd.arg("--root")
        .arg(store.root())
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth_file);
    run_with_timeout(cmd, Duration::from_secs(120))
}

#[test]
fn push_then_pull_into_a_fresh_store_gives_the_same_image() {
    let registry = Registry::start();
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let id = store.ok(&["inspect", "busybox:1"]);
    let dest = format!("{}/e2e/busybox:1", registry.host);
    let digest = store.ok(&["push", "busybox:1", &dest]).trim().to_string();
    assert!(
        digest.starts_with("sha256:"),
        "push prints the manifest digest: {digest}"
    );
    let inspected = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{dest}")]);
    assert_eq!(inspected["Digest"], digest.as_str());

    let fresh = TestStore::new();
    let pulled_id = fresh.ok(&["pull", &dest]).trim().to_string();
    let original: serde_json::Value = serde_json::from_str(&id).unwrap_or_default();
    let images = fresh.ok(&["images", "--json"]);
    assert!(
        images.contains(&dest) && images.contains(&pulled_id),
        "{images}"
    );
    assert_eq!(
        original[0]["Id"].as_str(),
        Some(pulled_id.as_str()),
        "same image id after the round trip"
    );
    // Both stores record the repo digest, as docker does after a push and a pull by tag.
    let by_digest = format!("{}/e2e/busybox@{digest}", registry.host);
    for (which, s, name) in [("pusher", &store, "busybox:1"), ("puller", &fresh, &*dest)] {
        let pinned = s.ok(&["inspect", "-f", "{{index .RepoDigests 0}}", name]);
        assert_eq!(pinned.trim(), by_digest, "{which}");
        // one row for the tag: its repo digest is not a row of its own
        let rows = s.ok(&["images"]).lines().count();
        assert_eq!(rows, 2, "{which}");
    }
    // The pulled image runs.
    let out = fresh.strata(&["run", "--rm", &dest, "sh", "-c", "echo pulled-and-ran"]);
    assert_success(&out, &["run", "--rm", &dest]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pulled-and-ran\n");
    // By digest too, and a second pull is a no-op. It says what was pulled: the digest
    // asked for, not the tag the store already has for the image.
    let out = fresh.strata(&["pull", &by_digest]);
    assert_success(&out, &["pull", &by_digest]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("pulled {by_digest}")), "{said}");
    // Pulled by digest into a store without the tag, the image is named repo@digest, as
    // docker records a repo digest: it survives gc and `run`/`rmi` find it by that name.
    let pinned = TestStore::new();
    pinned.ok(&["pull", &by_digest]);
    pinned.ok(&["gc"]);
    let listed: serde_json::Value =
        serde_json::from_str(&pinned.ok(&["images", "--json"])).unwrap();
    assert_eq!(listed[0]["RepoDigests"][0], by_digest.as_str(), "{listed}");
    assert_eq!(
        listed[0]["RepoTags"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    let table = pinned.ok(&["images"]);
    assert!(
        table.contains(&format!("{}/e2e/busybox   <none>", registry.host)),
        "{table}"
    );
    assert_eq!(
        pinned.ok(&["run", "--rm", &by_digest, "echo", "pinned"]),
        "pinned\n"
    );
    pinned.ok(&["rmi", &by_digest]);
    // run pulls an image it does not have, as docker run does
    let unpulled = TestStore::new();
    let out = unpulled.strata(&["run", "--rm", &dest, "echo", "auto-pulled"]);
    assert_success(&out, &["run", "--rm", &dest]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "auto-pulled\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unable to find image"));
    assert_eq!(
        pinned.ok(&["images", "-q"]).trim(),
        "",
        "rmi by the digest name removes it"
    );
    // Errors name the thing: an unknown tag.
    let out = fresh.strata(&["pull", &format!("{}/e2e/busybox:nope", registry.host)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("MANIFEST_UNKNOWN"),
        "{err}"
    );
}

#[test]
fn login_logout_against_a_basic_auth_registry() {
    let registry = Registry::start_with_auth(Some(("ci", "s3cret")));
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let auth_dir = tempfile::tempdir().unwrap();
    let auth_file = auth_dir.path().join("auth.json");
    let dest = format!("{}/private/busybox:1", registry.host);

    let out = strata_with_auth(&store, &auth_file, &["push", "-q", "busybox:1", &dest]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("strata login"), "{err}");

    let bad = strata_with_auth(
        &store,
        &auth_file,
        &["login", &registry.host, "-u", "ci", "-p", "wrong"],
    );
    assert!(!bad.status.success(), "a wrong password is refused");
    assert!(!auth_file.exists(), "nothing stored after a failed login");

    let args = ["login", &registry.host, "-u", "ci", "-p", "s3cret"];
    assert_success(&strata_with_auth(&store, &auth_file, &args), &args);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert!(
        saved["auths"][&registry.host]["auth"].is_string(),
        "{saved}"
    );

    let args = ["push", "-q", "busybox:1", &dest];
    assert_success(&strata_with_auth(&store, &auth_file, &args), &args);
    let fresh = TestStore::new();
    let args = ["pull", "-q", &dest];
    assert_success(&strata_with_auth(&fresh, &auth_file, &args), &args);

    let args = ["logout", &registry.host];
    assert_success(&strata_with_auth(&store, &auth_file, &args), &args);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert!(saved["auths"].get(&registry.host).is_none(), "{saved}");
    assert!(
        !strata_with_auth(&store, &auth_file, &args).status.success(),
        "second logout reports nothing to do"
    );
}

/// A docker config directory, a `bin/` with the test credential helper
/// (`docker-credential-files`, keeping credentials in `helper/`), and a HOME of its own: strata
/// runs with DOCKER_CONFIG, HOME and PATH pointing there (each run its own environment; the
/// test binary's is not touched).
struct DockerConfig {
    dir: tempfile::TempDir,
}

impl DockerConfig {
    fn new(config_json: &str) -> DockerConfig {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for sub in ["docker", "bin", "helper", "home"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("docker/config.json"), config_json).unwrap();
        let helper = dir.path().join("bin/docker-credential-files");
        let script = include_str!("../../store/tests/registry/credential-helper.sh")
            .replace("@DIR@", &dir.path().join("helper").display().to_string());
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        DockerConfig { dir }
    }

    fn path(&self, sub: &str) -> std::path::PathBuf {
        self.dir.path().join(sub)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path("docker/config.json")).unwrap()).unwrap()
    }

    fn strata(&self, store: &TestStore, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(strata_bin());
        cmd.arg("--root")
            .arg(store.root())
            .args(args)
            .env_remove("REGISTRY_AUTH_FILE")
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("HOME", self.path("home"))
            .env("PATH", path);
        run_with_timeout(cmd, Duration::from_secs(120))
    }
}

#[test]
fn docker_config_dir_and_its_credential_helper_serve_login_push_pull_and_logout() {
    let registry = Registry::start_with_auth(Some(("ci", "s3cret")));
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let dest = format!("{}/private/busybox:1", registry.host);
    let docker = DockerConfig::new(r#"{"credsStore":"files"}"#);

    // The helper has nothing yet: anonymous, refused.
    let out = docker.strata(&store, &["push", "-q", "busybox:1", &dest]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");

    let args = ["login", &registry.host, "-u", "ci", "-p", "s3cret"];
    let out = docker.strata(&store, &args);
    assert_success(&out, &args);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("docker-credential-files"), "{said}");
    // Kept by the helper; the config file has docker's empty entry and no secret.
    let kept = std::fs::read_to_string(docker.path("helper").join(registry.host.replace(':', "_")))
        .unwrap();
    assert!(
        kept.contains("s3cret") && kept.contains("\"Username\":\"ci\""),
        "{kept}"
    );
    let config = docker.config();
    assert_eq!(
        config["auths"][&registry.host],
        serde_json::json!({}),
        "{config}"
    );
    assert!(
        !docker.path("home/.docker").exists(),
        "nothing written under HOME"
    );

    let args = ["push", "-q", "busybox:1", &dest];
    assert_success(&docker.strata(&store, &args), &args);
    let fresh = TestStore::new();
    let args = ["pull", "-q", &dest];
    assert_success(&docker.strata(&fresh, &args), &args);

    let args = ["logout", &registry.host];
    assert_success(&docker.strata(&store, &args), &args);
    let calls = std::fs::read_to_string(docker.path("helper/calls")).unwrap();
    assert!(
        calls.contains(&format!("store {}\n", registry.host))
            && calls.contains(&format!("get {}\n", registry.host))
            && calls.contains(&format!("erase {}\n", registry.host)),
        "{calls}"
    );
    let again = TestStore::new();
    let out = docker.strata(&again, &["pull", "-q", &dest]);
    assert!(!out.status.success(), "logged out: anonymous again");

    // credHelpers names a helper for this registry that is not installed: a clear error
    // naming it and the registry, for a pull and for a login (which stores nothing).
    let docker = DockerConfig::new(&format!(
        r#"{{"credHelpers":{{"{}":"absent"}},"credsStore":"files"}}"#,
        registry.host
    ));
    let out = docker.strata(&again, &["pull", "-q", &dest]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("docker-credential-absent")
            && err.contains(&registry.host)
            && err.contains("not installed"),
        "{err}"
    );
    let out = docker.strata(
        &store,
        &["login", &registry.host, "-u", "ci", "-p", "s3cret"],
    );
    assert!(!out.status.success());
    assert!(
        docker.config()["auths"].is_null(),
        "nothing stored: {}",
        docker.config()
    );

    // DOCKER_CONFIG without helpers: the plain file there, not ~/.docker (QA 17b #10).
    let docker = DockerConfig::new("{}");
    let args = ["login", &registry.host, "-u", "ci", "-p", "s3cret"];
    let out = docker.strata(&store, &args);
    assert_success(&out, &args);
    assert!(docker.config()["auths"][&registry.host]["auth"].is_string());
    assert!(!docker.path("home/.docker").exists());
    let args = ["pull", "-q", &dest];
    assert_success(&docker.strata(&TestStore::new(), &args), &args);
}

/// The entries of a store's tmp/, with their sizes.
fn tmp_entries(store: &TestStore) -> Vec<(String, u64)> {
    std::fs::read_dir(store.root().join("tmp"))
        .map(|dir| {
            dir.flatten()
                .map(|e| {
                    let size = e.metadata().map_or(0, |m| m.len());
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `strata pull -q REFERENCE` into `store` and returns it once a blob download is
/// under way (a partial blob of 64 KiB or more in tmp/).
fn pull_under_way(store: &TestStore, reference: &str) -> std::process::Child {
    let mut child = Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["pull", "-q", reference])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start strata pull");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !tmp_entries(store).iter().any(|(_, size)| *size >= 64 << 10) {
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no download under way in {}", store.root().display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Waits (30 s at most, then kills it by its PID) for `child` to end.
fn wait_for(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata pull did not end after its signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interrupted_pull_leaves_no_partial_blob_and_a_killed_ones_are_swept() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;

    // An image with an incompressible 8 MiB layer: a pull through the slow proxy
    // (~1.3 MB/s) takes seconds.
    let registry = Registry::start();
    let store = TestStore::new();
    let content = tempfile::tempdir().unwrap();
    let mut noise = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(8 << 20)
        .read_to_end(&mut noise)
        .unwrap();
    std::fs::write(content.path().join("noise.bin"), noise).unwrap();
    let tar = content.path().join("layer.tar");
    harness::run(
        Command::new("tar")
            .arg("-C")
            .arg(content.path())
            .arg("-cf")
            .arg(&tar)
            .arg("noise.bin"),
    );
    store.ok(&["import", tar.to_str().unwrap(), "big:1"]);
    let dest = format!("{}/e2e/big:1", registry.host);
    store.ok(&["push", "-q", "big:1", &dest]);
    let proxy = Proxy::start_slow(&registry.host);
    let slow = format!("{}/e2e/big:1", proxy.host);

    let fresh = TestStore::new();
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut child = pull_under_way(&fresh, &slow);
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_for(&mut child);
        assert!(
            status.signal() == Some(signal as i32) || status.code() == Some(128 + signal as i32),
            "{signal}: {status}"
        );
        assert_eq!(tmp_entries(&fresh), [], "{signal} left partial blobs");
        assert_eq!(fresh.ok(&["images", "-q"]), "");
    }

    // kill -9 cannot be caught: the partial blob stays, until the next command opens the
    // store and sees its process gone.
    let mut child = pull_under_way(&fresh, &slow);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = tmp_entries(&fresh);
    assert!(!left.is_empty(), "a SIGKILLed pull leaves its partial blob");
    fresh.ok(&["images", "-q"]);
    assert_eq!(tmp_entries(&fresh), [], "swept by the next open");

    let id = fresh.ok(&["pull", "-q", &dest]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(tmp_entries(&fresh), []);
}

#[test]
fn save_by_id_writes_no_name() {
    // `docker save ID` writes no RepoTags: loaded elsewhere the image stays unnamed.
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let id = store.ok(&["images", "-q", "--no-trunc", "busybox:1"]);
    let id = id.trim();
    assert!(id.starts_with("sha256:"), "{id}");
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("byid.tar");
    let file_s = file.to_str().unwrap();
    store.ok(&["save", "-o", file_s, &id[7..19]]);
    let out = Command::new("tar")
        .args(["-xOf", file_s, "manifest.json"])
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!([]), "{manifest}");
    let out = Command::new("tar")
        .args(["-xOf", file_s, "index.json"])
        .output()
        .unwrap();
    let index = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!index.contains("busybox"), "{index}");

    let fresh = TestStore::new();
    let loaded = fresh.ok(&["load", "-i", file_s]);
    assert_eq!(loaded.trim(), format!("Loaded image ID: {id}"));
    // saved by name, it keeps that name only
    store.ok(&["tag", "busybox:1", "other:2"]);
    store.ok(&["save", "-o", file_s, "other:2"]);
    let loaded = TestStore::new().ok(&["load", "-i", file_s]);
    assert_eq!(loaded.trim(), "Loaded image: other:2");
    // asked for twice (by id and by names): one entry, with every name asked for
    store.ok(&[
        "save",
        "-o",
        file_s,
        &id[7..19],
        "other:2",
        "busybox:1",
        "other:2",
    ]);
    let out = Command::new("tar")
        .args(["-xOf", file_s, "manifest.json"])
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        manifest,
        serde_json::json!([{
            "Config": manifest[0]["Config"], "Layers": manifest[0]["Layers"],
            "RepoTags": ["other:2", "busybox:1"]
        }]),
    );
    // a directory or a missing directory is refused before anything is written, by its name
    let out = store.strata(&["save", "-o", out_dir.path().to_str().unwrap(), "other:2"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("Is a directory"),
        "{said}"
    );
    let missing = out_dir.path().join("nowhere/x.tar");
    let out = store.strata(&["save", "-o", missing.to_str().unwrap(), "other:2"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains(missing.to_str().unwrap())
            && !said.contains("x.tar.tmp"),
        "{said}"
    );
}

#[test]
fn save_load_round_trip_readable_by_skopeo_and_podman() {
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    store.ok(&["tag", "busybox:1", "other:2"]);
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("images.tar");
    let file_s = file.to_str().unwrap();
    store.ok(&["save", "busybox:1", "-o", file_s]);
    skopeo(&["inspect", &format!("oci-archive:{file_s}")]);
    skopeo(&["inspect", &format!("docker-archive:{file_s}")]);
    // podman loads it too (private vfs storage in a temp dir).
    require_tool("podman", "apt-get install -y podman");
    let podman_dir = tempfile::tempdir().unwrap();
    let mut podman = Command::new("podman");
    podman
        .arg("--root")
        .arg(podman_dir.path().join("root"))
        .arg("--runroot")
        .arg(podman_dir.path().join("run"))
        .args(["--storage-driver", "vfs", "load", "-i", file_s]);
    let out = run_with_timeout(podman, Duration::from_secs(120));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("busybox:1"),
        "podman load: {text}"
    );
    // a bare file name, as `docker save -o x.tar` is mostly used
    let out = store.strata_in(
        &["save", "busybox:1", "other:2", "-o", "images.tar"],
        Some(out_dir.path()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // through a pipe, as `docker save img | ssh host docker load` is used
    let piped = out_dir.path().join("piped.tar");
    let status = Command::new(crate::common::strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["save", "busybox:1"])
        .stdout(std::fs::File::create(&piped).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let from_stdin = TestStore::new();
    let out = Command::new(crate::common::strata_bin())
        .arg("--root")
        .arg(from_stdin.root())
        .arg("load")
        .stdin(std::fs::File::open(&piped).unwrap())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("busybox:1"),
        "{out:?}"
    );

    let fresh = TestStore::new();
    let loaded = fresh.ok(&["load", "-i", file_s]);
    // docker's lines: one per name
    let mut lines: Vec<&str> = loaded.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["Loaded image: busybox:1", "Loaded image: other:2"],
        "{loaded}"
    );
    let images = fresh.ok(&["images"]);
    assert!(
        images.contains("busybox") && images.contains("other"),
        "{images}"
    );
    // Loaded again into a store that also calls the image something else: the lines name
    // what the archive gave, not the store's own names.
    fresh.ok(&["tag", "busybox:1", "mine:1"]);
    let again = fresh.ok(&["load", "-i", file_s]);
    assert!(!again.contains("mine:1"), "{again}");
    assert!(again.contains("Loaded image: busybox:1"), "{again}");

    // oci: and oci-archive: transports on both verbs.
    let layout = out_dir.path().join("layout");
    store.ok(&[
        "push",
        "-q",
        "busybox:1",
        &format!("oci:{}:bb", layout.display()),
    ]);
    skopeo(&["inspect", &format!("oci:{}:bb", layout.display())]);
    // The layout's blobs are copies: changing them cannot change the store's.
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let stored = store
            .root()
            .join("oci/blobs/sha256")
            .join(entry.file_name());
        if let Ok(stored) = std::fs::metadata(stored) {
            use std::os::unix::fs::MetadataExt;
            assert_ne!(
                entry.metadata().unwrap().ino(),
                stored.ino(),
                "{:?} is shared",
                entry.file_name()
            );
        }
    }
    let again = TestStore::new();
    again.ok(&["pull", "-q", &format!("oci:{}:bb", layout.display())]);
    assert!(again.ok(&["images"]).contains("bb"));
}

/// Builds the same Buildfile in a fresh store from a `--cache-from` export: every step is
/// served from the cache (no RUN executes) and the image id is the same.
fn ci_cache_round_trip(registry: &Registry, to: &str, from: &str) {
    let base = format!("{}/ci/busybox:base", registry.host);
    let first = TestStore::new();
    first.import_busybox("busybox:1");
    first.ok(&["push", "-q", "busybox:1", &base]);
    first.ok(&["pull", "-q", &base]);
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("data.txt"), "context file\n").unwrap();
    std::fs::write(
        context.path().join("Buildfile"),
        format!(
            "FROM {base}\nRUN echo step-one-ran && echo one > /one\nCOPY data.txt /data.txt\nENV GREETING=hi\nRUN echo step-two-ran && cat /one /data.txt > /two\n"
        ),
    )
    .unwrap();
    let ctx = context.path().to_str().unwrap();
    let build = |store: &TestStore, cache: &[&str]| {
        let mut args = vec!["build", "--progress", "plain", "-t", "app:ci"];
        args.extend_from_slice(cache);
        args.push(ctx);
        let out = store.strata(&args);
        assert_success(&out, &args);
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (id, log) = build(&first, &["--cache-to", to]);
    assert!(
        log.contains("| step-one-ran"),
        "the first build runs its steps: {log}"
    );

    // A fresh machine: only the base is pulled (the builder needs it by digest), the rest
    // comes from the cache without running a step.
    let second = TestStore::new();
    second.ok(&["pull", "-q", &base]);
    // As a CI job does: read the cache and write it back to the same place.
    let (again, log) = build(&second, &["--cache-from", from, "--cache-to", to]);
    assert_eq!(again, id, "same image id from the cache:\n{log}");
    assert!(
        !log.contains("| step-one-ran") && !log.contains("| step-two-ran"),
        "no RUN executed:\n{log}"
    );
    assert_eq!(
        log.matches(" CACHED").count(),
        4,
        "every step after FROM is a cache hit:\n{log}"
    );

    // The next job changes a file: the steps before the COPY still come from the cache.
    std::fs::write(context.path().join("data.txt"), "changed\n").unwrap();
    let third = TestStore::new();
    third.ok(&["pull", "-q", &base]);
    let (changed, log) = build(&third, &["--cache-from", from]);
    assert_ne!(changed, id);
    assert!(
        !log.contains("| step-one-ran") && log.contains("| step-two-ran"),
        "only the steps after the change run:\n{log}"
    );

    // A cache is best effort, as with BuildKit: one that is down or missing is reported
    // and the build goes on without it.
    let (_, log) = build(
        &third,
        &["--cache-from", "type=registry,ref=127.0.0.1:1/ci/cache:x"],
    );
    assert!(
        log.contains("warning: --cache-from type=registry,ref=127.0.0.1:1/ci/cache:x"),
        "{log}"
    );
    let missing = format!("type=local,src={}/none", context.path().display());
    let (_, log) = build(&third, &["--cache-from", &missing]);
    assert!(log.contains("no cache there yet"), "{log}");

    // A cache whose layers are gone (a partial CI restore): each entry that needs one is a
    // miss, said so, and the step runs (QA 17b: the build failed, and a job writing the
    // cache back never mended it).
    if let Some(dir) = from.strip_prefix("type=local,src=") {
        let blobs = std::path::Path::new(dir).join("blobs/sha256");
        let read = |digest: &str| -> serde_json::Value {
            let hex = digest.trim_start_matches("sha256:");
            serde_json::from_slice(&std::fs::read(blobs.join(hex)).unwrap()).unwrap()
        };
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(std::path::Path::new(dir).join("index.json")).unwrap(),
        )
        .unwrap();
        let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
        for layer in manifest["layers"].as_array().unwrap() {
            let hex = layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:");
            let _ = std::fs::remove_file(blobs.join(hex));
        }
        let fourth = TestStore::new();
        fourth.ok(&["pull", "-q", &base]);
        let (_, log) = build(&fourth, &["--cache-from", from]);
        assert!(
            log.contains(&format!("warning: --cache-from {from}:"))
                && log.contains("running the step instead")
                && log.contains("| step-one-ran"),
            "{log}"
        );
    }
}

#[test]
fn ci_cache_round_trip_through_a_local_directory() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    ci_cache_round_trip(
        &registry,
        &format!("type=local,dest={cache},mode=max"),
        &format!("type=local,src={cache}"),
    );
    skopeo(&["inspect", "--raw", &format!("oci:{cache}:cache")]);
}

#[test]
fn ci_cache_round_trip_through_a_registry() {
    let registry = Registry::start();
    let reference = format!("{}/ci/cache:buildcache", registry.host);
    ci_cache_round_trip(
        &registry,
        &format!("type=registry,ref={reference},mode=max"),
        &format!("type=registry,ref={reference}"),
    );
}

/// A registry whose certificate comes from a private CA: trusted through the system's
/// bundle (SSL_CERT_FILE here) as docker trusts it, refused with a hint otherwise.
#[test]
fn a_registry_with_a_private_ca_is_verified_against_the_trusted_roots() {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let ip = listing
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("needs a non-loopback IPv4 address (clients skip verification on loopback): {listing}"))
        .to_string();
    let (registry, ca) = Registry::start_tls_with_ca(&ip);
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let dest = format!("{}/ca/busybox:1", registry.host);
    let out = store.strata(&["push", "busybox:1", &dest]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown CA must be refused");
    assert!(
        stderr.contains("certificate is not trusted") && stderr.contains("certs.d"),
        "{stderr}"
    );
    store.ok_env(
        &["push", "busybox:1", &dest],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    let fresh = TestStore::new();
    fresh.ok_env(&["pull", &dest], &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
}

#[test]
fn a_corrupt_local_blob_is_named_when_a_push_fails_on_it() {
    let registry = Registry::start();
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let image: serde_json::Value =
        serde_json::from_str(&store.ok(&["inspect", "busybox:1"])).unwrap();
    let layer = image[0]["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = store
        .root()
        .join("oci/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let out = store.strata(&[
        "push",
        "-q",
        "busybox:1",
        &format!("{}/e2e/corrupt:1", registry.host),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("blob {layer} is corrupt: content hashes to")),
        "the local blob is the culprit, not the registry: {stderr}"
    );
}

#[test]
fn a_pull_fetches_again_a_local_blob_cut_short() {
    let registry = Registry::start();
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let dest = format!("{}/e2e/cut:1", registry.host);
    store.ok(&["push", "-q", "busybox:1", &dest]);
    let fresh = TestStore::new();
    fresh.ok(&["pull", "-q", &dest]);
    let image: serde_json::Value = serde_json::from_str(&fresh.ok(&["inspect", &dest])).unwrap();
    let layer = image[0]["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = fresh
        .root()
        .join("oci/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(!fresh.strata(&["fsck"]).status.success());
    fresh.ok(&["pull", "-q", &dest]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    fresh.ok(&["fsck"]);
}

#[test]
fn loading_an_archive_without_a_layer_names_the_archive() {
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.tar");
    store.ok(&["save", "busybox:1", "-o", full.to_str().unwrap()]);
    let image: serde_json::Value =
        serde_json::from_str(&store.ok(&["inspect", "busybox:1"])).unwrap();
    let layer = image[0]["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let cut = dir.path().join("cut.tar");
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys, tarfile\n\
             src, dst, drop = sys.argv[1:]\n\
             with tarfile.open(src) as i, tarfile.open(dst, 'w') as o:\n\
             \x20   for m in i.getmembers():\n\
             \x20       if not m.name.endswith(drop):\n\
             \x20           o.addfile(m, i.extractfile(m) if m.isfile() else None)\n",
            full.to_str().unwrap(),
            cut.to_str().unwrap(),
            &layer,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = TestStore::new();
    let out = fresh.strata(&["load", "-i", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&layer) && stderr.contains("missing from the archive"),
        "{stderr}"
    );
    fresh.ok(&["fsck"]);
}

#[test]
fn repo_digests_keep_no_image_alive_once_its_tags_are_gone() {
    let registry = Registry::start();
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    let dest = format!("{}/e2e/moving:1", registry.host);
    store.ok(&["push", "-q", "busybox:1", &dest]);
    let puller = TestStore::new();
    puller.ok(&["pull", "-q", &dest]);
    // the tag moves in the registry: a new image under the same tag
    store.ok(&[
        "run",
        "--name",
        "c",
        "busybox:1",
        "sh",
        "-c",
        "echo v2 > /v2",
    ]);
    store.ok(&["commit", "c", "busybox:2"]);
    store.ok(&["push", "-q", "busybox:2", &dest]);
    puller.ok(&["pull", "-q", &dest]);
    // the old one is dangling (its repo digest is no tag): listed, pruned by gc --dangling
    let listed = puller.ok(&["images"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let out = puller.ok(&["gc", "--dangling"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(puller.ok(&["images"]).lines().count(), 2);
    // rmi of the last tag removes the image, repo digest and all; gc frees its blobs
    let out = puller.ok(&["rmi", &dest]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(puller.ok(&["images", "-q"]), "");
    puller.ok(&["gc"]);
    let blobs = std::fs::read_dir(puller.root().join("oci/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "every blob is garbage once the image is gone");
    store.ok(&["rm", "c"]);
}
