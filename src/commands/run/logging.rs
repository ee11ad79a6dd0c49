//! A container's log, in docker's json-file format: one JSON object per line,
//! `{"log":"...","stream":"stdout"|"stderr","time":"RFC 3339, nanoseconds"}`, so `logs`
//! can give each stream back to its own descriptor, in the order it was written.
//!
//! The container writes into two pipes, read by `strata log-copier`, a process of its own
//! (docker's conmon): a container outlives a killed `strata run` (docker's client), and
//! its output must still have somewhere to go. In it a thread per pipe cuts what comes
//! through into lines, appends a record per line to the log and, for a run in the
//! foreground, echoes the bytes to the stdout or stderr it shares with strata (docker's
//! attached client). A line longer than [`MAX_RECORD`] is cut into several records, as
//! docker does at 16 KiB. Whatever goes wrong with the log (a full disk) does not stop the
//! echo: the first error is reported when the container ends.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use strata_store::time;

/// The longest piece of a line one record holds (docker's json-file cuts at 16 KiB).
const MAX_RECORD: usize = 16 << 10;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// What a log line holds: a record, or (a log written before records, or a line from
/// elsewhere) plain text.
pub enum Line<'a> {
    Record(Record),
    Text(&'a [u8]),
}

pub fn parse(line: &[u8]) -> Line<'_> {
    match serde_json::from_slice::<Record>(line) {
        Ok(record) => Line::Record(record),
        Err(_) => Line::Text(line),
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn echo(self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Stream::Stderr => io::stderr().lock().write_all(bytes),
        }
    }
}

/// The copier of a running container's output; [`Capture::finish`] waits for it.
pub struct Capture {
    copier: std::process::Child,
}

/// The write ends a container gets as its stdout and stderr.
pub struct Pipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The copier reads the container's stderr from this descriptor (its stdout from stdin).
const STDERR_FD: i32 = 3;

impl Capture {
    /// Starts `strata log-copier`, appending to the log at `path`; `echo`: a foreground
    /// run, whose output also goes to strata's stdout and stderr.
    pub fn start(path: &Path, echo: bool) -> io::Result<(Capture, Pipes)> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (out_read, out_write) = io::pipe()?;
        let (err_read, err_write) = io::pipe()?;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.arg("log-copier").arg(path);
        if echo {
            command.arg("--echo");
        }
        command.stdin(out_read);
        let err_fd = err_read.as_raw_fd();
        // SAFETY: between fork and exec only dup2 and fcntl, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let moved = if err_fd == STDERR_FD {
                    libc::fcntl(err_fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(err_fd, STDERR_FD)
                };
                if moved < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let copier = command.spawn()?;
        drop(err_read);
        Ok((
            Capture { copier },
            Pipes {
                stdout: out_write.into(),
                stderr: err_write.into(),
            },
        ))
    }

    /// Waits until every writer of the pipes is gone (the container and all its
    /// processes) and everything is in the log.
    pub fn finish(mut self) -> io::Result<()> {
        let status = self.copier.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the log copier ended with {status}"
            )))
        }
    }
}

