//! The build driver against a real store: COPY/ADD semantics (destinations, wildcards,
//! owners by name, --exclude, heredocs, --from keeping owners), cache keys (no mtimes,
//! modes count), reproducible ids. These Buildfiles have no RUN: the executor refuses to
//! run anything, which also proves cache hits never execute.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_builder::executor::{Executor, RunRequest};
use strata_builder::{BuildOptions, build};
use strata_store::layer::WriteOptions;
use strata_store::{Image, Store};

struct NoRun;

impl Executor for NoRun {
    fn run(&self, request: RunRequest<'_>) -> strata_builder::Result<i32> {
        Err(strata_builder::Error::Other(format!(
            "unexpected RUN {:?}",
            request.args
        )))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    context: PathBuf,
}

/// A store holding `base:latest` (an /etc/passwd with user `app` 1000:1001, group `staff`
/// 50, a /srv dir with mode 0750, /usr/lib/app/data with links to /usr/lib: `lib2`
/// relative, `abs` absolute, `up` climbing above the root, and `plink` to /etc/passwd)
/// and an empty context dir.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, body: Option<&str>| {
        let mut header = tar::Header::new_ustar();
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_000_000);
        match body {
            Some(text) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(text.len() as u64);
                header.set_cksum();
                tar.append_data(&mut header, path, text.as_bytes()).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_cksum();
                tar.append_data(&mut header, path, &[][..]).unwrap();
            }
        }
    };
    add("etc/", 0o755, None);
    add(
        "etc/passwd",
        0o644,
        Some("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"),
    );
    add("etc/group", 0o644, Some("root:x:0:\nstaff:x:50:\n"));
    add("srv/", 0o750, None);
    add("usr/", 0o755, None);
    add("usr/lib/", 0o755, None);
    add("usr/lib/app/", 0o755, None);
    add("usr/lib/app/data", 0o644, Some("data"));
    for (name, target) in [
        ("lib2", "usr/lib"),
        ("abs", "/usr/lib"),
        ("up", "../../.."),
        ("plink", "etc/passwd"),
        ("loop1", "loop2/x"),
        ("loop2", "/loop1"),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_000_000);
        header.set_size(0);
        tar.append_link(&mut header, name, target).unwrap();
    }
    let bytes = tar.into_inner().unwrap();
    store
        .import(
            &bytes[..],
            &["base:latest".to_string()],
            &WriteOptions::default(),
        )
        .unwrap();
    let context = dir.path().join("context");
    fs::create_dir(&context).unwrap();
    Fixture {
        _dir: dir,
        store,
        context,
    }
}

