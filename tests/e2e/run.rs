//! `strata run ps rm logs stop kill diff commit` end to end, on both union drivers:
//! exit codes, detached containers, signal forwarding, limits, diff and commit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestStore, strata_bin};

const DRIVERS: [&str; 2] = ["fuse", "overlay"];

pub(crate) fn store_with_busybox() -> TestStore {
    let store = TestStore::new();
    store.import_busybox("busybox:latest");
    store
}

pub(crate) fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn ps_json(store: &TestStore) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&store.ok(&["ps", "-a", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn container_status(store: &TestStore, name: &str) -> serde_json::Value {
    ps_json(store)
        .into_iter()
        .find(|c| c["Names"][0] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Waits until `name` exists with `status` (and, for "exited", a recorded exit code).
pub(crate) fn wait_status(store: &TestStore, name: &str, status: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let container = ps_json(store)
            .into_iter()
            .find(|c| c["Names"][0] == name)
            .unwrap_or_default();
        if container["State"] == status && (status != "exited" || !container["ExitCode"].is_null())
        {
            return container;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} never became {status}: {container}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_returns_the_commands_exit_code_on_both_drivers() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let out = store.strata(&[
            "run",
            "--rm",
            "--driver",
            driver,
            "busybox",
            "sh",
            "-c",
            "echo hi $$; exit 3",
        ]);
        assert_eq!(code(&out), 3, "{driver}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hi 1\n", "{driver}");
    }
    assert!(ps_json(&store).is_empty(), "--rm left containers behind");
}

#[test]
fn run_failures_use_docker_exit_codes() {
    let store = store_with_busybox();
    let out = store.strata(&["run", "--rm", "no-such-image"]);
    assert_eq!(code(&out), 125);
    // docker's two lines: not here, then why the pull failed
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("Unable to find image 'no-such-image' locally\nerror: no such image"),
        "{stderr}"
    );
    // bad options fail before anything runs, as docker checks them
    for args in [
        &["run", "--rm", "--hostname", "a b", "busybox", "true"][..],
        &["run", "--rm", "--hostname", "", "busybox", "true"],
        &["run", "--rm", "-e", "=x", "busybox", "true"],
        &["run", "--rm", "--pids-limit", "-5", "busybox", "true"],
    ] {
        assert_eq!(code(&store.strata(args)), 125, "{args:?}");
    }
    store.ok(&["run", "--rm", "--pids-limit", "-1", "busybox", "true"]);
    let out = store.strata(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code(&out), 127);
    assert!(
        text(&out.stderr).contains("executable file not found"),
        "{}",
        text(&out.stderr)
    );
    let out = store.strata(&["run", "--rm", "busybox", "/etc/passwd"]);
    assert_eq!(code(&out), 126);
    // Detached too, as docker's: no id and a success for a command that cannot run, but
    // its exit code and why; the container shows it (State.Error), or is gone with --rm.
    let out = store.strata(&[
        "run",
        "-d",
        "--name",
        "cannot",
        "busybox",
        "no-such-command",
    ]);
    assert_eq!(code(&out), 127, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("executable file not found"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    let shown = store.ok(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}} {{.State.Error}}",
        "cannot",
    ]);
    assert!(
        shown.starts_with("127 exec: \"no-such-command\""),
        "{shown}"
    );
    store.ok(&["rm", "cannot"]);
    let before = store.ok(&["ps", "-aq"]);
    let out = store.strata(&["run", "-d", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code(&out), 127, "{}", text(&out.stderr));
    assert_eq!(store.ok(&["ps", "-aq"]), before, "the --rm container stays");
    // a command that runs and exits 127 is no failure to start
    store.ok(&["run", "-d", "--rm", "busybox", "sh", "-c", "exit 127"]);
    let out = store.strata(&["run", "--rm", "-u", "ghost", "busybox", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("unable to find user ghost"),
        "{}",
        text(&out.stderr)
    );
    // Refused at the mount, before anything runs.
    let out = store.strata(&[
        "run", "--rm", "--userns", "private", "--driver", "overlay", "busybox", "true",
    ]);
    assert_eq!(code(&out), 125, "{}", text(&out.stderr));
    // Detached, the reason still comes back, and nothing is left either.
    let out = store.strata(&[
        "run", "-d", "--rm", "--userns", "private", "--driver", "overlay", "busybox", "true",
    ]);
    assert_eq!(code(&out), 125, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("fuse driver"),
        "{}",
        text(&out.stderr)
    );
    // A mount that fails keeps no container made for it.
    let out = store.strata(&["mount", "busybox", "/nonexistent/dir"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let left = ps_json(&store);
    assert!(
        left.is_empty(),
        "failed runs and mounts left containers: {left:?}"
    );
}

#[test]
fn env_user_workdir_from_flags_and_image() {
    let store = store_with_busybox();
    store.ok(&["run", "--name", "base", "busybox", "true"]);
    store.ok(&[
        "commit",
        "--change",
        "ENV GREETING=hello",
        "--change",
        "WORKDIR /srv/app",
        "--change",
        "USER nobody",
        "base",
        "configured:1",
    ]);
    let out = store.ok(&[
        "run",
        "--rm",
        "configured:1",
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u",
    ]);
    assert_eq!(out, "hello\n/srv/app\n65534\n");
    let out = store.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=bye",
        "-w",
        "/tmp",
        "-u",
        "daemon",
        "configured:1",
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u",
    ]);
    assert_eq!(out, "bye\n/tmp\n1\n");
    // --env-file: K=V as written, K copied from here, comments and blank lines skipped;
    // -e wins over it
    let file = store.root().join("app.env");
    std::fs::write(
        &file,
        "# settings\nGREETING=from file\n\nQUOTED=\"kept\" as is\nHOME_COPY\nLAST=1\n",
    )
    .unwrap();
    let env_file = file.to_str().unwrap();
    let out = store.ok_env(
        &[
            "run",
            "--rm",
            "--env-file",
            env_file,
            "-e",
            "LAST=2",
            "configured:1",
            "sh",
            "-c",
            "echo $GREETING; echo $QUOTED; echo $HOME_COPY; echo $LAST",
        ],
        &[("HOME_COPY", "copied")],
    );
    assert_eq!(out, "from file\n\"kept\" as is\ncopied\n2\n");
    std::fs::write(&file, "BAD NAME=1\n").unwrap();
    let out = store.strata(&[
        "run",
        "--rm",
        "--env-file",
        env_file,
        "configured:1",
        "true",
    ]);
    assert!(
        text(&out.stderr).contains("app.env:1: bad variable name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn detached_container_is_logged_stopped_and_removed() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let name = format!("web-{driver}");
        let id = store.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--driver",
            driver,
            "busybox",
            "sh",
            "-c",
            "echo started; trap 'echo stopping; exit 7' TERM; while :; do sleep 0.05; done",
        ]);
        assert_eq!(id.trim().len(), 64, "{id}");
        let running = wait_status(&store, &name, "running");
        assert!(running["Pid"].as_i64().is_some());
        // inspect in docker's shape, for docker's templates
        let shown = store.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.Name}} {{.State.Running}}",
            &name,
        ]);
        assert_eq!(shown, format!("running /{name} true\n"));
        let line = |listing: String| {
            listing
                .lines()
                .find(|l| l.ends_with(&name))
                .map(str::to_string)
        };
        let up = line(store.ok(&["ps"])).expect("running containers are listed");
        assert!(
            up.contains("   Up ") && up.contains("second"),
            "docker's 'Up N seconds': {up}"
        );
        let out = store.strata(&["rm", &name]);
        assert_ne!(code(&out), 0, "rm of a running container must fail");
        store.ok(&["stop", "-t", "5", &name]);
        let exited = container_status(&store, &name);
        assert_eq!(
            (exited["State"].as_str(), exited["ExitCode"].as_i64()),
            (Some("exited"), Some(7)),
            "{exited}"
        );
        assert_eq!(store.ok(&["logs", &name]), "started\nstopping\n");
        assert!(!store.ok(&["ps"]).contains(&name));
        let gone = line(store.ok(&["ps", "-a"])).expect("ps -a lists exited containers");
        assert!(
            gone.contains("Exited (7) ") && gone.contains(" ago"),
            "{gone}"
        );
        store.ok(&["rm", &name]);
        assert!(
            ps_json(&store)
                .iter()
                .all(|c| c["Names"][0] != name.as_str())
        );
    }
}

/// `run -d -i` keeps stdin open (docker's `run -di IMAGE sh`, then `exec`): the shell
/// waits on it rather than reading EOF and exiting.
#[test]
fn detached_interactive_container_keeps_its_stdin_open() {
    let store = store_with_busybox();
    store.ok(&["run", "-d", "-i", "--name", "waits", "busybox", "sh"]);
    wait_status(&store, "waits", "running");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let state = container_status(&store, "waits");
    assert_eq!(state["State"], "running", "sh read EOF: {state}");
    assert_eq!(store.ok(&["exec", "waits", "echo", "hi"]), "hi\n");
    store.ok(&["rm", "-f", "waits"]);
    // without -i, stdin is /dev/null: the shell ends at once
    store.ok(&["run", "-d", "--name", "ends", "busybox", "sh"]);
    let exited = wait_status(&store, "ends", "exited");
    assert_eq!(exited["ExitCode"], 0);
}

