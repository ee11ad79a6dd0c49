//! `strata wait CONTAINER...`: blocks until each container has exited and prints its exit
//! code, as `docker wait` does (a CI script's way to wait for a `run -d`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use strata_store::{Status, Store};

use crate::cli::WaitArgs;
use crate::commands::Globals;
use crate::commands::run::is_running;

pub fn run(globals: &Globals, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    Ok(crate::commands::for_each_arg(&args.containers, |reference| {
        let id = store.container(reference)?.id;
        println!("{}", wait_for_exit(&store, &id, reference)?);
        Ok(())
    }))
}

/// The exit code of container `id` once it has exited (a created one is waited for to
/// run and exit too); read from the state seen exited, which a `start` may reset.
fn wait_for_exit(store: &Store, id: &str, reference: &str) -> anyhow::Result<i32> {
    let mut vanished: Option<Instant> = None;
    loop {
        let Ok(container) = store.container(id) else {
            bail!("container {reference} was removed before its exit code could be read");
        };
        match (container.state.status, container.state.exit_code) {
            (Status::Exited, Some(code)) => return Ok(code),
            (Status::Running, _) if !is_running(&container) => {
                // Its `strata run` was killed: nobody records the exit (after a moment
                // to let a runner that is just ending write it).
                let since = *vanished.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    bail!("container {reference} ended with no exit code recorded");
                }
            }
            _ => vanished = None,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
