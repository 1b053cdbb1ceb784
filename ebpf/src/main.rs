//! Sluice XDP program: forwards the RTP/RTCP of latched streams in the kernel.
//!
//! For every frame: parse Ethernet (one optional 802.1Q tag), IPv4 or IPv6, UDP; find the flow
//! of the destination address and port; accept only the flow's latched source; route the
//! rewritten packet (this CPU's cached `bpf_fib_lookup` result); rewrite addresses, ports, DSCP,
//! TTL, MACs and checksums; send it back out (XDP_TX) or to another device (DEVMAP redirect).
//! Anything it cannot handle goes to the stack (XDP_PASS) untouched, where the userspace path
//! handles it, and is counted by reason in `SLUICE_STATS`.
//!
//! Plain packets of flows whose route this CPU has cached take the fast path (`fast.rs`); this
//! file is the general path, which handles everything else and refreshes the route cache.
//!
//! Every packet costs: two inlined array lookups for the flow (a hash lookup only when two
//! local addresses share the port), one per-CPU slot for the flow's counters and route, one
//! for the verdict counter, and no helper call except the redirect. The object is built with
//! LLVM's `allows-misaligned-mem-access` (ebpf/build.rs), so header fields are read and written
//! in 2/4/8-byte accesses instead of byte by byte; the verifier accepts misaligned packet and
//! map accesses on architectures with efficient unaligned access (x86-64, arm64), and the
//! structs the program keeps on its stack are 8-aligned, where it does not.
//!
//! Built for `bpfel-unknown-none` by relay/build.rs. On the host the crate compiles as an
//! ordinary (empty) program so `cargo clippy --workspace` lints and type-checks this code too.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup},
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use sluice_common::{
    Counter, DEFAULT_MAX_FLOWS, FAMILY_V4, FAMILY_V6, FLOW_RTP, FlowAction, FlowKey, FlowStats,
    MAX_DEVICES, NO_FLOW_SLOT, PORT_SLOTS, ROUTE_NONE, ROUTE_REDIRECT, ROUTE_TX, ROUTE_TX_VLAN,
    RouteCache, STAT_SLOTS, Stat, VlanDev,
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

/// The maps below are owned by the daemon (see sluice_common::flow for how they fit together).
#[map(name = "SLUICE_PORTS")]
static SLUICE_PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

#[map(name = "SLUICE_ACTIONS")]
static SLUICE_ACTIONS: Array<FlowAction> = Array::with_max_entries(2 * DEFAULT_MAX_FLOWS + 1, 0);

/// Plain HASH, not LRU: an entry lives exactly as long as its flow.
#[map(name = "SLUICE_FLOWS")]
static SLUICE_FLOWS: HashMap<FlowKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "SLUICE_FLOW_STATS")]
static SLUICE_FLOW_STATS: PerCpuArray<FlowStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "SLUICE_EPOCH")]
static SLUICE_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "SLUICE_DEVMAP")]
static SLUICE_DEVMAP: DevMapHash = DevMapHash::with_max_entries(MAX_DEVICES, 0);

#[map(name = "SLUICE_VLANS")]
static SLUICE_VLANS: HashMap<u32, VlanDev> = HashMap::with_max_entries(MAX_DEVICES, 0);

mod fast;

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    if let Some(verdict) = fast::forward(&ctx) {
        return verdict;
    }
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
fn process(ctx: &XdpContext) -> (Stat, u32) {
    let result = match ethernet(ctx) {
        Ok((l3, vlan, true)) => forward::<V6>(ctx, l3, vlan),
        Ok((l3, vlan, false)) => forward::<V4>(ctx, l3, vlan),
        Err(stat) => Err(stat),
    };
    match result {
        Ok(done) => done,
        Err(stat) => (stat, xdp_action::XDP_PASS),
    }
}