#[test]
fn kill_and_force_remove() {
    let store = store_with_busybox();
    store.ok(&["tag", "busybox", "0first:1"]);
    store.ok(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "60"]);
    let running = wait_status(&store, "sleeper", "running");
    assert_eq!(
        running["Image"], "busybox:latest",
        "the name given, not another of the image's"
    );
    let id = running["Id"].as_str().unwrap();
    assert_eq!(store.ok(&["ps", "-q"]), format!("{}\n", &id[..12]));
    store.ok(&["kill", "sleeper"]);
    let exited = wait_status(&store, "sleeper", "exited");
    assert_eq!(exited["ExitCode"], 137);
    store.ok(&["run", "-d", "--name", "sleeper2", "busybox", "sleep", "60"]);
    wait_status(&store, "sleeper2", "running");
    store.ok(&["rm", "-f", "sleeper2"]);
    assert!(ps_json(&store).iter().all(|c| c["Names"][0] != "sleeper2"));
    // every argument is tried, as docker does: one bad name fails the command, not the rest
    store.ok(&["run", "--name", "done1", "busybox", "true"]);
    let out = store.strata(&["rm", "sleeper", "no-such-container", "done1"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("no-such-container"));
    assert!(ps_json(&store).is_empty(), "both others removed");
}

#[test]
fn signals_to_strata_run_reach_the_container() {
    use nix::sys::signal::Signal;
    let store = store_with_busybox();
    // TERM, and USR1 as servers use it to reopen logs: docker's sig-proxy forwards both
    for (signal, trap, code) in [(Signal::SIGTERM, "TERM", 42), (Signal::SIGUSR1, "USR1", 43)] {
        let name = format!("trapper-{trap}");
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args([
                "run",
                "--name",
                &name,
                "busybox",
                "sh",
                "-c",
                &format!("trap 'exit {code}' {trap}; while :; do sleep 0.05; done"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_status(&store, &name, "running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("strata run did not exit after {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(code), "{signal}");
        assert_eq!(container_status(&store, &name)["ExitCode"], code);
    }
}

#[test]
fn a_killed_run_rm_leaves_no_container() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let name = format!("abandoned-{driver}");
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args([
                "run", "--rm", "--name", &name, "--driver", driver, "busybox", "sleep", "300",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = wait_status(&store, &name, "running");
        let id = running["Id"].as_str().unwrap().to_string();
        child.kill().unwrap();
        child.wait().unwrap();
        // The command outlives its runner (no daemon kills it); while it runs it is listed.
        assert_eq!(container_status(&store, &name)["State"], "running");
        let pid = nix::unistd::Pid::from_raw(running["Pid"].as_i64().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let start = Instant::now();
        while ps_json(&store)
            .iter()
            .any(|c| c["Names"][0] == name.as_str())
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} was never removed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!store.root().join("containers").join(&id).exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&id), "its union is unmounted: {mounts}");
    }
    // and the image it held can go
    store.ok(&["rmi", "busybox"]);
}

/// The container outlives a killed `strata run` (docker's client) and so do its files
/// and its output: a FUSE union has a server process of its own, as an overlay one has the
/// kernel, and the log copier is a process of its own, so what the container writes later
/// is logged, not a SIGPIPE that kills it.
#[test]
fn a_killed_run_keeps_the_containers_files_and_output() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let name = format!("talkative-{driver}");
        let echoed = store.root().join(format!("echoed-{driver}"));
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["run", "--name", &name, "--driver", driver, "busybox", "sh", "-c"])
            .arg("echo before; for i in $(seq 1200); do [ -f /tmp/go ] && break; sleep 0.05; done; echo after")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&echoed).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_status(&store, &name, "running");
        let start = Instant::now();
        while std::fs::read_to_string(&echoed).unwrap_or_default() != "before\n" {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{driver}: no output reached strata's stdout"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        store.ok(&["exec", &name, "touch", "/tmp/go"]);
        let start = Instant::now();
        while store.ok(&["logs", &name]) != "before\nafter\n" {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{driver}: the log stops at {:?}",
                store.ok(&["logs", &name])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // strata's stdout had the echo while strata lived, not after
        assert_eq!(std::fs::read_to_string(&echoed).unwrap(), "before\n");
        // it starts again: the union the killed run left mounted is replaced
        let start = Instant::now();
        while container_status(&store, &name)["State"] != "exited" {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{driver}: the container never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(store.ok(&["start", "-a", &name]), "before\nafter\n");
        store.ok(&["rm", "-f", &name]);
    }
}

/// `-v HOST:DIR[:ro]` binds host paths; the image's VOLUMEs get volumes of the container's
/// own, filled from the image (content, owner, mode) and kept out of its upper; a link in
/// the image never takes a mount point outside the container.
#[test]
fn volumes_bind_host_paths_and_start_from_the_image() {
    let store = store_with_busybox();
    let ctx = store.root().join("ctx");
    let escape = store.root().join("escape");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::create_dir_all(&escape).unwrap();
    std::fs::write(
        ctx.join("Buildfile"),
        format!(
            "FROM busybox\nRUN mkdir /data && echo seed > /data/seed && chown -R 7:8 /data && chmod 750 /data\n\
             RUN ln -s {} /evil\nVOLUME /data\n",
            escape.display()
        ),
    )
    .unwrap();
    store.ok(&["build", "-t", "vol", ctx.to_str().unwrap()]);
    let host = store.root().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from host\n").unwrap();
    // a -v below an image VOLUME goes on top of it, whatever the order
    let out = store.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/data/sub", host.display()),
        "vol",
        "cat",
        "/data/sub/in",
        "/data/seed",
    ]);
    assert_eq!(out, "from host\nseed\n");
    // in a user namespace an empty volume belongs to container root
    store.ok(&[
        "run",
        "--rm",
        "--userns",
        "private",
        "-v",
        "/scratch",
        "vol",
        "touch",
        "/scratch/x",
    ]);
    for driver in DRIVERS {
        let script = format!(
            "cat /data/seed; stat -c %u:%g:%a /data /data/seed; cat /mnt/h/in; echo out > /mnt/h/out-{driver}; \
             cat /etc/in.conf; (echo x > /etc/in.conf) 2>/dev/null || echo read-only"
        );
        let out = store.ok(&[
            "run",
            "--rm",
            "--driver",
            driver,
            "-v",
            &format!("{}:/mnt/h", host.display()),
            "-v",
            &format!("{}/in:/etc/in.conf:ro", host.display()),
            "-v",
            &format!("{}:/evil/sub", host.display()),
            "vol",
            "sh",
            "-c",
            &script,
        ]);
        assert_eq!(
            out, "seed\n7:8:750\n7:8:644\nfrom host\nfrom host\nread-only\n",
            "{driver}"
        );
        assert_eq!(
            std::fs::read_to_string(host.join(format!("out-{driver}"))).unwrap(),
            "out\n"
        );
        assert!(
            !escape.join("sub").exists(),
            "a mount point followed /evil out of the container"
        );
    }
    // Writes to a volume bypass the upper: commit leaves them out, as docker's does.
    store.ok(&[
        "run",
        "--name",
        "keep",
        "vol",
        "sh",
        "-c",
        "echo new > /data/new; echo up > /up",
    ]);
    let upper = store
        .root()
        .join("containers")
        .join(container_status(&store, "keep")["Id"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(upper.join("volumes/0/new")).unwrap(),
        "new\n"
    );
    store.ok(&["commit", "keep", "kept"]);
    let out = store.ok(&["run", "--rm", "kept", "sh", "-c", "cat /up; ls /data"]);
    assert_eq!(out, "up\nseed\n");
    // bad -v arguments fail before anything runs, with docker's exit code
    let out = store.strata(&["run", "--rm", "-v", "/nonexistent-strata:/x", "vol", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("/nonexistent-strata"),
        "{}",
        text(&out.stderr)
    );
}

/// Options end at the image, as with docker: `run IMAGE -d --rm x` passes `-d --rm x` on.
#[test]
fn arguments_after_the_image_go_to_the_container() {
    let store = store_with_busybox();
    let out = store.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo \"$*\"",
        "sh",
        "-d",
        "--rm",
        "-e",
        "X=1",
        "--",
        "x",
    ]);
    assert_eq!(out, "-d --rm -e X=1 -- x\n");
    let out = store.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/ls",
        "busybox",
        "-d",
        "/",
    ]);
    assert_eq!(out, "/\n");
    // with the host's network, the host's name (docker's rule); else the short id
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        store.ok(&["run", "--rm", "--network", "host", "busybox", "hostname"]),
        format!("{host}\n")
    );
    // -it needs a terminal to read from, as docker says (stdin is not one here)
    let out = store.strata(&["run", "--rm", "-it", "busybox", "cat"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("the input device is not a TTY"),
        "{}",
        text(&out.stderr)
    );
}

/// `stop` sends the image's STOPSIGNAL (or `run --stop-signal`) first, as docker does.
#[test]
fn stop_sends_the_stop_signal() {
    let store = store_with_busybox();
    let ctx = store.root().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Buildfile"),
        "FROM busybox\nSTOPSIGNAL SIGUSR1\nCMD trap 'exit 3' USR1; trap 'exit 4' HUP; while :; do sleep 0.05; done\n",
    )
    .unwrap();
    store.ok(&["build", "-t", "ss", ctx.to_str().unwrap()]);
    for (name, extra, code) in [("usr1", None, 3), ("hup", Some("--stop-signal=HUP"), 4)] {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(extra);
        args.push("ss");
        store.ok(&args);
        wait_status(&store, name, "running");
        store.ok(&["stop", "-t", "60", name]);
        assert_eq!(container_status(&store, name)["ExitCode"], code, "{name}");
    }
}

