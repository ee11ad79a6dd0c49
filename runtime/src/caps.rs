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
/// plus the added. Only capabilities in `held` (strata's own bounding set, [`held`]) can
/// be given: ALL means those, as podman's does; one named that is not held is an error.
pub fn tweak(add: &[String], drop: &[String], held: u64) -> Result<u64, String> {
    let all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let to_mask = |list: &[String]| -> Result<u64, String> {
        list.iter()
            .filter(|c| !c.eq_ignore_ascii_case("ALL"))
            .map(|c| number(c).map(|n| 1u64 << n))
            .try_fold(0, |mask, bit| bit.map(|bit| mask | bit))
    };
    let (added, dropped) = (to_mask(add)?, to_mask(drop)?);
    if let Some(missing) = (0..64).find(|&n| added & !held & (1u64 << n) != 0) {
        let name = NAMES.get(missing).copied().unwrap_or("?");
        return Err(format!(
            "CAP_{name} is not in strata's own bounding set: no container can be given it"
        ));
    }
    let mask = if all(add) {
        held & !dropped
    } else if all(drop) {
        added
    } else {
        (default_mask() & !dropped) | added
    };
    Ok(mask & held)
}

/// The capabilities this process can hand on: its bounding set (CapBnd in
/// /proc/self/status), else every one the kernel knows.
pub fn held() -> u64 {
    let known = match last_cap() {
        n if n >= 63 => u64::MAX,
        n => (1u64 << (n + 1)) - 1,
    };
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapBnd:"))?;
            u64::from_str_radix(line.trim_start_matches("CapBnd:").trim(), 16).ok()
        })
        .map_or(known, |bounding| bounding & known)
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
        let all = (1u64 << 41) - 1;
        assert_eq!(tweak(&none, &none, all), Ok(default_mask()));
        let admin = 1 << 12;
        assert_eq!(
            tweak(&names(&["NET_ADMIN"]), &names(&["chown"]), all),
            Ok((default_mask() | admin) & !1)
        );
        // drop ALL: only what is added
        assert_eq!(
            tweak(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"]), all),
            Ok(1 << NET_BIND_SERVICE)
        );
        // add ALL: everything held, less what is dropped
        assert_eq!(
            tweak(&names(&["all"]), &names(&["SYS_ADMIN"]), all),
            Ok(all & !(1 << 21))
        );
        let no_resource = all & !(1 << 24);
        assert_eq!(tweak(&names(&["ALL"]), &none, no_resource), Ok(no_resource));
        // one named that is not held: an error naming it
        let err = tweak(&names(&["SYS_RESOURCE"]), &none, no_resource).unwrap_err();
        assert!(err.contains("CAP_SYS_RESOURCE"), "{err}");
        assert!(tweak(&names(&["NOPE"]), &none, all).is_err());
    }

    #[test]
    fn default_mask_matches_docker() {
        // 0x a80425fb is the CapEff docker shows for `docker run busybox grep Cap /proc/self/status`.
        assert_eq!(default_mask(), 0xa80425fb);
    }
}
