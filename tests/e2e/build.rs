//! `strata build` end to end: every instruction and its effect on the image config, stage
//! concurrency, the build cache (no-op, touch, content change, ARG change), .dockerignore,
//! ADD archives, cache mounts, and error messages with their Buildfile locations.
//! Build-time checks (`RUN test ...`) prove what is in the filesystem.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::TestStore;

/// A build context with `files` (path, content); the Buildfile is `Buildfile`.
fn context(store: &TestStore, files: &[(&str, &str)]) -> PathBuf {
    let dir = store.root().with_extension(format!("ctx{}", files.len()));
    let dir = tempfile::Builder::new()
        .prefix("ctx-")
        .tempdir_in(dir.parent().unwrap())
        .unwrap()
        .keep();
    for (path, content) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    dir
}

/// A build context holding only a Buildfile.
fn buildfile(store: &TestStore, text: &str) -> PathBuf {
    context(store, &[("Buildfile", text)])
}

/// What `image` changed over busybox, one sorted `strata diff` line each.
fn changes_over_busybox(store: &TestStore, image: &str) -> Vec<String> {
    let diff = store.ok(&["diff", "busybox:latest", image]);
    let mut lines: Vec<String> = diff.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

struct Built {
    id: String,
    stderr: String,
}

fn build(store: &TestStore, ctx: &Path, extra: &[&str]) -> Built {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    let ctx = ctx.to_str().unwrap();
    args.push(ctx);
    let out = store.strata(&args);
    crate::common::assert_success(&out, &args);
    Built {
        id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn build_fails(store: &TestStore, ctx: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let out = store.strata(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "strata {} should fail:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The progress line of the step whose text starts with `prefix`.
fn step_line<'a>(stderr: &'a str, prefix: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| {
            l.split("] ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with(prefix))
                && !l.contains("] | ")
        })
        .unwrap_or_else(|| panic!("no step line for {prefix:?} in:\n{stderr}"))
}

fn cached(stderr: &str, prefix: &str) -> bool {
    step_line(stderr, prefix).ends_with(" CACHED")
}

fn inspect(store: &TestStore, reference: &str) -> serde_json::Value {
    let text = store.ok(&["inspect", "--json", reference]);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value.as_array().map(|a| a[0].clone()).unwrap_or(value)
}

/// The image config blob exactly as stored (fields the OCI struct lacks, e.g. Healthcheck).
fn raw_config(store: &TestStore, id: &str) -> serde_json::Value {
    let hex = id.trim_start_matches("sha256:");
    serde_json::from_slice(&fs::read(store.root().join("oci/blobs/sha256").join(hex)).unwrap())
        .unwrap()
}

#[test]
fn build_every_instruction_shows_in_inspect() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[("run.sh", "#!/bin/sh\necho run\n"), ("sub/a.txt", "a\n")],
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(6);
    header.set_mode(0o640);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "from-tar.txt", &b"inside"[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    fs::write(ctx.join("files.tgz"), gz.finish().unwrap()).unwrap();
    fs::write(
        ctx.join("Buildfile"),
        r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS base
ARG VERSION=1.0
LABEL version=$VERSION "with space"="a b"
MAINTAINER strata team <team@example.invalid>
ENV APP=/app PATH=/app/bin:/usr/bin:/bin
WORKDIR $APP
COPY --chmod=755 run.sh bin/
COPY --chown=12:34 sub/ /data/sub/
ADD files.tgz /opt/
RUN --mount=type=cache,target=/cache echo built > /built && test "$VERSION" = 1.0
EXPOSE 8080 53/udp
VOLUME /data
USER 1000:1000
SHELL ["/bin/sh", "-ec"]
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD true
ONBUILD RUN echo child
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["run.sh"]

FROM base AS check
RUN test "$(id -u):$(id -g)" = 1000:1000 && test "$PWD" = /app && case $- in *e*) ;; *) exit 7;; esac
RUN --network=none test "$(ls /sys/class/net)" = lo
RUN test "$(ls /sys/class/net | wc -l)" -gt 1
USER root
RUN test "$(stat -c %a /app/bin/run.sh)" = 755 \
 && test "$(stat -c %u:%g /data/sub/a.txt)" = 12:34 \
 && test "$(cat /opt/from-tar.txt)" = inside \
 && test "$(cat /built)" = built \
 && test "$PWD" = /app && test "$APP" = /app \
 && test ! -e /cache/anything
"#,
    )
    .unwrap();
    build(&store, &ctx, &["--target", "check"]);
    let built = build(&store, &ctx, &["-t", "every:1", "--target", "base"]);
    let image = inspect(&store, "every:1");
    let config = &image["Config"];
    assert_eq!(
        config["Env"],
        serde_json::json!(["PATH=/app/bin:/usr/bin:/bin", "APP=/app"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["run.sh"]));
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(config["WorkingDir"], "/app");
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(config["StopSignal"], "SIGINT");
    assert!(
        config["ExposedPorts"].get("8080/tcp").is_some()
            && config["ExposedPorts"].get("53/udp").is_some(),
        "{config}"
    );
    assert!(config["Volumes"].get("/data").is_some(), "{config}");
    assert_eq!(config["Labels"]["version"], "1.0");
    assert_eq!(config["Labels"]["with space"], "a b");
    // MAINTAINER sets the image's author, as docker does, and no label
    assert_eq!(image["Author"], "strata team <team@example.invalid>");
    assert!(config["Labels"].get("maintainer").is_none(), "{config}");
    let raw = raw_config(&store, &built.id);
    let raw_config = &raw["config"];
    assert_eq!(
        raw_config["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"])
    );
    assert_eq!(raw_config["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(raw_config["Healthcheck"]["Retries"], 2);
    assert_eq!(raw_config["OnBuild"], serde_json::json!(["RUN echo child"]));
    assert_eq!(raw_config["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    // history: one entry per instruction but ARG; config-only ones are empty layers
    let history = raw["history"].as_array().unwrap();
    let built_by: Vec<&str> = history
        .iter()
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    assert!(
        built_by.iter().any(|c| c.starts_with("RUN /bin/sh -c")),
        "{built_by:?}"
    );
    // config instructions with their values expanded, as BuildKit records them
    for line in [
        "LABEL version=1.0 \"with space\"=\"a b\"",
        "ENV APP=/app PATH=/app/bin:/usr/bin:/bin",
        "WORKDIR /app",
    ] {
        assert!(built_by.contains(&line), "{line:?} in {built_by:?}");
    }
    let empty = history.iter().filter(|h| h["empty_layer"] == true).count();
    let layers = raw["rootfs"]["diff_ids"].as_array().unwrap().len();
    assert_eq!(
        history.len() - empty,
        layers,
        "non-empty history entries = layers"
    );
    // WORKDIR /app (new dir), 2 COPY, ADD, RUN on top of busybox's one layer
    assert_eq!(layers, 6, "{built_by:?}");
}

#[test]
fn build_independent_stages_run_concurrently() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    // Each stage waits for the other's marker in a shared cache mount: the build only
    // succeeds when both RUNs are alive at the same time.
    let wait = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,target=/sync,id=sync touch /sync/{me} && i=0; \
             while [ ! -e /sync/{other} ]; do i=$((i+1)); [ $i -gt 300 ] && exit 9; sleep 0.1; done; echo {me} > /{me}"
        )
    };
    let buildfile = format!(
        "FROM busybox AS left\n{}\nFROM busybox AS right\n{}\nFROM busybox AS unused\nRUN exit 42\nFROM busybox\nCOPY --from=left /left /\nCOPY --from=right /right /\nRUN test \"$(cat /left /right)\" = \"$(printf 'left\\nright')\"\n",
        wait("left", "right"),
        wait("right", "left")
    );
    let ctx = context(&store, &[("Buildfile", &buildfile)]);
    let built = build(&store, &ctx, &[]);
    assert!(
        !built.stderr.contains("exit 42"),
        "unreachable stage must not run:\n{}",
        built.stderr
    );
    assert!(!built.stderr.contains("[unused"), "{}", built.stderr);
}

#[test]
fn build_noop_rebuild_same_id_without_running() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            (
                "Buildfile",
                "FROM busybox\nCOPY . /ctx\nRUN cat /proc/sys/kernel/random/uuid > /id\nENV A=1\nCMD [\"cat\", \"/id\"]\n",
            ),
            ("f", "x"),
        ],
    );
    let first = build(&store, &ctx, &["-t", "noop", "-t", "noop:two"]);
    assert_eq!(
        inspect(&store, "noop:two")["Id"],
        first.id.as_str(),
        "-t is repeatable"
    );
    let second = build(&store, &ctx, &["-t", "noop"]);
    assert_eq!(
        first.id, second.id,
        "a fully cached build must give the same image id"
    );
    assert!(
        second.stderr.contains("[stage-0 2/"),
        "an unnamed stage is stage-N, as BuildKit names it:\n{}",
        second.stderr
    );
    for step in ["COPY", "RUN", "ENV", "CMD"] {
        assert!(
            cached(&second.stderr, step),
            "{step} not cached:\n{}",
            second.stderr
        );
    }
    // --no-cache runs the RUN again: new randomness, new id
    let fresh = build(&store, &ctx, &["--no-cache"]);
    assert!(!cached(&fresh.stderr, "RUN"), "{}", fresh.stderr);
    assert_ne!(fresh.id, first.id);
}