impl Fixture {
    fn write(&self, path: &str, content: &str) {
        let path = self.context.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn options(&self) -> BuildOptions {
        BuildOptions::new(&self.context, self.context.join("Buildfile"))
    }

    fn build(&self, buildfile: &str) -> strata_builder::Result<Image> {
        self.write("Buildfile", buildfile);
        build(&self.store, &NoRun, &self.options())
    }

    /// Builds `buildfile`, which must fail with an error at `at` (`Buildfile:LINE:`) that
    /// says `says`.
    fn fails(&self, buildfile: &str, at: &str, says: &str) {
        let error = self.build(buildfile).unwrap_err().to_string();
        assert!(
            error.contains(at) && error.contains(says),
            "{buildfile:?}: {error}"
        );
    }

    /// The merged view of `image`'s layers.
    fn tree(&self, image: &Image) -> strata_builder::tree::Tree {
        strata_builder::tree::Tree::new(self.store.layer_dirs(image).unwrap())
    }

    /// The top layer of `image`, unpacked.
    fn top(&self, image: &Image) -> PathBuf {
        self.store.layer_dirs(image).unwrap().remove(0)
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn copy_destination_rules_follow_docker() {
    let fx = fixture();
    fx.write("a.txt", "a");
    fx.write("b.txt", "b");
    fx.write("dir/x/y.txt", "y");
    fx.write("dir/z.md", "z");
    let image = fx
        .build("FROM base\nWORKDIR /work\nCOPY a.txt ./\nCOPY a.txt renamed\nCOPY dir /copied\nCOPY *.txt /many/\n")
        .unwrap();
    let dirs = fx.store.layer_dirs(&image).unwrap();
    let tree = strata_builder::tree::Tree::new(dirs);
    assert_eq!(
        tree.read("work/a.txt").unwrap(),
        b"a",
        "relative dest is under WORKDIR"
    );
    assert_eq!(
        tree.read("work/renamed").unwrap(),
        b"a",
        "no trailing slash: the file is named dest"
    );
    assert_eq!(
        tree.read("copied/x/y.txt").unwrap(),
        b"y",
        "a directory copies its content"
    );
    assert!(tree.lookup("copied/dir").is_none());
    assert_eq!(tree.read("many/b.txt").unwrap(), b"b");
    fx.fails(
        "FROM base\nCOPY a.txt b.txt /notadir\n",
        "Buildfile:2:",
        "must be a directory ending in /",
    );
}

#[test]
fn destinations_follow_symlinks_inside_the_image() {
    let fx = fixture();
    fx.write("tool", "t");
    let image = fx
        .build(
            "FROM base\nCOPY tool /lib2/\nCOPY tool /abs/app/tool2\nCOPY tool /up/escape\nWORKDIR /lib2/work\n",
        )
        .unwrap();
    let tree = fx.tree(&image);
    for link in ["lib2", "abs", "up"] {
        let (_, meta) = tree.lookup(link).unwrap();
        assert!(meta.file_type().is_symlink(), "/{link} stays a symlink");
    }
    assert_eq!(tree.read("usr/lib/tool").unwrap(), b"t", "COPY into /lib2/");
    assert_eq!(
        tree.read("usr/lib/app/tool2").unwrap(),
        b"t",
        "through /abs"
    );
    assert_eq!(
        tree.read("usr/lib/app/data").unwrap(),
        b"data",
        "the linked directory keeps its content"
    );
    assert_eq!(
        tree.read("escape").unwrap(),
        b"t",
        "a link above the root stops at the root"
    );
    assert!(
        tree.lookup("usr/lib/work").unwrap().1.is_dir(),
        "WORKDIR made through the link"
    );
    let config = image.config.config().clone().unwrap();
    assert_eq!(
        config.working_dir().as_deref(),
        Some("/lib2/work"),
        "as written"
    );

    // A copied tree and an unpacked archive go through the links too: `COPY rootfs/ /`
    // onto a usr-merged base writes into usr/lib and keeps /lib2 a link.
    fx.write("rootfs/lib2/x.so", "x");
    fx.write("rootfs/lib2/sub/y", "y");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    tar.append_data(&mut header, "lib2/z", &b"z"[..]).unwrap();
    fs::write(fx.context.join("t.tar"), tar.into_inner().unwrap()).unwrap();
    let image = fx
        .build("FROM base\nCOPY rootfs/ /\nADD t.tar /\n")
        .unwrap();
    let tree = fx.tree(&image);
    assert!(tree.lookup("lib2").unwrap().1.file_type().is_symlink());
    assert_eq!(tree.read("usr/lib/x.so").unwrap(), b"x");
    assert_eq!(tree.read("usr/lib/sub/y").unwrap(), b"y");
    assert_eq!(tree.read("usr/lib/z").unwrap(), b"z", "ADD of an archive");
    assert_eq!(tree.read("usr/lib/app/data").unwrap(), b"data");
    fx.write("other/plink/w", "w");
    fx.fails(
        "FROM base\nCOPY other/ /\n",
        "Buildfile:2:",
        "cannot copy a directory to /plink: it is a symlink to /etc/passwd",
    );

    // A loop of links is ELOOP at the instruction, never a path through half of it.
    for buildfile in [
        "FROM base\nCOPY tool /loop1/\n",
        "FROM base\nWORKDIR /loop2/w\n",
        "FROM base\nCOPY --from=base /loop1/y /y\n",
    ] {
        fx.fails(
            buildfile,
            "Buildfile:2:",
            "too many levels of symbolic links",
        );
    }
}

#[test]
fn workdir_belongs_to_user_and_never_replaces_a_file() {
    let fx = fixture();
    let image = fx
        .build("FROM base\nUSER app\nWORKDIR /srv/a/b\nUSER 7:8\nWORKDIR /srv/c\n")
        .unwrap();
    let tree = fx.tree(&image);
    let owner_of = |rel: &str| owner(&tree.lookup(rel).unwrap().0);
    assert_eq!(owner_of("srv/a"), (1000, 1001), "new dirs belong to USER");
    assert_eq!(owner_of("srv/a/b"), (1000, 1001));
    assert_eq!(owner_of("srv/c"), (7, 8));
    assert_eq!(
        owner_of("srv"),
        (0, 0),
        "an existing parent keeps its owner"
    );
    assert_eq!(mode(&tree.lookup("srv").unwrap().0), 0o750);

    fx.fails(
        "FROM base\nWORKDIR /etc/passwd/x\n",
        "Buildfile:2:",
        "/etc/passwd exists in the image and is not a directory",
    );
    fx.fails(
        "FROM base\nCOPY Buildfile /etc/passwd/\n",
        "Buildfile:2:",
        "not a directory",
    );
    fx.fails(
        "FROM base\nUSER nobody\nWORKDIR /new\n",
        "Buildfile:3:",
        "unknown user \"nobody\"",
    );
}

#[test]
fn expose_takes_ports_and_ranges_only() {
    let fx = fixture();
    let image = fx
        .build("FROM base\nARG P=\"8080 9090/UDP\"\nEXPOSE 80 53/udp 8000-8002/tcp $P\n")
        .unwrap();
    let config = image.config.config().clone().unwrap();
    let mut exposed = config.exposed_ports().clone().unwrap_or_default();
    exposed.sort();
    assert_eq!(
        exposed,
        [
            "53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp", "8080/tcp", "9090/udp"
        ],
        "a range is one port each, an expanded word splits, protocols are lowercase"
    );
    for bad in ["abc", "80/xyz", "70000", "90-80", "-1", "+80"] {
        fx.fails(
            &format!("FROM base\nEXPOSE 80 {bad}\n"),
            "Buildfile:2:",
            &format!("invalid port {bad:?}"),
        );
    }
}

#[test]
fn a_context_symlink_named_by_copy_is_followed() {
    let fx = fixture();
    fx.write("src/a.txt", "a");
    std::os::unix::fs::symlink("a.txt", fx.context.join("src/inner")).unwrap();
    std::os::unix::fs::symlink("src/a.txt", fx.context.join("goodlink")).unwrap();
    std::os::unix::fs::symlink("./src", fx.context.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("/src/inner", fx.context.join("abslink")).unwrap();
    let image = fx
        .build(
            "FROM base\nCOPY goodlink /goodlink\nCOPY dirlink /d/\nCOPY abslink /srv/\n\
             COPY dirlink/a.txt dirlink/inner /through/\n",
        )
        .unwrap();
    let tree = fx.tree(&image);
    let (real, meta) = tree.lookup("goodlink").unwrap();
    assert!(
        meta.is_file(),
        "the link's target is copied, named after the link"
    );
    assert_eq!(fs::read(real).unwrap(), b"a");
    assert_eq!(
        tree.read("d/a.txt").unwrap(),
        b"a",
        "a linked directory's content"
    );
    let (_, inner) = tree.lookup("d/inner").unwrap();
    assert!(
        inner.file_type().is_symlink(),
        "links inside a copied directory stay links"
    );
    assert_eq!(
        tree.read("srv/abslink").unwrap(),
        b"a",
        "an absolute link starts at the context root"
    );
    // a path through a linked directory of the context, as BuildKit resolves it; a last
    // name that is a link is followed, named after the link
    assert_eq!(tree.read("through/a.txt").unwrap(), b"a");
    let (real, meta) = tree.lookup("through/inner").unwrap();
    assert!(meta.is_file());
    assert_eq!(fs::read(real).unwrap(), b"a");

    std::os::unix::fs::symlink("/etc/passwd", fx.context.join("leak")).unwrap();
    fx.fails(
        "FROM base\nCOPY leak /x\n",
        "Buildfile:2:",
        "leak is a symlink to /etc/passwd, and /etc/passwd is not in the build context",
    );
}

#[test]
fn copy_keeps_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let fx = fixture();
    fx.write("ctx/f", "data");
    fs::hard_link(fx.context.join("ctx/f"), fx.context.join("ctx/hl")).unwrap();
    fx.write("ctx/other", "data");
    let image = fx
        .build("FROM base AS a\nCOPY ctx /o\nFROM base\nCOPY --from=a /o /p\n")
        .unwrap();
    let tree = fx.tree(&image);
    let ino = |rel: &str| fs::metadata(tree.lookup(rel).unwrap().0).unwrap().ino();
    assert_eq!(
        ino("p/f"),
        ino("p/hl"),
        "one file under two names, from stage to stage"
    );
    assert_ne!(ino("p/f"), ino("p/other"));
    let image = fx.build("FROM base\nCOPY ctx /ctx\n").unwrap();
    let tree = fx.tree(&image);
    let ino = |rel: &str| fs::metadata(tree.lookup(rel).unwrap().0).unwrap().ino();
    assert_eq!(ino("ctx/f"), ino("ctx/hl"), "from the context");
    assert_eq!(
        fs::metadata(tree.lookup("ctx/f").unwrap().0)
            .unwrap()
            .nlink(),
        2
    );
}

#[test]
fn copy_keeps_user_xattrs_and_file_capabilities() {
    let fx = fixture();
    fx.write("tool", "t");
    let path = fx.context.join("tool");
    // cap_net_raw+ep, as `setcap cap_net_raw+ep tool` writes it (VFS_CAP_REVISION_2)
    let cap: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    rustix::fs::lsetxattr(
        &path,
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        &path,
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let image = fx
        .build("FROM base AS a\nCOPY --chown=7:7 tool /a/tool\nFROM base\nCOPY --from=a /a/tool /b/tool\n")
        .unwrap();
    let tree = fx.tree(&image);
    let real = tree.lookup("b/tool").unwrap().0;
    let get = |name: &str| {
        let mut buf = [0u8; 64];
        let n = rustix::fs::lgetxattr(&real, name, &mut buf[..])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        buf[..n].to_vec()
    };
    assert_eq!(get("user.note"), b"hello");
    assert_eq!(
        get("security.capability"),
        cap,
        "capabilities survive the --chown and the stage copy"
    );
}

#[test]
fn from_platform_must_be_this_machines() {
    let fx = fixture();
    fx.build("ARG BUILDPLATFORM\nFROM --platform=$BUILDPLATFORM base\n")
        .unwrap();
    fx.fails(
        "FROM --platform=linux/s390x base\n",
        "Buildfile:1:",
        "FROM --platform=linux/s390x: strata builds for this machine's platform",
    );
}

#[test]
fn stopsignal_takes_signals_only() {
    let fx = fixture();
    for good in ["SIGUSR1", "quit", "9", "SIGRTMIN+3", "$S"] {
        let image = fx
            .build(&format!("FROM base\nARG S=TERM\nSTOPSIGNAL {good}\n"))
            .unwrap();
        let config = image.config.config().clone().unwrap();
        assert!(config.stop_signal().is_some(), "{good}");
    }
    for bad in ["SIGFOO", "0", "65", "RTMIN+31"] {
        fx.fails(
            &format!("FROM base\nSTOPSIGNAL {bad}\n"),
            "Buildfile:2:",
            &format!("invalid signal {bad:?}"),
        );
    }
}

#[test]
fn copy_owners_modes_and_parent_dirs() {
    let fx = fixture();
    fx.write("f", "f");
    fs::set_permissions(fx.context.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let image = fx
        .build("FROM base\nCOPY --chown=app:staff f /srv/deep/f\nCOPY --chmod=700 f /plain\n")
        .unwrap();
    let dirs = fx.store.layer_dirs(&image).unwrap();
    let (upper_copy, lower_copy) = (&dirs[0], &dirs[1]);
    assert_eq!(
        owner(&upper_copy.join("plain")),
        (0, 0),
        "context files belong to root"
    );
    assert_eq!(mode(&upper_copy.join("plain")), 0o700);
    assert_eq!(
        owner(&lower_copy.join("srv/deep/f")),
        (1000, 50),
        "names resolve in the image"
    );
    assert_eq!(
        mode(&lower_copy.join("srv/deep/f")),
        0o640,
        "mode kept without --chmod"
    );
    assert_eq!(
        mode(&lower_copy.join("srv")),
        0o750,
        "an existing parent keeps its metadata in the layer"
    );
}

#[test]
fn copy_from_stage_keeps_owners_and_excludes() {
    let fx = fixture();
    fx.write("keep.txt", "k");
    fx.write("skip.log", "s");
    let image = fx
        .build(
            "FROM base AS one\nCOPY --chown=1000 --exclude=*.log . /stuff/\nFROM base\nCOPY --from=one /stuff /got\nCOPY --from=one /etc/passwd /p\nCOPY --from=base:latest /etc/group /g\n",
        )
        .unwrap();
    let tree = fx.tree(&image);
    let (path, _) = tree.lookup("got/keep.txt").unwrap();
    assert_eq!(
        owner(&path),
        (1000, 1000),
        "COPY --from keeps owners; --chown=UID means gid=UID"
    );
    assert!(tree.lookup("got/skip.log").is_none(), "--exclude");
    assert!(tree.read("p").unwrap().starts_with(b"root:"));
    assert!(
        tree.read("g").unwrap().starts_with(b"root:x:0:"),
        "COPY --from=<image>"
    );
}

#[test]
fn copy_exclude_leaves_out_whole_matches() {
    // docker's documented example: `COPY --exclude=*.txt hom* /mydir/` copies home.log,
    // not home.txt; and a match whose parent is excluded goes too.
    let fx = fixture();
    fx.write("home.txt", "t");
    fx.write("home.log", "l");
    fx.write("packages/a/package.json", "a");
    fx.write("packages/b/package.json", "b");
    let image = fx
        .build(
            "FROM base\nCOPY --exclude=*.txt hom* /mydir/\n\
             COPY --parents --exclude=packages/b packages/*/package.json /app/\n",
        )
        .unwrap();
    let tree = fx.tree(&image);
    assert!(tree.lookup("mydir/home.log").is_some());
    assert!(
        tree.lookup("mydir/home.txt").is_none(),
        "excluded match copied"
    );
    assert!(tree.lookup("app/packages/a/package.json").is_some());
    assert!(
        tree.lookup("app/packages/b").is_none(),
        "match below an excluded directory copied"
    );
}

#[test]
fn copy_from_a_stage_takes_globs_in_any_component() {
    let fx = fixture();
    fx.write("tree/a/lib/f.so", "f");
    fx.write("tree/b/lib/g.so", "g");
    fx.write("tree/c/other.txt", "o");
    let image = fx
        .build(
            "FROM base AS one\nCOPY tree /out/\n\
             FROM base\nCOPY --from=one /out/*/lib/*.so /libs/\n\
             COPY --parents --from=one /out/*/lib/*.so /p/\n",
        )
        .unwrap();
    let tree = fx.tree(&image);
    assert_eq!(tree.read("libs/f.so").unwrap(), b"f");
    assert_eq!(tree.read("libs/g.so").unwrap(), b"g");
    assert_eq!(tree.read("p/out/a/lib/f.so").unwrap(), b"f");
    assert_eq!(tree.read("p/out/b/lib/g.so").unwrap(), b"g");
    assert!(tree.lookup("p/out/c").is_none());
}

#[test]
fn copy_chmod_from_an_unset_arg_changes_nothing() {
    // `--chmod=$MODE` with MODE unset is no --chmod, as BuildKit takes it
    let fx = fixture();
    fx.write("tool", "t");
    fs::set_permissions(fx.context.join("tool"), fs::Permissions::from_mode(0o640)).unwrap();
    let image = fx
        .build("FROM base\nARG MODE\nCOPY --chmod=$MODE tool /tool\n")
        .unwrap();
    let (path, _) = fx.tree(&image).lookup("tool").unwrap();
    assert_eq!(
        fs::metadata(path).unwrap().permissions().mode() & 0o7777,
        0o640
    );
}

#[test]
fn copy_heredoc_expands_unless_quoted() {
    let fx = fixture();
    let image = fx.build("FROM base\nARG WHO=world\nCOPY <<EOF /hello\nhello $WHO\nEOF\nCOPY <<'EOF' /raw\nhello $WHO\nEOF\n").unwrap();
    let tree = fx.tree(&image);
    assert_eq!(tree.read("hello").unwrap(), b"hello world\n");
    assert_eq!(tree.read("raw").unwrap(), b"hello $WHO\n");
    let _ = fx.top(&image);
}

#[test]
fn cache_keys_ignore_mtimes_but_not_modes() {
    let fx = fixture();
    fx.write("f", "same");
    let buildfile = "FROM base\nCOPY f /f\nENV X=1\n";
    let first = fx.build(buildfile).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(fx.context.join("f"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let touched = fx.build(buildfile).unwrap();
    assert_eq!(first.id, touched.id);
    fs::set_permissions(fx.context.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    let chmodded = fx.build(buildfile).unwrap();
    assert_ne!(first.id, chmodded.id);
}

#[test]
fn source_date_epoch_makes_uncached_builds_reproducible() {
    let fx = fixture();
    fx.write("f", "content");
    fx.write("Buildfile", "FROM base\nCOPY f /f\nLABEL a=b\n");
    let mut opts = fx.options();
    opts.source_date_epoch = Some(1_700_000_000);
    opts.no_cache = true;
    let first = build(&fx.store, &NoRun, &opts).unwrap();
    let second = build(&fx.store, &NoRun, &opts).unwrap();
    assert_eq!(
        first.id, second.id,
        "same inputs and SOURCE_DATE_EPOCH: same image, even without cache"
    );
    assert_eq!(
        first.config.created().as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
}

#[test]
fn build_args_reach_from_and_unknown_target_fails() {
    let fx = fixture();
    fx.write(
        "Buildfile",
        "ARG IMAGE=nothing\nFROM $IMAGE AS only\nLABEL from=$IMAGE\n",
    );
    let mut opts = fx.options();
    opts.build_args = BTreeMap::from([("IMAGE".to_string(), "base".to_string())]);
    let image = build(&fx.store, &NoRun, &opts).unwrap();
    assert!(
        image
            .config
            .config()
            .as_ref()
            .unwrap()
            .labels()
            .as_ref()
            .unwrap()
            .get("from")
            .is_some_and(|v| v.is_empty()),
        "meta ARGs are not visible inside a stage"
    );
    opts.target = Some("other".into());
    let error = build(&fx.store, &NoRun, &opts).unwrap_err().to_string();
    assert!(
        error.contains("target stage \"other\" could not be found"),
        "{error}"
    );
}

#[test]
fn onbuild_triggers_run_in_the_child_and_are_dropped() {
    let fx = fixture();
    fx.write("f", "from the child's context");
    fx.build("FROM base\nONBUILD COPY f /from-trigger\nONBUILD LABEL triggered=yes\n")
        .unwrap();
    let parent = fx
        .store
        .images()
        .unwrap()
        .into_iter()
        .find(|i| i.names.is_empty())
        .unwrap();
    fx.store.tag(&parent, "parent:latest").unwrap();
    let child = fx.build("FROM parent\nLABEL child=1\n").unwrap();
    let tree = strata_builder::tree::Tree::new(fx.store.layer_dirs(&child).unwrap());
    assert_eq!(
        tree.read("from-trigger").unwrap(),
        b"from the child's context"
    );
    let raw: serde_json::Value =
        serde_json::from_slice(&fx.store.read_blob(&child.id).unwrap()).unwrap();
    assert_eq!(raw["config"]["Labels"]["triggered"], "yes");
    assert!(raw["config"].get("OnBuild").is_none(), "{raw}");
}

/// Serves `body` once per connection on 127.0.0.1 (a real HTTP server, minimal).
fn serve(body: &'static [u8]) -> String {
    serve_with("", body)
}

/// [`serve`] with more header lines (`Name: value\r\n` each).
fn serve_with(headers: &'static str, body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn add_url_checks_its_checksum() {
    let fx = fixture();
    let url = serve(b"downloaded bytes\n");
    let sum = strata_store::Digest::of(b"downloaded bytes\n");
    let image = fx
        .build(&format!(
            "FROM base\nADD --checksum={sum} {url}/files/data.txt /opt/\n"
        ))
        .unwrap();
    let tree = fx.tree(&image);
    let (path, _) = tree.lookup("opt/data.txt").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"downloaded bytes\n");
    assert_eq!(mode(&path), 0o600, "downloads are 0600, as Docker");
    let wrong = strata_store::Digest::of(b"other");
    // a URL without a file name is named `__unnamed__`, as the Dockerfile frontend names
    // it (which never asks for Content-Disposition); Last-Modified dates the file
    let dated = serve_with("Last-Modified: Sat, 03 Feb 2001 04:05:06 GMT\r\n", b"d\n");
    let named = serve_with(
        "Content-Disposition: attachment; filename=\"n.txt\"\r\n",
        b"n\n",
    );
    let image = fx
        .build(&format!(
            "FROM base\nADD {dated}/ /d/\nADD {named}/get?id=1 /n/\n"
        ))
        .unwrap();
    let tree = fx.tree(&image);
    let (path, meta) = tree.lookup("d/__unnamed__").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"d\n");
    assert_eq!(meta.mtime(), 981173106, "Last-Modified");
    assert_eq!(
        tree.read("n/get").unwrap(),
        b"n\n",
        "the URL's name, not the header's"
    );
    fx.fails(
        "FROM base\nADD git://127.0.0.1:1/repo#v1 /src\n",
        "Buildfile:2:",
        "git sources are not supported",
    );
    fx.fails(
        &format!("FROM base\n\nADD --checksum={wrong} {url}/x /x\n"),
        "Buildfile:3:",
        "checksum mismatch",
    );
}
