//! `strata export [-o FILE] CONTAINER`: the container's file system, flattened, as a tar
//! (docker export): its union, not its volumes. `-o` writes FILE whole or not at all.

use std::io::IsTerminal;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, bail};

use crate::cli::ExportArgs;
use crate::commands::Globals;
use crate::commands::cp;

pub fn run(globals: &Globals, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let whole = match args.output.as_deref().filter(|p| p.as_os_str() != "-") {
        None => {
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a tar to a terminal: give -o FILE or redirect the output");
            }
            cp::export(globals, &args.container, Stdio::inherit())?
        }
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let (tmp, removed) = crate::interrupt::removed_on_signal(
                || {
                    tempfile::Builder::new()
                        .prefix(".strata-export-")
                        .tempfile_in(dir)
                },
                |tmp| tmp.path(),
            )
            .with_context(|| format!("failed to create a file beside {}", path.display()))?;
            let out = tmp
                .as_file()
                .try_clone()
                .context("failed to duplicate the output file")?;
            let whole = cp::export(globals, &args.container, out.into())?;
            if whole {
                // as a file created by the user would be (tempfile's are 0600)
                let umask = rustix::process::umask(rustix::fs::Mode::empty());
                rustix::process::umask(umask);
                rustix::fs::fchmod(
                    tmp.as_file(),
                    rustix::fs::Mode::from_raw_mode(0o666) & !umask,
                )
                .with_context(|| format!("failed to write {}", path.display()))?;
                tmp.as_file()
                    .sync_all()
                    .with_context(|| format!("failed to write {}", path.display()))?;
                removed
                    .settle(|| tmp.persist(path))
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            whole
        }
    };
    Ok(if whole {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