#[test]
fn build_touch_hits_content_change_misses_from_that_step() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            (
                "Buildfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /proc/sys/kernel/random/uuid > /1\nCOPY b.txt /b.txt\nRUN cat /proc/sys/kernel/random/uuid > /2\n",
            ),
            ("a.txt", "a"),
            ("b.txt", "b"),
        ],
    );
    let first = build(&store, &ctx, &[]);
    // mtime only: fully cached
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(ctx.join("a.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let touched = build(&store, &ctx, &[]);
    assert_eq!(
        touched.id, first.id,
        "touch must not invalidate:\n{}",
        touched.stderr
    );
    // b.txt changes: the steps before it hit, it and everything after miss
    fs::write(ctx.join("b.txt"), "b2").unwrap();
    let changed = build(&store, &ctx, &[]);
    assert!(cached(&changed.stderr, "COPY a.txt"), "{}", changed.stderr);
    assert!(
        cached(&changed.stderr, "RUN cat /proc/sys/kernel/random/uuid > /1"),
        "{}",
        changed.stderr
    );
    assert!(!cached(&changed.stderr, "COPY b.txt"), "{}", changed.stderr);
    assert!(
        !cached(&changed.stderr, "RUN cat /proc/sys/kernel/random/uuid > /2"),
        "{}",
        changed.stderr
    );
    // a mode change is a content change too
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(ctx.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let chmodded = build(&store, &ctx, &[]);
    assert!(
        !cached(&chmodded.stderr, "COPY a.txt"),
        "{}",
        chmodded.stderr
    );
}

#[test]
fn build_changed_arg_misses_where_used() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[(
            "Buildfile",
            "FROM busybox\nARG FLAVOR=plain\nRUN cat /proc/sys/kernel/random/uuid > /before\nENV UNRELATED=1\nFROM busybox\nARG FLAVOR=plain\nCOPY Buildfile /Buildfile\nRUN echo $FLAVOR > /flavor\n",
        )],
    );
    build(&store, &ctx, &[]);
    let same = build(&store, &ctx, &["--build-arg", "FLAVOR=plain"]);
    assert!(cached(&same.stderr, "RUN echo $FLAVOR"), "{}", same.stderr);
    let spicy = build(&store, &ctx, &["--build-arg", "FLAVOR=spicy", "-t", "arg"]);
    assert!(
        cached(&spicy.stderr, "COPY Buildfile"),
        "the ARG is not used before the RUN:\n{}",
        spicy.stderr
    );
    assert!(
        !cached(&spicy.stderr, "RUN echo $FLAVOR"),
        "{}",
        spicy.stderr
    );
    // and the value reached the RUN
    let ctx2 = context(
        &store,
        &[(
            "Buildfile",
            "FROM arg\nRUN test \"$(cat /flavor)\" = spicy\n",
        )],
    );
    build(&store, &ctx2, &[]);
}

#[test]
fn build_dockerignore_exceptions() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            (
                "Buildfile",
                "FROM busybox\nCOPY . /ctx\nRUN cd /ctx && find . | sort > /list && cat /list\n",
            ),
            (
                ".dockerignore",
                "# logs but one\n*.log\n!keep.log\nsecret/\ndocs\n!docs/README.md\n**/*.tmp\n",
            ),
            ("a.log", "x"),
            ("keep.log", "x"),
            ("sub/nested.log", "kept: * does not cross /"),
            ("secret/key", "x"),
            ("docs/guide.md", "x"),
            ("docs/README.md", "x"),
            ("deep/er/x.tmp", "x"),
            ("src/main.rs", "x"),
        ],
    );
    let first = build(&store, &ctx, &[]);
    let listed: Vec<&str> = first
        .stderr
        .lines()
        .filter_map(|l| l.split("] | ").nth(1))
        .collect();
    for present in [
        "./keep.log",
        "./sub/nested.log",
        "./docs/README.md",
        "./src/main.rs",
        "./Buildfile",
        "./.dockerignore",
    ] {
        assert!(listed.contains(&present), "{present} missing: {listed:?}");
    }
    for absent in [
        "./a.log",
        "./secret",
        "./secret/key",
        "./docs/guide.md",
        "./deep/er/x.tmp",
    ] {
        assert!(!listed.contains(&absent), "{absent} copied: {listed:?}");
    }
    // changing an ignored file does not invalidate the COPY
    fs::write(ctx.join("secret/key"), "changed").unwrap();
    let again = build(&store, &ctx, &[]);
    assert!(cached(&again.stderr, "COPY . /ctx"), "{}", again.stderr);
    // <Buildfile>.dockerignore wins over .dockerignore
    fs::write(ctx.join("Buildfile.dockerignore"), "*\n!Buildfile\n").unwrap();
    let own = context(&store, &[]);
    let _ = own;
    let out = build(
        &store,
        &ctx,
        &["-f", ctx.join("Buildfile").to_str().unwrap()],
    );
    let listed: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.split("] | ").nth(1))
        .collect();
    assert_eq!(listed, vec![".", "./Buildfile"], "{}", out.stderr);
}

