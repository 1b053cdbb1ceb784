//! Run reports: a JSON document (`--json FILE`) and a human-readable table.

use std::fmt::Write as _;
use std::process::Command;

use serde::Serialize;

use crate::meter::WindowUsage;
use crate::procstat::CpuUsage;
use crate::scenario::control::ControlResult;
use crate::scenario::flood::FloodResult;
use crate::scenario::steady::SteadyResult;
use crate::stats::LatencySummary;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg_at_start: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease"),
            loadavg_at_start: read("/proc/loadavg"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayInfo {
    /// "spawned" or "connected".
    pub mode: String,
    pub bin: Option<String>,
    pub pid: Option<u32>,
    pub rtpp: String,
    pub config: Option<String>,
    /// `sluice_build_info` labels (version, commit the binary was built from).
    pub build: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub scenario: String,
    pub target: String,
    pub date_utc: String,
    pub git_commit: Option<String>,
    pub command_line: String,
    pub machine: Machine,
    pub relay: RelayInfo,
    pub control: Option<ControlResult>,
    pub steady: Option<SteadyResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodResult>,
    /// The relay's own log lines (warnings and errors), when it was started by the harness.
    pub relay_log_tail: Option<String>,
}

/// `git rev-parse --short HEAD` (+ "-dirty" with local changes), when run inside a checkout.
pub fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut c = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        c.push_str("-dirty");
    }
    Some(c)
}

pub fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn lat_row(out: &mut String, name: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {name:<22} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
}

