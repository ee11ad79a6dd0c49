//! `strata mount`: mounts raw branches (`--lower/--upper/--work`, like `mount -t overlay`),
//! or an image (a new container takes the writes) or a container, at DIR. The mount
//! outlives the command: overlay is a kernel mount, fuse a daemon that exits on umount.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_unionfs::{Driver, MountSpec};

use crate::cli::MountArgs;
use crate::commands::Globals;

pub fn run(globals: &Globals, args: MountArgs) -> anyhow::Result<ExitCode> {
    let driver: Driver = args.driver.parse()?;
    match (args.lower, args.args.as_slice()) {
        (Some(lower), [target]) => {
            let (Some(upper), Some(work)) = (args.upper, args.work) else {
                bail!("--lower needs --upper and --work");
            };
            let spec = MountSpec {
                lowers: lower
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect(),
                upper,
                work,
                target: PathBuf::from(target),
            };
            mount(&spec, driver)?;
            Ok(ExitCode::SUCCESS)
        }
        (Some(_), _) => bail!("with --lower give only the mount point"),
        (None, [reference, target]) => {
            mount_store(globals, reference, &PathBuf::from(target), driver)
        }
        (None, _) => bail!(
            "usage: strata mount [--driver D] IMAGE|CONTAINER DIR, or --lower DIR[:DIR...] --upper DIR --work DIR MNT"
        ),
    }
}

/// Sweeps a dead mount left at the target by a crash, then mounts.
pub(crate) fn mount(spec: &MountSpec, driver: Driver) -> anyhow::Result<Driver> {
    strata_unionfs::sweep_stale(&spec.target)?;
    strata_unionfs::mount_detached(spec, driver)
        .with_context(|| format!("failed to mount {}", spec.target.display()))
}

/// An image gets a new container whose upper takes the writes; a container is mounted
/// over its own upper. Prints the container id.
fn mount_store(
    globals: &Globals,
    reference: &str,
    target: &Path,
    driver: Driver,
) -> anyhow::Result<ExitCode> {
    let store = strata_store::Store::open(&globals.root)?;
    strata_unionfs::sweep_stale(&store.root().join("containers"))?;
    let mut container = match store.container(reference) {
        Ok(container) => container,
        Err(_) => {
            let image = store
                .resolve(reference)
                .with_context(|| format!("no container or image named {reference}"))?;
            store.create_container(Some(&image), None)?
        }
    };
    let image_id = container
        .state
        .image_id
        .with_context(|| format!("container {} has no image to mount", container.id))?;
    let image = store.resolve(&image_id.to_string())?;
    let lowers = store.layer_dirs(&image)?;
    if lowers.is_empty() {
        bail!("image {image_id} has no layers to mount");
    }
    let spec = MountSpec {
        lowers,
        upper: container.upper_dir(),
        work: container.work_dir(),
        target: target.to_path_buf(),
    };
    // The FUSE daemon must not inherit the store's lock: close the store first.
    drop(store);
    let used = mount(&spec, driver)?;
    container.state.driver = Some(used.to_string());
    container.state.mounted_at =
        Some(std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf()));
    container.save()?;
    println!("{}", container.id);
    Ok(ExitCode::SUCCESS)
}