#[test]
fn build_cache_mount_persists_between_builds() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[(
            "Buildfile",
            "FROM busybox\nARG N\nRUN --mount=type=cache,target=/var/cache/x echo $N >> /var/cache/x/log && cat /var/cache/x/log | wc -l > /count\n",
        )],
    );
    build(&store, &ctx, &["--build-arg", "N=1"]);
    build(&store, &ctx, &["--build-arg", "N=2", "-t", "cm"]);
    let check = context(
        &store,
        &[(
            "Buildfile",
            "FROM cm\nRUN test \"$(cat /count)\" = 2 && test ! -e /var/cache/x/log\n",
        )],
    );
    build(&store, &check, &[]);
    // One cache, locked, at two targets of one RUN: locked once, not waiting on itself.
    let twice = buildfile(
        &store,
        "FROM busybox\nRUN --mount=type=cache,id=c,target=/a,sharing=locked --mount=type=cache,id=c,target=/b,sharing=locked touch /a/f && test -e /b/f\n",
    );
    build(&store, &twice, &[]);
}

#[test]
fn build_add_extracts_archives_by_content() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(&store, &[]);
    let mut tar = tar::Builder::new(Vec::new());
    for name in ["one.txt", "dir/two.txt"] {
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, &b"abc"[..]).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    fs::write(ctx.join("plain.bin"), &tar).unwrap();
    fs::write(ctx.join("zst.data"), zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    fs::write(ctx.join("archive.tar.gz"), gz.finish().unwrap()).unwrap();
    fs::write(ctx.join("notatar.gz"), "just text").unwrap();
    fs::write(
        ctx.join("Buildfile"),
        "FROM busybox\nADD plain.bin /p/\nADD zst.data /z/\nADD archive.tar.gz /g\nADD notatar.gz /n/\n\
         RUN test \"$(cat /p/one.txt /z/dir/two.txt /g/one.txt)\" = abcabcabc && test \"$(cat /n/notatar.gz)\" = 'just text'\n",
    )
    .unwrap();
    build(&store, &ctx, &[]);
}

#[test]
fn copy_chmod_takes_symbolic_modes() {
    // Dockerfile 1.14: chmod(1)'s symbolic modes, applied to each entry's own mode.
    use std::os::unix::fs::PermissionsExt;
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            ("tool.sh", "echo tool\n"),
            ("tree/a.txt", "a\n"),
            ("tree/sub/b.txt", "b\n"),
            (
                "Buildfile",
                "FROM busybox\n\
                 COPY --chmod=u+x,go=u-w tool.sh /t/tool.sh\n\
                 COPY --chmod=a=rX tree /tree/\n\
                 COPY --chmod=g+w <<EOF /h.txt\nhi\nEOF\n\
                 RUN stat -c '%n %a' /t/tool.sh /tree/a.txt /tree/sub /tree/sub/b.txt /h.txt > /modes\n\
                 CMD [\"cat\", \"/modes\"]\n",
            ),
        ],
    );
    let mode = |path: &str, mode: u32| {
        fs::set_permissions(ctx.join(path), fs::Permissions::from_mode(mode)).unwrap()
    };
    mode("tool.sh", 0o640);
    mode("tree/a.txt", 0o600);
    mode("tree/sub/b.txt", 0o700);
    mode("tree/sub", 0o700);
    build(&store, &ctx, &["-t", "modes:1"]);
    let out = store.ok(&["run", "--rm", "modes:1"]);
    assert_eq!(
        out,
        "/t/tool.sh 755\n/tree/a.txt 444\n/tree/sub 555\n/tree/sub/b.txt 555\n/h.txt 664\n"
    );
}

#[test]
fn copy_of_a_directory_beside_a_file_named_like_it_copies_its_content() {
    // "app.py" and "own-x" sort between "app" and "app/main.py": the copy once stopped there
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            ("app/main.py", "main\n"),
            ("app.py", "sibling\n"),
            ("nest/own/deep/x", "x\n"),
            ("nest/own-x", "y\n"),
            ("nest/own.md", "z\n"),
            (
                "Buildfile",
                "FROM busybox\n\
                 COPY app /app\n\
                 COPY nest/own* /w/\n\
                 RUN cd / && find app w | sort > /files\n\
                 CMD [\"cat\", \"/files\"]\n",
            ),
        ],
    );
    build(&store, &ctx, &["-t", "siblings:1"]);
    assert_eq!(
        store.ok(&["run", "--rm", "siblings:1"]),
        "app\napp/main.py\nw\nw/deep\nw/deep/x\nw/own-x\nw/own.md\n"
    );
}

#[test]
fn a_name_that_is_not_utf8_fails_only_the_copy_that_takes_it() {
    // A Latin-1 file name in the context: docker takes any bytes, strata's context UTF-8
    // names only. The build fails only where a COPY would take that file, and says which.
    use std::os::unix::ffi::OsStrExt;
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            ("ok/a.txt", "a\n"),
            (
                "Buildfile",
                "FROM busybox\nCOPY ok /ok\nRUN cat /ok/a.txt\n",
            ),
        ],
    );
    let odd = ctx.join("c").join(std::ffi::OsStr::from_bytes(b"lat\xe9"));
    fs::create_dir_all(odd.parent().unwrap()).unwrap();
    fs::write(&odd, "old\n").unwrap();
    build(&store, &ctx, &[]);
    for (copy, what) in [
        ("COPY . /all", "."),
        ("COPY c /c", "c"),
        ("COPY c/lat* /l/", "a glob"),
    ] {
        fs::write(ctx.join("Buildfile"), format!("FROM busybox\n{copy}\n")).unwrap();
        let said = build_fails(&store, &ctx, &[]);
        assert!(
            said.contains("c/lat\u{FFFD}: file name is not UTF-8"),
            "{what}: {said}"
        );
    }
    // left out by .dockerignore: not in the context at all, nor in a bind mount of it
    fs::write(ctx.join(".dockerignore"), "c/lat*\n").unwrap();
    fs::write(
        ctx.join("Buildfile"),
        "FROM busybox\nCOPY . /all\n\
         RUN --mount=type=bind,target=/ctx ls -A /ctx/c > /seen\nCMD [\"cat\", \"/seen\"]\n",
    )
    .unwrap();
    build(&store, &ctx, &["-t", "odd:1"]);
    assert_eq!(store.ok(&["run", "--rm", "odd:1"]), "");
}

