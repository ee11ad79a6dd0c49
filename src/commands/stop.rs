//! `strata stop [-t SECS] CONTAINER...`: the container's stop signal (`run --stop-signal`,
//! else the image's STOPSIGNAL, else SIGTERM), then SIGKILL once the grace period is over; returns when the container's state says exited (its monitor or `strata run`
//! records the exit and unmounts).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use strata_store::{Container, Status, Store};

use crate::cli::StopArgs;
use crate::commands::Globals;
use crate::commands::kill::{parse_signal, signal};
use crate::commands::run::is_running;

/// Waits up to `limit` for the container to be recorded as exited (or vanish, for --rm).
pub fn wait_exited(store: &Store, id: &str, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match store.container(id) {
            Ok(c) if c.state.status != Status::Running => return true,
            // The process is gone but nobody recorded it (its `strata run` was killed; one
            // still alive is still recording it).
            Ok(c)
                if !is_running(&c)
                    && !c.state.runner.is_some_and(crate::commands::run::alive)
                    && start.elapsed() > Duration::from_secs(2) =>
            {
                return true;
            }
            Err(_) => return true,
            _ => {}
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn stop(store: &Store, container: &Container, grace: Duration) -> anyhow::Result<()> {
    if !is_running(container) {
        return Ok(());
    }
    let first = container
        .state
        .config
        .get("stop_signal")
        .and_then(serde_json::Value::as_str)
        .and_then(|name| parse_signal(name).ok())
        .unwrap_or(libc::SIGTERM);
    signal(container, first)?;
    if !wait_exited(store, &container.id, grace) {
        let _ = signal(container, libc::SIGKILL);
        if !wait_exited(store, &container.id, Duration::from_secs(10)) {
            anyhow::bail!("container {} did not stop", container.state.name);
        }
    }
    Ok(())
}

pub fn run(globals: &Globals, args: StopArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    Ok(crate::commands::for_each_arg(
        &args.containers,
        |reference| {
            let container = store.container(reference)?;
            stop(&store, &container, Duration::from_secs(args.time))?;
            println!("{reference}");
            Ok(())
        },
    ))
}
