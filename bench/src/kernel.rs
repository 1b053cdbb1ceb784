//! Kernel-side readings for a run: XDP program run time and count (BPF stats), the program
//! attached to a device, and a namespace's UDP counters.

use std::os::fd::OwnedFd;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot enable BPF run-time statistics (needs root and Linux >= 5.8): {0}")]
    Stats(String),
    #[error("`ip {args}` failed: {detail}")]
    Ip { args: String, detail: String },
    #[error("no XDP program attached to {dev} in {ns}")]
    NoProgram { ns: String, dev: String },
    #[error("BPF program {0} is not loaded")]
    Gone(u32),
    #[error("listing BPF programs: {0}")]
    List(String),
}

/// Keeps `run_time_ns`/`run_cnt` accounting on while it lives (BPF_ENABLE_STATS; the kernel
/// turns it off again when the last holder closes its fd, unlike the sysctl, which a crashed
/// run would leave on and slow every program on the machine).
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats, KernelError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(|fd| BpfStats { _fd: fd })
            .map_err(|e| KernelError::Stats(e.to_string()))
    }
}

/// Cumulative run time and count of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgRun {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgRun {
    /// The program's counters now.
    pub fn read(id: u32) -> Result<ProgRun, KernelError> {
        for info in aya::programs::loaded_programs() {
            let info = info.map_err(|e| KernelError::List(e.to_string()))?;
            if info.id() == id {
                return Ok(ProgRun {
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_cnt: info.run_count(),
                });
            }
        }
        Err(KernelError::Gone(id))
    }

    /// What ran between `self` (earlier) and `later`.
    pub fn delta(&self, later: &ProgRun) -> ProgRun {
        ProgRun {
            run_time_ns: later.run_time_ns.saturating_sub(self.run_time_ns),
            run_cnt: later.run_cnt.saturating_sub(self.run_cnt),
        }
    }

    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// Id of the XDP program attached to `dev` in namespace `ns` (from `ip -d -j link show`).
pub fn xdp_prog_id(ns: &str, dev: &str) -> Result<u32, KernelError> {
    let args = ["-n", ns, "-d", "-j", "link", "show", "dev", dev];
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| KernelError::Ip {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(KernelError::Ip {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    parse_xdp_prog_id(&String::from_utf8_lossy(&out.stdout)).ok_or(KernelError::NoProgram {
        ns: ns.to_owned(),
        dev: dev.to_owned(),
    })
}

/// The `xdp.prog.id` (single program) or first `xdp.attached[].prog.id` of `ip -j link` output.
pub fn parse_xdp_prog_id(json: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let xdp = v.get(0)?.get("xdp")?;
    let prog = xdp
        .get("prog")
        .or_else(|| xdp.get("attached")?.get(0)?.get("prog"))?;
    u32::try_from(prog.get("id")?.as_u64()?).ok()
}

/// `Udp:` counters of the calling thread's network namespace (/proc/thread-self: /proc/self
/// would show the namespace of the process's main thread).
pub fn udp_snmp() -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    parse_udp_snmp(&text)
}

pub fn parse_udp_snmp(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Default::default();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_id_from_ip_link_json() {
        // Recorded from `ip -d -j link show dev caller` (iproute2 6.1) with native XDP.
        let native = r#"[{"ifindex":3,"ifname":"caller","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"xdp":{"mode":1,"prog":{"id":412,"name":"sluice_xdp","tag":"3b185187f1855c4c","jited":1}},"qdisc":"noqueue"}]"#;
        assert_eq!(parse_xdp_prog_id(native), Some(412));
        let multi =
            r#"[{"ifname":"eth0","xdp":{"mode":4,"attached":[{"mode":1,"prog":{"id":7}}]}}]"#;
        assert_eq!(parse_xdp_prog_id(multi), Some(7));
        assert_eq!(parse_xdp_prog_id(r#"[{"ifname":"lo"}]"#), None);
        assert_eq!(parse_xdp_prog_id("not json"), None);
    }

    #[test]
    fn udp_counters() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\nUdp: 10 2 3 40 5 0 0 0 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        let c = parse_udp_snmp(text);
        assert_eq!(c["InDatagrams"], 10);
        assert_eq!(c["RcvbufErrors"], 5);
        assert_eq!(c.len(), 9);
        assert!(parse_udp_snmp("").is_empty());
    }

    #[test]
    fn run_deltas() {
        let a = ProgRun {
            run_time_ns: 1000,
            run_cnt: 10,
        };
        let b = ProgRun {
            run_time_ns: 5000,
            run_cnt: 50,
        };
        assert_eq!(a.delta(&b).ns_per_run(), Some(100.0));
        assert_eq!(ProgRun::default().ns_per_run(), None);
    }
}