#[test]
fn logs_follow_and_tail() {
    let store = store_with_busybox();
    store.ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "busybox",
        "sh",
        "-c",
        "echo a; echo b >&2; sleep 1; echo c",
    ]);
    // -f returns once the container has exited, with everything it wrote; each stream
    // goes back to its own descriptor
    let out = store.strata(&["logs", "-f", "talker"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("a\nc\n".into(), "b\n".into())
    );
    // (the order across the two streams is the order strata read them in, as docker's)
    let out = store.strata(&["logs", "--tail", "1", "talker"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("c\n".into(), "".into())
    );
    assert_eq!(store.ok(&["logs", "-n", "0", "talker"]), "");
    // a run in the foreground prints its output and logs it, as docker's does
    let script = "echo out1; echo err1 >&2; echo out2; printf 'no newline'";
    let out = store.strata(&["run", "--name", "fg", "busybox", "sh", "-c", script]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out1\nout2\nno newline".into(), "err1\n".into())
    );
    let out = store.strata(&["logs", "fg"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out1\nout2\nno newline".into(), "err1\n".into())
    );
    // a reader that goes away ends the command, as when it wrote to that pipe itself
    let mut piped = Command::new("sh");
    piped.arg("-c").arg(format!(
        "{} --root {} run --rm busybox yes | head -1",
        crate::common::strata_bin().display(),
        store.root().display()
    ));
    let out = crate::common::run_with_timeout(piped, Duration::from_secs(60));
    assert_eq!(text(&out.stdout), "y\n", "{}", text(&out.stderr));
    let stamped = store.ok(&["logs", "-t", "fg"]);
    let first = stamped.lines().next().unwrap();
    let (time, line) = first.split_once(' ').unwrap();
    assert!(
        time.ends_with('Z') && time.contains('T') && line == "out1",
        "{stamped}"
    );
}

#[test]
fn memory_limit_oom_kills_and_exits_137() {
    let store = store_with_busybox();
    let out = store.strata(&[
        "run",
        "--name",
        "oom",
        "--memory",
        "64m",
        "busybox",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(code(&out), 137, "{}", text(&out.stderr));
    // docker's State.OOMKilled, kept after the cgroup is gone, and reset by a new start
    let state = "{{.State.ExitCode}} {{.State.OOMKilled}}";
    assert_eq!(store.ok(&["inspect", "-f", state, "oom"]), "137 true\n");
    store.ok(&[
        "run", "--name", "fine", "--memory", "64m", "busybox", "true",
    ]);
    assert_eq!(store.ok(&["inspect", "-f", state, "fine"]), "0 false\n");
    store.ok(&["rm", "oom", "fine"]);
    let out = store.strata(&[
        "run",
        "--rm",
        "--pids-limit",
        "16",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 64 ]; do sleep 5 & i=$((i+1)); done; echo survived",
    ]);
    assert!(
        text(&out.stderr).contains("can't fork"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn network_none_and_host() {
    let store = store_with_busybox();
    assert_eq!(
        store.ok(&["run", "--rm", "busybox", "ls", "/sys/class/net"]),
        "lo\n"
    );
    let host = std::fs::read_dir("/sys/class/net").unwrap().count();
    let inside = store.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(inside.lines().count(), host);
}

#[test]
fn diff_lists_adds_changes_and_deletes_on_both_drivers() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let name = format!("changer-{driver}");
        store.ok(&[
            "run",
            "--name",
            &name,
            "--driver",
            driver,
            "busybox",
            "sh",
            "-c",
            // /etc/hosts and /etc/hostname are the container's own binds (docker's): not changes
            "echo new > /newfile; echo x >> /etc/passwd; rm /etc/group; mkdir -p /var/lib/app",
        ]);
        let diff = store.ok(&["diff", &name]);
        assert_eq!(
            diff,
            "C /etc\nD /etc/group\nC /etc/passwd\nA /newfile\nC /var\nA /var/lib\nA /var/lib/app\n",
            "{driver}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&store.ok(&["diff", "--json", &name])).unwrap();
        assert_eq!(
            json[1],
            serde_json::json!({"kind": "D", "path": "/etc/group"})
        );
    }
}

/// A running container is paused while its layer is made, as docker's commit pauses it:
/// the layer is one moment of the container. Its loop writes /a and then /z with the same
/// count (each by a rename, never empty), so at any moment z is a or a - 1; the layer reads
/// /a, then a 20 MiB /m, then /z, and a container left running meanwhile has counted on
/// (z > a). Then it runs on.
#[test]
fn commit_pauses_a_running_container_and_resumes_it() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let name = format!("counter-{driver}");
        let tag = format!("counted:{driver}");
        store.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--driver",
            driver,
            "busybox",
            "sh",
            "-c",
            "dd if=/dev/urandom of=/m bs=1M count=20 2>/dev/null; i=0; \
             while :; do i=$((i+1)); echo $i > /a.t; mv /a.t /a; echo $i > /z.t; mv /z.t /z; done",
        ]);
        let count = |file: &str| {
            let out = store.ok(&["exec", &name, "cat", file]);
            out.trim().parse::<u64>().unwrap()
        };
        // thawed: it counts on
        let counts_on = |after_what: &str| {
            let before = count("/z");
            std::thread::sleep(Duration::from_millis(300));
            let after = count("/z");
            assert!(
                after > before,
                "{driver}: the container stopped counting after {after_what}: {before} then {after}"
            );
        };
        let started = Instant::now();
        while store
            .strata(&["exec", &name, "test", "-e", "/z"])
            .status
            .code()
            != Some(0)
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{driver}: no /z"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        store.ok(&["commit", &name, &tag]);
        let out = store.ok(&["run", "--rm", &tag, "cat", "/a", "/z"]);
        let values: Vec<u64> = out.lines().map(|line| line.parse().unwrap()).collect();
        let [a, z] = values[..] else {
            panic!("{driver}: /a and /z in the layer: {out:?}")
        };
        assert!(
            z <= a && a <= z + 1,
            "{driver}: the layer is not one moment of the container: a={a} z={z}"
        );
        counts_on("the commit");
        // A bad --change fails the commit before anything is paused.
        let out = store.strata(&["commit", "--change", "RUN true", &name, &tag]);
        assert!(
            !out.status.success(),
            "{driver}: a commit with --change RUN"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unsupported instruction RUN"),
            "{driver}: {err}"
        );
        counts_on("a failed commit");
        assert_eq!(container_status(&store, &name)["State"], "running");
        store.ok(&["rm", "-f", &name]);
    }
}

/// Is the host cgroup of container `id` frozen? Read where `strata commit` freezes it: the
/// v2 freezer where the container has a v2 cgroup with one, else the v1 freezer. None
/// while it has no such cgroup.
fn frozen(id: &str) -> Option<bool> {
    let name = format!("strata/strata-{id}");
    for v2 in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let dir = std::path::Path::new(v2).join(&name);
        if dir.join("cgroup.freeze").exists() {
            let events = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
            return Some(events.lines().any(|line| line == "frozen 1"));
        }
    }
    let state = std::path::Path::new("/sys/fs/cgroup/freezer")
        .join(&name)
        .join("freezer.state");
    let state = std::fs::read_to_string(state).ok()?;
    Some(state.trim() == "FROZEN")
}

/// SIGKILL is the one signal a commit cannot hold off while it has the container paused:
/// its thaw guard (a child that outlives it) thaws the container at once, and the next
/// commit is not kept waiting for the dead one's lock. The container has a 400 MiB upper
/// file, so that its layer takes long enough for the pause to be seen and the commit
/// killed in the middle.
#[test]
fn a_commit_killed_while_the_container_is_paused_leaves_it_running() {
    let store = store_with_busybox();
    store.ok(&[
        "run",
        "-d",
        "--name",
        "big",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/urandom of=/m bs=1M count=400 2>/dev/null; i=0; \
         while :; do i=$((i+1)); echo $i > /c.t; mv /c.t /c; done",
    ]);
    let count = || {
        let out = store.ok(&["exec", "big", "cat", "/c"]);
        out.trim().parse::<u64>().unwrap()
    };
    let started = Instant::now();
    while store
        .strata(&["exec", "big", "test", "-e", "/c"])
        .status
        .code()
        != Some(0)
    {
        assert!(started.elapsed() < Duration::from_secs(120), "no /c");
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = container_status(&store, "big")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(frozen(&id), Some(false), "the container's freezer, before");
    let mut commit = Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["commit", "big", "killed:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while frozen(&id) != Some(true) {
        assert!(
            commit.try_wait().unwrap().is_none(),
            "the commit ended before the container was seen paused"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the commit never paused the container"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    commit.kill().unwrap();
    commit.wait().unwrap();
    let killed = Instant::now();
    while frozen(&id) != Some(false) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the container stays paused after its commit was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = count();
    std::thread::sleep(Duration::from_millis(300));
    let after = count();
    assert!(
        after > before,
        "the container stopped counting: {before} then {after}"
    );
    assert_eq!(container_status(&store, "big")["State"], "running");
    // (the killed commit made no image)
    assert!(!store.ok(&["images"]).contains("killed"));
    store.ok(&["commit", "big", "after:1"]);
    store.ok(&["rm", "-f", "big"]);
}

#[test]
fn commit_then_run_shows_the_change_and_the_deletion() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let name = format!("committer-{driver}");
        let tag = format!("committed:{driver}");
        store.ok(&[
            "run",
            "--name",
            &name,
            "--driver",
            driver,
            "busybox",
            "sh",
            "-c",
            "echo data > /data; rm /etc/group; rm -r /home; mkdir /home; touch /home/only",
        ]);
        let id = store.ok(&[
            "commit",
            "-m",
            "add data",
            "--change",
            "CMD [\"cat\", \"/data\"]",
            &name,
            &tag,
        ]);
        assert!(id.trim().starts_with("sha256:"));
        for run_driver in DRIVERS {
            assert_eq!(
                store.ok(&["run", "--rm", "--driver", run_driver, &tag]),
                "data\n"
            );
            let out = store.ok(&[
                "run",
                "--rm",
                "--driver",
                run_driver,
                &tag,
                "sh",
                "-c",
                "ls /etc/group 2>&1; ls -A /home",
            ]);
            assert_eq!(
                out, "ls: /etc/group: No such file or directory\nonly\n",
                "made on {driver}, run on {run_driver}"
            );
        }
        let history = store.ok(&["history", &tag]);
        assert!(history.contains("add data"), "{history}");
        assert_eq!(
            store.ok(&["diff", "busybox", &tag]),
            store.ok(&["diff", &name])
        );

        // A container that changes nothing still commits to a new image (no new layer),
        // which takes the command, environment and working directory it ran with.
        let idle = format!("idle-{driver}");
        store.ok(&[
            "run",
            "--name",
            &idle,
            "--driver",
            driver,
            "-e",
            "MODE=idle",
            "-w",
            "/tmp",
            &tag,
            "true",
        ]);
        assert_eq!(store.ok(&["diff", &idle]), "");
        let again = format!("again:{driver}");
        let new_id = store.ok(&["commit", &idle, &again]);
        assert_ne!(new_id, id);
        let shown = store.ok(&[
            "inspect",
            "-f",
            "{{json .Config.Cmd}} {{.Config.WorkingDir}} {{len .RootFS.Layers}}",
            &again,
        ]);
        let layers = store.ok(&["inspect", "-f", "{{len .RootFS.Layers}}", &tag]);
        assert_eq!(shown, format!("[\"true\"] /tmp {layers}"));
        let env = store.ok(&["inspect", "-f", "{{json .Config.Env}}", &again]);
        assert!(env.contains("MODE=idle"), "{env}");
        assert_eq!(
            store.ok(&["run", "--rm", &again, "sh", "-c", "echo $MODE; pwd"]),
            "idle\n/tmp\n"
        );
    }
}

/// script(1) running `shell` on a terminal. Its stdin is a FIFO opened read-write, which
/// never reaches EOF: on EOF of a non-terminal stdin, script types the terminal's EOF
/// character into the session, and while strata holds it in raw mode that arrives in the
/// container as a stray byte (echoed `^@`) at a time that depends on the machine's load.
fn script(store: &TestStore, shell: &str) -> Command {
    let fifo = store.root().join("script-stdin");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "mkfifo \"$1\" && exec script -qec \"$0\" /dev/null 0<>\"$1\"",
    ])
    .arg(shell)
    .arg(&fifo);
    cmd
}

