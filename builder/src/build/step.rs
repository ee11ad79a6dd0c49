//! One stage, step by step: expand the instruction, compute its cache key, reuse the
//! cached result or execute it (config change, COPY/ADD into a fresh upper, RUN through
//! the executor), record history.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::json;
use strata_store::layer::{Compression, WriteOptions};
use strata_store::{CacheEntry, Digest, LayerBlob, time};

use super::BuildCx;
use super::copy;
use super::state::{HealthConfig, ImageState};
use crate::cache::{KeyBuilder, root_key};
use crate::error::{Error, Result};
use crate::executor::{MountSource, RunMount, RunRequest};
use crate::instructions::{
    Command, Healthcheck, Instruction, Mount, MountKind, Run, Sharing, Step,
};
use crate::progress::{Outcome, StepInfo};
use crate::stages::{Base, Scope};
use crate::tree::Tree;

/// Part of every COPY and ADD cache key: bumped when what a COPY makes of the same sources
/// changes, so that entries an older strata wrote miss instead of giving the old result
/// (2: `--chmod` also applies to the directory a COPY of a directory makes).
const COPY_SEMANTICS: &[u8] = b"2";

/// Build args every RUN sees without declaring them (Docker's predefined ARGs).
pub(crate) const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// How many lines of a failed RUN's output the error shows.
const TAIL_LINES: usize = 15;

/// What a RUN's mounts need, held until it ends.
#[derive(Default)]
struct RunMounts {
    mounts: Vec<RunMount>,
    /// Locks of `sharing=locked` cache mounts.
    locks: Vec<fs::File>,
    /// Files and directories made for this RUN only (secrets, a shebang heredoc, the
    /// masks of context binds).
    files: TempPaths,
}

/// Paths removed when dropped, also when the RUN fails half way through its setup: a
/// secret or a context mask never stays behind in the store.
#[derive(Default)]
struct TempPaths(Vec<PathBuf>);

impl Drop for TempPaths {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path).or_else(|_| fs::remove_dir_all(path));
        }
    }
}

pub(crate) struct StageRun<'a, 'c> {
    pub cx: &'a BuildCx<'c>,
    pub index: usize,
    pub done: &'a [Option<ImageState>],
    pub state: ImageState,
    pub scope: Scope,
}

pub(crate) fn build_stage(
    cx: &BuildCx<'_>,
    index: usize,
    done: &[Option<ImageState>],
) -> Result<ImageState> {
    let buildfile = cx.buildfile;
    let stage = &buildfile.stages[index];
    // BuildKit calls an unnamed stage stage-N in its progress.
    let label = stage
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{index}"));
    let total = stage.steps.len() + 1;
    let (base, platform) = buildfile.base(stage, &cx.meta)?;
    // Images are pulled and RUN executed for this machine: another platform is refused
    // rather than built silently for the host (BuildKit fails the same way without
    // emulation).
    if let Some(wanted) = &platform {
        let host = crate::stages::host_platform();
        if wanted.trim_end_matches('/') != host && !wanted.starts_with(&format!("{host}/")) {
            return Err(Error::step(
                &buildfile.file,
                stage.from_step.pos,
                format!(
                    "FROM --platform={wanted}: strata builds for this machine's platform, {host}, only"
                ),
            ));
        }
    }
    let info = StepInfo {
        stage: label.clone(),
        number: 1,
        total,
        text: format!(
            "FROM {}{}",
            base_text(buildfile, &base),
            stage
                .name
                .as_ref()
                .map(|name| format!(" AS {name}"))
                .unwrap_or_default()
        ),
    };
    cx.opts.progress.step_started(&info);
    let started = Instant::now();
    // SOURCE_DATE_EPOCH changes every layer's times: layers made with another (or none)
    // are other layers, and a warm cache must not hand them out.
    let epoch = cx
        .opts
        .source_date_epoch
        .map(|t| format!(" source-date-epoch {t}"))
        .unwrap_or_default();
    let state = match &base {
        Base::Scratch => ImageState::scratch(root_key(&format!(
            "scratch {}{epoch}",
            platform.unwrap_or_default()
        ))),
        Base::Stage(dep) => done[*dep]
            .clone()
            .ok_or_else(|| Error::Other(format!("stage {dep} was not built")))?,
        Base::Image(reference) => {
            let image = super::find_image(cx.store, cx.opts, reference).map_err(|e| {
                Error::step(
                    &buildfile.file,
                    stage.from_step.pos_of(&stage.from.image),
                    format!("base image {reference:?} not found: {e}"),
                )
            })?;
            ImageState::from_image(
                cx.store,
                &image,
                root_key(&format!(
                    "image {} {}{epoch}",
                    image.id, image.manifest_digest
                )),
            )?
        }
    };
    cx.opts.progress.step_finished(
        &info,
        if matches!(base, Base::Stage(_)) {
            Outcome::Cached
        } else {
            Outcome::Done(started.elapsed())
        },
    );
    let scope = Scope {
        env: state.config.env_pairs(),
        ..Scope::default()
    };
    let mut run = StageRun {
        cx,
        index,
        done,
        state,
        scope,
    };
    // Docker runs the base image's ONBUILD triggers first, then drops them from the config.
    let mut triggers = Vec::new();
    if matches!(base, Base::Image(_)) {
        let origin = format!(
            "{} (ONBUILD trigger of {})",
            buildfile.file,
            base_text(buildfile, &base)
        );
        for trigger in std::mem::take(&mut run.state.config.on_build) {
            let ast = crate::parser::parse(&trigger, &origin)?;
            for node in &ast.nodes {
                let step = crate::instructions::instruction(node, &origin, buildfile.escape)?;
                if let crate::instructions::Instruction::Arg(decls) = &step.instruction {
                    let mut args = cx.trigger_args.lock().unwrap_or_else(|e| e.into_inner());
                    args.extend(decls.iter().map(|d| d.name.clone()));
                }
                triggers.push(step);
            }
        }
    }
    let total = total + triggers.len();
    for (number, step) in triggers.iter().chain(&stage.steps).enumerate() {
        run.step(step, &label, number + 2, total)?;
    }
    Ok(run.state)
}

