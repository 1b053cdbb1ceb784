//! CPU, memory and fd usage of a process (the relay, or the generator itself) from /proc.

use std::collections::BTreeMap;
use std::fs;
use std::io;

use serde::Serialize;

/// Clock ticks per second for /proc times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime and stime (ticks) and the command name, from a /proc/.../stat line.
pub fn parse_stat(line: &str) -> Option<(String, u64, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = line.get(close + 1..)?.split_ascii_whitespace().collect();
    // After ")": state is field 3, so field n is fields[n - 3]; utime = 14, stime = 15.
    let utime = fields.get(11)?.parse().ok()?;
    let stime = fields.get(12)?.parse().ok()?;
    Some((comm, utime, stime))
}

/// utime + stime + cutime + cstime (ticks) and the command name: a process's own CPU plus that
/// of its children it has reaped (so short-lived compiler processes show up in their parent).
pub fn parse_stat_with_children(line: &str) -> Option<(String, u64)> {
    let close = line.rfind(')')?;
    let (comm, u, s) = parse_stat(line)?;
    let fields: Vec<&str> = line.get(close + 1..)?.split_ascii_whitespace().collect();
    let cu: u64 = fields.get(13)?.parse().ok()?;
    let cs: u64 = fields.get(14)?.parse().ok()?;
    Some((comm, u + s + cu + cs))
}

/// CPU ticks (own + reaped children) of every process, by pid.
pub fn all_process_ticks() -> BTreeMap<u32, (String, u64)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat_with_children(&s)?))
        })
        .collect()
}

/// CPU used by processes other than `exclude` between two [`all_process_ticks`] readings, in
/// ticks, and the biggest consumers. Processes that started in between count in full; ones
/// that ended are not seen (their time usually reappears in their parent's children time).
pub fn other_ticks(
    a: &BTreeMap<u32, (String, u64)>,
    b: &BTreeMap<u32, (String, u64)>,
    exclude: &[u32],
) -> (u64, Vec<(String, u64)>) {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (pid, (comm, t)) in b {
        if exclude.contains(pid) {
            continue;
        }
        let d = t.saturating_sub(a.get(pid).map_or(0, |x| x.1));
        if d > 0 {
            *by_name.entry(comm.clone()).or_default() += d;
        }
    }
    let total = by_name.values().sum();
    let mut top: Vec<(String, u64)> = by_name.into_iter().collect();
    top.sort_by_key(|x| std::cmp::Reverse(x.1));
    top.truncate(5);
    (total, top)
}

/// One reading of a process's CPU times, total and per thread name.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    pub utime: u64,
    pub stime: u64,
    /// Per thread name (threads sharing a name are summed): (utime, stime) in ticks.
    pub threads: BTreeMap<String, (u64, u64)>,
    pub at_ns: u64,
}

/// Reads /proc/PID/stat and /proc/PID/task/*/stat.
pub fn cpu_sample(pid: u32) -> io::Result<CpuSample> {
    let at_ns = crate::clock::now_ns();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, utime, stime) = parse_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))?;
    let mut threads = BTreeMap::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let Ok(s) = fs::read_to_string(entry.path().join("stat")) else {
                continue; // thread exited meanwhile
            };
            if let Some((comm, u, s)) = parse_stat(&s) {
                let e = threads.entry(thread_group(&comm)).or_insert((0, 0));
                e.0 += u;
                e.1 += s;
            }
        }
    }
    Ok(CpuSample {
        utime,
        stime,
        threads,
        at_ns,
    })
}

/// Thread names with a trailing number are grouped ("sluice-dp-0", "sluice-dp-1" ->
/// "sluice-dp-*"), tokio's workers too.
fn thread_group(comm: &str) -> String {
    let trimmed = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < comm.len() && !trimmed.is_empty() {
        format!("{trimmed}*")
    } else {
        comm.to_owned()
    }
}

/// CPU used between two samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUsage {
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub total_s: f64,
    /// total / wall, in percent of one core.
    pub percent_of_core: f64,
    /// Per thread group: (user_s, sys_s).
    ///
    /// Totals are exact (the kernel scales utime + stime to the scheduler's runtime); the
    /// user/system split is sampled at the timer tick and only approximate, badly so for work
    /// that runs in short bursts right after timer wakeups.
    pub threads: BTreeMap<String, (f64, f64)>,
}

impl CpuUsage {
    pub fn between(a: &CpuSample, b: &CpuSample) -> CpuUsage {
        let tck = clk_tck() as f64;
        let user_s = b.utime.saturating_sub(a.utime) as f64 / tck;
        let sys_s = b.stime.saturating_sub(a.stime) as f64 / tck;
        let wall_s = b.at_ns.saturating_sub(a.at_ns) as f64 / 1e9;
        let threads = b
            .threads
            .iter()
            .map(|(name, (u, s))| {
                let (u0, s0) = a.threads.get(name).copied().unwrap_or((0, 0));
                (
                    name.clone(),
                    (
                        u.saturating_sub(u0) as f64 / tck,
                        s.saturating_sub(s0) as f64 / tck,
                    ),
                )
            })
            .filter(|(_, (u, s))| u + s > 0.0)
            .collect();
        CpuUsage {
            wall_s,
            user_s,
            sys_s,
            total_s: user_s + sys_s,
            percent_of_core: if wall_s > 0.0 {
                100.0 * (user_s + sys_s) / wall_s
            } else {
                0.0
            },
            threads,
        }
    }
}