#[test]
fn tty_gets_the_window_size_and_the_terminal_is_restored() {
    crate::common::require_tool("script", "apt-get install -y util-linux");
    let store = store_with_busybox();
    let strata = format!(
        "{} --root {}",
        strata_bin().display(),
        store.root().display()
    );
    // script(1) gives strata a terminal; strata must copy its size into the container's
    // pty, put it in raw mode while the container runs, and restore it afterwards.
    let shell = format!(
        "stty rows 40 cols 100; {strata} run --rm -i -t busybox sh -c 'stty size; test -t 0 && echo tty-ok; exit 5'; \
         echo rc=$?; {strata} run --rm -t busybox stty size < /dev/null; \
         stty -a | grep -o -- ' -*icanon' | tr -d ' '"
    );
    let out = crate::common::run_with_timeout(script(&store, &shell), Duration::from_secs(60));
    let stdout = text(&out.stdout).replace('\r', "");
    assert!(stdout.contains("40 100\ntty-ok\n"), "{stdout}");
    assert!(stdout.contains("rc=5\n"), "{stdout}");
    // Without a terminal on stdin, the size comes from stdout's.
    assert!(stdout.contains("rc=5\n40 100\n"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("\nicanon"),
        "terminal left in raw mode: {stdout}"
    );
}

#[test]
fn userns_private_maps_root_to_unprivileged_ids() {
    let store = store_with_busybox();
    // The mapped root (host uid 100000) must be able to reach the container's rootfs, as
    // it can under /var/lib/strata; the temp store dir is 0700.
    std::fs::set_permissions(
        store.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The image's files are its root's, inside; what root and uid 1000 write lands in the
    // upper with the image's ids, so a commit is what it would be without the namespace.
    let out = store.ok(&[
        "run",
        "--name",
        "private",
        "--userns",
        "private",
        "--driver",
        "fuse",
        "busybox",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u:%g /bin/busybox; \
         mkdir /data && chown 1000:1000 /data && \
         touch /data/by-root && chown 1000:50 /data/by-root && stat -c %u:%g /data/by-root",
    ]);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "100000", "65536", "0:0", "1000:50"]);
    store.ok(&["commit", "private", "private:1"]);
    let listed = store.ok(&[
        "run",
        "--rm",
        "private:1",
        "stat",
        "-c",
        "%n %u:%g",
        "/data",
        "/data/by-root",
    ]);
    assert_eq!(listed, "/data 1000:1000\n/data/by-root 1000:50\n");
    // Kernel overlayfs cannot shift the owners: refused, naming the way out.
    let out = store.strata(&[
        "run", "--rm", "--userns", "private", "--driver", "overlay", "busybox", "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fuse driver"), "{stderr}");
}

#[test]
fn etc_files_are_per_container_binds_outside_the_upper_on_both_drivers() {
    let store = store_with_busybox();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // busybox has no /etc/resolv.conf, /etc/hosts or /etc/hostname: the init layer
    // provides the mount points, so nothing is created in the upper.
    for driver in DRIVERS {
        let name = format!("dns-{driver}");
        let out = store.ok(&[
            "run",
            "--name",
            &name,
            "--driver",
            driver,
            "--network",
            "host",
            "busybox",
            "sh",
            "-c",
            "cat /etc/resolv.conf; echo ---; cat /etc/hostname; echo '10.9.9.9 edited' >> /etc/hosts",
        ]);
        let id = container_status(&store, &name)["Id"]
            .as_str()
            .unwrap()
            .to_string();
        // with the host's network, the host's name (docker's rule)
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(out, format!("{host_resolv}---\n{host}\n"), "{driver}");
        assert_eq!(
            store.ok(&["diff", &name]),
            "",
            "{driver}: the etc files leaked into the upper"
        );
        let upper = store.root().join("containers").join(&id).join("upper");
        assert_eq!(
            std::fs::read_dir(&upper).unwrap().count(),
            0,
            "{driver}: upper not empty"
        );
        // The edit went to the container's own copy.
        let hosts =
            std::fs::read_to_string(store.root().join("containers").join(&id).join("hosts"))
                .unwrap();
        assert!(hosts.ends_with("10.9.9.9 edited\n"), "{driver}: {hosts}");

        let out = store.ok(&[
            "run",
            "--rm",
            "--driver",
            driver,
            "--network",
            "none",
            "--hostname",
            "box",
            "busybox",
            "sh",
            "-c",
            "cat /etc/hosts /etc/hostname; ls -ld /etc | cut -c1-10",
        ]);
        assert!(
            out.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost"),
            "{driver}: {out}"
        );
        assert!(out.contains("127.0.0.1\tbox\nbox\n"), "{driver}: {out}");
        assert!(out.ends_with("drwxr-xr-x\n"), "{driver}: {out}");
    }
}

#[test]
fn tty_window_size_changes_reach_the_running_container() {
    crate::common::require_tool("script", "apt-get install -y util-linux");
    let store = store_with_busybox();
    let strata = format!(
        "{} --root {}",
        strata_bin().display(),
        store.root().display()
    );
    // The container prints its start size, creates /ready (seen on the host in its upper)
    // and waits for a new size. The host side resizes strata's terminal once /ready exists:
    // the kernel sends SIGWINCH to strata, which must copy the size into the container's pty
    // (whose kernel then signals the container's shell).
    let inner = "stty size; touch /ready; i=0; \
                 while [ \"$(stty size)\" = \"40 100\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                 echo now $(stty size)";
    let shell = format!(
        "stty rows 40 cols 100; \
         (i=0; until ls {root}/containers/*/upper/ready >/dev/null 2>&1 || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done; \
          stty rows 50 cols 120 </dev/tty) & \
         {strata} run --rm -i -t busybox sh -c '{inner}'; echo rc=$?; wait",
        root = store.root().display()
    );
    let out = crate::common::run_with_timeout(script(&store, &shell), Duration::from_secs(60));
    let stdout = text(&out.stdout).replace('\r', "");
    assert!(stdout.contains("40 100\nnow 50 120\n"), "{stdout}");
    assert!(stdout.contains("rc=0\n"), "{stdout}");
}

