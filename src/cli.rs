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
pub enum Command {
    /// Mount an image (as a new container), a container, or raw branches at DIR
    Mount(MountArgs),
    /// Unmount a union mounted by `strata mount`
    Umount(UmountArgs),
}

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Raw branches: lower dirs, top first, separated by ':' (needs --upper and --work)
    #[arg(long, value_name = "DIR[:DIR...]")]
    pub lower: Option<String>,
    /// Raw branches: the writable upper dir
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Raw branches: the work dir (same filesystem as --upper)
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Union driver: fuse, overlay or auto
    #[arg(long, default_value = "auto")]
    pub driver: String,
    /// IMAGE|CONTAINER DIR, or only the mount point with --lower
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mount point
    pub dir: PathBuf,
}
