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
    /// Import a rootfs tarball (plain, gzip or zstd; - for stdin) as a one-layer image
    Import(ImportArgs),
    /// List images
    Images(ImagesArgs),
    /// Show an image or a container as JSON
    Inspect(InspectArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Give an image another name
    Tag(TagArgs),
    /// Remove image names (by id: the whole image)
    Rmi(RmiArgs),
    /// Free unreferenced blobs, unpacked layers and tmp files
    Gc(GcArgs),
    /// Check the store: re-hash every blob, follow every reference
    Fsck(FsckArgs),
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

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The tarball, or - for stdin
    #[arg(value_name = "TAR|-")]
    pub source: String,
    /// The image name
    #[arg(value_name = "NAME[:TAG]")]
    pub name: String,
    /// Layer compression: zstd, or gzip for older tools (umoci 0.4, oci-image-tool)
    #[arg(long, default_value = "zstd", value_name = "zstd|gzip|none")]
    pub compression: String,
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image name, id or digest, or container id or name
    #[arg(value_name = "IMAGE|CONTAINER")]
    pub target: String,
    /// Print JSON (the only format; accepted for symmetry with the lists)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    pub image: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Do not shorten CREATED BY
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Image name, id or digest
    #[arg(value_name = "SRC")]
    pub source: String,
    /// The new name
    #[arg(value_name = "DST")]
    pub target: String,
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Names, ids or digests
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
    /// Remove an image by id even when it has several names
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Print the problems as JSON
    #[arg(long)]
    pub json: bool,
}
