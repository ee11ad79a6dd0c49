//! Registry credentials and authentication challenges.
//!
//! Credentials live where docker and podman keep them: `$REGISTRY_AUTH_FILE` (podman's
//! first choice), else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as
//! `{"auths": {"host:port": {"auth": base64("user:pass")}}}`. As in docker/cli
//! (`configfile/file.go` `GetCredentialsStore`), a credential helper named for the registry
//! in `credHelpers`, else the default `credsStore`, replaces that file entry: with a helper
//! configured, the helper alone is asked (a helper without the registry: anonymous), and
//! `strata login` / `logout` store and erase through it, leaving an empty `auths` entry as
//! docker does. Without one, `login` / `logout` rewrite the file atomically (tmp + fsync +
//! rename, mode 0600), keeping every other key in it. Challenges are the
//! `WWW-Authenticate` headers of RFC 7235 as registries send them (`Basic realm=..` or
//! `Bearer realm=..,service=..,scope=..`, distribution `docs/spec/auth/token.md`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::helper::Helper;
use crate::error::{Error, Result};
use crate::layout::replace_file;

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The user name docker's credentials carry an identity token under: the password is
    /// then an OAuth2 refresh token, not a password.
    pub const IDENTITY_TOKEN_USER: &'static str = "<token>";

    /// The identity token, if these credentials are one.
    pub fn identity_token(&self) -> Option<&str> {
        (self.username == Self::IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }

    /// The value of an `Authorization: Basic ..` header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// How long a credential helper may take to answer before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where credentials are looked up and kept: the credentials file, and the `PATH` its
/// credential helpers are found on. Passed around rather than read from the environment
/// at each use, so tests (and callers with their own idea) name them.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    /// `PATH` for `docker-credential-*` (also given to them); `None`: the process's own.
    pub search_path: Option<OsString>,
    pub helper_timeout: Duration,
}

/// Where [`Config::store`] put the credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    File(PathBuf),
    /// The helper program, `docker-credential-<name>`.
    Helper(String),
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::File(path) => write!(f, "{}", path.display()),
            Stored::Helper(program) => write!(f, "{program}"),
        }
    }
}

impl Config {
    /// The credentials file `file`, helpers on the process's `PATH`.
    pub fn at(file: impl Into<PathBuf>) -> Config {
        Config {
            file: file.into(),
            search_path: None,
            helper_timeout: HELPER_TIMEOUT,
        }
    }

    /// From this process's environment (see [`Config::from_vars`]).
    pub fn from_env() -> Config {
        Config::from_vars(|name| std::env::var_os(name))
    }

