//! `strata logs [-f] [-n N] [-t] CONTAINER`: what a container wrote, its stdout to stdout
//! and its stderr to stderr, in the order it was written (the log's records, see
//! `run/logging.rs`). `-f` keeps printing what it writes until it exits; `-n`/`--tail`
//! starts at its last N lines; `-t` puts each line's time in front of it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use strata_store::{Status, Store};

use crate::cli::LogsArgs;
use crate::commands::Globals;
use crate::commands::run::logging::{self, Line};
use crate::commands::run::{alive, is_running};

pub fn run(globals: &Globals, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&globals.root)?;
    let container = store.container(&args.container)?;
    let path = container.log_path();
    let mut file = match File::open(&path) {
        Ok(file) => file,
        // Never started (created by a failed run), or made before runs kept a log.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(ExitCode::SUCCESS),
        Err(err) => return Err(err).with_context(|| format!("failed to open {}", path.display())),
    };
    let read_err = || format!("failed to read {}", path.display());
    if let Some(lines) = args.tail {
        let start = tail_offset(&mut file, lines).with_context(read_err)?;
        file.seek(SeekFrom::Start(start)).with_context(read_err)?;
    }
    let mut printer = Printer {
        partial: Vec::new(),
        timestamps: args.timestamps,
    };
    let mut buf = vec![0; 64 << 10];
    let mut drain = |file: &mut File, printer: &mut Printer| -> anyhow::Result<()> {
        loop {
            let n = file.read(&mut buf).with_context(read_err)?;
            if n == 0 {
                return Ok(());
            }
            printer.feed(&buf[..n])?;
        }
    };
    drain(&mut file, &mut printer)?;
    if args.follow {
        // The store lock is not held while following (gc must not wait on a `logs -f`).
        drop(store);
        loop {
            // Its runner records the exit once the log copier has written everything:
            // until then (or while the command runs, if the runner was killed) more may come.
            let running = Store::open(&globals.root)
                .and_then(|store| store.container(&container.id))
                .is_ok_and(|c| {
                    c.state.status == Status::Running
                        && (is_running(&c) || c.state.runner.is_some_and(alive))
                });
            // Drain after seeing it stopped, so the last lines are not lost.
            drain(&mut file, &mut printer)?;
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    printer.end()?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the log's lines as they come in, a record's text to its stream.
struct Printer {
    /// The start of a line not complete yet.
    partial: Vec<u8>,
    timestamps: bool,
}

impl Printer {
    fn feed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|&b| b == b'\n') {
            self.print(&self.partial[start..start + end])?;
            start += end + 1;
        }
        self.partial.drain(..start);
        Ok(())
    }

    /// A last line without its newline: plain text cut short is printed; a record being
    /// written as this reads is not (half of one is not text of the container's).
    fn end(&mut self) -> std::io::Result<()> {
        let line = std::mem::take(&mut self.partial);
        match logging::parse(&line) {
            _ if line.is_empty() => Ok(()),
            Line::Text(text) if text.starts_with(b"{") => Ok(()),
            _ => self.print(&line),
        }
    }

    fn print(&self, line: &[u8]) -> std::io::Result<()> {
        match logging::parse(line) {
            Line::Record(record) => {
                let text = if self.timestamps {
                    format!("{} {}", record.time, record.log)
                } else {
                    record.log
                };
                if record.stream == "stderr" {
                    std::io::stderr().lock().write_all(text.as_bytes())
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()
                }
            }
            Line::Text(text) => {
                let mut out = std::io::stdout().lock();
                out.write_all(text)?;
                out.write_all(b"\n")?;
                out.flush()
            }
        }
    }
}

/// The offset where the last `lines` lines of `file` begin (a final newline ends the last
/// line, it does not start another).
fn tail_offset(file: &mut File, lines: usize) -> std::io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut newlines = 0;
    let mut buf = vec![0; 8192];
    // Skip a trailing newline: it ends the last line.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, &byte) in chunk.iter().enumerate().rev() {
            if byte != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last && start + i as u64 == len - 1 {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == lines {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_finds_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text = "one\ntwo\nthree\n";
        std::fs::write(&path, text).unwrap();
        let mut file = File::open(&path).unwrap();
        let from = |file: &mut File, n| text[tail_offset(file, n).unwrap() as usize..].to_string();
        assert_eq!(from(&mut file, 1), "three\n");
        assert_eq!(from(&mut file, 2), "two\nthree\n");
        assert_eq!(from(&mut file, 5), text);
        assert_eq!(from(&mut file, 0), "");
        std::fs::write(&path, "a\nno newline").unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(tail_offset(&mut file, 1).unwrap(), 2);
    }
}
