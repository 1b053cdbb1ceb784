//! Sluice XDP program: forwards the RTP/RTCP of latched streams in the kernel.
//!
//! For every frame: parse Ethernet (one optional 802.1Q tag), IPv4 or IPv6, UDP; look the
//! destination address and port up in the flow table; accept only the flow's latched source;
//! route the rewritten packet with `bpf_fib_lookup`; rewrite addresses, ports, DSCP, TTL, MACs
//! and checksums; send it back out (XDP_TX) or to another device (DEVMAP redirect). Anything it
//! cannot handle goes to the stack (XDP_PASS) untouched, where the userspace path handles it,
//! and is counted by reason in `SLUICE_STATS`.
//!
//! Built for `bpfel-unknown-none` by relay/build.rs. On the host the crate compiles as an
//! ordinary (empty) program so `cargo clippy --workspace` lints and type-checks this code too.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    macros::{map, xdp},
    maps::{DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use sluice_common::{
    Counter, DEFAULT_MAX_FLOWS, FLOW_RTP, FlowAction, FlowKey, FlowStats, MAX_DEVICES, ROUTE_NONE,
    ROUTE_REDIRECT, ROUTE_TTL_NS, ROUTE_TX, ROUTE_TX_VLAN, RouteCache, STAT_SLOTS, Stat, VlanDev,
    csum::{self, fold},
    track_seq,
};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_UDP: u8 = 17;
const IPV6_NEXT_FRAGMENT: u8 = 44;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const RTP_HLEN: usize = 12;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// IPv4 flags/fragment offset bits that mark a fragment: MF and the 13-bit offset.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// A partial checksum (see `csum::looks_partial`) needs the payload summed; the program does it
/// in 64-byte `bpf_csum_diff` chunks plus a tail, up to this many bytes of UDP segment, which
/// covers a 1500-byte MTU. Longer segments with partial checksums are passed.
const CHUNK: usize = 64;
const MAX_CHUNKS: usize = 24;
const MAX_SUMMED: usize = CHUNK * MAX_CHUNKS + CHUNK - 1;

#[map(name = "SLUICE_STATS")]
static SLUICE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Owned by the daemon (plain HASH, not LRU: an entry lives exactly as long as its stream).
#[map(name = "SLUICE_FLOWS")]
static SLUICE_FLOWS: HashMap<FlowKey, FlowAction> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "SLUICE_FLOW_STATS")]
static SLUICE_FLOW_STATS: PerCpuArray<FlowStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "SLUICE_DEVMAP")]
static SLUICE_DEVMAP: DevMapHash = DevMapHash::with_max_entries(MAX_DEVICES, 0);

#[map(name = "SLUICE_VLANS")]
static SLUICE_VLANS: HashMap<u32, VlanDev> = HashMap::with_max_entries(MAX_DEVICES, 0);

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // Every frame lands in exactly one counter; userspace sums them for `Stat::Received`.
    let (stat, verdict) = process(&ctx);
    count(stat, len);
    verdict
}

