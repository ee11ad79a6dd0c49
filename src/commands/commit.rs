//! `strata commit [-m MSG] [--change INSTR]... CONTAINER [NAME[:TAG]]`: a new image, as
//! docker's commit makes one: the container's image layers + one layer made from its
//! upper (whiteouts become `.wh.` entries, opaque dirs `.wh..wh..opq`; none when nothing
//! changed), the config the container ran with (its command, environment, working
//! directory and user over the image's), changed by `--change` (Dockerfile syntax), and a
//! history entry. A running container is paused (its cgroup frozen) while its layer is
//! made, unless `--pause=false`.

use std::process::ExitCode;

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, bail};
use nix::sys::signal::{SigSet, Signal};
use strata_store::layer::WriteOptions;
use strata_store::{Container, Store, oci, time};

use crate::cli::CommitArgs;
use crate::commands::Globals;
use crate::commands::diff::container_changes;
use crate::commands::run::RunConfig;

/// How long a running container's processes get to freeze (one in the middle of a long
/// system call freezes once it returns).
const PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A running container paused for a commit: its cgroup frozen, one commit of it at a time,
/// and the signals that would end this command held until the container is thawed (it
/// would stay frozen).
struct Pause {
    frozen: Option<strata_runtime::cgroup::Frozen>,
    /// The signal mask to put back.
    mask: SigSet,
    /// `commit.lock` in the container's dir, held while it is paused.
    _lock: std::fs::File,
}

impl Pause {
    /// Pauses `container`; None if it ended meanwhile.
    fn of(container: &Container) -> anyhow::Result<Option<Pause>> {
        let path = container.dir.join("commit.lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("failed to lock {}", path.display()))?;
        // Held: what ends this command or stops it (^Z would keep the container frozen
        // until `fg`). SIGKILL cannot be: the freezer's thaw guard then thaws, holding the
        // lock above (inherited) until it has.
        let mut signals = SigSet::empty();
        for signal in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGTSTP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGALRM,
        ] {
            signals.add(signal);
        }
        let mask = signals
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .context("failed to block signals")?;
        let mut pause = Pause {
            frozen: None,
            mask,
            _lock: lock,
        };
        let name = crate::commands::run::cgroup_name(&container.id);
        match strata_runtime::freeze_cgroup(&name, PAUSE_TIMEOUT) {
            Ok(frozen) => pause.frozen = Some(frozen),
            // (its cgroup goes when it ends: nothing runs to pause)
            Err(_) if !crate::commands::run::is_running(container) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        sync_union(container);
        Ok(Some(pause))
    }

    /// Thaws the container; an error says it stays frozen.
    fn resume(mut self) -> anyhow::Result<()> {
        match self.frozen.take() {
            Some(frozen) => frozen.thaw().context(
                "failed to thaw the container: it stays paused (`strata stop` or `strata kill` ends it)",
            ),
            None => Ok(()),
        }
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        // thawed, then a signal held meanwhile lands
        drop(self.frozen.take());
        let _ = self.mask.thread_set_mask();
    }
}

/// Has the kernel hand what the container wrote and it still holds (a FUSE union's
/// writeback cache, pages of shared writable mmaps) to the union's upper dir, which the
/// commit reads: syncfs(2) of the container's mounted root, if mounted here by FUSE.
fn sync_union(container: &Container) {
    let rootfs = container.rootfs_dir();
    let mounted = match (
        std::fs::metadata(&rootfs),
        std::fs::metadata(&container.dir),
    ) {
        (Ok(root), Ok(dir)) => root.dev() != dir.dev(),
        _ => false,
    };
    // (kernel overlayfs writes to the upper's own cache, which the commit reads: its
    // syncfs would flush the whole file system under the upper, with the container frozen)
    const OVERLAYFS_MAGIC: rustix::fs::FsWord = 0x794c_7630;
    if !mounted || rustix::fs::statfs(&rootfs).is_ok_and(|fs| fs.f_type == OVERLAYFS_MAGIC) {
        return;
    }
    let synced = rustix::fs::open(
        &rootfs,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|root| rustix::fs::syncfs(&root));
    if let Err(err) = synced {
        tracing::warn!("syncfs {}: {err}", rootfs.display());
    }
}

/// CMD/ENTRYPOINT arguments: a JSON array, or shell form run by /bin/sh -c.
fn command_form(text: &str) -> Vec<String> {
    let text = text.trim();
    if text.starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<String>>(text)
    {
        return list;
    }
    vec!["/bin/sh".into(), "-c".into(), text.to_string()]
}

/// `K=V K2="V 2"` or the legacy `K V` form: keys, and values as written (quotes and
/// escapes are the expansion's to undo).
fn key_values(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let text = text.trim();
    if !text
        .split_whitespace()
        .next()
        .is_some_and(|word| word.contains('='))
    {
        let (key, value) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        return Ok(vec![(key.to_string(), value.trim().to_string())]);
    }
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, '\\') => {
                    value.push(c);
                    chars.next();
                    if let Some(&escaped) = chars.peek() {
                        value.push(escaped);
                    }
                    chars.next();
                    continue;
                }
                _ => {}
            }
            value.push(c);
            chars.next();
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// `text` with quotes and escapes undone and `$VAR` replaced from the image's
/// environment, as `docker commit --change` runs its instructions through the
/// Dockerfile dispatcher (`ENV PATH=$PATH:/extra` appends).
fn expand(text: &str, env: &[String]) -> anyhow::Result<String> {
    let lookup = |name: &str| {
        env.iter().find_map(|pair| {
            pair.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
        })
    };
    strata_builder::expand::Lexer::new('\\')
        .word(text, &lookup)
        .map_err(|e| anyhow::anyhow!("{text:?}: {}", e.message))
}

