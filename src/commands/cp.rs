//! `strata cp CONTAINER:SRC DEST` and `strata cp SRC CONTAINER:DEST`: files between a
//! container (running or not) and the host, as `docker cp` copies them: directories
//! recursively with modes, times, links, hard links and xattrs, owned by whoever runs
//! strata (root), `SRC/.` for a directory's content. DEST follows `cp -R`'s rules: into
//! DEST when it is a directory, else as DEST itself.
//!
//! `-` stands for a tar stream, as in docker: `cp CONTAINER:SRC -` writes SRC as a tar
//! to stdout (owners and modes as in the container; sockets are left out, as docker's),
//! `cp - CONTAINER:DIR` unpacks one from stdin into a directory of the container.
//!
//! Every container path is handled by `strata cp-tar`, a process chrooted into the
//! container's root (docker's chrootarchive), and a copy between the host and a container
//! is a tar stream between it and strata: container paths, and the links a running
//! container may swap in meanwhile, resolve inside the container, never on the host. A
//! running container is entered by its mount namespace, so its volumes are copied to and
//! from as it sees them; a stopped container's union is mounted for the copy, and its
//! volumes bound in it, in the helper's own mount namespace. Every copy is unpacked in a
//! staging directory (`.strata-cp-*`, beside its destination, or in the directory it goes
//! into) and moved into place once the tar is whole: a failed copy leaves its destination
//! as it was.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use strata_store::{Container, Store};
use strata_unionfs::{Driver, IdShift, MountSpec};

use crate::cli::CpArgs;
use crate::commands::Globals;
use crate::commands::run::{RunConfig, is_running};

/// The status `cp-tar` ends with when the reader of its tar went away: the reader says why.
const READER_GONE: i32 = 141;

pub fn run(globals: &Globals, args: CpArgs) -> anyhow::Result<ExitCode> {
    let (from, to) = (split(&args.source), split(&args.dest));
    let (reference, inside, host, into) = match (from, to) {
        (Some((c, path)), None) => (c, path, PathBuf::from(&args.dest), false),
        (None, Some((c, path))) => (c, path, PathBuf::from(&args.source), true),
        _ => bail!("one of the two paths is CONTAINER:PATH, the other a host path or -"),
    };
    // docker: a relative container path is relative to the container's root
    let inside = &if inside.starts_with('/') {
        inside.to_string()
    } else {
        format!("/{inside}")
    };
    let store = Store::open(&globals.root)?;
    let container = store.container(reference)?;
    let (root, _guard) = if is_running(&container)
        && let Some(pid) = container.state.pid
    {
        // (with its start time: the helper makes sure pid N is still the container)
        let start = container.state.pid_start.unwrap_or(0);
        let userns = RunConfig::of(&container).is_ok_and(|config| config.userns);
        (
            format!("pid:{pid}:{start}{}", if userns { ":user" } else { "" }),
            None,
        )
    } else {
        let (point, guard) = mount(&store, &container)?;
        (point.to_string_lossy().into_owned(), guard)
    };
    // A stopped container's volumes, which the helper binds where the container has them
    // (docker mounts them for a copy too).
    let binds = if root.starts_with("pid:") {
        Vec::new()
    } else {
        volume_binds(globals, &container, Path::new(&root))?
    };
    drop(store);
    let helper = |mode: &str| {
        let mut command = cp_tar_command(&root, reference, mode, inside)?;
        for bind in &binds {
            command
                .arg("--bind")
                .arg(&bind.source)
                .arg(&bind.target)
                .arg(if bind.readonly { "ro" } else { "rw" });
        }
        anyhow::Ok(command)
    };
    let piped = |mode: &str| {
        let mut command = helper(mode)?;
        command.arg("--piped");
        anyhow::Ok(command)
    };
    if host.as_os_str() == "-" {
        let mode = if into { "unpack" } else { "pack" };
        let status = helper(mode)?.stdin(Stdio::inherit()).status();
        let code = status.context("failed to start strata cp-tar")?.code();
        return Ok(ExitCode::from(code.map_or(1, |c| c as u8)));
    }
    if into {
        if std::fs::symlink_metadata(&host).is_err() {
            bail!("{}: no such file or directory", host.display());
        }
        let mut child = piped("place")?
            .stdin(Stdio::piped())
            .spawn()
            .context("failed to start strata cp-tar")?;
        let packed = pack(&host, child.stdin.take().expect("piped"), None);
        let status = child.wait()?;
        match packed {
            // The helper stopped reading: it failed, and said why.
            Err(err) if is_broken_pipe(&err) => {}
            // The tar has no end, so the helper placed nothing.
            Err(err) => return Err(err),
            Ok(()) => {}
        }
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut child = piped("pack")?
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to start strata cp-tar")?;
    let staged = stage(child.stdout.take().expect("piped"), &host, None);
    let status = child.wait()?;
    if !status.success() && status.code() != Some(READER_GONE) {
        // It said why (unless a signal ended it); nothing is placed.
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
            bail!("strata cp-tar was ended by signal {signal}");
        }
        return Ok(ExitCode::FAILURE);
    }
    staged?.commit()?;
    Ok(ExitCode::SUCCESS)
}

