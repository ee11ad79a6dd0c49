//! The registry client against a real Debian `docker-registry` (plain and with htpasswd
//! basic auth), a proxy that counts requests and drops an upload mid-body, and a fake
//! registry serving wrong bytes. Every test starts its own registry and kills it by PID.

#[path = "registry/harness.rs"]
mod harness;
#[path = "registry/transfer.rs"]
mod transfer;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use harness::{Proxy, Registry, WrongBytesServer, run};
use strata_store::Digest;
use strata_store::registry::{BlobSource, Client, ClientOptions, Credentials, media};

/// Anonymous (credentials None also reads ~/.docker/config.json, which names no test port).
fn options() -> ClientOptions {
    ClientOptions {
        backoff: std::time::Duration::from_millis(20),
        ..ClientOptions::default()
    }
}

fn client(host: &str, options: ClientOptions) -> Client {
    Client::new(host, options).unwrap()
}

/// Incompressible bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A gzip tar layer holding `files`, and its diff_id.
fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(946684800);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Pushes a one-layer image with the client alone; returns (manifest digest, layer digest).
fn push_image(
    client: &Client,
    repo: &str,
    tag: &str,
    layer_path: &Path,
    diff_id: Digest,
) -> (Digest, Digest) {
    let layer = std::fs::read(layer_path).unwrap();
    let layer_digest = Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .unwrap();
    let config_digest = Digest::of(&config);
    client
        .upload_blob(
            repo,
            &config_digest,
            config.len() as u64,
            BlobSource::Bytes(&config),
            None,
        )
        .unwrap();
    client
        .upload_blob(
            repo,
            &layer_digest,
            layer.len() as u64,
            BlobSource::File(layer_path),
            None,
        )
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let digest = client
        .put_manifest(repo, tag, &manifest, media::OCI_MANIFEST)
        .unwrap();
    (digest, layer_digest)
}

fn skopeo_inspect(reference: &str) -> serde_json::Value {
    let out = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", reference]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn pushes_monolithic_and_chunked_blobs_that_skopeo_reads_back() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    // 3 MiB of incompressible data, uploaded in 1 MiB PATCH chunks.
    let payload = noise(3 << 20, 1);
    let (bytes, diff_id) = layer(&[("data.bin", &payload), ("hello.txt", b"hello\n")]);
    let path = dir.path().join("layer.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let proxy = Proxy::start(&registry.host, None);
    let client = client(
        &proxy.host,
        ClientOptions {
            monolithic_limit: 1 << 20,
            chunk_size: 1 << 20,
            ..options()
        },
    );
    client.ping().unwrap();
    let (manifest_digest, layer_digest) = push_image(&client, "team/app", "v1", &path, diff_id);
    let patches = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(
        patches as u64,
        (bytes.len() as u64).div_ceil(1 << 20),
        "one PATCH per 1 MiB chunk"
    );

    let inspected = skopeo_inspect(&format!("docker://{}/team/app:v1", registry.host));
    assert_eq!(inspected["Digest"], manifest_digest.to_string());
    assert_eq!(inspected["Layers"][0], layer_digest.to_string());

    let manifest = client.fetch_manifest("team/app", "v1").unwrap();
    assert_eq!(manifest.digest, manifest_digest);
    assert_eq!(manifest.media_type, media::OCI_MANIFEST);
    let (digest, kind, _) = client
        .manifest_exists("team/app", &manifest_digest.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(
        (digest, kind.as_str()),
        (manifest_digest, media::OCI_MANIFEST)
    );
    assert!(
        client
            .manifest_exists("team/app", "nope")
            .unwrap()
            .is_none()
    );

    let mut back = Vec::new();
    let size = client
        .fetch_blob("team/app", &layer_digest, None, &mut back, true, None)
        .unwrap();
    assert_eq!(
        (size, back.as_slice()),
        (bytes.len() as u64, bytes.as_slice())
    );
    assert_eq!(
        client.blob_exists("team/app", &layer_digest).unwrap(),
        Some(bytes.len() as u64)
    );
    assert_eq!(
        client
            .blob_exists("team/app", &Digest::of(b"absent"))
            .unwrap(),
        None
    );
}

#[test]
fn cross_repository_mount_avoids_the_upload() {
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.host, None);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, diff_id) = layer(&[("a", b"mount me")]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let client = client(&proxy.host, options());
    let (_, layer_digest) = push_image(&client, "one", "latest", &path, diff_id);
    proxy.clear();
    assert!(client.mount_blob("two", &layer_digest, "one").unwrap());
    assert!(client.blob_exists("two", &layer_digest).unwrap().is_some());
    let uploads: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" || r.method == "PATCH")
        .collect();
    assert!(uploads.is_empty(), "a mount uploads nothing: {uploads:?}");
    // Mounting what the source does not have falls back to "not mounted".
    assert!(
        !client
            .mount_blob("two", &Digest::of(b"nowhere"), "one")
            .unwrap()
    );
}

#[test]
fn dropped_connection_mid_upload_is_retried_from_the_start() {
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.host, Some(100_000));
    let dir = tempfile::tempdir().unwrap();
    let payload = noise(1 << 20, 2);
    let (bytes, _) = layer(&[("big", &payload)]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);
    let client = client(&proxy.host, options());
    client
        .upload_blob(
            "retry",
            &digest,
            bytes.len() as u64,
            BlobSource::File(&path),
            None,
        )
        .unwrap();
    let posts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        posts,
        2,
        "one upload session cut, one restarted: {:?}",
        proxy.requests()
    );
    let mut back = Vec::new();
    client
        .fetch_blob("retry", &digest, None, &mut back, true, None)
        .unwrap();
    assert_eq!(back, bytes);
}

