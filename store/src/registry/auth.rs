//! Registry credentials and authentication challenges.
//!
//! Credentials live where docker and podman keep them: `$REGISTRY_AUTH_FILE`, else
//! `~/.docker/config.json`, as `{"auths": {"host:port": {"auth": base64("user:pass")}}}`.
//! `strata login` / `logout` rewrite that file atomically (tmp + fsync + rename, mode 0600),
//! keeping every other key in it. Challenges are the `WWW-Authenticate` headers of RFC 7235
//! as registries send them (`Basic realm=..` or `Bearer realm=..,service=..,scope=..`,
//! distribution `docs/spec/auth/token.md`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

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
    /// The value of an `Authorization: Basic ..` header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// The credentials file: `$REGISTRY_AUTH_FILE`, else `$HOME/.docker/config.json`.
pub fn auth_file() -> PathBuf {
    if let Some(path) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".docker/config.json")
}

/// Keys a registry may be stored under: docker writes `https://index.docker.io/v1/` for Hub
/// and sometimes a scheme in front of other hosts.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if matches!(
        registry,
        super::reference::DOCKER_HUB | "registry-1.docker.io" | "index.docker.io"
    ) {
        keys.push("https://index.docker.io/v1/".to_string());
        keys.push("index.docker.io".to_string());
        keys.push(super::reference::DOCKER_HUB.to_string());
    }
    keys
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

/// Looks up the credentials for `registry` (`host[:port]`) in `path`.
pub fn lookup_in(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let config = read_config(path)?;
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
                username: "<token>".to_string(),
                password: token,
            }));
        }
    }
    Ok(None)
}

/// Looks up the credentials for `registry` in the default credentials file.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    lookup_in(&auth_file(), registry)
}

/// Stores credentials for `registry` in `path`, keeping the rest of the file.
pub fn store_in(path: &Path, registry: &str, credentials: &Credentials) -> Result<()> {
    let mut config = read_config(path)?;
    let auth = STANDARD.encode(format!("{}:{}", credentials.username, credentials.password));
    let object = config.as_object_mut().ok_or_else(|| Error::Credentials {
        path: path.to_path_buf(),
        message: "top level is not an object".into(),
    })?;
    let auths = object
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    if let Some(map) = auths.as_object_mut() {
        map.insert(registry.to_string(), serde_json::json!({ "auth": auth }));
    }
    write_atomic(path, &config)
}

/// Removes the credentials for `registry` from `path`; false when there were none.
pub fn remove_in(path: &Path, registry: &str) -> Result<bool> {
    let mut config = read_config(path)?;
    let mut removed = false;
    if let Some(auths) = config.get_mut("auths").and_then(|a| a.as_object_mut()) {
        for key in keys_for(registry) {
            removed |= auths.remove(&key).is_some();
        }
    }
    if removed {
        write_atomic(path, &config)?;
    }
    Ok(removed)
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
            r#"{"credsStore":"none","auths":{"other:1":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let creds = Credentials {
            username: "alice".into(),
            password: "s3:cr=t".into(),
        };
        store_in(&path, "127.0.0.1:5000", &creds).unwrap();
        assert_eq!(lookup_in(&path, "127.0.0.1:5000").unwrap(), Some(creds));
        assert_eq!(lookup_in(&path, "other:1").unwrap().unwrap().username, "u");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert!(remove_in(&path, "127.0.0.1:5000").unwrap());
        assert!(!remove_in(&path, "127.0.0.1:5000").unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("credsStore") && text.contains("other:1"),
            "{text}"
        );
        assert_eq!(lookup_in(&path, "127.0.0.1:5000").unwrap(), None);
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
        assert_eq!(
            lookup_in(&path, "docker.io").unwrap().unwrap().username,
            "bob"
        );
        fs::write(&path, r#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap();
        let e = lookup_in(&path, "h").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("base64"), "{e}");
        assert_eq!(
            lookup_in(&dir.path().join("missing.json"), "h").unwrap(),
            None
        );
    }
}
