//! `run -v` and the image's VOLUMEs: host paths bound into the container, and volumes of
//! the container's own, as docker makes them.
//!
//! - `-v /host/path:/dir[:ro]` binds a host directory or file (it must exist: podman's rule,
//!   not docker's silent mkdir on the host).
//! - `-v NAME:/dir` mounts the named volume `<root>/volumes/NAME`, made (and filled from
//!   the image, as docker fills a new one) the first time; it outlives containers
//!   (`strata volume ls|create|rm`).
//! - `-v /dir` and every `VOLUME` of the image not bound by `-v` get a volume of the
//!   container's own, in its directory (`volumes/N`, removed with it, so `--rm` leaves
//!   nothing). Like a new docker volume it starts as a copy of what the image has at
//!   that path (content, owners, modes), unless `nocopy` is given. Writes there bypass the
//!   container's upper, so `commit` does not take them, as with docker.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One mount of `run -v` or of an image VOLUME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// A host path to bind, or None: a volume (named, or the container's own).
    pub source: Option<PathBuf>,
    /// A named volume (`-v NAME:/dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absolute and clean, inside the container.
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
    /// Fill a new volume from the image (docker's default; `nocopy` turns it off).
    #[serde(default = "yes")]
    pub copy: bool,
}

fn yes() -> bool {
    true
}

/// Parses `-v` arguments (relative host paths are taken from `cwd`), then adds the image's
/// VOLUMEs that no `-v` covers.
pub fn parse(
    specs: &[String],
    image_volumes: &[String],
    cwd: &Path,
) -> anyhow::Result<Vec<Volume>> {
    let mut volumes: Vec<Volume> = Vec::new();
    for spec in specs {
        let volume = parse_one(spec, cwd).with_context(|| format!("invalid volume {spec:?}"))?;
        if volumes.iter().any(|v| v.target == volume.target) {
            bail!(
                "invalid volume {spec:?}: duplicate mount point {}",
                volume.target
            );
        }
        volumes.push(volume);
    }
    let mut from_image: Vec<String> = image_volumes
        .iter()
        .filter_map(|path| clean_target(path).ok())
        .collect();
    from_image.sort();
    from_image.dedup();
    for target in from_image {
        if !volumes.iter().any(|v| v.target == target) {
            volumes.push(Volume {
                source: None,
                name: None,
                target,
                readonly: false,
                copy: true,
            });
        }
    }
    Ok(volumes)
}

fn parse_one(spec: &str, cwd: &Path) -> anyhow::Result<Volume> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, options] => (Some(*source), *target, *options),
        _ => bail!("use HOST-PATH:DIR[:OPTIONS] or DIR"),
    };
    let mut volume = Volume {
        source: None,
        name: None,
        target: clean_target(target)?,
        readonly: false,
        copy: true,
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" | "readonly" => volume.readonly = true,
            "rw" => volume.readonly = false,
            "nocopy" => volume.copy = false,
            // SELinux relabelling: there is no SELinux policy to label for here
            "z" | "Z" => {}
            other => bail!("unknown option {other:?} (ro, rw, nocopy, z, Z)"),
        }
    }
    if let Some(source) = source {
        if !(source.starts_with('/') || source.starts_with('.')) {
            check_name(source)?;
            volume.name = Some(source.to_string());
            return Ok(volume);
        }
        let path =
            std::path::absolute(cwd.join(source)).with_context(|| format!("bad path {source}"))?;
        let path = std::fs::canonicalize(&path)
            .with_context(|| format!("host path {}", path.display()))?;
        volume.source = Some(path);
    }
    Ok(volume)
}

/// A volume name as docker takes it: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!(
            "invalid volume name {name:?}: letters, digits, '_', '.' and '-', starting with a letter or digit"
        );
    }
    Ok(())
}

/// `target` as an absolute clean container path; "/" cannot be mounted over.
fn clean_target(target: &str) -> anyhow::Result<String> {
    if !target.starts_with('/') {
        bail!("the mount point {target:?} is not an absolute path");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        bail!("cannot mount over /");
    }
    // the container's own /proc and /dev are made by the runtime (runc refuses /proc too)
    match parts[..] {
        ["proc", ..] => bail!("cannot mount on {target}: the container's /proc is its own"),
        ["dev"] => bail!("cannot mount over /dev: the container's devices are there"),
        _ => {}
    }
    Ok(format!("/{}", parts.join("/")))
}