/// The volumes of a container made by `run`, as its runs bind them.
fn volume_binds(
    globals: &Globals,
    container: &Container,
    rootfs: &Path,
) -> anyhow::Result<Vec<strata_runtime::Bind>> {
    let Ok(config) = RunConfig::of(container) else {
        return Ok(Vec::new()); // made by `mount`: it has none
    };
    let root = if config.userns {
        (
            strata_runtime::USERNS_HOST_START,
            strata_runtime::USERNS_HOST_START,
        )
    } else {
        (0, 0)
    };
    crate::commands::run::volumes::binds(
        &container.dir,
        &globals.root.join("volumes"),
        rootfs,
        &config.volumes,
        root,
    )
}

/// `strata cp-tar --container NAME ROOT MODE PATH`, its stdin /dev/null.
fn cp_tar_command(root: &str, container: &str, mode: &str, path: &str) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("failed to find the strata binary")?;
    let mut command = Command::new(exe);
    command
        .args(["cp-tar", "--container", container, root, mode, path])
        .stdin(Stdio::null());
    if mode == "pack" {
        // A packer has nothing to clean up: it dies with strata. Else a signal that ends
        // strata would leave it writing a tar nobody reads (into `export -o`'s removed temp
        // file, say). Unpackers see their pipe close instead, and remove what they staged.
        let parent = rustix::process::getpid();
        // SAFETY: die_with is async-signal-safe: two syscalls, nothing allocated.
        unsafe {
            command.pre_exec(move || die_with(parent));
        }
    }
    Ok(command)
}