/// The L3 offset, the 802.1Q TCI if tagged, and whether it is IPv6 (else IPv4).
#[inline(always)]
fn ethernet(ctx: &XdpContext) -> Result<(usize, Option<u16>, bool), Stat> {
    let mut ethertype = read_be16(ctx, 12).ok_or(Stat::PassTruncated)?;
    let mut l3 = ETH_HLEN;
    let mut vlan = None;
    if ethertype == ETH_P_8021Q {
        let tag = read::<[u16; 2]>(ctx, ETH_HLEN).ok_or(Stat::PassTruncated)?;
        vlan = Some(u16::from_be(tag[0]));
        ethertype = u16::from_be(tag[1]);
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IPV4 => Ok((l3, vlan, false)),
        ETH_P_IPV6 => Ok((l3, vlan, true)),
        _ => Err(Stat::PassNotIp),
    }
}

/// What differs between IPv4 and IPv6; the forwarding code is generic over it, so each family
/// gets its own straight-line copy with addresses of its own size.
trait Family {
    const FAMILY: u8;
    const HLEN: usize;
    /// Offsets of the source and destination address in the header.
    const SRC: usize;
    const DST: usize;
    /// Checks the header at `l3` (the caller made sure `HLEN` bytes are there) and returns the
    /// IPv4 total length / IPv6 payload length.
    fn check(ctx: &XdpContext, l3: usize) -> Result<u16, Stat>;
    /// Bytes of an address.
    const ALEN: usize;
    /// Whether the address at packet offset `at` is `addr` (IPv4: its first four bytes).
    #[inline(always)]
    fn is(ctx: &XdpContext, at: usize, addr: &[u8; 16]) -> bool {
        // SAFETY: bounds checked just before.
        in_bounds(ctx, at, Self::ALEN) && unsafe { Self::is_at(ctx.data() + at, addr) }
    }
    /// [`Family::is`] on an address the caller has bounds-checked.
    ///
    /// # Safety
    /// `at` points at the address inside the frame.
    unsafe fn is_at(at: usize, addr: &[u8; 16]) -> bool;
    /// Whether the header at `h` (bounds-checked by the caller, `HLEN` bytes) is the plain
    /// case the fast path handles: UDP, no options or extension headers, not a fragment.
    ///
    /// # Safety
    /// `h` points at `HLEN` bytes inside the frame.
    unsafe fn plain_udp(h: usize) -> bool;
    /// Writes the rewritten header: DSCP (keeping ECN), TTL, addresses, checksum.
    #[inline(always)]
    fn rewrite(ctx: &XdpContext, l3: usize, flow: &FlowAction) -> Result<(), Stat> {
        if !in_bounds(ctx, l3, Self::HLEN) {
            return Err(Stat::PassTruncated);
        }
        // SAFETY: bounds checked just before; XDP owns the frame.
        unsafe { Self::rewrite_at(ctx.data() + l3, flow) };
        Ok(())
    }
    /// [`Family::rewrite`] of a header the caller has bounds-checked.
    ///
    /// # Safety
    /// `h` points at `HLEN` bytes inside the frame, which the program owns.
    unsafe fn rewrite_at(h: usize, flow: &FlowAction);
    /// Fills the family's part of the route lookup.
    fn fib(fib: &mut FibParams, flow: &FlowAction, ip_len: u16);
}

struct V4;
struct V6;

impl Family for V4 {
    const FAMILY: u8 = FAMILY_V4;
    const HLEN: usize = IPV4_HLEN;
    const SRC: usize = 12;
    const DST: usize = 16;
    const ALEN: usize = 4;

    #[inline(always)]
    fn check(ctx: &XdpContext, l3: usize) -> Result<u16, Stat> {
        let h = read::<[u16; 5]>(ctx, l3).ok_or(Stat::PassTruncated)?;
        let [vihl, _tos] = h[0].to_ne_bytes();
        let ihl = vihl & 0x0f;
        if ihl < 5 {
            return Err(Stat::PassTruncated);
        }
        if h[4].to_ne_bytes()[1] != IPPROTO_UDP {
            return Err(Stat::PassNotUdp);
        }
        // Options would move every offset below; a media relay never sees them in practice.
        if ihl > 5 {
            return Err(Stat::PassIpOptions);
        }
        if u16::from_be(h[3]) & IPV4_FRAGMENT_MASK != 0 {
            return Err(Stat::PassFragment);
        }
        Ok(u16::from_be(h[1]))
    }

