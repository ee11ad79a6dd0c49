//! One module per verb; `run` dispatches on the parsed command line. Each verb's module
//! is thin glue over the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs `act` on every argument, as docker does for rm, rmi, stop and kill: a failure is
/// reported and the rest still go; the exit status is 1 if any failed.
pub(crate) fn for_each_arg(
    args: &[String],
    mut act: impl FnMut(&str) -> anyhow::Result<()>,
) -> ExitCode {
    let mut failed = false;
    for arg in args {
        if let Err(err) = act(arg) {
            crate::report::print_error(&err);
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

mod build;
mod cache;
mod commit;
mod cp;
mod diff;
mod exec;
mod export;
mod format;
mod fsck;
mod gc;
mod history;
mod images;
mod import;
mod inspect;
mod kill;
mod load;
mod login;
mod logout;
mod logs;
mod mount;
mod ps;
mod pull;
mod push;
mod restart;
mod rm;
mod rmi;
mod run;
mod save;
mod start;
mod stop;
mod tag;
mod transfer;
mod umount;
mod volume;
mod wait;

/// What every verb may need besides its own arguments.
pub struct Globals {
    /// The store root, resolved as ARCHITECTURE.md says: --root, $STRATA_ROOT,
    /// /var/lib/strata for root, else $XDG_DATA_HOME/strata.
    pub root: PathBuf,
}

impl Globals {
    fn new(root: Option<PathBuf>) -> Globals {
        let root = root.unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                PathBuf::from("/var/lib/strata")
            } else {
                let data = std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
                            .join(".local/share")
                    });
                data.join("strata")
            }
        });
        Globals { root }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let globals = Globals::new(cli.root);
    match cli.command {
        Command::Build(args) => build::run(&globals, args),
        Command::Import(args) => import::run(&globals, args),
        Command::Images(args) => images::run(&globals, args),
        Command::Inspect(args) => inspect::run(&globals, args),
        Command::History(args) => history::run(&globals, args),
        Command::Tag(args) => tag::run(&globals, args),
        Command::Rmi(args) => rmi::run(&globals, args),
        Command::Gc(args) => gc::run(&globals, args),
        Command::Fsck(args) => fsck::run(&globals, args),
        Command::Mount(args) => mount::run(&globals, args),
        Command::Umount(args) => umount::run(&globals, args),
        Command::Push(args) => push::run(&globals, args),
        Command::Pull(args) => pull::run(&globals, args),
        Command::Save(args) => save::run(&globals, args),
        Command::Load(args) => load::run(&globals, args),
        Command::Login(args) => login::run(&globals, args),
        Command::Logout(args) => logout::run(&globals, args),
        Command::Run(args) => run::run(&globals, *args),
        Command::RunMonitor(args) => run::monitor(&globals, args),
        Command::LogCopier(args) => run::logging::copier(args),
        Command::CpTar(args) => cp::cp_tar(args),
        Command::Ps(args) => ps::run(&globals, args),
        Command::Rm(args) => rm::run(&globals, args),
        Command::Logs(args) => logs::run(&globals, args),
        Command::Stop(args) => stop::run(&globals, args),
        Command::Restart(args) => restart::run(&globals, args),
        Command::Wait(args) => wait::run(&globals, args),
        Command::Export(args) => export::run(&globals, args),
        Command::Kill(args) => kill::run(&globals, args),
        Command::Exec(args) => exec::run(&globals, args),
        Command::Start(args) => start::run(&globals, args),
        Command::Volume(args) => volume::run(&globals, args),
        Command::Cp(args) => cp::run(&globals, args),
        Command::Diff(args) => diff::run(&globals, args),
        Command::Commit(args) => commit::run(&globals, args),
    }
}
