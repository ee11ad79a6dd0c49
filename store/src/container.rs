//! Containers' directories: `containers/<id>/{state.json, upper/, work/, rootfs/}`.
//!
//! A container directory is assembled in `tmp/` and renamed into place whole, so a crash
//! never leaves a container without its state. `state.json` is rewritten atomically by
//! `Container::save`. Names are unique; the check and the rename happen under `refs.lock`.
//!
//! Durability. A container's state is not image data: a lost `state.json` loses no layer,
//! blob or name. Ordinary containers are still written durably (tmp + fsync + rename +
//! fsync of the directory) because `rm`, `commit` and `gc` must find them after a crash.
//! A *volatile* container (`run --rm`: removed as soon as its command exits, like podman's
//! volatile --rm containers) is written atomically but without any fsync. Its directory
//! holds an empty `volatile` file, created before the directory is renamed into
//! `containers/`: a directory entry is metadata, which the journal orders before the
//! rename, so after a crash a volatile container whose `state.json` did not reach the disk
//! is recognised as the leftover it is and moved to `tmp/` (swept by gc) by the next
//! listing, instead of being a damaged container. Every write stays atomic for readers.
//!
//! ```text
//! containers/<id>/
//!   state.json      ContainerState (JSON)
//!   volatile        present only for volatile containers (empty)
//!   upper/ work/    the union mount's writable layer and overlayfs work dir
//!   rootfs/         the mount point
//! ```

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::Image;
use crate::layout::{Store, rename_durable};

/// The marker file of a volatile container (see the module docs).
const VOLATILE_MARKER: &str = "volatile";
use crate::{Digest, json, time};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// What `state.json` holds. The runtime fills `pid`, `status`, `exit_code`, `driver`, ...
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub image: Option<String>,
    pub image_id: Option<Digest>,
    #[serde(default)]
    pub command: Vec<String>,
    pub status: Status,
    pub exit_code: Option<i32>,
    /// Its last run ended with an OOM kill (docker's `State.OOMKilled`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// Why its last start could not run the command (docker's `State.Error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    /// When its command last started and ended (RFC 3339, UTC), for `ps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub pid: Option<i32>,
    /// The strata process that runs it (a foreground `run`, or the monitor of `run -d`):
    /// once both it and `pid` are gone, nobody is left to clean up after the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<i32>,
    /// When `pid` started (field 22 of /proc/PID/stat, clock ticks since boot): a pid
    /// reused by another process after a reboot or a crash does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    pub driver: Option<String>,
    pub mounted_at: Option<PathBuf>,
    /// Run options, as the runtime chooses to record them.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// A container directory and its state.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    pub state: ContainerState,
    /// Written without fsync (`Store::create_volatile_container`).
    volatile: bool,
}

impl Container {
    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn rootfs_dir(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// True for a container made by `Store::create_volatile_container`.
    pub fn is_volatile(&self) -> bool {
        self.volatile
    }

    /// Rewrites `state.json` atomically (tmp file in the container dir, rename); durably
    /// (fsync of the file before and of the directory after the rename) unless the
    /// container is volatile.
    pub fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|source| Error::Json {
            what: format!("container {} state", self.id),
            source,
        })?;
        // one tmp file per process: two saving at once must not rename each other's away
        let tmp = self
            .dir
            .join(format!(".state.json.tmp-{}", std::process::id()));
        let saved = write_file(&tmp, &bytes, !self.volatile).and_then(|()| {
            if self.volatile {
                fs::rename(&tmp, self.state_path())
                    .map_err(|e| Error::io("failed to rename into place", self.state_path(), e))
            } else {
                rename_durable(&tmp, &self.state_path())
            }
        });
        if saved.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        saved
    }

    /// The container as its `state.json` says now (another process may have changed it).
    pub fn reread(&self) -> Result<Container> {
        Container::load(&self.dir)
    }

    fn load(dir: &Path) -> Result<Container> {
        let path = dir.join("state.json");
        let bytes =
            fs::read(&path).map_err(|e| Error::io("failed to read container state", &path, e))?;
        let state: ContainerState = json::parse(&bytes, || path.display().to_string())?;
        let volatile = dir.join(VOLATILE_MARKER).exists();
        Ok(Container {
            id: state.id.clone(),
            dir: dir.to_path_buf(),
            state,
            volatile,
        })
    }
}

fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    use std::io::Write;
    let mut file = fs::File::create(path).map_err(|e| Error::io("failed to create", path, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("failed to write", path, e))?;
    if sync {
        file.sync_all()
            .map_err(|e| Error::io("failed to fsync", path, e))?;
    }
    Ok(())
}

