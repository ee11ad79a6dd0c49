//! The `strata` binary: parse the command line, run the verb, map errors to exit codes.

mod cli;
mod commands;
mod interrupt;
mod report;
mod template;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

use clap::Parser;

/// The status a shell gives a death by SIGPIPE (128 + 13).
const CLOSED_STDOUT: u8 = 141;

fn main() -> ExitCode {
    silence_closed_stdout();
    log_warnings();
    let cli = cli::Cli::parse();
    // `strata inspect x | head`: output to a closed pipe ends the program quietly with
    // SIGPIPE's status, as it ends C tools. Rust ignores SIGPIPE, so `println!` panics
    // instead; the signal stays ignored because the FUSE server and the registry client
    // must see EPIPE as an error, not die of it. The panic unwinds to here, so what is
    // mounted or staged on the way is dropped (unmounted, removed) first.
    let ran = panic::catch_unwind(AssertUnwindSafe(|| commands::run(cli)));
    // A signal is ending strata: what failed meanwhile failed because of it.
    interrupt::wait_if_interrupted();
    match ran {
        Ok(Ok(code)) => code,
        Ok(Err(err)) => {
            report::print_error(&err);
            ExitCode::from(1)
        }
        Err(payload) if is_closed_stdout(payload.as_ref()) => ExitCode::from(CLOSED_STDOUT),
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// The libraries' warnings (and fuser's `log` records) go to stderr as `warning: ...`
/// lines; `STRATA_LOG` (an env filter, e.g. `debug` or `strata_unionfs=debug`) asks for more.
///
/// fuser is left out unless asked for: it logs each request it has no handler for (an
/// ioctl on every file a shell opens), which would flood a build's output and a union
/// server's log.
fn log_warnings() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("STRATA_LOG") {
        Ok(asked) => EnvFilter::try_new(&asked).unwrap_or_else(|err| {
            eprintln!("warning: STRATA_LOG={asked:?}: {err}; using warn");
            EnvFilter::new("warn,fuser=off")
        }),
        Err(_) => EnvFilter::new("warn,fuser=off"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .event_format(report::Plain)
        .try_init();
}

/// Keeps the panic hook from printing a closed stdout's panic; any other is printed.
fn silence_closed_stdout() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !is_closed_stdout(info.payload()) {
            default_hook(info);
        }
    }));
}

/// Is this the panic of `println!` writing to a closed pipe?
fn is_closed_stdout(payload: &(dyn Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout")
        && message.ends_with(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
}
