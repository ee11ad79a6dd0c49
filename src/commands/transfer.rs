//! Shared glue for the distribution verbs (push, pull, build's cache flags): registry
//! client options from flags and progress output, bars on a terminal and one plain line
//! per blob otherwise (on stderr, so stdout stays the result).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_store::Digest;
use strata_store::registry::ClientOptions;
use strata_store::transfer::Progress;

use super::images::human_size;

pub fn client_options(insecure: bool) -> ClientOptions {
    ClientOptions {
        insecure,
        ..ClientOptions::default()
    }
}

/// Bars on a terminal, plain lines otherwise, nothing with `quiet`.
pub struct Reporter {
    bars: Option<MultiProgress>,
    active: Mutex<HashMap<Digest, (ProgressBar, String, u64)>>,
    quiet: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        let bars = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Reporter {
            bars,
            active: Mutex::new(HashMap::new()),
            quiet,
        }
    }
}

impl Progress for Reporter {
    fn begin(&self, digest: &Digest, size: u64, action: &str) {
        if self.quiet {
            return;
        }
        let bar = match &self.bars {
            Some(multi) => {
                let bar = multi.add(ProgressBar::new(size));
                let style = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_message(format!("{action} {}", digest.short()));
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            }
            None => ProgressBar::hidden(),
        };
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.insert(*digest, (bar, action.to_string(), size));
    }

    fn advance(&self, digest: &Digest, bytes: u64) {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bar, _, _)) = active.get(digest) {
            bar.inc(bytes);
        }
    }

    fn end(&self, digest: &Digest, outcome: &str) {
        if self.quiet {
            return;
        }
        let entry = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        let line = match &entry {
            Some((_, action, size)) => format!(
                "{action} {} {outcome} ({})",
                digest.short(),
                human_size(*size)
            ),
            None => format!("{} {outcome}", digest.short()),
        };
        match (&self.bars, entry) {
            (Some(multi), Some((bar, _, _))) => {
                bar.finish_and_clear();
                multi.remove(&bar);
                let _ = multi.println(line);
            }
            (Some(multi), None) => {
                let _ = multi.println(line);
            }
            (None, _) => eprintln!("{line}"),
        }
    }
}
