//! `strata run`: image -> container dir -> union mount on containers/<id>/rootfs ->
//! strata-runtime -> exit code, with state.json following along (running, pid, exited +
//! code). `-d` hands the container to a detached `strata run-monitor <id>` process that
//! keeps the mount alive and records the exit. Either way the output goes to the
//! container's log (`logging.rs`), and in the foreground to strata's stdout and stderr too.
//! Failures before the command starts exit 125 (docker's convention).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use strata_store::{Container, Status, Store, time};
use strata_unionfs::{Driver, IdShift, MountSpec};

pub(crate) mod etc;
pub(crate) mod health;
pub(crate) mod logging;
pub(crate) mod volumes;

use crate::cli::{RunArgs, RunMonitorArgs};
use crate::commands::Globals;

/// The run options, recorded in state.json's `config` so the monitor (and `inspect`)
/// see exactly what was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub args: Vec<String>,
    /// The entrypoint and command `args` is made of (docker's Config.Entrypoint and Cmd,
    /// which `commit` gives the new image); empty in records made before they were kept.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub network: String,
    pub userns: bool,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub blkio_weight: Option<u16>,
    pub init: bool,
    pub tty: bool,
    pub interactive: bool,
    pub driver: String,
    pub rm: bool,
    /// `-v` mounts and the image's VOLUMEs.
    #[serde(default)]
    pub volumes: Vec<volumes::Volume>,
    /// What `stop` sends first: `--stop-signal`, else the image's STOPSIGNAL (else SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `--security-opt no-new-privileges` (off by default, as docker's).
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `--security-opt seccomp=unconfined`: no seccomp filter.
    #[serde(default)]
    pub seccomp_unconfined: bool,
    /// `--security-opt seccomp=FILE`: the profile's JSON, kept as it was at `run` (as
    /// docker keeps it), so `start` and `exec` do not depend on the file.
    #[serde(default)]
    pub seccomp_profile: Option<String>,
    /// `--cap-add` and `--cap-drop`, as given (`capabilities` applies them).
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--privileged` (see `strata_runtime::Spec::privileged`).
    #[serde(default)]
    pub privileged: bool,
    /// `--read-only`.
    #[serde(default)]
    pub read_only: bool,
    /// The image's HEALTHCHECK with the `--health-*` flags over it.
    #[serde(default)]
    pub healthcheck: Option<health::Check>,
}

impl RunConfig {
    /// The capabilities container root keeps: docker's default set with `--cap-add` and
    /// `--cap-drop` applied as docker applies them; every one strata holds with
    /// `--privileged`, which docker lets override them.
    pub fn capabilities(&self) -> anyhow::Result<u64> {
        if self.privileged {
            return Ok(strata_runtime::caps::held());
        }
        strata_runtime::caps::tweak(&self.cap_add, &self.cap_drop, strata_runtime::caps::held())
            .map_err(|err| anyhow::anyhow!("--cap-add/--cap-drop: {err}"))
    }

    /// The run options `container` was made with (`run` records them; `mount` does not).
    pub fn of(container: &Container) -> anyhow::Result<RunConfig> {
        if container.state.config.is_null() {
            bail!(
                "container {} was made by mount, not run: it has no command to start",
                container.state.name
            );
        }
        serde_json::from_value(container.state.config.clone()).with_context(|| {
            format!(
                "container {}: its run options cannot be read",
                container.state.name
            )
        })
    }
}

/// The command's stdin: strata's own with `-i`, else /dev/null (it reads nothing), as
/// docker gives it.
pub(crate) fn stdin_for(interactive: bool) -> anyhow::Result<Option<OwnedFd>> {
    if interactive {
        return Ok(None);
    }
    Ok(Some(
        std::fs::File::open("/dev/null")
            .context("failed to open /dev/null")?
            .into(),
    ))
}

/// docker's rule for `-it`: a terminal that forwards input needs a terminal to read it from.
pub(crate) fn require_terminal(process: &crate::cli::ProcessArgs) -> anyhow::Result<()> {
    if process.tty && process.interactive && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("the input device is not a TTY: drop -t to pipe input, or run from a terminal");
    }
    Ok(())
}

/// The cgroup of a container.
pub fn cgroup_name(id: &str) -> String {
    format!("strata-{id}")
}

/// "256m", "1g", "512k", "100" (bytes), as docker parses --memory.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (number, unit) = match lower.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&lower[..i], c),
        _ => (lower, ' '),
    };
    let shift = match unit {
        ' ' => Some(0),
        'k' => Some(10),
        'm' => Some(20),
        'g' => Some(30),
        't' => Some(40),
        _ => None,
    };
    let value = number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0);
    let (Some(shift), Some(value)) = (shift, value) else {
        bail!("invalid size {text:?}: a positive number with an optional unit b, k, m, g or t");
    };
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// A hostname the kernel takes and resolvers accept: 1-63 letters, digits and '-' per
/// dot-separated label, 253 in all.
fn check_hostname(name: &str) -> anyhow::Result<()> {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        bail!("invalid hostname {name:?}: labels of 1-63 letters, digits and '-', joined by dots");
    }
    Ok(())
}

/// docker's floor for `-m`: below it a container is OOM-killed before its command runs.
fn check_memory(bytes: u64) -> anyhow::Result<u64> {
    const MIN: u64 = 6 << 20;
    if bytes < MIN {
        bail!("minimum memory limit allowed is 6MB (asked for {bytes} bytes)");
    }
    Ok(bytes)
}

/// `--cpus` between 0.01 and the CPUs this machine has, as docker checks it.
fn check_cpus(cpus: f64) -> anyhow::Result<f64> {
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    if !(0.01..=available as f64).contains(&cpus) {
        bail!(
            "--cpus {cpus}: the range of CPUs is from 0.01 to {available}.00, as there are only {available} CPUs available"
        );
    }
    Ok(cpus)
}

/// `--cpuset-cpus` (`0-1,3`): well formed, and only CPUs that are online.
fn check_cpuset(list: &str) -> anyhow::Result<String> {
    let online_text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let online = cpu_list(online_text.trim());
    let asked = cpu_list(list)
        .filter(|cpus| !cpus.is_empty())
        .with_context(|| {
            format!("invalid --cpuset-cpus {list:?}: a list of CPUs and ranges, as 0-1,3")
        })?;
    if let Some(online) = online
        && let Some(missing) = asked.iter().find(|cpu| !online.contains(cpu))
    {
        bail!(
            "requested CPUs are not available - requested {missing}, available: {}",
            online_text.trim()
        );
    }
    Ok(list.to_string())
}

/// The CPUs of a kernel CPU list (`0-3,8`); None when it is malformed.
fn cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last) = (
            first.trim().parse::<u32>().ok()?,
            last.trim().parse::<u32>().ok()?,
        );
        if first > last || last > 4095 {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

/// The `--env-file` entries, then the `-e` ones (which win), as docker takes them: a file
/// has `K=V` (the value as written) or `K` (copied from here) per line; blank lines and
/// lines starting with `#` are skipped.
pub(crate) fn env_args(process: &crate::cli::ProcessArgs) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for file in &process.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("failed to read --env-file {}", file.display()))?;
        // a byte order mark (Windows editors write one) is not part of the first name
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.split('=').next().unwrap_or_default();
            if key.is_empty() || key.contains(char::is_whitespace) {
                bail!(
                    "{}:{}: bad variable name {key:?}",
                    file.display(),
                    number + 1
                );
            }
            env.push(line.to_string());
        }
    }
    env.extend(process.env.iter().cloned());
    Ok(env)
}

