//! `strata rm [-f] CONTAINER...`: removes exited containers (with -f, kills running ones
//! first), their union mount if a crash left one, their cgroup and their directory.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use strata_store::Store;

use crate::cli::RmArgs;
use crate::commands::Globals;
use crate::commands::run::{cgroup_name, is_running};
use crate::commands::stop::wait_exited;

pub fn run(globals: &Globals, args: RmArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    Ok(crate::commands::for_each_arg(
        &args.containers,
        |reference| {
            let container = store.container(reference)?;
            if is_running(&container) {
                if !args.force {
                    bail!(
                        "container {} is running: stop it first or use rm -f",
                        container.state.name
                    );
                }
                crate::commands::kill::signal(&container, libc::SIGKILL)?;
                wait_exited(&store, &container.id, Duration::from_secs(10));
            }
            let Ok(container) = store.container(&container.id) else {
                println!("{reference}"); // removed by its own --rm meanwhile
                return Ok(());
            };
            let rootfs = container.rootfs_dir();
            // A FUSE mount whose server died with a crashed strata answers ENOTCONN to
            // everything, and would make the container impossible to remove: detach it first.
            strata_unionfs::sweep_stale(&rootfs)?;
            // likewise where `strata mount` put it, if its daemon died there
            if let Some(at) = &container.state.mounted_at {
                strata_unionfs::sweep_stale(at)?;
            }
            if strata_store::container::is_mount_point(&rootfs) {
                strata_unionfs::unmount(&rootfs)
                    .with_context(|| format!("failed to unmount {}", rootfs.display()))?;
            }
            // A place `strata mount` used, unmounted by a plain umount since, may hold
            // another mount now: not this container's, so no reason to refuse.
            let mut container = container;
            if let Some(at) = container
                .state
                .mounted_at
                .clone()
                .filter(|at| *at != rootfs)
                && crate::commands::mount::user_mount(&container)?.is_none()
                && (strata_unionfs::mount_type(&at)?.is_none()
                    || strata_unionfs::union_upper(&at)?.is_some())
            {
                // nothing mounted there now, or another container's union: the record is
                // stale (anything else mounted there keeps the store's refusal)
                container.state.mounted_at = None;
                container.save()?;
            }
            strata_runtime::remove_cgroup(&cgroup_name(&container.id))?;
            store.remove_container(&container)?;
            println!("{reference}");
            Ok(())
        },
    ))
}
