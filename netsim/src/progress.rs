//! The `netsim run` progress bar (indicatif): simulated seconds done out of
//! the run's, on standard error, only when it is a terminal and only once
//! the run has taken a couple of seconds, so short runs, tests and piped
//! output stay free of it. Wall-clock reads here never reach the
//! simulation (it only hears about progress, never answers).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Runs shorter than this never show a bar.
const SHOW_AFTER: Duration = Duration::from_secs(2);

/// A progress bar that appears when a run proves long.
pub struct Progress {
    tty: bool,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for standard error (inactive unless it is a terminal).
    pub fn new() -> Progress {
        Progress::with_terminal(std::io::stderr().is_terminal())
    }

    /// A bar that draws only if `tty` (for tests: never).
    pub fn with_terminal(tty: bool) -> Progress {
        Progress {
            tty,
            started: Instant::now(),
            bar: None,
        }
    }

    /// Simulated time `now` of `end` seconds.
    pub fn update(&mut self, now: f64, end: f64) {
        if !self.tty || self.started.elapsed() < SHOW_AFTER {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(end.max(0.0) as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "  {bar:40} {pos:>5}/{len} s simulated, {elapsed_precise} wall, eta {eta}",
            ) {
                b.set_style(style);
            }
            b
        });
        bar.set_position(now.max(0.0) as u64);
    }

    /// Whether a bar is showing.
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_draws_without_a_terminal() {
        let mut p = Progress::with_terminal(false);
        p.started -= SHOW_AFTER * 2;
        p.update(5.0, 10.0);
        assert!(!p.shown());
        let mut q = Progress::with_terminal(true);
        q.update(1.0, 10.0);
        assert!(!q.shown(), "a short run shows nothing");
    }
}