#[test]
fn copy_chmod_sets_the_directory_it_makes_for_a_directory() {
    // BuildKit since moby/buildkit#4945: `COPY --chmod=750 dir /dir` makes /dir 750. A
    // directory that was there keeps its mode, and the parents made on the way stay 0755
    // (Docker 28.1 gave them the --chmod mode, leaving them without x: moby/moby#49851).
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            ("bla/in.txt", "in\n"),
            ("f.txt", "f\n"),
            (
                "Buildfile",
                "FROM busybox\n\
                 COPY --chmod=750 bla /bla\n\
                 COPY --chmod=a=rX bla /deep/sym/\n\
                 COPY --chmod=640 bla /tmp\n\
                 COPY --chmod=640 f.txt /new/dir/f.txt\n\
                 RUN stat -c '%n %a' /bla /bla/in.txt /deep /deep/sym /tmp /new/dir /new/dir/f.txt > /modes\n\
                 CMD [\"cat\", \"/modes\"]\n",
            ),
        ],
    );
    build(&store, &ctx, &["-t", "dirmodes:1"]);
    let out = store.ok(&["run", "--rm", "dirmodes:1"]);
    assert_eq!(
        out,
        "/bla 750\n/bla/in.txt 750\n/deep 755\n/deep/sym 555\n/tmp 1777\n/new/dir 755\n\
         /new/dir/f.txt 640\n"
    );
}

#[test]
fn copy_parents_keeps_the_source_paths() {
    // The monorepo case (Dockerfile 1.7-labs `COPY --parents`): every package.json at
    // its own path, a `/./` pivot, a directory, and a stage as the source.
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            ("packages/a/package.json", "a\n"),
            ("packages/b/package.json", "b\n"),
            ("packages/b/src/index.js", "skip\n"),
            ("apps/web/package.json", "web\n"),
            ("src/lib/util/x.js", "x\n"),
            ("conf/app/settings.ini", "s\n"),
            (
                "Buildfile",
                "FROM busybox AS stage\n\
                 RUN mkdir -p /out/deep && echo made > /out/deep/made.txt\n\
                 FROM busybox\n\
                 COPY --parents packages/*/package.json apps/*/package.json /app/\n\
                 COPY --parents src/./lib/util/*.js /pivot\n\
                 COPY --parents s*/./lib/*/x.js /globpivot/\n\
                 COPY --parents conf /etc/\n\
                 COPY --parents --from=stage /out/deep/made.txt /staged/\n\
                 RUN stat -c %a /etc/conf > /conf-mode\n\
                 RUN cd / && find app pivot globpivot etc/conf staged -type f | sort > /files\n\
                 CMD [\"cat\", \"/files\"]\n",
            ),
        ],
    );
    fs::set_permissions(
        ctx.join("conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let first = build(&store, &ctx, &["-t", "parents:1"]);
    let out = store.ok(&["run", "--rm", "parents:1"]);
    assert_eq!(
        out,
        "app/apps/web/package.json\napp/packages/a/package.json\napp/packages/b/package.json\n\
         etc/conf/app/settings.ini\nglobpivot/lib/util/x.js\npivot/lib/util/x.js\n\
         staged/out/deep/made.txt\n"
    );
    // the matched directory keeps its own mode
    let out = store.ok(&["run", "--rm", "parents:1", "cat", "/conf-mode"]);
    assert_eq!(out, "750\n");
    // Moving a matched file to another directory changes where it lands: not cached.
    fs::rename(ctx.join("packages/b"), ctx.join("packages/c")).unwrap();
    let second = build(&store, &ctx, &["-t", "parents:2"]);
    assert_ne!(first.id, second.id);
    let out = store.ok(&["run", "--rm", "parents:2"]);
    assert!(out.contains("app/packages/c/package.json"), "{out}");
    // ADD has no --parents
    let bad = context(
        &store,
        &[
            ("a", "a"),
            ("Buildfile", "FROM busybox\nADD --parents a /d/\n"),
        ],
    );
    let stderr = build_fails(&store, &bad, &[]);
    assert!(
        stderr.contains("unknown flag --parents for ADD"),
        "{stderr}"
    );
}

#[test]
fn build_errors_name_their_location() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let cases: &[(&str, &str)] = &[
        (
            "FROM busybox\nRUNN echo typo\n",
            "Buildfile:2:1: unknown instruction \"RUNN\"",
        ),
        (
            "FROM busybox\nCOPY --chmod=u+q a b\n",
            "Buildfile:2:6: invalid --chmod \"u+q\": unknown permission 'q'",
        ),
        (
            "FROM busybox\nCOPY --chmod=755 --frm=x a b\n",
            "Buildfile:2:18: unknown flag --frm for COPY",
        ),
        (
            "FROM busybox\nRUN cat <<EOF\nno end\n",
            "Buildfile:2:9: unterminated heredoc <<EOF",
        ),
        (
            "FROM busybox\nENV A=\"open\n",
            "Buildfile:2:7: unterminated quote",
        ),
        (
            "FROM busybox\nCOPY --from=2 /a /b\n",
            "Buildfile:2:13: --from=2: unknown stage \"2\"",
        ),
        (
            "FROM busybox\n\nCOPY missing.txt /\n",
            "Buildfile:3:6: COPY source \"missing.txt\" not found in the build context",
        ),
        (
            "FROM localhost:1/nosuch:1\n",
            "Buildfile:1:6: base image \"localhost:1/nosuch:1\" not found",
        ),
        (
            "FROM busybox\nRUN echo first line; echo to stderr >&2; exit 3\n",
            "Buildfile:2:1: RUN exited with code 3",
        ),
    ];
    for (text, expected) in cases {
        let ctx = context(&store, &[("Buildfile", text)]);
        let stderr = build_fails(&store, &ctx, &[]);
        let location = format!("{}/{}", ctx.display(), expected);
        assert!(
            stderr.contains(&location),
            "expected {location:?} in:\n{stderr}"
        );
        assert!(
            stderr.starts_with("error: ") || stderr.contains("\nerror: "),
            "{stderr}"
        );
    }
    // RUN failure shows the last lines of output
    let ctx = context(
        &store,
        &[(
            "Buildfile",
            "FROM busybox\nRUN echo first line; echo to stderr >&2; exit 3\n",
        )],
    );
    let stderr = build_fails(&store, &ctx, &["-q"]);
    assert!(
        stderr.contains("first line") && stderr.contains("to stderr"),
        "{stderr}"
    );
    // unknown --target
    let ctx = context(&store, &[("Buildfile", "FROM busybox AS one\n")]);
    let stderr = build_fails(&store, &ctx, &["--target", "two"]);
    assert!(
        stderr.contains("target stage \"two\" could not be found"),
        "{stderr}"
    );
}

