//! Docker seccomp profiles (`run --security-opt seccomp=FILE`): the JSON of moby's
//! `profiles/seccomp/default.json`, compiled as runc compiles it. Rules whose `includes`
//! the container does not meet (capabilities it lacks, another architecture, an older
//! kernel) or whose `excludes` it does are left out; conditions on one argument twice are
//! separate rules (libseccomp cannot AND them), as in runc.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Deserializer};

use crate::caps;

/// A list or object that may be `null` (Go writes nil slices so): empty.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<i32>,
    #[serde(default, deserialize_with = "nullable")]
    architectures: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "nullable")]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default, deserialize_with = "nullable")]
    names: Vec<String>,
    /// The older form: one name.
    name: Option<String>,
    action: String,
    errno_ret: Option<i32>,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<Arg>,
    #[serde(default, deserialize_with = "nullable")]
    includes: Filter,
    #[serde(default, deserialize_with = "nullable")]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "nullable")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default, deserialize_with = "nullable")]
    value_two: u64,
    op: String,
}

/// What a rule's `includes` and `excludes` are checked against.
pub(super) struct Host {
    /// The container's capabilities (a mask).
    pub caps: u64,
    /// The architecture names profiles use for this machine (Go's first: amd64).
    pub arches: &'static [&'static str],
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
}

impl Host {
    pub(super) fn this(caps: u64) -> Host {
        let arches: &'static [&'static str] = match std::env::consts::ARCH {
            "x86_64" => &["amd64", "x86_64"],
            "aarch64" => &["arm64", "aarch64"],
            "x86" => &["386", "x86"],
            "riscv64" => &["riscv64"],
            "s390x" => &["s390x"],
            "powerpc64" => &["ppc64le", "ppc64"],
            _ => &[],
        };
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Host {
            caps,
            arches,
            kernel: version(&release).unwrap_or((0, 0)),
        }
    }
}

/// "6.18.44-fc" -> (6, 18).
fn version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

