//! Stages and their graph, ARG scoping and the expansion of each instruction.
//!
//! ARGs before the first FROM are "meta" args, visible only in FROM lines; inside a
//! stage an `ARG NAME` brings a value in (build arg, else its default, else the meta
//! arg's). ENV overrides ARG of the same name. Every word of an instruction is expanded
//! with the variables as they were before the instruction (so `ENV a=1 b=$a` sees the
//! old `a`). Expanded: FROM, COPY, ADD, ENV, LABEL, EXPOSE, VOLUME, USER, WORKDIR,
//! STOPSIGNAL, ARG defaults and RUN's mount fields; not RUN/CMD/ENTRYPOINT/SHELL/
//! HEALTHCHECK commands (the shell sees those).

use std::collections::BTreeMap;

use crate::error::{Error, Pos, Result};
use crate::expand::Lexer;
use crate::instructions::{self, ArgDecl, Copy, From, Instruction, KeyValue, Source, Step};
use crate::parser;

/// A parsed Buildfile split into stages.
#[derive(Debug, Clone)]
pub struct Buildfile {
    pub file: String,
    pub escape: char,
    pub meta_args: Vec<(Step, ArgDecl)>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    pub name: Option<String>,
    pub from_step: Step,
    pub from: From,
    pub steps: Vec<Step>,
}

/// What a stage builds on: another stage of this file, or an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Stage(usize),
    Image(String),
    Scratch,
}

/// Parses `text` into stages.
pub fn load(text: &str, file: &str) -> Result<Buildfile> {
    let ast = parser::parse(text, file)?;
    let steps = instructions::instructions(&ast)?;
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for step in steps {
        match &step.instruction {
            Instruction::From(from) => {
                if let Some(name) = &from.alias
                    && stages.iter().any(|s| s.name.as_deref() == Some(name))
                {
                    return Err(Error::syntax(
                        file,
                        step.pos_of(name),
                        format!("duplicate stage name {name:?}"),
                    ));
                }
                stages.push(Stage {
                    index: stages.len(),
                    name: from.alias.clone(),
                    from: from.clone(),
                    from_step: step,
                    steps: Vec::new(),
                });
            }
            Instruction::Arg(decls) if stages.is_empty() => {
                for decl in decls {
                    meta_args.push((step.clone(), decl.clone()));
                }
            }
            _ => match stages.last_mut() {
                Some(stage) => stage.steps.push(step),
                None => {
                    return Err(Error::syntax(
                        file,
                        step.pos,
                        format!(
                            "{} before the first FROM: only ARG may come before FROM",
                            step.instruction.keyword()
                        ),
                    ));
                }
            },
        }
    }
    if stages.is_empty() {
        return Err(Error::syntax(
            file,
            Pos { line: 1, column: 1 },
            "no FROM instruction: a Buildfile needs at least one stage",
        ));
    }
    Ok(Buildfile {
        file: file.to_string(),
        escape: ast.directives.escape,
        meta_args,
        stages,
    })
}

/// Variables in scope while a stage is built.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// ARGs declared in this stage (name -> value; `None` = declared without a value).
    pub args: BTreeMap<String, Option<String>>,
    /// The image's environment, in order.
    pub env: Vec<(String, String)>,
}

impl Scope {
    pub fn lookup(&self, name: &str) -> Option<String> {
        if let Some((_, value)) = self.env.iter().find(|(key, _)| key == name) {
            return Some(value.clone());
        }
        self.args.get(name).cloned().flatten()
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }

    /// `KEY=VALUE` for RUN: the image env plus the ARGs with a value (ENV wins).
    pub fn run_env(&self) -> Vec<String> {
        let mut out: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (key, value) in &self.args {
            if let Some(value) = value
                && !self.env.iter().any(|(k, _)| k == key)
            {
                out.push(format!("{key}={value}"));
            }
        }
        out
    }
}

/// This machine's architecture as OCI names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// This machine's platform, `linux/amd64`: what images are pulled and built for.
pub fn host_platform() -> String {
    format!("linux/{}", host_arch())
}

/// The args BuildKit defines for every build: in the global scope (FROM lines) as they
/// are, in a stage once declared.
pub(crate) const AUTOMATIC_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// The value of automatic platform arg `name`.
fn automatic_arg(name: &str) -> Option<String> {
    let arch = host_arch();
    match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => Some(format!("linux/{arch}")),
        "TARGETOS" | "BUILDOS" => Some("linux".into()),
        "TARGETARCH" | "BUILDARCH" => Some(arch.into()),
        "TARGETVARIANT" | "BUILDVARIANT" => Some(String::new()),
        _ => None,
    }
}

impl Buildfile {
    fn lexer(&self) -> Lexer {
        Lexer::new(self.escape)
    }