    #[inline(always)]
    unsafe fn is_at(at: usize, addr: &[u8; 16]) -> bool {
        // SAFETY: the caller's bounds check; any alignment (see the crate docs).
        unsafe { (at as *const u32).read_unaligned() == word(addr, 0) }
    }

    #[inline(always)]
    unsafe fn plain_udp(h: usize) -> bool {
        // SAFETY: the caller's bounds check covers the 20-byte header.
        let w = unsafe { (h as *const [u32; 3]).read_unaligned() };
        let [vihl, ..] = w[0].to_ne_bytes();
        let [_, _, frag_hi, frag_lo] = w[1].to_ne_bytes();
        let [_, proto, ..] = w[2].to_ne_bytes();
        // Version 4 with a five-word header: no options.
        vihl == 0x45
            && proto == IPPROTO_UDP
            && u16::from_be_bytes([frag_hi, frag_lo]) & IPV4_FRAGMENT_MASK == 0
    }

    #[inline(always)]
    unsafe fn rewrite_at(h: usize, flow: &FlowAction) {
        let h = h as *mut [u32; 5];
        // SAFETY: the caller's bounds check; unaligned accesses are allowed (see the crate
        // docs), and `read_unaligned`/`write_unaligned` say so to the compiler.
        unsafe {
            let mut w = h.read_unaligned();
            let mut b0 = w[0].to_ne_bytes();
            b0[1] = (flow.tos & 0xfc) | (b0[1] & 0x03);
            w[0] = u32::from_ne_bytes(b0);
            let mut b2 = w[2].to_ne_bytes();
            b2[0] = flow.ttl;
            // Checksum field zeroed for the sum below.
            b2[2] = 0;
            b2[3] = 0;
            w[2] = u32::from_ne_bytes(b2);
            w[3] = word(&flow.new_src, 0);
            w[4] = word(&flow.new_dst, 0);
            // Without options the header is five words: summing them is as cheap as an
            // incremental update and cannot carry an old error forward. One's-complement sums
            // do not depend on byte order (RFC 1071 2(B)), so native words are summed and the
            // result stored natively.
            let sum = w.iter().map(|&x| u64::from(x)).sum::<u64>();
            let check = !fold(sum);
            let mut b2 = w[2].to_ne_bytes();
            let c = check.to_ne_bytes();
            b2[2] = c[0];
            b2[3] = c[1];
            w[2] = u32::from_ne_bytes(b2);
            h.write_unaligned(w);
        }
    }

    #[inline(always)]
    fn fib(fib: &mut FibParams, flow: &FlowAction, ip_len: u16) {
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = ip_len;
        fib.__bindgen_anon_2.tos = flow.tos;
        fib.__bindgen_anon_3.ipv4_src = word(&flow.new_src, 0);
        fib.__bindgen_anon_4.ipv4_dst = word(&flow.new_dst, 0);
    }
}

impl Family for V6 {
    const FAMILY: u8 = FAMILY_V6;
    const HLEN: usize = IPV6_HLEN;
    const SRC: usize = 8;
    const DST: usize = 24;
    const ALEN: usize = 16;

    #[inline(always)]
    fn check(ctx: &XdpContext, l3: usize) -> Result<u16, Stat> {
        let h = read::<[u16; 4]>(ctx, l3).ok_or(Stat::PassTruncated)?;
        match h[3].to_ne_bytes()[0] {
            IPPROTO_UDP => Ok(u16::from_be(h[2])),
            IPV6_NEXT_FRAGMENT => Err(Stat::PassFragment),
            // Extension headers (hop-by-hop, routing, ...) or another protocol: the stack's job.
            _ => Err(Stat::PassNotUdp),
        }
    }