pub(crate) fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = base.to_vec();
    for pair in overrides {
        let pair = if pair.contains('=') {
            pair.clone()
        } else {
            // docker: `-e K` copies K from strata's environment, or drops it when unset.
            match std::env::var(pair) {
                Ok(value) => format!("{pair}={value}"),
                Err(_) => continue,
            }
        };
        let key = pair.split('=').next().unwrap_or_default().to_string();
        env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
        env.push(pair);
    }
    env
}

/// The image's HEALTHCHECK and SHELL (which runs a `CMD-SHELL` test), from its config blob
/// (oci-spec's config type has no field for them).
fn image_healthcheck(
    store: &Store,
    image: &strata_store::Image,
) -> anyhow::Result<(Option<health::Check>, Vec<String>)> {
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&image.id)?)
        .with_context(|| format!("config blob {} is not valid json", image.id))?;
    let shell = config
        .pointer("/config/Shell")
        .and_then(|shell| serde_json::from_value::<Vec<String>>(shell.clone()).ok())
        .unwrap_or_default();
    let check = match config.pointer("/config/Healthcheck") {
        None | Some(serde_json::Value::Null) => return Ok((None, shell)),
        Some(check) => check,
    };
    // An image's check that cannot run is reported and left out, not a failed run.
    let runnable = |c: &health::Check| match c.test.first().map(String::as_str) {
        Some("NONE") => true,
        Some("CMD" | "CMD-SHELL") => c.test.len() > 1,
        _ => false,
    };
    let parsed = serde_json::from_value::<health::Check>(check.clone())
        .ok()
        .filter(runnable);
    if parsed.is_none() {
        eprintln!(
            "warning: image {}: its Healthcheck {check} cannot run; no health checks",
            image.id
        );
    }
    Ok((parsed, shell))
}

