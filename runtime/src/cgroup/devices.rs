//! devices controller (v1): the container may create device nodes (CAP_MKNOD is in
//! docker's set) but only open docker's default devices: null, zero, full, random,
//! urandom, tty, console, ptmx, the pts slaves and tun (moby `oci/devices_linux.go`,
//! runc's `AllowedDevices`). Without it, root in the container could mknod the host's
//! disk and read it. cgroup v2 does this with a BPF program, which strata does not load
//! yet: on a unified hierarchy this controller does nothing (user namespaces still forbid
//! mknod there).

use std::path::Path;

use super::{Controller, write};
use crate::Limits;
use crate::error::Result;

pub struct Devices;

/// docker's default device rules, in devices.allow syntax.
pub const ALLOWED: [&str; 12] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",    // null
    "c 1:5 rwm",    // zero
    "c 1:7 rwm",    // full
    "c 1:8 rwm",    // random
    "c 1:9 rwm",    // urandom
    "c 5:0 rwm",    // tty
    "c 5:1 rwm",    // console
    "c 5:2 rwm",    // ptmx
    "c 136:* rwm",  // pts slaves
    "c 10:200 rwm", // tun
];

impl Controller for Devices {
    fn name(&self) -> &'static str {
        "devices"
    }

    fn wanted(&self, _limits: &Limits) -> bool {
        true
    }

    fn apply(&self, dir: &Path, limits: &Limits, unified: bool) -> Result<()> {
        if unified {
            return Ok(());
        }
        // A privileged container opens any device: "a" where the parent allows all. A
        // parent that does not (strata inside a restricted container) keeps its rules.
        if limits.privileged {
            if let Err(err) = write(dir, "devices.allow", "a") {
                tracing::warn!("a privileged container keeps its parent's device rules: {err}");
            }
            return Ok(());
        }
        write(dir, "devices.deny", "a")?;
        for rule in ALLOWED {
            write(dir, "devices.allow", rule)?;
        }
        Ok(())
    }
}
