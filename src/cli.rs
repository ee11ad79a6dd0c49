//! The command line, as clap structs. No logic lives here: each verb's glue is in
//! `commands/<verb>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use strata_store::layer::Compression;

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Build, store, mount, run and ship container images"
)]
pub struct Cli {
    /// Store root (default: $STRATA_ROOT, else /var/lib/strata as root, else $XDG_DATA_HOME/strata)
    #[arg(long, global = true, env = "STRATA_ROOT")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Buildfile (Dockerfile syntax)
    Build(BuildArgs),
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
    /// Push an image to a registry, oci:DIR[:TAG] or oci-archive:FILE[:TAG]
    Push(PushArgs),
    /// Pull an image from a registry, oci:DIR[:TAG] or oci-archive:FILE[:TAG]
    Pull(PullArgs),
    /// Write images to an OCI archive (with a docker-archive manifest.json)
    Save(SaveArgs),
    /// Load images from an OCI or docker archive
    Load(LoadArgs),
    /// Store credentials for a registry
    Login(LoginArgs),
    /// Remove stored credentials for a registry
    Logout(LogoutArgs),
    /// Run a command in a new container
    Run(Box<RunArgs>),
    /// Run one more command in a running container
    Exec(ExecArgs),
    /// Run an exited container's command again
    Start(StartArgs),
    /// Named volumes (run -v NAME:/dir): ls, create, rm
    Volume(VolumeArgs),
    /// Copy files between a container and the host (CONTAINER:PATH on one side)
    Cp(CpArgs),
    /// List containers
    Ps(PsArgs),
    /// Remove containers
    Rm(RmArgs),
    /// Show the output of a detached container
    Logs(LogsArgs),
    /// Stop a running container (SIGTERM, then SIGKILL after a grace period)
    Stop(StopArgs),
    /// Stop a container, then start it again in the background
    Restart(StopArgs),
    /// Block until containers exit, then print their exit codes
    Wait(WaitArgs),
    /// Write a container's file system, flattened, as a tar
    Export(ExportArgs),
    /// Send a signal to a running container
    Kill(KillArgs),
    /// List the files a container changed, or the differences between two images
    Diff(DiffArgs),
    /// Make a new image from a container's changes
    Commit(CommitArgs),
    /// Internal: keeps a detached container's mount alive and records its exit
    #[command(name = "run-monitor", hide = true)]
    RunMonitor(RunMonitorArgs),
    /// Internal: copies a container's output (stdin: its stdout, fd 3: its stderr) to its log
    #[command(name = "log-copier", hide = true)]
    LogCopier(LogCopierArgs),
    /// Internal: `cp -` inside a container's root (chrooted)
    #[command(name = "cp-tar", hide = true)]
    CpTar(CpTarArgs),
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
    /// Serve the FUSE mount from this process until it is unmounted (or SIGINT/SIGTERM),
    /// instead of a background daemon; like fuse-overlayfs -f
    #[arg(short, long)]
    pub foreground: bool,
    /// With --foreground: write "ready" and a newline to stdout once mounted (for a
    /// process that waits on it: `strata run` serves its containers so)
    #[arg(long, hide = true, requires_all = ["foreground", "lower"])]
    pub ready: bool,
    /// Raw branches: show owners shifted up by START, for SIZE ids (a user namespace's
    /// root at host uid START)
    #[arg(long, hide = true, value_name = "START:SIZE", requires = "lower")]
    pub id_shift: Option<String>,
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
    #[arg(long, default_value = "zstd", value_name = "zstd|gzip|none", value_parser = compression)]
    pub compression: Compression,
}

/// `zstd`, `gzip` or `none`.
fn compression(name: &str) -> Result<Compression, String> {
    match name {
        "zstd" => Ok(Compression::Zstd),
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        other => Err(format!(
            "unknown compression {other:?}: use zstd, gzip or none"
        )),
    }
}