/// Applies one `--change` instruction to the runtime config.
fn apply_change(config: &mut oci::Config, change: &str) -> anyhow::Result<String> {
    let change = change.trim();
    let (instruction, rest) = change
        .split_once(char::is_whitespace)
        .unwrap_or((change, ""));
    let rest = rest.trim();
    let before = config.env().clone().unwrap_or_default();
    let word = |text: &str| expand(text, &before).with_context(|| format!("--change {change:?}"));
    match instruction.to_ascii_uppercase().as_str() {
        "CMD" => config.set_cmd(Some(command_form(rest))),
        "ENTRYPOINT" => config.set_entrypoint(Some(command_form(rest))),
        "ENV" => {
            let mut env = before.clone();
            for (key, value) in key_values(rest)? {
                let value = word(&value)?;
                env.retain(|pair| pair.split('=').next() != Some(key.as_str()));
                env.push(format!("{key}={value}"));
            }
            config.set_env(Some(env))
        }
        "LABEL" => {
            let mut labels = config.labels().clone().unwrap_or_default();
            for (key, value) in key_values(rest)? {
                labels.insert(word(&key)?, word(&value)?);
            }
            config.set_labels(Some(labels))
        }
        "WORKDIR" => config.set_working_dir(Some(word(rest)?)),
        "USER" => config.set_user(Some(word(rest)?)),
        "STOPSIGNAL" => config.set_stop_signal(Some(word(rest)?)),
        "EXPOSE" => {
            let mut ports = config.exposed_ports().clone().unwrap_or_default();
            for port in word(rest)?.split_whitespace() {
                let port = if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                };
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            config.set_exposed_ports(Some(ports))
        }
        other => bail!(
            "--change {change:?}: unsupported instruction {other} (use CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER, STOPSIGNAL, EXPOSE)"
        ),
    };
    Ok(format!("{} {rest}", instruction.to_ascii_uppercase()))
}

