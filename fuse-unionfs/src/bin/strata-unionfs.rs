//! `strata-unionfs`: strata's FUSE union filesystem as a program of its own, taking the
//! command line of fuse-overlayfs, so it can stand in for it (in scripts, in benchmarks,
//! as podman's `mount_program`):
//!
//! ```text
//! strata-unionfs [-f] -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT
//! ```
//!
//! Lower dirs are top first, as for `mount -t overlay`, and may hold whiteouts in either
//! form: overlay's (char 0/0, `trusted.overlay.opaque`) or AUFS's (`.wh.NAME`,
//! `.wh..wh..opq`, as podman unpacks layers for a mount program). Without an upperdir
//! (or with `ro`) the mount is read-only. `uidmapping=0:H:S,gidmapping=0:H:S` shows
//! every owner H higher, for a user namespace (one range, the same for both).
//!
//! Without `-f` the server forks into the background and the command returns once the
//! mount is live; with `-f` it serves until unmounted (SIGINT and SIGTERM unmount).
//! `strata mount --lower` serves the same filesystem (reading only overlay's markers),
//! but this program loads in a fraction of the time: it links only the union filesystem,
//! not the builder, store and registry.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

use strata_unionfs::{Flags, IdShift, MountSpec};

const USAGE: &str =
    "usage: strata-unionfs [-f] -o lowerdir=DIR[:DIR...],upperdir=DIR,workdir=DIR MOUNTPOINT";

/// Options that change nothing here, accepted because mount helpers pass them: generic
/// ones for what is fixed here, fuse-overlayfs's tuning and SELinux labels, and kernel
/// overlayfs features this server does its own way or needs not (fuse-overlayfs's
/// `fsync=0`: syncs are kept). `ro`, `nodev`, `nosuid`, `noexec` and `volatile` (nothing
/// synced, and overlayfs's mark left in the work dir: see `Flags::volatile`) are honoured.
const IGNORED: &[&str] = &[
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
    "index",
    "redirect_dir",
    "metacopy",
    "xino",
];

#[derive(Debug, PartialEq)]
struct Args {
    foreground: bool,
    lowers: Vec<PathBuf>,
    /// The upper and work dirs; None for a read-only mount of the lowers.
    upper: Option<(PathBuf, PathBuf)>,
    flags: Flags,
    id_shift: Option<IdShift>,
    target: PathBuf,
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
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strata-unionfs: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Mounts and serves (in the foreground, or from a forked daemon). A read-only mount
/// without an upper serves its top lower as the upper, as kernel overlayfs shows a
/// lowers-only mount (the root and statfs are the top lower's); nothing can be written
/// through it. Its work dir is a private scratch dir, removed once the mount is live.
fn serve(args: Args) -> strata_unionfs::Result<()> {
    let target = std::path::absolute(&args.target)
        .map_err(|e| strata_unionfs::Error::io("resolve", &args.target, e))?;
    let (upper, work, lowers, scratch) = match args.upper {
        Some((upper, work)) => (upper, work, args.lowers, None),
        None => {
            let scratch = Scratch::new()?;
            let mut lowers = args.lowers;
            let top = lowers.remove(0);
            (top, scratch.0.clone(), lowers, Some(scratch))
        }
    };
    let spec = MountSpec {
        lowers,
        upper,
        work,
        target,
        id_shift: args.id_shift,
        aufs_markers: true,
        flags: args.flags,
    };
    strata_unionfs::sweep_stale(&spec.target)?;
    if args.foreground {
        strata_unionfs::serve_foreground(&spec, || {
            drop(scratch);
            Ok(())
        })
    } else {
        strata_unionfs::serve_daemon(&spec)
    }
}

/// A private empty dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> strata_unionfs::Result<Scratch> {
        let base = std::env::temp_dir().join("strata-unionfs-ro.XXXXXX");
        nix::unistd::mkdtemp(&base)
            .map(Scratch)
            .map_err(|e| strata_unionfs::Error::io("create", &base, e))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The command line; None when it only asked for the help or the version.
fn parse(args: impl Iterator<Item = OsString>) -> Result<Option<Args>, String> {
    let mut foreground = false;
    let mut options = Vec::new();
    let mut positional = Vec::new();
    let mut args = args;
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
    let (mut uids, mut gids) = (None, None);
    let mut flags = Flags::default();
    // Empty options (`a,,b`, a trailing comma, as podman passes) are skipped.
    let options = options.iter().flat_map(|o| split(o.as_bytes(), b','));
    for option in options.filter(|o| !o.is_empty()) {
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
            b"uidmapping" => uids = Some(mapping(value)?),
            b"gidmapping" => gids = Some(mapping(value)?),
            b"ro" => flags.read_only = true,
            b"rw" => flags.read_only = false,
            b"nodev" => flags.nodev = true,
            b"dev" => flags.nodev = false,
            b"nosuid" => flags.nosuid = true,
            b"suid" => flags.nosuid = false,
            b"noexec" => flags.noexec = true,
            b"exec" => flags.noexec = false,
            b"volatile" => flags.volatile = true,
            key if IGNORED.iter().any(|k| k.as_bytes() == key) => {}
            key => {
                return Err(format!("unknown option {}", String::from_utf8_lossy(key)));
            }
        }
    }
    let upper = match (upper, work) {
        (Some(upper), Some(work)) => Some((upper, work)),
        (None, None) => None,
        (Some(_), None) => return Err("upperdir needs a workdir".into()),
        (None, Some(_)) => return Err("workdir without an upperdir".into()),
    };
    // One range from 0, the same for users and groups: what a user namespace made by a
    // container engine maps, and what the server shifts (IdShift).
    let id_shift = match (uids, gids) {
        (None, None) => None,
        (Some([0, host_start, size]), Some(gids)) if gids == [0, host_start, size] => {
            Some(IdShift { host_start, size })
        }
        _ => {
            return Err(
                "uidmapping and gidmapping must be given together, as one range from \
                        0 that is the same for both (uidmapping=0:HOST:SIZE,gidmapping=0:HOST:SIZE)"
                    .into(),
            );
        }
    };
    Ok(Some(Args {
        foreground,
        id_shift,
        lowers: lowers.ok_or("-o lowerdir=... is required")?,
        flags: Flags {
            read_only: flags.read_only || upper.is_none(),
            ..flags
        },
        upper,
        target,
    }))
}