impl Store {
    /// Creates a container directory from `image` (or none: an empty rootfs). Without a
    /// name one is generated; a taken name is refused. Its state is written durably.
    pub fn create_container(&self, image: Option<&Image>, name: Option<&str>) -> Result<Container> {
        self.new_container(image, name, false)
    }

    /// `create_container` for a container that will not outlive its command (`run --rm`):
    /// its state is written atomically but never fsync'd (see the module docs), saving
    /// every fsync of the create, save and remove path.
    pub fn create_volatile_container(
        &self,
        image: Option<&Image>,
        name: Option<&str>,
    ) -> Result<Container> {
        self.new_container(image, name, true)
    }

    fn new_container(
        &self,
        image: Option<&Image>,
        name: Option<&str>,
        volatile: bool,
    ) -> Result<Container> {
        let id = random_id()?;
        if let Some(name) = name {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && name.as_bytes()[0].is_ascii_alphanumeric();
            if !valid {
                return Err(Error::Invalid {
                    what: format!("container name {name:?}"),
                    message: "use [a-zA-Z0-9][a-zA-Z0-9_.-]*".into(),
                });
            }
        }
        let staging = self.tmp_dir_create("container")?;
        let result = (|| {
            for sub in ["upper", "work", "rootfs"] {
                let path = staging.join(sub);
                fs::create_dir(&path)
                    .map_err(|e| Error::io("failed to create directory", &path, e))?;
            }
            if volatile {
                let marker = staging.join(VOLATILE_MARKER);
                fs::File::create(&marker).map_err(|e| Error::io("failed to create", &marker, e))?;
            }
            let _guard = self.refs_lock()?;
            let taken: Vec<String> = self
                .containers()?
                .into_iter()
                .map(|c| c.state.name)
                .collect();
            let name = match name {
                Some(name) if taken.iter().any(|t| t == name) => {
                    return Err(Error::ContainerNameInUse(name.to_string()));
                }
                Some(name) => name.to_string(),
                None => generate_name(&id, &taken),
            };
            let state = ContainerState {
                id: id.clone(),
                name,
                image: image.map(|i| i.names.first().cloned().unwrap_or_else(|| i.id.to_string())),
                image_id: image.map(|i| i.id),
                command: Vec::new(),
                status: Status::Created,
                exit_code: None,
                oom_killed: false,
                error: None,
                created: time::now_rfc3339_nanos(),
                started: None,
                finished: None,
                pid: None,
                runner: None,
                pid_start: None,
                driver: None,
                mounted_at: None,
                config: serde_json::Value::Null,
            };
            let staged = Container {
                id: id.clone(),
                dir: staging.clone(),
                state,
                volatile,
            };
            staged.save()?;
            let dir = self.containers_dir().join(&id);
            if volatile {
                fs::rename(&staging, &dir)
                    .map_err(|e| Error::io("failed to rename into place", &dir, e))?;
            } else {
                rename_durable(&staging, &dir)?;
            }
            Ok(Container { dir, ..staged })
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Finds a container by full id, name, or unique id prefix.
    pub fn container(&self, reference: &str) -> Result<Container> {
        let all = self.containers()?;
        if let Some(found) = all
            .iter()
            .find(|c| c.id == reference || c.state.name == reference)
        {
            return Ok(found.clone());
        }
        let hits: Vec<&Container> = all
            .iter()
            .filter(|c| !reference.is_empty() && c.id.starts_with(reference))
            .collect();
        match hits.len() {
            0 => Err(Error::ContainerNotFound(reference.to_string())),
            1 => Ok(hits[0].clone()),
            count => Err(Error::AmbiguousContainer {
                reference: reference.to_string(),
                count,
            }),
        }
    }

    /// Every container, oldest first. A container whose state.json cannot be read is
    /// skipped with a warning (fsck reports it) so one damaged container blocks nothing.
    pub fn containers(&self) -> Result<Vec<Container>> {
        self.list_containers(false)
    }

    /// Like `containers`, but a damaged container is an error (gc must not guess).
    pub(crate) fn containers_strict(&self) -> Result<Vec<Container>> {
        self.list_containers(true)
    }

    fn list_containers(&self, strict: bool) -> Result<Vec<Container>> {
        let dir = self.containers_dir();
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("failed to list", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("failed to list", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                match Container::load(&entry.path()) {
                    Ok(container) => out.push(container),
                    // state.json is only ever replaced by rename: unreadable means a crash
                    // lost a volatile container's unsynced state. It is garbage: hand it to gc.
                    Err(_) if entry.path().join(VOLATILE_MARKER).exists() => {
                        let doomed = self.tmp_path("crashed-container");
                        match fs::rename(entry.path(), &doomed) {
                            Ok(()) => tracing::warn!(
                                "moved crashed volatile container {name} to {}",
                                doomed.display()
                            ),
                            Err(err) => {
                                tracing::warn!("skipping crashed volatile container {name}: {err}")
                            }
                        }
                    }
                    Err(err) if !strict => tracing::warn!("skipping container {name}: {err}"),
                    Err(err) => return Err(err),
                }
            }
        }
        out.sort_by(|a, b| {
            a.state
                .created
                .cmp(&b.state.created)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// Removes a container's directory. Refused while its rootfs is still a mount point.
    pub fn remove_container(&self, container: &Container) -> Result<()> {
        let mounts = [
            Some(container.rootfs_dir()),
            container.state.mounted_at.clone(),
        ];
        if let Some(path) = mounts
            .into_iter()
            .flatten()
            .find(|path| is_mount_point(path))
        {
            return Err(Error::ContainerMounted {
                id: container.id.clone(),
                path,
            });
        }
        // Rename out of containers/ first so a half-deleted container is never listed.
        let doomed = self.tmp_path("removed-container");
        if container.volatile {
            fs::rename(&container.dir, &doomed)
                .map_err(|e| Error::io("failed to rename into place", &doomed, e))?;
        } else {
            rename_durable(&container.dir, &doomed)?;
        }
        fs::remove_dir_all(&doomed).map_err(|e| Error::io("failed to remove", &doomed, e))
    }
}

/// True when `path` appears as a mount point in /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    info.lines().any(|line| {
        line.split(' ').nth(4).map(unescape_mountinfo).as_deref()
            == Some(path.as_os_str().to_str().unwrap_or(""))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// 64 hex characters from the kernel's random pool.
fn random_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("failed to read", "/dev/urandom", e))?;
    Ok(hex::encode(bytes))
}

/// A docker-style `adjective_noun` name derived from the id, unique among `taken`.
fn generate_name(id: &str, taken: &[String]) -> String {
    const ADJECTIVES: [&str; 16] = [
        "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "proud", "quirky", "silly", "tender", "witty",
    ];
    const NOUNS: [&str; 16] = [
        "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace",
        "noether", "pascal", "ritchie", "shannon", "tesla", "turing", "wozniak",
    ];
    let bytes = hex::decode(&id[..4]).unwrap_or_else(|_| vec![0, 0]);
    let base = format!(
        "{}_{}",
        ADJECTIVES[(bytes[0] & 15) as usize],
        NOUNS[(bytes[1] & 15) as usize]
    );
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}{n}");
        n += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_containers_are_marked_saved_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut container = store
            .create_volatile_container(None, Some("quick"))
            .unwrap();
        assert!(container.is_volatile());
        assert!(container.dir.join(VOLATILE_MARKER).is_file());
        container.state.status = Status::Running;
        container.save().unwrap();
        let left: Vec<_> = fs::read_dir(&container.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with(".state.json.tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let found = store.container("quick").unwrap();
        assert!(found.is_volatile());
        assert_eq!(found.state.status, Status::Running);
        let durable = store.create_container(None, Some("kept")).unwrap();
        assert!(!durable.is_volatile() && !durable.dir.join(VOLATILE_MARKER).exists());
        store.remove_container(&found).unwrap();
        assert!(matches!(
            store.container("quick"),
            Err(Error::ContainerNotFound(_))
        ));
    }

    #[test]
    fn crashed_volatile_container_goes_to_tmp_but_damaged_durable_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let volatile = store.create_volatile_container(None, Some("lost")).unwrap();
        let durable = store.create_container(None, Some("damaged")).unwrap();
        // What a crash can leave of an unsynced write: the name, but no data.
        fs::write(volatile.dir.join("state.json"), b"").unwrap();
        fs::write(durable.dir.join("state.json"), b"").unwrap();
        assert!(store.containers().unwrap().is_empty());
        assert!(
            !volatile.dir.exists(),
            "the crashed volatile container stayed in containers/"
        );
        let in_tmp = fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .filter_map(|e| e.ok());
        assert!(in_tmp.into_iter().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("crashed-container")
        }));
        // A durable container is never guessed away: gc refuses, fsck reports it.
        assert!(durable.dir.exists());
        assert!(store.containers_strict().is_err());
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
    }

    #[test]
    fn generated_names_do_not_collide() {
        let id = "00".repeat(32);
        let first = generate_name(&id, &[]);
        let second = generate_name(&id, std::slice::from_ref(&first));
        assert_ne!(first, second);
    }
}
