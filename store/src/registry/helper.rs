//! Docker credential helpers: the executable `docker-credential-<name>` on `PATH`, named by
//! `credHelpers` (per registry) or `credsStore` (default) in the credentials file
//! (docker-credential-helpers `client/client.go`, docker/cli `credentials/native_store.go`).
//!
//! ```text
//! get    stdin: server URL   stdout: {"ServerURL":..,"Username":..,"Secret":..}
//! store  stdin: {"ServerURL":..,"Username":..,"Secret":..}
//! erase  stdin: server URL
//! ```
//!
//! A helper that has nothing for the server says `credentials not found in native keychain`
//! and exits nonzero. A `Username` of `<token>` makes `Secret` an identity token, which
//! [`Credentials`] carries in the same form. Each call has a deadline: a helper that hangs
//! (a keychain waiting for an unlock prompt nobody sees) is killed, by its PID, and named.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::auth::Credentials;
use crate::error::{Error, Result};

/// What helpers print when they hold nothing for a server (`credentials.errCredentialsNotFound`).
const NOT_FOUND: &str = "credentials not found";

/// One helper, as found for one registry.
pub(crate) struct Helper<'a> {
    /// `docker-credential-<name>`.
    program: String,
    /// The registry it is asked about, for error messages.
    registry: &'a str,
    /// `PATH` to find the program on (and to give it); `None`: the process's own.
    search_path: Option<&'a OsStr>,
    timeout: Duration,
}

/// What a finished helper call gave.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Whether the helper said it holds nothing for the server.
    fn not_found(&self) -> bool {
        !self.status.success()
            && (self.stdout.contains(NOT_FOUND) || self.stderr.contains(NOT_FOUND))
    }

    /// The helper's own words, for an error message.
    fn said(&self) -> String {
        let text = match self.stdout.trim() {
            "" => self.stderr.trim(),
            out => out,
        };
        text.chars().take(300).collect()
    }
}

impl<'a> Helper<'a> {
    pub fn new(
        name: &str,
        registry: &'a str,
        search_path: Option<&'a OsStr>,
        timeout: Duration,
    ) -> Helper<'a> {
        Helper {
            program: format!("docker-credential-{name}"),
            registry,
            search_path,
            timeout,
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// The error for a call that did not succeed, with the helper's own words.
    fn failed(&self, action: &str, outcome: &Outcome) -> Error {
        self.error(format!(
            "{action} failed ({}): {}",
            outcome.status,
            outcome.said()
        ))
    }

    fn error(&self, message: String) -> Error {
        Error::CredentialHelper {
            program: self.program.clone(),
            registry: self.registry.to_string(),
            message,
        }
    }

    /// The credentials the helper holds for `server_url`, `None` when it holds none.
    pub fn get(&self, server_url: &str) -> Result<Option<Credentials>> {
        let outcome = self.run("get", server_url.as_bytes())?;
        if outcome.not_found() {
            return Ok(None);
        }
        if !outcome.status.success() {
            return Err(self.failed("get", &outcome));
        }
        let reply: serde_json::Value = serde_json::from_str(&outcome.stdout)
            .map_err(|e| self.error(format!("get did not answer JSON: {e}")))?;
        let field = |name: &str| {
            reply
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (username, password) = (field("Username"), field("Secret"));
        if username.is_empty() && password.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials { username, password }))
    }

    /// Hands `credentials` for `server_url` to the helper to keep.
    pub fn store(&self, server_url: &str, credentials: &Credentials) -> Result<()> {
        let input = serde_json::json!({
            "ServerURL": server_url,
            "Username": credentials.username,
            "Secret": credentials.password,
        });
        let outcome = self.run("store", input.to_string().as_bytes())?;
        if !outcome.status.success() {
            return Err(self.failed("store", &outcome));
        }
        Ok(())
    }

    /// Makes the helper forget `server_url`; false when it held nothing for it.
    pub fn erase(&self, server_url: &str) -> Result<bool> {
        let outcome = self.run("erase", server_url.as_bytes())?;
        if outcome.not_found() {
            return Ok(false);
        }
        if !outcome.status.success() {
            return Err(self.failed("erase", &outcome));
        }
        Ok(true)
    }

    /// The program's path on the search path.
    fn find(&self) -> Result<PathBuf> {
        let own = std::env::var_os("PATH");
        let path = self.search_path.or(own.as_deref()).unwrap_or_default();
        std::env::split_paths(path)
            .map(|dir| dir.join(&self.program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                self.error(format!(
                    "{} is not installed (not an executable on PATH); install it or remove the \
                     helper from the credentials file",
                    self.program
                ))
            })
    }

    /// Runs `program action` with `input` on stdin, killing it (by its PID) at the deadline.
    fn run(&self, action: &str, input: &[u8]) -> Result<Outcome> {
        let program = self.find()?;
        let mut command = Command::new(&program);
        command
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = self.search_path {
            command.env("PATH", path);
        }
        let mut child = spawn(&mut command)
            .map_err(|e| self.error(format!("cannot run {}: {e}", program.display())))?;
        // The input is a line or a small JSON object: it fits the pipe, so no writer thread.
        // A helper that exits without reading it is not an error here (its status says).
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        let stdout = read_in_thread(child.stdout.take());
        let stderr = read_in_thread(child.stderr.take());
        let status = self.wait(&mut child, action)?;
        // Reader threads end once the pipes close; a grandchild the helper left holding
        // them does not stop us (the readers are left to it).
        let collect = |reader: std::sync::mpsc::Receiver<String>| {
            reader
                .recv_timeout(Duration::from_secs(1))
                .unwrap_or_default()
        };
        Ok(Outcome {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        })
    }

    fn wait(&self, child: &mut Child, action: &str) -> Result<ExitStatus> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    // Child::kill is kill(2) on its PID, which is still ours to signal: it has
                    // not been reaped.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.error(format!(
                        "`{} {action}` did not finish within {}s: killed it (pid {})",
                        self.program,
                        self.timeout.as_secs_f32(),
                        child.id()
                    )));
                }
                Err(e) => return Err(self.error(format!("failed to wait for it: {e}"))),
            }
        }
    }
}

/// Spawns `command`, again when the program is busy being written: a test that has just
/// written its helper may race another thread's fork (ETXTBSY).
fn spawn(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn read_in_thread(pipe: Option<impl Read + Send + 'static>) -> std::sync::mpsc::Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            // (at most 1 MiB: a helper's answer is a few hundred bytes)
            let _ = (&mut pipe).take(1 << 20).read_to_end(&mut bytes);
            let _ = send.send(String::from_utf8_lossy(&bytes).into_owned());
        });
    } else {
        let _ = send.send(String::new());
    }
    receive
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
