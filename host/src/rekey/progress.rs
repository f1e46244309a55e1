//! The rekey's progress on stderr: a bar redrawn in place on a terminal, a
//! plain line every few seconds otherwise (a job's log), so a long rekey is
//! never silent. Counts only: no value is ever shown.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const BAR_WIDTH: usize = 30;

pub struct Progress {
    key_id: String,
    target: String,
    total: u64,
    done: u64,
    values: u64,
    started: Instant,
    last_drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    pub fn new(key_id: &str) -> Self {
        Self {
            key_id: key_id.to_owned(),
            target: String::new(),
            total: 0,
            done: 0,
            values: 0,
            started: Instant::now(),
            last_drawn: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Adds a target's pages (or dead letters) to the whole.
    pub fn add_total(&mut self, units: u64) {
        self.total += units;
    }

    pub fn start(&mut self, target: String) {
        self.target = target;
        self.draw(true);
    }

    /// `units` more pages (or dead letters) walked, `values` more re-masked.
    pub fn advance(&mut self, units: u64, values: u64) {
        // A table grows while hosts write: never past the whole.
        self.done = (self.done + units).min(self.total);
        self.values += values;
        self.draw(false);
    }

    pub fn finish(&mut self) {
        self.done = self.total;
        self.draw(true);
        if self.terminal {
            eprintln!();
        }
    }

    fn draw(&mut self, force: bool) {
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        let now = Instant::now();
        if !force && self.last_drawn.is_some_and(|last| now - last < every) {
            return;
        }
        self.last_drawn = Some(now);
        let line = self.line();
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn line(&self) -> String {
        let fraction = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let filled = (fraction * BAR_WIDTH as f64).round() as usize;
        format!(
            "rekey to {} [{}{}] {:>3.0}%  {} values re-masked  {:.0} s  {}",
            self.key_id,
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled.min(BAR_WIDTH)),
            fraction * 100.0,
            self.values,
            self.started.elapsed().as_secs_f64(),
            self.target
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_walk_and_never_past_the_whole() {
        let mut progress = Progress::new("k2");
        progress.terminal = false;
        progress.add_total(200);
        progress.done = 50;
        assert!(
            progress
                .line()
                .contains("[########----------------------]  25%"),
            "{}",
            progress.line()
        );
        progress.advance(1_000, 7);
        assert!(
            progress.line().contains(" 100%  7 values re-masked"),
            "{}",
            progress.line()
        );
    }
}
