//! The HTTP side of the registry client: one `Client` per registry host, sending each
//! request with the right `Authorization` (anonymous, basic, or a bearer token fetched from
//! the challenge's realm for the scopes the request needs, distribution
//! `docs/spec/auth/token.md`), and retrying with exponential backoff on 5xx, 429 and dropped
//! connections. Requests that are not safe to replay (upload steps) are retried by their
//! caller, which restarts the upload from the start of the blob or chunk.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ureq::Body;
use ureq::http::{self, Response};

use super::auth::{self, Challenge, Credentials};
use crate::error::{Error, Result};

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Treat the host as localhost is treated: HTTPS without certificate verification if
    /// it speaks HTTPS, else plain HTTP (docker's "insecure registry").
    pub insecure: bool,
    /// Credentials; `None` looks the registry up in the credentials file.
    pub credentials: Option<Credentials>,
    /// Attempts after the first one for a failed request (5xx, 429, dropped connection).
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of `chunk_size`.
    pub monolithic_limit: u64,
    pub chunk_size: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            credentials: None,
            retries: 4,
            backoff: Duration::from_millis(200),
            monolithic_limit: 32 << 20,
            chunk_size: 128 << 20,
        }
    }
}

/// A request body that can be sent again on a retry.
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`, streamed (memory stays flat in the blob size).
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        progress: Option<&'a (dyn Fn(u64) + Sync)>,
    },
}

pub(crate) struct Request<'a> {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Payload<'a>,
    /// Token scopes the request needs, e.g. `repository:app:pull,push`.
    pub scopes: Vec<String>,
    /// Whether this request may be resent as is after a failure.
    pub replayable: bool,
}

impl<'a> Request<'a> {
    pub fn new(method: &'static str, url: String, scope: String) -> Request<'a> {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: Payload::Empty,
            scopes: vec![scope],
            replayable: true,
        }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Default)]
struct AuthState {
    basic: bool,
    bearer: Option<Challenge>,
    token: Option<String>,
    /// When the token is to be replaced: a little before it expires (`expires_in`).
    renew_at: Option<std::time::Instant>,
    scopes: BTreeSet<String>,
}

/// A bearer token and when to fetch another.
struct Token {
    value: String,
    renew_at: std::time::Instant,
}

/// A client for one registry host.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    registry: String,
    pub(crate) options: ClientOptions,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
}

/// Hosts treated as insecure registries without `--insecure` (as docker does).
pub fn is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.contains(':') { host } else { h }),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1") || name.starts_with("127.")
}

/// Verified HTTPS for registries on the network. Local and `--insecure` hosts get HTTPS
/// without certificate verification when they answer it, else plain HTTP (docker's rule
/// for insecure registries): one probe request when the client is made.
fn choose_scheme(host: &str, insecure: bool) -> (&'static str, bool) {
    if !insecure && !is_local(host) {
        return ("https", false);
    }
    let config = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build();
    let probe = ureq::Agent::new_with_config(config)
        .get(format!("https://{host}/v2/"))
        .call();
    match probe {
        Ok(_) => ("https", true),
        Err(_) => ("http", false),
    }
}

/// The roots a registry's certificate may chain to, as docker trusts them: the system's
/// bundle (`SSL_CERT_FILE`, else the distribution's) and the
/// per-registry CAs of docker and podman (`/etc/docker/certs.d/HOST[:PORT]/*.crt`,
/// `/etc/containers/certs.d/...`). With neither, the compiled-in Mozilla roots.
fn root_certs(host: &str) -> ureq::tls::RootCerts {
    // SSL_CERT_FILE, else the bundle of Debian, Fedora, Alpine or SUSE
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
                "/etc/ssl/ca-bundle.pem",
            ]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|path| path.is_file())
        });
    let mut files = Vec::new();
    if let Some(system) = system.filter(|path| path.is_file()) {
        files.push(system);
    }
    for base in ["/etc/docker/certs.d", "/etc/containers/certs.d"] {
        if let Ok(dir) = std::fs::read_dir(Path::new(base).join(host)) {
            let mut cas: Vec<_> = dir
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "crt"))
                .collect();
            cas.sort();
            files.extend(cas);
        }
    }
    let mut certs = Vec::new();
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        for item in ureq::tls::parse_pem(&bytes).flatten() {
            if let ureq::tls::PemItem::Certificate(cert) = item {
                certs.push(cert);
            }
        }
    }
    if certs.is_empty() {
        return ureq::tls::RootCerts::WebPki;
    }
    ureq::tls::RootCerts::new_with_certs(&certs)
}

impl Client {
    /// A client for `host` (`host[:port]`, the API host of a reference).
    pub fn new(host: &str, options: ClientOptions) -> Result<Client> {
        let (scheme, skip_verify) = choose_scheme(host, options.insecure);
        let credentials = match &options.credentials {
            Some(c) => Some(c.clone()),
            None => auth::lookup(host)?,
        };
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(root_certs(host))
            .disable_verification(skip_verify)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            // A registry answers in seconds, even after a big upload (it hashes as the
            // bytes arrive); one that accepted the connection and went quiet is reported
            // after two minutes rather than ten.
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            base: format!("{scheme}://{host}"),
            registry: host.to_string(),
            options,
            credentials,
            auth: Mutex::new(AuthState::default()),
        })
    }

    /// `scheme://host[:port]`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resolves a `Location` header, which may be relative to the registry.
    pub(crate) fn resolve_location(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            self.url(location)
        } else {
            format!("{}/{}", self.base, location)
        }
    }

    /// Checks that the registry speaks the v2 API and that the credentials are accepted.
    pub fn ping(&self) -> Result<()> {
        let url = self.url("/v2/");
        let mut request = Request::new("GET", url.clone(), String::new());
        request.scopes.clear();
        let response = self.send(&request)?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(error_from(&url, "GET", response))
    }

    /// Sends `request`, authenticating on a 401 challenge and retrying transient failures.
    pub(crate) fn send(&self, request: &Request<'_>) -> Result<Response<Body>> {
        let mut attempt = 0u32;
        let mut auth_rounds = 0u32;
        loop {
            let authorization = self.authorization(&request.scopes)?;
            let result = self.send_once(request, authorization.as_deref());
            let transient = match &result {
                Err(_) => true,
                Ok(r) => {
                    r.status().is_server_error()
                        || r.status() == http::StatusCode::TOO_MANY_REQUESTS
                }
            };
            if let Ok(response) = &result
                && response.status() == http::StatusCode::UNAUTHORIZED
                && auth_rounds < 2
            {
                auth_rounds += 1;
                if self.answer_challenge(response, &request.scopes, authorization.as_deref())? {
                    continue;
                }
            }
            if transient && request.replayable && attempt < self.options.retries {
                attempt += 1;
                tracing::debug!(url = %request.url, attempt, "retrying registry request");
                std::thread::sleep(self.backoff(attempt));
                continue;
            }
            return result.map_err(|e| {
                let hint = match e.to_string().contains("certificate") {
                    true => format!(
                        " (the registry's certificate is not trusted: add its CA to the system store, or to \
                         /etc/docker/certs.d/{}/ca.crt; or use --insecure)",
                        self.registry
                    ),
                    false => String::new(),
                };
                Error::Registry { url: request.url.clone(), message: format!("{} failed: {e}{hint}", request.method) }
            });
        }
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.options
            .backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(6))
    }

    fn send_once(
        &self,
        request: &Request<'_>,
        authorization: Option<&str>,
    ) -> io::Result<Response<Body>> {
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(&request.url);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if let Some(authorization) = authorization {
            builder = builder.header("authorization", authorization);
        }
        let to_io = |e: ureq::Error| match e {
            ureq::Error::Io(e) => e,
            e => io::Error::other(e),
        };
        match &request.body {
            Payload::Empty if matches!(request.method, "PUT" | "POST" | "PATCH") => {
                let req = built(builder.header("content-length", "0").body(&[][..]))?;
                self.agent.run(req).map_err(to_io)
            }
            Payload::Empty => self.agent.run(built(builder.body(()))?).map_err(to_io),
            Payload::Bytes(bytes) => {
                let req = built(
                    builder
                        .header("content-length", bytes.len().to_string())
                        .body(*bytes),
                )?;
                self.agent.run(req).map_err(to_io)
            }
            Payload::File {
                path,
                offset,
                len,
                progress,
            } => {
                let mut file = File::open(path)?;
                file.seek(SeekFrom::Start(*offset))?;
                let mut reader = Progress {
                    inner: file.take(*len),
                    report: *progress,
                };
                let body = ureq::SendBody::from_reader(&mut reader);
                let req = builder.header("content-length", len.to_string()).body(body);
                self.agent.run(built(req)?).map_err(to_io)
            }
        }
    }

    /// The `Authorization` value to send for `scopes`, fetching a new token when the current
    /// one was not granted for all of them.
    fn authorization(&self, scopes: &[String]) -> Result<Option<String>> {
        let mut state = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(challenge) = state.bearer.clone() {
            let missing = scopes
                .iter()
                .any(|s| !s.is_empty() && !state.scopes.contains(s));
            let expired = state
                .renew_at
                .is_some_and(|at| std::time::Instant::now() >= at);
            if state.token.is_none() || missing || expired {
                state
                    .scopes
                    .extend(scopes.iter().filter(|s| !s.is_empty()).cloned());
                let all: Vec<String> = state.scopes.iter().cloned().collect();
                let token = self.fetch_token(&challenge, &all)?;
                state.token = Some(token.value);
                state.renew_at = Some(token.renew_at);
            }
            return Ok(state.token.as_ref().map(|t| format!("Bearer {t}")));
        }
        if state.basic {
            return Ok(self.credentials.as_ref().map(Credentials::basic_header));
        }
        Ok(None)
    }

    /// Records what a 401 asks for; true when the request should be sent again.
    /// `sent` is the `Authorization` the refused request carried: when another thread has
    /// meanwhile authenticated, the request is simply sent again with the newer value.
    fn answer_challenge(
        &self,
        response: &Response<Body>,
        scopes: &[String],
        sent: Option<&str>,
    ) -> Result<bool> {
        let challenges = response.headers().get_all("www-authenticate");
        let challenge = challenges
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Challenge::parse);
        let Some(challenge) = challenge else {
            return Ok(false);
        };
        let mut state = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        match challenge.scheme.as_str() {
            "basic" => {
                let Some(credentials) = &self.credentials else {
                    return Ok(false);
                };
                state.basic = true;
                Ok(sent != Some(credentials.basic_header().as_str()))
            }
            "bearer" => {
                let mut wanted: BTreeSet<String> = state.scopes.clone();
                wanted.extend(scopes.iter().filter(|s| !s.is_empty()).cloned());
                if let Some(scope) = challenge.params.get("scope") {
                    wanted.extend(
                        scope
                            .split(' ')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                    );
                }
                let current = state.token.as_ref().map(|t| format!("Bearer {t}"));
                if state.bearer.as_ref() == Some(&challenge)
                    && current.is_some()
                    && wanted == state.scopes
                    && current.as_deref() != sent
                {
                    // Another thread got a token meanwhile: use it.
                    return Ok(true);
                }
                // A new challenge or scope, or the token refused: expired or revoked before
                // its time (`send` asks twice at most, so a registry that refuses every
                // token does not loop).
                let all: Vec<String> = wanted.iter().cloned().collect();
                let token = self.fetch_token(&challenge, &all)?;
                state.bearer = Some(challenge);
                state.token = Some(token.value);
                state.renew_at = Some(token.renew_at);
                state.scopes = wanted;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn fetch_token(&self, challenge: &Challenge, scopes: &[String]) -> Result<Token> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| Error::Registry {
                url: self.base.clone(),
                message: "bearer challenge without a realm".into(),
            })?;
        let mut url = realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        let mut push = |k: &str, v: &str| {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
            sep = '&';
        };
        if let Some(service) = challenge.params.get("service") {
            push("service", service);
        }
        for scope in scopes {
            push("scope", scope);
        }
        // An identity token is an OAuth2 refresh token: it goes in a POST of the token form
        // (distribution docs/spec/auth/oauth.md), as docker sends it. A token server that
        // has no such endpoint (404, 405) gets the GET with basic auth instead, as docker
        // falls back.
        let identity = self
            .credentials
            .as_ref()
            .and_then(Credentials::identity_token);
        if let Some(refresh_token) = identity {
            let mut form = format!(
                "grant_type=refresh_token&client_id=strata&refresh_token={}",
                percent_encode(refresh_token)
            );
            if let Some(service) = challenge.params.get("service") {
                form.push_str(&format!("&service={}", percent_encode(service)));
            }
            if !scopes.is_empty() {
                form.push_str(&format!("&scope={}", percent_encode(&scopes.join(" "))));
            }
            let mut request = Request::new("POST", realm.clone(), String::new());
            request.scopes.clear();
            request.headers.push((
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ));
            request.body = Payload::Bytes(form.as_bytes());
            match self.token_from(realm, &request) {
                Err(TokenError::NoEndpoint) => {}
                Err(TokenError::Failed(err)) => return Err(err),
                Ok(token) => return Ok(token),
            }
        }
        let mut request = Request::new("GET", url.clone(), String::new());
        request.scopes.clear();
        if let Some(credentials) = &self.credentials {
            request
                .headers
                .push(("authorization", credentials.basic_header()));
        }
        self.token_from(realm, &request).map_err(|err| match err {
            TokenError::Failed(err) => err,
            TokenError::NoEndpoint => Error::Registry {
                url: realm.clone(),
                message: "the token endpoint is not there (404)".into(),
            },
        })
    }

    /// Sends a token request (`request`, to `realm`) with retries, and reads the token.
    fn token_from(
        &self,
        realm: &str,
        request: &Request<'_>,
    ) -> std::result::Result<Token, TokenError> {
        let mut last = None;
        for attempt in 0..=self.options.retries {
            let asked = std::time::Instant::now();
            match self.send_once(request, None) {
                Ok(mut response) if response.status().is_success() => {
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(1 << 20)
                        .read_to_vec()
                        .unwrap_or_default();
                    let body: serde_json::Value =
                        serde_json::from_slice(&body).map_err(|e| Error::Registry {
                            url: realm.to_string(),
                            message: format!("token response is not JSON: {e}"),
                        })?;
                    let token = body
                        .get("token")
                        .or_else(|| body.get("access_token"))
                        .and_then(|t| t.as_str());
                    let value = token.map(str::to_string).ok_or_else(|| Error::Registry {
                        url: realm.to_string(),
                        message: "token response has no token".into(),
                    })?;
                    // Valid for `expires_in` seconds, 60 when not given (token.md); renewed
                    // a tenth of that (10 s at most) before, from when it was asked for.
                    let lifetime = body
                        .get("expires_in")
                        .and_then(serde_json::Value::as_u64)
                        .filter(|&s| s > 0)
                        .unwrap_or(60);
                    let lifetime = Duration::from_secs(lifetime);
                    let renew_at = asked + lifetime - (lifetime / 10).min(Duration::from_secs(10));
                    return Ok(Token { value, renew_at });
                }
                Ok(response)
                    if request.method == "POST"
                        && matches!(response.status().as_u16(), 404 | 405) =>
                {
                    return Err(TokenError::NoEndpoint);
                }
                Ok(response) if !response.status().is_server_error() => {
                    return Err(TokenError::Failed(error_from(
                        realm,
                        "token request",
                        response,
                    )));
                }
                Ok(response) => last = Some(format!("status {}", response.status())),
                Err(e) => last = Some(e.to_string()),
            }
            if attempt < self.options.retries {
                std::thread::sleep(self.backoff(attempt + 1));
            }
        }
        Err(TokenError::Failed(Error::Registry {
            url: realm.to_string(),
            message: format!("token request failed: {}", last.unwrap_or_default()),
        }))
    }
}

/// Why a token request gave no token.
enum TokenError {
    /// The OAuth2 POST endpoint is not there (the server only hands tokens out by GET).
    NoEndpoint,
    Failed(Error),
}

impl From<Error> for TokenError {
    fn from(err: Error) -> TokenError {
        TokenError::Failed(err)
    }
}

/// Counts bytes read through it for a progress bar.
struct Progress<'a, R> {
    inner: R,
    report: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(report) = self.report {
            report(n as u64);
        }
        Ok(n)
    }
}

/// A response header's value, when present and valid text.
pub(crate) fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name)?.to_str().ok()
}

/// Turns an error response into an `Error`, quoting the registry's error codes
/// (distribution-spec "Error Codes") and pointing at `strata login` on 401.
pub(crate) fn error_from(url: &str, what: &str, mut response: Response<Body>) -> Error {
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .unwrap_or_default();
    let mut message = format!("{what}: {status}");
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) {
        if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
            for e in errors {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let text = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                message.push_str(&format!(" {code}: {text};"));
            }
            if message.ends_with(';') {
                message.pop();
            }
        }
    } else if !body.trim().is_empty() {
        message.push_str(&format!(
            " {}",
            body.trim().chars().take(200).collect::<String>()
        ));
    }
    if status == http::StatusCode::UNAUTHORIZED {
        message.push_str(" (authentication required: `strata login` with a user and password this registry accepts)");
    }
    Error::Registry {
        url: url.to_string(),
        message,
    }
}

/// A built `http::Request`, its builder's error as an `io::Error` like the agent's own.
fn built<T>(
    request: std::result::Result<http::Request<T>, http::Error>,
) -> io::Result<http::Request<T>> {
    request.map_err(io::Error::other)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass through).
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts_are_insecure_registries() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_local(host), "{host}");
        }
        for host in [
            "example.com",
            "example.com:5000",
            "10.0.0.1:5000",
            "localhost.example.com",
        ] {
            assert!(!is_local(host), "{host}");
        }
        let client = Client::new(
            "127.0.0.1:1",
            ClientOptions {
                credentials: None,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:1");
        assert_eq!(choose_scheme("example.com", false), ("https", false));
        assert_eq!(
            client.resolve_location("/v2/x/blobs/uploads/1?a=b"),
            "http://127.0.0.1:1/v2/x/blobs/uploads/1?a=b"
        );
    }

    #[test]
    fn percent_encodes_scopes() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
