//! `strata logs CONTAINER`: what a detached container wrote (stdout and stderr, in order).

use std::process::ExitCode;

use anyhow::Context;
use strata_store::Store;

use crate::cli::LogsArgs;
use crate::commands::Globals;

pub fn run(globals: &Globals, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let container = Store::open(&globals.root)?.container(&args.container)?;
    let path = container.log_path();
    match std::fs::File::open(&path) {
        Ok(mut file) => {
            std::io::copy(&mut file, &mut std::io::stdout().lock())
                .with_context(|| format!("failed to read {}", path.display()))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {} // never detached: no log
        Err(err) => return Err(err).with_context(|| format!("failed to open {}", path.display())),
    }
    Ok(ExitCode::SUCCESS)
}