#[inline(always)]
fn count(stat: Stat, bytes: u64) {
    if let Some(c) = SLUICE_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, so no other writer runs concurrently on this CPU's copy.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
fn pass(stat: Stat) -> (Stat, u32) {
    (stat, xdp_action::XDP_PASS)
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (Stat, u32) {
    let Some(mut ethertype) = read_be16(ctx, 12) else {
        return pass(Stat::PassTruncated);
    };
    let mut l3 = ETH_HLEN;
    let mut vlan: Option<u16> = None;
    if ethertype == ETH_P_8021Q {
        let (Some(tci), Some(inner)) = (read_be16(ctx, ETH_HLEN), read_be16(ctx, ETH_HLEN + 2))
        else {
            return pass(Stat::PassTruncated);
        };
        vlan = Some(tci);
        ethertype = inner;
        l3 += VLAN_HLEN;
    }
    let parsed = match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Err(Stat::PassNotIp),
    };
    let packet = match parsed {
        Ok(p) => p,
        Err(stat) => return pass(stat),
    };
    match forward(ctx, &packet, vlan) {
        Ok(done) => done,
        Err(stat) => pass(stat),
    }
}

/// The header fields forwarding needs, read once.
struct Packet {
    v6: bool,
    l3: usize,
    l4: usize,
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
    udp_len: u16,
    /// IPv4 total length / IPv6 payload length, for the route's MTU check.
    ip_len: u16,
    check: u16,
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize) -> Result<Packet, Stat> {
    let ip = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at checked the 20 bytes against data_end.
    let ip = unsafe { *ip };
    let ihl = ip[0] & 0x0f;
    if ihl < 5 {
        return Err(Stat::PassTruncated);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(Stat::PassNotUdp);
    }
    // Options would move every offset below; a media relay never sees them in practice.
    if ihl > 5 {
        return Err(Stat::PassIpOptions);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT_MASK != 0 {
        return Err(Stat::PassFragment);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip[12..16]);
    dst[..4].copy_from_slice(&ip[16..20]);
    parse_udp(
        ctx,
        l3,
        l3 + IPV4_HLEN,
        false,
        src,
        dst,
        u16::from_be_bytes([ip[2], ip[3]]),
    )
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize) -> Result<Packet, Stat> {
    let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at checked the 40 bytes against data_end.
    let ip = unsafe { &*ip };
    match ip[6] {
        IPPROTO_UDP => {}
        IPV6_NEXT_FRAGMENT => return Err(Stat::PassFragment),
        // Extension headers (hop-by-hop, routing, ...) or another protocol: the stack's job.
        _ => return Err(Stat::PassNotUdp),
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    parse_udp(
        ctx,
        l3,
        l3 + IPV6_HLEN,
        true,
        src,
        dst,
        u16::from_be_bytes([ip[4], ip[5]]),
    )
}

#[inline(always)]
fn parse_udp(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    ip_len: u16,
) -> Result<Packet, Stat> {
    let udp = ptr_at::<[u8; UDP_HLEN]>(ctx, l4).ok_or(Stat::PassTruncated)?;
    // SAFETY: ptr_at checked the 8 bytes against data_end.
    let udp = unsafe { *udp };
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]);
    if usize::from(udp_len) < UDP_HLEN || !in_bounds(ctx, l4, usize::from(udp_len)) {
        return Err(Stat::PassTruncated);
    }
    Ok(Packet {
        v6,
        l3,
        l4,
        src,
        dst,
        ports: [udp[0], udp[1], udp[2], udp[3]],
        udp_len,
        ip_len,
        check: u16::from_be_bytes([udp[6], udp[7]]),
    })
}

enum Egress {
    /// Out of the ingress device; `tci` replaces the frame's 802.1Q TCI when set.
    Tx {
        tci: Option<u16>,
    },
    Redirect(u32),
}

#[inline(always)]
fn forward(ctx: &XdpContext, p: &Packet, vlan: Option<u16>) -> Result<(Stat, u32), Stat> {
    let key = FlowKey {
        addr: p.dst,
        port: [p.ports[2], p.ports[3]],
        family: if p.v6 { 6 } else { 4 },
        _pad: 0,
    };
    // SAFETY: the daemon replaces entries whole (update_elem) and removes a stream's entries
    // before reusing its ports; a read racing an update sends at most one packet by the old rule.
    let Some(flow) = (unsafe { SLUICE_FLOWS.get(key) }) else {
        return Err(Stat::PassNoFlow);
    };
    if flow.src != p.src || flow.src_port != [p.ports[0], p.ports[1]] {
        return Err(Stat::PassSourceMismatch);
    }
    // This CPU's counters and route cache for the flow (always there: the daemon sizes the
    // array with the flow table).
    let stats = SLUICE_FLOW_STATS
        .get_ptr_mut(flow.stats_slot)
        .ok_or(Stat::PassNoFlow)?;
    // SAFETY: this CPU's copy of the slot; nothing else writes it while the program runs here.
    let stats = unsafe { &mut *stats };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (egress, smac, dmac) = route(ctx, p, flow, vlan, &mut stats.route, now)?;
    let new_ports = [
        flow.new_src_port[0],
        flow.new_src_port[1],
        flow.new_dst_port[0],
        flow.new_dst_port[1],
    ];
    let check = udp_checksum(ctx, p, flow, new_ports)?;

    // Everything that can fail has been decided: from here on the frame is rewritten.
    let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or(Stat::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at; XDP owns the frame.
    let eth = unsafe { &mut *eth };
    eth[..6].copy_from_slice(&dmac);
    eth[6..].copy_from_slice(&smac);
    if let Egress::Tx { tci: Some(tci) } = egress {
        let tag = ptr_at::<[u8; 2]>(ctx, ETH_HLEN).ok_or(Stat::PassTruncated)?;
        // SAFETY: bounds checked by ptr_at (the tag was parsed from these bytes).
        unsafe { *tag = tci.to_be_bytes() };
    }
    if p.v6 {
        rewrite_v6(ctx, p.l3, flow)?;
    } else {
        rewrite_v4(ctx, p.l3, flow)?;
    }
    let udp = ptr_at::<[u8; UDP_HLEN]>(ctx, p.l4).ok_or(Stat::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let udp = unsafe { &mut *udp };
    udp[..4].copy_from_slice(&new_ports);
    udp[6..].copy_from_slice(&check.to_be_bytes());
    account(ctx, p, flow, stats, now);
    Ok(match egress {
        Egress::Tx { .. } => (Stat::Tx, xdp_action::XDP_TX),
        Egress::Redirect(ifindex) => match SLUICE_DEVMAP.redirect(ifindex, 0) {
            Ok(verdict) => (Stat::Redirect, verdict),
            // Checked by `route`; a device removed in between drops this one packet.
            Err(_) => (Stat::PassNoEgress, xdp_action::XDP_DROP),
        },
    })
}

/// Next hop and egress device of the rewritten packet, and its MACs: from this CPU's cache
/// while it is fresh and still fits, else from `bpf_fib_lookup` (then cached).
#[inline(always)]
fn route(
    ctx: &XdpContext,
    p: &Packet,
    flow: &FlowAction,
    vlan: Option<u16>,
    cache: &mut RouteCache,
    now: u64,
) -> Result<(Egress, [u8; 6], [u8; 6]), Stat> {
    let ingress = ctx.ingress_ifindex() as u32;
    if cache.kind != ROUTE_NONE
        && now.wrapping_sub(cache.at_ns) < ROUTE_TTL_NS
        && cache.ingress == ingress
        && (cache.tagged != 0) == vlan.is_some()
        && cache.dst == flow.new_dst
    {
        let egress = match (cache.kind, vlan) {
            (ROUTE_TX, None) => Some(Egress::Tx { tci: None }),
            (ROUTE_TX_VLAN, Some(tci)) => Some(Egress::Tx {
                tci: Some((tci & 0xf000) | (cache.vid & 0x0fff)),
            }),
            (ROUTE_REDIRECT, None) => Some(Egress::Redirect(cache.ifindex)),
            // Cannot happen (`tagged` matched); decide afresh rather than guess.
            _ => None,
        };
        if let Some(egress) = egress {
            return Ok((egress, cache.smac, cache.dmac));
        }
    }
    let decided = lookup(ctx, p, flow, vlan, ingress)?;
    let (kind, ifindex, vid) = match decided.0 {
        Egress::Tx { tci: None } => (ROUTE_TX, ingress, 0),
        Egress::Tx { tci: Some(tci) } => (ROUTE_TX_VLAN, ingress, tci & 0x0fff),
        Egress::Redirect(ifindex) => (ROUTE_REDIRECT, ifindex, 0),
    };
    *cache = RouteCache {
        at_ns: now,
        dst: flow.new_dst,
        ingress,
        ifindex,
        smac: decided.1,
        dmac: decided.2,
        vid,
        kind,
        tagged: u8::from(vlan.is_some()),
    };
    Ok(decided)
}

/// [`route`] without the cache: `bpf_fib_lookup` and the device checks.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    p: &Packet,
    flow: &FlowAction,
    vlan: Option<u16>,
    ingress: u32,
) -> Result<(Egress, [u8; 6], [u8; 6]), Stat> {
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = u16::from_ne_bytes(flow.new_src_port);
    fib.dport = u16::from_ne_bytes(flow.new_dst_port);
    fib.ifindex = ingress;
    if p.v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = p.ip_len + IPV6_HLEN as u16;
        fib.__bindgen_anon_3.ipv6_src = words(&flow.new_src);
        fib.__bindgen_anon_4.ipv6_dst = words(&flow.new_dst);
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = p.ip_len;
        fib.__bindgen_anon_2.tos = flow.tos;
        fib.__bindgen_anon_3.ipv4_src = words(&flow.new_src)[0];
        fib.__bindgen_anon_4.ipv4_dst = words(&flow.new_dst)[0];
    }
    // SAFETY: fib is a valid, fully initialised parameter block of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
            Stat::PassNoNeigh
        } else {
            Stat::PassFibFailed
        });
    }
    let egress = if fib.ifindex == ingress {
        if vlan.is_some() {
            // Untagged egress from a tagged ingress: the tag would have to go.
            return Err(Stat::PassVlan);
        }
        Egress::Tx { tci: None }
    } else if let Some(dev) = unsafe { SLUICE_VLANS.get(fib.ifindex) } {
        // SAFETY (get above): VlanDev is plain data, read once.
        match vlan {
            Some(tci) if dev.parent == ingress => Egress::Tx {
                // Keep the priority bits, change the VLAN id.
                tci: Some((tci & 0xf000) | (dev.vid & 0x0fff)),
            },
            _ => return Err(Stat::PassVlan),
        }
    } else if vlan.is_some() {
        return Err(Stat::PassVlan);
    } else if SLUICE_DEVMAP.get(fib.ifindex).is_some() {
        Egress::Redirect(fib.ifindex)
    } else {
        return Err(Stat::PassNoEgress);
    };
    Ok((egress, fib.smac, fib.dmac))
}

