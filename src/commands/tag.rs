//! `strata tag SRC DST`: gives the image SRC the name DST (moving DST if it was taken).

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use crate::cli::TagArgs;

pub fn run(globals: &Globals, args: TagArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let image = store.resolve(&args.source)?;
    store.tag(&image, &args.target)?;
    Ok(ExitCode::SUCCESS)
}
