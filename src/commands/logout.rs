//! `strata logout REGISTRY`: removes the stored credentials for REGISTRY.

use std::process::ExitCode;

use anyhow::bail;
use strata_store::registry::auth;

use super::Globals;
use super::login::registry_host;
use crate::cli::LogoutArgs;

pub fn run(_globals: &Globals, args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(&args.registry);
    let file = auth::auth_file();
    if !auth::remove_in(&file, &registry)? {
        bail!(
            "not logged in to {registry} (no credentials in {})",
            file.display()
        );
    }
    eprintln!("Removed login credentials for {registry}");
    Ok(ExitCode::SUCCESS)
}