/// Has SIGKILL end this process when `parent` does; ESRCH if it already has.
fn die_with(parent: rustix::process::Pid) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // (it may have ended before the line above)
    if rustix::process::getppid() != Some(parent) {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// `strata export CONTAINER`: the container's file system (its union: not its volumes nor
/// what is mounted in it, as docker's) as a tar on `out`. Returns whether it was whole;
/// a failure was reported.
pub(crate) fn export(globals: &Globals, reference: &str, out: Stdio) -> anyhow::Result<bool> {
    let store = Store::open(&globals.root)?;
    let container = store.container(reference)?;
    let (root, _guard) = if is_running(&container) {
        (container.rootfs_dir(), None)
    } else {
        mount(&store, &container)?
    };
    drop(store);
    let mut helper = cp_tar_command(&root.to_string_lossy(), reference, "pack", "/.")?;
    if RunConfig::of(&container).is_ok_and(|config| config.userns) {
        // its owners as the container sees them
        helper.arg(format!(
            "--id-shift={}:{}",
            strata_runtime::USERNS_HOST_START,
            strata_runtime::USERNS_SIZE
        ));
    }
    let status = helper
        .stdout(out)
        .status()
        .context("failed to start strata cp-tar")?;
    Ok(status.success())
}

/// `strata cp-tar ROOT pack|unpack|place PATH`: enters the container's root, then writes
/// PATH as a tar to stdout, unpacks the tar on stdin into directory PATH, or places it at
/// PATH (see [`stage`]).
pub fn cp_tar(args: crate::cli::CpTarArgs) -> anyhow::Result<ExitCode> {
    if args.piped {
        // A ^C ends strata, whose end of the pipe then closes: this process sees that and
        // cleans up (its staging directory) rather than dying with it.
        for signal in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGQUIT,
        ] {
            // SAFETY: SIG_IGN installs no handler.
            let _ =
                unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) };
        }
    }
    let parent = rustix::process::getppid();
    if !args.bind.is_empty() {
        bind_volumes(Path::new(&args.container_root), &args.bind)?;
    }
    enter(&args.container_root)?;
    if args.mode == "pack" {
        // Entering a user namespace changed this process's ids, which clears the death
        // signal strata set for a packer (see `cp_tar_command`): set again.
        if let Some(parent) = parent {
            die_with(parent).context("strata ended")?;
        }
    }
    let inside = args.path.as_str();
    let named = format!("{}:{inside}", args.container);
    let path = Path::new(inside);
    match args.mode.as_str() {
        "pack" => {
            if let Err(err) = std::fs::symlink_metadata(path) {
                bail!("{named}: {}", io_reason(&err));
            }
            let shift = args
                .id_shift
                .as_deref()
                .map(crate::commands::mount::parse_id_shift)
                .transpose()?;
            match pack(path, std::io::stdout().lock(), shift) {
                Err(err) if is_broken_pipe(&err) => Ok(ExitCode::from(READER_GONE as u8)),
                packed => packed
                    .with_context(|| format!("failed to write {named} as a tar"))
                    .map(|()| ExitCode::SUCCESS),
            }
        }
        "unpack" => {
            if !path.is_dir() {
                bail!("{named}: not a directory (a tar is unpacked into one)");
            }
            unpack(std::io::stdin().lock(), path, false)
                .context("failed to unpack the tar from stdin")?;
            Ok(ExitCode::SUCCESS)
        }
        "place" => {
            stage(std::io::stdin().lock(), path, Some(&named))?.commit()?;
            Ok(ExitCode::SUCCESS)
        }
        mode => bail!("unknown cp-tar mode {mode:?}"),
    }
}

/// Binds `binds` (SOURCE, TARGET, ro|rw triples) at their TARGETs inside the directory
/// `root`, in a mount namespace of this process's own: they go when it ends, and the host's
/// mounts never see them. A TARGET resolves inside `root`; one that is missing there is
/// left out (the container never ran with it).
fn bind_volumes(root: &Path, binds: &[String]) -> anyhow::Result<()> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("failed to make a mount namespace for the container's volumes")?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .context("failed to make the mounts private")?;
    for bind in binds.chunks(3) {
        let [source, target, mode] = bind else {
            bail!("--bind takes SOURCE TARGET MODE");
        };
        let at = strata_runtime::resolve_in_root(root, Path::new(target))?;
        if std::fs::symlink_metadata(&at).is_err() {
            continue;
        }
        rustix::mount::mount_bind_recursive(source.as_str(), &at)
            .with_context(|| format!("failed to bind the volume {source} at {target}"))?;
        if mode == "ro" {
            rustix::mount::mount_remount(&at, MountFlags::BIND | MountFlags::RDONLY, "")
                .with_context(|| format!("failed to make the volume at {target} read-only"))?;
        }
    }
    Ok(())
}

