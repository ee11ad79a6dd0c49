//! `strata cp CONTAINER:SRC DEST` and `strata cp SRC CONTAINER:DEST`: files between a
//! container (running or not) and the host, as `docker cp` copies them: directories
//! recursively with modes and times, owned by whoever runs strata (root), `SRC/.` for
//! a directory's content. Container paths resolve their symlinks inside the container.
//! A stopped container's union is mounted for the copy and unmounted after; what is
//! copied in lands in its upper.
//!
//! `-` stands for a tar stream, as in docker: `cp CONTAINER:SRC -` writes SRC as a tar
//! to stdout (owners and modes as in the container; sockets are left out, as docker's),
//! `cp - CONTAINER:DIR` unpacks a tar from stdin into a directory of the container. Both
//! run in `strata cp-tar`, a process chrooted into the container's root (docker's
//! chrootarchive): every path, DIR itself and the links a running container may swap in
//! meanwhile, resolves inside the container. An entry with `..` is refused by name.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use strata_store::{Container, Store};
use strata_unionfs::{Driver, MountSpec};

use crate::cli::CpArgs;
use crate::commands::Globals;
use crate::commands::run::is_running;

pub fn run(globals: &Globals, args: CpArgs) -> anyhow::Result<ExitCode> {
    let (from, to) = (split(&args.source), split(&args.dest));
    let (reference, inside, host, into) = match (from, to) {
        (Some((c, path)), None) => (c, path, PathBuf::from(&args.dest), false),
        (None, Some((c, path))) => (c, path, PathBuf::from(&args.source), true),
        _ => bail!("one of the two paths is CONTAINER:PATH, the other a host path or -"),
    };
    let stream = host.as_os_str() == "-";
    let store = Store::open(&globals.root)?;
    let container = store.container(reference)?;
    // A running container's union is mounted at its rootfs; else mount it for the copy.
    let (root, _guard) = if is_running(&container) {
        (container.rootfs_dir(), None)
    } else {
        let (point, guard) = mount(&store, &container)?;
        (point, Some(guard))
    };
    drop(store);
    if stream {
        return tar_in_root(&root, if into { "unpack" } else { "pack" }, inside);
    }
    let (src, dest) = if into {
        (host, in_container(&root, inside)?)
    } else {
        (in_container(&root, inside)?, host)
    };
    if std::fs::symlink_metadata(&src).is_err() {
        let named = if into {
            args.source.clone()
        } else {
            format!("{reference}:{inside}")
        };
        bail!("{named}: no such file or directory");
    }
    copy(&src, &dest)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `strata cp-tar ROOT pack|unpack PATH` with strata's stdin and stdout; its exit code.
fn tar_in_root(root: &Path, mode: &str, inside: &str) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("failed to find the strata binary")?;
    let status = std::process::Command::new(exe)
        .arg("cp-tar")
        .arg(root)
        .arg(mode)
        .arg(inside)
        .status()
        .context("failed to start strata cp-tar")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `strata cp-tar ROOT pack|unpack PATH`: chroots into ROOT, then writes PATH as a tar to
/// stdout, or unpacks the tar on stdin into directory PATH.
pub fn cp_tar(args: crate::cli::CpTarArgs) -> anyhow::Result<ExitCode> {
    nix::unistd::chroot(&args.root)
        .with_context(|| format!("failed to chroot into {}", args.root.display()))?;
    std::env::set_current_dir("/").context("failed to enter the container's root")?;
    let inside = args.path.as_str();
    if !inside.starts_with('/') {
        bail!("container path {inside:?} is not absolute");
    }
    if args.mode == "unpack" {
        if !Path::new(inside).is_dir() {
            bail!("{inside}: not a directory (a tar is unpacked into one)");
        }
        unpack(std::io::stdin().lock(), Path::new(inside))
            .context("failed to unpack the tar from stdin")?;
        return Ok(ExitCode::SUCCESS);
    }
    let src = Path::new(inside);
    if std::fs::symlink_metadata(src).is_err() {
        bail!("{inside}: no such file or directory");
    }
    // "DIR/." packs the directory's content; else entries start with SRC's name.
    let name = match Path::new(inside.trim_end_matches('/')).file_name() {
        Some(name) if !inside.ends_with("/.") => PathBuf::from(name),
        _ => PathBuf::from("."),
    };
    pack(src, &name, std::io::stdout().lock())
        .with_context(|| format!("failed to write {inside} as a tar"))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `src` (a file, a link, or a directory and all below it) as a tar whose top entry
/// is `name` ("." for a directory's content). Links are stored as links.
fn pack(src: &Path, name: &Path, out: impl std::io::Write) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    append(&mut tar, src, name)?;
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Appends `path` as `name`, and a directory's entries below it; sockets are skipped with
/// a warning (a tar cannot hold them; docker skips them too).
fn append<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path)?.file_type();
    if kind.is_socket() {
        eprintln!("warning: {}: a socket, left out", path.display());
        return Ok(());
    }
    tar.append_path_with_name(path, name)
        .with_context(|| format!("failed to add {}", path.display()))?;
    if kind.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            append(tar, &entry.path(), &name.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Unpacks a tar into `dir`, keeping modes and times; owners are the caller's (root), as
/// docker's. The tar crate refuses entries that would land outside `dir`.
fn unpack(input: impl std::io::Read, dir: &Path) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let inside = entry
            .unpack_in(dir)
            .with_context(|| format!("entry {}", name.display()))?;
        if !inside {
            bail!(
                "entry {}: outside the destination directory",
                name.display()
            );
        }
    }
    Ok(())
}

