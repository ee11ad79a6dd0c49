//! blkio / io controller: `--blkio-weight W` (10-1000) as v1 blkio.weight or
//! blkio.bfq.weight, v2 io.weight or io.bfq.weight, whichever the kernel offers. Weights
//! only exist with a proportional I/O scheduler (CFQ, BFQ); without one the weight is
//! dropped with a warning, as docker does ("Your kernel does not support Block I/O weight").

use std::path::Path;

use super::{Controller, write};
use crate::Limits;
use crate::error::{Error, Result};

pub struct Blkio;

impl Controller for Blkio {
    fn name(&self) -> &'static str {
        "blkio"
    }

    fn wanted(&self, limits: &Limits) -> bool {
        limits.blkio_weight.is_some()
    }

    fn apply(&self, dir: &Path, limits: &Limits, unified: bool) -> Result<()> {
        let Some(weight) = limits.blkio_weight else {
            return Ok(());
        };
        if !(10..=1000).contains(&weight) {
            return Err(Error::Spec(format!(
                "--blkio-weight must be in 10..=1000, got {weight}"
            )));
        }
        let candidates: [(&str, String); 2] = if unified {
            [
                ("io.weight", format!("default {weight}")),
                ("io.bfq.weight", format!("default {weight}")),
            ]
        } else {
            [
                ("blkio.weight", weight.to_string()),
                ("blkio.bfq.weight", weight.to_string()),
            ]
        };
        for (file, value) in &candidates {
            if dir.join(file).exists() {
                return write(dir, file, value);
            }
        }
        tracing::warn!(
            "kernel does not support block I/O weight (no {} in {}): weight discarded",
            candidates[0].0,
            dir.display()
        );
        Ok(())
    }
}