#[test]
fn rm_containers_are_volatile_and_others_durable() {
    let store = store_with_busybox();
    let marker = |id: &str| store.root().join("containers").join(id).join("volatile");
    let quick = store.ok(&[
        "run", "-d", "--rm", "--name", "quick", "busybox", "sleep", "60",
    ]);
    let kept = store.ok(&["run", "-d", "--name", "kept", "busybox", "sleep", "60"]);
    wait_status(&store, "quick", "running");
    wait_status(&store, "kept", "running");
    // --rm: state.json is written without fsync, and the marker says so after a crash.
    assert!(marker(quick.trim()).is_file());
    assert!(!marker(kept.trim()).exists());
    store.ok(&["kill", "quick"]);
    store.ok(&["rm", "-f", "kept"]);
    let start = Instant::now();
    while ps_json(&store).iter().any(|c| c["Names"][0] == "quick") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "--rm container never went away"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn entrypoint_flag_replaces_the_images_entrypoint_and_default_command() {
    let store = store_with_busybox();
    store.ok(&["run", "--name", "base", "busybox", "true"]);
    store.ok(&[
        "commit",
        "--change",
        r#"ENTRYPOINT ["echo", "from-image"]"#,
        "--change",
        r#"CMD ["default"]"#,
        "base",
        "ep:1",
    ]);
    assert_eq!(store.ok(&["run", "--rm", "ep:1"]), "from-image default\n");
    assert_eq!(
        store.ok(&["run", "--rm", "ep:1", "given"]),
        "from-image given\n"
    );
    // --entrypoint drops the image's CMD as docker does; "" removes the entrypoint
    assert_eq!(
        store.ok(&["run", "--rm", "--entrypoint", "echo", "ep:1"]),
        "\n"
    );
    assert_eq!(
        store.ok(&["run", "--rm", "--entrypoint", "echo", "ep:1", "x"]),
        "x\n"
    );
    assert_eq!(
        store.ok(&["run", "--rm", "--entrypoint", "", "ep:1", "echo", "plain"]),
        "plain\n"
    );
}

/// `exec`: one more process in a running container, in its namespaces (pid, mount, uts,
/// user) and cgroup, with its environment, user and working directory unless told.
#[test]
fn exec_runs_in_the_running_container() {
    let store = store_with_busybox();
    for (name, extra) in [("ex-plain", None), ("ex-userns", Some("--userns=private"))] {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "-m",
            "32m",
            "-e",
            "FROM_RUN=1",
            "-w",
            "/srv",
        ];
        args.extend(extra);
        args.extend(["busybox", "sh", "-c", "echo $$ > /tmp/pid1; exec sleep 60"]);
        store.ok(&args);
        let running = wait_status(&store, name, "running");
        let id = running["Id"].as_str().unwrap();
        let out = store.ok(&[
            "exec", "-e", "X=2", name, "sh", "-c", "cat /tmp/pid1; echo $FROM_RUN $X; pwd; hostname; id -u; ps -o pid,comm | grep -c sleep",
        ]);
        assert_eq!(
            out,
            format!("1\n1 2\n/srv\n{}\n0\n1\n", &id[..12]),
            "{name}"
        );
        store.ok(&["exec", name, "touch", "/srv/made-by-exec"]);
        // -d returns at once; the command runs on, with the options given
        let detached = store.ok(&[
            "exec",
            "-d",
            "-e",
            "D=3",
            name,
            "sh",
            "-c",
            "sleep 1; echo $D > /srv/detached",
        ]);
        assert_eq!(detached, "");
        let start = std::time::Instant::now();
        while text(&store.strata(&["exec", name, "cat", "/srv/detached"]).stdout) != "3\n" {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "exec -d never ran"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        store.ok(&["exec", name, "rm", "/srv/detached"]);
        assert_eq!(
            store.ok(&[
                "exec",
                "-u",
                "nobody",
                "-w",
                "/",
                name,
                "sh",
                "-c",
                "id -u; pwd; ls /srv"
            ]),
            "65534\n/\nmade-by-exec\n"
        );
        assert_eq!(
            code(&store.strata(&["exec", name, "sh", "-c", "exit 7"])),
            7
        );
        let missing = store.strata(&["exec", name, "no-such-command"]);
        assert_eq!(code(&missing), 127, "{}", text(&missing.stderr));
        let input = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["exec", "-i", name, "tr", "a-z", "A-Z"])
            .stdin(
                std::fs::File::open(store.root().join("containers").join(id).join("state.json"))
                    .unwrap(),
            )
            .output()
            .unwrap();
        assert!(
            text(&input.stdout).contains("\"STATUS\": \"RUNNING\""),
            "{}",
            text(&input.stderr)
        );
        // in the container's cgroup: its 32m limit kills what grows past it
        let big = store.strata(&[
            "exec",
            name,
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]);
        assert_eq!(code(&big), 137, "{}", text(&big.stdout));
        store.ok(&["rm", "-f", name]);
        let out = store.strata(&["exec", name, "true"]);
        assert_eq!(code(&out), 125);
    }
}

/// A container's image that lost its name (the tag was rebuilt) stays, nameless, through
/// gc: the container can still be diffed, mounted and committed, as with docker.
#[test]
fn gc_keeps_the_image_of_a_container_whose_tag_moved() {
    let store = store_with_busybox();
    let ctx = store.root().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Buildfile"), "FROM busybox\nRUN echo v1 > /v\n").unwrap();
    store.ok(&["build", "-t", "moving", ctx.to_str().unwrap()]);
    store.ok(&[
        "run",
        "--name",
        "user",
        "moving",
        "sh",
        "-c",
        "echo changed > /c",
    ]);
    std::fs::write(ctx.join("Buildfile"), "FROM busybox\nRUN echo v2 > /v\n").unwrap();
    store.ok(&["build", "-t", "moving", ctx.to_str().unwrap()]);
    store.ok(&["gc"]);
    assert!(
        store.ok(&["images"]).contains("<none>"),
        "kept as a dangling image"
    );
    assert!(store.ok(&["diff", "user"]).contains("/c"));
    store.ok(&["commit", "user", "saved"]);
    assert_eq!(
        store.ok(&["run", "--rm", "saved", "cat", "/v", "/c"]),
        "v1\nchanged\n"
    );
    store.ok(&["fsck"]);
    // once the container is gone, the image is garbage
    store.ok(&["rm", "user"]);
    store.ok(&["rmi", "saved"]);
}

/// no_new_privs is off unless asked for, as with docker (a setuid sudo or ping must
/// elevate for a non-root USER), and `exec` takes the container's setting.
#[test]
fn no_new_privileges_only_when_asked() {
    let store = store_with_busybox();
    let nnp = "grep NoNewPrivs /proc/self/status | tr -d '\\t '";
    assert_eq!(
        store.ok(&["run", "--rm", "busybox", "sh", "-c", nnp]),
        "NoNewPrivs:0\n"
    );
    let out = store.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "sh",
        "-c",
        nnp,
    ]);
    assert_eq!(out, "NoNewPrivs:1\n");
    store.ok(&[
        "run",
        "-d",
        "--name",
        "nnp",
        "--security-opt",
        "no-new-privileges:true",
        "busybox",
        "sleep",
        "60",
    ]);
    wait_status(&store, "nnp", "running");
    assert_eq!(
        store.ok(&["exec", "nnp", "sh", "-c", nnp]),
        "NoNewPrivs:1\n"
    );
    store.ok(&["rm", "-f", "nnp"]);
    let out = store.strata(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=x",
        "busybox",
        "true",
    ]);
    assert_eq!(code(&out), 125);
}

/// `--security-opt seccomp=FILE` runs under a docker profile instead of the default
/// filter; the container keeps the profile (`exec` and `start` do not read the file again),
/// and a profile that does not compile fails the run, naming the file.
#[test]
fn a_docker_seccomp_profile_replaces_the_default_filter() {
    let store = store_with_busybox();
    let profile = store.root().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let probe = "mkdir /made 2>&1; unshare -U true 2>&1 && echo made-a-user-namespace; exit 0";
    let out = store.ok(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "busybox",
        "sh",
        "-c",
        probe,
    ]);
    // the profile refuses mkdir, and is all there is: user namespaces are not refused
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("made-a-user-namespace"), "{out}");
    store.ok(&[
        "run",
        "-d",
        "--name",
        "profiled",
        "--security-opt",
        &opt,
        "busybox",
        "sleep",
        "60",
    ]);
    wait_status(&store, "profiled", "running");
    std::fs::remove_file(&profile).unwrap();
    let out = store.ok(&["exec", "profiled", "sh", "-c", "mkdir /made 2>&1; exit 0"]);
    assert!(out.contains("Permission denied"), "{out}");
    store.ok(&["rm", "-f", "profiled"]);
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    let out = store.strata(&["run", "--rm", "--security-opt", &opt, "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-mkdir.json") && stderr.contains("SCMP_ACT_SOMETIMES"),
        "{stderr}"
    );
}

/// A container gets a session keyring of its own, as under runc: a key in the session
/// keyring strata was started with (a login session's) is not the container's, even with
/// a filter that lets keyctl through. The probe is a static C program (busybox has no
/// keyctl), built here with the system's cc.
#[test]
fn a_container_has_a_session_keyring_of_its_own() {
    let store = store_with_busybox();
    let dir = store.root().join("keyring");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("find.c"),
        r#"#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    long id = syscall(SYS_keyctl, 10, -3, "user", "strata-e2e-secret", 0); /* SEARCH */
    char value[32] = {0};
    if (id < 0) { puts("no key"); return 0; }
    syscall(SYS_keyctl, 11, id, value, sizeof value - 1); /* READ */
    printf("found %s\n", value);
    return 0;
}
"#,
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-static", "-o"])
        .arg(dir.join("find"))
        .arg(dir.join("find.c"))
        .output()
        .expect("run cc (fix: apt-get install build-essential)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let bind = format!("{}:/find:ro", dir.join("find").display());
    let seen_inside = std::thread::spawn(move || {
        // This thread's own session keyring, with a key in it; strata inherits both.
        // SAFETY: keyctl and add_key with valid C strings and sizes.
        unsafe {
            let ring = libc::syscall(libc::SYS_keyctl, 1, c"strata-e2e-session".as_ptr());
            assert!(ring > 0, "keyctl join: {}", std::io::Error::last_os_error());
            let key = libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"strata-e2e-secret".as_ptr(),
                b"s3cret".as_ptr(),
                6usize,
                -3i32,
            );
            assert!(key > 0, "add_key: {}", std::io::Error::last_os_error());
        }
        let args = [
            "run",
            "--rm",
            "--security-opt",
            "seccomp=unconfined",
            "-v",
            &bind,
        ];
        let mut args = args.to_vec();
        args.extend(["busybox", "/find"]);
        store.ok(&args)
    })
    .join()
    .unwrap();
    assert_eq!(seen_inside, "no key\n");
}

/// This process's capability bounding set, as /proc/self/status prints it (what strata
/// holds, so what `--cap-add ALL` and `--privileged` give).
fn bounding_set() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_string()
}

