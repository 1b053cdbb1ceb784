//! The fast path: a packet of a flow whose route this CPU has already cached, in the shape
//! nearly every media packet has (untagged; IPv4 without options or IPv6 without extension
//! headers; UDP whose checksum is absent or complete).
//!
//! It exists because of what the general path in main.rs costs when it is one piece: carrying
//! the VLAN tag, the reason codes and the cold branches (route lookup, payload checksum, the
//! hash fallback) through one function left LLVM short of registers, and about a third of the
//! hot instructions were spills and reloads. Here one bounds check covers the headers, every
//! field is read once through a pointer into the frame, and any doubt ends in `None` before
//! the frame is touched: the general path then handles the packet from scratch, counts why it
//! passes, and refreshes the route cache so the flow's next packet comes back here.

use super::*;

/// The verdict for a packet this path forwarded (and counted), or `None`.
#[inline(always)]
pub fn forward(ctx: &XdpContext) -> Option<u32> {
    let data = ctx.data();
    let end = ctx.data_end();
    // The shortest frame forwarded here: Ethernet, IPv4, UDP.
    if data + ETH_HLEN + IPV4_HLEN + UDP_HLEN > end {
        return None;
    }
    // SAFETY: inside the frame (checked above).
    let ethertype = unsafe { ((data + 12) as *const u16).read_unaligned() };
    if ethertype == ETH_P_IPV4.to_be() {
        forward_ip::<V4>(ctx, data, end)
    } else if ethertype == ETH_P_IPV6.to_be() {
        forward_ip::<V6>(ctx, data, end)
    } else {
        None
    }
}

#[inline(always)]
fn forward_ip<F: Family>(ctx: &XdpContext, data: usize, end: usize) -> Option<u32> {
    let l3 = data + ETH_HLEN;
    let l4 = l3 + F::HLEN;
    if l4 + UDP_HLEN > end {
        return None;
    }
    // SAFETY (every access to the frame below): inside the frame by the check above, or, for
    // the RTP header, by its own check; the program owns the frame; any alignment is allowed
    // (see the crate docs).
    if !unsafe { F::plain_udp(l3) } {
        return None;
    }
    // Header fields are read where they are used, not all up front: each map lookup is a call
    // that leaves only four registers intact, and a field held across one is spilled to the
    // stack and reloaded, where reading it again from the frame (in L1 already) costs one load.
    let port = |at: usize| unsafe { ((l4 + at) as *const u16).read_unaligned() };
    // First for the same reason: one value kept across the other lookups, where a lookup
    // between them would have the flow, its counters and the frame pointers spilled.
    let epoch = route_epoch();
    let slot = SLUICE_PORTS.get(u32::from(u16::from_be(port(2))))?;
    // SAFETY: both maps are arrays of the types read, the indices are map values, and actions
    // are never written while a port entry points at them. An empty port entry is slot 0,
    // never used by a flow and all zero, so it fails the family check below.
    let flow = unsafe { &*lookup_at::<_, FlowAction>(&SLUICE_ACTIONS, slot)? };
    // The flow of this address and port (else it is in the hash), from its latched source
    // (else the general path counts the mismatch).
    if flow.family != F::FAMILY
        || u16::from_ne_bytes(flow.local_port) != port(2)
        || u16::from_ne_bytes(flow.src_port) != port(0)
        || !unsafe { F::is_at(l3 + F::DST, &flow.local) }
        || !unsafe { F::is_at(l3 + F::SRC, &flow.src) }
    {
        return None;
    }
    // SAFETY: as above; this CPU's copy of the slot, which nothing else writes while the program
    // runs here.
    let stats = unsafe { &mut *lookup_at::<_, FlowStats>(&SLUICE_FLOW_STATS, &flow.stats_slot)? };
    let route = &stats.route;
    if route.slot != flow.slot
        || route.epoch != epoch
        || route.tagged != 0
        || route.ingress != ctx.ingress_ifindex() as u32
        || (route.kind != ROUTE_TX && route.kind != ROUTE_REDIRECT)
    {
        return None;
    }
    // Ports, length, checksum: network order as read.
    let udp = unsafe { (l4 as *const [u16; 4]).read_unaligned() };
    let udp_len = u16::from_be(udp[2]);
    if usize::from(udp_len) < UDP_HLEN || l4 + usize::from(udp_len) > end {
        return None;
    }
    let check = complete_checksum::<F>(udp, flow)?;
    let egress = route.ifindex;
    // Two loads and two stores rather than twelve of each (or a call to memcpy).
    let macs = (&raw const route.macs).cast::<u64>();
    let macs = unsafe {
        (
            macs.read_unaligned(),
            macs.add(1).cast::<u32>().read_unaligned(),
        )
    };

    // Decided: rewrite and send.
    unsafe {
        (data as *mut u64).write_unaligned(macs.0);
        ((data + 8) as *mut u32).write_unaligned(macs.1);
        F::rewrite_at(l3, flow);
        (l4 as *mut [u16; 4]).write_unaligned([
            u16::from_ne_bytes(flow.new_src_port),
            u16::from_ne_bytes(flow.new_dst_port),
            udp[2],
            check.to_be(),
        ]);
    }
    let rtp_at = l4 + UDP_HLEN;
    let rtp = if rtp_at + 4 <= end {
        Some(unsafe { (rtp_at as *const [u16; 2]).read_unaligned() })
    } else {
        None
    };
    account(udp_len, rtp, flow, stats);
    let len = (end - data) as u64;
    // Read again rather than carried through the rewrite: one load from a line in use, where
    // a value held across it would be spilled to the stack and back.
    if stats.route.kind == ROUTE_TX {
        count(Stat::Tx, len);
        return Some(xdp_action::XDP_TX);
    }
    Some(match SLUICE_DEVMAP.redirect(egress, 0) {
        Ok(verdict) => {
            count(Stat::Redirect, len);
            verdict
        }
        // As in the general path: a device removed since the route was cached.
        Err(_) => {
            count(Stat::PassNoEgress, len);
            xdp_action::XDP_DROP
        }
    })
}