/// `CONTAINER:PATH` -> (container, path); a host path (absolute or relative, with no ':'
/// before its first '/') -> None.
fn split(arg: &str) -> Option<(&str, &str)> {
    let (container, path) = arg.split_once(':')?;
    (!container.is_empty() && !container.contains('/')).then_some((container, path))
}

/// The host path of container path `inside`, its directories resolved inside the
/// container (the last name is kept, as `docker cp` copies a link as a link).
fn in_container(root: &Path, inside: &str) -> anyhow::Result<PathBuf> {
    if !inside.starts_with('/') {
        bail!("container path {inside:?} is not absolute");
    }
    let trimmed = inside.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    let parent = strata_runtime::resolve_in_root(
        root,
        Path::new(if parent.is_empty() { "/" } else { parent }),
    )?;
    // "DIR/." (its content) and a trailing '/' keep their meaning for cp
    let mut path = if name.is_empty() {
        parent
    } else {
        parent.join(name)
    };
    if inside.ends_with("/.") {
        path.push(".");
    }
    Ok(path)
}

/// Mounts a stopped container's union in the store's tmp/ (unmounted when the guard goes).
fn mount(
    store: &Store,
    container: &Container,
) -> anyhow::Result<(PathBuf, strata_unionfs::MountGuard)> {
    let image_id = container
        .state
        .image_id
        .with_context(|| format!("container {} has no image", container.id))?;
    let mut lowers = store.layer_dirs(&store.resolve(&image_id.to_string())?)?;
    let init = container.dir.join("init");
    if init.is_dir() {
        lowers.insert(0, init);
    }
    let point = store.tmp_path("cp");
    std::fs::create_dir_all(&point)
        .with_context(|| format!("failed to create {}", point.display()))?;
    let spec = MountSpec {
        lowers,
        upper: container.upper_dir(),
        work: container.work_dir(),
        target: point.clone(),
        aufs_markers: false,
        flags: Default::default(),
        id_shift: None,
    };
    let guard = strata_unionfs::mount(&spec, Driver::Auto)
        .with_context(|| format!("failed to mount container {}", container.id))?;
    Ok((point, guard))
}

/// `cp -R` keeping modes, times, links and xattrs; owners become the caller's (root).
fn copy(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("cp")
        .args([
            "-R",
            "--no-dereference",
            "--preserve=mode,timestamps,links,xattr",
            "--",
        ])
        .arg(src)
        .arg(dest)
        .output()
        .context("failed to run cp")?;
    if !out.status.success() {
        bail!(
            "cp {} {}: {}",
            src.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