    #[inline(always)]
    unsafe fn is_at(at: usize, addr: &[u8; 16]) -> bool {
        // SAFETY: the caller's bounds check; any alignment.
        let a = unsafe { (at as *const [u64; 2]).read_unaligned() };
        a[0] == dword(addr, 0) && a[1] == dword(addr, 1)
    }

    #[inline(always)]
    unsafe fn plain_udp(h: usize) -> bool {
        // SAFETY: the caller's bounds check covers the 40-byte header; next header is byte 6.
        unsafe { ((h + 6) as *const u8).read() == IPPROTO_UDP }
    }

    #[inline(always)]
    unsafe fn rewrite_at(h: usize, flow: &FlowAction) {
        let h = h as *mut [u64; 5];
        // SAFETY: as for IPv4.
        unsafe {
            let mut w = h.read_unaligned();
            let mut b = w[0].to_ne_bytes();
            // Traffic class straddles bytes 0 and 1: DSCP from the flow, ECN from the packet.
            let ecn = (b[1] >> 4) & 0x03;
            let tclass = (flow.tos & 0xfc) | ecn;
            b[0] = 0x60 | (tclass >> 4);
            b[1] = (tclass << 4) | (b[1] & 0x0f);
            b[7] = flow.ttl;
            w[0] = u64::from_ne_bytes(b);
            w[1] = dword(&flow.new_src, 0);
            w[2] = dword(&flow.new_src, 1);
            w[3] = dword(&flow.new_dst, 0);
            w[4] = dword(&flow.new_dst, 1);
            h.write_unaligned(w);
        }
    }

    #[inline(always)]
    fn fib(fib: &mut FibParams, flow: &FlowAction, ip_len: u16) {
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = ip_len + IPV6_HLEN as u16;
        for i in 0..4 {
            // SAFETY: writing plain integers into a union of integer arrays.
            unsafe {
                fib.__bindgen_anon_3.ipv6_src[i] = word(&flow.new_src, i);
                fib.__bindgen_anon_4.ipv6_dst[i] = word(&flow.new_dst, i);
            }
        }
    }
}

enum Egress {
    /// Out of the ingress device; `tci` replaces the frame's 802.1Q TCI when set.
    Tx {
        tci: Option<u16>,
    },
    Redirect(u32),
}