/// The new UDP checksum. IPv4 zero stays zero (no checksum); a complete checksum is updated
/// incrementally over the rewritten addresses and ports (RFC 1624); a partial one (TX offload
/// on the sender's veth, see `csum::looks_partial`) or an invalid IPv6 zero is recomputed over
/// the whole segment.
#[inline(always)]
fn udp_checksum(
    ctx: &XdpContext,
    p: &Packet,
    flow: &FlowAction,
    new_ports: [u8; 4],
) -> Result<u16, Stat> {
    if p.check == 0 && !p.v6 {
        return Ok(0);
    }
    let (old_pseudo, new_pseudo) = if p.v6 {
        (
            csum::pseudo_v6(&p.src, &p.dst, IPPROTO_UDP, p.udp_len),
            csum::pseudo_v6(&flow.new_src, &flow.new_dst, IPPROTO_UDP, p.udp_len),
        )
    } else {
        (
            csum::pseudo_v4(v4(&p.src), v4(&p.dst), IPPROTO_UDP, p.udp_len),
            csum::pseudo_v4(v4(&flow.new_src), v4(&flow.new_dst), IPPROTO_UDP, p.udp_len),
        )
    };
    if p.check == 0 || csum::looks_partial(p.check, old_pseudo) {
        if usize::from(p.udp_len) > MAX_SUMMED {
            return Err(Stat::PassChecksum);
        }
        let segment = sum_segment(ctx, p.l4, usize::from(p.udp_len)).ok_or(Stat::PassChecksum)?;
        // The segment as it is: old ports, and the old check field, which the sum must not
        // include.
        let sum = segment + u64::from(!p.check);
        let sum = csum::add32(csum::sub32(sum, p.ports), new_ports) + new_pseudo;
        return Ok(csum::udp_wire(csum::finish(sum)));
    }
    // The old addresses and ports are the flow's key and latched source (just matched), so the
    // daemon summed their change once per flow.
    let sum = csum::reopen(p.check) + u64::from(flow.csum_delta);
    Ok(csum::udp_wire(csum::finish(sum)))
}

