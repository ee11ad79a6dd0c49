//! `strata load -i FILE`: an OCI or docker archive into the store; prints what it loaded.

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use crate::cli::LoadArgs;

pub fn run(globals: &Globals, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    for image in strata_store::archive::load(&store, &args.input)? {
        match image.names.is_empty() {
            true => println!("Loaded image: {}", image.id),
            false => println!("Loaded image: {} ({})", image.names.join(", "), image.id.short()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
