//! Build progress as events: the binary turns them into one plain line per step, or bars
//! and spinners on a terminal. The builder never prints.

use std::time::Duration;

/// Which step an event is about.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// Stage name or index, as `[build 2/5]` shows it.
    pub stage: String,
    pub number: usize,
    pub total: usize,
    /// The instruction after expansion, e.g. `RUN make`.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Taken from the build cache: nothing ran.
    Cached,
    /// Executed, in this much time.
    Done(Duration),
}

pub trait Progress: Send + Sync {
    fn step_started(&self, _step: &StepInfo) {}
    /// One line of a RUN's output.
    fn step_output(&self, _step: &StepInfo, _line: &str) {}
    fn step_finished(&self, _step: &StepInfo, _outcome: Outcome) {}
    /// Free-form note (e.g. "exporting image").
    fn note(&self, _text: &str) {}
}

/// Progress that shows nothing (`-q`, tests).
pub struct Silent;

impl Progress for Silent {}