pub fn run(globals: &Globals, args: CommitArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let container = store.container(&args.container)?;
    let image_id = container
        .state
        .image_id
        .context("container has no image to commit onto")?;
    let image = store.resolve(&image_id.to_string())?;
    // The store adds `:latest` to a name without a tag (and refuses a bad name).
    let names: Vec<String> = args.name.iter().cloned().collect();
    // The config it runs with, made before any pause: a bad --change fails first.
    let mut runtime_config = image.config.config().clone().unwrap_or_default();
    // What the container ran with (a container `mount` made has no run options)
    if let Ok(run) = RunConfig::of(&container) {
        let some = |list: Vec<String>| (!list.is_empty()).then_some(list);
        runtime_config.set_env(some(run.env));
        runtime_config.set_working_dir((!run.cwd.is_empty()).then_some(run.cwd));
        runtime_config.set_user((!run.user.is_empty()).then_some(run.user));
        if !run.entrypoint.is_empty() || !run.cmd.is_empty() {
            runtime_config.set_entrypoint(some(run.entrypoint));
            runtime_config.set_cmd(some(run.cmd));
        }
    }
    let mut applied = Vec::new();
    for change in &args.changes {
        applied.push(apply_change(&mut runtime_config, change)?);
    }
    // A running container is paused while its layer is made, as docker's commit pauses
    // it: what its processes write meanwhile would tear the layer (half a file, or a big
    // copy-up begun after `container_changes` waited for those under way).
    let paused = if args.pause && crate::commands::run::is_running(&container) {
        // Copy-ups the union is finishing finish first, while the container runs.
        strata_unionfs::finish_copy_ups(
            &container.upper_dir(),
            &container.work_dir(),
            std::time::Duration::from_secs(600),
        )?;
        Pause::of(&container).with_context(|| {
            format!(
                "failed to pause container {} (--pause=false commits it running)",
                container.state.name
            )
        })?
    } else {
        None
    };
    let changes = container_changes(&store, &container.id)?;

    let mut config = image.config.clone();
    let mut layers = image.manifest.layers().clone();
    if !changes.is_empty() {
        let blob = store
            .create_layer(&container.upper_dir(), &WriteOptions::default())
            .with_context(|| {
                let running = paused.is_none() && crate::commands::run::is_running(&container);
                format!(
                    "failed to make a layer from {}{}",
                    container.upper_dir().display(),
                    if running {
                        " (the container was running and not paused: --pause=false)"
                    } else {
                        ""
                    }
                )
            })?;
        layers.push(blob.descriptor.clone());
        config
            .rootfs_mut()
            .diff_ids_mut()
            .push(blob.diff_id.to_string());
    }
    if let Some(paused) = paused {
        paused.resume()?;
    }
    config.set_config(Some(runtime_config));

    let now = time::format_rfc3339(time::now());
    let mut created_by = format!("strata commit {}", container.state.name);
    if !applied.is_empty() {
        created_by.push_str(&format!(" --change {}", applied.join(" --change ")));
    }
    let mut history = oci::HistoryBuilder::default()
        .created(now.clone())
        .created_by(created_by);
    if let Some(message) = &args.message {
        history = history.comment(message.clone());
    }
    if changes.is_empty() {
        history = history.empty_layer(true);
    }
    let history = history
        .build()
        .context("failed to build the history entry")?;
    config
        .history_mut()
        .get_or_insert_with(Vec::new)
        .push(history);
    config.set_created(Some(now));

    let committed = store.put_image(&config, &layers, &names)?;
    println!("{}", committed.id);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_follow_dockerfile_syntax() {
        let mut config = oci::Config::default();
        apply_change(&mut config, r#"CMD ["echo", "hi"]"#).unwrap();
        apply_change(&mut config, "ENTRYPOINT echo hello").unwrap();
        apply_change(&mut config, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut config, "ENV C 3").unwrap();
        apply_change(&mut config, "WORKDIR /srv").unwrap();
        apply_change(&mut config, "EXPOSE 80 53/udp").unwrap();
        assert_eq!(config.cmd().clone().unwrap(), ["echo", "hi"]);
        assert_eq!(
            config.entrypoint().clone().unwrap(),
            ["/bin/sh", "-c", "echo hello"]
        );
        assert_eq!(config.env().clone().unwrap(), ["A=1", "B=two words", "C=3"]);
        assert_eq!(config.working_dir().as_deref(), Some("/srv"));
        assert_eq!(
            config.exposed_ports().clone().unwrap(),
            ["80/tcp", "53/udp"]
        );
        assert!(apply_change(&mut config, "RUN rm -rf /").is_err());
        // variables expand from the image's environment, as docker commit --change does
        config.set_env(Some(vec!["PATH=/usr/bin:/bin".into()]));
        apply_change(&mut config, "ENV PATH=$PATH:/extra KEEP='$PATH' ESC=a\\ b").unwrap();
        apply_change(&mut config, "WORKDIR ${HOME:-/home}/app").unwrap();
        assert_eq!(
            config.env().clone().unwrap(),
            ["PATH=/usr/bin:/bin:/extra", "KEEP=$PATH", "ESC=a b"]
        );
        assert_eq!(config.working_dir().as_deref(), Some("/home/app"));
    }

    #[test]
    fn names_get_latest() {
        let full_name = |name| strata_store::refs::normalize_name(name).unwrap();
        assert_eq!(full_name("app"), "app:latest");
        assert_eq!(full_name("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(full_name("app:v2"), "app:v2");
    }
}
