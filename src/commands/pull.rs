//! `strata pull REF`: a registry image (or `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`)
//! into the store, for `--platform` (default linux/amd64) when REF is an index. Prints
//! the image id. A signal ending it removes the blobs it was downloading.

use std::process::ExitCode;

use strata_store::Store;
use strata_store::transfer::{self, Platform, TransferOptions};

use super::Globals;
use super::transfer::{Reporter, client_options};
use crate::cli::PullArgs;

pub fn run(globals: &Globals, args: PullArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    // ^C or a CI job's SIGTERM takes the partial blobs with it (QA 17b #11).
    let _staged = crate::interrupt::staged_files_removed_on_signal(&store.tmp_dir());
    let reporter = Reporter::new(args.quiet);
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::default(),
    };
    let opts = TransferOptions {
        client: client_options(args.insecure),
        platform,
        jobs: args.jobs.max(1),
        progress: &reporter,
        ..TransferOptions::default()
    };
    let image = transfer::pull(&store, &args.reference, &opts)?;
    if !args.quiet {
        // what was asked for (the image may have other names already)
        eprintln!("pulled {}", args.reference);
    }
    println!("{}", image.id);
    Ok(ExitCode::SUCCESS)
}
