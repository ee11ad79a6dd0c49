//! memory controller: `--memory` as a hard limit with no swap on top (v1
//! memory.limit_in_bytes + memory.memsw.limit_in_bytes, v2 memory.max + memory.swap.max = 0),
//! so an allocation past the limit meets the OOM killer instead of swap; OOM kills are
//! counted from v1 memory.oom_control / v2 memory.events (`oom_kill N`).

use std::path::Path;

use super::{Controller, write};
use crate::Limits;
use crate::error::Result;

pub struct Memory;

impl Controller for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn wanted(&self, limits: &Limits) -> bool {
        limits.memory.is_some()
    }

    fn apply(&self, dir: &Path, limits: &Limits, unified: bool) -> Result<()> {
        let Some(bytes) = limits.memory else {
            return Ok(());
        };
        let bytes = bytes.to_string();
        if unified {
            write(dir, "memory.max", &bytes)?;
            if dir.join("memory.swap.max").exists() {
                write(dir, "memory.swap.max", "0")?;
            }
        } else {
            // The memory limit first: memsw must never be below it.
            write(dir, "memory.limit_in_bytes", &bytes)?;
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                write(dir, "memory.memsw.limit_in_bytes", &bytes)?;
            }
        }
        Ok(())
    }
}

/// The `oom_kill N` counter of memory.events (v2) or memory.oom_control (v1).
pub fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.strip_prefix("oom_kill "))
        .filter_map(|count| count.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_from_v1_and_v2() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(oom_kill_count(""), 0);
    }
}