/// `--cap-add` and `--cap-drop` tweak docker's default set as docker does (ALL included),
/// `exec` takes the container's set, and the seccomp filter lets through what an added
/// capability unlocks (a user namespace with SYS_ADMIN).
#[test]
fn cap_add_and_cap_drop_as_docker() {
    let store = store_with_busybox();
    let caps = "grep CapEff: /proc/self/status | tr -d '\\t '";
    let run = |extra: &[&str], script: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend(extra);
        args.extend(["busybox", "sh", "-c", script]);
        store.ok(&args)
    };
    assert_eq!(run(&[], caps), "CapEff:00000000a80425fb\n");
    assert_eq!(
        run(&["--cap-add", "NET_ADMIN"], caps),
        "CapEff:00000000a80435fb\n"
    );
    let chown = "chown 1 /tmp 2>&1; exit 0";
    assert!(run(&[], chown).is_empty());
    let out = run(&["--cap-drop", "chown"], chown);
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_eq!(
        run(
            &["--cap-drop", "ALL", "--cap-add", "CAP_NET_BIND_SERVICE"],
            caps
        ),
        "CapEff:0000000000000400\n"
    );
    // ALL is every capability strata itself holds (its bounding set)
    let bounding = bounding_set();
    assert_eq!(
        run(&["--cap-add", "ALL"], caps),
        format!("CapEff:{bounding}\n")
    );
    let userns = "unshare -U true 2>&1 && echo made-a-user-namespace; exit 0";
    assert!(run(&[], userns).contains("Operation not permitted"));
    assert_eq!(
        run(&["--cap-add", "SYS_ADMIN"], userns),
        "made-a-user-namespace\n"
    );
    let out = store.strata(&["run", "--rm", "--cap-add", "SYS_WIZARD", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SYS_WIZARD"));
    store.ok(&[
        "run",
        "-d",
        "--name",
        "admin",
        "--cap-add",
        "NET_ADMIN,SYS_TIME",
        "busybox",
        "sleep",
        "60",
    ]);
    wait_status(&store, "admin", "running");
    assert_eq!(
        store.ok(&["exec", "admin", "sh", "-c", caps]),
        "CapEff:00000000aa0435fb\n"
    );
    store.ok(&["rm", "-f", "admin"]);
}

/// `--privileged` gives what docker's gives: every capability strata holds, no seccomp
/// filter (a mount works), /proc unmasked, sysfs and the cgroup view writable, and the
/// host's devices in /dev, which the devices cgroup lets it open. `exec` in it takes the
/// same; `exec --privileged` gives a process of a plain container every capability.
#[test]
fn privileged_as_docker() {
    let store = store_with_busybox();
    let probe = "grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -d '\\t '; \
                 mount -t tmpfs t /tmp 2>/dev/null && echo mounted; \
                 grep -q '^sysfs /sys sysfs rw' /proc/mounts && echo sysfs-rw; \
                 [ -c /proc/timer_list ] && echo timer-list-masked; \
                 grep -q ' /proc/sys proc ro' /proc/mounts && echo proc-sys-ro; \
                 [ -c /dev/fuse ] && (exec 3<>/dev/fuse) 2>/dev/null && echo fuse-opened; \
                 d=/sys/fs/cgroup/memory/probe; [ -e /sys/fs/cgroup/memory.max ] && d=/sys/fs/cgroup/probe; \
                 mkdir $d 2>/dev/null && rmdir $d && echo cgroup-rw; \
                 [ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && echo cpu-hierarchy; true";
    let bounding = bounding_set();
    for host in ["/dev/fuse", "/proc/timer_list"] {
        assert!(
            std::path::Path::new(host).exists(),
            "the probe needs the host's {host} (modprobe fuse; a kernel with CONFIG_TIMER_LIST)"
        );
    }
    // cgroup v1: every hierarchy is there (a nested container may take limits), as with
    // docker, where a plain container without limits sees only its memory one
    let v1_cpu = if std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
        "cpu-hierarchy\n"
    } else {
        ""
    };
    let privileged = format!(
        "CapEff:{bounding}\nSeccomp:0\nmounted\nsysfs-rw\nfuse-opened\ncgroup-rw\n{v1_cpu}"
    );
    let plain = "CapEff:00000000a80425fb\nSeccomp:2\ntimer-list-masked\nproc-sys-ro\n";
    assert_eq!(
        store.ok(&["run", "--rm", "--privileged", "busybox", "sh", "-c", probe]),
        privileged
    );
    // --privileged overrides --cap-drop and a seccomp profile, as docker's
    assert_eq!(
        store.ok(&[
            "run",
            "--rm",
            "--privileged",
            "--cap-drop",
            "ALL",
            "busybox",
            "sh",
            "-c",
            probe
        ]),
        privileged
    );
    assert_eq!(
        store.ok(&["run", "--rm", "busybox", "sh", "-c", probe]),
        plain
    );
    // every v1 hierarchy of the host, named ones (systemd's) and those strata sets no
    // limit in (cpuacct, freezer) too, and a hybrid host's v2 one (runc joins it), each at
    // the container's own cgroup
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let hierarchies: Vec<&str> = mountinfo
        .lines()
        .filter(|line| line.contains(" - cgroup ") || line.contains(" - cgroup2 "))
        .filter_map(|line| line.split(' ').nth(4)?.strip_prefix("/sys/fs/cgroup/"))
        .collect();
    let mut seen = String::new();
    for hierarchy in &hierarchies {
        seen += &format!("[ -e /sys/fs/cgroup/{hierarchy}/cgroup.procs ] && echo {hierarchy}; ");
    }
    assert_eq!(
        store.ok(&[
            "run",
            "--rm",
            "--privileged",
            "busybox",
            "sh",
            "-c",
            &format!("{seen}true")
        ]),
        hierarchies
            .iter()
            .map(|h| format!("{h}\n"))
            .collect::<String>()
    );
    for (name, extra) in [("priv", Some("--privileged")), ("plain", None)] {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(extra);
        args.extend(["busybox", "sleep", "60"]);
        store.ok(&args);
        wait_status(&store, name, "running");
    }
    assert_eq!(store.ok(&["exec", "priv", "sh", "-c", probe]), privileged);
    // and its processes are in its own cgroup in each of those, as the host sees them
    let id = store.ok(&["inspect", "-f", "{{.Id}}", "priv"]);
    let joined: Vec<std::path::PathBuf> = cgroup_dirs_named(&format!("strata-{}", id.trim()))
        .into_iter()
        .filter(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.is_empty())
        })
        .collect();
    for hierarchy in &hierarchies {
        assert!(
            joined
                .iter()
                .any(|dir| dir.starts_with(format!("/sys/fs/cgroup/{hierarchy}/"))),
            "not in the {hierarchy} hierarchy: {joined:?}"
        );
    }
    assert_eq!(
        store.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Privileged}}",
            "priv",
            "plain"
        ]),
        "true\nfalse\n"
    );
    assert_eq!(store.ok(&["exec", "plain", "sh", "-c", probe]), plain);
    let caps = "grep CapEff: /proc/self/status | tr -d '\\t '";
    assert_eq!(
        store.ok(&["exec", "--privileged", "plain", "sh", "-c", caps]),
        format!("CapEff:{bounding}\n")
    );
    store.ok(&["rm", "-f", "priv", "plain"]);
    let out = store.strata(&["run", "--privileged", "--userns=private", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--userns"));
}

/// The cgroups a privileged container makes below its own (a runtime or systemd inside
/// does) go with it: when it exits, and at `rm -f` of a running one.
#[test]
fn a_privileged_containers_own_cgroups_go_with_it() {
    let store = store_with_busybox();
    let nest = "for d in /sys/fs/cgroup/memory /sys/fs/cgroup; do \
                  [ -e $d/cgroup.procs ] && mkdir -p $d/child/grandchild && break; \
                done; echo made";
    // the running one's process is in the grandchild by the time it is removed
    let running = format!("{nest}; echo $$ > $d/child/grandchild/cgroup.procs; sleep 60");
    store.ok(&[
        "run",
        "--name",
        "exited",
        "--privileged",
        "busybox",
        "sh",
        "-c",
        nest,
    ]);
    store.ok(&[
        "run",
        "-d",
        "--name",
        "running",
        "--privileged",
        "busybox",
        "sh",
        "-c",
        &running,
    ]);
    wait_status(&store, "running", "running");
    let mut ids = Vec::new();
    for name in ["exited", "running"] {
        let id = store.ok(&["inspect", "-f", "{{.Id}}", name]);
        ids.push(format!("strata-{}", id.trim()));
    }
    // the running one has made its children by now
    let start = Instant::now();
    while cgroup_dirs_named(&format!("{}/child", ids[1])).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no child cgroup made"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    store.ok(&["rm", "exited"]);
    store.ok(&["rm", "-f", "running"]);
    for id in &ids {
        assert_eq!(cgroup_dirs_named(id), Vec::<std::path::PathBuf>::new());
    }
}

/// A privileged container that froze a cgroup of its own (a nested runtime's pause) stops
/// and goes with `rm -f` at once: its frozen processes are thawed to take the SIGKILL, as
/// docker thaws a paused container it kills (QA 22: EBUSY, and the container stayed up).
#[test]
fn a_privileged_container_that_froze_a_cgroup_is_removed() {
    let store = store_with_busybox();
    // v1: the freezer hierarchy; v2: cgroup.freeze (which lets SIGKILL through anyway)
    let freeze = "if [ -e /sys/fs/cgroup/freezer/freezer.state ]; then \
                    d=/sys/fs/cgroup/freezer/paused; mkdir $d; state=freezer.state; frozen=FROZEN; \
                  else \
                    d=/sys/fs/cgroup/paused; mkdir $d; state=cgroup.freeze; frozen=1; \
                  fi; \
                  sleep 1000 & echo $! > $d/cgroup.procs; echo $frozen > $d/$state; sleep 1000";
    for (name, stop) in [("frozen-rm", None), ("frozen-stop", Some("stop"))] {
        store.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--privileged",
            "busybox",
            "sh",
            "-c",
            freeze,
        ]);
        wait_status(&store, name, "running");
        let id = format!(
            "strata-{}",
            store.ok(&["inspect", "-f", "{{.Id}}", name]).trim()
        );
        let start = Instant::now();
        while !cgroup_dirs_named(&format!("{id}/paused"))
            .iter()
            .any(|dir| {
                std::fs::read_to_string(dir.join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
                    || std::fs::read_to_string(dir.join("cgroup.freeze"))
                        .is_ok_and(|s| s.trim() == "1")
            })
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nothing was frozen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(stop) = stop {
            store.ok(&[stop, "-t", "1", name]);
            assert_eq!(
                store.ok(&["inspect", "-f", "{{.State.Status}}", name]),
                "exited\n"
            );
        }
        store.ok(&["rm", "-f", name]);
        assert_eq!(cgroup_dirs_named(&id), Vec::<std::path::PathBuf>::new());
    }
}

