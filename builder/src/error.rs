//! The builder's one error type. Buildfile errors carry `file:line:column` and the text
//! at fault (buildkit `parser.WithLocation`); build errors name the step that failed.

use std::fmt;
use std::path::PathBuf;

/// A position in a Buildfile: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// `file:line:column`, as every Buildfile error prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub pos: Pos,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Buildfile text is wrong: syntax, flags, expansion, stages.
    #[error("{location}: {message}")]
    Syntax { location: Location, message: String },
    /// A step failed while building; `location` is the instruction.
    #[error("{location}: {message}")]
    Step { location: Location, message: String },
    #[error("{location}: RUN exited with code {code}: {command}{}", tail_text(.tail))]
    RunFailed {
        location: Location,
        command: String,
        code: i32,
        tail: Vec<String>,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid ignore pattern {pattern:?} in {file}: {message}")]
    Ignore {
        file: PathBuf,
        pattern: String,
        message: String,
    },
    /// A signal stopped the build (`BuildOptions::cancel`).
    #[error("build cancelled by signal {0}")]
    Cancelled(i32),
    #[error(transparent)]
    Store(#[from] strata_store::Error),
    #[error("{0}")]
    Other(String),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nlast lines of output:");
    for line in tail {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

impl From<crate::tree::SymlinkLoop> for Error {
    fn from(err: crate::tree::SymlinkLoop) -> Self {
        Error::Other(err.to_string())
    }
}

impl Error {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub fn syntax(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Error::Syntax {
            location: Location {
                file: file.to_string(),
                pos,
            },
            message: message.into(),
        }
    }

    pub fn step(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Error::Step {
            location: Location {
                file: file.to_string(),
                pos,
            },
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
