//! `strata push IMAGE [REF]`: an image of the store (or `oci:DIR[:TAG]`,
//! `oci-archive:FILE[:TAG]`) to a registry, an OCI layout or an OCI archive. Prints the
//! manifest digest.

use std::process::ExitCode;

use strata_store::Store;
use strata_store::transfer::{self, TransferOptions};

use super::Globals;
use super::transfer::{Reporter, client_options};
use crate::cli::PushArgs;

pub fn run(globals: &Globals, args: PushArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let reporter = Reporter::new(args.quiet);
    let opts = TransferOptions {
        client: client_options(args.insecure),
        jobs: args.jobs.max(1),
        progress: &reporter,
        compression: args.compression_format,
        ..TransferOptions::default()
    };
    let dest = args.destination.as_deref().unwrap_or(&args.image);
    let digest = transfer::push(&store, &args.image, Some(dest), &opts)?;
    if !args.quiet {
        eprintln!("pushed {} to {dest}", args.image);
    }
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}
