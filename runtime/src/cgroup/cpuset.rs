//! cpuset controller: `--cpuset-cpus` as cpuset.cpus. In v1 a new cpuset starts with
//! empty cpus and mems and refuses tasks, so every directory we create inherits both from
//! its parent first (`inherit`).

use std::path::Path;

use super::{Controller, write};
use crate::Limits;
use crate::error::Result;

pub struct Cpuset;

impl Controller for Cpuset {
    fn name(&self) -> &'static str {
        "cpuset"
    }

    fn wanted(&self, limits: &Limits) -> bool {
        limits.cpuset_cpus.is_some()
    }

    fn apply(&self, dir: &Path, limits: &Limits, _unified: bool) -> Result<()> {
        match &limits.cpuset_cpus {
            Some(cpus) => write(dir, "cpuset.cpus", cpus),
            None => Ok(()),
        }
    }
}

/// v1: copy cpuset.cpus / cpuset.mems from the parent into `dir` when they are empty.
pub fn inherit(dir: &Path, unified: bool) -> Result<()> {
    if unified {
        return Ok(());
    }
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let Ok(current) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        if current.trim().is_empty() {
            let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
            write(dir, file, value.trim())?;
        }
    }
    Ok(())
}