fn config_for(
    image: &strata_store::Image,
    (image_check, shell): (Option<health::Check>, Vec<String>),
    id: &str,
    args: &RunArgs,
) -> anyhow::Result<RunConfig> {
    let image_config = image.config.config().clone().unwrap_or_default();
    // docker: --entrypoint replaces the image's entrypoint ("" removes it) and clears its
    // default command, so only the command given here follows it.
    let (entrypoint, default_command) = match &args.entrypoint {
        Some(given) if given.is_empty() => (Vec::new(), Vec::new()),
        Some(given) => (vec![given.clone()], Vec::new()),
        None => (
            image_config.entrypoint().clone().unwrap_or_default(),
            image_config.cmd().clone().unwrap_or_default(),
        ),
    };
    let command = if args.command().is_empty() {
        default_command
    } else {
        args.command().to_vec()
    };
    let full: Vec<String> = entrypoint.iter().chain(&command).cloned().collect();
    if full.is_empty() {
        bail!(
            "no command specified: image {} has no entrypoint or cmd",
            args.image()
        );
    }
    let network = match args.network.as_str() {
        "none" | "host" => args.network.clone(),
        other => bail!("unknown network {other:?}: use none or host"),
    };
    let userns = match args.userns.as_deref() {
        None | Some("host") | Some("") => false,
        Some("private") => true,
        Some(other) => bail!("unknown --userns {other:?}: use private or host"),
    };
    // as docker refuses it: root of a user namespace holds no privilege over the host's
    // devices, sysfs or cgroups
    if userns && args.privileged {
        bail!("--privileged cannot be combined with --userns private");
    }
    args.driver.parse::<Driver>()?;
    if !args.detach {
        require_terminal(&args.process)?;
    }
    if let Some(bad) = args
        .process
        .env
        .iter()
        .find(|pair| pair.is_empty() || pair.starts_with('='))
    {
        bail!("invalid environment variable {bad:?}: K=V or K");
    }
    if let Some(name) = &args.hostname {
        check_hostname(name)?;
    }
    let cwd = std::env::current_dir().context("failed to read the current directory")?;
    let image_volumes = image_config.volumes().clone().unwrap_or_default();
    let volumes = volumes::parse(&args.volume, &image_volumes, &cwd)?;
    let mut no_new_privileges = false;
    let mut seccomp_unconfined = false;
    // (the file it came from, for errors; its JSON)
    let mut seccomp_profile: Option<(&str, String)> = None;
    for option in &args.security_opt {
        // docker writes both `no-new-privileges` and `no-new-privileges:true`, and
        // `seccomp=unconfined` or `seccomp:unconfined`
        let (key, value) = option
            .split_once(['=', ':'])
            .unwrap_or((option.as_str(), ""));
        match (key, value) {
            ("no-new-privileges", "" | "true") => no_new_privileges = true,
            ("no-new-privileges", "false") => no_new_privileges = false,
            // the last one given wins, as docker's
            ("seccomp", "unconfined") => {
                seccomp_unconfined = true;
                seccomp_profile = None;
            }
            ("seccomp", "") => bail!("--security-opt seccomp= needs unconfined or a profile file"),
            ("seccomp", file) => {
                let json = std::fs::read_to_string(file)
                    .with_context(|| format!("failed to read the seccomp profile {file}"))?;
                seccomp_profile = Some((file, json));
                seccomp_unconfined = false;
            }
            _ => bail!(
                "unsupported --security-opt {option:?}: strata knows \
                 no-new-privileges[:true|false] and seccomp=unconfined|PROFILE.json"
            ),
        }
    }
    let stop_signal = args
        .stop_signal
        .clone()
        .or_else(|| image_config.stop_signal().clone());
    if let Some(signal) = &stop_signal {
        crate::commands::kill::parse_signal(signal).context("bad stop signal")?;
    }
    let caps =
        strata_runtime::caps::tweak(&args.cap_add, &args.cap_drop, strata_runtime::caps::held())
            .map_err(|err| anyhow::anyhow!("--cap-add/--cap-drop: {err}"))?;
    // a profile that does not compile fails the run here, naming the file (a privileged
    // container runs without one, as docker's)
    if let Some((file, json)) = seccomp_profile.as_ref().filter(|_| !args.privileged) {
        strata_runtime::seccomp_program(json, caps)
            .map_err(|err| anyhow::anyhow!("seccomp profile {file}: {err}"))?;
    }
    Ok(RunConfig {
        args: full,
        entrypoint,
        cmd: command,
        env: merge_env(
            &image_config.env().clone().unwrap_or_default(),
            &env_args(&args.process)?,
        ),
        cwd: args
            .process
            .workdir
            .clone()
            .or_else(|| image_config.working_dir().clone())
            .unwrap_or_default(),
        user: args
            .process
            .user
            .clone()
            .or_else(|| image_config.user().clone())
            .unwrap_or_default(),
        // docker: the host's name with the host's network, else the short id
        hostname: match (&args.hostname, network.as_str()) {
            (Some(name), _) => name.clone(),
            (None, "host") => nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| id[..12].to_string()),
            (None, _) => id[..12].to_string(),
        },
        network,
        userns,
        // docker: 0 is no limit
        memory: args
            .memory
            .as_deref()
            .filter(|m| m.trim() != "0")
            .map(parse_size)
            .transpose()?
            .map(check_memory)
            .transpose()?,
        cpus: args
            .cpus
            .filter(|c| *c != 0.0)
            .map(check_cpus)
            .transpose()?,
        // docker: 0 or -1 is unlimited
        pids_limit: match args.pids_limit {
            Some(n) if n > 0 => Some(n as u64),
            Some(0 | -1) | None => None,
            Some(n) => bail!("--pids-limit {n}: a positive number, or -1 for no limit"),
        },
        cpuset_cpus: args.cpuset_cpus.as_deref().map(check_cpuset).transpose()?,
        blkio_weight: args.blkio_weight,
        init: args.init,
        tty: args.process.tty,
        interactive: args.process.interactive,
        driver: args.driver.clone(),
        rm: args.rm,
        volumes,
        stop_signal,
        no_new_privileges,
        seccomp_unconfined,
        seccomp_profile: seccomp_profile.map(|(_, json)| json),
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        privileged: args.privileged,
        read_only: args.read_only,
        healthcheck: health::resolve(image_check, args)?
            .map(|check| health::Check { shell, ..check }),
    })
}

