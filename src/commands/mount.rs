//! `strata mount`: mounts raw branches (`--lower/--upper/--work`, like `mount -t overlay`),
//! or an image (a new container takes the writes) or a container, at DIR. The mount
//! outlives the command: overlay is a kernel mount, fuse a daemon that exits on umount.
//! With `--foreground` the command itself serves the FUSE mount until it is unmounted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_unionfs::{Driver, MountSpec};

use crate::cli::MountArgs;
use crate::commands::Globals;

pub fn run(globals: &Globals, args: MountArgs) -> anyhow::Result<ExitCode> {
    let driver: Driver = args.driver.parse()?;
    let how = if args.foreground {
        if driver.resolve() == Driver::Overlay {
            bail!("--foreground serves a FUSE mount; the overlay driver has no server");
        }
        How::Foreground
    } else {
        How::Detached(driver)
    };
    match (args.lower, args.args.as_slice()) {
        (Some(lower), [target]) => {
            let (Some(upper), Some(work)) = (args.upper, args.work) else {
                bail!("--lower needs --upper and --work");
            };
            let id_shift = args.id_shift.as_deref().map(parse_id_shift).transpose()?;
            let spec = MountSpec {
                lowers: lower
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect(),
                upper,
                work,
                target: PathBuf::from(target),
                aufs_markers: false,
                flags: Default::default(),
                id_shift,
            };
            mount(
                &spec,
                how,
                |_| if args.ready { say_ready() } else { Ok(()) },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(_), _) => bail!("with --lower give only the mount point"),
        (None, [reference, target]) => mount_store(globals, reference, &PathBuf::from(target), how),
        (None, _) => bail!(
            "usage: strata mount [--driver D] IMAGE|CONTAINER DIR, or --lower DIR[:DIR...] --upper DIR --work DIR MNT"
        ),
    }
}

/// `--id-shift START:SIZE`.
pub(crate) fn parse_id_shift(text: &str) -> anyhow::Result<strata_unionfs::IdShift> {
    let parsed = text
        .split_once(':')
        .and_then(|(start, size)| Some((start.parse().ok()?, size.parse().ok()?)));
    let Some((host_start, size)) = parsed else {
        bail!("--id-shift {text:?}: expected START:SIZE");
    };
    Ok(strata_unionfs::IdShift { host_start, size })
}

/// `--ready`: tells the waiting process that the mount is live, then gives stdout up (to
/// /dev/null), so that nothing later writes into its pipe.
fn say_ready() -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(b"ready\n")?;
    stdout.flush()?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    Ok(())
}

/// How `strata mount` keeps the mount: detached (a kernel mount, or a FUSE daemon), or
/// served by this process until it is unmounted.
#[derive(Clone, Copy)]
pub(crate) enum How {
    Detached(Driver),
    Foreground,
}

/// Sweeps a dead mount left at the target by a crash, then mounts; `mounted` runs once
/// the mount is live. In the foreground this returns when the mount is gone.
pub(crate) fn mount(
    spec: &MountSpec,
    how: How,
    mounted: impl FnOnce(Driver) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    strata_unionfs::sweep_stale(&spec.target)?;
    // A union stacked on a union hides the first, whose writes then go nowhere visible.
    let target = std::fs::canonicalize(&spec.target).unwrap_or_else(|_| spec.target.clone());
    if let Some(fstype) = strata_unionfs::mount_type(&target)?
        && (fstype == "overlay" || fstype.starts_with("fuse"))
    {
        bail!(
            "{} is already a union mount ({fstype}); unmount it first (strata umount {0})",
            target.display()
        );
    }
    let context = || format!("failed to mount {}", spec.target.display());
    match how {
        How::Detached(driver) => {
            let used = strata_unionfs::mount_detached(spec, driver).with_context(context)?;
            // Not recorded, it would be a union nobody knows of (and the next mount of the
            // container would stack a second one over the upper): it goes.
            mounted(used).inspect_err(|_| {
                if let Err(err) = strata_unionfs::unmount(&spec.target) {
                    eprintln!("warning: {err}");
                }
            })
        }
        How::Foreground => strata_unionfs::serve_foreground(spec, || {
            mounted(Driver::Fuse).map_err(|e| format!("{e:#}"))
        })
        .with_context(context),
    }
}

