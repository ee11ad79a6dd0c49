//! The one error type of strata-runtime. Every variant names the path, the syscall or
//! the container step that failed, so `strata run` can print a useful 125 message.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall made by the parent (strata's side of the container).
    #[error("{op} failed: {source}")]
    Sys { op: String, source: nix::Error },

    /// A file the runtime reads or writes (cgroup files, id maps, /etc/passwd).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The spec cannot be run as given.
    #[error("invalid container spec: {0}")]
    Spec(String),

    /// The user or group could not be resolved in the container's /etc/passwd or /etc/group.
    #[error("unable to find {kind} {name}: no matching entries in {file}")]
    UnknownId {
        kind: &'static str,
        name: String,
        file: &'static str,
    },

    /// A failure inside the container before exec, reported over the sync socket.
    #[error("container setup failed: {0}")]
    Setup(String),

    /// A cgroup controller could not be set up.
    #[error("cgroup {name}: {message}")]
    Cgroup { name: String, message: String },

    /// A signal strata got killed the container (`Spec::kill_on_signal`).
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
}

impl Error {
    pub(crate) fn sys(op: impl Into<String>, source: nix::Error) -> Error {
        Error::Sys {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