/// Makes `root` this process's root: a directory, or `pid:N:START[:user]`, the root of
/// process N (which started at START, in clock ticks since boot; 0: unchecked) in its mount
/// namespace, entered first as `nsenter --mount --root` does; with `user`, in its user
/// namespace too, as its root: what is copied in belongs to the container's root, and
/// owners are seen as the container sees them. Called while the process is
/// single-threaded, as setns wants.
fn enter(root: &str) -> anyhow::Result<()> {
    use rustix::fs::{Mode, OFlags};
    // Not dumpable: nothing of the container may open this process's /proc files.
    let _ = nix::sys::prctl::set_dumpable(false);
    if let Some(process) = root.strip_prefix("pid:") {
        let mut fields = process.split(':');
        let (pid, start) = (fields.next().unwrap_or(""), fields.next().unwrap_or("0"));
        let userns = fields.next() == Some("user");
        let gone = || anyhow::anyhow!("the container has stopped");
        // Everything is opened through /proc/N as it is now: once that process is gone
        // the directory answers ESRCH, even if N is reused meanwhile.
        let dir = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|_| gone())?;
        let at = |what: &str, flags: OFlags| {
            rustix::fs::openat(&dir, what, flags | OFlags::CLOEXEC, Mode::empty())
        };
        let stat = at("stat", OFlags::RDONLY).map_err(|_| gone())?;
        let mut text = String::new();
        std::fs::File::from(stat)
            .read_to_string(&mut text)
            .map_err(|_| gone())?;
        let started =
            crate::commands::run::parse_stat(&text).map(|(_, started)| started.to_string());
        if start != "0" && started.as_deref() != Some(start) {
            return Err(gone());
        }
        let namespace = at("ns/mnt", OFlags::RDONLY).map_err(|_| gone())?;
        let container_root = at("root", OFlags::DIRECTORY | OFlags::RDONLY).map_err(|_| gone())?;
        if userns {
            let users = at("ns/user", OFlags::RDONLY).map_err(|_| gone())?;
            nix::sched::setns(&users, nix::sched::CloneFlags::CLONE_NEWUSER)
                .context("failed to enter the container's user namespace")?;
            let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
            nix::unistd::setgroups(&[])
                .context("failed to drop the groups in the container's user namespace")?;
            nix::unistd::setresgid(gid, gid, gid)
                .context("failed to become the container's root group")?;
            nix::unistd::setresuid(uid, uid, uid)
                .context("failed to become the container's root")?;
        }
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNS)
            .context("failed to enter the container's mount namespace")?;
        nix::unistd::fchdir(&container_root).context("failed to enter the container's root")?;
        nix::unistd::chroot(".").context("failed to chroot into the container's root")?;
    } else {
        nix::unistd::chroot(root).with_context(|| format!("failed to chroot into {root}"))?;
    }
    std::env::set_current_dir("/").context("failed to enter the container's root")
}

/// An I/O error as `ls` says it ("no such file or directory").
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The name `src` has at the top of its tar: its last name, or "." for `DIR/.` (and `/`),
/// whose content is copied.
fn top_name(src: &Path) -> PathBuf {
    match src.components().next_back() {
        Some(Component::Normal(name)) if !src.as_os_str().as_bytes().ends_with(b"/.") => {
            PathBuf::from(name)
        }
        _ => PathBuf::from("."),
    }
}

/// Writes `src` (a file, a link, a special file, or a directory and all below it) as a tar
/// whose top entry is its [`top_name`]. Links are stored as links, a file's further names
/// as hard links to the first, xattrs as PAX `SCHILY.xattr.` records.
///
/// A tar that fails half-way gets no end-of-archive blocks, so that its reader cannot take
/// it for complete ([`unpack`] checks).
///
/// `shift`: owners in [host_start, host_start + size) are written less host_start, as the
/// user namespace of a `--userns private` container sees them.
fn pack(src: &Path, out: impl Write, shift: Option<IdShift>) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(Ending { out, failed: false });
    tar.follow_symlinks(false);
    let mut packing = Packing {
        seen: HashMap::new(),
        shift,
    };
    let appended = append(&mut tar, src, &top_name(src), &mut packing);
    if appended.is_err() {
        // The builder's drop writes the end: make that fail.
        tar.get_mut().failed = true;
    }
    appended?;
    tar.into_inner()?.out.flush()?;
    Ok(())
}

/// A writer that refuses all writes once `failed` is set.
struct Ending<W> {
    out: W,
    failed: bool,
}

