//! The crate's one error type. Mount-level failures carry the path they concern; the
//! filesystem's per-request failures never reach here (they are errnos, see `union`).

use std::path::PathBuf;

/// Everything the mount API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown union driver {0:?} (expected fuse, overlay or auto)")]
    UnknownDriver(String),
    #[error("invalid mount spec: {0}")]
    Spec(String),
    #[error("failed to mount {target} with the {driver} driver: {source}")]
    Mount {
        driver: &'static str,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to unmount {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to unmount {0}: nothing is mounted there")]
    NotMounted(PathBuf),
    #[error("fuse daemon for {target} failed: {message}")]
    Daemon { target: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}