impl StageRun<'_, '_> {
    fn file(&self) -> &str {
        &self.cx.buildfile.file
    }

    fn step(&mut self, step: &Step, label: &str, number: usize, total: usize) -> Result<()> {
        let cx = self.cx;
        cx.opts.check_cancelled()?;
        let instruction =
            cx.buildfile
                .expand_step(step, &mut self.scope, &cx.meta, &cx.opts.build_args)?;
        let info = StepInfo {
            stage: label.to_string(),
            number,
            total,
            // continuation lines joined: one line per step in the progress output
            text: step
                .original
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        };
        cx.opts.progress.step_started(&info);
        let started = Instant::now();
        let parent = self.state.key;
        let instruction_json =
            serde_json::to_vec(&instruction).map_err(|e| Error::Other(e.to_string()))?;
        let mut key = KeyBuilder::new(&parent).part("instruction", &instruction_json);
        let mut resolved = None;
        match &instruction {
            Instruction::Arg(decls) => {
                // The value is not part of the key: a changed ARG misses where it is used
                // (expansion, or a later RUN's environment), as in Docker.
                let names: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
                key = KeyBuilder::new(&parent).part("arg", names.join(" ").as_bytes());
            }
            Instruction::Run(run) => {
                let mut env = self.scope.run_env();
                env.sort();
                key = key
                    .part("env", env.join("\0").as_bytes())
                    .part("config", &config_key(&self.state)?)
                    .part("binds", self.binds_key(step, run)?.as_bytes());
            }
            Instruction::Copy(copy) | Instruction::Add(copy) => {
                let add = matches!(instruction, Instruction::Add(_));
                let sources = copy::resolve(self, step, copy, add)
                    .map_err(|err| at_step(err, &cx.buildfile.file, step))?;
                let text = copy::key_text(&sources);
                key = key
                    .part("copy-semantics", COPY_SEMANTICS)
                    .part("sources", text.as_bytes())
                    .part("workdir", self.state.config.working_dir.as_bytes());
                if copy.chown.is_some() {
                    key = key.part("user-db", &self.user_db());
                }
                resolved = Some(sources);
            }
            Instruction::Workdir(_) => {
                key = key.part("workdir", self.state.config.working_dir.as_bytes());
                if !self.state.config.user.is_empty() {
                    // a new directory belongs to USER, looked up in the image
                    key = key.part("user-db", &self.user_db());
                }
            }
            _ => {}
        }
        let key = key.finish();
        let created_by = created_by(&instruction, &step.original, &self.state);
        if let Some(entry) = self.lookup(&key)? {
            let created = entry
                .data
                .get("created")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            self.apply(
                &instruction,
                entry.layer.clone(),
                None,
                created,
                &created_by,
            );
            self.export(&key, &entry);
            if !config_only(&instruction) {
                self.state.key = key;
            }
            cx.opts.progress.step_finished(&info, Outcome::Cached);
            return Ok(());
        }
        let created = cx.opts.source_date_epoch.unwrap_or_else(time::now);
        let (layer, dir) = match &instruction {
            Instruction::Run(run) => self.run(step, run, &info)?,
            Instruction::Copy(copy) | Instruction::Add(copy) => {
                let sources = resolved.take().unwrap_or_default();
                let (layer, dir) = self
                    .in_upper(|run, upper| copy::execute(run, step, copy, &sources, upper))
                    .map_err(|err| at_step(err, &cx.buildfile.file, step))?;
                (Some(layer), dir)
            }
            Instruction::Workdir(dir) => {
                let path = workdir_path(&self.state.config.working_dir, dir);
                let tree = Tree::new(self.state.lowers(cx.store)?);
                // Through symlinks inside the image, as mkdir -p would go.
                let rel = tree.resolve(&crate::context::clean(&path)).map_err(|err| {
                    Error::step(
                        &cx.buildfile.file,
                        step.pos,
                        format!("WORKDIR {path}: {err}"),
                    )
                })?;
                match tree.lookup(&rel) {
                    _ if rel.is_empty() => (None, None),
                    Some((_, meta)) if meta.is_dir() => (None, None),
                    Some(_) => {
                        return Err(Error::step(
                            &cx.buildfile.file,
                            step.pos,
                            format!("WORKDIR {path}: /{rel} exists and is not a directory"),
                        ));
                    }
                    None => {
                        // New directories belong to USER, as BuildKit makes them.
                        let user = &self.state.config.user;
                        let owner = if user.is_empty() {
                            None
                        } else {
                            Some(copy::owner(user, &tree).map_err(|e| {
                                Error::step(
                                    &cx.buildfile.file,
                                    step.pos,
                                    format!("WORKDIR {path}: USER {user}: {e}"),
                                )
                            })?)
                        };
                        let (layer, dir) = self
                            .in_upper(|_, upper| copy::make_dirs(&tree, upper, &rel, owner))
                            .map_err(|err| at_step(err, &cx.buildfile.file, step))?;
                        (Some(layer), dir)
                    }
                }
            }
            _ => (None, None),
        };
        let entry = CacheEntry {
            layer: layer.clone(),
            data: json!({ "created": created }),
        };
        cx.store.cache_put(&key, &entry)?;
        self.export(&key, &entry);
        self.apply(&instruction, layer, dir, created, &created_by);
        // A config-only step leaves the key of what follows alone, as BuildKit's graph
        // has no node for it: a new LABEL or CMD does not rerun the RUN after it.
        if !config_only(&instruction) {
            self.state.key = key;
        }
        cx.opts
            .progress
            .step_finished(&info, Outcome::Done(started.elapsed()));
        Ok(())
    }