#[test]
fn build_quiet_prints_only_the_id_and_example_builds() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = repo.join("Buildfile.example");
    let ctx = context(&store, &[]);
    let out = store.strata(&[
        "build",
        "-q",
        "-t",
        "hello",
        "-f",
        example.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    crate::common::assert_success(&out, &["build", "Buildfile.example"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim().starts_with("sha256:") && stdout.lines().count() == 1,
        "{stdout}"
    );
    assert!(
        out.stderr.is_empty(),
        "-q prints nothing else: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = inspect(&store, "hello");
    assert_eq!(image["Config"]["Entrypoint"], serde_json::json!(["greet"]));
    let check = context(
        &store,
        &[(
            "Buildfile",
            "FROM hello\nRUN test \"$(greet tester)\" = 'hello, tester! (strata example v1.0)'\n",
        )],
    );
    build(&store, &check, &[]);
}

#[test]
fn build_heredoc_with_shebang_runs_as_its_own_program() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    // Through /bin/sh the awk program would be a syntax error; run as its own program
    // (as buildkit does) awk reads it. The script itself must not land in the layer.
    let ctx = context(
        &store,
        &[(
            "Buildfile",
            "FROM busybox\nRUN <<EOF\n#!/usr/bin/awk -f\nBEGIN { print \"awk ran\" > \"/shebang\" }\nEOF\nRUN <<EOF\necho sh ran > /plain\nEOF\nRUN test \"$(cat /shebang)\" = \"awk ran\" && test \"$(cat /plain)\" = \"sh ran\" && ! test -e /.strata-heredoc-EOF\n",
        )],
    );
    let built = build(&store, &ctx, &["-t", "shebang"]);
    let diff = store.ok(&["diff", "busybox:latest", "shebang"]);
    assert!(diff.lines().any(|l| l == "A /shebang"), "{diff}");
    assert!(
        !diff.contains("strata-heredoc"),
        "the heredoc script leaked into a layer:\n{diff}"
    );
    assert!(!built.id.is_empty());
}

#[test]
fn build_run_gets_resolv_conf_and_hosts_that_stay_out_of_the_layer() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    // busybox has no /etc/resolv.conf: RUN sees the host's, bound in, and the layer
    // holds only what the command wrote.
    let ctx = context(
        &store,
        &[(
            "Buildfile",
            "FROM busybox\nRUN cat /etc/resolv.conf > /resolv.seen && grep -q localhost /etc/hosts && test \"$(hostname)\" = buildkitsandbox\n",
        )],
    );
    build(&store, &ctx, &["-t", "etc"]);
    let diff = store.ok(&["diff", "busybox:latest", "etc"]);
    assert_eq!(
        diff.trim(),
        "A /resolv.seen",
        "only the command's own file is in the layer"
    );
    let seen = store.ok(&["run", "--rm", "etc", "cat", "/resolv.seen"]);
    assert_eq!(
        seen,
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    );
}

#[test]
fn build_secrets_reach_run_but_never_the_image_or_the_cache_key() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let token = store.root().with_extension("token");
    fs::write(&token, "s3cret").unwrap();
    let ctx = buildfile(
        &store,
        concat!(
            "FROM busybox\n",
            // md5 of "s3cret", so the value itself appears nowhere in the Buildfile
            "RUN --mount=type=secret,id=tok md5sum /run/secrets/tok | grep -q ^33e1b232a4e6fa0028a6670753749a17 && test \"$(stat -c %a /run/secrets/tok)\" = 400 && touch /file-ok\n",
            "RUN --mount=type=secret,id=tok,target=/etc/app/token,uid=1000,mode=0440 test \"$(stat -c %u:%a /etc/app/token)\" = 1000:440 && touch /target-ok\n",
            "RUN --mount=type=secret,id=tok,env=TOKEN echo -n \"$TOKEN\" | md5sum | grep -q ^33e1b232a4e6fa0028a6670753749a17 && touch /env-ok\n",
            "RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && touch /optional-ok\n",
        ),
    );
    let secret = format!("id=tok,src={}", token.display());
    build(&store, &ctx, &["--secret", &secret, "-t", "sec"]);
    assert_eq!(
        changes_over_busybox(&store, "sec"),
        ["A /env-ok", "A /file-ok", "A /optional-ok", "A /target-ok"],
        "neither the secrets nor their mount points are in the layers"
    );
    let config = inspect(&store, "sec").to_string();
    assert!(
        !config.contains("s3cret"),
        "the value is not in the config: {config}"
    );

    // The value is not part of the cache key: with another value every step is cached
    // (run again, the checks above would fail).
    fs::write(&token, "rotated").unwrap();
    let again = build(&store, &ctx, &["--secret", &secret]);
    assert!(
        cached(&again.stderr, "RUN --mount=type=secret,id=tok,env"),
        "{}",
        again.stderr
    );

    // A required secret that is not given fails the step, naming it and the fix.
    let ctx = buildfile(
        &store,
        "FROM busybox\nRUN --mount=type=secret,id=must,required true\n",
    );
    let err = build_fails(&store, &ctx, &[]);
    assert!(
        err.contains("Buildfile:2") && err.contains("\"must\"") && err.contains("--secret id=must"),
        "{err}"
    );
    let err = build_fails(&store, &ctx, &["--secret", "id=must,src=/nonexistent/file"]);
    assert!(err.contains("/nonexistent/file"), "{err}");

    // A RUN whose setup fails after its secret file was written leaves no copy behind.
    let ctx = buildfile(
        &store,
        "FROM busybox\nRUN --mount=type=secret,id=tok --mount=type=ssh,required true\n",
    );
    let err = build_fails(&store, &ctx, &["--secret", &secret]);
    assert!(err.contains("--ssh default"), "{err}");
    let left: Vec<_> = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("secret"))
        .collect();
    assert!(left.is_empty(), "secret files left in the store: {left:?}");
}

#[test]
fn build_ssh_agent_sockets_reach_run_but_not_the_layer() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let socket = store.root().with_extension("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let ctx = buildfile(
        &store,
        concat!(
            "FROM busybox\n",
            "RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && test \"$SSH_AUTH_SOCK\" = /run/buildkit/ssh_agent.0 && touch /agent-ok\n",
            "RUN --mount=type=ssh,id=work,target=/root/work.sock test -S /root/work.sock && test \"$SSH_AUTH_SOCK\" = /root/work.sock && touch /work-ok\n",
            "RUN --mount=type=ssh,id=absent test -z \"$SSH_AUTH_SOCK\" && touch /optional-ok\n",
        ),
    );
    let default = format!("default={}", socket.display());
    let work = format!("work={}", socket.display());
    build(
        &store,
        &ctx,
        &["--ssh", &default, "--ssh", &work, "-t", "ssh"],
    );
    assert_eq!(
        changes_over_busybox(&store, "ssh"),
        ["A /agent-ok", "A /optional-ok", "A /work-ok"],
        "the sockets and their mount points stay out of the layers"
    );

    let ctx = buildfile(&store, "FROM busybox\nRUN --mount=type=ssh,required true\n");
    let err = build_fails(&store, &ctx, &[]);
    assert!(
        err.contains("Buildfile:2") && err.contains("--ssh default"),
        "{err}"
    );
    let key = store.root().with_extension("id_ed25519");
    fs::write(&key, "not a socket").unwrap();
    let err = build_fails(
        &store,
        &ctx,
        &["--ssh", &format!("default={}", key.display())],
    );
    assert!(err.contains("not an agent socket"), "{err}");
}

/// A server process for a test (git daemon, an http server), killed by its PID on drop.
struct Served(std::process::Child);

