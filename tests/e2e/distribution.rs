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

use harness::Registry;

fn skopeo(args: &[&str]) -> serde_json::Value {
    require_tool("skopeo", "apt-get install -y skopeo");
    let out = harness::run(Command::new("skopeo").args(args));
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// strata with an explicit credentials file.
fn strata_with_auth(store: &TestStore, auth_file: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(strata_bin());
    cmd.arg("--root").arg(store.root()).args(args).env("REGISTRY_AUTH_FILE", auth_file);
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
    assert!(digest.starts_with("sha256:"), "push prints the manifest digest: {digest}");
    let inspected = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{dest}")]);
    assert_eq!(inspected["Digest"], digest.as_str());

    let fresh = TestStore::new();
    let pulled_id = fresh.ok(&["pull", &dest]).trim().to_string();
    let original: serde_json::Value = serde_json::from_str(&id).unwrap_or_default();
    let images = fresh.ok(&["images", "--json"]);
    assert!(images.contains(&dest) && images.contains(&pulled_id), "{images}");
    assert_eq!(original[0]["Id"].as_str(), Some(pulled_id.as_str()), "same image id after the round trip");
    // By digest too, and a second pull is a no-op.
    fresh.ok(&["pull", &format!("{}/e2e/busybox@{digest}", registry.host)]);
    // Errors name the thing: an unknown tag.
    let out = fresh.strata(&["pull", &format!("{}/e2e/busybox:nope", registry.host)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("MANIFEST_UNKNOWN"), "{err}");
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

    let bad = strata_with_auth(&store, &auth_file, &["login", &registry.host, "-u", "ci", "-p", "wrong"]);
    assert!(!bad.status.success(), "a wrong password is refused");
    assert!(!auth_file.exists(), "nothing stored after a failed login");

    let args = ["login", &registry.host, "-u", "ci", "-p", "s3cret"];
    assert_success(&strata_with_auth(&store, &auth_file, &args), &args);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert!(saved["auths"][&registry.host]["auth"].is_string(), "{saved}");

    let args = ["push", "-q", "busybox:1", &dest];
    assert_success(&strata_with_auth(&store, &auth_file, &args), &args);
    let fresh = TestStore::new();
    let args = ["pull", "-q", &dest];
    assert_success(&strata_with_auth(&fresh, &auth_file, &args), &args);

    let args = ["logout", &registry.host];
    assert_success(&strata_with_auth(&store, &auth_file, &args), &args);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert!(saved["auths"].get(&registry.host).is_none(), "{saved}");
    assert!(!strata_with_auth(&store, &auth_file, &args).status.success(), "second logout reports nothing to do");
}

#[test]
fn save_load_round_trip_readable_by_skopeo() {
    let store = TestStore::new();
    store.import_busybox("busybox:1");
    store.ok(&["tag", "busybox:1", "other:2"]);
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("images.tar");
    let file_s = file.to_str().unwrap();
    store.ok(&["save", "busybox:1", "-o", file_s]);
    skopeo(&["inspect", &format!("oci-archive:{file_s}")]);
    skopeo(&["inspect", &format!("docker-archive:{file_s}")]);
    store.ok(&["save", "busybox:1", "other:2", "-o", file_s]);

    let fresh = TestStore::new();
    let loaded = fresh.ok(&["load", "-i", file_s]);
    assert!(loaded.contains("busybox:1") && loaded.contains("other:2"), "{loaded}");
    let images = fresh.ok(&["images"]);
    assert!(images.contains("busybox") && images.contains("other"), "{images}");

    // oci: and oci-archive: transports on both verbs.
    let layout = out_dir.path().join("layout");
    store.ok(&["push", "-q", "busybox:1", &format!("oci:{}:bb", layout.display())]);
    skopeo(&["inspect", &format!("oci:{}:bb", layout.display())]);
    let again = TestStore::new();
    again.ok(&["pull", "-q", &format!("oci:{}:bb", layout.display())]);
    assert!(again.ok(&["images"]).contains("bb"));
}
