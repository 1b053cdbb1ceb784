//! Sluice XDP program.
//!
//! Today it classifies each frame (Ethernet with one optional 802.1Q tag, IPv4/IPv6, UDP), counts
//! it per CPU and passes it to the stack. Flow lookup and in-kernel forwarding build on this
//! parser.
//!
//! Built for `bpfel-unknown-none` by relay/build.rs. On the host the crate compiles as an
//! ordinary (empty) program so `cargo clippy --workspace` lints and type-checks this code too.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use sluice_common::{Counter, STAT_SLOTS, Stat};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_UDP: u8 = 17;
/// Offset of the protocol byte in an IPv4 header, of the next-header byte in an IPv6 header.
const IPV4_PROTO_OFF: usize = 9;
const IPV6_NEXT_OFF: usize = 6;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;

#[map(name = "SLUICE_STATS")]
static SLUICE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(Stat::Received, len);
    count(classify(&ctx), len);
    xdp_action::XDP_PASS
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
fn classify(ctx: &XdpContext) -> Stat {
    let Some(mut ethertype) = read_be16(ctx, 12) else {
        return Stat::PassTruncated;
    };
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
        let Some(inner) = read_be16(ctx, ETH_HLEN + 2) else {
            return Stat::PassTruncated;
        };
        ethertype = inner;
        l3 += VLAN_HLEN;
    }
    let (proto, l4) = match ethertype {
        ETH_P_IPV4 => {
            let Some(ver_ihl) = read_u8(ctx, l3) else {
                return Stat::PassTruncated;
            };
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            if ihl < IPV4_MIN_HLEN {
                return Stat::PassTruncated;
            }
            match read_u8(ctx, l3 + IPV4_PROTO_OFF) {
                Some(p) => (p, l3 + ihl),
                None => return Stat::PassTruncated,
            }
        }
        ETH_P_IPV6 => match read_u8(ctx, l3 + IPV6_NEXT_OFF) {
            Some(p) => (p, l3 + IPV6_HLEN),
            None => return Stat::PassTruncated,
        },
        _ => return Stat::PassNotIp,
    };
    if proto != IPPROTO_UDP {
        return Stat::PassNotUdp;
    }
    if !in_bounds(ctx, l4, UDP_HLEN) {
        return Stat::PassTruncated;
    }
    Stat::PassNoFlow
}

/// The verifier only accepts packet reads it can prove lie before `data_end`; every read goes
/// through this check.
#[inline(always)]
fn in_bounds(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    if !in_bounds(ctx, offset, 1) {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { *((ctx.data() + offset) as *const u8) })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    if !in_bounds(ctx, offset, 2) {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; unaligned read of plain bytes.
    let raw = unsafe { core::ptr::read_unaligned((ctx.data() + offset) as *const [u8; 2]) };
    Some(u16::from_be_bytes(raw))
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
