//! Map keys and values shared by the XDP program (`sluice-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel copies these bytes between the program
//! and userspace, so a layout change is a map format change for both sides.
#![no_std]

/// Name of the XDP program inside the embedded object.
pub const XDP_PROGRAM: &str = "sluice_xdp";

/// Name of the global per-CPU verdict/reason counter array.
pub const STATS_MAP: &str = "SLUICE_STATS";

/// Slots in [`STATS_MAP`]. Larger than [`Stat::ALL`] so new reasons do not change the map
/// definition (a pinned map from an older daemon stays loadable).
pub const STAT_SLOTS: u32 = 32;

/// One packet/byte counter. In a per-CPU map each CPU has its own copy; userspace sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    /// Sum of per-CPU copies; wrapping because a u64 of bytes outlives any process anyway.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a Counter>) -> Counter {
        values
            .into_iter()
            .fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets.wrapping_add(c.packets),
                bytes: acc.bytes.wrapping_add(c.bytes),
            })
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64 fields, no padding, every bit pattern valid.
unsafe impl aya::Pod for Counter {}

/// Index into [`STATS_MAP`]: what the program saw and why it decided what it did.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Every frame the program ran on.
    Received = 0,
    /// Passed: frame shorter than the headers it claims.
    PassTruncated = 1,
    /// Passed: not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 2,
    /// Passed: IP but not UDP.
    PassNotUdp = 3,
    /// Passed: UDP, but no flow is installed for its destination.
    PassNoFlow = 4,
}

impl Stat {
    pub const ALL: [Stat; 5] = [
        Stat::Received,
        Stat::PassTruncated,
        Stat::PassNotIp,
        Stat::PassNotUdp,
        Stat::PassNoFlow,
    ];

    /// Stable label value for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Received => "received",
            Stat::PassTruncated => "pass_truncated",
            Stat::PassNotIp => "pass_not_ip",
            Stat::PassNotUdp => "pass_not_udp",
            Stat::PassNoFlow => "pass_no_flow",
        }
    }
}