#[inline(always)]
fn forward<F: Family>(ctx: &XdpContext, l3: usize, vlan: Option<u16>) -> Result<(Stat, u32), Stat> {
    let ip_len = F::check(ctx, l3)?;
    let l4 = l3 + F::HLEN;
    // Ports, length, checksum: network order as read.
    let udp = read::<[u16; 4]>(ctx, l4).ok_or(Stat::PassTruncated)?;
    let udp_len = u16::from_be(udp[2]);
    if usize::from(udp_len) < UDP_HLEN || !in_bounds(ctx, l4, usize::from(udp_len)) {
        return Err(Stat::PassTruncated);
    }
    let flow = find::<F>(ctx, l3, udp[1])?;
    if !F::is(ctx, l3 + F::SRC, &flow.src) || udp[0] != u16::from_ne_bytes(flow.src_port) {
        return Err(Stat::PassSourceMismatch);
    }
    // This CPU's counters and route cache for the flow (always there: the daemon sizes the
    // array with the flow table).
    let stats = SLUICE_FLOW_STATS
        .get_ptr_mut(flow.stats_slot)
        .ok_or(Stat::PassNoFlow)?;
    // SAFETY: this CPU's copy of the slot; nothing else writes it while the program runs here.
    let stats = unsafe { &mut *stats };
    let (egress, macs) = route::<F>(ctx, flow, vlan, ip_len, &mut stats.route)?;
    let new_ports = [
        u16::from_ne_bytes(flow.new_src_port),
        u16::from_ne_bytes(flow.new_dst_port),
    ];
    let check = udp_checksum::<F>(ctx, l4, udp, flow)?;

    // Everything that can fail has been decided: from here on the frame is rewritten.
    let eth = ptr_at::<[[u8; 6]; 2]>(ctx, 0).ok_or(Stat::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at; XDP owns the frame.
    unsafe { eth.write_unaligned(macs) };
    if let Egress::Tx { tci: Some(tci) } = egress {
        let tag = ptr_at::<u16>(ctx, ETH_HLEN).ok_or(Stat::PassTruncated)?;
        // SAFETY: bounds checked by ptr_at (the tag was parsed from these bytes).
        unsafe { tag.write_unaligned(tci.to_be()) };
    }
    F::rewrite(ctx, l3, flow)?;
    let udp_out = ptr_at::<[u16; 4]>(ctx, l4).ok_or(Stat::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { udp_out.write_unaligned([new_ports[0], new_ports[1], udp[2], check.to_be()]) };
    account(udp_len, read(ctx, l4 + UDP_HLEN), flow, stats);
    Ok(match egress {
        Egress::Tx { .. } => (Stat::Tx, xdp_action::XDP_TX),
        Egress::Redirect(ifindex) => match SLUICE_DEVMAP.redirect(ifindex, 0) {
            Ok(verdict) => (Stat::Redirect, verdict),
            // Checked by `route`; a device removed in between drops this one packet.
            Err(_) => (Stat::PassNoEgress, xdp_action::XDP_DROP),
        },
    })
}

/// The flow for the packet's destination (`port` in network order): the port's entry, unless
/// another local address owns the port, then the hash.
#[inline(always)]
fn find<F: Family>(ctx: &XdpContext, l3: usize, port: u16) -> Result<&'static FlowAction, Stat> {
    let slot = *SLUICE_PORTS
        .get(u32::from(u16::from_be(port)))
        .ok_or(Stat::PassNoFlow)?;
    let flow = action(slot)?;
    if is_for::<F>(ctx, l3, port, flow) {
        return Ok(flow);
    }
    // The key built as words in an 8-aligned buffer: byte arrays on the stack would be
    // accessed misaligned (see the crate docs) and padding filled by a memset call.
    let mut key = [0u64; 3];
    if F::FAMILY == FAMILY_V6 {
        let addr = read::<[u64; 2]>(ctx, l3 + F::DST).ok_or(Stat::PassTruncated)?;
        key[0] = addr[0];
        key[1] = addr[1];
    } else {
        key[0] = u64::from(read::<u32>(ctx, l3 + F::DST).ok_or(Stat::PassTruncated)?);
    }
    // Little-endian layout of FlowKey's port (network order bytes) and family.
    key[2] = u64::from(port) | (u64::from(F::FAMILY) << 16);
    // SAFETY: [u64; 3] has FlowKey's size and alignment and every byte initialised.
    let key = unsafe { &*key.as_ptr().cast::<FlowKey>() };
    // SAFETY: the value is a plain u32, read once.
    let slot = unsafe { SLUICE_FLOWS.get(key) }.ok_or(Stat::PassNoFlow)?;
    action(*slot).and_then(|flow| {
        if is_for::<F>(ctx, l3, port, flow) {
            Ok(flow)
        } else {
            Err(Stat::PassNoFlow)
        }
    })
}

/// Whether `flow` is the one for the packet's destination address and `port` (network order).
#[inline(always)]
fn is_for<F: Family>(ctx: &XdpContext, l3: usize, port: u16, flow: &FlowAction) -> bool {
    flow.family == F::FAMILY
        && u16::from_ne_bytes(flow.local_port) == port
        && F::is(ctx, l3 + F::DST, &flow.local)
}

/// The action a lookup entry (its slot; 0: none) points at.
#[inline(always)]
fn action(slot: u32) -> Result<&'static FlowAction, Stat> {
    if slot == NO_FLOW_SLOT {
        return Err(Stat::PassNoFlow);
    }
    SLUICE_ACTIONS.get(slot).ok_or(Stat::PassNoFlow)
}