impl Served {
    /// Starts `cmd` and waits until `port` on 127.0.0.1 takes connections.
    fn start(mut cmd: std::process::Command, port: u16) -> Served {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let served = Served(cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}")));
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed().as_secs() < 20,
                "{cmd:?} never listened on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        served
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `script`, which must fail; its stderr.
fn sh_fails(script: &str) -> String {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", script]);
    let out = crate::common::run_with_timeout(cmd, std::time::Duration::from_secs(120));
    assert!(!out.status.success(), "{script} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sh(script: &str) -> String {
    let out = crate::common::run_with_timeout(
        {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-ec", script]);
            cmd
        },
        std::time::Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn build_contexts_from_git_urls_archive_urls_and_stdin() {
    crate::common::require_tool("git", "apt-get install -y git");
    crate::common::require_tool("python3", "apt-get install -y python3");
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let read = |image: &str, file: &str| store.ok(&["run", "--rm", image, "cat", file]);

    // A git daemon serving the repositories made below.
    let base = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = std::process::Command::new("git");
    daemon
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.path().display()))
        .arg(base.path());
    let _git = Served::start(daemon, port);
    let url = format!("git://127.0.0.1:{port}/repo");
    let git = |dir: &Path, args: &str| {
        sh(&format!(
            "cd {} && git -c user.name=t -c user.email=t@t -c protocol.file.allow=never {args}",
            dir.display()
        ))
    };

    // A library repository, a submodule at app/lib of the main one.
    let lib = base.path().join("lib");
    fs::create_dir_all(&lib).unwrap();
    git(&lib, "init -q -b main");
    fs::write(lib.join("lib.txt"), "lib").unwrap();
    git(
        &lib,
        "add -A && git -c user.name=t -c user.email=t@t commit -qm lib",
    );

    // The main repository, with the context in app/: v1 (tagged), then v2 on main.
    let repo = base.path().join("repo");
    fs::create_dir_all(repo.join("app")).unwrap();
    git(&repo, "init -q -b main");
    fs::write(
        repo.join("app/Buildfile"),
        "FROM busybox\nCOPY . /ctx\nRUN test -z \"$(find /ctx -name .git)\" && test -n \"$(find /ctx -name lib.txt)\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/", repo.join("escape")).unwrap();
    git(
        &repo,
        &format!("submodule add -q git://127.0.0.1:{port}/lib app/lib"),
    );
    let commit = |version: &str| {
        fs::write(repo.join("app/version.txt"), version).unwrap();
        git(
            &repo,
            &format!(
                "add -A && git -c user.name=t -c user.email=t@t commit -qm {version} && git rev-parse HEAD"
            ),
        )
    };
    let v1 = commit("v1");
    git(&repo, "tag v1");
    commit("v2");

    // A tag, the remote HEAD and a commit, each with the app/ subdirectory.
    let built = |context: String, tag: &str| {
        store.ok(&["build", "-q", "-t", tag, &context]);
    };
    built(format!("{url}#v1:app"), "g-tag");
    assert_eq!(read("g-tag", "/ctx/version.txt"), "v1");
    built(format!("{url}#:app"), "g-head");
    assert_eq!(read("g-head", "/ctx/version.txt"), "v2");
    built(format!("{url}#{v1}:app"), "g-commit");
    assert_eq!(read("g-commit", "/ctx/version.txt"), "v1");
    // -f names a file inside the fetched context.
    let root = format!("{url}#v1");
    store.ok(&["build", "-q", "-t", "g-f", "-f", "app/Buildfile", &root]);
    // The context is the repository's root: app/ is inside it.
    assert_eq!(read("g-f", "/ctx/app/version.txt"), "v1");

    let err = build_fails(&store, Path::new(&format!("{url}#nosuch")), &[]);
    assert!(err.contains(&url) && err.contains("nosuch"), "{err}");
    let err = build_fails(
        &store,
        Path::new(&format!("{url}#--upload-pack=touch /x")),
        &[],
    );
    assert!(err.contains("bad git reference"), "{err}");
    let err = build_fails(&store, Path::new(&format!("{url}#v1:../etc")), &[]);
    assert!(err.contains("bad subdirectory"), "{err}");
    let err = build_fails(&store, Path::new(&format!("{url}#v1:escape/etc")), &[]);
    assert!(err.contains("leads out of the repository"), "{err}");
    let err = build_fails(&store, Path::new(&format!("{url}#v1:missing")), &[]);
    assert!(err.contains("no directory \"missing\""), "{err}");

    // An http URL of a gzipped tar, and of a lone Buildfile (an empty context).
    let www = base.path().join("www");
    let ctx = context(
        &store,
        &[
            ("Buildfile", "FROM busybox\nCOPY msg /msg\n"),
            ("msg", "from a tarball"),
        ],
    );
    fs::create_dir(&www).unwrap();
    sh(&format!(
        "tar -czf {}/ctx.tgz -C {} . && tar -cf {}/ctx.tar -C {} .",
        www.display(),
        ctx.display(),
        www.display(),
        ctx.display()
    ));
    fs::write(
        www.join("Buildfile"),
        "FROM busybox\nRUN echo lone > /lone\n",
    )
    .unwrap();
    let port = free_port();
    let mut http = std::process::Command::new("python3");
    http.args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg("--directory")
        .arg(&www)
        .arg(port.to_string());
    let _http = Served::start(http, port);
    built(format!("http://127.0.0.1:{port}/ctx.tgz"), "u-tar");
    assert_eq!(read("u-tar", "/msg"), "from a tarball");
    built(format!("http://127.0.0.1:{port}/Buildfile"), "u-lone");
    assert_eq!(read("u-lone", "/lone"), "lone\n");
    let err = build_fails(
        &store,
        Path::new(&format!("http://127.0.0.1:{port}/absent.tgz")),
        &[],
    );
    assert!(err.contains("absent.tgz"), "{err}");
    // Errors name a fetched Buildfile by its URL, not its file in the store's tmp/.
    fs::write(www.join("broken"), "FROM busybox\nFROB x\n").unwrap();
    let url = format!("http://127.0.0.1:{port}/broken");
    let err = build_fails(&store, Path::new(&url), &[]);
    assert!(
        err.contains(&format!("{url}:2:")) && !err.contains("/tmp/"),
        "{err}"
    );

    // stdin: a tar archive, or a Buildfile alone.
    let strata = format!(
        "{} --root {}",
        crate::common::strata_bin().display(),
        store.root().display()
    );
    sh(&format!(
        "{strata} build -q -t s-tar - < {}/ctx.tar",
        www.display()
    ));
    assert_eq!(read("s-tar", "/msg"), "from a tarball");
    sh(&format!(
        "{strata} build -q -t s-lone - < {}/Buildfile",
        www.display()
    ));
    assert_eq!(read("s-lone", "/lone"), "lone\n");
    // -f -: the Buildfile from stdin, the context a directory (docker build -f- DIR).
    sh(&format!(
        "printf 'FROM busybox\\nCOPY msg /from-stdin\\n' | {strata} build -q -t s-file -f - {}",
        ctx.display()
    ));
    assert_eq!(read("s-file", "/from-stdin"), "from a tarball");
    // Errors in a Buildfile read from stdin name it "stdin", not a file in the store.
    let out = sh_fails(&format!(
        "printf 'FROM busybox\\nFROB x\\n' | {strata} build -f - {}",
        ctx.display()
    ));
    assert!(out.contains("stdin:2:"), "{out}");
    let out = sh_fails(&format!(
        "printf 'FROM busybox\\nFROB x\\n' | {strata} build -"
    ));
    assert!(out.contains("stdin:2:") && !out.contains("/tmp/"), "{out}");
    // ... and one inside a fetched context by its path there.
    let broken = tempfile::tempdir().unwrap();
    fs::create_dir(broken.path().join("sub")).unwrap();
    fs::write(broken.path().join("sub/Dev"), "FROM busybox\nFROB x\n").unwrap();
    let out = sh_fails(&format!(
        "tar -cf - -C {} . | {strata} build -f sub/Dev -",
        broken.path().display()
    ));
    assert!(
        out.contains("sub/Dev:2:") && !out.contains("/tmp/"),
        "{out}"
    );
    fs::write(broken.path().join("sub/Dev"), "FROM busybox\n").unwrap();
    fs::write(broken.path().join(".dockerignore"), "a[\n").unwrap();
    let out = sh_fails(&format!(
        "tar -cf - -C {} . | {strata} build -f sub/Dev -",
        broken.path().display()
    ));
    assert!(
        out.contains("in .dockerignore") && !out.contains("/tmp/"),
        "{out}"
    );

    // A local directory wins over a git URL of the same spelling.
    let cwd = tempfile::tempdir().unwrap();
    let local = cwd.path().join("github.com/o/r");
    fs::create_dir_all(&local).unwrap();
    fs::write(local.join("Buildfile"), "FROM busybox\nRUN touch /local\n").unwrap();
    let out = store.strata_in(
        &["build", "-q", "-t", "local", "github.com/o/r"],
        Some(cwd.path()),
    );
    crate::common::assert_success(&out, &["build", "github.com/o/r"]);

    // Nothing fetched stays in the store.
    let left: Vec<_> = fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("context"))
        .collect();
    assert!(
        left.is_empty(),
        "fetched contexts left in the store: {left:?}"
    );
}

/// Mistakes on the command line are named as such, before anything is built.
#[test]
fn build_command_line_mistakes_say_what_is_wrong() {
    let store = TestStore::new();
    let empty = context(&store, &[]);
    let plain = context(&store, &[("Buildfile", "FROM scratch\n")]);
    for (args, says) in [
        (
            vec!["build", "/nonexistent/ctx"],
            "/nonexistent/ctx is not a directory",
        ),
        (
            vec!["build", empty.to_str().unwrap()],
            "no Buildfile, Dockerfile or Containerfile in",
        ),
        (
            vec!["build", "--build-arg", "=x", plain.to_str().unwrap()],
            "the name before = is empty",
        ),
    ] {
        let out = store.strata(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A build arg an ONBUILD trigger of the base image declares is consumed there: its value
/// reaches the trigger, and no warning says it went unused.
#[test]
fn onbuild_trigger_args_take_build_args() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let parent = context(
        &store,
        &[(
            "Buildfile",
            "FROM busybox\nONBUILD ARG OBARG=default\nONBUILD LABEL ob=$OBARG\n",
        )],
    );
    build(&store, &parent, &["-t", "obparent"]);
    let child = context(&store, &[("Buildfile", "FROM obparent\nRUN true\n")]);
    let built = build(
        &store,
        &child,
        &["--build-arg", "OBARG=given", "-t", "obchild"],
    );
    assert!(!built.stderr.contains("not consumed"), "{}", built.stderr);
    assert_eq!(
        inspect(&store, "obchild")["Config"]["Labels"]["ob"],
        "given"
    );
    let built = build(
        &store,
        &child,
        &["--build-arg", "NOBODY=x", "-t", "obchild2"],
    );
    assert!(
        built.stderr.contains("build args not consumed by") && built.stderr.contains("NOBODY"),
        "{}",
        built.stderr
    );
}

/// `--build-arg SOURCE_DATE_EPOCH=N`, BuildKit's way to a reproducible image: built again
/// later without the cache, the same image id, dated N.
#[test]
fn source_date_epoch_build_arg_makes_builds_reproducible() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = context(
        &store,
        &[
            ("x", "x\n"),
            (
                "Buildfile",
                "FROM busybox\nCOPY x /x\nRUN echo deterministic > /d\n",
            ),
        ],
    );
    // a cache filled without it must not serve the dated build
    build(&store, &ctx, &["-t", "undated"]);
    let mut ids = Vec::new();
    for (tag, no_cache) in [("r1", true), ("r2", false)] {
        let mut args = vec!["--build-arg", "SOURCE_DATE_EPOCH=1000000000", "-t", tag];
        if no_cache {
            args.push("--no-cache");
        }
        let built = build(&store, &ctx, &args);
        assert!(!built.stderr.contains("not consumed"), "{}", built.stderr);
        assert_eq!(inspect(&store, tag)["Created"], "2001-09-09T01:46:40Z");
        ids.push(built.id);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(ids[0], ids[1]);
    let err = build_fails(&store, &ctx, &["--build-arg", "SOURCE_DATE_EPOCH=soon"]);
    assert!(err.contains("SOURCE_DATE_EPOCH=soon"), "{err}");
}

/// `RUN --mount=type=bind`: the context as COPY sees it (.dockerignore applies), writes
/// (rw) land in a scratch layer and never in the context, symlinks in a source or on the
/// way to a mount point resolve inside their root, never on the host, and what a bind
/// shows is part of the step's cache key.
#[test]
fn bind_mounts_stay_inside_the_build() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim.txt");
    fs::write(&victim, "host secret\n").unwrap();
    let ctx = context(
        &store,
        &[
            ("data.txt", "v1\n"),
            ("secret.env", "s\n"),
            (".dockerignore", "*.env\n"),
        ],
    );
    std::os::unix::fs::symlink(&victim, ctx.join("ctxlink")).unwrap();
    let write = |text: &str| fs::write(ctx.join("Buildfile"), text).unwrap();

    write(
        "FROM busybox\n\
         RUN --mount=type=bind,target=/ctx ls -A /ctx | tr '\\n' ' ' > /listing\n\
         RUN --mount=type=bind,source=data.txt,target=/d cp /d /copied\n\
         RUN --mount=type=bind,target=/ctx,rw sh -c 'echo x > /ctx/newfile; echo mod >> /ctx/data.txt; cat /ctx/data.txt > /seen'\n",
    );
    build(&store, &ctx, &["-t", "b1"]);
    let listing = store.ok(&["run", "--rm", "b1", "cat", "/listing"]);
    assert!(
        listing.contains("data.txt") && !listing.contains("secret.env"),
        "{listing}"
    );
    assert_eq!(
        store.ok(&["run", "--rm", "b1", "cat", "/seen"]),
        "v1\nmod\n",
        "rw: writable in the step"
    );
    assert!(
        !ctx.join("newfile").exists(),
        "rw writes stay out of the context"
    );
    assert_eq!(fs::read_to_string(ctx.join("data.txt")).unwrap(), "v1\n");
    write("FROM busybox\nRUN --mount=type=bind,source=secret.env,target=/s cat /s\n");
    let err = build_fails(&store, &ctx, &["-t", "b2"]);
    assert!(
        err.contains("secret.env"),
        "an ignored file is not in the context: {err}"
    );

    // the content behind a bind is part of the key: a change reruns the step
    write("FROM busybox\nRUN --mount=type=bind,source=data.txt,target=/d cp /d /copied\n");
    build(&store, &ctx, &["-t", "b3"]);
    fs::write(ctx.join("data.txt"), "v2\n").unwrap();
    build(&store, &ctx, &["-t", "b3"]);
    assert_eq!(store.ok(&["run", "--rm", "b3", "cat", "/copied"]), "v2\n");

    // symlinks: one in the context and one in a stage lead to host paths
    write(
        "FROM busybox\nRUN --mount=type=bind,source=ctxlink,target=/x,rw sh -c 'cat /x; echo PWNED > /x'\n",
    );
    let out = store.strata(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "b4",
        ctx.to_str().unwrap(),
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("host secret"));
    write(&format!(
        "FROM busybox AS a\nRUN ln -s {} /v\nFROM busybox\nRUN --mount=type=bind,from=a,source=/v,target=/x,rw sh -c 'cat /x; echo PWNED > /x'\n",
        victim.display()
    ));
    let out = store.strata(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "b5",
        ctx.to_str().unwrap(),
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("host secret"));
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "host secret\n",
        "the host file is untouched"
    );
    // a link in the image on the way to a mount point
    write(&format!(
        "FROM busybox\nRUN ln -s {} /evil\nRUN --mount=type=tmpfs,target=/evil/made-by-build true\n",
        host.path().display()
    ));
    let _ = store.strata(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "b6",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        !host.path().join("made-by-build").exists(),
        "a mount point was made on the host"
    );
}

/// SIGINT (^C) or SIGTERM cancels a build as docker's is cancelled: the RUN under way is
/// killed at once (its shell, PID 1 of the step, would ignore the signal), and the build
/// undoes its mounts before strata ends with 128+N, with either driver.
#[test]
fn a_signal_cancels_a_build_and_its_run_at_once() {
    use std::process::{Command, Stdio};
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    for (driver, signal) in [("fuse", libc::SIGINT), ("overlay", libc::SIGTERM)] {
        let ctx = buildfile(
            &store,
            "FROM busybox\nRUN echo started; sleep 41; echo never\nRUN echo never either\n",
        );
        let log = store.root().join(format!("cancel-{driver}.log"));
        let mut build = Command::new(crate::common::strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["build", "--progress", "plain", "--driver", driver])
            .arg(&ctx)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let logged = || fs::read_to_string(&log).unwrap_or_default();
        while !logged().contains("| started") {
            assert!(start.elapsed().as_secs() < 60, "no RUN: {}", logged());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the child this test started and has not waited for.
        assert_eq!(unsafe { libc::kill(build.id() as i32, signal) }, 0);
        let sent = std::time::Instant::now();
        let status = loop {
            if let Some(status) = build.try_wait().unwrap() {
                break status;
            }
            if sent.elapsed().as_secs() >= 20 {
                build.kill().unwrap();
                build.wait().unwrap();
                panic!("{driver}: the build went on after the signal: {}", logged());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(128 + signal), "{driver}: {}", logged());
        assert!(logged().contains("build cancelled"), "{}", logged());
        assert!(!logged().contains("never"), "{}", logged());
        let root = store.root().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&root), "{driver}: left mounted: {mounts}");
    }
}

/// A build killed with SIGKILL (OOM killer, CI timeout) takes its RUN with it, also one
/// running as a non-root USER (the id switch clears the parent-death signal), and the
/// next gc sweeps the mounts it left without deleting through them (a cache mount's
/// content survives), with either driver.
#[test]
fn a_killed_build_leaves_no_process_and_gc_sweeps_its_mount() {
    use std::process::{Command, Stdio};
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    for driver in ["fuse", "overlay"] {
        let ctx = buildfile(
            &store,
            "FROM busybox\nRUN --mount=type=cache,id=keep,target=/c echo kept > /c/f\n\
             USER nobody\nRUN --mount=type=cache,id=keep,target=/c echo started; sleep 37\n",
        );
        let log = store.root().join(format!("build-{driver}.log"));
        let mut build = Command::new(crate::common::strata_bin())
            .arg("--root")
            .arg(store.root())
            .args([
                "build",
                "--no-cache",
                "--progress",
                "plain",
                "--driver",
                driver,
                ctx.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("| started")
        {
            assert!(
                start.elapsed().as_secs() < 60,
                "the RUN never started: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        build.kill().unwrap();
        build.wait().unwrap();
        // live processes running the step (a zombie waiting for the host's init is dead)
        let step_alive = || {
            fs::read_dir("/proc").unwrap().flatten().any(|entry| {
                let dir = entry.path();
                let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
                let state = fs::read_to_string(dir.join("stat")).unwrap_or_default();
                let zombie = state
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
                !zombie && String::from_utf8_lossy(&cmdline).contains("sleep 37")
            })
        };
        let start = std::time::Instant::now();
        while step_alive() {
            assert!(
                start.elapsed().as_secs() < 10,
                "{driver}: the RUN outlived the killed build"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        store.ok(&["gc"]);
        let root = store.root().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&root),
            "{driver}: gc swept the dead mounts: {mounts}"
        );
        let ctx = buildfile(
            &store,
            "FROM busybox\nRUN --mount=type=cache,id=keep,target=/c cat /c/f\n",
        );
        let out = store.strata(&[
            "build",
            "--no-cache",
            "--progress",
            "plain",
            ctx.to_str().unwrap(),
        ]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("| kept"),
            "{driver}: the cache lost its content"
        );
    }
}

/// A RUN (host network) gets a fresh read-only sysfs, not the host's /sys with its
/// submounts (tracefs, debugfs, bpf) writable.
#[test]
fn run_steps_see_no_host_sys_submounts() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let ctx = buildfile(
        &store,
        "FROM busybox\nRUN ! grep -E ' /sys/(kernel|fs/bpf|fs/fuse)' /proc/self/mountinfo && ! touch /sys/x 2>/dev/null\n",
    );
    build(&store, &ctx, &["--no-cache"]);
}

/// A changed LABEL, CMD or EXPOSE changes the image's config, not what a later RUN sees:
/// the RUN stays cached, as with BuildKit; a changed ENV reruns it.
#[test]
fn config_only_changes_keep_later_steps_cached() {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    let write = |label: &str, env: &str| {
        buildfile(
            &store,
            &format!(
                "FROM busybox\nLABEL version={label}\nENV E={env}\nEXPOSE 80\nCMD [\"a\"]\nRUN echo ran-the-step > /s\n"
            ),
        )
    };
    let first = build(&store, &write("1", "x"), &["-t", "c1"]);
    assert!(
        first.stderr.contains("| ran") || !cached(&first.stderr, "RUN echo"),
        "{}",
        first.stderr
    );
    let relabelled = build(&store, &write("2", "x"), &["-t", "c2"]);
    assert!(
        cached(&relabelled.stderr, "RUN echo"),
        "{}",
        relabelled.stderr
    );
    assert_ne!(relabelled.id, first.id, "the config still differs");
    assert_eq!(inspect(&store, "c2")["Config"]["Labels"]["version"], "2");
    let new_env = build(&store, &write("2", "y"), &["-t", "c3"]);
    assert!(!cached(&new_env.stderr, "RUN echo"), "{}", new_env.stderr);
}
