//! `strata start [-a] CONTAINER...`: runs an exited container's command again with the
//! options it was made with, on its upper and volumes as they were, as `docker start`
//! does: in the background, or attached with `-a` (then the exit code is the command's).

use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_store::{Status, Store};

use crate::cli::StartArgs;
use crate::commands::Globals;
use crate::commands::run::{RunConfig, detach, is_running, start, stdin_for};

pub fn run(globals: &Globals, args: StartArgs) -> anyhow::Result<ExitCode> {
    if args.attach {
        let [reference] = args.containers.as_slice() else {
            bail!("start -a takes one container");
        };
        return Ok(match start_one(globals, reference, true) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(err) => {
                crate::report::print_error(&err);
                ExitCode::from(125)
            }
        });
    }
    Ok(crate::commands::for_each_arg(
        &args.containers,
        |reference| {
            start_one(globals, reference, false)?;
            println!("{reference}");
            Ok(())
        },
    ))
}

/// A running container: detached, its start is done and changes nothing, as docker's
/// (`Some(0)`); attached, an error. None when it is not running.
fn if_running(container: &strata_store::Container, attach: bool) -> anyhow::Result<Option<i32>> {
    if !is_running(container) {
        return Ok(None);
    }
    if attach {
        bail!(
            "container {} is already running (strata logs -f {} follows it)",
            container.state.name,
            container.state.name
        );
    }
    Ok(Some(0))
}

/// Starts one container; attached, returns the command's exit code.
pub(crate) fn start_one(globals: &Globals, reference: &str, attach: bool) -> anyhow::Result<i32> {
    let store = Store::open(&globals.root)?;
    let mut container = store.container(reference)?;
    if let Some(done) = if_running(&container, attach)? {
        return Ok(done);
    }
    let config = RunConfig::of(&container)?;
    // before the state is reset: a refused start leaves the last exit as it was
    super::mount::refuse_if_mounted(&container)?;
    let image_id = container
        .state
        .image_id
        .with_context(|| format!("container {} has no image", container.id))?;
    let lowers = store.layer_dirs(&store.resolve(&image_id.to_string())?)?;
    // The check and the reset under the container's mount lock, with its state as it is
    // now: a `start` that got there first may have it running by now, and a reset would
    // hide that from the union's next check.
    let (lock, current) = super::mount::MountLock::take(&container)?;
    container = current;
    if let Some(done) = if_running(&container, attach)? {
        return Ok(done);
    }
    super::mount::refuse_if_mounted(&container)?;
    // A fresh state to start from: `detach` waits for this one to become running.
    container.state.status = Status::Created;
    container.state.exit_code = None;
    container.state.pid = None;
    container.save()?;
    drop(lock);
    drop(store);
    if !attach {
        detach(globals, &container, false)?;
        return Ok(0);
    }
    let stdin = stdin_for(config.interactive)?;
    start(globals, container, &config, lowers, stdin)
}