/// `bpf_map_lookup_elem` on an array with the index read where it already is, in another
/// map's value, instead of from a copy the caller stores on the stack: in a chain of lookups
/// (port entry, action, counters) each copy is a store and a load the next lookup waits for,
/// and the value is in a map either way. The verifier accepts a map value as the key and
/// still inlines array lookups.
///
/// # Safety
/// `map` is one of this program's array maps with values of type `T`, and `index` points into a
/// map value.
#[inline(always)]
unsafe fn lookup_at<M, T>(map: &M, index: &u32) -> Option<*mut T> {
    // SAFETY: aya-ebpf's map types are `repr(transparent)` over the map definition, so the
    // static's address is what its own lookups pass; the caller vouches for the rest.
    let value = unsafe {
        aya_ebpf::helpers::bpf_map_lookup_elem(
            core::ptr::from_ref(map).cast_mut().cast(),
            core::ptr::from_ref(index).cast(),
        )
    };
    (!value.is_null()).then_some(value.cast())
}

/// Next hop and egress device of the rewritten packet, and its MACs: from this CPU's cache
/// while it is from the current route epoch and still fits, else from `bpf_fib_lookup` (then
/// cached).
#[inline(always)]
fn route<F: Family>(
    ctx: &XdpContext,
    flow: &FlowAction,
    vlan: Option<u16>,
    ip_len: u16,
    cache: &mut RouteCache,
) -> Result<(Egress, [[u8; 6]; 2]), Stat> {
    let ingress = ctx.ingress_ifindex() as u32;
    let epoch = route_epoch();
    if cache.kind != ROUTE_NONE
        && cache.epoch == epoch
        && cache.slot == flow.slot
        && cache.ingress == ingress
        && (cache.tagged != 0) == vlan.is_some()
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
            return Ok((egress, cache.macs));
        }
    }
    let decided = lookup::<F>(ctx, flow, vlan, ip_len, ingress)?;
    let (kind, ifindex, vid) = match decided.0 {
        Egress::Tx { tci: None } => (ROUTE_TX, ingress, 0),
        Egress::Tx { tci: Some(tci) } => (ROUTE_TX_VLAN, ingress, tci & 0x0fff),
        Egress::Redirect(ifindex) => (ROUTE_REDIRECT, ifindex, 0),
    };
    *cache = RouteCache {
        epoch,
        slot: flow.slot,
        ingress,
        ifindex,
        macs: decided.1,
        vid,
        kind,
        tagged: u8::from(vlan.is_some()),
    };
    Ok(decided)
}

/// The current route epoch, as [`RouteCache::epoch`] keeps it.
#[inline(always)]
fn route_epoch() -> u32 {
    SLUICE_EPOCH.get(0).map_or(0, |&e| e as u32)
}

/// The route lookup's parameter block, 8-aligned on the stack (see the crate docs).
#[repr(C, align(8))]
struct Fib(FibParams);

/// [`route`] without the cache: `bpf_fib_lookup` and the device checks.
#[inline(always)]
fn lookup<F: Family>(
    ctx: &XdpContext,
    flow: &FlowAction,
    vlan: Option<u16>,
    ip_len: u16,
    ingress: u32,
) -> Result<(Egress, [[u8; 6]; 2]), Stat> {
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut fib = Fib(unsafe { core::mem::zeroed() });
    fib.0.l4_protocol = IPPROTO_UDP;
    fib.0.sport = u16::from_ne_bytes(flow.new_src_port);
    fib.0.dport = u16::from_ne_bytes(flow.new_dst_port);
    fib.0.ifindex = ingress;
    F::fib(&mut fib.0, flow, ip_len);
    // SAFETY: fib is a valid, fully initialised parameter block of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut fib.0,
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
    let fib = fib.0;
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
    Ok((egress, [fib.dmac, fib.smac]))
}

