//! `strata-unionfs`: strata's FUSE union filesystem as a program of its own, taking the
//! command line of fuse-overlayfs, so it can stand in for it (in scripts, in benchmarks,
//! as podman's `mount_program`):
//!
//! ```text
//! strata-unionfs [-f] -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT
//! ```
//!
//! Lower dirs are top first, as for `mount -t overlay`. Without `-f` the server forks
//! into the background and the command returns once the mount is live; with `-f` it
//! serves until unmounted (SIGINT and SIGTERM unmount). `strata mount --lower` does the
//! same, but this program loads in a fraction of the time: it links only the union
//! filesystem, not the image builder, store and registry client.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

use strata_unionfs::MountSpec;

const USAGE: &str =
    "usage: strata-unionfs [-f] -o lowerdir=DIR[:DIR...],upperdir=DIR,workdir=DIR MOUNTPOINT";

/// Options that change nothing here, accepted because mount helpers pass them: the
/// generic mount flags, and fuse-overlayfs's tuning and SELinux-label options.
const IGNORED: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "allow_other",
    "allow_root",
    "default_permissions",
    "noacl",
    "fsync",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "threaded",
    "fast_ino",
    "static_nlink",
];

#[derive(Debug, PartialEq)]
struct Args {
    foreground: bool,
    spec: MountSpec,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("strata-unionfs: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let spec = &args.spec;
    let result = strata_unionfs::sweep_stale(&spec.target).and_then(|_| {
        if args.foreground {
            strata_unionfs::serve_foreground(spec, || Ok(()))
        } else {
            strata_unionfs::serve_daemon(spec)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strata-unionfs: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The command line; None when it only asked for the help or the version.
fn parse(args: impl Iterator<Item = OsString>) -> Result<Option<Args>, String> {
    let mut foreground = false;
    let mut options = Vec::new();
    let mut positional = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_bytes() {
            b"-f" | b"--foreground" => foreground = true,
            b"-h" | b"--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            b"-V" | b"--version" => {
                println!("strata-unionfs {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            b"-o" => options.push(args.next().ok_or("-o needs a value")?),
            [b'-', b'o', rest @ ..] => options.push(OsString::from_vec(rest.to_vec())),
            [b'-', ..] => return Err(format!("unknown flag {}", arg.to_string_lossy())),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [target] = <[PathBuf; 1]>::try_from(positional)
        .map_err(|p| format!("expected one mount point, got {}", p.len()))?;
    let (mut lowers, mut upper, mut work) = (None, None, None);
    for option in options.iter().flat_map(|o| split(o.as_bytes(), b',')) {
        let (key, value) = match option.iter().position(|&b| b == b'=') {
            Some(i) => (&option[..i], Some(&option[i + 1..])),
            None => (&option[..], None),
        };
        let path = |what: &str| {
            value
                .filter(|v| !v.is_empty())
                .map(|v| PathBuf::from(OsString::from_vec(unescape(v))))
                .ok_or_else(|| format!("{what} needs a directory"))
        };
        match key {
            b"lowerdir" => {
                let value = value.ok_or("lowerdir needs directories")?;
                let dirs: Vec<PathBuf> = split(value, b':')
                    .into_iter()
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(OsString::from_vec(unescape(&d))))
                    .collect();
                if dirs.is_empty() {
                    return Err("lowerdir needs directories".into());
                }
                lowers = Some(dirs);
            }
            b"upperdir" => upper = Some(path("upperdir")?),
            b"workdir" => work = Some(path("workdir")?),
            b"ro" => return Err("read-only mounts (ro) are not supported: give an upperdir".into()),
            key if IGNORED.iter().any(|k| k.as_bytes() == key) => {}
            key => {
                return Err(format!("unknown option {}", String::from_utf8_lossy(key)));
            }
        }
    }
    Ok(Some(Args {
        foreground,
        spec: MountSpec {
            lowers: lowers.ok_or("-o lowerdir=... is required")?,
            upper: upper.ok_or("-o upperdir=... is required")?,
            work: work.ok_or("-o workdir=... is required")?,
            target,
            id_shift: None,
        },
    }))
}

/// Splits at `sep` bytes not escaped by a backslash; escapes stay for [`unescape`].
fn split(s: &[u8], sep: u8) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        let part = parts.last_mut().expect("never empty");
        match b {
            b'\\' => {
                part.push(b);
                if let Some(&next) = bytes.next() {
                    part.push(next);
                }
            }
            b if b == sep => parts.push(Vec::new()),
            b => part.push(b),
        }
    }
    parts
}

/// Drops the backslash of each escape (`\,` `\:` `\\`).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.extend(bytes.next()),
            b => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Option<Args>, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn takes_fuse_overlayfs_options() {
        let args = parsed(&[
            "-o",
            "lowerdir=/l/a:/l/b,upperdir=/u",
            "-oworkdir=/w,nodev,fsync=0,context=\"system_u:object_r:container_file_t:s0\"",
            "-f",
            "/mnt",
        ])
        .unwrap()
        .unwrap();
        assert!(args.foreground);
        assert_eq!(
            args.spec.lowers,
            [PathBuf::from("/l/a"), PathBuf::from("/l/b")]
        );
        assert_eq!(args.spec.upper, PathBuf::from("/u"));
        assert_eq!(args.spec.work, PathBuf::from("/w"));
        assert_eq!(args.spec.target, PathBuf::from("/mnt"));
    }

    #[test]
    fn escaped_commas_and_colons_stay_in_paths() {
        let args = parsed(&[
            "-o",
            r"lowerdir=/l/a\:b:/l/c\,d,upperdir=/u\\x,workdir=/w",
            "/m",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            args.spec.lowers,
            [PathBuf::from("/l/a:b"), PathBuf::from("/l/c,d")]
        );
        assert_eq!(args.spec.upper, PathBuf::from(r"/u\x"));
        assert!(!args.foreground);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let err = |args: &[&str]| parsed(args).unwrap_err();
        let all = "lowerdir=/l,upperdir=/u,workdir=/w";
        assert!(err(&["-o", all]).contains("one mount point"));
        assert!(err(&["-o", "lowerdir=/l,upperdir=/u", "/m"]).contains("workdir"));
        assert!(err(&["-o", "lowerdir=,upperdir=/u,workdir=/w", "/m"]).contains("lowerdir"));
        assert!(err(&["-o", &format!("{all},squash_to_root"), "/m"]).contains("squash_to_root"));
        assert!(err(&["-o", &format!("{all},ro"), "/m"]).contains("ro"));
        assert!(err(&["-x", "/m"]).contains("-x"));
    }
}