/// Directories `rel` (a cgroup name, or name/child) below strata's parent cgroup, in
/// every hierarchy.
fn cgroup_dirs_named(rel: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut parents = vec![root.join("strata")];
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        parents.push(entry.path().join("strata"));
    }
    parents
        .into_iter()
        .map(|parent| parent.join(rel))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// A full disk when the container exits: `run` answers the command's own status, with a
/// warning that its exit could not be recorded, and `inspect` and `ps` see the process
/// gone (the record still says running).
#[test]
fn a_full_disk_at_exit_keeps_the_commands_status() {
    let store = crate::common::TestStore::new();
    nix::mount::mount(
        Some("tmpfs"),
        store.root(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=48m"),
    )
    .unwrap();
    store.import_busybox("busybox");
    let fill = "dd if=/dev/zero of=/fill bs=1M count=100 2>/dev/null; echo done";
    let out = store.strata(&["run", "--name", "full", "busybox", "sh", "-c", fill]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    assert!(stderr.contains("could not be recorded"), "{stderr}");
    let state = "{{.State.Status}} {{.State.Running}} {{.State.Pid}}";
    assert_eq!(
        store.ok(&["inspect", "-f", state, "full"]),
        "exited false 0\n"
    );
    assert!(store.ok(&["ps", "-a"]).contains("Exited (unknown)"));
    store.ok(&["rm", "full"]);
    store.ok(&["fsck"]);
}

/// Every container process runs under the default seccomp filter, as docker's: container
/// root cannot make a user namespace (where it would hold every capability again). `exec`
/// takes the container's setting; `--security-opt seccomp=unconfined` goes without.
#[test]
fn seccomp_filter_by_default_unless_unconfined() {
    let store = store_with_busybox();
    let probe = "grep Seccomp: /proc/self/status | tr -d '\\t '; \
                 unshare -U true 2>&1 && echo made-a-user-namespace; exit 0";
    for extra in [None, Some("--userns=private")] {
        let mut args = vec!["run", "--rm"];
        args.extend(extra);
        args.extend(["busybox", "sh", "-c", probe]);
        let out = store.ok(&args);
        assert!(out.starts_with("Seccomp:2\n"), "{extra:?}: {out}");
        assert!(out.contains("Operation not permitted"), "{extra:?}: {out}");
        assert!(!out.contains("made-a-user-namespace"), "{extra:?}: {out}");
    }
    let out = store.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "sh",
        "-c",
        probe,
    ]);
    assert_eq!(out, "Seccomp:0\nmade-a-user-namespace\n");
    for (name, opt) in [
        ("filtered", None),
        ("unconfined", Some("seccomp:unconfined")),
    ] {
        let mut args = vec!["run", "-d", "--name", name];
        if let Some(opt) = opt {
            args.extend(["--security-opt", opt]);
        }
        args.extend(["busybox", "sleep", "60"]);
        store.ok(&args);
        wait_status(&store, name, "running");
    }
    let seccomp = "grep Seccomp: /proc/self/status | tr -d '\\t '";
    assert_eq!(
        store.ok(&["exec", "filtered", "sh", "-c", seccomp]),
        "Seccomp:2\n"
    );
    assert_eq!(
        store.ok(&["exec", "unconfined", "sh", "-c", seccomp]),
        "Seccomp:0\n"
    );
    store.ok(&["rm", "-f", "filtered", "unconfined"]);
}

/// A container sees its own limits, read-only, where the JVM, Go and Node look for them
/// (/sys/fs/cgroup), and its cgroup as the root of its cgroup namespace, as with docker.
#[test]
fn containers_see_their_own_cgroup_limits() {
    let store = store_with_busybox();
    // cgroup v1 (this project's machines) or v2: the same figures, in each one's files
    let script = "if [ -e /sys/fs/cgroup/memory.max ]; then \
                    cat /sys/fs/cgroup/memory.max; cut -d' ' -f1 /sys/fs/cgroup/cpu.max; echo /; f=/sys/fs/cgroup/x; \
                  else \
                    cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
                    grep memory /proc/self/cgroup | cut -d: -f3; f=/sys/fs/cgroup/memory/x; \
                  fi; touch $f 2>/dev/null || echo read-only";
    for extra in [None, Some("--userns=private")] {
        let mut args = vec!["run", "--rm", "-m", "64m", "--cpus", "0.5"];
        args.extend(extra);
        args.extend(["busybox", "sh", "-c", script]);
        let out = store.ok(&args);
        if extra.is_none() {
            assert_eq!(out, "67108864\n50000\n/\nread-only\n", "{extra:?}");
        } else {
            assert!(out.starts_with("67108864\n"), "{extra:?}: {out}");
        }
    }
}

/// A container whose recorded pid now belongs to another process (a reboot, a crash)
/// is not running: exec refuses it rather than running on the host.
#[test]
fn a_reused_pid_is_not_the_container() {
    let store = store_with_busybox();
    store.ok(&["run", "--name", "gone", "busybox", "true"]);
    let id = container_status(&store, "gone")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = store.root().join("containers").join(&id).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // this test process stands for whatever got the pid
    state["status"] = "running".into();
    state["pid"] = (std::process::id() as i64).into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = store.strata(&["exec", "gone", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("not the container's process"),
        "{}",
        text(&out.stderr)
    );
    // with a start time recorded, the stranger does not even count as running
    state["pid_start"] = 1.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = store.strata(&["exec", "gone", "true"]);
    assert!(
        text(&out.stderr).contains("is not running"),
        "{}",
        text(&out.stderr)
    );
    // docker: 0 is no limit
    store.ok(&["run", "--rm", "-m", "0", "--cpus", "0", "busybox", "true"]);
}

/// `exec -it` gets a terminal of the container's devpts.
#[test]
fn exec_with_a_terminal() {
    let store = store_with_busybox();
    store.ok(&["run", "-d", "--name", "term", "busybox", "sleep", "60"]);
    wait_status(&store, "term", "running");
    let strata = strata_bin();
    let root = store.root().display().to_string();
    for _ in 0..3 {
        let out = Command::new("script")
            .args([
                "-qec",
                &format!(
                    "{} --root {root} exec -it term sh -c 'tty; exit 3'; echo rc=$?",
                    strata.display()
                ),
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("/dev/pts/") && stdout.contains("rc=3"),
            "{stdout}{}",
            text(&out.stderr)
        );
    }
    store.ok(&["rm", "-f", "term"]);
}

/// `--read-only`: the root is read-only, its volumes, /dev/shm and /etc files are not, as
/// with docker.
#[test]
fn read_only_root() {
    let store = store_with_busybox();
    for driver in DRIVERS {
        let out = store.ok(&[
            "run",
            "--rm",
            "--read-only",
            "--driver",
            driver,
            "-v",
            "/vol",
            "busybox",
            "sh",
            "-c",
            "touch /x 2>/dev/null || echo root-ro; touch /vol/y && echo vol-rw; \
             echo 1.2.3.4 x >> /etc/hosts && echo hosts-rw; touch /dev/shm/z && echo shm-rw",
        ]);
        assert_eq!(out, "root-ro\nvol-rw\nhosts-rw\nshm-rw\n", "{driver}");
    }
}

/// `start` runs an exited container's command again on its upper and volumes, attached
/// (`-a`, the command's exit code) or in the background, as docker start does.
#[test]
fn start_runs_an_exited_container_again() {
    let store = store_with_busybox();
    let script = "echo run >> /vol/log; echo up >> /up; cat /vol/log /up | wc -l; exit 3";
    let out = store.strata(&[
        "run", "--name", "again", "-v", "/vol", "busybox", "sh", "-c", script,
    ]);
    assert_eq!((code(&out), text(&out.stdout)), (3, "2\n".to_string()));
    let out = store.strata(&["start", "-a", "again"]);
    assert_eq!(
        (code(&out), text(&out.stdout)),
        (3, "4\n".to_string()),
        "upper and volume kept"
    );
    assert_eq!(store.ok(&["start", "again"]), "again\n");
    let exited = wait_status(&store, "again", "exited");
    assert_eq!(exited["ExitCode"], 3);
    // every run is logged, the foreground ones too (docker keeps one log across starts)
    assert_eq!(store.ok(&["logs", "again"]), "2\n4\n6\n");
    store.ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "60"]);
    wait_status(&store, "busy", "running");
    // docker's: starting a running container changes nothing; attaching is refused
    assert_eq!(store.ok(&["start", "busy"]), "busy\n");
    assert_eq!(
        store.ok(&["inspect", "-f", "{{.State.Status}}", "busy"]),
        "running\n"
    );
    let out = store.strata(&["start", "-a", "busy"]);
    assert_ne!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );
    store.ok(&["rm", "-f", "busy", "again"]);
}