/// Prints the error and exits 125: strata failed before the command started.
fn setup_failure(err: anyhow::Error) -> ExitCode {
    crate::report::print_error(&err);
    match err.downcast_ref::<CannotRun>() {
        Some(cannot) => ExitCode::from(cannot.code.clamp(0, 255) as u8),
        None => ExitCode::from(125),
    }
}

/// A detached container whose command could not be run (not found, not executable): its
/// exit code (127, 126) is `run -d`'s, as docker's.
#[derive(Debug)]
pub(crate) struct CannotRun {
    code: i32,
    message: String,
}

impl std::fmt::Display for CannotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CannotRun {}

pub fn run(globals: &Globals, args: RunArgs) -> anyhow::Result<ExitCode> {
    let prepared = (|| -> anyhow::Result<(Container, RunConfig, Vec<PathBuf>)> {
        let store = Store::open(&globals.root)?;
        // FUSE mounts a crashed strata left behind (their daemon is gone) are detached first.
        strata_unionfs::sweep_stale(store.root())?;
        sweep_abandoned(&store);
        let image = resolve_or_pull(&store, args.image())?;
        // A --rm container never outlives its command: its state needs no fsync.
        let mut container = if args.rm {
            store.create_volatile_container(Some(&image), args.name.as_deref())?
        } else {
            store.create_container(Some(&image), args.name.as_deref())?
        };
        container.state.image = Some(image_label(&image, args.image()));
        // Nothing has run in it yet: a container that cannot be set up is not kept.
        let setup = (|| -> anyhow::Result<(RunConfig, Vec<PathBuf>)> {
            let config = config_for(
                &image,
                image_healthcheck(&store, &image)?,
                &container.id,
                &args,
            )?;
            container.state.command = config.args.clone();
            container.state.config = serde_json::to_value(&config)?;
            if args.detach {
                container.save()?; // the monitor reads the config from state.json
            } // else saved with the pid once the command runs: one write fewer
            let lowers = if args.detach {
                Vec::new()
            } else {
                store.layer_dirs(&image)?
            };
            Ok((config, lowers))
        })();
        match setup {
            Ok((config, lowers)) => Ok((container, config, lowers)),
            Err(err) => {
                let _ = store.remove_container(&container);
                Err(err)
            }
        }
    })();
    // The store lock is not held while the container runs.
    let (container, config, lowers) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return Ok(setup_failure(err)),
    };
    if args.detach {
        return match detach(globals, &container, config.rm) {
            Ok(()) => {
                println!("{}", container.id);
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => Ok(setup_failure(err)),
        };
    }
    let stdin = stdin_for(config.interactive)?;
    match start(globals, container, &config, lowers, stdin) {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(err) => Ok(setup_failure(err)),
    }
}

