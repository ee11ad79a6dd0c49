//! `strata fsck`: re-hashes every blob and checks every reference; prints each problem
//! and exits 1 when there is any.

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use crate::cli::FsckArgs;

pub fn run(globals: &Globals, args: FsckArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let problems = store.fsck()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&problems)?);
    } else {
        for problem in &problems {
            println!("{problem}");
        }
    }
    if problems.is_empty() {
        if !args.json {
            println!("ok: {} is consistent", store.root().display());
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} problem(s) found in {}",
            problems.len(),
            store.root().display()
        );
        Ok(ExitCode::from(1))
    }
}