/// An image gets a new container whose upper takes the writes; a container is mounted
/// over its own upper. Prints the container id.
fn mount_store(
    globals: &Globals,
    reference: &str,
    target: &Path,
    how: How,
) -> anyhow::Result<ExitCode> {
    let store = strata_store::Store::open(&globals.root)?;
    strata_unionfs::sweep_stale(&store.root().join("containers"))?;
    let (container, created) = match store.container(reference) {
        Ok(container) => (container, false),
        Err(_) => {
            let image = store
                .resolve(reference)
                .with_context(|| format!("no container or image named {reference}"))?;
            let mut container = store.create_container(Some(&image), None)?;
            container.state.image = Some(crate::commands::run::image_label(&image, reference));
            (container, true)
        }
    };
    let id = container.id.clone();
    let mut live = false;
    let result = mount_container(store, container, target, how, &mut live);
    // A container made for this mount that never got mounted holds nothing: not kept.
    if result.is_err()
        && created
        && !live
        && let Ok(store) = strata_store::Store::open(&globals.root)
        && let Ok(container) = store.container(&id)
    {
        let _ = store.remove_container(&container);
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Where `strata mount` has the container mounted now, if it has: the union at the
/// recorded place must still be one over this container's upper. After a plain `umount`
/// the record stays, and another mount there (another container's) must not pass for it.
pub(crate) fn user_mount(container: &strata_store::Container) -> anyhow::Result<Option<PathBuf>> {
    let Some(at) = container
        .state
        .mounted_at
        .as_ref()
        .filter(|at| **at != container.rootfs_dir())
    else {
        return Ok(None);
    };
    let Some(upper) = strata_unionfs::union_upper(at)? else {
        return Ok(None);
    };
    // A FUSE mount made by strata before its source named the upper dir: as trusted
    // as the record was then.
    if upper.as_os_str() == "strata" {
        return Ok(Some(at.clone()));
    }
    let ours = container.upper_dir();
    let same = upper == ours
        || matches!(
            (std::fs::canonicalize(&upper), std::fs::canonicalize(&ours)),
            (Ok(a), Ok(b)) if a == b
        );
    Ok(same.then(|| at.clone()))
}

/// Held while a container's upper gets a union (`strata mount`, `start`, `run`): from the
/// check that nobody else has mounted it until that mount shows (recorded, or the rootfs a
/// mount point), so two of them cannot both pass the check. A POSIX record lock on
/// `mount.lock` in the container's directory: per process, so the FUSE daemon `strata
/// mount` forks does not take it along, and it goes when the process does.
pub(crate) struct MountLock {
    _file: std::fs::File,
}

impl MountLock {
    /// Waits for the lock; gives the container as its state now says.
    pub(crate) fn take(
        container: &strata_store::Container,
    ) -> anyhow::Result<(MountLock, strata_store::Container)> {
        let path = container.dir.join("mount.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        let busy = matches!(
            nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLK(&lock)),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES)
        );
        if busy {
            eprintln!(
                "waiting for another strata process (mount, start or cp) with container {}...",
                container.state.name
            );
        }
        loop {
            match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLKW(&lock)) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("failed to lock {}", path.display()));
                }
            }
        }
        Ok((MountLock { _file: file }, container.reread()?))
    }
}

/// Fails while `strata mount` has the container mounted: two unions over one upper would
/// each cache what the other changes under it, and the container's end would forget the
/// user's mount (and `rm` then delete its upper under it).
pub(crate) fn refuse_if_mounted(container: &strata_store::Container) -> anyhow::Result<()> {
    if let Some(at) = user_mount(container)? {
        bail!(
            "container {} is mounted at {}; unmount it first (strata umount {})",
            container.id,
            at.display(),
            at.display()
        );
    }
    Ok(())
}

/// Mounts `container` (its image's layers under its upper) at `target`; `live` is set
/// once the mount is up.
fn mount_container(
    store: strata_store::Store,
    mut container: strata_store::Container,
    target: &Path,
    how: How,
    live: &mut bool,
) -> anyhow::Result<()> {
    let image_id = container
        .state
        .image_id
        .with_context(|| format!("container {} has no image to mount", container.id))?;
    let (lock, current) = MountLock::take(&container)?;
    // as it is now (an exit recorded while this waited stays recorded)
    container = current;
    let current = &container;
    // (a `start` that has mounted the rootfs but not yet recorded the container running)
    if super::run::is_running(current)
        || strata_store::container::is_mount_point(&current.rootfs_dir())
    {
        bail!(
            "container {} is running: its file system is at {}",
            container.id,
            container.rootfs_dir().display()
        );
    }
    refuse_if_mounted(current)?;
    let image = store.resolve(&image_id.to_string())?;
    let mut lowers = store.layer_dirs(&image)?;
    if lowers.is_empty() {
        bail!("image {image_id} has no layers to mount");
    }
    // A container that has run has an init layer (the mount points of its /etc files):
    // on top, as `run` and `cp` mount it, so every view of the container is the same.
    let init = container.dir.join("init");
    if init.is_dir() {
        lowers.insert(0, init);
    }
    let spec = MountSpec {
        lowers,
        upper: container.upper_dir(),
        work: container.work_dir(),
        target: target.to_path_buf(),
        aufs_markers: false,
        flags: Default::default(),
        id_shift: None,
    };
    // The FUSE daemon must not inherit the store's lock: close the store first.
    drop(store);
    mount(&spec, how, |used| {
        *live = true;
        container.state.driver = Some(used.to_string());
        container.state.mounted_at =
            Some(std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf()));
        container.save()?;
        // recorded: a `start` that was waiting now sees it (a foreground server keeps
        // running from here, without holding it)
        drop(lock);
        println!("{}", container.id);
        Ok(())
    })
}
