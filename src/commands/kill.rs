//! `strata kill [-s SIG] CONTAINER...`: signals a running container's pid 1 (default KILL).

use std::process::ExitCode;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use strata_store::{Container, Store};

use crate::cli::KillArgs;
use crate::commands::Globals;
use crate::commands::run::is_running;

/// "KILL", "SIGKILL", "kill" or "9"; real-time signals as "RTMIN+3" or "SIGRTMAX-1"
/// (systemd images stop with SIGRTMIN+3).
pub fn parse_signal(text: &str) -> anyhow::Result<i32> {
    let valid = |number: i32| (1..=libc::SIGRTMAX()).contains(&number).then_some(number);
    if let Ok(number) = text.parse::<i32>() {
        return valid(number).with_context(|| format!("unknown signal {text}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: &str, start: i32, sign: i32| {
        let rest = name.strip_prefix(base)?;
        let offset = if rest.is_empty() {
            0
        } else {
            rest[1..].parse::<i32>().ok()?
        };
        (rest.is_empty() || rest.starts_with(if sign > 0 { '+' } else { '-' }))
            .then_some(start + sign * offset)
    };
    if let Some(number) =
        realtime("RTMIN", libc::SIGRTMIN(), 1).or_else(|| realtime("RTMAX", libc::SIGRTMAX(), -1))
    {
        return valid(number).with_context(|| format!("unknown signal {text}"));
    }
    format!("SIG{name}")
        .parse::<Signal>()
        .map(|signal| signal as i32)
        .with_context(|| format!("unknown signal {text}"))
}

/// Sends signal number `signal` to the container's pid 1; an error when it is not running.
pub fn signal(container: &Container, signal: i32) -> anyhow::Result<()> {
    let pid = match container.state.pid {
        Some(pid) if is_running(container) => pid,
        _ => bail!("container {} is not running", container.state.name),
    };
    // libc's kill: nix's Signal has no real-time signals
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "failed to send signal {signal} to container {}",
                container.state.name
            )
        });
    }
    if signal == libc::SIGKILL {
        // The init's death kills every process of the container, but a frozen one (a
        // privileged container may freeze cgroups of its own) dies only once thawed, as
        // docker thaws a paused container it kills.
        strata_runtime::thaw_cgroup(&crate::commands::run::cgroup_name(&container.id));
    }
    Ok(())
}

pub fn run(globals: &Globals, args: KillArgs) -> anyhow::Result<ExitCode> {
    let sig = parse_signal(&args.signal)?;
    let store = Store::open(&globals.root)?;
    Ok(crate::commands::for_each_arg(
        &args.containers,
        |reference| {
            let container = store.container(reference)?;
            signal(&container, sig)?;
            println!("{reference}");
            Ok(())
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_number_and_real_time_offset() {
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), libc::SIGRTMIN() + 3);
        assert_eq!(parse_signal("RTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        for bad in ["FOO", "0", "99", "RTMIN+99", "RTMIN3"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
