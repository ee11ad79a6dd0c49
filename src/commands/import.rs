//! `strata import TAR|- NAME[:TAG]`: a rootfs tarball (plain, gzip or zstd) becomes a
//! one-layer image. Prints the new image id, like `docker import`.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::process::ExitCode;

use anyhow::Context;
use strata_store::layer::WriteOptions;
use strata_store::{Store, time};

use super::Globals;
use crate::cli::ImportArgs;

pub fn run(globals: &Globals, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let (input, total): (Box<dyn Read>, Option<u64>) = if args.source == "-" {
        if io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to read a tarball from a terminal: pipe one in, e.g. `strata import - {} < rootfs.tar`",
                args.name
            );
        }
        (Box::new(io::stdin().lock()), None)
    } else {
        let file =
            File::open(&args.source).with_context(|| format!("failed to open {}", args.source))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let opts = WriteOptions {
        compression: args.compression,
        source_date_epoch: time::source_date_epoch(),
        level: None,
    };
    // A bar on a terminal; a hidden one (which counts and draws nothing) otherwise.
    let bar = if io::stderr().is_terminal() {
        progress_bar(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let image = store
        .import(
            bar.wrap_read(input),
            std::slice::from_ref(&args.name),
            &opts,
        )
        .with_context(|| format!("failed to import {} as {}", args.source, args.name))?;
    bar.finish_and_clear();
    println!("{}", image.id);
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "importing {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("importing {spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}