    fn lookup(&self, key: &Digest) -> Result<Option<CacheEntry>> {
        if self.cx.opts.no_cache {
            return Ok(None);
        }
        if let Some(entry) = self.cx.store.cache_get(key)? {
            return Ok(Some(entry));
        }
        for source in &self.cx.opts.cache_from {
            if let Some(entry) = source.fetch(self.cx.store, key)? {
                self.cx.store.cache_put(key, &entry)?;
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn export(&self, key: &Digest, entry: &CacheEntry) {
        for sink in &self.cx.opts.cache_to {
            if let Err(e) = sink.export(self.cx.store, key, entry) {
                tracing::warn!("cache export of {key} failed: {e}");
            }
        }
    }

    /// /etc/passwd and /etc/group of the image so far (names in --chown resolve there).
    fn user_db(&mut self) -> Vec<u8> {
        let Ok(lowers) = self.state.lowers(self.cx.store) else {
            return Vec::new();
        };
        let tree = Tree::new(lowers);
        let mut bytes = tree.read("etc/passwd").unwrap_or_default();
        bytes.extend(tree.read("etc/group").unwrap_or_default());
        bytes
    }

    /// Applies a step's effect on the image (config, layer, history).
    fn apply(
        &mut self,
        instruction: &Instruction,
        layer: Option<LayerBlob>,
        dir: Option<PathBuf>,
        created: i64,
        created_by: &str,
    ) {
        let config = &mut self.state.config;
        match instruction {
            Instruction::Env(pairs) => {
                for pair in pairs {
                    config.set_env(&pair.key, &pair.value);
                }
            }
            Instruction::Label(pairs) => {
                for pair in pairs {
                    config.labels.insert(pair.key.clone(), pair.value.clone());
                }
            }
            // The image's author, as docker sets it (MAINTAINER is deprecated for a label).
            Instruction::Maintainer(name) => {
                self.state
                    .base
                    .insert("author".into(), name.as_str().into());
            }
            Instruction::Expose(ports) => {
                for port in ports {
                    let port = if port.contains('/') {
                        port.clone()
                    } else {
                        format!("{port}/tcp")
                    };
                    config.exposed_ports.insert(port, Default::default());
                }
            }
            Instruction::Volume(paths) => {
                for path in paths {
                    config.volumes.insert(path.clone(), Default::default());
                }
            }
            Instruction::User(user) => config.user = user.clone(),
            Instruction::Workdir(dir) => {
                config.working_dir = workdir_path(&config.working_dir, dir)
            }
            Instruction::StopSignal(signal) => config.stop_signal = Some(signal.clone()),
            Instruction::Shell(shell) => config.shell = shell.clone(),
            Instruction::Onbuild(trigger) => config.on_build.push(trigger.clone()),
            Instruction::Cmd(command) => config.cmd = Some(command_args(command, &config.shell())),
            Instruction::Entrypoint(command) => {
                config.entrypoint = Some(command_args(command, &config.shell()));
                // Docker: ENTRYPOINT resets a CMD inherited from the base image.
                config.cmd = None;
            }
            Instruction::Healthcheck(check) => {
                config.healthcheck = Some(match check {
                    Healthcheck::None => HealthConfig {
                        test: vec!["NONE".into()],
                        ..Default::default()
                    },
                    Healthcheck::Check {
                        test,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => HealthConfig {
                        test: match test {
                            Command::Exec(args) => std::iter::once("CMD".to_string())
                                .chain(args.iter().cloned())
                                .collect(),
                            Command::Shell(text) => vec!["CMD-SHELL".into(), text.clone()],
                        },
                        interval: *interval,
                        timeout: *timeout,
                        start_period: *start_period,
                        start_interval: *start_interval,
                        retries: *retries,
                    },
                });
            }
            _ => {}
        }
        if matches!(instruction, Instruction::Arg(_)) {
            return;
        }
        let empty = layer.is_none();
        if let Some(layer) = layer {
            self.state.layers.push(layer);
            self.state.dirs.push(dir);
        }
        self.state.push_history(created, created_by, empty);
    }

    /// Runs `fill` on a fresh upper dir and turns the result into a layer.
    fn in_upper(
        &mut self,
        fill: impl FnOnce(&mut Self, &Path) -> Result<()>,
    ) -> Result<(LayerBlob, Option<PathBuf>)> {
        let upper = self.cx.store.tmp_dir_create("build-upper")?;
        let result = fill(self, &upper).and_then(|()| self.finish_layer(&upper));
        if upper.exists() {
            let _ = fs::remove_dir_all(&upper);
        }
        result
    }

    /// Writes `upper` as a layer blob; without SOURCE_DATE_EPOCH the blob is exactly this
    /// tree, so the dir itself becomes the unpacked layer (no unpacking later).
    fn finish_layer(&self, upper: &Path) -> Result<(LayerBlob, Option<PathBuf>)> {
        let store = self.cx.store;
        let opts = WriteOptions {
            compression: Compression::Zstd,
            source_date_epoch: self.cx.opts.source_date_epoch,
            level: None,
        };
        let layer = store.create_layer(upper, &opts)?;
        if self.cx.opts.source_date_epoch.is_some() {
            return Ok((layer, None));
        }
        let target = store.layers_dir().join(layer.diff_id.hex());
        if target.is_dir() {
            return Ok((layer, Some(target)));
        }
        match fs::rename(upper, &target) {
            Ok(()) => Ok((layer, Some(target))),
            Err(_) if target.is_dir() => Ok((layer, Some(target))),
            Err(e) => Err(Error::io("failed to place layer", &target, e)),
        }
    }

    /// Executes a RUN through the executor.
    fn run(
        &mut self,
        step: &Step,
        run: &Run,
        info: &StepInfo,
    ) -> Result<(Option<LayerBlob>, Option<PathBuf>)> {
        let cx = self.cx;
        let shell = self.state.config.shell();
        // A bare heredoc that starts with a shebang runs as its own program, as buildkit
        // does: its text is bound read-only into the container and executed directly.
        let mut shebang_script = None;
        let args = match (&run.command, run.heredocs.as_slice()) {
            (Command::Exec(args), _) => args.clone(),
            (Command::Shell(text), []) => shell.iter().cloned().chain([text.clone()]).collect(),
            (Command::Shell(text), [doc]) if is_bare_heredoc(text, &doc.name) => {
                if doc.content.starts_with("#!") {
                    let target = format!("/.strata-heredoc-{}", sanitize_name(&doc.name));
                    shebang_script = Some((doc.content.clone(), target.clone()));
                    vec![target]
                } else {
                    shell.iter().cloned().chain([doc.content.clone()]).collect()
                }
            }
            (Command::Shell(text), docs) => {
                let mut script = text.clone();
                for doc in docs {
                    script.push('\n');
                    script.push_str(&doc.raw);
                    script.push_str(&doc.name);
                }
                shell.iter().cloned().chain([script]).collect()
            }
        };
        let mut env = self.scope.run_env();
        // Docker's predefined proxy args reach RUN without an ARG line and stay out of the
        // cache key (they say where to fetch from, not what is built).
        for (key, value) in &cx.opts.build_args {
            if PROXY_ARGS.contains(&key.as_str())
                && !env
                    .iter()
                    .any(|e| e.split('=').next() == Some(key.as_str()))
            {
                env.push(format!("{key}={value}"));
            }
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let lowers = self.state.lowers(cx.store)?;
        let RunMounts {
            mut mounts,
            locks,
            mut files,
        } = self.run_mounts(step, run, &mut env)?;
        if let Some((content, target)) = shebang_script {
            let path = cx.store.tmp_path("heredoc");
            files.0.push(path.clone());
            fs::write(&path, content)
                .map_err(|e| Error::io("failed to write heredoc", &path, e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io("failed to chmod", &path, e))?;
            mounts.push(RunMount::Bind {
                source: MountSource::Host(path),
                target,
                readonly: true,
            });
        }
        let upper = cx.store.tmp_dir_create("build-upper")?;
        let work = cx.store.tmp_dir_create("build-work").inspect_err(|_| {
            let _ = fs::remove_dir_all(&upper);
        })?;
        let result = (|| {
            let (reader, writer) =
                std::io::pipe().map_err(|e| Error::io("failed to create pipe", "RUN output", e))?;
            let output: OwnedFd = writer.into();
            let progress = cx.opts.progress.clone();
            let reader_info = info.clone();
            let collector = std::thread::spawn(move || {
                let mut tail: VecDeque<String> = VecDeque::new();
                for line in BufReader::new(reader).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    progress.step_output(&reader_info, &line);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                tail
            });
            static RUNS: AtomicU64 = AtomicU64::new(0);
            let request = RunRequest {
                id: format!(
                    "build-{}-{}",
                    std::process::id(),
                    RUNS.fetch_add(1, Ordering::Relaxed)
                ),
                lowers: &lowers,
                upper: &upper,
                work: &work,
                args: args.clone(),
                env,
                cwd: if self.state.config.working_dir.is_empty() {
                    "/".into()
                } else {
                    self.state.config.working_dir.clone()
                },
                user: self.state.config.user.clone(),
                network: run.network,
                mounts,
                output,
            };
            let code = cx.executor.run(request);
            let tail = collector.join().unwrap_or_default();
            // a RUN a signal killed cancels the build
            cx.opts.check_cancelled()?;
            let code = code.map_err(|e| {
                Error::step(self.file(), step.pos, format!("RUN could not start: {e}"))
            })?;
            if code != 0 {
                return Err(Error::RunFailed {
                    location: crate::error::Location {
                        file: self.file().to_string(),
                        pos: step.pos,
                    },
                    command: step.original.clone(),
                    code,
                    tail: tail.into_iter().collect(),
                });
            }
            // a RUN that changed nothing adds no layer (`empty_layer`, as buildkit)
            if fs::read_dir(&upper)
                .map_err(|e| Error::io("failed to list", &upper, e))?
                .next()
                .is_none()
            {
                return Ok((None, None));
            }
            let (layer, dir) = self.finish_layer(&upper)?;
            Ok((Some(layer), dir))
        })();
        drop((locks, files));
        for dir in [&upper, &work] {
            if dir.exists() {
                let _ = fs::remove_dir_all(dir);
            }
        }
        result
    }

    /// What a RUN's `--mount` flags become. Secrets and ssh agents that were not given
    /// are left out, unless `required`; a secret's `env=` and the first agent's
    /// SSH_AUTH_SOCK go into `env`.
    fn run_mounts(&mut self, step: &Step, run: &Run, env: &mut Vec<String>) -> Result<RunMounts> {
        let mut out = RunMounts::default();
        let mut lock_paths = Vec::new();
        for mount in &run.mounts {
            let made = match mount.kind {
                MountKind::Ssh => self.ssh_mount(step, mount, env)?,
                MountKind::Secret => self.secret_mount(step, mount, env, &mut out.files)?,
                MountKind::Tmpfs => Some(RunMount::Tmpfs {
                    target: mount.target.clone(),
                    size: mount.size,
                }),
                MountKind::Cache => Some(self.cache_mount(mount, &mut lock_paths)?),
                MountKind::Bind => {
                    let path = crate::context::clean(mount.source.as_deref().unwrap_or(""));
                    let source = match &mount.from {
                        // What COPY sees of the context: a union of a mask (whiteouts for
                        // what .dockerignore leaves out) over the context directory, whose
                        // writes (rw) go to a scratch upper, never into the context.
                        None => {
                            let mask = self.cx.store.tmp_path("context-mask");
                            fs::create_dir(&mask)
                                .map_err(|e| Error::io("failed to create", &mask, e))?;
                            out.files.0.push(mask.clone());
                            self.cx.context.write_mask(&mask)?;
                            MountSource::Layers {
                                lowers: vec![mask, self.cx.context.root.clone()],
                                path,
                            }
                        }
                        Some(from) => MountSource::Layers {
                            lowers: self.source_lowers(step, from)?,
                            path,
                        },
                    };
                    Some(RunMount::Bind {
                        source,
                        target: mount.target.clone(),
                        readonly: mount.readonly,
                    })
                }
            };
            out.mounts.extend(made);
        }
        // Each lock once (flock(2) on a second open of the same file would wait for
        // ourselves), and in one order for every RUN, so two stages never wait on each other.
        lock_paths.sort();
        lock_paths.dedup();
        for path in lock_paths {
            let file =
                fs::File::create(&path).map_err(|e| Error::io("failed to create", &path, e))?;
            file.lock()
                .map_err(|e| Error::io("failed to lock", &path, e))?;
            out.locks.push(file);
        }
        Ok(out)
    }

    /// `type=ssh`: the agent socket given with `--ssh ID=SOCKET`, bound at the target.
    fn ssh_mount(
        &self,
        step: &Step,
        mount: &Mount,
        env: &mut Vec<String>,
    ) -> Result<Option<RunMount>> {
        let id = mount.id.as_deref().unwrap_or("default");
        let Some(socket) = self.cx.opts.ssh.get(id) else {
            if mount.required {
                return Err(Error::step(
                    self.file(),
                    step.pos,
                    format!(
                        "RUN needs ssh agent {id:?}: give it with --ssh {id}=SOCKET (or --ssh {id} for $SSH_AUTH_SOCK)"
                    ),
                ));
            }
            return Ok(None);
        };
        // The first agent is the one ssh clients use.
        if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
            env.push(format!("SSH_AUTH_SOCK={}", mount.target));
        }
        // Read-write: talking to the agent is a connect(2) to the socket.
        Ok(Some(RunMount::Bind {
            source: MountSource::Host(socket.clone()),
            target: mount.target.clone(),
            readonly: false,
        }))
    }

    /// `type=secret`: the value given with `--secret`, in `env=` and/or a read-only file
    /// at the target (written to the store's tmp, listed in `files` to be removed).
    fn secret_mount(
        &self,
        step: &Step,
        mount: &Mount,
        env: &mut Vec<String>,
        files: &mut TempPaths,
    ) -> Result<Option<RunMount>> {
        let id = mount.id.as_deref().unwrap_or_default();
        let value = match self.cx.opts.secrets.get(id) {
            Some(secret) => secret
                .value()
                .map_err(|e| Error::step(self.file(), step.pos, format!("secret {id:?}: {e}")))?,
            None if mount.required => {
                return Err(Error::step(
                    self.file(),
                    step.pos,
                    format!(
                        "RUN needs secret {id:?}: give it with --secret id={id},src=FILE or id={id},env=VAR"
                    ),
                ));
            }
            None => return Ok(None),
        };
        if let Some(var) = &mount.env {
            env.retain(|e| e.split('=').next() != Some(var.as_str()));
            env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
        }
        if mount.target.is_empty() {
            return Ok(None);
        }
        let path = self.cx.store.tmp_path("secret");
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            files.0.push(path.clone());
            std::io::Write::write_all(&mut file, &value)?;
            fs::set_permissions(
                &path,
                fs::Permissions::from_mode(mount.mode.unwrap_or(0o400)),
            )?;
            chown(
                &path,
                Some(mount.uid.unwrap_or(0)),
                Some(mount.gid.unwrap_or(0)),
            )
        })();
        written.map_err(|e| Error::io("failed to write secret", &path, e))?;
        Ok(Some(RunMount::Bind {
            source: MountSource::Host(path),
            target: mount.target.clone(),
            readonly: true,
        }))
    }

    /// `type=cache`: a directory in the store that outlives builds, made with the mount's
    /// mode and owner; `sharing=locked` adds its lock file to `locks`.
    fn cache_mount(&self, mount: &Mount, locks: &mut Vec<PathBuf>) -> Result<RunMount> {
        let id = mount.id.clone().unwrap_or_else(|| mount.target.clone());
        let dir = super::cache_mount_dir(self.cx.store, &id);
        if !dir.exists() {
            fs::create_dir_all(&dir)
                .map_err(|e| Error::io("failed to create cache mount", &dir, e))?;
            let mode = mount.mode.unwrap_or(0o755);
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("failed to chmod", &dir, e))?;
            chown(
                &dir,
                Some(mount.uid.unwrap_or(0)),
                Some(mount.gid.unwrap_or(0)),
            )
            .map_err(|e| Error::io("failed to chown", &dir, e))?;
        }
        if mount.sharing == Sharing::Locked {
            locks.push(dir.with_extension("lock"));
        }
        Ok(RunMount::Bind {
            source: MountSource::Host(dir),
            target: mount.target.clone(),
            readonly: mount.readonly,
        })
    }

    /// Lower dirs of a `--from` stage or image.
    /// What a RUN's bind mounts show, for its cache key (BuildKit keys an ExecOp by its
    /// mounts' inputs): the content below a context path, the layers of a stage or image.
    fn binds_key(&mut self, step: &Step, run: &Run) -> Result<String> {
        let mut text = String::new();
        for mount in run.mounts.iter().filter(|m| m.kind == MountKind::Bind) {
            let path = crate::context::clean(mount.source.as_deref().unwrap_or(""));
            match &mount.from {
                None => {
                    let context = &self.cx.context;
                    let at = context.resolve(&path).unwrap_or(path);
                    text.push_str(&format!("context {at}\n"));
                    text.push_str(&context.subtree_key(&at)?);
                }
                Some(from) => {
                    text.push_str(&format!("from {from} {path}\n"));
                    // unpacked layers are named by their diff_id: the stage's content
                    for lower in self.source_lowers(step, from)? {
                        text.push_str(&lower.to_string_lossy());
                        text.push('\n');
                    }
                }
            }
        }
        Ok(text)
    }

    pub(crate) fn source_lowers(&mut self, step: &Step, from: &str) -> Result<Vec<PathBuf>> {
        let cx = self.cx;
        match cx.buildfile.stage_ref(step, self.index, from)? {
            Base::Stage(index) => {
                let mut state = self.done[index]
                    .clone()
                    .ok_or_else(|| Error::Other(format!("stage {index} was not built")))?;
                state.lowers(cx.store)
            }
            Base::Image(reference) => {
                let image = super::find_image(cx.store, cx.opts, &reference).map_err(|e| {
                    Error::step(
                        self.file(),
                        step.pos_of(from),
                        format!("--from={from}: no stage or image named {reference:?} ({e})"),
                    )
                })?;
                Ok(cx.store.layer_dirs(&image)?)
            }
            Base::Scratch => Ok(Vec::new()),
        }
    }
}

/// Whether a shell-form RUN is nothing but `<<NAME` (or `<<-NAME`, quoted or not).
fn is_bare_heredoc(text: &str, name: &str) -> bool {
    text.trim()
        .trim_start_matches("<<")
        .trim_start_matches('-')
        .trim_matches(['"', '\''])
        == name
}

/// A heredoc name made safe for a file name inside the container.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a stage starts from, for progress lines.
fn base_text(buildfile: &crate::stages::Buildfile, base: &Base) -> String {
    match base {
        Base::Scratch => "scratch".to_string(),
        Base::Stage(dep) => buildfile.stages[*dep]
            .name
            .clone()
            .unwrap_or_else(|| dep.to_string()),
        Base::Image(reference) => reference.clone(),
    }
}

/// An error of a step's own work, located at its instruction (errors that already name
/// a place in the Buildfile, and the store's, are kept as they are).
fn at_step(err: Error, file: &str, step: &Step) -> Error {
    match err {
        Error::Io { .. } | Error::Other(_) => Error::step(file, step.pos, err.to_string()),
        err => err,
    }
}

/// WORKDIR relative to the previous one.
fn workdir_path(current: &str, dir: &str) -> String {
    if dir.starts_with('/') {
        return format!("/{}", crate::context::clean(dir));
    }
    let base = if current.is_empty() { "/" } else { current };
    format!("/{}", crate::context::clean(&format!("{base}/{dir}")))
}

fn command_args(command: &Command, shell: &[String]) -> Vec<String> {
    match command {
        Command::Exec(args) => args.clone(),
        Command::Shell(text) => shell.iter().cloned().chain([text.clone()]).collect(),
    }
}

/// The config fields a RUN depends on besides env (user, workdir, shell).
fn config_key(state: &ImageState) -> Result<Vec<u8>> {
    serde_json::to_vec(&(
        &state.config.user,
        &state.config.working_dir,
        &state.config.shell,
    ))
    .map_err(|e| Error::Other(e.to_string()))
}

/// Instructions that change only the image's config, which no later step can see (RUN
/// sees ENV, ARG, USER, WORKDIR and SHELL, which stay in the chain of keys).
fn config_only(instruction: &Instruction) -> bool {
    matches!(
        instruction,
        Instruction::Label(_)
            | Instruction::Cmd(_)
            | Instruction::Entrypoint(_)
            | Instruction::Expose(_)
            | Instruction::StopSignal(_)
            | Instruction::Healthcheck(_)
            | Instruction::Maintainer(_)
            | Instruction::Onbuild(_)
            | Instruction::Volume(_)
    )
}

/// The history line of a step, buildkit style.
fn created_by(instruction: &Instruction, original: &str, state: &ImageState) -> String {
    match instruction {
        Instruction::Run(run) => match &run.command {
            Command::Exec(args) => {
                format!("RUN {}", serde_json::to_string(args).unwrap_or_default())
            }
            Command::Shell(text) => format!("RUN {} {text}", state.config.shell().join(" ")),
        },
        // Config instructions show their values expanded, as BuildKit's history does.
        Instruction::Env(pairs) | Instruction::Label(pairs) => {
            let mut line = instruction.keyword().to_string();
            for pair in pairs {
                line.push(' ');
                line.push_str(&word(&pair.key));
                line.push('=');
                line.push_str(&word(&pair.value));
            }
            line
        }
        Instruction::User(value) | Instruction::Workdir(value) | Instruction::StopSignal(value) => {
            format!("{} {value}", instruction.keyword())
        }
        Instruction::Expose(ports) => format!("EXPOSE {}", ports.join(" ")),
        Instruction::Volume(paths) => {
            format!(
                "VOLUME {}",
                serde_json::to_string(paths).unwrap_or_default()
            )
        }
        _ => original.to_string(),
    }
}

/// `text` as one Buildfile word: double-quoted when it is empty or holds blanks or quotes.
fn word(text: &str) -> String {
    if !text.is_empty() && !text.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        return text.to_string();
    }
    let mut quoted = String::from("\"");
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}
