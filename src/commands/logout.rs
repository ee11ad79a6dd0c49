//! `strata logout REGISTRY`: removes the stored credentials for REGISTRY, from its
//! credential helper (`erase`) and from the credentials file.

use std::process::ExitCode;

use anyhow::bail;
use strata_store::registry::auth;

use super::Globals;
use super::login::registry_host;
use crate::cli::LogoutArgs;

pub fn run(_globals: &Globals, args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(&args.registry);
    let config = auth::Config::from_env();
    if !config.erase(&registry)? {
        bail!(
            "not logged in to {registry} (no credentials in {})",
            config.file.display()
        );
    }
    eprintln!("Removed login credentials for {registry}");
    Ok(ExitCode::SUCCESS)
}