/// RFC 1071 sum of `len` bytes of the frame from `start`, as big-endian words.
#[inline(always)]
fn sum_segment(ctx: &XdpContext, start: usize, len: usize) -> Option<u64> {
    let mut seed: u32 = 0;
    let mut off = 0usize;
    for _ in 0..MAX_CHUNKS {
        if off + CHUNK > len {
            break;
        }
        let chunk = ptr_at::<[u8; CHUNK]>(ctx, start + off)?;
        // SAFETY: the 64 bytes are inside the frame (ptr_at); `from` is empty.
        let r =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, chunk.cast(), CHUNK as u32, seed) };
        if r < 0 {
            return None;
        }
        seed = r as u32;
        off += CHUNK;
    }
    // bpf_csum_diff sums native (little-endian) words; the folded sum of byte-swapped words is
    // the byte-swapped folded sum (RFC 1071 2(B)).
    let mut sum = u64::from(fold(u64::from(seed)).swap_bytes());
    for _ in 0..CHUNK / 2 {
        if off + 2 > len {
            break;
        }
        sum += u64::from(read_be16(ctx, start + off)?);
        off += 2;
    }
    if off < len {
        sum += u64::from(read_u8(ctx, start + off)?) << 8;
    }
    Some(sum)
}

#[inline(always)]
fn rewrite_v4(ctx: &XdpContext, l3: usize, flow: &FlowAction) -> Result<(), Stat> {
    let ip = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3).ok_or(Stat::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at; XDP owns the frame.
    let h = unsafe { &mut *ip };
    h[1] = (flow.tos & 0xfc) | (h[1] & 0x03);
    h[8] = flow.ttl;
    h[12..16].copy_from_slice(&flow.new_src[..4]);
    h[16..20].copy_from_slice(&flow.new_dst[..4]);
    h[10] = 0;
    h[11] = 0;
    // With options excluded the header is 20 bytes; summing its ten words is cheaper than an
    // incremental update of the six that changed, and cannot carry an old error forward.
    let mut sum = 0u64;
    for i in 0..IPV4_HLEN / 2 {
        sum += u64::from(u16::from_be_bytes([h[2 * i], h[2 * i + 1]]));
    }
    let check = csum::finish(sum).to_be_bytes();
    h[10] = check[0];
    h[11] = check[1];
    Ok(())
}