/// Named volumes (`-v NAME:/dir`) outlive their containers, start as a copy of the image
/// (also one made empty by `volume create`), and cannot be removed while a container uses
/// them, as docker's.
#[test]
fn named_volumes_outlive_containers() {
    let store = store_with_busybox();
    let count =
        "echo x >> /etc/data/log; wc -l < /etc/data/log; ls /etc/data | grep -c passwd; true";
    // /etc holds passwd in busybox: a new volume at /etc/data starts empty, one at /etc from it
    store.ok(&["run", "--rm", "-v", "etcvol:/etc", "busybox", "true"]);
    assert_eq!(
        store.ok(&[
            "run",
            "--rm",
            "-v",
            "etcvol:/mnt",
            "busybox",
            "ls",
            "/mnt/passwd"
        ]),
        "/mnt/passwd\n"
    );
    for expected in ["1\n0\n", "2\n0\n"] {
        assert_eq!(
            store.ok(&[
                "run",
                "--rm",
                "-v",
                "data:/etc/data",
                "busybox",
                "sh",
                "-c",
                count
            ]),
            expected
        );
    }
    store.ok(&["volume", "create", "empty"]);
    assert_eq!(
        store.ok(&[
            "run",
            "--rm",
            "-v",
            "empty:/etc",
            "busybox",
            "ls",
            "/etc/passwd"
        ]),
        "/etc/passwd\n"
    );
    let listed = store.ok(&["volume", "ls"]);
    assert!(
        listed.contains("data") && listed.contains("empty") && listed.contains("etcvol"),
        "{listed}"
    );
    store.ok(&[
        "run", "--name", "user", "-v", "data:/d", "-v", "/own", "busybox", "true",
    ]);
    // docker's Mounts in inspect, for `{{(index .Mounts 0).Source}}`
    let mounts = store.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.Destination}} {{.RW}}|{{end}}{{(index .Mounts 0).Name}}",
        "user",
    ]);
    assert_eq!(mounts, "volume /d true|volume /own true|data\n");
    let source = store.ok(&["inspect", "-f", "{{(index .Mounts 0).Source}}", "user"]);
    assert_eq!(
        std::path::Path::new(source.trim()),
        store.root().join("volumes/data"),
        "{source}"
    );
    let out = store.strata(&["volume", "rm", "data"]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("in use by container user"),
        "{}",
        text(&out.stderr)
    );
    // docker's `rm -v` (anonymous volumes go with the container anyway); named ones stay
    store.ok(&["rm", "-v", "user"]);
    assert!(store.ok(&["volume", "ls"]).contains("data"));
    store.ok(&["volume", "rm", "data", "empty", "etcvol"]);
    assert_eq!(store.ok(&["volume", "ls", "--json"]).trim(), "[]");
}

/// The container's health as `inspect` shows it: (status, failing streak, exit codes of
/// the logged probes).
fn health_of(store: &TestStore, name: &str) -> (String, u64, Vec<i64>) {
    let inspected: serde_json::Value = serde_json::from_str(&store.ok(&["inspect", name])).unwrap();
    let health = &inspected[0]["State"]["Health"];
    let codes = health["Log"].as_array().map(|log| {
        log.iter()
            .map(|p| p["ExitCode"].as_i64().unwrap())
            .collect()
    });
    (
        health["Status"].as_str().unwrap_or("none").to_string(),
        health["FailingStreak"].as_u64().unwrap_or(0),
        codes.unwrap_or_default(),
    )
}

/// Polls `name`'s health until it is `status`; fails after 20 s.
fn wait_health(store: &TestStore, name: &str, status: &str) -> (String, u64, Vec<i64>) {
    let start = Instant::now();
    loop {
        let health = health_of(store, name);
        if health.0 == status {
            return health;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} never became {status}: {health:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An image's HEALTHCHECK runs while the container runs, as docker's daemon runs it:
/// starting, unhealthy after `retries` failures, healthy on a success; `ps` shows it; the
/// `--health-*` flags override it and `--no-healthcheck` drops it; a probe past its
/// timeout is ended and fails.
#[test]
fn healthchecks_run_while_the_container_runs() {
    let store = store_with_busybox();
    let ctx = store.root().join("hc-ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Buildfile"),
        "FROM busybox\nHEALTHCHECK --interval=200ms --retries=2 CMD test -f /tmp/ok\n",
    )
    .unwrap();
    store.ok(&["build", "-t", "hc", ctx.to_str().unwrap()]);

    store.ok(&["run", "-d", "--name", "checked", "hc", "sleep", "60"]);
    let (_, streak, codes) = wait_health(&store, "checked", "unhealthy");
    assert!(
        streak >= 2 && codes.iter().all(|&c| c == 1),
        "{streak} {codes:?}"
    );
    assert!(store.ok(&["ps"]).contains("(unhealthy)"));
    store.ok(&["exec", "checked", "touch", "/tmp/ok"]);
    let (_, streak, codes) = wait_health(&store, "checked", "healthy");
    assert_eq!((streak, codes.last()), (0, Some(&0)));
    assert!(store.ok(&["ps"]).contains("(healthy)"));

    // the flags over the image's: a test that outlives its timeout
    // (`;`: the shell forks sleep, which the timeout must end too, or its pipe would hold
    // the prober)
    store.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--health-cmd",
        "sleep 30; exit 0",
        "--health-timeout",
        "200ms",
        "--health-interval",
        "100ms",
        "--health-retries",
        "1",
        "hc",
        "sleep",
        "60",
    ]);
    let (_, _, codes) = wait_health(&store, "slow", "unhealthy");
    assert_eq!(codes.first(), Some(&-1));
    let inspected = store.ok(&["inspect", "slow"]);
    assert!(inspected.contains("exceeded timeout"), "{inspected}");
    // ... and ended: no probe's sleep is left in the container (a few probes later)
    std::thread::sleep(Duration::from_secs(1));
    let left = store.ok(&["exec", "slow", "ps"]);
    // (at most the probe in flight: its shell and its sleep; the ended ones' sleeps are
    // zombies of the container's pid 1, `sleep 60`, which reaps nothing)
    assert!(
        left.lines().filter(|l| l.contains("sleep 30")).count() <= 2,
        "{left}"
    );

    // a shell-form test runs in the image's SHELL, as docker's
    std::fs::write(
        ctx.join("Buildfile"),
        "FROM busybox\nSHELL [\"/bin/echo\", \"shell:\"]\nHEALTHCHECK --interval=200ms --retries=1 CMD exit 1\n",
    )
    .unwrap();
    store.ok(&["build", "-t", "hcshell", ctx.to_str().unwrap()]);
    store.ok(&["run", "-d", "--name", "shelled", "hcshell", "sleep", "60"]);
    wait_health(&store, "shelled", "healthy");
    assert!(store.ok(&["inspect", "shelled"]).contains("shell: exit 1"));

    store.ok(&[
        "run",
        "-d",
        "--name",
        "unchecked",
        "--no-healthcheck",
        "hc",
        "sleep",
        "60",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(health_of(&store, "unchecked").0, "none");

    // a foreground run with a check ends with its command
    let start = Instant::now();
    store.ok(&[
        "run",
        "--rm",
        "--health-cmd",
        "true",
        "--health-interval",
        "100ms",
        "hc",
        "sleep",
        "0.5",
    ]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the run waited {:?}",
        start.elapsed()
    );
    store.ok(&["rm", "-f", "checked", "slow", "shelled", "unchecked"]);
}

/// `wait` prints a container's exit code once it exits (at once if it has); `restart`
/// stops a running container and starts it again on the same upper; `export` writes the
/// container's file system (its union, not its volumes) as a tar, whole or not at all.
#[test]
fn wait_restart_and_export() {
    let store = store_with_busybox();
    let volume = store.root().join("vol");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("in-volume"), "v\n").unwrap();
    let mount = format!("{}:/vol", volume.display());
    store.ok(&["run", "-d", "--name", "w", "-v", &mount, "busybox", "sh", "-c", "echo run >> /runs; for i in $(seq 1200); do [ -f /tmp/go ] && break; sleep 0.05; done; exit 7"]);
    wait_status(&store, "w", "running");
    let waiter = Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["wait", "w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut waiter = waiter;
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait returned while the container ran"
    );
    store.ok(&["exec", "w", "touch", "/tmp/go"]);
    let start = Instant::now();
    while waiter.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "wait never returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "7\n");
    assert_eq!(store.ok(&["wait", "w"]), "7\n");
    // a --rm container is removed only once its waiters have its exit code
    let id = store.ok(&[
        "run",
        "-d",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "sleep 0.5; exit 3",
    ]);
    assert_eq!(store.ok(&["wait", id.trim()]), "3\n");
    let start = Instant::now();
    while store.root().join("containers").join(id.trim()).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the --rm container was never removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // an exited container is just started; the command runs again on its upper
    store.ok(&["restart", "w"]);
    assert_eq!(store.ok(&["wait", "w"]), "7\n");
    let tar = store.root().join("w.tar");
    store.ok(&["export", "-o", tar.to_str().unwrap(), "w"]);
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "runs" {
            let mut runs = String::new();
            std::io::Read::read_to_string(&mut entry, &mut runs).unwrap();
            assert_eq!(runs, "run\nrun\n");
        }
        names.push(name);
    }
    assert!(
        names.iter().any(|n| n == "runs") && names.iter().any(|n| n == "bin/busybox"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("in-volume")),
        "volumes are not exported: {names:?}"
    );
    let out = store.strata(&[
        "export",
        "-o",
        store.root().join("none.tar").to_str().unwrap(),
        "nosuch",
    ]);
    assert_eq!(code(&out), 1);
    assert!(!store.root().join("none.tar").exists());

    // a running container is stopped and started again: a new process
    store.ok(&["run", "-d", "--name", "r", "busybox", "sleep", "60"]);
    let before = wait_status(&store, "r", "running")["Pid"].clone();
    store.ok(&["restart", "-t", "1", "r"]);
    let after = wait_status(&store, "r", "running")["Pid"].clone();
    assert_ne!(before, after);
    store.ok(&["rm", "-f", "w", "r"]);
}
