//! `strata build`: builds a Buildfile with strata-builder. RUN steps execute on a union
//! mount (strata-unionfs, `--driver`) through strata-runtime; progress is one line per
//! step (CACHED or its duration), with spinners when stderr is a terminal.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IsTerminal};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use nix::mount::{MntFlags, MsFlags};
use strata_builder::executor::{Executor, MountSource, Network, RunMount, RunRequest};
use strata_builder::progress::{Outcome, Progress, Silent, StepInfo};
use strata_builder::remote::{self, Source};
use strata_builder::{BuildOptions, Secret, build};
use strata_store::{Store, time};
use strata_unionfs::{Driver, MountSpec};

use super::Globals;
use crate::cli::BuildArgs;

pub fn run(globals: &Globals, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let driver: Driver = args.driver.parse()?;
    let store = Store::open(&globals.root)?;
    // FUSE mounts a crashed strata left behind (their daemon is gone) are detached first.
    strata_unionfs::sweep_stale(store.root())?;
    // `-f -`: the Buildfile from stdin, the context from the command line (docker build -f-).
    let stdin_context = matches!(Source::parse(&args.context), Source::Stdin);
    let stdin_file = args.file.as_deref() == Some(Path::new("-"));
    if stdin_file && stdin_context {
        bail!("-f - and the context - cannot both be read from stdin");
    }
    // A git repository, an archive URL or stdin is fetched into the store's tmp/ for the
    // length of the build.
    let (context, fetched) = match Source::parse(&args.context) {
        Source::Dir(dir) if !dir.is_dir() => {
            bail!(
                "unable to prepare context: {} is not a directory",
                dir.display()
            )
        }
        Source::Dir(dir) => (dir, None),
        remote => {
            let fetched = remote::fetch(&store, &remote, io::stdin().lock())?;
            (fetched.context.clone(), Some(fetched))
        }
    };
    let stdin_buildfile = match stdin_file {
        true => Some(remote::fetch_buildfile(&store, io::stdin().lock())?),
        false => None,
    };
    let fetched_buildfile = stdin_buildfile
        .as_ref()
        .or(fetched.as_ref())
        .and_then(|f| f.buildfile.clone());
    let buildfile = match (&args.file, fetched_buildfile) {
        (Some(_), Some(file)) if stdin_file => file,
        // In a fetched context, -f names a file inside it (as docker reads it).
        (Some(file), _) if fetched.is_some() && file.is_relative() => context.join(file),
        (Some(file), _) => file.clone(),
        (None, Some(file)) => file,
        (None, None) => {
            let names = ["Buildfile", "Dockerfile", "Containerfile"];
            match names
                .iter()
                .map(|name| context.join(name))
                .find(|p| p.is_file())
            {
                Some(path) => path,
                None => bail!(
                    "no Buildfile, Dockerfile or Containerfile in {} (name one with -f)",
                    context.display()
                ),
            }
        }
    };
    let mut build_args = BTreeMap::new();
    for pair in &args.build_arg {
        match pair.split_once('=') {
            Some(("", _)) => bail!("--build-arg {pair:?}: the name before = is empty"),
            Some((key, value)) => build_args.insert(key.to_string(), value.to_string()),
            // `--build-arg NAME` takes the value from the environment, as docker does
            None => match std::env::var(pair) {
                Ok(value) => build_args.insert(pair.clone(), value),
                Err(_) => continue,
            },
        };
    }
    let mut secrets = BTreeMap::new();
    for spec in &args.secret {
        let (id, secret) = parse_secret(spec)?;
        secrets.insert(id, secret);
    }
    let mode = match (args.quiet, args.progress.as_str()) {
        (true, _) => Mode::Quiet,
        (false, "plain") => Mode::Plain,
        (false, "tty") => Mode::Tty,
        (false, "auto") if io::stderr().is_terminal() => Mode::Tty,
        (false, "auto") => Mode::Plain,
        (false, other) => bail!("unknown --progress {other:?}: use auto, plain or tty"),
    };
    let progress: Arc<dyn Progress> = match mode {
        Mode::Quiet => Arc::new(Silent),
        Mode::Plain => Arc::new(Plain),
        Mode::Tty => Arc::new(Tty::new()),
    };
    let mut opts = BuildOptions::new(&context, &buildfile);
    // Errors name a fetched Buildfile as the user knows it, not by its file in the store's
    // tmp/ (gone when the build ends): "stdin", the URL of a lone Buildfile, or the path
    // inside the fetched context (as docker names it).
    let read_from = |f: &Option<remote::Fetched>| {
        f.as_ref().and_then(|f| f.buildfile.as_ref()) == Some(&buildfile)
    };
    opts.buildfile_name = if read_from(&stdin_buildfile) || (stdin_context && read_from(&fetched)) {
        Some("stdin".into())
    } else if read_from(&fetched) {
        Some(remote::redacted(&args.context))
    } else if fetched.is_some() {
        buildfile
            .strip_prefix(&context)
            .ok()
            .map(|rel| rel.display().to_string())
    } else {
        None
    };
    // a bad name fails now, not after the whole build
    for tag in &args.tag {
        strata_store::refs::normalize_name(tag)?;
    }
    opts.tags = args.tag.clone();
    opts.build_args = build_args;
    opts.secrets = secrets;
    for spec in &args.ssh {
        let (id, socket) = parse_ssh(spec)?;
        opts.ssh.insert(id, socket);
    }
    opts.target = args.target.clone();
    opts.no_cache = args.no_cache;
    // `--build-arg SOURCE_DATE_EPOCH=N` (BuildKit's way) or the environment variable
    opts.source_date_epoch = match opts.build_args.get("SOURCE_DATE_EPOCH") {
        Some(value) => Some(
            value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|t| *t >= 0)
                .with_context(|| {
                    format!("--build-arg SOURCE_DATE_EPOCH={value}: seconds since 1970 expected")
                })?,
        ),
        None => time::source_date_epoch(),
    };
    opts.progress = progress;
    opts.cache_from = super::cache::sources(&store, &args.cache_from, args.insecure)?;
    let cache_to = super::cache::sinks(&args.cache_to, args.insecure)?;
    opts.cache_to = cache_to
        .iter()
        .map(|s| s.clone() as Arc<dyn strata_builder::cache::CacheSink>)
        .collect();
    opts.images = Some(Arc::new(PullingImages {
        insecure: args.insecure,
    }));
    let again = cancel_on_signals(&opts.cancel)?;
    let executor = UnionExecutor {
        driver,
        cancel: opts.cancel.clone(),
        again,
    };
    let started = std::time::Instant::now();
    let image = match build(&store, &executor, &opts) {
        Ok(image) => image,
        // what was mounted and made is undone by now: end as the signal would have
        Err(strata_builder::Error::Cancelled(signal)) => {
            eprintln!("build cancelled");
            return Ok(ExitCode::from(128 + signal as u8));
        }
        // A fetched context's files (its .dockerignore, say) are named by their path in
        // it, not in the store's tmp/, which is gone when the build ends.
        Err(err) if fetched.is_some() => {
            let line = crate::report::error_line(&err.into());
            bail!("{}", line.replace(&format!("{}/", context.display()), ""))
        }
        Err(err) => return Err(err.into()),
    };
    for sink in &cache_to {
        let count = sink.finish(&store, &image)?;
        if mode != Mode::Quiet {
            eprintln!("exported {count} cache entries");
        }
    }
    if mode != Mode::Quiet {
        // the names asked for; the image may have others from before
        for name in &args.tag {
            eprintln!(
                "tagged {}",
                strata_store::refs::normalize_name(name).unwrap_or_else(|_| name.clone())
            );
        }
        eprintln!(
            "built {} in {:.2}s",
            image.id.short(),
            started.elapsed().as_secs_f64()
        );
    }
    println!("{}", image.id);
    Ok(ExitCode::SUCCESS)
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT cancel the build, as ^C cancels `docker build`: a
/// RUN under way is killed (see `UnionExecutor`), no further step starts, and the build
/// undoes its mounts and temp dirs before strata ends. A second one ends strata at once
/// (the returned flag is set once one came).
fn cancel_on_signals(cancel: &Arc<AtomicUsize>) -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let again = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
        signal_hook::flag::register_conditional_default(signal, again.clone())
            .and_then(|_| signal_hook::flag::register(signal, again.clone()))
            .and_then(|_| {
                signal_hook::flag::register_usize(signal, cancel.clone(), signal as usize)
            })
            .context("failed to install the build's signal handlers")?;
    }
    Ok(again)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Plain,
    Tty,
}