#[inline(always)]
fn rewrite_v6(ctx: &XdpContext, l3: usize, flow: &FlowAction) -> Result<(), Stat> {
    let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3).ok_or(Stat::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at; XDP owns the frame.
    let h = unsafe { &mut *ip };
    // Traffic class straddles bytes 0 and 1: DSCP from the flow, ECN from the packet.
    let ecn = (h[1] >> 4) & 0x03;
    let tclass = (flow.tos & 0xfc) | ecn;
    h[0] = 0x60 | (tclass >> 4);
    h[1] = (tclass << 4) | (h[1] & 0x0f);
    h[7] = flow.ttl;
    h[8..24].copy_from_slice(&flow.new_src);
    h[24..40].copy_from_slice(&flow.new_dst);
    Ok(())
}

/// Per-flow, per-CPU counters for statistics and the daemon's media timeout.
#[inline(always)]
fn account(ctx: &XdpContext, p: &Packet, flow: &FlowAction, stats: &mut FlowStats, now: u64) {
    stats.packets += 1;
    stats.bytes += u64::from(p.udp_len) - UDP_HLEN as u64;
    stats.last_seen_ns = now;
    if flow.flags & FLOW_RTP != 0 && usize::from(p.udp_len) >= UDP_HLEN + RTP_HLEN {
        let rtp = p.l4 + UDP_HLEN;
        if let (Some(b0), Some(seq)) = (read_u8(ctx, rtp), read_be16(ctx, rtp + 2))
            && b0 >> 6 == 2
        {
            track_seq(stats, seq);
        }
    }
}

#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// An address as the u32 words bpf_fib_lookup takes (network order in memory).
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The verifier only accepts packet accesses it can prove lie before `data_end`; every access
/// goes through a pointer from here.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if !in_bounds(ctx, offset, core::mem::size_of::<T>()) {
        return None;
    }
    Some((ctx.data() + offset) as *mut T)
}

#[inline(always)]
fn in_bounds(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    // SAFETY: bounds checked by ptr_at.
    ptr_at::<u8>(ctx, offset).map(|p| unsafe { *p })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: bounds checked by ptr_at; [u8; 2] has alignment 1.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { *p }))
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible so the program may call GPL-only helpers (bpf_fib_lookup, redirects).
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