    /// From environment variables as `var` gives them: `$REGISTRY_AUTH_FILE`, else
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json` (podman's order; docker
    /// reads the last two), and `$PATH` for helpers. Empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Config {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let file = match (var("REGISTRY_AUTH_FILE"), var("DOCKER_CONFIG")) {
            (Some(file), _) => PathBuf::from(file),
            (None, Some(dir)) => PathBuf::from(dir).join("config.json"),
            (None, None) => var("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".docker/config.json"),
        };
        Config {
            file,
            search_path: var("PATH"),
            helper_timeout: HELPER_TIMEOUT,
        }
    }

    fn helper<'a>(&'a self, name: &str, registry: &'a str) -> Helper<'a> {
        Helper::new(
            name,
            registry,
            self.search_path.as_deref(),
            self.helper_timeout,
        )
    }

    /// The credentials for `registry` (`host[:port]`): from its helper when one is
    /// configured, else from the file's `auths`.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>> {
        let config = read_config(&self.file)?;
        if let Some(name) = helper_name(&config, registry) {
            return self.helper(&name, registry).get(&server_url(registry));
        }
        lookup_auths(&config, &self.file, registry)
    }

    /// Keeps `credentials` for `registry`: through its helper when one is configured (the
    /// file then holds an empty entry, as docker leaves it), else in the file.
    pub fn store(&self, registry: &str, credentials: &Credentials) -> Result<Stored> {
        let mut config = read_config(&self.file)?;
        let (entry, stored) = match helper_name(&config, registry) {
            Some(name) => {
                let helper = self.helper(&name, registry);
                helper.store(&server_url(registry), credentials)?;
                let program = helper.program().to_string();
                (serde_json::json!({}), Stored::Helper(program))
            }
            None => {
                let auth =
                    STANDARD.encode(format!("{}:{}", credentials.username, credentials.password));
                (
                    serde_json::json!({ "auth": auth }),
                    Stored::File(self.file.clone()),
                )
            }
        };
        let object = config.as_object_mut().ok_or_else(|| Error::Credentials {
            path: self.file.clone(),
            message: "top level is not an object".into(),
        })?;
        let auths = object
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}));
        if !auths.is_object() {
            *auths = serde_json::json!({});
        }
        if let Some(map) = auths.as_object_mut() {
            map.insert(registry.to_string(), entry);
        }
        write_atomic(&self.file, &config)?;
        Ok(stored)
    }

    /// Forgets the credentials for `registry`, in its helper and in the file; false when
    /// neither held any.
    pub fn erase(&self, registry: &str) -> Result<bool> {
        let mut config = read_config(&self.file)?;
        let mut removed = false;
        if let Some(name) = helper_name(&config, registry) {
            removed |= self.helper(&name, registry).erase(&server_url(registry))?;
        }
        let mut edited = false;
        if let Some(auths) = config.get_mut("auths").and_then(|a| a.as_object_mut()) {
            for key in keys_for(registry) {
                edited |= auths.remove(&key).is_some();
            }
        }
        if edited {
            write_atomic(&self.file, &config)?;
        }
        Ok(removed || edited)
    }
}

/// Keys a registry may be stored under: docker writes `https://index.docker.io/v1/` for Hub
/// and sometimes a scheme in front of other hosts.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if is_docker_hub(registry) {
        keys.push("https://index.docker.io/v1/".to_string());
        keys.push("index.docker.io".to_string());
        keys.push(super::reference::DOCKER_HUB.to_string());
    }
    keys
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        super::reference::DOCKER_HUB | "registry-1.docker.io" | "index.docker.io"
    )
}

/// The server URL a helper knows a registry by: docker's for Hub, else `host[:port]`.
fn server_url(registry: &str) -> String {
    if is_docker_hub(registry) {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// The helper configured for `registry`: `credHelpers` under one of its keys, else
/// `credsStore` (docker/cli `getConfiguredCredentialStore`). Empty names are none.
fn helper_name(config: &serde_json::Value, registry: &str) -> Option<String> {
    let named = |value: Option<&serde_json::Value>| {
        value
            .and_then(|v| v.as_str())
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    };
    if let Some(helpers) = config.get("credHelpers").and_then(|h| h.as_object())
        && let Some(name) = keys_for(registry)
            .iter()
            .find_map(|key| named(helpers.get(key)))
    {
        return Some(name);
    }
    named(config.get("credsStore"))
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(serde_json::json!({})),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Credentials {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(e) => Err(Error::io("failed to read credentials", path, e)),
    }
}

/// The credentials for `registry` in the `auths` of `config` (read from `path`).
fn lookup_auths(
    config: &serde_json::Value,
    path: &Path,
    registry: &str,
) -> Result<Option<Credentials>> {
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let bad = |message: String| Error::Credentials {
        path: path.to_path_buf(),
        message,
    };
    for key in keys_for(registry) {
        let Some(entry) = auths.get(&key) else {
            continue;
        };
        if let Some(auth) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            let decoded = STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("auths.{key:?}.auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auths.{key:?}.auth is not UTF-8")))?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                bad(format!(
                    "auths.{key:?}.auth does not decode to user:password"
                ))
            })?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).map(str::to_string);
        if let (Some(username), Some(password)) = (field("username"), field("password")) {
            return Ok(Some(Credentials { username, password }));
        }
        if let Some(token) = field("identitytoken") {
            // An identity token is sent as the password of the `<token>` user (docker's convention).
            return Ok(Some(Credentials {
                username: Credentials::IDENTITY_TOKEN_USER.to_string(),
                password: token,
            }));
        }
    }
    Ok(None)
}

/// Looks up the credentials for `registry` as this process's environment configures them.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    Config::from_env().lookup(registry)
}