/// A boolean as docker's flags take it (Go's strconv.ParseBool).
fn go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("invalid boolean {other:?}: use true or false")),
    }
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Only images of this repository (and tag, when given)
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub filter: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Print only the image ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show whole image ids (`sha256:` and all 64 digits)
    #[arg(long)]
    pub no_trunc: bool,
    /// Accepted as docker takes it: every image is listed anyway (strata keeps no
    /// intermediate images; dangling ones show as <none>)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// One line per image name from a Go template, as docker takes it:
    /// `{{.Repository}}:{{.Tag}}`, `{{.ID}}`, `{{json .}}`; `json` is `{{json .}}`;
    /// `table TEMPLATE` adds a header row
    #[arg(long, value_name = "TEMPLATE")]
    pub format: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image names, ids or digests, or container ids or names
    #[arg(value_name = "IMAGE|CONTAINER", required = true)]
    pub targets: Vec<String>,
    /// Print JSON (the default; accepted for symmetry with the lists)
    #[arg(long)]
    pub json: bool,
    /// One line per target from a Go template, as docker takes it: `{{.Config.Env}}`,
    /// `{{json .Config}}`, `{{index .Config.Labels "k"}}`, `{{range .Config.Env}}{{println
    /// .}}{{end}}`, `if`/`with`/`else`, and join, split, len, upper, lower, eq, not, and, or
    #[arg(short = 'f', long, value_name = "TEMPLATE")]
    pub format: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    pub image: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Do not shorten the image id and CREATED BY
    #[arg(long)]
    pub no_trunc: bool,
    /// Print only the image ids (`<missing>` for the steps below the image)
    #[arg(short = 'q', long, conflicts_with = "json")]
    pub quiet: bool,
    /// Sizes and dates for people (`--human=false`: bytes and RFC 3339 times)
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = go_bool, value_name = "BOOL")]
    pub human: bool,
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
    /// Also forget the build cache (entries older than AGE, e.g. 24h or 7d; all without
    /// AGE), so that its layers can go too, as `docker builder prune`
    #[arg(long, value_name = "AGE", num_args = 0..=1, default_missing_value = "0s")]
    pub cache: Option<String>,
    /// Also remove dangling images (no name left, no container made from them), as
    /// `docker image prune`: a rebuilt or re-pulled tag leaves its old image so
    #[arg(long)]
    pub dangling: bool,
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Print the problems as JSON
    #[arg(long)]
    pub json: bool,
    /// First mend what can be mended: remove corrupt blobs (a pull fetches them again) and
    /// rebuild a missing index.json from the manifests found (their images unnamed)
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Image name, id or digest in the store, or oci:DIR[:TAG] / oci-archive:FILE[:TAG]
    pub image: String,
    /// Destination: HOST[:PORT]/REPO[:TAG], oci:DIR[:TAG] or oci-archive:FILE[:TAG] (default: IMAGE's name)
    #[arg(value_name = "REF")]
    pub destination: Option<String>,
    /// Insecure registry: HTTPS without certificate checks if offered, else plain HTTP (always so for localhost)
    #[arg(long)]
    pub insecure: bool,
    /// Blobs uploaded at the same time
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Recompress the layers first (podman's flag): gzip for tools that do not read zstd
    /// (umoci 0.4, docker before 23, skopeo --format v2s2)
    #[arg(long, value_name = "zstd|gzip|none", value_parser = compression)]
    pub compression_format: Option<Compression>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// HOST[:PORT]/REPO[:TAG][@sha256:..], oci:DIR[:TAG] or oci-archive:FILE[:TAG]
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Platform to pick from a multi-platform index (OS/ARCH[/VARIANT])
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Insecure registry: HTTPS without certificate checks if offered, else plain HTTP (always so for localhost)
    #[arg(long)]
    pub insecure: bool,
    /// Blobs downloaded at the same time
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Images (names, ids or digests)
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
    /// The archive to write (default, or "-": standard output, unless it is a terminal)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The archive to read, OCI or docker (default, or "-": standard input)
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// HOST[:PORT]
    pub registry: String,
    #[arg(short, long)]
    pub username: String,
    /// The password (prefer --password-stdin: arguments are visible to other users)
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Insecure registry: HTTPS without certificate checks if offered, else plain HTTP (always so for localhost)
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// HOST[:PORT]
    pub registry: String,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name the image NAME[:TAG] (repeatable)
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tag: Vec<String>,
    /// The Buildfile (default: CONTEXT/Buildfile, else Dockerfile, else Containerfile)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build argument (KEY=VALUE; KEY alone takes it from the environment)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_arg: Vec<String>,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR; never stored
    /// in the image or the cache (repeatable)
    #[arg(long, value_name = "id=ID,src=FILE")]
    pub secret: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: ID=SOCKET, or ID alone for $SSH_AUTH_SOCK
    /// (`default` is the id mounts use when they name none) (repeatable)
    #[arg(long, value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Build up to this stage
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Do not use the build cache
    #[arg(long)]
    pub no_cache: bool,
    /// Union driver for RUN: fuse, overlay or auto
    #[arg(long, default_value = "auto")]
    pub driver: String,
    /// Progress output: auto, plain or tty
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Print only the image id
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Import build cache: type=local,src=DIR or type=registry,ref=REF (repeatable)
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Export build cache: type=local,dest=DIR or type=registry,ref=REF, [,mode=min|max] (repeatable)
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Insecure cache registry: HTTPS without certificate checks if offered, else plain HTTP
    #[arg(long)]
    pub insecure: bool,
    /// The build context: a directory; a git repository (URL.git#REF:SUBDIR, git://,
    /// ssh://, git@HOST:REPO, github.com/OWNER/REPO); an http(s) URL of a tar archive or a
    /// Buildfile; or - to read either from stdin
    pub context: String,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Name the container
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background and print the container id
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Bind a host path (HOST-PATH:DIR[:ro]), or give DIR a volume of the container's own
    #[arg(short = 'v', long = "volume", value_name = "HOST-PATH:DIR[:OPTS]")]
    pub volume: Vec<String>,
    /// Replace the image's entrypoint ("" removes it); the image's default command is dropped
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Hostname (default: the short container id)
    #[arg(long)]
    pub hostname: Option<String>,
    /// none (own namespace, loopback only) or host
    #[arg(long, default_value = "none")]
    pub network: String,
    /// private: map container root to unprivileged host ids 100000-165535
    #[arg(long)]
    pub userns: Option<String>,
    /// Memory limit, e.g. 256m, 1g
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPU quota in CPUs, e.g. 1.5
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes
    #[arg(long, allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// CPUs the container may use, e.g. 0-1
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Block I/O weight, 10-1000
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Run a tiny init as pid 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Union driver: fuse, overlay or auto
    #[arg(long, default_value = "auto")]
    pub driver: String,
    /// The signal `stop` sends first (default: the image's STOPSIGNAL, else SIGTERM)
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Mount the container's root read-only (its volumes, /dev, /proc and /etc files stay as they are)
    #[arg(long)]
    pub read_only: bool,
    /// Security options: `no-new-privileges` keeps setuid binaries from elevating;
    /// `seccomp=unconfined` runs without the default seccomp filter
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Give root in the container a capability beyond docker's default set (NET_ADMIN,
    /// SYS_TIME...; ALL for every one); the seccomp filter lets through what it unlocks
    #[arg(long = "cap-add", value_name = "CAP", value_delimiter = ',')]
    pub cap_add: Vec<String>,
    /// Take a capability from docker's default set (ALL for every one)
    #[arg(long = "cap-drop", value_name = "CAP", value_delimiter = ',')]
    pub cap_drop: Vec<String>,
    /// Give the container what docker's --privileged gives: every capability, no seccomp
    /// filter, /proc and /sys unmasked and writable, and the host's devices
    #[arg(long)]
    pub privileged: bool,
    /// The image, then the command and its arguments (default: the image's entrypoint and
    /// cmd). Options end at the image, as with docker: what follows goes to the container.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, value_names = ["IMAGE", "COMMAND"])]
    pub image_and_command: Vec<String>,
}