    fn expand(&self, step: &Step, word: &str, scope: &Scope) -> Result<String> {
        self.lexer()
            .word(word, &|name| scope.lookup(name))
            .map_err(|e| {
                let pos = step.pos_of(word);
                let pos = if step.original.contains(word) {
                    Pos {
                        line: pos.line,
                        column: pos.column + e.offset,
                    }
                } else {
                    pos
                };
                Error::syntax(
                    &self.file,
                    pos,
                    format!("failed to expand {word:?}: {}", e.message),
                )
            })
    }

    /// The meta-arg scope (ARGs before the first FROM) given the build args.
    pub fn meta_scope(&self, build_args: &BTreeMap<String, String>) -> Result<Scope> {
        let mut scope = Scope::default();
        // The platform args are in the global scope undeclared, for `FROM
        // --platform=$BUILDPLATFORM` (BuildKit's rule); a stage still declares them to see them.
        for name in AUTOMATIC_ARGS {
            let value = build_args
                .get(name)
                .cloned()
                .or_else(|| automatic_arg(name));
            scope.args.insert(name.to_string(), value);
        }
        for (step, decl) in &self.meta_args {
            let value = self.arg_value(step, decl, build_args, &scope, &Scope::default())?;
            scope.args.insert(decl.name.clone(), value);
        }
        Ok(scope)
    }

    fn arg_value(
        &self,
        step: &Step,
        decl: &ArgDecl,
        build_args: &BTreeMap<String, String>,
        scope: &Scope,
        meta: &Scope,
    ) -> Result<Option<String>> {
        if let Some(value) = build_args.get(&decl.name) {
            return Ok(Some(value.clone()));
        }
        if let Some(default) = &decl.default {
            return Ok(Some(self.expand(step, default, scope)?));
        }
        if let Some(value) = meta.args.get(&decl.name) {
            return Ok(value.clone());
        }
        Ok(automatic_arg(&decl.name))
    }

