//! The progress bar of a load on stderr: bytes taken from the source (for a compressed file
//! its compressed bytes, so the bar still ends at the file's size) against its size when known,
//! and the rows loaded per second. Hidden unless asked for and stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressStyle};

/// One phase's bar (hashing, then loading); cleared when dropped.
pub(crate) struct Progress {
    ticker: Ticker,
    started: Instant,
}

/// What a thread that reads the source updates the bar with.
#[derive(Clone)]
pub(crate) struct Ticker {
    bar: ProgressBar,
    read: Arc<AtomicU64>,
}

impl Ticker {
    /// The counter of bytes taken from the source.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    pub(crate) fn tick(&self) {
        self.bar.set_position(self.read.load(Ordering::Relaxed));
    }
}

impl Progress {
    /// A bar labelled `what` when `enabled` and stderr is a terminal; `total` is the source's
    /// size when it is known (a file), else the bar is a spinner.
    pub(crate) fn new(enabled: bool, what: &'static str, total: Option<u64>) -> Progress {
        let bar = if !enabled || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = match total {
                Some(total) => {
                    let bar = ProgressBar::new(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar
                }
                None => {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix} {bytes} ({bytes_per_sec}, {elapsed}) {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar
                }
            };
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Progress {
            ticker: Ticker {
                bar,
                read: Arc::new(AtomicU64::new(0)),
            },
            started: Instant::now(),
        }
    }

    pub(crate) fn ticker(&self) -> Ticker {
        self.ticker.clone()
    }

    /// `rows` loaded so far.
    pub(crate) fn loaded(&self, rows: usize) {
        self.ticker.tick();
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 {
            let per_second = (rows as f64 / seconds) as u64;
            self.ticker.bar.set_message(format!(
                "{} rows, {} rows/s",
                HumanCount(rows as u64),
                HumanCount(per_second)
            ));
        }
    }

    /// Runs `f` with the bar off the screen (for lines printed on stderr meanwhile).
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.ticker.bar.suspend(f)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.bar.finish_and_clear();
    }
}