/// The new UDP checksum (host order; `udp` is the header as read). IPv4 zero stays zero (no
/// checksum); a complete checksum is updated incrementally over the rewritten addresses and
/// ports (RFC 1624); a partial one (TX offload on the sender's veth, see `csum::looks_partial`)
/// or an invalid IPv6 zero is recomputed over the whole segment.
#[inline(always)]
fn udp_checksum<F: Family>(
    ctx: &XdpContext,
    l4: usize,
    udp: [u16; 4],
    flow: &FlowAction,
) -> Result<u16, Stat> {
    if let Some(check) = complete_checksum::<F>(udp, flow) {
        return Ok(check);
    }
    let check = u16::from_be(udp[3]);
    let udp_len = u16::from_be(udp[2]);
    if usize::from(udp_len) > MAX_SUMMED {
        return Err(Stat::PassChecksum);
    }
    let segment = sum_segment(ctx, l4, usize::from(udp_len)).ok_or(Stat::PassChecksum)?;
    // The segment as it is: old ports, and the old check field, which the sum must not
    // include.
    let old_ports = [u16::from_be(udp[0]), u16::from_be(udp[1])];
    let new_ports = [
        u16::from_be_bytes(flow.new_src_port),
        u16::from_be_bytes(flow.new_dst_port),
    ];
    let sum = segment
        + u64::from(!check)
        + u64::from(!old_ports[0])
        + u64::from(!old_ports[1])
        + u64::from(new_ports[0])
        + u64::from(new_ports[1])
        + u64::from(flow.new_pseudo)
        + u64::from(udp_len);
    Ok(csum::udp_wire(csum::finish(sum)))
}

/// The new UDP checksum when no payload needs summing: IPv4 zero stays zero, a complete
/// checksum is updated incrementally. `None` for a partial checksum or an IPv6 zero.
#[inline(always)]
fn complete_checksum<F: Family>(udp: [u16; 4], flow: &FlowAction) -> Option<u16> {
    let check = u16::from_be(udp[3]);
    let udp_len = u16::from_be(udp[2]);
    if check == 0 {
        return (F::FAMILY == FAMILY_V4).then_some(0);
    }
    if csum::looks_partial(check, flow.old_pseudo, udp_len) {
        return None;
    }
    // The old addresses and ports are the flow's key and latched source (just matched), so the
    // daemon summed their change once per flow (RFC 1624 eqn. 3: ~(~HC + delta)).
    Some(csum::udp_wire(!csum::add16(!check, flow.csum_delta)))
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
        sum += u64::from(read::<u8>(ctx, start + off)?) << 8;
    }
    Some(sum)
}

/// Per-flow, per-CPU counters for statistics and the daemon's media timeout (which watches
/// the packet count move). `rtp`: the payload's first four bytes, if it has them.
#[inline(always)]
fn account(udp_len: u16, rtp: Option<[u16; 2]>, flow: &FlowAction, stats: &mut FlowStats) {
    stats.packets += 1;
    stats.bytes += u64::from(udp_len) - UDP_HLEN as u64;
    if flow.flags & FLOW_RTP != 0
        && usize::from(udp_len) >= UDP_HLEN + RTP_HLEN
        && let Some(rtp) = rtp
        && rtp[0].to_ne_bytes()[0] >> 6 == 2
    {
        track_seq(stats, u16::from_be(rtp[1]));
    }
}

/// The `i`th 4-byte word of an address, in memory (network) order.
#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// The `i`th 8-byte half of an address, in memory order.
#[inline(always)]
fn dword(a: &[u8; 16], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&a[8 * i..8 * i + 8]);
    u64::from_ne_bytes(b)
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

/// A copy of the `T` at `offset` (any alignment).
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; read_unaligned makes no alignment assumption.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read::<u16>(ctx, offset).map(u16::from_be)
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