impl<W: Write> Write for Ending<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(std::io::Error::other("the copy failed"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Appends `path` as `name`, and a directory's entries below it; sockets are skipped with
/// a warning (a tar cannot hold them; docker skips them too). `seen` maps the (device,
/// inode) of files with several names to the name written first.
///
/// The tree may be a running container's, changing meanwhile: a regular file is opened
/// without following a link (nor waiting on a fifo swapped in) and must be the file just
/// listed; its header comes from the open file, and exactly its size is written, so a file
/// that grows is cut and one that shrinks is padded (GNU tar's "file changed as we read
/// it"), and the stream stays a tar whatever the file does.
///
/// An entry that goes or is replaced meanwhile (a log rotated, a file renamed over) is left
/// out with a warning, as GNU tar and docker do, rather than failing the copy.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    packing: &mut Packing,
) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = || format!("failed to add {}", path.display());
    let changed = || {
        eprintln!(
            "warning: {}: removed or replaced while it was copied, left out",
            path.display()
        );
        Ok(())
    };
    let listed = match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return changed(),
        listed => listed.with_context(failed)?,
    };
    let kind = listed.file_type();
    if kind.is_socket() {
        eprintln!("warning: {}: a socket, left out", path.display());
        return Ok(());
    }
    let (meta, file) = if kind.is_file() {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match opened {
            // (ELOOP: a link now stands there)
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    || err.raw_os_error() == Some(libc::ELOOP) =>
            {
                return changed();
            }
            opened => opened.with_context(failed)?,
        };
        let opened = file.metadata().with_context(failed)?;
        if !opened.is_file() || (opened.dev(), opened.ino()) != (listed.dev(), listed.ino()) {
            return changed();
        }
        (opened, Some(file))
    } else {
        (listed, None)
    };
    let xattrs =
        xattrs(path).with_context(|| format!("failed to list the xattrs of {}", path.display()))?;
    if !xattrs.is_empty() {
        tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    if let Some(shift) = packing.shift {
        // (ids outside the range stay as they are: not IdShift's mapping to nobody)
        let unshift = |id: u32| match id.checked_sub(shift.host_start) {
            Some(inside) if inside < shift.size => inside,
            _ => id,
        };
        header.set_uid(unshift(meta.uid()).into());
        header.set_gid(unshift(meta.gid()).into());
    }
    let seen = &mut packing.seen;
    if kind.is_file() && meta.nlink() > 1 {
        if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            return tar
                .append_link(&mut header, name, first)
                .with_context(failed);
        }
        seen.insert((meta.dev(), meta.ino()), name.to_path_buf());
    }
    if let Some(file) = file {
        let mut data = Exactly {
            file,
            left: meta.len(),
            short: false,
        };
        tar.append_data(&mut header, name, &mut data)
            .with_context(failed)?;
        if data.short {
            eprintln!(
                "warning: {}: shrank while it was copied; the rest is zeros",
                path.display()
            );
        }
        return Ok(());
    }
    header.set_size(0);
    if kind.is_symlink() {
        let target = std::fs::read_link(path).with_context(failed)?;
        tar.append_link(&mut header, name, target)
            .with_context(failed)?;
    } else if kind.is_dir() {
        tar.append_data(&mut header, name, std::io::empty())
            .with_context(failed)?;
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .and_then(|dir| dir.collect::<Result<_, _>>())
            .with_context(|| format!("failed to list {}", path.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            append(tar, &entry.path(), &name.join(entry.file_name()), packing)?;
        }
    } else {
        // fifos and devices: their numbers, no data
        header.set_device_major(rustix::fs::major(meta.rdev()))?;
        header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
        tar.append_data(&mut header, name, std::io::empty())
            .with_context(failed)?;
    }
    Ok(())
}

/// What [`append`] carries along a tree.
struct Packing {
    /// The (device, inode) of files with several names, and the name written first.
    seen: HashMap<(u64, u64), PathBuf>,
    shift: Option<IdShift>,
}

/// Reads exactly `left` bytes of `file`: what is past them is not read, and zeros stand
/// for what is missing (`short` is then set).
struct Exactly {
    file: std::fs::File,
    left: u64,
    short: bool,
}

