//! Flow table entries: one per forwarded direction and component (RTP or RTCP), four per
//! stream once both legs are latched.
//!
//! The program finds a flow with two array lookups, which the verifier inlines, instead of a
//! hash lookup: [`PORTS_MAP`] maps the destination port to the flow's [`FlowAction`] slot. A
//! port belongs to one local address in the common case; when several local addresses use the
//! same port, [`PORTS_MAP`] points at one of them and [`FLOWS_MAP`] holds the others.

/// Array of `u32` indexed by UDP destination port (host order): the [`ACTIONS_MAP`] slot of a
/// flow on the port, or [`NO_FLOW_SLOT`].
pub const PORTS_MAP: &str = "SLUICE_PORTS";
/// The [`ACTIONS_MAP`] slot no flow ever uses: an empty lookup entry (0) points at it, and its
/// action stays all zero, which matches no packet (family 0). The program can then use an
/// entry as the action's index where it stands, without first testing it.
pub const NO_FLOW_SLOT: u32 = 0;
/// Entries of [`PORTS_MAP`]: one per port.
pub const PORT_SLOTS: u32 = 65_536;
/// Array of [`FlowAction`]. The daemon never rewrites the slot a flow is using: a changed flow
/// gets a fresh slot, then its port entry is pointed at it, so the program never reads half an
/// update. Sized at twice the flow capacity (plus [`NO_FLOW_SLOT`]); freed slots are reused
/// oldest first.
pub const ACTIONS_MAP: &str = "SLUICE_ACTIONS";
/// Hash of [`FlowKey`] to the [`ACTIONS_MAP`] slot, for the flows whose port [`PORTS_MAP`]
/// gives to another local address.
pub const FLOWS_MAP: &str = "SLUICE_FLOWS";
/// Per-CPU array of [`FlowStats`], indexed by [`FlowAction::stats_slot`].
pub const FLOW_STATS_MAP: &str = "SLUICE_FLOW_STATS";
/// Array of one `u64`: the route epoch. A CPU's cached route for a flow is valid while the
/// epoch it was decided in is current; the daemon advances it every poll (about a second), so
/// a route or neighbour change reaches the fast path within that time.
pub const EPOCH_MAP: &str = "SLUICE_EPOCH";
/// DEVMAP_HASH of the devices the program may redirect to (key and value: ifindex).
pub const DEVMAP: &str = "SLUICE_DEVMAP";
/// Hash of 802.1Q devices (key: the VLAN device's ifindex, value [`VlanDev`]).
pub const VLANS_MAP: &str = "SLUICE_VLANS";

/// Flow capacity compiled into the object; the daemon resizes the flow, action and statistics
/// maps at load time (`xdp.max_flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Devices the program can redirect to.
pub const MAX_DEVICES: u32 = 64;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// [`FlowAction::flags`]: the flow carries RTP, so sequence numbers are tracked.
pub const FLOW_RTP: u8 = 1;

/// An address and port the relay receives on (the packet's destination). IPv4 uses the first
/// four bytes of `addr`, the rest stays zero. Bytes are in network order, as on the wire.
/// Aligned to 8 so the program's copy on its stack is: the program is built allowing
/// misaligned loads, which the verifier accepts for packets and maps but not for the stack.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub family: u8,
    pub _pad: [u8; 5],
}