/// A `uidmapping=`/`gidmapping=` value with one range: `INSIDE:HOST:SIZE`.
fn mapping(value: Option<&[u8]>) -> Result<[u32; 3], String> {
    let text = String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
    let numbers: Vec<u32> = text
        .split(':')
        .map(|n| n.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad id mapping {text:?}: expected INSIDE:HOST:SIZE"))?;
    <[u32; 3]>::try_from(numbers)
        .map_err(|_| format!("id mapping {text:?}: only one range (INSIDE:HOST:SIZE) is supported"))
}

/// Splits at `sep` bytes neither escaped by a backslash nor inside double quotes (SELinux
/// labels: `context="u:r:t:s0:c1,c2"`); escapes and quotes stay.
fn split(s: &[u8], sep: u8) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    let mut quoted = false;
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
            b'"' => {
                quoted = !quoted;
                part.push(b);
            }
            b if b == sep && !quoted => parts.push(Vec::new()),
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
            "-oworkdir=/w,nodev,,fsync=0,context=\"system_u:object_r:container_file_t:s0:c1,c2\",",
            "-f",
            "/mnt",
        ])
        .unwrap()
        .unwrap();
        assert!(args.foreground);
        assert_eq!(args.lowers, [PathBuf::from("/l/a"), PathBuf::from("/l/b")]);
        assert_eq!(args.upper, Some((PathBuf::from("/u"), PathBuf::from("/w"))));
        assert_eq!(args.target, PathBuf::from("/mnt"));
        assert_eq!(
            args.flags,
            Flags {
                nodev: true,
                ..Flags::default()
            }
        );
    }

    #[test]
    fn volatile_is_honoured() {
        let args = parsed(&["-o", "lowerdir=/l,upperdir=/u,workdir=/w,volatile", "/m"])
            .unwrap()
            .unwrap();
        assert!(args.flags.volatile);
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
            args.lowers,
            [PathBuf::from("/l/a:b"), PathBuf::from("/l/c,d")]
        );
        assert_eq!(args.upper.unwrap().0, PathBuf::from(r"/u\x"));
        assert!(!args.foreground);
    }

    #[test]
    fn without_an_upper_or_with_ro_the_mount_is_read_only() {
        let args = parsed(&["-o", "lowerdir=/l/a:/l/b,ro", "/m"])
            .unwrap()
            .unwrap();
        assert!(args.flags.read_only && args.upper.is_none());
        let args = parsed(&["-o", "lowerdir=/l", "/m"]).unwrap().unwrap();
        assert!(args.flags.read_only && args.upper.is_none());
        let args = parsed(&["-o", "lowerdir=/l,upperdir=/u,workdir=/w,ro", "/m"])
            .unwrap()
            .unwrap();
        assert!(args.flags.read_only && args.upper.is_some());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let err = |args: &[&str]| parsed(args).unwrap_err();
        let all = "lowerdir=/l,upperdir=/u,workdir=/w";
        assert!(err(&["-o", all]).contains("one mount point"));
        assert!(err(&["-o", "lowerdir=/l,upperdir=/u", "/m"]).contains("workdir"));
        assert!(err(&["-o", "lowerdir=,upperdir=/u,workdir=/w", "/m"]).contains("lowerdir"));
        assert!(err(&["-o", &format!("{all},squash_to_root"), "/m"]).contains("squash_to_root"));
        assert!(err(&["-o", "lowerdir=/l,workdir=/w", "/m"]).contains("upperdir"));
        assert!(err(&["-x", "/m"]).contains("-x"));
        let mapped = |m: &str| parsed(&["-o", &format!("{all},{m}"), "/m"]);
        assert!(
            mapped("uidmapping=0:100000:65536")
                .unwrap_err()
                .contains("together")
        );
        let two = "uidmapping=0:1:1:1:100000:65536,gidmapping=0:1:1:1:100000:65536";
        assert!(mapped(two).unwrap_err().contains("one range"));
        let apart = "uidmapping=0:100000:65536,gidmapping=0:200000:65536";
        assert!(mapped(apart).unwrap_err().contains("the same"));
        let shift = mapped("uidmapping=0:100000:65536,gidmapping=0:100000:65536");
        assert_eq!(
            shift.unwrap().unwrap().id_shift,
            Some(IdShift {
                host_start: 100000,
                size: 65536
            })
        );
    }
}