impl Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let mut got = self.file.read(&mut buf[..want])?;
        if got == 0 {
            self.short = true;
            buf[..want].fill(0);
            got = want;
        }
        self.left -= got as u64;
        Ok(got)
    }
}

/// The xattrs of `path` (not followed) as PAX records.
fn xattrs(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for name in names {
        let name = name.into_string().map_err(|name| {
            std::io::Error::other(format!("xattr name {name:?} is not UTF-8, as PAX needs"))
        })?;
        // None: gone meanwhile
        if let Some(value) = xattr::get(path, &name)? {
            records.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    Ok(records)
}

/// What a tar held at its top.
enum Top {
    Empty,
    /// One name (a `pack`ed SRC), or several.
    Name(PathBuf),
    Several,
    /// "." (a directory's content), with the directory's mode and mtime.
    Content {
        mode: u32,
        mtime: u64,
    },
}

/// Unpacks a tar into `dir`, keeping modes, times, xattrs and special files; owners are
/// the caller's (root), as docker's. The tar crate refuses entries that would land
/// outside `dir`, through a `..` or a link. Returns what was at the top.
///
/// `whole`: the tar must end with its two zero blocks, as one whose writer failed half-way
/// does not (see [`pack`]); else its end may be missing, as GNU tar allows.
fn unpack(input: impl Read, dir: &Path, whole: bool) -> anyhow::Result<Top> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut top = Top::Empty;
    // Directory times are set last: the entries made in them change them.
    let mut dir_times = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let failed = || format!("entry {}", name.display());
        let relative: PathBuf = name
            .components()
            .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
            .collect();
        let header = entry.header();
        let (kind, mode, mtime) = (header.entry_type(), header.mode()?, header.mtime()?);
        top = match (top, relative.components().next()) {
            (Top::Empty, None) => Top::Content { mode, mtime },
            (Top::Empty, Some(first)) => Top::Name(PathBuf::from(first.as_os_str())),
            (Top::Name(was), Some(first)) if was.as_os_str() != first.as_os_str() => Top::Several,
            (top, _) => top,
        };
        if !entry.unpack_in(dir).with_context(failed)? {
            bail!(
                "entry {}: outside the destination directory",
                name.display()
            );
        }
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&relative);
        if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            // The tar crate made an empty file in its place (a checked parent): make the node.
            make_node(&target, kind, mode, &entry).with_context(failed)?;
            set_mtime(&target, mtime)?;
        }
        set_xattrs(&target, &mut entry).with_context(failed)?;
        if kind == tar::EntryType::Directory {
            dir_times.push((target, mtime));
        }
    }
    for (path, mtime) in dir_times.into_iter().rev() {
        set_mtime(&path, mtime)?;
    }
    // The entries stop at the first zero block, and at the end of the stream too: a whole
    // tar has a second zero block, one whose writer failed has none.
    let mut rest = archive.into_inner();
    let mut end = [0u8; 512];
    if whole && (rest.read_exact(&mut end).is_err() || end.iter().any(|&b| b != 0)) {
        bail!("the tar ends early, without its end-of-archive blocks");
    }
    // The record's padding; a writer going on past it is not waited for.
    std::io::copy(&mut rest.take(1 << 20), &mut std::io::sink())?;
    Ok(top)
}

fn make_node(
    target: &Path,
    kind: tar::EntryType,
    mode: u32,
    entry: &tar::Entry<impl Read>,
) -> anyhow::Result<()> {
    use rustix::fs::{FileType, Mode};
    let file_type = match kind {
        tar::EntryType::Char => FileType::CharacterDevice,
        tar::EntryType::Block => FileType::BlockDevice,
        _ => FileType::Fifo,
    };
    let header = entry.header();
    let dev = rustix::fs::makedev(
        header.device_major()?.unwrap_or(0),
        header.device_minor()?.unwrap_or(0),
    );
    std::fs::remove_file(target)?;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        target,
        file_type,
        Mode::from_raw_mode(mode & 0o7777),
        dev,
    )?;
    rustix::fs::chmod(target, Mode::from_raw_mode(mode & 0o7777))?;
    Ok(())
}

