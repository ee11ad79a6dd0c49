//! `strata wait CONTAINER...`: blocks until each container has exited and prints its exit
//! code, as `docker wait` does (a CI script's way to wait for a `run -d`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use strata_store::{Status, Store};

use crate::cli::WaitArgs;
use crate::commands::Globals;
use crate::commands::run::{WAIT_LOCK, alive, is_running};

pub fn run(globals: &Globals, args: WaitArgs) -> anyhow::Result<ExitCode> {
    Ok(crate::commands::for_each_arg(
        &args.containers,
        |reference| {
            let container = Store::open(&globals.root)?.container(reference)?;
            // Held until the exit code is read: a --rm container's runner waits for it before
            // removing the container (and its recorded exit).
            let waiting = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(container.dir.join(WAIT_LOCK))
                .and_then(|file| file.lock_shared().map(|()| file));
            let code = match waiting {
                Ok(_held) => wait_for_exit(globals, &container.id, reference)?,
                Err(_) => {
                    bail!("container {reference} was removed before its exit code could be read")
                }
            };
            println!("{code}");
            Ok(())
        },
    ))
}

/// The exit code of container `id` once it is not running, as docker's default condition
/// (a container never started gives 0); read from the state seen so, which a `start` may
/// reset. The store is opened for each look, so a long wait does not hold `gc` back.
fn wait_for_exit(globals: &Globals, id: &str, reference: &str) -> anyhow::Result<i32> {
    let mut vanished: Option<Instant> = None;
    loop {
        let Ok(container) = Store::open(&globals.root)?.container(id) else {
            bail!("container {reference} was removed before its exit code could be read");
        };
        let state = &container.state;
        match (state.status, state.exit_code) {
            (Status::Exited, Some(code)) => return Ok(code),
            (Status::Created, code) => return Ok(code.unwrap_or(0)),
            (Status::Running, _) if !is_running(&container) && !state.runner.is_some_and(alive) => {
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
