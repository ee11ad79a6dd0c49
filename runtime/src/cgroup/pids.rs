//! pids controller: `--pids-limit N` as pids.max (same file in v1 and v2), which makes
//! fork(2) fail with EAGAIN once the cgroup holds N tasks.

use std::path::Path;

use super::{Controller, write};
use crate::Limits;
use crate::error::Result;

pub struct Pids;

impl Controller for Pids {
    fn name(&self) -> &'static str {
        "pids"
    }

    fn wanted(&self, limits: &Limits) -> bool {
        limits.pids.is_some()
    }

    fn apply(&self, dir: &Path, limits: &Limits, _unified: bool) -> Result<()> {
        match limits.pids {
            Some(max) => write(dir, "pids.max", &max.to_string()),
            None => Ok(()),
        }
    }
}
