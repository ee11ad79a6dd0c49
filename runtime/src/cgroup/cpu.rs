//! cpu controller: `--cpus N` as a CFS quota over the default 100 ms period, as docker
//! does (`--cpus 0.5` = 50000/100000): v1 cpu.cfs_quota_us + cpu.cfs_period_us, v2 cpu.max.

use std::path::Path;

use super::{Controller, write};
use crate::Limits;
use crate::error::{Error, Result};

pub struct Cpu;

pub const PERIOD_US: u64 = 100_000;

/// The quota in microseconds per `PERIOD_US` for `cpus` CPUs.
pub fn quota_us(cpus: f64) -> u64 {
    (cpus * PERIOD_US as f64).round() as u64
}

impl Controller for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn wanted(&self, limits: &Limits) -> bool {
        limits.cpus.is_some()
    }

    fn apply(&self, dir: &Path, limits: &Limits, unified: bool) -> Result<()> {
        let Some(cpus) = limits.cpus else {
            return Ok(());
        };
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(Error::Spec(format!(
                "--cpus must be a positive number, got {cpus}"
            )));
        }
        let quota = quota_us(cpus).max(1000);
        if unified {
            write(dir, "cpu.max", &format!("{quota} {PERIOD_US}"))
        } else {
            write(dir, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
            write(dir, "cpu.cfs_quota_us", &quota.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_follows_docker() {
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(1.5), 150_000);
        assert_eq!(quota_us(2.0), 200_000);
    }
}
