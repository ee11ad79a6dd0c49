//! HEALTHCHECK: the image's, or `run --health-*`'s, run while the container runs by the
//! process that waits for it (`run` in the foreground, the `run -d` monitor), as docker's
//! daemon runs them. Each probe is a `strata exec` of the test in the container, killed
//! past its timeout. The state (docker's `State.Health`: status, failing streak, the last
//! five probes) is kept in `containers/<id>/health.json`, which `ps` and `inspect` show.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use strata_store::time;

use crate::cli::RunArgs;

/// docker's defaults for a zero or missing field.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// Probes kept in the log, and the bytes kept of each one's output (docker's).
const LOG_ENTRIES: usize = 5;
const OUTPUT_BYTES: usize = 4096;
/// The file the state is kept in, in the container's directory.
pub const FILE: &str = "health.json";

/// An image config's `Healthcheck` (docker's form; durations in nanoseconds, 0 = default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    /// `["CMD", arg...]`, `["CMD-SHELL", command]`, or `["NONE"]`.
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: u64,
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub start_period: u64,
    #[serde(default)]
    pub start_interval: u64,
    #[serde(default)]
    pub retries: u32,
    /// The image's SHELL, which runs a `CMD-SHELL` test (docker's); empty: `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
}

impl Check {
    /// The command a probe execs.
    fn command(&self) -> Vec<String> {
        match self.test.split_first() {
            Some((kind, rest)) if kind == "CMD-SHELL" => {
                let shell = if self.shell.is_empty() {
                    vec!["/bin/sh".into(), "-c".into()]
                } else {
                    self.shell.clone()
                };
                shell.into_iter().chain([rest.join(" ")]).collect()
            }
            Some((_, rest)) => rest.to_vec(),
            None => Vec::new(),
        }
    }

    fn duration(nanos: u64, default: Duration) -> Duration {
        if nanos == 0 {
            default
        } else {
            Duration::from_nanos(nanos)
        }
    }

    fn interval(&self) -> Duration {
        Check::duration(self.interval, DEFAULT_INTERVAL)
    }

    fn timeout(&self) -> Duration {
        Check::duration(self.timeout, DEFAULT_TIMEOUT)
    }

    fn start_interval(&self) -> Duration {
        Check::duration(self.start_interval, DEFAULT_START_INTERVAL)
    }

    fn retries(&self) -> u32 {
        if self.retries == 0 {
            DEFAULT_RETRIES
        } else {
            self.retries
        }
    }
}

/// The check a container runs: the image's (`config.Healthcheck` of its config blob), with
/// `--health-cmd` and the other `--health-*` flags on top; None with `--no-healthcheck`,
/// a `NONE` test, or no test at all.
pub fn resolve(image: Option<Check>, args: &RunArgs) -> anyhow::Result<Option<Check>> {
    let flags = &args.health;
    if flags.no_healthcheck {
        let others = flags.health_cmd.is_some()
            || flags.health_interval.is_some()
            || flags.health_timeout.is_some()
            || flags.health_start_period.is_some()
            || flags.health_start_interval.is_some()
            || flags.health_retries.is_some();
        if others {
            bail!("--no-healthcheck conflicts with the other --health-* options");
        }
        return Ok(None);
    }
    let mut check = image.unwrap_or_default();
    if let Some(cmd) = &flags.health_cmd {
        check.test = vec!["CMD-SHELL".into(), cmd.clone()];
    }
    let nanos = |flag: &str, text: &Option<String>, into: &mut u64| -> anyhow::Result<()> {
        if let Some(text) = text {
            let d = parse_duration(text).with_context(|| format!("bad --{flag} {text:?}"))?;
            *into = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        }
        Ok(())
    };
    nanos(
        "health-interval",
        &flags.health_interval,
        &mut check.interval,
    )?;
    nanos("health-timeout", &flags.health_timeout, &mut check.timeout)?;
    nanos(
        "health-start-period",
        &flags.health_start_period,
        &mut check.start_period,
    )?;
    nanos(
        "health-start-interval",
        &flags.health_start_interval,
        &mut check.start_interval,
    )?;
    if let Some(retries) = flags.health_retries {
        check.retries = retries;
    }
    Ok(match check.test.first().map(String::as_str) {
        None | Some("NONE") => None,
        Some("CMD" | "CMD-SHELL") if check.test.len() > 1 => Some(check),
        Some("CMD" | "CMD-SHELL") => bail!("healthcheck test {:?} has no command", check.test),
        Some(other) => bail!("healthcheck test {other:?}: expected CMD, CMD-SHELL or NONE"),
    })
}

/// docker's durations: a number and a unit, several in a row ("1m30s", "500ms", "2h").
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().context("expected a number")?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => bail!("unknown unit {unit:?} (use ns, us, ms, s, m or h)"),
        };
        total = Duration::try_from_secs_f64(number * seconds)
            .ok()
            .and_then(|part| total.checked_add(part))
            .context("too long")?;
        rest = tail;
    }
    // docker's floor: a check every nanosecond would be all the machine does
    if total < Duration::from_millis(1) {
        bail!("shorter than 1ms");
    }
    Ok(total)
}

/// docker's `State.Health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// starting, healthy or unhealthy.
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<Probe>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// The health state of the container in `dir`, if it has a check.
pub fn read(dir: &Path) -> Option<Health> {
    serde_json::from_slice(&std::fs::read(dir.join(FILE)).ok()?).ok()
}

