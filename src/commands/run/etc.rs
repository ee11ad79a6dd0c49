//! The container's /etc/resolv.conf, /etc/hosts and /etc/hostname, as docker makes them:
//! per-container files in `containers/<id>/` bind-mounted over the rootfs by the runtime,
//! so the container can read (and even edit) them without them ever reaching its upper,
//! `strata diff` or `strata commit`.
//!
//! The mount points come from an "init layer" (docker's `<id>-init`, moby
//! daemon/initlayer): `containers/<id>/init/` holds empty `etc/resolv.conf`, `etc/hosts`
//! and `etc/hostname` and is mounted as the top lower, so an image without those files
//! (busybox has no resolv.conf) still gets them and nothing is created in the upper.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The files bound into every container (container path, file name in the container dir).
const FILES: [(&str, &str); 3] = [
    ("/etc/resolv.conf", "resolv.conf"),
    ("/etc/hosts", "hosts"),
    ("/etc/hostname", "hostname"),
];

/// docker's /etc/hosts for a container without a network of the host's
/// (libnetwork/etchosts `Build`'s default records).
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// The contents of the three files for `network` ("host" or "none").
pub fn contents(network: &str, hostname: &str, host_resolv: &str, host_hosts: &str) -> [String; 3] {
    let hosts = if network == "host" {
        // The host's own table (docker copies it for --network host), plus the name the
        // container was given so it resolves too.
        let mut hosts = host_hosts.to_string();
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        let known = hosts
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .any(|line| line.split_whitespace().skip(1).any(|name| name == hostname));
        if !known {
            hosts.push_str(&format!("127.0.0.1\t{hostname}\n"));
        }
        hosts
    } else {
        // No address of its own: the container's name resolves to loopback.
        format!("{DEFAULT_HOSTS}127.0.0.1\t{hostname}\n")
    };
    [host_resolv.to_string(), hosts, format!("{hostname}\n")]
}

/// Writes the container's copies into `container_dir` and its init layer into
/// `container_dir/init`; returns the runtime's bind list and the init layer's path.
/// `lowers` are the image's layers, top first (the first /etc found gives the init
/// layer's /etc its mode and owner).
pub fn prepare(
    container_dir: &Path,
    lowers: &[PathBuf],
    network: &str,
    hostname: &str,
) -> anyhow::Result<(Vec<(PathBuf, String)>, PathBuf)> {
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let host_hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let texts = contents(network, hostname, &host_resolv, &host_hosts);

    let init = container_dir.join("init");
    let etc = init.join("etc");
    fs::create_dir_all(&etc).with_context(|| format!("failed to create {}", etc.display()))?;
    // The init layer's /etc shadows the image's attributes (the top layer's directory wins
    // in a union): give it the image's mode and owner.
    if let Some(meta) = lowers.iter().find_map(|lower| {
        fs::symlink_metadata(lower.join("etc"))
            .ok()
            .filter(|m| m.is_dir())
    }) {
        fs::set_permissions(&etc, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .with_context(|| format!("failed to chmod {}", etc.display()))?;
        std::os::unix::fs::lchown(&etc, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("failed to chown {}", etc.display()))?;
    }
    let mut binds = Vec::new();
    for ((inside, name), text) in FILES.iter().zip(texts) {
        let mount_point = init.join(&inside[1..]);
        fs::write(&mount_point, b"")
            .with_context(|| format!("failed to create {}", mount_point.display()))?;
        let copy = container_dir.join(name);
        // Container state, not image data: a plain write (the container dir is
        // per-container and rewritten on each start).
        fs::write(&copy, text).with_context(|| format!("failed to write {}", copy.display()))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("failed to chmod {}", copy.display()))?;
        binds.push((copy, inside.to_string()));
    }
    Ok((binds, init))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_network_gets_localhost_and_its_name() {
        let [resolv, hosts, hostname] =
            contents("none", "abc123", "nameserver 10.0.0.1\n", "ignored");
        assert_eq!(resolv, "nameserver 10.0.0.1\n");
        assert!(
            hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        );
        assert!(hosts.ends_with("127.0.0.1\tabc123\n"));
        assert!(!hosts.contains("ignored"));
        assert_eq!(hostname, "abc123\n");
    }

    #[test]
    fn host_network_copies_the_host_tables() {
        let [resolv, hosts, _] = contents(
            "host",
            "box",
            "nameserver 1.1.1.1\n",
            "127.0.0.1 localhost box",
        );
        assert_eq!(resolv, "nameserver 1.1.1.1\n");
        assert_eq!(hosts, "127.0.0.1 localhost box\n");
        let [_, hosts, _] = contents("host", "other", "", "127.0.0.1 localhost\n");
        assert_eq!(hosts, "127.0.0.1 localhost\n127.0.0.1\tother\n");
    }
}
