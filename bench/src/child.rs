//! A child process the harness started (the relay under test, rtpengine), with the temporary
//! directory that holds its files and the log its stdout/stderr go to: stopped (SIGTERM, then
//! SIGKILL) and its directory removed on drop, unless `SLUICE_BENCH_KEEP_RELAY_DIR` is set
//! (to look at the config and log after a failed run).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Keeps the children's directories after drop when set (to any value).
pub const KEEP_DIR_ENV: &str = "SLUICE_BENCH_KEEP_RELAY_DIR";

/// How long drop waits after SIGTERM before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// A started child; see the module docs for what drop does.
pub struct ChildProcess {
    /// `None` once stopped.
    child: Option<Child>,
    dir: PathBuf,
    log_file: PathBuf,
}

impl ChildProcess {
    /// Takes over `child`, whose files are in `dir` and whose output goes to `log_file`.
    pub fn new(child: Child, dir: PathBuf, log_file: PathBuf) -> ChildProcess {
        ChildProcess {
            child: Some(child),
            dir,
            log_file,
        }
    }

    /// The child's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Last `n` lines of the child's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True while the child runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The child's exit status once it has exited by itself; `None` while it runs, and after
    /// [`ChildProcess::stop`] (which reaps it).
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Stops the child (SIGTERM, SIGKILL after `grace`); returns how long it took to exit, or
    /// `None` when it had to be killed or was already stopped.
    pub fn stop(&mut self, grace: Duration) -> Option<Duration> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        while started.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
        if std::env::var_os(KEEP_DIR_ENV).is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// SIGTERM ends a well-behaved child within the grace period, its log tail reads back, and
    /// drop removes its directory.
    #[test]
    fn stops_on_sigterm_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("sluice-bench-child-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let log_file = dir.join("child.log");
        fs::write(&log_file, "one\ntwo\nthree\n").unwrap();
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut c = ChildProcess::new(child, dir.clone(), log_file);
        assert!(c.pid() > 0);
        assert!(c.alive());
        assert_eq!(c.exited().unwrap(), None);
        assert_eq!(c.log_tail(2), "two\nthree");
        assert_eq!(c.log_tail(10), "one\ntwo\nthree");
        assert!(c.stop(Duration::from_secs(5)).is_some());
        assert!(!c.alive());
        assert_eq!(c.pid(), 0);
        assert_eq!(c.stop(Duration::from_secs(5)), None);
        let keep = std::env::var_os(KEEP_DIR_ENV).is_some();
        drop(c);
        assert_eq!(dir.exists(), keep);
        let _ = fs::remove_dir_all(&dir);
    }
}
