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
    // docker's lines: one per name loaded, and the id of an image loaded without one (the
    // store answers once per archive entry, with the image's names so far).
    let mut shown = std::collections::BTreeSet::new();
    for image in images {
        if image.names.is_empty() {
            if shown.insert(image.id.to_string()) {
                println!("Loaded image ID: {}", image.id);
            }
            continue;
        }
        for name in &image.names {
            if shown.insert(name.clone()) {
                println!("Loaded image: {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
