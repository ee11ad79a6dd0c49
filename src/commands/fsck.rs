//! `strata fsck [--repair]`: re-hashes every blob and checks every reference; prints each
//! problem and exits 1 when there is any. `--repair` first removes corrupt blobs and
//! rebuilds a missing index.json.

use std::process::ExitCode;

use strata_store::Store;

use super::Globals;
use crate::cli::FsckArgs;

pub fn run(globals: &Globals, args: FsckArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let repair = if args.repair {
        Some(store.repair()?)
    } else {
        None
    };
    if let Some(repair) = repair.as_ref().filter(|_| !args.json) {
        for digest in &repair.removed {
            println!("removed corrupt blob {digest}");
        }
        if let Some(aside) = &repair.damaged_index {
            println!("moved the damaged index.json to {}", aside.display());
        }
        if let Some(count) = repair.reindexed {
            println!(
                "rebuilt index.json: {count} image(s), unnamed (strata tag ID NAME names one again)"
            );
        }
    }
    let problems = store.fsck()?;
    if args.json {
        let out = match &repair {
            Some(repair) => serde_json::json!({"repair": repair, "problems": problems}),
            None => serde_json::to_value(&problems)?,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
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
