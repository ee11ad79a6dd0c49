//! Typed instructions: what each of the 18 Buildfile instructions means, made from parser
//! nodes (`parse.rs`) and later expanded with the variables in scope (`crate::expand`).
//! Words that the builder expands are kept as written here (quotes included) until then.

mod parse;
mod words;

pub use parse::{instruction, instructions};
pub use words::{Word, split_words};

use crate::error::Pos;
use crate::parser::Heredoc;

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub pos: Pos,
    pub end_line: usize,
    /// The logical line as written (continuations joined).
    pub original: String,
    pub instruction: Instruction,
    /// (offset in `original`, position) per physical line piece.
    pub(crate) segments: Vec<(usize, Pos)>,
}

impl Step {
    /// The file position of the first occurrence of `text` in the instruction, else the
    /// instruction's own position.
    pub fn pos_of(&self, text: &str) -> Pos {
        let Some(offset) = self.original.find(text) else {
            return self.pos;
        };
        let mut best = self.pos;
        for &(start, pos) in &self.segments {
            if start <= offset {
                best = Pos {
                    line: pos.line,
                    column: pos.column + (offset - start),
                };
            }
        }
        best
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(Command),
    Entrypoint(Command),
    Copy(Copy),
    Add(Copy),
    Arg(Vec<ArgDecl>),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Maintainer(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Shell(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Onbuild(String),
}

impl Instruction {
    /// Upper-case keyword, as in history lines and progress output.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Arg(_) => "ARG",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Shell(_) => "SHELL",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild(_) => "ONBUILD",
        }
    }
}

/// `FROM [--platform=P] IMAGE [AS NAME]`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct From {
    pub platform: Option<String>,
    pub image: String,
    pub alias: Option<String>,
}

/// The exec (JSON) or shell form of RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// `RUN [--mount=...]... [--network=...] COMMAND`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Run {
    pub command: Command,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    pub network: Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    /// A build secret (`strata build --secret`): a read-only file, or an env variable,
    /// for one RUN; never in the layer or the cache key.
    Secret,
    /// An SSH agent socket (`strata build --ssh`), with SSH_AUTH_SOCK pointing at it.
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// One `--mount=type=...,target=...` of RUN (BuildKit's syntax).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mount {
    pub kind: MountKind,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub readonly: bool,
    pub sharing: Sharing,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Secrets and ssh: fail the RUN when it is not given (else it runs without).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Secrets: put the value in this environment variable instead of a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// One source of COPY or ADD.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Path(String),
    Heredoc(Heredoc),
}

/// `COPY`/`ADD [--from] [--chown] [--chmod] [--link] [--exclude]... SRC... DEST`
/// (`checksum` and `keep_git_dir` are ADD's).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Copy {
    pub sources: Vec<Source>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    pub link: bool,
    /// `COPY --parents`: each source keeps its path (after a `/./` pivot, if any) under
    /// the destination directory. (Left out of the cache key when unset, as before it
    /// existed.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// `ARG NAME[=DEFAULT]`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// One `key=value` of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval ...] CMD ...`; durations in nanoseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Healthcheck {
    None,
    Check {
        test: Command,
        #[serde(skip_serializing_if = "Option::is_none")]
        interval: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_period: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_interval: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retries: Option<u32>,
    },
}
