//! Load scenarios.

pub mod control;
pub mod control_grpc;
pub mod flood;
pub mod steady;

/// Prints progress lines to stderr at most once per `every_ns` (no-op when disabled).
pub struct Progress {
    enabled: bool,
    every_ns: u64,
    next_ns: u64,
    start_ns: u64,
}

impl Progress {
    pub fn new(enabled: bool, every_ns: u64) -> Progress {
        let now = crate::clock::now_ns();
        Progress {
            enabled,
            every_ns,
            next_ns: now + every_ns,
            start_ns: now,
        }
    }

    /// Calls `line` (given the seconds since start) when a line is due.
    pub fn tick(&mut self, line: impl FnOnce(f64) -> String) {
        if !self.enabled {
            return;
        }
        let now = crate::clock::now_ns();
        if now >= self.next_ns {
            self.next_ns = now + self.every_ns;
            eprintln!("  {}", line((now - self.start_ns) as f64 / 1e9));
        }
    }
}