/// Sets the xattrs of the entry's PAX `SCHILY.xattr.` records on `target`; as docker, one
/// the file system does not take (ENOTSUP, EPERM) is left out.
fn set_xattrs(target: &Path, entry: &mut tar::Entry<impl Read>) -> anyhow::Result<()> {
    let Some(records) = entry.pax_extensions()? else {
        return Ok(());
    };
    for record in records {
        let record = record?;
        let Some(name) = record.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        let name = std::ffi::OsStr::from_bytes(name);
        match rustix::fs::lsetxattr(
            target,
            name,
            record.value_bytes(),
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) | Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("failed to set xattr {}", name.to_string_lossy()));
            }
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> anyhow::Result<()> {
    let time = rustix::fs::Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("failed to set the times of {}", path.display()))
}

/// A copy unpacked in a staging directory, to be moved into place once it is whole.
struct Staged {
    staging: tempfile::TempDir,
    /// On the list of what a signal removes until the copy is in place or gone.
    removed: crate::interrupt::Removed,
    /// What the tar held: a name in `staging`, or `staging` itself (a directory's content).
    from: PathBuf,
    /// Where it goes.
    to: PathBuf,
    /// `to` is a directory already: `from`'s entries are moved into it, as `cp -R` merges.
    merge: bool,
}

/// Unpacks the tar on `input`, a `pack`ed SRC, for DEST as `cp -R SRC DEST` places SRC
/// (docker cp's rules): into DEST when it is a directory (or a link to one), merging with
/// what is there; else as DEST itself, replacing it when it is a file, with DEST's parent to
/// exist. The entries go to a staging directory there first; [`Staged::commit`] moves them
/// into place once the tar is whole, so a failed copy changes nothing. `named` is DEST as
/// errors name it (`CONTAINER:PATH`), if not its path.
fn stage(input: impl Read, dest: &Path, named: Option<&str>) -> anyhow::Result<Staged> {
    let named = named.map_or_else(|| dest.display().to_string(), str::to_string);
    let into = dest.is_dir();
    let parent = if into {
        dest
    } else {
        if !matches!(dest.components().next_back(), Some(Component::Normal(_))) {
            bail!("{named}: not a name to copy to");
        }
        match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    };
    if !parent.is_dir() {
        bail!("{named}: its directory does not exist");
    }
    let (staging, removed) = crate::interrupt::removed_on_signal(
        || {
            tempfile::Builder::new()
                .prefix(".strata-cp-")
                .tempdir_in(parent)
        },
        |staging| staging.path(),
    )
    .with_context(|| format!("failed to make a staging directory in {}", parent.display()))?;
    let top = unpack(input, staging.path(), true)
        .with_context(|| format!("failed to copy to {named}"))?;
    let (from, to) = match top {
        Top::Name(top) => (
            staging.path().join(&top),
            if into {
                dest.join(top)
            } else {
                dest.to_path_buf()
            },
        ),
        Top::Content { mode, mtime } => {
            if !into {
                // The staging directory becomes DEST: it takes SRC's mode and time.
                rustix::fs::chmod(
                    staging.path(),
                    rustix::fs::Mode::from_raw_mode(mode & 0o7777),
                )?;
                set_mtime(staging.path(), mtime)?;
            }
            (staging.path().to_path_buf(), dest.to_path_buf())
        }
        Top::Empty => bail!("nothing to copy to {named}"),
        Top::Several => bail!("the copy to {named} has several top entries"),
    };
    let is_dir = std::fs::symlink_metadata(&from)?.is_dir();
    let there = std::fs::symlink_metadata(&to).ok();
    if !into && is_dir && there.is_some() {
        bail!("cannot copy a directory to {named}: not a directory");
    }
    if !is_dir && dest.as_os_str().as_bytes().ends_with(b"/") && !into {
        bail!("{named}: no such directory");
    }
    let merge = is_dir && there.as_ref().is_some_and(|m| m.is_dir());
    if !is_dir && there.as_ref().is_some_and(|m| m.is_dir()) {
        bail!(
            "cannot overwrite directory {} with a non-directory",
            to.display()
        );
    }
    Ok(Staged {
        staging,
        removed,
        from,
        to,
        merge,
    })
}

