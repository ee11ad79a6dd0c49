//! How RUN steps execute. The builder knows no mounts or namespaces: it hands an
//! `Executor` the layers, a fresh upper and work dir, and the process to start; the
//! `strata` binary implements it with strata-unionfs + strata-runtime, tests may use
//! anything that honours the contract (the upper ends up in overlay on-disk form).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use crate::instructions::Network;

/// Where a bind mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host directory or file (the build context, a persistent cache directory).
    Host(PathBuf),
    /// `path` inside the read-only union of `lowers` (top first): a stage or an image.
    Layers { lowers: Vec<PathBuf>, path: String },
}

/// An extra mount for one RUN (`RUN --mount=...`); `target` is absolute in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    Bind {
        source: MountSource,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

/// One RUN to execute.
#[derive(Debug)]
pub struct RunRequest<'a> {
    /// A unique id for this run (names cgroups, mount points).
    pub id: String,
    /// The image so far, top layer first.
    pub lowers: &'a [PathBuf],
    /// Empty directories: changes land in `upper` in overlay on-disk form.
    pub upper: &'a Path,
    pub work: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub network: Network,
    pub mounts: Vec<RunMount>,
    /// stdout and stderr of the process both go here.
    pub output: OwnedFd,
}

/// Runs RUN steps. `Sync`: independent stages run at the same time.
pub trait Executor: Sync {
    /// Runs the process to completion and returns its exit code (128+N for signal N).
    fn run(&self, request: RunRequest<'_>) -> crate::Result<i32>;
}