/// `strata log-copier LOG [--echo]`: copies stdin (the container's stdout) and descriptor
/// 3 (its stderr) to the log until both end. Signals meant for the foreground run (^C,
/// a closed terminal) or for strata are not for it: it ends when the container does.
pub fn copier(args: crate::cli::LogCopierArgs) -> anyhow::Result<std::process::ExitCode> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    use std::os::fd::FromRawFd;
    for sig in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGPIPE,
        Signal::SIGTSTP,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // The echo is the attached client's output: once strata is gone (killed), the shell has
    // its terminal back, and the container's output goes to the log only.
    extern "C" fn client_gone(_: libc::c_int) {
        ECHO_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let parent = nix::unistd::getppid();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let _ = unsafe { signal(Signal::SIGUSR1, SigHandler::Handler(client_gone)) };
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1);
    if nix::unistd::getppid() != parent || parent.as_raw() == 1 {
        ECHO_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)?;
    let log = Arc::new(Mutex::new(log));
    // SAFETY: descriptor 3 is the stderr pipe `Capture::start` gave this process; only
    // this File owns it.
    let stderr_pipe = unsafe { File::from_raw_fd(STDERR_FD) };
    // SAFETY: descriptor 0 is the stdout pipe, owned by this File alone from here: when
    // its thread stops reading (see `copy`), the pipe has no reader left.
    let stdout_pipe = unsafe { File::from_raw_fd(0) };
    let threads: Vec<JoinHandle<io::Result<()>>> =
        [(stdout_pipe, Stream::Stdout), (stderr_pipe, Stream::Stderr)]
            .into_iter()
            .map(|(pipe, stream)| {
                let log = log.clone();
                std::thread::spawn(move || copy(pipe, stream, &log, args.echo))
            })
            .collect();
    let mut failed = None;
    for thread in threads {
        let copied = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("log thread panicked")));
        if failed.is_none() {
            failed = copied.err();
        }
    }
    match failed {
        None => Ok(std::process::ExitCode::SUCCESS),
        Some(err) => {
            eprintln!("strata: {}: {err}", args.log.display());
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// Set in the log copier when strata, its parent, has died: no more echo.
static ECHO_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn copy(mut from: impl Read, stream: Stream, log: &Mutex<File>, echo: bool) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::new();
    let mut failed: Option<io::Error> = None;
    let record = |bytes: &[u8], failed: &mut Option<io::Error>| {
        if failed.is_some() {
            return;
        }
        let record = Record {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: stream.name().to_string(),
            time: time::now_rfc3339_nanos(),
        };
        let mut text = serde_json::to_vec(&record).expect("a record serializes");
        text.push(b'\n');
        let written = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&text);
        if let Err(err) = written {
            *failed = Some(err);
        }
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        line.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = line[start..].iter().position(|&b| b == b'\n') {
            let end = start + end + 1;
            for piece in line[start..end].chunks(MAX_RECORD) {
                record(piece, &mut failed);
            }
            start = end;
        }
        line.drain(..start);
        while line.len() >= MAX_RECORD {
            record(&line[..MAX_RECORD], &mut failed);
            line.drain(..MAX_RECORD);
        }
        // A reader that went away (`strata run IMG yes | head -1`): stop reading, so the
        // container's next write fails (SIGPIPE) as it did writing to that pipe itself.
        // Any other failure to echo (a terminal gone) leaves the log going.
        if echo
            && !ECHO_OFF.load(std::sync::atomic::Ordering::Relaxed)
            && let Err(err) = stream.echo(&buf[..n])
            && err.kind() == io::ErrorKind::BrokenPipe
        {
            break;
        }
    }
    if !line.is_empty() {
        record(&line, &mut failed);
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(log: &Path) -> Vec<Record> {
        std::fs::read(log)
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| match parse(l) {
                Line::Record(r) => r,
                Line::Text(t) => panic!("not a record: {}", String::from_utf8_lossy(t)),
            })
            .collect()
    }

    #[test]
    fn lines_become_records_of_their_stream_long_ones_cut_and_a_last_partial_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let (out_read, mut out) = io::pipe().unwrap();
        let (err_read, mut err) = io::pipe().unwrap();
        let file = Arc::new(Mutex::new(File::create(&log).unwrap()));
        let copiers: Vec<_> = [(out_read, Stream::Stdout), (err_read, Stream::Stderr)]
            .into_iter()
            .map(|(pipe, stream)| {
                let file = file.clone();
                std::thread::spawn(move || copy(pipe, stream, &file, false))
            })
            .collect();
        out.write_all(b"one\ntwo").unwrap();
        out.write_all(b" halves\n").unwrap();
        err.write_all(b"oops\n").unwrap();
        out.write_all(&vec![b'x'; MAX_RECORD + 10]).unwrap();
        out.write_all(b"\nno newline").unwrap();
        drop((out, err));
        for copier in copiers {
            copier.join().unwrap().unwrap();
        }
        let got = records(&log);
        let of = |stream: &str| -> Vec<String> {
            got.iter()
                .filter(|r| r.stream == stream)
                .map(|r| r.log.clone())
                .collect()
        };
        let long = "x".repeat(MAX_RECORD);
        assert_eq!(
            of("stdout"),
            ["one\n", "two halves\n", &long, "xxxxxxxxxx\n", "no newline"]
        );
        assert_eq!(of("stderr"), ["oops\n"]);
        assert!(
            got.iter()
                .all(|r| r.time.ends_with('Z') && r.time.contains('T'))
        );
    }

    #[test]
    fn plain_text_is_not_a_record() {
        assert!(matches!(parse(b"hello"), Line::Text(b"hello")));
        assert!(
            matches!(parse(br#"{"log":"a\n","stream":"stderr","time":"t"}"#), Line::Record(r) if r.stream == "stderr")
        );
    }
}
