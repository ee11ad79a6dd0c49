//! `strata gc`: frees unreferenced blobs, unpacked layers and tmp files, and says how much.

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use super::images::human_size;
use crate::cli::GcArgs;

pub fn run(globals: &Globals, args: GcArgs) -> anyhow::Result<ExitCode> {
    // Exclusive from the start: waits until no other strata process uses the store.
    let store = match Store::try_open_exclusive(&globals.root)? {
        Some(store) => store,
        None => {
            eprintln!("waiting for other strata processes using {} to finish...", globals.root.display());
            Store::open_exclusive(&globals.root)?
        }
    };
    // A stale FUSE mount (its daemon crashed) would keep gc from removing what is below it.
    strata_unionfs::sweep_stale(store.root())?;
    crate::commands::run::sweep_abandoned(&store);
    let report = store.gc()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "freed {}: {} blobs, {} unpacked layers, {} tmp entries",
            human_size(report.freed_bytes),
            report.blobs,
            report.layers,
            report.tmp
        );
    }
    Ok(ExitCode::SUCCESS)
}
