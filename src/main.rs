//! The `strata` binary: parse the command line, run the verb, map errors to exit codes.

mod cli;
mod commands;
mod report;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            report::print_error(&err);
            ExitCode::from(1)
        }
    }
}

/// `strata inspect x | head`: output to a closed pipe ends the program quietly with the
/// status a shell gives a SIGPIPE death (128 + 13), as it ends C tools. Rust ignores
/// SIGPIPE, so `println!` panics instead; the signal stays ignored because the FUSE
/// server and the registry client must see EPIPE as an error, not die of it.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout")
            && message.ends_with(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
        {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}
