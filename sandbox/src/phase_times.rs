//! Where a sandbox start spends its time, phase by phase, for `CAIRN_TIMES=1` (stderr). Off by
//! default; each mark then costs one `Instant::now()`.

use std::time::Instant;

/// Marks phases of one operation; prints them on [`PhaseTimes::report`] when `CAIRN_TIMES` is
/// set.
pub struct PhaseTimes {
    on: bool,
    start: Instant,
    last: Instant,
    parts: Vec<(&'static str, f64)>,
}

impl PhaseTimes {
    /// Starts timing now.
    pub fn start() -> PhaseTimes {
        let now = Instant::now();
        PhaseTimes {
            on: std::env::var_os("CAIRN_TIMES").is_some(),
            start: now,
            last: now,
            parts: Vec::new(),
        }
    }

    /// The phase `name` ended now.
    pub fn mark(&mut self, name: &'static str) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        self.parts
            .push((name, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }

    /// One line: `what: total N ms (phase a ms, ...)`.
    pub fn line(&self, what: &str) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.1}"))
            .collect();
        format!(
            "{what}: {:.1} ms ({})",
            self.start.elapsed().as_secs_f64() * 1e3,
            parts.join(", ")
        )
    }

    /// Prints [`PhaseTimes::line`] to stderr when `CAIRN_TIMES` is set.
    pub fn report(&self, what: &str) {
        if self.on {
            eprintln!("{}", self.line(what));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_order() {
        let mut t = PhaseTimes::start();
        t.on = true;
        t.mark("a");
        t.mark("b");
        let line = t.line("x");
        assert!(line.starts_with("x: "), "{line}");
        let (a, b) = (line.find("a ").unwrap(), line.find(", b ").unwrap());
        assert!(a < b, "{line}");
    }
}