impl RunArgs {
    pub fn image(&self) -> &str {
        &self.image_and_command[0]
    }

    pub fn command(&self) -> &[String] {
        &self.image_and_command[1..]
    }
}

/// `run`'s health check flags, over the image's HEALTHCHECK (docker's).
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Command that checks the container's health (run by /bin/sh -c in the container)
    #[arg(long, value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between checks (e.g. 30s, 1m30s, 500ms)
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// How long a check may take before it counts as failed
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Time to start in, during which failed checks do not count
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Time between checks during the start period
    #[arg(long, value_name = "DURATION")]
    pub health_start_interval: Option<String>,
    /// Failures in a row that make the container unhealthy
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Run no health check, not even the image's
    #[arg(long)]
    pub no_healthcheck: bool,
}

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// CONTAINER:PATH, a host path, or - (a tar read from stdin)
    pub source: String,
    /// CONTAINER:PATH, a host path, or - (a tar written to stdout)
    pub dest: String,
}

#[derive(Debug, clap::Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// List the named volumes
    Ls {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Make empty named volumes
    Create {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove named volumes no container uses
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Stay attached: the command's output here, its exit code as strata's
    #[arg(short = 'a', long)]
    pub attach: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// The options `run` and `exec` share: how the process runs.
#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    /// Keep stdin open
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (K=V, or K to copy it from here)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file: a K=V or K per line, `#` comments (before -e)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container (exec: default the container's)
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: name, uid, uid:gid or name:group (exec: default the container's)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Run the command in the background and return at once (its output is not kept)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Give the command every capability (docker exec --privileged)
    #[arg(long)]
    pub privileged: bool,
    /// Forward signals to the command's process group, not the command alone (health
    /// probes: a timeout ends what the test started too)
    #[arg(long, hide = true)]
    pub signal_group: bool,
    /// The container, then the command and its arguments; options end at the container
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, value_names = ["CONTAINER", "COMMAND"])]
    pub container_and_command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunMonitorArgs {
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct CpTarArgs {
    /// The container's root: a directory, or `pid:N` for the root and mount namespace of
    /// process N (a running container, its volumes included)
    #[arg(value_name = "ROOT")]
    pub container_root: String,
    /// pack (PATH to a tar on stdout), unpack (a tar on stdin into directory PATH) or
    /// place (a tar on stdin to PATH as `cp -R` places its source)
    pub mode: String,
    pub path: String,
    /// CONTAINER, as the user named it: errors say CONTAINER:PATH
    #[arg(long)]
    pub container: String,
    /// strata holds the other end of the tar's pipe: a ^C is for strata, whose going
    /// this process sees on the pipe (and cleans up after)
    #[arg(long)]
    pub piped: bool,
    /// pack: owners in [START, START+SIZE) are written less START
    #[arg(long, value_name = "START:SIZE")]
    pub id_shift: Option<String>,
    /// A directory ROOT: bind SOURCE at TARGET inside it (ro or rw) first, in a mount
    /// namespace of this process's own (a stopped container's volumes)
    #[arg(long, num_args = 3, value_names = ["SOURCE", "TARGET", "MODE"])]
    pub bind: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LogCopierArgs {
    pub log: std::path::PathBuf,
    /// Also write the output to this process's stdout and stderr
    #[arg(long)]
    pub echo: bool,
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print only the container ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// One line per container from a Go template, as docker takes it: `{{.Names}}`,
    /// `{{.ID}}\t{{.Status}}`, `{{json .}}`; `json` is `{{json .}}`; `table TEMPLATE`
    /// adds a header row
    #[arg(long, value_name = "TEMPLATE")]
    pub format: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Kill a running container first
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove the container's anonymous volumes: always done, as they live in its
    /// directory (named volumes stay). Taken for docker's scripts.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing what the container writes until it exits
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Start at the last N lines
    #[arg(short = 'n', long = "tail", value_name = "N")]
    pub tail: Option<usize>,
    /// Put the time each line was written in front of it
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait after the stop signal (the image's STOPSIGNAL, else SIGTERM) before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The tar to write (default, or "-": standard output, unless it is a terminal)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    pub container: String,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal name or number
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// CONTAINER, or IMAGE IMAGE
    #[arg(num_args = 1..=2, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Commit message (the history entry's comment)
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Apply a Dockerfile instruction: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, STOPSIGNAL
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
    /// Pause a running container while its layer is made (--pause=false: do not)
    #[arg(
        short = 'p',
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        action = clap::ArgAction::Set,
        value_parser = go_bool,
        value_name = "BOOL"
    )]
    pub pause: bool,
    pub container: String,
    /// NAME[:TAG] for the new image
    pub name: Option<String>,
}