impl Staged {
    fn commit(self) -> anyhow::Result<()> {
        let Staged {
            staging,
            removed,
            from,
            to,
            merge: merging,
        } = self;
        // A signal meanwhile ends strata once the copy is in place.
        removed.settle(move || {
            if merging {
                // Every conflict first, so that one deep in the tree leaves nothing half-merged.
                merge(&from, &to, false)?;
                merge(&from, &to, true)?;
            } else {
                std::fs::rename(&from, &to)
                    .with_context(|| format!("failed to move the copy to {}", to.display()))?;
                if from == staging.path() {
                    // Renamed away: nothing is left to remove.
                    let _ = staging.keep();
                    return Ok(());
                }
            }
            // What is left of the staging directory goes before a signal could end strata.
            drop(staging);
            Ok(())
        })
    }
}

/// Moves the entries of directory `from` into directory `to`: a directory into one of its
/// name, merged; anything else in place of what has its name (which must not be a
/// directory, nor a file where a directory goes), as `cp -R` does. Without `moving`, only
/// checks that it can.
fn merge(from: &Path, to: &Path, moving: bool) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(from).with_context(|| format!("failed to list {}", from.display()))?;
    for entry in entries {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let is_dir = entry.file_type()?.is_dir();
        match std::fs::symlink_metadata(&dst) {
            Ok(there) if there.is_dir() && is_dir => merge(&src, &dst, moving)?,
            Ok(there) if there.is_dir() => {
                bail!(
                    "cannot overwrite directory {} with a non-directory",
                    dst.display()
                )
            }
            Ok(_) if is_dir => bail!(
                "cannot overwrite non-directory {} with a directory",
                dst.display()
            ),
            _ if moving => std::fs::rename(&src, &dst)
                .with_context(|| format!("failed to move the copy to {}", dst.display()))?,
            _ => {}
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

/// A stopped container's union mounted for one copy in the store's tmp/: unmounted, and
/// its mount point removed, when dropped.
struct CopyMount {
    guard: Option<strata_unionfs::MountGuard>,
    point: PathBuf,
    /// Until the union is gone (after `guard`): a `start` meanwhile waits.
    _lock: super::mount::MountLock,
    /// Detached if a signal ends strata first (the union is served by this process).
    _on_signal: crate::interrupt::Listed,
}

impl Drop for CopyMount {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _ = std::fs::remove_dir(&self.point);
    }
}

/// A stopped container's file system: where `strata mount` has it (a second union over
/// its upper would not see what the first caches), else its union mounted in the store's
/// tmp/ for the copy.
fn mount(store: &Store, container: &Container) -> anyhow::Result<(PathBuf, Option<CopyMount>)> {
    if let Some(at) = super::mount::user_mount(container)? {
        return Ok((at, None));
    }
    let (lock, container) = super::mount::MountLock::take(container)?;
    let container = &container;
    if let Some(at) = super::mount::user_mount(container)? {
        return Ok((at, None));
    }
    if is_running(container) || strata_store::container::is_mount_point(&container.rootfs_dir()) {
        anyhow::bail!(
            "container {} started meanwhile; copy again",
            container.state.name
        );
    }
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
    let on_signal = crate::interrupt::unmounted_on_signal(&point);
    let spec = MountSpec {
        lowers,
        upper: container.upper_dir(),
        work: container.work_dir(),
        target: point.clone(),
        aufs_markers: false,
        flags: Default::default(),
        id_shift: None,
    };
    let guard = strata_unionfs::mount(&spec, Driver::Auto).with_context(|| {
        let _ = std::fs::remove_dir(&point);
        format!("failed to mount container {}", container.id)
    })?;
    let mounted = CopyMount {
        guard: Some(guard),
        point: point.clone(),
        _lock: lock,
        _on_signal: on_signal,
    };
    Ok((point, Some(mounted)))
}