impl FlowKey {
    pub const fn v4(addr: [u8; 4], port: u16) -> FlowKey {
        FlowKey {
            addr: v4_padded(addr),
            port: port.to_be_bytes(),
            family: FAMILY_V4,
            _pad: [0; 5],
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16) -> FlowKey {
        FlowKey {
            addr,
            port: port.to_be_bytes(),
            family: FAMILY_V6,
            _pad: [0; 5],
        }
    }

    /// The destination port, host order: the [`PORTS_MAP`] index.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// An IPv4 address in the 16-byte layout of [`FlowKey`] and [`FlowAction`].
pub const fn v4_padded(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// What to do with a packet of a flow: accept it only from `src`, then send it from `new_src`
/// to `new_dst`. All addresses share `family` (IPv4/IPv6 bridging stays in userspace).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowAction {
    /// The relay's address the flow arrives on (its key's address): a [`PORTS_MAP`] hit is
    /// this flow only when the packet is addressed to it.
    pub local: [u8; 16],
    /// The latched remote address of the ingress leg.
    pub src: [u8; 16],
    /// The relay's address of the egress leg.
    pub new_src: [u8; 16],
    /// The latched remote address of the egress leg.
    pub new_dst: [u8; 16],
    pub src_port: [u8; 2],
    pub new_src_port: [u8; 2],
    pub new_dst_port: [u8; 2],
    pub family: u8,
    /// DSCP in the upper six bits (the ECN bits of the packet are kept).
    pub tos: u8,
    /// TTL / hop limit of the packet as the relay sends it.
    pub ttl: u8,
    pub flags: u8,
    /// One's-complement sum of what the rewrite changes in the UDP checksum (old addresses and
    /// ports out, new ones in; see [`crate::csum::rewrite_delta`]), fixed per flow, so the
    /// program's incremental update is one addition per packet.
    pub csum_delta: u16,
    /// Folded pseudo-header sums without the length (addresses and protocol) before and after
    /// the rewrite, also fixed per flow: a partial checksum is recognised by the first and
    /// recomputed with the second.
    pub old_pseudo: u16,
    pub new_pseudo: u16,
    /// Index into [`FLOW_STATS_MAP`].
    pub stats_slot: u32,
    /// The [`ACTIONS_MAP`] slot this action is written in (the daemon sets it as it writes
    /// the action), which a route cache is checked against: the program may read a port entry
    /// twice, and the daemon may repoint it in between, where this comes with the action used.
    pub slot: u32,
    /// The port of the flow's key, checked with `local` on every lookup: a port entry read
    /// while the daemon rewrites it can only ever lead to this flow or to no flow.
    pub local_port: [u8; 2],
    pub _pad: [u8; 6],
}

/// Per-flow counters; each CPU has its own copy, userspace merges them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    /// UDP payload bytes (the unit the userspace path counts).
    pub bytes: u64,
    /// RTP packets (version 2, at least a fixed header) this CPU forwarded.
    pub rtp_received: u64,
    /// First and highest extended sequence number (cycles << 16 | seq) this CPU saw; the cycle
    /// count is this CPU's own, userspace aligns CPUs (see the daemon's `merge_rtp`).
    pub rtp_base_seq: u32,
    pub rtp_max_seq: u32,
    /// This CPU's routing decision for the flow, reused during one route epoch (see
    /// [`EPOCH_MAP`]) instead of a `bpf_fib_lookup` per packet. Valid while `kind !=
    /// ROUTE_NONE`, the epoch is current, the packet arrived on `ingress` with the same tagging,
    /// and the flow still uses the action in `slot`: any change of a flow (a relatch moves its
    /// destination) gets a fresh action slot, so the slot stands for the destination.
    pub route: RouteCache,
}

/// [`RouteCache::kind`]: nothing cached.
pub const ROUTE_NONE: u8 = 0;
/// Send back out of the ingress device (XDP_TX).
pub const ROUTE_TX: u8 = 1;
/// XDP_TX with the 802.1Q id rewritten to `vid`.
pub const ROUTE_TX_VLAN: u8 = 2;
/// Redirect to `ifindex` through the device map.
pub const ROUTE_REDIRECT: u8 = 3;

/// 32 bytes, so [`FlowStats`] (the counters and this) is one 64-byte line's worth: the program
/// touches all of it for every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCache {
    /// The route epoch it was decided in (its low 32 bits: only equality matters).
    pub epoch: u32,
    /// The [`ACTIONS_MAP`] slot of the flow's action it was decided for. A slot returns to a
    /// flow only after every other free slot has been used (oldest free first, twice the flow
    /// capacity), far longer than the route epoch lives.
    pub slot: u32,
    pub ingress: u32,
    pub ifindex: u32,
    /// The frame's new Ethernet addresses as they go into it: destination, then source.
    pub macs: [[u8; 6]; 2],
    pub vid: u16,
    pub kind: u8,
    /// 1 when the ingress frame carried an 802.1Q tag.
    pub tagged: u8,
}

/// An 802.1Q device: frames the program sends out of `parent` carry tag `vid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VlanDev {
    pub parent: u32,
    pub vid: u16,
    pub _pad: u16,
}

/// Advances a CPU's sequence state by one RTP packet (RFC 3550 A.1 without the probation:
/// reordered or repeated packets never move the maximum back).
#[inline(always)]
pub fn track_seq(stats: &mut FlowStats, seq: u16) {
    if stats.rtp_received == 0 {
        stats.rtp_base_seq = seq as u32;
        stats.rtp_max_seq = seq as u32;
    } else {
        let max_low = stats.rtp_max_seq as u16;
        let ahead = seq.wrapping_sub(max_low);
        if ahead != 0 && ahead < 0x8000 {
            let mut ext = (stats.rtp_max_seq & !0xffff) | seq as u32;
            if seq < max_low {
                ext = ext.wrapping_add(0x1_0000);
            }
            stats.rtp_max_seq = ext;
        }
    }
    stats.rtp_received += 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), only integer fields and byte arrays, explicit padding fields, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::RouteCache {}
    unsafe impl aya::Pod for super::FlowAction {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::VlanDev {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 24);
        assert_eq!(core::mem::size_of::<FlowAction>(), 96);
        assert_eq!(core::mem::size_of::<RouteCache>(), 32);
        assert_eq!(core::mem::size_of::<FlowStats>(), 64);
        assert_eq!(core::mem::size_of::<VlanDev>(), 8);
    }

    #[test]
    fn sequence_tracking_extends_across_wraps_and_ignores_reordering() {
        let mut s = FlowStats::default();
        for seq in [65_530u16, 65_533, 65_531, 2, 1, 5] {
            track_seq(&mut s, seq);
        }
        assert_eq!(s.rtp_base_seq, 65_530);
        assert_eq!(s.rtp_max_seq, 0x1_0005);
        assert_eq!(s.rtp_received, 6);
        // A packet from far behind does not move the maximum.
        track_seq(&mut s, 40_000);
        assert_eq!(s.rtp_max_seq, 0x1_0005);
    }
}
