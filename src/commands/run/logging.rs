//! A container's log, in docker's json-file format: one JSON object per line,
//! `{"log":"...","stream":"stdout"|"stderr","time":"RFC 3339, nanoseconds"}`, so `logs`
//! can give each stream back to its own descriptor, in the order it was written.
//!
//! The container writes into two pipes; a thread per pipe cuts what comes through into
//! lines, appends a record per line to the log and, for a run in the foreground, echoes
//! the bytes to strata's own stdout or stderr (docker's attached client). A line longer
//! than [`MAX_RECORD`] is cut into several records, as docker does at 16 KiB. Whatever
//! goes wrong with the log (a full disk) does not stop the echo: the first error is kept
//! and reported when the container ends.

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

/// The threads copying a running container's output; [`Capture::finish`] waits for them.
pub struct Capture {
    threads: Vec<JoinHandle<io::Result<()>>>,
}

/// The write ends a container gets as its stdout and stderr.
pub struct Pipes {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Capture {
    /// Opens (appends to) the log at `path` and starts copying; `echo`: a foreground run,
    /// whose output also goes to strata's stdout and stderr.
    pub fn start(path: &Path, echo: bool) -> io::Result<(Capture, Pipes)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let log = Arc::new(Mutex::new(log));
        let mut threads = Vec::new();
        let mut ends = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let (read, write) = io::pipe()?;
            let log = log.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("log-{}", stream.name()))
                    .spawn(move || copy(read, stream, &log, echo))?,
            );
            ends.push(OwnedFd::from(write));
        }
        let stderr = ends.pop().expect("two pipes");
        let stdout = ends.pop().expect("two pipes");
        Ok((Capture { threads }, Pipes { stdout, stderr }))
    }

    /// Waits until every writer of the pipes is gone (the container and all its
    /// processes) and everything is in the log; the first error writing it.
    pub fn finish(self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            let copied = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("log thread panicked")));
            if result.is_ok() {
                result = copied;
            }
        }
        result
    }
}

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
        if echo {
            // The terminal or file strata writes to may be gone; the log goes on.
            let _ = stream.echo(&buf[..n]);
        }
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
        let (capture, pipes) = Capture::start(&log, false).unwrap();
        let mut out = File::from(pipes.stdout);
        let mut err = File::from(pipes.stderr);
        out.write_all(b"one\ntwo").unwrap();
        out.write_all(b" halves\n").unwrap();
        err.write_all(b"oops\n").unwrap();
        out.write_all(&vec![b'x'; MAX_RECORD + 10]).unwrap();
        out.write_all(b"\nno newline").unwrap();
        drop((out, err));
        capture.finish().unwrap();
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