#[test]
fn wrong_bytes_from_the_registry_give_a_digest_error() {
    let good = b"the real content".to_vec();
    let digest = Digest::of(&good);
    let server = WrongBytesServer::start(
        b"{\"schemaVersion\":2,\"config\":{}}".to_vec(),
        b"evil content".to_vec(),
    );
    let client = client(&server.host, options());
    let mut out = Vec::new();
    let err = client
        .fetch_blob("x", &digest, None, &mut out, true, None)
        .unwrap_err()
        .to_string();
    // The registry's fault, named by the URL: not "corrupt", which sends users to fsck.
    let actual = Digest::of(b"evil content");
    assert_eq!(
        err,
        format!(
            "registry http://{}/v2/x/blobs/{digest} sent content that hashes to {actual}, not {digest}",
            server.host
        )
    );
    let err = client
        .fetch_manifest("x", &digest.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "registry http://{}/v2/x/manifests/{digest} sent content",
            server.host
        )),
        "{err}"
    );
    // More than the descriptor's size: refused as soon as it is, nothing past it written
    // (QA 17b: a registry answering a 103-byte layer with 1.5 GiB filled the store's tmp/).
    let mut out = Vec::new();
    let err = client
        .fetch_blob("x", &digest, Some(4), &mut out, true, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("more than the 4 bytes") && err.contains(&digest.to_string()),
        "{err}"
    );
    assert!(out.len() <= 4, "{} bytes written", out.len());
}

