//! `strata exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] CONTAINER COMMAND [ARG...]`: one more
//! process in a running container, in its namespaces and cgroup, with its environment,
//! user and working directory unless told otherwise, as `docker exec` runs it. The exit
//! code is the command's (126/127 when it cannot be executed, 125 when strata fails).

use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_store::Store;

use crate::cli::ExecArgs;
use crate::commands::Globals;
use crate::commands::run::{
    RunConfig, cgroup_name, is_running, merge_env, require_terminal, stdin_for,
};

pub fn run(globals: &Globals, args: ExecArgs) -> anyhow::Result<ExitCode> {
    match start(globals, &args) {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(err) => {
            crate::report::print_error(&err);
            Ok(ExitCode::from(125))
        }
    }
}

fn start(globals: &Globals, args: &ExecArgs) -> anyhow::Result<i32> {
    let (reference, command) = args
        .container_and_command
        .split_first()
        .context("no container given")?;
    let container = Store::open(&globals.root)?.container(reference)?;
    let (Some(pid), true) = (container.state.pid, is_running(&container)) else {
        bail!("container {} is not running", container.state.name);
    };
    let config = RunConfig::of(&container)?;
    require_terminal(&args.process)?;
    // Without -i the command reads nothing, as with docker exec.
    let stdin = stdin_for(args.process.interactive)?;
    let spec = strata_runtime::ExecSpec {
        pid,
        args: command.to_vec(),
        env: merge_env(&config.env, &super::run::env_args(&args.process)?),
        cwd: args.process.workdir.clone().unwrap_or(config.cwd),
        user: args.process.user.clone().unwrap_or(config.user),
        hostname: Some(config.hostname),
        cgroup_name: cgroup_name(&container.id),
        tty: args.process.tty,
        interactive: args.process.interactive,
        no_new_privileges: config.no_new_privileges,
        stdin,
        stdout: None,
        stderr: None,
        signal_group: args.signal_group,
    };
    Ok(strata_runtime::exec(spec)?)
}