/// Rewrites the credentials file atomically, readable by its owner only.
fn write_atomic(path: &Path, config: &serde_json::Value) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io("failed to create", dir, e))?;
    let mut bytes = serde_json::to_vec_pretty(config).unwrap_or_default();
    bytes.push(b'\n');
    replace_file(path, 0o600, |file| {
        file.write_all(&bytes)
            .map_err(|e| Error::io("failed to write credentials", path, e))
    })
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `basic` or `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses `Scheme k="v", k2=v2` (quoted strings may hold commas and `\"`).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = chars
                    .by_ref()
                    .take_while(|c| *c != ',')
                    .collect::<String>()
                    .trim()
                    .to_string();
            }
            params.insert(key, value);
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_scope() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.params["realm"].as_str()),
            ("basic", "Registry Realm")
        );
    }

    #[test]
    fn login_then_lookup_then_logout_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            r#"{"psFormat":"table","auths":{"other:1":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let config = Config::at(&path);
        let creds = Credentials {
            username: "alice".into(),
            password: "s3:cr=t".into(),
        };
        assert_eq!(
            config.store("127.0.0.1:5000", &creds).unwrap(),
            Stored::File(path.clone())
        );
        assert_eq!(config.lookup("127.0.0.1:5000").unwrap(), Some(creds));
        assert_eq!(config.lookup("other:1").unwrap().unwrap().username, "u");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert!(config.erase("127.0.0.1:5000").unwrap());
        assert!(!config.erase("127.0.0.1:5000").unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("psFormat") && text.contains("other:1"),
            "{text}"
        );
        assert_eq!(config.lookup("127.0.0.1:5000").unwrap(), None);
    }

    #[test]
    fn reads_docker_hub_legacy_key_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"}}}"#,
        )
        .unwrap();
        let config = Config::at(&path);
        assert_eq!(config.lookup("docker.io").unwrap().unwrap().username, "bob");
        fs::write(&path, r#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap();
        let e = config.lookup("h").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("base64"), "{e}");
        assert_eq!(
            Config::at(dir.path().join("missing.json"))
                .lookup("h")
                .unwrap(),
            None
        );
    }

    #[test]
    fn the_file_is_registry_auth_file_then_docker_config_then_home() {
        fn vars(set: &[(&str, &str)]) -> PathBuf {
            Config::from_vars(move |name| {
                set.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            })
            .file
        }
        let all = [
            ("REGISTRY_AUTH_FILE", "/run/auth.json"),
            ("DOCKER_CONFIG", "/etc/dc"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(vars(&all), Path::new("/run/auth.json"));
        assert_eq!(vars(&all[1..]), Path::new("/etc/dc/config.json"));
        assert_eq!(vars(&all[2..]), Path::new("/home/u/.docker/config.json"));
        assert_eq!(
            vars(&[("REGISTRY_AUTH_FILE", ""), ("DOCKER_CONFIG", "/etc/dc")]),
            Path::new("/etc/dc/config.json"),
            "an empty variable is unset"
        );
    }

    /// A directory with `bin/docker-credential-<name>` (the script given, `@DIR@` replaced
    /// by the directory's path) and a config naming its helpers; helpers are found on `bin`
    /// then /usr/bin and /bin (the tools the scripts use), a PATH given explicitly: the
    /// process's own is neither read nor changed.
    struct Helpers {
        dir: tempfile::TempDir,
        config: Config,
    }

    impl Helpers {
        fn new(config_json: &str) -> Helpers {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("bin")).unwrap();
            let file = dir.path().join("config.json");
            fs::write(&file, config_json).unwrap();
            let mut config = Config::at(&file);
            let bin = dir.path().join("bin");
            config.search_path = Some(format!("{}:/usr/bin:/bin", bin.display()).into());
            Helpers { dir, config }
        }

        fn install(&self, name: &str, script: &str) {
            use std::os::unix::fs::PermissionsExt;
            let path = self
                .dir
                .path()
                .join("bin")
                .join(format!("docker-credential-{name}"));
            let script = script.replace("@DIR@", &self.dir.path().display().to_string());
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }

        /// The test helper of the registry tests, keeping credentials in files.
        fn install_files(&self, name: &str) {
            self.install(
                name,
                include_str!("../../tests/registry/credential-helper.sh"),
            );
        }

        fn calls(&self) -> String {
            fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
        }

        fn file(&self) -> String {
            fs::read_to_string(&self.config.file).unwrap()
        }
    }

    #[test]
    fn creds_store_gets_stores_and_erases_through_the_helper() {
        // A plaintext entry for the host, as an older login left it: with a helper
        // configured docker asks the helper alone, and so do we.
        let h =
            Helpers::new(r#"{"credsStore":"files","auths":{"h:1":{"auth":"cGxhaW46dGV4dA=="}}}"#);
        h.install_files("files");
        let config = &h.config;
        assert_eq!(
            config.lookup("h:1").unwrap(),
            None,
            "the helper has nothing"
        );
        let creds = Credentials {
            username: "ci".into(),
            password: "pa\"ss word".into(),
        };
        assert_eq!(
            config.store("h:1", &creds).unwrap(),
            Stored::Helper("docker-credential-files".into())
        );
        // The file keeps an empty entry, as docker leaves it; no secret in plaintext.
        let saved: serde_json::Value = serde_json::from_str(&h.file()).unwrap();
        assert_eq!(saved["auths"]["h:1"], serde_json::json!({}), "{saved}");
        assert_eq!(saved["credsStore"], "files");
        assert_eq!(config.lookup("h:1").unwrap(), Some(creds));
        // An identity token travels as the `<token>` user.
        let token = Credentials {
            username: Credentials::IDENTITY_TOKEN_USER.into(),
            password: "refresh-me".into(),
        };
        config.store("docker.io", &token).unwrap();
        assert_eq!(config.lookup("registry-1.docker.io").unwrap(), Some(token));
        assert!(config.erase("h:1").unwrap());
        assert_eq!(config.lookup("h:1").unwrap(), None);
        assert!(!config.erase("h:1").unwrap(), "nothing left to erase");
        let saved: serde_json::Value = serde_json::from_str(&h.file()).unwrap();
        assert!(saved["auths"].get("h:1").is_none(), "{saved}");
        // docker's server URLs: host[:port], and Hub's legacy URL.
        assert_eq!(
            h.calls(),
            "get h:1\nstore h:1\nget h:1\nstore https://index.docker.io/v1/\n\
             get https://index.docker.io/v1/\nerase h:1\nget h:1\nerase h:1\n"
        );
    }

    #[test]
    fn a_cred_helpers_entry_wins_over_creds_store_and_a_missing_helper_is_named() {
        let h = Helpers::new(r#"{"credHelpers":{"a:1":"files"},"credsStore":"gone"}"#);
        h.install_files("files");
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        assert!(matches!(
            h.config.store("a:1", &creds).unwrap(),
            Stored::Helper(_)
        ));
        assert_eq!(h.config.lookup("a:1").unwrap(), Some(creds.clone()));
        let err = h.config.lookup("b:2").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-gone")
                && err.contains("b:2")
                && err.contains("not installed"),
            "{err}"
        );
        // A login through a missing helper stores nothing anywhere, plaintext least of all.
        let before = h.file();
        assert!(h.config.store("b:2", &creds).is_err());
        assert_eq!(h.file(), before);
    }

    #[test]
    fn a_failing_helper_is_an_error_naming_it_and_the_registry() {
        let h = Helpers::new(r#"{"credsStore":"locked"}"#);
        h.install(
            "locked",
            "#!/bin/sh\ncat >/dev/null\necho 'error: keychain is locked' >&2\nexit 3\n",
        );
        let err = h.config.lookup("reg.example:443").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-locked")
                && err.contains("reg.example:443")
                && err.contains("keychain is locked"),
            "{err}"
        );
        // Garbage on success is an error too, not anonymous access.
        h.install("locked", "#!/bin/sh\necho 'not json'\n");
        let err = h.config.lookup("reg.example:443").unwrap_err().to_string();
        assert!(err.contains("JSON"), "{err}");
    }

    #[test]
    fn a_hung_helper_is_killed_at_the_deadline() {
        let mut h = Helpers::new(r#"{"credsStore":"hung"}"#);
        // exec: the helper's PID is the sleeping process itself
        h.install("hung", "#!/bin/sh\nexec sleep 60\n");
        h.config.helper_timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let err = h.config.lookup("slow:5000").unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.contains("docker-credential-hung get")
                && err.contains("did not finish")
                && err.contains("slow:5000"),
            "{err}"
        );
        let pid: i32 = err
            .rsplit("(pid ")
            .next()
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {err}"));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "helper {pid} still running"
        );
    }
}