    /// The stage's FROM, expanded with the meta args.
    pub fn base(&self, stage: &Stage, meta: &Scope) -> Result<(Base, Option<String>)> {
        let image = self.expand(&stage.from_step, &stage.from.image, meta)?;
        let platform = match &stage.from.platform {
            Some(platform) => Some(self.expand(&stage.from_step, platform, meta)?),
            None => None,
        };
        if image.is_empty() {
            return Err(Error::syntax(
                &self.file,
                stage.from_step.pos,
                format!("FROM {:?} expands to an empty image name", stage.from.image),
            ));
        }
        if image == "scratch" {
            return Ok((Base::Scratch, platform));
        }
        let lower = image.to_ascii_lowercase();
        if let Some(earlier) = self.stages[..stage.index]
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Ok((Base::Stage(earlier.index), platform));
        }
        Ok((Base::Image(image), platform))
    }

    /// Resolves a `--from` value seen in stage `current`: a stage name, a stage index, or
    /// an image reference.
    pub fn stage_ref(&self, step: &Step, current: usize, value: &str) -> Result<Base> {
        let lower = value.to_ascii_lowercase();
        if let Some(stage) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            if stage.index >= current {
                return Err(Error::syntax(
                    &self.file,
                    step.pos_of(value),
                    format!(
                        "--from={value}: stage {value:?} is not defined before this stage (circular or forward reference)"
                    ),
                ));
            }
            return Ok(Base::Stage(stage.index));
        }
        if let Ok(index) = value.parse::<usize>() {
            if index >= current {
                return Err(Error::syntax(
                    &self.file,
                    step.pos_of(value),
                    format!(
                        "--from={value}: unknown stage {value:?}: only stages 0..{} are defined before this one",
                        current.saturating_sub(1)
                    ),
                ));
            }
            return Ok(Base::Stage(index));
        }
        Ok(Base::Image(value.to_string()))
    }

    /// Index of `--target`, or the last stage.
    pub fn target(&self, target: Option<&str>) -> Result<usize> {
        match target {
            None => Ok(self.stages.len() - 1),
            Some(name) => {
                let lower = name.to_ascii_lowercase();
                self.stages
                    .iter()
                    .find(|s| s.name.as_deref() == Some(lower.as_str()))
                    .map(|s| s.index)
                    .ok_or_else(|| {
                        let names: Vec<&str> = self
                            .stages
                            .iter()
                            .filter_map(|s| s.name.as_deref())
                            .collect();
                        Error::Other(format!(
                            "{}: target stage {name:?} could not be found (stages: {})",
                            self.file,
                            names.join(", ")
                        ))
                    })
            }
        }
    }

    /// The stages `stage` needs directly (its base and every `--from`).
    pub fn dependencies(
        &self,
        stage: &Stage,
        meta: &Scope,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Vec<usize>> {
        let mut deps = Vec::new();
        if let (Base::Stage(index), _) = self.base(stage, meta)? {
            deps.push(index);
        }
        // --from values may use ARGs: expand them with the meta args and build args.
        let mut scope = meta.clone();
        for (key, value) in build_args {
            scope.args.insert(key.clone(), Some(value.clone()));
        }
        for step in &stage.steps {
            let froms: Vec<&String> = match &step.instruction {
                Instruction::Copy(copy) => copy.from.iter().collect(),
                Instruction::Run(run) => {
                    run.mounts.iter().filter_map(|m| m.from.as_ref()).collect()
                }
                _ => Vec::new(),
            };
            for from in froms {
                let value = self.expand(step, from, &scope)?;
                if let Base::Stage(index) = self.stage_ref(step, stage.index, &value)? {
                    deps.push(index);
                }
            }
        }
        deps.sort_unstable();
        deps.dedup();
        Ok(deps)
    }

    /// Stages reachable from `target`, in dependency order (dependencies first).
    pub fn reachable(
        &self,
        target: usize,
        meta: &Scope,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Vec<usize>> {
        let mut needed = vec![false; self.stages.len()];
        let mut stack = vec![target];
        while let Some(index) = stack.pop() {
            if needed[index] {
                continue;
            }
            needed[index] = true;
            stack.extend(self.dependencies(&self.stages[index], meta, build_args)?);
        }
        Ok((0..self.stages.len()).filter(|&i| needed[i]).collect())
    }

    /// Expands `step` with `scope`, then applies its effect on the scope (ARG, ENV).
    /// Returns the instruction as it will run.
    pub fn expand_step(
        &self,
        step: &Step,
        scope: &mut Scope,
        meta: &Scope,
        build_args: &BTreeMap<String, String>,
    ) -> Result<Instruction> {
        let before = scope.clone();
        let word = |text: &str| self.expand(step, text, &before);
        let option = |text: &Option<String>| -> Result<Option<String>> {
            text.as_deref().map(word).transpose()
        };
        let instruction = match &step.instruction {
            Instruction::From(from) => Instruction::From(from.clone()),
            Instruction::Run(run) => {
                let mut run = run.clone();
                for mount in &mut run.mounts {
                    mount.target = word(&mount.target)?;
                    mount.source = option(&mount.source)?;
                    mount.from = option(&mount.from)?;
                    mount.id = option(&mount.id)?;
                }
                Instruction::Run(run)
            }
            Instruction::Copy(copy) => Instruction::Copy(self.expand_copy(step, copy, &before)?),
            Instruction::Add(copy) => Instruction::Add(self.expand_copy(step, copy, &before)?),
            Instruction::Arg(decls) => {
                let mut out = Vec::new();
                for decl in decls {
                    let value = self.arg_value(step, decl, build_args, &before, meta)?;
                    scope.args.insert(decl.name.clone(), value.clone());
                    out.push(ArgDecl {
                        name: decl.name.clone(),
                        default: value,
                    });
                }
                Instruction::Arg(out)
            }
            Instruction::Env(pairs) => {
                let pairs = self.expand_pairs(step, pairs, &before)?;
                for pair in &pairs {
                    scope.set_env(&pair.key, &pair.value);
                }
                Instruction::Env(pairs)
            }
            Instruction::Label(pairs) => {
                Instruction::Label(self.expand_pairs(step, pairs, &before)?)
            }
            Instruction::Expose(ports) => {
                // Each word may expand to several (`ARG PORTS="80 443"`), a range to one
                // port each, as Docker stores them.
                let mut out = Vec::new();
                for port in ports {
                    for expanded in word(port)?.split_whitespace() {
                        let keys = port_keys(expanded).ok_or_else(|| {
                            Error::syntax(
                                &self.file,
                                step.pos_of(port),
                                format!(
                                    "invalid port {expanded:?}: PORT[-PORT][/tcp|/udp|/sctp], as EXPOSE 80 53/udp 8000-8010"
                                ),
                            )
                        })?;
                        out.extend(keys);
                    }
                }
                Instruction::Expose(out)
            }
            Instruction::Volume(paths) => {
                Instruction::Volume(paths.iter().map(|p| word(p)).collect::<Result<_>>()?)
            }
            Instruction::User(user) => Instruction::User(word(user)?),
            Instruction::Workdir(dir) => Instruction::Workdir(word(dir)?),
            Instruction::StopSignal(signal) => {
                let expanded = word(signal)?;
                if !is_signal(&expanded) {
                    return Err(Error::syntax(
                        &self.file,
                        step.pos_of(signal),
                        format!(
                            "invalid signal {expanded:?}: a name such as SIGTERM or TERM, or a number"
                        ),
                    ));
                }
                Instruction::StopSignal(expanded)
            }
            other => other.clone(),
        };
        Ok(instruction)
    }

    fn expand_pairs(
        &self,
        step: &Step,
        pairs: &[KeyValue],
        scope: &Scope,
    ) -> Result<Vec<KeyValue>> {
        pairs
            .iter()
            .map(|pair| {
                Ok(KeyValue {
                    key: self.expand(step, &pair.key, scope)?,
                    value: self.expand(step, &pair.value, scope)?,
                })
            })
            .collect()
    }

    fn expand_copy(&self, step: &Step, copy: &Copy, scope: &Scope) -> Result<Copy> {
        let word = |text: &str| self.expand(step, text, scope);
        let option = |text: &Option<String>| -> Result<Option<String>> {
            text.as_deref().map(word).transpose()
        };
        let mut sources = Vec::new();
        for source in &copy.sources {
            sources.push(match source {
                Source::Path(path) => Source::Path(word(path)?),
                Source::Heredoc(doc) if doc.expand => {
                    let mut doc = doc.clone();
                    doc.content = self.expand_heredoc(step, &doc.content, scope)?;
                    Source::Heredoc(doc)
                }
                Source::Heredoc(doc) => Source::Heredoc(doc.clone()),
            });
        }
        Ok(Copy {
            sources,
            dest: word(&copy.dest)?,
            from: option(&copy.from)?,
            chown: option(&copy.chown)?,
            // expanded to nothing (`--chmod=$MODE`, MODE unset): no --chmod, as BuildKit
            chmod: option(&copy.chmod)?.filter(|mode| !mode.is_empty()),
            link: copy.link,
            parents: copy.parents,
            excludes: copy
                .excludes
                .iter()
                .map(|e| word(e))
                .collect::<Result<_>>()?,
            checksum: option(&copy.checksum)?,
        })
    }

    /// Heredoc bodies expand `$V` and `${V...}` but keep quotes (they are file content), as
    /// BuildKit's do; their escape is always `\\`, whatever `# escape=` says.
    fn expand_heredoc(&self, step: &Step, content: &str, scope: &Scope) -> Result<String> {
        Lexer::new('\\')
            .heredoc(content, &|name| scope.lookup(name))
            .map_err(|e| Error::syntax(&self.file, step.pos, format!("heredoc: {}", e.message)))
    }
}

/// A readable dump of every stage with its instructions expanded (no base image env):
/// the golden parser tests compare this.
pub fn dump(buildfile: &Buildfile, build_args: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let meta = buildfile.meta_scope(build_args)?;
    for (step, decl) in &buildfile.meta_args {
        out.push_str(&format!(
            "{} meta ARG {}={:?}\n",
            step.pos,
            decl.name,
            meta.args.get(&decl.name).cloned().flatten()
        ));
    }
    let mut envs: Vec<Scope> = Vec::new();
    for stage in &buildfile.stages {
        let (base, platform) = buildfile.base(stage, &meta)?;
        let deps = buildfile.dependencies(stage, &meta, build_args)?;
        out.push_str(&format!(
            "stage {} {:?} from {:?}{} deps {:?}\n",
            stage.index,
            stage.name.as_deref().unwrap_or(""),
            base,
            platform
                .map(|p| format!(" platform {p}"))
                .unwrap_or_default(),
            deps
        ));
        let mut scope = Scope::default();
        if let Base::Stage(index) = base {
            scope.env = envs[index].env.clone();
        }
        for step in &stage.steps {
            let instruction = buildfile.expand_step(step, &mut scope, &meta, build_args)?;
            let json = serde_json::to_string(&instruction).unwrap_or_default();
            out.push_str(&format!(
                "  {} {} {}\n",
                step.pos,
                instruction.keyword(),
                json
            ));
        }
        envs.push(scope);
    }
    Ok(out)
}

/// A Linux signal as STOPSIGNAL takes it (BuildKit's signal.ParseSignal): a name with or
/// without SIG, any case, RTMIN+N / RTMAX-N, or a number from 1 to 64.
fn is_signal(text: &str) -> bool {
    const NAMES: [&str; 32] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR",
    ];
    if let Ok(number) = text.parse::<u32>() {
        return (1..=64).contains(&number);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: &str, sign: char| {
        name.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(sign)
                    .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 30))
        })
    };
    NAMES.contains(&name) || name == "SYS" || realtime("RTMIN", '+') || realtime("RTMAX", '-')
}

/// The `PORT/PROTOCOL` keys of an EXPOSE word (`PORT` or `PORT-PORT`, with `/tcp`,
/// `/udp` or `/sctp`, tcp when none); None when it is not one.
fn port_keys(text: &str) -> Option<Vec<String>> {
    let (range, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let port = |p: &str| {
        (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
    };
    let (low, high) = match range.split_once('-') {
        Some((low, high)) => (port(low)?, port(high)?),
        None => (port(range)?, port(range)?),
    };
    (low <= high).then(|| (low..=high).map(|p| format!("{p}/{protocol}")).collect())
}
