//! Capabilities: the container keeps Docker's default set (moby `oci/caps/defaults.go`)
//! in its bounding, permitted, effective and inheritable sets; everything else is dropped
//! from the bounding set so not even a setuid binary can get it back.

/// Capability numbers from linux/capability.h.
pub const CHOWN: u32 = 0;
pub const DAC_OVERRIDE: u32 = 1;
pub const FOWNER: u32 = 3;
pub const FSETID: u32 = 4;
pub const KILL: u32 = 5;
pub const SETGID: u32 = 6;
pub const SETUID: u32 = 7;
pub const SETPCAP: u32 = 8;
pub const NET_BIND_SERVICE: u32 = 10;
pub const NET_RAW: u32 = 13;
pub const SYS_CHROOT: u32 = 18;
pub const MKNOD: u32 = 27;
pub const AUDIT_WRITE: u32 = 29;
pub const SETFCAP: u32 = 31;

/// Docker's default capability set.
pub const DOCKER_DEFAULT: [u32; 14] = [
    CHOWN,
    DAC_OVERRIDE,
    FSETID,
    FOWNER,
    MKNOD,
    NET_RAW,
    SETGID,
    SETUID,
    SETFCAP,
    SETPCAP,
    NET_BIND_SERVICE,
    SYS_CHROOT,
    KILL,
    AUDIT_WRITE,
];

/// The default set as a 64-bit mask.
pub fn default_mask() -> u64 {
    DOCKER_DEFAULT
        .iter()
        .fold(0, |mask, cap| mask | (1u64 << cap))
}

/// The highest capability number the running kernel knows (/proc/sys/kernel/cap_last_cap).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_matches_docker() {
        // 0x a80425fb is the CapEff docker shows for `docker run busybox grep Cap /proc/self/status`.
        assert_eq!(default_mask(), 0xa80425fb);
    }
}