/// Replaces the state file (tmp + rename: a reader sees the old state or the new one).
fn write(dir: &Path, health: &Health) -> anyhow::Result<()> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(health)?)
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("failed to write {}", path.display()))
}

/// Probes running in a thread until [`Watcher::stop`].
pub struct Watcher {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Watcher {
    /// Stops probing (a probe under way is ended) and waits for the thread.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Starts probing container `id` (of the store at `root`, its directory `dir`), which runs.
pub fn watch(root: PathBuf, id: String, dir: PathBuf, check: Check) -> anyhow::Result<Watcher> {
    let (stop, stopped) = mpsc::channel::<()>();
    let mut health = Health {
        status: "starting".into(),
        ..Health::default()
    };
    write(&dir, &health)?;
    let thread = std::thread::Builder::new()
        .name("strata-health".into())
        .spawn(move || {
            let started = Instant::now();
            let start_period = Duration::from_nanos(check.start_period);
            let mut warned = false;
            loop {
                let wait = if started.elapsed() < start_period && health.status == "starting" {
                    check.start_interval()
                } else {
                    check.interval()
                };
                if !matches!(
                    stopped.recv_timeout(wait),
                    Err(mpsc::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                // (The start period is judged at the probe's start, as docker's.)
                let starting = started.elapsed() < start_period;
                let Some(probe) = probe(&root, &id, &check, &stopped) else {
                    return; // stopped meanwhile: the container is gone, not unhealthy
                };
                if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return; // it ended while the probe ran: its failure says nothing
                }
                if probe.exit_code == 0 {
                    health.status = "healthy".into();
                    health.failing_streak = 0;
                } else if !(starting && health.status == "starting") {
                    // (Failures in the start period do not count, as docker's.)
                    health.failing_streak += 1;
                    if health.failing_streak >= check.retries() {
                        health.status = "unhealthy".into();
                    }
                }
                health.log.push(probe);
                let excess = health.log.len().saturating_sub(LOG_ENTRIES);
                health.log.drain(..excess);
                if let Err(err) = write(&dir, &health)
                    && !std::mem::replace(&mut warned, true)
                {
                    eprintln!("warning: {err:#} (said once)");
                }
            }
        })
        .context("failed to start the health check thread")?;
    Ok(Watcher { stop, thread })
}

/// Runs one probe: `strata exec` of the test, its output (stdout and stderr, in order)
/// cut to [`OUTPUT_BYTES`], ended past the timeout. None if told to stop meanwhile.
///
/// The probe runs in a process group of its own (a terminal's ^C to `strata run` is not
/// for it), and its test gets the timeout's signal with all it started. Its output is
/// read until the probe has ended and a moment more: a process the test left behind
/// holding the pipe does not hold the prober.
fn probe(root: &Path, id: &str, check: &Check, stopped: &mpsc::Receiver<()>) -> Option<Probe> {
    use std::os::unix::process::CommandExt;
    let start = time::now_rfc3339_nanos();
    let failed = |output: String| Probe {
        start: start.clone(),
        end: time::now_rfc3339_nanos(),
        exit_code: -1,
        output,
    };
    let (mut reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(err) => return Some(failed(format!("cannot make a pipe: {err}"))),
    };
    if let Err(err) = rustix::io::ioctl_fionbio(&reader, true) {
        return Some(failed(format!("cannot make a pipe: {err}")));
    }
    // /proc/self/exe: the binary this process runs, even after an upgrade replaced it
    let spawned = writer.try_clone().and_then(|second| {
        std::process::Command::new("/proc/self/exe")
            .arg("--root")
            .arg(root)
            .args(["exec", "--signal-group", id])
            .args(check.command())
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(second)
            .process_group(0)
            .spawn()
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return Some(failed(format!("cannot start the probe: {err}"))),
    };
    let deadline = Instant::now() + check.timeout();
    let mut kept = Vec::new();
    let mut ended: Option<(std::process::ExitStatus, Instant)> = None;
    loop {
        let mut buf = [0u8; 4096];
        let closed = loop {
            match reader.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n.min(OUTPUT_BYTES.saturating_sub(kept.len()))])
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if ended.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            ended = Some((status, Instant::now()));
        }
        match ended {
            Some((status, at)) if closed || at.elapsed() > Duration::from_millis(100) => {
                return Some(Probe {
                    start,
                    end: time::now_rfc3339_nanos(),
                    exit_code: status.code().unwrap_or(-1),
                    output: String::from_utf8_lossy(&kept).into_owned(),
                });
            }
            None if Instant::now() >= deadline => {
                end(&mut child);
                return Some(failed(format!(
                    "Health check exceeded timeout ({:?})",
                    check.timeout()
                )));
            }
            _ => {}
        }
        if !matches!(
            stopped.recv_timeout(Duration::from_millis(10)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            end(&mut child);
            return None;
        }
    }
}

/// Ends a probe: SIGTERM, which `strata exec --signal-group` passes to the test and all it
/// started, then SIGKILL.
fn end(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_docker_writes_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_shell_test_runs_under_sh() {
        let check = Check {
            test: vec!["CMD-SHELL".into(), "test -f /ok".into()],
            ..Check::default()
        };
        assert_eq!(check.command(), ["/bin/sh", "-c", "test -f /ok"]);
        let check = Check {
            shell: vec!["/bin/bash".into(), "-ec".into()],
            ..check
        };
        assert_eq!(check.command(), ["/bin/bash", "-ec", "test -f /ok"]);
        let check = Check {
            test: vec!["CMD".into(), "true".into()],
            ..Check::default()
        };
        assert_eq!(check.command(), ["true"]);
    }
}
