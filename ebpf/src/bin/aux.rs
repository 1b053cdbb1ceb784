//! Auxiliary XDP programs for tests and benchmarks; never attached by the daemon.
//!
//! - `sluice_pass`: XDP_PASS. On a veth, frames another program sends with XDP_TX or a redirect
//!   are only received when the receiving end runs an XDP program; this is the cheapest one.
//! - `sluice_reflect`: the floor for the fast path's per-packet cost. It parses just enough to
//!   turn a UDP packet around (Ethernet, IPv4 without options or IPv6, UDP), swaps MACs, IP
//!   addresses and ports, and returns XDP_TX. Swapping keeps every checksum valid (the one's
//!   complement sum does not depend on the order of its words), so nothing is recomputed.
//! - `sluice_reflect_redirect`: the same turn-around, sent back out of the ingress device with
//!   `bpf_redirect_map` through a DEVMAP_HASH (the map type and helper the fast path uses when a
//!   flow leaves through another device) instead of XDP_TX: the floor for a redirecting
//!   forwarder. The harness puts the device's ifindex in `SLUICE_AUX_DEVMAP`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::DevMapHash,
    programs::XdpContext,
};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
/// Version 4, header length 5 words: no options.
const IPV4_PLAIN: u8 = 0x45;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

#[map(name = "SLUICE_AUX_DEVMAP")]
static SLUICE_AUX_DEVMAP: DevMapHash = DevMapHash::with_max_entries(8, 0);

#[xdp]
pub fn sluice_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn sluice_reflect(ctx: XdpContext) -> u32 {
    match reflect(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn sluice_reflect_redirect(ctx: XdpContext) -> u32 {
    if reflect(&ctx).is_none() {
        return xdp_action::XDP_PASS;
    }
    // A device missing from the map: the frame is already turned around, so drop it rather
    // than hand the stack a packet addressed back to its sender.
    match SLUICE_AUX_DEVMAP.redirect(ctx.ingress_ifindex() as u32, 0) {
        Ok(verdict) => verdict,
        Err(_) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn reflect(ctx: &XdpContext) -> Option<()> {
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at; byte arrays have alignment 1.
    let ethertype = unsafe { u16::from_be_bytes([(*eth)[12], (*eth)[13]]) };
    let (addr_at, addr_len, l4) = match ethertype {
        ETH_P_IPV4 => {
            let ip = ptr_at::<[u8; IPV4_HLEN]>(ctx, ETH_HLEN)?;
            // SAFETY: as above.
            let (vihl, proto) = unsafe { ((*ip)[0], (*ip)[9]) };
            if vihl != IPV4_PLAIN || proto != IPPROTO_UDP {
                return None;
            }
            (ETH_HLEN + 12, 4, ETH_HLEN + IPV4_HLEN)
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN)?;
            // SAFETY: as above.
            if unsafe { (*ip)[6] } != IPPROTO_UDP {
                return None;
            }
            (ETH_HLEN + 8, 16, ETH_HLEN + IPV6_HLEN)
        }
        _ => return None,
    };
    let ports = ptr_at::<[u8; 4]>(ctx, l4)?;
    if addr_len == 4 {
        swap::<4>(ctx, addr_at)?;
    } else {
        swap::<16>(ctx, addr_at)?;
    }
    // SAFETY: bounds checked by ptr_at; nothing else aliases the frame while the program runs.
    unsafe {
        let p = *ports;
        *ports = [p[2], p[3], p[0], p[1]];
    }
    swap::<6>(ctx, 0)
}

/// Swaps the two adjacent `N`-byte fields at `at` and `at + N` (source/destination pairs).
#[inline(always)]
fn swap<const N: usize>(ctx: &XdpContext, at: usize) -> Option<()> {
    let a = ptr_at::<[u8; N]>(ctx, at)?;
    let b = ptr_at::<[u8; N]>(ctx, at + N)?;
    // SAFETY: both ranges bounds checked by ptr_at and disjoint.
    unsafe { core::ptr::swap(a, b) };
    Some(())
}

/// The verifier only accepts packet accesses it can prove lie before `data_end`.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if ctx.data() + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *mut T)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
