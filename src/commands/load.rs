//! `strata load [-i FILE]`: an OCI or docker archive into the store, from FILE or from
//! standard input; prints what it loaded.

use std::path::Path;
use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use crate::cli::LoadArgs;

pub fn run(globals: &Globals, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let images = match args.input.as_deref() {
        Some(path) if path != Path::new("-") => strata_store::archive::load(&store, path)?,
        _ => strata_store::archive::load_from(&store, std::io::stdin().lock(), Path::new("stdin"))?,
    };
    for image in images {
        match image.names.is_empty() {
            true => println!("Loaded image: {}", image.id),
            false => println!(
                "Loaded image: {} ({})",
                image.names.join(", "),
                image.id.short()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
