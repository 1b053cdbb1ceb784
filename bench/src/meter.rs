//! Resource accounting over a measurement window: the relay's CPU/memory/fds (when its pid is
//! known) and the generator's own CPU.

use serde::Serialize;

use crate::procstat::{self, CpuSample, CpuUsage, MemFd};

/// Samples taken at the start of a window.
pub struct Meter {
    relay_pid: Option<u32>,
    relay: Option<CpuSample>,
    relay_ctx: (u64, u64),
    own: Option<CpuSample>,
    softirqd: Vec<u32>,
    others: std::collections::BTreeMap<u32, (String, u64)>,
    psi_some_us: Option<u64>,
    softirqd_ticks: u64,
}

/// What a window cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowUsage {
    pub relay_cpu: Option<CpuUsage>,
    pub relay_mem: Option<MemFd>,
    /// (voluntary, involuntary) context switches of the relay during the window.
    pub relay_context_switches: Option<(u64, u64)>,
    pub generator_cpu: Option<CpuUsage>,
    /// CPU of the kernel's ksoftirqd threads (softirq work not billed to any process), s.
    /// Machine-wide counters (/proc/stat) are not used: they are sampled at the timer tick and
    /// miss work that runs in short bursts after timer wakeups, as the generator's does.
    pub ksoftirqd_cpu_s: f64,
    /// CPU used by every other process during the window (other tenants, compilers...): the
    /// numbers are only clean when this is near zero.
    pub other_processes_cpu_s: f64,
    /// The biggest other consumers: (command, CPU s).
    pub other_processes_top: Vec<(String, f64)>,
    /// /proc/pressure/cpu "some": share of the window in which some runnable task waited for
    /// a CPU, in percent (includes the relay and the generator waiting for each other).
    pub cpu_pressure_percent: Option<f64>,
}

impl Meter {
    pub fn start(relay_pid: Option<u32>) -> Meter {
        let softirqd = procstat::ksoftirqd_pids();
        Meter {
            relay_pid,
            relay: relay_pid.and_then(|p| procstat::cpu_sample(p).ok()),
            relay_ctx: relay_pid.map_or((0, 0), procstat::context_switches),
            own: procstat::cpu_sample(std::process::id()).ok(),
            softirqd_ticks: procstat::ticks_of(&softirqd),
            softirqd,
            others: procstat::all_process_ticks(),
            psi_some_us: psi_some_total_us(),
        }
    }

    pub fn finish(&self) -> WindowUsage {
        let relay_end = self.relay_pid.and_then(|p| procstat::cpu_sample(p).ok());
        let own_end = procstat::cpu_sample(std::process::id()).ok();
        let ctx_end = self.relay_pid.map(procstat::context_switches);
        let softirqd_end = procstat::ticks_of(&self.softirqd);
        let others_end = procstat::all_process_ticks();
        let psi_end = psi_some_total_us();
        let mut exclude = self.softirqd.clone();
        exclude.push(std::process::id());
        exclude.extend(self.relay_pid);
        let (other, top) = procstat::other_ticks(&self.others, &others_end, &exclude);
        let tck = procstat::clk_tck() as f64;
        let wall_us = self
            .own
            .as_ref()
            .map(|o| crate::clock::now_ns().saturating_sub(o.at_ns) / 1000);
        WindowUsage {
            relay_cpu: match (&self.relay, &relay_end) {
                (Some(a), Some(b)) => Some(CpuUsage::between(a, b)),
                _ => None,
            },
            relay_mem: self.relay_pid.and_then(|p| procstat::mem_fd(p).ok()),
            relay_context_switches: ctx_end.map(|(v, n)| {
                (
                    v.saturating_sub(self.relay_ctx.0),
                    n.saturating_sub(self.relay_ctx.1),
                )
            }),
            generator_cpu: match (&self.own, &own_end) {
                (Some(a), Some(b)) => Some(CpuUsage::between(a, b)),
                _ => None,
            },
            ksoftirqd_cpu_s: softirqd_end.saturating_sub(self.softirqd_ticks) as f64 / tck,
            other_processes_cpu_s: other as f64 / tck,
            other_processes_top: top.into_iter().map(|(n, t)| (n, t as f64 / tck)).collect(),
            cpu_pressure_percent: match (self.psi_some_us, psi_end, wall_us) {
                (Some(a), Some(b), Some(w)) if w > 0 => {
                    Some(100.0 * b.saturating_sub(a) as f64 / w as f64)
                }
                _ => None,
            },
        }
    }
}

/// `total=` of the "some" line of /proc/pressure/cpu (us), when PSI is available.
fn psi_some_total_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

/// A thread that sleeps in 1 ms steps on an absolute clock and records how late it wakes: a
/// direct reading of scheduling noise on the machine (CPU contention, other tenants, VM
/// steal) during a run, to tell the relay's tail latency from the machine's.
pub struct TimerProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<hdrhistogram::Histogram<u64>>>,
}

impl TimerProbe {
    pub fn start() -> TimerProbe {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("bench-probe".into())
            .spawn(move || {
                crate::clock::tight_timer_slack();
                let mut h = crate::stats::latency_histogram();
                let mut deadline = crate::clock::now_ns();
                // Bounded: at most an hour of 1 ms steps, whatever happens to `stop`.
                for _ in 0..3_600_000u32 {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    deadline += 1_000_000;
                    crate::clock::sleep_until_ns(deadline);
                    let now = crate::clock::now_ns();
                    crate::stats::record(&mut h, now.saturating_sub(deadline));
                    if now > deadline + 1_000_000 {
                        deadline = now; // do not catch up in a burst after a stall
                    }
                }
                h
            })
            .ok();
        TimerProbe { stop, handle }
    }

    /// Stops the thread and summarises its wake-up lateness.
    pub fn finish(mut self) -> Option<crate::stats::LatencySummary> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let h = self.handle.take()?.join().ok()?;
        Some(crate::stats::LatencySummary::of(&h))
    }
}

impl Drop for TimerProbe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
