//! `strata restart [-t SECS] CONTAINER...`: `stop`, then `start` in the background, as
//! `docker restart` does (a container that is not running is just started).

use std::process::ExitCode;
use std::time::Duration;

use strata_store::Store;

use crate::cli::StopArgs;
use crate::commands::Globals;
use crate::commands::start::start_one;
use crate::commands::stop::stop;

pub fn run(globals: &Globals, args: StopArgs) -> anyhow::Result<ExitCode> {
    Ok(crate::commands::for_each_arg(
        &args.containers,
        |reference| {
            let store = Store::open(&globals.root)?;
            let container = store.container(reference)?;
            stop(&store, &container, Duration::from_secs(args.time))?;
            drop(store);
            start_one(globals, reference, false)?;
            println!("{reference}");
            Ok(())
        },
    ))
}
