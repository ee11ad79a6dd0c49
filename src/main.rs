//! The `strata` binary: parse the command line, run the verb, map errors to exit codes.

mod cli;
mod commands;
mod report;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            report::print_error(&err);
            ExitCode::from(1)
        }
    }
}
