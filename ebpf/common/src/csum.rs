//! Internet checksum arithmetic (RFC 1071, RFC 1624) on big-endian 16-bit words.
//!
//! Plain integer code with no slices over packet memory, so the XDP program can use it (the
//! verifier sees fixed-size loops it can unroll) and the host tests check it against a full
//! recomputation.

/// Folds a one's-complement accumulator to 16 bits. Four rounds are enough for any u64 a packet
/// can produce (at most 2^16 words of 2^16).
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement sum of two 16-bit values. One carry round is enough: the sum of two
/// 16-bit values is at most 0x1fffe, which folds to at most 0xffff.
#[inline(always)]
pub const fn add16(a: u16, b: u16) -> u16 {
    let sum = a as u32 + b as u32;
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// Adds the big-endian words of a 4-byte value (an IPv4 address, two ports).
#[inline(always)]
pub const fn add32(sum: u64, bytes: [u8; 4]) -> u64 {
    sum + u16::from_be_bytes([bytes[0], bytes[1]]) as u64
        + u16::from_be_bytes([bytes[2], bytes[3]]) as u64
}

/// Adds the big-endian words of a 16-byte value (an IPv6 address).
#[inline(always)]
pub fn add128(mut sum: u64, bytes: &[u8; 16]) -> u64 {
    let mut i = 0;
    while i < 16 {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    sum
}

/// Subtracts a 4-byte value (adds its one's complement), for incremental updates.
#[inline(always)]
pub const fn sub32(sum: u64, bytes: [u8; 4]) -> u64 {
    sum + (!u16::from_be_bytes([bytes[0], bytes[1]])) as u64
        + (!u16::from_be_bytes([bytes[2], bytes[3]])) as u64
}

/// Subtracts a 16-byte value.
#[inline(always)]
pub fn sub128(mut sum: u64, bytes: &[u8; 16]) -> u64 {
    let mut i = 0;
    while i < 16 {
        sum += (!u16::from_be_bytes([bytes[i], bytes[i + 1]])) as u64;
        i += 2;
    }
    sum
}

/// Starts an incremental update (RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`): the accumulator
/// to which the caller subtracts old and adds new fields, then [`finish`]es.
#[inline(always)]
pub const fn reopen(check: u16) -> u64 {
    (!check) as u64
}

/// The checksum field value for an accumulator holding the whole sum.
#[inline(always)]
pub const fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// A UDP checksum as sent: a computed zero goes out as 0xFFFF because zero means "no checksum"
/// (RFC 768; IPv6 forbids zero, RFC 8200 8.1).
#[inline(always)]
pub const fn udp_wire(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

/// The change a rewrite of addresses and ports makes to a UDP checksum, folded: add it to
/// [`reopen`]ed checksum and [`finish`]. `ports` are source then destination port, network
/// order; IPv4 addresses use the first four bytes.
pub fn rewrite_delta(
    v6: bool,
    old: (&[u8; 16], &[u8; 16], [u8; 4]),
    new: (&[u8; 16], &[u8; 16], [u8; 4]),
) -> u16 {
    let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
    let mut sum = 0;
    if v6 {
        sum = add128(add128(sub128(sub128(sum, old.0), old.1), new.0), new.1);
    } else {
        sum = add32(
            add32(sub32(sub32(sum, v4(old.0)), v4(old.1)), v4(new.0)),
            v4(new.1),
        );
    }
    fold(add32(sub32(sum, old.2), new.2))
}

/// Sum of the IPv4 pseudo header (addresses, protocol, UDP length).
#[inline(always)]
pub const fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u64 {
    add32(add32(0, src), dst) + proto as u64 + len as u64
}

/// Sum of the IPv6 pseudo header (RFC 8200 8.1; lengths below 64 KiB).
#[inline(always)]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u16) -> u64 {
    add128(add128(0, src), dst) + proto as u64 + len as u64
}

/// True when a UDP checksum field holds only the folded pseudo-header sum: what a sender using
/// TX checksum offload (CHECKSUM_PARTIAL, e.g. a veth in a container) leaves for the device to
/// finish. XDP sees such packets before anyone finishes them. A complete checksum equals this
/// value by chance about once in 65,536 packets; treating that packet as partial costs a full
/// recomputation, never a wrong checksum.
///
/// `pseudo` is the folded pseudo-header sum without the length, `len` the UDP length.
#[inline(always)]
pub const fn looks_partial(check: u16, pseudo: u16, len: u16) -> bool {
    check == add16(pseudo, len)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Reference: RFC 1071 over a byte string.
    fn sum_bytes(bytes: &[u8]) -> u64 {
        bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
            .sum()
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut seg = Vec::new();
        seg.extend_from_slice(&sport.to_be_bytes());
        seg.extend_from_slice(&dport.to_be_bytes());
        seg.extend_from_slice(&len.to_be_bytes());
        seg.extend_from_slice(&[0, 0]);
        seg.extend_from_slice(payload);
        let c = udp_wire(finish(pseudo_v4(src, dst, 17, len) + sum_bytes(&seg)));
        seg[6..8].copy_from_slice(&c.to_be_bytes());
        seg
    }

    fn verifies4(src: [u8; 4], dst: [u8; 4], seg: &[u8]) -> bool {
        fold(pseudo_v4(src, dst, 17, seg.len() as u16) + sum_bytes(seg)) == 0xffff
    }

    #[test]
    fn add16_is_the_folded_sum() {
        for (a, b) in [
            (0, 0),
            (0xffff, 0xffff),
            (0xffff, 1),
            (0x8000, 0x8000),
            (0x1234, 0xfedc),
        ] {
            assert_eq!(add16(a, b), fold(a as u64 + b as u64), "{a:#x} + {b:#x}");
        }
    }

    #[test]
    fn incremental_rewrite_matches_full_recomputation() {
        let mut state = 0x1234_5678u32;
        let mut next = || {
            // xorshift: deterministic, dependency-free
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for n in 0..20_000 {
            let len = (next() % 300) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let (s, d) = (next().to_be_bytes(), next().to_be_bytes());
            let (ns, nd) = (next().to_be_bytes(), next().to_be_bytes());
            let (sp, dp, nsp, ndp) = (next() as u16, next() as u16, next() as u16, next() as u16);
            let seg = udp4(s, d, sp, dp, &payload);
            let old = u16::from_be_bytes([seg[6], seg[7]]);
            let mut sum = reopen(old);
            sum = sub32(sub32(sum, s), d);
            sum = add32(add32(sum, ns), nd);
            let ports = |a: u16, b: u16| {
                let (a, b) = (a.to_be_bytes(), b.to_be_bytes());
                [a[0], a[1], b[0], b[1]]
            };
            sum = add32(sub32(sum, ports(sp, dp)), ports(nsp, ndp));
            let new = udp_wire(finish(sum));
            let mut out = seg.clone();
            out[0..2].copy_from_slice(&nsp.to_be_bytes());
            out[2..4].copy_from_slice(&ndp.to_be_bytes());
            out[6..8].copy_from_slice(&new.to_be_bytes());
            assert!(
                verifies4(ns, nd, &out),
                "case {n}: incremental result does not verify"
            );
        }
    }

    #[test]
    fn precomputed_delta_matches_the_field_by_field_update() {
        let pad = |a: [u8; 4]| [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (s, d, ns, nd) = (
            [198, 18, 1, 2],
            [198, 18, 1, 1],
            [198, 18, 2, 1],
            [198, 18, 2, 2],
        );
        let (ports, new_ports) = ([0x0f, 0xa0, 0x75, 0x30], [0x75, 0x32, 0x13, 0x88]);
        let seg = udp4(s, d, 4000, 30000, &[0x80; 172]);
        let old = u16::from_be_bytes([seg[6], seg[7]]);
        let delta = rewrite_delta(
            false,
            (&pad(s), &pad(d), ports),
            (&pad(ns), &pad(nd), new_ports),
        );
        let mut out = seg.clone();
        out[0..4].copy_from_slice(&new_ports);
        let new = udp_wire(finish(reopen(old) + u64::from(delta)));
        out[6..8].copy_from_slice(&new.to_be_bytes());
        assert!(verifies4(ns, nd, &out));
    }

    #[test]
    fn partial_checksum_is_recognised() {
        let (s, d) = ([198, 18, 1, 2], [198, 18, 1, 1]);
        let pseudo = pseudo_v4(s, d, 17, 180);
        // What Linux writes for CHECKSUM_PARTIAL: ~csum_tcpudp_magic(..) = the folded sum.
        let partial = fold(pseudo);
        // What the daemon keeps per flow: the sum without the length.
        let without_len = fold(pseudo_v4(s, d, 17, 0));
        assert!(looks_partial(partial, without_len, 180));
        let full = udp4(s, d, 4000, 30000, &[0x80; 172]);
        assert!(!looks_partial(
            u16::from_be_bytes([full[6], full[7]]),
            without_len,
            180
        ));
    }

    #[test]
    fn computed_zero_is_sent_as_all_ones() {
        assert_eq!(udp_wire(0), 0xffff);
        assert_eq!(udp_wire(0x1234), 0x1234);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(finish(0xffff), 0);
    }
}