#[test]
fn basic_auth_registry_needs_and_takes_credentials() {
    let registry = Registry::start_with_auth(Some(("alice", "wonderland")));
    let anonymous = client(&registry.host, options());
    let err = anonymous.ping().unwrap_err().to_string();
    assert!(err.contains("401") && err.contains("strata login"), "{err}");
    let wrong = ClientOptions {
        credentials: Some(Credentials {
            username: "alice".into(),
            password: "nope".into(),
        }),
        ..options()
    };
    assert!(client(&registry.host, wrong).ping().is_err());

    // Credentials as `strata login` stores them, read back from that file.
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("auth.json");
    let alice = Credentials {
        username: "alice".into(),
        password: "wonderland".into(),
    };
    let config = strata_store::registry::auth::Config::at(&auth_file);
    config.store(&registry.host, &alice).unwrap();
    let found = config.lookup(&registry.host).unwrap();
    let client = client(
        &registry.host,
        ClientOptions {
            credentials: found,
            ..options()
        },
    );
    client.ping().unwrap();
    let (bytes, diff_id) = layer(&[("f", b"secret")]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let (manifest_digest, _) = push_image(&client, "private/app", "1", &path, diff_id);
    assert_eq!(
        client.fetch_manifest("private/app", "1").unwrap().digest,
        manifest_digest
    );
}

/// Credentials holding an identity token (`<token>`, as a credential helper or `docker
/// login` to ACR leaves them) get their bearer tokens by the OAuth2 refresh-token grant, a
/// POST of the token form, as docker gets them; a token server without that endpoint gets
/// the GET with basic auth.
#[test]
fn identity_tokens_are_exchanged_by_the_oauth2_refresh_grant() {
    let registry = Registry::start();
    let (proxy, gate) = Proxy::start_with_tokens(&registry.host, "bob", "builder");
    *gate.refresh_token.lock().unwrap() = Some("refresh-xyz".into());
    let dir = tempfile::tempdir().unwrap();
    let (bytes, diff_id) = layer(&[("t", b"oauth")]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let client = client_with(&proxy.host, Credentials::IDENTITY_TOKEN_USER, "refresh-xyz");
    let (manifest_digest, _) = push_image(&client, "acr/app", "1", &path, diff_id);
    assert_eq!(
        client.fetch_manifest("acr/app", "1").unwrap().digest,
        manifest_digest
    );
    let requests = gate.token_requests.lock().unwrap().clone();
    assert!(
        requests.iter().all(|q| q.starts_with("POST ")
            && q.contains("grant_type=refresh_token")
            && q.contains("service=strata-test")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.contains("scope=repository:acr/app:pull,push")),
        "{requests:?}"
    );
    // A wrong refresh token is refused, with the registry's words.
    let wrong = client_with(&proxy.host, Credentials::IDENTITY_TOKEN_USER, "stale");
    let err = wrong
        .fetch_manifest("acr/app", "1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    // A token server without the OAuth2 endpoint (404) gets the GET with basic auth.
    let (plain, plain_gate) = Proxy::start_with_tokens(
        &registry.host,
        Credentials::IDENTITY_TOKEN_USER,
        "refresh-xyz",
    );
    let fallback = client_with(&plain.host, Credentials::IDENTITY_TOKEN_USER, "refresh-xyz");
    assert_eq!(
        fallback.fetch_manifest("acr/app", "1").unwrap().digest,
        manifest_digest
    );
    let asked = plain_gate.token_requests.lock().unwrap().clone();
    assert!(asked.iter().all(|q| !q.starts_with("POST ")), "{asked:?}");
}

fn client_with(host: &str, user: &str, password: &str) -> Client {
    client(
        host,
        ClientOptions {
            credentials: Some(Credentials {
                username: user.into(),
                password: password.into(),
            }),
            ..options()
        },
    )
}

#[test]
fn bearer_token_flow_fetches_tokens_with_the_scopes_needed() {
    let registry = Registry::start();
    let (proxy, gate) = Proxy::start_with_tokens(&registry.host, "bob", "builder");
    let dir = tempfile::tempdir().unwrap();
    let (bytes, diff_id) = layer(&[("t", b"token protected")]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();

    let anonymous = client(&proxy.host, options());
    let err = anonymous
        .fetch_manifest("locked/app", "1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("401"),
        "an anonymous token request is refused: {err}"
    );

    let client = client_with(&proxy.host, "bob", "builder");
    let (manifest_digest, layer_digest) = push_image(&client, "locked/app", "1", &path, diff_id);
    assert_eq!(
        client.fetch_manifest("locked/app", "1").unwrap().digest,
        manifest_digest
    );
    assert!(
        client
            .mount_blob("locked/copy", &layer_digest, "locked/app")
            .unwrap()
    );
    let requests = gate.token_requests.lock().unwrap().clone();
    assert!(
        requests.iter().all(|q| q.contains("service=strata-test")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.contains("scope=repository:locked/app:pull,push")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.contains("scope=repository:locked/copy:pull,push")
                && q.contains("scope=repository:locked/app:pull")),
        "the mount asks for push on the target and pull on the source: {requests:?}"
    );
    // Tokens are reused: far fewer token requests than registry requests.
    assert!(requests.len() <= 4, "{requests:?}");

    // A token the registry no longer takes (expired, revoked) is replaced (QA 17b: a pull
    // longer than the token's life failed with 401).
    gate.revoke();
    assert_eq!(
        client.fetch_manifest("locked/app", "1").unwrap().digest,
        manifest_digest
    );
    // One given `expires_in` is replaced before it runs out, without a 401 first.
    *gate.lifetime.lock().unwrap() = Some(1);
    gate.revoke();
    client.fetch_manifest("locked/app", "1").unwrap();
    let before = proxy.requests().len();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    client.fetch_manifest("locked/app", "1").unwrap();
    let asked = proxy.requests()[before..]
        .iter()
        .filter(|r| r.path.starts_with("/v2/locked/app/manifests/"))
        .count();
    assert_eq!(
        asked,
        1,
        "no refused try: {:?}",
        &proxy.requests()[before..]
    );
}

#[test]
fn server_errors_are_retried_and_refused_chunks_fall_back_to_one_put() {
    let registry = Registry::start();
    let flaky = Proxy::start_faulty(&registry.host, 3, false);
    let client_ = client(&flaky.host, options());
    client_.ping().unwrap();
    assert_eq!(flaky.requests().len(), 4, "three 503s, then the answer");

    let no_chunks = Proxy::start_faulty(&registry.host, 0, true);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = layer(&[("big", &noise(3 << 20, 9))]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);
    let small_chunks = ClientOptions {
        monolithic_limit: 1 << 20,
        chunk_size: 1 << 20,
        ..options()
    };
    let client_ = client(&no_chunks.host, small_chunks);
    client_
        .upload_blob(
            "fallback",
            &digest,
            bytes.len() as u64,
            BlobSource::File(&path),
            None,
        )
        .unwrap();
    let methods: Vec<String> = no_chunks.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(
        methods,
        ["POST", "PATCH", "POST", "PUT"],
        "one refused PATCH, then a monolithic upload"
    );
    assert_eq!(
        client_.blob_exists("fallback", &digest).unwrap(),
        Some(bytes.len() as u64)
    );
}

#[test]
fn a_download_cut_mid_blob_resumes_and_verifies() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = layer(&[("big", &noise(1 << 20, 11))]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);
    client(&registry.host, options())
        .upload_blob(
            "resume",
            &digest,
            bytes.len() as u64,
            BlobSource::File(&path),
            None,
        )
        .unwrap();
    let cutting = Proxy::start_cutting_download(&registry.host, 300_000);
    let mut back = Vec::new();
    client(&cutting.host, options())
        .fetch_blob("resume", &digest, None, &mut back, true, None)
        .unwrap();
    assert_eq!(back, bytes);
    let gets = cutting
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(
        gets,
        2,
        "one cut download, one ranged resume: {:?}",
        cutting.requests()
    );
}

#[test]
fn a_tls_registry_on_localhost_is_reached_over_https_without_verification() {
    let registry = Registry::start_tls();
    let client = client(&registry.host, options());
    assert!(client.base().starts_with("https://"), "{}", client.base());
    let dir = tempfile::tempdir().unwrap();
    let (bytes, diff_id) = layer(&[("tls", b"over https")]);
    let path = dir.path().join("l");
    std::fs::write(&path, &bytes).unwrap();
    let (manifest_digest, _) = push_image(&client, "secure/app", "1", &path, diff_id);
    assert_eq!(
        client.fetch_manifest("secure/app", "1").unwrap().digest,
        manifest_digest
    );
    // A plain registry on localhost stays plain HTTP.
    let plain = Registry::start();
    assert!(
        Client::new(&plain.host, options())
            .unwrap()
            .base()
            .starts_with("http://")
    );
}
