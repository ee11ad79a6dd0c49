//! Test fixtures for the registry tests: a real Debian `docker-registry` (optionally behind
//! htpasswd basic auth) on a free 127.0.0.1 port, started and killed by PID; an HTTP proxy
//! in front of it that counts requests and can drop an upload mid-body, corrupt or trickle
//! downloads and lie about manifest digests; and a tiny fake registry that serves wrong bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` process with its own storage; killed (by PID) on drop.
pub struct Registry {
    child: Child,
    pub host: String,
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with_auth(None)
    }

    /// With `Some((user, password))` the registry requires htpasswd basic auth.
    pub fn start_with_auth(user: Option<(&str, &str)>) -> Registry {
        Registry::start_full(user, false)
    }

    /// Serving HTTPS with a fresh self-signed certificate (openssl).
    pub fn start_tls() -> Registry {
        Registry::start_full(None, true)
    }

    /// Serving HTTPS on `ip` (not a loopback address, where clients skip verification)
    /// with a certificate signed by a fresh CA; returns the CA's PEM file too.
    #[allow(dead_code)] // the e2e tests use it
    pub fn start_tls_with_ca(ip: &str) -> (Registry, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=strata test CA",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={ip}"),
            ])
            .arg("-keyout")
            .arg(p("key.pem"))
            .arg("-out")
            .arg(p("leaf.csr")));
        std::fs::write(
            p("ext.cnf"),
            format!(
                "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
            .arg("-in")
            .arg(p("leaf.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("cert.pem")));
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            p("cert.pem").display(),
            p("key.pem").display()
        );
        let ca = p("ca.pem");
        let registry = Registry::serve(dir, ip, &tls, "");
        (registry, ca)
    }

    fn start_full(user: Option<(&str, &str)>, tls: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: run `apt-get install -y docker-registry apache2-utils`"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut auth = String::new();
        if let Some((name, password)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", name, password])
                .output()
                .unwrap_or_else(|e| {
                    panic!("htpasswd failed ({e}): run `apt-get install -y apache2-utils`")
                });
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let mut tls_config = String::new();
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            run(Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                ])
                .args([
                    "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&cert));
            tls_config = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        Registry::serve(dir, "127.0.0.1", &tls_config, &auth)
    }

    /// Starts `docker-registry` on `ip` with storage in `dir` and the given config parts.
    fn serve(dir: tempfile::TempDir, ip: &str, tls_config: &str, auth: &str) -> Registry {
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n{tls_config}{auth}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let registry = Registry {
            child,
            host: format!("{ip}:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request seen by the proxy: method and path.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
}

/// A forwarding proxy (one request per connection) that records requests and can cut the
/// first upload (PATCH/PUT with a body) after `drop_after` body bytes.
pub struct Proxy {
    pub host: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: &str, drop_after: Option<u64>) -> Proxy {
        Proxy::start_inner(upstream, drop_after, None, Arc::new(Faults::default()))
    }

    /// A proxy that cuts the first blob download after `after` bytes of its response.
    pub fn start_cutting_download(upstream: &str, after: usize) -> Proxy {
        let faults = Faults {
            cut_download_after: AtomicUsize::new(after),
            ..Faults::default()
        };
        Proxy::start_inner(upstream, None, None, Arc::new(faults))
    }

    /// A proxy that answers the first `fail_first` requests with 503 and, with
    /// `refuse_patch`, every PATCH with 416 (a registry without chunked uploads).
    pub fn start_faulty(upstream: &str, fail_first: usize, refuse_patch: bool) -> Proxy {
        let faults = Faults {
            fail_first: AtomicUsize::new(fail_first),
            refuse_patch,
            ..Faults::default()
        };
        Proxy::start_inner(upstream, None, None, Arc::new(faults))
    }

    /// A proxy that lies about content: it flips the first byte of every blob body it
    /// forwards (`corrupt_blobs`), or announces a wrong `Docker-Content-Digest` for every
    /// manifest (`lie_about_manifests`).
    pub fn start_lying(upstream: &str, corrupt_blobs: bool, lie_about_manifests: bool) -> Proxy {
        let faults = Faults {
            corrupt_blobs,
            lie_about_manifests,
            ..Faults::default()
        };
        Proxy::start_inner(upstream, None, None, Arc::new(faults))
    }

    /// A proxy that trickles blob bodies: 64 KiB every 50 ms (about 1.3 MB/s), as a slow
    /// registry does, so a pull can be interrupted half way.
    #[allow(dead_code)] // the e2e tests use it
    pub fn start_slow(upstream: &str) -> Proxy {
        let faults = Faults {
            slow_blobs: true,
            ..Faults::default()
        };
        Proxy::start_inner(upstream, None, None, Arc::new(faults))
    }

    /// A proxy that answers every cross-repository blob mount with 500.
    pub fn start_failing_mounts(upstream: &str) -> Proxy {
        let faults = Faults {
            fail_mounts: true,
            ..Faults::default()
        };
        Proxy::start_inner(upstream, None, None, Arc::new(faults))
    }

    /// A proxy that demands bearer tokens (distribution token auth) from its own `/token`
    /// endpoint, which hands them out for `user:password` with the scopes asked for.
    pub fn start_with_tokens(
        upstream: &str,
        user: &str,
        password: &str,
    ) -> (Proxy, Arc<TokenGate>) {
        let credentials = strata_store::registry::Credentials {
            username: user.to_string(),
            password: password.to_string(),
        };
        let basic = credentials.basic_header();
        let gate = Arc::new(TokenGate {
            basic,
            host: Default::default(),
            issued: Mutex::new(Vec::new()),
            token_requests: Mutex::new(Vec::new()),
            lifetime: Mutex::new(None),
            refresh_token: Mutex::new(None),
        });
        (
            Proxy::start_inner(
                upstream,
                None,
                Some(gate.clone()),
                Arc::new(Faults::default()),
            ),
            gate,
        )
    }

    fn start_inner(
        upstream: &str,
        drop_after: Option<u64>,
        gate: Option<Arc<TokenGate>>,
        faults: Arc<Faults>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        if let Some(gate) = &gate {
            let _ = gate.host.set(host.clone());
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(drop_after.is_none()));
        let (seen2, stop2, upstream) = (seen.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen, upstream, dropped, gate) = (
                    seen2.clone(),
                    upstream.clone(),
                    dropped.clone(),
                    gate.clone(),
                );
                let faults = faults.clone();
                std::thread::spawn(move || {
                    let _ = forward(
                        conn,
                        &upstream,
                        &seen,
                        &dropped,
                        drop_after,
                        gate.as_deref(),
                        &faults,
                    );
                });
            }
        });
        Proxy { host, seen, stop }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.host);
    }
}

fn forward(
    client: TcpStream,
    upstream: &str,
    seen: &Mutex<Vec<Seen>>,
    dropped: &AtomicBool,
    drop_after: Option<u64>,
    gate: Option<&TokenGate>,
    faults: &Faults,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut length = 0u64;
    let mut first = String::new();
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.to_ascii_lowercase().starts_with("authorization:") {
            authorization = line["authorization:".len()..].trim().to_string();
        }
        if first.is_empty() {
            first = line.clone();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
    });
    let fail = faults
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let refuse = faults.refuse_patch && method == "PATCH";
    let fail = fail || (faults.fail_mounts && method == "POST" && path.contains("mount="));
    if fail || refuse {
        // Drain the body first so the client reads our answer instead of a broken pipe.
        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        let status = if fail && faults.fail_mounts {
            "500 Internal Server Error"
        } else if fail {
            "503 Service Unavailable"
        } else {
            "416 Range Not Satisfiable"
        };
        let mut client = client;
        write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    // a token form (the OAuth2 refresh-token grant) is the gate's to read
    let mut form = String::new();
    if gate.is_some() && method == "POST" && path.starts_with("/token") {
        (&mut reader).take(length).read_to_string(&mut form)?;
    }
    if let Some(gate) = gate
        && let Some(response) = gate.check(&method, &path, &authorization, &form)
    {
        let mut client = client;
        client.write_all(response.as_bytes())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    let cut = matches!(method.as_str(), "PATCH" | "PUT")
        && drop_after.is_some_and(|n| length > n)
        && !dropped.swap(true, Ordering::SeqCst);
    if cut {
        let n = drop_after.unwrap_or(0);
        std::io::copy(&mut (&mut reader).take(n), &mut up)?;
        let _ = client.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
        return Ok(());
    }
    std::io::copy(&mut (&mut reader).take(length), &mut up)?;
    let mut client = client;
    let blob_get = method == "GET" && path.contains("/blobs/");
    let manifest_get = method == "GET" && path.contains("/manifests/");
    if (blob_get && (faults.corrupt_blobs || faults.slow_blobs))
        || (manifest_get && faults.lie_about_manifests)
    {
        // The whole response (the upstream closes it: `Connection: close`), then its head
        // and body, changed, to the client.
        let mut response = Vec::new();
        up.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |at| at + 4);
        let (head, body) = response.split_at_mut(split);
        let mut head = String::from_utf8_lossy(head).into_owned();
        let ok = head.starts_with("HTTP/1.1 200");
        if ok && manifest_get {
            let lie = format!("Docker-Content-Digest: sha256:{}\r\n", "0".repeat(64));
            head = head
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("docker-content-digest:"))
                .map(|l| format!("{l}\r\n"))
                .collect::<String>()
                .trim_end()
                .to_string();
            head = format!("{head}\r\n{lie}\r\n");
        }
        if ok && blob_get && faults.corrupt_blobs && !body.is_empty() {
            body[0] ^= 0xff;
        }
        client.write_all(head.as_bytes())?;
        if faults.slow_blobs && blob_get {
            for chunk in body.chunks(64 << 10) {
                client.write_all(chunk)?;
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            client.write_all(body)?;
        }
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let cut = if blob_get {
        faults.cut_download_after.swap(0, Ordering::SeqCst)
    } else {
        0
    };
    if cut > 0 {
        std::io::copy(&mut (&mut up).take(cut as u64), &mut client)?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    std::io::copy(&mut up, &mut client)?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Failures a proxy injects.
#[derive(Default)]
pub struct Faults {
    fail_first: AtomicUsize,
    refuse_patch: bool,
    /// Answer every cross-repository blob mount with 500.
    fail_mounts: bool,
    /// Cut the first blob download after this many response bytes (0: never).
    cut_download_after: AtomicUsize,
    /// Flip the first byte of every blob body.
    corrupt_blobs: bool,
    /// Announce sha256:000.. as every manifest's Docker-Content-Digest.
    lie_about_manifests: bool,
    /// Trickle blob bodies.
    slow_blobs: bool,
}

/// Token issuer and checker for `Proxy::start_with_tokens`.
pub struct TokenGate {
    basic: String,
    host: std::sync::OnceLock<String>,
    /// (token, scopes granted)
    issued: Mutex<Vec<(String, Vec<String>)>>,
    /// Query strings of the token requests, decoded.
    pub token_requests: Mutex<Vec<String>>,
    /// `expires_in` of the tokens handed out, if set.
    pub lifetime: Mutex<Option<u64>>,
    /// The OAuth2 refresh token its POST endpoint takes; None: no such endpoint (404).
    pub refresh_token: Mutex<Option<String>>,
}

impl TokenGate {
    /// Refuses every token handed out so far, as a registry does once they expire.
    pub fn revoke(&self) {
        self.issued.lock().unwrap().clear();
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenGate {
    /// `None` lets the request through to the registry; `Some(response)` answers it here.
    fn check(&self, method: &str, path: &str, authorization: &str, form: &str) -> Option<String> {
        let reply = |status: &str, extra: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        if method == "POST" && path.starts_with("/token") {
            let Some(wanted) = self.refresh_token.lock().unwrap().clone() else {
                return Some(reply("404 Not Found", "", "{}"));
            };
            let form = percent_decode(&form.replace('+', " "));
            self.token_requests
                .lock()
                .unwrap()
                .push(format!("POST {form}"));
            let field = |name: &str| {
                form.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap_or("")
                    .to_string()
            };
            if field("grant_type") != "refresh_token" || field("refresh_token") != wanted {
                return Some(reply(
                    "401 Unauthorized",
                    "",
                    r#"{"details":"bad refresh token"}"#,
                ));
            }
            let scopes: Vec<String> = field("scope").split(' ').map(String::from).collect();
            let mut issued = self.issued.lock().unwrap();
            let token = format!("token{}", issued.len());
            issued.push((token.clone(), scopes));
            return Some(reply(
                "200 OK",
                "",
                &format!(r#"{{"access_token":"{token}","expires_in":300}}"#),
            ));
        }
        if let Some(query) = path.strip_prefix("/token") {
            let query = percent_decode(query.trim_start_matches('?'));
            self.token_requests.lock().unwrap().push(query.clone());
            if authorization != self.basic {
                return Some(reply(
                    "401 Unauthorized",
                    "",
                    r#"{"details":"bad credentials"}"#,
                ));
            }
            let scopes: Vec<String> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("scope="))
                .map(String::from)
                .collect();
            let mut issued = self.issued.lock().unwrap();
            let token = format!("token{}", issued.len());
            issued.push((token.clone(), scopes));
            let expires = self
                .lifetime
                .lock()
                .unwrap()
                .map(|s| format!(r#","expires_in":{s}"#))
                .unwrap_or_default();
            return Some(reply(
                "200 OK",
                "",
                &format!(r#"{{"token":"{token}"{expires}}}"#),
            ));
        }
        let rest = path.strip_prefix("/v2/").unwrap_or("");
        let repo = ["/blobs/", "/manifests/"]
            .iter()
            .find_map(|m| rest.split_once(m).map(|(r, _)| r.to_string()));
        let action = if matches!(method, "GET" | "HEAD") {
            "pull"
        } else {
            "push"
        };
        let granted = authorization.strip_prefix("Bearer ").is_some_and(|token| {
            let issued = self.issued.lock().unwrap();
            issued.iter().any(|(t, scopes)| {
                t == token
                    && match &repo {
                        None => true,
                        Some(repo) => scopes.iter().any(|s| {
                            s.strip_prefix(&format!("repository:{repo}:"))
                                .is_some_and(|actions| actions.split(',').any(|a| a == action))
                        }),
                    }
            })
        });
        if granted {
            return None;
        }
        let scope = repo
            .map(|r| format!(r#",scope="repository:{r}:{action}""#))
            .unwrap_or_default();
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"strata-test\"{scope}\r\n",
            self.host.get().map_or("", String::as_str)
        );
        Some(reply(
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#,
        ))
    }
}

/// A fake registry answering every blob GET with `body` whatever the digest asked for,
/// and manifests with `manifest` (content type OCI manifest).
pub struct WrongBytesServer {
    pub host: String,
}

impl WrongBytesServer {
    pub fn start(manifest: Vec<u8>, body: Vec<u8>) -> WrongBytesServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                let head_only = first.starts_with("HEAD");
                let (status, kind, payload) = if path == "/v2/" {
                    ("200 OK", "application/json", b"{}".to_vec())
                } else if path.contains("/manifests/") {
                    (
                        "200 OK",
                        "application/vnd.oci.image.manifest.v1+json",
                        manifest.clone(),
                    )
                } else if path.contains("/blobs/") {
                    ("200 OK", "application/octet-stream", body.clone())
                } else {
                    ("404 Not Found", "text/plain", b"no".to_vec())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    payload.len()
                );
                if !head_only {
                    let _ = conn.write_all(&payload);
                }
            }
        });
        WrongBytesServer { host }
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        let tool = cmd.get_program().to_string_lossy().into_owned();
        panic!("{cmd:?}: {e} (fix: apt-get install -y {tool})")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
