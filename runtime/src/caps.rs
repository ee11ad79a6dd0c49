//! Capabilities: the container keeps Docker's default set (moby `oci/caps/defaults.go`),
//! or that set tweaked by `--cap-add` / `--cap-drop` as docker tweaks it ([`tweak`]), in
//! its bounding, permitted and effective sets; everything else is dropped from the
//! bounding set so not even a setuid binary can get it back.

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

/// Every capability's name (without `CAP_`), by number (linux/capability.h).
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability's number from its name: `NET_ADMIN`, `CAP_NET_ADMIN`, any case.
pub fn number(name: &str) -> Result<u32, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|n| n as u32)
        .ok_or_else(|| format!("unknown capability {name:?}"))
}

/// The set a container gets from docker's `--cap-add` and `--cap-drop` (moby's
/// TweakCapabilities): `--cap-add ALL` is every capability but the dropped ones; else
/// `--cap-drop ALL` leaves only the added ones; else the default set less the dropped,
/// plus the added. Capabilities above `last_cap` (unknown to the running kernel) are left
/// out.
pub fn tweak(add: &[String], drop: &[String], last_cap: u32) -> Result<u64, String> {
    let all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let to_mask = |list: &[String]| -> Result<u64, String> {
        list.iter()
            .filter(|c| !c.eq_ignore_ascii_case("ALL"))
            .map(|c| number(c).map(|n| 1u64 << n))
            .try_fold(0, |mask, bit| bit.map(|bit| mask | bit))
    };
    let (added, dropped) = (to_mask(add)?, to_mask(drop)?);
    let known = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let mask = if all(add) {
        known & !dropped
    } else if all(drop) {
        added
    } else {
        (default_mask() & !dropped) | added
    };
    Ok(mask & known)
}

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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_the_kernels_numbers() {
        assert_eq!(number("chown"), Ok(CHOWN));
        assert_eq!(number("CAP_SETFCAP"), Ok(SETFCAP));
        assert_eq!(number("sys_admin"), Ok(21));
        assert_eq!(number("CHECKPOINT_RESTORE"), Ok(40));
        assert!(number("SYS_WIZARD").unwrap_err().contains("SYS_WIZARD"));
    }

    #[test]
    fn add_and_drop_as_docker_tweaks_them() {
        let none: Vec<String> = Vec::new();
        assert_eq!(tweak(&none, &none, 40), Ok(default_mask()));
        let admin = 1 << 12;
        assert_eq!(
            tweak(&names(&["NET_ADMIN"]), &names(&["chown"]), 40),
            Ok((default_mask() | admin) & !1)
        );
        // drop ALL: only what is added
        assert_eq!(
            tweak(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"]), 40),
            Ok(1 << NET_BIND_SERVICE)
        );
        // add ALL: everything the kernel knows, less what is dropped
        assert_eq!(
            tweak(&names(&["all"]), &names(&["SYS_ADMIN"]), 40),
            Ok(((1u64 << 41) - 1) & !(1 << 21))
        );
        // a capability the kernel does not know is left out
        assert_eq!(
            tweak(&names(&["CHECKPOINT_RESTORE"]), &none, 39),
            Ok(default_mask())
        );
        assert!(tweak(&names(&["NOPE"]), &none, 40).is_err());
    }

    #[test]
    fn default_mask_matches_docker() {
        // 0x a80425fb is the CapEff docker shows for `docker run busybox grep Cap /proc/self/status`.
        assert_eq!(default_mask(), 0xa80425fb);
    }
}
