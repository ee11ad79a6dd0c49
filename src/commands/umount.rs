//! `strata umount DIR`: unmounts a union made by `strata mount` (either driver); the FUSE
//! daemon serving it exits by itself once the kernel drops the connection.

use std::process::ExitCode;

use crate::cli::UmountArgs;
use crate::commands::Globals;

pub fn run(_globals: &Globals, args: UmountArgs) -> anyhow::Result<ExitCode> {
    strata_unionfs::unmount(&args.dir)?;
    Ok(ExitCode::SUCCESS)
}