fn lat_header(out: &mut String, what: &str) {
    let _ = writeln!(
        out,
        "  {what:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
}

fn cpu_line(out: &mut String, who: &str, c: &CpuUsage) {
    let _ = writeln!(
        out,
        "  {who}: {:.2} s CPU in {:.1} s ({:.1}% of a core; user {:.2} s, sys {:.2} s)",
        c.total_s, c.wall_s, c.percent_of_core, c.user_s, c.sys_s
    );
    let mut threads: Vec<_> = c.threads.iter().collect();
    threads.sort_by(|a, b| (b.1.0 + b.1.1).total_cmp(&(a.1.0 + a.1.1)));
    for (name, (u, s)) in threads.into_iter().take(8) {
        let _ = writeln!(out, "      {name:<20} user {u:6.2} s  sys {s:6.2} s");
    }
}

fn usage_lines(out: &mut String, u: &WindowUsage) {
    match &u.relay_cpu {
        Some(c) => cpu_line(out, "relay", c),
        None => out.push_str("  relay: CPU not measured (pid unknown; pass --relay-pid)\n"),
    }
    if let Some(m) = &u.relay_mem {
        let _ = writeln!(
            out,
            "  relay: RSS {} KiB (peak {} KiB), {} threads, {} fds",
            m.rss_kib, m.rss_peak_kib, m.threads, m.fds
        );
    }
    if let Some((v, n)) = u.relay_context_switches {
        let _ = writeln!(
            out,
            "  relay: context switches {v} voluntary, {n} involuntary"
        );
    }
    if let Some(c) = &u.generator_cpu {
        cpu_line(out, "generator", c);
    }
    let _ = writeln!(
        out,
        "  kernel ksoftirqd threads: {:.2} s CPU",
        u.ksoftirqd_cpu_s
    );
    let _ = writeln!(
        out,
        "  other processes: {:.2} s CPU {:?}{}; CPU pressure (some) {}",
        u.other_processes_cpu_s,
        u.other_processes_top,
        if u.other_processes_cpu_s > 0.5 {
            "  <- the machine was not quiet"
        } else {
            ""
        },
        u.cpu_pressure_percent
            .map_or("n/a".into(), |p| format!("{p:.1}%"))
    );
}

fn flood_lines(o: &mut String, f: &FloodResult) {
    let _ = writeln!(
        o,
        "flood: {} calls through {}, batch {}, window {:.1} s: sent {:.0} pps{}, delivered {:.0} pps",
        f.calls,
        f.forwarder,
        f.batch,
        f.window_s,
        f.sent_pps,
        f.rate_requested_pps
            .map_or(String::new(), |r| format!(" (asked {r:.0})")),
        f.delivered_pps
    );
    for d in &f.directions {
        let t = &d.totals;
        let _ = writeln!(
            o,
            "  {:<15} sent {:>10} received {:>10} lost {:>8} ({:.3}%) reordered {} misrouted {} foreign {}",
            d.direction,
            t.sent,
            t.received,
            t.lost,
            100.0 * t.loss_ratio(),
            t.out_of_order,
            t.misrouted,
            t.foreign
        );
    }
    lat_header(o, "one-way latency");
    for d in &f.directions {
        lat_row(o, d.direction, &d.totals.latency);
    }
    let c = &f.cpu;
    let _ = writeln!(
        o,
        "  CPU in window: relay {:.2} s + generator {:.2} s + kernel threads {:.2} s = {:.2} s; \
         {} per delivered packet",
        c.relay_s,
        c.generator_s,
        c.kernel_threads_s,
        c.total_s,
        c.ns_per_delivered_packet
            .map_or("n/a".into(), |n| format!("{n:.0} ns"))
    );
    if let Some(n) = f.relay_userspace_datagrams {
        let _ = writeln!(
            o,
            "  datagrams reaching userspace in the relay's namespace: {n}"
        );
    }
    for p in &f.xdp_programs {
        let _ = writeln!(
            o,
            "  XDP program {} on {}: {} runs, {}",
            p.id,
            p.device,
            p.run.run_cnt,
            p.ns_per_run
                .map_or("no runs".into(), |n| format!("{n:.1} ns per run"))
        );
    }
    let _ = writeln!(
        o,
        "  endpoint receive-buffer drops {}, send errors {}",
        f.endpoint_rcvbuf_errors, f.send_errors
    );
    usage_lines(o, &f.usage);
}

impl Report {
    pub fn human(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "sluice-bench {} against {} ({}), {} UTC, commit {}",
            self.scenario,
            self.target,
            self.relay.rtpp,
            self.date_utc,
            self.git_commit.as_deref().unwrap_or("?")
        );
        if let Some(b) = &self.relay.build {
            let _ = writeln!(o, "relay build: {b}");
        }
        let _ = writeln!(
            o,
            "machine: {} x {}, kernel {}, load at start {}",
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.loadavg_at_start
        );
        if let Some(c) = &self.control {
            let _ = writeln!(
                o,
                "control: {} cycles ok, {} failed, {} abandoned in {:.2} s = {:.0} cycles/s ({:.0} commands/s)",
                c.cycles_ok,
                c.cycles_failed,
                c.abandoned,
                c.elapsed_s,
                c.cycles_per_s,
                c.commands_per_s
            );
            let _ = writeln!(
                o,
                "  retries {}, timeouts {}, stray replies {}, errors {:?}",
                c.retries, c.client.timeouts, c.client.stray_replies, c.errors
            );
            lat_header(&mut o, "latency");
            lat_row(&mut o, "U (offer)", &c.latency.offer);
            lat_row(&mut o, "L (answer)", &c.latency.answer);
            lat_row(&mut o, "D (delete)", &c.latency.delete);
            lat_row(&mut o, "cycle", &c.latency.cycle);
            if let Some(s) = &c.latency.cycle_from_schedule {
                lat_row(&mut o, "cycle from schedule", s);
            }
            if c.slow_cycle_count > 0 {
                let _ = writeln!(
                    o,
                    "  {} cycles slower than 2 ms, in {} bursts (more than 50 ms apart; first 2000 counted)",
                    c.slow_cycle_count, c.slow_cycle_bursts
                );
            }
            if let Some(p) = &c.timer_probe {
                lat_row(&mut o, "1 ms sleeper lateness", p);
            }
            if let Some(d) = c.max_start_delay_us {
                let _ = writeln!(o, "  max start delay behind schedule: {d:.1} us");
            }
            let _ = writeln!(
                o,
                "  client thread CPU: {:.1}% of a core",
                c.client_thread_cpu_percent
            );
            usage_lines(&mut o, &c.usage);
            if let Some(r) = &c.usage.relay_cpu
                && c.cycles_ok > 0
            {
                let _ = writeln!(
                    o,
                    "  relay CPU per cycle: {:.1} us",
                    r.total_s * 1e6 / c.cycles_ok as f64
                );
            }
        }
        if let Some(s) = &self.steady {
            let _ = writeln!(
                o,
                "steady: {}/{} calls up (ramp {:.1} s, setup errors {:?}, retries {}), window {:.1} s",
                s.calls_up,
                s.calls_requested,
                s.ramp_s,
                s.setup_errors,
                s.setup_retries,
                s.window_s
            );
            let _ = writeln!(
                o,
                "  sent {:.0} pps, delivered {:.0} pps (RTP + RTCP, in the window)",
                s.sent_pps, s.delivered_pps
            );
            let _ = writeln!(
                o,
                "  {:<16} {:>10} {:>10} {:>8} {:>9} {:>6} {:>6} {:>7} {:>9} {:>9}",
                "direction",
                "sent",
                "received",
                "lost",
                "loss %",
                "ooo",
                "dups",
                "misrt",
                "rtcp tx",
                "rtcp rx"
            );
            for d in &s.directions {
                let t = &d.totals;
                let _ = writeln!(
                    o,
                    "  {:<16} {:>10} {:>10} {:>8} {:>9.4} {:>6} {:>6} {:>7} {:>9} {:>9}",
                    d.direction,
                    t.sent,
                    t.received,
                    t.lost,
                    d.loss_ratio * 100.0,
                    t.out_of_order,
                    t.duplicates,
                    t.misrouted,
                    t.rtcp_sent,
                    t.rtcp_received
                );
                if t.wrong_source + t.foreign > 0 {
                    let _ = writeln!(
                        o,
                        "    ({} from an unexpected source address, {} without our stamp)",
                        t.wrong_source, t.foreign
                    );
                }
            }
            lat_header(&mut o, "one-way latency");
            for d in &s.directions {
                lat_row(
                    &mut o,
                    &format!("{} (window)", d.direction),
                    &d.window_latency,
                );
            }
            for d in &s.directions {
                lat_row(&mut o, &format!("{} (all)", d.direction), &d.totals.latency);
            }
            lat_row(&mut o, "U during ramp", &s.offer_latency);
            lat_row(&mut o, "L during ramp", &s.answer_latency);
            lat_row(&mut o, "sender wake lateness", &s.sender.wake_lateness);
            if s.sender.skipped_ticks + s.sender.send_errors > 0 {
                let _ = writeln!(
                    o,
                    "  sender: {} ticks skipped, {} send errors",
                    s.sender.skipped_ticks, s.sender.send_errors
                );
            }
            usage_lines(&mut o, &s.usage);
            if let Some(ns) = s.relay_cpu_ns_per_packet {
                let _ = writeln!(o, "  relay CPU per delivered packet: {ns:.0} ns");
            }
            if let Some(ns) = s.generator_cpu_ns_per_packet {
                let _ = writeln!(
                    o,
                    "  generator CPU per delivered packet: {ns:.0} ns (sends + receives)"
                );
            }
            if let (Some(b), Some(a)) = (&s.relay_before, &s.relay_after_teardown) {
                let _ = writeln!(
                    o,
                    "  relay fds: {} before, {} at the end of the window, {} 1 s after teardown; RSS {} -> {} KiB",
                    b.fds,
                    s.usage.relay_mem.as_ref().map_or(0, |m| m.fds),
                    a.fds,
                    b.rss_kib,
                    a.rss_kib
                );
            }
            let _ = writeln!(
                o,
                "  teardown: {:.2} s, errors {:?}",
                s.teardown_s, s.teardown_errors
            );
        }
        if let Some(f) = &self.flood {
            flood_lines(&mut o, f);
        }
        if let Some(t) = &self.relay_log_tail
            && !t.trim().is_empty()
        {
            let _ = writeln!(o, "relay log (tail):\n{t}");
        }
        o
    }
}
