//! `strata umount DIR`: unmounts a union made by `strata mount` (either driver); the FUSE
//! daemon serving it exits by itself once the kernel drops the connection.

use std::process::ExitCode;

use crate::cli::UmountArgs;
use crate::commands::Globals;

pub fn run(globals: &Globals, args: UmountArgs) -> anyhow::Result<ExitCode> {
    let dir = std::fs::canonicalize(&args.dir).unwrap_or_else(|_| args.dir.clone());
    // Only a union: a tmpfs, a disk or /proc at DIR is none of strata's business.
    match strata_unionfs::mount_type(&dir)?.as_deref() {
        Some("fuse.strata" | "overlay") => {}
        Some(other) => anyhow::bail!(
            "failed to unmount {}: a {other} mount, not a union (umount(8) unmounts anything)",
            dir.display()
        ),
        None => anyhow::bail!(
            "failed to unmount {}: nothing is mounted there",
            dir.display()
        ),
    }
    strata_unionfs::unmount(&dir)?;
    // A container mounted by `strata mount IMAGE|CONTAINER` no longer is.
    if globals.root.join("containers").is_dir() {
        let store = strata_store::Store::open(&globals.root)?;
        for mut container in store.containers()? {
            if container.state.mounted_at.as_deref() == Some(dir.as_path()) {
                container.state.mounted_at = None;
                container.save()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