/// Pids of the kernel's softirq threads (`ksoftirqd/N`): softirq work the kernel defers to
/// them (instead of running it in the context of the process that raised it) shows here.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// Pids of kernel threads (kthreadd and its children: ksoftirqd, kworkers, threaded NAPI...).
pub fn kthread_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            pid == 2
                || fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| parent_pid(&s))
                    == Some(2)
        })
        .collect()
}

/// The parent pid (field 4) of a /proc/.../stat line.
pub fn parent_pid(line: &str) -> Option<u32> {
    let close = line.rfind(')')?;
    line.get(close + 1..)?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pids` in ticks (processes that vanished count 0).
pub fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .map(|(_, u, s)| u + s)
        .sum()
}

/// Memory and descriptors of a process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemFd {
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

/// A `Key:   value kB` field of /proc/PID/status.
pub fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_ascii_whitespace().next()?.parse().ok()
    })
}

pub fn mem_fd(pid: u32) -> io::Result<MemFd> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(MemFd {
        rss_kib: status_field(&status, "VmRSS").unwrap_or(0),
        rss_peak_kib: status_field(&status, "VmHWM").unwrap_or(0),
        threads: status_field(&status, "Threads").unwrap_or(0),
        fds,
    })
}

/// Voluntary + involuntary context switches of the whole process (sum over threads).
pub fn context_switches(pid: u32) -> (u64, u64) {
    let mut v = 0;
    let mut n = 0;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            if let Ok(s) = fs::read_to_string(entry.path().join("status")) {
                v += status_field(&s, "voluntary_ctxt_switches").unwrap_or(0);
                n += status_field(&s, "nonvoluntary_ctxt_switches").unwrap_or(0);
            }
        }
    }
    (v, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pids() {
        // A command name with spaces and parentheses must not shift the fields.
        let line = "4242 (napi/ca (ll) 0) S 2 0 0 0 -1 69238880 0 0 0 0 3 7 0 0 20 0 1 0 100";
        assert_eq!(parent_pid(line), Some(2));
        assert_eq!(parent_pid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_pid("garbage"), None);
        assert!(kthread_pids().contains(&2) || !std::path::Path::new("/proc/2").exists());
    }

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 \
                    12345 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let (comm, u, s) = parse_stat(line).unwrap();
        assert_eq!(comm, "my (odd) name");
        assert_eq!((u, s), (250, 75));
    }

    #[test]
    fn other_process_accounting() {
        let line = "9 (cargo) S 1 9 9 0 -1 0 0 0 0 0 10 5 300 100 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_with_children(line), Some(("cargo".into(), 415)));
        let mut a = BTreeMap::new();
        a.insert(1, ("relay".to_string(), 100));
        a.insert(2, ("cargo".to_string(), 50));
        let mut b = a.clone();
        b.insert(1, ("relay".to_string(), 900));
        b.insert(2, ("cargo".to_string(), 80));
        b.insert(3, ("rustc".to_string(), 40));
        let (total, top) = other_ticks(&a, &b, &[1]);
        assert_eq!(total, 70);
        assert_eq!(top[0], ("rustc".to_string(), 40));
        assert!(!all_process_ticks().is_empty());
    }

    #[test]
    fn finds_softirq_threads() {
        let pids = ksoftirqd_pids();
        assert!(!pids.is_empty(), "every Linux system has ksoftirqd/N");
        let _ = ticks_of(&pids);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tsluice\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t5\n";
        assert_eq!(status_field(s, "VmRSS"), Some(10240));
        assert_eq!(status_field(s, "VmHWM"), Some(20480));
        assert_eq!(status_field(s, "Threads"), Some(5));
        assert_eq!(status_field(s, "VmSwap"), None);
    }

    #[test]
    fn groups_numbered_threads() {
        assert_eq!(thread_group("sluice-dp-0"), "sluice-dp-*");
        assert_eq!(thread_group("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(thread_group("123"), "123");
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        let a = cpu_sample(pid).unwrap();
        // Burn a little CPU.
        let mut x = 0u64;
        let until = crate::clock::now_ns() + 30_000_000;
        while crate::clock::now_ns() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = cpu_sample(pid).unwrap();
        let u = CpuUsage::between(&a, &b);
        assert!(u.wall_s > 0.02);
        assert!(!b.threads.is_empty());
        let m = mem_fd(pid).unwrap();
        assert!(m.rss_kib > 0 && m.fds >= 3 && m.threads >= 1);
    }
}
