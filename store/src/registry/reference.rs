//! Image references as registries name them: `host[:port]/repo[:tag][@sha256:...]`
//! (distribution `reference` grammar). A name without a registry host goes to Docker Hub
//! the way docker normalises it (`busybox` -> `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::Digest;
use crate::error::{Error, Result};

/// Docker Hub's canonical name and the host that actually serves its API.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed registry reference. `tag` and `digest` may both be set (`repo:tag@sha256:..`);
/// the digest then wins when talking to the registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |reason: &'static str| Error::InvalidReference {
            reference: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|_| bad("digest must be sha256:<64 lowercase hex>"))?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        // A tag is whatever follows the last ':' after the last '/', so `host:5000/repo` has none.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(bad("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("invalid registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(bad(
                "repository must be lowercase [a-z0-9] components separated by '/', '.', '_', '__' or '-'",
            ));
        }
        if repository.len() > 255 {
            return Err(bad("repository name longer than 255 characters"));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// What goes after `/manifests/`: the digest if there is one, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The host (and port) to connect to: Docker Hub's API lives on another name.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `registry/repository:tag` (the tag defaulting to `latest`), the name a pulled image
    /// is stored under; a digest-only reference gives `registry/repository@sha256:..`.
    pub fn name(&self) -> String {
        match (&self.tag, &self.digest) {
            (None, Some(d)) => format!("{}/{}@{}", self.registry, self.repository, d),
            (tag, _) => format!(
                "{}/{}:{}",
                self.registry,
                self.repository,
                tag.as_deref().unwrap_or("latest")
            ),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (distribution `reference/regexp.go`).
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_host_port_repo_and_tag() {
        let r = parse("127.0.0.1:5000/team/app:v1.2");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.reference(), "v1.2");
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/app:v1.2");
    }

    #[test]
    fn port_is_not_a_tag() {
        let r = parse("localhost:5000/app");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "app");
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.name(), "localhost:5000/app:latest");
    }

    #[test]
    fn digest_reference_wins_over_tag() {
        let d = Digest::of(b"x");
        let r = parse(&format!("example.com/a/b:t@{d}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.reference(), d.to_string());
        let r = parse(&format!("example.com/a@{d}"));
        assert_eq!(r.name(), format!("example.com/a@{d}"));
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = parse("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = parse("user/app:1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "user/app")
        );
        assert_eq!(parse("localhost/app").registry, "localhost");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Upper/Case",
            "host:5000/app:",
            "app:-tag",
            "a//b",
            "a/b-",
            "x@sha256:abc",
            "a/b@md5:00",
            "x.io/a..b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = Reference::parse("app:t@sha256:zz").unwrap_err().to_string();
        assert!(e.contains("app:t@sha256:zz") && e.contains("digest"), "{e}");
    }

    #[test]
    fn path_components_follow_the_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "0x"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a___b", "a.-b", "A"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }
}