/// Starts `strata run-monitor <id>` in its own session with its own output going to the
/// container's monitor.log, and waits until the container runs (or failed to start: then a
/// `--rm` container is removed here, once that log has been read).
pub(crate) fn detach(globals: &Globals, container: &Container, rm: bool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let monitor_log = container.dir.join("monitor.log");
    let log = std::fs::File::create(&monitor_log)
        .with_context(|| format!("failed to create {}", monitor_log.display()))?;
    let exe = std::env::current_exe().context("failed to find the strata binary")?;
    let mut monitor = std::process::Command::new(exe)
        .arg("--root")
        .arg(&globals.root)
        .arg("run-monitor")
        .arg(&container.id)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("failed to start the container monitor")?;
    let state_path = container.dir.join("state.json");
    // A --rm container that did not start goes once why has been read.
    let remove_if_rm = || {
        if rm
            && let Ok(store) = Store::open(&globals.root)
            && let Ok(container) = store.container(&container.id)
        {
            let _ = store.remove_container(&container);
        }
    };
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = monitor.try_wait()
            && !status.success()
        {
            // Another `start` of the container got it running first: so it runs, which is
            // what was asked (docker's start of a running container succeeds too).
            if let Ok(now) = container.reread()
                && is_running(&now)
            {
                return Ok(());
            }
            let log = std::fs::read_to_string(&monitor_log).unwrap_or_default();
            remove_if_rm();
            bail!("container {} failed to start: {}", container.id, log.trim());
        }
        let state: Option<strata_store::ContainerState> = std::fs::read(&state_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        match state {
            Some(state) if state.status == Status::Running && state.pid.is_some() => return Ok(()),
            Some(state) if state.status == Status::Exited => {
                return match state.error {
                    Some(message) => {
                        remove_if_rm();
                        Err(CannotRun {
                            code: state.exit_code.unwrap_or(127),
                            message: format!("container {}: {message}", container.id),
                        }
                        .into())
                    }
                    None => Ok(()),
                };
            }
            // --rm, ran and already gone (the monitor removes nothing when it fails)
            None if !container.dir.exists() => return Ok(()),
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("container {} did not start within 60 s", container.id);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The detached side of `run -d`.
pub fn monitor(globals: &Globals, args: RunMonitorArgs) -> anyhow::Result<ExitCode> {
    let (container, lowers) = {
        let store = Store::open(&globals.root)?;
        let container = store.container(&args.id)?;
        let image_id = container.state.image_id.context("container has no image")?;
        let lowers = store.layer_dirs(&store.resolve(&image_id.to_string())?)?;
        (container, lowers)
    };
    let config = RunConfig::of(&container)?;
    // `-d -i` keeps stdin open, as docker does (`docker run -di IMAGE sh` stays up for
    // `exec`): a pipe this monitor holds the write end of until the container ends, and
    // never writes to (no `attach` yet). Otherwise stdin is /dev/null.
    let (stdin, _held_open) = if config.interactive {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .context("failed to make the container's stdin pipe")?;
        (Some(read), Some(write))
    } else {
        let null = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        (null, None)
    };
    // Not `start`: a container that fails to start is kept for `detach` to read its log.
    match mount_and_run(globals, container, &config, lowers, stdin, false) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => Ok(setup_failure(err)),
    }
}

/// Mounts, runs and records one container in the foreground; returns the command's exit
/// code. A `--rm` container is removed however this ends (a mount that fails, a command
/// that cannot start).
pub(crate) fn start(
    globals: &Globals,
    container: Container,
    config: &RunConfig,
    lowers: Vec<PathBuf>,
    stdin: Option<OwnedFd>,
) -> anyhow::Result<i32> {
    let id = container.id.clone();
    let result = mount_and_run(globals, container, config, lowers, stdin, true);
    if result.is_err()
        && config.rm
        && let Ok(store) = Store::open(&globals.root)
        && let Ok(container) = store.container(&id)
    {
        let _ = store.remove_container(&container);
    }
    result
}

/// In a container's directory: held shared by `strata wait`, so that a `--rm` container is
/// removed only after its waiters have read its exit code.
pub(crate) const WAIT_LOCK: &str = "wait.lock";

/// `strata mount -f --ready` of `spec`'s branches: the server of a container's FUSE union.
fn union_server(spec: &MountSpec) -> anyhow::Result<std::process::Command> {
    if spec.flags != strata_unionfs::Flags::default() || spec.aufs_markers {
        bail!("a served union takes no mount flags nor aufs markers");
    }
    let exe = std::env::current_exe().context("failed to find the strata binary")?;
    let lowers = std::env::join_paths(&spec.lowers).context("a lower dir's path has a ':'")?;
    let mut server = std::process::Command::new(exe);
    server
        .args([
            "mount",
            "--foreground",
            "--ready",
            "--driver",
            "fuse",
            "--lower",
        ])
        .arg(lowers)
        .arg("--upper")
        .arg(&spec.upper)
        .arg("--work")
        .arg(&spec.work);
    if let Some(shift) = spec.id_shift {
        server.arg(format!("--id-shift={}:{}", shift.host_start, shift.size));
    }
    server.arg(&spec.target);
    Ok(server)
}

/// Mounts, runs and records one container; returns the command's exit code. Its output
/// goes to its log, and with `echo` (the foreground) to strata's stdout and stderr too.
fn mount_and_run(
    globals: &Globals,
    mut container: Container,
    config: &RunConfig,
    mut lowers: Vec<PathBuf>,
    stdin: Option<OwnedFd>,
    echo: bool,
) -> anyhow::Result<i32> {
    let driver: Driver = config.driver.parse()?;
    // Held until the container is recorded running (or fails to start): a `strata mount`
    // or another `start` of it waits, then sees it running.
    let (mount_lock, current) = super::mount::MountLock::take(&container)?;
    if is_running(&current) {
        bail!("container {} is already running", container.state.name);
    }
    super::mount::refuse_if_mounted(&current)?;
    let mut mount_lock = Some(mount_lock);
    let (etc_files, init_layer) =
        etc::prepare(&container.dir, &lowers, &config.network, &config.hostname)?;
    lowers.insert(0, init_layer);
    let spec = MountSpec {
        lowers,
        upper: container.upper_dir(),
        work: container.work_dir(),
        target: container.rootfs_dir(),
        // In a user namespace the container's root is host uid USERNS_HOST_START: the FUSE
        // server shows it the image's owners shifted there.
        aufs_markers: false,
        flags: Default::default(),
        id_shift: config.userns.then_some(IdShift {
            host_start: strata_runtime::USERNS_HOST_START,
            size: strata_runtime::USERNS_SIZE,
        }),
    };
    // A union a killed run left mounted (its server still serving) goes first.
    if strata_unionfs::mount_type(&spec.target)?.is_some() {
        // (busy for a moment while the killed container's last processes go)
        let give_up = Instant::now() + Duration::from_secs(2);
        while let Err(err) = strata_unionfs::unmount(&spec.target) {
            if Instant::now() > give_up {
                eprintln!("warning: {err}");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A FUSE union is served by a process of its own, as the kernel serves an overlay
    // one: the container keeps its files if this process is killed.
    let guard = strata_unionfs::mount_served(
        &spec,
        driver,
        union_server(&spec)?,
        &container.dir.join("union.log"),
    )
    .with_context(|| format!("failed to mount {}", spec.target.display()))?;
    let root = if config.userns {
        (
            strata_runtime::USERNS_HOST_START,
            strata_runtime::USERNS_HOST_START,
        )
    } else {
        (0, 0)
    };
    let binds = volumes::binds(
        &container.dir,
        &globals.root.join("volumes"),
        &spec.target,
        &config.volumes,
        root,
    )?;
    // Recorded once the command runs (one atomic save instead of two).
    container.state.driver = Some(guard.driver().to_string());
    container.state.mounted_at = Some(spec.target.clone());
    container.state.exit_code = None;
    container.state.oom_killed = false;
    container.state.error = None;

    let log = container.log_path();
    let (capture, output) = logging::Capture::start(&log, echo)
        .with_context(|| format!("failed to open {}", log.display()))?;
    let runtime_spec = strata_runtime::Spec {
        rootfs: spec.target.clone(),
        args: config.args.clone(),
        env: config.env.clone(),
        cwd: config.cwd.clone(),
        user: config.user.clone(),
        hostname: Some(config.hostname.clone()),
        network: if config.network == "host" {
            strata_runtime::Network::Host
        } else {
            strata_runtime::Network::None
        },
        etc_files,
        binds,
        userns: config.userns,
        limits: strata_runtime::Limits {
            memory: config.memory,
            cpus: config.cpus,
            pids: config.pids_limit,
            cpuset_cpus: config.cpuset_cpus.clone(),
            blkio_weight: config.blkio_weight,
            // (`privileged` comes from the spec's)
            ..Default::default()
        },
        cgroup_name: cgroup_name(&container.id),
        tty: config.tty,
        interactive: config.interactive,
        init: config.init,
        // docker's: a container outlives a killed client (`ps` and the --rm sweep follow it)
        die_with_parent: false,
        // docker run forwards them (sig-proxy)
        kill_on_signal: false,
        cancelled: None,
        no_new_privileges: config.no_new_privileges,
        seccomp_unconfined: config.seccomp_unconfined,
        seccomp_profile: config.seccomp_profile.clone(),
        capabilities: Some(config.capabilities()?),
        privileged: config.privileged,
        read_only: config.read_only,
        stdin,
        stdout: Some(output.stdout),
        stderr: Some(output.stderr),
    };
    let mut save_error = None;
    let mut watcher = None;
    let mut cannot_run = None;
    let result = strata_runtime::run_observed(runtime_spec, |child| {
        // It exits at once: not recorded as running (a detached run then fails).
        if let Some((_, message)) = child.exec_failure() {
            cannot_run = Some(message.clone());
            return;
        }
        container.state.pid = Some(child.pid);
        container.state.pid_start = start_time(child.pid);
        container.state.runner = Some(std::process::id() as i32);
        container.state.status = Status::Running;
        container.state.started = Some(time::now_rfc3339_nanos());
        container.state.finished = None;
        let saved = container.save();
        mount_lock.take();
        if let Err(err) = saved {
            save_error = Some(err);
        } else if let Some(check) = &config.healthcheck {
            // (Probes exec into the container, which needs its recorded pid.)
            watcher = health::watch(
                globals.root.clone(),
                container.id.clone(),
                container.dir.clone(),
                check.clone(),
            )
            .map_err(|err| eprintln!("warning: no health checks: {err:#}"))
            .ok();
        }
    });
    if let Some(watcher) = watcher {
        watcher.stop();
    }
    // All of the output is in the log before the container is recorded as exited (which
    // is when `logs -f` stops).
    if let Err(err) = capture.finish() {
        eprintln!(
            "warning: the container's log is incomplete: {}: {err}",
            log.display()
        );
    }
    // The union goes and the exit is recorded under the lock: a `start` or `mount` that
    // comes meanwhile waits, then finds the container exited and its rootfs free (it
    // would otherwise take the dying union for a killed run's, or have its own record
    // overwritten by this one).
    let _end_lock = super::mount::MountLock::take(&container).map(|(lock, _)| lock);
    drop(guard);
    // The exit goes onto the state as it is now: what others recorded while the command
    // ran (its health checks) stays. (Unless the running state was never saved: then
    // this process holds the only whole copy.)
    if save_error.is_none()
        && let Ok(now) = container.reread()
    {
        container.state = now.state;
    }
    container.state.pid = None;
    container.state.pid_start = None;
    container.state.runner = None;
    container.state.mounted_at = None;
    container.state.status = Status::Exited;
    container.state.finished = Some(time::now_rfc3339_nanos());
    container.state.exit_code = Some(*result.as_ref().unwrap_or(&125));
    container.state.oom_killed = strata_runtime::oom_killed(&cgroup_name(&container.id));
    container.state.error = cannot_run;
    // The exit status (and any OOM kill) has been read: like runc's delete, drop the
    // cgroup now instead of leaving one per exited container (`rm` removes it too). Before
    // the exit is recorded: a `start` that follows it makes a cgroup of the same name.
    if let Err(err) = strata_runtime::remove_cgroup(&cgroup_name(&container.id)) {
        eprintln!("warning: {err}");
    }
    // The command ran and ended: its status is the answer (as docker's), even when its
    // exit cannot be recorded (a full disk). The record then still says running; `ps` and
    // `inspect` see that its process is gone.
    if let Err(err) = container.save() {
        eprintln!("warning: the container's exit could not be recorded: {err}");
    }
    if let Some(err) = save_error {
        eprintln!("warning: failed to record the container's pid: {err}");
    }
    // A detached run whose command could not run: `run -d` reads why, then removes it.
    let told = !echo && container.state.error.is_some();
    if config.rm && !told {
        // `strata wait`s that came before hold WAIT_LOCK shared until they have read the
        // exit just saved; the container goes once they have (or after a while).
        if let Ok(waiters) = std::fs::File::open(container.dir.join(WAIT_LOCK)) {
            let give_up = Instant::now() + Duration::from_secs(5);
            while waiters.try_lock().is_err() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let store = Store::open(&globals.root)?;
        store.remove_container(&container)?;
    }
    Ok(result?)
}

/// The image to run: from the store, else pulled from its registry, as `docker run` does.
fn resolve_or_pull(store: &Store, reference: &str) -> anyhow::Result<strata_store::Image> {
    match store.resolve(reference) {
        Err(strata_store::Error::ImageNotFound(_))
            if !reference.starts_with("sha256:")
                && !reference.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            eprintln!("Unable to find image '{reference}' locally");
            let opts = strata_store::transfer::TransferOptions {
                client: crate::commands::transfer::client_options(false),
                ..Default::default()
            };
            strata_store::transfer::resolve_or_pull(store, reference, &opts)
                .with_context(|| format!("no such image: {reference}, and pulling it failed"))
        }
        other => Ok(other?),
    }
}

/// The image as `ps` shows it: the name the user gave (normalized, `app` -> `app:latest`),
/// or what they typed when it was an id or a digest, as docker shows it.
pub(crate) fn image_label(image: &strata_store::Image, reference: &str) -> String {
    match strata_store::refs::normalize_ref(reference) {
        Ok(name) if image.names.contains(&name) => name,
        _ => reference.to_string(),
    }
}

/// Removes the `--rm` containers whose `strata run` was killed: their command has ended
/// and the process that was to remove them is gone. (docker's daemon removes them when
/// they exit; strata has no daemon, so the next command that lists containers does.)
pub fn sweep_abandoned(store: &Store) {
    let Ok(containers) = store.containers() else {
        return;
    };
    for container in containers {
        let state = &container.state;
        let rm = state.config.get("rm").and_then(serde_json::Value::as_bool) == Some(true);
        if !rm
            || state.status != Status::Running
            || is_running(&container)
            || state.runner.is_some_and(alive)
        {
            continue;
        }
        // Its union may still be mounted: a kernel overlay, or a FUSE mount whose server
        // died with the runner.
        let unmounted = [Some(container.rootfs_dir()), state.mounted_at.clone()]
            .into_iter()
            .flatten()
            .all(|dir| match strata_unionfs::unmount(&dir) {
                Ok(()) | Err(strata_unionfs::Error::NotMounted(_)) => true,
                Err(err) => {
                    eprintln!(
                        "warning: container {} (run --rm) was left behind: {err}",
                        container.id
                    );
                    false
                }
            });
        // (its cgroup too, which the runner would have removed at the exit)
        if unmounted && let Err(err) = strata_runtime::remove_cgroup(&cgroup_name(&container.id)) {
            eprintln!("warning: {err}");
        }
        if unmounted && let Err(err) = store.remove_container(&container) {
            eprintln!(
                "warning: failed to remove container {} (run --rm, left behind): {err}",
                container.id
            );
        }
    }
}

/// Is the container's process still there? (state.json says running, but a killed
/// `strata run` cannot update it.)
pub fn is_running(container: &Container) -> bool {
    let state = &container.state;
    state.status == Status::Running
        && state.pid.and_then(process).is_some_and(|(ended, started)| {
            // the same process, not another that got its pid after a reboot or a crash
            !ended && state.pid_start.is_none_or(|start| start == started)
        })
}

/// When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_time(pid: i32) -> Option<u64> {
    process(pid).map(|(_, started)| started)
}

/// A process that has not ended: a zombie (whose parent has not reaped it yet) has.
pub(crate) fn alive(pid: i32) -> bool {
    process(pid).is_some_and(|(ended, _)| !ended)
}

/// From one read of /proc/PID/stat: whether the process has ended (a zombie), and when
/// it started. None when there is no such process.
fn process(pid: i32) -> Option<(bool, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`process`]'s answer from the text of a /proc/PID/stat.
pub(crate) fn parse_stat(stat: &str) -> Option<(bool, u64)> {
    // the fields after the command name, which is in parentheses and may hold anything
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let ended = matches!(fields.next()?, "Z" | "X");
    Some((ended, fields.nth(18)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked() {
        assert!(check_hostname("web-1.example").is_ok());
        for bad in ["", "a b", "-a", &"x".repeat(64), "a..b"] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resource_limits_are_checked_like_docker() {
        assert!(
            check_memory(1 << 10)
                .unwrap_err()
                .to_string()
                .contains("minimum memory limit allowed is 6MB")
        );
        assert_eq!(check_memory(6 << 20).unwrap(), 6 << 20);
        assert!(check_cpus(0.001).is_err() && check_cpus(4096.0).is_err());
        assert_eq!(check_cpus(0.5).unwrap(), 0.5);
        assert_eq!(cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(cpu_list("2-1"), None);
        assert_eq!(cpu_list("a"), None);
        assert!(check_cpuset("0").is_ok());
        let err = check_cpuset("4000").unwrap_err().to_string();
        assert!(
            err.contains("requested CPUs are not available - requested 4000"),
            "{err}"
        );
        assert!(
            check_cpuset("x")
                .unwrap_err()
                .to_string()
                .contains("invalid --cpuset-cpus")
        );
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert!(parse_size("12x").is_err());
        let error = parse_size("abc").unwrap_err().to_string();
        assert!(
            error.contains("\"abc\": a positive number with an optional unit"),
            "{error}"
        );
    }

    #[test]
    fn env_overrides_by_key() {
        let merged = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(merged, ["PATH=/bin", "A=2", "B=3"]);
    }
}
