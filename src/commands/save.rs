//! `strata save IMAGE... -o FILE`: an OCI archive with a docker-archive manifest.json.

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use crate::cli::SaveArgs;

pub fn run(globals: &Globals, args: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    strata_store::archive::save(&store, &args.images, &args.output)?;
    Ok(ExitCode::SUCCESS)
}
