//! `strata kill [-s SIG] CONTAINER...`: signals a running container's pid 1 (default KILL).

use std::process::ExitCode;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use strata_store::{Container, Store};

use crate::cli::KillArgs;
use crate::commands::Globals;
use crate::commands::run::is_running;

/// "KILL", "SIGKILL", "kill" or "9".
pub fn parse_signal(text: &str) -> anyhow::Result<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).with_context(|| format!("unknown signal {text}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().with_context(|| format!("unknown signal {text}"))
}

/// Sends `signal` to the container's pid 1; an error when it is not running.
pub fn signal(container: &Container, signal: Signal) -> anyhow::Result<()> {
    let pid = match container.state.pid {
        Some(pid) if is_running(container) => pid,
        _ => bail!("container {} is not running", container.state.name),
    };
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
        .with_context(|| format!("failed to send {signal} to container {}", container.state.name))
}

pub fn run(globals: &Globals, args: KillArgs) -> anyhow::Result<ExitCode> {
    let sig = parse_signal(&args.signal)?;
    let store = Store::open(&globals.root)?;
    Ok(crate::commands::for_each_arg(&args.containers, |reference| {
        let container = store.container(reference)?;
        signal(&container, sig)?;
        println!("{reference}");
        Ok(())
    }))
}