/// What the runtime binds for `volumes`. A volume of the container's own is made the first
/// time (filled from `rootfs`, the container's mounted union, unless `nocopy`).
pub fn binds(
    container_dir: &Path,
    named: &Path,
    rootfs: &Path,
    volumes: &[Volume],
    root: (u32, u32),
) -> anyhow::Result<Vec<strata_runtime::Bind>> {
    let mut binds = Vec::with_capacity(volumes.len());
    for (index, volume) in volumes.iter().enumerate() {
        let source = source(container_dir, named, index, volume);
        match (&volume.source, &volume.name) {
            (Some(_), _) => {}
            (None, Some(name)) => {
                let dir = &source;
                if !dir.exists() {
                    std::fs::create_dir_all(named)
                        .with_context(|| format!("failed to create {}", named.display()))?;
                    create(dir, rootfs, volume, root)
                        .with_context(|| format!("failed to create volume {name}"))?;
                } else if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none()) {
                    // an empty volume (`volume create`) is filled at its first use, as docker's
                    fill(dir, rootfs, volume)
                        .with_context(|| format!("failed to fill volume {name}"))?;
                }
            }
            (None, None) => {
                if !source.exists() {
                    create(&source, rootfs, volume, root).with_context(|| {
                        format!("failed to create the volume for {}", volume.target)
                    })?;
                }
            }
        }
        binds.push(strata_runtime::Bind {
            source,
            target: PathBuf::from(&volume.target),
            readonly: volume.readonly,
        });
    }
    // parents first: a -v below an image VOLUME goes on top of it, not under it
    binds.sort_by_key(|bind| bind.target.components().count());
    Ok(binds)
}

/// Where volume number `index` of a container lives on the host: its host path, the named
/// volume's directory under `named`, or the container's own `volumes/N`.
pub fn source(container_dir: &Path, named: &Path, index: usize, volume: &Volume) -> PathBuf {
    match (&volume.source, &volume.name) {
        (Some(path), _) => path.clone(),
        (None, Some(name)) => named.join(name),
        (None, None) => container_dir.join("volumes").join(index.to_string()),
    }
}

/// Copies what the image has at the volume's target into `dir` (unless `nocopy`).
fn fill(dir: &Path, rootfs: &Path, volume: &Volume) -> anyhow::Result<()> {
    let in_image = strata_runtime::resolve_in_root(rootfs, Path::new(&volume.target))?;
    if volume.copy && in_image.is_dir() {
        // `cp -a` keeps what docker keeps when it fills a volume: owners, modes, times,
        // xattrs, hard links, special files, and the directory's own owner and mode.
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(in_image.join("."))
            .arg(dir)
            .output()
            .context("failed to run cp")?;
        if !out.status.success() {
            bail!(
                "cp -a {}: {}",
                volume.target,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Makes the volume at `dir` (staged beside it, then renamed into place).
/// `root` owns a volume the image does not fill (the host ids of container root: in a
/// user namespace, not host root, or the container could not write to it).
fn create(dir: &Path, rootfs: &Path, volume: &Volume, root: (u32, u32)) -> anyhow::Result<()> {
    // one staging directory per process: two containers may make one named volume at once
    let staging = dir.with_extension(format!("new-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("failed to remove {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("failed to create {}", staging.display()))?;
    std::os::unix::fs::chown(&staging, Some(root.0), Some(root.1))
        .with_context(|| format!("failed to chown {}", staging.display()))?;
    fill(&staging, rootfs, volume)?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // another container made it meanwhile: theirs stands
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("failed to rename into {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_arguments_parse_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("h");
        std::fs::create_dir(&host).unwrap();
        let parse = |specs: &[&str], image: &[&str]| {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            let image: Vec<String> = image.iter().map(|s| s.to_string()).collect();
            parse(&specs, &image, dir.path())
        };
        let volumes = parse(
            &["./h:/data/:ro,z", "/cache/../tmp", "pgdata:/var/lib/db"],
            &["/data", "/logs", "/logs/"],
        )
        .unwrap();
        let host = std::fs::canonicalize(&host).unwrap();
        assert_eq!(
            volumes,
            [
                Volume {
                    source: Some(host),
                    name: None,
                    target: "/data".into(),
                    readonly: true,
                    copy: true
                },
                Volume {
                    source: None,
                    name: None,
                    target: "/tmp".into(),
                    readonly: false,
                    copy: true
                },
                Volume {
                    source: None,
                    name: Some("pgdata".into()),
                    target: "/var/lib/db".into(),
                    readonly: false,
                    copy: true
                },
                Volume {
                    source: None,
                    name: None,
                    target: "/logs".into(),
                    readonly: false,
                    copy: true
                },
            ]
        );
        for (specs, says) in [
            (&["-bad:/x"][..], "invalid volume name"),
            (&["/nonexistent-strata:/x"][..], "/nonexistent-strata"),
            (&["./h:rel"][..], "not an absolute path"),
            (&["./h:/"][..], "cannot mount over /"),
            (&["./h:/proc"][..], "the container's /proc is its own"),
            (&["./h:/proc/sys/x"][..], "the container's /proc is its own"),
            (&["./h:/dev/"][..], "cannot mount over /dev"),
            (&["./h:/x:bogus"][..], "unknown option \"bogus\""),
            (&["./h:/x", "/x"][..], "duplicate mount point /x"),
            (&["a:b:c:d"][..], "HOST-PATH:DIR"),
        ] {
            let err = format!("{:#}", parse(specs, &[]).unwrap_err());
            assert!(err.contains(says), "{specs:?}: {err}");
        }
    }
}
