//! `strata save IMAGE... [-o FILE]`: an OCI archive with a docker-archive manifest.json,
//! into FILE, or onto standard output as `docker save` writes it there.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_store::Store;

use super::Globals;
use crate::cli::SaveArgs;

pub fn run(globals: &Globals, args: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    match args.output.as_deref() {
        Some(path) if path != Path::new("-") => {
            strata_store::archive::save(&store, &args.images, path)?
        }
        _ => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!(
                    "refusing to write an archive to a terminal: give -o FILE or redirect the output"
                );
            }
            let fd = stdout
                .as_fd()
                .try_clone_to_owned()
                .context("failed to duplicate stdout")?;
            let mut file = std::fs::File::from(fd);
            strata_store::archive::save_into(&store, &args.images, &mut file, Path::new("stdout"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
