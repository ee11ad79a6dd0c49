//! `-t`: the container gets the slave side of a fresh pty as its controlling terminal;
//! strata copies its stdin to the master (with `-i`) and the master to its stdout, with
//! its own terminal in raw mode (restored on drop, also on error paths) and its window
//! size copied at start and on SIGWINCH (signals.rs).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::error::{Error, Result};
use crate::sys;

/// strata's side of a running tty container.
pub struct Session {
    master: RawFd,
    saved: Option<Termios>,
    stop_write: Option<OwnedFd>,
    output: Option<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
}

fn stdin_fd() -> BorrowedFd<'static> {
    sys::stdin()
}

impl Session {
    /// Starts copying. `out` defaults to strata's stdout.
    pub fn start(master: OwnedFd, interactive: bool, out: Option<OwnedFd>) -> Result<Session> {
        let master_raw = master.as_raw_fd();
        let saved = match tcgetattr(stdin_fd()) {
            Ok(original) if interactive => {
                let mut raw = original.clone();
                cfmakeraw(&mut raw);
                tcsetattr(stdin_fd(), SetArg::TCSANOW, &raw)
                    .map_err(|err| Error::sys("tcsetattr raw", err))?;
                Some(original)
            }
            _ => None,
        };
        let master_in = master
            .try_clone()
            .map_err(|err| Error::io("failed to dup", "pty master", err))?;
        let output = std::thread::Builder::new()
            .name("strata-tty-out".into())
            .spawn(move || {
                let mut master = std::fs::File::from(master);
                let mut sink: Box<dyn Write> = match out {
                    Some(fd) => Box::new(std::fs::File::from(fd)),
                    None => Box::new(std::io::stdout()),
                };
                let mut buffer = [0u8; 8192];
                // EIO once the last slave descriptor closes: the container is gone.
                while let Ok(n @ 1..) = master.read(&mut buffer) {
                    if sink
                        .write_all(&buffer[..n])
                        .and_then(|()| sink.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|err| Error::io("failed to spawn", "tty output thread", err))?;
        let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|err| Error::sys("pipe2", err))?;
        let input = if interactive {
            Some(
                std::thread::Builder::new()
                    .name("strata-tty-in".into())
                    .spawn(move || copy_input(master_in, stop_read))
                    .map_err(|err| Error::io("failed to spawn", "tty input thread", err))?,
            )
        } else {
            None
        };
        Ok(Session {
            master: master_raw,
            saved,
            stop_write: Some(stop_write),
            output: Some(output),
            input,
        })
    }

    pub fn master(&self) -> RawFd {
        self.master
    }

    /// Waits for the container's output to drain, stops the input copy, restores the terminal.
    pub fn finish(mut self) {
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop_write.take() {
            drop(stop); // EOF on the stop pipe ends the input thread's poll
        }
        if let Some(input) = self.input.take() {
            let _ = input.join();
        }
        if let Some(saved) = self.saved.take() {
            let _ = tcsetattr(stdin_fd(), SetArg::TCSANOW, &saved);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

fn copy_input(master: OwnedFd, stop: OwnedFd) {
    let mut master = std::fs::File::from(master);
    let mut buffer = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(stdin_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        let Some(revents) = fds[0].revents() else {
            return;
        };
        if revents.is_empty() {
            continue;
        }
        match nix::unistd::read(stdin_fd(), &mut buffer) {
            Ok(0) | Err(_) => {
                // EOF on stdin: send the terminal's EOF character so `cat` etc. finish.
                let _ = master.write_all(&[4]);
                return;
            }
            Ok(n) => {
                if master.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