fn step_label(step: &StepInfo) -> String {
    format!(
        "[{} {}/{}] {}",
        step.stage, step.number, step.total, step.text
    )
}

fn outcome_text(outcome: Outcome) -> String {
    match outcome {
        Outcome::Cached => "CACHED".to_string(),
        Outcome::Done(duration) => format!("{:.2}s", duration.as_secs_f64()),
    }
}

/// `--progress plain`: one line per finished step, RUN output prefixed by its stage.
struct Plain;

impl Progress for Plain {
    fn step_output(&self, step: &StepInfo, line: &str) {
        eprintln!("[{} {}/{}] | {line}", step.stage, step.number, step.total);
    }

    fn step_finished(&self, step: &StepInfo, outcome: Outcome) {
        eprintln!("{} {}", step_label(step), outcome_text(outcome));
    }

    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// A spinner per running step; finished steps stay as plain lines above them.
struct Tty {
    bars: MultiProgress,
    running: Mutex<BTreeMap<(String, usize), ProgressBar>>,
}

impl Tty {
    fn new() -> Tty {
        Tty {
            bars: MultiProgress::new(),
            running: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Progress for Tty {
    fn step_started(&self, step: &StepInfo) {
        let bar = self.bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(step_label(step));
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut running) = self.running.lock() {
            running.insert((step.stage.clone(), step.number), bar);
        }
    }

    fn step_output(&self, step: &StepInfo, line: &str) {
        if let Ok(running) = self.running.lock()
            && let Some(bar) = running.get(&(step.stage.clone(), step.number))
        {
            bar.set_message(format!("{}  | {line}", step_label(step)));
        }
    }

    fn step_finished(&self, step: &StepInfo, outcome: Outcome) {
        let bar = self
            .running
            .lock()
            .ok()
            .and_then(|mut running| running.remove(&(step.stage.clone(), step.number)));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
        let _ = self
            .bars
            .println(format!("{} {}", step_label(step), outcome_text(outcome)));
    }

    fn note(&self, text: &str) {
        let _ = self.bars.println(text);
    }
}

/// FROM, `COPY --from` and `RUN --mount=from=` images: the store, else pulled.
struct PullingImages {
    insecure: bool,
}

impl strata_builder::ImageSource for PullingImages {
    fn image(&self, store: &Store, reference: &str) -> strata_store::Result<strata_store::Image> {
        let opts = strata_store::transfer::TransferOptions {
            client: super::transfer::client_options(self.insecure),
            ..Default::default()
        };
        strata_store::transfer::resolve_or_pull(store, reference, &opts)
    }
}

/// RUN on a union mount of the image's layers, through the runtime.
struct UnionExecutor {
    driver: Driver,
    /// The build's `BuildOptions::cancel`: set when a signal kills a RUN.
    cancel: Arc<AtomicUsize>,
    /// Set with it: the next signal ends strata at once (see `cancel_on_signals`).
    again: Arc<AtomicBool>,
}

/// Undoes the extra mounts of one RUN, innermost first, on every exit path.
struct ExtraMounts {
    mounted: Vec<PathBuf>,
    created: Vec<PathBuf>,
    unions: Vec<(strata_unionfs::MountGuard, PathBuf)>,
}

impl Drop for ExtraMounts {
    fn drop(&mut self) {
        for target in self.mounted.iter().rev() {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        }
        // mount points we made inside the union must not end up in the layer
        for path in self.created.iter().rev() {
            let _ = match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => fs::remove_dir(path),
                _ => fs::remove_file(path),
            };
        }
        for (guard, scratch) in self.unions.drain(..) {
            drop(guard);
            let _ = fs::remove_dir_all(scratch);
        }
    }
}

fn builder_error(context: &str, error: impl std::fmt::Display) -> strata_builder::Error {
    strata_builder::Error::Other(format!("{context}: {error}"))
}

/// Creates `path` below `root` (a directory or, for a file source, an empty file),
/// remembering what it created.
fn mount_point(
    root: &Path,
    target: &str,
    is_file: bool,
    created: &mut Vec<PathBuf>,
) -> strata_builder::Result<PathBuf> {
    // Symlinks on the way are followed inside the build root, never out of it: a link in
    // the image must not put a mount point (and the mount) on the host.
    let point = strata_runtime::resolve_in_root(root, Path::new(target))
        .map_err(|e| builder_error(&format!("mount point {target}"), e))?;
    let rel = point
        .strip_prefix(root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    let mut current = root.to_path_buf();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        if fs::symlink_metadata(&current).is_ok() {
            continue;
        }
        if is_file && index + 1 == parts.len() {
            fs::File::create(&current).map_err(|e| {
                builder_error(
                    &format!("failed to create mount point {}", current.display()),
                    e,
                )
            })?;
        } else {
            fs::create_dir(&current).map_err(|e| {
                builder_error(
                    &format!("failed to create mount point {}", current.display()),
                    e,
                )
            })?;
        }
        created.push(current.clone());
    }
    Ok(current)
}

/// `rel` below `root`, opened (O_PATH) with its symlinks resolved as inside `root`
/// (RESOLVE_IN_ROOT: an absolute link starts at `root`, `..` stops there) and no magic
/// links followed.
fn open_in_root(root: &Path, rel: &str) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let rel = if rel.trim_matches('/').is_empty() {
        "."
    } else {
        rel.trim_start_matches('/')
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(&dir, rel, how)
}

/// The hostname RUN steps see (buildkit's, so scripts that check it behave the same).
const RUN_HOSTNAME: &str = "buildkitsandbox";

/// The cgroups of build steps are named by this and the step's id.
pub(crate) const BUILD_CGROUP_PREFIX: &str = "strata-build-";

impl Executor for UnionExecutor {
    fn run(&self, request: RunRequest<'_>) -> strata_builder::Result<i32> {
        // a signal since the step began: nothing to mount
        strata_builder::check_cancelled(&self.cancel)?;
        let target = request.upper.with_extension("rootfs");
        fs::create_dir_all(&target)
            .map_err(|e| builder_error(&format!("failed to create {}", target.display()), e))?;
        // resolv.conf, hosts and hostname as `run` gives them (docker's init layer and
        // binds), so RUN reaches a package mirror and none of them lands in the layer.
        let etc_dir = request.upper.with_extension("etc");
        let (etc_files, init_layer) =
            super::run::etc::prepare(&etc_dir, request.lowers, "host", RUN_HOSTNAME).map_err(
                |e| builder_error("failed to prepare /etc files for RUN", format!("{e:#}")),
            )?;
        let spec = MountSpec {
            lowers: std::iter::once(init_layer)
                .chain(request.lowers.iter().cloned())
                .collect(),
            upper: request.upper.to_path_buf(),
            work: request.work.to_path_buf(),
            target: target.clone(),
            aufs_markers: false,
            // A step's upper is fresh, and after a crash the build starts it over: nothing
            // in it needs syncing (dpkg's fsyncs and copy-ups cost nothing then).
            flags: strata_unionfs::Flags {
                volatile: true,
                ..Default::default()
            },
            id_shift: None,
        };
        let guard = strata_unionfs::mount(&spec, self.driver)
            .map_err(|e| builder_error("failed to mount the build root", e))?;
        let mut extra = ExtraMounts {
            mounted: Vec::new(),
            created: Vec::new(),
            unions: Vec::new(),
        };
        let result = (|| {
            for mount in &request.mounts {
                match mount {
                    RunMount::Tmpfs { target: path, size } => {
                        let point = mount_point(&target, path, false, &mut extra.created)?;
                        let data = size.map(|s| format!("size={s}"));
                        nix::mount::mount(
                            Some("tmpfs"),
                            &point,
                            Some("tmpfs"),
                            MsFlags::empty(),
                            data.as_deref(),
                        )
                        .map_err(|e| {
                            builder_error(&format!("failed to mount tmpfs at {path}"), e)
                        })?;
                        extra.mounted.push(point);
                    }
                    RunMount::Bind {
                        source,
                        target: path,
                        readonly,
                    } => {
                        // Held until the bind is made: the source as opened, not as a path
                        // someone could swap for a symlink in between.
                        let mut opened = None;
                        let host = match source {
                            MountSource::Host(dir) => dir.clone(),
                            MountSource::Layers {
                                lowers,
                                path: inner,
                            } => {
                                let scratch = request
                                    .upper
                                    .with_extension(format!("bind{}", extra.unions.len()));
                                let (upper, work, point) = (
                                    scratch.join("upper"),
                                    scratch.join("work"),
                                    scratch.join("root"),
                                );
                                for dir in [&upper, &work, &point] {
                                    fs::create_dir_all(dir).map_err(|e| {
                                        builder_error(
                                            &format!("failed to create {}", dir.display()),
                                            e,
                                        )
                                    })?;
                                }
                                let spec = MountSpec {
                                    lowers: lowers.clone(),
                                    upper,
                                    work,
                                    target: point.clone(),
                                    aufs_markers: false,
                                    flags: strata_unionfs::Flags {
                                        volatile: true,
                                        ..Default::default()
                                    },
                                    id_shift: None,
                                };
                                let union =
                                    strata_unionfs::mount(&spec, self.driver).map_err(|e| {
                                        builder_error("failed to mount --mount from=", e)
                                    })?;
                                extra.unions.push((union, scratch));
                                // Inside the union: a symlink there must not lead to the host,
                                // also not one that a writer of the context puts there between
                                // this check and the bind. openat2(RESOLVE_IN_ROOT) resolves as
                                // the container would see it, and the bind takes the opened
                                // object through /proc/self/fd (as runc does).
                                let fd = open_in_root(&point, inner).map_err(|e| {
                                    builder_error(&format!("bind mount source {inner}"), e)
                                })?;
                                let via =
                                    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                                opened = Some(fd);
                                via
                            }
                        };
                        let meta = fs::metadata(&host).map_err(|e| {
                            builder_error(&format!("bind mount source {}", host.display()), e)
                        })?;
                        let point = mount_point(&target, path, !meta.is_dir(), &mut extra.created)?;
                        nix::mount::mount(
                            Some(&host),
                            &point,
                            None::<&str>,
                            MsFlags::MS_BIND | MsFlags::MS_REC,
                            None::<&str>,
                        )
                        .map_err(|e| {
                            builder_error(
                                &format!("failed to bind {} at {path}", host.display()),
                                e,
                            )
                        })?;
                        drop(opened);
                        extra.mounted.push(point.clone());
                        if *readonly {
                            nix::mount::mount(
                                None::<&str>,
                                &point,
                                None::<&str>,
                                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                                None::<&str>,
                            )
                            .map_err(|e| {
                                builder_error(&format!("failed to make {path} read-only"), e)
                            })?;
                        }
                    }
                }
            }
            let stderr: OwnedFd = request
                .output
                .try_clone()
                .map_err(|e| builder_error("failed to duplicate the output pipe", e))?;
            let stdin: Option<OwnedFd> = fs::File::open("/dev/null").ok().map(OwnedFd::from);
            // its own prefix: gc sweeps what a killed build leaves by it (containers'
            // cgroups are `rm`'s to remove)
            let cgroup_name = format!("{BUILD_CGROUP_PREFIX}{}", request.id);
            let spec = strata_runtime::Spec {
                rootfs: target.clone(),
                args: request.args.clone(),
                env: request.env.clone(),
                cwd: request.cwd.clone(),
                user: request.user.clone(),
                hostname: Some(RUN_HOSTNAME.to_string()),
                // "default" keeps the host's network so package managers reach a mirror
                network: match request.network {
                    Network::None => strata_runtime::Network::None,
                    Network::Default | Network::Host => strata_runtime::Network::Host,
                },
                cgroup_name: cgroup_name.clone(),
                etc_files: etc_files.clone(),
                stdin,
                stdout: Some(request.output),
                stderr: Some(stderr),
                // a killed build takes its RUN with it, and a signal cancels it
                die_with_parent: true,
                kill_on_signal: true,
                cancelled: Some(self.cancel.clone()),
                ..Default::default()
            };
            let status = match strata_runtime::run(spec) {
                Err(strata_runtime::Error::Interrupted(signal)) => {
                    self.cancel.store(signal as usize, Ordering::SeqCst);
                    self.again.store(true, Ordering::SeqCst);
                    Err(strata_builder::Error::Cancelled(signal))
                }
                status => status.map_err(|e| builder_error("failed to start the RUN command", e)),
            };
            // The step's cgroup has served its purpose once the command has exited.
            if let Err(err) = strata_runtime::remove_cgroup(&cgroup_name) {
                tracing::warn!("failed to remove cgroup {cgroup_name}: {err}");
            }
            status
        })();
        drop(extra);
        drop(guard);
        let _ = fs::remove_dir(&target);
        let _ = fs::remove_dir_all(&etc_dir);
        result
    }
}

/// `--secret id=ID[,type=file|env][,src=FILE|,env=VAR]`, as `docker build --secret`. With
/// no source, the value comes from the environment variable named ID.
fn parse_secret(spec: &str) -> anyhow::Result<(String, Secret)> {
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for field in spec.split(',') {
        let (key, value) = field
            .split_once('=')
            .with_context(|| format!("--secret {spec:?}: {field:?} is not KEY=VALUE"))?;
        match key {
            "id" => id = Some(value.to_string()),
            "src" | "source" => src = Some(PathBuf::from(value)),
            "env" => env = Some(value.to_string()),
            "type" => kind = Some(value.to_string()),
            other => bail!("--secret {spec:?}: unknown field {other:?} (use id, src, env, type)"),
        }
    }
    let id = id.with_context(|| format!("--secret {spec:?} needs id=ID"))?;
    let secret = match (kind.as_deref(), src, env) {
        (Some("env"), Some(_), _) | (Some("file"), _, Some(_)) | (_, Some(_), Some(_)) => {
            bail!("--secret {spec:?}: give either src= or env=")
        }
        (None | Some("file"), Some(src), None) => {
            if !src.is_file() {
                bail!(
                    "--secret {spec:?}: {} is not a readable file",
                    src.display()
                );
            }
            Secret::File(src)
        }
        (None | Some("env"), None, Some(env)) => Secret::Env(env),
        (Some("env") | None, None, None) => Secret::Env(id.clone()),
        (Some("file"), None, None) => Secret::File(PathBuf::from(&id)),
        (Some(other), _, _) => bail!("--secret {spec:?}: unknown type {other:?} (file or env)"),
    };
    Ok((id, secret))
}

/// `--ssh ID[=SOCKET]`, as `docker build --ssh`: an agent socket (not key files, which
/// would need an agent of our own). `ID` alone means `$SSH_AUTH_SOCK`.
fn parse_ssh(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let (id, socket) = match spec.split_once('=') {
        Some((id, socket)) => (id, PathBuf::from(socket)),
        None => {
            let socket = std::env::var_os("SSH_AUTH_SOCK").with_context(|| {
                format!(
                    "--ssh {spec}: SSH_AUTH_SOCK is not set (run ssh-agent, or give {spec}=SOCKET)"
                )
            })?;
            (spec, PathBuf::from(socket))
        }
    };
    let meta = std::fs::metadata(&socket)
        .with_context(|| format!("--ssh {spec}: cannot use {}", socket.display()))?;
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        bail!(
            "--ssh {spec}: {} is not an agent socket (key files are not supported: load them into ssh-agent)",
            socket.display()
        );
    }
    Ok((id.to_string(), socket))
}
