//! Map keys and values shared by the XDP program (`sluice-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel copies these bytes between the program
//! and userspace, so a layout change is a map format change for both sides.
#![no_std]

pub mod csum;
pub mod flow;

pub use flow::*;

/// Name of the XDP program inside the embedded object.
pub const XDP_PROGRAM: &str = "sluice_xdp";

/// Programs of the auxiliary object (`sluice-aux`): XDP_PASS everything, for the far end of a
/// veth pair so frames sent there with XDP_TX/redirect are received instead of dropped.
pub const PASS_PROGRAM: &str = "sluice_pass";
/// ... and the minimal XDP_TX reflector: the per-packet floor any XDP forwarder is measured
/// against (swaps MACs, IP addresses and UDP ports, so a UDP packet returns to its sender).
pub const REFLECT_PROGRAM: &str = "sluice_reflect";
/// ... and the same turn-around sent with a DEVMAP redirect to the ingress device: the floor for
/// a forwarder that redirects (the fast path, when a flow leaves through another device).
pub const REFLECT_REDIRECT_PROGRAM: &str = "sluice_reflect_redirect";
/// The reflect-redirect program's DEVMAP_HASH (key and value: ifindex).
pub const AUX_DEVMAP: &str = "SLUICE_AUX_DEVMAP";

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
    /// Every frame the program ran on. Not counted by the program (each frame is counted once,
    /// under its verdict): the daemon reports the sum of the others here.
    Received = 0,
    /// Passed: frame shorter than the headers it claims.
    PassTruncated = 1,
    /// Passed: not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 2,
    /// Passed: IP but not UDP.
    PassNotUdp = 3,
    /// Passed: UDP, but no flow is installed for its destination.
    PassNoFlow = 4,
    /// Passed: a flow exists but the source is not its latched remote (an RTP Bleed attempt,
    /// or a NAT rebinding userspace may relatch to).
    PassSourceMismatch = 5,
    /// Passed: an IPv4 fragment or an IPv6 fragment header.
    PassFragment = 6,
    /// Passed: IPv4 header with options.
    PassIpOptions = 7,
    /// Passed: the next hop's MAC is not resolved yet (the stack sends it and resolves it).
    PassNoNeigh = 8,
    /// Passed: the route lookup failed (no route, forwarding disabled, MTU, unreachable).
    PassFibFailed = 9,
    /// Passed: the egress device is not one the program can redirect to.
    PassNoEgress = 10,
    /// Passed: the egress needs an 802.1Q tag added, removed or on another parent device.
    PassVlan = 11,
    /// Passed: a partial checksum over a payload longer than the program sums.
    PassChecksum = 12,
    /// Forwarded out of the device it arrived on (XDP_TX).
    Tx = 13,
    /// Forwarded through the device map to another device (XDP_REDIRECT).
    Redirect = 14,
}

impl Stat {
    pub const ALL: [Stat; 15] = [
        Stat::Received,
        Stat::PassTruncated,
        Stat::PassNotIp,
        Stat::PassNotUdp,
        Stat::PassNoFlow,
        Stat::PassSourceMismatch,
        Stat::PassFragment,
        Stat::PassIpOptions,
        Stat::PassNoNeigh,
        Stat::PassFibFailed,
        Stat::PassNoEgress,
        Stat::PassVlan,
        Stat::PassChecksum,
        Stat::Tx,
        Stat::Redirect,
    ];

    /// Stable label value for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Received => "received",
            Stat::PassTruncated => "pass_truncated",
            Stat::PassNotIp => "pass_not_ip",
            Stat::PassNotUdp => "pass_not_udp",
            Stat::PassNoFlow => "pass_no_flow",
            Stat::PassSourceMismatch => "pass_source_mismatch",
            Stat::PassFragment => "pass_fragment",
            Stat::PassIpOptions => "pass_ip_options",
            Stat::PassNoNeigh => "pass_no_neigh",
            Stat::PassFibFailed => "pass_fib_failed",
            Stat::PassNoEgress => "pass_no_egress",
            Stat::PassVlan => "pass_vlan",
            Stat::PassChecksum => "pass_checksum",
            Stat::Tx => "tx",
            Stat::Redirect => "redirect",
        }
    }
}
