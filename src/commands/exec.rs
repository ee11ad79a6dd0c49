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
    if args.detach {
        return detach(globals, args, &container.state.name);
    }
    let config = RunConfig::of(&container)?;
    require_terminal(&args.process)?;
    // Without -i the command reads nothing, as with docker exec.
    let stdin = stdin_for(args.process.interactive)?;
    let capabilities = config.capabilities()?;
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
        // a privileged container's processes run without a filter, as it does
        seccomp_unconfined: config.seccomp_unconfined || config.privileged,
        seccomp_profile: config.seccomp_profile.clone(),
        capabilities: Some(capabilities),
        privileged: args.privileged,
        stdin,
        stdout: None,
        stderr: None,
        signal_group: args.signal_group,
    };
    Ok(strata_runtime::exec(spec)?)
}

/// `exec -d`: the same exec, by a strata of its own in a process group of its own, with no
/// terminal and its output dropped, as docker's detached exec; this one returns at once.
fn detach(globals: &Globals, args: &ExecArgs, name: &str) -> anyhow::Result<i32> {
    if args.process.tty || args.process.interactive {
        bail!("exec -d takes neither -i nor -t: nothing would be attached to them");
    }
    let mut command = std::process::Command::new(
        std::env::current_exe().context("cannot find the strata executable")?,
    );
    command.arg("--root").arg(&globals.root).arg("exec");
    for env in &args.process.env {
        command.arg("-e").arg(env);
    }
    for file in &args.process.env_file {
        command.arg("--env-file").arg(file);
    }
    if let Some(dir) = &args.process.workdir {
        command.arg("-w").arg(dir);
    }
    if let Some(user) = &args.process.user {
        command.arg("-u").arg(user);
    }
    if args.privileged {
        command.arg("--privileged");
    }
    command.arg(name).args(&args.container_and_command[1..]);
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // its own session: a ^C or a hangup of this terminal is not for it
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
        .spawn()
        .with_context(|| format!("cannot start the detached exec in {name}"))?;
    Ok(0)
}
