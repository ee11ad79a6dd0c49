//! The command line, as clap structs. No logic lives here: each verb's glue is in
//! `commands/<verb>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Build, store, mount, run and ship container images")]
pub struct Cli {
    /// Store root (default: $STRATA_ROOT, else /var/lib/strata as root, else $XDG_DATA_HOME/strata)
    #[arg(long, global = true, env = "STRATA_ROOT")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {}