impl Filter {
    /// Whether `host` meets every condition given (an `includes`).
    fn met_by(&self, host: &Host) -> Result<bool, String> {
        for cap in &self.caps {
            if host.caps & (1u64 << caps::number(cap)?) == 0 {
                return Ok(false);
            }
        }
        if !self.arches.is_empty()
            && !self
                .arches
                .iter()
                .any(|a| host.arches.contains(&a.as_str()))
        {
            return Ok(false);
        }
        if let Some(min) = &self.min_kernel {
            let min = version(min).ok_or_else(|| format!("minKernel {min:?} is not a version"))?;
            if host.kernel < min {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `host` meets any condition given (an `excludes`).
    fn hit_by(&self, host: &Host) -> Result<bool, String> {
        for cap in &self.caps {
            if host.caps & (1u64 << caps::number(cap)?) != 0 {
                return Ok(true);
            }
        }
        if self
            .arches
            .iter()
            .any(|a| host.arches.contains(&a.as_str()))
        {
            return Ok(true);
        }
        if let Some(min) = &self.min_kernel {
            let min = version(min).ok_or_else(|| format!("minKernel {min:?} is not a version"))?;
            if host.kernel >= min {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn action(name: &str, errno: Option<i32>) -> Result<ScmpAction, String> {
    match name {
        // a notifying profile needs a listener, which strata has not
        "SCMP_ACT_NOTIFY" => Err("SCMP_ACT_NOTIFY is not supported".into()),
        "SCMP_ACT_ERRNO" => Ok(ScmpAction::Errno(errno.unwrap_or(libc::EPERM))),
        "SCMP_ACT_TRACE" => Ok(ScmpAction::Trace(errno.unwrap_or(libc::EPERM) as u16)),
        other => ScmpAction::from_str(other, None).map_err(|e| format!("action {other:?}: {e}")),
    }
}

fn compare(arg: &Arg) -> Result<ScmpArgCompare, String> {
    let op: ScmpCompareOp = arg
        .op
        .parse()
        .map_err(|e| format!("op {:?}: {e}", arg.op))?;
    Ok(match op {
        // docker's value is the mask, valueTwo the value compared
        ScmpCompareOp::MaskedEqual(_) => ScmpArgCompare::new(
            arg.index,
            ScmpCompareOp::MaskedEqual(arg.value),
            arg.value_two,
        ),
        op => ScmpArgCompare::new(arg.index, op, arg.value),
    })
}

/// Builds the filter `json` describes for a container on `host`.
pub(super) fn build(json: &str, host: &Host) -> Result<ScmpFilterContext, String> {
    let profile: Profile =
        serde_json::from_str(json).map_err(|e| format!("not a seccomp profile: {e}"))?;
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| format!("init: {e}"))?;
    ctx.set_ctl_nnp(false)
        .map_err(|e| format!("no_new_privs: {e}"))?;
    let native = ScmpArch::native();
    let mut arches: Vec<String> = profile
        .arch_map
        .iter()
        .filter(|m| {
            m.architecture
                .parse::<ScmpArch>()
                .is_ok_and(|a| a == native)
        })
        .flat_map(|m| m.sub_architectures.iter().cloned())
        .collect();
    if profile.arch_map.is_empty() {
        arches = profile.architectures.clone();
    }
    for arch in &arches {
        let arch: ScmpArch = arch
            .parse()
            .map_err(|e| format!("architecture {arch:?}: {e}"))?;
        if arch != native {
            ctx.add_arch(arch)
                .map_err(|e| format!("architecture {arch:?}: {e}"))?;
        }
    }
    // A profile older than clone3 refuses it with its default errno: glibc falls back to
    // clone only on ENOSYS (runc answers ENOSYS to every call newer than the profile).
    let names_clone3 = profile
        .syscalls
        .iter()
        .any(|r| r.names.iter().chain(r.name.as_ref()).any(|n| n == "clone3"));
    if !names_clone3
        && matches!(default, ScmpAction::Errno(e) if e != libc::ENOSYS)
        && let Ok(clone3) = ScmpSyscall::from_name("clone3")
    {
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), clone3)
            .map_err(|e| format!("rule for clone3: {e}"))?;
    }
    for rule in &profile.syscalls {
        if !rule.includes.met_by(host)? || rule.excludes.hit_by(host)? {
            continue;
        }
        let act = action(&rule.action, rule.errno_ret)?;
        // libseccomp refuses a rule that only repeats the default
        if act == default {
            continue;
        }
        let conditions = rule
            .args
            .iter()
            .map(compare)
            .collect::<Result<Vec<_>, _>>()?;
        let mut indexes: Vec<u32> = rule.args.iter().map(|a| a.index).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names.iter().chain(rule.name.as_ref()) {
            // a call this libseccomp does not know cannot be filtered (docker skips it too)
            let Ok(call) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if conditions.is_empty() {
                ctx.add_rule(act, call).map(drop)
            } else if repeated {
                conditions
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, call, &[*c]).map(drop))
            } else {
                ctx.add_rule_conditional(act, call, &conditions).map(drop)
            };
            added.map_err(|e| format!("rule for {name}: {e}"))?;
        }
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errno_of, under_program};
    use super::*;

    fn program(json: &str, caps: u64) -> Vec<u8> {
        super::super::export(&build(json, &Host::this(caps)).unwrap()).unwrap()
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(version("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(version("4.8"), Some((4, 8)));
        assert_eq!(version("5"), Some((5, 0)));
        assert_eq!(version("x"), None);
    }

    /// An allow-list profile in docker's form: what is not listed gets the default
    /// action's errno; rules are kept or left out by their includes and excludes.
    #[test]
    fn a_docker_profile_filters_as_written() {
        assert_eq!(nix::unistd::geteuid().as_raw(), 0, "run the tests as root");
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            "syscalls": [
                {"names": ["exit_group", "exit", "getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["getuid"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["getgid"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_CHOWN"]}},
                {"names": ["geteuid"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"minKernel": "4.8"}},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77,
                 "args": [{"index": 0, "value": 255, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["no_such_call"], "action": "SCMP_ACT_ALLOW"}
            ]
        }"#;
        let defaults = crate::caps::default_mask();
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getpid)
            })),
            0
        );
        // not listed: the default errno
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getegid)
            })),
            13
        );
        // includes CAP_SYS_ADMIN: only with it
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getuid)
            })),
            13
        );
        assert_eq!(
            under_program(program(json, defaults | 1 << 21), || errno_of(unsafe {
                libc::syscall(libc::SYS_getuid)
            })),
            0
        );
        // excludes CAP_CHOWN, which the default set holds
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getgid)
            })),
            13
        );
        assert_eq!(
            under_program(program(json, 0), || errno_of(unsafe {
                libc::syscall(libc::SYS_getgid)
            })),
            0
        );
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_geteuid)
            })),
            0
        );
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getppid)
            })),
            38
        );
        // clone3, which the profile does not name: ENOSYS, for glibc's fallback to clone
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_clone3, 0, 0)
            })),
            libc::ENOSYS
        );
        // MASKED_EQ: `value` is the mask, `valueTwo` what the masked argument must equal
        // (0x1ff does not match: the default action, as getpriority is not allowed)
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getpriority, 0x102, 0)
            })),
            77
        );
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_getpriority, 0x1ff, 0)
            })),
            13
        );
        // two conditions on one argument: either value passes
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_personality, 8)
            })),
            0
        );
        assert_eq!(
            under_program(program(json, defaults), || errno_of(unsafe {
                libc::syscall(libc::SYS_personality, 0x40000)
            })),
            13
        );
    }

    /// Go writes nil lists as null; podman's own profile (containers-common, installed with
    /// podman) has them, and `includes`/`excludes` by capability and kernel.
    #[test]
    fn podmans_profile_compiles() {
        let path = "/usr/share/containers/seccomp.json";
        let json = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "{path}: {e} (fix: apt-get install golang-github-containers-common, or scripts/install-deps.sh)"
            )
        });
        let program = program(&json, crate::caps::default_mask());
        assert!(program.len() / 8 > 100);
        let nulls = r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": null, "archMap": null,
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "args": null,
                          "includes": {"caps": null}, "excludes": {}}]}"#;
        assert_eq!(
            under_program(program_of(nulls), || errno_of(unsafe {
                libc::syscall(libc::SYS_getppid)
            })),
            libc::EPERM
        );
    }

    fn program_of(json: &str) -> Vec<u8> {
        program(json, crate::caps::default_mask())
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let host = Host::this(0);
        let err = |json: &str| build(json, &host).err().unwrap();
        assert!(err("{").contains("not a seccomp profile"));
        assert!(err(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#).contains("SCMP_ACT_MAYBE"));
        assert!(err(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).contains("not supported"));
        let op = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
            "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#;
        assert!(err(op).contains("SCMP_CMP_ABOUT"));
    }
}
